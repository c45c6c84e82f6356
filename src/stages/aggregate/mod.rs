//! The aggregate stage: event-time tumbling windows over rated usage, each
//! emitted once, final, when the partition's watermark passes its end.
//!
//! # Windows
//!
//! For every measure of a [`RatedEvent`] (one record of `usage.rated`) the
//! marginal quantity and amount are added to two windows of its rating
//! segment (subscription, meter, billing period, plan version, group):
//!
//! * a [`WindowKind::Day`] window, the subscription's local day
//!   (`enriched.local_day`): the accrual window;
//! * a [`WindowKind::BillingPeriod`] window, the billing period
//!   (`enriched.billing_period`): the invoice window.
//!
//! and every on-time event is added once to the [`WindowKind::PeriodClose`]
//! window of its (subscription, billing period): the subscription-level
//! window that carries the base fee and minimum commitment and tells post
//! that every segment of the period has been emitted.
//!
//! Both calendar windows come from the enriched event, i.e. local midnight in
//! the subscription's IANA time zone and the anchor-day month of
//! [`crate::calendar`] (28 to 31 days, 23 or 25 hour days around DST).
//!
//! Each window keeps the summed marginal quantity and amount (unrounded:
//! rounding happens once, in post), the number of events and a lineage
//! digest: the sum modulo 2^256 of SHA-256(len(source) ‖ source ‖ len(id) ‖
//! id) over its events, which does not depend on the order in which the
//! events arrived (and, unlike XOR, is not cancelled by a repeated event).
//!
//! # Watermark and closing
//!
//! Per partition: `watermark = greatest event time seen - grace`, never
//! moving back, where grace is config `aggregate.grace_period_s` (default
//! [`GRACE_PERIOD_S`]). When a partition has seen no input for
//! `aggregate.idle_advance_s` (default [`IDLE_ADVANCE_S`]) of wall clock,
//! [`Processor::punctuate`] advances it to `now - grace` (as if an event
//! stamped "now" had arrived), but
//! only when that closes at least one window, so an idle partition does not
//! write a changelog record every second.
//!
//! A window is closed when `end <= watermark`. Closing emits it as a
//! [`ClosedWindow`] on `usage.windows` and deletes it from the store, in the
//! same transaction that stores the watermark: after a restart the window is
//! neither emitted again (it is gone and the watermark is past it) nor lost
//! (the transaction either committed both or neither). Windows closing at the
//! same watermark are emitted in the order (end, kind: day, billing period,
//! period close, then segment and window ids), so post always sees a
//! period's day windows before its invoice windows, and those before the
//! period close.
//!
//! Because the stored watermark is monotonic, "closed" needs no per-window
//! marker: every window ending at or before the watermark is closed, whether
//! or not it ever had events. A window that never had events and is now in
//! the past must not be opened either, since a billing period with no line
//! for a segment has been invoiced without it.
//!
//! # Periods without usage
//!
//! A billing period with no usage still closes (DESIGN.md: base fee and
//! minimum commitment are charged for every period the subscription
//! overlaps). Closing a subscription's regular period-close window opens
//! the next period's, empty, unless the subscription ends at or before
//! that period starts ([`ClosedWindow::subscription_end`]). Periods are
//! driven by subscriptions, not by usage: aggregate reads the reference
//! tables and walks every subscription's periods from its start, so the
//! periods before its first event, and every period of a subscription
//! that never sends one, close too, each exactly once (see [`periods`]).
//! A period's base fee, commitment, tax code and accounts are those of the
//! plan version in force at the start of its service interval.
//!
//! # Late events
//!
//! An event whose day (or billing period) window is closed is an
//! *adjustment*: it goes into the window of the same kind and segment that
//! contains the watermark (the current open day or billing period of the
//! subscription's calendar), in an accumulator of its own that names the
//! original window ([`ClosedWindow::adjusts`]). Closed windows are never
//! rewritten. A late event does not touch any period-close window: the base
//! fee and commitment of a closed period stay as invoiced, and an
//! adjustment is invoiced in the period in which it became known.
//!
//! Each day window names the invoice window that will clear its accruals
//! ([`ClosedWindow::clearing`]): the billing period window (regular or
//! adjustment) that the same event's measure went to.
//!
//! # The windows store (store 0, `windows`)
//!
//! | key | value |
//! |---|---|
//! | `C` subscription id, period end (i64 ms) | empty: the period's `period_close` was emitted ([`periods`]) |
//! | `M` | the partition's [`PartitionClock`], JSON |
//! | `W` end (i64 ms) kind rank, scope id, window id, adjusted window id | an open [`ClosedWindow`] being accumulated, JSON |
//!
//! The end comes first (order-preserving) so closing is a range scan.
//!
//! # Performance
//!
//! Windows changed by events live in a write-back cache (per partition,
//! deserialized) and are written to the store once per transaction, from
//! [`Processor::flush`] before the runtime commits, or before a scan needs
//! them; an abort drops the cache with the store's overlay. The earliest
//! end of an open window is cached too, so the watermark moving (nearly
//! every event) costs no store scan unless a window is due, and so is the
//! partition's clock (read once, written at the flush, not per event). An
//! event takes the windows it adds to out of the cache rather than copying
//! them, and puts them back untouched if it is refused ([`touch`]). Scans of open
//! windows start just after the stored watermark: everything before it is
//! closed, and RocksDB would otherwise walk the deletion markers of every
//! window closed since the last compaction.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::calendar::{self, BillingPeriod, LocalDay};
use crate::config::Config;
use crate::contracts::{
    Clearing, ClosedWindow, EnrichedHead, PartitionClock, RatedHead, SegmentInfo, Window,
    WindowKind,
};
use crate::refdata::{RefKind, RefTables};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::store::keys::{encode_i64, KeyBuilder};
use crate::store::StoreId;
use crate::topology::{self, StageSpec};

