//! Charge models: how a cumulative quantity of one period is priced.
//!
//! Tier tables are shared by the graduated and volume models. Tier `i` covers
//! the quantities in `(up_to[i-1], up_to[i]]`; the first tier starts at 0 and
//! the last one is open (`up_to` absent). A tier's flat fee is charged once per
//! period, as soon as usage enters the tier (quantity > its lower bound), so
//! `price(0) = 0` for every model. Free units are a zero-priced first tier.
//!
//! Pricing and the invoice [`breakdown`](ChargeModel::breakdown) are produced
//! by one walk over the table (`for_each_line`), so the breakdown always adds
//! up to the price.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{add, ceil_div, mul, sub, QuantityChange, RatingError};

/// Upper bound on the number of tiers of one table. Real price lists have a
/// handful; the bound keeps a malformed config from making every event walk
/// a huge table.
pub const MAX_TIERS: usize = 64;

/// A charge model, as configured per price in JSON:
///
/// ```json
/// {"model": "graduated", "tiers": [
///     {"up_to": "1000", "unit_price": "0"},
///     {"up_to": "10000", "unit_price": "0.002", "flat_fee": "5"},
///     {"up_to": null, "unit_price": "0.001"}]}
/// {"model": "per_unit", "unit_price": "0.0004"}
/// {"model": "package", "size": "1000", "price": "2.50", "free_units": "500"}
/// ```
///
/// Decimals must be JSON strings: a JSON number would have passed through a
/// binary float in most producers and is rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChargeModel {
    /// `price(q) = q * unit_price`.
    PerUnit {
        #[serde(with = "rust_decimal::serde::str")]
        unit_price: Decimal,
    },
    /// Each unit is priced in the tier it falls in; the flat fee of every tier
    /// entered is charged.
    Graduated { tiers: Vec<Tier> },
    /// All units are priced at the tier the total falls in, plus that tier's
    /// flat fee only.
    Volume { tiers: Vec<Tier> },
    /// `price(q) = ceil(max(q - free_units, 0) / size) * price`.
    Package {
        #[serde(with = "rust_decimal::serde::str")]
        size: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        price: Decimal,
        #[serde(default, with = "rust_decimal::serde::str")]
        free_units: Decimal,
    },
}

/// One row of a tier table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Inclusive upper bound; `None` (absent or null) for the open last tier.
    #[serde(default, with = "crate::money::optional_decimal_str")]
    pub up_to: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Charged once per period when usage enters the tier.
    #[serde(
        default,
        with = "crate::money::optional_decimal_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub flat_fee: Option<Decimal>,
}

impl Tier {
    /// A tier ending at `up_to` (inclusive), without flat fee.
    pub fn bounded(up_to: Decimal, unit_price: Decimal) -> Self {
        Tier {
            up_to: Some(up_to),
            unit_price,
            flat_fee: None,
        }
    }

    /// The open last tier, without flat fee.
    pub fn open(unit_price: Decimal) -> Self {
        Tier {
            up_to: None,
            unit_price,
            flat_fee: None,
        }
    }

    /// The same tier with a flat fee.
    pub fn with_flat_fee(self, flat_fee: Decimal) -> Self {
        Tier {
            flat_fee: Some(flat_fee),
            ..self
        }
    }

    fn flat_fee_or_zero(&self) -> Decimal {
        self.flat_fee.unwrap_or(Decimal::ZERO)
    }
}

/// Why a charge model is invalid. [`code`](ChargeModelError::code) is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChargeModelError {
    #[error("a tiered model needs at least one tier")]
    NoTiers,
    #[error("{count} tiers exceed the maximum of {max}")]
    TooManyTiers { count: usize, max: usize },
    #[error("tier {tier}: up_to must be greater than 0")]
    TierBoundNotPositive { tier: usize },
    #[error("tier {tier}: up_to must be greater than the previous tier's")]
    TierBoundsNotIncreasing { tier: usize },
    #[error("tier {tier} is open (no up_to) but is not the last tier")]
    OpenTierNotLast { tier: usize },
    #[error("the last tier must be open (no up_to)")]
    LastTierNotOpen,
    /// `field` names the offending field, e.g. `tiers[2].flat_fee`.
    #[error("{field} must not be negative")]
    NegativePrice { field: String },
    #[error("package size must be greater than 0")]
    PackageSizeNotPositive,
    #[error("free_units must not be negative")]
    NegativeFreeUnits,
}

