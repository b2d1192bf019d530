//! Retention: the loop that deletes finished jobs once `retention` no longer keeps them, run
//! beside their own work by the long-running processes (see [`crate::upkeep`]).
//!
//! It owns when to delete and how much at a time; what "expired" means for a job and how a
//! batch is deleted without holding up claims belong to the store
//! ([`Store::delete_expired`]). A round deletes batch after batch until none is left, then
//! the loop sleeps for `retention.interval`, shortened by a random fifth so processes
//! started together do not delete in step. A failed round is logged and tried again at the
//! next one: a database away for a while must not end the process whose real work this is
//! not.

use std::time::{Duration, Instant};

use jobhost_core::config::{Keep, RetentionConfig};
use jobhost_store::{JobStatus, RetryPolicy, Store, StoreError};

use crate::shutdown::{Shutdown, Stage};

/// Jobs deleted per transaction. On SQLite a claim that meets a batch waits for its write lock
/// (10–20 ms for 500), so what keeps claims' p99 is how rarely that happens: few batches,
/// far apart (see [`PAUSE_PER_BATCH`]), not tiny ones. Batches of 5 to 20 held the lock for
/// under a millisecond but met so many claims that their p99 rose 2.8–3.4×; 500 with the
/// pause left it at 1.2× (the bench's retention section). PostgreSQL's claims skip rows a
/// batch holds, so there the size only sets the pace.
pub const BATCH: u32 = 500;

/// The pause after each batch, as a multiple of the time the batch took: deleting takes at
/// most a tenth of the database's writing time, so a pool catching up on a backlog deletes
/// about 3,000 jobs a second beside busy workers, and a million in about six minutes.
const PAUSE_PER_BATCH: u32 = 10;

/// Deletes expired jobs until `shutdown` drains; see the module docs.
pub async fn run(store: &Store, retention: &RetentionConfig, mut shutdown: Shutdown) {
    let ages = ages(retention);
    if ages.is_empty() {
        return;
    }
    // The retry policy's jitter, with no doubling: one interval, up to a fifth shorter.
    let pause = RetryPolicy { initial: retention.interval.0, max: retention.interval.0, jitter: 0.2 };
    loop {
        match delete_expired(store, &ages, &shutdown).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "retention deleted expired finished jobs"),
            Err(err) => {
                let report = crate::output::error_report(&anyhow::Error::from(err));
                tracing::warn!("retention round failed, trying again in {}: {report}", retention.interval);
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause.backoff(1)) => {}
            () = shutdown.reached(Stage::Draining) => return,
        }
    }
}

/// Each finished status `retention` does not keep forever, with how long it is kept.
fn ages(retention: &RetentionConfig) -> Vec<(JobStatus, Duration)> {
    [
        (JobStatus::Completed, retention.completed),
        (JobStatus::Cancelled, retention.cancelled),
        (JobStatus::Poisoned, retention.poisoned),
    ]
    .into_iter()
    .filter_map(|(status, keep)| match keep {
        Keep::For(age) => Some((status, age.0)),
        Keep::Forever => None,
    })
    .collect()
}

/// One round: batches until one comes back short or the process starts draining, each
/// followed by a pause [`PAUSE_PER_BATCH`] times as long as it took.
async fn delete_expired(store: &Store, ages: &[(JobStatus, Duration)], shutdown: &Shutdown) -> Result<u64, StoreError> {
    let mut deleted = 0;
    loop {
        let started = Instant::now();
        let batch = store.delete_expired(ages, BATCH).await?;
        deleted += batch;
        if batch < u64::from(BATCH) || shutdown.stage() >= Stage::Draining {
            return Ok(deleted);
        }
        tokio::time::sleep(started.elapsed() * PAUSE_PER_BATCH).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobhost_core::config::Config;

    #[test]
    fn statuses_kept_forever_are_never_asked_for() {
        let config = Config::parse("retention: {completed: 1s, cancelled: never}").unwrap();
        assert_eq!(
            ages(&config.retention),
            [(JobStatus::Completed, Duration::from_secs(1))],
            "cancelled set to never, poisoned never by default"
        );
    }
}
