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

mod error;
mod jobs;
mod retry;
mod schema;
mod workers;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::config::DatabaseConfig;

pub use error::{ErrorKind, Result, StoreError};
pub use jobs::{
    AttemptReport, Batch, ClaimedJob, Enqueue, FailOutcome, Fence, IdAnswer, JobFilter, JobStatus, NewJob,
    PayloadError, check_payload,
};
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
    fingerprint: Fingerprint,
}

/// Whether opening may create the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Create the database (and its folders) when it does not exist: commands that add jobs.
    CreateIfMissing,
    /// The database must exist: a typo in `--db` is an error, not a new empty pool.
    Existing,
}

/// Which file a store opened, so a long-running process can tell that its database was
/// deleted or replaced under it (a new file at the same path is a different pool).
#[derive(Debug, Clone)]
pub struct Fingerprint {
    path: PathBuf,
    file: (u64, u64),
}

impl Fingerprint {
    fn of(path: &Path) -> Result<Fingerprint> {
        let meta = std::fs::metadata(path)
            .map_err(|err| StoreError::new(ErrorKind::CannotOpen, err.to_string()).at(&path.display().to_string()))?;
        Ok(Fingerprint { path: path.to_path_buf(), file: (meta.dev(), meta.ino()) })
    }

    /// Fails with [`ErrorKind::Replaced`] when the path no longer names the file opened.
    pub fn verify(&self) -> Result<()> {
        let detail = match std::fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.file => return Ok(()),
            Ok(_) => "another file now has its name",
            Err(_) => "the file is gone",
        };
        Err(StoreError::new(ErrorKind::Replaced, format!("{detail}; stop and start again on the database you mean"))
            .at(&self.path.display().to_string()))
    }
}

impl Store {
    /// Opens the database at `config.path`, upgrading an older jobhost schema and refusing
    /// files that are not jobhost databases or come from a newer jobhost.
    pub fn open(config: &DatabaseConfig, access: Access) -> Result<Store> {
        Store::open_with_clock(config, access, Clock::system())
    }

    pub fn open_with_clock(config: &DatabaseConfig, access: Access, clock: Clock) -> Result<Store> {
        let path = &config.path;
        let location = path.display().to_string();
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        match access {
            Access::CreateIfMissing => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent).map_err(|err| {
                        StoreError::new(ErrorKind::CannotOpen, format!("cannot create its folder: {err}")).at(&location)
                    })?;
                }
                flags |= OpenFlags::SQLITE_OPEN_CREATE;
            }
            Access::Existing if !path.exists() => return Err(StoreError::new(ErrorKind::Missing, "").at(&location)),
            Access::Existing => {}
        }
        let conn = Connection::open_with_flags(path, flags).map_err(|err| StoreError::from(err).at(&location))?;
        let fingerprint = Fingerprint::of(path)?;
        let mut store = Store { conn, clock, fingerprint };
        BUSY_TIMEOUT_MS.store(millis(config.busy_timeout.0).max(0) as u64, Ordering::Relaxed);
        // Identity and version are checked before any pragma that writes to the file, so a
        // foreign or newer file is refused exactly as it was.
        let prepared = store
            .conn
            .busy_handler(Some(wait_for_lock))
            .map_err(StoreError::from)
            .and_then(|()| schema::migrate(&mut store.conn))
            .and_then(|()| store.configure(config));
        prepared.map_err(|err| err.at(&location))?;
        Ok(store)
    }

    fn configure(&self, config: &DatabaseConfig) -> Result<()> {
        let mode: String = self.conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::new(
                ErrorKind::Other,
                format!("SQLite refused WAL mode (got {mode}); put the database on a local filesystem"),
            ));
        }
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
        if code != rusqlite::ffi::SQLITE_OK {
            return Err(rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None).into());
        }
        self.conn.set_prepared_statement_cache_capacity(64);
        Ok(())
    }

    /// Which file this store opened; see [`Fingerprint::verify`].
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint.clone()
    }

    /// Runs `op` on the connection, naming this database in any error it returns.
    fn with_conn<T>(&mut self, op: impl FnOnce(&mut Connection, Millis) -> Result<T>) -> Result<T> {
        let now = self.now();
        op(&mut self.conn, now).map_err(|err| err.at(&self.fingerprint.path.display().to_string()))
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
            let store = Store::open_with_clock(&config, Access::CreateIfMissing, Clock::manual(now.clone())).unwrap();
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
