//! The processors registry: which processors exist, where their code comes from, and turning
//! that code into a [`Prepared`] module the [`Sandbox`] can run.
//!
//! A processor is either **built in** (today only `echo`, compiled from `processors/echo` by
//! `build.rs` and embedded in the binary) or a **drop-in file**: every `NAME.wasm` directly in
//! the processors folder (`processors.dir`, `--processors-dir`, `$JOBHOST_PROCESSORS`).
//! Subfolders are ignored, so a processor's sources can live beside its module. The name is the
//! file stem and must match `[A-Za-z0-9_-]{1,64}`. A file named like a built-in replaces it.
//!
//! **What a file may be.** A regular file (or a symlink to one) of at most
//! `processors.max_size` bytes, holding a binary module or component (`\0asm`; the header's
//! version tells the two apart) or WAT text (`(` first, after whitespace and comments). Anything else is refused before it is parsed: a FIFO, a
//! device or a huge file must not stall or bloat a worker, and a parser's error would quote
//! the file. Load errors are stored with every attempt, so they are capped in length and show
//! at most a few bytes of a file, in hex.
//!
//! **Loading off the guests' thread.** [`Registry::load`] reads and compiles on a blocking
//! thread under [`LOAD_DEADLINE`]: a worker's single thread drives every guest, and a compile
//! of seconds there would freeze them all. A load that misses the deadline fails that job's
//! attempt and carries on in the background; its result is remembered for the next attempt.
//!
//! **Picking up changes.** A load runs once per job, so its hot path is one `lstat`: a module
//! is reloaded when the file's size, modification time, change time or inode differ from what
//! was loaded (replacing a file by `rename`, the safe way to deploy one, always changes the
//! inode). Failures are remembered per file version too, so a broken file costs one compile
//! attempt, not one per job, and jobs that need the same new version wait for one compile.
//!
//! **Compiling ahead.** A Python or JavaScript component takes seconds to compile.
//! [`Registry::start_compiling_ahead`] (long-running workers, `check --interval`) loads every
//! file of the folder in the background, so new and changed files are compiled, and written
//! to the cache, before their jobs need them; `jobhost processors --compile` does it once.
//!
//! **The compile cache.** Compiling a module with Cranelift takes tens of milliseconds per
//! 100 KB; a short-lived worker would pay it on every start. Compiled code is therefore kept in
//! [`Config::cache_dir`], one file per `sha256(wasm bytes) + sha256(engine compatibility)`,
//! so a changed module or a changed engine (wasmtime version, fuel/epoch settings, CPU
//! features) simply misses. Each entry ends with a CRC-32 of its contents; an entry whose
//! checksum does not match, or that wasmtime refuses, is deleted and rebuilt. Entries are
//! written to a temporary file and renamed into place, so readers never see half an entry.
//!
//! **Trust.** A cache entry is native code that wasmtime loads with only light validation
//! (`Module::deserialize` is `unsafe` for that reason). The checksum catches damage, not
//! malice: anyone who can write to the cache folder can run code as jobhost. The folder is
//! created private (mode 0700), and an existing folder owned by another user or writable by
//! group or others is not used at all (modules are then compiled every time, with a warning).
//! The folders above it are the operator's to keep private.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

use jobhost_core::config::{Config, Limits};
use jobhost_core::grants::Grants;
use jobhost_core::names::check_processor;
use jobhost_core::units::{ByteSize, HumanDuration};

use crate::{Compiled, Kind, Prepared, Sandbox};

/// Processors shipped inside the binary, by name.
const BUILTINS: &[(&str, &[u8])] = &[("echo", include_bytes!(env!("ECHO_WASM")))];

/// How long a job waits for its processor to be read and compiled. Generous: a cold compile
/// of a 19 MB Python component takes 7–10 s on an idle 2-core machine and over a minute on a
/// busy one, and a load that misses it still finishes for the next attempt. What it bounds
/// is a read that never ends (a hung network file system).
pub const LOAD_DEADLINE: Duration = Duration::from_secs(300);

/// How often [`Registry::start_compiling_ahead`] looks for new or changed files: a stat per file.
const COMPILE_AHEAD_INTERVAL: Duration = Duration::from_secs(2);

/// Longest load error kept: it is stored with every attempt of every job that hits it.
const MAX_LOAD_ERROR_LEN: usize = 512;

/// Why a processor cannot run; the message names the processor, the file and the fix, and is
/// at most [`MAX_LOAD_ERROR_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(String);

impl LoadError {
    fn new(mut message: String) -> LoadError {
        if message.len() > MAX_LOAD_ERROR_LEN {
            const ELLIPSIS: &str = "…";
            let mut cut = MAX_LOAD_ERROR_LEN - ELLIPSIS.len();
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(ELLIPSIS);
        }
        LoadError(message)
    }

