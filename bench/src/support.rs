//! What every section shares: where the binaries are, scratch pools driven through the real
//! `jobhost` command line, read-only peeks into their SQLite files, and order statistics.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use rusqlite::{Connection, OpenFlags};
use tempfile::TempDir;

/// The run's settings and the paths every section needs.
pub struct Bench {
    /// The workspace root (fixtures, the Python helper, `target/`).
    pub root: PathBuf,
    /// Folder of the release binaries (`jobhost`, `echo`, this benchmark).
    pub bin_dir: PathBuf,
    pub quick: bool,
    /// Repetitions of the throughput measurements; their median is reported.
    pub runs: usize,
}

impl Bench {
    pub fn new(quick: bool, runs: usize) -> Result<Bench> {
        ensure!(runs >= 1, "--runs must be at least 1");
        let exe = std::env::current_exe().context("cannot find the benchmark's own executable")?;
        let bin_dir = exe.parent().context("the benchmark executable has no folder")?.to_path_buf();
        let root =
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("bench/ sits inside the workspace")?.to_path_buf();
        let bench = Bench { root, bin_dir, quick, runs };
        let jobhost = bench.jobhost();
        ensure!(
            jobhost.is_file(),
            "{} is missing: build it with `cargo build --release -p jobhost` (or run scripts/bench)",
            jobhost.display()
        );
        Ok(bench)
    }

    /// `full` for a real run, `quick` for a `--quick` smoke run.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }

    /// The `jobhost` binary built beside this benchmark (same profile, same commit).
    pub fn jobhost(&self) -> PathBuf {
        self.bin_dir.join("jobhost")
    }
}

/// A scratch pool in a temporary folder: `data/jobhost.db`, `processors/`, `jobhost.yml`,
/// with the compiled-module cache in its default place (`data/cache`).
pub struct Pool {
    dir: TempDir,
    jobhost: PathBuf,
}

impl Pool {
    pub fn new(bench: &Bench, config_yaml: &str) -> Result<Pool> {
        let dir = tempfile::Builder::new()
            .prefix("jobhost-bench-")
            .tempdir()
            .context("cannot create a temporary folder for a benchmark pool (check $TMPDIR)")?;
        std::fs::create_dir(dir.path().join("processors"))?;
        std::fs::write(dir.path().join("jobhost.yml"), config_yaml)?;
        Ok(Pool { dir, jobhost: bench.jobhost() })
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn db(&self) -> PathBuf {
        self.path("data/jobhost.db")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.path("data/cache")
    }

    /// `jobhost ARGS` on this pool, with nothing inherited from the caller's environment
    /// that could point it elsewhere; stdin and stdout are null.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.jobhost);
        command
            .current_dir(self.dir.path())
            .env_remove("JOBHOST_CONFIG")
            .env_remove("JOBHOST_DB")
            .env_remove("JOBHOST_PROCESSORS")
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(self.path("jobhost.yml"))
            .arg("--db")
            .arg(self.db())
            .arg("--processors-dir")
            .arg(self.path("processors"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    /// Runs `jobhost ARGS` and insists on success.
    pub fn ok(&self, args: &[&str]) -> Result<()> {
        let output = self
            .command(args)
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("cannot run {}", self.jobhost.display()))?;
        if !output.status.success() {
            bail!(
                "`jobhost {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    pub fn seed(&self, count: u64, processor: &str, max_attempts: u32) -> Result<()> {
        self.ok(&[
            "seed",
            "--count",
            &count.to_string(),
            "--processor",
            processor,
            "--max-attempts",
            &max_attempts.to_string(),
        ])
    }

    /// Compiles `echo` into the pool's module cache with a throwaway `jobhost run echo`.
    pub fn warm_echo(&self) -> Result<()> {
        self.ok(&["run", "echo", "--payload", r#"{"warm":true}"#])
    }

    /// A read-only connection to the pool's database, as an outside observer would open it.
    pub fn observe(&self) -> Result<Connection> {
        read_only(&self.db())
    }
}

pub fn read_only(path: &Path) -> Result<Connection> {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .with_context(|| format!("cannot open {} read-only", path.display()))
}

pub fn count(conn: &Connection, sql: &str) -> Result<i64> {
    conn.query_row(sql, [], |row| row.get(0)).with_context(|| format!("query failed: {sql}"))
}

/// Milliseconds since the Unix epoch: the unit of jobhost's timestamps.
pub fn epoch_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

/// The median; the mean of the middle two for an even count.
pub fn median(values: &[f64]) -> f64 {
    let sorted = sorted(values);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) { (sorted[mid - 1] + sorted[mid]) / 2.0 } else { sorted[mid] }
}

/// The nearest-rank percentile `p` (0–100).
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let sorted = sorted(values);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(values: &[f64]) -> Vec<f64> {
    assert!(!values.is_empty(), "statistics of no samples");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
}

pub fn median_duration(samples: &[Duration]) -> Duration {
    Duration::from_secs_f64(median(&seconds(samples)))
}

pub fn percentile_duration(samples: &[Duration], p: f64) -> Duration {
    Duration::from_secs_f64(percentile(&seconds(samples), p))
}

fn seconds(samples: &[Duration]) -> Vec<f64> {
    samples.iter().map(Duration::as_secs_f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_statistics() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&hundred, 50.0), 50.0);
        assert_eq!(percentile(&hundred, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }
}
