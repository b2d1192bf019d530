//! The sandbox through the CLI: `jobhost run` with one purpose-built processor per outcome,
//! the built-in echo, drop-in processors, `jobhost processors`, and the compile cache.
//!
//! The processors are WAT text in `tests/fixtures/processors/`. The registry only looks at
//! `NAME.wasm` files, so [`Pool::add_processor`] copies `foo.wat` in as `foo.wasm`: wasmtime
//! compiles text modules as well as binary ones, so the copy runs as is.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Pool, jobs_count, make_fifo, signal};

/// `jobhost run NAME --json EXTRA...`: its checked [`report`].
fn run(pool: &Pool, name: &str, extra: &[&str]) -> Value {
    let args = run_args(name, extra);
    report(name, &args, &pool.run(&args))
}

fn run_args<'a>(name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", name, "--json"];
    args.extend_from_slice(extra);
    args
}

/// The report `jobhost run NAME --json` printed, after checking its fixed shape and that the
/// exit status is 0 exactly when the outcome is `ok`.
fn report(name: &str, args: &[&str], output: &Output) -> Value {
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "jobhost {args:?} printed no JSON report ({err}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let keys: BTreeSet<&str> = report.as_object().expect("an object").keys().map(String::as_str).collect();
    let expected = ["processor", "outcome", "result", "exit_code", "message", "stderr", "fuel_used", "duration_ms"];
    assert_eq!(keys, BTreeSet::from(expected), "{report}");
    assert_eq!(report["processor"], name);
    assert_eq!(output.status.success(), report["outcome"] == "ok", "exit status {} for {report}", output.status);
    report
}

/// Copies fixture `NAME.wat` into a fresh pool as processor `NAME` and runs it.
fn run_fixture(name: &str, extra: &[&str]) -> Value {
    let pool = Pool::new("");
    pool.add_processor(&format!("{name}.wat"), name);
    run(&pool, name, extra)
}

fn message(report: &Value) -> &str {
    report["message"].as_str().unwrap_or_else(|| panic!("no message in {report}"))
}

fn millis(report: &Value) -> f64 {
    report["duration_ms"].as_f64().unwrap()
}

