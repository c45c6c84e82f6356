//! Internal events: one struct per thing that happens, whose `emit()` writes
//! one structured log line and bumps one metric, so logs and metrics never
//! disagree about what happened. Nothing else bumps a metric. Events on the
//! per-record path log at `trace` (off unless asked for).
//!
//! The runtime's events take the stage's [`StageMetrics`]; a stage's own
//! business events take the metric the stage registered.

use std::time::Duration;

use tracing::{debug, error, info, trace, warn};

use crate::metrics::StageMetrics;

pub struct RecordDeadLettered<'a> {
    pub stage: &'a str,
    pub reason: &'a str,
    pub message: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl RecordDeadLettered<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        debug!(
            stage = self.stage,
            reason = self.reason,
            partition = self.partition,
            offset = self.offset,
            message = self.message,
            "record dead-lettered"
        );
        m.dead_letters(self.reason).inc();
    }
}

pub struct TransactionCommitted<'a> {
    pub stage: &'a str,
    pub records: usize,
    pub elapsed: Duration,
    /// The time of each phase, in the order of
    /// [`crate::metrics::COMMIT_PHASES_IN_ORDER`].
    pub phases: [Duration; 4],
}

impl TransactionCommitted<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        debug!(
            stage = self.stage,
            records = self.records,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "transaction committed"
        );
        m.commits.inc();
        m.commit_latency.observe(self.elapsed.as_secs_f64());
        for (counter, phase) in m.commit_phases.iter().zip(self.phases) {
            counter.inc_by(phase.as_secs_f64());
        }
    }
}

pub struct TransactionAborted<'a> {
    pub stage: &'a str,
    pub cause: &'a str,
    pub error: &'a str,
}

impl TransactionAborted<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        warn!(
            stage = self.stage,
            cause = self.cause,
            error = self.error,
            "transaction aborted; rewinding to the last commit"
        );
        m.aborts(self.cause).inc();
    }
}

pub struct PartitionsAssigned<'a> {
    pub stage: &'a str,
    pub partitions: &'a [i32],
    pub total: usize,
}

impl PartitionsAssigned<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        info!(stage = self.stage, partitions = ?self.partitions, "partitions assigned");
        m.assigned_partitions.set(self.total as i64);
    }
}

pub struct PartitionsRevoked<'a> {
    pub stage: &'a str,
    pub partitions: &'a [i32],
    pub lost: bool,
    pub total: usize,
}

impl PartitionsRevoked<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        if self.lost {
            warn!(stage = self.stage, partitions = ?self.partitions, "partitions lost");
        } else {
            info!(stage = self.stage, partitions = ?self.partitions, "partitions revoked");
        }
        m.assigned_partitions.set(self.total as i64);
    }
}

pub struct StoreRestored<'a> {
    pub stage: &'a str,
    pub store: &'a str,
    pub partition: i32,
    pub records: u64,
    pub from_offset: i64,
    pub elapsed: Duration,
}

impl StoreRestored<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        info!(
            stage = self.stage,
            store = self.store,
            partition = self.partition,
            records = self.records,
            from_offset = self.from_offset,
            elapsed_ms = self.elapsed.as_millis() as u64,
            "store restored from changelog"
        );
        m.restored_records.inc_by(self.records);
    }
}

pub struct StageFailed<'a> {
    pub stage: &'a str,
    pub error: &'a str,
}

impl StageFailed<'_> {
    pub fn emit(&self) {
        error!(
            stage = self.stage,
            error = self.error,
            "stage stopped on a fatal error"
        );
    }
}

pub struct DuplicateDropped<'a> {
    pub source: &'a str,
    pub id: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl DuplicateDropped<'_> {
    pub fn emit(&self, counter: &prometheus::IntCounter) {
        debug!(
            source = self.source,
            id = self.id,
            partition = self.partition,
            offset = self.offset,
            "duplicate dropped"
        );
        counter.inc();
    }
}

/// An input record went through the processor (whatever the outcome).
pub struct RecordProcessed<'a> {
    pub stage: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl RecordProcessed<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        trace!(
            stage = self.stage,
            partition = self.partition,
            offset = self.offset,
            "record processed"
        );
        m.records_in.inc();
    }
}

/// A record was sent to an output topic (committed or not).
pub struct RecordWritten<'a> {
    pub stage: &'a str,
    pub topic: &'a str,
    /// Key and value.
    pub bytes: u64,
}

impl RecordWritten<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        trace!(
            stage = self.stage,
            topic = self.topic,
            bytes = self.bytes,
            "record written"
        );
        m.records_out(self.topic).inc();
        m.records_out_bytes(self.topic).inc_by(self.bytes);
    }
}

