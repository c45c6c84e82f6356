use chrono::{DateTime, Duration, Utc};
use rust_decimal_macros::dec;
use serde_json::json;

use super::*;
use crate::contracts::RatedEvent;
use crate::runtime::testing::{Harness, Record};
use crate::stages::fixtures::{aggregate_all, config, rated, Sub, UTC1};
use crate::store::PartitionStores;

/// The test config with `extra` TOML appended.
pub(crate) fn config_with(extra: &str) -> Config {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = format!("[topology]\nnamespace = \"x.\"\n{extra}");
    Config::from_parts(&text, "test", &[], dir).unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

type H = Harness<AggregateProcessor>;

/// `p` over empty stores with the test config; the clock (which records
/// see; the test sets it) at 0.
fn harness_of(p: AggregateProcessor) -> H {
    Harness::new(config(), p, 0)
}

fn harness() -> H {
    harness_of(AggregateProcessor::new(&config()))
}

fn run_bytes(h: &mut H, value: &[u8]) -> Result<Vec<ClosedWindow>, StageError> {
    assert_eq!(h.input_topic(), "x.usage.rated");
    let out = h.process_record(Record {
        key: Some(b"cust-1"),
        value: Some(value),
        timestamp_ms: Some(42),
        ..Record::default()
    })?;
    // As the runtime does before each commit (here: after every record).
    h.flush()?;
    Ok(parse_out(&out))
}

fn parse_out(out: &[Output]) -> Vec<ClosedWindow> {
    out.iter()
        .map(|o| {
            assert_eq!(o.topic, "x.usage.windows");
            assert_eq!(o.key.as_deref(), Some(&b"cust-1"[..]));
            ClosedWindow::from_json_slice(o.value.as_deref().unwrap()).unwrap()
        })
        .collect()
}

fn run(h: &mut H, e: &RatedEvent) -> Vec<ClosedWindow> {
    run_bytes(h, &serde_json::to_vec(e).unwrap()).unwrap()
}

/// A punctuation at `now`; the clock records see is left where it was.
fn punctuate(h: &mut H, now: DateTime<Utc>) -> Vec<ClosedWindow> {
    let records_clock = h.now_ms;
    h.now_ms = now.timestamp_millis();
    let out = h.punctuate().unwrap();
    h.now_ms = records_clock;
    parse_out(&out)
}

fn clock_of(s: &PartitionStores) -> PartitionClock {
    serde_json::from_slice(&s.get(WINDOWS, CLOCK_KEY).unwrap().unwrap()).unwrap()
}

/// What one event's segment closes into, in the order closed windows come.
const DAY_PERIOD_CLOSE: [WindowKind; 3] = [
    WindowKind::Day,
    WindowKind::BillingPeriod,
    WindowKind::PeriodClose,
];

fn kinds(out: &[ClosedWindow]) -> Vec<WindowKind> {
    out.iter().map(|w| w.kind).collect()
}

fn grace() -> Duration {
    Duration::seconds(GRACE_PERIOD_S)
}

#[test]
fn billing_periods_of_28_29_30_31_days_close_at_local_midnight() {
    // (time zone, anchor, an instant in the period, period id, days)
    let cases = [
        ("UTC", 1, "2026-02-10T12:00:00Z", "2026-02-01", 28),
        ("UTC", 1, "2028-02-10T12:00:00Z", "2028-02-01", 29),
        ("Asia/Tokyo", 1, "2026-04-10T12:00:00Z", "2026-04-01", 30),
        (
            "America/New_York",
            1,
            "2026-01-10T12:00:00Z",
            "2026-01-01",
            31,
        ),
        // Anchor 31 clamps to Feb 28: the period from Jan 31 has 28 days.
        (
            "Europe/Berlin",
            31,
            "2026-02-10T12:00:00Z",
            "2026-01-31",
            28,
        ),
    ];
    for (tz, anchor, time, id, days) in cases {
        let sub = Sub {
            tz,
            anchor,
            plan_version: 1,
        };
        let t = at(time);
        let first = rated("a", t, sub, &[("tokens", dec!(1.5))]);
        let end = first.enriched.billing_period.end;
        let tz_ = calendar::parse_tz(tz).unwrap();
        // The period ends at local midnight of the next anchor date.
        assert_eq!(end.with_timezone(&tz_).format("%H:%M").to_string(), "00:00");
        // Just inside the grace: nothing of the period closes yet.
        let inside = rated(
            "b",
            end + grace() - Duration::seconds(1),
            sub,
            &[("tokens", dec!(1))],
        );
        let out = aggregate_all(&[first.clone(), inside.clone()]);
        assert!(
            out.iter().all(|w| w.kind == WindowKind::Day),
            "{tz}: {out:?}"
        );
        // Exactly at end + grace the watermark reaches the end: closed.
        let closing = rated("c", end + grace(), sub, &[("tokens", dec!(1))]);
        let out = aggregate_all(&[first, closing]);
        let period: Vec<_> = out
            .iter()
            .filter(|w| w.kind == WindowKind::BillingPeriod)
            .collect();
        assert_eq!(period.len(), 1, "{tz}");
        let w = &period[0];
        assert_eq!(w.window.id, id, "{tz}");
        assert_eq!(w.window.end, end);
        assert_eq!((w.window.end - w.window.start).num_days(), days, "{tz}");
        assert_eq!(w.amount, dec!(1.5));
        assert_eq!(w.event_count, 1);
        assert_eq!(w.clearing.period, w.window);
        // Order: the day, then the segment's period, then the period close.
        assert_eq!(kinds(&out), DAY_PERIOD_CLOSE, "{tz}");
        assert_eq!(out[2].segment, None);
        assert_eq!(out[2].base_fee, Some(dec!(10)));
    }
}

#[test]
fn local_day_follows_the_subscription_time_zone() {
    let ny = Sub {
        tz: "America/New_York",
        anchor: 1,
        plan_version: 1,
    };
    // 04:30 UTC on Feb 1 is still Jan 31 in New York, and still January's period.
    let e = rated("a", at("2026-02-01T04:30:00Z"), ny, &[("tokens", dec!(2))]);
    assert_eq!(e.enriched.local_day.id, "2026-01-31");
    let later = rated(
        "b",
        at("2026-02-01T05:00:00Z") + grace(),
        ny,
        &[("tokens", dec!(1))],
    );
    let out = aggregate_all(&[e, later]);
    let ids: Vec<(WindowKind, &str)> = out.iter().map(|w| (w.kind, w.window.id.as_str())).collect();
    assert_eq!(
        ids,
        [
            (WindowKind::Day, "2026-01-31"),
            (WindowKind::BillingPeriod, "2026-01-01"),
            (WindowKind::PeriodClose, "2026-01-01")
        ]
    );
    assert_eq!(out[0].window.start, at("2026-01-31T05:00:00Z"));
    assert_eq!(out[0].window.end, at("2026-02-01T05:00:00Z"));
}

#[test]
fn late_within_grace_joins_its_window_and_windows_close_once() {
    let mut h = harness();
    let d = at("2026-01-10T00:00:00Z");
    assert!(run(
        &mut h,
        &rated("a", d + Duration::hours(12), UTC1, &[("tokens", dec!(1))])
    )
    .is_empty());
    // Next day, but within the grace of the 10th's end.
    let next = d + Duration::days(1) + Duration::minutes(5);
    assert!(run(&mut h, &rated("b", next, UTC1, &[("tokens", dec!(2))])).is_empty());
    assert_eq!(
        clock_of(&h.stores).watermark_ms,
        Some((next - grace()).timestamp_millis())
    );
    // Out of order but within the grace: the 10th is still open.
    assert!(run(
        &mut h,
        &rated("c", d + Duration::hours(23), UTC1, &[("tokens", dec!(4))])
    )
    .is_empty());
    // The watermark reaches the end of the 10th: it closes, with a and c.
    let out = run(
        &mut h,
        &rated(
            "d",
            d + Duration::days(1) + grace(),
            UTC1,
            &[("tokens", dec!(8))],
        ),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window.id, "2026-01-10");
    assert_eq!((out[0].amount, out[0].event_count), (dec!(5), 2));
    assert_eq!(out[0].adjusts, None);
    assert_eq!(
        out[0].closed_at_watermark_ms,
        (d + Duration::days(1)).timestamp_millis()
    );
    // Emitted once: later events do not emit it again, and the store no longer has it.
    let out = run(
        &mut h,
        &rated(
            "e",
            d + Duration::days(1) + Duration::hours(1),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    );
    assert!(out.is_empty());
    // A restart (new processor, committed store) neither re-emits nor loses anything.
    h.commit().unwrap();
    h.processor = AggregateProcessor::new(&config());
    let out = run(
        &mut h,
        &rated(
            "f",
            d + Duration::days(2) + grace(),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window.id, "2026-01-11");
    assert_eq!((out[0].amount, out[0].event_count), (dec!(11), 3));
}

#[test]
fn a_late_event_beyond_the_grace_is_an_adjustment_in_the_current_window() {
    let mut h = harness();
    let jan10 = at("2026-01-10T12:00:00Z");
    run(&mut h, &rated("a", jan10, UTC1, &[("tokens", dec!(1))]));
    // Jan 12 noon: the 10th closes.
    let now = at("2026-01-12T12:00:00Z");
    let out = run(&mut h, &rated("b", now, UTC1, &[("tokens", dec!(1))]));
    assert_eq!(out.len(), 1);
    // Late for the 10th: into the current day (the day of the watermark,
    // Jan 12) as an adjustment naming the 10th; January is still open.
    let out = run(&mut h, &rated("late", jan10, UTC1, &[("tokens", dec!(7))]));
    assert!(out.is_empty());
    let out = run(
        &mut h,
        &rated(
            "c",
            at("2026-01-13T00:00:00Z") + grace(),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    );
    let ids: Vec<(&str, Option<&str>, Decimal)> = out
        .iter()
        .map(|w| {
            (
                w.window.id.as_str(),
                w.adjusts.as_ref().map(|a| a.id.as_str()),
                w.amount,
            )
        })
        .collect();
    // Key order within one day: the regular window, then adjustments.
    assert_eq!(
        ids,
        [
            ("2026-01-12", None, dec!(1)),
            ("2026-01-12", Some("2026-01-10"), dec!(7))
        ]
    );
    assert_eq!(out[1].clearing.period.id, "2026-01-01");
    assert_eq!(out[1].clearing.adjusts, None);
    // February: a January event is late for its whole period.
    let feb = at("2026-02-03T00:00:00Z");
    let out = run(&mut h, &rated("d", feb, UTC1, &[("tokens", dec!(1))]));
    let january: Vec<_> = out.iter().filter(|w| w.kind != WindowKind::Day).collect();
    assert_eq!(january.len(), 2);
    assert_eq!(january[0].amount, dec!(10));
    assert_eq!(january[1].kind, WindowKind::PeriodClose);
    assert_eq!(january[1].event_count, 4);
    let out = run(&mut h, &rated("late2", jan10, UTC1, &[("tokens", dec!(3))]));
    assert!(out.is_empty());
    // Close February: the adjustment is in February's period, naming January,
    // and is not part of February's period close.
    let out = run(
        &mut h,
        &rated(
            "e",
            at("2026-03-01T00:00:00Z") + grace(),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    );
    let adj: Vec<_> = out.iter().filter(|w| w.adjusts.is_some()).collect();
    assert_eq!(adj.len(), 2);
    for w in &adj {
        assert_eq!(
            w.adjusts.as_ref().unwrap().id,
            if w.kind == WindowKind::Day {
                "2026-01-10"
            } else {
                "2026-01-01"
            }
        );
        assert_eq!(w.amount, dec!(3));
        assert_eq!(w.clearing.period.id, "2026-02-01");
        assert_eq!(w.clearing.adjusts.as_ref().unwrap().id, "2026-01-01");
    }
    assert_eq!(adj[0].kind, WindowKind::Day);
    // The current day is the watermark's: Feb 3 00:00 minus the grace.
    assert_eq!(adj[0].window.id, "2026-02-02");
    let close = out
        .iter()
        .find(|w| w.kind == WindowKind::PeriodClose)
        .unwrap();
    assert_eq!((close.amount, close.event_count), (dec!(1), 1));
}

#[test]
fn an_idle_partition_advances_by_wall_clock() {
    let mut h = harness();
    let t = at("2026-01-10T12:00:00Z");
    h.now_ms = t.timestamp_millis();
    run(&mut h, &rated("a", t, UTC1, &[("tokens", dec!(1))]));
    h.commit().unwrap();
    let end = at("2026-01-11T00:00:00Z");
    // Not idle long enough: nothing, and nothing written.
    let soon = t + Duration::seconds(IDLE_ADVANCE_S - 1);
    assert!(punctuate(&mut h, soon).is_empty());
    // Idle, but the wall-clock watermark would close nothing: no write.
    let idle = t + Duration::seconds(IDLE_ADVANCE_S);
    assert!(punctuate(&mut h, idle).is_empty());
    assert!(!h.stores.has_pending());
    // Idle and past the day's end plus the grace: the day closes.
    let out = punctuate(&mut h, end + grace());
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window.id, "2026-01-10");
    assert_eq!(
        clock_of(&h.stores).watermark_ms,
        Some(end.timestamp_millis())
    );
    // Input resets the idle timer.
    h.now_ms = (end + grace()).timestamp_millis();
    run(
        &mut h,
        &rated("b", end + Duration::hours(1), UTC1, &[("tokens", dec!(1))]),
    );
    assert!(punctuate(&mut h, end + grace() + Duration::seconds(30)).is_empty());
}

#[test]
fn an_overflowing_event_is_refused_and_the_windows_keep_what_came_before() {
    let mut h = harness();
    let t = at("2026-01-10T12:00:00Z");
    h.now_ms = t.timestamp_millis();
    let send =
        |h: &mut H, e: &RatedEvent| h.process(Some(b"cust-1"), Some(&e.to_json_bytes().unwrap()));
    // Not flushed: the windows of "a" wait in the write-back cache.
    send(&mut h, &rated("a", t, UTC1, &[("tokens", dec!(1.5))])).unwrap();
    let mut huge = rated("b", t + Duration::seconds(1), UTC1, &[("tokens", dec!(1))]);
    huge.measures[0].marginal_amount = Decimal::MAX;
    match send(&mut h, &huge) {
        Err(StageError::Reject { code, .. }) => {
            assert_eq!(code, crate::money::reasons::AMOUNT_OVERFLOW)
        }
        other => panic!("{other:?}"),
    }
    let c = rated("c", t + Duration::seconds(2), UTC1, &[("tokens", dec!(2))]);
    send(&mut h, &c).unwrap();
    h.commit().unwrap();
    let out = punctuate(&mut h, at("2026-02-01T00:00:00Z") + grace());
    assert_eq!(kinds(&out), DAY_PERIOD_CLOSE);
    for w in &out {
        // "a" and "c", never "b".
        assert_eq!((w.amount, w.event_count), (dec!(3.5), 2), "{:?}", w.kind);
        let mut digest = add_digest(&empty_digest(), &event_digest("svc", "a")).unwrap();
        digest = add_digest(&digest, &event_digest("svc", "c")).unwrap();
        assert_eq!(w.lineage_digest, digest);
    }
}

#[test]
fn lineage_and_sums_do_not_depend_on_arrival_order() {
    let t = at("2026-01-10T01:00:00Z");
    let events: Vec<RatedEvent> = (0..5)
        .map(|i| {
            rated(
                &format!("e{i}"),
                t + Duration::minutes(i),
                UTC1,
                &[("tokens", Decimal::new(i + 1, 1)), ("calls", dec!(0.003))],
            )
        })
        .collect();
    let closer = rated(
        "z",
        at("2026-02-01T00:00:00Z") + grace(),
        UTC1,
        &[("tokens", dec!(1))],
    );
    let mut forward = events.clone();
    forward.push(closer.clone());
    let mut backward: Vec<_> = events.into_iter().rev().collect();
    backward.push(closer);
    let a = aggregate_all(&forward);
    let b = aggregate_all(&backward);
    assert_eq!(a.len(), 2 + 2 + 1);
    assert_eq!(a, b);
    let close = a.last().unwrap();
    assert_eq!(close.kind, WindowKind::PeriodClose);
    // Each event once, though it has two measures.
    assert_eq!(close.event_count, 5);
    assert_eq!(close.amount, dec!(1.5) + dec!(0.015));
    let mut expected = empty_digest();
    for i in 0..5 {
        expected = add_digest(&expected, &event_digest("svc", &format!("e{i}"))).unwrap();
    }
    assert_eq!(close.lineage_digest, expected);
    assert_ne!(expected, empty_digest());
}

#[test]
fn digest_addition_wraps_and_carries() {
    let ones = hex::encode([0xFFu8; 32]);
    let mut one = [0u8; 32];
    one[31] = 1;
    assert_eq!(add_digest(&ones, &one).unwrap(), empty_digest());
    let mut x = [0u8; 32];
    x[31] = 0xFF;
    let r = add_digest(&add_digest(&empty_digest(), &x).unwrap(), &one).unwrap();
    assert!(r.ends_with("0100"), "{r}");
    assert!(add_digest("zz", &one).is_err());
}

#[test]
fn malformed_input_is_rejected_and_writes_nothing() {
    let mut h = harness();
    match run_bytes(&mut h, b"{nope") {
        Err(StageError::Reject { code, .. }) => assert_eq!(code, MALFORMED_RATED_EVENT),
        other => panic!("{other:?}"),
    }
    let mut e = rated(
        "a",
        at("2026-01-10T00:00:00Z"),
        UTC1,
        &[("tokens", dec!(1))],
    );
    e.measures.clear();
    match run_bytes(&mut h, &serde_json::to_vec(&e).unwrap()) {
        Err(StageError::Reject { code, .. }) => assert_eq!(code, MALFORMED_RATED_EVENT),
        other => panic!("{other:?}"),
    }
    assert!(!h.stores.has_pending());
}

#[test]
fn closed_window_json_round_trips() {
    let e = rated(
        "a",
        at("2026-01-10T00:00:00Z"),
        UTC1,
        &[("tokens", dec!(1.25))],
    );
    let closer = rated(
        "z",
        at("2026-01-11T00:00:00Z") + grace(),
        UTC1,
        &[("tokens", dec!(1))],
    );
    let out = aggregate_all(&[e, closer]);
    let v = serde_json::to_value(&out[0]).unwrap();
    assert_eq!(v["kind"], "day");
    assert_eq!(v["amount"], "1.25");
    assert_eq!(v["window"]["start"], "2026-01-10T00:00:00Z");
    assert_eq!(v["lineage_digest"].as_str().unwrap().len(), 64);
    assert_eq!(
        ClosedWindow::from_json_slice(&out[0].to_json_bytes().unwrap()).unwrap(),
        out[0]
    );
}

#[test]
fn grace_and_idle_advance_come_from_the_config() {
    let cfg = config_with("[aggregate]\ngrace_period_s = 60\nidle_advance_s = 2\n");
    let mut h = Harness::new(cfg.clone(), AggregateProcessor::new(&cfg), 0);
    let t = at("2026-01-10T12:00:00Z");
    h.now_ms = t.timestamp_millis();
    run(&mut h, &rated("a", t, UTC1, &[("tokens", dec!(1))]));
    h.commit().unwrap();
    let end = at("2026-01-11T00:00:00Z");
    // 60 s after the day's end: the default grace (600 s) would keep it open.
    let out = run(
        &mut h,
        &rated(
            "b",
            end + Duration::seconds(60),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window.id, "2026-01-10");
    assert_eq!(
        clock_of(&h.stores).watermark_ms,
        Some(end.timestamp_millis())
    );
    h.commit().unwrap();
    // Idle for 2 s (not 60) and the wall clock past Jan 11 + 60 s: it closes.
    let wall = at("2026-01-12T00:01:00Z");
    h.now_ms = wall.timestamp_millis();
    run(
        &mut h,
        &rated(
            "c",
            end + Duration::seconds(61),
            UTC1,
            &[("tokens", dec!(1))],
        ),
    );
    h.commit().unwrap();
    assert!(punctuate(&mut h, wall + Duration::seconds(1)).is_empty());
    let out = punctuate(&mut h, wall + Duration::seconds(2));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].window.id, "2026-01-11");
    assert_eq!(out[0].event_count, 2);
}

/// Period-close windows emitted, as (period id, event count, amount).
fn closes(ws: &[ClosedWindow]) -> Vec<(String, u64, Decimal)> {
    ws.iter()
        .filter(|w| w.kind == WindowKind::PeriodClose)
        .map(|w| (w.window.id.clone(), w.event_count, w.amount))
        .collect()
}

#[test]
fn periods_without_usage_close_until_the_subscription_ends() {
    // Open-ended: January has usage, February and March none; the wall
    // clock on April 15 closes all three, and April waits for its end.
    let mut h = harness();
    let jan = rated("e1", at("2026-01-10T10:00:00Z"), UTC1, &[("m", dec!(3))]);
    assert!(closes(&run(&mut h, &jan)).is_empty());
    let out = punctuate(&mut h, at("2026-04-15T00:00:00Z"));
    assert_eq!(
        closes(&out),
        vec![
            ("2026-01-01".to_string(), 1, dec!(3)),
            ("2026-02-01".to_string(), 0, dec!(0)),
            ("2026-03-01".to_string(), 0, dec!(0)),
        ]
    );
    let feb = out
        .iter()
        .find(|w| w.kind == WindowKind::PeriodClose && w.window.id == "2026-02-01")
        .unwrap();
    // The empty period keeps the fee and commitment it is billed with.
    assert_eq!(
        (feb.base_fee, feb.minimum_commitment),
        (Some(dec!(10)), Some(dec!(100)))
    );
    assert_eq!(feb.lineage_digest, empty_digest());
    assert_eq!(feb.clearing.period.id, "2026-02-01");
    // April's is open in the store; usage in April lands in it.
    let apr = rated("e2", at("2026-04-20T10:00:00Z"), UTC1, &[("m", dec!(2))]);
    run(&mut h, &apr);
    let out = punctuate(&mut h, at("2026-05-02T00:00:00Z"));
    assert_eq!(closes(&out), vec![("2026-04-01".to_string(), 1, dec!(2))]);

    // Ending on March 1: February is the last period billed.
    let mut h = harness();
    let mut jan = jan.clone();
    jan.enriched.subscription_end = Some(at("2026-03-01T00:00:00Z"));
    run(&mut h, &jan);
    let out = punctuate(&mut h, at("2026-06-15T00:00:00Z"));
    assert_eq!(
        closes(&out).into_iter().map(|c| c.0).collect::<Vec<_>>(),
        vec!["2026-01-01", "2026-02-01"]
    );
    // Nothing is left open: the store holds only the clock.
    let left = h
        .stores
        .scan(WINDOWS, &[WINDOW_PREFIX], &[WINDOW_PREFIX + 1], 10)
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    // Ending mid-March: March overlaps it, so it is billed in full.
    let mut h = harness();
    let mut jan = rated("e1", at("2026-01-10T10:00:00Z"), UTC1, &[("m", dec!(3))]);
    jan.enriched.subscription_end = Some(at("2026-03-15T00:00:00Z"));
    run(&mut h, &jan);
    let out = punctuate(&mut h, at("2026-06-15T00:00:00Z"));
    assert_eq!(closes(&out).len(), 3);
}

// ---- periods driven by subscriptions (see `periods`) -------------------------

mod subscription_periods {
    use super::*;
    use crate::refdata::parse_jsonl;

    fn customer_line() -> String {
        json!({"id": "cust-1", "name": "Acme", "legal_entity": "acme",
               "erp_customer_id": "C-1", "status": "active"})
        .to_string()
    }

    fn subscription_line(start: &str, end: Option<&str>) -> String {
        json!({"id": "sub-1", "customer_id": "cust-1", "plan_id": "pro",
               "start": start, "end": end,
               "billing_anchor_day": 1, "time_zone": "UTC", "currency": "USD",
               "legal_entity": "ml-us", "minimum_commitment": "100"})
        .to_string()
    }

    fn plan_line(version: u32, effective_from: &str, base_fee: &str) -> String {
        json!({"id": "pro", "version": version, "effective_from": effective_from,
               "currency": "USD", "base_fee": base_fee, "tax_code": format!("TX-V{version}"),
               "charges": {"m": {"model": "per_unit", "unit_price": "1"}},
               "gl_accounts": {"usage_revenue": format!("40{version}0"),
                               "unbilled_receivable": "1210", "receivable": "1200"}})
        .to_string()
    }

    fn load(p: &mut AggregateProcessor, kind: RefKind, lines: &[String]) {
        for (key, value) in parse_jsonl(kind, &lines.join("\n")).unwrap() {
            p.on_table_record(kind.topic(), Some(key.as_bytes()), value.as_deref());
        }
    }

    /// A processor whose tables hold cust-1, sub-1 (from `start`) and the
    /// plan versions given as (version, effective from, base fee).
    fn with_tables(start: &str, versions: &[(u32, &str, &str)]) -> AggregateProcessor {
        let mut p = AggregateProcessor::new(&config());
        load(&mut p, RefKind::Customers, &[customer_line()]);
        let plans: Vec<String> = versions
            .iter()
            .map(|(v, from, fee)| plan_line(*v, from, fee))
            .collect();
        load(&mut p, RefKind::Plans, &plans);
        load(
            &mut p,
            RefKind::Subscriptions,
            &[subscription_line(start, None)],
        );
        p
    }

    fn punctuate_on(h: &mut H, partition: i32, now: DateTime<Utc>) -> Vec<ClosedWindow> {
        h.partition = partition;
        punctuate(h, now)
    }

    /// Two punctuations `idle` apart: the first walks the subscriptions,
    /// the second advances the idle partition's watermark to `now`.
    fn settle(h: &mut H, now: DateTime<Utc>) -> Vec<ClosedWindow> {
        let mut out = punctuate(h, now);
        out.extend(punctuate(h, now + Duration::seconds(IDLE_ADVANCE_S + 1)));
        out
    }

    /// (period id, events, base fee, plan version) of each period close.
    fn fees(ws: &[ClosedWindow]) -> Vec<(String, u64, Option<Decimal>, u32)> {
        ws.iter()
            .filter(|w| w.kind == WindowKind::PeriodClose)
            .map(|w| {
                (
                    w.window.id.clone(),
                    w.event_count,
                    w.base_fee,
                    w.plan_version,
                )
            })
            .collect()
    }

    #[test]
    fn a_subscription_without_usage_closes_every_period_exactly_once() {
        let mut h = harness_of(with_tables(
            "2026-01-01T00:00:00Z",
            &[(1, "2025-01-01T00:00:00Z", "10")],
        ));
        let out = settle(&mut h, at("2026-03-05T00:00:00Z"));
        assert_eq!(
            fees(&out),
            vec![
                ("2026-01-01".to_string(), 0, Some(dec!(10)), 1),
                ("2026-02-01".to_string(), 0, Some(dec!(10)), 1),
            ]
        );
        let jan = &out[0];
        assert_eq!(jan.minimum_commitment, Some(dec!(100)));
        assert_eq!(jan.customer.erp_customer_id, "C-1");
        assert_eq!(jan.gl_accounts.usage_revenue, "4010");

        // Republished records and a later sweep post nothing again.
        load(
            &mut h.processor,
            RefKind::Subscriptions,
            &[subscription_line("2026-01-01T00:00:00Z", None)],
        );
        load(
            &mut h.processor,
            RefKind::Plans,
            &[plan_line(1, "2025-01-01T00:00:00Z", "10")],
        );
        assert!(settle(&mut h, at("2026-03-06T00:00:00Z")).is_empty());

        // A restart (fresh processor, same store) neither: March closes on time.
        h.processor = with_tables("2026-01-01T00:00:00Z", &[(1, "2025-01-01T00:00:00Z", "10")]);
        assert!(settle(&mut h, at("2026-03-07T00:00:00Z")).is_empty());
        let out = settle(&mut h, at("2026-04-02T00:00:00Z"));
        assert_eq!(
            fees(&out),
            vec![("2026-03-01".to_string(), 0, Some(dec!(10)), 1)]
        );
    }

    #[test]
    fn periods_before_the_first_event_close_too_and_usage_periods_once() {
        let mut h = harness_of(with_tables(
            "2026-01-01T00:00:00Z",
            &[(1, "2025-01-01T00:00:00Z", "10")],
        ));
        // The first event comes in February: January must still close.
        let feb = rated("e1", at("2026-02-10T10:00:00Z"), UTC1, &[("m", dec!(3))]);
        assert!(run(&mut h, &feb).is_empty());
        let out = punctuate(&mut h, at("2026-02-10T10:00:00Z"));
        assert_eq!(
            fees(&out),
            vec![("2026-01-01".to_string(), 0, Some(dec!(10)), 1)]
        );
        let out = settle(&mut h, at("2026-03-02T00:00:00Z"));
        assert_eq!(
            fees(&out),
            vec![("2026-02-01".to_string(), 1, Some(dec!(10)), 1)]
        );
        assert_eq!(closes(&out), vec![("2026-02-01".to_string(), 1, dec!(3))]);
    }

    #[test]
    fn a_subscription_created_after_its_periods_passed_gets_them_once() {
        // The partition is in May when the subscription (from January) arrives.
        let mut h = harness();
        load(&mut h.processor, RefKind::Customers, &[customer_line()]);
        load(
            &mut h.processor,
            RefKind::Plans,
            &[plan_line(1, "2025-01-01T00:00:00Z", "10")],
        );
        let other = rated("e0", at("2026-05-10T10:00:00Z"), UTC1, &[("m", dec!(1))]);
        run(&mut h, &other);
        // Without a subscription record nothing is walked; usage closed nothing yet.
        assert!(punctuate(&mut h, at("2026-05-10T10:00:00Z")).is_empty());
        load(
            &mut h.processor,
            RefKind::Subscriptions,
            &[subscription_line(
                "2026-01-01T00:00:00Z",
                Some("2026-04-15T00:00:00Z"),
            )],
        );
        let out = punctuate(&mut h, at("2026-05-10T10:00:01Z"));
        assert_eq!(
            fees(&out).into_iter().map(|f| f.0).collect::<Vec<_>>(),
            vec!["2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01"],
            "every period it overlaps, April included, and none after its end"
        );
        load(
            &mut h.processor,
            RefKind::Subscriptions,
            &[subscription_line(
                "2026-01-01T00:00:00Z",
                Some("2026-04-15T00:00:00Z"),
            )],
        );
        assert!(punctuate(&mut h, at("2026-05-10T10:00:02Z")).is_empty());
    }

    #[test]
    fn a_mid_period_plan_change_bills_the_period_at_the_version_in_force_at_its_start() {
        let versions = [
            (1, "2025-01-01T00:00:00Z", "10"),
            (2, "2026-01-15T00:00:00Z", "25"),
        ];
        let mut h = harness_of(with_tables("2026-01-01T00:00:00Z", &versions));
        // Usage after the change is rated at version 2 and carries its fee.
        let v2 = Sub {
            plan_version: 2,
            ..UTC1
        };
        let mut e = rated("e1", at("2026-01-20T10:00:00Z"), v2, &[("m", dec!(3))]);
        e.enriched.base_fee = Some(dec!(25));
        run(&mut h, &e);
        let out = settle(&mut h, at("2026-03-02T00:00:00Z"));
        assert_eq!(
            fees(&out),
            vec![
                ("2026-01-01".to_string(), 1, Some(dec!(10)), 1),
                ("2026-02-01".to_string(), 0, Some(dec!(25)), 2),
            ]
        );
        let jan = out
            .iter()
            .find(|w| w.kind == WindowKind::PeriodClose)
            .unwrap();
        assert_eq!(
            (
                jan.tax_code.as_deref(),
                jan.gl_accounts.usage_revenue.as_str()
            ),
            (Some("TX-V1"), "4010")
        );
    }

    #[test]
    fn periods_without_a_plan_wait_counted_and_post_once_it_arrives() {
        // sub-1 from January, its plan not (yet) in the tables.
        let mut h = harness_of(with_tables("2026-01-01T00:00:00Z", &[]));
        assert!(settle(&mut h, at("2026-03-05T00:00:00Z")).is_empty());
        assert_eq!(h.processor.waiting_gauge.get(), 1, "January, not opened");

        load(
            &mut h.processor,
            RefKind::Plans,
            &[plan_line(1, "2025-01-01T00:00:00Z", "10")],
        );
        let out = settle(&mut h, at("2026-03-05T00:02:00Z"));
        assert_eq!(
            fees(&out),
            vec![
                ("2026-01-01".to_string(), 0, Some(dec!(10)), 1),
                ("2026-02-01".to_string(), 0, Some(dec!(10)), 1),
            ]
        );
        assert_eq!(h.processor.waiting_gauge.get(), 0);
        // A revoked partition takes its subscriptions' count with it.
        h.processor
            .waiting
            .entry(h.partition)
            .or_default()
            .insert("cust-x".into(), 3);
        h.processor.on_revoked(h.partition);
        assert_eq!(h.processor.waiting_gauge.get(), 0);
    }

    #[test]
    fn closed_periods_without_a_plan_are_counted_until_it_arrives() {
        // The partition is in May when the subscription (January to mid
        // April) arrives, its plan not in the tables: four closed periods wait.
        let mut h = harness();
        load(&mut h.processor, RefKind::Customers, &[customer_line()]);
        let other = rated("e0", at("2026-05-10T10:00:00Z"), UTC1, &[("m", dec!(1))]);
        run(&mut h, &other);
        assert!(punctuate(&mut h, at("2026-05-10T10:00:00Z")).is_empty());
        let sub = subscription_line("2026-01-01T00:00:00Z", Some("2026-04-15T00:00:00Z"));
        load(&mut h.processor, RefKind::Subscriptions, &[sub]);
        assert!(punctuate(&mut h, at("2026-05-10T10:00:01Z")).is_empty());
        assert_eq!(h.processor.waiting_gauge.get(), 4);
        load(
            &mut h.processor,
            RefKind::Plans,
            &[plan_line(1, "2025-01-01T00:00:00Z", "10")],
        );
        let out = punctuate(&mut h, at("2026-05-10T10:00:02Z"));
        assert_eq!(fees(&out).len(), 4, "{out:?}");
        assert_eq!(h.processor.waiting_gauge.get(), 0);
    }

    #[test]
    fn a_deleted_subscription_stops_waiting() {
        let mut h = harness_of(with_tables("2026-01-01T00:00:00Z", &[]));
        assert!(settle(&mut h, at("2026-03-05T00:00:00Z")).is_empty());
        assert_eq!(h.processor.waiting_gauge.get(), 1);
        // The operator deletes the subscription instead of adding its plan.
        h.processor
            .on_table_record(RefKind::Subscriptions.topic(), Some(b"sub-1"), None);
        assert!(settle(&mut h, at("2026-03-05T00:02:00Z")).is_empty());
        assert_eq!(h.processor.waiting_gauge.get(), 0);
    }

    #[test]
    fn periods_before_the_cut_over_are_not_closed_by_the_walk() {
        let cfg = config_with("[aggregate]\nperiods_from = \"2026-02-01T00:00:00Z\"\n");
        let p = with_tables("2026-01-01T00:00:00Z", &[(1, "2025-01-01T00:00:00Z", "10")]);
        let mut h = Harness::new(cfg, p, 0);
        let mut out = Vec::new();
        for now in [at("2026-03-05T00:00:00Z"), at("2026-03-05T00:01:01Z")] {
            out.extend(punctuate(&mut h, now));
        }
        // January ends on the cut-over: billed before; February is ours.
        assert_eq!(
            fees(&out),
            vec![("2026-02-01".to_string(), 0, Some(dec!(10)), 1)]
        );
    }

    #[test]
    fn only_the_partition_that_owns_the_customer_walks_it() {
        let mut p = with_tables("2026-01-01T00:00:00Z", &[(1, "2025-01-01T00:00:00Z", "10")]);
        p.on_input_partitions(6);
        let owner = crate::kafka::partition_for_key(b"cust-1", 6);
        let other = (owner + 1) % 6;
        let mut h = harness_of(p);
        let t = at("2026-03-05T00:00:00Z");
        punctuate_on(&mut h, other, t);
        let out = punctuate_on(&mut h, other, t + Duration::seconds(IDLE_ADVANCE_S + 1));
        assert!(out.is_empty(), "{out:?}");
        // The same processor over another partition's (empty) stores.
        let mut h = harness_of(h.processor);
        let mut out = punctuate_on(&mut h, owner, t);
        out.extend(punctuate_on(
            &mut h,
            owner,
            t + Duration::seconds(IDLE_ADVANCE_S + 1),
        ));
        assert_eq!(fees(&out).len(), 2);
    }
}