pub mod periods;
pub mod reason;
mod touch;

/// How long after the greatest event time seen a window stays open for late
/// events, in seconds: the default of config `aggregate.grace_period_s`.
pub const GRACE_PERIOD_S: i64 = 600;
/// Wall-clock time without input after which a partition's watermark
/// advances by the wall clock, in seconds: the default of config
/// `aggregate.idle_advance_s`.
pub const IDLE_ADVANCE_S: i64 = 60;
const MS_PER_S: i64 = 1_000;

/// The windows store's index in the stage's store list.
const WINDOWS: StoreId = 0;
/// Lineage (see [`crate::lineage`]).
const LINEAGE: StoreId = 1;
/// Key prefixes of the windows store (see the module docs).
const CLOCK_KEY: &[u8] = b"M";
const WINDOW_PREFIX: u8 = b'W';
/// Windows closed per scan of the store; closing loops until none is left.
const CLOSE_SCAN_BATCH: usize = 1_000;
/// Lineage digests are 256-bit sums, written as 64 hex digits.
const DIGEST_BYTES: usize = 32;

/// Reject code of an input record that is not a rated event.
pub use reason::MALFORMED_RATED_EVENT;

/// Why a rated event cannot be aggregated. [`code`](AggregateError::code)
/// is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    #[error("not a rated event: {0}")]
    Malformed(String),
    #[error("calendar: {0}")]
    Calendar(#[from] calendar::CalendarError),
    #[error("amount overflow in window {0}")]
    Overflow(String),
    #[error("instant out of range: {0} ms")]
    Instant(i64),
}

impl AggregateError {
    pub fn code(&self) -> &'static str {
        match self {
            AggregateError::Malformed(_) => MALFORMED_RATED_EVENT,
            AggregateError::Calendar(e) => e.code(),
            AggregateError::Overflow(_) => crate::money::reasons::AMOUNT_OVERFLOW,
            AggregateError::Instant(_) => reason::INSTANT_OUT_OF_RANGE,
        }
    }
}

