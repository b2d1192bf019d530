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
        writeln!(out, "| section | measure | value | target | met |").unwrap();
        writeln!(out, "|---|---|---|---|---|").unwrap();
        for row in &self.rows {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                row.section,
                escape(&row.what),
                escape(&row.value),
                escape(row.target_text()),
                row.met_text()
            )
            .unwrap();
        }
        if !self.notes.is_empty() {
            writeln!(out, "\n## How each figure was measured\n").unwrap();
            for note in &self.notes {
                writeln!(out, "- {}", escape(note)).unwrap();
            }
        }
        out
    }
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
