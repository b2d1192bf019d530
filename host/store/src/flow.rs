//! Flow limits inside the claim: the arithmetic both backends share, and what they must do.
//!
//! A claim with limits ([`crate::ClaimRequest::flow`]) runs while no other limited claim can,
//! so what it counts is what runs: SQLite's write lock serializes it; on PostgreSQL the
//! schema's `flow_claim` function first takes one transaction-scoped advisory lock per
//! limited processor (in one order, so claims never wait on each other in a cycle), and each
//! query after that reads a fresh snapshot under READ COMMITTED. Then:
//!
//! 1. count, per processor and key, the jobs claimed now (for `max_running`) and the starts
//!    within the rate's period (for `rate`), after deleting the starts no period counts;
//! 2. read ready jobs in claim order (priority, then the longest ready), past those whose key
//!    has no room, and admit each while its key has room ([`Gate::admit`] on SQLite; the
//!    same rule as window arithmetic in SQL on PostgreSQL);
//! 3. take the admitted jobs, record a start for each rate-limited one, and report whether a
//!    ready job of a limited processor was left behind.
//!
//! Held-back jobs stay `pending`, in order, and never stop a job behind them that is allowed:
//! fairness between keys costs nothing more than reading past the held-back ones. The
//! [`Gate`] also turns what a backend counts into what people read ([`usage`]).

use std::collections::HashMap;

use jobhost_core::flow::FlowLimit;

use crate::model::{FlowCount, FlowUsage};

/// What one claim may still start, per processor and key.
pub(crate) struct Gate<'a> {
    limits: HashMap<&'a str, &'a FlowLimit>,
    /// Jobs running and starts within the period, per (processor, key), as counted before
    /// the claim plus what it admitted.
    used: HashMap<(String, String), Used>,
}

#[derive(Default, Clone, Copy)]
struct Used {
    running: u64,
    started: u64,
}

impl<'a> Gate<'a> {
    pub(crate) fn new(limits: &'a [FlowLimit]) -> Gate<'a> {
        Gate { limits: limits.iter().map(|limit| (limit.processor.as_str(), limit)).collect(), used: HashMap::new() }
    }

    /// The limit on `processor`'s jobs, if it has one.
    pub(crate) fn limit(&self, processor: &str) -> Option<&'a FlowLimit> {
        self.limits.get(processor).copied()
    }

    /// Counts `count` jobs of `processor` with `key` as running now.
    pub(crate) fn count_running(&mut self, processor: &str, key: String, count: u64) {
        self.used.entry((processor.to_owned(), key)).or_default().running += count;
    }

    /// Counts `count` starts of `processor` with `key` within its rate's period.
    pub(crate) fn count_started(&mut self, processor: &str, key: String, count: u64) {
        self.used.entry((processor.to_owned(), key)).or_default().started += count;
    }

    /// How many more jobs of `processor` with `key` may start now.
    pub(crate) fn room(&self, limit: &FlowLimit, key: &str) -> u64 {
        let used = self.used.get(&(limit.processor.clone(), key.to_owned())).copied().unwrap_or_default();
        let running = limit.max_running.map_or(u64::MAX, |max| u64::from(max).saturating_sub(used.running));
        let started = limit.rate.map_or(u64::MAX, |rate| u64::from(rate.count).saturating_sub(used.started));
        running.min(started)
    }

    /// Whether a ready job of `processor` with `key` (`None`: the processor has no limit)
    /// may start; if it may, it is counted as running and started.
    pub(crate) fn admit(&mut self, processor: &str, key: Option<&str>) -> bool {
        let (Some(limit), Some(key)) = (self.limit(processor), key) else {
            return true;
        };
        if self.room(limit, key) == 0 {
            return false;
        }
        let used = self.used.entry((processor.to_owned(), key.to_owned())).or_default();
        used.running += 1;
        used.started += 1;
        true
    }
}

