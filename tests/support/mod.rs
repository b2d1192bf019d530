//! Shared helpers for the black-box tests: each test gets a fresh folder holding its own
//! database, processors folder and config, and drives the real `jobhost` binary in it.
#![allow(dead_code)] // Each test binary uses its own subset of these helpers.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const JOBHOST: &str = env!("CARGO_BIN_EXE_jobhost");

/// The fixtures folder of test processors (`tests/fixtures/processors`).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/processors")
}

/// Where a test's pool lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `<tmp>/data/jobhost.db`.
    Sqlite,
    /// A fresh schema on the server `$JOBHOST_TEST_PG` names (`scripts/test` starts one).
    Postgres,
}

/// The server the PostgreSQL tests use. They fail without one; they are never skipped.
pub fn test_server() -> String {
    std::env::var("JOBHOST_TEST_PG").unwrap_or_else(|_| {
        panic!("set JOBHOST_TEST_PG=postgres://… or run ./scripts/test, which starts a PostgreSQL server")
    })
}

/// Registers each named test, a `fn(Backend)`, once per backend: `sqlite::NAME`, `postgres::NAME`.
#[macro_export]
macro_rules! on_both_backends {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $test() { super::$test(super::support::Backend::Sqlite) } )*
        }
        mod postgres {
            $( #[test] fn $test() { super::$test(super::support::Backend::Postgres) } )*
        }
    };
}

/// A scratch pool: its database (see [`Backend`]), `<tmp>/processors/`, `<tmp>/jobhost.yml`,
/// and `<tmp>/data/` for this machine's logs and compile cache.
pub struct Pool {
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    location: String,
    /// The pool's schema on a PostgreSQL server.
    schema: Option<String>,
}

impl Pool {
    /// A SQLite pool whose config is `config_yaml` (empty means all defaults).
    pub fn new(config_yaml: &str) -> Pool {
        Pool::on(Backend::Sqlite, config_yaml)
    }

