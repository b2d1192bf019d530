//! Links the `jobhost` binary with its relative relocations packed.
//!
//! The binary carries ~30,000 relative relocations (wasmtime and Cranelift are full of
//! vtables); packed into a compact table, the dynamic loader reads kilobytes, not 700 KB, at
//! every start, which short-lived `jobhost work --once` processes feel.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
