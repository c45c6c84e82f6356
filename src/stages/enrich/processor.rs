//! The enrich processor: resolving or parking each input record, the
//! punctuation that re-checks parked events and refreshes the gauges, and
//! the reference-table feed.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::config::Config;
use crate::contracts::ValidatedEvent;
use crate::lineage::{self, Count};
use crate::refdata::{RefKind, RefTables, RefTrigger};
use crate::runtime::dlq::{self, headers, last_header};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::topology::{self, StageSpec};

use super::events::{
    EventParked, ExceptionReplayDropped, ParkedEventReemitted, TableRecordRefused,
};
use super::metrics::EnrichMetrics;
use super::parked::{
    all_entries_range, customer_range, entry_key, oldest_parked_ms, read_stats, remove_parked,
    store_parked, EventIds, ParkedEntry, ParkedMeta,
};
use super::reason::CORRECTION_TARGET_PARKED;
use super::recheck::{Recheck, Snapshot, PARKED_RECHECK_BATCH_MAX, PARKED_RESWEEP_INTERVAL_MS};
use super::resolve::{meter_catalog, resolve, MeterCatalog, ParkReason};
use super::stats::revenue_at_risk;
use super::{SetupError, COUNTERS, LINEAGE, MALFORMED_VALIDATED_EVENT, MS_PER_SECOND, PARKED};
use crate::contracts::{
    Command, CommandKind, CorrectionKind, EnrichedEvent, ParkedEvent, RetractionRecord,
};

/// A retraction (an amendment is resolved like any event: it carries its
/// replacement).
fn is_retraction(event: &ValidatedEvent) -> bool {
    event
        .correction
        .as_ref()
        .is_some_and(|c| c.kind == CorrectionKind::Retract)
}

/// What a validated event resolves to.
pub(super) enum Resolved {
    Enriched(Box<EnrichedEvent>),
    /// A retraction: passed on unresolved ([`Enricher::pass_retraction`]).
    Retraction,
}

/// Whether some correction of the partition waits for a parked event: then
/// a release re-checks its customer's entries, so the correction follows
/// the event it waited for at once.
pub(super) fn corrections_wait(ctx: &Ctx<'_>) -> Result<bool, StageError> {
    let stats = read_stats(ctx.stores)?;
    Ok(stats.by_reason.contains_key(CORRECTION_TARGET_PARKED))
}

/// Actor of the parked-event notices enrich sends the invoice stage.
pub const PARKED_NOTICE_ACTOR: &str = "meterline:enrich";
/// Version of a parked-event notice id's business key.
const PARKED_NOTICE_ID_VERSION: u32 = 1;

/// The parts of the processor that resolving and parking need, apart from
/// the re-check bookkeeping (so both can be borrowed at once).
pub(super) struct Enricher {
    pub(super) tables: RefTables,
    pub(super) meters: MeterCatalog,
    pub(super) validated_topic: String,
    pub(super) enriched_topic: String,
    pub(super) exceptions_topic: String,
    pub(super) commands_topic: String,
    pub(super) metrics: EnrichMetrics,
}

pub struct EnrichProcessor {
    pub(super) inner: Enricher,
    pub(super) parts: BTreeMap<i32, Recheck>,
    /// Currencies ever reported, so one that drops out is reset to 0.
    /// (currency, legal entity) pairs the revenue-at-risk gauge has shown.
    pub(super) currencies_seen: BTreeSet<(String, String)>,
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
                commands_topic: config.topic(topology::names::COMMANDS),
                metrics: EnrichMetrics::new(),
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

/// One input record being enriched: the record, its value, the event it
/// holds and the event's ids.
#[derive(Clone, Copy)]
struct Input<'r, 'a> {
    rec: &'a InputRecord<'r>,
    bytes: &'a [u8],
    event: &'a ValidatedEvent,
    ids: &'a EventIds,
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

