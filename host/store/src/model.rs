//! The store's data: what goes in (jobs, workers, claims) and what comes out (jobs with
//! their history, status counts, plans), the same for every backend.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use jobhost_core::config::MAX_ATTEMPTS;
use jobhost_core::names;
use jobhost_core::outcome::OutcomeKind;

/// Milliseconds since the Unix epoch; the unit of every timestamp in the store.
pub type Millis = i64;

pub fn millis(duration: Duration) -> Millis {
    duration.as_millis().try_into().unwrap_or(Millis::MAX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
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

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Completed | JobStatus::Poisoned | JobStatus::Cancelled)
    }
}

/// Where a worker is in its life: registered by the checker (`starting`), heartbeating
/// (`active`), ended cleanly (`terminated`), or given up on by the reaper (`lost`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkerStatus {
    Starting,
    Active,
    Terminated,
    Lost,
}

impl WorkerStatus {
    pub const ALL: [WorkerStatus; 4] =
        [WorkerStatus::Starting, WorkerStatus::Active, WorkerStatus::Terminated, WorkerStatus::Lost];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Starting => "starting",
            WorkerStatus::Active => "active",
            WorkerStatus::Terminated => "terminated",
            WorkerStatus::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<WorkerStatus> {
        WorkerStatus::ALL.into_iter().find(|status| status.as_str() == text)
    }
}

impl std::fmt::Display for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state the store keeps in a column by its name. Reading one back is strict: a name this
/// jobhost does not know (written by a newer version, or by hand) fails the read and is
/// named, rather than being taken for some other state.
pub(crate) trait StoredName: Sized {
    /// What the name is of, as an error says it: "worker status".
    const WHAT: &'static str;

    fn from_name(text: &str) -> Option<Self>;

    fn from_stored(text: &str) -> Result<Self, UnknownName> {
        Self::from_name(text).ok_or_else(|| UnknownName(format!("unknown {} {text:?} in the database", Self::WHAT)))
    }
}

/// A stored name that [`StoredName::from_stored`] does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UnknownName(String);

impl std::fmt::Display for UnknownName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnknownName {}

impl StoredName for JobStatus {
    const WHAT: &'static str = "job status";

    fn from_name(text: &str) -> Option<Self> {
        JobStatus::parse(text)
    }
}

impl StoredName for WorkerStatus {
    const WHAT: &'static str = "worker status";

    fn from_name(text: &str) -> Option<Self> {
        WorkerStatus::parse(text)
    }
}

impl StoredName for OutcomeKind {
    const WHAT: &'static str = "attempt outcome";

    fn from_name(text: &str) -> Option<Self> {
        OutcomeKind::parse(text)
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
            jobhost_core::units::ByteSize(max_bytes)
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

/// A job to enqueue, made by [`NewJob::new`], which checks it.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Chosen here ([`NewJob::new_id`]), so the caller knows the ids without the store
    /// handing back a list as long as the jobs.
    pub(crate) id: String,
    pub(crate) pool: String,
    pub(crate) processor: String,
    pub(crate) payload: String,
    pub(crate) priority: i64,
    pub(crate) max_attempts: u32,
    pub(crate) ready: Ready,
    pub(crate) unique: Option<Unique>,
    /// The ids of the jobs it waits for (see [`MAX_PARENTS`]), each once.
    pub(crate) after: Vec<String>,
}

/// Most jobs one job can wait for.
pub const MAX_PARENTS: usize = 100;

/// A job waiting for parents is pending with its `run_at` here, at the end of time, so no
/// claim, `check` or `ready_in` takes it for ready; its last parent's completion moves
/// `run_at` to that moment.
pub const WAITING_RUN_AT: Millis = Millis::MAX;

/// A new job's unique key, and what it does when another job of its pool holds that key.
///
/// A job holds its key while it is pending or claimed, and after it completed or was
/// poisoned for `within` more; a cancelled job holds it no longer. A unique index over the
/// holders enforces it, so enqueuers racing from many processes cannot both insert: the
/// loser matches the winner. A finished job gives its key up to the first enqueue that finds
/// it free (it is set NULL then), so the index holds one job per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unique {
    pub(crate) key: String,
    pub(crate) within: Duration,
    pub(crate) on_match: OnMatch,
}

/// What a new job does to a job holding its unique key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnMatch {
    /// Nothing: the new job is not queued, and the answer names the holder.
    Skip,
    /// Debounce: a holder still pending takes the new job's payload; a holder that is running
    /// or finished is left alone, as with `Skip`.
    Replace,
    /// As `Replace`, and the holder also takes the new job's ready time (its delay from now,
    /// or its `run_at`), so each enqueue of a burst pushes the run out.
    ReplaceAndReschedule,
}

/// What became of one job handed to [`super::Store::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EnqueueOutcome {
    Queued,
    /// Another job holds its unique key; it was left as it was.
    Duplicate,
    /// Another job holds its unique key and was still pending: it took this job's payload.
    Replaced,
}

/// A job that was not queued because another held its unique key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// Its place among the jobs handed to [`super::Store::enqueue`], from 0.
    pub index: u64,
    /// The job holding the key.
    pub id: String,
    pub outcome: EnqueueOutcome,
}

/// What [`super::Store::enqueue`] did: how many jobs it queued, and each job it did not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnqueueReport {
    pub queued: u64,
    pub matched: Vec<Matched>,
}

impl EnqueueReport {
    /// For each of `jobs`, the jobs this report is about, in order: the id of the job, or of
    /// the job holding its unique key, and what became of it.
    pub fn answers(self, jobs: &[NewJob]) -> Vec<(String, EnqueueOutcome)> {
        let mut answers: Vec<(String, EnqueueOutcome)> =
            jobs.iter().map(|job| (job.id.clone(), EnqueueOutcome::Queued)).collect();
        for Matched { index, id, outcome } in self.matched {
            answers[index as usize] = (id, outcome);
        }
        answers
    }
}

