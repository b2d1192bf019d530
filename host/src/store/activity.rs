//! What the pool has done, counted as it happens: jobs queued and attempts finished, per
//! minute, pool, processor and outcome, with the attempts' durations and fuel in histogram
//! buckets. Metrics and the dashboard's throughput chart read these counts, never the jobs or
//! attempts tables, so a scrape costs the same at a million jobs as at ten; and purging
//! jobs does not take back what they did, as Prometheus counters require.
//!
//! Both backends keep the table `activity` from triggers in the same transaction as the
//! change (a job inserted, an attempt's outcome set), so the counts are exact. Rows older than
//! [`RECENT_MINUTES`] are folded into minute 0 when read, which bounds the table by pools ×
//! processors × outcomes × buckets rather than by time.
//!
//! The bucket bounds are part of the schema: the triggers spell them out (from the macros
//! below), so changing them takes a migration, and a test checks the two agree.

use std::collections::BTreeMap;

use super::model::Millis;

/// Upper bounds (inclusive) of the attempt-duration buckets, in milliseconds; a last bucket
/// holds everything longer.
pub const DURATION_BOUNDS_MS: [u64; 14] =
    [5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000];

/// Upper bounds (inclusive) of the fuel buckets; a last bucket holds everything more.
pub const FUEL_BOUNDS: [u64; 8] =
    [10_000, 100_000, 1_000_000, 10_000_000, 100_000_000, 1_000_000_000, 10_000_000_000, 100_000_000_000];

/// Minutes kept one by one (the chart's hour, and one minute more in progress).
pub const RECENT_MINUTES: i64 = 61;

/// The event of a queued job; the others are attempt outcomes (`ok`, `trap`, …).
pub const ENQUEUED: &str = "enqueued";

/// SQL giving the duration bucket of `$col` (-1 when not measured). Spelled out in the
/// migrations: never change it without a new one.
macro_rules! duration_bucket_sql {
    ($col:literal) => {
        concat!(
            "CASE WHEN ",
            $col,
            " IS NULL THEN -1 WHEN ",
            $col,
            " <= 5 THEN 0 WHEN ",
            $col,
            " <= 10 THEN 1 WHEN ",
            $col,
            " <= 25 THEN 2 WHEN ",
            $col,
            " <= 50 THEN 3 WHEN ",
            $col,
            " <= 100 THEN 4 WHEN ",
            $col,
            " <= 250 THEN 5 WHEN ",
            $col,
            " <= 500 THEN 6 WHEN ",
            $col,
            " <= 1000 THEN 7 WHEN ",
            $col,
            " <= 2500 THEN 8 WHEN ",
            $col,
            " <= 5000 THEN 9 WHEN ",
            $col,
            " <= 10000 THEN 10 WHEN ",
            $col,
            " <= 30000 THEN 11 WHEN ",
            $col,
            " <= 60000 THEN 12 WHEN ",
            $col,
            " <= 300000 THEN 13 ELSE 14 END"
        )
    };
}

/// SQL giving the fuel bucket of `$col` (-1 when not measured); as for durations.
macro_rules! fuel_bucket_sql {
    ($col:literal) => {
        concat!(
            "CASE WHEN ",
            $col,
            " IS NULL THEN -1 WHEN ",
            $col,
            " <= 10000 THEN 0 WHEN ",
            $col,
            " <= 100000 THEN 1 WHEN ",
            $col,
            " <= 1000000 THEN 2 WHEN ",
            $col,
            " <= 10000000 THEN 3 WHEN ",
            $col,
            " <= 100000000 THEN 4 WHEN ",
            $col,
            " <= 1000000000 THEN 5 WHEN ",
            $col,
            " <= 10000000000 THEN 6 WHEN ",
            $col,
            " <= 100000000000 THEN 7 ELSE 8 END"
        )
    };
}

