//! `meterline topology dump TOPIC [--partition P] [--limit N]`: the
//! committed records of any topic, one JSON object a line, for operators
//! who would otherwise read a topic with kcat: pipeline topics, changelogs,
//! dead letters, reference data.
//!
//! Each line is `{"topic", "partition", "offset", "timestamp_ms", "key",
//! "headers", "value"}`. A key or value that is a JSON object or array is
//! embedded as JSON (numbers exact: serde_json's arbitrary precision); other
//! text becomes `{"text": ...}`; anything else (store keys of the changelogs,
//! Avro in the Confluent wire format) `{"hex": ...}`; a tombstone `null`.
//! Headers are `[name, value]` pairs, the value as text when it is UTF-8,
//! else `{"hex": ...}`.

use std::io::Write;
use std::ops::ControlFlow;

use rdkafka::message::{BorrowedMessage, Headers, Message};
use serde_json::{json, Value};

use super::counts::for_each_record_in;
use super::Topology;
use crate::config::Config;
use crate::kafka::ClientError;

/// Records printed unless `--limit` says otherwise.
pub const DEFAULT_DUMP_LIMIT: u64 = 1_000;

/// What a dump printed.
#[derive(Debug, PartialEq, Eq)]
pub struct DumpSummary {
    /// The topic's name in the cluster.
    pub topic: String,
    pub records: u64,
    /// Whether it stopped at the limit (more records may follow).
    pub limited: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error(transparent)]
    Kafka(#[from] ClientError),
    /// Writing the output failed (a closed pipe: `... | head`).
    #[error("writing the dump: {0}")]
    Write(#[source] std::io::Error),
}

/// The cluster name of `topic`: a topic of the topology by its logical name
/// (the namespace applied), any other name as given.
pub fn resolve(topology: &Topology, topic: &str) -> String {
    topology
        .get(topic)
        .map_or_else(|| topic.to_string(), |t| t.name.clone())
}

/// Writes up to `limit` records of `topic` (all partitions or one, from the
/// beginning, read_committed) to `out`, one JSON line each.
pub fn dump(
    config: &Config,
    topology: &Topology,
    topic: &str,
    partition: Option<i32>,
    limit: u64,
    out: &mut impl Write,
) -> Result<DumpSummary, DumpError> {
    let name = resolve(topology, topic);
    let mut records = 0u64;
    let mut limited = false;
    let mut write_error = None;
    for_each_record_in(config, &name, partition, |m| {
        if records >= limit {
            limited = true;
            return ControlFlow::Break(());
        }
        if let Err(e) = writeln!(out, "{}", line(m)) {
            write_error = Some(e);
            return ControlFlow::Break(());
        }
        records += 1;
        ControlFlow::Continue(())
    })?;
    if let Some(e) = write_error {
        return Err(DumpError::Write(e));
    }
    Ok(DumpSummary {
        topic: name,
        records,
        limited,
    })
}

/// One record as a JSON object.
pub fn line(m: &BorrowedMessage<'_>) -> Value {
    let headers: Vec<Value> = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| json!([x.key, x.value.map_or(Value::Null, header_value)]))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "topic": m.topic(),
        "partition": m.partition(),
        "offset": m.offset(),
        "timestamp_ms": m.timestamp().to_millis(),
        "key": m.key().map_or(Value::Null, bytes_value),
        "headers": headers,
        "value": m.payload().map_or(Value::Null, bytes_value),
    })
}

/// A key or value: a JSON object or array as JSON, other text as
/// `{"text"}` (so a customer id "42" stays the text it is), else `{"hex"}`.
pub fn bytes_value(b: &[u8]) -> Value {
    if let Ok(v @ (Value::Object(_) | Value::Array(_))) = serde_json::from_slice::<Value>(b) {
        return v;
    }
    match std::str::from_utf8(b) {
        Ok(t) if !t.contains('\0') => json!({ "text": t }),
        _ => json!({ "hex": hex::encode(b) }),
    }
}

fn header_value(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(t) => Value::String(t.to_string()),
        Err(_) => json!({ "hex": hex::encode(b) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_stays_json_with_exact_numbers() {
        let v = bytes_value(br#"{"amount":"0.10","tokens":1234567890.123456789012345}"#);
        assert_eq!(
            v.to_string(),
            r#"{"amount":"0.10","tokens":1234567890.123456789012345}"#
        );
        // A pretty-printed record still becomes one line.
        assert_eq!(bytes_value(b"{\n \"a\": 1\n}").to_string(), r#"{"a":1}"#);
    }

    #[test]
    fn text_and_binary_are_tagged() {
        assert_eq!(bytes_value(b"cust-42"), json!({"text": "cust-42"}));
        assert_eq!(bytes_value(b"42"), json!({"text": "42"}));
        assert_eq!(
            bytes_value(br#"["acme-us","sub-1"]"#),
            json!(["acme-us", "sub-1"])
        );
        // A changelog key: prefix byte and length-prefixed strings.
        assert_eq!(
            bytes_value(&[b'R', 0, 0, 0, 1, b'a']),
            json!({"hex": "520000000161"})
        );
        // Avro in the Confluent wire format (magic byte 0, schema id).
        assert_eq!(
            bytes_value(&[0, 0, 0, 0, 7, 2]),
            json!({"hex": "000000000702"})
        );
        assert_eq!(header_value(b"validate"), json!("validate"));
        assert_eq!(header_value(&[0xff, 0xfe]), json!({"hex": "fffe"}));
    }
}
