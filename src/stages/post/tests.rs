use chrono::{DateTime, Duration, Utc};
use rust_decimal_macros::dec;

use super::*;
use crate::contracts::{RatedEvent, Side};
use crate::runtime::testing::Harness;
use crate::stages::fixtures::{
    aggregate_all, config, january_events, post_windows, rated, GRACE_PERIOD_S, UTC1,
};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// January usage (one "tokens" amount per day from Jan 10 on) in `currency`,
/// plus an event that closes January; aggregated, then posted.
fn january(currency: &str, daily: &[Decimal]) -> Vec<Posting> {
    let mut events = january_events(daily);
    for e in &mut events {
        e.enriched.currency = currency.to_string();
    }
    post_all(&aggregate_all(&events))
}

fn post_all(windows: &[ClosedWindow]) -> Vec<Posting> {
    post_all_with(&config(), windows)
}

fn post_all_with(cfg: &Config, windows: &[ClosedWindow]) -> Vec<Posting> {
    let (postings, s) = post_windows(cfg, windows);
    // The store only holds open periods: January's sums are gone.
    assert_eq!(s.approximate_keys(0), 0);
    postings
}

/// (type, kind, debit account, credit account, amount text) of each posting
/// except control totals; the amount of an invoice line is its amount.
fn summary(postings: &[Posting]) -> Vec<(String, String, String, String, String)> {
    postings
        .iter()
        .filter(|p| p.posting_type != PostingType::ControlTotal)
        .map(|p| match p.posting_type {
            PostingType::JournalEntry => {
                assert_eq!(p.lines.len(), 2);
                assert_eq!(p.lines[0].side, Side::Debit);
                assert_eq!(p.lines[1].side, Side::Credit);
                (
                    "je".into(),
                    p.kind.clone(),
                    p.lines[0].account.clone(),
                    p.lines[1].account.clone(),
                    p.lines[0].amount.to_string(),
                )
            }
            _ => {
                let l = p.invoice_line.as_ref().unwrap();
                (
                    "inv".into(),
                    p.kind.clone(),
                    String::new(),
                    String::new(),
                    l.amount.to_string(),
                )
            }
        })
        .collect()
}

fn s(t: (&str, &str, &str, &str, &str)) -> (String, String, String, String, String) {
    (t.0.into(), t.1.into(), t.2.into(), t.3.into(), t.4.into())
}

/// Debits minus credits of `account` over every journal entry.
fn balance(postings: &[Posting], account: &str) -> Decimal {
    postings
        .iter()
        .flat_map(|p| &p.lines)
        .filter(|l| l.account == account)
        .map(|l| match l.side {
            Side::Debit => l.amount,
            Side::Credit => -l.amount,
        })
        .sum()
}

fn assert_books(postings: &[Posting]) {
    for p in postings {
        check_balanced(p).unwrap();
        let (d, c) = p.totals();
        assert_eq!(d, c, "{}", p.idempotency_key);
        if p.posting_type == PostingType::JournalEntry {
            assert!(p.lines.iter().all(|l| l.amount > Decimal::ZERO));
        }
    }
    // Unbilled receivable clears to zero at period close.
    assert_eq!(balance(postings, "1210"), Decimal::ZERO);
    // What is receivable is exactly the revenue recognised.
    assert_eq!(balance(postings, "1200"), -balance(postings, "4010"));
}

