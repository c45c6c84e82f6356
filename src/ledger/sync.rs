//! The loop of `meterline ledger-sync`: read a batch, write it to the
//! ledger in one transaction with its offsets, send the outbox, repeat.
//!
//! Where a partition is read from is the ledger's `consumer_offsets`, never
//! the consumer group's committed offset (committed too, after the ledger,
//! only so lag is visible). A partition newly assigned is paused until its
//! offset is read from the ledger and the consumer seeked there. When the
//! database fails, the batch in hand is retried with backoff (nothing is
//! skipped, readiness is false); what the consumer fetched meanwhile is
//! dropped and every partition seeked back to the ledger's position.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::producer::BaseProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::{self, record_headers, ClientError};
use crate::ledger::events::{
    error_chain, stage_metrics, BatchCommitted, DatabaseFailed, DatabaseReady, PartitionsPositioned,
};
use crate::ledger::outbox::{self, OutboxContext};
use crate::ledger::record::{InRecord, Input};
use crate::ledger::schema;
use crate::ledger::write::{self, ApplyError, BatchContext, Outcome, Positions, Statements};
use crate::metrics::StageMetrics;
use crate::runtime::StageStatus;
use crate::topology::names;

/// One poll of the consumer while a batch fills.
const POLL_MS: u64 = 50;
/// Bound of a Kafka metadata, seek or flush call.
const KAFKA_CALL_TIMEOUT_MS: u64 = 10_000;
/// Most times one batch is retried with a record refused by the database
/// before the whole batch is treated as a database failure.
const MAX_ROW_REFUSALS_PER_BATCH: usize = 1_000;

/// Rebalances seen by the consumer's callbacks, handled by the loop.
#[derive(Default)]
pub struct LedgerContext {
    assigned: Mutex<Vec<(String, i32)>>,
    revoked: Mutex<Vec<(String, i32)>>,
}

impl ClientContext for LedgerContext {}

impl ConsumerContext for LedgerContext {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (list, tpl) = match rebalance {
            Rebalance::Assign(tpl) => (&self.assigned, *tpl),
            Rebalance::Revoke(tpl) => (&self.revoked, *tpl),
            Rebalance::Error(_) => return,
        };
        if matches!(rebalance, Rebalance::Assign(_)) {
            // Nothing is read before the ledger says where to start.
            let _ = consumer.pause(tpl);
        }
        let parts = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect::<Vec<_>>();
        if let Ok(mut l) = list.lock() {
            l.extend(parts);
        }
    }
}

/// A connection with its statements.
struct Db {
    client: postgres::Client,
    statements: Statements,
}

/// Everything the loop holds.
pub struct LedgerSync {
    config: Arc<Config>,
    schema: String,
    group: String,
    url: String,
    topics: BTreeMap<String, Input>,
    acks_topic: String,
    dlq_topic: String,
    dlq_partitions: i32,
    consumer: BaseConsumer<LedgerContext>,
    producer: BaseProducer<OutboxContext>,
    db: Option<Db>,
    /// Assigned partitions whose position was read from the ledger.
    positioned: BTreeSet<(String, i32)>,
    /// Assigned partitions waiting for their position.
    unpositioned: BTreeSet<(String, i32)>,
    positions: Positions,
    backoff: Duration,
    metrics: StageMetrics,
    status: Arc<StageStatus>,
}

/// Why ledger-sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("no ledger database: set [ledger] url or $METERLINE_LEDGER_URL")]
    NoUrl,
    #[error("[ledger] url is not a PostgreSQL connection string: {0}")]
    BadUrl(String),
}

