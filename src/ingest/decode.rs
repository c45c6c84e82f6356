//! Decoding a raw Kafka record of the input topic into a [`CloudEvent`].
//!
//! Three encodings are accepted, detected in this order:
//!
//! 1. **Binary mode** (CloudEvents Kafka protocol binding): a `ce_specversion`
//!    header is present. The attributes are the `ce_<name>` headers (UTF-8,
//!    each at most once), `content-type` becomes `datacontenttype` and must be
//!    a JSON media type when present, and the value is `data`, as JSON.
//! 2. **Avro** in the Confluent wire format: the value starts with the magic
//!    byte `0` and has at least the 5-byte header (magic + big-endian schema
//!    id). The configured [`AvroDecoder`] resolves the schema and decodes the
//!    record, which is converted to JSON (see [`avro_to_json`]) and then read
//!    like a structured envelope; a `data` field holding a string is parsed as
//!    JSON text.
//! 3. **Structured mode** otherwise: the value is the JSON envelope. A
//!    `content-type` of `application/cloudevents-batch+json` is refused since
//!    one record must be one event (dedupe and lineage are per record).
//!
//! Decoding checks everything needed to build a typed [`CloudEvent`], in the
//! order of the stage's rules: the encoding, then required attributes
//! present and non-empty strings (absent, null or "" is `missing_attribute`;
//! not a string is `invalid_time` for `time`, `unsupported_specversion` for
//! `specversion`, `invalid_attribute` otherwise), then `specversion == "1.0"`,
//! then `time` is RFC 3339. Everything else is [`super::rules::validate`]'s job.
//!
//! Errors are split in two: a [`Reject`] is final (the record goes to the
//! dead-letter topic), while [`DecodeError::Retriable`] means the record
//! could not be judged yet (the schema registry is unreachable) and must be
//! retried without committing its offset.
//!
//! JSON numbers are kept exactly: serde_json's `arbitrary_precision` feature
//! is on, so a `Number` keeps its original text and no value ever passes
//! through a float.

use std::cell::OnceCell;
use std::sync::Arc;

use apache_avro::schema::ResolvedSchema;
use apache_avro::types::Value as AvroValue;
use apache_avro::Schema;
use chrono::{DateTime, NaiveDateTime, NaiveTime, Utc};
use serde_json::{Map, Number, Value};

use super::members::check_unique_members;
use super::reason::{excerpt, Reject, RejectReason};
use crate::contracts::{rfc3339_utc, CloudEvent, Encoding, CLOUDEVENTS_SPEC_VERSION};

/// Header whose presence selects binary mode.
pub const BINARY_MODE_MARKER_HEADER: &str = "ce_specversion";
/// Prefix of binary-mode attribute headers.
pub const BINARY_ATTRIBUTE_PREFIX: &str = "ce_";
/// The Kafka header carrying the media type (matched case-insensitively).
pub const CONTENT_TYPE_HEADER: &str = "content-type";
/// Media type of a CloudEvents JSON batch, which this stage refuses.
pub const CLOUDEVENTS_BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch+json";
/// First byte of the Confluent wire format.
pub const CONFLUENT_MAGIC_BYTE: u8 = 0;
/// Magic byte plus 4-byte big-endian schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;
/// The attributes every usage event must carry, in the order they are checked.
pub const REQUIRED_ATTRIBUTES: [&str; 6] =
    ["specversion", "id", "source", "type", "subject", "time"];
/// Deepest Avro nesting converted to JSON; matches serde_json's own recursion
/// limit so both encodings accept the same shapes.
pub const MAX_AVRO_DEPTH: usize = 128;
/// Widest Avro decimal accepted (bytes of two's-complement unscaled value):
/// ~154 digits, far beyond any real precision, and it keeps the quadratic
/// base conversion cheap.
pub const MAX_AVRO_DECIMAL_BYTES: usize = 64;
/// Largest Avro decimal scale accepted, to bound the text produced.
pub const MAX_AVRO_DECIMAL_SCALE: usize = 1000;

/// An example Avro schema for usage events (Confluent wire format on the
/// input topic): the CloudEvents attributes as fields and `data` as a
/// nested record. `time` is an RFC 3339 string; a `long` with logical type
/// `timestamp-millis` or `timestamp-micros` is accepted too.
pub const CLOUDEVENT_AVRO_SCHEMA_EXAMPLE: &str = r#"{
  "type": "record",
  "name": "UsageEvent",
  "namespace": "io.meterline",
  "doc": "A CloudEvents 1.0 usage event; see the meterline README.",
  "fields": [
    {"name": "specversion", "type": "string", "default": "1.0"},
    {"name": "id", "type": "string"},
    {"name": "source", "type": "string"},
    {"name": "type", "type": "string"},
    {"name": "subject", "type": "string", "doc": "The customer id."},
    {"name": "time", "type": "string", "doc": "RFC 3339 timestamp."},
    {"name": "datacontenttype", "type": ["null", "string"], "default": null},
    {
      "name": "data",
      "type": {
        "type": "record",
        "name": "UsageData",
        "fields": [
          {"name": "tokens", "type": "long"},
          {"name": "model", "type": "string"}
        ]
      }
    }
  ]
}"#;

/// A Kafka record as consumed from the input topic, borrowed from the client.
#[derive(Debug, Clone, Copy)]
pub struct RawRecord<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Headers in record order; Kafka allows repeated names and null values.
    pub headers: &'a [(String, Option<Vec<u8>>)],
}

/// The outcome of looking up a header that must appear at most once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    Absent,
    /// Present with a null value.
    Null,
    /// Present more than once (the count).
    Repeated(usize),
    Present(&'a [u8]),
}

impl<'a> RawRecord<'a> {
    /// Looks up header `name` (exact match) that should appear at most once.
    pub fn single_header(&self, name: &str) -> HeaderValue<'a> {
        self.single_header_by(|candidate| candidate == name)
    }

    fn single_header_by(&self, matches: impl Fn(&str) -> bool) -> HeaderValue<'a> {
        let mut found = self.headers.iter().filter(|(name, _)| matches(name));
        let first = found.next();
        let extra = found.count();
        match first {
            None => HeaderValue::Absent,
            Some(_) if extra > 0 => HeaderValue::Repeated(extra + 1),
            Some((_, None)) => HeaderValue::Null,
            Some((_, Some(bytes))) => HeaderValue::Present(bytes.as_slice()),
        }
    }

    fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(candidate, _)| candidate == name)
    }

    /// The value bytes, empty when the record has none.
    pub fn value_bytes(&self) -> &'a [u8] {
        self.value.unwrap_or_default()
    }
}

/// Why decoding did not produce an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Final: dead-letter the record.
    #[error(transparent)]
    Reject(#[from] Reject),
    /// Transient: retry the record later; do not commit past it.
    #[error("retriable decode failure: {0}")]
    Retriable(String),
}

/// Why an [`AvroDecoder`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvroDecodeError {
    /// The registry does not know the schema id (final).
    #[error("schema not found: {0}")]
    SchemaNotFound(String),
    /// The bytes do not decode with the writer schema (final).
    #[error("malformed Avro: {0}")]
    Malformed(String),
    /// The registry could not be asked (retriable).
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
}

/// Gives access to the writer schema of a decoded record, however the
/// decoder stores it: a registry client can hand out its cached schema
/// object (`Arc<ItsType>` coerces to `Arc<dyn WriterSchema>`) without
/// cloning the schema for every record.
pub trait WriterSchema: Send + Sync {
    fn avro_schema(&self) -> &Schema;
}

impl WriterSchema for Schema {
    fn avro_schema(&self) -> &Schema {
        self
    }
}

/// Decodes Confluent wire-format Avro (magic byte, schema id, Avro binary).
/// Implemented over a schema registry client in production and over a fixed
/// schema in tests.
pub trait AvroDecoder: Send + Sync {
    /// Decodes `wire`, the whole Kafka value including the 5-byte header.
    fn decode(&self, wire: &[u8]) -> Result<AvroValue, AvroDecodeError>;

    /// Like [`AvroDecoder::decode`], also returning the writer schema when the
    /// decoder has it; this is what [`decode`](fn@decode) calls. The schema
    /// is needed to render the `decimal` logical type: apache_avro's decoded
    /// decimal holds only the unscaled integer, the scale lives in the
    /// schema. Without it a decimal is refused (`avro_decode_failed`) rather
    /// than guessed. Registry-backed decoders should override this; the
    /// default returns no schema.
    fn decode_with_schema(
        &self,
        wire: &[u8],
    ) -> Result<(AvroValue, Option<Arc<dyn WriterSchema>>), AvroDecodeError> {
        self.decode(wire).map(|value| (value, None))
    }
}

/// Which encoding [`decode`] will use for `raw`; available separately so
/// dead-letter records and metrics can be labelled even when decoding fails.
pub fn detect_encoding(raw: &RawRecord) -> Encoding {
    let value = raw.value_bytes();
    if raw.has_header(BINARY_MODE_MARKER_HEADER) {
        Encoding::Binary
    } else if value.len() >= CONFLUENT_HEADER_LEN && value.first() == Some(&CONFLUENT_MAGIC_BYTE) {
        Encoding::Avro
    } else {
        Encoding::Structured
    }
}

