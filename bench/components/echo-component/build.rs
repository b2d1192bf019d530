//! A 128 KiB stack, as processors/echo has: the sandbox resets linear memory after every job,
//! so memory the guest never uses still costs time on every job.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo:rustc-link-arg-bins=-zstack-size=131072");
    }
}
