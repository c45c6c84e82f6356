//! How one measure's marginal amount is computed, by the kind of its
//! charge (see [`crate::rating`]):
//!
//! * cumulative models: `price(after) - price(before)` of the segment's
//!   quantity; graduated_percentage also gives its tier parts;
//! * a cumulative model with `prorate`: the change the event makes to the
//!   segment's prorated timeline ([`crate::rating::Timeline`]);
//! * percentage: the change the event makes to the period's per-event fees
//!   ([`crate::rating::AllowanceWindow`]); the window is read from the store
//!   only when the event falls within the allowance;
//! * dynamic: the amount the event carries at `amount_property`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::Value;

use super::{window_key, RateError, SEGMENTS};
use crate::contracts::{EnrichedEvent, Measure, ResolvedCharge};
use crate::jsonpath::JsonPath;
use crate::rating::{
    self, AllowanceMark, AllowanceRetraction, AllowanceWindow, Charge, ChargeModel, EventKey,
    Parts, PercentageModel, Pricing, QuantityChange, RatingError, SegmentState, ServiceInterval,
};
use crate::runtime::{Ctx, StageError};

/// Separates `id` and `source` in an event key; below every printable
/// character, so the order is by id first, then by source.
const EVENT_KEY_SEPARATOR: char = '\u{0}';

/// The event's position in event order: time to the nanosecond, then id,
/// then source (DESIGN's LATEST rule, also the percentage allowance's and
/// the proration timeline's order).
pub fn event_key(enriched: &EnrichedEvent) -> EventKey {
    let event = &enriched.event;
    EventKey::at(
        event.time,
        format!("{}{EVENT_KEY_SEPARATOR}{}", event.id, event.source),
    )
}

/// Allowance windows read or changed while rating one event, by segment id.
pub type Windows = BTreeMap<String, AllowanceWindow>;

/// One measure's pricing inputs.
pub struct Pricer<'a> {
    pub enriched: &'a EnrichedEvent,
    pub measure: &'a Measure,
    pub charge: &'a ResolvedCharge,
    pub segment_id: &'a str,
}

