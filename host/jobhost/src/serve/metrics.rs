//! `GET /metrics`: the pool in the OpenMetrics text format Prometheus scrapes.
//!
//! Everything comes from the store, not from this server's memory, so any number of
//! servers (or none, between scrapes) report the same values, and workers on other machines
//! are counted: job and worker counts, ready jobs and their age per pool, which pools are
//! paused, what each flow limit runs and holds back per key, and from the
//! activity table (see `store::activity`) attempts by outcome, their duration and fuel
//! histograms, and jobs queued and claimed as counters to take rates of. A scrape reads
//! kept counts and short index ranges only, so it costs the same at a million jobs; only
//! flow limits add a read of their processors' running and ready jobs.
//!
//! Label values are names people and API clients choose (pools, hosts), so every one is
//! escaped as the exposition format says ([`Label`]): a quote in a pool name must not end
//! its label and make Prometheus reject the whole scrape.
//!
//! Only the `jobhost_server_*` figures are this process's own: its store queries, long-polls
//! waiting, and connections open and idle.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use jobhost_store::{Activity, DURATION_BOUNDS_MS, FUEL_BOUNDS, FlowUsage, PoolSnapshot, StatusSnapshot};

use super::App;
use super::error::ApiError;

/// What one scrape read, encoded by [`Collector::encode`].
#[derive(Debug)]
struct Scrape {
    pools: Vec<PoolSnapshot>,
    limits: Vec<FlowUsage>,
    status: StatusSnapshot,
    activity: Activity,
    store_queries: u64,
    waiters: u64,
    processor_listings: u64,
    connections: super::connections::Counts,
}