    /// `processor "NAME" (SOURCE) REASON`.
    fn about(name: &str, source: &Source, reason: impl fmt::Display) -> LoadError {
        LoadError::new(format!("processor \"{name}\" ({source}) {reason}"))
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// Loads processors by name, remembering what it loaded. Shared by the jobs of a process
/// (behind an `Arc`); loads of different processors run in parallel.
pub struct Registry {
    sandbox: Sandbox,
    dir: PathBuf,
    max_size: u64,
    load_deadline: Duration,
    cache: CompileCache,
    /// Locked only to look up or replace an entry, never during a read or a compile.
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
}

/// The task [`Registry::start_compiling_ahead`] started; dropping this stops it.
pub struct CompilingAhead(tokio::task::JoinHandle<()>);

impl Drop for CompilingAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The load of one version of a processor (`stamp`; `None`: the built-in or nothing), done
/// once by the first job that needs it while the others wait for its result.
struct Loaded {
    stamp: Option<Stamp>,
    result: OnceLock<Result<Arc<Prepared>, LoadError>>,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    changed: (i64, i64),
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            changed: (meta.ctime(), meta.ctime_nsec()),
            inode: (meta.dev(), meta.ino()),
        }
    }
}

/// Where a processor's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Builtin,
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Builtin => f.write_str("built-in"),
            Source::File(path) => path.display().fmt(f),
        }
    }
}

/// One line of `jobhost processors`.
#[derive(Debug, Clone)]
pub struct ProcessorInfo {
    pub name: String,
    pub source: Source,
    /// A drop-in file that replaces the built-in processor of the same name.
    pub overrides_builtin: bool,
    /// `None` when the file could not be read.
    pub size: Option<u64>,
    pub sha256: Option<String>,
    /// Module or component, when the file's header says.
    pub kind: Option<Kind>,
    pub limits: Limits,
    pub grants: Grants,
    /// `Err` holds why the processor cannot run.
    pub status: Result<(), String>,
    /// How long checking it took: a compile, or a read from the compile cache.
    pub load_time: Duration,
}

impl ProcessorInfo {
    /// The processor as `jobhost processors --json` and the HTTP API show it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "source": self.source.to_string(),
            "overrides_builtin": self.overrides_builtin,
            "size": self.size,
            "sha256": self.sha256,
            "kind": self.kind.map(Kind::as_str),
            "limits": {
                "fuel": self.limits.fuel,
                "timeout_ms": self.limits.timeout.0.as_millis() as u64,
                "memory_bytes": self.limits.memory.0,
                "stdout_bytes": self.limits.stdout.0,
                "stderr_bytes": self.limits.stderr.0,
            },
            "grants": grants_json(&self.grants),
            "status": if self.status.is_ok() { "ok" } else { "broken" },
            "error": self.status.as_ref().err(),
        })
    }
}

/// The grants, with secrets by name only: their values live in the workers' environment.
fn grants_json(grants: &Grants) -> serde_json::Value {
    serde_json::json!({
        "env": grants.env,
        "secrets": grants.secrets,
        "http": grants.http.as_ref().map(|http| serde_json::json!({
            "allow": http.allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "timeout_ms": http.timeout.0.as_millis() as u64,
            "max_response_bytes": http.max_response.0,
            "max_requests": http.max_requests,
        })),
    })
}

impl Registry {
    pub fn new(config: &Config, sandbox: &Sandbox) -> Registry {
        Registry {
            sandbox: sandbox.clone(),
            dir: config.processors.dir.clone(),
            max_size: config.processors.max_size.0,
            load_deadline: LOAD_DEADLINE,
            cache: CompileCache::new(config.cache_dir(), sandbox.engine()),
            loaded: Mutex::new(HashMap::new()),
        }
    }

    /// The processor called `name`, ready to run: the drop-in file if there is one (reloaded
    /// when it changed since the last call), else the built-in. Reads and compiles on a
    /// blocking thread, so the caller's thread goes on running other tasks meanwhile.
    ///
    /// The common case, a version already loaded, is settled here by one `lstat`, which
    /// neither a FIFO nor a large file can make wait: a thread hand-off per job cost a busy
    /// worker a fifth of its throughput.
    pub async fn load(self: &Arc<Self>, name: &str) -> Result<Arc<Prepared>, LoadError> {
        if let Some(loaded) = self.already_loaded(name) {
            return loaded;
        }
        let registry = Arc::clone(self);
        let owned_name = name.to_owned();
        let loading = tokio::task::spawn_blocking(move || registry.load_blocking(&owned_name));
        match tokio::time::timeout(self.load_deadline, loading).await {
            Ok(Ok(result)) => result,
            Ok(Err(failed)) => std::panic::resume_unwind(failed.into_panic()),
            Err(_elapsed) => Err(LoadError::new(format!(
                "processor \"{name}\" was not read and compiled within {}, so this attempt gave up \
                 waiting; the load goes on and a later attempt will use it (a file on a slow or hung \
                 file system also does this: keep {} local)",
                HumanDuration(self.load_deadline),
                self.dir.display()
            ))),
        }
    }

