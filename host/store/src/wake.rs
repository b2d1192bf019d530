//! Wake-ups for a worker that waits for work (`jobhost work --follow`).
//!
//! The first wake-up comes as soon as the source watches, so a waiter that read the pool
//! before it started misses nothing committed in between.
//!
//! A wake-up is a hint, never a promise: "jobs of this pool may have changed, look again".
//! The waiter then asks [`crate::Store::ready_in`] (one cheap read) whether a job is ready or
//! when the next one will be, so a spurious wake-up costs a read and a missed one costs no
//! more than the waiter's fallback poll. Each backend has its own source:
//!
//! - **PostgreSQL:** `LISTEN` on a connection of its own. Every statement that leaves jobs
//!   pending (an enqueue, a retry, a reaped job) sends one `NOTIFY` per pool it touched from
//!   its own transaction, by a statement-level trigger: a batch of 10,000 jobs costs one
//!   notification, not 10,000, and it arrives only once they are committed and claimable.
//!   The listening connection reconnects with backoff when it drops, and wakes its waiter on
//!   every reconnect, because notifications sent while it was away are lost.
//! - **SQLite:** `PRAGMA data_version`, which changes when any other connection in any
//!   process commits to the file, read on a connection of its own whenever inotify reports
//!   a change in the database's folder (see `sqlite::wake`): a commit wakes a waiter within
//!   microseconds, and an idle one costs nothing.

use std::sync::Arc;

use tokio::sync::Notify;

/// A waiter's wake-ups; the source stops when this is dropped.
pub struct Wakeups {
    signal: Arc<Notify>,
    _source: Box<dyn Send + Sync>,
}

impl Wakeups {
    /// `source` signals `signal` until it is dropped.
    pub(crate) fn new(signal: Arc<Notify>, source: impl Send + Sync + 'static) -> Wakeups {
        Wakeups { signal, _source: Box::new(source) }
    }

    /// Returns once jobs may have changed since the last call returned (at once if they did
    /// meanwhile: a wake-up is kept until it is taken).
    pub async fn changed(&self) {
        self.signal.notified().await;
    }
}
