//! What a component's run holds in host memory for its guest, and the bounds on it.
//!
//! A component's resources (`wasi:http` fields, requests and bodies, streams, pollables, ...)
//! live in the host, in the run's [`ResourceTable`], outside the guest's linear memory. Left
//! alone, a guest that keeps creating them makes the worker allocate without bound while its
//! own memory stays small. So, for every run of a component:
//! - the table holds at most [`TABLE_CAPACITY`] resources (wasmtime's default is a million);
//!   the call that would add one more fails;
//! - after every host call, [`account`] measures what the table holds: [`RESOURCE_COST`]
//!   bytes a resource, plus what the guest put in it (header names and values, a request's
//!   path, authority and method, body chunks buffered on their way out). That sum counts
//!   against the run's memory cap together with the linear memories: the room left for them
//!   shrinks by it, and a run whose resources and memories together pass the cap traps.
//!   Either way the run ends as `memory`, explained in one `jobhost:` line on its stderr;
//! - a `fields` map holds at most [`FIELDS_SIZE_LIMIT`] bytes; past it, wasmtime-wasi-http
//!   traps and the run ends as `memory` too ([`overfilled_fields`]). An outgoing body
//!   buffers at most [`BODY_CHUNK`]-byte chunks, a few at a time;
//! - what a single call hands over (a list or string from the guest, random bytes to it) is
//!   transient and bounded by the memory cap too ([`Sandbox::run`](super::Sandbox::run)).
//!
//! Measuring walks the table, so its cost grows with what the guest holds; the capacity and
//! the cap bound that, and a guest holding little (as every real processor does) pays
//! nothing noticeable.

use std::any::Any;

use ::http::HeaderMap;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi_http::p2::bindings::http::types::{Method, Scheme};
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostIncomingResponse, HostOutgoingRequest, HostOutgoingResponse};
use wasmtime_wasi_http::{FieldMap, FieldMapError};

use super::{ComponentWasi, Failure, JobState, http};

/// Most resources a run may hold at once. A processor needs a few dozen (its standard
/// streams, a request's fields, body, streams and pollables); the bound is far above that
/// and keeps a measurement ([`account`]) cheap.
pub(super) const TABLE_CAPACITY: usize = 4_096;

/// Bytes each resource counts for itself: its slot in the table and in the guest's handle
/// table, and the boxed host object. Measured: 90,000 clock pollables, two resources each,
/// took 21 MiB, about 120 bytes a resource.
const RESOURCE_COST: usize = 256;

/// Bytes each header (name and value) counts beyond its text: its bucket and index in the
/// map, with room for the map's growth.
const HEADER_COST: usize = 128;

/// Most bytes one `wasi:http` `fields` map may hold (wasmtime's own accounting of names and
/// values). Far above what servers accept in a request's headers (8–64 KiB).
pub(super) const FIELDS_SIZE_LIMIT: usize = 128 << 10;

/// Largest write a guest may make to an outgoing body's stream. The body buffers one chunk
/// and keeps room for one more, and the connection may hold one in flight.
pub(super) const BODY_CHUNK: usize = 64 << 10;

/// What an outgoing body may hold at once, counted for every body and every request or
/// response that has one.
const BODY_BUFFERED: usize = 3 * BODY_CHUNK;

/// A run's cap and where hitting it is explained.
pub(super) struct HostMemory {
    /// The run's memory cap, for its linear memories and its resources together.
    cap: usize,
    stderr: MemoryOutputPipe,
    explained: bool,
}

impl HostMemory {
    pub(super) fn new(cap: usize, stderr: MemoryOutputPipe) -> HostMemory {
        HostMemory { cap, stderr, explained: false }
    }

    /// Explains the first bound the run hits; later ones follow from it.
    fn explain(&mut self, line: String) {
        if !self.explained {
            self.explained = true;
            http::note(&self.stderr, line);
        }
    }
}

/// Measures what the run's resources hold and fits its limiter's room for linear memory
/// around that. Records a full table, and fails (a trap, which ends the run) once resources
/// and linear memory together pass the cap.
pub(super) fn account(state: &mut JobState<ComponentWasi>) -> wasmtime::Result<()> {
    let (resources, held) = measure(&mut state.wasi.table);
    let host_memory = &mut state.wasi.host_memory;
    let limiter = &mut state.limiter;
    limiter.memory_cap = host_memory.cap.saturating_sub(held);
    if resources >= TABLE_CAPACITY {
        limiter.hit = true;
        host_memory.explain(format!(
            "the run holds {resources} resources (wasi:http fields, streams, pollables, ...), \
             the most a run may; it must drop those it no longer uses"
        ));
    }
    if limiter.memory_in_use.saturating_add(held) > host_memory.cap {
        limiter.hit = true;
        host_memory.explain(format!(
            "the run's {resources} resources hold {held} bytes in the host (wasi:http fields, \
             streams, pollables, ...), which with its {} bytes of linear memory passes its memory \
             cap of {} bytes (processors.limits.memory)",
            limiter.memory_in_use, host_memory.cap
        ));
        wasmtime::bail!("the component's resources and memory passed its memory cap");
    }
    Ok(())
}

/// Whether the run failed on a `fields` map past its bound (a trap in wasmtime-wasi-http,
/// not a WASI error); if so, explains it on `stderr`.
pub(super) fn overfilled_fields(ending: &Result<(), Failure>, stderr: &MemoryOutputPipe) -> bool {
    let Err(Failure::Errored(err)) = ending else { return false };
    let overfilled = matches!(
        err.downcast_ref::<FieldMapError>(),
        Some(FieldMapError::TotalSizeTooBig | FieldMapError::TooManyFields)
    );
    if overfilled {
        http::note(stderr, format!("a wasi:http fields map passed {FIELDS_SIZE_LIMIT} bytes, the most one may hold"));
    }
    overfilled
}

/// How many resources `table` holds, and the bytes they count.
fn measure(table: &mut ResourceTable) -> (usize, usize) {
    table.iter_mut().fold((0, 0), |(resources, bytes), resource| (resources + 1, bytes + cost(resource)))
}

/// Bytes one resource counts: [`RESOURCE_COST`] and what the guest put in it.
fn cost(resource: &(dyn Any + Send)) -> usize {
    let contents = if let Some(fields) = resource.downcast_ref::<FieldMap>() {
        headers_cost(fields)
    } else if let Some(request) = resource.downcast_ref::<HostOutgoingRequest>() {
        let method = match &request.method {
            Method::Other(name) => name.len(),
            _ => 0,
        };
        let scheme = match &request.scheme {
            Some(Scheme::Other(name)) => name.len(),
            _ => 0,
        };
        let texts = [request.authority.as_deref(), request.path_with_query.as_deref()];
        method
            + scheme
            + texts.iter().flatten().map(|text| text.len()).sum::<usize>()
            + headers_cost(&request.headers)
            + body_cost(request.body.is_some())
    } else if let Some(response) = resource.downcast_ref::<HostOutgoingResponse>() {
        headers_cost(&response.headers) + body_cost(response.body.is_some())
    } else if let Some(response) = resource.downcast_ref::<HostIncomingResponse>() {
        headers_cost(&response.headers)
    } else if resource.is::<HostOutgoingBody>() {
        BODY_BUFFERED
    } else {
        0
    };
    RESOURCE_COST + contents
}

fn headers_cost(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + HEADER_COST).sum()
}

fn body_cost(has_body: bool) -> usize {
    if has_body { BODY_BUFFERED } else { 0 }
}
