//! `meterline lineage` against the real broker: the path of a duplicate, a
//! dead-lettered, a parked-then-healed and a late event through all five
//! stages, answered from the stages' lineage stores over HTTP, and the
//! reverse lookup from a posting's idempotency key.
//!
//! One UTC subscription of customer c-1 (plan p: tokens at 0.001); customer
//! c-2 has a subscription but is unknown at first (its event parks) and is
//! loaded mid-run (the event heals). September 2026.

mod common;

use common::*;
use meterline::contracts::{Posting, PostingType};

const SOURCE: &str = "lin";
/// The watermark moves only with events here (idle advance would move it to
/// today and make every healed event an adjustment of today's open window).
const CONFIG: &str = "[validate]\nmax_event_age_days = 400\ndedupe_horizon_days = 401\n\
[aggregate]\ngrace_period_s = 60\nidle_advance_s = 86400\n";

fn event(id: &str, customer: &str, time: &str, tokens: i64) -> Record {
    let value = cloudevent(
        SOURCE,
        id,
        "llm.tokens",
        customer,
        time,
        &format!(r#"{{"tokens":{tokens},"model":"small"}}"#),
    );
    (
        Some(customer.as_bytes().to_vec()),
        Some(value.into_bytes()),
        vec![],
    )
}

fn accrual_adjusting(w: &World, window: &str, adjusts: &str) -> Option<Posting> {
    postings(w).into_iter().find(|p| {
        p.posting_type == PostingType::JournalEntry
            && p.kind == "accrual"
            && p.window.id == window
            && p.adjusts.as_ref().map(|a| a.id.as_str()) == Some(adjusts)
    })
}

/// `meterline lineage` output and whether it exited 0.
fn lineage(w: &World, port: u16, args: &[&str]) -> (bool, String) {
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut all = vec!["lineage", "--endpoint", endpoint.as_str()];
    all.extend_from_slice(args);
    let out = w.run(&all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "lineage {args:?}: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The output line of one stage and outcome (or None).
fn line<'a>(text: &'a str, stage: &str, outcome: &str) -> Option<&'a str> {
    text.lines().find(|l| {
        let mut parts = l.split_whitespace();
        parts.next() == Some(stage) && parts.next() == Some(outcome)
    })
}

#[test]
fn lineage_follows_duplicate_dead_lettered_parked_and_late_events_to_their_postings() {
    let port = free_port();
    let w = World::new(
        "lineage",
        &format!("{CONFIG}[http]\nlisten_addr = \"127.0.0.1:{port}\"\n"),
    );
    w.apply();
    w.load_refdata(
        "plans",
        &format!(
            r#"{{"id":"p","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","charges":{{"tokens":{{"model":"per_unit","unit_price":"0.001"}}}},{GL_ACCOUNTS_JSON}}}"#
        ),
    );
    w.load_refdata(
        "customers",
        r#"{"id":"c-1","name":"One","legal_entity":"le","erp_customer_id":"E1","status":"active"}"#,
    );
    w.load_refdata(
        "subscriptions",
        &[
            r#"{"id":"s-1","customer_id":"c-1","plan_id":"p","start":"2026-09-01T00:00:00Z","end":null,"billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us"}"#,
            r#"{"id":"s-2","customer_id":"c-2","plan_id":"p","start":"2026-09-01T00:00:00Z","end":null,"billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us"}"#,
        ]
        .join("\n"),
    );
    let bad = cloudevent(
        SOURCE,
        "bad1",
        "llm.tokens",
        "c-1",
        "2026-09-10T10:30:00Z",
        r#"{"tokens":-5,"model":"small"}"#,
    );
    produce(
        &w.topic("usage.events"),
        &[
            event("a1", "c-1", "2026-09-10T10:00:00Z", 1000),
            event("a1", "c-1", "2026-09-10T10:00:00Z", 1000),
            (Some(b"c-1".to_vec()), Some(bad.into_bytes()), vec![]),
            event("p1", "c-2", "2026-09-10T11:00:00Z", 2000),
            event("a2", "c-1", "2026-09-12T10:00:00Z", 3000),
            // Beyond the grace: Sep 10 closed at watermark Sep 12 09:59.
            event("late1", "c-1", "2026-09-10T12:00:00Z", 4000),
            // Closes Sep 12 (where late1's adjustment accrues).
            event("a3", "c-1", "2026-09-14T10:00:00Z", 5000),
        ],
    );
    let mut stage = w.spawn_stage(&all_stages(), "a");
    wait_until("late1's adjustment posted", || {
        accrual_adjusting(&w, "2026-09-12", "2026-09-10").is_some()
    });

    // The duplicate: both copies validated, the second dropped by dedupe;
    // priced and posted once.
    let (known, text) = lineage(&w, port, &[SOURCE, "a1"]);
    println!("{text}");
    assert!(known, "{text}");
    assert_eq!(text.matches("validate   validated").count(), 2, "{text}");
    assert!(line(&text, "dedupe", "first_copy").is_some(), "{text}");
    assert!(line(&text, "dedupe", "duplicate").is_some(), "{text}");
    assert_eq!(text.matches("dedupe     duplicate").count(), 1, "{text}");
    assert!(
        line(&text, "enrich", "enriched")
            .is_some_and(|l| l.contains("subscription s-1") && l.contains("plan p v1")),
        "{text}"
    );
    assert!(
        line(&text, "rate", "rated").is_some_and(|l| l.contains("amount 1.000")),
        "{text}"
    );
    assert!(
        line(&text, "aggregate", "windowed").is_some_and(|l| l.contains("day 2026-09-10 (")
            && l.contains("billing_period 2026-09-01")
            && l.contains("period_close 2026-09-01 (subscription s-1)")),
        "{text}"
    );
    let a1_accrual = postings(&w)
        .into_iter()
        .find(|p| p.kind == "accrual" && p.window.id == "2026-09-10" && p.adjusts.is_none())
        .expect("a1's accrual");
    assert!(text.contains(&a1_accrual.idempotency_key), "{text}");
    assert!(text.contains("1.00"), "{text}");
    // The September invoice window is still open.
    assert!(text.contains("billing_period 2026-09-01") && text.contains("open (not closed yet)"));

    // The dead letter: validate only, with its reason.
    let (known, text) = lineage(&w, port, &[SOURCE, "bad1"]);
    assert!(known, "{text}");
    assert!(
        line(&text, "validate", "dead_lettered").is_some_and(|l| l.contains("value_negative")),
        "{text}"
    );
    for stage in ["enrich", "rate", "aggregate"] {
        assert!(
            text.contains(&format!("{stage:<10} not seen")),
            "{stage}: {text}"
        );
    }
    assert!(!text.contains("window"), "no window, no posting: {text}");

    // The late event: an adjustment of Sep 10 accrued on Sep 12.
    let (_, text) = lineage(&w, port, &[SOURCE, "late1"]);
    assert!(
        line(&text, "aggregate", "windowed")
            .is_some_and(|l| l.contains("day 2026-09-12 adjusting 2026-09-10")),
        "{text}"
    );
    let late_accrual = accrual_adjusting(&w, "2026-09-12", "2026-09-10").unwrap();
    assert!(text.contains(&late_accrual.idempotency_key), "{text}");
    assert!(text.contains("4.00"), "{text}");

    // Parked, then healed by loading the customer, then priced and posted.
    let (_, text) = lineage(&w, port, &[SOURCE, "p1"]);
    assert!(
        line(&text, "enrich", "parked").is_some_and(|l| l.contains("unknown_customer")),
        "{text}"
    );
    assert!(text.contains("rate       not seen"), "{text}");
    w.load_refdata(
        "customers",
        r#"{"id":"c-2","name":"Two","legal_entity":"le","erp_customer_id":"E2","status":"active"}"#,
    );
    wait_until("p1 healed and rated", || {
        let (_, t) = lineage(&w, port, &[SOURCE, "p1"]);
        line(&t, "rate", "rated").is_some()
    });
    // p1 (Sep 10) accrues in Sep 10 if its partition's watermark has not
    // passed it (c-2 may hash to another partition than c-1), else as an
    // adjustment of Sep 10 in that partition's open day; an event on Sep 16
    // closes either.
    produce(
        &w.topic("usage.events"),
        &[
            event("a4", "c-1", "2026-09-16T10:00:00Z", 1),
            event("b4", "c-2", "2026-09-16T10:00:00Z", 1),
        ],
    );
    let p1_accrual = |w: &World| {
        postings(w).into_iter().find(|p| {
            p.subscription_id == "s-2"
                && p.kind == "accrual"
                && (p.window.id == "2026-09-10"
                    || p.adjusts.as_ref().map(|a| a.id.as_str()) == Some("2026-09-10"))
        })
    };
    wait_until("p1's accrual posted", || p1_accrual(&w).is_some());
    let (_, text) = lineage(&w, port, &[SOURCE, "p1"]);
    println!("{text}");
    assert!(line(&text, "enrich", "parked").is_some(), "{text}");
    assert!(
        line(&text, "enrich", "enriched").is_some_and(|l| l.contains("subscription s-2")
            && l.contains("healed after parking")
            && l.contains("re-emitted")),
        "{text}"
    );
    assert!(
        line(&text, "aggregate", "windowed").is_some_and(|l| l.contains("2026-09-10")),
        "{text}"
    );
    let healed = p1_accrual(&w).unwrap();
    assert!(text.contains(&healed.idempotency_key), "{text}");
    assert!(text.contains("2.00"), "{text}");

    // Reverse: the posting names its window and event count.
    let (known, text) = lineage(&w, port, &["--posting", &a1_accrual.idempotency_key]);
    assert!(known, "{text}");
    assert!(text.contains("1 event(s)"), "{text}");
    assert!(text.contains("window day 2026-09-10 ("), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains('*') && l.contains(&a1_accrual.idempotency_key)),
        "{text}"
    );

    // Unknown event and posting: exit 1.
    assert!(!lineage(&w, port, &[SOURCE, "nope"]).0);
    assert!(!lineage(&w, port, &["--posting", "0000"]).0);
    // JSON mode answers per stage.
    let (_, text) = lineage(&w, port, &["--json", SOURCE, "a1"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v["validate"][0]["value"]["steps"][0]["outcome"],
        "validated"
    );
    assert_eq!(v["dedupe"][0]["value"]["steps"][0]["outcome"], "first_copy");
    assert_eq!(v["dedupe"][0]["value"]["steps"][1]["outcome"], "duplicate");

    assert!(terminate(&mut stage).success());
}

/// The changelog records of `topic` as `meterline topology dump` prints them.
fn dump(w: &World, topic: &str) -> Vec<serde_json::Value> {
    let out = w.run(&["topology", "dump", topic, "--limit", "100000"]);
    assert!(
        out.status.success(),
        "dump {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Lineage steps expire through an expiry index entry per step, which the
/// changelog must carry like the step itself: after a lost volume, the
/// restored steps must still expire.
#[test]
fn steps_restored_after_a_lost_volume_still_expire() {
    const EVENTS: usize = 40;
    let port = free_port();
    let config = |retention_days: u32| {
        format!(
            "{CONFIG}[lineage]\nretention_days = {retention_days}\n\
             [http]\nlisten_addr = \"127.0.0.1:{port}\"\n"
        )
    };
    let w = World::new("lineage-restore", &config(90));
    w.apply();
    let ids: Vec<String> = (0..EVENTS).map(|i| format!("r{i}")).collect();
    let events: Vec<Record> = ids
        .iter()
        .map(|id| event(id, "c-1", "2026-09-10T10:00:00Z", 1))
        .collect();
    produce(&w.topic("usage.events"), &events);
    let validated = |id: &str| {
        let (_, text) = lineage(&w, port, &[SOURCE, id]);
        line(&text, "validate", "validated").is_some()
    };
    let mut stage = w.spawn_stage(&["validate"], "a");
    wait_until("every event's validate step is known", || {
        ids.iter().all(|id| validated(id))
    });
    let (_, m) = http_get(port, "/metrics").unwrap();
    let sent = metric(
        &m,
        "meterline_changelog_records_total",
        &[("stage", "validate"), ("store", "lineage")],
    );
    assert_eq!(
        sent,
        Some(2.0 * EVENTS as f64),
        "a step and its index entry each: {m}"
    );
    assert!(terminate(&mut stage).success());

    // The changelog holds each step (keys start with E = 0x45) and its
    // expiry index entry (X = 0x58), nothing else.
    let records = dump(&w, &w.topic("meterline.validate.lineage.changelog"));
    let with_prefix = |hex: &str| {
        records
            .iter()
            .filter(|r| r["key"]["hex"].as_str().is_some_and(|k| k.starts_with(hex)))
            .count()
    };
    assert_eq!(with_prefix("45"), EVENTS, "{records:?}");
    assert_eq!(with_prefix("58"), EVENTS, "{records:?}");
    assert_eq!(records.len(), 2 * EVENTS, "{records:?}");

    // The volume is lost; the stage restarts with a retention of 0 days:
    // what it restores is due at once.
    std::fs::remove_dir_all(w.state_dir()).unwrap();
    w.write_config(&config(0));
    let mut stage = w.spawn_stage(&["validate"], "a");
    let gauge = |name: &str| {
        http_get(port, "/metrics")
            .and_then(|(_, m)| metric(&m, name, &[("stage", "validate")]))
            .unwrap_or(0.0)
    };
    wait_until("the steps came back from the changelog", || {
        gauge("meterline_assigned_partitions") == TEST_PARTITIONS as f64
            && gauge("meterline_restored_records_total") >= EVENTS as f64
    });
    wait_until("the restored steps expired", || {
        ids.iter().all(|id| !validated(id))
    });
    assert!(terminate(&mut stage).success());
}
