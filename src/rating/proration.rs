//! Proration (opt-in per charge, `prorate = true`): a seat-like quantity (a
//! LATEST or MAX meter) priced for the part of the billing period it held.
//!
//! The segment keeps the quantity's *timeline*: every observation, in event
//! order ([`EventKey`]). Walking it, the quantity `q_i` after observation
//! `i` (LATEST: its value; MAX: the running maximum) changes the full-period
//! price by `price(q_i) - price(q_{i-1})` (`q_0 = 0`), and that difference
//! is charged for the remaining fraction of the service interval:
//!
//! ```text
//! prorated_i = (price(q_i) - price(q_{i-1})) * (usage_end - t_i) / (period_end - period_start)
//! ```
//!
//! in whole seconds, `t_i` the event time (clamped into the interval) and
//! `usage_end` the period's end or the subscription's end if sooner. The
//! period's local-midnight bounds come from the subscription's time zone, so
//! a month of a DST change has its true number of seconds. A fall in the
//! quantity gives a negative difference: the remaining fraction is credited.
//! Each `prorated_i` is rounded half-even to [`PRORATION_SCALE`] decimals,
//! the only rounding before posting (a fraction of seconds is rarely a
//! finite decimal).
//!
//! Worked example: a 30-day period (2,592,000 s) at 10.00 per seat; 5 seats
//! from the start, 8 seats from day 11 00:00 (1,728,000 s left):
//! `5 * 10 * 1 + (80 - 50) * 1728000 / 2592000 = 50 + 20 = 70.00`.
//!
//! An event is rated by the change it makes to the period's prorated total,
//! so a late event takes its place in the timeline and the marginal amounts
//! of a segment add up to the total of its timeline whatever the arrival
//! order. The timeline is bounded by [`MAX_PRORATED_CHANGES`].

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::percentage::Charge;
use super::{mul, sub, ChargeModel, EventKey, Parts, RatingError};
use crate::meter::Aggregation;

/// Decimals of a prorated amount.
pub const PRORATION_SCALE: u32 = 12;
/// Most observations one prorated segment keeps per period.
pub const MAX_PRORATED_CHANGES: usize = 1_000;
const MICROS_PER_SECOND: i64 = 1_000_000;

/// Names of the parts of a prorated charge.
pub mod part {
    /// `price(final quantity)`: what the period would cost unprorated.
    pub const FULL_PERIOD_AMOUNT: &str = "full_period_amount";
    /// The prorated total minus the full-period amount (<= 0 for a rising
    /// quantity).
    pub const PRORATION_ADJUSTMENT: &str = "proration_adjustment";
}

/// The seconds a prorated charge is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceInterval {
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// The subscription's end when it ends within the period.
    pub subscription_end: Option<DateTime<Utc>>,
}

impl ServiceInterval {
    fn seconds(&self) -> (i64, i64, i64) {
        let start = self.period_start.timestamp();
        let end = self.period_end.timestamp();
        let usage_end = self
            .subscription_end
            .map_or(end, |e| e.timestamp().clamp(start, end));
        (start, end, usage_end)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Point {
    key: EventKey,
    #[serde(with = "rust_decimal::serde::str")]
    value: Decimal,
}

/// The observations of a prorated segment, in event order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeline {
    points: Vec<Point>,
}

impl Timeline {
    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Rates one observation: the change it makes to the prorated total.
    /// On error the timeline is unchanged. A key already in the timeline
    /// (a redelivery) changes nothing.
    pub fn rate(
        &mut self,
        model: &ChargeModel,
        aggregation: Aggregation,
        interval: &ServiceInterval,
        key: EventKey,
        value: Decimal,
    ) -> Result<Charge, RatingError> {
        if value < Decimal::ZERO {
            return Err(RatingError::NegativeValue { value });
        }
        let position = match self.points.binary_search_by(|p| p.key.cmp(&key)) {
            Ok(_) => return Ok(Charge::default()),
            Err(position) => position,
        };
        if self.points.len() >= MAX_PRORATED_CHANGES {
            return Err(RatingError::ProrationHistoryFull {
                max: MAX_PRORATED_CHANGES,
            });
        }
        let before = total(model, aggregation, interval, &self.points)?;
        // In place; taken out again if pricing fails (state unchanged).
        self.points.insert(position, Point { key, value });
        let charge = total(model, aggregation, interval, &self.points)
            .and_then(|after| after.minus(&before));
        if charge.is_err() {
            self.points.remove(position);
        }
        charge
    }
}

impl Timeline {
    /// The segment's quantity the timeline gives: MAX the greatest value,
    /// LATEST the value of the last point in event order and its key; 0
    /// when empty.
    pub fn quantity(&self, aggregation: Aggregation) -> (Decimal, Option<EventKey>) {
        match aggregation {
            Aggregation::Max => {
                let max = self.points.iter().map(|p| p.value).max();
                (max.unwrap_or(Decimal::ZERO), None)
            }
            _ => self
                .points
                .last()
                .map_or((Decimal::ZERO, None), |p| (p.value, Some(p.key.clone()))),
        }
    }

