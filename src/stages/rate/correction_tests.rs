//! Retractions and amendments through the rate stage (see `retract.rs`).

use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::json;

use super::reason::{
    ALREADY_CORRECTED, RETRACTION_TARGET_EXPIRED, RETRACTION_TARGET_UNKNOWN, RETRACTION_UNSUPPORTED,
};
use super::tests::{
    config, enriched, graduated, harness, measure, rate, reject_code, run_bytes, t0,
};
use super::*;
use crate::contracts::{Encoding, Origin, RatedEvent};
use crate::rating::ChargeModel;
use crate::runtime::testing::Harness;

/// A retraction `id` of event ("svc", `target`) as enrich passes it on.
fn retraction(id: &str, target: &str, time: Option<DateTime<Utc>>) -> Vec<u8> {
    let correction = Correction {
        kind: CorrectionKind::Retract,
        source: "svc".into(),
        id: target.into(),
        time,
    };
    RetractionRecord {
        retraction: ValidatedEvent {
            source: "ops".into(),
            id: id.into(),
            event_type: "meterline.usage.retract".into(),
            subject: "cust-1".into(),
            time: t0() + Duration::hours(1),
            measures: Vec::new(),
            data: json!({"source": "svc", "id": target}),
            origin: Origin {
                topic: "x.usage.events".into(),
                partition: 0,
                offset: 7,
                encoding: Encoding::Structured,
            },
            correction: Some(correction),
        },
    }
    .to_json_bytes()
    .unwrap()
}

fn retract(h: &mut Harness<RateProcessor>, id: &str, target: &str) -> Result<RatedEvent, String> {
    match run_bytes(h, &retraction(id, target, None)) {
        Ok(out) => {
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].topic, "x.usage.rated");
            assert_eq!(out[0].key.as_deref(), Some(&b"cust-1"[..]));
            Ok(RatedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap())
        }
        Err(StageError::Reject { code, .. }) => Err(code.to_string()),
        Err(e) => panic!("{e:?}"),
    }
}

fn sum_event(id: &str, value: Decimal, model: &ChargeModel) -> EnrichedEvent {
    enriched(
        id,
        t0(),
        vec![(
            measure("tokens", Some(value), None),
            Aggregation::Sum,
            model.clone(),
        )],
    )
}

#[test]
fn a_retraction_takes_the_event_out_at_the_price_of_what_remains() {
    let mut h = harness();
    let model = graduated();
    let values = [
        dec!(60),
        dec!(40),
        dec!(0.5),
        dec!(899.5),
        dec!(1),
        dec!(250.25),
    ];
    let mut amount = Decimal::ZERO;
    for (i, v) in values.iter().enumerate() {
        amount +=
            rate(&mut h, &sum_event(&format!("e{i}"), *v, &model)).measures[0].marginal_amount;
        h.commit().unwrap();
    }
    let total: Decimal = values.iter().sum();
    assert_eq!(amount, model.price(total).unwrap());
    // Kept across a restart: the processor holds nothing in memory.
    h.processor = RateProcessor::new(&config());
    let r = retract(&mut h, "r1", "e3").unwrap();
    h.commit().unwrap();
    let c = r.correction.as_ref().unwrap();
    assert_eq!((c.kind, c.id.as_str()), (CorrectionKind::Retract, "e3"));
    // Under the retraction's identity and time, in the original's context.
    assert_eq!((r.source.as_str(), r.id.as_str()), ("ops", "r1"));
    assert_eq!(r.enriched.event.time, t0() + Duration::hours(1));
    assert_eq!(r.enriched.billing_period.id, "2026-01-01");
    assert_eq!(r.enriched.event.measures[0].value, Some(dec!(899.5)));
    let m = &r.measures[0];
    assert_eq!(
        (m.quantity_before, m.quantity_after, m.marginal_quantity),
        (total, total - dec!(899.5), dec!(-899.5))
    );
    amount += m.marginal_amount;
    // The books: the model applied to what remains, to the last digit.
    assert_eq!(amount, model.price(total - dec!(899.5)).unwrap());
    // Twice, or an event never rated: refused, nothing changed.
    assert_eq!(retract(&mut h, "r2", "e3").unwrap_err(), ALREADY_CORRECTED);
    assert_eq!(
        retract(&mut h, "r3", "nope").unwrap_err(),
        RETRACTION_TARGET_UNKNOWN
    );
    let next = rate(&mut h, &sum_event("e9", dec!(10), &model));
    assert_eq!(next.measures[0].quantity_before, total - dec!(899.5));
}

