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
//!   `meterline replay --from usage.exceptions` can send it back.
//!
//! The reference tables ([`RefTables`]) are held in memory, fed by
//! [`Processor::on_table_record`]; the runtime rebuilds them from the three
//! compacted `ref.*` topics at every start. A malformed table record is
//! logged, counted and skipped; the previous value under its key stays.
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

pub mod resolve;

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::event::ValidatedEvent;
use crate::lineage::{self, Count};
use crate::refdata::{RefKind, RefTables, RefTrigger};
use crate::runtime::dlq::{self, headers, last_header};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::store::keys::{KeyBuilder, KeyReader};
use crate::store::{PartitionStores, StoreId};
use crate::topology::{self, StageSpec};

use resolve::{meter_catalog, resolve, EnrichedEvent, MeterCatalog, ParkReason};

/// The parked store's index in the stage's store list.
const PARKED: StoreId = 0;
/// Lineage and counters (see [`crate::lineage`]).
const LINEAGE: StoreId = 1;
const COUNTERS: StoreId = 2;
/// Key prefixes of the parked store (see the module docs).
const ENTRY_PREFIX: u8 = b'P';
const AGE_INDEX_PREFIX: u8 = b'A';
const STATS_KEY: &[u8] = b"S";
/// First byte of a parked value: the encoding version.
pub const PARKED_VALUE_FORMAT: u8 = 1;
/// Parked entries re-resolved per partition per punctuation, at most (bounds
/// one transaction; the rest wait for the next punctuation, about 1 s later).
pub const PARKED_RECHECK_BATCH_MAX: usize = 500;
/// A full sweep of a partition's parked events at least this often, even
/// without a reference record that calls for one (a safety net: triggers
/// already cover every record that can resolve a park).
pub const PARKED_RESWEEP_INTERVAL_MS: i64 = 600_000;
/// Customers queued for a targeted re-check per partition, at most; a bulk
/// load beyond this is cheaper to handle with one full sweep.
const RECHECK_CUSTOMERS_MAX: usize = 10_000;
const MS_PER_SECOND: i64 = 1_000;

/// Reject code of an input record that is not a validated event.
pub const MALFORMED_VALIDATED_EVENT: &str = "malformed_validated_event";

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("meters: {0}")]
    Meters(String),
}

/// Why a parked store entry cannot be read: a bug or corrupt state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParkedStoreError {
    #[error("parked entry: unknown value format {0}")]
    Format(u8),
    #[error("parked entry: truncated value")]
    Truncated,
    #[error("parked entry: {0}")]
    Meta(String),
    #[error("parked entry: {0}")]
    Key(#[from] crate::store::keys::KeyError),
    #[error("parked statistics: {0}")]
    Stats(String),
}

impl ParkedStoreError {
    /// Stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            ParkedStoreError::Format(_) => "parked_format_unknown",
            ParkedStoreError::Truncated => "parked_value_truncated",
            ParkedStoreError::Meta(_) => "parked_meta_invalid",
            ParkedStoreError::Key(_) => "parked_key_invalid",
            ParkedStoreError::Stats(_) => "parked_stats_invalid",
        }
    }
}

impl From<ParkedStoreError> for StageError {
    fn from(e: ParkedStoreError) -> Self {
        StageError::Fatal(format!("{} ({})", e, e.code()))
    }
}

/// A decimal written as a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
struct DecimalStr(#[serde(with = "rust_decimal::serde::str")] Decimal);

/// Revenue at risk of one parked event (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AtRisk {
    currency: String,
    amount: DecimalStr,
    /// The subscription's legal entity ("" in entries parked before it was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    legal_entity: String,
}

/// What the parked store keeps beside the event bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ParkedMeta {
    /// The current park code ([`ParkReason::code`]).
    reason: String,
    message: String,
    /// Wall-clock time the event was first parked (ms since the epoch).
    first_parked_ms: i64,
    /// Timestamp of the input record, given to the enriched record when the
    /// event is re-emitted.
    input_timestamp_ms: Option<i64>,
    #[serde(default)]
    at_risk: Option<AtRisk>,
}

/// One parked event: meta plus the validated event's bytes as received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ParkedEntry {
    meta: ParkedMeta,
    event: Vec<u8>,
}

impl ParkedEntry {
    fn encode(&self) -> Result<Vec<u8>, StageError> {
        let meta = serde_json::to_vec(&self.meta)
            .map_err(|e| StageError::Fatal(format!("encoding a parked entry: {e}")))?;
        let len = u32::try_from(meta.len())
            .map_err(|_| StageError::Fatal("parked entry meta over 4 GiB".into()))?;
        let mut out = Vec::with_capacity(5 + meta.len() + self.event.len());
        out.push(PARKED_VALUE_FORMAT);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.event);
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<ParkedEntry, ParkedStoreError> {
        let (format, rest) = bytes.split_first().ok_or(ParkedStoreError::Truncated)?;
        if *format != PARKED_VALUE_FORMAT {
            return Err(ParkedStoreError::Format(*format));
        }
        let (len, rest) = rest
            .split_first_chunk::<4>()
            .ok_or(ParkedStoreError::Truncated)?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(ParkedStoreError::Truncated);
        }
        let (meta, event) = rest.split_at(len);
        let meta: ParkedMeta =
            serde_json::from_slice(meta).map_err(|e| ParkedStoreError::Meta(e.to_string()))?;
        Ok(ParkedEntry {
            meta,
            event: event.to_vec(),
        })
    }
}

/// The partition's parked statistics (key `S`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ParkedStats {
    /// Park code -> parked events; codes at 0 are removed.
    by_reason: BTreeMap<String, u64>,
    /// Currency -> revenue at risk.
    at_risk: BTreeMap<String, DecimalStr>,
    /// Currency -> legal entity -> revenue at risk (the same amounts).
    #[serde(default)]
    at_risk_by_entity: BTreeMap<String, BTreeMap<String, DecimalStr>>,
}

impl ParkedStats {
    fn add(&mut self, meta: &ParkedMeta) {
        *self.by_reason.entry(meta.reason.clone()).or_default() += 1;
        if let Some(r) = &meta.at_risk {
            let total = self
                .at_risk
                .entry(r.currency.clone())
                .or_insert(DecimalStr(Decimal::ZERO));
            // Metrics only: an overflow (not reachable with real prices)
            // leaves the total as it was rather than failing the event.
            total.0 = total.0.checked_add(r.amount.0).unwrap_or(total.0);
            let by_entity = self
                .at_risk_by_entity
                .entry(r.currency.clone())
                .or_default()
                .entry(r.legal_entity.clone())
                .or_insert(DecimalStr(Decimal::ZERO));
            by_entity.0 = by_entity.0.checked_add(r.amount.0).unwrap_or(by_entity.0);
        }
    }

    fn remove(&mut self, meta: &ParkedMeta) {
        if let Some(n) = self.by_reason.get_mut(&meta.reason) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_reason.remove(&meta.reason);
            }
        }
        if let Some(r) = &meta.at_risk {
            if let Some(total) = self.at_risk.get_mut(&r.currency) {
                total.0 = total.0.checked_sub(r.amount.0).unwrap_or(total.0);
                if total.0.is_zero() {
                    self.at_risk.remove(&r.currency);
                }
            }
            if let Some(entities) = self.at_risk_by_entity.get_mut(&r.currency) {
                if let Some(total) = entities.get_mut(&r.legal_entity) {
                    total.0 = total.0.checked_sub(r.amount.0).unwrap_or(total.0);
                    if total.0.is_zero() {
                        entities.remove(&r.legal_entity);
                    }
                }
                if entities.is_empty() {
                    self.at_risk_by_entity.remove(&r.currency);
                }
            }
        }
    }
}