/// When a new job becomes ready. The store resolves it as it queues the job, on its own clock
/// (the database's: see [`super::Clock`]), so an instant sent from another machine is kept as
/// it was sent rather than turned into a delay on that machine's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ready {
    /// This long after it is queued (at the end of time, if that comes first).
    After(Duration),
    /// At this instant, in milliseconds since the epoch; as it is queued if that has passed.
    At(Millis),
}

impl Ready {
    /// The `run_at` of a job queued at `now`. PostgreSQL computes the same in its enqueue
    /// statement, on the server's clock.
    pub(crate) fn run_at(self, now: Millis) -> Millis {
        match self {
            Ready::After(delay) => now.saturating_add(millis(delay)),
            Ready::At(at) => at.max(now),
        }
    }
}

/// A job as a caller was asked to queue it, before [`NewJob::new`] checks it.
#[derive(Debug, Clone)]
pub struct JobRequest {
    pub pool: String,
    pub processor: String,
    /// The payload's JSON text, as it was given.
    pub payload: String,
    pub priority: i64,
    pub max_attempts: u32,
    pub delay: Option<Duration>,
    /// Milliseconds since the epoch; a job gets a `delay` or a `run_at`, not both.
    pub run_at: Option<Millis>,
    /// See [`Unique`]: the key, how long a finished job keeps holding it, and whether a match
    /// still pending takes this job's payload (debounce).
    pub unique_key: Option<String>,
    pub unique_within: Option<Duration>,
    pub replace: bool,
    /// The ids of the jobs it waits for: it becomes ready when every one has completed, and
    /// is cancelled when one is poisoned or cancelled.
    pub after: Vec<String>,
}

/// What a new job is checked against besides the rules every job meets.
#[derive(Debug, Clone, Copy)]
pub struct JobRules<'a> {
    /// The processors the caller knows of (its registry's names); `None` takes any valid
    /// name, for a processor that is installed only where the workers run.
    pub processors: Option<&'a [String]>,
    /// `jobs.max_payload`.
    pub max_payload: u64,
}

/// An input of a new job, as [`InvalidJob::field`] names the one at fault; each caller calls
/// it by its own name (`--pool`, `jobs[2].pool`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobField {
    Pool,
    Processor,
    Payload,
    MaxAttempts,
    /// When the job becomes ready: its delay or its `run_at`.
    Schedule,
    /// Its unique key, or an option that needs one.
    UniqueKey,
    /// The jobs it waits for.
    After,
}

/// Why [`NewJob::new`] refused a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvalidJob {
    /// `field` breaks a rule; `reason` completes a sentence that starts with the field's name
    /// ("must be 1 to 128 bytes of printable text, got \"\"").
    Rule { field: JobField, reason: String },
    /// The processor's name is not a valid name; why, as [`names::check_processor`] says it.
    ProcessorName(String),
    /// A valid processor name that none of `known`, the processors the caller knows, has;
    /// the caller says how to add it where it is.
    UnknownProcessor { processor: String, known: Vec<String> },
}

impl InvalidJob {
    pub fn field(&self) -> JobField {
        match self {
            InvalidJob::Rule { field, .. } => *field,
            InvalidJob::ProcessorName(_) | InvalidJob::UnknownProcessor { .. } => JobField::Processor,
        }
    }

    /// The refusal, naming the field at fault `name`: what the caller calls it.
    pub fn message(&self, name: &str) -> String {
        match self {
            InvalidJob::Rule { reason, .. } => format!("{name} {reason}"),
            InvalidJob::ProcessorName(why) => format!("{name}: {why}"),
            InvalidJob::UnknownProcessor { processor, known } => {
                format!("{name} {processor}: no such processor on this host (it has: {})", known.join(", "))
            }
        }
    }
}

impl NewJob {
    /// A job checked as every way in checks it: a valid processor name the caller knows, a
    /// valid pool name, a payload [`check_payload`] accepts, 1 to [`MAX_ATTEMPTS`] attempts,
    /// and a delay or a `run_at` but not both. The first input at fault is the error.
    pub fn new(request: JobRequest, rules: &JobRules<'_>) -> Result<NewJob, InvalidJob> {
        let JobRequest {
            pool,
            processor,
            payload,
            priority,
            max_attempts,
            delay,
            run_at,
            unique_key,
            unique_within,
            replace,
            after,
        } = request;
        let rule = |field, reason: String| InvalidJob::Rule { field, reason };
        names::check_processor(&processor).map_err(InvalidJob::ProcessorName)?;
        if let Some(known) = rules.processors
            && !known.contains(&processor)
        {
            return Err(InvalidJob::UnknownProcessor { processor, known: known.to_vec() });
        }
        names::check_label(&pool).map_err(|reason| rule(JobField::Pool, reason))?;
        check_payload(payload.as_bytes(), rules.max_payload).map_err(|err| rule(JobField::Payload, err.to_string()))?;
        if !(1..=MAX_ATTEMPTS).contains(&max_attempts) {
            let reason =
                format!("must be between 1 and {MAX_ATTEMPTS} (the first run counts as one), got {max_attempts}");
            return Err(rule(JobField::MaxAttempts, reason));
        }
        let ready = match (delay, run_at) {
            (Some(_), Some(_)) => {
                return Err(rule(JobField::Schedule, "cannot be given with a delay: give a delay or a run_at".into()));
            }
            (None, Some(at)) => Ready::At(at),
            (delay, None) => Ready::After(delay.unwrap_or_default()),
        };
        let rescheduled = delay.is_some() || run_at.is_some();
        let unique = match unique_key {
            Some(key) => {
                names::check_label(&key).map_err(|reason| rule(JobField::UniqueKey, reason))?;
                let on_match = match (replace, rescheduled) {
                    (false, _) => OnMatch::Skip,
                    (true, false) => OnMatch::Replace,
                    (true, true) => OnMatch::ReplaceAndReschedule,
                };
                Some(Unique { key, within: unique_within.unwrap_or_default(), on_match })
            }
            None if unique_within.is_some() || replace => {
                let reason = "is required with replace and unique_within: give the job a unique key".to_owned();
                return Err(rule(JobField::UniqueKey, reason));
            }
            None => None,
        };
        let after = check_after(after, rescheduled).map_err(|reason| rule(JobField::After, reason))?;
        Ok(NewJob { id: NewJob::new_id(), pool, processor, payload, priority, max_attempts, ready, unique, after })
    }

