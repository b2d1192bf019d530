//! jobhost-sandbox: finding, compiling and running processors. It builds on `jobhost-core`
//! (limits, grants, outcome kinds) and must not know about the pool, the command line or
//! HTTP serving: it gets a job's input and gives back how the run ended.
//!
//! The sandbox: runs one processor (a WASI preview1 command module or a WASI 0.2 command
//! component) for one job, bounded in CPU, wall-clock time, memory and output, with only the
//! capabilities granted to it, and says how the run ended.
//!
//! This crate's root owns everything wasmtime-specific about *running* code; finding and compiling
//! processors is [`crate::processors`]' job, deciding what a grant allows is
//! [`jobhost_core::grants`]'. The pieces, and why each is there:
//!
//! - **One [`Engine`] per process** ([`Sandbox::new`]). It enables fuel (a deterministic CPU
//!   budget) and epoch interruption, and uses the pooling allocator with room for the runs
//!   the caller keeps in flight, so instantiating a job costs microseconds instead of an
//!   `mmap`. A component holds several core instances, memories and tables, so each run's
//!   share of the pool is sized for one (see [`PER_RUN`]). The pool keeps 2 MiB of each freed
//!   memory and table resident (reset with `memset` rather than `madvise`), which is what
//!   keeps several threads from collapsing on TLB shootdowns. If the pool's address space
//!   cannot be reserved (small VA, `ulimit -v`), instances are allocated on demand, with
//!   bounds-checked memories that reserve nothing in advance: slower, but it runs wherever
//!   the memory cap fits.
//! - **An epoch ticker** on a plain OS thread (not a tokio task, which a CPU-bound guest could
//!   starve). Every tick, a running guest yields to the async executor; that yield is what
//!   lets the wall-clock timeout below fire while a guest spins in a loop.
//! - **Two async linkers**, built once: WASI preview1 for modules, and for components the
//!   whole `wasi:cli/command` world plus `wasi:http` (what componentize-py and
//!   componentize-js import). Nothing is reachable through them by default: no preopened
//!   directory (no files), every socket operation and name lookup denied, and outgoing HTTP
//!   refused unless the processor's grant allows the host ([`http`]). Async matters: a guest
//!   sleeping on a clock or waiting on the network is blocked inside the host, where neither
//!   fuel nor epochs can reach it. The whole instantiate-and-call future runs under
//!   `tokio::time::timeout`, and dropping that future at the deadline cancels the wait. The
//!   deadline covers the run alone: it starts once the program is compiled and the run has a
//!   pool slot, so compiling is never charged to a job.
//! - **A fresh [`Store`] per job** holding the WASI context (stdin = payload; stdout and stderr
//!   are in-memory pipes with a cap; env exactly `JOB_ID`, `JOB_ATTEMPT`, `JOB_POOL` plus the
//!   granted variables and secrets; argv `[name]`) and a limiter that caps linear memory, summed
//!   over all of a component's memories, and tables, and *records* a refused growth. Hitting the
//!   memory cap is not a trap in wasmtime (the guest sees `memory.grow` return -1 and usually
//!   aborts), so without that record a memory problem would look like a random `unreachable`.
//! - **Host memory held for a component** ([`host_memory`]): its resources live in the host,
//!   outside its linear memory, so they are bounded in number and counted against the same
//!   memory cap, measured after every host call.
//! - **Only the WebAssembly processors need** ([`ACCEPTED_FEATURES`]): every other proposal
//!   wasmtime offers is refused when a processor is compiled.
//! - **A report that shows no secret** ([`redact`]): the granted secrets' values are masked
//!   in stdout, stderr and messages where the report is assembled, and messages are capped.
//!
//! A run ends in exactly one [`Outcome`]; the order of the checks in `classify` is the
//! contract: a refused memory growth explains a failure better than the trap it caused, and
//! output past a cap invalidates even a run that then exits 0 (its result is truncated).

mod host_memory;
mod http;
pub mod processors;
mod redact;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::Value;
use tokio::sync::Semaphore;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{
    CallHook, Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module, PoolingAllocationConfig,
    ResourceLimiter, Store, Trap, WasmBacktrace, WasmFeatures,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use jobhost_core::config::Limits;
use jobhost_core::grants::Grants;
use jobhost_core::outcome::OutcomeKind;

/// Epoch granularity: how often a running guest yields, hence how late a timeout can fire.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Fuel between yields of a CPU-bound guest (about 1–2 ms of work): bounds how stale the fuel
/// count of a timed-out run can be, at a cost of a few hundred cheap yields per second.
const FUEL_YIELD_INTERVAL: u64 = 10_000_000;

/// Bytes of each freed memory/table the pool resets with `memset` instead of `madvise`.
const KEEP_RESIDENT: usize = 2 << 20;

/// Most elements any table may grow to. Tables hold function references (8 bytes each); a
/// Rust guest needs a few hundred, an embedded CPython tens of thousands.
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The WebAssembly a processor may use: WebAssembly 2.0 (what Rust, wasi-sdk, CPython and
/// SpiderMonkey builds emit), extended constant expressions (position-independent code, as
/// componentize-py links) and the component model. Everything else wasmtime offers is
/// refused when a processor is compiled: each is code the host does not need and attack
/// surface it does not want. 64-bit memories let a guest ask for sizes the limiter must not
/// wrap on, several memories per module multiply what one cap must cover, and the rest
/// (tail calls, typed function references, GC, relaxed SIMD, whose results differ between
/// machines, threads, exceptions, stack switching, custom page sizes, wide arithmetic, the
/// component model's async and other extensions) are newer compiler paths no processor
/// of ours exercises. An allowlist, so a proposal a wasmtime upgrade turns on stays off.
/// `docs/processors.md` lists the same set.
const ACCEPTED_FEATURES: WasmFeatures = WasmFeatures::FLOATS
    .union(WasmFeatures::MUTABLE_GLOBAL)
    .union(WasmFeatures::SATURATING_FLOAT_TO_INT)
    .union(WasmFeatures::SIGN_EXTENSION)
    .union(WasmFeatures::MULTI_VALUE)
    .union(WasmFeatures::BULK_MEMORY)
    .union(WasmFeatures::REFERENCE_TYPES)
    .union(WasmFeatures::SIMD)
    .union(WasmFeatures::EXTENDED_CONST)
    .union(WasmFeatures::COMPONENT_MODEL);

/// Pool room one run may use: a component built by componentize-py or componentize-js holds a
/// few dozen core instances and a handful of memories and tables (its interpreter, libc and
/// the WASI adapters are separate core modules); a module, one instance with as many
/// memories and tables as it defines, up to the same counts.
struct PerRun {
    core_instances: u32,
    memories: u32,
    tables: u32,
}

const PER_RUN: PerRun = PerRun { core_instances: 64, memories: 8, tables: 16 };

/// Runs processors. Cheap to clone (the engine, linkers and slot count are shared), `Send` and
/// `Sync`; create one per process.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    modules: Arc<Linker<JobState<WasiP1Ctx>>>,
    components: Arc<wasmtime::component::Linker<JobState<ComponentWasi>>>,
    /// One permit per run the pool has room for: an exhausted pool makes instantiation fail
    /// rather than wait, so runs past the configured concurrency queue here instead.
    slots: Arc<Semaphore>,
    /// The epoch ticker, unparked when a run starts: it rests while no guest runs.
    ticker: std::thread::Thread,
}

/// Compiled code of either kind, before it is checked against the host's imports.
pub enum Compiled {
    Module(Module),
    Component(Component),
}

/// What kind of WebAssembly a processor is; `jobhost processors` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WASI preview1 command module (`wasm32-wasip1`).
    Module,
    /// A WASI 0.2 command component (`wasm32-wasip2`, componentize-py, componentize-js).
    Component,
}

