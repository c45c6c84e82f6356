//! The invoice workflow over HTTP (what the console acts through):
//!
//! * `GET /v1/invoices`: the latest version of every invoice the key may
//!   read, filtered (status, customer, period, legal_entity) and paged in
//!   invoice id order (`limit`, `after` = the last id of the previous page);
//! * `POST /v1/invoices/{id}/commands`: approve, hold, release, void,
//!   credit, dispute_open, dispute_resolve as the key's actor, signed with
//!   that actor's key in `invoice.actor_keys_hex`, in a Kafka transaction
//!   (202: the invoice stage applies or refuses it shortly);
//! * `GET /v1/commands/{id}?invoice_id=I`: pending, applied (the invoice
//!   after it) or refused (the invoice stage's reason code).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::follow::{InvoiceState, RefusalState};
use super::problem::Problem;
use super::queries::{check_customer, invalid, not_found};
use super::reasons;
use crate::config::Config;
use crate::contracts::{Command, CommandKind, DisputeOutcome, Invoice, InvoiceFilter};

/// Invoices per page when `limit` is not given.
pub const DEFAULT_PAGE_INVOICES: usize = 50;
/// Most invoices one page holds.
pub const MAX_PAGE_INVOICES: usize = 500;
/// Longest reason a command may carry.
pub const MAX_REASON_BYTES: usize = 1_000;
/// Longest command id a client may choose.
pub const MAX_COMMAND_ID_BYTES: usize = 128;

/// `GET /v1/invoices`: one page of the invoices matching the filter.
pub fn list(
    invoices: &InvoiceState,
    caller: &Caller<'_>,
    params: &BTreeMap<String, String>,
) -> Result<Value, Problem> {
    let known = [
        "status",
        "customer",
        "period",
        "legal_entity",
        "held_by",
        "limit",
        "after",
    ];
    if let Some(k) = params.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(invalid(format!("unknown query parameter {k}")));
    }
    let text = |k: &str| params.get(k).filter(|v| !v.is_empty()).cloned();
    let filter = InvoiceFilter {
        status: text("status"),
        customer: text("customer"),
        period: text("period"),
        legal_entity: text("legal_entity"),
        held_by: text("held_by"),
    };
    let limit = match params.get("limit") {
        None => DEFAULT_PAGE_INVOICES,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_INVOICES).contains(n))
            .ok_or_else(|| invalid(format!("limit: 1 to {MAX_PAGE_INVOICES}")))?,
    };
    let after = text("after");
    let visible = |i: &&Invoice| filter.matches(i) && caller.may_read(&i.customer.id);
    let mut matching = 0usize;
    let mut page = Vec::new();
    let mut more = false;
    for (id, sub) in &invoices.subscription_of {
        let found = invoices.by_subscription.get(sub).and_then(|m| m.get(id));
        let Some(inv) = found.filter(visible) else {
            continue;
        };
        matching += 1;
        if after.as_deref().is_some_and(|a| id.as_str() <= a) {
            continue;
        }
        if page.len() == limit {
            more = true;
            continue;
        }
        page.push(summary(inv));
    }
    let next_after = more
        .then(|| {
            page.last()
                .and_then(|s| s["invoice_id"].as_str().map(str::to_owned))
        })
        .flatten();
    Ok(json!({"invoices": page, "matching": matching, "next_after": next_after}))
}

/// The row of an invoice in a list: amounts as decimal strings.
pub fn summary(i: &Invoice) -> Value {
    json!({
        "invoice_id": i.invoice_id,
        "version": i.version,
        "customer_id": i.customer.id,
        "customer_name": i.customer.name,
        "subscription_id": i.subscription_id,
        "period": i.service_interval.id,
        "legal_entity": i.legal_entity,
        "currency": i.currency,
        "status": i.status.as_str(),
        "holds": i.holds,
        "total": i.totals.total.to_string(),
        "open": i.totals.open.to_string(),
        "credited": i.totals.credited.to_string(),
        "disputed": i.totals.disputed.to_string(),
    })
}

/// The body of `POST /v1/invoices/{id}/commands`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// approve, hold, release, void, credit, dispute_open, dispute_resolve.
    pub kind: String,
    /// Why (kept on the invoice's history).
    pub reason: String,
    /// The client's id for the command (re-sending it once applied changes
    /// nothing; a refused one is tried again); default: a new one.
    #[serde(default)]
    pub command_id: Option<String>,
    /// credit (or percent), dispute_open: a decimal string.
    #[serde(default)]
    pub amount: Option<String>,
    /// credit: percent of the invoice's total, a decimal string.
    #[serde(default)]
    pub percent: Option<String>,
    /// dispute_resolve: the dispute (its open command's id).
    #[serde(default)]
    pub dispute_id: Option<String>,
    /// dispute_resolve: won or lost.
    #[serde(default)]
    pub outcome: Option<String>,
}

