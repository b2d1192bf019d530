//! Stopping a long-running command: one mechanism for the worker, the checker and the server.
//!
//! As in tokio's mini-redis, whoever decides to stop holds a [`Trigger`] and everything that
//! must stop is handed a [`Shutdown`] (a `watch` receiver) and waits on it beside its work.
//! Stopping has two stages, in order:
//! - [`Stage::Draining`]: take no new work (a job, a connection, a round) and let what is in
//!   flight finish;
//! - [`Stage::Abandoning`]: stop what is in flight too. A worker the reaper declared lost
//!   abandons its jobs at once: they are another worker's now, and running them on would
//!   only burn CPU on results that the claim's fencing will discard.
//!
//! SIGTERM and SIGINT are handled once, by [`on_signals`]: the first drains, a second exits
//! the process at once with status 130 (whatever was held is the reaper's to recover).

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

/// How far stopping has gone; later stages include the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Running,
    Draining,
    Abandoning,
}

/// Tells every [`Shutdown`] of its channel to stop.
#[derive(Debug, Clone)]
pub struct Trigger(watch::Sender<Stage>);

/// Learns when to stop; cloned into every task that must.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<Stage>);

/// A trigger and the shutdown it controls, still [`Stage::Running`].
pub fn channel() -> (Trigger, Shutdown) {
    let (sender, receiver) = watch::channel(Stage::Running);
    (Trigger(sender), Shutdown(receiver))
}

impl Trigger {
    /// Moves to `stage`, unless stopping has already gone that far: stages never go back.
    pub fn advance(&self, stage: Stage) {
        self.0.send_if_modified(|current| {
            let later = stage > *current;
            if later {
                *current = stage;
            }
            later
        });
    }
}

impl Shutdown {
    pub fn stage(&self) -> Stage {
        *self.0.borrow()
    }

    /// Resolves once stopping has reached `stage` (at once if it already has).
    pub async fn reached(&mut self, stage: Stage) {
        // The trigger lives as long as the command; if it is gone, nothing can stop us but
        // the end of the process, so wait for that.
        if self.0.wait_for(|current| *current >= stage).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Installs the SIGTERM and SIGINT handlers now (a signal that arrives before the command
/// is up is a clean stop, not the default death): the first signal drains `trigger`, a
/// second one exits at once with status 130.
pub fn on_signals(trigger: Trigger) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    tokio::spawn(async move {
        for round in 0.. {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            if round > 0 {
                tracing::warn!("second signal: exiting now; the reaper will recover any jobs still held");
                std::process::exit(130);
            }
            tracing::info!("signal received: finishing the work in flight, taking no more");
            trigger.advance(Stage::Draining);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_only_move_forward_and_wake_every_waiter() {
        let (trigger, shutdown) = channel();
        let mut draining = shutdown.clone();
        let waiter = tokio::spawn(async move { draining.reached(Stage::Draining).await });
        trigger.advance(Stage::Abandoning);
        waiter.await.unwrap();
        trigger.advance(Stage::Draining);
        assert_eq!(shutdown.stage(), Stage::Abandoning, "a later stage is never undone");
    }
}
