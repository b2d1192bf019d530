//! Section 3, the original example's store on the same work, in the same run: flatmachines
//! 4.2.1's `SQLiteWorkBackend` (Python, from PyPI) beside jobhost's store.
//!
//! The package goes into a throwaway virtualenv, `target/bench-venv`, made by this section;
//! without `python3`, `venv` or the package the section says "skipped" and the rest goes on.
//! `bench/flatmachines_store.py` pushes the items with the library's own `push`, then 1 or 4
//! processes released by a barrier `claim` and `complete` one item at a time (two calls, two
//! transactions per item). jobhost's side is section 2's store-worker on the same number of
//! jobs and processes, in both of its shapes: one transaction per job, as `jobhost work` uses
//! the store (the target applies to this one), and two, the same call pattern as flatmachines
//! (for reference). Each round measures both jobhost shapes and then flatmachines back to
//! back, and a ratio is the median of the rounds' ratios, so machine noise hits both sides.
//!
//! Where the files live decides the result, so it is fixed and stated. The headline
//! comparison runs on tmpfs (`/dev/shm`), where `fsync` costs nothing: flatmachines keeps
//! SQLite's defaults (rollback journal, `synchronous = FULL`: fsyncs on every commit) while
//! jobhost's default (WAL, `synchronous = NORMAL`) fsyncs only at checkpoints, so on a disk
//! the ratio would mostly measure the disk. On tmpfs it measures the stores' own work
//! (statements, locking, connections) and is the lower of the two. A second, smaller
//! comparison runs on the temporary folder's disk at equal durability: jobhost with
//! `synchronous: full` (an fsync per commit) against flatmachines as shipped.
//!
//! Items handed to two workers are counted from the claims each process saw (flatmachines
//! reads the next item outside its write transaction, so two processes can take the same one).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use jobhost_core::config::Synchronous;
use serde_json::Value;

use crate::report::{Report, Row, number, per_second, times};
use crate::store::{self, Shape};
use crate::support::{Bench, median};

pub const SECTION: &str = "vs flatmachines";
const VERSION: &str = "4.2.1";
const PROCESSES: [usize; 2] = [1, 4];
const TARGET_RATIO: f64 = 20.0;

pub fn run(bench: &Bench, report: &mut Report) -> Result<()> {
    let python = match virtualenv(bench) {
        Ok(python) => python,
        Err(err) => {
            let message = format!("skipped: {err:#}");
            println!("{message}");
            report.add(Row::info(SECTION, "flatmachines comparison", message));
            return Ok(());
        }
    };
    let script = bench.root.join("bench/flatmachines_store.py");
    let (fast_dir, fast_name) = match Path::new("/dev/shm") {
        shm if shm.is_dir() => (shm.to_path_buf(), "tmpfs (/dev/shm)".to_string()),
        _ => (std::env::temp_dir(), format!("{} (no /dev/shm here)", std::env::temp_dir().display())),
    };
    let disk_dir = std::env::temp_dir();
    let jobs = store::jobs(bench);
    let durable_jobs = bench.pick(200, 50);
    report.note(format!(
        "vs flatmachines: flatmachines {VERSION} SQLiteWorkBackend as shipped (push, then a claim call and a \
         complete call per item, SQLite defaults) against jobhost's store-worker (as in the store section), \
         {jobs} items, on {fast_name}; then {durable_jobs} items on the disk of {} with an fsync per commit on \
         both sides (jobhost `synchronous: full`); ratios are medians of {} round(s) measured back to back",
        disk_dir.display(),
        bench.runs
    ));

    let mut rounds: Vec<Vec<Round>> = vec![Vec::new(); PROCESSES.len()];
    let mut durable = Vec::new();
    for _ in 0..bench.runs {
        for (processes, rounds) in PROCESSES.into_iter().zip(&mut rounds) {
            rounds.push(Round::measure(&python, &script, &fast_dir, jobs, processes)?);
        }
        let ours = store::measure(&disk_dir, durable_jobs, 1, Synchronous::Full, Shape::Folded)?;
        let theirs = flatmachines(&python, &script, &disk_dir, durable_jobs, 1)?;
        durable.push([ours.pairs_per_second, theirs.pairs_per_second]);
    }

    let mut handed_twice = 0;
    for (processes, rounds) in PROCESSES.into_iter().zip(&rounds) {
        let processes_text = store::processes_text(processes);
        report.add(Row::info(
            SECTION,
            format!("flatmachines, {processes_text}, {jobs} items"),
            per_second(median_of(rounds, |round| round.flatmachines.pairs_per_second), "pairs"),
        ));
        for shape in [Shape::Folded, Shape::Separate] {
            let ratio = median_of(rounds, |round| round.ratio(shape));
            let ours = median_of(rounds, |round| round.jobhost(shape).pairs_per_second);
            let what = format!(
                "jobhost ÷ flatmachines, {processes_text}, {} (jobhost {})",
                shape.describe(),
                per_second(ours, "pairs")
            );
            // The target is for the store as jobhost's worker uses it; the other shape is the
            // like-for-like call pattern, for reference.
            report.add(match shape {
                Shape::Folded => Row::goal(SECTION, what, times(ratio), "≥ 20×", ratio >= TARGET_RATIO),
                Shape::Separate => Row::info(SECTION, what, times(ratio)),
            });
        }
        if processes > 1 {
            let twice: i64 = rounds.iter().map(|round| round.flatmachines.handed_twice).sum();
            report.add(Row::info(
                SECTION,
                format!("flatmachines items handed to two workers, {processes_text}, all rounds"),
                number(twice as f64, 0),
            ));
        }
        handed_twice += rounds.iter().map(|round| round.separate.handed_twice + round.folded.handed_twice).sum::<i64>();
    }
    report.add(Row::goal(
        SECTION,
        "jobhost jobs handed to two workers, same rounds",
        number(handed_twice as f64, 0),
        "0",
        handed_twice == 0,
    ));
    report.add(Row::info(
        SECTION,
        format!(
            "fsync per commit, on disk, 1 process, {durable_jobs} items: jobhost (synchronous: full, {}) {} ÷ flatmachines {}",
            Shape::Folded.describe(),
            per_second(median(&durable.iter().map(|[ours, _]| *ours).collect::<Vec<_>>()), "pairs"),
            per_second(median(&durable.iter().map(|[_, theirs]| *theirs).collect::<Vec<_>>()), "pairs")
        ),
        times(median(&durable.iter().map(|[ours, theirs]| ours / theirs).collect::<Vec<_>>())),
    ));
    Ok(())
}

