//! The PostgreSQL backend: one pool on a server that many machines share.
//!
//! Correct under READ COMMITTED, PostgreSQL's default, with no reliance on a single writer:
//! - every state change of a job is one statement, fenced in its `WHERE` on the state it
//!   expects (status, worker, claim token), so of two racing changes one finds nothing to
//!   change and says so;
//! - a worker's turn (its finished attempts and its next claims) is one statement too: one
//!   round trip, and claims lock their rows with `FOR UPDATE SKIP LOCKED`, so no job goes
//!   to two workers and a claimer skips, rather than waits for, rows another is taking;
//! - planning takes an advisory lock per pool, so concurrent checkers never over-spawn;
//! - counts are appended by triggers as per-statement deltas and folded by readers (see
//!   [`schema`]), so no row is updated by every writer.
//!
//! Time is the server's (`statement_timestamp()`), so machines whose clocks disagree still
//! agree on leases and staleness. Statements are prepared once per connection, which speaks
//! TLS as libpq's `sslmode` says ([`tls`]).

/// The operation's time in milliseconds: the one passed as `$1`, else the server's. A macro,
/// so statements built with `concat!` can use it too.
macro_rules! now_sql {
    () => {
        "coalesce($1::bigint, (extract(epoch FROM statement_timestamp()) * 1000)::bigint)"
    };
}

mod connection;
mod jobs;
mod schedules;
mod schema;
mod tls;
mod wake;
mod workers;

use std::time::Duration;

use async_trait::async_trait;
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::FromSql;

use jobhost_core::config::DatabaseConfig;

use super::Access;
use super::activity::ActivityRow;
use super::driver::{Abandoned, Driver, Now, Settlement};
use super::error::{ErrorKind, Result, StoreError};
use super::model::*;
use super::wake::Wakeups;

const NOW: &str = now_sql!();

/// An enqueue of at least this many jobs refreshes the planner's statistics of `jobs`.
const ANALYZE_AFTER: u64 = 10_000;

/// How long to wait for a server that does not answer before saying it cannot be reached.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct PostgresDriver {
    connections: connection::Connections,
    location: String,
    schema: String,
}

impl PostgresDriver {
    /// Connects with up to `connections` connections (see [`connection`]), and creates or
    /// migrates the schema as `access` allows.
    pub async fn open(config: &DatabaseConfig, access: Access, connections: usize) -> Result<PostgresDriver> {
        let location = redact(&config.path);
        let fail = |err: StoreError| err.at(&location);
        let tls = tls::from_url(&config.path).map_err(|why| fail(StoreError::new(ErrorKind::BadLocation, why)))?;
        let mut pg: tokio_postgres::Config = tls.url.parse().map_err(|err: tokio_postgres::Error| {
            fail(StoreError::new(ErrorKind::BadLocation, causes(&err)).caused_by(err))
        })?;
        // As libpq does: a password kept out of the URL (and so out of config files and argv).
        if let (None, Ok(password)) = (pg.get_password(), std::env::var("PGPASSWORD")) {
            pg.password(password);
        }
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(CONNECT_TIMEOUT);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("jobhost");
        }
        // Every statement names its tables unqualified; the schema is fixed per session.
        let options = format!("{} -c search_path={}", pg.get_options().unwrap_or(""), config.schema);
        pg.options(options.trim_start());
        let connections = connection::Connections::open(pg, tls.connector, connections).await.map_err(fail)?;
        schema::migrate(&mut connections.link().await.map_err(fail)?.client, &config.schema, access)
            .await
            .map_err(fail)?;
        Ok(PostgresDriver { connections, location, schema: config.schema.clone() })
    }
}

