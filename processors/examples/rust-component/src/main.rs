//! An example jobhost processor: a WASI 0.2 component, written in Rust, that makes one
//! outgoing HTTP request.
//!
//! Build it with `cargo build --release --target wasm32-wasip2` (or `scripts/components build
//! OUT_DIR`) and drop `example-rust-component.wasm` into the processors folder under the name
//! you want the processor to have.
//!
//! The contract is that of every processor: the job's payload arrives on stdin, the result
//! leaves on stdout, and exit status 0 means success. This one
//!
//! - reads `{"url": "http://HOST[:PORT]/PATH"}` from stdin;
//! - sends `GET url` through `wasi:http/outgoing-handler`, with `authorization: Bearer
//!   $API_TOKEN` when the environment variable `API_TOKEN` is set (give it to the processor as
//!   a secret in jobhost's config: `secrets: [API_TOKEN]`);
//! - writes `{"language": "rust", "status": 200, "body": "…", "greeting": $GREETING or null}`
//!   (`GREETING` is plain configuration: `env: {GREETING: hi}`);
//! - when the request fails, writes `request to URL failed: ERROR` on stderr and exits 2. The
//!   error is the WASI HTTP error code, e.g. `ErrorCode::HttpRequestDenied` when jobhost's
//!   `http.allow` for this processor does not grant the URL's host.
//!
//! Standard input, output, the environment and exiting go through Rust's std, which targets
//! WASI 0.2 on wasm32-wasip2. HTTP and `exit-with-code` come from the `wasip2` crate's bindings.

use std::io::{Read, Write};

use serde_json::{Value, json};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};

fn main() {
    let mut input = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut input) {
        fail(&format!("cannot read the payload from stdin: {err}"));
    }
    let payload: Value =
        serde_json::from_slice(&input).unwrap_or_else(|err| fail(&format!("the payload is not JSON: {err}")));
    let Some(url) = payload.get("url").and_then(Value::as_str) else {
        fail("the payload has no \"url\" string, e.g. {\"url\": \"http://127.0.0.1:8000/\"}");
    };

    // `std::env::var` reads the environment the host gave this processor (`wasi:cli/environment`):
    // only what its config grants, never the host's own environment.
    let token = std::env::var("API_TOKEN").ok();
    let greeting = std::env::var("GREETING").ok();

    let (status, body) = match get(url, token.as_deref()) {
        Ok(response) => response,
        Err(err) => fail(&format!("request to {url} failed: {err}")),
    };

    let result = json!({
        "language": "rust",
        "status": status,
        "body": String::from_utf8_lossy(&body),
        "greeting": greeting,
    });
    let mut out = serde_json::to_vec(&result).expect("a Value always serializes");
    out.push(b'\n');
    if let Err(err) = std::io::stdout().write_all(&out) {
        fail(&format!("cannot write the result to stdout: {err}"));
    }
}

/// Sends `GET url` and returns the response's status and body.
fn get(url: &str, token: Option<&str>) -> Result<(u16, Vec<u8>), String> {
    let (scheme, authority, path) = split_url(url)?;

    let mut headers = vec![("accept".to_string(), b"application/json, */*".to_vec())];
    if let Some(token) = token {
        headers.push(("authorization".to_string(), format!("Bearer {token}").into_bytes()));
    }
    let headers = Fields::from_list(&headers).map_err(|err| format!("invalid header: {err:?}"))?;

    let request = OutgoingRequest::new(headers);
    // The setters refuse only values that are not valid in an HTTP request.
    request.set_method(&Method::Get).map_err(|()| "invalid method")?;
    request.set_scheme(Some(&scheme)).map_err(|()| "invalid scheme")?;
    request.set_authority(Some(authority)).map_err(|()| format!("invalid host {authority:?}"))?;
    request.set_path_with_query(Some(path)).map_err(|()| format!("invalid path {path:?}"))?;
    // A GET has no body: not asking for one (`request.body()`) sends an empty one.

    // `handle` may refuse the request at once; otherwise the response arrives later, through
    // a future. Blocking on its pollable is the synchronous way to wait for it.
    let future = outgoing_handler::handle(request, None).map_err(describe)?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(describe(code)),
        // `get` is `None` only before the pollable is ready, `Err` only on a second `get`.
        Some(Err(())) | None => return Err("the response future was not ready".into()),
    };
    let status = response.status();

    // The body is a stream, a child of `incoming-body`: both are dropped, stream first, once
    // it has been read to its end. The `Read` impl blocks on the stream's pollable.
    let incoming = response.consume().map_err(|()| "the response has no body")?;
    let mut body = Vec::new();
    {
        let mut stream = incoming.stream().map_err(|()| "the response body was already read")?;
        stream.read_to_end(&mut body).map_err(|err| format!("reading the body: {err}"))?;
    }
    drop(incoming);
    Ok((status, body))
}

/// The WASI HTTP error code, as its Rust name: `ErrorCode::HttpRequestDenied`,
/// `ErrorCode::ConnectionRefused`, `ErrorCode::DnsError(…)`, ….
fn describe(code: ErrorCode) -> String {
    format!("{code:?}")
}

/// Splits `http://host:port/path?query` into its scheme, authority and path with query. Only
/// `http` and `https` URLs, which is all `wasi:http` sends.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), String> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        return Err(format!("not an http:// or https:// URL: {url:?}"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    // The fragment is never sent; an empty path is "/".
    let path = path.split('#').next().unwrap_or_default();
    Ok((scheme, authority, if path.is_empty() { "/" } else { path }))
}

/// Writes one line to stderr and exits with status 2.
///
/// `std::process::exit(2)` would reach the host as 1 on wasm32-wasip2: Rust's std only knows
/// `wasi:cli/exit.exit(ok | err)`. `exit-with-code` passes the number itself.
fn fail(message: &str) -> ! {
    eprintln!("{message}");
    wasip2::cli::exit::exit_with_code(2);
    unreachable!("exit-with-code does not return");
}