// ---- keys --------------------------------------------------------------------

fn entry_key(customer: &str, source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(ENTRY_PREFIX)
        .str(customer)
        .str(source)
        .str(id)
        .build()
}

/// (customer, source, id) of an entry key.
fn parse_entry_key(key: &[u8]) -> Result<(String, String, String), ParkedStoreError> {
    let mut r = KeyReader::new(key, ENTRY_PREFIX)?;
    let customer = r.str()?.to_owned();
    let source = r.str()?.to_owned();
    let id = r.str()?.to_owned();
    r.finish()?;
    Ok((customer, source, id))
}

fn age_key(reason: &str, first_parked_ms: i64, ids: &EventIds) -> Vec<u8> {
    KeyBuilder::new(AGE_INDEX_PREFIX)
        .str(reason)
        .i64(first_parked_ms)
        .str(&ids.customer)
        .str(&ids.source)
        .str(&ids.id)
        .build()
}

/// The smallest key greater than every key starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xFF (never the case here: every prefix starts with a letter).
    vec![u8::MAX; prefix.len() + 1]
}

/// The smallest key greater than `key`.
fn successor(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// The range of one customer's parked entries.
fn customer_range(customer: &str) -> (Vec<u8>, Vec<u8>) {
    let from = KeyBuilder::new(ENTRY_PREFIX).str(customer).build();
    let to = prefix_end(&from);
    (from, to)
}

fn all_entries_range() -> (Vec<u8>, Vec<u8>) {
    (vec![ENTRY_PREFIX], prefix_end(&[ENTRY_PREFIX]))
}

/// The identity of a parked event, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventIds {
    customer: String,
    source: String,
    id: String,
}

impl EventIds {
    fn of(event: &ValidatedEvent) -> Self {
        EventIds {
            customer: event.subject.clone(),
            source: event.source.clone(),
            id: event.id.clone(),
        }
    }

    fn entry_key(&self) -> Vec<u8> {
        entry_key(&self.customer, &self.source, &self.id)
    }
}

// ---- store operations, each keeping entries, index and statistics in step ----

fn read_stats(stores: &PartitionStores) -> Result<ParkedStats, StageError> {
    match stores.get(PARKED, STATS_KEY)? {
        None => Ok(ParkedStats::default()),
        Some(b) => {
            serde_json::from_slice(&b).map_err(|e| ParkedStoreError::Stats(e.to_string()).into())
        }
    }
}

fn write_stats(stores: &mut PartitionStores, stats: &ParkedStats) -> Result<(), StageError> {
    let bytes = serde_json::to_vec(stats)
        .map_err(|e| StageError::Fatal(format!("encoding parked statistics: {e}")))?;
    stores.put(PARKED, STATS_KEY.to_vec(), bytes);
    Ok(())
}

/// Parks a new entry, or replaces `old` with `entry`.
fn store_parked(
    stores: &mut PartitionStores,
    ids: &EventIds,
    old: Option<&ParkedMeta>,
    entry: &ParkedEntry,
) -> Result<(), StageError> {
    let mut stats = read_stats(stores)?;
    if let Some(old) = old {
        stores.delete(PARKED, age_key(&old.reason, old.first_parked_ms, ids));
        stats.remove(old);
    }
    stores.put(PARKED, ids.entry_key(), entry.encode()?);
    stores.put(
        PARKED,
        age_key(&entry.meta.reason, entry.meta.first_parked_ms, ids),
        Vec::new(),
    );
    stats.add(&entry.meta);
    write_stats(stores, &stats)
}

/// Removes a parked entry (it resolved).
fn remove_parked(
    stores: &mut PartitionStores,
    ids: &EventIds,
    meta: &ParkedMeta,
) -> Result<(), StageError> {
    let mut stats = read_stats(stores)?;
    stores.delete(PARKED, ids.entry_key());
    stores.delete(PARKED, age_key(&meta.reason, meta.first_parked_ms, ids));
    stats.remove(meta);
    write_stats(stores, &stats)
}

/// First-parked time of the oldest event parked with `reason`.
fn oldest_parked_ms(stores: &PartitionStores, reason: &str) -> Result<Option<i64>, StageError> {
    let from = KeyBuilder::new(AGE_INDEX_PREFIX).str(reason).build();
    let to = prefix_end(&from);
    let Some((k, _)) = stores.scan(PARKED, &from, &to, 1)?.into_iter().next() else {
        return Ok(None);
    };
    let mut r = KeyReader::new(&k, AGE_INDEX_PREFIX).map_err(ParkedStoreError::from)?;
    r.str().map_err(ParkedStoreError::from)?;
    Ok(Some(r.i64().map_err(ParkedStoreError::from)?))
}

// ---- revenue at risk ---------------------------------------------------------

/// See "Revenue at risk" in the module docs.
fn revenue_at_risk(
    event: &ValidatedEvent,
    reason: &ParkReason,
    tables: &RefTables,
) -> Option<AtRisk> {
    let named = match reason {
        ParkReason::UnknownPlan { subscription, .. }
        | ParkReason::NoPlanVersion { subscription, .. }
        | ParkReason::NoChargeForMeter { subscription, .. }
        | ParkReason::CurrencyMismatch { subscription, .. }
        | ParkReason::NoBillingPeriod { subscription, .. } => Some(subscription.as_str()),
        ParkReason::UnknownMeter { .. }
        | ParkReason::UnknownCustomer { .. }
        | ParkReason::NoActiveSubscription { .. }
        | ParkReason::AmbiguousSubscription { .. } => None,
    };
    let subscription = match named {
        Some(id) => tables.subscription(id)?,
        None => {
            let mut active = tables.active_subscriptions(&event.subject, event.time);
            let only = active.next()?;
            if active.next().is_some() {
                return None;
            }
            only
        }
    };
    let plan = tables.plan_effective_at(&subscription.plan_id, event.time)?;
    let mut total = Decimal::ZERO;
    let mut priced = false;
    for measure in &event.measures {
        let model = match subscription.price_overrides.get(&measure.meter) {
            Some(model) => model,
            None => match plan.charge(&measure.meter) {
                Some(charge) => &charge.model,
                None => continue,
            },
        };
        // COUNT and UNIQUE_COUNT measures carry no value: the event counts once.
        let quantity = measure.value.unwrap_or(Decimal::ONE);
        let price = model.price(quantity).ok()?;
        total = total.checked_add(price)?;
        priced = true;
    }
    priced.then(|| AtRisk {
        currency: plan.currency.clone(),
        amount: DecimalStr(total),
        legal_entity: subscription.legal_entity.clone(),
    })
}

// ---- metrics and internal events ---------------------------------------------

struct EnrichMetrics {
    parked_events: IntGaugeVec,
    oldest_age: IntGaugeVec,
    /// None only if the registry refused the static definition.
    revenue_at_risk: Option<GaugeVec>,
    parked_total: IntCounterVec,
    reemitted: IntCounter,
    replays_dropped: IntCounter,
    table_refused: IntCounterVec,
    event_time_lag: prometheus::IntGauge,
}

fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> Option<GaugeVec> {
    let g = GaugeVec::new(Opts::new(name, help), labels).ok()?;
    // Refused when already registered (two processors in one test binary);
    // the first one keeps serving, as with the other helpers in `metrics`.
    let _ = crate::metrics::REGISTRY.register(Box::new(g.clone()));
    Some(g)
}

impl EnrichMetrics {
    fn new() -> Self {
        EnrichMetrics {
            parked_events: crate::metrics::gauge_vec(
                "meterline_enrich_parked_events",
                "Events parked by the enrich stage (this instance's partitions), by park reason.",
                &["reason"],
            ),
            oldest_age: crate::metrics::gauge_vec(
                "meterline_enrich_parked_oldest_age_seconds",
                "Age of the oldest parked event, by park reason.",
                &["reason"],
            ),
            revenue_at_risk: float_gauge_vec(
                "meterline_enrich_revenue_at_risk",
                "List price of the parked events' own quantities, unrounded, by currency and legal entity.",
                &["currency", "legal_entity"],
            ),
            parked_total: crate::metrics::counter_vec(
                "meterline_enrich_parked_total",
                "Events parked (first park, or a replayed copy parked again), by park reason.",
                &["reason"],
            ),
            reemitted: crate::metrics::counter(
                "meterline_enrich_reemitted_total",
                "Parked events that resolved and were emitted to usage.enriched.",
            ),
            replays_dropped: crate::metrics::counter(
                "meterline_enrich_exception_replays_dropped_total",
                "Records replayed from usage.exceptions whose event had already flowed.",
            ),
            event_time_lag: crate::metrics::event_time_lag(topology::STAGES[1].name),
            table_refused: crate::metrics::counter_vec(
                "meterline_enrich_table_records_refused_total",
                "Reference records refused (malformed or invalid) and skipped, by table and code.",
                &["table", "code"],
            ),
        }
    }
}

/// An event was parked (or a replayed copy parked again).
struct EventParked<'a> {
    ids: &'a EventIds,
    reason: &'a str,
    message: &'a str,
    again: bool,
}

impl EventParked<'_> {
    fn emit(&self, m: &EnrichMetrics) {
        debug!(
            customer = %self.ids.customer,
            source = %self.ids.source,
            id = %self.ids.id,
            reason = self.reason,
            message = self.message,
            again = self.again,
            "event parked"
        );
        m.parked_total.with_label_values(&[self.reason]).inc();
    }
}

/// A parked event resolved and was emitted.
struct ParkedEventReemitted<'a> {
    ids: &'a EventIds,
    reason: &'a str,
    parked_ms: i64,
}

impl ParkedEventReemitted<'_> {
    fn emit(&self, m: &EnrichMetrics) {
        debug!(
            customer = %self.ids.customer,
            source = %self.ids.source,
            id = %self.ids.id,
            was = self.reason,
            parked_ms = self.parked_ms,
            "parked event resolved and re-emitted"
        );
        m.reemitted.inc();
    }
}

/// A replayed exceptions copy whose event had already flowed.
struct ExceptionReplayDropped<'a> {
    ids: &'a EventIds,
    replayed_from: &'a str,
}

impl ExceptionReplayDropped<'_> {
    fn emit(&self, m: &EnrichMetrics) {
        info!(
            customer = %self.ids.customer,
            source = %self.ids.source,
            id = %self.ids.id,
            replayed_from = self.replayed_from,
            "replayed exception dropped: the event is no longer parked (it already flowed)"
        );
        m.replays_dropped.inc();
    }
}

/// A reference record was refused and skipped.
struct TableRecordRefused<'a> {
    table: &'a str,
    key: &'a str,
    code: &'a str,
    error: &'a str,
}

impl TableRecordRefused<'_> {
    fn emit(&self, m: &EnrichMetrics) {
        warn!(
            table = self.table,
            key = self.key,
            code = self.code,
            error = self.error,
            "reference record refused; skipped (the previous value under its key stays)"
        );
        m.table_refused
            .with_label_values(&[self.table, self.code])
            .inc();
    }
}

// ---- per-partition re-check bookkeeping (not state: re-derivable) ------------

/// What remains to re-check in one partition. Losing it loses nothing: a
/// fresh one asks for a full sweep.
#[derive(Debug, Clone)]
struct Recheck {
    /// Customer -> next key of its range to re-check.
    customers: BTreeMap<String, Vec<u8>>,
    /// A full sweep in progress: the next key to re-check.
    sweep: Option<Vec<u8>>,
    /// Start a full sweep as soon as none is in progress.
    sweep_requested: bool,
    /// When the last full sweep started (wall clock, ms).
    last_sweep_ms: Option<i64>,
    /// The partition's figures as of its last punctuation, for the gauges.
    snapshot: Snapshot,
}

impl Recheck {
    fn new() -> Self {
        Recheck {
            customers: BTreeMap::new(),
            sweep: None,
            sweep_requested: true,
            last_sweep_ms: None,
            snapshot: Snapshot::default(),
        }
    }

