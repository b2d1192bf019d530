//! The schema and its migrations.
//!
//! A jobhost database is marked by `PRAGMA application_id`, so a file from some other
//! program is refused instead of being "upgraded". `PRAGMA user_version` counts the
//! migrations applied; opening a file runs the missing ones in one transaction, and a
//! file from a newer jobhost (a version this build does not know) is refused untouched.

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{ErrorKind, Result, StoreError};

/// "JOBH": tells a jobhost database from any other SQLite file.
const APPLICATION_ID: i32 = 0x4A4F_4248;

/// Migration `i` takes the schema from version `i` to `i + 1`. Append only: a released
/// migration is never edited, because files out there already ran it.
const MIGRATIONS: &[&str] = &[
    // 1: the job pool and its attempt history.
    r#"
    CREATE TABLE jobs (
        seq              INTEGER PRIMARY KEY,
        id               TEXT    NOT NULL UNIQUE,
        pool             TEXT    NOT NULL,
        processor        TEXT    NOT NULL,
        payload          TEXT    NOT NULL,
        status           TEXT    NOT NULL
                         CHECK (status IN ('pending', 'claimed', 'completed', 'poisoned', 'cancelled')),
        priority         INTEGER NOT NULL DEFAULT 0,
        run_at           INTEGER NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        max_attempts     INTEGER NOT NULL CHECK (max_attempts >= 1),
        worker_id        TEXT,
        claim_token      INTEGER,
        lease_expires_at INTEGER,
        result           TEXT,
        last_error       TEXT,
        created_at       INTEGER NOT NULL,
        updated_at       INTEGER NOT NULL,
        finished_at      INTEGER
    );
    -- The claim query walks this index in order and stops at the first ready row.
    CREATE INDEX jobs_ready ON jobs (pool, priority DESC, run_at, seq) WHERE status = 'pending';
    CREATE INDEX jobs_claimed ON jobs (worker_id, lease_expires_at) WHERE status = 'claimed';
    -- No index on status: each one is several more pages written by every claim and every
    -- completion. `status` reads job_counts instead, kept exact by the triggers below in the
    -- same transaction as the change; purge and filtered listings scan.

    CREATE TABLE attempts (
        job_seq     INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
        attempt     INTEGER NOT NULL,
        worker_id   TEXT    NOT NULL,
        started_at  INTEGER NOT NULL,
        finished_at INTEGER,
        outcome     TEXT CHECK (outcome IN ('ok', 'exit', 'trap', 'fuel_exhausted', 'timeout',
                                            'memory', 'output_too_large', 'load_error', 'worker_lost')),
        message     TEXT,
        stderr      TEXT,
        fuel_used   INTEGER,
        duration_ms INTEGER,
        PRIMARY KEY (job_seq, attempt)
    ) WITHOUT ROWID;

    CREATE TABLE job_counts (
        pool   TEXT    NOT NULL,
        status TEXT    NOT NULL,
        jobs   INTEGER NOT NULL,
        PRIMARY KEY (pool, status)
    ) WITHOUT ROWID;
    CREATE TRIGGER job_counts_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_counts (pool, status, jobs) VALUES (NEW.pool, NEW.status, 1)
            ON CONFLICT (pool, status) DO UPDATE SET jobs = jobs + 1;
    END;
    CREATE TRIGGER job_counts_update AFTER UPDATE OF status ON jobs
        WHEN OLD.status IS NOT NEW.status
    BEGIN
        UPDATE job_counts SET jobs = jobs - 1 WHERE pool = OLD.pool AND status = OLD.status;
        INSERT INTO job_counts (pool, status, jobs) VALUES (NEW.pool, NEW.status, 1)
            ON CONFLICT (pool, status) DO UPDATE SET jobs = jobs + 1;
    END;
    CREATE TRIGGER job_counts_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_counts SET jobs = jobs - 1 WHERE pool = OLD.pool AND status = OLD.status;
    END;
    "#,
    // 2: workers, added with the worker lifecycle.
    r#"
    CREATE TABLE workers (
        id                TEXT    PRIMARY KEY,
        pool              TEXT    NOT NULL,
        status            TEXT    NOT NULL
                          CHECK (status IN ('starting', 'active', 'terminated', 'lost')),
        host              TEXT,
        pid               INTEGER,
        started_at        INTEGER NOT NULL,
        last_heartbeat_at INTEGER NOT NULL,
        stopped_at        INTEGER
    );
    CREATE INDEX workers_by_status ON workers (pool, status);
    "#,
    // 3: the pending jobs by time, so `status` need not walk every ready job: those not
    // ready yet are a short range at its end, and the oldest is its first entry.
    r#"
    CREATE INDEX jobs_pending_by_time ON jobs (run_at, pool) WHERE status = 'pending';
    "#,
    // 4: what the pool has done, counted per minute for metrics and the dashboard (see
    // store::activity), added to by the transactions that queue jobs and settle attempts.
    r#"
    CREATE TABLE activity (
        minute          INTEGER NOT NULL,
        pool            TEXT    NOT NULL,
        processor       TEXT    NOT NULL,
        event           TEXT    NOT NULL,
        duration_bucket INTEGER NOT NULL,
        fuel_bucket     INTEGER NOT NULL,
        events          INTEGER NOT NULL,
        duration_ms     INTEGER NOT NULL,
        fuel            INTEGER NOT NULL,
        PRIMARY KEY (minute, pool, processor, event, duration_bucket, fuel_bucket)
    ) WITHOUT ROWID;
    "#,
    // 5: which code each attempt ran, the hex SHA-256 of the processor's wasm bytes; attempts
    // recorded before, and those whose processor never loaded, have none.
    r#"
    ALTER TABLE attempts ADD COLUMN processor_sha256 TEXT;
    "#,
    // 6: schedules (see docs/schedules.md). A schedule's tick is handled by the transaction
    // that moves `ticked_through` up to it, so it is handled once; that transaction queues
    // the tick's job and records it as a run, whose key refuses a second job for the tick.
    r#"
    CREATE TABLE schedules (
        name           TEXT    PRIMARY KEY,
        ticked_through INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE schedule_runs (
        schedule    TEXT    NOT NULL REFERENCES schedules (name),
        due_at      INTEGER NOT NULL,
        job_id      TEXT    NOT NULL,
        enqueued_at INTEGER NOT NULL,
        PRIMARY KEY (schedule, due_at)
    ) WITHOUT ROWID;
"#,
    // 7: the finished jobs by when they finished, so retention finds the expired ones in a
    // short index range instead of scanning every job each batch. Written once per job, as
    // it finishes; claims never touch it.
    r#"
    CREATE INDEX jobs_finished ON jobs (status, finished_at) WHERE status IN ('completed', 'poisoned', 'cancelled');
    "#,
    // 8: which workers wait for jobs (`work --follow`), so `check --interval` keeps
    // `checker.min_workers` of them alive on its host.
    r#"
    ALTER TABLE workers ADD COLUMN following INTEGER NOT NULL DEFAULT 0 CHECK (following IN (0, 1));
    "#,
    // 9: unique jobs (see model::Unique). The index holds only the jobs that hold a key, so
    // jobs without one write no entry; a finished job gives its key up by setting it NULL.
    r#"
    ALTER TABLE jobs ADD COLUMN unique_key TEXT;
    CREATE UNIQUE INDEX jobs_unique_key ON jobs (pool, unique_key) WHERE unique_key IS NOT NULL;
    "#,
    // 10: paused pools (`jobhost pools pause`): a pool with a row here has none of its jobs
    // claimed. A row per paused pool, keyed by it, so a claim checks its pool with one
    // primary-key lookup; a pool need not hold jobs to be paused.
    r#"
    CREATE TABLE paused_pools (
        pool      TEXT    PRIMARY KEY,
        paused_at INTEGER NOT NULL,
        reason    TEXT
    ) WITHOUT ROWID;
    "#,
    // 11: flow limits' starts (`processors.overrides.NAME.flow.rate`): one row per start of
    // a rate-limited processor's job, counted over the rate's period and deleted after it.
    r#"
    CREATE TABLE flow_starts (
        processor  TEXT    NOT NULL,
        key        TEXT    NOT NULL,
        started_at INTEGER NOT NULL
    );
    CREATE INDEX flow_starts_by_time ON flow_starts (processor, started_at);
    -- What a limit counts as running: the claimed jobs of one processor, found without
    -- reading the others'.
    CREATE INDEX jobs_claimed_by_processor ON jobs (processor) WHERE status = 'claimed';
    "#,
    // 12: jobs that wait for other jobs (`seed --after`). A waiting job is pending with its
    // `run_at` at the end of time and counts its parents not yet completed in
    // `parents_left`; a parent flagged `has_dependents` settles its children from these
    // triggers, in the statement that finishes it: its completion counts down each child and
    // makes the last one waiting ready, and its poisoning or cancelling cancels the children
    // still pending, naming it, which cancels theirs in turn (the connection sets
    // `recursive_triggers`). Jobs without children pay one test of the flag.
    r#"
    ALTER TABLE jobs ADD COLUMN parents_left INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN has_dependents INTEGER NOT NULL DEFAULT 0 CHECK (has_dependents IN (0, 1));
    CREATE TABLE job_parents (
        parent_seq INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
        child_seq  INTEGER NOT NULL REFERENCES jobs (seq) ON DELETE CASCADE,
        PRIMARY KEY (parent_seq, child_seq)
    ) WITHOUT ROWID;
    CREATE INDEX job_parents_by_child ON job_parents (child_seq, parent_seq);
    CREATE TRIGGER release_dependents AFTER UPDATE OF status ON jobs
        WHEN NEW.has_dependents AND NEW.status = 'completed' AND OLD.status IS NOT 'completed'
    BEGIN
        UPDATE jobs
           SET parents_left = parents_left - 1,
               run_at = CASE WHEN parents_left = 1 AND status = 'pending' THEN NEW.updated_at ELSE run_at END,
               updated_at = NEW.updated_at
         WHERE seq IN (SELECT child_seq FROM job_parents WHERE parent_seq = NEW.seq);
    END;
    CREATE TRIGGER cancel_dependents AFTER UPDATE OF status ON jobs
        WHEN NEW.has_dependents AND NEW.status IN ('poisoned', 'cancelled') AND OLD.status IS NOT NEW.status
    BEGIN
        UPDATE jobs
           SET status = 'cancelled', finished_at = NEW.updated_at, updated_at = NEW.updated_at,
               last_error = substr('job ' || NEW.id || ', which it waits for, was ' || NEW.status
                                   || coalesce(': ' || NEW.last_error, ''), 1, 2000)
         WHERE seq IN (SELECT child_seq FROM job_parents WHERE parent_seq = NEW.seq) AND status = 'pending';
    END;
    "#,
];

pub const CURRENT_VERSION: i32 = MIGRATIONS.len() as i32;

/// Brings the file to [`CURRENT_VERSION`], or refuses it.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    // The common case, an up-to-date file, is settled by two reads without taking the write
    // lock, which every worker start would otherwise queue for.
    let application_id: i32 = conn.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if application_id == APPLICATION_ID && version == CURRENT_VERSION {
        return Ok(());
    }
    migrate_to(conn, CURRENT_VERSION)
}

