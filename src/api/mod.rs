//! `meterline api`: the governed HTTP API (see README, "HTTP API").
//!
//! Stateless: it produces accepted usage to `usage.events` with an
//! idempotent producer (acks=all) and keeps nothing between requests, so it
//! scales by adding replicas. Every route but `/healthz`, `/readyz`,
//! `/metrics` and `/v1/openapi.json` needs an API key ([`auth`]); every
//! refusal is an RFC 9457 problem ([`problem`]) with a code of
//! [`reasons`]. The contract is `schemas/openapi.yaml`, served as JSON.

pub mod auth;
pub mod console;
pub mod content_encoding;
pub mod events;
pub mod exceptions;
pub mod follow;
pub mod invoices;
pub mod meter_csv;
pub mod meter_query;
pub mod problem;
pub mod queries;
pub mod trace;
pub mod usage;

use std::sync::{Arc, LazyLock};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use prometheus::IntCounterVec;
use rdkafka::producer::FutureProducer;

use crate::config::{ApiScope, Config};
use crate::ingest::rules::{MeterIndex, ValidateRules};
use crate::kafka;
use crate::refdata;
use crate::topology::names;
use events::Ingest;
use problem::Problem;

pub mod reasons {
    //! Why the API refuses a request (per-event errors of a batch carry
    //! validate's codes instead, see [`crate::ingest::reason`]).
    crate::reason_codes! {
        UNAUTHORIZED => "unauthorized",
            "HTTP 401: no `Authorization: Bearer <key>` header, or a key that no entry of api.keys hashes to.";
        FORBIDDEN => "forbidden",
            "HTTP 403: the key lacks the scope the route needs (ingest, read; admin has every scope).";
        SOURCE_NOT_PERMITTED => "source_not_permitted",
            "HTTP 403: the key may ingest only the sources it lists, and an event of the request names another, or corrects an event of another or replaces one with another's (errors lists each index).";
        UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            "HTTP 415: Content-Type is not application/cloudevents+json, application/cloudevents-batch+json or application/json.";
        BODY_TOO_LARGE => "body_too_large",
            "HTTP 413: the body is larger than api.max_body_bytes (a gzip body: once inflated).";
        UNSUPPORTED_CONTENT_ENCODING => "unsupported_content_encoding",
            "HTTP 415: POST /api/v1/events with a Content-Encoding other than gzip or identity, or several.";
        BODY_NOT_GZIP => "body_not_gzip",
            "HTTP 400: Content-Encoding is gzip and the body does not inflate.";
        BATCH_TOO_LARGE => "batch_too_large",
            "HTTP 413: the batch holds more than api.max_batch_events events.";
        BODY_NOT_JSON => "body_not_json",
            "HTTP 400: the body is not UTF-8 JSON, or not one event object (a batch: an array of them) as its Content-Type says.";
        EMPTY_BATCH => "empty_batch",
            "HTTP 400: the batch is an empty array.";
        INVALID_EVENTS => "invalid_events",
            "HTTP 400: at least one event breaks validate's rules; nothing of the request was accepted and errors lists each bad index with validate's reason code.";
        PRODUCER_QUEUE_FULL => "producer_queue_full",
            "HTTP 429: the producer queue is full; retry the whole request after Retry-After seconds (copies are dropped by dedupe).";
        BROKER_UNAVAILABLE => "broker_unavailable",
            "HTTP 503: the broker did not acknowledge every event within api.ack_timeout_ms; retrying is safe.";
        NOT_FOUND => "not_found",
            "HTTP 404: no such route, or no customer, subscription, plan or meter with that id.";
        INVALID_REQUEST => "invalid_request",
            "HTTP 400: a query parameter or request body is malformed (an `at` that is not RFC 3339, a quote naming both or neither of subscription_id and plan_id, a quantity that is not an exact decimal string, a meter the plan has no charge for).";
        LINEAGE_UNAVAILABLE => "lineage_unavailable",
            "HTTP 503: no stage instance of lineage.endpoints answered the lineage query (each failure named in detail).";
        NOT_READY => "not_ready",
            "HTTP 503: the API is still reading the reference topics or the aggregate windows it answers from; retry shortly (/readyz says when).";
        METHOD_NOT_ALLOWED => "method_not_allowed",
            "HTTP 405: the route exists but not with this method.";
        REPLAY_FAILED => "replay_failed",
            "HTTP 503: the replay asked for (POST /v1/replay) did not finish: the broker did not answer, or a record named another origin (detail says which); progress up to the failure is committed, running it again is safe.";
        RECONCILE_REPORT_MISSING => "reconcile_report_missing",
            "HTTP 404: no reconcile report to show: set api.reconcile_report_file and run `meterline reconcile --report-file` with the same path.";
        ACTOR_KEY_MISSING => "actor_key_missing",
            "HTTP 403: invoice.actor_keys_hex is set and holds no key for the actor the API key acts as (api.keys actor, default its name): the API cannot sign its commands.";
    }
}

