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

use std::borrow::Cow;
use std::fmt;
use std::io::{self, IsTerminal, Write};

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

    #[test]
    fn format_time_gives_utc_calendar_time() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(super::format_time(1_795_844_581_123), "2026-11-28 05:43:01.123Z");
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29 00:00:00.000Z");
    }
}
