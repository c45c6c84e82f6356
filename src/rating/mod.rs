//! Rating: turning cumulative usage into money.
//!
//! A *rating segment* is one customer × meter × group × billing period. Every
//! event of a segment moves its cumulative quantity (see [`SegmentState`]),
//! and a [`ChargeModel`] prices a cumulative quantity. The amount an event
//! contributes is its *marginal amount*:
//!
//! ```text
//! marginal = price(quantity after the event) - price(quantity before it)
//! ```
//!
//! Pricing the cumulative quantity, never the event in isolation, is what
//! makes graduated and volume tiers, free allowances and packages come out
//! right however the usage is split into events, and makes the amounts of a
//! period telescope: the marginal amounts of a segment always add up to
//! exactly `price(final quantity)`. A marginal amount may be negative (a LATEST
//! meter falling, a volume quantity crossing into a cheaper tier); that is the
//! correction, not an error.
//!
//! Rules that hold throughout the module:
//!
//! * Money and quantities are [`Decimal`] end to end; there is no binary
//!   floating point anywhere, and JSON carries decimals as strings.
//! * All arithmetic is checked. `rust_decimal` silently *rounds* a result that
//!   needs more than 28 significant digits instead of failing; the helpers
//!   below treat that as an error too ([`RatingError::PrecisionExceeded`]),
//!   because a rounded intermediate would break the exact telescoping above.
//! * Amounts are not rounded to currency units here; that happens at posting.
//! * Nothing here panics on bad input; it returns a [`RatingError`] whose
//!   [`code`](RatingError::code) is a stable snake_case string.
//!
//! The module is usable on its own: [`rate_sequence`] rates a whole sequence
//! of observations in memory, while a stream processor keeps one serialized
//! [`SegmentState`] per segment in its store and calls
//! [`SegmentState::observe`] and [`ChargeModel::marginal`] per event.
//!
//! Files: `charge.rs` (charge models, validation, pricing, breakdown),
//! `percentage.rs` (the per-transaction take rate and its allowance window),
//! `proration.rs` (prorated seat-like quantities),
//! `state.rs` (cumulative segment state per aggregation), this file (errors,
//! exact arithmetic, the standalone API); `tests.rs` (hand-computed cases) and
//! `proptests.rs` (properties) are test-only.

// Non-test code must not round silently: no float arithmetic, no unchecked
// arithmetic operators (no panics: the crate's lints, Cargo.toml [lints]).
#![cfg_attr(
    not(test),
    deny(clippy::float_arithmetic, clippy::arithmetic_side_effects)
)]

mod charge;
mod percentage;
mod proration;
mod state;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use charge::{
    dynamic_amount, ChargeModel, ChargeModelError, PercentageTier, Pricing, Tier, TierLine,
    MAX_TIERS,
};
pub use percentage::{
    AllowanceMark, AllowanceRetraction, AllowanceWindow, Charge, PercentageModel,
    MAX_ALLOWANCE_WINDOW_EVENTS, MAX_FREE_EVENTS,
};
pub use proration::{
    divide_rounded, ServiceInterval, Timeline, MAX_PRORATED_CHANGES, PRORATION_SCALE,
};

/// Names of the parts a charge is explained by on an invoice line.
pub mod parts {
    pub use super::percentage::part as percentage;
    pub use super::proration::part as proration;
}

/// An additive explanation of an amount: named quantities and amounts
/// (`tier_0_amount`, `free_events`, `percentage_fee`, ...) that add up
/// across events like the amounts do, so a window's parts are the sum of
/// its events' parts and an invoice line can show them.
pub type Parts = std::collections::BTreeMap<String, Decimal>;

/// Adds `other` into `into`, part by part.
pub fn add_parts(into: &mut Parts, other: &Parts) -> Result<(), RatingError> {
    for (name, value) in other {
        let slot = into.entry(name.clone()).or_insert(Decimal::ZERO);
        *slot = add(*slot, *value)?;
    }
    into.retain(|_, v| !v.is_zero());
    Ok(())
}

/// `after - before`, part by part; parts that did not change are left out.
pub fn parts_delta(after: &Parts, before: &Parts) -> Result<Parts, RatingError> {
    let mut delta = after.clone();
    for (name, value) in before {
        let slot = delta.entry(name.clone()).or_insert(Decimal::ZERO);
        *slot = sub(*slot, *value)?;
    }
    delta.retain(|_, v| !v.is_zero());
    Ok(delta)
}
pub use state::{EventKey, InMemorySegment, Observation, QuantityChange, SegmentState};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::meter::Aggregation;

