//! Schedules through real processes: a server and a checker racing for the ticks of one
//! schedule queue each exactly once, and the CLI, the API and the dashboard show them.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Backend, Pool, signal};

/// Every second, into a pool no checker here spawns workers for, so its jobs stay pending
/// and can be counted.
const EVERY_SECOND: &str = "schedules:
  every-second:
    cron: '*/1 * * * * *'
    processor: echo
    payload: {kind: tick}
    pool: ticks
";

fn schedules(pool: &Pool) -> Vec<Value> {
    pool.json(&["schedules"])["schedules"].as_array().expect("a list of schedules").clone()
}

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut reply = agent.get(url).call().unwrap_or_else(|err| panic!("GET {url}: {err}"));
    (reply.status().as_u16(), reply.body_mut().read_to_string().unwrap())
}

fn two_processes_queue_each_tick_of_a_schedule_exactly_once(backend: Backend) {
    let pool = Pool::on(backend, EVERY_SECOND);
    // The server creates the pool; the checker, on another host of it, races it for every tick.
    let server = pool.serve(&[]);
    let other_host = pool.another_host();
    let checker = other_host.spawn_guarded(&["--log-level", "info", "check", "--interval", "1h"]);

    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = schedules(&pool);
        if listed[0]["runs"].as_array().unwrap().len() >= 4 {
            break listed;
        }
        assert!(Instant::now() < deadline, "fewer than 4 ticks queued in 30 s: {listed:?}");
        std::thread::sleep(Duration::from_millis(100));
    };

    // The API and the dashboard show the schedule while the server runs.
    let (status, body) = get(&server.url("/api/v1/schedules"));
    assert_eq!(status, 200, "{body}");
    let answered: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answered["schedules"][0]["name"], "every-second");
    let keys = |value: &Value| value.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&answered["schedules"][0]), keys(&listed[0]), "the API and the CLI answer the same shape");
    let (_, openapi) = get(&server.url("/api/v1/openapi.json"));
    assert!(openapi.contains("\"/api/v1/schedules\""), "the OpenAPI document lists the endpoint");
    let (status, page) = get(&server.url("/schedules"));
    assert_eq!(status, 200, "{page}");
    let last_job = answered["schedules"][0]["last_run"]["job_id"].as_str().expect("a last job").to_owned();
    assert!(page.contains("data-schedule=\"every-second\"") && page.contains("*/1 * * * * *"), "{page}");
    assert!(page.contains(&format!("href=\"/jobs/{last_job}\"")), "the page links the last job: {page}");
    assert!(page.contains("href=\"/schedules\""), "the navigation links the page");

    signal(checker.id(), libc::SIGTERM);
    let stopped = checker.wait_at_most(Duration::from_secs(30), "the checker stopping on SIGTERM");
    assert!(stopped.status.success(), "{}", String::from_utf8_lossy(&stopped.stderr));
    assert!(server.stop(Duration::from_secs(30)).success());

    let schedule = &schedules(&pool)[0];
    let runs = schedule["runs"].as_array().unwrap();
    assert!(runs.len() < 10, "more ticks than a listing shows ran before both stopped: {runs:?}");
    let due: Vec<i64> = runs.iter().map(|run| run["due_at"].as_i64().unwrap()).collect();
    for pair in due.windows(2) {
        assert_eq!(pair[0] - pair[1], 1_000, "consecutive ticks, newest first, none twice or missing: {due:?}");
    }
    for run in runs {
        let late = run["enqueued_at"].as_i64().unwrap() - run["due_at"].as_i64().unwrap();
        assert!((0..10_000).contains(&late), "a tick is queued once it is due, promptly: {run}");
    }
    let run_jobs: BTreeSet<&str> = runs.iter().map(|run| run["job_id"].as_str().unwrap()).collect();
    let listed_jobs = pool.json(&["jobs", "list", "--pool", "ticks"]);
    let jobs: BTreeSet<&str> = listed_jobs.as_array().unwrap().iter().map(|job| job["id"].as_str().unwrap()).collect();
    assert_eq!(jobs, run_jobs, "each tick queued exactly one job, and nothing else did");
    let job = pool.json(&["jobs", "show", runs[0]["job_id"].as_str().unwrap()]);
    assert_eq!((&job["processor"], &job["payload"]), (&Value::from("echo"), &serde_json::json!({"kind": "tick"})));
    assert_eq!(&schedule["last_run"], &runs[0]);
    assert!(schedule["ticked_through"].as_i64().unwrap() >= due[0]);
    assert!(schedule["next_run_at"].as_i64().unwrap() > due[0]);
    assert_eq!(
        (&schedule["cron"], &schedule["timezone"], &schedule["pool"], &schedule["catch_up"]),
        (&Value::from("*/1 * * * * *"), &Value::from("UTC"), &Value::from("ticks"), &Value::from("skip"))
    );
}

#[test]
fn a_bad_schedule_stops_every_command_with_the_key_and_the_fix() {
    let pool = Pool::new("schedules:\n  nightly:\n    cron: '0 25 * * *'\n    processor: echo\n");
    let error = pool.fails(&["schedules"]);
    assert!(error.contains("schedules.nightly") && error.contains("invalid cron expression \"0 25 * * *\""), "{error}");
    assert!(error.contains("write 5 fields"), "{error}");
}

#[test]
fn schedules_lists_a_schedule_no_process_has_seen_yet() {
    let pool =
        Pool::new("schedules:\n  nightly:\n    cron: '0 3 * * *'\n    timezone: Europe/Berlin\n    processor: echo\n");
    pool.ok(&["seed"]);
    let schedule = &schedules(&pool)[0];
    assert_eq!((&schedule["name"], &schedule["timezone"]), (&Value::from("nightly"), &Value::from("Europe/Berlin")));
    assert_eq!((&schedule["last_run"], &schedule["ticked_through"]), (&Value::Null, &Value::Null));
    assert!(schedule["next_run_at"].as_i64().is_some());
    let text = pool.ok(&["schedules"]);
    assert!(text.contains("nightly") && text.contains("last run  -") && text.contains("next run"), "{text}");
}

on_both_backends!(two_processes_queue_each_tick_of_a_schedule_exactly_once);
