//! The per-event and prorated models: hand-computed cases and properties.
//! Each property computes the expected total independently of the module
//! (its own walk of the events in event order) and compares with Decimal
//! `==`, for any arrival order of the same events.

use chrono::{DateTime, Duration, TimeZone, Utc};
use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};
use rust_decimal_macros::dec;

use super::*;
use crate::meter::Aggregation;

fn key(second: i64, id: &str) -> EventKey {
    EventKey::at(t(second), id)
}

fn t(second: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).unwrap() + Duration::seconds(second)
}

fn take_rate() -> PercentageModel {
    PercentageModel::example()
}

/// Rates `(second, id, value)` in the given order; returns the charges.
fn rate_all(model: &PercentageModel, events: &[(i64, &str, Decimal)]) -> Vec<Charge> {
    let mut window = AllowanceWindow::default();
    events
        .iter()
        .map(|(s, id, v)| window.rate(model, key(*s, id), *v).unwrap())
        .collect()
}

fn sum(charges: &[Charge]) -> (Decimal, Parts) {
    let mut parts = Parts::new();
    let mut amount = Decimal::ZERO;
    for c in charges {
        amount += c.amount;
        add_parts(&mut parts, &c.parts).unwrap();
    }
    (amount, parts)
}

#[test]
fn percentage_with_fixed_fee_bounds_and_free_events_by_hand() {
    let events = [
        (1, "a", dec!(10)),
        (2, "b", dec!(20)),
        (3, "c", dec!(30)),   // 0.39 + 0.30 = 0.69
        (4, "d", dec!(5)),    // 0.065 + 0.30 = 0.365 -> min 0.50
        (5, "e", dec!(1000)), // 13.00 + 0.30 = 13.30 -> max 5.00
        (6, "f", dec!(100)),  // 1.30 + 0.30 = 1.60
    ];
    let charges = rate_all(&take_rate(), &events);
    let amounts: Vec<Decimal> = charges.iter().map(|c| c.amount).collect();
    assert_eq!(
        amounts,
        [
            dec!(0),
            dec!(0),
            dec!(0.69),
            dec!(0.50),
            dec!(5.00),
            dec!(1.60)
        ]
    );
    let (total, parts) = sum(&charges);
    assert_eq!(total, dec!(7.79));
    let part = |name: &str| parts.get(name).copied().unwrap_or_default();
    use parts::percentage as p;
    assert_eq!(part(p::FREE_EVENTS), dec!(2));
    assert_eq!(part(p::PAID_EVENTS), dec!(4));
    assert_eq!(part(p::BILLABLE_AMOUNT), dec!(1135));
    assert_eq!(part(p::PERCENTAGE_FEE), dec!(14.755));
    assert_eq!(part(p::FIXED_FEES), dec!(1.20));
    assert_eq!(part(p::MIN_MAX_ADJUSTMENT), dec!(-8.165));
    // The parts explain the amount exactly.
    assert_eq!(
        part(p::PERCENTAGE_FEE) + part(p::FIXED_FEES) + part(p::MIN_MAX_ADJUSTMENT),
        total
    );
}

#[test]
fn a_late_event_takes_its_free_slot_and_the_event_it_displaces_is_charged() {
    let mut window = AllowanceWindow::default();
    let model = take_rate();
    for (s, id, v) in [
        (10, "a", dec!(10)),
        (20, "b", dec!(20)),
        (30, "c", dec!(30)),
    ] {
        window.rate(&model, key(s, id), v).unwrap();
    }
    assert!(window.mark().closed);
    // Beyond the window: its own fee, the window untouched.
    let beyond = window.rate(&model, key(40, "d"), dec!(100)).unwrap();
    assert_eq!(beyond.amount, dec!(1.60));
    assert_eq!(window.len(), 2);
    // Earlier than everything: free; "b" (20) leaves the free events and
    // pays 0.26 + 0.30 = 0.56, in the late event's marginal.
    let late = window.rate(&model, key(5, "z"), dec!(50)).unwrap();
    assert_eq!(late.amount, dec!(0.56));
    assert_eq!(
        late.parts.get("free_events"),
        None,
        "one free event in, one out"
    );
    assert_eq!(late.parts.get("paid_events"), Some(&dec!(1)));
    assert_eq!(window.len(), 2);
}

