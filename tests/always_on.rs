//! Always on, with real processes on both backends: workers that wait for work and wake
//! when it comes (`work --follow`), a checker that keeps one alive (`check --interval`), and
//! the systemd units of `deploy/` that run both.

mod support;

use std::io::{BufRead, BufReader};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::Value;
use support::{Backend, Pool, jobs_count};

/// Far above any wait a test expects: reaching it means the behaviour is missing.
const PATIENCE: Duration = Duration::from_secs(20);

/// The next of a process's JSON lines.
fn next_line(lines: &Receiver<String>, what: &str) -> Value {
    let line = lines.recv_timeout(PATIENCE).unwrap_or_else(|e| panic!("no line for {what} within {PATIENCE:?}: {e}"));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

fn a_following_worker_runs_jobs_as_they_come_and_stops_on_sigterm(backend: Backend) {
    let pool = Pool::on(backend, "");
    pool.ok(&["seed"]);
    let mut worker = pool.spawn_guarded(&["work", "--follow", "--json"]);
    let lines = support::stdout_lines(worker.child_mut());
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

/// The `ExecStart` command line of a unit in `deploy/`, split into arguments, with the
/// installed binary and config paths pointed at this build and `pool`'s config.
fn exec_start(unit: &str, pool: &Pool) -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy").join(unit);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let line = text.lines().find_map(|line| line.strip_prefix("ExecStart=")).expect("an ExecStart line");
    let config = pool.path("jobhost.yml").display().to_string();
    line.split_whitespace()
        .map(|word| match word {
            "/usr/local/bin/jobhost" => support::JOBHOST.to_owned(),
            "/etc/jobhost/jobhost.yml" => config.clone(),
            other => other.to_owned(),
        })
        .collect()
}

/// Starts a unit's `ExecStart` line on `pool` (its database given as the environment names
/// it), its output going to `stdout`.
fn start_unit(unit: &str, pool: &Pool, stdout: std::process::Stdio) -> support::Guarded {
    let argv = exec_start(unit, pool);
    let child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(pool.dir.path())
        .env_remove("JOBHOST_CONFIG")
        .env_remove("RUST_LOG")
        .env("JOBHOST_DB", pool.location())
        .env("JOBHOST_PROCESSORS", pool.path("processors"))
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(std::fs::File::create(pool.path(&format!("{unit}.log"))).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {unit}'s ExecStart {argv:?}: {e}"));
    support::Guarded::new(child)
}

fn the_deploy_units_command_lines_run_a_host(backend: Backend) {
    let pool = Pool::on(backend, "checker: {interval: 200ms}\nserve: {listen: 127.0.0.1:0}\n");
    pool.ok(&["seed"]);
    let checker_log = std::fs::File::create(pool.path("check.out")).unwrap();
    let mut checker = start_unit("jobhost-check.service", &pool, checker_log.into());
    pool.wait_for_status(PATIENCE, "the checker's following worker running the job", |status| {
        jobs_count(status, "completed") == 1 && status["workers"]["active"] == 1
    });

    let mut server = start_unit("jobhost-serve.service", &pool, std::process::Stdio::piped());
    let stdout = server.child_mut().stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("serve did not start: {line}"));
    let health = ureq::get(&format!("{base}/healthz")).call().expect("GET /healthz");
    assert_eq!(health.status(), 200);

    for (name, unit) in [("serve", &mut server), ("check", &mut checker)] {
        assert!(unit.is_running(), "{name} stays up");
        support::signal(unit.id(), libc::SIGTERM);
    }
    for (name, unit) in [("serve", server), ("check", checker)] {
        let output = unit.wait_at_most(PATIENCE, name);
        assert!(output.status.success(), "{name} exits cleanly on SIGTERM: {:?}", output.status);
    }
}

on_both_backends!(
    the_deploy_units_command_lines_run_a_host,
    a_following_worker_runs_jobs_as_they_come_and_stops_on_sigterm,
    check_interval_keeps_a_following_worker_that_runs_jobs_as_they_come,
);

/// What ends the workers' sessions while they drain.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `pg_terminate_backend` on every session of the workers, again and again.
    TerminateSessions,
    /// The whole server restarted, twice.
    RestartServer,
    /// Answers lost on their way back, again and again: the statements were carried out,
    /// the workers never learn so.
    LoseAnswers,
}

