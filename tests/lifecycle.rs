//! The worker lifecycle with real processes on a real SQLite file: the checker spawning
//! workers, workers running jobs in the sandbox, retries and poisoning, workers killed
//! mid-job and recovered by the reaper, heartbeats, graceful shutdown, and chaos.

mod support;

use std::process::Child;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Backend, Pool, jobs_count, stderr_lines, stdout_lines};

/// Fast heartbeats and short staleness so lost workers are noticed within a test.
const FAST_LIFECYCLE: &str = "
retry: {backoff_initial: 0, backoff_max: 0}
worker: {heartbeat_interval: 100ms}
reaper: {stale_after: 2s}
checker: {start_grace: 10s}
";

/// Traps on every run.
const ALWAYS_TRAPS: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") unreachable))"#;

/// Exits 1 unless its environment holds `JOB_ATTEMPT=3`, so it succeeds on the third try.
const THIRD_TIME_LUCKY: &str = r#"(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  ;; The entry to look for, NUL-terminated by the zeroed byte after it.
  (data (i32.const 0) "JOB_ATTEMPT=3")
  (func (export "_start")
    (local $count i32) (local $i i32) (local $entry i32) (local $j i32)
    (drop (call $sizes (i32.const 16) (i32.const 20)))
    (local.set $count (i32.load (i32.const 16)))
    (drop (call $environ (i32.const 1024) (i32.const 4096)))
    (block $none
      (loop $next_entry
        (br_if $none (i32.ge_u (local.get $i) (local.get $count)))
        (local.set $entry (i32.load (i32.add (i32.const 1024) (i32.shl (local.get $i) (i32.const 2)))))
        (local.set $j (i32.const 0))
        (block $differs
          (loop $next_byte
            (br_if $differs (i32.ne (i32.load8_u (i32.add (local.get $entry) (local.get $j)))
                                    (i32.load8_u (local.get $j))))
            (local.set $j (i32.add (local.get $j) (i32.const 1)))
            (br_if $next_byte (i32.lt_u (local.get $j) (i32.const 14))))
          (return))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next_entry)))
    (call $exit (i32.const 1))))"#;

fn outcomes(job: &Value) -> Vec<String> {
    job["attempt_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("running").to_owned())
        .collect()
}

/// Runs one worker at `concurrency` until the pool is drained; returns its `--json` summary.
fn drain(pool: &Pool, concurrency: &str) -> Value {
    let output = pool.ok(&["work", "--json", "--concurrency", concurrency]);
    serde_json::from_str(output.lines().last().expect("a summary line")).expect("a JSON summary")
}

fn job_by_payload(pool: &Pool, payload: &str) -> Value {
    let payload: Value = serde_json::from_str(payload).expect("a JSON payload");
    pool.all_jobs().into_iter().find(|j| j["payload"] == payload).expect("job with that payload")
}

fn signal(child: &Child, signal: i32) {
    // Safety: plain kill(2) on a child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0, "kill failed");
}

/// Polls `done` until it holds, failing after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `worker` (SIGSTOP) until the reaper declares it lost, then lets it run on.
fn stopped_until_reaped(pool: &Pool, worker: &Child) {
    signal(worker, libc::SIGSTOP);
    let start = Instant::now();
    while pool.json(&["reap", "--stale-after", "1s"])["reaped_count"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "the stopped worker was never reaped");
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(worker, libc::SIGCONT);
}

fn wait_for_line(lines: &Receiver<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return,
            Ok(_) => {}
            Err(err) => panic!("no stderr line with {needle:?}: {err}"),
        }
    }
}

