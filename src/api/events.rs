//! `POST /api/v1/events`: usage submission compatible with OpenMeter's
//! ingest API. One CloudEvent (`application/cloudevents+json`, or
//! `application/json` holding an object) or a batch
//! (`application/cloudevents-batch+json`, or `application/json` holding an
//! array), checked with validate's own decode and rules before anything is
//! produced: a batch with any bad event is refused whole (400, each bad
//! index with validate's reason code). Accepted events go to `usage.events`
//! as structured-mode records keyed by subject, with the exact bytes the
//! client sent; 204 once the broker acknowledged every one. A retry after
//! a timeout is safe: the dedupe stage drops the second copy.

use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde_json::value::RawValue;
use sha2::Sha256;

use super::auth::Caller;
use super::problem::{EventError, Problem};
use super::reasons;
use crate::config::ApiConfig;
use crate::contracts::{CloudEvent, Encoding, Origin};
use crate::ingest::decode::{self, DecodeError, RawRecord, CONTENT_TYPE_HEADER};
use crate::ingest::reason::excerpt;
use crate::ingest::rules::{self, MeterIndex, ValidateRules};

/// Media type of one structured-mode CloudEvent (also the header of every
/// record the API produces).
pub const SINGLE_MEDIA_TYPE: &str = "application/cloudevents+json";
/// Media type of a CloudEvents JSON batch.
pub const BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch+json";
/// Plain JSON: an object is one event, an array a batch.
pub const JSON_MEDIA_TYPE: &str = "application/json";
/// Bad events listed in one problem body; the count says how many in all.
pub const MAX_LISTED_ERRORS: usize = 100;

/// One event ready to produce.
#[derive(Debug)]
pub struct Prepared {
    pub subject: String,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// What the ingest route needs, built once.
pub struct Ingest {
    pub meters: MeterIndex,
    pub rules: ValidateRules,
    pub producer: FutureProducer,
    pub topic: String,
    pub limits: ApiConfig,
}

/// How the body is to be read, from its Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Single,
    Batch,
    Either,
}

fn shape(headers: &HeaderMap) -> Result<Shape, Problem> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    match media.as_str() {
        SINGLE_MEDIA_TYPE => Ok(Shape::Single),
        BATCH_MEDIA_TYPE => Ok(Shape::Batch),
        JSON_MEDIA_TYPE => Ok(Shape::Either),
        _ => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            reasons::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported media type",
            format!(
                "Content-Type must be {SINGLE_MEDIA_TYPE}, {BATCH_MEDIA_TYPE} or {JSON_MEDIA_TYPE}"
            ),
        )),
    }
}

fn not_json(detail: String) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        reasons::BODY_NOT_JSON,
        "Body is not a CloudEvent or a batch of them",
        detail,
    )
}

/// The events of the body, each as the exact JSON text the client sent.
pub fn split_body<'b>(
    headers: &HeaderMap,
    body: &'b [u8],
    max_batch_events: usize,
) -> Result<Vec<&'b RawValue>, Problem> {
    let shape = shape(headers)?;
    let text = std::str::from_utf8(body).map_err(|_| not_json("the body is not UTF-8".into()))?;
    let first = text.trim_start().chars().next();
    let is_array = first == Some('[');
    let events: Vec<&RawValue> = match (shape, is_array) {
        (Shape::Single, true) => {
            return Err(not_json(format!(
                "{SINGLE_MEDIA_TYPE} holds one event object; send an array as {BATCH_MEDIA_TYPE}"
            )))
        }
        (Shape::Batch, false) => {
            return Err(not_json(format!(
                "{BATCH_MEDIA_TYPE} holds a JSON array of events"
            )))
        }
        (_, true) => serde_json::from_str(text).map_err(|e| not_json(e.to_string()))?,
        (_, false) => vec![serde_json::from_str(text).map_err(|e| not_json(e.to_string()))?],
    };
    if events.is_empty() {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            reasons::EMPTY_BATCH,
            "Empty batch",
            "the batch holds no event",
        ));
    }
    if events.len() > max_batch_events {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            reasons::BATCH_TOO_LARGE,
            "Batch too large",
            format!(
                "{} events; api.max_batch_events is {max_batch_events}",
                events.len()
            ),
        ));
    }
    Ok(events)
}

/// Why one event cannot be accepted.
enum Refusal {
    Invalid(EventError),
    SourceNotPermitted(usize, String),
}

