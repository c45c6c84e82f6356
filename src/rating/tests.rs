//! Hand-computed examples: every model at 0, inside a free tier, and at
//! boundary - 0.000001, boundary, boundary + 0.000001; breakdowns; segment
//! state per aggregation; validation; serde; arithmetic limits.

use rust_decimal::Decimal;
use rust_decimal_macros::dec;

use super::*;
use crate::meter::Aggregation;

/// Free up to 100; 0.50 up to 1000 with a 10 fee; 0.40 above with a 25 fee.
fn tiers() -> Vec<Tier> {
    vec![
        Tier::bounded(dec!(100), dec!(0)),
        Tier::bounded(dec!(1000), dec!(0.50)).with_flat_fee(dec!(10)),
        Tier::open(dec!(0.40)).with_flat_fee(dec!(25)),
    ]
}

fn graduated() -> ChargeModel {
    ChargeModel::Graduated { tiers: tiers() }
}

fn volume() -> ChargeModel {
    ChargeModel::Volume { tiers: tiers() }
}

fn package(free_units: Decimal) -> ChargeModel {
    ChargeModel::Package {
        size: dec!(1000),
        price: dec!(2.50),
        free_units,
    }
}

/// Asserts `price(q)` for each `(q, expected)` pair, with `==` (exact).
fn assert_prices(model: &ChargeModel, cases: &[(Decimal, Decimal)]) {
    for &(quantity, expected) in cases {
        assert_eq!(
            model.price(quantity).unwrap(),
            expected,
            "price({quantity}) of {model:?}"
        );
        // The breakdown explains the same amount.
        let lines = model.breakdown(quantity).unwrap();
        let sum = lines.iter().map(|line| line.amount).sum::<Decimal>();
        assert_eq!(sum, expected, "breakdown({quantity}) of {model:?}");
    }
}

#[test]
fn per_unit_prices() {
    let model = ChargeModel::PerUnit {
        unit_price: dec!(0.0004),
    };
    assert_prices(
        &model,
        &[
            (dec!(0), dec!(0)),
            (dec!(0.000001), dec!(0.0000000004)),
            (dec!(1), dec!(0.0004)),
            (dec!(2500), dec!(1)),
            (dec!(2500.000001), dec!(1.0000000004)),
        ],
    );
}

#[test]
fn graduated_prices_around_every_boundary() {
    assert_prices(
        &graduated(),
        &[
            (dec!(0), dec!(0)),
            // Inside the free first tier: no fee of a later tier yet.
            (dec!(50), dec!(0)),
            (dec!(99.999999), dec!(0)),
            (dec!(100), dec!(0)),
            // Entering tier 1 charges its flat fee once.
            (dec!(100.000001), dec!(10.0000005)),
            (dec!(999.999999), dec!(459.9999995)),
            (dec!(1000), dec!(460)),
            (dec!(1000.000001), dec!(485.0000004)),
            (dec!(2000), dec!(885)),
        ],
    );
}

#[test]
fn volume_prices_around_every_boundary() {
    assert_prices(
        &volume(),
        &[
            (dec!(0), dec!(0)),
            (dec!(50), dec!(0)),
            (dec!(99.999999), dec!(0)),
            (dec!(100), dec!(0)),
            // All units at the tier's price, plus only that tier's fee.
            (dec!(100.000001), dec!(60.0000005)),
            (dec!(999.999999), dec!(509.9999995)),
            (dec!(1000), dec!(510)),
            (dec!(1000.000001), dec!(425.0000004)),
            (dec!(2000), dec!(825)),
        ],
    );
}

#[test]
fn flat_fee_of_first_tier_is_charged_as_soon_as_usage_starts() {
    let tiers = vec![
        Tier::bounded(dec!(10), dec!(1)).with_flat_fee(dec!(5)),
        Tier::open(dec!(0.5)).with_flat_fee(dec!(2)),
    ];
    let graduated = ChargeModel::Graduated {
        tiers: tiers.clone(),
    };
    let volume = ChargeModel::Volume { tiers };
    for model in [&graduated, &volume] {
        assert_eq!(model.price(dec!(0)).unwrap(), dec!(0));
        assert_eq!(model.price(dec!(0.000001)).unwrap(), dec!(5.000001));
        assert_eq!(model.price(dec!(10)).unwrap(), dec!(15));
    }
    assert_eq!(graduated.price(dec!(10.000001)).unwrap(), dec!(17.0000005));
    assert_eq!(volume.price(dec!(10.000001)).unwrap(), dec!(7.0000005));
}

