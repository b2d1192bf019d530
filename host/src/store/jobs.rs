//! Jobs: enqueue, claim, complete, fail, recover, and the operator's inspect/retry/cancel/purge.
//!
//! A job's life: `pending` → (claim) → `claimed` → `completed`, or back to `pending`
//! after a failed attempt with a backoff, until its attempts run out and it is `poisoned`.
//! `cancelled` is for pending jobs an operator withdrew. Each claim writes an attempt row
//! at once, so an attempt cut short by a dying worker is still on record, and is closed
//! as `worker_lost` when the reaper recovers the job.
//!
//! Reading never fails on one odd row: counts are read at the width they were written and
//! clamped, and a payload that cannot be parsed back is shown as its text, so one damaged
//! job cannot stop listing, showing or reaping the others.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, named_params, params};
use serde::Serialize;

use super::error::{Result, StoreError};
use super::{Millis, RetryPolicy, Store, millis};
use crate::outcome::OutcomeKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Claimed,
    Completed,
    Poisoned,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] =
        [JobStatus::Pending, JobStatus::Claimed, JobStatus::Completed, JobStatus::Poisoned, JobStatus::Cancelled];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Claimed => "claimed",
            JobStatus::Completed => "completed",
            JobStatus::Poisoned => "poisoned",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub(super) fn parse(text: &str) -> rusqlite::Result<JobStatus> {
        JobStatus::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("unknown job status {text:?}").into(),
            )
        })
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Poisoned | JobStatus::Cancelled)
    }
}

/// The most attempts a job can ever have been counted. `jobs retry` stops granting more
/// there, so attempt numbers always fit every integer type they are read into.
pub const ATTEMPTS_CEILING: u32 = i32::MAX as u32;

/// Why a payload cannot be queued; reads as the end of a sentence naming the payload
/// ("--payload is not valid JSON: …").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadError(String);

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PayloadError {}

/// Checks a payload the way everything downstream reads it back (`jobs show`, the API, and
/// processors using serde_json): one JSON value, numbers within f64, strings of valid
/// Unicode, nesting at most 128 deep; and no larger than `max_bytes`.
pub fn check_payload(text: &[u8], max_bytes: u64) -> Result<(), PayloadError> {
    if text.len() as u64 > max_bytes {
        return Err(PayloadError(format!(
            "is {} bytes, more than jobs.max_payload ({}): send less, or raise jobs.max_payload",
            text.len(),
            crate::config::ByteSize(max_bytes)
        )));
    }
    serde_json::from_slice::<serde_json::Value>(text).map(drop).map_err(|err| {
        // serde_json ends its message with the position; say it once, in the caller's terms.
        let message = err.to_string();
        let message = message.split(" at line ").next().unwrap_or(&message);
        let position = match err.line() {
            1 => format!("column {}", err.column()),
            line => format!("line {line}, column {}", err.column()),
        };
        PayloadError(format!("is not valid JSON: {message} (at {position})"))
    })
}

/// A job to enqueue; its payload has passed [`check_payload`].
#[derive(Debug, Clone)]
pub struct NewJob {
    pub pool: String,
    pub processor: String,
    pub payload: String,
    pub priority: i64,
    pub max_attempts: u32,
    pub delay_ms: Millis,
}

/// A job a worker holds. Complete and fail are fenced on `worker_id` and `token`: only the
/// holder of this exact claim can finish it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: String,
    pub seq: i64,
    pub pool: String,
    pub processor: String,
    pub payload: String,
    pub attempt: u32,
    pub worker_id: String,
    pub token: i64,
}

/// What one attempt ended as.
#[derive(Debug, Clone)]
pub struct AttemptReport<'a> {
    pub kind: OutcomeKind,
    pub message: Option<&'a str>,
    pub stderr: Option<&'a str>,
    pub fuel_used: Option<u64>,
    pub duration_ms: Option<u64>,
}

impl AttemptReport<'_> {
    pub fn of(kind: OutcomeKind) -> AttemptReport<'static> {
        AttemptReport { kind, message: None, stderr: None, fuel_used: None, duration_ms: None }
    }
}

/// Whether a fenced call took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    Applied,
    /// The caller no longer holds the claim (it was reaped, or finished already): nothing changed.
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailOutcome {
    Retrying { run_at: Millis },
    Poisoned,
    Stale,
}

/// What the reaper recovered from dead workers and expired leases.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub released: u64,
    pub poisoned: u64,
}

/// The answer for one id of a `retry` or `cancel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdAnswer {
    Done,
    NotFound,
    WrongStatus(JobStatus),
    /// `retry` of a job that has used every attempt jobhost can count.
    NoAttemptsLeft,
}

#[derive(Debug, Clone, Default)]
pub struct JobFilter<'a> {
    pub pool: Option<&'a str>,
    pub status: Option<JobStatus>,
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub id: String,
    pub pool: String,
    pub processor: String,
    pub status: JobStatus,
    pub priority: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: Millis,
    pub worker_id: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    /// `None` while the attempt is still running.
    pub outcome: Option<String>,
    pub message: Option<String>,
    pub stderr: Option<String>,
    pub fuel_used: Option<u64>,
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    /// The payload; its text as a JSON string when it cannot be read back as JSON.
    pub payload: serde_json::Value,
    /// Why the stored payload is shown as text: it was queued before payloads were checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub attempt_history: Vec<AttemptRecord>,
}

