//! WASI 0.2 components and capabilities, through the CLI: the example processors of
//! `docs/processors.md` in Rust, Python and JavaScript, built from source by
//! `scripts/components build` (so the docs cannot rot), run as jobs by real workers with only
//! the capabilities granted to them; and the limits, held for components exactly as for
//! modules, by the purpose-built guest in `tests/fixtures/components/limits`.
//!
//! The HTTP endpoint the examples call is served by the test itself on 127.0.0.1, which
//! records every request it answers: a denied request must never reach it.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use support::Pool;

/// The folder `scripts/components build` filled, built once per test process.
fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = root.join("target/tmp/components");
        let status = Command::new(root.join("scripts/components"))
            .arg("build")
            .arg(&out)
            .status()
            .expect("scripts/components runs");
        assert!(status.success(), "scripts/components build failed ({status}); run `scripts/components install` first");
        out
    })
}

/// Copies built processor `file` (without `.wasm`) into `pool` as `name`.
fn add_built(pool: &Pool, file: &str, name: &str) {
    let from = built().join(format!("{file}.wasm"));
    std::fs::copy(&from, pool.path(&format!("processors/{name}.wasm")))
        .unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
}

/// One request the test's HTTP server answered.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: Option<String>,
}

/// An HTTP/1.1 server on 127.0.0.1 answering every request with `body`, keeping what it saw.
struct Endpoint {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Endpoint {
    fn start(body: &'static str) -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':')
                        && name.eq_ignore_ascii_case("authorization")
                    {
                        authorization = Some(value.trim().to_string());
                    }
                }
                let path = request_line.split_whitespace().nth(1).unwrap_or_default().to_string();
                record.lock().unwrap().push(Seen { path, authorization });
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Endpoint { port, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A pool with `overrides` (YAML lines under `processors.overrides`, indented by four), and
/// one compile cache for the whole suite: a Python or JavaScript component takes seconds to
/// compile, and compiling it once per test would only measure that.
fn pool(overrides: &str) -> Pool {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/tmp/components-cache");
    let overrides = if overrides.is_empty() { " {}".to_string() } else { format!("\n{overrides}") };
    Pool::new(&format!("processors:\n  cache_dir: {}\n  overrides:{overrides}\n", cache.display()))
}

/// A pool whose processor `name` may call `allow`, with `GREETING` set and `API_TOKEN` as a
/// secret.
fn granted_pool(name: &str, allow: &str) -> Pool {
    pool(&format!(
        "    {name}:\n      env: {{GREETING: hello}}\n      secrets: [API_TOKEN]\n      http: {{allow: [\"{allow}\"]}}"
    ))
}

const SECRET: &str = "s3cret-value-never-stored";

/// Seeds one job for `name` with `payload` and lets a real worker (holding `secret` as
/// `API_TOKEN` in its environment) run it; returns the job as `jobs show --json` prints it,
/// and what the worker said.
fn run_as_job(pool: &Pool, name: &str, payload: &Value, secret: &str) -> (Value, String) {
    // As a deploy would: compile ahead, so the worker loads compiled code.
    pool.ok(&["processors", "--compile"]);
    pool.ok(&["seed", "--processor", name, "--payload", &payload.to_string(), "--max-attempts", "1"]);
    let output = pool.command(&["work", "--once"]).env("API_TOKEN", secret).output().unwrap();
    let logs = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the worker failed: {logs}");
    let jobs = pool.all_jobs();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let id = jobs[0]["id"].as_str().unwrap().to_string();
    (pool.json(&["jobs", "show", &id]), logs)
}

/// Everything jobhost kept of a pool on disk and said: the database and its side files, the
/// data folder, the outputs given.
fn everything_kept(pool: &Pool, said: &[&str]) -> Vec<u8> {
    let mut kept: Vec<u8> = said.concat().into_bytes();
    for entry in walk(&pool.path("data")) {
        kept.extend(std::fs::read(entry).unwrap_or_default());
    }
    kept
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() { files.extend(walk(&path)) } else { files.push(path) }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle.as_bytes())
}

/// Each language's example reads its payload, calls the allowed endpoint with the secret as
/// its bearer token, and writes its result, run as a job by a worker; the secret reaches
/// the endpoint and nothing jobhost keeps or prints.
fn example_runs_as_a_job_with_its_grants(built_file: &str, language: &str) {
    let endpoint = Endpoint::start("hello from the test");
    let pool = granted_pool(built_file, &format!("127.0.0.1:{}", endpoint.port));
    add_built(&pool, built_file, built_file);
    let (job, logs) = run_as_job(&pool, built_file, &serde_json::json!({"url": endpoint.url("/greeting")}), SECRET);
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(
        job["result"],
        serde_json::json!({"language": language, "status": 200, "body": "hello from the test", "greeting": "hello"}),
        "{job:#}"
    );
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].path, "/greeting");
    assert_eq!(seen[0].authorization.as_deref(), Some(format!("Bearer {SECRET}").as_str()));

