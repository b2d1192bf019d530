//! Workers: registration, heartbeats, reaping, and the pool-wide status snapshot.
//!
//! A worker is `starting` when the checker registered it but it has not come up yet,
//! `active` while it runs, `terminated` after a clean exit, and `lost` once the reaper
//! gave up on it. Only `active` workers can claim or heartbeat, so a worker declared lost
//! cannot come back and take jobs; the jobs it held are recovered by the reaper.

use std::time::Duration;

use rusqlite::{OptionalExtension, TransactionBehavior, named_params, params};
use serde::Serialize;

use super::error::{ErrorKind, Result, StoreError};
use super::jobs::{JobStatus, Recovery, recover_abandoned_in};
use super::{Millis, RetryPolicy, Store, millis};

#[derive(Debug, Clone)]
pub struct NewWorker {
    pub id: String,
    pub pool: String,
    pub host: Option<String>,
    pub pid: Option<u32>,
}

/// Counts for `jobhost status`. Its JSON form is a fixed interface other tools read.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub jobs: JobCounts,
    pub ready: u64,
    pub oldest_ready_age_ms: Option<Millis>,
    pub workers: WorkerCounts,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct JobCounts {
    pub pending: u64,
    pub claimed: u64,
    pub completed: u64,
    pub poisoned: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct WorkerCounts {
    pub starting: u64,
    pub active: u64,
    pub terminated: u64,
    pub lost: u64,
}

/// The checker's view of a pool and the workers it registered to close the gap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerPlan {
    pub queue_depth: u64,
    pub live_workers: u64,
    pub workers_needed: u64,
    /// Ids registered as `starting`; the caller launches one worker for each.
    pub new_workers: Vec<String>,
}

/// What one reaping pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    pub workers: Vec<String>,
    pub recovery: Recovery,
}

impl Store {
    /// A worker coming up: turns its `starting` row (left by the checker) into `active`, or
    /// registers it afresh. Refuses an id whose worker already ended or was declared lost.
    pub fn activate_worker(&mut self, worker: &NewWorker) -> Result<()> {
        self.with_conn(|conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let existing: Option<(String, String)> = tx
                .query_row("SELECT status, pool FROM workers WHERE id = ?1", [&worker.id], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()?;
            match existing {
                None => {
                    tx.execute(
                        "INSERT INTO workers (id, pool, status, host, pid, started_at, last_heartbeat_at)
                     VALUES (?1, ?2, 'active', ?3, ?4, ?5, ?5)",
                        params![worker.id, worker.pool, worker.host, worker.pid, now],
                    )?;
                }
                Some((status, pool)) if status == "starting" && pool == worker.pool => {
                    tx.execute(
                        "UPDATE workers SET status = 'active', host = ?1, pid = ?2, last_heartbeat_at = ?3
                      WHERE id = ?4 AND status = 'starting'",
                        params![worker.host, worker.pid, now, worker.id],
                    )?;
                }
                Some((status, pool)) if status == "starting" => {
                    return Err(StoreError::new(
                        ErrorKind::Refused,
                        format!(
                            "worker {} was registered for pool {pool:?}, not {:?}: start it with --pool {pool}",
                            worker.id, worker.pool
                        ),
                    ));
                }
                Some((status, _)) => {
                    return Err(StoreError::new(
                        ErrorKind::Refused,
                        format!(
                            "worker {} is already {status}: a worker id is used once; start with a new --worker-id",
                            worker.id
                        ),
                    ));
                }
            }
            tx.commit()?;
            Ok(())
        })
    }

