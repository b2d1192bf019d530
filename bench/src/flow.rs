//! Section 14, flow limits: what a limit costs the claim when it does not bind. One worker
//! drains jobs in turns that settle the last batch and claim 16 more, as `jobhost work
//! --concurrency 16` does, three ways in the same run: without a limit, under a `max_running`
//! too high to bind, and under the same limit keyed by `/tenant` with 1,000 distinct tenants.
//! Every measurement gets a fresh pool and the kinds take turns, so none inherits another's
//! rows or a warmer cache. The binding case is a test (`tests/flow.rs`), not a figure.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use jobhost_core::flow::{FlowConfig, FlowLimit};
use jobhost_store::{Access, ClaimRequest, ClaimedJob, Finished, Store};

use crate::report::{Report, Row, number};
use crate::store::{LEASE, POOL, activate, check_settled, enqueue_each, finished};
use crate::support::{Backend, Bench, Pool, block_on, median_duration, retry_policy};

pub const SECTION: &str = "flow";
const LIMITED_RATIO: f64 = 1.25;
const KEYED_RATIO: f64 = 1.5;
const BATCH: u32 = 16;
const TENANTS: u64 = 1_000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    None,
    Limited,
    Keyed,
}

impl Kind {
    fn limits(self) -> Vec<FlowLimit> {
        let config =
            |key: Option<&str>| FlowConfig { max_running: Some(1_000_000), rate: None, key: key.map(Into::into) };
        match self {
            Kind::None => Vec::new(),
            Kind::Limited => vec![FlowLimit::new("echo", &config(None), "flow").expect("a valid limit")],
            Kind::Keyed => vec![FlowLimit::new("echo", &config(Some("/tenant")), "flow").expect("a valid limit")],
        }
    }
}

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let (jobs, rounds) = (bench.pick(5_000, 1_000), bench.pick(3, 1));
    report.note(format!(
        "flow: one worker drains {jobs} echo jobs (payload {{\"tenant\": i % {TENANTS}}}) in turns that settle \
         the last batch and claim {BATCH} more, without a limit, under `max_running: 1000000` (never binds) and \
         under the same limit with `key: /tenant` ({TENANTS} distinct keys); a fresh pool for each of {rounds} \
         rounds per kind, the kinds taking turns; medians of the time per claimed job"
    ));
    run_on(bench, report, Backend::Sqlite, jobs, rounds)?;
    match bench.pg() {
        Ok(server) => run_on(bench, report, Backend::Postgres(server), jobs, rounds)?,
        Err(err) => report.add(Row::info(SECTION, "PostgreSQL rows", format!("skipped: {err:#}"))),
    }
    Ok(())
}

fn run_on(bench: &Bench, report: &mut Report, backend: Backend<'_>, jobs: u64, rounds: usize) -> Result<()> {
    let name = backend.name();
    let kinds = [Kind::None, Kind::Limited, Kind::Keyed];
    let mut measured: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for _ in 0..rounds {
        for (kind, times) in kinds.iter().zip(&mut measured) {
            times.push(per_claim(bench, backend, *kind, jobs)?);
        }
    }
    let [none, limited, keyed] = [0, 1, 2].map(|i| median_duration(&measured[i]));
    let micros = |d: Duration| format!("{:.1} µs", d.as_secs_f64() * 1e6);
    report.add(Row::info(SECTION, format!("{name}: claim, no limit (per job)"), micros(none)));
    report.add(Row::info(SECTION, format!("{name}: claim under max_running (per job)"), micros(limited)));
    report.add(Row::info(SECTION, format!("{name}: claim under max_running per /tenant (per job)"), micros(keyed)));
    for (what, cost, target) in [("max_running", limited, LIMITED_RATIO), ("keyed max_running", keyed, KEYED_RATIO)] {
        let ratio = cost.as_secs_f64() / none.as_secs_f64();
        report.add(Row::goal(
            SECTION,
            format!("{name}: claim cost under {what} ÷ without"),
            format!("{}×", number(ratio, 2)),
            format!("≤ {}×", number(target, 2)),
            ratio <= target,
        ));
    }
    Ok(())
}

/// Drains a fresh pool of `jobs` jobs under `kind`'s limits; the time per claimed job.
fn per_claim(bench: &Bench, backend: Backend<'_>, kind: Kind, jobs: u64) -> Result<Duration> {
    let pool = Pool::on(bench, backend, "")?;
    let store = block_on(Store::open(&pool.database(), Access::CreateIfMissing))?;
    enqueue_each(&store, jobs, |i| (format!(r#"{{"tenant":{}}}"#, i % TENANTS), None))?;
    let worker_id = "flow-bench-worker";
    activate(&store, worker_id, None)?;
    let (limits, retry) = (kind.limits(), retry_policy());
    let claim = ClaimRequest { pool: POOL, worker_id, lease: LEASE, limit: BATCH, flow: &limits };
    let started = Instant::now();
    let (mut held, mut claimed): (Vec<ClaimedJob>, u64) = (Vec::new(), 0);
    loop {
        let done: Vec<Finished<'_>> = held.iter().map(finished).collect();
        let turn = block_on(store.turn(&done, Some(claim), &retry))?;
        check_settled(&done, &turn.settled)?;
        ensure!(!turn.held_back, "a limit that cannot bind held jobs back");
        claimed += turn.claimed.len() as u64;
        if turn.claimed.is_empty() {
            break;
        }
        held = turn.claimed;
    }
    let elapsed = started.elapsed();
    ensure!(claimed == jobs, "claimed {claimed} of {jobs} jobs");
    Ok(elapsed / jobs as u32)
}
