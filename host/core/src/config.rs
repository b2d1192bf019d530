//! Configuration: the `jobhost.yml` schema, its defaults, and where it is found.
//!
//! Every key has a default, so an empty file (or no file) is a valid configuration.
//! The file is looked up as `--config PATH`, then `$JOBHOST_CONFIG`, then
//! `./config/jobhost.yml` when it exists; command-line flags override what it says.
//! Unknown keys and wrong types are rejected with the file, line and key, because a
//! typo in a limit silently falling back to a default is how sandboxes get loose.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use crate::flow::{FlowConfig, FlowLimit};
use crate::grants::{Grants, HttpGrant};
use crate::schedule::Schedule;
use crate::units::{ByteSize, HumanDuration};

/// Where the configuration is looked for when neither `--config` nor `$JOBHOST_CONFIG` is set.
pub const DEFAULT_CONFIG_PATH: &str = "config/jobhost.yml";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The file this configuration was read from, if any; spawned workers are given it too.
    #[serde(skip)]
    pub source: Option<PathBuf>,
    pub database: DatabaseConfig,
    pub retry: RetryConfig,
    pub worker: WorkerConfig,
    pub checker: CheckerConfig,
    pub reaper: ReaperConfig,
    pub jobs: JobsConfig,
    pub processors: ProcessorsConfig,
    pub serve: ServeConfig,
    /// Jobs queued on a timetable, by schedule name (see [`crate::schedule`]).
    pub schedules: BTreeMap<String, Schedule>,
    pub retention: RetentionConfig,
    /// Keys set by a command-line flag, and that flag: validation errors name what the user typed.
    #[serde(skip)]
    pub set_by_flag: BTreeMap<String, &'static str>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// A SQLite file, or a `postgres://` / `postgresql://` URL.
    pub path: String,
    pub synchronous: Synchronous,
    /// How long a connection waits for another process's write lock before giving up.
    pub busy_timeout: HumanDuration,
    /// On PostgreSQL, the schema holding jobhost's tables, so a pool can share a database
    /// with an application.
    pub schema: String,
    /// How many connections `jobhost serve` may keep open, so requests running at once do
    /// not queue on one. Every other command opens a single connection.
    pub serve_connections: u32,
}

impl DatabaseConfig {
    /// Whether the pool lives on a PostgreSQL server rather than in a SQLite file.
    pub fn is_server(&self) -> bool {
        self.path.starts_with("postgres://") || self.path.starts_with("postgresql://")
    }

    /// The folder for this machine's own files (worker logs, the compile cache): beside a
    /// SQLite database, or `data/` when the pool is on a server.
    pub fn data_dir(&self) -> PathBuf {
        if self.is_server() {
            return PathBuf::from("data");
        }
        Path::new(&self.path).parent().map_or_else(PathBuf::new, Path::to_path_buf)
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            path: "data/jobhost.db".to_string(),
            synchronous: Synchronous::Normal,
            busy_timeout: HumanDuration(Duration::from_secs(30)),
            schema: "jobhost".to_string(),
            serve_connections: 8,
        }
    }
}

/// SQLite's `synchronous` pragma, restricted to the two settings that are safe in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// A committed transaction survives a crash of jobhost, but the last few may be lost
    /// if the whole machine loses power before the WAL is checkpointed.
    Normal,
    /// Every commit is fsynced: it survives power loss, at the cost of one fsync per commit.
    Full,
}

impl Synchronous {
    pub fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts a job gets before it is poisoned (the first run counts as one).
    pub max_attempts: u32,
    pub backoff_initial: HumanDuration,
    pub backoff_max: HumanDuration,
    /// Fraction (0.0–1.0) of each backoff that is randomised, so retries of jobs that failed
    /// together do not all come back together.
    pub backoff_jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_initial: HumanDuration(Duration::from_secs(1)),
            backoff_max: HumanDuration(Duration::from_secs(300)),
            backoff_jitter: 0.2,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// This machine's name among the machines sharing a pool; by default its hostname.
    pub host: Option<String>,
    pub heartbeat_interval: HumanDuration,
    /// Jobs one worker process keeps in flight at once.
    pub concurrency: u32,
}

