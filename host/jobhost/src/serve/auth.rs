//! Who may do what: the tokens, dashboard sessions, CSRF, read-only mode, the limit on
//! wrong tokens, the headers every answer carries, and the checks every request passes
//! before it reaches a handler ([`guard`]).
//!
//! - With a token, API calls and scrapes carry it as `Authorization: Bearer …`; people sign
//!   in to the dashboard once with it and get a session cookie (HttpOnly, SameSite=Strict),
//!   a random id that says nothing about the token. Tokens are compared in constant time and
//!   never logged. A second, read token (`serve.read_token_file`) reads the API, the
//!   dashboard and `/metrics`, and is refused every change.
//! - Wrong tokens (bearer or sign-in) are counted per client address; past
//!   [`FAILURE_BURST`] in a row the client is answered 429 with `Retry-After`, without a
//!   comparison, until its allowance comes back ([`FAILURE_REFILL`] per failure).
//! - Without a token the server listens on loopback only (`serve::run` refuses otherwise).
//!   A web page in the operator's browser could still send requests there, so requests must
//!   name a loopback `Host` (which defeats DNS rebinding), and changes must not come from a
//!   page of another origin (`Origin`) or another site (`Sec-Fetch-Site`).
//! - No page may frame the dashboard (so its buttons cannot be clicked through), and every
//!   answer forbids content sniffing and referrers to other sites ([`security_headers`]).
//! - Every dashboard form that changes something carries a CSRF token tied to the session
//!   (or, without a token, to this server process).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use jobhost_core::config::Config;

use super::App;
use super::error::ApiError;

/// Shortest token accepted: a guessable token is no protection.
const MIN_TOKEN_CHARS: usize = 16;
/// How long a dashboard sign-in lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; signing in past it ends the oldest.
const MAX_SESSIONS: usize = 10_000;
pub const SESSION_COOKIE: &str = "jobhost_session";
/// Wrong tokens a client may offer in a row before it must wait.
const FAILURE_BURST: u32 = 10;
/// How long it takes a client to earn back one wrong token.
const FAILURE_REFILL: Duration = Duration::from_secs(6);
/// Most client addresses whose failures are remembered; beyond it, new addresses share one
/// allowance, so a flood of addresses costs bounded memory and gains no extra guesses.
const MAX_CLIENTS_TRACKED: usize = 4_096;

/// The policy every answer carries. The dashboard's script and styles are files of its own
/// (no inline code), so everything may come from this server only; nothing may frame it.
const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

/// A secret requests may show, when the server has one.
pub struct Token(String);

/// Where one of the server's tokens is set: its config key (and the flag that sets it) and
/// its environment variable.
struct TokenSetting {
    key: &'static str,
    env: &'static str,
}

const TOKEN: TokenSetting = TokenSetting { key: "serve.token_file", env: "JOBHOST_TOKEN" };
const READ_TOKEN: TokenSetting = TokenSetting { key: "serve.read_token_file", env: "JOBHOST_READ_TOKEN" };

impl Token {
    /// The token of `setting`, from the first of its flag, its environment variable and its
    /// config key (flags over the environment over the config, as for `--db`); `None` when
    /// none is set.
    fn resolve(config: &Config, setting: &TokenSetting, file: Option<&PathBuf>) -> Result<Option<Token>> {
        let by_flag = config.set_by_flag.contains_key(setting.key);
        let from_env = std::env::var(setting.env).ok().filter(|_| !by_flag);
        let (text, origin) = match (from_env, file) {
            (Some(text), _) => (text, format!("${}", setting.env)),
            (None, Some(path)) => {
                let name = config.name(setting.key);
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("cannot read {name} {}: give a readable file holding the token", path.display())
                })?;
                (text, format!("{name} {}", path.display()))
            }
            (None, None) => return Ok(None),
        };
        let token = text.trim();
        if token.chars().count() < MIN_TOKEN_CHARS || token.chars().any(char::is_control) {
            bail!(
                "the token in {origin} must be at least {MIN_TOKEN_CHARS} printable characters on one line: \
                 make one with `head -c 24 /dev/urandom | base64`"
            );
        }
        Ok(Some(Token(token.to_owned())))
    }

    /// Constant-time comparison, so response times do not reveal how much of a guess was right.
    fn matches(&self, offered: &str) -> bool {
        let offered = offered.as_bytes();
        let expected = self.0.as_bytes();
        // Lengths differ for almost every wrong guess; comparing equal-length digests keeps
        // even that out of the timing.
        use sha2::Digest;
        let (a, b) = (sha2::Sha256::digest(offered), sha2::Sha256::digest(expected));
        bool::from(a.ct_eq(&b))
    }
}

