//! The rate stage: prices every enriched event by the marginal amount it
//! adds to its rating segment.
//!
//! For each record of `usage.enriched` (an [`EnrichedEvent`] JSON; anything
//! else is rejected to `meterline.dlq.rate` with
//! [`MALFORMED_ENRICHED_EVENT`]), and for each of its measures, in order:
//!
//! 1. the rating segment (subscription, meter, billing period, plan version,
//!    group) is [`EnrichedEvent::rating_segment_key`], and its store key
//!    the segment id, [`EnrichedEvent::rating_segment_id`];
//! 2. the segment's cumulative [`SegmentState`] is read from the `segments`
//!    store (a new segment starts at 0 with the measure's aggregation) and
//!    the measure is observed: SUM and MAX by its value, COUNT as one
//!    occurrence, LATEST by its value and event key (event time to the
//!    nanosecond, then `id`, then `source`; see [`crate::rating::EventKey`]),
//!    UNIQUE_COUNT by whether its
//!    `unique_value` is a member of the segment yet (one store key per
//!    member, see below);
//! 3. the marginal amount is `price(after) - price(before)` under the
//!    measure's resolved charge ([`crate::rating::ChargeModel::marginal`]),
//!    unrounded; per-event models (percentage, dynamic) and prorated
//!    charges are priced as `price.rs` says, with the parts that explain
//!    the amount on the rated measure.
//!
//! One [`RatedEvent`] per input event goes to `usage.rated`, keyed by the
//! customer id, stamped when written (append time). The marginal amounts of a
//! segment add up to exactly the charge model's price of its total, whatever
//! the tiers and however the usage was split into events (see
//! [`crate::rating`]), so everything downstream is additive.
//!
//! Two other records share the input: a retraction ([`retract`]: one rated
//! record taking the event it names out of its segments) and a rerate
//! command ([`rerate`]: one rated record per segment whose corrected price
//! differs from what it was billed). An amendment is an enriched event whose
//! rated record follows its retraction half's, in the same transaction.
//!
//! A measure that cannot be rated (no value where the aggregation needs one,
//! a result beyond a Decimal's range or precision, an aggregation that
//! changed under a segment mid-period) rejects the whole event to the DLQ
//! with the error's code ([`RateError::code`]), and no state of any of its
//! measures is written: all measures are computed first, then stored.
//!
//! Rate does not deduplicate: its input is exactly once (dedupe drops
//! duplicate events, enrich emits each event once).
//!
//! # The segments store (store 0, `segments`)
//!
//! | key | value |
//! |---|---|
//! | `G` segment id | the segment's [`SegmentState`], JSON |
//! | `U` segment id, unique value | empty: a UNIQUE_COUNT member |
//! | `W` segment id | a percentage charge's [`crate::rating::AllowanceWindow`], JSON |
//! | `H` segment id, source, id | a MAX or LATEST observation kept for corrections (value and event key, JSON), at most `rate.correction_history_max` per segment |
//! | `S` subscription id, segment id | the enriched record that started the segment: the subscription index of `meterline rerate` ([`rerate`]) |
//! | `R` source, id | a rated event, kept for corrections ([`retract`]): its event and its context's digest ([`kept`]; before 2026-12-07 the enriched record as received) |
//! | `C` period end (i64 ms), context digest | an enriched record without its event, shared by the kept events rated in it ([`kept`]) |
//! | `X` source, id | the correction of a corrected event (a second one is refused) |
//! | `Y` period end (i64 ms), source, id | empty: the expiry index of `R` and `X` |
//! | `E` period end (i64 ms), segment id | the subscription id (empty before the index existed): the expiry index |
//!
//! # Expiry
//!
//! A segment's state is needed for as long as an event of its billing
//! period can still arrive: validate refuses events older than
//! `validate.max_event_age_days`, and parked events can be healed a while
//! later. [`Processor::punctuate`] releases every segment (state, members,
//! index entry) whose period ended more than `rate.segment_retention_days`
//! ago ([`Config::segment_retention_days`]), at most
//! [`EXPIRE_BATCH_SEGMENTS`] per punctuation so a transaction stays small.
//! An event that still arrives for such a period is dead-lettered with
//! [`SEGMENT_EXPIRED`]: pricing it from zero would bill tiers and free units
//! a second time.

mod kept;
mod price;
pub mod reason;
pub mod rerate;
mod retract;

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Config;
use crate::contracts::{
    Correction, CorrectionKind, EnrichedEvent, Measure, RatedMeasure, RatedOut, Rerate,
    RerateRecord, ResolvedCharge, RetractionRecord, ValidatedEvent,
};
use crate::meter::Aggregation;
use crate::rating::{Observation, RatingError, SegmentState};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::store::keys::KeyBuilder;
use crate::store::StoreId;
use crate::topology::{self, StageSpec};

/// The segments store's index in the stage's store list.
const SEGMENTS: StoreId = 0;
/// Lineage (see [`crate::lineage`]).
const LINEAGE: StoreId = 1;
/// Key prefixes of the segments store (see the module docs).
const SEGMENT_PREFIX: u8 = b'G';
const MEMBER_PREFIX: u8 = b'U';
const WINDOW_PREFIX: u8 = b'W';
const HISTORY_PREFIX: u8 = b'H';
const EXPIRY_PREFIX: u8 = b'E';
/// Segments released per punctuation (each with its UNIQUE_COUNT members).
pub const EXPIRE_BATCH_SEGMENTS: usize = 100;
/// Members of one segment deleted per scan while releasing it.
const MEMBER_SCAN_BATCH: usize = 1_000;
const MS_PER_DAY: i64 = 86_400_000;

/// Reject code of an event whose billing period's segments were released.
pub use reason::SEGMENT_EXPIRED;

/// Reject code of an input record that is not an enriched event.
pub use reason::MALFORMED_ENRICHED_EVENT;

/// Why an event cannot be rated. [`code`](RateError::code) is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    #[error("not an enriched event: {0}")]
    Malformed(String),
    #[error("measure {meter}: a {aggregation:?} meter needs a value")]
    MissingValue {
        meter: String,
        aggregation: Aggregation,
    },
    #[error("measure {meter}: a UNIQUE_COUNT meter needs a unique_value")]
    MissingUniqueValue { meter: String },
    #[error("billing period {period} ended more than rate.segment_retention_days ({days}) ago; its rating state is released")]
    SegmentExpired { period: String, days: u32 },
    #[error("measure {meter}: dynamic amount: {detail}")]
    DynamicAmount { meter: String, detail: String },
    #[error("measure {meter}: dynamic currency: {detail}")]
    DynamicCurrency { meter: String, detail: String },
    #[error("event ({event_source:?}, {id:?}) is not among the events this partition rated and keeps (never accepted, rejected, not yet seen, or sent for another subject)")]
    RetractionUnknown { event_source: String, id: String },
    #[error("event ({event_source:?}, {id:?}): its billing period's rating state is released (rate.segment_retention_days)")]
    RetractionExpired { event_source: String, id: String },
    #[error("event ({event_source:?}, {id:?}) was already corrected, by {by}")]
    AlreadyCorrected {
        event_source: String,
        id: String,
        by: String,
    },
    #[error("event ({event_source:?}, {id:?}) belongs to another subject")]
    RetractionSubjectMismatch { event_source: String, id: String },
    #[error("measure {meter}: cannot be retracted: {detail}")]
    RetractionUnsupported { meter: String, detail: String },
    #[error("subscription {subscription} has more than {max} segments kept: name a --meter or a --period")]
    RerateTooLarge { subscription: String, max: usize },
    #[error("measure {meter}: {source}")]
    Rating {
        meter: String,
        #[source]
        source: RatingError,
    },
}

