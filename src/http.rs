//! The operations endpoint: `/metrics` (Prometheus), `/healthz` (the process
//! and every stage loop are alive), `/readyz` (every stage is assigned and
//! its stores are restored), and the lineage queries, answered from the
//! committed `lineage` stores of the partitions this process owns (see
//! [`crate::lineage`]):
//!
//! * `/lineage/event?source=S&id=I`: each stage's steps for the event;
//! * `/lineage/window?kind=K&scope=S&window=W[&adjusts=A]`: the postings
//!   made from a window;
//! * `/lineage/posting?key=K`: the window and events behind a posting.
//!
//! Each answers `{"<stage>": [{"partition": p, "value": ...}], ...}` with
//! only the stages and partitions that know the key. The same module has
//! the minimal HTTP/1.0 client `meterline lineage` uses ([`http_get`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use axum::extract::{Path, RawQuery};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::config::{ApiKeyConfig, ApiScope};
use crate::lineage;
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

/// `%XX` and `+` decoding of one query component.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i) {
            Some(b'+') => out.push(b' '),
            Some(b'%') => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            Some(c) => out.push(*c),
            None => {}
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.bytes() {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'~') {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// The query's parameters by name; a repeated name keeps its last value
/// (routes whose parameters repeat read [`query_pairs`]).
pub fn query_params(q: Option<String>) -> BTreeMap<String, String> {
    query_pairs(q).into_iter().collect()
}

/// The query's parameters in order, repeated names included, decoded.
pub fn query_pairs(q: Option<String>) -> Vec<(String, String)> {
    q.unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// The lineage store key a query names, or what is missing.
fn lineage_key(what: &str, q: &BTreeMap<String, String>) -> Result<Vec<u8>, String> {
    let need = |name: &str| {
        q.get(name)
            .cloned()
            .ok_or_else(|| format!("missing query parameter {name:?}"))
    };
    match what {
        "event" => Ok(lineage::event_key(&need("source")?, &need("id")?)),
        "window" => Ok(lineage::window_key(&lineage::WindowRef {
            kind: need("kind")?,
            scope: need("scope")?,
            window: need("window")?,
            adjusts: q.get("adjusts").filter(|a| !a.is_empty()).cloned(),
        })),
        "posting" => Ok(lineage::posting_key(&need("key")?)),
        _ => Err(format!("unknown lineage query {what:?}")),
    }
}

/// Answers one lineage query from every stage of this process. An event
/// query is a prefix (one key per step); its steps are gathered into one
/// `{"steps": [...], "more": n}` per partition.
fn lineage_answer(statuses: &Statuses, what: &str, key: &[u8]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (name, status) in statuses.iter() {
        let Some(q) = status.query.get() else {
            continue;
        };
        let values: Vec<(i32, Vec<u8>)> = if what == "event" {
            q.scan(
                lineage::LINEAGE_STORE,
                key,
                &lineage::prefix_end(key),
                lineage::STEPS_PER_EVENT_MAX + 1,
            )
            .into_iter()
            .filter_map(|(p, vs)| {
                serde_json::to_vec(&lineage::gather_steps(vs))
                    .ok()
                    .map(|v| (p, v))
            })
            .collect()
        } else {
            q.get(lineage::LINEAGE_STORE, key)
        };
        let found: Vec<serde_json::Value> = values
            .into_iter()
            .map(|(p, v)| {
                let value = serde_json::from_slice::<serde_json::Value>(&v)
                    .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
                serde_json::json!({"partition": p, "value": value})
            })
            .collect();
        if !found.is_empty() {
            out.insert((*name).to_string(), serde_json::Value::Array(found));
        }
    }
    serde_json::Value::Object(out)
}

/// Lineage exposes customer data: when the process has API keys, a lineage
/// query needs one with the read scope and no customer limit (an event's
/// customer is only known once it is found).
fn lineage_allowed(keys: &[ApiKeyConfig], headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    if keys.is_empty() {
        return Ok(());
    }
    let caller = crate::api::auth::authorize(keys, headers, ApiScope::Read)
        .map_err(|p| (p.status, p.body_json()))?;
    if !caller.key.customers.is_empty() {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "the key {:?} is limited to customers; lineage needs an unlimited read key\n",
                caller.key.name
            ),
        ));
    }
    Ok(())
}

