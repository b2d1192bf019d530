//! The processors registry: which processors exist, where their code comes from, and turning
//! that code into a [`Prepared`] module the [`Sandbox`] can run.
//!
//! A processor is either **built in** (today only `echo`, compiled from `processors/echo` by
//! `build.rs` and embedded in the binary) or a **drop-in file**: every `NAME.wasm` directly in
//! the processors folder (`processors.dir`, `--processors-dir`, `$JOBHOST_PROCESSORS`).
//! Subfolders are ignored, so a processor's sources can live beside its module. The name is the
//! file stem and must match `[A-Za-z0-9_-]{1,64}`. A file named like a built-in replaces it.
//!
//! **Picking up changes.** [`Registry::load`] runs once per job, so its hot path is one `stat`:
//! a module is reloaded when the file's size, modification time, change time or inode differ
//! from what was loaded (replacing a file by `rename`, the safe way to deploy one, always
//! changes the inode). Failures are remembered per file version too, so a broken file costs one
//! compile attempt, not one per job.
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
//! created private (mode 0700); keep it, and the folders above it, writable only by the user
//! jobhost runs as.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

use crate::config::{Config, Limits};
use crate::sandbox::{Prepared, Sandbox};

/// Processors shipped inside the binary, by name.
const BUILTINS: &[(&str, &[u8])] = &[("echo", include_bytes!(env!("ECHO_WASM")))];

/// Why a processor cannot run; the message names the processor, the file and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// Loads processors by name for one process, remembering what it loaded.
pub struct Registry {
    sandbox: Sandbox,
    dir: PathBuf,
    cache: CompileCache,
    loaded: HashMap<String, Loaded>,
}

/// One load, good or bad, and the file version it came from (`None`: the built-in).
struct Loaded {
    stamp: Option<Stamp>,
    result: Result<Arc<Prepared>, LoadError>,
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    changed: (i64, i64),
    #[cfg(unix)]
    inode: (u64, u64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Stamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            changed: (meta.ctime(), meta.ctime_nsec()),
            #[cfg(unix)]
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
    pub limits: Limits,
    /// `Err` holds why the processor cannot run.
    pub status: Result<(), String>,
}

impl Registry {
    pub fn new(config: &Config, sandbox: &Sandbox) -> Registry {
        Registry {
            sandbox: sandbox.clone(),
            dir: config.processors.dir.clone(),
            cache: CompileCache::new(config.cache_dir(), sandbox.engine()),
            loaded: HashMap::new(),
        }
    }

