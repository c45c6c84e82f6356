//! `usage.identified`: what validate and dedupe exchange so that duplicates
//! are found across the whole topic while every customer's events keep the
//! order they had on `usage.events`.
//!
//! 1. validate numbers the valid events of each `usage.events` partition
//!    (`seq` 0, 1, 2, ... per partition, kept in its `sequence` store) and
//!    sends each as a **claim** keyed by its identity ([`identity_key`]), so
//!    every copy of a (`source`, `id`) reaches one partition of
//!    `usage.identified`, whatever subject or partition it came with.
//! 2. dedupe, on that partition, decides first copy or duplicate and sends a
//!    **verdict** to partition `origin_partition` of the same topic.
//! 3. dedupe, on the origin partition, releases the verdicts in `seq` order
//!    (buffering those that arrive early): first copies go to
//!    `usage.validated` keyed by subject in exactly their `usage.events`
//!    order, so late events, tiers and the books downstream come out the
//!    same on every run and after every crash.
//!
//! [`identity_key`]: super::identity_key

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Version of this contract; see [`super`] for what a change may do.
pub const GATE_RECORD_VERSION: u32 = 1;

/// Which of the two records of `usage.identified` a [`GateRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateKind {
    Claim,
    Verdict,
}

/// One record of `usage.identified`. JSON, fields in this order, e.g.
///
/// ```json
/// {"kind":"claim","origin_partition":3,"seq":41,"event":{"source":"svc","id":"e-1",…}}
/// {"kind":"verdict","origin_partition":3,"seq":41,"first_copy":true,"event":{…}}
/// {"kind":"verdict","origin_partition":3,"seq":42,"first_copy":false}
/// ```
///
/// * a claim is keyed by the event's identity and carries the
///   [`super::ValidatedEvent`] as validate wrote it;
/// * a verdict is written to partition `origin_partition` (keyed by the
///   identity too); it carries the event, unchanged, when it is the first
///   copy, and nothing when it is a duplicate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateRecord {
    pub kind: GateKind,
    /// The `usage.events` partition the event was read from.
    pub origin_partition: i32,
    /// Its number among the valid events of that partition, from 0.
    pub seq: u64,
    /// Verdicts only: whether this copy is the first of its identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_copy: Option<bool>,
    /// The validated event's JSON, byte for byte (claims, and verdicts of
    /// first copies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Box<RawValue>>,
}

impl GateRecord {
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