/// One row of summed activity, as a backend reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActivityRow {
    /// Minutes since the epoch; 0 for everything older than the recent minutes.
    pub minute: i64,
    pub pool: String,
    pub processor: String,
    pub event: String,
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
    pub attempts: Keyed<(String, String, String), u64>,
    pub durations: Keyed<(String, String), Histogram>,
    pub fuel: Keyed<(String, String), Histogram>,
    /// Per minute (since the epoch) of the last hour: attempts that succeeded and that failed.
    pub per_minute: BTreeMap<i64, (u64, u64)>,
}

impl Activity {
    /// Adds up the rows a backend read; `now` places the last hour.
    pub fn from_rows(rows: Vec<ActivityRow>, now: Millis) -> Activity {
        let this_minute = now.div_euclid(60_000);
        let mut activity = Activity::default();
        for row in rows {
            let key = (row.pool, row.processor);
            if row.event == ENQUEUED {
                *activity.enqueued.entry(key).or_default() += row.events;
                continue;
            }
            if row.minute > this_minute - 60 {
                let (ok, failed) = activity.per_minute.entry(row.minute).or_default();
                if row.event == "ok" { *ok += row.events } else { *failed += row.events }
            }
            activity.durations.entry(key.clone()).or_default().add(
                row.duration_bucket,
                DURATION_BOUNDS_MS.len(),
                row.events,
                row.duration_ms,
            );
            activity.fuel.entry(key.clone()).or_default().add(row.fuel_bucket, FUEL_BOUNDS.len(), row.events, row.fuel);
            *activity.attempts.entry((key.0, key.1, row.event)).or_default() += row.events;
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

    /// The buckets the triggers compute, one `WHEN … <= N THEN i` per bound.
    fn bounds_in(sql: &str) -> Vec<u64> {
        sql.split(" <= ").skip(1).map(|part| part.split(' ').next().unwrap().parse().unwrap()).collect()
    }

    #[test]
    fn the_schemas_buckets_are_the_bounds_metrics_report() {
        assert_eq!(bounds_in(duration_bucket_sql!("d")), DURATION_BOUNDS_MS);
        assert_eq!(bounds_in(fuel_bucket_sql!("f")), FUEL_BOUNDS);
        let last = |sql: &str| sql.rsplit("ELSE ").next().unwrap().trim_end_matches(" END").parse::<usize>().unwrap();
        assert_eq!(last(duration_bucket_sql!("d")), DURATION_BOUNDS_MS.len());
        assert_eq!(last(fuel_bucket_sql!("f")), FUEL_BOUNDS.len());
    }

    #[test]
    fn rows_add_up_into_counters_histograms_and_the_last_hour() {
        let now = 100 * 60_000 + 5;
        let row = |minute, event: &str, duration_bucket, events| ActivityRow {
            minute,
            pool: "p".into(),
            processor: "echo".into(),
            event: event.into(),
            duration_bucket,
            fuel_bucket: 0,
            events,
            duration_ms: events * 3,
            fuel: events * 10,
        };
        let activity = Activity::from_rows(
            vec![row(0, "ok", 0, 5), row(100, "ok", 1, 2), row(99, "trap", 14, 1), row(100, ENQUEUED, -1, 9)],
            now,
        );
        assert_eq!(activity.enqueued[&("p".into(), "echo".into())], 9);
        assert_eq!(activity.attempts[&("p".into(), "echo".into(), "ok".into())], 7);
        assert_eq!(activity.attempts_in("p"), 8);
        assert_eq!(activity.per_minute, BTreeMap::from([(99, (0, 1)), (100, (2, 0))]), "minute 0 is history");
        let durations = &activity.durations[&("p".into(), "echo".into())];
        assert_eq!((durations.count, durations.sum), (8, 24));
        let points = durations.points(&DURATION_BOUNDS_MS, 1000.0);
        assert_eq!(points[..2], [(0.005, 5), (0.01, 2)]);
        assert_eq!(points.len(), DURATION_BOUNDS_MS.len() + 1);
        assert_eq!(points.last(), Some(&(f64::INFINITY, 1)), "the trap took longer than the last bound");
    }
}
