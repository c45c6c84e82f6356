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
use crate::meter::Aggregation;

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
/// {"model": "graduated_percentage", "tiers": [
///     {"up_to": "10000", "rate": "2.9", "flat_fee": "0"},
///     {"up_to": null, "rate": "1.5"}]}
/// {"model": "percentage", "rate": "1.3", "fixed_fee_per_event": "0.30",
///  "min_per_event": "0.50", "max_per_event": "5.00", "free_events": 1000}
/// {"model": "dynamic", "amount_property": "$.price", "currency_property": "$.currency"}
/// ```
///
/// The tiered models, per_unit, package and graduated_percentage are
/// *cumulative*: a pure function of the period's quantity, priced by
/// [`price`](ChargeModel::price). percentage and dynamic are *per event*: the
/// charge is a sum of per-event fees ([`super::PercentageModel`],
/// [`ChargeModel::Dynamic`]), so `price` refuses them
/// ([`RatingError::NotCumulative`]).
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
    /// Graduated tiers of the running amount, each priced at its own
    /// percentage (`rate`, in percent) plus an optional flat fee charged when
    /// the amount enters the tier: graduated with `unit_price = rate / 100`.
    GraduatedPercentage { tiers: Vec<PercentageTier> },
    /// A take rate with per-transaction fee, bounds and free allowances;
    /// priced per event (see [`super::PercentageModel`]).
    Percentage(super::PercentageModel),
    /// The event carries its own price: the decimal at `amount_property`
    /// (a JSONPath into the event's data) is the event's amount, as given.
    /// With `currency_property`, the event must name the plan's currency.
    Dynamic {
        amount_property: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        currency_property: Option<String>,
    },
}

/// One row of a graduated percentage table: like [`Tier`], with a
/// percentage `rate` of the amount in the tier instead of a unit price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentageTier {
    /// Inclusive upper bound of the running amount; `None` for the open last tier.
    #[serde(default, with = "crate::money::optional_decimal_str")]
    pub up_to: Option<Decimal>,
    /// Percent of the amount in this tier, in `[0, 100]`.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    /// Charged once per period when the amount enters the tier.
    #[serde(
        default,
        with = "crate::money::optional_decimal_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub flat_fee: Option<Decimal>,
}

impl PercentageTier {
    /// The same row as a [`Tier`] with `unit_price = rate / 100` (exact:
    /// two more decimals).
    fn as_tier(&self) -> Result<Tier, RatingError> {
        Ok(Tier {
            up_to: self.up_to,
            unit_price: percent_of_one(self.rate)?,
            flat_fee: self.flat_fee,
        })
    }
}

/// `rate / 100`, exactly.
pub(crate) fn percent_of_one(rate: Decimal) -> Result<Decimal, RatingError> {
    mul(rate, Decimal::new(1, 2))
}

