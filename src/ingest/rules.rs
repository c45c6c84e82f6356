//! The validate stage's rules: from a decoded [`CloudEvent`] to a
//! [`ValidatedEvent`] carrying one exact [`Measure`] per meter, or a [`Reject`].
//!
//! Rules run in a fixed order and the first failure wins, so a record always
//! gets the same reason whatever else is wrong with it:
//!
//! 1. attributes are non-empty strings (`missing_attribute`) and
//!    `specversion == "1.0"` (`unsupported_specversion`) — decoding already
//!    checked this for decoded events; it is repeated because a `CloudEvent`
//!    can be built by other code;
//! 2. `time` lies within `[now - max_event_age_days, now + max_clock_skew_s]`,
//!    both bounds inclusive (`event_too_old` / `event_in_future`);
//! 3. `source` is allowed (`source_not_allowed`);
//! 4. if the source has an HMAC key, the signature header holds the hex
//!    HMAC-SHA256 of the signed bytes (`signature_missing` /
//!    `signature_invalid`), compared in constant time: the exact Kafka value
//!    in structured mode and Avro (the value holds every attribute), the
//!    canonical attributes and the value in binary mode
//!    ([`binary_signing_input`]); a source without a key is refused when
//!    `require_signature` is on (`signature_required`);
//! 5. `data` is a JSON object (`data_not_object`);
//! 6. a retraction or an amendment (`type` is `validate.retract_type` or
//!    `amend_type`) is checked by [`super::correction`] instead; otherwise
//!    at least one meter consumes `type` (`unknown_event_type`);
//! 7. per meter, in slug order: the value checks below.
//!
//! Values never go through a float. A JSON number is parsed from its original
//! text (serde_json's `arbitrary_precision`), a numeric string from its text,
//! both with the same grammar: optional sign, digits with an optional
//! fraction, optional exponent (`1.5e3` is exactly `1500`). The result must
//! fit [`Decimal`] *exactly* — 96-bit mantissa, at most 28 fractional digits —
//! after dropping only trailing zeros; anything that would need rounding is
//! `value_out_of_range`, because silently billing a different number is worse
//! than refusing it. Unit conversion is an exact multiplication under the
//! same rule. The value keeps its scale (`"2.50"` stays `2.50`) so the output
//! shows what the producer sent.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use serde_json::Value;
use sha2::Sha256;

use super::decode::{detect_encoding, HeaderValue, RawRecord};
use super::reason::{excerpt, Reject, RejectReason};
use crate::contracts::{
    rfc3339_utc, CloudEvent, Encoding, Measure, Origin, ValidatedEvent, CLOUDEVENTS_SPEC_VERSION,
};
use crate::jsonpath::{JsonPath, JsonPathError};
use crate::meter::{Aggregation, Meter};

/// Default oldest accepted event: a monthly billing period plus a few days
/// of producer backlog.
pub const DEFAULT_MAX_EVENT_AGE_DAYS: u32 = 35;
/// Default tolerance for producer clocks running ahead of ours.
pub const DEFAULT_MAX_CLOCK_SKEW_S: u32 = 300;
/// Default Kafka header carrying the hex HMAC-SHA256 of the record value.
pub const DEFAULT_SIGNATURE_HEADER: &str = "meterline-signature";
/// Default largest input record (key + value + headers): 256 KiB, far above
/// any usage event and far below the producers' 1 MB `message.max.bytes`.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 256 * 1024;
/// Bytes that separate, and end, the attributes of the binary-mode signing
/// input (see [`binary_signing_input`]).
pub const SIGNING_ATTRIBUTE_TERMINATOR: u8 = b'\n';
/// An `allowed_sources` entry ending in this character is a prefix.
pub const SOURCE_PREFIX_WILDCARD: char = '*';

/// Largest mantissa a [`Decimal`] holds: 2^96 - 1.
const DECIMAL_MAX_MANTISSA: u128 = (1 << 96) - 1;
/// Digits of [`DECIMAL_MAX_MANTISSA`] (79228162514264337593543950335).
const DECIMAL_MAX_DIGITS: usize = 29;
/// Most fractional digits a [`Decimal`] holds.
const DECIMAL_MAX_SCALE: i128 = Decimal::MAX_SCALE as i128;
/// Spellings of non-finite numbers refused as `value_not_finite` (after an
/// optional sign, case-insensitively) rather than as merely non-numeric, so
/// producers learn that their float overflowed.
const NON_FINITE_WORDS: [&str; 3] = ["nan", "inf", "infinity"];

type HmacSha256 = Hmac<Sha256>;

/// Configuration of the validate stage's rules.
#[derive(Clone)]
pub struct ValidateRules {
    pub max_event_age_days: u32,
    pub max_clock_skew_s: u32,
    /// Empty = allow every source; an entry ending in `*` is a prefix.
    pub allowed_sources: Vec<String>,
    /// Source -> HMAC-SHA256 key. A source with a key must sign every record.
    pub hmac_keys: BTreeMap<String, Vec<u8>>,
    pub signature_header: String,
    /// Refuse sources without a key (`signature_required`).
    pub require_signature: bool,
    /// Largest record accepted, key + value + headers (`event_too_large`).
    pub max_event_bytes: usize,
    /// CloudEvents types of a retraction and an amendment ([`super::correction`]).
    pub retract_type: String,
    pub amend_type: String,
    /// Sources whose retractions and amendments may name another source's
    /// events ([`ValidateRules::may_correct`]); `None`: every source's may.
    pub correction_sources: Option<Vec<String>>,
}

impl Default for ValidateRules {
    fn default() -> Self {
        ValidateRules {
            max_event_age_days: DEFAULT_MAX_EVENT_AGE_DAYS,
            max_clock_skew_s: DEFAULT_MAX_CLOCK_SKEW_S,
            allowed_sources: Vec::new(),
            hmac_keys: BTreeMap::new(),
            signature_header: DEFAULT_SIGNATURE_HEADER.to_owned(),
            require_signature: false,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            retract_type: crate::config::defaults::retract_type(),
            amend_type: crate::config::defaults::amend_type(),
            correction_sources: None,
        }
    }
}

/// Keys are secrets: Debug shows which sources have one, never the bytes.
impl fmt::Debug for ValidateRules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateRules")
            .field("max_event_age_days", &self.max_event_age_days)
            .field("max_clock_skew_s", &self.max_clock_skew_s)
            .field("allowed_sources", &self.allowed_sources)
            .field(
                "hmac_keys",
                &self
                    .hmac_keys
                    .keys()
                    .map(|source| (source, "<redacted>"))
                    .collect::<BTreeMap<_, _>>(),
            )
            .field("signature_header", &self.signature_header)
            .field("require_signature", &self.require_signature)
            .field("max_event_bytes", &self.max_event_bytes)
            .field("retract_type", &self.retract_type)
            .field("amend_type", &self.amend_type)
            .field("correction_sources", &self.correction_sources)
            .finish()
    }
}

impl ValidateRules {
    /// The rules of `[validate]`; Err names the source whose HMAC key is
    /// not hex.
    pub fn from_config(v: &crate::config::ValidateConfig) -> Result<Self, String> {
        let mut hmac_keys = BTreeMap::new();
        for (source, key) in &v.hmac_keys_hex {
            let k = hex::decode(key).map_err(|_| source.clone())?;
            hmac_keys.insert(source.clone(), k);
        }
        Ok(ValidateRules {
            max_event_age_days: v.max_event_age_days,
            max_clock_skew_s: v.max_clock_skew_s,
            allowed_sources: v.allowed_sources.clone(),
            hmac_keys,
            signature_header: v.signature_header.clone(),
            require_signature: v.require_signature,
            max_event_bytes: v.max_event_bytes,
            retract_type: v.retract_type.clone(),
            amend_type: v.amend_type.clone(),
            correction_sources: v.correction_sources.clone(),
        })
    }

    /// Whether `source` passes the allow-list.
    pub fn source_allowed(&self, source: &str) -> bool {
        self.allowed_sources.is_empty() || matches_any(&self.allowed_sources, source)
    }

    /// Whether a correction sent by `correcting` may name, or bring in, an
    /// event of `corrected`: always its own; another source's only when
    /// `correcting` matches an entry of `correction_sources` (unset: yes).
    pub fn may_correct(&self, correcting: &str, corrected: &str) -> bool {
        correcting == corrected
            || self
                .correction_sources
                .as_ref()
                .is_none_or(|patterns| matches_any(patterns, correcting))
    }
}

/// Whether `source` matches one of `patterns` (exact, or a prefix when the
/// entry ends in [`SOURCE_PREFIX_WILDCARD`]).
fn matches_any(patterns: &[String], source: &str) -> bool {
    patterns.iter().any(
        |pattern| match pattern.strip_suffix(SOURCE_PREFIX_WILDCARD) {
            Some(prefix) => source.starts_with(prefix),
            None => pattern == source,
        },
    )
}

/// A meter with its JSONPaths compiled.
#[derive(Debug, Clone)]
pub struct CompiledMeter {
    slug: String,
    aggregation: Aggregation,
    value_path: Option<JsonPath>,
    group_by: Vec<(String, JsonPath)>,
    multiply_by: Option<Decimal>,
}

impl CompiledMeter {
    pub fn slug(&self) -> &str {
        &self.slug
    }

    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }
}

/// Meters by event type, compiled once at startup.
#[derive(Debug, Clone, Default)]
pub struct MeterIndex {
    /// Each list is sorted by slug, which fixes the order of measures.
    by_event_type: BTreeMap<String, Vec<CompiledMeter>>,
}

/// Why a set of meters cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MeterIndexError {
    #[error("a meter has an empty slug")]
    EmptySlug,
    #[error("meter slug `{0}` is declared more than once")]
    DuplicateSlug(String),
    #[error("meter `{slug}` has an empty event_type")]
    EmptyEventType { slug: String },
    #[error("meter `{slug}`: {field} is not a usable JSONPath: {source}")]
    InvalidPath {
        slug: String,
        field: String,
        #[source]
        source: JsonPathError,
    },
    #[error("meter `{slug}` aggregates with {aggregation:?} and so needs a value_property")]
    MissingValueProperty {
        slug: String,
        aggregation: Aggregation,
    },
    #[error("meter `{slug}`: unit_conversion.multiply_by must be positive, got {multiply_by}")]
    NonPositiveMultiplier { slug: String, multiply_by: Decimal },
}