impl WorkerConfig {
    /// This machine's name: `worker.host`, else the hostname.
    pub fn host(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .ok()
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "localhost".to_owned())
        })
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self { host: None, heartbeat_interval: HumanDuration(Duration::from_secs(5)), concurrency: 1 }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckerConfig {
    pub max_workers: u32,
    /// Following workers (`work --follow`) `check --interval` keeps alive per pool on its
    /// host whatever the backlog; 0 leaves workers to be spawned for ready jobs only.
    pub min_workers: u32,
    /// Pause between rounds of `jobhost check --interval`.
    pub interval: HumanDuration,
    /// How long a spawned worker may stay `starting` before it counts as lost.
    pub start_grace: HumanDuration,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        Self {
            max_workers: 4,
            min_workers: 1,
            interval: HumanDuration(Duration::from_secs(10)),
            start_grace: HumanDuration(Duration::from_secs(30)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReaperConfig {
    /// A worker silent for longer than this is lost; it is also the lease a claim gets,
    /// renewed by every heartbeat.
    pub stale_after: HumanDuration,
}

impl Default for ReaperConfig {
    fn default() -> Self {
        Self { stale_after: HumanDuration(Duration::from_secs(60)) }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Largest payload a job may carry; `seed` and `run` refuse larger ones.
    pub max_payload: ByteSize,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self { max_payload: ByteSize(1 << 20) }
    }
}

/// How long finished jobs are kept: the long-running processes (`serve`, `check --interval`)
/// delete older ones, with their attempts, a small batch at a time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub completed: Keep,
    pub cancelled: Keep,
    pub poisoned: Keep,
    /// Pause between rounds of deleting, once a round found nothing more to delete.
    pub interval: HumanDuration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        let week = Keep::For(HumanDuration(Duration::from_secs(7 * 86_400)));
        Self {
            completed: week,
            cancelled: week,
            // A poisoned job is a failure someone may still need to look at or retry.
            poisoned: Keep::Forever,
            interval: HumanDuration(Duration::from_secs(60)),
        }
    }
}

/// How long a finished job is kept after it finished: a duration, or `never` deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    For(HumanDuration),
    Forever,
}

impl std::str::FromStr for Keep {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text.trim() == "never" {
            return Ok(Keep::Forever);
        }
        text.parse().map(Keep::For).map_err(|why| format!("{why}; or write `never` to keep these jobs"))
    }
}

impl<'de> Deserialize<'de> for Keep {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::units::deserialize_from_str(deserializer)
    }
}

impl std::fmt::Display for Keep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keep::For(duration) => duration.fmt(f),
            Keep::Forever => f.write_str("never"),
        }
    }
}

/// `jobhost serve`: the HTTP API, dashboard and metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Address and port to listen on. Anything but loopback needs a token.
    pub listen: String,
    /// File holding the token every request must carry (`$JOBHOST_TOKEN` is the other way).
    pub token_file: Option<PathBuf>,
    /// File holding a second token that reads the API, the dashboard and the metrics but
    /// changes nothing (`$JOBHOST_READ_TOKEN` is the other way); needs `token_file` too.
    pub read_token_file: Option<PathBuf>,
    /// Serve reads only: every change is refused.
    pub read_only: bool,
    /// Largest request body (a batch of jobs is one body).
    pub max_body: ByteSize,
    /// Longest a request may take, from its first byte to its answer; a long-poll gets its
    /// wait on top.
    pub request_timeout: HumanDuration,
    /// Longest `?wait=` a long-poll may ask for.
    pub max_wait: HumanDuration,
    /// Most connections open at once. At the cap, the connection idle the longest is closed
    /// to make room; only when every connection is in a request do new ones wait.
    pub max_connections: u32,
    /// Most long-polls waiting at once (unset: half of `max_connections`), so waiters always
    /// leave connections for short requests; one more is answered 503 at once.
    pub max_waiters: Option<u32>,
    /// Longest a response may go without the client taking any of it before the connection
    /// is closed (a client that stopped reading).
    pub write_timeout: HumanDuration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7700".to_string(),
            token_file: None,
            read_token_file: None,
            read_only: false,
            max_body: ByteSize(16 << 20),
            request_timeout: HumanDuration(Duration::from_secs(30)),
            max_wait: HumanDuration(Duration::from_secs(60)),
            max_connections: 10_000,
            max_waiters: None,
            write_timeout: HumanDuration(Duration::from_secs(30)),
        }
    }
}

impl ServeConfig {
    /// The listen address, parsed.
    pub fn address(&self) -> Result<std::net::SocketAddr, String> {
        self.listen.parse().map_err(|_| {
            format!("must be an IP address and port, e.g. 127.0.0.1:7700 or 0.0.0.0:7700, got {:?}", self.listen)
        })
    }