impl Kind {
    /// Tells a component from a core module by the binary's header: both start with `\0asm`;
    /// a module's version is 1, a component's layer is 1.
    pub fn of(binary: &[u8]) -> Option<Kind> {
        match binary.get(..8)? {
            [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00] => Some(Kind::Module),
            [0x00, 0x61, 0x73, 0x6d, _, _, 0x01, 0x00] => Some(Kind::Component),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Module => "module",
            Kind::Component => "component",
        }
    }
}

/// A processor checked against the host's imports, ready to instantiate once per job.
pub struct Prepared {
    code: Code,
    /// SHA-256 of the processor's WebAssembly (hex): recorded with every attempt.
    pub sha256: String,
}

enum Code {
    Module(InstancePre<JobState<WasiP1Ctx>>),
    Component(CommandPre<JobState<ComponentWasi>>),
}

impl Prepared {
    pub fn kind(&self) -> Kind {
        match self.code {
            Code::Module(_) => Kind::Module,
            Code::Component(_) => Kind::Component,
        }
    }
}

/// What a run knows about its job; becomes the guest's stdin, environment and argv.
#[derive(Debug, Clone, Copy)]
pub struct JobInput<'a> {
    pub job_id: &'a str,
    pub attempt: u32,
    pub pool: &'a str,
    pub processor: &'a str,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    pub outcome: Outcome,
    /// What the guest wrote to stderr, cut at the stderr cap, invalid UTF-8 replaced,
    /// granted secrets masked.
    pub stderr: String,
    pub fuel_used: u64,
    pub duration: Duration,
    /// The code that ran ([`Prepared::sha256`]); `None` when nothing could be loaded.
    pub processor_sha256: Option<String>,
}

/// How a run ended; [`Outcome::kind`] is the outcome kind the store records.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Exit status 0; the result is stdout as JSON, or as a JSON string when it is not JSON,
    /// or `null` when it is empty.
    Ok(Value),
    /// Non-zero exit status: preview1's `proc_exit` (e.g. Rust's `std::process::exit`), or
    /// a component's `wasi:cli/exit` (`exit(err)` is 1, `exit-with-code(n)` is n).
    Exit(i32),
    /// The guest trapped; `kind` is the trap's stable name ([`trap_kind`]:
    /// `unreachable_code_reached`, `stack_overflow`, `memory_out_of_bounds`, ...) or
    /// `host_error` for a failed host call.
    Trap {
        kind: &'static str,
        message: String,
    },
    FuelExhausted,
    Timeout,
    /// The guest asked for more linear memory (or table space) than its cap and then failed.
    Memory,
    OutputTooLarge {
        stream: &'static str,
    },
    /// The processor could not be found, compiled, linked or instantiated.
    LoadError(String),
}

impl Outcome {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Ok(_) => OutcomeKind::Ok,
            Outcome::Exit(_) => OutcomeKind::Exit,
            Outcome::Trap { .. } => OutcomeKind::Trap,
            Outcome::FuelExhausted => OutcomeKind::FuelExhausted,
            Outcome::Timeout => OutcomeKind::Timeout,
            Outcome::Memory => OutcomeKind::Memory,
            Outcome::OutputTooLarge { .. } => OutcomeKind::OutputTooLarge,
            Outcome::LoadError(_) => OutcomeKind::LoadError,
        }
    }

    /// A sentence for people (`last_error`, `jobhost run`), naming the limit to raise where
    /// one was hit. `None` for success.
    pub fn message(&self) -> Option<String> {
        let text = match self {
            Outcome::Ok(_) => return None,
            Outcome::Exit(code) => format!("the processor exited with status {code}"),
            Outcome::Trap { kind, message } => format!("the processor trapped ({kind}): {message}"),
            Outcome::FuelExhausted => "the processor used up its fuel (CPU budget); raise \
                processors.limits.fuel or its override if the work is legitimate"
                .to_string(),
            Outcome::Timeout => "the processor did not finish before its deadline; raise \
                processors.limits.timeout or its override if the work is legitimate"
                .to_string(),
            Outcome::Memory => "the processor hit its memory cap and failed; raise \
                processors.limits.memory or its override if the work is legitimate"
                .to_string(),
            Outcome::OutputTooLarge { stream } => format!(
                "the processor wrote more to {stream} than its cap allows; raise \
                 processors.limits.{stream} or its override, or write less"
            ),
            Outcome::LoadError(message) => message.clone(),
        };
        Some(text)
    }
}