/// Why a quantity could not be observed or priced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatingError {
    /// The charge model failed validation; nothing is priced with an invalid table.
    #[error("invalid charge model: {0}")]
    InvalidChargeModel(#[from] ChargeModelError),
    /// Prices are defined for cumulative quantities >= 0 only.
    #[error("quantity {quantity} is negative")]
    NegativeQuantity { quantity: Decimal },
    /// Usage values are non-negative; a refund or credit is not usage.
    #[error("event value {value} is negative")]
    NegativeValue { value: Decimal },
    /// The observation does not carry what the segment's aggregation needs
    /// (e.g. a value-less occurrence for a SUM meter).
    #[error("a {observation} observation cannot be applied to a {aggregation:?} segment")]
    ObservationMismatch {
        aggregation: Aggregation,
        observation: &'static str,
    },
    /// A distinct *value* needs the in-memory set of [`InMemorySegment`]; a
    /// bare [`SegmentState`] only accepts [`Observation::Distinct`], whose
    /// `is_new` the caller determined from its own store.
    #[error("a distinct_value observation needs an InMemorySegment (SegmentState takes Distinct {{ is_new }})")]
    DistinctValueNeedsSet,
    /// A result does not fit in a Decimal.
    #[error("arithmetic overflow")]
    Overflow,
    /// A result needs more than the 28 significant digits a Decimal holds and
    /// would have been rounded.
    #[error("result needs more than 28 significant digits and would be rounded")]
    PrecisionExceeded,
    /// A per-event model (percentage, dynamic) has no price of a quantity.
    #[error("a {model} charge is priced per event, not from a period quantity")]
    NotCumulative { model: &'static str },
    /// A prorated segment already holds the most observations it may.
    #[error("the prorated segment already holds {max} changes this period")]
    ProrationHistoryFull { max: usize },
}

impl RatingError {
    /// Stable snake_case code for metrics, dead-letter records and API errors.
    /// An invalid charge model reports the validation error's own code.
    pub fn code(&self) -> &'static str {
        match self {
            RatingError::InvalidChargeModel(inner) => inner.code(),
            RatingError::NegativeQuantity { .. } => reasons::NEGATIVE_QUANTITY,
            RatingError::NegativeValue { .. } => reasons::NEGATIVE_VALUE,
            RatingError::ObservationMismatch { .. } => reasons::OBSERVATION_MISMATCH,
            RatingError::DistinctValueNeedsSet => reasons::DISTINCT_VALUE_NEEDS_SET,
            RatingError::Overflow => reasons::ARITHMETIC_OVERFLOW,
            RatingError::PrecisionExceeded => reasons::PRECISION_EXCEEDED,
            RatingError::NotCumulative { .. } => reasons::NOT_CUMULATIVE,
            RatingError::ProrationHistoryFull { .. } => reasons::PRORATION_HISTORY_FULL,
        }
    }
}

/// The codes of [`RatingError`] and [`ChargeModelError`] (see
/// [`crate::reason`]).
pub mod reasons {
    crate::reason_codes! {
        NEGATIVE_QUANTITY => "negative_quantity",
            "A cumulative quantity to price is negative.";
        NEGATIVE_VALUE => "negative_value",
            "An event value is negative (a refund or credit is not usage).";
        OBSERVATION_MISMATCH => "observation_mismatch",
            "An observation does not carry what the segment's aggregation needs.";
        DISTINCT_VALUE_NEEDS_SET => "distinct_value_needs_set",
            "A distinct value was given to a segment without its in-memory set.";
        ARITHMETIC_OVERFLOW => "arithmetic_overflow",
            "A rating result does not fit in a decimal.";
        PRECISION_EXCEEDED => "precision_exceeded",
            "A rating result needs more than 28 significant digits and would be rounded.";
        NO_TIERS => "no_tiers",
            "A tiered charge model has no tier.";
        TOO_MANY_TIERS => "too_many_tiers",
            "A charge model has more tiers than the maximum.";
        TIER_BOUND_NOT_POSITIVE => "tier_bound_not_positive",
            "A tier's up_to is not greater than 0.";
        TIER_BOUNDS_NOT_INCREASING => "tier_bounds_not_increasing",
            "A tier's up_to is not greater than the previous tier's.";
        OPEN_TIER_NOT_LAST => "open_tier_not_last",
            "A tier without up_to is not the last tier.";
        LAST_TIER_NOT_OPEN => "last_tier_not_open",
            "The last tier has an up_to.";
        NEGATIVE_PRICE => "negative_price",
            "A price or fee of a charge model is negative.";
        PACKAGE_SIZE_NOT_POSITIVE => "package_size_not_positive",
            "A package model's package size is not greater than 0.";
        NEGATIVE_FREE_UNITS => "negative_free_units",
            "A package or percentage model's free_units is negative.";
        PERCENTAGE_OUT_OF_RANGE => "percentage_out_of_range",
            "A percentage rate is outside [0, 100].";
        MIN_ABOVE_MAX => "min_above_max",
            "A percentage model's min_per_event is greater than its max_per_event.";
        TOO_MANY_FREE_EVENTS => "too_many_free_events",
            "A percentage model grants more free events than the maximum (10,000).";
        INVALID_AMOUNT_PROPERTY => "invalid_amount_property",
            "A dynamic model's amount_property or currency_property is not a valid JSONPath.";
        MODEL_AGGREGATION_MISMATCH => "model_aggregation_mismatch",
            "The charge model (or prorate) does not fit the meter's aggregation.";
        NOT_CUMULATIVE => "not_cumulative",
            "A per-event model (percentage, dynamic) was asked for the price of a quantity.";
        PRORATION_HISTORY_FULL => "proration_history_full",
            "A prorated segment already holds the most quantity changes a period may have (1,000).";
    }

