//! `meterline ledger-sync` against the real broker and a real PostgreSQL.
//!
//! * Postings reach the ledger once each (a resent one is not doubled), an
//!   unbalanced one and a record that is not a posting are refused, a
//!   posting dated in a closed period is refused, dead-lettered and acked
//!   `rejected`; after the period is reopened `meterline replay` brings it
//!   in once. The trial balance per legal entity and currency is exact.
//! * SIGKILL of ledger-sync 5 times while 50,000 postings flow, and the
//!   database restarted once mid-stream: each posting in the ledger exactly
//!   once, every ack present and `accepted` with the ledger's row id.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rust_decimal::Decimal;

/// Bound of a wait for the ledger to hold what the test sent.
const LEDGER_WAIT_S: u64 = 600;
const KILLS: usize = 5;
const FLOW_POSTINGS: usize = 50_000;
const FLOW_CHUNK_POSTINGS: usize = 2_500;

fn config() -> String {
    format!(
        "[ledger]\nurl = \"{}\"\nbatch_max_records = 500\nretry_initial_backoff_ms = 100\nretry_max_backoff_ms = 1000\n",
        postgres_url()
    )
}

/// A balanced two-line accrual as an external producer would write it.
fn posting(key: &str, entity: &str, currency: &str, date: &str, amount: &str) -> Vec<u8> {
    serde_json::json!({
        "posting_type": "journal_entry", "kind": "accrual", "idempotency_key": key,
        "business_key": ["journal_entry", "accrual", entity, "sub-1", key], "key_version": 1,
        "legal_entity": entity, "customer_id": "c-1", "erp_customer_id": "E-1",
        "subscription_id": "sub-1", "plan_id": "p", "plan_version": 1, "currency": currency,
        "accounting_date": date,
        "billing_period": {"id": "2026-01-01", "start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z"},
        "window_kind": "day",
        "window": {"id": date, "start": format!("{date}T00:00:00Z"), "end": format!("{date}T23:59:59Z")},
        "adjusts": null, "segment_id": "seg", "segment_key": "[]", "meter": "tokens",
        "lines": [{"account": "1210", "side": "debit", "amount": amount},
                  {"account": "4010", "side": "credit", "amount": amount}],
        "invoice_line": null, "control_total": null
    })
    .to_string()
    .into_bytes()
}

fn record(key: &str, value: Vec<u8>) -> Record {
    (Some(key.as_bytes().to_vec()), Some(value), vec![])
}

/// The postings of the first test: (key, entity, currency, date, amount).
fn scenario() -> Vec<(String, &'static str, &'static str, String, String)> {
    (0..200)
        .map(|i| {
            let (entity, currency) = if i % 2 == 0 {
                ("ml-us", "USD")
            } else {
                ("ml-eu", "EUR")
            };
            let date = if i == 7 {
                "2026-01-15".to_string()
            } else {
                format!("2026-02-{:02}", 1 + i % 28)
            };
            (
                format!("k{i:04}"),
                entity,
                currency,
                date,
                format!("{}.{:02}", i + 1, i % 100),
            )
        })
        .collect()
}

fn count(schema: &str, sql: &str) -> i64 {
    postgres_client()
        .query_one(&sql.replace("{s}", schema), &[])
        .unwrap()
        .get(0)
}

/// Latest ack per key.
fn acks(w: &World) -> BTreeMap<String, serde_json::Value> {
    read_all(&w.topic("finance.postings.acks"), true)
        .into_iter()
        .map(|r| (String::from_utf8(r.key.clone().unwrap()).unwrap(), r.json()))
        .collect()
}

