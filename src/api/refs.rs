//! The reference data the API answers from: the three compacted `ref.*`
//! topics read from the beginning (read_committed) into [`RefTables`], then
//! followed, on one thread of the API process. The API is ready
//! (`/readyz`) once it has read up to where each partition ended when it
//! started; until then a query answers 503.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::{self, ReaderContext};
use crate::refdata::{RefKind, RefTables};

/// How long one poll of the reference topics waits.
const REF_POLL_TIMEOUT_MS: u64 = 200;

/// The tables and whether they caught up.
#[derive(Default)]
pub struct RefView {
    tables: RwLock<RefTables>,
    ready: AtomicBool,
}

impl RefView {
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub fn read(&self) -> RwLockReadGuard<'_, RefTables> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The ref topics' cluster names and kinds.
fn topics(config: &Config) -> Vec<(String, RefKind)> {
    RefKind::ALL
        .into_iter()
        .map(|k| (config.topic(k.topic()), k))
        .collect()
}

/// Assigns every partition of the ref topics from the beginning and starts
/// following them on a thread; returns at once.
pub fn start(config: &Config) -> Result<Arc<RefView>, kafka::ClientError> {
    let consumer = kafka::reader(config)?;
    let kinds = topics(config);
    let names: Vec<String> = kinds.iter().map(|(t, _)| t.clone()).collect();
    let md = kafka::check_topics(&consumer, config, &names)?;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for topic in &names {
        for p in 0..kafka::partition_count(&md, topic, config)? {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| kafka::ClientError::Config(e.to_string()))?;
            let (_, high) = consumer
                .fetch_watermarks(
                    topic,
                    p,
                    Duration::from_millis(config.kafka.request_timeout_ms),
                )
                .map_err(|e| kafka::ClientError::Config(format!("{topic}/{p}: {e}")))?;
            ends.insert((topic.clone(), p), high);
        }
    }
    consumer
        .assign(&tpl)
        .map_err(|e| kafka::ClientError::Config(e.to_string()))?;
    let view = Arc::new(RefView::default());
    let v = view.clone();
    let by_topic: BTreeMap<String, RefKind> = kinds.into_iter().collect();
    std::thread::Builder::new()
        .name("api-refdata".into())
        .spawn(move || follow(&consumer, &by_topic, &ends, &v))
        .map_err(|e| kafka::ClientError::Config(format!("starting the refdata thread: {e}")))?;
    Ok(view)
}

fn follow(
    consumer: &BaseConsumer<ReaderContext>,
    kinds: &BTreeMap<String, RefKind>,
    ends: &BTreeMap<(String, i32), i64>,
    view: &RefView,
) {
    loop {
        match consumer.poll(Duration::from_millis(REF_POLL_TIMEOUT_MS)) {
            Some(Ok(m)) => {
                let Some(kind) = kinds.get(m.topic()).copied() else {
                    continue;
                };
                let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
                let mut tables = view.tables.write().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = tables.apply(kind, &key, m.payload()) {
                    // As enrich does: the previous value stays in force.
                    tracing::warn!(topic = m.topic(), offset = m.offset(), code = e.code(), error = %e, "reference record skipped");
                }
            }
            Some(Err(_)) => {}
            None if !view.ready() && caught_up(consumer, ends) => {
                tracing::info!("reference data loaded");
                view.ready.store(true, Ordering::SeqCst);
            }
            None => {}
        }
    }
}

/// Whether every partition's position reached where it ended at start.
fn caught_up(consumer: &BaseConsumer<ReaderContext>, ends: &BTreeMap<(String, i32), i64>) -> bool {
    let Ok(positions) = consumer.position() else {
        return false;
    };
    ends.iter().all(|((topic, p), high)| {
        *high == 0
            || positions
                .find_partition(topic, *p)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *high))
    })
}
