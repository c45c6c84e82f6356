//! `usage.windows`: what the aggregate stage writes and the post stage reads.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{CustomerInfo, Window};
use crate::meter::Aggregation;
use crate::refdata::serde_with::optional_decimal_str;
use crate::refdata::GlAccounts;

/// Version of this contract; see [`super`] for what a change may do.
pub const CLOSED_WINDOW_VERSION: u32 = 1;

/// What a window accumulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// One segment, one local day: accruals.
    Day,
    /// One segment, one billing period: the invoice line.
    BillingPeriod,
    /// One subscription, one billing period, every segment: base fee,
    /// minimum commitment, and the signal that the period is complete.
    PeriodClose,
}

impl WindowKind {
    /// Emission order among windows with the same end.
    pub fn rank(self) -> u8 {
        match self {
            WindowKind::Day => 0,
            WindowKind::BillingPeriod => 1,
            WindowKind::PeriodClose => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Day => "day",
            WindowKind::BillingPeriod => "billing_period",
            WindowKind::PeriodClose => "period_close",
        }
    }
}

/// The rating segment a window belongs to (absent for
/// [`WindowKind::PeriodClose`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub segment_id: String,
    pub segment_key: String,
    pub meter: String,
    pub plan_version: u32,
    pub group: BTreeMap<String, String>,
    pub aggregation: Aggregation,
    /// The charge's tax code (the invoice line's).
    pub tax_code: Option<String>,
    /// The meter's unit, for the invoice line.
    pub unit: Option<String>,
}

impl SegmentInfo {
    /// [`segment_label`] of this segment.
    pub fn label(&self) -> String {
        segment_label(&self.meter, &self.group)
    }
}

/// What a line of a rating segment is for: the meter and, when the meter
/// groups, each group as `name=value` in name order (an absent value as
/// `name=(none)`), e.g. `api_calls region=eu`. Two segments of one meter,
/// plan version and period differ only here, so their lines must say it.
pub fn segment_label(meter: &str, group: &BTreeMap<String, String>) -> String {
    let mut label = meter.to_string();
    for (i, (name, value)) in group.iter().enumerate() {
        label.push_str(if i == 0 { " " } else { ", " });
        label.push_str(name);
        label.push('=');
        label.push_str(if value.is_empty() { "(none)" } else { value });
    }
    label
}

/// The invoice window that clears a window's accruals: a billing period and,
/// for an adjustment, the closed period it adjusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clearing {
    pub period: Window,
    pub adjusts: Option<Window>,
}

/// A closed window: the aggregate stage's output, one record on
/// `usage.windows` per window, keyed by the customer id, emitted once.
/// This is the contract the post stage reads.
///
/// JSON, decimals as strings (unrounded sums of the rated marginals),
/// instants in RFC 3339 UTC, e.g. a day window:
///
/// ```json
/// {"kind":"day",
///  "window":{"id":"2026-01-10","start":"2026-01-10T05:00:00Z","end":"2026-01-11T05:00:00Z"},
///  "adjusts":null,
///  "clearing":{"period":{"id":"2026-01-01","start":"2026-01-01T05:00:00Z","end":"2026-02-01T05:00:00Z"},"adjusts":null},
///  "customer":{"id":"cust-42","name":"Acme","legal_entity":"acme","erp_customer_id":"C-42"},
///  "subscription_id":"sub-1","plan_id":"pro","legal_entity":"ml-us","currency":"USD",
///  "time_zone":"America/New_York","billing_anchor_day":1,
///  "gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200"},
///  "segment":{"segment_id":"3f1c…","segment_key":"[\"sub-1\",\"tokens\",\"2026-01-01\",2,{}]",
///    "meter":"tokens","plan_version":2,"group":{},"aggregation":"SUM","tax_code":"TX1","unit":"1K tokens"},
///  "plan_version":2,"tax_code":"TX0","base_fee":null,"minimum_commitment":null,
///  "quantity":"1500","amount":"5.00","event_count":3,
///  "lineage_digest":"9d0e…(64 hex)","closed_at_watermark_ms":1768194000000}
/// ```
///
/// * `kind`: `day` | `billing_period` (per segment) | `period_close` (per
///   subscription and period; `segment` is null, `quantity` is 0, `amount`
///   is the sum over every segment, `event_count` counts each event once).
/// * `window`: the window accumulated in; `adjusts`: when not null this is
///   an adjustment, accumulated in the current open `window`, of the
///   already closed window `adjusts` (same kind and segment).
/// * `clearing`: the invoice window whose invoice line clears this window's
///   accruals (for a billing-period window, itself).
/// * `plan_version`, `tax_code`, `base_fee`, `minimum_commitment`: of the
///   subscription period (for `period_close`, those of the plan version in
///   force at the start of the period's service interval, see
///   `stages::aggregate::periods`); base fee and commitment are per period.
/// * `closed_at_watermark_ms`: the partition watermark that closed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClosedWindow {
    pub kind: WindowKind,
    pub window: Window,
    pub adjusts: Option<Window>,
    pub clearing: Clearing,
    pub customer: CustomerInfo,
    pub subscription_id: String,
    pub plan_id: String,
    pub legal_entity: String,
    pub currency: String,
    pub time_zone: String,
    pub billing_anchor_day: u8,
    /// The subscription's end (exclusive), if any; see "Periods without
    /// usage" in the module docs.
    #[serde(default)]
    pub subscription_end: Option<DateTime<Utc>>,
    pub gl_accounts: GlAccounts,
    pub segment: Option<SegmentInfo>,
    pub plan_version: u32,
    pub tax_code: Option<String>,
    #[serde(default, with = "optional_decimal_str")]
    pub base_fee: Option<Decimal>,
    #[serde(default, with = "optional_decimal_str")]
    pub minimum_commitment: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The sum of the rated events' parts (see [`crate::rating::Parts`]).
    #[serde(default, skip_serializing_if = "crate::rating::Parts::is_empty")]
    pub parts: crate::rating::Parts,
    pub event_count: u64,
    pub lineage_digest: String,
    /// 0 while the window is open (in the store).
    pub closed_at_watermark_ms: i64,
}

impl ClosedWindow {
    /// How lineage names this window: kind, scope (segment id, or the
    /// subscription for a period close), window id, adjusted window id.
    pub fn lineage_ref(&self) -> crate::lineage::WindowRef {
        crate::lineage::WindowRef {
            kind: self.kind.as_str().to_string(),
            scope: match &self.segment {
                Some(s) => s.segment_id.clone(),
                None => self.subscription_id.clone(),
            },
            window: self.window.id.clone(),
            adjusts: self.adjusts.as_ref().map(|w| w.id.clone()),
        }
    }

    /// The record value for `usage.windows`.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// Parses a record value read back from `usage.windows`.
    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Event-time progress of one partition, persisted in the aggregate stage's
/// windows store (and read back by reconcile).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionClock {
    /// Greatest event time seen, ms since the epoch.
    pub max_event_ms: Option<i64>,
    /// Windows ending at or before it are closed; never moves back.
    pub watermark_ms: Option<i64>,
}
