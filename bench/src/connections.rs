//! Section 10, connections: whether short requests still get through `jobhost serve` while
//! thousands of long-polls hold connections, on SQLite and on PostgreSQL.
//!
//! The server is the real binary with its default settings (`serve.max_connections` 10,000,
//! long-polls bounded at half of them), started and stopped as in the server section
//! ([`crate::server`]), on a fresh pool of `WAITERS` echo jobs queued through the API in
//! batches, with no worker, so nothing finishes. The probe is `GET /metrics`, a short request
//! that reads the database (its job counts, pools and activity): `PROBES` of them one after
//! another on one keep-alive connection (after a few untimed ones), first with no long-poll
//! open, then with `WAITERS` open, one connection each (`GET /api/v1/jobs/{id}?wait=30s`, one
//! job each, written on plain sockets of one thread and never read), once the server's
//! `jobhost_server_waiters` gauge reads `WAITERS`. p50 and p99 of each; the probes must each
//! answer 200 and report every waiter. How long opening the waiters took (from the first
//! connect to the gauge reading them all) is reported beside.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::report::{Report, Row, millis, number};
use crate::server::{BATCH, Server, batch_body, client, get_ok, ids_of, post_created, sample};
use crate::support::{Backend, Bench, Pool, percentile_duration};

pub const SECTION: &str = "connections";
/// Long-polls open at once while the probes run.
const WAITERS: usize = 5_000;
const WAIT: &str = "30s";
const PROBE: &str = "/metrics";
const PROBE_WARM_UP: usize = 5;
/// Probes timed with and without the waiters; all fit well inside one wait.
const PROBES: usize = 200;

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let waiters = bench.pick(WAITERS, WAITERS / 5);
    raise_open_files_limit(waiters)?;
    report.note(format!(
        "{SECTION}: `jobhost serve` with its default settings on a fresh pool of {waiters} pending echo jobs (no \
         worker); {PROBES} `GET {PROBE}` one after another on one keep-alive connection (after {PROBE_WARM_UP} \
         untimed), first with no long-poll open, then with {waiters} `GET /api/v1/jobs/{{id}}?wait={WAIT}` open (one \
         connection and one job each, never read) once `jobhost_server_waiters` reads {waiters}; p50 and p99. \
         Opening = first connect to the gauge reading them all"
    ));
    let mut failed = part(bench, report, Backend::Sqlite, waiters);
    match bench.pg() {
        Ok(server) => failed += part(bench, report, Backend::Postgres(server), waiters),
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    ensure!(failed == 0, "{failed} part(s) of the connections section failed; their rows say why");
    Ok(())
}

/// One backend's rows, or a row saying why it failed; returns how many failed (0 or 1).
fn part(bench: &Bench, report: &mut Report, backend: Backend<'_>, waiters: usize) -> usize {
    match probe_beside_waiters(bench, report, backend, waiters) {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("error in the connections section ({}): {err:#}", backend.name());
            report.add(Row::info(SECTION, backend.name(), format!("failed: {err:#}")));
            1
        }
    }
}

fn probe_beside_waiters(bench: &Bench, report: &mut Report, backend: Backend<'_>, waiters: usize) -> Result<()> {
    let name = backend.name();
    let pool = Pool::on(bench, backend, "")?;
    pool.create()?;
    let server = Server::start(&pool)?;
    let client = client();
    let url = server.url("/api/v1/jobs");
    let mut ids = Vec::with_capacity(waiters);
    for start in (0..waiters).step_by(BATCH) {
        ids.extend(ids_of(&post_created(&client, &url, &batch_body(start, BATCH.min(waiters - start)))?)?);
    }
    ensure!(ids.len() == waiters, "queued {waiters} jobs through the API but got {} ids", ids.len());

    let alone = probes(&server, 0)?;
    let address = server.url("").trim_start_matches("http://").to_string();
    let opening = Instant::now();
    let mut open = Vec::with_capacity(waiters);
    for id in &ids {
        let mut stream = TcpStream::connect(&address).with_context(|| format!("cannot connect to {address}"))?;
        let request = format!("GET /api/v1/jobs/{id}?wait={WAIT} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).context("cannot send a long-poll")?;
        open.push(stream);
    }
    server.wait_for_waiters(&client, waiters)?;
    let opened = opening.elapsed();
    let beside = probes(&server, waiters)?;
    drop(open);
    server.stop()?;

    let count = number(waiters as f64, 0);
    for (when, samples) in [("no long-poll open".to_string(), &alone), (format!("{count} long-polls open"), &beside)] {
        report.add(Row::info(
            SECTION,
            format!("{name}: `GET {PROBE}` with {when}, p50 / p99 of {PROBES}"),
            format!("{} / {}", millis(percentile_duration(samples, 50.0)), millis(percentile_duration(samples, 99.0))),
        ));
    }
    report.add(Row::info(SECTION, format!("{name}: opening {count} long-polls, one connection each"), millis(opened)));
    Ok(())
}

/// `PROBES` timed requests of `PROBE` on one connection, each of which must report `waiters`.
fn probes(server: &Server, waiters: usize) -> Result<Vec<Duration>> {
    let client = client();
    let url = server.url(PROBE);
    let mut samples = Vec::with_capacity(PROBES);
    for i in 0..PROBE_WARM_UP + PROBES {
        let started = Instant::now();
        let body = get_ok(&client, &url)?;
        let elapsed = started.elapsed();
        let waiting = sample(&body, "jobhost_server_waiters");
        ensure!(waiting == Some(waiters as f64), "{PROBE} reported {waiting:?} waiters, not {waiters}");
        if i >= PROBE_WARM_UP {
            samples.push(elapsed);
        }
    }
    Ok(samples)
}

/// The waiters' sockets are this process's files too; the usual soft limit (1024) is too few.
fn raise_open_files_limit(sockets: usize) -> Result<()> {
    let needed = (sockets + 256) as libc::rlim_t;
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        ensure!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0, "cannot read the open-files limit");
        if limit.rlim_cur < needed {
            ensure!(
                limit.rlim_max >= needed,
                "the open-files hard limit ({}) is below the {needed} this section needs: raise it (`ulimit -Hn`)",
                limit.rlim_max
            );
            limit.rlim_cur = needed;
            ensure!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0, "cannot raise the open-files limit to {needed}");
        }
    }
    Ok(())
}
