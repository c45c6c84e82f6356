//! What reconcile read ([`Facts`]) and how it names windows.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::contracts::Posting;
use crate::contracts::{ClosedWindow, WindowKind};
use crate::lineage::DayCounters;
use crate::topology::postings::Unreadable;

/// A window as reconcile keys it: kind, scope (segment id, or subscription id
/// for a period close) and the original window id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct WindowId {
    pub kind: String,
    pub scope: String,
    pub window: String,
}

impl WindowId {
    pub(super) fn new(kind: &str, scope: &str, window: &str) -> Self {
        WindowId {
            kind: kind.to_string(),
            scope: scope.to_string(),
            window: window.to_string(),
        }
    }
}

/// One emitted window record (an adjustment is its own record).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct RecordId {
    pub(super) kind: String,
    pub(super) scope: String,
    pub(super) window: String,
    pub(super) adjusts: Option<String>,
}

impl RecordId {
    pub(super) fn of_window(w: &ClosedWindow) -> Self {
        RecordId {
            kind: w.kind.as_str().to_string(),
            scope: scope_of(w),
            window: w.window.id.clone(),
            adjusts: w.adjusts.as_ref().map(|a| a.id.clone()),
        }
    }

    pub(super) fn of_posting(p: &Posting) -> Self {
        RecordId {
            kind: p.window_kind.as_str().to_string(),
            scope: p
                .segment_id
                .clone()
                .unwrap_or_else(|| p.subscription_id.clone()),
            window: p.window.id.clone(),
            adjusts: p.adjusts.as_ref().map(|a| a.id.clone()),
        }
    }

    pub(super) fn original(&self) -> WindowId {
        WindowId::new(
            &self.kind,
            &self.scope,
            self.adjusts.as_deref().unwrap_or(&self.window),
        )
    }

    pub(super) fn describe(&self) -> String {
        match &self.adjusts {
            Some(a) => format!(
                "{} (adjustment of {a} in {})",
                self.original().describe(),
                self.window
            ),
            None => self.original().describe(),
        }
    }
}

impl WindowId {
    /// `window day 2026-10-05 segment 3f1c0a2b…`
    pub fn describe(&self) -> String {
        let what = if self.kind == WindowKind::PeriodClose.as_str() {
            "subscription"
        } else {
            "segment"
        };
        format!(
            "window {} {} {what} {}",
            self.kind,
            self.window,
            short(&self.scope)
        )
    }
}

pub(super) fn short(id: &str) -> String {
    if id.len() > 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        format!("{}…", &id[..12])
    } else {
        id.to_string()
    }
}

fn scope_of(w: &ClosedWindow) -> String {
    match &w.segment {
        Some(s) => s.segment_id.clone(),
        None => w.subscription_id.clone(),
    }
}

/// Amount and events summed into a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum {
    pub amount: Decimal,
    pub events: u64,
}

impl Sum {
    pub(super) fn add(&mut self, amount: Decimal, events: u64) {
        self.amount += amount;
        self.events += events;
    }
}

/// Who a window belongs to, for the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) subscription: String,
    pub(super) meter: String,
    pub(super) currency: String,
}

