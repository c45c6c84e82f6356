//! Corrections: removing what an event rate priced, alone (a retraction)
//! or as the first half of an amendment (see [`crate::contracts::Correction`]).
//!
//! Every rated event is kept, as the enriched record rate received, until
//! its billing period's segments are released (`R` key, with a `Y` expiry
//! index entry); a corrected one leaves a marker instead (`X`), so a second
//! correction of it is refused. A retraction then re-enters each measure's
//! segment in reverse: SUM subtracts the value, COUNT one occurrence,
//! UNIQUE_COUNT one event of the member (the member leaves with its last
//! event, which is why members are counted), MAX and LATEST fall back on
//! the greatest or latest of the observations the segment kept (at most
//! `rate.correction_history_max` each), and the measure's amount is
//! `price(without) - price(with)` under the charge the event was rated
//! with; a dynamic charge gives back the event's own amount, a percentage
//! charge the change to the period's fees
//! ([`crate::rating::AllowanceWindow::retract`]: an event past the free
//! allowance gives back its own fee), a prorated charge the change to its
//! timeline ([`crate::rating::Timeline::retract`]). A percentage event
//! that used an allowance since used up (its share would pass to events
//! the window no longer holds) and a segment with more MAX/LATEST
//! observations than the bound (nothing complete to fall back on) are
//! refused (`retraction_unsupported`) and nothing changes.
//!
//! The rated record of a retraction carries the removed event's measures
//! negated and the context it was rated in (billing period, day, charges),
//! under the correcting event's identity and time: aggregate adds it to the
//! original windows, or, when they have closed, to the open ones as an
//! adjustment naming them, as it does for any late event.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use super::{
    kept, price, EventRating, RateError, RateProcessor, EXPIRE_BATCH_SEGMENTS, LINEAGE, SEGMENTS,
};
use crate::contracts::{
    Correction, CorrectionKind, EnrichedEvent, Measure, RatedMeasure, RatedOut, ResolvedCharge,
    ValidatedEvent,
};
use crate::meter::Aggregation;
use crate::rating::{
    AllowanceRetraction, Charge, ChargeModel, EventKey, Observation, Pricing, QuantityChange,
    SegmentState,
};
use crate::runtime::{Ctx, Output, StageError};
use crate::store::keys::{KeyBuilder, KeyReader};

/// Key prefixes of the segments store (see the module docs of `rate`).
const EVENT_PREFIX: u8 = b'R';
const CORRECTED_PREFIX: u8 = b'X';
const EVENT_EXPIRY_PREFIX: u8 = b'Y';
/// Rated events released per punctuation (their `R`, `X` and `Y` keys).
pub const EXPIRE_BATCH_EVENTS: usize = 10 * EXPIRE_BATCH_SEGMENTS;
/// The longest billing period, in days, rounded up (31 days and a DST
/// hour): an event older than this before the retention cutoff had its
/// period's state released.
const MAX_BILLING_PERIOD_DAYS: i64 = 32;
const MS_PER_DAY: i64 = 86_400_000;

pub(super) fn event_key(source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(EVENT_PREFIX).str(source).str(id).build()
}

fn corrected_key(source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(CORRECTED_PREFIX)
        .str(source)
        .str(id)
        .build()
}

fn event_expiry_key(period_end_ms: i64, source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(EVENT_EXPIRY_PREFIX)
        .i64(period_end_ms)
        .str(source)
        .str(id)
        .build()
}

/// (period end, source, id) of an expiry index key.
fn parse_event_expiry_key(key: &[u8]) -> Result<(i64, String, String), StageError> {
    let corrupt = |e: crate::store::keys::KeyError| StageError::Fatal(format!("event index: {e}"));
    let mut r = KeyReader::new(key, EVENT_EXPIRY_PREFIX).map_err(corrupt)?;
    let end = r.i64().map_err(corrupt)?;
    let source = r.str().map_err(corrupt)?.to_string();
    let id = r.str().map_err(corrupt)?.to_string();
    r.finish().map_err(corrupt)?;
    Ok((end, source, id))
}

/// Keeps a rated event (its enriched record as received, see [`kept`])
/// for corrections until its period's state is released.
pub fn remember(
    ctx: &mut Ctx<'_>,
    event: &ValidatedEvent,
    bytes: &[u8],
    period_end_ms: i64,
) -> Result<(), StageError> {
    let key = event_key(&event.source, &event.id);
    kept::keep(ctx, key, bytes, period_end_ms)?;
    ctx.stores.put(
        SEGMENTS,
        event_expiry_key(period_end_ms, &event.source, &event.id),
        Vec::new(),
    );
    Ok(())
}

