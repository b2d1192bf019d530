//! The store's test suite: written once against [`Store`] and run against every backend,
//! as River's driver test suite is run against each of its drivers. Each test gets a fresh
//! pool and a clock it moves by hand, so backoff and leases are tested without sleeping.
//!
//! PostgreSQL tests need a server: `JOBHOST_TEST_PG` names one (the test command,
//! `scripts/test`, starts a throwaway one). Without it they fail; they are never skipped.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use jobhost_core::config::DatabaseConfig;

use super::*;

const LEASE: Duration = Duration::from_secs(60);
/// Every test runs on a store with several connections, on a multi-threaded runtime, as
/// `jobhost serve` does: operations land on different connections (and SQLite's go through
/// `block_in_place`), and must still see each other's writes.
const CONNECTIONS: u32 = 3;
const NO_BACKOFF: RetryPolicy = RetryPolicy { initial: Duration::ZERO, max: Duration::ZERO, jitter: 0.0 };

/// A fresh schema on the server `$JOBHOST_TEST_PG` names; fails without one.
pub fn postgres_config() -> DatabaseConfig {
    let server = std::env::var("JOBHOST_TEST_PG").unwrap_or_else(|_| {
        panic!("set JOBHOST_TEST_PG=postgres://… or run ./scripts/test, which starts a PostgreSQL server")
    });
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    DatabaseConfig { path: server, schema, ..Default::default() }
}

/// A store on a fresh pool with a hand-driven clock.
pub struct TestStore {
    pub store: Store,
    config: DatabaseConfig,
    now: Arc<AtomicI64>,
    _dir: tempfile::TempDir,
}

impl TestStore {
    async fn open(config: DatabaseConfig, dir: tempfile::TempDir) -> TestStore {
        let now = Arc::new(AtomicI64::new(1_700_000_000_000));
        let store = Store::open_with_clock(&config, Access::CreateIfMissing, CONNECTIONS, Clock::Manual(now.clone()))
            .await
            .unwrap_or_else(|err| panic!("cannot open the test pool: {err}"));
        TestStore { store, config, now, _dir: dir }
    }

    /// Another store on the same pool and clock, with connections of its own: what another
    /// process sees.
    pub async fn another_store(&self) -> Store {
        Store::open_with_clock(&self.config, Access::Existing, 1, Clock::Manual(self.now.clone())).await.unwrap()
    }

    pub async fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let config = DatabaseConfig { path: dir.path().join("pool.db").display().to_string(), ..Default::default() };
        TestStore::open(config, dir).await
    }

    /// A fresh schema on the test server; see [`postgres_config`].
    pub async fn postgres() -> TestStore {
        TestStore::open(postgres_config(), tempfile::tempdir().unwrap()).await
    }

    pub fn advance(&self, millis: i64) {
        self.now.fetch_add(millis, Ordering::SeqCst);
    }

    pub fn now(&self) -> Millis {
        self.now.load(Ordering::SeqCst)
    }

    /// Checks the kept job counts against a count of the jobs themselves.
    pub async fn assert_counts_exact(&self) {
        let drift = self.store.driver.drifted_counts().await.unwrap();
        assert!(drift.is_empty(), "job counts drifted from the jobs table: {drift:?}");
    }

    pub async fn execute(&self, sql: &str) {
        self.store.driver.execute_for_test(sql).await.unwrap();
    }

    /// The single column of every row `sql` returns, as integers.
    pub async fn counts(&self, sql: &str) -> Vec<i64> {
        self.store.driver.counts_for_test(sql).await.unwrap()
    }

    pub async fn claim(&self, pool: &str, worker_id: &str, lease: Duration, limit: u32) -> Result<Vec<ClaimedJob>> {
        let request = ClaimRequest { pool, worker_id, lease, limit, flow: &[] };
        Ok(self.store.turn(&[], Some(request), &NO_BACKOFF).await?.claimed)
    }

    pub async fn complete(&self, job: &ClaimedJob, result: &str, report: &AttemptReport<'_>) -> Result<Settled> {
        let finished = Finished { job, report: report.clone(), result: Some(result) };
        Ok(self.store.turn(&[finished], None, &NO_BACKOFF).await?.settled[0])
    }

    pub async fn fail(&self, job: &ClaimedJob, report: &AttemptReport<'_>, retry: &RetryPolicy) -> Result<Settled> {
        let finished = Finished { job, report: report.clone(), result: None };
        Ok(self.store.turn(&[finished], None, retry).await?.settled[0])
    }
}

fn plan(pool: &str, max_workers: u32) -> PlanRequest<'_> {
    PlanRequest { pool, host: "here", max_workers, min_following: 0, stale_after: Duration::from_secs(60) }
}

/// Registers every test of the suite once per backend, as `sqlite::NAME` and `postgres::NAME`.
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestStore::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestStore::postgres().await).await
                }
            )*
        }
    };
}

for_each_backend!(
    claim_takes_highest_priority_then_oldest_and_never_twice,
    a_delayed_job_is_not_ready_until_its_time,
    a_run_at_that_has_passed_makes_a_job_ready_as_it_is_queued,
    a_run_at_in_the_future_is_kept_and_waited_for,
    only_an_active_worker_can_claim,
    complete_records_the_result_and_the_attempt,
    each_attempt_records_the_code_that_ran_it,
    a_stale_complete_or_fail_changes_nothing,
    failures_retry_with_backoff_then_poison_at_max_attempts,
    abandoned_jobs_come_back_as_worker_lost_and_poison_at_the_limit,
    an_expired_lease_is_recovered_even_from_a_registered_worker,
    retry_cancel_and_purge_act_only_on_the_right_statuses,
    every_outcome_kind_can_be_stored_and_read_back,
    counts_too_wide_for_u32_are_clamped_when_read,
    a_delay_past_the_end_of_time_saturates_instead_of_wrapping,
    a_turn_fences_each_attempt_alone_and_settles_the_live_ones,
    output_with_nul_bytes_is_stored_visibly_and_settles_beside_the_others,
    a_claim_of_several_takes_the_best_ready_jobs_in_order_under_one_token,
    a_workers_held_claims_are_the_ones_it_took_and_has_not_settled,
    purge_deletes_the_attempt_history_of_the_jobs_it_deletes,
    retention_deletes_only_expired_finished_jobs_in_bounded_batches_and_counters_stay,
    a_silent_worker_is_reaped_and_its_job_released,
    heartbeats_keep_a_worker_and_its_leases_alive,
    a_starting_worker_that_never_comes_up_is_lost_after_the_grace,
    plan_workers_counts_starting_workers_and_never_overspawns,
    plan_workers_fills_each_hosts_own_slots_and_counts_the_others_workers,
    status_counts_jobs_and_workers_and_the_ready_backlog,
    listing_filters_and_pages_through_every_job_once,
    bulk_retry_and_cancel_act_on_the_matching_jobs_in_the_right_status,
    job_statuses_and_jobs_answer_for_many_ids_at_once,
    a_job_shows_its_latest_attempts_and_pages_through_the_older_ones,
    pools_and_workers_are_listed_with_their_counts_and_jobs,
    activity_counts_enqueues_and_attempts_and_survives_purge_and_folding,
    a_stored_name_this_jobhost_does_not_know_is_an_error_naming_it,
    ready_in_says_when_the_earliest_pending_job_of_a_pool_is_due,
    a_waiter_is_woken_by_jobs_queued_and_jobs_retried,
    plan_workers_keeps_following_workers_and_spawns_draining_ones_for_the_rest,
    each_tick_is_handled_by_exactly_one_of_many_racing_processes,
    a_passed_over_tick_queues_nothing_and_no_tick_is_handled_twice_or_out_of_order,
    a_schedule_keeps_only_its_latest_runs,
    a_unique_key_is_held_while_its_job_lives_and_a_match_names_the_holder,
    unique_within_keeps_a_finished_jobs_key_for_that_long,
    replace_debounces_a_burst_into_one_pending_job_with_the_last_payload,
    racing_enqueuers_queue_each_unique_key_once,
    a_paused_pool_is_not_claimed_but_its_running_jobs_settle_and_are_reaped,
    pausing_is_idempotent_needs_no_jobs_and_is_listed_with_when_and_why,
    a_paused_pool_gets_no_workers_planned_and_no_ready_job_to_wait_for,
    resuming_a_pool_wakes_its_waiting_workers,
    max_running_holds_back_each_keys_excess_without_blocking_the_others,
    a_rate_counts_starts_over_a_sliding_period,
    racing_claimers_never_run_more_than_max_running,
    a_paused_pool_with_limits_holds_nothing_back,
    flow_usage_shows_per_limit_and_key_what_runs_and_what_is_held_back,
    a_job_waits_for_every_parent_and_is_ready_when_the_last_completes,
    a_poisoned_or_cancelled_parent_cancels_its_dependents_transitively_naming_why,
    a_missing_poisoned_or_cancelled_parent_refuses_the_batch_and_queues_nothing,
    a_retried_dependent_waits_again_until_its_retried_parent_completes,
    racing_enqueuers_of_children_and_the_parents_completion_leave_none_waiting,
    copied_jobs_keep_their_parents,
);

/// One reaping pass that never finds a worker stale, so only abandoned jobs are recovered.
async fn recover(t: &TestStore) -> Recovery {
    let never = Duration::from_secs(1 << 30);
    t.store.reap(None, never, never, &NO_BACKOFF).await.unwrap().recovery
}

fn job(pool: &str, priority: i64) -> NewJob {
    NewJob {
        id: NewJob::new_id(),
        pool: pool.into(),
        processor: "echo".into(),
        payload: r#"{"n":1}"#.into(),
        priority,
        max_attempts: 3,
        ready: Ready::After(Duration::ZERO),
        unique: None,
        after: Vec::new(),
    }
}

/// Ready `ms` milliseconds after it is queued.
fn after(ms: u64) -> Ready {
    Ready::After(Duration::from_millis(ms))
}

async fn active_worker(t: &TestStore, id: &str) {
    t.store
        .activate_worker(&NewWorker { id: id.into(), pool: "default".into(), host: None, pid: None, following: false })
        .await
        .unwrap();
}

async fn claim_one(t: &TestStore, worker: &str) -> Option<ClaimedJob> {
    t.claim("default", worker, LEASE, 1).await.unwrap().pop()
}

fn failure(kind: OutcomeKind) -> AttemptReport<'static> {
    AttemptReport { message: Some("boom"), ..AttemptReport::of(kind) }
}

async fn claim_takes_highest_priority_then_oldest_and_never_twice(t: TestStore) {
    active_worker(&t, "w1").await;
    let ids =
        t.store.enqueue_all(&[job("default", 0), job("default", 5), job("default", 0), job("other", 9)]).await.unwrap();
    let mut order = Vec::new();
    while let Some(job) = claim_one(&t, "w1").await {
        order.push(job.id);
    }
    assert_eq!(order, [ids[1].clone(), ids[0].clone(), ids[2].clone()]);
}

async fn a_delayed_job_is_not_ready_until_its_time(t: TestStore) {
    active_worker(&t, "w1").await;
    t.store.enqueue_all(&[NewJob { ready: after(5_000), ..job("default", 0) }]).await.unwrap();
    assert!(claim_one(&t, "w1").await.is_none());
    t.advance(5_000);
    assert!(claim_one(&t, "w1").await.is_some());
}

async fn a_run_at_that_has_passed_makes_a_job_ready_as_it_is_queued(t: TestStore) {
    active_worker(&t, "w1").await;
    let queued_at = t.now();
    let id =
        t.store.enqueue_all(&[NewJob { ready: Ready::At(queued_at - 60_000), ..job("default", 0) }]).await.unwrap();
    let job = t.store.job(&id[0]).await.unwrap().unwrap().job;
    assert_eq!(job.run_at, queued_at, "ready as it was queued, not a minute before it existed");
    let status = t.store.status(None).await.unwrap();
    assert_eq!((status.ready, status.oldest_ready_age_ms), (1, Some(0)));
    assert_eq!(claim_one(&t, "w1").await.map(|job| job.id), Some(id[0].clone()));
}