impl From<AggregateError> for StageError {
    fn from(e: AggregateError) -> Self {
        StageError::Reject {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

fn window_key(
    end: DateTime<Utc>,
    kind: WindowKind,
    scope: &str,
    window_id: &str,
    adjusts: Option<&Window>,
) -> Result<Vec<u8>, AggregateError> {
    // "R" (regular) or "A" + the adjusted window's id: never equal.
    let adjusted = match adjusts {
        Some(w) => format!("A{}", w.id),
        None => "R".to_string(),
    };
    Ok(KeyBuilder::new(WINDOW_PREFIX)
        .i64(end.timestamp_millis())
        .bytes(&[kind.rank()])
        .str(scope)
        .str(window_id)
        .str(&adjusted)
        .build())
}

/// The lineage digest of one event (see the module docs).
pub fn event_digest(source: &str, id: &str) -> [u8; DIGEST_BYTES] {
    let mut h = Sha256::new();
    for part in [source, id] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// The empty lineage digest (no events).
pub fn empty_digest() -> String {
    hex::encode([0u8; DIGEST_BYTES])
}

/// `acc + item` modulo 2^256, both big-endian; `acc` as 64 hex digits.
pub fn add_digest(acc: &str, item: &[u8; DIGEST_BYTES]) -> Result<String, String> {
    let mut sum = acc.to_string();
    fold_digest(&mut sum, item)?;
    Ok(sum)
}

/// [`add_digest`] in place: `acc` becomes `acc + item`, without allocating
/// (this runs for every window every event touches).
pub fn fold_digest(acc: &mut String, item: &[u8; DIGEST_BYTES]) -> Result<(), String> {
    let mut sum = [0u8; DIGEST_BYTES];
    hex::decode_to_slice(acc.as_bytes(), &mut sum)
        .map_err(|e| format!("lineage digest {acc:?}: {e}"))?;
    let mut carry = 0u16;
    for (s, i) in sum.iter_mut().rev().zip(item.iter().rev()) {
        let v = u16::from(*s) + u16::from(*i) + carry;
        *s = (v & 0xFF) as u8;
        carry = v >> 8;
    }
    let mut digits = [0u8; 2 * DIGEST_BYTES];
    hex::encode_to_slice(sum, &mut digits).map_err(|e| format!("lineage digest: {e}"))?;
    let digits = std::str::from_utf8(&digits).map_err(|e| format!("lineage digest: {e}"))?;
    acc.clear();
    acc.push_str(digits);
    Ok(())
}

fn to_window(id: String, start: DateTime<Utc>, end: DateTime<Utc>) -> Window {
    Window { id, start, end }
}

fn instant(ms: i64) -> Result<DateTime<Utc>, AggregateError> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .ok_or(AggregateError::Instant(ms))
}

fn fatal(what: &str, e: impl std::fmt::Display) -> StageError {
    StageError::Fatal(format!("{what}: {e}"))
}

/// Where one event's measures go: regular windows, or adjustments in the
/// current open windows.
struct Targets {
    day: Window,
    day_adjusts: Option<Window>,
    period: Window,
    period_adjusts: Option<Window>,
}

/// Decides the targets of an event from the stored watermark.
fn targets(e: &EnrichedHead, watermark_ms: Option<i64>) -> Result<Targets, AggregateError> {
    let closed = |w: &Window| watermark_ms.is_some_and(|wm| w.end.timestamp_millis() <= wm);
    let day_closed = closed(&e.local_day);
    let period_closed = closed(&e.billing_period);
    let mut t = Targets {
        day: e.local_day.clone(),
        day_adjusts: None,
        period: e.billing_period.clone(),
        period_adjusts: None,
    };
    if let (Some(wm), true) = (watermark_ms, day_closed || period_closed) {
        let tz = calendar::parse_tz(&e.time_zone)?;
        let now = instant(wm)?;
        if day_closed {
            let d = LocalDay::containing(tz, now)?;
            t.day_adjusts = Some(e.local_day.clone());
            t.day = to_window(d.id(), d.start(), d.end());
        }
        if period_closed {
            let p = BillingPeriod::containing(e.billing_anchor_day, tz, now)?;
            t.period_adjusts = Some(e.billing_period.clone());
            t.period = to_window(p.id(), p.start(), p.end());
        }
    }
    Ok(t)
}

pub struct AggregateProcessor {
    windows_topic: String,
    /// `aggregate.grace_period_s`, in ms.
    grace_ms: i64,
    /// `aggregate.idle_advance_s`, in ms.
    idle_advance_ms: i64,
    /// Wall clock of the last input per partition. A liveness hint only
    /// (after a restart the idle timer starts again, which merely delays
    /// the wall-clock advance), so it is not kept in the store.
    last_input_ms: BTreeMap<i32, i64>,
    /// Business gauges (see [`UnbilledMetrics`]).
    unbilled: UnbilledMetrics,
    /// Write-back cache per partition (see "Performance" in the module docs).
    cache: BTreeMap<i32, PartCache>,
    /// The reference tables (see [`periods`]), materialised on every instance.
    tables: RefTables,
    /// Partition count of `usage.rated`: which partition owns a customer.
    input_partitions: i32,
    /// Per partition: the subscriptions still to walk.
    pending: BTreeMap<i32, periods::Pending>,
    /// Per partition: customer -> periods the last walk of its
    /// subscriptions left without a period close for want of reference
    /// data ([`periods::Walk::waiting`]). Each walk of a customer replaces
    /// its count, so a deleted subscription's periods drop out too.
    waiting: BTreeMap<i32, BTreeMap<String, usize>>,
    /// `meterline_aggregate_periods_waiting_for_reference_data`.
    waiting_gauge: prometheus::IntGauge,
}

/// Per partition: windows changed since the last flush (not yet in the
/// store), the earliest end of any open window, when known, and the clock.
#[derive(Default)]
struct PartCache {
    dirty: BTreeMap<Vec<u8>, ClosedWindow>,
    /// The partition's clock as the transaction sees it, once read.
    clock: Option<PartitionClock>,
    /// Whether `clock` is newer than the store's (written at the flush).
    clock_dirty: bool,
    /// None: unknown (recomputed from the store and `dirty`); Some(None):
    /// no open window.
    min_end_ms: Option<Option<i64>>,
}

/// (currency, legal entity) -> (unbilled amount, open billing-period windows).
type UnbilledSums = BTreeMap<(String, String), (Decimal, i64)>;

/// How often a partition's open windows are summed for the unbilled gauges.
const UNBILLED_REFRESH_MS: i64 = 10_000;

/// Business gauges from the open windows: what is rated but not yet
/// invoiced. Every rated amount sits in exactly one open billing-period
/// window (regular or adjustment) until it closes into an invoice line.
struct UnbilledMetrics {
    /// `meterline_aggregate_unbilled_amount{currency, legal_entity}`.
    amount: Option<prometheus::GaugeVec>,
    /// `meterline_aggregate_invoice_lines_pending{currency, legal_entity}`.
    lines: prometheus::IntGaugeVec,
    /// `meterline_event_time_lag_seconds{stage="aggregate"}`.
    event_time_lag: prometheus::IntGauge,
    /// Per partition: when last summed, and (currency, legal entity) ->
    /// (amount, open billing-period windows).
    parts: BTreeMap<i32, (i64, UnbilledSums)>,
    /// Label pairs shown so far (set to 0 when they empty).
    seen: std::collections::BTreeSet<(String, String)>,
}

impl UnbilledMetrics {
    fn new() -> Self {
        let amount = prometheus::GaugeVec::new(
            prometheus::Opts::new(
                "meterline_aggregate_unbilled_amount",
                "Rated usage not yet invoiced (open billing-period windows), unrounded, by currency and legal entity.",
            ),
            &["currency", "legal_entity"],
        )
        .ok();
        if let Some(g) = &amount {
            // Refused when already registered (two processors in one test
            // binary); the first one keeps serving.
            let _ = crate::metrics::REGISTRY.register(Box::new(g.clone()));
        }
        UnbilledMetrics {
            amount,
            lines: crate::metrics::gauge_vec(
                "meterline_aggregate_invoice_lines_pending",
                "Invoice lines pending period close (open billing-period windows), by currency and legal entity.",
                &["currency", "legal_entity"],
            ),
            event_time_lag: crate::metrics::event_time_lag(SPEC.name),
            parts: BTreeMap::new(),
            seen: std::collections::BTreeSet::new(),
        }
    }

    /// Sums the partition's open billing-period windows, at most every
    /// [`UNBILLED_REFRESH_MS`], and refreshes the gauges.
    fn refresh(&mut self, ctx: &Ctx<'_>, now_ms: i64) -> Result<(), StageError> {
        if self
            .parts
            .get(&ctx.partition)
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) < UNBILLED_REFRESH_MS)
        {
            return Ok(());
        }
        let mut sums = UnbilledSums::new();
        // Open windows only: closed ones (tombstones until compaction) lie
        // at or before the watermark.
        let mut from = open_windows_from(load_clock(ctx)?.watermark_ms);
        let to = vec![WINDOW_PREFIX + 1];
        loop {
            let batch = ctx.stores.scan(WINDOWS, &from, &to, CLOSE_SCAN_BATCH)?;
            let Some((last, _)) = batch.last() else { break };
            from = last.clone();
            from.push(0);
            for (_, v) in &batch {
                let w = ClosedWindow::from_json_slice(v)
                    .map_err(|e| fatal("stored window is corrupt", e))?;
                if w.kind == WindowKind::BillingPeriod {
                    let e = sums
                        .entry((w.currency.clone(), w.legal_entity.clone()))
                        .or_default();
                    e.0 = e.0.checked_add(w.amount).unwrap_or(e.0);
                    e.1 += 1;
                }
            }
        }
        self.parts.insert(ctx.partition, (now_ms, sums));
        self.publish();
        Ok(())
    }

    fn publish(&mut self) {
        let mut total = UnbilledSums::new();
        for (_, sums) in self.parts.values() {
            for (k, (a, n)) in sums {
                let e = total.entry(k.clone()).or_default();
                e.0 = e.0.checked_add(*a).unwrap_or(e.0);
                e.1 += n;
            }
        }
        self.seen.extend(total.keys().cloned());
        for k in &self.seen {
            let (a, n) = total.get(k).copied().unwrap_or_default();
            crate::internal_events::UnbilledMeasured {
                currency: &k.0,
                legal_entity: &k.1,
                amount: rust_decimal::prelude::ToPrimitive::to_f64(&a).unwrap_or(0.0),
                lines: n,
            }
            .emit(self.amount.as_ref(), &self.lines);
        }
    }
}

impl AggregateProcessor {
    pub fn new(config: &Config) -> Self {
        AggregateProcessor {
            windows_topic: config.topic(topology::names::WINDOWS),
            grace_ms: i64::from(config.aggregate.grace_period_s) * MS_PER_S,
            idle_advance_ms: i64::from(config.aggregate.idle_advance_s) * MS_PER_S,
            last_input_ms: BTreeMap::new(),
            cache: BTreeMap::new(),
            unbilled: UnbilledMetrics::new(),
            tables: RefTables::new(),
            input_partitions: 1,
            pending: BTreeMap::new(),
            waiting: BTreeMap::new(),
            waiting_gauge: crate::metrics::gauge(
                "meterline_aggregate_periods_waiting_for_reference_data",
                "Billing periods without a period close (closed ones not posted: no base fee, true-up or invoice; the first open one not opened) because their customer or the plan version in force at their start is missing from the reference tables; they close when it arrives.",
            ),
        }
    }

