//! Section 9, components: what WASI 0.2 components cost beside preview1 modules, in Rust and
//! in Python, and how a worker fares when its jobs wait on the network.
//!
//! The components are built by the section itself, with `scripts/components build
//! target/bench-components NAME…` (pinned toolchains under target/toolchains), so a fresh
//! machine needs nothing more than `./scripts/bench`. One `jobhost processors --compile` then
//! fills a compile cache that every measurement below shares, as on a machine where the
//! processors were deployed with it: the Python component alone takes tens of seconds of
//! Cranelift, which is a deploy cost, not a per-job one.
//!
//! - Rust component against module: the built-in echo (a preview1 module) and
//!   `echo-component` (the same Rust code built for wasm32-wasip2), each run in-process exactly
//!   as the sandbox section runs echo — loaded once through the processors registry, then one
//!   `Sandbox::run` per sample — taking turns, so that a change in the shared machine's load
//!   hits both alike. The target is the component at most twice the module's p50.
//! - Python: `echo-python` (componentize-py) in-process the same way; then a real `jobhost
//!   work` process draining a pool of its jobs, timed from spawn to the last `finished_at`;
//!   then `jobhost work --once` processes, each running one of its jobs, from spawn to exit,
//!   and the load of the component from the compile cache that such a process does first.
//!   The target, "a Python job measured in milliseconds", is read as a p50 in single digits.
//! - HTTP: `example-rust-component` makes one GET per job to a server in this process (its own
//!   thread and tokio runtime) that answers every request after 20 ms, under one `jobhost
//!   work` with 64 jobs in flight. Were the worker blocked while a job waits, it would manage
//!   50 jobs/s; the 64 ÷ 20 ms bound is 3,200. Its CPU time per job (from `wait4`) shows how
//!   much of the core it needed for that.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use jobhost_core::config::Config;
use jobhost_sandbox::processors::Registry;
use jobhost_sandbox::{JobInput, Outcome, Sandbox};
use jobhost_store::JobStatus;

use crate::cold_start::time_process;
use crate::report::{Report, Row, micros, millis, number, per_second, times};
use crate::support::{Bench, Pool, epoch_millis, list, median_duration, percentile_duration, run_to_end, status};

pub const SECTION: &str = "components";
const PAYLOAD: &[u8] = br#"{"seq":1}"#;
const WARM_UP: usize = 20;
const RUST_COMPONENT: &str = "echo-component";
const PYTHON: &str = "echo-python";
const HTTP_PROCESSOR: &str = "example-rust-component";
/// Where `scripts/components build` writes them, under the workspace root.
const BUILT_DIR: &str = "target/bench-components";
const TARGET_RATIO: f64 = 2.0;
/// "A Python job measured in milliseconds": a job's run, in single-digit milliseconds.
const PYTHON_TARGET: Duration = Duration::from_millis(10);
/// Loads of the Python component from the compile cache timed, each by a fresh registry.
const LOADS: usize = 5;
/// Python jobs are CPU-bound: a few in flight share the worker's core and their commits.
const PYTHON_CONCURRENCY: u32 = 4;
const HTTP_CONCURRENCY: u32 = 64;
const HTTP_DELAY: Duration = Duration::from_millis(20);

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let built = build_components(bench)?;
    // One compile cache for the whole section (a private temporary folder, as the cache requires).
    let cache = tempfile::tempdir().context("cannot create a temporary folder for the compile cache")?;
    let cache_yaml = format!("processors:\n  cache_dir: {}\n", yaml_string(cache.path()));
    compile_ahead(bench, &built, &cache_yaml)?;

    rust_component_against_module(bench, report, &built, cache.path())?;
    python(bench, report, &built, cache.path(), &cache_yaml)?;
    http(bench, report, &built, &cache_yaml)?;
    Ok(())
}

