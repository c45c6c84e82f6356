//! validate -> dedupe -> enrich -> rate against the real broker, with reference data
//! published by `meterline refdata load`:
//!
//! * 3 customers, 4 subscriptions (c-alpha changes plan on Oct 20: its std
//!   subscription ends, a pro one starts; c-beta's ends on Oct 25), plan
//!   `std` in 2 versions (v2 from Oct 16, a new segment mid-period), plan
//!   `pro`, a price override (s-gamma's tokens); 5,000 events in October 2026;
//! * the marginal amounts of every rating segment add up to totals worked
//!   out by hand from the tier tables (literals below, not computed with the
//!   library);
//! * a fourth customer's events are parked (unknown customer) and flow
//!   exactly once after `meterline refdata load` publishes the customer;
//!   c-beta's events after its subscription ended stay parked;
//! * the same scenario with the process SIGKILLed three times (once right
//!   after the parked events start flowing) gives the same totals.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use common::*;
use meterline::contracts::RatedEvent;
use rust_decimal::Decimal;

const EVENTS: usize = 5_000;
/// Event i happens at Oct 1 00:00 UTC + i * STEP_S: Oct 1 to Oct 29.
const STEP_S: i64 = 487;
/// c-delta (1 event in 10) is unknown until loaded.
const DELTA_EVENTS: usize = 500;
/// c-beta's events from Oct 25 on, after its subscription ended.
const BETA_AFTER_END: usize = 222;
const SOURCE: &str = "scenario";

