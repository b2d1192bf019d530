//! Who may do what: the token, dashboard sessions, CSRF, read-only mode, and the checks
//! every request passes before it reaches a handler ([`guard`]).
//!
//! - With a token, API calls and scrapes carry it as `Authorization: Bearer …`; people sign
//!   in to the dashboard once with it and get a session cookie (HttpOnly, SameSite=Strict),
//!   a random id that says nothing about the token. Tokens are compared in constant time and
//!   never logged.
//! - Without a token the server listens on loopback only (`serve::run` refuses otherwise).
//!   A web page in the operator's browser could still send requests there, so requests must
//!   name a loopback `Host` (which defeats DNS rebinding), and changes must not come from a
//!   page of another origin.
//! - Every dashboard form that changes something carries a CSRF token tied to the session
//!   (or, without a token, to this server process).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use subtle::ConstantTimeEq;

use super::App;
use super::error::ApiError;
use crate::config::Config;

/// Shortest token accepted: a guessable token is no protection.
const MIN_TOKEN_CHARS: usize = 16;
/// How long a dashboard sign-in lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; signing in past it ends the oldest.
const MAX_SESSIONS: usize = 10_000;
pub const SESSION_COOKIE: &str = "jobhost_session";

/// The secret every request must show, when the server has one.
pub struct Token(String);

impl Token {
    /// The token, from the first of `--token-file`, `$JOBHOST_TOKEN` and `serve.token_file`
    /// (flags over the environment over the config, as for `--db`); `None` when none is set.
    pub fn resolve(config: &Config) -> Result<Option<Token>> {
        let by_flag = config.set_by_flag.contains_key("serve.token_file");
        let from_env = std::env::var("JOBHOST_TOKEN").ok().filter(|_| !by_flag);
        let (text, origin) = match (from_env, &config.serve.token_file) {
            (Some(text), _) => (text, "$JOBHOST_TOKEN".to_owned()),
            (None, Some(path)) => {
                let name = config.name("serve.token_file");
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

/// A random value no one can guess: 256 bits from the system's generator.
fn random_id() -> String {
    format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

struct Session {
    csrf: String,
    expires: Instant,
}

/// The access rules of one server.
pub struct Auth {
    token: Option<Token>,
    read_only: bool,
    sessions: Mutex<HashMap<String, Session>>,
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
    pub read_only: bool,
}

impl Auth {
    pub fn new(token: Option<Token>, read_only: bool) -> Auth {
        Auth { token, read_only, sessions: Mutex::new(HashMap::new()), open_csrf: random_id() }
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Starts a session when `offered` is the token; returns its cookie value.
    pub fn sign_in(&self, offered: &str) -> Option<String> {
        let token = self.token.as_ref()?;
        if !token.matches(offered.trim()) {
            return None;
        }
        let id = random_id();
        let mut sessions = self.sessions.lock().expect("never poisoned");
        let now = Instant::now();
        sessions.retain(|_, session| session.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(id, _)| id.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), Session { csrf: random_id(), expires: now + SESSION_LIFETIME });
        Some(id)
    }

    pub fn sign_out(&self, headers: &HeaderMap) {
        if let Some(id) = session_cookie(headers) {
            self.sessions.lock().expect("never poisoned").remove(id);
        }
    }

    /// The caller, if the request proves it may come in: always without a token; with one,
    /// by the bearer header, or (for the dashboard, not the API) a live session cookie.
    fn caller(&self, headers: &HeaderMap, api: bool) -> Option<Caller> {
        let read_only = self.read_only;
        let Some(token) = &self.token else {
            return Some(Caller { csrf: self.open_csrf.clone(), signed_in: false, read_only });
        };
        if let Some(offered) = bearer(headers) {
            return token.matches(offered).then(|| Caller { csrf: String::new(), signed_in: false, read_only });
        }
        if api {
            return None;
        }
        let id = session_cookie(headers)?;
        let sessions = self.sessions.lock().expect("never poisoned");
        let session = sessions.get(id).filter(|session| session.expires > Instant::now())?;
        Some(Caller { csrf: session.csrf.clone(), signed_in: true, read_only })
    }
}

impl Caller {
    /// Whether a form's CSRF field is this caller's; a bearer caller has no forms.
    pub fn csrf_matches(&self, offered: &str) -> bool {
        !self.csrf.is_empty() && bool::from(self.csrf.as_bytes().ct_eq(offered.as_bytes()))
    }
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
/// asking, and read-only mode. On success the [`Caller`] is handed to the handler.
pub async fn guard(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let api = is_api(&path);
    let refuse = |error: ApiError| -> Response {
        if api { error.into_response() } else { (error.status, error.message).into_response() }
    };
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
    if changes
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|value| value.to_str().ok())
        && !same_origin(origin, host)
    {
        return refuse(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "changes from a page of another site are refused",
        ));
    }
    if is_open(&path) {
        return next.run(request).await;
    }
    let Some(caller) = app.auth.caller(headers, api) else {
        if api {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server needs a token: send `Authorization: Bearer TOKEN`",
            )
            .into_response();
        }
        return Redirect::to("/login").into_response();
    };
    if changes && caller.read_only && path != "/logout" {
        return refuse(ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "this server is read-only (--read-only or serve.read_only): it serves reads only",
        ));
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
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

    #[test]
    fn only_the_token_signs_in_and_a_session_names_its_caller() {
        let auth = Auth::new(Some(Token("a-long-enough-token".into())), false);
        assert!(auth.sign_in("a-long-enough-tokeN").is_none());
        let id = auth.sign_in("a-long-enough-token").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("other=1; {SESSION_COOKIE}={id}").parse().unwrap());
        let caller = auth.caller(&headers, false).expect("the session lets the caller in");
        assert!(auth.caller(&headers, true).is_none(), "the API takes the bearer token only");
        assert!(caller.signed_in && caller.csrf_matches(&caller.csrf) && !caller.csrf_matches("guess"));
        auth.sign_out(&headers);
        assert!(auth.caller(&headers, false).is_none(), "signed out");
        let mut bearer = HeaderMap::new();
        bearer.insert(header::AUTHORIZATION, "Bearer a-long-enough-token".parse().unwrap());
        assert!(auth.caller(&bearer, true).is_some());
    }
}
