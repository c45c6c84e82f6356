//! The exactly-once stage runtime: the loop every stage runs.
//!
//! read committed records -> [`Processor::process`] with the partition's
//! stores -> write outputs, dead letters, store changelogs and the input
//! offsets in ONE Kafka transaction (EOS v2: `send_offsets_to_transaction`
//! with the consumer's group metadata, as Kafka Streams does).
//!
//! * Batches close every `commit_interval_ms` or `max_batch_records`.
//! * Errors by kind: a retriable processing error aborts, rewinds and retries
//!   after a backoff; an abortable Kafka error aborts, rewinds the consumer to
//!   the committed offsets and drops the transaction's store writes; a fatal
//!   error or a fenced producer stops the stage with a clear message (a
//!   supervisor restarts it).
//! * Rebalances (cooperative-sticky): before partitions are revoked the open
//!   transaction is committed (aborted if they were lost) and their stores
//!   closed; on assignment each store is restored from its changelog before the
//!   first record of the partition is processed.
//! * The loop runs on its own OS thread: every librdkafka transaction call
//!   blocks, and none of them may run on the async executor.
//!
//! See [`crate::store`] for why the local state never runs ahead of Kafka.

pub mod dlq;
mod heap;
mod recover;
pub mod restore;
pub mod schedule;
mod tables;
pub mod testing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::{Config, ProcessingGuarantee};
use crate::internal_events::{
    ChangelogSent, ConsumerLagMeasured, ConsumerQueueMeasured, NativeHeapMeasured, PartitionClosed,
    PartitionsAssigned, PartitionsRevoked, RecordDeadLettered, RecordProcessed, RecordWritten,
    StageFailed, StoreKeysMeasured, StoreMemoryMeasured, TransactionAborted, TransactionCommitted,
};
use crate::kafka;
use crate::metrics::StageMetrics;
use crate::store::rocks::{RocksBackend, StoreMemory};
use crate::store::{PartitionStores, StoreError, StoreId};
use crate::topology::StageSpec;

/// How long one consumer poll waits for a record.
const POLL_TIMEOUT_MS: u64 = 50;
/// How often `Processor::punctuate` runs per partition.
const PUNCTUATE_INTERVAL_MS: u64 = 1_000;
/// How often consumer lag and store sizes are refreshed.
const GAUGE_REFRESH_INTERVAL_MS: u64 = 5_000;
/// Backoff after a retriable failure, doubled per consecutive failure up to the max.
const RETRY_BACKOFF_MIN_MS: u64 = 100;
const RETRY_BACKOFF_MAX_MS: u64 = 10_000;
/// One slice of a resumable `abort_transaction` call (delivery reports are
/// served between slices).
const ABORT_SLICE_MS: u64 = 200;
/// Retries of one transactional call that failed retriably before aborting.
const TXN_CALL_RETRIES_MAX: u32 = 3;
/// Producers replaced in a row (no commit in between) after fatal, not
/// fencing, transaction errors before the stage stops.
const PRODUCER_REPLACEMENTS_IN_A_ROW_MAX: u32 = 5;
/// Bits of the delivery opaque: tag | store id << 24 | partition.
const CHANGELOG_TAG: usize = 1 << 40;
const PARTITION_MASK: usize = (1 << 24) - 1;
/// Opaque of a processor output: tag | index of its input record in the
/// open transaction (bits of [`PARTITION_MASK`]), so a delivery that can
/// never succeed is traced back to the record that caused it.
const OUTPUT_TAG: usize = 1 << 41;
/// Opaque of a dead letter.
const DEAD_LETTER_TAG: usize = 1 << 42;

/// One input record, as a processor sees it.
#[derive(Debug, Clone, Copy)]
pub struct InputRecord<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(String, Option<Vec<u8>>)],
    pub timestamp_ms: Option<i64>,
}

/// One record to write inside the current transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Full topic name (namespace applied).
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// None: by key (murmur2, as Java clients do).
    pub partition: Option<i32>,
    // No timestamp: every record is stamped when it is produced (append time
    // on meterline's topics, DESIGN.md), never with its input's timestamp,
    // so retention cannot delete it early.
}

/// What a processor can say went wrong with a record.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StageError {
    /// Bad input: the record goes to the stage's dead-letter topic with this
    /// stable reason code. Its store writes and outputs for the record are
    /// dropped (a store savepoint per record, see [`process_atomically`]); a
    /// cache the processor keeps in memory is its own to leave untouched
    /// before it rejects.
    #[error("{code}: {message}")]
    Reject { code: &'static str, message: String },
    /// A dependency is unavailable (schema registry down, ...): abort, rewind,
    /// retry after a backoff. Nothing is lost or dead-lettered.
    #[error("retriable: {0}")]
    Retriable(String),
    /// A bug or corrupt state: stop the stage.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl From<StoreError> for StageError {
    fn from(e: StoreError) -> Self {
        StageError::Fatal(e.to_string())
    }
}

/// What the runtime hands a processor for one record or punctuation.
pub struct Ctx<'a> {
    pub partition: i32,
    pub stores: &'a mut PartitionStores,
    pub out: &'a mut Vec<Output>,
    pub config: &'a Config,
    /// Wall-clock time of this call, ms since the epoch. A stage reads the
    /// time here, never from the system, so tests pin it
    /// ([`testing::Harness`]).
    pub now_ms: i64,
}

impl Ctx<'_> {
    pub fn emit(&mut self, output: Output) {
        self.out.push(output);
    }

    /// [`now_ms`](Self::now_ms) as an instant.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.now_ms).unwrap_or_default()
    }
}

/// The wall clock, ms since the epoch: what the runtime puts in [`Ctx`].
pub fn wall_clock_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A stage's logic. Everything it keeps must live in the stores it is given
/// (or be re-derivable from them): the runtime rolls stores back on abort and
/// moves them between instances on rebalance.
pub trait Processor: Send + 'static {
    fn spec(&self) -> &'static StageSpec;
    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError>;
    /// Called about every second per assigned partition, inside the open
    /// transaction (expiry, watermark advance by wall clock, ...).
    fn punctuate(&mut self, _ctx: &mut Ctx<'_>, _now_ms: i64) -> Result<(), StageError> {
        Ok(())
    }
    /// The record was dead-lettered with `code` (after [`Processor::process`]
    /// returned a reject): the place to record lineage and counters. Writes
    /// to the stores are kept; outputs are ignored.
    fn on_rejected(
        &mut self,
        _rec: &InputRecord<'_>,
        _code: &'static str,
        _ctx: &mut Ctx<'_>,
    ) -> Result<(), StageError> {
        Ok(())
    }
    /// About to commit: write any state the processor keeps in memory for
    /// this partition into its stores (a write-back cache), so it goes to
    /// the changelog in this transaction. Outputs are not allowed here.
    fn flush(&mut self, _ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        Ok(())
    }
    /// The transaction was aborted: forget any cache derived from the stores.
    fn on_rollback(&mut self) {}
    /// Partitions moved away: forget anything cached for them.
    fn on_revoked(&mut self, _partition: i32) {}
    /// One record of a table topic (`StageSpec::tables`, given by its logical
    /// name). Every instance reads all partitions of its tables: all of them
    /// to their end before the first input record, then as they arrive.
    fn on_table_record(&mut self, _table: &str, _key: Option<&[u8]>, _value: Option<&[u8]>) {}
    /// Called once, before any other call, with the partition count of the
    /// input topic: which input partition a customer's records land on
    /// ([`crate::kafka::partition_for_key`]), for work a stage does for
    /// customers that sent nothing yet (aggregate's subscription periods).
    fn on_input_partitions(&mut self, _count: i32) {}
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Client(#[from] kafka::ClientError),
    #[error("stage {stage}: {message}")]
    Fatal { stage: String, message: String },
}

