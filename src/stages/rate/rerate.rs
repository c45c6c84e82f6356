//! Re-rating: a subscription's segments priced again under corrected
//! charges (`meterline rerate`, [`crate::contracts::Rerate`]).
//!
//! Each segment keeps what it has been billed so far (the sum of the
//! marginal amounts rate emitted for it, [`SegmentState::amount`]) and is
//! indexed under its subscription (`S` key, with the enriched record of
//! the event that started it: the context its adjustments are posted in).
//! A rerate command prices every indexed segment of the subscription (of
//! one meter or billing period when it names one) at its current quantity
//! under the command's charge for the segment's plan version and meter,
//! and emits the difference from what was billed as one rated record,
//! quantity unchanged: aggregate adds it to the segment's windows, or,
//! once they are closed, to the open ones as an adjustment naming them.
//! The segment is then billed exactly the corrected price, so a second
//! command with nothing changed emits nothing.
//!
//! Per-event models (percentage, dynamic), prorated charges and
//! graduated_percentage (whose breakdown would no longer explain the
//! amount) are skipped and listed, as are segments whose billed amount is
//! unknown (state written before it was kept) and those of released
//! periods.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use super::{segment_key, RateError, RateProcessor, LINEAGE, SEGMENTS};
use crate::contracts::{
    EnrichedEvent, Measure, Origin, RatedMeasure, RatedOut, Rerate, ResolvedCharge, ValidatedEvent,
};
use crate::rating::{ChargeModel, Parts, Pricing, SegmentState};
use crate::runtime::{Ctx, InputRecord, Output, StageError};
use crate::store::keys::{KeyBuilder, KeyReader};

/// Key prefix of the subscription index (see the module docs of `rate`).
pub const SUBSCRIPTION_PREFIX: u8 = b'S';
/// Most segments one command re-rates; more is refused (narrow it with a
/// meter or a period).
pub const MAX_RERATE_SEGMENTS: usize = 10_000;
/// CloudEvents `source` and `type` of a rerate's rated records.
pub const RERATE_SOURCE: &str = "meterline.rerate";

pub fn subscription_key(subscription_id: &str, segment_id: &str) -> Vec<u8> {
    KeyBuilder::new(SUBSCRIPTION_PREFIX)
        .str(subscription_id)
        .str(segment_id)
        .build()
}

/// The range of a subscription's index entries.
fn subscription_range(subscription_id: &str) -> (Vec<u8>, Vec<u8>) {
    let from = KeyBuilder::new(SUBSCRIPTION_PREFIX)
        .str(subscription_id)
        .build();
    let mut to = from.clone();
    to.push(0xFF);
    (from, to)
}

/// (subscription id, segment id) of an index key.
pub fn parse_subscription_key(key: &[u8]) -> Option<(String, String)> {
    let mut r = KeyReader::new(key, SUBSCRIPTION_PREFIX).ok()?;
    let sub = r.str().ok()?.to_string();
    let id = r.str().ok()?.to_string();
    r.finish().ok()?;
    Some((sub, id))
}

/// What re-rating one segment does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Billed exactly the corrected price already.
    Unchanged,
    /// `difference` = `price` - billed so far, emitted.
    Adjusted {
        #[serde(with = "rust_decimal::serde::str")]
        price: Decimal,
        #[serde(with = "rust_decimal::serde::str")]
        difference: Decimal,
    },
    Skipped {
        reason: String,
    },
}

/// One segment's assessment.
#[derive(Debug, Clone, Serialize)]
pub struct Assessed {
    pub segment_key: String,
    pub meter: String,
    pub period: String,
    pub plan_version: u32,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub billed: Option<Decimal>,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A segment of the subscription in scope: its measure in `context`.
fn scoped<'c>(context: &'c EnrichedEvent, segment_id: &str, cmd: &Rerate) -> Option<&'c Measure> {
    let measure = context
        .event
        .measures
        .iter()
        .find(|m| context.rating_segment_id(m) == segment_id)?;
    let meter_ok = cmd.meter.as_ref().is_none_or(|m| *m == measure.meter);
    let period_ok = cmd
        .period
        .as_ref()
        .is_none_or(|p| *p == context.billing_period.id);
    (meter_ok && period_ok).then_some(measure)
}