    /// The long-polls allowed to wait at once when `connections` may be open (fewer than
    /// `max_connections` if the open-files limit is lower): always fewer than `connections`.
    pub fn waiters_for(&self, connections: u32) -> u32 {
        self.max_waiters.unwrap_or(connections / 2).min(connections.saturating_sub(1))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorsConfig {
    /// Folder scanned for drop-in `*.wasm` processors.
    pub dir: PathBuf,
    /// Folder for compiled modules; by default `cache/` beside the database.
    pub cache_dir: Option<PathBuf>,
    /// Largest processor file loaded; bigger ones are load errors, read no further.
    pub max_size: ByteSize,
    pub limits: Limits,
    /// Per-processor changes to `limits`, and the capabilities granted to each processor.
    pub overrides: BTreeMap<String, ProcessorOverrides>,
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("processors"),
            cache_dir: None,
            max_size: ByteSize(64 << 20),
            limits: Limits::default(),
            overrides: BTreeMap::new(),
        }
    }
}

/// The bounds every processor run is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU budget in wasm fuel units (about one per instruction).
    pub fuel: u64,
    /// Wall-clock deadline for one run, including time the guest spends blocked.
    pub timeout: HumanDuration,
    /// Cap on the guest's linear memory.
    pub memory: ByteSize,
    pub stdout: ByteSize,
    pub stderr: ByteSize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            timeout: HumanDuration(Duration::from_secs(30)),
            memory: ByteSize(64 << 20),
            stdout: ByteSize(1 << 20),
            stderr: ByteSize(64 << 10),
        }
    }
}

/// `processors.overrides.NAME`: limits that differ from `processors.limits` (keys left out
/// keep the default) and the capabilities granted (none unless listed; see [`crate::grants`]).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessorOverrides {
    pub fuel: Option<u64>,
    pub timeout: Option<HumanDuration>,
    pub memory: Option<ByteSize>,
    pub stdout: Option<ByteSize>,
    pub stderr: Option<ByteSize>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub http: Option<HttpGrant>,
    /// Limits on its jobs across every worker (see [`crate::flow`]); none by default.
    pub flow: Option<FlowConfig>,
    /// What its jobs read on stdin; the payload alone by default.
    pub input: ProcessorInput,
}

/// `processors.overrides.NAME.input`: what a processor's job reads on stdin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessorInput {
    /// The job's payload, exactly as it was queued.
    #[default]
    Payload,
    /// `{"payload": PAYLOAD, "parents": {"ID": RESULT, …}}`: the payload beside the result of
    /// each job it waited for (`seed --after`) that is still kept; `{}` for a job that waited
    /// for none.
    Envelope,
}

impl ProcessorOverrides {
    pub fn apply_to(&self, base: Limits) -> Limits {
        Limits {
            fuel: self.fuel.unwrap_or(base.fuel),
            timeout: self.timeout.unwrap_or(base.timeout),
            memory: self.memory.unwrap_or(base.memory),
            stdout: self.stdout.unwrap_or(base.stdout),
            stderr: self.stderr.unwrap_or(base.stderr),
        }
    }
}