/// (segment key, total quantity, total amount) per rating segment, worked
/// out by hand from the tiers of `plans_jsonl` (and s-gamma's override).
/// The quantities are what the event generator below adds up to.
///
/// std v1 tokens: graduated 10,000 free, to 100,000 at 0.0002 with a 1.50
/// entry fee, then 0.0001; std v1 api_calls: volume, all at 0.01 up to 100,
/// all at 0.008 above. std v2 tokens: 5,000 free then 0.00015; std v2
/// api_calls: packages of 50 at 0.40 after 20 free. pro tokens: 0.00012 a
/// unit; pro api_calls: volume, 0.006 up to 100, 0.005 above with a 2.00
/// fee. s-gamma overrides tokens: 0.0001 up to 50,000, then 0.00005.
const EXPECTED: &[(&str, &str, &str)] = &[
    // 163 * 0.005 + 2.00
    (
        r#"["s-alpha-pro","api_calls","2026-10-01",1,{"region":"eu"}]"#,
        "163",
        "2.815",
    ),
    // 110774 * 0.00012
    (
        r#"["s-alpha-pro","tokens","2026-10-01",1,{"model":"large"}]"#,
        "110774",
        "13.29288",
    ),
    // 110289 * 0.00012
    (
        r#"["s-alpha-pro","tokens","2026-10-01",1,{"model":"small"}]"#,
        "110289",
        "13.23468",
    ),
    // 267 * 0.008
    (
        r#"["s-alpha-std","api_calls","2026-10-01",1,{"region":"eu"}]"#,
        "267",
        "2.136",
    ),
    // ceil((70 - 20) / 50) = 1 package * 0.40
    (
        r#"["s-alpha-std","api_calls","2026-10-01",2,{"region":"eu"}]"#,
        "70",
        "0.40",
    ),
    // 10000 * 0 + 90000 * 0.0002 + 1.50 + 80614 * 0.0001
    (
        r#"["s-alpha-std","tokens","2026-10-01",1,{"model":"large"}]"#,
        "180614",
        "27.5614",
    ),
    // 10000 * 0 + 90000 * 0.0002 + 1.50 + 80808 * 0.0001
    (
        r#"["s-alpha-std","tokens","2026-10-01",1,{"model":"small"}]"#,
        "180808",
        "27.5808",
    ),
    // 5000 * 0 + 42239 * 0.00015
    (
        r#"["s-alpha-std","tokens","2026-10-01",2,{"model":"large"}]"#,
        "47239",
        "6.33585",
    ),
    // 5000 * 0 + 43597 * 0.00015
    (
        r#"["s-alpha-std","tokens","2026-10-01",2,{"model":"small"}]"#,
        "48597",
        "6.53955",
    ),
    // 266 * 0.008
    (
        r#"["s-beta","api_calls","2026-10-01",1,{"region":"eu"}]"#,
        "266",
        "2.128",
    ),
    // ceil((160 - 20) / 50) = 3 packages * 0.40
    (
        r#"["s-beta","api_calls","2026-10-01",2,{"region":"eu"}]"#,
        "160",
        "1.20",
    ),
    // 10000 * 0 + 90000 * 0.0002 + 1.50 + 80226 * 0.0001
    (
        r#"["s-beta","tokens","2026-10-01",1,{"model":"large"}]"#,
        "180226",
        "27.5226",
    ),
    // 10000 * 0 + 90000 * 0.0002 + 1.50 + 81293 * 0.0001
    (
        r#"["s-beta","tokens","2026-10-01",1,{"model":"small"}]"#,
        "181293",
        "27.6293",
    ),
    // 5000 * 0 + 104125 * 0.00015
    (
        r#"["s-beta","tokens","2026-10-01",2,{"model":"large"}]"#,
        "109125",
        "15.61875",
    ),
    // 5000 * 0 + 103058 * 0.00015
    (
        r#"["s-beta","tokens","2026-10-01",2,{"model":"small"}]"#,
        "108058",
        "15.45870",
    ),
    // 167 * 0.005 + 2.00
    (
        r#"["s-delta","api_calls","2026-10-01",1,{"region":"eu"}]"#,
        "167",
        "2.835",
    ),
    // 112132 * 0.00012
    (
        r#"["s-delta","tokens","2026-10-01",1,{"model":"large"}]"#,
        "112132",
        "13.45584",
    ),
    // 113296 * 0.00012
    (
        r#"["s-delta","tokens","2026-10-01",1,{"model":"small"}]"#,
        "113296",
        "13.59552",
    ),
    // 266 * 0.008
    (
        r#"["s-gamma","api_calls","2026-10-01",1,{"region":"eu"}]"#,
        "266",
        "2.128",
    ),
    // ceil((234 - 20) / 50) = 5 packages * 0.40
    (
        r#"["s-gamma","api_calls","2026-10-01",2,{"region":"eu"}]"#,
        "234",
        "2.00",
    ),
    // override: 50000 * 0.0001 + 131972 * 0.00005
    (
        r#"["s-gamma","tokens","2026-10-01",1,{"model":"large"}]"#,
        "181972",
        "11.59860",
    ),
    // override: 50000 * 0.0001 + 129256 * 0.00005
    (
        r#"["s-gamma","tokens","2026-10-01",1,{"model":"small"}]"#,
        "179256",
        "11.46280",
    ),
    // override: 50000 * 0.0001 + 108886 * 0.00005
    (
        r#"["s-gamma","tokens","2026-10-01",2,{"model":"large"}]"#,
        "158886",
        "10.44430",
    ),
    // override: 50000 * 0.0001 + 108886 * 0.00005
    (
        r#"["s-gamma","tokens","2026-10-01",2,{"model":"small"}]"#,
        "158886",
        "10.44430",
    ),
];

/// Revenue at risk of the parked c-delta events, by hand: each priced alone
/// under s-delta's pro plan: (112132 + 113296) tokens * 0.00012 + 167 api
/// calls * 0.006 (each alone is in the first volume tier).
const DELTA_AT_RISK_USD: f64 = 28.05336;

/// Event times are fixed in October 2026; validation must accept them.
const VALIDATE_CONFIG: &str = "[validate]\nmax_event_age_days = 3650\ndedupe_horizon_days = 3651\n";