    /// Starts keeping every drop-in processor loaded, compiling each new or changed file as
    /// soon as it appears (and writing it to the compile cache), so the jobs that need it, in
    /// this process or in workers started later, find it compiled. One file at a time, on a
    /// blocking thread. It stops when the returned value is dropped.
    pub fn start_compiling_ahead(self: &Arc<Self>) -> CompilingAhead {
        CompilingAhead(tokio::spawn(Arc::clone(self).compile_ahead()))
    }

    async fn compile_ahead(self: Arc<Self>) {
        loop {
            match drop_in_names(&self.dir) {
                Ok(names) => {
                    for name in names {
                        if let Err(err) = self.load(&name).await {
                            tracing::debug!("compiling ahead: {err}");
                        }
                    }
                }
                Err(err) => tracing::debug!("compiling ahead: {err:#}"),
            }
            tokio::time::sleep(COMPILE_AHEAD_INTERVAL).await;
        }
    }

    /// The finished load of `name`'s current version, if there is one.
    fn already_loaded(&self, name: &str) -> Option<Result<Arc<Prepared>, LoadError>> {
        check_processor(name).ok()?;
        let stamp = stamp_of(&self.dir.join(format!("{name}.wasm"))).ok()?;
        let memo = self.loaded.lock().expect("nothing panics while holding the memo lock");
        let loaded = memo.get(name).filter(|loaded| loaded.stamp == stamp)?;
        loaded.result.get().cloned()
    }

    /// [`Registry::load`] on the calling thread, without a deadline.
    fn load_blocking(&self, name: &str) -> Result<Arc<Prepared>, LoadError> {
        check_processor(name).map_err(LoadError::new)?;
        let path = self.dir.join(format!("{name}.wasm"));
        let stamp = stamp_of(&path).map_err(|reason| LoadError::about(name, &Source::File(path.clone()), reason))?;
        let loaded = {
            let mut memo = self.loaded.lock().expect("nothing panics while holding the memo lock");
            match memo.get(name) {
                Some(loaded) if loaded.stamp == stamp => Arc::clone(loaded),
                _ => {
                    let fresh = Arc::new(Loaded { stamp, result: OnceLock::new() });
                    memo.insert(name.to_owned(), Arc::clone(&fresh));
                    fresh
                }
            }
        };
        let result = loaded.result.get_or_init(|| match stamp {
            // If the file changes after the stamp was taken, the next load sees a new stamp
            // and reloads, so a stale module is never kept.
            Some(_) => {
                let source = Source::File(path.clone());
                let wasm =
                    read_module(&path, self.max_size).map_err(|reason| LoadError::about(name, &source, reason))?;
                self.prepare(name, &source, &wasm)
            }
            None => match builtin(name) {
                Some(wasm) => self.prepare(name, &Source::Builtin, wasm),
                None => Err(LoadError::new(format!(
                    "processor \"{name}\" not found: no {name}.wasm in {} \
                     (set processors.dir or --processors-dir)",
                    self.dir.display()
                ))),
            },
        });
        result.clone()
    }

    /// Checks that `wasm` is a module, then compiles (or fetches from the cache) and links it.
    fn prepare(&self, name: &str, source: &Source, wasm: &[u8]) -> Result<Arc<Prepared>, LoadError> {
        let fail = |reason: String| LoadError::about(name, source, reason);
        let binary = binary_of(wasm).map_err(fail)?;
        // Hashing a 19 MB component takes tens of milliseconds: the file's digest names the
        // code that ran and, for a binary file, keys the cache as well.
        let file_digest = Sha256::digest(wasm);
        let binary_digest = match &binary {
            Cow::Borrowed(_) => file_digest,
            Cow::Owned(parsed) => Sha256::digest(parsed),
        };
        self.cache
            .compile(self.sandbox.engine(), &binary, &binary_digest)
            .and_then(|compiled| self.sandbox.prepare(&compiled, hex(&file_digest)))
            .map(Arc::new)
            .map_err(|err| fail(format!("cannot be loaded: {err:#}")))
    }
}

/// The version of what is at `path`, following a symlink; `None` when there is nothing. One
/// `lstat` for a regular file or a missing one (the hot path), one `stat` more for a symlink.
/// Anything but a regular file gets a stamp too, and is refused (once) when it is read.
fn stamp_of(path: &Path) -> Result<Option<Stamp>, String> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => match fs::metadata(path) {
            Ok(target) => Ok(Some(Stamp::of(&target))),
            Err(err) => Err(open_problem(path, &err)),
        },
        Ok(meta) => Ok(Some(Stamp::of(&meta))),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(format!("cannot be read: {err}")),
    }
}

