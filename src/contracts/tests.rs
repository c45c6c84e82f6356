//! The wire form of every inter-stage record, pinned. A failure here means a
//! change alters what a stage writes: bump the record's version and keep
//! readers of the old form working (see the module docs), or undo it.

use std::collections::BTreeMap;
use std::fmt::Debug;

use chrono::{DateTime, Utc};
use rust_decimal_macros::dec;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::*;
use crate::meter::Aggregation;
use crate::rating::ChargeModel;
use crate::refdata::GlAccounts;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn window(id: &str, start: &str, end: &str) -> Window {
    Window {
        id: id.into(),
        start: at(start),
        end: at(end),
    }
}

fn day() -> Window {
    window("2026-01-10", "2026-01-10T05:00:00Z", "2026-01-11T05:00:00Z")
}

fn period() -> Window {
    window("2026-01-01", "2026-01-01T05:00:00Z", "2026-02-01T05:00:00Z")
}

fn customer() -> CustomerInfo {
    CustomerInfo {
        id: "cust-42".into(),
        name: "Acme".into(),
        legal_entity: "acme".into(),
        erp_customer_id: "C-42".into(),
    }
}

fn gl() -> GlAccounts {
    GlAccounts::new("4010", "1210", "1200")
}

fn group() -> BTreeMap<String, String> {
    BTreeMap::from([("model".to_string(), "m".to_string())])
}

fn validated() -> ValidatedEvent {
    ValidatedEvent {
        correction: None,
        source: "svc/gateway".into(),
        id: "evt-1".into(),
        event_type: "llm.call".into(),
        subject: "cust-42".into(),
        time: at("2026-01-10T12:00:00.5Z"),
        measures: vec![Measure {
            meter: "tokens".into(),
            value: Some(dec!(1500.0)),
            unique_value: None,
            group: group(),
        }],
        data: json!({"tokens": 1500, "model": "m"}),
        origin: Origin {
            topic: "usage.events".into(),
            partition: 3,
            offset: 42,
            encoding: Encoding::Structured,
        },
    }
}

fn enriched() -> EnrichedEvent {
    EnrichedEvent {
        event: validated(),
        customer: customer(),
        subscription_id: "sub-1".into(),
        plan_id: "pro".into(),
        plan_version: 2,
        currency: "USD".into(),
        legal_entity: "ml-us".into(),
        time_zone: "America/New_York".into(),
        billing_anchor_day: 1,
        subscription_end: None,
        billing_period: period(),
        local_day: day(),
        gl_accounts: gl(),
        tax_code: Some("TX0".into()),
        minimum_commitment: Some(dec!(100)),
        base_fee: None,
        charges: vec![ResolvedCharge {
            meter: "tokens".into(),
            aggregation: Aggregation::Sum,
            charge: ChargeModel::PerUnit {
                unit_price: dec!(0.003),
            },
            source: ChargeSource::Plan,
            tax_code: Some("TX1".into()),
            unit: Some("1K tokens".into()),
            prorate: false,
        }],
    }
}

fn rated() -> RatedEvent {
    let enriched = enriched();
    let key = rating_segment_key("sub-1", "tokens", "2026-01-01", 2, &group());
    RatedEvent {
        source: "svc/gateway".into(),
        id: "evt-1".into(),
        customer_id: "cust-42".into(),
        measures: vec![RatedMeasure {
            meter: "tokens".into(),
            segment_id: rating_segment_id(&key),
            segment_key: key,
            plan_version: 2,
            aggregation: Aggregation::Sum,
            quantity_before: dec!(900),
            quantity_after: dec!(2400.0),
            marginal_quantity: dec!(1500.0),
            marginal_amount: dec!(4.5000),
            parts: Default::default(),
        }],
        enriched,
        correction: None,
        rerate: None,
    }
}