impl RateError {
    /// Stable snake_case code; a rating error reports its own code.
    pub fn code(&self) -> &'static str {
        match self {
            RateError::Malformed(_) => MALFORMED_ENRICHED_EVENT,
            RateError::MissingValue { .. } => reason::MEASURE_VALUE_MISSING,
            RateError::MissingUniqueValue { .. } => reason::MEASURE_UNIQUE_VALUE_MISSING,
            RateError::SegmentExpired { .. } => SEGMENT_EXPIRED,
            RateError::DynamicAmount { .. } => reason::DYNAMIC_AMOUNT_INVALID,
            RateError::DynamicCurrency { .. } => reason::DYNAMIC_CURRENCY_MISMATCH,
            RateError::RetractionUnknown { .. } => reason::RETRACTION_TARGET_UNKNOWN,
            RateError::RetractionExpired { .. } => reason::RETRACTION_TARGET_EXPIRED,
            RateError::AlreadyCorrected { .. } => reason::ALREADY_CORRECTED,
            RateError::RetractionSubjectMismatch { .. } => reason::RETRACTION_SUBJECT_MISMATCH,
            RateError::RetractionUnsupported { .. } => reason::RETRACTION_UNSUPPORTED,
            RateError::RerateTooLarge { .. } => reason::RERATE_TOO_LARGE,
            RateError::Rating { source, .. } => source.code(),
        }
    }
}

impl From<RateError> for StageError {
    fn from(e: RateError) -> Self {
        StageError::Reject {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

fn segment_key(segment_id: &str) -> Vec<u8> {
    KeyBuilder::new(SEGMENT_PREFIX).str(segment_id).build()
}

fn member_key(segment_id: &str, value: &str) -> Vec<u8> {
    KeyBuilder::new(MEMBER_PREFIX)
        .str(segment_id)
        .str(value)
        .build()
}

/// A MAX or LATEST observation kept for corrections.
fn history_key(segment_id: &str, source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(HISTORY_PREFIX)
        .str(segment_id)
        .str(source)
        .str(id)
        .build()
}

/// The range of a segment's keys under `prefix` (members, history).
fn segment_range(prefix: u8, segment_id: &str) -> (Vec<u8>, Vec<u8>) {
    let from = KeyBuilder::new(prefix).str(segment_id).build();
    let mut until = from.clone();
    // Every such key of the segment starts with `from`.
    until.push(0xFF);
    (from, until)
}

/// Deletes a released segment's keys under `prefix`, in batches.
fn delete_segment_keys(ctx: &mut Ctx<'_>, prefix: u8, segment_id: &str) -> Result<(), StageError> {
    let (from, until) = segment_range(prefix, segment_id);
    loop {
        let keys = ctx
            .stores
            .scan(SEGMENTS, &from, &until, MEMBER_SCAN_BATCH)?;
        if keys.is_empty() {
            return Ok(());
        }
        for (k, _) in keys {
            ctx.stores.delete(SEGMENTS, k);
        }
    }
}

fn window_key(segment_id: &str) -> Vec<u8> {
    KeyBuilder::new(WINDOW_PREFIX).str(segment_id).build()
}

fn expiry_key(period_end_ms: i64, segment_id: &str) -> Vec<u8> {
    KeyBuilder::new(EXPIRY_PREFIX)
        .i64(period_end_ms)
        .str(segment_id)
        .build()
}

pub struct RateProcessor {
    rated_topic: String,
    /// `rate.segment_retention_days`, in days and ms.
    retention_days: u32,
    retention_ms: i64,
    /// `rate.correction_history_max`.
    history_max: u32,
    /// Wall clock minus the event time of the last event rated.
    event_time_lag: prometheus::IntGauge,
}

impl RateProcessor {
    pub fn new(config: &Config) -> Self {
        let retention_days = config.segment_retention_days();
        RateProcessor {
            rated_topic: config.topic(topology::names::RATED),
            retention_days,
            retention_ms: i64::from(retention_days).saturating_mul(MS_PER_DAY),
            history_max: config.correction_history_max(),
            event_time_lag: crate::metrics::event_time_lag(SPEC.name),
        }
    }

    /// Periods ending before this have released segments.
    fn expiry_cutoff_ms(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.retention_ms)
    }
}

/// What rate reads: an enriched event, a retraction or a rerate command.
enum RateInput {
    Event(Box<EnrichedEvent>),
    Retraction(Box<ValidatedEvent>),
    Rerate(Box<Rerate>),
}

/// Parses and checks the shape rate relies on.
fn parse(bytes: Option<&[u8]>) -> Result<RateInput, RateError> {
    let bytes = bytes.ok_or_else(|| RateError::Malformed("the record has no value".into()))?;
    let enriched = match EnrichedEvent::from_json_slice(bytes) {
        Ok(e) => e,
        Err(e) => {
            if let Ok(r) = RetractionRecord::from_json_slice(bytes) {
                if retraction_of(&r.retraction).is_some() {
                    return Ok(RateInput::Retraction(Box::new(r.retraction)));
                }
            }
            return match RerateRecord::from_json_slice(bytes) {
                Ok(r) => Ok(RateInput::Rerate(Box::new(r.rerate))),
                Err(_) => Err(RateError::Malformed(e.to_string())),
            };
        }
    };
    if enriched.charges.len() != enriched.event.measures.len() {
        return Err(RateError::Malformed(format!(
            "{} charges for {} measures",
            enriched.charges.len(),
            enriched.event.measures.len()
        )));
    }
    for (measure, charge) in enriched.event.measures.iter().zip(&enriched.charges) {
        if measure.meter != charge.meter {
            return Err(RateError::Malformed(format!(
                "the charge of measure {:?} is for meter {:?}",
                measure.meter, charge.meter
            )));
        }
    }
    Ok(RateInput::Event(Box::new(enriched)))
}

/// The correction of a retraction.
fn retraction_of(event: &ValidatedEvent) -> Option<&Correction> {
    let c = event.correction.as_ref()?;
    (c.kind == CorrectionKind::Retract && event.measures.is_empty()).then_some(c)
}

/// The correction of an amendment's replacement.
fn amendment_of(event: &ValidatedEvent) -> Option<&Correction> {
    let c = event.correction.as_ref()?;
    (c.kind == CorrectionKind::Amend).then_some(c)
}

/// This stage's entry in the stage table (a constant index: out of range
/// would not compile).
#[allow(clippy::indexing_slicing)]
const SPEC: &StageSpec = &topology::STAGES[3];

impl Processor for RateProcessor {
    fn spec(&self) -> &'static StageSpec {
        SPEC
    }

    /// Releases segments whose period ended beyond the retention (see
    /// "Expiry" in the module docs).
    fn punctuate(&mut self, ctx: &mut Ctx<'_>, now_ms: i64) -> Result<(), StageError> {
        let to = KeyBuilder::new(EXPIRY_PREFIX)
            .i64(self.expiry_cutoff_ms(now_ms))
            .build();
        let due = ctx
            .stores
            .scan(SEGMENTS, &[EXPIRY_PREFIX], &to, EXPIRE_BATCH_SEGMENTS)?;
        for (index_key, subscription) in due {
            let mut r = crate::store::keys::KeyReader::new(&index_key, EXPIRY_PREFIX)
                .map_err(|e| StageError::Fatal(format!("expiry index key: {e}")))?;
            let _period_end = r
                .i64()
                .map_err(|e| StageError::Fatal(format!("expiry index key: {e}")))?;
            let id = r
                .str()
                .map_err(|e| StageError::Fatal(format!("expiry index key: {e}")))?
                .to_string();
            delete_segment_keys(ctx, MEMBER_PREFIX, &id)?;
            delete_segment_keys(ctx, HISTORY_PREFIX, &id)?;
            ctx.stores.delete(SEGMENTS, window_key(&id));
            if let Ok(sub) = std::str::from_utf8(&subscription) {
                // Empty for a segment started before the index existed.
                if !sub.is_empty() {
                    ctx.stores
                        .delete(SEGMENTS, rerate::subscription_key(sub, &id));
                }
            }
            ctx.stores.delete(SEGMENTS, segment_key(&id));
            ctx.stores.delete(SEGMENTS, index_key);
        }
        retract::expire(ctx, self.expiry_cutoff_ms(now_ms))
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        match parse(rec.value)? {
            RateInput::Event(enriched) => self.rate_event(rec, &enriched, ctx),
            RateInput::Retraction(by) => self.retract_only(rec, &by, ctx),
            RateInput::Rerate(cmd) => self.rerate(rec, &cmd, ctx),
        }
    }
}

impl RateProcessor {
    /// An event (an amendment's replacement too: its correction is applied
    /// first, in the same transaction, or neither is).
    fn rate_event(
        &mut self,
        rec: &InputRecord<'_>,
        enriched: &EnrichedEvent,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), StageError> {
        let period_end_ms = enriched.billing_period.end.timestamp_millis();
        let now_ms = ctx.now_ms;
        crate::internal_events::EventTimeLagMeasured {
            stage: SPEC.name,
            lag_s: now_ms.saturating_sub(enriched.event.time.timestamp_millis()) / 1_000,
        }
        .emit(&self.event_time_lag);
        if period_end_ms < self.expiry_cutoff_ms(now_ms) {
            return Err(RateError::SegmentExpired {
                period: enriched.billing_period.id.clone(),
                days: self.retention_days,
            }
            .into());
        }
        let mut rating = EventRating::new(self.history_max);
        let amended = match amendment_of(&enriched.event) {
            Some(c) => {
                Some(rating.retract(&enriched.event, c, self.expiry_cutoff_ms(now_ms), ctx)?)
            }
            None => None,
        };
        rating.compute(enriched, ctx)?;
        let started = Started {
            period_end_ms,
            subscription_id: &enriched.subscription_id,
            context: rec.value.unwrap_or_default(),
        };
        rating.store(ctx, Some(&started))?;
        retract::remember(
            ctx,
            &enriched.event,
            rec.value.unwrap_or_default(),
            period_end_ms,
        )?;
        if let Some(r) = &amended {
            retract::record_corrected_step(ctx, &enriched.event, r, rec.partition, rec.offset)?;
            ctx.emit(self.retraction_output(&enriched.event, r)?);
        }
        let retracted = amended.as_ref().map(|r| r.measures.as_slice());
        record_rated_step(rec, &enriched.event, &rating.measures, retracted, ctx)?;
        ctx.emit(self.rated_output(rec, enriched, &rating.measures)?);
        Ok(())
    }

