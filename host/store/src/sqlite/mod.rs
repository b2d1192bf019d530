//! The SQLite backend: one file shared by every jobhost process on the machine.
//!
//! Write transactions take the write lock up front (`BEGIN IMMEDIATE`), so two processes
//! never deadlock upgrading read locks, and waiting for it is bounded by `busy_timeout`.
//! One writer at a time makes a transaction's reads and writes atomic here; the fencing
//! (`status`, worker and claim token in every `WHERE`) is what keeps a late call harmless.
//!
//! Durability: WAL mode. With `synchronous = NORMAL` (the default) a committed transaction
//! survives a crash of any jobhost process, but the most recent commits can be lost if the
//! machine itself loses power; `FULL` fsyncs every commit and survives that too.
//!
//! Connections and threads. Every call is blocking work: a statement, and at worst a wait of
//! up to `busy_timeout` for another process's write lock. A store has one connection for
//! writes and, when opened for many callers ([`crate::Store::open_pooled`], what `jobhost
//! serve` does), more for reads; in WAL mode a read never waits for the write lock, so a read
//! takes a free reader connection and goes on while a write waits its turn. Writes share the
//! one writer, queueing on it as they would at SQLite's lock. A store with one connection
//! (every short-lived command, a worker, the checker) reads on the writer, and opening it
//! costs one connection, as before.
//!
//! Nothing waits on the reactor. On a multi-threaded runtime a call first tries to go at
//! once: a free connection taken without waiting, and SQLite told to answer "busy" rather
//! than wait for a lock (a write takes the write lock up front, so only its `BEGIN` can meet
//! a held lock; a read in WAL mode almost never does). When that works, as it does unless
//! another write holds the lock, the statements run right here, like any other handler's
//! work: a single-job enqueue takes tens of microseconds. Otherwise the call waits, for the
//! connection and the lock, and runs under [`tokio::task::block_in_place`], which hands this
//! thread's other tasks to another thread meanwhile; so do changes of as many jobs as a
//! filter matches (bulk retry and cancel, purge, import), which may take seconds once they
//! have the lock. `block_in_place` on every call would be simpler, but it moves the runtime
//! to another thread each time: it cost `jobhost serve` 80 µs of CPU per single-job POST (40%
//! more) and about a tenth of its throughput on two cores. `spawn_blocking` hands each call
//! to another thread too, and needs owned data where the driver's calls borrow theirs (the
//! jobs to insert are streamed from an iterator, settlements borrow the jobs' output). On a
//! current-thread runtime (every command but `serve`) `block_in_place` panics,
//! and nothing else would run on that thread anyway, so calls run inline and wait as they
//! always did.

mod jobs;
mod schedules;
mod schema;
mod wake;
mod workers;

use std::cell::Cell;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use jobhost_core::config::DatabaseConfig;

use super::Access;
use super::activity::ActivityRow;
use super::driver::{Abandoned, Driver, Now, Settlement};
use super::error::{ErrorKind, Result, StoreError};
use super::model::*;
use super::wake::Wakeups;

pub struct SqliteDriver {
    /// The writer first, then the readers (none when the store has one connection).
    connections: Vec<Mutex<Connection>>,
    /// Where the search for a free reader starts, so readers are used in turn.
    next_reader: AtomicUsize,
    location: String,
    fingerprint: Fingerprint,
}