/// An input partition's stores were closed (revoked or lost): its lag is
/// no longer this instance's to report.
pub struct PartitionClosed<'a> {
    pub stage: &'a str,
    pub partition: i32,
}

impl PartitionClosed<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        debug!(
            stage = self.stage,
            partition = self.partition,
            "partition closed"
        );
        m.consumer_lag(&self.partition.to_string()).set(0);
    }
}

/// The consumer lag of one input partition, as last measured.
pub struct ConsumerLagMeasured<'a> {
    pub stage: &'a str,
    pub partition: &'a str,
    pub lag: i64,
}

impl ConsumerLagMeasured<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        trace!(
            stage = self.stage,
            partition = self.partition,
            lag = self.lag,
            "consumer lag measured"
        );
        m.consumer_lag(self.partition).set(self.lag);
    }
}

/// The bytes of input a stage's consumer has fetched ahead and not yet
/// handed to the stage (librdkafka statistics).
pub struct ConsumerQueueMeasured<'a> {
    pub stage: &'a str,
    pub bytes: u64,
}

impl ConsumerQueueMeasured<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        trace!(
            stage = self.stage,
            bytes = self.bytes,
            "consumer queue measured"
        );
        m.consumer_queue.set(saturating_i64(self.bytes));
    }
}

/// One transaction's writes of a store sent to its changelog.
pub struct ChangelogSent<'a> {
    pub stage: &'a str,
    pub store: &'a str,
    pub records: u64,
    /// Keys and values of those records.
    pub bytes: u64,
}

impl ChangelogSent<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        if self.records == 0 {
            return;
        }
        trace!(
            stage = self.stage,
            store = self.store,
            records = self.records,
            bytes = self.bytes,
            "changelog records sent"
        );
        m.changelog_records(self.store).inc_by(self.records);
        m.changelog_bytes(self.store).inc_by(self.bytes);
    }
}

/// The approximate key count of one store of one partition.
pub struct StoreKeysMeasured<'a> {
    pub stage: &'a str,
    pub store: &'a str,
    pub partition: &'a str,
    pub keys: i64,
}

impl StoreKeysMeasured<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        trace!(
            stage = self.stage,
            store = self.store,
            partition = self.partition,
            keys = self.keys,
            "store keys measured"
        );
        m.store_keys(self.store, self.partition).set(self.keys);
    }
}

/// The process's store memory (every stage of it shares one budget).
pub struct StoreMemoryMeasured {
    /// The stage measuring; the cache is the process's, the table readers
    /// are its own databases'.
    pub stage: &'static str,
    pub block_cache_bytes: usize,
    pub memtable_bytes: usize,
    /// Summed over the stage's databases, outside the cache.
    pub table_reader_bytes: u64,
}

/// Table-reader bytes per stage of the process: the gauge is per process,
/// and a process may run several stages.
static TABLE_READER_BYTES: std::sync::LazyLock<
    std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
> = std::sync::LazyLock::new(Default::default);

impl StoreMemoryMeasured {
    pub fn emit(&self) {
        trace!(
            stage = self.stage,
            block_cache_bytes = self.block_cache_bytes,
            memtable_bytes = self.memtable_bytes,
            table_reader_bytes = self.table_reader_bytes,
            "store memory measured"
        );
        let set = |kind: &str, v: i64| crate::metrics::store_memory(kind).set(v);
        set("block_cache", saturating_i64(self.block_cache_bytes));
        set("memtables", saturating_i64(self.memtable_bytes));
        let process_bytes: u64 = {
            // A poisoned lock only means a panic elsewhere: the map is whole.
            let mut per_stage = TABLE_READER_BYTES.lock().unwrap_or_else(|e| e.into_inner());
            per_stage.insert(self.stage, self.table_reader_bytes);
            per_stage.values().sum()
        };
        set("table_readers", saturating_i64(process_bytes));
    }
}

/// The process's glibc heap (see `runtime::heap`).
pub struct NativeHeapMeasured {
    pub in_use_bytes: usize,
    pub free_bytes: usize,
}

impl NativeHeapMeasured {
    pub fn emit(&self) {
        trace!(
            in_use_bytes = self.in_use_bytes,
            free_bytes = self.free_bytes,
            "native heap measured"
        );
        let set = |state: &str, v: usize| crate::metrics::native_heap(state).set(saturating_i64(v));
        set("in_use", self.in_use_bytes);
        set("free", self.free_bytes);
    }
}