/// A drop-in file's bytes. The file must be regular, which is decided on the opened file (no
/// swap between a check and the open), and at most `max_size` bytes, which also bounds the
/// read of a file that grows meanwhile.
fn read_module(path: &Path, max_size: u64) -> Result<Vec<u8>, String> {
    let too_large = || {
        format!(
            "is larger than processors.max_size ({}); raise processors.max_size or ship a smaller module",
            ByteSize(max_size)
        )
    };
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| open_problem(path, &err))?;
    let meta = file.metadata().map_err(|err| format!("cannot be read: {err}"))?;
    if !meta.is_file() {
        return Err(format!(
            "is not a regular file but {}; a processor must be a regular file (or a symlink to one)",
            describe_type(meta.file_type())
        ));
    }
    if meta.len() > max_size {
        return Err(too_large());
    }
    let mut wasm = Vec::with_capacity(meta.len() as usize);
    read_capped(file, max_size, &mut wasm).map_err(|err| format!("cannot be read: {err}"))?;
    if wasm.len() as u64 > max_size {
        return Err(too_large());
    }
    Ok(wasm)
}

/// Reads at most `max_size + 1` bytes: one past the cap tells a file that grew past it.
fn read_capped(reader: impl Read, max_size: u64, into: &mut Vec<u8>) -> io::Result<usize> {
    reader.take(max_size.saturating_add(1)).read_to_end(into)
}

/// Why `path`, which has a directory entry, cannot be opened.
fn open_problem(path: &Path, err: &io::Error) -> String {
    let is_symlink = fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_symlink());
    if err.raw_os_error() == Some(libc::ELOOP) {
        "is a symlink loop; point it at a module or remove it".to_string()
    } else if err.kind() == io::ErrorKind::NotFound && is_symlink {
        "is a dangling symlink (nothing is at its target); point it at a module or remove it".to_string()
    } else {
        format!("cannot be opened: {err}")
    }
}

fn describe_type(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "an unknown kind of file"
    }
}

/// Every processor, built-in and drop-in, with its status after trying to compile it: every
/// `*.wasm` entry of the folder, since `run` and workers would try each. Only a processors
/// folder that exists but cannot be listed is an error; a broken entry is reported in its
/// line and never hides the others.
pub fn list(config: &Config, sandbox: &Sandbox) -> anyhow::Result<Vec<ProcessorInfo>> {
    let registry = Registry::new(config, sandbox);
    let mut infos: Vec<ProcessorInfo> = wasm_files(&config.processors.dir)?
        .into_iter()
        .map(|path| {
            let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let source = Source::File(path.clone());
            let read = read_module(&path, registry.max_size).map_err(|reason| LoadError::about(&name, &source, reason));
            let (size, sha256, kind) = match &read {
                Ok(wasm) => (Some(wasm.len() as u64), Some(hex(&Sha256::digest(wasm))), kind_of(wasm)),
                Err(_) => (None, None, None),
            };
            let started = Instant::now();
            let status = read.and_then(|wasm| {
                check_processor(&name).map_err(LoadError::new)?;
                registry.prepare(&name, &source, &wasm).map(drop)
            });
            ProcessorInfo {
                overrides_builtin: builtin(&name).is_some(),
                kind,
                limits: config.limits_for(&name),
                grants: config.grants_for(&name),
                status: status.map_err(|err| err.0),
                load_time: started.elapsed(),
                name,
                source,
                size,
                sha256,
            }
        })
        .collect();
    for &(name, wasm) in BUILTINS {
        if infos.iter().any(|info| info.name == name) {
            continue;
        }
        let started = Instant::now();
        infos.push(ProcessorInfo {
            name: name.to_string(),
            source: Source::Builtin,
            overrides_builtin: false,
            size: Some(wasm.len() as u64),
            sha256: Some(hex(&Sha256::digest(wasm))),
            kind: kind_of(wasm),
            limits: config.limits_for(name),
            grants: config.grants_for(name),
            status: registry.prepare(name, &Source::Builtin, wasm).map(drop).map_err(|e| e.0),
            load_time: started.elapsed(),
        });
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// What the processors folder holds, told without reading a file: each `*.wasm` entry with
/// the stamp of its file. While it stays the same, [`list`] would list the same processors
/// (the server keeps its listing until it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderVersion(Vec<(PathBuf, Result<Option<Stamp>, String>)>);

/// The [`FolderVersion`] of `config`'s processors folder: one directory read and one `lstat`
/// per entry.
pub fn folder_version(config: &Config) -> anyhow::Result<FolderVersion> {
    let files = wasm_files(&config.processors.dir)?;
    Ok(FolderVersion(files.into_iter().map(|path| (path.clone(), stamp_of(&path))).collect()))
}

/// The names of every processor this host has, built-in or drop-in, without loading any:
/// what `seed` checks a processor name against.
pub fn names(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = BUILTINS.iter().map(|&(name, _)| name.to_string()).collect();
    names.extend(drop_in_names(&config.processors.dir)?);
    names.sort();
    names.dedup();
    Ok(names)
}

/// The valid names of the `NAME.wasm` files in `dir`; none when it does not exist.
fn drop_in_names(dir: &Path) -> anyhow::Result<Vec<String>> {
    let files = wasm_files(dir)?;
    let stems = files.iter().filter_map(|path| path.file_stem()?.to_str());
    Ok(stems.filter(|stem| check_processor(stem).is_ok()).map(str::to_owned).collect())
}

/// Every `*.wasm` entry of `dir`, by path; none when it does not exist. Only a folder that
/// exists but cannot be listed is an error.
fn wasm_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path =
                    entry.with_context(|| format!("cannot list the processors folder {}", dir.display()))?.path();
                if path.extension().is_some_and(|ext| ext == "wasm") {
                    files.push(path);
                }
            }
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => {
            return Err(err).with_context(|| {
                format!("cannot list the processors folder {} (set processors.dir or --processors-dir)", dir.display())
            });
        }
    }
    files.sort();
    Ok(files)
}

