//! Records and runs shared by the unit tests of the stages after aggregate
//! and of reconcile: rated events of a test subscription, and the aggregate,
//! post and invoice stages chained in memory through [`Harness`]. A stage's own
//! tests import these, never another stage's test module: the one place
//! where tests chain stages is here, outside every stage's folder.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::json;

use crate::calendar::{self, BillingPeriod, LocalDay};
use crate::config::Config;
use crate::contracts::{
    ChargeSource, ClosedWindow, CustomerInfo, Encoding, EnrichedEvent, Measure, Origin, Posting,
    RatedEvent, RatedMeasure, ResolvedCharge, ValidatedEvent, Window,
};
use crate::meter::Aggregation;
use crate::rating::ChargeModel;
use crate::refdata::GlAccounts;
use crate::runtime::testing::Harness;
use crate::runtime::Output;
use crate::stages::aggregate::AggregateProcessor;
use crate::stages::invoice::InvoiceProcessor;
use crate::stages::post::PostProcessor;
use crate::store::PartitionStores;

pub(crate) use crate::stages::aggregate::GRACE_PERIOD_S;

/// The test config (namespace `x.`).
pub(crate) fn config() -> Config {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Config::from_parts("[topology]\nnamespace = \"x.\"\n", "test", &[], dir).unwrap()
}

/// The test config of validate's and dedupe's tests (namespace `x.`, a
/// 40-day dedupe horizon).
pub(crate) fn gate_config() -> Config {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = "[topology]\nnamespace = \"x.\"\n[validate]\ndedupe_horizon_days = 40\n";
    Config::from_parts(text, "test", &[], dir).unwrap()
}

/// A subscription's calendar for building events.
#[derive(Clone, Copy)]
pub(crate) struct Sub {
    pub tz: &'static str,
    pub anchor: u8,
    pub plan_version: u32,
}

pub(crate) const UTC1: Sub = Sub {
    tz: "UTC",
    anchor: 1,
    plan_version: 1,
};

/// A rated event of subscription `sub` at `time` with one measure per
/// (meter, marginal amount); marginal quantity 1 each.
pub(crate) fn rated(
    id: &str,
    time: DateTime<Utc>,
    sub: Sub,
    measures: &[(&str, Decimal)],
) -> RatedEvent {
    let tz = calendar::parse_tz(sub.tz).unwrap();
    let day = LocalDay::containing(tz, time).unwrap();
    let period = BillingPeriod::containing(sub.anchor, tz, time).unwrap();
    let charges = measures
        .iter()
        .map(|(m, _)| ResolvedCharge {
            meter: m.to_string(),
            aggregation: Aggregation::Sum,
            charge: ChargeModel::PerUnit {
                unit_price: dec!(1),
            },
            source: ChargeSource::Plan,
            tax_code: Some("TX-USAGE".into()),
            unit: Some("unit".into()),
            prorate: false,
        })
        .collect();
    let enriched = EnrichedEvent {
        event: ValidatedEvent {
            correction: None,
            source: "svc".into(),
            id: id.into(),
            event_type: "t".into(),
            subject: "cust-1".into(),
            time,
            measures: measures
                .iter()
                .map(|(m, _)| Measure {
                    meter: m.to_string(),
                    value: Some(dec!(1)),
                    unique_value: None,
                    group: BTreeMap::new(),
                })
                .collect(),
            data: json!({}),
            origin: Origin {
                topic: "x.usage.events".into(),
                partition: 0,
                offset: 0,
                encoding: Encoding::Structured,
            },
        },
        customer: CustomerInfo {
            id: "cust-1".into(),
            name: "Acme".into(),
            legal_entity: "acme".into(),
            erp_customer_id: "C-1".into(),
        },
        subscription_id: "sub-1".into(),
        plan_id: "pro".into(),
        plan_version: sub.plan_version,
        currency: "USD".into(),
        legal_entity: "ml-us".into(),
        time_zone: sub.tz.into(),
        billing_anchor_day: sub.anchor,
        subscription_end: None,
        billing_period: Window {
            id: period.id(),
            start: period.start(),
            end: period.end(),
        },
        local_day: Window {
            id: day.id(),
            start: day.start(),
            end: day.end(),
        },
        gl_accounts: GlAccounts::new("4010", "1210", "1200"),
        tax_code: Some("TX-PLAN".into()),
        minimum_commitment: Some(dec!(100)),
        base_fee: Some(dec!(10)),
        charges,
    };
    let rated_measures = enriched
        .event
        .measures
        .iter()
        .zip(measures)
        .map(|(m, (_, amount))| RatedMeasure {
            meter: m.meter.clone(),
            segment_key: enriched.rating_segment_key(m),
            segment_id: enriched.rating_segment_id(m),
            plan_version: sub.plan_version,
            aggregation: Aggregation::Sum,
            quantity_before: dec!(0),
            quantity_after: dec!(1),
            marginal_quantity: dec!(1),
            marginal_amount: *amount,
            parts: Default::default(),
        })
        .collect();
    RatedEvent {
        source: "svc".into(),
        id: id.into(),
        customer_id: "cust-1".into(),
        measures: rated_measures,
        enriched,
        correction: None,
        rerate: None,
    }
}

