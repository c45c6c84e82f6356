//! The read routes answered from aggregate's windows (scope `read`), which
//! the API follows ([`super::follow`]):
//!
//! * `GET /v1/subscriptions/{id}/usage`: the open billing periods so far;
//! * `GET /v1/subscriptions/{id}/invoices`: the invoice documents of
//!   `finance.invoices` (followed too) and the open period(s) so far from
//!   the open windows;
//!
//! OpenMeter's meter query, also from the windows, is [`super::meter_query`].
//!
//! Quantities and amounts are exact, unrounded sums of the rated marginals
//! (rounding happens once, when posted).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::auth::Caller;
use super::follow::{ClosedPeriod, WindowState};
use super::problem::Problem;
use super::queries::readable_subscription;
use crate::contracts::{ClosedWindow, WindowKind};
use crate::refdata::RefTables;

/// One segment (meter + group + plan version) of an open period.
#[derive(Default)]
struct SegmentUsage {
    meter: String,
    group: BTreeMap<String, String>,
    plan_version: u32,
    quantity: Decimal,
    amount: Decimal,
    event_count: u64,
    not_yet_accrued: Decimal,
}

/// An open billing period of a subscription.
#[derive(Default)]
struct PeriodUsage {
    window: Option<crate::contracts::Window>,
    segments: BTreeMap<String, SegmentUsage>,
    close: Option<Value>,
    adjustments: Vec<Value>,
}

fn segment<'p>(p: &'p mut PeriodUsage, w: &ClosedWindow) -> Option<&'p mut SegmentUsage> {
    let seg = w.segment.as_ref()?;
    let e = p.segments.entry(seg.segment_id.clone()).or_default();
    e.meter.clone_from(&seg.meter);
    e.group.clone_from(&seg.group);
    e.plan_version = seg.plan_version;
    Some(e)
}

fn add_window(periods: &mut BTreeMap<String, PeriodUsage>, w: &ClosedWindow) {
    match (w.kind, &w.adjusts) {
        (WindowKind::BillingPeriod, None) => {
            let p = periods.entry(w.window.id.clone()).or_default();
            p.window = Some(w.window.clone());
            if let Some(s) = segment(p, w) {
                s.quantity = w.quantity;
                s.amount += w.amount;
                s.event_count += w.event_count;
            }
        }
        (WindowKind::Day, None) => {
            let p = periods.entry(w.clearing.period.id.clone()).or_default();
            if let Some(s) = segment(p, w) {
                s.not_yet_accrued += w.amount;
            }
        }
        (WindowKind::PeriodClose, None) => {
            let p = periods.entry(w.window.id.clone()).or_default();
            p.window = Some(w.window.clone());
            p.close = Some(json!({
                "amount": w.amount.to_string(),
                "event_count": w.event_count,
                "plan_version": w.plan_version,
                "base_fee": w.base_fee.map(|d| d.to_string()),
                "minimum_commitment": w.minimum_commitment.map(|d| d.to_string()),
            }));
        }
        (kind, Some(adjusted)) => {
            let p = periods.entry(w.clearing.period.id.clone()).or_default();
            // The segment's group and plan version too: two adjustments of
            // one grouped meter and day are otherwise indistinguishable.
            let mut adjustment = line_json(w);
            if let Some(fields) = adjustment.as_object_mut() {
                fields.insert("kind".into(), json!(kind.as_str()));
                fields.insert("adjusts".into(), json!(adjusted.id));
            }
            p.adjustments.push(adjustment);
        }
    }
}