/// A warning for each `processors.overrides` key that names no processor (no `NAME.wasm`
/// in the folder and no built-in): almost always a typo, which leaves the processor it
/// meant on the default limits.
pub fn unmatched_override_warnings(config: &Config) -> Vec<String> {
    let known = names(config).unwrap_or_default();
    let dir = &config.processors.dir;
    config
        .processors
        .overrides
        .keys()
        .filter(|name| !known.contains(name))
        .map(|name| {
            format!(
                "processors.overrides.{name} names no processor: there is no {name}.wasm in {} and no \
                 built-in of that name; fix the name or remove the override",
                dir.display()
            )
        })
        .collect()
}

/// A file's WebAssembly as a binary: the file itself, or its WAT text parsed. `Err` says why
/// it is neither, without quoting the file (see the module docs).
fn binary_of(wasm: &[u8]) -> Result<Cow<'_, [u8]>, String> {
    match wat::Detect::from_bytes(wasm) {
        _ if wasm.is_empty() => Err("is an empty file; it must be a WASI command module (wasm32-wasip1) or \
                                     component (wasm32-wasip2)"
            .to_string()),
        wat::Detect::WasmBinary => Ok(Cow::Borrowed(wasm)),
        // Only the first line of a WAT error: the rest quotes the offending line.
        wat::Detect::WasmText => wat::parse_bytes(wasm).map_err(|err| {
            let error = err.to_string();
            format!("is not valid WebAssembly text: {}", error.lines().next().unwrap_or_default())
        }),
        wat::Detect::Unknown => {
            let shown: Vec<String> = wasm.iter().take(4).map(|byte| format!("{byte:02x}")).collect();
            let more = if wasm.len() > shown.len() { " …" } else { "" };
            Err(format!(
                "is not WebAssembly (starts with {}{more}); it must be a binary module or \
                 component (starting with 00 61 73 6d, \"\\0asm\") or WAT text (starting with \"(\")",
                shown.join(" ")
            ))
        }
    }
}

/// The kind of a file's WebAssembly, when it is WebAssembly at all.
fn kind_of(wasm: &[u8]) -> Option<Kind> {
    Kind::of(&binary_of(wasm).ok()?)
}

fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(builtin, _)| *builtin == name).map(|&(_, wasm)| wasm)
}

/// The on-disk compiled-module cache; see the module docs for the layout and trust rule.
struct CompileCache {
    /// `None` when the folder is not safe to load native code from.
    dir: Option<PathBuf>,
    /// SHA-256 of the engine's compatibility hash input: two engines that would produce
    /// interchangeable code get the same value, in every build and every process.
    engine_key: [u8; 32],
}

/// A CRC-32 of the entry: it catches damage at a fraction of a cryptographic hash's cost,
/// which every worker start would pay; malice is the folder's permissions' job (module docs).
const CHECKSUM_LEN: usize = 4;

impl CompileCache {
    fn new(dir: PathBuf, engine: &Engine) -> CompileCache {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let dir = match distrust(&dir) {
            None => Some(dir),
            Some(reason) => {
                tracing::warn!(
                    "not using the compiled-module cache folder {}: {reason}; every module is compiled \
                     instead, which is slower",
                    dir.display()
                );
                None
            }
        };
        CompileCache { dir, engine_key: hasher.0.finalize().into() }
    }

    /// Compiles a binary module or component (whose SHA-256 is `digest`), or fetches it from
    /// the cache.
    fn compile(&self, engine: &Engine, wasm: &[u8], digest: &[u8]) -> anyhow::Result<Compiled> {
        let kind = Kind::of(wasm).ok_or_else(|| {
            anyhow::anyhow!("its header is neither a WebAssembly module's (version 1) nor a component's")
        })?;
        let compile = || -> anyhow::Result<Compiled> {
            Ok(match kind {
                Kind::Module => Compiled::Module(Module::from_binary(engine, wasm)?),
                Kind::Component => Compiled::Component(Component::from_binary(engine, wasm)?),
            })
        };
        let Some(dir) = &self.dir else {
            return compile();
        };
        let key = Sha256::new().chain_update(digest).chain_update(self.engine_key).finalize();
        let path = dir.join(format!("{}.cwasm", hex(&key)));
        if let Some(compiled) = self.read(engine, kind, &path) {
            return Ok(compiled);
        }
        let compiled = compile()?;
        self.write(dir, &path, &compiled);
        Ok(compiled)
    }

