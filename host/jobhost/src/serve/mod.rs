//! `jobhost serve`: one long-running process serving applications (the JSON API under
//! `/api/v1`, see [`api`]), operators (the dashboard at `/`, see [`dashboard`]) and
//! Prometheus (`/metrics`, see [`metrics`]), over the same store the workers use.
//!
//! The server owns the HTTP side only: it reads and changes jobs through [`Store`] and never
//! runs one; beside serving, unless read-only, it runs the [`crate::upkeep`] (queueing due
//! ticks, deleting expired jobs). It runs on a multi-threaded runtime with up to
//! `database.serve_connections` connections to the pool, so requests do not take turns on one connection, and a request
//! whose store call blocks (a SQLite write waiting for another process's lock) holds up
//! neither `/healthz` nor reads nor long-polls. Its defences against careless and hostile clients live here and in [`auth`]:
//! - no token means loopback only; with one, every call needs it ([`auth::guard`]);
//! - bodies are capped (`serve.max_body`), a whole request must be answered within
//!   `serve.request_timeout` (a long-poll gets its wait on top), and long-polls are bounded
//!   (`serve.max_waiters`, see [`watch`]);
//! - connections are bounded, shed idle ones first and time out when silent or unread, and
//!   oversized URIs, headers and declared bodies are refused before routing ([`connections`]);
//! - SIGTERM or SIGINT stops accepting, lets requests in flight finish (long-polls are
//!   answered at once with the job as it is) and exits 0.

mod api;
mod auth;
mod connections;
mod dashboard;
mod error;
mod metrics;
mod watch;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tower_http::timeout::TimeoutLayer;

use jobhost_core::config::Config;
use jobhost_sandbox::Sandbox;
use jobhost_store::{Access, Store};

use crate::shutdown::{self, Shutdown, Stage};

use error::ApiError;

/// Longest shutdown waits for requests in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What every handler shares.
pub struct App {
    store: Store,
    config: Config,
    auth: auth::Auth,
    watcher: watch::Watcher,
    /// Store operations made so far (a counter in /metrics): the figure that shows the
    /// long-poll watcher's cost does not grow with its waiters.
    queries: AtomicU64,
    /// When the server starts shutting down (long-polls answer at once then).
    shutdown: Shutdown,
    /// Loads processors for the processors listing (compiling them, or reading the cache).
    sandbox: Sandbox,
    processor_listing: api::ProcessorListing,
    /// The open connections (gauges in /metrics).
    connections: Arc<connections::Connections>,
}

impl App {
    /// The store, counting the operation about to be made on it.
    fn store(&self) -> &Store {
        self.queries.fetch_add(1, Ordering::Relaxed);
        &self.store
    }
}

pub async fn run(config: &Config) -> Result<ExitCode> {
    let serve = &config.serve;
    let address = serve.address().map_err(|why| anyhow::anyhow!("{} {why}", config.name("serve.listen")))?;
    let tokens = auth::Tokens::resolve(config)?;
    if !tokens.any() && !address.ip().is_loopback() {
        bail!(
            "{} {address} is reachable from other machines, so the server needs a token: pass --token-file FILE, \
             set $JOBHOST_TOKEN, or set serve.token_file (or listen on 127.0.0.1)",
            config.name("serve.listen")
        );
    }
    // A server that takes jobs creates the pool as `seed` does; a read-only one needs it.
    let access = if serve.read_only { Access::Existing } else { Access::CreateIfMissing };
    let store = Store::open_pooled(&config.database, access, config.database.serve_connections).await?;
    let listener = tokio::net::TcpListener::bind(address).await.with_context(|| {
        format!("cannot listen on {address}: is another server using it? pick another with --listen")
    })?;
    let max_connections = raise_open_files_limit(serve.max_connections, config);
    let (trigger, mut shutdown) = shutdown::channel();
    let connections = Arc::new(connections::Connections::new(max_connections));
    let app = Arc::new(App {
        store,
        config: config.clone(),
        auth: auth::Auth::new(tokens, serve.read_only),
        watcher: watch::Watcher::new(serve.waiters_for(max_connections)),
        queries: AtomicU64::new(0),
        shutdown: shutdown.clone(),
        sandbox: Sandbox::new(1)?,
        processor_listing: api::ProcessorListing::default(),
        connections: connections.clone(),
    });
    let watcher = tokio::spawn({
        let app = app.clone();
        async move { app.watcher.run(&app.store, &app.queries).await }
    });
    // A read-only server changes nothing: it queues no tick and deletes no expired job.
    let upkeep = (!serve.read_only).then(|| {
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tokio::spawn(async move { crate::upkeep::run(&app.store, &app.config, shutdown).await })
    });
    let router = router(app.clone());
    // Listening for the signals starts before the server says it is up, so a SIGTERM sent
    // as soon as it is up is a clean shutdown, not the default death.
    shutdown::on_signals(trigger)?;
    crate::outln!("listening on http://{}", listener.local_addr()?)?;
    tracing::info!(%address, token = app.auth.has_token(), read_only = serve.read_only, "serving");

    let settings = connections::Settings { max_body: serve.max_body.0, write_timeout: serve.write_timeout.0 };
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!("cannot accept a connection: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.reached(Stage::Draining) => break,
        };
        let connection = tokio::select! {
            connection = connections.admit() => connection,
            () = shutdown.reached(Stage::Draining) => break,
        };
        // Each request learns the address it came from (wrong tokens are counted per client).
        let routed = hyper_util::service::TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            hyper::service::Service::call(&routed, request)
        });
        tokio::spawn(connection.serve(stream, service, settings.clone()));
    }
    tracing::info!("shutting down: finishing requests in flight");
    drop(listener);
    connections.close_all();
    tokio::select! {
        () = connections.all_closed() => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    watcher.abort();
    if let Some(upkeep) = upkeep {
        // It stopped when draining began, after its round in flight; this only collects it.
        upkeep.await.context("the upkeep task failed")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Each connection is a file descriptor; the usual soft limit (1024) is below the default
/// `serve.max_connections`, so the soft limit is raised towards the hard one. Returns the
/// connections that fit: `wanted`, or fewer when the hard limit is lower (with a warning).
fn raise_open_files_limit(wanted: u32, config: &Config) -> u32 {
    let needed = u64::from(wanted) + connections::RESERVED_FILES;
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    let open_files = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return wanted;
        }
        if (limit.rlim_cur as u64) < needed {
            let raised = limit.rlim_max.min(needed as libc::rlim_t);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &libc::rlimit { rlim_cur: raised, rlim_max: limit.rlim_max }) == 0 {
                limit.rlim_cur = raised;
            }
        }
        limit.rlim_cur as u64
    };
    let fitting = connections::connections_fitting(open_files, wanted).max(2);
    if fitting < wanted {
        tracing::warn!(
            "the open-files limit ({open_files}) leaves room for {fitting} connections, not the {wanted} of {}: \
             serving at most {fitting} (raise the hard limit: LimitNOFILE= in a systemd unit, or `ulimit -Hn`)",
            config.name("serve.max_connections")
        );
    }
    fitting
}

