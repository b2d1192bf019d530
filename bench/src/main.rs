//! `jobhost-bench`: measures jobhost against the targets of the v1 speed issue and writes the
//! results to `BENCHMARKS.md`. Run it through `./scripts/bench`, which builds what it needs.
//!
//! Sections 1, 2, 6, 8, 10, 11 and 12 also run on PostgreSQL, beside SQLite: on the server `$JOBHOST_BENCH_PG`
//! names, or else on a throwaway one that `scripts/postgres start` makes in the temporary folder
//! (fsync off) when the first of them needs it, stopped and deleted when the benchmark ends.
//! Each PostgreSQL measurement gets a fresh schema, dropped afterwards.
//!
//! One module per section, each documenting what it measures and why the measurement is fair:
//! [`end_to_end`] (1), [`store`] (2), [`flatmachines`] (3, the original example's store),
//! [`cold_start`] (4), [`sandbox`] (5), [`scale`] (6), [`memory`] (7), [`server`] (8, `jobhost
//! serve` through its HTTP API), [`components`] (9, WASI 0.2 components in Rust and Python, and
//! jobs waiting on HTTP), [`connections`] (10, short requests beside thousands of long-polls),
//! [`retention`] (11, claims while old jobs are deleted), [`always_on`] (12, how soon a waiting
//! worker starts a new job, and what it costs while it waits).
//! Sections run one after
//! another, never side by side, because the machine has few cores and is shared. A section
//! that fails is reported as a failed row and the others still run.
//!
//! A full run writes BENCHMARKS.md afresh; an `--only` run measures only its sections and
//! swaps their rows and notes into the BENCHMARKS.md that is there, keeping every other
//! section's figures (and saying in its header when those sections were measured again).

mod always_on;
mod cold_start;
mod components;
mod connections;
mod end_to_end;
mod flatmachines;
mod flow;
mod memory;
mod report;
mod retention;
mod sandbox;
mod scale;
mod server;
mod store;
mod support;
mod unique;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::report::{ERROR, Header, Report, Row, SectionId};
use crate::support::{Bench, Shelf};

#[derive(Parser)]
#[command(version, about = "Benchmarks jobhost and writes BENCHMARKS.md", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Internal>,
    /// Repetitions of the end-to-end and store measurements; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// A fast smoke run: smaller workloads and one repetition. Writes no report file unless --out is given.
    #[arg(long)]
    quick: bool,
    /// Run only these sections (comma-separated), and put their results into the report file in
    /// place of its earlier ones for them, keeping the other sections' results.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Section>,
    /// Where to write the Markdown report. Default, but for --quick: BENCHMARKS.md at the workspace root.
    #[arg(long, value_name = "PATH")]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Internal {
    /// One process of the store benchmark (started by the benchmark itself).
    #[command(hide = true)]
    StoreWorker(store::WorkerArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    EndToEnd,
    Store,
    Flatmachines,
    ColdStart,
    Sandbox,
    Scale,
    Memory,
    Server,
    Components,
    Connections,
    Retention,
    AlwaysOn,
    Unique,
    Flow,
}

impl Section {
    fn run<'a>(self, bench: &'a Bench, report: &mut Report, shelf: &mut Shelf<'a>) -> Result<()> {
        match self {
            Section::EndToEnd => end_to_end::run(bench, report),
            Section::Store => store::run(bench, report),
            Section::Flatmachines => flatmachines::run(bench, report),
            Section::ColdStart => cold_start::run(bench, report),
            Section::Sandbox => sandbox::run(bench, report),
            Section::Scale => scale::run(bench, report, shelf),
            Section::Memory => memory::run(bench, report),
            Section::Server => server::run(bench, report, shelf),
            Section::Components => components::run(bench, report),
            Section::Connections => connections::run(bench, report),
            Section::Retention => retention::run(bench, report),
            Section::AlwaysOn => always_on::run(bench, report),
            Section::Unique => unique::run(bench, report),
            Section::Flow => flow::run(bench, report),
        }
    }

    fn title(self) -> &'static str {
        match self {
            Section::EndToEnd => "1. end to end",
            Section::Store => "2. store alone",
            Section::Flatmachines => "3. the original example's store (flatmachines)",
            Section::ColdStart => "4. cold start",
            Section::Sandbox => "5. sandbox overhead",
            Section::Scale => "6. scale",
            Section::Memory => "7. memory",
            Section::Server => "8. server",
            Section::Components => "9. components",
            Section::Connections => "10. connections",
            Section::Retention => "11. retention",
            Section::AlwaysOn => "12. always on",
            Section::Unique => "13. unique jobs",
            Section::Flow => "14. flow limits",
        }
    }

    /// What marks this section's rows and notes in a report.
    fn id(self) -> SectionId {
        let label = match self {
            Section::EndToEnd => end_to_end::SECTION,
            Section::Store => store::SECTION,
            Section::Flatmachines => flatmachines::SECTION,
            Section::ColdStart => cold_start::SECTION,
            Section::Sandbox => sandbox::SECTION,
            Section::Scale => scale::SECTION,
            Section::Memory => memory::SECTION,
            Section::Server => server::SECTION,
            Section::Components => components::SECTION,
            Section::Connections => connections::SECTION,
            Section::Retention => retention::SECTION,
            Section::AlwaysOn => always_on::SECTION,
            Section::Unique => unique::SECTION,
            Section::Flow => flow::SECTION,
        };
        SectionId { label, title: self.title() }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Internal::StoreWorker(args)) => store::worker(args).map(|()| ExitCode::SUCCESS),
        None => benchmark(cli),
    };
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}

