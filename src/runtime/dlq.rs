//! Dead letters: a record that fails goes to `meterline.dlq.<stage>` with its
//! key, value and headers byte-for-byte, plus diagnostic headers. When a name
//! occurs twice (a replayed record that failed again), the last one is current.

use super::{InputRecord, Output};

/// Header names written on dead letters and replays. Stable: operators filter on them.
pub mod headers {
    pub const STAGE: &str = "meterline.stage";
    pub const REASON: &str = "meterline.reason";
    pub const MESSAGE: &str = "meterline.message";
    pub const ORIGINAL_TOPIC: &str = "meterline.original.topic";
    pub const ORIGINAL_PARTITION: &str = "meterline.original.partition";
    pub const ORIGINAL_OFFSET: &str = "meterline.original.offset";
    pub const ORIGINAL_TIMESTAMP: &str = "meterline.original.timestamp";
    /// How many times the record has been tried: 1 the first time, +1 per replay.
    pub const ATTEMPT: &str = "meterline.attempt";
    /// `topic:partition:offset` of the dead letter a replayed record came from.
    pub const REPLAYED_FROM: &str = "meterline.replayed.from";
    /// Present when the original record did not fit in a dead letter: says
    /// what was cut (`value: 1048000 bytes, first 65536 kept; ...`).
    pub const TRUNCATED: &str = "meterline.truncated";
    /// With [`TRUNCATED`]: hex SHA-256 of the whole original value.
    pub const ORIGINAL_VALUE_SHA256: &str = "meterline.original.value.sha256";
    /// With [`TRUNCATED`]: the original value's length in bytes.
    pub const ORIGINAL_VALUE_BYTES: &str = "meterline.original.value.bytes";

    /// Headers that describe a failure; replay strips them.
    pub const DIAGNOSTIC: &[&str] = &[
        STAGE,
        REASON,
        MESSAGE,
        ORIGINAL_TOPIC,
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        ORIGINAL_TIMESTAMP,
        TRUNCATED,
        ORIGINAL_VALUE_SHA256,
        ORIGINAL_VALUE_BYTES,
    ];
}

/// Largest dead letter written (key + value + headers, plus
/// [`RECORD_HEADER_OVERHEAD_BYTES`] per header): half of librdkafka's default
/// `message.max.bytes` (1,000,000) and of Kafka's default topic
/// `max.message.bytes`, so a dead letter always fits (the config refuses a
/// smaller producer `message.max.bytes`). A record that does not fit is kept
/// in part, see [`dead_letter`].
pub const DEAD_LETTER_MAX_BYTES: usize = 512 * 1024;
/// Bytes of the original value kept in a dead letter that had to be cut.
pub const TRUNCATED_VALUE_PREFIX_BYTES: usize = 64 * 1024;
/// Bytes of the original key kept in a dead letter that had to be cut.
pub const TRUNCATED_KEY_PREFIX_BYTES: usize = 1024;
/// The original headers are kept in a cut dead letter when they take at
/// most this many bytes, dropped otherwise.
pub const TRUNCATED_HEADERS_MAX_BYTES: usize = 64 * 1024;
/// What one header costs in a record beyond its key and value (varint
/// lengths), counted generously.
pub const RECORD_HEADER_OVERHEAD_BYTES: usize = 16;

/// Reason codes the runtime itself gives, whatever the stage: records the
/// stage's own rules never see. Stable, like the stages' codes.
pub mod reasons {
    crate::reason_codes! {
        INVALID_HEADER => "invalid_header",
            "A header key of the record is not UTF-8 (the dead letter carries it with U+FFFD replacements).";
        OUTPUT_UNPRODUCIBLE => "output_unproducible",
            "An output the record produced was refused for good by the producer or the broker (larger than message.max.bytes or the topic's max.message.bytes, or invalid): the record is dead-lettered instead of retrying forever.";
    }
}

/// Longest human message kept in a header (the reason code is the stable part).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// The attempt count a record carries (1 when it has none).
pub fn attempt_of(headers: &[(String, Option<Vec<u8>>)]) -> u32 {
    last_header(headers, headers::ATTEMPT)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1)
}

/// The value of the last header named `name`.
pub fn last_header<'a>(headers: &'a [(String, Option<Vec<u8>>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

fn headers_size(headers: &[(String, Option<Vec<u8>>)]) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len) + RECORD_HEADER_OVERHEAD_BYTES)
        .sum()
}