/// Decodes one input record; see the module docs for detection and checks.
pub fn decode(
    raw: &RawRecord,
    avro: Option<&dyn AvroDecoder>,
) -> Result<(CloudEvent, Encoding), DecodeError> {
    let value = raw.value_bytes();
    if value.is_empty() {
        return Err(reject(RejectReason::EmptyValue, "the record has no value").into());
    }
    let encoding = detect_encoding(raw);
    let event = match encoding {
        Encoding::Binary => decode_binary(raw, value)?,
        Encoding::Avro => match avro {
            Some(decoder) => decode_avro(value, decoder)?,
            None => {
                return Err(reject(
                    RejectReason::UnsupportedEncoding,
                    "the value is in the Confluent Avro wire format but no schema registry is configured",
                )
                .into())
            }
        },
        Encoding::Structured => decode_structured(raw, value)?,
    };
    Ok((event, encoding))
}

fn reject(reason: RejectReason, message: impl Into<String>) -> Reject {
    Reject::new(reason, message)
}

fn content_type(raw: &RawRecord) -> Result<Option<String>, Reject> {
    match raw.single_header_by(|name| name.eq_ignore_ascii_case(CONTENT_TYPE_HEADER)) {
        HeaderValue::Absent | HeaderValue::Null => Ok(None),
        HeaderValue::Repeated(count) => Err(reject(
            RejectReason::InvalidAttribute,
            format!("header `{CONTENT_TYPE_HEADER}` appears {count} times"),
        )),
        HeaderValue::Present(bytes) => match std::str::from_utf8(bytes) {
            Ok("") => Ok(None),
            Ok(text) => Ok(Some(text.to_owned())),
            Err(_) => Err(reject(
                RejectReason::InvalidAttribute,
                format!("header `{CONTENT_TYPE_HEADER}` is not UTF-8"),
            )),
        },
    }
}

/// The media type without parameters, lowercased: `Application/JSON; charset=utf-8` -> `application/json`.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_json_media_type(media_type: &str) -> bool {
    media_type == "application/json" || media_type == "text/json" || media_type.ends_with("+json")
}

/// JSON text as one value, refused when it is not JSON or when an object
/// in it names a member twice ([`super::members`]).
fn parse_json(bytes: &[u8], what: &str) -> Result<Value, Reject> {
    let value = serde_json::from_slice(bytes).map_err(|err| {
        reject(
            RejectReason::MalformedJson,
            format!("{what} is not valid JSON: {err}"),
        )
    })?;
    check_unique_members(bytes)
        .map_err(|why| reject(RejectReason::DuplicateMember, format!("{what}: {why}")))?;
    Ok(value)
}

fn decode_structured(raw: &RawRecord, value: &[u8]) -> Result<CloudEvent, Reject> {
    if let Some(content_type) = content_type(raw)? {
        if media_type(&content_type) == CLOUDEVENTS_BATCH_MEDIA_TYPE {
            return Err(reject(
                RejectReason::UnsupportedEncoding,
                "CloudEvents batches are not accepted: send one event per record",
            ));
        }
    }
    match parse_json(value, "the structured-mode envelope")? {
        Value::Object(envelope) => event_from_object(envelope),
        other => Err(reject(
            RejectReason::NotAnObject,
            format!(
                "the structured-mode envelope is a JSON {}, not an object",
                json_kind(&other)
            ),
        )),
    }
}

fn decode_binary(raw: &RawRecord, value: &[u8]) -> Result<CloudEvent, Reject> {
    let content_type = content_type(raw)?;
    if let Some(content_type) = &content_type {
        if !is_json_media_type(&media_type(content_type)) {
            return Err(reject(
                RejectReason::UnsupportedEncoding,
                format!(
                    "binary-mode data must be JSON, content-type is {}",
                    excerpt(content_type)
                ),
            ));
        }
    }
    let data = parse_json(value, "the binary-mode value (the event data)")?;
    let mut content_type = content_type;
    build_event(
        |name| {
            if name == "datacontenttype" {
                return content_type
                    .take()
                    .map_or(AttributeValue::Absent, AttributeValue::Text);
            }
            let header = format!("{BINARY_ATTRIBUTE_PREFIX}{name}");
            match raw.single_header(&header) {
                HeaderValue::Absent | HeaderValue::Null => AttributeValue::Absent,
                HeaderValue::Repeated(_) => AttributeValue::Repeated,
                HeaderValue::Present(bytes) => match std::str::from_utf8(bytes) {
                    Ok(text) => AttributeValue::Text(text.to_owned()),
                    Err(_) => AttributeValue::Invalid("is not UTF-8"),
                },
            }
        },
        data,
    )
}

fn decode_avro(wire: &[u8], decoder: &dyn AvroDecoder) -> Result<CloudEvent, DecodeError> {
    let (value, schema) = decoder.decode_with_schema(wire).map_err(|err| match err {
        AvroDecodeError::SchemaNotFound(detail) => DecodeError::Reject(reject(
            RejectReason::AvroSchemaNotFound,
            format!("schema not found: {detail}"),
        )),
        AvroDecodeError::Malformed(detail) => DecodeError::Reject(reject(
            RejectReason::AvroDecodeFailed,
            format!("Avro decoding failed: {detail}"),
        )),
        AvroDecodeError::Unavailable(detail) => {
            DecodeError::Retriable(format!("schema registry unavailable: {detail}"))
        }
    })?;
    let schema = schema.as_deref().map(WriterSchema::avro_schema);
    let json = avro_to_json(&value, schema).map_err(|detail| {
        reject(
            RejectReason::AvroDecodeFailed,
            format!("Avro value cannot be converted to JSON: {detail}"),
        )
    })?;
    let mut record = match json {
        Value::Object(record) => record,
        other => {
            return Err(reject(
                RejectReason::NotAnObject,
                format!("the Avro value is a {}, not a record", json_kind(&other)),
            )
            .into())
        }
    };
    // Producers whose schema cannot describe every payload send `data` as JSON text.
    if let Some(Value::String(text)) = record.get("data") {
        let parsed = parse_json(text.as_bytes(), "the Avro `data` string")?;
        record.insert("data".to_owned(), parsed);
    }
    Ok(event_from_object(record)?)
}

/// An attribute as found in an envelope, record or header.
enum AttributeValue {
    Absent,
    Text(String),
    /// Present but not a string (binary mode: not UTF-8); the text completes
    /// "attribute `x` ...".
    Invalid(&'static str),
    /// Binary mode: its header appears more than once.
    Repeated,
}

/// The code of an attribute that is present but not a string: the code of
/// its own value check where it has one (`time` -> `invalid_time`,
/// `specversion` -> `unsupported_specversion`), `invalid_attribute` otherwise.
/// See the classification table in the README ("Reason codes").
fn not_a_string_reason(name: &str) -> RejectReason {
    match name {
        "time" => RejectReason::InvalidTime,
        "specversion" => RejectReason::UnsupportedSpecversion,
        _ => RejectReason::InvalidAttribute,
    }
}

fn event_from_object(mut envelope: Map<String, Value>) -> Result<CloudEvent, Reject> {
    let data = envelope.remove("data").filter(|d| !d.is_null());
    let base64 = envelope.remove("data_base64").filter(|d| !d.is_null());
    let content_type = envelope.get("datacontenttype").and_then(Value::as_str);
    let (data, unusable) = match (data, base64) {
        (Some(data), None) => (data, None),
        (None, Some(encoded)) => match json_from_base64(&encoded, content_type) {
            Ok(data) => (data, None),
            Err(why) => (Value::Null, Some(why)),
        },
        (None, None) => (Value::Null, None),
        (Some(data), Some(_)) => (
            data,
            Some(Unusable::Data(
                "data and data_base64 are both present (CloudEvents allows one)".to_owned(),
            )),
        ),
    };
    // The attributes are checked first, in the stage's rule order.
    let event = build_event(
        |name| match envelope.remove(name) {
            None | Some(Value::Null) => AttributeValue::Absent,
            Some(Value::String(text)) => AttributeValue::Text(text),
            Some(_) => AttributeValue::Invalid("is not a string"),
        },
        data,
    )?;
    match unusable {
        Some(why) => Err(why.reject()),
        None => Ok(event),
    }
}

/// The JSON value that a structured-mode event's `data_base64` carries
/// (CloudEvents' form for binary data, which some SDKs use for any bytes),
/// when its `datacontenttype` is absent or JSON; else why it is unusable.
fn json_from_base64(encoded: &Value, content_type: Option<&str>) -> Result<Value, Unusable> {
    use base64::Engine as _;
    let media = content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_json = media.is_empty()
        || media == "application/json"
        || media == "text/json"
        || media.ends_with("+json");
    if !is_json {
        return Err(Unusable::Data(format!(
            "data_base64 with datacontenttype {}: only JSON data can be metered",
            excerpt(&media)
        )));
    }
    let text = encoded
        .as_str()
        .ok_or_else(|| Unusable::Data("data_base64 is not a string".to_owned()))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| Unusable::Data(format!("data_base64 is not base64: {e}")))?;
    let data = serde_json::from_slice(&bytes)
        .map_err(|e| Unusable::Data(format!("data_base64 does not hold JSON: {e}")))?;
    check_unique_members(&bytes)
        .map_err(|why| Unusable::DuplicateMember(format!("the JSON of data_base64: {why}")))?;
    Ok(data)
}

/// Why an event's data cannot be metered.
enum Unusable {
    /// `data_not_object`.
    Data(String),
    /// `duplicate_member`.
    DuplicateMember(String),
}

impl Unusable {
    fn reject(self) -> Reject {
        match self {
            Unusable::Data(why) => reject(RejectReason::DataNotObject, why),
            Unusable::DuplicateMember(why) => reject(RejectReason::DuplicateMember, why),
        }
    }
}

