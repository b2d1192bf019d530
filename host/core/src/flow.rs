//! Flow limits: how many of a processor's jobs may run at once and how many may start per
//! period, across every worker on every host (`processors.overrides.NAME.flow`).
//!
//! This module owns the limits' shape and how people write them (`rate: 100/1m`, `key:
//! /tenant`); the store enforces them inside the claim.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::units::HumanDuration;

/// `processors.overrides.NAME.flow`, as written: each key optional, at least one limit.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FlowConfig {
    /// At most this many of the processor's jobs claimed (running) at once.
    pub max_running: Option<u32>,
    /// At most this many of its jobs started per period (a sliding window).
    pub rate: Option<Rate>,
    /// A JSON pointer into the payload: each distinct value there gets limits of its own.
    pub key: Option<String>,
}

/// At most `count` starts in any `period`: `100/1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let wrong = || format!("`{}` is not a rate: write COUNT/PERIOD, e.g. 100/1m or 5/1s", text.trim());
        let (count, period) = text.trim().split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.trim().parse().map_err(|_| wrong())?;
        let period: HumanDuration = period.trim().parse().map_err(|err| format!("{} ({err})", wrong()))?;
        if count == 0 || period.0.is_zero() {
            return Err(format!("`{}`: a rate needs a count and a period above 0", text.trim()));
        }
        Ok(Rate { count, period: period.0 })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, HumanDuration(self.period))
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        crate::units::deserialize_from_str(deserializer)
    }
}

/// One processor's limits, validated: what a claim enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowLimit {
    pub processor: String,
    pub max_running: Option<u32>,
    pub rate: Option<Rate>,
    /// The key's path: the JSON pointer's reference tokens, unescaped (`/a~1b/c` is
    /// `["a/b", "c"]`). Empty: one limit for all the processor's jobs.
    pub key: Vec<String>,
}

impl FlowLimit {
    /// Checks `config` (found at `at`, e.g. `processors.overrides.resize.flow`).
    pub fn new(processor: &str, config: &FlowConfig, at: &str) -> Result<FlowLimit, String> {
        if config.max_running.is_none() && config.rate.is_none() {
            return Err(format!("{at} sets no limit: give it max_running, rate or both (or remove it)"));
        }
        if config.max_running == Some(0) {
            return Err(format!("{at}.max_running must be at least 1 (to stop the processor, pause its pool)"));
        }
        let key = match &config.key {
            None => Vec::new(),
            Some(pointer) => pointer_tokens(pointer).map_err(|err| format!("{at}.key {err}"))?,
        };
        Ok(FlowLimit { processor: processor.to_owned(), max_running: config.max_running, rate: config.rate, key })
    }

    /// The key's JSON pointer as written (`/tenant`), or `None` without a key.
    pub fn key_pointer(&self) -> Option<String> {
        (!self.key.is_empty())
            .then(|| self.key.iter().map(|token| format!("/{}", token.replace('~', "~0").replace('/', "~1"))).collect())
    }
}

/// The reference tokens of JSON pointer `pointer` (RFC 6901), which must name a member
/// below the payload's top (the whole payload is no key).
fn pointer_tokens(pointer: &str) -> Result<Vec<String>, String> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(format!("`{pointer}` is not a JSON pointer: start it with '/', e.g. /tenant"));
    };
    rest.split('/')
        .map(|token| {
            if token.is_empty() {
                return Err(format!("`{pointer}` has an empty member name: write e.g. /tenant or /customer/id"));
            }
            let unescaped = token.replace("~1", "/").replace("~0", "~");
            if token.replace("~0", "").replace("~1", "").contains('~') {
                return Err(format!("`{pointer}` has a `~` not followed by 0 or 1 (write ~0 for `~`, ~1 for `/`)"));
            }
            Ok(unescaped)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(yaml: &str) -> Result<FlowLimit, String> {
        let config: FlowConfig = serde_yaml::from_str(yaml).map_err(|err| err.to_string())?;
        FlowLimit::new("resize", &config, "flow")
    }

    #[test]
    fn rates_parse_as_count_per_period() {
        assert_eq!("100/1m".parse(), Ok(Rate { count: 100, period: Duration::from_secs(60) }));
        assert_eq!(" 5 / 500ms ".parse(), Ok(Rate { count: 5, period: Duration::from_millis(500) }));
        assert_eq!(Rate { count: 100, period: Duration::from_secs(60) }.to_string(), "100/1m");
        for bad in ["100", "x/1m", "100/soon", "0/1m", "5/0s", "-1/1m"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn a_limit_needs_max_running_or_rate_and_a_good_pointer() {
        let full = limit("{max_running: 4, rate: 100/1m, key: /tenant/id}").unwrap();
        assert_eq!(full.key, ["tenant", "id"]);
        assert_eq!(full.key_pointer().as_deref(), Some("/tenant/id"));
        assert_eq!(limit("{max_running: 1, key: /a~1b~0c}").unwrap().key, ["a/b~c"]);
        assert_eq!(limit("{rate: 3/1s}").unwrap().key, Vec::<String>::new());
        assert!(limit("{key: /tenant}").unwrap_err().contains("sets no limit"));
        assert!(limit("{max_running: 0}").unwrap_err().contains("at least 1"));
        assert!(limit("{max_running: 1, key: tenant}").unwrap_err().contains("start it with '/'"));
        assert!(limit("{max_running: 1, key: /a//b}").unwrap_err().contains("empty member name"));
        assert!(limit("{max_running: 1, key: /a~2}").unwrap_err().contains("~0"));
        assert!(limit("{max_running: 1, rat: 1/1s}").unwrap_err().contains("unknown field"));
    }
}