/// Releases the kept events of periods that ended before `cutoff_ms`, a
/// bounded batch.
pub fn expire(ctx: &mut Ctx<'_>, cutoff_ms: i64) -> Result<(), StageError> {
    let to = KeyBuilder::new(EVENT_EXPIRY_PREFIX).i64(cutoff_ms).build();
    let due = ctx
        .stores
        .scan(SEGMENTS, &[EVENT_EXPIRY_PREFIX], &to, EXPIRE_BATCH_EVENTS)?;
    for (index_key, _) in due {
        let (_, source, id) = parse_event_expiry_key(&index_key)?;
        ctx.stores.delete(SEGMENTS, event_key(&source, &id));
        ctx.stores.delete(SEGMENTS, corrected_key(&source, &id));
        ctx.stores.delete(SEGMENTS, index_key);
    }
    kept::expire(ctx, cutoff_ms)
}

/// What removing one event computed: its context and negated measures.
pub struct Retracted {
    pub original: EnrichedEvent,
    pub measures: Vec<RatedMeasure>,
    pub correction: Correction,
}

impl EventRating {
    /// Removes the event `by` corrects from its segments (in memory, like
    /// every measure of an event: stored by [`EventRating::store`]).
    pub(super) fn retract(
        &mut self,
        by: &ValidatedEvent,
        correction: &Correction,
        cutoff_ms: i64,
        ctx: &mut Ctx<'_>,
    ) -> Result<Retracted, StageError> {
        let original = find(by, correction, cutoff_ms, ctx)?;
        // A measure refused after others were taken back: the event's
        // rating is dropped whole, so nothing changes.
        let mut measures = Vec::with_capacity(original.event.measures.len());
        for (measure, charge) in original.event.measures.iter().zip(&original.charges) {
            measures.push(self.retract_measure(&original, measure, charge, ctx)?);
        }
        self.corrected = Some((correction.clone(), by.source.clone(), by.id.clone()));
        Ok(Retracted {
            original,
            measures,
            correction: correction.clone(),
        })
    }

    fn retract_measure(
        &mut self,
        original: &EnrichedEvent,
        measure: &Measure,
        charge: &ResolvedCharge,
        ctx: &mut Ctx<'_>,
    ) -> Result<RatedMeasure, StageError> {
        let meter = || measure.meter.clone();
        let key = original.rating_segment_key(measure);
        let id = original.rating_segment_id(measure);
        let mut state = self.segment_state(&id, &key, charge, ctx)?;
        if self.created.remove(&id) {
            // Released while the kept event waits for its own batch.
            return Err(RateError::RetractionExpired {
                event_source: original.event.source.clone(),
                id: original.event.id.clone(),
            }
            .into());
        }
        let rating = |source| RateError::Rating {
            meter: meter(),
            source,
        };
        let pricer = price::Pricer {
            enriched: original,
            measure,
            charge,
            segment_id: &id,
        };
        let (change, priced) = if charge.prorate {
            // The timeline holds every observation: the quantity left is its.
            let (priced, quantity, latest) =
                pricer.retract_prorated(&mut state)?.ok_or_else(|| {
                    unsupported(
                        &measure.meter,
                        "its observation is not in the prorated timeline",
                    )
                })?;
            (state.fall_back(quantity, latest).map_err(rating)?, priced)
        } else {
            let change = self.leave(original, measure, charge, &mut state, &id, ctx)?;
            let priced = self.price_retraction(&pricer, &mut state, &change, ctx)?;
            (change, priced)
        };
        let amount = priced.amount;
        let delta = change.delta().map_err(rating)?;
        state.record_amount(amount).map_err(rating)?;
        self.states.insert(id.clone(), state);
        Ok(RatedMeasure {
            meter: meter(),
            segment_key: key,
            segment_id: id,
            plan_version: original.plan_version,
            aggregation: charge.aggregation,
            quantity_before: change.before,
            quantity_after: change.after,
            marginal_quantity: delta,
            marginal_amount: amount,
            parts: priced.parts,
        })
    }

    /// The segment's quantity without the event (not prorated).
    fn leave(
        &mut self,
        original: &EnrichedEvent,
        measure: &Measure,
        charge: &ResolvedCharge,
        state: &mut SegmentState,
        id: &str,
        ctx: &mut Ctx<'_>,
    ) -> Result<QuantityChange, StageError> {
        let change = match charge.aggregation {
            Aggregation::Max | Aggregation::Latest => {
                let (quantity, latest) = self.fall_back(original, measure, state, id, ctx)?;
                state.fall_back(quantity, latest)
            }
            _ => {
                let observation = self.leaving(measure, charge, id, ctx)?;
                state.retract(observation)
            }
        };
        change.map_err(|source| {
            RateError::Rating {
                meter: measure.meter.clone(),
                source,
            }
            .into()
        })
    }

