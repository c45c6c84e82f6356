//! Record timestamps on meterline's topics are the append time, never an
//! event time a producer put on a record (DESIGN.md): the usage topics keep
//! 7 days by record timestamp while validate accepts events 35 days old, so
//! a backfilled event stamped with its event time would otherwise be deleted
//! by retention before a stage reads it.
//!
//! Against the real broker: `topology apply` creates the topics with
//! `message.timestamp.type=LogAppendTime` and reports a topic that differs;
//! an event produced with a record timestamp 30 days old is validated and
//! its record on usage.validated carries a timestamp of now; and a stage
//! writes no timestamp of its own even where the topic keeps the producer's
//! (a dead letter on a CreateTime topic is stamped when it was written, the
//! original timestamp kept in a header).

mod common;

use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseRecord, Producer};

const DAY_MS: i64 = 86_400_000;
/// How old the backfilled event and its record timestamp are.
const BACKFILL_AGE_DAYS: i64 = 30;
/// How far an append-time stamp may be from the test's clock readings
/// around it (a loaded 2-core machine, one broker on the same host).
const CLOCK_SLACK_MS: i64 = 5_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A topic's `message.timestamp.type` as the broker reports it.
fn timestamp_type(topic: &str) -> String {
    let admin: AdminClient<DefaultClientContext> = client_config().create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let res = rt
        .block_on(admin.describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        ))
        .unwrap();
    let resource = res.into_iter().next().unwrap().unwrap();
    resource
        .get("message.timestamp.type")
        .and_then(|e| e.value.clone())
        .unwrap_or_default()
}

/// The topic entry as topology/topics.toml declares it, with a timestamp type.
fn entry(name: &str, timestamp_type: &str) -> String {
    format!(
        "name = \"{name}\"\ncleanup_policy = \"delete\"\nmessage_timestamp_type = \"{timestamp_type}\"\n"
    )
}

#[test]
fn a_backfilled_event_is_stamped_with_the_append_time_not_its_event_time() {
    let w = World::new("appendtime", "");
    // usage.events and the validate DLQ as an older cluster has them
    // (CreateTime): the producer's old stamp survives on the input, and the
    // dead letter shows what the stage itself writes.
    let topics = w.dir.path().join("topics.toml");
    let bundled = std::fs::read_to_string(&topics).unwrap();
    let mut older = bundled.clone();
    for name in ["usage.events", "meterline.dlq.validate"] {
        let from = entry(name, "LogAppendTime");
        assert!(
            older.contains(&from),
            "{name} is declared with LogAppendTime"
        );
        older = older.replace(&from, &entry(name, "CreateTime"));
    }
    std::fs::write(&topics, &older).unwrap();
    w.apply();
    std::fs::write(&topics, &bundled).unwrap();
    let out = w.run(&["topology", "apply"]);
    assert!(out.status.success());
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    for name in ["usage.events", "meterline.dlq.validate"] {
        assert!(
            report.contains(&format!(
                "differs  {}: message.timestamp.type: LogAppendTime in the file, CreateTime in the cluster (not changed)",
                w.topic(name)
            )),
            "{report}"
        );
    }
    assert!(report.contains("0 created, 2 differ"), "{report}");
    assert_eq!(timestamp_type(&w.topic("usage.events")), "CreateTime");
    for name in [
        "usage.identified",
        "usage.validated",
        "usage.enriched",
        "usage.rated",
        "usage.windows",
        "finance.postings",
        "usage.exceptions",
        "meterline.dlq.enrich",
        "ref.customers",
        "meterline.dedupe.dedupe.changelog",
    ] {
        assert_eq!(timestamp_type(&w.topic(name)), "LogAppendTime", "{name}");
    }

    // One valid event 30 days old, stamped with its event time, and one
    // malformed record stamped alike.
    let old_ms = now_ms() - BACKFILL_AGE_DAYS * DAY_MS;
    let old_time = chrono::DateTime::from_timestamp_millis(old_ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let valid = cloudevent(
        "backfill",
        "b-1",
        "llm.tokens",
        "cust-1",
        &old_time,
        r#"{"tokens":5,"model":"small"}"#,
    );
    let malformed = br#"{"specversion":"1.0","id":"b-2","#.to_vec();
    let p = producer();
    for value in [valid.into_bytes(), malformed] {
        p.send(
            BaseRecord::<[u8], [u8]>::to(&w.topic("usage.events"))
                .key(&b"cust-1"[..])
                .payload(&value[..])
                .timestamp(old_ms),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let input = read_all(&w.topic("usage.events"), true);
    assert_eq!(input.len(), 2);
    assert!(
        input.iter().all(|r| r.timestamp_ms == Some(old_ms)),
        "the input keeps the producer's stamp: {input:?}"
    );

    let before_ms = now_ms();
    let mut stage = w.spawn_stage(&["validate", "dedupe"], "a");
    let validated_topic = w.topic("usage.validated");
    let dlq_topic = w.topic("meterline.dlq.validate");
    wait_until(
        "the event validated and the bad record dead-lettered",
        || read_all(&validated_topic, true).len() == 1 && read_all(&dlq_topic, true).len() == 1,
    );
    let after_ms = now_ms();
    assert!(terminate(&mut stage).success());

    let near_now = |ts: Option<i64>| {
        ts.is_some_and(|t| t >= before_ms - CLOCK_SLACK_MS && t <= after_ms + CLOCK_SLACK_MS)
    };
    let validated = read_all(&validated_topic, true);
    assert_eq!(validated.len(), 1);
    assert_eq!(validated[0].json()["id"], "b-1");
    assert!(
        near_now(validated[0].timestamp_ms),
        "usage.validated is stamped when appended, not {old_ms}: {:?} not in [{before_ms}, {after_ms}]",
        validated[0].timestamp_ms
    );
    let dead = read_all(&dlq_topic, true);
    assert_eq!(dead.len(), 1);
    assert!(
        near_now(dead[0].timestamp_ms),
        "the dead letter is stamped when written, even on a CreateTime topic: {:?}",
        dead[0].timestamp_ms
    );
    assert_eq!(
        dead[0].header("meterline.original.timestamp"),
        Some(old_ms.to_string())
    );
}
