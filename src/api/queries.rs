//! The read routes (scope `read`) answered from the reference data this
//! process follows ([`super::follow::RefView`]) and the meters of the
//! config (the ones answered from aggregate's windows are in
//! [`super::usage`]):
//!
//! * `GET /v1/customers/{id}`: the customer and its subscriptions;
//! * `GET /v1/subscriptions/{id}[?at=T]`: the contract and the plan version
//!   in force at `T` (default now);
//! * `GET /v1/plans/{id}`: every version of a plan;
//! * `POST /v1/quotes`: the price of a quantity of a meter under a
//!   subscription (its overrides included) or a plan, by the rating library,
//!   with the tier breakdown; `amount` exact, `amount_rounded` to the
//!   currency's minor unit with `post.rounding_mode`;
//! * `GET /api/v1/meters`: the meters, in OpenMeter's shape.
//!
//! A key limited to some customers reads only those (403 otherwise).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::problem::Problem;
use super::reasons;
use crate::config::Config;
use crate::money;
use crate::rating::ChargeModel;
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

pub fn customer_forbidden(caller: &Caller<'_>) -> Problem {
    Problem::new(
        StatusCode::FORBIDDEN,
        reasons::FORBIDDEN,
        "Forbidden",
        format!("the key {:?} may not read this customer", caller.key.name),
    )
}

/// 403 unless the key reads every customer (`what` spans them).
pub fn unlimited(caller: &Caller<'_>, what: &str) -> Result<(), Problem> {
    if caller.key.customers.is_empty() {
        return Ok(());
    }
    Err(Problem::new(
        StatusCode::FORBIDDEN,
        reasons::FORBIDDEN,
        "Forbidden",
        format!(
            "the key {:?} is limited to customers; {what} needs an unlimited read key",
            caller.key.name
        ),
    ))
}

pub fn check_customer(caller: &Caller<'_>, customer_id: &str) -> Result<(), Problem> {
    if caller.may_read(customer_id) {
        Ok(())
    } else {
        Err(customer_forbidden(caller))
    }
}

/// The subscription `id`, if it exists (404) and the key may read its
/// customer (403).
pub fn readable_subscription<'t>(
    tables: &'t RefTables,
    caller: &Caller<'_>,
    id: &str,
) -> Result<&'t crate::refdata::Subscription, Problem> {
    let s = tables
        .subscription(id)
        .ok_or_else(|| not_found("subscription", id))?;
    check_customer(caller, &s.customer_id)?;
    Ok(s)
}

/// The query's parameters by name; 400 for a name given twice with two
/// values (which one the caller meant is not for the API to guess).
pub fn single_params(q: Option<String>) -> Result<BTreeMap<String, String>, Problem> {
    let mut params = BTreeMap::new();
    for (name, value) in crate::http::query_pairs(q) {
        match params.get(&name) {
            Some(before) if *before != value => {
                return Err(invalid(format!(
                    "query parameter {name} given twice ({before:?} and {value:?})"
                )))
            }
            _ => {
                params.insert(name, value);
            }
        }
    }
    Ok(params)
}

/// `at=` of a query, RFC 3339; now when absent.
pub fn at_param(raw: Option<&String>) -> Result<DateTime<Utc>, Problem> {
    match raw {
        None => Ok(Utc::now()),
        Some(t) => time_param("at", t),
    }
}

/// Query parameter `name`, an RFC 3339 time (any offset), in UTC.
pub fn time_param(name: &str, raw: &str) -> Result<DateTime<Utc>, Problem> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| invalid(format!("{name} {raw:?}: not an RFC 3339 time ({e})")))
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
    let s = readable_subscription(tables, caller, id)?;
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
    /// A percentage charge only: the period's transaction amounts in event
    /// order (decimal strings), priced from an empty period with its free
    /// allowances; `quantity` must be their sum. Without it a percentage
    /// quote is the fee of one paid transaction of `quantity`.
    #[serde(default)]
    pub transactions: Option<Vec<String>>,
}

/// Most transactions one quote may price.
pub const MAX_QUOTE_TRANSACTIONS: usize = 10_000;

/// The amount, tier lines and parts of a quote of `quantity` under `model`.
fn price_quote(
    model: &ChargeModel,
    quantity: rust_decimal::Decimal,
    transactions: Option<&[String]>,
) -> Result<(rust_decimal::Decimal, Value, crate::rating::Parts), Problem> {
    let refused = |e: crate::rating::RatingError| invalid(format!("{}: {e}", e.code()));
    match model {
        ChargeModel::Percentage(p) => {
            let charges = match transactions {
                None => vec![p.paid(quantity, rust_decimal::Decimal::ZERO).map_err(refused)?],
                Some(list) => percentage_transactions(p, quantity, list)?,
            };
            let mut amount = rust_decimal::Decimal::ZERO;
            let mut parts = crate::rating::Parts::new();
            for c in &charges {
                amount = amount
                    .checked_add(c.amount)
                    .ok_or_else(|| invalid("amount overflow"))?;
                crate::rating::add_parts(&mut parts, &c.parts).map_err(refused)?;
            }
            Ok((amount, json!([]), parts))
        }
        ChargeModel::Dynamic { amount_property, .. } => Err(invalid(format!(
            "a dynamic charge is priced by each event's own amount (at {amount_property}); there is no price to quote"
        ))),
        _ if transactions.is_some() => Err(invalid("transactions applies to a percentage charge only")),
        _ => {
            let lines = model.breakdown(quantity).map_err(refused)?;
            let amount = model.price(quantity).map_err(refused)?;
            let parts = match model {
                ChargeModel::GraduatedPercentage { .. } => model.parts(quantity).map_err(refused)?,
                _ => crate::rating::Parts::new(),
            };
            Ok((amount, json!(lines), parts))
        }
    }
}

