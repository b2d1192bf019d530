//! The built-in `echo` processor: returns its payload wrapped in a completion record.
//!
//! Contract (see `docs/processors.md`): the job's payload arrives on stdin, the result goes to
//! stdout, exit 0 is success. Output is `{"status":"completed","processed":true,"echo":<payload>}`.
//! If the payload is a JSON object with a numeric `delay_ms`, echo sleeps that long first, which
//! lets tests and demos produce slow jobs. A payload that is not JSON is the caller's mistake:
//! echo says so on stderr and exits 2.
//!
//! It runs for every job of the throughput benchmark, so it does one read, one parse and one write.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(err) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("echo: cannot read the payload from stdin: {err}");
        return ExitCode::from(2);
    }
    let payload: Value = match serde_json::from_slice(&input) {
        Ok(payload) => payload,
        Err(err) => {
            eprintln!("echo: the payload is not JSON ({err}); send a JSON document on stdin");
            return ExitCode::from(2);
        }
    };
    if let Some(delay) = payload.get("delay_ms") {
        match delay.as_f64().and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok()) {
            Some(pause) => std::thread::sleep(pause),
            None => {
                eprintln!("echo: delay_ms must be a non-negative number of milliseconds, got {delay}");
                return ExitCode::from(2);
            }
        }
    }
    let result = json!({"status": "completed", "processed": true, "echo": payload});
    // One buffer and one write: every fd_write is a host call.
    let mut out = serde_json::to_vec(&result).expect("a Value always serializes");
    out.push(b'\n');
    if let Err(err) = std::io::stdout().lock().write_all(&out) {
        eprintln!("echo: cannot write the result to stdout: {err}");
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}
