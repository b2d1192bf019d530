//! The durable job pool: one SQLite file shared by every jobhost process on the machine.
//!
//! This module owns the schema and every statement that touches it; nothing else in
//! jobhost writes SQL. The API is deliberately narrow (enqueue, claim, complete, fail,
//! release, heartbeat, inspect) so that another backend could stand behind it.
//!
//! Rules every operation follows:
//! - Every state change of a job is one statement or one `BEGIN IMMEDIATE` transaction,
//!   fenced on the state it expects (`status`, and for a claimed job its worker and claim
//!   token). A late or duplicate call changes nothing and says so.
//! - Write transactions take the write lock up front (`IMMEDIATE`), so two processes never
//!   deadlock upgrading read locks; waiting for the lock is bounded by `busy_timeout`.
//! - Timestamps are integers: milliseconds since the Unix epoch, read from [`Clock`].
//!
//! Durability: the database runs in WAL mode. With `synchronous = NORMAL` (the default) a
//! committed transaction survives a crash of any jobhost process, but the most recent
//! commits can be lost if the machine itself loses power; `FULL` fsyncs every commit and
//! survives that too, at the cost of an fsync per claim and per completion.

mod jobs;
mod retry;
mod schema;
mod workers;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::config::DatabaseConfig;

pub use jobs::{AttemptReport, Batch, ClaimedJob, FailOutcome, Fence, IdAnswer, JobFilter, JobStatus, NewJob};
pub use retry::RetryPolicy;
pub use workers::NewWorker;

/// Milliseconds since the Unix epoch; the unit of every timestamp in the store.
pub type Millis = i64;

/// Where the store reads the time. Tests swap in a hand-driven clock to check backoff
/// and lease expiry without sleeping.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Millis + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(|| {
            let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
            since_epoch.as_millis() as Millis
        }))
    }

    #[cfg(test)]
    pub fn manual(now: Arc<std::sync::atomic::AtomicI64>) -> Clock {
        Clock(Arc::new(move || now.load(Ordering::SeqCst)))
    }

    pub fn now(&self) -> Millis {
        (self.0)()
    }
}

pub fn millis(duration: Duration) -> Millis {
    duration.as_millis().try_into().unwrap_or(Millis::MAX)
}

/// One connection to the pool.
pub struct Store {
    conn: Connection,
    clock: Clock,
}

impl Store {
    /// Opens (creating if needed) the database at `config.path`, upgrading an older jobhost
    /// schema and refusing files that are not jobhost databases or come from a newer jobhost.
    pub fn open(config: &DatabaseConfig) -> Result<Store> {
        Store::open_with_clock(config, Clock::system())
    }

    pub fn open_with_clock(config: &DatabaseConfig, clock: Clock) -> Result<Store> {
        let path = &config.path;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the folder {} for the database", parent.display()))?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open database {}", path.display()))?;
        let mut store = Store { conn, clock };
        BUSY_TIMEOUT_MS.store(millis(config.busy_timeout.0).max(0) as u64, Ordering::Relaxed);
        store.conn.busy_handler(Some(wait_for_lock))?;
        // Identity and version are checked before any pragma that writes to the file, so a
        // foreign or newer file is refused exactly as it was.
        schema::migrate(&mut store.conn).map_err(|err| describe_open_error(path, err))?;
        store.configure(config).map_err(|err| describe_open_error(path, err))?;
        Ok(store)
    }

    fn configure(&self, config: &DatabaseConfig) -> Result<()> {
        let mode: String = self.conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        anyhow::ensure!(
            mode.eq_ignore_ascii_case("wal"),
            "SQLite refused WAL mode (got {mode}); put the database on a local filesystem"
        );
        self.conn.pragma_update(None, "synchronous", config.synchronous.pragma_value())?;
        self.conn.pragma_update(None, "foreign_keys", true)?;
        // Checkpoint every ~16 MiB of WAL rather than SQLite's 4 MiB: a checkpoint costs two
        // fsyncs and rewrites the hot pages, and busy workers trigger them constantly.
        self.conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
        // Without this SQLite re-prepares a statement whenever a value bound into a spot the
        // planner looked at changes, such as the claim's `LIMIT`: a tenth of a busy
        // worker's CPU went to parsing the same SQL again.
        self.conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
        // Keep the WAL file when the last connection closes (it is still checkpointed):
        // deleting it there and creating it again in the next process cost a short-lived
        // `jobhost work --once` an unlink, a create and a directory fsync. Any size limit
        // makes SQLite empty the kept file at that close, so the next process need not
        // re-read it; the limit itself is above the autocheckpoint size, so a busy WAL is not
        // truncated and regrown at every checkpoint.
        self.conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
        let mut persist: std::ffi::c_int = 1;
        // SAFETY: a valid handle of this open connection, the "main" schema name as a C
        // string, and the int that SQLITE_FCNTL_PERSIST_WAL reads and writes.
        let code = unsafe {
            rusqlite::ffi::sqlite3_file_control(
                self.conn.handle(),
                c"main".as_ptr(),
                rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
                (&raw mut persist).cast(),
            )
        };
        anyhow::ensure!(code == rusqlite::ffi::SQLITE_OK, "SQLite refused to keep its WAL file (code {code})");
        self.conn.set_prepared_statement_cache_capacity(64);
        Ok(())
    }

    pub fn now(&self) -> Millis {
        self.clock.now()
    }
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