fn closed_window() -> ClosedWindow {
    ClosedWindow {
        kind: WindowKind::Day,
        window: day(),
        adjusts: None,
        clearing: Clearing {
            period: period(),
            adjusts: None,
        },
        customer: customer(),
        subscription_id: "sub-1".into(),
        plan_id: "pro".into(),
        legal_entity: "ml-us".into(),
        currency: "USD".into(),
        time_zone: "America/New_York".into(),
        billing_anchor_day: 1,
        subscription_end: None,
        gl_accounts: gl(),
        segment: Some(SegmentInfo {
            segment_id: "3f1c".into(),
            segment_key: "[\"sub-1\",\"tokens\",\"2026-01-01\",2,{}]".into(),
            meter: "tokens".into(),
            plan_version: 2,
            group: BTreeMap::new(),
            aggregation: Aggregation::Sum,
            tax_code: Some("TX1".into()),
            unit: Some("1K tokens".into()),
        }),
        plan_version: 2,
        tax_code: Some("TX0".into()),
        base_fee: None,
        minimum_commitment: None,
        quantity: dec!(1500),
        amount: dec!(4.5000),
        event_count: 3,
        lineage_digest: "9d0e".into(),
        closed_at_watermark_ms: 1_768_194_000_000,
        parts: Default::default(),
    }
}

fn posting() -> Posting {
    Posting {
        posting_type: PostingType::JournalEntry,
        kind: "accrual".into(),
        idempotency_key: "5d41".into(),
        business_key: vec!["journal_entry".into(), "accrual".into()],
        key_version: 1,
        legal_entity: "ml-us".into(),
        customer_id: "cust-42".into(),
        erp_customer_id: "C-42".into(),
        subscription_id: "sub-1".into(),
        plan_id: "pro".into(),
        plan_version: 2,
        currency: "USD".into(),
        accounting_date: "2026-01-10".into(),
        billing_period: period(),
        window_kind: WindowKind::Day,
        window: day(),
        adjusts: None,
        segment_id: Some("3f1c".into()),
        segment_key: None,
        meter: Some("tokens".into()),
        lines: vec![
            JournalLine {
                account: "1210".into(),
                side: Side::Debit,
                amount: dec!(4.50),
            },
            JournalLine {
                account: "4010".into(),
                side: Side::Credit,
                amount: dec!(4.50),
            },
        ],
        invoice_line: None,
        control_total: None,
        invoice_id: None,
    }
}

/// `value` is written as exactly `golden`, and `golden` reads back as `value`.
fn assert_wire_form<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T, golden: &str) {
    let written = serde_json::to_string(value).unwrap();
    assert_eq!(written, golden, "the wire form changed");
    let read: T = serde_json::from_str(golden).unwrap();
    assert_eq!(&read, value);
}

/// A reader of this version still reads a record from a newer writer of the
/// same version, which may only have added fields.
fn assert_tolerates_added_field<T: Serialize + DeserializeOwned + PartialEq + Debug>(value: &T) {
    let mut doc = serde_json::to_value(value).unwrap();
    doc.as_object_mut()
        .unwrap()
        .insert("added_later".into(), json!({"any": ["shape"]}));
    let read: T = serde_json::from_value(doc).unwrap();
    assert_eq!(&read, value);
}

const VALIDATED_V1: &str = concat!(
    r#"{"source":"svc/gateway","id":"evt-1","type":"llm.call","subject":"cust-42","#,
    r#""time":"2026-01-10T12:00:00.500Z","#,
    r#""measures":[{"meter":"tokens","value":"1500.0","unique_value":null,"group":{"model":"m"}}],"#,
    r#""data":{"model":"m","tokens":1500},"#,
    r#""origin":{"topic":"usage.events","partition":3,"offset":42,"encoding":"structured"}}"#
);

const ENRICHED_TAIL_V1: &str = concat!(
    r#""customer":{"id":"cust-42","name":"Acme","legal_entity":"acme","erp_customer_id":"C-42"},"#,
    r#""subscription_id":"sub-1","plan_id":"pro","plan_version":2,"currency":"USD","#,
    r#""legal_entity":"ml-us","time_zone":"America/New_York","billing_anchor_day":1,"#,
    r#""subscription_end":null,"#,
    r#""billing_period":{"id":"2026-01-01","start":"2026-01-01T05:00:00Z","end":"2026-02-01T05:00:00Z"},"#,
    r#""local_day":{"id":"2026-01-10","start":"2026-01-10T05:00:00Z","end":"2026-01-11T05:00:00Z"},"#,
    r#""gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200"},"#,
    r#""tax_code":"TX0","minimum_commitment":"100","base_fee":null,"#,
    r#""charges":[{"meter":"tokens","aggregation":"SUM","#,
    r#""charge":{"model":"per_unit","unit_price":"0.003"},"source":"plan","#,
    r#""tax_code":"TX1","unit":"1K tokens"}]}"#
);