impl RunReport {
    /// The report for a processor that never ran (not found, not compilable, ...).
    pub fn load_error(message: String) -> RunReport {
        RunReport {
            outcome: Outcome::LoadError(redact::capped(&message)),
            stderr: String::new(),
            fuel_used: 0,
            duration: Duration::ZERO,
            processor_sha256: None,
        }
    }
}

/// The per-job data a [`Store`] carries: the WASI context of the processor's kind (`W`) and
/// the limiter.
struct JobState<W> {
    wasi: W,
    limiter: CapLimiter,
}

/// WASI 0.2 state of a component's run: its context, its resources and what they hold in
/// the host, and the outgoing-HTTP policy that stands where an HTTP client would.
struct ComponentWasi {
    ctx: WasiCtx,
    table: ResourceTable,
    host_memory: host_memory::HostMemory,
    http: WasiHttpCtx,
    outbound: http::Outbound,
}

impl WasiView for JobState<ComponentWasi> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi.ctx, table: &mut self.wasi.table }
    }
}

impl WasiHttpView for JobState<ComponentWasi> {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.wasi.http, table: &mut self.wasi.table, hooks: &mut self.wasi.outbound }
    }
}

/// Refuses growth past the caps and remembers that it did. The memory cap holds for all of
/// a run's linear memories together: a component has several, and capping each alone would
/// let it take the cap once per memory.
struct CapLimiter {
    memory_cap: usize,
    memory_in_use: usize,
    hit: bool,
}

impl CapLimiter {
    /// The bytes of all memories together once one grows from `current` to `desired`, if
    /// that fits the cap. A request wasmtime clamps to nearly `usize::MAX` (a 64-bit
    /// `memory.grow` by -1 pages) must be refused, not wrapped around to a small sum.
    fn in_use_after(&self, current: usize, desired: usize) -> Option<usize> {
        let others = self.memory_in_use.saturating_sub(current);
        others.checked_add(desired).filter(|&in_use| in_use <= self.memory_cap)
    }
}

impl ResourceLimiter for CapLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        // Refuse rather than error: a guest that handles a failed `memory.grow` may carry on,
        // and `hit` still explains the failure if it does not.
        let in_use = self.in_use_after(current, desired);
        if let Some(in_use) = in_use {
            self.memory_in_use = in_use;
        }
        self.hit |= in_use.is_none();
        Ok(in_use.is_some())
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= MAX_TABLE_ELEMENTS;
        self.hit |= !allowed;
        Ok(allowed)
    }
}

