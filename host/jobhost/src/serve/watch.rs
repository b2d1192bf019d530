//! Long-polls without a query per waiter: one watcher task asks the store, a few times a
//! second, for the status of every job someone is waiting on (one query per
//! [`IDS_PER_QUERY`] jobs, however many wait on each), reads the jobs that finished in one
//! more query, and hands each waiter its job. With no one waiting it sleeps and costs
//! nothing, and the store's load does not grow with the number of waiters.
//!
//! The watcher checks state rather than listening for events, so a job that finishes
//! between a waiter's first look and its registration is still seen at the next tick.
//!
//! At most `serve.max_waiters` wait at once, fewer than the connections the server keeps
//! open, so waiters never take every connection from short requests; one more is answered
//! `503 unavailable` with `Retry-After` at once rather than held.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use tokio::sync::{Notify, oneshot};

use jobhost_store::{JobDetail, Store};

use super::error::ApiError;
use crate::shutdown::{Shutdown, Stage};

/// How often the watcher looks while someone waits: the most a waiter waits past its job's end.
const TICK: Duration = Duration::from_millis(100);
/// Ids asked about in one query.
const IDS_PER_QUERY: usize = 1_000;

pub struct Watcher {
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<Arc<JobDetail>>>>>,
    someone_waits: Notify,
    /// Long-polls waiting now (a gauge in /metrics).
    pub waiters: AtomicU64,
    /// Most long-polls waiting at once.
    max_waiters: u64,
}

/// One long-poll's place among the waiters, given back however the wait ends (the request
/// may be dropped mid-wait when its client leaves).
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Watcher {
    pub fn new(max_waiters: u32) -> Watcher {
        Watcher {
            waiting: Mutex::default(),
            someone_waits: Notify::new(),
            waiters: AtomicU64::new(0),
            max_waiters: u64::from(max_waiters),
        }
    }

    /// Waits until job `id` has finished, `wait` has passed, or the server starts shutting
    /// down. Returns the finished job; `None` means the caller should
    /// read the job as it is now (unfinished, or purged meanwhile). With `serve.max_waiters`
    /// waiting already, refuses at once with 503.
    pub async fn wait(
        &self,
        id: &str,
        wait: Duration,
        mut shutdown: Shutdown,
    ) -> Result<Option<Arc<JobDetail>>, ApiError> {
        let max = self.max_waiters;
        if self
            .waiters
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| (now < max).then_some(now + 1))
            .is_err()
        {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!(
                    "{max} long-polls are waiting already (serve.max_waiters): try again after Retry-After, \
                     or read the job without ?wait"
                ),
            ));
        }
        let _waiting = Waiting(&self.waiters);
        let (tell, told) = oneshot::channel();
        self.waiting.lock().expect("never poisoned").entry(id.to_owned()).or_default().push(tell);
        self.someone_waits.notify_one();
        // A waiter that gives up leaves a closed sender; the next tick drops it.
        Ok(tokio::select! {
            finished = told => finished.ok(),
            () = tokio::time::sleep(wait) => None,
            () = shutdown.reached(Stage::Draining) => None,
        })
    }

    /// The watcher's loop; `queries` counts the store calls it makes.
    pub async fn run(&self, store: &Store, queries: &AtomicU64) {
        loop {
            let ids: Vec<String> = {
                let mut waiting = self.waiting.lock().expect("never poisoned");
                waiting.retain(|_, senders| {
                    senders.retain(|sender| !sender.is_closed());
                    !senders.is_empty()
                });
                waiting.keys().cloned().collect()
            };
            if ids.is_empty() {
                self.someone_waits.notified().await;
                continue;
            }
            tokio::time::sleep(TICK).await;
            for chunk in ids.chunks(IDS_PER_QUERY) {
                let asked: Vec<&str> = chunk.iter().map(String::as_str).collect();
                queries.fetch_add(1, Ordering::Relaxed);
                let statuses = match store.job_statuses(&asked).await {
                    Ok(statuses) => statuses,
                    Err(err) => {
                        tracing::warn!("the long-poll watcher cannot read job statuses: {err}");
                        continue;
                    }
                };
                let finished: Vec<&str> =
                    statuses.iter().filter(|(_, status)| status.is_finished()).map(|(id, _)| id.as_str()).collect();
                let existing: std::collections::HashSet<&str> = statuses.iter().map(|(id, _)| id.as_str()).collect();
                let jobs = if finished.is_empty() {
                    Vec::new()
                } else {
                    queries.fetch_add(1, Ordering::Relaxed);
                    store.jobs(&finished).await.unwrap_or_else(|err| {
                        tracing::warn!("the long-poll watcher cannot read finished jobs: {err}");
                        Vec::new()
                    })
                };
                let mut waiting = self.waiting.lock().expect("never poisoned");
                for job in jobs {
                    let job = Arc::new(job);
                    for sender in waiting.remove(&job.job.id).unwrap_or_default() {
                        let _ = sender.send(job.clone());
                    }
                }
                // A job purged meanwhile ends its waits too; the waiters find it gone.
                for id in asked.iter().filter(|id| !existing.contains(*id)) {
                    waiting.remove(*id);
                }
            }
        }
    }
}