/// The other sources a correction speaks for: the source of the event a
/// retraction or amendment names and, for an amendment, its replacement's.
/// A key limited to some sources may neither take back another source's
/// usage nor bring in an event of another source as a replacement.
fn corrected_sources<'e>(
    event: &'e CloudEvent,
    rules: &ValidateRules,
) -> Vec<(&'static str, &'e str)> {
    let is_amend = event.event_type == rules.amend_type;
    if !is_amend && event.event_type != rules.retract_type {
        return Vec::new();
    }
    let source_at = |v: &'e serde_json::Value| v.get("source").and_then(serde_json::Value::as_str);
    let mut sources = Vec::new();
    if let Some(s) = source_at(&event.data) {
        sources.push(("of the event it corrects", s));
    }
    if let Some(s) = event
        .data
        .get("event")
        .and_then(source_at)
        .filter(|_| is_amend)
    {
        sources.push(("of the replacement event", s));
    }
    sources
}

impl Ingest {
    /// Checks every event; Ok only when all of them pass.
    pub fn prepare(
        &self,
        caller: &Caller<'_>,
        events: &[&RawValue],
        now: DateTime<Utc>,
    ) -> Result<Vec<Prepared>, Problem> {
        let mut ready = Vec::with_capacity(events.len());
        let mut invalid = Vec::new();
        let mut foreign = Vec::new();
        for (index, raw) in events.iter().enumerate() {
            match self.prepare_one(caller, index, raw.get().as_bytes(), now) {
                Ok(p) => ready.push(p),
                Err(Refusal::Invalid(e)) => invalid.push(e),
                Err(Refusal::SourceNotPermitted(i, source)) => foreign.push((i, source)),
            }
        }
        if !foreign.is_empty() {
            let mut p = Problem::new(
                StatusCode::FORBIDDEN,
                reasons::SOURCE_NOT_PERMITTED,
                "Source not permitted for this key",
                format!(
                    "the key {:?} may not ingest {} of the events (its sources: {:?})",
                    caller.key.name,
                    foreign.len(),
                    caller.key.sources
                ),
            );
            p.errors = foreign
                .into_iter()
                .take(MAX_LISTED_ERRORS)
                .map(|(index, detail)| EventError {
                    index,
                    code: reasons::SOURCE_NOT_PERMITTED,
                    detail,
                })
                .collect();
            return Err(p);
        }
        if !invalid.is_empty() {
            let mut p = Problem::new(
                StatusCode::BAD_REQUEST,
                reasons::INVALID_EVENTS,
                "Invalid events",
                format!(
                    "{} of {} events break the rules; nothing was accepted",
                    invalid.len(),
                    events.len()
                ),
            );
            invalid.truncate(MAX_LISTED_ERRORS);
            p.errors = invalid;
            return Err(p);
        }
        Ok(ready)
    }

    fn prepare_one(
        &self,
        caller: &Caller<'_>,
        index: usize,
        value: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Prepared, Refusal> {
        let invalid = |code: &'static str, detail: String| {
            Refusal::Invalid(EventError {
                index,
                code,
                detail,
            })
        };
        let mut headers = vec![(
            CONTENT_TYPE_HEADER.to_string(),
            Some(SINGLE_MEDIA_TYPE.as_bytes().to_vec()),
        )];
        let plain = RawRecord {
            key: None,
            value: Some(value),
            headers: &headers,
        };
        let (event, _) = decode::decode(&plain, None).map_err(|e| match e {
            DecodeError::Reject(r) => invalid(r.code(), r.message),
            // Without Avro no decode is retriable; say so rather than panic.
            DecodeError::Retriable(m) => invalid(reasons::INVALID_EVENTS, m),
        })?;
        if !caller.may_ingest(&event.source) {
            let detail = format!("source {}", excerpt(&event.source));
            return Err(Refusal::SourceNotPermitted(index, detail));
        }
        for (role, source) in corrected_sources(&event, &self.rules) {
            if !caller.may_ingest(source) {
                let detail = format!("source {} ({role})", excerpt(source));
                return Err(Refusal::SourceNotPermitted(index, detail));
            }
        }
        if let Some(signature) = self.signature(caller, &event.source, value) {
            headers.push((self.rules.signature_header.clone(), Some(signature)));
        }
        let subject = event.subject.clone();
        let record = RawRecord {
            key: Some(subject.as_bytes()),
            value: Some(value),
            headers: &headers,
        };
        rules::check_size(&record, &self.rules).map_err(|r| invalid(r.code(), r.message))?;
        let origin = Origin {
            topic: self.topic.clone(),
            partition: -1,
            offset: -1,
            encoding: Encoding::Structured,
        };
        rules::validate(event, &record, &self.meters, &self.rules, now, origin)
            .map_err(|r| invalid(r.code(), r.message))?;
        Ok(Prepared {
            subject,
            value: value.to_vec(),
            headers,
        })
    }

