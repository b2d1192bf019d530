//! Outgoing HTTP for components: the `wasi:http/outgoing-handler` hook that sends a guest's
//! request, or refuses it, under the processor's [`HttpGrant`].
//!
//! wasmtime-wasi-http parses the guest's request and hands it to [`Outbound::send_request`]
//! (its default client is left out of the build). Here, in order:
//! 1. no grant, or the run's `max_requests` used up: refused;
//! 2. the scheme, host and port must match an `allow` entry ([`HttpGrant::allows`]);
//! 3. the host is resolved and every address checked by the SSRF rule ([`grants::is_public`],
//!    or the entry names the address itself); the connection goes to an address that passed,
//!    never to a second lookup's answer;
//! 4. the request is sent over HTTP/1.1 (TLS with the system's roots for `https`), and the
//!    response body is cut at `max_response`; all of it within the grant's `timeout`.
//!
//! A refusal reaches the guest as the WASI HTTP error code for it (`HTTP-request-denied`,
//! `destination-IP-prohibited`, `connection-limit-reached`, ...) and is explained in one
//! `jobhost:` line on the run's stderr, so the job's history says what was blocked and which
//! key grants it. Redirects are not followed by the host: a guest that follows one sends a
//! new request, which passes the same checks.
//!
//! Waiting here is async, on the worker's runtime: a run waiting on the network holds
//! neither a thread nor the worker's core, and the run's wall-clock deadline (the sandbox's
//! timeout around the whole run) still applies.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use wasmtime_wasi::p2::OutputStream;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use jobhost_core::grants::{self, AllowedHost, HttpGrant, Scheme};

/// The response and the future that drives its connection, as wasmtime-wasi-http wants them.
type Sent = (http::Response<WasiBody>, Box<dyn Future<Output = Result<(), Error>> + Send>);

/// One run's outgoing-HTTP policy and its count of requests.
pub(super) struct Outbound {
    processor: String,
    grant: Option<Arc<HttpGrant>>,
    requests: u32,
    /// The run's stderr, where refusals are explained.
    stderr: MemoryOutputPipe,
}

impl Outbound {
    pub(super) fn new(processor: &str, grant: Option<HttpGrant>, stderr: MemoryOutputPipe) -> Outbound {
        Outbound { processor: processor.to_string(), grant: grant.map(Arc::new), requests: 0, stderr }
    }

    fn note(&self, line: String) {
        note(&self.stderr, line);
    }

    /// The checks that need no network: the grant, the count, the allowlist.
    fn admit(&mut self, uri: &http::Uri) -> Result<(Arc<HttpGrant>, Target), Error> {
        let shown = shown(uri);
        let Some(grant) = self.grant.clone() else {
            self.note(format!(
                "request to {shown} denied: processor \"{}\" has no outbound HTTP grant \
                 (processors.overrides.{}.http.allow)",
                self.processor, self.processor
            ));
            return Err(Error::HttpRequestDenied);
        };
        if self.requests >= grant.max_requests {
            self.note(format!(
                "request to {shown} denied: this run already made {} requests, its limit \
                 (processors.overrides.{}.http.max_requests)",
                grant.max_requests, self.processor
            ));
            return Err(Error::ConnectionLimitReached);
        }
        self.requests += 1;
        let scheme = match uri.scheme_str() {
            Some("https") => Scheme::Https,
            Some("http") => Scheme::Http,
            _ => return Err(Error::HttpProtocolError),
        };
        let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?.to_string();
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let Some(entry) = grant.allows(scheme, &host, port) else {
            self.note(format!(
                "request to {shown} denied: {scheme}://{host}:{port} is not in \
                 processors.overrides.{}.http.allow",
                self.processor
            ));
            return Err(Error::HttpRequestDenied);
        };
        let entry = entry.clone();
        Ok((grant, Target { scheme, host, port, entry }))
    }
}

