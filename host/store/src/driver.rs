//! The seam between the store and its backends, as River's driver is.
//!
//! [`super::Store`] owns everything above the SQL: the retry policy, how a finished attempt
//! is settled, reaping as "mark the silent workers, then settle their jobs", errors that name
//! the database. A [`Driver`] owns only its SQL and its connections, and implements each
//! operation as one statement or one transaction, fenced on the state it expects, correct
//! under PostgreSQL's READ COMMITTED as well as SQLite's single writer.
//!
//! Time: every operation gets `now`. `None` means "the database's clock": the server's on
//! PostgreSQL (so machines whose clocks disagree still agree on leases), the machine's on
//! SQLite (one machine by construction). Tests pass `Some` to drive time by hand.

use std::time::Duration;

use async_trait::async_trait;

use super::activity::ActivityRow;
use super::error::Result;
use super::model::*;
use super::wake::Wakeups;

/// The time an operation runs at; see the module docs.
pub type Now = Option<Millis>;

/// How one finished attempt is settled; decided by the store's shared logic.
#[derive(Debug, Clone, Copy)]
pub enum Resolution<'a> {
    /// The job is done; `result` is its JSON text.
    Complete { result: &'a str },
    /// Back to `pending`, ready after `delay`.
    Retry { delay: Duration },
    /// No attempts left.
    Poison,
}

/// One attempt to settle, fenced on the claim it was made under.
#[derive(Debug, Clone)]
pub struct Settlement<'a> {
    pub claim: ClaimRef,
    pub resolution: Resolution<'a>,
    pub report: AttemptReport<'a>,
}

/// What identifies a live claim: only its holder, with this token, can settle it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub seq: i64,
    pub worker_id: String,
    pub token: i64,
    pub attempt: u32,
}

/// A claimed job the reaper found abandoned, and what it knows of why.
#[derive(Debug, Clone)]
pub struct Abandoned {
    pub claim: ClaimRef,
    pub max_attempts: u32,
    /// The holder's status; `None` when no worker of that id is registered.
    pub worker_status: Option<WorkerStatus>,
    /// How long ago the lease ran out (0 or less while it still runs).
    pub lease_overdue_ms: Millis,
}

impl Abandoned {
    /// The `worker_lost` attempt's message.
    pub fn reason(&self) -> String {
        let worker = &self.claim.worker_id;
        match self.worker_status {
            Some(status @ (WorkerStatus::Terminated | WorkerStatus::Lost)) => {
                format!("worker {worker} is {status} and still held the job")
            }
            None => format!("worker {worker} is not registered"),
            Some(WorkerStatus::Starting | WorkerStatus::Active) => format!(
                "the lease of worker {worker} expired {} ms ago without a heartbeat",
                self.lease_overdue_ms.max(0)
            ),
        }
    }
}

/// A backend. Every method is one statement or one transaction (see the module docs).
#[async_trait]
pub trait Driver: Send + Sync {
    /// The database as people name it (a path, or a URL without its password).
    fn location(&self) -> &str;

    /// Which database this connection opened, so a long-running process can notice that it
    /// was replaced under it.
    fn fingerprint(&self) -> Fingerprint;

    /// Inserts every job `jobs` yields in one transaction; the first `Err` rolls all back and
    /// is returned as a [`super::ErrorKind::Refused`] error. A job whose unique key is held
    /// is not inserted and meets the holder as its [`Unique`] says.
    async fn enqueue(
        &self,
        jobs: &mut (dyn Iterator<Item = Result<NewJob, Refusal>> + Send),
        now: Now,
    ) -> Result<EnqueueReport>;