    /// One error of each kind (an invalid charge model once per
    /// [`ChargeModelError`](super::ChargeModelError) kind), for tests that
    /// check codes against tables.
    #[cfg(test)]
    pub(crate) fn one_of_each() -> Vec<super::RatingError> {
        use super::{ChargeModelError as C, RatingError as E};
        let models = vec![
            C::NoTiers,
            C::TooManyTiers { count: 2, max: 1 },
            C::TierBoundNotPositive { tier: 0 },
            C::TierBoundsNotIncreasing { tier: 1 },
            C::OpenTierNotLast { tier: 0 },
            C::LastTierNotOpen,
            C::NegativePrice { field: "x".into() },
            C::PackageSizeNotPositive,
            C::NegativeFreeUnits,
            C::PercentageOutOfRange {
                field: "rate".into(),
            },
            C::MinAboveMax {
                min: rust_decimal::Decimal::TWO,
                max: rust_decimal::Decimal::ONE,
            },
            C::TooManyFreeEvents { count: 2, max: 1 },
            C::InvalidProperty {
                field: "amount_property".into(),
                problem: "x".into(),
            },
            C::AggregationMismatch { detail: "x".into() },
        ];
        let mut all = vec![
            E::NegativeQuantity {
                quantity: rust_decimal::Decimal::NEGATIVE_ONE,
            },
            E::NegativeValue {
                value: rust_decimal::Decimal::NEGATIVE_ONE,
            },
            E::ObservationMismatch {
                aggregation: crate::meter::Aggregation::Sum,
                observation: "occurrence",
            },
            E::DistinctValueNeedsSet,
            E::Overflow,
            E::PrecisionExceeded,
            E::NotCumulative { model: "dynamic" },
            E::ProrationHistoryFull { max: 1 },
        ];
        // A new kind fails to compile here: add it to the lists above.
        for m in &models {
            match m {
                C::NoTiers
                | C::TooManyTiers { .. }
                | C::TierBoundNotPositive { .. }
                | C::TierBoundsNotIncreasing { .. }
                | C::OpenTierNotLast { .. }
                | C::LastTierNotOpen
                | C::NegativePrice { .. }
                | C::PackageSizeNotPositive
                | C::NegativeFreeUnits
                | C::PercentageOutOfRange { .. }
                | C::MinAboveMax { .. }
                | C::TooManyFreeEvents { .. }
                | C::InvalidProperty { .. }
                | C::AggregationMismatch { .. } => {}
            }
        }
        for e in &all {
            match e {
                E::InvalidChargeModel(_)
                | E::NegativeQuantity { .. }
                | E::NegativeValue { .. }
                | E::ObservationMismatch { .. }
                | E::DistinctValueNeedsSet
                | E::Overflow
                | E::PrecisionExceeded
                | E::NotCumulative { .. }
                | E::ProrationHistoryFull { .. } => {}
            }
        }
        all.extend(models.into_iter().map(E::InvalidChargeModel));
        all
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn every_code_is_in_the_table() {
            let all = super::one_of_each();
            assert_eq!(all.len(), super::ALL.len());
            for e in all {
                assert!(super::CODES.contains(&e.code()), "{}", e.code());
            }
        }
    }
}

/// What one observation contributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Marginal {
    /// Change of the cumulative quantity (after - before); may be negative for LATEST.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// `price(after) - price(before)`, unrounded; may be negative.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// The result of [`rate_sequence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatedSequence {
    /// One entry per observation, in input order.
    pub marginals: Vec<Marginal>,
    /// The cumulative quantity after the last observation.
    #[serde(with = "rust_decimal::serde::str")]
    pub total_quantity: Decimal,
    /// The sum of the marginal amounts, which is exactly `price(total_quantity)`.
    #[serde(with = "rust_decimal::serde::str")]
    pub total_amount: Decimal,
}

