//! validate -> dedupe -> enrich -> rate -> aggregate -> post against the real broker:
//! one customer, one UTC subscription (anchor day 1, minimum commitment
//! 20.00 USD) on plan `p`, September and October 2026, checked against
//! postings worked out by hand.
//!
//! * plan `p` v1: tokens per_unit 0.001, base fee 5.00; v2 from Oct 16:
//!   tokens per_unit 0.002, base fee 8.00 (a new rating segment mid-period;
//!   October's base fee stays v1's, the version in force at its start);
//! * duplicates (dropped by dedupe), a malformed record (dead-lettered);
//! * a late event inside the 60 s grace (joins its still-open day) and one
//!   beyond it, produced after later events (an adjustment of Oct 5 in the
//!   current day window, Oct 20, cleared by October's invoice line);
//! * September falls short of the commitment (true-up), October does not;
//! * a November event moves the watermark past October's end, so both
//!   periods close; after `idle_advance_s` the wall clock closes Nov 2.
//!
//! The postings of both periods are asserted as literals; every journal
//! entry balances; each day's control totals count the events sent; the
//! unbilled receivable clears to zero per period; and the same scenario in a
//! fresh namespace yields byte-identical postings, idempotency keys included.
//!
//! The scenario's dates are fixed: it needs them in the past (after
//! 2026-11-02) and within `max_event_age_days` (400) of today.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use meterline::contracts::{Posting, PostingType, Side};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;

const SOURCE: &str = "e2e";
const CUSTOMER: &str = "c-1";
const SEP: &str = "2026-09-01";
const OCT: &str = "2026-10-01";

/// Past events are accepted; small grace; a short (but not racy) idle advance.
/// Idle advance must not fire while the scenario flows (it would move the
/// watermark to today and turn every later event into an adjustment), so
/// the events are produced before the stages start and it is 10 s, not 2.
const CONFIG: &str = "[validate]\nmax_event_age_days = 400\ndedupe_horizon_days = 401\n\
[aggregate]\ngrace_period_s = 60\nidle_advance_s = 10\n";

fn plans_jsonl() -> String {
    [
        format!(
            r#"{{"id":"p","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","base_fee":"5.00","charges":{{"tokens":{{"model":"per_unit","unit_price":"0.001"}}}},{GL_ACCOUNTS_JSON}}}"#
        ),
        format!(
            r#"{{"id":"p","version":2,"effective_from":"2026-10-16T00:00:00Z","currency":"USD","base_fee":"8.00","charges":{{"tokens":{{"model":"per_unit","unit_price":"0.002"}}}},{GL_ACCOUNTS_JSON}}}"#
        ),
    ]
    .join("\n")
}

fn customers_jsonl() -> String {
    format!(
        r#"{{"id":"{CUSTOMER}","name":"Customer one","legal_entity":"le-us","erp_customer_id":"ERP-1","status":"active"}}"#
    )
}

fn subscriptions_jsonl() -> String {
    format!(
        r#"{{"id":"s-1","customer_id":"{CUSTOMER}","plan_id":"p","start":"2026-09-01T00:00:00Z","end":null,"billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us","minimum_commitment":"20.00"}}"#
    )
}

/// (id, time, tokens), in the order produced. A repeated id is a duplicate.
/// Amounts: v1 (before Oct 16) tokens x 0.001, v2 tokens x 0.002.
const EVENTS: &[(&str, &str, u32)] = &[
    ("s1", "2026-09-10T10:00:00Z", 1005), // 1.005
    ("s2", "2026-09-11T10:00:00Z", 2005), // 2.005
    ("s2", "2026-09-11T10:00:00Z", 2005), // duplicate
    ("s3", "2026-09-20T09:00:00Z", 3000), // 3.000
    // Watermark -> Sep 20 23:59:30: Sep 20 is still open...
    ("s4", "2026-09-21T00:00:30Z", 1000), // 1.000
    // ... so this late event joins it (inside the grace).
    ("s5", "2026-09-20T23:59:45Z", 500),  // 0.500
    ("o1", "2026-10-01T08:00:00Z", 2000), // 2.000, closes September
    ("o2", "2026-10-05T12:00:00Z", 3000), // 3.000
    ("o2", "2026-10-05T12:00:00Z", 3000), // duplicate
    ("o3", "2026-10-16T10:00:00Z", 1000), // v2: 2.000
    ("o4", "2026-10-20T10:00:00Z", 1500), // v2: 3.000
    // Beyond the grace (Oct 5 closed, watermark Oct 20 09:59): v1, an
    // adjustment of Oct 5 in the Oct 20 day window.
    ("o5", "2026-10-05T13:00:00Z", 1000), // 1.000
    ("o6", "2026-10-31T23:00:00Z", 2345), // v2: 4.690
    // Watermark -> Nov 2 11:59: October closes.
    ("n1", "2026-11-02T12:00:00Z", 100), // v2: 0.200
];

