//! Builds the built-in `echo` processor (`processors/echo`) for `wasm32-wasip1` and hands its
//! path to the host as `ECHO_WASM`, so `include_bytes!(env!("ECHO_WASM"))` ships it inside the
//! binary and `echo` works without copying any file.
//!
//! It runs a nested `cargo build` with a target dir of its own under `OUT_DIR`: the outer build
//! holds the lock on `target/`, so sharing it would deadlock. The nested build must not inherit
//! settings meant for the host (rustflags like `-C target-cpu=native`, a forced target dir,
//! clippy's wrapper), so those variables are removed; the jobserver (`CARGO_MAKEFLAGS`) is kept
//! so the nested build shares the outer build's CPU budget.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-wasip1";

/// Variables that would make the nested build compile with the host's settings.
const HOST_ONLY_VARS: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "RUSTC_WORKSPACE_WRAPPER",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.ancestors().nth(2).expect("host/sandbox/ sits inside the workspace").to_path_buf();
    let echo_dir = workspace.join("processors/echo");
    println!("cargo:rerun-if-changed={}", echo_dir.join("src").display());
    println!("cargo:rerun-if-changed={}", echo_dir.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", echo_dir.join("build.rs").display());
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());

    require_wasm_target();

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("echo-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "-p", "echo", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        // The shipped processor needs no debug info; dropping it keeps the module (and the
        // host binary it is embedded in) small and quick to compile.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        // A build script's stdout is read by cargo as instructions; keep the nested build's
        // chatter on stderr.
        .stdout(Stdio::from(std::io::stderr()));
    for var in HOST_ONLY_VARS {
        command.env_remove(var);
    }
    let status = command.status().unwrap_or_else(|err| {
        panic!("cannot start cargo to build the echo processor: {err}");
    });
    if !status.success() {
        panic!(
            "building the echo processor (processors/echo) for {TARGET} failed ({status}); \
             its errors are above"
        );
    }

    let wasm = target_dir.join(TARGET).join("release/echo.wasm");
    assert!(wasm.is_file(), "the echo build succeeded but {} is missing", wasm.display());
    println!("cargo:rustc-env=ECHO_WASM={}", wasm.display());
}

/// Fails early, with the fix, when the toolchain has no standard library for the wasm target;
/// otherwise cargo's own error ("can't find crate for `std`") does not say what to do.
fn require_wasm_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|err| panic!("cannot run {} --print sysroot: {err}", Path::new(&rustc).display()));
    let sysroot = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let target_lib = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    if !target_lib.is_dir() {
        panic!(
            "the Rust target {TARGET} is not installed (no {}), and the built-in echo processor \
             is compiled for it: run `rustup target add {TARGET}`",
            target_lib.display()
        );
    }
}
