//! The operations endpoint: `/metrics` (Prometheus), `/healthz` (the process
//! and every stage loop are alive) and `/readyz` (every stage is assigned and
//! its stores are restored).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::runtime::StageStatus;

/// Stages served by this process, by name.
pub type Statuses = Arc<Vec<(&'static str, Arc<StageStatus>)>>;

fn report(
    statuses: &Statuses,
    pick: impl Fn(&StageStatus) -> bool,
    word: &str,
) -> (StatusCode, String) {
    let mut ok = true;
    let mut body = String::new();
    for (name, s) in statuses.iter() {
        let good = pick(s);
        ok &= good;
        body.push_str(&format!("{name}: {}\n", if good { word } else { "no" }));
    }
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

pub fn router(statuses: Statuses) -> Router {
    let h = statuses.clone();
    let r = statuses;
    Router::new()
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .route(
            "/healthz",
            get(move || {
                let h = h.clone();
                async move { report(&h, |s| s.alive.load(Ordering::SeqCst), "alive") }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let r = r.clone();
                async move { report(&r, |s| s.ready.load(Ordering::SeqCst), "ready") }
            }),
        )
}

/// Serves until the process ends. An empty address disables the server.
pub async fn serve(addr: &str, statuses: Statuses) -> Result<(), std::io::Error> {
    if addr.is_empty() {
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(statuses)).await
}
