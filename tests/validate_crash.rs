//! Exactly-once under failure, against the real broker: SIGKILL of the
//! validate process at random moments while 100,000 events flow; two
//! instances sharing the input with one killed for good. Afterwards every
//! valid event is on usage.validated exactly once and every malformed one on
//! the DLQ exactly once.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One event in this many is malformed (a negative value).
const MALFORMED_EVERY: usize = 100;
const KILLS_MIN: usize = 5;

fn event(i: usize, now: &str) -> Record {
    let sub = format!("cust-{}", i % 17);
    let tokens = if i.is_multiple_of(MALFORMED_EVERY) {
        -1
    } else {
        (i % 500 + 1) as i64
    };
    let v = cloudevent(
        "crash-src",
        &format!("evt-{i}"),
        "llm.tokens",
        &sub,
        now,
        &format!(r#"{{"tokens":{tokens},"model":"m"}}"#),
    );
    (Some(sub.into_bytes()), Some(v.into_bytes()), vec![])
}

fn expected(n: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let valid = (0..n)
        .filter(|i| !i.is_multiple_of(MALFORMED_EVERY))
        .map(|i| format!("evt-{i}"))
        .collect();
    let bad = (0..n)
        .filter(|i| i.is_multiple_of(MALFORMED_EVERY))
        .map(|i| format!("evt-{i}"))
        .collect();
    (valid, bad)
}

fn check_exactly_once(w: &World, valid: &BTreeSet<String>, bad: &BTreeSet<String>) {
    let validated_topic = w.topic("usage.validated");
    let dlq_topic = w.topic("meterline.dlq.validate");
    wait_until("every event to land", || {
        read_all(&validated_topic, true).len() >= valid.len()
            && read_all(&dlq_topic, true).len() >= bad.len()
    });
    std::thread::sleep(Duration::from_secs(3));
    let out = read_all(&validated_topic, true);
    let ids: Vec<String> = out
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!(ids.len(), unique.len(), "no event twice on usage.validated");
    assert_eq!(&unique, valid, "every valid event on usage.validated");
    let dlq = read_all(&dlq_topic, true);
    let dlq_ids: Vec<String> = dlq
        .iter()
        .map(|r| {
            assert_eq!(
                r.header("meterline.reason").as_deref(),
                Some("value_negative")
            );
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    let dlq_unique: BTreeSet<String> = dlq_ids.iter().cloned().collect();
    assert_eq!(dlq_ids.len(), dlq_unique.len(), "no dead letter twice");
    assert_eq!(&dlq_unique, bad, "every malformed event on the DLQ");
}

fn crash_run(name: &str, seed: u64, inject_duplicates: bool) {
    const EVENTS: usize = 100_000;
    const CHUNK: usize = 2_000;
    let w = World::new(name, "");
    w.apply();
    let topic = w.topic("usage.events");
    let now = now_rfc3339();
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let done = done.clone();
        let topic = topic.clone();
        let now = now.clone();
        std::thread::spawn(move || {
            // Paced so the stream is still flowing while the process dies.
            for start in (0..EVENTS).step_by(CHUNK) {
                let chunk: Vec<Record> = (start..start + CHUNK).map(|i| event(i, &now)).collect();
                produce(&topic, &chunk);
                std::thread::sleep(Duration::from_millis(250));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut stage = w.spawn_stage(&["validate", "dedupe"], "a");
    let mut kills = 0;
    while kills < KILLS_MIN || !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(rng.random_range(1_500..4_000)));
        kill9(&mut stage);
        kills += 1;
        stage = w.spawn_stage(&["validate", "dedupe"], "a");
        if inject_duplicates {
            // A copy of an event produced before the crash, sent again.
            let i = rng.random_range(1..CHUNK);
            produce(&topic, &[event(i, &now)]);
        }
    }
    producer.join().unwrap();
    let (valid, bad) = expected(EVENTS);
    check_exactly_once(&w, &valid, &bad);
    let status = terminate(&mut stage);
    assert!(status.success());
    assert!(kills >= KILLS_MIN);
}

#[test]
fn sigkill_five_times_while_100k_events_flow_is_exactly_once() {
    crash_run("crash", 7, false);
}

#[test]
fn sigkill_with_a_duplicate_injected_after_each_restart_is_exactly_once() {
    crash_run("crashdup", 11, true);
}

#[test]
fn survivor_takes_over_a_killed_instances_partitions_and_stores() {
    const EVENTS: usize = 30_000;
    let port = free_port();
    let w = World::new("scale", "");
    w.apply();
    let topic = w.topic("usage.events");
    let now = now_rfc3339();
    // Instance a serves metrics; b does not (one port per test).
    let text = std::fs::read_to_string(&w.config_path).unwrap();
    let a_config = w.dir.path().join("a.toml");
    std::fs::write(
        &a_config,
        text.replace(
            "listen_addr = \"\"",
            &format!("listen_addr = \"127.0.0.1:{port}\""),
        ),
    )
    .unwrap();
    let mut a = {
        let mut c = std::process::Command::new(bin());
        c.arg("--config")
            .arg(&a_config)
            .args(["run", "--stage", "validate", "--stage", "dedupe"])
            .env("METERLINE__RUNTIME__INSTANCE_ID", "a")
            .env("METERLINE_LOG", "warn")
            .current_dir(w.dir.path());
        Stage(c.spawn().unwrap())
    };
    let mut b = w.spawn_stage(&["validate", "dedupe"], "b");
    // Both hold partitions before the stream starts.
    let assigned = |stage: &str| {
        http_get(port, "/metrics")
            .and_then(|(_, m)| metric(&m, "meterline_assigned_partitions", &[("stage", stage)]))
    };
    wait_until("both instances assigned", || {
        ["validate", "dedupe"]
            .iter()
            .all(|s| assigned(s).is_some_and(|n| n >= 1.0 && n < TEST_PARTITIONS as f64))
    });
    let half: Vec<Record> = (0..EVENTS / 2).map(|i| event(i, &now)).collect();
    produce(&topic, &half);
    std::thread::sleep(Duration::from_secs(2));
    kill9(&mut b);
    // Copies of events b may have processed: only a restored dedupe store drops them.
    // (Valid ones only: a malformed copy is rejected again, by design, since
    // a reject never claims its id.)
    let copies: Vec<Record> = (0..300)
        .map(|i: usize| i * 7 + 1)
        .filter(|i| !i.is_multiple_of(MALFORMED_EVERY))
        .map(|i| event(i, &now))
        .collect();
    produce(&topic, &copies);
    let rest: Vec<Record> = (EVENTS / 2..EVENTS).map(|i| event(i, &now)).collect();
    produce(&topic, &rest);
    wait_until("a owns every partition", || {
        ["validate", "dedupe"]
            .iter()
            .all(|s| assigned(s) == Some(TEST_PARTITIONS as f64))
    });
    let (valid, bad) = expected(EVENTS);
    check_exactly_once(&w, &valid, &bad);
    let (_, m) = http_get(port, "/metrics").unwrap();
    assert!(
        metric(
            &m,
            "meterline_restored_records_total",
            &[("stage", "dedupe")],
        )
        .unwrap_or(0.0)
            > 0.0,
        "a restored b's dedupe stores from their changelogs: {m}"
    );
    assert!(terminate(&mut a).success());
}
