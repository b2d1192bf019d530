//! The short-lived commands: each reads its arguments, does one thing through the store or
//! the sandbox, prints the answer (JSON on stdout with `--json`) and returns an exit code.
//! The long-running ones have modules of their own: [`crate::worker`], [`crate::checker`]
//! and [`crate::reaper`].

pub mod copy;
pub mod jobs;
pub mod pools;
pub mod processors;
pub mod run;
pub mod schedules;
pub mod seed;
pub mod status;