    /// Takes back the observation `key`: the change its removal makes to
    /// the prorated total, so the segment's amounts add up to the timeline
    /// of the others. `None` when the timeline does not hold it. On error
    /// the timeline is unchanged.
    pub fn retract(
        &mut self,
        model: &ChargeModel,
        aggregation: Aggregation,
        interval: &ServiceInterval,
        key: &EventKey,
    ) -> Result<Option<Charge>, RatingError> {
        let Ok(position) = self.points.binary_search_by(|p| p.key.cmp(key)) else {
            return Ok(None);
        };
        let before = total(model, aggregation, interval, &self.points)?;
        let removed = self.points.remove(position);
        let charge = total(model, aggregation, interval, &self.points)
            .and_then(|after| after.minus(&before));
        if charge.is_err() {
            self.points.insert(position, removed);
        }
        charge.map(Some)
    }
}

/// The prorated total of `points` (see the module docs), with its parts.
fn total(
    model: &ChargeModel,
    aggregation: Aggregation,
    interval: &ServiceInterval,
    points: &[Point],
) -> Result<Charge, RatingError> {
    let (start, end, usage_end) = interval.seconds();
    let period_s = end.saturating_sub(start).max(1);
    let mut quantity = Decimal::ZERO;
    let mut price_before = Decimal::ZERO;
    let mut amount = Decimal::ZERO;
    for point in points {
        quantity = match aggregation {
            Aggregation::Max => quantity.max(point.value),
            _ => point.value,
        };
        let price = model.price(quantity)?;
        let t = point
            .key
            .event_time
            .div_euclid(MICROS_PER_SECOND)
            .clamp(start, usage_end);
        let remaining_s = Decimal::from(usage_end.saturating_sub(t));
        let change = mul(sub(price, price_before)?, remaining_s)?;
        amount = super::add(amount, divide_rounded(change, period_s)?)?;
        price_before = price;
    }
    let mut parts = Parts::new();
    if !price_before.is_zero() {
        parts.insert(part::FULL_PERIOD_AMOUNT.to_owned(), price_before);
    }
    let adjustment = sub(amount, price_before)?;
    if !adjustment.is_zero() {
        parts.insert(part::PRORATION_ADJUSTMENT.to_owned(), adjustment);
    }
    Ok(Charge { amount, parts })
}

/// `x / divisor` rounded half-even to [`PRORATION_SCALE`] decimals, exactly
/// (integer arithmetic on the mantissa, no intermediate rounding).
pub fn divide_rounded(x: Decimal, divisor: i64) -> Result<Decimal, RatingError> {
    if divisor <= 0 {
        return Err(RatingError::Overflow);
    }
    let mantissa = x.mantissa();
    let scale = x.scale();
    let ten = |power: u32| 10i128.checked_pow(power).ok_or(RatingError::Overflow);
    let (numerator, denominator) = if scale <= PRORATION_SCALE {
        let factor = ten(PRORATION_SCALE.saturating_sub(scale))?;
        (
            mantissa
                .checked_mul(factor)
                .ok_or(RatingError::PrecisionExceeded)?,
            i128::from(divisor),
        )
    } else {
        let factor = ten(scale.saturating_sub(PRORATION_SCALE))?;
        (
            mantissa,
            i128::from(divisor)
                .checked_mul(factor)
                .ok_or(RatingError::Overflow)?,
        )
    };
    let quotient = numerator
        .checked_div(denominator)
        .ok_or(RatingError::Overflow)?;
    let remainder = numerator
        .checked_rem(denominator)
        .ok_or(RatingError::Overflow)?;
    let twice = remainder.unsigned_abs().saturating_mul(2);
    let denominator = denominator.unsigned_abs();
    let away = twice > denominator || (twice == denominator && quotient % 2 != 0);
    let rounded = if away {
        quotient
            .checked_add(numerator.signum())
            .ok_or(RatingError::Overflow)?
    } else {
        quotient
    };
    Decimal::try_from_i128_with_scale(rounded, PRORATION_SCALE).map_err(|_| RatingError::Overflow)
}
