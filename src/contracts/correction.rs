//! Corrections of usage already accepted: a retraction names an event by
//! its CloudEvents identity and removes what it contributed; an amendment
//! does that and adds a replacement event, both or neither (issue 16).
//!
//! * validate turns a retraction (type `validate.retract_type`) into a
//!   [`ValidatedEvent`] with no measures and a [`Correction`] of kind
//!   [`CorrectionKind::Retract`], and an amendment (type
//!   `validate.amend_type`) into the replacement's [`ValidatedEvent`] with a
//!   [`Correction`] of kind [`CorrectionKind::Amend`];
//! * enrich resolves an amendment like any event and passes a retraction on
//!   unresolved, as a [`RetractionRecord`] on `usage.enriched` (the event it
//!   names keeps the context it was rated in);
//! * rate finds the named event in its own store, emits
//!   `price(without it) - price(with it)` per measure as a rated event
//!   carrying the [`Correction`] ([`super::RatedEvent::correction`]), and
//!   refuses a second correction of the same event.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::ValidatedEvent;

/// Version of [`RetractionRecord`]; see [`super`] for what a change may do.
pub const RETRACTION_RECORD_VERSION: u32 = 1;

/// What a correction does to the event it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorrectionKind {
    /// Remove the event's contribution.
    Retract,
    /// Remove it and add the replacement event (the one carrying this).
    Amend,
}

/// The event a retraction or amendment corrects, e.g.
/// `{"kind":"retract","source":"svc/gateway","id":"evt-1"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Correction {
    pub kind: CorrectionKind,
    /// The corrected event's CloudEvents `source`.
    pub source: String,
    /// The corrected event's CloudEvents `id`.
    pub id: String,
    /// The corrected event's time, when the producer gave it: it tells an
    /// event whose rating state was released from one never seen.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "super::optional_rfc3339"
    )]
    pub time: Option<DateTime<Utc>>,
}

/// A retraction on `usage.enriched`, e.g.
/// `{"retraction":{"source":"ops","id":"r-1",…,"correction":{…}}}`: the
/// validated retraction, unresolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetractionRecord {
    pub retraction: ValidatedEvent,
}

impl RetractionRecord {
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Version of [`RerateRecord`]; see [`super`] for what a change may do.
pub const RERATE_RECORD_VERSION: u32 = 1;

/// `meterline rerate` on `usage.enriched` (keyed by the customer), e.g.
/// `{"rerate":{"id":"…","subscription_id":"sub-1","customer_id":"c-1",
/// "meter":null,"period":"2026-09-01","charges":[…],"actor":"ana",
/// "time":"2026-10-03T09:00:00Z"}}`: rate prices the subscription's
/// segments (those of `meter` and `period` when given) at their current
/// quantity under `charges` and emits the difference from what they have
/// been billed so far, one rated record per segment that changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerateRecord {
    pub rerate: Rerate,
}

/// The command of a [`RerateRecord`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rerate {
    /// Names the command (lineage, the rated records' `rerate`).
    pub id: String,
    pub subscription_id: String,
    pub customer_id: String,
    #[serde(default)]
    pub meter: Option<String>,
    /// A billing period id (`YYYY-MM-DD`, its local start date).
    #[serde(default)]
    pub period: Option<String>,
    /// The charges as the reference data has them now, per plan version
    /// of the subscription's plan.
    pub charges: Vec<RerateCharge>,
    pub actor: String,
    #[serde(with = "super::rfc3339_utc")]
    pub time: DateTime<Utc>,
}

/// The corrected charge of one meter in one plan version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerateCharge {
    pub plan_version: u32,
    pub charge: super::ResolvedCharge,
}

impl RerateRecord {
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
