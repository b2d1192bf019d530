//! Workers on SQLite: registration, heartbeats, reaping, planning, and the status snapshot.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Transaction, named_params, params};

use super::jobs::name_at;
use crate::error::{ErrorKind, Result, StoreError};
use crate::model::*;

pub(super) fn activate(tx: &Transaction<'_>, worker: &NewWorker, now: Millis) -> Result<()> {
    let existing: Option<(WorkerStatus, String)> = tx
        .query_row("SELECT status, pool FROM workers WHERE id = ?1", [&worker.id], |row| {
            Ok((name_at(row, 0)?, row.get(1)?))
        })
        .optional()?;
    match existing {
        None => {
            tx.execute(
                "INSERT INTO workers (id, pool, status, host, pid, started_at, last_heartbeat_at, following)
                 VALUES (?1, ?2, 'active', ?3, ?4, ?5, ?5, ?6)",
                params![worker.id, worker.pool, worker.host, worker.pid, now, worker.following],
            )?;
            Ok(())
        }
        Some((WorkerStatus::Starting, pool)) if pool == worker.pool => {
            tx.execute(
                "UPDATE workers SET status = 'active', host = ?1, pid = ?2, last_heartbeat_at = ?3
                  WHERE id = ?4 AND status = 'starting'",
                params![worker.host, worker.pid, now, worker.id],
            )?;
            Ok(())
        }
        Some((status, pool)) => {
            Err(StoreError::new(ErrorKind::Refused, NewWorker::refusal(&worker.id, &worker.pool, status, &pool)))
        }
    }
}

pub(super) fn heartbeat(tx: &Transaction<'_>, worker_id: &str, lease: Duration, now: Millis) -> Result<bool> {
    let alive = tx
        .prepare_cached("UPDATE workers SET last_heartbeat_at = ?1 WHERE id = ?2 AND status = 'active'")?
        .execute(params![now, worker_id])?
        > 0;
    if alive {
        tx.prepare_cached("UPDATE jobs SET lease_expires_at = ?1 WHERE worker_id = ?2 AND status = 'claimed'")?
            .execute(params![now.saturating_add(millis(lease)), worker_id])?;
    }
    Ok(alive)
}

pub(super) fn deregister(conn: &Connection, worker_id: &str, now: Millis) -> Result<()> {
    conn.execute(
        "UPDATE workers SET status = 'terminated', stopped_at = ?1 WHERE id = ?2 AND status IN ('starting', 'active')",
        params![now, worker_id],
    )?;
    Ok(())
}

pub(super) fn mark_lost(
    tx: &Transaction<'_>,
    pool: Option<&str>,
    stale_after: Duration,
    start_grace: Duration,
    now: Millis,
) -> Result<Vec<String>> {
    let workers = tx
        .prepare_cached(
            "UPDATE workers SET status = 'lost', stopped_at = :now
              WHERE (:pool IS NULL OR pool = :pool)
                AND ((status = 'active' AND last_heartbeat_at < :active_cutoff)
                  OR (status = 'starting' AND last_heartbeat_at < :starting_cutoff))
             RETURNING id",
        )?
        .query_map(
            named_params! {
                ":now": now,
                ":pool": pool,
                ":active_cutoff": now.saturating_sub(millis(stale_after)),
                ":starting_cutoff": now.saturating_sub(millis(start_grace)),
            },
            |row| row.get(0),
        )?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(workers)
}

/// The transaction holds the write lock, so checkers planning at once see each other's
/// registrations and never over-spawn.
pub(super) fn plan(tx: &Transaction<'_>, request: &PlanRequest<'_>, now: Millis) -> Result<WorkerPlan> {
    let live = tx.query_row(
        "SELECT count(*), count(*) FILTER (WHERE host IS ?3), count(*) FILTER (WHERE host IS ?3 AND following)
           FROM workers
          WHERE pool = ?1 AND (status = 'starting' OR (status = 'active' AND last_heartbeat_at >= ?2))",
        params![request.pool, now.saturating_sub(millis(request.stale_after)), request.host],
        |row| Ok(LiveWorkers { everywhere: row.get(0)?, here: row.get(1)?, following_here: row.get(2)? }),
    )?;
    // Counting further than every live worker plus this host's slots changes no decision.
    let enough = live.everywhere + u64::from(request.max_workers);
    let (queue_depth, paused): (u64, bool) = tx.query_row(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE pool = ?1 AND status = 'pending' AND run_at <= ?2
                                        LIMIT ?3)),
                EXISTS (SELECT 1 FROM paused_pools WHERE pool = ?1)",
        params![request.pool, now, enough],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let mut plan = WorkerPlan::new(queue_depth, live, paused, request);
    let (following, draining) = plan.to_spawn(request);
    for (count, is_following) in [(following, true), (draining, false)] {
        for _ in 0..count {
            let id = uuid::Uuid::new_v4().to_string();
            tx.execute(
                "INSERT INTO workers (id, pool, status, host, started_at, last_heartbeat_at, following)
                 VALUES (?1, ?2, 'starting', ?3, ?4, ?4, ?5)",
                params![id, request.pool, request.host, now, is_following],
            )?;
            if is_following { plan.new_following.push(id) } else { plan.new_workers.push(id) }
        }
    }
    Ok(plan)
}

