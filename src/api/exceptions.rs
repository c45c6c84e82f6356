//! What needs an operator, for the console's Exceptions page:
//!
//! * `GET /v1/exceptions`: the events parked now (followed from enrich's
//!   `parked` store changelog), per park code with their count, the oldest's
//!   age and the revenue at risk per currency (enrich's estimate, decimal
//!   strings); and the dead letters of every stage and of the ledger (their
//!   `meterline.dlq.*` topics within retention) per stage and reason code;
//! * `POST /v1/replay` (admin): `meterline replay` of one dead-letter topic
//!   or `usage.exceptions`, optionally one reason, as a dry run (what the
//!   next replay would send) or for real. Progress is the CLI's consumer
//!   group, so a dry run, the console and the CLI agree on what is left.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use rdkafka::message::{BorrowedMessage, Message};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Value};

use super::follow::{self, Apply, View};
use super::problem::Problem;
use super::{auth, queries, reasons, ApiState};
use crate::config::{ApiScope, Config};
use crate::kafka;
use crate::runtime::dlq::headers;
use crate::stages::enrich::{parked_summary, ParkedSummary};
use crate::topology::{names, STAGES};

/// Most parked events the API keeps in memory; beyond, the page says the
/// counts are incomplete (enrich's own metrics stay exact).
pub const MAX_PARKED_TRACKED: usize = 1_000_000;
/// Most records one replay from the console sends; the rest stays for the
/// next one (the CLI has no such bound).
pub const MAX_CONSOLE_REPLAY_RECORDS: u64 = 100_000;
/// A replay from the console gives up after this long.
pub const CONSOLE_REPLAY_TIMEOUT_MS: u64 = 60_000;

/// Enrich's `parked` store changelog: entry key -> the parked event.
pub struct Parked;

#[derive(Default)]
pub struct ParkedState {
    pub by_key: BTreeMap<Vec<u8>, ParkedSummary>,
    /// Entries not kept because [`MAX_PARKED_TRACKED`] was reached.
    pub untracked: u64,
}

impl Apply for Parked {
    type State = ParkedState;
    fn apply(&self, s: &mut ParkedState, _: &str, _: i32, key: &[u8], value: Option<&[u8]>) {
        match value.and_then(|v| parked_summary(key, v)) {
            Some(p) if s.by_key.contains_key(key) || s.by_key.len() < MAX_PARKED_TRACKED => {
                s.by_key.insert(key.to_vec(), p);
            }
            Some(_) => s.untracked += 1,
            None if value.is_none() => {
                s.by_key.remove(key);
            }
            None => {}
        }
    }
}

/// Dead letters per (stage, reason).
pub struct DeadLetters;

/// What one (stage, reason) holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterGroup {
    pub records: u64,
    pub oldest_ms: i64,
    pub newest_ms: i64,
    pub last_message: String,
}

pub type DeadLetterState = BTreeMap<(String, String), DeadLetterGroup>;

impl Apply for DeadLetters {
    type State = DeadLetterState;
    fn apply(&self, _: &mut DeadLetterState, _: &str, _: i32, _: &[u8], _: Option<&[u8]>) {}

    fn apply_message(&self, s: &mut DeadLetterState, m: &BorrowedMessage<'_>) {
        let text = |name: &str| kafka::header_text(m, name);
        let at_ms = m.timestamp().to_millis().unwrap_or_default();
        let g = s
            .entry((text(headers::STAGE), text(headers::REASON)))
            .or_default();
        if g.records == 0 || at_ms < g.oldest_ms {
            g.oldest_ms = at_ms;
        }
        g.newest_ms = g.newest_ms.max(at_ms);
        g.records += 1;
        g.last_message = text(headers::MESSAGE);
    }
}

pub type ParkedView = View<Parked>;
pub type DeadLetterView = View<DeadLetters>;