impl SqliteDriver {
    /// Opens `connections` connections (at least one): the writer, which creates or migrates
    /// the schema as `access` allows, then the readers.
    pub fn open(config: &DatabaseConfig, access: Access, connections: usize) -> Result<SqliteDriver> {
        let path = Path::new(&config.path);
        let location = config.path.clone();
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        match access {
            Access::CreateIfMissing => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|err| {
                        StoreError::new(ErrorKind::CannotOpen, format!("cannot create its folder: {err}"))
                            .caused_by(err)
                            .at(&location)
                    })?;
                }
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            }
            Access::Existing if !path.exists() => return Err(StoreError::new(ErrorKind::Missing, "").at(&location)),
            Access::Existing => {}
        }
        let connect = || -> Result<Connection> {
            let conn = Connection::open_with_flags(path, flags)?;
            conn.busy_handler(Some(wait_for_lock))?;
            Ok(conn)
        };
        let mut writer = connect().map_err(|err| err.at(&location))?;
        let meta = std::fs::metadata(path)
            .map_err(|err| StoreError::new(ErrorKind::CannotOpen, err.to_string()).caused_by(err).at(&location))?;
        let fingerprint = Fingerprint { file: Some((path.to_path_buf(), (meta.dev(), meta.ino()))) };
        BUSY_TIMEOUT_MS.store(millis(config.busy_timeout.0).max(0) as u64, Ordering::Relaxed);
        // Identity and version are checked before any pragma that writes to the file, so a
        // foreign or newer file is refused exactly as it was.
        schema::migrate(&mut writer).and_then(|()| configure(&writer, config)).map_err(|err| err.at(&location))?;
        let mut opened = vec![Mutex::new(writer)];
        for _ in 1..connections.max(1) {
            let reader = connect().and_then(|reader| configure(&reader, config).map(|()| reader));
            opened.push(Mutex::new(reader.map_err(|err| err.at(&location))?));
        }
        Ok(SqliteDriver { connections: opened, next_reader: AtomicUsize::new(0), location, fingerprint })
    }

    fn writer(&self) -> &Mutex<Connection> {
        &self.connections[0]
    }

    /// Runs `op` on the writer, off the reactor: every change goes through the writer.
    fn writing<T>(&self, op: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
        off_reactor(|| op(&mut locked(self.writer())))
    }

    /// Runs `op` in a write transaction taken up front; commits when it returns `Ok`. When the
    /// writer and SQLite's write lock are both free, this happens right here; otherwise the
    /// waiting for them and `op` happen off the reactor (see the module docs).
    fn write<T>(&self, op: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        if multi_threaded()
            && let Ok(mut writer) = self.writer().try_lock()
        {
            match without_waiting(|| writer.transaction_with_behavior(TransactionBehavior::Immediate)) {
                Ok(tx) => return commit(tx, op),
                Err(err) if err.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy) => {}
                Err(err) => return Err(err.into()),
            }
        }
        self.write_off_reactor(op)
    }

    /// As [`SqliteDriver::write`], always off the reactor: for changes of as many jobs as a
    /// filter matches, which may take seconds once they have the lock.
    fn write_off_reactor<T>(&self, op: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        self.writing(|conn| commit(conn.transaction_with_behavior(TransactionBehavior::Immediate)?, op))
    }

    /// Runs `op` on a reader (on the writer when the store has one connection): right here
    /// when one is free and `op` needs no lock it cannot have at once, else off the reactor,
    /// waiting for the next reader in turn and for the lock. `op` may run twice: it must only
    /// read, or make a change that is the same made twice.
    fn read<T>(&self, mut op: impl FnMut(&mut Connection) -> Result<T>) -> Result<T> {
        let readers = match &self.connections[..] {
            [writer] => std::slice::from_ref(writer),
            [_, readers @ ..] => readers,
            [] => unreachable!("a store opens at least its writer"),
        };
        let first = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        if multi_threaded()
            && let Some(mut reader) =
                (0..readers.len()).find_map(|offset| readers[(first + offset) % readers.len()].try_lock().ok())
        {
            match without_waiting(|| op(&mut reader)) {
                Err(err) if err.kind() == ErrorKind::Busy => {}
                done => return done,
            }
        }
        off_reactor(|| op(&mut locked(&readers[first])))
    }
}

fn commit<T>(tx: Transaction<'_>, op: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
    let value = op(&tx)?;
    tx.commit()?;
    Ok(value)
}

fn locked(connection: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    connection.lock().expect("no store operation panics holding a connection")
}

fn multi_threaded() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// Runs blocking SQLite work where it cannot stall the runtime's other tasks: under
/// `block_in_place` on a multi-threaded runtime, inline on a current-thread one.
fn off_reactor<T>(work: impl FnOnce() -> T) -> T {
    if multi_threaded() { tokio::task::block_in_place(work) } else { work() }
}

thread_local! {
    /// Whether [`wait_for_lock`] may wait on this thread; see [`without_waiting`].
    static MAY_WAIT: Cell<bool> = const { Cell::new(true) };
}

/// Runs `attempt` with SQLite answering "busy" at once, rather than waiting, when a lock it
/// needs is held.
fn without_waiting<T>(attempt: impl FnOnce() -> T) -> T {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            MAY_WAIT.set(true);
        }
    }
    MAY_WAIT.set(false);
    let _restore = Restore;
    attempt()
}