/// The server's tokens: the one that may do everything, and the one that may only read.
#[derive(Default)]
pub struct Tokens {
    full: Option<Token>,
    read: Option<Token>,
}

impl Tokens {
    /// Both tokens as configured (see [`Token::resolve`]), checked alike. A read token needs
    /// the full token beside it (without one the server is open to everyone on loopback) and
    /// must differ from it.
    pub fn resolve(config: &Config) -> Result<Tokens> {
        let serve = &config.serve;
        let full = Token::resolve(config, &TOKEN, serve.token_file.as_ref())?;
        let read = Token::resolve(config, &READ_TOKEN, serve.read_token_file.as_ref())?;
        match (&full, &read) {
            (None, Some(_)) => bail!(
                "{} is set but the server has no token: a read token only narrows a server that needs one \
                 (pass --token-file FILE, set $JOBHOST_TOKEN, or set serve.token_file)",
                config.name(READ_TOKEN.key)
            ),
            (Some(full), Some(read)) if full.0 == read.0 => bail!(
                "the read token ({}) is the token itself: give it a token of its own",
                config.name(READ_TOKEN.key)
            ),
            _ => Ok(Tokens { full, read }),
        }
    }

    pub fn any(&self) -> bool {
        self.full.is_some()
    }

    /// What `offered` lets its bearer do; `None` when it is neither token. Both comparisons
    /// are always made, so timing does not tell which token a guess was near.
    fn access(&self, offered: &str) -> Option<ReadOnly> {
        let full = self.full.as_ref().is_some_and(|token| token.matches(offered));
        let read = self.read.as_ref().is_some_and(|token| token.matches(offered));
        match (full, read) {
            (true, _) => Some(ReadOnly(false)),
            (false, true) => Some(ReadOnly(true)),
            (false, false) => None,
        }
    }
}

/// Whether a caller may only read.
#[derive(Clone, Copy)]
struct ReadOnly(bool);

/// A random value no one can guess: 256 bits from the system's generator.
fn random_id() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

struct Session {
    csrf: String,
    expires: Instant,
    /// Signed in with the read token.
    read_only: bool,
}

/// The address a request came from, as [`guard`] saw it (`None` where the server gave none).
#[derive(Debug, Clone, Copy)]
pub struct Client(Option<IpAddr>);

impl Client {
    fn of(request: &Request) -> Client {
        Client(request.extensions().get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(peer)| peer.ip()))
    }

    /// Whose allowance the client's failures count against: one address (an IPv6 client
    /// by its /64, which one machine usually has whole); clients of unknown address share
    /// the [`OVERFLOW`] one.
    fn key(self) -> IpAddr {
        match self.0.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V6(ip)) => IpAddr::V6(Ipv6Addr::from(ip.to_bits() & !u128::from(u64::MAX))),
            Some(ip) => ip,
            None => OVERFLOW,
        }
    }
}

/// A client's allowance of wrong tokens: a token bucket holding up to [`FAILURE_BURST`].
#[derive(Clone, Copy)]
struct Allowance {
    left: f64,
    at: Instant,
}

impl Allowance {
    fn left_at(self, now: Instant) -> f64 {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() / FAILURE_REFILL.as_secs_f64();
        (self.left + earned).min(f64::from(FAILURE_BURST))
    }
}

/// Wrong tokens counted per client; bounded by [`MAX_CLIENTS_TRACKED`].
#[derive(Default)]
struct Failures {
    clients: Mutex<HashMap<IpAddr, Allowance>>,
}