#[test]
fn single_open_tier_is_per_unit() {
    let tiers = vec![Tier::open(dec!(0.3))];
    for model in [
        ChargeModel::Graduated {
            tiers: tiers.clone(),
        },
        ChargeModel::Volume { tiers },
    ] {
        assert_prices(&model, &[(dec!(0), dec!(0)), (dec!(7), dec!(2.1))]);
    }
}

#[test]
fn package_with_free_units() {
    assert_prices(
        &package(dec!(500)),
        &[
            (dec!(0), dec!(0)),
            (dec!(499.999999), dec!(0)),
            (dec!(500), dec!(0)),
            (dec!(500.000001), dec!(2.50)),
            (dec!(1499.999999), dec!(2.50)),
            // Exact multiple of the size past the free units: one package.
            (dec!(1500), dec!(2.50)),
            (dec!(1500.000001), dec!(5.00)),
            (dec!(2500), dec!(5.00)),
            (dec!(2500.000001), dec!(7.50)),
        ],
    );
}

#[test]
fn package_without_free_units() {
    assert_prices(
        &package(dec!(0)),
        &[
            (dec!(0), dec!(0)),
            (dec!(0.000001), dec!(2.50)),
            (dec!(999.999999), dec!(2.50)),
            (dec!(1000), dec!(2.50)),
            (dec!(1000.000001), dec!(5.00)),
            (dec!(3000), dec!(7.50)),
        ],
    );
}

#[test]
fn package_with_fractional_size() {
    let model = ChargeModel::Package {
        size: dec!(0.3),
        price: dec!(1),
        free_units: dec!(0),
    };
    // 0.9 / 0.3 is exactly 3; 1 / 0.3 is 3.33.. -> 4.
    assert_prices(
        &model,
        &[
            (dec!(0.9), dec!(3)),
            (dec!(0.900001), dec!(4)),
            (dec!(1), dec!(4)),
        ],
    );
}

#[test]
fn free_units_default_to_zero_in_json() {
    let model: ChargeModel =
        serde_json::from_str(r#"{"model": "package", "size": "10", "price": "1"}"#).unwrap();
    assert_eq!(model, package_of(dec!(10), dec!(1), dec!(0)));
}

fn package_of(size: Decimal, price: Decimal, free_units: Decimal) -> ChargeModel {
    ChargeModel::Package {
        size,
        price,
        free_units,
    }
}

#[test]
fn graduated_breakdown_lines() {
    let line = |tier_index, quantity, unit_price, flat_fee, amount| TierLine {
        tier_index,
        quantity,
        unit_price,
        flat_fee,
        amount,
    };
    assert_eq!(
        graduated().breakdown(dec!(1500)).unwrap(),
        vec![
            line(0, dec!(100), dec!(0), dec!(0), dec!(0)),
            line(1, dec!(900), dec!(0.50), dec!(10), dec!(460)),
            line(2, dec!(500), dec!(0.40), dec!(25), dec!(225)),
        ]
    );
    assert_eq!(graduated().price(dec!(1500)).unwrap(), dec!(685));
    // Exactly at a boundary the next tier is not entered.
    assert_eq!(graduated().breakdown(dec!(100)).unwrap().len(), 1);
    assert_eq!(graduated().breakdown(dec!(0)).unwrap(), vec![]);
}

#[test]
fn volume_and_package_breakdown_lines() {
    assert_eq!(
        volume().breakdown(dec!(1500)).unwrap(),
        vec![TierLine {
            tier_index: 2,
            quantity: dec!(1500),
            unit_price: dec!(0.40),
            flat_fee: dec!(25),
            amount: dec!(625),
        }]
    );
    assert_eq!(
        package(dec!(500)).breakdown(dec!(2600)).unwrap(),
        vec![
            TierLine {
                tier_index: 0,
                quantity: dec!(500),
                unit_price: dec!(0),
                flat_fee: dec!(0),
                amount: dec!(0),
            },
            TierLine {
                tier_index: 1,
                quantity: dec!(3),
                unit_price: dec!(2.50),
                flat_fee: dec!(0),
                amount: dec!(7.50),
            },
        ]
    );
    // Without free units the package line is tier 0.
    let lines = package(dec!(0)).breakdown(dec!(1)).unwrap();
    assert_eq!(
        (lines.len(), lines[0].tier_index, lines[0].quantity),
        (1, 0, dec!(1))
    );
}

#[test]
fn negative_quantity_is_an_error() {
    for model in [graduated(), volume(), package(dec!(5))] {
        let error = model.price(dec!(-0.000001)).unwrap_err();
        assert_eq!(error.code(), "negative_quantity");
        assert_eq!(
            model.breakdown(dec!(-1)).unwrap_err().code(),
            "negative_quantity"
        );
    }
}

#[test]
fn marginal_is_difference_of_prices_and_may_be_negative() {
    let change = QuantityChange {
        before: dec!(1000),
        after: dec!(1000.000001),
    };
    assert_eq!(graduated().marginal(&change).unwrap(), dec!(25.0000004));
    // Volume: crossing into the cheaper tier reprices every unit.
    assert_eq!(volume().marginal(&change).unwrap(), dec!(-84.9999996));
}

// ---- validation -------------------------------------------------------------

fn validation_code(model: ChargeModel) -> &'static str {
    let code = model.validate().unwrap_err().code();
    // Pricing never uses an invalid table, and reports the same code.
    assert_eq!(model.price(dec!(1)).unwrap_err().code(), code);
    code
}

