//! Reference data: customers, subscriptions and plans, as the enrich stage
//! sees them.
//!
//! Reference data arrives on three compacted Kafka topics, keyed by id
//! ([`RefKind::topic`]): `ref.customers`, `ref.subscriptions` and `ref.plans`.
//! The value of a record is the JSON object of one [`Customer`],
//! [`Subscription`] or [`Plan`]; a tombstone (null value) retires the record
//! with that key. Every plan *version* is its own record under the key
//! `"<plan id>:<version>"` ([`plan_key`]), so a compacted topic keeps every
//! version and retiring one version leaves the others in place.
//!
//! # Rules
//!
//! * Records are strict: unknown fields are refused (a misspelt optional
//!   field must not silently become "absent"), decimals are JSON *strings*
//!   (`"49.00"`, never `49.0`, which most producers pass through a binary
//!   float), and instants are RFC 3339 with an offset.
//! * Beyond the shape, every record is validated ([`Record::validate`]): ids
//!   are non-empty printable text without surrounding whitespace, a plan id
//!   contains no `:` (the key separator), the time zone is an IANA name, the
//!   currency an active ISO 4217 code with a minor unit
//!   ([`crate::money::minor_unit_exponent`]), the billing anchor day is in
//!   1..=31, amounts are not negative, every charge model passes
//!   [`ChargeModel::validate`](crate::rating::ChargeModel::validate) and a
//!   subscription's `end`, if any, lies after its `start`.
//! * A subscription is active on `[start, end)`: from its start (inclusive)
//!   to its end (exclusive), for ever if `end` is null.
//! * A plan version applies from its `effective_from`; the version in force
//!   at an instant is the greatest version whose `effective_from` is at or
//!   before it ([`RefTables::plan_effective_at`]).
//!
//! # Files and flows
//!
//! * `records.rs`: the record types, their keys and validation.
//! * `jsonl.rs`: [`parse_jsonl`], the all-or-nothing check behind
//!   `meterline refdata load`: every line of a JSON-lines file is validated,
//!   every bad line is reported with its 1-based number, and nothing is
//!   returned for publishing unless the whole file is good.
//! * `tables.rs`: [`RefTables`], the in-memory view the enrich stage rebuilds
//!   from the three topics on start and keeps current with
//!   [`RefTables::apply`].
//!
//! # Re-emission of parked events
//!
//! Enrich parks an event whose reference data is missing or ambiguous and
//! retries it when a reference record arrives that could change the answer.
//! The match is deliberately coarse, by [`RefTrigger`]: applying a record
//! yields the triggers it fires ([`RefTables::apply_tracked`]), and a parked
//! event lists the triggers that could resolve it. A trigger is a
//! [`RefKind`] and an id whose meaning depends on the kind:
//!
//! | kind | id | fired by |
//! |---|---|---|
//! | `Customers` | customer id | any record or tombstone of that customer |
//! | `Subscriptions` | customer id | any record or tombstone of a subscription of that customer (old and new `customer_id`) |
//! | `Plans` | plan id | any record or tombstone of any version of that plan |
//!
//! Over-firing is harmless (the retried event is parked again); the rules are
//! chosen so that no record that could resolve a parked event fails to fire.

mod jsonl;
mod records;
mod tables;

pub use jsonl::{parse_jsonl, parse_jsonl_for_meters, LineError, PublishRecord};
pub use records::{
    parse_plan_key, plan_key, tax_rate_key, Customer, CustomerStatus, GlAccounts, Plan, PlanCharge,
    Record, RefRecord, Subscription, TaxRate, MAX_TAX_RATE_PERCENT, MAX_TEXT_LEN,
    PLAN_KEY_SEPARATOR,
};
pub use tables::RefTables;

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::money::MoneyError;
use crate::rating::ChargeModelError;
use crate::topology::names;

/// One of the four reference tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefKind {
    Customers,
    Subscriptions,
    Plans,
    /// Tax rates per legal entity and tax code (the invoice stage's).
    TaxRates,
}

impl RefKind {
    /// Every kind, in the order the tables are loaded.
    pub const ALL: [RefKind; 4] = [
        RefKind::Customers,
        RefKind::Subscriptions,
        RefKind::Plans,
        RefKind::TaxRates,
    ];

    /// The compacted topic of the table (before any namespace prefix).
    pub const fn topic(self) -> &'static str {
        match self {
            RefKind::Customers => names::REF_CUSTOMERS,
            RefKind::Subscriptions => names::REF_SUBSCRIPTIONS,
            RefKind::Plans => names::REF_PLANS,
            RefKind::TaxRates => names::REF_TAX_RATES,
        }
    }

    /// The kind whose topic is `topic` (without namespace prefix).
    pub fn from_topic(topic: &str) -> Option<RefKind> {
        RefKind::ALL.into_iter().find(|kind| kind.topic() == topic)
    }

    /// The short name used on the command line and in logs: `customers`,
    /// `subscriptions`, `plans`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RefKind::Customers => "customers",
            RefKind::Subscriptions => "subscriptions",
            RefKind::Plans => "plans",
            RefKind::TaxRates => "tax_rates",
        }
    }
}

impl fmt::Display for RefKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefKind {
    type Err = RefError;

