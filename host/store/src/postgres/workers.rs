//! Workers on PostgreSQL: registration, heartbeats, reaping, planning, and the status snapshot.

use std::time::Duration;

use tokio_postgres::{Client, Statement, Transaction};

use super::jobs::{name_at, optional_name_at};
use super::{ColumnValues, NOW};
use crate::activity::ActivityRow;
use crate::driver::Now;
use crate::error::{ErrorKind, Result, StoreError};
use crate::model::*;

/// Registers the worker as `active`, or turns the `starting` row the checker left for it
/// into `active`, in one statement; a row in any other state is left alone and refused.
pub(super) async fn activate(client: &Client, worker: &NewWorker, now: Now) -> Result<()> {
    let pid = worker.pid.map(i64::from);
    let activated = client
        .query_opt(
            &format!(
                "INSERT INTO workers (id, pool, status, host, pid, started_at, last_heartbeat_at, following)
                 SELECT $2::text, $3::text, 'active', $4::text, $5::bigint, t.now, t.now, $6::boolean
                   FROM (SELECT {NOW} AS now) t
                 ON CONFLICT (id) DO UPDATE
                    SET status = 'active', host = EXCLUDED.host, pid = EXCLUDED.pid,
                        last_heartbeat_at = EXCLUDED.last_heartbeat_at
                  WHERE workers.status = 'starting' AND workers.pool = EXCLUDED.pool
                 RETURNING id"
            ),
            &[&now, &worker.id, &worker.pool, &worker.host, &pid, &worker.following],
        )
        .await?;
    if activated.is_some() {
        return Ok(());
    }
    let row = client.query_one("SELECT status, pool FROM workers WHERE id = $1", &[&worker.id]).await?;
    let (status, pool): (WorkerStatus, String) = (name_at(&row, 0)?, row.value(1)?);
    Err(StoreError::new(ErrorKind::Refused, NewWorker::refusal(&worker.id, &worker.pool, status, &pool)))
}

/// Renews the worker and, only if it is still `active`, the leases of its jobs.
pub(super) const HEARTBEAT: &str = concat!(
    "WITH t AS (SELECT ",
    now_sql!(),
    " AS now),
     alive AS (UPDATE workers SET last_heartbeat_at = t.now FROM t WHERE id = $2 AND status = 'active' RETURNING id),
     renewed AS (UPDATE jobs SET lease_expires_at = least(t.now::numeric + $3::bigint, 9223372036854775807)::bigint
                   FROM t, alive WHERE jobs.worker_id = alive.id AND jobs.status = 'claimed')
     SELECT count(*) FROM alive"
);

pub(super) async fn heartbeat(
    client: &Client,
    statement: &Statement,
    worker_id: &str,
    lease: Duration,
    now: Now,
) -> Result<bool> {
    let alive: i64 = client.query_one(statement, &[&now, &worker_id, &millis(lease)]).await?.value(0)?;
    Ok(alive > 0)
}

pub(super) async fn deregister(client: &Client, worker_id: &str, now: Now) -> Result<()> {
    client
        .execute(
            &format!(
                "UPDATE workers SET status = 'terminated', stopped_at = t.now FROM (SELECT {NOW} AS now) t
                  WHERE id = $2 AND status IN ('starting', 'active')"
            ),
            &[&now, &worker_id],
        )
        .await?;
    Ok(())
}

pub(super) async fn mark_lost(
    client: &Client,
    pool: Option<&str>,
    stale_after: Duration,
    start_grace: Duration,
    now: Now,
) -> Result<Vec<String>> {
    let rows = client
        .query(
            &format!(
                "UPDATE workers SET status = 'lost', stopped_at = t.now FROM (SELECT {NOW} AS now) t
                  WHERE ($2::text IS NULL OR pool = $2)
                    AND ((status = 'active' AND last_heartbeat_at < t.now - least($3::bigint, t.now))
                      OR (status = 'starting' AND last_heartbeat_at < t.now - least($4::bigint, t.now)))
                 RETURNING id"
            ),
            &[&now, &pool, &millis(stale_after), &millis(start_grace)],
        )
        .await?;
    rows.iter().map(|row| row.value(0)).collect()
}

