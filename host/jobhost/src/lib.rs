//! jobhost: a durable job pool on SQLite or PostgreSQL whose jobs run in WebAssembly
//! sandboxes (WASI preview1 modules and WASI 0.2 components). This crate is the top of the
//! workspace: the command line and everything that runs a command.
//!
//! Data flows one way: [`cli`] parses the command line, [`settings`] settles it with the
//! config file into one validated value, and [`commands`] (and the long-running [`worker`],
//! [`checker`], [`reaper`] and [`serve`], with the [`upkeep`] they share) carry it out through
//! the crates below:
//! `jobhost-store` for the pool, `jobhost-sandbox` to load and run processors, and
//! `jobhost-core` for the configuration and rules they share. [`output`] writes what people
//! and scripts read. Nothing below this crate knows about the command line or HTTP serving.
//!
//! The `jobhost` binary is a thin `main` over this library.

pub mod checker;
pub mod cli;
pub mod commands;
pub mod output;
pub mod reaper;
pub mod retention;
pub mod scheduler;
pub mod serve;
pub mod settings;
pub mod shutdown;
pub mod upkeep;
pub mod worker;

use std::process::ExitCode;

use crate::cli::Cli;
use crate::settings::Task;

/// Carries out a parsed command line. Every command but `serve` runs on one current-thread
/// runtime: store calls and sandboxed runs share the thread, with no hand-offs between
/// threads. `serve` runs on a multi-threaded one, so requests are answered while a store call
/// blocks (a SQLite write waiting for another process's lock) and use every core.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let (config, task) = settings::settle(cli)?;
    let config = &config;
    let runtime = match task {
        Task::Serve => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()?;
    let result = runtime.block_on(async {
        match task {
            Task::Seed(args) => commands::seed::run(config, args).await,
            Task::Status(args) => commands::status::run(config, args).await,
            Task::Schedules(args) => commands::schedules::run(config, args).await,
            Task::Jobs(command) => commands::jobs::run(config, command).await,
            Task::Pools(args) => commands::pools::run(config, args).await,
            Task::Processors(args) => commands::processors::run(config, args),
            Task::Run(args) => commands::run::run(config, args).await,
            Task::Work(settings) => worker::run(config, settings).await,
            Task::Check(settings) => checker::run(config, settings).await,
            Task::Reap(settings) => reaper::run(config, settings).await,
            Task::Copy(args) => commands::copy::run(config, args).await,
            Task::Serve => serve::run(config).await,
        }
    });
    // A processor load that missed its deadline may still run on a blocking thread; what it
    // was for is already recorded, so exiting does not wait for it.
    runtime.shutdown_background();
    result
}
