//! Unit tests of the checks and of rendering.

use chrono::Duration;
use rust_decimal_macros::dec;

use chrono::{DateTime, Utc};

use super::facts::short;
use super::*;
use crate::config::Config;
use crate::contracts::RatedEvent;
use crate::contracts::{ClosedWindow, WindowKind};
use crate::contracts::{Posting, PostingType};
use crate::lineage::DayCounters;
use crate::stages::fixtures::{aggregate_all, config, post_windows, rated, GRACE_PERIOD_S, UTC1};
use crate::topology::names::{self, dlq};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn post_all(windows: &[ClosedWindow]) -> Vec<Posting> {
    post_windows(&config(), windows).0
}

/// January usage with a late event (an adjustment of Jan 11 made in the
/// Jan 15 window), closed by an event on Feb 1; the closer's own windows
/// stay open and are left out (neither rated nor windows).
fn january() -> Facts {
    let t = |d: &str| at(&format!("2026-01-{d}T12:00:00Z"));
    let usage: Vec<RatedEvent> = vec![
        rated(
            "e1",
            t("10"),
            UTC1,
            &[("tokens", dec!(1.004)), ("calls", dec!(0.5))],
        ),
        rated("e2", t("11"), UTC1, &[("tokens", dec!(2.003))]),
        rated("e3", t("15"), UTC1, &[("tokens", dec!(3))]),
        rated("late", t("11"), UTC1, &[("tokens", dec!(0.333))]),
    ];
    let mut all = usage.clone();
    all.push(rated(
        "closer",
        at("2026-02-01T00:00:00Z") + Duration::seconds(GRACE_PERIOD_S),
        UTC1,
        &[("tokens", dec!(1))],
    ));
    let closed = aggregate_all(&all);
    assert!(closed.iter().any(|w| w.adjusts.is_some()));
    let mut f = Facts::default();
    for r in &usage {
        f.add_rated(r);
    }
    f.postings = post_all(&closed);
    f.closed = closed;
    f
}

fn failing(r: &Report) -> Vec<(String, &'static str)> {
    r.failures().map(|c| (c.subject.clone(), c.check)).collect()
}

#[test]
fn a_clean_month_reconciles_with_its_rounding_shown() {
    let f = january();
    let r = check(&f, None);
    assert!(r.ok(), "{}", render(&r, true));
    // Day, billing-period and period-close windows.
    for kind in ["day", "billing_period", "period_close"] {
        assert!(r.windows.iter().any(|w| w.id.kind == kind), "{kind}");
    }
    let jan11 = r
        .windows
        .iter()
        .find(|w| w.id.kind == "day" && w.id.window == "2026-01-11" && w.meter == "tokens")
        .unwrap();
    // The late event counts toward Jan 11, where it happened.
    assert_eq!(jan11.rated.as_deref(), Some("2.336"));
    assert_eq!(jan11.closed, "2.336");
    assert_eq!(jan11.events, 2);
    // Rounded per window: 2.003 -> 2.00 and 0.333 -> 0.33.
    assert_eq!(jan11.posted_rounded, "2.33");
    assert_eq!(jan11.rounding, "-0.006");
    assert!(r.rounding.contains_key("USD"));
    let text = render(&r, false);
    assert!(text.contains("reconcile: OK"), "{text}");
    assert!(r.checks.iter().any(|c| c.check == "unbilled_cleared"));
    assert!(r.checks.iter().any(|c| c.check == "period_close"));
}

