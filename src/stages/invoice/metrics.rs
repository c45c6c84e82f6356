//! The invoice stage's metrics (bumped only here, through internal events):
//! commands and invoice versions counted as they happen, and gauges of what
//! waits (approvals, disputes, service credits) measured from the store
//! every [`GAUGES_INTERVAL_MS`] per partition.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::{GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::contracts::{CommandKind, Invoice};

/// How often a partition's waiting invoices and balances are summed.
pub const GAUGES_INTERVAL_MS: i64 = 10_000;
/// Most entries of each kind read per partition for the gauges.
pub const GAUGES_SCAN_MAX: usize = 100_000;

/// What one partition's store holds, summed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PartitionGauges {
    /// (currency, legal entity) -> (invoices waiting for approval, their gross).
    pub pending: BTreeMap<(String, String), (i64, Decimal)>,
    /// Wall clock at which the oldest waiting invoice started waiting.
    pub oldest_pending_since_ms: Option<i64>,
    /// (currency, legal entity) -> open disputes.
    pub disputed: BTreeMap<(String, String), Decimal>,
    /// Currency -> service credits not drawn yet.
    pub credit_balance: BTreeMap<String, Decimal>,
}

fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> Option<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels).ok()?;
    // Refused when already registered (two processors in one test binary);
    // the first one keeps serving.
    let _ = crate::metrics::REGISTRY.register(Box::new(g.clone()));
    Some(g)
}

fn float_counter_vec(name: &str, help: &str, labels: &[&str]) -> Option<prometheus::CounterVec> {
    let c = prometheus::CounterVec::new(Opts::new(name, help), labels).ok()?;
    let _ = crate::metrics::REGISTRY.register(Box::new(c.clone()));
    Some(c)
}

pub struct InvoiceMetrics {
    /// `meterline_postings_total{stage="invoice", type, kind}`.
    pub postings: IntCounterVec,
    /// `meterline_invoice_commands_total{kind, outcome}` (applied | duplicate).
    commands: IntCounterVec,
    /// `meterline_invoice_changes_total{status}`: versions published.
    changes: IntCounterVec,
    /// `meterline_invoices_total{status, currency, legal_entity}`: invoices
    /// reaching each status.
    reached: IntCounterVec,
    /// `meterline_invoice_amount_total{status, currency, legal_entity}`:
    /// their totals when they reached it.
    reached_amount: Option<prometheus::CounterVec>,
    pending: IntGaugeVec,
    pending_amount: Option<GaugeVec>,
    oldest_pending_age: IntGauge,
    disputed: Option<GaugeVec>,
    credit_balance: Option<GaugeVec>,
    /// Label sets shown so far (set to 0 when they empty).
    seen_pairs: BTreeSet<(String, String)>,
    seen_currencies: BTreeSet<String>,
}

impl InvoiceMetrics {
    pub fn new() -> Self {
        let pair = &["currency", "legal_entity"];
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
            reached: crate::metrics::counter_vec(
                "meterline_invoices_total",
                "Invoices that reached a status (draft, pending_approval, approved, posted, voided), by currency and legal entity.",
                &["status", "currency", "legal_entity"],
            ),
            reached_amount: float_counter_vec(
                "meterline_invoice_amount_total",
                "Totals of the invoices that reached a status, at that moment, by currency and legal entity.",
                &["status", "currency", "legal_entity"],
            ),
            pending: crate::metrics::gauge_vec(
                "meterline_invoices_pending_approval",
                "Invoices waiting for approval, by currency and legal entity.",
                pair,
            ),
            pending_amount: float_gauge_vec(
                "meterline_invoice_pending_approval_amount",
                "Gross of the invoices waiting for approval, by currency and legal entity.",
                pair,
            ),
            oldest_pending_age: crate::metrics::gauge(
                "meterline_invoice_pending_approval_oldest_age_seconds",
                "Seconds the oldest invoice waiting for approval on this instance has waited (0: none).",
            ),
            disputed: float_gauge_vec(
                "meterline_invoice_open_disputes_amount",
                "Amount under open disputes (disputed receivable), by currency and legal entity.",
                pair,
            ),
            credit_balance: float_gauge_vec(
                "meterline_invoice_credit_balance",
                "Service credits granted and not yet drawn (nor expired at the last draw), by currency.",
                &["currency"],
            ),
            seen_pairs: BTreeSet::new(),
            seen_currencies: BTreeSet::new(),
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

    /// A new version of `doc`, whose history had `before` entries: each
    /// status it reached since (approved, then posted, in one change) is
    /// counted with the invoice's total.
    pub fn invoice_changed(&self, doc: &Invoice, before: usize) {
        tracing::debug!(
            invoice = doc.invoice_id.as_str(),
            version = doc.version,
            status = doc.status.as_str(),
            "invoice changed"
        );
        self.changes.with_label_values(&[doc.status.as_str()]).inc();
        let mut previous = before
            .checked_sub(1)
            .and_then(|i| doc.history.get(i))
            .map(|c| c.status);
        for c in doc.history.iter().skip(before) {
            if Some(c.status) == previous {
                continue;
            }
            previous = Some(c.status);
            let labels = [
                c.status.as_str(),
                doc.currency.as_str(),
                doc.legal_entity.as_str(),
            ];
            self.reached.with_label_values(&labels).inc();
            if let Some(a) = &self.reached_amount {
                a.with_label_values(&labels)
                    .inc_by(doc.totals.total.to_f64().unwrap_or(0.0).max(0.0));
            }
        }
    }

    /// Sets the gauges to the sum over this instance's partitions.
    pub fn measured(&mut self, parts: &BTreeMap<i32, (i64, PartitionGauges)>, now_ms: i64) {
        let mut all = PartitionGauges::default();
        for (_, p) in parts.values() {
            for (k, (n, a)) in &p.pending {
                let e = all.pending.entry(k.clone()).or_default();
                e.0 += n;
                e.1 += a;
            }
            for (k, a) in &p.disputed {
                *all.disputed.entry(k.clone()).or_default() += a;
            }
            for (k, a) in &p.credit_balance {
                *all.credit_balance.entry(k.clone()).or_default() += a;
            }
            all.oldest_pending_since_ms =
                match (all.oldest_pending_since_ms, p.oldest_pending_since_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
        }
        tracing::trace!(?all, "invoice gauges measured");
        self.seen_pairs.extend(all.pending.keys().cloned());
        self.seen_pairs.extend(all.disputed.keys().cloned());
        self.seen_currencies
            .extend(all.credit_balance.keys().cloned());
        let f = |d: Option<&Decimal>| d.and_then(Decimal::to_f64).unwrap_or(0.0);
        for key in &self.seen_pairs {
            let labels = [key.0.as_str(), key.1.as_str()];
            let (n, amount) = all.pending.get(key).copied().unwrap_or_default();
            self.pending.with_label_values(&labels).set(n);
            if let Some(g) = &self.pending_amount {
                g.with_label_values(&labels).set(f(Some(&amount)));
            }
            if let Some(g) = &self.disputed {
                g.with_label_values(&labels).set(f(all.disputed.get(key)));
            }
        }
        if let Some(g) = &self.credit_balance {
            for c in &self.seen_currencies {
                g.with_label_values(&[c.as_str()])
                    .set(f(all.credit_balance.get(c)));
            }
        }
        let age_s = all
            .oldest_pending_since_ms
            .map(|since| (now_ms - since).max(0) / 1_000)
            .unwrap_or(0);
        self.oldest_pending_age.set(age_s);
    }
}