#[test]
fn validation_errors_for_bad_tables() {
    let open = |price| Tier::open(price);
    let to = |up_to, price| Tier::bounded(up_to, price);
    let cases: Vec<(Vec<Tier>, &str)> = vec![
        (vec![], "no_tiers"),
        (vec![to(dec!(10), dec!(1))], "last_tier_not_open"),
        (
            vec![to(dec!(10), dec!(1)), to(dec!(20), dec!(1))],
            "last_tier_not_open",
        ),
        (vec![open(dec!(1)), open(dec!(1))], "open_tier_not_last"),
        (
            vec![open(dec!(1)), to(dec!(10), dec!(1)), open(dec!(1))],
            "open_tier_not_last",
        ),
        (
            vec![to(dec!(0), dec!(1)), open(dec!(1))],
            "tier_bound_not_positive",
        ),
        (
            vec![to(dec!(-5), dec!(1)), open(dec!(1))],
            "tier_bound_not_positive",
        ),
        (
            vec![to(dec!(10), dec!(1)), to(dec!(10), dec!(1)), open(dec!(1))],
            "tier_bounds_not_increasing",
        ),
        (
            vec![
                to(dec!(10), dec!(1)),
                to(dec!(9.999999), dec!(1)),
                open(dec!(1)),
            ],
            "tier_bounds_not_increasing",
        ),
        (
            vec![to(dec!(10), dec!(-0.01)), open(dec!(1))],
            "negative_price",
        ),
        (
            vec![to(dec!(10), dec!(1)), open(dec!(1)).with_flat_fee(dec!(-1))],
            "negative_price",
        ),
        (vec![open(dec!(1)); MAX_TIERS + 1], "too_many_tiers"),
    ];
    for (tiers, code) in cases {
        assert_eq!(
            validation_code(ChargeModel::Graduated {
                tiers: tiers.clone()
            }),
            code,
            "{tiers:?}"
        );
        assert_eq!(
            validation_code(ChargeModel::Volume {
                tiers: tiers.clone()
            }),
            code,
            "{tiers:?}"
        );
    }
    assert_eq!(
        validation_code(ChargeModel::PerUnit {
            unit_price: dec!(-1)
        }),
        "negative_price"
    );
    assert_eq!(
        validation_code(package_of(dec!(0), dec!(1), dec!(0))),
        "package_size_not_positive"
    );
    assert_eq!(
        validation_code(package_of(dec!(-1), dec!(1), dec!(0))),
        "package_size_not_positive"
    );
    assert_eq!(
        validation_code(package_of(dec!(1), dec!(-1), dec!(0))),
        "negative_price"
    );
    assert_eq!(
        validation_code(package_of(dec!(1), dec!(1), dec!(-1))),
        "negative_free_units"
    );
}