impl Sandbox {
    /// Creates the engine, sized for `max_concurrent_runs` runs in flight at once (more wait
    /// for a slot), and starts its epoch ticker.
    pub fn new(max_concurrent_runs: u32) -> Result<Sandbox> {
        let slots = max_concurrent_runs.max(1);
        let engine = match Engine::new(&engine_config(Some(slots))) {
            Ok(engine) => engine,
            Err(err) => {
                tracing::warn!(
                    "cannot reserve an instance pool for {slots} concurrent runs ({err:#}); \
                     allocating instances on demand instead, which is slower (a larger \
                     virtual address space or `ulimit -v unlimited` avoids this)"
                );
                Engine::new(&engine_config(None))
                    .map_err(|err| anyhow::Error::from(err).context("cannot create the wasmtime engine"))?
            }
        };
        let slots = Arc::new(Semaphore::new(slots as usize));
        let ticker = spawn_epoch_ticker(&engine, slots.clone())?;
        let mut modules = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut modules, |state: &mut JobState<WasiP1Ctx>| &mut state.wasi)?;
        let mut components = wasmtime::component::Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut components)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut components)?;
        Ok(Sandbox { engine, modules: Arc::new(modules), components: Arc::new(components), slots, ticker })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Checks that `compiled` is a WASI command the host can run: a module that exports
    /// `_start: () -> ()` and imports nothing but WASI preview1 functions, or a component
    /// that exports `wasi:cli/run` and imports nothing the host does not provide.
    /// `sha256` names the code in every attempt that runs it.
    pub fn prepare(&self, compiled: &Compiled, sha256: String) -> Result<Prepared> {
        let code = match compiled {
            Compiled::Module(module) => Code::Module(self.prepare_module(module)?),
            Compiled::Component(component) => Code::Component(self.prepare_component(component)?),
        };
        Ok(Prepared { code, sha256 })
    }

    fn prepare_module(&self, module: &Module) -> Result<InstancePre<JobState<WasiP1Ctx>>> {
        match module.get_export("_start") {
            Some(ExternType::Func(ty)) if ty.params().len() == 0 && ty.results().len() == 0 => {}
            Some(_) => bail!(
                "its `_start` export is not a function without parameters or results; \
                 a WASI command's entry point is `_start: () -> ()`"
            ),
            None => bail!(
                "it exports no `_start` function, so it is not a WASI command module \
                 (in Rust: build a binary crate for wasm32-wasip1, not a library)"
            ),
        }
        self.modules.instantiate_pre(module).map_err(|err| {
            anyhow::Error::from(err).context(
                "it imports something the host does not provide \
                 (processors may import only wasi_snapshot_preview1 functions)",
            )
        })
    }

    fn prepare_component(&self, component: &Component) -> Result<CommandPre<JobState<ComponentWasi>>> {
        let pre = self.components.instantiate_pre(component).map_err(|err| {
            anyhow::Error::from(err).context(
                "it imports something the host does not provide (components may import \
                 the wasi:cli/command world and wasi:http/outgoing-handler of WASI 0.2)",
            )
        })?;
        CommandPre::new(pre).map_err(|err| {
            anyhow::Error::from(err).context(
                "it does not export wasi:cli/run, so it is not a WASI command component \
                 (in Rust: build a binary crate for wasm32-wasip2; componentize-py and \
                 componentize-js: target the wasi:cli/command world)",
            )
        })
    }

    /// Runs `program` once for `job` under `limits`, granted `grants`. Never fails: every way
    /// a run can end, including not starting, is an [`Outcome`].
    pub async fn run(&self, program: &Prepared, job: JobInput<'_>, limits: &Limits, grants: &Grants) -> RunReport {
        let mut wasi = WasiCtxBuilder::new();
        for (name, value) in &grants.env {
            wasi.env(name, value);
        }
        let mut secret_values = Vec::with_capacity(grants.secrets.len());
        for name in &grants.secrets {
            // Read now, not kept: the value goes into this run's context, and masks this
            // run's output, and nowhere else.
            match std::env::var(name) {
                Ok(value) => {
                    wasi.env(name, &value);
                    secret_values.push(value);
                }
                Err(_) => {
                    return RunReport::load_error(format!(
                        "processor \"{}\" is granted the secret {name}, but {name} is not set in this \
                         process's environment (or is not UTF-8); set it where workers start",
                        job.processor
                    ));
                }
            }
        }
        let secrets = redact::Secrets::new(secret_values.iter().map(String::as_str));
        let _slot = self.slots.acquire().await.expect("the slot semaphore is never closed");
        self.ticker.unpark();
        let started = Instant::now();
        let stdout_cap = to_usize(limits.stdout.0);
        let stderr_cap = to_usize(limits.stderr.0);
        // One byte of room past each cap tells "wrote exactly the cap" from "wrote past it".
        let stdout = MemoryOutputPipe::new(stdout_cap.saturating_add(1));
        let stderr = MemoryOutputPipe::new(stderr_cap.saturating_add(1));
        wasi.stdin(MemoryInputPipe::new(job.payload.to_vec()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .env("JOB_ID", job.job_id)
            .env("JOB_ATTEMPT", job.attempt.to_string())
            .env("JOB_POOL", job.pool)
            .arg(job.processor)
            // Random bytes are made in the host before they are copied to the guest.
            .max_random_size(limits.memory.0);
        let memory_cap = to_usize(limits.memory.0);
        let limiter = CapLimiter { memory_cap, memory_in_use: 0, hit: false };

        let (ending, fuel_left, memory_hit) = match &program.code {
            Code::Module(pre) => {
                let mut store = self.store(wasi.build_p1(), limiter, limits);
                let ending = within(limits, call_start(pre, &mut store)).await;
                (ending, store.get_fuel(), store.data().limiter.hit)
            }
            Code::Component(pre) => {
                let mut table = ResourceTable::new();
                table.set_max_capacity(host_memory::TABLE_CAPACITY);
                let mut http = WasiHttpCtx::new();
                http.set_field_size_limit(host_memory::FIELDS_SIZE_LIMIT);
                let component_wasi = ComponentWasi {
                    ctx: wasi.build(),
                    table,
                    host_memory: host_memory::HostMemory::new(memory_cap, stderr.clone()),
                    http,
                    outbound: http::Outbound::new(job.processor, grants.http.clone(), stderr.clone()),
                };
                let mut store = self.store(component_wasi, limiter, limits);
                // What one call hands to the host (its lists and strings, lifted) is bounded
                // by the cap as well, not by wasmtime's default of 128 MiB.
                store.set_hostcall_fuel(memory_cap);
                store.call_hook(|mut store, hook| match hook {
                    CallHook::ReturningFromHost => host_memory::account(store.data_mut()),
                    _ => Ok(()),
                });
                let ending = within(limits, call_run(pre, &mut store)).await;
                let hit = store.data().limiter.hit || host_memory::overfilled_fields(&ending, &stderr);
                (ending, store.get_fuel(), hit)
            }
        };
        let fuel_used = limits.fuel.saturating_sub(fuel_left.expect("the engine is configured with fuel"));

        let out = stdout.contents();
        let err = stderr.contents();
        let overflow = if out.len() > stdout_cap {
            Some("stdout")
        } else if err.len() > stderr_cap {
            Some("stderr")
        } else {
            None
        };
        RunReport {
            outcome: classify(ending, memory_hit, overflow, &out, &secrets),
            stderr: secrets.mask(&String::from_utf8_lossy(&err[..err.len().min(stderr_cap)])).into_owned(),
            fuel_used,
            duration: started.elapsed(),
            processor_sha256: Some(program.sha256.clone()),
        }
    }

    /// A store for one run, with its budget set.
    fn store<W>(&self, wasi: W, limiter: CapLimiter, limits: &Limits) -> Store<JobState<W>> {
        let mut store = Store::new(&self.engine, JobState { wasi, limiter });
        store.limiter(|state| &mut state.limiter);
        // Compiled code keeps its fuel count in a register and writes it back only at calls and
        // fuel checks, not at epoch yields; a run cancelled inside a loop would report no fuel
        // used. Yielding every FUEL_YIELD_INTERVAL units writes it back regularly.
        store.fuel_async_yield_interval(Some(FUEL_YIELD_INTERVAL)).expect("the engine is configured with fuel");
        store.set_fuel(limits.fuel).expect("the engine is configured with fuel");
        // Deadlines are relative to the current epoch, so set them last. Each tick yields to
        // the executor and grants one more tick: the wall-clock limit is the timeout in
        // `within`.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        store
    }
}

/// `call` cut off at the run's wall-clock deadline.
async fn within(limits: &Limits, call: impl Future<Output = Result<(), Failure>>) -> Result<(), Failure> {
    match tokio::time::timeout(limits.timeout.0, call).await {
        Ok(ending) => ending,
        Err(_elapsed) => Err(Failure::TimedOut),
    }
}

fn engine_config(pool_slots: Option<u32>) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.consume_fuel(true).epoch_interruption(true);
    config.wasm_features(WasmFeatures::all().difference(ACCEPTED_FEATURES), false);
    // The same code on the same inputs computes the same bits on every machine, which
    // replaying an attempt elsewhere relies on: NaNs come out canonical instead of with
    // the sign and payload the CPU picks, and relaxed SIMD takes its deterministic results.
    config.cranelift_nan_canonicalization(true).relaxed_simd_deterministic(true);
    if let Some(slots) = pool_slots {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * PER_RUN.core_instances)
            .total_memories(slots * PER_RUN.memories)
            .total_tables(slots * PER_RUN.tables)
            .max_core_instances_per_component(PER_RUN.core_instances)
            .max_memories_per_component(PER_RUN.memories)
            .max_tables_per_component(PER_RUN.tables)
            .max_memories_per_module(PER_RUN.memories)
            .max_tables_per_module(PER_RUN.tables)
            .total_stacks(slots)
            .table_elements(MAX_TABLE_ELEMENTS)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    } else {
        // The fallback exists for address spaces too small for the pool, and an on-demand
        // memory would still reserve 4 GiB plus guards. Reserve nothing up front instead:
        // memories then grow by moving and accesses are bounds-checked, which is slower
        // but fits in any address space the guest's memory cap fits in.
        config.memory_reservation(0).memory_guard_size(0).memory_reservation_for_growth(1 << 20);
    }
    config
}