/// The command's charge for the segment, if it can be re-rated.
fn charge_for<'c>(
    cmd: &'c Rerate,
    context: &EnrichedEvent,
    meter: &str,
    state: &SegmentState,
) -> Result<&'c ResolvedCharge, String> {
    let c = cmd
        .charges
        .iter()
        .find(|c| c.plan_version == context.plan_version && c.charge.meter == meter)
        .map(|c| &c.charge)
        .ok_or_else(|| {
            format!(
                "plan version {} has no charge for {meter}",
                context.plan_version
            )
        })?;
    if c.charge.pricing() == Pricing::PerEvent {
        return Err(format!("{} is priced per event", c.charge.name()));
    }
    if c.prorate {
        return Err("a prorated charge".into());
    }
    if matches!(c.charge, ChargeModel::GraduatedPercentage { .. }) {
        return Err("graduated_percentage: its breakdown would not explain the amount".into());
    }
    if c.aggregation != state.aggregation() {
        return Err(format!(
            "the meter is {:?} now, the segment {:?}",
            c.aggregation,
            state.aggregation()
        ));
    }
    Ok(c)
}

/// Assesses one segment (None: outside the command's meter or period).
pub fn assess(
    state: &SegmentState,
    context: &EnrichedEvent,
    segment_id: &str,
    cmd: &Rerate,
) -> Option<(Assessed, Option<ResolvedCharge>)> {
    let measure = scoped(context, segment_id, cmd)?;
    let mut a = Assessed {
        segment_key: context.rating_segment_key(measure),
        meter: measure.meter.clone(),
        period: context.billing_period.id.clone(),
        plan_version: context.plan_version,
        quantity: state.quantity(),
        billed: state.amount(),
        outcome: Outcome::Unchanged,
    };
    let skip = |reason: String| Outcome::Skipped { reason };
    let charge = match (
        charge_for(cmd, context, &measure.meter, state),
        state.amount(),
    ) {
        (Err(reason), _) => {
            a.outcome = skip(reason);
            return Some((a, None));
        }
        (Ok(_), None) => {
            a.outcome = skip("billed amount unknown (state written by an older version)".into());
            return Some((a, None));
        }
        (Ok(c), Some(billed)) => match c.charge.price(state.quantity()) {
            Ok(price) if price == billed => return Some((a, None)),
            Ok(price) => {
                a.outcome = Outcome::Adjusted {
                    price,
                    difference: price - billed,
                };
                c.clone()
            }
            Err(e) => {
                a.outcome = skip(e.to_string());
                return Some((a, None));
            }
        },
    };
    Some((a, Some(charge)))
}

/// Assesses a subscription's segments from rate's `segments` changelog
/// (compacted: the latest value per key, `None` a deletion), in key order:
/// what a command would do now (`meterline rerate --dry-run`).
pub fn assess_changelog(
    records: impl IntoIterator<Item = (Vec<u8>, Option<Vec<u8>>)>,
    cmd: &Rerate,
) -> Vec<Assessed> {
    let mut latest: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let (from, to) = subscription_range(&cmd.subscription_id);
    for (key, value) in records {
        let indexed = key >= from && key < to;
        if !indexed && key.first() != Some(&b'G') {
            continue;
        }
        match value {
            Some(v) => latest.insert(key, v),
            None => latest.remove(&key),
        };
    }
    let mut out = Vec::new();
    for (key, context) in latest.range(from..to) {
        let Some((_, id)) = parse_subscription_key(key) else {
            continue;
        };
        let state = latest
            .get(&segment_key(&id))
            .and_then(|b| serde_json::from_slice::<SegmentState>(b).ok());
        let context = EnrichedEvent::from_json_slice(context).ok();
        if let (Some(state), Some(context)) = (state, context) {
            out.extend(assess(&state, &context, &id, cmd).map(|(a, _)| a));
        }
    }
    out
}

