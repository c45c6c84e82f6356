//! `meterline replay` against the real broker: dead letters whose cause was
//! fixed are replayed once; a second run sends nothing; --dry-run sends
//! nothing and prints the counts; a replay of already-processed events is
//! dropped as duplicates.

mod common;

use std::time::Duration;

use common::*;

const FIXABLE: usize = 50;
const BROKEN: usize = 20;
const GOOD: usize = 30;

fn ev(source: &str, i: usize, tokens: i64, now: &str) -> Record {
    let sub = format!("cust-{}", i % 5);
    let v = cloudevent(
        source,
        &format!("{source}-{i}"),
        "llm.tokens",
        &sub,
        now,
        &format!(r#"{{"tokens":{tokens}}}"#),
    );
    (Some(sub.into_bytes()), Some(v.into_bytes()), vec![])
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn fixed_dead_letters_are_replayed_exactly_once() {
    let w = World::new("replay", "[validate]\nallowed_sources = [\"src-*\"]\n");
    w.apply();
    let now = now_rfc3339();
    let mut recs: Vec<Record> = (0..GOOD).map(|i| ev("src-ok", i, 5, &now)).collect();
    recs.extend((0..FIXABLE).map(|i| ev("late-src", i, 5, &now)));
    recs.extend((0..BROKEN).map(|i| ev("src-neg", i, -5, &now)));
    produce(&w.topic("usage.events"), &recs);

    let validated = w.topic("usage.validated");
    let dlq = w.topic("meterline.dlq.validate");
    let mut stage = w.spawn_stage(&["validate", "dedupe"], "a");
    wait_until("first pass", || {
        read_all(&validated, true).len() == GOOD && read_all(&dlq, true).len() == FIXABLE + BROKEN
    });
    assert!(terminate(&mut stage).success());

    // The fix: late-src is allowed now.
    w.write_config("[validate]\nallowed_sources = [\"src-*\", \"late-src\"]\n");
    let mut stage = w.spawn_stage(&["validate", "dedupe"], "a");

    let dry = w.run(&[
        "replay",
        "--from",
        "meterline.dlq.validate",
        "--reason",
        "source_not_allowed",
        "--dry-run",
    ]);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let out = stdout(&dry);
    assert!(
        out.contains(&format!(
            "would replay {FIXABLE:>8}  reason source_not_allowed"
        )),
        "{out}"
    );
    assert!(out.contains("dry run: nothing sent"), "{out}");
    // Reaching the end of each partition is how replay knows it is done, not an error.
    let dry_err = String::from_utf8_lossy(&dry.stderr);
    assert!(
        !dry_err.contains("EOF"),
        "partition ends are not logged: {dry_err}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        read_all(&validated, true).len(),
        GOOD,
        "dry run sent nothing"
    );

    let real = w.run(&[
        "replay",
        "--from",
        "meterline.dlq.validate",
        "--reason",
        "source_not_allowed",
    ]);
    assert!(
        real.status.success(),
        "{}",
        String::from_utf8_lossy(&real.stderr)
    );
    let out = stdout(&real);
    assert!(
        out.contains(&format!("replay: replayed {FIXABLE} record(s)")),
        "{out}"
    );
    assert!(
        out.contains(&format!("skipped {BROKEN} by the filters")),
        "{out}"
    );
    wait_until("replayed events validated", || {
        read_all(&validated, true).len() == GOOD + FIXABLE
    });

    let again = w.run(&[
        "replay",
        "--from",
        "meterline.dlq.validate",
        "--reason",
        "source_not_allowed",
    ]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("replay: replayed 0 record(s)"),
        "{}",
        stdout(&again)
    );

    // Replaying the same dead letters under another progress group re-sends
    // them, and dedupe drops them as duplicates.
    let fresh = w.run(&[
        "replay",
        "--from",
        "meterline.dlq.validate",
        "--reason",
        "source_not_allowed",
        "--group",
        "fresh-group",
    ]);
    assert!(
        stdout(&fresh).contains(&format!("replay: replayed {FIXABLE} record(s)")),
        "{}",
        stdout(&fresh)
    );
    std::thread::sleep(Duration::from_secs(4));
    let out = read_all(&validated, true);
    assert_eq!(out.len(), GOOD + FIXABLE, "replayed twice, validated once");
    let replayed = read_all(&w.topic("usage.events"), true);
    let r = replayed
        .iter()
        .find(|r| r.header("meterline.replayed.from").is_some())
        .unwrap();
    assert_eq!(r.header("meterline.attempt").as_deref(), Some("2"));
    assert!(
        r.header("meterline.reason").is_none(),
        "diagnostic headers stripped"
    );

    // The still-broken ones were not replayed and are still dead-lettered once.
    assert_eq!(read_all(&dlq, true).len(), FIXABLE + BROKEN);
    assert!(terminate(&mut stage).success());
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Replay reads only a dead-letter topic or usage.exceptions and sends each
/// record only back to the input it came from: `--from usage.validated --to
/// finance.postings` (which would write foreign records into the books) is
/// refused and writes nothing; so is a dead letter whose origin header names
/// another topic.
#[test]
fn replay_into_the_books_is_refused_and_writes_nothing() {
    let w = World::new("replayrefused", "");
    w.apply();
    let now = now_rfc3339();
    // Something replay could pick up if it were allowed to.
    produce(
        &w.topic("usage.validated"),
        &[ev("src-ok", 1, 5, &now), ev("src-ok", 2, 5, &now)],
    );
    let postings = w.topic("finance.postings");

    for (args, code) in [
        (
            vec!["--from", "usage.validated", "--to", "finance.postings"],
            "not_replayable_source",
        ),
        (vec!["--from", "finance.postings"], "not_replayable_source"),
        (
            vec![
                "--from",
                "meterline.dlq.validate",
                "--to",
                "finance.postings",
            ],
            "not_origin_target",
        ),
        (
            vec!["--from", "usage.exceptions", "--to", "finance.postings"],
            "not_origin_target",
        ),
    ] {
        for dry_run in [true, false] {
            let mut a = vec!["replay"];
            a.extend(&args);
            if dry_run {
                a.push("--dry-run");
            }
            let o = w.run(&a);
            assert!(!o.status.success(), "{a:?} must be refused: {}", stdout(&o));
            let e = stderr(&o);
            assert!(
                e.contains(&format!("replay refused ({code})")),
                "{a:?}: {e}"
            );
        }
    }

    // A dead letter whose origin header names finance.postings, behind a
    // genuine one on the same partition: the replay stops before sending it
    // and the genuine one's transaction is rolled back with it.
    let dlq = w.topic("meterline.dlq.validate");
    let dead_letter = |id: usize, origin: &str| -> Record {
        let (_, v, _) = ev("src-ok", id, 5, &now);
        (
            Some(b"cust-0".to_vec()),
            v,
            vec![
                (
                    "meterline.reason".to_owned(),
                    b"source_not_allowed".to_vec(),
                ),
                (
                    "meterline.original.topic".to_owned(),
                    origin.as_bytes().to_vec(),
                ),
            ],
        )
    };
    produce(
        &dlq,
        &[
            dead_letter(10, &w.topic("usage.events")),
            dead_letter(11, &postings),
        ],
    );
    let o = w.run(&["replay", "--from", "meterline.dlq.validate"]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "came from {postings}, not from {}",
            w.topic("usage.events")
        )),
        "{e}"
    );
    assert!(
        read_all(&postings, false).is_empty(),
        "nothing written to the books"
    );
    assert!(
        read_all(&w.topic("usage.events"), true).is_empty(),
        "the batch with the foreign record was rolled back"
    );
}