fn configure(conn: &Connection, config: &DatabaseConfig) -> Result<()> {
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::new(
            ErrorKind::Other,
            format!("SQLite refused WAL mode (got {mode}); put the database on a local filesystem"),
        ));
    }
    conn.pragma_update(None, "synchronous", config.synchronous.pragma_value())?;
    conn.pragma_update(None, "foreign_keys", true)?;
    // A cancelled job cancels the jobs waiting for it from a trigger (schema version 12),
    // whose update must fire the same trigger for their own waiting jobs.
    conn.pragma_update(None, "recursive_triggers", true)?;
    // Checkpoint every ~16 MiB of WAL rather than SQLite's 4 MiB: a checkpoint costs two
    // fsyncs and rewrites the hot pages, and busy workers trigger them constantly.
    conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
    // Statement journals (what SQLite keeps to undo one statement of a transaction, e.g. an
    // insert that meets a unique key) in memory, not in a temporary file created and
    // deleted for each such statement: that cost an enqueue of jobs with unique keys twice
    // the time of one without. They hold at most the pages one statement changes.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Without this SQLite re-prepares a statement whenever a value bound into a spot the
    // planner looked at changes, such as the claim's `LIMIT`: a tenth of a busy worker's CPU
    // went to parsing the same SQL again.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Keep the WAL file when the last connection closes (it is still checkpointed): deleting
    // it there and creating it again in the next process cost a short-lived `jobhost work
    // --once` an unlink, a create and a directory fsync. Any size limit makes SQLite empty
    // the kept file at that close, so the next process need not re-read it; the limit itself
    // is above the autocheckpoint size, so a busy WAL is not truncated at every checkpoint.
    conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
    let mut persist: std::ffi::c_int = 1;
    // SAFETY: a valid handle of this open connection, the "main" schema name as a C string,
    // and the int that SQLITE_FCNTL_PERSIST_WAL reads and writes.
    let code = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&raw mut persist).cast(),
        )
    };
    if code != rusqlite::ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None).into());
    }
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// See [`Fingerprint::verify`]: the file at the path must still be the one opened.
pub fn verify_fingerprint(fingerprint: &Fingerprint) -> Result<()> {
    let Some((path, file)) = &fingerprint.file else {
        return Ok(());
    };
    let detail = match std::fs::metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == *file => return Ok(()),
        Ok(_) => "another file now has its name",
        Err(_) => "the file is gone",
    };
    Err(StoreError::new(ErrorKind::Replaced, detail).at(&path.display().to_string()))
}

/// The time an operation runs at: the one given, else this machine's clock.
fn resolve_now(now: Now) -> Millis {
    now.unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis))
}

/// How long [`wait_for_lock`] keeps trying; one setting per process (`database.busy_timeout`),
/// kept in a static because SQLite's busy handler is a plain function.
static BUSY_TIMEOUT_MS: AtomicU64 = AtomicU64::new(30_000);

/// SQLite's own busy handler sleeps whole milliseconds (1, 2, 5, 10 …), while our write
/// transactions hold the lock for tens of microseconds, so two busy workers spent most of
/// their time asleep waiting for each other. This one first yields the CPU a few times (on a
/// busy machine the holder is often waiting for it), then sleeps 10 µs, doubling up to 1 ms,
/// until about `database.busy_timeout` has passed; then SQLite reports the database busy.
fn wait_for_lock(attempt: i32) -> bool {
    if !MAY_WAIT.get() {
        return false;
    }
    const YIELDS: i32 = 4;
    const DOUBLINGS: i32 = 7; // 10 µs · 2^7 ≈ 1.3 ms: from then on every wait is 1 ms.
    let timeout_ms = BUSY_TIMEOUT_MS.load(Ordering::Relaxed);
    let waits = attempt - YIELDS - DOUBLINGS;
    if waits > 0 && waits as u64 > timeout_ms {
        return false;
    }
    if attempt < YIELDS {
        std::thread::yield_now();
        return true;
    }
    let wait_us = (10u64 << (attempt - YIELDS).clamp(0, DOUBLINGS)).min(1_000);
    std::thread::sleep(Duration::from_micros(wait_us));
    true
}

#[async_trait]
impl Driver for SqliteDriver {
    fn location(&self) -> &str {
        &self.location
    }

    fn fingerprint(&self) -> Fingerprint {
        self.fingerprint.clone()
    }

    async fn enqueue(
        &self,
        jobs: &mut (dyn Iterator<Item = Result<NewJob, Refusal>> + Send),
        now: Now,
    ) -> Result<EnqueueReport> {
        let now = resolve_now(now);
        self.write(|tx| jobs::enqueue(tx, jobs, now))
    }