#[test]
fn unique_count_members_leave_with_their_last_event() {
    let mut h = harness();
    let per_user = ChargeModel::PerUnit {
        unit_price: dec!(3),
    };
    let user = |id: &str, u: &str| {
        enriched(
            id,
            t0(),
            vec![(
                measure("users", None, Some(u)),
                Aggregation::UniqueCount,
                per_user.clone(),
            )],
        )
    };
    for (id, u) in [("e0", "u1"), ("e1", "u2"), ("e2", "u1")] {
        rate(&mut h, &user(id, u));
        h.commit().unwrap();
    }
    // u1 still has e2: the count stays 2, nothing is charged back.
    let m = retract(&mut h, "r0", "e0").unwrap().measures.remove(0);
    assert_eq!((m.quantity_after, m.marginal_amount), (dec!(2), dec!(0)));
    h.commit().unwrap();
    // Its last event goes: u1 leaves.
    let m = retract(&mut h, "r2", "e2").unwrap().measures.remove(0);
    assert_eq!((m.quantity_after, m.marginal_amount), (dec!(1), dec!(-3)));
    h.commit().unwrap();
    // And comes back as a new member.
    let m = rate(&mut h, &user("e3", "u1")).measures.remove(0);
    assert_eq!((m.quantity_after, m.marginal_amount), (dec!(2), dec!(3)));
}

#[test]
fn every_measure_of_an_event_is_taken_back_count_and_volume_tiers_too() {
    let mut h = harness();
    let volume = ChargeModel::Volume {
        tiers: vec![
            crate::rating::Tier::bounded(dec!(2), dec!(1.00)),
            crate::rating::Tier::open(dec!(0.50)),
        ],
    };
    let per_unit = ChargeModel::PerUnit {
        unit_price: dec!(0.01),
    };
    let event = |id: &str, tokens: Decimal| {
        enriched(
            id,
            t0(),
            vec![
                (
                    measure("calls", None, None),
                    Aggregation::Count,
                    volume.clone(),
                ),
                (
                    measure("tokens", Some(tokens), None),
                    Aggregation::Sum,
                    per_unit.clone(),
                ),
            ],
        )
    };
    let mut amount = Decimal::ZERO;
    for (i, t) in [dec!(100), dec!(7), dec!(30)].iter().enumerate() {
        let r = rate(&mut h, &event(&format!("e{i}"), *t));
        amount += r
            .measures
            .iter()
            .map(|m| m.marginal_amount)
            .sum::<Decimal>();
    }
    // 3 calls at 0.50 (volume: all units at the reached tier) + 137 tokens.
    assert_eq!(amount, dec!(1.50) + dec!(1.37));
    let r = retract(&mut h, "r", "e1").unwrap();
    assert_eq!(r.measures.len(), 2);
    amount += r
        .measures
        .iter()
        .map(|m| m.marginal_amount)
        .sum::<Decimal>();
    // 2 calls back in the first tier at 1.00 each, 130 tokens.
    assert_eq!(amount, dec!(2.00) + dec!(1.30));
}

/// One `payments` measure of `value` under the issue's take rate (two free
/// transactions, 1.3% + 0.30, at least 0.50, at most 5.00).
fn payment(id: &str, value: Decimal) -> EnrichedEvent {
    let take_rate = ChargeModel::Percentage(crate::rating::PercentageModel::example());
    enriched(
        id,
        t0(),
        vec![(
            measure("payments", Some(value), None),
            Aggregation::Sum,
            take_rate,
        )],
    )
}