/// Size of a record as [`DEAD_LETTER_MAX_BYTES`] counts it.
pub fn record_size(out: &Output) -> usize {
    out.key.as_ref().map_or(0, Vec::len)
        + out.value.as_ref().map_or(0, Vec::len)
        + headers_size(&out.headers)
}

/// Builds the dead letter of `rec`: the original key, value and headers
/// byte-for-byte plus the diagnostic headers, when that fits in
/// [`DEAD_LETTER_MAX_BYTES`]. Otherwise (a huge record) the value is cut to
/// its first [`TRUNCATED_VALUE_PREFIX_BYTES`], the key to
/// [`TRUNCATED_KEY_PREFIX_BYTES`], the original headers are dropped if they
/// exceed [`TRUNCATED_HEADERS_MAX_BYTES`], and headers
/// [`headers::TRUNCATED`], [`headers::ORIGINAL_VALUE_SHA256`] and
/// [`headers::ORIGINAL_VALUE_BYTES`] say so: a dead letter must always be
/// writable, or the record would stop its partition.
pub fn dead_letter(
    stage: &str,
    rec: &InputRecord<'_>,
    reason: &str,
    message: &str,
    dlq_topic: &str,
    dlq_partitions: i32,
) -> Output {
    let mut message = message.to_string();
    if message.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
    let mut diagnostics: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    let mut add = |k: &str, v: String| diagnostics.push((k.to_string(), Some(v.into_bytes())));
    add(headers::STAGE, stage.to_string());
    add(headers::REASON, reason.to_string());
    add(headers::MESSAGE, message);
    add(headers::ORIGINAL_TOPIC, rec.topic.to_string());
    add(headers::ORIGINAL_PARTITION, rec.partition.to_string());
    add(headers::ORIGINAL_OFFSET, rec.offset.to_string());
    add(
        headers::ORIGINAL_TIMESTAMP,
        rec.timestamp_ms.map(|t| t.to_string()).unwrap_or_default(),
    );
    add(headers::ATTEMPT, attempt_of(rec.headers).to_string());
    let key_len = rec.key.map_or(0, <[u8]>::len);
    let value = rec.value.unwrap_or_default();
    let whole = key_len + value.len() + headers_size(rec.headers) + headers_size(&diagnostics);
    let (key, value, h) = if whole <= DEAD_LETTER_MAX_BYTES {
        let mut h = rec.headers.to_vec();
        h.append(&mut diagnostics);
        (
            rec.key.map(<[u8]>::to_vec),
            rec.value.map(<[u8]>::to_vec),
            h,
        )
    } else {
        use sha2::{Digest, Sha256};
        let kept_value = value.get(..TRUNCATED_VALUE_PREFIX_BYTES).unwrap_or(value);
        let kept_key = rec
            .key
            .map(|k| k.get(..TRUNCATED_KEY_PREFIX_BYTES).unwrap_or(k).to_vec());
        let original_headers = headers_size(rec.headers);
        let keep_headers = original_headers <= TRUNCATED_HEADERS_MAX_BYTES;
        let mut h = if keep_headers {
            rec.headers.to_vec()
        } else {
            Vec::new()
        };
        let what = format!(
            "value: {} bytes, first {} kept; key: {key_len} bytes, first {} kept; headers: {} ({original_headers} bytes) {}",
            value.len(),
            kept_value.len(),
            kept_key.as_ref().map_or(0, Vec::len),
            rec.headers.len(),
            if keep_headers { "kept" } else { "dropped" },
        );
        h.append(&mut diagnostics);
        h.push((headers::TRUNCATED.to_string(), Some(what.into_bytes())));
        h.push((
            headers::ORIGINAL_VALUE_SHA256.to_string(),
            Some(hex::encode(Sha256::digest(value)).into_bytes()),
        ));
        h.push((
            headers::ORIGINAL_VALUE_BYTES.to_string(),
            Some(value.len().to_string().into_bytes()),
        ));
        (kept_key, rec.value.map(|_| kept_value.to_vec()), h)
    };
    Output {
        topic: dlq_topic.to_string(),
        key,
        value,
        headers: h,
        // Same partition number as the input (modulo the DLQ's size): keeps a
        // partition's dead letters in order and needs no key.
        partition: Some(rec.partition.rem_euclid(dlq_partitions.max(1))),
        // Stamped when dead-lettered (append time); the original record's
        // timestamp is in `meterline.original.timestamp`.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_bytes_and_adds_diagnostics() {
        let original_headers = vec![
            ("ce_id".to_string(), Some(b"1".to_vec())),
            ("nullh".to_string(), None),
        ];
        let rec = InputRecord {
            topic: "usage.events",
            partition: 7,
            offset: 42,
            key: Some(b"cust"),
            value: Some(b"\xff\x00garbage"),
            headers: &original_headers,
            timestamp_ms: Some(1_700_000_000_000),
        };
        let out = dead_letter(
            "validate",
            &rec,
            "malformed_json",
            "bad",
            "meterline.dlq.validate",
            6,
        );
        assert_eq!(out.key.as_deref(), Some(&b"cust"[..]));
        assert_eq!(out.value.as_deref(), Some(&b"\xff\x00garbage"[..]));
        assert_eq!(&out.headers[..2], &original_headers[..]);
        assert_eq!(out.partition, Some(1));
        assert_eq!(
            last_header(&out.headers, headers::REASON),
            Some(&b"malformed_json"[..])
        );
        assert_eq!(
            last_header(&out.headers, headers::ORIGINAL_OFFSET),
            Some(&b"42"[..])
        );
        assert_eq!(attempt_of(&out.headers), 1);
        // The original time is kept in a header (the record is stamped when written).
        assert_eq!(
            last_header(&out.headers, headers::ORIGINAL_TIMESTAMP),
            Some(&b"1700000000000"[..])
        );
    }

    #[test]
    fn a_dead_letter_that_cannot_fit_keeps_a_prefix_and_the_digest() {
        use sha2::{Digest, Sha256};
        let value = vec![b'x'; 1_000_000];
        let big_header = vec![b'h'; TRUNCATED_HEADERS_MAX_BYTES];
        let key = vec![b'k'; 5_000];
        for headers in [
            vec![("ce_id".to_string(), Some(b"1".to_vec()))],
            vec![("huge".to_string(), Some(big_header.clone()))],
        ] {
            let rec = InputRecord {
                topic: "usage.events",
                partition: 2,
                offset: 9,
                key: Some(&key),
                value: Some(&value),
                headers: &headers,
                timestamp_ms: Some(1),
            };
            let out = dead_letter(
                "validate",
                &rec,
                "event_too_large",
                &"m".repeat(5_000),
                "dlq",
                3,
            );
            assert!(record_size(&out) <= DEAD_LETTER_MAX_BYTES);
            assert_eq!(
                out.value.as_ref().map(Vec::len),
                Some(TRUNCATED_VALUE_PREFIX_BYTES)
            );
            assert_eq!(
                out.key.as_ref().map(Vec::len),
                Some(TRUNCATED_KEY_PREFIX_BYTES)
            );
            assert_eq!(
                last_header(&out.headers, headers::ORIGINAL_VALUE_SHA256),
                Some(hex::encode(Sha256::digest(&value)).as_bytes())
            );
            assert_eq!(
                last_header(&out.headers, headers::ORIGINAL_VALUE_BYTES),
                Some(&b"1000000"[..])
            );
            let what = String::from_utf8(
                last_header(&out.headers, headers::TRUNCATED)
                    .unwrap()
                    .to_vec(),
            )
            .unwrap();
            assert!(
                what.starts_with("value: 1000000 bytes, first 65536 kept"),
                "{what}"
            );
            assert_eq!(
                last_header(&out.headers, headers::REASON),
                Some(&b"event_too_large"[..])
            );
            let kept_original = out.headers.iter().any(|(k, _)| k == "ce_id");
            let kept_huge = out.headers.iter().any(|(k, _)| k == "huge");
            assert_eq!(kept_original, headers[0].0 == "ce_id");
            assert!(!kept_huge, "headers over the limit are dropped");
        }
        // Just under the bound: kept whole, no truncation headers.
        let value = vec![b'y'; DEAD_LETTER_MAX_BYTES - 2_000];
        let rec = InputRecord {
            topic: "usage.events",
            partition: 0,
            offset: 1,
            key: None,
            value: Some(&value),
            headers: &[],
            timestamp_ms: None,
        };
        let out = dead_letter("validate", &rec, "event_too_large", "m", "dlq", 3);
        assert_eq!(out.value.as_deref(), Some(&value[..]));
        assert_eq!(last_header(&out.headers, headers::TRUNCATED), None);
    }

    #[test]
    fn attempt_counts_replays() {
        let h = vec![(headers::ATTEMPT.to_string(), Some(b"3".to_vec()))];
        assert_eq!(attempt_of(&h), 3);
        assert_eq!(attempt_of(&[]), 1);
    }
}