/// Builds the section's components with the pinned toolchains; returns their folder.
fn build_components(bench: &Bench) -> Result<PathBuf> {
    let out = bench.root.join(BUILT_DIR);
    let status = Command::new(bench.root.join("scripts/components"))
        .arg("build")
        .arg(&out)
        .args([RUST_COMPONENT, PYTHON, HTTP_PROCESSOR])
        .current_dir(&bench.root)
        .stdin(Stdio::null())
        // It prints the files it wrote on stdout: not this benchmark's output.
        .stdout(Stdio::null())
        .status()
        .context("cannot run scripts/components")?;
    ensure!(status.success(), "`scripts/components build {BUILT_DIR}` failed ({status}); its messages are above");
    Ok(out)
}

/// `jobhost processors --compile` on a pool holding the section's components, into the shared cache.
fn compile_ahead(bench: &Bench, built: &Path, cache_yaml: &str) -> Result<()> {
    let pool = Pool::new(bench, cache_yaml)?;
    for name in [RUST_COMPONENT, PYTHON, HTTP_PROCESSOR] {
        install(&pool, built, name)?;
    }
    let started = Instant::now();
    pool.ok(&["processors", "--compile"])?;
    println!("  compiled the components ahead in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Copies `NAME.wasm` from the built components into the pool's processors folder.
fn install(pool: &Pool, built: &Path, name: &str) -> Result<()> {
    let from = built.join(format!("{name}.wasm"));
    std::fs::copy(&from, pool.path(&format!("processors/{name}.wasm")))
        .with_context(|| format!("cannot copy {} into a benchmark pool", from.display()))?;
    Ok(())
}

fn rust_component_against_module(bench: &Bench, report: &mut Report, built: &Path, cache: &Path) -> Result<()> {
    let runs = bench.pick(2_000, 300);
    report.note(format!(
        "components: {runs} in-process `Sandbox::run` calls each (after {WARM_UP} warm-up runs) of the built-in \
         echo (preview1 module) and of `{RUST_COMPONENT}` (the same Rust code for wasm32-wasip2), taking turns, \
         both loaded once through the processors registry from a cache filled by `jobhost processors --compile`"
    ));
    let samples = in_sandbox(built, cache, &["echo", RUST_COMPONENT], runs)?;
    let (module, component) = (&samples[0], &samples[1]);
    let ratio = median_duration(component).as_secs_f64() / median_duration(module).as_secs_f64();
    for (label, samples) in [("echo as a preview1 module", module), ("echo as a Rust component", component)] {
        report.add(Row::info(SECTION, format!("{label}, in the sandbox, p50"), micros(median_duration(samples))));
        report.add(Row::info(
            SECTION,
            format!("{label}, in the sandbox, p99"),
            micros(percentile_duration(samples, 99.0)),
        ));
    }
    report.add(Row::goal(SECTION, "Rust component ÷ module, p50", times(ratio), "≤ 2×", ratio <= TARGET_RATIO));
    let ratio_p99 =
        percentile_duration(component, 99.0).as_secs_f64() / percentile_duration(module, 99.0).as_secs_f64();
    report.add(Row::info(SECTION, "Rust component ÷ module, p99", times(ratio_p99)));
    Ok(())
}

fn python(bench: &Bench, report: &mut Report, built: &Path, cache: &Path, cache_yaml: &str) -> Result<()> {
    let runs = bench.pick(300, 50);
    let jobs = bench.pick(1_000, 200);
    let once_runs = bench.pick(10, 3);
    report.note(format!(
        "components: `{PYTHON}` (componentize-py) in-process as above, {runs} runs after {WARM_UP} warm-up; one \
         `jobhost work` (worker.concurrency {PYTHON_CONCURRENCY}) draining {jobs} of its jobs from a fresh SQLite pool, \
         from spawn to the last `finished_at`, CPU from `wait4`; `jobhost work --once` running one of its jobs, \
         spawn to exit, median of {once_runs} runs after an untimed one, compile cache filled by `jobhost processors \
         --compile`; the part of that which is loading the component from the cache: median of {LOADS} \
         `Registry::load` calls in-process, each by a fresh registry"
    ));
    let samples = in_sandbox(built, cache, &[PYTHON], runs)?.remove(0);
    let p50 = median_duration(&samples);
    report.add(Row::goal(SECTION, "Python echo, in the sandbox, p50", millis(p50), "≤ 10 ms", p50 <= PYTHON_TARGET));
    report.add(Row::info(SECTION, "Python echo, in the sandbox, p99", millis(percentile_duration(&samples, 99.0))));

    let drained = python_drain(bench, built, cache_yaml, jobs)?;
    report.add(Row::info(
        SECTION,
        format!("Python echo, one `jobhost work`, concurrency {PYTHON_CONCURRENCY}, {jobs} jobs"),
        per_second(drained.rate, "jobs"),
    ));
    report.add(Row::info(SECTION, "Python echo, worker CPU per job", millis(drained.cpu_per_job)));

    let once = python_cold_start(bench, built, cache_yaml, once_runs)?;
    report.add(Row::info(SECTION, "Python echo, `jobhost work --once`, compile cache warm (median)", millis(once)));
    // Most of a Python cold start: a compiled Python component is tens of megabytes.
    let load = median_duration(&load_times(built, cache, PYTHON)?);
    report.add(Row::info(
        SECTION,
        "of which: loading the Python component from the compile cache (in-process, median)",
        millis(load),
    ));
    Ok(())
}

/// Times of [`LOADS`] loads of `name` from the compile cache, each by a registry of its own
/// (a registry keeps what it loaded), as each `jobhost work --once` process loads it.
fn load_times(built: &Path, cache: &Path, name: &str) -> Result<Vec<Duration>> {
    let config = section_config(built, cache);
    let sandbox = Sandbox::new(1)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a tokio runtime")?;
    let mut samples = Vec::with_capacity(LOADS);
    for _ in 0..LOADS {
        let registry = Arc::new(Registry::new(&config, &sandbox));
        let started = Instant::now();
        runtime.block_on(registry.load(name)).with_context(|| format!("cannot load {name}"))?;
        samples.push(started.elapsed());
    }
    Ok(samples)
}

/// A configuration that finds the built components and the section's compile cache.
fn section_config(built: &Path, cache: &Path) -> Config {
    let mut config = Config::default();
    config.processors.dir = built.to_path_buf();
    config.processors.cache_dir = Some(cache.to_path_buf());
    config
}

/// Samples of `Sandbox::run` for each of `names`, in turns; warm-up runs are not kept.
fn in_sandbox(built: &Path, cache: &Path, names: &[&str], runs: usize) -> Result<Vec<Vec<Duration>>> {
    let config = section_config(built, cache);
    let sandbox = Sandbox::new(1)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a tokio runtime")?;
    let registry = Arc::new(Registry::new(&config, &sandbox));
    let programs = names
        .iter()
        .map(|name| runtime.block_on(registry.load(name)).with_context(|| format!("cannot load {name}")))
        .collect::<Result<Vec<_>>>()?;
    let settings: Vec<_> = names.iter().map(|name| (config.limits_for(name), config.grants_for(name))).collect();
    let mut samples = vec![Vec::with_capacity(runs); names.len()];
    for i in 0..WARM_UP + runs {
        for (index, name) in names.iter().enumerate() {
            let job = JobInput { job_id: "bench", attempt: 1, pool: "default", processor: name, payload: PAYLOAD };
            let (limits, grants) = &settings[index];
            let started = Instant::now();
            let ran = runtime.block_on(sandbox.run(&programs[index], job, limits, grants));
            let elapsed = started.elapsed();
            if !matches!(ran.outcome, Outcome::Ok(_)) {
                bail!("{name} did not succeed in the sandbox: {}", ran.outcome.message().unwrap_or_default());
            }
            if i >= WARM_UP {
                samples[index].push(elapsed);
            }
        }
    }
    Ok(samples)
}

/// One `jobhost work` draining a pool.
struct Drained {
    rate: f64,
    /// The worker's CPU time (user + system) per job.
    cpu_per_job: Duration,
}

fn python_drain(bench: &Bench, built: &Path, cache_yaml: &str, jobs: u64) -> Result<Drained> {
    let pool = Pool::new(bench, &format!("{cache_yaml}worker:\n  concurrency: {PYTHON_CONCURRENCY}\n"))?;
    install(&pool, built, PYTHON)?;
    pool.seed(jobs, PYTHON, 1)?;
    drain(&pool, jobs)
}

/// Runs one `jobhost work` until it exits (it does once no job is ready) and checks that it
/// completed all `jobs`; the rate runs from its spawn to the last `finished_at`, which leaves
/// out its exit, as the end-to-end section does.
fn drain(pool: &Pool, jobs: u64) -> Result<Drained> {
    let launched = epoch_millis();
    let usage = run_to_end(pool.command(&["work"]))?;
    let store = pool.observe()?;
    let counts = status(&store)?.jobs;
    ensure!(
        counts.completed == jobs,
        "`jobhost work` completed {} of {jobs} jobs ({} poisoned); run it by hand on a seeded pool to see why",
        counts.completed,
        counts.poisoned
    );
    let finished = list(&store, Some(JobStatus::Completed), jobs)?
        .iter()
        .filter_map(|job| job.finished_at)
        .max()
        .context("completed jobs without a finished_at")?;
    let elapsed_ms = (finished - launched).max(1);
    Ok(Drained { rate: jobs as f64 * 1000.0 / elapsed_ms as f64, cpu_per_job: usage.cpu.div_f64(jobs as f64) })
}

/// The median wall time of `jobhost work --once` processes each running one Python job.
fn python_cold_start(bench: &Bench, built: &Path, cache_yaml: &str, runs: usize) -> Result<Duration> {
    let pool = Pool::new(bench, cache_yaml)?;
    install(&pool, built, PYTHON)?;
    pool.seed(runs as u64 + 1, PYTHON, 1)?;
    // Already warm from `compile_ahead`; this is the step a deploy takes, and it costs little now.
    pool.ok(&["processors", "--compile"])?;
    // Untimed: pages the binary and the cache entry in, as the cold start section does.
    time_process(&pool, &["work", "--once"])?;
    let samples = (0..runs).map(|_| time_process(&pool, &["work", "--once"])).collect::<Result<Vec<_>>>()?;
    let completed = status(&pool.observe()?)?.jobs.completed;
    ensure!(completed == runs as u64 + 1, "{} `jobhost work --once` runs completed {completed} Python jobs", runs + 1);
    Ok(median_duration(&samples))
}

fn http(bench: &Bench, report: &mut Report, built: &Path, cache_yaml: &str) -> Result<()> {
    let jobs = bench.pick(2_000, 500);
    report.note(format!(
        "components: {jobs} jobs of `{HTTP_PROCESSOR}`, each one GET of a server in the benchmark process (hyper \
         on its own thread and current-thread runtime) that answers every request after {} ms, granted with \
         `processors.overrides.{HTTP_PROCESSOR}.http.allow: [\"127.0.0.1:PORT\"]`; one `jobhost work` with \
         worker.concurrency {HTTP_CONCURRENCY}, from spawn to the last `finished_at`; worker CPU from `wait4`",
        HTTP_DELAY.as_millis()
    ));
    let server = SlowServer::start()?;
    let address = format!("127.0.0.1:{}", server.port);
    let yaml = format!(
        "{cache_yaml}  overrides:\n    {HTTP_PROCESSOR}:\n      http:\n        allow: [\"{address}\"]\n\
         worker:\n  concurrency: {HTTP_CONCURRENCY}\n"
    );
    let pool = Pool::new(bench, &yaml)?;
    install(&pool, built, HTTP_PROCESSOR)?;
    let payload = serde_json::json!({ "url": format!("http://{address}/") }).to_string();
    pool.ok(&[
        "seed",
        "--count",
        &jobs.to_string(),
        "--processor",
        HTTP_PROCESSOR,
        "--max-attempts",
        "1",
        "--payload",
        &payload,
    ])?;
    let drained = drain(&pool, jobs)?;
    let requests = server.requests.load(Ordering::Relaxed);
    let server_cpu = server.stop();
    ensure!(requests == jobs, "the local server answered {requests} requests for {jobs} jobs");

    let bound = f64::from(HTTP_CONCURRENCY) / HTTP_DELAY.as_secs_f64();
    report.add(Row::info(
        SECTION,
        format!(
            "HTTP job, one `jobhost work`, concurrency {HTTP_CONCURRENCY}, {jobs} jobs, server answering after {} ms",
            HTTP_DELAY.as_millis()
        ),
        format!(
            "{} ({}% of the {} bound)",
            per_second(drained.rate, "jobs"),
            number(100.0 * drained.rate / bound, 0),
            per_second(bound, "jobs")
        ),
    ));
    // CPU seconds per wall second: below 1 means the core was not the limit.
    let busy = drained.cpu_per_job.as_secs_f64() * drained.rate;
    report.add(Row::info(
        SECTION,
        "HTTP job, worker CPU per job (and share of one core over the drain)",
        format!("{} ({}%)", micros(drained.cpu_per_job), number(100.0 * busy, 0)),
    ));
    report.add(Row::info(
        SECTION,
        "HTTP job, the local server's CPU per request",
        micros(server_cpu.div_f64(jobs as f64)),
    ));
    Ok(())
}

/// A local HTTP/1.1 server, on its own thread and runtime so the benchmark never slows it,
/// that answers every request with `ok` after [`HTTP_DELAY`]: a remote API's latency, without
/// its CPU. Stopped when dropped.
struct SlowServer {
    port: u16,
    requests: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// Returns the CPU time the server's thread used.
    thread: Option<std::thread::JoinHandle<Duration>>,
}

impl SlowServer {
    fn start() -> Result<SlowServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let requests = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let counter = Arc::clone(&requests);
        let thread = std::thread::Builder::new()
            .name("slow-http".to_string())
            .spawn(move || serve(listener, counter, stopped))
            .context("cannot start the local HTTP server's thread")?;
        Ok(SlowServer { port, requests, stop: Some(stop), thread: Some(thread) })
    }
}

impl SlowServer {
    /// Stops the server; returns the CPU time it used, to show it was not what limited the jobs.
    fn stop(mut self) -> Duration {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Duration {
        drop(self.stop.take());
        self.thread.take().and_then(|thread| thread.join().ok()).unwrap_or_default()
    }
}

impl Drop for SlowServer {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Accepts connections until `stopped` fires (or its sender is dropped); returns the CPU time
/// of this thread, which runs all of the server.
fn serve(
    listener: std::net::TcpListener,
    requests: Arc<AtomicU64>,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> Duration {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("cannot start the local HTTP server's runtime");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("a bound, non-blocking listener");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, Arc::clone(&requests)));
            }
        });
        let _ = stopped.await;
    });
    this_thread_cpu_time()
}

fn this_thread_cpu_time() -> Duration {
    // SAFETY: timespec is plain data; all-zero is a valid value for clock_gettime to overwrite.
    let mut time: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: a valid clock id and a pointer to a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut time) };
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}

async fn answer(stream: tokio::net::TcpStream, requests: Arc<AtomicU64>) {
    let service = hyper::service::service_fn(move |_: Request<Incoming>| {
        let requests = Arc::clone(&requests);
        async move {
            tokio::time::sleep(HTTP_DELAY).await;
            requests.fetch_add(1, Ordering::Relaxed);
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    // A connection that breaks only costs its own request, which the job's outcome reports.
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .await;
}

/// A path as a YAML scalar (JSON strings are YAML), whatever characters it holds.
fn yaml_string(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}