/// Where the clients beyond [`MAX_CLIENTS_TRACKED`] are counted together.
const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl Failures {
    /// How long `client` must wait before a token of theirs is compared again; `None` when
    /// it may be compared now.
    fn wait(&self, client: Client, now: Instant) -> Option<Duration> {
        let clients = self.clients.lock().expect("never poisoned");
        let key = client.key();
        let allowance =
            clients.get(&key).or_else(|| clients.get(&OVERFLOW).filter(|_| clients.len() >= MAX_CLIENTS_TRACKED))?;
        let left = allowance.left_at(now);
        (left < 1.0).then(|| FAILURE_REFILL.mul_f64(1.0 - left))
    }

    /// Counts one wrong token against `client`.
    fn record(&self, client: Client, now: Instant) {
        let mut clients = self.clients.lock().expect("never poisoned");
        let mut key = client.key();
        if !clients.contains_key(&key) && clients.len() >= MAX_CLIENTS_TRACKED {
            // Clients whose allowance is whole again are as good as forgotten.
            clients.retain(|_, allowance| allowance.left_at(now) < f64::from(FAILURE_BURST));
            if clients.len() >= MAX_CLIENTS_TRACKED {
                key = OVERFLOW;
            }
        }
        let full = Allowance { left: f64::from(FAILURE_BURST), at: now };
        let allowance = clients.entry(key).or_insert(full);
        *allowance = Allowance { left: (allowance.left_at(now) - 1.0).max(0.0), at: now };
    }
}

/// The access rules of one server.
pub struct Auth {
    tokens: Tokens,
    read_only: bool,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Failures,
    /// Without a token there are no sessions; forms carry this process's CSRF token.
    open_csrf: String,
}

/// Who is asking, once [`guard`] let the request through; handlers read it to fill in forms.
#[derive(Clone)]
pub struct Caller {
    /// The CSRF token this caller's forms must carry.
    pub csrf: String,
    /// Whether this caller can sign out (there is a token and a session).
    pub signed_in: bool,
    /// The server is read-only, or the caller came with the read token.
    pub read_only: bool,
    /// The caller came with the read token (the server itself may change jobs).
    read_token: bool,
}

/// Why [`Auth::caller`] let a request not through.
enum Denied {
    /// No token, or a wrong one: the request must show the token.
    Unauthorized,
    /// Too many wrong tokens from this client: it may try again after this long.
    Wait(Duration),
}

/// The outcome of a dashboard sign-in.
pub enum SignIn {
    /// Signed in: the session cookie's value.
    Session(String),
    Wrong,
    /// Too many wrong tokens from this client: it may try again after this long.
    Wait(Duration),
}

impl Auth {
    pub fn new(tokens: Tokens, read_only: bool) -> Auth {
        Auth {
            tokens,
            read_only,
            sessions: Mutex::new(HashMap::new()),
            failures: Failures::default(),
            open_csrf: random_id(),
        }
    }

    pub fn has_token(&self) -> bool {
        self.tokens.any()
    }

    /// What a token offered by `client` lets it do, unless the client must first wait; a
    /// wrong token counts against the client.
    fn check(&self, offered: &str, client: Client) -> Result<ReadOnly, Denied> {
        let now = Instant::now();
        if let Some(wait) = self.failures.wait(client, now) {
            return Err(Denied::Wait(wait));
        }
        self.tokens.access(offered).ok_or_else(|| {
            self.failures.record(client, now);
            Denied::Unauthorized
        })
    }

    /// Starts a session when `offered` is a token; the cookie value is in [`SignIn::Session`].
    pub fn sign_in(&self, offered: &str, client: Client) -> SignIn {
        let read_only = match self.check(offered.trim(), client) {
            Ok(ReadOnly(read_only)) => read_only,
            Err(Denied::Unauthorized) => return SignIn::Wrong,
            Err(Denied::Wait(wait)) => return SignIn::Wait(wait),
        };
        let id = random_id();
        let mut sessions = self.sessions.lock().expect("never poisoned");
        let now = Instant::now();
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), Session { csrf: random_id(), expires: now + SESSION_LIFETIME, read_only });
        SignIn::Session(id)
    }

    pub fn sign_out(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            self.sessions.lock().expect("never poisoned").remove(id);
        }
    }

    /// The caller, if the request proves it may come in: always without a token; with one,
    /// by the bearer header, or (for the dashboard, not the API) a live session cookie.
    fn caller(&self, headers: &HeaderMap, api: bool, client: Client) -> Result<Caller, Denied> {
        let caller = |csrf: String, signed_in: bool, read_token: bool| Caller {
            csrf,
            signed_in,
            read_only: self.read_only || read_token,
            read_token,
        };
        if !self.has_token() {
            return Ok(caller(self.open_csrf.clone(), false, false));
        }
        if let Some(offered) = bearer(headers) {
            let ReadOnly(read_token) = self.check(offered, client)?;
            return Ok(caller(String::new(), false, read_token));
        }
        if api {
            return Err(Denied::Unauthorized);
        }
        let id = session_cookie(headers).ok_or(Denied::Unauthorized)?;
        let sessions = self.sessions.lock().expect("never poisoned");
        let session =
            sessions.get(id).filter(|session| session.expires > Instant::now()).ok_or(Denied::Unauthorized)?;
        Ok(caller(session.csrf.clone(), true, session.read_only))
    }
}

