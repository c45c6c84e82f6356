//! Table feeds: the compacted reference topics a stage reads in full on every
//! instance (Kafka Streams' global tables). Loaded to their end before the
//! stage processes its first input record, then polled between records.
//!
//! Tables are kept by the processor (in memory); they are rebuilt from the
//! topics at every start, so they need no changelog of their own.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::Processor;
use crate::config::Config;
use crate::kafka::{self, ClientError};
use crate::topology::StageSpec;

/// Table records handed to the processor per loop iteration at most.
const TABLE_RECORDS_PER_POLL_MAX: usize = 500;
/// One poll while loading.
const LOAD_POLL_MS: u64 = 200;

pub struct TableFeed {
    consumer: BaseConsumer<kafka::ReaderContext>,
    /// (cluster topic name, logical name)
    names: Vec<(String, &'static str)>,
}

impl TableFeed {
    pub fn open(config: &Config, spec: &StageSpec) -> Result<Option<TableFeed>, ClientError> {
        if spec.tables.is_empty() {
            return Ok(None);
        }
        let consumer = kafka::reader(config)?;
        let mut tpl = TopicPartitionList::new();
        let mut names = Vec::new();
        for logical in spec.tables {
            let topic = config.topic(logical);
            let md = kafka::metadata(consumer.client(), config, Some(&topic))?;
            let parts = kafka::partition_count(&md, &topic, config)?;
            for p in 0..parts {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)?;
            }
            names.push((topic, *logical));
        }
        consumer.assign(&tpl)?;
        Ok(Some(TableFeed { consumer, names }))
    }

    fn logical(&self, topic: &str) -> Option<&'static str> {
        self.names.iter().find(|(t, _)| t == topic).map(|(_, l)| *l)
    }

    /// Reads every table partition to its end.
    pub fn load_all<P: Processor>(
        &mut self,
        config: &Config,
        processor: &mut P,
    ) -> Result<(), String> {
        let mut open: BTreeSet<(String, i32)> = self
            .consumer
            .assignment()
            .map_err(|e| e.to_string())?
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        let t0 = Instant::now();
        let deadline = Duration::from_millis(config.runtime.restore_timeout_ms);
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
                    // EOF names only the partition: drop the first open entry of it
                    // whose topic is at its end.
                    let done: Vec<(String, i32)> =
                        open.iter().filter(|(_, q)| *q == p).cloned().collect();
                    for d in done {
                        let (lo, hi) = self
                            .consumer
                            .fetch_watermarks(&d.0, d.1, Duration::from_secs(5))
                            .unwrap_or((0, 0));
                        let pos = self
                            .consumer
                            .position()
                            .ok()
                            .and_then(|t| t.find_partition(&d.0, d.1).map(|e| e.offset()));
                        let at_end = match pos {
                            Some(Offset::Offset(o)) => o >= hi,
                            _ => hi == lo,
                        };
                        if at_end {
                            open.remove(&d);
                        }
                    }
                }
                Some(Err(e)) => return Err(format!("reading tables: {e}")),
                Some(Ok(m)) => {
                    if let Some(l) = self.logical(m.topic()) {
                        processor.on_table_record(l, m.key(), m.payload());
                    }
                }
            }
        }
        Ok(())
    }

    /// Hands newly arrived table records to the processor, without waiting.
    pub fn poll_some<P: Processor>(&mut self, processor: &mut P) -> Result<(), String> {
        for _ in 0..TABLE_RECORDS_PER_POLL_MAX {
            match self.consumer.poll(Duration::ZERO) {
                None => return Ok(()),
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                Some(Err(e)) => return Err(format!("reading tables: {e}")),
                Some(Ok(m)) => {
                    if let Some(l) = self.logical(m.topic()) {
                        processor.on_table_record(l, m.key(), m.payload());
                    }
                }
            }
        }
        Ok(())
    }
}
