//! Wake-ups on PostgreSQL: `LISTEN` on a connection of its own (see [`crate::wake`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::wake::Wakeups;

/// The channel the schema's trigger notifies; each payload is `schema.pool`.
const CHANNEL: &str = "jobhost_ready";
/// The wait after the listening connection fails; each further failure doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often an idle listening connection is checked: a socket cut without a word (a
/// proxy, a network partition) would otherwise listen to nothing for good.
const PING: Duration = Duration::from_secs(10);

/// Listens for the pool `schema.pool`, reconnecting for as long as the wake-ups are kept.
pub(super) fn watch(config: tokio_postgres::Config, tls: MakeRustlsConnect, schema: &str, pool: &str) -> Wakeups {
    let signal = Arc::new(Notify::new());
    let task = tokio::spawn(listen(config, tls, format!("{schema}.{pool}"), signal.clone()));
    Wakeups::new(signal, StopOnDrop(task.abort_handle()))
}

struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn listen(config: tokio_postgres::Config, tls: MakeRustlsConnect, key: String, signal: Arc<Notify>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match config.connect(tls.clone()).await {
            Ok((client, mut connection)) => {
                // Notifications arrive only through `poll_message`; awaiting the connection,
                // as the other connections are driven, would drop them.
                let (woken, key) = (signal.clone(), key.clone());
                let mut driver = tokio::spawn(async move {
                    while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(note)) if note.payload() == key => woken.notify_one(),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        backoff = FIRST_BACKOFF;
                        // Whatever was notified while no one listened is lost: look again.
                        signal.notify_one();
                        let mut ping = tokio::time::interval(PING);
                        ping.tick().await;
                        loop {
                            tokio::select! {
                                _ = &mut driver => break,
                                _ = ping.tick() => if client.simple_query("").await.is_err() { break },
                            }
                        }
                        tracing::info!("the connection listening for new jobs was lost; listening again");
                    }
                    Err(err) => tracing::warn!("cannot listen for new jobs (will retry): {err}"),
                }
                driver.abort();
            }
            Err(err) => tracing::debug!("cannot connect to listen for new jobs (will retry): {err}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
