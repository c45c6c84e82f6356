//! The parked store: its value codec, its keys and the operations that keep
//! entries, the age index and the statistics in step (layout in the module
//! docs of [`super`]).

use serde::{Deserialize, Serialize};

use crate::contracts::ValidatedEvent;
use crate::runtime::StageError;
use crate::store::keys::{KeyBuilder, KeyReader};
use crate::store::PartitionStores;

use super::stats::{AtRisk, ParkedStats};
use super::PARKED;

/// Key prefixes of the parked store (see the module docs).
const ENTRY_PREFIX: u8 = b'P';
const AGE_INDEX_PREFIX: u8 = b'A';
const STATS_KEY: &[u8] = b"S";
/// First byte of a parked value: the encoding version.
pub const PARKED_VALUE_FORMAT: u8 = 1;

/// Why a parked store entry cannot be read: a bug or corrupt state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParkedStoreError {
    #[error("parked entry: unknown value format {0}")]
    Format(u8),
    #[error("parked entry: truncated value")]
    Truncated,
    #[error("parked entry: {0}")]
    Meta(String),
    #[error("parked entry: {0}")]
    Key(#[from] crate::store::keys::KeyError),
    #[error("parked statistics: {0}")]
    Stats(String),
}

impl ParkedStoreError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            ParkedStoreError::Format(_) => super::reason::PARKED_FORMAT_UNKNOWN,
            ParkedStoreError::Truncated => super::reason::PARKED_VALUE_TRUNCATED,
            ParkedStoreError::Meta(_) => super::reason::PARKED_META_INVALID,
            ParkedStoreError::Key(_) => super::reason::PARKED_KEY_INVALID,
            ParkedStoreError::Stats(_) => super::reason::PARKED_STATS_INVALID,
        }
    }
}

impl From<ParkedStoreError> for StageError {
    fn from(e: ParkedStoreError) -> Self {
        StageError::Fatal(format!("{} ({})", e, e.code()))
    }
}

/// What the parked store keeps beside the event bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ParkedMeta {
    /// The current park code ([`ParkReason::code`]).
    pub(super) reason: String,
    pub(super) message: String,
    /// Wall-clock time the event was first parked (ms since the epoch).
    pub(super) first_parked_ms: i64,
    /// Timestamp of the input record. Kept in the store's format for what is
    /// already parked; no longer read (every output is stamped when it is
    /// written, append time).
    pub(super) input_timestamp_ms: Option<i64>,
    #[serde(default)]
    pub(super) at_risk: Option<AtRisk>,
}

/// One parked event: meta plus the validated event's bytes as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ParkedEntry {
    pub(super) meta: ParkedMeta,
    pub(super) event: Vec<u8>,
}

impl ParkedEntry {
    pub(super) fn encode(&self) -> Result<Vec<u8>, StageError> {
        let meta = serde_json::to_vec(&self.meta)
            .map_err(|e| StageError::Fatal(format!("encoding a parked entry: {e}")))?;
        let len = u32::try_from(meta.len())
            .map_err(|_| StageError::Fatal("parked entry meta over 4 GiB".into()))?;
        let mut out = Vec::with_capacity(5 + meta.len() + self.event.len());
        out.push(PARKED_VALUE_FORMAT);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.event);
        Ok(out)
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<ParkedEntry, ParkedStoreError> {
        let (format, rest) = bytes.split_first().ok_or(ParkedStoreError::Truncated)?;
        if *format != PARKED_VALUE_FORMAT {
            return Err(ParkedStoreError::Format(*format));
        }
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(ParkedStoreError::Truncated)?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(ParkedStoreError::Truncated);
        }
        let (meta, event) = rest.split_at(len);
        let meta: ParkedMeta =
            serde_json::from_slice(meta).map_err(|e| ParkedStoreError::Meta(e.to_string()))?;
        Ok(ParkedEntry {
            meta,
            event: event.to_vec(),
        })
    }
}

/// A parked event as a record of the `parked` store's changelog shows it:
/// what `meterline api` follows for the console's exceptions page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedSummary {
    pub customer: String,
    pub source: String,
    pub id: String,
    /// The park code.
    pub reason: String,
    pub message: String,
    pub first_parked_ms: i64,
    /// The estimate of what the event would bill: (currency, amount, legal entity).
    pub at_risk: Option<(String, rust_decimal::Decimal, String)>,
}