#[test]
fn validated_event_v1_wire_form() {
    assert_eq!(crate::contracts::CLOUDEVENTS_SPEC_VERSION, "1.0");
    assert_wire_form(&validated(), VALIDATED_V1);
    assert_tolerates_added_field(&validated());
}

#[test]
fn identity_key_wire_form_is_one_key_per_source_and_id() {
    use crate::contracts::identity_key;
    assert_eq!(identity_key("src", "e-1"), br#"["src","e-1"]"#.to_vec());
    // Escaped, so no two pairs share a key however their text runs.
    assert_eq!(identity_key("a\"", "b,c"), br#"["a\"","b,c"]"#.to_vec());
    assert_ne!(identity_key("a", "bc"), identity_key("ab", "c"));
    assert_ne!(identity_key("a\",\"b", "c"), identity_key("a", "b\",\"c"));
}

#[test]
fn gate_records_v1_wire_form() {
    assert_eq!(GATE_RECORD_VERSION, 1);
    let raw = || serde_json::value::RawValue::from_string(VALIDATED_V1.to_string()).unwrap();
    let claim = GateRecord {
        kind: GateKind::Claim,
        origin_partition: 3,
        seq: 41,
        first_copy: None,
        event: Some(raw()),
    };
    let golden =
        format!(r#"{{"kind":"claim","origin_partition":3,"seq":41,"event":{VALIDATED_V1}}}"#);
    assert_eq!(
        String::from_utf8(claim.to_json_bytes().unwrap()).unwrap(),
        golden
    );
    let back = GateRecord::from_json_slice(golden.as_bytes()).unwrap();
    assert_eq!(
        (back.kind, back.origin_partition, back.seq),
        (GateKind::Claim, 3, 41)
    );
    // The event's bytes come through unchanged, and read as the event.
    assert_eq!(back.event.as_ref().unwrap().get(), VALIDATED_V1);
    let event = ValidatedEvent::from_json_slice(back.event.unwrap().get().as_bytes()).unwrap();
    assert_eq!(event, validated());
    let first = GateRecord {
        kind: GateKind::Verdict,
        first_copy: Some(true),
        ..GateRecord::from_json_slice(golden.as_bytes()).unwrap()
    };
    assert_eq!(
        String::from_utf8(first.to_json_bytes().unwrap()).unwrap(),
        format!(
            r#"{{"kind":"verdict","origin_partition":3,"seq":41,"first_copy":true,"event":{VALIDATED_V1}}}"#
        )
    );
    let duplicate = GateRecord {
        kind: GateKind::Verdict,
        origin_partition: 3,
        seq: 42,
        first_copy: Some(false),
        event: None,
    };
    let golden = r#"{"kind":"verdict","origin_partition":3,"seq":42,"first_copy":false}"#;
    assert_eq!(
        String::from_utf8(duplicate.to_json_bytes().unwrap()).unwrap(),
        golden
    );
    // A field added later is ignored by this version's reader.
    let newer = golden.replace('}', r#","added_later":{"any":["shape"]}}"#);
    let back = GateRecord::from_json_slice(newer.as_bytes()).unwrap();
    assert_eq!(
        (back.seq, back.first_copy, back.event.is_none()),
        (42, Some(false), true)
    );
}

#[test]
fn enriched_event_v1_wire_form() {
    assert_eq!(ENRICHED_EVENT_VERSION, 1);
    let golden = format!(r#"{{"event":{VALIDATED_V1},{ENRICHED_TAIL_V1}"#);
    assert_wire_form(&enriched(), &golden);
    assert_tolerates_added_field(&enriched());
}

#[test]
fn rated_event_v1_wire_form_and_the_writer_view_agree() {
    assert_eq!(RATED_EVENT_VERSION, 1);
    let rated = rated();
    let m = &rated.measures[0];
    let enriched = format!(r#"{{"event":{VALIDATED_V1},{ENRICHED_TAIL_V1}"#);
    let golden = format!(
        concat!(
            r#"{{"source":"svc/gateway","id":"evt-1","customer_id":"cust-42","#,
            r#""measures":[{{"meter":"tokens","segment_key":{key},"segment_id":"{id}","#,
            r#""plan_version":2,"aggregation":"SUM","quantity_before":"900","#,
            r#""quantity_after":"2400.0","marginal_quantity":"1500.0","marginal_amount":"4.5000"}}],"#,
            r#""enriched":{enriched}}}"#
        ),
        key = serde_json::to_string(&m.segment_key).unwrap(),
        id = m.segment_id,
        enriched = enriched,
    );
    assert_wire_form(&rated, &golden);
    assert_tolerates_added_field(&rated);
    // The rate stage writes through RatedOut with the input bytes as they
    // came: the same document.
    let raw = serde_json::value::RawValue::from_string(enriched).unwrap();
    let out = RatedOut {
        source: &rated.source,
        id: &rated.id,
        customer_id: &rated.customer_id,
        measures: &rated.measures,
        enriched: &raw,
        correction: None,
        rerate: None,
    };
    assert_eq!(serde_json::to_string(&out).unwrap(), golden);
}

#[test]
fn the_rated_head_reads_the_v1_record_and_keeps_what_it_names() {
    let rated = rated();
    let e = &rated.enriched;
    let head = RatedHead::head_from_json_slice(&rated.to_json_bytes().unwrap()).unwrap();
    let h = &head.enriched;
    assert_eq!(head.measures, rated.measures);
    assert_eq!((&head.source, &head.id), (&rated.source, &rated.id));
    let event = &h.event;
    assert_eq!(
        (&event.source, &event.id, &event.subject, event.time),
        (&e.event.source, &e.event.id, &e.event.subject, e.event.time)
    );
    assert_eq!(event.measures, e.event.measures);
    assert_eq!(
        (
            &h.customer,
            &h.subscription_id,
            &h.gl_accounts,
            &h.local_day
        ),
        (
            &e.customer,
            &e.subscription_id,
            &e.gl_accounts,
            &e.local_day
        )
    );
    assert_eq!(h.minimum_commitment, Some(dec!(100)));
    let charges: Vec<ChargeHead> = e
        .charges
        .iter()
        .map(|c| ChargeHead {
            meter: c.meter.clone(),
            aggregation: c.aggregation,
            tax_code: c.tax_code.clone(),
            unit: c.unit.clone(),
        })
        .collect();
    assert_eq!(h.charges, charges);
    // What the head skips may be anything a full reader accepts.
    let mut v: serde_json::Value = serde_json::to_value(&rated).unwrap();
    v["enriched"]["event"]["data"] = json!([1, {"deep": [null]}]);
    v["enriched"]["charges"][0]["charge"] = json!({"model": "future_model"});
    let skipped = RatedHead::head_from_json_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
    assert_eq!(skipped, head);
}

#[test]
fn closed_window_v1_wire_form() {
    assert_eq!(CLOSED_WINDOW_VERSION, 1);
    let golden = concat!(
        r#"{"kind":"day","#,
        r#""window":{"id":"2026-01-10","start":"2026-01-10T05:00:00Z","end":"2026-01-11T05:00:00Z"},"#,
        r#""adjusts":null,"#,
        r#""clearing":{"period":{"id":"2026-01-01","start":"2026-01-01T05:00:00Z","end":"2026-02-01T05:00:00Z"},"adjusts":null},"#,
        r#""customer":{"id":"cust-42","name":"Acme","legal_entity":"acme","erp_customer_id":"C-42"},"#,
        r#""subscription_id":"sub-1","plan_id":"pro","legal_entity":"ml-us","currency":"USD","#,
        r#""time_zone":"America/New_York","billing_anchor_day":1,"subscription_end":null,"#,
        r#""gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200"},"#,
        r#""segment":{"segment_id":"3f1c","segment_key":"[\"sub-1\",\"tokens\",\"2026-01-01\",2,{}]","#,
        r#""meter":"tokens","plan_version":2,"group":{},"aggregation":"SUM","tax_code":"TX1","unit":"1K tokens"},"#,
        r#""plan_version":2,"tax_code":"TX0","base_fee":null,"minimum_commitment":null,"#,
        r#""quantity":"1500","amount":"4.5000","event_count":3,"#,
        r#""lineage_digest":"9d0e","closed_at_watermark_ms":1768194000000}"#
    );
    assert_wire_form(&closed_window(), golden);
    assert_tolerates_added_field(&closed_window());
}

#[test]
fn posting_v1_wire_form_and_balance() {
    assert_eq!(POSTING_VERSION, 1);
    let golden = concat!(
        r#"{"posting_type":"journal_entry","kind":"accrual","idempotency_key":"5d41","#,
        r#""business_key":["journal_entry","accrual"],"key_version":1,"legal_entity":"ml-us","#,
        r#""customer_id":"cust-42","erp_customer_id":"C-42","subscription_id":"sub-1","#,
        r#""plan_id":"pro","plan_version":2,"currency":"USD","accounting_date":"2026-01-10","#,
        r#""billing_period":{"id":"2026-01-01","start":"2026-01-01T05:00:00Z","end":"2026-02-01T05:00:00Z"},"#,
        r#""window_kind":"day","#,
        r#""window":{"id":"2026-01-10","start":"2026-01-10T05:00:00Z","end":"2026-01-11T05:00:00Z"},"#,
        r#""adjusts":null,"segment_id":"3f1c","segment_key":null,"meter":"tokens","#,
        r#""lines":[{"account":"1210","side":"debit","amount":"4.50"},"#,
        r#"{"account":"4010","side":"credit","amount":"4.50"}],"#,
        r#""invoice_line":null,"control_total":null}"#
    );
    let mut p = posting();
    assert_wire_form(&p, golden);
    assert_tolerates_added_field(&p);
    assert_eq!(p.totals(), (dec!(4.50), dec!(4.50)));
    assert!(p.is_balanced());
    p.lines[1].amount = dec!(4.49);
    assert!(!p.is_balanced());
}

#[test]
fn partition_clock_wire_form() {
    let clock = PartitionClock {
        max_event_ms: Some(1_768_194_000_000),
        watermark_ms: None,
    };
    assert_wire_form(
        &clock,
        r#"{"max_event_ms":1768194000000,"watermark_ms":null}"#,
    );
}

#[test]
fn command_v1_wire_form_refuses_unknown_fields() {
    assert_eq!(COMMAND_VERSION, 1);
    let mut c = Command::new(
        "cmd-7",
        CommandKind::Credit,
        "cust-42",
        "alice",
        at("2026-02-03T10:00:00Z"),
    );
    c.invoice_id = Some("sub-1@2026-01-01".into());
    c.reason = "SLA breach".into();
    c.percent = Some(dec!(10));
    let golden = concat!(
        r#"{"id":"cmd-7","kind":"credit","customer_id":"cust-42","invoice_id":"sub-1@2026-01-01","#,
        r#""actor":"alice","reason":"SLA breach","time":"2026-02-03T10:00:00Z","percent":"10"}"#
    );
    assert_wire_form(&c, golden);
    // A misspelt field is an error, never a silently absent amount.
    let typo = golden.replace(r#""percent""#, r#""pecrent""#);
    assert!(Command::from_json_slice(typo.as_bytes()).is_err());
    let number = golden.replace(r#""10""#, "10");
    assert!(
        Command::from_json_slice(number.as_bytes()).is_err(),
        "amounts are strings"
    );
    assert_eq!(
        crate::contracts::invoice_id("sub-1", "2026-01-01"),
        "sub-1@2026-01-01"
    );
}

#[test]
fn invoice_v1_wire_form_and_the_posting_invoice_id() {
    assert_eq!(INVOICE_VERSION, 1);
    let inv = Invoice {
        invoice_id: "sub-1@2026-01-01".into(),
        version: 2,
        customer: customer(),
        subscription_id: "sub-1".into(),
        plan_id: "pro".into(),
        plan_version: 2,
        legal_entity: "ml-us".into(),
        currency: "USD".into(),
        time_zone: "America/New_York".into(),
        service_interval: period(),
        status: InvoiceStatus::PendingApproval,
        holds: vec![Hold {
            rule: "total_above".into(),
            detail: "total 600.00 USD is above 500.00 USD".into(),
        }],
        lines: vec![InvoiceDocLine {
            kind: "usage".into(),
            description: "tokens (plan pro v2)".into(),
            quantity: dec!(1500),
            unit: None,
            amount: dec!(600.00),
            tax_code: None,
            posting_key: "5d41".into(),
            breakdown: Default::default(),
        }],
        totals: InvoiceTotals {
            subtotal: dec!(600.00),
            total: dec!(600.00),
            open: dec!(600.00),
            ..InvoiceTotals::default()
        },
        credit_memos: vec![],
        disputes: vec![],
        postings: vec![],
        history: vec![StatusChange {
            status: InvoiceStatus::PendingApproval,
            action: "policy".into(),
            actor: "meterline:policy".into(),
            command_id: "c1".into(),
            reason: String::new(),
            at: at("2026-02-01T05:00:00Z"),
        }],
    };
    let golden = concat!(
        r#"{"invoice_id":"sub-1@2026-01-01","version":2,"#,
        r#""customer":{"id":"cust-42","name":"Acme","legal_entity":"acme","erp_customer_id":"C-42"},"#,
        r#""subscription_id":"sub-1","plan_id":"pro","plan_version":2,"legal_entity":"ml-us","#,
        r#""currency":"USD","time_zone":"America/New_York","#,
        r#""service_interval":{"id":"2026-01-01","start":"2026-01-01T05:00:00Z","end":"2026-02-01T05:00:00Z"},"#,
        r#""status":"pending_approval","#,
        r#""holds":[{"rule":"total_above","detail":"total 600.00 USD is above 500.00 USD"}],"#,
        r#""lines":[{"kind":"usage","description":"tokens (plan pro v2)","quantity":"1500","unit":null,"#,
        r#""amount":"600.00","tax_code":null,"posting_key":"5d41"}],"#,
        r#""totals":{"subtotal":"600.00","tax":"0","service_credits":"0","total":"600.00","#,
        r#""credited":"0","disputed":"0","open":"600.00"},"#,
        r#""credit_memos":[],"disputes":[],"postings":[],"#,
        r#""history":[{"status":"pending_approval","action":"policy","actor":"meterline:policy","#,
        r#""command_id":"c1","reason":"","at":"2026-02-01T05:00:00Z"}]}"#
    );
    assert_wire_form(&inv, golden);
    assert_tolerates_added_field(&inv);
    // A list selects it by what holds it now.
    let held_by = |rule: &str| crate::contracts::InvoiceFilter {
        held_by: Some(rule.to_string()),
        ..Default::default()
    };
    assert!(held_by("total_above").matches(&inv));
    assert!(!held_by("tax_rate_missing").matches(&inv));
    // The postings of windows are written as before; the invoice stage's
    // carry the invoice.
    let mut p = posting();
    assert!(!String::from_utf8(p.to_json_bytes().unwrap())
        .unwrap()
        .contains("invoice_id"));
    p.invoice_id = Some("sub-1@2026-01-01".into());
    let text = String::from_utf8(p.to_json_bytes().unwrap()).unwrap();
    assert!(
        text.ends_with(r#""control_total":null,"invoice_id":"sub-1@2026-01-01"}"#),
        "{text}"
    );
}

#[test]
fn ledger_ack_v1_wire_form() {
    use crate::contracts::{AckSource, AckStatus, LedgerAck};
    let ack = LedgerAck {
        idempotency_key: "5d41".into(),
        status: AckStatus::Rejected,
        ledger_row_id: None,
        reason: Some("closed_period".into()),
        message: Some("closed".into()),
        source: AckSource {
            topic: "finance.postings".into(),
            partition: 2,
            offset: 118,
        },
    };
    let golden = concat!(
        r#"{"idempotency_key":"5d41","status":"rejected","ledger_row_id":null,"#,
        r#""reason":"closed_period","message":"closed","#,
        r#""source":{"topic":"finance.postings","partition":2,"offset":118}}"#
    );
    assert_wire_form(&ack, golden);
    assert_tolerates_added_field(&ack);
}
