//! Kafka clients built from the configuration, and the one-line errors the CLI
//! prints when the cluster cannot be reached.
//!
//! Every client gets the user's pass-through properties (security settings
//! included), then the settings meterline needs for exactly-once, which the
//! user cannot override: read_committed, no auto-commit, idempotence.

use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders, ToBytes};
use rdkafka::metadata::Metadata;
use rdkafka::producer::{BaseProducer, BaseRecord, Partitioner, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Config;

/// One consumed record's headers, read without assuming their keys are UTF-8.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordHeaders {
    /// In record order (Kafka allows repeated keys and null values). A key
    /// that is not UTF-8 is converted lossily (U+FFFD for each bad sequence).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// How many keys were not UTF-8.
    pub undecodable_keys: usize,
}

/// The headers of a consumed record: the one header conversion every reader
/// uses (stages, replay, reconcile, tests).
///
/// rdkafka's safe header accessors (`Headers::get`, `try_get`, `iter`)
/// unwrap `CStr::to_str` on the key and so panic on a key that is not UTF-8:
/// one such record would stop a partition for good, on every restart. This
/// reads the keys as bytes through librdkafka's C API instead, so it is total.
pub fn record_headers(msg: &BorrowedMessage<'_>) -> RecordHeaders {
    use rdkafka::bindings as rd;
    let mut out = RecordHeaders::default();
    let mut native: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `msg.ptr()` is the live message this borrow guards; librdkafka
    // writes a pointer to the message's own header list (valid as long as the
    // message) or leaves it null.
    let err = unsafe { rd::rd_kafka_message_headers(msg.ptr(), &mut native) };
    if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || native.is_null() {
        return out;
    }
    // SAFETY: `native` is a valid header list for the message's lifetime.
    let count = unsafe { rd::rd_kafka_header_cnt(native) };
    out.headers.reserve(count);
    for idx in 0..count {
        let mut name: *const std::ffi::c_char = std::ptr::null();
        let mut value: *const std::ffi::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: idx < count; the out-pointers are valid locals.
        let err =
            unsafe { rd::rd_kafka_header_get_all(native, idx, &mut name, &mut value, &mut size) };
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            continue;
        }
        // SAFETY: librdkafka stores header names NUL-terminated; the value
        // is `size` bytes (null for a null value); both live as long as `msg`.
        let key = unsafe { std::ffi::CStr::from_ptr(name) }.to_bytes();
        let value = (!value.is_null())
            .then(|| unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec());
        let key = match std::str::from_utf8(key) {
            Ok(key) => key.to_owned(),
            Err(_) => {
                out.undecodable_keys += 1;
                String::from_utf8_lossy(key).into_owned()
            }
        };
        out.headers.push((key, value));
    }
    out
}

/// Our headers (key, value or null, in order) as the Kafka headers of a
/// record to produce: the reverse of [`record_headers`], and the one
/// conversion every producer uses.
pub fn owned_headers(headers: &[(String, Option<Vec<u8>>)]) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(headers.len());
    for (key, value) in headers {
        out = out.insert(Header {
            key: key.as_str(),
            value: value.as_deref(),
        });
    }
    out
}

/// How long a producer whose queue is full waits for deliveries to make room.
const QUEUE_FULL_POLL_MS: u64 = 10;

/// Sends one record, waiting while librdkafka's local queue is full
/// (back-pressure: the producer is polled so deliveries make room, then the
/// record is offered again). Any other error is returned as is.
pub fn send_waiting<C, Part, K, P>(
    producer: &BaseProducer<C, Part>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    Part: Partitioner,
    C: ProducerContext<Part>,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(QUEUE_FULL_POLL_MS));
                record = r;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// How long one wait for delivery reports lasts while [`flush`] waits: the
/// most a flush overshoots the last report. Not less: rust-rdkafka's
/// `BaseProducer::poll` truncates the time left to whole milliseconds, so its
/// last millisecond is a busy loop, and every round also wakes librdkafka's
/// broker threads. At 1 ms the seven stages' flushes spun enough to starve
/// the broker on a 2-core machine (its controller missed heartbeats).
const FLUSH_POLL_MS: u64 = 10;