#[test]
fn validation_errors_name_the_field() {
    let model = ChargeModel::Graduated {
        tiers: vec![
            Tier::bounded(dec!(10), dec!(1)),
            Tier::open(dec!(1)).with_flat_fee(dec!(-2)),
        ],
    };
    let error = model.validate().unwrap_err();
    assert_eq!(
        error,
        ChargeModelError::NegativePrice {
            field: "tiers[1].flat_fee".into()
        }
    );
    assert_eq!(error.to_string(), "tiers[1].flat_fee must not be negative");
}

#[test]
fn valid_tables_pass() {
    for model in [graduated(), volume(), package(dec!(0)), package(dec!(1))] {
        model.validate().unwrap();
    }
    // Zero prices are allowed: free tiers, free packages.
    ChargeModel::PerUnit {
        unit_price: dec!(0),
    }
    .validate()
    .unwrap();
}

// ---- serde ------------------------------------------------------------------

#[test]
fn charge_model_json_shape() {
    let json = r#"{"model":"graduated","tiers":[{"up_to":"100","unit_price":"0"},{"up_to":"1000","unit_price":"0.50","flat_fee":"10"},{"up_to":null,"unit_price":"0.40","flat_fee":"25"}]}"#;
    let model: ChargeModel = serde_json::from_str(json).unwrap();
    assert_eq!(model, graduated());
    assert_eq!(serde_json::to_string(&model).unwrap(), json);

    // An absent up_to is open as well.
    let volume: ChargeModel =
        serde_json::from_str(r#"{"model":"volume","tiers":[{"unit_price":"0.1"}]}"#).unwrap();
    assert_eq!(
        volume,
        ChargeModel::Volume {
            tiers: vec![Tier::open(dec!(0.1))]
        }
    );

    let per_unit = ChargeModel::PerUnit {
        unit_price: dec!(0.0004),
    };
    let json = serde_json::to_string(&per_unit).unwrap();
    assert_eq!(json, r#"{"model":"per_unit","unit_price":"0.0004"}"#);
    assert_eq!(
        serde_json::from_str::<ChargeModel>(&json).unwrap(),
        per_unit
    );

    let json = serde_json::to_string(&package(dec!(500))).unwrap();
    assert_eq!(
        json,
        r#"{"model":"package","size":"1000","price":"2.50","free_units":"500"}"#
    );
}

#[test]
fn charge_model_json_rejects_numbers_unknown_fields_and_models() {
    let rejected = [
        // A JSON number may have been a binary float on the way here.
        r#"{"model":"per_unit","unit_price":0.1}"#,
        r#"{"model":"per_unit","unit_price":"0.1","currency":"EUR"}"#,
        r#"{"model":"graduated","tiers":[{"upto":"1","unit_price":"1"},{"unit_price":"1"}]}"#,
        r#"{"model":"stairstep","unit_price":"1"}"#,
        r#"{"unit_price":"1"}"#,
        r#"{"model":"per_unit","unit_price":"abc"}"#,
        r#"{"model":"volume","tiers":[{"up_to":"","unit_price":"1"}]}"#,
        r#"{"model":"volume","tiers":[{"unit_price":"1","flat_fee":2}]}"#,
    ];
    for json in rejected {
        assert!(serde_json::from_str::<ChargeModel>(json).is_err(), "{json}");
    }
}

#[test]
fn segment_state_round_trips_through_json() {
    let mut state = SegmentState::new(Aggregation::Latest);
    state
        .observe(Observation::latest(
            dec!(7.5),
            1_700_000_000_000_000,
            "evt-1",
        ))
        .unwrap();
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(
        json,
        r#"{"aggregation":"LATEST","quantity":"7.5","latest":{"event_time":1700000000000000,"event_id":"evt-1"},"amount":"0","history":0}"#
    );
    assert_eq!(serde_json::from_str::<SegmentState>(&json).unwrap(), state);

    let sum = SegmentState::new(Aggregation::Sum);
    assert_eq!(
        serde_json::to_string(&sum).unwrap(),
        r#"{"aggregation":"SUM","quantity":"0","amount":"0"}"#
    );
}

// ---- segment state ------------------------------------------------------------

fn change(before: Decimal, after: Decimal) -> QuantityChange {
    QuantityChange { before, after }
}

#[test]
fn sum_adds_values() {
    let mut state = SegmentState::new(Aggregation::Sum);
    assert_eq!(
        state.observe(Observation::value(dec!(1.5))).unwrap(),
        change(dec!(0), dec!(1.5))
    );
    assert_eq!(
        state.observe(Observation::value(dec!(0))).unwrap(),
        change(dec!(1.5), dec!(1.5))
    );
    assert_eq!(
        state.observe(Observation::value(dec!(2.25))).unwrap(),
        change(dec!(1.5), dec!(3.75))
    );
}

#[test]
fn count_counts_events() {
    let mut state = SegmentState::new(Aggregation::Count);
    for n in 1..=3 {
        let change = state.observe(Observation::Occurrence).unwrap();
        assert_eq!(change.after, Decimal::from(n));
    }
}

#[test]
fn max_keeps_the_greatest_value() {
    let mut state = SegmentState::new(Aggregation::Max);
    state.observe(Observation::value(dec!(5))).unwrap();
    assert_eq!(
        state.observe(Observation::value(dec!(3))).unwrap(),
        change(dec!(5), dec!(5))
    );
    assert_eq!(
        state.observe(Observation::value(dec!(8))).unwrap(),
        change(dec!(5), dec!(8))
    );
    assert_eq!(state.quantity(), dec!(8));
}

#[test]
fn unique_count_with_caller_store() {
    let mut state = SegmentState::new(Aggregation::UniqueCount);
    state.observe(Observation::distinct(true)).unwrap();
    state.observe(Observation::distinct(false)).unwrap();
    state.observe(Observation::distinct(true)).unwrap();
    assert_eq!(state.quantity(), dec!(2));
    // A bare state cannot deduplicate values itself.
    let error = state.observe(Observation::distinct_value("a")).unwrap_err();
    assert_eq!(error.code(), "distinct_value_needs_set");
    assert_eq!(state.quantity(), dec!(2));
}

#[test]
fn unique_count_in_memory() {
    let mut segment = InMemorySegment::new(Aggregation::UniqueCount);
    for value in ["a", "b", "a", "c", "b"] {
        segment.observe(Observation::distinct_value(value)).unwrap();
    }
    assert_eq!(segment.state().quantity(), dec!(3));
    // Caller-deduplicated observations still work alongside.
    segment.observe(Observation::distinct(true)).unwrap();
    assert_eq!(segment.state().quantity(), dec!(4));
}

#[test]
fn latest_follows_the_greatest_event_key() {
    let mut state = SegmentState::new(Aggregation::Latest);
    assert_eq!(
        state
            .observe(Observation::latest(dec!(10), 100, "b"))
            .unwrap(),
        change(dec!(0), dec!(10))
    );
    // Older event arriving late: no change.
    assert_eq!(
        state
            .observe(Observation::latest(dec!(99), 50, "z"))
            .unwrap(),
        change(dec!(10), dec!(10))
    );
    // Same time, smaller id: older by the tie-break.
    assert_eq!(
        state
            .observe(Observation::latest(dec!(99), 100, "a"))
            .unwrap(),
        change(dec!(10), dec!(10))
    );
    // Redelivery of the current event: no change.
    assert_eq!(
        state
            .observe(Observation::latest(dec!(10), 100, "b"))
            .unwrap(),
        change(dec!(10), dec!(10))
    );
    // Same time, greater id: newer.
    assert_eq!(
        state
            .observe(Observation::latest(dec!(4), 100, "c"))
            .unwrap(),
        change(dec!(10), dec!(4))
    );
    assert_eq!(
        state
            .observe(Observation::latest(dec!(0), 101, "a"))
            .unwrap(),
        change(dec!(4), dec!(0))
    );
    assert_eq!(
        state.latest(),
        Some(&EventKey {
            event_time: 101,
            sub_micro_ns: 0,
            event_id: "a".into()
        })
    );
}

#[test]
fn latest_orders_events_one_nanosecond_apart_in_either_arrival_order() {
    use chrono::{DateTime, TimeDelta, Utc};
    // Same microsecond, 1 ns apart; the earlier event has the greater id, so
    // a key that dropped the nanoseconds would let it win on the tie-break.
    let earlier: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-10-05T12:00:00.000000100Z")
        .unwrap()
        .into();
    let later = earlier + TimeDelta::nanoseconds(1);
    assert_eq!(earlier.timestamp_micros(), later.timestamp_micros());
    let first = || Observation::latest_at(dec!(7), earlier, "z-earlier");
    let second = || Observation::latest_at(dec!(3), later, "a-later");
    for order in [[first(), second()], [second(), first()]] {
        let mut state = SegmentState::new(Aggregation::Latest);
        for o in order {
            state.observe(o).unwrap();
        }
        assert_eq!(state.quantity(), dec!(3));
        assert_eq!(state.latest(), Some(&EventKey::at(later, "a-later")));
        assert_eq!(state.latest().unwrap().sub_micro_ns, 101);
    }
}

#[test]
fn latest_state_stored_without_nanoseconds_still_reads() {
    // As written before `sub_micro_ns` existed: read as 0 ns past the microsecond.
    let old = r#"{"aggregation":"LATEST","quantity":"7.5","latest":{"event_time":1700000000000000,"event_id":"evt-1"}}"#;
    let mut state: SegmentState = serde_json::from_str(old).unwrap();
    assert_eq!(state.latest().unwrap().sub_micro_ns, 0);
    // Unchanged state is written back byte for byte.
    assert_eq!(serde_json::to_string(&state).unwrap(), old);
    // A later event in the same microsecond replaces it...
    let change = state
        .observe(Observation::Latest {
            value: dec!(2),
            key: EventKey {
                event_time: 1_700_000_000_000_000,
                sub_micro_ns: 1,
                event_id: "evt-0".into(),
            },
        })
        .unwrap();
    assert_eq!(change.after, dec!(2));
    // ...and the nanoseconds are stored.
    assert_eq!(
        serde_json::to_string(&state).unwrap(),
        r#"{"aggregation":"LATEST","quantity":"2","latest":{"event_time":1700000000000000,"sub_micro_ns":1,"event_id":"evt-0"}}"#
    );
    assert_eq!(
        serde_json::from_str::<SegmentState>(&serde_json::to_string(&state).unwrap()).unwrap(),
        state
    );
}

#[test]
fn mismatched_and_negative_observations_leave_the_state_unchanged() {
    let cases = [
        (
            Aggregation::Sum,
            Observation::Occurrence,
            "observation_mismatch",
        ),
        (
            Aggregation::Count,
            Observation::value(dec!(1)),
            "observation_mismatch",
        ),
        (
            Aggregation::Max,
            Observation::distinct(true),
            "observation_mismatch",
        ),
        (
            Aggregation::Latest,
            Observation::value(dec!(1)),
            "observation_mismatch",
        ),
        (
            Aggregation::UniqueCount,
            Observation::latest(dec!(1), 1, "a"),
            "observation_mismatch",
        ),
        (
            Aggregation::Sum,
            Observation::distinct_value("a"),
            "observation_mismatch",
        ),
        (
            Aggregation::Sum,
            Observation::value(dec!(-1)),
            "negative_value",
        ),
        (
            Aggregation::Max,
            Observation::value(dec!(-1)),
            "negative_value",
        ),
        (
            Aggregation::Latest,
            Observation::latest(dec!(-1), 9, "x"),
            "negative_value",
        ),
    ];
    for (aggregation, observation, code) in cases {
        let mut segment = InMemorySegment::new(aggregation);
        let before = segment.clone();
        let error = segment.observe(observation.clone()).unwrap_err();
        assert_eq!(error.code(), code, "{aggregation:?} {observation:?}");
        assert_eq!(segment, before);
    }
}

// ---- standalone API -------------------------------------------------------------

#[test]
fn rate_sequence_latest_can_give_negative_marginals() {
    let model = ChargeModel::PerUnit {
        unit_price: dec!(2),
    };
    let events = [
        Observation::latest(dec!(10), 1, "a"),
        Observation::latest(dec!(4), 3, "c"),
        Observation::latest(dec!(50), 2, "b"), // late and older: ignored
    ];
    let rated = rate_sequence(&model, Aggregation::Latest, events).unwrap();
    assert_eq!(
        rated.marginals,
        vec![
            Marginal {
                quantity: dec!(10),
                amount: dec!(20)
            },
            Marginal {
                quantity: dec!(-6),
                amount: dec!(-12)
            },
            Marginal {
                quantity: dec!(0),
                amount: dec!(0)
            },
        ]
    );
    assert_eq!(
        (rated.total_quantity, rated.total_amount),
        (dec!(4), dec!(8))
    );
}

#[test]
fn rate_sequence_volume_crossing_into_cheaper_tier() {
    let events = [dec!(999), dec!(1), dec!(0.000001)].map(Observation::value);
    let rated = rate_sequence(&volume(), Aggregation::Sum, events).unwrap();
    let amounts: Vec<Decimal> = rated.marginals.iter().map(|m| m.amount).collect();
    assert_eq!(amounts, vec![dec!(509.5), dec!(0.5), dec!(-84.9999996)]);
    assert_eq!(rated.total_amount, dec!(425.0000004));
}

#[test]
fn rate_sequence_validates_even_without_events() {
    let model = ChargeModel::Volume { tiers: vec![] };
    let error = rate_sequence(&model, Aggregation::Count, []).unwrap_err();
    assert_eq!(
        error,
        RatingError::InvalidChargeModel(ChargeModelError::NoTiers)
    );
    assert_eq!(error.code(), "no_tiers");

    let empty = rate_sequence(&graduated(), Aggregation::Count, []).unwrap();
    assert_eq!(
        (
            empty.marginals.len(),
            empty.total_quantity,
            empty.total_amount
        ),
        (0, dec!(0), dec!(0))
    );
}

// ---- arithmetic limits ------------------------------------------------------------

#[test]
fn overflow_is_an_error_not_a_panic() {
    let model = ChargeModel::PerUnit {
        unit_price: dec!(2),
    };
    assert_eq!(
        model.price(Decimal::MAX).unwrap_err().code(),
        "arithmetic_overflow"
    );

    let mut state = SegmentState::new(Aggregation::Sum);
    state.observe(Observation::value(Decimal::MAX)).unwrap();
    assert_eq!(
        state.observe(Observation::value(dec!(1))).unwrap_err(),
        RatingError::Overflow
    );
    assert_eq!(state.quantity(), Decimal::MAX);
}

#[test]
fn results_that_would_be_rounded_are_errors() {
    // 14 + 15 decimals need scale 29 > 28: rust_decimal would round.
    let model = ChargeModel::PerUnit {
        unit_price: dec!(0.00000000000001),
    };
    assert_eq!(
        model.price(dec!(0.000000000000001)).unwrap_err().code(),
        "precision_exceeded"
    );
    // A sum needing 29 significant digits would be rounded as well.
    let mut state = SegmentState::new(Aggregation::Sum);
    state
        .observe(Observation::value(dec!(10000000000000000000000000000)))
        .unwrap();
    assert_eq!(
        state.observe(Observation::value(dec!(0.1))).unwrap_err(),
        RatingError::PrecisionExceeded
    );
}

#[test]
fn error_codes_are_stable() {
    let codes = [
        RatingError::NegativeQuantity { quantity: dec!(-1) }.code(),
        RatingError::NegativeValue { value: dec!(-1) }.code(),
        RatingError::ObservationMismatch {
            aggregation: Aggregation::Sum,
            observation: "occurrence",
        }
        .code(),
        RatingError::DistinctValueNeedsSet.code(),
        RatingError::Overflow.code(),
        RatingError::PrecisionExceeded.code(),
        RatingError::from(ChargeModelError::LastTierNotOpen).code(),
    ];
    assert_eq!(
        codes,
        [
            "negative_quantity",
            "negative_value",
            "observation_mismatch",
            "distinct_value_needs_set",
            "arithmetic_overflow",
            "precision_exceeded",
            "last_tier_not_open",
        ]
    );
}