/// The counts of each (processor, key) as people read them: merged (a backend may report one
/// key in several rows), with what each limit holds back, by processor and key.
pub(crate) fn usage(limits: &[FlowLimit], counts: Vec<FlowCount>) -> Vec<FlowUsage> {
    let mut merged: std::collections::BTreeMap<(String, String), FlowCount> = Default::default();
    for count in counts {
        let entry = merged.entry((count.processor.clone(), count.key.clone())).or_default();
        entry.running += count.running;
        entry.ready += count.ready;
        entry.started += count.started;
    }
    let mut gate = Gate::new(limits);
    for ((processor, key), count) in &merged {
        gate.count_running(processor, key.clone(), count.running);
        gate.count_started(processor, key.clone(), count.started);
    }
    merged
        .into_iter()
        .filter_map(|((processor, key), count)| {
            let limit = gate.limit(&processor)?;
            Some(FlowUsage {
                held_back: count.ready.saturating_sub(gate.room(limit, &key)),
                key_pointer: limit.key_pointer(),
                max_running: limit.max_running,
                rate: limit.rate.map(|rate| rate.to_string()),
                running: count.running,
                started_in_period: count.started,
                processor,
                key,
            })
        })
        .collect()
}

/// The key of a job of `limit`'s processor with `payload`: the value at the limit's pointer,
/// a string as it is and anything else as JSON text; empty when the payload has nothing
/// there (such jobs share one limit), and always empty without a key. PostgreSQL computes
/// the same in SQL (`payload::jsonb #>> path`).
pub(crate) fn key_of(limit: &FlowLimit, payload: &str) -> String {
    if limit.key.is_empty() {
        return String::new();
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(payload) else {
        return String::new();
    };
    let found = limit.key.iter().try_fold(&value, |value, token| match value {
        serde_json::Value::Object(members) => members.get(token),
        serde_json::Value::Array(items) => items.get(token.parse::<usize>().ok()?),
        _ => None,
    });
    match found {
        None | Some(serde_json::Value::Null) => String::new(),
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jobhost_core::flow::Rate;

    use super::*;

    fn limit(max_running: Option<u32>, rate: Option<u32>, key: &[&str]) -> FlowLimit {
        FlowLimit {
            processor: "resize".into(),
            max_running,
            rate: rate.map(|count| Rate { count, period: Duration::from_secs(60) }),
            key: key.iter().map(|token| token.to_string()).collect(),
        }
    }

    #[test]
    fn the_gate_admits_up_to_the_tighter_limit_per_key() {
        let limits = [limit(Some(2), Some(3), &["tenant"])];
        let mut gate = Gate::new(&limits);
        gate.count_running("resize", "a".into(), 1);
        gate.count_started("resize", "b".into(), 2);
        assert!(gate.admit("resize", Some("a")), "a runs 1 of 2");
        assert!(!gate.admit("resize", Some("a")), "a runs 2 of 2");
        assert!(gate.admit("resize", Some("b")), "b started 2 of 3");
        assert!(!gate.admit("resize", Some("b")), "b started 3 of 3");
        assert!(gate.admit("resize", Some("c")) && gate.admit("resize", Some("c")), "c had room for two");
        assert!(!gate.admit("resize", Some("c")));
        assert!(gate.admit("other", None), "a processor without a limit is never held back");
    }

    #[test]
    fn keys_come_from_the_payload_at_the_pointer() {
        let keyed = limit(Some(1), None, &["tenant", "id"]);
        assert_eq!(key_of(&keyed, r#"{"tenant": {"id": "acme"}}"#), "acme");
        assert_eq!(key_of(&keyed, r#"{"tenant": {"id": 42}}"#), "42");
        assert_eq!(key_of(&keyed, r#"{"tenant": {"id": null}}"#), "");
        assert_eq!(key_of(&keyed, r#"{"tenant": "acme"}"#), "");
        assert_eq!(key_of(&keyed, "[1, 2]"), "");
        assert_eq!(key_of(&limit(Some(1), None, &["tags", "1"]), r#"{"tags": ["a", "b"]}"#), "b");
        assert_eq!(key_of(&limit(Some(1), None, &[]), r#"{"tenant": {"id": "acme"}}"#), "");
    }
}