impl LedgerSync {
    pub fn new(config: Arc<Config>, status: Arc<StageStatus>) -> Result<Self, SyncError> {
        let url = config.ledger.resolved_url().ok_or(SyncError::NoUrl)?;
        postgres::Config::from_str(&url).map_err(|e| SyncError::BadUrl(e.to_string()))?;
        let ns = &config.topology.namespace;
        let group = format!("{ns}meterline.{}", names::LEDGER);
        let topics: BTreeMap<String, Input> = [
            (names::POSTINGS, Input::Postings),
            (names::INVOICES, Input::Invoices),
            (names::LEDGER_RETRY, Input::Retry),
        ]
        .into_iter()
        .map(|(t, i)| (config.topic(t), i))
        .collect();
        let consumer: BaseConsumer<LedgerContext> = kafka::create(
            &kafka::stage_consumer_config(&config, &group),
            LedgerContext::default(),
        )?;
        let dlq_topic = config.topic(&names::dlq(names::LEDGER));
        let acks_topic = config.topic(names::POSTING_ACKS);
        let mut all: Vec<String> = topics.keys().cloned().collect();
        all.extend([dlq_topic.clone(), acks_topic.clone()]);
        kafka::check_topics(&consumer, &config, &all)?;
        let md = kafka::metadata(consumer.client(), &config, Some(&dlq_topic))?;
        let dlq_partitions = kafka::partition_count(&md, &dlq_topic, &config)?;
        let producer = kafka::create(&kafka::producer_config(&config), OutboxContext::default())?;
        let subscribed: Vec<&str> = topics.keys().map(String::as_str).collect();
        consumer.subscribe(&subscribed)?;
        Ok(LedgerSync {
            schema: config.ledger.schema_for(ns),
            group,
            url,
            topics,
            acks_topic,
            dlq_topic,
            dlq_partitions,
            consumer,
            producer,
            db: None,
            positioned: BTreeSet::new(),
            unpositioned: BTreeSet::new(),
            positions: Positions::new(),
            backoff: Duration::from_millis(config.ledger.retry_initial_backoff_ms),
            metrics: stage_metrics(),
            status,
            config,
        })
    }

