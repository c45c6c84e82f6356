//! Billing periods driven by subscriptions, not by usage.
//!
//! Every billing period a subscription overlaps closes exactly once and
//! carries its base fee and minimum commitment to post, whether or not the
//! subscription ever sent an event (DESIGN.md, "Semantics in detail"). Usage
//! alone cannot drive that: a subscription that never sends an event, or the
//! periods before its first event, would never close. So aggregate reads the
//! reference tables too (`ref.customers`, `ref.subscriptions`, `ref.plans`,
//! materialised on every instance like enrich's) and walks each
//! subscription's periods itself.
//!
//! # Who walks a subscription
//!
//! The instance that owns the customer's input partition: usage topics are
//! keyed by customer id with the murmur2 partitioner, so the customer's
//! windows live on partition [`crate::kafka::partition_for_key`] of
//! `usage.rated`, and only the owner of that partition walks its
//! subscriptions, inside that partition's transaction.
//!
//! # What the walk does (per subscription, in [`Processor::punctuate`])
//!
//! From the period containing the subscription's start, period by period
//! until the subscription's end:
//!
//! * a period that ends at or before the partition's watermark (closed) and
//!   has no closed marker is emitted at once as a `period_close` window with
//!   no usage (a subscription created, or moved back in time, after some of
//!   its periods passed);
//! * the first period still open gets its `period_close` window opened
//!   (empty) if it has none; the periods after it open one by one as each
//!   closes (`next_period_close` in the stage), so the walk stops there.
//!
//! Periods ending at or before config `aggregate.periods_from` (a cut-over
//! instant, unset by default) are skipped: they were billed before.
//!
//! Every `period_close` emitted, here or when the watermark closes it,
//! writes a closed marker `C` subscription, period end, so nothing is
//! emitted twice: not after a restart, not when a subscription record is
//! republished, not when usage opened the same period first.
//!
//! # Terms of a period
//!
//! A period's base fee, tax code and accounts are those of the plan version
//! in force at the start of the period's service interval (the later of the
//! period's start and the subscription's start), and its minimum commitment
//! the subscription's ([`apply_terms`], applied to every `period_close`
//! when it is emitted). A plan version taking effect mid-period changes the
//! rating segments of the usage after it, not the period's fee.
//!
//! # When subscriptions are walked
//!
//! A subscription or customer record walks that customer's subscriptions; a
//! plan record, a newly assigned partition and an aborted transaction walk
//! every customer the partition owns (a sweep). At most
//! [`SCHEDULE_CUSTOMERS_PER_PUNCTUATION`] customers are walked per partition
//! per punctuation (the sweep resumes from a cursor), and at most
//! [`PERIODS_PER_SUBSCRIPTION_MAX`] periods per subscription.

use chrono::{DateTime, Utc};
use tracing::warn;

use crate::calendar::{self, BillingPeriod};
use crate::contracts::{CustomerInfo, Window};
use crate::refdata::{Plan, RefTables, RefTrigger, Subscription};
use crate::runtime::schedule::Schedule;
use crate::runtime::{Ctx, StageError};
use crate::store::keys::KeyBuilder;

use super::{
    empty_digest, fatal, to_window, window_key, Clearing, ClosedWindow, WindowKind, WINDOWS,
};

/// Customers whose subscriptions are walked per partition per punctuation.
pub const SCHEDULE_CUSTOMERS_PER_PUNCTUATION: usize = 256;
/// Customer ids a sweep looks at per partition per punctuation (most belong
/// to other partitions: a hash each, no store read).
pub const SWEEP_CUSTOMERS_SCANNED_PER_PUNCTUATION: usize = 65_536;
/// Periods walked per subscription: 100 years of monthly periods. A
/// subscription older than that has its first periods ignored (logged).
pub const PERIODS_PER_SUBSCRIPTION_MAX: usize = 1200;
/// Customers queued for a walk per partition before the queue gives way to
/// a sweep of every customer.
const PENDING_CUSTOMERS_MAX: usize = 10_000;
/// Key prefix of the closed markers in the windows store.
pub(super) const CLOSED_PREFIX: u8 = b'C';

/// What remains to walk in one partition: queued customers, and a sweep's
/// cursor (walk customers from this id on). Losing it loses nothing: a fresh
/// one asks for a sweep.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    schedule: Schedule<(), String>,
}