impl RateProcessor {
    /// A rerate command: every segment in scope priced again (see the
    /// module docs), its lineage kept under the command id.
    pub(super) fn rerate(
        &mut self,
        rec: &InputRecord<'_>,
        cmd: &Rerate,
        ctx: &mut Ctx<'_>,
    ) -> Result<(), StageError> {
        let (from, to) = subscription_range(&cmd.subscription_id);
        let entries = ctx
            .stores
            .scan(SEGMENTS, &from, &to, MAX_RERATE_SEGMENTS + 1)?;
        if entries.len() > MAX_RERATE_SEGMENTS {
            return Err(RateError::RerateTooLarge {
                subscription: cmd.subscription_id.clone(),
                max: MAX_RERATE_SEGMENTS,
            }
            .into());
        }
        let cutoff_ms = self.expiry_cutoff_ms(ctx.now_ms);
        let mut report = Vec::new();
        for (key, context) in entries {
            let Some((_, id)) = parse_subscription_key(&key) else {
                return Err(StageError::Fatal("subscription index: corrupt key".into()));
            };
            let Some(state) = ctx.stores.get(SEGMENTS, &segment_key(&id))? else {
                continue;
            };
            let corrupt = |e: serde_json::Error| StageError::Fatal(format!("segment {id}: {e}"));
            let mut state: SegmentState = serde_json::from_slice(&state).map_err(corrupt)?;
            let context = EnrichedEvent::from_json_slice(&context).map_err(corrupt)?;
            if context.billing_period.end.timestamp_millis() < cutoff_ms {
                continue;
            }
            let Some((assessed, charge)) = assess(&state, &context, &id, cmd) else {
                continue;
            };
            if let (Outcome::Adjusted { difference, .. }, Some(charge)) =
                (&assessed.outcome, charge)
            {
                state
                    .record_amount(*difference)
                    .map_err(|source| RateError::Rating {
                        meter: assessed.meter.clone(),
                        source,
                    })?;
                let bytes = serde_json::to_vec(&state)
                    .map_err(|e| StageError::Fatal(format!("encoding segment state: {e}")))?;
                ctx.stores.put(SEGMENTS, segment_key(&id), bytes);
                let adjustment = Adjustment {
                    cmd,
                    context: &context,
                    segment_id: &id,
                    charge,
                    quantity: state.quantity(),
                    difference: *difference,
                };
                ctx.emit(self.rerate_output(rec, &adjustment)?);
            }
            report.push(assessed);
        }
        record_rerate_step(ctx, rec, cmd, &report)
    }

    /// The rated record of one segment's adjustment.
    fn rerate_output(
        &self,
        rec: &InputRecord<'_>,
        a: &Adjustment<'_>,
    ) -> Result<Output, StageError> {
        let fatal = |e: serde_json::Error| StageError::Fatal(format!("a rerate: {e}"));
        let measure = scoped(a.context, a.segment_id, a.cmd)
            .cloned()
            .ok_or_else(|| StageError::Fatal("a rerate lost its measure".into()))?;
        let id = format!("{}/{}", a.cmd.id, a.segment_id);
        let mut context = a.context.clone();
        context.event = ValidatedEvent {
            source: RERATE_SOURCE.into(),
            id: id.clone(),
            event_type: RERATE_SOURCE.into(),
            subject: a.cmd.customer_id.clone(),
            time: a.cmd.time,
            measures: vec![measure.clone()],
            data: serde_json::json!({"actor": a.cmd.actor}),
            origin: Origin {
                topic: rec.topic.to_string(),
                partition: rec.partition,
                offset: rec.offset,
                encoding: crate::contracts::Encoding::Structured,
            },
            correction: None,
        };
        context.charges = vec![a.charge.clone()];
        let measures = [RatedMeasure {
            meter: measure.meter.clone(),
            segment_key: a.context.rating_segment_key(&measure),
            segment_id: a.segment_id.to_string(),
            plan_version: a.context.plan_version,
            aggregation: a.charge.aggregation,
            quantity_before: a.quantity,
            quantity_after: a.quantity,
            marginal_quantity: Decimal::ZERO,
            marginal_amount: a.difference,
            parts: Parts::new(),
        }];
        let raw = serde_json::value::to_raw_value(&context).map_err(fatal)?;
        let value = serde_json::to_vec(&RatedOut {
            source: RERATE_SOURCE,
            id: &id,
            customer_id: &a.context.customer.id,
            measures: &measures,
            enriched: &raw,
            correction: None,
            rerate: Some(&a.cmd.id),
        })
        .map_err(fatal)?;
        Ok(Output {
            topic: self.rated_topic.clone(),
            key: Some(a.context.customer.id.clone().into_bytes()),
            value: Some(value),
            headers: Vec::new(),
            partition: None,
        })
    }
}

/// One segment's adjustment, as [`RateProcessor::rerate_output`] needs it.
struct Adjustment<'a> {
    cmd: &'a Rerate,
    context: &'a EnrichedEvent,
    segment_id: &'a str,
    charge: ResolvedCharge,
    quantity: Decimal,
    difference: Decimal,
}

/// The command's lineage step: every segment it looked at, with what it did.
fn record_rerate_step(
    ctx: &mut Ctx<'_>,
    rec: &InputRecord<'_>,
    cmd: &Rerate,
    report: &[Assessed],
) -> Result<(), StageError> {
    let detail = serde_json::to_value(report)
        .map_err(|e| StageError::Fatal(format!("serializing lineage: {e}")))?;
    crate::lineage::record_step(
        ctx,
        LINEAGE,
        RERATE_SOURCE,
        &cmd.id,
        crate::lineage::Step {
            outcome: "rerated".into(),
            partition: rec.partition,
            offset: rec.offset,
            reason: None,
            detail: serde_json::json!({"subscription": cmd.subscription_id, "segments": detail}),
        },
        ctx.now_ms,
    )
}