/// Under READ COMMITTED two checkers could both count the same gap and both fill it; the
/// advisory lock on the pool makes them plan one after the other, each seeing the workers
/// the other registered. It is released when the transaction ends.
pub(super) async fn plan(tx: &Transaction<'_>, request: &PlanRequest<'_>, now: Now) -> Result<WorkerPlan> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('jobhost.plan.' || current_schema() || '.' || $1::text, 0))",
        &[&request.pool],
    )
    .await?;
    let live = tx
        .query_one(
            &format!(
                "SELECT t.now, w.live, w.here, w.following_here
                   FROM (SELECT {NOW} AS now) t,
                        LATERAL (SELECT count(*) AS live, count(*) FILTER (WHERE host IS NOT DISTINCT FROM $4) AS here,
                                        count(*) FILTER (WHERE host IS NOT DISTINCT FROM $4 AND following)
                                          AS following_here
                                   FROM workers
                                  WHERE pool = $2
                                    AND (status = 'starting'
                                         OR (status = 'active' AND last_heartbeat_at >= t.now - least($3::bigint, t.now)))) w"
            ),
            &[&now, &request.pool, &millis(request.stale_after), &request.host],
        )
        .await?;
    let server_now: i64 = live.value(0)?;
    let live = LiveWorkers {
        everywhere: live.value::<i64>(1)? as u64,
        here: live.value::<i64>(2)? as u64,
        following_here: live.value::<i64>(3)? as u64,
    };
    // Counting further than every live worker plus this host's slots changes no decision.
    let enough = (live.everywhere + u64::from(request.max_workers)).min(i64::MAX as u64) as i64;
    // A pause committed after this read registers workers that find nothing to claim: the
    // draining ones exit and the following ones wait, as on a pool paused under them.
    let depth = tx
        .query_one(
            "SELECT (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE pool = $1 AND status = 'pending' AND run_at <= $2
                                            LIMIT $3) r),
                    EXISTS (SELECT 1 FROM paused_pools WHERE pool = $1)",
            &[&request.pool, &server_now, &enough],
        )
        .await?;
    let (queue_depth, paused): (i64, bool) = (depth.value(0)?, depth.value(1)?);
    let mut plan = WorkerPlan::new(queue_depth as u64, live, paused, request);
    let (following, draining) = plan.to_spawn(request);
    let new_ids = |count: u64| (0..count).map(|_| uuid::Uuid::new_v4().to_string()).collect::<Vec<String>>();
    let (new_following, new_workers) = (new_ids(following), new_ids(draining));
    let all: Vec<&String> = new_following.iter().chain(&new_workers).collect();
    if !all.is_empty() {
        let followers: Vec<bool> =
            new_following.iter().map(|_| true).chain(new_workers.iter().map(|_| false)).collect();
        tx.execute(
            "INSERT INTO workers (id, pool, status, host, started_at, last_heartbeat_at, following)
             SELECT id, $2, 'starting', $3, $4, $4, following FROM unnest($1::text[], $5::boolean[]) AS n(id, following)",
            &[&all, &request.pool, &request.host, &server_now, &followers],
        )
        .await?;
    }
    (plan.new_following, plan.new_workers) = (new_following, new_workers);
    Ok(plan)
}

/// Folds job_count_deltas into one row per (pool, status). Rows appended meanwhile were not
/// in the DELETE's snapshot and stay, so the sums stay exact; one folder at a time, so two
/// never wait on each other's rows.
pub(super) const FOLD_COUNTS: &str = "
    WITH folding AS (SELECT pg_try_advisory_xact_lock(hashtextextended('jobhost.counts.' || current_schema(), 0)) AS mine),
         gone AS (DELETE FROM job_count_deltas WHERE (SELECT mine FROM folding) RETURNING pool, status, jobs)
    INSERT INTO job_count_deltas
    SELECT pool, status, sum(jobs) FROM gone GROUP BY pool, status HAVING sum(jobs) <> 0";

pub(super) async fn status(client: &Client, pool: Option<&str>, now: Now) -> Result<StatusSnapshot> {
    client.execute(FOLD_COUNTS, &[]).await?;
    let mut snapshot = StatusSnapshot::default();
    // One statement, so the counts and the backlog come from one snapshot: `ready` is the
    // pending count less the pending jobs whose time has not come, a short index range.
    let rows = client
        .query(
            &format!(
                "SELECT t.now, c.status, c.jobs, w.waiting, o.oldest
                   FROM (SELECT {NOW} AS now) t
                   LEFT JOIN LATERAL (SELECT status, sum(jobs)::bigint AS jobs FROM job_count_deltas
                                       WHERE $2::text IS NULL OR pool = $2 GROUP BY status) c ON true
                  CROSS JOIN LATERAL (SELECT count(*) AS waiting FROM jobs
                                       WHERE status = 'pending' AND run_at > t.now
                                         AND ($2::text IS NULL OR pool = $2)) w
                  CROSS JOIN LATERAL (SELECT min(run_at) AS oldest FROM jobs
                                       WHERE status = 'pending' AND ($2::text IS NULL OR pool = $2)) o"
            ),
            &[&now, &pool],
        )
        .await?;
    let mut backlog = None;
    for row in &rows {
        if let Some(status) = optional_name_at(row, 1)? {
            snapshot.jobs.set(status, row.value::<i64>(2)?.max(0) as u64);
        }
        backlog = Some((row.value::<i64>(0)?, row.value::<i64>(3)?, row.value::<Option<i64>>(4)?));
    }
    let (server_now, waiting, oldest) = backlog.expect("the query returns at least one row");
    snapshot.ready = snapshot.jobs.pending.saturating_sub(waiting.max(0) as u64);
    snapshot.oldest_ready_age_ms =
        oldest.filter(|&run_at| run_at <= server_now).map(|run_at| server_now.saturating_sub(run_at));
    for row in client
        .query(
            "SELECT coalesce(host, ''), status, count(*) FROM workers WHERE ($1::text IS NULL OR pool = $1)
              GROUP BY host, status",
            &[&pool],
        )
        .await?
    {
        snapshot.add_workers(row.value(0)?, name_at(&row, 1)?, row.value::<i64>(2)?.max(0) as u64);
    }
    Ok(snapshot)
}