#[test]
fn a_percentage_retraction_gives_back_the_fee_and_keeps_the_allowance_in_event_order() {
    let mut h = harness();
    let mut fees = Vec::new();
    // Same time: event order is by id.
    for (id, v) in [("p1", dec!(10)), ("p2", dec!(20)), ("p3", dec!(1000))] {
        fees.push(rate(&mut h, &payment(id, v)).measures[0].marginal_amount);
        h.commit().unwrap();
    }
    assert_eq!(fees, [dec!(0), dec!(0), dec!(5.00)]);
    h.processor = RateProcessor::new(&config());
    let r = retract(&mut h, "r1", "p3").unwrap();
    h.commit().unwrap();
    let m = &r.measures[0];
    assert_eq!(
        (m.marginal_quantity, m.marginal_amount),
        (dec!(-1000), dec!(-5.00))
    );
    assert_eq!(m.parts.get("paid_events"), Some(&dec!(-1)));
    // A free transaction of an allowance since used up: its slot would go
    // to p3's successor, already charged in full. Refused, twice alike.
    for _ in 0..2 {
        let refused = retract(&mut h, "r2", "p1");
        assert_eq!(refused.unwrap_err(), RETRACTION_UNSUPPORTED);
    }
    // The segment: p1 and p2 free, then p4 past the allowance, as if p3
    // had never been.
    let p4 = rate(&mut h, &payment("p4", dec!(100)));
    assert_eq!(p4.measures[0].quantity_before, dec!(30));
    assert_eq!(p4.measures[0].marginal_amount, dec!(1.60));
}

#[test]
fn a_free_transaction_of_an_allowance_used_up_is_refused_and_nothing_changes() {
    let mut h = harness();
    let per_unit = ChargeModel::PerUnit {
        unit_price: dec!(1),
    };
    let take_rate = ChargeModel::Percentage(crate::rating::PercentageModel::example());
    // A SUM measure that could go, with one that cannot: neither goes.
    let e = enriched(
        "e0",
        t0(),
        vec![
            (
                measure("tokens", Some(dec!(5)), None),
                Aggregation::Sum,
                per_unit.clone(),
            ),
            (
                measure("payments", Some(dec!(9)), None),
                Aggregation::Sum,
                take_rate,
            ),
        ],
    );
    rate(&mut h, &e);
    h.commit().unwrap();
    // e0 took the first free transaction; these use the allowance up.
    for id in ["f1", "f2"] {
        rate(&mut h, &payment(id, dec!(1)));
        h.commit().unwrap();
    }
    for _ in 0..2 {
        assert_eq!(
            retract(&mut h, "r", "e0").unwrap_err(),
            RETRACTION_UNSUPPORTED
        );
    }
    let next = rate(&mut h, &sum_event("e9", dec!(1), &per_unit));
    assert_eq!(next.measures[0].quantity_before, dec!(5), "e0 still counts");
}

/// `seats` (MAX, 31.00 a seat, prorated over January's 31 days) at
/// `t0` (January 10) plus `days`.
fn seats(id: &str, n: Decimal, days: i64) -> EnrichedEvent {
    let per_seat = ChargeModel::PerUnit {
        unit_price: dec!(31.00),
    };
    let mut e = enriched(
        id,
        t0() + Duration::days(days),
        vec![(measure("seats", Some(n), None), Aggregation::Max, per_seat)],
    );
    e.charges[0].prorate = true;
    e
}

#[test]
fn a_prorated_retraction_takes_the_seats_out_of_the_timeline() {
    let mut h = harness();
    // 4 seats for the last 22 days: 88.00; 6 for the last 12: +24.00.
    let first = rate(&mut h, &seats("s1", dec!(4), 0));
    h.commit().unwrap();
    let second = rate(&mut h, &seats("s2", dec!(6), 10));
    h.commit().unwrap();
    let amounts = [&first, &second].map(|r| r.measures[0].marginal_amount.normalize());
    assert_eq!(amounts, [dec!(88), dec!(24)]);
    h.processor = RateProcessor::new(&config());
    let r = retract(&mut h, "r1", "s2").unwrap();
    h.commit().unwrap();
    let m = &r.measures[0];
    assert_eq!((m.quantity_before, m.quantity_after), (dec!(6), dec!(4)));
    assert_eq!(m.marginal_amount.normalize(), dec!(-24));
    // 5 seats for the last 7 days over the 4 that remain: +7.00 (with s2
    // still there it would add nothing).
    let third = rate(&mut h, &seats("s3", dec!(5), 15));
    assert_eq!(third.measures[0].marginal_amount.normalize(), dec!(7));
}

