//! What the pool has done, counted as it happens: jobs queued and attempts finished, per
//! minute, pool, processor and outcome, with the attempts' durations and fuel in histogram
//! buckets. Metrics and the dashboard's throughput chart read these counts, never the jobs or
//! attempts tables, so a scrape costs the same at a million jobs as at ten; and purging
//! jobs does not take back what they did, as Prometheus counters require.
//!
//! Both backends add to the table `activity` in the transaction that queues the jobs or
//! settles the attempts, one row per (pool, processor, event, buckets) of that transaction
//! rather than one per job, so the counts are exact and cost little. Rows older than
//! [`RECENT_MINUTES`] are folded into minute 0 when read, which bounds the table by pools ×
//! processors × outcomes × buckets rather than by time.
//!
//! Buckets are computed here ([`duration_bucket`], [`fuel_bucket`]) and stored as indexes,
//! so the bounds below are part of the stored data: change them only with a migration.

use std::collections::BTreeMap;

use jobhost_core::outcome::OutcomeKind;

use super::model::{Millis, StoredName};

/// Upper bounds (inclusive) of the attempt-duration buckets, in milliseconds; a last bucket
/// holds everything longer.
pub const DURATION_BOUNDS_MS: [u64; 14] =
    [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000];

/// Upper bounds (inclusive) of the fuel buckets; a last bucket holds everything more.
pub const FUEL_BOUNDS: [u64; 8] =
    [10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000, 10_000_000_000, 100_000_000_000];

/// Minutes kept one by one (the chart's hour, and one minute more in progress).
pub const RECENT_MINUTES: i64 = 61;

/// What a row of the activity table counts: jobs queued, or attempts that ended one way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    Enqueued,
    Finished(OutcomeKind),
}

impl Event {
    /// The event as stored: `enqueued`, or the outcome's name (`ok`, `trap`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Enqueued => "enqueued",
            Event::Finished(kind) => kind.as_str(),
        }
    }
}

impl StoredName for Event {
    const WHAT: &'static str = "activity event";

    fn from_name(text: &str) -> Option<Self> {
        if text == Event::Enqueued.as_str() {
            Some(Event::Enqueued)
        } else {
            OutcomeKind::parse(text).map(Event::Finished)
        }
    }
}

/// The index of the duration bucket holding `ms`, or -1 when it was not measured.
pub fn duration_bucket(ms: Option<u64>) -> i32 {
    ms.map_or(-1, |ms| DURATION_BOUNDS_MS.iter().take_while(|&&bound| ms > bound).count() as i32)
}

/// The index of the fuel bucket holding `fuel`, or -1 when it was not measured.
pub fn fuel_bucket(fuel: Option<u64>) -> i32 {
    fuel.map_or(-1, |fuel| FUEL_BOUNDS.iter().take_while(|&&bound| fuel > bound).count() as i32)
}

/// What one transaction adds to the activity table, summed per key before it is written.
#[derive(Debug, Default)]
pub struct Tally {
    pub rows: BTreeMap<TallyKey, TallyValue>,
}

/// (pool, processor, event, duration bucket, fuel bucket).
pub type TallyKey = (String, String, Event, i32, i32);

#[derive(Debug, Default, Clone, Copy)]
pub struct TallyValue {
    pub events: u64,
    pub duration_ms: u64,
    pub fuel: u64,
}

impl Tally {
    pub fn enqueued(&mut self, pool: &str, processor: &str) {
        self.rows.entry((pool.to_owned(), processor.to_owned(), Event::Enqueued, -1, -1)).or_default().events += 1;
    }

    pub fn finished(&mut self, pool: String, processor: String, report: &super::AttemptReport<'_>) {
        let event = Event::Finished(report.kind);
        let key = (pool, processor, event, duration_bucket(report.duration_ms), fuel_bucket(report.fuel_used));
        let value = self.rows.entry(key).or_default();
        value.events += 1;
        value.duration_ms = value.duration_ms.saturating_add(report.duration_ms.unwrap_or(0));
        value.fuel = value.fuel.saturating_add(report.fuel_used.unwrap_or(0));
    }
}

/// One row of summed activity, as a backend reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRow {
    /// Minutes since the epoch; 0 for everything older than the recent minutes.
    pub minute: i64,
    pub pool: String,
    pub processor: String,
    pub event: Event,
    /// Index into [`DURATION_BOUNDS_MS`] (its length for "longer"), or -1.
    pub duration_bucket: i32,
    pub fuel_bucket: i32,
    pub events: u64,
    pub duration_ms: u64,
    pub fuel: u64,
}

/// A histogram in the shape Prometheus wants: cumulative counts at each bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    /// Count per bucket (not cumulative), one more than the bounds.
    pub buckets: Vec<u64>,
    pub sum: u64,
    pub count: u64,
}

impl Histogram {
    fn add(&mut self, bucket: i32, bounds: usize, events: u64, sum: u64) {
        let Ok(bucket) = usize::try_from(bucket) else { return };
        if self.buckets.is_empty() {
            self.buckets = vec![0; bounds + 1];
        }
        self.buckets[bucket.min(bounds)] += events;
        self.sum += sum;
        self.count += events;
    }