/// The command `req` asks for on `invoice_id`, by the key's actor; refused
/// (400/403/404) before anything is sent when it cannot be right.
pub fn build_command(
    invoices: &InvoiceState,
    caller: &Caller<'_>,
    invoice_id: &str,
    req: CommandRequest,
) -> Result<Command, Problem> {
    let inv = invoices
        .get(invoice_id)
        .ok_or_else(|| not_found("invoice", invoice_id))?;
    check_customer(caller, &inv.customer.id)?;
    let kind = operator_kind(&req.kind)?;
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > MAX_REASON_BYTES {
        return Err(invalid(format!(
            "reason: required, at most {MAX_REASON_BYTES} bytes"
        )));
    }
    let id = match req.command_id {
        Some(id) => checked_command_id(id)?,
        None => new_command_id(caller.key.actor()),
    };
    let mut cmd = Command::new(
        id,
        kind,
        &inv.customer.id,
        caller.key.actor(),
        chrono::Utc::now(),
    );
    cmd.reason = reason.to_owned();
    cmd.invoice_id = Some(inv.invoice_id.clone());
    cmd.amount = positive("amount", req.amount.as_deref())?;
    cmd.percent = positive("percent", req.percent.as_deref())?;
    check_amounts(&cmd, &inv.currency)?;
    cmd.dispute_id = req.dispute_id.filter(|d| !d.is_empty());
    cmd.outcome = match req.outcome.as_deref() {
        None => None,
        Some("won") => Some(DisputeOutcome::Won),
        Some("lost") => Some(DisputeOutcome::Lost),
        Some(o) => return Err(invalid(format!("outcome {o:?}: won or lost"))),
    };
    check_fields(&cmd)?;
    Ok(cmd)
}

/// What the invoice stage would refuse as `invalid_amount`, refused now
/// (400) rather than after a 202: an amount with more decimals than the
/// invoice's currency has, a percent above 100.
fn check_amounts(cmd: &Command, currency: &str) -> Result<(), Problem> {
    if let Some(a) = cmd.amount {
        let exponent = crate::money::minor_unit_exponent(currency)
            .map_err(|e| invalid(format!("invoice currency {currency}: {e}")))?;
        if !crate::money::fits_minor_unit(a, exponent) {
            return Err(invalid(format!(
                "amount {a}: at most {exponent} decimals ({currency})"
            )));
        }
    }
    match cmd.percent {
        Some(p) if p > Decimal::ONE_HUNDRED => Err(invalid(format!("percent {p}: at most 100"))),
        _ => Ok(()),
    }
}

/// The kinds an operator sends (draft and parked notices are the stages').
fn operator_kind(kind: &str) -> Result<CommandKind, Problem> {
    let k: CommandKind = serde_json::from_value(Value::String(kind.to_owned()))
        .map_err(|_| invalid(format!("kind {kind:?}: {}", OPERATOR_KINDS.join(", "))))?;
    if OPERATOR_KINDS.contains(&k.as_str()) {
        Ok(k)
    } else {
        Err(invalid(format!(
            "kind {kind:?}: {}",
            OPERATOR_KINDS.join(", ")
        )))
    }
}

/// What `POST /v1/invoices/{id}/commands` accepts as `kind`.
pub const OPERATOR_KINDS: &[&str] = &[
    "approve",
    "hold",
    "release",
    "void",
    "credit",
    "dispute_open",
    "dispute_resolve",
];

/// Each kind's fields, present exactly when the kind uses them.
fn check_fields(c: &Command) -> Result<(), Problem> {
    let (amount, percent) = (c.amount.is_some(), c.percent.is_some());
    let resolve = (c.dispute_id.is_some(), c.outcome.is_some());
    let ok = match c.kind {
        CommandKind::Credit => amount != percent && resolve == (false, false),
        CommandKind::DisputeOpen => amount && !percent && resolve == (false, false),
        CommandKind::DisputeResolve => !amount && !percent && resolve == (true, true),
        _ => !amount && !percent && resolve == (false, false),
    };
    if ok {
        return Ok(());
    }
    Err(invalid(format!(
        "{}: {}",
        c.kind.as_str(),
        match c.kind {
            CommandKind::Credit => "exactly one of amount and percent",
            CommandKind::DisputeOpen => "amount, and no percent, dispute_id or outcome",
            CommandKind::DisputeResolve => "dispute_id and outcome, and no amount or percent",
            _ => "no amount, percent, dispute_id or outcome",
        }
    )))
}

