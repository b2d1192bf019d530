//! Jobs on SQLite: enqueue, settle, claim (within flow limits), find the abandoned, inspect, retry, cancel, purge,
//! export and import.
//!
//! Reading never fails on one odd row: counts are read at the width SQLite stores and
//! clamped, and a payload that cannot be parsed back is shown as its text, so one damaged
//! job cannot stop listing, showing or reaping the others.

use jobhost_core::outcome::OutcomeKind;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, ToSql, Transaction, named_params, params};

use jobhost_core::flow::FlowLimit;

use crate::activity::Tally;
use crate::driver::{Abandoned, ClaimRef, Resolution, Settlement};
use crate::error::{ErrorKind, Result, StoreError};
use crate::flow::Gate;
use crate::model::*;

pub(super) fn enqueue(
    tx: &Transaction<'_>,
    jobs: &mut (dyn Iterator<Item = Result<NewJob, Refusal>> + Send),
    now: Millis,
) -> Result<EnqueueReport> {
    // A job whose key is held inserts nothing: the unique index turns the insert into a no-op.
    let mut insert = tx.prepare_cached(
        "INSERT INTO jobs (id, pool, processor, payload, status, priority, run_at, attempts,
                           max_attempts, created_at, updated_at, unique_key)
         VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, 0, ?7, ?8, ?8, ?9)
         ON CONFLICT (pool, unique_key) WHERE unique_key IS NOT NULL DO NOTHING",
    )?;
    let mut report = EnqueueReport::default();
    let mut tally = Tally::default();
    for (index, job) in jobs.enumerate() {
        let job = job.map_err(|Refusal(why)| StoreError::new(ErrorKind::Refused, why))?;
        let run_at = job.ready.run_at(now);
        let unique_key = job.unique.as_ref().map(|unique| &unique.key);
        let row = params![
            job.id,
            job.pool,
            job.processor,
            job.payload,
            job.priority,
            run_at,
            job.max_attempts,
            now,
            unique_key
        ];
        let mut inserted = insert.execute(row)?;
        // The key is held: by a job that still holds it, or by one that let go of it (see
        // `Unique`), which frees it for this job. The write lock makes the two one step.
        if let (0, Some(unique)) = (inserted, &job.unique)
            && release_unique_key(tx, &job.pool, unique, now)?
        {
            inserted = insert.execute(row)?;
        }
        match (inserted, &job.unique) {
            (0, Some(unique)) => {
                let (id, outcome) = meet_holder(tx, &job, unique, run_at, now)?;
                report.matched.push(Matched { index: index as u64, id, outcome });
            }
            _ => {
                if !job.after.is_empty() {
                    wait_for_parents(tx, &job)?;
                }
                tally.enqueued(&job.pool, &job.processor);
                report.queued += 1;
            }
        }
    }
    record(tx, &tally, now)?;
    Ok(report)
}

/// Makes `job`, just inserted, wait for its parents: links it to each, flags each as having
/// dependents (so its triggers settle the job; see schema version 12), and holds the job
/// back while any has not completed. A parent that does not exist or will never complete
/// refuses the job. The write lock keeps every parent as it was read until the commit.
fn wait_for_parents(tx: &Transaction<'_>, job: &NewJob) -> Result<()> {
    let mut flag = tx.prepare_cached("UPDATE jobs SET has_dependents = 1 WHERE id = ?1 RETURNING seq, status")?;
    let mut link =
        tx.prepare_cached("INSERT INTO job_parents (parent_seq, child_seq) SELECT ?1, seq FROM jobs WHERE id = ?2")?;
    let mut left = 0;
    for parent in &job.after {
        let found: Option<(i64, JobStatus)> =
            flag.query_row([parent], |row| Ok((row.get(0)?, name_at(row, 1)?))).optional()?;
        if let Some(why) = parent_refusal(parent, found.map(|(_, status)| status)) {
            return Err(StoreError::new(ErrorKind::Refused, why));
        }
        let (seq, status) = found.expect("a missing parent is refused above");
        left += u32::from(status != JobStatus::Completed);
        link.execute(params![seq, job.id])?;
    }
    if left > 0 {
        tx.prepare_cached("UPDATE jobs SET parents_left = ?1, run_at = ?2 WHERE id = ?3")?.execute(params![
            left,
            WAITING_RUN_AT,
            job.id
        ])?;
    }
    Ok(())
}

/// Frees `unique.key` in `pool` if the job holding it no longer does (see [`Unique`]): it
/// was cancelled, or it finished more than `unique.within` ago. Whether it did.
fn release_unique_key(tx: &Transaction<'_>, pool: &str, unique: &Unique, now: Millis) -> Result<bool> {
    let freed = tx
        .prepare_cached(
            "UPDATE jobs SET unique_key = NULL
          WHERE pool = ?1 AND unique_key = ?2
            AND (status = 'cancelled' OR (status IN ('completed', 'poisoned') AND finished_at <= ?3))",
        )?
        .execute(params![pool, unique.key, now.saturating_sub(millis(unique.within))])?;
    Ok(freed > 0)
}