    /// `(upper bound / divisor, count in that bucket)` for every bound, then the bucket
    /// above the last bound as `+Inf`: the counts are per bucket, not cumulative.
    pub fn points(&self, bounds: &[u64], divisor: f64) -> Vec<(f64, u64)> {
        bounds
            .iter()
            .map(|&bound| bound as f64 / divisor)
            .chain([f64::INFINITY])
            .enumerate()
            .map(|(index, bound)| (bound, self.buckets.get(index).copied().unwrap_or(0)))
            .collect()
    }
}

/// Per (pool, processor) or (pool, processor, outcome), ordered for stable output.
pub type Keyed<K, V> = BTreeMap<K, V>;

/// Everything the pool has done, added up: what metrics and the throughput chart show.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Activity {
    /// Jobs queued, per (pool, processor).
    pub enqueued: Keyed<(String, String), u64>,
    /// Attempts finished, per (pool, processor, outcome).
    pub attempts: Keyed<(String, String, OutcomeKind), u64>,
    pub durations: Keyed<(String, String), Histogram>,
    pub fuel: Keyed<(String, String), Histogram>,
    /// Per minute (since the epoch) of the last hour: attempts that succeeded and that failed.
    pub per_minute: BTreeMap<i64, (u64, u64)>,
    /// The minute (since the epoch, on the database's clock) the activity was read in: the
    /// last of the hour `per_minute` covers.
    pub this_minute: i64,
}

impl Activity {
    /// Adds up the rows a backend read; `now` places the last hour.
    pub fn from_rows(rows: Vec<ActivityRow>, now: Millis) -> Activity {
        let this_minute = now.div_euclid(60_000);
        let mut activity = Activity { this_minute, ..Activity::default() };
        for row in rows {
            let key = (row.pool, row.processor);
            let outcome = match row.event {
                Event::Enqueued => {
                    *activity.enqueued.entry(key).or_default() += row.events;
                    continue;
                }
                Event::Finished(outcome) => outcome,
            };
            if row.minute > this_minute - 60 {
                let (ok, failed) = activity.per_minute.entry(row.minute).or_default();
                if outcome == OutcomeKind::Ok { *ok += row.events } else { *failed += row.events }
            }
            activity.durations.entry(key.clone()).or_default().add(
                row.duration_bucket,
                DURATION_BOUNDS_MS.len(),
                row.events,
                row.duration_ms,
            );
            activity.fuel.entry(key.clone()).or_default().add(row.fuel_bucket, FUEL_BOUNDS.len(), row.events, row.fuel);
            *activity.attempts.entry((key.0, key.1, outcome)).or_default() += row.events;
        }
        activity
    }

    /// Attempts finished in `pool`, every processor and outcome.
    pub fn attempts_in(&self, pool: &str) -> u64 {
        self.attempts.iter().filter(|((p, _, _), _)| p == pool).map(|(_, n)| n).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_fall_in_the_bucket_of_the_first_bound_they_do_not_exceed() {
        assert_eq!(duration_bucket(None), -1);
        assert_eq!(duration_bucket(Some(0)), 0);
        assert_eq!(duration_bucket(Some(5)), 0, "bounds are inclusive");
        assert_eq!(duration_bucket(Some(6)), 1);
        assert_eq!(duration_bucket(Some(u64::MAX)), DURATION_BOUNDS_MS.len() as i32);
        assert_eq!(fuel_bucket(Some(10_001)), 1);
        assert_eq!(fuel_bucket(Some(u64::MAX)), FUEL_BOUNDS.len() as i32);
    }

    #[test]
    fn rows_add_up_into_counters_histograms_and_the_last_hour() {
        let now = 100 * 60_000 + 5;
        let row = |minute, event, duration_bucket, events| ActivityRow {
            minute,
            pool: "p".into(),
            processor: "echo".into(),
            event,
            duration_bucket,
            fuel_bucket: 0,
            events,
            duration_ms: events * 3,
            fuel: events * 10,
        };
        let activity = Activity::from_rows(
            vec![
                row(0, Event::Finished(OutcomeKind::Ok), 0, 5),
                row(100, Event::Finished(OutcomeKind::Ok), 1, 2),
                row(99, Event::Finished(OutcomeKind::Trap), 14, 1),
                row(100, Event::Enqueued, -1, 9),
            ],
            now,
        );
        assert_eq!(activity.enqueued[&("p".into(), "echo".into())], 9);
        assert_eq!(activity.attempts[&("p".into(), "echo".into(), OutcomeKind::Ok)], 7);
        assert_eq!(activity.attempts_in("p"), 8);
        assert_eq!(activity.per_minute, BTreeMap::from([(99, (0, 1)), (100, (2, 0))]), "minute 0 is history");
        assert_eq!(activity.this_minute, 100, "the hour ends at the minute of reading");
        let durations = &activity.durations[&("p".into(), "echo".into())];
        assert_eq!((durations.count, durations.sum), (8, 24));
        let points = durations.points(&DURATION_BOUNDS_MS, 1000.0);
        assert_eq!(points[..2], [(0.005, 5), (0.01, 2)]);
        assert_eq!(points.len(), DURATION_BOUNDS_MS.len() + 1);
        assert_eq!(points.last(), Some(&(f64::INFINITY, 1)), "the trap took longer than the last bound");
    }
}