/// Everything reconcile read. Built by [`read`] (or by hand in tests).
#[derive(Debug, Default)]
pub struct Facts {
    /// (stage, day) -> counters summed over partitions: stage "validate" | "enrich".
    pub counters: BTreeMap<(String, String), DayCounters>,
    /// (topic name without namespace, day of event time) -> committed records.
    pub topic_days: BTreeMap<(String, String), u64>,
    /// Committed records of `usage.events` (all days).
    pub events_total: u64,
    /// Stage -> input records after its consumer group's committed offsets.
    pub in_flight: BTreeMap<String, u64>,
    /// Stage -> records in its dead-letter topic (enrich, aggregate, post).
    pub dead_letters: BTreeMap<String, u64>,
    /// Topics whose oldest records were deleted (retention or delete-records).
    pub truncated: BTreeSet<String>,
    /// Rated marginal amounts by original window.
    pub(super) rated: BTreeMap<WindowId, Sum>,
    pub(super) owners: BTreeMap<WindowId, Owner>,
    /// Closed windows (`usage.windows`) and still open ones (aggregate's store).
    pub closed: Vec<ClosedWindow>,
    pub open: Vec<ClosedWindow>,
    pub postings: Vec<Posting>,
    /// (partition, offset) of each of `postings`, in the same order.
    pub posting_offsets: Vec<(i32, i64)>,
    /// The general ledger, when reconcile was given one (`--ledger-url`).
    pub ledger: Option<super::ledger::LedgerFacts>,
    /// `ref.subscriptions` as of now.
    pub subscriptions: Vec<crate::refdata::Subscription>,
    /// Aggregate's watermark per partition of `usage.rated`, and their count.
    pub watermarks: BTreeMap<i32, i64>,
    pub rated_partitions: i32,
    /// Config `aggregate.periods_from`: periods ending at or before it are not checked.
    pub periods_from: Option<DateTime<Utc>>,
    /// Topic name without namespace -> its records that do not parse (only
    /// topics whose records reconcile parses: rated, windows, postings,
    /// invoices).
    pub unreadable: BTreeMap<String, Unreadable>,
    /// `finance.invoices`: the latest version of each invoice, by id.
    pub invoices: BTreeMap<String, crate::contracts::Invoice>,
    /// Service credits granted (`credit` commands without an invoice that
    /// were not refused), once per (customer, command id).
    pub grants: Vec<crate::contracts::Command>,
}

impl Facts {
    /// Whether the invoice of `subscription`'s period `period` waits for
    /// approval (or for its period close): its invoice lines, rounding and
    /// reclass are not posted yet, by design.
    pub fn awaiting_approval(&self, subscription: &str, period: &str) -> bool {
        use crate::contracts::InvoiceStatus;
        self.invoices
            .get(&crate::contracts::invoice_id(subscription, period))
            .is_some_and(|i| {
                matches!(
                    i.status,
                    InvoiceStatus::Draft | InvoiceStatus::PendingApproval
                )
            })
    }

    /// Adds one `usage.rated` record: each measure's marginal amount to its
    /// segment's original day and billing-period windows.
    pub fn add_rated(&mut self, r: &crate::contracts::RatedEvent) {
        let e = &r.enriched;
        let mut seen = BTreeSet::new();
        for m in &r.measures {
            for (kind, window) in [
                (WindowKind::Day, &e.local_day.id),
                (WindowKind::BillingPeriod, &e.billing_period.id),
            ] {
                let id = WindowId::new(kind.as_str(), &m.segment_id, window);
                let first = seen.insert(id.clone());
                self.rated
                    .entry(id.clone())
                    .or_default()
                    .add(m.marginal_amount, u64::from(first));
                self.owners.entry(id).or_insert_with(|| Owner {
                    subscription: e.subscription_id.clone(),
                    meter: m.meter.clone(),
                    currency: e.currency.clone(),
                });
            }
        }
    }

    pub(super) fn add_counters(&mut self, stage: &str, day: &str, c: &DayCounters) {
        let t = self
            .counters
            .entry((stage.to_string(), day.to_string()))
            .or_default();
        t.records_in += c.records_in;
        t.passed += c.passed;
        t.held += c.held;
        t.released += c.released;
    }

    pub(super) fn add_topic_day(&mut self, topic: &str, day: String) {
        *self.topic_days.entry((topic.to_string(), day)).or_default() += 1;
    }

    pub(super) fn topic_day(&self, topic: &str, day: &str) -> u64 {
        self.topic_days
            .get(&(topic.to_string(), day.to_string()))
            .copied()
            .unwrap_or(0)
    }

    pub(super) fn counter(&self, stage: &str, day: &str) -> DayCounters {
        self.counters
            .get(&(stage.to_string(), day.to_string()))
            .copied()
            .unwrap_or_default()
    }
}
