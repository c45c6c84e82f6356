//! Table feeds: the compacted reference topics a stage reads in full on every
//! instance (Kafka Streams' global tables), materialised into a RocksDB table
//! store per instance and kept current while the stage runs.
//!
//! * The store holds every record of the stage's table topics (by topic and
//!   key; a tombstone deletes) and, in the same write batch, the next offset
//!   of each topic partition, so store and offsets never disagree.
//! * On start the processor is handed every stored record, then the feed
//!   resumes each partition from its stored offset and reads to the end
//!   before the first input record is processed: a restart re-reads only
//!   what changed, not whole topics.
//! * While running, new records are handed to the processor and written to
//!   the store between input records.
//!
//! The processor keeps its own in-memory index of the tables (built from what
//! this feed hands it). Tables are not part of the stage's transactions:
//! they are read-only inputs, materialised from committed records only.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use super::Processor;
use crate::config::Config;
use crate::kafka::{self, ReaderContext};
use crate::store::keys::{KeyBuilder, KeyReader};
use crate::store::rocks::{RocksBackend, StoreMemory};
use crate::store::{Backend, StoreId, Writes};
use crate::topology::StageSpec;

/// Table records handed to the processor per loop iteration at most.
const TABLE_RECORDS_PER_POLL_MAX: usize = 500;
/// One poll while loading.
const LOAD_POLL_MS: u64 = 200;
/// Records written to the table store per batch while loading.
const LOAD_BATCH_RECORDS: usize = 10_000;
/// Store ids inside the table store.
const RECORDS: StoreId = 0;
const OFFSETS: StoreId = 1;
const RECORD_KEY_PREFIX: u8 = b'R';
const OFFSET_KEY_PREFIX: u8 = b'O';

fn record_key(table: &str, key: &[u8]) -> Vec<u8> {
    KeyBuilder::new(RECORD_KEY_PREFIX)
        .str(table)
        .bytes(key)
        .build()
}

fn parse_record_key(k: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut r = KeyReader::new(k, RECORD_KEY_PREFIX).ok()?;
    let t = r.str().ok()?.to_string();
    let key = r.bytes().ok()?.to_vec();
    r.finish().ok()?;
    Some((t, key))
}

fn offset_key(topic: &str, partition: i32) -> Vec<u8> {
    KeyBuilder::new(OFFSET_KEY_PREFIX)
        .str(topic)
        .i64(i64::from(partition))
        .build()
}