impl Pending {
    pub(super) fn new() -> Self {
        Pending {
            schedule: Schedule::new(PENDING_CUSTOMERS_MAX),
        }
    }

    pub(super) fn trigger(&mut self, trigger: &RefTrigger) {
        self.schedule.trigger(trigger, |_| ());
    }

    pub(super) fn request_sweep(&mut self) {
        self.schedule.request_sweep();
    }

    /// The customers this partition `owns` to walk now: queued ones first,
    /// then the next slice of the sweep.
    pub(super) fn next_batch(
        &mut self,
        tables: &RefTables,
        owns: impl Fn(&str) -> bool,
    ) -> Vec<String> {
        let schedule = &mut self.schedule;
        let mut batch = Vec::new();
        while batch.len() < SCHEDULE_CUSTOMERS_PER_PUNCTUATION {
            match schedule.customers.pop_first() {
                Some((c, ())) if owns(&c) => batch.push(c),
                Some(_) => {}
                None => break,
            }
        }
        schedule.start_sweep(String::new);
        if let Some(from) = schedule.sweep.take() {
            let mut ids = tables.customers_with_subscriptions_from(&from);
            let mut scanned = 0;
            schedule.sweep = loop {
                let Some(id) = ids.next() else { break None };
                if batch.len() >= SCHEDULE_CUSTOMERS_PER_PUNCTUATION
                    || scanned >= SWEEP_CUSTOMERS_SCANNED_PER_PUNCTUATION
                {
                    break Some(id.to_owned());
                }
                scanned += 1;
                if owns(id) {
                    batch.push(id.to_owned());
                }
            };
        }
        batch
    }
}

fn closed_marker_key(subscription: &str, period_end: DateTime<Utc>) -> Vec<u8> {
    KeyBuilder::new(CLOSED_PREFIX)
        .str(subscription)
        .i64(period_end.timestamp_millis())
        .build()
}

/// Whether the `period_close` of (`subscription`, period ending at `end`)
/// was emitted.
pub(super) fn is_closed(
    ctx: &Ctx<'_>,
    subscription: &str,
    end: DateTime<Utc>,
) -> Result<bool, StageError> {
    Ok(ctx
        .stores
        .get(WINDOWS, &closed_marker_key(subscription, end))?
        .is_some())
}

/// Records that the `period_close` of `w` was emitted.
pub(super) fn mark_closed(ctx: &mut Ctx<'_>, w: &ClosedWindow) {
    ctx.stores.put(
        WINDOWS,
        closed_marker_key(&w.subscription_id, w.window.end),
        Vec::new(),
    );
}

/// The plan version whose terms a period uses: the one in force at the
/// start of the period's service interval.
fn plan_for_period<'t>(
    tables: &'t RefTables,
    sub: &Subscription,
    period: &Window,
) -> Option<&'t Plan> {
    let service_start = period.start.max(sub.start);
    tables
        .plan_effective_at(&sub.plan_id, service_start)
        .filter(|plan| plan.currency == sub.currency)
}

/// Sets a regular `period_close` window's terms from the reference tables
/// (see "Terms of a period"). Returns false, leaving the window as usage
/// built it, when the subscription or its plan version is not known here.
pub(super) fn apply_terms(tables: &RefTables, w: &mut ClosedWindow) -> bool {
    if w.kind != WindowKind::PeriodClose || w.adjusts.is_some() {
        return true;
    }
    let Some(sub) = tables.subscription(&w.subscription_id) else {
        return false;
    };
    let Some(plan) = plan_for_period(tables, sub, &w.window) else {
        return false;
    };
    w.plan_id = plan.id.clone();
    w.plan_version = plan.version;
    w.base_fee = plan.base_fee;
    w.tax_code = plan.tax_code.clone();
    w.gl_accounts = plan.gl_accounts.clone();
    w.minimum_commitment = sub.minimum_commitment;
    w.subscription_end = sub.end;
    true
}