fn plans_jsonl() -> String {
    [
        format!(
            r#"{{"id":"std","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","base_fee":"49.00","charges":{{"tokens":{{"model":"graduated","tiers":[{{"up_to":"10000","unit_price":"0"}},{{"up_to":"100000","unit_price":"0.0002","flat_fee":"1.50"}},{{"up_to":null,"unit_price":"0.0001"}}]}},"api_calls":{{"model":"volume","tiers":[{{"up_to":"100","unit_price":"0.01"}},{{"up_to":null,"unit_price":"0.008"}}]}}}},{GL_ACCOUNTS_JSON}}}"#
        ),
        format!(
            r#"{{"id":"std","version":2,"effective_from":"2026-10-16T00:00:00Z","currency":"USD","base_fee":"49.00","charges":{{"tokens":{{"model":"graduated","tiers":[{{"up_to":"5000","unit_price":"0"}},{{"up_to":null,"unit_price":"0.00015"}}]}},"api_calls":{{"model":"package","size":"50","price":"0.40","free_units":"20"}}}},{GL_ACCOUNTS_JSON}}}"#
        ),
        format!(
            r#"{{"id":"pro","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","charges":{{"tokens":{{"model":"per_unit","unit_price":"0.00012"}},"api_calls":{{"model":"volume","tiers":[{{"up_to":"100","unit_price":"0.006"}},{{"up_to":null,"unit_price":"0.005","flat_fee":"2.00"}}]}}}},{GL_ACCOUNTS_JSON}}}"#
        ),
    ]
    .join("\n")
}

fn customer_line(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","name":"Customer {id}","legal_entity":"le-us","erp_customer_id":"ERP-{id}","status":"active"}}"#
    )
}

fn customers_jsonl() -> String {
    format!(
        "# the three known customers\n{}\n{}\n{}\n",
        customer_line("c-alpha"),
        customer_line("c-beta"),
        customer_line("c-gamma")
    )
}

fn subscription_line(
    id: &str,
    customer: &str,
    plan: &str,
    start: &str,
    end: Option<&str>,
    extra: &str,
) -> String {
    let end = end.map_or("null".to_owned(), |e| format!("\"{e}\""));
    format!(
        r#"{{"id":"{id}","customer_id":"{customer}","plan_id":"{plan}","start":"{start}","end":{end},"billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us"{extra}}}"#
    )
}

fn subscriptions_jsonl() -> String {
    let from = "2026-09-01T00:00:00Z";
    let gamma_override = r#","price_overrides":{"tokens":{"model":"graduated","tiers":[{"up_to":"50000","unit_price":"0.0001"},{"up_to":null,"unit_price":"0.00005"}]}}"#;
    [
        // The plan change: std ends where pro starts.
        subscription_line(
            "s-alpha-std",
            "c-alpha",
            "std",
            from,
            Some("2026-10-20T00:00:00Z"),
            "",
        ),
        subscription_line(
            "s-alpha-pro",
            "c-alpha",
            "pro",
            "2026-10-20T00:00:00Z",
            None,
            "",
        ),
        // Ends mid-period, nothing follows.
        subscription_line(
            "s-beta",
            "c-beta",
            "std",
            from,
            Some("2026-10-25T00:00:00Z"),
            "",
        ),
        subscription_line("s-gamma", "c-gamma", "std", from, None, gamma_override),
        // The subscription of the customer that is loaded later.
        subscription_line("s-delta", "c-delta", "pro", from, None, ""),
    ]
    .join("\n")
}

fn event_time(i: usize) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap()
        + chrono::Duration::seconds(i as i64 * STEP_S)
}

fn customer_of(i: usize) -> &'static str {
    match i % 10 {
        0..=2 => "c-alpha",
        3..=5 => "c-beta",
        6..=8 => "c-gamma",
        _ => "c-delta",
    }
}

/// Event i: an API call (1 in 3) or tokens of model small or large.
fn event(i: usize) -> Record {
    let customer = customer_of(i);
    let time = event_time(i).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let id = format!("ev-{i}");
    let value = match i % 3 {
        0 => cloudevent(
            SOURCE,
            &id,
            "api.request",
            customer,
            &time,
            r#"{"region":"eu"}"#,
        ),
        k => cloudevent(
            SOURCE,
            &id,
            "llm.tokens",
            customer,
            &time,
            &format!(
                r#"{{"tokens":{},"model":"{}"}}"#,
                (i % 13 + 1) * 97,
                if k == 1 { "small" } else { "large" }
            ),
        ),
    };
    (
        Some(customer.as_bytes().to_vec()),
        Some(value.into_bytes()),
        vec![],
    )
}

