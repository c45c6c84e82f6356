//! Prometheus metrics, one registry per process, served on `/metrics`.
//!
//! Names follow `meterline_<noun>_<unit>[_total]`. What every stage has
//! (records in and out, dead letters, transactions, consumer lag, store keys,
//! partitions, restores, event-time lag) is one metric per noun for the whole
//! process with a `stage` label (`meterline_records_in_total{stage="validate"}`):
//! the runtime binds it to its stage in [`StageMetrics`]. A stage registers
//! its own business metrics beside them, named after the stage
//! (`meterline_enrich_parked_events`, `meterline_invoice_commands_total`); the
//! postings both post and invoice emit are one `meterline_postings_total`
//! with a `stage` label.
//! Metrics are only ever bumped through the internal events in
//! [`crate::internal_events`], so each log line and its counter stay together.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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
#[allow(clippy::panic)] // deliberately: see above
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

// One family per noun for the process, registered the first time a stage
// asks for it.
static RECORDS_IN: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_records_in_total",
        "Input records processed (committed or not), by stage.",
        &["stage"],
    )
});
static RECORDS_OUT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_records_out_total",
        "Records written, by stage and topic.",
        &["stage", "topic"],
    )
});
static RECORDS_OUT_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_records_out_bytes_total",
        "Key and value bytes of the records written (committed or not), by stage and topic.",
        &["stage", "topic"],
    )
});
static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_dead_letters_total",
        "Records sent to the dead-letter topic, by stage and reason code.",
        &["stage", "reason"],
    )
});
static COMMITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_transaction_commits_total",
        "Kafka transactions committed, by stage.",
        &["stage"],
    )
});
static ABORTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_transaction_aborts_total",
        "Kafka transactions aborted, by stage and cause.",
        &["stage", "cause"],
    )
});
static COMMIT_LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(valid(
        HistogramVec::new(
            HistogramOpts::new(
                "meterline_transaction_commit_latency_seconds",
                "Time to flush, send offsets and commit one transaction, by stage.",
            )
            .buckets(COMMIT_LATENCY_BUCKETS_S.to_vec()),
            &["stage"],
        ),
        "meterline_transaction_commit_latency_seconds",
    ))
});
static COMMIT_PHASES: LazyLock<prometheus::CounterVec> = LazyLock::new(|| {
    register(valid(
        prometheus::CounterVec::new(
            Opts::new(
                "meterline_transaction_commit_phase_seconds_total",
                "Seconds spent committing transactions, by stage and phase \
                 (send_changelogs, flush, commit, apply_stores).",
            ),
            &["stage", "phase"],
        ),
        "meterline_transaction_commit_phase_seconds_total",
    ))
});
/// The phases of a commit, in order (`meterline_transaction_commit_phase_seconds_total`).
pub const COMMIT_PHASES_IN_ORDER: [&str; 4] =
    ["send_changelogs", "flush", "commit", "apply_stores"];
static CONSUMER_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterline_consumer_lag_records",
        "Records between the committed position and the end of each input partition, by stage.",
        &["stage", "partition"],
    )
});
static CONSUMER_QUEUE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterline_consumer_queue_bytes",
        "Input records fetched ahead and not yet processed, bytes, by stage: librdkafka's consumer queue (bounded by its queued.max.messages.kbytes, 64 MiB unless set in [kafka.consumer]), from its statistics.",
        &["stage"],
    )
});
static CHANGELOG_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_changelog_records_total",
        "Store writes sent to changelog topics (one record per key written in a transaction, committed or not), by stage and store.",
        &["stage", "store"],
    )
});
static CHANGELOG_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_changelog_bytes_total",
        "Key and value bytes of the changelog records sent (committed or not), by stage and store.",
        &["stage", "store"],
    )
});
static STORE_KEYS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterline_store_keys",
        "Approximate keys per store and partition, by stage.",
        &["stage", "store", "partition"],
    )
});
static ASSIGNED_PARTITIONS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterline_assigned_partitions",
        "Input partitions assigned to this instance, by stage.",
        &["stage"],
    )
});
static RESTORED_RECORDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_restored_records_total",
        "Changelog records replayed into stores, by stage.",
        &["stage"],
    )
});
static EVENT_TIME_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterline_event_time_lag_seconds",
        "Wall clock minus the event time of the last record processed (post: minus the end of the last window posted), by stage.",
        &["stage"],
    )
});

/// `meterline_event_time_lag_seconds{stage}`: a stage processor sets it
/// (through [`crate::internal_events::EventTimeLagMeasured`]) from the
/// event time of the record in hand.
pub fn event_time_lag(stage: &str) -> IntGauge {
    EVENT_TIME_LAG.with_label_values(&[stage])
}

static STORE_MEMORY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterline_store_memory_bytes",
        "Memory of the process's RocksDB stores: kind block_cache is the shared cache in use including the memtables charged to it (runtime.store_memory_mb bounds it), kind memtables the memtables alone, kind table_readers what the open SST files hold outside the cache (grows with the files on disk).",
        &["kind"],
    )
});

/// `meterline_store_memory_bytes{kind}`, set through
/// [`crate::internal_events::StoreMemoryMeasured`].
pub fn store_memory(kind: &str) -> IntGauge {
    STORE_MEMORY.with_label_values(&[kind])
}