/// Sends everything queued and waits until every record is acknowledged (or
/// refused), up to `timeout`: what rust-rdkafka's `Producer::flush` does, in
/// rounds of [`FLUSH_POLL_MS`] instead of 100 ms. Its `BaseProducer::poll`
/// serves delivery reports until its whole timeout has passed, so each flush
/// of records still in flight (every commit) took 100 ms at least: measured
/// 2026-12-08, 105 ms of the 150 ms a commit took in every stage. Call it
/// before `commit_transaction` too, whose own flush is rust-rdkafka's.
pub fn flush<C, Part>(producer: &BaseProducer<C, Part>, timeout: Duration) -> Result<(), KafkaError>
where
    Part: Partitioner,
    C: ProducerContext<Part>,
{
    use rdkafka::producer::Producer;
    let deadline = Instant::now() + timeout;
    loop {
        // A zero timeout wakes librdkafka's broker threads to send now
        // (linger.ms waived) and says whether anything is still in flight.
        match producer.flush(Duration::ZERO) {
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline =>
            {
                producer.poll(Duration::from_millis(FLUSH_POLL_MS));
            }
            done => return done,
        }
    }
}

/// Whether a produce error can never succeed on retry: the record itself is
/// refused (too large for the producer or the topic, or invalid), so
/// aborting and retrying the transaction would fail the same way forever.
pub fn is_permanent_produce_error(code: rdkafka::types::RDKafkaErrorCode) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge | C::InvalidRecord
    )
}

/// Java's default partitioner: a Java producer keying by customer id and
/// meterline must put that customer on the same partition number.
pub const PARTITIONER: &str = "murmur2_random";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kafka client config: {0}")]
    Config(String),
    #[error("cannot reach Kafka at {servers}: {message}")]
    Unreachable { servers: String, message: String },
    #[error("topic {topic} does not exist on {servers} (run `meterline topology apply`)")]
    MissingTopic { topic: String, servers: String },
    #[error("topic {topic} has {partitions} partition(s), 0 to {}: there is no partition {partition}", partitions - 1)]
    NoSuchPartition {
        topic: String,
        partition: i32,
        partitions: i32,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
}

fn base(props: &std::collections::BTreeMap<String, String>) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in props {
        c.set(k, v);
    }
    // librdkafka logs through the `log` facade at its own levels; keep it quiet
    // unless asked, our own events say what matters.
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

