//! The rows of one rated event: one per measure, with its lineage keys.

use crate::calendar::{self, BillingPeriod, LocalDay};
use crate::contracts::RatedEvent;

use super::file::Row;

/// What placing the events in the calendar found, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CalendarStats {
    /// Events the calendar could not place (unknown zone, out of range):
    /// their window ids are NULL.
    pub unplaced: u64,
    /// Events whose computed window ids differ from the ones enrich put on
    /// the event (aggregate uses those): the computed ids are written.
    pub disagreeing: u64,
}

/// The local day and billing period ids containing the event's time in
/// the subscription's zone, as [`crate::calendar`] computes them (the
/// functions enrich fills `local_day` and `billing_period` with and
/// aggregate places late events with).
fn windows(e: &RatedEvent) -> Result<(String, String), calendar::CalendarError> {
    let en = &e.enriched;
    let tz = calendar::parse_tz(&en.time_zone)?;
    let at = en.event.time;
    let day = LocalDay::containing(tz, at)?;
    let period = BillingPeriod::containing(en.billing_anchor_day, tz, at)?;
    Ok((day.id(), period.id()))
}

/// One row per measure of `e`, read at `partition`/`offset`.
pub fn rows(e: &RatedEvent, partition: i32, offset: i64, stats: &mut CalendarStats) -> Vec<Row> {
    let en = &e.enriched;
    let (day, period) = match windows(e) {
        Ok((day, period)) => {
            if day != en.local_day.id || period != en.billing_period.id {
                stats.disagreeing += 1;
            }
            (Some(day), Some(period))
        }
        Err(_) => {
            stats.unplaced += 1;
            (None, None)
        }
    };
    e.measures
        .iter()
        .map(|m| Row {
            event_date: en.event.time.date_naive(),
            source: e.source.clone(),
            id: e.id.clone(),
            customer_id: e.customer_id.clone(),
            subscription_id: en.subscription_id.clone(),
            plan_id: en.plan_id.clone(),
            legal_entity: en.legal_entity.clone(),
            meter: m.meter.clone(),
            segment_id: m.segment_id.clone(),
            segment_key: m.segment_key.clone(),
            plan_version: m.plan_version,
            aggregation: aggregation_name(m.aggregation),
            event_time_us: en.event.time.timestamp_micros(),
            time_zone: en.time_zone.clone(),
            day_window_id: day.clone(),
            billing_period_id: period.clone(),
            currency: en.currency.clone(),
            quantity_before: m.quantity_before,
            quantity_after: m.quantity_after,
            marginal_quantity: m.marginal_quantity,
            marginal_amount: m.marginal_amount,
            kafka_partition: partition,
            kafka_offset: offset,
        })
        .collect()
}

/// The aggregation as the contract spells it (`SUM`, `UNIQUE_COUNT`, ...).
fn aggregation_name(a: crate::meter::Aggregation) -> String {
    match serde_json::to_value(a) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{a:?}"),
    }
}
