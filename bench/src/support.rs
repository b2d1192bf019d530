//! What every section shares: where the binaries are, scratch pools driven through the real
//! `jobhost` command line and read back through the store's own API, the throwaway PostgreSQL
//! server, CPU accounting, and order statistics.

use std::cell::OnceCell;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use jobhost_core::config::DatabaseConfig;
use jobhost_store::{Access, JobFilter, JobMatch, JobStatus, JobSummary, NewJob, RetryPolicy, StatusSnapshot, Store};
use tempfile::TempDir;

/// The run's settings and the paths every section needs.
pub struct Bench {
    /// The workspace root (fixtures, the Python helper, `target/`).
    pub root: PathBuf,
    /// Folder of the release binaries (`jobhost`, `echo`, this benchmark).
    pub bin_dir: PathBuf,
    pub quick: bool,
    /// Repetitions of the throughput measurements; their median is reported.
    pub runs: usize,
    /// The PostgreSQL server, started the first time a section asks for it.
    pg: OnceCell<std::result::Result<PgServer, String>>,
}

impl Bench {
    pub fn new(quick: bool, runs: usize) -> Result<Bench> {
        ensure!(runs >= 1, "--runs must be at least 1");
        let exe = std::env::current_exe().context("cannot find the benchmark's own executable")?;
        let bin_dir = exe.parent().context("the benchmark executable has no folder")?.to_path_buf();
        let root =
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("bench/ sits inside the workspace")?.to_path_buf();
        let bench = Bench { root, bin_dir, quick, runs, pg: OnceCell::new() };
        let jobhost = bench.jobhost();
        ensure!(
            jobhost.is_file(),
            "{} is missing: build it with `cargo build --release -p jobhost` (or run scripts/bench)",
            jobhost.display()
        );
        Ok(bench)
    }

    /// `full` for a real run, `quick` for a `--quick` smoke run.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }

    /// The `jobhost` binary built beside this benchmark (same profile, same commit).
    pub fn jobhost(&self) -> PathBuf {
        self.bin_dir.join("jobhost")
    }

    /// The PostgreSQL server, if a section started (or found) one.
    pub fn pg_started(&self) -> Option<&PgServer> {
        self.pg.get()?.as_ref().ok()
    }

    /// The PostgreSQL server: `$JOBHOST_BENCH_PG`, or one `scripts/postgres` starts now (once
    /// per benchmark; it is stopped when the benchmark ends).
    pub fn pg(&self) -> Result<&PgServer> {
        self.pg
            .get_or_init(|| PgServer::start(&self.root).map_err(|err| format!("{err:#}")))
            .as_ref()
            .map_err(|err| anyhow!("no PostgreSQL server: {err}"))
    }
}

/// Runs `future` on this thread's current-thread tokio runtime. Every store the benchmark
/// opens in-process is opened and used here (a PostgreSQL store's connection task lives on it).
pub fn block_on<F: Future>(future: F) -> F::Output {
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cannot start a tokio runtime");
    }
    RUNTIME.with(|runtime| runtime.block_on(future))
}

/// Which backend a measurement runs on.
#[derive(Clone, Copy)]
pub enum Backend<'a> {
    /// A fresh file in a temporary folder.
    Sqlite,
    /// A fresh schema on this server.
    Postgres(&'a PgServer),
}

impl Backend<'_> {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres(_) => "PostgreSQL",
        }
    }
}

/// The throwaway PostgreSQL server the PostgreSQL rows run on.
pub struct PgServer {
    pub url: String,
    /// The folder `scripts/postgres start` made; `None` for a server named by `$JOBHOST_BENCH_PG`.
    dir: Option<PathBuf>,
    root: PathBuf,
    /// A connection for the benchmark's own questions (counters, settings, dropping schemas).
    client: tokio_postgres::Client,
    /// The postmaster's pid, when the server runs on this machine: its CPU and its children's.
    postmaster: Option<u32>,
}