/// Two following workers drain 5,000 jobs on PostgreSQL while `fault` strikes their
/// connections: they reconnect and carry on, settling what they ran and adopting what a turn claimed
/// before its answer was lost. Every job completes with exactly one `ok` attempt, and
/// neither worker exits until it is told to.
fn following_workers_ride_out(fault: Fault) {
    const JOBS: u64 = 5_000;
    let server = matches!(fault, Fault::RestartServer).then(support::PrivateServer::start);
    let shared = Pool::on(Backend::Postgres, "worker: {heartbeat_interval: 200ms}\n");
    // The workers' sessions carry a name of their own, so only theirs are ended.
    let name = format!("riding_{}", uuid::Uuid::new_v4().simple());
    let url = server.as_ref().map_or(shared.location(), support::PrivateServer::url);
    // The test reads and seeds the pool directly, never through the faults it makes.
    let observer = shared.reached_at(url);
    let proxy = matches!(fault, Fault::LoseAnswers).then(|| {
        let target = url.split_once('@').and_then(|(_, rest)| rest.split('/').next()).expect("host:port in the URL");
        support::LossyProxy::start(target)
    });
    let workers_url = proxy.as_ref().map_or(url.to_owned(), |proxy| proxy.in_front_of(url));
    let pool = shared.reached_at(&support::sessions_named(&workers_url, &name));
    // Each job waits a little, so the drain lasts long enough for the faults to land in it.
    observer.ok(&["seed", "--count", &JOBS.to_string(), "--payload", r#"{"delay_ms": 10}"#]);

    let mut workers: Vec<support::Guarded> =
        (0..2).map(|_| pool.spawn_guarded(&["work", "--follow", "--concurrency", "8"])).collect();
    let logs: Vec<Receiver<String>> = workers.iter_mut().map(|w| support::stderr_lines(w.child_mut())).collect();
    // Two workers with 8 slots each: jobs adopted after a lost answer never take more.
    let completed = || {
        let status = observer.status();
        assert!(jobs_count(&status, "claimed") <= 16, "more jobs claimed than the workers have slots: {status}");
        jobs_count(&status, "completed")
    };
    let mut faults: u64 = 0;
    let mut ended_sessions = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        let done = completed();
        if done == JOBS {
            break;
        }
        if std::time::Instant::now() >= deadline {
            // What the unfinished jobs went through, so a stall can be told apart from a slow drain.
            let schema = observer.schema();
            let stuck = observer.server_rows(&format!(
                "SELECT j.id, j.status, j.worker_id, j.claim_token, j.attempts, j.run_at, j.lease_expires_at,
                        (SELECT string_agg(a.attempt || ':' || a.worker_id || ':' || coalesce(a.outcome, 'open'), ' ')
                           FROM {schema}.attempts a WHERE a.job_seq = j.seq)
                   FROM {schema}.jobs j WHERE j.status <> 'completed'"
            ));
            let workers = observer.server_rows(&format!("SELECT id, status, last_heartbeat_at FROM {schema}.workers"));
            let tails: Vec<Vec<String>> = logs
                .iter()
                .map(|log| {
                    let lines: Vec<String> = log.try_iter().collect();
                    lines[lines.len().saturating_sub(40)..].to_vec()
                })
                .collect();
            panic!(
                "the drain stalled at {done} of {JOBS} completed; unfinished jobs: {stuck:#?}; workers: {workers:#?}; \
                 the workers' last log lines: {tails:#?}"
            );
        }
        match fault {
            Fault::TerminateSessions if done > 0 => {
                let ended = observer.end_sessions_named(&name).into_iter().filter(|&ended| ended).count();
                ended_sessions += ended;
                faults += u64::from(ended > 0);
                std::thread::sleep(Duration::from_millis(150));
            }
            Fault::RestartServer if faults < 2 && done > JOBS * (faults + 1) / 4 => {
                server.as_ref().expect("a server of the test's own").restart();
                faults += 1;
            }
            Fault::LoseAnswers if done > 0 => {
                proxy.as_ref().expect("a proxy").lose_next_answer();
                faults += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
        for (i, worker) in workers.iter_mut().enumerate() {
            assert!(worker.is_running(), "worker {i} exited during the drain");
        }
    }
    assert!(faults >= 2, "the faults landed during the drain ({faults}, {ended_sessions} sessions ended)");

    let schema = observer.schema();
    let per_job = format!(
        "SELECT count(*) FILTER (WHERE status = 'completed' AND ok = 1), count(*)
           FROM (SELECT j.status, count(*) FILTER (WHERE a.outcome = 'ok') AS ok
                   FROM {schema}.jobs j LEFT JOIN {schema}.attempts a ON a.job_seq = j.seq
                  GROUP BY j.seq, j.status) per_job"
    );
    assert_eq!(
        observer.server_rows(&per_job),
        [format!("{JOBS}|{JOBS}")],
        "each job completed with exactly one ok attempt"
    );

    let mut retried = 0;
    for (i, worker) in workers.into_iter().enumerate() {
        support::signal(worker.id(), libc::SIGTERM);
        let output = worker.wait_at_most(PATIENCE, "a following worker after SIGTERM");
        let log: Vec<String> = logs[i].iter().collect();
        assert!(output.status.success(), "worker {i} ended cleanly: {:?}\n{}", output.status, log.join("\n"));
        retried += log.iter().filter(|line| line.contains("trying again until the database answers")).count();
    }
    // An ended session is mostly found closed between calls (and replaced quietly); a restart
    // and a lost answer always strike calls in flight.
    if matches!(fault, Fault::RestartServer | Fault::LoseAnswers) {
        assert!(retried > 0, "a worker met the fault mid-call and tried again");
    }
}

#[test]
fn on_postgres_following_workers_ride_out_their_sessions_being_ended() {
    following_workers_ride_out(Fault::TerminateSessions);
}

#[test]
fn on_postgres_following_workers_ride_out_answers_lost_on_the_way_back() {
    following_workers_ride_out(Fault::LoseAnswers);
}

#[test]
fn on_postgres_following_workers_ride_out_a_server_restart() {
    following_workers_ride_out(Fault::RestartServer);
}