pub async fn metrics(State(app): State<Arc<App>>) -> Result<impl IntoResponse, ApiError> {
    let pools = app.store().pools().await?;
    let status = app.store().status(None).await?;
    let activity = app.store().activity().await?;
    let limits = app.flow_usage().await?;
    let scrape = Scrape {
        pools,
        limits,
        status,
        activity,
        store_queries: app.queries.load(Ordering::Relaxed),
        waiters: app.watcher.waiters.load(Ordering::Relaxed),
        processor_listings: app.processor_listing.made.load(Ordering::Relaxed),
        connections: app.connections.counts(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|err| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", err.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text))
}

/// A label value, escaped as OpenMetrics and Prometheus's text format require: backslash,
/// double quote and line feed (prometheus-client writes `&str` values as they are).
#[derive(Debug, Clone, Copy)]
struct Label<'a>(&'a str);

impl EncodeLabelValue for Label<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

type Labels<'a> = Vec<(&'static str, Label<'a>)>;

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    values: &[(Labels<'_>, i64)],
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, value) in values {
        ConstGauge::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, values: &[(Labels<'_>, u64)]) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in values {
        ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn as_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let pools = &self.pools;
        let jobs: Vec<_> = pools
            .iter()
            .flat_map(|pool| {
                pool.jobs.by_status().map(|(status, count)| {
                    (vec![("pool", Label(&pool.pool)), ("status", Label(status.as_str()))], as_gauge(count))
                })
            })
            .collect();
        gauge(&mut encoder, "jobhost_jobs", "Jobs by pool and status.", None, &jobs)?;
        let ready: Vec<_> =
            pools.iter().map(|pool| (vec![("pool", Label(&pool.pool))], as_gauge(pool.ready))).collect();
        gauge(&mut encoder, "jobhost_ready_jobs", "Pending jobs whose time has come.", None, &ready)?;
        let paused: Vec<_> =
            pools.iter().map(|pool| (vec![("pool", Label(&pool.pool))], i64::from(pool.paused))).collect();
        gauge(
            &mut encoder,
            "jobhost_pool_paused",
            "1 while the pool is paused (workers claim none of its jobs), else 0.",
            None,
            &paused,
        )?;
        let per_key = |value: fn(&FlowUsage) -> u64| -> Vec<_> {
            self.limits
                .iter()
                .map(|usage| {
                    (vec![("processor", Label(&usage.processor)), ("key", Label(&usage.key))], as_gauge(value(usage)))
                })
                .collect()
        };
        gauge(
            &mut encoder,
            "jobhost_flow_running",
            "Jobs running under a flow limit, by processor and key.",
            None,
            &per_key(|usage| usage.running),
        )?;
        gauge(
            &mut encoder,
            "jobhost_flow_held_back",
            "Ready jobs a flow limit keeps waiting for room, by processor and key.",
            None,
            &per_key(|usage| usage.held_back),
        )?;
        let mut age = encoder.encode_descriptor(
            "jobhost_oldest_ready_age",
            "How long the longest-waiting ready job has waited (0 when none is ready).",
            Some(&Unit::Seconds),
            MetricType::Gauge,
        )?;
        for pool in pools {
            let seconds = pool.oldest_ready_age_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
            ConstGauge::new(seconds).encode(age.encode_family(&[("pool", Label(&pool.pool))])?)?;
        }

        let mut workers = Vec::new();
        for (host, counts) in &self.status.hosts {
            let host = if host.is_empty() { "unknown" } else { host.as_str() };
            for (status, count) in counts.by_status() {
                workers.push((vec![("host", Label(host)), ("status", Label(status.as_str()))], as_gauge(count)));
            }
        }
        gauge(&mut encoder, "jobhost_workers", "Registered workers by host and status.", None, &workers)?;

        let activity = &self.activity;
        let attempts: Vec<_> = activity
            .attempts
            .iter()
            .map(|((pool, processor, outcome), count)| {
                (
                    vec![("pool", Label(pool)), ("processor", Label(processor)), ("outcome", Label(outcome.as_str()))],
                    *count,
                )
            })
            .collect();
        counter(&mut encoder, "jobhost_attempts", "Finished attempts by pool, processor and outcome.", &attempts)?;
        let enqueued: Vec<_> = activity
            .enqueued
            .iter()
            .map(|((pool, processor), count)| (vec![("pool", Label(pool)), ("processor", Label(processor))], *count))
            .collect();
        counter(&mut encoder, "jobhost_enqueued_jobs", "Jobs queued, by pool and processor.", &enqueued)?;
        // Every claim starts an attempt, which is either finished (and counted) or still held.
        // A pool whose jobs retention deleted has finished attempts still, and keeps its count.
        let mut claimed: BTreeMap<&str, u64> =
            activity.attempts.iter().map(|((pool, _, _), _)| (pool.as_str(), activity.attempts_in(pool))).collect();
        for pool in pools {
            *claimed.entry(&pool.pool).or_default() += pool.jobs.claimed;
        }
        let claims: Vec<_> = claimed.into_iter().map(|(pool, count)| (vec![("pool", Label(pool))], count)).collect();
        counter(&mut encoder, "jobhost_claims", "Jobs claimed by workers (attempts started), by pool.", &claims)?;

        for (name, help, unit, histograms, bounds, divisor) in [
            (
                "jobhost_attempt_duration",
                "Attempt wall-clock time.",
                Some(Unit::Seconds),
                &activity.durations,
                &DURATION_BOUNDS_MS[..],
                1000.0,
            ),
            (
                "jobhost_attempt_fuel",
                "Fuel (about one per wasm instruction) an attempt used.",
                None,
                &activity.fuel,
                &FUEL_BOUNDS[..],
                1.0,
            ),
        ] {
            let mut metric = encoder.encode_descriptor(name, help, unit.as_ref(), MetricType::Histogram)?;
            for ((pool, processor), histogram) in histograms.iter().filter(|(_, h)| h.count > 0) {
                let labels = [("pool", Label(pool)), ("processor", Label(processor))];
                let sum = histogram.sum as f64 / divisor;
                let mut points = histogram.points(bounds, divisor);
                // prometheus-client writes `le="+Inf"` for a last bound of f64::MAX only.
                if let Some(last) = points.last_mut() {
                    last.0 = f64::MAX;
                }
                metric.encode_family(&labels)?.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum,
                    histogram.count,
                    &points,
                    None,
                )?;
            }
        }

        counter(
            &mut encoder,
            "jobhost_server_store_queries",
            "Store operations (database round trips) this server process made.",
            &[(vec![], self.store_queries)],
        )?;
        gauge(
            &mut encoder,
            "jobhost_server_waiters",
            "Long-poll requests waiting now.",
            None,
            &[(vec![], as_gauge(self.waiters))],
        )?;
        counter(
            &mut encoder,
            "jobhost_server_processor_listings",
            "Processor listings this server made, loading every processor; a repeat with no file changed reuses the last.",
            &[(vec![], self.processor_listings)],
        )?;
        gauge(
            &mut encoder,
            "jobhost_server_connections",
            "HTTP connections open now, in a request or idle.",
            None,
            &[(vec![], as_gauge(self.connections.open as u64))],
        )?;
        gauge(
            &mut encoder,
            "jobhost_server_idle_connections",
            "HTTP connections open now between requests: the first closed to make room at serve.max_connections.",
            None,
            &[(vec![], as_gauge(self.connections.idle as u64))],
        )?;
        Ok(())
    }
}
