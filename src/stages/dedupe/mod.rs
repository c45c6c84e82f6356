//! The dedupe stage: every (`source`, `id`) is accepted once, across the
//! whole topic, and the accepted events go on in the order they had on
//! `usage.events`.
//!
//! It reads `usage.identified`, which carries two kinds of record
//! ([`GateRecord`]):
//!
//! * a **claim**, written by validate and keyed by the event's identity
//!   ([`identity_key`]): every copy of an event is on one partition, so one
//!   partition-local store ([`store`]) sees them all, whatever subject or
//!   `usage.events` partition each came with. The first copy wins (even if a
//!   later copy's payload or subject differs, DESIGN.md); a later one is
//!   counted (`meterline_validate_duplicates_total`) and dropped. Either way
//!   a **verdict** goes back to `usage.identified`, to the partition the
//!   claim names as its origin.
//! * a **verdict**, on its origin partition: released in the claim's `seq`
//!   order ([`release`]), so first copies reach `usage.validated` (keyed by
//!   subject, bytes as validate wrote them) in exactly the order of their
//!   `usage.events` partition. Without this, copies decided on different
//!   partitions would interleave by timing, and which events are late, or
//!   which day a tier crossing falls on, would change from run to run.
//!
//! Validation ran before: a rejected copy never got here, so it never
//! claimed the id. The dedupe store keeps each accepted (`source`, `id`) with
//! the event time of its first copy, and drops entries older than
//! `validate.dedupe_horizon_days` behind the partition's stream time (the
//! greatest event time seen), so it does not grow without bound. The config
//! refuses a horizon shorter than the window of event times validate
//! accepts, so an expired entry can never let a duplicate through.

pub mod reason;
mod release;
mod store;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prometheus::IntCounter;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;
use crate::contracts::{identity_key, GateKind, GateRecord};
use crate::lineage::{self, Count};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::store::StoreId;
use crate::topology::{self, StageSpec};

/// The stores' indexes in the stage's store list.
const DEDUPE: StoreId = 0;
const RELEASE: StoreId = 1;
const LINEAGE: StoreId = 2;
const COUNTERS: StoreId = 3;
/// Expired dedupe entries removed per partition per punctuation (bounds the
/// size of one transaction; the rest go in the next ones).
const PURGE_BATCH_MAX: usize = 5_000;
const MS_PER_DAY: i64 = 86_400_000;

pub struct DedupeProcessor {
    horizon_ms: i64,
    identified_topic: String,
    validated_topic: String,
    /// Partitions of `usage.identified` (0 until the runtime says).
    partitions: i32,
    /// Greatest event time accepted per partition (drives expiry).
    stream_time_ms: BTreeMap<i32, i64>,
    duplicates: IntCounter,
}

impl DedupeProcessor {
    pub fn new(config: &Config) -> Self {
        DedupeProcessor {
            horizon_ms: i64::from(config.validate.dedupe_horizon_days) * MS_PER_DAY,
            identified_topic: config.topic(topology::names::IDENTIFIED),
            validated_topic: config.topic(topology::names::VALIDATED),
            partitions: 0,
            stream_time_ms: BTreeMap::new(),
            // The name predates the dedupe stage (validate dropped
            // duplicates): kept, so alerts and dashboards keep working.
            duplicates: crate::metrics::counter(
                "meterline_validate_duplicates_total",
                "Valid events dropped because their (source, id) was already accepted.",
            ),
        }
    }
}

/// This stage's entry in the stage table (a constant index: out of range
/// would not compile).
#[allow(clippy::indexing_slicing)]
const SPEC: &StageSpec = &topology::STAGES[1];

fn reject(code: &'static str, message: impl Into<String>) -> StageError {
    StageError::Reject {
        code,
        message: message.into(),
    }
}

/// What dedupe reads of a validated event.
#[derive(Deserialize)]
struct Head {
    source: String,
    id: String,
    subject: String,
    #[serde(with = "crate::contracts::rfc3339_utc")]
    time: DateTime<Utc>,
}

fn head(event: &RawValue) -> Result<Head, StageError> {
    serde_json::from_str(event.get())
        .map_err(|e| reject(reason::MALFORMED_IDENTIFIED_EVENT, format!("event: {e}")))
}

