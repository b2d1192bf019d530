//! Flow limits (`processors.overrides.NAME.flow`) with real processes on both backends: a
//! `max_running` that binds across six workers of sixteen slots each, sampled every 10 ms
//! while other jobs of the pool run beside it; one tenant's flood that cannot starve the
//! others under a keyed limit; a rate counted over a sliding period; and limits written
//! wrong, refused by name. And jobs that wait for other jobs: run after their parents with
//! their results, cancelled with them, and queued and shown through the API.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Backend, Pool, jobs_count};

/// Far above any wait a test expects: reaching it means the behaviour is missing.
const PATIENCE: Duration = Duration::from_secs(120);

on_both_backends!(
    max_running_binds_across_six_workers_and_other_jobs_run_beside_it,
    a_flooding_tenant_cannot_starve_the_others,
    a_rate_spaces_the_starts_over_its_period,
    the_api_and_metrics_show_per_key_what_runs_and_what_is_held_back,
    a_child_runs_after_every_parent_and_reads_their_results,
    a_poisoned_parent_cancels_its_dependents_transitively_naming_why,
    the_api_queues_children_shows_the_links_and_refuses_bad_parents_by_name,
);

fn config(flow: &str) -> String {
    format!("worker: {{concurrency: 16}}\nprocessors:\n  overrides:\n    echo:\n      flow: {flow}\n")
}

/// Runs `jobhost work --json` to the end and returns its job lines, in the order it
/// recorded them.
fn work_lines(pool: &Pool) -> Vec<Value> {
    let output = pool.spawn_guarded(&["work", "--json"]).wait_at_most(PATIENCE, "jobhost work draining the pool");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    lines.into_iter().filter(|line| line.get("job_id").is_some()).collect()
}

/// Each job's payload, by id.
fn payloads(pool: &Pool) -> HashMap<String, Value> {
    pool.all_jobs().into_iter().map(|job| (job["id"].as_str().unwrap().to_owned(), job["payload"].clone())).collect()
}