fn benchmark(cli: Cli) -> Result<ExitCode> {
    let started = Instant::now();
    let runs = if cli.quick { 1 } else { cli.runs };
    let bench = Bench::new(cli.quick, runs)?;
    let load_before = load_average();
    let sections = if cli.only.is_empty() { Section::value_variants().to_vec() } else { cli.only.clone() };
    let rerun: Vec<SectionId> = sections.iter().map(|section| section.id()).collect();

    // The scale section's million-job pools serve the server section's page timings, if it comes later.
    let position = |wanted| sections.iter().position(|&section| section == wanted);
    let reuse =
        matches!((position(Section::Scale), position(Section::Server)), (Some(scale), Some(server)) if scale < server);
    let mut shelf = Shelf::new(reuse);
    let mut report = Report::default();
    let mut failed = 0;
    for section in sections.iter().copied() {
        println!("\n== {}", section.title());
        let section_started = Instant::now();
        if let Err(err) = section.run(&bench, &mut report, &mut shelf) {
            failed += 1;
            eprintln!("error in section {}: {err:#}", section.title());
            report.add(Row::info(ERROR, section.title(), format!("failed: {err:#}")));
        }
        println!("  ({:.1} s)", section_started.elapsed().as_secs_f64());
    }
    drop(shelf);

    let header = Header {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        date: utc_now(),
        commit: commit(&bench.root),
        command: command_line(&bench.root),
        load_before,
        load_after: load_average(),
        wall_time: started.elapsed(),
        quick: cli.quick,
        postgres: bench.pg_started().map(|server| server.settings().unwrap_or_else(|err| format!("{err:#}"))),
    };
    println!("\n{}", report.table());
    println!("wall time: {:.0} s; {} target(s) missed", header.wall_time.as_secs_f64(), report.missed());
    let out = match cli.out {
        Some(out) => Some(out),
        None if !cli.quick => Some(bench.root.join("BENCHMARKS.md")),
        None => None,
    };
    if let Some(out) = out {
        let text = if cli.only.is_empty() {
            report.markdown(&header)
        } else {
            let earlier = match std::fs::read_to_string(&out) {
                Ok(text) => text,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
                // Never overwrite the other sections' results unread.
                Err(err) => return Err(err).with_context(|| format!("cannot read {}", out.display())),
            };
            report.merged_markdown(&earlier, &header, &rerun)
        };
        std::fs::write(&out, text).with_context(|| format!("cannot write {}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The 1-, 5- and 15-minute load averages: how busy the shared machine was.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_string())
}

/// The commit measured, and whether the working tree differed from it.
fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(head) => match git(&["status", "--porcelain"]) {
            Some(changes) if !changes.is_empty() => format!("{head} with uncommitted changes"),
            _ => head,
        },
        None => "unknown (not a git checkout)".to_string(),
    }
}

/// This process's command line, with paths inside the workspace made relative to it.
fn command_line(root: &Path) -> String {
    let root = format!("{}/", root.display());
    std::env::args().map(|arg| arg.strip_prefix(&root).map(str::to_string).unwrap_or(arg)).collect::<Vec<_>>().join(" ")
}

/// The current time as UTC, from the system clock, in the format jobhost prints timestamps.
fn utc_now() -> String {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis()) as i64;
    jobhost::output::format_time(millis)
}