    /// Emits a closed window on `usage.windows`. A regular period close
    /// first takes its period's terms from the reference tables and leaves
    /// its closed marker; one whose marker is already there was emitted
    /// before and is dropped, so no path can post a period twice.
    fn emit_closed(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut w: ClosedWindow,
        watermark_ms: i64,
    ) -> Result<(), StageError> {
        if w.kind == WindowKind::PeriodClose && w.adjusts.is_none() {
            if periods::is_closed(ctx, &w.subscription_id, w.window.end)? {
                warn!(
                    subscription = w.subscription_id,
                    period = w.window.id,
                    "period close emitted before: not emitted again"
                );
                return Ok(());
            }
            if !periods::apply_terms(&self.tables, &mut w) {
                warn!(
                    subscription = w.subscription_id,
                    period = w.window.id,
                    "subscription or plan version unknown here: the period closes with the terms its usage carried"
                );
            }
            periods::mark_closed(ctx, &w);
        }
        w.closed_at_watermark_ms = watermark_ms;
        let bytes = w
            .to_json_bytes()
            .map_err(|e| fatal("serializing a closed window", e))?;
        ctx.emit(Output {
            topic: self.windows_topic.clone(),
            key: Some(w.customer.id.clone().into_bytes()),
            value: Some(bytes),
            headers: Vec::new(),
            partition: None,
            // The runtime stamps nothing: the broker's append time.
        });
        Ok(())
    }