    /// Proves `worker_id` alive and extends the leases of the jobs it holds by `lease`.
    /// Returns false when the worker is no longer `active` (it was reaped): it must stop.
    pub fn heartbeat(&mut self, worker_id: &str, lease: Duration) -> Result<bool> {
        self.with_conn(|conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let alive = tx
                .prepare_cached("UPDATE workers SET last_heartbeat_at = ?1 WHERE id = ?2 AND status = 'active'")?
                .execute(params![now, worker_id])?
                > 0;
            if alive {
                tx.prepare_cached("UPDATE jobs SET lease_expires_at = ?1 WHERE worker_id = ?2 AND status = 'claimed'")?
                    .execute(params![now.saturating_add(millis(lease)), worker_id])?;
            }
            tx.commit()?;
            Ok(alive)
        })
    }

    /// A clean exit. Jobs it still holds (it should hold none) are left to the reaper.
    pub fn deregister_worker(&mut self, worker_id: &str) -> Result<()> {
        self.with_conn(|conn, now| {
            conn.execute(
                "UPDATE workers SET status = 'terminated', stopped_at = ?1
                  WHERE id = ?2 AND status IN ('starting', 'active')",
                params![now, worker_id],
            )?;
            Ok(())
        })
    }

    /// One reaping pass, in one transaction: `active` workers silent for longer than
    /// `stale_after` and `starting` ones not up within `start_grace` become `lost`; then
    /// every abandoned job goes back through the retry policy as a `worker_lost` attempt.
    pub fn reap(
        &mut self,
        pool: Option<&str>,
        stale_after: Duration,
        start_grace: Duration,
        retry: &RetryPolicy,
    ) -> Result<Reaped> {
        self.with_conn(|conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
            let recovery = recover_abandoned_in(&tx, pool, retry, now)?;
            tx.commit()?;
            Ok(Reaped { workers, recovery })
        })
    }

    /// Registers as `starting` the workers `pool` lacks: `min(ready jobs, max_workers)`
    /// minus the live ones. Counting and registering happen in one transaction, so two
    /// checkers running at once never spawn more than `max_workers` between them.
    pub fn plan_workers(&mut self, pool: &str, max_workers: u32, stale_after: Duration) -> Result<WorkerPlan> {
        self.with_conn(|conn, now| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (queue_depth, _) = ready_in(&tx, Some(pool), now)?;
            let live_workers = live_workers_in(&tx, pool, now.saturating_sub(millis(stale_after)))?;
            let workers_needed = queue_depth.min(u64::from(max_workers));
            let mut new_workers = Vec::new();
            for _ in live_workers..workers_needed {
                let id = uuid::Uuid::new_v4().to_string();
                tx.execute(
                    "INSERT INTO workers (id, pool, status, started_at, last_heartbeat_at)
                 VALUES (?1, ?2, 'starting', ?3, ?3)",
                    params![id, pool, now],
                )?;
                new_workers.push(id);
            }
            tx.commit()?;
            Ok(WorkerPlan { queue_depth, live_workers, workers_needed, new_workers })
        })
    }

    pub fn status(&mut self, pool: Option<&str>) -> Result<StatusSnapshot> {
        self.with_conn(|conn, now| {
            let mut snapshot = StatusSnapshot::default();
            let mut jobs = conn.prepare_cached(
                "SELECT status, sum(jobs) FROM job_counts WHERE (?1 IS NULL OR pool = ?1) GROUP BY status",
            )?;
            for row in jobs.query_map([pool], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?)))? {
                let (status, count) = row?;
                let counts = &mut snapshot.jobs;
                match JobStatus::parse(&status)? {
                    JobStatus::Pending => counts.pending = count,
                    JobStatus::Claimed => counts.claimed = count,
                    JobStatus::Completed => counts.completed = count,
                    JobStatus::Poisoned => counts.poisoned = count,
                    JobStatus::Cancelled => counts.cancelled = count,
                }
            }
            let mut workers = conn.prepare_cached(
                "SELECT status, count(*) FROM workers WHERE (?1 IS NULL OR pool = ?1) GROUP BY status",
            )?;
            for row in workers.query_map([pool], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?)))? {
                let (status, count) = row?;
                let counts = &mut snapshot.workers;
                match status.as_str() {
                    "starting" => counts.starting = count,
                    "active" => counts.active = count,
                    "terminated" => counts.terminated = count,
                    _ => counts.lost = count,
                }
            }
            let (ready, oldest_run_at) = ready_in(conn, pool, now)?;
            snapshot.ready = ready;
            snapshot.oldest_ready_age_ms = oldest_run_at.map(|run_at| now.saturating_sub(run_at).max(0));
            Ok(snapshot)
        })
    }
}