/// Writes one line to the guest's stderr, as far as its cap leaves room (the sandbox keeps
/// one byte past the cap to detect overflow; a note never takes it).
pub(super) fn note(stderr: &MemoryOutputPipe, line: String) {
    let mut stderr = stderr.clone();
    let room = stderr.check_write().unwrap_or(0).saturating_sub(1);
    let mut line = format!("jobhost: {line}\n").into_bytes();
    line.truncate(room);
    if !line.is_empty() {
        let _ = stderr.write(Bytes::from(line));
    }
}

/// Where an admitted request goes, and the entry that admitted it.
struct Target {
    scheme: Scheme,
    host: String,
    port: u16,
    entry: AllowedHost,
}

/// The URI without the parts that may carry secrets: user information and query.
fn shown(uri: &http::Uri) -> String {
    let host_and_port = uri.authority().map_or("?", |authority| {
        authority.as_str().rsplit_once('@').map_or(authority.as_str(), |(_userinfo, host)| host)
    });
    format!("{}://{host_and_port}{}", uri.scheme_str().unwrap_or("?"), uri.path())
}

impl WasiHttpHooks for Outbound {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        super::host_memory::BODY_CHUNK
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<Sent, Error>> + Send> {
        drop(fut);
        let admitted = self.admit(request.uri());
        let stderr = self.stderr.clone();
        Box::new(async move {
            let (grant, target) = admitted?;
            let deadline = Instant::now() + grant.timeout.0;
            let connect_by =
                options.and_then(|o| o.connect_timeout).map_or(deadline, |t| deadline.min(Instant::now() + t));
            let shown = shown(request.uri());
            let sent = tokio::time::timeout_at(connect_by, connect(&target)).await;
            let stream = match sent {
                Err(_elapsed) => Err(Error::ConnectionTimeout),
                Ok(Err(Refused::Prohibited(address))) => {
                    note(
                        &stderr,
                        format!(
                            "request to {shown} denied: {} resolves to {address}, a loopback, private or \
                             link-local address; only an allow entry naming that address itself (e.g. \
                             \"{}\") reaches it",
                            target.host,
                            SocketAddr::new(address, target.port)
                        ),
                    );
                    Err(Error::DestinationIpProhibited)
                }
                Ok(Err(Refused::Failed(err))) => Err(err),
                Ok(Ok(stream)) => Ok(stream),
            }?;
            let cap = ResponseCap { max: grant.max_response.0, shown, stderr };
            exchange(request, stream, deadline, cap).await
        })
    }
}

enum Refused {
    Prohibited(IpAddr),
    Failed(Error),
}

/// Resolves the target, checks its addresses, and connects (with TLS for `https`).
async fn connect(target: &Target) -> Result<Box<dyn Stream>, Refused> {
    let bare_host = target.host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = match bare_host.parse::<IpAddr>() {
        Ok(address) => vec![SocketAddr::new(address, target.port)],
        Err(_) => tokio::net::lookup_host((bare_host, target.port))
            .await
            .map_err(|err| Refused::Failed(Error::DnsError { rcode: Some(err.to_string()), info_code: None }))?
            .collect(),
    };
    // Every address must pass, not only the first: a name that resolves to a public and a
    // private address is a rebinding attempt as often as not.
    if let Some(blocked) = addresses
        .iter()
        .map(SocketAddr::ip)
        .find(|&address| !grants::is_public(address) && !target.entry.names_address(address))
    {
        return Err(Refused::Prohibited(blocked));
    }
    let mut last_error = Error::DestinationNotFound;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                return match target.scheme {
                    Scheme::Http => Ok(Box::new(tcp)),
                    Scheme::Https => tls(bare_host, tcp).await.map_err(Refused::Failed),
                };
            }
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => last_error = Error::ConnectionRefused,
            Err(err) => last_error = Error::Connect(err),
        }
    }
    Err(Refused::Failed(last_error))
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