async fn a_run_at_in_the_future_is_kept_and_waited_for(t: TestStore) {
    active_worker(&t, "w1").await;
    // The store's clock is years behind this machine's: a run_at turned into a delay on the
    // machine's clock, or compared with it, would make this job ready at once.
    let run_at = t.now() + 60_000;
    let id = t.store.enqueue_all(&[NewJob { ready: Ready::At(run_at), ..job("default", 0) }]).await.unwrap();
    assert_eq!(t.store.job(&id[0]).await.unwrap().unwrap().job.run_at, run_at, "kept to the millisecond");
    assert_eq!(t.store.status(None).await.unwrap().ready, 0);
    t.advance(59_999);
    assert!(claim_one(&t, "w1").await.is_none(), "not ready a millisecond early");
    t.advance(1);
    assert_eq!(claim_one(&t, "w1").await.map(|job| job.id), Some(id[0].clone()));
}

async fn only_an_active_worker_can_claim(t: TestStore) {
    t.store.enqueue_all(&[job("default", 0)]).await.unwrap();
    assert!(claim_one(&t, "nobody").await.is_none(), "an unregistered worker gets nothing");
    active_worker(&t, "w1").await;
    assert!(claim_one(&t, "w1").await.is_some());
}

async fn complete_records_the_result_and_the_attempt(t: TestStore) {
    active_worker(&t, "w1").await;
    let id = t.store.enqueue_all(&[job("default", 0)]).await.unwrap().remove(0);
    let claimed = claim_one(&t, "w1").await.unwrap();
    let report = AttemptReport { fuel_used: Some(42), duration_ms: Some(3), ..AttemptReport::of(OutcomeKind::Ok) };
    assert_eq!(t.complete(&claimed, r#"{"done":true}"#, &report).await.unwrap(), Settled::Completed);

    let detail = t.store.job(&id).await.unwrap().unwrap();
    assert_eq!(detail.job.status, JobStatus::Completed);
    assert_eq!(detail.result, Some(serde_json::json!({"done": true})));
    assert_eq!(detail.attempt_history.len(), 1);
    assert_eq!(detail.attempt_history[0].outcome, Some(OutcomeKind::Ok));
    assert_eq!(detail.attempt_history[0].fuel_used, Some(42));
}

async fn each_attempt_records_the_code_that_ran_it(t: TestStore) {
    active_worker(&t, "w1").await;
    let id = t.store.enqueue_all(&[job("default", 0)]).await.unwrap().remove(0);
    let never_loaded = claim_one(&t, "w1").await.unwrap();
    let load_error = AttemptReport { message: Some("no such processor"), ..AttemptReport::of(OutcomeKind::LoadError) };
    t.fail(&never_loaded, &load_error, &NO_BACKOFF).await.unwrap();
    let ran = claim_one(&t, "w1").await.unwrap();
    let code = "3f2a9c1b0d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    let ok = AttemptReport { processor_sha256: Some(code), ..AttemptReport::of(OutcomeKind::Ok) };
    assert_eq!(t.complete(&ran, "1", &ok).await.unwrap(), Settled::Completed);

    let history = t.store.job(&id).await.unwrap().unwrap().attempt_history;
    let hashes: Vec<Option<&str>> = history.iter().map(|attempt| attempt.processor_sha256.as_deref()).collect();
    assert_eq!(hashes, [None, Some(code)], "a processor that never loaded ran no code");
}

async fn a_stale_complete_or_fail_changes_nothing(t: TestStore) {
    active_worker(&t, "w1").await;
    active_worker(&t, "w2").await;
    let id = t.store.enqueue_all(&[job("default", 0)]).await.unwrap().remove(0);
    let first = claim_one(&t, "w1").await.unwrap();
    assert!(matches!(
        t.fail(&first, &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap(),
        Settled::Retrying { .. }
    ));
    let second = claim_one(&t, "w2").await.unwrap();

    let ok = AttemptReport::of(OutcomeKind::Ok);
    assert_eq!(t.complete(&first, "1", &ok).await.unwrap(), Settled::Stale, "first claim is gone");
    assert_eq!(t.fail(&first, &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap(), Settled::Stale);
    let forged = ClaimedJob { token: second.token.wrapping_add(1), ..second.clone() };
    assert_eq!(t.complete(&forged, "1", &ok).await.unwrap(), Settled::Stale, "a wrong token is refused");

    assert_eq!(t.complete(&second, "2", &ok).await.unwrap(), Settled::Completed);
    assert_eq!(t.complete(&second, "3", &ok).await.unwrap(), Settled::Stale, "completing twice is refused");
    let detail = t.store.job(&id).await.unwrap().unwrap();
    assert_eq!(detail.result, Some(serde_json::json!(2)));
    assert_eq!(detail.attempt_history.len(), 2);
    t.assert_counts_exact().await;
}

async fn failures_retry_with_backoff_then_poison_at_max_attempts(t: TestStore) {
    active_worker(&t, "w1").await;
    let id = t.store.enqueue_all(&[job("default", 0)]).await.unwrap().remove(0);
    let policy = RetryPolicy { initial: Duration::from_secs(1), max: Duration::from_secs(60), jitter: 0.0 };

    let first = claim_one(&t, "w1").await.unwrap();
    let retry_at = t.now() + 1_000;
    assert_eq!(
        t.fail(&first, &failure(OutcomeKind::Trap), &policy).await.unwrap(),
        Settled::Retrying { run_at: retry_at }
    );
    t.advance(999);
    assert!(claim_one(&t, "w1").await.is_none(), "not ready during the backoff");
    t.advance(1);
    let second = claim_one(&t, "w1").await.unwrap();
    assert_eq!(second.attempt, 2);
    let retry_at = t.now() + 2_000;
    assert_eq!(
        t.fail(&second, &failure(OutcomeKind::Timeout), &policy).await.unwrap(),
        Settled::Retrying { run_at: retry_at }
    );
    t.advance(2_000);
    let third = claim_one(&t, "w1").await.unwrap();
    assert_eq!(t.fail(&third, &failure(OutcomeKind::Exit), &policy).await.unwrap(), Settled::Poisoned);

    let detail = t.store.job(&id).await.unwrap().unwrap();
    assert_eq!(detail.job.status, JobStatus::Poisoned);
    assert_eq!(detail.job.last_error.as_deref(), Some("exit: boom"));
    let kinds: Vec<_> = detail.attempt_history.iter().map(|a| a.outcome.unwrap()).collect();
    assert_eq!(kinds, [OutcomeKind::Trap, OutcomeKind::Timeout, OutcomeKind::Exit]);
    t.advance(1_000_000);
    assert!(claim_one(&t, "w1").await.is_none(), "a poisoned job is never claimed");
    t.assert_counts_exact().await;
}

async fn abandoned_jobs_come_back_as_worker_lost_and_poison_at_the_limit(t: TestStore) {
    let id = t.store.enqueue_all(&[NewJob { max_attempts: 2, ..job("default", 0) }]).await.unwrap().remove(0);
    for (round, worker) in ["w1", "w2"].into_iter().enumerate() {
        active_worker(&t, worker).await;
        let held = claim_one(&t, worker).await.unwrap();
        assert_eq!(recover(&t).await, Recovery::default(), "a live lease is left alone");
        t.store.deregister_worker(worker).await.unwrap();
        let expected =
            if round == 0 { Recovery { released: 1, poisoned: 0 } } else { Recovery { released: 0, poisoned: 1 } };
        assert_eq!(recover(&t).await, expected);
        let ok = AttemptReport::of(OutcomeKind::Ok);
        assert_eq!(t.complete(&held, "1", &ok).await.unwrap(), Settled::Stale, "the old holder cannot finish it");
    }
    let detail = t.store.job(&id).await.unwrap().unwrap();
    assert_eq!(detail.job.status, JobStatus::Poisoned);
    let kinds: Vec<_> = detail.attempt_history.iter().map(|a| a.outcome.unwrap()).collect();
    assert_eq!(kinds, [OutcomeKind::WorkerLost, OutcomeKind::WorkerLost]);
    t.assert_counts_exact().await;
}

async fn an_expired_lease_is_recovered_even_from_a_registered_worker(t: TestStore) {
    active_worker(&t, "w1").await;
    t.store.enqueue_all(&[job("default", 0)]).await.unwrap();
    claim_one(&t, "w1").await.unwrap();
    t.advance(millis(LEASE) - 1);
    assert_eq!(recover(&t).await.released, 0);
    t.advance(1);
    assert_eq!(recover(&t).await.released, 1);
}

async fn retry_cancel_and_purge_act_only_on_the_right_statuses(t: TestStore) {
    active_worker(&t, "w1").await;
    let ids = t.store.enqueue_all(&[NewJob { max_attempts: 1, ..job("default", 9) }, job("default", 0)]).await.unwrap();
    let claimed = claim_one(&t, "w1").await.unwrap();
    assert_eq!(t.fail(&claimed, &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap(), Settled::Poisoned);

    assert_eq!(t.store.cancel_job(&ids[0]).await.unwrap(), IdAnswer::WrongStatus(JobStatus::Poisoned));
    assert_eq!(t.store.cancel_job(&ids[1]).await.unwrap(), IdAnswer::Done);
    assert_eq!(t.store.cancel_job("no-such-id").await.unwrap(), IdAnswer::NotFound);

    let poisoned = |pool| JobMatch { pool, status: Some(JobStatus::Poisoned), ..JobMatch::default() };
    assert_eq!(t.store.retry_matching(&poisoned(Some("other"))).await.unwrap(), 0);
    assert_eq!(t.store.retry_matching(&poisoned(None)).await.unwrap(), 1);
    let retried = claim_one(&t, "w1").await.unwrap();
    assert_eq!((retried.id.as_str(), retried.attempt), (ids[0].as_str(), 2));
    assert_eq!(
        t.store.job(&ids[0]).await.unwrap().unwrap().job.max_attempts,
        2,
        "a fresh attempt on top of the used one"
    );
    let ok = AttemptReport::of(OutcomeKind::Ok);
    t.complete(&retried, "1", &ok).await.unwrap();

    t.advance(10_000);
    assert_eq!(t.store.purge(Duration::from_secs(20), &JobStatus::ALL).await.unwrap(), 0, "too recent");
    assert_eq!(t.store.purge(Duration::from_secs(5), &[JobStatus::Completed]).await.unwrap(), 1);
    assert!(t.store.job(&ids[0]).await.unwrap().is_none());
    assert_eq!(t.store.job(&ids[1]).await.unwrap().unwrap().job.status, JobStatus::Cancelled);
    t.assert_counts_exact().await;
}

async fn every_outcome_kind_can_be_stored_and_read_back(t: TestStore) {
    active_worker(&t, "w1").await;
    let jobs: Vec<NewJob> = OutcomeKind::ALL.iter().map(|_| NewJob { max_attempts: 1, ..job("default", 0) }).collect();
    let ids = t.store.enqueue_all(&jobs).await.unwrap();
    for kind in OutcomeKind::ALL {
        let claimed = claim_one(&t, "w1").await.unwrap();
        if kind == OutcomeKind::Ok {
            t.complete(&claimed, "1", &AttemptReport::of(kind)).await.unwrap();
        } else {
            t.fail(&claimed, &failure(kind), &NO_BACKOFF).await.unwrap();
        }
    }
    let mut stored = Vec::new();
    for id in &ids {
        stored.push(t.store.job(id).await.unwrap().unwrap().attempt_history[0].outcome.unwrap());
    }
    stored.sort();
    let mut expected = OutcomeKind::ALL.to_vec();
    expected.sort();
    assert_eq!(stored, expected);
}

async fn counts_too_wide_for_u32_are_clamped_when_read(t: TestStore) {
    let id = t.store.enqueue_all(&[job("default", 0)]).await.unwrap().remove(0);
    t.execute("UPDATE jobs SET max_attempts = 4294967297, attempts = -3").await;
    let listed = t.store.list_jobs(&JobFilter { limit: 10, ..JobFilter::default() }).await.unwrap();
    assert_eq!((listed[0].attempts, listed[0].max_attempts), (0, u32::MAX));
    assert_eq!(t.store.job(&id).await.unwrap().unwrap().job.max_attempts, u32::MAX);
}

async fn a_delay_past_the_end_of_time_saturates_instead_of_wrapping(t: TestStore) {
    t.store.enqueue_all(&[NewJob { ready: Ready::After(Duration::MAX), ..job("default", 0) }]).await.unwrap();
    let status = t.store.status(None).await.unwrap();
    assert_eq!((status.ready, status.oldest_ready_age_ms), (0, None), "the job is not ready: {status:?}");
}

async fn history(t: &TestStore, id: &str) -> Vec<Option<OutcomeKind>> {
    t.store.job(id).await.unwrap().unwrap().attempt_history.into_iter().map(|a| a.outcome).collect()
}

async fn a_turn_fences_each_attempt_alone_and_settles_the_live_ones(t: TestStore) {
    active_worker(&t, "w1").await;
    active_worker(&t, "w2").await;
    let ids = t
        .store
        .enqueue_all(&[job("default", 3), job("default", 2), job("default", 1), job("default", 0)])
        .await
        .unwrap();
    // The first two claims expire and are recovered, so w1's answers for them are stale;
    // w2 then takes the first job again, and w1's stale answer must not touch w2's attempt.
    let expired = t.claim("default", "w1", Duration::from_secs(1), 2).await.unwrap();
    let held = t.claim("default", "w1", LEASE, 2).await.unwrap();
    t.advance(1_000);
    assert_eq!(recover(&t).await, Recovery { released: 2, poisoned: 0 });
    let taken_again = claim_one(&t, "w2").await.unwrap();
    assert_eq!(taken_again.id, ids[0]);

    let ok = AttemptReport::of(OutcomeKind::Ok);
    let finished = [
        Finished { job: &expired[0], report: ok.clone(), result: Some("0") },
        Finished { job: &expired[1], report: failure(OutcomeKind::Trap), result: None },
        Finished { job: &held[0], report: ok.clone(), result: Some("2") },
        Finished { job: &held[1], report: failure(OutcomeKind::Exit), result: None },
    ];
    let turn = t.store.turn(&finished, None, &NO_BACKOFF).await.unwrap();
    let now = t.now();
    assert_eq!(turn.settled, [Settled::Stale, Settled::Stale, Settled::Completed, Settled::Retrying { run_at: now }]);

    assert_eq!(t.store.job(&ids[0]).await.unwrap().unwrap().result, None, "the stale complete wrote no result");
    let lost = Some(OutcomeKind::WorkerLost);
    assert_eq!(history(&t, &ids[0]).await, [lost, None], "w2's attempt is still open");
    assert_eq!(history(&t, &ids[1]).await, [lost]);
    assert_eq!(history(&t, &ids[2]).await, [Some(OutcomeKind::Ok)]);
    assert_eq!(history(&t, &ids[3]).await, [Some(OutcomeKind::Exit)]);
    t.assert_counts_exact().await;
}

async fn output_with_nul_bytes_is_stored_visibly_and_settles_beside_the_others(t: TestStore) {
    active_worker(&t, "w1").await;
    let ids = t.store.enqueue_all(&[job("default", 2), job("default", 1), job("default", 0)]).await.unwrap();
    let held = t.claim("default", "w1", LEASE, 3).await.unwrap();
    let nul_failure = AttemptReport {
        message: Some("trap in \0guest"),
        stderr: Some("a\0b"),
        ..AttemptReport::of(OutcomeKind::Trap)
    };
    let ok = AttemptReport { stderr: Some("log\0line"), ..AttemptReport::of(OutcomeKind::Ok) };
    let finished = [
        Finished { job: &held[0], report: ok.clone(), result: Some("1") },
        Finished { job: &held[1], report: nul_failure, result: None },
        Finished { job: &held[2], report: ok, result: Some(r#""clean""#) },
    ];
    let turn = t.store.turn(&finished, None, &NO_BACKOFF).await.unwrap();
    assert_eq!(turn.settled, [Settled::Completed, Settled::Retrying { run_at: t.now() }, Settled::Completed]);

    let jobs = t.store.jobs(&[&ids[0], &ids[1], &ids[2]]).await.unwrap();
    let by_id = |id: &str| jobs.iter().find(|job| job.job.id == id).unwrap();
    let failed = &by_id(&ids[1]).attempt_history[0];
    assert_eq!(failed.stderr.as_deref(), Some("a\u{2400}b"));
    assert_eq!(failed.message.as_deref(), Some("trap in \u{2400}guest"));
    assert_eq!(by_id(&ids[1]).job.last_error.as_deref(), Some("trap: trap in \u{2400}guest"));
    assert_eq!(by_id(&ids[0]).attempt_history[0].stderr.as_deref(), Some("log\u{2400}line"));
    assert_eq!(by_id(&ids[0]).result, Some(serde_json::json!(1)));
    assert_eq!(by_id(&ids[2]).result, Some(serde_json::json!("clean")));
    t.assert_counts_exact().await;
}

async fn a_claim_of_several_takes_the_best_ready_jobs_in_order_under_one_token(t: TestStore) {
    active_worker(&t, "w1").await;
    // The first enqueue is ready a second later than the second one, so run_at and seq
    // disagree: run_at must decide before seq does.
    let late = t.store.enqueue_all(&[NewJob { ready: after(1_000), ..job("default", 0) }]).await.unwrap();
    let late_urgent = t.store.enqueue_all(&[NewJob { ready: after(1_000), ..job("default", 5) }]).await.unwrap();
    let early = t.store.enqueue_all(&[job("default", 0), job("default", 5), job("default", 0)]).await.unwrap();
    t.store.enqueue_all(&[NewJob { ready: after(60_000), ..job("default", 9) }, job("other", 9)]).await.unwrap();
    t.advance(1_000);

    let first = t.claim("default", "w1", LEASE, 3).await.unwrap();
    let ids = |jobs: &[ClaimedJob]| jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&first), [early[1].clone(), late_urgent[0].clone(), early[0].clone()]);
    assert!(first.iter().all(|j| j.token == first[0].token && j.attempt == 1), "{first:?}");
    for claimed in &first {
        let attempts = t.store.job(&claimed.id).await.unwrap().unwrap().attempt_history;
        assert_eq!((attempts.len(), attempts[0].worker_id.as_str(), attempts[0].outcome), (1, "w1", None));
    }

    let rest = t.claim("default", "w1", LEASE, 10).await.unwrap();
    assert_eq!(ids(&rest), [early[2].clone(), late[0].clone()], "the not-yet-ready job and the other pool stay");
    assert_ne!(rest[0].token, first[0].token, "each claim has its own token");
    assert!(t.claim("default", "w1", LEASE, 10).await.unwrap().is_empty());
    t.assert_counts_exact().await;
}

async fn a_workers_held_claims_are_the_ones_it_took_and_has_not_settled(t: TestStore) {
    active_worker(&t, "w1").await;
    active_worker(&t, "w2").await;
    t.store.enqueue_all(&[job("default", 0), job("default", 0), job("default", 0), job("default", 0)]).await.unwrap();
    let mut mine = t.claim("default", "w1", LEASE, 3).await.unwrap();
    let theirs = t.claim("default", "w2", LEASE, 1).await.unwrap();
    assert_eq!(theirs.len(), 1);
    let settled = mine.remove(1);
    assert_eq!(t.complete(&settled, "1", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap(), Settled::Completed);

    let held = t.store.claims_held_by("w1").await.unwrap();
    let key = |jobs: &[ClaimedJob]| jobs.iter().map(|j| (j.id.clone(), j.token, j.attempt)).collect::<Vec<_>>();
    assert_eq!(key(&held), key(&mine), "the two unsettled claims, with the tokens that settle them");
    assert!(held.iter().zip(&mine).all(|(held, claimed)| held.payload == claimed.payload && held.seq == claimed.seq));
    assert_eq!(key(&t.store.claims_held_by("w2").await.unwrap()), key(&theirs));
    assert!(t.store.claims_held_by("w3").await.unwrap().is_empty());
}

async fn purge_deletes_the_attempt_history_of_the_jobs_it_deletes(t: TestStore) {
    active_worker(&t, "w1").await;
    t.store
        .enqueue_all(&[job("default", 2), job("default", 1), NewJob { max_attempts: 1, ..job("default", 0) }])
        .await
        .unwrap();
    let ok = AttemptReport::of(OutcomeKind::Ok);
    let retried = claim_one(&t, "w1").await.unwrap();
    t.fail(&retried, &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap();
    let retried = claim_one(&t, "w1").await.unwrap();
    t.complete(&retried, "1", &ok).await.unwrap();
    let once = claim_one(&t, "w1").await.unwrap();
    t.complete(&once, "1", &ok).await.unwrap();
    let poisoned = claim_one(&t, "w1").await.unwrap();
    assert_eq!(t.fail(&poisoned, &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap(), Settled::Poisoned);
    let attempts = "SELECT count(*) FROM attempts GROUP BY job_seq ORDER BY job_seq";
    assert_eq!(t.counts(attempts).await, [2, 1, 1]);

    t.advance(1);
    assert_eq!(t.store.purge(Duration::ZERO, &[JobStatus::Completed]).await.unwrap(), 2);
    assert_eq!(t.counts(attempts).await, [1], "only the poisoned job's attempt is left");
    t.assert_counts_exact().await;
}

async fn retention_deletes_only_expired_finished_jobs_in_bounded_batches_and_counters_stay(t: TestStore) {
    active_worker(&t, "w1").await;
    let poisonable = NewJob { max_attempts: 1, ..job("default", 9) };
    let ids =
        t.store.enqueue_all(&[poisonable, job("default", 8), job("default", 7), job("default", 6)]).await.unwrap();
    let ok = AttemptReport::of(OutcomeKind::Ok);
    let poisoned = claim_one(&t, "w1").await.unwrap();
    assert_eq!(t.fail(&poisoned, &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap(), Settled::Poisoned);
    for _ in 0..2 {
        let done = claim_one(&t, "w1").await.unwrap();
        t.complete(&done, "1", &ok).await.unwrap();
    }
    assert_eq!(t.store.cancel_job(&ids[3]).await.unwrap(), IdAnswer::Done);
    // Ten seconds later: one job completes now, one is held by a worker, one waits.
    t.advance(10_000);
    let recent = t.store.enqueue_all(&[job("default", 5), job("default", 4), job("default", 3)]).await.unwrap();
    let done = claim_one(&t, "w1").await.unwrap();
    t.complete(&done, "1", &ok).await.unwrap();
    let held = claim_one(&t, "w1").await.unwrap();
    let before = t.store.activity().await.unwrap();

    let five_seconds = Duration::from_secs(5);
    // Poisoned is not named (kept forever); pending and claimed are named, and never touched.
    let ages = [
        (JobStatus::Completed, five_seconds),
        (JobStatus::Cancelled, five_seconds),
        (JobStatus::Pending, Duration::ZERO),
        (JobStatus::Claimed, Duration::ZERO),
    ];
    assert_eq!(t.store.delete_expired(&ages, 2).await.unwrap(), 2, "a batch deletes no more than its limit");
    assert_eq!(t.store.delete_expired(&ages, 2).await.unwrap(), 1);
    assert_eq!(t.store.delete_expired(&ages, 2).await.unwrap(), 0, "nothing is left to delete");

    let mut left: Vec<String> = t
        .store
        .job_statuses(&ids.iter().chain(&recent).map(String::as_str).collect::<Vec<_>>())
        .await
        .unwrap()
        .into_iter()
        .map(|(id, status)| format!("{}:{}", if ids.contains(&id) { "old" } else { "recent" }, status.as_str()))
        .collect();
    left.sort();
    assert_eq!(left, ["old:poisoned", "recent:claimed", "recent:completed", "recent:pending"]);
    assert_eq!(
        t.counts("SELECT count(*) FROM attempts WHERE job_seq NOT IN (SELECT seq FROM jobs)").await,
        [0],
        "the deleted jobs' attempts went with them"
    );
    assert_eq!(t.counts("SELECT count(*) FROM attempts").await, [3], "poisoned, recent completed, held");
    let after = t.store.activity().await.unwrap();
    assert_eq!((after.enqueued, after.attempts), (before.enqueued, before.attempts), "counters do not go back");
    let jobs = t.store.status(None).await.unwrap().jobs;
    assert_eq!((jobs.completed, jobs.cancelled, jobs.poisoned, jobs.pending, jobs.claimed), (1, 0, 1, 1, 1));
    t.assert_counts_exact().await;

    assert_eq!(t.store.delete_expired(&[(JobStatus::Poisoned, five_seconds)], 10).await.unwrap(), 1);
    assert_eq!(
        t.complete(&held, "1", &ok).await.unwrap(),
        Settled::Completed,
        "the held job settles as if nothing happened"
    );
}

const STALE: Duration = Duration::from_secs(60);
const GRACE: Duration = Duration::from_secs(30);

fn worker(id: &str) -> NewWorker {
    NewWorker { id: id.into(), pool: "default".into(), host: Some("here".into()), pid: Some(1), following: false }
}

async fn a_silent_worker_is_reaped_and_its_job_released(t: TestStore) {
    t.store.activate_worker(&worker("w1")).await.unwrap();
    t.store.enqueue_all(&[NewJob { payload: "{}".into(), ..job("default", 0) }]).await.unwrap();
    assert_eq!(t.claim("default", "w1", STALE * 10, 1).await.unwrap().len(), 1);

    t.advance(millis(STALE));
    assert!(
        t.store.reap(None, STALE, GRACE, &NO_BACKOFF).await.unwrap().workers.is_empty(),
        "exactly at the threshold it is alive"
    );
    t.advance(1);
    let reaped = t.store.reap(None, STALE, GRACE, &NO_BACKOFF).await.unwrap();
    assert_eq!(reaped.workers, ["w1"]);
    assert_eq!(reaped.recovery, Recovery { released: 1, poisoned: 0 });
    assert!(!t.store.heartbeat("w1", STALE).await.unwrap(), "a lost worker is told to stop");
    assert!(t.claim("default", "w1", STALE, 1).await.unwrap().is_empty(), "a lost worker cannot claim");
    assert!(t.store.activate_worker(&worker("w1")).await.is_err(), "a lost id cannot come back");
}

async fn heartbeats_keep_a_worker_and_its_leases_alive(t: TestStore) {
    t.store.activate_worker(&worker("w1")).await.unwrap();
    t.store.enqueue_all(&[NewJob { payload: "{}".into(), ..job("default", 0) }]).await.unwrap();
    t.claim("default", "w1", STALE, 1).await.unwrap();
    for _ in 0..10 {
        t.advance(millis(STALE) / 2);
        assert!(t.store.heartbeat("w1", STALE).await.unwrap());
        let reaped = t.store.reap(None, STALE, GRACE, &NO_BACKOFF).await.unwrap();
        assert_eq!(reaped, Reaped::default(), "nothing is reaped while heartbeats arrive");
    }
    assert_eq!(t.store.status(None).await.unwrap().jobs.claimed, 1);
}

async fn a_starting_worker_that_never_comes_up_is_lost_after_the_grace(t: TestStore) {
    t.store.enqueue_all(&[NewJob { payload: "{}".into(), ..job("default", 0) }]).await.unwrap();
    let planned = t.store.plan_workers(&plan("default", 1)).await.unwrap().new_workers;
    assert_eq!(t.store.status(None).await.unwrap().workers.starting, 1);
    t.advance(millis(GRACE) + 1);
    assert_eq!(t.store.reap(None, STALE, GRACE, &NO_BACKOFF).await.unwrap().workers, planned);
    let workers = t.store.status(None).await.unwrap().workers;
    assert_eq!((workers.starting, workers.lost), (0, 1));
}

async fn plan_workers_counts_starting_workers_and_never_overspawns(t: TestStore) {
    let new = NewJob { payload: "{}".into(), ..job("default", 0) };
    t.store
        .enqueue_all(&(0..5).map(|_| NewJob { id: NewJob::new_id(), ..new.clone() }).collect::<Vec<_>>())
        .await
        .unwrap();
    let first = t.store.plan_workers(&plan("default", 3)).await.unwrap();
    assert_eq!(
        (first.queue_depth, first.live_workers, first.workers_needed, first.new_workers.len()),
        (3, 0, 3, 3),
        "ready jobs are counted only as far as they could change the plan"
    );
    let second = t.store.plan_workers(&plan("default", 3)).await.unwrap();
    assert_eq!((second.live_workers, second.new_workers.len()), (3, 0), "starting workers count as live");
    assert_eq!(t.store.plan_workers(&plan("default", 4)).await.unwrap().new_workers.len(), 1);
    assert_eq!(t.store.plan_workers(&plan("empty", 4)).await.unwrap(), WorkerPlan::default());
}

async fn plan_workers_keeps_following_workers_and_spawns_draining_ones_for_the_rest(t: TestStore) {
    let keeping = |min_following, max_workers| PlanRequest { min_following, ..plan("default", max_workers) };
    let idle = t.store.plan_workers(&keeping(2, 3)).await.unwrap();
    assert_eq!((idle.new_following.len(), idle.new_workers.len()), (2, 0), "following workers wait for an empty pool");
    let again = t.store.plan_workers(&keeping(2, 3)).await.unwrap();
    assert_eq!((again.following_here, again.new_following.len()), (2, 0), "starting ones count as kept");

    let new = NewJob { payload: "{}".into(), ..job("default", 0) };
    t.store
        .enqueue_all(&(0..10).map(|_| NewJob { id: NewJob::new_id(), ..new.clone() }).collect::<Vec<_>>())
        .await
        .unwrap();
    let backlog = t.store.plan_workers(&keeping(2, 3)).await.unwrap();
    assert_eq!(
        (backlog.new_following.len(), backlog.new_workers.len()),
        (0, 1),
        "a backlog adds draining workers up to max_workers, the following ones counted"
    );
    assert_eq!(t.store.plan_workers(&keeping(2, 3)).await.unwrap().new_workers.len(), 0, "never over max_workers");

    // A following worker that came up by itself (not started by a checker) counts too.
    let mine = NewWorker { host: Some("there".into()), following: true, ..worker("follower") };
    t.store.activate_worker(&mine).await.unwrap();
    let there = PlanRequest { host: "there", ..keeping(1, 3) };
    assert_eq!(t.store.plan_workers(&there).await.unwrap().new_following.len(), 0);
}

async fn plan_workers_fills_each_hosts_own_slots_and_counts_the_others_workers(t: TestStore) {
    let jobs: Vec<NewJob> = (0..3).map(|_| job("default", 0)).collect();
    t.store.enqueue_all(&jobs).await.unwrap();
    let on = |host| PlanRequest { host, ..plan("default", 2) };
    let a = t.store.plan_workers(&on("a")).await.unwrap();
    assert_eq!((a.live_workers, a.workers_needed, a.new_workers.len()), (0, 2, 2), "{a:?}");
    let b = t.store.plan_workers(&on("b")).await.unwrap();
    assert_eq!(
        (b.live_workers, b.live_here, b.new_workers.len()),
        (2, 0, 1),
        "b covers only the job a does not: {b:?}"
    );
    assert_eq!(t.store.plan_workers(&on("b")).await.unwrap().new_workers.len(), 0);
    assert_eq!(t.store.plan_workers(&on("a")).await.unwrap().new_workers.len(), 0);

    let more: Vec<NewJob> = (0..10).map(|_| job("default", 0)).collect();
    t.store.enqueue_all(&more).await.unwrap();
    let b = t.store.plan_workers(&on("b")).await.unwrap();
    assert_eq!((b.live_here, b.workers_needed, b.new_workers.len()), (1, 2, 1), "b stops at its own slots: {b:?}");
}

async fn status_counts_jobs_and_workers_and_the_ready_backlog(t: TestStore) {
    let new = |delay_ms| NewJob { payload: "{}".into(), ready: after(delay_ms), ..job("default", 0) };
    t.store.enqueue_all(&[new(0), new(0), new(60_000)]).await.unwrap();
    t.advance(250);
    t.store.activate_worker(&worker("w1")).await.unwrap();
    t.claim("default", "w1", STALE, 1).await.unwrap();
    let status = t.store.status(None).await.unwrap();
    assert_eq!(status.jobs, JobCounts { pending: 2, claimed: 1, ..JobCounts::default() });
    assert_eq!((status.ready, status.oldest_ready_age_ms), (1, Some(250)));
    assert_eq!(status.workers.active, 1);
    assert_eq!(t.store.status(Some("other")).await.unwrap(), StatusSnapshot::default());

    // Each pool's backlog is its own: a delayed job elsewhere is not subtracted here.
    let elsewhere = |delay_ms| NewJob { pool: "other".into(), ..new(delay_ms) };
    t.store.enqueue_all(&[elsewhere(10), elsewhere(90_000), elsewhere(90_000)]).await.unwrap();
    t.advance(100);
    let other = t.store.status(Some("other")).await.unwrap();
    assert_eq!((other.jobs.pending, other.ready, other.oldest_ready_age_ms), (3, 1, Some(90)));
    let default = t.store.status(Some("default")).await.unwrap();
    assert_eq!((default.jobs.pending, default.ready, default.oldest_ready_age_ms), (2, 1, Some(350)));
    let all = t.store.status(None).await.unwrap();
    assert_eq!((all.jobs.pending, all.ready, all.oldest_ready_age_ms), (5, 2, Some(350)));
    t.assert_counts_exact().await;
}

async fn listing_filters_and_pages_through_every_job_once(t: TestStore) {
    let mut queued = Vec::new();
    for n in 0..7 {
        let processor = if n % 2 == 0 { "echo" } else { "other" };
        queued
            .extend(t.store.enqueue_all(&[NewJob { processor: processor.into(), ..job("default", 0) }]).await.unwrap());
        t.advance(1_000);
    }
    let since = t.now() - 3_000;
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let jobs = t.store.list_jobs(&JobFilter { matching: JobMatch::default(), after, limit: 3 }).await.unwrap();
        let Some(last) = jobs.last() else { break };
        after = Some(last.cursor());
        seen.extend(jobs.iter().map(|job| job.id.clone()));
    }
    queued.reverse();
    assert_eq!(seen, queued, "newest first, every job once across pages");
    assert_eq!(Cursor::from_token(&after.unwrap().token()), after, "a cursor survives its round trip as a token");

    let echo = t
        .store
        .list_jobs(&JobFilter {
            matching: JobMatch { processor: Some("echo"), ..JobMatch::default() },
            after: None,
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(echo.len(), 4);
    assert!(echo.iter().all(|job| job.processor == "echo"));
    let recent = JobMatch { created_after: Some(since), ..JobMatch::default() };
    assert_eq!(t.store.list_jobs(&JobFilter { matching: recent, after: None, limit: 10 }).await.unwrap().len(), 3);
    let older = JobMatch { created_before: Some(since), pool: Some("default"), ..JobMatch::default() };
    assert_eq!(t.store.list_jobs(&JobFilter { matching: older, after: None, limit: 10 }).await.unwrap().len(), 4);
    let none = JobMatch { status: Some(JobStatus::Completed), ..JobMatch::default() };
    assert!(t.store.list_jobs(&JobFilter { matching: none, after: None, limit: 10 }).await.unwrap().is_empty());
}

async fn bulk_retry_and_cancel_act_on_the_matching_jobs_in_the_right_status(t: TestStore) {
    active_worker(&t, "w1").await;
    let ids = t
        .store
        .enqueue_all(&[
            NewJob { max_attempts: 1, ..job("default", 9) },
            NewJob { max_attempts: 1, processor: "other".into(), ..job("default", 8) },
            job("default", 0),
            job("default", 0),
        ])
        .await
        .unwrap();
    for _ in 0..2 {
        let claimed = claim_one(&t, "w1").await.unwrap();
        assert_eq!(t.fail(&claimed, &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap(), Settled::Poisoned);
    }
    let echo = JobMatch { processor: Some("echo"), ..JobMatch::default() };
    assert_eq!(t.store.cancel_matching(&echo).await.unwrap(), 2, "only the pending jobs are cancelled");
    assert_eq!(t.store.cancel_matching(&echo).await.unwrap(), 0);
    assert_eq!(t.store.retry_matching(&echo).await.unwrap(), 3, "the poisoned and the cancelled echo jobs");
    let status = t.store.status(None).await.unwrap();
    assert_eq!((status.jobs.pending, status.jobs.poisoned, status.jobs.cancelled), (3, 1, 0));
    assert_eq!(t.store.job(&ids[1]).await.unwrap().unwrap().job.status, JobStatus::Poisoned);
    let poisoned = JobMatch { status: Some(JobStatus::Poisoned), ..JobMatch::default() };
    assert_eq!(t.store.retry_matching(&poisoned).await.unwrap(), 1);
    let pending = JobMatch { status: Some(JobStatus::Pending), ..JobMatch::default() };
    assert_eq!(t.store.retry_matching(&pending).await.unwrap(), 0, "a pending job is not retried");
    t.assert_counts_exact().await;
}

async fn job_statuses_and_jobs_answer_for_many_ids_at_once(t: TestStore) {
    let ids = t.store.enqueue_all(&[job("default", 0), job("default", 0)]).await.unwrap();
    t.store.cancel_job(&ids[1]).await.unwrap();
    let mut asked: Vec<&str> = ids.iter().map(String::as_str).collect();
    asked.push("no-such-id");
    let mut found = t.store.job_statuses(&asked).await.unwrap();
    found.sort_by_key(|(id, _)| ids.iter().position(|known| known == id));
    assert_eq!(found, vec![(ids[0].clone(), JobStatus::Pending), (ids[1].clone(), JobStatus::Cancelled)]);
    assert!(t.store.job_statuses(&[]).await.unwrap().is_empty());

    active_worker(&t, "w1").await;
    let claimed = claim_one(&t, "w1").await.unwrap();
    t.complete(&claimed, r#"{"ok":1}"#, &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();
    let mut details = t.store.jobs(&asked).await.unwrap();
    details.sort_by_key(|detail| ids.iter().position(|known| *known == detail.job.id));
    assert_eq!(details.len(), 2, "one read for many jobs, the unknown id left out");
    assert_eq!(details[0].result, Some(serde_json::json!({"ok": 1})));
    assert_eq!(details[0].attempt_history.len(), 1, "each job with its own history");
    assert!(details[1].attempt_history.is_empty());
}

/// Fails `attempts` attempts of the job alone in `pool`.
async fn fail_attempts(t: &TestStore, pool: &str, attempts: u32) {
    for _ in 0..attempts {
        let claimed = t.claim(pool, "w1", LEASE, 1).await.unwrap().pop().expect("the job is ready again");
        t.fail(&claimed, &failure(OutcomeKind::Exit), &NO_BACKOFF).await.unwrap();
    }
}

fn numbers(attempts: &[AttemptRecord]) -> Vec<u32> {
    attempts.iter().map(|attempt| attempt.attempt).collect()
}

async fn a_job_shows_its_latest_attempts_and_pages_through_the_older_ones(t: TestStore) {
    active_worker(&t, "w1").await;
    let ids = t
        .store
        .enqueue_all(&[
            NewJob { max_attempts: 100, ..job("many", 0) },
            NewJob { max_attempts: 100, ..job("exactly", 0) },
            NewJob { max_attempts: 100, ..job("none", 0) },
        ])
        .await
        .unwrap();
    fail_attempts(&t, "many", 45).await;
    fail_attempts(&t, "exactly", RECENT_ATTEMPTS).await;
    let asked: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut details = t.store.jobs(&asked).await.unwrap();
    details.sort_by_key(|detail| ids.iter().position(|known| *known == detail.job.id));
    let (many, exactly, none) = (&details[0], &details[1], &details[2]);
    assert_eq!(numbers(&many.attempt_history), (26..=45).collect::<Vec<_>>(), "the latest, oldest first");
    assert_eq!(many.job.attempts, 45, "the job still says how many there are");
    assert_eq!(numbers(&exactly.attempt_history), (1..=RECENT_ATTEMPTS).collect::<Vec<_>>());
    assert_eq!(exactly.older_attempts, None, "all of them fit");
    assert!(none.attempt_history.is_empty() && none.older_attempts.is_none());

    // The older ones, a page at a time from where the detail stopped, newest first.
    let mut before = many.older_attempts;
    assert!(before.is_some(), "older attempts are announced");
    let mut pages = Vec::new();
    while let Some(cursor) = before {
        let page = t.store.attempts(&ids[0], &AttemptPage { before: Some(cursor), limit: 10 }).await.unwrap().unwrap();
        before = (page.len() == 10).then(|| page.last().unwrap().cursor());
        pages.push(numbers(&page));
    }
    let expected: Vec<Vec<u32>> = vec![(16..=25).rev().collect(), (6..=15).rev().collect(), (1..=5).rev().collect()];
    assert_eq!(pages, expected);
    let first = t.store.attempts(&ids[0], &AttemptPage { before: None, limit: 3 }).await.unwrap().unwrap();
    assert_eq!(numbers(&first), [45, 44, 43], "without a cursor, the newest");
    assert_eq!(first[0].outcome, Some(OutcomeKind::Exit), "whole records");
    let empty = t.store.attempts(&ids[2], &AttemptPage { before: None, limit: 3 }).await.unwrap();
    assert_eq!(empty.map(|page| page.len()), Some(0), "a job with no attempts has an empty page");
    assert!(t.store.attempts("no-such-id", &AttemptPage { before: None, limit: 3 }).await.unwrap().is_none());
}

async fn pools_and_workers_are_listed_with_their_counts_and_jobs(t: TestStore) {
    t.store
        .enqueue_all(&[job("default", 0), job("default", 0), NewJob { ready: after(60_000), ..job("later", 0) }])
        .await
        .unwrap();
    t.store
        .activate_worker(&NewWorker {
            id: "w1".into(),
            pool: "default".into(),
            host: Some("box".into()),
            pid: Some(7),
            following: false,
        })
        .await
        .unwrap();
    let held = claim_one(&t, "w1").await.unwrap();
    active_worker(&t, "w2").await;
    t.store.deregister_worker("w2").await.unwrap();

    let pools = t.store.pools().await.unwrap();
    let names: Vec<&str> = pools.iter().map(|pool| pool.pool.as_str()).collect();
    assert_eq!(names, ["default", "later"]);
    assert_eq!((pools[0].jobs.pending, pools[0].jobs.claimed, pools[0].ready), (1, 1, 1));
    assert_eq!((pools[1].jobs.pending, pools[1].ready, pools[1].oldest_ready_age_ms), (1, 0, None));

    let workers = t.store.workers(&WorkerFilter { limit: 10, ..WorkerFilter::default() }).await.unwrap();
    assert_eq!(workers.len(), 2);
    assert_eq!((workers[0].id.as_str(), workers[0].status), ("w1", WorkerStatus::Active), "live workers come first");
    assert_eq!((workers[0].host.as_deref(), workers[0].pid), (Some("box"), Some(7)));
    assert_eq!(workers[0].current_jobs, [held.id]);
    assert_eq!((workers[1].status, workers[1].current_jobs.len()), (WorkerStatus::Terminated, 0));
    let ended = WorkerFilter { status: Some(WorkerStatus::Terminated), limit: 10, ..WorkerFilter::default() };
    assert_eq!(t.store.workers(&ended).await.unwrap().len(), 1);
}

async fn activity_counts_enqueues_and_attempts_and_survives_purge_and_folding(t: TestStore) {
    active_worker(&t, "w1").await;
    t.store
        .enqueue_all(&[job("default", 0), job("default", 0), NewJob { max_attempts: 1, ..job("default", 0) }])
        .await
        .unwrap();
    let fast = AttemptReport { fuel_used: Some(50_000), duration_ms: Some(3), ..AttemptReport::of(OutcomeKind::Ok) };
    for _ in 0..2 {
        let claimed = claim_one(&t, "w1").await.unwrap();
        t.complete(&claimed, "1", &fast).await.unwrap();
    }
    let slow = AttemptReport { duration_ms: Some(20_000), ..failure(OutcomeKind::Trap) };
    let claimed = claim_one(&t, "w1").await.unwrap();
    t.fail(&claimed, &slow, &NO_BACKOFF).await.unwrap();

    let key = || ("default".to_string(), "echo".to_string());
    let check = |activity: &Activity, chart_minutes: usize| {
        assert_eq!(activity.enqueued[&key()], 3);
        assert_eq!(activity.attempts[&("default".into(), "echo".into(), OutcomeKind::Ok)], 2);
        assert_eq!(activity.attempts[&("default".into(), "echo".into(), OutcomeKind::Trap)], 1);
        let durations = &activity.durations[&key()];
        assert_eq!((durations.count, durations.sum), (3, 20_006));
        assert_eq!(durations.buckets[0], 2, "3 ms is in the first bucket");
        assert_eq!(durations.buckets[11], 1, "20 s is in the bucket up to 30 s");
        let fuel = &activity.fuel[&key()];
        assert_eq!((fuel.count, fuel.buckets[1]), (2, 2), "fuel counts only the attempts that measured it");
        assert_eq!(activity.per_minute.len(), chart_minutes);
    };
    let activity = t.store.activity().await.unwrap();
    check(&activity, 1);
    assert_eq!(activity.per_minute.values().next(), Some(&(2, 1)));

    t.advance(2 * 3_600_000);
    recover(&t).await;
    assert_eq!(
        t.counts("SELECT count(*) FROM activity WHERE minute > 0").await,
        [0],
        "reaping folded the old minutes, with no one reading them"
    );
    assert_eq!(t.store.purge(Duration::from_secs(60), &JobStatus::ALL).await.unwrap(), 3);
    let later = t.store.activity().await.unwrap();
    check(&later, 0);
    assert_eq!(t.store.activity().await.unwrap(), later, "folding old minutes keeps every count");
}

/// States are stored by name; one this version does not know (a newer jobhost's, or written by
/// hand) fails the read and is named, rather than being counted as some other state. The
/// activity table is the one whose names no schema check holds to a list.
async fn a_stored_name_this_jobhost_does_not_know_is_an_error_naming_it(t: TestStore) {
    t.execute(
        "INSERT INTO activity (minute, pool, processor, event, duration_bucket, fuel_bucket, events, duration_ms, fuel)
         VALUES (1, 'default', 'echo', 'exploded', -1, -1, 1, 0, 0)",
    )
    .await;
    let err = t.store.activity().await.unwrap_err();
    assert!(err.to_string().contains(r#"unknown activity event "exploded""#), "{err}");
}

async fn ready_in_says_when_the_earliest_pending_job_of_a_pool_is_due(t: TestStore) {
    assert_eq!(t.store.ready_in("default").await.unwrap(), None, "no pending job");
    t.store.enqueue_all(&[NewJob { ready: after(5_000), ..job("default", 0) }, job("other", 0)]).await.unwrap();
    assert_eq!(
        t.store.ready_in("default").await.unwrap(),
        Some(Duration::from_secs(5)),
        "another pool's job is not ours"
    );
    t.advance(7_000);
    assert_eq!(t.store.ready_in("default").await.unwrap(), Some(Duration::ZERO), "overdue is ready now");
    active_worker(&t, "w1").await;
    assert!(claim_one(&t, "w1").await.is_some());
    assert_eq!(t.store.ready_in("default").await.unwrap(), None, "a claimed job is not waited for");
}

async fn a_waiter_is_woken_by_jobs_queued_and_jobs_retried(t: TestStore) {
    let wakeups = t.store.wakeups("default").await.unwrap();
    assert!(woken(&wakeups).await, "the first wake-up comes once the source watches");
    t.store.enqueue_all(&[job("default", 0)]).await.unwrap();
    assert!(woken(&wakeups).await, "a queued job wakes the waiter");
    active_worker(&t, "w1").await;
    let claimed = claim_one(&t, "w1").await.unwrap();
    let retry = RetryPolicy { initial: Duration::from_secs(30), max: Duration::from_secs(30), jitter: 0.0 };
    t.fail(&claimed, &failure(OutcomeKind::Trap), &retry).await.unwrap();
    assert!(woken(&wakeups).await, "a job going back to pending wakes the waiter, to wait for its retry");
    assert_eq!(t.store.ready_in("default").await.unwrap(), Some(Duration::from_secs(30)));
}

/// Whether `wakeups` wake within a bound far above any test's need.
async fn woken(wakeups: &Wakeups) -> bool {
    tokio::time::timeout(Duration::from_secs(10), wakeups.changed()).await.is_ok()
}

/// Eight processes, each with its own connection, race to start a schedule and then to
/// handle each of its ticks, as every scheduler does at a tick.
async fn each_tick_is_handled_by_exactly_one_of_many_racing_processes(t: TestStore) {
    const PROCESSES: usize = 8;
    const TICKS: i64 = 5;
    let mut stores = Vec::new();
    for _ in 0..PROCESSES {
        stores.push(Arc::new(t.another_store().await));
    }
    let race = |call: fn(Arc<Store>, i64) -> tokio::task::JoinHandle<bool>, tick: i64| {
        let handles: Vec<_> = stores.iter().map(|store| call(store.clone(), tick)).collect();
        async move {
            let mut won = 0;
            for handle in handles {
                won += usize::from(handle.await.unwrap());
            }
            won
        }
    };
    let start =
        |store: Arc<Store>, at: i64| tokio::spawn(async move { store.start_schedule("nightly", at).await.unwrap() });
    assert_eq!(race(start, 1_000).await, 1, "exactly one process records the schedule");
    let tick = |store: Arc<Store>, due_at: i64| {
        tokio::spawn(async move { store.advance_schedule("nightly", due_at, Some(job("default", 0))).await.unwrap() })
    };
    for n in 1..=TICKS {
        assert_eq!(race(tick, 1_000 + n * 1_000).await, 1, "tick {n} is handled by exactly one process");
    }
    let state = t.store.schedules(KEPT_SCHEDULE_RUNS).await.unwrap();
    assert_eq!(state.len(), 1);
    assert_eq!(state[0].ticked_through, 1_000 + TICKS * 1_000);
    let due: Vec<Millis> = state[0].runs.iter().map(|run| run.due_at).collect();
    assert_eq!(due, (1..=TICKS).rev().map(|n| 1_000 + n * 1_000).collect::<Vec<_>>(), "one run per tick");
    let ids: Vec<&str> = state[0].runs.iter().map(|run| run.job_id.as_str()).collect();
    assert_eq!(t.store.jobs(&ids).await.unwrap().len(), TICKS as usize, "each run's job exists");
    assert_eq!(t.store.status(None).await.unwrap().jobs.pending, TICKS as u64, "and no other job does");
    t.assert_counts_exact().await;
}

async fn a_passed_over_tick_queues_nothing_and_no_tick_is_handled_twice_or_out_of_order(t: TestStore) {
    assert!(!t.store.advance_schedule("hourly", 5_000, Some(job("default", 0))).await.unwrap(), "never started");
    assert!(t.store.start_schedule("hourly", 1_000).await.unwrap());
    assert!(!t.store.start_schedule("hourly", 9_000).await.unwrap(), "a second start changes nothing");
    assert!(t.store.advance_schedule("hourly", 2_000, None).await.unwrap(), "passing over a tick handles it");
    for (due_at, why) in [(2_000, "a handled tick"), (1_500, "a tick older than the last handled")] {
        assert!(!t.store.advance_schedule("hourly", due_at, Some(job("default", 0))).await.unwrap(), "{why}");
    }
    assert_eq!(t.store.status(None).await.unwrap().jobs.pending, 0, "no job was queued");
    let queued = job("reports", 0);
    assert!(t.store.advance_schedule("hourly", 3_000, Some(queued.clone())).await.unwrap());
    let state = &t.store.schedules(10).await.unwrap()[0];
    assert_eq!((state.name.as_str(), state.ticked_through), ("hourly", 3_000));
    assert_eq!(state.runs.len(), 1);
    let run = &state.runs[0];
    assert_eq!((run.due_at, run.job_id.as_str(), run.enqueued_at), (3_000, queued.id.as_str(), t.now()));
    let detail = t.store.job(&queued.id).await.unwrap().expect("the tick's job is queued");
    assert_eq!((detail.job.pool.as_str(), detail.job.status), ("reports", JobStatus::Pending));
    assert!(t.store.schedules(0).await.unwrap()[0].runs.is_empty(), "runs are read only when asked for");
}

async fn a_schedule_keeps_only_its_latest_runs(t: TestStore) {
    t.store.start_schedule("often", 0).await.unwrap();
    let ticks = i64::from(KEPT_SCHEDULE_RUNS) + 5;
    for due_at in 1..=ticks {
        assert!(t.store.advance_schedule("often", due_at, Some(job("default", 0))).await.unwrap());
    }
    let runs = &t.store.schedules(KEPT_SCHEDULE_RUNS + 50).await.unwrap()[0].runs;
    assert_eq!(runs.len(), KEPT_SCHEDULE_RUNS as usize);
    assert_eq!((runs[0].due_at, runs.last().unwrap().due_at), (ticks, 6));
    assert_eq!(t.counts("SELECT count(*) FROM schedule_runs").await, [i64::from(KEPT_SCHEDULE_RUNS)]);
    assert_eq!(t.store.status(None).await.unwrap().jobs.pending, ticks as u64, "pruning runs keeps their jobs");
}

/// A job of the default pool holding `key`, meeting a holder as `on_match` says.
fn keyed(key: &str, within: Duration, on_match: OnMatch) -> NewJob {
    NewJob { unique: Some(Unique { key: key.into(), within, on_match }), ..job("default", 0) }
}

fn skip(key: &str) -> NewJob {
    keyed(key, Duration::ZERO, OnMatch::Skip)
}

/// Queues `jobs` in one call and returns each answer (see [`EnqueueReport::answers`]).
async fn answers(store: &Store, jobs: &[NewJob]) -> Vec<(String, EnqueueOutcome)> {
    store.enqueue(jobs.iter().cloned().map(Ok)).await.unwrap().answers(jobs)
}

async fn a_unique_key_is_held_while_its_job_lives_and_a_match_names_the_holder(t: TestStore) {
    active_worker(&t, "w1").await;
    let first = answers(&t.store, &[skip("order-1")]).await;
    assert_eq!(first[0].1, EnqueueOutcome::Queued);
    let holder = first[0].0.clone();
    assert_eq!(answers(&t.store, &[skip("order-1")]).await, [(holder.clone(), EnqueueOutcome::Duplicate)]);

    let batch = [skip("order-2"), skip("order-2"), job("default", 0), skip("order-1")];
    let answered = answers(&t.store, &batch).await;
    assert_eq!(
        answered,
        [
            (batch[0].id.clone(), EnqueueOutcome::Queued),
            (batch[0].id.clone(), EnqueueOutcome::Duplicate),
            (batch[2].id.clone(), EnqueueOutcome::Queued),
            (holder.clone(), EnqueueOutcome::Duplicate),
        ],
        "each item of a batch is answered, a repeat within the batch matching the first"
    );
    let elsewhere = NewJob { pool: "other".into(), ..skip("order-1") };
    assert_eq!(answers(&t.store, &[elsewhere]).await[0].1, EnqueueOutcome::Queued, "keys are per pool");

    let claimed = claim_one(&t, "w1").await.unwrap();
    assert_eq!(claimed.id, holder, "the first job queued is claimed first");
    assert_eq!(answers(&t.store, &[skip("order-1")]).await[0], (holder.clone(), EnqueueOutcome::Duplicate));
    t.complete(&claimed, "{}", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();
    let after_completion = answers(&t.store, &[skip("order-1")]).await;
    assert_eq!(after_completion[0].1, EnqueueOutcome::Queued, "a finished job holds its key no more");
    assert_ne!(after_completion[0].0, holder);

    assert_eq!(t.store.cancel_job(&batch[0].id).await.unwrap(), IdAnswer::Done);
    assert_eq!(answers(&t.store, &[skip("order-2")]).await[0].1, EnqueueOutcome::Queued, "nor a cancelled one");
    assert_eq!(t.store.status(None).await.unwrap().jobs.pending, 4);
    t.assert_counts_exact().await;
}

async fn unique_within_keeps_a_finished_jobs_key_for_that_long(t: TestStore) {
    active_worker(&t, "w1").await;
    let hour = Duration::from_secs(3600);
    let within = |key: &str| keyed(key, hour, OnMatch::Skip);
    let completed = answers(&t.store, &[within("daily")]).await[0].0.clone();
    let poisoned = answers(&t.store, &[NewJob { max_attempts: 1, ..within("weekly") }]).await[0].0.clone();
    let claimed = t.claim("default", "w1", LEASE, 2).await.unwrap();
    t.complete(&claimed[0], "{}", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();
    assert_eq!(t.fail(&claimed[1], &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap(), Settled::Poisoned);

    t.advance(3_599_999);
    assert_eq!(answers(&t.store, &[within("daily")]).await, [(completed.clone(), EnqueueOutcome::Duplicate)]);
    assert_eq!(answers(&t.store, &[within("weekly")]).await, [(poisoned, EnqueueOutcome::Duplicate)]);
    assert_eq!(
        answers(&t.store, &[skip("daily")]).await[0].1,
        EnqueueOutcome::Queued,
        "the period is the new job's: without one, any finished holder lets go"
    );
    t.advance(1);
    assert_eq!(answers(&t.store, &[within("weekly")]).await[0].1, EnqueueOutcome::Queued, "an hour later it is free");
    assert_eq!(t.store.job(&completed).await.unwrap().unwrap().job.status, JobStatus::Completed, "and kept");
    t.assert_counts_exact().await;
}

async fn replace_debounces_a_burst_into_one_pending_job_with_the_last_payload(t: TestStore) {
    active_worker(&t, "w1").await;
    let debounced = |n: u32| NewJob {
        payload: format!(r#"{{"n":{n}}}"#),
        ready: after(5_000),
        ..keyed("user-7", Duration::ZERO, OnMatch::ReplaceAndReschedule)
    };
    let holder = answers(&t.store, &[debounced(0)]).await[0].0.clone();
    for n in 1..100 {
        t.advance(10);
        assert_eq!(answers(&t.store, &[debounced(n)]).await, [(holder.clone(), EnqueueOutcome::Replaced)]);
    }
    let burst = [debounced(100), debounced(101)];
    let replaced = (holder.clone(), EnqueueOutcome::Replaced);
    assert_eq!(answers(&t.store, &burst).await, [replaced.clone(), replaced]);
    let job = t.store.job(&holder).await.unwrap().unwrap();
    assert_eq!(job.payload, serde_json::json!({"n": 101}), "the last payload of the burst wins");
    assert_eq!(job.job.run_at, t.now() + 5_000, "each enqueue pushed the run out by its delay");
    assert_eq!(t.store.status(None).await.unwrap().jobs.pending, 1, "a burst of 102 is one job");

    let keep_time = NewJob { payload: "{}".into(), ..keyed("user-7", Duration::ZERO, OnMatch::Replace) };
    assert_eq!(answers(&t.store, &[keep_time]).await[0].1, EnqueueOutcome::Replaced);
    assert_eq!(t.store.job(&holder).await.unwrap().unwrap().job.run_at, t.now() + 5_000, "no delay: time kept");

    t.advance(5_000);
    let claimed = claim_one(&t, "w1").await.unwrap();
    assert_eq!(claimed.payload, "{}");
    assert_eq!(
        answers(&t.store, &[debounced(200)]).await,
        [(holder.clone(), EnqueueOutcome::Duplicate)],
        "a running holder is left alone"
    );
    assert_eq!(claimed.payload, t.store.job(&holder).await.unwrap().unwrap().payload.to_string());
    t.assert_counts_exact().await;
}

/// Eight processes, each with its own connection, enqueue jobs with the same keys at once:
/// each key is queued once, and every other enqueue names that job.
async fn racing_enqueuers_queue_each_unique_key_once(t: TestStore) {
    const PROCESSES: usize = 8;
    let mut handles = Vec::new();
    for process in 0..PROCESSES {
        let store = t.another_store().await;
        handles.push(tokio::spawn(async move {
            // Each process takes the keys in another order, so their inserts interleave.
            let mut keys: Vec<String> = (0..20).map(|key| format!("key-{key}")).collect();
            keys.rotate_left(process * 3 % 20);
            let jobs: Vec<NewJob> = keys.iter().map(|key| skip(key)).collect();
            let answered = answers(&store, &jobs).await;
            keys.into_iter().zip(answered).collect::<Vec<_>>()
        }));
    }
    let mut holders: std::collections::HashMap<String, Vec<(String, EnqueueOutcome)>> = Default::default();
    for handle in handles {
        for (key, answer) in handle.await.unwrap() {
            holders.entry(key).or_default().push(answer);
        }
    }
    for (key, answered) in &holders {
        let queued: Vec<_> = answered.iter().filter(|(_, outcome)| *outcome == EnqueueOutcome::Queued).collect();
        assert_eq!(queued.len(), 1, "{key}: {answered:?}");
        assert!(
            answered.iter().all(|(id, _)| *id == queued[0].0),
            "{key}: every match names the one job: {answered:?}"
        );
    }
    assert_eq!(t.store.status(None).await.unwrap().jobs.pending, 20);
    t.assert_counts_exact().await;
}

async fn a_paused_pool_is_not_claimed_but_its_running_jobs_settle_and_are_reaped(t: TestStore) {
    active_worker(&t, "w1").await;
    t.store.enqueue_all(&[job("default", 0), job("default", 0), job("default", 0), job("other", 0)]).await.unwrap();
    let running = claim_one(&t, "w1").await.unwrap();
    let abandoned = claim_one(&t, "w1").await.unwrap();
    t.store.pause_pool("default", Some("incident 42")).await.unwrap();

    assert!(claim_one(&t, "w1").await.is_none(), "a paused pool's ready job is not claimed");
    let other = another_claim(&t, "other").await;
    assert_eq!(other.len(), 1, "other pools are claimed as ever");
    let finished = Finished { job: &running, report: AttemptReport::of(OutcomeKind::Ok), result: Some("1") };
    let claim = ClaimRequest { pool: "default", worker_id: "w1", lease: LEASE, limit: 5, flow: &[] };
    let turn = t.store.turn(&[finished], Some(claim), &NO_BACKOFF).await.unwrap();
    assert_eq!(turn.settled, [Settled::Completed], "a job running when the pool was paused finishes");
    assert!(turn.claimed.is_empty(), "the turn that settles it claims nothing of the paused pool");

    t.advance(LEASE.as_millis() as i64 + 1);
    let never = Duration::from_secs(1 << 30);
    let reaped = t.store.reap(Some("default"), never, never, &NO_BACKOFF).await.unwrap();
    assert_eq!(reaped.recovery.released, 1, "the reaper still recovers a paused pool's abandoned job");
    let recovered = t.store.job(&abandoned.id).await.unwrap().unwrap().job;
    assert_eq!(recovered.status, JobStatus::Pending, "it waits, pending, for the pool to resume");
    assert!(claim_one(&t, "w1").await.is_none());

    assert!(t.store.resume_pool("default").await.unwrap());
    let mut claimed = Vec::new();
    while let Some(job) = claim_one(&t, "w1").await {
        claimed.push(job.id);
    }
    assert_eq!(claimed.len(), 2, "once resumed, its pending jobs are claimed: {claimed:?}");
    assert!(claimed.contains(&abandoned.id));
    t.assert_counts_exact().await;
}

/// Claims `pool`'s ready jobs as a second worker, `w2`.
async fn another_claim(t: &TestStore, pool: &str) -> Vec<ClaimedJob> {
    t.store
        .activate_worker(&NewWorker { id: "w2".into(), pool: pool.into(), host: None, pid: None, following: false })
        .await
        .unwrap();
    t.claim(pool, "w2", LEASE, 10).await.unwrap()
}

async fn pausing_is_idempotent_needs_no_jobs_and_is_listed_with_when_and_why(t: TestStore) {
    t.store.enqueue_all(&[job("default", 0)]).await.unwrap();
    let paused_at = t.now();
    let first = t.store.pause_pool("empty", None).await.unwrap();
    assert_eq!(
        first,
        PausedPool { pool: "empty".into(), paused_at, reason: None },
        "a pool with no jobs can be paused"
    );
    t.advance(1_000);
    let again = t.store.pause_pool("empty", Some("deploy")).await.unwrap();
    assert_eq!(
        (again.paused_at, again.reason.as_deref()),
        (paused_at, Some("deploy")),
        "kept its time, took the reason"
    );
    let once_more = t.store.pause_pool("empty", None).await.unwrap();
    assert_eq!(once_more.reason.as_deref(), Some("deploy"), "no reason given keeps the one there");

    let pools = t.store.pools().await.unwrap();
    let listed: Vec<(&str, bool, Option<Millis>, Option<&str>)> = pools
        .iter()
        .map(|pool| (pool.pool.as_str(), pool.paused, pool.paused_at, pool.paused_reason.as_deref()))
        .collect();
    assert_eq!(listed, [("default", false, None, None), ("empty", true, Some(paused_at), Some("deploy"))]);
    assert_eq!(pools[1].jobs, JobCounts::default());
    assert_eq!(t.store.pool("empty").await.unwrap(), pools[1], "one pool reads as the listing shows it");

    let status = t.store.status(None).await.unwrap();
    assert_eq!(status.paused_pools, std::slice::from_ref(&again), "status names the paused pools");
    assert!(t.store.status(Some("default")).await.unwrap().paused_pools.is_empty(), "only those asked about");
    assert_eq!(t.store.status(Some("empty")).await.unwrap().paused_pools, [again]);

    assert!(t.store.resume_pool("empty").await.unwrap());
    assert!(!t.store.resume_pool("empty").await.unwrap(), "resuming a pool that is not paused changes nothing");
    let names: Vec<String> = t.store.pools().await.unwrap().into_iter().map(|pool| pool.pool).collect();
    assert_eq!(names, ["default"], "a resumed pool without jobs is no longer listed");
    assert!(t.store.paused_pools().await.unwrap().is_empty());
}

async fn a_paused_pool_gets_no_workers_planned_and_no_ready_job_to_wait_for(t: TestStore) {
    t.store.enqueue_all(&[job("default", 0), job("default", 0)]).await.unwrap();
    t.store.pause_pool("default", None).await.unwrap();
    let keeping_one = PlanRequest { min_following: 1, ..plan("default", 4) };
    let paused = t.store.plan_workers(&keeping_one).await.unwrap();
    assert!(paused.paused);
    assert_eq!((paused.queue_depth, paused.workers_needed), (2, 0), "{paused:?}");
    assert!(paused.new_workers.is_empty() && paused.new_following.is_empty(), "no worker, following or not");
    assert_eq!(t.store.ready_in("default").await.unwrap(), None, "nothing to wait for until it resumes");

    t.store.resume_pool("default").await.unwrap();
    assert_eq!(t.store.ready_in("default").await.unwrap(), Some(Duration::ZERO));
    let resumed = t.store.plan_workers(&keeping_one).await.unwrap();
    assert!(!resumed.paused);
    assert_eq!((resumed.new_following.len(), resumed.new_workers.len()), (1, 1), "{resumed:?}");
}

async fn resuming_a_pool_wakes_its_waiting_workers(t: TestStore) {
    t.store.pause_pool("default", None).await.unwrap();
    t.store.enqueue_all(&[job("default", 0)]).await.unwrap();
    let wakeups = t.store.wakeups("default").await.unwrap();
    assert!(woken(&wakeups).await, "the first wake-up comes once the source watches");
    assert_eq!(t.store.ready_in("default").await.unwrap(), None);
    assert!(t.another_store().await.resume_pool("default").await.unwrap());
    assert!(woken(&wakeups).await, "resuming wakes the waiter");
    assert_eq!(t.store.ready_in("default").await.unwrap(), Some(Duration::ZERO));
}

// ------------------------------------------------------------------------------------------
// Flow limits
// ------------------------------------------------------------------------------------------

fn flow_limit(max_running: Option<u32>, rate: Option<&str>, key: Option<&str>) -> jobhost_core::flow::FlowLimit {
    let config = jobhost_core::flow::FlowConfig {
        max_running,
        rate: rate.map(|rate| rate.parse().unwrap()),
        key: key.map(str::to_owned),
    };
    jobhost_core::flow::FlowLimit::new("resize", &config, "flow").unwrap()
}

/// A job of `processor` for `tenant`, with `priority`.
fn tenant_job(processor: &str, tenant: &str, priority: i64) -> NewJob {
    NewJob { processor: processor.into(), payload: format!(r#"{{"tenant":"{tenant}"}}"#), ..job("default", priority) }
}

/// One turn claiming up to `limit` under `flow`: the ids claimed, in order, and whether
/// the claim held a ready job back.
async fn flow_claim(
    store: &Store,
    worker_id: &str,
    limit: u32,
    flow: &[jobhost_core::flow::FlowLimit],
) -> (Vec<ClaimedJob>, bool) {
    let request = ClaimRequest { pool: "default", worker_id, lease: LEASE, limit, flow };
    let turn = store.turn(&[], Some(request), &NO_BACKOFF).await.unwrap();
    (turn.claimed, turn.held_back)
}

fn ids(jobs: &[ClaimedJob]) -> Vec<&String> {
    jobs.iter().map(|job| &job.id).collect()
}

async fn max_running_holds_back_each_keys_excess_without_blocking_the_others(t: TestStore) {
    active_worker(&t, "w1").await;
    let flow = [flow_limit(Some(2), None, Some("/tenant"))];
    // Tenant a floods first and with the highest priority; b and an unlimited job come after.
    let queued = t
        .store
        .enqueue_all(&[
            tenant_job("resize", "a", 9),
            tenant_job("resize", "a", 9),
            tenant_job("resize", "a", 9),
            tenant_job("resize", "a", 9),
            tenant_job("resize", "b", 0),
            NewJob { processor: "echo".into(), ..job("default", 0) },
            tenant_job("resize", "b", 0),
            tenant_job("resize", "b", 0),
        ])
        .await
        .unwrap();
    let (claimed, held_back) = flow_claim(&t.store, "w1", 10, &flow).await;
    assert_eq!(ids(&claimed), [&queued[0], &queued[1], &queued[4], &queued[5], &queued[6]], "two of each tenant");
    assert!(held_back, "a's third and fourth and b's third wait for room");
    let (none, held_back) = flow_claim(&t.store, "w1", 10, &flow).await;
    assert!(none.is_empty() && held_back, "every key is full: nothing claimed, all held back");
    assert_eq!(t.store.status(None).await.unwrap().ready, 3, "held-back jobs stay ready");

    t.complete(&claimed[0], "{}", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();
    let (next, held_back) = flow_claim(&t.store, "w1", 10, &flow).await;
    assert_eq!(ids(&next), [&queued[2]], "a finished one, so its next job starts, in order");
    assert!(held_back);
    let (unlimited, _) = flow_claim(&t.store, "w1", 10, &[]).await;
    assert_eq!(ids(&unlimited), [&queued[3], &queued[7]], "a claim without limits takes what is ready");
    t.assert_counts_exact().await;
}

async fn a_rate_counts_starts_over_a_sliding_period(t: TestStore) {
    active_worker(&t, "w1").await;
    let flow = [flow_limit(None, Some("2/1m"), None)];
    let jobs: Vec<NewJob> = (0..5).map(|_| tenant_job("resize", "any", 0)).collect();
    let queued = t.store.enqueue_all(&jobs).await.unwrap();
    let (first, held_back) = flow_claim(&t.store, "w1", 10, &flow).await;
    assert_eq!(ids(&first), [&queued[0], &queued[1]]);
    assert!(held_back);
    for job in &first {
        t.complete(job, "{}", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();
    }
    let (none, held_back) = flow_claim(&t.store, "w1", 10, &flow).await;
    assert!(none.is_empty() && held_back, "finishing does not free a rate: starts do, after the period");
    t.advance(30_000);
    let (_, _) = flow_claim(&t.store, "w1", 10, &flow).await;
    t.advance(30_001);
    let (second, _) = flow_claim(&t.store, "w1", 10, &flow).await;
    assert_eq!(ids(&second), [&queued[2], &queued[3]], "a period after the first starts, two more start");
    t.advance(59_999);
    assert!(flow_claim(&t.store, "w1", 10, &flow).await.0.is_empty(), "the period has not passed yet");
    t.advance(1);
    let (third, held_back) = flow_claim(&t.store, "w1", 10, &flow).await;
    assert_eq!(ids(&third), [&queued[4]]);
    assert!(!held_back, "nothing is left behind the limit");
}

async fn racing_claimers_never_run_more_than_max_running(t: TestStore) {
    const CLAIMERS: usize = 8;
    let flow = Arc::new([flow_limit(Some(3), None, None)]);
    let jobs: Vec<NewJob> = (0..40).map(|_| tenant_job("resize", "any", 0)).collect();
    t.store.enqueue_all(&jobs).await.unwrap();
    let mut handles = Vec::new();
    for claimer in 0..CLAIMERS {
        let worker = format!("w{claimer}");
        active_worker(&t, &worker).await;
        let store = t.another_store().await;
        let flow = flow.clone();
        handles.push(tokio::spawn(async move { flow_claim(&store, &worker, 5, &flow[..]).await.0.len() }));
    }
    let mut claimed = 0;
    for handle in handles {
        claimed += handle.await.unwrap();
    }
    assert_eq!(claimed, 3, "eight claimers at once took exactly max_running jobs");
    assert_eq!(t.store.status(None).await.unwrap().jobs.claimed, 3);
}

async fn a_paused_pool_with_limits_holds_nothing_back(t: TestStore) {
    active_worker(&t, "w1").await;
    let flow = [flow_limit(Some(1), None, None)];
    t.store.enqueue_all(&[tenant_job("resize", "a", 0), tenant_job("resize", "a", 0)]).await.unwrap();
    let (claimed, held_back) = flow_claim(&t.store, "w1", 5, &flow).await;
    assert_eq!((claimed.len(), held_back), (1, true));
    t.store.pause_pool("default", None).await.unwrap();
    let (claimed, held_back) = flow_claim(&t.store, "w1", 5, &flow).await;
    assert!(claimed.is_empty());
    assert!(!held_back, "the pause, not the limit, keeps the job: a draining worker may leave");
}

async fn flow_usage_shows_per_limit_and_key_what_runs_and_what_is_held_back(t: TestStore) {
    active_worker(&t, "w1").await;
    let mail = jobhost_core::flow::FlowLimit { processor: "mail".into(), ..flow_limit(None, Some("1/1m"), None) };
    let flow = [flow_limit(Some(2), None, Some("/tenant")), mail];
    let mut jobs: Vec<NewJob> = (0..4).map(|_| tenant_job("resize", "a", 0)).collect();
    jobs.push(tenant_job("resize", "b", 0));
    jobs.extend((0..3).map(|_| tenant_job("mail", "a", 0)));
    jobs.push(NewJob { ready: after(60_000), ..tenant_job("resize", "b", 0) });
    t.store.enqueue_all(&jobs).await.unwrap();
    assert_eq!(flow_claim(&t.store, "w1", 20, &flow).await.0.len(), 4, "a twice, b once, one mail");

    let usage = t.store.flow_usage(&flow).await.unwrap();
    let row = |processor: &str, key: &str, running, started_in_period, held_back| FlowUsage {
        processor: processor.into(),
        key: key.into(),
        key_pointer: (processor == "resize").then(|| "/tenant".into()),
        max_running: (processor == "resize").then_some(2),
        rate: (processor == "mail").then(|| "1/1m".into()),
        running,
        started_in_period,
        held_back,
    };
    assert_eq!(usage, [row("mail", "", 1, 1, 2), row("resize", "a", 2, 0, 2), row("resize", "b", 1, 0, 0)]);
    assert!(t.store.flow_usage(&[]).await.unwrap().is_empty());
}

fn child_of(parents: &[&String]) -> NewJob {
    NewJob { after: parents.iter().map(|id| id.to_string()).collect(), ..job("default", 0) }
}

async fn detail(t: &TestStore, id: &str) -> JobDetail {
    t.store.job(id).await.unwrap().unwrap()
}

fn linked(links: &[JobLink]) -> Vec<(&str, JobStatus)> {
    links.iter().map(|link| (link.id.as_str(), link.status)).collect()
}

async fn a_job_waits_for_every_parent_and_is_ready_when_the_last_completes(t: TestStore) {
    active_worker(&t, "w1").await;
    let parents = t.store.enqueue_all(&[job("default", 0), job("default", 0)]).await.unwrap();
    let child = t.store.enqueue_all(&[child_of(&[&parents[0], &parents[1]])]).await.unwrap().remove(0);
    let waiting = detail(&t, &child).await;
    assert_eq!(
        (waiting.job.status, waiting.job.waiting_for),
        (JobStatus::Pending, 2),
        "a parent named twice counts once"
    );
    assert_eq!(waiting.job.run_at, WAITING_RUN_AT);
    assert_eq!(
        linked(&waiting.parents),
        [(parents[0].as_str(), JobStatus::Pending), (parents[1].as_str(), JobStatus::Pending)]
    );
    let parent = detail(&t, &parents[0]).await;
    assert_eq!((linked(&parent.children), parent.children_total), (vec![(child.as_str(), JobStatus::Pending)], 1));
    assert_eq!(t.store.ready_in("default").await.unwrap(), Some(Duration::ZERO), "the parents are ready");

    let first = claim_one(&t, "w1").await.unwrap();
    let second = claim_one(&t, "w1").await.unwrap();
    assert_eq!([&first.id, &second.id], [&parents[0], &parents[1]]);
    assert!(claim_one(&t, "w1").await.is_none(), "the child waits while its parents run");
    let ok = AttemptReport::of(OutcomeKind::Ok);
    t.advance(1_000);
    t.complete(&first, r#"{"width":10}"#, &ok).await.unwrap();
    assert_eq!(detail(&t, &child).await.job.waiting_for, 1);
    assert!(claim_one(&t, "w1").await.is_none(), "one parent is not all of them");
    t.advance(1_000);
    t.complete(&second, "[2]", &ok).await.unwrap();
    let ready = detail(&t, &child).await;
    assert_eq!((ready.job.waiting_for, ready.job.run_at), (0, t.now()), "ready as the last parent completes");
    let claimed = claim_one(&t, "w1").await.unwrap();
    assert_eq!(claimed.id, child);

    let mut results: Vec<(String, Option<String>)> = t
        .store
        .parent_results(&[claimed.seq])
        .await
        .unwrap()
        .into_iter()
        .map(|found| {
            assert_eq!(found.child_seq, claimed.seq);
            (found.parent_id, found.result)
        })
        .collect();
    results.sort();
    let mut expected =
        vec![(parents[0].clone(), Some(r#"{"width":10}"#.to_owned())), (parents[1].clone(), Some("[2]".to_owned()))];
    expected.sort();
    assert_eq!(results, expected);

    let late = t.store.enqueue_all(&[child_of(&[&parents[0]])]).await.unwrap().remove(0);
    let late = detail(&t, &late).await;
    assert_eq!((late.job.waiting_for, late.job.run_at), (0, t.now()), "a completed parent is no wait");

    t.advance(10_000);
    t.complete(&claimed, "{}", &ok).await.unwrap();
    assert_eq!(
        t.store.purge(Duration::from_secs(5), &[JobStatus::Completed]).await.unwrap(),
        2,
        "the parents, finished long enough ago"
    );
    assert!(detail(&t, &late.job.id).await.parents.is_empty(), "a deleted parent is no longer linked");
    assert_eq!(t.counts("SELECT count(*) FROM job_parents").await, [0]);
    t.assert_counts_exact().await;
}

async fn a_poisoned_or_cancelled_parent_cancels_its_dependents_transitively_naming_why(t: TestStore) {
    active_worker(&t, "w1").await;
    let root = t.store.enqueue_all(&[NewJob { max_attempts: 1, ..job("default", 9) }]).await.unwrap().remove(0);
    let other = t.store.enqueue_all(&[job("default", 0)]).await.unwrap().remove(0);
    let child = t.store.enqueue_all(&[child_of(&[&root])]).await.unwrap().remove(0);
    let grandchild = t.store.enqueue_all(&[child_of(&[&child, &other])]).await.unwrap().remove(0);
    let bystander = t.store.enqueue_all(&[child_of(&[&other])]).await.unwrap().remove(0);

    let claimed = claim_one(&t, "w1").await.unwrap();
    assert_eq!(claimed.id, root);
    t.advance(1_000);
    assert_eq!(t.fail(&claimed, &failure(OutcomeKind::Trap), &NO_BACKOFF).await.unwrap(), Settled::Poisoned);
    let cancelled = detail(&t, &child).await.job;
    assert_eq!((cancelled.status, cancelled.finished_at), (JobStatus::Cancelled, Some(t.now())));
    assert_eq!(
        cancelled.last_error.as_deref(),
        Some(format!("job {root}, which it waits for, was poisoned: trap: boom").as_str())
    );
    let transitively = detail(&t, &grandchild).await.job;
    assert_eq!(transitively.status, JobStatus::Cancelled);
    let why = transitively.last_error.unwrap();
    assert!(why.starts_with(&format!("job {child}, which it waits for, was cancelled: job {root}")), "{why}");
    assert_eq!(detail(&t, &other).await.job.status, JobStatus::Pending, "a parent is not cancelled by its child");
    assert_eq!(detail(&t, &bystander).await.job.status, JobStatus::Pending);

    assert_eq!(t.store.cancel_job(&other).await.unwrap(), IdAnswer::Done);
    let bystander = detail(&t, &bystander).await.job;
    assert_eq!(bystander.status, JobStatus::Cancelled);
    assert_eq!(bystander.last_error, Some(format!("job {other}, which it waits for, was cancelled")));
    t.assert_counts_exact().await;
}

async fn a_missing_poisoned_or_cancelled_parent_refuses_the_batch_and_queues_nothing(t: TestStore) {
    let cancelled = t.store.enqueue_all(&[job("default", 0)]).await.unwrap().remove(0);
    t.store.cancel_job(&cancelled).await.unwrap();
    let missing = "01900000-0000-7000-8000-000000000000".to_owned();
    for (parent, expected) in [(&missing, "does not exist"), (&cancelled, "is cancelled and will never complete")] {
        let err = t.store.enqueue_all(&[job("default", 0), child_of(&[parent])]).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Refused, "{err}");
        assert!(err.to_string().contains(&format!("job {parent}, which a new job waits for, {expected}")), "{err}");
    }
    let status = t.store.status(None).await.unwrap().jobs;
    assert_eq!((status.pending, status.cancelled), (0, 1), "the batch was queued all or nothing");
    assert_eq!(t.counts("SELECT count(*) FROM job_parents").await, [0]);
    assert!(detail(&t, &cancelled).await.children.is_empty());
    t.assert_counts_exact().await;
}

async fn a_retried_dependent_waits_again_until_its_retried_parent_completes(t: TestStore) {
    active_worker(&t, "w1").await;
    let parent = t.store.enqueue_all(&[NewJob { max_attempts: 1, ..job("default", 0) }]).await.unwrap().remove(0);
    let child = t.store.enqueue_all(&[child_of(&[&parent])]).await.unwrap().remove(0);
    let claimed = claim_one(&t, "w1").await.unwrap();
    t.fail(&claimed, &failure(OutcomeKind::Exit), &NO_BACKOFF).await.unwrap();
    assert_eq!(detail(&t, &child).await.job.status, JobStatus::Cancelled);

    assert_eq!(t.store.retry_job(&child).await.unwrap(), IdAnswer::Done);
    let retried = detail(&t, &child).await.job;
    assert_eq!((retried.status, retried.waiting_for, retried.run_at), (JobStatus::Pending, 1, WAITING_RUN_AT));
    assert!(claim_one(&t, "w1").await.is_none(), "it waits for its parent again");

    assert_eq!(t.store.retry_job(&parent).await.unwrap(), IdAnswer::Done);
    let again = claim_one(&t, "w1").await.unwrap();
    assert_eq!(again.id, parent);
    t.complete(&again, "{}", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();
    assert_eq!(claim_one(&t, "w1").await.unwrap().id, child);
    t.assert_counts_exact().await;
}

/// A parent completing while other processes queue its children: whichever commits first,
/// no child is left counting a parent that completed.
async fn racing_enqueuers_of_children_and_the_parents_completion_leave_none_waiting(t: TestStore) {
    const PROCESSES: usize = 6;
    const CHILDREN: usize = 20;
    active_worker(&t, "w1").await;
    let parent = t.store.enqueue_all(&[job("default", 9)]).await.unwrap().remove(0);
    let claimed = claim_one(&t, "w1").await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..PROCESSES {
        let store = t.another_store().await;
        let parent = parent.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..CHILDREN {
                store.enqueue_all(&[child_of(&[&parent])]).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    tokio::task::yield_now().await;
    t.complete(&claimed, "{}", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();
    for handle in handles {
        handle.await.unwrap();
    }
    let pending = t.store.list_jobs(&JobFilter { limit: 1_000, ..JobFilter::default() }).await.unwrap();
    let waiting: Vec<_> = pending.iter().filter(|job| job.waiting_for > 0 || job.run_at == WAITING_RUN_AT).collect();
    assert!(waiting.is_empty(), "children left waiting for a completed parent: {waiting:?}");
    assert_eq!(t.claim("default", "w1", LEASE, 1_000).await.unwrap().len(), PROCESSES * CHILDREN);
    t.assert_counts_exact().await;
}

async fn copied_jobs_keep_their_parents(t: TestStore) {
    active_worker(&t, "w1").await;
    let parents = t.store.enqueue_all(&[job("default", 0), job("default", 0)]).await.unwrap();
    let child = t.store.enqueue_all(&[child_of(&[&parents[0], &parents[1]])]).await.unwrap().remove(0);
    let first = claim_one(&t, "w1").await.unwrap();
    t.complete(&first, "{}", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();

    let copy = if t.config.is_server() { TestStore::postgres().await } else { TestStore::sqlite().await };
    assert_eq!(t.store.copy_to(&copy.store, false).await.unwrap(), 3);
    let copied = detail(&copy, &child).await;
    assert_eq!(copied.job.waiting_for, 1);
    assert_eq!(
        linked(&copied.parents),
        [(parents[0].as_str(), JobStatus::Completed), (parents[1].as_str(), JobStatus::Pending)]
    );
    copy.store
        .activate_worker(&NewWorker {
            id: "w1".into(),
            pool: "default".into(),
            host: None,
            pid: None,
            following: false,
        })
        .await
        .unwrap();
    let last = claim_one(&copy, "w1").await.unwrap();
    assert_eq!(last.id, parents[1]);
    copy.complete(&last, "{}", &AttemptReport::of(OutcomeKind::Ok)).await.unwrap();
    assert_eq!(claim_one(&copy, "w1").await.unwrap().id, child, "the copy's parent releases the copied child");
}
