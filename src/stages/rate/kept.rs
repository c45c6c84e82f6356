//! How a rated event is kept for corrections: its validated event, and a
//! reference to the context it was rated in, stored once.
//!
//! An enriched record is about 1.2 KB, two thirds of it the context
//! (customer, subscription, windows, GL accounts, the charge model of each
//! measure) that every event of a subscription's day shares. Kept whole per
//! event it was rate's largest state and changelog traffic. Since
//! 2026-12-07:
//!
//! | key | value |
//! |---|---|
//! | `R` source, id | [`KEPT_V2`], the period end (i64, big-endian), the context's digest (32 bytes), then the record's `event` JSON as received |
//! | `C` period end (i64), context digest | the position of the event in the record (u32, big-endian), then the record as received with its `event` replaced by `null` |
//!
//! The digest is the SHA-256 of the `C` value, so events with equal
//! contexts share one key and different contexts cannot. Put back
//! together, the record is byte for byte the one rate received. An `R`
//! value written before (the whole record, JSON: it starts with `{`) still
//! reads. `C` keys are released with the kept events of their period
//! ([`expire`]): by then a correction of one of those events is refused
//! from the period end in its `R` value, before its context is looked for.

use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::SEGMENTS;
use crate::contracts::EnrichedEvent;
use crate::runtime::{Ctx, StageError};
use crate::store::keys::{decode_i64, encode_i64, KeyBuilder};

/// Key prefix of the shared contexts (see the module docs of `rate`).
const CONTEXT_PREFIX: u8 = b'C';
/// First byte of an `R` value in this form (a JSON record starts with `{`).
pub const KEPT_V2: u8 = 2;
const DIGEST_BYTES: usize = 32;
const I64_BYTES: usize = 8;
const U32_BYTES: usize = 4;
/// `R` value bytes before the event: version, period end, digest.
const HEADER_BYTES: usize = 1 + I64_BYTES + DIGEST_BYTES;
/// What stands in for the event in a stored context.
const EVENT_SLOT: &[u8] = b"null";
/// Contexts released per punctuation.
const EXPIRE_BATCH_CONTEXTS: usize = super::retract::EXPIRE_BATCH_EVENTS;

fn fatal(what: &str, detail: impl std::fmt::Display) -> StageError {
    StageError::Fatal(format!("kept event: {what}: {detail}"))
}

fn context_key(period_end_ms: i64, digest: &[u8]) -> Vec<u8> {
    KeyBuilder::new(CONTEXT_PREFIX)
        .i64(period_end_ms)
        .bytes(digest)
        .build()
}

/// How enrich starts a record (fields in declaration order): the event
/// is found by reading it alone, not the whole record.
const EVENT_FIRST: &[u8] = br#"{"event":"#;

/// An enriched record's bytes around its `event` value: before, the
/// event, after.
type Split<'a> = (&'a [u8], &'a [u8], &'a [u8]);

/// `record` split around its `event` value.
fn split_event(record: &[u8]) -> Result<Split<'_>, StageError> {
    #[derive(Deserialize)]
    struct Slot<'a> {
        #[serde(borrow)]
        event: &'a RawValue,
    }
    let first = record.strip_prefix(EVENT_FIRST).and_then(|rest| {
        let mut de = serde_json::Deserializer::from_slice(rest);
        <&RawValue>::deserialize(&mut de).ok()
    });
    let event = match first {
        Some(event) => event,
        None => {
            let slot: Slot<'_> =
                serde_json::from_slice(record).map_err(|e| fatal("re-reading", e))?;
            slot.event
        }
    };
    let event = event.get().as_bytes();
    // The raw value borrows from `record`: its offset is the distance
    // between the two pointers, checked below.
    let start = (event.as_ptr() as usize).wrapping_sub(record.as_ptr() as usize);
    let end = start.saturating_add(event.len());
    match (
        record.get(..start),
        record.get(start..end),
        record.get(end..),
    ) {
        (Some(before), Some(found), Some(after)) if found == event => Ok((before, event, after)),
        _ => Err(fatal("re-reading", "the event is not a part of the record")),
    }
}

/// Keeps the rated event whose enriched record is `record` (as received)
/// under `r_key`, until its period (ending at `period_end_ms`) is released.
pub fn keep(
    ctx: &mut Ctx<'_>,
    r_key: Vec<u8>,
    record: &[u8],
    period_end_ms: i64,
) -> Result<(), StageError> {
    let (before, event, after) = split_event(record)?;
    let position = u32::try_from(before.len())
        .map_err(|e| fatal("event position", e))?
        .to_be_bytes();
    let parts = [&position[..], before, EVENT_SLOT, after];
    // Hashed in parts: the value is only assembled when it is new.
    let digest: [u8; DIGEST_BYTES] = parts
        .iter()
        .fold(Sha256::new(), |h, part| h.chain_update(part))
        .finalize()
        .into();
    let c_key = context_key(period_end_ms, &digest);
    if ctx.stores.get(SEGMENTS, &c_key)?.is_none() {
        ctx.stores.put(SEGMENTS, c_key, parts.concat());
    }
    let mut value = Vec::with_capacity(HEADER_BYTES + event.len());
    value.push(KEPT_V2);
    value.extend_from_slice(&encode_i64(period_end_ms));
    value.extend_from_slice(&digest);
    value.extend_from_slice(event);
    ctx.stores.put(SEGMENTS, r_key, value);
    Ok(())
}