/// Index in EVENTS after which the malformed record is produced.
const MALFORMED_AFTER: usize = 3;

/// (posting type, kind, accounting date, meter, amount, debit, credit) of
/// every journal entry and invoice line of September and October, by hand
/// (half-even rounding to cents).
#[rustfmt::skip]
const EXPECTED: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    // September, v1.
    ("journal_entry", "accrual", "2026-09-10", "tokens", "1.00", "1210", "4010"), // 1.005
    ("journal_entry", "accrual", "2026-09-11", "tokens", "2.00", "1210", "4010"), // 2.005
    ("journal_entry", "accrual", "2026-09-20", "tokens", "3.50", "1210", "4010"), // 3.0 + 0.5
    ("journal_entry", "accrual", "2026-09-21", "tokens", "1.00", "1210", "4010"),
    // 7.510 invoiced, 7.50 accrued.
    ("invoice_line", "usage", "2026-09-30", "tokens", "7.51", "", ""),
    ("journal_entry", "rounding", "2026-09-30", "tokens", "0.01", "1210", "4010"),
    ("journal_entry", "reclass", "2026-09-30", "tokens", "7.51", "1200", "1210"),
    ("invoice_line", "base_fee", "2026-09-30", "", "5.00", "", ""),
    ("journal_entry", "base_fee", "2026-09-30", "", "5.00", "1200", "4010"),
    // 20.00 - (7.51 + 5.00).
    ("invoice_line", "minimum_true_up", "2026-09-30", "", "7.49", "", ""),
    ("journal_entry", "minimum_true_up", "2026-09-30", "", "7.49", "1200", "4010"),
    // October, v1 segment.
    ("journal_entry", "accrual", "2026-10-01", "tokens", "2.00", "1210", "4010"),
    ("journal_entry", "accrual", "2026-10-05", "tokens", "3.00", "1210", "4010"),
    // o5: the adjustment of Oct 5, accrued on Oct 20.
    ("journal_entry", "accrual", "2026-10-20", "tokens", "1.00", "1210", "4010"),
    ("invoice_line", "usage", "2026-10-31", "tokens", "6.00", "", ""),
    ("journal_entry", "reclass", "2026-10-31", "tokens", "6.00", "1200", "1210"),
    // October, v2 segment.
    ("journal_entry", "accrual", "2026-10-16", "tokens", "2.00", "1210", "4010"),
    ("journal_entry", "accrual", "2026-10-20", "tokens", "3.00", "1210", "4010"),
    ("journal_entry", "accrual", "2026-10-31", "tokens", "4.69", "1210", "4010"),
    ("invoice_line", "usage", "2026-10-31", "tokens", "9.69", "", ""),
    ("journal_entry", "reclass", "2026-10-31", "tokens", "9.69", "1200", "1210"),
    // The base fee of the version in force on Oct 1 (v1), not of v2 that
    // took effect mid-period; 6.00 + 9.69 + 5.00 >= 20.00: no true-up.
    ("invoice_line", "base_fee", "2026-10-31", "", "5.00", "", ""),
    ("journal_entry", "base_fee", "2026-10-31", "", "5.00", "1200", "4010"),
];