const SUMMARY_COLUMNS: &str = "id, pool, processor, status, priority, attempts, max_attempts, run_at, \
     worker_id, lease_expires_at, last_error, created_at, updated_at, finished_at";

/// A count column read at the width SQLite stores (64 bits) and clamped into `u32`.
fn count_at(row: &Row<'_>, index: usize) -> rusqlite::Result<u32> {
    Ok(row.get::<_, i64>(index)?.clamp(0, i64::from(u32::MAX)) as u32)
}

/// An optional non-negative measure read at 64 bits.
fn measure_at(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(index)?.map(|value| value.max(0) as u64))
}

fn summary_from_row(row: &Row<'_>) -> rusqlite::Result<JobSummary> {
    Ok(JobSummary {
        id: row.get(0)?,
        pool: row.get(1)?,
        processor: row.get(2)?,
        status: JobStatus::parse(&row.get::<_, String>(3)?)?,
        priority: row.get(4)?,
        attempts: count_at(row, 5)?,
        max_attempts: count_at(row, 6)?,
        run_at: row.get(7)?,
        worker_id: row.get(8)?,
        lease_expires_at: row.get(9)?,
        last_error: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
        finished_at: row.get(13)?,
    })
}

/// Parses stored JSON text; text that does not parse is kept as a JSON string, with why.
fn stored_json(text: String) -> (serde_json::Value, Option<String>) {
    match serde_json::from_str(&text) {
        Ok(value) => (value, None),
        Err(err) => (serde_json::Value::String(text), Some(err.to_string())),
    }
}

impl Store {
    /// Starts adding jobs in one transaction: all of them or none (see [`Enqueue`]).
    pub fn enqueue(&mut self) -> Result<Enqueue<'_>> {
        let location = self.fingerprint.path.display().to_string();
        let now = self.now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| StoreError::from(err).at(&location))?;
        Ok(Enqueue { tx, now, location, queued: 0 })
    }

    /// Queues `jobs` in one transaction; returns their ids in order.
    pub fn enqueue_all(&mut self, jobs: &[NewJob]) -> Result<Vec<String>> {
        let mut enqueue = self.enqueue()?;
        let ids = jobs.iter().map(|job| enqueue.push(job)).collect::<Result<Vec<_>>>()?;
        enqueue.commit()?;
        Ok(ids)
    }

    /// Opens a write transaction for [`Batch`] operations.
    pub fn batch(&mut self) -> Result<Batch<'_>> {
        let location = self.fingerprint.path.display().to_string();
        let now = self.now();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| StoreError::from(err).at(&location))?;
        Ok(Batch { tx, now, location })
    }

    pub fn job(&mut self, id: &str) -> Result<Option<JobDetail>> {
        self.with_conn(|conn, _| {
            let found = conn
                .query_row(
                    &format!("SELECT {SUMMARY_COLUMNS}, seq, payload, result FROM jobs WHERE id = ?1"),
                    [id],
                    |row| {
                        Ok((
                            summary_from_row(row)?,
                            row.get::<_, i64>(14)?,
                            row.get::<_, String>(15)?,
                            row.get::<_, Option<String>>(16)?,
                        ))
                    },
                )
                .optional()?;
            let Some((job, seq, payload, result)) = found else {
                return Ok(None);
            };
            let mut history = conn.prepare_cached(
                "SELECT attempt, worker_id, started_at, finished_at, outcome, message, stderr, fuel_used, duration_ms
                   FROM attempts WHERE job_seq = ?1 ORDER BY attempt",
            )?;
            let attempt_history = history
                .query_map([seq], |row| {
                    Ok(AttemptRecord {
                        attempt: count_at(row, 0)?,
                        worker_id: row.get(1)?,
                        started_at: row.get(2)?,
                        finished_at: row.get(3)?,
                        outcome: row.get(4)?,
                        message: row.get(5)?,
                        stderr: row.get(6)?,
                        fuel_used: measure_at(row, 7)?,
                        duration_ms: measure_at(row, 8)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let (payload, payload_error) = stored_json(payload);
            let result = result.map(|text| stored_json(text).0);
            Ok(Some(JobDetail { job, payload, payload_error, result, attempt_history }))
        })
    }

    /// Jobs matching `filter`, most recently changed first.
    pub fn list_jobs(&mut self, filter: &JobFilter<'_>) -> Result<Vec<JobSummary>> {
        self.with_conn(|conn, _| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {SUMMARY_COLUMNS} FROM jobs
                  WHERE (:pool IS NULL OR pool = :pool) AND (:status IS NULL OR status = :status)
                  ORDER BY updated_at DESC, seq DESC LIMIT :limit"
            ))?;
            let jobs = statement
                .query_map(
                    named_params! {
                        ":pool": filter.pool,
                        ":status": filter.status.map(JobStatus::as_str),
                        ":limit": filter.limit,
                    },
                    summary_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(jobs)
        })
    }

    /// Gives a poisoned or cancelled job a fresh set of attempts (as many as it had), ready now.
    pub fn retry_job(&mut self, id: &str) -> Result<IdAnswer> {
        self.with_conn(|conn, now| {
            let changed = conn.execute(
                &format!("{RETRY_UPDATE} WHERE id = ?3 AND status IN ('poisoned', 'cancelled') AND attempts < ?2"),
                params![now, ATTEMPTS_CEILING, id],
            )?;
            answer_for(conn, id, changed, true)
        })
    }

    /// Retries every poisoned job (of `pool`, if given); returns how many.
    pub fn retry_poisoned(&mut self, pool: Option<&str>) -> Result<u64> {
        self.with_conn(|conn, now| {
            let changed = conn.execute(
                &format!("{RETRY_UPDATE} WHERE status = 'poisoned' AND attempts < ?2 AND (?3 IS NULL OR pool = ?3)"),
                params![now, ATTEMPTS_CEILING, pool],
            )?;
            Ok(changed as u64)
        })
    }

    /// Withdraws a pending job so no worker claims it.
    pub fn cancel_job(&mut self, id: &str) -> Result<IdAnswer> {
        self.with_conn(|conn, now| {
            let changed = conn.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?1, updated_at = ?1
                  WHERE id = ?2 AND status = 'pending'",
                params![now, id],
            )?;
            answer_for(conn, id, changed, false)
        })
    }

    /// Deletes finished jobs (in `statuses`) that finished more than `older_than` ago,
    /// with their attempt history. Returns how many jobs were deleted.
    pub fn purge(&mut self, older_than: Duration, statuses: &[JobStatus]) -> Result<u64> {
        self.with_conn(|conn, now| {
            let cutoff = now.saturating_sub(millis(older_than));
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut deleted = 0;
            for status in statuses.iter().filter(|s| s.is_finished()) {
                deleted += tx.execute(
                    "DELETE FROM jobs WHERE status = ?1 AND finished_at < ?2",
                    params![status.as_str(), cutoff],
                )? as u64;
            }
            tx.commit()?;
            Ok(deleted)
        })
    }
}