/// Runs `meterline refdata load`; returns (success, stdout, stderr).
fn refdata_load(w: &World, kind: &str, name: &str, text: &str) -> (bool, String, String) {
    let path = w.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    let out = w.run(&[
        "refdata",
        "load",
        "--kind",
        kind,
        "--file",
        &path_str(&path),
    ]);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn load_ok(w: &World, kind: &str, name: &str, text: &str, count: usize) {
    let (ok, stdout, stderr) = refdata_load(w, kind, name, text);
    assert!(ok, "refdata load {kind} failed: {stderr}");
    assert!(
        stdout.contains(&format!("published {count} {kind} record(s)")),
        "{stdout}"
    );
}

/// A world with topics and the reference data of every customer but c-delta.
fn scenario_world(name: &str, extra: &str) -> World {
    let w = World::new(name, &format!("{VALIDATE_CONFIG}{extra}"));
    w.apply();
    load_ok(&w, "plans", "plans.jsonl", &plans_jsonl(), 3);
    load_ok(&w, "customers", "customers.jsonl", &customers_jsonl(), 3);
    load_ok(
        &w,
        "subscriptions",
        "subscriptions.jsonl",
        &subscriptions_jsonl(),
        5,
    );
    w
}

fn load_delta(w: &World) {
    load_ok(w, "customers", "delta.jsonl", &customer_line("c-delta"), 1);
}

fn ids_of(recs: &[Rec]) -> Vec<String> {
    recs.iter()
        .map(|r| {
            let v = r.json();
            let (source, id) = match v.get("event") {
                // usage.enriched
                Some(e) => (e["source"].clone(), e["id"].clone()),
                // usage.rated, usage.exceptions (the validated event)
                None => (v["source"].clone(), v["id"].clone()),
            };
            assert_eq!(source, SOURCE);
            id.as_str().unwrap().to_owned()
        })
        .collect()
}

/// Every record once: returns the set of ids.
fn unique_ids(recs: &[Rec], what: &str) -> BTreeSet<String> {
    let ids = ids_of(recs);
    let set: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), set.len(), "an event appears twice on {what}");
    set
}

fn expected_ids(filter: impl Fn(usize) -> bool) -> BTreeSet<String> {
    (0..EVENTS)
        .filter(|i| filter(*i))
        .map(|i| format!("ev-{i}"))
        .collect()
}

fn beta_after_end(i: usize) -> bool {
    customer_of(i) == "c-beta"
        && event_time(i) >= Utc.with_ymd_and_hms(2026, 10, 25, 0, 0, 0).unwrap()
}

/// Checks usage.rated and usage.exceptions once everything has flowed.
fn check_final(w: &World) {
    let rated_topic = w.topic("usage.rated");
    let flowing = EVENTS - BETA_AFTER_END;
    wait_until("every resolvable event rated", || {
        read_all(&rated_topic, true).len() >= flowing
    });
    // Let a double, if there were one, arrive before judging.
    std::thread::sleep(Duration::from_secs(3));

    let rated = read_all(&rated_topic, true);
    assert_eq!(rated.len(), flowing);
    assert_eq!(
        unique_ids(&rated, "usage.rated"),
        expected_ids(|i| !beta_after_end(i))
    );
    let enriched = read_all(&w.topic("usage.enriched"), true);
    assert_eq!(
        unique_ids(&enriched, "usage.enriched"),
        expected_ids(|i| !beta_after_end(i))
    );

    // Sum of marginal amounts and quantities per segment.
    let mut totals: BTreeMap<String, (Decimal, Decimal, usize)> = BTreeMap::new();
    for r in &rated {
        let e = RatedEvent::from_json_slice(r.value.as_deref().unwrap()).unwrap();
        assert_eq!(
            r.key.as_deref(),
            Some(e.customer_id.as_bytes()),
            "keyed by customer"
        );
        assert_eq!(e.customer_id, e.enriched.event.subject);
        assert_eq!(e.measures.len(), 1);
        let m = &e.measures[0];
        assert_eq!(m.plan_version, e.enriched.plan_version);
        assert_eq!(m.marginal_quantity, m.quantity_after - m.quantity_before);
        let t = totals
            .entry(m.segment_key.clone())
            .or_insert((Decimal::ZERO, Decimal::ZERO, 0));
        t.0 += m.marginal_quantity;
        t.1 += m.marginal_amount;
        t.2 += 1;
    }
    let want: BTreeMap<String, (Decimal, Decimal)> = EXPECTED
        .iter()
        .map(|(k, q, a)| ((*k).to_owned(), (q.parse().unwrap(), a.parse().unwrap())))
        .collect();
    assert_eq!(
        totals.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "the rating segments"
    );
    for (key, (quantity, amount)) in &want {
        let (q, a, n) = totals[key];
        assert_eq!((q, a), (*quantity, *amount), "segment {key} ({n} events)");
    }
    // A volume tier change made some marginals negative; they still add up.
    assert!(rated.iter().any(|r| {
        let e = RatedEvent::from_json_slice(r.value.as_deref().unwrap()).unwrap();
        e.measures[0].marginal_amount < Decimal::ZERO
    }));

    // Parked: each once on usage.exceptions, with its reason.
    let exceptions = read_all(&w.topic("usage.exceptions"), true);
    assert_eq!(
        unique_ids(&exceptions, "usage.exceptions"),
        expected_ids(|i| customer_of(i) == "c-delta" || beta_after_end(i))
    );
    for x in &exceptions {
        let v = x.json();
        let want_reason = if v["subject"] == "c-delta" {
            "unknown_customer"
        } else {
            "no_active_subscription"
        };
        assert_eq!(x.header("meterline.reason").as_deref(), Some(want_reason));
        assert_eq!(x.header("meterline.stage").as_deref(), Some("enrich"));
        assert_eq!(
            x.header("meterline.original.topic"),
            Some(w.topic("usage.validated"))
        );
        assert!(x.header("meterline.message").is_some_and(|m| !m.is_empty()));
        assert_eq!(x.key.as_deref(), v["subject"].as_str().map(str::as_bytes));
    }
}