/// Usage so far of a subscription's open billing periods. Amounts are
/// unrounded sums of the rated marginal amounts (rounding happens once, at
/// posting): `amount` the period to date, `not_yet_accrued` what is in open
/// day windows, `accrued` the rest (closed days, posted as accruals).
pub fn usage(
    tables: &RefTables,
    windows: &WindowState,
    caller: &Caller<'_>,
    id: &str,
) -> Result<Value, Problem> {
    let s = readable_subscription(tables, caller, id)?;
    let mut periods: BTreeMap<String, PeriodUsage> = BTreeMap::new();
    for w in windows
        .by_subscription
        .get(id)
        .into_iter()
        .flat_map(|m| m.values())
    {
        add_window(&mut periods, w);
    }
    let list: Vec<Value> = periods
        .into_iter()
        .map(|(period_id, p)| {
            let meters: Vec<Value> = p
                .segments
                .into_values()
                .map(|u| {
                    json!({
                        "meter": u.meter,
                        "group": u.group,
                        "plan_version": u.plan_version,
                        "quantity": u.quantity.to_string(),
                        "amount": u.amount.to_string(),
                        "accrued": (u.amount - u.not_yet_accrued).to_string(),
                        "not_yet_accrued": u.not_yet_accrued.to_string(),
                        "event_count": u.event_count,
                    })
                })
                .collect();
            json!({
                "period": p.window.map(|w| json!(w)).unwrap_or_else(|| json!({"id": period_id})),
                "meters": meters,
                "period_close": p.close,
                "adjustments": p.adjustments,
            })
        })
        .collect();
    Ok(json!({
        "subscription_id": s.id,
        "customer_id": s.customer_id,
        "currency": s.currency,
        "periods": list,
    }))
}

/// A decimal as a JSON number with exactly its digits (serde_json keeps a
/// number's text with `arbitrary_precision`): no float in between.
pub(super) fn exact_number(d: Decimal) -> Value {
    serde_json::from_str(&d.normalize().to_string())
        .unwrap_or_else(|_| Value::String(d.to_string()))
}

fn line_json(w: &ClosedWindow) -> Value {
    let seg = w.segment.as_ref();
    json!({
        "meter": seg.map(|s| s.meter.clone()),
        "group": seg.map(|s| s.group.clone()),
        "plan_version": seg.map(|s| s.plan_version),
        "quantity": w.quantity.to_string(),
        "amount": w.amount.to_string(),
        "event_count": w.event_count,
        "adjusts": w.adjusts.as_ref().map(|a| a.id.clone()),
    })
}

fn period_json(id: &str, status: &str, p: &ClosedPeriod) -> Value {
    let close = p.close.as_ref();
    json!({
        "period": close.map(|w| json!(w.window)).or_else(|| p.lines.first().map(|w| json!(w.window))).unwrap_or_else(|| json!({"id": id})),
        "status": status,
        "amount": close.map(|w| w.amount.to_string()),
        "base_fee": close.and_then(|w| w.base_fee).map(|d| d.to_string()),
        "minimum_commitment": close.and_then(|w| w.minimum_commitment).map(|d| d.to_string()),
        "plan_version": close.map(|w| w.plan_version),
        "event_count": close.map(|w| w.event_count),
        "lines": p.lines.iter().map(line_json).collect::<Vec<_>>(),
        "adjustments": p.adjustments.iter().map(line_json).collect::<Vec<_>>(),
    })
}

/// The subscription's invoices: every document of `finance.invoices`
/// (latest versions, by service interval), and the open billing period(s)
/// so far from aggregate's open windows (`open_periods`, exact amounts:
/// they become an invoice at their close).
pub fn invoices(
    tables: &RefTables,
    invoices: &super::follow::InvoiceState,
    open: &WindowState,
    caller: &Caller<'_>,
    id: &str,
) -> Result<Value, Problem> {
    let s = readable_subscription(tables, caller, id)?;
    let mut docs: Vec<&crate::contracts::Invoice> = invoices
        .by_subscription
        .get(id)
        .into_iter()
        .flat_map(|m| m.values())
        .collect();
    docs.sort_by(|a, b| {
        (a.service_interval.start, &a.invoice_id).cmp(&(b.service_interval.start, &b.invoice_id))
    });
    let mut current: BTreeMap<String, ClosedPeriod> = BTreeMap::new();
    for w in open
        .by_subscription
        .get(id)
        .into_iter()
        .flat_map(|m| m.values())
    {
        let p = current.entry(w.clearing.period.id.clone()).or_default();
        match (w.kind, &w.adjusts) {
            (WindowKind::PeriodClose, None) => p.close = Some(w.clone()),
            (WindowKind::BillingPeriod, None) => p.lines.push(w.clone()),
            (WindowKind::BillingPeriod, Some(_)) => p.adjustments.push(w.clone()),
            _ => {}
        }
    }
    let open_periods: Vec<Value> = current
        .iter()
        .map(|(pid, p)| period_json(pid, "open", p))
        .collect();
    Ok(json!({
        "subscription_id": s.id,
        "customer_id": s.customer_id,
        "currency": s.currency,
        "invoices": docs,
        "open_periods": open_periods,
    }))
}