    /// Walks the subscriptions due in this partition (see [`periods`]):
    /// emits closed periods never emitted, opens the first open one.
    fn schedule_periods(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let (partitions, partition) = (self.input_partitions, ctx.partition);
        let batch = self
            .pending
            .entry(ctx.partition)
            .or_insert_with(periods::Pending::new)
            .next_batch(&self.tables, |customer| {
                crate::kafka::partition_for_key(customer.as_bytes(), partitions) == partition
            });
        if batch.is_empty() {
            return Ok(());
        }
        // The walk reads open windows from the store.
        self.flush_windows(ctx)?;
        let watermark = self.clock(ctx)?.watermark_ms;
        for customer in batch {
            let subs: Vec<crate::refdata::Subscription> =
                self.tables.subscriptions_of(&customer).cloned().collect();
            let mut waiting = 0;
            for sub in subs {
                let walk = {
                    let c: &Ctx<'_> = ctx;
                    periods::walk(c, &self.tables, &sub, watermark, |key| {
                        Ok(c.stores.get(WINDOWS, key)?.is_some())
                    })?
                };
                waiting += walk.waiting;
                for w in walk.closed {
                    // `walk` emits closed periods only below a watermark.
                    self.emit_closed(ctx, w, watermark.unwrap_or_default())?;
                }
                if let Some((key, w)) = walk.open {
                    let part = self.cache.entry(ctx.partition).or_default();
                    part.min_end_ms = None;
                    part.dirty.insert(key, w);
                }
            }
            let part = self.waiting.entry(partition).or_default();
            if waiting == 0 {
                part.remove(&customer);
            } else {
                part.insert(customer, waiting);
            }
        }
        self.publish_waiting();
        Ok(())
    }

    fn publish_waiting(&self) {
        let periods: usize = self.waiting.values().flat_map(|p| p.values()).sum();
        crate::internal_events::PeriodsWaitingMeasured {
            periods: i64::try_from(periods).unwrap_or(i64::MAX),
        }
        .emit(&self.waiting_gauge);
    }

    /// Writes the partition's changed windows and clock into the store.
    fn flush_windows(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let Some(c) = self.cache.get_mut(&ctx.partition) else {
            return Ok(());
        };
        if let (Some(clock), true) = (c.clock, c.clock_dirty) {
            store_clock(ctx, &clock)?;
            c.clock_dirty = false;
        }
        for (key, w) in std::mem::take(&mut c.dirty) {
            let b = w
                .to_json_bytes()
                .map_err(|e| fatal("serializing a window", e))?;
            ctx.stores.put(WINDOWS, key, b);
        }
        Ok(())
    }

    /// The earliest end of an open window of the partition (the watermark
    /// must reach it before anything closes), from the cache or one store
    /// read starting after the stored watermark.
    fn min_open_end(
        &mut self,
        ctx: &Ctx<'_>,
        watermark_ms: Option<i64>,
    ) -> Result<Option<i64>, StageError> {
        let c = self.cache.entry(ctx.partition).or_default();
        if let Some(known) = c.min_end_ms {
            return Ok(known);
        }
        let from = open_windows_from(watermark_ms);
        let stored = match ctx
            .stores
            .scan(WINDOWS, &from, &[WINDOW_PREFIX + 1], 1)?
            .first()
        {
            Some((k, _)) => Some(window_key_end(k)?),
            None => None,
        };
        let cached = c
            .dirty
            .values()
            .map(|w| w.window.end.timestamp_millis())
            .min();
        let min = match (stored, cached) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        c.min_end_ms = Some(min);
        Ok(min)
    }