/// SQLite reports a non-database file only when it first reads it; say which file and what to do.
fn describe_open_error(path: &Path, err: anyhow::Error) -> anyhow::Error {
    let not_a_database = err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<rusqlite::Error>(),
            Some(rusqlite::Error::SqliteFailure(e, _))
                if matches!(e.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt)
        )
    });
    if not_a_database {
        anyhow::anyhow!(
            "{} is not a SQLite database, or it is corrupt: point --db (or database.path) at a \
             jobhost database or at a new file",
            path.display()
        )
    } else {
        err.context(format!("cannot use database {}", path.display()))
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A store on a temporary file with a clock the test moves by hand.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::config::DatabaseConfig;

    /// Single operations, each in a batch of its own, for tests that take one step at a time.
    impl Store {
        pub fn claim(&mut self, pool: &str, worker_id: &str, lease: Duration, limit: u32) -> Result<Vec<ClaimedJob>> {
            let mut batch = self.batch()?;
            let claimed = batch.claim(pool, worker_id, lease, limit)?;
            batch.commit()?;
            Ok(claimed)
        }

        pub fn complete(&mut self, job: &ClaimedJob, result: &str, report: &AttemptReport<'_>) -> Result<Fence> {
            let mut batch = self.batch()?;
            let fence = batch.complete(job, result, report)?;
            batch.commit()?;
            Ok(fence)
        }

        pub fn fail(
            &mut self,
            job: &ClaimedJob,
            report: &AttemptReport<'_>,
            retry: &RetryPolicy,
        ) -> Result<FailOutcome> {
            let mut batch = self.batch()?;
            let outcome = batch.fail(job, report, retry)?;
            batch.commit()?;
            Ok(outcome)
        }
    }

    pub struct TestStore {
        pub store: Store,
        pub now: Arc<AtomicI64>,
        _dir: tempfile::TempDir,
    }

    impl TestStore {
        pub fn new() -> TestStore {
            let dir = tempfile::tempdir().unwrap();
            let config = DatabaseConfig { path: dir.path().join("pool.db"), ..DatabaseConfig::default() };
            let now = Arc::new(AtomicI64::new(1_700_000_000_000));
            let store = Store::open_with_clock(&config, Clock::manual(now.clone())).unwrap();
            TestStore { store, now, _dir: dir }
        }

        pub fn advance(&self, millis: i64) {
            self.now.fetch_add(millis, Ordering::SeqCst);
        }

        /// Checks the trigger-kept `job_counts` against a count of the jobs themselves.
        pub fn assert_counts_exact(&self) {
            let rows = |sql: &str| -> Vec<(String, String, i64)> {
                let mut statement = self.store.conn.prepare(sql).unwrap();
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?))).unwrap();
                rows.collect::<rusqlite::Result<_>>().unwrap()
            };
            let counted = rows("SELECT pool, status, count(*) FROM jobs GROUP BY pool, status ORDER BY 1, 2");
            let kept = rows("SELECT pool, status, jobs FROM job_counts WHERE jobs != 0 ORDER BY 1, 2");
            assert_eq!(kept, counted, "job_counts drifted from the jobs table");
        }
    }
}
