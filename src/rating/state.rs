//! Cumulative state of one rating segment and how events move it.
//!
//! The state is small and serializable so a stream processor can keep one per
//! segment in its state store: the quantity, plus for LATEST the key of the
//! event that set it. UNIQUE_COUNT keeps no set here; the caller decides
//! whether a value is new from its own store ([`Observation::Distinct`]), or
//! uses [`InMemorySegment`], which keeps the set in memory for standalone use.
//!
//! Every `observe` is atomic: on error the state is unchanged.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{add, sub, RatingError};
use crate::meter::Aggregation;

/// Orders LATEST events: by event time at full nanosecond precision, ties
/// broken by event id. The derived `Ord` compares the fields in declaration
/// order, which is exactly that.
///
/// The time is split in two so that state stored before nanoseconds were kept
/// still reads: `event_time` is what it always was, and `sub_micro_ns` is the
/// rest of the time below it. State written by an older version has no
/// `sub_micro_ns` and reads as 0 (its event's nanoseconds were not recorded);
/// a key whose `sub_micro_ns` is 0 is written exactly as before.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventKey {
    /// Any monotone encoding of the event time; [`EventKey::at`] uses
    /// microseconds since the epoch.
    pub event_time: i64,
    /// Nanoseconds past `event_time`'s microsecond, `0..NANOS_PER_MICRO`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sub_micro_ns: u16,
    pub event_id: String,
}

/// Nanoseconds in a microsecond: the range of [`EventKey::sub_micro_ns`].
pub const NANOS_PER_MICRO: u32 = 1_000;

fn is_zero(n: &u16) -> bool {
    *n == 0
}

impl EventKey {
    /// The key of an event at `time`, to the nanosecond.
    pub fn at(time: DateTime<Utc>, event_id: impl Into<String>) -> Self {
        // `% NANOS_PER_MICRO` < 1000, so it fits a u16. A leap second's
        // nanoseconds (>= 1e9) still give a value in range.
        let sub_micro_ns =
            u16::try_from(time.timestamp_subsec_nanos() % NANOS_PER_MICRO).unwrap_or_default();
        EventKey {
            event_time: time.timestamp_micros(),
            sub_micro_ns,
            event_id: event_id.into(),
        }
    }
}

/// What one event tells a segment; which variant is valid depends on the
/// segment's aggregation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Observation {
    /// The event's value, for SUM and MAX.
    Value {
        #[serde(with = "rust_decimal::serde::str")]
        value: Decimal,
    },
    /// An event that counts, for COUNT.
    Occurrence,
    /// UNIQUE_COUNT, with the caller having checked its store whether the
    /// event's value was seen before in this segment.
    Distinct { is_new: bool },
    /// UNIQUE_COUNT, the value itself (canonicalized by the caller), to be
    /// deduplicated by an [`InMemorySegment`].
    DistinctValue { value: String },
    /// The event's value and ordering key, for LATEST.
    Latest {
        #[serde(with = "rust_decimal::serde::str")]
        value: Decimal,
        key: EventKey,
    },
}

impl Observation {
    /// A SUM or MAX observation.
    pub fn value(value: Decimal) -> Self {
        Observation::Value { value }
    }

    /// A UNIQUE_COUNT observation deduplicated by the caller.
    pub fn distinct(is_new: bool) -> Self {
        Observation::Distinct { is_new }
    }

    /// A UNIQUE_COUNT observation for [`InMemorySegment`].
    pub fn distinct_value(value: impl Into<String>) -> Self {
        Observation::DistinctValue {
            value: value.into(),
        }
    }

    /// A LATEST observation ordered by an event time in any monotone
    /// encoding (no sub-microsecond part).
    pub fn latest(value: Decimal, event_time: i64, event_id: impl Into<String>) -> Self {
        Observation::Latest {
            value,
            key: EventKey {
                event_time,
                sub_micro_ns: 0,
                event_id: event_id.into(),
            },
        }
    }

    /// A LATEST observation of an event at `time`, ordered to the nanosecond.
    pub fn latest_at(value: Decimal, time: DateTime<Utc>, event_id: impl Into<String>) -> Self {
        Observation::Latest {
            value,
            key: EventKey::at(time, event_id),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Observation::Value { .. } => "value",
            Observation::Occurrence => "occurrence",
            Observation::Distinct { .. } => "distinct",
            Observation::DistinctValue { .. } => "distinct_value",
            Observation::Latest { .. } => "latest",
        }
    }
}

