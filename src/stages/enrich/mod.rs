//! The enrich stage: ties each validated event to the contract in force when
//! it happened (customer, subscription, plan version, legal entity, currency,
//! GL accounts, billing period). Resolution rules live in [`resolve`].
//!
//! # Flow
//!
//! For each record of `usage.validated` (a [`ValidatedEvent`] JSON; anything
//! else is rejected to `meterline.dlq.enrich` with
//! [`MALFORMED_VALIDATED_EVENT`]):
//!
//! * it resolves => its [`EnrichedEvent`] goes to `usage.enriched`, keyed by
//!   the customer id (the event's `subject`), stamped by the broker
//!   (append time, like every meterline topic);
//! * it does not => it is **parked**: kept in the `parked` store and copied
//!   to `usage.exceptions` (key = subject, value = the validated event bytes
//!   unchanged, headers `meterline.reason` = the park code,
//!   `meterline.message`, `meterline.original.topic` = the namespaced
//!   `usage.validated`, `meterline.stage` = `enrich`, plus the other
//!   diagnostic headers of [`crate::runtime::dlq`]), so operators see it and
//!   `meterline replay --from usage.exceptions` can send it back. A
//!   first parking also sends the invoice stage an `event_parked` notice on
//!   `billing.commands` (keyed by the customer), and the event flowing on
//!   later an `event_unparked` one, in the same transactions: the invoice
//!   stage's `parked_events` hold rule reads them.
//!
//! The reference tables ([`RefTables`]) are held in memory, fed by
//! [`Processor::on_table_record`]; the runtime rebuilds them from the three
//! compacted `ref.*` topics at every start. A malformed table record is
//! logged, counted and skipped; the previous value under its key stays.
//!
//! A retraction goes on unresolved (rate prices the event it names in the
//! context it was rated in); an amendment is resolved like the event it
//! carries. Either one whose event is parked in this partition is parked
//! too (`correction_target_parked`): passed on, it would find nothing to
//! take back in rate, and the event would be billed in full once it
//! healed. It is released after the event it waits for: a release, while
//! some correction waits, re-checks the released event's customer at once.
//!
//! # Self-healing, exactly once
//!
//! A parked event is re-resolved in [`Processor::punctuate`], which runs
//! inside the partition's open transaction: when it now resolves, its parked
//! entry is deleted and its enriched event emitted **in the same Kafka
//! transaction**, so it flows exactly once whatever crashes (a rolled-back
//! delete comes back with the changelog, and so does the re-check).
//!
//! What is re-checked, and when (per partition):
//!
//! * **targeted**: a customer or subscription record fires a
//!   [`RefTrigger`] naming a customer id; that customer's parked events
//!   (one key range, see below) are re-resolved at the next punctuation;
//! * **full sweep**: a plan record (a plan is shared by many customers), a
//!   newly assigned partition (its store may hold events parked by another
//!   instance, or before a restart, against older tables), an aborted
//!   transaction (its re-emissions were rolled back), and, as a safety net,
//!   every [`PARKED_RESWEEP_INTERVAL_MS`] re-resolve every parked event of
//!   the partition.
//!
//! Either way at most [`PARKED_RECHECK_BATCH_MAX`] parked entries are read
//! per partition per punctuation, so a large backlog never makes one
//! transaction huge; the work resumes from a cursor at the next one. An
//! event that is still unresolved stays parked; only a change of its park
//! code (or of its revenue at risk) rewrites its entry, and no new
//! exceptions copy is written for it.
//!
//! # Replays of `usage.exceptions`
//!
//! A record replayed from `usage.exceptions` (header
//! `meterline.replayed.from` naming that topic) is the copy of an event that
//! was parked. If its parked entry is gone, the event has already flowed
//! (self-healed, or an earlier replay resolved it) and the copy is dropped:
//! without this, replaying the exceptions topic after self-healing would
//! bill the events twice. If the entry is still there, the copy is resolved
//! like a new event: resolved => entry deleted and event emitted; still
//! unresolved => entry updated (first-parked time kept) and a fresh
//! exceptions copy written, so the operator sees it failed again.
//!
//! # The parked store (store 0, `parked`)
//!
//! | key | value |
//! |---|---|
//! | `P` customer, source, id | [`PARKED_VALUE_FORMAT`] byte, u32 length, meta JSON, then the validated event bytes unchanged |
//! | `A` reason, first-parked ms, customer, source, id | empty: index for the oldest parked event per reason |
//! | `S` | JSON: parked events per reason code, revenue at risk per currency |
//!
//! Keys are built with [`crate::store::keys`]: customer first, so one
//! customer's parked events are one contiguous range. The statistics live in
//! the store, written in the same transaction as the entries they count, so
//! they are exact after aborts, restarts and rebalances without a rebuild.
//!
//! # Metrics
//!
//! * `meterline_enrich_parked_events{reason}`: parked events, by park code;
//! * `meterline_enrich_parked_oldest_age_seconds{reason}`: age of the oldest;
//! * `meterline_enrich_revenue_at_risk{currency, legal_entity}`: the list
//!   price of the parked quantities (below), unrounded;
//! * `meterline_event_time_lag_seconds{stage="enrich"}`: wall clock minus
//!   the event time of the last validated event read;
//! * `meterline_enrich_parked_total{reason}`, `meterline_enrich_reemitted_total`,
//!   `meterline_enrich_exception_replays_dropped_total`,
//!   `meterline_enrich_table_records_refused_total{table, code}`: counters.
//!
//! The gauges add up the partitions this instance owns and are refreshed at
//! every punctuation. Counters count attempts: a transaction that aborts
//! after counting is counted again when redone, as the runtime's own
//! `records_out` counter is.
//!
//! **Revenue at risk** of a parked event is an estimate: the price of the
//! event's own quantities alone (each measure's value; 1 for COUNT and
//! UNIQUE_COUNT), as if it were the first usage of its period, under the
//! charge that would apply: the subscription's override, else the charge of
//! its plan version in force at the event's time, in the plan's currency.
//! The subscription is the one the park reason names, else the customer's
//! only subscription active at the event's time. When no subscription or no
//! plan version is known (unknown customer without subscription, ambiguous
//! subscription, unknown plan), the amount is not known and counts as 0.
//! The amount is fixed when the event is parked (and when its park code
//! changes), and subtracted exactly when it leaves.
//!
//! [`ValidatedEvent`]: crate::contracts::ValidatedEvent
//! [`EnrichedEvent`]: crate::contracts::EnrichedEvent
//! [`RefTables`]: crate::refdata::RefTables
//! [`Processor::on_table_record`]: crate::runtime::Processor::on_table_record
//! [`Processor::punctuate`]: crate::runtime::Processor::punctuate
//! [`RefTrigger`]: crate::refdata::RefTrigger

pub mod resolve;

mod events;
mod metrics;
mod parked;
mod processor;
pub mod reason;
mod recheck;
mod stats;
#[cfg(test)]
mod tests;

use crate::store::StoreId;

pub use parked::{
    is_entry_key, parked_summary, ParkedStoreError, ParkedSummary, PARKED_VALUE_FORMAT,
};
pub use processor::EnrichProcessor;
pub use recheck::{PARKED_RECHECK_BATCH_MAX, PARKED_RESWEEP_INTERVAL_MS};

/// The parked store's index in the stage's store list.
const PARKED: StoreId = 0;
/// Lineage and counters (see [`crate::lineage`]).
const LINEAGE: StoreId = 1;
const COUNTERS: StoreId = 2;

const MS_PER_SECOND: i64 = 1_000;

/// Reject code of an input record that is not a validated event.
pub use reason::MALFORMED_VALIDATED_EVENT;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("meters: {0}")]
    Meters(String),
}
