//! The read routes (scope `read`), answered from the reference data this
//! process follows ([`super::refs`]) and the meters of the config:
//!
//! * `GET /v1/customers/{id}`: the customer and its subscriptions;
//! * `GET /v1/subscriptions/{id}[?at=T]`: the contract and the plan version
//!   in force at `T` (default now);
//! * `GET /v1/plans/{id}`: every version of a plan;
//! * `POST /v1/quotes`: the price of a quantity of a meter under a
//!   subscription (its overrides included) or a plan, by the rating library,
//!   with the tier breakdown; `amount` exact, `amount_rounded` to the
//!   currency's minor unit with `post.rounding_mode`;
//! * `GET /v1/subscriptions/{id}/usage`: the open billing periods so far,
//!   from aggregate's open windows ([`super::follow::WindowView`]);
//! * `GET /api/v1/meters`: the meters, in OpenMeter's shape.
//!
//! A key limited to some customers reads only those (403 otherwise).

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::problem::Problem;
use super::reasons;
use crate::config::Config;
use crate::meter::Aggregation;
use crate::money;
use crate::rating::ChargeModel;
use std::collections::BTreeMap;

use super::follow::{day_key, window_identity, DayKey, DayState, WindowState};
use crate::contracts::{ClosedWindow, WindowKind};
use crate::refdata::RefTables;

/// Parse errors and rating refusals of a request.
pub fn invalid(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        reasons::INVALID_REQUEST,
        "Invalid request",
        detail,
    )
}

pub fn not_found(what: &str, id: &str) -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        reasons::NOT_FOUND,
        "Not found",
        format!("no {what} {}", crate::ingest::reason::excerpt(id)),
    )
}

fn customer_forbidden(caller: &Caller<'_>) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        reasons::FORBIDDEN,
        "Forbidden",
        format!("the key {:?} may not read this customer", caller.key.name),
    )
}

fn check_customer(caller: &Caller<'_>, customer_id: &str) -> Result<(), Problem> {
    if caller.may_read(customer_id) {
        Ok(())
    } else {
        Err(customer_forbidden(caller))
    }
}

/// `at=` of a query, RFC 3339; now when absent.
pub fn at_param(raw: Option<&String>) -> Result<DateTime<Utc>, Problem> {
    match raw {
        None => Ok(Utc::now()),
        Some(t) => DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| invalid(format!("at: not an RFC 3339 time ({e})"))),
    }
}

pub fn customer(tables: &RefTables, caller: &Caller<'_>, id: &str) -> Result<Value, Problem> {
    let c = tables
        .customer(id)
        .ok_or_else(|| not_found("customer", id))?;
    check_customer(caller, id)?;
    let subs: Vec<_> = tables.subscriptions_of(id).collect();
    Ok(json!({"customer": c, "subscriptions": subs}))
}

pub fn subscription(
    tables: &RefTables,
    caller: &Caller<'_>,
    id: &str,
    at: DateTime<Utc>,
) -> Result<Value, Problem> {
    let s = tables
        .subscription(id)
        .ok_or_else(|| not_found("subscription", id))?;
    check_customer(caller, &s.customer_id)?;
    let plan = tables.plan_effective_at(&s.plan_id, at);
    Ok(json!({
        "subscription": s,
        "active": s.is_active_at(at),
        "at": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "plan": plan,
    }))
}

pub fn plan(tables: &RefTables, id: &str) -> Result<Value, Problem> {
    let versions: Vec<_> = tables.plan_versions(id).collect();
    if versions.is_empty() {
        return Err(not_found("plan", id));
    }
    Ok(json!({"id": id, "versions": versions}))
}

/// The body of `POST /v1/quotes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuoteRequest {
    #[serde(default)]
    pub subscription_id: Option<String>,
    #[serde(default)]
    pub plan_id: Option<String>,
    pub meter: String,
    /// A decimal string (never a JSON number: no float touches a quantity).
    pub quantity: String,
    #[serde(default)]
    pub at: Option<String>,
}

pub fn quote(
    tables: &RefTables,
    config: &Config,
    caller: &Caller<'_>,
    body: &[u8],
) -> Result<Value, Problem> {
    let req: QuoteRequest =
        serde_json::from_slice(body).map_err(|e| invalid(format!("body: {e}")))?;
    let quantity = crate::ingest::rules::parse_exact_decimal(&req.quantity)
        .map_err(|e| invalid(format!("quantity: {e}")))?;
    let at = at_param(req.at.as_ref())?;
    let (plan_id, overrides) = match (&req.subscription_id, &req.plan_id) {
        (Some(sid), None) => {
            let s = tables
                .subscription(sid)
                .ok_or_else(|| not_found("subscription", sid))?;
            check_customer(caller, &s.customer_id)?;
            (s.plan_id.clone(), Some(&s.price_overrides))
        }
        (None, Some(pid)) => (pid.clone(), None),
        _ => return Err(invalid("name exactly one of subscription_id and plan_id")),
    };
    let plan = tables
        .plan_effective_at(&plan_id, at)
        .ok_or_else(|| not_found("plan version in force at that time for plan", &plan_id))?;
    let model: &ChargeModel = overrides
        .and_then(|o| o.get(&req.meter))
        .or_else(|| plan.charge(&req.meter).map(|c| &c.model))
        .ok_or_else(|| {
            invalid(format!(
                "plan {} has no charge for meter {}",
                plan.id, req.meter
            ))
        })?;
    let lines = model
        .breakdown(quantity)
        .map_err(|e| invalid(format!("{}: {e}", e.code())))?;
    let amount = model
        .price(quantity)
        .map_err(|e| invalid(format!("{}: {e}", e.code())))?;
    let rounded = money::round_to_minor(amount, &plan.currency, config.post.rounding_mode)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(json!({
        "plan_id": plan.id,
        "plan_version": plan.version,
        "currency": plan.currency,
        "meter": req.meter,
        "quantity": quantity.to_string(),
        "amount": amount.to_string(),
        "amount_rounded": rounded.to_string(),
        "rounding_mode": config.post.rounding_mode,
        "lines": lines,
    }))
}