    /// The processor called `name`, ready to run: the drop-in file if there is one (reloaded
    /// when it changed since the last call), else the built-in.
    pub fn load(&mut self, name: &str) -> Result<Arc<Prepared>, LoadError> {
        validate_name(name).map_err(LoadError)?;
        let path = self.dir.join(format!("{name}.wasm"));
        let stamp = match fs::metadata(&path) {
            Ok(meta) => Some(Stamp::of(&meta)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => {
                return Err(LoadError(format!("processor \"{name}\": cannot read {}: {err}", path.display())));
            }
        };
        if let Some(loaded) = self.loaded.get(name)
            && loaded.stamp == stamp
        {
            return loaded.result.clone();
        }
        let result = match stamp {
            // Read after the stat: if the file changes in between, the next load sees a new
            // stamp and reloads, so a stale module is never kept.
            Some(_) => match fs::read(&path) {
                Ok(wasm) => self.prepare(name, &Source::File(path), &wasm),
                Err(err) => Err(LoadError(format!("processor \"{name}\": cannot read {}: {err}", path.display()))),
            },
            None => match builtin(name) {
                Some(wasm) => self.prepare(name, &Source::Builtin, wasm),
                None => {
                    return Err(LoadError(format!(
                        "processor \"{name}\" not found: no {name}.wasm in {} \
                         (set processors.dir or --processors-dir)",
                        self.dir.display()
                    )));
                }
            },
        };
        self.loaded.insert(name.to_string(), Loaded { stamp, result: result.clone() });
        result
    }

    /// Compiles (or fetches from the cache) and links one module.
    fn prepare(&self, name: &str, source: &Source, wasm: &[u8]) -> Result<Arc<Prepared>, LoadError> {
        let origin = match source {
            Source::Builtin => "built-in".to_string(),
            Source::File(path) => path.display().to_string(),
        };
        if wasm.is_empty() {
            return Err(LoadError(format!(
                "processor \"{name}\" ({origin}) is an empty file; it must be a wasm32-wasip1 \
                 command module"
            )));
        }
        self.cache
            .module(self.sandbox.engine(), wasm)
            .and_then(|module| self.sandbox.prepare(&module))
            .map(Arc::new)
            .map_err(|err| LoadError(format!("processor \"{name}\" ({origin}) cannot be loaded: {err:#}")))
    }
}

/// Every processor, built-in and drop-in, with its status after trying to compile it. Only a
/// processors folder that exists but cannot be listed is an error; a broken file is reported
/// in its entry and never hides the others.
pub fn list(config: &Config, sandbox: &Sandbox) -> anyhow::Result<Vec<ProcessorInfo>> {
    let registry = Registry::new(config, sandbox);
    let dir = &config.processors.dir;
    let mut files = Vec::new();
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path =
                    entry.with_context(|| format!("cannot list the processors folder {}", dir.display()))?.path();
                if path.extension().is_some_and(|ext| ext == "wasm") && path.is_file() {
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

    let mut infos: Vec<ProcessorInfo> = files
        .into_iter()
        .map(|path| {
            let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            let overrides_builtin = builtin(&name).is_some();
            let limits = config.limits_for(&name);
            let source = Source::File(path.clone());
            match fs::read(&path) {
                Ok(wasm) => {
                    let status = validate_name(&name)
                        .and_then(|()| registry.prepare(&name, &source, &wasm).map(drop).map_err(|e| e.0));
                    ProcessorInfo {
                        size: Some(wasm.len() as u64),
                        sha256: Some(hex(&Sha256::digest(&wasm))),
                        name,
                        source,
                        overrides_builtin,
                        limits,
                        status,
                    }
                }
                Err(err) => ProcessorInfo {
                    status: Err(format!("cannot read {}: {err}", path.display())),
                    size: None,
                    sha256: None,
                    name,
                    source,
                    overrides_builtin,
                    limits,
                },
            }
        })
        .collect();
    for &(name, wasm) in BUILTINS {
        if infos.iter().any(|info| info.name == name) {
            continue;
        }
        infos.push(ProcessorInfo {
            name: name.to_string(),
            source: Source::Builtin,
            overrides_builtin: false,
            size: Some(wasm.len() as u64),
            sha256: Some(hex(&Sha256::digest(wasm))),
            limits: config.limits_for(name),
            status: registry.prepare(name, &Source::Builtin, wasm).map(drop).map_err(|e| e.0),
        });
    }
    infos.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(infos)
}

/// The names of every processor this host has, built-in or drop-in, without loading any:
/// what `seed` checks a processor name against.
pub fn names(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = BUILTINS.iter().map(|&(name, _)| name.to_string()).collect();
    let dir = &config.processors.dir;
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path =
                    entry.with_context(|| format!("cannot list the processors folder {}", dir.display()))?.path();
                if path.extension().is_some_and(|ext| ext == "wasm")
                    && let Some(stem) = path.file_stem().and_then(|stem| stem.to_str())
                    && validate_name(stem).is_ok()
                {
                    names.push(stem.to_string());
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
    names.sort();
    names.dedup();
    Ok(names)
}

fn builtin(name: &str) -> Option<&'static [u8]> {
    BUILTINS.iter().find(|(builtin, _)| *builtin == name).map(|&(_, wasm)| wasm)
}

/// Checks a processor name: 1 to 64 ASCII letters, digits, `_` or `-` (the file stem of
/// `NAME.wasm`, so it can never point outside the processors folder).
pub fn validate_name(name: &str) -> Result<(), String> {
    let valid =
        (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid processor name {name:?}: a name (the file stem of NAME.wasm) is 1 to 64 \
             letters, digits, '_' or '-'"
        ))
    }
}

/// The on-disk compiled-module cache; see the module docs for the layout and trust rule.
struct CompileCache {
    dir: PathBuf,
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
        CompileCache { dir, engine_key: hasher.0.finalize().into() }
    }

    fn module(&self, engine: &Engine, wasm: &[u8]) -> anyhow::Result<Module> {
        let key = Sha256::new().chain_update(Sha256::digest(wasm)).chain_update(self.engine_key).finalize();
        let path = self.dir.join(format!("{}.cwasm", hex(&key)));
        if let Some(module) = self.read(engine, &path) {
            return Ok(module);
        }
        let module = Module::new(engine, wasm)?;
        self.write(&path, &module);
        Ok(module)
    }

