//! An example jobhost processor: a WASI preview 1 command module (`wasm32-wasip1`) in Rust.
//!
//! Build it with `cargo build --release --target wasm32-wasip1` (or `scripts/components build
//! OUT_DIR`) and drop `example-rust-module.wasm` into the processors folder under the name you
//! want the processor to have.
//!
//! It is the preview 1 twin of `processors/examples/rust-component`, with one difference:
//! **WASI preview 1 has no network**, so a module cannot make the HTTP request. It reads the
//! same payload (`{"url": "http://…"}`), and instead of fetching the URL it echoes the payload:
//!
//! `{"language": "rust", "status": null, "body": null, "echo": <payload>, "greeting": $GREETING or null}`
//!
//! Write a component (wasm32-wasip2, WASI 0.2) when a processor needs `wasi:http`. Everything
//! else here, stdin, stdout, stderr, the environment and the exit status, is plain Rust std,
//! exactly as in a native program.

use std::io::{Read, Write};
use std::process::ExitCode;

use serde_json::{Value, json};

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("cannot read the payload from stdin: {err}");
        return ExitCode::from(2);
    }
    let payload: Value = match serde_json::from_slice(&input) {
        Ok(payload) => payload,
        Err(err) => {
            eprintln!("the payload is not JSON: {err}");
            return ExitCode::from(2);
        }
    };

    // The environment the host gave this processor: only what its config grants
    // (`env: {GREETING: hi}`, `secrets: [API_TOKEN]`), never the host's own. `API_TOKEN` would
    // authenticate the HTTP request this module cannot make, so it is not read here.
    let greeting = std::env::var("GREETING").ok();

    let result = json!({
        "language": "rust",
        // No HTTP in WASI preview 1: no status and no body.
        "status": null,
        "body": null,
        "echo": payload,
        "greeting": greeting,
    });
    let mut out = serde_json::to_vec(&result).expect("a Value always serializes");
    out.push(b'\n');
    if let Err(err) = std::io::stdout().write_all(&out) {
        eprintln!("cannot write the result to stdout: {err}");
        return ExitCode::from(2);
    }
    // On wasm32-wasip1 an `ExitCode` (or `std::process::exit(n)`) reaches the host as n.
    ExitCode::SUCCESS
}
