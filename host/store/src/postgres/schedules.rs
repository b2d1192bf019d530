//! Schedules on PostgreSQL: their marks and runs, and a tick handled in one transaction.
//!
//! Under READ COMMITTED the compare-and-set is the `UPDATE`: a second process updating the
//! same schedule waits for the first's row lock, then re-reads the row as committed, finds
//! `ticked_through` no longer behind the tick, and changes nothing, so it queues nothing.

use tokio_postgres::{Client, Statement, Transaction};

use super::{ColumnValues, NOW};
use crate::driver::Now;
use crate::error::Result;
use crate::model::*;

pub(super) async fn list(client: &Client, runs: u32) -> Result<Vec<ScheduleState>> {
    let rows = client.query("SELECT name, ticked_through FROM schedules ORDER BY name", &[]).await?;
    let mut schedules = rows
        .iter()
        .map(|row| Ok(ScheduleState { name: row.value(0)?, ticked_through: row.value(1)?, runs: Vec::new() }))
        .collect::<Result<Vec<_>>>()?;
    if runs > 0 {
        let latest = client
            .prepare(
                "SELECT due_at, job_id, enqueued_at FROM schedule_runs WHERE schedule = $1
                  ORDER BY due_at DESC LIMIT $2",
            )
            .await?;
        for schedule in &mut schedules {
            let rows = client.query(&latest, &[&schedule.name, &i64::from(runs)]).await?;
            schedule.runs = rows
                .iter()
                .map(|row| Ok(ScheduleRun { due_at: row.value(0)?, job_id: row.value(1)?, enqueued_at: row.value(2)? }))
                .collect::<Result<Vec<_>>>()?;
        }
    }
    Ok(schedules)
}

pub(super) async fn start(client: &Client, name: &str, at: Millis) -> Result<bool> {
    let inserted = client
        .execute(
            "INSERT INTO schedules (name, ticked_through) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &at],
        )
        .await?;
    Ok(inserted == 1)
}

/// `enqueue` is the prepared [`super::jobs::ENQUEUE`].
pub(super) async fn advance(
    tx: &Transaction<'_>,
    enqueue: &Statement,
    name: &str,
    due_at: Millis,
    job: Option<&NewJob>,
    now: Now,
) -> Result<bool> {
    let moved = tx
        .execute("UPDATE schedules SET ticked_through = $2 WHERE name = $1 AND ticked_through < $2", &[&name, &due_at])
        .await?;
    if moved == 0 {
        return Ok(false);
    }
    if let Some(job) = job {
        super::jobs::insert_chunk(tx, enqueue, std::slice::from_ref(job), now).await?;
        tx.execute(
            &format!("INSERT INTO schedule_runs (schedule, due_at, job_id, enqueued_at) VALUES ($2, $3, $4, {NOW})"),
            &[&now, &name, &due_at, &job.id],
        )
        .await?;
        tx.execute(
            "DELETE FROM schedule_runs WHERE schedule = $1 AND due_at <
                 (SELECT due_at FROM schedule_runs WHERE schedule = $1 ORDER BY due_at DESC LIMIT 1 OFFSET $2)",
            &[&name, &i64::from(KEPT_SCHEDULE_RUNS - 1)],
        )
        .await?;
    }
    Ok(true)
}
