//! `meterline reconcile` against the real broker.
//!
//! The scenario: two customers, one UTC subscription each (anchor day 1),
//! September to November 2026; duplicates (dropped by dedupe), a malformed
//! record (dead-lettered), a late event beyond the grace period (an
//! adjustment of Oct 5), and an event of a customer that is not loaded yet
//! (parked, with revenue at risk for its subscription's legal entity, then
//! healed when the customer arrives).
//!
//! * After it settles, `meterline reconcile` exits 0 with every day and
//!   window OK, and `/metrics` shows exactly the counts the test knows.
//! * A fabricated posting produced into `finance.postings` makes it exit 1
//!   naming the window.
//! * Closed windows deleted from `usage.windows` (delete-records) before
//!   post reads them make it exit 1 naming the lost windows.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::*;
use meterline::contracts::{ClosedWindow, Posting, PostingType};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;

const SOURCE: &str = "rec";
const C1: &str = "c-1";
const C2: &str = "c-2";

const CONFIG: &str = "[validate]\nmax_event_age_days = 400\ndedupe_horizon_days = 401\n\
[aggregate]\ngrace_period_s = 60\nidle_advance_s = 10\n";

fn plans_jsonl() -> String {
    format!(
        r#"{{"id":"p","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","base_fee":"5.00","charges":{{"tokens":{{"model":"per_unit","unit_price":"0.001"}}}},{GL_ACCOUNTS_JSON}}}"#
    )
}

fn customer(id: &str) -> String {
    format!(
        r#"{{"id":"{id}","name":"Customer {id}","legal_entity":"le","erp_customer_id":"ERP-{id}","status":"active"}}"#
    )
}