pub fn start_parked(config: &Config) -> Result<Arc<ParkedView>, kafka::ClientError> {
    follow::start(
        config,
        vec![config.topic(&names::changelog("enrich", "parked"))],
        Parked,
    )
}

/// Every stage's dead-letter topic and the ledger's.
pub fn dead_letter_topics(config: &Config) -> Vec<String> {
    let mut topics: Vec<String> = STAGES.iter().map(|s| config.topic(&s.dlq())).collect();
    topics.push(config.topic(&names::dlq(names::LEDGER)));
    topics.sort();
    topics.dedup();
    topics
}

pub fn start_dead_letters(config: &Config) -> Result<Arc<DeadLetterView>, kafka::ClientError> {
    follow::start(config, dead_letter_topics(config), DeadLetters)
}

/// `GET /v1/exceptions`.
pub async fn get(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let result = unlimited(&state, &headers, ApiScope::Read).map(|()| {
        let now_ms = chrono::Utc::now().timestamp_millis();
        summary(&state.parked.read(), &state.dead_letters.read(), now_ms)
    });
    super::respond("/v1/exceptions", StatusCode::OK, result)
}

/// The key has `scope` and reads every customer (exceptions span them).
fn unlimited(state: &ApiState, headers: &HeaderMap, scope: ApiScope) -> Result<(), Problem> {
    let caller = auth::authorize(&state.config.api.keys, headers, scope)?;
    queries::unlimited(&caller, "the exceptions page")?;
    super::ready(state)
}