/// One MAX or LATEST measure worth `value` at `t0 + minutes`.
fn gauge(id: &str, aggregation: Aggregation, value: Decimal, minutes: i64) -> EnrichedEvent {
    let per_unit = ChargeModel::PerUnit {
        unit_price: dec!(2),
    };
    enriched(
        id,
        t0() + Duration::minutes(minutes),
        vec![(
            measure(&format!("{aggregation:?}"), Some(value), None),
            aggregation,
            per_unit,
        )],
    )
}

#[test]
fn max_and_latest_fall_back_on_the_observations_kept() {
    let mut h = harness();
    // MAX: 5, 9, 7, 9; the quantity is 9 until both nines go.
    for (i, v) in [dec!(5), dec!(9), dec!(7), dec!(9)].iter().enumerate() {
        rate(&mut h, &gauge(&format!("m{i}"), Aggregation::Max, *v, 0));
        h.commit().unwrap();
    }
    let m = retract(&mut h, "r1", "m1").unwrap().measures.remove(0);
    assert_eq!((m.quantity_after, m.marginal_amount), (dec!(9), dec!(0)));
    let m = retract(&mut h, "r3", "m3").unwrap().measures.remove(0);
    assert_eq!((m.quantity_after, m.marginal_amount), (dec!(7), dec!(-4)));
    h.commit().unwrap();
    // LATEST: 3 at 0:10, 8 at 0:20, 6 at 0:30 (arriving out of order).
    for (id, v, at) in [
        ("l0", dec!(3), 10),
        ("l2", dec!(6), 30),
        ("l1", dec!(8), 20),
    ] {
        rate(&mut h, &gauge(id, Aggregation::Latest, v, at));
        h.commit().unwrap();
    }
    let latest = |h: &mut Harness<RateProcessor>, id: &str| {
        retract(h, &format!("r-{id}"), id)
            .unwrap()
            .measures
            .remove(0)
    };
    let m = latest(&mut h, "l2");
    assert_eq!((m.quantity_after, m.marginal_amount), (dec!(8), dec!(4)));
    let m = latest(&mut h, "l0");
    assert_eq!((m.quantity_after, m.marginal_amount), (dec!(8), dec!(0)));
    let m = latest(&mut h, "l1");
    assert_eq!((m.quantity_after, m.marginal_amount), (dec!(0), dec!(-16)));
    // A new observation after all are gone is the latest again.
    let r = rate(&mut h, &gauge("l3", Aggregation::Latest, dec!(1), 5));
    assert_eq!(r.measures[0].quantity_after, dec!(1));
}

#[test]
fn a_segment_beyond_its_history_bound_refuses_retractions() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cfg = Config::from_parts(
        "[topology]\nnamespace = \"x.\"\n[rate]\ncorrection_history_max = 2\n",
        "test",
        &[],
        dir,
    )
    .unwrap();
    let mut h = Harness::new(
        cfg.clone(),
        RateProcessor::new(&cfg),
        t0().timestamp_millis(),
    );
    for (i, v) in [dec!(5), dec!(9), dec!(7)].iter().enumerate() {
        rate(&mut h, &gauge(&format!("m{i}"), Aggregation::Max, *v, 0));
        h.commit().unwrap();
    }
    assert_eq!(
        retract(&mut h, "r", "m1").unwrap_err(),
        RETRACTION_UNSUPPORTED
    );
    let r = rate(&mut h, &gauge("m9", Aggregation::Max, dec!(1), 0));
    assert_eq!(r.measures[0].quantity_before, dec!(9), "nothing changed");
}