/// Hands one table record to the processor and stages it for the store.
fn take<P: Processor>(
    names: &[(String, &'static str)],
    pending: &mut (Writes, Writes),
    m: &BorrowedMessage<'_>,
    processor: &mut P,
) {
    let Some(l) = names.iter().find(|(t, _)| t == m.topic()).map(|(_, l)| *l) else {
        return;
    };
    processor.on_table_record(l, m.key(), m.payload());
    if let Some(k) = m.key() {
        pending
            .0
            .insert(record_key(l, k), m.payload().map(<[u8]>::to_vec));
    }
    pending.1.insert(
        offset_key(m.topic(), m.partition()),
        Some((m.offset() + 1).to_be_bytes().to_vec()),
    );
}

pub struct TableFeed {
    consumer: BaseConsumer<ReaderContext>,
    /// (cluster topic name, logical name)
    names: Vec<(String, &'static str)>,
    store: RocksBackend,
    /// Writes not yet flushed to the store: records and next offsets.
    pending: (Writes, Writes),
}

impl TableFeed {
    /// Opens the table store under `state_root` and assigns every partition
    /// of the stage's tables from where the store left off.
    pub fn open(
        config: &Config,
        spec: &StageSpec,
        state_root: &Path,
    ) -> Result<Option<TableFeed>, String> {
        if spec.tables.is_empty() {
            return Ok(None);
        }
        let memory = StoreMemory::process(config.runtime.store_memory_mb);
        let store = RocksBackend::open(&state_root.join("tables"), memory)
            .map_err(|e| e.to_string())?
            .with_write_ahead_log(config.runtime.store_write_ahead_log);
        let consumer = kafka::reader(config).map_err(|e| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        let mut names = Vec::new();
        for logical in spec.tables {
            let topic = config.topic(logical);
            let md = kafka::metadata(consumer.client(), config, Some(&topic))
                .map_err(|e| e.to_string())?;
            let parts = kafka::partition_count(&md, &topic, config).map_err(|e| e.to_string())?;
            for p in 0..parts {
                let from = match store
                    .get(OFFSETS, &offset_key(&topic, p))
                    .map_err(|e| e.to_string())?
                {
                    Some(v) if v.len() == 8 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&v);
                        Offset::Offset(i64::from_be_bytes(b))
                    }
                    _ => Offset::Beginning,
                };
                tpl.add_partition_offset(&topic, p, from)
                    .map_err(|e: KafkaError| e.to_string())?;
            }
            names.push((topic, *logical));
        }
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        Ok(Some(TableFeed {
            consumer,
            names,
            store,
            pending: (Writes::new(), Writes::new()),
        }))
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.pending.0.is_empty() && self.pending.1.is_empty() {
            return Ok(());
        }
        self.store
            .apply(
                &[(RECORDS, &self.pending.0), (OFFSETS, &self.pending.1)],
                &[],
            )
            .map_err(|e| e.to_string())?;
        self.pending.0.clear();
        self.pending.1.clear();
        Ok(())
    }

    /// Hands the stored tables to the processor, then reads every table
    /// partition from its stored offset to its end.
    pub fn load_all<P: Processor>(
        &mut self,
        config: &Config,
        processor: &mut P,
    ) -> Result<(), String> {
        let t0 = Instant::now();
        let stored = self
            .store
            .scan(RECORDS, &[], &[0xFF], usize::MAX)
            .map_err(|e| e.to_string())?;
        let restored = stored.len();
        for (k, v) in stored {
            if let Some((table, key)) = parse_record_key(&k) {
                if let Some(l) = self.names.iter().map(|(_, l)| *l).find(|l| *l == table) {
                    processor.on_table_record(l, Some(&key), Some(&v));
                }
            }
        }
        let mut open: BTreeSet<(String, i32)> = self
            .consumer
            .assignment()
            .map_err(|e| e.to_string())?
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let deadline = Duration::from_millis(config.runtime.restore_timeout_ms);
        let mut read = 0usize;
        while !open.is_empty() {
            if t0.elapsed() > deadline {
                return Err(format!(
                    "loading tables took longer than runtime.restore_timeout_ms ({} ms); still open: {open:?}",
                    config.runtime.restore_timeout_ms
                ));
            }
            match self.consumer.poll(Duration::from_millis(LOAD_POLL_MS)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    // EOF names only the partition number: close each open
                    // (topic, p) whose position reached its end.
                    let positions = self.consumer.position().map_err(|e| e.to_string())?;
                    let candidates: Vec<(String, i32)> =
                        open.iter().filter(|(_, q)| *q == p).cloned().collect();
                    for c in candidates {
                        let (_, hi) = self
                            .consumer
                            .fetch_watermarks(
                                &c.0,
                                c.1,
                                Duration::from_millis(config.kafka.request_timeout_ms),
                            )
                            .map_err(|e| e.to_string())?;
                        let at_end = match positions.find_partition(&c.0, c.1).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => o >= hi,
                            _ => hi == 0,
                        };
                        if at_end {
                            open.remove(&c);
                        }
                    }
                }
                Some(Err(e)) => return Err(format!("reading tables: {e}")),
                Some(Ok(m)) => {
                    take(&self.names, &mut self.pending, &m, processor);
                    read += 1;
                    if self.pending.0.len() >= LOAD_BATCH_RECORDS {
                        self.flush()?;
                    }
                }
            }
        }
        self.flush()?;
        tracing::info!(
            stored = restored,
            read,
            elapsed_ms = t0.elapsed().as_millis() as u64,
            "reference tables loaded"
        );
        Ok(())
    }

    /// Hands newly arrived table records to the processor and the store,
    /// without waiting.
    pub fn poll_some<P: Processor>(&mut self, processor: &mut P) -> Result<(), String> {
        let mut taken = false;
        for _ in 0..TABLE_RECORDS_PER_POLL_MAX {
            match self.consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(format!("reading tables: {e}")),
                Some(Ok(m)) => {
                    take(&self.names, &mut self.pending, &m, processor);
                    taken = true;
                }
            }
        }
        if taken {
            self.flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rocks::MIN_STORE_MEMORY_MB;

    #[test]
    fn table_keys_round_trip() {
        let k = record_key("ref.plans", b"api-pro:2");
        assert_eq!(
            parse_record_key(&k),
            Some(("ref.plans".to_string(), b"api-pro:2".to_vec()))
        );
        assert_ne!(record_key("ref.plans", b"a"), record_key("ref.plan", b"sa"));
        assert!(parse_record_key(&offset_key("ref.plans", 0)).is_none());
    }

    #[test]
    fn store_survives_reopen_with_offsets() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s =
                RocksBackend::open(dir.path(), &StoreMemory::new(MIN_STORE_MEMORY_MB)).unwrap();
            let mut r = Writes::new();
            r.insert(record_key("ref.customers", b"c1"), Some(b"{}".to_vec()));
            let mut o = Writes::new();
            o.insert(offset_key("t", 0), Some(7i64.to_be_bytes().to_vec()));
            s.apply(&[(RECORDS, &r), (OFFSETS, &o)], &[]).unwrap();
        }
        let s = RocksBackend::open(dir.path(), &StoreMemory::new(MIN_STORE_MEMORY_MB)).unwrap();
        assert_eq!(s.scan(RECORDS, &[], &[0xFF], 10).unwrap().len(), 1);
        assert_eq!(
            s.get(OFFSETS, &offset_key("t", 0)).unwrap().unwrap(),
            7i64.to_be_bytes().to_vec()
        );
    }
}