fn metric_of(port: u16, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    http_get(port, "/metrics").and_then(|(_, m)| metric(&m, name, labels))
}

#[test]
fn refdata_load_is_all_or_nothing_and_one_transaction() {
    let w = World::new("refdata", "");
    w.apply();
    let topic = w.topic("ref.customers");
    let bad = [
        customer_line("c-1"),                               // 1 ok
        "{\"id\": \"c-2\", \"name\": ".to_owned(),          // 2 syntax
        String::new(),                                      // 3 blank
        customer_line("c-3").replace("active", "asleep"),   // 4 schema
        customer_line("c-1"),                               // 5 duplicate key
        customer_line("c-6").replace("ERP-c-6", " padded"), // 6 validation
    ]
    .join("\n");
    let (ok, stdout, stderr) = refdata_load(&w, "customers", "bad.jsonl", &bad);
    assert!(!ok, "a bad file must fail: {stdout}");
    for (line, code) in [
        (2, "malformed_json"),
        (4, "schema_mismatch"),
        (5, "duplicate_key"),
        (6, "invalid_text"),
    ] {
        assert!(
            stderr.contains(&format!("line {line}: ")) && stderr.contains(&format!("[{code}]")),
            "line {line} ({code}) not reported: {stderr}"
        );
    }
    assert!(
        !stderr.contains("line 1:") && !stderr.contains("line 3:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("4 bad line(s)") && stderr.contains("nothing was published"),
        "{stderr}"
    );
    assert!(
        read_all(&topic, false).is_empty(),
        "nothing published, not even uncommitted"
    );

    let good = format!(
        "{}\n{{\"id\": \"c-9\", \"deleted\": true}}\n{}\n",
        customer_line("c-1"),
        customer_line("c-2")
    );
    let (ok, stdout, stderr) = refdata_load(&w, "customers", "good.jsonl", &good);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains(&format!(
            "published 3 customers record(s) (1 tombstone(s)) to {topic} in one transaction"
        )),
        "{stdout}"
    );
    let mut recs: Vec<(String, bool)> = read_all(&topic, true)
        .into_iter()
        .map(|r| {
            (
                String::from_utf8(r.key.unwrap()).unwrap(),
                r.value.is_some(),
            )
        })
        .collect();
    recs.sort();
    assert_eq!(
        recs,
        [
            ("c-1".to_owned(), true),
            ("c-2".to_owned(), true),
            ("c-9".to_owned(), false)
        ]
    );

    // Plans are keyed by id and version.
    load_ok(&w, "plans", "plans.jsonl", &plans_jsonl(), 3);
    let mut keys: Vec<String> = read_all(&w.topic("ref.plans"), true)
        .into_iter()
        .map(|r| String::from_utf8(r.key.unwrap()).unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["pro:1", "std:1", "std:2"]);

    let out = w.run(&["refdata", "load", "--kind", "prices", "--file", "x"]);
    assert!(!out.status.success());
}

