use super::*;
use crate::contracts::ValidatedEvent;
use crate::runtime::testing::{Harness, Record};
use chrono::{TimeZone, Utc};

use crate::stages::fixtures::gate_config as config;

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 12, 0, 0).unwrap()
}

fn harness() -> Harness<DedupeProcessor> {
    let cfg = config();
    let mut p = DedupeProcessor::new(&cfg);
    p.on_input_partitions(6);
    Harness::new(cfg, p, now().timestamp_millis())
}

/// A validated event's JSON, as validate writes it.
fn event(source: &str, id: &str, subject: &str, time: DateTime<Utc>) -> String {
    let json = serde_json::json!({
        "source": source, "id": id, "type": "llm.tokens", "subject": subject,
        "time": crate::contracts::rfc3339_utc::format(&time),
        "measures": [{"meter": "tokens", "value": "5", "unique_value": null, "group": {}}],
        "data": {"tokens": 5},
        "origin": {"topic": "x.usage.events", "partition": 0, "offset": 1, "encoding": "structured"}
    });
    let e = ValidatedEvent::from_json_slice(json.to_string().as_bytes()).unwrap();
    String::from_utf8(e.to_json_bytes().unwrap()).unwrap()
}

fn gate(
    kind: GateKind,
    origin: i32,
    seq: u64,
    first: Option<bool>,
    event: Option<&str>,
) -> Vec<u8> {
    GateRecord {
        kind,
        origin_partition: origin,
        seq,
        first_copy: first,
        event: event.map(|e| RawValue::from_string(e.to_string()).unwrap()),
    }
    .to_json_bytes()
    .unwrap()
}

fn claim(origin: i32, seq: u64, event: &str) -> Vec<u8> {
    gate(GateKind::Claim, origin, seq, None, Some(event))
}

/// One record on partition `partition` keyed by `key`; its outputs.
fn run(
    h: &mut Harness<DedupeProcessor>,
    partition: i32,
    key: &[u8],
    value: &[u8],
) -> Result<Vec<Output>, StageError> {
    assert_eq!(h.input_topic(), "x.usage.identified");
    h.partition = partition;
    h.process_record(Record {
        key: Some(key),
        value: Some(value),
        timestamp_ms: Some(1),
        ..Record::default()
    })
}

fn code(e: StageError) -> &'static str {
    match e {
        StageError::Reject { code, .. } => code,
        other => panic!("not a reject: {other}"),
    }
}

fn verdict_of(o: &Output) -> GateRecord {
    assert_eq!(o.topic, "x.usage.identified");
    GateRecord::from_json_slice(o.value.as_deref().unwrap()).unwrap()
}

#[test]
fn the_first_claim_of_an_identity_wins_whatever_subject_later_copies_carry() {
    let mut h = harness();
    let first = event("src", "e1", "cust-1", now());
    let key = identity_key("src", "e1");
    let out = run(&mut h, 4, &key, &claim(2, 7, &first)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].partition, Some(2), "the verdict goes to the origin");
    assert_eq!(out[0].key.as_deref(), Some(key.as_slice()));
    let v = verdict_of(&out[0]);
    assert_eq!(
        (v.kind, v.origin_partition, v.seq),
        (GateKind::Verdict, 2, 7)
    );
    assert_eq!(v.first_copy, Some(true));
    assert_eq!(v.event.unwrap().get(), first, "bytes unchanged");
    // The same identity for another customer, from another partition: a
    // duplicate, even after a commit.
    h.commit().unwrap();
    let other = event("src", "e1", "cust-2", now());
    let out = run(&mut h, 4, &key, &claim(5, 0, &other)).unwrap();
    let v = verdict_of(&out[0]);
    assert_eq!(
        (out[0].partition, v.seq, v.first_copy),
        (Some(5), 0, Some(false))
    );
    assert!(v.event.is_none());
    // The same id from another source is another event.
    let third = event("other", "e1", "cust-2", now());
    let out = run(
        &mut h,
        1,
        &identity_key("other", "e1"),
        &claim(5, 1, &third),
    )
    .unwrap();
    assert_eq!(verdict_of(&out[0]).first_copy, Some(true));
    // Counted per day: 2 first copies, 1 duplicate.
    let raw = h
        .stores
        .get(COUNTERS, &lineage::counter_key("2026-03-01"))
        .unwrap();
    let c: lineage::DayCounters = serde_json::from_slice(&raw.unwrap()).unwrap();
    assert_eq!((c.records_in, c.passed, c.released, c.held), (0, 2, 1, 0));
}

#[test]
fn verdicts_are_released_in_seq_order_whatever_order_they_arrive_in() {
    let mut h = harness();
    let events: Vec<String> = (0..5)
        .map(|i| event("src", &format!("e{i}"), &format!("cust-{i}"), now()))
        .collect();
    let verdict = |seq: u64, first: bool| {
        let e = first.then(|| events[seq as usize].as_str());
        gate(GateKind::Verdict, 3, seq, Some(first), e)
    };
    let k = b"k".as_slice();
    // seq 2 and 3 come early: held back.
    assert!(run(&mut h, 3, k, &verdict(2, true)).unwrap().is_empty());
    assert!(run(&mut h, 3, k, &verdict(3, false)).unwrap().is_empty());
    // seq 0: released alone (1 is still missing).
    let out = run(&mut h, 3, k, &verdict(0, true)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "x.usage.validated");
    assert_eq!(
        out[0].key.as_deref(),
        Some(&b"cust-0"[..]),
        "keyed by subject"
    );
    assert_eq!(out[0].value.as_deref(), Some(events[0].as_bytes()));
    assert_eq!(out[0].partition, None);
    h.commit().unwrap();
    // seq 1 releases 1 and 2; 3 is a duplicate (nothing out); 4 is next.
    let out = run(&mut h, 3, k, &verdict(1, true)).unwrap();
    let keys: Vec<&[u8]> = out.iter().map(|o| o.key.as_deref().unwrap()).collect();
    assert_eq!(keys, [b"cust-1".as_slice(), b"cust-2".as_slice()]);
    let out = run(&mut h, 3, k, &verdict(4, true)).unwrap();
    assert_eq!(out[0].key.as_deref(), Some(&b"cust-4"[..]));
    // Nothing is left held back.
    assert!(h.stores.scan(RELEASE, b"B", b"C", 10).unwrap().is_empty());
    // A second copy of a released verdict is dead-lettered, not released.
    let e = run(&mut h, 3, k, &verdict(1, true)).unwrap_err();
    assert_eq!(code(e), reason::STALE_VERDICT);
}

