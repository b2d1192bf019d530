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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_text_is_kept() {
        assert_eq!(for_terminal("plain\ttext ünï"), "plain\ttext ünï");
        assert_eq!(for_terminal("\x1b[2J\x1b]0;owned\x07done\u{9b}"), "\\u{1b}[2J\\u{1b}]0;owned\\u{7}done\\u{9b}");
    }
}
