//! Scaling out: a platform team runs every stage as two instances (two
//! `meterline run` processes, one consumer group per stage) and each
//! instance is SIGKILLed and restarted while the events flow. The books must
//! be those of one instance on the same input: the same postings, byte for
//! byte (idempotency keys included), each once and balanced, and the same
//! counts per destination.
//!
//! The input is `meterline loadgen` (five event types, duplicates, malformed
//! and late events) over the sample reference data of the demo, produced
//! once and copied into both namespaces. Windows close by event time only
//! (the idle advance, which follows the wall clock, is set beyond the test's
//! length), so both runs close the same windows whenever they run.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use meterline::contracts::{Posting, Side};
use rust_decimal::Decimal;

/// Events loadgen produces (duplicates and malformed ones included).
const EVENTS: usize = 6_000;
/// The sample reference data knows cust-0000 .. cust-0004.
const CUSTOMERS: usize = 5;
/// When the scaled-out run's instances are SIGKILLed (alternately, each
/// twice): as its rated events pass these percentages of the valid events.
const KILL_AT_PERCENT: [usize; 4] = [10, 30, 50, 70];
/// No wall-clock watermark advance while the test runs: a partition left
/// idle by a restart must not close windows that the other run closes later.
const CONFIG: &str = "[aggregate]\nidle_advance_s = 3600\n";
/// How long the postings must stay unchanged to count as settled.
const QUIET_POLLS: usize = 3;

fn sample(kind: &str) -> String {
    std::fs::read_to_string(repo().join(format!("deploy/local/sample/{kind}.jsonl"))).unwrap()
}

fn setup(name: &str, input: &[Record]) -> World {
    let w = World::new(name, CONFIG);
    w.apply();
    for kind in ["customers", "subscriptions", "plans"] {
        w.load_refdata(kind, &sample(kind));
    }
    produce(&w.topic("usage.events"), input);
    w
}

/// loadgen's events as records keyed by subject (as DESIGN asks producers
/// to), and how many of them it says are valid.
fn generate(w: &World) -> (Vec<Record>, usize) {
    let (events, customers) = (EVENTS.to_string(), CUSTOMERS.to_string());
    let out = w.run(&[
        "loadgen",
        "--count",
        &events,
        "--customers",
        &customers,
        "--seed",
        "23",
        "--spread-hours",
        "72",
        "--stdout",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stderr).into_owned();
    let valid: usize = summary
        .split(", ")
        .find_map(|part| part.rsplit(' ').nth(1).filter(|_| part.ends_with(" valid")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no valid count in loadgen's summary: {summary}"));
    let records = out
        .stdout
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let subject = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["subject"].as_str().map(|s| s.as_bytes().to_vec()));
            (subject, Some(line.to_vec()), vec![])
        })
        .collect::<Vec<Record>>();
    assert_eq!(records.len(), EVENTS);
    (records, valid)
}

/// Waits until every valid event is rated, every period close invoiced and
/// the postings stopped changing; returns them.
fn settle(w: &World, valid: usize) -> Vec<Rec> {
    let mut rated = Tail::new(&w.topic("usage.rated"), true);
    let mut rated_n = 0;
    wait_until("every valid event rated", || {
        rated_n += rated.read_new().len();
        rated_n >= valid
    });
    assert_eq!(rated_n, valid, "one rated record per valid event");
    let mut last = 0;
    let mut quiet = 0;
    wait_until("the postings and invoices to settle", || {
        std::thread::sleep(Duration::from_secs(2));
        let n = read_all(&w.topic("finance.postings"), true).len();
        quiet = if n == last { quiet + 1 } else { 0 };
        last = n;
        quiet >= QUIET_POLLS && invoices_caught_up(w)
    });
    read_all(&w.topic("finance.postings"), true)
}

/// Postings as sorted (key, value) bytes.
fn books(postings: &[Rec]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = postings
        .iter()
        .map(|r| (r.key.clone().unwrap(), r.value.clone().unwrap()))
        .collect();
    out.sort();
    out
}

fn count(w: &World, topic: &str) -> usize {
    read_all(&w.topic(topic), true).len()
}

fn assert_once_and_balanced(postings: &[Rec]) {
    let mut keys = BTreeSet::new();
    for r in postings {
        let p = Posting::from_json_slice(r.value.as_deref().unwrap()).unwrap();
        assert!(
            keys.insert(p.idempotency_key.clone()),
            "posted twice: {p:?}"
        );
        let side = |s: Side| -> Decimal {
            p.lines
                .iter()
                .filter(|l| l.side == s)
                .map(|l| l.amount)
                .sum()
        };
        assert_eq!(side(Side::Debit), side(Side::Credit), "balanced: {p:?}");
    }
}

#[test]
fn two_instances_of_every_stage_killed_and_restarted_post_the_books_of_one() {
    // A world of its own for loadgen, which needs a config, not topics.
    let generator = World::new("scalegen", "");
    let (input, valid) = generate(&generator);
    let one = setup("scaleone", &input);
    let two = setup("scaletwo", &input);

    let stages = all_stages();
    let mut single = one.spawn_stage(&stages, "solo");
    let mut a = two.spawn_stage(&stages, "a");
    let mut b = two.spawn_stage(&stages, "b");
    // Each instance is killed twice, alternately, as the scaled-out run's
    // rated events pass these shares of the valid events.
    let mut progress = Tail::new(&two.topic("usage.rated"), true);
    let mut rated = 0;
    for (i, percent) in KILL_AT_PERCENT.iter().enumerate() {
        wait_until("the scaled-out run to make progress", || {
            rated += progress.read_new().len();
            rated * 100 >= valid * percent
        });
        eprintln!("SIGKILL {i}: {rated} of {valid} events rated");
        if i % 2 == 0 {
            kill9(&mut a);
            a = two.spawn_stage(&stages, "a");
        } else {
            kill9(&mut b);
            b = two.spawn_stage(&stages, "b");
        }
    }

    let postings_one = settle(&one, valid);
    let postings_two = settle(&two, valid);
    assert_once_and_balanced(&postings_one);
    assert_once_and_balanced(&postings_two);
    let expected = books(&postings_one);
    let kinds: BTreeSet<String> = expected
        .iter()
        .map(|(_, v)| Posting::from_json_slice(v).unwrap().kind)
        .collect();
    for kind in ["accrual", "day", "period_close", "base_fee"] {
        assert!(
            kinds.contains(kind),
            "the compared books hold {kind} postings: {kinds:?}"
        );
    }
    assert_eq!(
        books(&postings_two),
        expected,
        "two instances, each killed twice, post the books of one"
    );
    for topic in [
        "usage.validated",
        "meterline.dlq.validate",
        "usage.exceptions",
    ] {
        assert_eq!(count(&two, topic), count(&one, topic), "records on {topic}");
    }
    assert_eq!(
        count(&one, "usage.validated"),
        valid,
        "loadgen's valid events"
    );

    assert!(terminate(&mut single).success());
    assert!(terminate(&mut a).success());
    assert!(terminate(&mut b).success());
}