async fn lineage_route(
    statuses: Statuses,
    what: String,
    q: Option<String>,
) -> (StatusCode, String) {
    let params = query_params(q);
    let key = match lineage_key(&what, &params) {
        Ok(k) => k,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    // The stores are behind the stage's lock: never block the executor on it.
    match tokio::task::spawn_blocking(move || lineage_answer(&statuses, &what, &key)).await {
        Ok(v) => (StatusCode::OK, v.to_string()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// The routes; `keys` (the config's `api.keys`) guard lineage when given.
pub fn router(statuses: Statuses, keys: Arc<Vec<ApiKeyConfig>>) -> Router {
    let h = statuses.clone();
    let r = statuses.clone();
    let l = statuses;
    Router::new()
        .route(
            "/lineage/{what}",
            get(
                move |Path(what): Path<String>, RawQuery(q): RawQuery, headers: HeaderMap| {
                    let (l, keys) = (l.clone(), keys.clone());
                    async move {
                        match lineage_allowed(&keys, &headers) {
                            Ok(()) => lineage_route(l, what, q).await,
                            Err(refused) => refused,
                        }
                    }
                },
            ),
        )
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

/// Binds the HTTP listener; `None` for an empty address (server disabled).
/// Separate from [`serve_on`] so a process can refuse to start when its
/// address is taken, instead of running unobservable (or letting a stale
/// instance answer in its place).
pub async fn bind(addr: &str) -> Result<Option<tokio::net::TcpListener>, std::io::Error> {
    if addr.is_empty() {
        return Ok(None);
    }
    tokio::net::TcpListener::bind(addr).await.map(Some)
}

/// Serves on a bound listener until the process ends.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    statuses: Statuses,
    keys: Arc<Vec<ApiKeyConfig>>,
) -> Result<(), std::io::Error> {
    let addr = listener.local_addr()?.to_string();
    tracing::info!(addr, "serving /metrics, /healthz, /readyz");
    axum::serve(listener, router(statuses, keys)).await
}

/// How long [`http_get`] waits to connect and for the answer.
const CLIENT_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: only http://host:port/... URLs are supported")]
    Url { url: String },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: not an HTTP response")]
    Response { url: String },
}

/// GET `base` + `path_and_query` (HTTP/1.0, no TLS): status and body.
pub fn http_get(base: &str, path_and_query: &str) -> Result<(u16, String), ClientError> {
    http_get_as(base, path_and_query, None)
}

/// [`http_get`] with `Authorization: Bearer <token>` when a token is given.
pub fn http_get_as(
    base: &str,
    path_and_query: &str,
    bearer: Option<&str>,
) -> Result<(u16, String), ClientError> {
    let url = format!("{}{}", base.trim_end_matches('/'), path_and_query);
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| ClientError::Url { url: url.clone() })?;
    let host = rest.split('/').next().unwrap_or(rest);
    let io = |source| ClientError::Io {
        url: url.clone(),
        source,
    };
    let timeout = Duration::from_millis(CLIENT_TIMEOUT_MS);
    let addr = std::net::ToSocketAddrs::to_socket_addrs(host)
        .map_err(io)?
        .next()
        .ok_or_else(|| ClientError::Url { url: url.clone() })?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| ClientError::Response { url: url.clone() })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_needs_an_unlimited_read_key_once_keys_exist() {
        use crate::api::auth::token_hash_hex;
        let key = |name: &str, scopes: Vec<ApiScope>, customers: Vec<String>| ApiKeyConfig {
            name: name.into(),
            sha256_hex: token_hash_hex(name),
            scopes,
            sources: vec![],
            customers,
            actor: None,
        };
        let bearer = |t: &str| {
            let mut h = HeaderMap::new();
            h.insert("authorization", format!("Bearer {t}").parse().unwrap());
            h
        };
        assert!(
            lineage_allowed(&[], &HeaderMap::new()).is_ok(),
            "no keys: open"
        );
        let keys = [
            key("ops", vec![ApiScope::Read], vec![]),
            key("portal", vec![ApiScope::Read], vec!["cust-1".into()]),
            key("pipe", vec![ApiScope::Ingest], vec![]),
        ];
        assert!(lineage_allowed(&keys, &bearer("ops")).is_ok());
        let status = |h: HeaderMap| lineage_allowed(&keys, &h).unwrap_err().0;
        assert_eq!(status(HeaderMap::new()), StatusCode::UNAUTHORIZED);
        assert_eq!(status(bearer("portal")), StatusCode::FORBIDDEN);
        assert_eq!(status(bearer("pipe")), StatusCode::FORBIDDEN);
    }

    #[test]
    fn percent_coding_round_trips_any_string() {
        for s in ["plain", "a b&c=d/é%", "loadgen/7", "", "%zz"] {
            assert_eq!(percent_decode(&percent_encode(s)), s);
        }
        assert_eq!(percent_decode("a+b%2Fc"), "a b/c");
        let q = query_params(Some("source=loadgen%2F7&id=evt-7-1".into()));
        assert_eq!(q.get("source").map(String::as_str), Some("loadgen/7"));
        assert!(lineage_key("event", &q).is_ok());
        assert!(lineage_key("window", &q).unwrap_err().contains("kind"));
    }
}
