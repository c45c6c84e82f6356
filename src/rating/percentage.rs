//! The percentage model: a take rate charged per transaction.
//!
//! An event's value is a transaction amount (a SUM meter). A *paid* event
//! pays
//!
//! ```text
//! fee = clamp(billable * rate / 100 + fixed_fee_per_event, min_per_event, max_per_event)
//! ```
//!
//! where `billable` is its amount less what is left of the free amount. A
//! *free* event pays nothing (no fixed fee, no minimum). The allowances are
//! consumed one after the other, in event order (event time to the
//! nanosecond, then id, then source: [`EventKey`], DESIGN's LATEST order):
//! first the `free_events` earliest events are free, then the following
//! events' amounts consume `free_units`; the event that exhausts
//! `free_units` pays for the part beyond it. Every event after that is paid
//! in full.
//!
//! Because the per-transaction bounds make the charge a sum of per-event
//! fees, not a function of the period total, the segment keeps the events
//! that hold the allowance (the *allowance window*, [`AllowanceWindow`]): an
//! event is rated by the change it makes to the period's total,
//! `total(events with it) - total(events without it)`, so the marginal
//! amounts of a segment add up to the fees of its events in event order,
//! whatever order they arrived in:
//!
//! * an event later than every event in the window, once the allowances are
//!   used up, pays its own fee (the common case; the window is not read);
//! * a *late* event, earlier than events already rated, takes its place in
//!   event order: if it falls within the allowance it is free, and the
//!   event it pushes out of the allowance is charged, in the late event's
//!   marginal amount (its parts say so: `paid_events` may be 2).
//!
//! The window is bounded by [`MAX_ALLOWANCE_WINDOW_EVENTS`]. Only a free
//! amount consumed by more events than that can reach the bound; then the
//! earliest events are *settled*: their share of the allowance is final,
//! and an event that arrives later with an earlier time than the settled
//! ones ranks right after them. That is the one place where arrival order
//! matters, and it is still deterministic under replay (rate reads its
//! input in log order, exactly once).

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::charge::{non_negative, percent_of_one, percentage};
use super::{add, mul, sub, ChargeModelError, EventKey, Parts, RatingError};

/// Most free events a percentage model may grant (and so the most events
/// the allowance window holds for them).
pub const MAX_FREE_EVENTS: u32 = 10_000;
/// Most events the allowance window of one segment holds (see the module
/// docs for what happens beyond).
pub const MAX_ALLOWANCE_WINDOW_EVENTS: usize = 10_000;

/// Names of the parts of a percentage charge (see [`Parts`]).
pub mod part {
    pub const FREE_EVENTS: &str = "free_events";
    pub const FREE_AMOUNT: &str = "free_amount";
    pub const PAID_EVENTS: &str = "paid_events";
    pub const BILLABLE_AMOUNT: &str = "billable_amount";
    pub const PERCENTAGE_FEE: &str = "percentage_fee";
    pub const FIXED_FEES: &str = "fixed_fees";
    pub const MIN_MAX_ADJUSTMENT: &str = "min_max_adjustment";
}

/// `{"model": "percentage", "rate": "1.3", "fixed_fee_per_event": "0.30",
/// "min_per_event": "0.50", "max_per_event": "5.00", "free_events": 1000,
/// "free_units": "0"}`; every field but `rate` is optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PercentageModel {
    /// Percent of the billable amount, in `[0, 100]`.
    #[serde(with = "rust_decimal::serde::str")]
    pub rate: Decimal,
    #[serde(default, with = "rust_decimal::serde::str")]
    pub fixed_fee_per_event: Decimal,
    /// Free amount of the period's transactions (after the free events).
    #[serde(default, with = "rust_decimal::serde::str")]
    pub free_units: Decimal,
    /// The first N events of the period are free.
    #[serde(default)]
    pub free_events: u32,
    #[serde(
        default,
        with = "crate::money::optional_decimal_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_per_event: Option<Decimal>,
    #[serde(
        default,
        with = "crate::money::optional_decimal_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_per_event: Option<Decimal>,
}

/// An amount and the parts that explain it (they add up to it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Charge {
    pub amount: Decimal,
    pub parts: Parts,
}

impl Charge {
    fn free_event() -> Self {
        Charge {
            amount: Decimal::ZERO,
            parts: BTreeMap::from([(part::FREE_EVENTS.to_owned(), Decimal::ONE)]),
        }
    }

    fn free_amount(value: Decimal) -> Self {
        Charge {
            amount: Decimal::ZERO,
            parts: BTreeMap::from([(part::FREE_AMOUNT.to_owned(), value)]),
        }
    }

    fn add(&mut self, other: &Charge) -> Result<(), RatingError> {
        self.amount = add(self.amount, other.amount)?;
        super::add_parts(&mut self.parts, &other.parts)
    }

    /// `self - before`.
    pub fn minus(&self, before: &Charge) -> Result<Charge, RatingError> {
        Ok(Charge {
            amount: sub(self.amount, before.amount)?,
            parts: super::parts_delta(&self.parts, &before.parts)?,
        })
    }
}