/// The last value of header `name` of a record, as text ("" when absent).
pub fn header_text(m: &BorrowedMessage<'_>, name: &str) -> String {
    use rdkafka::message::{Headers, Message};
    m.headers()
        .and_then(|h| h.iter().filter(|x| x.key == name).last())
        .and_then(|x| x.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// How often a stage's consumer reports librdkafka's statistics (its
/// queue of records fetched ahead: `meterline_consumer_queue_bytes`).
pub const CONSUMER_STATS_INTERVAL_MS: u64 = 5_000;

/// Consumer settings for a stage: exactly-once input side.
pub fn stage_consumer_config(config: &Config, group_id: &str) -> ClientConfig {
    let mut c = base(&config.consumer_props());
    c.set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set(
            "statistics.interval.ms",
            CONSUMER_STATS_INTERVAL_MS.to_string(),
        )
        .set(
            "session.timeout.ms",
            config.runtime.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (config.runtime.session_timeout_ms / 4).max(100).to_string(),
        );
    if config.runtime.static_membership {
        // A restart with the same instance id takes its partitions back at
        // once: no rebalance, no wait for the session timeout.
        c.set(
            "group.instance.id",
            format!("{group_id}.{}", config.runtime.instance_id),
        );
    }
    c
}

/// A plain read_committed consumer with no group, for restores and reports.
pub fn reader_config(config: &Config) -> ClientConfig {
    let mut c = base(&config.consumer_props());
    c.set(
        "group.id",
        format!("{}meterline.reader", config.topology.namespace),
    )
    .set("isolation.level", "read_committed")
    .set("enable.auto.commit", "false")
    .set("enable.partition.eof", "true")
    .set("auto.offset.reset", "earliest");
    c
}

/// A no-group reader for store restores: an empty fetch at the end of a
/// changelog comes back at once instead of after librdkafka's default
/// `fetch.wait.max.ms` (500 ms). A changelog written in transactions always
/// ends with a commit marker after the checkpointed record, so every restore,
/// even one with nothing to replay, reads to the end: 500 ms per store and
/// partition otherwise (9 s for validate's 3 stores x 6 partitions).
pub fn restore_reader(config: &Config) -> Result<BaseConsumer<ReaderContext>, ClientError> {
    let mut c = reader_config(config);
    c.set("fetch.wait.max.ms", "10");
    c.create_with_context(ReaderContext)
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Transactional producer settings.
pub fn transactional_producer_config(config: &Config, transactional_id: &str) -> ClientConfig {
    let mut c = base(&config.producer_props());
    c.set("transactional.id", transactional_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", PARTITIONER)
        .set(
            "transaction.timeout.ms",
            config.runtime.transaction_timeout_ms.to_string(),
        )
        .set("linger.ms", "5");
    c
}

/// Producer settings of a stage running `at_least_once`: idempotent, not
/// transactional, batching like the transactional one.
pub fn at_least_once_producer_config(config: &Config) -> ClientConfig {
    let mut c = producer_config(config);
    c.set("linger.ms", "5");
    c
}

/// Non-transactional (idempotent) producer settings, for tools.
pub fn producer_config(config: &Config) -> ClientConfig {
    let mut c = base(&config.producer_props());
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", PARTITIONER);
    c
}

pub fn admin(config: &Config) -> Result<AdminClient<DefaultClientContext>, ClientError> {
    base(&config.common_props())
        .create()
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Fetches cluster metadata, or says in one line why the broker is unreachable.
pub fn metadata<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
    config: &Config,
    topic: Option<&str>,
) -> Result<Metadata, ClientError> {
    client
        .fetch_metadata(
            topic,
            Duration::from_millis(config.kafka.request_timeout_ms),
        )
        .map_err(|e| ClientError::Unreachable {
            servers: config.kafka.bootstrap_servers.clone(),
            message: e.to_string(),
        })
}

/// Partition count of each topic, or a missing-topic error naming it.
pub fn partition_count(
    metadata: &Metadata,
    topic: &str,
    config: &Config,
) -> Result<i32, ClientError> {
    match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            Ok(t.partitions().len() as i32)
        }
        _ => Err(ClientError::MissingTopic {
            topic: topic.to_string(),
            servers: config.kafka.bootstrap_servers.clone(),
        }),
    }
}

/// Creates a client of any kind from a ClientConfig and a context.
pub fn create<T, C>(cfg: &ClientConfig, ctx: C) -> Result<T, ClientError>
where
    T: FromClientConfigAndContext<C>,
    C: ClientContext,
{
    cfg.create_with_context(ctx)
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Context of readers that run to the end of partitions: librdkafka also
/// reports each partition EOF as a client error, which is how these readers
/// know they are done, not something to log as an error.
pub struct ReaderContext;

impl ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        match error {
            KafkaError::PartitionEOF(_) => tracing::trace!(reason, "partition end"),
            KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                tracing::trace!(reason, "partition end")
            }
            e => tracing::warn!(error = %e, reason, "kafka client error"),
        }
    }
}

impl ConsumerContext for ReaderContext {}

/// A no-group reader, for restores, reports and tests.
pub fn reader(config: &Config) -> Result<BaseConsumer<ReaderContext>, ClientError> {
    reader_config(config)
        .create_with_context(ReaderContext)
        .map_err(|e| ClientError::Config(e.to_string()))
}

/// Checks that the broker answers and that `topics` exist; one clear error otherwise.
pub fn check_topics<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    config: &Config,
    topics: &[String],
) -> Result<Metadata, ClientError> {
    // A topic created a moment ago (`topology apply` just before `run`) may
    // not be in the broker's metadata yet, or have no leader yet: wait for
    // it a bounded time before calling it missing.
    let deadline = std::time::Instant::now() + Duration::from_millis(TOPIC_WAIT_MS);
    loop {
        let md = metadata(consumer.client(), config, None)?;
        match topics
            .iter()
            .try_for_each(|t| partition_count(&md, t, config).map(|_| ()))
        {
            Ok(()) => return Ok(md),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(TOPIC_WAIT_POLL_MS)),
        }
    }
}

/// How long a stage waits at startup for its topics to appear in the
/// metadata (just created, no leader yet) before it reports one missing.
pub const TOPIC_WAIT_MS: u64 = 10_000;
/// How often it asks again meanwhile.
const TOPIC_WAIT_POLL_MS: u64 = 250;

/// Pause between two attempts of a call [`retry_until`] repeats.
const RETRY_PAUSE_MS: u64 = 250;
/// [`retry_until`] warns once every this many failed attempts.
const RETRY_WARN_EVERY_ATTEMPTS: u32 = 20;

