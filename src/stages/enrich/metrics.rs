//! The enrich stage's own metrics (listed in the module docs of [`super`]).

use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};

pub(super) struct EnrichMetrics {
    pub(super) parked_events: IntGaugeVec,
    pub(super) oldest_age: IntGaugeVec,
    /// None only if the registry refused the static definition.
    pub(super) revenue_at_risk: Option<GaugeVec>,
    pub(super) parked_total: IntCounterVec,
    pub(super) reemitted: IntCounter,
    pub(super) replays_dropped: IntCounter,
    pub(super) table_refused: IntCounterVec,
    pub(super) event_time_lag: prometheus::IntGauge,
}

fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> Option<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels).ok()?;
    // Refused when already registered (two processors in one test binary);
    // the first one keeps serving, as with the other helpers in `metrics`.
    let _ = crate::metrics::REGISTRY.register(Box::new(g.clone()));
    Some(g)
}

impl EnrichMetrics {
    pub(super) fn new() -> Self {
        EnrichMetrics {
            parked_events: crate::metrics::gauge_vec(
                "meterline_enrich_parked_events",
                "Events parked by the enrich stage (this instance's partitions), by park reason.",
                &["reason"],
            ),
            oldest_age: crate::metrics::gauge_vec(
                "meterline_enrich_parked_oldest_age_seconds",
                "Age of the oldest parked event, by park reason.",
                &["reason"],
            ),
            revenue_at_risk: float_gauge_vec(
                "meterline_enrich_revenue_at_risk",
                "List price of the parked events' own quantities, unrounded, by currency and legal entity.",
                &["currency", "legal_entity"],
            ),
            parked_total: crate::metrics::counter_vec(
                "meterline_enrich_parked_total",
                "Events parked (first park, or a replayed copy parked again), by park reason.",
                &["reason"],
            ),
            reemitted: crate::metrics::counter(
                "meterline_enrich_reemitted_total",
                "Parked events that resolved and were emitted to usage.enriched.",
            ),
            replays_dropped: crate::metrics::counter(
                "meterline_enrich_exception_replays_dropped_total",
                "Records replayed from usage.exceptions whose event had already flowed.",
            ),
            event_time_lag: crate::metrics::event_time_lag(super::processor::SPEC.name),
            table_refused: crate::metrics::counter_vec(
                "meterline_enrich_table_records_refused_total",
                "Reference records refused (malformed or invalid) and skipped, by table and code.",
                &["table", "code"],
            ),
        }
    }
}