impl Config {
    /// Finds and reads the configuration: `explicit` (from `--config` or `$JOBHOST_CONFIG`),
    /// else the default path when that file exists, else the built-in defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config> {
        match explicit {
            Some(path) => Config::from_file(path),
            None if Path::new(DEFAULT_CONFIG_PATH).is_file() => Config::from_file(Path::new(DEFAULT_CONFIG_PATH)),
            None => Ok(Config::default()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read config file {}: check the path given by --config or JOBHOST_CONFIG", path.display())
        })?;
        let mut config = Config::parse(&text).with_context(|| format!("invalid config file {}", path.display()))?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config> {
        // An empty (or comments-only) file is a valid "all defaults" configuration.
        let config: Config = if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            Config::default()
        } else {
            serde_yaml::from_str(text)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every value and every rule between values. Run on the file alone and again
    /// after the command line's flags are written in (see [`crate::settings`]), so a flag
    /// never skips a check the file gets; errors name the flag when a flag set the value.
    pub fn validate(&self) -> Result<()> {
        let retry = &self.retry;
        check_range(
            self.name("retry.max_attempts"),
            retry.max_attempts,
            1,
            MAX_ATTEMPTS,
            "the first run counts as one",
        )?;
        if !(0.0..=1.0).contains(&retry.backoff_jitter) {
            bail!("retry.backoff_jitter must be between 0.0 and 1.0, got {}", retry.backoff_jitter);
        }
        if retry.backoff_max.0 < retry.backoff_initial.0 {
            bail!(
                "retry.backoff_max ({}) is shorter than retry.backoff_initial ({}): raise backoff_max",
                retry.backoff_max,
                retry.backoff_initial
            );
        }
        check_range(self.name("worker.concurrency"), self.worker.concurrency, 1, MAX_CONCURRENCY, "jobs in flight")?;
        check_range(self.name("checker.max_workers"), self.checker.max_workers, 1, MAX_WORKERS, "workers per pool")?;
        if self.checker.min_workers > self.checker.max_workers {
            bail!(
                "{} ({}) is more than {} ({}): following workers count among the workers a pool \
                 may have, so lower min_workers or raise max_workers",
                self.name("checker.min_workers"),
                self.checker.min_workers,
                self.name("checker.max_workers"),
                self.checker.max_workers
            );
        }
        if self.database.busy_timeout.0 < MIN_BUSY_TIMEOUT {
            bail!(
                "{} must be at least {}, got {}: shorter waits make busy workers fail with \
                 \"database is locked\" instead of waiting their turn",
                self.name("database.busy_timeout"),
                HumanDuration(MIN_BUSY_TIMEOUT),
                self.database.busy_timeout
            );
        }
        let schema = &self.database.schema;
        let plain = schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if schema.is_empty() || schema.len() > 63 || !plain || schema.as_bytes()[0].is_ascii_digit() {
            bail!(
                "database.schema must be 1 to 63 lowercase letters, digits and _, not starting with a digit, \
                 got {schema:?}"
            );
        }
        check_range(
            self.name("database.serve_connections"),
            self.database.serve_connections,
            1,
            MAX_SERVE_CONNECTIONS,
            "connections the server keeps open",
        )?;
        for key in ["worker.heartbeat_interval", "checker.interval", "checker.start_grace"] {
            let value = match key {
                "worker.heartbeat_interval" => self.worker.heartbeat_interval,
                "checker.interval" => self.checker.interval,
                _ => self.checker.start_grace,
            };
            if value.0.is_zero() {
                bail!("{} must be longer than 0", self.name(key));
            }
        }
        if self.reaper.stale_after.0 <= self.worker.heartbeat_interval.0 {
            bail!(
                "{} ({}) must be longer than {} ({}), or live workers would be reaped between heartbeats",
                self.name("reaper.stale_after"),
                self.reaper.stale_after,
                self.name("worker.heartbeat_interval"),
                self.worker.heartbeat_interval
            );
        }
        if !(2..=MAX_PAYLOAD_LIMIT).contains(&self.jobs.max_payload.0) {
            bail!(
                "{} must be between 2B and {}, got {}",
                self.name("jobs.max_payload"),
                ByteSize(MAX_PAYLOAD_LIMIT),
                self.jobs.max_payload
            );
        }
        if self.processors.max_size.0 == 0 {
            bail!("{} must be more than 0", self.name("processors.max_size"));
        }
        let serve = &self.serve;
        serve.address().map_err(|why| anyhow::anyhow!("{} {why}", self.name("serve.listen")))?;
        if !(1 << 10..=1 << 30).contains(&serve.max_body.0) {
            bail!("{} must be between 1KiB and 1GiB, got {}", self.name("serve.max_body"), serve.max_body);
        }
        if serve.max_body.0 < self.jobs.max_payload.0 {
            bail!(
                "{} ({}) is smaller than jobs.max_payload ({}): a request could not carry the largest payload",
                self.name("serve.max_body"),
                serve.max_body,
                self.jobs.max_payload
            );
        }
        for (key, value) in [
            ("serve.request_timeout", serve.request_timeout),
            ("serve.max_wait", serve.max_wait),
            ("serve.write_timeout", serve.write_timeout),
        ] {
            if value.0 < Duration::from_secs(1) {
                bail!("{} must be at least 1s, got {value}", self.name(key));
            }
        }
        check_range(self.name("serve.max_connections"), serve.max_connections, 2, 100_000, "connections")?;
        if let Some(waiters) = serve.max_waiters
            && !(1..serve.max_connections).contains(&waiters)
        {
            bail!(
                "{} must be between 1 and {} ({}, less one, so a short request always finds a connection), got {waiters}",
                self.name("serve.max_waiters"),
                serve.max_connections - 1,
                self.name("serve.max_connections"),
            );
        }
        let retention = &self.retention;
        for (key, keep) in [
            ("retention.completed", retention.completed),
            ("retention.cancelled", retention.cancelled),
            ("retention.poisoned", retention.poisoned),
        ] {
            if keep == Keep::For(HumanDuration(Duration::ZERO)) {
                bail!(
                    "{} must be longer than 0 (a job would be deleted as it finishes, before anyone reads its \
                     result): write a duration such as 7d, or `never` to keep these jobs",
                    self.name(key)
                );
            }
        }
        if retention.interval.0.is_zero() {
            bail!("{} must be longer than 0", self.name("retention.interval"));
        }
        self.processors.limits.validate(self, "processors.limits")?;
        self.validate_schedules()?;
        for (name, overrides) in &self.processors.overrides {
            crate::names::check_processor(name).map_err(|err| anyhow::anyhow!("processors.overrides: {err}"))?;
            let key = format!("processors.overrides.{name}");
            overrides.apply_to(self.processors.limits).validate(self, &key)?;
            crate::grants::validate(&key, &overrides.env, &overrides.secrets).map_err(anyhow::Error::msg)?;
            if let Some(flow) = &overrides.flow {
                FlowLimit::new(name, flow, &format!("{key}.flow")).map_err(anyhow::Error::msg)?;
            }
            if let Some(http) = &overrides.http {
                if http.allow.is_empty() {
                    bail!("{key}.http.allow is empty; list the hosts the processor may call, or remove http");
                }
                if http.timeout.0.is_zero() || http.max_response.0 == 0 || http.max_requests == 0 {
                    bail!(
                        "{key}.http: timeout, max_response and max_requests must be more than 0 \
                         (remove http to grant no network)"
                    );
                }
            }
        }
        Ok(())
    }

    /// The rules a schedule's job meets are those of every job (the store checks them again
    /// as it queues each tick's job); checked here so a bad schedule stops the process at once.
    fn validate_schedules(&self) -> Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as i64);
        for (name, schedule) in &self.schedules {
            crate::names::check_schedule(name).map_err(|err| anyhow::anyhow!("schedules: {err}"))?;
            let key = format!("schedules.{name}");
            crate::names::check_processor(&schedule.processor)
                .map_err(|err| anyhow::anyhow!("{key}.processor: {err}"))?;
            crate::names::check_label(&schedule.pool).map_err(|err| anyhow::anyhow!("{key}.pool {err}"))?;
            let payload = schedule.payload_json();
            if payload.len() as u64 > self.jobs.max_payload.0 {
                bail!(
                    "{key}.payload is {} bytes as JSON, more than jobs.max_payload ({}): shorten it, or raise \
                     jobs.max_payload",
                    payload.len(),
                    self.jobs.max_payload
                );
            }
            // Nesting deeper than every reader of a payload (serde_json) takes.
            serde_json::from_str::<serde_json::Value>(&payload)
                .map_err(|err| anyhow::anyhow!("{key}.payload cannot be read back as JSON ({err}): nest it less"))?;
            if let Some(max_attempts) = schedule.max_attempts {
                check_range(
                    format!("{key}.max_attempts"),
                    max_attempts,
                    1,
                    MAX_ATTEMPTS,
                    "the first run counts as one",
                )?;
            }
            if schedule.next_tick(now).is_none() {
                bail!(
                    "{key}.cron {:?} has no tick within a year: check its day-of-month and month fields",
                    schedule.cron.as_str()
                );
            }
        }
        Ok(())
    }

    /// How to call `key` in an error: the flag that set it, or the key itself.
    pub fn name(&self, key: &str) -> String {
        match self.set_by_flag.get(key) {
            Some(flag) => (*flag).to_string(),
            None => key.to_string(),
        }
    }

    /// Every processor's flow limits, by processor name.
    pub fn flow_limits(&self) -> Vec<FlowLimit> {
        self.processors
            .overrides
            .iter()
            .filter_map(|(name, overrides)| Some((name, overrides.flow.as_ref()?)))
            .map(|(name, flow)| {
                FlowLimit::new(name, flow, "flow").expect("flow limits are checked when the config is loaded")
            })
            .collect()
    }

    /// The limits that apply to processor `name`: the defaults with its overrides applied.
    pub fn limits_for(&self, name: &str) -> Limits {
        match self.processors.overrides.get(name) {
            Some(overrides) => overrides.apply_to(self.processors.limits),
            None => self.processors.limits,
        }
    }

    /// What processor `name`'s jobs read on stdin.
    pub fn input_for(&self, name: &str) -> ProcessorInput {
        self.processors.overrides.get(name).map_or_else(ProcessorInput::default, |overrides| overrides.input)
    }

    /// The capabilities processor `name` is granted: nothing unless its override lists them.
    pub fn grants_for(&self, name: &str) -> Grants {
        match self.processors.overrides.get(name) {
            Some(overrides) => {
                Grants { env: overrides.env.clone(), secrets: overrides.secrets.clone(), http: overrides.http.clone() }
            }
            None => Grants::default(),
        }
    }

    /// Where compiled modules are cached.
    pub fn cache_dir(&self) -> PathBuf {
        match &self.processors.cache_dir {
            Some(dir) => dir.clone(),
            None => self.database.data_dir().join("cache"),
        }
    }
}