/// The enriched record of a kept event (an `R` value), or `None` when its
/// period ended before `cutoff_ms` (its state is being released).
pub fn load(
    ctx: &Ctx<'_>,
    value: &[u8],
    cutoff_ms: i64,
) -> Result<Option<EnrichedEvent>, StageError> {
    if value.first() != Some(&KEPT_V2) {
        // The whole record, as kept before the contexts were shared.
        let e = EnrichedEvent::from_json_slice(value).map_err(|e| fatal("corrupt", e))?;
        let live = e.billing_period.end.timestamp_millis() >= cutoff_ms;
        return Ok(live.then_some(e));
    }
    let (end, digest) = value
        .get(1..HEADER_BYTES)
        .and_then(|h| h.split_first_chunk::<I64_BYTES>())
        .ok_or_else(|| fatal("corrupt", "too short"))?;
    let period_end_ms = decode_i64(*end);
    if period_end_ms < cutoff_ms {
        return Ok(None);
    }
    let event = value.get(HEADER_BYTES..).unwrap_or_default();
    let context = ctx
        .stores
        .get(SEGMENTS, &context_key(period_end_ms, digest))?
        .ok_or_else(|| fatal("its context is not stored", hex::encode(digest)))?;
    let record = reassemble(&context, event)?;
    EnrichedEvent::from_json_slice(&record)
        .map(Some)
        .map_err(|e| fatal("corrupt", e))
}

/// The record a context (a `C` value) and an event make.
fn reassemble(context: &[u8], event: &[u8]) -> Result<Vec<u8>, StageError> {
    let (position, rest) = context.split_at_checked(U32_BYTES).unwrap_or_default();
    let position: [u8; U32_BYTES] = position.try_into().map_err(|e| fatal("context", e))?;
    let position = usize::try_from(u32::from_be_bytes(position)).unwrap_or(usize::MAX);
    let (before, slot_and_after) = rest
        .split_at_checked(position)
        .ok_or_else(|| fatal("context", "the event's position is past its end"))?;
    let after = slot_and_after
        .strip_prefix(EVENT_SLOT)
        .ok_or_else(|| fatal("context", "no event slot at its position"))?;
    let mut record = Vec::with_capacity(before.len() + event.len() + after.len());
    record.extend_from_slice(before);
    record.extend_from_slice(event);
    record.extend_from_slice(after);
    Ok(record)
}

/// Releases the contexts of periods that ended before `cutoff_ms`, a
/// bounded batch.
pub fn expire(ctx: &mut Ctx<'_>, cutoff_ms: i64) -> Result<(), StageError> {
    let to = KeyBuilder::new(CONTEXT_PREFIX).i64(cutoff_ms).build();
    let due = ctx
        .stores
        .scan(SEGMENTS, &[CONTEXT_PREFIX], &to, EXPIRE_BATCH_CONTEXTS)?;
    for (key, _) in due {
        ctx.stores.delete(SEGMENTS, key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_context_and_its_event_reassemble_the_record_byte_for_byte() {
        let record =
            br#"{"event":{"id":"e-1","data":{"event":null}},"customer":{"id":"c"},"x":"null"}"#;
        let (before, event, after) = split_event(record).unwrap();
        assert_eq!(event, br#"{"id":"e-1","data":{"event":null}}"#);
        let mut context = u32::try_from(before.len()).unwrap().to_be_bytes().to_vec();
        context.extend_from_slice(before);
        context.extend_from_slice(EVENT_SLOT);
        context.extend_from_slice(after);
        assert_eq!(reassemble(&context, event).unwrap(), record.to_vec());
        // Wherever the event is in the record.
        let later = br#"{"customer":{"id":"c"},"event":{"id":"e-2"}}"#;
        assert_eq!(split_event(later).unwrap().1, br#"{"id":"e-2"}"#);
        // A context whose slot is not where it says is refused, not spliced.
        context[3] += 1;
        assert!(reassemble(&context, b"{}").is_err());
    }

    #[test]
    fn a_cut_kept_value_is_an_error_not_a_panic() {
        let mut h = crate::stages::rate::tests::harness();
        let cut = [KEPT_V2; HEADER_BYTES - 1];
        h.with_ctx(|_, ctx| {
            for len in [1, 5, cut.len()] {
                assert!(load(ctx, &cut[..len], 0).is_err(), "{len} bytes");
            }
        });
    }
}