#[test]
fn usd_accruals_rounding_reclass_base_fee_and_true_up() {
    let postings = january("USD", &[dec!(0.333), dec!(0.333), dec!(0.333)]);
    let want = [
        ("je", "accrual", "1210", "4010", "0.33"),
        ("je", "accrual", "1210", "4010", "0.33"),
        ("je", "accrual", "1210", "4010", "0.33"),
        ("inv", "usage", "", "", "1.00"),
        // round(0.999) - 3 x 0.33.
        ("je", "rounding", "1210", "4010", "0.01"),
        ("je", "reclass", "1200", "1210", "1.00"),
        ("inv", "base_fee", "", "", "10.00"),
        ("je", "base_fee", "1200", "4010", "10.00"),
        // Commitment 100 - (1.00 usage + 10.00 base fee).
        ("inv", "minimum_true_up", "", "", "89.00"),
        ("je", "minimum_true_up", "1200", "4010", "89.00"),
    ];
    assert_eq!(summary(&postings), want.map(s));
    assert_books(&postings);
    assert_eq!(balance(&postings, "1200"), dec!(100.00));
    // A control total per window: 3 days, the period, the period close.
    let controls: Vec<&ControlTotal> = postings
        .iter()
        .filter_map(|p| p.control_total.as_ref())
        .collect();
    assert_eq!(controls.len(), 5);
    assert_eq!(controls[3].event_count, 3);
    assert_eq!(controls[3].amount, dec!(0.999));
    assert_eq!(controls[3].amount_rounded.to_string(), "1.00");
    assert_eq!(controls[3].quantity, dec!(3));
    assert_eq!(controls[4].lineage_digest, controls[3].lineage_digest);
    let line = postings.iter().find(|p| p.kind == "usage").unwrap();
    let usage = line.invoice_line.as_ref().unwrap();
    assert_eq!(usage.quantity, dec!(3));
    assert_eq!(usage.tax_code.as_deref(), Some("TX-USAGE"));
    assert_eq!(line.accounting_date, "2026-01-31");
    assert_eq!(postings[0].accounting_date, "2026-01-10");
}

#[test]
fn negative_amounts_swap_sides_and_zero_entries_are_not_posted() {
    let postings = january("USD", &[dec!(10), dec!(-4.004), dec!(0.004)]);
    let want = [
        ("je", "accrual", "1210", "4010", "10.00"),
        // A credit: revenue debited, unbilled credited.
        ("je", "accrual", "4010", "1210", "4.00"),
        // 0.004 rounds to zero: no accrual. 6.000 = 10.00 - 4.00: no rounding.
        ("inv", "usage", "", "", "6.00"),
        ("je", "reclass", "1200", "1210", "6.00"),
        ("inv", "base_fee", "", "", "10.00"),
        ("je", "base_fee", "1200", "4010", "10.00"),
        ("inv", "minimum_true_up", "", "", "84.00"),
        ("je", "minimum_true_up", "1200", "4010", "84.00"),
    ];
    assert_eq!(summary(&postings), want.map(s));
    assert_books(&postings);
}

#[test]
fn rounding_follows_the_currency_minor_unit() {
    // JPY, no minor unit: each 0.5 day rounds (half even) to 0, the 1.5
    // period to 2, so the rounding line carries it all.
    let jpy = january("JPY", &[dec!(0.5), dec!(0.5), dec!(0.5)]);
    let want = [
        ("inv", "usage", "", "", "2"),
        ("je", "rounding", "1210", "4010", "2"),
        ("je", "reclass", "1200", "1210", "2"),
        ("inv", "base_fee", "", "", "10"),
        ("je", "base_fee", "1200", "4010", "10"),
        ("inv", "minimum_true_up", "", "", "88"),
        ("je", "minimum_true_up", "1200", "4010", "88"),
    ];
    assert_eq!(summary(&jpy), want.map(s));
    assert_books(&jpy);
    // BHD, three decimals: 1.2345 -> 1.234 (half even) per day, 2.469 the period.
    let bhd = january("BHD", &[dec!(1.2345), dec!(1.2345)]);
    let want = [
        ("je", "accrual", "1210", "4010", "1.234"),
        ("je", "accrual", "1210", "4010", "1.234"),
        ("inv", "usage", "", "", "2.469"),
        ("je", "rounding", "1210", "4010", "0.001"),
        ("je", "reclass", "1200", "1210", "2.469"),
        ("inv", "base_fee", "", "", "10.000"),
        ("je", "base_fee", "1200", "4010", "10.000"),
        ("inv", "minimum_true_up", "", "", "87.531"),
        ("je", "minimum_true_up", "1200", "4010", "87.531"),
    ];
    assert_eq!(summary(&bhd), want.map(s));
    assert_books(&bhd);
}

