//! The percentage and prorated models end to end (issue 17), against the
//! real broker, over two billing periods (September and October 2026):
//!
//! * `s-pay` (customer `c-pay`): 1.3% + 0.30 per transaction, at least
//!   0.50 and at most 5.00, the first 2 transactions free, on the `tokens`
//!   SUM meter (here: transaction amounts). The events are produced in
//!   reverse time order, so the late ones take the free slots: the books
//!   are still the fees in event order. September: 10, 20 free; 30 -> 0.69;
//!   5 -> 0.50 (min); 1000 -> 5.00 (max); 100 -> 1.60: 7.79, until the
//!   1000 transaction is retracted (refunded): its 5.00 back, 2.79. A
//!   retraction of the free 10 is refused (`retraction_unsupported`: its
//!   slot would pass to the 30, already charged). October: 40, 50 free;
//!   200 -> 2.90.
//! * `s-seat` (customer `c-seat`): 30.00 per seat, prorated, on the
//!   `peak_seats` MAX meter. September (30 days): 4 seats from the 1st
//!   (120.00), 6 from the 16th (+60.00 for 15 of 30 days = 30.00): 150.00,
//!   until the 6 seats are retracted: 120.00.
//!   October (31 days): 6 seats from the 1st (180.00), 9 from the 21st
//!   (+90.00 for 11 of 31 days = 31.935483870968): 211.94 at posting.
//!
//! Checked: each invoice line to the cent, the breakdown on the invoice
//! line, every journal balanced, and the accruals plus rounding of a period
//! equal to its invoice line (unbilled receivable clears to zero).

mod common;

use std::collections::BTreeMap;

use common::*;
use meterline::contracts::PostingType;
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

/// A 30-day grace: the events, newest first, never close a billing period
/// before its late events arrive (the latest is October 21, so the
/// watermark stays before October 1 until the idle advance, now - 30 days,
/// closes both periods).
const CONFIG: &str = "[validate]\nmax_event_age_days = 400\ndedupe_horizon_days = 401\n\
[aggregate]\ngrace_period_s = 2592000\nidle_advance_s = 10\n";

fn plans() -> String {
    [
        format!(
            r#"{{"id":"pay","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","charges":{{"tokens":{{"model":"percentage","rate":"1.3","fixed_fee_per_event":"0.30","min_per_event":"0.50","max_per_event":"5.00","free_events":2}}}},{GL_ACCOUNTS_JSON}}}"#
        ),
        format!(
            r#"{{"id":"seats","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","charges":{{"peak_seats":{{"model":"per_unit","unit_price":"30.00","prorate":true}}}},{GL_ACCOUNTS_JSON}}}"#
        ),
    ]
    .join("\n")
}

fn customers() -> String {
    customer_lines(&["c-pay", "c-seat"])
}

