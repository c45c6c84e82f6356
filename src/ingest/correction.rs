//! Retractions and amendments at the gate ([`crate::contracts::Correction`]).
//!
//! A retraction is a CloudEvent of type `validate.retract_type` whose
//! `data` is `{"source": S, "id": I, "time"?: T}`: the identity of the
//! accepted event it removes, and optionally that event's time (which lets
//! rate tell an event whose rating state was released from one it never
//! saw). It passes as a [`ValidatedEvent`] with no measures, under its own
//! identity (so a resent retraction is a duplicate like any event).
//!
//! An amendment (type `validate.amend_type`) has the same fields plus
//! `"event"`, the replacement CloudEvent, which passes every rule a usage
//! event does (time window, allowed source, meters, values; the signature
//! is the amendment's own, over the record that carries both) and must
//! have the amendment's subject (the customer's partition is where both
//! halves are applied at once) and an identity other than the one it
//! replaces. It passes as the replacement's [`ValidatedEvent`] carrying
//! the correction, under the replacement's identity.
//!
//! Both are checked strictly: an unknown field in `data` is refused rather
//! than ignored, since a mistyped field of a financial correction must not
//! silently do something else.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::reason::{excerpt, Reject, RejectReason};
use super::rules::{self, MeterIndex, ValidateRules};
use crate::contracts::{CloudEvent, Correction, CorrectionKind, Origin, ValidatedEvent};

/// Fields of a retraction's `data`.
const RETRACTION_FIELDS: &[&str] = &["source", "id", "time"];
/// Fields of an amendment's `data`.
const AMENDMENT_FIELDS: &[&str] = &["source", "id", "time", "event"];

/// A retraction's [`ValidatedEvent`]: no measures, the correction named.
pub fn retraction(
    event: CloudEvent,
    rules: &ValidateRules,
    origin: Origin,
) -> Result<ValidatedEvent, Reject> {
    let invalid = |m: String| Reject::new(RejectReason::RetractionInvalid, m);
    let data = object(&event.data).map_err(invalid)?;
    only(data, RETRACTION_FIELDS).map_err(invalid)?;
    let correction = target(data, CorrectionKind::Retract).map_err(invalid)?;
    if (correction.source.as_str(), correction.id.as_str())
        == (event.source.as_str(), event.id.as_str())
    {
        return Err(invalid(
            "a retraction needs an identity of its own: (source, id) names the event it retracts"
                .into(),
        ));
    }
    permitted(rules, &event.source, &correction.source, "retracted event")?;
    let mut validated = ValidatedEvent::accepted(event, Vec::new(), origin);
    validated.correction = Some(correction);
    Ok(validated)
}

/// An amendment's replacement as a [`ValidatedEvent`] carrying the
/// correction.
pub fn amendment(
    event: CloudEvent,
    meters: &MeterIndex,
    rules: &ValidateRules,
    now: DateTime<Utc>,
    origin: Origin,
) -> Result<ValidatedEvent, Reject> {
    let invalid = |m: String| Reject::new(RejectReason::AmendmentInvalid, m);
    let data = object(&event.data).map_err(invalid)?;
    only(data, AMENDMENT_FIELDS).map_err(invalid)?;
    let correction = target(data, CorrectionKind::Amend).map_err(invalid)?;
    let inner = data
        .get("event")
        .ok_or_else(|| invalid("data.event (the replacement CloudEvent) is missing".into()))?;
    let replacement: CloudEvent = serde_json::from_value(inner.clone())
        .map_err(|e| invalid(format!("data.event is not a CloudEvent: {e}")))?;
    if replacement.subject != event.subject {
        return Err(invalid(format!(
            "the replacement's subject {} is not the amendment's {}",
            excerpt(&replacement.subject),
            excerpt(&event.subject)
        )));
    }
    if (replacement.source.as_str(), replacement.id.as_str())
        == (correction.source.as_str(), correction.id.as_str())
    {
        return Err(invalid(
            "the replacement needs an identity of its own, not the one it replaces".into(),
        ));
    }
    if [&rules.retract_type, &rules.amend_type].contains(&&replacement.event_type) {
        return Err(invalid(format!(
            "the replacement's type {} is a correction's",
            excerpt(&replacement.event_type)
        )));
    }
    permitted(rules, &event.source, &correction.source, "amended event")?;
    permitted(rules, &event.source, &replacement.source, "replacement")?;
    let mut validated = check_replacement(replacement, meters, rules, now, origin)?;
    validated.correction = Some(correction);
    Ok(validated)
}

/// The replacement passes the usage rules (not the signature: the
/// amendment's covers it); a failure keeps its own code.
fn check_replacement(
    replacement: CloudEvent,
    meters: &MeterIndex,
    rules: &ValidateRules,
    now: DateTime<Utc>,
    origin: Origin,
) -> Result<ValidatedEvent, Reject> {
    let checked = rules::check_attributes(&replacement)
        .and_then(|()| rules::check_time(replacement.time, now, rules))
        .and_then(|()| rules::check_source(&replacement, rules))
        .and_then(|()| rules::check_data(&replacement));
    checked
        .and_then(|()| rules::usage_event(replacement, meters, origin))
        .map_err(|r| Reject::new(r.reason, format!("the amendment's event: {}", r.message)))
}

