//! Publishing operator records: a finance command to `billing.commands`,
//! signed with its actor's key ([`SIGNATURE_HEADER`]), or any one record,
//! each in its own Kafka transaction. Shared by the CLIs (`meterline
//! invoices`, `meterline rerate`) and `meterline api`'s command routes.

use hmac::{Hmac, Mac};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sha2::Sha256;

use crate::config::Config;
use crate::contracts::{Command, SIGNATURE_HEADER};
use crate::kafka::{self, ClientError};
use crate::topology::names;

/// Why a record was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The actor's key is not usable hex: a config error, never retried.
    #[error("the actor's command key is not a hex string")]
    KeyNotHex,
    #[error("serialising the command: {0}")]
    Serialise(#[from] serde_json::Error),
    /// The broker refused or did not answer: retrying with the same
    /// command id is safe (the invoice stage applies an id once).
    #[error("publishing to {topic}: {source}")]
    Kafka {
        topic: String,
        #[source]
        source: ClientError,
    },
}

impl PublishError {
    /// Whether sending again may succeed (the broker, not the request).
    pub fn is_retriable(&self) -> bool {
        matches!(self, PublishError::Kafka { .. })
    }
}

/// Hex HMAC-SHA256 of `value` under the hex key `key_hex`.
pub fn signature_hex(value: &[u8], key_hex: &str) -> Result<String, PublishError> {
    let key = hex::decode(key_hex.trim()).map_err(|_| PublishError::KeyNotHex)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| PublishError::KeyNotHex)?;
    mac.update(value);
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// Publishes `cmd` to `billing.commands`, keyed by its customer, in one
/// transaction of a producer named after `who`; signed when `key_hex` is
/// given (the invoice stage requires it once `invoice.actor_keys_hex` is set).
pub fn send_command(
    config: &Config,
    who: &str,
    cmd: &Command,
    key_hex: Option<&str>,
) -> Result<(), PublishError> {
    let value = cmd.to_json_bytes()?;
    let mut headers = OwnedHeaders::new();
    if let Some(key_hex) = key_hex {
        let signature = signature_hex(&value, key_hex)?;
        headers = headers.insert(Header {
            key: SIGNATURE_HEADER,
            value: Some(signature.as_bytes()),
        });
    }
    let topic = config.topic(names::COMMANDS);
    publish_in_transaction(
        config,
        who,
        &topic,
        cmd.customer_id.as_bytes(),
        &value,
        headers,
    )
    .map_err(|source| PublishError::Kafka { topic, source })
}

/// Publishes one record in its own Kafka transaction (a producer named
/// after `who`, fenced by nobody: a random transactional id). Blocks: call
/// it off the async executor.
pub fn publish_in_transaction(
    config: &Config,
    who: &str,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: OwnedHeaders,
) -> Result<(), ClientError> {
    let transactional_id = format!(
        "{}meterline.{who}.{:016x}",
        config.topology.namespace,
        rand::random::<u64>()
    );
    let producer: BaseProducer = kafka::create(
        &kafka::transactional_producer_config(config, &transactional_id),
        rdkafka::producer::DefaultProducerContext,
    )?;
    let timeout = std::time::Duration::from_millis(config.runtime.transaction_call_timeout_ms);
    producer.init_transactions(timeout)?;
    producer.begin_transaction()?;
    let record = BaseRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    let sent = kafka::send_waiting(&producer, record)
        .and_then(|()| kafka::flush(&producer, timeout))
        .and_then(|()| producer.commit_transaction(timeout));
    if let Err(e) = sent {
        let _ = producer.abort_transaction(timeout);
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_the_hmac_of_the_exact_bytes_and_bad_keys_are_refused() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = signature_hex(b"what do ya want for nothing?", &hex::encode("Jefe")).unwrap();
        assert_eq!(
            sig,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(matches!(
            signature_hex(b"x", "zz"),
            Err(PublishError::KeyNotHex)
        ));
        assert!(!PublishError::KeyNotHex.is_retriable());
    }
}