    /// The invoice stage's notice that `event` is parked (or no longer
    /// is), on `billing.commands` keyed by the customer, in the same
    /// transaction as the parked entry's write or delete: what the
    /// `parked_events` hold rule reads.
    pub(super) fn parked_notice(
        &self,
        event: &ValidatedEvent,
        parked: Option<&str>,
    ) -> Result<Output, StageError> {
        let kind = match parked {
            Some(_) => CommandKind::EventParked,
            None => CommandKind::EventUnparked,
        };
        let id = crate::money::idempotency_key(
            &[kind.as_str(), &event.subject, &event.source, &event.id],
            PARKED_NOTICE_ID_VERSION,
        );
        let mut cmd = Command::new(
            id,
            kind,
            event.subject.clone(),
            PARKED_NOTICE_ACTOR,
            event.time,
        );
        cmd.parked = Some(ParkedEvent {
            source: event.source.clone(),
            id: event.id.clone(),
            event_time: event.time,
            code: parked.map(str::to_string),
        });
        let value = cmd
            .to_json_bytes()
            .map_err(|e| StageError::Fatal(format!("serializing a parked notice: {e}")))?;
        Ok(Output {
            topic: self.commands_topic.clone(),
            key: Some(event.subject.as_bytes().to_vec()),
            value: Some(value),
            headers: Vec::new(),
            partition: None,
        })
    }

    pub(super) fn enriched_output(&self, enriched: &EnrichedEvent) -> Result<Output, StageError> {
        let value = enriched
            .to_json_bytes()
            .map_err(|e| StageError::Fatal(format!("serializing an enriched event: {e}")))?;
        Ok(Output {
            topic: self.enriched_topic.clone(),
            key: Some(enriched.event.subject.as_bytes().to_vec()),
            value: Some(value),
            headers: Vec::new(),
            partition: None,
        })
    }