    /// The id the job will be queued under.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// A time-ordered id (UUIDv7): new jobs land at the end of the id index instead of on a
    /// random page of it, which kept large pools' inserts from slowing down as they grew.
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// The parents of a new job, each once, in the order first given: at most [`MAX_PARENTS`],
/// each a job id (printable text of at most 128 bytes), and no delay or `run_at` beside
/// them, since the job's time comes when its last parent completes.
fn check_after(after: Vec<String>, rescheduled: bool) -> Result<Vec<String>, String> {
    if after.is_empty() {
        return Ok(after);
    }
    if rescheduled {
        return Err("cannot be given with a delay or a run_at: a job that waits for others becomes ready when \
                    the last of them completes"
            .into());
    }
    let mut parents: Vec<String> = Vec::with_capacity(after.len());
    for id in after {
        names::check_label(&id).map_err(|reason| format!("names a job id that {reason}"))?;
        if !parents.contains(&id) {
            parents.push(id);
        }
    }
    if parents.len() > MAX_PARENTS {
        return Err(format!("names {} jobs, more than {MAX_PARENTS}: wait for fewer, or chain them", parents.len()));
    }
    Ok(parents)
}

/// Why a new job cannot wait for job `parent`, whose status is `status` (`None`: there is no
/// such job); `None` when it can.
pub(super) fn parent_refusal(parent: &str, status: Option<JobStatus>) -> Option<String> {
    match status {
        None => Some(format!(
            "job {parent}, which a new job waits for, does not exist: check the id (finished jobs are deleted \
             once retention expires them)"
        )),
        Some(status @ (JobStatus::Poisoned | JobStatus::Cancelled)) => Some(format!(
            "job {parent}, which a new job waits for, is {} and will never complete: retry it first \
             (jobhost jobs retry {parent}), or queue the job without it",
            status.as_str()
        )),
        Some(JobStatus::Pending | JobStatus::Claimed | JobStatus::Completed) => None,
    }
}

/// Why a job handed to [`super::Store::enqueue`] was refused; nothing is queued then.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

/// A job a worker holds. Settling it is fenced on `worker_id` and `token`: only the holder
/// of this exact claim can finish it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: String,
    pub seq: i64,
    pub pool: String,
    pub processor: String,
    pub payload: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub worker_id: String,
    pub token: i64,
}

/// What a worker asks to claim.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    pub pool: &'a str,
    pub worker_id: &'a str,
    /// How long the claim holds without a heartbeat.
    pub lease: Duration,
    pub limit: u32,
    /// The flow limits every claim enforces (see [`jobhost_core::flow`]); empty for none.
    pub flow: &'a [jobhost_core::flow::FlowLimit],
}

/// An attempt that ended, to be recorded: `result` is its JSON text when it succeeded.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    pub job: &'a ClaimedJob,
    pub report: AttemptReport<'a>,
    pub result: Option<&'a str>,
}

/// What became of one finished attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Completed,
    Retrying {
        run_at: Millis,
    },
    Poisoned,
    /// The claim was no longer live (the reaper took the job back): nothing changed.
    Stale,
}

/// One worker turn: how each finished attempt was settled, and the jobs claimed.
#[derive(Debug, Clone, Default)]
pub struct Turn {
    pub settled: Vec<Settled>,
    pub claimed: Vec<ClaimedJob>,
    /// Ready jobs were left unclaimed because their flow limit had no room: the claim came
    /// back short with work still queued behind the limit.
    pub held_back: bool,
}

/// What one attempt ended as.
#[derive(Debug, Clone)]
pub struct AttemptReport<'a> {
    pub kind: OutcomeKind,
    pub message: Option<&'a str>,
    pub stderr: Option<&'a str>,
    pub fuel_used: Option<u64>,
    pub duration_ms: Option<u64>,
    /// The lowercase hex SHA-256 of the processor's wasm bytes; `None` when it never loaded.
    pub processor_sha256: Option<&'a str>,
}

impl AttemptReport<'_> {
    pub fn of(kind: OutcomeKind) -> AttemptReport<'static> {
        AttemptReport { kind, message: None, stderr: None, fuel_used: None, duration_ms: None, processor_sha256: None }
    }

    /// What a failed attempt leaves in the job's `last_error`.
    pub fn last_error(&self) -> String {
        match self.message {
            Some(message) => format!("{}: {message}", self.kind.as_str()),
            None => self.kind.as_str().to_owned(),
        }
    }
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

impl IdAnswer {
    /// Why a `retry` (`retrying`) or `cancel` changed nothing, given the job's status and
    /// attempts, if it exists.
    pub(super) fn explain(found: Option<(JobStatus, u32)>, retrying: bool) -> IdAnswer {
        match found {
            None => IdAnswer::NotFound,
            Some((JobStatus::Poisoned | JobStatus::Cancelled, attempts))
                if retrying && attempts >= ATTEMPTS_CEILING =>
            {
                IdAnswer::NoAttemptsLeft
            }
            Some((status, _)) => IdAnswer::WrongStatus(status),
        }
    }
}

