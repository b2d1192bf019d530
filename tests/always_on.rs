//! Always on, with real processes on both backends: workers that wait for work and wake
//! when it comes (`work --follow`), and a checker that keeps one alive (`check --interval`).

mod support;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::Value;
use support::{Backend, Pool, jobs_count};

/// Far above any wait a test expects: reaching it means the behaviour is missing.
const PATIENCE: Duration = Duration::from_secs(20);

/// The JSON lines a process prints, as they come.
fn json_lines(child: &mut Child) -> Receiver<Value> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if lines.send(value).is_err() {
                return;
            }
        }
    });
    received
}

fn next_line(lines: &Receiver<Value>, what: &str) -> Value {
    lines.recv_timeout(PATIENCE).unwrap_or_else(|e| panic!("no line for {what} within {PATIENCE:?}: {e}"))
}

fn a_following_worker_runs_jobs_as_they_come_and_stops_on_sigterm(backend: Backend) {
    let pool = Pool::on(backend, "");
    pool.ok(&["seed"]);
    let mut worker = pool.spawn_guarded(&["work", "--follow", "--json"]);
    let lines = json_lines(worker.child_mut());
    let first = next_line(&lines, "the job queued before the worker started");

    pool.ok(&["seed"]);
    let second = next_line(&lines, "a job queued while the worker waits");
    pool.ok(&["seed", "--delay", "1s"]);
    let delayed = next_line(&lines, "a delayed job, once due");
    for line in [&first, &second, &delayed] {
        assert_eq!(line["status"].as_str(), Some("completed"), "{line}");
    }
    let jobs = pool.all_jobs();
    let ids =
        |lines: &[&Value]| lines.iter().map(|line| line["job_id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let mut ran = ids(&[&first, &second, &delayed]);
    ran.sort();
    ran.dedup();
    assert_eq!(ran.len(), jobs.len(), "each job ran once: {jobs:?}");
    let job = jobs.iter().find(|job| job["id"] == delayed["job_id"]).unwrap();
    let started = job["attempt_history"][0]["started_at"].as_i64().expect("an attempt with a start");
    assert!(started >= job["run_at"].as_i64().unwrap(), "not started before its run_at: {job}");

    assert!(worker.is_running(), "the worker waits for more instead of exiting");
    support::signal(worker.id(), libc::SIGTERM);
    let output = worker.wait_at_most(PATIENCE, "a waiting worker after SIGTERM");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary = next_line(&lines, "the summary");
    assert_eq!((summary["processed"].as_u64(), summary["status"].as_str()), (Some(3), Some("terminated")), "{summary}");
}

fn check_interval_keeps_a_following_worker_that_runs_jobs_as_they_come(backend: Backend) {
    let pool = Pool::on(backend, "checker: {min_workers: 1, interval: 200ms}\nworker: {heartbeat_interval: 100ms}\n");
    pool.ok(&["seed"]);
    let mut checker = pool.spawn_guarded(&["check", "--interval"]);
    let waiting = |status: &Value| status["workers"]["active"] == 1 && status["workers"]["terminated"] == 0;
    pool.wait_for_status(PATIENCE, "the first job run and one worker left waiting", |status| {
        jobs_count(status, "completed") == 1 && waiting(status)
    });
    pool.ok(&["seed"]);
    pool.wait_for_status(PATIENCE, "a later job run by that same worker, no other started", |status| {
        jobs_count(status, "completed") == 2 && waiting(status)
    });

    assert!(checker.is_running());
    support::signal(checker.id(), libc::SIGTERM);
    let output = checker.wait_at_most(PATIENCE, "the checker after SIGTERM");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Workers run in sessions of their own and outlive the checker; a service manager stops
    // the whole group (see deploy/). Here the test stops the one it started.
    let config = pool.path("jobhost.yml").display().to_string();
    let followers = support::processes_naming(&config, "--follow");
    assert_eq!(followers.len(), 1, "one following worker: {followers:?}");
    support::signal(followers[0], libc::SIGTERM);
    pool.wait_for_status(PATIENCE, "the following worker gone after SIGTERM", |status| {
        status["workers"]["active"] == 0 && status["workers"]["terminated"] == 1
    });
}

on_both_backends!(
    a_following_worker_runs_jobs_as_they_come_and_stops_on_sigterm,
    check_interval_keeps_a_following_worker_that_runs_jobs_as_they_come,
);