/// The charges of a period's transactions in order (see [`QuoteRequest`]).
fn percentage_transactions(
    model: &crate::rating::PercentageModel,
    quantity: rust_decimal::Decimal,
    list: &[String],
) -> Result<Vec<crate::rating::Charge>, Problem> {
    if list.len() > MAX_QUOTE_TRANSACTIONS {
        return Err(invalid(format!(
            "at most {MAX_QUOTE_TRANSACTIONS} transactions per quote"
        )));
    }
    let mut window = crate::rating::AllowanceWindow::default();
    let mut sum = rust_decimal::Decimal::ZERO;
    let mut charges = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        let value = crate::ingest::rules::parse_exact_decimal(text)
            .map_err(|e| invalid(format!("transactions[{i}]: {e}")))?;
        sum = sum
            .checked_add(value)
            .ok_or_else(|| invalid("transactions overflow"))?;
        let position = i64::try_from(i).unwrap_or(i64::MAX);
        let key = crate::rating::EventKey {
            event_time: position,
            sub_micro_ns: 0,
            event_id: String::new(),
        };
        charges.push(
            window
                .rate(model, key, value)
                .map_err(|e| invalid(format!("transactions[{i}]: {}: {e}", e.code())))?,
        );
    }
    if sum != quantity {
        return Err(invalid(format!(
            "quantity {quantity} is not the sum of the transactions ({sum})"
        )));
    }
    Ok(charges)
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
            let s = readable_subscription(tables, caller, sid)?;
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
    let (amount, lines, parts) = price_quote(model, quantity, req.transactions.as_deref())?;
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
        "parts": parts,
    }))
}

/// OpenMeter's meter listing.
pub fn meters(config: &Config) -> Value {
    Value::Array(config.meters.iter().map(meter_json).collect())
}

/// `GET /api/v1/meters/{slug}`: one meter, as in the list.
pub fn meter(config: &Config, slug: &str) -> Result<Value, Problem> {
    find_meter(config, slug).map(meter_json)
}

/// The meter `slug` of the configuration, or a 404.
pub fn find_meter<'c>(config: &'c Config, slug: &str) -> Result<&'c crate::meter::Meter, Problem> {
    config
        .meters
        .iter()
        .find(|m| m.slug == slug)
        .ok_or_else(|| not_found("meter", slug))
}

/// A meter in OpenMeter's shape.
fn meter_json(m: &crate::meter::Meter) -> Value {
    json!({
        "id": m.slug,
        "slug": m.slug,
        "eventType": m.event_type,
        "aggregation": m.aggregation,
        "valueProperty": m.value_property,
        "groupBy": m.group_by,
    })
}

/// `GET /v1/invoices/{id}`: the latest version of an invoice document.
pub fn invoice(
    invoices: &super::follow::InvoiceState,
    caller: &Caller<'_>,
    id: &str,
) -> Result<Value, Problem> {
    let inv = invoices.get(id).ok_or_else(|| not_found("invoice", id))?;
    check_customer(caller, &inv.customer.id)?;
    serde_json::to_value(inv).map_err(|e| invalid(format!("invoice {id}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn take_rate() -> ChargeModel {
        serde_json::from_str(
            r#"{"model":"percentage","rate":"1.3","fixed_fee_per_event":"0.30","min_per_event":"0.50","max_per_event":"5.00","free_events":2}"#,
        )
        .unwrap()
    }

    #[test]
    fn a_parameter_given_twice_with_two_values_is_refused() {
        let q = |s: &str| single_params(Some(s.to_string()));
        let p = q("status=held&customer=c%201&status=held").unwrap();
        assert_eq!(p.get("status").map(String::as_str), Some("held"));
        assert_eq!(p.get("customer").map(String::as_str), Some("c 1"));
        let refused = q("status=held&status=approved").unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(
            refused.detail.contains("status given twice"),
            "{}",
            refused.detail
        );
    }

    #[test]
    fn percentage_quotes_one_transaction_or_a_period_in_order() {
        let (amount, lines, parts) = price_quote(&take_rate(), dec!(1000), None).unwrap();
        assert_eq!(amount, dec!(5.00), "13.30 capped at the maximum");
        assert_eq!(lines, json!([]));
        assert_eq!(parts.get("min_max_adjustment"), Some(&dec!(-8.30)));
        let list: Vec<String> = ["10", "20", "30", "5", "1000", "100"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (amount, _, parts) = price_quote(&take_rate(), dec!(1165), Some(&list)).unwrap();
        assert_eq!(amount, dec!(7.79));
        assert_eq!(parts.get("free_events"), Some(&dec!(2)));
        let refused = price_quote(&take_rate(), dec!(1), Some(&list)).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn dynamic_has_no_quote_and_graduated_percentage_has_tiers() {
        let dynamic = ChargeModel::Dynamic {
            amount_property: "$.price".into(),
            currency_property: None,
        };
        let refused = price_quote(&dynamic, dec!(1), None).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        let tiers: ChargeModel = serde_json::from_str(
            r#"{"model":"graduated_percentage","tiers":[{"up_to":"1000","rate":"3"},{"up_to":null,"rate":"1.5","flat_fee":"1"}]}"#,
        )
        .unwrap();
        let (amount, lines, parts) = price_quote(&tiers, dec!(2000), None).unwrap();
        assert_eq!(amount, dec!(46), "30 + 1 + 15");
        assert_eq!(lines.as_array().map(Vec::len), Some(2));
        assert_eq!(parts.get("tier_1_amount"), Some(&dec!(16)));
    }
}