    /// The API signs with validate's key only for a source its key lists by
    /// name or prefix: a key open to any source cannot speak for a signed one.
    fn signature(&self, caller: &Caller<'_>, source: &str, value: &[u8]) -> Option<Vec<u8>> {
        if !caller.lists_source(source) {
            return None;
        }
        let key = self.rules.hmac_keys.get(source)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
        mac.update(value);
        Some(hex::encode(mac.finalize().into_bytes()).into_bytes())
    }

    /// Enqueues every event, then waits (bounded) for the broker's
    /// acknowledgements. A full queue is 429; a delivery failure or no
    /// answer in time is 503 (what was enqueued may still arrive: a retry
    /// is safe, dedupe drops copies).
    pub async fn produce(&self, events: Vec<Prepared>) -> Result<usize, Problem> {
        let mut pending: Vec<DeliveryFuture> = Vec::with_capacity(events.len());
        for e in &events {
            let mut headers = OwnedHeaders::new_with_capacity(e.headers.len());
            for (k, v) in &e.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            let record = FutureRecord::to(&self.topic)
                .key(e.subject.as_bytes())
                .payload(&e.value)
                .headers(headers);
            match self.producer.send_result(record) {
                Ok(f) => pending.push(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    let mut p = Problem::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        reasons::PRODUCER_QUEUE_FULL,
                        "Too many events in flight",
                        "the producer queue is full: retry the whole request after Retry-After seconds",
                    );
                    p.retry_after_s = Some(self.limits.retry_after_s);
                    return Err(p);
                }
                Err((e, _)) => return Err(unavailable(e.to_string())),
            }
        }
        let timeout = Duration::from_millis(self.limits.ack_timeout_ms);
        tokio::time::timeout(timeout, await_acks(pending))
            .await
            .map_err(|_| unavailable(format!("no acknowledgement within {timeout:?}")))??;
        Ok(events.len())
    }
}

/// Awaits every acknowledgement in turn (all were enqueued already, so this
/// waits for the slowest, not their sum); the first failure answers.
async fn await_acks(pending: Vec<DeliveryFuture>) -> Result<(), Problem> {
    for f in pending {
        match f.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => return Err(unavailable(e.to_string())),
            Err(_) => return Err(unavailable("the producer was dropped".into())),
        }
    }
    Ok(())
}

