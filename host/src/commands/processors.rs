//! `jobhost processors`: every processor (built-in and drop-in) with its source, size, hash,
//! effective limits and whether it compiles and links. A broken file is listed as broken,
//! with the reason, beside the others; the command itself fails only when the processors
//! folder cannot be listed. Overrides that name no processor are warned about on stderr.

use std::process::ExitCode;

use anyhow::Result;
use serde_json::{Value, json};

use crate::cli::ProcessorsArgs;
use crate::config::Config;
use crate::processors::{self, ProcessorInfo};
use crate::sandbox::Sandbox;

pub fn run(config: &Config, args: ProcessorsArgs) -> Result<ExitCode> {
    let sandbox = Sandbox::new(1)?;
    let infos = processors::list(config, &sandbox)?;
    for warning in processors::unmatched_override_warnings(config) {
        eprintln!("warning: {warning}");
    }
    if args.json {
        let list: Vec<Value> = infos.iter().map(info_json).collect();
        crate::outln!("{}", Value::Array(list))?;
    } else {
        print_table(config, &infos)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A processor as `--json` and the API show it.
pub fn info_json(info: &ProcessorInfo) -> Value {
    json!({
        "name": info.name,
        "source": info.source.to_string(),
        "overrides_builtin": info.overrides_builtin,
        "size": info.size,
        "sha256": info.sha256,
        "limits": {
            "fuel": info.limits.fuel,
            "timeout_ms": info.limits.timeout.0.as_millis() as u64,
            "memory_bytes": info.limits.memory.0,
            "stdout_bytes": info.limits.stdout.0,
            "stderr_bytes": info.limits.stderr.0,
        },
        "status": if info.status.is_ok() { "ok" } else { "broken" },
        "error": info.status.as_ref().err(),
    })
}

fn print_table(config: &Config, infos: &[ProcessorInfo]) -> std::io::Result<()> {
    crate::outln!("processors folder: {}", config.processors.dir.display())?;
    let rows: Vec<[String; 6]> = infos
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
                source,
                info.size.map_or("-".to_string(), |size| size.to_string()),
                info.sha256.as_deref().map_or("-".to_string(), |sha| sha[..12].to_string()),
                format!(
                    "fuel {} timeout {} memory {} stdout {} stderr {}",
                    limits.fuel, limits.timeout, limits.memory, limits.stdout, limits.stderr
                ),
            ]
        })
        .collect();
    let header = ["NAME", "STATUS", "SOURCE", "BYTES", "SHA256", "LIMITS"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 6]| {
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