/// Why `retry` (`retrying`) or `cancel` changed nothing for `id`.
fn answer_for(conn: &Connection, id: &str, changed: usize, retrying: bool) -> Result<IdAnswer> {
    if changed > 0 {
        return Ok(IdAnswer::Done);
    }
    let found: Option<(String, i64)> = conn
        .query_row("SELECT status, attempts FROM jobs WHERE id = ?1", [id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((status, attempts)) = found else {
        return Ok(IdAnswer::NotFound);
    };
    Ok(match JobStatus::parse(&status)? {
        JobStatus::Poisoned | JobStatus::Cancelled if retrying && attempts >= i64::from(ATTEMPTS_CEILING) => {
            IdAnswer::NoAttemptsLeft
        }
        status => IdAnswer::WrongStatus(status),
    })
}

/// Jobs being added in one write transaction. Nothing is visible to other processes until
/// [`Enqueue::commit`]; dropping it (after an error, say) rolls every job back.
pub struct Enqueue<'s> {
    tx: Transaction<'s>,
    now: Millis,
    location: String,
    queued: u64,
}

impl Enqueue<'_> {
    /// Adds one job; returns its id.
    pub fn push(&mut self, job: &NewJob) -> Result<String> {
        let id = uuid::Uuid::new_v4().to_string();
        self.tx
            .prepare_cached(
                "INSERT INTO jobs (id, pool, processor, payload, status, priority, run_at, attempts,
                                   max_attempts, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?6, 0, ?7, ?8, ?8)",
            )
            .and_then(|mut insert| {
                insert.execute(params![
                    id,
                    job.pool,
                    job.processor,
                    job.payload,
                    job.priority,
                    self.now.saturating_add(job.delay_ms),
                    job.max_attempts,
                    self.now
                ])
            })
            .map_err(|err| StoreError::from(err).at(&self.location))?;
        self.queued += 1;
        Ok(id)
    }

    /// Makes every pushed job visible at once; returns how many were queued.
    pub fn commit(self) -> Result<u64> {
        self.tx.commit().map_err(|err| StoreError::from(err).at(&self.location))?;
        Ok(self.queued)
    }
}

/// Claims, completions and failures applied in one write transaction, so a worker reports
/// every job that finished and claims their replacements with a single commit. Each
/// operation is fenced on its own; a stale one changes nothing and the others still apply.
/// Nothing is visible to other processes until [`Batch::commit`]; dropping the batch rolls
/// it back.
pub struct Batch<'s> {
    tx: Transaction<'s>,
    now: Millis,
    location: String,
}