#[test]
fn free_amount_is_consumed_in_event_order_and_the_exhausting_event_pays_its_excess() {
    let model = PercentageModel {
        rate: dec!(2),
        fixed_fee_per_event: Decimal::ZERO,
        free_units: dec!(100),
        free_events: 0,
        min_per_event: None,
        max_per_event: None,
    };
    let charges = rate_all(
        &model,
        &[(1, "a", dec!(60)), (2, "b", dec!(60)), (3, "c", dec!(50))],
    );
    let amounts: Vec<Decimal> = charges.iter().map(|c| c.amount).collect();
    // 60 free (40 left); 60 -> 20 billable at 2% = 0.40; 50 -> 1.00.
    assert_eq!(amounts, [dec!(0), dec!(0.40), dec!(1.00)]);
    assert_eq!(charges[1].parts.get("free_amount"), Some(&dec!(40)));
}

#[test]
fn percentage_validation_refuses_bad_combinations_with_stable_codes() {
    let code = |m: PercentageModel| m.validate().unwrap_err().code();
    let base = take_rate();
    assert_eq!(
        code(PercentageModel {
            rate: dec!(100.01),
            ..base.clone()
        }),
        "percentage_out_of_range"
    );
    assert_eq!(
        code(PercentageModel {
            min_per_event: Some(dec!(6)),
            ..base.clone()
        }),
        "min_above_max"
    );
    assert_eq!(
        code(PercentageModel {
            free_events: MAX_FREE_EVENTS + 1,
            ..base.clone()
        }),
        "too_many_free_events"
    );
    assert_eq!(
        code(PercentageModel {
            fixed_fee_per_event: dec!(-0.01),
            ..base.clone()
        }),
        "negative_price"
    );
    assert_eq!(
        code(PercentageModel {
            free_units: dec!(-1),
            ..base
        }),
        "negative_free_units"
    );
    let dynamic = ChargeModel::Dynamic {
        amount_property: "price".into(),
        currency_property: None,
    };
    assert_eq!(
        dynamic.validate().unwrap_err().code(),
        "invalid_amount_property"
    );
}

#[test]
fn models_fit_only_the_aggregations_they_can_price() {
    let pct = ChargeModel::Percentage(take_rate());
    let per_unit = ChargeModel::PerUnit {
        unit_price: dec!(1),
    };
    let code = |m: &ChargeModel, a, prorate| m.check_aggregation(a, prorate).map_err(|e| e.code());
    assert_eq!(code(&pct, Aggregation::Sum, false), Ok(()));
    assert_eq!(
        code(&pct, Aggregation::Count, false),
        Err("model_aggregation_mismatch")
    );
    assert_eq!(
        code(&pct, Aggregation::Sum, true),
        Err("model_aggregation_mismatch")
    );
    assert_eq!(code(&per_unit, Aggregation::Latest, true), Ok(()));
    assert_eq!(code(&per_unit, Aggregation::Max, true), Ok(()));
    assert_eq!(
        code(&per_unit, Aggregation::Sum, true),
        Err("model_aggregation_mismatch")
    );
    assert_eq!(pct.price(dec!(1)).unwrap_err().code(), "not_cumulative");
}