async fn tls(host: &str, tcp: TcpStream) -> Result<Box<dyn Stream>, Error> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    let name = match host.parse::<IpAddr>() {
        Ok(address) => rustls::pki_types::ServerName::from(address),
        Err(_) => {
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| Error::HttpRequestUriInvalid)?
        }
    };
    let stream =
        tokio_rustls::TlsConnector::from(Arc::clone(config)).connect(name, tcp).await.map_err(|err| {
            match err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(_)) => Error::TlsCertificateError,
                _ => Error::Tls(err),
            }
        })?;
    Ok(Box::new(stream))
}

/// Sends the request on `stream` and returns the response with a body capped in size and
/// bounded by `deadline`.
async fn exchange(
    mut request: http::Request<WasiBody>,
    stream: Box<dyn Stream>,
    deadline: Instant,
    cap: ResponseCap,
) -> Result<Sent, Error> {
    let (mut sender, connection) = tokio::time::timeout_at(
        deadline,
        hyper::client::conn::http1::Builder::new().handshake::<_, WasiBody>(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    // The request line carries only the path: scheme and authority are for proxies.
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;

    // The connection must be polled while the response head is awaited; afterwards it is
    // handed back to be driven while the guest reads the body.
    let mut connection = Box::pin(connection);
    let mut sending = Box::pin(tokio::time::timeout_at(deadline, sender.send_request(request)));
    let mut connection_done = false;
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = sending.as_mut().poll(cx) {
            return Poll::Ready(response);
        }
        if !connection_done && let Poll::Ready(ended) = connection.as_mut().poll(cx) {
            connection_done = true;
            if let Err(err) = ended {
                return Poll::Ready(Ok(Err(err)));
            }
        }
        Poll::Pending
    })
    .await
    .map_err(|_| Error::HttpResponseTimeout)??;
    let announced = response.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok());
    if let Some(length) = announced.filter(|&length| length > cap.max) {
        cap.exceeded(length);
        return Err(Error::HttpResponseBodySize(Some(length)));
    }
    let response = response.map(|incoming| {
        CappedBody { incoming, read: 0, cap, deadline: Box::pin(tokio::time::sleep_until(deadline)) }.boxed_unsync()
    });
    let drive: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(async move {
        if connection_done {
            return Ok(());
        }
        connection.await.map_err(Error::from)
    });
    Ok((response, drive))
}

/// The grant's `max_response`, and where to explain hitting it.
struct ResponseCap {
    max: u64,
    shown: String,
    stderr: MemoryOutputPipe,
}

impl ResponseCap {
    fn exceeded(&self, length: u64) {
        note(
            &self.stderr,
            format!(
                "response from {} cut: its body ({length} bytes so far or announced) is larger than \
                 http.max_response ({} bytes)",
                self.shown, self.max
            ),
        );
    }
}

/// A response body that ends in an error past `max_response` bytes or past the deadline.
struct CappedBody {
    incoming: Incoming,
    read: u64,
    cap: ResponseCap,
    deadline: Pin<Box<Sleep>>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Error::HttpResponseTimeout)));
        }
        let frame = ready!(Pin::new(&mut self.incoming).poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            let frame = frame.map_err(Error::from)?;
            if let Some(data) = frame.data_ref() {
                self.read += data.len() as u64;
                if self.read > self.cap.max {
                    self.cap.exceeded(self.read);
                    return Err(Error::HttpResponseBodySize(Some(self.read)));
                }
            }
            Ok(frame)
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_shows_no_user_information_or_query() {
        let shown = |uri: &str| shown(&uri.parse().unwrap());
        assert_eq!(
            shown("https://user:pa%40ss@api.example.com:8443/v1/items?token=abc#top"),
            "https://api.example.com:8443/v1/items"
        );
        assert_eq!(shown("http://token@[::1]/x?a=b"), "http://[::1]/x");
        assert_eq!(shown("http://example.com"), "http://example.com/");
    }
}