    let listed = pool.ok(&["processors", "--json"]);
    let shown = pool.ok(&["jobs", "show", job["id"].as_str().unwrap()]);
    let kept = everything_kept(&pool, &[&logs, &listed, &shown, &job.to_string()]);
    assert!(!contains(&kept, SECRET), "the secret's value was kept or printed");
    let info: Vec<Value> = serde_json::from_str(&listed).unwrap();
    let info = info.iter().find(|info| info["name"] == built_file).unwrap();
    assert_eq!(info["kind"], "component");
    assert_eq!(info["grants"]["secrets"], serde_json::json!(["API_TOKEN"]), "secrets are listed by name");
    let hash = info["sha256"].as_str().unwrap();
    assert_eq!(job["attempt_history"][0]["processor_sha256"], hash, "the attempt records the code that ran");
}

#[test]
fn the_rust_component_example_runs_as_a_job_with_its_grants() {
    example_runs_as_a_job_with_its_grants("example-rust-component", "rust");
}

#[test]
fn the_python_example_runs_as_a_job_with_its_grants() {
    example_runs_as_a_job_with_its_grants("example-python", "python");
}

#[test]
fn the_javascript_example_runs_as_a_job_with_its_grants() {
    example_runs_as_a_job_with_its_grants("example-javascript", "javascript");
}

