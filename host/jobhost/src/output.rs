//! Writing to stdout: the commands' answers, a reader that went away, and terminal safety.
//!
//! [`outln!`](crate::outln) writes one line and returns the I/O error instead of panicking
//! as `println!` does. When the reader has gone (`jobhost jobs list | head -1`) the error is a
//! broken pipe, which `main` ends on quietly, as ripgrep does: nobody is left to read more.
//! A worker cannot stop for that, so it writes through a [`LineSink`] that goes quiet instead.
//!
//! Text that jobs and guests wrote (stderr, error messages) is shown to a person at a
//! terminal through [`for_terminal`], which escapes control characters so that a guest
//! cannot clear the operator's screen or retitle their window; `--json` keeps it verbatim.
//!
//! Timestamps are shown to people in one format, [`format_time`].
//!
//! An error ends a command as one line, [`error_report`]: when the store failed, that line
//! ends with what to do about it in command-line terms; the store says only what happened.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, IsTerminal, Write};

use jobhost_store::{ErrorKind, StoreError};

/// Like `println!`, but returns `std::io::Result<()>`.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

pub fn write_line(line: fmt::Arguments<'_>) -> io::Result<()> {
    let mut stdout = io::stdout().lock();
    stdout.write_fmt(line)?;
    stdout.write_all(b"\n")
}

/// Whether `err` comes from writing to a reader that went away.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| cause.downcast_ref::<io::Error>().is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe))
}

/// `err` as a person at the command line reads it: its contexts and causes on one line, as
/// `{:#}` writes them, except that a store error ends it (its message has said its causes in
/// its own words) followed by the fix for that kind of failure.
pub fn error_report(err: &anyhow::Error) -> String {
    let mut report = Vec::new();
    for cause in err.chain() {
        report.push(cause.to_string());
        if let Some(store) = cause.downcast_ref::<StoreError>() {
            report.extend(store_fix(store.kind()).map(str::to_owned));
            break;
        }
    }
    report.join(": ")
}

/// What a person at the command line can do about a store failure of `kind`.
fn store_fix(kind: ErrorKind) -> Option<&'static str> {
    Some(match kind {
        ErrorKind::Missing => "check --db (or database.path, $JOBHOST_DB); `jobhost seed` creates a new one",
        ErrorKind::BadLocation => {
            "write --db (or database.path, $JOBHOST_DB) as postgres://USER:PASSWORD@HOST:PORT/DBNAME"
        }
        ErrorKind::Unreachable => {
            "check the host and port in the URL, and that the server is running and accepts connections from \
             this machine"
        }
        ErrorKind::Tls => {
            "check the URL's sslmode, and that sslrootcert names the CA that signed the server's certificate and \
             that the certificate names the host in the URL"
        }
        ErrorKind::AuthFailed => {
            "check the user and password in the URL (or $PGPASSWORD), and the server's pg_hba.conf"
        }
        ErrorKind::PermissionDenied => {
            "grant the user CREATE on the database (for the schema) and ownership of jobhost's schema, or ask its \
             administrator"
        }
        ErrorKind::CannotOpen => {
            "check that its folder exists (or, on a PostgreSQL server, that the database exists: `createdb NAME`) \
             and that jobhost's user may read and write it"
        }
        ErrorKind::NotADatabase => "point --db (or database.path) at a jobhost database or at a new file",
        ErrorKind::Foreign => {
            "point --db (or database.path) at a jobhost database or at a new file, or on PostgreSQL set \
             database.schema to a schema of jobhost's own"
        }
        ErrorKind::Busy => "retry, or raise database.busy_timeout",
        ErrorKind::ReadOnly => {
            "jobhost's user needs write access to the file and to its folder (SQLite keeps its -wal and -shm files \
             beside it)"
        }
        ErrorKind::DiskFull => {
            "free space there (e.g. `jobhost jobs purge`) or move the database; the failed change was not written"
        }
        ErrorKind::Replaced => "stop and start again on the database you mean",
        // The refusal, a newer jobhost's schema and the database's own words say it already.
        ErrorKind::Refused | ErrorKind::NewerSchema | ErrorKind::Other => return None,
    })
}

/// Lines for a reader that may go away while the writer must carry on: the first failed
/// write is logged and every later line is dropped.
#[derive(Debug, Default)]
pub struct LineSink {
    gone: bool,
}

impl LineSink {
    pub fn line(&mut self, line: fmt::Arguments<'_>) {
        if self.gone {
            return;
        }
        if let Err(err) = write_line(line) {
            self.gone = true;
            tracing::warn!("cannot write to stdout ({err}); going on without printing job lines");
        }
    }
}

/// `text` as it should reach stdout: escaped by [`for_terminal`] when a person's terminal
/// is reading, verbatim for a pipe or a file.
pub fn for_stdout(text: &str) -> Cow<'_, str> {
    if io::stdout().is_terminal() { for_terminal(text) } else { Cow::Borrowed(text) }
}

/// `text` with every control character but tab written as an escape (`\u{1b}`), for a terminal.
pub fn for_terminal(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| if c.is_control() && c != '\t' { c.escape_unicode().to_string() } else { c.to_string() })
            .collect(),
    )
}

/// A store timestamp (ms since the epoch) as UTC, e.g. `2026-11-28 05:33:01.123Z`.
pub fn format_time(millis: i64) -> String {
    let (days, ms_of_day) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert_eq!(for_terminal("plain\ttext ünï"), "plain\ttext ünï");
        assert_eq!(for_terminal("\x1b[2J\x1b]0;owned\x07done\u{9b}"), "\\u{1b}[2J\\u{1b}]0;owned\\u{7}done\\u{9b}");
    }

    fn sqlite_failure(code: std::ffi::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn a_store_failure_is_followed_by_its_fix_once_and_its_cause_once() {
        let cases = [
            (rusqlite::ffi::SQLITE_READONLY, "needs write access to the file and to its folder"),
            (rusqlite::ffi::SQLITE_FULL, "free space there"),
            (rusqlite::ffi::SQLITE_CANTOPEN, "check that its folder exists"),
            (rusqlite::ffi::SQLITE_BUSY, "raise database.busy_timeout"),
            (rusqlite::ffi::SQLITE_NOTADB, "point --db"),
        ];
        for (code, fix) in cases {
            let what = StoreError::from(sqlite_failure(code)).to_string();
            let bare = anyhow::Error::new(StoreError::from(sqlite_failure(code)));
            let in_context = bare.context("cannot queue the jobs").context("seed failed");
            for err in [anyhow::Error::new(StoreError::from(sqlite_failure(code))), in_context] {
                let report = error_report(&err);
                assert!(report.contains(&format!("{what}: ")), "the store's message comes first: {report}");
                assert_eq!(report.matches(fix).count(), 1, "{report}");
                // `{:#}` would say rusqlite's error twice: in the store's message and as its source.
                assert_eq!(report.matches(&sqlite_failure(code).to_string()).count(), 1, "{report}");
                assert_eq!(report.lines().count(), 1, "{report}");
            }
        }
    }

    #[test]
    fn an_error_without_a_store_failure_reads_as_its_chain() {
        let err = anyhow::anyhow!("--count must be between 1 and 10").context("seed");
        assert_eq!(error_report(&err), format!("{err:#}"));
    }

    #[test]
    fn format_time_gives_utc_calendar_time() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(super::format_time(1_795_844_581_123), "2026-11-28 05:43:01.123Z");
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29 00:00:00.000Z");
    }
}