impl ChargeModelError {
    /// Stable snake_case code, for config validation reports and API errors.
    pub fn code(&self) -> &'static str {
        match self {
            ChargeModelError::NoTiers => super::reasons::NO_TIERS,
            ChargeModelError::TooManyTiers { .. } => super::reasons::TOO_MANY_TIERS,
            ChargeModelError::TierBoundNotPositive { .. } => {
                super::reasons::TIER_BOUND_NOT_POSITIVE
            }
            ChargeModelError::TierBoundsNotIncreasing { .. } => {
                super::reasons::TIER_BOUNDS_NOT_INCREASING
            }
            ChargeModelError::OpenTierNotLast { .. } => super::reasons::OPEN_TIER_NOT_LAST,
            ChargeModelError::LastTierNotOpen => super::reasons::LAST_TIER_NOT_OPEN,
            ChargeModelError::NegativePrice { .. } => super::reasons::NEGATIVE_PRICE,
            ChargeModelError::PackageSizeNotPositive => super::reasons::PACKAGE_SIZE_NOT_POSITIVE,
            ChargeModelError::NegativeFreeUnits => super::reasons::NEGATIVE_FREE_UNITS,
        }
    }
}

/// One line of an invoice explanation. For every line
/// `amount = quantity * unit_price + flat_fee`, and the lines of a
/// [`breakdown`](ChargeModel::breakdown) add up to the price.
///
/// `tier_index` indexes the tier table (0 for per-unit). For the package
/// model, tier 0 is the free allowance when `free_units > 0` (priced at 0, in
/// usage units) and the next index is the package line, whose `quantity` is
/// the number of packages and `unit_price` the price of one package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierLine {
    pub tier_index: usize,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Zero when the tier has no flat fee.
    #[serde(with = "rust_decimal::serde::str")]
    pub flat_fee: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

impl TierLine {
    fn priced(
        tier_index: usize,
        quantity: Decimal,
        unit_price: Decimal,
        flat_fee: Decimal,
    ) -> Result<Self, RatingError> {
        Ok(TierLine {
            tier_index,
            quantity,
            unit_price,
            flat_fee,
            amount: add(mul(quantity, unit_price)?, flat_fee)?,
        })
    }
}

impl ChargeModel {
    /// Checks the model against the rules in the module docs.
    pub fn validate(&self) -> Result<(), ChargeModelError> {
        match self {
            ChargeModel::PerUnit { unit_price } => {
                non_negative(*unit_price, || "unit_price".into())
            }
            ChargeModel::Graduated { tiers } | ChargeModel::Volume { tiers } => {
                validate_tiers(tiers)
            }
            ChargeModel::Package {
                size,
                price,
                free_units,
            } => {
                if *size <= Decimal::ZERO {
                    return Err(ChargeModelError::PackageSizeNotPositive);
                }
                if *free_units < Decimal::ZERO {
                    return Err(ChargeModelError::NegativeFreeUnits);
                }
                non_negative(*price, || "price".into())
            }
        }
    }

    /// The price of a cumulative period quantity (`quantity >= 0`), unrounded.
    /// `price(0) = 0`.
    pub fn price(&self, quantity: Decimal) -> Result<Decimal, RatingError> {
        let mut total = Decimal::ZERO;
        self.for_each_line(quantity, |line| {
            total = add(total, line.amount)?;
            Ok(())
        })?;
        Ok(total)
    }

    /// The amount a change of the cumulative quantity adds:
    /// `price(after) - price(before)`. Negative when the price falls.
    pub fn marginal(&self, change: &QuantityChange) -> Result<Decimal, RatingError> {
        if change.before == change.after {
            // Duplicates, late LATEST events, non-increasing MAX: nothing to
            // price, so skip the two table walks.
            self.validate()?;
            if change.after < Decimal::ZERO {
                return Err(RatingError::NegativeQuantity {
                    quantity: change.after,
                });
            }
            return Ok(Decimal::ZERO);
        }
        sub(self.price(change.after)?, self.price(change.before)?)
    }

    /// The lines explaining `price(quantity)` on an invoice, one per tier the
    /// usage entered (none for quantity 0). Their amounts add up to exactly
    /// `price(quantity)`.
    pub fn breakdown(&self, quantity: Decimal) -> Result<Vec<TierLine>, RatingError> {
        let mut lines = Vec::new();
        self.for_each_line(quantity, |line| {
            lines.push(line);
            Ok(())
        })?;
        Ok(lines)
    }