/// How long the epoch ticker rests at a time while no guest runs (a run wakes it at once);
/// it notices a dropped engine within this.
const EPOCH_REST: Duration = Duration::from_secs(1);

/// Advances the engine's epoch every [`EPOCH_TICK`] while a guest runs (every permit of
/// `slots` not taken is a run slot free), until the engine is dropped. With no guest running
/// it rests, so a worker waiting for jobs does not wake 100 times a second for nothing.
fn spawn_epoch_ticker(engine: &Engine, slots: Arc<Semaphore>) -> Result<std::thread::Thread> {
    let weak = engine.weak();
    let all_free = slots.available_permits();
    let ticker = std::thread::Builder::new()
        .name("jobhost-epoch".into())
        .spawn(move || {
            loop {
                if slots.available_permits() == all_free {
                    std::thread::park_timeout(EPOCH_REST);
                } else {
                    std::thread::sleep(EPOCH_TICK);
                }
                // Hold the engine only for the increment, so dropping the last Sandbox ends
                // this thread at its next tick.
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .map_err(|err| anyhow::anyhow!("cannot start the epoch ticker thread: {err}"))?;
    Ok(ticker.thread().clone())
}

/// Why a run did not return normally from `_start`.
enum Failure {
    TimedOut,
    /// Instantiation failed: a trap in a start function or data segment, a refused initial
    /// memory, or a module the pool cannot hold.
    NotInstantiated(wasmtime::Error),
    /// The entry point failed: a trap, an exit (even with status 0), or a failed host call.
    Errored(wasmtime::Error),
}

async fn call_start(
    pre: &InstancePre<JobState<WasiP1Ctx>>,
    store: &mut Store<JobState<WasiP1Ctx>>,
) -> Result<(), Failure> {
    let instance = pre.instantiate_async(&mut *store).await.map_err(Failure::NotInstantiated)?;
    let start = instance.get_typed_func::<(), ()>(&mut *store, "_start").map_err(Failure::NotInstantiated)?;
    start.call_async(&mut *store, ()).await.map_err(Failure::Errored)
}

/// Runs a component's `wasi:cli/run`. Its `Err(())` is exit status 1, as in `wasi:cli/exit`;
/// `exit` and `exit-with-code` arrive as an [`I32Exit`] error, like preview1's `proc_exit`.
async fn call_run(
    pre: &CommandPre<JobState<ComponentWasi>>,
    store: &mut Store<JobState<ComponentWasi>>,
) -> Result<(), Failure> {
    let command = pre.instantiate_async(&mut *store).await.map_err(Failure::NotInstantiated)?;
    match command.wasi_cli_run().call_run(&mut *store).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(())) => Err(Failure::Errored(I32Exit(1).into())),
        Err(err) => Err(Failure::Errored(err)),
    }
}

/// Turns how the run ended into an [`Outcome`], its result and messages masked
/// ([`redact`]). Order matters; see the module docs.
fn classify(
    ending: Result<(), Failure>,
    memory_hit: bool,
    overflow: Option<&'static str>,
    stdout: &[u8],
    secrets: &redact::Secrets,
) -> Outcome {
    let failure = match ending {
        Ok(()) => None,
        Err(Failure::Errored(err)) if err.downcast_ref::<I32Exit>().is_some_and(|exit| exit.0 == 0) => None,
        Err(failure) => Some(failure),
    };
    if memory_hit && failure.is_some() {
        return Outcome::Memory;
    }
    if let Some(stream) = overflow {
        return Outcome::OutputTooLarge { stream };
    }
    match failure {
        None => Outcome::Ok(secrets.result(stdout)),
        Some(Failure::TimedOut) => Outcome::Timeout,
        Some(Failure::NotInstantiated(err)) if err.downcast_ref::<Trap>().is_none() => {
            Outcome::LoadError(secrets.message(&format!("cannot instantiate the processor: {err:#}")))
        }
        Some(Failure::NotInstantiated(err) | Failure::Errored(err)) => match error_outcome(&err) {
            Outcome::Trap { kind, message } => Outcome::Trap { kind, message: secrets.message(&message) },
            outcome => outcome,
        },
    }
}

fn error_outcome(err: &wasmtime::Error) -> Outcome {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return Outcome::Exit(exit.0);
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::FuelExhausted,
        Some(trap) => Outcome::Trap { kind: trap_kind(trap), message: trap_message(trap, err) },
        // A host function failed, e.g. `proc_exit` with a status WASI cannot represent.
        None => Outcome::Trap { kind: "host_error", message: format!("{err:#}") },
    }
}