fn wait_long(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(LEDGER_WAIT_S),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn wait_for_schema(schema: &str) {
    wait_long("the ledger schema", || {
        postgres_client()
            .query_one(
                "SELECT to_regclass($1)::text",
                &[&format!("{schema}.closed_periods")],
            )
            .map(|r| r.get::<_, Option<String>>(0).is_some())
            .unwrap_or(false)
    });
}

/// Debits and credits per (entity, currency) in the ledger.
fn trial_balance(schema: &str) -> BTreeMap<(String, String), (Decimal, Decimal)> {
    postgres_client()
        .query(
            &format!("SELECT legal_entity, currency, sum(debit), sum(credit) FROM {schema}.trial_balance GROUP BY 1, 2"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| ((r.get(0), r.get(1)), (r.get(2), r.get(3))))
        .collect()
}

#[test]
fn every_posting_reaches_the_ledger_once_and_a_closed_period_is_refused_then_replayed() {
    let w = World::new("ledger", &config());
    w.apply();
    let schema = w.ledger_schema();
    let mut sync = w.spawn_ledger_sync("a");
    wait_for_schema(&schema);
    postgres_client()
        .execute(
            &format!("INSERT INTO {schema}.closed_periods (legal_entity, from_date, to_date) VALUES ('ml-eu', '2026-01-01', '2026-01-31')"),
            &[],
        )
        .unwrap();
    let postings = scenario();
    let mut records: Vec<Record> = postings
        .iter()
        .map(|(k, e, c, d, a)| record(k, posting(k, e, c, d, a)))
        .collect();
    // Sent again (same bytes): stored once.
    records.push(records[3].clone());
    // Unbalanced: refused.
    let mut bad: serde_json::Value =
        serde_json::from_slice(&posting("kbad", "ml-us", "USD", "2026-02-02", "1.00")).unwrap();
    bad["lines"][1]["amount"] = "0.99".into();
    records.push(record("kbad", bad.to_string().into_bytes()));
    // Valid JSON the database refuses (PostgreSQL text holds no NUL).
    let mut nul: serde_json::Value =
        serde_json::from_slice(&posting("knul", "ml-us", "USD", "2026-02-03", "2.00")).unwrap();
    nul["customer_id"] = "c\u{0}x".into();
    records.push(record("knul", nul.to_string().into_bytes()));
    // Not a posting at all.
    records.push(record("junk", b"{not json".to_vec()));
    produce(&w.topic("finance.postings"), &records);

    wait_long("an ack per posting", || {
        acks(&w).len() == postings.len() + 2
    });
    let a = acks(&w);
    assert_eq!(a["k0007"]["status"], "rejected");
    assert_eq!(a["k0007"]["reason"], "closed_period");
    assert_eq!(a["kbad"]["reason"], "unbalanced_posting");
    assert_eq!(a["knul"]["status"], "rejected");
    assert_eq!(a["knul"]["reason"], "constraint_violation", "{}", a["knul"]);
    let accepted = a.values().filter(|v| v["status"] == "accepted").count();
    assert_eq!(accepted, postings.len() - 1);
    assert_eq!(
        count(&schema, "SELECT count(*) FROM {s}.postings"),
        postings.len() as i64 - 1
    );
    // Each accepted ack names the row that holds its posting.
    let mut db = postgres_client();
    for row in db
        .query(
            &format!("SELECT idempotency_key, posting_id FROM {schema}.postings"),
            &[],
        )
        .unwrap()
    {
        let (key, id): (String, i64) = (row.get(0), row.get(1));
        assert_eq!(a[&key]["ledger_row_id"], id, "{key}");
    }
    let dlq = read_all(&w.topic("meterline.dlq.ledger"), true);
    let reasons: BTreeSet<String> = dlq
        .iter()
        .map(|r| r.header("meterline.reason").unwrap())
        .collect();
    assert_eq!(dlq.len(), 4, "{reasons:?}");
    assert_eq!(
        reasons,
        [
            "closed_period",
            "constraint_violation",
            "invalid_posting",
            "unbalanced_posting"
        ]
        .map(String::from)
        .into()
    );
    assert_trial_balance(&schema, &postings, Some("k0007"));

    // Reopen the period; replay brings k0007 in once.
    db.execute(&format!("DELETE FROM {schema}.closed_periods"), &[])
        .unwrap();
    let out = replay_closed_period(&w);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_long("k0007 accepted", || {
        acks(&w)["k0007"]["status"] == "accepted"
    });
    assert_eq!(
        count(&schema, "SELECT count(*) FROM {s}.postings"),
        postings.len() as i64
    );
    assert_eq!(
        count(
            &schema,
            "SELECT count(*) FROM {s}.posting_status WHERE status = 'rejected'"
        ),
        2,
        "only kbad and knul stay refused"
    );
    assert_trial_balance(&schema, &postings, None);
    // A second replay finds nothing new to send.
    let out = replay_closed_period(&w);
    assert!(out.status.success());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(&schema, "SELECT count(*) FROM {s}.postings"),
        postings.len() as i64
    );
    assert!(terminate(&mut sync).success());
}

/// The ledger's debits = credits = the postings' amounts per entity and
/// currency, to the cent (`except`: a posting not in the ledger).
fn assert_trial_balance(
    schema: &str,
    postings: &[(String, &str, &str, String, String)],
    except: Option<&str>,
) {
    let mut want: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for (k, e, c, _, a) in postings {
        if Some(k.as_str()) != except {
            *want.entry((e.to_string(), c.to_string())).or_default() +=
                a.parse::<Decimal>().unwrap();
        }
    }
    let got = trial_balance(schema);
    assert_eq!(got.len(), want.len());
    for (k, amount) in want {
        assert_eq!(got[&k], (amount, amount), "{k:?}");
    }
}

fn replay_closed_period(w: &World) -> std::process::Output {
    w.run(&[
        "replay",
        "--from",
        "meterline.dlq.ledger",
        "--reason",
        "closed_period",
    ])
}

fn restart_postgres() {
    let script = repo().join("deploy/local/postgres");
    let out = Command::new(script).arg("restart").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ledger_rows(schema: &str) -> i64 {
    postgres::Client::connect(&postgres_url(), postgres::NoTls)
        .and_then(|mut c| c.query_one(&format!("SELECT count(*) FROM {schema}.postings"), &[]))
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

#[test]
fn sigkill_five_times_and_a_database_restart_lose_and_double_no_posting() {
    let w = World::new("ledkill", &config());
    w.apply();
    let schema = w.ledger_schema();
    let topic = w.topic("finance.postings");
    let amount = |i: usize| format!("{}.{:02}", 1 + i % 1000, i % 97);
    let producer = std::thread::spawn(move || {
        for chunk in 0..FLOW_POSTINGS / FLOW_CHUNK_POSTINGS {
            let records: Vec<Record> = (chunk * FLOW_CHUNK_POSTINGS
                ..(chunk + 1) * FLOW_CHUNK_POSTINGS)
                .map(|i| {
                    let key = format!("f{i:06}");
                    record(
                        &key,
                        posting(&key, "ml-us", "USD", "2026-02-10", &amount(i)),
                    )
                })
                .collect();
            produce(&topic, &records);
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let mut sync = w.spawn_ledger_sync("a");
    wait_for_schema(&schema);
    let mut last = 0;
    for kill in 0..KILLS {
        wait_long("progress before a kill", || {
            ledger_rows(&schema) >= last + 2_000
        });
        if kill == 2 {
            // The database goes away under a running ledger-sync, which
            // must reconnect and go on by itself.
            restart_postgres();
            last = ledger_rows(&schema);
            wait_long("progress after the restart", || {
                ledger_rows(&schema) >= last + 2_000
            });
        }
        kill9(&mut sync);
        last = ledger_rows(&schema);
        sync = w.spawn_ledger_sync("a");
    }
    producer.join().unwrap();
    wait_long("every posting in the ledger", || {
        ledger_rows(&schema) == FLOW_POSTINGS as i64
    });
    assert!(terminate(&mut sync).success());
    let want: Decimal = (0..FLOW_POSTINGS)
        .map(|i| amount(i).parse::<Decimal>().unwrap())
        .sum();
    assert_eq!(
        count(
            &schema,
            "SELECT count(DISTINCT idempotency_key) FROM {s}.postings"
        ),
        FLOW_POSTINGS as i64
    );
    assert_eq!(
        trial_balance(&schema)[&("ml-us".to_string(), "USD".to_string())],
        (want, want)
    );
    let a = acks(&w);
    assert_eq!(a.len(), FLOW_POSTINGS, "an ack per posting");
    assert!(a.values().all(|v| v["status"] == "accepted"));
    let rows: BTreeSet<i64> = a
        .values()
        .map(|v| v["ledger_row_id"].as_i64().unwrap())
        .collect();
    assert_eq!(rows.len(), FLOW_POSTINGS, "each ack names its own row");
    assert_eq!(
        count(&schema, "SELECT count(*) FROM {s}.outbox"),
        0,
        "the outbox is sent"
    );
}