/// What `job`, which found its key held, does to the holder (see [`OnMatch`]); the holder's
/// id and what became of `job`.
fn meet_holder(
    tx: &Transaction<'_>,
    job: &NewJob,
    unique: &Unique,
    run_at: Millis,
    now: Millis,
) -> Result<(String, EnqueueOutcome)> {
    let replaced = match unique.on_match {
        OnMatch::Skip => None,
        OnMatch::Replace | OnMatch::ReplaceAndReschedule => tx
            .prepare_cached(
                "UPDATE jobs SET payload = ?1, run_at = CASE WHEN ?2 THEN ?3 ELSE run_at END, updated_at = ?4
                  WHERE pool = ?5 AND unique_key = ?6 AND status = 'pending'
                 RETURNING id",
            )?
            .query_row(
                params![
                    job.payload,
                    unique.on_match == OnMatch::ReplaceAndReschedule,
                    run_at,
                    now,
                    job.pool,
                    unique.key
                ],
                |row| row.get(0),
            )
            .optional()?,
    };
    if let Some(id) = replaced {
        return Ok((id, EnqueueOutcome::Replaced));
    }
    let holder = tx
        .prepare_cached("SELECT id FROM jobs WHERE pool = ?1 AND unique_key = ?2")?
        .query_row(params![job.pool, unique.key], |row| row.get(0))?;
    Ok((holder, EnqueueOutcome::Duplicate))
}

/// Adds a transaction's [`Tally`] to the activity table.
pub(super) fn record(tx: &Transaction<'_>, tally: &Tally, now: Millis) -> Result<()> {
    let mut add = tx.prepare_cached(
        "INSERT INTO activity (minute, pool, processor, event, duration_bucket, fuel_bucket, events, duration_ms, fuel)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT DO UPDATE SET events = events + excluded.events,
             duration_ms = duration_ms + excluded.duration_ms, fuel = fuel + excluded.fuel",
    )?;
    let clamp = |value: u64| value.min(i64::MAX as u64) as i64;
    for ((pool, processor, event, duration_bucket, fuel_bucket), value) in &tally.rows {
        add.execute(params![
            now.div_euclid(60_000),
            pool,
            processor,
            event.as_str(),
            duration_bucket,
            fuel_bucket,
            clamp(value.events),
            clamp(value.duration_ms),
            clamp(value.fuel)
        ])?;
    }
    Ok(())
}

/// Settles one finished attempt if its claim is still live, counting it in `tally`.
pub(super) fn settle(
    tx: &Transaction<'_>,
    settlement: &Settlement<'_>,
    now: Millis,
    tally: &mut Tally,
) -> Result<Settled> {
    let ClaimRef { seq, worker_id, token, attempt } = &settlement.claim;
    let last_error = settlement.report.last_error();
    let (changed, settled) = match settlement.resolution {
        Resolution::Complete { result } => (
            tx.prepare_cached(
                "UPDATE jobs SET status = 'completed', result = ?1, last_error = NULL, lease_expires_at = NULL,
                                 finished_at = ?2, updated_at = ?2
                  WHERE seq = ?3 AND status = 'claimed' AND worker_id = ?4 AND claim_token = ?5
                 RETURNING pool, processor",
            )?
            .query_row(params![result, now, seq, worker_id, token], pool_and_processor)
            .optional()?,
            Settled::Completed,
        ),
        Resolution::Retry { delay } => {
            let run_at = now.saturating_add(millis(delay));
            (
                tx.prepare_cached(
                    "UPDATE jobs SET status = 'pending', run_at = ?1, last_error = ?2, worker_id = NULL,
                                     claim_token = NULL, lease_expires_at = NULL, updated_at = ?3
                      WHERE seq = ?4 AND status = 'claimed' AND worker_id = ?5 AND claim_token = ?6
                     RETURNING pool, processor",
                )?
                .query_row(params![run_at, last_error, now, seq, worker_id, token], pool_and_processor)
                .optional()?,
                Settled::Retrying { run_at },
            )
        }
        Resolution::Poison => (
            tx.prepare_cached(
                "UPDATE jobs SET status = 'poisoned', last_error = ?1, lease_expires_at = NULL,
                                 finished_at = ?2, updated_at = ?2
                  WHERE seq = ?3 AND status = 'claimed' AND worker_id = ?4 AND claim_token = ?5
                 RETURNING pool, processor",
            )?
            .query_row(params![last_error, now, seq, worker_id, token], pool_and_processor)
            .optional()?,
            Settled::Poisoned,
        ),
    };
    let Some((pool, processor)) = changed else {
        return Ok(Settled::Stale);
    };
    let report = &settlement.report;
    tally.finished(pool, processor, report);
    let clamp = |value: Option<u64>| value.map(|value| value.min(i64::MAX as u64) as i64);
    tx.prepare_cached(
        "UPDATE attempts
            SET finished_at = ?1, outcome = ?2, message = ?3, stderr = ?4, fuel_used = ?5, duration_ms = ?6,
                processor_sha256 = ?7
          WHERE job_seq = ?8 AND attempt = ?9 AND outcome IS NULL",
    )?
    .execute(params![
        now,
        report.kind.as_str(),
        report.message,
        report.stderr,
        clamp(report.fuel_used),
        clamp(report.duration_ms),
        report.processor_sha256,
        seq,
        attempt
    ])?;
    Ok(settled)
}