    /// The amount (and parts) of taking a measure's event back, its
    /// quantity having moved by `change`.
    fn price_retraction(
        &mut self,
        pricer: &price::Pricer<'_>,
        state: &mut SegmentState,
        change: &QuantityChange,
        ctx: &Ctx<'_>,
    ) -> Result<Charge, StageError> {
        let meter = &pricer.measure.meter;
        match &pricer.charge.charge {
            ChargeModel::Percentage(model) => {
                match pricer.retract_percentage(model, state, &mut self.windows, ctx)? {
                    AllowanceRetraction::Priced(charge) => Ok(charge),
                    AllowanceRetraction::Unsupported(why) => Err(unsupported(meter, why)),
                }
            }
            // A dynamic charge prices the event itself: its amount back.
            model if model.pricing() == Pricing::PerEvent => Charge::default()
                .minus(&pricer.price(state, change, &mut self.windows, ctx)?)
                .map_err(|source| {
                    RateError::Rating {
                        meter: meter.clone(),
                        source,
                    }
                    .into()
                }),
            _ => pricer.price(state, change, &mut self.windows, ctx),
        }
    }

    /// MAX and LATEST without the event: the greatest (or latest) of the
    /// observations the segment kept, 0 when none is left. The event's own
    /// observation is let go.
    fn fall_back(
        &mut self,
        original: &EnrichedEvent,
        measure: &Measure,
        state: &SegmentState,
        id: &str,
        ctx: &Ctx<'_>,
    ) -> Result<(Decimal, Option<EventKey>), StageError> {
        if !state.history_complete() {
            return Err(unsupported(
                &measure.meter,
                "the segment kept more MAX/LATEST observations than rate.correction_history_max \
                 (or was started by an older version): nothing to fall back on",
            ));
        }
        let own = super::history_key(id, &original.event.source, &original.event.id);
        let (from, to) = super::segment_range(super::HISTORY_PREFIX, id);
        let limit = usize::try_from(self.history_max)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let mut found = false;
        let mut best: Option<super::Kept> = None;
        for (k, v) in ctx.stores.scan(SEGMENTS, &from, &to, limit)? {
            if k == own {
                found = true;
                continue;
            }
            let kept: super::Kept = serde_json::from_slice(&v)
                .map_err(|e| StageError::Fatal(format!("segment {id}: kept observation: {e}")))?;
            let better = match &best {
                None => true,
                Some(b) if state.aggregation() == Aggregation::Latest => kept.key > b.key,
                Some(b) => kept.value > b.value,
            };
            if better {
                best = Some(kept);
            }
        }
        if !found {
            return Err(unsupported(&measure.meter, "its observation is not kept"));
        }
        self.history.push((own, None));
        Ok(best.map_or((Decimal::ZERO, None), |b| (b.value, b.key)))
    }

    /// What leaves the segment: the value, one occurrence, or one event of
    /// a unique-count member (`is_new`: its last one).
    fn leaving(
        &mut self,
        measure: &Measure,
        charge: &ResolvedCharge,
        id: &str,
        ctx: &mut Ctx<'_>,
    ) -> Result<Observation, StageError> {
        let value = || {
            measure.value.ok_or_else(|| RateError::MissingValue {
                meter: measure.meter.clone(),
                aggregation: charge.aggregation,
            })
        };
        Ok(match charge.aggregation {
            Aggregation::Sum | Aggregation::Max | Aggregation::Latest => {
                Observation::value(value()?)
            }
            Aggregation::Count => Observation::Occurrence,
            Aggregation::UniqueCount => {
                let v =
                    measure
                        .unique_value
                        .clone()
                        .ok_or_else(|| RateError::MissingUniqueValue {
                            meter: measure.meter.clone(),
                        })?;
                let member = (id.to_string(), v);
                let count = match self.member_count(&member, ctx)? {
                    super::MemberCount::Known(n) if n > 0 => n,
                    super::MemberCount::Known(_) => {
                        return Err(StageError::Fatal(format!(
                            "segment {id}: a kept event's member is not in the segment"
                        )))
                    }
                    super::MemberCount::Legacy => {
                        return Err(unsupported(
                            &measure.meter,
                            "its member was counted before members kept their event count \
                             (state written by an older version)",
                        ))
                    }
                };
                self.members
                    .insert(member, super::MemberCount::Known(count - 1));
                Observation::distinct(count == 1)
            }
        })
    }
}

