//! Usage events: what enters the pipeline and what leaves the validate stage.
//!
//! * [`CloudEvent`] is a CloudEvents 1.0 usage event after decoding, whatever
//!   its wire encoding was (structured JSON, Kafka binary mode, or Avro). Only
//!   the attributes meterline relies on are kept; extension attributes are
//!   dropped because nothing downstream reads them.
//! * [`ValidatedEvent`] is the validate stage's output contract, the JSON
//!   value written to the `usage.validated` topic. It carries the measures
//!   extracted for every meter that the event feeds, so later stages never
//!   evaluate JSONPaths or parse numbers again, plus the original `data` and
//!   the Kafka [`Origin`] for lineage.
//!
//! Serialization of a [`ValidatedEvent`] is deterministic: struct fields are
//! emitted in declaration order, every map is a `BTreeMap` (serde_json's
//! `Map` is one too unless its `preserve_order` feature is switched on, which
//! a test guards against), times are written in one fixed RFC 3339 form and
//! decimals are written as strings so no JSON reader can turn them into
//! floats.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The only CloudEvents specification version meterline accepts.
pub const CLOUDEVENTS_SPEC_VERSION: &str = "1.0";

/// A decoded CloudEvents 1.0 usage event.
///
/// `time` is parsed; `time_raw` keeps the attribute as it was received (its
/// offset and precision), for dead-letter messages and debugging. It is not a
/// CloudEvents attribute and so is never serialized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The customer the usage is billed to.
    pub subject: String,
    #[serde(with = "rfc3339_utc")]
    pub time: DateTime<Utc>,
    #[serde(skip)]
    pub time_raw: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The event payload; must be a JSON object to pass validation.
    #[serde(default)]
    pub data: Value,
}

/// How a record was encoded on the input topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// CloudEvents JSON structured mode: the Kafka value is the JSON envelope.
    Structured,
    /// CloudEvents Kafka binary mode: attributes in `ce_*` headers, the value is `data`.
    Binary,
    /// Avro in the Confluent wire format, resolved through a schema registry.
    Avro,
}

impl Encoding {
    /// The name used in [`Origin::encoding`] and in metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Encoding::Structured => "structured",
            Encoding::Binary => "binary",
            Encoding::Avro => "avro",
        }
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a validated event came from, so every posting can be traced back to
/// one input record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub encoding: Encoding,
}

/// The quantity one event contributes to one meter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measure {
    /// The meter's slug.
    pub meter: String,
    /// The value after unit conversion, exact; `None` for COUNT and
    /// UNIQUE_COUNT meters. Written as a JSON string (or null).
    #[serde(default, with = "rust_decimal::serde::str_option")]
    pub value: Option<Decimal>,
    /// UNIQUE_COUNT only: the canonical string of the JSON scalar counted.
    #[serde(default)]
    pub unique_value: Option<String>,
    /// `group_by` name -> value as a string; a missing or null property is "".
    #[serde(default)]
    pub group: BTreeMap<String, String>,
}

/// The Kafka key of a record on `usage.identified` ([`super::GateRecord`]):
/// the event's CloudEvents identity (`source`, `id`) as a JSON array,
/// `["source","id"]`. Every copy of an event gets the same key, so the
/// murmur2 partitioner puts all their claims on one partition, whatever
/// subject (and so whatever `usage.events` partition) each copy came with:
/// the dedupe stage sees every copy in one store. Deterministic: serde_json
/// escapes a string one way.
pub fn identity_key(source: &str, id: &str) -> Vec<u8> {
    // Serializing a pair of strings cannot fail; the fallback is never used.
    serde_json::to_vec(&(source, id)).unwrap_or_default()
}

/// A valid event: written by validate inside a claim on `usage.identified`
/// ([`super::GateRecord`]) and passed on unchanged by dedupe to
/// `usage.validated` (keyed by `subject`) when it is the first copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidatedEvent {
    pub source: String,
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    /// The event time, normalized to UTC.
    #[serde(with = "rfc3339_utc")]
    pub time: DateTime<Utc>,
    /// One entry per meter fed by `type`, ordered by meter slug.
    pub measures: Vec<Measure>,
    /// The event's original `data` object.
    pub data: Value,
    pub origin: Origin,
    /// A retraction (no measures) or an amendment (the replacement's
    /// measures): the event it corrects ([`super::correction`]). Absent on
    /// a usage event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<super::Correction>,
}

