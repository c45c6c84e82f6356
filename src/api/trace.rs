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
use axum::response::Response;
use serde_json::{json, Value};

use super::follow::{AckState, InvoiceState};
use super::problem::Problem;
use super::{auth, queries, reasons, ApiState};
use crate::config::ApiScope;
use crate::http::percent_encode;
use crate::lineage::remote::{ask_all, Merged};
use crate::lineage::{PostingSources, Steps, WindowPostings, WindowRef};

/// Most windows one trace follows (an event is in a handful: its day and
/// period windows, and their adjustments).
pub const MAX_TRACE_WINDOWS: usize = 64;

/// `GET /v1/lineage/event?source=S&id=I`: the event's steps only, as the
/// stage instances answer them.
pub async fn get_lineage(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let result = lineage(&state, &headers, q).await;
    super::respond("/v1/lineage/event", StatusCode::OK, result)
}

pub async fn get_event(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let result = event(&state, &headers, q).await;
    super::respond("/v1/trace/event", StatusCode::OK, result)
}

pub async fn get_posting(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let result = posting(&state, &headers, q).await;
    super::respond("/v1/trace/posting", StatusCode::OK, result)
}

/// The caller's token, once its key may read lineage (scope read, every
/// customer: lineage spans them).
fn caller_token(state: &ApiState, headers: &HeaderMap) -> Result<Option<String>, Problem> {
    let caller = auth::authorize(&state.config.api.keys, headers, ApiScope::Read)?;
    queries::unlimited(&caller, "lineage")?;
    Ok(auth::bearer(headers).map(str::to_owned))
}

fn param(params: &BTreeMap<String, String>, k: &str) -> Result<String, Problem> {
    params
        .get(k)
        .filter(|v| !v.is_empty())
        .cloned()
        .ok_or_else(|| queries::invalid(format!("query parameter {k} is required")))
}

/// The `/lineage/event` path of the `source` and `id` query parameters.
fn event_path(params: &BTreeMap<String, String>) -> Result<(String, String, String), Problem> {
    let (source, id) = (param(params, "source")?, param(params, "id")?);
    let path = format!(
        "/lineage/event?source={}&id={}",
        percent_encode(&source),
        percent_encode(&id)
    );
    Ok((source, id, path))
}

/// What the stages answered for a path, and what post made of the windows
/// `pick` finds in that answer.
struct Asked {
    found: Merged,
    windows: Vec<(WindowRef, Vec<WindowPostings>)>,
    unanswered: Vec<String>,
}

async fn ask(
    state: &ApiState,
    token: Option<String>,
    path: String,
    pick: fn(&Merged) -> Vec<WindowRef>,
) -> Result<Asked, Problem> {
    let endpoints = crate::lineage::remote::endpoints(&state.config);
    tokio::task::spawn_blocking(move || {
        let (found, mut unanswered) = ask_all(&endpoints, &path, token.as_deref())?;
        let refs = pick(&found);
        let windows = posted(&endpoints, &refs, token.as_deref(), &mut unanswered);
        Ok::<_, String>(Asked {
            found,
            windows,
            unanswered,
        })
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|d| {
        super::unavailable(
            state,
            reasons::LINEAGE_UNAVAILABLE,
            "Lineage unavailable",
            d,
        )
    })
}

async fn lineage(
    state: &ApiState,
    headers: &HeaderMap,
    q: Option<String>,
) -> Result<Value, Problem> {
    let token = caller_token(state, headers)?;
    let (source, id, path) = event_path(&super::queries::single_params(q)?)?;
    let asked = ask(state, token, path, |_| Vec::new()).await?;
    Ok(json!({
        "source": source,
        "id": id,
        "stages": asked.found,
        "unanswered": asked.unanswered,
    }))
}

async fn event(state: &ApiState, headers: &HeaderMap, q: Option<String>) -> Result<Value, Problem> {
    let token = caller_token(state, headers)?;
    super::ready(state)?;
    let (source, id, path) = event_path(&super::queries::single_params(q)?)?;
    let asked = ask(state, token, path, aggregate_windows).await?;
    let head = json!({
        "source": source,
        "id": id,
        "known": !asked.found.is_empty(),
        "stages": asked.found,
    });
    Ok(joined(state, &asked, head))
}

async fn posting(
    state: &ApiState,
    headers: &HeaderMap,
    q: Option<String>,
) -> Result<Value, Problem> {
    let token = caller_token(state, headers)?;
    super::ready(state)?;
    let key = param(&super::queries::single_params(q)?, "key")?;
    let path = format!("/lineage/posting?key={}", percent_encode(&key));
    let asked = ask(state, token, path, |m| {
        sources_of(m).map(|s| s.windows).unwrap_or_default()
    })
    .await?;
    let sources = sources_of(&asked.found);
    let head = json!({"key": key, "known": sources.is_some(), "sources": sources});
    Ok(joined(state, &asked, head))
}

/// A posting's windows, as post's lineage answered them.
fn sources_of(m: &Merged) -> Option<PostingSources> {
    values(m, "post")
        .next()
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// `head` with the windows, and per posting and invoice what the API
/// follows itself.
fn joined(state: &ApiState, asked: &Asked, mut head: Value) -> Value {
    let invoices = state.invoices.read();
    let more = [
        ("windows", windows_json(&asked.windows)),
        (
            "postings",
            joins(&asked.windows, &invoices, &state.acks.read()),
        ),
        ("invoices", invoices_of(&asked.windows, &invoices)),
        ("unanswered", json!(asked.unanswered)),
    ];
    if let Some(o) = head.as_object_mut() {
        o.extend(more.into_iter().map(|(k, v)| (k.to_owned(), v)));
    }
    head
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