#[test]
fn the_rust_module_example_runs_without_network() {
    let pool = granted_pool("example-rust-module", "127.0.0.1:9");
    add_built(&pool, "example-rust-module", "example-rust-module");
    let report = run(&pool, "example-rust-module", r#"{"url": "http://127.0.0.1:9/"}"#, &[]);
    assert_eq!(report["outcome"], "ok", "{report:#}");
    assert_eq!(report["result"]["language"], "rust");
    assert_eq!(report["result"]["greeting"], "hello");
}

/// `jobhost run NAME --payload PAYLOAD --json EXTRA...`, with the secret in its environment.
fn run(pool: &Pool, name: &str, payload: &str, extra: &[&str]) -> Value {
    run_with_secret(pool, name, payload, extra, SECRET)
}

/// [`run`] with `secret` as `API_TOKEN`.
fn run_with_secret(pool: &Pool, name: &str, payload: &str, extra: &[&str], secret: &str) -> Value {
    let mut args = vec!["run", name, "--payload", payload, "--json"];
    args.extend_from_slice(extra);
    let output = pool.command(&args).env("API_TOKEN", secret).output().unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "no JSON report ({err}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn stderr(report: &Value) -> &str {
    report["stderr"].as_str().unwrap_or_default()
}

#[test]
fn a_host_off_the_list_is_denied_inside_the_guest_and_never_reached() {
    let endpoint = Endpoint::start("unreachable");
    // Allowed: another port. `localhost` names the endpoint's own address, but is not listed.
    let pool = granted_pool("example-rust-component", "127.0.0.1:1");
    add_built(&pool, "example-rust-component", "example-rust-component");
    for url in [endpoint.url("/x"), format!("http://localhost:{}/x", endpoint.port)] {
        let report = run(&pool, "example-rust-component", &serde_json::json!({ "url": url }).to_string(), &[]);
        assert_eq!((report["outcome"].as_str(), report["exit_code"].as_i64()), (Some("exit"), Some(2)), "{report:#}");
        assert!(stderr(&report).contains("jobhost: request to") && stderr(&report).contains("denied"), "{report:#}");
        assert!(stderr(&report).contains("HttpRequestDenied"), "the guest got the WASI error: {report:#}");
    }
    assert!(endpoint.seen().is_empty(), "a denied request reached the network: {:?}", endpoint.seen());
}

#[test]
fn without_an_http_grant_every_request_is_denied() {
    let endpoint = Endpoint::start("unreachable");
    let pool = pool("");
    add_built(&pool, "example-rust-component", "example-rust-component");
    let report = run(&pool, "example-rust-component", &serde_json::json!({"url": endpoint.url("/")}).to_string(), &[]);
    assert_eq!(report["exit_code"], 2, "{report:#}");
    assert!(stderr(&report).contains("has no outbound HTTP grant"), "{report:#}");
    assert!(endpoint.seen().is_empty());
}

#[test]
fn a_listed_name_that_resolves_to_loopback_is_refused() {
    let endpoint = Endpoint::start("unreachable");
    let pool = granted_pool("example-rust-component", &format!("localhost:{}", endpoint.port));
    add_built(&pool, "example-rust-component", "example-rust-component");
    let url = format!("http://localhost:{}/", endpoint.port);
    let report = run(&pool, "example-rust-component", &serde_json::json!({ "url": url }).to_string(), &[]);
    assert_eq!(report["exit_code"], 2, "{report:#}");
    assert!(stderr(&report).contains("loopback, private or link-local"), "{report:#}");
    let entry_that_would_grant_it = format!("\"127.0.0.1:{}\"", endpoint.port);
    assert!(stderr(&report).contains(&entry_that_would_grant_it), "the fix is named: {report:#}");
    assert!(stderr(&report).contains("DestinationIpProhibited"), "{report:#}");
    assert!(endpoint.seen().is_empty(), "the SSRF rule let a request through");
}

#[test]
fn a_response_past_max_response_fails_the_request() {
    let endpoint = Endpoint::start("a body of more than sixteen bytes");
    let pool = pool(&format!(
        "    example-rust-component:\n      http: {{allow: [\"127.0.0.1:{}\"], max_response: 16}}",
        endpoint.port
    ));
    add_built(&pool, "example-rust-component", "example-rust-component");
    let report = run(&pool, "example-rust-component", &serde_json::json!({"url": endpoint.url("/")}).to_string(), &[]);
    assert_eq!(report["exit_code"], 2, "{report:#}");
    assert!(stderr(&report).contains("http.max_response"), "{report:#}");
}

#[test]
fn waiting_on_http_counts_against_the_run_deadline() {
    // A server that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().collect();
        drop(held);
    });
    let pool =
        pool(&format!("    example-rust-component:\n      http: {{allow: [\"127.0.0.1:{port}\"], timeout: 1m}}"));
    add_built(&pool, "example-rust-component", "example-rust-component");
    let url = format!("http://127.0.0.1:{port}/");
    let report =
        run(&pool, "example-rust-component", &serde_json::json!({ "url": url }).to_string(), &["--timeout", "500ms"]);
    assert_eq!(report["outcome"], "timeout", "{report:#}");
    let took = report["duration_ms"].as_f64().unwrap();
    assert!(took < 10_000.0, "the run waited {took} ms on a silent server");
    assert!(report["fuel_used"].as_u64().unwrap() < 10_000_000, "waiting burns no fuel: {report:#}");
}

/// The limits guest in `mode`, via `jobhost run` with `extra` flags.
fn limits_run(mode: &str, extra: &[&str]) -> Value {
    let pool = pool("");
    add_built(&pool, "limits", "limits");
    run(&pool, "limits", &serde_json::json!({ "mode": mode }).to_string(), extra)
}

#[test]
fn a_component_sleeping_on_a_clock_is_cut_at_its_deadline() {
    let report = limits_run("sleep", &["--timeout", "300ms"]);
    assert_eq!(report["outcome"], "timeout", "{report:#}");
    let took = report["duration_ms"].as_f64().unwrap();
    assert!(took < 5_000.0, "a 60 s sleep was cut after {took} ms");
}

#[test]
fn a_spinning_component_runs_out_of_fuel() {
    let report = limits_run("spin", &["--fuel", "50000000"]);
    assert_eq!(report["outcome"], "fuel_exhausted", "{report:#}");
    assert_eq!(report["fuel_used"], 50_000_000u64);
}

#[test]
fn a_component_allocating_past_its_cap_is_a_memory_outcome() {
    let report = limits_run("alloc", &["--memory", "16MiB"]);
    assert_eq!(report["outcome"], "memory", "{report:#}");
}