    /// Whether `rec` was replayed from usage.exceptions; the source if so.
    fn replayed_exception<'r>(&self, rec: &InputRecord<'r>) -> Option<&'r str> {
        let from = last_header(rec.headers, headers::REPLAYED_FROM)?;
        let from = std::str::from_utf8(from).ok()?;
        let topic = from.strip_prefix(self.exceptions_topic.as_str())?;
        topic.starts_with(':').then_some(from)
    }

    /// Enriches or parks one input record; the customer when a parked
    /// entry of theirs was released.
    fn process(
        &mut self,
        rec: &InputRecord<'_>,
        ctx: &mut Ctx<'_>,
    ) -> Result<Option<String>, StageError> {
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
            stage: SPEC.name,
            lag_s: ctx.now_ms.saturating_sub(event.time.timestamp_millis()) / MS_PER_SECOND,
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
                return Ok(None);
            }
        }
        match self.resolve_event(&event, ctx)? {
            Ok(resolved) => {
                if let Some(old) = &existing {
                    remove_parked(ctx.stores, &ids, &old.meta)?;
                    ctx.emit(self.parked_notice(&event, None)?);
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
                self.emit_resolved(ctx, &event, resolved, (rec.partition, rec.offset), healed)?;
                return Ok(healed.then(|| event.subject.clone()));
            }
            Err(reason) => {
                let parked = existing.is_none().then_some(Count::Held);
                lineage::count(ctx, COUNTERS, &day, arrived.into_iter().chain(parked))?;
                let input = Input {
                    rec,
                    bytes,
                    event: &event,
                    ids: &ids,
                };
                self.park(ctx, &input, existing.as_ref(), &reason)?;
            }
        }
        Ok(None)
    }

    /// What `event` resolves to, or why it is parked. A retraction or
    /// amendment whose event is parked waits for it: passed on now, it
    /// would find nothing to take back, and the event would be billed in
    /// full once it heals.
    pub(super) fn resolve_event(
        &self,
        event: &ValidatedEvent,
        ctx: &Ctx<'_>,
    ) -> Result<Result<Resolved, ParkReason>, StageError> {
        if let Some(c) = &event.correction {
            let target = entry_key(&event.subject, &c.source, &c.id);
            if let Some(bytes) = ctx.stores.get(PARKED, &target)? {
                let parked = ParkedEntry::decode(&bytes)?;
                return Ok(Err(ParkReason::CorrectionTargetParked {
                    customer: event.subject.clone(),
                    target_source: c.source.clone(),
                    target_id: c.id.clone(),
                    target_reason: parked.meta.reason,
                }));
            }
        }
        if is_retraction(event) {
            return Ok(Ok(Resolved::Retraction));
        }
        Ok(resolve(event, &self.tables, &self.meters).map(|e| Resolved::Enriched(Box::new(e))))
    }

    /// Emits what `event` resolved to, with its lineage step (`at`: the
    /// input's partition and offset; `healed`: it was parked).
    pub(super) fn emit_resolved(
        &self,
        ctx: &mut Ctx<'_>,
        event: &ValidatedEvent,
        resolved: Resolved,
        at: (i32, i64),
        healed: bool,
    ) -> Result<(), StageError> {
        let (partition, offset) = at;
        match resolved {
            Resolved::Enriched(enriched) => {
                self.note_enriched(ctx, &enriched, partition, offset, healed)?;
                let out = self.enriched_output(&enriched)?;
                ctx.emit(out);
            }
            Resolved::Retraction => self.pass_retraction(ctx, event, at)?,
        }
        Ok(())
    }

    /// Parks an event no contract matches (again, when it was parked
    /// before: its first parking time and input timestamp stay), with its
    /// lineage step and its exceptions copy.
    fn park(
        &self,
        ctx: &mut Ctx<'_>,
        input: &Input<'_, '_>,
        existing: Option<&ParkedEntry>,
        reason: &ParkReason,
    ) -> Result<(), StageError> {
        let Input {
            rec,
            bytes,
            event,
            ids,
        } = *input;
        self.note(
            ctx,
            event,
            lineage::Step {
                outcome: "parked".into(),
                partition: rec.partition,
                offset: rec.offset,
                reason: Some(reason.code().to_owned()),
                detail: serde_json::Value::Null,
            },
        )?;
        let (first_parked_ms, input_timestamp_ms) = match existing {
            Some(old) => (old.meta.first_parked_ms, old.meta.input_timestamp_ms),
            None => (ctx.now_ms, rec.timestamp_ms),
        };
        let entry = ParkedEntry {
            meta: ParkedMeta {
                reason: reason.code().to_owned(),
                message: reason.message(),
                first_parked_ms,
                input_timestamp_ms,
                at_risk: revenue_at_risk(event, reason, &self.tables),
            },
            event: bytes.to_vec(),
        };
        store_parked(ctx.stores, ids, existing.map(|e| &e.meta), &entry)?;
        ctx.emit(self.exception(rec, &event.subject, reason));
        if existing.is_none() {
            ctx.emit(self.parked_notice(event, Some(reason.code()))?);
        }
        EventParked {
            ids,
            reason: reason.code(),
            message: &entry.meta.message,
            again: existing.is_some(),
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// Appends a lineage step for `event`.
    fn note(
        &self,
        ctx: &mut Ctx<'_>,
        event: &ValidatedEvent,
        step: impl lineage::StepRecord,
    ) -> Result<(), StageError> {
        lineage::record_step(ctx, LINEAGE, &event.source, &event.id, step, ctx.now_ms)
    }

    /// A retraction goes on to rate unresolved ([`RetractionRecord`]): the
    /// event it names is priced in the context it was rated in, which rate
    /// keeps; resolving the retraction's own time could find another
    /// subscription or none. Counted (by the caller) like an enriched event.
    fn pass_retraction(
        &self,
        ctx: &mut Ctx<'_>,
        event: &ValidatedEvent,
        (partition, offset): (i32, i64),
    ) -> Result<(), StageError> {
        let step = lineage::Step {
            outcome: "enriched".into(),
            partition,
            offset,
            reason: None,
            detail: serde_json::json!({ "retracts": event.correction }),
        };
        self.note(ctx, event, step)?;
        let key = event.subject.as_bytes().to_vec();
        let value = RetractionRecord {
            retraction: event.clone(),
        }
        .to_json_bytes()
        .map_err(|e| StageError::Fatal(format!("serializing a retraction: {e}")))?;
        ctx.emit(Output {
            topic: self.enriched_topic.clone(),
            key: Some(key),
            value: Some(value),
            headers: Vec::new(),
            partition: None,
        });
        Ok(())
    }

    /// The lineage step of an enriched event (`healed`: it was parked).
    pub(super) fn note_enriched(
        &self,
        ctx: &mut Ctx<'_>,
        e: &EnrichedEvent,
        partition: i32,
        offset: i64,
        healed: bool,
    ) -> Result<(), StageError> {
        #[derive(serde::Serialize)]
        struct Detail<'a> {
            subscription: &'a str,
            plan: &'a str,
            plan_version: u32,
            currency: &'a str,
            legal_entity: &'a str,
            billing_period: &'a str,
            healed: bool,
        }
        self.note(
            ctx,
            &e.event,
            lineage::StepOut {
                outcome: "enriched",
                partition,
                offset,
                detail: &Detail {
                    subscription: &e.subscription_id,
                    plan: &e.plan_id,
                    plan_version: e.plan_version,
                    currency: &e.currency,
                    legal_entity: &e.legal_entity,
                    billing_period: &e.billing_period.id,
                    healed,
                },
            },
        )
    }
}

