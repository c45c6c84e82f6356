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
/// Events of one customer whose order through dedupe is checked.
const ORDERED_EVENTS: usize = 300;
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
    let correction =
        |kind: &str, data: &str| structured(cloudevent("src-a", &id, kind, &sub, &now, data), &sub);
    let rec = match code {
        "empty_value" => (Some(format!("{sub}-{n}").into_bytes()), None, vec![]),
        "malformed_json" => structured(format!("{{\"id\": \"{id}\", oops"), &sub),
        "not_an_object" => structured(format!("[\"{id}\"]"), &sub),
        // 5 tokens or 500: readers of these bytes disagree, so none is billed.
        "duplicate_member" => structured(ok(r#"{"tokens":5,"tokens":500}"#), &sub),
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
        // Over max_event_bytes (default 256 KiB) but small enough for its
        // dead letter to keep the original bytes (identified by them below).
        "event_too_large" => structured(
            ok(&format!(
                r#"{{"tokens":1,"pad":"{}"}}"#,
                "x".repeat(300 * 1024)
            )),
            &sub,
        ),
        "retraction_invalid" => correction("meterline.usage.retract", r#"{"source":"src-a"}"#),
        "amendment_invalid" => correction(
            "meterline.usage.amend",
            r#"{"source":"src-a","id":"evt-0","event":{"id":"x"}}"#,
        ),
        // Only src-ops may correct another source's events (config).
        "correction_source_not_permitted" => correction(
            "meterline.usage.retract",
            r#"{"source":"src-b","id":"evt-0"}"#,
        ),
        // Own tests: need a raw header key / require_signature on.
        "invalid_header" | "signature_required" => return None,
        // An object group value must not open a new billing segment.
        "invalid_group_value" => structured(ok(r#"{"tokens":1,"model":{"x":1}}"#), &sub),
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
            "[validate]\nallowed_sources = [\"src-*\", \"signed-src\"]\ncorrection_sources = [\"src-ops\"]\nhmac_keys_hex = {{ \"signed-src\" = \"{HMAC_KEY_HEX}\" }}\n[http]\nlisten_addr = \"127.0.0.1:{port}\"\n"
        ),
    );
    w.apply();
    let registry = false; // the Avro path has its own test
    let now = now_rfc3339();
    let valid_records: Vec<Record> = (0..VALID_EVENTS).map(|i| valid(i, &now)).collect();
    let mut expected_reason: BTreeMap<Vec<u8>, String> = BTreeMap::new();
    let mut bad: Vec<Record> = Vec::new();
    let codes: Vec<&str> = meterline::ingest::reason::ALL_REASON_CODES.to_vec();
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

    let mut stage = w.spawn_stage(&["validate", "dedupe"], "a");
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
    // Every code but the two Avro ones, invalid_header and signature_required
    // (poisoned_records_do_not_stop_their_partition) is exercised here.
    assert!(covered.len() >= codes.len() - 4, "{covered:?}");

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
                "meterline_dead_letters_total",
                &[("stage", "validate"), ("reason", code)]
            ),
            Some(PER_REASON as f64),
            "{code}"
        );
    }
    // validate passes every valid copy on, keyed by identity; dedupe keeps
    // the first of each.
    assert_eq!(
        metric(
            &metrics,
            "meterline_records_out_total",
            &[
                ("stage", "validate"),
                ("topic", &w.topic("usage.identified"))
            ]
        ),
        Some((VALID_EVENTS + DUPLICATES) as f64)
    );
    assert_eq!(
        metric(
            &metrics,
            "meterline_records_out_total",
            &[("stage", "dedupe"), ("topic", &validated_topic)]
        ),
        Some(VALID_EVENTS as f64)
    );
    // What librdkafka and the broker carry: the bytes counted are exactly
    // the keys and values on the topics (nothing aborted in this run).
    let bytes_of = |recs: &[Rec]| -> f64 {
        let len = |b: &Option<Vec<u8>>| b.as_ref().map_or(0, Vec::len);
        recs.iter()
            .map(|r| len(&r.key) + len(&r.value))
            .sum::<usize>() as f64
    };
    assert_eq!(
        metric(
            &metrics,
            "meterline_records_out_bytes_total",
            &[("stage", "dedupe"), ("topic", &validated_topic)]
        ),
        Some(bytes_of(&validated))
    );
    let lineage_changelog = w.topic("meterline.validate.lineage.changelog");
    assert_eq!(
        metric(
            &metrics,
            "meterline_changelog_bytes_total",
            &[("stage", "validate"), ("store", "lineage")]
        ),
        Some(bytes_of(&read_all(&lineage_changelog, true)))
    );
    // Consumer lag per partition drops to zero once everything is committed.
    wait_until("lag gauges at zero", || {
        let (_, m) = http_get(port, "/metrics").unwrap();
        (0..TEST_PARTITIONS).all(|p| {
            metric(
                &m,
                "meterline_consumer_lag_records",
                &[("stage", "validate"), ("partition", &p.to_string())],
            ) == Some(0.0)
        })
    });
    // librdkafka's statistics reach the consumer-queue gauge, which is
    // empty once the stages have taken everything fetched.
    wait_until("consumer queue gauges at zero", || {
        let (_, m) = http_get(port, "/metrics").unwrap();
        ["validate", "dedupe"].iter().all(|stage| {
            metric(&m, "meterline_consumer_queue_bytes", &[("stage", stage)]) == Some(0.0)
        })
    });
    // The memory a soak needs to tell apart: RocksDB's files outside its
    // cache (none flushed yet in a run this small, but measured), and the
    // C heap RocksDB and librdkafka allocate from (their buffers are in use).
    let (_, m) = http_get(port, "/metrics").unwrap();
    assert!(
        metric(
            &m,
            "meterline_store_memory_bytes",
            &[("kind", "table_readers")]
        )
        .is_some(),
        "{m}"
    );
    let heap = |state| metric(&m, "meterline_native_heap_bytes", &[("state", state)]);
    assert!(heap("in_use").is_some_and(|b| b > 1024.0 * 1024.0), "{m}");
    assert!(heap("free").is_some(), "{m}");
    let (ready, _) = http_get(port, "/readyz").unwrap();
    assert_eq!(ready, 200);

    let status = terminate(&mut stage);
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

/// Produces one record whose headers include a key that is not UTF-8
/// (rdkafka's safe API only takes `&str` keys, so the key goes in through
/// librdkafka's C API), and waits for it to be acknowledged.
fn produce_with_raw_header_key(topic: &str, key: &[u8], value: &[u8], raw_key: &[u8]) {
    use rdkafka::message::OwnedHeaders;
    use rdkafka::producer::{BaseRecord, Producer};
    let headers = OwnedHeaders::new().insert(rdkafka::message::Header {
        key: "x-ok",
        value: Some(&b"1"[..]),
    });
    // SAFETY: `as_borrowed` is a view of the same native header list that
    // `headers` owns (rdkafka's own representation); the name and value
    // pointers are valid for the call, which copies them.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_header_add(
            headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders
                as *mut rdkafka::bindings::rd_kafka_headers_t,
            raw_key.as_ptr().cast(),
            raw_key.len() as isize,
            b"v".as_ptr().cast(),
            1,
        )
    };
    assert_eq!(
        err,
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
    );
    let p = producer();
    let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    p.send(record).map_err(|(e, _)| e).unwrap();
    p.flush(std::time::Duration::from_secs(60)).unwrap();
}

