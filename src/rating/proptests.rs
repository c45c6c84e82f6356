//! Property tests: for random tier tables and random usage split into random
//! events, the marginal amounts add up to `price(final quantity)` exactly
//! (Decimal `==`, no tolerance), for every model and every aggregation; and
//! breakdowns add up to the price.

use proptest::prelude::*;
use rust_decimal::Decimal;

use super::*;
use crate::meter::Aggregation;

/// Decimals used in generated prices, bounds and quantities.
const MAX_DECIMALS: u32 = 6;
/// Bounded tiers before the open last one.
const MAX_BOUNDED_TIERS: usize = 6;
/// Largest tier width, unit price and flat fee, in units of 10^-6.
const MAX_TIER_WIDTH_MICROS: i64 = 2_000_000_000; // 2000 units
const MAX_UNIT_PRICE_MICROS: i64 = 100_000_000; // 100 per unit
const MAX_FLAT_FEE_MICROS: i64 = 1_000_000_000; // 1000
/// Largest generated total quantity (10,000 units), so tables of up to six
/// 2000-unit tiers are crossed both partway and completely.
const MAX_QUANTITY_MICROS: i64 = 10_000_000_000;
const MAX_EVENTS: usize = 50;

/// A decimal in `[0, max_micros / 10^6]` with 0 to 6 decimals (the mantissa is
/// truncated to the chosen number of decimals).
fn decimal(max_micros: i64) -> impl Strategy<Value = Decimal> {
    (0..=max_micros, 0..=MAX_DECIMALS).prop_map(|(micros, decimals)| {
        let drop = 10i64.pow(MAX_DECIMALS - decimals);
        Decimal::new(micros / drop, decimals)
    })
}

fn positive_decimal(max_micros: i64) -> impl Strategy<Value = Decimal> {
    decimal(max_micros).prop_map(|d| {
        if d.is_zero() {
            Decimal::new(1, MAX_DECIMALS)
        } else {
            d
        }
    })
}

fn tier_table() -> impl Strategy<Value = Vec<Tier>> {
    let tier = || {
        (
            positive_decimal(MAX_TIER_WIDTH_MICROS),
            decimal(MAX_UNIT_PRICE_MICROS),
            proptest::option::of(decimal(MAX_FLAT_FEE_MICROS)),
        )
    };
    (
        proptest::collection::vec(tier(), 0..=MAX_BOUNDED_TIERS),
        tier(),
    )
        .prop_map(|(bounded, (_, price, fee))| {
            // Increasing bounds: each tier's bound is the previous one plus a positive width.
            let mut bound = Decimal::ZERO;
            let mut tiers: Vec<Tier> = bounded
                .into_iter()
                .map(|(width, unit_price, flat_fee)| {
                    bound += width;
                    Tier {
                        up_to: Some(bound),
                        unit_price,
                        flat_fee,
                    }
                })
                .collect();
            tiers.push(Tier {
                up_to: None,
                unit_price: price,
                flat_fee: fee,
            });
            tiers
        })
}

fn charge_model() -> impl Strategy<Value = ChargeModel> {
    prop_oneof![
        decimal(MAX_UNIT_PRICE_MICROS).prop_map(|unit_price| ChargeModel::PerUnit { unit_price }),
        tier_table().prop_map(|tiers| ChargeModel::Graduated { tiers }),
        tier_table().prop_map(|tiers| ChargeModel::Volume { tiers }),
        (
            positive_decimal(MAX_TIER_WIDTH_MICROS),
            decimal(MAX_FLAT_FEE_MICROS),
            prop_oneof![Just(Decimal::ZERO), decimal(MAX_TIER_WIDTH_MICROS)],
        )
            .prop_map(|(size, price, free_units)| ChargeModel::Package {
                size,
                price,
                free_units,
            }),
        // Rates of at most 100% with up to 6 decimals, on the same bounds.
        tier_table().prop_map(|tiers| ChargeModel::GraduatedPercentage {
            tiers: tiers
                .into_iter()
                .map(|t| PercentageTier {
                    up_to: t.up_to,
                    rate: t.unit_price,
                    flat_fee: t.flat_fee,
                })
                .collect(),
        }),
    ]
}

/// Quantities at which a model's price changes shape: tier bounds, free units
/// and package multiples. Used to aim generated quantities at boundaries.
fn boundaries(model: &ChargeModel) -> Vec<Decimal> {
    match model {
        ChargeModel::PerUnit { .. } => vec![],
        ChargeModel::Graduated { tiers } | ChargeModel::Volume { tiers } => {
            tiers.iter().filter_map(|tier| tier.up_to).collect()
        }
        ChargeModel::GraduatedPercentage { tiers } => {
            tiers.iter().filter_map(|tier| tier.up_to).collect()
        }
        ChargeModel::Percentage(_) | ChargeModel::Dynamic { .. } => vec![],
        ChargeModel::Package {
            size, free_units, ..
        } => vec![
            *free_units,
            *free_units + *size,
            *free_units + *size * Decimal::from(3),
        ],
    }
}