fn router(app: Arc<App>) -> Router {
    let serve = &app.config.serve;
    let timeout = |duration: Duration| TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, duration);
    let long_poll = Router::new()
        .route("/api/v1/jobs/{id}", get(api::get_job))
        .layer(timeout(serve.request_timeout.0 + serve.max_wait.0));
    Router::new()
        .route("/api/v1/jobs", post(api::enqueue).get(api::list_jobs))
        .route("/api/v1/jobs/retry", post(api::retry_jobs))
        .route("/api/v1/jobs/cancel", post(api::cancel_jobs))
        .route("/api/v1/jobs/{id}/retry", post(api::retry_job))
        .route("/api/v1/jobs/{id}/cancel", post(api::cancel_job))
        .route("/api/v1/jobs/{id}/attempts", get(api::job_attempts))
        .route("/api/v1/status", get(api::status))
        .route("/api/v1/pools", get(api::pools))
        .route("/api/v1/pools/{pool}/pause", post(api::pause_pool))
        .route("/api/v1/pools/{pool}/resume", post(api::resume_pool))
        .route("/api/v1/limits", get(api::limits))
        .route("/api/v1/workers", get(api::workers))
        .route("/api/v1/processors", get(api::processors))
        .route("/api/v1/schedules", get(api::schedules))
        .route("/api/v1/openapi.json", get(api::openapi))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .route("/", get(dashboard::overview))
        .route("/jobs", get(dashboard::jobs))
        .route("/jobs/bulk", post(dashboard::bulk))
        .route("/jobs/{id}", get(dashboard::job))
        .route("/jobs/{id}/attempts", get(dashboard::attempts))
        .route("/jobs/{id}/{action}", post(dashboard::act_on_job))
        .route("/pools/{pool}/{action}", post(dashboard::act_on_pool))
        .route("/workers", get(dashboard::workers))
        .route("/processors", get(dashboard::processors))
        .route("/schedules", get(dashboard::schedules))
        .route("/login", get(dashboard::login_form).post(dashboard::login))
        .route("/logout", post(dashboard::logout))
        .route("/assets/{name}", get(dashboard::asset))
        .layer(timeout(serve.request_timeout.0))
        .merge(long_poll)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth::guard))
        .layer(DefaultBodyLimit::max(serve.max_body.0 as usize))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn(auth::security_headers))
        .with_state(app)
}

/// `GET /readyz`: 200 when the database answers now, else 503, for a load balancer or a
/// Kubernetes readinessProbe; `/healthz` answers as long as the process serves (a
/// livenessProbe), so a server cut off from its database is taken out of rotation, not
/// restarted. Asking is also what reconnects a lost connection. The probe is open to anyone,
/// so the database's name and error go to the log, not into the answer.
async fn readiness(axum::extract::State(app): axum::extract::State<Arc<App>>) -> axum::response::Response {
    match app.store().ping().await {
        Ok(()) => "ready".into_response(),
        Err(err) => {
            tracing::warn!("not ready: {err}");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database does not answer now; the server keeps reconnecting (its log says why)",
            )
            .into_response()
        }
    }
}

async fn not_found(uri: axum::http::Uri) -> impl IntoResponse {
    let message = format!("no such path: {}", uri.path());
    if auth::is_api(uri.path()) {
        ApiError::not_found(message).into_response()
    } else {
        (StatusCode::NOT_FOUND, message).into_response()
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this path does not take that method")
}

/// axum answers a body over the cap or one it cannot read (a malformed chunked body, one cut
/// short), and tower-http a request out of time, in plain text or without a body; the API
/// promises its JSON shape for every error.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let api = auth::is_api(request.uri().path());
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/json"));
    if !api || is_json {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than serve.max_body: send less (split a batch), or raise serve.max_body",
        )
        .into_response(),
        StatusCode::REQUEST_TIMEOUT => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the request took longer than serve.request_timeout: send it faster, or ask for less at once",
        )
        .into_response(),
        StatusCode::BAD_REQUEST => {
            // axum's own text names what was wrong with the body; it is short.
            let said = axum::body::to_bytes(response.into_body(), 4 << 10).await.unwrap_or_default();
            let said = String::from_utf8_lossy(&said);
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the request could not be read ({}): send a well-formed HTTP/1.1 request", said.trim()),
            )
            .into_response()
        }
        _ => response,
    }
}
