//! Restoring a store partition from its compacted changelog.
//!
//! Reads the changelog partition from the store's checkpoint + 1 (or the
//! beginning) to its end under read_committed, so aborted writes, including
//! those of a crashed instance's open transaction, are never applied. The end
//! of a read_committed partition is its last stable offset, which librdkafka
//! reports as partition EOF.

use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::internal_events::StoreRestored;
use crate::kafka;
use crate::metrics::StageMetrics;
use crate::store::{PartitionStores, StoreId, Writes};

/// Changelog records applied to RocksDB per write batch while restoring.
const RESTORE_BATCH_RECORDS: usize = 10_000;
/// One poll of the restore consumer.
const RESTORE_POLL_MS: u64 = 200;

#[allow(clippy::too_many_arguments)]
pub fn restore_store(
    config: &Config,
    stage: &str,
    store_name: &str,
    store: StoreId,
    topic: &str,
    partition: i32,
    stores: &mut PartitionStores,
    metrics: &StageMetrics,
) -> Result<u64, String> {
    let t0 = Instant::now();
    let start = match stores.checkpoint(store).map_err(|e| e.to_string())? {
        Some(o) => o + 1,
        None => 0,
    };
    let reader = kafka::restore_reader(config).map_err(|e| e.to_string())?;
    let (low, high) = watermarks(&reader, config, topic, partition)?;
    if start >= high {
        // Nothing newer than what the store already holds.
        return Ok(0);
    }
    let from = start.max(low);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))
        .map_err(|e| e.to_string())?;
    reader.assign(&tpl).map_err(|e| e.to_string())?;

    let deadline = Duration::from_millis(config.runtime.restore_timeout_ms);
    let mut batch = Writes::new();
    let mut last: Option<i64> = None;
    let mut count: u64 = 0;
    loop {
        if t0.elapsed() > deadline {
            return Err(format!(
                "restoring {topic}/{partition} took longer than runtime.restore_timeout_ms ({} ms)",
                config.runtime.restore_timeout_ms
            ));
        }
        match reader.poll(Duration::from_millis(RESTORE_POLL_MS)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => return Err(format!("reading {topic}/{partition}: {e}")),
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    batch.insert(k.to_vec(), m.payload().map(<[u8]>::to_vec));
                }
                last = Some(m.offset());
                count += 1;
                if batch.len() >= RESTORE_BATCH_RECORDS {
                    stores
                        .restore(store, &batch, m.offset())
                        .map_err(|e| e.to_string())?;
                    batch.clear();
                }
            }
        }
    }
    if let Some(o) = last {
        stores
            .restore(store, &batch, o)
            .map_err(|e| e.to_string())?;
    }
    StoreRestored {
        stage,
        store: store_name,
        partition,
        records: count,
        from_offset: from,
        elapsed: t0.elapsed(),
    }
    .emit(metrics);
    Ok(count)
}

/// The changelog partition's watermarks, asked again (a partition created
/// by `topology apply` a moment before may have no leader yet) until
/// `runtime.restore_timeout_ms`, then the last error.
fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    reader: &rdkafka::consumer::BaseConsumer<C>,
    config: &Config,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64), String> {
    let deadline = Instant::now() + Duration::from_millis(config.runtime.restore_timeout_ms);
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    kafka::retry_until("changelog watermarks", Some(deadline), || {
        reader.fetch_watermarks(topic, partition, timeout)
    })
    .map_err(|e| format!("watermarks of {topic}/{partition}: {e}"))
}