impl Limits {
    /// Checks the limits found at `key` (e.g. `processors.limits`) of `config`.
    fn validate(&self, config: &Config, key: &str) -> Result<()> {
        let name = |limit: &str| config.name(&format!("{key}.{limit}"));
        if self.fuel == 0 {
            bail!("{} must be more than 0", name("fuel"));
        }
        if self.timeout.0.is_zero() {
            bail!("{} must be longer than 0", name("timeout"));
        }
        if !(64 << 10..=4 << 30).contains(&self.memory.0) {
            bail!(
                "{} must be between 64KiB (one wasm page) and 4GiB (the 32-bit wasm address space), got {}",
                name("memory"),
                self.memory
            );
        }
        Ok(())
    }
}

/// Most attempts a job can be given: enough for any retry schedule, and far from the
/// integer widths the store counts attempts in.
pub const MAX_ATTEMPTS: u32 = 10_000;
/// Most jobs one worker keeps in flight; each holds an instance slot and up to its memory cap.
pub const MAX_CONCURRENCY: u32 = 1_000;
/// Most workers the checker keeps alive for one pool.
pub const MAX_WORKERS: u32 = 1_000;
/// The most connections `jobhost serve` may open: each is a backend process on a
/// PostgreSQL server, whose `max_connections` (100 by default) every machine shares.
pub const MAX_SERVE_CONNECTIONS: u32 = 64;
/// Shortest wait for another process's write lock: busy workers hold it for milliseconds.
const MIN_BUSY_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest `jobs.max_payload` allowed.
const MAX_PAYLOAD_LIMIT: u64 = 64 << 20;

