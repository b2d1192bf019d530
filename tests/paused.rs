//! Paused pools with real processes on both backends: pausing, resuming and listing from the
//! CLI; workers and checkers that leave a paused pool's jobs alone and say so; a following
//! worker that waits, idle, while its pool is paused and starts at once when it resumes; and
//! jobs already running when the pool is paused, which finish.

mod support;

use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::{Backend, Pool, jobs_count};

/// Far above any wait a test expects: reaching it means the behaviour is missing.
const PATIENCE: Duration = Duration::from_secs(20);

on_both_backends!(
    pools_are_paused_resumed_and_listed_from_the_cli,
    work_and_check_leave_a_paused_pool_alone_and_say_so,
    a_following_worker_waits_idle_while_paused_and_starts_at_once_on_resume,
    jobs_running_when_their_pool_is_paused_finish,
);

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The pools `jobhost pools --json` lists, by name.
fn pools(pool: &Pool) -> Vec<Value> {
    let listed = pool.json(&["pools"]);
    assert_eq!(listed.as_object().unwrap().keys().collect::<Vec<_>>(), ["pools"], "{listed}");
    listed["pools"].as_array().unwrap().clone()
}

fn pools_are_paused_resumed_and_listed_from_the_cli(backend: Backend) {
    let pool = Pool::on(backend, "");
    pool.ok(&["seed", "--count", "2"]);
    let before = now_ms();
    let paused = pool.json(&["pools", "pause", "default", "--reason", "incident 42"]);
    let paused_at = paused["paused_at"].as_i64().expect("a paused pool says since when");
    assert!((before - 1_000..=now_ms() + 1_000).contains(&paused_at), "{paused}");
    assert_eq!(
        paused,
        json!({"pool": "default", "jobs": {"pending": 2, "claimed": 0, "completed": 0, "poisoned": 0, "cancelled": 0},
               "ready": 2, "oldest_ready_age_ms": paused["oldest_ready_age_ms"], "paused": true,
               "paused_at": paused_at, "paused_reason": "incident 42"})
    );
    let again = pool.ok(&["pools", "pause", "default"]);
    assert!(again.contains("pool default is paused since") && again.contains("(incident 42)"), "{again}");
    let empty = pool.json(&["pools", "pause", "reports"]);
    assert_eq!(
        (&empty["paused"], &empty["jobs"]["pending"], &empty["paused_reason"]),
        (&json!(true), &json!(0), &Value::Null)
    );

    let listed = pools(&pool);
    let names: Vec<(&str, bool)> =
        listed.iter().map(|entry| (entry["pool"].as_str().unwrap(), entry["paused"].as_bool().unwrap())).collect();
    assert_eq!(names, [("default", true), ("reports", true)], "a paused pool without jobs is listed too");
    assert_eq!(listed[0]["paused_at"], paused_at, "pausing again kept when it was paused");
    let table = pool.ok(&["pools"]);
    assert!(table.contains("paused since") && table.contains("(incident 42)"), "{table}");
    let status = pool.ok(&["status"]);
    assert!(status.contains("pool default is paused since"), "{status}");
    let paused_pools = &pool.status()["paused_pools"];
    assert_eq!(paused_pools.as_array().map(Vec::len), Some(2), "{paused_pools}");

    for (args, expected) in [
        (vec!["pools", "pause", ""], "POOL must be 1 to 128 bytes of printable text"),
        (vec!["pools", "resume", "a\nb"], "POOL must be 1 to 128 bytes of printable text"),
        (
            vec!["pools", "pause", "x", "--reason", "two\nlines"],
            "--reason must be at most 1024 bytes of text on one line",
        ),
    ] {
        let error = pool.fails(&args);
        assert!(error.contains(expected), "{args:?}: {error}");
    }
    assert_eq!(pools(&pool).len(), 2, "a refused pause pauses nothing");

    assert!(pool.ok(&["pools", "resume", "default"]).contains("pool default resumed"));
    assert!(pool.ok(&["pools", "resume", "default"]).contains("was not paused"), "resuming is idempotent too");
    let resumed = pool.json(&["pools", "resume", "reports"]);
    assert_eq!((&resumed["paused"], &resumed["paused_at"]), (&json!(false), &Value::Null));
    let names: Vec<Value> = pools(&pool).iter().map(|entry| entry["pool"].clone()).collect();
    assert_eq!(names, [json!("default")], "a resumed pool without jobs is no longer listed");
    assert_eq!(pool.status()["paused_pools"], json!([]));
}

