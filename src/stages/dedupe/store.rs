//! The dedupe store: which (`source`, `id`) pairs were accepted, and when.
//!
//! Two kinds of key, both in store 0 (`dedupe`) of the dedupe stage:
//! * `E | source | id` -> event time (ms, i64 big-endian) of the first valid copy;
//! * `X | event time | source | id` -> empty: the expiry index, in time order,
//!   so entries older than the horizon are found by one range scan and removed.

use crate::store::keys::{encode_i64, KeyBuilder, KeyError, KeyReader};

const ENTRY_PREFIX: u8 = b'E';
const EXPIRY_PREFIX: u8 = b'X';

pub fn entry_key(source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(ENTRY_PREFIX).str(source).str(id).build()
}

pub fn expiry_key(time_ms: i64, source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(EXPIRY_PREFIX)
        .i64(time_ms)
        .str(source)
        .str(id)
        .build()
}

/// The expiry-index range holding every entry with time < `cutoff_ms`.
pub fn expired_range(cutoff_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let mut from = vec![EXPIRY_PREFIX];
    from.extend_from_slice(&encode_i64(i64::MIN));
    let mut to = vec![EXPIRY_PREFIX];
    to.extend_from_slice(&encode_i64(cutoff_ms));
    (from, to)
}

/// (time, source, id) of an expiry key.
pub fn parse_expiry_key(key: &[u8]) -> Result<(i64, String, String), KeyError> {
    let mut r = KeyReader::new(key, EXPIRY_PREFIX)?;
    let t = r.i64()?;
    let s = r.str()?.to_string();
    let i = r.str()?.to_string();
    r.finish()?;
    Ok((t, s, i))
}

pub fn encode_time(time_ms: i64) -> Vec<u8> {
    time_ms.to_be_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn expiry_keys_round_trip_and_sort_by_time(t1 in any::<i64>(), t2 in any::<i64>(), s in ".{0,12}", i in ".{0,12}") {
            let k1 = expiry_key(t1, &s, &i);
            prop_assert_eq!(parse_expiry_key(&k1).unwrap(), (t1, s.clone(), i.clone()));
            let k2 = expiry_key(t2, &s, &i);
            if t1 < t2 { prop_assert!(k1 < k2); }
            let (from, to) = expired_range(t2);
            prop_assert_eq!(k1.as_slice() >= from.as_slice() && k1.as_slice() < to.as_slice(), t1 < t2);
        }
    }

    #[test]
    fn entry_keys_are_distinct_per_pair() {
        assert_ne!(entry_key("ab", "c"), entry_key("a", "bc"));
        assert_ne!(entry_key("a", "b"), expiry_key(0, "a", "b"));
    }
}