/// The limits guest hoarding resources (`mode`, with `bytes` for `fields`) under `--memory
/// 16MiB`, with the peak resident memory of the `jobhost` process that ran it.
fn hoarding_run(payload: Value) -> (Value, u64) {
    let pool = pool("");
    add_built(&pool, "limits", "limits");
    let payload = payload.to_string();
    let (output, peak) =
        pool.run_with_peak_rss(&["run", "limits", "--payload", &payload, "--json", "--memory", "16MiB"]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!("no JSON report ({err}): {}", String::from_utf8_lossy(&output.stderr));
    });
    (report, peak)
}

/// What `jobhost run` of the limits guest may keep resident with a 16 MiB cap: the host's
/// own footprint (16 MiB for this guest) and the cap; the fields guest peaked at 30–48 MiB.
/// Without a bound on host memory, 20,000 of its fields took 1.9 GiB and the run ended `ok`.
const HOARDING_PEAK_BOUND: u64 = 128 << 20;

#[test]
fn a_component_hoarding_http_fields_in_the_host_is_stopped_at_its_memory_cap() {
    let (report, peak) = hoarding_run(serde_json::json!({"mode": "fields", "bytes": 100_000}));
    assert_eq!(report["outcome"], "memory", "{report:#}");
    assert!(stderr(&report).contains("resources hold") && stderr(&report).contains("memory cap"), "{report:#}");
    assert!(peak < HOARDING_PEAK_BOUND, "jobhost peaked at {} MiB resident", peak >> 20);
}

#[test]
fn a_component_hoarding_small_resources_is_stopped_at_the_table_capacity() {
    let (report, peak) = hoarding_run(serde_json::json!({"mode": "pollables"}));
    assert_eq!(report["outcome"], "memory", "{report:#}");
    assert!(stderr(&report).contains("the most a run may"), "{report:#}");
    assert!(peak < HOARDING_PEAK_BOUND, "jobhost peaked at {} MiB resident", peak >> 20);
}

#[test]
fn a_fields_map_past_its_size_limit_is_a_memory_outcome() {
    let (report, _) = hoarding_run(serde_json::json!({"mode": "fields", "bytes": 200_000}));
    assert_eq!(report["outcome"], "memory", "{report:#}");
    assert!(stderr(&report).contains("fields map passed 131072 bytes"), "{report:#}");
}

#[test]
fn a_component_holding_resources_within_its_cap_runs_to_the_end() {
    let (report, _) = hoarding_run(serde_json::json!({"mode": "fields", "bytes": 10_000, "count": 100}));
    assert_eq!(report["outcome"], "ok", "{report:#}");
    assert_eq!(report["result"], 100);
}

#[test]
fn a_component_writing_past_its_stdout_cap_is_output_too_large() {
    let report = limits_run("flood", &[]);
    assert_eq!(report["outcome"], "output_too_large", "{report:#}");
}

#[test]
fn a_component_cannot_open_a_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let to = listener.local_addr().unwrap().to_string();
    let pool = pool("");
    add_built(&pool, "limits", "limits");
    let report = run(&pool, "limits", &serde_json::json!({"mode": "connect", "to": to}).to_string(), &[]);
    assert_eq!(report["exit_code"], 2, "{report:#}");
    assert!(stderr(&report).contains("cannot connect"), "{report:#}");
    assert!(listener.accept().is_err(), "a socket reached the listener");
}