impl PercentageModel {
    /// The issue's take rate, for tests: 1.3% + 0.30 per transaction, at
    /// least 0.50, at most 5.00, the first 2 transactions free.
    #[cfg(test)]
    pub(crate) fn example() -> Self {
        PercentageModel {
            rate: Decimal::new(13, 1),
            fixed_fee_per_event: Decimal::new(30, 2),
            free_units: Decimal::ZERO,
            free_events: 2,
            min_per_event: Some(Decimal::new(50, 2)),
            max_per_event: Some(Decimal::new(500, 2)),
        }
    }

    pub fn validate(&self) -> Result<(), ChargeModelError> {
        percentage(self.rate, || "rate".into())?;
        non_negative(self.fixed_fee_per_event, || "fixed_fee_per_event".into())?;
        if self.free_units < Decimal::ZERO {
            return Err(ChargeModelError::NegativeFreeUnits);
        }
        if self.free_events > MAX_FREE_EVENTS {
            return Err(ChargeModelError::TooManyFreeEvents {
                count: self.free_events,
                max: MAX_FREE_EVENTS,
            });
        }
        if let Some(min) = self.min_per_event {
            non_negative(min, || "min_per_event".into())?;
        }
        if let Some(max) = self.max_per_event {
            non_negative(max, || "max_per_event".into())?;
        }
        match (self.min_per_event, self.max_per_event) {
            (Some(min), Some(max)) if min > max => Err(ChargeModelError::MinAboveMax { min, max }),
            _ => Ok(()),
        }
    }

    /// The change taking back a paid event past the allowance makes: its
    /// own fee, negated, with its parts.
    pub fn refund(&self, value: Decimal) -> Result<Charge, RatingError> {
        Charge::default().minus(&self.paid(value, Decimal::ZERO)?)
    }

    /// The fee of a paid event with `billable` amount, `free` of it having
    /// been covered by the free amount.
    pub fn paid(&self, billable: Decimal, free: Decimal) -> Result<Charge, RatingError> {
        let percentage_fee = mul(billable, percent_of_one(self.rate)?)?;
        let raw = add(percentage_fee, self.fixed_fee_per_event)?;
        let mut fee = raw;
        if let Some(min) = self.min_per_event {
            fee = fee.max(min);
        }
        if let Some(max) = self.max_per_event {
            fee = fee.min(max);
        }
        let mut parts = Parts::new();
        let mut put = |name: &str, value: Decimal| {
            if !value.is_zero() {
                parts.insert(name.to_owned(), value);
            }
        };
        put(part::PAID_EVENTS, Decimal::ONE);
        put(part::BILLABLE_AMOUNT, billable);
        put(part::FREE_AMOUNT, free);
        put(part::PERCENTAGE_FEE, percentage_fee);
        put(part::FIXED_FEES, self.fixed_fee_per_event);
        put(part::MIN_MAX_ADJUSTMENT, sub(fee, raw)?);
        Ok(Charge { amount: fee, parts })
    }
}

/// One event held by the allowance window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowEvent {
    key: EventKey,
    #[serde(with = "rust_decimal::serde::str")]
    value: Decimal,
}

/// The allowance consumed by events no longer in the window (see the module
/// docs): all of them were free.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settled {
    /// Settled events that were free events.
    slot_events: u32,
    /// The free amount settled events consumed.
    #[serde(with = "rust_decimal::serde::str")]
    amount: Decimal,
    /// The greatest key settled.
    through: Option<EventKey>,
}

impl Settled {
    fn is_empty(&self) -> bool {
        self.through.is_none()
    }
}

/// What a segment must keep so that a late event can take its place in the
/// allowance (see the module docs). Serializable, for a state store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowanceWindow {
    #[serde(default, skip_serializing_if = "Settled::is_empty")]
    settled: Settled,
    /// In event order.
    events: Vec<WindowEvent>,
    /// The allowances are used up by the events in the window.
    closed: bool,
}

/// A summary of a window small enough to keep with the segment's state:
/// whether an event can be priced without reading the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowanceMark {
    pub closed: bool,
    /// The greatest key in the window.
    pub last: Option<EventKey>,
}

impl AllowanceMark {
    /// Whether an event with `key` is past the allowance: it pays its own
    /// fee and leaves the window unchanged.
    pub fn is_beyond(&self, key: &EventKey) -> bool {
        self.closed && self.last.as_ref().is_none_or(|last| key > last)
    }
}

/// What taking back one event of a percentage segment comes to
/// ([`AllowanceWindow::retract`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowanceRetraction {
    /// The change to the period's total (zero or negative) and its parts.
    Priced(Charge),
    /// Why the event cannot be taken back.
    Unsupported(&'static str),
}

/// The result of walking the window's events in order.
struct Walk {
    total: Charge,
    /// `Some(n)`: the allowances are used up after the first `n` events.
    used_up_after: Option<usize>,
}

impl AllowanceWindow {
    pub fn mark(&self) -> AllowanceMark {
        AllowanceMark {
            closed: self.closed,
            last: self.events.last().map(|e| e.key.clone()),
        }
    }

