//! `usage.enriched`: what the enrich stage writes and the rate stage reads,
//! and the pieces of it that travel further (customer, windows, charges).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::usage::{rfc3339_utc, Measure, ValidatedEvent};
use crate::meter::Aggregation;
use crate::rating::ChargeModel;
use crate::refdata::serde_with::optional_decimal_str;
use crate::refdata::GlAccounts;

/// Version of this contract; see [`super`] for what a change may do.
pub const ENRICHED_EVENT_VERSION: u32 = 1;

/// The customer fields an enriched event carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerInfo {
    pub id: String,
    pub name: String,
    pub legal_entity: String,
    pub erp_customer_id: String,
}

/// A half-open UTC interval `[start, end)` of local calendar time, with its
/// id: the local start date `YYYY-MM-DD`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    pub id: String,
    #[serde(with = "rfc3339_utc")]
    pub start: DateTime<Utc>,
    #[serde(with = "rfc3339_utc")]
    pub end: DateTime<Utc>,
}

/// Where a measure's charge model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeSource {
    /// The plan version's charge for the meter.
    Plan,
    /// The subscription's price override, which beats the plan's charge.
    Override,
}

/// How one measure of the event is priced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedCharge {
    pub meter: String,
    /// From the meter catalog: how the segment's quantity accumulates.
    pub aggregation: Aggregation,
    /// The subscription's override if present, else the plan's charge.
    pub charge: ChargeModel,
    pub source: ChargeSource,
    /// The plan charge's tax code, else the plan's (an override changes the
    /// price, not what is sold).
    pub tax_code: Option<String>,
    /// The meter's unit after conversion ("GB", "1K tokens"), for invoices.
    pub unit: Option<String>,
    /// The plan charge's `prorate` (see [`crate::rating::Timeline`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prorate: bool,
}

/// The enrich stage's output: one record on `usage.enriched`.
///
/// `charges[i]` prices `event.measures[i]`: the two lists have the same
/// length and order.
///
/// The type parameters are for readers only: [`EnrichedHead`] reads the
/// same JSON without the parts it does not need. Everything written is the
/// default, `EnrichedEvent<ValidatedEvent, ResolvedCharge>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedEvent<E = ValidatedEvent, C = ResolvedCharge> {
    /// The validated event, unchanged.
    pub event: E,
    pub customer: CustomerInfo,
    pub subscription_id: String,
    pub plan_id: String,
    pub plan_version: u32,
    /// ISO 4217; subscription and plan agree on it.
    pub currency: String,
    /// The subscription's legal entity, which bills the usage.
    pub legal_entity: String,
    /// The subscription's IANA time zone.
    pub time_zone: String,
    pub billing_anchor_day: u8,
    /// The subscription's end (exclusive), if it has one: aggregate keeps
    /// closing its billing periods, with or without usage, until it.
    #[serde(default)]
    pub subscription_end: Option<DateTime<Utc>>,
    /// The billing period containing the event's time.
    pub billing_period: Window,
    /// The subscription's local day containing the event's time.
    pub local_day: Window,
    pub gl_accounts: GlAccounts,
    /// The plan-level tax code (base fee, true-up); charges carry their own.
    pub tax_code: Option<String>,
    /// Per billing period, in `currency`; from the subscription.
    #[serde(default, with = "optional_decimal_str")]
    pub minimum_commitment: Option<Decimal>,
    /// Per billing period, in `currency`; from the plan version.
    #[serde(default, with = "optional_decimal_str")]
    pub base_fee: Option<Decimal>,
    pub charges: Vec<C>,
}

/// An enriched event as a reader that prices nothing sees it: the event
/// without its `data` and origin, each charge without its model. Parsing
/// skips what it leaves out (no allocation), which is most of the cost of
/// reading a `usage.rated` record (`json/parse_rated_head` in
/// `benches/hot_paths.rs`).
pub type EnrichedHead = EnrichedEvent<EventHead, ChargeHead>;

/// What [`EnrichedHead`] keeps of the validated event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventHead {
    pub source: String,
    pub id: String,
    pub subject: String,
    #[serde(with = "rfc3339_utc")]
    pub time: DateTime<Utc>,
    pub measures: Vec<Measure>,
}

/// What [`EnrichedHead`] keeps of a resolved charge: what an invoice line
/// says about it, not its price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeHead {
    pub meter: String,
    pub aggregation: Aggregation,
    pub tax_code: Option<String>,
    pub unit: Option<String>,
}

impl EnrichedEvent {
    /// The record value for `usage.enriched`.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses a record value read back from `usage.enriched`.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The resolved charge of `meter`.
    pub fn charge(&self, meter: &str) -> Option<&ResolvedCharge> {
        self.charges.iter().find(|charge| charge.meter == meter)
    }

    /// The rating segment of `measure` (one of `event.measures`), see
    /// [`rating_segment_key`].
    pub fn rating_segment_key(&self, measure: &Measure) -> String {
        rating_segment_key(
            &self.subscription_id,
            &measure.meter,
            &self.billing_period.id,
            self.plan_version,
            &measure.group,
        )
    }

    /// [`rating_segment_id`] of [`rating_segment_key`](Self::rating_segment_key).
    pub fn rating_segment_id(&self, measure: &Measure) -> String {
        rating_segment_id(&self.rating_segment_key(measure))
    }
}

/// The rating segment (subscription, meter, billing period, plan version,
/// group) as a JSON array, e.g.
/// `["sub-1","input_tokens","2026-02-01",2,{"model":"gpt-4o"}]`.
///
/// JSON makes it unambiguous (strings are quoted and escaped, so no choice
/// of ids can make two segments collide) and stable (the group is a sorted
/// map). The billing period id is unique within a subscription.
pub fn rating_segment_key(
    subscription_id: &str,
    meter: &str,
    billing_period_id: &str,
    plan_version: u32,
    group: &BTreeMap<String, String>,
) -> String {
    let group: serde_json::Map<String, Value> = group
        .iter()
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    // Display of a Value is its compact JSON and cannot fail.
    Value::Array(vec![
        Value::from(subscription_id),
        Value::from(meter),
        Value::from(billing_period_id),
        Value::from(plan_version),
        Value::Object(group),
    ])
    .to_string()
}

/// The group of a [`rating_segment_key`] (None: not a segment key).
pub fn segment_key_group(segment_key: &str) -> Option<BTreeMap<String, String>> {
    type Key = (String, String, String, u32, BTreeMap<String, String>);
    serde_json::from_str::<Key>(segment_key)
        .ok()
        .map(|(_, _, _, _, group)| group)
}

/// Lowercase hex SHA-256 of a segment key: 64 characters whatever the ids,
/// for store keys.
pub fn rating_segment_id(segment_key: &str) -> String {
    hex::encode(Sha256::digest(segment_key.as_bytes()))
}