/// Jobs ready to run at `now` (of `pool`, if given), and the earliest `run_at` among them.
fn ready_in(conn: &rusqlite::Connection, pool: Option<&str>, now: Millis) -> Result<(u64, Option<Millis>)> {
    let ready = conn.query_row(
        "SELECT count(*), min(run_at) FROM jobs
          WHERE status = 'pending' AND run_at <= ?1 AND (?2 IS NULL OR pool = ?2)",
        params![now, pool],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(ready)
}

fn live_workers_in(conn: &rusqlite::Connection, pool: &str, heartbeat_cutoff: Millis) -> Result<u64> {
    let live = conn.query_row(
        "SELECT count(*) FROM workers
          WHERE pool = ?1 AND (status = 'starting' OR (status = 'active' AND last_heartbeat_at >= ?2))",
        params![pool, heartbeat_cutoff],
        |row| row.get(0),
    )?;
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewJob;
    use crate::store::testing::TestStore;

    const NO_BACKOFF: RetryPolicy = RetryPolicy { initial: Duration::ZERO, max: Duration::ZERO, jitter: 0.0 };
    const STALE: Duration = Duration::from_secs(60);
    const GRACE: Duration = Duration::from_secs(30);

    fn worker(id: &str) -> NewWorker {
        NewWorker { id: id.into(), pool: "default".into(), host: Some("here".into()), pid: Some(1) }
    }

    #[test]
    fn a_silent_worker_is_reaped_and_its_job_released() {
        let mut t = TestStore::new();
        t.store.activate_worker(&worker("w1")).unwrap();
        t.store
            .enqueue_all(&[NewJob {
                pool: "default".into(),
                processor: "echo".into(),
                payload: "{}".into(),
                priority: 0,
                max_attempts: 3,
                delay_ms: 0,
            }])
            .unwrap();
        assert_eq!(t.store.claim("default", "w1", STALE * 10, 1).unwrap().len(), 1);

        t.advance(millis(STALE));
        assert!(
            t.store.reap(None, STALE, GRACE, &NO_BACKOFF).unwrap().workers.is_empty(),
            "exactly at the threshold it is alive"
        );
        t.advance(1);
        let reaped = t.store.reap(None, STALE, GRACE, &NO_BACKOFF).unwrap();
        assert_eq!(reaped.workers, ["w1"]);
        assert_eq!(reaped.recovery, Recovery { released: 1, poisoned: 0 });
        assert!(!t.store.heartbeat("w1", STALE).unwrap(), "a lost worker is told to stop");
        assert!(t.store.claim("default", "w1", STALE, 1).unwrap().is_empty(), "a lost worker cannot claim");
        assert!(t.store.activate_worker(&worker("w1")).is_err(), "a lost id cannot come back");
    }

    #[test]
    fn heartbeats_keep_a_worker_and_its_leases_alive() {
        let mut t = TestStore::new();
        t.store.activate_worker(&worker("w1")).unwrap();
        t.store
            .enqueue_all(&[NewJob {
                pool: "default".into(),
                processor: "echo".into(),
                payload: "{}".into(),
                priority: 0,
                max_attempts: 3,
                delay_ms: 0,
            }])
            .unwrap();
        t.store.claim("default", "w1", STALE, 1).unwrap();
        for _ in 0..10 {
            t.advance(millis(STALE) / 2);
            assert!(t.store.heartbeat("w1", STALE).unwrap());
            let reaped = t.store.reap(None, STALE, GRACE, &NO_BACKOFF).unwrap();
            assert_eq!(reaped, Reaped::default(), "nothing is reaped while heartbeats arrive");
        }
        assert_eq!(t.store.status(None).unwrap().jobs.claimed, 1);
    }

    #[test]
    fn a_starting_worker_that_never_comes_up_is_lost_after_the_grace() {
        let mut t = TestStore::new();
        t.store
            .enqueue_all(&[NewJob {
                pool: "default".into(),
                processor: "echo".into(),
                payload: "{}".into(),
                priority: 0,
                max_attempts: 3,
                delay_ms: 0,
            }])
            .unwrap();
        let planned = t.store.plan_workers("default", 1, STALE).unwrap().new_workers;
        assert_eq!(t.store.status(None).unwrap().workers.starting, 1);
        t.advance(millis(GRACE) + 1);
        assert_eq!(t.store.reap(None, STALE, GRACE, &NO_BACKOFF).unwrap().workers, planned);
        let workers = t.store.status(None).unwrap().workers;
        assert_eq!((workers.starting, workers.lost), (0, 1));
    }

    #[test]
    fn plan_workers_counts_starting_workers_and_never_overspawns() {
        let mut t = TestStore::new();
        let new = NewJob {
            pool: "default".into(),
            processor: "echo".into(),
            payload: "{}".into(),
            priority: 0,
            max_attempts: 3,
            delay_ms: 0,
        };
        t.store.enqueue_all(&vec![new; 5]).unwrap();
        let first = t.store.plan_workers("default", 3, STALE).unwrap();
        assert_eq!(
            (first.queue_depth, first.live_workers, first.workers_needed, first.new_workers.len()),
            (5, 0, 3, 3)
        );
        let second = t.store.plan_workers("default", 3, STALE).unwrap();
        assert_eq!((second.live_workers, second.new_workers.len()), (3, 0), "starting workers count as live");
        assert_eq!(t.store.plan_workers("default", 4, STALE).unwrap().new_workers.len(), 1);
        assert_eq!(t.store.plan_workers("empty", 4, STALE).unwrap(), WorkerPlan::default());
    }

    #[test]
    fn status_counts_jobs_and_workers_and_the_ready_backlog() {
        let mut t = TestStore::new();
        let new = |delay_ms| NewJob {
            pool: "default".into(),
            processor: "echo".into(),
            payload: "{}".into(),
            priority: 0,
            max_attempts: 3,
            delay_ms,
        };
        t.store.enqueue_all(&[new(0), new(0), new(60_000)]).unwrap();
        t.advance(250);
        t.store.activate_worker(&worker("w1")).unwrap();
        t.store.claim("default", "w1", STALE, 1).unwrap();
        let status = t.store.status(None).unwrap();
        assert_eq!(status.jobs, JobCounts { pending: 2, claimed: 1, ..JobCounts::default() });
        assert_eq!((status.ready, status.oldest_ready_age_ms), (1, Some(250)));
        assert_eq!(status.workers.active, 1);
        assert_eq!(t.store.status(Some("other")).unwrap(), StatusSnapshot::default());
    }
}