/// Which jobs a listing or a bulk retry or cancel is about; every condition left `None`
/// matches all.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobMatch<'a> {
    pub pool: Option<&'a str>,
    pub status: Option<JobStatus>,
    pub processor: Option<&'a str>,
    /// Created at or after this time.
    pub created_after: Option<Millis>,
    /// Created before this time.
    pub created_before: Option<Millis>,
}

/// One page of a listing: the matching jobs, newest first, that come after `after` (the
/// [`JobSummary::cursor`] of the previous page's last job).
#[derive(Debug, Clone, Copy, Default)]
pub struct JobFilter<'a> {
    pub matching: JobMatch<'a>,
    pub after: Option<Cursor>,
    pub limit: u32,
}

/// Where a listing stopped: jobs are listed in the order they were queued, newest first, so a
/// page goes on from the last job's place in that order, however jobs change meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor(pub(super) i64);

impl Cursor {
    /// The cursor as an opaque token for an API client.
    pub fn token(self) -> String {
        format!("j{}", self.0)
    }

    pub fn from_token(token: &str) -> Option<Cursor> {
        token.strip_prefix('j')?.parse().ok().filter(|&seq| seq > 0).map(Cursor)
    }
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobSummary {
    /// Its place in the queue's order; see [`JobSummary::cursor`].
    #[serde(skip)]
    pub(super) seq: i64,
    pub id: String,
    pub pool: String,
    pub processor: String,
    pub status: JobStatus,
    pub priority: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: Millis,
    pub worker_id: Option<String>,
    /// The machine of the worker that holds or last held the job.
    pub host: Option<String>,
    pub lease_expires_at: Option<Millis>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
    /// The key that keeps a duplicate out while the job lives (`seed --unique-key`).
    pub unique_key: Option<String>,
    /// How many of the jobs it waits for (`seed --after`) have not completed; a pending job
    /// with any is waiting, its `run_at` at the end of time ([`WAITING_RUN_AT`]).
    pub waiting_for: u32,
}

/// Most attempts a job's detail carries: its latest. The older ones are read a page at a
/// time ([`super::Store::attempts`]), so a job retried ten thousand times costs no more to
/// show than one retried twenty.
pub const RECENT_ATTEMPTS: u32 = 20;

/// Where a page of a job's attempts stopped: they are listed newest first, so the next page
/// holds the attempts numbered below this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptCursor(pub(super) u32);

impl AttemptCursor {
    /// The cursor as an opaque token for an API client.
    pub fn token(self) -> String {
        format!("a{}", self.0)
    }

    pub fn from_token(token: &str) -> Option<AttemptCursor> {
        token.strip_prefix('a')?.parse().ok().filter(|&attempt| attempt > 0).map(AttemptCursor)
    }
}

/// One page of a job's attempts, newest first: at most `limit`, numbered below `before`.
#[derive(Debug, Clone, Copy)]
pub struct AttemptPage {
    pub before: Option<AttemptCursor>,
    pub limit: u32,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    /// `None` while the attempt is still running.
    #[schema(value_type = Option<String>, example = "ok")]
    pub outcome: Option<OutcomeKind>,
    pub message: Option<String>,
    pub stderr: Option<String>,
    pub fuel_used: Option<u64>,
    pub duration_ms: Option<u64>,
    /// SHA-256 of the processor's code that ran this attempt (hex); null when it never loaded.
    pub processor_sha256: Option<String>,
    /// The machine of the worker that made the attempt.
    pub host: Option<String>,
}

impl AttemptRecord {
    /// The first 12 hex digits of [`AttemptRecord::processor_sha256`]: enough to tell two
    /// versions of a processor apart where people read it.
    pub fn short_processor_sha256(&self) -> Option<&str> {
        // `get`, not slicing: a damaged row must not stop a job from being shown.
        self.processor_sha256.as_deref().map(|sha| sha.get(..12).unwrap_or(sha))
    }

    /// Where a page of attempts that ended with this one goes on.
    pub fn cursor(&self) -> AttemptCursor {
        AttemptCursor(self.attempt)
    }
}

/// When a job runs, as people are told: its `run_at`, unless it waits for other jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunTime {
    At(Millis),
    /// When this many more of the jobs it waits for complete.
    AfterParents(u32),
    /// Never: it was cancelled while it waited for other jobs, so it has no time.
    Never,
}

impl RunTime {
    /// The time as people read it, with `format_time` writing an instant.
    pub fn describe(self, format_time: impl Fn(Millis) -> String) -> String {
        match self {
            RunTime::At(at) => format_time(at),
            RunTime::AfterParents(left) => format!("when {left} more of the jobs it waits for complete"),
            RunTime::Never => "-".to_owned(),
        }
    }
}

impl JobSummary {
    /// When the job runs (or ran): see [`RunTime`].
    pub fn run_time(&self) -> RunTime {
        match (self.status, self.waiting_for, self.run_at) {
            (JobStatus::Pending, left @ 1.., _) => RunTime::AfterParents(left),
            (_, _, WAITING_RUN_AT) => RunTime::Never,
            (_, _, at) => RunTime::At(at),
        }
    }

    /// Where a listing that ended with this job goes on.
    pub fn cursor(&self) -> Cursor {
        Cursor(self.seq)
    }
}