fn binary(subject: &str, id: &str, time: &str, data: &str, signed_subject: &str) -> Record {
    let attributes = ["1.0", id, "signed-src", "llm.tokens", signed_subject, time];
    let mut signed: Vec<u8> = Vec::new();
    for a in attributes {
        signed.extend_from_slice(a.as_bytes());
        signed.push(b'\n');
    }
    signed.extend_from_slice(data.as_bytes());
    (
        Some(subject.as_bytes().to_vec()),
        Some(data.as_bytes().to_vec()),
        vec![
            ("ce_specversion".into(), b"1.0".to_vec()),
            ("ce_id".into(), id.as_bytes().to_vec()),
            ("ce_source".into(), b"signed-src".to_vec()),
            ("ce_type".into(), b"llm.tokens".to_vec()),
            ("ce_subject".into(), subject.as_bytes().to_vec()),
            ("ce_time".into(), time.as_bytes().to_vec()),
            ("meterline-signature".into(), sign(&signed).into_bytes()),
        ],
    )
}

/// Issue 12 item 8 a/b/c: a record with a non-UTF-8 header key, a ~1 MB
/// record, a signed binary-mode event whose ce_subject was edited and an
/// unsigned source under require_signature each land on the DLQ with their
/// code, and the valid events behind them on the same partition are validated.
#[test]
fn poisoned_records_do_not_stop_their_partition() {
    let w = World::new(
        "validate_poison",
        &format!(
            "[validate]\nrequire_signature = true\nhmac_keys_hex = {{ \"signed-src\" = \"{HMAC_KEY_HEX}\" }}\n"
        ),
    );
    w.apply();
    let input = w.topic("usage.events");
    let now = now_rfc3339();
    let sub = "cust-poison";
    let signed_structured = |id: &str| {
        let v = cloudevent(
            "signed-src",
            id,
            "llm.tokens",
            sub,
            &now,
            r#"{"tokens":3,"model":"m"}"#,
        );
        let s = sign(v.as_bytes());
        (
            Some(sub.as_bytes().to_vec()),
            Some(v.into_bytes()),
            vec![("meterline-signature".to_string(), s.into_bytes())],
        )
    };
    // 1. A header key that is not UTF-8 (the record is otherwise valid).
    let (_, v, _) = signed_structured("p-header");
    produce_with_raw_header_key(&input, sub.as_bytes(), &v.unwrap(), b"bad\xff\xfekey");
    // 2. ~1 MB: above max_event_bytes and too big for a whole dead letter.
    let big_data = format!(r#"{{"tokens":1,"pad":"{}"}}"#, "x".repeat(990_000));
    let big = cloudevent("signed-src", "p-big", "llm.tokens", sub, &now, &big_data);
    let big_len = big.len();
    let big_digest = {
        use sha2::Digest;
        hex::encode(Sha256::digest(big.as_bytes()))
    };
    let data = r#"{"tokens":4,"model":"m"}"#;
    produce(
        &input,
        &[
            (
                Some(sub.as_bytes().to_vec()),
                Some(big.into_bytes()),
                vec![],
            ),
            // 3. Signed for cust-victim, re-sent with ce_subject edited (and the
            //    same key, so on the same partition).
            binary(sub, "p-edited", &now, data, "cust-victim"),
            // 4. An unsigned source while require_signature is on.
            structured(
                cloudevent("src-a", "p-unsigned", "llm.tokens", sub, &now, data),
                sub,
            ),
            // The valid events behind them.
            binary(sub, "p-binary-ok", &now, data, sub),
            signed_structured("p-structured-ok"),
        ],
    );
    let mut stage = w.spawn_stage(&["validate", "dedupe"], "a");
    let validated_topic = w.topic("usage.validated");
    let dlq_topic = w.topic("meterline.dlq.validate");
    wait_until("poisoned and valid records to land", || {
        read_all(&validated_topic, true).len() >= 2 && read_all(&dlq_topic, true).len() >= 4
    });
    std::thread::sleep(std::time::Duration::from_secs(2));

    let validated = read_all(&validated_topic, true);
    let ids: Vec<String> = validated
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["p-binary-ok", "p-structured-ok"]);

    let dlq = read_all(&dlq_topic, true);
    let reasons: Vec<String> = dlq
        .iter()
        .map(|r| r.header("meterline.reason").unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "invalid_header",
            "event_too_large",
            "signature_invalid",
            "signature_required"
        ]
    );
    // The undecodable key is shown with replacement characters.
    assert!(dlq[0]
        .headers
        .iter()
        .any(|(k, _)| k == "bad\u{fffd}\u{fffd}key"));
    // The big one is cut to fit, with its digest and length.
    let big_dl = &dlq[1];
    assert!(big_dl.value.as_ref().unwrap().len() < big_len);
    assert_eq!(
        big_dl.header("meterline.original.value.sha256"),
        Some(big_digest)
    );
    assert_eq!(
        big_dl.header("meterline.original.value.bytes"),
        Some(big_len.to_string())
    );
    assert!(big_dl.header("meterline.truncated").is_some());
    // All on one partition, in order.
    let offsets: Vec<i64> = dlq
        .iter()
        .map(|r| {
            r.header("meterline.original.offset")
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "{offsets:?}");
    assert!(dlq.iter().all(|r| r.partition == dlq[0].partition));

    let status = terminate(&mut stage);
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

/// Issue 12 item 8d: the CloudEvents identity is (`source`, `id`) alone. The
/// same identity sent for two customers (so under two keys, on two partitions
/// of usage.events) is validated once, for the first copy's customer, and
/// the valid event behind it still goes through.
#[test]
fn the_same_identity_under_two_subjects_is_validated_once() {
    let port = free_port();
    let w = World::new(
        "validate_identity",
        &format!("[http]\nlisten_addr = \"127.0.0.1:{port}\"\n"),
    );
    w.apply();
    // Two subjects whose keys land on different partitions of usage.events.
    let first = "cust-first";
    let on = |s: &str| meterline::kafka::partition_for_key(s.as_bytes(), TEST_PARTITIONS);
    let second = (0..100)
        .map(|i| format!("cust-other-{i}"))
        .find(|s| on(s) != on(first))
        .unwrap();
    let now = now_rfc3339();
    let data = r#"{"tokens": 5, "model": "m"}"#;
    let event = |id: &str, subject: &str| {
        structured(
            cloudevent("src-a", id, "llm.tokens", subject, &now, data),
            subject,
        )
    };
    let input = w.topic("usage.events");
    produce(&input, &[event("twice", first)]);
    // The first copy is validated before the second is even sent.
    let mut stage = w.spawn_stage(&["validate", "dedupe"], "a");
    let validated_topic = w.topic("usage.validated");
    wait_until("the first copy", || {
        read_all(&validated_topic, true).len() == 1
    });
    produce(
        &input,
        &[
            event("twice", &second),
            event("twice", first),
            event("after", &second),
        ],
    );
    wait_until("the event behind the copies", || {
        read_all(&validated_topic, true).len() >= 2
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    let validated: BTreeSet<(String, String)> = read_all(&validated_topic, true)
        .iter()
        .map(|r| {
            let v = r.json();
            let key = String::from_utf8(r.key.clone().unwrap()).unwrap();
            assert_eq!(
                v["subject"].as_str(),
                Some(key.as_str()),
                "keyed by subject"
            );
            (v["id"].as_str().unwrap().to_string(), key)
        })
        .collect();
    let want = [("twice", first), ("after", second.as_str())];
    let want: BTreeSet<(String, String)> = want
        .iter()
        .map(|(i, s)| (i.to_string(), s.to_string()))
        .collect();
    assert_eq!(validated, want);

    // Order: one customer's events, spread by identity over every partition
    // of usage.identified and decided there, reach usage.validated in the
    // order they were sent (copies under the other subject interleaved).
    let mut batch = Vec::new();
    for i in 0..ORDERED_EVENTS {
        batch.push(event(&format!("o-{i}"), first));
        if i % 10 == 0 {
            batch.push(event(&format!("o-{i}"), &second));
        }
    }
    produce(&input, &batch);
    // (A copy sent for the other customer may be claimed first: which copy
    // wins across partitions is the first one validated, whichever that is.)
    let ordered = |subject: &str| -> Vec<usize> {
        read_all(&validated_topic, true)
            .iter()
            .filter(|r| r.key.as_deref() == Some(subject.as_bytes()))
            .filter_map(|r| r.json()["id"].as_str()?.strip_prefix("o-")?.parse().ok())
            .collect()
    };
    let both = || ordered(first).len() + ordered(&second).len();
    wait_until("the ordered events", || both() >= ORDERED_EVENTS);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let (a, b) = (ordered(first), ordered(&second));
    assert!(
        a.windows(2).all(|w| w[0] < w[1]),
        "in the order sent: {a:?}"
    );
    assert!(
        b.windows(2).all(|w| w[0] < w[1]),
        "in the order sent: {b:?}"
    );
    let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..ORDERED_EVENTS).collect::<Vec<_>>(), "each once");
    assert!(a.len() >= ORDERED_EVENTS - ORDERED_EVENTS.div_ceil(10));

    let (_, metrics) = http_get(port, "/metrics").expect("metrics endpoint");
    assert_eq!(
        metric(&metrics, "meterline_validate_duplicates_total", &[]),
        Some((2 + ORDERED_EVENTS.div_ceil(10)) as f64),
        "{metrics}"
    );
    assert!(read_all(&w.topic("meterline.dlq.validate"), true).is_empty());
    assert!(read_all(&w.topic("meterline.dlq.dedupe"), true).is_empty());
    assert!(terminate(&mut stage).success());
}

/// Issue 12 item 8f: `run` with its HTTP address taken exits non-zero at
/// once with a message naming the address, instead of running without its
/// endpoints (a stale instance answered lineage queries in its place).
#[test]
fn run_exits_when_its_http_address_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let w = World::new(
        "validate_bind",
        &format!("[http]\nlisten_addr = \"{addr}\"\n"),
    );
    let mut child = w
        .cmd()
        .args(["run", "--stage", "validate"])
        .current_dir(w.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            panic!("meterline run kept running with its HTTP address taken");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{status:?}");
    assert!(
        stderr.contains(&format!("cannot listen on http.listen_addr {addr}")),
        "{stderr}"
    );
    drop(taken);
}