/// Readiness and liveness a stage reports to `/readyz`, and the way in to
/// its stores for queries (`/lineage`).
#[derive(Default)]
pub struct StageStatus {
    /// Assigned (possibly zero partitions) and every store restored.
    pub ready: AtomicBool,
    /// The loop is running.
    pub alive: AtomicBool,
    /// Set once the stage runs.
    pub query: std::sync::OnceLock<Arc<dyn StoreQuery>>,
    /// Fault point for tests: when set, the loop takes it back and handles
    /// a fatal, not fencing, producer error (the producer is replaced).
    #[doc(hidden)]
    pub inject_producer_failure: AtomicBool,
}

impl std::fmt::Debug for StageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageStatus")
            .field("ready", &self.ready)
            .field("alive", &self.alive)
            .finish()
    }
}

/// Read-only access to the committed state of a running stage's stores,
/// for interactive queries. Blocks while the stage holds its engine (one
/// record or one commit): call it off the async executor.
pub trait StoreQuery: Send + Sync {
    /// The committed value of `key` in the store named `store`, from every
    /// partition this instance owns that has it.
    fn get(&self, store: &str, key: &[u8]) -> Vec<(i32, Vec<u8>)>;
    /// The committed values of keys in `[from, to)`, per partition this
    /// instance owns, at most `limit` per partition.
    fn scan(&self, store: &str, from: &[u8], to: &[u8], limit: usize) -> Vec<(i32, Vec<Vec<u8>>)>;
    /// The partitions this instance owns.
    fn partitions(&self) -> Vec<i32>;
}

struct EngineQuery<P: Processor>(Arc<Mutex<Engine<P>>>);

impl<P: Processor> StoreQuery for EngineQuery<P> {
    fn get(&self, store: &str, key: &[u8]) -> Vec<(i32, Vec<u8>)> {
        let engine = lock(&self.0);
        let Some(sid) = engine.spec.stores.iter().position(|s| *s == store) else {
            return Vec::new();
        };
        engine
            .parts
            .iter()
            .filter_map(|(p, part)| {
                part.stores
                    .committed_get(sid as StoreId, key)
                    .ok()
                    .flatten()
                    .map(|v| (*p, v))
            })
            .collect()
    }
    fn scan(&self, store: &str, from: &[u8], to: &[u8], limit: usize) -> Vec<(i32, Vec<Vec<u8>>)> {
        let engine = lock(&self.0);
        let Some(sid) = engine.spec.stores.iter().position(|s| *s == store) else {
            return Vec::new();
        };
        engine
            .parts
            .iter()
            .filter_map(|(p, part)| {
                let found = part
                    .stores
                    .committed_scan(sid as StoreId, from, to, limit)
                    .ok()?;
                (!found.is_empty()).then(|| (*p, found.into_iter().map(|(_, v)| v).collect()))
            })
            .collect()
    }
    fn partitions(&self) -> Vec<i32> {
        lock(&self.0).parts.keys().copied().collect()
    }
}

/// Classification of a failure inside the loop.
#[derive(Debug)]
enum LoopError {
    /// Abort the transaction, rewind, back off, go on.
    Abort {
        cause: &'static str,
        message: String,
    },
    /// Stop the stage.
    Fatal(String),
    /// The producer hit a fatal transaction error that is not fencing (the
    /// broker answered INVALID_TXN_STATE to an abort, librdkafka#4849):
    /// replace it, abort and rewind as for [`LoopError::Abort`].
    ProducerFailed {
        cause: &'static str,
        message: String,
    },
    /// A record was refused by the producer or the broker for what it is
    /// (too large, invalid): retrying cannot help.
    Unproducible(String),
}

impl From<StoreError> for LoopError {
    fn from(e: StoreError) -> Self {
        LoopError::Fatal(e.to_string())
    }
}

fn classify(call: &'static str, e: KafkaError) -> LoopError {
    if let KafkaError::Transaction(re) = &e {
        if re.is_fatal() && is_fencing(re.code()) {
            return LoopError::Fatal(format!(
                "{call}: {re} (fenced: a newer instance with the same transactional.id runs)"
            ));
        }
        if re.is_fatal() {
            return LoopError::ProducerFailed {
                cause: call,
                message: re.to_string(),
            };
        }
        return LoopError::Abort {
            cause: call,
            message: re.to_string(),
        };
    }
    match e.rdkafka_error_code() {
        Some(code) if is_fencing(code) => LoopError::Fatal(format!("{call}: {e}")),
        Some(RDKafkaErrorCode::Fatal) => LoopError::ProducerFailed {
            cause: call,
            message: e.to_string(),
        },
        _ => LoopError::Abort {
            cause: call,
            message: e.to_string(),
        },
    }
}

/// Another producer with this transactional.id took over: going on would
/// fence it back, so only these stop the stage for good.
fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::Fenced
            | RDKafkaErrorCode::ProducerFenced
            | RDKafkaErrorCode::InvalidProducerEpoch
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

/// Delivery reports of the transactional producer: the greatest changelog
/// offset per (store, partition) (the checkpoint to write after commit) and
/// the first failure (which dooms the transaction).
#[derive(Default)]
pub struct DeliveryTracker {
    changelog_max: Mutex<BTreeMap<(StoreId, i32), i64>>,
    failure: Mutex<Option<String>>,
    /// Deliveries that failed for good: (opaque, error).
    unproducible: Mutex<Vec<(usize, String)>>,
}

/// What the delivery reports of one transaction said.
struct Deliveries {
    changelog_max: BTreeMap<(StoreId, i32), i64>,
    failure: Option<String>,
    unproducible: Vec<(usize, String)>,
}

impl DeliveryTracker {
    fn take(&self) -> Deliveries {
        Deliveries {
            changelog_max: std::mem::take(&mut *lock(&self.changelog_max)),
            failure: lock(&self.failure).take(),
            unproducible: std::mem::take(&mut *lock(&self.unproducible)),
        }
    }
}

/// One record for the producer, borrowed from where it was made.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    topic: &'a str,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    headers: &'a [(String, Option<Vec<u8>>)],
    partition: Option<i32>,
}

/// Key and value bytes of a record, what `meterline_*_bytes_total` count.
fn record_bytes(key: Option<&[u8]>, value: Option<&[u8]>) -> u64 {
    (key.map_or(0, <[u8]>::len) + value.map_or(0, <[u8]>::len)) as u64
}

