//! `usage.rated`: what the rate stage writes and the aggregate stage reads.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{EnrichedEvent, EnrichedHead};
use crate::meter::Aggregation;

/// Version of this contract; see [`super`] for what a change may do.
pub const RATED_EVENT_VERSION: u32 = 1;

/// The rate stage's output: one record on `usage.rated` per enriched event.
/// This is the contract the aggregate stage reads.
///
/// JSON, fields in this order, decimals as strings (unrounded, scale kept),
/// e.g.
///
/// ```json
/// {"source":"svc/gateway","id":"evt-1","customer_id":"cust-42",
///  "measures":[{"meter":"tokens",
///    "segment_key":"[\"sub-1\",\"tokens\",\"2026-01-01\",2,{\"model\":\"m\"}]",
///    "segment_id":"3f1c…(64 hex)","plan_version":2,"aggregation":"SUM",
///    "quantity_before":"900","quantity_after":"1500",
///    "marginal_quantity":"600","marginal_amount":"5.00"}],
///  "enriched":{"event":{…},"customer":{…},"subscription_id":"sub-1",…}}
/// ```
///
/// * `source`, `id`: the event identity (CloudEvents `source` and `id`),
///   shared by every measure of the record.
/// * `customer_id`: the record key, the event's `subject`.
/// * `measures[i]` rates `enriched.event.measures[i]` with
///   `enriched.charges[i]` (same length, same order).
/// * `enriched`: the [`EnrichedEvent`] as received, unchanged (currency,
///   billing period, local day, GL accounts, tax codes, ...).
///
/// The type parameter is for readers only, as in [`EnrichedEvent`]:
/// [`RatedHead`] reads the same JSON with the enriched event's
/// [`EnrichedHead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RatedEvent<X = EnrichedEvent> {
    pub source: String,
    pub id: String,
    pub customer_id: String,
    pub measures: Vec<RatedMeasure>,
    pub enriched: X,
    /// On the record of a retraction (or of an amendment's retraction
    /// half): the event it removes. Its measures are the removed event's,
    /// negated as `price(without) - price(with)`, and `enriched` is the
    /// context that event was rated in, with the correcting event's
    /// identity and time. Absent on every other record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<super::Correction>,
    /// On the record of a re-rating (`meterline rerate`): the command id.
    /// One measure, quantity unchanged, the amount the difference between
    /// the segment's price under the corrected charge and what it was
    /// billed so far; `enriched` the context of the segment's first event
    /// under the command's identity and time. Absent on every other record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerate: Option<String>,
}

/// [`RatedEvent`] as written: the same fields in the same order, with the
/// enriched event as the input bytes.
#[derive(Serialize)]
pub struct RatedOut<'a> {
    pub source: &'a str,
    pub id: &'a str,
    pub customer_id: &'a str,
    pub measures: &'a [RatedMeasure],
    pub enriched: &'a serde_json::value::RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correction: Option<&'a super::Correction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rerate: Option<&'a str>,
}

/// What one measure of an event did to its rating segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatedMeasure {
    /// The meter's slug.
    pub meter: String,
    /// [`EnrichedEvent::rating_segment_key`]: readable, stable JSON array
    /// (subscription, meter, billing period id, plan version, group).
    pub segment_key: String,
    /// [`EnrichedEvent::rating_segment_id`]: SHA-256 hex of the key.
    pub segment_id: String,
    /// The plan version that prices the segment (part of the segment).
    pub plan_version: u32,
    pub aggregation: Aggregation,
    /// The segment's cumulative quantity before and after this event.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity_before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity_after: Decimal,
    /// `quantity_after - quantity_before`; 0 for a repeated UNIQUE_COUNT
    /// value, a non-increasing MAX or an older LATEST; negative when a
    /// LATEST value falls.
    #[serde(with = "rust_decimal::serde::str")]
    pub marginal_quantity: Decimal,
    /// `price(quantity_after) - price(quantity_before)` in the enriched
    /// event's currency, unrounded; may be negative.
    #[serde(with = "rust_decimal::serde::str")]
    pub marginal_amount: Decimal,
    /// The change this event made to the parts that explain the segment's
    /// amount (percentage fees, graduated_percentage tiers, proration; see
    /// [`crate::rating::Parts`]); absent for the other models.
    #[serde(default, skip_serializing_if = "crate::rating::Parts::is_empty")]
    pub parts: crate::rating::Parts,
}

/// A `usage.rated` record as aggregate reads it: everything but the event's
/// data and the charge models.
pub type RatedHead = RatedEvent<EnrichedHead>;

impl RatedHead {
    /// Parses a record value read back from `usage.rated`, skipping what
    /// [`EnrichedHead`] leaves out.
    pub fn head_from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl RatedEvent {
    /// The record value for `usage.rated`.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses a record value read back from `usage.rated`.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