impl JobDetail {
    /// A job as stored; payload and result text that cannot be parsed back stay as text.
    /// `latest` is its [`RECENT_ATTEMPTS`] latest attempts and one more if it has more,
    /// oldest first; that one is left out, and says that older attempts exist.
    pub(super) fn new(
        job: JobSummary,
        payload: String,
        result: Option<String>,
        latest: Vec<AttemptRecord>,
        links: Links,
    ) -> JobDetail {
        let (payload, payload_error) = stored_json(payload);
        let result = result.map(|text| stored_json(text).0);
        let mut attempt_history = latest;
        let older = attempt_history.len() > RECENT_ATTEMPTS as usize;
        if older {
            attempt_history.drain(..attempt_history.len() - RECENT_ATTEMPTS as usize);
        }
        let older_attempts = attempt_history.first().filter(|_| older).map(AttemptRecord::cursor);
        let Links { parents, children, children_total } = links;
        JobDetail {
            job,
            payload,
            payload_error,
            result,
            attempt_history,
            older_attempts,
            parents,
            children,
            children_total,
        }
    }

    /// The details of `jobs` (each with its payload and result text), given the latest
    /// attempts of all of them as `(job seq, attempt)` pairs, oldest first within each job,
    /// and their links (see [`LinkRow`]), oldest first: what both backends read in three
    /// statements, joined here once.
    pub(super) fn join(
        jobs: Vec<(JobSummary, String, Option<String>)>,
        attempts: impl IntoIterator<Item = (i64, AttemptRecord)>,
        links: impl IntoIterator<Item = LinkRow>,
    ) -> Vec<JobDetail> {
        let mut by_seq: std::collections::HashMap<i64, Vec<AttemptRecord>> = std::collections::HashMap::new();
        for (seq, attempt) in attempts {
            by_seq.entry(seq).or_default().push(attempt);
        }
        let mut links_of: std::collections::HashMap<i64, Links> = std::collections::HashMap::new();
        for (seq, parent, link, children_total) in links {
            let links = links_of.entry(seq).or_default();
            if parent {
                links.parents.push(link);
            } else {
                links.children.push(link);
                links.children_total = children_total;
            }
        }
        jobs.into_iter()
            .map(|(job, payload, result)| {
                let latest = by_seq.remove(&job.seq).unwrap_or_default();
                let links = links_of.remove(&job.seq).unwrap_or_default();
                JobDetail::new(job, payload, result, latest, links)
            })
            .collect()
    }
}

/// Parses stored JSON text; text that does not parse is kept as a JSON string, with why.
fn stored_json(text: String) -> (serde_json::Value, Option<String>) {
    match serde_json::from_str(&text) {
        Ok(value) => (value, None),
        Err(err) => (serde_json::Value::String(text), Some(err.to_string())),
    }
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
    /// The latest [`RECENT_ATTEMPTS`] attempts, oldest first.
    pub attempt_history: Vec<AttemptRecord>,
    /// Where the attempts older than `attempt_history` begin, when there are any.
    #[serde(skip)]
    pub older_attempts: Option<AttemptCursor>,
    /// The jobs it waits for (`seed --after`) that are still kept, oldest first.
    pub parents: Vec<JobLink>,
    /// The first [`SHOWN_CHILDREN`] jobs that wait for it, oldest first.
    pub children: Vec<JobLink>,
    /// How many jobs wait for it, shown or not.
    pub children_total: u64,
}

/// A completed parent's result, for the job waiting for it (see
/// [`super::Store::parent_results`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentResult {
    /// The waiting job, by its [`ClaimedJob::seq`].
    pub child_seq: i64,
    pub parent_id: String,
    /// Its result's JSON text; `None` if it has none (it has not completed).
    pub result: Option<String>,
}

/// Most of a job's children its detail lists; `children_total` counts them all.
pub const SHOWN_CHILDREN: u32 = 100;

/// Another job a job's detail points to: a parent or a child.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct JobLink {
    pub id: String,
    pub status: JobStatus,
}

/// A job's parents and children, as the backends read them for [`JobDetail::join`].
#[derive(Debug, Clone, Default)]
pub(super) struct Links {
    pub(super) parents: Vec<JobLink>,
    pub(super) children: Vec<JobLink>,
    pub(super) children_total: u64,
}

/// A link read by a backend: the job (by `seq`) it belongs to, whether it points to a parent,
/// the linked job, and (for a child) how many children that job has in all.
pub(super) type LinkRow = (i64, bool, JobLink, u64);

/// A registered worker, as the API and dashboard list them.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub pool: String,
    pub status: WorkerStatus,
    pub host: Option<String>,
    pub pid: Option<u32>,
    pub started_at: Millis,
    pub last_heartbeat_at: Millis,
    pub stopped_at: Option<Millis>,
    /// Ids of the jobs it holds now.
    pub current_jobs: Vec<String>,
}

/// Which workers to list; `None` matches all.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerFilter<'a> {
    pub pool: Option<&'a str>,
    pub status: Option<WorkerStatus>,
    pub limit: u32,
}

/// One pool's counts, as in [`StatusSnapshot`] for that pool, and whether it is paused.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub pool: String,
    pub jobs: JobCounts,
    pub ready: u64,
    pub oldest_ready_age_ms: Option<Millis>,
    /// Workers claim none of its jobs (those running finish); see [`PausedPool`].
    pub paused: bool,
    /// When it was paused, on the database's clock; `null` unless paused.
    pub paused_at: Option<Millis>,
    /// Why, as the one who paused it said; `null` when not said or not paused.
    pub paused_reason: Option<String>,
}

impl PoolSnapshot {
    pub(super) fn new(pool: String, status: &StatusSnapshot, pause: Option<&PausedPool>) -> PoolSnapshot {
        PoolSnapshot {
            pool,
            jobs: status.jobs.clone(),
            ready: status.ready,
            oldest_ready_age_ms: status.oldest_ready_age_ms,
            paused: pause.is_some(),
            paused_at: pause.map(|pause| pause.paused_at),
            paused_reason: pause.and_then(|pause| pause.reason.clone()),
        }
    }
}