/// The sums are right however many deltas are unfolded; the status read of each pool that
/// follows folds them.
pub(super) async fn pool_names(client: &Client) -> Result<Vec<String>> {
    let rows =
        client.query("SELECT pool FROM job_count_deltas GROUP BY pool HAVING sum(jobs) > 0 ORDER BY pool", &[]).await?;
    rows.iter().map(|row| row.value(0)).collect()
}

pub(super) async fn list(client: &Client, filter: &WorkerFilter<'_>) -> Result<Vec<WorkerInfo>> {
    let rows = client
        .query(
            "SELECT w.id, w.pool, w.status, w.host, w.pid, w.started_at, w.last_heartbeat_at, w.stopped_at,
                    array(SELECT j.id FROM jobs j WHERE j.worker_id = w.id AND j.status = 'claimed' ORDER BY j.seq)
               FROM workers w
              WHERE ($1::text IS NULL OR w.pool = $1) AND ($2::text IS NULL OR w.status = $2)
              ORDER BY w.status IN ('starting', 'active') DESC, w.last_heartbeat_at DESC, w.id
              LIMIT $3",
            &[&filter.pool, &filter.status.map(WorkerStatus::as_str), &i64::from(filter.limit)],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(WorkerInfo {
                id: row.value(0)?,
                pool: row.value(1)?,
                status: name_at(row, 2)?,
                host: row.value(3)?,
                pid: row.value::<Option<i64>>(4)?.and_then(|pid| u32::try_from(pid).ok()),
                started_at: row.value(5)?,
                last_heartbeat_at: row.value(6)?,
                stopped_at: row.value(7)?,
                current_jobs: row.value(8)?,
            })
        })
        .collect()
}

/// Folds the activity appended since the last fold into one row per key, and the rows older
/// than the recent minutes into minute 0, as [`FOLD_COUNTS`] folds the counts.
pub(super) static FOLD_ACTIVITY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH t AS (SELECT {NOW} / 60000 - {recent} AS recent_from),
              folding AS (SELECT pg_try_advisory_xact_lock(hashtextextended('jobhost.activity.' || current_schema(), 0))
                          AS mine),
              gone AS (DELETE FROM activity WHERE (SELECT mine FROM folding) RETURNING *)
         INSERT INTO activity
         SELECT CASE WHEN minute < t.recent_from THEN 0 ELSE minute END, pool, processor, event, duration_bucket,
                fuel_bucket, sum(events), sum(duration_ms), sum(fuel)
           FROM gone, t GROUP BY 1, pool, processor, event, duration_bucket, fuel_bucket",
        recent = crate::activity::RECENT_MINUTES
    )
});

pub(super) async fn activity(client: &Client, now: Now) -> Result<(Millis, Vec<ActivityRow>)> {
    client.execute(FOLD_ACTIVITY.as_str(), &[&now]).await?;
    let now: Millis = client.query_one(&format!("SELECT {NOW}"), &[&now]).await?.value(0)?;
    let rows = client
        .query(
            "SELECT minute, pool, processor, event, duration_bucket, fuel_bucket, sum(events)::bigint,
                    sum(duration_ms)::bigint, sum(fuel)::bigint
               FROM activity GROUP BY minute, pool, processor, event, duration_bucket, fuel_bucket",
            &[],
        )
        .await?;
    let measure = |value: i64| value.max(0) as u64;
    let rows = rows
        .iter()
        .map(|row| {
            Ok(ActivityRow {
                minute: row.value(0)?,
                pool: row.value(1)?,
                processor: row.value(2)?,
                event: name_at(row, 3)?,
                duration_bucket: row.value(4)?,
                fuel_bucket: row.value(5)?,
                events: measure(row.value(6)?),
                duration_ms: measure(row.value(7)?),
                fuel: measure(row.value(8)?),
            })
        })
        .collect::<Result<_>>()?;
    Ok((now, rows))
}