#[test]
fn no_true_up_when_spend_meets_the_commitment() {
    let postings = january("USD", &[dec!(60), dec!(30)]);
    let kinds: Vec<String> = summary(&postings).into_iter().map(|t| t.1).collect();
    // 90 + 10 base fee = 100: exactly the commitment.
    assert_eq!(
        kinds,
        ["accrual", "accrual", "usage", "reclass", "base_fee", "base_fee"]
    );
    assert_books(&postings);
}

#[test]
fn idempotency_keys_are_stable_and_unique() {
    let a = january("USD", &[dec!(0.333), dec!(0.333)]);
    let b = january("USD", &[dec!(0.333), dec!(0.333)]);
    let keys = |ps: &[Posting]| {
        ps.iter()
            .map(|p| p.idempotency_key.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(keys(&a), keys(&b));
    let unique: std::collections::BTreeSet<_> = keys(&a).into_iter().collect();
    assert_eq!(unique.len(), a.len());
    let first = &a[0];
    let segment = first.segment_id.clone().unwrap();
    assert_eq!(
        first.business_key,
        [
            "journal_entry",
            "accrual",
            "ml-us",
            "sub-1",
            segment.as_str(),
            "day",
            "2026-01-10",
            ""
        ]
    );
    let parts: Vec<&str> = first.business_key.iter().map(String::as_str).collect();
    assert_eq!(
        first.idempotency_key,
        money::idempotency_key(&parts, POSTING_KEY_VERSION)
    );
    assert_eq!(first.key_version, 1);
}

#[test]
fn an_unbalanced_entry_is_caught_and_stops_the_stage() {
    let mut p = january("USD", &[dec!(1)]).remove(0);
    assert_eq!(p.posting_type, PostingType::JournalEntry);
    check_balanced(&p).unwrap();
    p.lines[1].amount += dec!(0.01);
    let err = check_balanced(&p).unwrap_err();
    assert_eq!(err.code(), "unbalanced_journal_entry");
    assert!(matches!(StageError::from(err), StageError::Fatal(_)));
    assert_eq!(two_lines("1", "2", Decimal::ZERO), None);
}

#[test]
fn bad_windows_are_rejected() {
    let cfg = config();
    let mut h = Harness::new(cfg.clone(), PostProcessor::new(&cfg), 0);
    assert_eq!(h.input_topic(), "x.usage.windows");
    let run = |h: &mut Harness<PostProcessor>, value: &[u8]| match h.process(None, Some(value)) {
        Err(StageError::Reject { code, .. }) => code,
        other => panic!("{other:?}"),
    };
    assert_eq!(run(&mut h, b"[]"), MALFORMED_CLOSED_WINDOW);
    let windows = aggregate_all(&[
        rated(
            "a",
            at("2026-01-10T00:00:00Z"),
            UTC1,
            &[("tokens", dec!(1))],
        ),
        rated(
            "b",
            at("2026-01-11T00:00:00Z") + Duration::seconds(GRACE_PERIOD_S),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    ]);
    let mut w = windows[0].clone();
    w.currency = "usd".into();
    assert_eq!(run(&mut h, &w.to_json_bytes().unwrap()), "unknown_currency");
    let mut w = windows[0].clone();
    w.segment = None;
    assert_eq!(
        run(&mut h, &w.to_json_bytes().unwrap()),
        MALFORMED_CLOSED_WINDOW
    );
    assert!(!h.stores.has_pending());
}

#[test]
fn the_rounding_mode_comes_from_the_config() {
    // One day of 0.125 USD: a tie that half_even rounds down, half_up up.
    let windows = aggregate_all(&[
        rated(
            "a",
            at("2026-01-10T12:00:00Z"),
            UTC1,
            &[("tokens", dec!(0.125))],
        ),
        rated(
            "closer",
            at("2026-02-01T00:00:00Z") + Duration::seconds(GRACE_PERIOD_S),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    ]);
    let accrual = |postings: &[Posting]| {
        let p = postings.iter().find(|p| p.kind == "accrual").unwrap();
        p.lines[0].amount.to_string()
    };
    assert_eq!(config().post.rounding_mode, RoundingMode::HalfEven);
    assert_eq!(ROUNDING_MODE, RoundingMode::HalfEven);
    let even = post_all(&windows);
    assert_eq!(accrual(&even), "0.12");
    assert_books(&even);
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let up = Config::from_parts(
        "[topology]\nnamespace = \"x.\"\n[post]\nrounding_mode = \"half_up\"\n",
        "test",
        &[],
        dir,
    )
    .unwrap();
    let up = post_all_with(&up, &windows);
    assert_eq!(accrual(&up), "0.13");
    assert_books(&up);
    let usage = up.iter().find(|p| p.kind == "usage").unwrap();
    assert_eq!(
        usage.invoice_line.as_ref().unwrap().amount.to_string(),
        "0.13"
    );
    // The pure function takes the mode too; post_window uses the default.
    let day = &windows[0];
    assert_eq!(day.kind, WindowKind::Day);
    let default = post_window(day, Decimal::ZERO, Decimal::ZERO).unwrap();
    assert_eq!(accrual(&default.postings), "0.12");
    for (mode, want) in [
        (RoundingMode::HalfEven, "0.12"),
        (RoundingMode::HalfUp, "0.13"),
        (RoundingMode::Down, "0.12"),
        (RoundingMode::Ceiling, "0.13"),
    ] {
        let posted = post_window_with(day, Decimal::ZERO, Decimal::ZERO, mode).unwrap();
        assert_eq!(accrual(&posted.postings), want, "{mode:?}");
    }
}

#[test]
fn a_period_without_usage_posts_its_base_fee_and_true_up() {
    // January has usage; February none; an event on March 1 closes both.
    let events = [
        rated(
            "jan",
            at("2026-01-10T12:00:00Z"),
            UTC1,
            &[("tokens", dec!(30))],
        ),
        rated(
            "mar",
            at("2026-03-01T00:00:00Z") + Duration::seconds(GRACE_PERIOD_S),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    ];
    let postings = post_all(&aggregate_all(&events));
    let feb: Vec<&Posting> = postings
        .iter()
        .filter(|p| p.billing_period.id == "2026-02-01")
        .collect();
    let feb_summary: Vec<_> = summary(&feb.iter().map(|p| (*p).clone()).collect::<Vec<_>>());
    assert_eq!(
        feb_summary,
        vec![
            s(("inv", "base_fee", "", "", "10.00")),
            s(("je", "base_fee", "1200", "4010", "10.00")),
            // Commitment 100.00 - (0 + 10.00).
            s(("inv", "minimum_true_up", "", "", "90.00")),
            s(("je", "minimum_true_up", "1200", "4010", "90.00")),
        ]
    );
    let control: Vec<&&Posting> = feb
        .iter()
        .filter(|p| p.posting_type == PostingType::ControlTotal)
        .collect();
    assert_eq!(control.len(), 1);
    assert_eq!(control[0].control_total.as_ref().unwrap().event_count, 0);
    assert_books(&postings);
}

#[test]
fn drafts_carry_what_waits_for_the_invoice_and_lineage_names_it() {
    // 1.005 + 1.005 accrue 1.00 + 1.00; invoiced 2.01: a rounding of 0.01.
    let windows = aggregate_all(&[
        rated(
            "e1",
            at("2026-01-10T12:00:00Z"),
            UTC1,
            &[("tokens", dec!(1.005))],
        ),
        rated(
            "e2",
            at("2026-01-11T12:00:00Z"),
            UTC1,
            &[("tokens", dec!(1.005))],
        ),
        rated(
            "closer",
            at("2026-02-01T00:00:00Z") + Duration::seconds(GRACE_PERIOD_S),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    ]);
    let cfg = config();
    let mut h = Harness::new(cfg.clone(), PostProcessor::new(&cfg), 0);
    let mut drafts = Vec::new();
    for w in &windows {
        for o in h
            .process(Some(b"cust-1"), Some(&w.to_json_bytes().unwrap()))
            .unwrap()
        {
            if o.topic == "x.billing.commands" {
                assert_eq!(o.key.as_deref(), Some(&b"cust-1"[..]));
                drafts.push(Command::from_json_slice(o.value.as_deref().unwrap()).unwrap());
            } else {
                let p = Posting::from_json_slice(o.value.as_deref().unwrap()).unwrap();
                assert!(
                    p.kind == "accrual" || p.posting_type == PostingType::ControlTotal,
                    "posted at once: only accruals and control totals, not {p:?}"
                );
            }
        }
        let r = w.lineage_ref();
        let entry = h
            .stores
            .get(LINEAGE, &crate::lineage::window_key(&r))
            .unwrap()
            .unwrap();
        let made: crate::lineage::WindowPostings = serde_json::from_slice(&entry).unwrap();
        assert_eq!(made.invoice.as_deref(), Some("sub-1@2026-01-01"), "{r:?}");
        h.commit().unwrap();
    }
    // January: one billing-period window (line, rounding, reclass) and the
    // period close (base fee, true-up), which closes the invoice.
    let kinds: Vec<(bool, Vec<&str>)> = drafts
        .iter()
        .map(|c| {
            let d = c.draft.as_ref().unwrap();
            assert_eq!(d.invoice_id, "sub-1@2026-01-01");
            assert_eq!(c.actor, DRAFT_ACTOR);
            (
                d.closes,
                d.postings.iter().map(|p| p.kind.as_str()).collect(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (false, vec!["usage", "rounding", "reclass"]),
            (
                true,
                vec!["base_fee", "base_fee", "minimum_true_up", "minimum_true_up"]
            ),
        ]
    );
    assert_ne!(drafts[0].id, drafts[1].id);
}

/// `e` with its measure's group set (and its segment key and id with it).
fn grouped(mut e: RatedEvent, group: &[(&str, &str)]) -> RatedEvent {
    let measure = &mut e.enriched.event.measures[0];
    measure.group = group
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let measure = measure.clone();
    e.measures[0].segment_key = e.enriched.rating_segment_key(&measure);
    e.measures[0].segment_id = e.enriched.rating_segment_id(&measure);
    e
}

#[test]
fn invoice_lines_of_grouped_segments_name_their_group() {
    let day = |d: u32| at(&format!("2026-01-{d:02}T12:00:00Z"));
    let mut events = vec![
        rated("plain", day(10), UTC1, &[("tokens", dec!(1))]),
        grouped(
            rated("a", day(11), UTC1, &[("tokens", dec!(2))]),
            &[("model", "gpt-a"), ("region", "eu")],
        ),
        grouped(
            rated("b", day(12), UTC1, &[("tokens", dec!(3))]),
            &[("model", "gpt-b"), ("region", "eu")],
        ),
        grouped(
            rated("none", day(13), UTC1, &[("tokens", dec!(4))]),
            &[("model", ""), ("region", "eu")],
        ),
    ];
    events.extend(january_events(&[]));
    let postings = post_all(&aggregate_all(&events));
    let mut lines: Vec<(String, String)> = postings
        .iter()
        .filter(|p| p.kind == "usage")
        .map(|p| {
            let l = p.invoice_line.as_ref().unwrap();
            (l.description.clone(), l.amount.to_string())
        })
        .collect();
    lines.sort();
    let want = [
        ("tokens (plan pro v1)", "1.00"),
        ("tokens model=(none), region=eu (plan pro v1)", "4.00"),
        ("tokens model=gpt-a, region=eu (plan pro v1)", "2.00"),
        ("tokens model=gpt-b, region=eu (plan pro v1)", "3.00"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(d, a)| (d.to_string(), a.to_string()))
        .collect();
    // (The closer of january_events is February's: no line here.)
    assert_eq!(lines, want);
    assert_books(&postings);
}