impl Caller {
    /// Whether a form's CSRF field is this caller's; a bearer caller has no forms.
    pub fn csrf_matches(&self, offered: &str) -> bool {
        !self.csrf.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(offered.as_bytes()))
    }
}

/// Whole seconds to wait, rounded up, for a `Retry-After` header.
pub fn retry_after(wait: Duration) -> HeaderValue {
    HeaderValue::from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
}

/// The answer to a form without its caller's CSRF token.
pub fn csrf_refused() -> Response {
    (StatusCode::FORBIDDEN, "This form has expired or came from another site: reload the page and try again.")
        .into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value)
}

/// The host part of a `Host` header or of an origin URL, without the port.
fn host_of(authority: &str) -> &str {
    let authority = authority.split_once("://").map_or(authority, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    if let Some(bracketed) = authority.strip_prefix('[') {
        return bracketed.split(']').next().unwrap_or(bracketed);
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

/// Whether a browser's `Origin` (`http://host:port`) is this server as the `Host` header
/// names it: the same host and port (a page on another local port is another site).
fn same_origin(origin: &str, host: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else { return false };
    let default_port = if scheme.eq_ignore_ascii_case("https") { ":443" } else { ":80" };
    let normal = |authority: &str| {
        let authority = authority.trim_end_matches('/').to_ascii_lowercase();
        authority.strip_suffix(default_port).map(str::to_owned).unwrap_or(authority)
    };
    normal(authority) == normal(host)
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Whether the path is the machine API (JSON errors, bearer tokens) rather than the dashboard.
pub fn is_api(path: &str) -> bool {
    path.starts_with("/api/") || path == "/metrics"
}

/// Paths anyone may reach: the health and readiness probes, the sign-in page and the
/// dashboard's assets.
fn is_open(path: &str) -> bool {
    path == "/healthz" || path == "/readyz" || path == "/login" || path.starts_with("/assets/")
}

/// The checks every request passes: the host it names, where a change comes from, who is
/// asking, and read-only mode. On success the [`Caller`] is handed to the handler; every
/// request, open paths included, gets its [`Client`].
pub async fn guard(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let client = Client::of(&request);
    request.extensions_mut().insert(client);
    match check(&app, &request, client) {
        Ok(Some(caller)) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Ok(None) => next.run(request).await,
        Err(refusal) => {
            read_to_the_end(request, app.config.serve.max_body.0).await;
            *refusal
        }
    }
}

/// The checks of [`guard`]: the [`Caller`] of a request that passes (none for an open path),
/// or the answer to one that does not.
fn check(app: &App, request: &Request, client: Client) -> Result<Option<Caller>, Box<Response>> {
    let path = request.uri().path();
    let api = is_api(path);
    let refuse = |error: ApiError| Err(Box::new(refusal(error, api)));
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|value| value.to_str().ok()).unwrap_or("");
    if !app.auth.has_token() && !is_loopback_name(host_of(host)) {
        return refuse(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this server has no token, so it only answers requests addressed to localhost or 127.0.0.1",
        ));
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if changes && from_another_site(headers, host) {
        return refuse(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "changes from a page of another site are refused",
        ));
    }
    if is_open(path) {
        return Ok(None);
    }
    let caller = match app.auth.caller(headers, api, client) {
        Ok(caller) => caller,
        Err(Denied::Wait(wait)) => return Err(Box::new(too_many_failures(api, wait))),
        Err(Denied::Unauthorized) if api => {
            return Err(Box::new(
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "this server needs a token: send `Authorization: Bearer TOKEN`",
                )
                .into_response(),
            ));
        }
        Err(Denied::Unauthorized) => return Err(Box::new(Redirect::to("/login").into_response())),
    };
    if changes && caller.read_only && path != "/logout" {
        let message = if caller.read_token && !app.auth.read_only {
            "this token is the read token (serve.read_token_file): it reads but changes nothing; \
             send the token (serve.token_file) to change jobs"
        } else {
            "this server is read-only (--read-only or serve.read_only): it serves reads only"
        };
        return refuse(ApiError::new(StatusCode::FORBIDDEN, "read_only", message));
    }
    Ok(Some(caller))
}

/// Reads the body of a refused request (no more than `serve.max_body`, which the connection
/// already holds its declared length to) so that the connection stays usable: closing it
/// with bytes unread makes the kernel reset it, and the client then sees "connection reset"
/// instead of the refusal, or finds its next request on a closed keep-alive connection.
async fn read_to_the_end(request: Request, max_body: u64) {
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    // A body that fails or runs over is hyper's to close the connection for; the refusal
    // stands either way.
    let _ = axum::body::to_bytes(request.into_body(), limit).await;
}

/// Whether a request comes from a page of another origin (its `Origin` names another host
/// or port) or, by the browser's own word (`Sec-Fetch-Site`, sent even where `Origin` is
/// not), of another site, which includes another port of this host.
fn from_another_site(headers: &HeaderMap, host: &str) -> bool {
    let text = |name| headers.get(name).and_then(|value: &HeaderValue| value.to_str().ok());
    let other_origin = text(header::ORIGIN.as_str()).is_some_and(|origin| !same_origin(origin, host));
    let other_site = text("sec-fetch-site").is_some_and(|site| matches!(site, "cross-site" | "same-site"));
    other_origin || other_site
}

/// The answer to a client that offered too many wrong tokens: 429, and when to come back.
pub fn too_many_failures(api: bool, wait: Duration) -> Response {
    let message = format!(
        "too many wrong tokens from this address ({FAILURE_BURST} in a row): wait {} s before trying again",
        retry_after(wait).to_str().unwrap_or("a few")
    );
    let mut response = refusal(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message), api);
    response.headers_mut().insert(header::RETRY_AFTER, retry_after(wait));
    response
}

