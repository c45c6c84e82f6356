//! `meterline topology counts`: how many committed records each topic holds.
//!
//! Counts by reading every partition to its end under read_committed: offsets
//! alone would count transaction markers and aborted records.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{Offset, TopicPartitionList};

use super::{CleanupPolicy, Topology};
use crate::config::Config;
use crate::kafka::{self, ClientError};

/// Give up on a topic that does not reach its end within this time.
const READ_TIMEOUT_MS: u64 = 120_000;

/// Counts per topic (cluster name), in topology order; compacted topics are skipped.
pub fn count(config: &Config, topology: &Topology) -> Result<Vec<(String, u64)>, ClientError> {
    let mut out = Vec::new();
    for t in &topology.topics {
        if t.cleanup_policy == CleanupPolicy::Compact {
            continue;
        }
        out.push((t.name.clone(), count_topic(config, &t.name)?));
    }
    Ok(out)
}

pub fn count_topic(config: &Config, topic: &str) -> Result<u64, ClientError> {
    let mut n = 0u64;
    for_each_record(config, topic, |_| n += 1)?;
    Ok(n)
}

/// Reads every committed record of `topic` (all partitions, from the
/// beginning to the end) and hands each to `f`.
pub fn for_each_record(
    config: &Config,
    topic: &str,
    mut f: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), ClientError> {
    for_each_record_in(config, topic, None, |m| {
        f(m);
        ControlFlow::Continue(())
    })
}

/// Reads the committed records of `topic` (`partition`, or all of them)
/// from the beginning, handing each to `f` until `f` breaks or every
/// partition read reaches its end.
pub fn for_each_record_in(
    config: &Config,
    topic: &str,
    partition: Option<i32>,
    mut f: impl FnMut(&BorrowedMessage<'_>) -> ControlFlow<()>,
) -> Result<(), ClientError> {
    let c = kafka::reader(config)?;
    // A topic created a moment ago may not be in the metadata yet: wait
    // for it a bounded time, as the stages do.
    let md = kafka::check_topics(&c, config, &[topic.to_string()])?;
    let parts = kafka::partition_count(&md, topic, config)?;
    let mut open: BTreeSet<i32> = match partition {
        Some(p) if !(0..parts).contains(&p) => {
            return Err(ClientError::NoSuchPartition {
                topic: topic.to_string(),
                partition: p,
                partitions: parts,
            })
        }
        Some(p) => BTreeSet::from([p]),
        None => (0..parts).collect(),
    };
    let mut tpl = TopicPartitionList::new();
    for p in &open {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let t0 = Instant::now();
    while !open.is_empty() {
        if t0.elapsed() > Duration::from_millis(READ_TIMEOUT_MS) {
            return Err(ClientError::Unreachable {
                servers: config.kafka.bootstrap_servers.clone(),
                message: format!("reading {topic} did not reach its end in {READ_TIMEOUT_MS} ms"),
            });
        }
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => match f(&m) {
                ControlFlow::Break(()) => break,
                ControlFlow::Continue(()) => {}
            },
        }
    }
    Ok(())
}

pub fn render(counts: &[(String, u64)]) -> String {
    let width = counts.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    let mut s = String::new();
    for (t, n) in counts {
        s.push_str(&format!("{t:<width$}  {n:>10}\n"));
    }
    s
}