#[test]
fn every_subscription_period_before_the_watermark_is_closed_once() {
    // January's books; sub-1 started Dec 1, 2025 (its December has no
    // usage), the watermark is in February.
    let mut f = january();
    let sub = |id: &str, start: &str| {
        serde_json::from_value::<crate::refdata::Subscription>(serde_json::json!({
            "id": id, "customer_id": "cust-1", "plan_id": "pro", "start": start,
            "end": null, "billing_anchor_day": 1, "time_zone": "UTC",
            "currency": "USD", "legal_entity": "ml-us"}))
        .unwrap()
    };
    f.subscriptions = vec![sub("sub-1", "2026-01-01T00:00:00Z")];
    f.rated_partitions = 1;
    f.watermarks
        .insert(0, at("2026-02-01T00:00:00Z").timestamp_millis());
    assert!(check(&f, None).ok(), "{}", render(&check(&f, None), true));
    // December was never closed: named.
    f.subscriptions = vec![sub("sub-1", "2025-12-01T00:00:00Z")];
    assert_eq!(
        failing(&check(&f, None)),
        vec![(
            "subscription sub-1 period 2025-12-01".to_string(),
            "subscription_period_closed"
        )]
    );
    // January closed twice: named too.
    f.subscriptions = vec![sub("sub-1", "2026-01-01T00:00:00Z")];
    let jan = f
        .closed
        .iter()
        .find(|w| w.kind == WindowKind::PeriodClose)
        .unwrap()
        .clone();
    f.closed.push(jan);
    assert!(failing(&check(&f, None)).contains(&(
        "subscription sub-1 period 2026-01-01".to_string(),
        "subscription_period_closed"
    )));
}

#[test]
fn a_lost_window_fails_naming_it() {
    let mut f = january();
    // usage.windows lost Jan 10's tokens day window before post read it.
    let lost = |w: &ClosedWindow| {
        w.kind == WindowKind::Day
            && w.window.id == "2026-01-10"
            && w.segment.as_ref().unwrap().meter == "tokens"
    };
    let seg = f
        .closed
        .iter()
        .find(|w| lost(w))
        .unwrap()
        .segment
        .clone()
        .unwrap();
    f.closed.retain(|w| !lost(w));
    f.postings.retain(|p| {
        !(p.window.id == "2026-01-10" && p.segment_id.as_ref() == Some(&seg.segment_id))
    });
    let r = check(&f, None);
    let fails = failing(&r);
    let subject = format!("window day 2026-01-10 segment {}", short(&seg.segment_id));
    assert!(
        fails.contains(&(subject.clone(), "rated_vs_windows")),
        "{fails:?}"
    );
    // Post's rounding entry was computed with the lost accrual in it:
    // the segment's unbilled receivable no longer clears either.
    assert!(
        fails.iter().any(|(_, c)| *c == "unbilled_cleared"),
        "{fails:?}"
    );
    let text = render(&r, false);
    assert!(
        text.contains(&format!(
            "FAIL {subject}: rated_vs_windows: rated 1.004 != closed 0 + open 0"
        )),
        "{text}"
    );
    assert!(text.contains("reconcile: FAILED"));
}

#[test]
fn fabricated_duplicated_and_unbalanced_postings_fail() {
    let base = january();
    let accrual = base
        .postings
        .iter()
        .find(|p| p.kind == "accrual" && p.window.id == "2026-01-15")
        .unwrap()
        .clone();
    let control = base
        .postings
        .iter()
        .find(|p| p.posting_type == PostingType::ControlTotal && p.window.id == "2026-01-15")
        .unwrap()
        .clone();
    let seg = short(accrual.segment_id.as_deref().unwrap());

    // A fabricated accrual for a day that had no usage.
    let mut f = january();
    let mut fake = accrual.clone();
    fake.window.id = "2026-01-20".into();
    f.postings.push(fake);
    let fails = failing(&check(&f, None));
    assert!(fails.contains(&(
        format!("window day 2026-01-20 segment {seg}"),
        "posted_without_window"
    )));

    // An extra accrual for a real window: its accruals exceed the control total.
    let mut f = january();
    f.postings.push(accrual.clone());
    let fails = failing(&check(&f, None));
    assert!(
        fails.contains(&(
            format!("window day 2026-01-15 segment {seg}"),
            "accrual_amount"
        )),
        "{fails:?}"
    );

    // A window posted twice.
    let mut f = january();
    f.postings.push(control);
    let fails = failing(&check(&f, None));
    assert!(fails.contains(&(
        format!("window day 2026-01-15 segment {seg}"),
        "posted_once"
    )));

    // An unbalanced entry.
    let mut f = january();
    let p = f
        .postings
        .iter_mut()
        .find(|p| p.kind == "accrual" && p.window.id == "2026-01-15")
        .unwrap();
    p.lines[0].amount += dec!(0.01);
    let fails = failing(&check(&f, None));
    assert!(fails.contains(&(
        format!("window day 2026-01-15 segment {seg}"),
        "journal_balanced"
    )));
}