    /// A retraction: the event it names leaves its segments.
    fn retract_only(
        &mut self,
        rec: &InputRecord<'_>,
        by: &ValidatedEvent,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), StageError> {
        let Some(c) = retraction_of(by) else {
            return Err(RateError::Malformed("a retraction without its correction".into()).into());
        };
        let mut rating = EventRating::new(self.history_max);
        let r = rating.retract(by, c, self.expiry_cutoff_ms(ctx.now_ms), ctx)?;
        // A retraction starts no segment.
        rating.store(ctx, None)?;
        retract::record_corrected_step(ctx, by, &r, rec.partition, rec.offset)?;
        record_rated_step(rec, by, &[], Some(&r.measures), ctx)?;
        ctx.emit(self.retraction_output(by, &r)?);
        Ok(())
    }

    /// The rated event: the enriched input as received, byte for byte (no
    /// second serialization of the largest part of the record), with the
    /// rated measures, keyed by customer.
    fn rated_output(
        &self,
        rec: &InputRecord<'_>,
        enriched: &EnrichedEvent,
        measures: &[RatedMeasure],
    ) -> Result<Output, StageError> {
        let event = &enriched.event;
        let raw: &serde_json::value::RawValue =
            serde_json::from_slice(rec.value.unwrap_or_default())
                .map_err(|e| StageError::Fatal(format!("re-reading the input: {e}")))?;
        let value = serde_json::to_vec(&RatedOut {
            source: &event.source,
            id: &event.id,
            customer_id: &enriched.customer.id,
            measures,
            enriched: raw,
            correction: None,
            rerate: None,
        })
        .map_err(|e| StageError::Fatal(format!("serializing a rated event: {e}")))?;
        Ok(Output {
            topic: self.rated_topic.clone(),
            key: Some(enriched.customer.id.clone().into_bytes()),
            value: Some(value),
            headers: Vec::new(),
            partition: None,
        })
    }
}

/// The event's lineage step: rated, with its measures, and those of the
/// event it retracts, if any.
fn record_rated_step(
    rec: &InputRecord<'_>,
    event: &ValidatedEvent,
    measures: &[RatedMeasure],
    retracted: Option<&[RatedMeasure]>,
    ctx: &mut Ctx<'_>,
) -> Result<(), StageError> {
    #[derive(serde::Serialize)]
    struct Detail<'a> {
        measures: &'a [RatedMeasure],
        #[serde(skip_serializing_if = "Option::is_none")]
        corrects: Option<&'a Correction>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retracted_measures: Option<&'a [RatedMeasure]>,
    }
    let corrected = retracted.zip(event.correction.as_ref());
    let detail = Detail {
        measures,
        corrects: corrected.map(|(_, c)| c),
        retracted_measures: corrected.map(|(r, _)| r),
    };
    crate::lineage::record_step(
        ctx,
        LINEAGE,
        &event.source,
        &event.id,
        crate::lineage::StepOut {
            outcome: "rated",
            partition: rec.partition,
            offset: rec.offset,
            detail: &detail,
        },
        ctx.now_ms,
    )
}