/// The contract, as checked in.
pub const OPENAPI_YAML: &str = include_str!("../../schemas/openapi.yaml");

/// Requests answered, by route and status.
static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "meterline_api_requests_total",
        "HTTP API requests answered, by route and status code.",
        &["route", "status"],
    )
});
/// Events submitted, by outcome (accepted, refused).
static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    crate::metrics::counter_vec(
        "meterline_api_events_total",
        "Usage events submitted over HTTP, by outcome (accepted: acknowledged by the broker; refused: in a refused request).",
        &["outcome"],
    )
});

#[derive(Clone)]
pub struct ApiState {
    config: Arc<Config>,
    ingest: Arc<Ingest>,
    refs: Arc<follow::RefView>,
    windows: Arc<follow::WindowView>,
    closed: Arc<follow::ClosedView>,
    invoices: Arc<follow::InvoiceView>,
    refusals: Arc<follow::RefusalView>,
    acks: Arc<follow::AckView>,
    parked: Arc<exceptions::ParkedView>,
    dead_letters: Arc<exceptions::DeadLetterView>,
    openapi_json: Arc<String>,
}

impl ApiState {
    /// Every followed view caught up with where its topics ended at start.
    fn views_ready(&self) -> bool {
        self.refs.ready()
            && self.windows.ready()
            && self.closed.ready()
            && self.invoices.ready()
            && self.refusals.ready()
            && self.acks.ready()
            && self.parked.ready()
            && self.dead_letters.ready()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("api.keys is empty: create a key with `meterline api-key --name <who> --scopes ingest` and add the [[api.keys]] it prints")]
    NoKeys,
    #[error("meters: {0}")]
    Meters(String),
    #[error("validate.hmac_keys_hex.{0}: not hex")]
    HmacKey(String),
    #[error("schemas/openapi.yaml: {0}")]
    OpenApi(String),
    #[error(transparent)]
    Kafka(#[from] kafka::ClientError),
    #[error("binding api.listen_addr {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("serving: {0}")]
    Serve(std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
}

impl ApiState {
    /// Checks the config and the broker (the topic must exist) and builds
    /// the producer.
    pub fn new(config: Arc<Config>) -> Result<Self, ApiError> {
        if config.api.keys.is_empty() {
            return Err(ApiError::NoKeys);
        }
        let meters =
            MeterIndex::new(&config.meters).map_err(|e| ApiError::Meters(e.to_string()))?;
        let rules = ValidateRules::from_config(&config.validate).map_err(ApiError::HmacKey)?;
        let topic = config.topic(names::EVENTS);
        let probe = kafka::reader(&config)?;
        kafka::check_topics(&probe, &config, std::slice::from_ref(&topic))?;
        drop(probe);
        let mut producer_config = kafka::producer_config(&config);
        producer_config
            .set("linger.ms", "5")
            .set("message.timeout.ms", config.api.ack_timeout_ms.to_string());
        let producer: FutureProducer = producer_config
            .create()
            .map_err(|e| ApiError::Kafka(kafka::ClientError::Config(e.to_string())))?;
        let doc: serde_json::Value =
            serde_yaml::from_str(OPENAPI_YAML).map_err(|e| ApiError::OpenApi(e.to_string()))?;
        let refs = follow::start_refs(&config)?;
        let windows = follow::start_windows(&config)?;
        let closed = follow::start_closed(&config)?;
        let invoices = follow::start_invoices(&config)?;
        let refusals = follow::start_refusals(&config)?;
        let acks = follow::start_acks(&config)?;
        let parked = exceptions::start_parked(&config)?;
        let dead_letters = exceptions::start_dead_letters(&config)?;
        Ok(ApiState {
            parked,
            dead_letters,
            refs,
            windows,
            closed,
            invoices,
            refusals,
            acks,
            ingest: Arc::new(Ingest {
                meters,
                rules,
                producer,
                topic,
                limits: config.api.clone(),
            }),
            openapi_json: Arc::new(doc.to_string()),
            config,
        })
    }
}

/// The routes; anything else is a 404 or 405 problem.
pub fn router(state: ApiState) -> Router {
    let max_body_bytes = state.config.api.max_body_bytes;
    Router::new()
        .route("/api/v1/events", post(ingest_events))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/customers/{id}", get(get_customer))
        .route("/v1/subscriptions/{id}", get(get_subscription))
        .route("/v1/subscriptions/{id}/usage", get(get_usage))
        .route("/v1/subscriptions/{id}/invoices", get(get_invoices))
        .route("/v1/invoices", get(list_invoices))
        .route("/v1/invoices/{id}", get(get_invoice))
        .route("/v1/invoices/{id}/commands", post(post_command))
        .route("/v1/commands/{id}", get(get_command))
        .route("/v1/whoami", get(console::whoami))
        .route("/v1/exceptions", get(exceptions::get))
        .route("/v1/replay", post(exceptions::post_replay))
        .route("/v1/trace/event", get(trace::get_event))
        .route("/v1/trace/posting", get(trace::get_posting))
        .route("/v1/reconcile", get(get_reconcile))
        .route("/console", get(console::redirect))
        .route("/console/", get(console::index))
        .route("/console/{file}", get(console::asset))
        .route("/v1/plans/{id}", get(get_plan))
        .route("/v1/quotes", post(post_quote))
        .route("/api/v1/meters", get(get_meters))
        .route("/api/v1/meters/{slug}", get(get_meter))
        .route("/api/v1/meters/{slug}/subjects", get(get_meter_subjects))
        .route(
            "/api/v1/meters/{slug}/group-by/{group}/values",
            get(get_meter_group_values),
        )
        .route(
            "/api/v1/meters/{slug}/query",
            get(get_meter_query).post(post_meter_query),
        )
        .route("/v1/lineage/event", get(trace::get_lineage))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { crate::metrics::render() }))
        .fallback(|| async {
            count("fallback", StatusCode::NOT_FOUND);
            Problem::new(
                StatusCode::NOT_FOUND,
                reasons::NOT_FOUND,
                "Not found",
                "no such route",
            )
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            count("fallback", StatusCode::METHOD_NOT_ALLOWED);
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                reasons::METHOD_NOT_ALLOWED,
                "Method not allowed",
                method_not_allowed_detail(&method, uri.path()),
            )
        })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}

