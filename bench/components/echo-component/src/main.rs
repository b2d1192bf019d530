//! The built-in `echo` processor (processors/echo) as a WASI 0.2 component (wasm32-wasip2),
//! for the benchmark: the same code, so that a module and a component compare one for one.
//! Built as `echo-component.wasm` by `scripts/components build OUT_DIR`.
//!
//! Output is `{"status":"completed","processed":true,"echo":<payload>}`. A numeric `delay_ms`
//! in the payload makes it sleep that long first. A payload that is not JSON is written to
//! stderr and the exit status is 2, through `wasi:cli/exit.exit-with-code`: on wasm32-wasip2
//! Rust's `ExitCode::from(2)` would reach the host as 1.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};

fn main() {
    let mut input = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut input) {
        fail(&format!("echo: cannot read the payload from stdin: {err}"));
    }
    let payload: Value = match serde_json::from_slice(&input) {
        Ok(payload) => payload,
        Err(err) => fail(&format!("echo: the payload is not JSON ({err}); send a JSON document on stdin")),
    };
    if let Some(delay) = payload.get("delay_ms") {
        match delay.as_f64().and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok()) {
            Some(pause) => std::thread::sleep(pause),
            None => fail(&format!("echo: delay_ms must be a non-negative number of milliseconds, got {delay}")),
        }
    }
    let result = json!({"status": "completed", "processed": true, "echo": payload});
    // One buffer and one write: every write is a host call.
    let mut out = serde_json::to_vec(&result).expect("a Value always serializes");
    out.push(b'\n');
    if let Err(err) = std::io::stdout().lock().write_all(&out) {
        fail(&format!("echo: cannot write the result to stdout: {err}"));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    wasip2::cli::exit::exit_with_code(2);
    unreachable!("exit-with-code does not return");
}