    /// Settles `settlements` (each fenced on its own; a stale one changes nothing) and then,
    /// if asked, claims ready jobs within the claim's flow limits (see [`super::flow`]), in
    /// one transaction; on PostgreSQL a claim with limits is a second statement sent with
    /// the first, whose failure leaves the settlements recorded, as a lost answer does.
    /// Returns one [`Settled`] per settlement, in order, and the claimed jobs.
    async fn turn(&self, settlements: &[Settlement<'_>], claim: Option<&ClaimRequest<'_>>, now: Now) -> Result<Turn>;

    /// The jobs of `ids` that exist, in any order, each with its latest
    /// [`RECENT_ATTEMPTS`]` + 1` attempts, oldest first (see [`JobDetail::new`]).
    async fn jobs(&self, ids: &[&str]) -> Result<Vec<JobDetail>>;
    /// The parents still kept of each of `children` (by `seq`), with their results, in any
    /// order.
    async fn parent_results(&self, children: &[i64]) -> Result<Vec<ParentResult>>;
    /// One page of job `id`'s attempts, newest first; `None` when there is no such job.
    async fn attempts(&self, id: &str, page: &AttemptPage) -> Result<Option<Vec<AttemptRecord>>>;
    /// One page of the matching jobs, newest (highest `seq`) first.
    async fn list_jobs(&self, filter: &JobFilter<'_>) -> Result<Vec<JobSummary>>;
    /// The status of each of `ids` that exists, in any order.
    async fn job_statuses(&self, ids: &[&str]) -> Result<Vec<(String, JobStatus)>>;
    /// The jobs `worker_id` holds claimed, with their claim tokens, in `seq` order.
    async fn claims_held_by(&self, worker_id: &str) -> Result<Vec<ClaimedJob>>;
    /// Gives a poisoned or cancelled job as many attempts again, up to [`ATTEMPTS_CEILING`].
    async fn retry_job(&self, id: &str, now: Now) -> Result<IdAnswer>;
    /// As [`Driver::retry_job`] for every poisoned or cancelled job matching, in one statement.
    async fn retry_matching(&self, matching: &JobMatch<'_>, now: Now) -> Result<u64>;
    async fn cancel_job(&self, id: &str, now: Now) -> Result<IdAnswer>;
    /// Cancels every pending job matching, in one statement.
    async fn cancel_matching(&self, matching: &JobMatch<'_>, now: Now) -> Result<u64>;
    /// Deletes at most `limit` finished jobs, each in a status `ages` names and finished more
    /// than its age ago, with their attempts; other statuses in `ages` are ignored. Short
    /// enough that no claim waits long for it, and it waits for no row another transaction
    /// holds: such a job is being changed, and is left for the next call.
    async fn delete_finished(&self, ages: &[(JobStatus, Duration)], limit: u32, now: Now) -> Result<u64>;

    async fn activate_worker(&self, worker: &NewWorker, now: Now) -> Result<()>;
    /// Renews the worker and the leases of its jobs; false when it is no longer `active`.
    async fn heartbeat(&self, worker_id: &str, lease: Duration, now: Now) -> Result<bool>;
    async fn deregister_worker(&self, worker_id: &str, now: Now) -> Result<()>;
    /// Marks `active` workers silent for longer than `stale_after`, and `starting` ones older
    /// than `start_grace`, as `lost`; returns their ids.
    async fn mark_lost_workers(
        &self,
        pool: Option<&str>,
        stale_after: Duration,
        start_grace: Duration,
        now: Now,
    ) -> Result<Vec<String>>;
    /// Claimed jobs whose lease expired or whose worker is not `starting` or `active`.
    async fn abandoned_jobs(&self, pool: Option<&str>, now: Now) -> Result<Vec<Abandoned>>;
    /// Registers as `starting` the workers `host` should start for `pool`; see [`WorkerPlan`].
    async fn plan_workers(&self, request: &PlanRequest<'_>, now: Now) -> Result<WorkerPlan>;
    async fn status(&self, pool: Option<&str>, now: Now) -> Result<StatusSnapshot>;
    /// Every pool that holds jobs, by name.
    async fn pool_names(&self) -> Result<Vec<String>>;
    /// Pauses `pool` (see [`PausedPool`]) unless it is paused already, in one statement;
    /// a pool paused already keeps its `paused_at`, and its reason unless `reason` is given.
    /// Returns the pause as it now stands.
    async fn pause_pool(&self, pool: &str, reason: Option<&str>, now: Now) -> Result<PausedPool>;
    /// Ends `pool`'s pause and, in the same transaction, wakes its waiting workers (see
    /// [`super::wake`]); whether it was paused.
    async fn resume_pool(&self, pool: &str) -> Result<bool>;
    /// Every paused pool, by name.
    async fn paused_pools(&self) -> Result<Vec<PausedPool>>;
    /// For each of `limits` and each key with jobs running, ready or started within the
    /// rate's period: those counts, in any order (see [`super::Store::flow_usage`]).
    async fn flow_counts(&self, limits: &[jobhost_core::flow::FlowLimit], now: Now) -> Result<Vec<FlowCount>>;
    /// Workers matching, live ones first, then the most recently heard from.
    async fn workers(&self, filter: &WorkerFilter<'_>) -> Result<Vec<WorkerInfo>>;
    /// The activity table summed (see [`super::activity`]), after folding rows older than
    /// the recent minutes into minute 0; and the time it was read at.
    async fn activity(&self, now: Now) -> Result<(Millis, Vec<ActivityRow>)>;

    /// Every schedule the pool knows, by name, each with its latest `runs` runs.
    async fn schedules(&self, runs: u32) -> Result<Vec<ScheduleState>>;
    /// Records schedule `name` as handled through `at`, unless it is already known; whether
    /// this call recorded it.
    async fn start_schedule(&self, name: &str, at: Millis) -> Result<bool>;
    /// In one transaction: moves schedule `name` to `ticked_through = due_at` if it is
    /// behind that (a compare-and-set: of racing callers exactly one moves it), and only
    /// then queues `job` and records it as the tick's run. Whether this call moved it.
    async fn advance_schedule(&self, name: &str, due_at: Millis, job: Option<&NewJob>, now: Now) -> Result<bool>;

    /// Every job with `seq` above `after`, oldest first, at most `limit`, with its history:
    /// what `jobhost copy` reads.
    async fn export(&self, after: i64, limit: u32) -> Result<Vec<ExportedJob>>;
    /// Writes exported jobs as they were, in one transaction; refuses ids already present.
    async fn import(&self, jobs: &[ExportedJob]) -> Result<()>;
    /// Whether the pool holds no job and no worker.
    async fn is_empty(&self) -> Result<bool>;
    /// How long until the earliest pending job of `pool` is ready (0 or less: it is now);
    /// `None` when the pool has no pending job or is paused. One cheap read.
    async fn ready_in(&self, pool: &str, now: Now) -> Result<Option<Millis>>;
    /// Hints that jobs of `pool` may have changed (see [`super::wake`]).
    async fn wakeups(&self, pool: &str) -> Result<Wakeups>;
    /// One cheap read of jobhost's tables: succeeds when the pool can be used now.
    async fn ping(&self) -> Result<()>;

    /// Tests only: differences between the kept job counts and a real count.
    #[cfg(test)]
    async fn drifted_counts(&self) -> Result<Vec<String>>;
    /// Tests only: runs statements the suite needs to set up odd states.
    #[cfg(test)]
    async fn execute_for_test(&self, sql: &str) -> Result<()>;
    /// Tests only: the first column of every row `sql` returns, as integers.
    #[cfg(test)]
    async fn counts_for_test(&self, sql: &str) -> Result<Vec<i64>>;
}