fn work_and_check_leave_a_paused_pool_alone_and_say_so(backend: Backend) {
    let pool = Pool::on(backend, "");
    pool.ok(&["seed", "--count", "2"]);
    pool.ok(&["pools", "pause", "default"]);

    let text = pool.ok(&["work"]);
    assert!(text.contains("no work available") && text.contains("pool default is paused"), "{text}");
    let summary = pool.json(&["work"]);
    assert_eq!((summary["processed"].as_u64(), &summary["pool_paused"]), (Some(0), &json!(true)), "{summary}");
    let check = pool.json(&["check", "--max-workers", "4"]);
    assert_eq!(
        (&check["paused"], &check["queue_depth"], &check["spawned"]),
        (&json!(true), &json!(2), &json!(0)),
        "{check}"
    );
    let said = pool.ok(&["check"]);
    assert!(said.contains("pool default: paused, so no worker is started for its 2 ready job(s)"), "{said}");
    let status = pool.status();
    assert_eq!((jobs_count(&status, "pending"), status["workers"]["starting"].as_u64()), (2, Some(0)), "{status}");

    pool.ok(&["pools", "resume", "default"]);
    let check = pool.json(&["check", "--max-workers", "4"]);
    assert_eq!((&check["paused"], &check["spawned"]), (&json!(false), &json!(2)), "{check}");
    pool.wait_for_status(PATIENCE, "the resumed pool drained by the workers check started", |status| {
        jobs_count(status, "completed") == 2
    });
    let summary = pool.json(&["work"]);
    assert!(summary.get("pool_paused").is_none(), "a pool that is not paused is not said to be: {summary}");
}

/// The next of a process's JSON lines.
fn next_line(lines: &Receiver<String>, within: Duration, what: &str) -> Value {
    let line = lines.recv_timeout(within).unwrap_or_else(|e| panic!("no line for {what} within {within:?}: {e}"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

/// CPU time (user and system) process `pid` has used so far.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's /proc stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a system setting.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1_000 / per_second)
}

fn a_following_worker_waits_idle_while_paused_and_starts_at_once_on_resume(backend: Backend) {
    let pool = Pool::on(backend, "");
    pool.ok(&["seed", "--count", "2"]);
    pool.ok(&["pools", "pause", "default"]);
    let mut worker = pool.spawn_guarded(&["work", "--follow", "--json"]);
    let lines = support::stdout_lines(worker.child_mut());
    pool.wait_for_status(PATIENCE, "the following worker up", |status| status["workers"]["active"] == 1);
    pool.ok(&["seed"]);

    // What a paused pool's worker does is nothing, so it is watched for a while: it must
    // neither run a job nor exit nor spin (a loop asking the database again and again would
    // use the CPU of the whole window).
    let cpu_before = cpu_time(worker.id());
    let window = Duration::from_millis(1_500);
    let ran = lines.recv_timeout(window);
    assert!(ran.is_err(), "a job ran in a paused pool: {ran:?}");
    assert!(worker.is_running(), "the worker waits while the pool is paused");
    let used = cpu_time(worker.id()) - cpu_before;
    assert!(used < window / 5, "the waiting worker used {used:?} of CPU in {window:?}: it spins");
    let status = pool.status();
    assert_eq!((jobs_count(&status, "pending"), jobs_count(&status, "claimed")), (3, 0), "{status}");

    let resuming = Instant::now();
    pool.ok(&["pools", "resume", "default"]);
    // The worker's fallback look comes every 5 s: well under that, only the wake-up that
    // resuming sends can have started it.
    let first = next_line(&lines, Duration::from_millis(2_500), "the first job after resume");
    let started_after = resuming.elapsed();
    for line in [first, next_line(&lines, PATIENCE, "the second job"), next_line(&lines, PATIENCE, "the third job")] {
        assert_eq!(line["status"], "completed", "{line}");
    }
    assert!(worker.is_running(), "it goes on following: {started_after:?}");
    support::signal(worker.id(), libc::SIGTERM);
    let output = worker.wait_at_most(PATIENCE, "the following worker after SIGTERM");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = next_line(&lines, PATIENCE, "the summary");
    assert_eq!(summary["processed"], 3, "{summary}");
    assert!(summary.get("pool_paused").is_none(), "{summary}");
}

fn jobs_running_when_their_pool_is_paused_finish(backend: Backend) {
    let pool = Pool::on(backend, "worker: {concurrency: 1}\n");
    pool.ok(&["seed", "--count", "2", "--payload", r#"{"delay_ms": 1500}"#]);
    let mut worker = pool.spawn_guarded(&["work", "--json"]);
    let lines = support::stdout_lines(worker.child_mut());
    pool.wait_for_status(PATIENCE, "the first job running", |status| jobs_count(status, "claimed") == 1);
    pool.ok(&["pools", "pause", "default", "--reason", "deploy"]);

    let output = worker.wait_at_most(PATIENCE, "the worker finishing the job it ran");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ran = next_line(&lines, PATIENCE, "the job that was running");
    assert_eq!(ran["status"], "completed", "the job running as the pool was paused finished: {ran}");
    let summary = next_line(&lines, PATIENCE, "the summary");
    assert_eq!((summary["processed"].as_u64(), &summary["pool_paused"]), (Some(1), &json!(true)), "{summary}");
    let status = pool.status();
    assert_eq!((jobs_count(&status, "completed"), jobs_count(&status, "pending")), (1, 1), "{status}");
}
