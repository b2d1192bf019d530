//! Long-polls without a query per waiter: one watcher task asks the store, a few times a
//! second, for the status of every job someone is waiting on (one query per
//! [`IDS_PER_QUERY`] jobs, however many wait on each), reads the jobs that finished in one
//! more query, and hands each waiter its job. With no one waiting it sleeps and costs
//! nothing, and the store's load does not grow with the number of waiters.
//!
//! The watcher checks state rather than listening for events, so a job that finishes
//! between a waiter's first look and its registration is still seen at the next tick.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};

use crate::store::{JobDetail, Store};

/// How often the watcher looks while someone waits: the most a waiter waits past its job's end.
const TICK: Duration = Duration::from_millis(100);
/// Ids asked about in one query.
const IDS_PER_QUERY: usize = 1_000;

#[derive(Default)]
pub struct Watcher {
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<Arc<JobDetail>>>>>,
    someone_waits: Notify,
    /// Long-polls waiting now (a gauge in /metrics).
    pub waiters: AtomicU64,
}

impl Watcher {
    /// Waits until job `id` has finished, `wait` has passed, or `stopping` turns true (the
    /// server is shutting down). Returns the finished job; `None` means the caller should
    /// read the job as it is now (unfinished, or purged meanwhile).
    pub async fn wait(&self, id: &str, wait: Duration, mut stopping: watch::Receiver<bool>) -> Option<Arc<JobDetail>> {
        let (tell, told) = oneshot::channel();
        self.waiting.lock().expect("never poisoned").entry(id.to_owned()).or_default().push(tell);
        self.someone_waits.notify_one();
        self.waiters.fetch_add(1, Ordering::Relaxed);
        let finished = tokio::select! {
            finished = told => finished.ok(),
            () = tokio::time::sleep(wait) => None,
            _ = stopping.wait_for(|stopping| *stopping) => None,
        };
        self.waiters.fetch_sub(1, Ordering::Relaxed);
        // A waiter that gave up leaves a closed sender; the next tick drops it.
        finished
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