/// A `period_close` window with no usage for `period` of `sub`, or None
/// when the tables lack its customer or a plan version in force.
pub(super) fn empty_period_close(
    tables: &RefTables,
    sub: &Subscription,
    period: Window,
) -> Option<ClosedWindow> {
    let customer = tables.customer(&sub.customer_id)?;
    let plan = plan_for_period(tables, sub, &period)?;
    Some(ClosedWindow {
        kind: WindowKind::PeriodClose,
        window: period.clone(),
        adjusts: None,
        clearing: Clearing {
            period,
            adjusts: None,
        },
        customer: CustomerInfo {
            id: customer.id.clone(),
            name: customer.name.clone(),
            legal_entity: customer.legal_entity.clone(),
            erp_customer_id: customer.erp_customer_id.clone(),
        },
        subscription_id: sub.id.clone(),
        plan_id: plan.id.clone(),
        legal_entity: sub.legal_entity.clone(),
        currency: sub.currency.clone(),
        time_zone: sub.time_zone.clone(),
        billing_anchor_day: sub.billing_anchor_day,
        subscription_end: sub.end,
        gl_accounts: plan.gl_accounts.clone(),
        segment: None,
        plan_version: plan.version,
        tax_code: plan.tax_code.clone(),
        base_fee: plan.base_fee,
        minimum_commitment: sub.minimum_commitment,
        quantity: rust_decimal::Decimal::ZERO,
        amount: rust_decimal::Decimal::ZERO,
        parts: crate::rating::Parts::new(),
        event_count: 0,
        lineage_digest: empty_digest(),
        closed_at_watermark_ms: 0,
    })
}

/// What the walk of one subscription found to do.
#[derive(Debug, Default)]
pub(super) struct Walk {
    /// Closed periods never emitted: emit them now, in order.
    pub closed: Vec<ClosedWindow>,
    /// The first open period, when it has no window yet: (key, window).
    pub open: Option<(Vec<u8>, ClosedWindow)>,
    /// Periods left without a period-close window (closed ones unposted,
    /// the first open one not opened): the customer or the plan version in
    /// force at their start is missing from the reference tables.
    pub waiting: usize,
}

/// Walks `sub`'s periods against the partition's watermark (see the module
/// docs). `has_window` tells whether an open window exists under a key.
pub(super) fn walk(
    ctx: &Ctx<'_>,
    tables: &RefTables,
    sub: &Subscription,
    watermark_ms: Option<i64>,
    mut has_window: impl FnMut(&[u8]) -> Result<bool, StageError>,
) -> Result<Walk, StageError> {
    let periods_from = ctx.config.aggregate.periods_from;
    let mut out = Walk::default();
    let Ok(tz) = calendar::parse_tz(&sub.time_zone) else {
        // refdata validation refuses such a record; nothing to walk.
        return Ok(out);
    };
    let mut at = sub.start;
    for _ in 0..PERIODS_PER_SUBSCRIPTION_MAX {
        if sub.end.is_some_and(|end| end <= at) {
            return Ok(out);
        }
        let p = BillingPeriod::containing(sub.billing_anchor_day, tz, at)
            .map_err(|e| fatal("calendar", e))?;
        let period = to_window(p.id(), p.start(), p.end());
        let end_ms = period.end.timestamp_millis();
        if periods_from.is_some_and(|from| period.end <= from) {
            // Before the cut-over (config `aggregate.periods_from`).
        } else if watermark_ms.is_some_and(|wm| end_ms <= wm) {
            if !is_closed(ctx, &sub.id, period.end)? {
                match empty_period_close(tables, sub, period.clone()) {
                    Some(w) => out.closed.push(w),
                    None => {
                        out.waiting += 1;
                        warn!(
                            subscription = sub.id,
                            period = period.id,
                            "no customer or plan version in force for a closed period: not posted until the reference data has it"
                        );
                    }
                }
            }
        } else {
            let key = window_key(
                period.end,
                WindowKind::PeriodClose,
                &sub.id,
                &period.id,
                None,
            )?;
            if !has_window(&key)? {
                out.open = empty_period_close(tables, sub, period).map(|w| (key, w));
                // Without its terms the period is not opened, so it would
                // never close: it waits for the reference data too.
                out.waiting += usize::from(out.open.is_none());
            }
            return Ok(out);
        }
        at = period.end;
    }
    warn!(
        subscription = sub.id,
        periods = PERIODS_PER_SUBSCRIPTION_MAX,
        "subscription has more periods than are walked; the later ones are not opened"
    );
    Ok(out)
}