fn rfc3339(ms: i64) -> Value {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

/// The page's data: parked per reason, dead letters per stage and reason.
pub fn summary(parked: &ParkedState, dead: &DeadLetterState, now_ms: i64) -> Value {
    #[derive(Default)]
    struct Reason {
        events: u64,
        oldest_ms: i64,
        at_risk: BTreeMap<String, Decimal>,
        unpriced: u64,
    }
    let mut by_reason: BTreeMap<&str, Reason> = BTreeMap::new();
    for p in parked.by_key.values() {
        let r = by_reason.entry(&p.reason).or_default();
        if r.events == 0 || p.first_parked_ms < r.oldest_ms {
            r.oldest_ms = p.first_parked_ms;
        }
        r.events += 1;
        match &p.at_risk {
            Some((currency, amount, _)) => {
                let total = r.at_risk.entry(currency.clone()).or_default();
                *total = total.checked_add(*amount).unwrap_or(*total);
            }
            None => r.unpriced += 1,
        }
    }
    let parked_rows: Vec<Value> = by_reason
        .iter()
        .map(|(reason, r)| {
            json!({
                "reason": reason,
                "events": r.events,
                "oldest_parked_at": rfc3339(r.oldest_ms),
                "oldest_age_s": (now_ms - r.oldest_ms).max(0) / 1000,
                "at_risk": r.at_risk.iter().map(|(c, a)| (c.clone(), Value::String(a.to_string()))).collect::<serde_json::Map<_, _>>(),
                "unpriced_events": r.unpriced,
            })
        })
        .collect();
    let dead_rows: Vec<Value> = dead
        .iter()
        .map(|((stage, reason), g)| {
            json!({
                "stage": stage,
                "reason": reason,
                "records": g.records,
                "oldest_at": rfc3339(g.oldest_ms),
                "newest_at": rfc3339(g.newest_ms),
                "last_message": g.last_message,
                "replay_from": names::dlq(stage),
            })
        })
        .collect();
    json!({
        "parked": parked_rows,
        "parked_untracked": parked.untracked,
        "dead_letters": dead_rows,
    })
}

/// The body of `POST /v1/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// `meterline.dlq.<stage>` or `usage.exceptions` (without the namespace).
    pub from: String,
    /// Only this reason code.
    #[serde(default)]
    pub reason: Option<String>,
    /// Count what would be sent; send nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// At most this many records (default and maximum 100,000).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// `POST /v1/replay` (admin).
pub async fn post_replay(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = replay(&state, &headers, body).await;
    super::respond("/v1/replay", StatusCode::OK, result)
}

async fn replay(
    state: &ApiState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Value, Problem> {
    unlimited(state, headers, ApiScope::Admin)?;
    let body = body.map_err(|r| super::body_problem(&r, state.config.api.max_body_bytes))?;
    let req: ReplayRequest =
        serde_json::from_slice(&body).map_err(|e| queries::invalid(format!("body: {e}")))?;
    let limit = req.limit.unwrap_or(MAX_CONSOLE_REPLAY_RECORDS);
    if !(1..=MAX_CONSOLE_REPLAY_RECORDS).contains(&limit) {
        return Err(queries::invalid(format!(
            "limit: 1 to {MAX_CONSOLE_REPLAY_RECORDS}"
        )));
    }
    let args = crate::replay::ReplayArgs {
        from: req.from.clone(),
        reason: req.reason.clone().filter(|r| !r.is_empty()),
        since: None,
        until: None,
        limit: Some(limit),
        to: None,
        dry_run: req.dry_run,
        group: None,
    };
    let mut opts = crate::replay::ReplayOptions::from_args(&state.config, &args)
        .map_err(|e| queries::invalid(e.to_string()))?;
    opts.timeout_ms = CONSOLE_REPLAY_TIMEOUT_MS;
    let config = state.config.clone();
    let ran = tokio::task::spawn_blocking(move || crate::replay::replay(&config, &opts))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let summary = ran.map_err(|detail| {
        super::unavailable(state, reasons::REPLAY_FAILED, "Replay failed", detail)
    })?;
    tracing::info!(from = %req.from, reason = ?req.reason, dry_run = req.dry_run, sent = summary.sent(), "replay from the API");
    Ok(json!({
        "from": req.from,
        "reason": req.reason,
        "dry_run": req.dry_run,
        "read": summary.read,
        "skipped": summary.skipped,
        "sent": summary.sent(),
        "by_reason": summary.by_reason,
        "by_target": summary.by_target,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn parked(reason: &str, first_ms: i64, at_risk: Option<Decimal>) -> ParkedSummary {
        ParkedSummary {
            customer: "c".into(),
            source: "s".into(),
            id: format!("{reason}{first_ms}"),
            reason: reason.into(),
            message: String::new(),
            first_parked_ms: first_ms,
            at_risk: at_risk.map(|a| ("USD".into(), a, "le".into())),
        }
    }

    #[test]
    fn parked_events_sum_per_reason_exactly_and_leave_on_tombstones() {
        let mut s = ParkedState::default();
        let entries = [
            parked("unknown_customer", 5_000, Some(dec!(0.10))),
            parked("unknown_customer", 2_000, Some(dec!(0.20))),
            parked("no_subscription", 9_000, None),
        ];
        for (i, e) in entries.iter().enumerate() {
            s.by_key.insert(vec![i as u8], e.clone());
        }
        let v = summary(&s, &DeadLetterState::default(), 12_000);
        let rows = v["parked"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        let unknown = rows
            .iter()
            .find(|r| r["reason"] == "unknown_customer")
            .unwrap();
        assert_eq!(unknown["events"], 2);
        assert_eq!(unknown["at_risk"]["USD"], "0.30", "0.1 + 0.2, exactly");
        assert_eq!(unknown["oldest_age_s"], 10);
        let none = rows
            .iter()
            .find(|r| r["reason"] == "no_subscription")
            .unwrap();
        assert_eq!(none["unpriced_events"], 1);
        Parked.apply(&mut s, "t", 0, &[0], None);
        Parked.apply(&mut s, "t", 0, &[1], None);
        let v = summary(&s, &DeadLetterState::default(), 12_000);
        assert_eq!(v["parked"].as_array().unwrap().len(), 1);
    }
}