    /// A cached module or component, or `None` to compile. Anything wrong with an entry is a
    /// miss.
    fn read(&self, engine: &Engine, kind: Kind, path: &Path) -> Option<Compiled> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!("cannot read compiled-module cache entry {}: {err}; recompiling", path.display());
                return None;
            }
        };
        match deserialize_verified(engine, kind, &bytes) {
            Ok(compiled) => Some(compiled),
            Err(reason) => {
                tracing::warn!(
                    "compiled-module cache entry {} is unusable ({reason}); deleting it and recompiling",
                    path.display()
                );
                if let Err(err) = fs::remove_file(path) {
                    tracing::warn!("cannot delete {}: {err}", path.display());
                }
                None
            }
        }
    }

    /// Best effort: a cache that cannot be written costs a recompile next time, not the run.
    fn write(&self, dir: &Path, path: &Path, compiled: &Compiled) {
        static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
        let temp =
            path.with_extension(format!("{}-{}.tmp", std::process::id(), NEXT_TEMP.fetch_add(1, Ordering::Relaxed)));
        let written = (|| -> anyhow::Result<()> {
            create_private_dir(dir)?;
            let mut bytes = match compiled {
                Compiled::Module(module) => module.serialize()?,
                Compiled::Component(component) => component.serialize()?,
            };
            let checksum = crc32fast::hash(&bytes);
            bytes.extend_from_slice(&checksum.to_le_bytes());
            // No fsync: an entry damaged by a crash fails its checksum and is rebuilt.
            fs::File::create(&temp)?.write_all(&bytes)?;
            fs::rename(&temp, path)?;
            Ok(())
        })();
        if let Err(err) = written {
            let _ = fs::remove_file(&temp);
            tracing::warn!(
                "cannot write compiled-module cache entry {}: {err:#}; the module will be \
                 recompiled by the next process (check that processors.cache_dir is writable)",
                path.display()
            );
        }
    }
}

/// Checks an entry's trailing checksum, then lets wasmtime check the artifact against this
/// engine.
fn deserialize_verified(engine: &Engine, kind: Kind, entry: &[u8]) -> Result<Compiled, String> {
    let Some(body_len) = entry.len().checked_sub(CHECKSUM_LEN) else {
        return Err(format!("only {} bytes long", entry.len()));
    };
    let (body, checksum) = entry.split_at(body_len);
    if crc32fast::hash(body).to_le_bytes() != checksum {
        return Err("its checksum does not match its contents".to_string());
    }
    // SAFETY: `deserialize` trusts the artifact to be code wasmtime produced. The checksum
    // shows the entry is intact as written, and only this process's user can write the cache
    // folder (module docs), so it is code `write` serialized. Version, target and config
    // mismatches are still detected by wasmtime and return an error.
    let compiled = match kind {
        Kind::Module => unsafe { Module::deserialize(engine, body) }.map(Compiled::Module),
        // SAFETY: as above.
        Kind::Component => unsafe { Component::deserialize(engine, body) }.map(Compiled::Component),
    };
    compiled.map_err(|err| format!("{err:#}"))
}

/// Creates the cache folder itself private; folders above it get the usual permissions. A
/// folder that is already there must pass [`distrust`] (it may have appeared since the check
/// at start).
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut builder = fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => match distrust(dir) {
            None => Ok(()),
            Some(reason) => Err(io::Error::other(reason)),
        },
        result => result,
    }
}

/// Why the cache folder `dir` (the folder itself, following a symlink) must not be used, if
/// it exists: someone other than this user could put native code in it. A folder that does
/// not exist yet is fine; it is created private.
fn distrust(dir: &Path) -> Option<String> {
    let meta = fs::metadata(dir).ok()?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let user = unsafe { libc::geteuid() };
    if meta.uid() != user {
        return Some(format!(
            "it is owned by uid {}, not by jobhost's user (uid {user}); set processors.cache_dir to a \
             folder of jobhost's user",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "other users can write to it (mode {mode:o}); run `chmod 700 {}` or set processors.cache_dir \
             to a private folder",
            dir.display()
        ));
    }
    None
}

