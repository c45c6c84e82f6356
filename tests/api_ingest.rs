//! `meterline api` against the real broker, driven as a client would:
//! batches over HTTP, retries of whole batches, invalid events, wrong keys.
//! What lands is read back from `usage.events` and, through the validate and
//! dedupe stages, from `usage.validated` (each valid event exactly once).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use meterline::api::auth::token_hash_hex;

const INGEST_TOKEN: &str = "mtl_ingest_old";
const ROTATED_TOKEN: &str = "mtl_ingest_new";
const READ_TOKEN: &str = "mtl_reader";
const LIMITED_TOKEN: &str = "mtl_limited";
const BATCHES: usize = 20;
const EVENTS_PER_BATCH: usize = 50;
const MAX_BODY_BYTES: usize = 64 * 1024;

struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (no client crate needed).
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn post_events(port: u16, token: Option<&str>, content_type: &str, body: &str) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", content_type)];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(port, "POST", "/api/v1/events", &headers, body.as_bytes())
}

fn event(source: &str, id: &str, subject: &str, tokens: &str) -> String {
    event_at(source, id, subject, tokens, &now_rfc3339())
}

fn event_at(source: &str, id: &str, subject: &str, tokens: &str, time: &str) -> String {
    cloudevent(
        source,
        id,
        "llm.tokens",
        subject,
        time,
        &format!(r#"{{"tokens": {tokens}, "model": "m1"}}"#),
    )
}

fn batch(events: &[String]) -> String {
    format!("[{}]", events.join(","))
}

fn config(port: u16) -> String {
    config_with(port, "")
}

/// The test keys, with `api_extra` lines in `[api]`.
fn config_with(port: u16, api_extra: &str) -> String {
    format!(
        r#"[api]
listen_addr = "127.0.0.1:{port}"
max_body_bytes = {MAX_BODY_BYTES}
{api_extra}
[[api.keys]]
name = "old"
sha256_hex = "{old}"
scopes = ["ingest"]
[[api.keys]]
name = "new"
sha256_hex = "{new}"
scopes = ["ingest"]
[[api.keys]]
name = "reader"
sha256_hex = "{read}"
scopes = ["read"]
[[api.keys]]
name = "limited"
sha256_hex = "{limited}"
scopes = ["ingest"]
sources = ["partner/*"]
"#,
        old = token_hash_hex(INGEST_TOKEN),
        new = token_hash_hex(ROTATED_TOKEN),
        read = token_hash_hex(READ_TOKEN),
        limited = token_hash_hex(LIMITED_TOKEN),
    )
}

#[test]
fn batches_land_once_and_bad_requests_get_problems() {
    let port = free_port();
    let w = World::new("api", &config(port));
    w.apply();
    let mut api = w.spawn_api(port);

    // Valid batches, each sent twice (a client retrying after a timeout),
    // alternating the two keys of a rotation.
    let mut expected = Vec::new();
    for b in 0..BATCHES {
        let events: Vec<String> = (0..EVENTS_PER_BATCH)
            .map(|i| {
                let id = format!("b{b}-e{i}");
                expected.push(id.clone());
                event("app/web", &id, &format!("cust-{}", i % 7), "12.5")
            })
            .collect();
        for token in [INGEST_TOKEN, ROTATED_TOKEN] {
            let a = post_events(
                port,
                Some(token),
                "application/cloudevents-batch+json",
                &batch(&events),
            );
            assert_eq!(a.status, 204, "{}", a.body);
        }
    }
    // One event alone, in both single-event media types.
    let single = event("app/web", "single-1", "cust-1", "\"7\"");
    for ct in ["application/cloudevents+json", "application/json"] {
        assert_eq!(
            post_events(port, Some(INGEST_TOKEN), ct, &single).status,
            204
        );
    }
    expected.push("single-1".into());

    // A batch with two bad events is refused whole, each index named.
    let bad = batch(&[
        event("app/web", "bad-0", "cust-1", "1"),
        event("app/web", "bad-1", "cust-1", "\"lots\""),
        event("app/web", "bad-2", "cust-1", "1"),
        r#"{"specversion":"1.0","id":"bad-3","source":"app/web","type":"llm.tokens","time":"2026-01-01T00:00:00Z","data":{}}"#.into(),
    ]);
    let a = post_events(
        port,
        Some(INGEST_TOKEN),
        "application/cloudevents-batch+json",
        &bad,
    );
    assert_eq!(a.status, 400);
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("application/problem+json")
    );
    let p = a.json();
    assert_eq!(p["code"], "invalid_events");
    let errors: Vec<(u64, String)> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap(),
                e["code"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "value_not_numeric".to_string()),
            (3, "missing_attribute".to_string())
        ]
    );

    // Keys and scopes.
    let ok_body = batch(&[event("app/web", "never", "cust-1", "1")]);
    let ct = "application/cloudevents-batch+json";
    let cases = [
        (None, 401, "unauthorized"),
        (Some("mtl_unknown"), 401, "unauthorized"),
        (Some(READ_TOKEN), 403, "forbidden"),
        (Some(LIMITED_TOKEN), 403, "source_not_permitted"),
    ];
    for (token, status, code) in cases {
        let a = post_events(port, token, ct, &ok_body);
        assert_eq!(
            (a.status, a.json()["code"].as_str()),
            (status, Some(code)),
            "{token:?}"
        );
    }
    let partner = batch(&[event("partner/x", "partner-1", "cust-2", "3")]);
    assert_eq!(
        post_events(port, Some(LIMITED_TOKEN), ct, &partner).status,
        204
    );
    expected.push("partner-1".into());

    // Corrections are events like any other: a retraction and an amendment
    // are accepted (the amendment passes as its replacement), a malformed
    // one is a problem with validate's code.
    let now = now_rfc3339();
    let retraction = cloudevent(
        "app/web",
        "retract-1",
        "meterline.usage.retract",
        "cust-1",
        &now,
        r#"{"source":"app/web","id":"b0-e1"}"#,
    );
    let replacement = event("app/web", "b0-e2-v2", "cust-2", "3");
    let amendment = cloudevent(
        "app/web",
        "amend-1",
        "meterline.usage.amend",
        "cust-2",
        &now,
        &format!(r#"{{"source":"app/web","id":"b0-e2","event":{replacement}}}"#),
    );
    let a = post_events(
        port,
        Some(INGEST_TOKEN),
        ct,
        &batch(&[retraction, amendment]),
    );
    assert_eq!(a.status, 204, "{}", a.body);
    expected.extend(["retract-1".into(), "b0-e2-v2".into()]);
    let no_id = cloudevent(
        "app/web",
        "retract-2",
        "meterline.usage.retract",
        "cust-1",
        &now,
        r#"{"source":"app/web"}"#,
    );
    let a = post_events(port, Some(INGEST_TOKEN), ct, &batch(&[no_id]));
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["errors"][0]["code"], "retraction_invalid");
    // A key limited to partner/* may not take back app/web's usage.
    let foreign = cloudevent(
        "partner/x",
        "retract-foreign",
        "meterline.usage.retract",
        "cust-1",
        &now,
        r#"{"source":"app/web","id":"b0-e3"}"#,
    );
    let a = post_events(port, Some(LIMITED_TOKEN), ct, &batch(&[foreign]));
    assert_eq!(
        (a.status, a.json()["errors"][0]["code"].as_str()),
        (403, Some("source_not_permitted")),
        "{}",
        a.body
    );

    // A gzip body (as telemetry shippers send it) is inflated; other
    // codings and a body that is not gzip are refused.
    let zipped = batch(&[event("app/web", "gzip-1", "cust-3", "4")]);
    let gz = |body: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(body).unwrap();
        e.finish().unwrap()
    };
    let auth = format!("Bearer {INGEST_TOKEN}");
    let send = |coding: &str, body: &[u8]| {
        let headers = [
            ("Content-Type", ct),
            ("Authorization", auth.as_str()),
            ("Content-Encoding", coding),
        ];
        let a = request(port, "POST", "/api/v1/events", &headers, body);
        let code = (a.status != 204).then(|| a.json()["code"].as_str().unwrap_or("").to_string());
        (a.status, code)
    };
    assert_eq!(send("gzip", &gz(zipped.as_bytes())), (204, None));
    expected.push("gzip-1".into());
    let refused = [
        (
            "br",
            gz(zipped.as_bytes()),
            415,
            "unsupported_content_encoding",
        ),
        ("gzip", zipped.clone().into_bytes(), 400, "body_not_gzip"),
        (
            "gzip",
            gz(&vec![b' '; MAX_BODY_BYTES + 1]),
            413,
            "body_too_large",
        ),
    ];
    for (coding, body, status, code) in refused {
        assert_eq!(
            send(coding, &body),
            (status, Some(code.to_string())),
            "{code}"
        );
    }

    // Malformed requests: each a 4xx problem with its code.
    let huge = batch(&vec![
        event("app/web", "big", "cust-1", "1");
        MAX_BODY_BYTES / 100
    ]);
    let malformed = [
        ("text/plain", ok_body.clone(), 415, "unsupported_media_type"),
        (ct, "[{".to_string(), 400, "body_not_json"),
        (ct, "[]".to_string(), 400, "empty_batch"),
        (
            "application/cloudevents+json",
            ok_body.clone(),
            400,
            "body_not_json",
        ),
        (ct, huge, 413, "body_too_large"),
    ];
    for (content_type, body, status, code) in malformed {
        let a = post_events(port, Some(INGEST_TOKEN), content_type, &body);
        assert_eq!(
            (a.status, a.json()["code"].as_str()),
            (status, Some(code)),
            "{code}"
        );
    }
    let a = request(port, "GET", "/api/v1/events", &[], b"");
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    assert!(
        a.json()["detail"]
            .as_str()
            .is_some_and(|d| d.contains("GET /v1/trace/event")),
        "an OpenMeter client listing events learns what answers instead: {}",
        a.body
    );
    let a = request(port, "GET", "/nowhere", &[], b"");
    assert_eq!(
        (a.status, a.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    let doc = request(port, "GET", "/v1/openapi.json", &[], b"");
    assert_eq!(doc.status, 200);
    assert!(doc.json()["paths"]["/api/v1/events"]["post"].is_object());

    // usage.events: every accepted request's events, keyed by subject, the
    // exact bytes the client sent; the refused ones never.
    let accepted = BATCHES * EVENTS_PER_BATCH * 2 + 2 + 1 + 2 + 1;
    let raw = read_all(&w.topic("usage.events"), true);
    assert_eq!(raw.len(), accepted);
    for r in &raw {
        let v = r.json();
        assert_eq!(
            r.key.as_deref(),
            Some(v["subject"].as_str().unwrap().as_bytes())
        );
        assert!(!v["id"].as_str().unwrap().starts_with("bad-") && v["id"] != "never");
    }
    let metrics = request(port, "GET", "/metrics", &[], b"").body;
    assert_eq!(
        metric(
            &metrics,
            "meterline_api_events_total",
            &[("outcome", "accepted")]
        ),
        Some(accepted as f64)
    );

    // Through validate and dedupe: each valid event exactly once.
    let mut stages = w.spawn_stage(&["validate", "dedupe"], "a");
    let validated_topic = w.topic("usage.validated");
    wait_until("every distinct event validated", || {
        read_all(&validated_topic, true).len() >= expected.len()
    });
    std::thread::sleep(Duration::from_secs(2));
    let mut ids: Vec<String> = read_all(&validated_topic, true)
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "each valid event exactly once");
    assert_eq!(terminate(&mut stages).code(), Some(0));
    assert_eq!(terminate(&mut api).code(), Some(0));
}