impl MeterIndex {
    /// Compiles `meters`; fails on an empty or duplicate slug, an empty event
    /// type, a bad JSONPath, a missing value_property where one is needed, or
    /// a non-positive unit multiplier (it would turn usage into credit).
    pub fn new(meters: &[Meter]) -> Result<MeterIndex, MeterIndexError> {
        let mut slugs = BTreeSet::new();
        let mut by_event_type: BTreeMap<String, Vec<CompiledMeter>> = BTreeMap::new();
        for meter in meters {
            let slug = meter.slug.clone();
            if slug.is_empty() {
                return Err(MeterIndexError::EmptySlug);
            }
            if !slugs.insert(slug.clone()) {
                return Err(MeterIndexError::DuplicateSlug(slug));
            }
            if meter.event_type.is_empty() {
                return Err(MeterIndexError::EmptyEventType { slug });
            }
            let compile = |field: String, text: &str| {
                JsonPath::parse(text).map_err(|source| MeterIndexError::InvalidPath {
                    slug: slug.clone(),
                    field,
                    source,
                })
            };
            // COUNT ignores value_property, but a typo in it is still a config error.
            let value_path = meter
                .value_property
                .as_deref()
                .map(|text| compile("value_property".to_owned(), text))
                .transpose()?;
            if meter.aggregation != Aggregation::Count && value_path.is_none() {
                return Err(MeterIndexError::MissingValueProperty {
                    slug,
                    aggregation: meter.aggregation,
                });
            }
            let group_by = meter
                .group_by
                .iter()
                .map(|(name, text)| Ok((name.clone(), compile(format!("group_by.{name}"), text)?)))
                .collect::<Result<Vec<_>, MeterIndexError>>()?;
            let multiply_by = meter
                .unit_conversion
                .as_ref()
                .map(|conversion| conversion.multiply_by);
            if let Some(multiply_by) = multiply_by {
                if multiply_by <= Decimal::ZERO {
                    return Err(MeterIndexError::NonPositiveMultiplier { slug, multiply_by });
                }
            }
            by_event_type
                .entry(meter.event_type.clone())
                .or_default()
                .push(CompiledMeter {
                    slug,
                    aggregation: meter.aggregation,
                    value_path,
                    group_by,
                    multiply_by,
                });
        }
        for compiled in by_event_type.values_mut() {
            compiled.sort_by(|a, b| a.slug.cmp(&b.slug));
        }
        Ok(MeterIndex { by_event_type })
    }

    /// The meters fed by `event_type`, sorted by slug; empty if none.
    pub fn meters_for(&self, event_type: &str) -> &[CompiledMeter] {
        self.by_event_type
            .get(event_type)
            .map_or(&[], Vec::as_slice)
    }

    /// Every event type some meter consumes.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.by_event_type.keys().map(String::as_str)
    }

    /// Number of meters.
    pub fn len(&self) -> usize {
        self.by_event_type.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_event_type.is_empty()
    }
}

/// Applies the rules (see the module docs) to one decoded event.
///
/// `raw` is the record the event was decoded from (for the signature over
/// its exact value bytes and header); `now` is passed in so tests and replays
/// are deterministic.
pub fn validate(
    event: CloudEvent,
    raw: &RawRecord,
    meters: &MeterIndex,
    rules: &ValidateRules,
    now: DateTime<Utc>,
    origin: Origin,
) -> Result<ValidatedEvent, Reject> {
    check_attributes(&event)?;
    check_time(event.time, now, rules)?;
    check_source(&event, rules)?;
    check_signature(&event, raw, rules)?;
    check_data(&event)?;
    if event.event_type == rules.retract_type {
        return super::correction::retraction(event, rules, origin);
    }
    if event.event_type == rules.amend_type {
        return super::correction::amendment(event, meters, rules, now, origin);
    }
    usage_event(event, meters, origin)
}

/// Rules 6 and 7 of a checked event: the meters of its type and their
/// measures.
pub(super) fn usage_event(
    event: CloudEvent,
    meters: &MeterIndex,
    origin: Origin,
) -> Result<ValidatedEvent, Reject> {
    let compiled = meters.meters_for(&event.event_type);
    if compiled.is_empty() {
        return Err(Reject::new(
            RejectReason::UnknownEventType,
            format!("no meter consumes type {}", excerpt(&event.event_type)),
        ));
    }
    let measures = compiled
        .iter()
        .map(|meter| measure(meter, &event.data))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ValidatedEvent::accepted(event, measures, origin))
}

/// Rule 3.
pub(super) fn check_source(event: &CloudEvent, rules: &ValidateRules) -> Result<(), Reject> {
    if rules.source_allowed(&event.source) {
        return Ok(());
    }
    Err(Reject::new(
        RejectReason::SourceNotAllowed,
        format!(
            "source {} is not in allowed_sources",
            excerpt(&event.source)
        ),
    ))
}

/// Rule 5.
pub(super) fn check_data(event: &CloudEvent) -> Result<(), Reject> {
    if event.data.is_object() {
        return Ok(());
    }
    Err(Reject::new(
        RejectReason::DataNotObject,
        format!("data is {}, not a JSON object", describe(&event.data)),
    ))
}