/// A required attribute: absent, null and "" are `missing_attribute`
/// (CloudEvents requires non-empty strings, so empty is absent); present but
/// not a string is [`not_a_string_reason`]; a repeated header is
/// `invalid_attribute`.
fn required(name: &str, value: AttributeValue) -> Result<String, Reject> {
    match value {
        AttributeValue::Absent => Err(reject(
            RejectReason::MissingAttribute,
            format!("attribute `{name}` is missing"),
        )),
        AttributeValue::Text(text) if text.is_empty() => Err(reject(
            RejectReason::MissingAttribute,
            format!("attribute `{name}` is empty"),
        )),
        AttributeValue::Invalid(why) => Err(reject(
            not_a_string_reason(name),
            format!("attribute `{name}` {why}"),
        )),
        AttributeValue::Repeated => Err(reject(
            RejectReason::InvalidAttribute,
            format!("attribute `{name}` is repeated in the headers"),
        )),
        AttributeValue::Text(text) => match forbidden_char(&text) {
            Some(c) => Err(reject(not_a_string_reason(name), forbidden_text(name, c))),
            None => Ok(text),
        },
    }
}

/// The first character CloudEvents 1.0 forbids in a String attribute (its
/// type system: the control characters U+0000-U+001F and U+007F-U+009F, and
/// the Unicode noncharacters; a Rust string holds no surrogate). Such an id
/// or subject would travel on as a key, a ledger value and a CSV cell.
pub(super) fn forbidden_char(text: &str) -> Option<char> {
    text.chars().find(|&c| {
        let code = u32::from(c);
        c.is_control() || (0xFDD0..=0xFDEF).contains(&code) || code & 0xFFFE == 0xFFFE
    })
}

pub(super) fn forbidden_text(name: &str, c: char) -> String {
    format!(
        "attribute `{name}` holds U+{:04X}, a character CloudEvents forbids in strings (control characters and noncharacters)",
        u32::from(c)
    )
}

/// Checks attributes in the stage's rule order and builds the event.
fn build_event(
    mut attribute: impl FnMut(&'static str) -> AttributeValue,
    data: Value,
) -> Result<CloudEvent, Reject> {
    let [specversion, id, source, event_type, subject, time_raw] = {
        let mut values: [String; REQUIRED_ATTRIBUTES.len()] = Default::default();
        for (slot, name) in values.iter_mut().zip(REQUIRED_ATTRIBUTES) {
            *slot = required(name, attribute(name))?;
        }
        values
    };
    if specversion != CLOUDEVENTS_SPEC_VERSION {
        return Err(reject(
            RejectReason::UnsupportedSpecversion,
            format!(
                "specversion is {}, only \"{CLOUDEVENTS_SPEC_VERSION}\" is supported",
                excerpt(&specversion)
            ),
        ));
    }
    let time = parse_time(&time_raw)?;
    let datacontenttype = match attribute("datacontenttype") {
        AttributeValue::Absent => None,
        AttributeValue::Text(text) if text.is_empty() => None,
        AttributeValue::Text(text) => match forbidden_char(&text) {
            Some(c) => {
                return Err(reject(
                    RejectReason::InvalidAttribute,
                    forbidden_text("datacontenttype", c),
                ))
            }
            None => Some(text),
        },
        AttributeValue::Invalid(why) => {
            return Err(reject(
                RejectReason::InvalidAttribute,
                format!("attribute `datacontenttype` {why}"),
            ))
        }
        AttributeValue::Repeated => {
            return Err(reject(
                RejectReason::InvalidAttribute,
                "attribute `datacontenttype` is repeated in the headers",
            ))
        }
    };
    Ok(CloudEvent {
        specversion,
        id,
        source,
        event_type,
        subject,
        time,
        time_raw: Some(time_raw),
        datacontenttype,
        data,
    })
}

/// Parses an RFC 3339 timestamp (any offset) into UTC.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, Reject> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|err| {
            reject(
                RejectReason::InvalidTime,
                format!("time {} is not RFC 3339: {err}", excerpt(text)),
            )
        })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Converts a decoded Avro value to JSON.
///
/// * records and maps -> objects (keys sorted), arrays -> arrays, unions ->
///   their branch, null/boolean/string -> themselves, enums -> their symbol;
/// * int and long -> JSON numbers;
/// * float and double -> JSON numbers written with the shortest decimal text
///   that reads back as the same float (Rust's `Display`), so an Avro float
///   `0.1` becomes `0.1`, not `0.100000001490116…`; NaN and infinities,
///   which JSON cannot hold, become the strings `"NaN"`, `"Infinity"`,
///   `"-Infinity"` (and are then refused as `value_not_finite` if metered);
/// * decimal -> an exact numeric string such as `"12.50"` (needs `schema`
///   for the scale); big-decimal -> its exact numeric string;
/// * timestamp-millis/micros/nanos -> RFC 3339 strings in UTC; local
///   timestamps -> ISO 8601 text without offset; date -> `YYYY-MM-DD`;
///   time-millis/micros -> `HH:MM:SS.fff(fff)`;
/// * uuid -> its hyphenated text; bytes and fixed -> lowercase hex;
///   duration -> `{"months", "days", "millis"}`.
pub fn avro_to_json(value: &AvroValue, schema: Option<&Schema>) -> Result<Value, String> {
    Converter {
        root: schema,
        names: OnceCell::new(),
    }
    .convert(value, schema, 0)
}

/// Walks an Avro value alongside its schema (when known) so logical types
/// whose meaning lives in the schema (decimal scale) can be rendered.
struct Converter<'s> {
    root: Option<&'s Schema>,
    /// Named types of `root`, resolved on the first `Ref` met: most records
    /// never need them, and resolving walks the whole schema. `None` inside
    /// when they do not all resolve (e.g. registry references the decoder did
    /// not inline); only a decimal under an unresolved name then fails.
    names: OnceCell<Option<ResolvedSchema<'s>>>,
}

impl<'s> Converter<'s> {
    fn resolve<'x>(&'x self, schema: Option<&'x Schema>) -> Option<&'x Schema>
    where
        's: 'x,
    {
        match schema {
            Some(Schema::Ref { name }) => self
                .names
                .get_or_init(|| {
                    self.root
                        .and_then(|root| ResolvedSchema::try_from(root).ok())
                })
                .as_ref()
                .and_then(|resolved| resolved.get_names().get(name).copied()),
            other => other,
        }
    }

    /// JSON for one Avro value under its writer schema (None: unknown).
    fn convert(
        &self,
        value: &AvroValue,
        schema: Option<&Schema>,
        depth: usize,
    ) -> Result<Value, String> {
        if depth > MAX_AVRO_DEPTH {
            return Err(format!("nesting is deeper than {MAX_AVRO_DEPTH}"));
        }
        let schema = self.resolve(schema);
        let next = depth + 1;
        Ok(match value {
            AvroValue::Null => Value::Null,
            AvroValue::Boolean(b) => Value::Bool(*b),
            AvroValue::Int(i) => Value::Number(Number::from(*i)),
            AvroValue::Long(i) => Value::Number(Number::from(*i)),
            AvroValue::Float(f) => {
                float_to_json(f.is_nan(), f.is_sign_negative(), f.is_infinite(), || {
                    f.to_string()
                })?
            }
            AvroValue::Double(f) => {
                float_to_json(f.is_nan(), f.is_sign_negative(), f.is_infinite(), || {
                    f.to_string()
                })?
            }
            AvroValue::Bytes(bytes) | AvroValue::Fixed(_, bytes) => {
                Value::String(hex::encode(bytes))
            }
            AvroValue::String(text) => Value::String(text.clone()),
            AvroValue::Enum(_, symbol) => Value::String(symbol.clone()),
            AvroValue::Uuid(uuid) => Value::String(uuid.to_string()),
            AvroValue::Union(index, inner) => self.convert_union(*index, inner, schema, next)?,
            AvroValue::Array(items) => self.convert_array(items, schema, next)?,
            AvroValue::Map(entries) => self.convert_map(entries, schema, next)?,
            AvroValue::Record(fields) => self.convert_record(fields, schema, next)?,
            AvroValue::Decimal(decimal) => decimal_json(decimal, schema)?,
            AvroValue::BigDecimal(decimal) => Value::String(decimal.to_string()),
            AvroValue::Date(days) => date_json(*days)?,
            AvroValue::TimeMillis(millis) => time_millis_json(*millis)?,
            AvroValue::TimeMicros(micros) => time_micros_json(*micros)?,
            AvroValue::TimestampMillis(millis) => Value::String(rfc3339_utc::format(
                &DateTime::from_timestamp_millis(*millis)
                    .ok_or_else(|| format!("timestamp-millis {millis} is out of range"))?,
            )),
            AvroValue::TimestampMicros(micros) => Value::String(rfc3339_utc::format(
                &DateTime::from_timestamp_micros(*micros)
                    .ok_or_else(|| format!("timestamp-micros {micros} is out of range"))?,
            )),
            AvroValue::TimestampNanos(nanos) => {
                Value::String(rfc3339_utc::format(&DateTime::from_timestamp_nanos(*nanos)))
            }
            AvroValue::LocalTimestampMillis(millis) => local_timestamp(
                DateTime::from_timestamp_millis(*millis),
                "local-timestamp-millis",
                *millis,
            )?,
            AvroValue::LocalTimestampMicros(micros) => local_timestamp(
                DateTime::from_timestamp_micros(*micros),
                "local-timestamp-micros",
                *micros,
            )?,
            AvroValue::LocalTimestampNanos(nanos) => local_timestamp(
                Some(DateTime::from_timestamp_nanos(*nanos)),
                "local-timestamp-nanos",
                *nanos,
            )?,
            AvroValue::Duration(duration) => duration_json(duration),
        })
    }