fn pool_and_processor(row: &Row<'_>) -> rusqlite::Result<(String, String)> {
    Ok((row.get(0)?, row.get(1)?))
}

/// Takes up to `claim.limit` ready jobs, highest priority first, then the longest ready,
/// within the claim's flow limits (see [`crate::flow`]); and whether a limit held back a
/// ready job. The transaction holds the write lock, so no job goes to two workers, what a
/// limit counts is what runs, and an empty answer means no job was ready at that instant.
/// Only an `active` worker can claim, and nothing of a paused pool: pausing takes the write
/// lock too, so every claim after it sees it.
pub(super) fn claim(tx: &Transaction<'_>, claim: &ClaimRequest<'_>, now: Millis) -> Result<(Vec<ClaimedJob>, bool)> {
    let token = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
    const READY: &str = "SELECT seq, processor FROM jobs
              WHERE pool = :pool AND status = 'pending' AND run_at <= :now
                AND EXISTS (SELECT 1 FROM workers WHERE id = :worker AND status = 'active')
                AND NOT EXISTS (SELECT 1 FROM paused_pools WHERE paused_pools.pool = :pool)
              ORDER BY priority DESC, run_at, seq";
    let mut held_back = false;
    // Each pick with its flow key, when its processor is rate-limited (a start to record).
    let mut picked: Vec<(i64, Option<(String, String)>)> = Vec::new();
    if claim.flow.is_empty() {
        // Pick, then take each pick by its key: the same effect as one UPDATE over an
        // `IN (SELECT …)`, without the temporary index SQLite builds for the IN on every call.
        let mut ready = tx.prepare_cached(&format!("{READY} LIMIT :limit"))?;
        let mut rows = ready.query(named_params! {
            ":pool": claim.pool, ":now": now, ":worker": claim.worker_id, ":limit": claim.limit
        })?;
        while let Some(row) = rows.next()? {
            picked.push((row.get(0)?, None));
        }
    } else {
        let mut gate = flow_gate(tx, claim.flow, now)?;
        let mut payload_of = tx.prepare_cached("SELECT payload FROM jobs WHERE seq = ?1")?;
        // Read in claim order, without a limit, only as far as needed: SQLite steps lazily.
        let mut ready = tx.prepare_cached(READY)?;
        let mut rows = ready.query(named_params! { ":pool": claim.pool, ":now": now, ":worker": claim.worker_id })?;
        while picked.len() < claim.limit as usize
            && let Some(row) = rows.next()?
        {
            let (seq, processor): (i64, String) = (row.get(0)?, row.get(1)?);
            let Some(limit) = gate.limit(&processor) else {
                picked.push((seq, None));
                continue;
            };
            let key = crate::flow::key_of(limit, &payload_of.query_row([seq], |row| row.get::<_, String>(0))?);
            if gate.admit(&processor, Some(&key)) {
                picked.push((seq, limit.rate.is_some().then_some((processor, key))));
            } else {
                held_back = true;
            }
        }
    }
    let mut take = tx.prepare_cached(
        "UPDATE jobs
            SET status = 'claimed', worker_id = ?1, claim_token = ?2, attempts = attempts + 1,
                lease_expires_at = ?3, updated_at = ?4
          WHERE seq = ?5 AND status = 'pending'
         RETURNING id, pool, processor, payload, attempts, max_attempts",
    )?;
    let mut start_attempt =
        tx.prepare_cached("INSERT INTO attempts (job_seq, attempt, worker_id, started_at) VALUES (?1, ?2, ?3, ?4)")?;
    let mut record_start =
        tx.prepare_cached("INSERT INTO flow_starts (processor, key, started_at) VALUES (?1, ?2, ?3)")?;
    let lease_until = now.saturating_add(millis(claim.lease));
    let mut claimed = Vec::with_capacity(picked.len());
    for (seq, rated) in picked {
        let job = take.query_row(params![claim.worker_id, token, lease_until, now, seq], |row| {
            claimed_job(row, seq, claim.worker_id, token)
        })?;
        start_attempt.execute(params![seq, job.attempt, claim.worker_id, now])?;
        if let Some((processor, key)) = rated {
            record_start.execute(params![processor, key, now])?;
        }
        claimed.push(job);
    }
    Ok((claimed, held_back))
}