/// What rating one event computes, in full before anything is stored, so a
/// measure that fails leaves no trace of the others. The maps also make two
/// measures of one segment in one event see each other.
#[derive(Default)]
struct EventRating {
    /// Segment states after the event, by segment id.
    states: BTreeMap<String, SegmentState>,
    /// Unique-count members (segment id, value) whose event count the
    /// event changes, with the new count (0: the member leaves).
    members: BTreeMap<(String, String), MemberCount>,
    /// The event this one corrects, and the correcting identity (source,
    /// id): its kept record gives way to a marker.
    corrected: Option<(Correction, String, String)>,
    /// Segments this event starts: they get an expiry index entry.
    created: BTreeSet<String>,
    /// `rate.correction_history_max`.
    history_max: u32,
    /// MAX and LATEST observations kept (Some) or let go (None).
    history: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Percentage allowance windows the event read or changed.
    windows: price::Windows,
    /// One per measure, in the event's order.
    measures: Vec<RatedMeasure>,
}

/// The event that started segments: their expiry and subscription index
/// entries (the latter with the enriched record as received).
struct Started<'a> {
    period_end_ms: i64,
    subscription_id: &'a str,
    context: &'a [u8],
}

/// How many kept events of a segment have a unique-count member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MemberCount {
    /// Stored before members were counted (empty value): at least one.
    Legacy,
    Known(u64),
}

impl MemberCount {
    fn decode(bytes: &[u8]) -> Result<Self, StageError> {
        if bytes.is_empty() {
            return Ok(MemberCount::Legacy);
        }
        let b: [u8; 8] = bytes
            .try_into()
            .map_err(|_| StageError::Fatal("unique-count member: corrupt count".into()))?;
        Ok(MemberCount::Known(u64::from_be_bytes(b)))
    }

    /// One more event of the member; `true` if it is new to the segment.
    fn add_one(self) -> (Self, bool) {
        match self {
            MemberCount::Legacy => (MemberCount::Legacy, false),
            MemberCount::Known(n) => (MemberCount::Known(n.saturating_add(1)), n == 0),
        }
    }
}

/// A MAX or LATEST observation kept for corrections.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Kept {
    #[serde(with = "rust_decimal::serde::str")]
    value: rust_decimal::Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<crate::rating::EventKey>,
}

impl EventRating {
    fn new(history_max: u32) -> Self {
        EventRating {
            history_max,
            ..EventRating::default()
        }
    }

    /// Keeps a MAX or LATEST observation for corrections, while the
    /// segment's history is within its bound.
    fn keep(
        &mut self,
        state: &mut SegmentState,
        enriched: &EnrichedEvent,
        measure: &Measure,
        segment_id: &str,
    ) -> Result<(), StageError> {
        let (Some(value), true) = (measure.value, state.keep_history(self.history_max)) else {
            return Ok(());
        };
        let key = (state.aggregation() == Aggregation::Latest).then(|| price::event_key(enriched));
        let bytes = serde_json::to_vec(&Kept { value, key })
            .map_err(|e| StageError::Fatal(format!("encoding a kept observation: {e}")))?;
        let e = &enriched.event;
        let k = history_key(segment_id, &e.source, &e.id);
        self.history.push((k, Some(bytes)));
        Ok(())
    }

    /// Rates every measure of `enriched`, in order.
    fn compute(&mut self, enriched: &EnrichedEvent, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        self.measures = Vec::with_capacity(enriched.event.measures.len());
        for (measure, charge) in enriched.event.measures.iter().zip(&enriched.charges) {
            self.rate_measure(enriched, measure, charge, ctx)?;
        }
        Ok(())
    }

    /// A member's event count, as this event left it, else as stored.
    fn member_count(
        &self,
        member: &(String, String),
        ctx: &Ctx<'_>,
    ) -> Result<MemberCount, StageError> {
        if let Some(c) = self.members.get(member) {
            return Ok(*c);
        }
        match ctx
            .stores
            .get(SEGMENTS, &member_key(&member.0, &member.1))?
        {
            Some(b) => MemberCount::decode(&b),
            None => Ok(MemberCount::Known(0)),
        }
    }

    fn rate_measure(
        &mut self,
        enriched: &EnrichedEvent,
        measure: &Measure,
        charge: &ResolvedCharge,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), StageError> {
        let meter = || measure.meter.clone();
        let key = enriched.rating_segment_key(measure);
        let id = enriched.rating_segment_id(measure);
        let mut state = self.segment_state(&id, &key, charge, ctx)?;
        let observation = self.observation(enriched, measure, charge, &id, ctx)?;
        let rating = |source| RateError::Rating {
            meter: meter(),
            source,
        };
        let change = state.observe(observation).map_err(rating)?;
        let priced = price::Pricer {
            enriched,
            measure,
            charge,
            segment_id: &id,
        }
        .price(&mut state, &change, &mut self.windows, ctx)?;
        let delta = change.delta().map_err(rating)?;
        state.record_amount(priced.amount).map_err(rating)?;
        if matches!(charge.aggregation, Aggregation::Max | Aggregation::Latest) && !charge.prorate {
            self.keep(&mut state, enriched, measure, &id)?;
        }
        self.measures.push(RatedMeasure {
            meter: meter(),
            segment_key: key,
            segment_id: id.clone(),
            plan_version: enriched.plan_version,
            aggregation: state.aggregation(),
            quantity_before: change.before,
            quantity_after: change.after,
            marginal_quantity: delta,
            marginal_amount: priced.amount,
            parts: priced.parts,
        });
        self.states.insert(id, state);
        Ok(())
    }

