//! The enrich stage's internal events: one struct per event, each writing
//! its log line and bumping its metric.

use tracing::{debug, info, warn};

use super::metrics::EnrichMetrics;
use super::parked::EventIds;

/// An event was parked (or a replayed copy parked again).
pub(super) struct EventParked<'a> {
    pub(super) ids: &'a EventIds,
    pub(super) reason: &'a str,
    pub(super) message: &'a str,
    pub(super) again: bool,
}

impl EventParked<'_> {
    pub(super) fn emit(&self, m: &EnrichMetrics) {
        debug!(
            customer = %self.ids.customer,
            source = %self.ids.source,
            id = %self.ids.id,
            reason = self.reason,
            message = self.message,
            again = self.again,
            "event parked"
        );
        m.parked_total.with_label_values(&[self.reason]).inc();
    }
}

/// A parked event resolved and was emitted.
pub(super) struct ParkedEventReemitted<'a> {
    pub(super) ids: &'a EventIds,
    pub(super) reason: &'a str,
    pub(super) parked_ms: i64,
}

impl ParkedEventReemitted<'_> {
    pub(super) fn emit(&self, m: &EnrichMetrics) {
        debug!(
            customer = %self.ids.customer,
            source = %self.ids.source,
            id = %self.ids.id,
            was = self.reason,
            parked_ms = self.parked_ms,
            "parked event resolved and re-emitted"
        );
        m.reemitted.inc();
    }
}

/// A replayed exceptions copy whose event had already flowed.
pub(super) struct ExceptionReplayDropped<'a> {
    pub(super) ids: &'a EventIds,
    pub(super) replayed_from: &'a str,
}

impl ExceptionReplayDropped<'_> {
    pub(super) fn emit(&self, m: &EnrichMetrics) {
        info!(
            customer = %self.ids.customer,
            source = %self.ids.source,
            id = %self.ids.id,
            replayed_from = self.replayed_from,
            "replayed exception dropped: the event is no longer parked (it already flowed)"
        );
        m.replays_dropped.inc();
    }
}

/// A reference record was refused and skipped.
pub(super) struct TableRecordRefused<'a> {
    pub(super) table: &'a str,
    pub(super) key: &'a str,
    pub(super) code: &'a str,
    pub(super) error: &'a str,
}

impl TableRecordRefused<'_> {
    pub(super) fn emit(&self, m: &EnrichMetrics) {
        warn!(
            table = self.table,
            key = self.key,
            code = self.code,
            error = self.error,
            "reference record refused; skipped (the previous value under its key stays)"
        );
        m.table_refused
            .with_label_values(&[self.table, self.code])
            .inc();
    }
}