/// A positive total quantity: random, or a boundary of the model -1e-6/0/+1e-6.
fn total_quantity(model: &ChargeModel) -> impl Strategy<Value = Decimal> {
    let step = Decimal::new(1, MAX_DECIMALS);
    let near_boundary: Vec<Decimal> = boundaries(model)
        .into_iter()
        .flat_map(|b| [b - step, b, b + step])
        .filter(|q| *q > Decimal::ZERO)
        .collect();
    let random = positive_decimal(MAX_QUANTITY_MICROS).boxed();
    if near_boundary.is_empty() {
        random
    } else {
        prop_oneof![random, proptest::sample::select(near_boundary)].boxed()
    }
}

/// Splits `total` into `parts` non-negative pieces at random cut points, all
/// multiples of 10^-6 (`total` has at most 6 decimals).
fn split(total: Decimal, cuts: &[u64]) -> Vec<Decimal> {
    let scale = Decimal::new(1, MAX_DECIMALS);
    let mut micros = total;
    micros.rescale(MAX_DECIMALS);
    let total_micros = u64::try_from(micros.mantissa()).unwrap();
    let mut points: Vec<u64> = cuts.iter().map(|c| c % (total_micros + 1)).collect();
    points.push(0);
    points.push(total_micros);
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| Decimal::from(w[1] - w[0]) * scale)
        .collect()
}

fn model_and_total() -> impl Strategy<Value = (ChargeModel, Decimal)> {
    charge_model().prop_flat_map(|model| {
        let total = total_quantity(&model);
        (Just(model), total)
    })
}

/// Asserts the telescoping property for one rated sequence.
fn assert_telescopes(model: &ChargeModel, rated: &RatedSequence, expected_quantity: Decimal) {
    let price = model.price(expected_quantity).unwrap();
    let marginal_sum = rated.marginals.iter().map(|m| m.amount).sum::<Decimal>();
    assert_eq!(rated.total_quantity, expected_quantity);
    assert_eq!(marginal_sum, price, "{model:?} at {expected_quantity}");
    assert_eq!(rated.total_amount, price);
    let quantity_sum = rated.marginals.iter().map(|m| m.quantity).sum::<Decimal>();
    assert_eq!(quantity_sum, expected_quantity);
}

/// The design doc's formulas, written independently of `charge.rs`: the oracle
/// for `price`. Plain operators are fine here; the generated values are small.
fn reference_price(model: &ChargeModel, q: Decimal) -> Decimal {
    let fee = |tier: &Tier| tier.flat_fee.unwrap_or_default();
    match model {
        ChargeModel::PerUnit { unit_price } => q * unit_price,
        ChargeModel::Graduated { tiers } => {
            let mut lower = Decimal::ZERO;
            let mut total = Decimal::ZERO;
            for tier in tiers {
                if q > lower {
                    let upper = tier.up_to.unwrap_or(q).min(q);
                    total += (upper - lower) * tier.unit_price + fee(tier);
                }
                lower = tier.up_to.unwrap_or(lower);
            }
            total
        }
        ChargeModel::Volume { tiers } => {
            if q.is_zero() {
                return Decimal::ZERO;
            }
            // Bounds are inclusive: the tier index is the number of bounds below q.
            let index = tiers
                .iter()
                .filter(|tier| tier.up_to.is_some_and(|up_to| up_to < q))
                .count();
            q * tiers[index].unit_price + fee(&tiers[index])
        }
        ChargeModel::Package {
            size,
            price,
            free_units,
        } => {
            let billable = (q - free_units).max(Decimal::ZERO);
            (billable / size).ceil() * price
        }
        ChargeModel::GraduatedPercentage { tiers } => {
            let mut lower = Decimal::ZERO;
            let mut total = Decimal::ZERO;
            for tier in tiers {
                if q > lower {
                    let upper = tier.up_to.unwrap_or(q).min(q);
                    total += (upper - lower) * tier.rate / Decimal::ONE_HUNDRED
                        + tier.flat_fee.unwrap_or_default();
                }
                lower = tier.up_to.unwrap_or(lower);
            }
            total
        }
        ChargeModel::Percentage(_) | ChargeModel::Dynamic { .. } => {
            unreachable!("per-event models are not generated here")
        }
    }
}