/// The URL as it may be shown: any password replaced by `***`.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, hosts)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{hosts}"),
            None => format!("{user_info}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> StoreError {
        let Some(db) = err.as_db_error() else {
            // Not the server's answer: it could not be reached, the connection broke, or a
            // value could not be sent or read.
            return StoreError::new(failure_kind(&err), causes(&err)).caused_by(err);
        };
        let code = db.code();
        let kind = if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
            ErrorKind::AuthFailed
        } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
            ErrorKind::PermissionDenied
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            ErrorKind::CannotOpen
        } else if *code == SqlState::UNDEFINED_TABLE || *code == SqlState::INVALID_SCHEMA_NAME {
            ErrorKind::Missing
        } else if [SqlState::ADMIN_SHUTDOWN, SqlState::CRASH_SHUTDOWN, SqlState::CANNOT_CONNECT_NOW].contains(code) {
            // The server is going down or not up yet: out of reach for now.
            ErrorKind::Unreachable
        } else if [SqlState::T_R_SERIALIZATION_FAILURE, SqlState::T_R_DEADLOCK_DETECTED, SqlState::LOCK_NOT_AVAILABLE]
            .contains(code)
        {
            ErrorKind::Busy
        } else if *code == SqlState::DISK_FULL {
            ErrorKind::DiskFull
        } else if *code == SqlState::READ_ONLY_SQL_TRANSACTION {
            ErrorKind::ReadOnly
        } else {
            ErrorKind::Other
        };
        let detail = match kind {
            ErrorKind::Missing => format!(" ({})", db.message()),
            _ => db.message().to_owned(),
        };
        StoreError::new(kind, detail).caused_by(err)
    }
}

/// The kind of an error that is not the server's answer, by its causes' types: a closed
/// connection or an I/O error means the server is out of reach, unless rustls refused the
/// handshake; anything else (a value that does not fit, ...) is no trouble with the server.
fn failure_kind(err: &tokio_postgres::Error) -> ErrorKind {
    if err.is_closed() {
        return ErrorKind::Unreachable;
    }
    let mut cause = std::error::Error::source(err);
    while let Some(found) = cause {
        if let Some(io) = found.downcast_ref::<std::io::Error>() {
            // tokio-rustls hands a failed handshake over as an I/O error around rustls's own.
            return if io.get_ref().is_some_and(|inner| is_tls_refusal(inner)) {
                ErrorKind::Tls
            } else {
                ErrorKind::Unreachable
            };
        }
        if is_tls_refusal(found) {
            return ErrorKind::Tls;
        }
        cause = found.source();
    }
    ErrorKind::Other
}

