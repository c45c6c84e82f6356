//! The outbox: acks and dead letters a batch decided, stored in the same
//! database transaction as its rows, then sent to Kafka and deleted. A
//! crash between sending and deleting sends them again: an ack again is
//! the same bytes under the same key of a compacted topic (no change); a
//! dead letter again carries the same `meterline.ledger.outbox_seq` header,
//! so a reader can tell the copy (and replaying both brings the posting in
//! once: the second is a duplicate of the first).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::kafka::{owned_headers, send_waiting};

/// Outbox rows sent per round (then deleted in one statement).
pub const OUTBOX_BATCH_ROWS: i64 = 1_000;
/// Header naming the outbox row a record was sent from.
pub const OUTBOX_SEQ_HEADER: &str = "meterline.ledger.outbox_seq";

/// Counts deliveries that failed for good (after librdkafka's retries).
#[derive(Default)]
pub struct OutboxContext {
    pub failed: AtomicU64,
}

impl ClientContext for OutboxContext {}

impl ProducerContext for OutboxContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if result.is_err() {
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Why the outbox could not be emptied (it is tried again).
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database")]
    Db(#[from] postgres::Error),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0} ack or dead-letter record(s) were not delivered; kept in the outbox")]
    Undelivered(u64),
}

/// Headers as a JSON array of `[name, hex value or null]`.
pub fn headers_to_json(headers: &[(String, Option<Vec<u8>>)]) -> serde_json::Value {
    serde_json::Value::Array(
        headers
            .iter()
            .map(|(k, v)| serde_json::json!([k, v.as_ref().map(hex::encode)]))
            .collect(),
    )
}

/// The headers [`headers_to_json`] wrote (a malformed entry is skipped).
pub fn headers_from_json(v: &serde_json::Value) -> Vec<(String, Option<Vec<u8>>)> {
    let Some(items) = v.as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let name = item.get(0)?.as_str()?.to_string();
            let value = match item.get(1)? {
                serde_json::Value::String(h) => Some(hex::decode(h).ok()?),
                _ => None,
            };
            Some((name, value))
        })
        .collect()
}

/// Sends the outbox in rounds of [`OUTBOX_BATCH_ROWS`] until it is empty;
/// returns how many records were sent. Each round locks its rows (`FOR
/// UPDATE SKIP LOCKED`), so two instances never send the same row at once.
pub fn drain(
    client: &mut postgres::Client,
    producer: &BaseProducer<OutboxContext>,
    schema: &str,
    flush_timeout: Duration,
) -> Result<u64, OutboxError> {
    let select = format!(
        "SELECT seq, topic, partition, key, value, headers FROM {schema}.outbox \
         ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED"
    );
    let delete = format!("DELETE FROM {schema}.outbox WHERE seq = ANY($1)");
    let mut sent = 0;
    loop {
        let mut tx = client.transaction()?;
        let rows = tx.query(&select, &[&OUTBOX_BATCH_ROWS])?;
        if rows.is_empty() {
            return Ok(sent);
        }
        let before = producer.context().failed.load(Ordering::SeqCst);
        for row in &rows {
            send_row(producer, row)?;
        }
        crate::kafka::flush(producer, flush_timeout)?;
        let failed = producer.context().failed.load(Ordering::SeqCst) - before;
        if failed > 0 {
            return Err(OutboxError::Undelivered(failed));
        }
        let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
        tx.execute(&delete, &[&seqs])?;
        tx.commit()?;
        sent += rows.len() as u64;
    }
}

fn send_row(
    producer: &BaseProducer<OutboxContext>,
    row: &postgres::Row,
) -> Result<(), rdkafka::error::KafkaError> {
    let seq: i64 = row.get(0);
    let topic: String = row.get(1);
    let partition: Option<i32> = row.get(2);
    let key: Option<Vec<u8>> = row.get(3);
    let value: Option<Vec<u8>> = row.get(4);
    let mut headers = headers_from_json(&row.get::<_, serde_json::Value>(5));
    headers.push((OUTBOX_SEQ_HEADER.into(), Some(seq.to_string().into_bytes())));
    let mut record: BaseRecord<'_, [u8], [u8], ()> =
        BaseRecord::to(&topic).headers(owned_headers(&headers));
    if let Some(k) = key.as_deref() {
        record = record.key(k);
    }
    if let Some(v) = value.as_deref() {
        record = record.payload(v);
    }
    if let Some(p) = partition {
        record = record.partition(p);
    }
    send_waiting(producer, record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_json_with_binary_and_null_values() {
        let h = vec![
            ("a".to_string(), Some(vec![0u8, 255, 10])),
            ("b".to_string(), None),
            (
                "meterline.reason".to_string(),
                Some(b"closed_period".to_vec()),
            ),
        ];
        assert_eq!(headers_from_json(&headers_to_json(&h)), h);
    }
}
