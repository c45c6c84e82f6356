//! The records that flow between stages: the only types two stages share.
//!
//! | record | topic | written by | read by |
//! |---|---|---|---|
//! | [`CloudEvent`] | `usage.events` | producers | validate |
//! | [`GateRecord`] (a claim carrying a [`ValidatedEvent`]) | `usage.identified` (keyed by [`identity_key`]) | validate | dedupe |
//! | [`GateRecord`] (a verdict) | `usage.identified` (partition of origin) | dedupe | dedupe |
//! | [`ValidatedEvent`] | `usage.validated` (keyed by subject) | dedupe | enrich |
//! | [`EnrichedEvent`], or a [`RetractionRecord`] | `usage.enriched` | enrich | rate |
//! | [`RerateRecord`] | `usage.enriched` (keyed by customer) | `meterline rerate` | rate |
//! | [`RatedEvent`] | `usage.rated` | rate | aggregate, reconcile |
//! | [`ClosedWindow`] | `usage.windows` | aggregate | post, reconcile |
//! | [`Posting`] | `finance.postings` | post (accruals, control totals), invoice (what waits for approval) | ERP connectors, reconcile |
//! | [`Command`] | `billing.commands` (keyed by customer) | operators (`meterline invoices`), post (drafts), enrich (parked-event notices) | invoice |
//! | [`Invoice`] | `finance.invoices` (compacted, keyed by invoice id) | invoice | operators, the API, ERP connectors, ledger-sync |
//! | [`LedgerAck`] | `finance.postings.acks` (compacted, keyed by idempotency key) | ledger-sync | operators, reconcile |
//!
//! A stage imports these, the runtime, the stores and libraries, never
//! another stage (`tests/stage_imports.rs` enforces it). That keeps a stage
//! replaceable: what it owes the next one is written here, not in its code.
//!
//! # Versions
//! Each record has a version constant. Within a version a change may only
//! add a field that readers of the previous form can do without (an
//! `Option` or a `#[serde(default)]`); renaming, removing or changing the
//! meaning of a field is a new version, announced in the changelog, with a
//! period in which readers accept both. The tests below pin the wire form
//! of each record to a golden JSON document: a change that alters what is
//! written fails them, and so must be a decision, not an accident.
//!
//! Every record is JSON with fields in declaration order, decimals as
//! strings and instants as RFC 3339 UTC ([`rfc3339_utc`]), so equal records
//! serialize to equal bytes.

mod correction;
mod enriched;
mod gate;
mod invoice;
mod ledger;
mod posting;
mod rated;
mod usage;
mod window;

pub use correction::{
    Correction, CorrectionKind, Rerate, RerateCharge, RerateRecord, RetractionRecord,
    RERATE_RECORD_VERSION, RETRACTION_RECORD_VERSION,
};
pub use enriched::{
    rating_segment_id, rating_segment_key, segment_key_group, ChargeHead, ChargeSource,
    CustomerInfo, EnrichedEvent, EnrichedHead, EventHead, ResolvedCharge, Window,
    ENRICHED_EVENT_VERSION,
};
pub use gate::{GateKind, GateRecord, GATE_RECORD_VERSION};
pub use invoice::{
    invoice_id, optional_rfc3339, Command, CommandKind, CreditMemo, Dispute, DisputeOutcome,
    DraftPart, Hold, Invoice, InvoiceDocLine, InvoiceFilter, InvoiceStatus, InvoiceTotals,
    ParkedEvent, StatusChange, COMMAND_VERSION, INVOICE_VERSION, SIGNATURE_HEADER,
};
pub use ledger::{AckSource, AckStatus, LedgerAck, LEDGER_ACK_VERSION};
pub use posting::{
    ControlTotal, InvoiceLine, JournalLine, Posting, PostingType, Side, EXAMPLE_JOURNAL_ENTRY,
    POSTING_VERSION,
};
pub use rated::{RatedEvent, RatedHead, RatedMeasure, RatedOut, RATED_EVENT_VERSION};
pub use usage::{
    identity_key, rfc3339_utc, CloudEvent, Encoding, Measure, Origin, ValidatedEvent,
    CLOUDEVENTS_SPEC_VERSION,
};
pub use window::{
    segment_label, Clearing, ClosedWindow, PartitionClock, SegmentInfo, WindowKind,
    CLOSED_WINDOW_VERSION,
};

#[cfg(test)]
mod tests;