/// How a model prices: a function of the period quantity, or per event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pricing {
    Cumulative,
    PerEvent,
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
    /// `field` names the rate, e.g. `tiers[1].rate`.
    #[error("{field} must be a percentage in [0, 100]")]
    PercentageOutOfRange { field: String },
    #[error("min_per_event {min} is greater than max_per_event {max}")]
    MinAboveMax { min: Decimal, max: Decimal },
    #[error("free_events {count} exceeds the maximum of {max}")]
    TooManyFreeEvents { count: u32, max: u32 },
    #[error("{field}: {problem}")]
    InvalidProperty { field: String, problem: String },
    /// The model does not fit the meter's aggregation (e.g. a percentage of
    /// a COUNT meter), or proration was asked of a model or aggregation
    /// that cannot be prorated.
    #[error("{detail}")]
    AggregationMismatch { detail: String },
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
            ChargeModelError::PercentageOutOfRange { .. } => {
                super::reasons::PERCENTAGE_OUT_OF_RANGE
            }
            ChargeModelError::MinAboveMax { .. } => super::reasons::MIN_ABOVE_MAX,
            ChargeModelError::TooManyFreeEvents { .. } => super::reasons::TOO_MANY_FREE_EVENTS,
            ChargeModelError::InvalidProperty { .. } => super::reasons::INVALID_AMOUNT_PROPERTY,
            ChargeModelError::AggregationMismatch { .. } => {
                super::reasons::MODEL_AGGREGATION_MISMATCH
            }
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
            ChargeModel::GraduatedPercentage { tiers } => validate_percentage_tiers(tiers),
            ChargeModel::Percentage(model) => model.validate(),
            ChargeModel::Dynamic {
                amount_property,
                currency_property,
            } => {
                json_path("amount_property", amount_property)?;
                match currency_property {
                    Some(path) => json_path("currency_property", path),
                    None => Ok(()),
                }
            }
        }
    }

    /// Cumulative or per event (see the type's docs).
    pub fn pricing(&self) -> Pricing {
        match self {
            ChargeModel::Percentage(_) | ChargeModel::Dynamic { .. } => Pricing::PerEvent,
            _ => Pricing::Cumulative,
        }
    }

    /// The model's name as configured (`"graduated"`, `"percentage"`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ChargeModel::PerUnit { .. } => "per_unit",
            ChargeModel::Graduated { .. } => "graduated",
            ChargeModel::Volume { .. } => "volume",
            ChargeModel::Package { .. } => "package",
            ChargeModel::GraduatedPercentage { .. } => "graduated_percentage",
            ChargeModel::Percentage(_) => "percentage",
            ChargeModel::Dynamic { .. } => "dynamic",
        }
    }

    /// Whether the model can price a meter of `aggregation`, prorated or not.
    /// The percentage models price amounts, so they need a SUM meter; a
    /// dynamic price adds per event (SUM or COUNT); proration applies to the
    /// cumulative models of a LATEST or MAX meter (seat-like quantities).
    pub fn check_aggregation(
        &self,
        aggregation: Aggregation,
        prorate: bool,
    ) -> Result<(), ChargeModelError> {
        let fits = match self {
            ChargeModel::Percentage(_) | ChargeModel::GraduatedPercentage { .. } => {
                aggregation == Aggregation::Sum
            }
            ChargeModel::Dynamic { .. } => {
                matches!(aggregation, Aggregation::Sum | Aggregation::Count)
            }
            _ => true,
        };
        if !fits {
            return Err(ChargeModelError::AggregationMismatch {
                detail: format!(
                    "a {} charge cannot price a {} meter",
                    self.name(),
                    aggregation.as_str()
                ),
            });
        }
        let prorates = self.pricing() == Pricing::Cumulative
            && matches!(aggregation, Aggregation::Latest | Aggregation::Max);
        if prorate && !prorates {
            return Err(ChargeModelError::AggregationMismatch {
                detail: format!(
                    "prorate applies to a cumulative model of a latest or max meter, not a {} charge of a {} meter",
                    self.name(),
                    aggregation.as_str()
                ),
            });
        }
        Ok(())
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

    /// The breakdown as additive parts (`tier_<i>_quantity`,
    /// `tier_<i>_amount`), so the parts of a segment's events add up to the
    /// parts of its total; a marginal's parts are `parts(after) -
    /// parts(before)` ([`super::parts_delta`]).
    pub fn parts(&self, quantity: Decimal) -> Result<super::Parts, RatingError> {
        let mut parts = super::Parts::new();
        self.for_each_line(quantity, |line| {
            parts.insert(format!("tier_{}_quantity", line.tier_index), line.quantity);
            parts.insert(format!("tier_{}_amount", line.tier_index), line.amount);
            Ok(())
        })?;
        Ok(parts)
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
        if self.pricing() == Pricing::PerEvent {
            return Err(RatingError::NotCumulative { model: self.name() });
        }
        if quantity.is_zero() {
            // No tier is entered at 0 (every tier's lower bound is >= 0).
            return Ok(());
        }
        match self {
            ChargeModel::PerUnit { unit_price } => {
                emit(TierLine::priced(0, quantity, *unit_price, Decimal::ZERO)?)
            }
            ChargeModel::Graduated { tiers } => graduated_lines(tiers, quantity, emit),
            ChargeModel::GraduatedPercentage { tiers } => {
                let tiers = tiers
                    .iter()
                    .map(PercentageTier::as_tier)
                    .collect::<Result<Vec<_>, _>>()?;
                graduated_lines(&tiers, quantity, emit)
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
            ChargeModel::Percentage(_) | ChargeModel::Dynamic { .. } => {
                Err(RatingError::NotCumulative { model: self.name() })
            }
        }
    }
}

/// The lines of a graduated table: each tier the quantity entered, priced
/// for the part of the quantity in it, with its flat fee.
fn graduated_lines<F>(tiers: &[Tier], quantity: Decimal, mut emit: F) -> Result<(), RatingError>
where
    F: FnMut(TierLine) -> Result<(), RatingError>,
{
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

/// A dynamic charge's amount: the decimal at `amount_property` in the
/// event's data, by the rules of meter values (a number or numeric string,
/// finite, non-negative, exact), or why there is none.
pub fn dynamic_amount(data: &serde_json::Value, amount_property: &str) -> Result<Decimal, String> {
    let path = crate::jsonpath::JsonPath::parse(amount_property).map_err(|e| e.to_string())?;
    let text = match path.get(data) {
        None | Some(serde_json::Value::Null) => {
            return Err(format!("{amount_property} is missing"))
        }
        Some(serde_json::Value::Number(n)) => n.to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => return Err(format!("{amount_property} is not a number: {other}")),
    };
    let amount = crate::ingest::rules::parse_exact_decimal(&text)
        .map_err(|e| format!("{amount_property}: {e}"))?;
    if amount.is_sign_negative() {
        return Err(format!("{amount_property}: {amount} is negative"));
    }
    Ok(amount)
}

fn json_path(field: &str, path: &str) -> Result<(), ChargeModelError> {
    crate::jsonpath::JsonPath::parse(path)
        .map(|_| ())
        .map_err(|e| ChargeModelError::InvalidProperty {
            field: field.to_owned(),
            problem: e.to_string(),
        })
}

/// A percentage in `[0, 100]`.
pub(crate) fn percentage(
    value: Decimal,
    field: impl FnOnce() -> String,
) -> Result<(), ChargeModelError> {
    if value < Decimal::ZERO || value > Decimal::ONE_HUNDRED {
        Err(ChargeModelError::PercentageOutOfRange { field: field() })
    } else {
        Ok(())
    }
}

fn validate_percentage_tiers(tiers: &[PercentageTier]) -> Result<(), ChargeModelError> {
    for (index, tier) in tiers.iter().enumerate() {
        percentage(tier.rate, || format!("tiers[{index}].rate"))?;
    }
    // The bounds and fees follow the rules of any tier table.
    let as_tiers: Vec<Tier> = tiers
        .iter()
        .map(|t| Tier {
            up_to: t.up_to,
            unit_price: Decimal::ZERO,
            flat_fee: t.flat_fee,
        })
        .collect();
    validate_tiers(&as_tiers)
}

pub(crate) fn non_negative(
    value: Decimal,
    field: impl FnOnce() -> String,
) -> Result<(), ChargeModelError> {
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
