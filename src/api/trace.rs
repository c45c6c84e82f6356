//! From an event to its journal lines and back, for the console's Trace
//! page: the stage instances' lineage (`lineage.endpoints`, asked with the
//! caller's key) joined with what the API follows itself, the invoice
//! documents and the ledger's acknowledgements.
//!
//! * `GET /v1/trace/event?source=S&id=I`: every stage's steps, the windows
//!   aggregate put the event into, what post made of each (postings, the
//!   invoice that clears it), and per posting its invoice and ledger ack;
//! * `GET /v1/trace/posting?key=K`: the windows behind a posting, every
//!   posting of each, and the same joins.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::follow::{AckState, InvoiceState};
use super::problem::Problem;
use super::{auth, count, queries, reasons, ApiState};
use crate::config::ApiScope;
use crate::http::percent_encode;
use crate::lineage::remote::{ask_all, Merged};
use crate::lineage::{PostingSources, Steps, WindowPostings, WindowRef};

/// Most windows one trace follows (an event is in a handful: its day and
/// period windows, and their adjustments).
pub const MAX_TRACE_WINDOWS: usize = 64;

pub async fn get_event(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let response = match event(&state, &headers, q).await {
        Ok(v) => super::json_response(StatusCode::OK, &v),
        Err(p) => p.into_response(),
    };
    count("/v1/trace/event", response.status());
    response
}

pub async fn get_posting(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let response = match posting(&state, &headers, q).await {
        Ok(v) => super::json_response(StatusCode::OK, &v),
        Err(p) => p.into_response(),
    };
    count("/v1/trace/posting", response.status());
    response
}

/// The caller (an unlimited read key: lineage spans customers) and its token.
fn caller_token(state: &ApiState, headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let caller = auth::authorize(&state.config.api.keys, headers, ApiScope::Read)?;
    if !caller.key.customers.is_empty() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            reasons::FORBIDDEN,
            "Forbidden",
            format!(
                "the key {:?} is limited to customers; a trace needs an unlimited read key",
                caller.key.name
            ),
        ));
    }
    super::ready(state)?;
    Ok(auth::bearer(headers).map(str::to_owned))
}

fn param(params: &BTreeMap<String, String>, k: &str) -> Result<String, Problem> {
    params
        .get(k)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| queries::invalid(format!("query parameter {k} is required")))
}

async fn event(state: &ApiState, headers: &HeaderMap, q: Option<String>) -> Result<Value, Problem> {
    let token = caller_token(state, headers)?;
    let params = crate::http::query_params(q);
    let (source, id) = (param(&params, "source")?, param(&params, "id")?);
    let path = format!(
        "/lineage/event?source={}&id={}",
        percent_encode(&source),
        percent_encode(&id)
    );
    let endpoints = crate::lineage::remote::endpoints(&state.config);
    let (stages, windows, unanswered) = tokio::task::spawn_blocking(move || {
        let (stages, mut unanswered) = ask_all(&endpoints, &path, token.as_deref())?;
        let refs = aggregate_windows(&stages);
        let windows = posted(&endpoints, &refs, token.as_deref(), &mut unanswered);
        Ok::<_, String>((stages, windows, unanswered))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|d| unavailable(state, d))?;
    let invoices = state.invoices.read();
    let postings = joins(&windows, &invoices, &state.acks.read());
    let cleared_by = invoices_of(&windows, &invoices);
    Ok(json!({
        "source": source,
        "id": id,
        "known": !stages.is_empty(),
        "stages": stages,
        "windows": windows_json(&windows),
        "postings": postings,
        "invoices": cleared_by,
        "unanswered": unanswered,
    }))
}

async fn posting(
    state: &ApiState,
    headers: &HeaderMap,
    q: Option<String>,
) -> Result<Value, Problem> {
    let token = caller_token(state, headers)?;
    let key = param(&crate::http::query_params(q), "key")?;
    let path = format!("/lineage/posting?key={}", percent_encode(&key));
    let endpoints = crate::lineage::remote::endpoints(&state.config);
    let (sources, windows, unanswered) = tokio::task::spawn_blocking(move || {
        let (found, mut unanswered) = ask_all(&endpoints, &path, token.as_deref())?;
        let sources: Option<PostingSources> = values(&found, "post")
            .next()
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        let refs = sources
            .as_ref()
            .map(|s| s.windows.clone())
            .unwrap_or_default();
        let windows = posted(&endpoints, &refs, token.as_deref(), &mut unanswered);
        Ok::<_, String>((sources, windows, unanswered))
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|d| unavailable(state, d))?;
    let invoices = state.invoices.read();
    let postings = joins(&windows, &invoices, &state.acks.read());
    let cleared_by = invoices_of(&windows, &invoices);
    Ok(json!({
        "key": key,
        "known": sources.is_some(),
        "sources": sources,
        "windows": windows_json(&windows),
        "postings": postings,
        "invoices": cleared_by,
        "unanswered": unanswered,
    }))
}

fn unavailable(state: &ApiState, detail: String) -> Problem {
    let mut p = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        reasons::LINEAGE_UNAVAILABLE,
        "Lineage unavailable",
        detail,
    );
    p.retry_after_s = Some(state.config.api.retry_after_s);
    p
}

/// The `value`s a stage's partitions answered.
fn values<'m>(m: &'m Merged, stage: &str) -> impl Iterator<Item = &'m Value> {
    m.get(stage)
        .into_iter()
        .flatten()
        .filter_map(|f| f.get("value"))
}

