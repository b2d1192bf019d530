//! The scheduler: queues the jobs of `schedules:` as their ticks fall due. Every
//! long-running process runs one (`check --interval`, `serve`, `work --follow`); no leader is
//! chosen. Each computes a schedule's latest due tick and asks the store to handle it
//! ([`Store::advance_schedule`]), a compare-and-set in the database that exactly one caller
//! wins, so each tick's job is queued once however many schedulers race for it (its
//! execution is at-least-once, as every job's is). See `docs/schedules.md`.
//!
//! Between rounds it sleeps until the earliest next tick, so a due tick is queued within
//! milliseconds, but never longer than [`MAX_SLEEP`].

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use serde::Serialize;

use jobhost_core::config::Config;
use jobhost_core::schedule::{CatchUp, Schedule};
use jobhost_store::{JobField, JobRequest, JobRules, Millis, NewJob, ScheduleRun, Store};

use crate::shutdown::{Shutdown, Stage};

/// How late a `catch_up: skip` schedule's tick may be handled and still queue its job: the
/// scheduler's own lateness (a busy database, a restart) is not a missed tick.
pub const LATE_GRACE: Duration = Duration::from_secs(60);
/// Longest sleep between rounds, so schedules other processes started and a database that
/// came back are noticed.
pub const MAX_SLEEP: Duration = Duration::from_secs(60);
/// The wait after a round that failed, before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How many of each schedule's latest runs a listing shows.
pub const LISTED_RUNS: u32 = 10;

/// Queues due ticks until `shutdown` drains. Failures are logged and retried: they never
/// end the process that runs the scheduler. Returns at once when no schedule is configured.
pub async fn run(store: &Store, config: &Config, mut shutdown: Shutdown) {
    if config.schedules.is_empty() {
        return;
    }
    loop {
        let wait = match round(store, config).await {
            Ok(wait) => wait,
            Err(err) => {
                let report = crate::output::error_report(&err);
                tracing::warn!("scheduling failed, trying again in {RETRY_AFTER:?}: {report}");
                RETRY_AFTER
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.reached(Stage::Draining) => return,
        }
    }
}

/// What a schedule needs at `now`, given how far it has been handled.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// First seen: handled through `at`, so it never fires for a tick before it.
    Start { at: Millis },
    /// The tick due at `due_at` is not handled yet; `queue` says whether it gets a job or is
    /// passed over. Ticks between the last handled one and it are passed over with it.
    Tick { due_at: Millis, queue: bool },
    /// Nothing is due.
    Wait,
}

fn step(schedule: &Schedule, ticked_through: Option<Millis>, now: Millis) -> Step {
    let Some(through) = ticked_through else {
        return Step::Start { at: now };
    };
    match schedule.latest_tick(now) {
        Some(due_at) if due_at > through => {
            let queue = match schedule.catch_up {
                CatchUp::Once => true,
                CatchUp::Skip => now - due_at <= LATE_GRACE.as_millis() as Millis,
            };
            Step::Tick { due_at, queue }
        }
        _ => Step::Wait,
    }
}

/// One round: every schedule's due tick handled; returns how long to sleep.
async fn round(store: &Store, config: &Config) -> Result<Duration> {
    let now = now_millis();
    let handled: HashMap<String, Millis> =
        store.schedules(0).await?.into_iter().map(|state| (state.name, state.ticked_through)).collect();
    let mut failed = false;
    for (name, schedule) in &config.schedules {
        if let Err(err) = handle(store, config, name, step(schedule, handled.get(name).copied(), now)).await {
            let report = crate::output::error_report(&err);
            tracing::warn!(schedule = name, "cannot handle the schedule's tick: {report}");
            failed = true;
        }
    }
    if failed {
        return Ok(RETRY_AFTER);
    }
    let next = config.schedules.values().filter_map(|schedule| schedule.next_tick(now)).min();
    // A millisecond past the tick, so the round it wakes finds the tick due.
    let wait = next.map(|next| Duration::from_millis((next - now_millis()).max(0) as u64 + 1));
    Ok(wait.unwrap_or(MAX_SLEEP).min(MAX_SLEEP))
}

async fn handle(store: &Store, config: &Config, name: &str, step: Step) -> Result<()> {
    match step {
        Step::Start { at } => {
            if store.start_schedule(name, at).await? {
                tracing::info!(schedule = name, "schedule started: its ticks from now on queue jobs");
            }
        }
        Step::Tick { due_at, queue } => {
            let job = if queue { Some(tick_job(config, name)?) } else { None };
            let id = job.as_ref().map(|job| job.id().to_owned());
            if store.advance_schedule(name, due_at, job).await? {
                match id {
                    Some(id) => tracing::info!(schedule = name, due_at, job_id = id, "tick queued"),
                    None => tracing::info!(schedule = name, due_at, "missed ticks passed over (catch_up: skip)"),
                }
            }
        }
        Step::Wait => {}
    }
    Ok(())
}

