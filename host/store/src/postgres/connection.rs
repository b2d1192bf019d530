//! The driver's one connection to the server, and getting it back after the server drops it.
//!
//! A long-running process (`serve`, a checker) outlives connections: the server restarts, an
//! administrator terminates the backend, a proxy cuts an idle socket. The connection is
//! checked before each operation and, once closed, opened anew; while the server stays out of
//! reach, attempts are spaced by a backoff (doubling from [`FIRST_BACKOFF`] to
//! [`MAX_BACKOFF`]) and the operations in between fail at once as `Unreachable`, so a
//! server that is down is not hammered and callers are not held for a connect timeout each.
//! The operation that was running when the connection broke fails; nothing retries it here,
//! because only the caller knows whether it is safe to repeat.
//!
//! Statements are prepared per connection, so the cache lives and dies with it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::{Client, Statement};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::super::error::{ErrorKind, Result, StoreError};

/// The wait after the first failed reconnect; each further failure doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between reconnects: a server back up is in use again within this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// An open connection and the statements prepared on it.
pub struct Link {
    pub client: Client,
    statements: HashMap<String, Statement>,
}

impl Link {
    fn new(client: Client) -> Link {
        Link { client, statements: HashMap::new() }
    }

    /// `sql` prepared on this connection, once.
    pub async fn prepare(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql).await?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

struct State {
    link: Option<Link>,
    /// No reconnect is tried before this.
    retry_at: Instant,
    backoff: Duration,
}

/// How to connect, and the connection once made.
pub struct Connection {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    state: Mutex<State>,
}

impl Connection {
    /// Connects once; a failure here is the caller's to report (a wrong URL or password is
    /// not worth retrying at start-up).
    pub async fn open(config: tokio_postgres::Config, tls: MakeRustlsConnect) -> Result<Connection> {
        let client = connect(&config, &tls).await?;
        let state = State { link: Some(Link::new(client)), retry_at: Instant::now(), backoff: FIRST_BACKOFF };
        Ok(Connection { config, tls, state: Mutex::new(state) })
    }

    /// The live connection, reconnecting first if the last one closed. Operations take turns
    /// on it: the guard is held for the whole operation.
    pub async fn link(&self) -> Result<MappedMutexGuard<'_, Link>> {
        let mut state = self.state.lock().await;
        if state.link.as_ref().is_none_or(|link| link.client.is_closed()) {
            state.link = None;
            let now = Instant::now();
            if now < state.retry_at {
                return Err(StoreError::new(
                    ErrorKind::Unreachable,
                    format!(
                        "the connection was lost and reconnecting failed; the next try is in {} ms",
                        (state.retry_at - now).as_millis()
                    ),
                ));
            }
            match connect(&self.config, &self.tls).await {
                Ok(client) => {
                    tracing::info!("reconnected to PostgreSQL");
                    state.link = Some(Link::new(client));
                    state.backoff = FIRST_BACKOFF;
                }
                Err(err) => {
                    state.retry_at = Instant::now() + state.backoff;
                    state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
                    return Err(err);
                }
            }
        }
        Ok(MutexGuard::map(state, |state| state.link.as_mut().expect("connected above")))
    }
}

async fn connect(config: &tokio_postgres::Config, tls: &MakeRustlsConnect) -> Result<Client> {
    let (client, connection) = config.connect(tls.clone()).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!("PostgreSQL connection ended: {err}");
        }
    });
    Ok(client)
}