/// Hands one record to the producer (into the open transaction, if any).
/// A record the broker can never take is [`LoopError::Unproducible`].
fn produce(
    producer: &BaseProducer<DeliveryContext>,
    out: Outgoing<'_>,
    opaque: usize,
) -> Result<(), LoopError> {
    let mut record: BaseRecord<'_, [u8], [u8], usize> =
        BaseRecord::with_opaque_to(out.topic, opaque);
    if !out.headers.is_empty() {
        // Only when there are any: an empty header list is still one
        // allocation in librdkafka per record.
        record = record.headers(kafka::owned_headers(out.headers));
    }
    if let Some(k) = out.key {
        record = record.key(k);
    }
    if let Some(v) = out.value {
        record = record.payload(v);
    }
    if let Some(p) = out.partition {
        record = record.partition(p);
    }
    // No timestamp, whatever the output says: the producer stamps the send
    // time and meterline's topics (LogAppendTime) the append time.
    match kafka::send_waiting(producer, record) {
        Ok(()) => Ok(()),
        Err(e)
            if e.rdkafka_error_code()
                .is_some_and(kafka::is_permanent_produce_error) =>
        {
            Err(LoopError::Unproducible(format!(
                "producing to {}: {e}",
                out.topic
            )))
        }
        Err(e) => Err(classify("produce", e)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not wedge the stage: the data is still consistent
    // because every critical section here is a single insert or take.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct DeliveryContext(Arc<DeliveryTracker>);

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(m) => {
                if opaque & CHANGELOG_TAG != 0 {
                    let store = ((opaque >> 24) & 0xFF) as StoreId;
                    let partition = (opaque & PARTITION_MASK) as i32;
                    let mut map = lock(&self.0.changelog_max);
                    let e = map.entry((store, partition)).or_insert(m.offset());
                    *e = (*e).max(m.offset());
                }
            }
            Err((e, _)) => {
                if e.rdkafka_error_code()
                    .is_some_and(kafka::is_permanent_produce_error)
                {
                    lock(&self.0.unproducible).push((opaque, e.to_string()));
                }
                let mut f = lock(&self.0.failure);
                if f.is_none() {
                    *f = Some(e.to_string());
                }
            }
        }
    }
}

/// The consumer context: rebalance callbacks reach into the engine. They run
/// on the stage thread inside `poll`, between records, never concurrently with
/// processing.
pub struct StageContext<P: Processor> {
    engine: Arc<Mutex<Engine<P>>>,
    /// For the statistics callback, which must not wait for the engine.
    metrics: StageMetrics,
    stage: &'static str,
}

impl<P: Processor> ClientContext for StageContext<P> {
    /// librdkafka's statistics (every `kafka::CONSUMER_STATS_INTERVAL_MS`,
    /// delivered inside `poll` on the stage thread): what the consumer holds
    /// fetched ahead of the stage.
    fn stats(&self, statistics: Statistics) {
        let bytes = statistics
            .topics
            .values()
            .flat_map(|t| t.partitions.values())
            .map(|p| p.fetchq_size)
            .sum();
        ConsumerQueueMeasured {
            stage: self.stage,
            bytes,
        }
        .emit(&self.metrics);
    }
}

impl<P: Processor> ConsumerContext for StageContext<P> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut engine = lock(&self.engine);
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let lost = consumer.assignment_lost();
                let parts = engine.partitions_of(tpl);
                if lost {
                    // Someone else may own them already: nothing of this
                    // transaction may be committed.
                    engine.abort("partitions_lost", "assignment lost", Some(&parts), consumer);
                } else if let Err(e) = engine.commit(consumer) {
                    engine.handle(e, consumer);
                }
                for p in &parts {
                    engine.close_partition(*p);
                }
                let total = engine.parts.len();
                PartitionsRevoked {
                    stage: engine.spec.name,
                    partitions: &parts,
                    lost,
                    total,
                }
                .emit(&engine.metrics);
            }
            Rebalance::Assign(_) => {
                engine.status.ready.store(false, Ordering::SeqCst);
            }
            Rebalance::Error(e) => {
                warn!(stage = engine.spec.name, error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut engine = lock(&self.engine);
        if let Rebalance::Assign(tpl) = rebalance {
            let parts = engine.partitions_of(tpl);
            for p in &parts {
                if let Err(e) = engine.open_partition(*p, consumer) {
                    engine.fatal = Some(format!("opening partition {p}: {e}"));
                    return;
                }
            }
            let total = engine.parts.len();
            PartitionsAssigned {
                stage: engine.spec.name,
                partitions: &parts,
                total,
            }
            .emit(&engine.metrics);
            engine.status.ready.store(true, Ordering::SeqCst);
        }
    }
}

/// State of one assigned input partition.
struct PartState {
    stores: PartitionStores,
    /// Offset to commit with the open transaction (last processed + 1).
    next_offset: Option<i64>,
    /// Records consumed since the last commit (a rewind must seek).
    dirty: bool,
    /// The committed position, where a rewind goes back to (None: beginning).
    committed: Option<i64>,
}

/// Everything the loop and the rebalance callbacks share.
pub struct Engine<P: Processor> {
    spec: &'static StageSpec,
    processor: P,
    producer: BaseProducer<DeliveryContext>,
    tracker: Arc<DeliveryTracker>,
    transactional_id: String,
    /// Producers replaced since the last commit.
    replacements_in_a_row: u32,
    config: Arc<Config>,
    input_topic: String,
    dlq_topic: String,
    dlq_partitions: i32,
    changelog_topics: Vec<String>,
    state_root: PathBuf,
    parts: BTreeMap<i32, PartState>,
    /// Open transaction: when it began and how many input records it holds.
    txn: Option<(Instant, usize)>,
    scratch: Vec<Output>,
    metrics: StageMetrics,
    status: Arc<StageStatus>,
    fatal: Option<String>,
    failures_in_a_row: u32,
    tables: Option<tables::TableFeed>,
    /// (partition, offset) of each input record processed in the open
    /// transaction, in order: the index is its outputs' opaque.
    txn_inputs: Vec<(i32, i64)>,
    /// Input records with an output that can never be produced: dead-lettered
    /// (`output_unproducible`) when they come round again after the abort.
    poisoned: BTreeMap<(i32, i64), String>,
}

