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

    /// Headers that describe a failure; replay strips them.
    pub const DIAGNOSTIC: &[&str] = &[
        STAGE,
        REASON,
        MESSAGE,
        ORIGINAL_TOPIC,
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        ORIGINAL_TIMESTAMP,
    ];
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

/// Builds the dead letter of `rec`.
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
    let mut h: Vec<(String, Option<Vec<u8>>)> = rec.headers.to_vec();
    let mut add = |k: &str, v: String| h.push((k.to_string(), Some(v.into_bytes())));
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
    Output {
        topic: dlq_topic.to_string(),
        key: rec.key.map(<[u8]>::to_vec),
        value: rec.value.map(<[u8]>::to_vec),
        headers: h,
        // Same partition number as the input (modulo the DLQ's size): keeps a
        // partition's dead letters in order and needs no key.
        partition: Some(rec.partition.rem_euclid(dlq_partitions.max(1))),
        // Stamped when dead-lettered (append time); the original record's
        // timestamp is in `meterline.original.timestamp`.
        timestamp_ms: None,
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
        // Stamped when written, the original time kept in a header.
        assert_eq!(out.timestamp_ms, None);
        assert_eq!(
            last_header(&out.headers, headers::ORIGINAL_TIMESTAMP),
            Some(&b"1700000000000"[..])
        );
    }

    #[test]
    fn attempt_counts_replays() {
        let h = vec![(headers::ATTEMPT.to_string(), Some(b"3".to_vec()))];
        assert_eq!(attempt_of(&h), 3);
        assert_eq!(attempt_of(&[]), 1);
    }
}