/// The binding case of the issue: six draining workers with sixteen slots each, 48 jobs of a
/// processor limited to 3 at once, and 32 jobs of an unlimited one queued behind them. The
/// count of the limited processor's jobs running (claimed), sampled every 10 ms, never
/// exceeds 3 and reaches it; every job completes (no worker left while jobs were held back),
/// and the unlimited jobs finish before the limited ones do.
fn max_running_binds_across_six_workers_and_other_jobs_run_beside_it(backend: Backend) {
    let pool = Pool::on(backend, &config("{max_running: 3}"));
    pool.add_processor("exit0.wat", "quick");
    pool.ok(&["seed", "--count", "48", "--payload", r#"{"delay_ms": 100}"#]);
    pool.ok(&["seed", "--count", "32", "--processor", "quick"]);
    let server = pool.serve(&[]);
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
    let running = || -> usize {
        let url = server.url("/api/v1/jobs?status=claimed&processor=echo&limit=1000");
        let page: Value = agent.get(&url).call().unwrap().body_mut().read_json().unwrap();
        page["jobs"].as_array().unwrap().len()
    };

    let workers: Vec<_> = (0..6).map(|_| pool.spawn_guarded(&["work"])).collect();
    let deadline = Instant::now() + PATIENCE;
    let (mut most, mut samples) = (0, 0);
    loop {
        let now = running();
        samples += 1;
        assert!(now <= 3, "sample {samples}: {now} jobs of the limited processor were running at once");
        most = most.max(now);
        let status = pool.status();
        if jobs_count(&status, "completed") == 80 {
            break;
        }
        assert!(Instant::now() < deadline, "the pool did not drain: {status}");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(most, 3, "the limit bound: three ran at once at some point ({samples} samples)");
    for worker in workers {
        let output = worker.wait_at_most(PATIENCE, "a worker after the pool drained");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    let jobs = pool.all_jobs();
    let finished = |processor: &str| {
        let mut times: Vec<i64> = jobs
            .iter()
            .filter(|job| job["processor"] == processor)
            .map(|job| job["finished_at"].as_i64().unwrap())
            .collect();
        times.sort();
        times
    };
    let (quick, limited) = (finished("quick"), finished("echo"));
    assert_eq!((quick.len(), limited.len()), (32, 48));
    assert!(
        quick.last() < limited.last(),
        "the unlimited jobs, queued after the limited ones, were not held up behind them"
    );
    let attempts: u64 = jobs.iter().map(|job| job["attempts"].as_u64().unwrap()).sum();
    assert_eq!(attempts, 80, "every job ran once");
}

/// A keyed limit of one job at a time per tenant: four slow jobs of tenant `flood` are queued
/// first, then three quick ones each of tenants `a` and `b`. With four slots, the quick
/// tenants' six jobs all finish before the flood's first one does.
fn a_flooding_tenant_cannot_starve_the_others(backend: Backend) {
    let pool = Pool::on(
        backend,
        "worker: {concurrency: 4}\nprocessors:\n  overrides:\n    echo:\n      flow: {max_running: 1, key: /tenant}\n",
    );
    pool.ok(&["seed", "--count", "4", "--payload", r#"{"tenant": "flood", "delay_ms": 1500}"#]);
    pool.ok(&["seed", "--count", "3", "--payload", r#"{"tenant": "a"}"#]);
    pool.ok(&["seed", "--count", "3", "--payload", r#"{"tenant": "b"}"#]);
    let lines = work_lines(&pool);
    let payloads = payloads(&pool);
    let tenants: Vec<&str> =
        lines.iter().map(|line| payloads[line["job_id"].as_str().unwrap()]["tenant"].as_str().unwrap()).collect();
    assert_eq!(tenants.len(), 10, "every job ran: {tenants:?}");
    let mut first_six = tenants[..6].to_vec();
    first_six.sort();
    assert_eq!(first_six, ["a", "a", "a", "b", "b", "b"], "the order jobs finished in: {tenants:?}");
    assert!(tenants[6..].iter().all(|tenant| *tenant == "flood"), "{tenants:?}");
}

/// `rate: 2/1s`: of six jobs, no three start within one second of each other, and the
/// draining worker waits out the period rather than leaving the rest behind.
fn a_rate_spaces_the_starts_over_its_period(backend: Backend) {
    let pool = Pool::on(backend, &config("{rate: 2/1s}"));
    pool.ok(&["seed", "--count", "6"]);
    assert_eq!(work_lines(&pool).len(), 6, "one worker ran all six");
    let mut starts: Vec<i64> =
        pool.all_jobs().iter().map(|job| job["attempt_history"][0]["started_at"].as_i64().unwrap()).collect();
    starts.sort();
    for window in starts.windows(3) {
        assert!(window[2] - window[0] >= 1_000, "three starts within a second: {starts:?}");
    }
}

/// One job at a time per tenant, with tenant `a`'s three jobs and `b`'s one running long:
/// `GET /api/v1/limits` and `/metrics` show one running for each, and two of `a`'s held back.
fn the_api_and_metrics_show_per_key_what_runs_and_what_is_held_back(backend: Backend) {
    let pool = Pool::on(backend, &config("{max_running: 1, key: /tenant}"));
    pool.ok(&["seed", "--count", "3", "--payload", r#"{"tenant": "a", "delay_ms": 30000}"#]);
    pool.ok(&["seed", "--payload", r#"{"tenant": "b", "delay_ms": 30000}"#]);
    let server = pool.serve(&[]);
    let _worker = pool.spawn_guarded(&["work"]);
    pool.wait_for_status(PATIENCE, "one job of each tenant running", |status| jobs_count(status, "claimed") == 2);

    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(30))).build().into();
    let limits: Value = agent.get(&server.url("/api/v1/limits")).call().unwrap().body_mut().read_json().unwrap();
    let row = |key: &str, running: u64, held_back: u64| {
        serde_json::json!({"processor": "echo", "key": key, "key_pointer": "/tenant", "max_running": 1, "rate": null,
                           "running": running, "started_in_period": 0, "held_back": held_back})
    };
    assert_eq!(limits, serde_json::json!({"limits": [row("a", 1, 2), row("b", 1, 0)]}));

    let metrics = agent.get(&server.url("/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    for line in [
        r#"jobhost_flow_running{processor="echo",key="a"} 1"#,
        r#"jobhost_flow_held_back{processor="echo",key="a"} 2"#,
        r#"jobhost_flow_running{processor="echo",key="b"} 1"#,
        r#"jobhost_flow_held_back{processor="echo",key="b"} 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
}

#[test]
fn limits_written_wrong_are_refused_by_name() {
    for (flow, expected) in [
        ("{max_running: 0}", "processors.overrides.echo.flow.max_running must be at least 1"),
        ("{key: /tenant}", "processors.overrides.echo.flow sets no limit"),
        ("{rate: fast}", "`fast` is not a rate: write COUNT/PERIOD"),
        ("{rate: 0/1s}", "a rate needs a count and a period above 0"),
        ("{max_running: 2, key: tenant}", "processors.overrides.echo.flow.key `tenant` is not a JSON pointer"),
        ("{max_running: 2, burst: 3}", "unknown field `burst`"),
    ] {
        let pool = Pool::new(&config(flow));
        let error = pool.fails(&["seed"]);
        assert!(error.contains(expected), "{flow}: {error}");
        assert!(!pool.path("data/jobhost.db").exists(), "{flow}: nothing was created");
    }
}

/// `seed --ids`: the ids of the jobs it queued.
fn seed_ids(pool: &Pool, args: &[&str]) -> Vec<String> {
    let mut args = [&["seed", "--ids"], args].concat();
    args.retain(|arg| !arg.is_empty());
    let answer = pool.json(&args);
    answer["ids"].as_array().unwrap().iter().map(|id| id.as_str().unwrap().to_owned()).collect()
}

fn job(pool: &Pool, id: &str) -> Value {
    pool.json(&["jobs", "show", id])
}

/// Two slow parents and a quick child after both, on a worker with room for all three: the
/// child starts only once both parents finished, and (with `input: envelope`) reads their
/// results beside its payload.
fn a_child_runs_after_every_parent_and_reads_their_results(backend: Backend) {
    let pool =
        Pool::on(backend, "worker: {concurrency: 4}\nprocessors:\n  overrides:\n    echo:\n      input: envelope\n");
    let parents = seed_ids(&pool, &["--count", "2", "--payload", r#"{"delay_ms": 300}"#]);
    let child = seed_ids(&pool, &["--after", &parents[0], &parents[1], "--payload", r#"{"step": "merge"}"#]).remove(0);
    let waiting = job(&pool, &child);
    assert_eq!((waiting["status"].as_str(), waiting["waiting_for"].as_u64()), (Some("pending"), Some(2)));

    let lines = work_lines(&pool);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[2]["job_id"], child.as_str(), "the child finished last: {lines:?}");
    let child = job(&pool, &child);
    let started = child["attempt_history"][0]["started_at"].as_i64().unwrap();
    let mut expected = serde_json::Map::new();
    for parent in &parents {
        let parent = job(&pool, parent);
        assert!(started >= parent["finished_at"].as_i64().unwrap(), "the child started after {parent}");
        expected.insert(parent["id"].as_str().unwrap().to_owned(), parent["result"].clone());
    }
    assert_eq!(child["result"]["echo"], serde_json::json!({"payload": {"step": "merge"}, "parents": expected}));
    assert_eq!(child["parents"].as_array().unwrap().len(), 2);
}

/// A parent that is poisoned cancels its child, whose cancelling cancels the grandchild;
/// each records which job it waited for and why that one ended. A job waiting for another,
/// healthy parent too is cancelled all the same; that parent runs.
fn a_poisoned_parent_cancels_its_dependents_transitively_naming_why(backend: Backend) {
    let pool = Pool::on(backend, "");
    pool.add_processor("exit3.wat", "failing");
    let parent = seed_ids(&pool, &["--processor", "failing", "--max-attempts", "1"]).remove(0);
    let healthy = seed_ids(&pool, &[""]).remove(0);
    let child = seed_ids(&pool, &["--after", &parent]).remove(0);
    let grandchild = seed_ids(&pool, &["--after", &child, &healthy]).remove(0);
    assert_eq!(work_lines(&pool).len(), 2, "the parent and the healthy job ran, the others never");

    assert_eq!(job(&pool, &parent)["status"], "poisoned");
    assert_eq!(job(&pool, &healthy)["status"], "completed");
    let child = job(&pool, &child);
    assert_eq!(child["status"], "cancelled");
    let why = child["last_error"].as_str().unwrap();
    assert!(why.starts_with(&format!("job {parent}, which it waits for, was poisoned: ")), "{why}");
    let grandchild = job(&pool, &grandchild);
    assert_eq!(grandchild["status"], "cancelled");
    let why = grandchild["last_error"].as_str().unwrap();
    assert!(
        why.starts_with(&format!(
            "job {}, which it waits for, was cancelled: job {parent}",
            child["id"].as_str().unwrap()
        )),
        "{why}"
    );
    assert_eq!(jobs_count(&pool.status(), "cancelled"), 2);
}

fn the_api_queues_children_shows_the_links_and_refuses_bad_parents_by_name(backend: Backend) {
    let pool = Pool::on(backend, "");
    let server = pool.serve(&[]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let post = |body: Value| {
        let mut reply = agent.post(&server.url("/api/v1/jobs")).send_json(&body).unwrap();
        (reply.status().as_u16(), reply.body_mut().read_json::<Value>().unwrap())
    };
    let get = |id: &str| -> Value {
        agent.get(&server.url(&format!("/api/v1/jobs/{id}"))).call().unwrap().body_mut().read_json().unwrap()
    };
    let (status, parent) = post(serde_json::json!({"processor": "echo"}));
    assert_eq!(status, 201, "{parent}");
    let parent = parent["id"].as_str().unwrap().to_owned();
    let (status, child) = post(serde_json::json!({"processor": "echo", "after": [parent]}));
    assert_eq!(status, 201, "{child}");
    let child = child["id"].as_str().unwrap().to_owned();

    let shown = get(&child);
    assert_eq!(shown["parents"], serde_json::json!([{"id": parent, "status": "pending"}]));
    assert_eq!(shown["waiting_for"], 1);
    let shown = get(&parent);
    assert_eq!(shown["children"], serde_json::json!([{"id": child, "status": "pending"}]));
    assert_eq!(shown["children_total"], 1);

    let missing = "01900000-0000-7000-8000-000000000000";
    for (body, expected) in [
        (
            serde_json::json!({"processor": "echo", "after": [missing]}),
            format!("job {missing}, which a new job waits for, does not exist"),
        ),
        (
            serde_json::json!({"processor": "echo", "after": [parent], "delay": "1s"}),
            "after cannot be given with a delay".to_owned(),
        ),
        (
            serde_json::json!({"jobs": [{"processor": "echo"}, {"processor": "echo", "after": [""]}]}),
            "jobs[1].after names a job id".to_owned(),
        ),
    ] {
        let (status, error) = post(body.clone());
        assert_eq!(status, 422, "{body}: {error}");
        assert!(error.to_string().contains(&expected), "{body}: {error}");
    }
    assert_eq!(jobs_count(&pool.status(), "pending"), 2, "refused jobs queue nothing");
    let openapi: Value = agent.get(&server.url("/api/v1/openapi.json")).call().unwrap().body_mut().read_json().unwrap();
    assert!(
        openapi["components"]["schemas"]["NewJobRequest"]["properties"]["after"].is_object(),
        "after is documented"
    );
    let job_view = openapi["components"]["schemas"]["JobView"].to_string();
    assert!(job_view.contains(r#""parents""#) && job_view.contains("JobLink"), "parents are documented: {job_view}");
}