    /// A pool on `backend` whose config is `config_yaml`, which must not set `database`.
    pub fn on(backend: Backend, config_yaml: &str) -> Pool {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("processors")).unwrap();
        let (location, schema) = match backend {
            Backend::Sqlite => (dir.path().join("data/jobhost.db").display().to_string(), None),
            Backend::Postgres => (test_server(), Some(format!("t_{}", uuid::Uuid::new_v4().simple()))),
        };
        let config = match &schema {
            Some(schema) => format!("database: {{schema: {schema}}}\n{config_yaml}"),
            None => config_yaml.to_owned(),
        };
        std::fs::write(dir.path().join("jobhost.yml"), config).unwrap();
        Pool { dir, backend, location, schema }
    }

    /// The same pool seen from another machine: the same database and config, but a folder
    /// (processors, logs, compile cache) of its own.
    pub fn another_host(&self) -> Pool {
        self.reached_at(&self.location)
    }

    /// The same config from a folder of its own, with `--db` naming `location`: the pool
    /// reached as another user, or a database next to it.
    pub fn reached_at(&self, location: &str) -> Pool {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("processors")).unwrap();
        std::fs::copy(self.path("jobhost.yml"), dir.path().join("jobhost.yml")).unwrap();
        Pool { dir, backend: self.backend, location: location.to_owned(), schema: self.schema.clone() }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The database as `--db` names it: a path or a URL.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The rows `sql` returns from this pool's PostgreSQL server, one line each (psql, which
    /// comes with the server, runs it); for tests of what only the server can show.
    pub fn server_rows(&self, sql: &str) -> Vec<String> {
        assert_eq!(self.backend, Backend::Postgres, "only a PostgreSQL pool has a server");
        let output = Command::new("psql").args(["-AtX", "-v", "ON_ERROR_STOP=1", &self.location, "-c", sql]).output();
        let output = output.expect("psql (installed with PostgreSQL) runs");
        assert!(output.status.success(), "psql failed on {sql}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).lines().map(str::to_owned).collect()
    }

    /// The pool's schema on its PostgreSQL server, for [`Pool::server_rows`].
    pub fn schema(&self) -> &str {
        self.schema.as_deref().expect("only a PostgreSQL pool has a schema")
    }

    /// The SQLite file; only for tests of what is SQLite's alone.
    pub fn db(&self) -> PathBuf {
        assert_eq!(self.backend, Backend::Sqlite, "only a SQLite pool has a database file");
        PathBuf::from(&self.location)
    }

    /// Copies fixture `name` (a `.wat` or `.wasm` file) into the processors folder as
    /// `<as_name>.wasm`; wasmtime compiles WAT text as well as binary modules.
    pub fn add_processor(&self, fixture: &str, as_name: &str) {
        std::fs::copy(fixtures().join(fixture), self.path(&format!("processors/{as_name}.wasm")))
            .unwrap_or_else(|e| panic!("cannot copy fixture {fixture}: {e}"));
    }

    /// `jobhost` with this pool's config, database and processors folder.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(JOBHOST);
        command
            .current_dir(self.dir.path())
            .env_remove("JOBHOST_CONFIG")
            .env_remove("JOBHOST_DB")
            .env_remove("JOBHOST_PROCESSORS")
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(self.path("jobhost.yml"))
            .arg("--db")
            .arg(&self.location)
            .arg("--processors-dir")
            .arg(self.path("processors"))
            .args(args)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run jobhost")
    }

    /// Runs and insists on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "jobhost {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }

    /// Runs, insists on failure, returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "jobhost {args:?} should have failed:\nstdout: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8(output.stderr).expect("utf-8 stderr")
    }

    /// Runs with `--json` appended and parses the (single-line) output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.ok(&args);
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{stdout}"))
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn jobhost")
    }

    /// Spawns `jobhost`; the process is killed if the test ends before it exits, so a hung
    /// `jobhost` fails its test instead of outliving it.
    pub fn spawn_guarded(&self, args: &[&str]) -> Guarded {
        Guarded(Some(self.spawn(args)))
    }

    /// Runs `jobhost` and also returns the peak resident set of that one process.
    #[expect(clippy::zombie_processes, reason = "the child is reaped by wait4, which also reports its rusage")]
    pub fn run_with_peak_rss(&self, args: &[&str]) -> (Output, u64) {
        let mut child = self.spawn(args);
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr_reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            stderr.read_to_end(&mut bytes).expect("read stderr");
            bytes
        });
        let mut stdout = Vec::new();
        child.stdout.take().expect("piped stdout").read_to_end(&mut stdout).expect("read stdout");
        // wait4 rather than Child::wait: its rusage covers this one child, where
        // getrusage(RUSAGE_CHILDREN) covers every child the test binary has waited for.
        let mut raw_status = 0;
        // SAFETY: wait4 only writes the status and the struct it is given; the child is ours
        // and not yet reaped (std never waits for it after this).
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            assert_eq!(libc::wait4(child.id() as i32, &mut raw_status, 0, &mut usage), child.id() as i32);
            usage
        };
        let output = Output { status: ExitStatus::from_raw(raw_status), stdout, stderr: stderr_reader.join().unwrap() };
        // Linux reports kibibytes.
        (output, usage.ru_maxrss as u64 * 1024)
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    /// Polls `jobhost status` until `done` holds for it, failing after `timeout`.
    pub fn wait_for_status(&self, timeout: Duration, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; last status: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every job, with its full record (`jobs show --json`).
    pub fn all_jobs(&self) -> Vec<Value> {
        let list = self.json(&["jobs", "list", "--limit", "100000"]);
        list.as_array().unwrap().iter().map(|job| self.json(&["jobs", "show", job["id"].as_str().unwrap()])).collect()
    }
}

/// Processes whose command line holds both `needle` and `and`: the workers a checker of a
/// test started, found by the test's own paths in their arguments.
pub fn processes_naming(needle: &str, and: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && cmdline.contains(and) {
            found.push(pid);
        }
    }
    found
}

