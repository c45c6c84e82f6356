//! What one rated event does to the open windows, in four steps:
//!
//! 1. [`plan`]: the windows it adds to (per measure: its segment's day and
//!    billing period and, unless it adjusts a closed period, the
//!    subscription's period close; each window once) and the additions, in
//!    the order of the event's measures.
//! 2. [`load`]: each window from the partition's write-back cache (taken
//!    out, not copied), else from the store, else new.
//! 3. [`Loaded::sum`]: the additions on copies of the sums, checked: an
//!    overflow refuses the event and [`restore`] puts the cached windows
//!    back as they were, so a refused event changes nothing.
//! 4. [`Loaded::apply`]: the sums into the windows, each counted once and
//!    the event folded into its lineage digest.
//!
//! Taking windows out of the cache instead of copying them matters: a
//! window carries its customer, accounts and segment (about twenty
//! strings), and nearly every event touches three windows already in the
//! cache.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::{fatal, fold_digest, new_window, window_key, AggregateError, Targets, WINDOWS};
use crate::contracts::{
    ChargeHead, Clearing, ClosedWindow, EnrichedHead, Measure, RatedHead, RatedMeasure,
    SegmentInfo, Window, WindowKind,
};
use crate::rating::Parts;
use crate::runtime::{Ctx, StageError};

/// The measure a segment's window accumulates.
#[derive(Clone, Copy)]
struct MeasureOf<'a> {
    rated: &'a RatedMeasure,
    measure: &'a Measure,
    charge: &'a ChargeHead,
}

impl MeasureOf<'_> {
    fn segment(&self) -> SegmentInfo {
        SegmentInfo {
            segment_id: self.rated.segment_id.clone(),
            segment_key: self.rated.segment_key.clone(),
            meter: self.rated.meter.clone(),
            plan_version: self.rated.plan_version,
            group: self.measure.group.clone(),
            aggregation: self.rated.aggregation,
            tax_code: self.charge.tax_code.clone(),
            unit: self.charge.unit.clone(),
        }
    }
}

/// One window an event adds to, before it is loaded.
struct Target<'a> {
    key: Vec<u8>,
    kind: WindowKind,
    window: &'a Window,
    adjusts: Option<&'a Window>,
    /// None: the subscription's period close.
    measure: Option<MeasureOf<'a>>,
}

/// What one measure adds to one window (an index into the targets).
struct Addition<'a> {
    target: usize,
    quantity: Decimal,
    amount: Decimal,
    parts: &'a Parts,
}

/// The windows an event adds to and what it adds, in measure order.
pub(super) struct Plan<'a> {
    /// Where the event's windows are (a new window's clearing comes from it).
    windows: &'a Targets,
    targets: Vec<Target<'a>>,
    additions: Vec<Addition<'a>>,
}

impl<'a> Plan<'a> {
    /// The index of the window at `key`, added when new.
    fn target(
        &mut self,
        kind: WindowKind,
        scope: &str,
        window: &'a Window,
        adjusts: Option<&'a Window>,
        measure: Option<MeasureOf<'a>>,
    ) -> Result<usize, AggregateError> {
        let key = window_key(window.end, kind, scope, &window.id, adjusts)?;
        if let Some(i) = self.targets.iter().position(|t| t.key == key) {
            return Ok(i);
        }
        self.targets.push(Target {
            key,
            kind,
            window,
            adjusts,
            measure,
        });
        Ok(self.targets.len() - 1)
    }

    fn add(&mut self, target: usize, quantity: Decimal, amount: Decimal, parts: &'a Parts) {
        self.additions.push(Addition {
            target,
            quantity,
            amount,
            parts,
        });
    }
}

/// No parts: what a period close adds besides the amount.
static NO_PARTS: Parts = Parts::new();

/// Step 1: the windows `rated` adds to under the targets `t`, and what it
/// adds to each, in the order of its measures.
pub(super) fn plan<'a>(t: &'a Targets, rated: &'a RatedHead) -> Result<Plan<'a>, AggregateError> {
    let e = &rated.enriched;
    let mut plan = Plan {
        windows: t,
        targets: Vec::new(),
        additions: Vec::new(),
    };
    let measures = rated.measures.iter().zip(&e.event.measures).zip(&e.charges);
    for ((rm, measure), charge) in measures {
        let of = Some(MeasureOf {
            rated: rm,
            measure,
            charge,
        });
        let (q, a, parts) = (rm.marginal_quantity, rm.marginal_amount, &rm.parts);
        let segment_windows = [
            (WindowKind::Day, &t.day, t.day_adjusts.as_ref()),
            (
                WindowKind::BillingPeriod,
                &t.period,
                t.period_adjusts.as_ref(),
            ),
        ];
        for (kind, window, adjusts) in segment_windows {
            let i = plan.target(kind, &rm.segment_id, window, adjusts, of)?;
            plan.add(i, q, a, parts);
        }
        if t.period_adjusts.is_none() {
            let close = plan.target(
                WindowKind::PeriodClose,
                &e.subscription_id,
                &t.period,
                None,
                None,
            )?;
            plan.add(close, Decimal::ZERO, a, &NO_PARTS);
        }
    }
    Ok(plan)
}