/// Calls `f` until it succeeds or `deadline` passes (then its last error;
/// `None`: until it succeeds). For metadata calls right after `topology
/// apply`, when a partition may have no leader yet (NotLeaderForPartition).
/// Warns now and then, not on every attempt.
pub fn retry_until<T, E: std::fmt::Display>(
    what: &str,
    deadline: Option<Instant>,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut attempt: u32 = 0;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if deadline.is_some_and(|d| Instant::now() >= d) => return Err(e),
            Err(e) => {
                attempt += 1;
                if attempt % RETRY_WARN_EVERY_ATTEMPTS == 1 {
                    tracing::warn!(what, error = %e, attempt, "not answered yet; asking again");
                }
                std::thread::sleep(Duration::from_millis(RETRY_PAUSE_MS));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    #[test]
    fn owned_headers_keep_order_repeated_keys_and_null_values() {
        use rdkafka::message::Headers;
        let ours = vec![
            ("a".to_string(), Some(b"1".to_vec())),
            ("b".to_string(), None),
            ("a".to_string(), Some(b"2".to_vec())),
        ];
        let kafka = owned_headers(&ours);
        let back: Vec<(String, Option<Vec<u8>>)> = kafka
            .iter()
            .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
            .collect();
        assert_eq!(back, ours);
    }

    #[test]
    fn only_errors_of_the_record_itself_are_permanent() {
        use rdkafka::types::RDKafkaErrorCode as C;
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidMessageSize,
            C::MessageBatchTooLarge,
            C::InvalidRecord,
        ] {
            assert!(is_permanent_produce_error(code), "{code:?}");
        }
        for code in [
            C::QueueFull,
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::NetworkException,
            C::InvalidMessage,
            C::ProducerFenced,
        ] {
            assert!(!is_permanent_produce_error(code), "{code:?}");
        }
    }

    /// librdkafka refuses `security.protocol` values it was built without
    /// ("OpenSSL not available at build time"); these must all be accepted,
    /// so security settings given in the config reach a client that can use them.
    #[test]
    fn build_supports_tls_and_sasl_settings() {
        for (protocol, mechanism) in [
            ("SSL", None),
            ("SASL_SSL", Some("SCRAM-SHA-512")),
            ("SASL_SSL", Some("PLAIN")),
            ("SASL_PLAINTEXT", Some("SCRAM-SHA-256")),
            ("SASL_SSL", Some("OAUTHBEARER")),
        ] {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", "127.0.0.1:1")
                .set("security.protocol", protocol);
            if let Some(m) = mechanism {
                c.set("sasl.mechanism", m);
                if m != "OAUTHBEARER" {
                    c.set("sasl.username", "u").set("sasl.password", "p");
                }
            }
            let made: Result<BaseProducer, _> = c.create();
            assert!(made.is_ok(), "{protocol} {mechanism:?}: {:?}", made.err());
        }
    }
}

/// Kafka's murmur2 hash of a record key, as the Java client and librdkafka's
/// `murmur2` / `murmur2_random` partitioners compute it (seed 0x9747b28c).
pub fn murmur2(key: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = key.len();
    // Keys longer than u32::MAX bytes do not exist on Kafka (1 MB records).
    let mut h: u32 = SEED ^ (len as u32);
    let (chunks, rest) = key.as_chunks::<4>();
    for c in chunks {
        let mut k = u32::from_le_bytes(*c);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if let [_, _, b, ..] = rest {
        h ^= u32::from(*b) << 16;
    }
    if let [_, b, ..] = rest {
        h ^= u32::from(*b) << 8;
    }
    if let Some(b) = rest.first() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition a keyed record lands on among `partitions` under the
/// murmur2 partitioners ([`PARTITIONER`], Java's default): the hash made
/// positive, modulo the count. `partitions` must be >= 1.
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions >= 1, "a topic has at least one partition");
    let positive = murmur2(key) & 0x7fff_ffff;
    // positive < 2^31 and partitions >= 1: the remainder fits an i32.
    (positive % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod partitioner_tests {
    use super::*;

    /// Kafka's own test vectors (`UtilsTest.testMurmur2`): the hash as a
    /// signed Java int.
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        for n in 1..=12 {
            for key in ["cust-1", "cust-2", "", "ünïcödé"] {
                let p = partition_for_key(key.as_bytes(), n);
                assert!((0..n).contains(&p));
                assert_eq!(p, partition_for_key(key.as_bytes(), n));
            }
        }
        assert_eq!(partition_for_key(b"21", 1), 0);
    }
}