fn subscriptions_jsonl() -> String {
    [("s-1", C1, "ml-us"), ("s-2", C2, "ml-eu")]
        .iter()
        .map(|(id, c, le)| {
            format!(
                r#"{{"id":"{id}","customer_id":"{c}","plan_id":"p","start":"2026-09-01T00:00:00Z","end":null,"billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"{le}","minimum_commitment":"20.00"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// (customer, id, time, tokens), in the order produced; a repeated id is a
/// duplicate.
const EVENTS: &[(&str, &str, &str, u32)] = &[
    (C1, "s1", "2026-09-10T10:00:00Z", 1005),
    (C1, "s2", "2026-09-11T10:00:00Z", 2005),
    (C1, "s2", "2026-09-11T10:00:00Z", 2005), // duplicate
    (C1, "s3", "2026-09-20T09:00:00Z", 3000),
    (C1, "o1", "2026-10-01T08:00:00Z", 2000), // closes September
    (C1, "o2", "2026-10-05T12:00:00Z", 3000),
    (C1, "o2", "2026-10-05T12:00:00Z", 3000), // duplicate
    (C1, "o4", "2026-10-20T10:00:00Z", 1500),
    (C1, "o5", "2026-10-05T13:00:00Z", 1000), // late: adjustment of Oct 5
    (C1, "o6", "2026-10-31T23:00:00Z", 2345),
    (C1, "n1", "2026-11-02T12:00:00Z", 100), // closes October
    (C2, "p1", "2026-10-10T10:00:00Z", 1500), // parked until c-2 arrives
];
const DUPLICATES: usize = 2;
/// The malformed record follows this index.
const MALFORMED_AFTER: usize = 3;
/// Revenue at risk of p1 while parked: 1500 x 0.001.
const P1_AT_RISK: f64 = 1.5;

fn records() -> Vec<Record> {
    let mut out = Vec::new();
    for (i, (c, id, time, tokens)) in EVENTS.iter().enumerate() {
        let value = cloudevent(
            SOURCE,
            id,
            "llm.tokens",
            c,
            time,
            &format!(r#"{{"tokens":{tokens},"model":"small"}}"#),
        );
        out.push((
            Some(c.as_bytes().to_vec()),
            Some(value.into_bytes()),
            vec![],
        ));
        if i == MALFORMED_AFTER {
            out.push((
                Some(C1.as_bytes().to_vec()),
                Some(br#"{"specversion":"1.0","id":"bad","#.to_vec()),
                vec![],
            ));
        }
    }
    out
}

fn has_control(ps: &[Posting], sub: &str, kind: &str, window: &str) -> bool {
    ps.iter().any(|p| {
        p.posting_type == PostingType::ControlTotal
            && p.subscription_id == sub
            && p.kind == kind
            && p.window.id == window
    })
}

/// Everything of the scenario is posted: October of both subscriptions
/// closed and Nov 2 closed by the wall clock.
fn settled(w: &World) -> bool {
    let ps = postings(w);
    has_control(&ps, "s-1", "period_close", "2026-10-01")
        && has_control(&ps, "s-1", "day", "2026-11-02")
        && has_control(&ps, "s-2", "period_close", "2026-10-01")
        && invoices_caught_up(w)
}

/// A world with the topics, reference data (customer c-2 missing) and
/// every event produced.
fn setup(name: &str, extra: &str) -> World {
    let w = World::new(name, &format!("{CONFIG}{extra}"));
    w.apply();
    w.load_refdata("plans", &plans_jsonl());
    w.load_refdata("customers", &customer(C1));
    w.load_refdata("subscriptions", &subscriptions_jsonl());
    produce(&w.topic("usage.events"), &records());
    w
}

fn reconcile(w: &World, args: &[&str]) -> (i32, String) {
    let mut a = vec!["reconcile"];
    a.extend_from_slice(args);
    let out = w.run(&a);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- meterline {}\n{stdout}{stderr}", a.join(" "));
    (out.status.code().unwrap_or(-1), stdout)
}

/// The books synced into the general ledger: its trial balance per legal
/// entity and currency equals the postings' debits and credits to the
/// minor unit, and reconcile's ledger checks hold.
fn assert_ledger_equals_the_books(w: &World) {
    let mut ledger = w.spawn_ledger_sync("a");
    let books = postings(w);
    let keys: BTreeSet<&str> = books.iter().map(|p| p.idempotency_key.as_str()).collect();
    wait_until("an ack per posting", || {
        let acked: BTreeSet<Vec<u8>> = read_all(&w.topic("finance.postings.acks"), true)
            .into_iter()
            .filter_map(|r| r.key)
            .collect();
        acked.len() == keys.len()
    });
    let mut want: BTreeMap<(String, String), (Decimal, Decimal)> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for p in books
        .iter()
        .filter(|p| seen.insert(p.idempotency_key.as_str()))
    {
        let (d, c) = p.totals();
        let e = want
            .entry((p.legal_entity.clone(), p.currency.clone()))
            .or_default();
        e.0 += d;
        e.1 += c;
    }
    want.retain(|_, (d, _)| !d.is_zero());
    let sql = format!(
        "SELECT legal_entity, currency, sum(debit), sum(credit) FROM {}.trial_balance GROUP BY 1, 2",
        w.ledger_schema()
    );
    let got: BTreeMap<(String, String), (Decimal, Decimal)> = postgres_client()
        .query(&sql, &[])
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect();
    assert_eq!(got, want, "the ledger's trial balance is the books'");
    // Each invoice in the ledger at its latest version, with its lines.
    let mut latest: BTreeMap<String, (u64, String, usize)> = BTreeMap::new();
    for r in read_all(&w.topic("finance.invoices"), true) {
        let v = r.json();
        let id = v["invoice_id"].as_str().unwrap().to_string();
        let version = v["version"].as_u64().unwrap();
        if latest.get(&id).is_none_or(|(old, ..)| *old < version) {
            let status = v["status"].as_str().unwrap().to_string();
            latest.insert(id, (version, status, v["lines"].as_array().unwrap().len()));
        }
    }
    assert!(!latest.is_empty(), "the scenario has invoices");
    let schema = w.ledger_schema();
    let sql = format!(
        "SELECT i.invoice_id, i.version, i.status, (SELECT count(*) FROM {schema}.invoice_lines l \
         WHERE l.invoice_id = i.invoice_id) FROM {schema}.invoices i"
    );
    let in_ledger = || -> BTreeMap<String, (u64, String, usize)> {
        postgres_client()
            .query(&sql, &[])
            .unwrap()
            .iter()
            .map(|r| {
                let (v, n): (i32, i64) = (r.get(1), r.get(3));
                (r.get(0), (v as u64, r.get(2), n as usize))
            })
            .collect()
    };
    wait_until("the invoices in the ledger", || in_ledger() == latest);
    assert_eq!(
        in_ledger(),
        latest,
        "the ledger's invoices are finance.invoices' latest"
    );
    let url = postgres_url();
    let (code, out) = reconcile(w, &["--verbose", "--ledger-url", &url]);
    assert_eq!(code, 0, "{out}");
    for check in [
        "ledger_once",
        "ledger_debits",
        "ledger_credits",
        "ledger_lines",
    ] {
        assert!(out.contains(check), "{check} missing from\n{out}");
    }
    assert!(terminate(&mut ledger).success());
}

fn metrics(port: u16) -> String {
    http_get(port, "/metrics").expect("GET /metrics").1
}

#[test]
fn reconcile_holds_after_the_scenario_metrics_match_and_a_fabricated_posting_fails() {
    let port = free_port();
    let w = setup(
        "rec",
        &format!("[http]\nlisten_addr = \"127.0.0.1:{port}\"\n"),
    );
    let mut stage = w.spawn_stage(&all_stages(), "a");

    // p1 is parked: revenue at risk for s-2's legal entity.
    wait_until("p1 parked with its revenue at risk", || {
        http_get(port, "/metrics").is_some_and(|(_, m)| {
            metric(
                &m,
                "meterline_enrich_revenue_at_risk",
                &[("currency", "USD"), ("legal_entity", "ml-eu")],
            )
            .is_some_and(|v| (v - P1_AT_RISK).abs() < 1e-9)
        })
    });
    let m = metrics(port);
    assert_eq!(
        metric(
            &m,
            "meterline_enrich_parked_events",
            &[("reason", "unknown_customer")]
        ),
        Some(1.0)
    );
    // The customer arrives: p1 is re-emitted and flows.
    w.load_refdata("customers", &format!("{}\n{}", customer(C1), customer(C2)));
    wait_until("both subscriptions' October posted", || settled(&w));
    std::thread::sleep(Duration::from_secs(3));

    // (a) Every window and day reconciles.
    let (code, out) = reconcile(&w, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("reconcile: OK"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    // The adjustment of Oct 5 counts toward Oct 5: 3.000 + 1.000 rated,
    // closed and posted (3.00 regular + 1.00 adjustment).
    let oct5 = out
        .lines()
        .find(|l| l.starts_with("day ") && l.contains("2026-10-05") && l.contains("s-1"))
        .unwrap_or_else(|| panic!("no Oct 5 row in\n{out}"));
    assert!(oct5.trim_end().ends_with("OK"), "{oct5}");
    assert!(oct5.split_whitespace().any(|c| c == "4"), "{oct5}");
    // Days: 2026-10-05 had 3 records in (one duplicate), 2 validated.
    let day = out
        .lines()
        .find(|l| l.starts_with("2026-10-05 "))
        .unwrap_or_else(|| panic!("no day row in\n{out}"));
    let cols: Vec<&str> = day.split_whitespace().collect();
    assert_eq!(&cols[1..5], &["3", "2", "0", "1"], "{day}");
    // One day of p1 parked then re-emitted.
    let p1_day = out.lines().find(|l| l.starts_with("2026-10-10 ")).unwrap();
    let cols: Vec<&str> = p1_day.split_whitespace().collect();
    assert_eq!(&cols[6..10], &["1", "0", "1", "1"], "{p1_day}");
    // The malformed record's day is that of its readable time: none here.
    assert!(out.lines().any(|l| l.starts_with("unknown ")), "{out}");

    assert_ledger_equals_the_books(&w);

    // --period and the metrics file.
    let prom = w.dir.path().join("reconcile.prom");
    let (code, out) = reconcile(&w, &["--period", "2026-10", "--textfile", &path_str(&prom)]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("2026-09-"), "{out}");
    let text = std::fs::read_to_string(&prom).unwrap();
    assert_eq!(
        metric(
            &text,
            "meterline_reconcile_success",
            &[("period", "2026-10")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "meterline_reconcile_checks", &[("result", "fail")]),
        Some(0.0)
    );

    // (c) /metrics equals what the test knows.
    let all = postings(&w);
    let m = metrics(port);
    let unique: std::collections::BTreeSet<&str> = EVENTS.iter().map(|e| e.1).collect();
    let n_in = (EVENTS.len() + 1) as f64;
    let topic = |t: &str| w.topic(t);
    /// (metric, labels, value).
    type Expected<'a> = (&'a str, Vec<(&'a str, String)>, f64);
    let checks: Vec<Expected> = vec![
        (
            "meterline_records_in_total",
            vec![("stage", "validate".into())],
            n_in,
        ),
        (
            "meterline_validate_duplicates_total",
            vec![],
            DUPLICATES as f64,
        ),
        (
            "meterline_dead_letters_total",
            vec![
                ("stage", "validate".into()),
                ("reason", "malformed_json".into()),
            ],
            1.0,
        ),
        (
            "meterline_records_out_total",
            vec![
                ("stage", "validate".into()),
                ("topic", topic("usage.identified")),
            ],
            (unique.len() + DUPLICATES) as f64,
        ),
        (
            "meterline_records_out_total",
            vec![
                ("stage", "dedupe".into()),
                ("topic", topic("usage.validated")),
            ],
            unique.len() as f64,
        ),
        (
            "meterline_records_out_total",
            vec![
                ("stage", "enrich".into()),
                ("topic", topic("usage.enriched")),
            ],
            unique.len() as f64,
        ),
        (
            "meterline_records_out_total",
            vec![
                ("stage", "enrich".into()),
                ("topic", topic("usage.exceptions")),
            ],
            1.0,
        ),
        (
            "meterline_enrich_parked_total",
            vec![("reason", "unknown_customer".into())],
            1.0,
        ),
        ("meterline_enrich_reemitted_total", vec![], 1.0),
        (
            "meterline_enrich_parked_events",
            vec![("reason", "unknown_customer".into())],
            0.0,
        ),
        (
            "meterline_enrich_revenue_at_risk",
            vec![("currency", "USD".into()), ("legal_entity", "ml-eu".into())],
            0.0,
        ),
        (
            "meterline_records_out_total",
            vec![("stage", "rate".into()), ("topic", topic("usage.rated"))],
            unique.len() as f64,
        ),
        (
            "meterline_records_in_total",
            vec![("stage", "rate".into())],
            unique.len() as f64,
        ),
        (
            "meterline_records_in_total",
            vec![("stage", "aggregate".into())],
            unique.len() as f64,
        ),
    ];
    let out_of = |stage: &str| {
        metric(
            &m,
            "meterline_records_out_total",
            &[("stage", stage), ("topic", &topic("finance.postings"))],
        )
        .unwrap_or_default()
    };
    assert_eq!(
        out_of("post") + out_of("invoice"),
        all.len() as f64,
        "post's and invoice's records out to finance.postings"
    );
    for (name, labels, want) in &checks {
        let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(metric(&m, name, &l), Some(*want), "{name} {labels:?}");
    }
    let mut by_kind: BTreeMap<(String, String), f64> = BTreeMap::new();
    for p in &all {
        *by_kind
            .entry((p.posting_type.as_str().to_string(), p.kind.clone()))
            .or_default() += 1.0;
    }
    for ((ty, kind), n) in &by_kind {
        let of = |stage: &str| {
            metric(
                &m,
                "meterline_postings_total",
                &[("stage", stage), ("type", ty), ("kind", kind)],
            )
            .unwrap_or_default()
        };
        assert_eq!(of("post") + of("invoice"), *n, "postings {ty} {kind}");
    }
    for stage in ["validate", "enrich", "rate", "aggregate", "post"] {
        let lag = metric(&m, "meterline_event_time_lag_seconds", &[("stage", stage)]);
        assert!(
            lag.is_some_and(|s| s > 0.0),
            "{stage} event-time lag {lag:?}"
        );
    }
    // Every subscription's customer and plan are known: no period waits.
    assert_eq!(
        metric(
            &m,
            "meterline_aggregate_periods_waiting_for_reference_data",
            &[]
        ),
        Some(0.0)
    );
    for name in [
        "meterline_aggregate_unbilled_amount",
        "meterline_aggregate_invoice_lines_pending",
    ] {
        assert!(
            metric(&m, name, &[("currency", "USD"), ("legal_entity", "ml-us")]).is_some(),
            "{name}"
        );
    }

    // (b) A fabricated accrual for a day without usage.
    let mut fake = all
        .iter()
        .find(|p| p.kind == "accrual" && p.window.id == "2026-10-05" && p.adjusts.is_none())
        .unwrap()
        .clone();
    fake.window.id = "2026-10-07".into();
    fake.accounting_date = "2026-10-07".into();
    fake.idempotency_key = "f".repeat(64);
    let seg = fake.segment_id.clone().unwrap();
    produce(
        &w.topic("finance.postings"),
        &[(
            Some(br#"["ml-us","s-1"]"#.to_vec()),
            Some(fake.to_json_bytes().unwrap()),
            vec![],
        )],
    );
    let (code, out) = reconcile(&w, &["--period", "2026-10"]);
    assert_eq!(code, 1, "{out}");
    let want = format!(
        "FAIL window day 2026-10-07 segment {}…: posted_without_window",
        &seg[..12]
    );
    assert!(out.contains(&want), "{want} in\n{out}");
    assert!(out.contains("reconcile: FAILED"), "{out}");
    let (code, _) = reconcile(&w, &["--period", "2026-09"]);
    assert_eq!(code, 0, "September is untouched");
    assert!(terminate(&mut stage).success(), "SIGTERM exits 0");
}

/// Windows lost from usage.windows before post read them: the rated amounts
/// of those windows are neither closed, nor open, nor posted.
#[test]
fn windows_deleted_before_post_reads_them_fail_naming_the_windows() {
    let w = setup("recdel", "");
    // p1's customer is loaded at once here.
    w.load_refdata("customers", &format!("{}\n{}", customer(C1), customer(C2)));
    let mut upstream = w.spawn_stage(&["validate", "dedupe", "enrich", "rate", "aggregate"], "a");
    let windows_topic = w.topic("usage.windows");
    let closed = |w: &World| -> Vec<(Rec, ClosedWindow)> {
        read_all(&w.topic("usage.windows"), true)
            .into_iter()
            .map(|r| {
                let cw = ClosedWindow::from_json_slice(r.value.as_deref().unwrap()).unwrap();
                (r, cw)
            })
            .collect()
    };
    wait_until("s-1's October closed", || {
        closed(&w).iter().any(|(_, cw)| {
            cw.subscription_id == "s-1"
                && cw.kind.as_str() == "period_close"
                && cw.window.id == "2026-10-01"
        })
    });
    // Delete s-1's windows up to and including its regular Oct 5 day window.
    let all = closed(&w);
    let (rec, oct5) = all
        .iter()
        .find(|(_, cw)| {
            cw.subscription_id == "s-1"
                && cw.kind.as_str() == "day"
                && cw.window.id == "2026-10-05"
                && cw.adjusts.is_none()
        })
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = client_config().create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(
        &windows_topic,
        rec.partition,
        Offset::Offset(rec.offset + 1),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.delete_records(&tpl, &AdminOptions::new()))
        .unwrap();
    for e in res.elements() {
        assert!(e.error().is_ok(), "delete-records: {:?}", e.error());
    }
    let lost: Vec<&ClosedWindow> = all
        .iter()
        .filter(|(r, _)| r.partition == rec.partition && r.offset <= rec.offset)
        .map(|(_, cw)| cw)
        .collect();
    assert!(lost.iter().any(|cw| cw.window.id == "2026-09-10"));

    // Now post reads what is left.
    let mut post = w.spawn_stage(&["post", "invoice"], "b");
    wait_until("October posted", || {
        has_control(&postings(&w), "s-1", "period_close", "2026-10-01") && invoices_caught_up(&w)
    });
    std::thread::sleep(Duration::from_secs(3));
    let (code, out) = reconcile(&w, &[]);
    assert_eq!(code, 1, "{out}");
    let seg = &oct5.segment.as_ref().unwrap().segment_id;
    let want = format!(
        "FAIL window day 2026-10-05 segment {}…: rated_vs_windows: rated 4 != closed 1 + open 0",
        &seg[..12]
    );
    assert!(out.contains(&want), "{want} in\n{out}");
    // Every lost window with usage is named.
    for cw in lost
        .iter()
        .filter(|cw| cw.adjusts.is_none() && cw.event_count > 0)
    {
        let scope = match &cw.segment {
            Some(s) => format!("segment {}…", &s.segment_id[..12]),
            None => format!("subscription {}", cw.subscription_id),
        };
        let name = format!("window {} {} {scope}", cw.kind.as_str(), cw.window.id);
        assert!(
            out.lines().any(|l| l.starts_with(&format!("FAIL {name}"))),
            "{name} in\n{out}"
        );
    }
    assert!(
        out.contains("usage.windows: its oldest records were deleted"),
        "{out}"
    );
    // s-2 lives on its own: its windows reconcile unless they shared the
    // partition.
    assert!(terminate(&mut post).success());
    assert!(terminate(&mut upstream).success());
}

/// A record on finance.postings that is not a posting (here a validated
/// event, what `replay --from usage.validated --to finance.postings` used to
/// write) is not skipped: reconcile fails naming it (`unreadable_records`,
/// partition and offset) and `meterline postings` reports it.
#[test]
fn a_foreign_record_in_the_books_fails_reconcile_and_is_reported_by_postings() {
    let w = World::new("recforeign", CONFIG);
    w.apply();
    let (code, out) = reconcile(&w, &[]);
    assert_eq!(code, 0, "an empty pipeline reconciles: {out}");
    assert!(out.contains(", 0 failed;"), "{out}");

    let foreign = cloudevent(
        SOURCE,
        "x1",
        "llm.tokens",
        C1,
        "2026-10-05T12:00:00Z",
        r#"{"tokens":5}"#,
    );
    produce(
        &w.topic("finance.postings"),
        &[(
            Some(C1.as_bytes().to_vec()),
            Some(foreign.into_bytes()),
            vec![],
        )],
    );
    let rec = &read_all(&w.topic("finance.postings"), true)[0];

    let (code, out) = reconcile(&w, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL topic finance.postings: unreadable_records: 1 record(s) of finance.postings \
             are not postings and were left out: partition {} offset {} (",
            rec.partition, rec.offset
        )),
        "{out}"
    );
    assert!(out.contains("reconcile: FAILED"), "{out}");
    assert!(out.contains(", 1 failed;"), "{out}");
    // Whatever the period: the record has none.
    let (code, _) = reconcile(&w, &["--period", "2026-10"]);
    assert_eq!(code, 1);

    let o = w.run(&["postings"]);
    assert!(o.status.success());
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        table.contains(
            "0 posting(s); 0 unbalanced journal entries; 1 record(s) that are not postings\n"
        ),
        "{table}"
    );
    assert!(
        table.contains(&format!(
            "WARNING: 1 record(s) of finance.postings are not postings and were left out: \
             partition {} offset {} (",
            rec.partition, rec.offset
        )),
        "{table}"
    );
}