/// A byte count as a gauge value (i64::MAX past it).
fn saturating_i64(v: impl TryInto<i64>) -> i64 {
    v.try_into().unwrap_or(i64::MAX)
}

/// Wall clock minus the event time of the record in hand (post: minus the
/// end of the window posted), whole seconds.
pub struct EventTimeLagMeasured<'a> {
    pub stage: &'a str,
    pub lag_s: i64,
}

impl EventTimeLagMeasured<'_> {
    /// `gauge`: the stage's `meterline_event_time_lag_seconds{stage}`
    /// ([`crate::metrics::event_time_lag`]).
    pub fn emit(&self, gauge: &prometheus::IntGauge) {
        trace!(
            stage = self.stage,
            lag_s = self.lag_s,
            "event-time lag measured"
        );
        gauge.set(self.lag_s);
    }
}

/// post or invoice: one posting emitted to finance.postings (committed or not).
pub struct PostingEmitted<'a> {
    pub stage: &'a str,
    pub posting_type: &'a str,
    pub kind: &'a str,
    pub idempotency_key: &'a str,
}

impl PostingEmitted<'_> {
    /// `counter`: `meterline_postings_total{stage, type, kind}`.
    pub fn emit(&self, counter: &prometheus::IntCounterVec) {
        trace!(
            stage = self.stage,
            posting_type = self.posting_type,
            kind = self.kind,
            idempotency_key = self.idempotency_key,
            "posting emitted"
        );
        counter
            .with_label_values(&[self.stage, self.posting_type, self.kind])
            .inc();
    }
}

/// aggregate: the open billing-period windows of one currency and legal
/// entity, summed over this instance's partitions.
pub struct UnbilledMeasured<'a> {
    pub currency: &'a str,
    pub legal_entity: &'a str,
    pub amount: f64,
    pub lines: i64,
}

impl UnbilledMeasured<'_> {
    /// `amount`: `meterline_aggregate_unbilled_amount` (None if the registry
    /// refused it); `lines`: `meterline_aggregate_invoice_lines_pending`.
    pub fn emit(&self, amount: Option<&prometheus::GaugeVec>, lines: &prometheus::IntGaugeVec) {
        trace!(
            currency = self.currency,
            legal_entity = self.legal_entity,
            amount = self.amount,
            lines = self.lines,
            "unbilled usage measured"
        );
        let labels = [self.currency, self.legal_entity];
        if let Some(g) = amount {
            g.with_label_values(&labels).set(self.amount);
        }
        lines.with_label_values(&labels).set(self.lines);
    }
}

/// aggregate: billing periods left without a period close on this instance
/// because their customer or plan version is missing from the reference
/// tables.
pub struct PeriodsWaitingMeasured {
    pub periods: i64,
}

impl PeriodsWaitingMeasured {
    /// `meterline_aggregate_periods_waiting_for_reference_data`.
    pub fn emit(&self, gauge: &prometheus::IntGauge) {
        trace!(
            periods = self.periods,
            "periods waiting for reference data measured"
        );
        gauge.set(self.periods);
    }
}

/// enrich: the parked events of one park reason on this instance.
pub struct ParkedMeasured<'a> {
    pub reason: &'a str,
    pub events: i64,
    pub oldest_age_s: i64,
}

impl ParkedMeasured<'_> {
    /// `events`: `meterline_enrich_parked_events`; `oldest_age`:
    /// `meterline_enrich_parked_oldest_age_seconds`.
    pub fn emit(&self, events: &prometheus::IntGaugeVec, oldest_age: &prometheus::IntGaugeVec) {
        trace!(
            reason = self.reason,
            events = self.events,
            oldest_age_s = self.oldest_age_s,
            "parked events measured"
        );
        events.with_label_values(&[self.reason]).set(self.events);
        oldest_age
            .with_label_values(&[self.reason])
            .set(self.oldest_age_s);
    }
}

/// enrich: the list price of the parked events of one currency and legal
/// entity on this instance.
pub struct RevenueAtRiskMeasured<'a> {
    pub currency: &'a str,
    pub legal_entity: &'a str,
    pub amount: f64,
}

impl RevenueAtRiskMeasured<'_> {
    /// `gauge`: `meterline_enrich_revenue_at_risk`.
    pub fn emit(&self, gauge: &prometheus::GaugeVec) {
        trace!(
            currency = self.currency,
            legal_entity = self.legal_entity,
            amount = self.amount,
            "revenue at risk measured"
        );
        gauge
            .with_label_values(&[self.currency, self.legal_entity])
            .set(self.amount);
    }
}
