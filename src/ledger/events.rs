//! ledger-sync's internal events: each writes one log line and bumps one
//! metric (see [`crate::internal_events`]). The stage-wide series carry
//! `stage="ledger"`; the ledger's own are `meterline_ledger_*`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge};
use tracing::{debug, info, warn};

use crate::ledger::write::Outcome;
use crate::metrics::{counter_vec, gauge, StageMetrics};
use crate::topology::names;

static OUTCOMES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_ledger_records_total",
        "Records ledger-sync committed to the general ledger, by input topic and outcome (accepted, duplicate, rejected, conflict, invoice_stored, invoice_stale, tombstone).",
        &["topic", "outcome"],
    )
});
static DB_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "meterline_ledger_db_errors_total",
        "Database failures of ledger-sync (the batch is retried with backoff), by kind: connect, batch, outbox, fenced.",
        &["kind"],
    )
});
static DB_UP: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "meterline_ledger_db_up",
        "1 while ledger-sync's last database call succeeded, 0 while it retries.",
    )
});

/// An error with its sources (`postgres::Error` says only "db error"
/// itself; the server's message is its source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The stage-wide metrics of ledger-sync.
pub fn stage_metrics() -> StageMetrics {
    StageMetrics::new(names::LEDGER)
}

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Accepted(_) => "accepted",
        Outcome::Duplicate(_) => "duplicate",
        Outcome::Rejected { .. } => "rejected",
        Outcome::Conflict(_) => "conflict",
        Outcome::InvoiceStored => "invoice_stored",
        Outcome::InvoiceStale => "invoice_stale",
        Outcome::Tombstone => "tombstone",
    }
}

/// A batch committed to the ledger.
pub struct BatchCommitted<'a> {
    /// (logical topic, outcome) per record.
    pub outcomes: &'a [(&'a str, Outcome)],
    pub elapsed: Duration,
}

impl BatchCommitted<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        for (topic, o) in self.outcomes {
            OUTCOMES.with_label_values(&[topic, outcome_label(o)]).inc();
            if let Outcome::Rejected { reason } = o {
                m.dead_letters(reason).inc();
            }
            if let Outcome::Conflict(_) = o {
                m.dead_letters(crate::ledger::reason::IDEMPOTENCY_CONFLICT)
                    .inc();
            }
        }
        m.records_in.inc_by(self.outcomes.len() as u64);
        m.commits.inc();
        m.commit_latency.observe(self.elapsed.as_secs_f64());
        DB_UP.set(1);
        debug!(
            stage = names::LEDGER,
            records = self.outcomes.len(),
            elapsed_ms = self.elapsed.as_millis() as u64,
            "ledger batch committed"
        );
    }
}

/// A database call failed; what was in hand is retried after `backoff`.
pub struct DatabaseFailed<'a> {
    /// connect | batch | outbox | fenced
    pub kind: &'static str,
    pub error: &'a str,
    pub backoff: Duration,
}

impl DatabaseFailed<'_> {
    pub fn emit(&self, m: &StageMetrics) {
        warn!(
            stage = names::LEDGER,
            kind = self.kind,
            error = self.error,
            retry_in_ms = self.backoff.as_millis() as u64,
            "ledger database call failed; retrying"
        );
        DB_ERRORS.with_label_values(&[self.kind]).inc();
        m.aborts(self.kind).inc();
        // An outbox failure may be Kafka's; a fenced batch is no failure of
        // the database.
        if matches!(self.kind, "connect" | "batch") {
            DB_UP.set(0);
        }
    }
}

/// Connected and migrated.
pub struct DatabaseReady<'a> {
    pub schema: &'a str,
    pub version: i32,
}

impl DatabaseReady<'_> {
    pub fn emit(&self) {
        info!(
            stage = names::LEDGER,
            schema = self.schema,
            version = self.version,
            "ledger database ready"
        );
        DB_UP.set(1);
    }
}

/// Partitions assigned to this instance (positions read from the ledger).
pub struct PartitionsPositioned<'a> {
    pub positions: &'a [(String, i32, Option<i64>)],
}

impl PartitionsPositioned<'_> {
    pub fn emit(&self, m: &StageMetrics, total: usize) {
        info!(
            stage = names::LEDGER,
            partitions = ?self.positions,
            total,
            "partitions positioned at the ledger's offsets"
        );
        m.assigned_partitions.set(total as i64);
    }
}
