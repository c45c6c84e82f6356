//! The finance operations console (`/console/` of `meterline api`) driven
//! by a real browser: Playwright (PyPI) with headless Chromium (Debian),
//! `tests/console_browser.py`, against the whole pipeline on the real broker
//! and ledger-sync writing PostgreSQL.
//!
//! September 2026, plan `p` (tokens 0.01 each, base fee 10.00), invoices
//! held above 500.00 USD, alice's command key:
//!
//! * c-big uses 60,000 tokens (600.00 + 10.00): its invoice is held
//!   (`total_above`); an approver key (actor alice) approves it in the
//!   browser: the page shows it posted, and its invoice postings are on
//!   `finance.postings`, signed by alice with the reason typed in the page;
//! * c-late's event `late1` of Sep 10 arrives after Sep 10 closed: the
//!   trace page shows the adjustment of Sep 10 accrued on Sep 12, the
//!   invoice it ended on and the ledger's acknowledgement;
//! * on c-late's posted 85.00 the page credits 10% and opens a dispute of
//!   5.00 that is won: open 76.50, credited 8.50, exactly;
//! * a read key sees no action button, and the command it forges is 403;
//! * an unknown customer's event parks, a negative value is dead-lettered:
//!   the exceptions page lists both and an admin key's dry run counts 1;
//! * a second API over 10,000 invoice documents: the invoices page shows 50
//!   of "10000 invoice(s) match" and pages on (the load time is printed).
//!
//! Screenshots of every page are saved under `$METERLINE_CONSOLE_SHOTS`
//! (default: `target/console-screenshots` of the build's target dir).

mod common;

use std::path::PathBuf;

use common::*;
use meterline::api::auth::token_hash_hex;
use meterline::contracts::{Invoice, InvoiceStatus, PostingType};

const SOURCE: &str = "con";
const ALICE_KEY_HEX: &str = "0a0b0c0d";
const READ_TOKEN: &str = "mtl_console_reader";
const APPROVE_TOKEN: &str = "mtl_console_approver";
const ADMIN_TOKEN: &str = "mtl_console_admin";
const BULK_INVOICES: usize = 10_000;
const HELD: &str = "s-c-big@2026-09-01";
const LATE_INVOICE: &str = "s-c-late@2026-09-01";

const PLAN: &str = r#"{"id":"p","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","base_fee":"10.00","charges":{"tokens":{"model":"per_unit","unit_price":"0.01"}},"gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200","credits":"4900","disputed_receivable":"1250"}}"#;

fn keys() -> String {
    format!(
        "[[api.keys]]\nname = \"reader\"\nsha256_hex = \"{}\"\nscopes = [\"read\"]\n\
         [[api.keys]]\nname = \"approver\"\nsha256_hex = \"{}\"\nscopes = [\"read\", \"approve\"]\nactor = \"alice\"\n\
         [[api.keys]]\nname = \"ops-admin\"\nsha256_hex = \"{}\"\nscopes = [\"admin\"]\nactor = \"alice\"\n",
        token_hash_hex(READ_TOKEN),
        token_hash_hex(APPROVE_TOKEN),
        token_hash_hex(ADMIN_TOKEN),
    )
}

/// The watermark moves with events only (no idle advance to today).
fn config(api_port: u16, stage_port: u16) -> String {
    format!(
        "[validate]\nmax_event_age_days = 400\ndedupe_horizon_days = 401\n\
         [aggregate]\ngrace_period_s = 60\nidle_advance_s = 86400\n\
         [invoice]\nhold_total_above = {{ USD = \"500.00\" }}\nactor_keys_hex = {{ alice = \"{ALICE_KEY_HEX}\" }}\n\
         [ledger]\nurl = \"{pg}\"\n\
         [http]\nlisten_addr = \"127.0.0.1:{stage_port}\"\n\
         [lineage]\nendpoints = [\"http://127.0.0.1:{stage_port}\"]\n\
         [api]\nlisten_addr = \"127.0.0.1:{api_port}\"\nreconcile_report_file = \"reconcile.json\"\n{keys}",
        pg = postgres_url(),
        keys = keys(),
    )
}