/// `validate.correction_sources`: a correction sent by `correcting` may
/// concern `corrected`'s events (`role` says which one is refused).
fn permitted(
    rules: &ValidateRules,
    correcting: &str,
    corrected: &str,
    role: &str,
) -> Result<(), Reject> {
    if rules.may_correct(correcting, corrected) {
        return Ok(());
    }
    Err(Reject::new(
        RejectReason::CorrectionSourceNotPermitted,
        format!(
            "source {} may correct only its own events (validate.correction_sources), \
             and the {role} is of source {}",
            excerpt(correcting),
            excerpt(corrected)
        ),
    ))
}

fn object(data: &Value) -> Result<&Map<String, Value>, String> {
    data.as_object()
        .ok_or_else(|| "data is not a JSON object".to_string())
}

/// Refuses a field outside `allowed`.
fn only(data: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match data.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "data.{} is not a field of a correction (allowed: {})",
            excerpt(k),
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

/// The corrected event's identity and optional time.
fn target(data: &Map<String, Value>, kind: CorrectionKind) -> Result<Correction, String> {
    let text = |name: &str| -> Result<String, String> {
        match data.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(other) => Err(format!(
                "data.{name} must be a non-empty string, not {}",
                excerpt(&other.to_string())
            )),
            None => Err(format!(
                "data.{name} (the corrected event's {name}) is missing"
            )),
        }
    };
    let time = match data.get("time") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(
            DateTime::parse_from_rfc3339(t)
                .map_err(|e| format!("data.time {}: {e}", excerpt(t)))?
                .with_timezone(&Utc),
        ),
        Some(other) => {
            return Err(format!(
                "data.time must be an RFC 3339 string, not {}",
                excerpt(&other.to_string())
            ))
        }
    };
    Ok(Correction {
        kind,
        source: text("source")?,
        id: text("id")?,
        time,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::TimeZone;
    use rust_decimal_macros::dec;
    use serde_json::json;

    use super::*;
    use crate::contracts::Encoding;
    use crate::ingest::decode::{decode, DecodeError, RawRecord};
    use crate::meter::{Aggregation, Meter};

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
    }

    fn meters() -> MeterIndex {
        MeterIndex::new(&[Meter {
            slug: "tokens".into(),
            event_type: "llm.tokens".into(),
            aggregation: Aggregation::Sum,
            value_property: Some("$.tokens".into()),
            group_by: BTreeMap::new(),
            unit_conversion: None,
        }])
        .unwrap()
    }

    fn envelope(id: &str, event_type: &str, data: Value) -> Value {
        json!({"specversion": "1.0", "id": id, "source": "ops", "type": event_type,
               "subject": "cust-1", "time": "2026-03-01T11:00:00Z", "data": data})
    }

    /// decode + validate as the stage runs them: the event, or the code.
    fn run(value: &Value) -> Result<ValidatedEvent, &'static str> {
        run_with(value, &ValidateRules::default())
    }

    fn run_with(value: &Value, rules: &ValidateRules) -> Result<ValidatedEvent, &'static str> {
        let bytes = serde_json::to_vec(value).unwrap();
        let raw = RawRecord {
            key: None,
            value: Some(&bytes),
            headers: &[],
        };
        let (event, encoding) = match decode(&raw, None) {
            Ok(x) => x,
            Err(DecodeError::Reject(r)) => return Err(r.code()),
            Err(e) => panic!("{e:?}"),
        };
        let origin = Origin {
            topic: "usage.events".into(),
            partition: 0,
            offset: 0,
            encoding,
        };
        assert_eq!(encoding, Encoding::Structured);
        rules::validate(event, &raw, &meters(), rules, now(), origin).map_err(|r| r.code())
    }

    fn usage(id: &str, subject: &str, tokens: Value) -> Value {
        json!({"specversion": "1.0", "id": id, "source": "svc", "type": "llm.tokens",
               "subject": subject, "time": "2026-02-27T10:00:00Z", "data": {"tokens": tokens}})
    }

    #[test]
    fn a_retraction_passes_with_no_measures_and_names_its_event() {
        let data = json!({"source": "svc", "id": "e1", "time": "2026-02-27T10:00:00+01:00"});
        let v = run(&envelope("r1", "meterline.usage.retract", data)).unwrap();
        assert_eq!((v.source.as_str(), v.id.as_str()), ("ops", "r1"));
        assert!(v.measures.is_empty());
        let c = v.correction.unwrap();
        assert_eq!(
            (c.kind, c.source.as_str(), c.id.as_str()),
            (CorrectionKind::Retract, "svc", "e1")
        );
        assert_eq!(
            c.time,
            Some(Utc.with_ymd_and_hms(2026, 2, 27, 9, 0, 0).unwrap())
        );
    }

    #[test]
    fn a_malformed_retraction_is_refused_with_its_code() {
        let t = "meterline.usage.retract";
        for data in [
            json!({"id": "e1"}),
            json!({"source": "svc", "id": ""}),
            json!({"source": "svc", "id": 7}),
            json!({"source": "svc", "id": "e1", "time": "yesterday"}),
            json!({"source": "svc", "id": "e1", "event": {}}),
            // Its own identity: dedupe would take it for the event itself.
            json!({"source": "ops", "id": "r1"}),
        ] {
            assert_eq!(
                run(&envelope("r1", t, data.clone())).unwrap_err(),
                "retraction_invalid",
                "{data}"
            );
        }
    }

    #[test]
    fn correction_sources_limit_who_may_correct_another_sources_events() {
        let limited = |sources: &[&str]| ValidateRules {
            correction_sources: Some(sources.iter().map(|s| s.to_string()).collect()),
            ..ValidateRules::default()
        };
        let retract = |from: &str, of: &str| {
            let mut r = envelope(
                "r1",
                "meterline.usage.retract",
                json!({"source": of, "id": "e1"}),
            );
            r["source"] = json!(from);
            r
        };
        let amend = |from: &str, of: &str, replacement_source: &str| {
            let mut event = usage("e1-v2", "cust-1", json!(3));
            event["source"] = json!(replacement_source);
            let data = json!({"source": of, "id": "e1", "event": event});
            let mut a = envelope("a1", "meterline.usage.amend", data);
            a["source"] = json!(from);
            a
        };
        let refused = "correction_source_not_permitted";
        // Unset: any source corrects any source's events (the README's example).
        let open = ValidateRules::default();
        assert!(run_with(&retract("ops/console", "svc/gateway"), &open).is_ok());
        assert!(run_with(&amend("ops/console", "svc/gateway", "ops/console"), &open).is_ok());
        // Set: a listed source (exact or by prefix) corrects any source's ...
        for rules in [limited(&["ops/console"]), limited(&["ops/*"])] {
            assert!(run_with(&retract("ops/console", "svc/gateway"), &rules).is_ok());
            let a = run_with(&amend("ops/console", "svc/gateway", "svc/gateway"), &rules);
            assert_eq!(a.unwrap().source, "svc/gateway");
        }
        // ... any other only its own, target and replacement alike.
        let rules = limited(&["ops/console"]);
        assert!(run_with(&retract("svc/gateway", "svc/gateway"), &rules).is_ok());
        assert!(run_with(&amend("svc/gateway", "svc/gateway", "svc/gateway"), &rules).is_ok());
        assert_eq!(
            run_with(&retract("svc/batch", "svc/gateway"), &rules).unwrap_err(),
            refused
        );
        assert_eq!(
            run_with(&amend("svc/batch", "svc/gateway", "svc/batch"), &rules).unwrap_err(),
            refused
        );
        assert_eq!(
            run_with(&amend("svc/batch", "svc/batch", "svc/gateway"), &rules).unwrap_err(),
            refused
        );
        // `[]`: every source only its own.
        assert_eq!(
            run_with(&retract("ops/console", "svc/gateway"), &limited(&[])).unwrap_err(),
            refused
        );
        assert!(run_with(&retract("svc/gateway", "svc/gateway"), &limited(&[])).is_ok());
    }

    #[test]
    fn an_amendment_passes_as_its_replacement_carrying_the_correction() {
        let data =
            json!({"source": "svc", "id": "e1", "event": usage("e1-v2", "cust-1", json!("12.5"))});
        let v = run(&envelope("a1", "meterline.usage.amend", data)).unwrap();
        assert_eq!((v.source.as_str(), v.id.as_str()), ("svc", "e1-v2"));
        assert_eq!(v.measures[0].value, Some(dec!(12.5)));
        let c = v.correction.unwrap();
        assert_eq!((c.kind, c.id.as_str()), (CorrectionKind::Amend, "e1"));
    }

    #[test]
    fn an_amendment_is_refused_whole_when_either_half_is_wrong() {
        let t = "meterline.usage.amend";
        let amend = |event: Value| {
            envelope(
                "a1",
                t,
                json!({"source": "svc", "id": "e1", "event": event}),
            )
        };
        let cases = [
            (
                amend(usage("e1-v2", "cust-2", json!(1))),
                "amendment_invalid",
            ),
            (amend(usage("e1", "cust-1", json!(1))), "amendment_invalid"),
            (amend(json!({"id": "x"})), "amendment_invalid"),
            (
                envelope("a1", t, json!({"source": "svc", "id": "e1"})),
                "amendment_invalid",
            ),
            // The replacement's own faults keep their codes.
            (amend(usage("e1-v2", "cust-1", json!(-1))), "value_negative"),
            (
                amend(usage("e1-v2", "cust-1", json!("many"))),
                "value_not_numeric",
            ),
        ];
        for (event, code) in cases {
            assert_eq!(run(&event).unwrap_err(), code, "{event}");
        }
        let mut nested = usage("e1-v2", "cust-1", json!(1));
        nested["type"] = json!("meterline.usage.retract");
        assert_eq!(run(&amend(nested)).unwrap_err(), "amendment_invalid");
    }
}