impl Pricer<'_> {
    fn rating(&self, source: RatingError) -> StageError {
        RateError::Rating {
            meter: self.measure.meter.clone(),
            source,
        }
        .into()
    }

    fn value(&self) -> Result<Decimal, StageError> {
        self.measure.value.ok_or_else(|| {
            RateError::MissingValue {
                meter: self.measure.meter.clone(),
                aggregation: self.charge.aggregation,
            }
            .into()
        })
    }

    /// The marginal amount and parts of the measure whose quantity moved by
    /// `change` in `state`.
    pub fn price(
        &self,
        state: &mut SegmentState,
        change: &QuantityChange,
        windows: &mut Windows,
        ctx: &Ctx<'_>,
    ) -> Result<Charge, StageError> {
        let model = &self.charge.charge;
        model
            .check_aggregation(self.charge.aggregation, self.charge.prorate)
            .map_err(|e| self.rating(e.into()))?;
        match (model.pricing(), model) {
            (Pricing::Cumulative, _) if self.charge.prorate => self.prorated(state),
            (Pricing::Cumulative, _) => self.cumulative(change),
            (Pricing::PerEvent, ChargeModel::Percentage(p)) => {
                self.percentage(p, state, windows, ctx)
            }
            (
                Pricing::PerEvent,
                ChargeModel::Dynamic {
                    amount_property,
                    currency_property,
                },
            ) => self.dynamic(amount_property, currency_property.as_deref()),
            (Pricing::PerEvent, other) => Err(self.rating(RatingError::NotCumulative {
                model: other.name(),
            })),
        }
    }

    fn cumulative(&self, change: &QuantityChange) -> Result<Charge, StageError> {
        let model = &self.charge.charge;
        let amount = model.marginal(change).map_err(|e| self.rating(e))?;
        let parts = match model {
            ChargeModel::GraduatedPercentage { .. } if change.before != change.after => {
                let after = model.parts(change.after).map_err(|e| self.rating(e))?;
                let before = model.parts(change.before).map_err(|e| self.rating(e))?;
                rating::parts_delta(&after, &before).map_err(|e| self.rating(e))?
            }
            _ => Parts::new(),
        };
        Ok(Charge { amount, parts })
    }

    fn interval(&self) -> ServiceInterval {
        let e = self.enriched;
        ServiceInterval {
            period_start: e.billing_period.start,
            period_end: e.billing_period.end,
            subscription_end: e.subscription_end,
        }
    }

    fn prorated(&self, state: &mut SegmentState) -> Result<Charge, StageError> {
        let mut timeline = state.timeline.clone().unwrap_or_default();
        let charge = timeline
            .rate(
                &self.charge.charge,
                self.charge.aggregation,
                &self.interval(),
                event_key(self.enriched),
                self.value()?,
            )
            .map_err(|err| self.rating(err))?;
        state.timeline = Some(timeline);
        Ok(charge)
    }

    /// Taking back the (rated) event of a prorated measure: the change its
    /// removal makes to the segment's prorated total
    /// ([`rating::Timeline::retract`]) and the quantity (with LATEST's key)
    /// of the observations left; `None` when the timeline does not hold it.
    pub fn retract_prorated(
        &self,
        state: &mut SegmentState,
    ) -> Result<Option<(Charge, Decimal, Option<EventKey>)>, StageError> {
        let mut timeline = state.timeline.clone().unwrap_or_default();
        let aggregation = self.charge.aggregation;
        let key = event_key(self.enriched);
        let retracted = timeline
            .retract(&self.charge.charge, aggregation, &self.interval(), &key)
            .map_err(|err| self.rating(err))?;
        let Some(charge) = retracted else {
            return Ok(None);
        };
        let (quantity, latest) = timeline.quantity(aggregation);
        state.timeline = Some(timeline);
        Ok(Some((charge, quantity, latest)))
    }

    fn percentage(
        &self,
        model: &PercentageModel,
        state: &mut SegmentState,
        windows: &mut Windows,
        ctx: &Ctx<'_>,
    ) -> Result<Charge, StageError> {
        let key = event_key(self.enriched);
        let value = self.value()?;
        let mark = state.allowance.clone().unwrap_or(AllowanceMark {
            closed: false,
            last: None,
        });
        if mark.is_beyond(&key) {
            model.validate().map_err(|e| self.rating(e.into()))?;
            return model.paid(value, Decimal::ZERO).map_err(|e| self.rating(e));
        }
        let mut window = self.window(windows, ctx)?;
        let charge = window.rate(model, key, value).map_err(|e| self.rating(e))?;
        state.allowance = Some(window.mark());
        windows.insert(self.segment_id.to_owned(), window);
        Ok(charge)
    }

    /// Taking back the (rated) event of a percentage measure: the change
    /// its removal makes to the period's fees, or why it cannot be taken
    /// back ([`AllowanceWindow::retract`]). The window is read only when
    /// the event is not past the allowance.
    pub fn retract_percentage(
        &self,
        model: &PercentageModel,
        state: &mut SegmentState,
        windows: &mut Windows,
        ctx: &Ctx<'_>,
    ) -> Result<AllowanceRetraction, StageError> {
        let key = event_key(self.enriched);
        let value = self.value()?;
        let beyond = state.allowance.as_ref().is_some_and(|m| m.is_beyond(&key));
        if beyond {
            model.validate().map_err(|e| self.rating(e.into()))?;
            let refund = model.refund(value).map_err(|e| self.rating(e))?;
            return Ok(AllowanceRetraction::Priced(refund));
        }
        let mut window = self.window(windows, ctx)?;
        let retraction = window
            .retract(model, &key, value)
            .map_err(|e| self.rating(e))?;
        state.allowance = Some(window.mark());
        windows.insert(self.segment_id.to_owned(), window);
        Ok(retraction)
    }

    /// The segment's allowance window: as this event left it, else as
    /// stored, else empty.
    fn window(&self, windows: &mut Windows, ctx: &Ctx<'_>) -> Result<AllowanceWindow, StageError> {
        if let Some(w) = windows.remove(self.segment_id) {
            return Ok(w);
        }
        match ctx.stores.get(SEGMENTS, &window_key(self.segment_id))? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                StageError::Fatal(format!(
                    "segment {}: stored allowance window is corrupt: {e}",
                    self.segment_id
                ))
            }),
            None => Ok(AllowanceWindow::default()),
        }
    }

    fn dynamic(
        &self,
        amount_property: &str,
        currency_property: Option<&str>,
    ) -> Result<Charge, StageError> {
        let data = &self.enriched.event.data;
        let meter = || self.measure.meter.clone();
        let amount_error = |detail: String| -> StageError {
            RateError::DynamicAmount {
                meter: meter(),
                detail,
            }
            .into()
        };
        let amount = rating::dynamic_amount(data, amount_property).map_err(amount_error)?;
        if let Some(path) = currency_property {
            let currency = &self.enriched.currency;
            let given = JsonPath::parse(path)
                .ok()
                .and_then(|p| p.get(data).and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            if given != *currency {
                return Err(RateError::DynamicCurrency {
                    meter: meter(),
                    detail: format!("{path} is {given:?}, the plan's currency is {currency}"),
                }
                .into());
            }
        }
        Ok(Charge {
            amount,
            parts: Parts::new(),
        })
    }
}