/// The cumulative quantity before and after one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantityChange {
    #[serde(with = "rust_decimal::serde::str")]
    pub before: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub after: Decimal,
}

impl QuantityChange {
    /// `after - before`; negative when a LATEST quantity falls.
    pub fn delta(&self) -> Result<Decimal, RatingError> {
        sub(self.after, self.before)
    }

    fn unchanged(quantity: Decimal) -> Self {
        QuantityChange {
            before: quantity,
            after: quantity,
        }
    }
}

/// Cumulative state of one rating segment. Starts at quantity 0 each period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentState {
    aggregation: Aggregation,
    #[serde(with = "rust_decimal::serde::str")]
    quantity: Decimal,
    /// LATEST only: the key of the event whose value is the quantity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    latest: Option<EventKey>,
    /// A percentage charge's allowance, summarized (the window itself is
    /// kept apart, read only when an event falls within it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<super::AllowanceMark>,
    /// A prorated charge's timeline of observations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<super::Timeline>,
    /// What the segment has been billed so far: the sum of the marginal
    /// amounts the caller recorded ([`SegmentState::record_amount`]), so a
    /// corrected charge can be billed as `price(quantity) - amount`. None
    /// for state written before it was kept.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "rust_decimal::serde::str_option"
    )]
    amount: Option<Decimal>,
    /// MAX and LATEST: how many observations the caller keeps for
    /// corrections; None when it keeps none (another aggregation, or state
    /// written by an older version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    history: Option<u32>,
    /// More observations arrived than the caller's bound: the kept ones are
    /// incomplete, a retraction cannot fall back on them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    history_overflow: bool,
}

impl SegmentState {
    /// An empty segment (quantity 0).
    pub fn new(aggregation: Aggregation) -> Self {
        SegmentState {
            aggregation,
            quantity: Decimal::ZERO,
            latest: None,
            allowance: None,
            timeline: None,
            amount: Some(Decimal::ZERO),
            history: matches!(aggregation, Aggregation::Max | Aggregation::Latest).then_some(0),
            history_overflow: false,
        }
    }

    /// MAX and LATEST: whether the caller keeps one more observation for
    /// corrections (at most `max`; one more marks the history incomplete).
    pub fn keep_history(&mut self, max: u32) -> bool {
        match self.history {
            Some(n) if !self.history_overflow && n < max => {
                self.history = Some(n.saturating_add(1));
                true
            }
            Some(_) => {
                self.history_overflow = true;
                false
            }
            None => false,
        }
    }

    /// Whether every observation is kept (a retraction can fall back on
    /// the others).
    pub fn history_complete(&self) -> bool {
        self.history.is_some() && !self.history_overflow
    }

    /// A retraction of a MAX or LATEST observation: the quantity (and
    /// LATEST's key) the caller recomputed from the kept observations
    /// without it. On error the state is unchanged.
    pub fn fall_back(
        &mut self,
        quantity: Decimal,
        latest: Option<EventKey>,
    ) -> Result<QuantityChange, RatingError> {
        if !matches!(self.aggregation, Aggregation::Max | Aggregation::Latest) {
            return Err(RatingError::ObservationMismatch {
                aggregation: self.aggregation,
                observation: "fall_back",
            });
        }
        let before = self.quantity;
        self.quantity = non_negative(quantity)?;
        if self.aggregation == Aggregation::Latest {
            self.latest = latest;
        }
        self.history = self.history.map(|n| n.saturating_sub(1));
        Ok(QuantityChange {
            before,
            after: self.quantity,
        })
    }

    /// What the segment has been billed so far (see the field).
    pub fn amount(&self) -> Option<Decimal> {
        self.amount
    }

    /// Adds a marginal amount billed (nothing when the amount is unknown).
    pub fn record_amount(&mut self, marginal: Decimal) -> Result<(), RatingError> {
        if let Some(a) = self.amount {
            self.amount = Some(add(a, marginal)?);
        }
        Ok(())
    }

    pub fn aggregation(&self) -> Aggregation {
        self.aggregation
    }

    /// The cumulative quantity to price.
    pub fn quantity(&self) -> Decimal {
        self.quantity
    }

    /// LATEST only: the key of the event that set the quantity.
    pub fn latest(&self) -> Option<&EventKey> {
        self.latest.as_ref()
    }