    /// The single walk behind `price` and `breakdown`: validates, then emits
    /// the priced line of every tier the quantity entered, in tier order.
    fn for_each_line<F>(&self, quantity: Decimal, mut emit: F) -> Result<(), RatingError>
    where
        F: FnMut(TierLine) -> Result<(), RatingError>,
    {
        self.validate()?;
        if quantity < Decimal::ZERO {
            return Err(RatingError::NegativeQuantity { quantity });
        }
        if quantity.is_zero() {
            // No tier is entered at 0 (every tier's lower bound is >= 0).
            return Ok(());
        }
        match self {
            ChargeModel::PerUnit { unit_price } => {
                emit(TierLine::priced(0, quantity, *unit_price, Decimal::ZERO)?)
            }
            ChargeModel::Graduated { tiers } => {
                let mut lower = Decimal::ZERO;
                for (index, tier) in tiers.iter().enumerate() {
                    if quantity <= lower {
                        break;
                    }
                    let top = match tier.up_to {
                        Some(up_to) if up_to < quantity => up_to,
                        _ => quantity,
                    };
                    emit(TierLine::priced(
                        index,
                        sub(top, lower)?,
                        tier.unit_price,
                        tier.flat_fee_or_zero(),
                    )?)?;
                    match tier.up_to {
                        Some(up_to) => lower = up_to,
                        None => break,
                    }
                }
                Ok(())
            }
            ChargeModel::Volume { tiers } => {
                // Tier bounds are inclusive, so a quantity equal to `up_to`
                // stays in that tier. Validation guarantees an open last tier;
                // the error arm only keeps this total without a panic.
                let (index, tier) = tiers
                    .iter()
                    .enumerate()
                    .find(|(_, tier)| tier.up_to.is_none_or(|up_to| quantity <= up_to))
                    .ok_or(ChargeModelError::LastTierNotOpen)?;
                emit(TierLine::priced(
                    index,
                    quantity,
                    tier.unit_price,
                    tier.flat_fee_or_zero(),
                )?)
            }
            ChargeModel::Package {
                size,
                price,
                free_units,
            } => {
                let mut package_index = 0;
                if *free_units > Decimal::ZERO {
                    emit(TierLine::priced(
                        0,
                        quantity.min(*free_units),
                        Decimal::ZERO,
                        Decimal::ZERO,
                    )?)?;
                    package_index = 1;
                }
                let billable = sub(quantity, *free_units)?;
                if billable > Decimal::ZERO {
                    let packages = ceil_div(billable, *size)?;
                    emit(TierLine::priced(
                        package_index,
                        packages,
                        *price,
                        Decimal::ZERO,
                    )?)?;
                }
                Ok(())
            }
        }
    }
}

fn non_negative(value: Decimal, field: impl FnOnce() -> String) -> Result<(), ChargeModelError> {
    if value < Decimal::ZERO {
        Err(ChargeModelError::NegativePrice { field: field() })
    } else {
        Ok(())
    }
}

fn validate_tiers(tiers: &[Tier]) -> Result<(), ChargeModelError> {
    if tiers.is_empty() {
        return Err(ChargeModelError::NoTiers);
    }
    if tiers.len() > MAX_TIERS {
        return Err(ChargeModelError::TooManyTiers {
            count: tiers.len(),
            max: MAX_TIERS,
        });
    }
    let last_index = tiers.len().saturating_sub(1);
    let mut previous_bound: Option<Decimal> = None;
    for (index, tier) in tiers.iter().enumerate() {
        non_negative(tier.unit_price, || format!("tiers[{index}].unit_price"))?;
        if let Some(fee) = tier.flat_fee {
            non_negative(fee, || format!("tiers[{index}].flat_fee"))?;
        }
        match tier.up_to {
            None if index != last_index => {
                return Err(ChargeModelError::OpenTierNotLast { tier: index })
            }
            None => {}
            Some(_) if index == last_index => return Err(ChargeModelError::LastTierNotOpen),
            Some(up_to) => {
                match previous_bound {
                    None if up_to <= Decimal::ZERO => {
                        return Err(ChargeModelError::TierBoundNotPositive { tier: index })
                    }
                    Some(previous) if up_to <= previous => {
                        return Err(ChargeModelError::TierBoundsNotIncreasing { tier: index })
                    }
                    _ => {}
                }
                previous_bound = Some(up_to);
            }
        }
    }
    Ok(())
}