fn median_of(rounds: &[Round], value: impl Fn(&Round) -> f64) -> f64 {
    median(&rounds.iter().map(value).collect::<Vec<_>>())
}

/// One round: jobhost's store in both shapes, then flatmachines', on the same work.
#[derive(Clone)]
struct Round {
    separate: store::StoreRun,
    folded: store::StoreRun,
    flatmachines: store::StoreRun,
}

impl Round {
    fn measure(python: &Path, script: &Path, dir: &Path, jobs: u64, processes: usize) -> Result<Round> {
        Ok(Round {
            separate: store::measure(dir, jobs, processes, Synchronous::Normal, Shape::Separate)?,
            folded: store::measure(dir, jobs, processes, Synchronous::Normal, Shape::Folded)?,
            flatmachines: flatmachines(python, script, dir, jobs, processes)?,
        })
    }

    fn jobhost(&self, shape: Shape) -> &store::StoreRun {
        match shape {
            Shape::Separate => &self.separate,
            Shape::Folded => &self.folded,
        }
    }

    fn ratio(&self, shape: Shape) -> f64 {
        self.jobhost(shape).pairs_per_second / self.flatmachines.pairs_per_second
    }
}

/// One run of `bench/flatmachines_store.py` on a fresh file in `dir`.
fn flatmachines(python: &Path, script: &Path, dir: &Path, items: u64, processes: usize) -> Result<store::StoreRun> {
    let scratch =
        tempfile::tempdir_in(dir).with_context(|| format!("cannot create a temporary folder in {}", dir.display()))?;
    let db = scratch.path().join("flatmachines.db");
    let output = Command::new(python)
        .arg(script)
        .arg("--db")
        .arg(&db)
        .args(["--items", &items.to_string(), "--procs", &processes.to_string()])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    ensure!(
        output.status.success(),
        "{} failed ({}): {}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let line = String::from_utf8_lossy(&output.stdout);
    let result: Value = serde_json::from_str(line.trim())
        .with_context(|| format!("{} printed {line:?}, not one JSON line", script.display()))?;
    let field =
        |name: &str| result[name].as_f64().with_context(|| format!("{} printed no {name:?}: {line}", script.display()));
    let completed = items as f64 - field("left")?;
    Ok(store::StoreRun { pairs_per_second: completed / field("seconds")?, handed_twice: field("handed_twice")? as i64 })
}

/// The virtualenv's python with flatmachines installed, making it if needed.
fn virtualenv(bench: &Bench) -> Result<PathBuf> {
    let venv = bench.root.join("target/bench-venv");
    let python = venv.join("bin/python");
    if has_flatmachines(&python) {
        return Ok(python);
    }
    println!("setting up {} with flatmachines=={VERSION} ...", venv.display());
    let made = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .output()
        .context("python3 is not installed (install Python 3.11 or newer with its venv module)")?;
    if !made.status.success() {
        bail!(
            "`python3 -m venv` failed ({}; on Debian/Ubuntu install python3-venv): {}",
            made.status,
            last_line(&made.stderr)
        );
    }
    let installed = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", &format!("flatmachines=={VERSION}")])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !installed.status.success() {
        bail!(
            "`pip install flatmachines=={VERSION}` failed ({}; it needs PyPI and Python 3.11+): {}",
            installed.status,
            last_line(&installed.stderr)
        );
    }
    ensure!(has_flatmachines(&python), "flatmachines=={VERSION} was installed but does not import");
    Ok(python)
}

fn has_flatmachines(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import importlib.metadata as m, flatmachines.work; print(m.version('flatmachines'))"])
        .output()
        .is_ok_and(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == VERSION)
}

fn last_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr).trim().lines().last().unwrap_or("").to_string()
}