/// January of the test subscription: one "tokens" event per amount of
/// `daily`, a day apart from Jan 10 noon, then one that closes January.
pub(crate) fn january_events(daily: &[Decimal]) -> Vec<RatedEvent> {
    let start = DateTime::parse_from_rfc3339("2026-01-10T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let close = DateTime::parse_from_rfc3339("2026-02-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    let mut events: Vec<RatedEvent> = daily
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let time = start + chrono::Duration::days(i as i64);
            rated(&format!("e{i}"), time, UTC1, &[("tokens", *a)])
        })
        .collect();
    let closer = close + chrono::Duration::seconds(GRACE_PERIOD_S);
    events.push(rated("closer", closer, UTC1, &[("tokens", dec!(1))]));
    events
}

/// The aggregate stage over `events` in order (one transaction each, the
/// wall clock at 0): every window it emitted, in order.
pub(crate) fn aggregate_all(events: &[RatedEvent]) -> Vec<ClosedWindow> {
    let mut h = Harness::new(config(), AggregateProcessor::new(&config()), 0);
    let mut all = Vec::new();
    for e in events {
        let value = e.to_json_bytes().unwrap();
        for o in h.process(Some(b"cust-1"), Some(&value)).unwrap() {
            assert_eq!(o.topic, "x.usage.windows");
            assert_eq!(o.key.as_deref(), Some(&b"cust-1"[..]));
            all.push(ClosedWindow::from_json_slice(o.value.as_deref().unwrap()).unwrap());
        }
        h.commit().unwrap();
    }
    all
}

/// The post stage over `windows` in order (one transaction each): the
/// postings, and the stores they leave.
pub(crate) fn post_windows(
    cfg: &Config,
    windows: &[ClosedWindow],
) -> (Vec<Posting>, PartitionStores) {
    let (postings, post, _) = post_and_invoice(cfg, windows);
    (postings, post)
}

/// The post stage and the invoice stage chained in memory: post's drafts go
/// to the invoice stage (the config's `[invoice]` policy), and the postings
/// of both are returned in the order they reach `finance.postings`, with
/// each stage's stores and the invoice versions published.
pub(crate) fn post_and_invoice(
    cfg: &Config,
    windows: &[ClosedWindow],
) -> (Vec<Posting>, PartitionStores, Harness<InvoiceProcessor>) {
    let mut h = Harness::new(cfg.clone(), PostProcessor::new(cfg), 0);
    let mut inv = Harness::new(cfg.clone(), InvoiceProcessor::new(cfg), 0);
    let mut postings = Vec::new();
    for w in windows {
        let value = w.to_json_bytes().unwrap();
        for o in h.process(Some(b"cust-1"), Some(&value)).unwrap() {
            if o.topic == "x.billing.commands" {
                postings.extend(invoice_outputs(&mut inv, &o));
                continue;
            }
            assert_eq!(o.topic, "x.finance.postings");
            assert_eq!(o.key.as_deref(), Some(&br#"["ml-us","sub-1"]"#[..]));
            postings.push(Posting::from_json_slice(o.value.as_deref().unwrap()).unwrap());
        }
        h.commit().unwrap();
    }
    (postings, h.stores, inv)
}

/// The drafts post sends the invoice stage for `windows`: its
/// `billing.commands` outputs, in order.
pub(crate) fn drafts_of(cfg: &Config, windows: &[ClosedWindow]) -> Vec<Output> {
    let mut h = Harness::new(cfg.clone(), PostProcessor::new(cfg), 0);
    let mut drafts = Vec::new();
    for w in windows {
        let value = w.to_json_bytes().unwrap();
        let out = h.process(Some(b"cust-1"), Some(&value)).unwrap();
        drafts.extend(out.into_iter().filter(|o| o.topic == "x.billing.commands"));
        h.commit().unwrap();
    }
    drafts
}

/// Runs one command output through the invoice stage; its postings.
fn invoice_outputs(inv: &mut Harness<InvoiceProcessor>, command: &Output) -> Vec<Posting> {
    let out = inv
        .process(command.key.as_deref(), command.value.as_deref())
        .unwrap();
    inv.commit().unwrap();
    out.iter()
        .filter(|o| o.topic == "x.finance.postings")
        .map(|o| {
            assert_eq!(o.key.as_deref(), Some(&br#"["ml-us","sub-1"]"#[..]));
            Posting::from_json_slice(o.value.as_deref().unwrap()).unwrap()
        })
        .collect()
}