    /// Accepts the short name (`plans`) or the topic name (`ref.plans`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        RefKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text || kind.topic() == text)
            .ok_or_else(|| RefError::UnknownKind(text.to_owned()))
    }
}

/// A reference record event that may resolve parked events; see the module
/// docs for what `id` means per kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RefTrigger {
    pub kind: RefKind,
    /// Customer id for `Customers` and `Subscriptions`, plan id for `Plans`.
    pub id: String,
}

impl RefTrigger {
    pub fn new(kind: RefKind, id: impl Into<String>) -> Self {
        RefTrigger {
            kind,
            id: id.into(),
        }
    }
}

impl fmt::Display for RefTrigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// Why a reference record (a JSON-lines line or a topic record) is refused.
/// [`code`](RefError::code) is a stable snake_case identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// Not JSON at all (syntax error, truncated, not UTF-8).
    #[error("not valid JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not the shape of the record: missing or unknown field, wrong
    /// type, a decimal written as a JSON number.
    #[error("does not match the record schema: {0}")]
    SchemaMismatch(String),
    /// A text field (an id, a name, an account) is empty, too long, has
    /// surrounding whitespace or control characters, or a plan id contains
    /// the key separator.
    #[error("{field}: {reason}")]
    InvalidText { field: String, reason: String },
    #[error("billing_anchor_day {0} is not between 1 and 31")]
    InvalidAnchorDay(u8),
    #[error("time_zone {0:?} is not an IANA time zone name")]
    UnknownTimeZone(String),
    /// The currency is not an active ISO 4217 code with a minor unit.
    #[error("currency: {0}")]
    InvalidCurrency(#[source] MoneyError),
    #[error("{field} is {value}: amounts must not be negative")]
    NegativeAmount { field: String, value: Decimal },
    #[error("{field}: {source}")]
    InvalidChargeModel {
        field: String,
        #[source]
        source: ChargeModelError,
    },
    /// `end` is not after `start`: a subscription must be active for some time.
    #[error("end {end} is not after start {start}")]
    EndNotAfterStart {
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    /// The Kafka key is not the key of the record in the value.
    #[error("record key {key:?} does not match the value, whose key is {expected:?}")]
    KeyMismatch { key: String, expected: String },
    /// A key that cannot be a key of the table (a plan key without version).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    /// The same key twice in one JSON-lines file.
    #[error("duplicate key {key:?}, first on line {first_line}")]
    DuplicateKey { key: String, first_line: usize },
    /// A line with `"deleted"` that is not a well-formed tombstone.
    #[error("invalid tombstone: {0}")]
    InvalidTombstone(String),
    /// Serializing a record failed; not expected for validated records.
    #[error("cannot encode the record: {0}")]
    Encode(String),
    #[error("unknown reference kind {0:?}: expected customers, subscriptions or plans")]
    UnknownKind(String),
}

impl RefError {
    /// Stable machine-readable identifier of the error kind. An invalid
    /// currency reports the money module's code (`unknown_currency`,
    /// `no_minor_unit`).
    pub fn code(&self) -> &'static str {
        match self {
            RefError::MalformedJson(_) => "malformed_json",
            RefError::SchemaMismatch(_) => "schema_mismatch",
            RefError::InvalidText { .. } => "invalid_text",
            RefError::InvalidAnchorDay(_) => "invalid_anchor_day",
            RefError::UnknownTimeZone(_) => "unknown_time_zone",
            RefError::InvalidCurrency(inner) => inner.code(),
            RefError::NegativeAmount { .. } => "negative_amount",
            RefError::InvalidChargeModel { .. } => "invalid_charge_model",
            RefError::EndNotAfterStart { .. } => "end_not_after_start",
            RefError::KeyMismatch { .. } => "key_mismatch",
            RefError::InvalidKey { .. } => "invalid_key",
            RefError::DuplicateKey { .. } => "duplicate_key",
            RefError::InvalidTombstone(_) => "invalid_tombstone",
            RefError::Encode(_) => "encode_failed",
            RefError::UnknownKind(_) => "unknown_kind",
        }
    }

    /// Classifies a serde_json error: syntax versus shape.
    fn from_json(error: &serde_json::Error) -> Self {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => RefError::SchemaMismatch(error.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                RefError::MalformedJson(error.to_string())
            }
        }
    }
}

/// Serde helpers shared by the records and the enriched event.
pub(crate) mod serde_with {
    pub use crate::money::optional_decimal_str;

    /// `Option<DateTime<Utc>>` as an optional RFC 3339 string (`null` when
    /// `None`), in the canonical form of [`crate::contracts::rfc3339_utc`].
    pub mod optional_rfc3339_utc {
        use chrono::{DateTime, Utc};
        use serde::{Deserialize, Deserializer, Serializer};

        #[derive(Deserialize)]
        #[serde(transparent)]
        struct Instant(#[serde(with = "crate::contracts::rfc3339_utc")] DateTime<Utc>);

        pub fn serialize<S: Serializer>(
            value: &Option<DateTime<Utc>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(time) => {
                    serializer.serialize_str(&crate::contracts::rfc3339_utc::format(time))
                }
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<DateTime<Utc>>, D::Error> {
            Ok(Option::<Instant>::deserialize(deserializer)?.map(|Instant(time)| time))
        }
    }
}