    fn trigger(&mut self, trigger: &RefTrigger) {
        match trigger.kind {
            RefKind::Customers | RefKind::Subscriptions => {
                if self.customers.len() >= RECHECK_CUSTOMERS_MAX {
                    self.customers.clear();
                    self.sweep_requested = true;
                } else {
                    // From the start of the range again: entries before a
                    // cursor were checked against older tables.
                    let (from, _) = customer_range(&trigger.id);
                    self.customers.insert(trigger.id.clone(), from);
                }
            }
            RefKind::Plans => self.sweep_requested = true,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Snapshot {
    stats: ParkedStats,
    oldest_ms: BTreeMap<String, i64>,
}

// ---- the processor -----------------------------------------------------------

/// The parts of the processor that resolving and parking need, apart from
/// the re-check bookkeeping (so both can be borrowed at once).
struct Enricher {
    tables: RefTables,
    meters: MeterCatalog,
    validated_topic: String,
    enriched_topic: String,
    exceptions_topic: String,
    metrics: EnrichMetrics,
    lineage_retention_days: u32,
}

pub struct EnrichProcessor {
    inner: Enricher,
    parts: BTreeMap<i32, Recheck>,
    /// Currencies ever reported, so one that drops out is reset to 0.
    /// (currency, legal entity) pairs the revenue-at-risk gauge has shown.
    currencies_seen: BTreeSet<(String, String)>,
}

impl EnrichProcessor {
    pub fn new(config: &Config) -> Result<Self, SetupError> {
        let mut slugs = BTreeSet::new();
        for m in &config.meters {
            if !slugs.insert(m.slug.as_str()) {
                return Err(SetupError::Meters(format!(
                    "meter {:?} declared twice",
                    m.slug
                )));
            }
        }
        Ok(EnrichProcessor {
            inner: Enricher {
                tables: RefTables::new(),
                meters: meter_catalog(config.meters.iter().cloned()),
                validated_topic: config.topic(topology::names::VALIDATED),
                enriched_topic: config.topic(topology::names::ENRICHED),
                exceptions_topic: config.topic(topology::names::EXCEPTIONS),
                metrics: EnrichMetrics::new(),
                lineage_retention_days: config.lineage.retention_days,
            },
            parts: BTreeMap::new(),
            currencies_seen: BTreeSet::new(),
        })
    }

    /// The reference tables as this instance sees them.
    pub fn tables(&self) -> &RefTables {
        &self.inner.tables
    }

    fn set_gauges(&mut self, now_ms: i64) {
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        let mut oldest: BTreeMap<&str, i64> = BTreeMap::new();
        let mut at_risk: BTreeMap<(String, String), Decimal> = BTreeMap::new();
        for part in self.parts.values() {
            for (reason, n) in &part.snapshot.stats.by_reason {
                *counts.entry(reason.as_str()).or_default() +=
                    i64::try_from(*n).unwrap_or(i64::MAX);
            }
            for (reason, t) in &part.snapshot.oldest_ms {
                let e = oldest.entry(reason.as_str()).or_insert(*t);
                *e = (*e).min(*t);
            }
            let stats = &part.snapshot.stats;
            for (currency, amount) in &stats.at_risk {
                // Per legal entity; what no entity accounts for (entries
                // parked before entities were kept) under "".
                let mut rest = amount.0;
                let entities = stats.at_risk_by_entity.get(currency);
                for (entity, a) in entities.into_iter().flatten() {
                    rest = rest.checked_sub(a.0).unwrap_or(rest);
                    let e = at_risk
                        .entry((currency.clone(), entity.clone()))
                        .or_insert(Decimal::ZERO);
                    *e = e.checked_add(a.0).unwrap_or(*e);
                }
                if !rest.is_zero() {
                    let e = at_risk
                        .entry((currency.clone(), String::new()))
                        .or_insert(Decimal::ZERO);
                    *e = e.checked_add(rest).unwrap_or(*e);
                }
            }
        }
        let m = &self.inner.metrics;
        for code in ParkReason::ALL_CODES {
            let age_s = oldest
                .get(code)
                .map(|t| now_ms.saturating_sub(*t).max(0) / MS_PER_SECOND)
                .unwrap_or(0);
            crate::internal_events::ParkedMeasured {
                reason: code,
                events: counts.get(code).copied().unwrap_or(0),
                oldest_age_s: age_s,
            }
            .emit(&m.parked_events, &m.oldest_age);
        }
        for key in at_risk.keys() {
            self.currencies_seen.insert(key.clone());
        }
        if let Some(gauge) = &m.revenue_at_risk {
            for key in &self.currencies_seen {
                crate::internal_events::RevenueAtRiskMeasured {
                    currency: &key.0,
                    legal_entity: &key.1,
                    amount: at_risk.get(key).and_then(Decimal::to_f64).unwrap_or(0.0),
                }
                .emit(gauge);
            }
        }
    }
}

impl Enricher {
    /// The exceptions copy of a parked input record.
    fn exception(&self, rec: &InputRecord<'_>, subject: &str, reason: &ParkReason) -> Output {
        // Built like a dead letter (same diagnostic headers, input headers
        // kept) so `meterline replay` treats both alike; the original topic
        // is always the namespaced usage.validated.
        let source = InputRecord {
            topic: &self.validated_topic,
            ..*rec
        };
        let mut out = dlq::dead_letter(
            "enrich",
            &source,
            reason.code(),
            &reason.message(),
            &self.exceptions_topic,
            1,
        );
        out.key = Some(subject.as_bytes().to_vec());
        // Keyed by customer like every pipeline topic.
        out.partition = None;
        out
    }

    fn enriched_output(
        &self,
        enriched: &EnrichedEvent,
        timestamp_ms: Option<i64>,
    ) -> Result<Output, StageError> {
        let value = enriched
            .to_json_bytes()
            .map_err(|e| StageError::Fatal(format!("serializing an enriched event: {e}")))?;
        Ok(Output {
            topic: self.enriched_topic.clone(),
            key: Some(enriched.event.subject.as_bytes().to_vec()),
            value: Some(value),
            headers: Vec::new(),
            partition: None,
            timestamp_ms,
        })
    }

    /// Whether `rec` was replayed from usage.exceptions; the source if so.
    fn replayed_exception<'r>(&self, rec: &InputRecord<'r>) -> Option<&'r str> {
        let from = last_header(rec.headers, headers::REPLAYED_FROM)?;
        let from = std::str::from_utf8(from).ok()?;
        let topic = from.strip_prefix(self.exceptions_topic.as_str())?;
        topic.starts_with(':').then_some(from)
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let bytes = rec.value.ok_or_else(|| StageError::Reject {
            code: MALFORMED_VALIDATED_EVENT,
            message: "the record has no value".into(),
        })?;
        let event = ValidatedEvent::from_json_slice(bytes).map_err(|e| StageError::Reject {
            code: MALFORMED_VALIDATED_EVENT,
            message: format!("not a validated event: {e}"),
        })?;
        let ids = EventIds::of(&event);
        let key = ids.entry_key();
        let existing = match ctx.stores.get(PARKED, &key)? {
            Some(b) => Some(ParkedEntry::decode(&b)?),
            None => None,
        };
        let replayed = self.replayed_exception(rec).is_some();
        let day = lineage::day_of(event.time);
        crate::internal_events::EventTimeLagMeasured {
            stage: topology::STAGES[1].name,
            lag_s: Utc::now()
                .timestamp_millis()
                .saturating_sub(event.time.timestamp_millis())
                / MS_PER_SECOND,
        }
        .emit(&self.metrics.event_time_lag);
        // A replayed exceptions copy is not a new input: the event was
        // counted when it first arrived. (A dropped replayed copy counts
        // nothing; every other path counts its outcome together with this.)
        let arrived = (!replayed).then_some(Count::In);
        if existing.is_none() {
            if let Some(from) = self.replayed_exception(rec) {
                ExceptionReplayDropped {
                    ids: &ids,
                    replayed_from: from,
                }
                .emit(&self.metrics);
                return Ok(());
            }
        }
        match resolve(&event, &self.tables, &self.meters) {
            Ok(enriched) => {
                if let Some(old) = &existing {
                    remove_parked(ctx.stores, &ids, &old.meta)?;
                    ParkedEventReemitted {
                        ids: &ids,
                        reason: &old.meta.reason,
                        parked_ms: old.meta.first_parked_ms,
                    }
                    .emit(&self.metrics);
                }
                let healed = existing.is_some();
                let outcome = if healed {
                    Count::Released
                } else {
                    Count::Passed
                };
                lineage::count(ctx, COUNTERS, &day, arrived.into_iter().chain([outcome]))?;
                self.note_enriched(ctx, &enriched, rec.partition, rec.offset, healed)?;
                let out = self.enriched_output(&enriched, rec.timestamp_ms)?;
                ctx.emit(out);
            }
            Err(reason) => {
                let parked = existing.is_none().then_some(Count::Held);
                lineage::count(ctx, COUNTERS, &day, arrived.into_iter().chain(parked))?;
                self.note(
                    ctx,
                    &event,
                    lineage::Step {
                        outcome: "parked".into(),
                        partition: rec.partition,
                        offset: rec.offset,
                        reason: Some(reason.code().to_owned()),
                        detail: serde_json::Value::Null,
                    },
                )?;
                let (first_parked_ms, input_timestamp_ms) = match &existing {
                    Some(old) => (old.meta.first_parked_ms, old.meta.input_timestamp_ms),
                    None => (Utc::now().timestamp_millis(), rec.timestamp_ms),
                };
                let entry = ParkedEntry {
                    meta: ParkedMeta {
                        reason: reason.code().to_owned(),
                        message: reason.message(),
                        first_parked_ms,
                        input_timestamp_ms,
                        at_risk: revenue_at_risk(&event, &reason, &self.tables),
                    },
                    event: bytes.to_vec(),
                };
                store_parked(ctx.stores, &ids, existing.as_ref().map(|e| &e.meta), &entry)?;
                ctx.emit(self.exception(rec, &event.subject, &reason));
                EventParked {
                    ids: &ids,
                    reason: reason.code(),
                    message: &entry.meta.message,
                    again: existing.is_some(),
                }
                .emit(&self.metrics);
            }
        }
        Ok(())
    }

    /// Appends a lineage step for `event`.
    fn note(
        &self,
        ctx: &mut Ctx<'_>,
        event: &ValidatedEvent,
        step: lineage::Step,
    ) -> Result<(), StageError> {
        lineage::record_step(
            ctx,
            LINEAGE,
            &event.source,
            &event.id,
            step,
            Utc::now().timestamp_millis(),
        )
    }

    /// The lineage step of an enriched event (`healed`: it was parked).
    fn note_enriched(
        &self,
        ctx: &mut Ctx<'_>,
        e: &EnrichedEvent,
        partition: i32,
        offset: i64,
        healed: bool,
    ) -> Result<(), StageError> {
        self.note(
            ctx,
            &e.event,
            lineage::Step {
                outcome: "enriched".into(),
                partition,
                offset,
                reason: None,
                detail: serde_json::json!({
                    "subscription": e.subscription_id,
                    "plan": e.plan_id,
                    "plan_version": e.plan_version,
                    "currency": e.currency,
                    "legal_entity": e.legal_entity,
                    "billing_period": e.billing_period.id,
                    "healed": healed,
                }),
            },
        )
    }

    /// Re-resolves one parked entry: emits and deletes it if it resolves,
    /// updates it if its park code or revenue at risk changed.
    fn recheck(&self, key: &[u8], value: &[u8], ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let (customer, source, id) = parse_entry_key(key)?;
        let ids = EventIds {
            customer,
            source,
            id,
        };
        let entry = ParkedEntry::decode(value)?;
        let event = ValidatedEvent::from_json_slice(&entry.event).map_err(|e| {
            StageError::Fatal(format!(
                "parked event {}/{} is not a validated event any more: {e}",
                ids.source, ids.id
            ))
        })?;
        match resolve(&event, &self.tables, &self.meters) {
            Ok(enriched) => {
                remove_parked(ctx.stores, &ids, &entry.meta)?;
                let day = lineage::day_of(event.time);
                lineage::count(ctx, COUNTERS, &day, [Count::Released])?;
                // Not from an input record (offset -1): healed by reference data.
                let partition = ctx.partition;
                self.note_enriched(ctx, &enriched, partition, -1, true)?;
                let out = self.enriched_output(&enriched, entry.meta.input_timestamp_ms)?;
                ctx.emit(out);
                ParkedEventReemitted {
                    ids: &ids,
                    reason: &entry.meta.reason,
                    parked_ms: entry.meta.first_parked_ms,
                }
                .emit(&self.metrics);
            }
            Err(reason) => {
                let at_risk = revenue_at_risk(&event, &reason, &self.tables);
                if reason.code() != entry.meta.reason || at_risk != entry.meta.at_risk {
                    let updated = ParkedEntry {
                        meta: ParkedMeta {
                            reason: reason.code().to_owned(),
                            message: reason.message(),
                            at_risk,
                            ..entry.meta.clone()
                        },
                        event: entry.event.clone(),
                    };
                    store_parked(ctx.stores, &ids, Some(&entry.meta), &updated)?;
                }
            }
        }
        Ok(())
    }

    /// Re-checks up to `budget` entries of `[from, to)`; returns the cursor
    /// to resume from, or None when the range is done, and what was used.
    fn recheck_range(
        &self,
        from: &[u8],
        to: &[u8],
        budget: usize,
        ctx: &mut Ctx<'_>,
    ) -> Result<(Option<Vec<u8>>, usize), StageError> {
        let entries = ctx.stores.scan(PARKED, from, to, budget)?;
        let used = entries.len();
        let mut last = None;
        for (k, v) in entries {
            self.recheck(&k, &v, ctx)?;
            last = Some(k);
        }
        // A full batch may have more behind it; a short one ends the range.
        let next = match last {
            Some(k) if used >= budget => Some(successor(&k)),
            _ => None,
        };
        Ok((next, used))
    }
}

impl Processor for EnrichProcessor {
    fn spec(&self) -> &'static StageSpec {
        &topology::STAGES[1]
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        self.parts.entry(ctx.partition).or_insert_with(Recheck::new);
        self.inner.process(rec, ctx)
    }