static NATIVE_HEAP: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "meterline_native_heap_bytes",
        "The process's glibc heap, which holds RocksDB's and librdkafka's allocations (Rust's go to mimalloc): state in_use is allocated, state free is freed but kept in glibc's arenas (fragmentation when it grows).",
        &["state"],
    )
});

/// `meterline_native_heap_bytes{state}`, set through
/// [`crate::internal_events::NativeHeapMeasured`].
pub fn native_heap(state: &str) -> IntGauge {
    NATIVE_HEAP.with_label_values(&[state])
}

static POSTINGS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_postings_total",
        "Postings emitted to finance.postings (committed or not), by the stage that made them (post: accruals and control totals; invoice: what an approval, credit or dispute posts), posting type and kind.",
        &["stage", "type", "kind"],
    )
});

/// `meterline_postings_total{stage, type, kind}`, bumped through
/// [`crate::internal_events::PostingEmitted`].
pub fn postings() -> IntCounterVec {
    POSTINGS.clone()
}

/// The metrics every stage has, bound to one stage's `stage` label. Two
/// runtimes of one stage in one process (tests) share the same series.
#[derive(Clone)]
pub struct StageMetrics {
    stage: String,
    pub records_in: IntCounter,
    pub commits: IntCounter,
    pub commit_latency: Histogram,
    /// Seconds per phase, in the order of [`COMMIT_PHASES_IN_ORDER`].
    pub commit_phases: [prometheus::Counter; 4],
    pub assigned_partitions: IntGauge,
    pub restored_records: IntCounter,
    pub consumer_queue: IntGauge,
}

impl StageMetrics {
    pub fn new(stage: &str) -> Self {
        let s = [stage];
        StageMetrics {
            stage: stage.to_string(),
            records_in: RECORDS_IN.with_label_values(&s),
            commits: COMMITS.with_label_values(&s),
            commit_latency: COMMIT_LATENCY.with_label_values(&s),
            commit_phases: COMMIT_PHASES_IN_ORDER
                .map(|phase| COMMIT_PHASES.with_label_values(&[stage, phase])),
            assigned_partitions: ASSIGNED_PARTITIONS.with_label_values(&s),
            restored_records: RESTORED_RECORDS.with_label_values(&s),
            consumer_queue: CONSUMER_QUEUE.with_label_values(&s),
        }
    }

    pub fn records_out(&self, topic: &str) -> IntCounter {
        RECORDS_OUT.with_label_values(&[self.stage.as_str(), topic])
    }

    pub fn records_out_bytes(&self, topic: &str) -> IntCounter {
        RECORDS_OUT_BYTES.with_label_values(&[self.stage.as_str(), topic])
    }

    pub fn dead_letters(&self, reason: &str) -> IntCounter {
        DEAD_LETTERS.with_label_values(&[self.stage.as_str(), reason])
    }

    pub fn aborts(&self, cause: &str) -> IntCounter {
        ABORTS.with_label_values(&[self.stage.as_str(), cause])
    }

    pub fn consumer_lag(&self, partition: &str) -> IntGauge {
        CONSUMER_LAG.with_label_values(&[self.stage.as_str(), partition])
    }

    pub fn changelog_records(&self, store: &str) -> IntCounter {
        CHANGELOG_RECORDS.with_label_values(&[self.stage.as_str(), store])
    }

    pub fn changelog_bytes(&self, store: &str) -> IntCounter {
        CHANGELOG_BYTES.with_label_values(&[self.stage.as_str(), store])
    }

    pub fn store_keys(&self, store: &str, partition: &str) -> IntGauge {
        STORE_KEYS.with_label_values(&[self.stage.as_str(), store, partition])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_metrics_share_one_name_per_noun_with_a_stage_label() {
        let a = StageMetrics::new("metrics_test_a");
        let b = StageMetrics::new("metrics_test_b");
        a.records_in.inc();
        b.records_in.inc_by(2);
        a.records_out("t").inc();
        b.store_keys("s", "0").set(7);
        b.changelog_records("s").inc_by(4);
        b.changelog_bytes("s").inc_by(40);
        a.records_out_bytes("t").inc_by(9);
        b.commit_latency.observe(0.002);
        b.commit_phases[1].inc_by(0.25);
        event_time_lag("metrics_test_a").set(3);
        let text = render();
        for line in [
            "meterline_records_in_total{stage=\"metrics_test_a\"} 1",
            "meterline_records_in_total{stage=\"metrics_test_b\"} 2",
            "meterline_records_out_total{stage=\"metrics_test_a\",topic=\"t\"} 1",
            "meterline_store_keys{partition=\"0\",stage=\"metrics_test_b\",store=\"s\"} 7",
            "meterline_changelog_records_total{stage=\"metrics_test_b\",store=\"s\"} 4",
            "meterline_changelog_bytes_total{stage=\"metrics_test_b\",store=\"s\"} 40",
            "meterline_records_out_bytes_total{stage=\"metrics_test_a\",topic=\"t\"} 9",
            "meterline_transaction_commit_latency_seconds_count{stage=\"metrics_test_b\"} 1",
            "meterline_transaction_commit_phase_seconds_total{phase=\"flush\",stage=\"metrics_test_b\"} 0.25",
            "meterline_transaction_commit_phase_seconds_total{phase=\"apply_stores\",stage=\"metrics_test_b\"} 0",
            "meterline_event_time_lag_seconds{stage=\"metrics_test_a\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
        assert!(!text.contains("meterline_metrics_test_a_"), "{text}");
    }
}