fn get(port: u16, token: &str, path: &str) -> Answer {
    let auth = format!("Bearer {token}");
    request(port, "GET", path, &[("Authorization", auth.as_str())], b"")
}

fn quote(port: u16, token: &str, body: &str) -> Answer {
    let auth = format!("Bearer {token}");
    request(
        port,
        "POST",
        "/v1/quotes",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
}

fn dec(v: &serde_json::Value) -> rust_decimal::Decimal {
    v.as_str().unwrap().parse().unwrap()
}

#[test]
fn queries_answer_from_reference_data_and_keys_limit_customers() {
    let port = free_port();
    let limited_reader = format!(
        "{}[[api.keys]]\nname = \"acme-portal\"\nsha256_hex = \"{}\"\nscopes = [\"read\"]\ncustomers = [\"cust-0000\"]\n",
        config(port),
        token_hash_hex("mtl_acme_portal")
    );
    let w = World::new("apiq", &limited_reader);
    w.apply();
    for kind in ["customers", "plans", "subscriptions"] {
        let text =
            std::fs::read_to_string(repo().join(format!("deploy/local/sample/{kind}.jsonl")))
                .unwrap();
        w.load_refdata(kind, &text);
    }
    let mut api = w.spawn_api(port);
    wait_until("the API read the reference data", || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });

    // Customers: the limited key reads its own, not another's.
    let a = get(port, "mtl_acme_portal", "/v1/customers/cust-0000");
    assert_eq!(a.status, 200, "{}", a.body);
    let c = a.json();
    assert_eq!(c["customer"]["name"], "Acme Corp");
    let subs: Vec<&str> = c["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(subs, vec!["sub-0000"]);
    assert_eq!(
        get(port, "mtl_acme_portal", "/v1/customers/cust-0001").status,
        403
    );
    assert_eq!(
        get(port, "mtl_acme_portal", "/v1/subscriptions/sub-0001-b").status,
        403
    );
    assert_eq!(get(port, READ_TOKEN, "/v1/customers/cust-0001").status, 200);
    assert_eq!(
        get(port, INGEST_TOKEN, "/v1/customers/cust-0000").json()["code"],
        "forbidden"
    );
    assert_eq!(
        get(port, READ_TOKEN, "/v1/customers/nobody").json()["code"],
        "not_found"
    );

    // The plan version in force follows `at`.
    let v = |at: &str| {
        get(
            port,
            READ_TOKEN,
            &format!("/v1/subscriptions/sub-0001-b?at={at}"),
        )
        .json()["plan"]["version"]
            .as_u64()
    };
    assert_eq!(v("2026-04-01T00:00:00Z"), Some(1));
    assert_eq!(v("2026-07-01T00:00:00Z"), Some(2));
    let bad_at = get(
        port,
        READ_TOKEN,
        "/v1/subscriptions/sub-0001-b?at=yesterday",
    );
    assert_eq!(
        (bad_at.status, bad_at.json()["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let plan = get(port, READ_TOKEN, "/v1/plans/scale").json();
    assert_eq!(plan["versions"].as_array().unwrap().len(), 2);

    // Quotes equal the rating library's price of the plan's charge, and
    // their lines add up to it.
    let starter = get(port, READ_TOKEN, "/v1/plans/starter").json()["versions"][0].clone();
    let cases = [
        (
            r#"{"plan_id":"starter","meter":"tokens","quantity":"150000"}"#,
            "tokens",
            "150000",
            "0.10",
        ),
        (
            r#"{"subscription_id":"sub-0000","meter":"peak_seats","quantity":"120"}"#,
            "peak_seats",
            "120",
            "1060.00",
        ),
        (
            r#"{"plan_id":"starter","meter":"api_calls","quantity":"2500"}"#,
            "api_calls",
            "2500",
            "1.00",
        ),
    ];
    for (body, meter, qty, rounded) in cases {
        let a = quote(port, "mtl_acme_portal", body);
        assert_eq!(a.status, 200, "{}", a.body);
        let q = a.json();
        let charge: meterline::refdata::PlanCharge =
            serde_json::from_value(starter["charges"][meter].clone()).unwrap();
        let model = charge.model;
        assert_eq!(
            dec(&q["amount"]),
            model.price(qty.parse().unwrap()).unwrap(),
            "{body}"
        );
        let lines: rust_decimal::Decimal = q["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| dec(&l["amount"]))
            .sum();
        assert_eq!(lines, dec(&q["amount"]));
        assert_eq!(q["amount_rounded"].as_str(), Some(rounded), "{body}");
    }
    let refused = [
        r#"{"plan_id":"starter","subscription_id":"sub-0000","meter":"tokens","quantity":"1"}"#,
        r#"{"plan_id":"starter","meter":"tokens","quantity":1.5}"#,
        r#"{"plan_id":"starter","meter":"tokens","quantity":"-1"}"#,
        r#"{"plan_id":"starter","meter":"nope","quantity":"1"}"#,
    ];
    for body in refused {
        let a = quote(port, READ_TOKEN, body);
        assert_eq!(
            (a.status, a.json()["code"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
    }
    assert_eq!(
        quote(
            port,
            "mtl_acme_portal",
            r#"{"subscription_id":"sub-0001-b","meter":"tokens","quantity":"1"}"#
        )
        .status,
        403
    );

    let meters = get(port, READ_TOKEN, "/api/v1/meters").json();
    let slugs: Vec<&str> = meters
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["slug"].as_str().unwrap())
        .collect();
    assert_eq!(
        slugs,
        vec![
            "api_calls",
            "tokens",
            "storage_gb",
            "peak_seats",
            "active_users"
        ]
    );
    assert_eq!(terminate(&mut api).code(), Some(0));
}

/// Sum of the rated marginal amounts of `sub`'s segments in `period`
/// (a segment key is ["sub", "meter", "period", version, {group}]).
fn rated_sum(rated: &[Rec], sub: &str, period: &str) -> rust_decimal::Decimal {
    rated
        .iter()
        .flat_map(|r| r.json()["measures"].as_array().cloned().unwrap_or_default())
        .filter(|m| {
            let key: serde_json::Value =
                serde_json::from_str(m["segment_key"].as_str().unwrap()).unwrap();
            key[0] == sub && key[2] == period
        })
        .map(|m| dec(&m["marginal_amount"]))
        .sum()
}

#[test]
fn current_usage_is_the_sum_of_the_rated_marginal_amounts() {
    let port = free_port();
    let stage_port = free_port();
    let w = World::new(
        "apiu",
        &format!(
            "{}[http]\nlisten_addr = \"127.0.0.1:{stage_port}\"\n[lineage]\nendpoints = [\"http://127.0.0.1:{stage_port}\"]\n",
            config(port)
        ),
    );
    w.apply();
    for kind in ["customers", "plans", "subscriptions"] {
        let text =
            std::fs::read_to_string(repo().join(format!("deploy/local/sample/{kind}.jsonl")))
                .unwrap();
        w.load_refdata(kind, &text);
    }
    // A subscription that started ten days ago and whose current period
    // (UTC days) began three days ago: "five days ago" is in the previous
    // period (closed by the later events' watermark), "two days ago" and
    // "now" in the open one, on any date.
    let anchor = (chrono::Utc::now() - chrono::Duration::days(3))
        .format("%d")
        .to_string();
    w.load_refdata(
        "customers",
        r#"{"id":"cust-api","name":"API Test","legal_entity":"api-us","erp_customer_id":"C-API","status":"active"}"#,
    );
    w.load_refdata(
        "subscriptions",
        &format!(
            r#"{{"id":"sub-api","customer_id":"cust-api","plan_id":"starter","start":"{}","end":null,"billing_anchor_day":{},"time_zone":"UTC","currency":"USD","legal_entity":"meterline-us"}}"#,
            (chrono::Utc::now() - chrono::Duration::days(10)).format("%Y-%m-%dT00:00:00Z"),
            anchor.trim_start_matches('0')
        ),
    );
    let mut api = w.spawn_api(port);
    // cust-api (sub-api, plan starter: the first 100,000 tokens free, then
    // 0.000002 each) and cust-0001 (sub-0001-b, plan scale v2: the first
    // 2,000,000 free), both over the free tier.
    let events: Vec<String> = (0..40)
        .map(|i| {
            let (subject, tokens) = if i % 4 == 0 {
                ("cust-0001", "300000")
            } else {
                ("cust-api", "12345.678")
            };
            event("app/web", &format!("u-{i}"), subject, tokens)
        })
        .collect();
    // Two days ago, in the same open period, sent first: a day window that
    // the later events' watermark closes (on to usage.windows).
    let earlier = (chrono::Utc::now() - chrono::Duration::days(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let earlier_events: Vec<String> = (0..5)
        .map(|i| event_at("app/web", &format!("e-{i}"), "cust-api", "1000", &earlier))
        .collect();
    let previous = (chrono::Utc::now() - chrono::Duration::days(5))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let previous_events: Vec<String> = (0..5)
        .map(|i| event_at("app/web", &format!("p-{i}"), "cust-api", "30000", &previous))
        .collect();
    for b in [&previous_events, &earlier_events] {
        let a = post_events(
            port,
            Some(INGEST_TOKEN),
            "application/cloudevents-batch+json",
            &batch(b),
        );
        assert_eq!(a.status, 204, "{}", a.body);
    }
    for chunk in events.chunks(10) {
        let a = post_events(
            port,
            Some(INGEST_TOKEN),
            "application/cloudevents-batch+json",
            &batch(chunk),
        );
        assert_eq!(a.status, 204, "{}", a.body);
    }
    let mut stages = w.spawn_stage(&all_stages(), "a");
    let usage = |sub: &str| get(port, READ_TOKEN, &format!("/v1/subscriptions/{sub}/usage")).json();
    let events_in = |u: &serde_json::Value| -> u64 {
        u["periods"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .flat_map(|p| p["meters"].as_array().cloned().unwrap_or_default())
                    .map(|m| m["event_count"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0)
    };
    wait_until("every event in the open windows", || {
        events_in(&usage("sub-api")) == 35 && events_in(&usage("sub-0001-b")) == 10
    });
    let rated = read_all(&w.topic("usage.rated"), true);
    for sub in ["sub-api", "sub-0001-b"] {
        let u = usage(sub);
        let periods = u["periods"].as_array().unwrap();
        assert_eq!(periods.len(), 1, "{u}");
        let open_period = periods[0]["period"]["id"].as_str().unwrap().to_string();
        let expected = rated_sum(&rated, sub, &open_period);
        let meters = periods[0]["meters"].as_array().unwrap();
        let amount: rust_decimal::Decimal = meters.iter().map(|m| dec(&m["amount"])).sum();
        assert_eq!(amount, expected, "{sub}: {u}");
        for m in meters {
            assert_eq!(
                dec(&m["accrued"]) + dec(&m["not_yet_accrued"]),
                dec(&m["amount"])
            );
        }
        assert!(
            expected > rust_decimal::Decimal::ZERO,
            "{sub}: beyond the free tier"
        );
    }
    // 30 x 12345.678 + 5 x 1000 tokens = 375370.34; (375370.34 - 100000) x 0.000002.
    assert_eq!(
        usage("sub-api")["periods"][0]["meters"][0]["amount"]
            .as_str()
            .map(|a| a.parse::<rust_decimal::Decimal>().unwrap()),
        Some("0.55074068".parse().unwrap())
    );
    // Invoices: the previous period's document (5 x 30000 tokens: 50000
    // over the free 100000 -> 0.1, posted as 0.10) and the open period.
    wait_until("the previous period invoiced", || {
        get(port, READ_TOKEN, "/v1/subscriptions/sub-api/invoices").json()["invoices"]
            .as_array()
            .is_some_and(|l| {
                l.iter().any(|i| {
                    i["status"] == "posted"
                        && i["lines"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .any(|l| l["kind"] == "usage")
                })
            })
    });
    let inv = get(port, READ_TOKEN, "/v1/subscriptions/sub-api/invoices").json();
    let list = inv["invoices"].as_array().unwrap();
    // Periods before the first event (if the subscription started earlier)
    // are invoiced too, with their base fee only.
    let with_usage: Vec<&serde_json::Value> = list
        .iter()
        .filter(|i| {
            i["lines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["kind"] == "usage")
        })
        .collect();
    assert_eq!(with_usage.len(), 1, "{inv}");
    let doc = with_usage[0];
    let closed_id = doc["service_interval"]["id"].as_str().unwrap();
    let of = |kind: &str| -> rust_decimal::Decimal {
        doc["lines"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["kind"] == kind)
            .map(|l| dec(&l["amount"]))
            .sum()
    };
    assert_eq!(
        of("usage"),
        rated_sum(&rated, "sub-api", closed_id),
        "{inv}"
    );
    assert_eq!(of("usage").to_string(), "0.10", "{inv}");
    assert_eq!(of("base_fee").to_string(), "49.00", "{inv}");
    assert_eq!(doc["totals"]["total"], "49.10", "{inv}");
    let one = get(
        port,
        READ_TOKEN,
        &format!("/v1/invoices/{}", doc["invoice_id"].as_str().unwrap()),
    );
    assert_eq!(one.json(), *doc);
    let open = inv["open_periods"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{inv}");
    let open_lines: rust_decimal::Decimal = open[0]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| dec(&l["amount"]))
        .sum();
    assert_eq!(open_lines, "0.55074068".parse().unwrap(), "{inv}");

    // OpenMeter's meter query: tokens per day = what was sent, the day two
    // days ago from its closed window on usage.windows, today from the open one.
    wait_until("the earlier day window closed", || {
        read_all(&w.topic("usage.windows"), true)
            .iter()
            .any(|r| r.json()["kind"] == "day" && r.json()["customer"]["id"] == "cust-api")
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    let q = get(
        port,
        READ_TOKEN,
        "/api/v1/meters/tokens/query?subject=cust-api&windowSize=DAY&groupBy=model",
    )
    .json();
    let rows = q["data"].as_array().unwrap();
    let total: rust_decimal::Decimal = rows
        .iter()
        .map(|r| {
            r["value"]
                .to_string()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        total,
        "525370.34".parse().unwrap(),
        "5 x 30000 + 5 x 1000 + 30 x 12345.678: {q}"
    );
    assert!(rows
        .iter()
        .all(|r| r["subject"] == "cust-api" && r["groupBy"]["model"] == "m1"));
    assert!(
        rows.iter().any(
            |r| r["value"].to_string().parse::<rust_decimal::Decimal>().ok() == Some(5000.into())
        ),
        "the closed day two days ago: {q}"
    );
    assert_eq!(rows.len(), 3, "{q}");
    // OpenMeter's filters are applied, or refused; never ignored.
    let query = |params: &str| {
        get(
            port,
            READ_TOKEN,
            &format!("/api/v1/meters/tokens/query?{params}"),
        )
    };
    let data = |params: &str| query(params).json()["data"].clone();
    let daily = "windowSize=DAY&groupBy=model";
    assert_eq!(
        data(&format!(
            "subject=cust-api&filterGroupBy%5Bmodel%5D=m1&{daily}"
        )),
        q["data"]
    );
    assert_eq!(
        data(&format!(
            "subject=cust-api&subject=cust-none&filterCustomerId=cust-api&{daily}"
        )),
        q["data"]
    );
    assert_eq!(
        data(&format!(
            "subject=cust-api&filterGroupBy%5Bmodel%5D=m2&{daily}"
        )),
        serde_json::json!([])
    );
    // As in OpenMeter: without windowSize and groupBy, one row, the total.
    let total_row = data("subject=cust-api");
    assert_eq!(total_row.as_array().map(Vec::len), Some(1), "{total_row}");
    assert_eq!(
        total_row[0]["value"].to_string(),
        "525370.34",
        "{total_row}"
    );
    assert_eq!(total_row[0]["groupBy"], serde_json::json!({}));
    // OpenMeter's POST form: the same rows for the same parameters.
    let post_query = |body: &str| {
        let auth = format!("Bearer {READ_TOKEN}");
        request(
            port,
            "POST",
            "/api/v1/meters/tokens/query",
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    };
    let posted = post_query(
        r#"{"subject": ["cust-api"], "windowSize": "DAY", "groupBy": ["model"],
            "filterGroupBy": {"model": ["m1", "m2"]}, "windowTimeZone": null}"#,
    );
    assert_eq!((posted.status, &posted.json()["data"]), (200, &q["data"]));
    // CSV for a client that asks for it (OpenMeter's query_csv): the same
    // rows, the exact values.
    let auth = format!("Bearer {READ_TOKEN}");
    let csv = request(
        port,
        "GET",
        "/api/v1/meters/tokens/query?subject=cust-api&windowSize=DAY&groupBy=model",
        &[("Authorization", auth.as_str()), ("Accept", "text/csv")],
        b"",
    );
    assert_eq!(csv.status, 200);
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], "window_start,window_end,subject,model,value");
    let csv_total: rust_decimal::Decimal = lines[1..]
        .iter()
        .map(|l| {
            l.rsplit(',')
                .next()
                .unwrap()
                .parse::<rust_decimal::Decimal>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        (lines.len() - 1, csv_total),
        (rows.len(), total),
        "{}",
        csv.body
    );
    // The subjects with days of a meter, as OpenMeter lists them.
    let subjects = get(port, READ_TOKEN, "/api/v1/meters/tokens/subjects").json();
    assert!(
        subjects.as_array().unwrap().iter().any(|s| s == "cust-api"),
        "{subjects}"
    );
    let later = get(
        port,
        READ_TOKEN,
        "/api/v1/meters/tokens/subjects?from=2099-01-01T00:00:00Z",
    );
    assert_eq!((later.status, later.json()), (200, serde_json::json!([])));
    assert_eq!(
        get(
            port,
            READ_TOKEN,
            "/api/v1/meters/tokens/subjects?groupBy=model"
        )
        .status,
        400
    );
    let models = get(
        port,
        READ_TOKEN,
        "/api/v1/meters/tokens/group-by/model/values",
    )
    .json();
    assert!(
        models.as_array().unwrap().iter().any(|m| m == "m1"),
        "{models}"
    );
    let unknown = get(
        port,
        READ_TOKEN,
        "/api/v1/meters/tokens/group-by/colour/values",
    );
    assert_eq!(
        (unknown.status, unknown.json()["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let refused = post_query(r#"{"subject": ["cust-api"], "windowTimeZone": "UTC"}"#);
    assert_eq!(
        (refused.status, refused.json()["code"].as_str()),
        (400, Some("invalid_request")),
        "{}",
        refused.body
    );
    for refused in [
        "subject=cust-api&windowTimeZone=UTC",
        "groupBy=colour",
        "limit=5",
    ] {
        let r = query(refused);
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (400, Some("invalid_request")),
            "{refused}: {}",
            r.body
        );
    }
    let max = get(port, READ_TOKEN, "/api/v1/meters/peak_seats/query");
    assert_eq!(
        (max.status, max.json()["code"].as_str()),
        (400, Some("invalid_request"))
    );
    assert_eq!(
        get(port, READ_TOKEN, "/api/v1/meters/nope/query").status,
        404
    );
    let one = get(port, READ_TOKEN, "/api/v1/meters/tokens").json();
    let listed = get(port, READ_TOKEN, "/api/v1/meters").json();
    assert_eq!(
        Some(&one),
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["slug"] == "tokens")
    );
    assert_eq!(one["aggregation"], "SUM");
    assert_eq!(get(port, READ_TOKEN, "/api/v1/meters/nope").status, 404);

    // Lineage through the API, with the caller's key; the stage's own route
    // refuses a request without one.
    let l = get(port, READ_TOKEN, "/v1/lineage/event?source=app/web&id=u-1");
    assert_eq!(l.status, 200, "{}", l.body);
    let stages_seen: Vec<String> = l.json()["stages"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for s in ["validate", "dedupe", "enrich", "rate", "aggregate"] {
        assert!(
            stages_seen.iter().any(|x| x == s),
            "{s} missing: {}",
            l.body
        );
    }
    assert_eq!(
        get(
            port,
            INGEST_TOKEN,
            "/v1/lineage/event?source=app/web&id=u-1"
        )
        .status,
        403
    );
    let bad = get(port, READ_TOKEN, "/v1/lineage/event?source=app/web");
    assert_eq!(
        (bad.status, bad.json()["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let open = http_get(stage_port, "/lineage/event?source=app/web&id=u-1").unwrap();
    assert_eq!(open.0, 401, "the stage's lineage needs a key: {}", open.1);
    // A second replica started now, on topics that hold data and
    // transaction markers, gets ready and answers the same.
    let port2 = free_port();
    let mut api2 = w
        .cmd()
        .arg("api")
        .env("METERLINE__API__LISTEN_ADDR", format!("127.0.0.1:{port2}"))
        .current_dir(w.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map(Stage)
        .unwrap();
    wait_until("the second replica is ready", || {
        http_get(port2, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    let q2 = get(
        port2,
        READ_TOKEN,
        "/api/v1/meters/tokens/query?subject=cust-api&windowSize=DAY&groupBy=model",
    )
    .json();
    assert_eq!(q2["data"], q["data"], "replicas agree");
    assert_eq!(terminate(&mut api2).code(), Some(0));
    // A late event of the closed period: an adjustment in the open one that
    // names the period and the segment (meter, group, plan version), with
    // its quantity: 150000 -> 170000 tokens, 20000 x 0.000002 = 0.04.
    let late = post_events(
        port,
        Some(INGEST_TOKEN),
        "application/cloudevents-batch+json",
        &batch(&[event_at(
            "app/web", "late-0", "cust-api", "20000", &previous,
        )]),
    );
    assert_eq!(late.status, 204, "{}", late.body);
    let period_adjustment = || -> Option<serde_json::Value> {
        usage("sub-api")["periods"][0]["adjustments"]
            .as_array()?
            .iter()
            .find(|a| a["kind"] == "billing_period")
            .cloned()
    };
    wait_until("the late event adjusts the open period", || {
        period_adjustment().is_some()
    });
    let a = period_adjustment().unwrap();
    assert_eq!(a["adjusts"].as_str(), Some(closed_id), "{a}");
    assert_eq!(
        (&a["meter"], &a["group"], &a["plan_version"]),
        (
            &serde_json::json!("tokens"),
            &serde_json::json!({"model": "m1"}),
            &serde_json::json!(1)
        ),
        "{a}"
    );
    assert_eq!(
        (dec(&a["quantity"]), dec(&a["amount"])),
        (20000.into(), "0.04".parse().unwrap()),
        "{a}"
    );
    assert_eq!(a["event_count"], 1, "{a}");
    assert_eq!(terminate(&mut stages).code(), Some(0));
    assert_eq!(terminate(&mut api).code(), Some(0));
}

fn curl_https(dir: &std::path::Path, args: &[&str]) -> Option<(u16, String)> {
    let out = std::process::Command::new("curl")
        .current_dir(dir)
        .args([
            "-sS",
            "--cacert",
            "cert.pem",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.parse().ok()?, body.to_string()))
}

#[test]
fn tls_serves_the_api_over_https_only() {
    let port = free_port();
    let w = World::new(
        "apitls",
        &config_with(
            port,
            "tls_cert_file = \"cert.pem\"\ntls_key_file = \"key.pem\"",
        ),
    );
    let made = std::process::Command::new("openssl")
        .current_dir(w.dir.path())
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "key.pem", "-out",
            "cert.pem",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-days",
            "1",
        ])
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    w.apply();
    let mut api = w
        .cmd()
        .arg("api")
        .current_dir(w.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .map(Stage)
        .unwrap();
    let base = format!("https://127.0.0.1:{port}");
    wait_until("the API answers over HTTPS", || {
        curl_https(w.dir.path(), &[&format!("{base}/healthz")]).is_some_and(|(s, _)| s == 200)
    });
    let body = batch(&[event("app/web", "tls-1", "cust-1", "5")]);
    let auth = format!("Authorization: Bearer {INGEST_TOKEN}");
    let (status, text) = curl_https(
        w.dir.path(),
        &[
            "-X",
            "POST",
            &format!("{base}/api/v1/events"),
            "-H",
            &auth,
            "-H",
            "Content-Type: application/cloudevents-batch+json",
            "--data-binary",
            &body,
        ],
    )
    .unwrap();
    assert_eq!(status, 204, "{text}");
    assert_eq!(read_all(&w.topic("usage.events"), true).len(), 1);
    // Plain HTTP on the TLS port gets no HTTP answer.
    assert!(http_get(port, "/healthz").is_none_or(|(s, _)| s != 200));
    assert_eq!(terminate(&mut api).code(), Some(0));
}