fn positive(field: &str, raw: Option<&str>) -> Result<Option<Decimal>, Problem> {
    let Some(raw) = raw else { return Ok(None) };
    let d = crate::ingest::rules::parse_exact_decimal(raw)
        .map_err(|e| invalid(format!("{field}: {e}")))?;
    if d <= Decimal::ZERO {
        return Err(invalid(format!("{field}: must be > 0")));
    }
    Ok(Some(d))
}

fn checked_command_id(id: String) -> Result<String, Problem> {
    let fine = |c: char| c.is_ascii_alphanumeric() || "-_.:@".contains(c);
    if id.is_empty() || id.len() > MAX_COMMAND_ID_BYTES || !id.chars().all(fine) {
        return Err(invalid(format!(
            "command_id: 1 to {MAX_COMMAND_ID_BYTES} of A-Z a-z 0-9 - _ . : @"
        )));
    }
    Ok(id)
}

fn new_command_id(actor: &str) -> String {
    format!(
        "api-{actor}-{}-{:08x}",
        chrono::Utc::now().timestamp_millis(),
        rand::random::<u32>()
    )
}

/// The hex key the key's actor signs with: `None` when the invoice stage
/// takes unsigned commands (`invoice.actor_keys_hex` empty); 403 when it
/// does not and the actor has no key there.
pub fn actor_key<'c>(config: &'c Config, caller: &Caller<'_>) -> Result<Option<&'c str>, Problem> {
    let keys = &config.invoice.actor_keys_hex;
    if keys.is_empty() {
        return Ok(None);
    }
    keys.get(caller.key.actor())
        .map(|k| Some(k.as_str()))
        .ok_or_else(|| {
            Problem::new(
                StatusCode::FORBIDDEN,
                reasons::ACTOR_KEY_MISSING,
                "Forbidden",
                format!(
                    "the key {:?} acts as {:?}, who has no key in invoice.actor_keys_hex",
                    caller.key.name,
                    caller.key.actor()
                ),
            )
        })
}

/// What the 202 of a sent command says.
pub fn accepted(cmd: &Command) -> Value {
    let invoice_id = cmd.invoice_id.as_deref().unwrap_or_default();
    json!({
        "command_id": cmd.id,
        "kind": cmd.kind.as_str(),
        "invoice_id": invoice_id,
        "actor": cmd.actor,
        "status": "pending",
        "status_url": format!(
            "/v1/commands/{}?invoice_id={}",
            crate::http::percent_encode(&cmd.id),
            crate::http::percent_encode(invoice_id)
        ),
    })
}