fn event(id: &str, customer: &str, time: &str, tokens: i64) -> Record {
    let v = cloudevent(
        SOURCE,
        id,
        "llm.tokens",
        customer,
        time,
        &format!(r#"{{"tokens":{tokens},"model":"m"}}"#),
    );
    (
        Some(customer.as_bytes().to_vec()),
        Some(v.into_bytes()),
        vec![],
    )
}

fn refdata(w: &World) {
    w.load_refdata("plans", PLAN);
    let customers: Vec<String> = ["c-big", "c-late"]
        .iter()
        .map(|c| format!(r#"{{"id":"{c}","name":"{c} Inc","legal_entity":"le","erp_customer_id":"E-{c}","status":"active"}}"#))
        .collect();
    w.load_refdata("customers", &customers.join("\n"));
    let subs: Vec<String> = ["c-big", "c-late"]
        .iter()
        .map(|c| format!(r#"{{"id":"s-{c}","customer_id":"{c}","plan_id":"p","start":"2026-09-01T00:00:00Z","end":null,"billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us","minimum_commitment":null}}"#))
        .collect();
    w.load_refdata("subscriptions", &subs.join("\n"));
}

/// In event-time order per customer; both customers' October events move
/// their partitions' watermarks past September, which closes it.
fn events() -> Vec<Record> {
    let bad = cloudevent(
        SOURCE,
        "bad1",
        "llm.tokens",
        "c-late",
        "2026-09-10T10:30:00Z",
        r#"{"tokens":-5,"model":"m"}"#,
    );
    vec![
        event("a1", "c-late", "2026-09-10T10:00:00Z", 1000),
        (Some(b"c-late".to_vec()), Some(bad.into_bytes()), vec![]),
        event("u1", "c-unknown", "2026-09-10T11:00:00Z", 700),
        event("b1", "c-big", "2026-09-11T10:00:00Z", 60000),
        event("a2", "c-late", "2026-09-12T10:00:00Z", 2000),
        // Beyond the grace: Sep 10 closed at watermark Sep 12 09:59.
        event("late1", "c-late", "2026-09-10T12:00:00Z", 4000),
        event("a3", "c-late", "2026-09-14T10:00:00Z", 500),
        event("b2", "c-big", "2026-10-03T10:00:00Z", 100),
        event("a4", "c-late", "2026-10-03T10:00:00Z", 100),
    ]
}

fn invoices(w: &World) -> std::collections::BTreeMap<String, Invoice> {
    let mut out = std::collections::BTreeMap::new();
    for r in read_all(&w.topic("finance.invoices"), true) {
        let inv = Invoice::from_json_slice(r.value.as_deref().unwrap()).unwrap();
        if out
            .get(&inv.invoice_id)
            .is_none_or(|i: &Invoice| i.version < inv.version)
        {
            out.insert(inv.invoice_id.clone(), inv);
        }
    }
    out
}

/// `meterline api`, once it has read every followed topic.
fn start_api(w: &World, port: u16) -> Stage {
    let api = w.spawn_api(port);
    wait_until("the API is ready", || {
        http_get(port, "/readyz").is_some_and(|(s, _)| s == 200)
    });
    api
}

/// 10,000 invoice documents of 2,000 customers, every fifth held.
fn bulk_invoices(w: &World) {
    let records: Vec<Record> = (0..BULK_INVOICES)
        .map(|n| {
            let status = if n % 5 == 0 { "pending_approval" } else { "posted" };
            let v = serde_json::json!({
                "invoice_id": format!("s-bulk-{n:05}@2026-08-01"), "version": 1,
                "customer": {"id": format!("c-bulk-{}", n % 2000), "name": "Bulk", "legal_entity": "le", "erp_customer_id": "E"},
                "subscription_id": format!("s-bulk-{n:05}"), "plan_id": "p", "plan_version": 1,
                "legal_entity": "ml-us", "currency": "USD", "time_zone": "UTC",
                "service_interval": {"id": "2026-08-01", "start": "2026-08-01T00:00:00Z", "end": "2026-09-01T00:00:00Z"},
                "status": status,
                "holds": if status == "pending_approval" { serde_json::json!([{"rule": "total_above", "detail": "above 500.00 USD"}]) } else { serde_json::json!([]) },
                "lines": [], "totals": {"subtotal": format!("{n}.10"), "tax": "0.00", "service_credits": "0.00", "total": format!("{n}.10"), "credited": "0.00", "disputed": "0.00", "open": format!("{n}.10")},
                "credit_memos": [], "disputes": [], "postings": [], "history": []
            });
            let id = format!("s-bulk-{n:05}@2026-08-01");
            (Some(id.into_bytes()), Some(v.to_string().into_bytes()), vec![])
        })
        .collect();
    produce(&w.topic("finance.invoices"), &records);
}

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("METERLINE_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("METERLINE_CACHE").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/meterline"),
        PathBuf::from,
    );
    cache.join("venv/bin/python")
}

fn shots_dir() -> PathBuf {
    std::env::var("METERLINE_CONSOLE_SHOTS").map_or_else(
        |_| {
            let target = std::env::var("CARGO_TARGET_DIR")
                .map_or_else(|_| repo().join("target"), PathBuf::from);
            target.join("console-screenshots")
        },
        PathBuf::from,
    )
}

#[test]
fn operators_approve_trace_and_work_exceptions_in_the_browser() {
    let (api_port, stage_port, bulk_port) = (free_port(), free_port(), free_port());
    let w = World::new("console", &config(api_port, stage_port));
    w.apply();
    refdata(&w);
    produce(&w.topic("usage.events"), &events());
    let _stages = w.spawn_stage(&all_stages(), "a");
    let _ledger = w.spawn_ledger_sync("a");
    wait_until("September invoiced: c-big held, c-late posted", || {
        let all = invoices(&w);
        all.get(HELD)
            .is_some_and(|i| i.status == InvoiceStatus::PendingApproval)
            && all
                .get(LATE_INVOICE)
                .is_some_and(|i| i.status == InvoiceStatus::Posted)
    });
    let held = invoices(&w).remove(HELD).unwrap();
    assert_eq!(held.totals.total.to_string(), "610.00");
    assert!(held.holds.iter().any(|h| h.rule == "total_above"));
    // Once ledger-sync has caught up every check holds: the page shows that run.
    let report_file = w.dir.path().join("reconcile.json");
    wait_until("reconcile (with the ledger) passes", || {
        w.run(&["reconcile", "--report-file", &path_str(&report_file)])
            .status
            .success()
    });
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["ledger_checked"], true);
    let _api = start_api(&w, api_port);

    let bulk = World::new(
        "consolebulk",
        &format!("[api]\nlisten_addr = \"127.0.0.1:{bulk_port}\"\n{}", keys()),
    );
    bulk.apply();
    bulk_invoices(&bulk);
    let _bulk_api = start_api(&bulk, bulk_port);

    let shots = shots_dir();
    std::fs::create_dir_all(&shots).unwrap();
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/console_browser.py"))
        .args(["--url", &format!("http://127.0.0.1:{api_port}")])
        .args(["--bulk-url", &format!("http://127.0.0.1:{bulk_port}")])
        .args([
            "--reader-key",
            READ_TOKEN,
            "--approver-key",
            APPROVE_TOKEN,
            "--admin-key",
            ADMIN_TOKEN,
        ])
        .args(["--held", HELD, "--late-invoice", LATE_INVOICE])
        .args(["--late-source", SOURCE, "--late-id", "late1"])
        .args(["--usage-subscription", "s-c-late"])
        .args(["--bulk-invoices", &BULK_INVOICES.to_string()])
        .arg("--shots")
        .arg(&shots)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (run deploy/local/deps)", python().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "console_browser.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The approval the page sent: by alice, with the page's reason, posted.
    let approved = invoices(&w).remove(HELD).unwrap();
    assert_eq!(approved.status, InvoiceStatus::Posted);
    let change = approved
        .history
        .iter()
        .find(|c| c.action == "approve")
        .expect("an approve in the history");
    assert_eq!(
        (change.actor.as_str(), change.reason.as_str()),
        ("alice", "checked in the console")
    );
    let posted: Vec<_> = postings(&w)
        .into_iter()
        .filter(|p| approved.postings.contains(&p.idempotency_key))
        .collect();
    assert!(
        posted
            .iter()
            .any(|p| p.posting_type == PostingType::InvoiceLine),
        "the approval's invoice lines are on finance.postings"
    );
    // The credit memo and the dispute the page sent on c-late's 85.00.
    let late = invoices(&w).remove(LATE_INVOICE).unwrap();
    let t = &late.totals;
    let cents = |c: i64| rust_decimal::Decimal::new(c, 2);
    assert_eq!(
        (t.total, t.credited, t.disputed, t.open),
        (cents(8500), cents(850), cents(0), cents(7650)),
        "10% credited, 5.00 disputed and won"
    );
    assert_eq!(late.disputes.len(), 1);
    assert_eq!(late.disputes[0].status, "won");
    for shot in [
        "invoices",
        "invoice-reader",
        "invoice-approved",
        "exceptions",
        "usage",
        "trace",
        "trace-posting",
        "reconcile",
        "invoices-10000",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).exists(),
            "screenshot {shot}.png"
        );
    }
}