    async fn turn(&self, settlements: &[Settlement<'_>], claim: Option<&ClaimRequest<'_>>, now: Now) -> Result<Turn> {
        let now = resolve_now(now);
        self.write(|tx| {
            let mut tally = super::activity::Tally::default();
            let settled = settlements
                .iter()
                .map(|settlement| jobs::settle(tx, settlement, now, &mut tally))
                .collect::<Result<Vec<_>>>()?;
            jobs::record(tx, &tally, now)?;
            let (claimed, held_back) = match claim {
                Some(claim) => jobs::claim(tx, claim, now)?,
                None => (Vec::new(), false),
            };
            Ok(Turn { settled, claimed, held_back })
        })
    }

    async fn jobs(&self, ids: &[&str]) -> Result<Vec<JobDetail>> {
        self.read(|conn| jobs::jobs(conn, ids))
    }

    async fn parent_results(&self, children: &[i64]) -> Result<Vec<ParentResult>> {
        self.read(|conn| jobs::parent_results(conn, children))
    }

    async fn attempts(&self, id: &str, page: &AttemptPage) -> Result<Option<Vec<AttemptRecord>>> {
        self.read(|conn| jobs::attempts(conn, id, page))
    }

    async fn list_jobs(&self, filter: &JobFilter<'_>) -> Result<Vec<JobSummary>> {
        self.read(|conn| jobs::list(conn, filter))
    }

    async fn retry_job(&self, id: &str, now: Now) -> Result<IdAnswer> {
        self.write(|tx| jobs::retry(tx, id, resolve_now(now)))
    }

    async fn job_statuses(&self, ids: &[&str]) -> Result<Vec<(String, JobStatus)>> {
        self.read(|conn| jobs::statuses(conn, ids))
    }

    async fn claims_held_by(&self, worker_id: &str) -> Result<Vec<ClaimedJob>> {
        self.read(|conn| jobs::claims_held_by(conn, worker_id))
    }

    async fn retry_matching(&self, matching: &JobMatch<'_>, now: Now) -> Result<u64> {
        self.write_off_reactor(|tx| jobs::retry_matching(tx, matching, resolve_now(now)))
    }

    async fn cancel_job(&self, id: &str, now: Now) -> Result<IdAnswer> {
        self.write(|tx| jobs::cancel(tx, id, resolve_now(now)))
    }

    async fn cancel_matching(&self, matching: &JobMatch<'_>, now: Now) -> Result<u64> {
        self.write_off_reactor(|tx| jobs::cancel_matching(tx, matching, resolve_now(now)))
    }

    async fn delete_finished(&self, ages: &[(JobStatus, Duration)], limit: u32, now: Now) -> Result<u64> {
        let now = resolve_now(now);
        let cutoffs: Vec<(JobStatus, Millis)> =
            ages.iter().map(|&(status, age)| (status, now.saturating_sub(millis(age)))).collect();
        self.write_off_reactor(|tx| jobs::delete_finished(tx, &cutoffs, limit))
    }

    async fn activate_worker(&self, worker: &NewWorker, now: Now) -> Result<()> {
        self.write(|tx| workers::activate(tx, worker, resolve_now(now)))
    }

    async fn heartbeat(&self, worker_id: &str, lease: Duration, now: Now) -> Result<bool> {
        self.write(|tx| workers::heartbeat(tx, worker_id, lease, resolve_now(now)))
    }

    async fn deregister_worker(&self, worker_id: &str, now: Now) -> Result<()> {
        self.write(|tx| workers::deregister(tx, worker_id, resolve_now(now)))
    }

    async fn mark_lost_workers(
        &self,
        pool: Option<&str>,
        stale_after: Duration,
        start_grace: Duration,
        now: Now,
    ) -> Result<Vec<String>> {
        let now = resolve_now(now);
        // Reaping runs on every checker's interval: a steady moment to fold old activity
        // even when nobody reads it.
        self.writing(|conn| workers::fold_activity(conn, now))?;
        self.write(|tx| workers::mark_lost(tx, pool, stale_after, start_grace, now))
    }

    async fn abandoned_jobs(&self, pool: Option<&str>, now: Now) -> Result<Vec<Abandoned>> {
        self.read(|conn| jobs::abandoned(conn, pool, resolve_now(now)))
    }

    async fn plan_workers(&self, request: &PlanRequest<'_>, now: Now) -> Result<WorkerPlan> {
        self.write(|tx| workers::plan(tx, request, resolve_now(now)))
    }

    async fn status(&self, pool: Option<&str>, now: Now) -> Result<StatusSnapshot> {
        self.read(|conn| workers::status(conn, pool, resolve_now(now)))
    }

    async fn pool_names(&self) -> Result<Vec<String>> {
        self.read(|conn| workers::pool_names(conn))
    }

    async fn pause_pool(&self, pool: &str, reason: Option<&str>, now: Now) -> Result<PausedPool> {
        self.write(|tx| jobs::pause(tx, pool, reason, resolve_now(now)))
    }

    async fn resume_pool(&self, pool: &str) -> Result<bool> {
        self.write(|tx| jobs::resume(tx, pool))
    }

    async fn paused_pools(&self) -> Result<Vec<PausedPool>> {
        self.read(|conn| jobs::paused_pools(conn))
    }

    async fn flow_counts(&self, limits: &[jobhost_core::flow::FlowLimit], now: Now) -> Result<Vec<FlowCount>> {
        let now = resolve_now(now);
        self.read(|conn| jobs::flow_counts(conn, limits, now))
    }

    async fn workers(&self, filter: &WorkerFilter<'_>) -> Result<Vec<WorkerInfo>> {
        self.read(|conn| workers::list(conn, filter))
    }

    async fn activity(&self, now: Now) -> Result<(Millis, Vec<ActivityRow>)> {
        let now = resolve_now(now);
        // The fold takes the write lock only about once a minute, when there is something to
        // fold; on a reader, so the read itself never queues behind the writer.
        self.read(|conn| {
            workers::fold_activity(conn, now)?;
            Ok((now, workers::activity(conn)?))
        })
    }

    async fn schedules(&self, runs: u32) -> Result<Vec<ScheduleState>> {
        self.read(|conn| schedules::list(conn, runs))
    }

    async fn start_schedule(&self, name: &str, at: Millis) -> Result<bool> {
        self.write(|tx| schedules::start(tx, name, at))
    }

    async fn advance_schedule(&self, name: &str, due_at: Millis, job: Option<&NewJob>, now: Now) -> Result<bool> {
        self.write(|tx| schedules::advance(tx, name, due_at, job, resolve_now(now)))
    }

    async fn export(&self, after: i64, limit: u32) -> Result<Vec<ExportedJob>> {
        self.read(|conn| jobs::export(conn, after, limit))
    }

    async fn import(&self, exported: &[ExportedJob]) -> Result<()> {
        self.write_off_reactor(|tx| jobs::import(tx, exported))
    }

    async fn is_empty(&self) -> Result<bool> {
        self.read(|conn| {
            let empty = conn.query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM jobs) AND NOT EXISTS (SELECT 1 FROM workers)",
                [],
                |row| row.get(0),
            )?;
            Ok(empty)
        })
    }

    async fn ready_in(&self, pool: &str, now: Now) -> Result<Option<Millis>> {
        let now = resolve_now(now);
        self.read(|conn| {
            let earliest: Option<Millis> = conn
                .prepare_cached(
                    "SELECT min(run_at) FROM jobs WHERE status = 'pending' AND pool = ?1
                        AND NOT EXISTS (SELECT 1 FROM paused_pools WHERE paused_pools.pool = ?1)",
                )?
                .query_row([pool], |row| row.get(0))?;
            Ok(earliest.map(|run_at| run_at.saturating_sub(now)))
        })
    }

    async fn wakeups(&self, _pool: &str) -> Result<Wakeups> {
        wake::watch(Path::new(&self.location))
    }

    async fn ping(&self) -> Result<()> {
        // A file deleted or replaced under an open connection still answers reads: the pool
        // is only usable if its name still leads to the file this process has open.
        verify_fingerprint(&self.fingerprint())?;
        self.read(|conn| Ok(conn.query_row("SELECT EXISTS (SELECT 1 FROM jobs)", [], |_| Ok(()))?))
    }

    #[cfg(test)]
    async fn drifted_counts(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let drift = conn
                .prepare(
                    "SELECT coalesce(c.pool, k.pool), coalesce(c.status, k.status), coalesce(c.n, 0), coalesce(k.jobs, 0)
                       FROM (SELECT pool, status, count(*) AS n FROM jobs GROUP BY pool, status) c
                       FULL JOIN (SELECT pool, status, jobs FROM job_counts WHERE jobs != 0) k
                         ON k.pool = c.pool AND k.status = c.status
                      WHERE coalesce(c.n, 0) != coalesce(k.jobs, 0)",
                )?
                .query_map([], |row| {
                    Ok(format!(
                        "{}/{}: counted {}, kept {}",
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, i64>(3)?
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(drift)
        })
    }

    #[cfg(test)]
    async fn execute_for_test(&self, sql: &str) -> Result<()> {
        self.writing(|conn| Ok(conn.execute_batch(sql)?))
    }

    #[cfg(test)]
    async fn counts_for_test(&self, sql: &str) -> Result<Vec<i64>> {
        self.read(|conn| {
            let counts = conn.prepare(sql)?.query_map([], |row| row.get(0))?.collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(counts)
        })
    }
}

impl std::fmt::Debug for SqliteDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteDriver({})", self.location)
    }
}
