//! The driver's connections to the server, and getting them back after the server drops them.
//!
//! A store holds a pool of connections (deadpool's): one for every command but `jobhost
//! serve`, which may open up to `database.serve_connections` so requests running at once do
//! not queue on one. Connections are opened as operations need them, so a server that is
//! mostly idle holds one; an operation holds its connection from start to end.
//!
//! A long-running process (`serve`, a checker) outlives connections: the server restarts, an
//! administrator terminates the backend, a proxy cuts an idle socket. A connection is checked
//! before each operation and, once closed, dropped and replaced by a new one; while the server
//! stays out of reach, connecting is retried only after a backoff (doubling from
//! [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]) and the operations in between fail at once as
//! `Unreachable`, so a server that is down is not hammered and callers are not held for a
//! connect timeout each. The operation that was running when its connection broke fails;
//! nothing retries it here, because only the caller knows whether it is safe to repeat.
//!
//! Statements are prepared per connection, so each connection carries its own cache.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
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

/// When connecting may be tried again after a failure.
struct Backoff {
    /// No connection is tried before this.
    retry_at: Instant,
    /// The wait after the next failure.
    wait: Duration,
}

/// How to connect: what the pool calls to open and to check a connection.
pub struct Connector {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    backoff: Mutex<Backoff>,
}

impl managed::Manager for Connector {
    type Type = Link;
    type Error = StoreError;

    async fn create(&self) -> Result<Link> {
        let retry_at = self.backoff.lock().expect("no panic holding the backoff").retry_at;
        let now = Instant::now();
        if now < retry_at {
            return Err(StoreError::new(
                ErrorKind::Unreachable,
                format!(
                    "the connection was lost and reconnecting failed; the next try is in {} ms",
                    (retry_at - now).as_millis()
                ),
            ));
        }
        let connected = connect(&self.config, &self.tls).await;
        let mut backoff = self.backoff.lock().expect("no panic holding the backoff");
        match connected {
            Ok(client) => {
                backoff.wait = FIRST_BACKOFF;
                Ok(Link::new(client))
            }
            Err(err) => {
                backoff.retry_at = Instant::now() + backoff.wait;
                backoff.wait = (backoff.wait * 2).min(MAX_BACKOFF);
                Err(err)
            }
        }
    }

    async fn recycle(&self, link: &mut Link, _: &Metrics) -> RecycleResult<StoreError> {
        if link.client.is_closed() {
            tracing::info!("a connection to PostgreSQL was closed; connecting again");
            return Err(RecycleError::message("the connection was closed"));
        }
        Ok(())
    }
}

/// The pool of connections to one server.
pub struct Connections {
    pool: managed::Pool<Connector>,
}

impl Connections {
    /// Connects once, so that a wrong URL or password is the caller's to report at start-up
    /// rather than worth retrying; later connections are opened as operations need them, up
    /// to `size` at once.
    pub async fn open(config: tokio_postgres::Config, tls: MakeRustlsConnect, size: usize) -> Result<Connections> {
        let connector =
            Connector { config, tls, backoff: Mutex::new(Backoff { retry_at: Instant::now(), wait: FIRST_BACKOFF }) };
        let pool = managed::Pool::builder(connector)
            .max_size(size)
            .build()
            .map_err(|err| StoreError::new(ErrorKind::Other, format!("cannot build the connection pool: {err}")))?;
        let connections = Connections { pool };
        drop(connections.link().await?);
        Ok(connections)
    }

    /// How this pool connects, for a connection kept outside it (see `super::wake`).
    pub fn connect_settings(&self) -> (tokio_postgres::Config, MakeRustlsConnect) {
        let connector = self.pool.manager();
        (connector.config.clone(), connector.tls.clone())
    }

    /// A live connection, reconnecting first if the one at hand was closed; waits while
    /// every connection is taken. It goes back to the pool when dropped.
    pub async fn link(&self) -> Result<Object<Connector>> {
        self.pool.get().await.map_err(|err| match err {
            PoolError::Backend(err) => err,
            other => StoreError::new(ErrorKind::Other, format!("no connection could be taken from the pool: {other}")),
        })
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