proptest! {
    #[test]
    fn price_matches_reference_formula((model, q) in model_and_total()) {
        prop_assert_eq!(model.price(q).unwrap(), reference_price(&model, q), "{:?} at {}", model, q);
    }

    #[test]
    fn generated_models_are_valid(model in charge_model()) {
        prop_assert_eq!(model.validate(), Ok(()));
    }

    #[test]
    fn sum_marginals_add_up_to_price_of_total(
        (model, total) in model_and_total(),
        cuts in proptest::collection::vec(any::<u64>(), 0..MAX_EVENTS),
    ) {
        let parts = split(total, &cuts);
        prop_assert_eq!(parts.iter().sum::<Decimal>(), total);
        let rated = rate_sequence(&model, Aggregation::Sum, parts.into_iter().map(Observation::value)).unwrap();
        assert_telescopes(&model, &rated, total);
    }

    #[test]
    fn count_marginals_add_up_to_price_of_count(model in charge_model(), events in 1..=MAX_EVENTS) {
        let observations = std::iter::repeat_n(Observation::Occurrence, events);
        let rated = rate_sequence(&model, Aggregation::Count, observations).unwrap();
        assert_telescopes(&model, &rated, Decimal::from(events));
    }

    #[test]
    fn max_marginals_add_up_to_price_of_max(
        model in charge_model(),
        values in proptest::collection::vec(decimal(MAX_QUANTITY_MICROS), 1..=MAX_EVENTS),
    ) {
        let expected = values.iter().copied().max().unwrap();
        let rated = rate_sequence(&model, Aggregation::Max, values.into_iter().map(Observation::value)).unwrap();
        assert_telescopes(&model, &rated, expected);
    }

    #[test]
    fn unique_count_marginals_add_up_to_price_of_distinct_count(
        model in charge_model(),
        values in proptest::collection::vec(0u8..20, 1..=MAX_EVENTS),
        caller_deduplicates in any::<bool>(),
    ) {
        let mut seen = std::collections::HashSet::new();
        let observations: Vec<Observation> = values
            .iter()
            .map(|v| {
                let is_new = seen.insert(*v);
                if caller_deduplicates {
                    Observation::distinct(is_new)
                } else {
                    Observation::distinct_value(v.to_string())
                }
            })
            .collect();
        let rated = rate_sequence(&model, Aggregation::UniqueCount, observations).unwrap();
        assert_telescopes(&model, &rated, Decimal::from(seen.len()));
    }

    #[test]
    fn latest_marginals_add_up_to_price_of_latest_value(
        model in charge_model(),
        // Few distinct times and ids so ties, late arrivals and redeliveries occur.
        events in proptest::collection::vec((decimal(MAX_QUANTITY_MICROS), 0i64..10, 0u8..4), 1..=MAX_EVENTS),
    ) {
        // Independent oracle: the value of the first event seen with the greatest key.
        let mut best: Option<((i64, String), Decimal)> = None;
        for (value, time, id) in &events {
            let key = (*time, id.to_string());
            if best.as_ref().is_none_or(|(best_key, _)| key > *best_key) {
                best = Some((key, *value));
            }
        }
        let expected = best.unwrap().1;
        let observations = events.iter().map(|(value, time, id)| Observation::latest(*value, *time, id.to_string()));
        let rated = rate_sequence(&model, Aggregation::Latest, observations).unwrap();
        assert_telescopes(&model, &rated, expected);
    }

    #[test]
    fn breakdown_adds_up_to_price((model, quantity) in model_and_total()) {
        let lines = model.breakdown(quantity).unwrap();
        let price = model.price(quantity).unwrap();
        prop_assert_eq!(lines.iter().map(|line| line.amount).sum::<Decimal>(), price);
        for line in &lines {
            prop_assert_eq!(line.amount, line.quantity * line.unit_price + line.flat_fee);
        }
        // Tiers are listed in order, each at most once.
        prop_assert!(lines.windows(2).all(|w| w[0].tier_index < w[1].tier_index));
        // Graduated lines split the quantity across tiers.
        if let ChargeModel::Graduated { .. } = model {
            prop_assert_eq!(lines.iter().map(|line| line.quantity).sum::<Decimal>(), quantity);
        }
    }

    #[test]
    fn price_is_zero_at_zero_and_never_negative((model, quantity) in model_and_total()) {
        prop_assert_eq!(model.price(Decimal::ZERO).unwrap(), Decimal::ZERO);
        prop_assert!(model.price(quantity).unwrap() >= Decimal::ZERO);
    }

    #[test]
    fn graduated_and_per_unit_prices_never_fall((model, q) in model_and_total(), extra in decimal(MAX_TIER_WIDTH_MICROS)) {
        // Volume may fall at a tier bound; the others are monotone.
        if !matches!(model, ChargeModel::Volume { .. }) {
            prop_assert!(model.price(q + extra).unwrap() >= model.price(q).unwrap());
        }
    }
}