pub(super) fn status(conn: &Connection, pool: Option<&str>, now: Millis) -> Result<StatusSnapshot> {
    let conn = conn.unchecked_transaction()?;
    let mut snapshot = StatusSnapshot::default();
    let mut jobs = conn
        .prepare_cached("SELECT status, sum(jobs) FROM job_counts WHERE (?1 IS NULL OR pool = ?1) GROUP BY status")?;
    for row in jobs.query_map([pool], |row| Ok((name_at(row, 0)?, row.get::<_, i64>(1)?)))? {
        let (status, count) = row?;
        snapshot.jobs.set(status, count.max(0) as u64);
    }
    let mut workers = conn.prepare_cached(
        "SELECT coalesce(host, ''), status, count(*) FROM workers WHERE (?1 IS NULL OR pool = ?1) GROUP BY host, status",
    )?;
    for row in workers.query_map([pool], |row| Ok((row.get::<_, String>(0)?, name_at(row, 1)?, row.get(2)?)))? {
        let (host, status, count) = row?;
        snapshot.add_workers(host, status, count);
    }
    // `ready` is the pending count less the pending jobs whose time has not come, a short
    // index range; the read transaction makes both come from one snapshot.
    let (waiting, oldest): (u64, Option<Millis>) = conn.query_row(
        "SELECT (SELECT count(*) FROM jobs WHERE status = 'pending' AND run_at > ?1 AND (?2 IS NULL OR pool = ?2)),
                (SELECT run_at FROM jobs WHERE status = 'pending' AND (?2 IS NULL OR pool = ?2)
                  ORDER BY run_at LIMIT 1)",
        params![now, pool],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    snapshot.ready = snapshot.jobs.pending.saturating_sub(waiting);
    snapshot.oldest_ready_age_ms = oldest.filter(|&run_at| run_at <= now).map(|run_at| now.saturating_sub(run_at));
    Ok(snapshot)
}

pub(super) fn pool_names(conn: &Connection) -> Result<Vec<String>> {
    let names = conn
        .prepare_cached("SELECT pool FROM job_counts GROUP BY pool HAVING sum(jobs) > 0 ORDER BY pool")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(names)
}

pub(super) fn list(conn: &Connection, filter: &WorkerFilter<'_>) -> Result<Vec<WorkerInfo>> {
    let workers = conn
        .prepare_cached(
            "SELECT w.id, w.pool, w.status, w.host, w.pid, w.started_at, w.last_heartbeat_at, w.stopped_at,
                    (SELECT json_group_array(j.id) FROM jobs j WHERE j.worker_id = w.id AND j.status = 'claimed')
               FROM workers w
              WHERE (:pool IS NULL OR w.pool = :pool) AND (:status IS NULL OR w.status = :status)
              ORDER BY w.status IN ('starting', 'active') DESC, w.last_heartbeat_at DESC, w.id
              LIMIT :limit",
        )?
        .query_map(named_params! { ":pool": filter.pool, ":status": filter.status.map(WorkerStatus::as_str), ":limit": filter.limit }, |row| {
            let current: String = row.get(8)?;
            Ok(WorkerInfo {
                id: row.get(0)?,
                pool: row.get(1)?,
                status: name_at(row, 2)?,
                host: row.get(3)?,
                pid: row.get::<_, Option<i64>>(4)?.and_then(|pid| u32::try_from(pid).ok()),
                started_at: row.get(5)?,
                last_heartbeat_at: row.get(6)?,
                stopped_at: row.get(7)?,
                current_jobs: serde_json::from_str(&current).unwrap_or_default(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(workers)
}

const ACTIVITY_KEY: &str = "pool, processor, event, duration_bucket, fuel_bucket";

/// Folds rows older than the recent minutes into minute 0, in one write transaction that is
/// only taken when there is something to fold.
pub(super) fn fold_activity(conn: &mut Connection, now: Millis) -> Result<()> {
    let before = now.div_euclid(60_000) - crate::activity::RECENT_MINUTES;
    let old: bool =
        conn.query_row("SELECT EXISTS (SELECT 1 FROM activity WHERE minute BETWEEN 1 AND ?1)", [before], |row| {
            row.get(0)
        })?;
    if !old {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute(
        &format!(
            "INSERT INTO activity (minute, {ACTIVITY_KEY}, events, duration_ms, fuel)
             SELECT 0, {ACTIVITY_KEY}, sum(events), sum(duration_ms), sum(fuel) FROM activity
              WHERE minute BETWEEN 1 AND ?1 GROUP BY {ACTIVITY_KEY}
             ON CONFLICT DO UPDATE SET events = events + excluded.events,
                 duration_ms = duration_ms + excluded.duration_ms, fuel = fuel + excluded.fuel"
        ),
        [before],
    )?;
    tx.execute("DELETE FROM activity WHERE minute BETWEEN 1 AND ?1", [before])?;
    tx.commit()?;
    Ok(())
}

pub(super) fn activity(conn: &Connection) -> Result<Vec<crate::activity::ActivityRow>> {
    let rows = conn
        .prepare_cached(&format!("SELECT minute, {ACTIVITY_KEY}, events, duration_ms, fuel FROM activity"))?
        .query_map([], |row| {
            let measure = |index| row.get::<_, i64>(index).map(|value| value.max(0) as u64);
            Ok(crate::activity::ActivityRow {
                minute: row.get(0)?,
                pool: row.get(1)?,
                processor: row.get(2)?,
                event: name_at(row, 3)?,
                duration_bucket: row.get(4)?,
                fuel_bucket: row.get(5)?,
                events: measure(6)?,
                duration_ms: measure(7)?,
                fuel: measure(8)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