#[test]
fn echo_wraps_its_payload() {
    let pool = Pool::new("");
    let report = run(&pool, "echo", &["--payload", r#"{"x":1}"#]);
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["result"], json!({"status": "completed", "processed": true, "echo": {"x": 1}}));
    assert_eq!(report["exit_code"], 0);
    assert_eq!(report["message"], Value::Null);
    assert_eq!(report["stderr"], "");
    assert!(report["fuel_used"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn run_without_json_prints_the_result_for_people() {
    let pool = Pool::new("");
    let stdout = pool.ok(&["run", "echo", "--payload", r#"{"x":1}"#]);
    assert!(stdout.starts_with("echo: ok in "), "{stdout}");
    assert!(stdout.contains("\"echo\": {\n    \"x\": 1\n  }"), "{stdout}");
}

#[test]
fn echo_round_trips_unicode_and_nested_payloads() {
    let pool = Pool::new("");
    let payload = json!({
        "text": "héllo wörld — 日本語 🚀 \u{0} \"quoted\" \\ \n",
        "deep": [[[[{"a": [1, 2.5, -3e10, true, null, {}, []]}]]]],
        "delay_ms_is_not_this": "delay_ms",
    });
    let report = run(&pool, "echo", &["--payload", &payload.to_string()]);
    assert_eq!(report["result"]["echo"], payload);
}

#[test]
fn echo_round_trips_a_payload_of_almost_a_mebibyte() {
    let pool = Pool::new("");
    let item = "ü→x".repeat(166); // 996 bytes of UTF-8
    let payload = json!({"items": (0..1000).map(|n| json!({"n": n, "s": item})).collect::<Vec<_>>()});
    let text = payload.to_string();
    assert!((1_000_000..1_040_000).contains(&text.len()), "payload is {} bytes", text.len());
    let file = pool.path("payload.json");
    fs::write(&file, &text).unwrap();
    let report = run(&pool, "echo", &["--payload-file", file.to_str().unwrap()]);
    assert_eq!(report["outcome"], "ok", "{}", message(&report));
    assert_eq!(report["result"]["echo"], payload);
}

#[test]
fn echo_sleeps_for_delay_ms() {
    let pool = Pool::new("");
    let report = run(&pool, "echo", &["--payload", r#"{"delay_ms": 120}"#]);
    assert_eq!(report["outcome"], "ok");
    assert!(millis(&report) >= 120.0, "{report}");
}

#[test]
fn invalid_payload_is_refused_naming_the_flag() {
    let pool = Pool::new("");
    let stderr = pool.fails(&["run", "echo", "--payload", "{not json"]);
    assert!(stderr.contains("--payload is not valid JSON"), "{stderr}");

    fs::write(pool.path("bad.json"), "[1,").unwrap();
    let stderr = pool.fails(&["run", "echo", "--payload-file", pool.path("bad.json").to_str().unwrap()]);
    assert!(stderr.contains("--payload-file") && stderr.contains("not valid JSON"), "{stderr}");
}

#[test]
fn trap_is_reported_with_its_kind_and_stderr() {
    let report = run_fixture("trap", &[]);
    assert_eq!(report["outcome"], "trap");
    assert!(message(&report).contains("unreachable_code_reached"), "{report}");
    assert!(message(&report).contains("wasm `unreachable` instruction executed at "), "{report}");
    assert_eq!(report["stderr"], "about to trap\n");
    assert_eq!((&report["result"], &report["exit_code"]), (&Value::Null, &Value::Null));
}

#[test]
fn endless_recursion_is_a_stack_overflow_trap() {
    let report = run_fixture("stack_overflow", &[]);
    assert_eq!(report["outcome"], "trap");
    let message = message(&report);
    assert!(message.contains("stack_overflow") && message.contains("at recurse <- recurse"), "{report}");
    assert!(message.ends_with(" frames)") && message.len() < 500, "the backtrace is cut short: {message}");
}

#[test]
fn endless_loop_runs_out_of_fuel() {
    let report = run_fixture("spin", &["--fuel", "1000000"]);
    assert_eq!(report["outcome"], "fuel_exhausted");
    assert_eq!(report["fuel_used"], 1_000_000);
    assert!(message(&report).contains("processors.limits.fuel"), "{report}");
}

#[test]
fn endless_loop_with_fuel_to_spare_stops_at_the_deadline() {
    let started = Instant::now();
    let report = run_fixture("spin", &["--fuel", "1000000000000000", "--timeout", "300ms"]);
    assert_eq!(report["outcome"], "timeout");
    assert!(report["fuel_used"].as_u64().unwrap() > 1_000_000, "the fuel burnt is counted: {report}");
    assert!((300.0..1500.0).contains(&millis(&report)), "{report}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn guest_sleeping_past_the_deadline_is_cut_off_at_it() {
    let started = Instant::now();
    let report = run_fixture("sleeper", &["--timeout", "300ms"]);
    assert_eq!(report["outcome"], "timeout");
    assert!(message(&report).contains("processors.limits.timeout"), "{report}");
    assert!((300.0..1500.0).contains(&millis(&report)), "{report}");
    // The whole process, start-up and compilation included, not just the run.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[test]
fn echo_sleeping_past_the_deadline_is_cut_off_at_it() {
    let pool = Pool::new("");
    let report = run(&pool, "echo", &["--payload", r#"{"delay_ms": 600000}"#, "--timeout", "300ms"]);
    assert_eq!(report["outcome"], "timeout");
    assert!((300.0..1500.0).contains(&millis(&report)), "{report}");
}

#[test]
fn allocation_bomb_ends_at_the_memory_cap_and_host_memory_stays_bounded() {
    let pool = Pool::new("");
    pool.add_processor("alloc_bomb.wat", "alloc_bomb");
    let args = run_args("alloc_bomb", &["--memory", "32MiB"]);
    let (output, peak) = pool.run_with_peak_rss(&args);
    let report = report("alloc_bomb", &args, &output);
    assert_eq!(report["outcome"], "memory");
    assert!(message(&report).contains("processors.limits.memory"), "{report}");
    // Unbounded, the bomb would make 4 GiB resident; bounded, the process stays near the
    // cap plus the host's own footprint.
    assert!(peak < 256 << 20, "jobhost peaked at {} MiB resident", peak >> 20);
}

#[test]
fn output_flood_fails_as_too_large_without_hanging() {
    let started = Instant::now();
    let report = run_fixture("flood", &[]);
    assert_eq!(report["outcome"], "output_too_large");
    assert!(message(&report).contains("stdout"), "{report}");
    assert_eq!(report["result"], Value::Null);
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
}

#[test]
fn guest_finds_no_files_and_only_its_job_environment() {
    let report = run_fixture("snoop", &[]);
    assert_eq!(report["outcome"], "ok");
    // Not JSON, so the result is the text.
    let text = report["result"].as_str().unwrap_or_else(|| panic!("{report}"));
    let lines: BTreeMap<&str, Vec<&str>> = text
        .lines()
        .map(|line| {
            let mut words = line.split_whitespace();
            (words.next().unwrap(), words.collect())
        })
        .collect();
    const EBADF: &str = "8";
    assert_eq!(lines["prestat"], [EBADF], "a directory was preopened: {text}");
    assert_eq!(lines["open"], [EBADF], "path_open found something: {text}");
    assert_eq!(lines["args"], ["snoop"]);
    let env = &lines["env"];
    assert_eq!(env.len(), 3, "{text}");
    assert!(env[0].starts_with("JOB_ID=run-") && env[0].len() > "JOB_ID=run-".len(), "{text}");
    assert_eq!(env[1..], ["JOB_ATTEMPT=1", "JOB_POOL=default"]);
}

#[test]
fn nonzero_exit_is_reported_with_its_code_and_stderr() {
    let report = run_fixture("exit3", &[]);
    assert_eq!(report["outcome"], "exit");
    assert_eq!(report["exit_code"], 3);
    assert_eq!(report["stderr"], "bad input\n");
    assert!(message(&report).contains("status 3"), "{report}");
}

#[test]
fn proc_exit_zero_is_success() {
    let report = run_fixture("exit0", &[]);
    assert_eq!(report["outcome"], "ok");
    assert_eq!(report["result"], json!({"done": true}));
    assert_eq!(report["exit_code"], 0);
}

/// The same code computes the same bits on every machine: a NaN the hardware would give its
/// own sign or payload comes out canonical, so a replay elsewhere reads what the run read.
#[test]
fn nans_are_canonical_whatever_the_hardware_makes_of_them() {
    let report = run_fixture("nan_bits", &[]);
    assert_eq!(report["outcome"], "ok", "{report}");
}

#[test]
fn modules_that_cannot_load_are_load_errors() {
    let pool = Pool::new("");
    fs::write(pool.path("processors/garbage.wasm"), b"\x7fELF\x02\x01\x01\0 definitely not wasm").unwrap();
    fs::write(pool.path("processors/empty.wasm"), b"").unwrap();
    pool.add_processor("no_start.wat", "no_start");
    pool.add_processor("bad_import.wat", "bad_import");
    // Text that is not WAT is refused unparsed: a parser's error would quote it.
    fs::write(pool.path("secret.txt"), "password: hunter2\n".repeat(100_000)).unwrap();
    symlink(pool.path("secret.txt"), pool.path("processors/secret.wasm")).unwrap();
    let cases = [
        ("garbage", "is not WebAssembly (starts with 7f 45 4c 46"),
        ("secret", "secret.wasm) is not WebAssembly (starts with 70 61 73 73"),
        ("empty", "empty file"),
        ("no_start", "_start"),
        ("bad_import", "launch_missiles"),
        ("nope", "no nope.wasm in"),
        ("../etc", "invalid processor name"),
    ];
    for (name, expected) in cases {
        let report = run(&pool, name, &[]);
        assert_eq!(report["outcome"], "load_error", "{name}: {report}");
        assert!(message(&report).contains(expected), "{name}: expected {expected:?} in {report}");
        assert!(message(&report).len() <= 512 && !message(&report).contains("hunter2"), "{name}: {report}");
        assert_eq!(report["stderr"], Value::Null, "{report}");
    }
}

/// Each WebAssembly proposal the host does not accept, in a module that uses it, and the
/// words of the load error that name it.
const REFUSED_FEATURES: [(&str, &str, &str); 12] = [
    ("memory64", r#"(module (memory i64 1) (func (export "_start")))"#, "memory64"),
    ("table64", r#"(module (table i64 1 funcref) (func (export "_start")))"#, "memory64"),
    ("multi_memory", r#"(module (memory 1) (memory 1) (func (export "_start")))"#, "multiple memories"),
    ("tail_call", r#"(module (func $f) (func (export "_start") (return_call $f)))"#, "tail calls"),
    (
        "relaxed_simd",
        r#"(module (func (export "_start") (drop (i32x4.relaxed_trunc_f32x4_s (v128.const i64x2 0 0)))))"#,
        "relaxed SIMD",
    ),
    (
        "function_references",
        r#"(module (type $t (func)) (func $f) (elem declare func $f)
             (func (export "_start") (call_ref $t (ref.func $f))))"#,
        "function references",
    ),
    ("gc", r#"(module (type $s (struct)) (func (export "_start") (drop (struct.new $s))))"#, "gc"),
    ("threads", r#"(module (memory 1 1 shared) (func (export "_start")))"#, "threads"),
    ("exceptions", r#"(module (tag $e) (func (export "_start") (throw $e)))"#, "exceptions"),
    ("custom_page_sizes", r#"(module (memory 1 (pagesize 1)) (func (export "_start")))"#, "custom page sizes"),
    (
        "wide_arithmetic",
        r#"(module (func (export "_start")
             (drop (drop (i64.add128 (i64.const 0) (i64.const 0) (i64.const 0) (i64.const 0))))))"#,
        "wide arithmetic",
    ),
    ("stack_switching", r#"(module (type $f (func)) (type $c (cont $f)) (func (export "_start")))"#, "stack switching"),
];

#[test]
fn webassembly_features_the_host_does_not_accept_are_load_errors_naming_them() {
    let pool = Pool::new("");
    for (name, wat, feature) in REFUSED_FEATURES {
        fs::write(pool.path(&format!("processors/{name}.wasm")), wat).unwrap();
        let report = run(&pool, name, &[]);
        assert_eq!(report["outcome"], "load_error", "{name}: {report}");
        assert!(message(&report).contains(feature), "{name}: expected {feature:?} in {report}");
    }
}

/// Issue 16: two 64-bit memories, one grown by -1 pages, wrapped the memory limiter's sum,
/// and the other then grew past the cap (the run ended `ok` with 3 MiB live under 2 MiB).
#[test]
fn the_memory_cap_cannot_be_walked_past_with_64_bit_memories() {
    let pool = Pool::new("");
    let walk = r#"(module (memory $a i64 16) (memory $b i64 1) (func (export "_start") (drop (memory.grow $a
        (i64.const -1))) (if (i64.eq (memory.grow $b (i64.const 31)) (i64.const -1)) (then unreachable))))"#;
    fs::write(pool.path("processors/walk.wasm"), walk).unwrap();
    let report = run(&pool, "walk", &["--memory", "2MiB"]);
    assert_eq!(report["outcome"], "load_error", "{report}");
    // Refused for its second memory, before its 64-bit ones are looked at.
    assert!(message(&report).contains("multiple memories"), "{report}");
}

#[test]
fn run_on_a_fifo_is_a_prompt_load_error() {
    let pool = Pool::new("");
    make_fifo(&pool.path("processors/x.wasm"));
    let args = run_args("x", &[]);
    let output = pool.spawn_guarded(&args).wait_at_most(Duration::from_secs(10), "run on a FIFO");
    let report = report("x", &args, &output);
    assert_eq!(report["outcome"], "load_error", "{report}");
    assert!(message(&report).contains("not a regular file but a FIFO"), "{report}");
}

#[test]
fn a_fifo_job_neither_stalls_a_worker_nor_deafens_it_to_sigterm() {
    let pool = Pool::new("retry: {backoff_initial: 0, backoff_max: 0}\nworker: {heartbeat_interval: 100ms}\n");
    make_fifo(&pool.path("processors/x.wasm"));
    pool.ok(&["seed", "--processor", "x", "--max-attempts", "1", "--priority", "1"]);
    pool.ok(&["seed", "--count", "20", "--payload", r#"{"delay_ms": 300}"#]);
    let worker = pool.spawn_guarded(&["work", "--json", "--concurrency", "2"]);
    pool.wait_for_status(Duration::from_secs(20), "the FIFO job to fail and an echo job to complete", |s| {
        jobs_count(s, "poisoned") == 1 && jobs_count(s, "completed") >= 1
    });
    signal(worker.id(), libc::SIGTERM);
    let output = worker.wait_at_most(Duration::from_secs(10), "the worker to stop after SIGTERM");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!((summary["failed"].as_u64(), summary["status"].as_str()), (Some(1), Some("terminated")), "{stdout}");
    assert!(summary["completed"].as_u64().unwrap() >= 1, "{stdout}");
    let fifo_job = pool.all_jobs().into_iter().find(|job| job["processor"] == "x").unwrap();
    let attempt = &fifo_job["attempt_history"][0];
    assert_eq!(attempt["outcome"], "load_error", "{fifo_job}");
    assert!(attempt["message"].as_str().unwrap().contains("FIFO"), "{fifo_job}");
    let status = pool.status();
    assert_eq!(jobs_count(&status, "claimed"), 0, "{status}");
    assert!(jobs_count(&status, "pending") > 0, "the worker stopped claiming at SIGTERM: {status}");
}

#[test]
fn processors_lists_broken_files_beside_working_ones() {
    let pool = Pool::new("processors:\n  overrides:\n    spin: {fuel: 1234}\n");
    pool.add_processor("spin.wat", "spin");
    pool.add_processor("no_start.wat", "no_start");
    fs::write(pool.path("processors/garbage.wasm"), b"garbage").unwrap();
    fs::write(pool.path("processors/bad name.wasm"), b"(module)").unwrap();
    // Entries `run` and workers would try, so they are listed too.
    make_fifo(&pool.path("processors/fifo.wasm"));
    fs::create_dir(pool.path("processors/folder.wasm")).unwrap();
    symlink(pool.path("processors/gone.wasm"), pool.path("processors/dangling.wasm")).unwrap();
    symlink(pool.path("processors/loop.wasm"), pool.path("processors/loop.wasm")).unwrap();
    // Ignored: not `*.wasm`, or not directly in the folder.
    fs::write(pool.path("processors/README.md"), b"notes").unwrap();
    fs::create_dir(pool.path("processors/src")).unwrap();
    pool.add_processor("spin.wat", "src/nested");

    let list = pool.json(&["processors"]);
    let by_name: BTreeMap<&str, &Value> =
        list.as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap(), p)).collect();
    assert_eq!(
        by_name.keys().copied().collect::<Vec<_>>(),
        ["bad name", "dangling", "echo", "fifo", "folder", "garbage", "loop", "no_start", "spin"]
    );

    let echo = by_name["echo"];
    assert_eq!(
        (&echo["status"], &echo["source"], &echo["overrides_builtin"]),
        (&json!("ok"), &json!("built-in"), &json!(false))
    );
    assert_eq!(echo["limits"]["fuel"], 10_000_000_000u64);

    let spin = by_name["spin"];
    assert_eq!(spin["status"], "ok");
    assert_eq!(spin["error"], Value::Null);
    assert!(spin["source"].as_str().unwrap().ends_with("spin.wasm"));
    assert_eq!(spin["size"], fs::metadata(pool.path("processors/spin.wasm")).unwrap().len());
    assert_eq!(spin["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        spin["limits"],
        json!({"fuel": 1234, "timeout_ms": 30000, "memory_bytes": 64 << 20, "stdout_bytes": 1 << 20, "stderr_bytes": 64 << 10})
    );

    for (name, expected) in [
        ("no_start", "_start"),
        ("garbage", "is not WebAssembly"),
        ("bad name", "invalid processor name"),
        ("fifo", "not a regular file but a FIFO"),
        ("folder", "not a regular file but a directory"),
        ("dangling", "a dangling symlink"),
        ("loop", "a symlink loop"),
    ] {
        assert_eq!(by_name[name]["status"], "broken", "{name}");
        let error = by_name[name]["error"].as_str().unwrap();
        assert!(error.contains(expected), "{name}: expected {expected:?} in {error}");
    }
}

#[test]
fn overrides_naming_no_processor_are_warned_about() {
    let pool = Pool::new("processors:\n  overrides:\n    spin: {fuel: 1}\n    echo: {fuel: 2}\n    spni: {fuel: 3}\n");
    pool.add_processor("spin.wat", "spin");
    let warning = "processors.overrides.spni names no processor";

    let output = pool.run(&["processors"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().filter(|line| line.starts_with("warning: ")).count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("warning: {warning}")), "{stderr}");

    let output = pool.run(&["processors", "--json"]);
    let list: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");

    pool.ok(&["seed"]);
    let output = pool.run(&["work"]);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("WARN") && stderr.contains(warning), "{stderr}");
}

#[test]
fn a_file_named_like_a_builtin_overrides_it() {
    let pool = Pool::new("");
    pool.add_processor("exit0.wat", "echo");
    let list = pool.json(&["processors"]);
    let echo = &list[0];
    assert_eq!((&echo["name"], &echo["overrides_builtin"]), (&json!("echo"), &json!(true)), "{list}");
    assert!(echo["source"].as_str().unwrap().ends_with("echo.wasm"));
    assert_eq!(run(&pool, "echo", &[])["result"], json!({"done": true}));
}

#[test]
fn a_processor_dropped_in_is_picked_up() {
    let pool = Pool::new("");
    assert_eq!(run(&pool, "late", &[])["outcome"], "load_error");
    pool.add_processor("exit0.wat", "late");
    assert_eq!(run(&pool, "late", &[])["outcome"], "ok");
    // Replaced the safe way (a new file renamed over the old one).
    fs::copy(support::fixtures().join("exit3.wat"), pool.path("processors/late.tmp")).unwrap();
    fs::rename(pool.path("processors/late.tmp"), pool.path("processors/late.wasm")).unwrap();
    assert_eq!(run(&pool, "late", &[])["exit_code"], 3);
}

/// The compile cache's entries (`*.cwasm`).
fn cache_entries(pool: &Pool) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = fs::read_dir(pool.path("data/cache"))
        .expect("the cache folder beside the database")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    entries.sort();
    entries
}

#[test]
fn compiled_modules_are_cached_and_a_damaged_entry_is_rebuilt() {
    let pool = Pool::new("");
    assert_eq!(run(&pool, "echo", &[])["outcome"], "ok");
    let entries = cache_entries(&pool);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    let original = fs::read(entry).unwrap();
    let modified = fs::metadata(entry).unwrap().modified().unwrap();

    // A hit leaves the entry alone.
    assert_eq!(run(&pool, "echo", &[])["outcome"], "ok");
    assert_eq!(fs::metadata(entry).unwrap().modified().unwrap(), modified);

    // Damage in the middle (machine code, which wasmtime itself does not check) and a
    // truncated entry are both caught, logged, and replaced by a fresh compile.
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    for byte in &mut flipped[middle..middle + 16] {
        *byte ^= 0xA5;
    }
    for damaged in [flipped, original[..100].to_vec()] {
        fs::write(entry, &damaged).unwrap();
        let output = pool.run(&["run", "echo", "--json"]);
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(report["outcome"], "ok", "{report}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("is unusable") && stderr.contains("recompiling"), "{stderr}");
        assert_eq!(cache_entries(&pool), entries);
        assert_eq!(fs::read(entry).unwrap(), original, "the rebuilt entry differs from the first compile");
    }
}

#[test]
fn a_cache_folder_others_can_write_is_not_used() {
    let pool = Pool::new("");
    assert_eq!(run(&pool, "echo", &[])["outcome"], "ok");
    let entries = cache_entries(&pool);
    assert_eq!(entries.len(), 1, "{entries:?}");
    // A planted entry: damaged, so reading it would be logged and it would be replaced.
    let planted = b"not compiled code".to_vec();
    fs::write(&entries[0], &planted).unwrap();
    fs::set_permissions(pool.path("data/cache"), fs::Permissions::from_mode(0o777)).unwrap();

    let output = pool.run(&["run", "echo", "--json"]);
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["outcome"], "ok", "{report}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let folder = pool.path("data/cache").display().to_string();
    assert!(stderr.contains(&folder) && stderr.contains(&format!("chmod 700 {folder}")), "{stderr}");
    assert!(!stderr.contains("is unusable"), "the planted entry was read: {stderr}");
    assert_eq!(cache_entries(&pool), entries, "an entry was written");
    assert_eq!(fs::read(&entries[0]).unwrap(), planted);
}