pub fn migrate_to(conn: &mut Connection, target: i32) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let application_id: i32 = tx.pragma_query_value(None, "application_id", |row| row.get(0))?;
    let version: i32 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if application_id != APPLICATION_ID {
        let tables: i64 = tx.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
        if application_id != 0 || tables > 0 {
            return Err(StoreError::new(ErrorKind::Foreign, ""));
        }
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    }
    if version > CURRENT_VERSION {
        return Err(StoreError::new(
            ErrorKind::NewerSchema,
            format!(
                "it has schema version {version}, but this jobhost only knows versions up to {CURRENT_VERSION}: \
                 it was written by a newer jobhost, so use that version (nothing was changed)"
            ),
        ));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().take(target as usize).skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i32 + 1)?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::Connection;

    use super::*;
    use crate::{Access, JobStatus, NewJob, Ready, RetryPolicy, Store};
    use jobhost_core::config::DatabaseConfig;
    use jobhost_core::outcome::OutcomeKind;

    fn new_job() -> NewJob {
        NewJob {
            id: NewJob::new_id(),
            pool: "default".into(),
            processor: "echo".into(),
            payload: "{}".into(),
            priority: 0,
            max_attempts: 3,
            ready: Ready::After(Duration::ZERO),
            unique: None,
            after: Vec::new(),
        }
    }

    #[tokio::test]
    async fn an_older_file_is_upgraded_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut old = Connection::open(&path).unwrap();
        migrate_to(&mut old, 1).unwrap();
        old.execute(
            "INSERT INTO jobs (id, pool, processor, payload, status, run_at, max_attempts, created_at, updated_at)
             VALUES ('j1', 'default', 'echo', '{}', 'pending', 0, 3, 0, 0)",
            [],
        )
        .unwrap();
        drop(old);

        let config = DatabaseConfig { path: path.display().to_string(), ..DatabaseConfig::default() };
        let store = Store::open(&config, Access::Existing).await.unwrap();
        let version: i32 =
            Connection::open(&path).unwrap().pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
        assert_eq!(version, CURRENT_VERSION);
        assert!(store.job("j1").await.unwrap().is_some(), "the job written before the upgrade is still there");
        store.enqueue_all(&[new_job()]).await.unwrap();
        assert_eq!(store.status(None).await.unwrap().jobs.pending, 2);
    }

    #[tokio::test]
    async fn a_newer_file_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", CURRENT_VERSION + 1).unwrap();
        drop(conn);

        let config = DatabaseConfig { path: path.display().to_string(), ..DatabaseConfig::default() };
        let message = format!("{:#}", Store::open(&config, Access::Existing).await.err().unwrap());
        assert!(message.contains("newer jobhost"), "{message}");
        let conn = Connection::open(&path).unwrap();
        let version: i32 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).unwrap();
        assert_eq!(version, CURRENT_VERSION + 1);
    }

    #[tokio::test]
    async fn a_foreign_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE notes (body TEXT)").unwrap();

        let config = DatabaseConfig { path: path.display().to_string(), ..DatabaseConfig::default() };
        let message = format!("{:#}", Store::open(&config, Access::Existing).await.err().unwrap());
        assert!(message.contains("was not made by jobhost"), "{message}");
    }

    #[tokio::test]
    async fn a_file_that_is_not_sqlite_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();

        let config = DatabaseConfig { path: path.display().to_string(), ..DatabaseConfig::default() };
        let message = format!("{:#}", Store::open(&config, Access::Existing).await.err().unwrap());
        assert!(message.contains("is not a SQLite database"), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192], "the file is left as it was");
    }

    #[test]
    fn the_attempt_outcome_check_lists_exactly_the_outcome_kinds() {
        let schema = MIGRATIONS.concat();
        let check = schema.split("outcome     TEXT CHECK (outcome IN (").nth(1).unwrap().split("))").next().unwrap();
        let listed: Vec<&str> = check.split(',').map(|kind| kind.trim().trim_matches('\'')).collect();
        let kinds: Vec<&str> = jobhost_core::outcome::OutcomeKind::ALL.iter().map(|kind| kind.as_str()).collect();
        assert_eq!(listed, kinds);
    }

    #[tokio::test]
    async fn a_claimed_job_survives_the_upgrade_and_is_recovered_from_its_unregistered_worker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut old = Connection::open(&path).unwrap();
        migrate_to(&mut old, 1).unwrap();
        // A lease far in the future: only the missing worker can make the reaper take the job.
        old.execute_batch(
            "INSERT INTO jobs (id, pool, processor, payload, status, run_at, attempts, max_attempts, worker_id,
                               claim_token, lease_expires_at, created_at, updated_at)
             VALUES ('j1', 'default', 'echo', '{}', 'claimed', 0, 1, 3, 'old-worker', 7, 9000000000000, 0, 0);
             INSERT INTO attempts (job_seq, attempt, worker_id, started_at) VALUES (1, 1, 'old-worker', 0);",
        )
        .unwrap();
        drop(old);

        let store = Store::open(
            &DatabaseConfig { path: path.display().to_string(), ..DatabaseConfig::default() },
            Access::Existing,
        )
        .await
        .unwrap();
        let job = store.job("j1").await.unwrap().unwrap();
        assert_eq!(job.job.status, JobStatus::Claimed);
        assert_eq!(job.attempt_history[0].outcome, None, "the attempt is still open");

        let never = Duration::from_secs(1 << 30);
        let no_backoff = RetryPolicy { initial: Duration::ZERO, max: Duration::ZERO, jitter: 0.0 };
        assert_eq!(store.reap(None, never, never, &no_backoff).await.unwrap().recovery.released, 1);
        let job = store.job("j1").await.unwrap().unwrap();
        assert_eq!(job.job.status, JobStatus::Pending);
        let attempt = &job.attempt_history[0];
        assert_eq!(attempt.outcome, Some(OutcomeKind::WorkerLost));
        assert_eq!(attempt.message.as_deref(), Some("worker old-worker is not registered"));
        assert_eq!(attempt.processor_sha256, None, "an attempt from before the upgrade names no code");
    }
}
