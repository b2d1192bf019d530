//! The server's connections, from accept to close: how many may be open, which to close to
//! make room, how long one may stall, and the limits a request meets before it is routed.
//!
//! A connection is one tokio task serving HTTP/1.1 with hyper, so thousands cost little. At
//! `serve.max_connections`, the keep-alive connection that has been idle (answered, waiting for
//! its next request) the longest is closed to make room for the new one, as nginx and Envoy
//! shed keep-alive connections first. A new connection is not idle until its first answer (a
//! client that connects and sends at once must not lose its request); until then only
//! [`HEADER_TIMEOUT`] bounds it. The accept loop waits only when no connection is idle, and
//! long-polls are bounded below the cap (see `watch`), so short requests
//! always get through. A connection silent for [`HEADER_TIMEOUT`] before or between requests
//! is closed by hyper; one whose client takes none of a response for `serve.write_timeout`
//! is closed here ([`WriteDeadline`]).
//!
//! Requests whose URI or headers are larger than ours ([`MAX_URI`], [`MAX_HEADER_BYTES`],
//! [`MAX_HEADERS`]), or whose declared `Content-Length` is over `serve.max_body`, are refused
//! here with the API's JSON error, before any routing or body read. hyper's own limits lie
//! above ours (a 64 KiB URI, a 400 KiB head, [`HYPER_MAX_HEADERS`] headers) and are the last
//! resort: past them hyper answers 414 or 431 itself, without a body, and closes.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Sleep;

use super::error::ApiError;

/// Longest a client may take to send a request's headers, and longest a connection may stay
/// silent between requests.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest request target (path and query) answered; longer is `414 uri_too_long`.
pub const MAX_URI: usize = 8 << 10;
/// Most bytes of request headers (names and values) answered; more is `431 headers_too_large`.
pub const MAX_HEADER_BYTES: usize = 32 << 10;
/// Most request headers answered; more is `431 headers_too_large`.
pub const MAX_HEADERS: usize = 100;
/// hyper's own header count, above ours so that ours answers first.
const HYPER_MAX_HEADERS: usize = 4 * MAX_HEADERS;

/// Every open connection, and which of them are between requests.
pub struct Connections {
    /// Most connections open at once, not counting those told to close.
    max: usize,
    state: Mutex<State>,
    /// A connection closed or went idle: there may be room now.
    room: Notify,
    /// The last connection closed.
    emptied: Notify,
}

#[derive(Default)]
struct State {
    next_id: u64,
    open: HashMap<u64, Slot>,
    /// Idle connections, the longest idle first: key = when it went idle (a sequence number).
    idle: BTreeMap<u64, u64>,
    next_idle: u64,
    /// Open connections told to close, not closed yet.
    closing: usize,
}

struct Slot {
    /// Its key in [`State::idle`] while it is idle.
    idle_since: Option<u64>,
    requests: u32,
    closing: bool,
    close: Arc<Notify>,
}

impl Slot {
    /// Tells the connection to close once its request in flight (if any) is answered. The
    /// caller counts it in [`State::closing`] and takes it off [`State::idle`].
    fn tell_to_close(&mut self) {
        self.idle_since = None;
        self.closing = true;
        self.close.notify_one();
    }
}

impl State {
    fn go_idle(&mut self, id: u64) {
        let key = self.next_idle;
        self.next_idle += 1;
        if let Some(slot) = self.open.get_mut(&id)
            && !slot.closing
        {
            slot.idle_since = Some(key);
            self.idle.insert(key, id);
        }
    }
}

/// Counts of connections, for `/metrics`.
#[derive(Debug)]
pub struct Counts {
    pub open: usize,
    pub idle: usize,
}

impl Connections {
    pub fn new(max: u32) -> Connections {
        Connections { max: max as usize, state: Mutex::default(), room: Notify::new(), emptied: Notify::new() }
    }

    pub fn counts(&self) -> Counts {
        let state = self.state.lock().expect("never poisoned");
        Counts { open: state.open.len(), idle: state.idle.len() }
    }

