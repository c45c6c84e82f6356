//! Billing periods are driven by subscriptions, not by usage (issue 12,
//! DESIGN.md "Semantics in detail"), against the real broker:
//!
//! * `s-quiet` (customer `c-quiet`) never sends an event over its two
//!   periods (September and October 2026): exactly two base-fee invoice
//!   lines of 7.00 and their journal entries (Dr receivable 1200, Cr usage
//!   revenue 4010), and a minimum-commitment true-up of 3.00 each;
//! * `s-late` (customer `c-late`) sends its first event in October, its
//!   second period: September is posted too (base fee and true-up), October
//!   with its usage;
//! * every stage stopped and restarted, and both subscriptions republished:
//!   not one posting more.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use meterline::contracts::{Posting, PostingType};
use rust_decimal::Decimal;

/// Past events accepted; idle advance slow enough that the events, produced
/// before the stages start, arrive before the wall clock closes anything.
const CONFIG: &str = "[validate]\nmax_event_age_days = 400\ndedupe_horizon_days = 401\n\
[aggregate]\ngrace_period_s = 60\nidle_advance_s = 10\n";

fn plans() -> String {
    format!(
        r#"{{"id":"q","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","base_fee":"7.00","charges":{{"tokens":{{"model":"per_unit","unit_price":"0.001"}}}},{GL_ACCOUNTS_JSON}}}"#
    )
}

fn customers() -> String {
    customer_lines(&["c-quiet", "c-late"])
}

fn subscriptions() -> String {
    [("s-quiet", "c-quiet"), ("s-late", "c-late")]
        .iter()
        .map(|(s, c)| {
            format!(
                r#"{{"id":"{s}","customer_id":"{c}","plan_id":"q","start":"2026-09-01T00:00:00Z","end":"2026-11-01T00:00:00Z","billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us","minimum_commitment":"10.00"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// (subscription, period, posting type, kind) -> amounts (invoice line
/// amount, or the journal entry's debit account, credit account and amount).
fn books(ps: &[Posting]) -> BTreeMap<(String, String, String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String, String, String), Vec<String>> = BTreeMap::new();
    for p in ps {
        let amount = match p.posting_type {
            PostingType::JournalEntry => {
                let (d, c) = p.totals();
                assert_eq!(d, c, "balanced: {:?}", p.business_key);
                format!(
                    "{} {} {}",
                    p.lines[0].account, p.lines[1].account, p.lines[0].amount
                )
            }
            PostingType::InvoiceLine => p.invoice_line.as_ref().unwrap().amount.to_string(),
            _ => continue,
        };
        out.entry((
            p.subscription_id.clone(),
            p.billing_period.id.clone(),
            p.posting_type.as_str().to_owned(),
            p.kind.clone(),
        ))
        .or_default()
        .push(amount);
    }
    out
}

fn entry(s: &str, period: &str, ty: &str, kind: &str) -> (String, String, String, String) {
    (s.into(), period.into(), ty.into(), kind.into())
}

#[test]
fn every_period_of_every_subscription_posts_once_with_or_without_usage() {
    let w = World::new("subperiods", CONFIG);
    w.apply();
    w.load_refdata("plans", &plans());
    w.load_refdata("customers", &customers());
    w.load_refdata("subscriptions", &subscriptions());
    // s-late's only usage: 2,500 tokens on October 10 (2.50).
    let event = cloudevent(
        "subperiods",
        "late-1",
        "llm.tokens",
        "c-late",
        "2026-10-10T10:00:00Z",
        r#"{"tokens":2500,"model":"small"}"#,
    );
    produce(
        &w.topic("usage.events"),
        &[(Some(b"c-late".to_vec()), Some(event.into_bytes()), vec![])],
    );

    let mut run = w.spawn_stage(&all_stages(), "a");
    wait_until(
        "four period closes (two subscriptions x two periods)",
        || period_closes(&postings(&w)) >= 4 && invoices_caught_up(&w),
    );
    // A double, if there were one, would arrive now.
    std::thread::sleep(Duration::from_secs(3));
    let first = postings(&w);
    assert!(terminate(&mut run).success(), "SIGTERM exits 0");

    let got = books(&first);
    let dr_cr = |amount: &str| vec![format!("1200 4010 {amount}")];
    let mut want = BTreeMap::new();
    for s in ["s-quiet", "s-late"] {
        for period in ["2026-09-01", "2026-10-01"] {
            want.insert(
                entry(s, period, "invoice_line", "base_fee"),
                vec!["7.00".to_string()],
            );
            want.insert(entry(s, period, "journal_entry", "base_fee"), dr_cr("7.00"));
        }
    }
    // Commitment 10.00: true-up 3.00 without usage, 0.50 with 2.50 of usage.
    for (s, period, amount) in [
        ("s-quiet", "2026-09-01", "3.00"),
        ("s-quiet", "2026-10-01", "3.00"),
        ("s-late", "2026-09-01", "3.00"),
        ("s-late", "2026-10-01", "0.50"),
    ] {
        want.insert(
            entry(s, period, "invoice_line", "minimum_true_up"),
            vec![amount.to_string()],
        );
        want.insert(
            entry(s, period, "journal_entry", "minimum_true_up"),
            dr_cr(amount),
        );
    }
    // s-late's October usage: accrual, invoice line, reclass.
    want.insert(
        entry("s-late", "2026-10-01", "journal_entry", "accrual"),
        vec!["1210 4010 2.50".to_string()],
    );
    want.insert(
        entry("s-late", "2026-10-01", "invoice_line", "usage"),
        vec!["2.50".to_string()],
    );
    want.insert(
        entry("s-late", "2026-10-01", "journal_entry", "reclass"),
        vec!["1200 1210 2.50".to_string()],
    );
    assert_eq!(got, want);
    // Every period close once, with the events it saw.
    let mut closes: Vec<(String, String, u64)> = first
        .iter()
        .filter(|p| p.posting_type == PostingType::ControlTotal && p.kind == "period_close")
        .map(|p| {
            (
                p.subscription_id.clone(),
                p.window.id.clone(),
                p.control_total.as_ref().unwrap().event_count,
            )
        })
        .collect();
    closes.sort();
    assert_eq!(
        closes,
        vec![
            ("s-late".into(), "2026-09-01".into(), 0),
            ("s-late".into(), "2026-10-01".into(), 1),
            ("s-quiet".into(), "2026-09-01".into(), 0),
            ("s-quiet".into(), "2026-10-01".into(), 0),
        ]
    );
    let total: Decimal = first
        .iter()
        .filter(|p| p.posting_type == PostingType::InvoiceLine)
        .map(|p| p.invoice_line.as_ref().unwrap().amount)
        .sum();
    assert_eq!(total, Decimal::new(4 * 700 + 3 * 300 + 50 + 250, 2));

    // Restart every stage and republish both subscriptions: nothing new.
    w.load_refdata("subscriptions", &subscriptions());
    let mut run = w.spawn_stage(&all_stages(), "a");
    // Long enough for every partition's walk (a punctuation a second) and
    // an idle advance of the watermark.
    std::thread::sleep(Duration::from_secs(20));
    assert!(terminate(&mut run).success());
    let after = postings(&w);
    assert_eq!(
        after.len(),
        first.len(),
        "restart and republish posted again: {:?}",
        after[first.len().min(after.len())..]
            .iter()
            .map(|p| &p.business_key)
            .collect::<Vec<_>>()
    );
}