    /// A cached module, or `None` to compile. Anything wrong with an entry is a miss.
    fn read(&self, engine: &Engine, path: &Path) -> Option<Module> {
        let bytes = match fs::read(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!("cannot read compiled-module cache entry {}: {err}; recompiling", path.display());
                return None;
            }
        };
        match deserialize_verified(engine, &bytes) {
            Ok(module) => Some(module),
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
    fn write(&self, path: &Path, module: &Module) {
        static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);
        let temp =
            path.with_extension(format!("{}-{}.tmp", std::process::id(), NEXT_TEMP.fetch_add(1, Ordering::Relaxed)));
        let written = (|| -> anyhow::Result<()> {
            create_private_dir(&self.dir)?;
            let mut bytes = module.serialize()?;
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
fn deserialize_verified(engine: &Engine, entry: &[u8]) -> Result<Module, String> {
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
    unsafe { Module::deserialize(engine, body) }.map_err(|err| format!("{err:#}"))
}

/// Creates the cache folder itself private; folders above it get the usual permissions.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    match builder.create(dir) {
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        result => result,
    }
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
    use super::*;
    use crate::sandbox::{JobInput, Outcome};

    const EXIT0: &str = include_str!("../../tests/fixtures/processors/exit0.wat");
    const EXIT3: &str = include_str!("../../tests/fixtures/processors/exit3.wat");

    fn setup() -> (tempfile::TempDir, Config, Sandbox) {
        let tmp = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.processors.dir = tmp.path().join("processors");
        config.processors.cache_dir = Some(tmp.path().join("cache"));
        fs::create_dir(&config.processors.dir).unwrap();
        (tmp, config, Sandbox::new(1).unwrap())
    }

    async fn run(sandbox: &Sandbox, program: &Prepared, payload: &[u8]) -> crate::sandbox::RunReport {
        let job = JobInput { job_id: "j", attempt: 1, pool: "p", processor: "t", payload };
        sandbox.run(program, job, &Limits::default()).await
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
        let mut registry = Registry::new(&config, &sandbox);
        let missing = registry.load("late").err().unwrap().to_string();
        assert!(missing.contains("processor \"late\" not found: no late.wasm in"), "{missing}");

        let path = config.processors.dir.join("late.wasm");
        install(&path, EXIT0);
        let first = registry.load("late").unwrap();
        assert_eq!(run(&sandbox, &first, b"{}").await.outcome, Outcome::Ok(serde_json::json!({"done": true})));
        assert!(Arc::ptr_eq(&first, &registry.load("late").unwrap()), "an unchanged file is not reloaded");

        install(&path, EXIT3);
        let second = registry.load("late").unwrap();
        assert_eq!(run(&sandbox, &second, b"{}").await.outcome, Outcome::Exit(3));

        fs::remove_file(&path).unwrap();
        assert!(registry.load("late").is_err());
    }

    #[tokio::test]
    async fn a_broken_file_is_reported_until_it_is_fixed() {
        let (_tmp, config, sandbox) = setup();
        let mut registry = Registry::new(&config, &sandbox);
        let path = config.processors.dir.join("fixme.wasm");
        install(&path, "(module");
        let error = registry.load("fixme").err().unwrap().to_string();
        assert!(error.starts_with("processor \"fixme\" ("), "{error}");
        assert_eq!(registry.load("fixme").err().unwrap().to_string(), error);
        install(&path, EXIT0);
        assert!(registry.load("fixme").is_ok());
    }

    #[tokio::test]
    async fn echo_is_built_in_and_rejects_a_payload_that_is_not_json() {
        let (_tmp, config, sandbox) = setup();
        let echo = Registry::new(&config, &sandbox).load("echo").unwrap();
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
    fn names_are_checked() {
        for good in ["echo", "a", "resize-image_v2", &"x".repeat(64)] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a b", "a.b", "ünï", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cache_entries_are_checked_before_use() {
        let (_tmp, config, sandbox) = setup();
        let engine = sandbox.engine();
        let cache = CompileCache::new(config.cache_dir(), engine);
        let module = cache.module(engine, EXIT0.as_bytes()).unwrap();
        let mut entry = module.serialize().unwrap();
        entry.extend_from_slice(&crc32fast::hash(&entry).to_le_bytes());
        assert!(deserialize_verified(engine, &entry).is_ok());
        let last = entry.len() - CHECKSUM_LEN - 1;
        entry[last] ^= 1;
        assert!(deserialize_verified(engine, &entry).unwrap_err().contains("checksum"));
        assert!(deserialize_verified(engine, b"abc").unwrap_err().contains("3 bytes"));
    }
}
