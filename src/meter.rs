//! Meters: which CloudEvents type measures what, and how usage accumulates.
//!
//! A meter is declared in `topology/meters.toml` in the style of OpenMeter:
//! `slug`, `event_type`, `aggregation`, `value_property` (a JSONPath into the
//! event's `data`), optional `group_by` (name -> JSONPath) and an optional unit
//! conversion applied to the value before it is rated.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// How the events of one rating segment accumulate into the quantity that is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Aggregation {
    /// Quantity = sum of the values.
    Sum,
    /// Quantity = number of events; the event needs no value.
    Count,
    /// Quantity = greatest value seen.
    Max,
    /// Quantity = number of distinct values seen.
    UniqueCount,
    /// Quantity = value of the event with the greatest event time (ties: greatest id).
    Latest,
}

impl Aggregation {
    /// The name as configured (`"SUM"`, `"UNIQUE_COUNT"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Sum => "SUM",
            Aggregation::Count => "COUNT",
            Aggregation::Max => "MAX",
            Aggregation::UniqueCount => "UNIQUE_COUNT",
            Aggregation::Latest => "LATEST",
        }
    }

    /// Whether events of this meter must carry a numeric value at `value_property`.
    /// UNIQUE_COUNT needs a value too, but any JSON scalar counts as one.
    pub fn needs_numeric_value(self) -> bool {
        matches!(
            self,
            Aggregation::Sum | Aggregation::Max | Aggregation::Latest
        )
    }
}

/// Optional linear unit conversion: `value * multiply_by` (e.g. bytes -> GB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitConversion {
    #[serde(with = "rust_decimal::serde::str")]
    pub multiply_by: Decimal,
    /// The unit after conversion, for invoice lines ("GB", "hours").
    pub unit: String,
}

/// One meter, as declared in `topology/meters.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meter {
    pub slug: String,
    pub event_type: String,
    pub aggregation: Aggregation,
    /// JSONPath into `data`, e.g. `$.tokens`; absent for COUNT.
    #[serde(default)]
    pub value_property: Option<String>,
    #[serde(default)]
    pub group_by: BTreeMap<String, String>,
    #[serde(default)]
    pub unit_conversion: Option<UnitConversion>,
}
