//! The results: rows of what was measured, its value, the target and whether it was met,
//! printed as they come in, then as one table on stdout and as Markdown (`BENCHMARKS.md`).

use std::fmt::Write as _;
use std::time::Duration;

/// One measured figure.
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub value: String,
    /// `None` for figures that are context for another row rather than a goal.
    pub target: Option<Target>,
}

pub struct Target {
    pub text: String,
    pub met: bool,
}

impl Row {
    pub fn info(section: &'static str, what: impl Into<String>, value: impl Into<String>) -> Row {
        Row { section, what: what.into(), value: value.into(), target: None }
    }

    pub fn goal(
        section: &'static str,
        what: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) -> Row {
        Row { section, what: what.into(), value: value.into(), target: Some(Target { text: target.into(), met }) }
    }

    fn target_text(&self) -> &str {
        self.target.as_ref().map_or("—", |t| t.text.as_str())
    }

    fn met_text(&self) -> &'static str {
        match &self.target {
            None => "—",
            Some(Target { met: true, .. }) => "yes",
            Some(Target { met: false, .. }) => "no",
        }
    }
}

/// Facts about the run that make the figures comparable (or not) with another run.
pub struct Header {
    pub cores: usize,
    pub date: String,
    pub commit: String,
    pub command: String,
    pub load_before: String,
    pub load_after: String,
    pub wall_time: Duration,
    pub quick: bool,
    /// The PostgreSQL server the PostgreSQL rows ran on, and its settings; `None` if none ran.
    pub postgres: Option<String>,
}

#[derive(Default)]
pub struct Report {
    rows: Vec<Row>,
    /// How each section measured, and anything skipped; printed under the table.
    notes: Vec<String>,
}

impl Report {
    /// Records a row and prints it at once, so a long run shows progress.
    pub fn add(&mut self, row: Row) {
        let target = match &row.target {
            Some(target) => format!("  (target {}: {})", target.text, row.met_text()),
            None => String::new(),
        };
        println!("  {:<14} {:<58} {}{target}", row.section, row.what, row.value);
        self.rows.push(row);
    }

    pub fn note(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("  note: {text}");
        self.notes.push(text);
    }

    /// Targets not met, for the exit status.
    pub fn missed(&self) -> usize {
        self.rows.iter().filter(|row| row.target.as_ref().is_some_and(|t| !t.met)).count()
    }