fn check_range(name: String, value: u32, min: u32, max: u32, what: &str) -> Result<()> {
    if !(min..=max).contains(&value) {
        bail!("{name} must be between {min} and {max} ({what}), got {value}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_gives_the_defaults() {
        let config = Config::parse("# nothing here\n").unwrap();
        assert_eq!(config.retry.max_attempts, 3);
        assert_eq!(config.processors.limits, Limits::default());
    }

    #[test]
    fn the_documented_config_file_states_exactly_the_defaults() {
        let documented = Config::parse(include_str!("../../../config/jobhost.yml")).unwrap();
        assert_eq!(format!("{documented:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn grants_are_read_with_their_defaults_and_given_only_to_their_processor() {
        let config = Config::parse(
            "processors:\n  overrides:\n    fetch:\n      env: {GREETING: hi}\n      secrets: [API_TOKEN]\n      \
             http: {allow: [\"https://api.example.com\", \"127.0.0.1:8080\"], max_requests: 3}\n",
        )
        .unwrap();
        let grants = config.grants_for("fetch");
        assert_eq!(grants.env.get("GREETING").map(String::as_str), Some("hi"));
        assert_eq!(grants.secrets, ["API_TOKEN"]);
        let http = grants.http.expect("an http grant");
        assert_eq!(
            http.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["https://api.example.com", "127.0.0.1:8080"]
        );
        assert_eq!((http.max_requests, http.timeout.0, http.max_response.0), (3, Duration::from_secs(10), 4 << 20));
        assert_eq!(config.grants_for("other"), Grants::default(), "nothing is granted unless listed");
    }

    #[test]
    fn bad_grants_are_refused_naming_the_key() {
        let refused = |overrides: &str| {
            let text = format!("processors:\n  overrides:\n    fetch:\n      {overrides}\n");
            format!("{:#}", Config::parse(&text).unwrap_err())
        };
        let bad_host = refused("http: {allow: [\"ftp://x.com\"]}");
        assert!(bad_host.contains("\"ftp://x.com\"") && bad_host.contains("host:port"), "{bad_host}");
        let empty = refused("http: {allow: []}");
        assert!(empty.contains("processors.overrides.fetch.http.allow is empty"), "{empty}");
        let zero = refused("http: {allow: [x.com], max_requests: 0}");
        assert!(zero.contains("processors.overrides.fetch.http"), "{zero}");
        let job_id = refused("env: {JOB_ID: x}");
        assert!(job_id.contains("processors.overrides.fetch.env") && job_id.contains("set by jobhost"), "{job_id}");
        let unknown = refused("http: {allow: [x.com], max_redirects: 1}");
        assert!(unknown.contains("max_redirects"), "{unknown}");
    }

    #[test]
    fn the_input_a_processor_reads_is_the_payload_unless_its_override_asks_for_the_envelope() {
        let config = Config::parse("processors:\n  overrides:\n    merge:\n      input: envelope\n").unwrap();
        assert_eq!(config.input_for("merge"), ProcessorInput::Envelope);
        assert_eq!(config.input_for("other"), ProcessorInput::Payload);
        let err = Config::parse("processors:\n  overrides:\n    merge:\n      input: parents\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("processors.overrides.merge.input") && message.contains("`envelope`"), "{message}");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse("retry:\n  max_attempts: 2\n  max_atempts: 3\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("max_atempts"), "{message}");
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let err = Config::parse("processors:\n  limits:\n    timeout: soon\n").unwrap_err();
        let message = format!("{err:#}");
        assert!(message.contains("processors.limits.timeout"), "{message}");
        assert!(message.contains("line 3"), "{message}");
    }

    #[test]
    fn overrides_change_only_the_keys_they_name() {
        let config =
            Config::parse("processors:\n  limits: {fuel: 1000}\n  overrides:\n    slow: {timeout: 5m}\n").unwrap();
        let slow = config.limits_for("slow");
        assert_eq!(slow.fuel, 1000);
        assert_eq!(slow.timeout.0, Duration::from_secs(300));
        assert_eq!(config.limits_for("other").timeout, Limits::default().timeout);
    }

    #[test]
    fn inconsistent_values_are_refused() {
        assert!(Config::parse("retry: {max_attempts: 0}").is_err());
        assert!(Config::parse("retry: {backoff_jitter: 1.5}").is_err());
        assert!(Config::parse("reaper: {stale_after: 1s}\nworker: {heartbeat_interval: 2s}").is_err());
        assert!(Config::parse("processors: {limits: {memory: 1KiB}}").is_err());
        assert!(Config::parse("processors: {max_size: 0}").is_err());
        assert!(Config::parse("retry: {max_attempts: 4294967295}").is_err());
        assert!(Config::parse("worker: {concurrency: 100000}").is_err());
        assert!(Config::parse("checker: {interval: 0}").is_err());
        assert!(Config::parse("jobs: {max_payload: 1GiB}").is_err());
    }

    #[test]
    fn long_polls_always_leave_a_connection_for_short_requests() {
        let serve = Config::parse("").unwrap().serve;
        assert_eq!((serve.max_connections, serve.waiters_for(serve.max_connections)), (10_000, 5_000));
        let serve = Config::parse("serve: {max_connections: 100, max_waiters: 90}").unwrap().serve;
        assert_eq!(serve.waiters_for(100), 90);
        // Fewer connections than configured (a low open-files limit) still leave one.
        assert_eq!(serve.waiters_for(50), 49);
        for (yaml, wanted) in [
            ("serve: {max_connections: 100, max_waiters: 100}", "serve.max_waiters must be between 1 and 99"),
            ("serve: {max_waiters: 0}", "serve.max_waiters must be between 1 and 9999"),
            ("serve: {max_connections: 1}", "serve.max_connections must be between 2 and 100000"),
            ("serve: {write_timeout: 500ms}", "serve.write_timeout must be at least 1s"),
        ] {
            let message = format!("{:#}", Config::parse(yaml).unwrap_err());
            assert!(message.contains(wanted), "{yaml}: {message}");
        }
    }

    #[test]
    fn a_busy_timeout_too_short_to_wait_out_a_busy_worker_is_refused() {
        let message = format!("{:#}", Config::parse("database: {busy_timeout: 0}").unwrap_err());
        assert!(message.contains("database.busy_timeout must be at least 1s"), "{message}");
    }

    #[test]
    fn serve_connections_out_of_range_are_refused() {
        for value in [0, MAX_SERVE_CONNECTIONS + 1] {
            let message =
                format!("{:#}", Config::parse(&format!("database: {{serve_connections: {value}}}")).unwrap_err());
            assert!(message.contains("database.serve_connections must be between 1 and 64"), "{message}");
        }
        assert_eq!(Config::parse("database: {serve_connections: 1}").unwrap().database.serve_connections, 1);
    }

    #[test]
    fn an_override_with_an_invalid_processor_name_is_refused() {
        let message = format!("{:#}", Config::parse("processors: {overrides: {'../x': {fuel: 5}}}").unwrap_err());
        assert!(message.contains("processors.overrides: invalid processor name \"../x\""), "{message}");
    }

    #[test]
    fn a_schedule_is_read_with_its_defaults() {
        let config =
            Config::parse("schedules:\n  nightly-report:\n    cron: \"0 3 * * *\"\n    processor: report\n").unwrap();
        let schedule = &config.schedules["nightly-report"];
        assert_eq!(schedule.cron.as_str(), "0 3 * * *");
        assert_eq!(schedule.timezone.name(), "UTC");
        assert_eq!((schedule.pool.as_str(), schedule.payload_json().as_str()), ("default", "{}"));
        assert_eq!((schedule.priority, schedule.max_attempts), (0, None));
        assert_eq!(schedule.catch_up, crate::schedule::CatchUp::Skip);
        let config = Config::parse(
            "schedules:\n  hourly:\n    cron: '0 * * * *'\n    timezone: Europe/Berlin\n    processor: echo\n    \
             payload: {\"kind\": \"daily\", n: [1, 2]}\n    pool: reports\n    catch_up: once\n",
        )
        .unwrap();
        let schedule = &config.schedules["hourly"];
        assert_eq!(schedule.payload_json(), r#"{"kind":"daily","n":[1,2]}"#);
        assert_eq!((schedule.timezone.name(), schedule.catch_up), ("Europe/Berlin", crate::schedule::CatchUp::Once));
    }

    #[test]
    fn bad_schedules_are_refused_naming_the_schedule_and_key() {
        let refused = |entry: &str| {
            let text = format!("jobs: {{max_payload: 16}}\nschedules:\n  {entry}\n");
            format!("{:#}", Config::parse(&text).unwrap_err())
        };
        for (entry, wanted) in [
            ("nightly: {cron: '0 3 * *', processor: echo}", "invalid cron expression \"0 3 * *\""),
            ("nightly: {cron: '0 3 * * *', timezone: Berlin, processor: echo}", "unknown time zone \"Berlin\""),
            ("nightly: {cron: '0 3 * * *', processor: '../x'}", "schedules.nightly.processor: invalid processor name"),
            ("nightly: {cron: '0 3 * * *', processor: echo, pool: ''}", "schedules.nightly.pool must be 1 to 128"),
            (
                "nightly: {cron: '0 3 * * *', processor: echo, payload: {text: 'far too long'}}",
                "schedules.nightly.payload is 23 bytes",
            ),
            (
                "nightly: {cron: '0 3 * * *', processor: echo, max_attempts: 0}",
                "schedules.nightly.max_attempts must be between 1",
            ),
            ("nightly: {cron: '0 3 * * *', processor: echo, catch_up: twice}", "unknown variant `twice`"),
            ("nightly: {cron: '0 3 * * *', processor: echo, every: 1d}", "unknown field `every`"),
            ("nightly: {processor: echo}", "missing field `cron`"),
            ("'night ly': {cron: '0 3 * * *', processor: echo}", "schedules: invalid schedule name \"night ly\""),
            (
                "never: {cron: '0 0 30 2 *', processor: echo}",
                "schedules.never.cron \"0 0 30 2 *\" has no tick within a year",
            ),
        ] {
            let message = refused(entry);
            assert!(message.contains("schedules") && message.contains(wanted), "{entry}: {message}");
        }
    }

    #[test]
    fn retention_keeps_completed_and_cancelled_a_week_and_poisoned_forever_unless_told() {
        let retention = Config::parse("").unwrap().retention;
        let week = Keep::For(HumanDuration(Duration::from_secs(7 * 86_400)));
        assert_eq!((retention.completed, retention.cancelled, retention.poisoned), (week, week, Keep::Forever));
        let retention = Config::parse("retention: {completed: 1s, cancelled: never, poisoned: 30d}").unwrap().retention;
        assert_eq!(retention.completed, Keep::For(HumanDuration(Duration::from_secs(1))));
        assert_eq!(retention.cancelled, Keep::Forever);
        assert_eq!(retention.poisoned, Keep::For(HumanDuration(Duration::from_secs(30 * 86_400))));
        for (yaml, wanted) in [
            ("retention: {completed: 0}", "retention.completed must be longer than 0"),
            ("retention: {poisoned: forever}", "or write `never` to keep these jobs"),
            ("retention: {interval: 0}", "retention.interval must be longer than 0"),
        ] {
            let message = format!("{:#}", Config::parse(yaml).unwrap_err());
            assert!(message.contains(wanted), "{yaml}: {message}");
        }
    }

    #[test]
    fn errors_name_the_flag_that_set_a_value() {
        let mut config = Config::default();
        config.reaper.stale_after = HumanDuration(Duration::from_secs(2));
        config.set_by_flag.insert("reaper.stale_after".into(), "--stale-after");
        let message = format!("{:#}", config.validate().unwrap_err());
        assert!(
            message.starts_with("--stale-after (2s) must be longer than worker.heartbeat_interval (5s)"),
            "{message}"
        );
    }
}