/// A refusal as its caller reads it: the API's JSON error, or its message as text for the
/// dashboard.
fn refusal(error: ApiError, api: bool) -> Response {
    if api { error.into_response() } else { (error.status, error.message).into_response() }
}

/// Adds the headers every answer carries: no framing (`frame-ancestors`, and
/// `X-Frame-Options` for older browsers), no content from elsewhere, no MIME sniffing, and
/// no `Referer` leaking job ids to other sites. (`same-origin`, not `no-referrer`: under
/// `no-referrer` browsers send `Origin: null` with the dashboard's own form posts, which
/// [`guard`] must refuse as it refuses a sandboxed frame's.)
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_read_from_host_headers_and_origins() {
        assert_eq!(host_of("127.0.0.1:7700"), "127.0.0.1");
        assert_eq!(host_of("http://localhost:7700"), "localhost");
        assert_eq!(host_of("[::1]:7700"), "::1");
        assert_eq!(host_of("https://evil.example/x"), "evil.example");
        assert!(is_loopback_name("::1") && is_loopback_name("LOCALHOST") && !is_loopback_name("evil.example"));
        assert!(same_origin("http://127.0.0.1:7700", "127.0.0.1:7700"));
        assert!(same_origin("http://LOCALHOST", "localhost:80"));
        assert!(!same_origin("http://127.0.0.1:9999", "127.0.0.1:7700"), "another port is another site");
        assert!(!same_origin("null", "127.0.0.1:7700"));
    }

    fn tokens(full: &str, read: Option<&str>) -> Tokens {
        Tokens { full: Some(Token(full.into())), read: read.map(|read| Token(read.into())) }
    }

    const HERE: Client = Client(None);

    fn signed_in(auth: &Auth, offered: &str) -> Option<String> {
        match auth.sign_in(offered, HERE) {
            SignIn::Session(id) => Some(id),
            SignIn::Wrong | SignIn::Wait(_) => None,
        }
    }

    #[test]
    fn only_the_token_signs_in_and_a_session_names_its_caller() {
        let auth = Auth::new(tokens("a-long-enough-token", None), false);
        assert!(signed_in(&auth, "a-long-enough-tokeN").is_none());
        let id = signed_in(&auth, "a-long-enough-token").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("other=1; {SESSION_COOKIE}={id}").parse().unwrap());
        let caller = auth.caller(&headers, false, HERE).ok().expect("the session lets the caller in");
        assert!(auth.caller(&headers, true, HERE).is_err(), "the API takes the bearer token only");
        assert!(caller.signed_in && caller.csrf_matches(&caller.csrf) && !caller.csrf_matches("guess"));
        assert!(!caller.read_only);
        auth.sign_out(&headers);
        assert!(auth.caller(&headers, false, HERE).is_err(), "signed out");
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer a-long-enough-token".parse().unwrap());
        assert!(auth.caller(&bearer, true, HERE).is_ok());
    }

    #[test]
    fn the_read_token_reads_only_by_bearer_and_by_session() {
        let auth = Auth::new(tokens("the-full-token-0123", Some("the-read-token-0123")), false);
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer the-read-token-0123".parse().unwrap());
        let caller = auth.caller(&bearer, true, HERE).ok().unwrap();
        assert!(caller.read_only && caller.read_token);
        let id = signed_in(&auth, "the-read-token-0123").expect("the read token signs in");
        let mut cookie = HeaderMap::new();
        cookie.insert(header::COOKIE, format!("{SESSION_COOKIE}={id}").parse().unwrap());
        assert!(auth.caller(&cookie, false, HERE).ok().unwrap().read_only, "a read-token session is read-only");
        let id = signed_in(&auth, "the-full-token-0123").unwrap();
        cookie.insert(header::COOKIE, format!("{SESSION_COOKIE}={id}").parse().unwrap());
        assert!(!auth.caller(&cookie, false, HERE).ok().unwrap().read_only);
    }

    fn client(ip: &str) -> Client {
        Client(Some(ip.parse().unwrap()))
    }

    #[test]
    fn wrong_tokens_are_limited_per_client_and_the_allowance_comes_back() {
        let failures = Failures::default();
        let start = Instant::now();
        let (one, other) = (client("192.0.2.1"), client("192.0.2.2"));
        for _ in 0..FAILURE_BURST {
            assert_eq!(failures.wait(one, start), None);
            failures.record(one, start);
        }
        let wait = failures.wait(one, start).expect("past the burst the client waits");
        assert_eq!(wait, FAILURE_REFILL);
        assert_eq!(failures.wait(other, start), None, "another client is not held back");
        assert_eq!(failures.wait(one, start + FAILURE_REFILL / 2), Some(FAILURE_REFILL / 2));
        assert_eq!(failures.wait(one, start + FAILURE_REFILL), None, "one more try after the refill time");
        failures.record(one, start + FAILURE_REFILL);
        assert!(failures.wait(one, start + FAILURE_REFILL).is_some());
        // An IPv6 client is one /64; an IPv4 address mapped into IPv6 is that IPv4 address.
        assert_eq!(client("2001:db8::1").key(), client("2001:db8::ffff:2").key());
        assert_ne!(client("2001:db8::1").key(), client("2001:db8:0:1::1").key());
        assert_eq!(client("::ffff:192.0.2.1").key(), one.key());
    }

    #[test]
    fn a_flood_of_addresses_shares_one_allowance_past_the_table_size() {
        let failures = Failures::default();
        let now = Instant::now();
        for n in 0..MAX_CLIENTS_TRACKED as u32 {
            failures.record(Client(Some(IpAddr::V4(n.into()))), now);
        }
        let newcomers = (0..FAILURE_BURST).map(|n| Client(Some(IpAddr::V4((u32::MAX - n).into()))));
        for newcomer in newcomers {
            assert_eq!(failures.wait(newcomer, now), None);
            failures.record(newcomer, now);
        }
        assert!(failures.wait(client("198.51.100.7"), now).is_some(), "the newcomers' allowance is shared");
        assert!(failures.clients.lock().unwrap().len() <= MAX_CLIENTS_TRACKED + 1, "memory stays bounded");
        // Once the tracked clients' allowances are whole again, a newcomer gets its own.
        let later = now + FAILURE_REFILL * FAILURE_BURST;
        failures.record(client("198.51.100.8"), later);
        assert!(failures.clients.lock().unwrap().contains_key(&client("198.51.100.8").key()));
    }
}