/// A pool whose jobs workers do not claim until it is resumed: its jobs stay pending, the
/// checker starts no worker for it and following workers wait. Jobs already claimed run to
/// their end and are settled as ever, and the reaper still recovers abandoned ones.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct PausedPool {
    pub pool: String,
    /// When it was paused, on the database's clock; pausing it again keeps this.
    pub paused_at: Millis,
    /// Why, as the one who paused it said.
    pub reason: Option<String>,
}

/// What a backend counts for one processor and flow key (see [`crate::Store::flow_usage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowCount {
    pub processor: String,
    pub key: String,
    /// Its jobs claimed now.
    pub running: u64,
    /// Its pending jobs whose time has come, in pools that are not paused.
    pub ready: u64,
    /// Its starts within its rate's period (0 without a rate).
    pub started: u64,
}

/// One flow limit and key as it stands: what runs under it and what waits for room.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct FlowUsage {
    pub processor: String,
    /// The value at the limit's key pointer (`""` for jobs without one, and for a limit
    /// without a key).
    pub key: String,
    /// The limit's key pointer, e.g. `/tenant`; `null` when it has none.
    pub key_pointer: Option<String>,
    pub max_running: Option<u32>,
    /// As written: `100/1m`.
    pub rate: Option<String>,
    /// Jobs claimed now.
    pub running: u64,
    /// Starts within the rate's period (0 without a rate).
    pub started_in_period: u64,
    /// Ready jobs the limit keeps waiting: ready beyond the room it has left.
    pub held_back: u64,
}

/// Longest reason a pause may record, in bytes.
pub const MAX_PAUSE_REASON_BYTES: usize = 1_024;

/// A pause's reason: up to [`MAX_PAUSE_REASON_BYTES`] of text on one line (tabs allowed), so
/// it reads back cleanly in every listing. The error completes a sentence that starts with
/// the name of the flag or field.
pub fn check_pause_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_PAUSE_REASON_BYTES || reason.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("must be at most {MAX_PAUSE_REASON_BYTES} bytes of text on one line, got {reason:?}"));
    }
    Ok(())
}

/// A schedule as the pool keeps it (its timetable is the configuration's): how far its
/// ticks have been handled, and the jobs its latest ticks queued.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct ScheduleState {
    pub name: String,
    /// Every tick due at or before this instant has been handled: queued, or passed over.
    /// Set to when the schedule was first seen, so it never fires for a tick before that.
    pub ticked_through: Millis,
    /// Newest first.
    pub runs: Vec<ScheduleRun>,
}

/// One tick that queued a job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct ScheduleRun {
    /// When the tick was due.
    pub due_at: Millis,
    pub job_id: String,
    /// When the job was queued (on the database's clock).
    pub enqueued_at: Millis,
}

/// How many runs each schedule keeps: older ones are deleted as new ones are recorded.
pub const KEPT_SCHEDULE_RUNS: u32 = 100;

#[derive(Debug, Clone)]
pub struct NewWorker {
    pub id: String,
    pub pool: String,
    pub host: Option<String>,
    pub pid: Option<u32>,
    /// It waits for jobs instead of exiting when none is ready (`work --follow`). A worker
    /// the checker registered keeps what the checker registered it as.
    pub following: bool,
}

impl NewWorker {
    /// Why worker `id` may not come up for `wanted_pool`, its row being `status` in `pool`.
    pub(super) fn refusal(id: &str, wanted_pool: &str, status: WorkerStatus, pool: &str) -> String {
        if status == WorkerStatus::Starting {
            format!("worker {id} was registered for pool {pool:?}, not {wanted_pool:?}: start it with --pool {pool}")
        } else {
            format!("worker {id} is already {status}: a worker id is used once; start with a new --worker-id")
        }
    }
}

/// Counts for `jobhost status`. Its JSON form is a fixed interface other tools read.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct StatusSnapshot {
    pub jobs: JobCounts,
    pub ready: u64,
    pub oldest_ready_age_ms: Option<Millis>,
    pub workers: WorkerCounts,
    /// The same worker counts for each machine (`worker.host`) that ran workers.
    pub hosts: std::collections::BTreeMap<String, WorkerCounts>,
    /// The paused pools (of those asked about), by name.
    pub paused_pools: Vec<PausedPool>,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct JobCounts {
    pub pending: u64,
    pub claimed: u64,
    pub completed: u64,
    pub poisoned: u64,
    pub cancelled: u64,
}

#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema, PartialEq, Eq)]
pub struct WorkerCounts {
    pub starting: u64,
    pub active: u64,
    pub terminated: u64,
    pub lost: u64,
}

/// What the checker on one host asks for.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    pub pool: &'a str,
    pub host: &'a str,
    /// Most live workers this host keeps for the pool.
    pub max_workers: u32,
    /// Live following workers this host keeps for the pool whatever the backlog; they
    /// count among the `max_workers`.
    pub min_following: u32,
    /// A worker silent for longer than this does not count as live.
    pub stale_after: Duration,
}

/// Live workers of a pool, as a plan counts them.
#[derive(Debug, Clone, Copy)]
pub(super) struct LiveWorkers {
    pub everywhere: u64,
    pub here: u64,
    pub following_here: u64,
}

