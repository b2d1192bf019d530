//! jobhost: a durable SQLite job pool whose jobs run in WebAssembly sandboxes.
//!
//! Data flows one way: [`cli`] parses the command line, [`commands`] (and the long-running
//! [`worker`], [`checker`] and [`reaper`]) carry it out, using [`store`] for the pool and
//! [`sandbox`] (fed by [`processors`]) to run job code.

mod checker;
mod cli;
mod commands;
mod config;
mod processors;
mod reaper;
mod sandbox;
mod store;
mod worker;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};
use crate::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.log_level.as_deref());
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    // Colour only for a person at a terminal; worker logs go to files.
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::discover(cli.global.config.as_deref())?;
    if let Some(db) = cli.global.db {
        config.database.path = db;
    }
    if let Some(dir) = cli.global.processors_dir {
        config.processors.dir = dir;
    }
    match cli.command {
        Command::Seed(args) => commands::seed::run(&config, args),
        Command::Status(args) => commands::status::run(&config, args),
        Command::Jobs(command) => commands::jobs::run(&config, command),
        Command::Processors(args) => commands::processors::run(&config, args),
        Command::Run(args) => commands::run::run(&config, args),
        Command::Work(args) => worker::run(&config, args),
        Command::Check(args) => checker::run(&config, args),
        Command::Reap(args) => reaper::run(&config, args),
    }
}