/// OpenMeter's meter listing.
pub fn meters(config: &Config) -> Value {
    let list: Vec<Value> = config
        .meters
        .iter()
        .map(|m| {
            json!({
                "id": m.slug,
                "slug": m.slug,
                "eventType": m.event_type,
                "aggregation": m.aggregation,
                "valueProperty": m.value_property,
                "groupBy": m.group_by,
            })
        })
        .collect();
    Value::Array(list)
}

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
            p.adjustments.push(json!({
                "kind": kind.as_str(),
                "adjusts": adjusted.id,
                "meter": w.segment.as_ref().map(|s| s.meter.clone()),
                "amount": w.amount.to_string(),
                "event_count": w.event_count,
            }));
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
    let s = tables
        .subscription(id)
        .ok_or_else(|| not_found("subscription", id))?;
    check_customer(caller, &s.customer_id)?;
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

/// Parameters of OpenMeter's meter query.
pub struct MeterQuery<'a> {
    pub slug: &'a str,
    pub params: &'a BTreeMap<String, String>,
}

/// `GET /api/v1/meters/{slug}/query`: per local day (the subscription's time
/// zone, as the books) the meter's quantity, from the closed day windows
/// ([`DayState`]) and the open ones ([`WindowState`]). Only SUM and COUNT
/// meters: a day window holds the day's summed marginal quantities, which is
/// a SUM or COUNT meter's value for the day but not a MAX, LATEST or
/// UNIQUE_COUNT meter's.
pub fn meter_query(
    config: &Config,
    days: &DayState,
    open: &WindowState,
    caller: &Caller<'_>,
    q: &MeterQuery<'_>,
) -> Result<Value, Problem> {
    let meter = config
        .meters
        .iter()
        .find(|m| m.slug == q.slug)
        .ok_or_else(|| not_found("meter", q.slug))?;
    if !matches!(meter.aggregation, Aggregation::Sum | Aggregation::Count) {
        return Err(invalid(format!(
            "meter {} aggregates {:?}: its per-day value is not kept (only SUM and COUNT meters are queryable)",
            meter.slug, meter.aggregation
        )));
    }
    if let Some(w) = q.params.get("windowSize").filter(|w| w.as_str() != "DAY") {
        return Err(invalid(format!(
            "windowSize {w:?}: only DAY (the books' local days)"
        )));
    }
    let subject = q.params.get("subject").filter(|s| !s.is_empty());
    match subject {
        Some(s) => check_customer(caller, s)?,
        None if !caller.key.customers.is_empty() => {
            return Err(customer_forbidden(caller));
        }
        None => {}
    }
    let from = q
        .params
        .get("from")
        .map(|t| at_param(Some(t)))
        .transpose()?;
    let to = q.params.get("to").map(|t| at_param(Some(t))).transpose()?;
    let wanted = |k: &DayKey| {
        k.meter == meter.slug
            && subject.is_none_or(|s| &k.subject == s)
            && from.is_none_or(|f| k.start >= f)
            && to.is_none_or(|t| k.end <= t)
    };
    let mut sums: BTreeMap<(DateTime<Utc>, DateTime<Utc>, String, String), Decimal> =
        BTreeMap::new();
    let mut add = |k: &DayKey, v: Decimal| {
        let group = serde_json::to_string(&k.group).unwrap_or_default();
        *sums
            .entry((k.start, k.end, k.subject.clone(), group))
            .or_default() += v;
    };
    for (k, v) in days.days.iter().filter(|(k, _)| wanted(k)) {
        add(k, *v);
    }
    // Open day windows not yet seen closed (closed wins when both are read).
    for w in open.by_subscription.values().flat_map(|m| m.values()) {
        let (Some(k), Some(id)) = (day_key(w), window_identity(w)) else {
            continue;
        };
        if wanted(&k) && !days.counted(&id) {
            add(&k, w.quantity);
        }
    }
    let data: Vec<Value> = sums
        .into_iter()
        .map(|((start, end, subject, group), v)| {
            json!({
                "value": exact_number(v),
                "windowStart": start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "windowEnd": end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "subject": subject,
                "groupBy": serde_json::from_str::<Value>(&group).unwrap_or(Value::Null),
            })
        })
        .collect();
    Ok(json!({
        "windowSize": "DAY",
        "from": from.map(|f| f.to_rfc3339()),
        "to": to.map(|t| t.to_rfc3339()),
        "data": data,
    }))
}

/// A decimal as a JSON number with exactly its digits (serde_json keeps a
/// number's text with `arbitrary_precision`): no float in between.
fn exact_number(d: Decimal) -> Value {
    serde_json::from_str(&d.normalize().to_string())
        .unwrap_or_else(|_| Value::String(d.to_string()))
}
