//! jobhost: a durable SQLite job pool whose jobs run in WebAssembly sandboxes.
//!
//! Data flows one way: [`cli`] parses the command line, [`commands`] (and the long-running
//! [`worker`], [`checker`] and [`reaper`]) carry it out, using [`store`] for the pool and
//! [`sandbox`] (fed by [`processors`]) to run job code.
//!
//! The `jobhost` binary is a thin `main` over this library; the library exists so the
//! benchmark (`bench/`) can measure the store and the sandbox in-process.

pub mod checker;
pub mod cli;
pub mod commands;
pub mod config;
pub mod grants;
pub mod outcome;
pub mod output;
pub mod processors;
pub mod reaper;
pub mod sandbox;
pub mod serve;
pub mod settings;
pub mod store;
pub mod worker;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

/// Carries out a parsed command line, on one current-thread runtime: store calls and
/// sandboxed runs share the thread, with no hand-offs between threads.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (config, command) = settings::settle(cli)?;
    let config = &config;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        match command {
            Command::Seed(args) => commands::seed::run(config, args).await,
            Command::Status(args) => commands::status::run(config, args).await,
            Command::Jobs(command) => commands::jobs::run(config, command).await,
            Command::Processors(args) => commands::processors::run(config, args),
            Command::Run(args) => commands::run::run(config, args).await,
            Command::Work(args) => worker::run(config, args).await,
            Command::Check(args) => checker::run(config, args).await,
            Command::Reap(args) => reaper::run(config, args).await,
            Command::Copy(args) => commands::copy::run(config, args).await,
            Command::Serve(_) => serve::run(config).await,
        }
    });
    // A processor load that missed its deadline may still run on a blocking thread; what it
    // was for is already recorded, so exiting does not wait for it.
    runtime.shutdown_background();
    result
}