    pub fn table(&self) -> String {
        let header = ["section", "measure", "value", "target", "met"];
        let cells: Vec<[&str; 5]> = self
            .rows
            .iter()
            .map(|row| [row.section, &row.what, &row.value, row.target_text(), row.met_text()])
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for line in &cells {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&header).chain(&cells) {
            let padded: Vec<String> = line.iter().zip(widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
            writeln!(out, "{}", padded.join("  ").trim_end()).unwrap();
        }
        out
    }

    pub fn markdown(&self, header: &Header) -> String {
        let mut out = String::new();
        writeln!(out, "# Benchmarks\n").unwrap();
        if header.quick {
            writeln!(
                out,
                "**A `--quick` smoke run: smaller workloads, single repetitions; not the reference figures.**\n"
            )
            .unwrap();
        }
        writeln!(
            out,
            "- Machine: {} cores; load average {} before, {} after",
            header.cores, header.load_before, header.load_after
        )
        .unwrap();
        writeln!(out, "- Date: {}", header.date).unwrap();
        writeln!(out, "- Commit: {}", header.commit).unwrap();
        writeln!(out, "- Command: `{}` (what `./scripts/bench` runs after building)", header.command).unwrap();
        writeln!(out, "- Wall time of the whole benchmark: {:.0} s", header.wall_time.as_secs_f64()).unwrap();
        if let Some(postgres) = &header.postgres {
            writeln!(
                out,
                "- PostgreSQL (the rows marked PostgreSQL): {postgres}. fsync=off: commits are not durable, \
                 so these rows measure the store, not a disk"
            )
            .unwrap();
        }
        writeln!(out, "\nTimings are medians of several runs; ratios compare figures measured in the same run.")
            .unwrap();
        writeln!(out, "The machine is shared, so absolute figures move between runs; the load averages above say how busy it was.\n").unwrap();
        let rows: Vec<String> = self.rows.iter().map(row_line).collect();
        let notes: Vec<String> = self.notes.iter().map(|note| note_line(note)).collect();
        out.push_str(&tables(&rows, &notes));
        out
    }

    /// `earlier`, the text of a report, with the rows and notes of the sections in `rerun`
    /// replaced by this run's: each section's in the place its old ones had (at the end if it had
    /// none), every other section's kept as they were, and a header line saying when the
    /// sections were measured again. Without a table in `earlier`, the report of this run alone.
    pub fn merged_markdown(&self, earlier: &str, header: &Header, rerun: &[SectionId]) -> String {
        let Some(earlier) = Parts::parse(earlier) else {
            return self.markdown(header);
        };
        let owner = |line: &str| rerun.iter().position(|section| section.owns_line(line));
        let mut preamble: Vec<String> = earlier
            .preamble
            .iter()
            .filter(|line| !rerun.iter().any(|section| line.starts_with(&section.remeasured_prefix())))
            .map(|line| line.to_string())
            .collect();
        let after_bullets = preamble.iter().rposition(|line| line.starts_with("- ")).map_or(0, |i| i + 1);
        let remeasured = rerun.iter().map(|section| section.remeasured_line(header));
        preamble.splice(after_bullets..after_bullets, remeasured);

        let fresh_rows: Vec<String> = self.rows.iter().map(row_line).collect();
        let fresh_notes: Vec<String> = self.notes.iter().map(|note| note_line(note)).collect();
        let rows = splice(&earlier.rows, &fresh_rows, rerun.len(), owner);
        let notes = splice(&earlier.notes, &fresh_notes, rerun.len(), owner);
        let mut out = preamble.join("\n");
        out.push('\n');
        out.push_str(&tables(&rows, &notes));
        out
    }
}

/// Which rows and notes of a report are one section's.
#[derive(Clone, Copy)]
pub struct SectionId {
    /// The first column of its rows; its notes start with it and a colon.
    pub label: &'static str,
    /// Its heading; the row of a section that failed is `error` with this as its measure.
    pub title: &'static str,
}

impl SectionId {
    /// Whether a Markdown row or note line (as [`row_line`] and [`note_line`] write them) is this section's.
    fn owns_line(&self, line: &str) -> bool {
        if let Some(note) = line.strip_prefix("- ") {
            return note.strip_prefix(self.label).is_some_and(|rest| rest.starts_with(':'));
        }
        let mut cells = line.strip_prefix("| ").unwrap_or_default().split(" | ");
        match (cells.next(), cells.next()) {
            (Some(ERROR), Some(what)) => what == self.title,
            (Some(section), _) => section == self.label,
            _ => false,
        }
    }

    fn remeasured_prefix(&self) -> String {
        format!("- Measured again with `--only`: {}", self.title)
    }

    fn remeasured_line(&self, header: &Header) -> String {
        format!(
            "{}{}, {}; commit {}; `{}`; load average {} before, {} after",
            self.remeasured_prefix(),
            if header.quick { " (a `--quick` smoke run)" } else { "" },
            header.date,
            header.commit,
            header.command,
            header.load_before,
            header.load_after
        )
    }
}

/// The section column of the row a section that failed leaves.
pub const ERROR: &str = "error";

/// A report's Markdown cut where sections can be swapped: everything above the table, the
/// table's row lines, and the lines of the notes under it.
struct Parts<'a> {
    preamble: Vec<&'a str>,
    rows: Vec<&'a str>,
    notes: Vec<&'a str>,
}