impl Batch<'_> {
    /// Takes up to `limit` ready jobs of `pool` for `worker_id`, highest priority first, then
    /// the longest ready. The transaction holds the write lock, so no job goes to two
    /// workers and an empty answer means no job was ready at that instant. Only an `active`
    /// worker can claim: one the reaper declared lost gets nothing.
    pub fn claim(&mut self, pool: &str, worker_id: &str, lease: Duration, limit: u32) -> Result<Vec<ClaimedJob>> {
        self.claim_in(pool, worker_id, lease, limit).map_err(|err| err.at(&self.location))
    }

    fn claim_in(&mut self, pool: &str, worker_id: &str, lease: Duration, limit: u32) -> Result<Vec<ClaimedJob>> {
        let now = self.now;
        let token = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
        // Pick, then take each pick by its key: the same effect as one UPDATE over an
        // `IN (SELECT …)`, without the temporary index SQLite builds for the IN on every call.
        let picked = self
            .tx
            .prepare_cached(
                "SELECT seq FROM jobs
                  WHERE pool = :pool AND status = 'pending' AND run_at <= :now
                    AND EXISTS (SELECT 1 FROM workers WHERE id = :worker AND status = 'active')
                  ORDER BY priority DESC, run_at, seq
                  LIMIT :limit",
            )?
            .query_map(named_params! { ":pool": pool, ":now": now, ":worker": worker_id, ":limit": limit }, |row| {
                row.get::<_, i64>(0)
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut take = self.tx.prepare_cached(
            "UPDATE jobs
                SET status = 'claimed', worker_id = ?1, claim_token = ?2, attempts = attempts + 1,
                    lease_expires_at = ?3, updated_at = ?4
              WHERE seq = ?5 AND status = 'pending'
             RETURNING id, pool, processor, payload, attempts",
        )?;
        let mut start_attempt = self
            .tx
            .prepare_cached("INSERT INTO attempts (job_seq, attempt, worker_id, started_at) VALUES (?1, ?2, ?3, ?4)")?;
        let lease_until = now.saturating_add(millis(lease));
        let mut claimed = Vec::with_capacity(picked.len());
        for seq in picked {
            let job = take.query_row(params![worker_id, token, lease_until, now, seq], |row| {
                Ok(ClaimedJob {
                    seq,
                    id: row.get(0)?,
                    pool: row.get(1)?,
                    processor: row.get(2)?,
                    payload: row.get(3)?,
                    attempt: count_at(row, 4)?,
                    worker_id: worker_id.to_owned(),
                    token,
                })
            })?;
            start_attempt.execute(params![seq, job.attempt, worker_id, now])?;
            claimed.push(job);
        }
        Ok(claimed)
    }

    /// Marks a claimed job completed with `result` (JSON text), if `job` is still the live claim.
    pub fn complete(&mut self, job: &ClaimedJob, result: &str, report: &AttemptReport<'_>) -> Result<Fence> {
        let changed = self
            .tx
            .prepare_cached(
                "UPDATE jobs
                    SET status = 'completed', result = ?1, last_error = NULL, lease_expires_at = NULL,
                        finished_at = ?2, updated_at = ?2
                  WHERE seq = ?3 AND status = 'claimed' AND worker_id = ?4 AND claim_token = ?5",
            )
            .and_then(|mut update| update.execute(params![result, self.now, job.seq, job.worker_id, job.token]))
            .map_err(|err| StoreError::from(err).at(&self.location))?;
        if changed == 0 {
            return Ok(Fence::Stale);
        }
        finish_attempt(&self.tx, job.seq, job.attempt, report, self.now).map_err(|err| err.at(&self.location))?;
        Ok(Fence::Applied)
    }

    /// Records a failed attempt of a claimed job and applies the retry policy, if `job` is
    /// still the live claim.
    pub fn fail(&mut self, job: &ClaimedJob, report: &AttemptReport<'_>, retry: &RetryPolicy) -> Result<FailOutcome> {
        let failed = (|| {
            let held = self
                .tx
                .prepare_cached(
                    "SELECT attempts, max_attempts FROM jobs
                      WHERE seq = ?1 AND status = 'claimed' AND worker_id = ?2 AND claim_token = ?3",
                )?
                .query_row(params![job.seq, job.worker_id, job.token], |row| Ok((count_at(row, 0)?, count_at(row, 1)?)))
                .optional()?;
            let Some((attempts, max_attempts)) = held else {
                return Ok(FailOutcome::Stale);
            };
            fail_claimed(&self.tx, job.seq, attempts, max_attempts, report, retry, self.now)
        })();
        failed.map_err(|err| err.at(&self.location))
    }

    pub fn commit(self) -> Result<()> {
        self.tx.commit().map_err(|err| StoreError::from(err).at(&self.location))
    }
}

/// The attempt numbers already used stay in the history, so the fresh attempts are counted
/// on top of them: `max_attempts` grows by its old value, up to [`ATTEMPTS_CEILING`].
const RETRY_UPDATE: &str = "UPDATE jobs
    SET status = 'pending', run_at = ?1, max_attempts = min(attempts + max_attempts, ?2), worker_id = NULL,
        claim_token = NULL, lease_expires_at = NULL, result = NULL, finished_at = NULL, updated_at = ?1";

fn finish_attempt(tx: &Transaction<'_>, seq: i64, attempt: u32, report: &AttemptReport<'_>, now: Millis) -> Result<()> {
    let clamp = |value: Option<u64>| value.map(|value| value.min(i64::MAX as u64) as i64);
    tx.prepare_cached(
        "UPDATE attempts
            SET finished_at = ?1, outcome = ?2, message = ?3, stderr = ?4, fuel_used = ?5, duration_ms = ?6
          WHERE job_seq = ?7 AND attempt = ?8 AND outcome IS NULL",
    )?
    .execute(params![
        now,
        report.kind.as_str(),
        report.message,
        report.stderr,
        clamp(report.fuel_used),
        clamp(report.duration_ms),
        seq,
        attempt
    ])?;
    Ok(())
}

/// Fails attempt number `attempts` of a job the caller has checked is claimed: back to
/// `pending` after the backoff, or `poisoned` when no attempts are left.
fn fail_claimed(
    tx: &Transaction<'_>,
    seq: i64,
    attempts: u32,
    max_attempts: u32,
    report: &AttemptReport<'_>,
    retry: &RetryPolicy,
    now: Millis,
) -> Result<FailOutcome> {
    let last_error = match report.message {
        Some(message) => format!("{}: {message}", report.kind.as_str()),
        None => report.kind.as_str().to_owned(),
    };
    let outcome = if attempts >= max_attempts {
        tx.prepare_cached(
            "UPDATE jobs SET status = 'poisoned', last_error = ?1, lease_expires_at = NULL,
                             finished_at = ?2, updated_at = ?2
              WHERE seq = ?3 AND status = 'claimed'",
        )?
        .execute(params![last_error, now, seq])?;
        FailOutcome::Poisoned
    } else {
        let run_at = now.saturating_add(millis(retry.backoff(attempts)));
        tx.prepare_cached(
            "UPDATE jobs SET status = 'pending', run_at = ?1, last_error = ?2, worker_id = NULL,
                             claim_token = NULL, lease_expires_at = NULL, updated_at = ?3
              WHERE seq = ?4 AND status = 'claimed'",
        )?
        .execute(params![run_at, last_error, now, seq])?;
        FailOutcome::Retrying { run_at }
    };
    finish_attempt(tx, seq, attempts, report, now)?;
    Ok(outcome)
}

/// Sends back through the retry policy, as `worker_lost` attempts, every claimed job (of
/// `pool`, if given) whose lease expired or whose worker is no longer `starting` or `active`.
pub(super) fn recover_abandoned_in(
    tx: &Transaction<'_>,
    pool: Option<&str>,
    retry: &RetryPolicy,
    now: Millis,
) -> Result<Recovery> {
    /// A claimed job left behind: seq, attempts, max attempts, its worker, that worker's
    /// status and when the job's lease ends.
    type Abandoned = (i64, u32, u32, Option<String>, Option<String>, Option<Millis>);
    let abandoned: Vec<Abandoned> = tx
        .prepare_cached(
            "SELECT j.seq, j.attempts, j.max_attempts, j.worker_id, w.status, j.lease_expires_at
               FROM jobs j LEFT JOIN workers w ON w.id = j.worker_id
              WHERE j.status = 'claimed' AND (:pool IS NULL OR j.pool = :pool)
                AND (j.lease_expires_at <= :now OR w.status IS NULL OR w.status IN ('terminated', 'lost'))",
        )?
        .query_map(named_params! { ":pool": pool, ":now": now }, |row| {
            Ok((row.get(0)?, count_at(row, 1)?, count_at(row, 2)?, row.get(3)?, row.get(4)?, row.get(5)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut recovery = Recovery::default();
    for (seq, attempts, max_attempts, worker, worker_status, lease_expires_at) in abandoned {
        let worker = worker.unwrap_or_default();
        let message = match worker_status.as_deref() {
            Some(status @ ("terminated" | "lost")) => format!("worker {worker} is {status} and still held the job"),
            None => format!("worker {worker} is not registered"),
            Some(_) => format!(
                "the lease of worker {worker} expired {} ms ago without a heartbeat",
                now.saturating_sub(lease_expires_at.unwrap_or(now))
            ),
        };
        let report = AttemptReport { message: Some(&message), ..AttemptReport::of(OutcomeKind::WorkerLost) };
        match fail_claimed(tx, seq, attempts, max_attempts, &report, retry, now)? {
            FailOutcome::Poisoned => recovery.poisoned += 1,
            _ => recovery.released += 1,
        }
    }
    Ok(recovery)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewWorker;
    use crate::store::testing::TestStore;

    const LEASE: Duration = Duration::from_secs(60);
    const NO_BACKOFF: RetryPolicy = RetryPolicy { initial: Duration::ZERO, max: Duration::ZERO, jitter: 0.0 };

    /// One reaping pass that never finds a worker stale, so only abandoned jobs are recovered.
    fn recover(t: &mut TestStore) -> Recovery {
        let never = Duration::from_secs(1 << 30);
        t.store.reap(None, never, never, &NO_BACKOFF).unwrap().recovery
    }

    fn job(pool: &str, priority: i64) -> NewJob {
        NewJob {
            pool: pool.into(),
            processor: "echo".into(),
            payload: r#"{"n":1}"#.into(),
            priority,
            max_attempts: 3,
            delay_ms: 0,
        }
    }

    fn active_worker(t: &mut TestStore, id: &str) {
        t.store.activate_worker(&NewWorker { id: id.into(), pool: "default".into(), host: None, pid: None }).unwrap();
    }

    fn claim_one(t: &mut TestStore, worker: &str) -> Option<ClaimedJob> {
        t.store.claim("default", worker, LEASE, 1).unwrap().pop()
    }

    fn failure(kind: OutcomeKind) -> AttemptReport<'static> {
        AttemptReport { message: Some("boom"), ..AttemptReport::of(kind) }
    }

    #[test]
    fn claim_takes_highest_priority_then_oldest_and_never_twice() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        let ids =
            t.store.enqueue_all(&[job("default", 0), job("default", 5), job("default", 0), job("other", 9)]).unwrap();
        let order: Vec<String> = std::iter::from_fn(|| claim_one(&mut t, "w1")).map(|j| j.id).collect();
        assert_eq!(order, [ids[1].clone(), ids[0].clone(), ids[2].clone()]);
    }

    #[test]
    fn a_delayed_job_is_not_ready_until_its_time() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        t.store.enqueue_all(&[NewJob { delay_ms: 5_000, ..job("default", 0) }]).unwrap();
        assert!(claim_one(&mut t, "w1").is_none());
        t.advance(5_000);
        assert!(claim_one(&mut t, "w1").is_some());
    }

    #[test]
    fn only_an_active_worker_can_claim() {
        let mut t = TestStore::new();
        t.store.enqueue_all(&[job("default", 0)]).unwrap();
        assert!(claim_one(&mut t, "nobody").is_none(), "an unregistered worker gets nothing");
        active_worker(&mut t, "w1");
        assert!(claim_one(&mut t, "w1").is_some());
    }

    #[test]
    fn complete_records_the_result_and_the_attempt() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        let id = t.store.enqueue_all(&[job("default", 0)]).unwrap().remove(0);
        let claimed = claim_one(&mut t, "w1").unwrap();
        let report = AttemptReport { fuel_used: Some(42), duration_ms: Some(3), ..AttemptReport::of(OutcomeKind::Ok) };
        assert_eq!(t.store.complete(&claimed, r#"{"done":true}"#, &report).unwrap(), Fence::Applied);

        let detail = t.store.job(&id).unwrap().unwrap();
        assert_eq!(detail.job.status, JobStatus::Completed);
        assert_eq!(detail.result, Some(serde_json::json!({"done": true})));
        assert_eq!(detail.attempt_history.len(), 1);
        assert_eq!(detail.attempt_history[0].outcome.as_deref(), Some("ok"));
        assert_eq!(detail.attempt_history[0].fuel_used, Some(42));
    }

    #[test]
    fn a_stale_complete_or_fail_changes_nothing() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        active_worker(&mut t, "w2");
        let id = t.store.enqueue_all(&[job("default", 0)]).unwrap().remove(0);
        let first = claim_one(&mut t, "w1").unwrap();
        assert!(matches!(
            t.store.fail(&first, &failure(OutcomeKind::Trap), &NO_BACKOFF).unwrap(),
            FailOutcome::Retrying { .. }
        ));
        let second = claim_one(&mut t, "w2").unwrap();

        let ok = AttemptReport::of(OutcomeKind::Ok);
        assert_eq!(t.store.complete(&first, "1", &ok).unwrap(), Fence::Stale, "first claim is gone");
        assert_eq!(t.store.fail(&first, &failure(OutcomeKind::Trap), &NO_BACKOFF).unwrap(), FailOutcome::Stale);
        let forged = ClaimedJob { token: second.token.wrapping_add(1), ..second.clone() };
        assert_eq!(t.store.complete(&forged, "1", &ok).unwrap(), Fence::Stale, "a wrong token is refused");

        assert_eq!(t.store.complete(&second, "2", &ok).unwrap(), Fence::Applied);
        assert_eq!(t.store.complete(&second, "3", &ok).unwrap(), Fence::Stale, "completing twice is refused");
        let detail = t.store.job(&id).unwrap().unwrap();
        assert_eq!(detail.result, Some(serde_json::json!(2)));
        assert_eq!(detail.attempt_history.len(), 2);
        t.assert_counts_exact();
    }

    #[test]
    fn failures_retry_with_backoff_then_poison_at_max_attempts() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        let id = t.store.enqueue_all(&[job("default", 0)]).unwrap().remove(0);
        let policy = RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(60), jitter: 0.0 };

        let first = claim_one(&mut t, "w1").unwrap();
        let retry_at = t.store.now() + 1_000;
        assert_eq!(
            t.store.fail(&first, &failure(OutcomeKind::Trap), &policy).unwrap(),
            FailOutcome::Retrying { run_at: retry_at }
        );
        t.advance(999);
        assert!(claim_one(&mut t, "w1").is_none(), "not ready during the backoff");
        t.advance(1);
        let second = claim_one(&mut t, "w1").unwrap();
        assert_eq!(second.attempt, 2);
        let retry_at = t.store.now() + 2_000;
        assert_eq!(
            t.store.fail(&second, &failure(OutcomeKind::Timeout), &policy).unwrap(),
            FailOutcome::Retrying { run_at: retry_at }
        );
        t.advance(2_000);
        let third = claim_one(&mut t, "w1").unwrap();
        assert_eq!(t.store.fail(&third, &failure(OutcomeKind::Exit), &policy).unwrap(), FailOutcome::Poisoned);

        let detail = t.store.job(&id).unwrap().unwrap();
        assert_eq!(detail.job.status, JobStatus::Poisoned);
        assert_eq!(detail.job.last_error.as_deref(), Some("exit: boom"));
        let kinds: Vec<_> = detail.attempt_history.iter().map(|a| a.outcome.clone().unwrap()).collect();
        assert_eq!(kinds, ["trap", "timeout", "exit"]);
        t.advance(1_000_000);
        assert!(claim_one(&mut t, "w1").is_none(), "a poisoned job is never claimed");
        t.assert_counts_exact();
    }

    #[test]
    fn abandoned_jobs_come_back_as_worker_lost_and_poison_at_the_limit() {
        let mut t = TestStore::new();
        let id = t.store.enqueue_all(&[NewJob { max_attempts: 2, ..job("default", 0) }]).unwrap().remove(0);
        for (round, worker) in ["w1", "w2"].into_iter().enumerate() {
            active_worker(&mut t, worker);
            let held = claim_one(&mut t, worker).unwrap();
            assert_eq!(recover(&mut t), Recovery::default(), "a live lease is left alone");
            t.store.deregister_worker(worker).unwrap();
            let expected =
                if round == 0 { Recovery { released: 1, poisoned: 0 } } else { Recovery { released: 0, poisoned: 1 } };
            assert_eq!(recover(&mut t), expected);
            let ok = AttemptReport::of(OutcomeKind::Ok);
            assert_eq!(t.store.complete(&held, "1", &ok).unwrap(), Fence::Stale, "the old holder cannot finish it");
        }
        let detail = t.store.job(&id).unwrap().unwrap();
        assert_eq!(detail.job.status, JobStatus::Poisoned);
        let kinds: Vec<_> = detail.attempt_history.iter().map(|a| a.outcome.clone().unwrap()).collect();
        assert_eq!(kinds, ["worker_lost", "worker_lost"]);
        t.assert_counts_exact();
    }

    #[test]
    fn an_expired_lease_is_recovered_even_from_a_registered_worker() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        t.store.enqueue_all(&[job("default", 0)]).unwrap();
        claim_one(&mut t, "w1").unwrap();
        t.advance(millis(LEASE) - 1);
        assert_eq!(recover(&mut t).released, 0);
        t.advance(1);
        assert_eq!(recover(&mut t).released, 1);
    }

    #[test]
    fn retry_cancel_and_purge_act_only_on_the_right_statuses() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        let ids = t.store.enqueue_all(&[NewJob { max_attempts: 1, ..job("default", 9) }, job("default", 0)]).unwrap();
        let claimed = claim_one(&mut t, "w1").unwrap();
        assert_eq!(t.store.fail(&claimed, &failure(OutcomeKind::Trap), &NO_BACKOFF).unwrap(), FailOutcome::Poisoned);

        assert_eq!(t.store.cancel_job(&ids[0]).unwrap(), IdAnswer::WrongStatus(JobStatus::Poisoned));
        assert_eq!(t.store.cancel_job(&ids[1]).unwrap(), IdAnswer::Done);
        assert_eq!(t.store.cancel_job("no-such-id").unwrap(), IdAnswer::NotFound);

        assert_eq!(t.store.retry_poisoned(Some("other")).unwrap(), 0);
        assert_eq!(t.store.retry_poisoned(None).unwrap(), 1);
        let retried = claim_one(&mut t, "w1").unwrap();
        assert_eq!((retried.id.as_str(), retried.attempt), (ids[0].as_str(), 2));
        assert_eq!(
            t.store.job(&ids[0]).unwrap().unwrap().job.max_attempts,
            2,
            "a fresh attempt on top of the used one"
        );
        let ok = AttemptReport::of(OutcomeKind::Ok);
        t.store.complete(&retried, "1", &ok).unwrap();

        t.advance(10_000);
        assert_eq!(t.store.purge(Duration::from_secs(20), &JobStatus::ALL).unwrap(), 0, "too recent");
        assert_eq!(t.store.purge(Duration::from_secs(5), &[JobStatus::Completed]).unwrap(), 1);
        assert!(t.store.job(&ids[0]).unwrap().is_none());
        assert_eq!(t.store.job(&ids[1]).unwrap().unwrap().job.status, JobStatus::Cancelled);
        t.assert_counts_exact();
    }

    #[test]
    fn every_outcome_kind_can_be_stored_and_read_back() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        let jobs = vec![NewJob { max_attempts: 1, ..job("default", 0) }; OutcomeKind::ALL.len()];
        let ids = t.store.enqueue_all(&jobs).unwrap();
        for kind in OutcomeKind::ALL {
            let claimed = claim_one(&mut t, "w1").unwrap();
            if kind == OutcomeKind::Ok {
                t.store.complete(&claimed, "1", &AttemptReport::of(kind)).unwrap();
            } else {
                t.store.fail(&claimed, &failure(kind), &NO_BACKOFF).unwrap();
            }
        }
        let mut stored: Vec<String> = ids
            .iter()
            .map(|id| t.store.job(id).unwrap().unwrap().attempt_history[0].outcome.clone().unwrap())
            .collect();
        stored.sort();
        let mut expected: Vec<&str> = OutcomeKind::ALL.iter().map(|kind| kind.as_str()).collect();
        expected.sort();
        assert_eq!(stored, expected);
    }

    #[test]
    fn counts_too_wide_for_u32_are_clamped_when_read() {
        let mut t = TestStore::new();
        let id = t.store.enqueue_all(&[job("default", 0)]).unwrap().remove(0);
        t.store.conn.execute("UPDATE jobs SET max_attempts = 4294967297, attempts = -3", []).unwrap();
        let listed = t.store.list_jobs(&JobFilter { limit: 10, ..JobFilter::default() }).unwrap();
        assert_eq!((listed[0].attempts, listed[0].max_attempts), (0, u32::MAX));
        assert_eq!(t.store.job(&id).unwrap().unwrap().job.max_attempts, u32::MAX);
    }

    #[test]
    fn a_delay_past_the_end_of_time_saturates_instead_of_wrapping() {
        let mut t = TestStore::new();
        t.store.enqueue_all(&[NewJob { delay_ms: Millis::MAX, ..job("default", 0) }]).unwrap();
        let status = t.store.status(None).unwrap();
        assert_eq!((status.ready, status.oldest_ready_age_ms), (0, None), "the job is not ready: {status:?}");
    }

    fn history(t: &mut TestStore, id: &str) -> Vec<Option<String>> {
        t.store.job(id).unwrap().unwrap().attempt_history.into_iter().map(|a| a.outcome).collect()
    }

    #[test]
    fn a_batch_fences_each_operation_alone_and_commits_the_applied_ones_together() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        active_worker(&mut t, "w2");
        let ids =
            t.store.enqueue_all(&[job("default", 3), job("default", 2), job("default", 1), job("default", 0)]).unwrap();
        // The first two claims expire and are recovered, so w1's answers for them are stale;
        // w2 then takes the first job again, and w1's stale answer must not touch w2's attempt.
        let expired = t.store.claim("default", "w1", Duration::from_secs(1), 2).unwrap();
        let held = t.store.claim("default", "w1", LEASE, 2).unwrap();
        t.advance(1_000);
        assert_eq!(recover(&mut t), Recovery { released: 2, poisoned: 0 });
        let taken_again = claim_one(&mut t, "w2").unwrap();
        assert_eq!(taken_again.id, ids[0]);

        let outside = rusqlite::Connection::open(t.store.conn.path().unwrap()).unwrap();
        let statuses_outside = || -> String {
            let sql = "SELECT group_concat(status, ' ') FROM (SELECT status FROM jobs ORDER BY seq)";
            outside.query_row(sql, [], |row| row.get(0)).unwrap()
        };
        let ok = AttemptReport::of(OutcomeKind::Ok);
        let now = t.store.now();
        let mut batch = t.store.batch().unwrap();
        assert_eq!(batch.complete(&expired[0], "0", &ok).unwrap(), Fence::Stale);
        assert_eq!(batch.fail(&expired[1], &failure(OutcomeKind::Trap), &NO_BACKOFF).unwrap(), FailOutcome::Stale);
        assert_eq!(batch.complete(&held[0], "2", &ok).unwrap(), Fence::Applied);
        assert_eq!(
            batch.fail(&held[1], &failure(OutcomeKind::Exit), &NO_BACKOFF).unwrap(),
            FailOutcome::Retrying { run_at: now }
        );
        assert_eq!(statuses_outside(), "claimed pending claimed claimed", "nothing is visible before the commit");
        batch.commit().unwrap();
        assert_eq!(statuses_outside(), "claimed pending completed pending");

        assert_eq!(t.store.job(&ids[0]).unwrap().unwrap().result, None, "the stale complete wrote no result");
        let lost = Some("worker_lost".to_owned());
        assert_eq!(history(&mut t, &ids[0]), [lost.clone(), None], "w2's attempt is still open");
        assert_eq!(history(&mut t, &ids[1]), [lost]);
        assert_eq!(history(&mut t, &ids[2]), [Some("ok".to_owned())]);
        assert_eq!(history(&mut t, &ids[3]), [Some("exit".to_owned())]);
        t.assert_counts_exact();
    }

    #[test]
    fn a_claim_of_several_takes_the_best_ready_jobs_in_order_under_one_token() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        // The first enqueue is ready a second later than the second one, so run_at and seq
        // disagree: run_at must decide before seq does.
        let late = t.store.enqueue_all(&[NewJob { delay_ms: 1_000, ..job("default", 0) }]).unwrap();
        let late_urgent = t.store.enqueue_all(&[NewJob { delay_ms: 1_000, ..job("default", 5) }]).unwrap();
        let early = t.store.enqueue_all(&[job("default", 0), job("default", 5), job("default", 0)]).unwrap();
        t.store.enqueue_all(&[NewJob { delay_ms: 60_000, ..job("default", 9) }, job("other", 9)]).unwrap();
        t.advance(1_000);

        let first = t.store.claim("default", "w1", LEASE, 3).unwrap();
        let ids = |jobs: &[ClaimedJob]| jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&first), [early[1].clone(), late_urgent[0].clone(), early[0].clone()]);
        assert!(first.iter().all(|j| j.token == first[0].token && j.attempt == 1), "{first:?}");
        for claimed in &first {
            let attempts = t.store.job(&claimed.id).unwrap().unwrap().attempt_history;
            assert_eq!(
                (attempts.len(), attempts[0].worker_id.as_str(), attempts[0].outcome.as_deref()),
                (1, "w1", None)
            );
        }

        let rest = t.store.claim("default", "w1", LEASE, 10).unwrap();
        assert_eq!(ids(&rest), [early[2].clone(), late[0].clone()], "the not-yet-ready job and the other pool stay");
        assert_ne!(rest[0].token, first[0].token, "each claim has its own token");
        assert!(t.store.claim("default", "w1", LEASE, 10).unwrap().is_empty());
        t.assert_counts_exact();
    }

    #[test]
    fn purge_deletes_the_attempt_history_of_the_jobs_it_deletes() {
        let mut t = TestStore::new();
        active_worker(&mut t, "w1");
        t.store
            .enqueue_all(&[job("default", 2), job("default", 1), NewJob { max_attempts: 1, ..job("default", 0) }])
            .unwrap();
        let ok = AttemptReport::of(OutcomeKind::Ok);
        let retried = claim_one(&mut t, "w1").unwrap();
        t.store.fail(&retried, &failure(OutcomeKind::Trap), &NO_BACKOFF).unwrap();
        let retried = claim_one(&mut t, "w1").unwrap();
        t.store.complete(&retried, "1", &ok).unwrap();
        let once = claim_one(&mut t, "w1").unwrap();
        t.store.complete(&once, "1", &ok).unwrap();
        let poisoned = claim_one(&mut t, "w1").unwrap();
        assert_eq!(t.store.fail(&poisoned, &failure(OutcomeKind::Trap), &NO_BACKOFF).unwrap(), FailOutcome::Poisoned);
        let attempts_of = |t: &TestStore, seq: i64| -> i64 {
            t.store.conn.query_row("SELECT count(*) FROM attempts WHERE job_seq = ?1", [seq], |row| row.get(0)).unwrap()
        };
        assert_eq!([attempts_of(&t, retried.seq), attempts_of(&t, once.seq), attempts_of(&t, poisoned.seq)], [2, 1, 1]);

        t.advance(1);
        assert_eq!(t.store.purge(Duration::ZERO, &[JobStatus::Completed]).unwrap(), 2);
        assert_eq!([attempts_of(&t, retried.seq), attempts_of(&t, once.seq), attempts_of(&t, poisoned.seq)], [0, 0, 1]);
        t.assert_counts_exact();
    }
}