/// The job a tick of schedule `name` queues, checked as every new job is.
fn tick_job(config: &Config, name: &str) -> Result<NewJob> {
    let schedule = &config.schedules[name];
    let request = JobRequest {
        pool: schedule.pool.clone(),
        processor: schedule.processor.clone(),
        payload: schedule.payload_json(),
        priority: schedule.priority,
        max_attempts: schedule.max_attempts.unwrap_or(config.retry.max_attempts),
        delay: None,
        run_at: None,
        unique_key: None,
        unique_within: None,
        replace: false,
        after: Vec::new(),
    };
    // Processors may be installed only where the workers run, as with `seed --processor-elsewhere`.
    let rules = JobRules { processors: None, max_payload: config.jobs.max_payload.0 };
    NewJob::new(request, &rules).map_err(|err| {
        let key = match err.field() {
            JobField::Pool => "pool",
            JobField::Processor => "processor",
            JobField::Payload => "payload",
            JobField::MaxAttempts => "max_attempts",
            JobField::Schedule => "cron",
            // A tick's job has no unique key (its tick is handled once already) and no parents.
            JobField::UniqueKey => "unique_key",
            JobField::After => "after",
        };
        anyhow!(err.message(&format!("schedules.{name}.{key}")))
    })
}

fn now_millis() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as Millis)
}

/// A schedule as `jobhost schedules`, the API and the dashboard show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    pub timezone: String,
    pub processor: String,
    pub pool: String,
    /// `skip` or `once`.
    pub catch_up: &'static str,
    /// When its next tick is due (milliseconds since the epoch).
    pub next_run_at: Option<Millis>,
    /// The latest tick that queued a job; none yet if absent.
    pub last_run: Option<ScheduleRun>,
    /// Every tick due up to this instant has been handled; absent until a long-running
    /// jobhost process has seen the schedule.
    pub ticked_through: Option<Millis>,
    /// Its latest runs, newest first (at most 10).
    pub runs: Vec<ScheduleRun>,
}

/// Every configured schedule with what the pool knows of it, by name.
pub async fn listing(store: &Store, config: &Config) -> jobhost_store::Result<Vec<ScheduleView>> {
    let mut states: HashMap<String, _> =
        store.schedules(LISTED_RUNS).await?.into_iter().map(|state| (state.name.clone(), state)).collect();
    let now = now_millis();
    Ok(config
        .schedules
        .iter()
        .map(|(name, schedule)| {
            let state = states.remove(name);
            let runs = state.as_ref().map(|state| state.runs.clone()).unwrap_or_default();
            ScheduleView {
                name: name.clone(),
                cron: schedule.cron.as_str().to_owned(),
                timezone: schedule.timezone.name().to_owned(),
                processor: schedule.processor.clone(),
                pool: schedule.pool.clone(),
                catch_up: schedule.catch_up.as_str(),
                next_run_at: schedule.next_tick(now),
                last_run: runs.first().cloned(),
                ticked_through: state.map(|state| state.ticked_through),
                runs,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, catch_up: &str) -> Schedule {
        let config =
            Config::parse(&format!("schedules: {{s: {{cron: '{cron}', processor: echo, catch_up: {catch_up}}}}}"))
                .unwrap();
        config.schedules["s"].clone()
    }

    const HOUR: Millis = 3_600_000;
    /// 2030-01-01T00:00:00Z, on the hour.
    const T: Millis = 1_893_456_000_000;

    #[test]
    fn a_schedule_seen_for_the_first_time_starts_now_and_fires_for_no_earlier_tick() {
        assert_eq!(step(&schedule("0 * * * *", "once"), None, T + 10), Step::Start { at: T + 10 });
        assert_eq!(step(&schedule("0 * * * *", "once"), Some(T + 10), T + 20), Step::Wait);
    }

    #[test]
    fn a_tick_due_now_is_queued_under_either_policy() {
        for policy in ["skip", "once"] {
            let hourly = schedule("0 * * * *", policy);
            assert_eq!(step(&hourly, Some(T - HOUR), T + 300), Step::Tick { due_at: T, queue: true }, "{policy}");
            assert_eq!(step(&hourly, Some(T), T + 300), Step::Wait, "{policy}: handled already");
        }
    }

    #[test]
    fn missed_ticks_are_passed_over_by_skip_and_run_once_by_once() {
        // Down from just after T-5h until 10 minutes after T: ticks T-4h .. T were missed.
        let now = T + 600_000;
        let skip = schedule("0 * * * *", "skip");
        assert_eq!(step(&skip, Some(T - 5 * HOUR), now), Step::Tick { due_at: T, queue: false });
        let once = schedule("0 * * * *", "once");
        assert_eq!(step(&once, Some(T - 5 * HOUR), now), Step::Tick { due_at: T, queue: true });
        // A tick late by no more than the grace is the scheduler's lateness, not a miss.
        let grace = LATE_GRACE.as_millis() as Millis;
        assert_eq!(step(&skip, Some(T - 5 * HOUR), T + grace), Step::Tick { due_at: T, queue: true });
    }

    #[test]
    fn a_ticks_job_is_the_schedules_and_checked_as_every_job() {
        let config = Config::parse(
            "retry: {max_attempts: 7}\nschedules: {r: {cron: '@daily', processor: report, payload: {a: 1}, pool: p}}",
        )
        .unwrap();
        assert!(tick_job(&config, "r").is_ok());
        let mut config = config;
        config.schedules.get_mut("r").unwrap().pool = String::new();
        let message = tick_job(&config, "r").unwrap_err().to_string();
        assert!(message.starts_with("schedules.r.pool must be 1 to 128"), "{message}");
    }
}
