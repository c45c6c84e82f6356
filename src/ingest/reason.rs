//! Why the validate stage refuses a record.
//!
//! Every refused record goes to the dead-letter topic with a [`Reject`]: a
//! [`RejectReason`], whose [`code`](RejectReason::code) is a stable
//! snake_case string meant for dashboards, alerts and producers' runbooks,
//! and a human message saying what exactly was wrong. Codes are part of the
//! public contract: never rename one, only add new ones.
//!
//! The enum, its codes, its one-line descriptions and [`ALL_REASON_CODES`]
//! are generated from one table by [`crate::reason_codes!`] (the macro
//! every stage's table uses) so they cannot drift apart. `invalid_header` is
//! the runtime's code ([`crate::runtime::dlq::reasons`]), listed here too
//! because validate's dead letters are where producers meet it.

use std::fmt;

use serde::{Serialize, Serializer};

/// Longest excerpt of producer-supplied text quoted in a reject message, so a
/// hostile or broken producer cannot blow up dead-letter records.
pub const MAX_EXCERPT_CHARS: usize = 64;

crate::reason_codes! {
    /// One kind of validation failure.
    pub enum RejectReason {
        @also {
            InvalidHeader => crate::runtime::dlq::reasons::INVALID_HEADER,
                "A Kafka header key is not UTF-8 (checked by the runtime before the stage sees the record; the dead letter shows the key with U+FFFD replacements).";
        }
        EventTooLarge => "event_too_large",
            "The record (key + value + headers) is larger than validate.max_event_bytes.";
        EmptyValue => "empty_value",
            "The Kafka record has no value (null or zero bytes).";
        MalformedJson => "malformed_json",
            "The value (or an Avro `data` string) is not valid JSON.";
        DuplicateMember => "duplicate_member",
            "A JSON object in the event (the envelope, data, data_base64's JSON, an Avro `data` string, an amendment's replacement) names a member twice: readers disagree on which value is meant (serde_json keeps the last, others the first; I-JSON forbids it).";
        NotAnObject => "not_an_object",
            "A structured-mode envelope or Avro record is not a JSON object/record.";
        UnsupportedEncoding => "unsupported_encoding",
            "The encoding is not accepted: Avro without a configured registry, a non-JSON binary-mode content-type, or a CloudEvents batch.";
        AvroSchemaNotFound => "avro_schema_not_found",
            "The schema id in the Confluent wire-format header is unknown to the registry.";
        AvroDecodeFailed => "avro_decode_failed",
            "The Avro payload does not decode with its writer schema, or holds a value that cannot be converted to JSON.";
        MissingAttribute => "missing_attribute",
            "A required CloudEvents attribute (specversion, id, source, type, subject, time) is absent, null or the empty string.";
        InvalidAttribute => "invalid_attribute",
            "id, source, type, subject or datacontenttype is not a string (binary mode: not UTF-8) or holds a character CloudEvents forbids in strings (a control character or a noncharacter), or an attribute header is repeated.";
        UnsupportedSpecversion => "unsupported_specversion",
            "specversion is not the string \"1.0\".";
        InvalidTime => "invalid_time",
            "time is not a string holding an RFC 3339 timestamp.";
        EventTooOld => "event_too_old",
            "time is earlier than now minus max_event_age_days.";
        EventInFuture => "event_in_future",
            "time is later than now plus max_clock_skew_s.";
        SourceNotAllowed => "source_not_allowed",
            "source matches no entry of allowed_sources.";
        SignatureMissing => "signature_missing",
            "The source has an HMAC key but the record carries no signature header.";
        SignatureInvalid => "signature_invalid",
            "The signature header is repeated, not hex, or not the HMAC-SHA256 of the signed bytes (structured and Avro: the value; binary mode: the canonical attributes and the value).";
        SignatureRequired => "signature_required",
            "validate.require_signature is on and the source has no HMAC key.";
        DataNotObject => "data_not_object",
            "data is absent or not a JSON object (or its data_base64 is not base64 of JSON, has a non-JSON datacontenttype, or comes with data too).";
        UnknownEventType => "unknown_event_type",
            "No meter is declared for the event's type.";
        ValueMissing => "value_missing",
            "A meter's value_property is absent or null in data.";
        ValueNotNumeric => "value_not_numeric",
            "A SUM/MAX/LATEST value is neither a JSON number nor a numeric string.";
        ValueNotFinite => "value_not_finite",
            "A value is NaN or infinite (as a string such as \"NaN\", \"Infinity\", \"inf\").";
        ValueNegative => "value_negative",
            "A value is below zero.";
        ValueOutOfRange => "value_out_of_range",
            "A value (or its unit conversion) cannot be held exactly by a 96-bit decimal with at most 28 fractional digits.";
        ValueNotScalar => "value_not_scalar",
            "A UNIQUE_COUNT value is an object or array instead of a string, number or boolean.";
        InvalidGroupValue => "invalid_group_value",
            "A group_by value is an object or array instead of a string, number or boolean (an absent or null value is its own group).";
        RetractionInvalid => "retraction_invalid",
            "A retraction's data is not {\"source\", \"id\", \"time\"?} with non-empty strings and an RFC 3339 time, or it names its own identity.";
        AmendmentInvalid => "amendment_invalid",
            "An amendment's data is not {\"source\", \"id\", \"time\"?, \"event\"} with a CloudEvent of the same subject, an id of its own and a usage type (the replacement's own faults keep their codes).";
        CorrectionSourceNotPermitted => "correction_source_not_permitted",
            "validate.correction_sources is set, the correction's source matches none of its entries, and the event it names (or an amendment's replacement) is another source's.";
    }
}

