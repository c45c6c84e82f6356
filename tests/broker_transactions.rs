//! The broker meterline stands on honours transactions: what read_committed
//! and read_uncommitted consumers see, and the offsets sent with a transaction.
//! Against the real broker (never librdkafka's mock cluster, which shows
//! aborted records to read_committed consumers and stores no offsets).

mod common;

use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config().create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(10)))),
        ))
        .unwrap();
    r.into_iter().for_each(|x| {
        x.unwrap();
    });
}

fn send(p: &BaseProducer, topic: &str, i: usize) {
    let v = format!("record-{i}");
    p.send(BaseRecord::<str, str>::to(topic).key("k").payload(&v))
        .unwrap();
}

#[test]
fn committed_and_aborted_records_by_isolation_level_and_sent_offsets() {
    let w = World::new("txn", "");
    let topic = w.topic("txn.out");
    let input = w.topic("txn.in");
    create_topic(&topic, 1);
    create_topic(&input, 1);
    // Input records, so the group's committed offset refers to something real.
    produce(
        &input,
        &(0..20)
            .map(|i| (None, Some(format!("in-{i}").into_bytes()), vec![]))
            .collect::<Vec<_>>(),
    );

    let producer: BaseProducer = client_config()
        .set("transactional.id", format!("{}txn-test", w.ns))
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let t = Duration::from_secs(30);
    producer.init_transactions(t).unwrap();

    // A consumer group whose offsets the transaction commits.
    let group = format!("{}txn-group", w.ns);
    let consumer: BaseConsumer = client_config()
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    consumer.subscribe(&[input.as_str()]).unwrap();
    // Poll until assigned and a record arrives (group metadata needs a generation).
    let t0 = std::time::Instant::now();
    while consumer.poll(Duration::from_millis(200)).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "consumer never got a record"
        );
    }
    let cgm = consumer.group_metadata().unwrap();

    producer.begin_transaction().unwrap();
    for i in 0..5 {
        send(&producer, &topic, i);
    }
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&input, 0, Offset::Offset(7))
        .unwrap();
    producer
        .send_offsets_to_transaction(&offsets, &cgm, t)
        .unwrap();
    producer.commit_transaction(t).unwrap();

    producer.begin_transaction().unwrap();
    for i in 5..10 {
        send(&producer, &topic, i);
    }
    producer.flush(t).unwrap();
    producer.abort_transaction(t).unwrap();

    producer.begin_transaction().unwrap();
    send(&producer, &topic, 10);
    producer.commit_transaction(t).unwrap();

    let committed = read_all(&topic, true);
    let uncommitted = read_all(&topic, false);
    let values = |rs: &[Rec]| -> Vec<String> {
        rs.iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
            .collect()
    };
    assert_eq!(
        values(&committed),
        vec![
            "record-0",
            "record-1",
            "record-2",
            "record-3",
            "record-4",
            "record-10"
        ]
    );
    assert_eq!(
        uncommitted.len(),
        11,
        "read_uncommitted sees aborted records too"
    );
    assert_eq!(
        values(&uncommitted)[5..10],
        ["record-5", "record-6", "record-7", "record-8", "record-9"]
    );

    // The group's committed offset is the one sent with the committed transaction.
    let mut q = TopicPartitionList::new();
    q.add_partition(&input, 0);
    let got = consumer.committed_offsets(q, t).unwrap();
    assert_eq!(got.elements()[0].offset(), Offset::Offset(7));
}

/// Counts the delivery reports served, by outcome.
#[derive(Default)]
struct Reports {
    delivered: std::sync::atomic::AtomicUsize,
    failed: std::sync::atomic::AtomicUsize,
}

impl rdkafka::ClientContext for Reports {}

impl rdkafka::producer::ProducerContext for Reports {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        let counter = match result {
            Ok(_) => &self.delivered,
            Err(_) => &self.failed,
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `kafka::flush` (every commit's) returns only once every record sent has
/// its delivery report served, and says so when its time is up first.
#[test]
fn flush_returns_once_every_record_is_reported() {
    const RECORDS: usize = 2_000;
    let w = World::new("flush", "");
    let topic = w.topic("flush.out");
    create_topic(&topic, 3);
    let producer: BaseProducer<Reports> = client_config()
        .set("enable.idempotence", "true")
        .create_with_context(Reports::default())
        .unwrap();
    for i in 0..RECORDS {
        let v = format!("record-{i}");
        meterline::kafka::send_waiting(&producer, BaseRecord::<str, str>::to(&topic).payload(&v))
            .unwrap();
    }
    // Nothing polled yet, so no report was served: no time, no flush.
    match meterline::kafka::flush(&producer, Duration::ZERO) {
        Err(rdkafka::error::KafkaError::Flush(code)) => {
            assert_eq!(code, rdkafka::types::RDKafkaErrorCode::OperationTimedOut)
        }
        other => panic!("a flush out of time says so: {other:?}"),
    }
    meterline::kafka::flush(&producer, Duration::from_secs(30)).unwrap();
    let reports = producer.context();
    let delivered = reports.delivered.load(std::sync::atomic::Ordering::SeqCst);
    let failed = reports.failed.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!((delivered, failed), (RECORDS, 0));
    assert_eq!(producer.in_flight_count(), 0);
    assert_eq!(read_all(&topic, false).len(), RECORDS);
}
