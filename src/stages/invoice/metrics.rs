//! The invoice stage's metrics (bumped only here, through these methods).

use prometheus::IntCounterVec;

use crate::contracts::{CommandKind, Invoice};

pub struct InvoiceMetrics {
    /// `meterline_postings_total{stage="invoice", type, kind}`.
    pub postings: IntCounterVec,
    /// `meterline_invoice_commands_total{kind, outcome}` (applied | duplicate).
    commands: IntCounterVec,
    /// `meterline_invoice_changes_total{status}`: versions published.
    changes: IntCounterVec,
}

impl InvoiceMetrics {
    pub fn new() -> Self {
        InvoiceMetrics {
            postings: crate::metrics::postings(),
            commands: crate::metrics::counter_vec(
                "meterline_invoice_commands_total",
                "Commands read from billing.commands, by kind and outcome (applied, duplicate).",
                &["kind", "outcome"],
            ),
            changes: crate::metrics::counter_vec(
                "meterline_invoice_changes_total",
                "Invoice versions published to finance.invoices, by the status they carry.",
                &["status"],
            ),
        }
    }

    pub fn applied(&self, kind: CommandKind) {
        self.commands
            .with_label_values(&[kind.as_str(), "applied"])
            .inc();
    }

    pub fn duplicate(&self, kind: CommandKind) {
        tracing::debug!(
            kind = kind.as_str(),
            "command already applied: nothing changed"
        );
        self.commands
            .with_label_values(&[kind.as_str(), "duplicate"])
            .inc();
    }

    pub fn invoice_changed(&self, doc: &Invoice) {
        self.changes.with_label_values(&[doc.status.as_str()]).inc();
    }
}