/// Feeds a `Hash` value into SHA-256: unlike `DefaultHasher`, its output is the same in every
/// build and process, so it can name files.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 digest is 32 bytes"))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;
    use crate::{JobInput, Outcome};

    const EXIT0: &str = include_str!("../../../tests/fixtures/processors/exit0.wat");
    const EXIT3: &str = include_str!("../../../tests/fixtures/processors/exit3.wat");

    fn setup() -> (tempfile::TempDir, Config, Sandbox) {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.processors.dir = tmp.path().join("processors");
        config.processors.cache_dir = Some(tmp.path().join("cache"));
        fs::create_dir(&config.processors.dir).unwrap();
        (tmp, config, Sandbox::new(1).unwrap())
    }

    async fn run(sandbox: &Sandbox, program: &Prepared, payload: &[u8]) -> crate::RunReport {
        let job = JobInput { job_id: "j", attempt: 1, pool: "p", processor: "t", payload };
        sandbox.run(program, job, &Limits::default(), &jobhost_core::grants::Grants::default()).await
    }

    async fn load_error(registry: &Arc<Registry>, name: &str) -> String {
        registry.load(name).await.err().unwrap_or_else(|| panic!("{name} loaded")).to_string()
    }

    /// Replaces `path` the way deployments should: write beside it, then rename over it.
    fn install(path: &Path, text: &str) {
        let temp = path.with_extension("tmp");
        fs::write(&temp, text).unwrap();
        fs::rename(&temp, path).unwrap();
    }

    #[tokio::test]
    async fn a_long_lived_registry_sees_new_and_changed_files_and_reuses_unchanged_ones() {
        let (_tmp, config, sandbox) = setup();
        let registry = Arc::new(Registry::new(&config, &sandbox));
        let missing = load_error(&registry, "late").await;
        assert!(missing.contains("processor \"late\" not found: no late.wasm in"), "{missing}");

        let path = config.processors.dir.join("late.wasm");
        install(&path, EXIT0);
        let first = registry.load("late").await.unwrap();
        assert_eq!(run(&sandbox, &first, b"{}").await.outcome, Outcome::Ok(serde_json::json!({"done": true})));
        assert!(Arc::ptr_eq(&first, &registry.load("late").await.unwrap()), "an unchanged file is not reloaded");

        install(&path, EXIT3);
        let second = registry.load("late").await.unwrap();
        assert_eq!(run(&sandbox, &second, b"{}").await.outcome, Outcome::Exit(3));

        fs::remove_file(&path).unwrap();
        assert!(registry.load("late").await.is_err());
    }

    #[tokio::test]
    async fn a_broken_file_is_reported_until_it_is_fixed() {
        let (_tmp, config, sandbox) = setup();
        let registry = Arc::new(Registry::new(&config, &sandbox));
        let path = config.processors.dir.join("fixme.wasm");
        install(&path, "(module");
        let error = load_error(&registry, "fixme").await;
        assert!(error.starts_with("processor \"fixme\" ("), "{error}");
        assert_eq!(load_error(&registry, "fixme").await, error);
        install(&path, EXIT0);
        assert!(registry.load("fixme").await.is_ok());
    }

    #[tokio::test]
    async fn only_binary_modules_and_wat_text_are_parsed_and_errors_quote_no_contents() {
        let (_tmp, config, sandbox) = setup();
        let registry = Arc::new(Registry::new(&config, &sandbox));
        let dir = &config.processors.dir;
        let commented = format!(";; a line comment\n(; a (; nested ;) block comment ;)\n  {EXIT0}");
        fs::write(dir.join("commented.wasm"), commented).unwrap();
        assert!(registry.load("commented").await.is_ok());
        fs::write(dir.join("binary.wasm"), wat::parse_str(EXIT0).unwrap()).unwrap();
        assert!(registry.load("binary").await.is_ok());

        let secret = "token = hunter2 ".repeat(10_000);
        fs::write(dir.join("text.wasm"), &secret).unwrap();
        let error = load_error(&registry, "text").await;
        assert!(error.contains("is not WebAssembly (starts with 74 6f 6b 65 …)"), "{error}");

        // WAT that does not parse: only the parser's message, not the line it quotes.
        fs::write(dir.join("bad_wat.wasm"), format!("(module {secret})")).unwrap();
        let error = load_error(&registry, "bad_wat").await;
        assert!(error.contains("is not valid WebAssembly text: ") && !error.contains("hunter2"), "{error}");

        let long_dir = dir.join("x".repeat(200)).join("y".repeat(200));
        fs::create_dir_all(&long_dir).unwrap();
        fs::write(long_dir.join("text.wasm"), &secret).unwrap();
        let mut deep = config.clone();
        deep.processors.dir = long_dir;
        let error = load_error(&Arc::new(Registry::new(&deep, &sandbox)), "text").await;
        assert!(error.len() <= MAX_LOAD_ERROR_LEN && error.ends_with('…'), "{} bytes: {error}", error.len());
    }

    #[tokio::test]
    async fn entries_that_are_not_regular_files_are_refused_unread() {
        let (tmp, config, sandbox) = setup();
        let registry = Arc::new(Registry::new(&config, &sandbox));
        let dir = &config.processors.dir;
        let fifo = std::ffi::CString::new(dir.join("fifo.wasm").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path and nothing else.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        fs::create_dir(dir.join("folder.wasm")).unwrap();
        symlink("/dev/zero", dir.join("zero.wasm")).unwrap();
        symlink(tmp.path().join("gone"), dir.join("dangling.wasm")).unwrap();
        symlink(dir.join("loop.wasm"), dir.join("loop.wasm")).unwrap();
        let cases = [
            ("fifo", "is not a regular file but a FIFO"),
            ("folder", "is not a regular file but a directory"),
            ("zero", "is not a regular file but a character device"),
            ("dangling", "is a dangling symlink"),
            ("loop", "is a symlink loop"),
        ];
        for (name, expected) in cases {
            let error = load_error(&registry, name).await;
            assert!(error.contains(expected), "{name}: {error}");
        }
        // A symlink to a module is fine.
        fs::write(tmp.path().join("exit0.wat"), EXIT0).unwrap();
        symlink(tmp.path().join("exit0.wat"), dir.join("linked.wasm")).unwrap();
        assert!(registry.load("linked").await.is_ok());
    }

    #[tokio::test]
    async fn a_file_over_max_size_is_refused_and_reads_stop_past_the_cap() {
        let (_tmp, mut config, sandbox) = setup();
        config.processors.max_size = ByteSize(EXIT0.len() as u64 - 1);
        fs::write(config.processors.dir.join("big.wasm"), EXIT0).unwrap();
        let error = load_error(&Arc::new(Registry::new(&config, &sandbox)), "big").await;
        assert!(error.contains("is larger than processors.max_size"), "{error}");

        let mut read = Vec::new();
        read_capped(io::repeat(0), 1000, &mut read).unwrap();
        assert_eq!(read.len(), 1001);
    }

    #[tokio::test]
    async fn a_load_past_its_deadline_fails_the_waiter_and_finishes_for_the_next() {
        let (_tmp, config, sandbox) = setup();
        // A cold compile of echo takes tens of milliseconds.
        let registry =
            Arc::new(Registry { load_deadline: Duration::from_millis(1), ..Registry::new(&config, &sandbox) });
        let error = load_error(&registry, "echo").await;
        assert!(error.contains("was not read and compiled within 1ms"), "{error}");
        // Joins the compile still under way instead of starting another.
        let waiting = Arc::clone(&registry);
        let program = tokio::task::spawn_blocking(move || waiting.load_blocking("echo")).await.unwrap().unwrap();
        assert!(Arc::ptr_eq(&program, &registry.load_blocking("echo").unwrap()));
    }

    #[tokio::test]
    async fn echo_is_built_in_and_rejects_a_payload_that_is_not_json() {
        let (_tmp, config, sandbox) = setup();
        let echo = Arc::new(Registry::new(&config, &sandbox)).load("echo").await.unwrap();
        let report = run(&sandbox, &echo, b"{\"a\": \"b\"}").await;
        assert_eq!(
            report.outcome,
            Outcome::Ok(serde_json::json!({"status": "completed", "processed": true, "echo": {"a": "b"}}))
        );
        let report = run(&sandbox, &echo, b"not json").await;
        assert_eq!(report.outcome, Outcome::Exit(2));
        assert!(report.stderr.contains("the payload is not JSON"), "{}", report.stderr);
        for bad_delay in [&b"{\"delay_ms\": \"soon\"}"[..], b"{\"delay_ms\": -1}", b"{\"delay_ms\": 1e300}"] {
            let report = run(&sandbox, &echo, bad_delay).await;
            assert_eq!(report.outcome, Outcome::Exit(2));
            assert!(report.stderr.contains("delay_ms must be"), "{}", report.stderr);
        }
    }

    #[test]
    fn overrides_naming_no_processor_are_found() {
        let (_tmp, mut config, _sandbox) = setup();
        fs::write(config.processors.dir.join("resize.wasm"), EXIT0).unwrap();
        for name in ["resize", "echo", "resise"] {
            config.processors.overrides.insert(name.to_string(), Default::default());
        }
        let warnings = unmatched_override_warnings(&config);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("processors.overrides.resise names no processor: "), "{warnings:?}");
    }

    #[test]
    fn cache_entries_are_checked_before_use() {
        let (_tmp, config, sandbox) = setup();
        let engine = sandbox.engine();
        let cache = CompileCache::new(config.cache_dir(), engine);
        let compile = |wasm: &[u8]| cache.compile(engine, wasm, &Sha256::digest(wasm)).unwrap();
        let Compiled::Module(module) = compile(&wat::parse_str(EXIT0).unwrap()) else {
            panic!("a module compiles to a module");
        };
        let mut entry = module.serialize().unwrap();
        entry.extend_from_slice(&crc32fast::hash(&entry).to_le_bytes());
        let check = |entry: &[u8]| deserialize_verified(engine, Kind::Module, entry).map(drop);
        assert!(check(&entry).is_ok());
        let last = entry.len() - CHECKSUM_LEN - 1;
        entry[last] ^= 1;
        assert!(check(&entry).unwrap_err().contains("checksum"));
        assert!(check(b"abc").unwrap_err().contains("3 bytes"));
        let component = compile(&wat::parse_str("(component)").unwrap());
        assert!(matches!(component, Compiled::Component(_)), "the header tells a component from a module");
    }
}