impl PgServer {
    fn start(root: &Path) -> Result<PgServer> {
        let (url, dir) = match std::env::var("JOBHOST_BENCH_PG") {
            Ok(url) if !url.is_empty() => (url, None),
            _ => {
                let dir = std::env::temp_dir().join(format!("jobhost-bench-pg-{}", std::process::id()));
                println!("  starting a PostgreSQL server in {} (scripts/postgres start)", dir.display());
                let output = Command::new(root.join("scripts/postgres"))
                    .arg("start")
                    .arg(&dir)
                    .current_dir(root)
                    .stdin(Stdio::null())
                    .stderr(Stdio::inherit())
                    .output()
                    .context("cannot run scripts/postgres")?;
                if !output.status.success() {
                    stop_server(root, &dir);
                    bail!(
                        "`scripts/postgres start {}` failed ({}); its messages are above",
                        dir.display(),
                        output.status
                    );
                }
                (String::from_utf8_lossy(&output.stdout).trim().to_string(), Some(dir))
            }
        };
        let connected = block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        let client = match connected {
            Ok(client) => client,
            Err(err) => {
                if let Some(dir) = &dir {
                    stop_server(root, dir);
                }
                bail!("cannot connect to PostgreSQL at {url}: {err}");
            }
        };
        let mut server = PgServer { url, dir, root: root.to_path_buf(), client, postmaster: None };
        let backend: i32 = server.query_one("SELECT pg_backend_pid()")?;
        server.postmaster = parent_pid(backend as u32).filter(|&pid| comm(pid).as_deref() == Some("postgres"));
        Ok(server)
    }

    fn query_one<T: for<'a> tokio_postgres::types::FromSql<'a>>(&self, sql: &str) -> Result<T> {
        block_on(self.client.query_one(sql, &[]))
            .and_then(|row| row.try_get(0))
            .with_context(|| format!("PostgreSQL query failed: {sql}"))
    }

    /// The settings that decide its speed, for the report.
    pub fn settings(&self) -> Result<String> {
        let mut parts = Vec::new();
        for name in
            ["server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers", "max_connections"]
        {
            let value: String = self.query_one(&format!("SHOW {name}"))?;
            parts.push(format!("{name}={value}"));
        }
        let place = match &self.dir {
            Some(_) => "started by `scripts/postgres start` on 127.0.0.1, same machine".to_string(),
            None => "named by $JOBHOST_BENCH_PG".to_string(),
        };
        Ok(format!("{place}; {}", parts.join(", ")))
    }

    /// A new, unused schema name.
    pub fn fresh_schema() -> String {
        format!("bench_{}", NewJob::new_id().replace('-', ""))
    }

    pub fn config(&self, schema: &str) -> DatabaseConfig {
        DatabaseConfig { path: self.url.clone(), schema: schema.to_string(), ..DatabaseConfig::default() }
    }

    /// Drops a schema the benchmark made, so the next measurement has the server to itself.
    pub fn drop_schema(&self, schema: &str) {
        if let Err(err) = block_on(self.client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))) {
            eprintln!("warning: cannot drop the benchmark schema {schema}: {err}");
        }
    }

    /// `ANALYZE` of a benchmark schema's tables: the statistics autovacuum would gather a
    /// while after a bulk load.
    pub fn analyze(&self, schema: &str) -> Result<()> {
        block_on(self.client.batch_execute(&format!("ANALYZE \"{schema}\".jobs, \"{schema}\".attempts")))
            .with_context(|| format!("ANALYZE of schema {schema} failed"))
    }

    /// Transactions committed in this database so far (`pg_stat_database.xact_commit`).
    pub fn xact_commit(&self) -> Result<i64> {
        block_on(self.client.batch_execute("SELECT pg_stat_clear_snapshot()"))?;
        self.query_one("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    }

    /// CPU seconds (user + system) of the server: the postmaster and every process it ever
    /// started (live ones read directly, exited ones through the postmaster's child times).
    /// `None` when the server is not a process of this machine.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let postmaster = self.postmaster?;
        let mut ticks = process_ticks(postmaster)?;
        for pid in all_pids() {
            if pid != postmaster && parent_pid(pid) == Some(postmaster) {
                ticks += process_ticks(pid).unwrap_or(0);
            }
        }
        Some(ticks as f64 / clock_ticks_per_second())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            stop_server(&self.root, dir);
        }
    }
}

fn stop_server(root: &Path, dir: &Path) {
    let stopped = Command::new(root.join("scripts/postgres")).arg("stop").arg(dir).stdin(Stdio::null()).status();
    if !matches!(stopped, Ok(status) if status.success()) {
        eprintln!("warning: `scripts/postgres stop {}` failed; stop that server by hand", dir.display());
    }
}

