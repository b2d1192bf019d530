//! The job pool through the CLI: seeding, status, inspecting and operating on jobs, bad
//! input of every kind, and many worker processes sharing one SQLite file.

mod support;

use std::io::Write;
use std::process::Stdio;
use std::time::Instant;

use serde_json::{Value, json};
use support::{Backend, Pool, jobs_count};

fn seed_queues_jobs_and_status_shows_the_fixed_shape(backend: Backend) {
    let pool = Pool::on(backend, "");
    let seeding = Instant::now();
    assert_eq!(pool.json(&["seed", "--count", "3"]), json!({"queued": 3, "pool": "default", "matched": []}));
    pool.ok(&["seed", "--count", "2", "--pool", "other", "--delay", "1h"]);

    let mut status = pool.status();
    // The age is the only value that depends on timing; the rest, keys included, is exact.
    let age = status.as_object_mut().unwrap().remove("oldest_ready_age_ms").expect("status has oldest_ready_age_ms");
    let age = age.as_i64().unwrap_or_else(|| panic!("the age of a ready job is a number: {age}"));
    // +1: both ends of the age are whole milliseconds.
    let bound = seeding.elapsed().as_millis() as i64 + 1;
    assert!((0..=bound).contains(&age), "the oldest ready job is {age} ms old, but seeding began {bound} ms ago");
    assert_eq!(
        status,
        json!({
            "jobs": {"pending": 5, "claimed": 0, "completed": 0, "poisoned": 0, "cancelled": 0},
            "ready": 3,
            "workers": {"starting": 0, "active": 0, "terminated": 0, "lost": 0},
            "hosts": {},
            "paused_pools": []
        })
    );
    let other = pool.json(&["status", "--pool", "other"]);
    assert_eq!(
        (jobs_count(&other, "pending"), other["ready"].as_u64(), &other["oldest_ready_age_ms"]),
        (2, Some(0), &Value::Null)
    );
}

#[test]
fn seed_defaults_to_a_numbered_payload_for_echo() {
    let pool = Pool::new("");
    pool.ok(&["seed", "--count", "2", "--priority", "-1", "--max-attempts", "7"]);
    let jobs = pool.all_jobs();
    let mut payloads: Vec<Value> = jobs.iter().map(|j| j["payload"].clone()).collect();
    payloads.sort_by_key(|p| p["seq"].as_i64());
    assert_eq!(payloads, [json!({"seq": 0}), json!({"seq": 1})]);
    for job in &jobs {
        assert_eq!(
            (job["processor"].as_str(), job["priority"].as_i64(), job["max_attempts"].as_u64()),
            (Some("echo"), Some(-1), Some(7))
        );
        assert_eq!(job["status"], "pending");
    }
}

