//! Prometheus metrics, one registry per process, served on `/metrics`.
//!
//! Names follow `meterline_<stage>_<noun>_<unit>[_total]`. The stage runtime
//! registers the same set for every stage it runs ([`StageMetrics`]); a stage
//! registers its own domain counters beside them. Metrics are only ever bumped
//! through the internal events in [`crate::internal_events`], so each log line
//! and its counter stay together.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The process-wide registry.
pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Commit latency buckets, seconds: 1 ms .. 10 s.
const COMMIT_LATENCY_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Renders every registered metric in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = encoder.encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

fn register<T: prometheus::core::Collector + Clone + 'static>(c: T) -> T {
    // A second registration of the same name (two runtimes of one stage in
    // tests) is refused by the registry; the first one keeps serving.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

/// Metric names and label sets are built from compile-time stage and noun
/// names; an invalid one is a programming error, caught by the first test
/// that builds the stage's metrics.
fn valid<T>(made: prometheus::Result<T>, name: &str) -> T {
    match made {
        Ok(m) => m,
        Err(e) => panic!("metric {name} is invalid: {e}"),
    }
}

pub fn counter(name: &str, help: &str) -> IntCounter {
    register(valid(IntCounter::new(name, help), name))
}

pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(valid(
        IntCounterVec::new(Opts::new(name, help), labels),
        name,
    ))
}

pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(valid(IntGaugeVec::new(Opts::new(name, help), labels), name))
}

pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(valid(IntGauge::new(name, help), name))
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(valid(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())),
        name,
    ))
}

/// The metrics every stage has.
#[derive(Clone)]
pub struct StageMetrics {
    pub records_in: IntCounter,
    pub records_out: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub commits: IntCounter,
    pub aborts: IntCounterVec,
    pub commit_latency: Histogram,
    pub consumer_lag: IntGaugeVec,
    pub store_keys: IntGaugeVec,
    pub assigned_partitions: IntGauge,
    pub restored_records: IntCounter,
}

impl StageMetrics {
    pub fn new(stage: &str) -> Self {
        let n = |noun: &str| format!("meterline_{stage}_{noun}");
        StageMetrics {
            records_in: counter(
                &n("records_in_total"),
                "Input records processed (committed or not).",
            ),
            records_out: counter_vec(
                &n("records_out_total"),
                "Records written, by topic.",
                &["topic"],
            ),
            dead_letters: counter_vec(
                &n("dead_letters_total"),
                "Records sent to the dead-letter topic, by reason code.",
                &["reason"],
            ),
            commits: counter(
                &n("transaction_commits_total"),
                "Kafka transactions committed.",
            ),
            aborts: counter_vec(
                &n("transaction_aborts_total"),
                "Kafka transactions aborted, by cause.",
                &["cause"],
            ),
            commit_latency: histogram(
                &n("transaction_commit_latency_seconds"),
                "Time to flush, send offsets and commit one transaction.",
                COMMIT_LATENCY_BUCKETS_S,
            ),
            consumer_lag: gauge_vec(
                &n("consumer_lag_records"),
                "Records between the committed position and the end of each input partition.",
                &["partition"],
            ),
            store_keys: gauge_vec(
                &n("store_keys"),
                "Approximate keys per store and partition.",
                &["store", "partition"],
            ),
            assigned_partitions: gauge(
                &n("assigned_partitions"),
                "Input partitions assigned to this instance.",
            ),
            restored_records: counter(
                &n("restored_records_total"),
                "Changelog records replayed into stores.",
            ),
        }
    }
}