/// The checker's view of a pool and the workers it registered to close the gap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerPlan {
    /// Ready jobs, counted up to what could matter: live workers everywhere plus this host's slots.
    pub queue_depth: u64,
    /// Live workers of the pool on every host.
    pub live_workers: u64,
    /// Live workers of the pool on this host.
    pub live_here: u64,
    /// Live following workers of the pool on this host.
    pub following_here: u64,
    pub workers_needed: u64,
    /// The pool is paused: no worker is needed for it, and none was registered.
    pub paused: bool,
    /// Ids registered as `starting`; the caller launches one worker for each.
    pub new_workers: Vec<String>,
    /// Ids registered as `starting` and following; the caller launches one following
    /// worker for each.
    pub new_following: Vec<String>,
}

impl WorkerPlan {
    /// The plan for a host with `max_workers` slots: the ready jobs that live workers on
    /// other hosts do not cover, up to its slots, less the workers it already has.
    /// A paused pool needs none: neither draining workers (they would find nothing to claim)
    /// nor following ones (those alive wait for its resumption; new ones are started after).
    pub(super) fn new(queue_depth: u64, live: LiveWorkers, paused: bool, request: &PlanRequest<'_>) -> WorkerPlan {
        let elsewhere = live.everywhere.saturating_sub(live.here);
        let max_workers = u64::from(request.max_workers);
        let workers_needed = if paused { 0 } else { queue_depth.saturating_sub(elsewhere).min(max_workers) };
        WorkerPlan {
            queue_depth,
            live_workers: live.everywhere,
            live_here: live.here,
            following_here: live.following_here,
            workers_needed,
            paused,
            new_workers: Vec::new(),
            new_following: Vec::new(),
        }
    }

    /// How many following workers to start, then how many draining ones: following ones
    /// first, up to `min_following`, as they also drain the backlog; draining ones for the
    /// rest of it. Never more than `max_workers` live here in all, and none for a paused pool.
    pub(super) fn to_spawn(&self, request: &PlanRequest<'_>) -> (u64, u64) {
        if self.paused {
            return (0, 0);
        }
        let room = u64::from(request.max_workers).saturating_sub(self.live_here);
        let following = u64::from(request.min_following).saturating_sub(self.following_here).min(room);
        let draining = self.workers_needed.saturating_sub(self.live_here + following).min(room - following);
        (following, draining)
    }
}

impl JobCounts {
    pub(super) fn set(&mut self, status: JobStatus, count: u64) {
        match status {
            JobStatus::Pending => self.pending = count,
            JobStatus::Claimed => self.claimed = count,
            JobStatus::Completed => self.completed = count,
            JobStatus::Poisoned => self.poisoned = count,
            JobStatus::Cancelled => self.cancelled = count,
        }
    }
}

impl JobCounts {
    /// Every status with its count, in [`JobStatus::ALL`]'s order.
    pub fn by_status(&self) -> [(JobStatus, u64); 5] {
        [
            (JobStatus::Pending, self.pending),
            (JobStatus::Claimed, self.claimed),
            (JobStatus::Completed, self.completed),
            (JobStatus::Poisoned, self.poisoned),
            (JobStatus::Cancelled, self.cancelled),
        ]
    }
}

impl WorkerCounts {
    /// Every status with its count, in [`WorkerStatus::ALL`]'s order.
    pub fn by_status(&self) -> [(WorkerStatus, u64); 4] {
        [
            (WorkerStatus::Starting, self.starting),
            (WorkerStatus::Active, self.active),
            (WorkerStatus::Terminated, self.terminated),
            (WorkerStatus::Lost, self.lost),
        ]
    }

    fn add(&mut self, status: WorkerStatus, count: u64) {
        match status {
            WorkerStatus::Starting => self.starting += count,
            WorkerStatus::Active => self.active += count,
            WorkerStatus::Terminated => self.terminated += count,
            WorkerStatus::Lost => self.lost += count,
        }
    }
}

impl StatusSnapshot {
    /// Counts `count` workers of `host` in `status`, in the totals and in the host's row.
    pub(super) fn add_workers(&mut self, host: String, status: WorkerStatus, count: u64) {
        self.workers.add(status, count);
        self.hosts.entry(host).or_default().add(status, count);
    }
}

/// What one reaping pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reaped {
    pub workers: Vec<String>,
    pub recovery: Recovery,
}

/// Which database a store opened, so a long-running process can tell that its database was
/// deleted or replaced under it (a new file at the same path is a different pool).
#[derive(Debug, Clone)]
pub struct Fingerprint {
    /// A SQLite file and its (device, inode); a server database has no file to watch.
    pub(super) file: Option<(PathBuf, (u64, u64))>,
}