/// The kept event `correction` names, if it can be corrected.
fn find(
    by: &ValidatedEvent,
    c: &Correction,
    cutoff_ms: i64,
    ctx: &mut Ctx<'_>,
) -> Result<EnrichedEvent, StageError> {
    if let Some(b) = ctx.stores.get(SEGMENTS, &corrected_key(&c.source, &c.id))? {
        let earlier: (Correction, String, String) = serde_json::from_slice(&b)
            .map_err(|e| StageError::Fatal(format!("correction marker is corrupt: {e}")))?;
        return Err(RateError::AlreadyCorrected {
            event_source: c.source.clone(),
            id: c.id.clone(),
            by: format!("{:?}", (earlier.1, earlier.2)),
        }
        .into());
    }
    let Some(bytes) = ctx.stores.get(SEGMENTS, &event_key(&c.source, &c.id))? else {
        return Err(not_found(c, cutoff_ms).into());
    };
    let Some(original) = kept::load(ctx, &bytes, cutoff_ms)? else {
        return Err(RateError::RetractionExpired {
            event_source: c.source.clone(),
            id: c.id.clone(),
        }
        .into());
    };
    if original.event.subject != by.subject {
        return Err(RateError::RetractionSubjectMismatch {
            event_source: c.source.clone(),
            id: c.id.clone(),
        }
        .into());
    }
    Ok(original)
}

/// Unknown, or expired when the correction names a time whose period had
/// certainly been released.
fn not_found(c: &Correction, cutoff_ms: i64) -> RateError {
    let released_before = cutoff_ms.saturating_sub(MAX_BILLING_PERIOD_DAYS * MS_PER_DAY);
    let expired = c
        .time
        .is_some_and(|t: DateTime<Utc>| t.timestamp_millis() < released_before);
    if expired {
        RateError::RetractionExpired {
            event_source: c.source.clone(),
            id: c.id.clone(),
        }
    } else {
        RateError::RetractionUnknown {
            event_source: c.source.clone(),
            id: c.id.clone(),
        }
    }
}

fn unsupported(meter: &str, detail: &str) -> StageError {
    RateError::RetractionUnsupported {
        meter: meter.to_string(),
        detail: detail.to_string(),
    }
    .into()
}

impl RateProcessor {
    /// The rated record of a retraction: the removed event's context and
    /// negated measures under the correcting event's identity and time.
    pub(super) fn retraction_output(
        &self,
        by: &ValidatedEvent,
        r: &Retracted,
    ) -> Result<Output, StageError> {
        let fatal = |e: serde_json::Error| StageError::Fatal(format!("a retraction: {e}"));
        let mut context = r.original.clone();
        context.event = ValidatedEvent {
            measures: std::mem::take(&mut context.event.measures),
            ..by.clone()
        };
        let raw = serde_json::value::to_raw_value(&context).map_err(fatal)?;
        let value = serde_json::to_vec(&RatedOut {
            source: &by.source,
            id: &by.id,
            customer_id: &r.original.customer.id,
            measures: &r.measures,
            enriched: &raw,
            correction: Some(&r.correction),
            rerate: None,
        })
        .map_err(fatal)?;
        Ok(Output {
            topic: self.rated_topic.clone(),
            key: Some(r.original.customer.id.clone().into_bytes()),
            value: Some(value),
            headers: Vec::new(),
            partition: None,
        })
    }
}

/// The removed event's lineage step: which event corrected it, and how.
pub fn record_corrected_step(
    ctx: &mut Ctx<'_>,
    by: &ValidatedEvent,
    r: &Retracted,
    partition: i32,
    offset: i64,
) -> Result<(), StageError> {
    let outcome = match r.correction.kind {
        CorrectionKind::Retract => "retracted",
        CorrectionKind::Amend => "amended",
    };
    let detail = serde_json::to_value(&r.measures)
        .map_err(|e| StageError::Fatal(format!("serializing lineage: {e}")))?;
    crate::lineage::record_step(
        ctx,
        LINEAGE,
        &r.correction.source,
        &r.correction.id,
        crate::lineage::Step {
            outcome: outcome.into(),
            partition,
            offset,
            reason: None,
            detail: serde_json::json!({"by": [by.source, by.id], "measures": detail}),
        },
        ctx.now_ms,
    )
}

/// The marker's value: the correction and the correcting identity.
pub fn corrected_marker(
    ctx: &mut Ctx<'_>,
    corrected: &(Correction, String, String),
) -> Result<(), StageError> {
    let (c, _, _) = corrected;
    let bytes = serde_json::to_vec(corrected)
        .map_err(|e| StageError::Fatal(format!("encoding a correction marker: {e}")))?;
    ctx.stores.delete(SEGMENTS, event_key(&c.source, &c.id));
    ctx.stores
        .put(SEGMENTS, corrected_key(&c.source, &c.id), bytes);
    Ok(())
}
