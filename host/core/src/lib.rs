//! jobhost-core: what every layer of jobhost shares and nothing else — the configuration
//! file's shape and its validation ([`config`]), the capabilities a processor may be granted
//! ([`grants`]), the limits on how its jobs flow ([`flow`]), the quantities people write ([`units`]), the naming rules ([`names`]), the
//! kinds of attempt outcome ([`outcome`]) and cron schedules ([`schedule`]).
//!
//! It must not know about databases, WebAssembly or HTTP serving: the store, the sandbox and
//! the binary build on it, never the other way round.

pub mod config;
pub mod flow;
pub mod grants;
pub mod names;
pub mod outcome;
pub mod schedule;
pub mod units;