/// A gate fed with what runs now and what started within each rate's period, after
/// deleting the starts no period counts any more.
fn flow_gate<'a>(tx: &Transaction<'_>, limits: &'a [FlowLimit], now: Millis) -> Result<Gate<'a>> {
    let mut gate = Gate::new(limits);
    let mut running = tx.prepare_cached("SELECT payload FROM jobs WHERE status = 'claimed' AND processor = ?1")?;
    let mut forget = tx.prepare_cached("DELETE FROM flow_starts WHERE processor = ?1 AND started_at <= ?2")?;
    let mut started = tx.prepare_cached("SELECT key, count(*) FROM flow_starts WHERE processor = ?1 GROUP BY key")?;
    for limit in limits {
        if limit.max_running.is_some() {
            let mut rows = running.query([&limit.processor])?;
            while let Some(row) = rows.next()? {
                gate.count_running(&limit.processor, crate::flow::key_of(limit, &row.get::<_, String>(0)?), 1);
            }
        }
        if let Some(rate) = limit.rate {
            forget.execute(params![limit.processor, now.saturating_sub(millis(rate.period))])?;
            let mut rows = started.query([&limit.processor])?;
            while let Some(row) = rows.next()? {
                gate.count_started(&limit.processor, row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64);
            }
        }
    }
    Ok(gate)
}

/// What each limit counts, per key: jobs claimed, ready (outside paused pools) and started
/// within the rate's period. Keys are computed here, as the claim computes them; each half
/// of the union reads through its own partial index.
pub(super) fn flow_counts(conn: &Connection, limits: &[FlowLimit], now: Millis) -> Result<Vec<FlowCount>> {
    let mut jobs = conn.prepare_cached(
        "SELECT payload, true FROM jobs WHERE status = 'claimed' AND processor = ?1
         UNION ALL
         SELECT payload, false FROM jobs
          WHERE status = 'pending' AND run_at <= ?2 AND processor = ?1
            AND NOT EXISTS (SELECT 1 FROM paused_pools WHERE paused_pools.pool = jobs.pool)",
    )?;
    let mut started = conn.prepare_cached(
        "SELECT key, count(*) FROM flow_starts WHERE processor = ?1 AND started_at > ?2 GROUP BY key",
    )?;
    let mut counts = Vec::new();
    for limit in limits {
        let count = |key: String| FlowCount { processor: limit.processor.clone(), key, ..FlowCount::default() };
        let mut rows = jobs.query(params![limit.processor, now])?;
        while let Some(row) = rows.next()? {
            let key = crate::flow::key_of(limit, &row.get::<_, String>(0)?);
            let (running, ready) = if row.get(1)? { (1, 0) } else { (0, 1) };
            counts.push(FlowCount { running, ready, ..count(key) });
        }
        if let Some(rate) = limit.rate {
            let mut rows = started.query(params![limit.processor, now.saturating_sub(millis(rate.period))])?;
            while let Some(row) = rows.next()? {
                counts.push(FlowCount { started: row.get::<_, i64>(1)?.max(0) as u64, ..count(row.get(0)?) });
            }
        }
    }
    Ok(counts)
}

/// A claimed job from a row that starts with `id, pool, processor, payload, attempts,
/// max_attempts`.
fn claimed_job(row: &Row<'_>, seq: i64, worker_id: &str, token: i64) -> rusqlite::Result<ClaimedJob> {
    Ok(ClaimedJob {
        seq,
        id: row.get(0)?,
        pool: row.get(1)?,
        processor: row.get(2)?,
        payload: row.get(3)?,
        attempt: count_at(row, 4)?,
        max_attempts: count_at(row, 5)?,
        worker_id: worker_id.to_owned(),
        token,
    })
}