fn unavailable(detail: String) -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        reasons::BROKER_UNAVAILABLE,
        "Broker unavailable",
        format!("the events were not acknowledged ({detail}); retrying is safe, copies are dropped by dedupe"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn typed(ct: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
        h
    }

    fn code(r: Result<Vec<&RawValue>, Problem>) -> &'static str {
        r.map(|_| "ok").unwrap_or_else(|p| p.code)
    }

    /// An ingest path whose producer points at a port nobody listens on.
    fn unreachable(queue_max_messages: u32, ack_timeout_ms: u64) -> Ingest {
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", ack_timeout_ms.to_string())
            .set(
                "queue.buffering.max.messages",
                queue_max_messages.to_string(),
            )
            .set("log_level", "0")
            .create()
            .unwrap();
        Ingest {
            meters: MeterIndex::new(&[]).unwrap(),
            rules: ValidateRules::default(),
            producer,
            topic: "t".into(),
            limits: ApiConfig {
                ack_timeout_ms,
                ..ApiConfig::default()
            },
        }
    }

    fn prepared(n: usize) -> Vec<Prepared> {
        (0..n)
            .map(|i| Prepared {
                subject: format!("c-{i}"),
                value: b"{}".to_vec(),
                headers: vec![],
            })
            .collect()
    }

    #[tokio::test]
    async fn no_broker_is_503_and_a_full_queue_is_429_with_retry_after() {
        let down = unreachable(100, 300)
            .produce(prepared(2))
            .await
            .unwrap_err();
        assert_eq!(
            (down.status, down.code),
            (StatusCode::SERVICE_UNAVAILABLE, "broker_unavailable")
        );
        assert!(down.detail.contains("retrying is safe"), "{}", down.detail);
        let full = unreachable(1, 5_000)
            .produce(prepared(3))
            .await
            .unwrap_err();
        assert_eq!(
            (full.status, full.code),
            (StatusCode::TOO_MANY_REQUESTS, "producer_queue_full")
        );
        assert_eq!(full.retry_after_s, Some(ApiConfig::default().retry_after_s));
    }

    #[test]
    fn a_key_limited_to_sources_corrects_only_their_events() {
        let ingest = unreachable(100, 300);
        let limited = crate::config::ApiKeyConfig {
            name: "app".into(),
            sha256_hex: String::new(),
            scopes: vec![crate::config::ApiScope::Ingest],
            sources: vec!["app/*".into()],
            customers: vec![],
            actor: None,
        };
        let open = crate::config::ApiKeyConfig {
            sources: vec![],
            ..limited.clone()
        };
        let now = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let correction = |kind: &str, data: serde_json::Value| {
            serde_json::json!({"specversion": "1.0", "id": "c1", "source": "app/ops",
                "type": kind, "subject": "cust-1", "time": "2026-03-01T00:00:00Z", "data": data})
            .to_string()
        };
        let retract = |target: &str| {
            correction(
                "meterline.usage.retract",
                serde_json::json!({"source": target, "id": "e1"}),
            )
        };
        let replacement = serde_json::json!({"specversion": "1.0", "id": "e1-v2",
            "source": "svc/other", "type": "llm.tokens", "subject": "cust-1",
            "time": "2026-03-01T00:00:00Z", "data": {}});
        let amend = correction(
            "meterline.usage.amend",
            serde_json::json!({"source": "app/web", "id": "e1", "event": replacement}),
        );
        let run = |key: &crate::config::ApiKeyConfig, body: &str| {
            let raw = RawValue::from_string(body.to_string()).unwrap();
            ingest.prepare(&Caller { key }, &[&raw], now)
        };
        assert!(run(&limited, &retract("app/web")).is_ok());
        for (body, detail) in [
            (
                retract("svc/other"),
                r#"source "svc/other" (of the event it corrects)"#,
            ),
            (
                amend.clone(),
                r#"source "svc/other" (of the replacement event)"#,
            ),
        ] {
            let p = run(&limited, &body).unwrap_err();
            assert_eq!(
                (p.status, p.code),
                (StatusCode::FORBIDDEN, reasons::SOURCE_NOT_PERMITTED)
            );
            assert_eq!(p.errors[0].detail, detail);
        }
        // A key open to every source may correct any (the amendment's
        // replacement then fails validation here: no meter takes it).
        assert!(run(&open, &retract("svc/other")).is_ok());
        assert_eq!(
            run(&open, &amend).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn the_body_is_read_as_its_content_type_says_and_bounded() {
        let one = br#" {"id":"a"} "#;
        let two = br#"[{"id":"a"}, {"id":"b", "n": 1.50}]"#;
        let batch = split_body(&typed("application/cloudevents-batch+json"), two, 10).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(
            batch[1].get(),
            r#"{"id":"b", "n": 1.50}"#,
            "the exact text the client sent"
        );
        assert_eq!(
            code(split_body(
                &typed("application/json; charset=utf-8"),
                one,
                10
            )),
            "ok"
        );
        assert_eq!(code(split_body(&typed("application/json"), two, 10)), "ok");
        assert_eq!(
            code(split_body(&typed("Application/CloudEvents+JSON"), one, 10)),
            "ok"
        );
        let refused = [
            ("text/plain", &one[..], "unsupported_media_type"),
            ("application/cloudevents+json", &two[..], "body_not_json"),
            (
                "application/cloudevents-batch+json",
                &one[..],
                "body_not_json",
            ),
            ("application/json", &b"[1,"[..], "body_not_json"),
            ("application/json", &b"\xff\xfe"[..], "body_not_json"),
            ("application/json", &b"[]"[..], "empty_batch"),
        ];
        for (ct, body, want) in refused {
            assert_eq!(code(split_body(&typed(ct), body, 10)), want, "{ct}");
        }
        assert_eq!(
            code(split_body(&typed("application/json"), two, 1)),
            "batch_too_large"
        );
        assert_eq!(
            code(split_body(&HeaderMap::new(), one, 10)),
            "unsupported_media_type"
        );
    }
}