    /// Events held (for metrics and tests).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Rates one event: the change it makes to the period's total. On error
    /// the window is unchanged.
    pub fn rate(
        &mut self,
        model: &PercentageModel,
        key: EventKey,
        value: Decimal,
    ) -> Result<Charge, RatingError> {
        model.validate()?;
        if value < Decimal::ZERO {
            return Err(RatingError::NegativeValue { value });
        }
        if self.mark().is_beyond(&key) {
            return model.paid(value, Decimal::ZERO);
        }
        let before = self.walk(model, &self.events)?;
        let position = match &self.settled.through {
            Some(through) if key < *through => 0,
            _ => self.events.partition_point(|e| e.key <= key),
        };
        // In place (no copy of the window per event); taken out again if
        // pricing fails, so an error leaves the window as it was.
        self.events.insert(position, WindowEvent { key, value });
        let priced = self
            .walk(model, &self.events)
            .and_then(|after| Ok((after.total.minus(&before.total)?, after.used_up_after)));
        let (charge, used_up_after) = match priced {
            Ok(priced) => priced,
            Err(e) => {
                self.events.remove(position);
                return Err(e);
            }
        };
        if let Some(kept) = used_up_after {
            self.events.truncate(kept);
        }
        self.closed = used_up_after.is_some();
        self.settle(model)?;
        Ok(charge)
    }

    /// Takes back the event `key` with `value`, rated before: the change
    /// its removal makes to the period's total, so that the segment's
    /// amounts add up to the fees of the events that remain, in event
    /// order. Past the allowance, that is its own fee; within an allowance
    /// not yet used up (every event free), nothing but its free part, and
    /// it leaves the window. Within an allowance used up, removing it would
    /// hand its share to events the window no longer holds (they were
    /// priced in full): refused, as is an event whose share was settled.
    /// On error or refusal the window is unchanged.
    pub fn retract(
        &mut self,
        model: &PercentageModel,
        key: &EventKey,
        value: Decimal,
    ) -> Result<AllowanceRetraction, RatingError> {
        model.validate()?;
        if self.mark().is_beyond(key) {
            return model.refund(value).map(AllowanceRetraction::Priced);
        }
        if self.closed {
            return Ok(AllowanceRetraction::Unsupported(
                "it used the free allowance (free_events / free_units), which would pass to \
                 events already charged in full",
            ));
        }
        let Some(position) = self.events.iter().position(|e| e.key == *key) else {
            return Ok(AllowanceRetraction::Unsupported(
                "its share of the free allowance is settled (the allowance window was full)",
            ));
        };
        let before = self.walk(model, &self.events)?;
        let removed = self.events.remove(position);
        let after = self
            .walk(model, &self.events)
            .and_then(|after| Ok((after.total.minus(&before.total)?, after.used_up_after)));
        match after {
            Ok((charge, used_up_after)) => {
                // An allowance not used up with the event is not without it.
                debug_assert!(used_up_after.is_none());
                Ok(AllowanceRetraction::Priced(charge))
            }
            Err(e) => {
                self.events.insert(position, removed);
                Err(e)
            }
        }
    }

    /// Prices `events` in order against the allowance left after the
    /// settled ones.
    fn walk(&self, model: &PercentageModel, events: &[WindowEvent]) -> Result<Walk, RatingError> {
        let mut slots = model.free_events.saturating_sub(self.settled.slot_events);
        let mut left = sub(model.free_units, self.settled.amount)?.max(Decimal::ZERO);
        let mut used_up_after = (slots == 0 && left.is_zero()).then_some(0);
        let mut total = Charge::default();
        for (index, event) in events.iter().enumerate() {
            let charge = if slots > 0 {
                slots = slots.saturating_sub(1);
                Charge::free_event()
            } else if left.is_zero() {
                model.paid(event.value, Decimal::ZERO)?
            } else if event.value <= left {
                left = sub(left, event.value)?;
                Charge::free_amount(event.value)
            } else {
                let free = left;
                left = Decimal::ZERO;
                model.paid(sub(event.value, free)?, free)?
            };
            total.add(&charge)?;
            if used_up_after.is_none() && slots == 0 && left.is_zero() {
                used_up_after = Some(index.saturating_add(1));
            }
        }
        Ok(Walk {
            total,
            used_up_after,
        })
    }

    /// Keeps the window within [`MAX_ALLOWANCE_WINDOW_EVENTS`] by settling
    /// its earliest events (all free while the window is open).
    fn settle(&mut self, model: &PercentageModel) -> Result<(), RatingError> {
        while self.events.len() > MAX_ALLOWANCE_WINDOW_EVENTS {
            let head = self.events.remove(0);
            if self.settled.slot_events < model.free_events {
                self.settled.slot_events = self.settled.slot_events.saturating_add(1);
            } else {
                self.settled.amount = add(self.settled.amount, head.value)?;
            }
            if self.settled.through.as_ref().is_none_or(|t| head.key > *t) {
                self.settled.through = Some(head.key);
            }
        }
        Ok(())
    }
}
