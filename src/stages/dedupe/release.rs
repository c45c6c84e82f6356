//! Releasing verdicts in `seq` order, on the claim's origin partition.
//!
//! The `release` store of each partition holds
//! * `N` -> the seq of the next verdict to release (u64, big-endian; absent
//!   = 0): every verdict below it has been released;
//! * `B` seq (u64, big-endian) -> a verdict that arrived before its turn
//!   (its record bytes), released once every verdict before it was.
//!
//! Verdicts of one origin partition come from every dedupe partition, so
//! they arrive interleaved; validate numbered their claims without gaps, so
//! the turn of each is known. Early ones wait in the store (changelogged,
//! exactly once like every store); a gap closes as soon as the verdict it
//! waits for commits on its dedupe partition.

use serde_json::value::RawValue;

use super::{head, reason, reject, DedupeProcessor, RELEASE};
use crate::contracts::GateRecord;
use crate::runtime::{Ctx, InputRecord, Output, StageError};

const NEXT_KEY: &[u8] = b"N";
const EARLY_PREFIX: u8 = b'B';
/// Verdicts released by one call (one input record or one punctuation):
/// bounds the outputs of a transaction; the rest go at the next call.
const RELEASED_PER_CALL_MAX: usize = 10_000;

fn early_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(EARLY_PREFIX);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn next_seq(ctx: &Ctx<'_>) -> Result<u64, StageError> {
    Ok(ctx.stores.get_counter(RELEASE, NEXT_KEY)?)
}

fn set_next_seq(ctx: &mut Ctx<'_>, next: u64) {
    ctx.stores.put_counter(RELEASE, NEXT_KEY, next);
}

/// A verdict on partition `rec.partition`: released now if it is its turn
/// (then every early one it was holding back), kept for later if not.
pub(super) fn receive(
    p: &DedupeProcessor,
    rec: &InputRecord<'_>,
    verdict: GateRecord,
    value: &[u8],
    ctx: &mut Ctx<'_>,
) -> Result<(), StageError> {
    if verdict.origin_partition != rec.partition {
        let message = format!(
            "a verdict for partition {} on partition {}",
            verdict.origin_partition, rec.partition
        );
        return Err(reject(reason::MISROUTED_VERDICT, message));
    }
    let first = match (verdict.first_copy, &verdict.event) {
        (Some(true), Some(_)) => true,
        (Some(false), _) => false,
        _ => {
            let message = "a verdict needs first_copy, and its event when it is the first";
            return Err(reject(reason::MALFORMED_IDENTIFIED_EVENT, message));
        }
    };
    let next = next_seq(ctx)?;
    match verdict.seq.cmp(&next) {
        std::cmp::Ordering::Less => Err(reject(
            reason::STALE_VERDICT,
            format!("seq {} was released already (next is {next})", verdict.seq),
        )),
        std::cmp::Ordering::Greater => {
            ctx.stores
                .put(RELEASE, early_key(verdict.seq), value.to_vec());
            Ok(())
        }
        std::cmp::Ordering::Equal => {
            if first {
                emit(p, verdict.event.as_deref(), ctx)?;
            }
            set_next_seq(ctx, next.saturating_add(1));
            drain(p, ctx)
        }
    }
}

/// Releases the early verdicts whose turn has come, at most
/// [`RELEASED_PER_CALL_MAX`].
pub(super) fn drain(p: &DedupeProcessor, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
    let start = next_seq(ctx)?;
    let mut next = start;
    for _ in 0..RELEASED_PER_CALL_MAX {
        let key = early_key(next);
        let Some(bytes) = ctx.stores.get(RELEASE, &key)? else {
            break;
        };
        let verdict = GateRecord::from_json_slice(&bytes)
            .map_err(|e| StageError::Fatal(format!("release store, seq {next}: {e}")))?;
        ctx.stores.delete(RELEASE, key);
        if verdict.first_copy == Some(true) {
            emit(p, verdict.event.as_deref(), ctx)?;
        }
        next = next.saturating_add(1);
    }
    if next != start {
        set_next_seq(ctx, next);
    }
    Ok(())
}

/// A first copy on to `usage.validated`, keyed by its subject, its bytes as
/// validate wrote them.
fn emit(
    p: &DedupeProcessor,
    event: Option<&RawValue>,
    ctx: &mut Ctx<'_>,
) -> Result<(), StageError> {
    let event = event.ok_or_else(|| {
        reject(
            reason::MALFORMED_IDENTIFIED_EVENT,
            "a first copy's verdict without its event",
        )
    })?;
    let h = head(event)?;
    ctx.emit(Output {
        topic: p.validated_topic.clone(),
        key: Some(h.subject.into_bytes()),
        value: Some(event.get().as_bytes().to_vec()),
        headers: Vec::new(),
        partition: None,
    });
    Ok(())
}

/// For the stage's tests.
#[cfg(test)]
pub(super) fn tests_released_per_call_max() -> usize {
    RELEASED_PER_CALL_MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_keys_sort_by_seq() {
        assert!(early_key(1) < early_key(2));
        assert!(early_key(255) < early_key(256));
        assert!(early_key(u64::MAX - 1) < early_key(u64::MAX));
        assert_ne!(early_key(0).as_slice(), NEXT_KEY);
    }
}