/// A job as `jobhost copy` moves it: every column, and its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportedJob {
    pub seq: i64,
    pub id: String,
    pub pool: String,
    pub processor: String,
    pub payload: String,
    pub status: JobStatus,
    pub priority: i64,
    pub run_at: Millis,
    pub attempts: u32,
    pub max_attempts: u32,
    pub worker_id: Option<String>,
    pub claim_token: Option<i64>,
    pub lease_expires_at: Option<Millis>,
    pub result: Option<String>,
    pub last_error: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub finished_at: Option<Millis>,
    pub unique_key: Option<String>,
    pub waiting_for: u32,
    /// The ids of the jobs it waits for, as far as they are kept.
    pub parents: Vec<String>,
    pub history: Vec<ExportedAttempt>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportedAttempt {
    pub attempt: u32,
    pub worker_id: String,
    pub started_at: Millis,
    pub finished_at: Option<Millis>,
    pub outcome: Option<OutcomeKind>,
    pub message: Option<String>,
    pub stderr: Option<String>,
    pub fuel_used: Option<i64>,
    pub duration_ms: Option<i64>,
    pub processor_sha256: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_statuses_keep_their_names_and_an_unknown_one_is_named() {
        for status in WorkerStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
            assert_eq!(WorkerStatus::from_stored(status.as_str()), Ok(status));
        }
        let err = WorkerStatus::from_stored("zombie").unwrap_err();
        assert_eq!(err.to_string(), r#"unknown worker status "zombie" in the database"#);
        assert!(OutcomeKind::from_stored("exploded").unwrap_err().to_string().contains(r#""exploded""#));
    }

    fn request() -> JobRequest {
        JobRequest {
            pool: "default".into(),
            processor: "echo".into(),
            payload: r#"{"n": 1}"#.into(),
            priority: 0,
            max_attempts: 3,
            delay: None,
            run_at: None,
            unique_key: None,
            unique_within: None,
            replace: false,
            after: Vec::new(),
        }
    }

    fn rules(known: &[String]) -> JobRules<'_> {
        JobRules { processors: Some(known), max_payload: 1024 }
    }

    #[test]
    fn a_new_job_is_checked_and_ready_after_its_delay_or_at_its_run_at() {
        let known = ["echo".to_owned()];
        let job = NewJob::new(request(), &rules(&known)).unwrap();
        assert_eq!(
            (job.pool.as_str(), job.payload.as_str(), job.ready),
            ("default", r#"{"n": 1}"#, Ready::After(Duration::ZERO))
        );
        let delayed = NewJob::new(JobRequest { delay: Some(Duration::from_secs(5)), ..request() }, &rules(&known));
        assert_eq!(delayed.unwrap().ready, Ready::After(Duration::from_secs(5)));
        let at = NewJob::new(JobRequest { run_at: Some(42), ..request() }, &rules(&known));
        assert_eq!(at.unwrap().ready, Ready::At(42));
        let after = vec!["b".to_owned(), "a".to_owned(), "b".to_owned()];
        let child = NewJob::new(JobRequest { after, ..request() }, &rules(&known)).unwrap();
        assert_eq!(child.after, ["b", "a"], "each parent once, in the order given");
        let anywhere = JobRules { processors: None, max_payload: 1024 };
        let elsewhere = NewJob::new(JobRequest { processor: "resize".into(), ..request() }, &anywhere);
        assert_eq!(elsewhere.unwrap().processor, "resize", "with no list, any valid name is taken");
        assert_eq!(Ready::At(10).run_at(20), 20, "a run_at that has passed is now");
        assert_eq!(Ready::After(Duration::MAX).run_at(20), Millis::MAX, "a delay saturates at the end of time");
    }

    #[test]
    fn each_refusal_names_the_input_at_fault_in_the_callers_words() {
        let known = ["echo".to_owned()];
        let refused = |request: JobRequest| NewJob::new(request, &rules(&known)).unwrap_err();
        let cases = [
            (
                JobRequest { processor: "../x".into(), ..request() },
                JobField::Processor,
                "--processor: invalid processor name",
            ),
            (
                JobRequest { processor: "nope".into(), ..request() },
                JobField::Processor,
                "--processor nope: no such processor on this host (it has: echo)",
            ),
            (
                JobRequest { pool: String::new(), ..request() },
                JobField::Pool,
                "--pool must be 1 to 128 bytes of printable text",
            ),
            (JobRequest { payload: "{x".into(), ..request() }, JobField::Payload, "--payload is not valid JSON"),
            (
                JobRequest { payload: "0".repeat(1025), ..request() },
                JobField::Payload,
                "--payload is 1025 bytes, more than jobs.max_payload",
            ),
            (
                JobRequest { max_attempts: 0, ..request() },
                JobField::MaxAttempts,
                "--max-attempts must be between 1 and 10000",
            ),
            (JobRequest { max_attempts: MAX_ATTEMPTS + 1, ..request() }, JobField::MaxAttempts, ", got 10001"),
            (
                JobRequest { delay: Some(Duration::ZERO), run_at: Some(1), ..request() },
                JobField::Schedule,
                "--run-at cannot be given with a delay",
            ),
            (
                JobRequest { unique_key: Some("a\nb".into()), ..request() },
                JobField::UniqueKey,
                "--unique-key must be 1 to 128 bytes of printable text",
            ),
            (
                JobRequest { replace: true, ..request() },
                JobField::UniqueKey,
                "--unique-key is required with replace and unique_within",
            ),
            (
                JobRequest { unique_within: Some(Duration::from_secs(1)), ..request() },
                JobField::UniqueKey,
                "--unique-key is required",
            ),
            (
                JobRequest { after: vec!["a".into()], delay: Some(Duration::from_secs(1)), ..request() },
                JobField::After,
                "--after cannot be given with a delay or a run_at",
            ),
            (
                JobRequest { after: vec![String::new()], ..request() },
                JobField::After,
                "--after names a job id that must be 1 to 128 bytes",
            ),
            (
                JobRequest { after: (0..=MAX_PARENTS).map(|n| n.to_string()).collect(), ..request() },
                JobField::After,
                "--after names 101 jobs, more than 100",
            ),
        ];
        let flag = |field| match field {
            JobField::Pool => "--pool",
            JobField::Processor => "--processor",
            JobField::Payload => "--payload",
            JobField::MaxAttempts => "--max-attempts",
            JobField::Schedule => "--run-at",
            JobField::UniqueKey => "--unique-key",
            JobField::After => "--after",
        };
        for (request, field, expected) in cases {
            let err = refused(request);
            assert_eq!(err.field(), field, "{err:?}");
            let message = err.message(flag(field));
            assert!(message.contains(expected), "{expected:?} not in {message:?}");
        }
        let both_wrong = JobRequest { pool: String::new(), max_attempts: 0, ..request() };
        assert_eq!(refused(both_wrong).field(), JobField::Pool, "the first input at fault is named");
    }
}