impl ValidatedEvent {
    /// A usage event that passed validation, with its measures.
    pub fn accepted(event: CloudEvent, measures: Vec<Measure>, origin: Origin) -> Self {
        ValidatedEvent {
            source: event.source,
            id: event.id,
            event_type: event.event_type,
            subject: event.subject,
            time: event.time,
            measures,
            data: event.data,
            origin,
            correction: None,
        }
    }

    /// The record value for `usage.validated` (and the claim's `event`).
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses a record value of `usage.validated` (or a claim's `event`).
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Serde helpers writing a `DateTime<Utc>` as RFC 3339 in one fixed form:
/// `Z` as the offset and only as many fractional digits as needed (0, 3, 6
/// or 9), so equal instants always serialize to equal text. Reading accepts
/// any RFC 3339 offset and converts to UTC.
pub mod rfc3339_utc {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    /// The canonical text of an instant.
    pub fn format(time: &DateTime<Utc>) -> String {
        time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    pub fn serialize<S: Serializer>(
        time: &DateTime<Utc>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(deserializer)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|time| time.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use serde_json::json;
    use std::str::FromStr;

    fn sample() -> ValidatedEvent {
        let mut group = BTreeMap::new();
        group.insert("model".to_owned(), "gpt".to_owned());
        group.insert("region".to_owned(), String::new());
        ValidatedEvent {
            correction: None,
            source: "svc/api".to_owned(),
            id: "evt-1".to_owned(),
            event_type: "tokens".to_owned(),
            subject: "cust-42".to_owned(),
            time: Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
                + chrono::TimeDelta::microseconds(250),
            measures: vec![
                Measure {
                    meter: "input_tokens".to_owned(),
                    value: Some(Decimal::from_str("1.50").unwrap()),
                    unique_value: None,
                    group,
                },
                Measure {
                    meter: "requests".to_owned(),
                    value: None,
                    unique_value: None,
                    group: BTreeMap::new(),
                },
            ],
            data: json!({"zeta": 1, "alpha": {"b": 2, "a": 1}}),
            origin: Origin {
                topic: "usage.raw".to_owned(),
                partition: 3,
                offset: 1234,
                encoding: Encoding::Binary,
            },
        }
    }

    #[test]
    fn validated_event_serializes_deterministically() {
        let text = String::from_utf8(sample().to_json_bytes().unwrap()).unwrap();
        assert_eq!(
            text,
            concat!(
                r#"{"source":"svc/api","id":"evt-1","type":"tokens","subject":"cust-42","#,
                r#""time":"2024-03-01T12:00:00.000250Z","#,
                r#""measures":[{"meter":"input_tokens","value":"1.50","unique_value":null,"#,
                r#""group":{"model":"gpt","region":""}},"#,
                r#"{"meter":"requests","value":null,"unique_value":null,"group":{}}],"#,
                r#""data":{"alpha":{"a":1,"b":2},"zeta":1},"#,
                r#""origin":{"topic":"usage.raw","partition":3,"offset":1234,"encoding":"binary"}}"#
            )
        );
    }

    #[test]
    fn validated_event_round_trips() {
        let event = sample();
        let back = ValidatedEvent::from_json_slice(&event.to_json_bytes().unwrap()).unwrap();
        assert_eq!(back, event);
        // Scale survives, not just the numeric value.
        assert_eq!(back.measures[0].value.unwrap().to_string(), "1.50");
    }

    #[test]
    fn time_is_written_in_utc_with_z() {
        let time = DateTime::parse_from_rfc3339("2024-03-01T14:00:00+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(rfc3339_utc::format(&time), "2024-03-01T12:00:00Z");
    }

    #[test]
    fn cloud_event_uses_type_attribute_name() {
        let event = CloudEvent {
            specversion: "1.0".to_owned(),
            id: "1".to_owned(),
            source: "s".to_owned(),
            event_type: "t".to_owned(),
            subject: "c".to_owned(),
            time: Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap(),
            time_raw: Some("2024-01-01T00:00:00Z".to_owned()),
            datacontenttype: None,
            data: json!({}),
        };
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["type"], "t");
        assert!(value.get("time_raw").is_none());
        assert!(value.get("event_type").is_none());
    }

    #[test]
    fn encoding_names_match_serde() {
        for encoding in [Encoding::Structured, Encoding::Binary, Encoding::Avro] {
            assert_eq!(
                serde_json::to_value(encoding).unwrap(),
                json!(encoding.as_str())
            );
        }
    }
}
