//! Unit tests of the enrich processor.

use std::collections::{BTreeMap, BTreeSet};

use super::parked::{all_entries_range, oldest_parked_ms, parse_entry_key, read_stats};
use super::stats::ParkedStats;
use super::*;
use crate::config::Config;
use crate::contracts::EnrichedEvent;
use crate::contracts::ValidatedEvent;
use crate::contracts::{Encoding, Measure, Origin};
use crate::lineage;
use crate::refdata::parse_jsonl;
use crate::refdata::RefKind;
use crate::runtime::dlq::{headers, last_header};
use crate::runtime::testing::{Harness, Record};
use crate::runtime::{Output, Processor, StageError};
use crate::store::PartitionStores;
use chrono::{TimeZone, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::json;

const NS: &str = "x.";

fn config() -> Config {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Config::from_parts("[topology]\nnamespace = \"x.\"\n", "test", &[], dir).unwrap()
}

fn customer_line(id: &str) -> String {
    json!({"id": id, "name": "Acme", "legal_entity": "acme-us",
           "erp_customer_id": format!("C-{id}"), "status": "active"})
    .to_string()
}

fn subscription_line(id: &str, customer: &str, plan: &str) -> String {
    json!({"id": id, "customer_id": customer, "plan_id": plan,
           "start": "2026-01-01T00:00:00Z", "end": null,
           "billing_anchor_day": 1, "time_zone": "UTC", "currency": "USD",
           "legal_entity": "meterline-us"})
    .to_string()
}

fn plan_line(id: &str) -> String {
    json!({"id": id, "version": 1, "effective_from": "2026-01-01T00:00:00Z",
           "currency": "USD",
           "charges": {"tokens": {"model": "graduated", "tiers": [
               {"up_to": "1000", "unit_price": "0"},
               {"up_to": null, "unit_price": "0.01"}]}},
           "gl_accounts": {"usage_revenue": "4010", "unbilled_receivable": "1210", "receivable": "1200"}})
    .to_string()
}

/// Feeds JSON-lines records to the processor as table records.
fn load(h: &mut Harness<EnrichProcessor>, kind: RefKind, lines: &[String]) {
    for (key, value) in parse_jsonl(kind, &lines.join("\n")).unwrap() {
        h.table_record(kind.topic(), Some(key.as_bytes()), value.as_deref());
    }
}

fn event(customer: &str, id: &str, tokens: Decimal) -> ValidatedEvent {
    ValidatedEvent {
        correction: None,
        source: "svc".into(),
        id: id.into(),
        event_type: "llm.tokens".into(),
        subject: customer.into(),
        time: Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap(),
        measures: vec![Measure {
            meter: "tokens".into(),
            value: Some(tokens),
            unique_value: None,
            group: BTreeMap::from([("model".into(), "m".into())]),
        }],
        data: json!({"tokens": 1, "model": "m"}),
        origin: Origin {
            topic: "x.usage.events".into(),
            partition: 0,
            offset: 1,
            encoding: Encoding::Structured,
        },
    }
}

/// A processor knowing no reference data over empty stores, the clock at
/// [`now_ms`].
fn processor() -> Harness<EnrichProcessor> {
    Harness::new(config(), EnrichProcessor::new(&config()).unwrap(), now_ms())
}

/// A processor knowing plan `pro` and `cust-1` with subscription `sub-1`.
fn loaded() -> Harness<EnrichProcessor> {
    let mut h = processor();
    load(&mut h, RefKind::Plans, &[plan_line("pro")]);
    load(&mut h, RefKind::Customers, &[customer_line("cust-1")]);
    load(
        &mut h,
        RefKind::Subscriptions,
        &[subscription_line("sub-1", "cust-1", "pro")],
    );
    h
}

fn run_with_headers(
    h: &mut Harness<EnrichProcessor>,
    value: &[u8],
    headers: &[(String, Option<Vec<u8>>)],
) -> (Result<(), StageError>, Vec<Output>) {
    assert_eq!(h.input_topic(), "x.usage.validated");
    let r = h.process_record(Record {
        key: Some(b"k"),
        value: Some(value),
        headers,
        timestamp_ms: Some(1_768_046_400_000),
    });
    match r {
        Ok(out) => (Ok(()), without_notices(out)),
        Err(e) => (Err(e), Vec::new()),
    }
}

/// The outputs other than the invoice stage's parked-event notices (their
/// own test: `parking_and_flowing_on_send_the_invoice_stage_one_notice_each`).
fn without_notices(out: Vec<Output>) -> Vec<Output> {
    out.into_iter()
        .filter(|o| o.topic != format!("{NS}billing.commands"))
        .collect()
}

fn run(
    h: &mut Harness<EnrichProcessor>,
    e: &ValidatedEvent,
) -> (Result<(), StageError>, Vec<Output>) {
    run_with_headers(h, &e.to_json_bytes().unwrap(), &[])
}

/// A punctuation with the clock at `now_ms`.
fn punctuate(h: &mut Harness<EnrichProcessor>, now_ms: i64) -> Vec<Output> {
    h.now_ms = now_ms;
    without_notices(h.punctuate().unwrap())
}

fn header(o: &Output, name: &str) -> Option<String> {
    last_header(&o.headers, name).map(|v| String::from_utf8(v.to_vec()).unwrap())
}

fn parked_keys(s: &PartitionStores) -> Vec<(String, String, String)> {
    let (from, to) = all_entries_range();
    s.scan(PARKED, &from, &to, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|(k, _)| parse_entry_key(&k).unwrap())
        .collect()
}

/// The pinned clock: an hour after the test events' time.
fn now_ms() -> i64 {
    Utc.with_ymd_and_hms(2026, 1, 10, 13, 0, 0)
        .unwrap()
        .timestamp_millis()
}

#[test]
fn a_resolved_event_goes_to_usage_enriched_keyed_by_customer() {
    let mut h = loaded();
    let (r, out) = run(&mut h, &event("cust-1", "e1", dec!(5)));
    r.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
    assert_eq!(out[0].key.as_deref(), Some(&b"cust-1"[..]));
    let enriched = EnrichedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(
        (enriched.subscription_id.as_str(), enriched.plan_version),
        ("sub-1", 1)
    );
    assert!(parked_keys(&h.stores).is_empty());
    // Nothing parked; lineage and the day's counters are written.
    assert!(h.stores.pending(PARKED).is_empty());
    assert_eq!(h.stores.pending(COUNTERS).len(), 1);
    let prefix = lineage::event_key("svc", "e1");
    let steps = lineage::gather_steps(
        h.stores
            .scan(LINEAGE, &prefix, &lineage::prefix_end(&prefix), 10)
            .unwrap()
            .into_iter()
            .map(|(_, v)| v),
    );
    assert_eq!(steps.steps[0].outcome, "enriched");
}

#[test]
fn a_retraction_goes_on_unresolved_and_an_amendment_is_resolved() {
    use crate::contracts::{Correction, CorrectionKind, RetractionRecord};
    // No reference data at all: a retraction needs none (rate prices the
    // event it names in the context it was rated in).
    let mut h = processor();
    let correction = |kind| Correction {
        kind,
        source: "svc".into(),
        id: "e1".into(),
        time: None,
    };
    let mut retraction = event("cust-9", "r1", dec!(0));
    retraction.measures.clear();
    retraction.correction = Some(correction(CorrectionKind::Retract));
    let (r, out) = run(&mut h, &retraction);
    r.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
    assert_eq!(out[0].key.as_deref(), Some(&b"cust-9"[..]));
    let passed = RetractionRecord::from_json_slice(out[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(passed.retraction, retraction);
    assert!(h.stores.pending(PARKED).is_empty(), "never parked");
    // An amendment carries its replacement: resolved (or parked) like any
    // event, the correction travelling with it.
    let mut h = loaded();
    let mut amendment = event("cust-1", "e1-v2", dec!(5));
    amendment.correction = Some(correction(CorrectionKind::Amend));
    let (r, out) = run(&mut h, &amendment);
    r.unwrap();
    let enriched = EnrichedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(enriched.event.correction, amendment.correction);
    assert_eq!(enriched.subscription_id, "sub-1");
}

/// What an output to usage.enriched is: ("retract" | "event", its id).
fn enriched_output_id(o: &Output) -> (&'static str, String) {
    use crate::contracts::RetractionRecord;
    let bytes = o.value.as_deref().unwrap();
    match RetractionRecord::from_json_slice(bytes) {
        Ok(r) => ("retract", r.retraction.id),
        Err(_) => (
            "event",
            EnrichedEvent::from_json_slice(bytes).unwrap().event.id,
        ),
    }
}

#[test]
fn a_correction_of_a_parked_event_waits_for_it_and_flows_right_after_it() {
    use crate::contracts::{Correction, CorrectionKind};
    let mut h = loaded();
    let of = |kind, id: &str| {
        Some(Correction {
            kind,
            source: "svc".into(),
            id: id.into(),
            time: None,
        })
    };
    for id in ["event-5", "event-7"] {
        run(&mut h, &event("cust-9", id, dec!(5))).0.unwrap();
    }
    // Their identities sort before their targets' (shorter: keys are
    // length-prefixed), so a re-check meets them first.
    let mut retraction = event("cust-9", "r5", dec!(0));
    retraction.measures.clear();
    retraction.correction = of(CorrectionKind::Retract, "event-5");
    let mut amendment = event("cust-9", "a7", dec!(2));
    amendment.correction = of(CorrectionKind::Amend, "event-7");
    for correction in [&retraction, &amendment] {
        let (r, out) = run(&mut h, correction);
        r.unwrap();
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].topic, format!("{NS}usage.exceptions"));
        let reason = header(&out[0], headers::REASON);
        assert_eq!(reason.as_deref(), Some("correction_target_parked"));
        let message = header(&out[0], headers::MESSAGE).unwrap();
        assert!(message.contains("unknown_customer"), "{message}");
    }
    // A retraction of an event that is not parked passes at once.
    let mut elsewhere = event("cust-9", "c-retract", dec!(0));
    elsewhere.measures.clear();
    elsewhere.correction = of(CorrectionKind::Retract, "never-seen");
    let (r, out) = run(&mut h, &elsewhere);
    r.unwrap();
    assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
    h.commit().unwrap();
    assert!(punctuate(&mut h, now_ms()).is_empty());
    assert_eq!(parked_keys(&h.stores).len(), 4);

    load(&mut h, RefKind::Customers, &[customer_line("cust-9")]);
    let sub = subscription_line("sub-9", "cust-9", "pro");
    load(&mut h, RefKind::Subscriptions, &[sub]);
    let flowed: Vec<_> = punctuate(&mut h, now_ms())
        .iter()
        .map(enriched_output_id)
        .collect();
    let at = |kind: &str, id: &str| {
        flowed
            .iter()
            .position(|(k, i)| *k == kind && i == id)
            .unwrap_or_else(|| panic!("{kind} {id} not in {flowed:?}"))
    };
    assert_eq!(flowed.len(), 4, "{flowed:?}");
    assert!(at("event", "event-5") < at("retract", "r5"), "{flowed:?}");
    assert!(at("event", "event-7") < at("event", "a7"), "{flowed:?}");
    assert!(parked_keys(&h.stores).is_empty());
    assert_eq!(read_stats(&h.stores).unwrap(), ParkedStats::default());
    h.commit().unwrap();
    assert!(punctuate(&mut h, now_ms()).is_empty());
}

#[test]
fn malformed_input_is_rejected_without_writes_or_outputs() {
    let mut h = loaded();
    for bad in [&b"{not json"[..], br#"{"source":"s"}"#] {
        let (r, out) = run_with_headers(&mut h, bad, &[]);
        match r.unwrap_err() {
            StageError::Reject { code, .. } => assert_eq!(code, MALFORMED_VALIDATED_EVENT),
            other => panic!("{other:?}"),
        }
        assert!(out.is_empty());
    }
    assert!(!h.stores.has_pending());
}

#[test]
fn an_unknown_customer_is_parked_with_an_exceptions_copy() {
    let mut h = loaded();
    let e = event("cust-9", "e1", dec!(5));
    let bytes = e.to_json_bytes().unwrap();
    let (r, out) = run_with_headers(&mut h, &bytes, &[]);
    r.unwrap();
    assert_eq!(out.len(), 1);
    let x = &out[0];
    assert_eq!(x.topic, format!("{NS}usage.exceptions"));
    assert_eq!(x.key.as_deref(), Some(&b"cust-9"[..]));
    assert_eq!(x.value.as_deref(), Some(bytes.as_slice()));
    assert_eq!(x.partition, None);
    assert_eq!(
        header(x, headers::REASON).as_deref(),
        Some("unknown_customer")
    );
    assert_eq!(header(x, headers::STAGE).as_deref(), Some("enrich"));
    assert_eq!(
        header(x, headers::ORIGINAL_TOPIC),
        Some(format!("{NS}usage.validated"))
    );
    assert!(header(x, headers::MESSAGE).unwrap().contains("cust-9"));
    assert_eq!(
        parked_keys(&h.stores),
        [("cust-9".into(), "svc".into(), "e1".into())]
    );
    let stats = read_stats(&h.stores).unwrap();
    assert_eq!(stats.by_reason.get("unknown_customer"), Some(&1));
    // No subscription is known for cust-9: the amount at risk is unknown.
    assert!(stats.at_risk.is_empty());
    assert!(oldest_parked_ms(&h.stores, "unknown_customer")
        .unwrap()
        .is_some());
}

#[test]
fn a_parked_event_flows_exactly_once_when_its_customer_arrives() {
    let mut h = processor();
    load(&mut h, RefKind::Plans, &[plan_line("pro")]);
    // The subscription is known, the customer not yet.
    load(
        &mut h,
        RefKind::Subscriptions,
        &[subscription_line("sub-9", "cust-9", "pro")],
    );
    let (r, out) = run(&mut h, &event("cust-9", "e1", dec!(1500)));
    r.unwrap();
    assert_eq!(out[0].topic, format!("{NS}usage.exceptions"));
    // Revenue at risk: 1500 tokens alone = 1000 free + 500 * 0.01.
    let stats = read_stats(&h.stores).unwrap();
    assert_eq!(stats.at_risk.get("USD").map(|d| d.0), Some(dec!(5.00)));
    h.commit().unwrap();

    // The initial sweep finds nothing to do yet.
    assert!(punctuate(&mut h, now_ms()).is_empty());
    assert_eq!(parked_keys(&h.stores).len(), 1);

    load(&mut h, RefKind::Customers, &[customer_line("cust-9")]);
    let out = punctuate(&mut h, now_ms());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
    assert_eq!(out[0].key.as_deref(), Some(&b"cust-9"[..]));
    let enriched = EnrichedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(enriched.subscription_id, "sub-9");
    assert_eq!(enriched.event.id, "e1");
    // Deleted in the same transaction, with its index key and statistics.
    assert!(parked_keys(&h.stores).is_empty());
    assert!(oldest_parked_ms(&h.stores, "unknown_customer")
        .unwrap()
        .is_none());
    assert_eq!(read_stats(&h.stores).unwrap(), ParkedStats::default());
    h.commit().unwrap();

    // Nothing flows a second time, even after a full sweep.
    assert!(punctuate(&mut h, now_ms()).is_empty());
    let later = now_ms() + PARKED_RESWEEP_INTERVAL_MS + 1;
    assert!(punctuate(&mut h, later).is_empty());
    let all = h.stores.scan(PARKED, &[], &[0xFF], 100).unwrap();
    assert_eq!(all.len(), 1, "only the statistics key remains: {all:?}");
}

#[test]
fn an_aborted_reemission_is_redone_in_the_next_transaction() {
    let mut h = loaded();
    run(&mut h, &event("cust-9", "e1", dec!(5))).0.unwrap();
    h.commit().unwrap();
    punctuate(&mut h, now_ms());
    load(&mut h, RefKind::Customers, &[customer_line("cust-9")]);
    load(
        &mut h,
        RefKind::Subscriptions,
        &[subscription_line("sub-9", "cust-9", "pro")],
    );
    assert_eq!(punctuate(&mut h, now_ms()).len(), 1);
    // The transaction aborts: the delete is dropped with the output.
    h.abort();
    assert_eq!(parked_keys(&h.stores).len(), 1);
    let out = punctuate(&mut h, now_ms());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
    h.commit().unwrap();
    assert!(punctuate(&mut h, now_ms()).is_empty());
    assert!(parked_keys(&h.stores).is_empty());
}

#[test]
fn a_plan_record_triggers_a_bounded_sweep_of_every_customer() {
    let mut h = processor();
    load(&mut h, RefKind::Customers, &[customer_line("cust-1")]);
    load(
        &mut h,
        RefKind::Subscriptions,
        &[subscription_line("sub-1", "cust-1", "pro")],
    );
    let parked = PARKED_RECHECK_BATCH_MAX * 2 + 7;
    for i in 0..parked {
        let (r, out) = run(&mut h, &event("cust-1", &format!("e{i}"), dec!(1)));
        r.unwrap();
        assert_eq!(
            header(&out[0], headers::REASON).as_deref(),
            Some("unknown_plan")
        );
    }
    h.commit().unwrap();
    let now = now_ms();
    assert!(punctuate(&mut h, now).is_empty());
    // Let the initial sweep finish before the plan arrives.
    while h.processor.parts[&0].sweep.is_some() {
        assert!(punctuate(&mut h, now).is_empty());
    }
    load(&mut h, RefKind::Plans, &[plan_line("pro")]);
    let mut emitted = BTreeSet::new();
    let mut rounds = 0;
    while !parked_keys(&h.stores).is_empty() {
        let out = punctuate(&mut h, now);
        assert!(out.len() <= PARKED_RECHECK_BATCH_MAX);
        for o in out {
            let e = EnrichedEvent::from_json_slice(o.value.as_deref().unwrap()).unwrap();
            assert!(emitted.insert(e.event.id), "emitted twice");
        }
        h.commit().unwrap();
        rounds += 1;
        assert!(rounds < 10);
    }
    assert_eq!(emitted.len(), parked);
    assert_eq!(rounds, 3);
    assert!(punctuate(&mut h, now).is_empty());
}

#[test]
fn a_customer_trigger_rechecks_only_that_customer_across_punctuations() {
    let mut h = loaded();
    let parked = PARKED_RECHECK_BATCH_MAX + 3;
    for i in 0..parked {
        run(&mut h, &event("cust-9", &format!("e{i}"), dec!(1)))
            .0
            .unwrap();
    }
    h.commit().unwrap();
    let now = now_ms();
    while {
        punctuate(&mut h, now);
        h.processor.parts[&0].sweep.is_some()
    } {}
    load(&mut h, RefKind::Customers, &[customer_line("cust-9")]);
    load(
        &mut h,
        RefKind::Subscriptions,
        &[subscription_line("sub-9", "cust-9", "pro")],
    );
    assert!(h.processor.parts[&0].customers.contains_key("cust-9"));
    assert!(h.processor.parts[&0].sweep.is_none() && !h.processor.parts[&0].sweep_requested);
    let first = punctuate(&mut h, now);
    assert_eq!(first.len(), PARKED_RECHECK_BATCH_MAX);
    h.commit().unwrap();
    let second = punctuate(&mut h, now);
    assert_eq!(second.len(), 3);
    h.commit().unwrap();
    assert!(parked_keys(&h.stores).is_empty());
    assert!(h.processor.parts[&0].customers.is_empty());
}

#[test]
fn a_still_unresolved_event_changes_reason_without_a_new_exception() {
    let mut h = processor();
    run(&mut h, &event("cust-1", "e1", dec!(5))).0.unwrap();
    h.commit().unwrap();
    punctuate(&mut h, now_ms());
    load(&mut h, RefKind::Customers, &[customer_line("cust-1")]);
    assert!(punctuate(&mut h, now_ms()).is_empty());
    let stats = read_stats(&h.stores).unwrap();
    assert_eq!(
        stats.by_reason,
        BTreeMap::from([("no_active_subscription".to_owned(), 1)])
    );
    assert!(oldest_parked_ms(&h.stores, "unknown_customer")
        .unwrap()
        .is_none());
    assert!(oldest_parked_ms(&h.stores, "no_active_subscription")
        .unwrap()
        .is_some());
    // The subscription comes, its plan does not: unknown_plan.
    load(
        &mut h,
        RefKind::Subscriptions,
        &[subscription_line("sub-1", "cust-1", "pro")],
    );
    assert!(punctuate(&mut h, now_ms()).is_empty());
    assert_eq!(
        read_stats(&h.stores).unwrap().by_reason,
        BTreeMap::from([("unknown_plan".to_owned(), 1)])
    );
}

#[test]
fn replays_of_exceptions_flow_once_and_never_twice() {
    let mut h = loaded();
    let e = event("cust-9", "e1", dec!(5));
    let bytes = e.to_json_bytes().unwrap();
    run(&mut h, &e).0.unwrap();
    h.commit().unwrap();
    let replayed = vec![
        (headers::ATTEMPT.to_owned(), Some(b"2".to_vec())),
        (
            headers::REPLAYED_FROM.to_owned(),
            Some(format!("{NS}usage.exceptions:0:0").into_bytes()),
        ),
    ];
    // Replayed while still unresolved: parked again, with a new copy.
    let (r, out) = run_with_headers(&mut h, &bytes, &replayed);
    r.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(header(&out[0], headers::ATTEMPT).as_deref(), Some("2"));
    assert_eq!(parked_keys(&h.stores).len(), 1);
    assert_eq!(
        read_stats(&h.stores)
            .unwrap()
            .by_reason
            .get("unknown_customer"),
        Some(&1)
    );
    h.commit().unwrap();
    // The customer arrives and the replayed copy resolves it.
    load(&mut h, RefKind::Customers, &[customer_line("cust-9")]);
    load(
        &mut h,
        RefKind::Subscriptions,
        &[subscription_line("sub-9", "cust-9", "pro")],
    );
    let (r, out) = run_with_headers(&mut h, &bytes, &replayed);
    r.unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
    assert!(parked_keys(&h.stores).is_empty());
    h.commit().unwrap();
    // Self-healing finds nothing left; a further replay is dropped.
    assert!(punctuate(&mut h, now_ms()).is_empty());
    let (r, out) = run_with_headers(&mut h, &bytes, &replayed);
    r.unwrap();
    assert!(out.is_empty());
    assert!(!h.stores.has_pending());
    // A replay from a dead-letter topic is a normal input record.
    let from_dlq = vec![(
        headers::REPLAYED_FROM.to_owned(),
        Some(format!("{NS}meterline.dlq.enrich:0:0").into_bytes()),
    )];
    let (r, out) = run_with_headers(&mut h, &bytes, &from_dlq);
    r.unwrap();
    assert_eq!(out.len(), 1);
}

#[test]
fn malformed_table_records_are_skipped() {
    let p = &mut loaded().processor;
    let before = p.tables().clone();
    p.on_table_record("ref.customers", Some(b"cust-1"), Some(b"{oops"));
    p.on_table_record("ref.customers", None, Some(b"{}"));
    p.on_table_record("ref.plans", Some(b"no-version"), None);
    p.on_table_record("ref.unknown", Some(b"k"), Some(b"{}"));
    assert_eq!(p.tables(), &before);
    // And a good tombstone still applies afterwards.
    p.on_table_record("ref.customers", Some(b"cust-1"), None);
    assert!(p.tables().customer("cust-1").is_none());
}

#[test]
fn parking_and_flowing_on_send_the_invoice_stage_one_notice_each() {
    use crate::contracts::{Command, CommandKind};
    let mut h = processor();
    load(&mut h, RefKind::Plans, &[plan_line("pro")]);
    load(
        &mut h,
        RefKind::Subscriptions,
        &[subscription_line("sub-9", "cust-9", "pro")],
    );
    let e = event("cust-9", "e1", dec!(1500));
    let notices = |out: &[Output]| -> Vec<Command> {
        out.iter()
            .filter(|o| o.topic == format!("{NS}billing.commands"))
            .map(|o| {
                assert_eq!(o.key.as_deref(), Some(&b"cust-9"[..]));
                Command::from_json_slice(o.value.as_deref().unwrap()).unwrap()
            })
            .collect()
    };
    let value = e.to_json_bytes().unwrap();
    let out = h.process(Some(b"k"), Some(&value)).unwrap();
    let parked = notices(&out);
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].kind, CommandKind::EventParked);
    assert_eq!(parked[0].actor, "meterline:enrich");
    let p = parked[0].parked.as_ref().unwrap();
    assert_eq!(
        (p.source.as_str(), p.id.as_str(), p.event_time),
        ("svc", "e1", e.time)
    );
    assert_eq!(p.code.as_deref(), Some("unknown_customer"));
    h.commit().unwrap();
    // Parked again (still unknown): no second notice.
    let again = h.process(Some(b"k"), Some(&value)).unwrap();
    assert!(notices(&again).is_empty(), "{again:?}");
    h.commit().unwrap();
    h.punctuate().unwrap();
    load(&mut h, RefKind::Customers, &[customer_line("cust-9")]);
    h.now_ms = now_ms();
    let out = h.punctuate().unwrap();
    let flowed = notices(&out);
    assert_eq!(flowed.len(), 1);
    assert_eq!(flowed[0].kind, CommandKind::EventUnparked);
    assert_eq!(flowed[0].parked.as_ref().unwrap().id, "e1");
    assert_eq!(flowed[0].parked.as_ref().unwrap().code, None);
}