/// A scratch pool: a temporary folder with `processors/` and `jobhost.yml`, and the database —
/// `data/jobhost.db` in it, or a fresh schema on the PostgreSQL server (dropped with the pool).
/// Worker logs and the compiled-module cache are in `data/` either way.
pub struct Pool<'a> {
    dir: TempDir,
    jobhost: PathBuf,
    db: String,
    pg: Option<(&'a PgServer, String)>,
}

impl<'a> Pool<'a> {
    /// A SQLite pool.
    pub fn new(bench: &Bench, config_yaml: &str) -> Result<Pool<'static>> {
        Pool::on(bench, Backend::Sqlite, config_yaml)
    }

    pub fn on(bench: &Bench, backend: Backend<'a>, config_yaml: &str) -> Result<Pool<'a>> {
        let dir = tempfile::Builder::new()
            .prefix("jobhost-bench-")
            .tempdir()
            .context("cannot create a temporary folder for a benchmark pool (check $TMPDIR)")?;
        std::fs::create_dir(dir.path().join("processors"))?;
        let (db, pg, yaml) = match backend {
            Backend::Sqlite => {
                (dir.path().join("data/jobhost.db").display().to_string(), None, config_yaml.to_string())
            }
            Backend::Postgres(server) => {
                let schema = PgServer::fresh_schema();
                let yaml = format!("database:\n  schema: {schema}\n{config_yaml}");
                (server.url.clone(), Some((server, schema)), yaml)
            }
        };
        std::fs::write(dir.path().join("jobhost.yml"), yaml)?;
        Ok(Pool { dir, jobhost: bench.jobhost(), db, pg })
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path("data/cache")
    }

    /// What `jobhost` opens for this pool.
    pub fn database(&self) -> DatabaseConfig {
        match &self.pg {
            Some((server, schema)) => server.config(schema),
            None => DatabaseConfig { path: self.db.clone(), ..DatabaseConfig::default() },
        }
    }

    /// `jobhost ARGS` on this pool, with nothing inherited from the caller's environment
    /// that could point it elsewhere; stdin and stdout are null.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.jobhost);
        command
            .current_dir(self.dir.path())
            .env_remove("JOBHOST_CONFIG")
            .env_remove("JOBHOST_DB")
            .env_remove("JOBHOST_PROCESSORS")
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(self.path("jobhost.yml"))
            .arg("--db")
            .arg(&self.db)
            .arg("--processors-dir")
            .arg(self.path("processors"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// Runs `jobhost ARGS` and insists on success.
    pub fn ok(&self, args: &[&str]) -> Result<()> {
        let output = self
            .command(args)
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot run {}", self.jobhost.display()))?;
        if !output.status.success() {
            bail!(
                "`jobhost {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    pub fn seed(&self, count: u64, processor: &str, max_attempts: u32) -> Result<()> {
        self.ok(&[
            "seed",
            "--count",
            &count.to_string(),
            "--processor",
            processor,
            "--max-attempts",
            &max_attempts.to_string(),
        ])
    }

    /// Compiles `echo` into the pool's module cache with a throwaway `jobhost run echo`.
    pub fn warm_echo(&self) -> Result<()> {
        self.ok(&["run", "echo", "--payload", r#"{"warm":true}"#])
    }

    /// The pool opened in-process, as an outside observer (or `jobhost status`) opens it.
    pub fn observe(&self) -> Result<Store> {
        Ok(block_on(Store::open(&self.database(), Access::Existing))?)
    }

    /// Creates the pool's database (its schema on PostgreSQL) with no job in it, as the
    /// first `jobhost seed` would.
    pub fn create(&self) -> Result<()> {
        block_on(Store::open(&self.database(), Access::CreateIfMissing))?;
        Ok(())
    }

    /// The server and schema of a PostgreSQL pool.
    pub fn postgres(&self) -> Option<(&'a PgServer, &str)> {
        self.pg.as_ref().map(|(server, schema)| (*server, schema.as_str()))
    }
}

/// Pools one section seeded that a later section reuses rather than seeding its own: the
/// scale section's pools of a million pending jobs, kept for the server section's page
/// timings when both run, in that order. Dropped (schemas and all) when the benchmark ends.
pub struct Shelf<'a> {
    wanted: bool,
    pools: Vec<(&'static str, Pool<'a>)>,
}

impl<'a> Shelf<'a> {
    /// `wanted`: a later section will take what is kept; otherwise nothing is.
    pub fn new(wanted: bool) -> Shelf<'a> {
        Shelf { wanted, pools: Vec::new() }
    }

    /// Keeps `pool` (a pool of `backend`) if a later section wants it, or drops it now.
    pub fn keep(&mut self, backend: Backend<'_>, pool: Pool<'a>) {
        if self.wanted {
            self.pools.push((backend.name(), pool));
        }
    }

    /// The pool kept for `backend`, if any.
    pub fn take(&mut self, backend: Backend<'_>) -> Option<Pool<'a>> {
        let index = self.pools.iter().position(|(name, _)| *name == backend.name())?;
        Some(self.pools.remove(index).1)
    }
}

impl Drop for Pool<'_> {
    fn drop(&mut self) {
        if let Some((server, schema)) = &self.pg {
            server.drop_schema(schema);
        }
    }
}

/// `jobhost status` of the whole pool, through the store.
pub fn status(store: &Store) -> Result<StatusSnapshot> {
    Ok(block_on(store.status(None))?)
}

/// Up to `limit` jobs of the pool, optionally of one status.
pub fn list(store: &Store, status: Option<JobStatus>, limit: u64) -> Result<Vec<JobSummary>> {
    let limit = u32::try_from(limit).context("too many jobs to list")?;
    Ok(block_on(store.list_jobs(&JobFilter {
        matching: JobMatch { status, ..JobMatch::default() },
        after: None,
        limit,
    }))?)
}

/// The retry policy of the default configuration.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::from_config(&jobhost_core::config::Config::default().retry)
}

/// Milliseconds since the Unix epoch: the unit of jobhost's timestamps.
pub fn epoch_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// CPU seconds (user + system) of this process's reaped children, all of them so far.
pub fn children_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid `who` and a pointer to a live local.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// What the kernel counted for one process, from `wait4` when it was reaped.
pub struct Usage {
    /// User + system time of all its threads.
    pub cpu: Duration,
    /// Peak resident set, in bytes.
    pub peak_rss: u64,
}

/// Runs `command` to the end, insists that it succeeded, and returns what it used.
pub fn run_to_end(mut command: Command) -> Result<Usage> {
    let child = command.spawn().context("cannot spawn jobhost")?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our unreaped child; both pointers are to live locals. `child` is not
    // waited on after this, so std never reaps it a second time.
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    ensure!(reaped == pid, "wait4 on jobhost failed: {}", std::io::Error::last_os_error());
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "`jobhost` exited abnormally (wait status {status})"
    );
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    // Linux reports ru_maxrss in KiB.
    Ok(Usage { cpu: time(usage.ru_utime) + time(usage.ru_stime), peak_rss: usage.ru_maxrss as u64 * 1024 })
}

/// Makes this process the reaper of its orphaned descendants (the workers a `jobhost check`
/// leaves behind when it exits), so [`reap_children`] collects their CPU time.
pub fn become_subreaper() -> Result<()> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes one integer argument.
    let done = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    ensure!(done == 0, "prctl(PR_SET_CHILD_SUBREAPER) failed: {}", std::io::Error::last_os_error());
    Ok(())
}

/// Waits until this process has no child left (every one reaped), at most `timeout`.
pub fn reap_children(timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: a pointer to a live local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            continue;
        }
        if pid < 0 {
            // ECHILD: none left.
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "child processes (jobhost workers) still running after {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; the fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

fn parent_pid(pid: u32) -> Option<u32> {
    // Fields after the name: state (0), ppid (1), …
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// utime + stime + cutime + cstime, in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // utime is field 14 of /proc/PID/stat, so index 11 after the name; then stime, cutime, cstime.
    (11..15).map(|i| fields.get(i)?.parse::<i64>().ok().map(|t| t.max(0) as u64)).sum()
}

/// CPU seconds (user + system, all its threads) of one live process, its children excluded.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let ticks: u64 = (11..13).map(|i| fields.get(i)?.parse::<u64>().ok()).sum::<Option<u64>>()?;
    Some(ticks as f64 / clock_ticks_per_second())
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|text| text.trim().to_string())
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|entry| entry.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> f64 {
    let sorted = sorted(values);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// The nearest-rank percentile `p` (0–100).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let sorted = sorted(values);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(values: &[f64]) -> Vec<f64> {
    assert!(!values.is_empty(), "statistics of no samples");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

pub fn median_duration(samples: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(&seconds(samples)))
}

pub fn percentile_duration(samples: &[Duration], p: f64) -> Duration {
    Duration::from_secs_f64(percentile(&seconds(samples), p))
}

fn seconds(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(Duration::as_secs_f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