fn is_tls_refusal(err: &(dyn std::error::Error + 'static)) -> bool {
    err.is::<rustls::Error>() || err.is::<rustls::pki_types::InvalidDnsNameError>()
}

/// `err` and its causes, in one line.
fn causes(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(found) = cause {
        text = format!("{text}: {found}");
        cause = found.source();
    }
    text
}

/// Reading a column never panics: a NULL where a value must be, or a value of another type,
/// is an error naming the column.
trait ColumnValues {
    fn value<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T>;
}

impl ColumnValues for Row {
    fn value<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T> {
        self.try_get(index).map_err(|err| {
            let name = self.columns().get(index).map_or("?", |column| column.name());
            // The cause says what did not fit ("a Postgres value was `NULL`"); `err` only
            // repeats the index.
            let what = std::error::Error::source(&err).map_or_else(|| err.to_string(), causes);
            StoreError::new(ErrorKind::Other, format!("column {index} ({name}) cannot be read: {what}")).caused_by(err)
        })
    }
}

/// A count or measure read at the width stored (64 bits) and clamped into `u32`.
fn clamp_count(value: i64) -> u32 {
    value.clamp(0, i64::from(u32::MAX)) as u32
}

#[async_trait]
impl Driver for PostgresDriver {
    fn location(&self) -> &str {
        &self.location
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint { file: None }
    }

    async fn enqueue(
        &self,
        jobs: &mut (dyn Iterator<Item = Result<NewJob, Refusal>> + Send),
        now: Now,
    ) -> Result<EnqueueReport> {
        let mut link = self.connections.link().await?;
        let mut statements =
            jobs::EnqueueStatements { enqueue: link.prepare(jobs::ENQUEUE).await?, keyed: None, linking: None };
        let report = jobs::enqueue(&mut link.client, &mut statements, jobs, now).await?;
        let queued = report.queued;
        // Until autovacuum first analyses a freshly filled table, the planner believes it
        // holds one row and sends the claim through a sort of every pending job (80-130 ms
        // a claim at 100,000 jobs instead of 0.1 ms). A large enqueue gathers the statistics
        // itself; the jobs are committed either way, so a failure here is only logged.
        if queued >= ANALYZE_AFTER
            && let Err(err) = link.client.batch_execute("ANALYZE jobs").await
        {
            tracing::warn!("ANALYZE jobs after queueing {queued} jobs failed: {}", StoreError::from(err));
        }
        Ok(report)
    }

    async fn turn(&self, settlements: &[Settlement<'_>], claim: Option<&ClaimRequest<'_>>, now: Now) -> Result<Turn> {
        if settlements.is_empty() && claim.is_none() {
            return Ok(Turn::default());
        }
        let mut link = self.connections.link().await?;
        let statement = link.prepare(jobs::TURN).await?;
        if let Some(claim) = claim.filter(|claim| !claim.flow.is_empty()) {
            // Two statements sent together: the settlements, then the claim, which counts
            // the room they freed. Each commits on its own; a claim that fails after the
            // settlements committed is a turn whose answer was lost, which workers ride out
            // (their settlements come back stale and are recognized as recorded).
            let flow_claim = link.prepare(jobs::FLOW_CLAIM).await?;
            let settle = async {
                if settlements.is_empty() {
                    return Ok(Vec::new());
                }
                Ok(jobs::turn(&link.client, &statement, settlements, None, now).await?.settled)
            };
            let (settled, (claimed, held_back)) =
                tokio::try_join!(settle, jobs::flow_claim(&link.client, &flow_claim, claim, now))?;
            return Ok(Turn { settled, claimed, held_back });
        }
        let jobs::TurnRows { settled, mut claimed, readied } =
            jobs::turn(&link.client, &statement, settlements, claim, now).await?;
        // The claim ran on the statement's snapshot, in which a job this turn sent back for
        // an immediate retry was still claimed, and the jobs waiting for one it completed
        // were still waiting. Claim again rather than answer "nothing ready" while they are;
        // only turns that retried or released something pay for it.
        if let Some(claim) = claim.filter(|claim| claimed.len() < claim.limit as usize)
            && (readied || settled.iter().any(|settled| matches!(settled, Settled::Retrying { .. })))
        {
            let more = ClaimRequest { limit: claim.limit - claimed.len() as u32, ..*claim };
            claimed.extend(jobs::turn(&link.client, &statement, &[], Some(&more), now).await?.claimed);
        }
        Ok(Turn { settled, claimed, held_back: false })
    }

    async fn jobs(&self, ids: &[&str]) -> Result<Vec<JobDetail>> {
        let mut link = self.connections.link().await?;
        let statements =
            [link.prepare(&jobs::JOBS).await?, link.prepare(jobs::HISTORIES).await?, link.prepare(jobs::LINKS).await?];
        jobs::jobs(&link.client, &statements, ids).await
    }

    async fn parent_results(&self, children: &[i64]) -> Result<Vec<ParentResult>> {
        let link = self.connections.link().await?;
        jobs::parent_results(&link.client, children).await
    }

    async fn attempts(&self, id: &str, page: &AttemptPage) -> Result<Option<Vec<AttemptRecord>>> {
        let mut link = self.connections.link().await?;
        let statement = link.prepare(jobs::ATTEMPTS).await?;
        jobs::attempts(&link.client, &statement, id, page).await
    }

    async fn list_jobs(&self, filter: &JobFilter<'_>) -> Result<Vec<JobSummary>> {
        let mut link = self.connections.link().await?;
        let statement = link.prepare(&jobs::LIST).await?;
        jobs::list(&link.client, &statement, filter).await
    }

    async fn retry_job(&self, id: &str, now: Now) -> Result<IdAnswer> {
        let link = self.connections.link().await?;
        jobs::retry(&link.client, id, now).await
    }

    async fn job_statuses(&self, ids: &[&str]) -> Result<Vec<(String, JobStatus)>> {
        let link = self.connections.link().await?;
        jobs::statuses(&link.client, ids).await
    }

    async fn claims_held_by(&self, worker_id: &str) -> Result<Vec<ClaimedJob>> {
        let link = self.connections.link().await?;
        jobs::claims_held_by(&link.client, worker_id).await
    }

    async fn retry_matching(&self, matching: &JobMatch<'_>, now: Now) -> Result<u64> {
        let link = self.connections.link().await?;
        jobs::retry_matching(&link.client, matching, now).await
    }

    async fn cancel_job(&self, id: &str, now: Now) -> Result<IdAnswer> {
        let link = self.connections.link().await?;
        jobs::cancel(&link.client, id, now).await
    }

    async fn cancel_matching(&self, matching: &JobMatch<'_>, now: Now) -> Result<u64> {
        let link = self.connections.link().await?;
        jobs::cancel_matching(&link.client, matching, now).await
    }

    async fn delete_finished(&self, ages: &[(JobStatus, Duration)], limit: u32, now: Now) -> Result<u64> {
        let link = self.connections.link().await?;
        jobs::delete_finished(&link.client, ages, limit, now).await
    }

    async fn activate_worker(&self, worker: &NewWorker, now: Now) -> Result<()> {
        let link = self.connections.link().await?;
        workers::activate(&link.client, worker, now).await
    }

    async fn heartbeat(&self, worker_id: &str, lease: Duration, now: Now) -> Result<bool> {
        let mut link = self.connections.link().await?;
        let statement = link.prepare(workers::HEARTBEAT).await?;
        workers::heartbeat(&link.client, &statement, worker_id, lease, now).await
    }

    async fn deregister_worker(&self, worker_id: &str, now: Now) -> Result<()> {
        let link = self.connections.link().await?;
        workers::deregister(&link.client, worker_id, now).await
    }

    async fn mark_lost_workers(
        &self,
        pool: Option<&str>,
        stale_after: Duration,
        start_grace: Duration,
        now: Now,
    ) -> Result<Vec<String>> {
        let link = self.connections.link().await?;
        // Reaping runs on every checker's interval: a steady moment to fold the counts and
        // the activity, so their appended rows stay few even when nobody reads them.
        link.client.execute(workers::FOLD_COUNTS, &[]).await?;
        link.client.execute(workers::FOLD_ACTIVITY.as_str(), &[&now]).await?;
        workers::mark_lost(&link.client, pool, stale_after, start_grace, now).await
    }

    async fn abandoned_jobs(&self, pool: Option<&str>, now: Now) -> Result<Vec<Abandoned>> {
        let link = self.connections.link().await?;
        jobs::abandoned(&link.client, pool, now).await
    }

    async fn plan_workers(&self, request: &PlanRequest<'_>, now: Now) -> Result<WorkerPlan> {
        let mut link = self.connections.link().await?;
        let tx = link.client.transaction().await?;
        let plan = workers::plan(&tx, request, now).await?;
        tx.commit().await?;
        Ok(plan)
    }

    async fn status(&self, pool: Option<&str>, now: Now) -> Result<StatusSnapshot> {
        let link = self.connections.link().await?;
        workers::status(&link.client, pool, now).await
    }

    async fn pool_names(&self) -> Result<Vec<String>> {
        let link = self.connections.link().await?;
        workers::pool_names(&link.client).await
    }

    async fn pause_pool(&self, pool: &str, reason: Option<&str>, now: Now) -> Result<PausedPool> {
        let link = self.connections.link().await?;
        jobs::paused_pool(&link.client.query_one(jobs::PAUSE, &[&now, &pool, &reason]).await?)
    }

    async fn resume_pool(&self, pool: &str) -> Result<bool> {
        let link = self.connections.link().await?;
        Ok(!link.client.query(jobs::RESUME, &[&pool]).await?.is_empty())
    }

    async fn paused_pools(&self) -> Result<Vec<PausedPool>> {
        let link = self.connections.link().await?;
        let rows = link.client.query("SELECT pool, paused_at, reason FROM paused_pools ORDER BY pool", &[]).await?;
        rows.iter().map(jobs::paused_pool).collect()
    }

    async fn flow_counts(&self, limits: &[jobhost_core::flow::FlowLimit], now: Now) -> Result<Vec<FlowCount>> {
        let link = self.connections.link().await?;
        jobs::flow_counts(&link.client, limits, now).await
    }

    async fn workers(&self, filter: &WorkerFilter<'_>) -> Result<Vec<WorkerInfo>> {
        let link = self.connections.link().await?;
        workers::list(&link.client, filter).await
    }

    async fn activity(&self, now: Now) -> Result<(Millis, Vec<ActivityRow>)> {
        let link = self.connections.link().await?;
        workers::activity(&link.client, now).await
    }

    async fn schedules(&self, runs: u32) -> Result<Vec<ScheduleState>> {
        let link = self.connections.link().await?;
        schedules::list(&link.client, runs).await
    }

    async fn start_schedule(&self, name: &str, at: Millis) -> Result<bool> {
        let link = self.connections.link().await?;
        schedules::start(&link.client, name, at).await
    }

    async fn advance_schedule(&self, name: &str, due_at: Millis, job: Option<&NewJob>, now: Now) -> Result<bool> {
        let mut link = self.connections.link().await?;
        let enqueue = link.prepare(jobs::ENQUEUE).await?;
        let tx = link.client.transaction().await?;
        let advanced = schedules::advance(&tx, &enqueue, name, due_at, job, now).await?;
        tx.commit().await?;
        Ok(advanced)
    }

    async fn export(&self, after: i64, limit: u32) -> Result<Vec<ExportedJob>> {
        let link = self.connections.link().await?;
        jobs::export(&link.client, after, limit).await
    }

    async fn import(&self, exported: &[ExportedJob]) -> Result<()> {
        let mut link = self.connections.link().await?;
        let tx = link.client.transaction().await?;
        jobs::import(&tx, exported).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn is_empty(&self) -> Result<bool> {
        let link = self.connections.link().await?;
        let row = link
            .client
            .query_one("SELECT NOT EXISTS (SELECT 1 FROM jobs) AND NOT EXISTS (SELECT 1 FROM workers)", &[])
            .await?;
        row.value(0)
    }

    async fn ping(&self) -> Result<()> {
        self.connections.link().await?.client.query_one("SELECT EXISTS (SELECT 1 FROM jobs)", &[]).await?;
        Ok(())
    }

    async fn ready_in(&self, pool: &str, now: Now) -> Result<Option<Millis>> {
        let mut link = self.connections.link().await?;
        let statement = link.prepare(jobs::READY_IN).await?;
        Ok(link.client.query_one(&statement, &[&now, &pool]).await?.value(0)?)
    }

    async fn wakeups(&self, pool: &str) -> Result<Wakeups> {
        let (config, tls) = self.connections.connect_settings();
        Ok(wake::watch(config, tls, &self.schema, pool))
    }

    #[cfg(test)]
    async fn drifted_counts(&self) -> Result<Vec<String>> {
        let rows = self
            .connections
            .link()
            .await?
            .client
            .query(
                "SELECT coalesce(c.pool, k.pool), coalesce(c.status, k.status), coalesce(c.n, 0), coalesce(k.jobs, 0)
                   FROM (SELECT pool, status, count(*) AS n FROM jobs GROUP BY pool, status) c
                   FULL JOIN (SELECT pool, status, sum(jobs)::bigint AS jobs FROM job_count_deltas
                               GROUP BY pool, status HAVING sum(jobs) <> 0) k
                     ON k.pool = c.pool AND k.status = c.status
                  WHERE coalesce(c.n, 0) != coalesce(k.jobs, 0)",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let (pool, status): (String, String) = (row.value(0)?, row.value(1)?);
                Ok(format!("{pool}/{status}: counted {}, kept {}", row.value::<i64>(2)?, row.value::<i64>(3)?))
            })
            .collect()
    }

    #[cfg(test)]
    async fn execute_for_test(&self, sql: &str) -> Result<()> {
        Ok(self.connections.link().await?.client.batch_execute(sql).await?)
    }

    #[cfg(test)]
    async fn counts_for_test(&self, sql: &str) -> Result<Vec<i64>> {
        let rows = self.connections.link().await?.client.query(sql, &[]).await?;
        rows.iter().map(|row| row.value(0)).collect()
    }
}

#[cfg(test)]
mod tests {
    use jobhost_core::config::DatabaseConfig;

    use super::redact;
    use crate::suite::postgres_config;
    use crate::{Access, ErrorKind, Store};

    #[tokio::test]
    async fn a_connection_the_server_ends_is_replaced_at_the_next_operation() {
        let store = Store::open(&postgres_config(), Access::CreateIfMissing).await.unwrap();
        store.ping().await.unwrap();
        let ended = store.driver.execute_for_test("SELECT pg_terminate_backend(pg_backend_pid())").await.unwrap_err();
        assert_eq!(ended.kind(), ErrorKind::Unreachable, "{ended}");
        // The operation racing the connection's end may still fail; the one after it may not.
        let answers = [store.ping().await, store.ping().await];
        assert!(answers.iter().any(Result::is_ok), "the store never reconnected: {answers:?}");
        assert!(answers[1].is_ok(), "{answers:?}");
        assert_eq!(store.status(None).await.unwrap().jobs, crate::JobCounts::default());
    }

    /// What failed is told by the types of the error's causes, not by their wording, and the
    /// causes are kept.
    #[tokio::test]
    async fn a_failed_connection_is_classified_by_its_causes_and_keeps_them() {
        let config = postgres_config();
        let ca = std::env::var("JOBHOST_TEST_PG_CA")
            .expect("JOBHOST_TEST_PG_CA names the CA of the test server's certificate (scripts/test sets it)");
        // The test server's certificate names 127.0.0.1, not localhost.
        let misnamed =
            format!("{}?sslmode=verify-full&sslrootcert={ca}", config.path.replace("127.0.0.1", "localhost"));
        let cases = [
            ("postgres://jobhost@127.0.0.1:1/postgres".to_owned(), ErrorKind::Unreachable, "connection refused"),
            (misnamed, ErrorKind::Tls, "not valid for name \"localhost\""),
        ];
        for (path, kind, cause) in cases {
            let err = Store::open(&DatabaseConfig { path, ..config.clone() }, Access::Existing).await.err().unwrap();
            let message = err.to_string();
            assert_eq!(err.kind(), kind, "{message}");
            assert!(message.to_lowercase().contains(cause), "{message}");
            let source = std::error::Error::source(&err);
            assert!(source.is_some_and(|source| source.is::<tokio_postgres::Error>()), "{message}: {source:?}");
        }
    }

    #[tokio::test]
    async fn a_column_that_does_not_fit_is_an_error_naming_it() {
        let store = Store::open(&postgres_config(), Access::CreateIfMissing).await.unwrap();
        let cases = [("SELECT NULL::bigint AS lease", "NULL"), ("SELECT 1::integer AS lease", "int4")];
        for (sql, why) in cases {
            let err = store.driver.counts_for_test(sql).await.unwrap_err();
            let message = err.to_string();
            assert_eq!(err.kind(), ErrorKind::Other, "{message}");
            assert!(message.contains("column 0 (lease) cannot be read") && message.contains(why), "{message}");
            let source = std::error::Error::source(&err);
            assert!(source.is_some_and(|source| source.is::<tokio_postgres::Error>()), "{message}: {source:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pooled_store_answers_while_one_of_its_connections_waits_for_a_lock() {
        let config = postgres_config();
        let store = std::sync::Arc::new(Store::open_pooled(&config, Access::CreateIfMissing, 2).await.unwrap());
        let (holder, connection) = tokio_postgres::connect(&config.path, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let key = uuid::Uuid::new_v4().as_u64_pair().0 as i64;
        holder.execute("SELECT pg_advisory_lock($1)", &[&key]).await.unwrap();
        let blocked = format!("SELECT pg_advisory_lock({key})");
        let waiter = tokio::spawn({
            let (store, blocked) = (store.clone(), blocked.clone());
            async move { store.driver.execute_for_test(&blocked).await }
        });
        // The server shows when the store's statement waits for the lock.
        let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query = $1";
        while holder.query_one(waiting, &[&blocked]).await.unwrap().get::<_, i64>(0) == 0 {
            assert!(!waiter.is_finished(), "the statement ended without waiting: {:?}", waiter.await);
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let answered = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            store.ping().await.unwrap();
            store.status(None).await.unwrap()
        })
        .await
        .expect("the other connection answers while one waits for the lock");
        assert_eq!(answered.jobs, crate::JobCounts::default());
        assert!(!waiter.is_finished(), "the lock is still held");
        holder.execute("SELECT pg_advisory_unlock($1)", &[&key]).await.unwrap();
        waiter.await.unwrap().expect("the waiting statement ends once the lock is free");
    }

    #[test]
    fn a_password_never_shows_in_the_location() {
        assert_eq!(redact("postgres://app:s3cret@db.internal:5432/jobs"), "postgres://app:***@db.internal:5432/jobs");
        assert_eq!(
            redact("postgresql://app@db/jobs?sslmode=disable&password=s3cret"),
            "postgresql://app@db/jobs?sslmode=disable&password=***"
        );
        assert_eq!(
            redact("postgres://jobhost@127.0.0.1:55432/postgres"),
            "postgres://jobhost@127.0.0.1:55432/postgres"
        );
        assert_eq!(redact("postgres://a:b:c@h1,h2/db"), "postgres://a:***@h1,h2/db");
    }
}