#[test]
fn period_filter_keeps_only_matching_ids() {
    let f = january();
    let r = check(&f, Some("2026-01-1"));
    assert!(r
        .windows
        .iter()
        .all(|w| w.id.window.starts_with("2026-01-1")));
    assert!(r.windows.iter().any(|w| w.id.window == "2026-01-15"));
    assert!(check(&f, Some("2026-02")).windows.is_empty());
}

fn counters(records_in: u64, passed: u64, held: u64, released: u64) -> DayCounters {
    DayCounters {
        records_in,
        passed,
        held,
        released,
    }
}

#[test]
fn day_counts_balance_or_name_the_day() {
    let mut f = Facts::default();
    let d = "2026-10-05";
    // 10 in: 7 validated, 2 dead-lettered, 1 duplicate; enrich: 6 + 1
    // parked, later re-emitted; every topic agrees.
    f.add_counters("validate", d, &counters(10, 7, 2, 1));
    f.add_counters("enrich", d, &counters(4, 3, 1, 1));
    f.add_counters("enrich", d, &counters(3, 3, 0, 0));
    for (t, n) in [
        (names::VALIDATED.to_string(), 7),
        (dlq("validate"), 2),
        (names::ENRICHED.to_string(), 7),
        (names::RATED.to_string(), 6),
        (dlq("rate"), 1),
    ] {
        for _ in 0..n {
            f.add_topic_day(&t, d.into());
        }
    }
    // A reject with no readable time.
    f.add_counters("validate", "unknown", &counters(1, 0, 1, 0));
    f.add_topic_day(&dlq("validate"), "unknown".into());
    f.events_total = 11;
    let r = check(&f, None);
    assert!(r.ok(), "{}", render(&r, true));
    assert_eq!(r.days.len(), 2);

    // One validated record missing from the topic, one enriched event
    // that enrich never counted.
    f.topic_days.insert((names::VALIDATED.into(), d.into()), 6);
    f.add_counters("enrich", d, &counters(0, 0, 1, 0));
    let fails = failing(&check(&f, None));
    let day = format!("day {d}");
    assert!(fails.contains(&(day.clone(), "validated_topic")));
    assert!(fails.contains(&(day.clone(), "enrich_split")));
    assert!(!fails.contains(&(day, "events_in")));
    // More events on the topic than validate read: in flight explains it.
    f.events_total = 12;
    assert!(failing(&check(&f, None)).contains(&("all days".into(), "events_topic")));
    f.in_flight.insert("validate".into(), 1);
    assert!(!failing(&check(&f, None)).contains(&("all days".into(), "events_topic")));
}

