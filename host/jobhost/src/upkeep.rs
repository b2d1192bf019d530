//! Upkeep: what every long-running command (`check --interval`, `serve`, `work --follow`)
//! runs beside its own work, on the store it is given, until its shutdown drains: the
//! [`scheduler`](crate::scheduler), queueing due ticks, and [`retention`](crate::retention),
//! deleting expired finished jobs. Neither ever fails the command: each logs and retries.

use jobhost_core::config::Config;
use jobhost_store::Store;

use crate::shutdown::Shutdown;

/// Runs the scheduler and retention side by side until `shutdown` drains.
pub async fn run(store: &Store, config: &Config, shutdown: Shutdown) {
    tokio::join!(
        crate::scheduler::run(store, config, shutdown.clone()),
        crate::retention::run(store, &config.retention, shutdown)
    );
}