    /// The chosen branch of a union, under its branch schema when known.
    fn convert_union(
        &self,
        index: u32,
        inner: &AvroValue,
        schema: Option<&Schema>,
        next: usize,
    ) -> Result<Value, String> {
        let branch = match schema {
            Some(Schema::Union(union)) => usize::try_from(index)
                .ok()
                .and_then(|i| union.variants().get(i)),
            _ => None,
        };
        self.convert(inner, branch, next)
    }

    fn convert_array(
        &self,
        items: &[AvroValue],
        schema: Option<&Schema>,
        next: usize,
    ) -> Result<Value, String> {
        let item_schema = match schema {
            Some(Schema::Array(array)) => Some(array.items.as_ref()),
            _ => None,
        };
        Ok(Value::Array(
            items
                .iter()
                .map(|item| self.convert(item, item_schema, next))
                .collect::<Result<_, _>>()?,
        ))
    }

    fn convert_map(
        &self,
        entries: &std::collections::HashMap<String, AvroValue>,
        schema: Option<&Schema>,
        next: usize,
    ) -> Result<Value, String> {
        let value_schema = match schema {
            Some(Schema::Map(map)) => Some(map.types.as_ref()),
            _ => None,
        };
        let mut object = Map::new();
        for (key, entry) in entries {
            object.insert(key.clone(), self.convert(entry, value_schema, next)?);
        }
        Ok(Value::Object(object))
    }

    /// A record's fields, each under its field schema when known.
    fn convert_record(
        &self,
        fields: &[(String, AvroValue)],
        schema: Option<&Schema>,
        next: usize,
    ) -> Result<Value, String> {
        let record_schema = match schema {
            Some(Schema::Record(record)) => Some(record),
            _ => None,
        };
        let mut object = Map::new();
        for (name, field) in fields {
            let field_schema = record_schema
                .and_then(|record| record.lookup.get(name))
                .and_then(|index| record_schema.and_then(|record| record.fields.get(*index)))
                .map(|field| &field.schema);
            object.insert(name.clone(), self.convert(field, field_schema, next)?);
        }
        Ok(Value::Object(object))
    }
}

/// A decimal as exact text: its scale comes from the writer schema.
fn decimal_json(decimal: &apache_avro::Decimal, schema: Option<&Schema>) -> Result<Value, String> {
    let scale = match schema {
        Some(Schema::Decimal(decimal_schema)) => decimal_schema.scale,
        _ => {
            return Err("decimal value without its writer schema: the scale is unknown".to_owned())
        }
    };
    let bytes = Vec::<u8>::try_from(decimal).map_err(|err| format!("decimal bytes: {err}"))?;
    Ok(Value::String(decimal_text(&bytes, scale)?))
}

/// A date (days since the epoch) as `YYYY-MM-DD`.
fn date_json(days: i32) -> Result<Value, String> {
    let date = DateTime::from_timestamp(i64::from(days) * SECONDS_PER_DAY, 0)
        .ok_or_else(|| format!("date {days} is out of range"))?;
    Ok(Value::String(date.format("%Y-%m-%d").to_string()))
}

/// A time-millis as `HH:MM:SS.mmm`.
fn time_millis_json(millis: i32) -> Result<Value, String> {
    let millis = u32::try_from(millis).map_err(|_| format!("time-millis {millis} is negative"))?;
    let time =
        NaiveTime::from_num_seconds_from_midnight_opt(millis / 1_000, (millis % 1_000) * 1_000_000)
            .ok_or_else(|| format!("time-millis {millis} is out of range"))?;
    Ok(Value::String(time.format("%H:%M:%S%.3f").to_string()))
}

/// A time-micros as `HH:MM:SS.uuuuuu`.
fn time_micros_json(micros: i64) -> Result<Value, String> {
    let out_of_range = || format!("time-micros {micros} is out of range");
    let seconds = u32::try_from(micros / 1_000_000).map_err(|_| out_of_range())?;
    let nanos = u32::try_from((micros % 1_000_000) * 1_000).map_err(|_| out_of_range())?;
    let time =
        NaiveTime::from_num_seconds_from_midnight_opt(seconds, nanos).ok_or_else(out_of_range)?;
    Ok(Value::String(time.format("%H:%M:%S%.6f").to_string()))
}

/// A duration as `{months, days, millis}`.
fn duration_json(duration: &apache_avro::Duration) -> Value {
    let mut object = Map::new();
    object.insert(
        "months".to_owned(),
        Value::Number(u32::from(duration.months()).into()),
    );
    object.insert(
        "days".to_owned(),
        Value::Number(u32::from(duration.days()).into()),
    );
    object.insert(
        "millis".to_owned(),
        Value::Number(u32::from(duration.millis()).into()),
    );
    Value::Object(object)
}

const SECONDS_PER_DAY: i64 = 86_400;

fn local_timestamp(instant: Option<DateTime<Utc>>, kind: &str, raw: i64) -> Result<Value, String> {
    let naive: NaiveDateTime = instant
        .ok_or_else(|| format!("{kind} {raw} is out of range"))?
        .naive_utc();
    Ok(Value::String(
        naive.format("%Y-%m-%dT%H:%M:%S%.f").to_string(),
    ))
}

/// JSON for an Avro float or double; `text` is only asked for finite values.
fn float_to_json(
    is_nan: bool,
    negative: bool,
    infinite: bool,
    text: impl FnOnce() -> String,
) -> Result<Value, String> {
    if is_nan {
        return Ok(Value::String("NaN".to_owned()));
    }
    if infinite {
        return Ok(Value::String(
            if negative { "-Infinity" } else { "Infinity" }.to_owned(),
        ));
    }
    let text = text();
    text.parse::<Number>()
        .map(Value::Number)
        .map_err(|err| format!("float text {text} is not a JSON number: {err}"))
}