#[test]
fn a_record_that_is_not_a_posting_fails_naming_it() {
    let mut f = january();
    let r = check(&f, None);
    let ok: Vec<&Check> = r
        .checks
        .iter()
        .filter(|c| c.check == "unreadable_records")
        .collect();
    assert_eq!(ok.len(), 3);
    assert!(ok.iter().all(|c| c.ok));
    f.unreadable
        .entry(names::POSTINGS.to_string())
        .or_default()
        .add(4, 17, "missing field `posting_type`");
    // Whatever the period: the record has none.
    for period in [None, Some("2026-01")] {
        let r = check(&f, period);
        assert!(!r.ok());
        assert_eq!(
            failing(&r),
            [("topic finance.postings".to_string(), "unreadable_records")]
        );
        let text = render(&r, false);
        assert!(
            text.contains(
                "FAIL topic finance.postings: unreadable_records: 1 record(s) of \
                 finance.postings are not postings and were left out: partition 4 offset 17"
            ),
            "{text}"
        );
        assert!(text.contains("reconcile: FAILED"), "{text}");
    }
    let text = prometheus(&check(&f, None), at("2026-02-02T00:00:00Z"));
    assert!(
        text.contains(
            "meterline_reconcile_check_failures{period=\"all\",check=\"unreadable_records\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "meterline_reconcile_count_difference{period=\"all\",check=\"unreadable_records\"} 1\n"
        ),
        "{text}"
    );
}

#[test]
fn metrics_carry_the_results() {
    let mut f = january();
    let text = prometheus(&check(&f, None), at("2026-02-02T00:00:00Z"));
    assert!(
        text.contains("meterline_reconcile_success{period=\"all\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("meterline_reconcile_checks_failed{period=\"all\"} 0\n"));
    assert!(text.contains(
        "meterline_reconcile_check_failures{period=\"all\",check=\"rated_vs_windows\"} 0\n"
    ));
    assert!(text
        .contains("meterline_reconcile_last_run_timestamp_seconds{period=\"all\"} 1769990400\n"));
    f.closed.retain(|w| w.window.id != "2026-01-10");
    let text = prometheus(&check(&f, Some("2026-01")), at("2026-02-02T00:00:00Z"));
    assert!(text.contains("meterline_reconcile_success{period=\"2026-01\"} 0\n"));
    assert!(
        text.contains(
            "meterline_reconcile_check_failures{period=\"2026-01\",check=\"rated_vs_windows\"} 2\n"
        ),
        "{text}"
    );
    assert!(text.contains(
        "meterline_reconcile_amount_difference{period=\"2026-01\",check=\"rated_vs_windows\",currency=\"USD\"} 1.504\n"
    ), "{text}");
    // Every line is a comment or `name{labels} value`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = l.rsplit_once(' ').unwrap();
        assert!(
            series.starts_with("meterline_reconcile_") && series.ends_with('}'),
            "{l}"
        );
        value.parse::<f64>().unwrap();
    }
}

/// January through post and the invoice stage under `invoice_config`; the
/// facts and the invoice harness (to send commands).
fn january_invoiced(
    invoice_config: &str,
) -> (
    Facts,
    crate::runtime::testing::Harness<crate::stages::invoice::InvoiceProcessor>,
) {
    let mut f = january();
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = format!("[topology]\nnamespace = \"x.\"\n[invoice]\n{invoice_config}\n");
    let cfg = Config::from_parts(&text, "test", &[], dir).unwrap();
    let (postings, _, h) = crate::stages::fixtures::post_and_invoice(&cfg, &f.closed);
    f.postings = postings;
    f.invoices = invoices_of(&h);
    (f, h)
}

fn invoices_of(
    h: &crate::runtime::testing::Harness<crate::stages::invoice::InvoiceProcessor>,
) -> std::collections::BTreeMap<String, crate::contracts::Invoice> {
    use crate::stages::invoice::state::{invoice_key, InvoiceState, INVOICES};
    let v = h
        .stores
        .get(INVOICES, &invoice_key("sub-1@2026-01-01"))
        .unwrap()
        .unwrap();
    let st: InvoiceState = serde_json::from_slice(&v).unwrap();
    [(st.doc.invoice_id.clone(), st.doc)].into()
}

#[test]
fn a_held_invoice_is_not_a_failure_and_once_approved_its_postings_are_checked() {
    use crate::contracts::{Command, CommandKind};
    let (mut f, mut h) = january_invoiced("approval = \"manual\"");
    let r = check(&f, None);
    assert!(r.ok(), "{}", render(&r, true));
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("1 invoice(s) wait for approval")),
        "{:?}",
        r.notes
    );
    let mut approve = Command::new(
        "a1",
        CommandKind::Approve,
        "cust-1",
        "alice",
        at("2026-02-02T00:00:00Z"),
    );
    approve.invoice_id = Some("sub-1@2026-01-01".into());
    let out = h
        .process(Some(b"cust-1"), Some(&approve.to_json_bytes().unwrap()))
        .unwrap();
    h.commit().unwrap();
    f.postings.extend(
        out.iter()
            .filter(|o| o.topic == "x.finance.postings")
            .map(|o| Posting::from_json_slice(o.value.as_deref().unwrap()).unwrap()),
    );
    f.invoices = invoices_of(&h);
    let r = check(&f, None);
    assert!(r.ok(), "{}", render(&r, true));
    assert!(r
        .checks
        .iter()
        .any(|c| c.check == "invoice_posted_once" && c.ok));
    // A posting of the invoice delivered twice fails, naming the invoice.
    let twice = f
        .postings
        .iter()
        .find(|p| p.kind == "base_fee" && p.posting_type == PostingType::InvoiceLine)
        .unwrap()
        .clone();
    f.postings.push(twice);
    let r = check(&f, None);
    assert!(failing(&r).contains(&("invoice sub-1@2026-01-01".into(), "invoice_posted_once")));
}