impl Drop for Pool {
    /// Workers a checker started run in sessions of their own and outlive it; a following
    /// one would outlive the test too, so those of this pool are killed with it.
    fn drop(&mut self) {
        for pid in processes_naming(&self.path("jobhost.yml").display().to_string(), " work ") {
            // SAFETY: kill(2) on a pid read from /proc; a process gone meanwhile is ESRCH.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// A PostgreSQL server of a test's own (`scripts/postgres`), for faults that would hurt the
/// other tests on the shared one, such as a restart; stopped and deleted when dropped.
pub struct PrivateServer {
    dir: tempfile::TempDir,
    url: String,
}

impl PrivateServer {
    pub fn start() -> PrivateServer {
        // Under /tmp: the server's unix socket path must stay short, and when the tests run
        // as root the server runs as `postgres`, which must reach the folder.
        let dir = tempfile::Builder::new().prefix("jobhost-pg-").tempdir_in("/tmp").expect("temp dir");
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let output = postgres_script("start", dir.path()).unwrap_or_else(|failed| panic!("{failed}"));
        let url = String::from_utf8(output.stdout).expect("a URL").trim().to_owned();
        PrivateServer { dir, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Restarts the server on its port: every session ends, and connecting fails until it is up.
    pub fn restart(&self) {
        postgres_script("restart", self.dir.path()).unwrap_or_else(|failed| panic!("{failed}"));
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        // Not a panic: a test that failed is dropping it, and a second panic would abort.
        let _ = postgres_script("stop", self.dir.path());
    }
}

/// Runs `scripts/postgres ACTION` on the server kept in `dir`/server; its output, or why it failed.
fn postgres_script(action: &str, dir: &Path) -> Result<Output, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/postgres");
    let output = Command::new(script).arg(action).arg(dir.join("server")).output();
    let output = output.map_err(|err| format!("cannot run scripts/postgres: {err}"))?;
    if !output.status.success() {
        return Err(format!("scripts/postgres {action} failed: {}", String::from_utf8_lossy(&output.stderr)));
    }
    Ok(output)
}

/// `location` (a PostgreSQL URL) with its sessions named `name`, so a test can find them in
/// `pg_stat_activity` and end them ([`Pool::end_sessions_named`]).
pub fn sessions_named(location: &str, name: &str) -> String {
    let separator = if location.contains('?') { '&' } else { '?' };
    format!("{location}{separator}application_name={name}")
}

impl Pool {
    /// Ends every session on this pool's server named `name` (see [`sessions_named`]), as an
    /// administrator or a failover would; whether each one was ended, as the server says.
    pub fn end_sessions_named(&self, name: &str) -> Vec<bool> {
        let ended = self.server_rows(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
        ));
        ended.iter().map(|ended| ended == "t").collect()
    }
}

/// A TCP proxy in front of a PostgreSQL server that can lose an answer: once told to, it
/// cuts the next connection on which the server sends anything, without passing that on.
/// The statement it answered was carried out; only its client never learns so, as when a
/// network fails between the two.
pub struct LossyProxy {
    port: u16,
    lose_next: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LossyProxy {
    /// Listens on a free port of 127.0.0.1 and forwards each connection to `target` (host:port).
    pub fn start(target: &str) -> LossyProxy {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let lose_next = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let target = target.to_owned();
        let losing = lose_next.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = std::net::TcpStream::connect(&target) else { continue };
                let (client_in, server_in) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pump(client_in, server, None));
                let losing = losing.clone();
                std::thread::spawn(move || pump(server_in, client, Some(&losing)));
            }
        });
        LossyProxy { port, lose_next }
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn in_front_of(&self, url: &str) -> String {
        let (scheme_and_user, rest) = url.split_once('@').expect("a URL with user@host");
        let path = rest.find('/').map_or("", |at| &rest[at..]);
        format!("{scheme_and_user}@127.0.0.1:{}{path}", self.port)
    }

    /// The next answer the server sends, on any connection, is lost with its connection.
    pub fn lose_next_answer(&self) {
        self.lose_next.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends; with `losing` set, cuts both instead of passing
/// a chunk on.
fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, losing: Option<&std::sync::atomic::AtomicBool>) {
    use std::io::Write;
    let mut buffer = [0u8; 16 * 1024];
    while let Ok(read) = from.read(&mut buffer) {
        let lost = losing.is_some_and(|losing| losing.swap(false, std::sync::atomic::Ordering::SeqCst));
        if read == 0 || lost || to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(std::net::Shutdown::Both);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// A `jobhost` process that is killed and reaped when dropped, unless it was waited for.
pub struct Guarded(Option<Child>);

impl Guarded {
    pub fn new(child: Child) -> Guarded {
        Guarded(Some(child))
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("not yet waited for").id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("not yet waited for")
    }

    /// Whether it has not exited yet.
    pub fn is_running(&mut self) -> bool {
        self.child_mut().try_wait().expect("try_wait").is_none()
    }

    /// Its output once it exits; fails the test (and kills it) if that takes over `timeout`.
    pub fn wait_at_most(mut self, timeout: Duration, what: &str) -> Output {
        let mut child = self.0.take().expect("waited for once");
        let deadline = Instant::now() + timeout;
        while child.try_wait().expect("try_wait").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let output = child.wait_with_output().expect("reap the killed jobhost");
                panic!(
                    "jobhost did not exit within {timeout:?} ({what}):\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.wait_with_output().expect("collect jobhost's output")
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `child`'s stdout, line by line, from a thread of its own, so a test can wait for each line
/// with a timeout.
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    lines_of(child.stdout.take().expect("piped stdout"))
}

/// `child`'s stderr, as [`stdout_lines`].
pub fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    lines_of(child.stderr.take().expect("piped stderr"))
}

fn lines_of(reader: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(reader)).map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    received
}

/// Sends `signal` to a running `jobhost`.
pub fn signal(pid: u32, signal: i32) {
    // SAFETY: plain kill(2) on a child the test started and has not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill failed");
}

/// Makes a FIFO at `path`: opening it for reading blocks until a writer comes.
pub fn make_fifo(path: &Path) {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in the path");
    // SAFETY: mkfifo reads the NUL-terminated path and nothing else.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo failed");
}

pub fn jobs_count(status: &Value, which: &str) -> u64 {
    status["jobs"][which].as_u64().unwrap()
}

/// A running `jobhost serve` on this pool, on a free port of 127.0.0.1; stopped (SIGTERM,
/// then reaped) when dropped.
pub struct Server {
    process: Guarded,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Pool {
    /// Starts `jobhost serve --listen 127.0.0.1:0 ARGS` and waits for the one line it prints
    /// once it accepts connections (`listening on http://…`).
    pub fn serve(&self, args: &[&str]) -> Server {
        self.serve_with(args, &[])
    }

    /// [`Pool::serve`] with extra environment variables (e.g. `JOBHOST_TOKEN`).
    pub fn serve_with(&self, args: &[&str], env: &[(&str, &str)]) -> Server {
        use std::io::BufRead;
        let mut command = self.command(&["serve", "--listen", "127.0.0.1:0"]);
        command.args(args).env_remove("JOBHOST_TOKEN").env_remove("JOBHOST_READ_TOKEN").envs(env.iter().copied());
        // Its log goes to a file, so a chatty server never blocks on a full pipe.
        let log = std::fs::File::create(self.path("serve.log")).expect("create serve.log");
        let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().expect("spawn jobhost serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut process = Guarded(Some(child));
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("read jobhost serve's stdout");
        let Some(base) = line.trim().strip_prefix("listening on ") else {
            let _ = process.0.take().unwrap().wait();
            let log = std::fs::read_to_string(self.path("serve.log")).unwrap_or_default();
            panic!("jobhost serve did not start: {line}{log}");
        };
        Server { base: base.to_owned(), process }
    }
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// Sends SIGTERM and returns how the server exited (within `timeout`).
    pub fn stop(self, timeout: Duration) -> ExitStatus {
        signal(self.process.id(), libc::SIGTERM);
        self.process.wait_at_most(timeout, "jobhost serve stopping on SIGTERM").status
    }
}

/// A processor, as WAT text, that writes `bytes` to stderr and exits 1. `bytes` is written
/// in WAT's string syntax (`\00` is a NUL byte); `length` is how many bytes that makes.
pub fn writes_stderr_then_fails(bytes: &str, length: u32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{bytes}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {length}))
    (drop (call $write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    (call $exit (i32.const 1))))"#
    )
}
