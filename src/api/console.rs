//! The finance operations console: plain HTML, CSS and JavaScript from
//! `console/` (compiled into the binary, no build step, nothing fetched from
//! elsewhere), served under `/console/`. The files hold no data: the page
//! asks the API with the key the operator enters, so a read key sees and an
//! approver key acts, exactly as over the API. `GET /v1/whoami` tells the
//! page which actions to show (the API refuses the rest anyway).

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::json;

use super::problem::Problem;
use super::{auth, count, reasons, ApiState};
use crate::config::ApiScope;

/// The console's files: name, content type, text.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../console/app.css"),
    ),
];

/// Scripts and styles from this origin only; no frames, no inline code.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

pub async fn redirect() -> Redirect {
    Redirect::permanent("/console/")
}

pub async fn index() -> Response {
    serve("index.html")
}

pub async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(name: &str) -> Response {
    let Some((_, content_type, text)) = FILES.iter().find(|(n, _, _)| *n == name) else {
        count("/console/{file}", StatusCode::NOT_FOUND);
        return Problem::new(
            StatusCode::NOT_FOUND,
            reasons::NOT_FOUND,
            "Not found",
            "the console has index.html, app.js and app.css",
        )
        .into_response();
    };
    count("/console/{file}", StatusCode::OK);
    (
        [
            (header::CONTENT_TYPE, *content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        *text,
    )
        .into_response()
}

/// `GET /v1/whoami`: the key's name, actor and scopes (never its hash).
pub async fn whoami(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let response = match auth::authenticate(&state.config.api.keys, &headers) {
        Ok(c) => {
            let scopes: Vec<&str> = [
                (ApiScope::Ingest, "ingest"),
                (ApiScope::Read, "read"),
                (ApiScope::Approve, "approve"),
                (ApiScope::Admin, "admin"),
            ]
            .iter()
            .filter(|(s, _)| c.has(*s))
            .map(|(_, n)| *n)
            .collect();
            let body = json!({
                "name": c.key.name,
                "actor": c.key.actor(),
                "scopes": scopes,
                "customers": c.key.customers,
            });
            super::json_response(StatusCode::OK, &body)
        }
        Err(p) => p.into_response(),
    };
    count("/v1/whoami", response.status());
    response
}