#[test]
fn a_long_gap_is_released_in_bounded_steps_by_punctuation() {
    let mut h = harness();
    let e = event("src", "e", "cust-1", now());
    let n = release::tests_released_per_call_max() as u64 + 5;
    for seq in 1..=n {
        let v = gate(GateKind::Verdict, 0, seq, Some(true), Some(&e));
        assert!(run(&mut h, 0, b"k", &v).unwrap().is_empty());
    }
    let v = gate(GateKind::Verdict, 0, 0, Some(false), None);
    let out = run(&mut h, 0, b"k", &v).unwrap();
    assert_eq!(out.len() as u64, n - 5);
    h.partition = 0;
    let out = h.punctuate().unwrap();
    assert_eq!(out.len(), 5, "the rest at the next punctuation");
}

#[test]
fn records_not_written_by_validate_or_dedupe_are_dead_lettered_without_claiming_the_id() {
    let mut h = harness();
    let e = event("src", "e1", "cust-1", now());
    let key = identity_key("src", "e1");
    let cases: Vec<(i32, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            0,
            b"cust-1".to_vec(),
            claim(0, 0, &e),
            reason::NOT_KEYED_BY_IDENTITY,
        ),
        (
            0,
            key.clone(),
            b"{\"not\":\"a gate record\"}".to_vec(),
            reason::MALFORMED_IDENTIFIED_EVENT,
        ),
        (
            0,
            key.clone(),
            gate(GateKind::Claim, 0, 0, None, None),
            reason::MALFORMED_IDENTIFIED_EVENT,
        ),
        (
            0,
            key.clone(),
            claim(0, 0, r#"{"source":"src"}"#),
            reason::MALFORMED_IDENTIFIED_EVENT,
        ),
        (
            0,
            key.clone(),
            claim(6, 0, &e),
            reason::INVALID_ORIGIN_PARTITION,
        ),
        (
            0,
            key.clone(),
            claim(-1, 0, &e),
            reason::INVALID_ORIGIN_PARTITION,
        ),
        (
            1,
            key.clone(),
            gate(GateKind::Verdict, 0, 0, Some(true), Some(&e)),
            reason::MISROUTED_VERDICT,
        ),
        (
            0,
            key.clone(),
            gate(GateKind::Verdict, 0, 0, Some(true), None),
            reason::MALFORMED_IDENTIFIED_EVENT,
        ),
        (
            0,
            key.clone(),
            gate(GateKind::Verdict, 0, 0, None, Some(&e)),
            reason::MALFORMED_IDENTIFIED_EVENT,
        ),
    ];
    for (partition, k, v, want) in cases {
        let got = code(run(&mut h, partition, &k, &v).unwrap_err());
        assert_eq!(got, want, "{}", String::from_utf8_lossy(&v));
    }
    h.partition = 0;
    let e2 = h
        .process_record(Record {
            key: Some(&key),
            value: None,
            ..Record::default()
        })
        .unwrap_err();
    assert_eq!(code(e2), reason::MALFORMED_IDENTIFIED_EVENT);
    // None of them claimed (src, e1) or moved the release sequence.
    let out = run(&mut h, 2, &key, &claim(0, 0, &e)).unwrap();
    assert_eq!(verdict_of(&out[0]).first_copy, Some(true));
    let v = out[0].value.clone().unwrap();
    assert_eq!(run(&mut h, 0, &key, &v).unwrap().len(), 1);
}

#[test]
fn entries_older_than_the_horizon_are_purged() {
    let mut h = harness();
    let old = now() - chrono::Duration::days(30);
    let claim_of = |id: &str, t| claim(0, 0, &event("src", id, "c", t));
    run(
        &mut h,
        0,
        &identity_key("src", "old"),
        &claim_of("old", old),
    )
    .unwrap();
    run(
        &mut h,
        0,
        &identity_key("src", "new"),
        &claim_of("new", now()),
    )
    .unwrap();
    h.commit().unwrap();
    // Horizon 40 days: nothing is old enough yet.
    h.processor.horizon_ms = 40 * MS_PER_DAY;
    h.punctuate().unwrap();
    let entry = |s, i| store::entry_key(s, i);
    assert!(h
        .stores
        .get(DEDUPE, &entry("src", "old"))
        .unwrap()
        .is_some());
    // Horizon 10 days: the 30-day-old entry goes, with its index key.
    h.processor.horizon_ms = 10 * MS_PER_DAY;
    h.punctuate().unwrap();
    assert!(h
        .stores
        .get(DEDUPE, &entry("src", "old"))
        .unwrap()
        .is_none());
    assert!(h
        .stores
        .get(DEDUPE, &entry("src", "new"))
        .unwrap()
        .is_some());
    let all = h.stores.scan(DEDUPE, &[], &[0xFF], 100).unwrap();
    assert_eq!(all.len(), 2, "one entry and one index key remain");
}