/// The trap and where it happened, on one line: `wasm trap: call stack exhausted at recurse <-
/// recurse <- ... (9000 frames)`. Innermost frames first; enough to find the bug, short enough
/// for `last_error`.
fn trap_message(trap: &Trap, err: &wasmtime::Error) -> String {
    const SHOWN_FRAMES: usize = 8;
    let mut message = trap.to_string();
    if let Some(backtrace) = err.downcast_ref::<WasmBacktrace>() {
        let frames = backtrace.frames();
        let names: Vec<String> = frames
            .iter()
            .take(SHOWN_FRAMES)
            .map(|frame| match frame.func_name() {
                Some(name) => name.to_string(),
                None => format!("<wasm function {}>", frame.func_index()),
            })
            .collect();
        if !names.is_empty() {
            message.push_str(" at ");
            message.push_str(&names.join(" <- "));
        }
        if frames.len() > SHOWN_FRAMES {
            message.push_str(&format!(" <- ... ({} frames)", frames.len()));
        }
    }
    message
}

/// A trap's stable name, as an attempt's message and `docs/processors.md` give it: wasmtime's
/// variant name in snake_case, written out so that a wasmtime upgrade renaming a variant
/// renames no kind. `Trap` is non-exhaustive: a trap a newer wasmtime adds is [`UNKNOWN_TRAP`]
/// until it is named here (a test fails until then), and its message still says what it was.
fn trap_kind(trap: &Trap) -> &'static str {
    match trap {
        Trap::StackOverflow => "stack_overflow",
        Trap::MemoryOutOfBounds => "memory_out_of_bounds",
        Trap::HeapMisaligned => "heap_misaligned",
        Trap::TableOutOfBounds => "table_out_of_bounds",
        Trap::IndirectCallToNull => "indirect_call_to_null",
        Trap::BadSignature => "bad_signature",
        Trap::IntegerOverflow => "integer_overflow",
        Trap::IntegerDivisionByZero => "integer_division_by_zero",
        Trap::BadConversionToInteger => "bad_conversion_to_integer",
        Trap::UnreachableCodeReached => "unreachable_code_reached",
        Trap::Interrupt => "interrupt",
        Trap::OutOfFuel => "out_of_fuel",
        Trap::AtomicWaitNonSharedMemory => "atomic_wait_non_shared_memory",
        Trap::NullReference => "null_reference",
        Trap::ArrayOutOfBounds => "array_out_of_bounds",
        Trap::AllocationTooLarge => "allocation_too_large",
        Trap::CastFailure => "cast_failure",
        Trap::CannotEnterComponent => "cannot_enter_component",
        Trap::NoAsyncResult => "no_async_result",
        Trap::UnhandledTag => "unhandled_tag",
        Trap::ContinuationAlreadyConsumed => "continuation_already_consumed",
        Trap::DisabledOpcode => "disabled_opcode",
        Trap::AsyncDeadlock => "async_deadlock",
        Trap::CannotLeaveComponent => "cannot_leave_component",
        Trap::CannotBlockSyncTask => "cannot_block_sync_task",
        Trap::InvalidChar => "invalid_char",
        Trap::DebugAssertStringEncodingFinished => "debug_assert_string_encoding_finished",
        Trap::DebugAssertEqualCodeUnits => "debug_assert_equal_code_units",
        Trap::DebugAssertPointerAligned => "debug_assert_pointer_aligned",
        Trap::DebugAssertUpperBitsUnset => "debug_assert_upper_bits_unset",
        Trap::StringOutOfBounds => "string_out_of_bounds",
        Trap::ListOutOfBounds => "list_out_of_bounds",
        Trap::InvalidDiscriminant => "invalid_discriminant",
        Trap::UnalignedPointer => "unaligned_pointer",
        Trap::TaskCancelNotCancelled => "task_cancel_not_cancelled",
        Trap::TaskCancelOrReturnTwice => "task_cancel_or_return_twice",
        Trap::SubtaskCancelAfterTerminal => "subtask_cancel_after_terminal",
        Trap::TaskReturnInvalid => "task_return_invalid",
        Trap::WaitableSetDropHasWaiters => "waitable_set_drop_has_waiters",
        Trap::SubtaskDropNotResolved => "subtask_drop_not_resolved",
        Trap::ThreadNewIndirectInvalidType => "thread_new_indirect_invalid_type",
        Trap::ThreadNewIndirectUninitialized => "thread_new_indirect_uninitialized",
        Trap::BackpressureOverflow => "backpressure_overflow",
        Trap::UnsupportedCallbackCode => "unsupported_callback_code",
        Trap::CannotResumeThread => "cannot_resume_thread",
        Trap::ConcurrentFutureStreamOp => "concurrent_future_stream_op",
        Trap::ReferenceCountOverflow => "reference_count_overflow",
        Trap::StreamOpTooBig => "stream_op_too_big",
        Trap::WaitableSyncAndAsync => "waitable_sync_and_async",
        Trap::UncaughtException => "uncaught_exception",
        _ => UNKNOWN_TRAP,
    }
}

/// The kind of a trap [`trap_kind`] has no name for.
const UNKNOWN_TRAP: &str = "unknown_trap";

