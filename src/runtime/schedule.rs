//! Work a stage does per partition when reference data changes, in bounded
//! slices per punctuation: for the customers a reference record names (a
//! queue, each with where its work resumes), or for every customer (a sweep,
//! with its cursor). enrich re-checks parked events with it, aggregate walks
//! billing periods.
//!
//! Bookkeeping, not state: losing it loses nothing, because a fresh schedule
//! asks for a sweep.

use std::collections::BTreeMap;

use crate::refdata::{RefKind, RefTrigger};

/// What remains to do in one partition: `Q` is where a queued customer's
/// work resumes (`()` when it is done in one go), `C` the sweep's cursor.
#[derive(Debug, Clone)]
pub struct Schedule<Q, C> {
    /// Customer -> where its queued work resumes.
    pub customers: BTreeMap<String, Q>,
    /// A sweep in progress: where it resumes.
    pub sweep: Option<C>,
    /// Start a sweep as soon as none is in progress.
    pub sweep_requested: bool,
    /// Customers queued at most; a bulk load beyond this is cheaper to
    /// handle with one sweep.
    max_customers: usize,
}

impl<Q, C> Schedule<Q, C> {
    /// A fresh schedule: a sweep requested, nothing queued.
    pub fn new(max_customers: usize) -> Self {
        assert!(
            max_customers > 0,
            "a schedule must queue at least one customer"
        );
        Schedule {
            customers: BTreeMap::new(),
            sweep: None,
            sweep_requested: true,
            max_customers,
        }
    }

    /// A reference record arrived: a customer or subscription queues its
    /// customer (from `start` again: work done before was against older
    /// tables), or gives way to a sweep when the queue is full; a plan
    /// concerns any customer, so it asks for a sweep.
    pub fn trigger(&mut self, trigger: &RefTrigger, start: impl FnOnce(&str) -> Q) {
        match trigger.kind {
            RefKind::Customers | RefKind::Subscriptions => {
                if self.customers.len() >= self.max_customers {
                    self.customers.clear();
                    self.sweep_requested = true;
                } else {
                    self.customers
                        .insert(trigger.id.clone(), start(&trigger.id));
                }
            }
            RefKind::Plans => self.sweep_requested = true,
            // No parked event or period waits for a tax rate.
            RefKind::TaxRates => {}
        }
        debug_assert!(self.customers.len() <= self.max_customers);
    }

    pub fn request_sweep(&mut self) {
        self.sweep_requested = true;
    }

    /// Starts the requested sweep at `start`, unless one is in progress.
    /// True when it started.
    pub fn start_sweep(&mut self, start: impl FnOnce() -> C) -> bool {
        if !self.sweep_requested || self.sweep.is_some() {
            return false;
        }
        self.sweep_requested = false;
        self.sweep = Some(start());
        true
    }

    /// Forgets what is queued and in progress, and asks for a sweep.
    pub fn restart(&mut self) {
        self.customers.clear();
        self.sweep = None;
        self.sweep_requested = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(kind: RefKind, id: &str) -> RefTrigger {
        RefTrigger {
            kind,
            id: id.to_string(),
        }
    }

    #[test]
    fn a_fresh_schedule_asks_for_one_sweep() {
        let mut s: Schedule<(), u32> = Schedule::new(2);
        assert!(s.start_sweep(|| 0));
        assert_eq!(s.sweep, Some(0));
        // One at a time: a request while one runs waits for it to end.
        s.request_sweep();
        assert!(!s.start_sweep(|| 7));
        s.sweep = None;
        assert!(s.start_sweep(|| 7));
        assert!(!s.start_sweep(|| 9));
    }

    #[test]
    fn customers_queue_until_full_then_a_sweep_takes_over() {
        let mut s: Schedule<usize, ()> = Schedule::new(2);
        s.sweep_requested = false;
        s.trigger(&trigger(RefKind::Customers, "a"), str::len);
        s.trigger(&trigger(RefKind::Subscriptions, "bb"), str::len);
        assert_eq!(s.customers.get("bb"), Some(&2));
        assert!(!s.sweep_requested);
        s.trigger(&trigger(RefKind::Customers, "c"), str::len);
        assert!(s.customers.is_empty() && s.sweep_requested);
    }

    #[test]
    fn a_plan_asks_for_a_sweep_and_restart_forgets_the_queue() {
        let mut s: Schedule<(), ()> = Schedule::new(10);
        s.sweep_requested = false;
        s.trigger(&trigger(RefKind::Plans, "p"), |_| ());
        assert!(s.sweep_requested && s.customers.is_empty());
        s.trigger(&trigger(RefKind::Customers, "a"), |_| ());
        s.sweep = Some(());
        s.restart();
        assert!(s.customers.is_empty() && s.sweep.is_none() && s.sweep_requested);
    }
}