    /// Emits and deletes every open window ending at or before
    /// `watermark_ms`; `previous_ms` is the watermark before (every window
    /// ending at or before it is closed already, so the scan starts after
    /// it and never walks the tombstones of closed windows).
    fn close_until(
        &mut self,
        ctx: &mut Ctx<'_>,
        previous_ms: Option<i64>,
        watermark_ms: i64,
    ) -> Result<(), StageError> {
        self.flush_windows(ctx)?;
        if let Some(c) = self.cache.get_mut(&ctx.partition) {
            c.min_end_ms = None;
        }
        let from = open_windows_from(previous_ms);
        let mut to = vec![WINDOW_PREFIX];
        to.extend_from_slice(&encode_i64(watermark_ms.saturating_add(1)));
        loop {
            let batch = ctx.stores.scan(WINDOWS, &from, &to, CLOSE_SCAN_BATCH)?;
            if batch.is_empty() {
                return Ok(());
            }
            for (key, value) in batch {
                let w = ClosedWindow::from_json_slice(&value)
                    .map_err(|e| fatal("stored window is corrupt", e))?;
                ctx.stores.delete(WINDOWS, key);
                if let Some((next_key, next)) = next_period_close(&w)? {
                    // A later scan of this loop closes it too if the
                    // watermark is already past its end.
                    if ctx.stores.get(WINDOWS, &next_key)?.is_none() {
                        let b = next
                            .to_json_bytes()
                            .map_err(|e| fatal("serializing a window", e))?;
                        ctx.stores.put(WINDOWS, next_key, b);
                    }
                }
                self.emit_closed(ctx, w, watermark_ms)?;
            }
        }
    }
}

/// The period-close window of the billing period after `w`'s, empty, when
/// `w` is a regular period close and the subscription is still active in
/// that next period (it has no end, or ends after the next period starts).
/// Its plan version, base fee, commitment and accounts are those `w` closed
/// with; usage in the period updates them as usual.
fn next_period_close(w: &ClosedWindow) -> Result<Option<(Vec<u8>, ClosedWindow)>, StageError> {
    if w.kind != WindowKind::PeriodClose || w.adjusts.is_some() {
        return Ok(None);
    }
    let tz = calendar::parse_tz(&w.time_zone).map_err(|e| fatal("stored window", e))?;
    let next = BillingPeriod::containing(w.billing_anchor_day, tz, w.window.end)
        .map_err(|e| fatal("stored window", e))?;
    // The calendar guarantees periods tile time: the next one starts where
    // this one ends. Anything else would skip or double-bill a period.
    if next.start() != w.window.end {
        return Err(fatal(
            "calendar",
            format!("period after {} starts at {}", w.window.id, next.start()),
        ));
    }
    if w.subscription_end.is_some_and(|end| end <= next.start()) {
        return Ok(None);
    }
    let window = to_window(next.id(), next.start(), next.end());
    let key = window_key(
        window.end,
        WindowKind::PeriodClose,
        &w.subscription_id,
        &window.id,
        None,
    )?;
    let mut n = w.clone();
    n.window = window.clone();
    n.clearing = Clearing {
        period: window,
        adjusts: None,
    };
    n.quantity = Decimal::ZERO;
    n.amount = Decimal::ZERO;
    n.event_count = 0;
    n.lineage_digest = empty_digest();
    n.closed_at_watermark_ms = 0;
    Ok(Some((key, n)))
}

/// Where open windows start in the store, given the stored watermark.
fn open_windows_from(watermark_ms: Option<i64>) -> Vec<u8> {
    let mut from = vec![WINDOW_PREFIX];
    if let Some(wm) = watermark_ms {
        from.extend_from_slice(&encode_i64(wm.saturating_add(1)));
    }
    from
}

/// The end (ms) encoded at the start of a window key.
fn window_key_end(key: &[u8]) -> Result<i64, StageError> {
    let b: [u8; 8] = key
        .get(1..9)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| fatal("window key", "too short"))?;
    Ok(crate::store::keys::decode_i64(b))
}

fn load_clock(ctx: &Ctx<'_>) -> Result<PartitionClock, StageError> {
    match ctx.stores.get(WINDOWS, CLOCK_KEY)? {
        Some(b) => serde_json::from_slice(&b).map_err(|e| fatal("stored clock is corrupt", e)),
        None => Ok(PartitionClock::default()),
    }
}