fn check_spawns_workers_that_drain_the_pool(backend: Backend) {
    let pool = Pool::on(backend, FAST_LIFECYCLE);
    pool.ok(&["seed", "--count", "20", "--payload", r#"{"delay_ms": 100}"#]);

    let first = pool.json(&["check", "--max-workers", "3"]);
    // Ready jobs are counted only as far as they can change the plan: live workers plus slots.
    assert_eq!(
        (first["queue_depth"].as_u64(), first["workers_needed"].as_u64(), first["spawned"].as_u64()),
        (Some(3), Some(3), Some(3)),
        "{first}"
    );
    let second = pool.json(&["check", "--max-workers", "3"]);
    assert_eq!((second["active_workers"].as_u64(), second["spawned"].as_u64()), (Some(3), Some(0)), "{second}");

    let status = pool.wait_for_status(Duration::from_secs(60), "the pool to drain", |s| {
        jobs_count(s, "completed") == 20 && s["workers"]["starting"] == 0 && s["workers"]["active"] == 0
    });
    assert_eq!(status["workers"]["terminated"], 3, "exactly the three spawned workers ever ran: {status}");
    for job in pool.all_jobs() {
        assert_eq!(job["result"], json!({"status": "completed", "processed": true, "echo": job["payload"]}));
        assert_eq!(outcomes(&job), ["ok"]);
    }
    let ids = first["spawned_ids"].as_array().unwrap();
    for id in ids {
        let log = std::fs::read_to_string(pool.path(&format!("data/logs/{}.log", id.as_str().unwrap()))).unwrap();
        assert!(log.contains("worker started"), "each worker logs to its own file: {log}");
    }
}

fn a_killed_workers_job_completes_once_on_another_worker(backend: Backend) {
    let pool = Pool::on(backend, FAST_LIFECYCLE);
    pool.ok(&["seed", "--payload", r#"{"delay_ms": 1500}"#]);
    let mut victim = pool.spawn(&["work", "--once"]);
    pool.wait_for_status(Duration::from_secs(30), "the job to be claimed", |s| jobs_count(s, "claimed") == 1);
    victim.kill().unwrap();
    victim.wait().unwrap();

    let start = Instant::now();
    while pool.json(&["reap", "--stale-after", "1s"])["jobs_released"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "the dead worker's job was never released");
        std::thread::sleep(Duration::from_millis(100));
    }
    let summary: Value = serde_json::from_str(pool.ok(&["work", "--json"]).lines().last().unwrap()).unwrap();
    assert_eq!((summary["processed"].as_u64(), summary["completed"].as_u64()), (Some(1), Some(1)), "{summary}");
    let job = job_by_payload(&pool, r#"{"delay_ms":1500}"#);
    assert_eq!(job["status"], "completed");
    assert_eq!(outcomes(&job), ["worker_lost", "ok"]);
}

fn failing_processors_retry_then_poison_and_a_flaky_one_recovers(backend: Backend) {
    let pool = Pool::on(backend, &format!("{FAST_LIFECYCLE}processors: {{overrides: {{echo: {{timeout: 200ms}}}}}}\n"));
    std::fs::write(pool.path("processors/always_traps.wasm"), ALWAYS_TRAPS).unwrap();
    std::fs::write(pool.path("processors/third_time_lucky.wasm"), THIRD_TIME_LUCKY).unwrap();
    pool.ok(&["seed", "--processor", "always_traps", "--payload", r#""trap""#]);
    pool.ok(&["seed", "--processor", "third_time_lucky", "--payload", r#""flaky""#]);
    pool.ok(&["seed", "--processor", "echo", "--payload", r#"{"delay_ms": 60000}"#]);

    let summary = drain(&pool, "3");
    assert_eq!(
        (summary["processed"].as_u64(), summary["completed"].as_u64(), summary["failed"].as_u64()),
        (Some(9), Some(1), Some(8)),
        "{summary}"
    );

    let trap = job_by_payload(&pool, r#""trap""#);
    assert_eq!(trap["status"], "poisoned");
    assert_eq!(outcomes(&trap), ["trap", "trap", "trap"]);
    assert!(trap["attempt_history"][0]["message"].as_str().unwrap().contains("unreachable"), "{trap}");
    assert!(trap["last_error"].as_str().unwrap().starts_with("trap"), "{trap}");

    let flaky = job_by_payload(&pool, r#""flaky""#);
    assert_eq!(flaky["status"], "completed");
    assert_eq!(outcomes(&flaky), ["exit", "exit", "ok"]);

    let sleepy = job_by_payload(&pool, r#"{"delay_ms":60000}"#);
    assert_eq!(sleepy["status"], "poisoned");
    assert_eq!(outcomes(&sleepy), ["timeout", "timeout", "timeout"]);
    for attempt in sleepy["attempt_history"].as_array().unwrap() {
        assert!(attempt["duration_ms"].as_u64().unwrap() < 5_000, "the deadline cut the sleep short: {attempt}");
    }
}

/// PostgreSQL's `text` refuses NUL: a processor writing one must fail only its own job, in
/// a turn that settles other jobs beside it, and never the worker.
fn a_processor_writing_nul_bytes_fails_alone_and_the_worker_carries_on(backend: Backend) {
    let pool = Pool::on(backend, FAST_LIFECYCLE);
    std::fs::write(pool.path("processors/nul.wasm"), support::writes_stderr_then_fails(r"a\00b", 3)).unwrap();
    pool.ok(&["seed", "--processor", "nul", "--payload", r#""nul""#]);
    pool.ok(&["seed", "--count", "20"]);

    let summary = drain(&pool, "8");
    assert_eq!(
        (summary["processed"].as_u64(), summary["completed"].as_u64(), summary["failed"].as_u64()),
        (Some(23), Some(20), Some(3)),
        "{summary}"
    );
    let nul = job_by_payload(&pool, r#""nul""#);
    assert_eq!(nul["status"], "poisoned");
    assert_eq!(outcomes(&nul), ["exit", "exit", "exit"]);
    assert_eq!(nul["attempt_history"][0]["stderr"], "a\u{2400}b", "NUL is stored visibly: {nul}");
    assert_eq!(jobs_count(&pool.status(), "completed"), 20);
}

fn a_long_job_keeps_its_worker_alive_through_heartbeats(backend: Backend) {
    let pool = Pool::on(backend, FAST_LIFECYCLE);
    pool.ok(&["seed", "--payload", r#"{"delay_ms": 5000}"#]);
    let mut worker = pool.spawn(&["work", "--once"]);
    pool.wait_for_status(Duration::from_secs(30), "the job to be claimed", |s| jobs_count(s, "claimed") == 1);
    let started = Instant::now();
    // Reap with a threshold well below the job's length for as long as the job runs.
    while worker.try_wait().unwrap().is_none() {
        let reap = pool.json(&["reap", "--stale-after", "2s"]);
        assert_eq!(reap["reaped_count"], 0, "a live worker was reaped after {:?}: {reap}", started.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(started.elapsed() > Duration::from_secs(3), "the job outlived the reap threshold");
    let job = job_by_payload(&pool, r#"{"delay_ms":5000}"#);
    assert_eq!((job["status"].as_str(), outcomes(&job)), (Some("completed"), vec!["ok".to_owned()]));
}

fn sigterm_finishes_the_job_in_flight_and_claims_no_more(backend: Backend) {
    let pool = Pool::on(backend, FAST_LIFECYCLE);
    pool.ok(&["seed", "--count", "3", "--payload", r#"{"delay_ms": 1000}"#]);
    let worker = pool.spawn(&["work", "--json"]);
    pool.wait_for_status(Duration::from_secs(30), "a job to be claimed", |s| jobs_count(s, "claimed") == 1);
    signal(&worker, libc::SIGTERM);
    let output = worker.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(
        (summary["processed"].as_u64(), summary["completed"].as_u64(), summary["status"].as_str()),
        (Some(1), Some(1), Some("terminated"))
    );
    let status = pool.status();
    assert_eq!(
        (jobs_count(&status, "completed"), jobs_count(&status, "pending"), jobs_count(&status, "claimed")),
        (1, 2, 0),
        "{status}"
    );
    assert_eq!(status["workers"]["terminated"], 1);
}

fn a_second_sigterm_exits_130_at_once_and_leaves_the_job_to_the_reaper(backend: Backend) {
    let pool = Pool::on(backend, FAST_LIFECYCLE);
    pool.ok(&["seed", "--payload", r#"{"delay_ms": 60000}"#]);
    let mut worker = pool.spawn(&["work", "--worker-id", "impatient", "--log-level", "info"]);
    let log = stderr_lines(&mut worker);
    pool.wait_for_status(Duration::from_secs(30), "the job to be claimed", |s| jobs_count(s, "claimed") == 1);
    signal(&worker, libc::SIGTERM);
    wait_for_line(&log, "signal received");
    assert!(worker.try_wait().unwrap().is_none(), "the first signal only stops claiming");

    signal(&worker, libc::SIGTERM);
    // Far below the job's 60 s (and its 30 s deadline): the worker does not wait for it.
    let mut exit = None;
    wait_until(Duration::from_secs(5), "the worker to exit after the second signal", || {
        exit = worker.try_wait().unwrap();
        exit.is_some()
    });
    assert_eq!(exit.unwrap().code(), Some(130), "{exit:?}");
    wait_for_line(&log, "second signal: exiting now");
    assert_eq!(jobs_count(&pool.status(), "claimed"), 1, "the job is left claimed");

    let start = Instant::now();
    let reap = loop {
        let reap = pool.json(&["reap", "--stale-after", "1s"]);
        if reap["jobs_released"] == 1 {
            break reap;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the job was never released: {reap}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(reap["reaped_workers"], json!(["impatient"]));
    let job = job_by_payload(&pool, r#"{"delay_ms":60000}"#);
    assert_eq!((job["status"].as_str(), outcomes(&job)), (Some("pending"), vec!["worker_lost".to_owned()]));
}

/// Workers are SIGKILLed while the reaper runs, then the pool is left to settle. The
/// victims are picked by a seeded generator from the workers in spawn order, and each kill
/// waits for events (progress of the pool, and a job held by the victim), so every run kills
/// the same workers at the same stage. Every job must end completed or poisoned, no job may
/// stay claimed or complete twice, and every attempt must be on record and closed.
fn chaos_kills_lose_no_job_and_complete_none_twice(backend: Backend) {
    const JOBS: usize = 300;
    const KILLS: usize = 12;
    // Spreads the kills over most of the drain while leaving jobs ready at the last one, so
    // no worker drains the pool and exits before its turn comes.
    const COMPLETIONS_BETWEEN_KILLS: u64 = 15;
    let pool = Pool::on(
        backend,
        "retry: {backoff_initial: 0, backoff_max: 0, max_attempts: 10}\n\
         worker: {heartbeat_interval: 100ms}\nreaper: {stale_after: 1s}\nchecker: {start_grace: 5s}\n",
    );
    pool.ok(&["seed", "--count", &JOBS.to_string(), "--payload", r#"{"delay_ms": 100}"#]);

    // A small deterministic generator: the schedule of kills is the same on every run.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next_random = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // In spawn order, with ids chosen here, so a pick names the same worker on every run.
    let mut workers: Vec<(String, Child)> = Vec::new();
    let mut spawned = 0;
    let mut keep_four_workers = |workers: &mut Vec<(String, Child)>| {
        workers.retain_mut(|(_, child)| child.try_wait().unwrap().is_none());
        while workers.len() < 4 {
            let id = format!("chaos-worker-{spawned}");
            spawned += 1;
            workers.push((id.clone(), pool.spawn(&["work", "--concurrency", "2", "--worker-id", &id])));
        }
    };
    let completed = || jobs_count(&pool.status(), "completed");
    let holds_a_job = |id: &str| {
        let claimed = pool.json(&["jobs", "list", "--status", "claimed"]);
        claimed.as_array().unwrap().iter().any(|job| job["worker_id"] == id)
    };
    let mut next_kill_after = 0;
    for _ in 0..KILLS {
        keep_four_workers(&mut workers);
        let (victim, mut child) = workers.remove((next_random() % workers.len() as u64) as usize);
        next_kill_after += COMPLETIONS_BETWEEN_KILLS;
        wait_until(
            Duration::from_secs(60),
            &format!("{victim} to hold a job after {next_kill_after} completions"),
            || completed() >= next_kill_after && holds_a_job(&victim),
        );
        child.kill().unwrap();
        child.wait().unwrap();
        pool.ok(&["reap"]);
    }
    // Settle: no more kills; reap and replace workers until nothing is pending or claimed.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = pool.status();
        if jobs_count(&status, "pending") == 0 && jobs_count(&status, "claimed") == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool did not settle: {status}");
        keep_four_workers(&mut workers);
        pool.ok(&["reap"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    for (_, mut child) in workers {
        child.wait().unwrap();
    }

    let status = pool.status();
    assert_eq!(jobs_count(&status, "completed") + jobs_count(&status, "poisoned"), JOBS as u64, "{status}");
    let mut worker_lost = 0;
    for job in pool.all_jobs() {
        let outcomes = outcomes(&job);
        assert!(!outcomes.iter().any(|outcome| outcome == "running"), "an attempt was left open: {job}");
        assert_eq!(outcomes.len() as u64, job["attempts"].as_u64().unwrap(), "every attempt is in the history: {job}");
        let successes = outcomes.iter().filter(|outcome| *outcome == "ok").count();
        assert_eq!(successes, usize::from(job["status"] == "completed"), "one success per completed job: {job}");
        worker_lost += outcomes.iter().filter(|outcome| *outcome == "worker_lost").count();
    }
    assert!(worker_lost >= KILLS, "each kill cost the attempts its victim held");
}

#[test]
fn check_with_interval_repeats_at_checker_interval_until_sigterm() {
    let pool = Pool::new(&FAST_LIFECYCLE.replace("checker: {", "checker: {interval: 200ms, "));
    pool.ok(&["seed", "--delay", "1h"]);
    let started = Instant::now();
    let mut checker = pool.spawn(&["check", "--interval", "--json"]);
    let lines = stdout_lines(&mut checker);
    for _ in 0..3 {
        let line = lines.recv_timeout(Duration::from_secs(30)).expect("a report per round");
        assert_eq!(serde_json::from_str::<Value>(&line).unwrap()["queue_depth"], 0, "{line}");
    }
    // Three rounds at the documented default (10s) would take 20s.
    assert!(started.elapsed() < Duration::from_secs(8), "rounds came {:?} apart", started.elapsed() / 2);
    signal(&checker, libc::SIGTERM);
    assert!(checker.wait().unwrap().success());

    let mut checker = pool.spawn(&["check", "--interval", "150ms", "--json"]);
    let lines = stdout_lines(&mut checker);
    for _ in 0..2 {
        lines.recv_timeout(Duration::from_secs(30)).expect("a report per round");
    }
    signal(&checker, libc::SIGTERM);
    assert!(checker.wait().unwrap().success());
}

fn a_worker_declared_lost_stops_and_exits_with_a_failure(backend: Backend) {
    let pool = Pool::on(backend, FAST_LIFECYCLE);
    pool.ok(&["seed", "--payload", r#"{"delay_ms": 1500}"#]);
    let worker = pool.spawn(&["work", "--json"]);
    pool.wait_for_status(Duration::from_secs(30), "the job to be claimed", |s| jobs_count(s, "claimed") == 1);
    stopped_until_reaped(&pool, &worker);
    let output = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopped: the reaper declared it lost"), "{stderr}");
    let summary: Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert_eq!(summary["status"], "lost", "{summary}");
}

/// A lost worker's jobs are another worker's: it drops them as soon as it learns it was
/// declared lost, rather than running a 60 s job to its 30 s deadline for nothing.
fn a_worker_declared_lost_drops_its_jobs_in_flight_at_once(backend: Backend) {
    let pool = Pool::on(backend, FAST_LIFECYCLE);
    pool.ok(&["seed", "--payload", r#"{"delay_ms": 60000}"#]);
    let mut worker = pool.spawn(&["work", "--worker-id", "overtaken"]);
    let log = stderr_lines(&mut worker);
    pool.wait_for_status(Duration::from_secs(30), "the job to be claimed", |s| jobs_count(s, "claimed") == 1);
    stopped_until_reaped(&pool, &worker);
    wait_for_line(&log, "dropping the jobs in flight");
    let mut exit = None;
    wait_until(Duration::from_secs(10), "the lost worker to exit", || {
        exit = worker.try_wait().unwrap();
        exit.is_some()
    });
    assert_eq!(exit.unwrap().code(), Some(1), "{exit:?}");
    let job = job_by_payload(&pool, r#"{"delay_ms":60000}"#);
    assert_eq!((job["status"].as_str(), outcomes(&job)), (Some("pending"), vec!["worker_lost".to_owned()]));
}

#[test]
fn a_worker_whose_database_is_replaced_stops_claiming_and_fails() {
    let pool = Pool::new(FAST_LIFECYCLE);
    pool.ok(&["seed", "--count", "3", "--payload", r#"{"delay_ms": 1000}"#]);
    let worker = pool.spawn(&["work", "--json"]);
    pool.wait_for_status(Duration::from_secs(30), "a job to be claimed", |s| jobs_count(s, "claimed") == 1);
    // An operator starting over: the database and its WAL files deleted, a new pool seeded.
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", pool.db().display())).unwrap();
    }
    pool.ok(&["seed", "--count", "5"]);
    let output = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("was deleted or replaced while jobhost had it open"), "{stderr}");
    let summary: Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().lines().last().unwrap()).unwrap();
    assert!(summary["processed"].as_u64().unwrap() < 3, "it stopped claiming: {summary}");
    let status = pool.status();
    assert_eq!(jobs_count(&status, "pending"), 5, "the new database's jobs were left alone: {status} {stderr}");
}

#[test]
fn a_worker_keeps_working_when_the_reader_of_its_json_goes_away() {
    let pool = Pool::new(FAST_LIFECYCLE);
    pool.ok(&["seed", "--count", "20"]);
    let mut worker = pool.spawn(&["work", "--json"]);
    drop(worker.stdout.take());
    let output = worker.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stderr.matches("cannot write to stdout").count(), 1, "logged once: {stderr}");
    assert_eq!(jobs_count(&pool.status(), "completed"), 20);
}

/// `check --interval` deletes the completed jobs older than `retention.completed` (with
/// their attempts) and keeps what retention keeps: cancelled ones younger than theirs,
/// poisoned ones (never deleted by default) and unfinished ones; then stops on SIGTERM.
fn check_with_interval_deletes_expired_finished_jobs_and_keeps_the_rest(backend: Backend) {
    let pool = Pool::on(
        backend,
        &format!("{FAST_LIFECYCLE}retention: {{completed: 1s, cancelled: 1h, interval: 100ms}}\n")
            .replace("checker: {", "checker: {interval: 200ms, "),
    );
    std::fs::write(pool.path("processors/always_traps.wasm"), ALWAYS_TRAPS).unwrap();
    pool.ok(&["seed", "--count", "3"]);
    pool.ok(&["seed", "--processor", "always_traps", "--max-attempts", "1"]);
    assert_eq!(drain(&pool, "4")["processed"], 4);
    pool.ok(&["seed", "--payload", r#""to cancel""#]);
    pool.ok(&["jobs", "cancel", job_by_payload(&pool, r#""to cancel""#)["id"].as_str().unwrap()]);
    pool.ok(&["seed", "--delay", "1h"]);
    let before = pool.status();
    assert_eq!(
        ["completed", "poisoned", "cancelled", "pending"].map(|s| jobs_count(&before, s)),
        [3, 1, 1, 1],
        "{before}"
    );

    let mut checker = pool.spawn(&["check", "--interval", "--json"]);
    let after = pool.wait_for_status(Duration::from_secs(30), "the completed jobs to be deleted", |status| {
        jobs_count(status, "completed") == 0
    });
    assert_eq!(["poisoned", "cancelled", "pending", "claimed"].map(|s| jobs_count(&after, s)), [1, 1, 1, 0], "{after}");
    let kept: Vec<Value> = pool.all_jobs();
    assert_eq!(kept.len(), 3, "only the kept jobs are listed: {kept:?}");
    let poisoned = kept.iter().find(|job| job["status"] == "poisoned").expect("the poisoned job");
    assert_eq!(outcomes(poisoned), ["trap"], "a kept job keeps its attempts");
    signal(&checker, libc::SIGTERM);
    assert!(checker.wait().unwrap().success(), "the checker exits cleanly on SIGTERM");
}

on_both_backends!(
    check_with_interval_deletes_expired_finished_jobs_and_keeps_the_rest,
    check_spawns_workers_that_drain_the_pool,
    a_killed_workers_job_completes_once_on_another_worker,
    failing_processors_retry_then_poison_and_a_flaky_one_recovers,
    a_processor_writing_nul_bytes_fails_alone_and_the_worker_carries_on,
    a_long_job_keeps_its_worker_alive_through_heartbeats,
    sigterm_finishes_the_job_in_flight_and_claims_no_more,
    a_second_sigterm_exits_130_at_once_and_leaves_the_job_to_the_reaper,
    chaos_kills_lose_no_job_and_complete_none_twice,
    a_worker_declared_lost_stops_and_exits_with_a_failure,
    a_worker_declared_lost_drops_its_jobs_in_flight_at_once,
);

/// On PostgreSQL, time is the server's: a worker whose own clock is an hour behind writes
/// heartbeats the reaper still sees as fresh, and one an hour ahead cannot stretch the lease
/// of the jobs it held past the server's idea of it.
#[test]
fn on_postgres_a_workers_own_clock_decides_nothing() {
    let pool = Pool::on(Backend::Postgres, FAST_LIFECYCLE);
    pool.ok(&["seed", "--payload", r#"{"delay_ms": 3000}"#]);
    let mut behind = pool.command(&["work", "--once"]);
    with_wall_clock_off(&mut behind, "-1h");
    let mut behind = behind.stdout(std::process::Stdio::null()).spawn().unwrap();
    pool.wait_for_status(Duration::from_secs(30), "the job to be claimed", |s| jobs_count(s, "claimed") == 1);
    while behind.try_wait().unwrap().is_none() {
        let reap = pool.json(&["reap", "--stale-after", "1s"]);
        assert_eq!(reap["reaped_count"], 0, "a live worker an hour behind was reaped: {reap}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(jobs_count(&pool.status(), "completed"), 1);

    pool.ok(&["seed", "--payload", r#"{"delay_ms": 60000}"#]);
    let mut ahead = pool.command(&["work", "--once"]);
    with_wall_clock_off(&mut ahead, "+1h");
    let mut ahead = ahead.stdout(std::process::Stdio::null()).spawn().unwrap();
    pool.wait_for_status(Duration::from_secs(30), "the job to be claimed", |s| jobs_count(s, "claimed") == 1);
    ahead.kill().unwrap();
    ahead.wait().unwrap();
    let start = Instant::now();
    while pool.json(&["reap", "--stale-after", "1s"])["jobs_released"] != 1 {
        assert!(start.elapsed() < Duration::from_secs(30), "the job stayed held by a dead worker an hour ahead");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `command` with its wall clock shifted by `offset` (libfaketime's syntax, e.g. `-1h`),
/// as on a machine whose clock is wrong. Its monotonic clock stays true, as that machine's
/// would: libfaketime shifts it too by default, which turns every timed wait into a busy
/// loop or a hang and tests libfaketime rather than jobhost.
fn with_wall_clock_off(command: &mut std::process::Command, offset: &str) {
    command.env("FAKETIME", offset).env("DONT_FAKE_MONOTONIC", "1").env("LD_PRELOAD", libfaketime());
}

/// A checker looping with `--interval` outlives its connection: the server ending it (as a
/// restart or failover would) costs a round, not the loop that keeps the pool's workers alive.
#[test]
fn on_postgres_a_checker_reconnects_when_the_server_drops_it() {
    let pool = Pool::on(Backend::Postgres, &FAST_LIFECYCLE.replace("checker: {", "checker: {interval: 200ms, "));
    pool.ok(&["seed", "--count", "1"]);
    let name = format!("checker_{}", uuid::Uuid::new_v4().simple());
    let checker_pool = pool.reached_at(&support::sessions_named(pool.location(), &name));
    let mut checker = checker_pool.spawn(&["check", "--max-workers", "1", "--interval", "--json"]);
    let reports = stdout_lines(&mut checker);
    reports.recv_timeout(Duration::from_secs(30)).expect("a first round");
    pool.wait_for_status(Duration::from_secs(30), "the first job to complete", |s| jobs_count(s, "completed") == 1);

    // Ends the checker's session (and its worker's, should that one not have exited yet).
    let ended = pool.end_sessions_named(&name);
    assert!(ended.contains(&true), "the checker's session was ended: {ended:?}");

    pool.ok(&["seed", "--count", "1"]);
    pool.wait_for_status(Duration::from_secs(30), "the reconnected checker to run the second job", |s| {
        jobs_count(s, "completed") == 2
    });
    // Whether the round that meets the ended session fails (and says so) is a race with the
    // session's end; either way the checker carries on, connected again.
    signal(&checker, libc::SIGTERM);
    let output = checker.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// libfaketime's preload library, from Debian's `faketime` package (scripts/postgres installs it).
fn libfaketime() -> String {
    let found =
        ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists());
    found.expect("libfaketime is missing: apt-get install faketime (scripts/postgres does)").to_owned()
}

/// Two machines, each with its own checker, folder and `--max-workers`, drain one pool on
/// one server; one machine's workers are killed mid-run, and nothing is lost.
#[test]
fn on_postgres_two_hosts_share_a_pool_each_within_its_own_slots() {
    let pool = Pool::on(Backend::Postgres, &FAST_LIFECYCLE.replace("checker: {", "checker: {interval: 200ms, "));
    pool.ok(&["seed", "--count", "40", "--payload", r#"{"delay_ms": 150}"#]);
    let other = pool.another_host();
    let mut checker_a = pool.spawn(&["--host", "host-a", "check", "--max-workers", "2", "--interval", "--json"]);
    let mut checker_b = other.spawn(&["--host", "host-b", "check", "--max-workers", "3", "--interval", "--json"]);
    let b_reports = stdout_lines(&mut checker_b);
    let _a_reports = stdout_lines(&mut checker_a);

    let per_host = |pool: &Pool| -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
        let mut hosts = std::collections::BTreeMap::new();
        for job in pool.json(&["jobs", "list", "--status", "claimed"]).as_array().unwrap() {
            let host = job["host"].as_str().unwrap_or("?").to_owned();
            hosts.entry(host).or_insert_with(std::collections::BTreeSet::new).insert(job["worker_id"].to_string());
        }
        hosts
    };
    let mut b_workers = Vec::new();
    wait_until(Duration::from_secs(60), "host-b to run jobs", || {
        while let Ok(line) = b_reports.try_recv() {
            let report: Value = serde_json::from_str(&line).unwrap();
            b_workers
                .extend(report["spawned_ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()));
        }
        let hosts = per_host(&pool);
        assert!(hosts.get("host-a").is_none_or(|w| w.len() <= 2), "host-a over its slots: {hosts:?}");
        assert!(hosts.get("host-b").is_none_or(|w| w.len() <= 3), "host-b over its slots: {hosts:?}");
        hosts.contains_key("host-b") && !b_workers.is_empty()
    });
    for id in &b_workers {
        let _ = std::process::Command::new("pkill").args(["-KILL", "-f", id]).status();
    }
    let status = pool.wait_for_status(Duration::from_secs(120), "the two hosts to drain the pool", |s| {
        jobs_count(s, "completed") == 40
    });
    signal(&checker_a, libc::SIGTERM);
    signal(&checker_b, libc::SIGTERM);
    assert!(checker_a.wait().unwrap().success() && checker_b.wait().unwrap().success());
    for job in pool.all_jobs() {
        assert_eq!(outcomes(&job).iter().filter(|outcome| *outcome == "ok").count(), 1, "{job}");
    }
    assert!(status["workers"]["lost"].as_u64().unwrap() >= 1, "the killed workers were reaped: {status}");
}