#[test]
fn an_amendment_replaces_the_event_or_changes_nothing() {
    let mut h = harness();
    let model = graduated();
    for (id, v) in [("e0", dec!(100)), ("e1", dec!(500))] {
        rate(&mut h, &sum_event(id, v, &model));
        h.commit().unwrap();
    }
    let amend = |id: &str, target: &str, v: Decimal| {
        let mut e = sum_event(id, v, &model);
        e.event.correction = Some(Correction {
            kind: CorrectionKind::Amend,
            source: "svc".into(),
            id: target.into(),
            time: None,
        });
        e
    };
    // e1's 500 becomes 20: its retraction first, then the replacement.
    let out = run_bytes(
        &mut h,
        &amend("e1b", "e1", dec!(20)).to_json_bytes().unwrap(),
    )
    .unwrap();
    h.commit().unwrap();
    assert_eq!(out.len(), 2);
    let back = RatedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap();
    let new = RatedEvent::from_json_slice(out[1].value.as_deref().unwrap()).unwrap();
    assert_eq!(
        back.correction.as_ref().unwrap().kind,
        CorrectionKind::Amend
    );
    assert_eq!(back.measures[0].marginal_quantity, dec!(-500));
    assert_eq!(new.correction, None);
    assert_eq!(
        (
            new.measures[0].quantity_before,
            new.measures[0].quantity_after
        ),
        (dec!(100), dec!(120))
    );
    let amount = model.price(dec!(600)).unwrap()
        + back.measures[0].marginal_amount
        + new.measures[0].marginal_amount;
    assert_eq!(amount, model.price(dec!(120)).unwrap());
    // An amendment of an unknown event: neither half is applied.
    let r = run_bytes(&mut h, &amend("e9", "zz", dec!(1)).to_json_bytes().unwrap());
    assert_eq!(reject_code(r), RETRACTION_TARGET_UNKNOWN);
    h.commit().unwrap();
    let next = rate(&mut h, &sum_event("e10", dec!(1), &model));
    assert_eq!(next.measures[0].quantity_before, dec!(120), "e9 not rated");
    // The replacement is an event like any other: it can be retracted.
    let m = retract(&mut h, "r", "e1b").unwrap().measures.remove(0);
    assert_eq!(m.quantity_after, dec!(101));
    assert_eq!(retract(&mut h, "r2", "e1").unwrap_err(), ALREADY_CORRECTED);
}

#[test]
fn an_event_whose_period_was_released_is_expired_when_its_time_is_given() {
    let mut h = harness();
    let model = graduated();
    rate(&mut h, &sum_event("e0", dec!(5), &model));
    h.commit().unwrap();
    // Retention: 60 days after January's end.
    let feb1 = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
    h.now_ms = (feb1 + Duration::days(61)).timestamp_millis();
    h.punctuate().unwrap();
    h.commit().unwrap();
    assert_eq!(
        h.stores.approximate_keys(SEGMENTS),
        0,
        "kept events released too"
    );
    // An event time is expired once even the longest period starting at it
    // (32 days) ended before the retention cutoff; before that, unknown.
    let r = run_bytes(&mut h, &retraction("r", "e0", Some(t0())));
    assert_eq!(reject_code(r), RETRACTION_TARGET_UNKNOWN);
    h.now_ms = (feb1 + Duration::days(61 + 32)).timestamp_millis();
    let with_time = run_bytes(&mut h, &retraction("r", "e0", Some(t0())));
    assert_eq!(reject_code(with_time), RETRACTION_TARGET_EXPIRED);
    let without = run_bytes(&mut h, &retraction("r", "e0", None));
    assert_eq!(reject_code(without), RETRACTION_TARGET_UNKNOWN);
}

fn rerate_command(id: &str, model: &ChargeModel) -> crate::contracts::Rerate {
    crate::contracts::Rerate {
        id: id.into(),
        subscription_id: "sub-1".into(),
        customer_id: "cust-1".into(),
        meter: None,
        period: None,
        charges: vec![crate::contracts::RerateCharge {
            plan_version: 2,
            charge: crate::contracts::ResolvedCharge {
                meter: "tokens".into(),
                aggregation: Aggregation::Sum,
                charge: model.clone(),
                source: crate::contracts::ChargeSource::Plan,
                tax_code: None,
                unit: None,
                prorate: false,
            },
        }],
        actor: "ana".into(),
        time: t0() + Duration::days(1),
    }
}

fn send_rerate(h: &mut Harness<RateProcessor>, cmd: &crate::contracts::Rerate) -> Vec<RatedEvent> {
    let bytes = crate::contracts::RerateRecord {
        rerate: cmd.clone(),
    }
    .to_json_bytes()
    .unwrap();
    let out = run_bytes(h, &bytes).unwrap();
    h.commit().unwrap();
    out.iter()
        .map(|o| RatedEvent::from_json_slice(o.value.as_deref().unwrap()).unwrap())
        .collect()
}