#[test]
fn a_payload_file_is_all_or_nothing() {
    let pool = Pool::new("");
    std::fs::write(pool.path("good.jsonl"), "{\"a\":1}\n\n[1,2]\n\"text\"\n").unwrap();
    assert_eq!(pool.json(&["seed", "--payload-file", "good.jsonl"])["queued"], 3);

    std::fs::write(pool.path("bad.jsonl"), "{\"a\":1}\n{\"b\":\n{\"c\":3}\n").unwrap();
    let error = pool.fails(&["seed", "--payload-file", "bad.jsonl"]);
    assert!(error.contains("bad.jsonl line 2 is not valid JSON"), "{error}");
    assert_eq!(jobs_count(&pool.status(), "pending"), 3, "nothing from the bad file was queued");

    let mut child = pool
        .command(&["seed", "--payload-file", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"{\"x\":1}\n{\"x\":2}\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(serde_json::from_slice::<Value>(&output.stdout).unwrap()["queued"], 2);
}

#[test]
fn bad_flags_are_refused_by_name() {
    let pool = Pool::new("");
    let cases: &[(&[&str], &str)] = &[
        (&["seed", "--payload", "{not json"], "--payload is not valid JSON: key must be a string (at column 2)"),
        (&["seed", "--count", "0"], "--count must be between 1 and 10000000, got 0"),
        (&["seed", "--count", "18446744073709551615"], "--count must be between 1 and 10000000"),
        (&["seed", "--count", "10000000000"], "--count must be between 1 and 10000000"),
        (&["seed", "--max-attempts", "0"], "--max-attempts must be between 1 and 10000"),
        (&["seed", "--max-attempts", "4294967295"], "--max-attempts must be between 1 and 10000"),
        (&["seed", "--delay", "soon"], "not a duration"),
        (&["seed", "--delay", "5"], "`5` has no unit: a duration needs one, like 500ms"),
        (&["seed", "--delay", "106751991167d"], "`106751991167d` is too long: durations are at most 36500d"),
        (&["seed", "--processor", "../etc/passwd"], "--processor"),
        (&["seed", "--pool", ""], "--pool must be 1 to 128 bytes of printable text"),
        (&["seed", "--payload-file", "missing.jsonl"], "cannot open --payload-file missing.jsonl"),
        (&["seed", "--count", "many"], "--count"),
        (&["check", "--max-workers", "0"], "--max-workers must be between 1 and 1000"),
        (&["check", "--interval", "0"], "--interval must be longer than 0"),
        (&["reap", "--stale-after", "0"], "--stale-after (0ms) must be longer than worker.heartbeat_interval (5s)"),
        // Accepted by the flag before, though the same value in the config file was refused.
        (&["reap", "--stale-after", "2s"], "--stale-after (2s) must be longer than worker.heartbeat_interval (5s)"),
        (&["reap", "--stale-after", "2"], "`2` has no unit"),
        (&["run", "echo", "--memory", "1KiB"], "--memory must be between 64KiB (one wasm page) and 4GiB"),
        (&["run", "echo", "--fuel", "0"], "--fuel must be more than 0"),
        (&["work", "--concurrency", "0"], "--concurrency must be between 1 and 1000"),
        (&["work", "--max-jobs", "0"], "--max-jobs must be at least 1"),
        (&["work", "--worker-id", ""], "--worker-id must be 1 to 128 bytes of printable text"),
        (&["jobs", "list", "--limit", "0"], "--limit must be between 1 and 100000"),
    ];
    for (args, expected) in cases {
        let error = pool.fails(args);
        assert!(error.contains(expected), "{args:?}: expected {expected:?} in:\n{error}");
        assert!(!error.contains("panicked"), "{args:?}: {error}");
    }
    assert!(!pool.db().exists(), "no refused command created the database");
}

/// Payloads `seed` used to store although nothing could read them back.
#[test]
fn payloads_are_checked_as_everything_downstream_reads_them() {
    let pool = Pool::new("jobs: {max_payload: 1KiB}\n");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let large = format!("\"{}\"", "x".repeat(1100));
    let cases: &[(&str, &str)] = &[
        ("1e400", "number out of range"),
        (r#""\ud800""#, "is not valid JSON"),
        (&deep, "recursion limit exceeded"),
        (&large, "is 1102 bytes, more than jobs.max_payload (1KiB)"),
    ];
    for (payload, expected) in cases {
        let error = pool.fails(&["seed", "--payload", payload]);
        assert!(error.contains("--payload ") && error.contains(expected), "{payload:.40}: {error}");
        let error = pool.fails(&["run", "echo", "--payload", payload]);
        assert!(error.contains(expected), "run {payload:.40}: {error}");
    }
    assert!(!pool.db().exists());
}

#[test]
fn a_payload_file_with_a_byte_order_mark_is_read_and_errors_give_the_files_position() {
    let pool = Pool::new("");
    std::fs::write(pool.path("bom.jsonl"), "\u{feff}{\"a\":1}\n{\"b\":2}\n").unwrap();
    assert_eq!(pool.json(&["seed", "--payload-file", "bom.jsonl"])["queued"], 2);

    std::fs::write(pool.path("bad.jsonl"), "{\"a\":1}\n\n{\"a\": tru}\n").unwrap();
    let error = pool.fails(&["seed", "--payload-file", "bad.jsonl"]);
    assert!(error.contains("bad.jsonl line 3 is not valid JSON: expected ident (at column 10)"), "{error}");
    assert!(!error.contains("line 1"), "no position inside the line is given as a line: {error}");
}

#[test]
fn read_commands_do_not_create_a_missing_database() {
    let pool = Pool::new("");
    for args in [&["status"][..], &["jobs", "list"], &["reap"], &["check"], &["work"]] {
        let error = pool.fails(args);
        assert!(error.contains(&format!("no jobhost pool at {}", pool.db().display())), "{args:?}: {error}");
        assert!(error.contains("`jobhost seed` creates a new one"), "{error}");
    }
    assert!(!pool.path("data").exists(), "neither the database nor its folder was created");
}

#[test]
fn a_database_that_cannot_be_opened_is_named_with_the_fix() {
    let pool = Pool::new("");
    std::fs::write(pool.path("plain-file"), "").unwrap();
    let error = pool.command(&["seed"]).arg("--db").arg(pool.path("plain-file/pool.db")).output().unwrap();
    let stderr = String::from_utf8_lossy(&error.stderr);
    assert!(!error.status.success(), "{stderr}");
    assert!(stderr.contains("cannot open the database") && stderr.contains("plain-file/pool.db"), "{stderr}");
    assert!(stderr.contains("check that its folder exists"), "{stderr}");
}

#[test]
fn seed_refuses_a_processor_this_host_does_not_have_unless_told() {
    let pool = Pool::new("");
    let error = pool.fails(&["seed", "--processor", "nope"]);
    assert!(error.contains("--processor nope: no such processor on this host (it has: echo)"), "{error}");
    assert!(error.contains("--processor-elsewhere"), "{error}");
    assert_eq!(pool.json(&["seed", "--processor", "nope", "--processor-elsewhere"])["queued"], 1);
}

/// One job written by an older jobhost with counts past what `u32` holds (the way
/// `seed --max-attempts 4294967295` and two retries left it) disabled every listing and
/// reaping of the whole database.
#[test]
fn one_malformed_row_does_not_stop_listing_showing_reaping_or_working() {
    let pool = Pool::new("");
    pool.ok(&["seed", "--count", "2"]);
    let conn = rusqlite::Connection::open(pool.db()).unwrap();
    conn.execute(
        "UPDATE jobs SET max_attempts = 4294967297, payload = '1e400' WHERE seq = (SELECT min(seq) FROM jobs)",
        [],
    )
    .unwrap();
    drop(conn);

    let list = pool.json(&["jobs", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let odd = list.as_array().unwrap().iter().find(|job| job["max_attempts"] == u32::MAX).expect("clamped");
    let shown = pool.json(&["jobs", "show", odd["id"].as_str().unwrap()]);
    assert_eq!(shown["payload"], "1e400");
    assert!(shown["payload_error"].as_str().unwrap().contains("number out of range"), "{shown}");
    let human = pool.ok(&["jobs", "show", odd["id"].as_str().unwrap()]);
    assert!(human.contains("payload    (stored text, not readable as JSON"), "{human}");
    pool.ok(&["reap"]);
    let summary: Value = serde_json::from_str(pool.ok(&["work", "--json"]).lines().last().unwrap()).unwrap();
    assert_eq!(summary["processed"], 2, "{summary}");
}

/// `jobs retry` grants as many attempts again, which used to grow `max_attempts` past every
/// integer type; it now stops at a ceiling and says so.
#[test]
fn retry_stops_granting_attempts_at_the_ceiling() {
    let pool = Pool::new("");
    pool.ok(&["seed"]);
    let id = pool.json(&["jobs", "list"])[0]["id"].as_str().unwrap().to_owned();
    let conn = rusqlite::Connection::open(pool.db()).unwrap();
    conn.execute("UPDATE jobs SET status = 'poisoned', attempts = 2147483647, max_attempts = 2147483647", []).unwrap();
    drop(conn);
    let error = pool.fails(&["jobs", "retry", &id]);
    assert!(error.contains("has used every attempt jobhost can count"), "{error}");
    assert_eq!(pool.json(&["jobs", "retry", "--poisoned"])["retried"], 0);
    assert_eq!(pool.json(&["jobs", "show", &id])["status"], "poisoned");
}

#[test]
fn a_reader_that_goes_away_ends_a_listing_quietly() {
    let pool = Pool::new("");
    pool.ok(&["seed", "--count", "2000"]);
    let mut child = pool
        .command(&["jobs", "list", "--limit", "2000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{}: {stderr}", output.status);
    assert_eq!(stderr, "", "no panic, no error for a closed pipe");
}

fn jobs_can_be_listed_shown_cancelled_retried_and_purged(backend: Backend) {
    let pool = Pool::on(backend, "");
    pool.ok(&["seed", "--count", "3"]);
    let list = pool.json(&["jobs", "list"]);
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3);

    let cancelled = pool.json(&["jobs", "cancel", ids[0]]);
    assert_eq!(cancelled, json!({"cancelled": [ids[0]], "refused": []}));
    let shown = pool.json(&["jobs", "show", ids[0]]);
    assert_eq!(shown["status"], "cancelled");
    assert_eq!(shown["attempt_history"], json!([]));
    assert_eq!(pool.json(&["jobs", "list", "--status", "cancelled"]).as_array().unwrap().len(), 1);

    let output = pool.run(&["jobs", "cancel", ids[0], "no-such-job"]);
    assert!(!output.status.success(), "refusing any id is a failure");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("job is cancelled: only pending jobs can be cancelled"), "{stderr}");
    assert!(stderr.contains("no-such-job: no such job"), "{stderr}");

    let error = pool.fails(&["jobs", "retry", ids[1]]);
    assert!(error.contains("job is pending: only poisoned or cancelled jobs can be retried"), "{error}");
    assert_eq!(pool.json(&["jobs", "retry", ids[0]])["retried"], json!([ids[0]]));
    assert_eq!(pool.json(&["jobs", "show", ids[0]])["status"], "pending");

    pool.ok(&["jobs", "cancel", ids[2]]);
    assert_eq!(pool.json(&["jobs", "purge", "--older-than", "1h"]), json!({"purged": 0}));
    assert_eq!(pool.json(&["jobs", "purge", "--older-than", "0", "--status", "cancelled"]), json!({"purged": 1}));
    let error = pool.fails(&["jobs", "show", ids[2]]);
    assert!(error.contains(&format!("no job with id {}", ids[2])), "{error}");

    let human = pool.ok(&["jobs", "show", ids[0]]);
    assert!(human.contains("status     pending") && human.contains("payload    {\"seq\":"), "{human}");

    // Each attempt names the code that ran it: the processor's hash as `processors` shows it.
    pool.ok(&["work"]);
    let processors = pool.json(&["processors"]);
    let echo = processors.as_array().unwrap().iter().find(|processor| processor["name"] == "echo").unwrap();
    let code = echo["sha256"].as_str().expect("echo's sha256");
    assert!(code.len() == 64 && code.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{code}");
    assert_eq!(pool.json(&["jobs", "show", ids[0]])["attempt_history"][0]["processor_sha256"], code);
    let human = pool.ok(&["jobs", "show", ids[0]]);
    assert!(human.contains(&format!(", code {}\n", &code[..12])), "{human}");
}

#[test]
fn config_errors_name_the_file_line_and_key() {
    let pool = Pool::new("retry:\n  max_attempts: 3\n  backof_initial: 1s\n");
    let error = pool.fails(&["status"]);
    assert!(error.contains("jobhost.yml"), "{error}");
    assert!(error.contains("backof_initial") && error.contains("line 3"), "{error}");

    std::fs::write(pool.path("jobhost.yml"), "processors:\n  limits:\n    memory: lots\n").unwrap();
    let error = pool.fails(&["status"]);
    assert!(error.contains("processors.limits.memory") && error.contains("line 3"), "{error}");

    let error = pool
        .command(&["status"])
        .env("JOBHOST_CONFIG", "x")
        .arg("--config")
        .arg(pool.path("nope.yml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&error.stderr);
    assert!(!error.status.success() && stderr.contains("nope.yml"), "{stderr}");
}

#[test]
fn a_database_that_is_not_a_jobhost_pool_is_refused_untouched() {
    let pool = Pool::new("");
    std::fs::create_dir_all(pool.path("data")).unwrap();
    std::fs::write(pool.db(), b"this is a text file, not a database at all............").unwrap();
    let error = pool.fails(&["seed"]);
    assert!(error.contains("is not a SQLite database"), "{error}");
    assert_eq!(std::fs::read(pool.db()).unwrap(), b"this is a text file, not a database at all............");
}

#[test]
fn the_database_folder_is_created_and_env_vars_are_honoured() {
    let pool = Pool::new("");
    let output = std::process::Command::new(support::JOBHOST)
        .current_dir(pool.dir.path())
        .env("JOBHOST_DB", pool.path("deep/er/pool.db"))
        .env("JOBHOST_CONFIG", pool.path("jobhost.yml"))
        .args(["seed", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(pool.path("deep/er/pool.db").is_file());
}

/// Eight worker processes drain 2,000 jobs from one pool. Each is told to take exactly
/// 250: a claim that wrongly answered "empty" while jobs were ready would end that worker
/// early (a draining worker stops at the first empty claim), so every worker reporting
/// 250 shows no claim ever did.
fn many_processes_share_one_pool_and_complete_every_job_exactly_once(backend: Backend) {
    const WORKERS: usize = 8;
    const PER_WORKER: usize = 250;
    let pool = Pool::on(backend, "");
    pool.ok(&["seed", "--count", &(WORKERS * PER_WORKER).to_string()]);

    let workers: Vec<_> =
        (0..WORKERS).map(|_| pool.spawn(&["work", "--max-jobs", &PER_WORKER.to_string(), "--json"])).collect();
    // Read every worker's output at once, so none blocks on a full pipe.
    let outputs: Vec<_> =
        workers.into_iter().map(|worker| std::thread::spawn(move || worker.wait_with_output().unwrap())).collect();
    for output in outputs {
        let output = output.join().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "worker failed: {stderr}");
        assert!(!stderr.contains("locked"), "a lock error surfaced: {stderr}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(summary["processed"], PER_WORKER, "{summary}");
        assert_eq!(summary["completed"], PER_WORKER, "{summary}");
    }

    let status = pool.status();
    assert_eq!(jobs_count(&status, "completed"), (WORKERS * PER_WORKER) as u64, "{status}");
    let jobs = pool.json(&["jobs", "list", "--limit", "100000"]);
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), WORKERS * PER_WORKER);
    assert!(jobs.iter().all(|job| job["attempts"] == 1 && job["status"] == "completed"), "a job was claimed twice");
    let workers: std::collections::BTreeSet<&str> = jobs.iter().map(|job| job["worker_id"].as_str().unwrap()).collect();
    assert_eq!(workers.len(), WORKERS, "every worker ran jobs");
}

/// Writes a clear-screen and a window-title escape to stderr, then fails.
fn terminal_prank() -> String {
    support::writes_stderr_then_fails(r"\1b[2J\1b]0;owned\07gotcha", 20)
}

#[test]
fn a_guests_escape_sequences_reach_a_terminal_escaped_and_json_verbatim() {
    let pool = Pool::new("");
    std::fs::write(pool.path("processors/prank.wasm"), terminal_prank()).unwrap();
    pool.ok(&["seed", "--processor", "prank", "--max-attempts", "1"]);
    pool.ok(&["work"]);
    let id = pool.json(&["jobs", "list"])[0]["id"].as_str().unwrap().to_owned();

    let shown = pool.json(&["jobs", "show", &id]);
    assert_eq!(shown["attempt_history"][0]["stderr"], "\u{1b}[2J\u{1b}]0;owned\u{7}gotcha");

    // `script` gives the command a terminal for its stdout, as an operator's shell would.
    let command = format!(
        "{} --config {} --db {} jobs show {id}",
        support::JOBHOST,
        pool.path("jobhost.yml").display(),
        pool.db().display()
    );
    let output = std::process::Command::new("script").args(["-qec", &command, "/dev/null"]).output().unwrap();
    let seen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{seen}");
    assert!(seen.contains(r"stderr: \u{1b}[2J\u{1b}]0;owned\u{7}gotcha"), "{seen}");
    assert!(!seen.contains('\u{1b}') && !seen.contains('\u{7}'), "a raw escape reached the terminal: {seen:?}");
}

/// From SQLite to PostgreSQL, and back.
fn copy_moves_every_job_with_its_history_and_refuses_a_non_empty_target(backend: Backend) {
    let other = match backend {
        Backend::Sqlite => Backend::Postgres,
        Backend::Postgres => Backend::Sqlite,
    };
    let target = Pool::on(other, "");
    // The source's process opens the target, so its config names the target's schema.
    let schema = std::fs::read_to_string(target.path("jobhost.yml")).unwrap();
    let pool = Pool::on(backend, &format!("{schema}retry: {{backoff_initial: 0, backoff_max: 0}}\n"));
    std::fs::write(pool.path("processors/prank.wasm"), terminal_prank()).unwrap();
    pool.ok(&["seed", "--count", "3"]);
    pool.ok(&["seed", "--processor", "prank", "--max-attempts", "2"]);
    pool.ok(&["work"]);
    pool.ok(&["seed", "--count", "2", "--delay", "1h"]);
    let target_db = target.location().to_owned();

    let copied = pool.json(&["copy", "--to", &target_db]);
    assert_eq!(copied, json!({"copied": 6, "to": target_db}));
    // Workers stay behind with their machines, so the target knows no worker's host.
    let shown = |pool: &Pool| -> Vec<Value> {
        let mut jobs = pool.all_jobs();
        jobs.sort_by_key(|job| job["id"].as_str().unwrap().to_owned());
        for job in &mut jobs {
            job["host"] = Value::Null;
            for attempt in job["attempt_history"].as_array_mut().unwrap() {
                attempt["host"] = Value::Null;
            }
        }
        jobs
    };
    let original = shown(&pool);
    assert_eq!(shown(&target), original, "every job arrives as it was, history and results included");
    assert!(
        original.iter().any(|job| job["status"] == "poisoned" && job["attempt_history"].as_array().unwrap().len() == 2)
    );
    assert!(
        original.iter().any(|job| job["attempt_history"][0]["processor_sha256"].is_string()),
        "the copied attempts name the code that ran them"
    );

    let error = pool.fails(&["copy", "--to", &target_db]);
    assert!(error.contains("already holds jobs or workers") && error.contains("--into-non-empty"), "{error}");
    let error = pool.fails(&["copy", "--to", &target_db, "--into-non-empty"]);
    assert!(error.to_lowercase().contains("unique"), "the same ids twice are refused: {error}");
}

/// The server's URL with `user` (and `password`, if any) in place of the test user.
fn as_user(server: &str, user: &str, password: Option<&str>) -> String {
    let credentials = match password {
        Some(password) => format!("{user}:{}", password.replace(' ', "%20")),
        None => user.to_owned(),
    };
    server.replacen("jobhost@", &format!("{credentials}@"), 1)
}

/// `scripts/postgres` makes `jobhost_pw`, whose TCP login needs this password.
const PASSWORD: &str = "right horse battery";

#[test]
fn on_postgres_each_connection_failure_is_one_line_naming_the_server_and_the_fix() {
    let pool = Pool::on(Backend::Postgres, "");
    let server = pool.location().to_owned();
    let cases = [
        (
            "postgres://app:hunter2@127.0.0.1:1/postgres".to_owned(),
            "cannot reach the PostgreSQL server",
            "host and port",
        ),
        (
            "postgres://app:hunter2@[::1/postgres".to_owned(),
            "is not a valid PostgreSQL URL",
            "postgres://USER:PASSWORD@",
        ),
        (as_user(&server, "jobhost_pw", Some("hunter2")), "refused the login", "check the user and password"),
        (as_user(&server, "nobody_here", Some("hunter2")), "refused the login", "pg_hba.conf"),
        (server.replace("/postgres", "/no_such_db"), "database \"no_such_db\" does not exist", "createdb"),
        (as_user(&server, "jobhost_limited", None), "denied jobhost a privilege it needs", "grant the user CREATE"),
    ];
    for (url, what, fix) in cases {
        let error = pool.reached_at(&url).fails(&["seed"]);
        assert!(error.contains(what) && error.contains(fix), "{url}: {error}");
        assert_eq!(error.trim_end().lines().count(), 1, "one line: {error}");
        assert!(!error.contains("hunter2"), "the password was shown: {error}");
        let shown = url.replace("hunter2", "***");
        assert!(error.contains(shown.split('/').nth(2).unwrap()), "the server is named: {error}");
    }
    let limited = pool.reached_at(&as_user(&server, "jobhost_limited", None));
    assert!(limited.fails(&["status"]).contains("no jobhost pool at"), "the refused seed created nothing");
}

/// The store says whose the schema is not; which setting to change is the command line's to say.
#[test]
fn on_postgres_a_schema_holding_other_tables_is_refused_with_the_fix_said_once() {
    let pool = Pool::on(Backend::Postgres, "");
    let config = std::fs::read_to_string(pool.path("jobhost.yml")).unwrap();
    let schema = config.split("schema: ").nth(1).and_then(|rest| rest.split('}').next()).unwrap();
    pool.server_rows(&format!("CREATE SCHEMA {schema}; CREATE TABLE {schema}.jobs (note text)"));
    let error = pool.fails(&["seed"]);
    assert!(error.contains("was not made by jobhost") && error.contains(schema), "{error}");
    assert!(error.contains("set database.schema"), "{error}");
    assert_eq!(error.matches("point --db").count(), 1, "{error}");
    assert_eq!(pool.server_rows(&format!("SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}'")), ["1"]);
}

#[test]
fn on_postgres_a_password_shows_in_no_process_list_log_error_or_help() {
    let pool = Pool::on(Backend::Postgres, "");
    let pool = pool.reached_at(&as_user(pool.location(), "jobhost_pw", Some(PASSWORD)));
    pool.ok(&["seed", "--payload", r#"{"delay_ms": 60000}"#]);
    let spawned = pool.json(&["check", "--max-workers", "1"]);
    let worker_id = spawned["spawned_ids"][0].as_str().unwrap().to_owned();
    // `check` returns once its worker has been exec'd, so the process is there to be seen.
    let (worker_pid, cmdline) = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let cmdline =
                String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).ok()?).replace('\0', " ");
            cmdline.contains(&worker_id).then_some((pid, cmdline))
        })
        .next()
        .expect("the spawned worker is running");
    assert!(!cmdline.contains("horse"), "the password is in the worker's argv: {cmdline}");
    pool.wait_for_status(std::time::Duration::from_secs(30), "the job to be claimed", |status| {
        jobs_count(status, "claimed") == 1
    });
    support::signal(worker_pid, libc::SIGKILL);

    let log = std::fs::read_to_string(pool.path(&format!("data/logs/{worker_id}.log"))).unwrap();
    assert!(!log.contains("horse"), "the password is in the worker's log: {log}");
    let error = pool.reached_at(&pool.location().replace("/postgres", "/no_such_db")).fails(&["status"]);
    assert!(!error.contains("horse") && error.contains("jobhost_pw:***@"), "{error}");
    let help = pool.command(&["seed", "--help"]).env("JOBHOST_DB", pool.location()).output().unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("horse"), "the password is in --help");
    // Kept out of the URL, the password comes from $PGPASSWORD, as libpq's does.
    let bare = pool.reached_at(&pool.location().replace(":right%20horse%20battery@", "@"));
    let status = bare.command(&["status", "--json"]).env("PGPASSWORD", PASSWORD).output().unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
}

/// libpq's sslmode: `require` encrypts, `verify-ca` also wants the certificate signed by
/// `sslrootcert`, `verify-full` also wants it to name the host. The test server's certificate
/// names 127.0.0.1, not localhost.
#[test]
fn on_postgres_sslmode_means_what_it_means_to_libpq() {
    let ca = std::env::var("JOBHOST_TEST_PG_CA")
        .expect("JOBHOST_TEST_PG_CA names the CA of the test server's certificate (scripts/test sets it)");
    let pool = Pool::on(Backend::Postgres, "worker: {heartbeat_interval: 100ms}\n");
    let at = |query: String| pool.reached_at(&format!("{}?{query}", pool.location()));
    at(format!("sslmode=verify-full&sslrootcert={ca}")).ok(&["seed", "--payload", r#"{"delay_ms": 60000}"#]);
    at("sslmode=disable".to_owned()).ok(&["status"]);

    let untrusted = at("sslmode=verify-ca".to_owned()).fails(&["status"]);
    assert!(untrusted.contains("no TLS connection") && untrusted.contains("sslrootcert"), "{untrusted}");
    let on_localhost = pool.location().replace("127.0.0.1", "localhost");
    let misnamed = pool.reached_at(&format!("{on_localhost}?sslmode=verify-full&sslrootcert={ca}")).fails(&["status"]);
    assert!(misnamed.contains("not valid for name \"localhost\""), "{misnamed}");
    pool.reached_at(&format!("{on_localhost}?sslmode=verify-ca&sslrootcert={ca}")).ok(&["status"]);
    let bogus = at("sslmode=sometimes".to_owned()).fails(&["status"]);
    assert!(bogus.contains("use disable, allow, prefer, require, verify-ca or verify-full"), "{bogus}");

    // A worker on `require` talks to the server over TLS only, on both of its connections.
    let name = format!("tls_{}", uuid::Uuid::new_v4().simple());
    let require = at(format!("sslmode=require&application_name={name}"));
    let worker = require.spawn_guarded(&["work", "--once"]);
    pool.wait_for_status(std::time::Duration::from_secs(30), "the job to be claimed", |status| {
        jobs_count(status, "claimed") == 1
    });
    let query = format!(
        "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '{name}'"
    );
    let started = std::time::Instant::now();
    let sessions = loop {
        let sessions = pool.server_rows(&query);
        // The heartbeat connects at its first beat, a heartbeat_interval after the start.
        if sessions.len() == 2 || started.elapsed() > std::time::Duration::from_secs(30) {
            break sessions;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(sessions, ["t", "t"], "both connections of the worker are encrypted");
    drop(worker);
}

/// Unique keys through `seed`: a held key queues nothing and names the holder, per line of a
/// payload file; `--replace` debounces; processes racing with one key queue it once.
fn seed_with_unique_keys_names_the_jobs_it_matched_and_debounces(backend: Backend) {
    let pool = Pool::on(backend, "");
    let queued = pool.json(&["seed", "--unique-key", "order-1"]);
    assert_eq!(queued, json!({"queued": 1, "pool": "default", "matched": []}));
    let holder = pool.json(&["jobs", "list"])[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        pool.json(&["seed", "--unique-key", "order-1"]),
        json!({"queued": 0, "pool": "default", "matched": [{"job": 1, "id": holder, "outcome": "duplicate"}]})
    );
    let said = pool.ok(&["seed", "--unique-key", "order-1", "--pool", "other"]);
    assert_eq!(said.trim(), "queued 1 job(s) in pool other", "keys are per pool");

    std::fs::write(pool.path("orders.jsonl"), "{\"order\":7}\n\n{\"order\":\"x\"}\n{\"order\":7,\"again\":true}\n")
        .unwrap();
    let said = pool.ok(&["seed", "--payload-file", "orders.jsonl", "--unique-key-from", "/order"]);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], "queued 2 job(s) in pool default");
    assert!(lines[1].starts_with("line 4 was not queued: its unique key is held by job "), "{said}");

    std::fs::write(pool.path("keyless.jsonl"), "{\"order\":8}\n{\"id\":9}\n").unwrap();
    let error = pool.fails(&["seed", "--payload-file", "keyless.jsonl", "--unique-key-from", "/order"]);
    assert!(error.contains("keyless.jsonl line 2 has no string or number at --unique-key-from /order"), "{error}");
    for (args, expected) in [
        (&["seed", "--replace"][..], "--unique-key"),
        (&["seed", "--unique-within", "1h"], "--unique-key"),
        (&["seed", "--unique-key", "a", "--unique-key-from", "/a"], "cannot be used with"),
        (&["seed", "--unique-key-from", "order"], "is not a JSON pointer: start it with '/', e.g. /order"),
        (&["seed", "--unique-key", ""], "--unique-key must be 1 to 128 bytes of printable text"),
    ] {
        let error = pool.fails(args);
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    assert_eq!(jobs_count(&pool.status(), "pending"), 4, "no refused seed queued anything");

    let debounce = |payload: &str| {
        pool.json(&["seed", "--unique-key", "user-7", "--replace", "--delay", "1h", "--payload", payload])
    };
    assert_eq!(debounce(r#"{"v":1}"#)["queued"], 1);
    let replaced = debounce(r#"{"v":2}"#);
    assert_eq!((&replaced["queued"], &replaced["matched"][0]["outcome"]), (&json!(0), &json!("replaced")));
    let job = pool.json(&["jobs", "show", replaced["matched"][0]["id"].as_str().unwrap()]);
    assert_eq!(job["payload"], json!({"v": 2}), "the job holds the last payload");

    let racers: Vec<_> =
        (0..6).map(|_| pool.spawn(&["seed", "--unique-key", "race", "--pool", "race", "--json"])).collect();
    let queued: u64 = racers
        .into_iter()
        .map(|racer| {
            let output = racer.wait_with_output().unwrap();
            assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
            serde_json::from_slice::<Value>(&output.stdout).unwrap()["queued"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(queued, 1, "six processes racing with one key queue one job");
    assert_eq!(jobs_count(&pool.json(&["status", "--pool", "race"]), "pending"), 1);
}

on_both_backends!(
    seed_queues_jobs_and_status_shows_the_fixed_shape,
    seed_with_unique_keys_names_the_jobs_it_matched_and_debounces,
    jobs_can_be_listed_shown_cancelled_retried_and_purged,
    many_processes_share_one_pool_and_complete_every_job_exactly_once,
    copy_moves_every_job_with_its_history_and_refuses_a_non_empty_target,
);