/// Every window aggregate's steps name, once each, sorted.
fn aggregate_windows(m: &Merged) -> Vec<WindowRef> {
    let mut out: Vec<WindowRef> = values(m, "aggregate")
        .filter_map(|v| serde_json::from_value::<Steps>(v.clone()).ok())
        .flat_map(|s| s.steps)
        .flat_map(|s| s.windows())
        .collect();
    out.sort();
    out.dedup();
    out.truncate(MAX_TRACE_WINDOWS);
    out
}

/// What post made of each window (empty: still open), asked of the stages.
fn posted(
    endpoints: &[String],
    refs: &[WindowRef],
    token: Option<&str>,
    unanswered: &mut Vec<String>,
) -> Vec<(WindowRef, Vec<WindowPostings>)> {
    refs.iter()
        .map(|w| {
            let made = match ask_all(endpoints, &w.lineage_path(), token) {
                Ok((m, _)) => values(&m, "post")
                    .filter_map(|v| serde_json::from_value(v.clone()).ok())
                    .collect(),
                Err(e) => {
                    unanswered.push(e);
                    Vec::new()
                }
            };
            (w.clone(), made)
        })
        .collect()
}

fn windows_json(windows: &[(WindowRef, Vec<WindowPostings>)]) -> Value {
    Value::Array(
        windows
            .iter()
            .map(|(w, made)| json!({"window": w, "posted": made}))
            .collect(),
    )
}

/// Per posting key: the invoice listing it (id, status) and the ledger's
/// acknowledgement, when there is one.
fn joins(
    windows: &[(WindowRef, Vec<WindowPostings>)],
    invoices: &InvoiceState,
    acks: &AckState,
) -> Value {
    let mut out = serde_json::Map::new();
    let keys = windows
        .iter()
        .flat_map(|(_, made)| made)
        .flat_map(|m| &m.postings)
        .map(|p| &p.idempotency_key);
    for key in keys {
        let invoice = invoices
            .invoice_of_posting
            .get(key)
            .and_then(|id| invoices.get(id))
            .map(|i| json!({"invoice_id": i.invoice_id, "status": i.status.as_str()}));
        let ack = acks.get(key).map(
            |a| json!({"status": a.status, "ledger_row_id": a.ledger_row_id, "reason": a.reason}),
        );
        out.insert(key.clone(), json!({"invoice": invoice, "ack": ack}));
    }
    Value::Object(out)
}

/// Every invoice a window clears, by id: its status and version now.
fn invoices_of(windows: &[(WindowRef, Vec<WindowPostings>)], invoices: &InvoiceState) -> Value {
    let ids = windows
        .iter()
        .flat_map(|(_, made)| made)
        .filter_map(|m| m.invoice.as_ref());
    let mut out = serde_json::Map::new();
    for id in ids {
        if let Some(i) = invoices.get(id) {
            let v = json!({"status": i.status.as_str(), "version": i.version, "total": i.totals.total.to_string(), "currency": i.currency});
            out.insert(id.clone(), v);
        }
    }
    Value::Object(out)
}