#[test]
fn a_rerate_bills_each_segment_its_corrected_price_once() {
    let mut h = harness();
    let old = graduated();
    let mut amount = Decimal::ZERO;
    for (i, v) in [dec!(600), dec!(700)].iter().enumerate() {
        amount += rate(&mut h, &sum_event(&format!("e{i}"), *v, &old)).measures[0].marginal_amount;
        h.commit().unwrap();
    }
    // The plan is corrected: the second tier costs 0.45, not 0.50.
    let new = ChargeModel::Graduated {
        tiers: vec![
            crate::rating::Tier::bounded(dec!(100), dec!(0)),
            crate::rating::Tier::bounded(dec!(1000), dec!(0.45)).with_flat_fee(dec!(5.00)),
            crate::rating::Tier::open(dec!(0.40)),
        ],
    };
    // The preview from the store's contents (as the CLI reads the changelog).
    let cmd = rerate_command("rr-1", &new);
    let records = h
        .stores
        .scan(SEGMENTS, &[0u8], &[0xFFu8], 1_000)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, Some(v)));
    let preview = rerate::assess_changelog(records, &cmd);
    let difference = new.price(dec!(1300)).unwrap() - old.price(dec!(1300)).unwrap();
    assert_eq!(difference, dec!(-45));
    assert_eq!(preview.len(), 1);
    assert_eq!(
        preview[0].outcome,
        rerate::Outcome::Adjusted {
            price: new.price(dec!(1300)).unwrap(),
            difference
        }
    );
    let out = send_rerate(&mut h, &cmd);
    assert_eq!(out.len(), 1);
    let r = &out[0];
    assert_eq!(r.rerate.as_deref(), Some("rr-1"));
    assert_eq!(r.enriched.billing_period.id, "2026-01-01");
    assert_eq!(r.enriched.event.time, t0() + Duration::days(1));
    let m = &r.measures[0];
    assert_eq!(
        (m.marginal_quantity, m.marginal_amount),
        (dec!(0), difference)
    );
    amount += m.marginal_amount;
    assert_eq!(amount, new.price(dec!(1300)).unwrap());
    // Nothing changed since: a second command emits nothing.
    assert!(send_rerate(&mut h, &rerate_command("rr-2", &new)).is_empty());
    // Later events are priced under the corrected plan and still telescope.
    amount += rate(&mut h, &sum_event("e9", dec!(10), &new)).measures[0].marginal_amount;
    assert_eq!(amount, new.price(dec!(1310)).unwrap());
    // Another period or meter is out of scope: nothing.
    let mut other = rerate_command("rr-3", &old);
    other.period = Some("2026-02-01".into());
    assert!(send_rerate(&mut h, &other).is_empty());
}

#[test]
fn an_event_kept_whole_by_an_earlier_version_retracts_as_one_kept_with_its_context() {
    let model = graduated();
    let events = [
        sum_event("e0", dec!(60), &model),
        sum_event("e1", dec!(940.5), &model),
    ];
    let rated = |h: &mut Harness<RateProcessor>| {
        for e in &events {
            rate(h, e);
        }
        h.commit().unwrap();
    };
    let key = retract::event_key("svc", "e1");
    let mut shared = harness();
    rated(&mut shared);
    let kept = shared.stores.get(SEGMENTS, &key).unwrap().unwrap();
    let record = events[1].to_json_bytes().unwrap();
    assert_eq!(kept.first(), Some(&kept::KEPT_V2));
    assert!(
        kept.len() < record.len() / 2,
        "{} of {}",
        kept.len(),
        record.len()
    );
    let mut whole = harness();
    rated(&mut whole);
    // As every version before 2026-12-07 kept it: the record as received.
    whole.stores.put(SEGMENTS, key, record);
    whole.commit().unwrap();
    let from_shared = retract(&mut shared, "r1", "e1").unwrap();
    let from_whole = retract(&mut whole, "r1", "e1").unwrap();
    assert_eq!(from_whole, from_shared);
    let m = &from_shared.measures[0];
    assert_eq!(m.quantity_after, dec!(60));
    assert_eq!(
        m.marginal_amount,
        model.price(dec!(60)).unwrap() - model.price(dec!(1000.5)).unwrap()
    );
}