/// Day control totals of both periods: (window id, adjusted window id or "",
/// plan version) -> event count, by hand.
const DAY_COUNTS: &[(&str, &str, u32, u64)] = &[
    ("2026-09-10", "", 1, 1),
    ("2026-09-11", "", 1, 1),
    ("2026-09-20", "", 1, 2),
    ("2026-09-21", "", 1, 1),
    ("2026-10-01", "", 1, 1),
    ("2026-10-05", "", 1, 1),
    ("2026-10-20", "2026-10-05", 1, 1),
    ("2026-10-16", "", 2, 1),
    ("2026-10-20", "", 2, 1),
    ("2026-10-31", "", 2, 1),
];

fn records() -> Vec<Record> {
    let mut out = Vec::new();
    for (i, (id, time, tokens)) in EVENTS.iter().enumerate() {
        let value = cloudevent(
            SOURCE,
            id,
            "llm.tokens",
            CUSTOMER,
            time,
            &format!(r#"{{"tokens":{tokens},"model":"small"}}"#),
        );
        out.push((
            Some(CUSTOMER.as_bytes().to_vec()),
            Some(value.into_bytes()),
            vec![],
        ));
        if i == MALFORMED_AFTER {
            out.push((
                Some(CUSTOMER.as_bytes().to_vec()),
                Some(br#"{"specversion":"1.0","id":"bad","#.to_vec()),
                vec![],
            ));
        }
    }
    out
}

fn postings(w: &World) -> Vec<(Rec, Posting)> {
    read_all(&w.topic("finance.postings"), true)
        .into_iter()
        .map(|r| {
            let p = Posting::from_json_slice(r.value.as_deref().unwrap()).unwrap();
            (r, p)
        })
        .collect()
}

fn closed_period(p: &Posting) -> bool {
    p.billing_period.id == SEP || p.billing_period.id == OCT
}

fn is_october_close(p: &Posting) -> bool {
    p.posting_type == PostingType::ControlTotal && p.kind == "period_close" && p.window.id == OCT
}

fn setup(name: &str) -> World {
    let w = World::new(name, CONFIG);
    w.apply();
    w.load_refdata("plans", &plans_jsonl());
    w.load_refdata("customers", &customers_jsonl());
    w.load_refdata("subscriptions", &subscriptions_jsonl());
    produce(&w.topic("usage.events"), &records());
    w
}

fn settled(w: &World) -> bool {
    let ps = postings(w);
    ps.iter().any(|(_, p)| is_october_close(p))
        && ps.iter().any(|(_, p)| {
            p.posting_type == PostingType::JournalEntry && p.accounting_date == "2026-11-02"
        })
        && invoices_caught_up(w)
}

/// Runs the scenario in a fresh namespace; every posting once it settled.
fn run_scenario(name: &str) -> (World, Vec<(Rec, Posting)>) {
    let w = setup(name);
    let mut stage = w.spawn_stage(&all_stages(), "a");
    wait_until("October's period close and the idle-closed Nov 2", || {
        settled(&w)
    });
    // Let a double, if there were one, arrive before judging.
    std::thread::sleep(Duration::from_secs(3));
    let all = postings(&w);
    assert!(terminate(&mut stage).success(), "SIGTERM exits 0");
    (w, all)
}

/// The September and October postings as sorted (key, value) bytes.
fn closed_bytes(ps: &[(Rec, Posting)]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<(Vec<u8>, Vec<u8>)> = ps
        .iter()
        .filter(|(_, p)| closed_period(p))
        .map(|(r, _)| (r.key.clone().unwrap(), r.value.clone().unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn two_periods_post_exactly_the_hand_worked_books_and_replay_identically() {
    let (w, all) = run_scenario("e2e");

    // Rejects and duplicates: one malformed record, nothing else.
    let dlq = read_all(&w.topic("meterline.dlq.validate"), true);
    assert_eq!(dlq.len(), 1);
    assert_eq!(
        dlq[0].header("meterline.reason").as_deref(),
        Some("malformed_json")
    );
    let unique: std::collections::BTreeSet<&str> = EVENTS.iter().map(|e| e.0).collect();
    assert_eq!(read_all(&w.topic("usage.rated"), true).len(), unique.len());
    for stage in ["enrich", "rate", "aggregate", "post", "invoice"] {
        assert!(
            read_all(&w.topic(&format!("meterline.dlq.{stage}")), true).is_empty(),
            "dlq {stage}"
        );
    }
    assert!(read_all(&w.topic("usage.exceptions"), true).is_empty());

    // Every posting: keyed by entity and subscription, balanced, once.
    let mut keys = std::collections::BTreeSet::new();
    for (r, p) in &all {
        assert_eq!(r.key.as_deref(), Some(&br#"["ml-us","s-1"]"#[..]));
        assert!(
            keys.insert(p.idempotency_key.clone()),
            "{:?} twice",
            p.business_key
        );
        let (d, c) = p.totals();
        assert_eq!(d, c, "unbalanced {:?}", p.business_key);
        if p.posting_type == PostingType::JournalEntry {
            assert_eq!(p.lines.len(), 2);
            assert!(p.lines.iter().all(|l| l.amount > Decimal::ZERO));
        }
        assert!(
            closed_period(p) || p.billing_period.id.as_str() >= "2026-11-01",
            "{:?}",
            p.business_key
        );
    }

    // Journal entries and invoice lines of both periods, exactly.
    let mut got: Vec<(String, String, String, String, String, String, String)> = all
        .iter()
        .map(|(_, p)| p)
        .filter(|p| closed_period(p) && p.posting_type != PostingType::ControlTotal)
        .map(|p| {
            let (amount, dr, cr) = match p.posting_type {
                PostingType::JournalEntry => (
                    p.lines[0].amount.to_string(),
                    p.lines[0].account.clone(),
                    p.lines[1].account.clone(),
                ),
                _ => (
                    p.invoice_line.as_ref().unwrap().amount.to_string(),
                    String::new(),
                    String::new(),
                ),
            };
            (
                p.posting_type.as_str().to_owned(),
                p.kind.clone(),
                p.accounting_date.clone(),
                p.meter.clone().unwrap_or_default(),
                amount,
                dr,
                cr,
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String, String, String, String, String, String)> = EXPECTED
        .iter()
        .map(|t| {
            (
                t.0.into(),
                t.1.into(),
                t.2.into(),
                t.3.into(),
                t.4.into(),
                t.5.into(),
                t.6.into(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want);

    // The adjustment names Oct 5 and is v1; the v2 invoice line says v2.
    let adj: Vec<&Posting> = all
        .iter()
        .map(|(_, p)| p)
        .filter(|p| p.adjusts.is_some() && p.posting_type == PostingType::JournalEntry)
        .collect();
    assert_eq!(adj.len(), 1);
    assert_eq!(adj[0].adjusts.as_ref().unwrap().id, "2026-10-05");
    assert_eq!(
        (adj[0].window.id.as_str(), adj[0].plan_version),
        ("2026-10-20", 1)
    );
    assert_eq!(adj[0].billing_period.id, OCT);
    let v2_line = all
        .iter()
        .map(|(_, p)| p)
        .find(|p| p.kind == "usage" && p.billing_period.id == OCT && p.plan_version == 2)
        .unwrap();
    assert_eq!(
        v2_line.invoice_line.as_ref().unwrap().quantity,
        Decimal::from(4845)
    );

    // Unbilled receivable clears to zero in each closed period.
    for period in [SEP, OCT] {
        let unbilled: Decimal = all
            .iter()
            .map(|(_, p)| p)
            .filter(|p| p.billing_period.id == period)
            .map(|p| signed(p, "1210"))
            .sum();
        assert_eq!(unbilled, Decimal::ZERO, "unbilled receivable of {period}");
    }

    // Day control totals: by hand, and adding up to the events sent per day
    // and segment (v2 from Oct 16).
    let mut counts: BTreeMap<(String, String, u32), u64> = BTreeMap::new();
    for p in all.iter().map(|(_, p)| p).filter(|p| {
        closed_period(p) && p.posting_type == PostingType::ControlTotal && p.kind == "day"
    }) {
        let key = (
            p.window.id.clone(),
            p.adjusts.as_ref().map_or(String::new(), |a| a.id.clone()),
            p.plan_version,
        );
        let n = p.control_total.as_ref().unwrap().event_count;
        assert!(counts.insert(key, n).is_none(), "two control totals");
    }
    let want_counts: BTreeMap<(String, String, u32), u64> = DAY_COUNTS
        .iter()
        .map(|(d, a, v, n)| (((*d).into(), (*a).into(), *v), *n))
        .collect();
    assert_eq!(counts, want_counts);
    let mut sent: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for (id, time, _) in EVENTS {
        if !seen.insert(*id) || time.starts_with("2026-11") {
            continue;
        }
        let version = if *time >= "2026-10-16" { 2 } else { 1 };
        *sent.entry((time[..10].to_owned(), version)).or_default() += 1;
    }
    let mut by_day: BTreeMap<(String, u32), u64> = BTreeMap::new();
    for ((day, adjusts, v), n) in &counts {
        let original = if adjusts.is_empty() { day } else { adjusts };
        *by_day.entry((original.clone(), *v)).or_default() += n;
    }
    assert_eq!(by_day, sent);
    // Period controls: every unique event of the period once.
    for (period, n) in [(SEP, 5), (OCT, 6)] {
        let c = all
            .iter()
            .map(|(_, p)| p)
            .find(|p| {
                p.posting_type == PostingType::ControlTotal
                    && p.kind == "period_close"
                    && p.window.id == period
            })
            .unwrap();
        assert_eq!(c.control_total.as_ref().unwrap().event_count, n, "{period}");
    }
    // The wall clock closed Nov 2 (idle advance): 100 tokens x 0.002.
    let nov = all
        .iter()
        .map(|(_, p)| p)
        .find(|p| p.accounting_date == "2026-11-02" && p.kind == "accrual")
        .unwrap();
    assert_eq!(nov.lines[0].amount.to_string(), "0.20");

    // The same scenario from offset zero in a fresh namespace: the same bytes.
    let first = closed_bytes(&all);
    assert_eq!(first.len(), EXPECTED.len() + DAY_COUNTS.len() + 3 + 2);
    drop(w);
    let (_w2, again) = run_scenario("e2e2");
    assert_eq!(closed_bytes(&again), first, "a replay posts the same bytes");
}

/// The aggregate and post stages run in their own process, killed with
/// SIGKILL at random moments (seeded) at least five times while the scenario
/// flows and restarted with the same instance id; the September and October
/// postings are byte-for-byte those of a crash-free run.
#[test]
fn sigkill_of_aggregate_and_post_changes_no_posting() {
    const KILLS_MIN: usize = 5;
    let (_reference_world, reference) = run_scenario("e2eref");
    let expected = closed_bytes(&reference);
    assert!(!expected.is_empty());

    let w = setup("e2ecrash");
    let mut upstream = w.spawn_stage(&["validate", "dedupe", "enrich", "rate"], "up");
    let mut downstream = w.spawn_stage(&["aggregate", "post", "invoice"], "down");
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for _ in 0..KILLS_MIN {
        std::thread::sleep(Duration::from_millis(rng.random_range(500..3_000)));
        kill9(&mut downstream);
        downstream = w.spawn_stage(&["aggregate", "post", "invoice"], "down");
    }
    wait_until("the books to settle after the crashes", || settled(&w));
    std::thread::sleep(Duration::from_secs(3));
    let all = postings(&w);
    assert_eq!(
        closed_bytes(&all),
        expected,
        "postings identical to the crash-free run"
    );
    for (_, p) in &all {
        let dr: Decimal = p
            .lines
            .iter()
            .filter(|l| l.side == Side::Debit)
            .map(|l| l.amount)
            .sum();
        let cr: Decimal = p
            .lines
            .iter()
            .filter(|l| l.side == Side::Credit)
            .map(|l| l.amount)
            .sum();
        assert_eq!(dr, cr, "balanced: {p:?}");
    }
    assert!(terminate(&mut downstream).success());
    assert!(terminate(&mut upstream).success());
}