/// Claimed jobs (of `pool`, if given) whose lease expired or whose worker is no longer
/// `starting` or `active`.
pub(super) fn abandoned(conn: &Connection, pool: Option<&str>, now: Millis) -> Result<Vec<Abandoned>> {
    let abandoned = conn
        .prepare_cached(
            "SELECT j.seq, j.worker_id, j.claim_token, j.attempts, j.max_attempts, w.status, j.lease_expires_at
               FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id
              WHERE j.status = 'claimed' AND (:pool IS NULL OR j.pool = :pool)
                AND (j.lease_expires_at <= :now OR w.status IS NULL OR w.status IN ('terminated', 'lost'))",
        )?
        .query_map(named_params! { ":pool": pool, ":now": now }, |row| {
            let lease_expires_at: Option<Millis> = row.get(6)?;
            Ok(Abandoned {
                claim: ClaimRef {
                    seq: row.get(0)?,
                    worker_id: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    token: row.get::<_, Option<i64>>(2)?.unwrap_or_default(),
                    attempt: count_at(row, 3)?,
                },
                max_attempts: count_at(row, 4)?,
                worker_status: optional_name_at(row, 5)?,
                lease_overdue_ms: now.saturating_sub(lease_expires_at.unwrap_or(now)),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(abandoned)
}

const SUMMARY_COLUMNS: &str = "j.id, j.pool, j.processor, j.status, j.priority, j.attempts, j.max_attempts, \
     j.run_at, j.worker_id, w.host, j.lease_expires_at, j.last_error, j.created_at, j.updated_at, j.finished_at, j.seq, \
     j.unique_key, j.parents_left";

/// A count column read at the width SQLite stores (64 bits) and clamped into `u32`.
fn count_at(row: &Row<'_>, index: usize) -> rusqlite::Result<u32> {
    Ok(row.get::<_, i64>(index)?.clamp(0, i64::from(u32::MAX)) as u32)
}

/// An optional non-negative measure read at 64 bits.
fn measure_at(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(index)?.map(|value| value.max(0) as u64))
}

/// A state stored by its name (see [`StoredName`]); a name this jobhost does not know fails
/// the read, naming it.
pub(super) fn name_at<T: StoredName>(row: &Row<'_>, index: usize) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    T::from_stored(&text)
        .map_err(|err| rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, err.into()))
}

/// As [`name_at`], for a column that is NULL where there is no state (an attempt still running).
pub(super) fn optional_name_at<T: StoredName>(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<T>> {
    match row.get_ref(index)? {
        ValueRef::Null => Ok(None),
        _ => name_at(row, index).map(Some),
    }
}

fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<JobSummary> {
    Ok(JobSummary {
        seq: row.get(15)?,
        id: row.get(0)?,
        pool: row.get(1)?,
        processor: row.get(2)?,
        status: name_at(row, 3)?,
        priority: row.get(4)?,
        attempts: count_at(row, 5)?,
        max_attempts: count_at(row, 6)?,
        run_at: row.get(7)?,
        worker_id: row.get(8)?,
        host: row.get(9)?,
        lease_expires_at: row.get(10)?,
        last_error: row.get(11)?,
        created_at: row.get(12)?,
        updated_at: row.get(13)?,
        finished_at: row.get(14)?,
        unique_key: row.get(16)?,
        waiting_for: count_at(row, 17)?,
    })
}

/// The columns of an attempt that [`attempt_from_row`] reads, on `attempts a` joined with
/// `workers w`.
const ATTEMPT_COLUMNS: &str = "a.attempt, a.worker_id, a.started_at, a.finished_at, a.outcome, a.message, a.stderr,
    a.fuel_used, a.duration_ms, w.host, a.job_seq, a.processor_sha256";

/// An attempt read by [`ATTEMPT_COLUMNS`], with its job's `seq`.
fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<(i64, AttemptRecord)> {
    let record = AttemptRecord {
        attempt: count_at(row, 0)?,
        worker_id: row.get(1)?,
        started_at: row.get(2)?,
        finished_at: row.get(3)?,
        outcome: optional_name_at(row, 4)?,
        message: row.get(5)?,
        stderr: row.get(6)?,
        fuel_used: measure_at(row, 7)?,
        duration_ms: measure_at(row, 8)?,
        processor_sha256: row.get(11)?,
        host: row.get(9)?,
    };
    Ok((row.get(10)?, record))
}

/// The jobs of `ids` that exist, with their latest attempts: two statements however many ids
/// (bound as JSON arrays) and attempts, in no particular order.
pub(super) fn jobs(conn: &Connection, ids: &[&str]) -> Result<Vec<JobDetail>> {
    let ids = serde_json::to_string(ids).expect("strings serialize");
    let found = conn
        .prepare_cached(&format!(
            "SELECT {SUMMARY_COLUMNS}, j.payload, j.result
               FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id
              WHERE j.id IN (SELECT value FROM json_each(?1))"
        ))?
        .query_map([ids], |row| Ok((summary_from_row(row)?, row.get::<_, String>(18)?, row.get(19)?)))?
        .collect::<rusqlite::Result<Vec<(JobSummary, String, Option<String>)>>>()?;
    let seqs = serde_json::to_string(&found.iter().map(|(job, _, _)| job.seq).collect::<Vec<_>>()).expect("numbers");
    // Each job's first attempt to show is found by one short walk down its end of the
    // primary key, so the attempts before it are never read.
    let mut history = conn.prepare_cached(&format!(
        "WITH wanted AS (
              SELECT value AS seq,
                     (SELECT x.attempt FROM attempts x WHERE x.job_seq = value
                       ORDER BY x.attempt DESC LIMIT 1 OFFSET ?2) AS first_shown
                FROM json_each(?1))
         SELECT {ATTEMPT_COLUMNS}
           FROM wanted JOIN attempts a ON a.job_seq = wanted.seq AND a.attempt >= coalesce(wanted.first_shown, 0)
           LEFT JOIN workers w ON w.id = a.worker_id
          ORDER BY a.job_seq, a.attempt"
    ))?;
    let attempts =
        history.query_map(params![seqs, RECENT_ATTEMPTS], attempt_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    // Every parent (a job has at most MAX_PARENTS), and the first children of each job.
    let links = conn
        .prepare_cached(
            "SELECT d.child_seq, true, p.id, p.status, 0
               FROM job_parents d JOIN jobs p ON p.seq = d.parent_seq
              WHERE d.child_seq IN (SELECT value FROM json_each(?1))
             UNION ALL
             SELECT parent_seq, false, id, status, total
               FROM (SELECT d.parent_seq, c.id, c.status,
                            row_number() OVER (PARTITION BY d.parent_seq ORDER BY d.child_seq) AS place,
                            count(*) OVER (PARTITION BY d.parent_seq) AS total
                       FROM job_parents d JOIN jobs c ON c.seq = d.child_seq
                      WHERE d.parent_seq IN (SELECT value FROM json_each(?1)))
              WHERE place <= ?2
             ORDER BY 1, 2, 3",
        )?
        .query_map(params![seqs, SHOWN_CHILDREN], |row| {
            let link = JobLink { id: row.get(2)?, status: name_at(row, 3)? };
            Ok((row.get(0)?, row.get(1)?, link, row.get::<_, i64>(4)?.max(0) as u64))
        })?
        .collect::<rusqlite::Result<Vec<LinkRow>>>()?;
    Ok(JobDetail::join(found, attempts, links))
}

pub(super) fn parent_results(conn: &Connection, children: &[i64]) -> Result<Vec<ParentResult>> {
    let children = serde_json::to_string(children).expect("numbers serialize");
    let results = conn
        .prepare_cached(
            "SELECT d.child_seq, p.id, p.result
               FROM job_parents d JOIN jobs p ON p.seq = d.parent_seq
              WHERE d.child_seq IN (SELECT value FROM json_each(?1))",
        )?
        .query_map([children], |row| {
            Ok(ParentResult { child_seq: row.get(0)?, parent_id: row.get(1)?, result: row.get(2)? })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(results)
}

/// One page of job `id`'s attempts, newest first; `None` when there is no such job.
pub(super) fn attempts(conn: &Connection, id: &str, page: &AttemptPage) -> Result<Option<Vec<AttemptRecord>>> {
    let Some(seq) = conn
        .prepare_cached("SELECT seq FROM jobs WHERE id = ?1")?
        .query_row([id], |row| row.get::<_, i64>(0))
        .optional()?
    else {
        return Ok(None);
    };
    let before = page.before.map_or(i64::MAX, |AttemptCursor(attempt)| i64::from(attempt));
    let attempts = conn
        .prepare_cached(&format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts a LEFT JOIN workers w ON w.id = a.worker_id
              WHERE a.job_seq = ?1 AND a.attempt < ?2 ORDER BY a.attempt DESC LIMIT ?3"
        ))?
        .query_map(params![seq, before, page.limit], |row| Ok(attempt_from_row(row)?.1))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(attempts))
}

/// The conditions of a [`JobMatch`] on `jobs j`, with its values bound by [`match_params`].
const MATCHING: &str = "(:pool IS NULL OR j.pool = :pool) AND (:status IS NULL OR j.status = :status)
    AND (:processor IS NULL OR j.processor = :processor)
    AND (:created_after IS NULL OR j.created_at >= :created_after)
    AND (:created_before IS NULL OR j.created_at < :created_before)";

fn match_params<'a>(
    matching: &'a JobMatch<'_>,
    status: &'a Option<&'static str>,
) -> [(&'static str, &'a dyn ToSql); 5] {
    [
        (":pool", &matching.pool),
        (":status", status),
        (":processor", &matching.processor),
        (":created_after", &matching.created_after),
        (":created_before", &matching.created_before),
    ]
}

pub(super) fn list(conn: &Connection, filter: &JobFilter<'_>) -> Result<Vec<JobSummary>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {SUMMARY_COLUMNS} FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id
          WHERE {MATCHING} AND (:after IS NULL OR j.seq < :after)
          ORDER BY j.seq DESC LIMIT :limit"
    ))?;
    let status = filter.matching.status.map(JobStatus::as_str);
    let after = filter.after.map(|cursor| cursor.0);
    let mut params = match_params(&filter.matching, &status).to_vec();
    params.extend([(":after", &after as &dyn ToSql), (":limit", &filter.limit)]);
    let jobs = statement.query_map(params.as_slice(), summary_from_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(jobs)
}

/// One statement for any number of ids: they are bound as one JSON array.
pub(super) fn statuses(conn: &Connection, ids: &[&str]) -> Result<Vec<(String, JobStatus)>> {
    let ids = serde_json::to_string(ids).expect("strings serialize");
    let found = conn
        .prepare_cached("SELECT id, status FROM jobs WHERE id IN (SELECT value FROM json_each(?1))")?
        .query_map([ids], |row| Ok((row.get(0)?, name_at(row, 1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(found)
}

pub(super) fn claims_held_by(conn: &Connection, worker_id: &str) -> Result<Vec<ClaimedJob>> {
    let held = conn
        .prepare_cached(
            "SELECT id, pool, processor, payload, attempts, max_attempts, seq, claim_token FROM jobs
              WHERE status = 'claimed' AND worker_id = ?1
              ORDER BY seq",
        )?
        .query_map([worker_id], |row| claimed_job(row, row.get(6)?, worker_id, row.get(7)?))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(held)
}

/// The attempt numbers already used stay in the history, so the fresh attempts are counted
/// on top of them: `max_attempts` grows by its old value, up to [`ATTEMPTS_CEILING`]. A job
/// with a parent that has not completed waits for it again.
const RETRY_UPDATE: &str = "UPDATE jobs AS j
    SET status = 'pending', run_at = CASE WHEN parents_left > 0 THEN :waiting ELSE :now END, max_attempts = min(attempts + max_attempts, :ceiling), worker_id = NULL,
        claim_token = NULL, lease_expires_at = NULL, result = NULL, finished_at = NULL, updated_at = :now
  WHERE j.status IN ('poisoned', 'cancelled') AND j.attempts < :ceiling";

pub(super) fn retry(conn: &Connection, id: &str, now: Millis) -> Result<IdAnswer> {
    let changed = conn.prepare_cached(&format!("{RETRY_UPDATE} AND j.id = :id"))?.execute(named_params! {
        ":now": now,
        ":waiting": WAITING_RUN_AT,
        ":ceiling": ATTEMPTS_CEILING,
        ":id": id,
    })?;
    answer_for(conn, id, changed, true)
}

pub(super) fn retry_matching(conn: &Connection, matching: &JobMatch<'_>, now: Millis) -> Result<u64> {
    let status = matching.status.map(JobStatus::as_str);
    let mut params = match_params(matching, &status).to_vec();
    params.extend([(":now", &now as &dyn ToSql), (":waiting", &WAITING_RUN_AT), (":ceiling", &ATTEMPTS_CEILING)]);
    let changed = conn.prepare_cached(&format!("{RETRY_UPDATE} AND {MATCHING}"))?.execute(params.as_slice())?;
    Ok(changed as u64)
}

const CANCEL_UPDATE: &str =
    "UPDATE jobs AS j SET status = 'cancelled', finished_at = :now, updated_at = :now WHERE j.status = 'pending'";

/// Pauses `pool` as [`crate::Store::pause_pool`] says, in one statement.
pub(super) fn pause(conn: &Connection, pool: &str, reason: Option<&str>, now: Millis) -> Result<PausedPool> {
    let paused = conn
        .prepare_cached(
            "INSERT INTO paused_pools (pool, paused_at, reason) VALUES (?1, ?2, ?3)
             ON CONFLICT (pool) DO UPDATE SET reason = coalesce(excluded.reason, reason)
             RETURNING pool, paused_at, reason",
        )?
        .query_row(params![pool, now, reason], paused_pool)?;
    Ok(paused)
}

/// Whether `pool` was paused. The commit changes `data_version`, which wakes the waiting
/// workers (see `wake`).
pub(super) fn resume(conn: &Connection, pool: &str) -> Result<bool> {
    Ok(conn.prepare_cached("DELETE FROM paused_pools WHERE pool = ?1")?.execute([pool])? > 0)
}

pub(super) fn paused_pools(conn: &Connection) -> Result<Vec<PausedPool>> {
    let paused = conn
        .prepare_cached("SELECT pool, paused_at, reason FROM paused_pools ORDER BY pool")?
        .query_map([], paused_pool)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(paused)
}

fn paused_pool(row: &Row<'_>) -> rusqlite::Result<PausedPool> {
    Ok(PausedPool { pool: row.get(0)?, paused_at: row.get(1)?, reason: row.get(2)? })
}

pub(super) fn cancel_matching(conn: &Connection, matching: &JobMatch<'_>, now: Millis) -> Result<u64> {
    let status = matching.status.map(JobStatus::as_str);
    let mut params = match_params(matching, &status).to_vec();
    params.push((":now", &now as &dyn ToSql));
    let changed = conn.prepare_cached(&format!("{CANCEL_UPDATE} AND {MATCHING}"))?.execute(params.as_slice())?;
    Ok(changed as u64)
}

pub(super) fn cancel(conn: &Connection, id: &str, now: Millis) -> Result<IdAnswer> {
    let changed = conn
        .prepare_cached(&format!("{CANCEL_UPDATE} AND j.id = :id"))?
        .execute(named_params! { ":now": now, ":id": id })?;
    answer_for(conn, id, changed, false)
}

/// Why `retry` (`retrying`) or `cancel` changed nothing for `id`.
fn answer_for(conn: &Connection, id: &str, changed: usize, retrying: bool) -> Result<IdAnswer> {
    if changed > 0 {
        return Ok(IdAnswer::Done);
    }
    let found: Option<(JobStatus, i64)> = conn
        .query_row("SELECT status, attempts FROM jobs WHERE id = ?1", [id], |row| Ok((name_at(row, 0)?, row.get(1)?)))
        .optional()?;
    Ok(IdAnswer::explain(found.map(|(status, attempts)| (status, attempts.clamp(0, u32::MAX.into()) as u32)), retrying))
}

/// Up to `limit` jobs, each in a finished status of `cutoffs` and finished before its cutoff,
/// deleted with their attempts (by cascade) in the caller's transaction. The first condition
/// repeats the `jobs_finished` index's own, so SQLite knows the index holds every candidate.
pub(super) fn delete_finished(tx: &Transaction<'_>, cutoffs: &[(JobStatus, Millis)], limit: u32) -> Result<u64> {
    let mut delete = tx.prepare_cached(
        "DELETE FROM jobs WHERE seq IN (
             SELECT seq FROM jobs
              WHERE status IN ('completed', 'poisoned', 'cancelled') AND status = ?1 AND finished_at < ?2
              LIMIT ?3)",
    )?;
    let mut deleted = 0;
    for &(status, cutoff) in cutoffs.iter().filter(|(status, _)| status.is_finished()) {
        let left = u64::from(limit) - deleted;
        if left == 0 {
            break;
        }
        deleted += delete.execute(params![status.as_str(), cutoff, left])? as u64;
    }
    Ok(deleted)
}

pub(super) fn export(conn: &Connection, after: i64, limit: u32) -> Result<Vec<ExportedJob>> {
    let mut jobs = conn
        .prepare_cached(
            "SELECT seq, id, pool, processor, payload, status, priority, run_at, attempts, max_attempts, worker_id,
                    claim_token, lease_expires_at, result, last_error, created_at, updated_at, finished_at,
                    unique_key, parents_left
               FROM jobs WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![after, limit], |row| {
            Ok(ExportedJob {
                seq: row.get(0)?,
                id: row.get(1)?,
                pool: row.get(2)?,
                processor: row.get(3)?,
                payload: row.get(4)?,
                status: name_at(row, 5)?,
                priority: row.get(6)?,
                run_at: row.get(7)?,
                attempts: count_at(row, 8)?,
                max_attempts: count_at(row, 9)?,
                worker_id: row.get(10)?,
                claim_token: row.get(11)?,
                lease_expires_at: row.get(12)?,
                result: row.get(13)?,
                last_error: row.get(14)?,
                created_at: row.get(15)?,
                updated_at: row.get(16)?,
                finished_at: row.get(17)?,
                unique_key: row.get(18)?,
                waiting_for: count_at(row, 19)?,
                parents: Vec::new(),
                history: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut history = conn.prepare_cached(
        "SELECT attempt, worker_id, started_at, finished_at, outcome, message, stderr, fuel_used, duration_ms,
                processor_sha256
           FROM attempts WHERE job_seq = ?1 ORDER BY attempt",
    )?;
    let mut parents = conn.prepare_cached(
        "SELECT p.id FROM job_parents d JOIN jobs p ON p.seq = d.parent_seq WHERE d.child_seq = ?1 ORDER BY p.seq",
    )?;
    for job in &mut jobs {
        job.parents = parents.query_map([job.seq], |row| row.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
        job.history = history
            .query_map([job.seq], |row| {
                Ok(ExportedAttempt {
                    attempt: count_at(row, 0)?,
                    worker_id: row.get(1)?,
                    started_at: row.get(2)?,
                    finished_at: row.get(3)?,
                    outcome: optional_name_at(row, 4)?,
                    message: row.get(5)?,
                    stderr: row.get(6)?,
                    fuel_used: row.get(7)?,
                    duration_ms: row.get(8)?,
                    processor_sha256: row.get(9)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
    }
    Ok(jobs)
}

pub(super) fn import(tx: &Transaction<'_>, jobs: &[ExportedJob]) -> Result<()> {
    let mut insert_job = tx.prepare_cached(
        "INSERT INTO jobs (id, pool, processor, payload, status, priority, run_at, attempts, max_attempts, worker_id,
                           claim_token, lease_expires_at, result, last_error, created_at, updated_at, finished_at,
                           unique_key, parents_left)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
         RETURNING seq",
    )?;
    // Parents come first in `seq` order, so each is here already, unless it was not kept.
    let mut flag = tx.prepare_cached("UPDATE jobs SET has_dependents = 1 WHERE id = ?1 RETURNING seq")?;
    let mut link = tx.prepare_cached("INSERT INTO job_parents (parent_seq, child_seq) VALUES (?1, ?2)")?;
    let mut insert_attempt = tx.prepare_cached(
        "INSERT INTO attempts (job_seq, attempt, worker_id, started_at, finished_at, outcome, message, stderr,
                               fuel_used, duration_ms, processor_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    for job in jobs {
        let seq: i64 = insert_job.query_row(
            params![
                job.id,
                job.pool,
                job.processor,
                job.payload,
                job.status.as_str(),
                job.priority,
                job.run_at,
                job.attempts,
                job.max_attempts,
                job.worker_id,
                job.claim_token,
                job.lease_expires_at,
                job.result,
                job.last_error,
                job.created_at,
                job.updated_at,
                job.finished_at,
                job.unique_key,
                job.waiting_for
            ],
            |row| row.get(0),
        )?;
        for parent in &job.parents {
            if let Some(parent_seq) = flag.query_row([parent], |row| row.get::<_, i64>(0)).optional()? {
                link.execute(params![parent_seq, seq])?;
            }
        }
        for attempt in &job.history {
            insert_attempt.execute(params![
                seq,
                attempt.attempt,
                attempt.worker_id,
                attempt.started_at,
                attempt.finished_at,
                attempt.outcome.map(OutcomeKind::as_str),
                attempt.message,
                attempt.stderr,
                attempt.fuel_used,
                attempt.duration_ms,
                attempt.processor_sha256
            ])?;
        }
    }
    Ok(())
}