    /// Runs until `shutdown`; the batch in hand is finished first.
    pub fn run(&mut self, shutdown: &AtomicBool) -> Result<(), SyncError> {
        self.status.alive.store(true, Ordering::SeqCst);
        while !shutdown.load(Ordering::SeqCst) {
            if !self.ensure_db(shutdown) {
                continue;
            }
            self.handle_rebalances();
            // Partitions not positioned yet (a seek librdkafka cannot do
            // before the fetcher starts) are tried again after the poll
            // below, which lets the consumer make progress.
            let positioned = self.position_partitions();
            self.status.ready.store(positioned, Ordering::SeqCst);
            let batch = self.collect_batch();
            if !batch.is_empty() {
                self.write_batch(&batch, shutdown);
            }
            self.drain_outbox();
        }
        self.drain_outbox();
        self.status.alive.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Connects and migrates when there is no connection; false (after a
    /// backoff) when that failed.
    fn ensure_db(&mut self, shutdown: &AtomicBool) -> bool {
        if self.db.is_some() {
            return true;
        }
        self.status.ready.store(false, Ordering::SeqCst);
        match self.connect() {
            Ok(db) => {
                self.db = Some(db);
                self.backoff = Duration::from_millis(self.config.ledger.retry_initial_backoff_ms);
                // Whatever was read before is re-read from the ledger's offsets.
                self.unpositioned.append(&mut self.positioned);
                true
            }
            Err(e) => {
                self.fail("connect", &error_chain(&e), shutdown);
                false
            }
        }
    }

    fn connect(&mut self) -> Result<Db, postgres::Error> {
        let lc = &self.config.ledger;
        let mut client = super::connect(
            &self.url,
            "meterline-ledger-sync",
            Duration::from_millis(lc.connect_timeout_ms),
            Some(lc.statement_timeout_ms),
        )?;
        let version = schema::migrate(&mut client, &self.schema)?;
        let statements = Statements::prepare(&mut client, &self.schema)?;
        DatabaseReady {
            schema: &self.schema,
            version,
        }
        .emit();
        Ok(Db { client, statements })
    }

    /// Logs and counts a failure, drops a broken connection, waits.
    fn fail(&mut self, kind: &'static str, error: &str, shutdown: &AtomicBool) {
        DatabaseFailed {
            kind,
            error,
            backoff: self.backoff,
        }
        .emit(&self.metrics);
        if kind != "fenced" {
            self.status.ready.store(false, Ordering::SeqCst);
        }
        if self.db.as_ref().is_some_and(|d| d.client.is_closed()) {
            self.db = None;
        }
        self.sleep_polling(self.backoff, shutdown);
        let max = Duration::from_millis(self.config.ledger.retry_max_backoff_ms);
        self.backoff = (self.backoff * 2).min(max);
    }

    /// Waits, polling the consumer so the group keeps this instance (what
    /// it returns is dropped: every partition is seeked back afterwards).
    fn sleep_polling(&mut self, d: Duration, shutdown: &AtomicBool) {
        let until = Instant::now() + d;
        while Instant::now() < until && !shutdown.load(Ordering::SeqCst) {
            if self.consumer.poll(Duration::from_millis(POLL_MS)).is_some() {
                self.unpositioned.append(&mut self.positioned);
            }
        }
    }

    fn handle_rebalances(&mut self) {
        let revoked: Vec<(String, i32)> = take(&self.consumer.context().revoked);
        for tp in revoked {
            self.positioned.remove(&tp);
            self.unpositioned.remove(&tp);
            self.positions.remove(&tp);
        }
        let assigned: Vec<(String, i32)> = take(&self.consumer.context().assigned);
        self.unpositioned.extend(assigned);
    }

    /// Reads the ledger's offsets of the partitions waiting for them, seeks
    /// and resumes them. False when the database failed.
    fn position_partitions(&mut self) -> bool {
        if self.unpositioned.is_empty() {
            return true;
        }
        let Some(db) = self.db.as_mut() else {
            return false;
        };
        let wanted: Vec<(String, i32)> = self.unpositioned.iter().cloned().collect();
        let stored = match read_positions(&mut db.client, &self.schema, &self.group, &wanted) {
            Ok(s) => s,
            Err(e) => {
                self.fail("connect", &error_chain(&e), &AtomicBool::new(false));
                return false;
            }
        };
        let mut done = Vec::new();
        for (topic, p) in wanted {
            let at = stored.get(&(topic.clone(), p)).copied();
            let offset = at.map_or(Offset::Beginning, Offset::Offset);
            let timeout = Duration::from_millis(KAFKA_CALL_TIMEOUT_MS);
            if let Err(e) = self.consumer.seek(&topic, p, offset, timeout) {
                tracing::warn!(topic, partition = p, error = %e, "seek not possible yet");
                continue;
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, p);
            let _ = self.consumer.resume(&tpl);
            match at {
                Some(o) => self.positions.insert((topic.clone(), p), o),
                None => self.positions.remove(&(topic.clone(), p)),
            };
            self.unpositioned.remove(&(topic.clone(), p));
            self.positioned.insert((topic.clone(), p));
            done.push((topic, p, at));
        }
        if !done.is_empty() {
            PartitionsPositioned { positions: &done }.emit(&self.metrics, self.positioned.len());
        }
        self.unpositioned.is_empty()
    }

    /// Records of positioned partitions at or after their position, until
    /// the batch is full or its wait is over.
    fn collect_batch(&mut self) -> Vec<InRecord> {
        let lc = &self.config.ledger;
        let until = Instant::now() + Duration::from_millis(lc.batch_max_wait_ms);
        let mut batch = Vec::new();
        while batch.len() < lc.batch_max_records && Instant::now() < until {
            let Some(res) = self.consumer.poll(Duration::from_millis(POLL_MS)) else {
                if !batch.is_empty() {
                    break;
                }
                continue;
            };
            let msg = match res {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(stage = names::LEDGER, error = %e, "consumer error");
                    continue;
                }
            };
            let tp = (msg.topic().to_string(), msg.partition());
            let Some(input) = self.topics.get(&tp.0).copied() else {
                continue;
            };
            let expected = self.positions.get(&tp).copied().unwrap_or(0);
            if !self.positioned.contains(&tp) || msg.offset() < expected {
                continue;
            }
            let h = record_headers(&msg);
            batch.push(InRecord {
                input,
                topic: tp.0,
                partition: tp.1,
                offset: msg.offset(),
                key: msg.key().map(<[u8]>::to_vec),
                value: msg.payload().map(<[u8]>::to_vec),
                headers: h.headers,
                timestamp_ms: msg.timestamp().to_millis(),
            });
        }
        batch
    }

    /// Writes the batch, retrying until it commits, is fenced or shutdown.
    fn write_batch(&mut self, batch: &[InRecord], shutdown: &AtomicBool) {
        let mut refused_rows: BTreeMap<usize, String> = BTreeMap::new();
        loop {
            if !self.ensure_db(shutdown) {
                if shutdown.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            let started = Instant::now();
            let result = self.apply(batch, &refused_rows);
            match result {
                Ok(outcomes) => {
                    self.committed(batch, &outcomes, started.elapsed());
                    return;
                }
                Err(ApplyError::RowRefused { index, message })
                    if refused_rows.len() < MAX_ROW_REFUSALS_PER_BATCH =>
                {
                    refused_rows.insert(index, message);
                }
                Err(e @ ApplyError::Fenced { .. }) => {
                    self.fail("fenced", &error_chain(&e), shutdown);
                    self.unpositioned.append(&mut self.positioned);
                    return;
                }
                Err(e) => {
                    self.fail("batch", &error_chain(&e), shutdown);
                    self.unpositioned.append(&mut self.positioned);
                    if shutdown.load(Ordering::SeqCst) {
                        return;
                    }
                }
            }
        }
    }

    fn apply(
        &mut self,
        batch: &[InRecord],
        refused_rows: &BTreeMap<usize, String>,
    ) -> Result<Vec<Outcome>, ApplyError> {
        let Some(db) = self.db.as_mut() else {
            return Err(ApplyError::NotConnected);
        };
        let cx = BatchContext {
            statements: &db.statements,
            group: &self.group,
            require_known_accounts: self.config.ledger.require_known_accounts,
            acks_topic: &self.acks_topic,
            dlq_topic: &self.dlq_topic,
            dlq_partitions: self.dlq_partitions,
            refused_rows,
        };
        write::apply(&mut db.client, &cx, batch, &self.positions)
    }

    fn committed(&mut self, batch: &[InRecord], outcomes: &[Outcome], elapsed: Duration) {
        let mut tpl = TopicPartitionList::new();
        for rec in batch {
            self.positions
                .insert((rec.topic.clone(), rec.partition), rec.offset + 1);
        }
        for ((t, p), o) in &self.positions {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        let labelled: Vec<(&str, Outcome)> = batch
            .iter()
            .zip(outcomes)
            .map(|(r, o)| (logical(&r.topic, &self.config), o.clone()))
            .collect();
        BatchCommitted {
            outcomes: &labelled,
            elapsed,
        }
        .emit(&self.metrics);
        self.backoff = Duration::from_millis(self.config.ledger.retry_initial_backoff_ms);
        // For lag only: the ledger's offsets are the truth.
        let _ = self.consumer.commit(&tpl, CommitMode::Async);
    }

    fn drain_outbox(&mut self) {
        let Some(db) = self.db.as_mut() else {
            return;
        };
        let timeout = Duration::from_millis(KAFKA_CALL_TIMEOUT_MS);
        if let Err(e) = outbox::drain(&mut db.client, &self.producer, &self.schema, timeout) {
            let error = error_chain(&e);
            self.fail("outbox", &error, &AtomicBool::new(false));
        }
    }
}

/// The topic without the namespace (a metrics label).
fn logical<'a>(topic: &'a str, config: &Config) -> &'a str {
    topic
        .strip_prefix(config.topology.namespace.as_str())
        .unwrap_or(topic)
}

fn take(list: &Mutex<Vec<(String, i32)>>) -> Vec<(String, i32)> {
    list.lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
}

/// The ledger's next offsets of `wanted` (absent: none stored yet).
fn read_positions(
    client: &mut postgres::Client,
    schema: &str,
    group: &str,
    wanted: &[(String, i32)],
) -> Result<Positions, postgres::Error> {
    let sql = format!(
        "SELECT topic, partition, next_offset FROM {schema}.consumer_offsets WHERE consumer_group = $1"
    );
    let mut out = Positions::new();
    for row in client.query(&sql, &[&group])? {
        let key: (String, i32) = (row.get(0), row.get(1));
        if wanted.contains(&key) {
            out.insert(key, row.get(2));
        }
    }
    Ok(out)
}