#[test]
fn a_components_exit_status_is_kept() {
    let pool = pool("");
    add_built(&pool, "limits", "limits");
    let report = run(&pool, "limits", r#"{"mode": "exit", "code": 2}"#, &[]);
    assert_eq!((report["outcome"].as_str(), report["exit_code"].as_i64()), (Some("exit"), Some(2)), "{report:#}");
}

#[test]
fn a_component_sees_only_the_job_variables_and_its_grants() {
    let pool = pool("    limits:\n      env: {GREETING: hello}\n      secrets: [API_TOKEN]");
    add_built(&pool, "limits", "limits");
    let output = pool
        .command(&["run", "limits", "--payload", r#"{"mode": "env"}"#, "--json"])
        .env("API_TOKEN", SECRET)
        .env("HOST_ONLY", "must not leak")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let env = report["result"].as_object().unwrap_or_else(|| panic!("{report:#}"));
    let mut names: Vec<&str> = env.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(names, ["API_TOKEN", "GREETING", "JOB_ATTEMPT", "JOB_ID", "JOB_POOL"], "{report:#}");
    assert_eq!(env["API_TOKEN"], "***", "the secret reaches the guest, and its value is masked in the result");
}

/// A secret with characters JSON escapes, so that its escaped form must be masked too.
const ESCAPED_SECRET: &str = r#"s3cret"quote\back-never-shown"#;

#[test]
fn a_secret_the_processor_prints_is_masked_wherever_jobhost_keeps_or_shows_output() {
    let escaped = serde_json::to_string(ESCAPED_SECRET).unwrap();
    let escaped = escaped.trim_matches('"');
    for as_json in [true, false] {
        let pool = pool("    limits:\n      secrets: [API_TOKEN]");
        add_built(&pool, "limits", "limits");
        let payload = serde_json::json!({"mode": "reveal", "var": "API_TOKEN", "json": as_json});
        let (job, logs) = run_as_job(&pool, "limits", &payload, ESCAPED_SECRET);
        let report = run_with_secret(&pool, "limits", &payload.to_string(), &[], ESCAPED_SECRET);
        let expected =
            if as_json { serde_json::json!({"API_TOKEN": "***"}) } else { serde_json::json!("API_TOKEN is ***\n") };
        let masked_stderr = "API_TOKEN is ***\n{\"API_TOKEN\": \"***\"}\n";
        assert_eq!((&job["status"], &job["result"]), (&serde_json::json!("completed"), &expected), "{job:#}");
        assert_eq!(job["attempt_history"][0]["stderr"], masked_stderr, "{job:#}");
        assert_eq!(
            (&report["result"], &report["stderr"]),
            (&expected, &serde_json::json!(masked_stderr)),
            "{report:#}"
        );

        let shown = pool.ok(&["jobs", "show", job["id"].as_str().unwrap()]);
        let kept = everything_kept(&pool, &[&logs, &shown, &job.to_string(), &report.to_string()]);
        for form in [ESCAPED_SECRET, escaped, "s3cret"] {
            assert!(!contains(&kept, form), "{form:?} was kept or printed (json: {as_json})");
        }
    }
}

#[test]
fn a_missing_secret_fails_the_run_naming_the_variable() {
    let pool = pool("    limits:\n      secrets: [NOT_SET_ANYWHERE]");
    add_built(&pool, "limits", "limits");
    let report = run(&pool, "limits", r#"{"mode": "echo"}"#, &[]);
    assert_eq!(report["outcome"], "load_error", "{report:#}");
    assert!(report["message"].as_str().unwrap().contains("NOT_SET_ANYWHERE is not set"), "{report:#}");
}

#[test]
fn a_component_with_an_import_the_host_lacks_is_a_load_error_naming_it() {
    let pool = pool("");
    add_built(&pool, "unsatisfiable", "unsatisfiable");
    let report = run(&pool, "unsatisfiable", "{}", &[]);
    assert_eq!(report["outcome"], "load_error", "{report:#}");
    let message = report["message"].as_str().unwrap();
    assert!(message.contains("example:nope/missing"), "the message names the interface: {message}");
    let listed = pool.json(&["processors"]);
    let entry = listed.as_array().unwrap().iter().find(|p| p["name"] == "unsatisfiable").unwrap();
    assert_eq!((entry["status"].as_str(), entry["kind"].as_str()), (Some("broken"), Some("component")));
}

#[test]
fn processors_compile_ahead_and_report_failures() {
    let pool = pool("");
    add_built(&pool, "limits", "limits");
    let compiled = pool.ok(&["processors", "--compile"]);
    assert!(compiled.contains("compiled limits in"), "{compiled}");
    std::fs::write(pool.path("processors/broken.wasm"), "(component (import \"x:y/z\" (func)))").unwrap();
    let output = pool.run(&["processors", "--compile"]);
    assert!(!output.status.success(), "a broken processor fails --compile");
    assert!(String::from_utf8_lossy(&output.stdout).contains("broken broken:"));
}

/// Each example's sources appear verbatim in `docs/processors.md`, so what the docs show is
/// what this suite builds.
#[test]
fn the_docs_show_each_example_as_built() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docs = std::fs::read_to_string(root.join("docs/processors.md")).unwrap();
    for source in [
        "processors/examples/rust-component/src/main.rs",
        "processors/examples/rust-component/Cargo.toml",
        "processors/examples/rust-module/src/main.rs",
        "processors/examples/python/app.py",
        "processors/examples/javascript/app.js",
    ] {
        let text = std::fs::read_to_string(root.join(source)).unwrap();
        assert!(docs.contains(text.trim()), "docs/processors.md does not show {source} as it is");
    }
}
