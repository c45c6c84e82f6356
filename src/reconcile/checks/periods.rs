//! `subscription_period_closed`.

use std::collections::BTreeMap;

use crate::contracts::WindowKind;
use crate::kafka;

use super::super::facts::Facts;
use super::super::report::Check;
use super::{count_check, in_period};

/// `subscription_period_closed` (see the module docs): walks each
/// subscription's periods up to its partition's watermark.
pub(super) fn check_subscription_periods(
    facts: &Facts,
    period: Option<&str>,
    checks: &mut Vec<Check>,
) {
    let mut closes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for w in &facts.closed {
        if w.kind == WindowKind::PeriodClose && w.adjusts.is_none() {
            *closes
                .entry((w.subscription_id.as_str(), w.window.id.as_str()))
                .or_default() += 1;
        }
    }
    for sub in &facts.subscriptions {
        let owner =
            kafka::partition_for_key(sub.customer_id.as_bytes(), facts.rated_partitions.max(1));
        let Some(wm) = facts.watermarks.get(&owner).copied() else {
            continue;
        };
        let Ok(tz) = crate::calendar::parse_tz(&sub.time_zone) else {
            continue;
        };
        let mut at = sub.start;
        for _ in 0..crate::stages::aggregate::periods::PERIODS_PER_SUBSCRIPTION_MAX {
            if sub.end.is_some_and(|end| end <= at) {
                break;
            }
            let Ok(p) = crate::calendar::BillingPeriod::containing(sub.billing_anchor_day, tz, at)
            else {
                break;
            };
            if p.end().timestamp_millis() > wm {
                break;
            }
            let billed_before = facts.periods_from.is_some_and(|from| p.end() <= from);
            if !billed_before && in_period(period, &p.id()) {
                let n = closes
                    .get(&(sub.id.as_str(), p.id().as_str()))
                    .copied()
                    .unwrap_or(0);
                let subject = format!("subscription {} period {}", sub.id, p.id());
                checks.push(count_check(
                    &subject,
                    "subscription_period_closed",
                    1,
                    n,
                    format!("{n} period_close window(s) on usage.windows for a period that ended before the watermark"),
                ));
            }
            at = p.end();
        }
    }
}
