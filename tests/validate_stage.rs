//! The validate stage against the real broker: every valid event exactly once
//! on usage.validated, every malformed one exactly once on the DLQ with its
//! reason code and original bytes, duplicates counted in /metrics.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

const VALID_EVENTS: usize = 10_000;
const DUPLICATES: usize = 300;
const PER_REASON: usize = 10;
/// "key" in hex: the HMAC key of source `signed-src` in these tests.
const HMAC_KEY_HEX: &str = "6b6579";

fn sign(value: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
    mac.update(value);
    hex::encode(mac.finalize().into_bytes())
}

fn structured(v: String, subject: &str) -> Record {
    (
        Some(subject.as_bytes().to_vec()),
        Some(v.into_bytes()),
        vec![],
    )
}

/// One malformed record per call for `code`, made unique by `n`.
fn malformed(code: &str, n: usize, registry: bool) -> Option<Record> {
    let now = now_rfc3339();
    let id = format!("bad-{code}-{n}");
    let sub = format!("cust-{}", n % 7);
    let ok = |data: &str| cloudevent("src-a", &id, "llm.tokens", &sub, &now, data);
    let rec = match code {
        "empty_value" => (Some(format!("{sub}-{n}").into_bytes()), None, vec![]),
        "malformed_json" => structured(format!("{{\"id\": \"{id}\", oops"), &sub),
        "not_an_object" => structured(format!("[\"{id}\"]"), &sub),
        "unsupported_encoding" => (
            Some(sub.clone().into_bytes()),
            Some(format!("<tokens>{n}</tokens>").into_bytes()),
            vec![
                ("ce_specversion".into(), b"1.0".to_vec()),
                ("ce_id".into(), id.clone().into_bytes()),
                ("ce_source".into(), b"src-a".to_vec()),
                ("ce_type".into(), b"llm.tokens".to_vec()),
                ("ce_subject".into(), sub.clone().into_bytes()),
                ("ce_time".into(), now.clone().into_bytes()),
                ("content-type".into(), b"application/xml".to_vec()),
            ],
        ),
        "avro_schema_not_found" if registry => {
            let mut v = vec![0u8, 0x7f, 0xff, 0xff, 0xf0];
            v.extend_from_slice(id.as_bytes());
            (Some(sub.into_bytes()), Some(v), vec![])
        }
        "avro_decode_failed" if registry => return None, // needs a registered schema: see avro test
        "avro_schema_not_found" | "avro_decode_failed" => return None,
        "missing_attribute" => structured(
            ok(r#"{"tokens":1}"#).replace(r#""source":"src-a","#, ""),
            &sub,
        ),
        "invalid_attribute" => structured(
            ok(r#"{"tokens":1}"#).replace(r#""source":"src-a""#, r#""source":42"#),
            &sub,
        ),
        "unsupported_specversion" => structured(
            ok(r#"{"tokens":1}"#).replace(r#""specversion":"1.0""#, r#""specversion":"0.3""#),
            &sub,
        ),
        "invalid_time" => structured(
            cloudevent(
                "src-a",
                &id,
                "llm.tokens",
                &sub,
                "yesterday",
                r#"{"tokens":1}"#,
            ),
            &sub,
        ),
        "event_too_old" => structured(
            cloudevent(
                "src-a",
                &id,
                "llm.tokens",
                &sub,
                "2020-01-01T00:00:00Z",
                r#"{"tokens":1}"#,
            ),
            &sub,
        ),
        "event_in_future" => structured(
            cloudevent(
                "src-a",
                &id,
                "llm.tokens",
                &sub,
                "2099-01-01T00:00:00Z",
                r#"{"tokens":1}"#,
            ),
            &sub,
        ),
        "source_not_allowed" => structured(
            cloudevent("intruder", &id, "llm.tokens", &sub, &now, r#"{"tokens":1}"#),
            &sub,
        ),
        "signature_missing" => structured(
            cloudevent(
                "signed-src",
                &id,
                "llm.tokens",
                &sub,
                &now,
                r#"{"tokens":1}"#,
            ),
            &sub,
        ),
        "signature_invalid" => {
            let v = cloudevent(
                "signed-src",
                &id,
                "llm.tokens",
                &sub,
                &now,
                r#"{"tokens":1}"#,
            );
            let bad = sign(b"something else");
            (
                Some(sub.into_bytes()),
                Some(v.into_bytes()),
                vec![("meterline-signature".into(), bad.into_bytes())],
            )
        }
        "data_not_object" => structured(ok(r#""just a string""#), &sub),
        "unknown_event_type" => structured(
            cloudevent("src-a", &id, "no.such.type", &sub, &now, r#"{"tokens":1}"#),
            &sub,
        ),
        "value_missing" => structured(ok(r#"{"model":"m"}"#), &sub),
        "value_not_numeric" => structured(ok(r#"{"tokens":"lots"}"#), &sub),
        "value_not_finite" => structured(ok(r#"{"tokens":"NaN"}"#), &sub),
        "value_negative" => structured(ok(r#"{"tokens":-1}"#), &sub),
        "value_out_of_range" => structured(ok(r#"{"tokens":1e400}"#), &sub),
        "value_not_scalar" => structured(
            cloudevent(
                "src-a",
                &id,
                "user.active",
                &sub,
                &now,
                r#"{"user_id":{"nested":true}}"#,
            ),
            &sub,
        ),
        other => panic!("test has no malformed case for reason {other}: add one"),
    };
    Some(rec)
}

fn valid(i: usize, now: &str) -> Record {
    let sub = format!("cust-{}", i % 13);
    let id = format!("evt-{i}");
    match i % 4 {
        // Binary mode: attributes in headers, data in the value.
        0 => (
            Some(sub.clone().into_bytes()),
            Some(format!(r#"{{"tokens":{},"model":"m"}}"#, i % 1000 + 1).into_bytes()),
            vec![
                ("ce_specversion".into(), b"1.0".to_vec()),
                ("ce_id".into(), id.into_bytes()),
                ("ce_source".into(), b"src-b".to_vec()),
                ("ce_type".into(), b"llm.tokens".to_vec()),
                ("ce_subject".into(), sub.into_bytes()),
                ("ce_time".into(), now.as_bytes().to_vec()),
                ("content-type".into(), b"application/json".to_vec()),
            ],
        ),
        // Signed by a source that has an HMAC key.
        1 => {
            let v = cloudevent(
                "signed-src",
                &id,
                "llm.tokens",
                &sub,
                now,
                r#"{"tokens":"12.5","model":"m"}"#,
            );
            let s = sign(v.as_bytes());
            (
                Some(sub.into_bytes()),
                Some(v.into_bytes()),
                vec![("meterline-signature".into(), s.into_bytes())],
            )
        }
        2 => structured(
            cloudevent("src-a", &id, "api.request", &sub, now, r#"{"region":"eu"}"#),
            &sub,
        ),
        _ => structured(
            cloudevent(
                "src-a",
                &id,
                "llm.tokens",
                &sub,
                now,
                r#"{"tokens":7,"model":"m"}"#,
            ),
            &sub,
        ),
    }
}

#[test]
fn every_event_lands_in_exactly_one_place() {
    let port = free_port();
    let w = World::new(
        "validate",
        &format!(
            "[validate]\nallowed_sources = [\"src-*\", \"signed-src\"]\nhmac_keys_hex = {{ \"signed-src\" = \"{HMAC_KEY_HEX}\" }}\n[http]\nlisten_addr = \"127.0.0.1:{port}\"\n"
        ),
    );
    w.apply();
    let registry = false; // the Avro path has its own test
    let now = now_rfc3339();
    let valid_records: Vec<Record> = (0..VALID_EVENTS).map(|i| valid(i, &now)).collect();
    let mut expected_reason: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    let mut bad: Vec<Record> = Vec::new();
    let codes: Vec<&str> = meterline::stages::validate::reason::ALL_REASON_CODES.to_vec();
    let mut covered = BTreeSet::new();
    for code in &codes {
        for n in 0..PER_REASON {
            if let Some(r) = malformed(code, n, registry) {
                // Identify each dead letter by key+value bytes.
                let mut id = r.0.clone().unwrap_or_default();
                id.extend(r.1.clone().unwrap_or_default());
                assert!(expected_reason.insert(id, code.to_string()).is_none());
                bad.push(r);
                covered.insert(*code);
            }
        }
    }
    // Duplicates: exact re-sends of valid events, interleaved.
    let mut all: Vec<Record> = Vec::new();
    let mut dups = 0;
    for (i, r) in valid_records.iter().enumerate() {
        all.push(r.clone());
        if i % 33 == 32 && dups < DUPLICATES {
            all.push(valid_records[i - 16].clone());
            dups += 1;
        }
        if i % 40 == 0 && !bad.is_empty() {
            all.push(bad.pop().unwrap());
        }
    }
    all.append(&mut bad);
    let duplicates = all.len() - VALID_EVENTS - expected_reason.len();
    assert_eq!(duplicates, DUPLICATES);

    let mut stage = w.spawn_stage(&["validate"], "a");
    produce(&w.topic("usage.events"), &all);

    let validated_topic = w.topic("usage.validated");
    let dlq_topic = w.topic("meterline.dlq.validate");
    wait_until("all records to land", || {
        read_all(&validated_topic, true).len() >= VALID_EVENTS
            && read_all(&dlq_topic, true).len() >= expected_reason.len()
    });
    // Let anything extra (a double) arrive before judging.
    std::thread::sleep(std::time::Duration::from_secs(2));

    let validated = read_all(&validated_topic, true);
    assert_eq!(validated.len(), VALID_EVENTS);
    let ids: BTreeSet<(String, String)> = validated
        .iter()
        .map(|r| {
            let v = r.json();
            (
                v["source"].as_str().unwrap().to_string(),
                v["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(ids.len(), VALID_EVENTS, "unique by (source, id)");
    for r in &validated {
        let v = r.json();
        assert_eq!(
            r.key.as_deref(),
            Some(v["subject"].as_str().unwrap().as_bytes()),
            "keyed by subject"
        );
    }
    // Signed events carry their decimal value exactly, as a string.
    let signed = validated
        .iter()
        .find(|r| r.json()["source"] == "signed-src")
        .unwrap();
    assert_eq!(signed.json()["measures"][0]["value"], "12.5");

    let dlq = read_all(&dlq_topic, true);
    assert_eq!(dlq.len(), expected_reason.len());
    let mut per_reason: BTreeMap<String, usize> = BTreeMap::new();
    for r in &dlq {
        let mut id = r.key.clone().unwrap_or_default();
        id.extend(r.value.clone().unwrap_or_default());
        let want = expected_reason
            .get(&id)
            .unwrap_or_else(|| panic!("unexpected dead letter {:?}", r));
        assert_eq!(
            r.header("meterline.reason").as_deref(),
            Some(want.as_str()),
            "{r:?}"
        );
        assert_eq!(r.header("meterline.stage").as_deref(), Some("validate"));
        assert_eq!(
            r.header("meterline.original.topic"),
            Some(w.topic("usage.events"))
        );
        assert_eq!(r.header("meterline.attempt").as_deref(), Some("1"));
        assert!(r.header("meterline.message").is_some_and(|m| !m.is_empty()));
        assert!(r
            .header("meterline.original.offset")
            .unwrap()
            .parse::<i64>()
            .is_ok());
        *per_reason.entry(want.clone()).or_default() += 1;
    }
    for code in &covered {
        assert_eq!(per_reason.get(*code), Some(&PER_REASON), "{code}");
    }
    // Every code but the two Avro ones is exercised here.
    assert!(covered.len() >= codes.len() - 2, "{covered:?}");

    let (status, metrics) = http_get(port, "/metrics").expect("metrics endpoint");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&metrics, "meterline_validate_duplicates_total", &[]),
        Some(DUPLICATES as f64),
        "{metrics}"
    );
    for code in &covered {
        assert_eq!(
            metric(
                &metrics,
                "meterline_validate_dead_letters_total",
                &[("reason", code)]
            ),
            Some(PER_REASON as f64),
            "{code}"
        );
    }
    assert_eq!(
        metric(
            &metrics,
            "meterline_validate_records_out_total",
            &[("topic", &validated_topic)]
        ),
        Some(VALID_EVENTS as f64)
    );
    // Consumer lag per partition drops to zero once everything is committed.
    wait_until("lag gauges at zero", || {
        let (_, m) = http_get(port, "/metrics").unwrap();
        (0..TEST_PARTITIONS).all(|p| {
            metric(
                &m,
                "meterline_validate_consumer_lag_records",
                &[("partition", &p.to_string())],
            ) == Some(0.0)
        })
    });
    let (ready, _) = http_get(port, "/readyz").unwrap();
    assert_eq!(ready, 200);

    let status = terminate(&mut stage);
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}