/// The parked event a changelog record of the `parked` store holds; `None`
/// for the store's other keys (age index, statistics) and unreadable values.
pub fn parked_summary(key: &[u8], value: &[u8]) -> Option<ParkedSummary> {
    let (customer, source, id) = parse_entry_key(key).ok()?;
    let meta = ParkedEntry::decode(value).ok()?.meta;
    Some(ParkedSummary {
        customer,
        source,
        id,
        reason: meta.reason,
        message: meta.message,
        first_parked_ms: meta.first_parked_ms,
        at_risk: meta
            .at_risk
            .map(|r| (r.currency, r.amount.0, r.legal_entity)),
    })
}

/// Whether a key of the `parked` store is a parked event's entry.
pub fn is_entry_key(key: &[u8]) -> bool {
    parse_entry_key(key).is_ok()
}

// ---- keys --------------------------------------------------------------------

pub(super) fn entry_key(customer: &str, source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(ENTRY_PREFIX)
        .str(customer)
        .str(source)
        .str(id)
        .build()
}

/// (customer, source, id) of an entry key.
pub(super) fn parse_entry_key(key: &[u8]) -> Result<(String, String, String), ParkedStoreError> {
    let mut r = KeyReader::new(key, ENTRY_PREFIX)?;
    let customer = r.str()?.to_owned();
    let source = r.str()?.to_owned();
    let id = r.str()?.to_owned();
    r.finish()?;
    Ok((customer, source, id))
}

pub(super) fn age_key(reason: &str, first_parked_ms: i64, ids: &EventIds) -> Vec<u8> {
    KeyBuilder::new(AGE_INDEX_PREFIX)
        .str(reason)
        .i64(first_parked_ms)
        .str(&ids.customer)
        .str(&ids.source)
        .str(&ids.id)
        .build()
}

/// The smallest key greater than every key starting with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xFF (never the case here: every prefix starts with a letter).
    vec![u8::MAX; prefix.len() + 1]
}

/// The smallest key greater than `key`.
pub(super) fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The range of one customer's parked entries.
pub(super) fn customer_range(customer: &str) -> (Vec<u8>, Vec<u8>) {
    let from = KeyBuilder::new(ENTRY_PREFIX).str(customer).build();
    let to = prefix_end(&from);
    (from, to)
}

pub(super) fn all_entries_range() -> (Vec<u8>, Vec<u8>) {
    (vec![ENTRY_PREFIX], prefix_end(&[ENTRY_PREFIX]))
}

/// The identity of a parked event, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EventIds {
    pub(super) customer: String,
    pub(super) source: String,
    pub(super) id: String,
}

impl EventIds {
    pub(super) fn of(event: &ValidatedEvent) -> Self {
        EventIds {
            customer: event.subject.clone(),
            source: event.source.clone(),
            id: event.id.clone(),
        }
    }

    pub(super) fn entry_key(&self) -> Vec<u8> {
        entry_key(&self.customer, &self.source, &self.id)
    }
}

// ---- store operations, each keeping entries, index and statistics in step ----

pub(super) fn read_stats(stores: &PartitionStores) -> Result<ParkedStats, StageError> {
    match stores.get(PARKED, STATS_KEY)? {
        None => Ok(ParkedStats::default()),
        Some(b) => {
            serde_json::from_slice(&b).map_err(|e| ParkedStoreError::Stats(e.to_string()).into())
        }
    }
}

fn write_stats(stores: &mut PartitionStores, stats: &ParkedStats) -> Result<(), StageError> {
    let bytes = serde_json::to_vec(stats)
        .map_err(|e| StageError::Fatal(format!("encoding parked statistics: {e}")))?;
    stores.put(PARKED, STATS_KEY.to_vec(), bytes);
    Ok(())
}

/// Parks a new entry, or replaces `old` with `entry`.
pub(super) fn store_parked(
    stores: &mut PartitionStores,
    ids: &EventIds,
    old: Option<&ParkedMeta>,
    entry: &ParkedEntry,
) -> Result<(), StageError> {
    let mut stats = read_stats(stores)?;
    if let Some(old) = old {
        stores.delete(PARKED, age_key(&old.reason, old.first_parked_ms, ids));
        stats.remove(old);
    }
    stores.put(PARKED, ids.entry_key(), entry.encode()?);
    stores.put(
        PARKED,
        age_key(&entry.meta.reason, entry.meta.first_parked_ms, ids),
        Vec::new(),
    );
    stats.add(&entry.meta);
    write_stats(stores, &stats)
}