    /// Applies one event. The observation must fit the aggregation (see
    /// [`Observation`]); values must be non-negative.
    ///
    /// A LATEST event replaces the quantity only if its key is greater than
    /// the current one: an older event arriving late, or a redelivery of the
    /// current one, leaves the quantity as it is.
    pub fn observe(&mut self, observation: Observation) -> Result<QuantityChange, RatingError> {
        let before = self.quantity;
        let after = match (self.aggregation, observation) {
            (Aggregation::Sum, Observation::Value { value }) => add(before, non_negative(value)?)?,
            (Aggregation::Count, Observation::Occurrence) => add(before, Decimal::ONE)?,
            // Keep the current representation when equal (e.g. "5" vs "5.0").
            (Aggregation::Max, Observation::Value { value }) => before.max(non_negative(value)?),
            (Aggregation::UniqueCount, Observation::Distinct { is_new }) => {
                if is_new {
                    add(before, Decimal::ONE)?
                } else {
                    before
                }
            }
            (Aggregation::UniqueCount, Observation::DistinctValue { .. }) => {
                return Err(RatingError::DistinctValueNeedsSet)
            }
            (Aggregation::Latest, Observation::Latest { value, key }) => {
                let value = non_negative(value)?;
                if self.latest.as_ref().is_some_and(|current| key <= *current) {
                    return Ok(QuantityChange::unchanged(before));
                }
                self.latest = Some(key);
                value
            }
            (aggregation, observation) => {
                return Err(RatingError::ObservationMismatch {
                    aggregation,
                    observation: observation.kind(),
                })
            }
        };
        self.quantity = after;
        Ok(QuantityChange { before, after })
    }
}

impl SegmentState {
    /// Removes one event's observation (a retraction): SUM its value,
    /// COUNT one occurrence, UNIQUE_COUNT one event of a member, where
    /// `Distinct { is_new: true }` says it was the member's last (the
    /// member leaves). MAX and LATEST keep no history to fall back to and
    /// are refused. The quantity never goes below 0; on error the state is
    /// unchanged.
    pub fn retract(&mut self, observation: Observation) -> Result<QuantityChange, RatingError> {
        let before = self.quantity;
        let after = match (self.aggregation, observation) {
            (Aggregation::Sum, Observation::Value { value }) => sub(before, non_negative(value)?)?,
            (Aggregation::Count, Observation::Occurrence) => sub(before, Decimal::ONE)?,
            (Aggregation::UniqueCount, Observation::Distinct { is_new }) => {
                if is_new {
                    sub(before, Decimal::ONE)?
                } else {
                    before
                }
            }
            (aggregation, observation) => {
                return Err(RatingError::ObservationMismatch {
                    aggregation,
                    observation: observation.kind(),
                })
            }
        };
        if after < Decimal::ZERO {
            return Err(RatingError::NegativeQuantity { quantity: after });
        }
        self.quantity = after;
        Ok(QuantityChange { before, after })
    }
}

fn non_negative(value: Decimal) -> Result<Decimal, RatingError> {
    if value < Decimal::ZERO {
        Err(RatingError::NegativeValue { value })
    } else {
        Ok(value)
    }
}

/// A [`SegmentState`] that also remembers the distinct values it has seen,
/// so UNIQUE_COUNT works without an external store. Accepts every
/// observation a `SegmentState` does, plus [`Observation::DistinctValue`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InMemorySegment {
    state: SegmentState,
    seen: BTreeSet<String>,
}

impl InMemorySegment {
    pub fn new(aggregation: Aggregation) -> Self {
        InMemorySegment {
            state: SegmentState::new(aggregation),
            seen: BTreeSet::new(),
        }
    }

    pub fn state(&self) -> &SegmentState {
        &self.state
    }

    /// Applies one event; see [`SegmentState::observe`].
    pub fn observe(&mut self, observation: Observation) -> Result<QuantityChange, RatingError> {
        match observation {
            Observation::DistinctValue { value } => {
                if self.state.aggregation != Aggregation::UniqueCount {
                    return Err(RatingError::ObservationMismatch {
                        aggregation: self.state.aggregation,
                        observation: "distinct_value",
                    });
                }
                let is_new = !self.seen.contains(&value);
                // Record the value only once the state accepted it, so an
                // error leaves both unchanged.
                let change = self.state.observe(Observation::Distinct { is_new })?;
                if is_new {
                    self.seen.insert(value);
                }
                Ok(change)
            }
            other => self.state.observe(other),
        }
    }
}