    fn punctuate(&mut self, ctx: &mut Ctx<'_>, now_ms: i64) -> Result<(), StageError> {
        lineage::expire(ctx, LINEAGE, now_ms, self.inner.lineage_retention_days)?;
        let part = self.parts.entry(ctx.partition).or_insert_with(Recheck::new);
        if part.sweep.is_none()
            && part
                .last_sweep_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= PARKED_RESWEEP_INTERVAL_MS)
        {
            part.sweep_requested = true;
        }
        if part.sweep_requested && part.sweep.is_none() {
            part.sweep_requested = false;
            part.sweep = Some(all_entries_range().0);
            part.last_sweep_ms = Some(now_ms);
        }

        let mut budget = PARKED_RECHECK_BATCH_MAX;
        // Targeted re-checks first: they answer a record that just arrived.
        while budget > 0 {
            let Some((customer, from)) = part.customers.pop_first() else {
                break;
            };
            let (_, to) = customer_range(&customer);
            let (next, used) = self.inner.recheck_range(&from, &to, budget, ctx)?;
            budget = budget.saturating_sub(used);
            if let Some(next) = next {
                part.customers.insert(customer, next);
            }
        }
        if budget > 0 {
            if let Some(from) = part.sweep.take() {
                let (_, to) = all_entries_range();
                let (next, _) = self.inner.recheck_range(&from, &to, budget, ctx)?;
                part.sweep = next;
            }
        }