/// Removes a parked entry (it resolved).
pub(super) fn remove_parked(
    stores: &mut PartitionStores,
    ids: &EventIds,
    meta: &ParkedMeta,
) -> Result<(), StageError> {
    let mut stats = read_stats(stores)?;
    stores.delete(PARKED, ids.entry_key());
    stores.delete(PARKED, age_key(&meta.reason, meta.first_parked_ms, ids));
    stats.remove(meta);
    write_stats(stores, &stats)
}

/// First-parked time of the oldest event parked with `reason`.
pub(super) fn oldest_parked_ms(
    stores: &PartitionStores,
    reason: &str,
) -> Result<Option<i64>, StageError> {
    let from = KeyBuilder::new(AGE_INDEX_PREFIX).str(reason).build();
    let to = prefix_end(&from);
    let Some((k, _)) = stores.scan(PARKED, &from, &to, 1)?.into_iter().next() else {
        return Ok(None);
    };
    let mut r = KeyReader::new(&k, AGE_INDEX_PREFIX).map_err(ParkedStoreError::from)?;
    r.str().map_err(ParkedStoreError::from)?;
    Ok(Some(r.i64().map_err(ParkedStoreError::from)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::enrich::stats::DecimalStr;
    use chrono::DateTime;
    use rust_decimal_macros::dec;

    #[test]
    fn parked_values_round_trip_and_refuse_garbage() {
        let entry = ParkedEntry {
            meta: ParkedMeta {
                reason: "unknown_plan".into(),
                message: "m".into(),
                first_parked_ms: 7,
                input_timestamp_ms: None,
                at_risk: Some(AtRisk {
                    currency: "EUR".into(),
                    amount: DecimalStr(dec!(1.50)),
                    legal_entity: "ml-eu".into(),
                }),
            },
            event: b"{\"x\":1}".to_vec(),
        };
        let bytes = entry.encode().unwrap();
        assert_eq!(bytes[0], PARKED_VALUE_FORMAT);
        assert_eq!(ParkedEntry::decode(&bytes).unwrap(), entry);
        assert_eq!(
            ParkedEntry::decode(&bytes[..3]).unwrap_err().code(),
            "parked_value_truncated"
        );
        assert_eq!(
            ParkedEntry::decode(&[9, 0, 0, 0, 0]).unwrap_err().code(),
            "parked_format_unknown"
        );
        assert_eq!(
            ParkedEntry::decode(&[]).unwrap_err().code(),
            "parked_value_truncated"
        );
        let key = entry_key("c1", "src", "e1");
        let seen = parked_summary(&key, &bytes).unwrap();
        assert_eq!(
            (
                seen.customer.as_str(),
                seen.reason.as_str(),
                seen.first_parked_ms
            ),
            ("c1", "unknown_plan", 7)
        );
        assert_eq!(
            seen.at_risk,
            Some(("EUR".into(), dec!(1.50), "ml-eu".into()))
        );
        assert!(is_entry_key(&key));
        assert!(parked_summary(b"S", &bytes).is_none(), "the statistics key");
        assert!(parked_summary(&key, &[9]).is_none());
    }

    #[test]
    fn keys_sort_per_customer_and_ranges_are_exact() {
        let (from, to) = customer_range("c1");
        for (customer, inside) in [("c1", true), ("c10", false), ("c", false), ("c2", false)] {
            let k = entry_key(customer, "s", "i");
            assert_eq!(k >= from && k < to, inside, "{customer}");
        }
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
        assert_eq!(prefix_end(b"P"), b"Q".to_vec());
        let k = entry_key("c", "s", "i");
        assert!(successor(&k) > k);
        assert_eq!(
            parse_entry_key(&k).unwrap(),
            ("c".into(), "s".into(), "i".into())
        );
        let t = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let ids = EventIds {
            customer: "c".into(),
            source: "s".into(),
            id: "i".into(),
        };
        let older = age_key("r", t.timestamp_millis(), &ids);
        let newer = age_key("r", t.timestamp_millis() + 1, &ids);
        assert!(older < newer);
    }
}
