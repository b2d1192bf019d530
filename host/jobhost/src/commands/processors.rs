//! `jobhost processors`: every processor (built-in and drop-in) with its kind (module or
//! component), source, size, hash, effective limits, grants (secret *names*, never values) and
//! whether it compiles and links. Checking a processor compiles it into the compile cache, so
//! this is also how code is compiled ahead of the jobs that need it; `--compile` says so
//! per processor (compile time) and exits 1 when any is broken, for deploy scripts. Without
//! it, a broken file is listed as broken, with the reason, beside the others, and the command
//! fails only when the processors folder cannot be listed. Overrides that name no processor
//! are warned about on stderr.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::Value;

use jobhost_core::config::Config;
use jobhost_sandbox::processors::{self, ProcessorInfo};
use jobhost_sandbox::{Kind, Sandbox};

use crate::cli::ProcessorsArgs;

pub fn run(config: &Config, args: ProcessorsArgs) -> Result<ExitCode> {
    let sandbox = Sandbox::new(1)?;
    let infos = processors::list(config, &sandbox)?;
    for warning in processors::unmatched_override_warnings(config) {
        eprintln!("warning: {warning}");
    }
    if args.json {
        let list: Vec<Value> = infos.iter().map(ProcessorInfo::to_json).collect();
        crate::outln!("{}", Value::Array(list))?;
    } else if args.compile {
        for info in &infos {
            match &info.status {
                Ok(()) => crate::outln!("compiled {} in {:.3} s", info.name, info.load_time.as_secs_f64())?,
                Err(error) => crate::outln!("broken {}: {error}", info.name)?,
            }
        }
    } else {
        print_table(config, &infos)?;
    }
    let broken = infos.iter().filter(|info| info.status.is_err()).count();
    if args.compile && broken > 0 {
        eprintln!("error: {broken} processor(s) cannot run; see their errors above");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(config: &Config, infos: &[ProcessorInfo]) -> std::io::Result<()> {
    crate::outln!("processors folder: {}", config.processors.dir.display())?;
    let rows: Vec<[String; 8]> = infos
        .iter()
        .map(|info| {
            let mut source = info.source.to_string();
            if info.overrides_builtin {
                source.push_str(" (overrides built-in)");
            }
            let limits = &info.limits;
            [
                info.name.clone(),
                if info.status.is_ok() { "ok" } else { "broken" }.to_string(),
                info.kind.map_or("-", Kind::as_str).to_string(),
                source,
                info.size.map_or("-".to_string(), |size| size.to_string()),
                info.sha256.as_deref().map_or("-".to_string(), |sha| sha[..12].to_string()),
                format!(
                    "fuel {} timeout {} memory {} stdout {} stderr {}",
                    limits.fuel, limits.timeout, limits.memory, limits.stdout, limits.stderr
                ),
                info.grants.summary(),
            ]
        })
        .collect();
    let header = ["NAME", "STATUS", "KIND", "SOURCE", "BYTES", "SHA256", "LIMITS", "GRANTS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 8]| {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, w)| format!("{cell:<w$}")).collect();
        crate::outln!("{}", cells.join("  ").trim_end())
    };
    line(&header)?;
    for (row, info) in rows.iter().zip(infos) {
        line(row)?;
        if let Err(error) = &info.status {
            crate::outln!("    error: {error}")?;
        }
    }
    Ok(())
}
