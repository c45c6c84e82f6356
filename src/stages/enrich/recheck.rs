//! Re-checking parked events: the per-partition bookkeeping of what remains
//! to re-check (not state: re-derivable) and the re-resolution of parked
//! entries (see "Self-healing, exactly once" in the module docs of [`super`]).

use std::collections::{BTreeMap, BTreeSet};

use crate::contracts::ValidatedEvent;
use crate::lineage::{self, Count};
use crate::refdata::RefTrigger;
use crate::runtime::schedule::Schedule;
use crate::runtime::{Ctx, StageError};

use super::events::ParkedEventReemitted;
use super::parked::{
    customer_range, parse_entry_key, remove_parked, store_parked, successor, EventIds, ParkedEntry,
    ParkedMeta,
};
use super::processor::{corrections_wait, Enricher};
use super::stats::{revenue_at_risk, ParkedStats};
use super::{COUNTERS, PARKED};

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

/// What remains to re-check in one partition (customer -> next key of its
/// range; a sweep: the next key of all entries), when the last sweep
/// started, and the figures for the gauges. Losing it loses nothing: a fresh
/// one asks for a full sweep.
#[derive(Debug, Clone)]
pub(super) struct Recheck {
    pub(super) schedule: Schedule<Vec<u8>, Vec<u8>>,
    /// When the last full sweep started (wall clock, ms).
    pub(super) last_sweep_ms: Option<i64>,
    /// The partition's figures as of its last punctuation, for the gauges.
    pub(super) snapshot: Snapshot,
}

impl Recheck {
    pub(super) fn new() -> Self {
        Recheck {
            schedule: Schedule::new(RECHECK_CUSTOMERS_MAX),
            last_sweep_ms: None,
            snapshot: Snapshot::default(),
        }
    }

    pub(super) fn trigger(&mut self, trigger: &RefTrigger) {
        // From the start of the range again: entries before a cursor were
        // checked against older tables.
        self.schedule
            .trigger(trigger, |customer| customer_range(customer).0);
    }
}

/// The schedule's fields read as the re-check's own (`part.sweep`,
/// `part.customers`), as the re-check loop and its tests use them.
impl std::ops::Deref for Recheck {
    type Target = Schedule<Vec<u8>, Vec<u8>>;
    fn deref(&self) -> &Self::Target {
        &self.schedule
    }
}

impl std::ops::DerefMut for Recheck {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.schedule
    }
}

/// What [`Enricher::recheck_range`] did.
pub(super) struct RangeChecked {
    pub(super) next: Option<Vec<u8>>,
    pub(super) used: usize,
    pub(super) again: BTreeSet<String>,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    pub(super) stats: ParkedStats,
    pub(super) oldest_ms: BTreeMap<String, i64>,
}

impl Enricher {
    /// Re-resolves one parked entry: emits and deletes it if it resolves
    /// (true), updates it if its park code or revenue at risk changed.
    fn recheck(&self, key: &[u8], value: &[u8], ctx: &mut Ctx<'_>) -> Result<bool, StageError> {
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
        match self.resolve_event(&event, ctx)? {
            Ok(resolved) => {
                remove_parked(ctx.stores, &ids, &entry.meta)?;
                ctx.emit(self.parked_notice(&event, None)?);
                let day = lineage::day_of(event.time);
                lineage::count(ctx, COUNTERS, &day, [Count::Released])?;
                // Not from an input record (offset -1): healed by reference data.
                let at = (ctx.partition, -1);
                self.emit_resolved(ctx, &event, resolved, at, true)?;
                ParkedEventReemitted {
                    ids: &ids,
                    reason: &entry.meta.reason,
                    parked_ms: entry.meta.first_parked_ms,
                }
                .emit(&self.metrics);
                Ok(true)
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
                Ok(false)
            }
        }
    }

    /// Re-checks up to `budget` entries of `[from, to)`; returns the cursor
    /// to resume from (None when the range is done), what was used, and
    /// the customers to re-check again at once: those with an entry
    /// released while corrections wait ([`corrections_wait`]).
    pub(super) fn recheck_range(
        &self,
        from: &[u8],
        to: &[u8],
        budget: usize,
        ctx: &mut Ctx<'_>,
    ) -> Result<RangeChecked, StageError> {
        let entries = ctx.stores.scan(PARKED, from, to, budget)?;
        let used = entries.len();
        let mut last = None;
        let mut released = BTreeSet::new();
        for (k, v) in entries {
            if self.recheck(&k, &v, ctx)? {
                released.insert(parse_entry_key(&k)?.0);
            }
            last = Some(k);
        }
        if !released.is_empty() && !corrections_wait(ctx)? {
            released.clear();
        }
        // A full batch may have more behind it; a short one ends the range.
        let next = match last {
            Some(k) if used >= budget => Some(successor(&k)),
            _ => None,
        };
        Ok(RangeChecked {
            next,
            used,
            again: released,
        })
    }
}