fn store_clock(ctx: &mut Ctx<'_>, clock: &PartitionClock) -> Result<(), StageError> {
    let b = serde_json::to_vec(clock).map_err(|e| fatal("serializing the clock", e))?;
    ctx.stores.put(WINDOWS, CLOCK_KEY.to_vec(), b);
    Ok(())
}

fn parse(bytes: Option<&[u8]>) -> Result<RatedHead, AggregateError> {
    let bytes = bytes.ok_or_else(|| AggregateError::Malformed("the record has no value".into()))?;
    let rated = RatedHead::head_from_json_slice(bytes)
        .map_err(|e| AggregateError::Malformed(e.to_string()))?;
    let e = &rated.enriched;
    if rated.measures.len() != e.event.measures.len() || e.charges.len() != rated.measures.len() {
        return Err(AggregateError::Malformed(format!(
            "{} rated measures, {} measures, {} charges",
            rated.measures.len(),
            e.event.measures.len(),
            e.charges.len()
        )));
    }
    Ok(rated)
}

/// A fresh, empty window for `e`.
fn new_window(
    e: &EnrichedHead,
    kind: WindowKind,
    window: Window,
    adjusts: Option<Window>,
    clearing: Clearing,
    segment: Option<SegmentInfo>,
) -> ClosedWindow {
    ClosedWindow {
        kind,
        window,
        adjusts,
        clearing,
        customer: e.customer.clone(),
        subscription_id: e.subscription_id.clone(),
        plan_id: e.plan_id.clone(),
        legal_entity: e.legal_entity.clone(),
        currency: e.currency.clone(),
        time_zone: e.time_zone.clone(),
        billing_anchor_day: e.billing_anchor_day,
        subscription_end: e.subscription_end,
        gl_accounts: e.gl_accounts.clone(),
        segment,
        plan_version: e.plan_version,
        tax_code: e.tax_code.clone(),
        base_fee: e.base_fee,
        minimum_commitment: e.minimum_commitment,
        quantity: Decimal::ZERO,
        amount: Decimal::ZERO,
        parts: crate::rating::Parts::new(),
        event_count: 0,
        lineage_digest: empty_digest(),
        closed_at_watermark_ms: 0,
    }
}

/// The detail of a `windowed` lineage step (read by [`crate::lineage::Step::windows`]).
#[derive(serde::Serialize)]
struct WindowedDetail<'a> {
    windows: &'a [crate::lineage::WindowRef],
}

/// This stage's entry in the stage table (a constant index: out of range
/// would not compile).
#[allow(clippy::indexing_slicing)]
const SPEC: &StageSpec = &topology::STAGES[4];

impl Processor for AggregateProcessor {
    fn spec(&self) -> &'static StageSpec {
        SPEC
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let now_ms = ctx.now_ms;
        self.last_input_ms.insert(ctx.partition, now_ms);
        let rated = parse(rec.value)?;
        let e = &rated.enriched;
        crate::internal_events::EventTimeLagMeasured {
            stage: SPEC.name,
            lag_s: now_ms.saturating_sub(e.event.time.timestamp_millis()) / MS_PER_S,
        }
        .emit(&self.unbilled.event_time_lag);
        let clock = self.clock(ctx)?;
        let t = targets(e, clock.watermark_ms)?;
        let digest = event_digest(&rated.source, &rated.id);
        let touched = self.touch_windows(ctx, &t, &rated, &digest)?;
        let refs: Vec<crate::lineage::WindowRef> =
            touched.iter().map(|l| l.window.lineage_ref()).collect();
        self.cache_touched(ctx.partition, touched);
        crate::lineage::record_step(
            ctx,
            LINEAGE,
            &rated.source,
            &rated.id,
            crate::lineage::StepOut {
                outcome: "windowed",
                partition: rec.partition,
                offset: rec.offset,
                detail: &WindowedDetail { windows: &refs },
            },
            ctx.now_ms,
        )?;
        self.advance_clock(ctx, clock, e.event.time.timestamp_millis())
    }

    fn flush(&mut self, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        self.flush_windows(ctx)
    }

    fn on_rollback(&mut self) {
        // The cached windows held the aborted transaction's changes, and
        // the periods it emitted or opened were rolled back: walk again.
        self.cache.clear();
        for p in self.pending.values_mut() {
            p.request_sweep();
        }
    }

    fn on_input_partitions(&mut self, count: i32) {
        self.input_partitions = count.max(1);
    }

    fn on_table_record(&mut self, table: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        let (Some(kind), Some(key)) = (
            RefKind::from_topic(table),
            key.and_then(|k| std::str::from_utf8(k).ok()),
        ) else {
            warn!(
                table,
                "reference record without a known table or UTF-8 key: skipped"
            );
            return;
        };
        match self.tables.apply_tracked(kind, key, value) {
            Ok(triggers) => {
                for p in self.pending.values_mut() {
                    for t in &triggers {
                        p.trigger(t);
                    }
                }
            }
            // enrich counts refused records; here they only keep the
            // previous value in force.
            Err(e) => warn!(table, key, error = %e, "reference record refused: skipped"),
        }
    }

    fn punctuate(&mut self, ctx: &mut Ctx<'_>, now_ms: i64) -> Result<(), StageError> {
        self.schedule_periods(ctx)?;
        // The gauges and the scans below read the store.
        self.flush_windows(ctx)?;
        self.unbilled.refresh(ctx, now_ms)?;
        let last = *self.last_input_ms.entry(ctx.partition).or_insert(now_ms);
        if now_ms.saturating_sub(last) < self.idle_advance_ms {
            return Ok(());
        }
        let mut clock = self.clock(ctx)?;
        let candidate = now_ms.saturating_sub(self.grace_ms);
        if clock.watermark_ms.is_some_and(|wm| wm >= candidate) {
            return Ok(());
        }
        // Only move (and write) when it closes something; see the module docs.
        if self
            .min_open_end(ctx, clock.watermark_ms)?
            .is_none_or(|end| end > candidate)
        {
            return Ok(());
        }
        let previous = clock.watermark_ms;
        clock.watermark_ms = Some(candidate);
        self.set_clock(ctx.partition, clock);
        self.close_until(ctx, previous, candidate)
    }

    fn on_revoked(&mut self, partition: i32) {
        self.cache.remove(&partition);
        self.pending.remove(&partition);
        self.waiting.remove(&partition);
        self.publish_waiting();
        self.last_input_ms.remove(&partition);
        self.unbilled.parts.remove(&partition);
        self.unbilled.publish();
    }
}

