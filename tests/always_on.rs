//! Always on, with real processes on both backends: workers that wait for work and wake
//! when it comes (`work --follow`).

mod support;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use serde_json::Value;
use support::{Backend, Pool};

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

on_both_backends!(a_following_worker_runs_jobs_as_they_come_and_stops_on_sigterm);