#[test]
fn rated_totals_match_the_tiers_and_parked_events_heal_exactly_once() {
    let port = free_port();
    let w = scenario_world(
        "enrichrate",
        &format!("[http]\nlisten_addr = \"127.0.0.1:{port}\"\n"),
    );
    let mut stage = w.spawn_stage(&["validate", "dedupe", "enrich", "rate"], "a");
    let events: Vec<Record> = (0..EVENTS).map(event).collect();
    produce(&w.topic("usage.events"), &events);

    let rated_topic = w.topic("usage.rated");
    let exceptions_topic = w.topic("usage.exceptions");
    let parked = DELTA_EVENTS + BETA_AFTER_END;
    wait_until("every event rated or parked", || {
        read_all(&rated_topic, true).len() >= EVENTS - parked
            && read_all(&exceptions_topic, true).len() >= parked
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(read_all(&rated_topic, true).len(), EVENTS - parked);
    assert_eq!(read_all(&exceptions_topic, true).len(), parked);
    wait_until("the parked gauges", || {
        metric_of(
            port,
            "meterline_enrich_parked_events",
            &[("reason", "unknown_customer")],
        ) == Some(DELTA_EVENTS as f64)
            && metric_of(
                port,
                "meterline_enrich_parked_events",
                &[("reason", "no_active_subscription")],
            ) == Some(BETA_AFTER_END as f64)
    });
    let at_risk = metric_of(
        port,
        "meterline_enrich_revenue_at_risk",
        &[("currency", "USD")],
    )
    .unwrap();
    assert!((at_risk - DELTA_AT_RISK_USD).abs() < 1e-6, "{at_risk}");
    assert!(metric_of(
        port,
        "meterline_enrich_parked_oldest_age_seconds",
        &[("reason", "unknown_customer")]
    )
    .is_some());

    // The customer arrives: its parked events flow, once.
    load_delta(&w);
    check_final(&w);
    wait_until("the gauges to clear", || {
        metric_of(
            port,
            "meterline_enrich_parked_events",
            &[("reason", "unknown_customer")],
        ) == Some(0.0)
    });
    // A counter of attempts (an aborted transaction's re-emissions count
    // again when redone); exactly once is checked on the topics above.
    assert!(metric_of(port, "meterline_enrich_reemitted_total", &[])
        .is_some_and(|n| n >= DELTA_EVENTS as f64));
    assert_eq!(
        metric_of(
            port,
            "meterline_enrich_parked_events",
            &[("reason", "no_active_subscription")]
        ),
        Some(BETA_AFTER_END as f64)
    );
    let at_risk = metric_of(
        port,
        "meterline_enrich_revenue_at_risk",
        &[("currency", "USD")],
    )
    .unwrap();
    assert!(at_risk.abs() < 1e-9, "{at_risk}");
    assert!(terminate(&mut stage).success(), "SIGTERM exits 0");
}

#[test]
fn sigkill_three_times_changes_no_total() {
    const CHUNK: usize = 500;
    let w = scenario_world("enrichcrash", "");
    let topic = w.topic("usage.events");
    let mut stage = w.spawn_stage(&["validate", "dedupe", "enrich", "rate"], "a");
    let events: Vec<Record> = (0..EVENTS).map(event).collect();
    let mut kills = 0;
    for (n, chunk) in events.chunks(CHUNK).enumerate() {
        produce(&topic, chunk);
        std::thread::sleep(Duration::from_millis(700));
        if n == 2 || n == 6 {
            kill9(&mut stage);
            kills += 1;
            stage = w.spawn_stage(&["validate", "dedupe", "enrich", "rate"], "a");
        }
    }
    let exceptions_topic = w.topic("usage.exceptions");
    wait_until("every c-delta event parked", || {
        read_all(&exceptions_topic, true).len() >= DELTA_EVENTS + BETA_AFTER_END
    });
    // Kill while the parked events are being re-emitted.
    load_delta(&w);
    std::thread::sleep(Duration::from_millis(1_500));
    kill9(&mut stage);
    kills += 1;
    let mut stage = w.spawn_stage(&["validate", "dedupe", "enrich", "rate"], "a");
    check_final(&w);
    assert_eq!(kills, 3);
    assert!(terminate(&mut stage).success());
}

/// LATEST at full nanosecond precision: per customer two storage snapshots in
/// the same microsecond, 1 ns apart, the earlier one with the greater id (so
/// a tie on the microsecond would let it win). c-up sends them in time
/// order, c-down in reverse; both segments end at the later one's 120 GB:
/// 120 * 0.10 = 12.00 USD each, exactly.
#[test]
fn latest_one_nanosecond_apart_the_later_value_wins_in_either_order() {
    let w = World::new("latestns", VALIDATE_CONFIG);
    w.apply();
    let plan = format!(
        r#"{{"id":"store","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","charges":{{"storage_gb":{{"model":"per_unit","unit_price":"0.10"}}}},{GL_ACCOUNTS_JSON}}}"#
    );
    load_ok(&w, "plans", "plans.jsonl", &plan, 1);
    let customers = format!("{}\n{}\n", customer_line("c-up"), customer_line("c-down"));
    load_ok(&w, "customers", "customers.jsonl", &customers, 2);
    let from = "2026-09-01T00:00:00Z";
    let subs = [
        subscription_line("s-up", "c-up", "store", from, None, ""),
        subscription_line("s-down", "c-down", "store", from, None, ""),
    ]
    .join("\n");
    load_ok(&w, "subscriptions", "subscriptions.jsonl", &subs, 2);

    const EARLIER: &str = "2026-10-05T12:00:00.000000100Z";
    const LATER: &str = "2026-10-05T12:00:00.000000101Z";
    let snapshot = |customer: &str, id: &str, time: &str, bytes: u64| -> Record {
        let v = cloudevent(
            SOURCE,
            &format!("{customer}-{id}"),
            "storage.snapshot",
            customer,
            time,
            &format!(r#"{{"bytes":{bytes}}}"#),
        );
        (
            Some(customer.as_bytes().to_vec()),
            Some(v.into_bytes()),
            vec![],
        )
    };
    let early = |c: &str| snapshot(c, "z-early", EARLIER, 500_000_000_000);
    let late = |c: &str| snapshot(c, "a-late", LATER, 120_000_000_000);
    // Keyed by customer: each customer's two records keep this order.
    produce(
        &w.topic("usage.events"),
        &[early("c-up"), late("c-up"), late("c-down"), early("c-down")],
    );
    let mut stage = w.spawn_stage(&["validate", "dedupe", "enrich", "rate"], "a");
    let rated_topic = w.topic("usage.rated");
    wait_until("four snapshots rated", || {
        read_all(&rated_topic, true).len() >= 4
    });
    std::thread::sleep(Duration::from_secs(2));
    let rated = read_all(&rated_topic, true);
    assert_eq!(rated.len(), 4);
    let mut totals: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for r in &rated {
        let text = String::from_utf8(r.value.clone().unwrap()).unwrap();
        assert!(
            text.contains(EARLIER) || text.contains(LATER),
            "the event time keeps its nanoseconds end to end: {text}"
        );
        let e = RatedEvent::from_json_slice(r.value.as_deref().unwrap()).unwrap();
        let m = &e.measures[0];
        let t = totals
            .entry(e.enriched.subscription_id.clone())
            .or_default();
        t.0 += m.marginal_quantity;
        t.1 += m.marginal_amount;
    }
    let want = |q: &str, a: &str| (q.parse::<Decimal>().unwrap(), a.parse().unwrap());
    assert_eq!(
        totals,
        BTreeMap::from([
            ("s-down".to_owned(), want("120", "12.00")),
            ("s-up".to_owned(), want("120", "12.00")),
        ])
    );
    assert!(terminate(&mut stage).success());
}