/// This stage's entry in the stage table (a constant index: out of range
/// would not compile).
#[allow(clippy::indexing_slicing)]
pub(super) const SPEC: &StageSpec = &topology::STAGES[2];

impl Processor for EnrichProcessor {
    fn spec(&self) -> &'static StageSpec {
        SPEC
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let part = self.parts.entry(ctx.partition).or_insert_with(Recheck::new);
        if let Some(customer) = self.inner.process(rec, ctx)? {
            if corrections_wait(ctx)? {
                part.trigger(&RefTrigger::new(RefKind::Customers, customer));
            }
        }
        Ok(())
    }

    fn punctuate(&mut self, ctx: &mut Ctx<'_>, now_ms: i64) -> Result<(), StageError> {
        let part = self.parts.entry(ctx.partition).or_insert_with(Recheck::new);
        if part.sweep.is_none()
            && part
                .last_sweep_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= PARKED_RESWEEP_INTERVAL_MS)
        {
            part.sweep_requested = true;
        }
        if part.start_sweep(|| all_entries_range().0) {
            part.last_sweep_ms = Some(now_ms);
        }

        let mut budget = PARKED_RECHECK_BATCH_MAX;
        // Targeted re-checks first: they answer a record that just arrived.
        while budget > 0 {
            let Some((customer, from)) = part.customers.pop_first() else {
                break;
            };
            let (_, to) = customer_range(&customer);
            let checked = self.inner.recheck_range(&from, &to, budget, ctx)?;
            budget = budget.saturating_sub(checked.used);
            if let Some(next) = checked.next {
                part.customers.insert(customer, next);
            }
            for again in checked.again {
                part.trigger(&RefTrigger::new(RefKind::Customers, again));
            }
        }
        if budget > 0 {
            if let Some(from) = part.sweep.take() {
                let (_, to) = all_entries_range();
                let checked = self.inner.recheck_range(&from, &to, budget, ctx)?;
                part.sweep = checked.next;
                for again in checked.again {
                    part.trigger(&RefTrigger::new(RefKind::Customers, again));
                }
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
            part.restart();
        }
    }

    fn on_revoked(&mut self, partition: i32) {
        self.parts.remove(&partition);
        // No Ctx here: gauges only, never state.
        self.set_gauges(crate::runtime::wall_clock_ms());
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