/// Every reject code, in the order of [`RejectReason::ALL`] (the same as
/// [`CODES`]).
pub const ALL_REASON_CODES: &[&str] = CODES;

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for RejectReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

/// A refused record: the reason and a message for the humans reading the
/// dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Reject {
    pub reason: RejectReason,
    pub message: String,
}

impl Reject {
    pub fn new(reason: RejectReason, message: impl Into<String>) -> Self {
        Reject {
            reason,
            message: message.into(),
        }
    }

    /// Shorthand for `self.reason.code()`.
    pub const fn code(&self) -> &'static str {
        self.reason.code()
    }
}

/// Producer-supplied text, quoted and cut to [`MAX_EXCERPT_CHARS`] characters,
/// for use inside reject messages.
pub fn excerpt(text: &str) -> String {
    let mut chars = text.chars();
    let head: String = chars.by_ref().take(MAX_EXCERPT_CHARS).collect();
    if chars.next().is_some() {
        format!("{:?}…", head)
    } else {
        format!("{:?}", head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reason::is_snake_case;
    use std::collections::HashSet;

    /// The runtime gives this code itself (before the stage runs); it must
    /// be the validate table's.
    #[test]
    fn runtime_header_code_is_in_the_table() {
        assert_eq!(
            RejectReason::InvalidHeader.code(),
            crate::runtime::dlq::reasons::INVALID_HEADER
        );
    }

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for code in ALL_REASON_CODES {
            assert!(is_snake_case(code), "{code} is not snake_case");
            assert!(seen.insert(*code), "{code} appears twice");
        }
        assert_eq!(ALL_REASON_CODES.len(), RejectReason::ALL.len());
    }

    #[test]
    fn table_is_consistent() {
        for (reason, code) in RejectReason::ALL.iter().zip(ALL_REASON_CODES) {
            assert_eq!(reason.code(), *code);
            assert_eq!(RejectReason::from_code(code), Some(*reason));
            assert_eq!(reason.to_string(), *code);
            assert!(!reason.description().is_empty());
        }
        assert_eq!(RejectReason::from_code("no_such_code"), None);
        // Declared here: all but the runtime's invalid_header.
        let declared: Vec<&str> = ALL.iter().map(|r| r.code).collect();
        assert_eq!(declared, ALL_REASON_CODES[1..]);
    }

    #[test]
    fn briefed_codes_exist() {
        for code in [
            "empty_value",
            "malformed_json",
            "not_an_object",
            "unsupported_encoding",
            "avro_schema_not_found",
            "avro_decode_failed",
            "missing_attribute",
            "invalid_attribute",
            "unsupported_specversion",
            "invalid_time",
            "event_too_old",
            "event_in_future",
            "data_not_object",
            "unknown_event_type",
            "value_missing",
            "value_not_numeric",
            "value_not_finite",
            "value_negative",
            "value_out_of_range",
            "source_not_allowed",
            "signature_missing",
            "signature_invalid",
            "invalid_group_value",
            "invalid_header",
            "event_too_large",
            "signature_required",
        ] {
            assert!(ALL_REASON_CODES.contains(&code), "{code} missing");
        }
    }

    #[test]
    fn reject_displays_code_and_message() {
        let reject = Reject::new(
            RejectReason::MissingAttribute,
            "attribute `subject` is missing",
        );
        assert_eq!(
            reject.to_string(),
            "missing_attribute: attribute `subject` is missing"
        );
        assert_eq!(reject.code(), "missing_attribute");
        assert_eq!(
            serde_json::to_value(&reject).unwrap(),
            serde_json::json!({"reason": "missing_attribute", "message": "attribute `subject` is missing"})
        );
    }

    #[test]
    fn excerpt_quotes_and_truncates() {
        assert_eq!(excerpt("abc"), "\"abc\"");
        let long = "x".repeat(MAX_EXCERPT_CHARS + 10);
        let cut = excerpt(&long);
        assert!(cut.ends_with('…'));
        assert_eq!(cut.chars().filter(|c| *c == 'x').count(), MAX_EXCERPT_CHARS);
        assert_eq!(excerpt("a\nb"), "\"a\\nb\"");
    }
}