impl<'a> Parts<'a> {
    fn parse(text: &'a str) -> Option<Parts<'a>> {
        let lines: Vec<&str> = text.lines().collect();
        let table = lines.iter().position(|line| *line == TABLE_HEADER)?;
        let rows_start = table + 2;
        let rows_end =
            lines[rows_start..].iter().position(|line| !line.starts_with("| ")).map_or(lines.len(), |i| rows_start + i);
        let notes = match lines.iter().position(|line| *line == NOTES_HEADING) {
            Some(heading) => lines[heading + 1..].iter().copied().filter(|line| line.starts_with("- ")).collect(),
            None => Vec::new(),
        };
        Some(Parts { preamble: lines[..table].to_vec(), rows: lines[rows_start..rows_end].to_vec(), notes })
    }
}

/// `earlier` with the lines each of `sections` sections owns (by `owner`) swapped for its lines
/// in `fresh`, placed where its first earlier line was, or after the rest when it had none.
fn splice(
    earlier: &[&str],
    fresh: &[String],
    sections: usize,
    owner: impl Fn(&str) -> Option<usize> + Copy,
) -> Vec<String> {
    let fresh_of = move |section: Option<usize>| fresh.iter().filter(move |line| owner(line) == section).cloned();
    let mut placed = vec![false; sections];
    let mut out = Vec::new();
    for line in earlier {
        match owner(line) {
            Some(section) if !placed[section] => {
                placed[section] = true;
                out.extend(fresh_of(Some(section)));
            }
            Some(_) => {}
            None => out.push(line.to_string()),
        }
    }
    for section in (0..sections).filter(|&section| !placed[section]) {
        out.extend(fresh_of(Some(section)));
    }
    out.extend(fresh_of(None));
    out
}

const TABLE_HEADER: &str = "| section | measure | value | target | met |";
const NOTES_HEADING: &str = "## How each figure was measured";

/// The table and the notes under it, from their lines.
fn tables(rows: &[String], notes: &[String]) -> String {
    let mut out = String::new();
    writeln!(out, "{TABLE_HEADER}").unwrap();
    writeln!(out, "|---|---|---|---|---|").unwrap();
    for row in rows {
        writeln!(out, "{row}").unwrap();
    }
    if !notes.is_empty() {
        writeln!(out, "\n{NOTES_HEADING}\n").unwrap();
        for note in notes {
            writeln!(out, "{note}").unwrap();
        }
    }
    out
}

fn row_line(row: &Row) -> String {
    format!(
        "| {} | {} | {} | {} | {} |",
        row.section,
        escape(&row.what),
        escape(&row.value),
        escape(row.target_text()),
        row.met_text()
    )
}

fn note_line(note: &str) -> String {
    format!("- {}", escape(note))
}

fn escape(cell: &str) -> String {
    cell.replace('|', "\\|")
}

/// `12,345.6` style: thousands separated, `decimals` after the point.
pub fn number(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    let (int, frac) = text.split_once('.').map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    match frac {
        Some(frac) => format!("{sign}{grouped}.{frac}"),
        None => format!("{sign}{grouped}"),
    }
}

pub fn per_second(value: f64, unit: &str) -> String {
    format!("{} {unit}/s", number(value, 0))
}

pub fn micros(duration: Duration) -> String {
    format!("{} µs", number(duration.as_secs_f64() * 1e6, 0))
}

pub fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1e3;
    format!("{} ms", number(ms, if ms < 100.0 { 2 } else { 0 }))
}

pub fn mib(bytes: u64) -> String {
    let decimals = if bytes.is_multiple_of(1 << 20) { 0 } else { 1 };
    format!("{} MiB", number(bytes as f64 / (1 << 20) as f64, decimals))
}

pub fn times(ratio: f64) -> String {
    format!("{}×", number(ratio, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(0.0, 0), "0");
        assert_eq!(number(999.0, 0), "999");
        assert_eq!(number(1234.0, 0), "1,234");
        assert_eq!(number(1234567.891, 2), "1,234,567.89");
        assert_eq!(number(-12345.0, 0), "-12,345");
    }
}