    /// Makes room for one more connection and registers it, not idle until its first answer:
    /// at the cap, the connection idle the longest is told to close; when none is idle, waits
    /// for one to close or go idle.
    pub async fn admit(self: &Arc<Self>) -> Connection {
        loop {
            let room = self.room.notified();
            {
                let mut state = self.state.lock().expect("never poisoned");
                if state.open.len() - state.closing >= self.max
                    && let Some((_, oldest)) = state.idle.pop_first()
                {
                    state.open.get_mut(&oldest).expect("an idle connection is open").tell_to_close();
                    state.closing += 1;
                }
                if state.open.len() - state.closing < self.max {
                    let id = state.next_id;
                    state.next_id += 1;
                    let close = Arc::new(Notify::new());
                    state.open.insert(id, Slot { idle_since: None, requests: 0, closing: false, close: close.clone() });
                    return Connection { id, close, connections: self.clone() };
                }
            }
            room.await;
        }
    }

    /// Tells every connection to close once its request in flight (if any) is answered.
    pub fn close_all(&self) {
        let mut state = self.state.lock().expect("never poisoned");
        state.idle.clear();
        let mut told = 0;
        for slot in state.open.values_mut().filter(|slot| !slot.closing) {
            slot.tell_to_close();
            told += 1;
        }
        state.closing += told;
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if self.state.lock().expect("never poisoned").open.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    fn request_started(&self, id: u64) {
        let mut state = self.state.lock().expect("never poisoned");
        let Some(slot) = state.open.get_mut(&id) else { return };
        slot.requests += 1;
        if let Some(key) = slot.idle_since.take() {
            state.idle.remove(&key);
        }
    }

    fn request_ended(&self, id: u64) {
        let mut state = self.state.lock().expect("never poisoned");
        let Some(slot) = state.open.get_mut(&id) else { return };
        slot.requests -= 1;
        if slot.requests == 0 {
            state.go_idle(id);
            drop(state);
            self.room.notify_one();
        }
    }

    fn closed(&self, id: u64) {
        let mut state = self.state.lock().expect("never poisoned");
        if let Some(slot) = state.open.remove(&id) {
            if let Some(key) = slot.idle_since {
                state.idle.remove(&key);
            }
            if slot.closing {
                state.closing -= 1;
            }
        }
        let empty = state.open.is_empty();
        drop(state);
        self.room.notify_one();
        if empty {
            self.emptied.notify_waiters();
        }
    }
}

/// One open connection's place among [`Connections`]; leaving it closes the place.
pub struct Connection {
    id: u64,
    close: Arc<Notify>,
    connections: Arc<Connections>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.connections.closed(self.id);
    }
}

/// What each connection is served with.
#[derive(Clone)]
pub struct Settings {
    pub max_body: u64,
    pub write_timeout: Duration,
}

impl Connection {
    /// Serves `stream` until the client leaves, a timeout or error ends it, or it is told to
    /// close (to make room, or at shutdown), in which case a request in flight is answered first.
    pub async fn serve<S>(self, stream: TcpStream, service: S, settings: Settings)
    where
        S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = std::convert::Infallible>
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let connection = Arc::new(self);
        let service = AtTheEdge { service, connection: connection.clone(), max_body: settings.max_body };
        let io = TokioIo::new(WriteDeadline::new(stream, settings.write_timeout));
        let http = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_headers(HYPER_MAX_HEADERS)
            .serve_connection(io, service);
        tokio::pin!(http);
        let mut closing = false;
        loop {
            tokio::select! {
                ended = http.as_mut() => {
                    if let Err(err) = ended {
                        tracing::debug!("connection ended: {err}");
                    }
                    return;
                }
                () = connection.close.notified(), if !closing => {
                    closing = true;
                    http.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// The router behind the edge limits, with the connection marked in a request from the
/// request's head until its answer's last byte is handed over.
struct AtTheEdge<S> {
    service: S,
    connection: Arc<Connection>,
    max_body: u64,
}

impl<S> hyper::service::Service<Request<Incoming>> for AtTheEdge<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = std::convert::Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Answer>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Answer>, std::convert::Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let busy = InRequest::new(self.connection.clone());
        if let Some(refusal) = refusal(&request, self.max_body) {
            let mut response = refusal.into_response();
            // The body is left unread; the connection cannot carry another request.
            response.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            return Box::pin(std::future::ready(Ok(response.map(|body| Answer { body, _busy: busy }))));
        }
        let answered = self.service.call(request);
        Box::pin(async move {
            let response = answered.await?;
            Ok(response.map(|body| Answer { body, _busy: busy }))
        })
    }
}

/// Why a request is refused before it is routed, if it is.
fn refusal<B>(request: &Request<B>, max_body: u64) -> Option<ApiError> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(0, |target| target.as_str().len())
        + uri.authority().map_or(0, |authority| authority.as_str().len());
    if target > MAX_URI {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request's path and query are {target} bytes, more than {MAX_URI}: send long lists in a POST body \
                 (bulk retry and cancel take ids there)"
            ),
        ));
    }
    let headers = request.headers();
    let header_bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    if headers.len() > MAX_HEADERS || header_bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has {} headers of {header_bytes} bytes; at most {MAX_HEADERS} headers of \
                 {MAX_HEADER_BYTES} bytes in all are read: send fewer or smaller ones",
                headers.len()
            ),
        ));
    }
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
    if let Some(length) = declared.filter(|&length| length > max_body) {
        return Some(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the request declares a body of {length} bytes, more than serve.max_body ({max_body} bytes): send \
                 less (split a batch), or raise serve.max_body"
            ),
        ));
    }
    None
}

