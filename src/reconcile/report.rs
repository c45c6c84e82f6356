//! What [`check`](super::check) found: the [`Report`] and its rows, and how
//! one check's result is built.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::lineage::DayCounters;

use super::facts::WindowId;

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `day 2026-10-05`, `window day 2026-10-05 segment 3f1c…`, `all days`.
    pub subject: String,
    /// Stable check name (see the module docs); a metric label.
    pub check: &'static str,
    /// Set for money checks.
    pub currency: Option<String>,
    pub expected: String,
    pub actual: String,
    /// actual - expected.
    pub difference: String,
    pub ok: bool,
    /// What the equality was, in words, with its numbers.
    pub detail: String,
    #[serde(skip)]
    pub(super) diff: f64,
}

pub(super) fn fmt_dec(d: Decimal) -> String {
    d.normalize().to_string()
}

pub(super) fn fmt_signed(d: Decimal) -> String {
    if d.is_sign_negative() {
        fmt_dec(d)
    } else {
        format!("+{}", fmt_dec(d))
    }
}

/// One line of the days table.
#[derive(Debug, Clone, Serialize)]
pub struct DayRow {
    pub day: String,
    pub validate: CountersView,
    pub enrich: CountersView,
    pub validated_topic: u64,
    pub dlq_validate_topic: u64,
    pub enriched_topic: u64,
    pub rated_topic: u64,
    pub dlq_rate_topic: u64,
    pub ok: bool,
}

/// [`DayCounters`] with names that say what they count.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CountersView {
    pub records_in: u64,
    pub passed: u64,
    pub held: u64,
    pub released: u64,
}

impl From<DayCounters> for CountersView {
    fn from(c: DayCounters) -> Self {
        CountersView {
            records_in: c.records_in,
            passed: c.passed,
            held: c.held,
            released: c.released,
        }
    }
}

/// One line of the windows table (an original window).
#[derive(Debug, Clone, Serialize)]
pub struct WindowRow {
    pub id: WindowId,
    pub subscription: String,
    pub meter: String,
    pub currency: String,
    /// None for period-close windows (no rated counterpart).
    pub rated: Option<String>,
    pub events: u64,
    pub closed: String,
    pub open: String,
    pub posted: String,
    pub posted_rounded: String,
    pub rounding: String,
    pub ok: bool,
}

/// Rounding per currency: posted unrounded and rounded totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rounding {
    pub unrounded: String,
    pub rounded: String,
    pub difference: String,
    #[serde(skip)]
    pub(super) diff: f64,
}

/// What [`check`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: Option<String>,
    pub days: Vec<DayRow>,
    pub windows: Vec<WindowRow>,
    pub checks: Vec<Check>,
    pub rounding: BTreeMap<String, Rounding>,
    pub in_flight: BTreeMap<String, u64>,
    pub dead_letters: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    pub fn ok(&self) -> bool {
        self.failures().next().is_none()
    }
}