pub(super) fn check_attributes(event: &CloudEvent) -> Result<(), Reject> {
    for (name, value) in [
        ("specversion", &event.specversion),
        ("id", &event.id),
        ("source", &event.source),
        ("type", &event.event_type),
        ("subject", &event.subject),
    ] {
        // CloudEvents requires non-empty strings: empty is absent.
        if value.is_empty() {
            return Err(Reject::new(
                RejectReason::MissingAttribute,
                format!("attribute `{name}` is empty"),
            ));
        }
        // specversion: any other text than "1.0" is unsupported (below).
        if let Some(c) = super::decode::forbidden_char(value).filter(|_| name != "specversion") {
            return Err(Reject::new(
                RejectReason::InvalidAttribute,
                super::decode::forbidden_text(name, c),
            ));
        }
    }
    if event.specversion != CLOUDEVENTS_SPEC_VERSION {
        return Err(Reject::new(
            RejectReason::UnsupportedSpecversion,
            format!(
                "specversion is {}, only \"{CLOUDEVENTS_SPEC_VERSION}\" is supported",
                excerpt(&event.specversion)
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_time(
    time: DateTime<Utc>,
    now: DateTime<Utc>,
    rules: &ValidateRules,
) -> Result<(), Reject> {
    // A bound that does not fit chrono's range cannot exclude anything.
    let oldest = TimeDelta::try_days(i64::from(rules.max_event_age_days))
        .and_then(|age| now.checked_sub_signed(age));
    if let Some(oldest) = oldest {
        if time < oldest {
            return Err(Reject::new(
                RejectReason::EventTooOld,
                format!(
                    "time {} is before {} ({} days before now)",
                    rfc3339_utc::format(&time),
                    rfc3339_utc::format(&oldest),
                    rules.max_event_age_days
                ),
            ));
        }
    }
    let latest = TimeDelta::try_seconds(i64::from(rules.max_clock_skew_s))
        .and_then(|skew| now.checked_add_signed(skew));
    if let Some(latest) = latest {
        if time > latest {
            return Err(Reject::new(
                RejectReason::EventInFuture,
                format!(
                    "time {} is after {} ({} s after now)",
                    rfc3339_utc::format(&time),
                    rfc3339_utc::format(&latest),
                    rules.max_clock_skew_s
                ),
            ));
        }
    }
    Ok(())
}

/// The size a record counts for against `max_event_bytes`: key, value and
/// every header's key and value.
pub fn record_size(raw: &RawRecord) -> usize {
    raw.key.map_or(0, <[u8]>::len)
        + raw.value_bytes().len()
        + raw
            .headers
            .iter()
            .map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

/// Refuses a record larger than `max_event_bytes` (`event_too_large`),
/// before anything is parsed.
pub fn check_size(raw: &RawRecord, rules: &ValidateRules) -> Result<(), Reject> {
    let size = record_size(raw);
    if size > rules.max_event_bytes {
        return Err(Reject::new(
            RejectReason::EventTooLarge,
            format!(
                "the record is {size} bytes (key + value + headers), more than max_event_bytes = {}",
                rules.max_event_bytes
            ),
        ));
    }
    Ok(())
}

/// What a binary-mode record's HMAC signs: the attributes `specversion`,
/// `id`, `source`, `type`, `subject` and `time`, in this order, each as the
/// exact bytes of its `ce_` header followed by one line feed, then the exact
/// value bytes. Headers can be edited without touching the value, so signing
/// only the value would let a signed event be re-sent for another customer.
/// None when an attribute holds a line feed: the input would be ambiguous
/// (bytes could move from one attribute to the next), so it cannot be signed.
pub fn binary_signing_input(event: &CloudEvent, value: &[u8]) -> Option<Vec<u8>> {
    let time = event.time_raw.as_deref()?;
    let attributes = [
        event.specversion.as_str(),
        event.id.as_str(),
        event.source.as_str(),
        event.event_type.as_str(),
        event.subject.as_str(),
        time,
    ];
    let attribute_bytes: usize = attributes.iter().map(|a| a.len() + 1).sum();
    let mut input = Vec::with_capacity(attribute_bytes + value.len());
    for attribute in attributes {
        if attribute.as_bytes().contains(&SIGNING_ATTRIBUTE_TERMINATOR) {
            return None;
        }
        input.extend_from_slice(attribute.as_bytes());
        input.push(SIGNING_ATTRIBUTE_TERMINATOR);
    }
    input.extend_from_slice(value);
    Some(input)
}

fn check_signature(
    event: &CloudEvent,
    raw: &RawRecord,
    rules: &ValidateRules,
) -> Result<(), Reject> {
    let source = event.source.as_str();
    let Some(key) = rules.hmac_keys.get(source) else {
        if rules.require_signature {
            return Err(Reject::new(
                RejectReason::SignatureRequired,
                format!(
                    "source {} has no HMAC key and require_signature is on",
                    excerpt(source)
                ),
            ));
        }
        return Ok(());
    };
    let header = &rules.signature_header;
    let invalid = |why: String| Reject::new(RejectReason::SignatureInvalid, why);
    let signature = match raw.single_header(header) {
        HeaderValue::Present(bytes) if !bytes.is_empty() => bytes,
        HeaderValue::Absent | HeaderValue::Null | HeaderValue::Present(_) => {
            return Err(Reject::new(
                RejectReason::SignatureMissing,
                format!(
                    "source {} must sign its records in header `{header}`",
                    excerpt(source)
                ),
            ))
        }
        // Two signatures would let a forwarder choose which one counts.
        HeaderValue::Repeated(count) => {
            return Err(invalid(format!("header `{header}` appears {count} times")))
        }
    };
    let digest = hex::decode(signature)
        .map_err(|_| invalid(format!("header `{header}` is not a hex digest")))?;
    let mut mac = HmacSha256::new_from_slice(key).map_err(|_| {
        invalid(format!(
            "the key for source {} is unusable",
            excerpt(source)
        ))
    })?;
    if detect_encoding(raw) == Encoding::Binary {
        let input = binary_signing_input(event, raw.value_bytes()).ok_or_else(|| {
            invalid("a signed binary-mode attribute contains a line feed".to_owned())
        })?;
        mac.update(&input);
    } else {
        // Structured and Avro: the value holds every attribute.
        mac.update(raw.value_bytes());
    }
    // verify_slice compares in constant time.
    mac.verify_slice(&digest).map_err(|_| {
        invalid("the signature does not match the signed attributes and value".to_owned())
    })
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "absent or null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn measure(meter: &CompiledMeter, data: &Value) -> Result<Measure, Reject> {
    let (value, unique_value) = match meter.aggregation {
        Aggregation::Count => (None, None),
        Aggregation::UniqueCount => (None, Some(unique_value(meter, data)?)),
        Aggregation::Sum | Aggregation::Max | Aggregation::Latest => {
            (Some(numeric_value(meter, data)?), None)
        }
    };
    let group = meter
        .group_by
        .iter()
        .map(|(name, path)| Ok((name.clone(), group_value(meter, name, path, data)?)))
        .collect::<Result<_, Reject>>()?;
    Ok(Measure {
        meter: meter.slug.clone(),
        value,
        unique_value,
        group,
    })
}

fn value_reject(meter: &CompiledMeter, reason: RejectReason, what: String) -> Reject {
    let path = meter
        .value_path
        .as_ref()
        .map_or("value_property", JsonPath::as_str);
    Reject::new(
        reason,
        format!("meter `{}`: value at {path} {what}", meter.slug),
    )
}

/// The node at the meter's value_property, refusing absent and null.
fn present_value<'d>(meter: &CompiledMeter, data: &'d Value) -> Result<&'d Value, Reject> {
    match meter.value_path.as_ref().and_then(|path| path.get(data)) {
        None | Some(Value::Null) => Err(value_reject(
            meter,
            RejectReason::ValueMissing,
            "is missing or null".to_owned(),
        )),
        Some(value) => Ok(value),
    }
}

fn numeric_value(meter: &CompiledMeter, data: &Value) -> Result<Decimal, Reject> {
    let text = match present_value(meter, data)? {
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.clone(),
        other => {
            return Err(value_reject(
                meter,
                RejectReason::ValueNotNumeric,
                format!("is {}, not a number", describe(other)),
            ))
        }
    };
    let value = parse_exact_decimal(&text).map_err(|err| {
        let (reason, what) = match err {
            NumericError::NotNumeric => (RejectReason::ValueNotNumeric, "is not numeric"),
            NumericError::NotFinite => (RejectReason::ValueNotFinite, "is not finite"),
            NumericError::OutOfRange => (
                RejectReason::ValueOutOfRange,
                "cannot be held exactly as a decimal",
            ),
        };
        value_reject(meter, reason, format!("{} {what}", excerpt(&text)))
    })?;
    if value.is_sign_negative() {
        return Err(value_reject(
            meter,
            RejectReason::ValueNegative,
            format!("{value} is negative"),
        ));
    }
    match meter.multiply_by {
        None => Ok(value),
        Some(factor) => exact_mul(value, factor).map_err(|_| {
            value_reject(
                meter,
                RejectReason::ValueOutOfRange,
                format!("{value} times the unit conversion {factor} cannot be held exactly as a decimal"),
            )
        }),
    }
}

fn unique_value(meter: &CompiledMeter, data: &Value) -> Result<String, Reject> {
    match present_value(meter, data)? {
        Value::String(text) => Ok(text.clone()),
        Value::Bool(flag) => Ok(flag.to_string()),
        Value::Number(number) => Ok(canonical_number(&number.to_string())),
        other => Err(value_reject(
            meter,
            RejectReason::ValueNotScalar,
            format!("is {}, not a string, number or boolean", describe(other)),
        )),
    }
}

/// One spelling per numeric value, so `1`, `1.0` and `1e0` count once: the
/// exact decimal without trailing zeros, or the JSON text if out of range.
fn canonical_number(text: &str) -> String {
    match parse_exact_decimal(text) {
        Ok(value) => value.normalize().to_string(),
        Err(_) => text.to_owned(),
    }
}

/// group_by values: strings as-is, numbers and booleans as their JSON text,
/// missing or null as "" (its own group). An object or array is refused
/// (`invalid_group_value`): it would otherwise open a new billing segment,
/// with fresh tiers and tier fees, for every shape a producer sends.
fn group_value(
    meter: &CompiledMeter,
    name: &str,
    path: &JsonPath,
    data: &Value,
) -> Result<String, Reject> {
    match path.get(data) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(scalar @ (Value::Number(_) | Value::Bool(_))) => Ok(scalar.to_string()),
        Some(other @ (Value::Object(_) | Value::Array(_))) => Err(Reject::new(
            RejectReason::InvalidGroupValue,
            format!(
                "meter `{}`: group_by.{name} at {} is {}, not a string, number or boolean",
                meter.slug,
                path.as_str(),
                describe(other)
            ),
        )),
    }
}

/// Why text is not an exact decimal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumericError {
    /// Not of the numeric grammar.
    NotNumeric,
    /// NaN or an infinity.
    NotFinite,
    /// Numeric, but not representable by [`Decimal`] without rounding.
    OutOfRange,
}

impl fmt::Display for NumericError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NumericError::NotNumeric => "not a decimal number",
            NumericError::NotFinite => "not finite",
            NumericError::OutOfRange => "not exactly representable as a 96-bit decimal",
        })
    }
}

/// Parses `[+-]digits[.digits][(e|E)[+-]digits]` (digits may be omitted on
/// one side of the point) exactly into a [`Decimal`], keeping the scale the
/// text shows; see the module docs. `-0` becomes `0`.
pub fn parse_exact_decimal(text: &str) -> Result<Decimal, NumericError> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if NON_FINITE_WORDS
        .iter()
        .any(|word| unsigned.eq_ignore_ascii_case(word))
    {
        return Err(NumericError::NotFinite);
    }
    let negative = text.starts_with('-');
    let bytes = unsigned.as_bytes();
    let digit_run = |from: usize| {
        bytes.get(from..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        })
    };

    let int_len = digit_run(0);
    let mut pos = int_len;
    let mut frac_len = 0;
    if bytes.get(pos) == Some(&b'.') {
        frac_len = digit_run(pos + 1);
        pos += 1 + frac_len;
    }
    if int_len + frac_len == 0 {
        return Err(NumericError::NotNumeric);
    }
    let mut exponent: i128 = 0;
    if matches!(bytes.get(pos), Some(b'e' | b'E')) {
        pos += 1;
        let exponent_negative = match bytes.get(pos) {
            Some(b'-') => {
                pos += 1;
                true
            }
            Some(b'+') => {
                pos += 1;
                false
            }
            _ => false,
        };
        let exp_len = digit_run(pos);
        if exp_len == 0 {
            return Err(NumericError::NotNumeric);
        }
        // Saturate: an exponent this large is out of range for any non-zero
        // mantissa the text can hold, and zero stays zero.
        let magnitude = bytes
            .get(pos..pos + exp_len)
            .unwrap_or_default()
            .iter()
            .fold(0i128, |acc, digit| {
                acc.saturating_mul(10)
                    .saturating_add(i128::from(digit - b'0'))
            });
        exponent = if exponent_negative {
            -magnitude
        } else {
            magnitude
        };
        pos += exp_len;
    }
    if pos != bytes.len() {
        return Err(NumericError::NotNumeric);
    }
    let mut digits = Vec::with_capacity(int_len + frac_len);
    digits.extend_from_slice(bytes.get(..int_len).unwrap_or_default());
    digits.extend_from_slice(
        bytes
            .get(int_len + 1..int_len + 1 + frac_len)
            .unwrap_or_default(),
    );
    let scale = i128::try_from(frac_len)
        .map_err(|_| NumericError::OutOfRange)?
        .saturating_sub(exponent);
    decimal_from_digits(negative, &digits, scale)
}

/// Builds `±digits × 10^-scale` exactly (ASCII `digits`), dropping only
/// trailing zeros when needed to fit.
fn decimal_from_digits(
    negative: bool,
    digits: &[u8],
    scale: i128,
) -> Result<Decimal, NumericError> {
    let Some(first_significant) = digits.iter().position(|d| *d != b'0') else {
        // Zero: any scale is exact; keep what fits.
        let scale = u32::try_from(scale.clamp(0, DECIMAL_MAX_SCALE))
            .map_err(|_| NumericError::OutOfRange)?;
        return Decimal::try_from_i128_with_scale(0, scale).map_err(|_| NumericError::OutOfRange);
    };
    let mut significant = digits.get(first_significant..).unwrap_or_default();
    let mut scale = scale;
    while (scale > DECIMAL_MAX_SCALE || significant.len() > DECIMAL_MAX_DIGITS)
        && scale > 0
        && significant.last() == Some(&b'0')
    {
        significant = significant.get(..significant.len() - 1).unwrap_or_default();
        scale -= 1;
    }
    // A negative scale means trailing integer zeros to append.
    let padding = usize::try_from((-scale).max(0)).map_err(|_| NumericError::OutOfRange)?;
    if scale > DECIMAL_MAX_SCALE || significant.len().saturating_add(padding) > DECIMAL_MAX_DIGITS {
        return Err(NumericError::OutOfRange);
    }
    let mantissa = significant
        .iter()
        .map(|d| u128::from(d - b'0'))
        .chain(std::iter::repeat_n(0, padding))
        .fold(0u128, |acc, digit| acc * 10 + digit);
    if mantissa > DECIMAL_MAX_MANTISSA {
        return Err(NumericError::OutOfRange);
    }
    let signed = i128::try_from(mantissa).map_err(|_| NumericError::OutOfRange)?;
    let scale = u32::try_from(scale.max(0)).map_err(|_| NumericError::OutOfRange)?;
    let value = Decimal::try_from_i128_with_scale(if negative { -signed } else { signed }, scale)
        .map_err(|_| NumericError::OutOfRange)?;
    Ok(value)
}