/// Exact decimal text of a big-endian two's-complement unscaled value with
/// `scale` fractional digits: `([0x04, 0xE2], 2)` -> `"12.50"`.
fn decimal_text(twos_complement: &[u8], scale: usize) -> Result<String, String> {
    if twos_complement.len() > MAX_AVRO_DECIMAL_BYTES {
        return Err(format!(
            "decimal of {} bytes is wider than {MAX_AVRO_DECIMAL_BYTES}",
            twos_complement.len()
        ));
    }
    if scale > MAX_AVRO_DECIMAL_SCALE {
        return Err(format!(
            "decimal scale {scale} exceeds {MAX_AVRO_DECIMAL_SCALE}"
        ));
    }
    let negative = twos_complement.first().is_some_and(|b| b & 0x80 != 0);
    let mut magnitude = twos_complement.to_vec();
    if negative {
        // Two's complement negation: invert, then add one from the least significant byte.
        for byte in magnitude.iter_mut() {
            *byte = !*byte;
        }
        for byte in magnitude.iter_mut().rev() {
            let (sum, carry) = byte.overflowing_add(1);
            *byte = sum;
            if !carry {
                break;
            }
        }
    }
    // Repeated division by ten, collecting digits least significant first.
    let mut digits = Vec::new();
    while magnitude.iter().any(|b| *b != 0) {
        let mut remainder: u16 = 0;
        for byte in magnitude.iter_mut() {
            let current = (remainder << 8) | u16::from(*byte);
            *byte =
                u8::try_from(current / 10).map_err(|_| "decimal conversion overflow".to_owned())?;
            remainder = current % 10;
        }
        digits.push(
            b'0' + u8::try_from(remainder).map_err(|_| "decimal conversion overflow".to_owned())?,
        );
    }
    let is_zero = digits.is_empty();
    // At least one integer digit: pad to scale + 1 digits.
    while digits.len() < scale + 1 {
        digits.push(b'0');
    }
    digits.reverse();
    let (integer, fraction) = digits.split_at(digits.len() - scale);
    let mut text = String::with_capacity(digits.len() + 2);
    if negative && !is_zero {
        text.push('-');
    }
    text.push_str(&String::from_utf8_lossy(integer));
    if scale > 0 {
        text.push('.');
        text.push_str(&String::from_utf8_lossy(fraction));
    }
    Ok(text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use apache_avro::reader::datum::GenericDatumReader;
    use apache_avro::types::Record;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::Decimal as AvroDecimal;

    fn to_avro_datum(
        schema: &Schema,
        value: impl Into<AvroValue>,
    ) -> Result<Vec<u8>, apache_avro::Error> {
        GenericDatumWriter::builder(schema)
            .build()?
            .write_value_to_vec(value)
    }
    use serde_json::json;
    use std::collections::{BTreeMap, HashMap};

    /// A registry over fixed schemas: ids in `unavailable` simulate a
    /// registry outage; unknown ids are "not found".
    pub(crate) struct FakeRegistry {
        pub(crate) schemas: BTreeMap<u32, Arc<Schema>>,
        pub(crate) unavailable: Vec<u32>,
    }

    pub(crate) const EXAMPLE_SCHEMA_ID: u32 = 7;
    pub(crate) const OUTAGE_SCHEMA_ID: u32 = 99;

    impl FakeRegistry {
        pub(crate) fn example() -> Self {
            let mut schemas = BTreeMap::new();
            schemas.insert(
                EXAMPLE_SCHEMA_ID,
                Arc::new(Schema::parse_str(CLOUDEVENT_AVRO_SCHEMA_EXAMPLE).unwrap()),
            );
            FakeRegistry {
                schemas,
                unavailable: vec![OUTAGE_SCHEMA_ID],
            }
        }

        pub(crate) fn with(mut self, id: u32, schema: &str) -> Self {
            self.schemas
                .insert(id, Arc::new(Schema::parse_str(schema).unwrap()));
            self
        }

        fn lookup<'w>(&self, wire: &'w [u8]) -> Result<(Arc<Schema>, &'w [u8]), AvroDecodeError> {
            let header = wire.get(..CONFLUENT_HEADER_LEN).ok_or_else(|| {
                AvroDecodeError::Malformed("shorter than the wire-format header".to_owned())
            })?;
            if header[0] != CONFLUENT_MAGIC_BYTE {
                return Err(AvroDecodeError::Malformed("bad magic byte".to_owned()));
            }
            let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            if self.unavailable.contains(&id) {
                return Err(AvroDecodeError::Unavailable(
                    "connection refused".to_owned(),
                ));
            }
            let schema = self
                .schemas
                .get(&id)
                .ok_or_else(|| AvroDecodeError::SchemaNotFound(format!("id {id}")))?;
            Ok((schema.clone(), &wire[CONFLUENT_HEADER_LEN..]))
        }
    }

    impl AvroDecoder for FakeRegistry {
        fn decode(&self, wire: &[u8]) -> Result<AvroValue, AvroDecodeError> {
            self.decode_with_schema(wire).map(|(value, _)| value)
        }

        fn decode_with_schema(
            &self,
            wire: &[u8],
        ) -> Result<(AvroValue, Option<Arc<dyn WriterSchema>>), AvroDecodeError> {
            let (schema, mut body) = self.lookup(wire)?;
            let value = GenericDatumReader::builder(&schema)
                .build()
                .and_then(|reader| reader.read_value(&mut body))
                .map_err(|err| AvroDecodeError::Malformed(err.to_string()))?;
            if !body.is_empty() {
                return Err(AvroDecodeError::Malformed(format!(
                    "{} trailing bytes",
                    body.len()
                )));
            }
            Ok((value, Some(schema as Arc<dyn WriterSchema>)))
        }
    }

    /// A decoder that hides the schema, like one that only implements `decode`.
    struct SchemaLess(FakeRegistry);

    impl AvroDecoder for SchemaLess {
        fn decode(&self, wire: &[u8]) -> Result<AvroValue, AvroDecodeError> {
            self.0.decode(wire)
        }
    }

    pub(crate) fn wire(id: u32, datum: &[u8]) -> Vec<u8> {
        let mut bytes = vec![CONFLUENT_MAGIC_BYTE];
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(datum);
        bytes
    }

    /// A wire-format value of the example schema.
    pub(crate) fn example_avro(registry: &FakeRegistry, time: &str, tokens: i64) -> Vec<u8> {
        let schema = registry.schemas[&EXAMPLE_SCHEMA_ID].clone();
        let Schema::Record(record_schema) = schema.as_ref() else {
            panic!("example schema is a record")
        };
        let data_schema = &record_schema.fields[record_schema.lookup["data"]].schema;
        let mut data = Record::new(data_schema).unwrap();
        data.put("tokens", tokens);
        data.put("model", "gpt-x");
        let mut record = Record::new(&schema).unwrap();
        record.put("specversion", "1.0");
        record.put("id", "evt-avro-1");
        record.put("source", "svc/avro");
        record.put("type", "llm.tokens");
        record.put("subject", "cust-9");
        record.put("time", time);
        record.put(
            "datacontenttype",
            AvroValue::Union(1, Box::new(AvroValue::String("application/json".into()))),
        );
        record.put("data", data);
        wire(EXAMPLE_SCHEMA_ID, &to_avro_datum(&schema, record).unwrap())
    }

    fn record<'a>(value: &'a [u8], headers: &'a [(String, Option<Vec<u8>>)]) -> RawRecord<'a> {
        RawRecord {
            key: None,
            value: Some(value),
            headers,
        }
    }

    fn header(name: &str, value: &str) -> (String, Option<Vec<u8>>) {
        (name.to_owned(), Some(value.as_bytes().to_vec()))
    }

    pub(crate) fn binary_headers(time: &str) -> Vec<(String, Option<Vec<u8>>)> {
        vec![
            header("ce_specversion", "1.0"),
            header("ce_id", "evt-bin-1"),
            header("ce_source", "svc/bin"),
            header("ce_type", "llm.tokens"),
            header("ce_subject", "cust-7"),
            header("ce_time", time),
            header("content-type", "application/json"),
        ]
    }

    const TIME: &str = "2024-05-01T10:00:00Z";

    fn envelope() -> Value {
        json!({
            "specversion": "1.0",
            "id": "evt-1",
            "source": "svc/api",
            "type": "llm.tokens",
            "subject": "cust-1",
            "time": TIME,
            "datacontenttype": "application/json",
            "data": {"tokens": 12, "model": "m"}
        })
    }

    fn decode_json(value: &Value) -> Result<(CloudEvent, Encoding), DecodeError> {
        let bytes = serde_json::to_vec(value).unwrap();
        decode(&record(&bytes, &[]), None)
    }

    fn reject_code(result: Result<(CloudEvent, Encoding), DecodeError>) -> &'static str {
        match result {
            Err(DecodeError::Reject(reject)) => reject.code(),
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    #[test]
    fn structured_mode_decodes() {
        let (event, encoding) = decode_json(&envelope()).unwrap();
        assert_eq!(encoding, Encoding::Structured);
        assert_eq!(event.id, "evt-1");
        assert_eq!(event.source, "svc/api");
        assert_eq!(event.event_type, "llm.tokens");
        assert_eq!(event.subject, "cust-1");
        assert_eq!(event.time.to_rfc3339(), "2024-05-01T10:00:00+00:00");
        assert_eq!(event.time_raw.as_deref(), Some(TIME));
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(event.data, json!({"tokens": 12, "model": "m"}));
    }

    #[test]
    fn structured_mode_accepts_cloudevents_content_type() {
        let bytes = serde_json::to_vec(&envelope()).unwrap();
        let headers = [header(
            "content-type",
            "application/cloudevents+json; charset=UTF-8",
        )];
        let (_, encoding) = decode(&record(&bytes, &headers), None).unwrap();
        assert_eq!(encoding, Encoding::Structured);
    }

    #[test]
    fn data_base64_holding_json_is_the_events_data_and_anything_else_is_refused() {
        use base64::Engine as _;
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let with = |extra: Value| {
            let mut e = envelope();
            let o = e.as_object_mut().unwrap();
            o.remove("data");
            o.extend(extra.as_object().unwrap().clone());
            serde_json::to_vec(&e).unwrap()
        };
        let ok = with(json!({"data_base64": b64(r#"{"tokens": 12.50, "model": "m"}"#)}));
        let (event, _) = decode(&record(&ok, &[]), None).unwrap();
        let sent: Value = serde_json::from_str(r#"{"tokens": 12.50, "model": "m"}"#).unwrap();
        assert_eq!(event.data, sent);
        assert_eq!(
            event.data["tokens"].to_string(),
            "12.50",
            "the number's text is kept"
        );
        let typed = with(
            json!({"datacontenttype": "application/cloudevents+json; charset=utf-8",
                                "data_base64": b64(r#"{"tokens": 1}"#)}),
        );
        assert!(decode(&record(&typed, &[]), None).is_ok());
        let refused = [
            json!({"data_base64": "not base64!"}),
            json!({"data_base64": b64("tokens=12")}),
            json!({"data_base64": 12}),
            json!({"datacontenttype": "application/octet-stream", "data_base64": b64("{}")}),
            json!({"data": {"tokens": 1}, "data_base64": b64("{}")}),
        ];
        for extra in refused {
            let bytes = with(extra.clone());
            assert_eq!(
                reject_code(decode(&record(&bytes, &[]), None)),
                "data_not_object",
                "{extra}"
            );
        }
        let mut no_id = with(json!({"data_base64": "not base64!"}));
        let mut e: Value = serde_json::from_slice(&no_id).unwrap();
        e.as_object_mut().unwrap().remove("id");
        no_id = serde_json::to_vec(&e).unwrap();
        assert_eq!(
            reject_code(decode(&record(&no_id, &[]), None)),
            "missing_attribute",
            "attributes are checked first"
        );
    }

    #[test]
    fn json_numbers_keep_their_text() {
        let bytes = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","subject":"c","time":"2024-05-01T10:00:00Z","data":{"v":12345678901234567890.123456789012345678,"e":1.5e3}}"#;
        let (event, _) = decode(&record(bytes, &[]), None).unwrap();
        assert_eq!(
            event.data["v"].to_string(),
            "12345678901234567890.123456789012345678"
        );
        // serde_json may respell the exponent (`1.5e+3`) but keeps the digits exactly.
        assert!(event.data["e"].to_string().starts_with("1.5e"));
    }

    #[test]
    fn time_offsets_are_normalized_to_utc_and_raw_is_kept() {
        let mut env = envelope();
        env["time"] = json!("2024-05-01T12:00:00.123456+02:00");
        let (event, _) = decode_json(&env).unwrap();
        assert_eq!(
            rfc3339_utc::format(&event.time),
            "2024-05-01T10:00:00.123456Z"
        );
        assert_eq!(
            event.time_raw.as_deref(),
            Some("2024-05-01T12:00:00.123456+02:00")
        );
    }

    #[test]
    fn empty_value_is_rejected() {
        assert_eq!(reject_code(decode(&record(b"", &[]), None)), "empty_value");
        let none = RawRecord {
            key: Some(b"k"),
            value: None,
            headers: &[],
        };
        assert_eq!(reject_code(decode(&none, None)), "empty_value");
        let headers = binary_headers(TIME);
        let none = RawRecord {
            key: None,
            value: None,
            headers: &headers,
        };
        assert_eq!(reject_code(decode(&none, None)), "empty_value");
    }

    #[test]
    fn malformed_json_is_rejected() {
        assert_eq!(
            reject_code(decode(&record(b"{\"id\":", &[]), None)),
            "malformed_json"
        );
        assert_eq!(
            reject_code(decode(&record(b"\x00\x01", &[]), None)),
            "malformed_json"
        );
        assert_eq!(
            reject_code(decode(&record(&[0xff, 0xfe], &[]), None)),
            "malformed_json"
        );
    }

    #[test]
    fn non_object_envelope_is_rejected() {
        for value in [&b"[]"[..], b"42", b"\"text\"", b"null"] {
            assert_eq!(
                reject_code(decode(&record(value, &[]), None)),
                "not_an_object"
            );
        }
    }

    #[test]
    fn batch_content_type_is_unsupported() {
        let headers = [header("Content-Type", "application/cloudevents-batch+json")];
        assert_eq!(
            reject_code(decode(&record(b"[]", &headers), None)),
            "unsupported_encoding"
        );
    }

    #[test]
    fn avro_without_decoder_is_unsupported() {
        let bytes = wire(EXAMPLE_SCHEMA_ID, b"\x02");
        assert_eq!(
            reject_code(decode(&record(&bytes, &[]), None)),
            "unsupported_encoding"
        );
    }

    #[test]
    fn missing_attributes_are_named_in_order() {
        for name in REQUIRED_ATTRIBUTES {
            let mut env = envelope();
            env.as_object_mut().unwrap().remove(name);
            match decode_json(&env) {
                Err(DecodeError::Reject(reject)) => {
                    assert_eq!(reject.code(), "missing_attribute");
                    assert!(
                        reject.message.contains(&format!("`{name}`")),
                        "{}",
                        reject.message
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
            // null counts as missing
            let mut env = envelope();
            env[name] = Value::Null;
            assert_eq!(reject_code(decode_json(&env)), "missing_attribute");
        }
        // The first missing attribute in check order is the one reported.
        let mut env = envelope();
        env.as_object_mut().unwrap().remove("subject");
        env.as_object_mut().unwrap().remove("id");
        let Err(DecodeError::Reject(reject)) = decode_json(&env) else {
            panic!()
        };
        assert!(reject.message.contains("`id`"));
    }

    #[test]
    fn characters_cloudevents_forbids_in_strings_are_refused_in_every_attribute() {
        let expected = |name: &str| match name {
            "specversion" => "unsupported_specversion",
            "time" => "invalid_time",
            _ => "invalid_attribute",
        };
        for name in REQUIRED_ATTRIBUTES.iter().chain(&["datacontenttype"]) {
            for (c, code_point) in [
                ('\0', "U+0000"),
                ('\n', "U+000A"),
                ('\u{85}', "U+0085"),
                ('\u{FFFF}', "U+FFFF"),
                ('\u{FDD0}', "U+FDD0"),
            ] {
                let mut env = envelope();
                let text = format!("{}{c}", env[*name].as_str().unwrap());
                env[*name] = Value::String(text);
                match decode_json(&env) {
                    Err(DecodeError::Reject(reject)) => {
                        assert_eq!(reject.code(), expected(name), "{name} {code_point}");
                        assert!(reject.message.contains(code_point), "{}", reject.message);
                    }
                    other => panic!("{name} {code_point}: {other:?}"),
                }
            }
        }
        // Binary mode: the same rule for header values.
        let mut headers = binary_headers(TIME);
        headers.retain(|(name, _)| name != "ce_subject");
        headers.push(header("ce_subject", "cust\t7"));
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "invalid_attribute"
        );
        // Any other character is kept as sent.
        let mut env = envelope();
        env["subject"] = Value::String("Kunde-Müller 東京 ☃ \u{200B}".to_owned());
        let (event, _) = decode_json(&env).unwrap();
        assert_eq!(event.subject, "Kunde-Müller 東京 ☃ \u{200B}");
    }

    #[test]
    fn invalid_attributes_are_rejected() {
        for (name, bad, code) in [
            ("id", json!(42), "invalid_attribute"),
            ("source", json!(true), "invalid_attribute"),
            ("subject", json!({"a": 1}), "invalid_attribute"),
            ("type", json!(["x"]), "invalid_attribute"),
            ("time", json!(1714557600), "invalid_time"),
            ("time", json!({"t": 1}), "invalid_time"),
            ("specversion", json!(1.0), "unsupported_specversion"),
            ("datacontenttype", json!(5), "invalid_attribute"),
        ] {
            let mut env = envelope();
            env[name] = bad;
            match decode_json(&env) {
                Err(DecodeError::Reject(reject)) => {
                    assert_eq!(reject.code(), code, "{name}");
                    assert!(reject.message.contains(&format!("`{name}`")));
                }
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    /// CloudEvents requires non-empty strings: an empty required attribute is
    /// absent, whichever attribute it is.
    #[test]
    fn empty_required_attributes_are_missing() {
        for name in REQUIRED_ATTRIBUTES {
            let mut env = envelope();
            env[name] = json!("");
            match decode_json(&env) {
                Err(DecodeError::Reject(reject)) => {
                    assert_eq!(reject.code(), "missing_attribute", "{name}");
                    assert!(reject.message.contains(&format!("`{name}` is empty")));
                }
                other => panic!("{name}: {other:?}"),
            }
            let mut headers = binary_headers(TIME);
            headers.retain(|(header, _)| *header != format!("ce_{name}"));
            headers.push(header(&format!("ce_{name}"), ""));
            assert_eq!(
                reject_code(decode(&record(b"{}", &headers), None)),
                "missing_attribute",
                "binary {name}"
            );
        }
        // An empty optional datacontenttype is simply absent.
        let mut env = envelope();
        env["datacontenttype"] = json!("");
        assert_eq!(decode_json(&env).unwrap().0.datacontenttype, None);
    }

    #[test]
    fn specversion_must_be_1_0() {
        for version in ["0.3", "1", "1.0.0", "2.0"] {
            let mut env = envelope();
            env["specversion"] = json!(version);
            assert_eq!(reject_code(decode_json(&env)), "unsupported_specversion");
        }
    }

    #[test]
    fn time_must_be_rfc3339() {
        for time in [
            "2024-05-01",
            "2024-05-01T10:00:00",
            "yesterday",
            "2024-13-01T00:00:00Z",
            "1714557600",
            "2024-05-01T10:00:00+0200",
        ] {
            let mut env = envelope();
            env["time"] = json!(time);
            assert_eq!(reject_code(decode_json(&env)), "invalid_time", "{time}");
        }
    }

    #[test]
    fn missing_data_decodes_as_null_for_validate_to_refuse() {
        let mut env = envelope();
        env.as_object_mut().unwrap().remove("data");
        let (event, _) = decode_json(&env).unwrap();
        assert_eq!(event.data, Value::Null);
    }

    #[test]
    fn binary_mode_decodes() {
        let headers = binary_headers(TIME);
        let (event, encoding) = decode(&record(br#"{"tokens": 5}"#, &headers), None).unwrap();
        assert_eq!(encoding, Encoding::Binary);
        assert_eq!(event.id, "evt-bin-1");
        assert_eq!(event.source, "svc/bin");
        assert_eq!(event.subject, "cust-7");
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(event.data, json!({"tokens": 5}));
    }

    #[test]
    fn binary_mode_wins_over_avro_magic() {
        let headers = binary_headers(TIME);
        let value = wire(1, b"abc");
        assert_eq!(detect_encoding(&record(&value, &headers)), Encoding::Binary);
        assert_eq!(
            reject_code(decode(&record(&value, &headers), None)),
            "malformed_json"
        );
    }

    #[test]
    fn binary_mode_content_type_must_be_json() {
        for ok in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.usage+json",
            "text/json",
        ] {
            let mut headers = binary_headers(TIME);
            headers.pop();
            headers.push(header("content-type", ok));
            assert!(decode(&record(b"{}", &headers), None).is_ok(), "{ok}");
        }
        let mut headers = binary_headers(TIME);
        headers.pop();
        assert!(
            decode(&record(b"{}", &headers), None).is_ok(),
            "absent content-type means JSON"
        );
        for bad in ["application/avro", "text/plain", "application/octet-stream"] {
            let mut headers = binary_headers(TIME);
            headers.pop();
            headers.push(header("content-type", bad));
            assert_eq!(
                reject_code(decode(&record(b"{}", &headers), None)),
                "unsupported_encoding",
                "{bad}"
            );
        }
    }

    #[test]
    fn binary_mode_attribute_problems() {
        // missing
        let mut headers = binary_headers(TIME);
        headers.retain(|(name, _)| name != "ce_subject");
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "missing_attribute"
        );
        // null header value
        let mut headers = binary_headers(TIME);
        headers.push(("ce_id".to_owned(), None));
        headers.retain(|(name, value)| name != "ce_id" || value.is_none());
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "missing_attribute"
        );
        // repeated
        let mut headers = binary_headers(TIME);
        headers.push(header("ce_subject", "someone-else"));
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "invalid_attribute"
        );
        // not UTF-8
        let mut headers = binary_headers(TIME);
        headers.push(("ce_source".to_owned(), Some(vec![0xff])));
        headers
            .retain(|(name, value)| name != "ce_source" || value.as_deref() == Some(&[0xff][..]));
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "invalid_attribute"
        );
        // a time that is not text is an invalid time
        let mut headers = binary_headers(TIME);
        headers.retain(|(name, _)| name != "ce_time");
        headers.push(("ce_time".to_owned(), Some(vec![0xff, 0x00])));
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "invalid_time"
        );
        // empty is missing
        let mut headers = binary_headers(TIME);
        headers.retain(|(name, _)| name != "ce_type");
        headers.push(header("ce_type", ""));
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "missing_attribute"
        );
        // version and time
        let mut headers = binary_headers(TIME);
        headers[0] = header("ce_specversion", "0.3");
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "unsupported_specversion"
        );
        let headers = binary_headers("soon");
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "invalid_time"
        );
        // repeated content-type
        let mut headers = binary_headers(TIME);
        headers.push(header("Content-Type", "application/json"));
        assert_eq!(
            reject_code(decode(&record(b"{}", &headers), None)),
            "invalid_attribute"
        );
    }

    #[test]
    fn binary_mode_non_object_data_decodes_for_validate_to_refuse() {
        let headers = binary_headers(TIME);
        let (event, _) = decode(&record(b"[1,2]", &headers), None).unwrap();
        assert_eq!(event.data, json!([1, 2]));
    }

    #[test]
    fn avro_example_schema_decodes() {
        let registry = FakeRegistry::example();
        let bytes = example_avro(&registry, TIME, 1234);
        let (event, encoding) = decode(&record(&bytes, &[]), Some(&registry)).unwrap();
        assert_eq!(encoding, Encoding::Avro);
        assert_eq!(event.id, "evt-avro-1");
        assert_eq!(event.source, "svc/avro");
        assert_eq!(event.event_type, "llm.tokens");
        assert_eq!(event.subject, "cust-9");
        assert_eq!(event.datacontenttype.as_deref(), Some("application/json"));
        assert_eq!(event.data, json!({"tokens": 1234, "model": "gpt-x"}));
    }

    #[test]
    fn avro_registry_failures() {
        let registry = FakeRegistry::example();
        let unknown = wire(12345, b"\x00");
        assert_eq!(
            reject_code(decode(&record(&unknown, &[]), Some(&registry))),
            "avro_schema_not_found"
        );
        let outage = wire(OUTAGE_SCHEMA_ID, b"\x00");
        assert!(matches!(
            decode(&record(&outage, &[]), Some(&registry)),
            Err(DecodeError::Retriable(_))
        ));
        let garbage = wire(EXAMPLE_SCHEMA_ID, b"\x06abc");
        assert_eq!(
            reject_code(decode(&record(&garbage, &[]), Some(&registry))),
            "avro_decode_failed"
        );
    }

    const RICH_SCHEMA_ID: u32 = 8;
    const RICH_SCHEMA: &str = r#"{
      "type": "record", "name": "Rich", "namespace": "test",
      "fields": [
        {"name": "specversion", "type": "string"},
        {"name": "id", "type": "string"},
        {"name": "source", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "subject", "type": "string"},
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "data", "type": {"type": "map", "values": ["null", "long", "float", "double", "string",
            {"type": "bytes", "logicalType": "decimal", "precision": 20, "scale": 4},
            {"type": "array", "items": "int"},
            {"type": "enum", "name": "Tier", "symbols": ["FREE", "PRO"]}
        ]}}
      ]
    }"#;

    fn rich_record(data: Vec<(&str, AvroValue)>) -> Vec<u8> {
        let schema = Schema::parse_str(RICH_SCHEMA).unwrap();
        let mut record = Record::new(&schema).unwrap();
        record.put("specversion", "1.0");
        record.put("id", "r1");
        record.put("source", "svc/rich");
        record.put("type", "t");
        record.put("subject", "c");
        record.put("time", AvroValue::TimestampMillis(1_714_557_600_123));
        let map: HashMap<String, AvroValue> =
            data.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        record.put("data", AvroValue::Map(map));
        wire(RICH_SCHEMA_ID, &to_avro_datum(&schema, record).unwrap())
    }

    #[test]
    fn avro_logical_types_and_floats_convert() {
        let registry = FakeRegistry::example().with(RICH_SCHEMA_ID, RICH_SCHEMA);
        let bytes = rich_record(vec![
            ("none", AvroValue::Union(0, Box::new(AvroValue::Null))),
            ("count", AvroValue::Union(1, Box::new(AvroValue::Long(-5)))),
            (
                "ratio",
                AvroValue::Union(2, Box::new(AvroValue::Float(0.1))),
            ),
            (
                "double",
                AvroValue::Union(3, Box::new(AvroValue::Double(2.5e-7))),
            ),
            (
                "nan",
                AvroValue::Union(3, Box::new(AvroValue::Double(f64::NAN))),
            ),
            (
                "inf",
                AvroValue::Union(2, Box::new(AvroValue::Float(f32::NEG_INFINITY))),
            ),
            (
                "label",
                AvroValue::Union(4, Box::new(AvroValue::String("x".into()))),
            ),
            // 125000 unscaled, scale 4 -> 12.5000
            (
                "price",
                AvroValue::Union(
                    5,
                    Box::new(AvroValue::Decimal(AvroDecimal::from(vec![
                        0x01, 0xE8, 0x48,
                    ]))),
                ),
            ),
            (
                "debt",
                AvroValue::Union(
                    5,
                    Box::new(AvroValue::Decimal(AvroDecimal::from(vec![0xFF, 0x38]))),
                ),
            ),
            (
                "list",
                AvroValue::Union(
                    6,
                    Box::new(AvroValue::Array(vec![AvroValue::Int(1), AvroValue::Int(2)])),
                ),
            ),
            (
                "tier",
                AvroValue::Union(7, Box::new(AvroValue::Enum(1, "PRO".into()))),
            ),
        ]);
        let (event, encoding) = decode(&record(&bytes, &[]), Some(&registry)).unwrap();
        assert_eq!(encoding, Encoding::Avro);
        assert_eq!(rfc3339_utc::format(&event.time), "2024-05-01T10:00:00.123Z");
        assert_eq!(event.time_raw.as_deref(), Some("2024-05-01T10:00:00.123Z"));
        let data = &event.data;
        assert_eq!(data["none"], Value::Null);
        assert_eq!(data["count"].to_string(), "-5");
        assert_eq!(data["ratio"].to_string(), "0.1");
        assert_eq!(data["double"].to_string(), "0.00000025");
        assert_eq!(data["nan"], json!("NaN"));
        assert_eq!(data["inf"], json!("-Infinity"));
        assert_eq!(data["label"], json!("x"));
        assert_eq!(data["price"], json!("12.5000"));
        assert_eq!(data["debt"], json!("-0.0200"));
        assert_eq!(data["list"], json!([1, 2]));
        assert_eq!(data["tier"], json!("PRO"));
    }

    #[test]
    fn avro_decimal_needs_the_schema() {
        let registry = SchemaLess(FakeRegistry::example().with(RICH_SCHEMA_ID, RICH_SCHEMA));
        let bytes = rich_record(vec![(
            "price",
            AvroValue::Union(
                5,
                Box::new(AvroValue::Decimal(AvroDecimal::from(vec![0x01]))),
            ),
        )]);
        assert_eq!(
            reject_code(decode(&record(&bytes, &[]), Some(&registry))),
            "avro_decode_failed"
        );
        // Without decimals the schema is not needed.
        let bytes = rich_record(vec![(
            "count",
            AvroValue::Union(1, Box::new(AvroValue::Long(3))),
        )]);
        let (event, _) = decode(&record(&bytes, &[]), Some(&registry)).unwrap();
        assert_eq!(event.data["count"].to_string(), "3");
    }

    const STRING_DATA_SCHEMA_ID: u32 = 9;
    const STRING_DATA_SCHEMA: &str = r#"{
      "type": "record", "name": "Stringly", "namespace": "test",
      "fields": [
        {"name": "specversion", "type": "string"},
        {"name": "id", "type": "string"},
        {"name": "source", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "subject", "type": ["null", "string"]},
        {"name": "time", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "data", "type": "string"}
      ]
    }"#;

    fn stringly(subject: Option<&str>, data: &str) -> Vec<u8> {
        let schema = Schema::parse_str(STRING_DATA_SCHEMA).unwrap();
        let mut record = Record::new(&schema).unwrap();
        record.put("specversion", "1.0");
        record.put("id", "s1");
        record.put("source", "svc/s");
        record.put("type", "t");
        record.put(
            "subject",
            match subject {
                Some(s) => AvroValue::Union(1, Box::new(AvroValue::String(s.into()))),
                None => AvroValue::Union(0, Box::new(AvroValue::Null)),
            },
        );
        record.put("time", AvroValue::TimestampMicros(1_714_557_600_000_001));
        record.put("data", data);
        wire(
            STRING_DATA_SCHEMA_ID,
            &to_avro_datum(&schema, record).unwrap(),
        )
    }

    #[test]
    fn avro_data_string_is_parsed_as_json() {
        let registry = FakeRegistry::example().with(STRING_DATA_SCHEMA_ID, STRING_DATA_SCHEMA);
        let (event, _) = decode(
            &record(&stringly(Some("c"), r#"{"bytes": 1e3}"#), &[]),
            Some(&registry),
        )
        .unwrap();
        assert!(event.data["bytes"].to_string().starts_with("1e"));
        assert_eq!(
            rfc3339_utc::format(&event.time),
            "2024-05-01T10:00:00.000001Z"
        );
        assert_eq!(
            reject_code(decode(
                &record(&stringly(Some("c"), "{nope"), &[]),
                Some(&registry)
            )),
            "malformed_json"
        );
        // A null union branch for a required attribute is "missing".
        assert_eq!(
            reject_code(decode(&record(&stringly(None, "{}"), &[]), Some(&registry))),
            "missing_attribute"
        );
    }

    #[test]
    fn a_member_named_twice_is_refused_in_every_encoding() {
        let code = |bytes: &[u8], headers: &[(String, Option<Vec<u8>>)]| {
            reject_code(decode(&record(bytes, headers), None))
        };
        // Structured mode: in data, and in the envelope (two ids).
        let text = serde_json::to_string(&envelope()).unwrap();
        let tokens_twice = text.replace(r#""tokens":12"#, r#""tokens":12,"tokens":1200"#);
        assert_ne!(tokens_twice, text);
        assert_eq!(code(tokens_twice.as_bytes(), &[]), "duplicate_member");
        let ids_twice = text.replace(r#""id":"evt-1""#, r#""id":"evt-1","id":"evt-2""#);
        assert_ne!(ids_twice, text);
        assert_eq!(code(ids_twice.as_bytes(), &[]), "duplicate_member");
        // Binary mode: the value is the data.
        let headers = binary_headers(TIME);
        assert_eq!(
            code(br#"{"tokens": 5, "tokens": 500}"#, &headers),
            "duplicate_member"
        );
        assert!(decode(&record(br#"{"tokens": 5}"#, &headers), None).is_ok());
        // data_base64's JSON.
        use base64::Engine as _;
        let mut e = envelope();
        let o = e.as_object_mut().unwrap();
        o.remove("data");
        let twice = base64::engine::general_purpose::STANDARD.encode(r#"{"tokens":1,"tokens":2}"#);
        o.insert("data_base64".into(), json!(twice));
        assert_eq!(
            code(&serde_json::to_vec(&e).unwrap(), &[]),
            "duplicate_member"
        );
        // An Avro `data` string.
        let registry = FakeRegistry::example().with(STRING_DATA_SCHEMA_ID, STRING_DATA_SCHEMA);
        let avro = stringly(Some("c"), r#"{"bytes": 1, "bytes": 2}"#);
        assert_eq!(
            reject_code(decode(&record(&avro, &[]), Some(&registry))),
            "duplicate_member"
        );
    }

    #[test]
    fn avro_non_record_is_not_an_object() {
        let registry = FakeRegistry::example().with(10, r#""string""#);
        let schema = Schema::parse_str(r#""string""#).unwrap();
        let datum = to_avro_datum(&schema, AvroValue::String("hi".into())).unwrap();
        assert_eq!(
            reject_code(decode(&record(&wire(10, &datum), &[]), Some(&registry))),
            "not_an_object"
        );
    }

    #[test]
    fn avro_to_json_scalars_without_schema() {
        let converted = avro_to_json(
            &AvroValue::Record(vec![
                ("b".into(), AvroValue::Bytes(vec![0xde, 0xad])),
                ("f".into(), AvroValue::Fixed(2, vec![0x01, 0x02])),
                ("d".into(), AvroValue::Date(19_844)),
                ("tm".into(), AvroValue::TimeMillis(3_723_004)),
                ("tu".into(), AvroValue::TimeMicros(3_723_000_005)),
                (
                    "ln".into(),
                    AvroValue::LocalTimestampMillis(1_714_557_600_000),
                ),
                (
                    "tn".into(),
                    AvroValue::TimestampNanos(1_714_557_600_000_000_001),
                ),
                (
                    "u".into(),
                    AvroValue::Uuid("67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap()),
                ),
                ("bool".into(), AvroValue::Boolean(true)),
                ("f32".into(), AvroValue::Float(16_777_216.0)),
                ("neg0".into(), AvroValue::Double(-0.0)),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            converted,
            json!({
                "b": "dead",
                "f": "0102",
                "d": "2024-05-01",
                "tm": "01:02:03.004",
                "tu": "01:02:03.000005",
                "ln": "2024-05-01T10:00:00",
                "tn": "2024-05-01T10:00:00.000000001Z",
                "u": "67e55044-10b1-426f-9247-bb680e5fe0c8",
                "bool": true,
                "f32": 16777216,
                "neg0": serde_json::from_str::<Value>("-0").unwrap(),
            })
        );
        assert!(avro_to_json(&AvroValue::TimeMillis(-1), None).is_err());
        assert!(avro_to_json(&AvroValue::TimestampMillis(i64::MAX), None).is_err());
        assert!(avro_to_json(&AvroValue::Decimal(AvroDecimal::from(vec![1])), None).is_err());
    }

    #[test]
    fn avro_depth_is_bounded() {
        let mut value = AvroValue::Null;
        for _ in 0..(MAX_AVRO_DEPTH + 5) {
            value = AvroValue::Array(vec![value]);
        }
        assert!(avro_to_json(&value, None).unwrap_err().contains("deeper"));
    }

    #[test]
    fn decimal_text_is_exact() {
        assert_eq!(decimal_text(&[], 0).unwrap(), "0");
        assert_eq!(decimal_text(&[0x00], 2).unwrap(), "0.00");
        assert_eq!(decimal_text(&[0x04, 0xE2], 2).unwrap(), "12.50");
        assert_eq!(decimal_text(&[0xFF], 0).unwrap(), "-1");
        assert_eq!(decimal_text(&[0xFF], 3).unwrap(), "-0.001");
        assert_eq!(decimal_text(&[0x80], 0).unwrap(), "-128");
        assert_eq!(decimal_text(&[0x7F, 0xFF], 0).unwrap(), "32767");
        // 2^95 exactly, well past u64
        let mut big = vec![0x00, 0x80];
        big.extend([0u8; 11]);
        assert_eq!(
            decimal_text(&big, 5).unwrap(),
            "396140812571321687967719.75168"
        );
        assert!(decimal_text(&[1u8; MAX_AVRO_DECIMAL_BYTES + 1], 0).is_err());
        assert!(decimal_text(&[1], MAX_AVRO_DECIMAL_SCALE + 1).is_err());
    }

    const REF_SCHEMA_ID: u32 = 11;
    const REF_SCHEMA: &str = r#"{
      "type": "record", "name": "WithRefs", "namespace": "test",
      "fields": [
        {"name": "specversion", "type": "string"},
        {"name": "id", "type": "string"},
        {"name": "source", "type": "string"},
        {"name": "type", "type": "string"},
        {"name": "subject", "type": "string"},
        {"name": "time", "type": "string"},
        {"name": "data", "type": {"type": "record", "name": "Charges", "fields": [
          {"name": "list", "type": {"type": "record", "name": "Money", "fields": [
            {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2}}
          ]}},
          {"name": "net", "type": "Money"}
        ]}}
      ]
    }"#;

    #[test]
    fn avro_named_type_references_resolve_for_decimals() {
        let registry = FakeRegistry::example().with(REF_SCHEMA_ID, REF_SCHEMA);
        let money = |unscaled: Vec<u8>| {
            AvroValue::Record(vec![(
                "amount".to_owned(),
                AvroValue::Decimal(AvroDecimal::from(unscaled)),
            )])
        };
        let value = AvroValue::Record(vec![
            ("specversion".to_owned(), AvroValue::String("1.0".into())),
            ("id".to_owned(), AvroValue::String("r".into())),
            ("source".to_owned(), AvroValue::String("s".into())),
            ("type".to_owned(), AvroValue::String("t".into())),
            ("subject".to_owned(), AvroValue::String("c".into())),
            ("time".to_owned(), AvroValue::String(TIME.into())),
            (
                "data".to_owned(),
                AvroValue::Record(vec![
                    ("list".to_owned(), money(vec![0x03, 0xE8])),
                    ("net".to_owned(), money(vec![0x01, 0x2C])),
                ]),
            ),
        ]);
        let schema = Schema::parse_str(REF_SCHEMA).unwrap();
        let bytes = wire(REF_SCHEMA_ID, &to_avro_datum(&schema, value).unwrap());
        let (event, _) = decode(&record(&bytes, &[]), Some(&registry)).unwrap();
        assert_eq!(
            event.data,
            json!({"list": {"amount": "10.00"}, "net": {"amount": "3.00"}})
        );
    }

    #[test]
    fn header_lookup() {
        let headers = [
            header("a", "1"),
            header("b", "2"),
            header("b", "3"),
            ("c".to_owned(), None),
        ];
        let raw = record(b"x", &headers);
        assert_eq!(raw.single_header("a"), HeaderValue::Present(b"1"));
        assert_eq!(raw.single_header("b"), HeaderValue::Repeated(2));
        assert_eq!(raw.single_header("c"), HeaderValue::Null);
        assert_eq!(raw.single_header("A"), HeaderValue::Absent);
    }

    #[test]
    fn example_schema_constant_parses() {
        let schema = Schema::parse_str(CLOUDEVENT_AVRO_SCHEMA_EXAMPLE).unwrap();
        let Schema::Record(record) = schema else {
            panic!("not a record")
        };
        assert_eq!(record.name.fullname(None), "io.meterline.UsageEvent");
        let names: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "specversion",
                "id",
                "source",
                "type",
                "subject",
                "time",
                "datacontenttype",
                "data"
            ]
        );
    }
}