/// What a 405 says: where to look, and for OpenMeter's list of ingested
/// events (its SDKs' `events.list`), what answers instead.
fn method_not_allowed_detail(method: &Method, path: &str) -> &'static str {
    if method == Method::GET && path == "/api/v1/events" {
        return "GET /api/v1/events (OpenMeter's list of ingested events) is not offered: \
                follow one event with GET /v1/trace/event?source=S&id=I (what every stage \
                made of it); see /v1/openapi.json for the methods of each route";
    }
    "see /v1/openapi.json for the methods of each route"
}

pub(crate) fn count(route: &str, status: StatusCode) {
    REQUESTS.with_label_values(&[route, status.as_str()]).inc();
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.views_ready() {
        "ok\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "reference data loading\n").into_response()
    }
}

/// Answers a read route: the key (scope read), the reference data caught
/// up, then `answer`; counted under `route`.
fn read_route(
    state: &ApiState,
    headers: &HeaderMap,
    route: &str,
    answer: impl FnOnce(&refdata::RefTables, &auth::Caller<'_>) -> Result<serde_json::Value, Problem>,
) -> Response {
    scoped_route(state, headers, route, ApiScope::Read, answer)
}

/// [`read_route`] for a route needing `scope`.
fn scoped_route(
    state: &ApiState,
    headers: &HeaderMap,
    route: &str,
    scope: ApiScope,
    answer: impl FnOnce(&refdata::RefTables, &auth::Caller<'_>) -> Result<serde_json::Value, Problem>,
) -> Response {
    respond(
        route,
        StatusCode::OK,
        scoped_answer(state, headers, scope, answer),
    )
}

/// The key (`scope`), the reference data caught up, then `answer`.
fn scoped_answer(
    state: &ApiState,
    headers: &HeaderMap,
    scope: ApiScope,
    answer: impl FnOnce(&refdata::RefTables, &auth::Caller<'_>) -> Result<serde_json::Value, Problem>,
) -> Result<serde_json::Value, Problem> {
    auth::authorize(&state.config.api.keys, headers, scope).and_then(|caller| {
        ready(state)?;
        answer(&state.refs.read(), &caller)
    })
}

/// 503 until every followed view caught up.
fn ready(state: &ApiState) -> Result<(), Problem> {
    if state.views_ready() {
        return Ok(());
    }
    Err(unavailable(
        state,
        reasons::NOT_READY,
        "Not ready",
        "the reference data is still loading",
    ))
}

/// The answer of a route (`status` when it succeeded, its problem when
/// not), counted under `route`.
fn respond(
    route: &str,
    status: StatusCode,
    result: Result<serde_json::Value, Problem>,
) -> Response {
    let response = match result {
        Ok(v) => json_response(status, &v),
        Err(p) => p.into_response(),
    };
    count(route, response.status());
    response
}

/// A 503 problem with the configured Retry-After.
fn unavailable(
    state: &ApiState,
    code: &'static str,
    title: &'static str,
    detail: impl Into<String>,
) -> Problem {
    let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, title, detail);
    p.retry_after_s = Some(state.config.api.retry_after_s);
    p
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn path_id<T>(p: Result<Path<T>, PathRejection>) -> Result<T, Problem> {
    p.map(|Path(id)| id)
        .map_err(|e| queries::invalid(format!("path: {}", e.body_text())))
}

async fn get_customer(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    read_route(&state, &headers, "/v1/customers/{id}", |t, c| {
        queries::customer(t, c, &path_id(id)?)
    })
}

async fn get_subscription(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Response {
    read_route(&state, &headers, "/v1/subscriptions/{id}", |t, c| {
        let at = queries::at_param(queries::single_params(q)?.get("at"))?;
        queries::subscription(t, c, &path_id(id)?, at)
    })
}

async fn get_usage(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let windows = state.windows.clone();
    read_route(&state, &headers, "/v1/subscriptions/{id}/usage", |t, c| {
        usage::usage(t, &windows.read(), c, &path_id(id)?)
    })
}

async fn get_invoices(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let (invoices, windows) = (state.invoices.clone(), state.windows.clone());
    read_route(
        &state,
        &headers,
        "/v1/subscriptions/{id}/invoices",
        |t, c| usage::invoices(t, &invoices.read(), &windows.read(), c, &path_id(id)?),
    )
}

async fn get_invoice(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let invoices = state.invoices.clone();
    read_route(&state, &headers, "/v1/invoices/{id}", |_, c| {
        queries::invoice(&invoices.read(), c, &path_id(id)?)
    })
}

async fn list_invoices(
    State(state): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let invoices = state.invoices.clone();
    read_route(&state, &headers, "/v1/invoices", |_, c| {
        invoices::list(&invoices.read(), c, &queries::single_params(q)?)
    })
}

async fn get_command(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Response {
    let (invoices, refusals) = (state.invoices.clone(), state.refusals.clone());
    scoped_route(
        &state,
        &headers,
        "/v1/commands/{id}",
        ApiScope::Approve,
        |_, c| {
            let params = queries::single_params(q)?;
            invoices::status(
                &invoices.read(),
                &refusals.read(),
                c,
                &path_id(id)?,
                &params,
            )
        },
    )
}

/// `POST /v1/invoices/{id}/commands`: checked, signed as the key's actor,
/// published in a transaction off the executor; 202 once the broker has it.
async fn post_command(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let result = send_command(&state, &headers, id, body).await;
    respond("/v1/invoices/{id}/commands", StatusCode::ACCEPTED, result)
}

async fn send_command(
    state: &ApiState,
    headers: &HeaderMap,
    id: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<serde_json::Value, Problem> {
    let caller = auth::authorize(&state.config.api.keys, headers, ApiScope::Approve)?;
    ready(state)?;
    let body = body.map_err(|r| body_problem(&r, state.config.api.max_body_bytes))?;
    let req: invoices::CommandRequest =
        serde_json::from_slice(&body).map_err(|e| queries::invalid(format!("body: {e}")))?;
    let cmd = invoices::build_command(&state.invoices.read(), &caller, &path_id(id)?, req)?;
    let key_hex = invoices::actor_key(&state.config, &caller)?.map(str::to_owned);
    tracing::info!(key = %caller.key.name, actor = %cmd.actor, kind = cmd.kind.as_str(), command = %cmd.id, "sending an invoice command");
    let config = state.config.clone();
    let to_send = cmd.clone();
    let sent = tokio::task::spawn_blocking(move || {
        crate::commands::send_command(&config, "api", &to_send, key_hex.as_deref())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    if let Err(detail) = sent {
        tracing::warn!(command = %cmd.id, error = %detail, "command not published");
        return Err(unavailable(
            state,
            reasons::BROKER_UNAVAILABLE,
            "Broker unavailable",
            format!(
                "command {} was not published ({detail}); re-sending it with command_id {} is safe",
                cmd.id, cmd.id
            ),
        ));
    }
    Ok(invoices::accepted(&cmd))
}

/// Largest reconcile report served.
const MAX_RECONCILE_REPORT_BYTES: u64 = 64 * 1024 * 1024;

/// `GET /v1/reconcile`: the last `meterline reconcile --report-file` run.
async fn get_reconcile(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let config = state.config.clone();
    read_route(&state, &headers, "/v1/reconcile", |_, _| {
        let missing = |detail: String| {
            Problem::new(
                StatusCode::NOT_FOUND,
                reasons::RECONCILE_REPORT_MISSING,
                "No reconcile report",
                detail,
            )
        };
        let path = config
            .api
            .reconcile_report_file
            .as_ref()
            .map(|p| config.resolve(p))
            .ok_or_else(|| missing("api.reconcile_report_file is not set".into()))?;
        let size = std::fs::metadata(&path)
            .map_err(|e| missing(format!("{}: {e}", path.display())))?
            .len();
        if size > MAX_RECONCILE_REPORT_BYTES {
            return Err(missing(format!(
                "{} is {size} bytes, over {MAX_RECONCILE_REPORT_BYTES}",
                path.display()
            )));
        }
        let text = std::fs::read(&path).map_err(|e| missing(format!("{}: {e}", path.display())))?;
        serde_json::from_slice(&text)
            .map_err(|e| missing(format!("{}: not a reconcile report ({e})", path.display())))
    })
}

async fn get_meter_query(
    State(state): State<ApiState>,
    headers: HeaderMap,
    slug: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Response {
    meter_query_route(&state, &headers, slug, || Ok(crate::http::query_pairs(q)))
}

/// The meter query, GET or POST (`pairs`: its parameters): JSON, or CSV
/// when the client accepts `text/csv` and not JSON.
fn meter_query_route(
    state: &ApiState,
    headers: &HeaderMap,
    slug: Result<Path<String>, PathRejection>,
    pairs: impl FnOnce() -> Result<Vec<(String, String)>, Problem>,
) -> Response {
    const ROUTE: &str = "/api/v1/meters/{slug}/query";
    let result = scoped_answer(state, headers, ApiScope::Read, |_, c| {
        let (slug, pairs) = (path_id(slug)?, pairs()?);
        let query = meter_query::MeterQuery {
            slug: &slug,
            pairs: &pairs,
        };
        let (closed, windows) = (state.closed.read(), state.windows.read());
        meter_query::meter_query(&state.config, &closed, &windows, c, &query)
    });
    match result {
        Ok(answer) if meter_csv::wants_csv(headers) => {
            let csv = meter_csv::rows_csv(&answer);
            let response = (
                StatusCode::OK,
                [(header::CONTENT_TYPE, meter_csv::CSV_CONTENT_TYPE)],
                csv,
            )
                .into_response();
            count(ROUTE, response.status());
            response
        }
        result => respond(ROUTE, StatusCode::OK, result),
    }
}

async fn get_meter_subjects(
    State(state): State<ApiState>,
    headers: HeaderMap,
    slug: Result<Path<String>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Response {
    let path = path_id(slug).map(|slug| (slug, None));
    meter_list_route(&state, &headers, "/api/v1/meters/{slug}/subjects", path, q)
}

async fn get_meter_group_values(
    State(state): State<ApiState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(q): RawQuery,
) -> Response {
    let path = path_id(path).map(|(slug, group)| (slug, Some(group)));
    let route = "/api/v1/meters/{slug}/group-by/{group}/values";
    meter_list_route(&state, &headers, route, path, q)
}

/// A meter's subjects (`path`: slug, no group) or a group's values.
fn meter_list_route(
    state: &ApiState,
    headers: &HeaderMap,
    route: &str,
    path: Result<(String, Option<String>), Problem>,
    q: Option<String>,
) -> Response {
    read_route(state, headers, route, |_, c| {
        let (slug, group) = path?;
        let pairs = crate::http::query_pairs(q);
        let query = meter_query::MeterQuery {
            slug: &slug,
            pairs: &pairs,
        };
        let (closed, windows) = (state.closed.read(), state.windows.read());
        meter_query::meter_list(
            &state.config,
            &closed,
            &windows,
            c,
            &query,
            group.as_deref(),
        )
    })
}

/// OpenMeter's POST form of the meter query: the parameters in a JSON body.
async fn post_meter_query(
    State(state): State<ApiState>,
    headers: HeaderMap,
    slug: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let max_body_bytes = state.config.api.max_body_bytes;
    meter_query_route(&state, &headers, slug, || {
        let body = body.map_err(|r| body_problem(&r, max_body_bytes))?;
        meter_query::body_pairs(&body)
    })
}

async fn get_plan(
    State(state): State<ApiState>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    read_route(&state, &headers, "/v1/plans/{id}", |t, _| {
        queries::plan(t, &path_id(id)?)
    })
}

async fn post_quote(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let config = state.config.clone();
    read_route(&state, &headers, "/v1/quotes", |t, c| {
        let body = body.map_err(|r| body_problem(&r, config.api.max_body_bytes))?;
        queries::quote(t, &config, c, &body)
    })
}

async fn get_meters(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let config = state.config.clone();
    read_route(&state, &headers, "/api/v1/meters", |_, _| {
        Ok(queries::meters(&config))
    })
}

async fn get_meter(
    State(state): State<ApiState>,
    headers: HeaderMap,
    slug: Result<Path<String>, PathRejection>,
) -> Response {
    let config = state.config.clone();
    read_route(&state, &headers, "/api/v1/meters/{slug}", |_, _| {
        queries::meter(&config, &path_id(slug)?)
    })
}

async fn openapi(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        state.openapi_json.as_str().to_owned(),
    )
        .into_response()
}

async fn ingest_events(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (status, response) = match submit(&state, &headers, body).await {
        Ok(n) => {
            EVENTS.with_label_values(&["accepted"]).inc_by(n as u64);
            (
                StatusCode::NO_CONTENT,
                StatusCode::NO_CONTENT.into_response(),
            )
        }
        Err(p) => (p.status, p.into_response()),
    };
    count("/api/v1/events", status);
    response
}

async fn submit(
    state: &ApiState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<usize, Problem> {
    let caller = auth::authorize(&state.config.api.keys, headers, ApiScope::Ingest)?;
    let max_body_bytes = state.config.api.max_body_bytes;
    let body = body.map_err(|r| body_problem(&r, max_body_bytes))?;
    let body = content_encoding::decode(headers, body, max_body_bytes)?;
    let events = events::split_body(headers, &body, state.config.api.max_batch_events)?;
    let prepared = state
        .ingest
        .prepare(&caller, &events, chrono::Utc::now())
        .inspect_err(|_| {
            EVENTS
                .with_label_values(&["refused"])
                .inc_by(events.len() as u64)
        })?;
    state.ingest.produce(prepared).await
}

fn body_problem(r: &BytesRejection, max_body_bytes: usize) -> Problem {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            reasons::BODY_TOO_LARGE,
            "Body too large",
            format!("api.max_body_bytes is {max_body_bytes}"),
        )
    } else {
        Problem::new(
            StatusCode::BAD_REQUEST,
            reasons::BODY_NOT_JSON,
            "Body unreadable",
            r.body_text(),
        )
    }
}

/// Binds `config.api.listen_addr` and serves `state` until the process
/// ends: HTTPS when `api.tls_cert_file` and `api.tls_key_file` are set.
pub async fn serve(state: ApiState) -> Result<(), ApiError> {
    let api = &state.config.api;
    let addr = api.listen_addr.clone();
    let tls = match (&api.tls_cert_file, &api.tls_key_file) {
        (Some(c), Some(k)) => Some((state.config.resolve(c), state.config.resolve(k))),
        _ => None,
    };
    let Some((cert, key)) = tls else {
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ApiError::Bind { addr, source })?;
        let local = listener.local_addr().map_err(ApiError::Serve)?;
        tracing::info!(addr = %local, "meterline api: serving HTTP");
        return axum::serve(listener, router(state))
            .await
            .map_err(ApiError::Serve);
    };
    // One process-wide crypto provider; a second install is a no-op. ring,
    // not aws-lc-rs: a far lighter build, and rustls deprecates it only for
    // lacking post-quantum key exchange, which no client of this API needs yet.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let _ = provider.install_default();
    let tls_config = axum_server::tls_rustls::RustlsConfig::from_pem_file(&cert, &key)
        .await
        .map_err(|e| ApiError::Tls(format!("{} / {}: {e}", cert.display(), key.display())))?;
    let socket: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| ApiError::Tls(format!("api.listen_addr {addr}: {e} (TLS needs ip:port)")))?;
    tracing::info!(addr = %socket, "meterline api: serving HTTPS");
    axum_server::bind_rustls(socket, tls_config)
        .serve(router(state).into_make_service())
        .await
        .map_err(ApiError::Serve)
}