impl Processor for DedupeProcessor {
    fn spec(&self) -> &'static StageSpec {
        SPEC
    }

    fn on_input_partitions(&mut self, count: i32) {
        self.partitions = count;
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let value = rec.value.ok_or_else(|| {
            reject(
                reason::MALFORMED_IDENTIFIED_EVENT,
                "the record has no value",
            )
        })?;
        let record = GateRecord::from_json_slice(value)
            .map_err(|e| reject(reason::MALFORMED_IDENTIFIED_EVENT, e.to_string()))?;
        match record.kind {
            GateKind::Claim => self.decide(rec, record, ctx),
            GateKind::Verdict => release::receive(self, rec, record, value, ctx),
        }
    }

    fn punctuate(&mut self, ctx: &mut Ctx<'_>, _now_ms: i64) -> Result<(), StageError> {
        release::drain(self, ctx)?;
        self.purge(ctx)
    }

    fn on_rollback(&mut self) {
        // Stream time only moves expiry; a value from aborted records is
        // harmless (it will be reached again), so it is kept.
    }

    fn on_revoked(&mut self, partition: i32) {
        self.stream_time_ms.remove(&partition);
    }
}

impl DedupeProcessor {
    /// A claim: first copy or duplicate, and the verdict to its origin.
    fn decide(
        &mut self,
        rec: &InputRecord<'_>,
        claim: GateRecord,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), StageError> {
        let event = claim.event.ok_or_else(|| {
            reject(
                reason::MALFORMED_IDENTIFIED_EVENT,
                "a claim without its event",
            )
        })?;
        let h = head(&event)?;
        let key = identity_key(&h.source, &h.id);
        if rec.key != Some(key.as_slice()) {
            let shown = rec.key.map(String::from_utf8_lossy);
            let message = format!("key {shown:?}, identity [{:?}, {:?}]", h.source, h.id);
            return Err(reject(reason::NOT_KEYED_BY_IDENTITY, message));
        }
        let origin = claim.origin_partition;
        if origin < 0 || (self.partitions > 0 && origin >= self.partitions) {
            let message = format!("origin partition {origin} of {}", self.partitions);
            return Err(reject(reason::INVALID_ORIGIN_PARTITION, message));
        }
        let first = self.first_copy(rec, &h, ctx)?;
        let verdict = GateRecord {
            kind: GateKind::Verdict,
            origin_partition: origin,
            seq: claim.seq,
            first_copy: Some(first),
            event: first.then_some(event),
        };
        let value = verdict
            .to_json_bytes()
            .map_err(|e| StageError::Fatal(format!("serializing a verdict: {e}")))?;
        ctx.emit(Output {
            topic: self.identified_topic.clone(),
            key: Some(key),
            value: Some(value),
            headers: Vec::new(),
            partition: Some(origin),
        });
        Ok(())
    }

    /// Whether the claimed event is the first copy of its identity (then
    /// it is remembered); counts and records lineage either way.
    fn first_copy(
        &mut self,
        rec: &InputRecord<'_>,
        h: &Head,
        ctx: &mut Ctx<'_>,
    ) -> Result<bool, StageError> {
        let entry = store::entry_key(&h.source, &h.id);
        let day = lineage::day_of(h.time);
        let first = ctx.stores.get(DEDUPE, &entry)?.is_none();
        let (outcome, count) = if first {
            ("first_copy", Count::Passed)
        } else {
            crate::internal_events::DuplicateDropped {
                source: &h.source,
                id: &h.id,
                partition: rec.partition,
                offset: rec.offset,
            }
            .emit(&self.duplicates);
            ("duplicate", Count::Released)
        };
        lineage::count(ctx, COUNTERS, &day, [count])?;
        #[derive(serde::Serialize)]
        struct Detail<'a> {
            subject: &'a str,
        }
        let step = lineage::StepOut {
            outcome,
            partition: rec.partition,
            offset: rec.offset,
            detail: &Detail {
                subject: &h.subject,
            },
        };
        lineage::record_step(ctx, LINEAGE, &h.source, &h.id, step, ctx.now_ms)?;
        if first {
            let time_ms = h.time.timestamp_millis();
            ctx.stores.put(DEDUPE, entry, store::encode_time(time_ms));
            let expiry = store::expiry_key(time_ms, &h.source, &h.id);
            ctx.stores.put(DEDUPE, expiry, Vec::new());
            let st = self.stream_time_ms.entry(rec.partition).or_insert(i64::MIN);
            *st = (*st).max(time_ms);
        }
        Ok(first)
    }

    /// Drops dedupe entries older than the horizon, a bounded batch.
    fn purge(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let Some(&st) = self.stream_time_ms.get(&ctx.partition) else {
            return Ok(());
        };
        let cutoff = st.saturating_sub(self.horizon_ms);
        let (from, to) = store::expired_range(cutoff);
        for (k, _) in ctx.stores.scan(DEDUPE, &from, &to, PURGE_BATCH_MAX)? {
            let (_, source, id) = store::parse_expiry_key(&k)
                .map_err(|e| StageError::Fatal(format!("dedupe store: {e}")))?;
            ctx.stores.delete(DEDUPE, k);
            ctx.stores.delete(DEDUPE, store::entry_key(&source, &id));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