/// `GET /v1/commands/{id}?invoice_id=I`: applied when the invoice's
/// history has it, refused when the invoice stage dead-lettered it,
/// pending otherwise.
pub fn status(
    invoices: &InvoiceState,
    refusals: &RefusalState,
    caller: &Caller<'_>,
    command_id: &str,
    params: &BTreeMap<String, String>,
) -> Result<Value, Problem> {
    let invoice_id = params
        .get("invoice_id")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| invalid("query parameter invoice_id is required"))?;
    let inv = invoices
        .get(invoice_id)
        .ok_or_else(|| not_found("invoice", invoice_id))?;
    check_customer(caller, &inv.customer.id)?;
    if let Some(change) = inv.change_by(command_id) {
        return Ok(json!({
            "command_id": command_id,
            "status": "applied",
            "change": change,
            "invoice": summary(inv),
        }));
    }
    if let Some(r) = refusals.by_command.get(command_id) {
        return Ok(json!({
            "command_id": command_id,
            "status": "refused",
            "code": r.code,
            "message": r.message,
            "invoice": summary(inv),
        }));
    }
    Ok(json!({"command_id": command_id, "status": "pending", "invoice": summary(inv)}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKeyConfig, ApiScope};

    fn key(customers: &[&str]) -> ApiKeyConfig {
        ApiKeyConfig {
            name: "ops".into(),
            sha256_hex: String::new(),
            scopes: vec![ApiScope::Read, ApiScope::Approve],
            sources: vec![],
            customers: customers.iter().map(|c| c.to_string()).collect(),
            actor: Some("alice".into()),
        }
    }

    fn invoice(n: usize, status: &str) -> Invoice {
        let v = json!({
            "invoice_id": format!("s-{n:05}@2026-10-01"), "version": 1,
            "customer": {"id": format!("c{}", n % 3), "name": "C", "legal_entity": "le", "erp_customer_id": "E"},
            "subscription_id": format!("s-{n:05}"), "plan_id": "p", "plan_version": 1,
            "legal_entity": "le", "currency": "USD", "time_zone": "UTC",
            "service_interval": {"id": "2026-10-01", "start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"},
            "status": status, "holds": [], "lines": [],
            "totals": {"subtotal": "1.10", "tax": "0", "service_credits": "0", "total": "1.10", "credited": "0", "disputed": "0", "open": "1.10"},
            "credit_memos": [], "disputes": [], "postings": [], "history": []
        });
        serde_json::from_value(v).unwrap()
    }

    fn state(n: usize) -> InvoiceState {
        let mut s = InvoiceState::default();
        for i in 0..n {
            let status = if i % 2 == 0 {
                "pending_approval"
            } else {
                "posted"
            };
            let inv = invoice(i, status);
            s.subscription_of
                .insert(inv.invoice_id.clone(), inv.subscription_id.clone());
            s.by_subscription
                .entry(inv.subscription_id.clone())
                .or_default()
                .insert(inv.invoice_id.clone(), inv);
        }
        s
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pages_cover_every_matching_invoice_once_in_id_order() {
        let s = state(1_001);
        let k = key(&[]);
        let caller = Caller { key: &k };
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut p = params(&[("status", "pending_approval"), ("limit", "100")]);
            if let Some(a) = &after {
                p.insert("after".into(), a.clone());
            }
            let page = list(&s, &caller, &p).unwrap();
            assert_eq!(page["matching"], 501);
            for row in page["invoices"].as_array().unwrap() {
                assert_eq!(row["status"], "pending_approval");
                assert_eq!(row["total"], "1.10", "a decimal string, never a number");
                seen.push(row["invoice_id"].as_str().unwrap().to_owned());
            }
            match page["next_after"].as_str() {
                Some(a) => after = Some(a.to_owned()),
                None => break,
            }
        }
        assert_eq!(seen.len(), 501);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        let limited = key(&["c1"]);
        let caller = Caller { key: &limited };
        let page = list(&s, &caller, &params(&[("limit", "500")])).unwrap();
        assert_eq!(page["matching"], 334, "only the key's customer");
        for bad in [("limit", "0"), ("limit", "501"), ("sort", "x")] {
            let e = list(&s, &caller, &params(&[bad])).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }

    fn request(kind: &str, extra: Value) -> CommandRequest {
        let mut v = json!({"kind": kind, "reason": "checked"});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn commands_carry_the_keys_actor_and_only_the_fields_their_kind_uses() {
        let s = state(3);
        let k = key(&[]);
        let caller = Caller { key: &k };
        let id = "s-00000@2026-10-01";
        let c = build_command(&s, &caller, id, request("approve", json!({}))).unwrap();
        assert_eq!((c.actor.as_str(), c.customer_id.as_str()), ("alice", "c0"));
        assert_eq!(c.invoice_id.as_deref(), Some(id));
        let c =
            build_command(&s, &caller, id, request("credit", json!({"percent": "10"}))).unwrap();
        assert_eq!(c.percent, Some(Decimal::TEN));
        let refused = [
            request("credit", json!({})),
            request("credit", json!({"amount": "1", "percent": "1"})),
            request("credit", json!({"amount": "1.2.3"})),
            request("credit", json!({"amount": "-1"})),
            request("credit", json!({"amount": "10.005"})),
            request("credit", json!({"percent": "100.5"})),
            request("dispute_open", json!({"amount": "0.001"})),
            request("approve", json!({"amount": "1"})),
            request("dispute_resolve", json!({"dispute_id": "d"})),
            request("draft", json!({})),
            request("approve", json!({"command_id": "a b"})),
            request("approve", json!({"reason": " "})),
        ];
        for r in refused {
            let why = format!("{r:?}");
            let e = build_command(&s, &caller, id, r).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{why}");
        }
        let e = build_command(&s, &caller, "nope", request("approve", json!({}))).unwrap_err();
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        let other = key(&["c9"]);
        let e =
            build_command(&s, &Caller { key: &other }, id, request("hold", json!({}))).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN);
    }
}