/// `a × b` exactly, or `OutOfRange` when the product needs rounding or
/// overflows. rust_decimal's own `checked_mul` would round products with more
/// than 28 fractional digits; billing must not.
pub fn exact_mul(a: Decimal, b: Decimal) -> Result<Decimal, NumericError> {
    let a_digits = a.mantissa().unsigned_abs().to_string();
    let b_digits = b.mantissa().unsigned_abs().to_string();
    // Schoolbook multiplication of two ≤29-digit numbers, least significant first.
    let mut columns = vec![0u32; a_digits.len() + b_digits.len()];
    for (i, da) in a_digits.bytes().rev().enumerate() {
        for (j, db) in b_digits.bytes().rev().enumerate() {
            if let Some(column) = columns.get_mut(i + j) {
                *column += u32::from(da - b'0') * u32::from(db - b'0');
            }
        }
    }
    let mut carry = 0u32;
    for column in columns.iter_mut() {
        let total = *column + carry;
        *column = total % 10;
        carry = total / 10;
    }
    let product: Vec<u8> = columns
        .iter()
        .rev()
        .map(|digit| b'0' + u8::try_from(*digit).unwrap_or(0))
        .collect();
    let negative = a.is_sign_negative() != b.is_sign_negative();
    decimal_from_digits(
        negative,
        &product,
        i128::from(a.scale()) + i128::from(b.scale()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::Encoding;
    use crate::ingest::decode::tests::{
        binary_headers, example_avro, wire, FakeRegistry, EXAMPLE_SCHEMA_ID,
    };
    use crate::ingest::decode::{decode, AvroDecoder, DecodeError};
    use crate::ingest::reason::ALL_REASON_CODES;
    use crate::meter::UnitConversion;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::HashSet;
    use std::str::FromStr;

    type Headers = Vec<(String, Option<Vec<u8>>)>;

    const KEY: &[u8] = b"top secret key";

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 10, 12, 0, 0).unwrap()
    }

    fn dec(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    fn meter(slug: &str, event_type: &str, aggregation: Aggregation, value: Option<&str>) -> Meter {
        Meter {
            slug: slug.to_owned(),
            event_type: event_type.to_owned(),
            aggregation,
            value_property: value.map(str::to_owned),
            group_by: BTreeMap::new(),
            unit_conversion: None,
        }
    }

    fn meters() -> Vec<Meter> {
        let mut tokens = meter(
            "input_tokens",
            "llm.tokens",
            Aggregation::Sum,
            Some("$.tokens"),
        );
        tokens
            .group_by
            .insert("model".to_owned(), "$.model".to_owned());
        tokens
            .group_by
            .insert("region".to_owned(), "$.region".to_owned());
        let mut storage = meter(
            "storage_gb",
            "storage.bytes",
            Aggregation::Max,
            Some("$.bytes"),
        );
        storage.unit_conversion = Some(UnitConversion {
            multiply_by: dec("0.000000001"),
            unit: "GB".to_owned(),
        });
        vec![
            tokens,
            meter("requests", "llm.tokens", Aggregation::Count, None),
            meter(
                "active_users",
                "llm.tokens",
                Aggregation::UniqueCount,
                Some("$.user"),
            ),
            storage,
            meter(
                "seats",
                "seats.set",
                Aggregation::Latest,
                Some("$['seat count']"),
            ),
        ]
    }

    fn index() -> MeterIndex {
        MeterIndex::new(&meters()).unwrap()
    }

    fn origin(encoding: Encoding) -> Origin {
        Origin {
            topic: "usage.raw".to_owned(),
            partition: 2,
            offset: 77,
            encoding,
        }
    }

    fn envelope(event_type: &str, data: Value) -> Value {
        json!({
            "specversion": "1.0",
            "id": "evt-1",
            "source": "svc/api",
            "type": event_type,
            "subject": "cust-1",
            "time": "2024-05-10T11:59:00Z",
            "data": data
        })
    }

    fn tokens(data: Value) -> Vec<u8> {
        serde_json::to_vec(&envelope("llm.tokens", data)).unwrap()
    }

    fn sign(key: &[u8], bytes: &[u8]) -> String {
        let mut mac = HmacSha256::new_from_slice(key).unwrap();
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    }

    fn signed_rules() -> ValidateRules {
        let mut rules = ValidateRules::default();
        rules.hmac_keys.insert("svc/api".to_owned(), KEY.to_vec());
        rules
    }

    fn signature_header(value: &str) -> (String, Option<Vec<u8>>) {
        (
            DEFAULT_SIGNATURE_HEADER.to_owned(),
            Some(value.as_bytes().to_vec()),
        )
    }

    /// decode + validate, as the stage runs them.
    fn run_full(
        value: &[u8],
        headers: &[(String, Option<Vec<u8>>)],
        avro: Option<&dyn AvroDecoder>,
        meters: &MeterIndex,
        rules: &ValidateRules,
    ) -> Result<ValidatedEvent, DecodeError> {
        let raw = RawRecord {
            key: None,
            value: Some(value),
            headers,
        };
        let (event, encoding) = decode(&raw, avro)?;
        Ok(validate(
            event,
            &raw,
            meters,
            rules,
            now(),
            origin(encoding),
        )?)
    }

    fn run(
        value: &[u8],
        headers: &[(String, Option<Vec<u8>>)],
        rules: &ValidateRules,
    ) -> Result<ValidatedEvent, DecodeError> {
        run_full(value, headers, None, &index(), rules)
    }

    fn ok(value: &[u8]) -> ValidatedEvent {
        run(value, &[], &ValidateRules::default()).unwrap()
    }

    fn code(result: Result<ValidatedEvent, DecodeError>) -> &'static str {
        match result {
            Err(DecodeError::Reject(reject)) => reject.code(),
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    fn code_of(value: &[u8]) -> &'static str {
        code(run(value, &[], &ValidateRules::default()))
    }

    fn value_of(data: Value) -> Result<Decimal, &'static str> {
        match run(&tokens(data), &[], &ValidateRules::default()) {
            Ok(event) => Ok(event
                .measures
                .iter()
                .find(|m| m.meter == "input_tokens")
                .unwrap()
                .value
                .unwrap()),
            Err(DecodeError::Reject(reject)) => Err(reject.code()),
            Err(other) => panic!("{other:?}"),
        }
    }

    /// Raw JSON text for `tokens`, so number spellings reach the parser untouched.
    fn value_of_raw(tokens_json: &str) -> Result<Decimal, &'static str> {
        let text = format!(
            r#"{{"specversion":"1.0","id":"e","source":"svc/api","type":"llm.tokens","subject":"c","time":"2024-05-10T11:59:00Z","data":{{"tokens":{tokens_json},"user":"u"}}}}"#
        );
        match run(text.as_bytes(), &[], &ValidateRules::default()) {
            Ok(event) => Ok(event
                .measures
                .iter()
                .find(|m| m.meter == "input_tokens")
                .unwrap()
                .value
                .unwrap()),
            Err(DecodeError::Reject(reject)) => Err(reject.code()),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn happy_path_extracts_one_measure_per_meter_sorted_by_slug() {
        let event = ok(&tokens(
            json!({"tokens": 1200, "model": "gpt-x", "user": "u-1"}),
        ));
        assert_eq!(event.id, "evt-1");
        assert_eq!(event.source, "svc/api");
        assert_eq!(event.event_type, "llm.tokens");
        assert_eq!(event.subject, "cust-1");
        assert_eq!(rfc3339_utc::format(&event.time), "2024-05-10T11:59:00Z");
        assert_eq!(event.origin, origin(Encoding::Structured));
        assert_eq!(
            event.data,
            json!({"tokens": 1200, "model": "gpt-x", "user": "u-1"})
        );
        let slugs: Vec<&str> = event.measures.iter().map(|m| m.meter.as_str()).collect();
        assert_eq!(slugs, ["active_users", "input_tokens", "requests"]);
        let [users, input, requests] = &event.measures[..] else {
            panic!()
        };
        assert_eq!(users.value, None);
        assert_eq!(users.unique_value.as_deref(), Some("u-1"));
        assert_eq!(input.value, Some(dec("1200")));
        assert_eq!(input.unique_value, None);
        assert_eq!(input.group.get("model").map(String::as_str), Some("gpt-x"));
        assert_eq!(input.group.get("region").map(String::as_str), Some(""));
        assert_eq!(requests.value, None);
        assert_eq!(requests.unique_value, None);
        assert!(requests.group.is_empty());
    }

    #[test]
    fn binary_and_avro_events_validate() {
        let headers = binary_headers("2024-05-10T11:00:00Z");
        let event = run(
            br#"{"tokens": "7", "user": 5}"#,
            &headers,
            &ValidateRules::default(),
        )
        .unwrap();
        assert_eq!(event.origin.encoding, Encoding::Binary);
        assert_eq!(event.measures[1].value, Some(dec("7")));

        let registry = FakeRegistry::example();
        let mut users = meter("users", "llm.tokens", Aggregation::Sum, Some("$.tokens"));
        users
            .group_by
            .insert("model".to_owned(), "$.model".to_owned());
        let avro_index = MeterIndex::new(&[users]).unwrap();
        let bytes = example_avro(&registry, "2024-05-10T11:00:00Z", 4096);
        let event = run_full(
            &bytes,
            &[],
            Some(&registry),
            &avro_index,
            &ValidateRules::default(),
        )
        .unwrap();
        assert_eq!(event.origin.encoding, Encoding::Avro);
        assert_eq!(event.measures[0].value, Some(dec("4096")));
        assert_eq!(event.measures[0].group["model"], "gpt-x");
    }

    /// Every reason code is produced by some input through decode + validate.
    #[test]
    fn every_reason_code_is_reachable() {
        let defaults = ValidateRules::default();
        let registry = FakeRegistry::example();
        let with_tokens = |tokens: Value| run(&tokens_bytes(tokens), &[], &defaults);
        fn tokens_bytes(tokens: Value) -> Vec<u8> {
            super::tests::tokens(json!({"tokens": tokens, "user": "u"}))
        }
        let env = |edit: &dyn Fn(&mut Value)| {
            let mut value = envelope("llm.tokens", json!({"tokens": 1, "user": "u"}));
            edit(&mut value);
            run(&serde_json::to_vec(&value).unwrap(), &[], &defaults)
        };
        let allow_other = ValidateRules {
            allowed_sources: vec!["svc/other".to_owned()],
            ..ValidateRules::default()
        };
        let cases: Vec<(&str, Result<ValidatedEvent, DecodeError>)> = vec![
            ("empty_value", run(b"", &[], &defaults)),
            ("malformed_json", run(b"{", &[], &defaults)),
            ("not_an_object", run(b"[1]", &[], &defaults)),
            (
                "duplicate_member",
                run(
                    &String::from_utf8(tokens_bytes(json!(5)))
                        .unwrap()
                        .replacen(r#""tokens":5"#, r#""tokens":5,"tokens":500"#, 1)
                        .into_bytes(),
                    &[],
                    &defaults,
                ),
            ),
            (
                "unsupported_encoding",
                run(&wire(EXAMPLE_SCHEMA_ID, b"\x02"), &[], &defaults),
            ),
            (
                "avro_schema_not_found",
                run_full(
                    &wire(555, b"\x02"),
                    &[],
                    Some(&registry),
                    &index(),
                    &defaults,
                ),
            ),
            (
                "avro_decode_failed",
                run_full(
                    &wire(EXAMPLE_SCHEMA_ID, b"\x06ab"),
                    &[],
                    Some(&registry),
                    &index(),
                    &defaults,
                ),
            ),
            ("missing_attribute", env(&|v| v["subject"] = Value::Null)),
            ("invalid_attribute", env(&|v| v["id"] = json!(5))),
            (
                "unsupported_specversion",
                env(&|v| v["specversion"] = json!("0.3")),
            ),
            ("invalid_time", env(&|v| v["time"] = json!("noon"))),
            (
                "event_too_old",
                env(&|v| v["time"] = json!("2020-01-01T00:00:00Z")),
            ),
            (
                "event_in_future",
                env(&|v| v["time"] = json!("2030-01-01T00:00:00Z")),
            ),
            (
                "source_not_allowed",
                run(&tokens_bytes(json!(1)), &[], &allow_other),
            ),
            (
                "signature_missing",
                run(&tokens_bytes(json!(1)), &[], &signed_rules()),
            ),
            (
                "signature_invalid",
                run(
                    &tokens_bytes(json!(1)),
                    &[signature_header("00")],
                    &signed_rules(),
                ),
            ),
            (
                "signature_required",
                run(
                    &tokens_bytes(json!(1)),
                    &[],
                    &ValidateRules {
                        require_signature: true,
                        ..ValidateRules::default()
                    },
                ),
            ),
            ("data_not_object", env(&|v| v["data"] = json!([1]))),
            ("unknown_event_type", env(&|v| v["type"] = json!("nope"))),
            ("value_missing", env(&|v| v["data"] = json!({"user": "u"}))),
            ("value_not_numeric", with_tokens(json!("abc"))),
            ("value_not_finite", with_tokens(json!("NaN"))),
            ("value_negative", with_tokens(json!(-1))),
            ("value_out_of_range", with_tokens(json!("1e400"))),
            (
                "value_not_scalar",
                env(&|v| v["data"] = json!({"tokens": 1, "user": {"id": 1}})),
            ),
            (
                "invalid_group_value",
                env(&|v| v["data"] = json!({"tokens": 1, "user": "u", "model": {"x": 1}})),
            ),
            (
                "retraction_invalid",
                env(&|v| {
                    v["type"] = json!("meterline.usage.retract");
                    v["data"] = json!({"source": "svc"});
                }),
            ),
            (
                "amendment_invalid",
                env(&|v| {
                    v["type"] = json!("meterline.usage.amend");
                    v["data"] = json!({"source": "svc", "id": "e0"});
                }),
            ),
            (
                "correction_source_not_permitted",
                run(
                    &serde_json::to_vec(&envelope(
                        "meterline.usage.retract",
                        json!({"source": "svc/other-team", "id": "e0"}),
                    ))
                    .unwrap(),
                    &[],
                    &ValidateRules {
                        correction_sources: Some(Vec::new()),
                        ..ValidateRules::default()
                    },
                ),
            ),
        ];
        let mut reached = HashSet::new();
        for (expected, result) in cases {
            assert_eq!(code(result), expected);
            reached.insert(expected);
        }
        // Checked before decoding, by the stage and the runtime (own tests).
        reached.extend(["invalid_header", "event_too_large"]);
        let all: HashSet<&str> = ALL_REASON_CODES.iter().copied().collect();
        assert_eq!(reached, all, "every code must be reachable and tested");
    }

    #[test]
    fn validate_rechecks_attributes_of_hand_built_events() {
        let raw = RawRecord {
            key: None,
            value: Some(b"{}"),
            headers: &[],
        };
        let good = CloudEvent {
            specversion: "1.0".to_owned(),
            id: "1".to_owned(),
            source: "svc/api".to_owned(),
            event_type: "llm.tokens".to_owned(),
            subject: "c".to_owned(),
            time: now(),
            time_raw: None,
            datacontenttype: None,
            data: json!({"tokens": 1, "user": "u"}),
        };
        let check = |event: CloudEvent| {
            validate(
                event,
                &raw,
                &index(),
                &ValidateRules::default(),
                now(),
                origin(Encoding::Structured),
            )
            .map_err(|r| r.code())
        };
        assert!(check(good.clone()).is_ok());
        for edit in [
            (|e: &mut CloudEvent| e.id.clear()) as fn(&mut CloudEvent),
            |e| e.source.clear(),
            |e| e.event_type.clear(),
            |e| e.subject.clear(),
            |e| e.specversion.clear(),
        ] {
            let mut event = good.clone();
            edit(&mut event);
            assert_eq!(check(event), Err("missing_attribute"));
        }
        let mut event = good.clone();
        event.subject.push('\u{1F}');
        assert_eq!(check(event), Err("invalid_attribute"));
        let mut event = good;
        event.specversion = "0.3".to_owned();
        assert_eq!(check(event), Err("unsupported_specversion"));
    }

    #[test]
    fn time_window_bounds_are_inclusive_to_the_microsecond() {
        let rules = ValidateRules::default();
        let oldest = now() - TimeDelta::days(i64::from(rules.max_event_age_days));
        let latest = now() + TimeDelta::seconds(i64::from(rules.max_clock_skew_s));
        let micro = TimeDelta::microseconds(1);
        let at = |time: DateTime<Utc>| {
            let mut value = envelope("llm.tokens", json!({"tokens": 1, "user": "u"}));
            value["time"] = json!(rfc3339_utc::format(&time));
            run(&serde_json::to_vec(&value).unwrap(), &[], &rules).map_err(|err| match err {
                DecodeError::Reject(reject) => reject.code(),
                DecodeError::Retriable(_) => "retriable",
            })
        };
        assert!(at(oldest).is_ok());
        assert_eq!(at(oldest - micro).unwrap_err(), "event_too_old");
        assert!(at(latest).is_ok());
        assert_eq!(at(latest + micro).unwrap_err(), "event_in_future");
        assert!(at(now()).is_ok());
    }

    #[test]
    fn time_window_follows_configuration_and_offsets() {
        let rules = ValidateRules {
            max_event_age_days: 1,
            max_clock_skew_s: 0,
            ..ValidateRules::default()
        };
        let at = |time: &str| {
            let mut value = envelope("llm.tokens", json!({"tokens": 1, "user": "u"}));
            value["time"] = json!(time);
            run(&serde_json::to_vec(&value).unwrap(), &[], &rules).map(|e| e.time)
        };
        // 14:00+02:00 is exactly now (12:00Z): inside a zero skew.
        assert_eq!(at("2024-05-10T14:00:00+02:00").unwrap(), now());
        assert!(at("2024-05-10T14:00:00.000001+02:00").is_err());
        assert!(at("2024-05-09T12:00:00Z").is_ok());
        assert!(at("2024-05-09T11:59:59.999999Z").is_err());
        // Extreme configuration does not overflow.
        let wide = ValidateRules {
            max_event_age_days: u32::MAX,
            max_clock_skew_s: u32::MAX,
            ..ValidateRules::default()
        };
        let mut value = envelope("llm.tokens", json!({"tokens": 1, "user": "u"}));
        value["time"] = json!("0001-01-01T00:00:00Z");
        assert!(run(&serde_json::to_vec(&value).unwrap(), &[], &wide).is_ok());
    }

    #[test]
    fn source_allow_list() {
        let rules = |sources: &[&str]| ValidateRules {
            allowed_sources: sources.iter().map(|s| s.to_string()).collect(),
            ..ValidateRules::default()
        };
        assert!(rules(&[]).source_allowed("anything"));
        assert!(rules(&["*"]).source_allowed("anything"));
        assert!(rules(&["svc/api"]).source_allowed("svc/api"));
        assert!(!rules(&["svc/api"]).source_allowed("svc/api2"));
        assert!(!rules(&["svc/api"]).source_allowed("svc"));
        assert!(rules(&["svc/*"]).source_allowed("svc/api"));
        assert!(rules(&["svc/*"]).source_allowed("svc/"));
        assert!(!rules(&["svc/*"]).source_allowed("svc"));
        assert!(rules(&["other", "svc/*"]).source_allowed("svc/x"));
        // `*` only counts at the end.
        assert!(!rules(&["*/api"]).source_allowed("svc/api"));

        let bytes = tokens(json!({"tokens": 1, "user": "u"}));
        assert!(run(&bytes, &[], &rules(&["svc/*"])).is_ok());
        assert_eq!(
            code(run(&bytes, &[], &rules(&["svc/web"]))),
            "source_not_allowed"
        );
    }

    #[test]
    fn signature_covers_the_exact_value_bytes() {
        let rules = signed_rules();
        let bytes = tokens(json!({"tokens": 1, "user": "u"}));
        let good = sign(KEY, &bytes);
        assert!(run(&bytes, &[signature_header(&good)], &rules).is_ok());
        assert!(run(&bytes, &[signature_header(&good.to_uppercase())], &rules).is_ok());

        // Same JSON meaning, different bytes: the signature no longer matches.
        let pretty =
            serde_json::to_vec_pretty(&serde_json::from_slice::<Value>(&bytes).unwrap()).unwrap();
        assert_eq!(
            code(run(&pretty, &[signature_header(&good)], &rules)),
            "signature_invalid"
        );
        // Wrong key.
        let forged = sign(b"guessed key", &bytes);
        assert_eq!(
            code(run(&bytes, &[signature_header(&forged)], &rules)),
            "signature_invalid"
        );
        // Truncated, non-hex, prefixed, padded.
        for bad in [
            &good[..62],
            "zz",
            &format!("sha256={good}"),
            &format!(" {good}"),
        ] {
            assert_eq!(
                code(run(&bytes, &[signature_header(bad)], &rules)),
                "signature_invalid",
                "{bad}"
            );
        }
        // Repeated header, even with one good copy.
        let twice = [signature_header(&good), signature_header(&good)];
        assert_eq!(code(run(&bytes, &twice, &rules)), "signature_invalid");
        // Missing, null, empty.
        assert_eq!(code(run(&bytes, &[], &rules)), "signature_missing");
        let null = [(DEFAULT_SIGNATURE_HEADER.to_owned(), None)];
        assert_eq!(code(run(&bytes, &null, &rules)), "signature_missing");
        assert_eq!(
            code(run(&bytes, &[signature_header("")], &rules)),
            "signature_missing"
        );
    }

    #[test]
    fn signature_is_only_required_from_keyed_sources_and_uses_configured_header() {
        let mut rules = signed_rules();
        rules.hmac_keys = BTreeMap::from([("svc/other".to_owned(), KEY.to_vec())]);
        let bytes = tokens(json!({"tokens": 1, "user": "u"}));
        assert!(run(&bytes, &[], &rules).is_ok(), "svc/api has no key");

        let mut rules = signed_rules();
        rules.signature_header = "x-sig".to_owned();
        let header = [("x-sig".to_owned(), Some(sign(KEY, &bytes).into_bytes()))];
        assert!(run(&bytes, &header, &rules).is_ok());
        assert_eq!(
            code(run(&bytes, &[signature_header(&sign(KEY, &bytes))], &rules)),
            "signature_missing"
        );
    }

    /// The binary-mode signing input, spelled out as the README documents
    /// it for producers.
    fn canonical(attributes: [&str; 6], data: &[u8]) -> Vec<u8> {
        let mut input = Vec::new();
        for attribute in attributes {
            input.extend_from_slice(attribute.as_bytes());
            input.push(b'\n');
        }
        input.extend_from_slice(data);
        input
    }

    const BIN_TIME: &str = "2024-05-10T11:00:00Z";
    const BIN_ATTRIBUTES: [&str; 6] = [
        "1.0",
        "evt-bin-1",
        "svc/bin",
        "llm.tokens",
        "cust-7",
        BIN_TIME,
    ];

    fn bin_rules() -> ValidateRules {
        let mut rules = ValidateRules::default();
        rules.hmac_keys.insert("svc/bin".to_owned(), KEY.to_vec());
        rules
    }

    #[test]
    fn binary_mode_signature_covers_the_attributes_and_the_data() {
        let rules = bin_rules();
        let data = br#"{"tokens": 3, "user": "u"}"#;
        let good = sign(KEY, &canonical(BIN_ATTRIBUTES, data));
        let mut headers: Headers = binary_headers(BIN_TIME);
        headers.push(signature_header(&good));
        assert!(run(data, &headers, &rules).is_ok());

        // Signing the value alone is no longer enough.
        let mut headers: Headers = binary_headers(BIN_TIME);
        headers.push(signature_header(&sign(KEY, data)));
        assert_eq!(code(run(data, &headers, &rules)), "signature_invalid");

        // Re-sent with an edited attribute header: refused, whichever it is.
        for (name, edited) in [
            ("ce_subject", "cust-other"),
            ("ce_id", "evt-bin-2"),
            ("ce_time", "2024-05-10T11:00:01Z"),
            ("ce_type", "storage.bytes"),
        ] {
            let mut headers: Headers = binary_headers(BIN_TIME);
            for (header, value) in headers.iter_mut() {
                if header == name {
                    *value = Some(edited.as_bytes().to_vec());
                }
            }
            headers.push(signature_header(&good));
            assert_eq!(
                code(run(data, &headers, &rules)),
                "signature_invalid",
                "{name}"
            );
        }
        // Edited data: refused too.
        let mut headers: Headers = binary_headers(BIN_TIME);
        headers.push(signature_header(&good));
        assert_eq!(
            code(run(br#"{"tokens": 30, "user": "u"}"#, &headers, &rules)),
            "signature_invalid"
        );
    }

    #[test]
    fn binary_signing_input_is_exact_and_refuses_line_feeds() {
        let data = br#"{"tokens": 3}"#;
        let raw_headers: Headers = binary_headers(BIN_TIME);
        let raw = RawRecord {
            key: None,
            value: Some(data),
            headers: &raw_headers,
        };
        let (event, _) = decode(&raw, None).unwrap();
        assert_eq!(
            binary_signing_input(&event, data).unwrap(),
            b"1.0\nevt-bin-1\nsvc/bin\nllm.tokens\ncust-7\n2024-05-10T11:00:00Z\n{\"tokens\": 3}"
                .to_vec()
        );
        // The raw time text is signed, not its UTC normalisation.
        let offset_headers: Headers = binary_headers("2024-05-10T13:00:00+02:00");
        let raw = RawRecord {
            key: None,
            value: Some(data),
            headers: &offset_headers,
        };
        let (event, _) = decode(&raw, None).unwrap();
        assert!(binary_signing_input(&event, data)
            .unwrap()
            .ends_with(b"\n2024-05-10T13:00:00+02:00\n{\"tokens\": 3}"));
        let mut multi_line = event;
        multi_line.subject = "cust\n7".to_owned();
        assert_eq!(binary_signing_input(&multi_line, data), None);
    }

    #[test]
    fn require_signature_refuses_sources_without_a_key() {
        let mut rules = signed_rules();
        rules.require_signature = true;
        let bytes = tokens(json!({"tokens": 1, "user": "u"}));
        // svc/api has a key: signed is accepted, unsigned is missing a signature.
        assert!(run(&bytes, &[signature_header(&sign(KEY, &bytes))], &rules).is_ok());
        assert_eq!(code(run(&bytes, &[], &rules)), "signature_missing");
        // A source without a key is refused, signed or not.
        let mut other = envelope("llm.tokens", json!({"tokens": 1, "user": "u"}));
        other["source"] = json!("svc/unkeyed");
        let other = serde_json::to_vec(&other).unwrap();
        assert_eq!(code(run(&other, &[], &rules)), "signature_required");
        assert_eq!(
            code(run(&other, &[signature_header(&sign(KEY, &other))], &rules)),
            "signature_required"
        );
        // Off (the default): accepted.
        rules.require_signature = false;
        assert!(run(&other, &[], &rules).is_ok());
    }

    #[test]
    fn records_larger_than_max_event_bytes_are_refused() {
        let rules = ValidateRules {
            max_event_bytes: 100,
            ..ValidateRules::default()
        };
        let headers: Headers = vec![
            ("h".to_owned(), Some(vec![b'x'; 9])),
            ("n".to_owned(), None),
        ];
        let value = vec![b'v'; 80];
        let raw = RawRecord {
            key: Some(b"key"),
            value: Some(&value),
            headers: &headers,
        };
        // 3 + 80 + (1 + 9) + 1 = 94
        assert_eq!(record_size(&raw), 94);
        assert!(check_size(&raw, &rules).is_ok());
        let value = vec![b'v'; 87];
        let raw = RawRecord {
            value: Some(&value),
            ..raw
        };
        assert_eq!(record_size(&raw), 101);
        let reject = check_size(&raw, &rules).unwrap_err();
        assert_eq!(reject.code(), "event_too_large");
        assert!(reject.message.contains("101 bytes"), "{}", reject.message);
        assert_eq!(ValidateRules::default().max_event_bytes, 262_144);
    }

    #[test]
    fn data_must_be_an_object() {
        for data in [
            json!(null),
            json!([1]),
            json!("{\"tokens\":1}"),
            json!(5),
            json!(true),
        ] {
            assert_eq!(code_of(&tokens(data)), "data_not_object");
        }
        let mut value = envelope("llm.tokens", json!({}));
        value.as_object_mut().unwrap().remove("data");
        assert_eq!(
            code_of(&serde_json::to_vec(&value).unwrap()),
            "data_not_object"
        );
        let headers = binary_headers("2024-05-10T11:00:00Z");
        assert_eq!(
            code(run(b"[1, 2]", &headers, &ValidateRules::default())),
            "data_not_object"
        );
    }

    #[test]
    fn unknown_event_type() {
        let bytes = serde_json::to_vec(&envelope("llm.images", json!({"n": 1}))).unwrap();
        assert_eq!(code_of(&bytes), "unknown_event_type");
    }

    #[test]
    fn numbers_and_numeric_strings_parse_exactly() {
        for (input, expected) in [
            (json!(12), "12"),
            (json!("12"), "12"),
            (json!("2.50"), "2.50"),
            (json!("+3"), "3"),
            (json!("1.5e3"), "1500"),
            (json!("1.5E+3"), "1500"),
            (json!("15e-1"), "1.5"),
            (json!("1E-2"), "0.01"),
            (json!(".5"), "0.5"),
            (json!("5."), "5"),
            (json!("0"), "0"),
            (json!("-0"), "0"),
            (json!("-0.00"), "0.00"),
            (json!("0e999999"), "0"),
            (
                json!("0.0000000000000000000000000000000000000000"),
                "0.0000000000000000000000000000",
            ),
            (
                json!("79228162514264337593543950335"),
                "79228162514264337593543950335",
            ),
            (
                json!("0.0000000000000000000000000001"),
                "0.0000000000000000000000000001",
            ),
            // Trailing zeros beyond 28 fractional digits are dropped, nothing else.
            (
                json!("1.0000000000000000000000000000000"),
                "1.0000000000000000000000000000",
            ),
            (json!("100e-30"), "0.0000000000000000000000000001"),
            (
                json!("7922816251426433759354395033.5"),
                "7922816251426433759354395033.5",
            ),
            // 29 significant digits that fit the 96-bit mantissa.
            (
                json!("1.2345678901234567890123456789"),
                "1.2345678901234567890123456789",
            ),
        ] {
            assert_eq!(
                value_of(json!({"tokens": input, "user": "u"})).map(|d| d.to_string()),
                Ok(expected.to_owned()),
                "{input}"
            );
        }
    }

    #[test]
    fn json_number_text_is_used_not_a_float() {
        for (raw, expected) in [
            ("0.1", "0.1"),
            ("1.10", "1.10"),
            ("1.5e3", "1500"),
            ("1E2", "100"),
            ("2.5e-3", "0.0025"),
            (
                "12345678901234567890.12345678",
                "12345678901234567890.12345678",
            ),
            ("9007199254740993", "9007199254740993"),
            ("-0", "0"),
        ] {
            assert_eq!(
                value_of_raw(raw).map(|d| d.to_string()),
                Ok(expected.to_owned()),
                "{raw}"
            );
        }
    }

    #[test]
    fn value_rejects() {
        for (tokens, expected) in [
            ("1e400", "value_out_of_range"),
            ("-1e400", "value_out_of_range"),
            ("79228162514264337593543950336", "value_out_of_range"),
            ("123456789012345678901234567890", "value_out_of_range"),
            ("1.23456789012345678901234567891", "value_out_of_range"),
            ("9.9999999999999999999999999999", "value_out_of_range"),
            ("0.00000000000000000000000000001", "value_out_of_range"),
            ("1e-29", "value_out_of_range"),
            ("-1", "value_negative"),
            ("-0.5", "value_negative"),
            ("true", "value_not_numeric"),
            ("{}", "value_not_numeric"),
            ("[1]", "value_not_numeric"),
            ("null", "value_missing"),
        ] {
            assert_eq!(value_of_raw(tokens), Err(expected), "{tokens}");
        }
        for (tokens, expected) in [
            ("NaN", "value_not_finite"),
            ("nan", "value_not_finite"),
            ("Infinity", "value_not_finite"),
            ("-Infinity", "value_not_finite"),
            ("+inf", "value_not_finite"),
            ("INF", "value_not_finite"),
            ("1e400", "value_out_of_range"),
            ("-2.5", "value_negative"),
            ("", "value_not_numeric"),
            ("abc", "value_not_numeric"),
            (" 1", "value_not_numeric"),
            ("1 ", "value_not_numeric"),
            ("0x10", "value_not_numeric"),
            ("1_000", "value_not_numeric"),
            ("1,5", "value_not_numeric"),
            ("1e", "value_not_numeric"),
            ("e5", "value_not_numeric"),
            (".", "value_not_numeric"),
            ("--1", "value_not_numeric"),
            ("+-1", "value_not_numeric"),
            ("1.2.3", "value_not_numeric"),
            ("١٢", "value_not_numeric"),
        ] {
            assert_eq!(
                value_of(json!({"tokens": tokens, "user": "u"})),
                Err(expected),
                "{tokens:?}"
            );
        }
        assert_eq!(value_of(json!({"user": "u"})), Err("value_missing"));
    }

    #[test]
    fn every_numeric_aggregation_needs_a_value() {
        let storage = |data: Value| {
            let bytes = serde_json::to_vec(&envelope("storage.bytes", data)).unwrap();
            code_of(&bytes)
        };
        assert_eq!(storage(json!({})), "value_missing");
        assert_eq!(storage(json!({"bytes": "x"})), "value_not_numeric");
        let seats = |data: Value| {
            let bytes = serde_json::to_vec(&envelope("seats.set", data)).unwrap();
            run(&bytes, &[], &ValidateRules::default())
        };
        assert_eq!(code(seats(json!({"seats": 3}))), "value_missing");
        let event = seats(json!({"seat count": 3})).unwrap();
        assert_eq!(event.measures[0].value, Some(dec("3")));
    }

    #[test]
    fn unit_conversion_is_exact_and_checked() {
        let storage = |bytes_json: &str| {
            let text = format!(
                r#"{{"specversion":"1.0","id":"e","source":"s","type":"storage.bytes","subject":"c","time":"2024-05-10T11:59:00Z","data":{{"bytes":{bytes_json}}}}}"#
            );
            run(text.as_bytes(), &[], &ValidateRules::default())
                .map(|event| event.measures[0].value.unwrap().to_string())
                .map_err(|err| code(Err(err)))
        };
        assert_eq!(storage("1500000000"), Ok("1.500000000".to_owned()));
        assert_eq!(storage("\"2.5e9\""), Ok("2.500000000".to_owned()));
        assert_eq!(storage("1"), Ok("0.000000001".to_owned()));
        assert_eq!(storage("0"), Ok("0.000000000".to_owned()));
        // 20 fractional digits * 1e-9 -> 29: would need rounding.
        assert_eq!(
            storage("\"0.00000000000000000001\""),
            Err("value_out_of_range")
        );
        // ...but trailing zeros can be dropped exactly.
        assert_eq!(
            storage("\"0.10000000000000000000\""),
            Ok("0.0000000001000000000000000000".to_owned())
        );
    }

    #[test]
    fn exact_mul_overflow_and_rounding_are_out_of_range() {
        assert_eq!(
            exact_mul(Decimal::MAX, dec("2")),
            Err(NumericError::OutOfRange)
        );
        assert_eq!(exact_mul(Decimal::MAX, dec("1")), Ok(Decimal::MAX));
        assert_eq!(
            exact_mul(dec("1.5"), dec("0.5")).map(|d| d.to_string()),
            Ok("0.75".to_owned())
        );
        assert_eq!(
            exact_mul(dec("-1.5"), dec("2")).map(|d| d.to_string()),
            Ok("-3.0".to_owned())
        );
        assert_eq!(
            exact_mul(dec("0.0000000000000001"), dec("0.0000000000000001")),
            Err(NumericError::OutOfRange)
        );
        // rust_decimal itself would round here.
        assert!(dec("0.0000000000000001")
            .checked_mul(dec("0.0000000000000001"))
            .is_some());
        assert_eq!(
            exact_mul(dec("0"), dec("0.0000000000000001")).map(|d| d.is_zero()),
            Ok(true)
        );

        let mut big = meter("big", "big", Aggregation::Sum, Some("$.v"));
        big.unit_conversion = Some(UnitConversion {
            multiply_by: dec("1000"),
            unit: "m".to_owned(),
        });
        let index = MeterIndex::new(&[big]).unwrap();
        let text = br#"{"specversion":"1.0","id":"e","source":"s","type":"big","subject":"c","time":"2024-05-10T11:59:00Z","data":{"v":79228162514264337593543951}}"#;
        assert_eq!(
            code(run_full(text, &[], None, &index, &ValidateRules::default())),
            "value_out_of_range"
        );
    }

    #[test]
    fn unique_count_values_are_canonical() {
        let unique = |user: Value| {
            run(
                &tokens(json!({"tokens": 1, "user": user})),
                &[],
                &ValidateRules::default(),
            )
            .map(|event| event.measures[0].unique_value.clone().unwrap())
            .map_err(|err| code(Err(err)))
        };
        assert_eq!(unique(json!("u-1")), Ok("u-1".to_owned()));
        assert_eq!(unique(json!("")), Ok(String::new()));
        assert_eq!(unique(json!(true)), Ok("true".to_owned()));
        assert_eq!(unique(json!(false)), Ok("false".to_owned()));
        assert_eq!(unique(json!(42)), Ok("42".to_owned()));
        assert_eq!(unique(json!(null)), Err("value_missing"));
        assert_eq!(unique(json!([1])), Err("value_not_scalar"));
        assert_eq!(unique(json!({"id": 1})), Err("value_not_scalar"));
        let raw_unique = |user: &str| {
            let text = format!(
                r#"{{"specversion":"1.0","id":"e","source":"s","type":"llm.tokens","subject":"c","time":"2024-05-10T11:59:00Z","data":{{"tokens":1,"user":{user}}}}}"#
            );
            run(text.as_bytes(), &[], &ValidateRules::default())
                .unwrap()
                .measures[0]
                .unique_value
                .clone()
                .unwrap()
        };
        assert_eq!(raw_unique("1.50"), "1.5");
        assert_eq!(raw_unique("1e3"), "1000");
        assert_eq!(raw_unique("-0.0"), "0");
        // Out of Decimal range: the JSON text (serde_json spells the exponent with a sign).
        assert_eq!(raw_unique("1e400"), "1e+400");
    }

    #[test]
    fn group_values_are_strings() {
        let mut m = meter("m", "g", Aggregation::Count, None);
        for (name, path) in [
            ("s", "$.s"),
            ("n", "$.n"),
            ("b", "$.b"),
            ("z", "$.z"),
            ("missing", "$.nope"),
            ("a", "$.a[1]"),
        ] {
            m.group_by.insert(name.to_owned(), path.to_owned());
        }
        let index = MeterIndex::new(&[m]).unwrap();
        let text = br#"{"specversion":"1.0","id":"e","source":"s","type":"g","subject":"c","time":"2024-05-10T11:59:00Z","data":{"s":"eu-west","n":1.50,"b":false,"z":null,"o":{"y":1,"x":[2]},"a":[0,"second"]}}"#;
        let event = run_full(text, &[], None, &index, &ValidateRules::default()).unwrap();
        let group = &event.measures[0].group;
        assert_eq!(group["s"], "eu-west");
        assert_eq!(group["n"], "1.50");
        assert_eq!(group["b"], "false");
        assert_eq!(group["z"], "");
        assert_eq!(group["missing"], "");
        assert_eq!(group["a"], "second");
        assert_eq!(event.measures[0].value, None);
    }

    #[test]
    fn object_or_array_group_values_are_rejected() {
        let mut m = meter("m", "g", Aggregation::Count, None);
        m.group_by.insert("model".to_owned(), "$.model".to_owned());
        let index = MeterIndex::new(&[m]).unwrap();
        let with_model = |model: &str| {
            format!(
                r#"{{"specversion":"1.0","id":"e","source":"s","type":"g","subject":"c","time":"2024-05-10T11:59:00Z","data":{{"model":{model}}}}}"#
            )
        };
        for bad in [r#"{"x":1}"#, "{}", "[1,2]", "[]"] {
            let result = run_full(
                with_model(bad).as_bytes(),
                &[],
                None,
                &index,
                &ValidateRules::default(),
            );
            let Err(DecodeError::Reject(reject)) = result else {
                panic!("{bad}: {result:?}")
            };
            assert_eq!(reject.code(), "invalid_group_value", "{bad}");
            assert!(
                reject.message.contains("group_by.model"),
                "{}",
                reject.message
            );
        }
        // Scalars and an absent value are groups.
        for (good, group) in [
            (r#""gpt""#, "gpt"),
            ("7", "7"),
            ("true", "true"),
            ("null", ""),
        ] {
            let event = run_full(
                with_model(good).as_bytes(),
                &[],
                None,
                &index,
                &ValidateRules::default(),
            )
            .unwrap();
            assert_eq!(event.measures[0].group["model"], group, "{good}");
        }
    }

    #[test]
    fn one_bad_meter_rejects_the_whole_event() {
        // input_tokens is fine, active_users lacks its value.
        assert_eq!(code_of(&tokens(json!({"tokens": 1}))), "value_missing");
    }

    #[test]
    fn meter_index_errors() {
        let ok = meter("a", "t", Aggregation::Sum, Some("$.v"));
        assert!(MeterIndex::new(std::slice::from_ref(&ok)).is_ok());
        assert_eq!(
            MeterIndex::new(&[ok.clone(), ok.clone()]).unwrap_err(),
            MeterIndexError::DuplicateSlug("a".to_owned())
        );
        assert_eq!(
            MeterIndex::new(&[meter("", "t", Aggregation::Count, None)]).unwrap_err(),
            MeterIndexError::EmptySlug
        );
        assert!(matches!(
            MeterIndex::new(&[meter("a", "", Aggregation::Count, None)]),
            Err(MeterIndexError::EmptyEventType { .. })
        ));
        assert!(matches!(
            MeterIndex::new(&[meter("a", "t", Aggregation::Sum, Some("tokens"))]),
            Err(MeterIndexError::InvalidPath { field, .. }) if field == "value_property"
        ));
        assert!(matches!(
            MeterIndex::new(&[meter("a", "t", Aggregation::Count, Some("$.["))]),
            Err(MeterIndexError::InvalidPath { .. })
        ));
        let mut grouped = ok.clone();
        grouped
            .group_by
            .insert("model".to_owned(), "$model".to_owned());
        assert!(matches!(
            MeterIndex::new(&[grouped]),
            Err(MeterIndexError::InvalidPath { field, .. }) if field == "group_by.model"
        ));
        for aggregation in [
            Aggregation::Sum,
            Aggregation::Max,
            Aggregation::Latest,
            Aggregation::UniqueCount,
        ] {
            assert!(matches!(
                MeterIndex::new(&[meter("a", "t", aggregation, None)]),
                Err(MeterIndexError::MissingValueProperty { .. })
            ));
        }
        for factor in ["0", "-1"] {
            let mut converted = ok.clone();
            converted.unit_conversion = Some(UnitConversion {
                multiply_by: dec(factor),
                unit: "x".to_owned(),
            });
            assert!(matches!(
                MeterIndex::new(&[converted]),
                Err(MeterIndexError::NonPositiveMultiplier { .. })
            ));
        }
        let index = index();
        assert_eq!(index.len(), 5);
        assert!(!index.is_empty());
        assert_eq!(
            index.event_types().collect::<Vec<_>>(),
            ["llm.tokens", "seats.set", "storage.bytes"]
        );
        let slugs: Vec<&str> = index
            .meters_for("llm.tokens")
            .iter()
            .map(CompiledMeter::slug)
            .collect();
        assert_eq!(slugs, ["active_users", "input_tokens", "requests"]);
        assert_eq!(
            index.meters_for("llm.tokens")[2].aggregation(),
            Aggregation::Count
        );
        assert!(index.meters_for("none").is_empty());
        assert!(MeterIndex::new(&[]).unwrap().is_empty());
    }

    #[test]
    fn debug_does_not_print_keys() {
        let text = format!("{:?}", signed_rules());
        assert!(text.contains("svc/api"));
        assert!(!text.contains("top secret"));
        assert!(!text.contains(&format!("{:?}", KEY.to_vec())));
    }

    #[test]
    fn validated_json_keeps_exact_decimals() {
        let event = ok(&tokens(
            json!({"tokens": "0.1000000000000000000000000001", "user": "u"}),
        ));
        let json = String::from_utf8(event.to_json_bytes().unwrap()).unwrap();
        assert!(
            json.contains(r#""value":"0.1000000000000000000000000001""#),
            "{json}"
        );
        let back = ValidatedEvent::from_json_slice(json.as_bytes()).unwrap();
        assert_eq!(back, event);
    }

    // ---- property tests ----

    fn registry_without_outage() -> FakeRegistry {
        let mut registry = FakeRegistry::example();
        registry.unavailable.clear();
        registry
    }

    /// decode + validate never panic, and every failure is a known reject code.
    fn assert_total(
        value: &[u8],
        headers: &[(String, Option<Vec<u8>>)],
        rules: &ValidateRules,
    ) -> Result<(), TestCaseError> {
        let registry = registry_without_outage();
        for avro in [None, Some(&registry as &dyn AvroDecoder)] {
            match run_full(value, headers, avro, &index(), rules) {
                Ok(event) => {
                    prop_assert!(!event.measures.is_empty());
                    for measure in &event.measures {
                        if let Some(value) = measure.value {
                            prop_assert!(!value.is_sign_negative());
                        }
                    }
                    let back =
                        ValidatedEvent::from_json_slice(&event.to_json_bytes().unwrap()).unwrap();
                    prop_assert_eq!(back, event);
                }
                Err(DecodeError::Reject(reject)) => {
                    prop_assert!(
                        ALL_REASON_CODES.contains(&reject.code()),
                        "unknown code {}",
                        reject.code()
                    );
                }
                Err(DecodeError::Retriable(message)) => {
                    prop_assert!(false, "no outage configured, got retriable {message}");
                }
            }
        }
        Ok(())
    }

    fn header_strategy() -> impl Strategy<Value = (String, Option<Vec<u8>>)> {
        let names = prop::sample::select(vec![
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_subject",
            "ce_time",
            "content-type",
            DEFAULT_SIGNATURE_HEADER,
            "other",
        ]);
        let values = prop_oneof![
            Just(None),
            prop::sample::select(vec![
                "1.0",
                "svc/api",
                "llm.tokens",
                "2024-05-10T11:59:00Z",
                "application/json",
                "text/plain",
                "",
                "00ff",
            ])
            .prop_map(|v| Some(v.as_bytes().to_vec())),
            prop::collection::vec(any::<u8>(), 0..16).prop_map(Some),
        ];
        (names, values).prop_map(|(name, value)| (name.to_owned(), value))
    }

    fn tricky_number() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "1",
                "-1",
                "0",
                "-0",
                "1e400",
                "-1e-400",
                "1.5e3",
                "79228162514264337593543950336",
                "0.00000000000000000000000000001",
                "\"NaN\"",
                "\"inf\"",
                "\"12.50\"",
                "\"\"",
                "\"1e99999999999999999999\"",
                "null",
                "true",
                "{}",
                "[]",
                "\"x\"",
                "1E+28",
                "123456789012345678901234567890e-5",
            ])
            .prop_map(str::to_owned),
            "-?[0-9]{1,40}(\\.[0-9]{0,40})?([eE][+-]?[0-9]{1,4})?",
            "\"[-+]?[0-9.eE+-]{0,20}\"",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic(value in prop::collection::vec(any::<u8>(), 0..256)) {
            assert_total(&value, &[], &ValidateRules::default())?;
            assert_total(&value, &[], &signed_rules())?;
        }

        #[test]
        fn arbitrary_avro_framed_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..128)) {
            assert_total(&wire(EXAMPLE_SCHEMA_ID, &body), &[], &ValidateRules::default())?;
        }

        #[test]
        fn arbitrary_headers_never_panic(
            value in prop::collection::vec(any::<u8>(), 0..64),
            headers in prop::collection::vec(header_strategy(), 0..10),
        ) {
            assert_total(&value, &headers, &signed_rules())?;
            assert_total(br#"{"tokens": 1, "user": "u"}"#, &headers, &ValidateRules::default())?;
        }

        #[test]
        fn generated_envelopes_never_panic(
            tokens in tricky_number(),
            user in tricky_number(),
            event_type in prop::sample::select(vec!["llm.tokens", "storage.bytes", "seats.set", "nope"]),
            time in prop::sample::select(vec!["2024-05-10T11:59:00Z", "2024-05-10T12:05:00.000001Z", "garbage", "2024-04-05T12:00:00Z"]),
        ) {
            let text = format!(
                r#"{{"specversion":"1.0","id":"e","source":"svc/api","type":"{event_type}","subject":"c","time":"{time}","data":{{"tokens":{tokens},"user":{user},"bytes":{tokens},"seat count":{tokens}}}}}"#
            );
            assert_total(text.as_bytes(), &[], &ValidateRules::default())?;
        }

        #[test]
        fn decimals_round_trip_exactly_through_validated_json(
            mantissa in 0i128..=(DECIMAL_MAX_MANTISSA as i128),
            scale in 0u32..=28,
            as_string in any::<bool>(),
        ) {
            let decimal = Decimal::from_i128_with_scale(mantissa, scale);
            let text = decimal.to_string();
            let tokens_json = if as_string { format!("\"{text}\"") } else { text.clone() };
            let event = match value_of_raw(&tokens_json) {
                Ok(value) => value,
                Err(code) => return Err(TestCaseError::fail(format!("{text}: {code}"))),
            };
            prop_assert_eq!(event.to_string(), text.clone());
            let bytes = tokens(json!({"tokens": tokens_json_value(&tokens_json), "user": "u"}));
            let validated = ok(&bytes);
            let back = ValidatedEvent::from_json_slice(&validated.to_json_bytes().unwrap()).unwrap();
            let value = back.measures.iter().find(|m| m.meter == "input_tokens").unwrap().value.unwrap();
            prop_assert_eq!(value, decimal);
            prop_assert_eq!(value.scale(), decimal.scale());
            prop_assert_eq!(value.to_string(), text);
        }

        #[test]
        fn exponents_match_rust_decimal_scientific(mantissa in 0u64..1_000_000_000_000, exponent in -20i32..=20) {
            let text = format!("{mantissa}e{exponent}");
            if let Ok(oracle) = Decimal::from_scientific(&text) {
                let parsed = parse_exact_decimal(&text);
                prop_assert_eq!(parsed.map(|d| d.normalize()), Ok(oracle.normalize()), "{}", text);
            }
        }

        #[test]
        fn exact_mul_agrees_with_rust_decimal_when_exact(
            a in 0i64..1_000_000_000, a_scale in 0u32..10,
            b in 1i64..1_000_000_000, b_scale in 0u32..10,
        ) {
            let a = Decimal::new(a, a_scale);
            let b = Decimal::new(b, b_scale);
            prop_assert_eq!(exact_mul(a, b), Ok(a * b));
        }
    }

    /// A JSON value carrying exactly `text` (number or string).
    fn tokens_json_value(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }
}