fn subscriptions() -> String {
    [("s-pay", "c-pay", "pay"), ("s-seat", "c-seat", "seats")]
        .iter()
        .map(|(s, c, p)| {
            format!(
                r#"{{"id":"{s}","customer_id":"{c}","plan_id":"{p}","start":"2026-09-01T00:00:00Z","end":"2026-11-01T00:00:00Z","billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// (customer, id, type, time, data), in event-time order per customer.
fn events() -> Vec<(&'static str, String, &'static str, String, String)> {
    let mut out = Vec::new();
    let payments = [
        ("2026-09-02", "10"),
        ("2026-09-03", "20"),
        ("2026-09-04", "30"),
        ("2026-09-05", "5"),
        ("2026-09-06", "1000"),
        ("2026-09-07", "100"),
        ("2026-10-02", "40"),
        ("2026-10-03", "50"),
        ("2026-10-04", "200"),
    ];
    for (i, (day, amount)) in payments.iter().enumerate() {
        out.push((
            "c-pay",
            format!("pay-{i}"),
            "llm.tokens",
            format!("{day}T12:00:00Z"),
            format!(r#"{{"tokens":"{amount}","model":"card"}}"#),
        ));
    }
    let seats = [
        ("2026-09-01", 4),
        ("2026-09-16", 6),
        ("2026-10-01", 6),
        ("2026-10-21", 9),
    ];
    for (i, (day, n)) in seats.iter().enumerate() {
        out.push((
            "c-seat",
            format!("seat-{i}"),
            "seats.active",
            format!("{day}T00:00:00Z"),
            format!(r#"{{"seats":{n}}}"#),
        ));
    }
    out
}

#[test]
fn percentage_and_prorated_seat_plans_invoice_and_journal_to_the_cent() {
    let w = World::new("ratingmodels", CONFIG);
    w.apply();
    w.load_refdata("plans", &plans());
    w.load_refdata("customers", &customers());
    w.load_refdata("subscriptions", &subscriptions());
    // Newest first: every event but the first of each customer arrives late.
    let records: Vec<_> = events()
        .into_iter()
        .rev()
        .map(|(customer, id, ty, time, data)| {
            let event = cloudevent("ratingmodels", &id, ty, customer, &time, &data);
            (
                Some(customer.as_bytes().to_vec()),
                Some(event.into_bytes()),
                vec![],
            )
        })
        .collect();
    produce(&w.topic("usage.events"), &records);
    // After them: the refund of the 1000 transaction, then of the free 10;
    // the 6 seats of September 16 taken back.
    let retractions: Vec<_> = [
        ("refund-1", "pay-4", "c-pay"),
        ("refund-2", "pay-0", "c-pay"),
        ("unseat-1", "seat-1", "c-seat"),
    ]
    .iter()
    .map(|(id, target, customer)| {
        let data = format!(r#"{{"source":"ratingmodels","id":"{target}"}}"#);
        let time = "2026-09-20T00:00:00Z";
        let retract = "meterline.usage.retract";
        let event = cloudevent("ops/console", id, retract, customer, time, &data);
        let key = customer.as_bytes().to_vec();
        (Some(key), Some(event.into_bytes()), vec![])
    })
    .collect();
    produce(&w.topic("usage.events"), &retractions);

    let mut run = w.spawn_stage(&all_stages(), "a");
    wait_until("four period closes, invoices out of draft", || {
        period_closes(&postings(&w)) >= 4 && invoices_caught_up(&w)
    });
    std::thread::sleep(std::time::Duration::from_secs(3));
    let ps = postings(&w);
    assert!(terminate(&mut run).success(), "SIGTERM exits 0");

    let mut lines: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    let mut unbilled: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for p in &ps {
        let at = (p.subscription_id.clone(), p.billing_period.id.clone());
        match p.posting_type {
            PostingType::InvoiceLine if p.kind == "usage" => {
                *lines.entry(at).or_default() += p.invoice_line.as_ref().unwrap().amount;
            }
            PostingType::JournalEntry => {
                let (debits, credits) = p.totals();
                assert_eq!(debits, credits, "balanced: {:?}", p.business_key);
                if p.kind == "accrual" || p.kind == "rounding" {
                    *unbilled.entry(at).or_default() += signed(p, "1210");
                }
            }
            _ => {}
        }
    }
    let key = |s: &str, period: &str| (s.to_string(), period.to_string());
    let want = BTreeMap::from([
        (key("s-pay", "2026-09-01"), dec!(2.79)),
        (key("s-pay", "2026-10-01"), dec!(2.90)),
        (key("s-seat", "2026-09-01"), dec!(120.00)),
        (key("s-seat", "2026-10-01"), dec!(211.94)),
    ]);
    assert_eq!(lines, want, "invoice lines per subscription and period");
    assert_eq!(unbilled, want, "accruals + rounding = the invoice line");

    let refused: Vec<_> = read_all(&w.topic("meterline.dlq.rate"), true)
        .iter()
        .filter_map(|r| r.header("meterline.reason"))
        .collect();
    assert_eq!(refused, ["retraction_unsupported"], "the free one's refund");

    // The September take-rate line explains itself: three paid.
    let september = ps
        .iter()
        .find(|p| {
            p.kind == "usage" && p.subscription_id == "s-pay" && p.billing_period.id == "2026-09-01"
        })
        .and_then(|p| p.invoice_line.as_ref())
        .unwrap();
    let part = |n: &str| september.breakdown.get(n).copied().unwrap_or_default();
    assert_eq!(part("free_events"), dec!(2));
    assert_eq!(part("paid_events"), dec!(3));
    assert_eq!(part("billable_amount"), dec!(135));
    assert_eq!(part("percentage_fee"), dec!(1.755));
    assert_eq!(part("fixed_fees"), dec!(0.90));
    assert_eq!(part("min_max_adjustment"), dec!(0.135));
    assert_eq!(september.quantity, dec!(165));
    // The invoice document (finance.invoices, latest version) shows it too.
    let mut document = serde_json::Value::Null;
    for r in read_all(&w.topic("finance.invoices"), true) {
        let v = r.json();
        if v["invoice_id"] == "s-pay@2026-09-01"
            && v["version"].as_u64() >= document["version"].as_u64()
        {
            document = v;
        }
    }
    let usage = document["lines"]
        .as_array()
        .and_then(|lines| lines.iter().find(|l| l["kind"] == "usage"))
        .unwrap_or_else(|| panic!("no usage line on {document}"));
    assert_eq!(usage["amount"], "2.79");
    assert_eq!(usage["breakdown"]["paid_events"], "3");
    assert_eq!(usage["breakdown"]["percentage_fee"], "1.755");
    // The October seat line: 270.00 for the full period, less the 58.06...
    // of the 9 seats' first 20 days.
    let october = ps
        .iter()
        .find(|p| {
            p.kind == "usage"
                && p.subscription_id == "s-seat"
                && p.billing_period.id == "2026-10-01"
        })
        .and_then(|p| p.invoice_line.as_ref())
        .unwrap();
    assert_eq!(october.quantity, dec!(9));
    assert_eq!(
        october.breakdown.get("full_period_amount"),
        Some(&dec!(270.00))
    );
    assert_eq!(
        october.breakdown.get("proration_adjustment"),
        Some(&dec!(-58.064516129032))
    );
}
