//! `GET /v1/lineage/event?source=S&id=I`: where one event went, asked of
//! the stage instances that keep lineage (`lineage.endpoints`) with the
//! caller's own key, merged as `meterline lineage` merges them.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use super::{auth, count, queries, reasons, ApiState};
use crate::config::ApiScope;

/// `GET /v1/lineage/event?source=S&id=I`: the event's steps, asked of the
/// stage instances (`lineage.endpoints`) with the caller's own key.
pub async fn get_lineage(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let response = match lineage_event(&state, &headers, q).await {
        Ok(v) => ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response(),
        Err(p) => p.into_response(),
    };
    count("/v1/lineage/event", response.status());
    response
}

async fn lineage_event(
    state: &ApiState,
    headers: &HeaderMap,
    q: Option<String>,
) -> Result<serde_json::Value, Problem> {
    let caller = auth::authorize(&state.config.api.keys, headers, ApiScope::Read)?;
    if !caller.key.customers.is_empty() {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            reasons::FORBIDDEN,
            "Forbidden",
            format!(
                "the key {:?} is limited to customers; lineage needs an unlimited read key",
                caller.key.name
            ),
        ));
    }
    let params = crate::http::query_params(q);
    let need = |k: &str| {
        params
            .get(k)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| queries::invalid(format!("query parameter {k} is required")))
    };
    let (source, id) = (need("source")?, need("id")?);
    let path = format!(
        "/lineage/event?source={}&id={}",
        crate::http::percent_encode(&source),
        crate::http::percent_encode(&id)
    );
    let endpoints = crate::lineage::remote::endpoints(&state.config);
    let token = auth::bearer(headers).map(str::to_owned);
    let asked = tokio::task::spawn_blocking(move || {
        crate::lineage::remote::ask_all(&endpoints, &path, token.as_deref())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match asked {
        Ok((stages, unanswered)) => Ok(serde_json::json!({
            "source": source,
            "id": id,
            "stages": stages,
            "unanswered": unanswered,
        })),
        Err(detail) => {
            let mut p = Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                reasons::LINEAGE_UNAVAILABLE,
                "Lineage unavailable",
                detail,
            );
            p.retry_after_s = Some(state.config.api.retry_after_s);
            Err(p)
        }
    }
}