fn to_usize(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobhost_core::units::{ByteSize, HumanDuration};

    /// A module that writes `text` to `fd` and returns from `_start`.
    fn writer(fd: u32, text: &str) -> String {
        let escaped: String = text.bytes().map(|b| format!("\\{b:02x}")).collect();
        format!(
            r#"(module
                 (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
                 (memory (export "memory") 1)
                 (data (i32.const 64) "{escaped}")
                 (func (export "_start")
                   (i32.store (i32.const 0) (i32.const 64))
                   (i32.store (i32.const 4) (i32.const {len}))
                   (drop (call $w (i32.const {fd}) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
            len = text.len()
        )
    }

    fn limits() -> Limits {
        Limits::default()
    }

    async fn run_wat(sandbox: &Sandbox, wat: &str, limits: &Limits) -> RunReport {
        let module = Module::new(sandbox.engine(), wat).expect("valid WAT");
        let program = sandbox.prepare(&Compiled::Module(module), "test".into()).expect("a runnable module");
        let job = JobInput { job_id: "j1", attempt: 2, pool: "p", processor: "test", payload: b"{}" };
        sandbox.run(&program, job, limits, &Grants::default()).await
    }

    #[tokio::test]
    async fn stdout_is_json_when_it_parses_else_text_and_empty_is_null() {
        let sandbox = Sandbox::new(1).unwrap();
        let cases = [
            ("{\"a\": [1, 2]}\n", serde_json::json!({"a": [1, 2]})),
            ("42", serde_json::json!(42)),
            ("hello\n", serde_json::json!("hello\n")),
            ("", Value::Null),
            (" \n", Value::Null),
        ];
        for (stdout, expected) in cases {
            let report = run_wat(&sandbox, &writer(1, stdout), &limits()).await;
            assert_eq!(report.outcome, Outcome::Ok(expected), "stdout {stdout:?}");
        }
    }

    #[tokio::test]
    async fn output_may_fill_its_cap_but_not_pass_it() {
        let sandbox = Sandbox::new(1).unwrap();
        let capped = Limits { stdout: ByteSize(5), stderr: ByteSize(5), ..limits() };
        assert_eq!(
            run_wat(&sandbox, &writer(1, "12345"), &capped).await.outcome,
            Outcome::Ok(serde_json::json!(12345))
        );
        assert_eq!(
            run_wat(&sandbox, &writer(1, "123456"), &capped).await.outcome,
            Outcome::OutputTooLarge { stream: "stdout" }
        );
        let report = run_wat(&sandbox, &writer(2, "oops!!"), &capped).await;
        assert_eq!(report.outcome, Outcome::OutputTooLarge { stream: "stderr" });
        assert_eq!(report.stderr, "oops!", "stderr is kept up to its cap");
    }

    #[tokio::test]
    async fn initial_memory_above_the_cap_is_a_memory_outcome() {
        let sandbox = Sandbox::new(1).unwrap();
        let two_mib = r#"(module (memory (export "memory") 32) (func (export "_start")))"#;
        let capped = Limits { memory: ByteSize(1 << 20), ..limits() };
        assert_eq!(run_wat(&sandbox, two_mib, &capped).await.outcome, Outcome::Memory);
    }

    /// A command component of core modules with one memory of `pages` each, whose
    /// `wasi:cli/run` returns `ok`.
    fn component_with_memories(pages: &[u32]) -> String {
        let memories: String = pages
            .iter()
            .enumerate()
            .map(|(i, pages)| format!("(core module $m{i} (memory {pages})) (core instance (instantiate $m{i}))"))
            .collect();
        format!(
            r#"(component {memories}
                 (core module $run (func (export "run") (result i32) (i32.const 0)))
                 (core instance $run (instantiate $run))
                 (func $run (result (result)) (canon lift (core func $run "run")))
                 (instance $cli (export "run" (func $run)))
                 (export "wasi:cli/run@0.2.12" (instance $cli)))"#
        )
    }

    #[tokio::test]
    async fn the_memory_cap_holds_for_all_of_a_components_memories_together() {
        let sandbox = Sandbox::new(1).unwrap();
        let capped = Limits { memory: ByteSize(2 << 20), ..limits() };
        let run = async |wat: String| {
            let component = Component::new(sandbox.engine(), wat).expect("valid WAT");
            let program = sandbox.prepare(&Compiled::Component(component), "test".into()).expect("a command");
            let job = JobInput { job_id: "j1", attempt: 1, pool: "p", processor: "test", payload: b"" };
            sandbox.run(&program, job, &capped, &Grants::default()).await.outcome
        };
        // Memories of 1.25 MiB: each fits a 2 MiB cap, two together do not.
        assert_eq!(run(component_with_memories(&[20])).await, Outcome::Ok(Value::Null));
        assert_eq!(run(component_with_memories(&[20, 20])).await, Outcome::Memory);
    }

    #[test]
    fn the_limiter_sums_memories_and_never_wraps() {
        const KIB: usize = 1 << 10;
        let grow = |limiter: &mut CapLimiter, current: usize, desired: usize| {
            limiter.memory_growing(current, desired, None).unwrap()
        };
        let mut limiter = CapLimiter { memory_cap: 2048 * KIB, memory_in_use: 0, hit: false };
        assert!(grow(&mut limiter, 0, 1024 * KIB) && grow(&mut limiter, 0, 64 * KIB));
        // Issue 16's walk: a 64-bit `memory.grow` by -1 pages reaches the limiter as nearly
        // usize::MAX; summed unchecked it wrapped to zero and let the other memory grow
        // past the cap.
        assert!(!grow(&mut limiter, 1024 * KIB, usize::MAX - 64 * KIB + 1));
        assert!(limiter.hit, "the refusal is recorded");
        assert_eq!(limiter.memory_in_use, 1088 * KIB, "a refused growth changes nothing");
        assert!(!grow(&mut limiter, 64 * KIB, 2048 * KIB));
        assert!(!grow(&mut limiter, 0, usize::MAX));
        assert_eq!(limiter.memory_in_use, 1088 * KIB);
        // Up to the cap exactly, and not a byte past it.
        assert!(grow(&mut limiter, 64 * KIB, 1024 * KIB));
        assert_eq!(limiter.memory_in_use, 2048 * KIB);
        assert!(!grow(&mut limiter, 1024 * KIB, 1024 * KIB + 1));

        // A memory larger than the count (none the limiter saw created) counts as itself.
        let mut limiter = CapLimiter { memory_cap: 4096 * KIB, memory_in_use: 1024 * KIB, hit: false };
        assert!(grow(&mut limiter, 2048 * KIB, 3072 * KIB));
        assert_eq!(limiter.memory_in_use, 3072 * KIB);
        assert!(!limiter.hit);
    }

    #[tokio::test]
    async fn a_guest_that_copes_with_a_refused_growth_still_succeeds() {
        let sandbox = Sandbox::new(1).unwrap();
        let polite = r#"(module (memory (export "memory") 1)
            (func (export "_start")
              (if (i32.ne (memory.grow (i32.const 100)) (i32.const -1)) (then unreachable))))"#;
        let capped = Limits { memory: ByteSize(1 << 20), ..limits() };
        assert_eq!(run_wat(&sandbox, polite, &capped).await.outcome, Outcome::Ok(Value::Null));
    }

    #[tokio::test]
    async fn environment_and_argv_are_exactly_the_job_fields() {
        let sandbox = Sandbox::new(1).unwrap();
        // Prints environ then argv, NUL-separated, straight from the WASI buffers.
        let wat = r#"(module
            (import "wasi_snapshot_preview1" "environ_sizes_get" (func $es (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "environ_get" (func $eg (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "args_sizes_get" (func $as (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "args_get" (func $ag (param i32 i32) (result i32)))
            (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "_start")
              (drop (call $es (i32.const 16) (i32.const 20)))
              (drop (call $eg (i32.const 1024) (i32.const 4096)))
              (drop (call $as (i32.const 24) (i32.const 28)))
              (drop (call $ag (i32.const 2048) (i32.add (i32.const 4096) (i32.load (i32.const 20)))))
              (i32.store (i32.const 0) (i32.const 4096))
              (i32.store (i32.const 4) (i32.add (i32.load (i32.const 20)) (i32.load (i32.const 28))))
              (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;
        let report = run_wat(&sandbox, wat, &limits()).await;
        assert_eq!(report.outcome, Outcome::Ok(Value::String("JOB_ID=j1\0JOB_ATTEMPT=2\0JOB_POOL=p\0test\0".into())));
    }

    #[tokio::test]
    async fn a_cpu_loop_with_fuel_to_spare_stops_at_the_deadline() {
        let sandbox = Sandbox::new(1).unwrap();
        let spin = r#"(module (func (export "_start") (loop $l (br $l))))"#;
        let bounded = Limits { fuel: u64::MAX, timeout: HumanDuration(Duration::from_millis(100)), ..limits() };
        let report = run_wat(&sandbox, spin, &bounded).await;
        assert_eq!(report.outcome, Outcome::Timeout);
        assert!(report.duration < Duration::from_millis(600), "{:?}", report.duration);
        assert!(report.fuel_used > 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_past_the_pool_size_wait_for_a_slot() {
        let sandbox = Sandbox::new(1).unwrap();
        let module = Module::new(sandbox.engine(), writer(1, "1")).unwrap();
        let program = Arc::new(sandbox.prepare(&Compiled::Module(module), "one".into()).unwrap());
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let (sandbox, program) = (sandbox.clone(), program.clone());
                // Spawning also proves the run future is Send.
                tokio::spawn(async move {
                    let job = JobInput { job_id: "j", attempt: 1, pool: "p", processor: "one", payload: b"" };
                    sandbox.run(&program, job, &Limits::default(), &Grants::default()).await.outcome
                })
            })
            .collect();
        for run in runs {
            assert_eq!(run.await.unwrap(), Outcome::Ok(serde_json::json!(1)));
        }
    }

    /// Kinds are the names the trap variants had when the kind was derived from their `Debug`
    /// text, so attempts stored before and after read alike; every trap this wasmtime can
    /// raise has one.
    #[test]
    fn every_trap_has_a_stable_name_in_snake_case() {
        let snake_case = |camel: &str| {
            let mut out = String::new();
            for (i, c) in camel.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        };
        let traps: Vec<Trap> = (0..=u8::MAX).filter_map(Trap::from_u8).collect();
        assert!(traps.len() >= 50, "wasmtime 48 has 50 traps; found {}", traps.len());
        for trap in traps {
            assert_eq!(trap_kind(&trap), snake_case(&format!("{trap:?}")), "{trap:?}");
        }
    }

    #[tokio::test]
    async fn an_exit_status_wasi_cannot_carry_is_a_host_error() {
        let sandbox = Sandbox::new(1).unwrap();
        let exit200 = r#"(module
            (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
            (memory (export "memory") 1)
            (func (export "_start") (call $exit (i32.const 200))))"#;
        match run_wat(&sandbox, exit200, &limits()).await.outcome {
            Outcome::Trap { kind, message } => {
                assert_eq!(kind, "host_error");
                assert!(message.contains("exit status"), "{message}");
            }
            other => panic!("expected a host_error trap, got {other:?}"),
        }
    }

    #[test]
    fn prepare_refuses_modules_that_are_not_wasi_commands() {
        let sandbox = Sandbox::new(1).unwrap();
        let prepare = |wat: &str| {
            let module = Compiled::Module(Module::new(sandbox.engine(), wat).unwrap());
            sandbox.prepare(&module, String::new()).err().map(|e| format!("{e:#}"))
        };
        assert!(prepare(r#"(module (func (export "main")))"#).unwrap().contains("no `_start`"));
        assert!(
            prepare(r#"(module (func (export "_start") (param i32)))"#)
                .unwrap()
                .contains("not a function without parameters")
        );
        let import = prepare(r#"(module (import "env" "f" (func)) (func (export "_start")))"#).unwrap();
        assert!(import.contains("does not provide") && import.contains("env::f"), "{import}");
        assert!(prepare(r#"(module (func (export "_start")))"#).is_none());
    }
}
