//! `finance.postings.acks`: what the general ledger did with each posting,
//! written by `meterline ledger-sync`, read by ERP operators, reconcile and
//! anyone who must prove a posting reached the books.

use serde::{Deserialize, Serialize};

/// Version of this contract; see [`super`] for what a change may do.
pub const LEDGER_ACK_VERSION: u32 = 1;

/// Whether the ledger holds the posting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// In the ledger, once, under `ledger_row_id`.
    Accepted,
    /// Refused with `reason`; on `meterline.dlq.ledger`, replayable.
    Rejected,
}

/// Where the acknowledged record was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckSource {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// One acknowledgement, keyed by the posting's idempotency key on a
/// compacted topic: the last one is the posting's standing. Equal
/// decisions make equal bytes (no wall-clock time), so an ack sent twice
/// after a crash changes nothing.
///
/// ```json
/// {"idempotency_key":"5d41…","status":"rejected","ledger_row_id":null,
///  "reason":"closed_period","message":"2026-01-31 is in the closed period 2026-01-01..2026-01-31 of ml-us",
///  "source":{"topic":"finance.postings","partition":2,"offset":118}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerAck {
    pub idempotency_key: String,
    pub status: AckStatus,
    /// The ledger's `postings.posting_id`, when accepted.
    pub ledger_row_id: Option<i64>,
    /// The stable reason code, when rejected.
    pub reason: Option<String>,
    pub message: Option<String>,
    pub source: AckSource,
}

impl LedgerAck {
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
