//! Schedules on SQLite: their marks and runs, and a tick handled in one transaction.

use rusqlite::{Connection, Transaction, params};

use crate::error::Result;
use crate::model::*;

pub(super) fn list(conn: &Connection, runs: u32) -> Result<Vec<ScheduleState>> {
    let mut schedules = conn
        .prepare_cached("SELECT name, ticked_through FROM schedules ORDER BY name")?
        .query_map([], |row| Ok(ScheduleState { name: row.get(0)?, ticked_through: row.get(1)?, runs: Vec::new() }))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if runs > 0 {
        let mut latest = conn.prepare_cached(
            "SELECT due_at, job_id, enqueued_at FROM schedule_runs WHERE schedule = ?1
              ORDER BY due_at DESC LIMIT ?2",
        )?;
        for schedule in &mut schedules {
            schedule.runs = latest
                .query_map(params![schedule.name, runs], |row| {
                    Ok(ScheduleRun { due_at: row.get(0)?, job_id: row.get(1)?, enqueued_at: row.get(2)? })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
        }
    }
    Ok(schedules)
}

pub(super) fn start(tx: &Transaction<'_>, name: &str, at: Millis) -> Result<bool> {
    let inserted = tx
        .prepare_cached("INSERT INTO schedules (name, ticked_through) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?
        .execute(params![name, at])?;
    Ok(inserted == 1)
}

pub(super) fn advance(
    tx: &Transaction<'_>,
    name: &str,
    due_at: Millis,
    job: Option<&NewJob>,
    now: Millis,
) -> Result<bool> {
    let moved = tx
        .prepare_cached("UPDATE schedules SET ticked_through = ?2 WHERE name = ?1 AND ticked_through < ?2")?
        .execute(params![name, due_at])?;
    if moved == 0 {
        return Ok(false);
    }
    if let Some(job) = job {
        super::jobs::enqueue(tx, &mut std::iter::once(Ok(job.clone())), now)?;
        tx.prepare_cached("INSERT INTO schedule_runs (schedule, due_at, job_id, enqueued_at) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![name, due_at, job.id, now])?;
        tx.prepare_cached(
            "DELETE FROM schedule_runs WHERE schedule = ?1 AND due_at <
                 (SELECT due_at FROM schedule_runs WHERE schedule = ?1 ORDER BY due_at DESC LIMIT 1 OFFSET ?2)",
        )?
        .execute(params![name, KEPT_SCHEDULE_RUNS - 1])?;
    }
    Ok(true)
}
