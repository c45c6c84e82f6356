//! Key encodings for the stores.
//!
//! Keys are byte strings built from typed parts so that
//! * a composite key can be decoded back into its parts (tested below), and
//! * integers sort numerically in byte order (sign bit flipped, big-endian),
//!   which is what range scans over time rely on.
//!
//! Strings are length-prefixed (u32, big-endian): unambiguous for any bytes,
//! at the price of not sorting strings lexicographically across lengths, which
//! no store needs.

/// What a key's buffer starts with: most keys (an event's identity and
/// input position, a window's end, scope and ids) fit, so building one is a
/// single allocation instead of a doubling per part.
const KEY_INITIAL_CAPACITY_BYTES: usize = 128;

/// Builds a composite key.
#[derive(Debug, Default, Clone)]
pub struct KeyBuilder {
    buf: Vec<u8>,
}

impl KeyBuilder {
    /// A key starting with a one-byte prefix naming its kind.
    pub fn new(prefix: u8) -> Self {
        let mut buf = Vec::with_capacity(KEY_INITIAL_CAPACITY_BYTES);
        buf.push(prefix);
        KeyBuilder { buf }
    }

    pub fn str(self, s: &str) -> Self {
        self.bytes(s.as_bytes())
    }

    pub fn bytes(mut self, b: &[u8]) -> Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf
            .extend_from_slice(b.get(..len as usize).unwrap_or(b));
        self
    }

    pub fn i64(mut self, v: i64) -> Self {
        self.buf.extend_from_slice(&encode_i64(v));
        self
    }

    pub fn build(self) -> Vec<u8> {
        self.buf
    }
}

/// Order-preserving encoding of an i64.
pub fn encode_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn decode_i64(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// Reads the parts of a key in the order they were built.
#[derive(Debug, Clone)]
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed store key: {0}")]
pub struct KeyError(pub &'static str);

impl<'a> KeyReader<'a> {
    /// Starts after the prefix byte, checking it.
    pub fn new(key: &'a [u8], prefix: u8) -> Result<Self, KeyError> {
        match key.split_first() {
            Some((p, rest)) if *p == prefix => Ok(KeyReader { rest }),
            _ => Err(KeyError("wrong prefix")),
        }
    }

    pub fn bytes(&mut self) -> Result<&'a [u8], KeyError> {
        let Some((len, rest)) = self.rest.split_first_chunk::<4>() else {
            return Err(KeyError("truncated length"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(KeyError("truncated bytes"));
        }
        let (b, rest) = rest.split_at(len);
        self.rest = rest;
        Ok(b)
    }

    pub fn str(&mut self) -> Result<&'a str, KeyError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| KeyError("not utf-8"))
    }

    pub fn i64(&mut self) -> Result<i64, KeyError> {
        if self.rest.len() < 8 {
            return Err(KeyError("truncated i64"));
        }
        let (b, rest) = self.rest.split_at(8);
        self.rest = rest;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(decode_i64(a))
    }

    /// The key must be fully consumed.
    pub fn finish(self) -> Result<(), KeyError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(KeyError("trailing bytes"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn composite_keys_round_trip(prefix in any::<u8>(), a in ".*", n in any::<i64>(), b in proptest::collection::vec(any::<u8>(), 0..40)) {
            let key = KeyBuilder::new(prefix).str(&a).i64(n).bytes(&b).build();
            let mut r = KeyReader::new(&key, prefix).unwrap();
            prop_assert_eq!(r.str().unwrap(), a.as_str());
            prop_assert_eq!(r.i64().unwrap(), n);
            prop_assert_eq!(r.bytes().unwrap(), b.as_slice());
            r.finish().unwrap();
        }

        #[test]
        fn i64_encoding_preserves_order(x in any::<i64>(), y in any::<i64>()) {
            prop_assert_eq!(x.cmp(&y), encode_i64(x).cmp(&encode_i64(y)));
        }

        #[test]
        fn different_parts_never_collide(a in ".{0,8}", b in ".{0,8}", c in ".{0,8}", d in ".{0,8}") {
            let k1 = KeyBuilder::new(1).str(&a).str(&b).build();
            let k2 = KeyBuilder::new(1).str(&c).str(&d).build();
            prop_assert_eq!(k1 == k2, a == c && b == d);
        }
    }

    #[test]
    fn wrong_prefix_and_truncation_are_errors() {
        let key = KeyBuilder::new(7).str("abc").build();
        assert!(KeyReader::new(&key, 8).is_err());
        let mut r = KeyReader::new(&key[..key.len() - 1], 7).unwrap();
        assert!(r.str().is_err());
    }
}