/// Rates a sequence of observations of one segment, starting from an empty
/// period, entirely in memory.
///
/// UNIQUE_COUNT may use either [`Observation::DistinctValue`] (deduplicated
/// here) or [`Observation::Distinct`] (deduplicated by the caller).
///
/// ```
/// use meterline::meter::Aggregation;
/// use meterline::rating::{rate_sequence, ChargeModel, Observation, Tier};
/// use rust_decimal_macros::dec;
///
/// // First 100 units free, then 0.50 each up to 1000, then 0.40 each.
/// let model = ChargeModel::Graduated {
///     tiers: vec![
///         Tier::bounded(dec!(100), dec!(0)),
///         Tier::bounded(dec!(1000), dec!(0.50)),
///         Tier::open(dec!(0.40)),
///     ],
/// };
/// let events = [dec!(60), dec!(60), dec!(1000)].map(Observation::value);
///
/// let rated = rate_sequence(&model, Aggregation::Sum, events)?;
///
/// let amounts: Vec<_> = rated.marginals.iter().map(|m| m.amount).collect();
/// assert_eq!(amounts, [dec!(0), dec!(10), dec!(488)]);
/// assert_eq!(rated.total_quantity, dec!(1120));
/// assert_eq!(rated.total_amount, dec!(498)); // 900 * 0.50 + 120 * 0.40
/// assert_eq!(rated.total_amount, model.price(rated.total_quantity)?);
/// # Ok::<(), meterline::rating::RatingError>(())
/// ```
pub fn rate_sequence<I>(
    model: &ChargeModel,
    aggregation: Aggregation,
    observations: I,
) -> Result<RatedSequence, RatingError>
where
    I: IntoIterator<Item = Observation>,
{
    // Validate up front so an empty sequence still reports a broken table.
    model.validate()?;
    let mut segment = InMemorySegment::new(aggregation);
    let observations = observations.into_iter();
    let mut marginals = Vec::with_capacity(observations.size_hint().0);
    let mut total_amount = Decimal::ZERO;
    for observation in observations {
        let change = segment.observe(observation)?;
        let amount = model.marginal(&change)?;
        total_amount = add(total_amount, amount)?;
        marginals.push(Marginal {
            quantity: change.delta()?,
            amount,
        });
    }
    Ok(RatedSequence {
        marginals,
        total_quantity: segment.state().quantity(),
        total_amount,
    })
}

// Exact arithmetic. `checked_*` only fails when the integer part overflows;
// when the exact result needs more than 96 bits of mantissa, rust_decimal
// lowers the scale and rounds. For a non-zero exact result the scale is
// known in advance (max of the scales for +/-, sum of the scales for *), so a
// smaller scale in the result means rounding may have happened.

/// `a + b`, exactly.
pub(crate) fn add(a: Decimal, b: Decimal) -> Result<Decimal, RatingError> {
    let sum = a.checked_add(b).ok_or(RatingError::Overflow)?;
    exact_sum(a, b, sum)
}

/// `a - b`, exactly.
pub(crate) fn sub(a: Decimal, b: Decimal) -> Result<Decimal, RatingError> {
    let difference = a.checked_sub(b).ok_or(RatingError::Overflow)?;
    exact_sum(a, b, difference)
}

fn exact_sum(a: Decimal, b: Decimal, result: Decimal) -> Result<Decimal, RatingError> {
    // With a zero operand rust_decimal returns the other operand unchanged.
    if a.is_zero() || b.is_zero() || result.scale() >= a.scale().max(b.scale()) {
        Ok(result)
    } else {
        Err(RatingError::PrecisionExceeded)
    }
}

/// `a * b`, exactly.
pub(crate) fn mul(a: Decimal, b: Decimal) -> Result<Decimal, RatingError> {
    let product = a.checked_mul(b).ok_or(RatingError::Overflow)?;
    // A zero product is exact (rust_decimal returns a plain 0).
    let exact_scale = a.scale().checked_add(b.scale());
    if a.is_zero() || b.is_zero() || Some(product.scale()) == exact_scale {
        Ok(product)
    } else {
        Err(RatingError::PrecisionExceeded)
    }
}

/// `ceil(a / b)` for `a >= 0`, `b > 0`, exactly.
pub(crate) fn ceil_div(a: Decimal, b: Decimal) -> Result<Decimal, RatingError> {
    // Decimal division rounds at 28 digits, so `(a / b).ceil()` could land on
    // the wrong side of an integer. The remainder is exact; dividing the exact
    // multiple `a - r` by `b` gives an integer, which is then verified.
    let remainder = a.checked_rem(b).ok_or(RatingError::Overflow)?;
    let multiple = sub(a, remainder)?;
    let whole = multiple.checked_div(b).ok_or(RatingError::Overflow)?;
    if !whole.fract().is_zero() || mul(whole, b)? != multiple {
        return Err(RatingError::PrecisionExceeded);
    }
    if remainder.is_zero() {
        Ok(whole)
    } else {
        add(whole, Decimal::ONE)
    }
}
