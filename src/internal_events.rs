//! Internal events: one struct per thing that happens, whose `emit()` writes
//! one structured log line and bumps one metric, so logs and metrics never
//! disagree about what happened.

use std::time::Duration;

use tracing::{debug, error, info, warn};

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
        m.dead_letters.with_label_values(&[self.reason]).inc();
    }
}

pub struct TransactionCommitted<'a> {
    pub stage: &'a str,
    pub records: usize,
    pub elapsed: Duration,
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
        m.aborts.with_label_values(&[self.cause]).inc();
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