    /// The segment's state before this measure: as an earlier measure of the
    /// event left it, else as stored, else new (and created by this event).
    fn segment_state(
        &mut self,
        id: &str,
        key: &str,
        charge: &ResolvedCharge,
        ctx: &mut Ctx<'_>,
    ) -> Result<SegmentState, StageError> {
        if let Some(s) = self.states.remove(id) {
            return Ok(s);
        }
        match ctx.stores.get(SEGMENTS, &segment_key(id))? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| {
                StageError::Fatal(format!("segment {key}: stored state is corrupt: {e}"))
            }),
            None => {
                self.created.insert(id.to_string());
                Ok(SegmentState::new(charge.aggregation))
            }
        }
    }

    /// What the measure observes in its segment, by aggregation (a
    /// unique-count member's new event count is noted).
    fn observation(
        &mut self,
        enriched: &EnrichedEvent,
        measure: &Measure,
        charge: &ResolvedCharge,
        id: &str,
        ctx: &mut Ctx<'_>,
    ) -> Result<Observation, StageError> {
        let meter = || measure.meter.clone();
        let value = || {
            measure.value.ok_or_else(|| RateError::MissingValue {
                meter: meter(),
                aggregation: charge.aggregation,
            })
        };
        let observation = match charge.aggregation {
            Aggregation::Sum | Aggregation::Max => Observation::value(value()?),
            Aggregation::Count => Observation::Occurrence,
            Aggregation::Latest => Observation::Latest {
                value: value()?,
                key: price::event_key(enriched),
            },
            Aggregation::UniqueCount => {
                let v = measure
                    .unique_value
                    .clone()
                    .ok_or_else(|| RateError::MissingUniqueValue { meter: meter() })?;
                let member = (id.to_string(), v);
                let (count, is_new) = self.member_count(&member, ctx)?.add_one();
                self.members.insert(member, count);
                Observation::distinct(is_new)
            }
        };
        Ok(observation)
    }

    /// Writes the segment states, the new members and the expiry index
    /// entries of the segments the event started.
    fn store(&self, ctx: &mut Ctx<'_>, started: Option<&Started<'_>>) -> Result<(), StageError> {
        for (id, state) in &self.states {
            let bytes = serde_json::to_vec(state)
                .map_err(|e| StageError::Fatal(format!("encoding segment state: {e}")))?;
            ctx.stores.put(SEGMENTS, segment_key(id), bytes);
        }
        for ((id, value), count) in &self.members {
            let key = member_key(id, value);
            match count {
                MemberCount::Known(0) => ctx.stores.delete(SEGMENTS, key),
                MemberCount::Known(n) => ctx.stores.put(SEGMENTS, key, n.to_be_bytes().to_vec()),
                // Unchanged: seen again, its count still unknown.
                MemberCount::Legacy => {}
            }
        }
        if let Some(corrected) = &self.corrected {
            retract::corrected_marker(ctx, corrected)?;
        }
        for (key, value) in &self.history {
            match value {
                Some(v) => ctx.stores.put(SEGMENTS, key.clone(), v.clone()),
                None => ctx.stores.delete(SEGMENTS, key.clone()),
            }
        }
        for (id, window) in &self.windows {
            let bytes = serde_json::to_vec(window)
                .map_err(|e| StageError::Fatal(format!("encoding an allowance window: {e}")))?;
            ctx.stores.put(SEGMENTS, window_key(id), bytes);
        }
        if self.created.is_empty() {
            return Ok(());
        }
        let s = started
            .ok_or_else(|| StageError::Fatal("a segment started without its event".into()))?;
        for id in &self.created {
            let sub = s.subscription_id.as_bytes().to_vec();
            ctx.stores
                .put(SEGMENTS, expiry_key(s.period_end_ms, id), sub);
            ctx.stores.put(
                SEGMENTS,
                rerate::subscription_key(s.subscription_id, id),
                s.context.to_vec(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod correction_tests;
#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{
        ChargeSource, CustomerInfo, Encoding, Measure, Origin, RatedEvent, ResolvedCharge,
        ValidatedEvent, Window,
    };
    use crate::rating::{ChargeModel, Tier};
    use crate::refdata::GlAccounts;
    use crate::runtime::testing::{Harness, Record};
    use chrono::{DateTime, Duration, TimeZone, Utc};
    use rust_decimal::Decimal;
    use rust_decimal_macros::dec;
    use serde_json::json;

    pub(super) fn config() -> Config {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Config::from_parts("[topology]\nnamespace = \"x.\"\n", "test", &[], dir).unwrap()
    }

    /// A processor over empty stores, the clock at [`t0`].
    pub(super) fn harness() -> Harness<RateProcessor> {
        Harness::new(
            config(),
            RateProcessor::new(&config()),
            t0().timestamp_millis(),
        )
    }

    pub(super) fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap()
    }

    pub(super) fn graduated() -> ChargeModel {
        // 100 free, then 0.50 up to 1000 with a 5.00 entry fee, then 0.40.
        ChargeModel::Graduated {
            tiers: vec![
                Tier::bounded(dec!(100), dec!(0)),
                Tier::bounded(dec!(1000), dec!(0.50)).with_flat_fee(dec!(5.00)),
                Tier::open(dec!(0.40)),
            ],
        }
    }

    pub(super) fn measure(meter: &str, value: Option<Decimal>, unique: Option<&str>) -> Measure {
        Measure {
            meter: meter.into(),
            value,
            unique_value: unique.map(str::to_owned),
            group: BTreeMap::from([("model".into(), "m".into())]),
        }
    }

    pub(super) fn enriched(
        id: &str,
        time: DateTime<Utc>,
        measures: Vec<(Measure, Aggregation, ChargeModel)>,
    ) -> EnrichedEvent {
        let window = |id: &str| Window {
            id: id.into(),
            start: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
            end: Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap(),
        };
        let charges = measures
            .iter()
            .map(|(m, aggregation, model)| ResolvedCharge {
                meter: m.meter.clone(),
                aggregation: *aggregation,
                charge: model.clone(),
                source: ChargeSource::Plan,
                tax_code: None,
                unit: None,
                prorate: false,
            })
            .collect();
        EnrichedEvent {
            event: ValidatedEvent {
                correction: None,
                source: "svc".into(),
                id: id.into(),
                event_type: "t".into(),
                subject: "cust-1".into(),
                time,
                measures: measures.into_iter().map(|(m, _, _)| m).collect(),
                data: json!({}),
                origin: Origin {
                    topic: "x.usage.events".into(),
                    partition: 0,
                    offset: 0,
                    encoding: Encoding::Structured,
                },
            },
            customer: CustomerInfo {
                id: "cust-1".into(),
                name: "Acme".into(),
                legal_entity: "acme".into(),
                erp_customer_id: "C-1".into(),
            },
            subscription_id: "sub-1".into(),
            plan_id: "pro".into(),
            plan_version: 2,
            currency: "USD".into(),
            legal_entity: "ml-us".into(),
            time_zone: "UTC".into(),
            billing_anchor_day: 1,
            subscription_end: None,
            billing_period: window("2026-01-01"),
            local_day: window("2026-01-10"),
            gl_accounts: GlAccounts::new("4010", "1210", "1200"),
            tax_code: None,
            minimum_commitment: None,
            base_fee: None,
            charges,
        }
    }

    pub(super) fn run_bytes(
        h: &mut Harness<RateProcessor>,
        value: &[u8],
    ) -> Result<Vec<Output>, StageError> {
        assert_eq!(h.input_topic(), "x.usage.enriched");
        h.process_record(Record {
            key: Some(b"cust-1"),
            value: Some(value),
            timestamp_ms: Some(42),
            ..Record::default()
        })
    }

    pub(super) fn rate(h: &mut Harness<RateProcessor>, e: &EnrichedEvent) -> RatedEvent {
        let out = run_bytes(h, &e.to_json_bytes().unwrap()).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "x.usage.rated");
        assert_eq!(out[0].key.as_deref(), Some(&b"cust-1"[..]));
        RatedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap()
    }

    pub(super) fn reject_code(r: Result<Vec<Output>, StageError>) -> &'static str {
        match r {
            Err(StageError::Reject { code, .. }) => code,
            other => panic!("expected a reject, got {other:?}"),
        }
    }

    #[test]
    fn marginals_of_a_sequence_add_up_to_the_price_of_the_total() {
        let mut h = harness();
        let values = [
            dec!(60),
            dec!(40),
            dec!(0.5),
            dec!(899.5),
            dec!(1),
            dec!(250.25),
        ];
        let mut amounts = Vec::new();
        let mut total_quantity = Decimal::ZERO;
        for (i, v) in values.iter().enumerate() {
            let e = enriched(
                &format!("e{i}"),
                t0(),
                vec![(
                    measure("tokens", Some(*v), None),
                    Aggregation::Sum,
                    graduated(),
                )],
            );
            let rated = rate(&mut h, &e);
            let m = &rated.measures[0];
            assert_eq!(m.quantity_before, total_quantity);
            total_quantity += v;
            assert_eq!(m.quantity_after, total_quantity);
            assert_eq!(m.marginal_quantity, *v);
            amounts.push(m.marginal_amount);
            // State survives each commit: it is in the store, not in memory.
            h.commit().unwrap();
            h.processor = RateProcessor::new(&config());
        }
        // By hand: 60 and 40 stay in the free tier (its bound is inclusive);
        // 0.5 enters tier 2: 0.25 + its 5.00 fee; 899.5 * 0.50 fills it;
        // then 0.40 a unit.
        assert_eq!(
            amounts,
            [
                dec!(0),
                dec!(0),
                dec!(5.25),
                dec!(449.75),
                dec!(0.40),
                dec!(100.10)
            ]
        );
        let total_amount: Decimal = amounts.iter().sum();
        // 1251.25 = 100 free + 900 * 0.50 + 5.00 fee + 251.25 * 0.40.
        assert_eq!(total_quantity, dec!(1251.25));
        assert_eq!(total_amount, dec!(555.5));
        assert_eq!(graduated().price(total_quantity).unwrap(), total_amount);
    }

    #[test]
    fn volume_tiers_can_make_a_marginal_negative_and_still_telescope() {
        let volume = ChargeModel::Volume {
            tiers: vec![Tier::bounded(dec!(10), dec!(1)), Tier::open(dec!(0.5))],
        };
        let mut h = harness();
        let mut amounts = Vec::new();
        for (i, v) in [dec!(10), dec!(2)].iter().enumerate() {
            let e = enriched(
                &format!("e{i}"),
                t0(),
                vec![(
                    measure("api_calls", Some(*v), None),
                    Aggregation::Sum,
                    volume.clone(),
                )],
            );
            amounts.push(rate(&mut h, &e).measures[0].marginal_amount);
        }
        // 10 units at 1.00 = 10; 12 units all at 0.50 = 6: the second event is -4.
        assert_eq!(amounts, [dec!(10), dec!(-4.0)]);
    }

    #[test]
    fn segments_are_separate_per_plan_version_and_group() {
        let mut h = harness();
        let per_unit = ChargeModel::PerUnit {
            unit_price: dec!(2),
        };
        let e1 = enriched(
            "e1",
            t0(),
            vec![(
                measure("tokens", Some(dec!(3)), None),
                Aggregation::Sum,
                per_unit.clone(),
            )],
        );
        let mut e2 = e1.clone();
        e2.event.id = "e2".into();
        e2.plan_version = 3;
        let mut e3 = e1.clone();
        e3.event.id = "e3".into();
        e3.event.measures[0].group = BTreeMap::from([("model".into(), "other".into())]);
        let r1 = rate(&mut h, &e1);
        let r2 = rate(&mut h, &e2);
        let r3 = rate(&mut h, &e3);
        for r in [&r1, &r2, &r3] {
            assert_eq!(r.measures[0].quantity_before, dec!(0));
            assert_eq!(r.measures[0].marginal_amount, dec!(6));
        }
        assert_eq!(r2.measures[0].plan_version, 3);
        assert_eq!(
            r1.measures[0].segment_key,
            r#"["sub-1","tokens","2026-01-01",2,{"model":"m"}]"#
        );
        assert_eq!(r1.measures[0].segment_id.len(), 64);
        assert_ne!(r1.measures[0].segment_id, r2.measures[0].segment_id);
        assert_ne!(r1.measures[0].segment_id, r3.measures[0].segment_id);
        assert_eq!((r1.source.as_str(), r1.id.as_str()), ("svc", "e1"));
    }

    #[test]
    fn unique_count_counts_each_value_once() {
        let mut h = harness();
        let per_user = ChargeModel::PerUnit {
            unit_price: dec!(3),
        };
        let users = ["u1", "u2", "u1", "u3", "u2", "u1"];
        let mut quantities = Vec::new();
        let mut amount = Decimal::ZERO;
        for (i, u) in users.iter().enumerate() {
            let e = enriched(
                &format!("e{i}"),
                t0(),
                vec![(
                    measure("active_users", None, Some(u)),
                    Aggregation::UniqueCount,
                    per_user.clone(),
                )],
            );
            let m = rate(&mut h, &e).measures.remove(0);
            quantities.push(m.quantity_after);
            amount += m.marginal_amount;
            if i == 2 {
                // Membership survives a commit (it is in the store, not in memory).
                h.commit().unwrap();
                h.processor = RateProcessor::new(&config());
            }
        }
        assert_eq!(
            quantities,
            [dec!(1), dec!(2), dec!(2), dec!(3), dec!(3), dec!(3)]
        );
        assert_eq!(amount, dec!(9));
        // A value already seen in another segment is new in this one.
        let mut e = enriched(
            "other",
            t0(),
            vec![(
                measure("active_users", None, Some("u1")),
                Aggregation::UniqueCount,
                per_user,
            )],
        );
        e.plan_version = 9;
        assert_eq!(rate(&mut h, &e).measures[0].quantity_after, dec!(1));
    }

    #[test]
    fn latest_follows_event_time_and_may_go_down() {
        let mut h = harness();
        let per_gb = ChargeModel::PerUnit {
            unit_price: dec!(0.10),
        };
        let snapshot = |id: &str, minutes: i64, gb: Decimal| {
            enriched(
                id,
                t0() + Duration::minutes(minutes),
                vec![(
                    measure("storage_gb", Some(gb), None),
                    Aggregation::Latest,
                    per_gb.clone(),
                )],
            )
        };
        let mut amounts = Vec::new();
        let mut after = Vec::new();
        for e in [
            snapshot("a", 10, dec!(100)),
            snapshot("b", 20, dec!(80)),
            // Late: older than the current value, changes nothing.
            snapshot("c", 15, dec!(500)),
            snapshot("d", 30, dec!(120)),
        ] {
            let m = rate(&mut h, &e).measures.remove(0);
            amounts.push(m.marginal_amount);
            after.push(m.quantity_after);
        }
        assert_eq!(after, [dec!(100), dec!(80), dec!(80), dec!(120)]);
        assert_eq!(amounts, [dec!(10.00), dec!(-2.00), dec!(0), dec!(4.00)]);
        assert_eq!(amounts.iter().sum::<Decimal>(), dec!(12.00));
    }

    #[test]
    fn latest_events_one_nanosecond_apart_the_later_wins_in_either_order() {
        let per_gb = ChargeModel::PerUnit {
            unit_price: dec!(0.10),
        };
        // One microsecond, 1 ns apart; the earlier event has the greater id.
        let earlier = t0() + Duration::nanoseconds(5_000_100);
        let later = earlier + Duration::nanoseconds(1);
        let snapshot = |id: &str, time, gb: Decimal| {
            enriched(
                id,
                time,
                vec![(
                    measure("storage_gb", Some(gb), None),
                    Aggregation::Latest,
                    per_gb.clone(),
                )],
            )
        };
        let a = snapshot("z-earlier", earlier, dec!(500));
        let b = snapshot("a-later", later, dec!(120));
        // The time crosses the topic as RFC 3339 with 9 fractional digits.
        let text = String::from_utf8(b.to_json_bytes().unwrap()).unwrap();
        assert!(
            text.contains("\"2026-01-10T00:00:00.005000101Z\""),
            "{text}"
        );
        for order in [[&a, &b], [&b, &a]] {
            let mut h = harness();
            let amounts: Vec<Decimal> = order
                .iter()
                .map(|e| rate(&mut h, e).measures.remove(0).marginal_amount)
                .collect();
            // Whatever the order, the period is priced at the later event's 120 GB.
            assert_eq!(amounts.iter().sum::<Decimal>(), dec!(12.00), "{amounts:?}");
        }
    }

    #[test]
    fn count_and_max_and_several_measures_in_one_event() {
        let mut h = harness();
        let per_unit = |price| ChargeModel::PerUnit { unit_price: price };
        let e = |id: &str, seats: Decimal| {
            enriched(
                id,
                t0(),
                vec![
                    (
                        measure("api_calls", None, None),
                        Aggregation::Count,
                        per_unit(dec!(0.01)),
                    ),
                    (
                        measure("peak_seats", Some(seats), None),
                        Aggregation::Max,
                        per_unit(dec!(10)),
                    ),
                ],
            )
        };
        let r1 = rate(&mut h, &e("e1", dec!(5)));
        let r2 = rate(&mut h, &e("e2", dec!(3)));
        let r3 = rate(&mut h, &e("e3", dec!(7)));
        let q = |r: &RatedEvent| (r.measures[0].quantity_after, r.measures[1].quantity_after);
        assert_eq!(q(&r1), (dec!(1), dec!(5)));
        assert_eq!(q(&r2), (dec!(2), dec!(5)));
        assert_eq!(q(&r3), (dec!(3), dec!(7)));
        assert_eq!(r2.measures[1].marginal_amount, dec!(0));
        assert_eq!(r3.measures[1].marginal_amount, dec!(20));
    }

    #[test]
    fn errors_reject_the_whole_event_and_write_nothing() {
        let mut h = harness();
        let per_unit = ChargeModel::PerUnit {
            unit_price: dec!(1),
        };
        assert_eq!(
            reject_code(run_bytes(&mut h, b"{nope")),
            MALFORMED_ENRICHED_EVENT
        );
        // Overflow on the second measure: the first one's state is not kept.
        let big = Decimal::MAX;
        let ok_then_overflow = enriched(
            "e1",
            t0(),
            vec![
                (
                    measure("tokens", Some(dec!(1)), None),
                    Aggregation::Sum,
                    per_unit.clone(),
                ),
                (
                    measure("bytes", Some(big), None),
                    Aggregation::Sum,
                    ChargeModel::PerUnit {
                        unit_price: dec!(2),
                    },
                ),
            ],
        );
        let bytes = ok_then_overflow.to_json_bytes().unwrap();
        assert_eq!(
            reject_code(run_bytes(&mut h, &bytes)),
            "arithmetic_overflow"
        );
        assert!(!h.stores.has_pending());
        // A SUM measure without a value.
        let no_value = enriched(
            "e2",
            t0(),
            vec![(
                measure("tokens", None, None),
                Aggregation::Sum,
                per_unit.clone(),
            )],
        );
        let bytes = no_value.to_json_bytes().unwrap();
        assert_eq!(
            reject_code(run_bytes(&mut h, &bytes)),
            "measure_value_missing"
        );
        // Charges that do not line up with the measures.
        let mut skewed = enriched(
            "e3",
            t0(),
            vec![(
                measure("tokens", Some(dec!(1)), None),
                Aggregation::Sum,
                per_unit.clone(),
            )],
        );
        skewed.charges.clear();
        let bytes = skewed.to_json_bytes().unwrap();
        assert_eq!(
            reject_code(run_bytes(&mut h, &bytes)),
            MALFORMED_ENRICHED_EVENT
        );
        // The aggregation of a segment changed mid-period.
        let sum = enriched(
            "e4",
            t0(),
            vec![(
                measure("tokens", Some(dec!(1)), None),
                Aggregation::Sum,
                per_unit.clone(),
            )],
        );
        rate(&mut h, &sum);
        let mut as_count = sum.clone();
        as_count.event.id = "e5".into();
        as_count.charges[0].aggregation = Aggregation::Count;
        let bytes = as_count.to_json_bytes().unwrap();
        assert_eq!(
            reject_code(run_bytes(&mut h, &bytes)),
            "observation_mismatch"
        );
    }

    #[test]
    fn rated_event_json_has_the_documented_shape() {
        let mut h = harness();
        let e = enriched(
            "e1",
            t0(),
            vec![(
                measure("tokens", Some(dec!(150.50)), None),
                Aggregation::Sum,
                graduated(),
            )],
        );
        let out = run_bytes(&mut h, &e.to_json_bytes().unwrap()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(out[0].value.as_deref().unwrap()).unwrap();
        let text = String::from_utf8(out[0].value.clone().unwrap()).unwrap();
        assert!(
            text.starts_with(r#"{"source":"svc","id":"e1","customer_id":"cust-1","measures":[{"meter":"tokens","segment_key":"#),
            "{text}"
        );
        assert_eq!(
            v["measures"][0]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>(),
            [
                "aggregation",
                "marginal_amount",
                "marginal_quantity",
                "meter",
                "plan_version",
                "quantity_after",
                "quantity_before",
                "segment_id",
                "segment_key",
            ]
        );
        // 50.50 units in tier 2 at 0.50 plus its 5.00 fee; decimals as strings.
        assert_eq!(v["measures"][0]["marginal_amount"], "30.2500");
        assert_eq!(v["measures"][0]["quantity_after"], "150.50");
        assert_eq!(v["enriched"], serde_json::to_value(&e).unwrap());
        let back = RatedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(back.enriched, e);
    }

    #[test]
    fn segments_are_released_after_the_retention_and_late_events_refused() {
        // Retention: 35 + 25 = 60 days after January's end (Feb 1): Apr 2.
        let mut h = harness();
        let per_unit = ChargeModel::PerUnit {
            unit_price: dec!(1),
        };
        for (i, user) in ["u1", "u2", "u1"].iter().enumerate() {
            let e = enriched(
                &format!("e{i}"),
                t0(),
                vec![
                    (
                        measure("users", None, Some(user)),
                        Aggregation::UniqueCount,
                        per_unit.clone(),
                    ),
                    (
                        measure("tokens", Some(dec!(5)), None),
                        Aggregation::Sum,
                        graduated(),
                    ),
                ],
            );
            rate(&mut h, &e);
            h.commit().unwrap();
        }
        // Two segments, two members, two expiry and two subscription index
        // entries; three kept events with their index entries (corrections)
        // and the one context the three share.
        assert_eq!(h.stores.approximate_keys(SEGMENTS), 15);
        let punctuate = |h: &mut Harness<RateProcessor>, at: DateTime<Utc>| {
            h.now_ms = at.timestamp_millis();
            let out = h.punctuate().unwrap();
            h.commit().unwrap();
            assert!(out.is_empty());
        };
        let feb1 = Utc.with_ymd_and_hms(2026, 2, 1, 0, 0, 0).unwrap();
        punctuate(&mut h, feb1 + Duration::days(59));
        assert_eq!(
            h.stores.approximate_keys(SEGMENTS),
            15,
            "inside the retention"
        );
        punctuate(&mut h, feb1 + Duration::days(61));
        assert_eq!(h.stores.approximate_keys(SEGMENTS), 0, "released");
        // A January event that still arrives is refused, not priced from zero.
        h.now_ms = (feb1 + Duration::days(61)).timestamp_millis();
        let late = enriched(
            "late",
            t0(),
            vec![(
                measure("tokens", Some(dec!(5)), None),
                Aggregation::Sum,
                graduated(),
            )],
        );
        let r = run_bytes(&mut h, &late.to_json_bytes().unwrap());
        assert_eq!(reject_code(r), SEGMENT_EXPIRED);
        assert_eq!(h.stores.approximate_keys(SEGMENTS), 0);
    }

    fn take_rate() -> ChargeModel {
        ChargeModel::Percentage(crate::rating::PercentageModel::example())
    }

    fn payment(
        id: &str,
        time: DateTime<Utc>,
        amount: Decimal,
        model: ChargeModel,
    ) -> EnrichedEvent {
        enriched(
            id,
            time,
            vec![(
                measure("volume", Some(amount), None),
                Aggregation::Sum,
                model,
            )],
        )
    }

    #[test]
    fn percentage_fees_across_commits_and_a_late_event_that_displaces_a_free_one() {
        let mut h = harness();
        let mut amounts = Vec::new();
        for (i, v) in [dec!(10), dec!(20), dec!(30), dec!(1000)]
            .iter()
            .enumerate()
        {
            let e = payment(
                &format!("p{i}"),
                t0() + Duration::hours(i as i64 + 1),
                *v,
                take_rate(),
            );
            amounts.push(rate(&mut h, &e).measures[0].marginal_amount);
            h.commit().unwrap();
            h.processor = RateProcessor::new(&config());
        }
        assert_eq!(amounts, [dec!(0), dec!(0), dec!(0.69), dec!(5.00)]);
        // Earlier than every event: free; p1 (20) is charged 0.56 instead.
        let late = rate(&mut h, &payment("late", t0(), dec!(50), take_rate()));
        let m = &late.measures[0];
        assert_eq!(m.marginal_amount, dec!(0.56));
        assert_eq!(m.marginal_quantity, dec!(50));
        assert_eq!(m.parts.get("paid_events"), Some(&dec!(1)));
        h.commit().unwrap();
        // A period total of 0.56 + 0.69 + 5.00 = 6.25, the fees in event order.
        assert_eq!(
            amounts.iter().sum::<Decimal>() + m.marginal_amount,
            dec!(6.25)
        );
    }

    #[test]
    fn a_percentage_of_a_count_meter_is_refused_with_its_code() {
        let mut h = harness();
        let e = enriched(
            "c",
            t0(),
            vec![(
                measure("calls", None, None),
                Aggregation::Count,
                take_rate(),
            )],
        );
        let r = run_bytes(&mut h, &e.to_json_bytes().unwrap());
        assert_eq!(reject_code(r), "model_aggregation_mismatch");
    }

    #[test]
    fn prorated_seats_charge_the_remaining_fraction_of_the_period() {
        let mut h = harness();
        let seats = ChargeModel::PerUnit {
            unit_price: dec!(31),
        };
        let mut prorated = |id: &str, day: u32, n: Decimal| {
            let mut e = enriched(
                id,
                Utc.with_ymd_and_hms(2026, 1, day, 0, 0, 0).unwrap(),
                vec![(
                    measure("seats", Some(n), None),
                    Aggregation::Latest,
                    seats.clone(),
                )],
            );
            e.charges[0].prorate = true;
            let out = rate(&mut h, &e);
            h.commit().unwrap();
            out.measures[0].clone()
        };
        // January (31 days): 10 seats from the 1st, 16 from the 11th (21 days left).
        assert_eq!(prorated("s1", 1, dec!(10)).marginal_amount, dec!(310));
        let second = prorated("s2", 11, dec!(16));
        assert_eq!(second.marginal_amount, dec!(126));
        assert_eq!(second.quantity_after, dec!(16));
        assert_eq!(second.parts.get("full_period_amount"), Some(&dec!(186)));
    }

    #[test]
    fn dynamic_amounts_are_taken_as_given_and_bad_ones_refused() {
        let dynamic = ChargeModel::Dynamic {
            amount_property: "$.price".into(),
            currency_property: Some("$.currency".into()),
        };
        let mut h = harness();
        let with_data = |id: &str, data: serde_json::Value| {
            let mut e = payment(id, t0(), dec!(1), dynamic.clone());
            e.event.data = data;
            e
        };
        let ok = rate(
            &mut h,
            &with_data("d1", json!({"price": "12.345", "currency": "USD"})),
        );
        assert_eq!(ok.measures[0].marginal_amount, dec!(12.345));
        for (id, data, code) in [
            ("d2", json!({"currency": "USD"}), "dynamic_amount_invalid"),
            (
                "d3",
                json!({"price": "-1", "currency": "USD"}),
                "dynamic_amount_invalid",
            ),
            (
                "d4",
                json!({"price": "NaN", "currency": "USD"}),
                "dynamic_amount_invalid",
            ),
            (
                "d5",
                json!({"price": "1", "currency": "EUR"}),
                "dynamic_currency_mismatch",
            ),
        ] {
            let r = run_bytes(&mut h, &with_data(id, data).to_json_bytes().unwrap());
            assert_eq!(reject_code(r), code, "{id}");
        }
    }
}