#[test]
fn percentage_models_round_trip_through_json() {
    let json = r#"{"model":"percentage","rate":"1.3","fixed_fee_per_event":"0.30","free_units":"0","free_events":1000,"min_per_event":"0.50","max_per_event":"5.00"}"#;
    let model: ChargeModel = serde_json::from_str(json).unwrap();
    assert_eq!(serde_json::to_string(&model).unwrap(), json);
    let minimal: ChargeModel =
        serde_json::from_str(r#"{"model":"percentage","rate":"2"}"#).unwrap();
    assert!(minimal.validate().is_ok());
    let unknown =
        serde_json::from_str::<ChargeModel>(r#"{"model":"percentage","rate":"2","cap":"1"}"#);
    assert!(unknown.is_err(), "unknown fields are refused");
    let graduated: ChargeModel = serde_json::from_str(
        r#"{"model":"graduated_percentage","tiers":[{"up_to":"1000","rate":"3","flat_fee":"0.10"},{"up_to":null,"rate":"1.5"}]}"#,
    )
    .unwrap();
    // 1000 * 3% + 0.10 + 500 * 1.5% = 30.10 + 7.50.
    assert_eq!(graduated.price(dec!(1500)).unwrap(), dec!(37.60));
    let parts = graduated.parts(dec!(1500)).unwrap();
    assert_eq!(parts.get("tier_0_amount"), Some(&dec!(30.10)));
    assert_eq!(parts.get("tier_1_quantity"), Some(&dec!(500)));
}

fn month() -> ServiceInterval {
    ServiceInterval {
        period_start: t(0),
        period_end: t(30 * 86_400),
        subscription_end: None,
    }
}

#[test]
fn proration_worked_example_from_the_docs() {
    let seats = ChargeModel::PerUnit {
        unit_price: dec!(10.00),
    };
    let mut timeline = Timeline::default();
    let mut rate = |second: i64, id: &str, value: Decimal| {
        timeline
            .rate(
                &seats,
                Aggregation::Latest,
                &month(),
                key(second, id),
                value,
            )
            .unwrap()
    };
    let first = rate(0, "a", dec!(5));
    assert_eq!(first.amount, dec!(50));
    // 8 seats from day 11 00:00: 30 more for 20 of 30 days.
    let second = rate(10 * 86_400, "b", dec!(8));
    assert_eq!(second.amount, dec!(20));
    // Down to 6 on day 21: 20 back for 10 of 30 days, a credit of 6.666...
    let third = rate(20 * 86_400, "c", dec!(6));
    assert_eq!(third.amount, dec!(-6.666666666667));
    assert_eq!(
        third.parts.get(parts::proration::FULL_PERIOD_AMOUNT),
        Some(&dec!(-20))
    );
    // A redelivery changes nothing.
    assert_eq!(rate(20 * 86_400, "c", dec!(6)).amount, Decimal::ZERO);
}

#[test]
fn proration_stops_at_the_subscription_end() {
    let seats = ChargeModel::PerUnit {
        unit_price: dec!(3),
    };
    let interval = ServiceInterval {
        subscription_end: Some(t(15 * 86_400)),
        ..month()
    };
    let charge = Timeline::default()
        .rate(&seats, Aggregation::Max, &interval, key(0, "a"), dec!(10))
        .unwrap();
    assert_eq!(charge.amount, dec!(15));
}

#[test]
fn divide_rounded_is_half_even_at_the_scale() {
    let x = |s: &str| s.parse::<Decimal>().unwrap();
    assert_eq!(divide_rounded(x("1"), 3).unwrap(), x("0.333333333333"));
    assert_eq!(divide_rounded(x("-2"), 3).unwrap(), x("-0.666666666667"));
    // Exactly half a unit of the 12th decimal: to even.
    assert_eq!(divide_rounded(x("0.0000000000005"), 1).unwrap(), x("0"));
    assert_eq!(
        divide_rounded(x("0.0000000000015"), 1).unwrap(),
        x("0.000000000002")
    );
    assert_eq!(divide_rounded(x("7"), 2).unwrap(), x("3.5"));
}

#[test]
fn a_retraction_gives_back_a_fee_past_the_allowance_and_a_free_event_while_it_lasts() {
    let model = take_rate();
    let mut window = AllowanceWindow::default();
    let rate = |window: &mut AllowanceWindow, s: i64, id: &str, v: Decimal| {
        window.rate(&model, key(s, id), v).unwrap().amount
    };
    assert_eq!(rate(&mut window, 1, "a", dec!(10)), dec!(0));
    // The allowance is not used up: "a" leaves it, free, and its slot is
    // free again for the next event.
    let back = window.retract(&model, &key(1, "a"), dec!(10)).unwrap();
    let AllowanceRetraction::Priced(back) = back else {
        panic!("{back:?}")
    };
    assert_eq!(back.amount, dec!(0));
    assert_eq!(
        back.parts,
        Parts::from([("free_events".to_owned(), dec!(-1))])
    );
    assert!(window.is_empty());
    let fees: Vec<Decimal> = [(2, "b", dec!(20)), (3, "c", dec!(30)), (4, "d", dec!(5))]
        .into_iter()
        .map(|(s, id, v)| rate(&mut window, s, id, v))
        .collect();
    assert_eq!(fees, [dec!(0), dec!(0), dec!(0.50)]);
    assert_eq!(rate(&mut window, 5, "e", dec!(1000)), dec!(5.00));
    // Past the allowance: its own fee back, every part of it.
    let AllowanceRetraction::Priced(refund) =
        window.retract(&model, &key(5, "e"), dec!(1000)).unwrap()
    else {
        panic!("past the allowance")
    };
    assert_eq!(refund.amount, dec!(-5.00));
    let part = |name: &str| refund.parts.get(name).copied().unwrap_or_default();
    assert_eq!(
        (
            part("paid_events"),
            part("billable_amount"),
            part("percentage_fee")
        ),
        (dec!(-1), dec!(-1000), dec!(-13.000))
    );
    assert_eq!(
        (part("fixed_fees"), part("min_max_adjustment")),
        (dec!(-0.30), dec!(8.30))
    );
    // "b" used a free event and "d" was charged in full: refused, unchanged.
    let before = window.clone();
    let refused = window.retract(&model, &key(2, "b"), dec!(20)).unwrap();
    assert!(
        matches!(refused, AllowanceRetraction::Unsupported(_)),
        "{refused:?}"
    );
    assert_eq!(window, before);
}

// ---------------------------------------------------------------- properties

/// The expected total of a percentage model over `values` in event order,
/// written independently of `percentage.rs`.
fn expected_percentage_total(model: &PercentageModel, values: &[Decimal]) -> Decimal {
    let fee = |billable: Decimal| {
        let mut f = billable * model.rate / dec!(100) + model.fixed_fee_per_event;
        if let Some(min) = model.min_per_event {
            f = f.max(min);
        }
        if let Some(max) = model.max_per_event {
            f = f.min(max);
        }
        f
    };
    let mut free_events = model.free_events;
    let mut free_left = model.free_units;
    let mut total = Decimal::ZERO;
    for v in values {
        if free_events > 0 {
            free_events -= 1;
        } else if free_left > Decimal::ZERO && *v <= free_left {
            free_left -= v;
        } else if free_left > Decimal::ZERO {
            total += fee(*v - free_left);
            free_left = Decimal::ZERO;
        } else {
            total += fee(*v);
        }
    }
    total
}

fn cents(max: i64) -> impl Strategy<Value = Decimal> {
    (0..=max).prop_map(|c| Decimal::new(c, 2))
}

fn percentage_model() -> impl Strategy<Value = PercentageModel> {
    (
        (0..=10_000i64).prop_map(|r| Decimal::new(r, 2)),
        cents(100),
        prop_oneof![Just(Decimal::ZERO), cents(50_000)],
        0u32..5,
        proptest::option::of(cents(200)),
        proptest::option::of(cents(2_000)),
    )
        .prop_map(|(rate, fixed, free_units, free_events, a, b)| {
            let (min, max) = match (a, b) {
                (Some(a), Some(b)) => (Some(a.min(b)), Some(a.max(b))),
                other => other,
            };
            PercentageModel {
                rate,
                fixed_fee_per_event: fixed,
                free_units,
                free_events,
                min_per_event: min,
                max_per_event: max,
            }
        })
}

/// Events with distinct keys and an arrival order (a permutation).
fn events_and_arrival() -> impl Strategy<Value = (Vec<(i64, Decimal)>, Vec<usize>)> {
    proptest::collection::vec((0..1_000i64, cents(100_000)), 1..30).prop_flat_map(|events| {
        let n = events.len();
        (
            Just(events),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn percentage_total_is_the_event_order_fees_for_any_arrival_order(
        model in percentage_model(),
        (events, arrival) in events_and_arrival(),
    ) {
        let mut window = AllowanceWindow::default();
        let mut total = Decimal::ZERO;
        let mut parts = Parts::new();
        for i in &arrival {
            let (second, value) = events[*i];
            let c = window.rate(&model, key(second, &format!("e{i}")), value).unwrap();
            total += c.amount;
            add_parts(&mut parts, &c.parts).unwrap();
        }
        let mut in_order: Vec<(EventKey, Decimal)> = events
            .iter()
            .enumerate()
            .map(|(i, (s, v))| (key(*s, &format!("e{i}")), *v))
            .collect();
        in_order.sort();
        let values: Vec<Decimal> = in_order.into_iter().map(|(_, v)| v).collect();
        prop_assert_eq!(total, expected_percentage_total(&model, &values));
        // The parts explain the total, and count every event once.
        let part = |n: &str| parts.get(n).copied().unwrap_or_default();
        prop_assert_eq!(
            part("percentage_fee") + part("fixed_fees") + part("min_max_adjustment"),
            total
        );
        let n = Decimal::from(values.len() as u64);
        let free = Decimal::from(model.free_events).min(n);
        prop_assert_eq!(part("free_events"), free);
        prop_assert!(part("paid_events") <= n - free);
        prop_assert!(window.len() <= values.len());
    }

    #[test]
    fn a_retraction_leaves_the_event_order_fees_of_the_others_or_changes_nothing(
        model in percentage_model(),
        (events, arrival) in events_and_arrival(),
        pick in any::<prop::sample::Index>(),
    ) {
        let id = |i: usize| format!("e{i}");
        let mut window = AllowanceWindow::default();
        let mut total = Decimal::ZERO;
        for i in &arrival {
            let (second, value) = events[*i];
            total += window.rate(&model, key(second, &id(*i)), value).unwrap().amount;
        }
        let gone = pick.index(events.len());
        let (second, value) = events[gone];
        let before = window.clone();
        match window.retract(&model, &key(second, &id(gone)), value).unwrap() {
            AllowanceRetraction::Priced(change) => {
                let mut rest: Vec<(EventKey, Decimal)> = events
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != gone)
                    .map(|(i, (s, v))| (key(*s, &id(i)), *v))
                    .collect();
                rest.sort();
                let values: Vec<Decimal> = rest.into_iter().map(|(_, v)| v).collect();
                prop_assert_eq!(total + change.amount, expected_percentage_total(&model, &values));
                let part = |n: &str| change.parts.get(n).copied().unwrap_or_default();
                prop_assert_eq!(
                    part("percentage_fee") + part("fixed_fees") + part("min_max_adjustment"),
                    change.amount
                );
            }
            AllowanceRetraction::Unsupported(_) => {
                prop_assert!(model.free_events > 0 || !model.free_units.is_zero());
                prop_assert_eq!(window, before);
            }
        }
    }

    #[test]
    fn without_an_allowance_every_retraction_is_its_own_fee_back(
        model in percentage_model(),
        values in proptest::collection::vec(cents(100_000), 1..20),
        pick in any::<prop::sample::Index>(),
    ) {
        let model = PercentageModel { free_events: 0, free_units: Decimal::ZERO, ..model };
        let mut window = AllowanceWindow::default();
        let fees: Vec<Decimal> = values
            .iter()
            .enumerate()
            .map(|(i, v)| window.rate(&model, key(i as i64, "e"), *v).unwrap().amount)
            .collect();
        let gone = pick.index(values.len());
        let back = window.retract(&model, &key(gone as i64, "e"), values[gone]).unwrap();
        prop_assert_eq!(back, AllowanceRetraction::Priced(Charge {
            amount: -fees[gone],
            ..model.refund(values[gone]).unwrap()
        }));
    }

    #[test]
    fn in_event_order_each_marginal_is_that_events_own_fee(
        model in percentage_model(),
        values in proptest::collection::vec(cents(100_000), 1..30),
    ) {
        let mut window = AllowanceWindow::default();
        for (i, v) in values.iter().enumerate() {
            let c = window.rate(&model, key(i as i64, "e"), *v).unwrap();
            let expected = expected_percentage_total(&model, &values[..=i])
                - expected_percentage_total(&model, &values[..i]);
            prop_assert_eq!(c.amount, expected);
            if let (Some(min), Some(max)) = (model.min_per_event, model.max_per_event) {
                prop_assert!(c.amount.is_zero() || (c.amount >= min && c.amount <= max));
            }
        }
    }

    #[test]
    fn prorated_total_is_the_timeline_total_for_any_arrival_order(
        tiers in proptest::collection::vec((1..50i64, 0..2_000i64), 1..4),
        aggregation in prop_oneof![Just(Aggregation::Latest), Just(Aggregation::Max)],
        (points, arrival) in seat_points(),
    ) {
        let model = seat_price(&tiers);
        let mut timeline = Timeline::default();
        let mut total = Decimal::ZERO;
        for i in &arrival {
            let (second, value) = points[*i];
            let c = timeline
                .rate(&model, aggregation, &month(), key(second, &format!("p{i}")), Decimal::from(value))
                .unwrap();
            total += c.amount;
        }
        prop_assert_eq!(total, expected_prorated_total(&model, aggregation, &points, None));
    }

    #[test]
    fn a_prorated_retraction_leaves_the_timeline_total_of_the_others(
        tiers in proptest::collection::vec((1..50i64, 0..2_000i64), 1..4),
        aggregation in prop_oneof![Just(Aggregation::Latest), Just(Aggregation::Max)],
        (points, arrival) in seat_points(),
        pick in any::<prop::sample::Index>(),
    ) {
        let model = seat_price(&tiers);
        let mut timeline = Timeline::default();
        let mut total = Decimal::ZERO;
        for i in &arrival {
            let (second, value) = points[*i];
            let p = key(second, &format!("p{i}"));
            total += timeline.rate(&model, aggregation, &month(), p, Decimal::from(value)).unwrap().amount;
        }
        let gone = pick.index(points.len());
        let gone_key = key(points[gone].0, &format!("p{gone}"));
        let change = timeline.retract(&model, aggregation, &month(), &gone_key).unwrap().unwrap();
        prop_assert_eq!(
            total + change.amount,
            expected_prorated_total(&model, aggregation, &points, Some(gone))
        );
        // Gone: a second retraction finds nothing.
        prop_assert!(timeline.retract(&model, aggregation, &month(), &gone_key).unwrap().is_none());
        prop_assert_eq!(timeline.len(), points.len() - 1);
    }
}

/// Points (second of the month, seats) and an arrival order.
fn seat_points() -> impl Strategy<Value = (Vec<(i64, i64)>, Vec<usize>)> {
    proptest::collection::vec((0..(30 * 86_400i64), 0..60i64), 1..12).prop_flat_map(|p| {
        let n = p.len();
        (Just(p), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
    })
}

/// A graduated seat price: increasing bounds, prices in cents.
fn seat_price(tiers: &[(i64, i64)]) -> ChargeModel {
    let mut bound = 0;
    let mut table: Vec<Tier> = tiers
        .iter()
        .map(|(width, price)| {
            bound += width;
            Tier::bounded(Decimal::from(bound), Decimal::new(*price, 2))
        })
        .collect();
    table.push(Tier::open(Decimal::new(tiers[0].1, 2)));
    ChargeModel::Graduated { tiers: table }
}

/// The prorated total of `points` but `without`, walked in event order
/// independently of `proration.rs`.
fn expected_prorated_total(
    model: &ChargeModel,
    aggregation: Aggregation,
    points: &[(i64, i64)],
    without: Option<usize>,
) -> Decimal {
    let mut sorted: Vec<(EventKey, i64, Decimal)> = points
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != without)
        .map(|(i, (s, v))| (key(*s, &format!("p{i}")), *s, Decimal::from(*v)))
        .collect();
    sorted.sort();
    let period = Decimal::from(30 * 86_400i64);
    let (mut q, mut before, mut expected) = (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO);
    for (_, second, v) in sorted {
        q = if aggregation == Aggregation::Max {
            q.max(v)
        } else {
            v
        };
        let price = model.price(q).unwrap();
        let remaining = period - Decimal::from(second);
        expected += ((price - before) * remaining / period)
            .round_dp_with_strategy(PRORATION_SCALE, RoundingStrategy::MidpointNearestEven);
        before = price;
    }
    expected
}