/// A window the event touches, and its sums after the additions so far.
pub(super) struct Loaded {
    pub(super) key: Vec<u8>,
    pub(super) window: ClosedWindow,
    /// Taken out of the write-back cache (goes back if the event is refused).
    from_cache: bool,
    quantity: Decimal,
    amount: Decimal,
    parts: Parts,
}

/// Step 2: each target from the cache (taken out), the store or new.
pub(super) fn load(
    ctx: &Ctx<'_>,
    cache: &mut BTreeMap<Vec<u8>, ClosedWindow>,
    plan: &Plan<'_>,
    e: &EnrichedHead,
) -> Result<Vec<Loaded>, StageError> {
    let mut loaded = Vec::with_capacity(plan.targets.len());
    for t in &plan.targets {
        let (window, from_cache) = match cache.remove(&t.key) {
            Some(w) => (w, true),
            None => match stored(ctx, &t.key) {
                Ok(Some(w)) => (w, false),
                Ok(None) => (fresh(e, t, plan.windows), false),
                Err(err) => {
                    restore(cache, loaded);
                    return Err(err);
                }
            },
        };
        loaded.push(Loaded {
            key: t.key.clone(),
            quantity: window.quantity,
            amount: window.amount,
            parts: window.parts.clone(),
            window,
            from_cache,
        });
    }
    Ok(loaded)
}

fn stored(ctx: &Ctx<'_>, key: &[u8]) -> Result<Option<ClosedWindow>, StageError> {
    match ctx.stores.get(WINDOWS, key)? {
        Some(b) => ClosedWindow::from_json_slice(&b)
            .map(Some)
            .map_err(|e| fatal("stored window is corrupt", e)),
        None => Ok(None),
    }
}

/// A new window; it clears with the event's billing period (and the closed
/// one it adjusts, if any), whatever its kind.
fn fresh(e: &EnrichedHead, t: &Target<'_>, windows: &Targets) -> ClosedWindow {
    let clearing = Clearing {
        period: windows.period.clone(),
        adjusts: windows.period_adjusts.clone(),
    };
    new_window(
        e,
        t.kind,
        t.window.clone(),
        t.adjusts.cloned(),
        clearing,
        t.measure.map(|m| m.segment()),
    )
}

/// Puts the windows taken out of the cache back, unchanged.
pub(super) fn restore(cache: &mut BTreeMap<Vec<u8>, ClosedWindow>, loaded: Vec<Loaded>) {
    for l in loaded {
        if l.from_cache {
            cache.insert(l.key, l.window);
        }
    }
}

impl Loaded {
    /// Step 3: the additions, in order, on the sums of `loaded` (the
    /// windows themselves are not changed).
    pub(super) fn sum(loaded: &mut [Loaded], plan: &Plan<'_>) -> Result<(), AggregateError> {
        for (i, l) in loaded.iter_mut().enumerate() {
            // Each window's sums depend only on its own additions, in order.
            for a in plan.additions.iter().filter(|a| a.target == i) {
                let overflow = || AggregateError::Overflow(l.window.window.id.clone());
                let quantity = l.quantity.checked_add(a.quantity).ok_or_else(overflow)?;
                let amount = l.amount.checked_add(a.amount).ok_or_else(overflow)?;
                crate::rating::add_parts(&mut l.parts, a.parts).map_err(|_| overflow())?;
                l.quantity = quantity;
                l.amount = amount;
            }
        }
        Ok(())
    }

    /// Step 4: the sums into the window, counted once, the event's digest
    /// folded in; a regular period close takes the event's terms when they
    /// are newer.
    pub(super) fn apply(
        &mut self,
        e: &EnrichedHead,
        digest: &[u8; super::DIGEST_BYTES],
    ) -> Result<(), StageError> {
        let w = &mut self.window;
        w.quantity = self.quantity;
        w.amount = self.amount;
        w.parts = std::mem::take(&mut self.parts);
        w.event_count += 1;
        fold_digest(&mut w.lineage_digest, digest)
            .map_err(|err| fatal("stored window is corrupt", err))?;
        if w.kind == WindowKind::PeriodClose {
            take_provisional_terms(w, e);
        }
        Ok(())
    }
}

/// Provisional terms, whatever the arrival order: at close the period takes
/// those of the version in force at its start from the reference tables
/// ([`super::periods::apply_terms`]); these stay only when the tables lack
/// the subscription.
fn take_provisional_terms(close: &mut ClosedWindow, e: &EnrichedHead) {
    if e.plan_version > close.plan_version {
        close.plan_version = e.plan_version;
        close.plan_id = e.plan_id.clone();
        close.base_fee = e.base_fee;
        close.minimum_commitment = e.minimum_commitment;
        close.tax_code = e.tax_code.clone();
        close.gl_accounts = e.gl_accounts.clone();
    }
}