/// Marks its connection in a request while it lives.
struct InRequest(Arc<Connection>);

impl InRequest {
    fn new(connection: Arc<Connection>) -> InRequest {
        connection.connections.request_started(connection.id);
        InRequest(connection)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.connections.request_ended(self.0.id);
    }
}

/// A response body that keeps its connection marked in a request until hyper has taken the
/// last of it (or dropped it, when the connection ended first).
struct Answer {
    body: Body,
    _busy: InRequest,
}

impl HttpBody for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A TCP stream whose writes fail once the client has taken nothing for `timeout`: a response
/// nobody reads would otherwise hold its connection (and its task and buffers) for ever.
struct WriteDeadline {
    stream: TcpStream,
    timeout: Duration,
    /// Armed while a write waits for the client to take some bytes.
    stall: Option<Pin<Box<Sleep>>>,
}

impl WriteDeadline {
    fn new(stream: TcpStream, timeout: Duration) -> WriteDeadline {
        WriteDeadline { stream, timeout, stall: None }
    }

    /// `polled` is what the stream said to a write; a wait that lasts `timeout` becomes an error.
    fn deadline<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stall = None;
            return polled;
        }
        let timeout = self.timeout;
        let stall = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client took none of the response for {timeout:?} (serve.write_timeout)"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteDeadline {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteDeadline {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.deadline(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.deadline(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_flush(cx);
        self.deadline(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.deadline(cx, polled)
    }
}

/// The connections that fit in `open_files` file descriptors, keeping some for the database,
/// logs and processors: `wanted`, or fewer.
pub fn connections_fitting(open_files: u64, wanted: u32) -> u32 {
    let spare = open_files.saturating_sub(RESERVED_FILES);
    u32::try_from(spare).unwrap_or(u32::MAX).min(wanted)
}

/// File descriptors kept for everything but connections.
pub const RESERVED_FILES: u64 = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_the_open_files_limit() {
        assert_eq!(connections_fitting(1024, 10_000), 768);
        assert_eq!(connections_fitting(1 << 20, 10_000), 10_000);
        assert_eq!(connections_fitting(100, 10_000), 0);
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let connections = Arc::new(Connections::new(2));
        let first = Arc::new(connections.admit().await);
        let second = Arc::new(connections.admit().await);
        drop(InRequest::new(second.clone()));
        drop(InRequest::new(first.clone()));
        // `second` has been idle the longest: it is shed.
        let shed = second.close.clone();
        let third = connections.admit().await;
        tokio::time::timeout(Duration::from_secs(1), shed.notified())
            .await
            .expect("the longest idle was told to close");
        assert_eq!(connections.counts().open, 3, "it counts as open until it closes");
        drop(second);
        assert_eq!(connections.counts().open, 2);
        drop((first, third));
    }

    #[tokio::test]
    async fn when_every_connection_is_in_a_request_a_new_one_waits_for_one_to_end() {
        let connections = Arc::new(Connections::new(1));
        let first = Arc::new(connections.admit().await);
        let busy = InRequest::new(first.clone());
        let admitted = tokio::spawn({
            let connections = connections.clone();
            async move { connections.admit().await }
        });
        tokio::task::yield_now().await;
        assert!(!admitted.is_finished(), "no idle connection to close: the new one waits");
        drop(busy);
        let next = tokio::time::timeout(Duration::from_secs(1), admitted).await.expect("admitted").unwrap();
        tokio::time::timeout(Duration::from_secs(1), first.close.notified())
            .await
            .expect("the idle one was told to close");
        assert_eq!(connections.counts().open, 2, "it counts as open until it closes");
        drop((first, next));
        tokio::time::timeout(Duration::from_secs(1), connections.all_closed()).await.expect("all closed");
    }
}