impl AggregateProcessor {
    /// The windows `rated` adds to, with its additions made (see
    /// [`touch`]), in key order. Refused (an overflow): nothing changed.
    fn touch_windows(
        &mut self,
        ctx: &Ctx<'_>,
        t: &Targets,
        rated: &RatedHead,
        digest: &[u8; DIGEST_BYTES],
    ) -> Result<Vec<touch::Loaded>, StageError> {
        let e = &rated.enriched;
        let plan = touch::plan(t, rated)?;
        let cache = &mut self.cache.entry(ctx.partition).or_default().dirty;
        let mut loaded = touch::load(ctx, cache, &plan, e)?;
        if let Err(err) = touch::Loaded::sum(&mut loaded, &plan) {
            touch::restore(cache, loaded);
            return Err(err.into());
        }
        for l in &mut loaded {
            // Only a corrupt stored digest fails here: fatal, the cache goes.
            l.apply(e, digest)?;
        }
        loaded.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(loaded)
    }

    /// Into the write-back cache: serialized once per commit, not per event.
    fn cache_touched(&mut self, partition: i32, touched: Vec<touch::Loaded>) {
        let part = self.cache.entry(partition).or_default();
        for l in touched {
            // Unknown stays unknown (recomputed when needed); known takes the min.
            let end = l.window.window.end.timestamp_millis();
            if let Some(known) = &mut part.min_end_ms {
                *known = Some(known.map_or(end, |m| m.min(end)));
            }
            part.dirty.insert(l.key, l.window);
        }
    }

    /// The partition's clock as the transaction sees it: cached once read.
    fn clock(&mut self, ctx: &Ctx<'_>) -> Result<PartitionClock, StageError> {
        let c = self.cache.entry(ctx.partition).or_default();
        if let Some(clock) = c.clock {
            return Ok(clock);
        }
        let clock = load_clock(ctx)?;
        c.clock = Some(clock);
        Ok(clock)
    }

    /// A new clock for the partition, stored at the next flush.
    fn set_clock(&mut self, partition: i32, clock: PartitionClock) {
        let c = self.cache.entry(partition).or_default();
        c.clock = Some(clock);
        c.clock_dirty = true;
    }

    /// The partition's clock after an event at `event_ms`: the highest event
    /// time and the watermark (it minus the grace) move forward, stored when
    /// changed; windows the new watermark makes due are closed.
    fn advance_clock(
        &mut self,
        ctx: &mut Ctx<'_>,
        mut clock: PartitionClock,
        event_ms: i64,
    ) -> Result<(), StageError> {
        let before = clock;
        clock.max_event_ms = Some(clock.max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
        let candidate = clock.max_event_ms.map(|m| m.saturating_sub(self.grace_ms));
        clock.watermark_ms = clock.watermark_ms.max(candidate);
        if clock != before {
            self.set_clock(ctx.partition, clock);
        }
        if let (Some(wm), true) = (
            clock.watermark_ms,
            clock.watermark_ms != before.watermark_ms,
        ) {
            // Most events move the watermark; few make a window due.
            if self
                .min_open_end(ctx, before.watermark_ms)?
                .is_some_and(|end| end <= wm)
            {
                self.close_until(ctx, before.watermark_ms, wm)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