        let stats = read_stats(ctx.stores)?;
        let mut oldest_ms = BTreeMap::new();
        for reason in stats.by_reason.keys() {
            if let Some(t) = oldest_parked_ms(ctx.stores, reason)? {
                oldest_ms.insert(reason.clone(), t);
            }
        }
        part.snapshot = Snapshot { stats, oldest_ms };
        self.set_gauges(now_ms);
        Ok(())
    }

    fn on_rollback(&mut self) {
        // Re-emissions of the aborted transaction were rolled back with
        // their deletes: look at everything again.
        for part in self.parts.values_mut() {
            part.customers.clear();
            part.sweep = None;
            part.sweep_requested = true;
        }
    }

    fn on_revoked(&mut self, partition: i32) {
        self.parts.remove(&partition);
        self.set_gauges(Utc::now().timestamp_millis());
    }

    fn on_table_record(&mut self, table: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        let m = &self.inner.metrics;
        let refuse = |key: &str, code: &str, error: &str| {
            TableRecordRefused {
                table,
                key,
                code,
                error,
            }
            .emit(m)
        };
        let Some(kind) = RefKind::from_topic(table) else {
            refuse("", "unknown_table", "not a reference table");
            return;
        };
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            refuse(
                "",
                "invalid_key",
                "a reference record needs a UTF-8 key (the record's id)",
            );
            return;
        };
        match self.inner.tables.apply_tracked(kind, key, value) {
            Ok(triggers) => {
                for part in self.parts.values_mut() {
                    for trigger in &triggers {
                        part.trigger(trigger);
                    }
                }
            }
            Err(e) => refuse(key, e.code(), &e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Encoding, Measure, Origin};
    use crate::refdata::parse_jsonl;
    use crate::store::MemBackend;
    use chrono::{DateTime, TimeZone};
    use rust_decimal_macros::dec;
    use serde_json::json;

    const NS: &str = "x.";

    fn config() -> Config {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        Config::from_parts("[topology]\nnamespace = \"x.\"\n", "test", &[], dir).unwrap()
    }

    fn stores() -> PartitionStores {
        PartitionStores::new(Box::<MemBackend>::default(), 3)
    }

    fn customer_line(id: &str) -> String {
        json!({"id": id, "name": "Acme", "legal_entity": "acme-us",
               "erp_customer_id": format!("C-{id}"), "status": "active"})
        .to_string()
    }

    fn subscription_line(id: &str, customer: &str, plan: &str) -> String {
        json!({"id": id, "customer_id": customer, "plan_id": plan,
               "start": "2026-01-01T00:00:00Z", "end": null,
               "billing_anchor_day": 1, "time_zone": "UTC", "currency": "USD",
               "legal_entity": "meterline-us"})
        .to_string()
    }

    fn plan_line(id: &str) -> String {
        json!({"id": id, "version": 1, "effective_from": "2026-01-01T00:00:00Z",
               "currency": "USD",
               "charges": {"tokens": {"model": "graduated", "tiers": [
                   {"up_to": "1000", "unit_price": "0"},
                   {"up_to": null, "unit_price": "0.01"}]}},
               "gl_accounts": {"usage_revenue": "4010", "unbilled_receivable": "1210", "receivable": "1200"}})
        .to_string()
    }

    /// Feeds JSON-lines records to the processor as table records.
    fn load(p: &mut EnrichProcessor, kind: RefKind, lines: &[String]) {
        for (key, value) in parse_jsonl(kind, &lines.join("\n")).unwrap() {
            p.on_table_record(kind.topic(), Some(key.as_bytes()), value.as_deref());
        }
    }

    fn event(customer: &str, id: &str, tokens: Decimal) -> ValidatedEvent {
        ValidatedEvent {
            source: "svc".into(),
            id: id.into(),
            event_type: "llm.tokens".into(),
            subject: customer.into(),
            time: Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap(),
            measures: vec![Measure {
                meter: "tokens".into(),
                value: Some(tokens),
                unique_value: None,
                group: BTreeMap::from([("model".into(), "m".into())]),
            }],
            data: json!({"tokens": 1, "model": "m"}),
            origin: Origin {
                topic: "x.usage.events".into(),
                partition: 0,
                offset: 1,
                encoding: Encoding::Structured,
            },
        }
    }

    fn processor() -> EnrichProcessor {
        EnrichProcessor::new(&config()).unwrap()
    }

    /// A processor knowing plan `pro` and `cust-1` with subscription `sub-1`.
    fn loaded() -> EnrichProcessor {
        let mut p = processor();
        load(&mut p, RefKind::Plans, &[plan_line("pro")]);
        load(&mut p, RefKind::Customers, &[customer_line("cust-1")]);
        load(
            &mut p,
            RefKind::Subscriptions,
            &[subscription_line("sub-1", "cust-1", "pro")],
        );
        p
    }

    fn run_with_headers(
        p: &mut EnrichProcessor,
        s: &mut PartitionStores,
        value: &[u8],
        headers: &[(String, Option<Vec<u8>>)],
    ) -> (Result<(), StageError>, Vec<Output>) {
        let cfg = config();
        let mut out = Vec::new();
        let rec = InputRecord {
            topic: "x.usage.validated",
            partition: 0,
            offset: 5,
            key: Some(b"k"),
            value: Some(value),
            headers,
            timestamp_ms: Some(1_768_046_400_000),
        };
        let mut ctx = Ctx {
            partition: 0,
            stores: s,
            out: &mut out,
            config: &cfg,
        };
        let r = p.process(&rec, &mut ctx);
        (r, out)
    }

    fn run(
        p: &mut EnrichProcessor,
        s: &mut PartitionStores,
        e: &ValidatedEvent,
    ) -> (Result<(), StageError>, Vec<Output>) {
        run_with_headers(p, s, &e.to_json_bytes().unwrap(), &[])
    }

    fn punctuate(p: &mut EnrichProcessor, s: &mut PartitionStores, now_ms: i64) -> Vec<Output> {
        let cfg = config();
        let mut out = Vec::new();
        let mut ctx = Ctx {
            partition: 0,
            stores: s,
            out: &mut out,
            config: &cfg,
        };
        p.punctuate(&mut ctx, now_ms).unwrap();
        out
    }

    fn header(o: &Output, name: &str) -> Option<String> {
        last_header(&o.headers, name).map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    fn parked_keys(s: &PartitionStores) -> Vec<(String, String, String)> {
        let (from, to) = all_entries_range();
        s.scan(PARKED, &from, &to, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| parse_entry_key(&k).unwrap())
            .collect()
    }

    fn now_ms() -> i64 {
        Utc::now().timestamp_millis()
    }

    #[test]
    fn a_resolved_event_goes_to_usage_enriched_keyed_by_customer() {
        let mut p = loaded();
        let mut s = stores();
        let (r, out) = run(&mut p, &mut s, &event("cust-1", "e1", dec!(5)));
        r.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
        assert_eq!(out[0].key.as_deref(), Some(&b"cust-1"[..]));
        assert_eq!(out[0].timestamp_ms, Some(1_768_046_400_000));
        let enriched = EnrichedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(
            (enriched.subscription_id.as_str(), enriched.plan_version),
            ("sub-1", 1)
        );
        assert!(parked_keys(&s).is_empty());
        // Nothing parked; lineage and the day's counters are written.
        assert!(s.pending(PARKED).is_empty());
        assert_eq!(s.pending(COUNTERS).len(), 1);
        let prefix = lineage::event_key("svc", "e1");
        let steps = lineage::gather_steps(
            s.scan(LINEAGE, &prefix, &lineage::prefix_end(&prefix), 10)
                .unwrap()
                .into_iter()
                .map(|(_, v)| v),
        );
        assert_eq!(steps.steps[0].outcome, "enriched");
    }

    #[test]
    fn malformed_input_is_rejected_without_writes_or_outputs() {
        let mut p = loaded();
        let mut s = stores();
        for bad in [&b"{not json"[..], br#"{"source":"s"}"#] {
            let (r, out) = run_with_headers(&mut p, &mut s, bad, &[]);
            match r.unwrap_err() {
                StageError::Reject { code, .. } => assert_eq!(code, MALFORMED_VALIDATED_EVENT),
                other => panic!("{other:?}"),
            }
            assert!(out.is_empty());
        }
        assert!(!s.has_pending());
    }

    #[test]
    fn an_unknown_customer_is_parked_with_an_exceptions_copy() {
        let mut p = loaded();
        let mut s = stores();
        let e = event("cust-9", "e1", dec!(5));
        let bytes = e.to_json_bytes().unwrap();
        let (r, out) = run_with_headers(&mut p, &mut s, &bytes, &[]);
        r.unwrap();
        assert_eq!(out.len(), 1);
        let x = &out[0];
        assert_eq!(x.topic, format!("{NS}usage.exceptions"));
        assert_eq!(x.key.as_deref(), Some(&b"cust-9"[..]));
        assert_eq!(x.value.as_deref(), Some(bytes.as_slice()));
        assert_eq!(x.partition, None);
        assert_eq!(
            header(x, headers::REASON).as_deref(),
            Some("unknown_customer")
        );
        assert_eq!(header(x, headers::STAGE).as_deref(), Some("enrich"));
        assert_eq!(
            header(x, headers::ORIGINAL_TOPIC),
            Some(format!("{NS}usage.validated"))
        );
        assert!(header(x, headers::MESSAGE).unwrap().contains("cust-9"));
        assert_eq!(
            parked_keys(&s),
            [("cust-9".into(), "svc".into(), "e1".into())]
        );
        let stats = read_stats(&s).unwrap();
        assert_eq!(stats.by_reason.get("unknown_customer"), Some(&1));
        // No subscription is known for cust-9: the amount at risk is unknown.
        assert!(stats.at_risk.is_empty());
        assert!(oldest_parked_ms(&s, "unknown_customer").unwrap().is_some());
    }

    #[test]
    fn a_parked_event_flows_exactly_once_when_its_customer_arrives() {
        let mut p = processor();
        load(&mut p, RefKind::Plans, &[plan_line("pro")]);
        // The subscription is known, the customer not yet.
        load(
            &mut p,
            RefKind::Subscriptions,
            &[subscription_line("sub-9", "cust-9", "pro")],
        );
        let mut s = stores();
        let (r, out) = run(&mut p, &mut s, &event("cust-9", "e1", dec!(1500)));
        r.unwrap();
        assert_eq!(out[0].topic, format!("{NS}usage.exceptions"));
        // Revenue at risk: 1500 tokens alone = 1000 free + 500 * 0.01.
        let stats = read_stats(&s).unwrap();
        assert_eq!(stats.at_risk.get("USD").map(|d| d.0), Some(dec!(5.00)));
        s.apply_committed(&[(0, 1)]).unwrap();

        // The initial sweep finds nothing to do yet.
        assert!(punctuate(&mut p, &mut s, now_ms()).is_empty());
        assert_eq!(parked_keys(&s).len(), 1);

        load(&mut p, RefKind::Customers, &[customer_line("cust-9")]);
        let out = punctuate(&mut p, &mut s, now_ms());
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
        assert_eq!(out[0].key.as_deref(), Some(&b"cust-9"[..]));
        assert_eq!(out[0].timestamp_ms, Some(1_768_046_400_000));
        let enriched = EnrichedEvent::from_json_slice(out[0].value.as_deref().unwrap()).unwrap();
        assert_eq!(enriched.subscription_id, "sub-9");
        assert_eq!(enriched.event.id, "e1");
        // Deleted in the same transaction, with its index key and statistics.
        assert!(parked_keys(&s).is_empty());
        assert!(oldest_parked_ms(&s, "unknown_customer").unwrap().is_none());
        assert_eq!(read_stats(&s).unwrap(), ParkedStats::default());
        s.apply_committed(&[(0, 2)]).unwrap();

        // Nothing flows a second time, even after a full sweep.
        assert!(punctuate(&mut p, &mut s, now_ms()).is_empty());
        let later = now_ms() + PARKED_RESWEEP_INTERVAL_MS + 1;
        assert!(punctuate(&mut p, &mut s, later).is_empty());
        let all = s.scan(PARKED, &[], &[0xFF], 100).unwrap();
        assert_eq!(all.len(), 1, "only the statistics key remains: {all:?}");
    }

    #[test]
    fn an_aborted_reemission_is_redone_in_the_next_transaction() {
        let mut p = loaded();
        let mut s = stores();
        run(&mut p, &mut s, &event("cust-9", "e1", dec!(5)))
            .0
            .unwrap();
        s.apply_committed(&[]).unwrap();
        punctuate(&mut p, &mut s, now_ms());
        load(&mut p, RefKind::Customers, &[customer_line("cust-9")]);
        load(
            &mut p,
            RefKind::Subscriptions,
            &[subscription_line("sub-9", "cust-9", "pro")],
        );
        assert_eq!(punctuate(&mut p, &mut s, now_ms()).len(), 1);
        // The transaction aborts: the delete is dropped with the output.
        s.rollback();
        p.on_rollback();
        assert_eq!(parked_keys(&s).len(), 1);
        let out = punctuate(&mut p, &mut s, now_ms());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
        s.apply_committed(&[]).unwrap();
        assert!(punctuate(&mut p, &mut s, now_ms()).is_empty());
        assert!(parked_keys(&s).is_empty());
    }

    #[test]
    fn a_plan_record_triggers_a_bounded_sweep_of_every_customer() {
        let mut p = processor();
        load(&mut p, RefKind::Customers, &[customer_line("cust-1")]);
        load(
            &mut p,
            RefKind::Subscriptions,
            &[subscription_line("sub-1", "cust-1", "pro")],
        );
        let mut s = stores();
        let parked = PARKED_RECHECK_BATCH_MAX * 2 + 7;
        for i in 0..parked {
            let (r, out) = run(&mut p, &mut s, &event("cust-1", &format!("e{i}"), dec!(1)));
            r.unwrap();
            assert_eq!(
                header(&out[0], headers::REASON).as_deref(),
                Some("unknown_plan")
            );
        }
        s.apply_committed(&[]).unwrap();
        let now = now_ms();
        assert!(punctuate(&mut p, &mut s, now).is_empty());
        // Let the initial sweep finish before the plan arrives.
        while p.parts[&0].sweep.is_some() {
            assert!(punctuate(&mut p, &mut s, now).is_empty());
        }
        load(&mut p, RefKind::Plans, &[plan_line("pro")]);
        let mut emitted = BTreeSet::new();
        let mut rounds = 0;
        while !parked_keys(&s).is_empty() {
            let out = punctuate(&mut p, &mut s, now);
            assert!(out.len() <= PARKED_RECHECK_BATCH_MAX);
            for o in out {
                let e = EnrichedEvent::from_json_slice(o.value.as_deref().unwrap()).unwrap();
                assert!(emitted.insert(e.event.id), "emitted twice");
            }
            s.apply_committed(&[]).unwrap();
            rounds += 1;
            assert!(rounds < 10);
        }
        assert_eq!(emitted.len(), parked);
        assert_eq!(rounds, 3);
        assert!(punctuate(&mut p, &mut s, now).is_empty());
    }

    #[test]
    fn a_customer_trigger_rechecks_only_that_customer_across_punctuations() {
        let mut p = loaded();
        let mut s = stores();
        let parked = PARKED_RECHECK_BATCH_MAX + 3;
        for i in 0..parked {
            run(&mut p, &mut s, &event("cust-9", &format!("e{i}"), dec!(1)))
                .0
                .unwrap();
        }
        s.apply_committed(&[]).unwrap();
        let now = now_ms();
        while {
            punctuate(&mut p, &mut s, now);
            p.parts[&0].sweep.is_some()
        } {}
        load(&mut p, RefKind::Customers, &[customer_line("cust-9")]);
        load(
            &mut p,
            RefKind::Subscriptions,
            &[subscription_line("sub-9", "cust-9", "pro")],
        );
        assert!(p.parts[&0].customers.contains_key("cust-9"));
        assert!(p.parts[&0].sweep.is_none() && !p.parts[&0].sweep_requested);
        let first = punctuate(&mut p, &mut s, now);
        assert_eq!(first.len(), PARKED_RECHECK_BATCH_MAX);
        s.apply_committed(&[]).unwrap();
        let second = punctuate(&mut p, &mut s, now);
        assert_eq!(second.len(), 3);
        s.apply_committed(&[]).unwrap();
        assert!(parked_keys(&s).is_empty());
        assert!(p.parts[&0].customers.is_empty());
    }

    #[test]
    fn a_still_unresolved_event_changes_reason_without_a_new_exception() {
        let mut p = processor();
        let mut s = stores();
        run(&mut p, &mut s, &event("cust-1", "e1", dec!(5)))
            .0
            .unwrap();
        s.apply_committed(&[]).unwrap();
        punctuate(&mut p, &mut s, now_ms());
        load(&mut p, RefKind::Customers, &[customer_line("cust-1")]);
        assert!(punctuate(&mut p, &mut s, now_ms()).is_empty());
        let stats = read_stats(&s).unwrap();
        assert_eq!(
            stats.by_reason,
            BTreeMap::from([("no_active_subscription".to_owned(), 1)])
        );
        assert!(oldest_parked_ms(&s, "unknown_customer").unwrap().is_none());
        assert!(oldest_parked_ms(&s, "no_active_subscription")
            .unwrap()
            .is_some());
        // The subscription comes, its plan does not: unknown_plan.
        load(
            &mut p,
            RefKind::Subscriptions,
            &[subscription_line("sub-1", "cust-1", "pro")],
        );
        assert!(punctuate(&mut p, &mut s, now_ms()).is_empty());
        assert_eq!(
            read_stats(&s).unwrap().by_reason,
            BTreeMap::from([("unknown_plan".to_owned(), 1)])
        );
    }

    #[test]
    fn replays_of_exceptions_flow_once_and_never_twice() {
        let mut p = loaded();
        let mut s = stores();
        let e = event("cust-9", "e1", dec!(5));
        let bytes = e.to_json_bytes().unwrap();
        run(&mut p, &mut s, &e).0.unwrap();
        s.apply_committed(&[]).unwrap();
        let replayed = vec![
            (headers::ATTEMPT.to_owned(), Some(b"2".to_vec())),
            (
                headers::REPLAYED_FROM.to_owned(),
                Some(format!("{NS}usage.exceptions:0:0").into_bytes()),
            ),
        ];
        // Replayed while still unresolved: parked again, with a new copy.
        let (r, out) = run_with_headers(&mut p, &mut s, &bytes, &replayed);
        r.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(header(&out[0], headers::ATTEMPT).as_deref(), Some("2"));
        assert_eq!(parked_keys(&s).len(), 1);
        assert_eq!(
            read_stats(&s).unwrap().by_reason.get("unknown_customer"),
            Some(&1)
        );
        s.apply_committed(&[]).unwrap();
        // The customer arrives and the replayed copy resolves it.
        load(&mut p, RefKind::Customers, &[customer_line("cust-9")]);
        load(
            &mut p,
            RefKind::Subscriptions,
            &[subscription_line("sub-9", "cust-9", "pro")],
        );
        let (r, out) = run_with_headers(&mut p, &mut s, &bytes, &replayed);
        r.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, format!("{NS}usage.enriched"));
        assert!(parked_keys(&s).is_empty());
        s.apply_committed(&[]).unwrap();
        // Self-healing finds nothing left; a further replay is dropped.
        assert!(punctuate(&mut p, &mut s, now_ms()).is_empty());
        let (r, out) = run_with_headers(&mut p, &mut s, &bytes, &replayed);
        r.unwrap();
        assert!(out.is_empty());
        assert!(!s.has_pending());
        // A replay from a dead-letter topic is a normal input record.
        let from_dlq = vec![(
            headers::REPLAYED_FROM.to_owned(),
            Some(format!("{NS}meterline.dlq.enrich:0:0").into_bytes()),
        )];
        let (r, out) = run_with_headers(&mut p, &mut s, &bytes, &from_dlq);
        r.unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn malformed_table_records_are_skipped() {
        let mut p = loaded();
        let before = p.tables().clone();
        p.on_table_record("ref.customers", Some(b"cust-1"), Some(b"{oops"));
        p.on_table_record("ref.customers", None, Some(b"{}"));
        p.on_table_record("ref.plans", Some(b"no-version"), None);
        p.on_table_record("ref.unknown", Some(b"k"), Some(b"{}"));
        assert_eq!(p.tables(), &before);
        // And a good tombstone still applies afterwards.
        p.on_table_record("ref.customers", Some(b"cust-1"), None);
        assert!(p.tables().customer("cust-1").is_none());
    }

    #[test]
    fn parked_values_round_trip_and_refuse_garbage() {
        let entry = ParkedEntry {
            meta: ParkedMeta {
                reason: "unknown_plan".into(),
                message: "m".into(),
                first_parked_ms: 7,
                input_timestamp_ms: None,
                at_risk: Some(AtRisk {
                    currency: "EUR".into(),
                    amount: DecimalStr(dec!(1.50)),
                    legal_entity: "ml-eu".into(),
                }),
            },
            event: b"{\"x\":1}".to_vec(),
        };
        let bytes = entry.encode().unwrap();
        assert_eq!(bytes[0], PARKED_VALUE_FORMAT);
        assert_eq!(ParkedEntry::decode(&bytes).unwrap(), entry);
        assert_eq!(
            ParkedEntry::decode(&bytes[..3]).unwrap_err().code(),
            "parked_value_truncated"
        );
        assert_eq!(
            ParkedEntry::decode(&[9, 0, 0, 0, 0]).unwrap_err().code(),
            "parked_format_unknown"
        );
        assert_eq!(
            ParkedEntry::decode(&[]).unwrap_err().code(),
            "parked_value_truncated"
        );
    }

    #[test]
    fn keys_sort_per_customer_and_ranges_are_exact() {
        let (from, to) = customer_range("c1");
        for (customer, inside) in [("c1", true), ("c10", false), ("c", false), ("c2", false)] {
            let k = entry_key(customer, "s", "i");
            assert_eq!(k >= from && k < to, inside, "{customer}");
        }
        assert_eq!(prefix_end(&[1, 0xFF]), vec![2]);
        assert_eq!(prefix_end(b"P"), b"Q".to_vec());
        let k = entry_key("c", "s", "i");
        assert!(successor(&k) > k);
        assert_eq!(
            parse_entry_key(&k).unwrap(),
            ("c".into(), "s".into(), "i".into())
        );
        let t = DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap();
        let ids = EventIds {
            customer: "c".into(),
            source: "s".into(),
            id: "i".into(),
        };
        let older = age_key("r", t.timestamp_millis(), &ids);
        let newer = age_key("r", t.timestamp_millis() + 1, &ids);
        assert!(older < newer);
    }
}
