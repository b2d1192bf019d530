//! A schedule under `schedules:`: a cron expression in a time zone, and the job each of its
//! ticks queues. The expression and the zone are parsed as the file is read, so a schedule
//! that loads is one whose ticks can be computed; the times it answers are milliseconds
//! since the epoch, the store's unit, so no other crate needs a calendar.
//!
//! Time zones and daylight saving time follow croner: a tick whose wall-clock time is
//! skipped when clocks go forward runs at the first instant after the gap, and one whose
//! time repeats when clocks go back runs once, at its first occurrence (a schedule firing
//! every so many minutes or seconds runs through both halves).

use std::fmt;

use chrono::{DateTime, TimeZone as _, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Deserializer};

/// One entry of `schedules:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub cron: CronExpression,
    #[serde(default)]
    pub timezone: TimeZone,
    pub processor: String,
    /// The payload of every job it queues, written as YAML or JSON.
    #[serde(default = "empty_object")]
    pub payload: serde_json::Value,
    #[serde(default = "default_pool")]
    pub pool: String,
    #[serde(default)]
    pub priority: i64,
    /// Attempts each job gets; unset: `retry.max_attempts`.
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub catch_up: CatchUp,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn default_pool() -> String {
    "default".to_owned()
}

/// What happens to ticks that fell while no jobhost process was running to queue them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// They are passed over: only a tick due now (late by no more than the scheduler's own
    /// lateness) queues a job.
    #[default]
    Skip,
    /// One job is queued for the latest of them, however late.
    Once,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::Once => "once",
        }
    }
}

impl Schedule {
    /// The latest tick at or before `at`, in milliseconds since the epoch.
    pub fn latest_tick(&self, at: i64) -> Option<i64> {
        let start = self.timezone.at_second(at)?;
        self.cron.0.find_previous_occurrence(&start, true).ok().map(|tick| tick.timestamp_millis())
    }

    /// The first tick after `at`.
    pub fn next_tick(&self, at: i64) -> Option<i64> {
        let start = self.timezone.at_second(at)?;
        self.cron.0.find_next_occurrence(&start, false).ok().map(|tick| tick.timestamp_millis())
    }

    /// The payload as the JSON text each job carries.
    pub fn payload_json(&self) -> String {
        self.payload.to_string()
    }
}

/// A cron expression: 5 fields (minute, hour, day of month, month, day of week), or 6 with
/// seconds first; `@daily` and the other nicknames are accepted too.
#[derive(Clone)]
pub struct CronExpression(Cron);

impl CronExpression {
    pub fn parse(text: &str) -> Result<CronExpression, String> {
        let parser = CronParser::builder().seconds(Seconds::Optional).year(Year::Disallowed).build();
        parser.parse(text).map(CronExpression).map_err(|err| {
            format!(
                "invalid cron expression {text:?} ({err}): write 5 fields (minute hour day-of-month month \
                 day-of-week), e.g. \"0 3 * * *\", or 6 with seconds first, e.g. \"*/10 * * * * *\""
            )
        })
    }

    pub fn as_str(&self) -> &str {
        self.0.pattern.as_str()
    }
}

impl fmt::Debug for CronExpression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl<'de> Deserialize<'de> for CronExpression {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        CronExpression::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// An IANA time zone, e.g. `UTC` or `Europe/Berlin`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TimeZone(chrono_tz::Tz);

impl Default for TimeZone {
    fn default() -> Self {
        TimeZone(chrono_tz::Tz::UTC)
    }
}

impl TimeZone {
    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    /// `at` in this zone, truncated to its second: ticks fall on whole seconds.
    fn at_second(&self, at: i64) -> Option<DateTime<chrono_tz::Tz>> {
        let utc: DateTime<Utc> = DateTime::from_timestamp(at.div_euclid(1000), 0)?;
        Some(self.0.from_utc_datetime(&utc.naive_utc()))
    }
}

impl fmt::Debug for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(TimeZone).map_err(|_| {
            serde::de::Error::custom(format!(
                "unknown time zone {text:?}: use an IANA name such as UTC, Europe/Berlin or America/New_York"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, timezone: &str) -> Schedule {
        let yaml = format!("{{cron: {cron:?}, timezone: {timezone}, processor: echo}}");
        serde_yaml::from_str(&yaml).unwrap()
    }

    /// Milliseconds of a UTC time written as RFC 3339.
    fn ms(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text).unwrap().timestamp_millis()
    }

    #[test]
    fn five_fields_are_minutes_and_six_start_with_seconds() {
        let daily = schedule("0 3 * * *", "UTC");
        assert_eq!(daily.latest_tick(ms("2030-01-02T10:00:00.500Z")), Some(ms("2030-01-02T03:00:00Z")));
        assert_eq!(daily.next_tick(ms("2030-01-02T03:00:00.000Z")), Some(ms("2030-01-03T03:00:00Z")));
        let every_second = schedule("*/1 * * * * *", "UTC");
        assert_eq!(every_second.latest_tick(ms("2030-01-02T10:00:07.900Z")), Some(ms("2030-01-02T10:00:07Z")));
        assert_eq!(every_second.next_tick(ms("2030-01-02T10:00:07.900Z")), Some(ms("2030-01-02T10:00:08Z")));
    }

    #[test]
    fn ticks_follow_the_wall_clock_of_their_zone_across_daylight_saving_time() {
        let berlin = schedule("0 3 * * *", "Europe/Berlin");
        // 03:00 in Berlin is 02:00 UTC in winter and 01:00 UTC in summer.
        assert_eq!(berlin.next_tick(ms("2030-01-10T12:00:00Z")), Some(ms("2030-01-11T02:00:00Z")));
        assert_eq!(berlin.next_tick(ms("2030-07-10T12:00:00Z")), Some(ms("2030-07-11T01:00:00Z")));
        // 02:30 does not exist on 31 March 2030 in Berlin (02:00 → 03:00): it runs once, at 03:00.
        let in_the_gap = schedule("30 2 * * *", "Europe/Berlin");
        assert_eq!(in_the_gap.next_tick(ms("2030-03-30T12:00:00Z")), Some(ms("2030-03-31T01:00:00Z")));
        // 02:30 happens twice on 27 October 2030 (03:00 → 02:00): it runs at the first.
        let in_the_fold = in_the_gap.next_tick(ms("2030-10-26T12:00:00Z")).unwrap();
        assert_eq!(in_the_fold, ms("2030-10-27T00:30:00Z"));
        assert_eq!(in_the_gap.next_tick(in_the_fold), Some(ms("2030-10-28T01:30:00Z")));
    }

    #[test]
    fn bad_expressions_and_zones_are_refused_with_the_fix() {
        let refused = |yaml: &str| serde_yaml::from_str::<Schedule>(yaml).unwrap_err().to_string();
        let cron = refused("{cron: '61 * * * *', processor: echo}");
        assert!(cron.contains("invalid cron expression \"61 * * * *\"") && cron.contains("5 fields"), "{cron}");
        let year = refused("{cron: '0 0 0 1 1 * 2030', processor: echo}");
        assert!(year.contains("invalid cron expression"), "{year}");
        let zone = refused("{cron: '* * * * *', timezone: Mars/Olympus, processor: echo}");
        assert!(zone.contains("unknown time zone \"Mars/Olympus\"") && zone.contains("IANA"), "{zone}");
    }
}