impl<P: Processor> Engine<P> {
    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.input_topic)
            .map(|e| e.partition())
            .collect()
    }

    fn store_memory(&self) -> &'static StoreMemory {
        StoreMemory::process(self.config.runtime.store_memory_mb)
    }

    fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.config.runtime.transaction_call_timeout_ms)
    }

    fn open_partition(
        &mut self,
        p: i32,
        consumer: &BaseConsumer<StageContext<P>>,
    ) -> Result<(), String> {
        let path = self.state_root.join(p.to_string());
        let (backend, wiped) = RocksBackend::open_for(&path, self.spec.stores, self.store_memory())
            .map_err(|e| e.to_string())?;
        let backend = backend.with_write_ahead_log(self.config.runtime.store_write_ahead_log);
        if wiped {
            warn!(
                stage = self.spec.name,
                partition = p,
                path = %path.display(),
                "local state was written under another store list (an upgrade): wiped, restoring every store from its changelog"
            );
        }
        let mut stores = PartitionStores::new(Box::new(backend), self.spec.stores.len());
        // One changelog topic per declared store, in the same order.
        for (i, (topic, store)) in self
            .changelog_topics
            .iter()
            .zip(self.spec.stores)
            .enumerate()
        {
            restore::restore_store(
                &self.config,
                self.spec.name,
                store,
                i as StoreId,
                topic,
                p,
                &mut stores,
                &self.metrics,
            )
            .map_err(|e| e.to_string())?;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.input_topic, p);
        let committed = consumer
            .committed_offsets(tpl, self.call_timeout())
            .map_err(|e| format!("reading committed offset: {e}"))?
            .elements()
            .first()
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        self.parts.insert(
            p,
            PartState {
                stores,
                next_offset: None,
                dirty: false,
                committed,
            },
        );
        Ok(())
    }

    fn close_partition(&mut self, p: i32) {
        // Dropping the stores closes RocksDB; what was committed is in it.
        self.parts.remove(&p);
        self.processor.on_revoked(p);
        PartitionClosed {
            stage: self.spec.name,
            partition: p,
        }
        .emit(&self.metrics);
    }

    /// False when the stage runs `at_least_once` (no Kafka transactions).
    fn transactional(&self) -> bool {
        self.config.runtime.processing_guarantee == ProcessingGuarantee::ExactlyOnce
    }

    fn ensure_txn(&mut self) -> Result<(), LoopError> {
        if self.txn.is_none() {
            // at_least_once: `txn` only delimits the batch.
            if self.transactional() {
                self.producer
                    .begin_transaction()
                    .map_err(|e| classify("begin_transaction", e))?;
            }
            self.txn = Some((Instant::now(), 0));
        }
        Ok(())
    }

    fn send(&mut self, out: &Output, opaque: usize) -> Result<(), LoopError> {
        self.ensure_txn()?;
        let record = Outgoing {
            topic: &out.topic,
            key: out.key.as_deref(),
            value: out.value.as_deref(),
            headers: &out.headers,
            partition: out.partition,
        };
        produce(&self.producer, record, opaque)
    }

    /// Sends a dead letter: bounded, it always fits; if it is refused
    /// anyway, the producer or topic limits are below what the config
    /// allows, which no retry can change: stop with a clear message.
    fn send_dead_letter(&mut self, dl: &Output, rec: &InputRecord<'_>) -> Result<(), LoopError> {
        self.send(dl, DEAD_LETTER_TAG).map_err(|e| match e {
            LoopError::Unproducible(m) => LoopError::Fatal(format!(
                "the dead letter of {}/{}@{} cannot be produced ({m}): check message.max.bytes of the producer and max.message.bytes of {}",
                rec.topic, rec.partition, rec.offset, dl.topic
            )),
            other => other,
        })
    }

    fn process(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), LoopError> {
        let p = msg.partition();
        if !self.parts.contains_key(&p) {
            // Not ours any more (a revoke raced the fetch): someone else will read it.
            return Ok(());
        }
        // The consumer's position moved past this record: from here on, an
        // abort must seek the partition back, whatever happens to the record.
        if let Some(part) = self.parts.get_mut(&p) {
            part.dirty = true;
        }
        self.ensure_txn()?;
        let kafka::RecordHeaders {
            headers,
            undecodable_keys,
        } = kafka::record_headers(msg);
        let rec = InputRecord {
            topic: msg.topic(),
            partition: p,
            offset: msg.offset(),
            key: msg.key(),
            value: msg.payload(),
            headers: &headers,
            timestamp_ms: msg.timestamp().to_millis(),
        };
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        let result = self.run_processor(&rec, undecodable_keys, &mut out)?;
        RecordProcessed {
            stage: self.spec.name,
            partition: p,
            offset: rec.offset,
        }
        .emit(&self.metrics);
        match result {
            Ok(()) => self.send_outputs(&rec, &out)?,
            Err(StageError::Reject { code, message }) => {
                self.dead_letter(&rec, code, &message, &mut out)?
            }
            Err(StageError::Retriable(m)) => {
                return Err(LoopError::Abort {
                    cause: "retriable_processing_error",
                    message: m,
                })
            }
            Err(StageError::Fatal(m)) => return Err(LoopError::Fatal(m)),
        }
        self.scratch = out;
        self.record_done(p, rec.offset);
        Ok(())
    }

    /// What becomes of one input record: a reject when it was poisoned (an
    /// output of it can never be produced) or its header keys are
    /// unreadable, else the processor's verdict (inside a store savepoint).
    /// The outer error stops the loop; the inner one is the record's fate.
    fn run_processor(
        &mut self,
        rec: &InputRecord<'_>,
        undecodable_keys: usize,
        out: &mut Vec<Output>,
    ) -> Result<Result<(), StageError>, LoopError> {
        let p = rec.partition;
        if let Some(m) = self.poisoned.remove(&(p, rec.offset)) {
            return Ok(Err(StageError::Reject {
                code: dlq::reasons::OUTPUT_UNPRODUCIBLE,
                message: format!("an output of this record can never be produced: {m}"),
            }));
        }
        if undecodable_keys > 0 {
            // Headers are the producer's input like the value: a record whose
            // header keys cannot be read is refused, never a stuck partition.
            return Ok(Err(StageError::Reject {
                code: dlq::reasons::INVALID_HEADER,
                message: format!(
                    "{undecodable_keys} header key(s) are not UTF-8 (shown with U+FFFD replacements)"
                ),
            }));
        }
        let part = self
            .parts
            .get_mut(&p)
            .ok_or_else(|| LoopError::Fatal("partition vanished".into()))?;
        let mut ctx = Ctx {
            partition: p,
            stores: &mut part.stores,
            out,
            config: &self.config,
            now_ms: wall_clock_ms(),
        };
        Ok(process_atomically(&mut self.processor, rec, &mut ctx))
    }

    /// Sends an accepted record's outputs into the open transaction, each
    /// tagged with the record's index in it. An output that can never be
    /// produced poisons the record (dead-lettered after the abort).
    fn send_outputs(&mut self, rec: &InputRecord<'_>, out: &[Output]) -> Result<(), LoopError> {
        let p = rec.partition;
        let index = self.txn_inputs.len();
        self.txn_inputs.push((p, rec.offset));
        let opaque = if index <= PARTITION_MASK {
            OUTPUT_TAG | index
        } else {
            0
        };
        for o in out {
            match self.send(o, opaque) {
                Ok(()) => {}
                Err(LoopError::Unproducible(m)) => {
                    // Its state and any earlier outputs are in the
                    // transaction: abort, and dead-letter it next time.
                    self.poisoned.insert((p, rec.offset), m.clone());
                    return Err(LoopError::Abort {
                        cause: "unproducible_output",
                        message: m,
                    });
                }
                Err(e) => return Err(e),
            }
            RecordWritten {
                stage: self.spec.name,
                topic: &o.topic,
                bytes: record_bytes(o.key.as_deref(), o.value.as_deref()),
            }
            .emit(&self.metrics);
        }
        Ok(())
    }

    /// A rejected record: its dead letter, then `on_rejected` (whose writes
    /// are kept, whose outputs are dropped), then the event.
    fn dead_letter(
        &mut self,
        rec: &InputRecord<'_>,
        code: &'static str,
        message: &str,
        out: &mut Vec<Output>,
    ) -> Result<(), LoopError> {
        let dl = dlq::dead_letter(
            self.spec.name,
            rec,
            code,
            message,
            &self.dlq_topic,
            self.dlq_partitions,
        );
        self.send_dead_letter(&dl, rec)?;
        let noted = self.note_rejected(rec, code, out);
        out.clear();
        match noted {
            Ok(()) => {}
            Err(StageError::Fatal(m)) => return Err(LoopError::Fatal(m)),
            Err(e) => {
                return Err(LoopError::Abort {
                    cause: "on_rejected",
                    message: e.to_string(),
                })
            }
        }
        RecordDeadLettered {
            stage: self.spec.name,
            reason: code,
            message,
            partition: rec.partition,
            offset: rec.offset,
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// [`Processor::on_rejected`] with the partition's stores (nothing when
    /// the partition is gone).
    fn note_rejected(
        &mut self,
        rec: &InputRecord<'_>,
        code: &'static str,
        out: &mut Vec<Output>,
    ) -> Result<(), StageError> {
        let p = rec.partition;
        let Some(part) = self.parts.get_mut(&p) else {
            return Ok(());
        };
        out.clear();
        let mut ctx = Ctx {
            partition: p,
            stores: &mut part.stores,
            out,
            config: &self.config,
            now_ms: wall_clock_ms(),
        };
        self.processor.on_rejected(rec, code, &mut ctx)
    }

    /// A record is through: the offset to commit moves past it and the
    /// transaction counts it.
    fn record_done(&mut self, p: i32, offset: i64) {
        if let Some(part) = self.parts.get_mut(&p) {
            part.next_offset = Some(offset + 1);
        }
        if let Some((_, n)) = &mut self.txn {
            *n += 1;
        }
    }

    fn punctuate(&mut self, now_ms: i64) -> Result<(), LoopError> {
        let parts: Vec<i32> = self.parts.keys().copied().collect();
        for p in parts {
            let mut out = std::mem::take(&mut self.scratch);
            out.clear();
            let result = {
                let Some(part) = self.parts.get_mut(&p) else {
                    continue;
                };
                let mut ctx = Ctx {
                    partition: p,
                    stores: &mut part.stores,
                    out: &mut out,
                    config: &self.config,
                    now_ms,
                };
                punctuate_partition(&mut self.processor, &mut ctx, now_ms)
            };
            match result {
                Ok(()) => {
                    for o in &out {
                        self.send(o, 0)?;
                        RecordWritten {
                            stage: self.spec.name,
                            topic: &o.topic,
                            bytes: record_bytes(o.key.as_deref(), o.value.as_deref()),
                        }
                        .emit(&self.metrics);
                    }
                }
                Err(StageError::Fatal(m)) => return Err(LoopError::Fatal(m)),
                Err(e) => {
                    return Err(LoopError::Abort {
                        cause: "punctuate",
                        message: e.to_string(),
                    })
                }
            }
            self.scratch = out;
        }
        Ok(())
    }

    fn due(&self) -> bool {
        match self.txn {
            Some((started, n)) => {
                n >= self.config.runtime.max_batch_records
                    || started.elapsed()
                        >= Duration::from_millis(self.config.runtime.commit_interval_ms)
            }
            None => self.parts.values().any(|p| p.stores.has_pending()),
        }
    }

    /// Commits the open transaction: changelogs, offsets, commit, then the
    /// stores. A no-op when nothing happened.
    fn commit(&mut self, consumer: &BaseConsumer<StageContext<P>>) -> Result<(), LoopError> {
        self.flush_processor()?;
        let has_pending = self.parts.values().any(|p| p.stores.has_pending());
        if self.txn.is_none() && !has_pending {
            return Ok(());
        }
        let t0 = Instant::now();
        self.send_changelogs()?;
        let sent = Instant::now();
        self.ensure_txn()?;
        kafka::flush(&self.producer, self.call_timeout()).map_err(|e| classify("flush", e))?;
        let flushed = Instant::now();
        let maxes = self.take_deliveries()?;
        let tpl = self.offsets_to_commit()?;
        self.commit_offsets(&tpl, consumer)?;
        let committed = Instant::now();
        let records = self.txn.take().map(|(_, n)| n).unwrap_or(0);
        self.txn_inputs.clear();
        // Committed in Kafka: now, and only now, the stores may move forward.
        self.apply_committed(&maxes)?;
        let applied = Instant::now();
        self.failures_in_a_row = 0;
        self.replacements_in_a_row = 0;
        TransactionCommitted {
            stage: self.spec.name,
            records,
            elapsed: applied - t0,
            phases: [
                sent - t0,
                flushed - sent,
                committed - flushed,
                applied - committed,
            ],
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// [`Processor::flush`] on every partition: what it caches in memory goes
    /// into its stores. It may not emit records.
    fn flush_processor(&mut self) -> Result<(), LoopError> {
        let mut flushed = Vec::new();
        for (p, part) in self.parts.iter_mut() {
            let mut ctx = Ctx {
                partition: *p,
                stores: &mut part.stores,
                out: &mut flushed,
                config: &self.config,
                now_ms: wall_clock_ms(),
            };
            match self.processor.flush(&mut ctx) {
                Ok(()) => {}
                Err(StageError::Fatal(m)) => return Err(LoopError::Fatal(m)),
                Err(e) => {
                    return Err(LoopError::Abort {
                        cause: "flush_state",
                        message: e.to_string(),
                    })
                }
            }
            if !flushed.is_empty() {
                return Err(LoopError::Fatal(
                    "a processor emitted records while flushing its state".into(),
                ));
            }
        }
        Ok(())
    }

    /// Changelogs: the final value of each key written in this transaction,
    /// sent into it straight from the stores' pending writes (librdkafka
    /// copies each record once; nothing is copied here first).
    fn send_changelogs(&mut self) -> Result<(), LoopError> {
        let mut sent = vec![(0u64, 0u64); self.changelog_topics.len()];
        let any = self.parts.values().any(|part| part.stores.has_pending());
        if any {
            self.ensure_txn()?;
        }
        for (p, part) in &self.parts {
            for (sid, (topic, sent)) in self.changelog_topics.iter().zip(&mut sent).enumerate() {
                for (k, v) in part.stores.pending(sid as StoreId) {
                    let record = Outgoing {
                        topic,
                        key: Some(k),
                        value: v.as_deref(),
                        headers: &[],
                        partition: Some(*p),
                    };
                    let opaque = CHANGELOG_TAG | (sid << 24) | (*p as usize & PARTITION_MASK);
                    produce(&self.producer, record, opaque)?;
                    sent.0 += 1;
                    sent.1 += record_bytes(Some(k), v.as_deref());
                }
            }
        }
        for (store, (records, bytes)) in self.spec.stores.iter().zip(sent) {
            ChangelogSent {
                stage: self.spec.name,
                store,
                records,
                bytes,
            }
            .emit(&self.metrics);
        }
        Ok(())
    }

    /// The delivery reports of the flushed transaction: the highest changelog
    /// offset per (store, partition), or why it must not commit. An output
    /// refused for good poisons its input record (dead-lettered after the
    /// abort); a dead letter refused for good stops the stage.
    fn take_deliveries(&mut self) -> Result<BTreeMap<(StoreId, i32), i64>, LoopError> {
        let Deliveries {
            changelog_max: maxes,
            failure,
            unproducible,
        } = self.tracker.take();
        for (opaque, m) in unproducible {
            if opaque & DEAD_LETTER_TAG != 0 {
                return Err(LoopError::Fatal(format!(
                    "a dead letter cannot be produced ({m}): check message.max.bytes of the producer and max.message.bytes of {}",
                    self.dlq_topic
                )));
            }
            if opaque & OUTPUT_TAG != 0 {
                if let Some(input) = self.txn_inputs.get(opaque & PARTITION_MASK) {
                    // The broker refused an output for good (e.g. the topic's
                    // max.message.bytes): dead-letter its input after the abort.
                    self.poisoned.insert(*input, m);
                }
            }
        }
        if let Some(f) = failure {
            return Err(LoopError::Abort {
                cause: "delivery",
                message: f,
            });
        }
        Ok(maxes)
    }

    /// The input offsets to commit with the transaction: each partition's
    /// last processed record + 1.
    fn offsets_to_commit(&self) -> Result<TopicPartitionList, LoopError> {
        let mut tpl = TopicPartitionList::new();
        for (p, part) in &self.parts {
            if let Some(o) = part.next_offset {
                tpl.add_partition_offset(&self.input_topic, *p, Offset::Offset(o))
                    .map_err(|e| LoopError::Fatal(e.to_string()))?;
            }
        }
        Ok(tpl)
    }

    /// exactly_once: the offsets into the transaction, then commit it.
    /// at_least_once: everything sent is acknowledged (flushed before); now
    /// the input offsets.
    fn commit_offsets(
        &self,
        tpl: &TopicPartitionList,
        consumer: &BaseConsumer<StageContext<P>>,
    ) -> Result<(), LoopError> {
        if !self.transactional() {
            if tpl.count() > 0 {
                consumer
                    .commit(tpl, CommitMode::Sync)
                    .map_err(|e| classify("commit_offsets", e))?;
            }
            return Ok(());
        }
        if tpl.count() > 0 {
            let cgm = consumer
                .group_metadata()
                .ok_or_else(|| LoopError::Fatal("consumer has no group metadata".into()))?;
            self.retry_txn_call("send_offsets_to_transaction", |pr, t| {
                pr.send_offsets_to_transaction(tpl, &cgm, t)
            })?;
        }
        self.retry_txn_call("commit_transaction", |pr, t| pr.commit_transaction(t))
    }

    /// After the Kafka commit: each partition's store writes go to RocksDB
    /// with the changelog offsets reached (the checkpoint), and its committed
    /// position moves forward.
    fn apply_committed(&mut self, maxes: &BTreeMap<(StoreId, i32), i64>) -> Result<(), LoopError> {
        for (p, part) in self.parts.iter_mut() {
            let checkpoints: Vec<(StoreId, i64)> = (0..self.changelog_topics.len())
                .filter_map(|sid| {
                    maxes
                        .get(&(sid as StoreId, *p))
                        .map(|o| (sid as StoreId, *o))
                })
                .collect();
            part.stores.apply_committed(&checkpoints)?;
            if let Some(o) = part.next_offset.take() {
                part.committed = Some(o);
            }
            part.dirty = false;
        }
        Ok(())
    }

    fn retry_txn_call(
        &self,
        call: &'static str,
        f: impl Fn(&BaseProducer<DeliveryContext>, Duration) -> Result<(), KafkaError>,
    ) -> Result<(), LoopError> {
        let mut attempt = 0;
        loop {
            match f(&self.producer, self.call_timeout()) {
                Ok(()) => return Ok(()),
                Err(KafkaError::Transaction(re))
                    if re.is_retriable() && attempt < TXN_CALL_RETRIES_MAX =>
                {
                    attempt += 1;
                    warn!(stage = self.spec.name, call, error = %re, attempt, "retrying transactional call");
                }
                Err(e) => return Err(classify(call, e)),
            }
        }
    }

    /// `abort_transaction` purges the transaction's unsent records and waits
    /// until every record is accounted for, which needs their delivery
    /// reports served: so abort in short slices and poll in between (the
    /// resumable-call pattern librdkafka documents), up to the call timeout.
    fn abort_transaction(&self) -> Result<(), KafkaError> {
        let deadline = Instant::now() + self.call_timeout();
        loop {
            self.producer.poll(Duration::ZERO);
            match self
                .producer
                .abort_transaction(Duration::from_millis(ABORT_SLICE_MS))
            {
                Ok(()) => {
                    self.producer.poll(Duration::ZERO);
                    return Ok(());
                }
                Err(KafkaError::Transaction(re)) if !re.is_fatal() && Instant::now() < deadline => {
                    tracing::debug!(stage = self.spec.name, error = %re, "abort still in progress");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Aborts the open transaction, drops its store writes and rewinds the
    /// consumer to the committed offsets (except `skip`: partitions being lost).
    fn abort(
        &mut self,
        cause: &'static str,
        message: &str,
        skip: Option<&[i32]>,
        consumer: &BaseConsumer<StageContext<P>>,
    ) {
        TransactionAborted {
            stage: self.spec.name,
            cause,
            error: message,
        }
        .emit(&self.metrics);
        // at_least_once: what was sent stays sent; the rewind re-sends it.
        if self.txn.take().is_some() && self.transactional() {
            if let Err(e) = self.abort_transaction() {
                // A transaction that cannot be aborted cannot be followed by
                // another: a new producer fences the old one and aborts it,
                // unless another instance already did (then stop).
                match classify("abort_transaction", e) {
                    LoopError::Fatal(m) => self.fatal = Some(m),
                    LoopError::Abort { message, .. }
                    | LoopError::ProducerFailed { message, .. }
                    | LoopError::Unproducible(message) => {
                        self.replace_producer("abort_transaction", &message, skip, consumer)
                    }
                }
                return;
            }
        }
        let _ = self.tracker.take();
        self.txn_inputs.clear();
        self.processor.on_rollback();
        let timeout = self.call_timeout();
        for (p, part) in self.parts.iter_mut() {
            part.stores.rollback();
            part.next_offset = None;
            if part.dirty && !skip.is_some_and(|s| s.contains(p)) {
                let offset = part
                    .committed
                    .map(Offset::Offset)
                    .unwrap_or(Offset::Beginning);
                if let Err(e) = consumer.seek(&self.input_topic, *p, offset, timeout) {
                    // Without the rewind the next commit would skip records.
                    self.fatal = Some(format!("rewinding partition {p} to {offset:?}: {e}"));
                    return;
                }
            }
            part.dirty = false;
        }
    }

    fn handle(&mut self, e: LoopError, consumer: &BaseConsumer<StageContext<P>>) {
        match e {
            LoopError::Fatal(m) => self.fatal = Some(m),
            // Not traced to an input record (a changelog or punctuation
            // output): no retry can help, so stop rather than loop.
            LoopError::Unproducible(m) => {
                self.fatal = Some(format!("a record can never be produced: {m}"))
            }
            LoopError::Abort { cause, message } => {
                self.abort(cause, &message, None, consumer);
                self.failures_in_a_row += 1;
            }
            LoopError::ProducerFailed { cause, message } => {
                self.replace_producer(cause, &message, None, consumer);
                self.failures_in_a_row += 1;
            }
        }
    }

    fn backoff(&self) -> Option<Duration> {
        if self.failures_in_a_row == 0 {
            return None;
        }
        let exp = self.failures_in_a_row.min(16) - 1;
        Some(Duration::from_millis(
            (RETRY_BACKOFF_MIN_MS << exp).min(RETRY_BACKOFF_MAX_MS),
        ))
    }

    /// What one consumer poll brought: a record is processed (its failure
    /// handled); a fatal consumer error stops the stage (Err), others are
    /// logged (librdkafka retries).
    fn take_polled(
        &mut self,
        polled: Option<Result<BorrowedMessage<'_>, KafkaError>>,
        consumer: &BaseConsumer<StageContext<P>>,
    ) -> Result<(), String> {
        match polled {
            None => {}
            Some(Ok(msg)) => {
                if let Err(e) = self.process(&msg) {
                    self.handle(e, consumer);
                }
            }
            Some(Err(e)) => {
                if let KafkaError::MessageConsumptionFatal(_) = e {
                    return Err(e.to_string());
                }
                warn!(stage = self.spec.name, error = %e, "consumer error (librdkafka retries)");
            }
        }
        Ok(())
    }

    /// Feeds the processor what arrived on its tables since the last call.
    fn poll_tables(&mut self) -> Result<(), String> {
        // Split borrow: the feed and the processor are distinct fields.
        match self.tables.as_mut() {
            Some(feed) => feed.poll_some(&mut self.processor),
            None => Ok(()),
        }
    }

    fn refresh_gauges(&self, consumer: &BaseConsumer<StageContext<P>>) {
        let (block_cache_bytes, memtable_bytes) = self.store_memory().usage_bytes();
        StoreMemoryMeasured {
            stage: self.spec.name,
            block_cache_bytes,
            memtable_bytes,
            table_reader_bytes: self
                .parts
                .values()
                .map(|p| p.stores.table_reader_bytes())
                .sum(),
        }
        .emit();
        if let Some(h) = heap::native_heap() {
            NativeHeapMeasured {
                in_use_bytes: h.in_use_bytes,
                free_bytes: h.free_bytes,
            }
            .emit();
        }
        let positions = consumer.position().ok();
        for (p, part) in &self.parts {
            let label = p.to_string();
            for (sid, store) in self.spec.stores.iter().enumerate() {
                StoreKeysMeasured {
                    stage: self.spec.name,
                    store,
                    partition: &label,
                    keys: part.stores.approximate_keys(sid as StoreId) as i64,
                }
                .emit(&self.metrics);
            }
            let pos = positions
                .as_ref()
                .and_then(|t| t.find_partition(&self.input_topic, *p))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
                .or(part.committed);
            if let Some(high) = cached_high_watermark(consumer, &self.input_topic, *p) {
                let lag = (high - pos.unwrap_or(0)).max(0);
                ConsumerLagMeasured {
                    stage: self.spec.name,
                    partition: &label,
                    lag,
                }
                .emit(&self.metrics);
            }
        }
    }
}

/// The high watermark librdkafka last saw in a fetch response for a partition
/// (no request: a lag gauge must not add load or block the loop). None until
/// the first fetch.
/// [`Processor::process`] as one unit: a record the processor rejects
/// leaves no store write and no output behind (its writes since the
/// savepoint are undone, its outputs dropped), whatever the processor did
/// before it returned the reject. The runtime then dead-letters it and calls
/// [`Processor::on_rejected`], whose writes are kept.
pub(crate) fn process_atomically<P: Processor>(
    processor: &mut P,
    rec: &InputRecord<'_>,
    ctx: &mut Ctx<'_>,
) -> Result<(), StageError> {
    ctx.stores.savepoint();
    let result = processor.process(rec, ctx);
    if let Err(StageError::Reject { .. }) = result {
        ctx.stores.rollback_to_savepoint();
        ctx.out.clear();
    } else {
        ctx.stores.release_savepoint();
    }
    result
}

/// One punctuation of a partition: what is the same for every stage (expiry
/// of the lineage store, [`crate::lineage::LINEAGE_STORE`], after
/// `lineage.retention_days`), then [`Processor::punctuate`].
pub(crate) fn punctuate_partition<P: Processor>(
    processor: &mut P,
    ctx: &mut Ctx<'_>,
    now_ms: i64,
) -> Result<(), StageError> {
    let stores = processor.spec().stores;
    if let Some(lineage) = stores
        .iter()
        .position(|s| *s == crate::lineage::LINEAGE_STORE)
    {
        let retention_days = ctx.config.lineage.retention_days;
        crate::lineage::expire(ctx, lineage as StoreId, now_ms, retention_days)?;
    }
    processor.punctuate(ctx, now_ms)
}

fn cached_high_watermark<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime, the
    // topic is a NUL-terminated string that outlives the call, and the two
    // out-pointers are valid i64s. The call only reads librdkafka's cache.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// Runs one stage until `shutdown` is set (then commits and returns Ok) or a
/// fatal error happens. Blocking: call it on a dedicated thread.
pub fn run_stage<P: Processor>(
    config: Arc<Config>,
    processor: P,
    shutdown: Arc<AtomicBool>,
    status: Arc<StageStatus>,
) -> Result<(), RuntimeError> {
    let spec = processor.spec();
    let stage = spec.name;
    // Every log line of this thread carries the stage (JSON logs: "span").
    let _span = tracing::info_span!("stage", stage).entered();
    let fatal = |message: String| stage_fatal(stage, message);
    heap::start_trimming();
    let group_id = config.group_id(stage);
    let transactional_id = format!("{group_id}.{}", config.runtime.instance_id);
    let engine = Arc::new(Mutex::new(start_engine(
        &config,
        processor,
        &status,
        &transactional_id,
    )?));
    // A restarted stage in the same process keeps the first handle's place.
    let _ = status
        .query
        .set(Arc::new(EngineQuery(engine.clone())) as Arc<dyn StoreQuery>);
    load_tables(&engine, &config, spec).map_err(&fatal)?;
    let input_topic = config.topic(spec.input);
    let consumer: BaseConsumer<StageContext<P>> = kafka::create(
        &kafka::stage_consumer_config(&config, &group_id),
        StageContext {
            engine: engine.clone(),
            metrics: StageMetrics::new(stage),
            stage,
        },
    )?;
    consumer
        .subscribe(&[input_topic.as_str()])
        .map_err(|e| fatal(format!("subscribe {input_topic}: {e}")))?;
    status.alive.store(true, Ordering::SeqCst);
    info!(stage, group_id, transactional_id, "stage started");

    let result = run_loop(&engine, &consumer, &shutdown, stage);
    stop_stage(result, &engine, &consumer, &status, stage)
}

/// A fatal runtime error of `stage`.
fn stage_fatal(stage: &str, message: String) -> RuntimeError {
    RuntimeError::Fatal {
        stage: stage.to_string(),
        message,
    }
}

/// The engine of a stage, ready to consume: its producer (transactions
/// initialised when exactly_once), its topics checked, the processor told
/// the input partition count.
fn start_engine<P: Processor>(
    config: &Arc<Config>,
    processor: P,
    status: &Arc<StageStatus>,
    transactional_id: &str,
) -> Result<Engine<P>, RuntimeError> {
    let spec = processor.spec();
    let stage = spec.name;
    let input_topic = config.topic(spec.input);
    let dlq_topic = config.topic(&spec.dlq());
    let changelog_topics: Vec<String> = spec.changelogs().iter().map(|c| config.topic(c)).collect();

    let tracker = Arc::new(DeliveryTracker::default());
    let transactional = config.runtime.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    let producer = new_producer(config, transactional_id, &tracker)?;
    let mut processor = processor;
    let dlq_partitions = probe_topics(config, spec, &mut processor, &input_topic, &dlq_topic)?;
    if transactional {
        init_transactions(&producer, config, transactional_id)
            .map_err(|m| stage_fatal(stage, m))?;
    } else {
        warn!(
            stage,
            "runtime.processing_guarantee = at_least_once: no transactions, a failure may duplicate outputs"
        );
    }

    let state_root = config
        .resolve(&config.runtime.state_dir)
        .join(format!("{}{}", config.topology.namespace, stage))
        .join(&config.runtime.instance_id);
    Ok(Engine {
        spec,
        processor,
        producer,
        tracker,
        transactional_id: transactional_id.to_string(),
        replacements_in_a_row: 0,
        config: config.clone(),
        input_topic,
        dlq_topic,
        dlq_partitions,
        changelog_topics,
        state_root,
        parts: BTreeMap::new(),
        txn: None,
        scratch: Vec::new(),
        metrics: StageMetrics::new(stage),
        status: status.clone(),
        fatal: None,
        failures_in_a_row: 0,
        tables: None,
        txn_inputs: Vec::new(),
        poisoned: BTreeMap::new(),
    })
}

/// The stage's producer: transactional (not initialised yet) unless the
/// stage runs at_least_once; its delivery reports go to `tracker`.
fn new_producer(
    config: &Config,
    transactional_id: &str,
    tracker: &Arc<DeliveryTracker>,
) -> Result<BaseProducer<DeliveryContext>, RuntimeError> {
    let transactional = config.runtime.processing_guarantee == ProcessingGuarantee::ExactlyOnce;
    Ok(kafka::create(
        &if transactional {
            kafka::transactional_producer_config(config, transactional_id)
        } else {
            kafka::at_least_once_producer_config(config)
        },
        DeliveryContext(tracker.clone()),
    )?)
}

/// Fences any older producer with this transactional.id and completes or
/// aborts what it left open on the broker.
fn init_transactions(
    producer: &BaseProducer<DeliveryContext>,
    config: &Config,
    transactional_id: &str,
) -> Result<(), String> {
    producer
        .init_transactions(Duration::from_millis(
            config.runtime.transaction_call_timeout_ms,
        ))
        .map_err(|e| format!("init_transactions for {transactional_id}: {e}"))
}

/// Fails early, in one line, on an unreachable broker or a missing topic;
/// tells the processor the input partition count and returns the DLQ's.
fn probe_topics<P: Processor>(
    config: &Config,
    spec: &StageSpec,
    processor: &mut P,
    input_topic: &str,
    dlq_topic: &str,
) -> Result<i32, RuntimeError> {
    let probe = kafka::reader(config)?;
    let mut needed: Vec<String> = spec.topics().iter().map(|t| config.topic(t)).collect();
    needed.dedup();
    let md = kafka::check_topics(&probe, config, &needed)?;
    let dlq_partitions = kafka::partition_count(&md, dlq_topic, config)?;
    processor.on_input_partitions(kafka::partition_count(&md, input_topic, config)?);
    drop(probe);
    Ok(dlq_partitions)
}

/// Tables first: an input record must never be matched against
/// half-loaded reference data.
fn load_tables<P: Processor>(
    engine: &Mutex<Engine<P>>,
    config: &Config,
    spec: &'static StageSpec,
) -> Result<(), String> {
    let mut e = lock(engine);
    let e = &mut *e;
    let root = e.state_root.clone();
    if let Some(mut feed) = tables::TableFeed::open(config, spec, &root)? {
        feed.load_all(config, &mut e.processor)?;
        e.tables = Some(feed);
    }
    Ok(())
}

/// The loop: poll one record, process it, feed the tables, punctuate,
/// commit when due, refresh the gauges, back off after failures. Ok when
/// `shutdown` is set, Err on a fatal error.
fn run_loop<P: Processor>(
    engine: &Mutex<Engine<P>>,
    consumer: &BaseConsumer<StageContext<P>>,
    shutdown: &AtomicBool,
    stage: &str,
) -> Result<(), RuntimeError> {
    let fatal = |message: String| stage_fatal(stage, message);
    let mut last_punctuate = Instant::now();
    let mut last_gauges = Instant::now();
    loop {
        if shutdown.load(Ordering::SeqCst) {
            return Ok(());
        }
        let polled = consumer.poll(Duration::from_millis(POLL_TIMEOUT_MS));
        let mut engine = lock(engine);
        if let Some(m) = engine.fatal.take() {
            return Err(fatal(m));
        }
        engine.take_polled(polled, consumer).map_err(fatal)?;
        if engine
            .status
            .inject_producer_failure
            .swap(false, Ordering::SeqCst)
        {
            let injected = LoopError::ProducerFailed {
                cause: "injected",
                message: "producer failure injected by a test".into(),
            };
            engine.handle(injected, consumer);
        }
        engine.poll_tables().map_err(fatal)?;
        if last_punctuate.elapsed() >= Duration::from_millis(PUNCTUATE_INTERVAL_MS) {
            last_punctuate = Instant::now();
            let now_ms = wall_clock_ms();
            if let Err(e) = engine.punctuate(now_ms) {
                engine.handle(e, consumer);
            }
        }
        if engine.due() {
            if let Err(e) = engine.commit(consumer) {
                engine.handle(e, consumer);
            }
        }
        if last_gauges.elapsed() >= Duration::from_millis(GAUGE_REFRESH_INTERVAL_MS) {
            last_gauges = Instant::now();
            engine.refresh_gauges(consumer);
        }
        if let Some(m) = engine.fatal.take() {
            return Err(fatal(m));
        }
        if let Some(d) = engine.backoff() {
            drop(engine);
            std::thread::sleep(d);
        }
    }
}

/// After the loop: a graceful stop commits what was processed, then leaves
/// the group (the revoke callback finds nothing left to commit); a failure
/// is reported. Not ready and not alive either way.
fn stop_stage<P: Processor>(
    result: Result<(), RuntimeError>,
    engine: &Mutex<Engine<P>>,
    consumer: &BaseConsumer<StageContext<P>>,
    status: &StageStatus,
    stage: &str,
) -> Result<(), RuntimeError> {
    status.ready.store(false, Ordering::SeqCst);
    if result.is_ok() {
        let mut e = lock(engine);
        if let Err(err) = e.commit(consumer) {
            e.handle(err, consumer);
        }
        drop(e);
        consumer.unsubscribe();
        info!(stage, "stage stopped cleanly");
    } else if let Err(e) = &result {
        StageFailed {
            stage,
            error: &e.to_string(),
        }
        .emit();
    }
    status.alive.store(false, Ordering::SeqCst);
    result
}
