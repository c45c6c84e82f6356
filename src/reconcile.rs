//! `meterline reconcile`: proves, from what Kafka holds, that nothing was
//! lost, invented or double-counted between the stages.
//!
//! It reads (read_committed, every partition to its end) the stage topics,
//! the `counters` changelogs of validate and enrich, the open windows of
//! aggregate (its `windows` changelog) and `finance.postings`, and checks:
//!
//! **Per UTC day of event time** (validate, enrich, rate):
//!
//! | check | equality |
//! |---|---|
//! | `events_in` | validate: records in = validated + dead-lettered + duplicates |
//! | `validated_topic` | validated = records of `usage.validated` that day |
//! | `dead_letters_topic` | dead-lettered = records of `meterline.dlq.validate` that day |
//! | `enrich_in` | enrich: validated events in = validate's validated |
//! | `enrich_split` | enrich: in = enriched on arrival + parked on arrival (and re-emitted <= parked) |
//! | `enriched_topic` | records of `usage.enriched` = enriched on arrival + re-emitted |
//! | `rate_in` | records of `usage.enriched` = records of `usage.rated` + `meterline.dlq.rate` |
//! | `events_topic` | (all days) records of `usage.events` = validate's records in + in flight |
//!
//! **Per window** (rate, aggregate, post), keyed by the *original* window
//! (kind, segment or subscription, window id; an adjustment counts toward
//! the window it adjusts):
//!
//! | check | equality |
//! |---|---|
//! | `rated_vs_windows` | sum of rated marginal amounts (and events) = closed windows + still-open windows |
//! | `period_close` | a period close's amount = its subscription's regular billing-period windows |
//! | `posted_once` | every closed window has exactly one control total |
//! | `posted_amount` | control total (unrounded amount, events, lineage digest) = the closed window |
//! | `posted_without_window` | no posting names a window aggregate never closed |
//! | `journal_balanced` | every journal entry's debits = credits |
//! | `accrual_amount` | day window: accrual entry = the control total's rounded amount |
//! | `invoice_amount` | billing-period window: invoice line and reclass = the rounded amount |
//! | `unbilled_cleared` | once a period is invoiced, unbilled receivable of each segment nets to zero |
//!
//! **Per subscription and billing period** (aggregate, from `ref.subscriptions`):
//!
//! | check | equality |
//! |---|---|
//! | `subscription_period_closed` | every period a subscription overlaps that ended at or before its partition's watermark has exactly one regular `period_close` window, with or without usage |
//!
//! **Per topic** (`usage.rated`, `usage.windows`, `finance.postings`):
//!
//! | check | equality |
//! |---|---|
//! | `unreadable_records` | no record fails to parse as the topic's contract (a foreign record in the books, e.g. written by hand or by a misdirected tool, is named by partition and offset instead of being skipped) |
//!
//! The rounding difference (rounded minus unrounded posted amounts) is shown
//! per window and per currency; it is not a failure.
//!
//! The checks hold on a drained pipeline. Records a stage has not yet
//! committed are reported as "in flight" (per stage, from its consumer
//! group's committed offsets) and differences they explain are expected.
//! The topics of usage have a 7-day retention: reconcile a period before its
//! records expire (`--period`), e.g. at period close.
//!
//! [`Facts`] is what was read, [`check`] is pure arithmetic over it (unit
//! tested below), [`read`] does the Kafka part.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::contracts::{
    ClosedWindow, PartitionClock, Posting, PostingType, RatedEvent, Side, WindowKind,
};
use crate::kafka::{self, ClientError};
use crate::lineage::{self, DayCounters};
use crate::topology::counts::for_each_record;
use crate::topology::names;
use crate::topology::postings::{parse_or_count, Unreadable};

/// `meterline reconcile` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReconcileArgs {
    /// Only days and windows whose id starts with this (e.g. 2026-10 or 2026-10-05).
    #[arg(long)]
    pub period: Option<String>,
    /// Print every check (OK ones too), one line each.
    #[arg(long)]
    pub verbose: bool,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Print the results as Prometheus metrics (text format) after the report.
    #[arg(long)]
    pub prometheus: bool,
    /// Write the results as Prometheus metrics to this file (atomically; for
    /// node_exporter's textfile collector: a `.prom` file in its directory).
    #[arg(long)]
    pub textfile: Option<PathBuf>,
}

/// A window as reconcile keys it: kind, scope (segment id, or subscription id
/// for a period close) and the original window id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct WindowId {
    pub kind: String,
    pub scope: String,
    pub window: String,
}

impl WindowId {
    fn new(kind: &str, scope: &str, window: &str) -> Self {
        WindowId {
            kind: kind.to_string(),
            scope: scope.to_string(),
            window: window.to_string(),
        }
    }
}

/// One emitted window record (an adjustment is its own record).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RecordId {
    kind: String,
    scope: String,
    window: String,
    adjusts: Option<String>,
}

impl RecordId {
    fn of_window(w: &ClosedWindow) -> Self {
        RecordId {
            kind: w.kind.as_str().to_string(),
            scope: scope_of(w),
            window: w.window.id.clone(),
            adjusts: w.adjusts.as_ref().map(|a| a.id.clone()),
        }
    }

    fn of_posting(p: &Posting) -> Self {
        RecordId {
            kind: p.window_kind.as_str().to_string(),
            scope: p
                .segment_id
                .clone()
                .unwrap_or_else(|| p.subscription_id.clone()),
            window: p.window.id.clone(),
            adjusts: p.adjusts.as_ref().map(|a| a.id.clone()),
        }
    }

    fn original(&self) -> WindowId {
        WindowId::new(
            &self.kind,
            &self.scope,
            self.adjusts.as_deref().unwrap_or(&self.window),
        )
    }

    fn describe(&self) -> String {
        match &self.adjusts {
            Some(a) => format!(
                "{} (adjustment of {a} in {})",
                self.original().describe(),
                self.window
            ),
            None => self.original().describe(),
        }
    }
}

impl WindowId {
    /// `window day 2026-10-05 segment 3f1c0a2b…`
    pub fn describe(&self) -> String {
        let what = if self.kind == WindowKind::PeriodClose.as_str() {
            "subscription"
        } else {
            "segment"
        };
        format!(
            "window {} {} {what} {}",
            self.kind,
            self.window,
            short(&self.scope)
        )
    }
}

fn short(id: &str) -> String {
    if id.len() > 12 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        format!("{}…", &id[..12])
    } else {
        id.to_string()
    }
}

fn scope_of(w: &ClosedWindow) -> String {
    match &w.segment {
        Some(s) => s.segment_id.clone(),
        None => w.subscription_id.clone(),
    }
}

/// Amount and events summed into a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sum {
    pub amount: Decimal,
    pub events: u64,
}

impl Sum {
    fn add(&mut self, amount: Decimal, events: u64) {
        self.amount += amount;
        self.events += events;
    }
}

/// Who a window belongs to, for the table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Owner {
    subscription: String,
    meter: String,
    currency: String,
}

/// Everything reconcile read. Built by [`read`] (or by hand in tests).
#[derive(Debug, Default)]
pub struct Facts {
    /// (stage, day) -> counters summed over partitions: stage "validate" | "enrich".
    pub counters: BTreeMap<(String, String), DayCounters>,
    /// (topic name without namespace, day of event time) -> committed records.
    pub topic_days: BTreeMap<(String, String), u64>,
    /// Committed records of `usage.events` (all days).
    pub events_total: u64,
    /// Stage -> input records after its consumer group's committed offsets.
    pub in_flight: BTreeMap<String, u64>,
    /// Stage -> records in its dead-letter topic (enrich, aggregate, post).
    pub dead_letters: BTreeMap<String, u64>,
    /// Topics whose oldest records were deleted (retention or delete-records).
    pub truncated: BTreeSet<String>,
    /// Rated marginal amounts by original window.
    rated: BTreeMap<WindowId, Sum>,
    owners: BTreeMap<WindowId, Owner>,
    /// Closed windows (`usage.windows`) and still open ones (aggregate's store).
    pub closed: Vec<ClosedWindow>,
    pub open: Vec<ClosedWindow>,
    pub postings: Vec<Posting>,
    /// `ref.subscriptions` as of now.
    pub subscriptions: Vec<crate::refdata::Subscription>,
    /// Aggregate's watermark per partition of `usage.rated`, and their count.
    pub watermarks: BTreeMap<i32, i64>,
    pub rated_partitions: i32,
    /// Config `aggregate.periods_from`: periods ending at or before it are not checked.
    pub periods_from: Option<DateTime<Utc>>,
    /// Topic name without namespace -> its records that do not parse (only
    /// topics whose records reconcile parses: rated, windows, postings).
    pub unreadable: BTreeMap<String, Unreadable>,
}

impl Facts {
    /// Adds one `usage.rated` record: each measure's marginal amount to its
    /// segment's original day and billing-period windows.
    pub fn add_rated(&mut self, r: &RatedEvent) {
        let e = &r.enriched;
        let mut seen = BTreeSet::new();
        for m in &r.measures {
            for (kind, window) in [
                (WindowKind::Day, &e.local_day.id),
                (WindowKind::BillingPeriod, &e.billing_period.id),
            ] {
                let id = WindowId::new(kind.as_str(), &m.segment_id, window);
                let first = seen.insert(id.clone());
                self.rated
                    .entry(id.clone())
                    .or_default()
                    .add(m.marginal_amount, u64::from(first));
                self.owners.entry(id).or_insert_with(|| Owner {
                    subscription: e.subscription_id.clone(),
                    meter: m.meter.clone(),
                    currency: e.currency.clone(),
                });
            }
        }
    }

    fn add_counters(&mut self, stage: &str, day: &str, c: &DayCounters) {
        let t = self
            .counters
            .entry((stage.to_string(), day.to_string()))
            .or_default();
        t.records_in += c.records_in;
        t.passed += c.passed;
        t.held += c.held;
        t.released += c.released;
    }

    fn add_topic_day(&mut self, topic: &str, day: String) {
        *self.topic_days.entry((topic.to_string(), day)).or_default() += 1;
    }

    fn topic_day(&self, topic: &str, day: &str) -> u64 {
        self.topic_days
            .get(&(topic.to_string(), day.to_string()))
            .copied()
            .unwrap_or(0)
    }

    fn counter(&self, stage: &str, day: &str) -> DayCounters {
        self.counters
            .get(&(stage.to_string(), day.to_string()))
            .copied()
            .unwrap_or_default()
    }
}

/// The result of one check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `day 2026-10-05`, `window day 2026-10-05 segment 3f1c…`, `all days`.
    pub subject: String,
    /// Stable check name (see the module docs); a metric label.
    pub check: &'static str,
    /// Set for money checks.
    pub currency: Option<String>,
    pub expected: String,
    pub actual: String,
    /// actual - expected.
    pub difference: String,
    pub ok: bool,
    /// What the equality was, in words, with its numbers.
    pub detail: String,
    #[serde(skip)]
    diff: f64,
}

fn count_check(
    subject: &str,
    check: &'static str,
    expected: u64,
    actual: u64,
    detail: String,
) -> Check {
    let d = actual as i128 - expected as i128;
    Check {
        subject: subject.to_string(),
        check,
        currency: None,
        expected: expected.to_string(),
        actual: actual.to_string(),
        difference: format!("{d:+}"),
        ok: d == 0,
        detail,
        diff: d as f64,
    }
}

fn amount_check(
    subject: &str,
    check: &'static str,
    currency: &str,
    expected: Decimal,
    actual: Decimal,
    detail: String,
) -> Check {
    let d = actual - expected;
    Check {
        subject: subject.to_string(),
        check,
        currency: Some(currency.to_string()),
        expected: fmt_dec(expected),
        actual: fmt_dec(actual),
        difference: fmt_signed(d),
        ok: d.is_zero(),
        detail,
        diff: f64::try_from(d).unwrap_or(f64::NAN),
    }
}

fn fmt_dec(d: Decimal) -> String {
    d.normalize().to_string()
}

fn fmt_signed(d: Decimal) -> String {
    if d.is_sign_negative() {
        fmt_dec(d)
    } else {
        format!("+{}", fmt_dec(d))
    }
}

/// One line of the days table.
#[derive(Debug, Clone, Serialize)]
pub struct DayRow {
    pub day: String,
    pub validate: CountersView,
    pub enrich: CountersView,
    pub validated_topic: u64,
    pub dlq_validate_topic: u64,
    pub enriched_topic: u64,
    pub rated_topic: u64,
    pub dlq_rate_topic: u64,
    pub ok: bool,
}

/// [`DayCounters`] with names that say what they count.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CountersView {
    pub records_in: u64,
    pub passed: u64,
    pub held: u64,
    pub released: u64,
}

impl From<DayCounters> for CountersView {
    fn from(c: DayCounters) -> Self {
        CountersView {
            records_in: c.records_in,
            passed: c.passed,
            held: c.held,
            released: c.released,
        }
    }
}

/// One line of the windows table (an original window).
#[derive(Debug, Clone, Serialize)]
pub struct WindowRow {
    pub id: WindowId,
    pub subscription: String,
    pub meter: String,
    pub currency: String,
    /// None for period-close windows (no rated counterpart).
    pub rated: Option<String>,
    pub events: u64,
    pub closed: String,
    pub open: String,
    pub posted: String,
    pub posted_rounded: String,
    pub rounding: String,
    pub ok: bool,
}

/// Rounding per currency: posted unrounded and rounded totals.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rounding {
    pub unrounded: String,
    pub rounded: String,
    pub difference: String,
    #[serde(skip)]
    diff: f64,
}

/// What [`check`] found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: Option<String>,
    pub days: Vec<DayRow>,
    pub windows: Vec<WindowRow>,
    pub checks: Vec<Check>,
    pub rounding: BTreeMap<String, Rounding>,
    pub in_flight: BTreeMap<String, u64>,
    pub dead_letters: BTreeMap<String, u64>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    pub fn ok(&self) -> bool {
        self.failures().next().is_none()
    }
}

fn in_period(period: Option<&str>, id: &str) -> bool {
    period.is_none_or(|p| id.starts_with(p))
}

/// Runs every check over `facts`, restricted to `period` (a prefix of day
/// and window ids).
pub fn check(facts: &Facts, period: Option<&str>) -> Report {
    let mut checks = Vec::new();
    let days = check_days(facts, period, &mut checks);
    let (windows, rounding) = check_windows(facts, period, &mut checks);
    check_subscription_periods(facts, period, &mut checks);
    check_unreadable(facts, &mut checks);
    let mut notes = Vec::new();
    for (stage, n) in &facts.in_flight {
        if *n > 0 {
            notes.push(format!(
                "{stage}: {n} input record(s) in flight (not yet committed by the stage): \
                 differences downstream of it may only be in flight; run again when drained"
            ));
        }
    }
    for t in &facts.truncated {
        notes.push(format!(
            "{t}: its oldest records were deleted (retention or delete-records): \
             days and windows older than them cannot be reconciled (use --period)"
        ));
    }
    Report {
        period: period.map(str::to_owned),
        days,
        windows,
        checks,
        rounding,
        in_flight: facts.in_flight.clone(),
        dead_letters: facts.dead_letters.clone(),
        notes,
    }
}

/// `subscription_period_closed` (see the module docs): walks each
/// subscription's periods up to its partition's watermark.
fn check_subscription_periods(facts: &Facts, period: Option<&str>, checks: &mut Vec<Check>) {
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

fn check_days(facts: &Facts, period: Option<&str>, checks: &mut Vec<Check>) -> Vec<DayRow> {
    let mut days: BTreeSet<String> = facts.counters.keys().map(|(_, d)| d.clone()).collect();
    days.extend(facts.topic_days.keys().map(|(_, d)| d.clone()));
    let mut rows = Vec::new();
    let mut validate_in_total = 0u64;
    for day in days {
        let v = facts.counter("validate", &day);
        validate_in_total += v.records_in;
        if !in_period(period, &day) {
            continue;
        }
        let e = facts.counter("enrich", &day);
        let validated = facts.topic_day(names::VALIDATED, &day);
        let dlq_v = facts.topic_day(&dlq("validate"), &day);
        let enriched = facts.topic_day(names::ENRICHED, &day);
        let rated = facts.topic_day(names::RATED, &day);
        let dlq_r = facts.topic_day(&dlq("rate"), &day);
        let subject = format!("day {day}");
        let first = checks.len();
        checks.push(count_check(
            &subject,
            "events_in",
            v.records_in,
            v.passed + v.held + v.released,
            format!(
                "events in {} != validated {} + dead-lettered {} + duplicates {}",
                v.records_in, v.passed, v.held, v.released
            ),
        ));
        checks.push(count_check(
            &subject,
            "validated_topic",
            v.passed,
            validated,
            format!(
                "validated {} != usage.validated records {validated}",
                v.passed
            ),
        ));
        checks.push(count_check(
            &subject,
            "dead_letters_topic",
            v.held,
            dlq_v,
            format!(
                "dead-lettered {} != meterline.dlq.validate records {dlq_v}",
                v.held
            ),
        ));
        if day != lineage::UNKNOWN_DAY {
            checks.push(count_check(
                &subject,
                "enrich_in",
                v.passed,
                e.records_in,
                format!(
                    "validated {} != enrich in {} (enrich dead letters: {})",
                    v.passed,
                    e.records_in,
                    facts.dead_letters.get("enrich").copied().unwrap_or(0)
                ),
            ));
            let mut split = count_check(
                &subject,
                "enrich_split",
                e.records_in,
                e.passed + e.held,
                format!(
                    "enrich in {} != enriched {} + parked {} (re-emitted {})",
                    e.records_in, e.passed, e.held, e.released
                ),
            );
            if e.released > e.held {
                split.ok = false;
                split.detail = format!("re-emitted {} > parked {}", e.released, e.held);
            }
            checks.push(split);
            checks.push(count_check(
                &subject,
                "enriched_topic",
                e.passed + e.released,
                enriched,
                format!(
                    "enriched {} + re-emitted {} != usage.enriched records {enriched}",
                    e.passed, e.released
                ),
            ));
            checks.push(count_check(
                &subject,
                "rate_in",
                enriched,
                rated + dlq_r,
                format!(
                    "usage.enriched records {enriched} != usage.rated {rated} + meterline.dlq.rate {dlq_r}"
                ),
            ));
        }
        let ok = checks[first..].iter().all(|c| c.ok);
        rows.push(DayRow {
            day,
            validate: v.into(),
            enrich: e.into(),
            validated_topic: validated,
            dlq_validate_topic: dlq_v,
            enriched_topic: enriched,
            rated_topic: rated,
            dlq_rate_topic: dlq_r,
            ok,
        });
    }
    if period.is_none() {
        let fl = facts.in_flight.get("validate").copied().unwrap_or(0);
        checks.push(count_check(
            "all days",
            "events_topic",
            facts.events_total,
            validate_in_total + fl,
            format!(
                "usage.events records {} != validate records in {validate_in_total} + in flight {fl}",
                facts.events_total
            ),
        ));
    }
    rows
}

fn dlq(stage: &str) -> String {
    format!("meterline.dlq.{stage}")
}

/// Topics whose records reconcile parses, with what they must be.
const PARSED_TOPICS: &[(&str, &str)] = &[
    (names::RATED, "rated events"),
    (names::WINDOWS, "closed windows"),
    (names::POSTINGS, "postings"),
];

/// `unreadable_records`: one check per parsed topic, whatever the period (a
/// record that does not parse has no day or window).
fn check_unreadable(facts: &Facts, checks: &mut Vec<Check>) {
    for (topic, contract) in PARSED_TOPICS {
        let u = facts.unreadable.get(*topic).cloned().unwrap_or_default();
        checks.push(count_check(
            &format!("topic {topic}"),
            "unreadable_records",
            0,
            u.count,
            u.describe(topic, contract),
        ));
    }
}

/// Signed effect of a journal entry on `account` (debit positive).
fn net_on(p: &Posting, account: &str) -> Decimal {
    p.lines
        .iter()
        .filter(|l| l.account == account)
        .map(|l| match l.side {
            Side::Debit => l.amount,
            Side::Credit => -l.amount,
        })
        .sum()
}

#[derive(Default)]
struct Acc {
    closed: Sum,
    open: Sum,
    /// Window records (closed and open) seen.
    records: u64,
    posted: Decimal,
    posted_rounded: Decimal,
    ok: bool,
    owner: Owner,
}

fn check_windows(
    facts: &Facts,
    period: Option<&str>,
    checks: &mut Vec<Check>,
) -> (Vec<WindowRow>, BTreeMap<String, Rounding>) {
    let mut acc: BTreeMap<WindowId, Acc> = BTreeMap::new();
    let owner_of = |w: &ClosedWindow| Owner {
        subscription: w.subscription_id.clone(),
        meter: w
            .segment
            .as_ref()
            .map_or(String::new(), |s| s.meter.clone()),
        currency: w.currency.clone(),
    };
    // Period close = the regular billing-period windows of its subscription.
    let mut period_usage: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for (w, closed) in facts
        .closed
        .iter()
        .map(|w| (w, true))
        .chain(facts.open.iter().map(|w| (w, false)))
    {
        let id = RecordId::of_window(w).original();
        let a = acc.entry(id).or_default();
        a.owner = owner_of(w);
        a.records += 1;
        if closed {
            a.closed.add(w.amount, w.event_count);
        } else {
            a.open.add(w.amount, w.event_count);
        }
        if w.kind == WindowKind::BillingPeriod && w.adjusts.is_none() {
            *period_usage
                .entry((w.subscription_id.clone(), w.window.id.clone()))
                .or_default() += w.amount;
        }
    }
    for (id, owner) in &facts.owners {
        acc.entry(id.clone()).or_default().owner = owner.clone();
    }
    for id in facts.rated.keys() {
        acc.entry(id.clone()).or_default();
    }
    // A period with rated usage has a period close (open or closed).
    for id in facts.rated.keys() {
        if id.kind != WindowKind::BillingPeriod.as_str() {
            continue;
        }
        if let Some(o) = facts.owners.get(id) {
            let close = WindowId::new(
                WindowKind::PeriodClose.as_str(),
                &o.subscription,
                &id.window,
            );
            let a = acc.entry(close).or_default();
            if a.records == 0 {
                a.owner = Owner {
                    subscription: o.subscription.clone(),
                    meter: String::new(),
                    currency: o.currency.clone(),
                };
            }
        }
    }

    // Postings by the window record they came from.
    let mut by_record: BTreeMap<RecordId, Vec<&Posting>> = BTreeMap::new();
    for p in &facts.postings {
        by_record
            .entry(RecordId::of_posting(p))
            .or_default()
            .push(p);
    }
    let closed_records: BTreeMap<RecordId, &ClosedWindow> = facts
        .closed
        .iter()
        .map(|w| (RecordId::of_window(w), w))
        .collect();
    let mut rounding: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    // Unbilled receivable per (segment, clearing period, adjusted period):
    // its net, and whether the invoice window that clears it is posted.
    let mut unbilled: BTreeMap<(String, String, String), (Decimal, bool, String)> = BTreeMap::new();
    // Records with more than one window record of the same id (aggregate
    // emitted it twice).
    let mut dup_closed: BTreeMap<RecordId, u64> = BTreeMap::new();
    for w in &facts.closed {
        *dup_closed.entry(RecordId::of_window(w)).or_default() += 1;
    }

    for (rid, n) in &dup_closed {
        let orig = rid.original();
        if !in_period(period, &orig.window) {
            continue;
        }
        let w = closed_records[rid];
        let subject = rid.describe();
        let posts = by_record.get(rid).map(Vec::as_slice).unwrap_or(&[]);
        let controls: Vec<_> = posts
            .iter()
            .filter_map(|p| p.control_total.as_ref())
            .collect();
        let c_count = controls.len() as u64;
        checks.push(count_check(
            &subject,
            "posted_once",
            *n,
            c_count,
            format!("closed {n} time(s), posted (control totals) {c_count} time(s)"),
        ));
        let posted: Decimal = controls.iter().map(|c| c.amount).sum();
        let posted_rounded: Decimal = controls.iter().map(|c| c.amount_rounded).sum();
        let a = acc.entry(orig.clone()).or_default();
        a.posted += posted;
        a.posted_rounded += posted_rounded;
        // What is invoiced: billing-period windows (day windows accrue the
        // same usage, period closes sum it again).
        if w.kind == WindowKind::BillingPeriod {
            let r = rounding.entry(w.currency.clone()).or_default();
            r.0 += posted;
            r.1 += posted_rounded;
        }
        if let Some(c) = controls.first() {
            let mut ch = amount_check(
                &subject,
                "posted_amount",
                &w.currency,
                w.amount,
                c.amount,
                format!(
                    "control total {} ({} events) != closed window {} ({} events)",
                    fmt_dec(c.amount),
                    c.event_count,
                    fmt_dec(w.amount),
                    w.event_count
                ),
            );
            if c.event_count != w.event_count || c.lineage_digest != w.lineage_digest {
                ch.ok = false;
                ch.detail = format!(
                    "control total {} events, digest {} != closed window {} events, digest {}",
                    c.event_count,
                    short(&c.lineage_digest),
                    w.event_count,
                    short(&w.lineage_digest)
                );
            }
            checks.push(ch);
            let unbilled_acct = &w.gl_accounts.unbilled_receivable;
            let journals = || {
                posts
                    .iter()
                    .filter(|p| p.posting_type == PostingType::JournalEntry)
            };
            match w.kind {
                WindowKind::Day => {
                    let accrued: Decimal = journals()
                        .filter(|p| p.kind == "accrual")
                        .map(|p| net_on(p, unbilled_acct))
                        .sum();
                    checks.push(amount_check(
                        &subject,
                        "accrual_amount",
                        &w.currency,
                        c.amount_rounded,
                        accrued,
                        format!(
                            "accrual entries {} != control total rounded {}",
                            fmt_dec(accrued),
                            fmt_dec(c.amount_rounded)
                        ),
                    ));
                }
                WindowKind::BillingPeriod => {
                    let invoiced: Decimal = posts
                        .iter()
                        .filter_map(|p| p.invoice_line.as_ref())
                        .map(|l| l.amount)
                        .sum();
                    let reclassed: Decimal = -journals()
                        .filter(|p| p.kind == "reclass")
                        .map(|p| net_on(p, unbilled_acct))
                        .sum::<Decimal>();
                    let mut ch = amount_check(
                        &subject,
                        "invoice_amount",
                        &w.currency,
                        c.amount_rounded,
                        invoiced,
                        format!(
                            "invoice line {} != control total rounded {}",
                            fmt_dec(invoiced),
                            fmt_dec(c.amount_rounded)
                        ),
                    );
                    if ch.ok && reclassed != c.amount_rounded {
                        ch.ok = false;
                        ch.actual = fmt_dec(reclassed);
                        ch.difference = fmt_signed(reclassed - c.amount_rounded);
                        ch.detail = format!(
                            "reclass {} != control total rounded {}",
                            fmt_dec(reclassed),
                            fmt_dec(c.amount_rounded)
                        );
                    }
                    checks.push(ch);
                }
                WindowKind::PeriodClose => {}
            }
            if let Some(seg) = &w.segment {
                let key = (
                    seg.segment_id.clone(),
                    w.clearing.period.id.clone(),
                    w.clearing
                        .adjusts
                        .as_ref()
                        .map_or(String::new(), |a| a.id.clone()),
                );
                let u = unbilled
                    .entry(key)
                    .or_insert_with(|| (Decimal::ZERO, false, w.currency.clone()));
                u.0 += journals()
                    .map(|p| net_on(p, unbilled_acct))
                    .sum::<Decimal>();
                if w.kind == WindowKind::BillingPeriod {
                    u.1 = true;
                }
            }
        }
    }
    // Postings naming a window that was never closed.
    for (rid, posts) in &by_record {
        if closed_records.contains_key(rid) || !in_period(period, &rid.original().window) {
            continue;
        }
        let currency = posts.first().map_or("", |p| p.currency.as_str());
        checks.push(count_check(
            &rid.describe(),
            "posted_without_window",
            0,
            posts.len() as u64,
            format!(
                "{} posting(s) ({}) for a window aggregate never closed",
                posts.len(),
                posts
                    .iter()
                    .map(|p| format!("{} {}", p.posting_type.as_str(), p.kind))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
        let a = acc.entry(rid.original()).or_default();
        a.owner.currency = currency.to_string();
        a.owner.subscription = posts
            .first()
            .map_or(String::new(), |p| p.subscription_id.clone());
        for c in posts.iter().filter_map(|p| p.control_total.as_ref()) {
            a.posted += c.amount;
            a.posted_rounded += c.amount_rounded;
        }
    }
    // Every journal entry balances.
    for p in &facts.postings {
        let rid = RecordId::of_posting(p);
        if p.posting_type != PostingType::JournalEntry || !in_period(period, &rid.original().window)
        {
            continue;
        }
        let (dr, cr) = p.totals();
        if dr != cr {
            checks.push(amount_check(
                &rid.describe(),
                "journal_balanced",
                &p.currency,
                dr,
                cr,
                format!(
                    "journal entry {} {}: debits {} != credits {}",
                    p.kind,
                    short(&p.idempotency_key),
                    fmt_dec(dr),
                    fmt_dec(cr)
                ),
            ));
        }
    }
    let balanced = facts
        .postings
        .iter()
        .filter(|p| {
            p.posting_type == PostingType::JournalEntry
                && in_period(period, &RecordId::of_posting(p).original().window)
        })
        .count();
    if balanced > 0 && !checks.iter().any(|c| c.check == "journal_balanced") {
        checks.push(count_check(
            "all journal entries",
            "journal_balanced",
            balanced as u64,
            balanced as u64,
            String::new(),
        ));
    }
    for ((seg, period_id, adjusts), (net, invoiced, currency)) in &unbilled {
        if !*invoiced || !in_period(period, period_id) {
            continue;
        }
        let subject = format!(
            "unbilled segment {} period {period_id}{}",
            short(seg),
            if adjusts.is_empty() {
                String::new()
            } else {
                format!(" (adjusting {adjusts})")
            }
        );
        checks.push(amount_check(
            &subject,
            "unbilled_cleared",
            currency,
            Decimal::ZERO,
            *net,
            format!(
                "unbilled receivable nets to {} after the invoice",
                fmt_dec(*net)
            ),
        ));
    }

    // Per original window: rated = closed + open, period close = periods.
    let mut rows = Vec::new();
    for (id, a) in &mut acc {
        if !in_period(period, &id.window) {
            continue;
        }
        let subject = id.describe();
        let currency = a.owner.currency.clone();
        let is_close = id.kind == WindowKind::PeriodClose.as_str();
        let rated = facts.rated.get(id).copied();
        let first = checks.len();
        if is_close {
            let usage = period_usage
                .get(&(id.scope.clone(), id.window.clone()))
                .copied()
                .unwrap_or_default();
            let windows = a.closed.amount + a.open.amount;
            let mut ch = amount_check(
                &subject,
                "period_close",
                &currency,
                usage,
                windows,
                format!(
                    "period close {} != billing-period windows {}",
                    fmt_dec(windows),
                    fmt_dec(usage)
                ),
            );
            if a.records == 0 {
                ch = count_check(
                    &subject,
                    "period_close",
                    1,
                    0,
                    "no period-close window (closed or open) for a period with rated usage"
                        .to_string(),
                );
            }
            checks.push(ch);
        } else {
            let r = rated.unwrap_or_default();
            let windows = a.closed.amount + a.open.amount;
            let mut ch = amount_check(
                &subject,
                "rated_vs_windows",
                &currency,
                r.amount,
                windows,
                format!(
                    "rated {} != closed {} + open {}",
                    fmt_dec(r.amount),
                    fmt_dec(a.closed.amount),
                    fmt_dec(a.open.amount)
                ),
            );
            let window_events = a.closed.events + a.open.events;
            if ch.ok && r.events != window_events {
                ch.ok = false;
                ch.detail = format!(
                    "rated events {} != closed {} + open {}",
                    r.events, a.closed.events, a.open.events
                );
            }
            checks.push(ch);
        }
        // Every check naming this window (including its adjustments' and
        // journal checks) decides its row.
        let desc = subject.clone();
        a.ok = checks[first..].iter().all(|c| c.ok)
            && checks
                .iter()
                .filter(|c| c.subject.starts_with(&desc))
                .all(|c| c.ok);
        rows.push(WindowRow {
            id: id.clone(),
            subscription: a.owner.subscription.clone(),
            meter: a.owner.meter.clone(),
            currency,
            rated: if is_close {
                None
            } else {
                Some(fmt_dec(rated.unwrap_or_default().amount))
            },
            events: a.closed.events + a.open.events,
            closed: fmt_dec(a.closed.amount),
            open: fmt_dec(a.open.amount),
            posted: fmt_dec(a.posted),
            posted_rounded: a.posted_rounded.to_string(),
            rounding: fmt_signed(a.posted_rounded - a.posted),
            ok: a.ok,
        });
    }
    rows.sort_by(|a, b| {
        (&a.id.kind, &a.id.window, &a.id.scope).cmp(&(&b.id.kind, &b.id.window, &b.id.scope))
    });
    let rounding = rounding
        .into_iter()
        .map(|(c, (u, r))| {
            (
                c,
                Rounding {
                    unrounded: fmt_dec(u),
                    rounded: fmt_dec(r),
                    difference: fmt_signed(r - u),
                    diff: f64::try_from(r - u).unwrap_or(f64::NAN),
                },
            )
        })
        .collect();
    (rows, rounding)
}

/// Every check name, for the metrics (a series per name, 0 included).
pub const CHECKS: &[&str] = &[
    "events_in",
    "validated_topic",
    "dead_letters_topic",
    "enrich_in",
    "enrich_split",
    "enriched_topic",
    "rate_in",
    "events_topic",
    "rated_vs_windows",
    "period_close",
    "posted_once",
    "posted_amount",
    "posted_without_window",
    "journal_balanced",
    "accrual_amount",
    "invoice_amount",
    "unbilled_cleared",
    "unreadable_records",
];

/// The report as tables: days, windows, failures, summary.
pub fn render(r: &Report, verbose: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "reconcile{}",
        r.period
            .as_ref()
            .map_or(String::new(), |p| format!(" --period {p}"))
    );
    let _ = writeln!(
        s,
        "\nDAYS (UTC day of event time; validate: in = validated + dead-lettered + duplicates; \
         enrich: in = enriched + parked, re-emitted = parked events healed)"
    );
    let _ = writeln!(
        s,
        "{:<10} {:>8} {:>9} {:>6} {:>5} | {:>8} {:>8} {:>6} {:>8} | {:>9} {:>6} {:>8} {:>8} {:>6}  check",
        "day", "in", "validated", "dlq", "dup", "enr.in", "enriched", "parked", "re-emit",
        "t:valid", "t:dlq", "t:enrich", "t:rated", "t:dlqr"
    );
    for d in &r.days {
        let _ = writeln!(
            s,
            "{:<10} {:>8} {:>9} {:>6} {:>5} | {:>8} {:>8} {:>6} {:>8} | {:>9} {:>6} {:>8} {:>8} {:>6}  {}",
            d.day,
            d.validate.records_in,
            d.validate.passed,
            d.validate.held,
            d.validate.released,
            d.enrich.records_in,
            d.enrich.passed,
            d.enrich.held,
            d.enrich.released,
            d.validated_topic,
            d.dlq_validate_topic,
            d.enriched_topic,
            d.rated_topic,
            d.dlq_rate_topic,
            if d.ok { "OK" } else { "FAIL" }
        );
    }
    let _ = writeln!(
        s,
        "\nWINDOWS (by original window: adjustments count toward the window they adjust; \
         amounts unrounded except 'rounded')"
    );
    let _ = writeln!(
        s,
        "{:<14} {:<10} {:<14} {:<14} {:<10} {:<4} {:>16} {:>6} {:>16} {:>12} {:>16} {:>12} {:>10}  check",
        "kind", "window", "scope", "subscription", "meter", "cur", "rated", "events", "closed",
        "open", "posted", "rounded", "rounding"
    );
    for w in &r.windows {
        let _ = writeln!(
            s,
            "{:<14} {:<10} {:<14} {:<14} {:<10} {:<4} {:>16} {:>6} {:>16} {:>12} {:>16} {:>12} {:>10}  {}",
            w.id.kind,
            w.id.window,
            short(&w.id.scope),
            w.subscription,
            if w.meter.is_empty() { "-" } else { &w.meter },
            w.currency,
            w.rated.as_deref().unwrap_or("-"),
            w.events,
            w.closed,
            w.open,
            w.posted,
            w.posted_rounded,
            w.rounding,
            if w.ok { "OK" } else { "FAIL" }
        );
    }
    if !r.rounding.is_empty() {
        let _ = writeln!(
            s,
            "\nROUNDING (invoiced: control totals of billing-period windows)"
        );
        for (c, x) in &r.rounding {
            let _ = writeln!(
                s,
                "{c}: unrounded {} rounded {} difference {}",
                x.unrounded, x.rounded, x.difference
            );
        }
    }
    if verbose {
        let _ = writeln!(s, "\nCHECKS");
        for c in &r.checks {
            let _ = writeln!(
                s,
                "{:<4} {:<22} {:<60} expected {} actual {} difference {}{}",
                if c.ok { "OK" } else { "FAIL" },
                c.check,
                c.subject,
                c.expected,
                c.actual,
                c.difference,
                c.currency
                    .as_ref()
                    .map_or(String::new(), |cur| format!(" {cur}"))
            );
        }
    }
    let dl: Vec<String> = r
        .dead_letters
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(st, n)| format!("{st} {n}"))
        .collect();
    if !dl.is_empty() {
        let _ = writeln!(
            s,
            "\ndead letters downstream of validate: {}",
            dl.join(", ")
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
    let failures: Vec<&Check> = r.failures().collect();
    if !failures.is_empty() {
        let _ = writeln!(s);
    }
    for c in &failures {
        let _ = writeln!(
            s,
            "FAIL {}: {}: {} (expected {}, actual {}, difference {}{})",
            c.subject,
            c.check,
            c.detail,
            c.expected,
            c.actual,
            c.difference,
            c.currency
                .as_ref()
                .map_or(String::new(), |cur| format!(" {cur}"))
        );
    }
    let _ = writeln!(
        s,
        "\nreconcile: {} — {} check(s), {} failed; {} day(s), {} window(s)",
        if failures.is_empty() { "OK" } else { "FAILED" },
        r.checks.len(),
        failures.len(),
        r.days.len(),
        r.windows.len()
    );
    s
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The report as Prometheus metrics (text exposition format 0.0.4).
pub fn prometheus(r: &Report, now: DateTime<Utc>) -> String {
    let period = esc(r.period.as_deref().unwrap_or("all"));
    let mut s = String::new();
    let mut family = |name: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for (labels, v) in samples {
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(s, "{name}{{period=\"{period}\"{sep}{labels}}} {v}");
        }
    };
    let failed = r.failures().count();
    family(
        "meterline_reconcile_success",
        "1 when every reconcile check held, else 0.",
        vec![(String::new(), if failed == 0 { 1.0 } else { 0.0 })],
    );
    family(
        "meterline_reconcile_checks",
        "Checks evaluated by the last reconcile, by result.",
        vec![
            ("result=\"ok\"".into(), (r.checks.len() - failed) as f64),
            ("result=\"fail\"".into(), failed as f64),
        ],
    );
    family(
        "meterline_reconcile_checks_failed",
        "Checks that failed in the last reconcile.",
        vec![(String::new(), failed as f64)],
    );
    let mut by_check: BTreeMap<&str, f64> = CHECKS.iter().map(|c| (*c, 0.0)).collect();
    let mut count_diff: BTreeMap<&str, f64> = CHECKS.iter().map(|c| (*c, 0.0)).collect();
    let mut amount_diff: BTreeMap<(&str, String), f64> = BTreeMap::new();
    for c in &r.checks {
        if !c.ok {
            *by_check.entry(c.check).or_default() += 1.0;
        }
        match &c.currency {
            Some(cur) => {
                *amount_diff.entry((c.check, cur.clone())).or_default() += c.diff.abs();
            }
            None => *count_diff.entry(c.check).or_default() += c.diff.abs(),
        }
    }
    family(
        "meterline_reconcile_check_failures",
        "Days or windows failing each check.",
        by_check
            .iter()
            .map(|(c, n)| (format!("check=\"{c}\""), *n))
            .collect(),
    );
    family(
        "meterline_reconcile_count_difference",
        "Sum of |actual - expected| of the record-count checks, by check.",
        count_diff
            .iter()
            .filter(|(c, _)| {
                !matches!(
                    **c,
                    "rated_vs_windows"
                        | "period_close"
                        | "posted_amount"
                        | "accrual_amount"
                        | "invoice_amount"
                        | "unbilled_cleared"
                )
            })
            .map(|(c, n)| (format!("check=\"{c}\""), *n))
            .collect(),
    );
    family(
        "meterline_reconcile_amount_difference",
        "Sum of |actual - expected| of the money checks, by check and currency (unrounded).",
        amount_diff
            .iter()
            .map(|((c, cur), n)| (format!("check=\"{c}\",currency=\"{}\"", esc(cur)), *n))
            .collect(),
    );
    family(
        "meterline_reconcile_rounding_difference",
        "Invoiced rounded minus unrounded amounts (billing-period control totals), by currency.",
        r.rounding
            .iter()
            .map(|(c, x)| (format!("currency=\"{}\"", esc(c)), x.diff))
            .collect(),
    );
    let mut kinds: BTreeMap<&str, f64> = BTreeMap::new();
    for w in &r.windows {
        *kinds.entry(w.id.kind.as_str()).or_default() += 1.0;
    }
    family(
        "meterline_reconcile_windows",
        "Original windows reconciled, by kind.",
        kinds
            .iter()
            .map(|(k, n)| (format!("kind=\"{k}\""), *n))
            .collect(),
    );
    family(
        "meterline_reconcile_days",
        "Days of event time reconciled.",
        vec![(String::new(), r.days.len() as f64)],
    );
    family(
        "meterline_reconcile_in_flight_records",
        "Input records a stage had not committed when reconcile read.",
        r.in_flight
            .iter()
            .map(|(st, n)| (format!("stage=\"{st}\""), *n as f64))
            .collect(),
    );
    family(
        "meterline_reconcile_last_run_timestamp_seconds",
        "When the last reconcile ran (Unix time).",
        vec![(String::new(), now.timestamp() as f64)],
    );
    s
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), as
/// node_exporter's textfile collector requires.
pub fn write_textfile(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Why reconcile could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Kafka(#[from] ClientError),
    #[error("writing {path}: {source}")]
    Textfile {
        path: String,
        source: std::io::Error,
    },
    #[error("encoding the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// `meterline reconcile`: reads, checks, prints; Ok(true) when every check held.
pub fn run(config: &Config, args: &ReconcileArgs) -> Result<bool, ReconcileError> {
    let facts = read(config)?;
    let report = check(&facts, args.period.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, args.verbose));
    }
    let metrics = prometheus(&report, Utc::now());
    if args.prometheus {
        print!("{metrics}");
    }
    if let Some(path) = &args.textfile {
        write_textfile(path, &metrics).map_err(|source| ReconcileError::Textfile {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(report.ok())
}

// ---------------------------------------------------------------------------
// Reading Kafka

#[derive(Deserialize)]
struct TimeOnly {
    time: DateTime<Utc>,
}

#[derive(Deserialize)]
struct EnrichedTime {
    event: TimeOnly,
}

fn validated_day(v: &[u8]) -> Option<String> {
    serde_json::from_slice::<TimeOnly>(v)
        .ok()
        .map(|t| lineage::day_of(t.time))
}

fn enriched_day(v: &[u8]) -> Option<String> {
    serde_json::from_slice::<EnrichedTime>(v)
        .ok()
        .map(|t| lineage::day_of(t.event.time))
}

fn unknown() -> String {
    lineage::UNKNOWN_DAY.to_string()
}

fn headers_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    kafka::record_headers(m).headers
}

/// The committed offsets of a stage's consumer group on its input topic.
fn committed(config: &Config, stage: &str, topic: &str) -> Result<BTreeMap<i32, i64>, ClientError> {
    let mut cc = kafka::reader_config(config);
    cc.set("group.id", config.group_id(stage));
    let c: BaseConsumer = kafka::create(&cc, rdkafka::consumer::DefaultConsumerContext)?;
    let md = kafka::metadata(c.client(), config, Some(topic))?;
    let parts = kafka::partition_count(&md, topic, config)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(
        tpl,
        std::time::Duration::from_millis(config.kafka.request_timeout_ms),
    )?;
    Ok(got
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                },
            )
        })
        .collect())
}

/// Whether any partition of `topic` had records deleted from its start.
fn truncated(config: &Config, topic: &str) -> Result<bool, ClientError> {
    let c = kafka::reader(config)?;
    let md = kafka::metadata(c.client(), config, Some(topic))?;
    let parts = kafka::partition_count(&md, topic, config)?;
    for p in 0..parts {
        let (low, _) = c.fetch_watermarks(
            topic,
            p,
            std::time::Duration::from_millis(config.kafka.request_timeout_ms),
        )?;
        if low > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads a changelog: the latest value per (partition, key).
/// (partition, key) -> latest value of a changelog.
type Latest = BTreeMap<(i32, Vec<u8>), Vec<u8>>;

fn latest(config: &Config, topic: &str) -> Result<Latest, ClientError> {
    let mut m = BTreeMap::new();
    for_each_record(config, topic, |r| {
        let Some(k) = r.key() else { return };
        match r.payload() {
            Some(v) => {
                m.insert((r.partition(), k.to_vec()), v.to_vec());
            }
            None => {
                m.remove(&(r.partition(), k.to_vec()));
            }
        }
    })?;
    Ok(m)
}

/// Reads everything reconcile checks. Records are counted under read_committed.
pub fn read(config: &Config) -> Result<Facts, ClientError> {
    let mut f = Facts::default();
    // Group offsets first: a record a stage had not committed then is in flight.
    let inputs = [
        ("validate", names::EVENTS),
        ("enrich", names::VALIDATED),
        ("rate", names::ENRICHED),
        ("aggregate", names::RATED),
        ("post", names::WINDOWS),
    ];
    let mut offsets = BTreeMap::new();
    for (stage, topic) in inputs {
        offsets.insert(stage, committed(config, stage, &config.topic(topic))?);
    }
    let mut in_flight: BTreeMap<String, u64> = BTreeMap::new();
    let mut flight = |stage: &str, m: &rdkafka::message::BorrowedMessage<'_>| {
        let done = offsets
            .get(stage)
            .and_then(|o| o.get(&m.partition()))
            .copied()
            .unwrap_or(0);
        let n = in_flight.entry(stage.to_string()).or_default();
        if m.offset() >= done {
            *n += 1;
        }
    };
    for stage in ["validate", "enrich"] {
        let topic = config.topic(&names::changelog(stage, lineage::COUNTERS_STORE));
        for ((_, k), v) in latest(config, &topic)? {
            if let (Some(day), Ok(c)) = (
                lineage::counter_day(&k),
                serde_json::from_slice::<DayCounters>(&v),
            ) {
                f.add_counters(stage, &day, &c);
            }
        }
    }
    let mut events_total = 0u64;
    for_each_record(config, &config.topic(names::EVENTS), |m| {
        events_total += 1;
        flight("validate", m);
    })?;
    f.events_total = events_total;
    let mut days: Vec<(String, String)> = Vec::new();
    for_each_record(config, &config.topic(names::VALIDATED), |m| {
        flight("enrich", m);
        let d = m.payload().and_then(validated_day).unwrap_or_else(unknown);
        days.push((names::VALIDATED.to_string(), d));
    })?;
    for_each_record(config, &config.topic(&dlq("validate")), |m| {
        let (_, _, t) = lineage::identify_raw(m.payload(), &headers_of(m));
        let d = t.map_or_else(unknown, lineage::day_of);
        days.push((dlq("validate"), d));
    })?;
    for_each_record(config, &config.topic(names::ENRICHED), |m| {
        flight("rate", m);
        let d = m.payload().and_then(enriched_day).unwrap_or_else(unknown);
        days.push((names::ENRICHED.to_string(), d));
    })?;
    for_each_record(config, &config.topic(&dlq("rate")), |m| {
        let d = m.payload().and_then(enriched_day).unwrap_or_else(unknown);
        days.push((dlq("rate"), d));
    })?;
    let mut rated = Vec::new();
    let mut unreadable: BTreeMap<String, Unreadable> = BTreeMap::new();
    let u = unreadable.entry(names::RATED.to_string()).or_default();
    for_each_record(config, &config.topic(names::RATED), |m| {
        flight("aggregate", m);
        if let Some(r) = parse_or_count(m, u, RatedEvent::from_json_slice) {
            days.push((
                names::RATED.to_string(),
                lineage::day_of(r.enriched.event.time),
            ));
            rated.push(r);
        }
    })?;
    for r in &rated {
        f.add_rated(r);
    }
    drop(rated);
    for (t, d) in days {
        f.add_topic_day(&t, d);
    }
    // Open windows before closed ones: a window aggregate closes in between
    // is then seen twice (and counted once, closed), never not at all.
    let topic = config.topic(&names::changelog("aggregate", "windows"));
    let mut open = Vec::new();
    for ((partition, k), v) in latest(config, &topic)? {
        if k.first() == Some(&b'W') {
            if let Ok(w) = ClosedWindow::from_json_slice(&v) {
                open.push(w);
            }
        } else if k == b"M" {
            if let Some(wm) = serde_json::from_slice::<PartitionClock>(&v)
                .ok()
                .and_then(|c| c.watermark_ms)
            {
                f.watermarks.insert(partition, wm);
            }
        }
    }
    let c = kafka::reader(config)?;
    let rated_topic = config.topic(names::RATED);
    let md = kafka::metadata(c.client(), config, Some(&rated_topic))?;
    f.rated_partitions = kafka::partition_count(&md, &rated_topic, config)?;
    f.periods_from = config.aggregate.periods_from;
    drop(c);
    for ((_, _), v) in latest(config, &config.topic(names::REF_SUBSCRIPTIONS))? {
        if let Ok(sub) = serde_json::from_slice::<crate::refdata::Subscription>(&v) {
            f.subscriptions.push(sub);
        }
    }
    let mut closed = Vec::new();
    let u = unreadable.entry(names::WINDOWS.to_string()).or_default();
    for_each_record(config, &config.topic(names::WINDOWS), |m| {
        flight("post", m);
        if let Some(w) = parse_or_count(m, u, ClosedWindow::from_json_slice) {
            closed.push(w);
        }
    })?;
    let closed_ids: BTreeSet<RecordId> = closed.iter().map(RecordId::of_window).collect();
    open.retain(|w| !closed_ids.contains(&RecordId::of_window(w)));
    f.open = open;
    f.closed = closed;
    let mut postings = Vec::new();
    let u = unreadable.entry(names::POSTINGS.to_string()).or_default();
    for_each_record(config, &config.topic(names::POSTINGS), |m| {
        if let Some(p) = parse_or_count(m, u, Posting::from_json_slice) {
            postings.push(p);
        }
    })?;
    f.postings = postings;
    f.unreadable = unreadable;
    for stage in ["enrich", "aggregate", "post"] {
        let n = crate::topology::counts::count_topic(config, &config.topic(&dlq(stage)))?;
        f.dead_letters.insert(stage.to_string(), n);
    }
    f.in_flight = in_flight;
    for t in [
        names::EVENTS,
        names::VALIDATED,
        names::ENRICHED,
        names::RATED,
        names::WINDOWS,
    ] {
        if truncated(config, &config.topic(t))? {
            f.truncated.insert(t.to_string());
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use chrono::Duration;
    use rust_decimal_macros::dec;

    use super::*;
    use crate::stages::aggregate::tests::{aggregate_all, config, rated, UTC1};
    use crate::stages::aggregate::GRACE_PERIOD_S;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn post_all(windows: &[ClosedWindow]) -> Vec<Posting> {
        crate::stages::post::tests::post_windows(&config(), windows).0
    }

    /// January usage with a late event (an adjustment of Jan 11 made in the
    /// Jan 15 window), closed by an event on Feb 1; the closer's own windows
    /// stay open and are left out (neither rated nor windows).
    fn january() -> Facts {
        let t = |d: &str| at(&format!("2026-01-{d}T12:00:00Z"));
        let usage: Vec<RatedEvent> = vec![
            rated(
                "e1",
                t("10"),
                UTC1,
                &[("tokens", dec!(1.004)), ("calls", dec!(0.5))],
            ),
            rated("e2", t("11"), UTC1, &[("tokens", dec!(2.003))]),
            rated("e3", t("15"), UTC1, &[("tokens", dec!(3))]),
            rated("late", t("11"), UTC1, &[("tokens", dec!(0.333))]),
        ];
        let mut all = usage.clone();
        all.push(rated(
            "closer",
            at("2026-02-01T00:00:00Z") + Duration::seconds(GRACE_PERIOD_S),
            UTC1,
            &[("tokens", dec!(1))],
        ));
        let closed = aggregate_all(&all);
        assert!(closed.iter().any(|w| w.adjusts.is_some()));
        let mut f = Facts::default();
        for r in &usage {
            f.add_rated(r);
        }
        f.postings = post_all(&closed);
        f.closed = closed;
        f
    }

    fn failing(r: &Report) -> Vec<(String, &'static str)> {
        r.failures().map(|c| (c.subject.clone(), c.check)).collect()
    }

    #[test]
    fn a_clean_month_reconciles_with_its_rounding_shown() {
        let f = january();
        let r = check(&f, None);
        assert!(r.ok(), "{}", render(&r, true));
        // Day, billing-period and period-close windows.
        for kind in ["day", "billing_period", "period_close"] {
            assert!(r.windows.iter().any(|w| w.id.kind == kind), "{kind}");
        }
        let jan11 = r
            .windows
            .iter()
            .find(|w| w.id.kind == "day" && w.id.window == "2026-01-11" && w.meter == "tokens")
            .unwrap();
        // The late event counts toward Jan 11, where it happened.
        assert_eq!(jan11.rated.as_deref(), Some("2.336"));
        assert_eq!(jan11.closed, "2.336");
        assert_eq!(jan11.events, 2);
        // Rounded per window: 2.003 -> 2.00 and 0.333 -> 0.33.
        assert_eq!(jan11.posted_rounded, "2.33");
        assert_eq!(jan11.rounding, "-0.006");
        assert!(r.rounding.contains_key("USD"));
        let text = render(&r, false);
        assert!(text.contains("reconcile: OK"), "{text}");
        assert!(r.checks.iter().any(|c| c.check == "unbilled_cleared"));
        assert!(r.checks.iter().any(|c| c.check == "period_close"));
    }

    #[test]
    fn every_subscription_period_before_the_watermark_is_closed_once() {
        // January's books; sub-1 started Dec 1, 2025 (its December has no
        // usage), the watermark is in February.
        let mut f = january();
        let sub = |id: &str, start: &str| {
            serde_json::from_value::<crate::refdata::Subscription>(serde_json::json!({
                "id": id, "customer_id": "cust-1", "plan_id": "pro", "start": start,
                "end": null, "billing_anchor_day": 1, "time_zone": "UTC",
                "currency": "USD", "legal_entity": "ml-us"}))
            .unwrap()
        };
        f.subscriptions = vec![sub("sub-1", "2026-01-01T00:00:00Z")];
        f.rated_partitions = 1;
        f.watermarks
            .insert(0, at("2026-02-01T00:00:00Z").timestamp_millis());
        assert!(check(&f, None).ok(), "{}", render(&check(&f, None), true));
        // December was never closed: named.
        f.subscriptions = vec![sub("sub-1", "2025-12-01T00:00:00Z")];
        assert_eq!(
            failing(&check(&f, None)),
            vec![(
                "subscription sub-1 period 2025-12-01".to_string(),
                "subscription_period_closed"
            )]
        );
        // January closed twice: named too.
        f.subscriptions = vec![sub("sub-1", "2026-01-01T00:00:00Z")];
        let jan = f
            .closed
            .iter()
            .find(|w| w.kind == WindowKind::PeriodClose)
            .unwrap()
            .clone();
        f.closed.push(jan);
        assert!(failing(&check(&f, None)).contains(&(
            "subscription sub-1 period 2026-01-01".to_string(),
            "subscription_period_closed"
        )));
    }

    #[test]
    fn a_lost_window_fails_naming_it() {
        let mut f = january();
        // usage.windows lost Jan 10's tokens day window before post read it.
        let lost = |w: &ClosedWindow| {
            w.kind == WindowKind::Day
                && w.window.id == "2026-01-10"
                && w.segment.as_ref().unwrap().meter == "tokens"
        };
        let seg = f
            .closed
            .iter()
            .find(|w| lost(w))
            .unwrap()
            .segment
            .clone()
            .unwrap();
        f.closed.retain(|w| !lost(w));
        f.postings.retain(|p| {
            !(p.window.id == "2026-01-10" && p.segment_id.as_ref() == Some(&seg.segment_id))
        });
        let r = check(&f, None);
        let fails = failing(&r);
        let subject = format!("window day 2026-01-10 segment {}", short(&seg.segment_id));
        assert!(
            fails.contains(&(subject.clone(), "rated_vs_windows")),
            "{fails:?}"
        );
        // Post's rounding entry was computed with the lost accrual in it:
        // the segment's unbilled receivable no longer clears either.
        assert!(
            fails.iter().any(|(_, c)| *c == "unbilled_cleared"),
            "{fails:?}"
        );
        let text = render(&r, false);
        assert!(
            text.contains(&format!(
                "FAIL {subject}: rated_vs_windows: rated 1.004 != closed 0 + open 0"
            )),
            "{text}"
        );
        assert!(text.contains("reconcile: FAILED"));
    }

    #[test]
    fn fabricated_duplicated_and_unbalanced_postings_fail() {
        let base = january();
        let accrual = base
            .postings
            .iter()
            .find(|p| p.kind == "accrual" && p.window.id == "2026-01-15")
            .unwrap()
            .clone();
        let control = base
            .postings
            .iter()
            .find(|p| p.posting_type == PostingType::ControlTotal && p.window.id == "2026-01-15")
            .unwrap()
            .clone();
        let seg = short(accrual.segment_id.as_deref().unwrap());

        // A fabricated accrual for a day that had no usage.
        let mut f = january();
        let mut fake = accrual.clone();
        fake.window.id = "2026-01-20".into();
        f.postings.push(fake);
        let fails = failing(&check(&f, None));
        assert!(fails.contains(&(
            format!("window day 2026-01-20 segment {seg}"),
            "posted_without_window"
        )));

        // An extra accrual for a real window: its accruals exceed the control total.
        let mut f = january();
        f.postings.push(accrual.clone());
        let fails = failing(&check(&f, None));
        assert!(
            fails.contains(&(
                format!("window day 2026-01-15 segment {seg}"),
                "accrual_amount"
            )),
            "{fails:?}"
        );

        // A window posted twice.
        let mut f = january();
        f.postings.push(control);
        let fails = failing(&check(&f, None));
        assert!(fails.contains(&(
            format!("window day 2026-01-15 segment {seg}"),
            "posted_once"
        )));

        // An unbalanced entry.
        let mut f = january();
        let p = f
            .postings
            .iter_mut()
            .find(|p| p.kind == "accrual" && p.window.id == "2026-01-15")
            .unwrap();
        p.lines[0].amount += dec!(0.01);
        let fails = failing(&check(&f, None));
        assert!(fails.contains(&(
            format!("window day 2026-01-15 segment {seg}"),
            "journal_balanced"
        )));
    }

    #[test]
    fn period_filter_keeps_only_matching_ids() {
        let f = january();
        let r = check(&f, Some("2026-01-1"));
        assert!(r
            .windows
            .iter()
            .all(|w| w.id.window.starts_with("2026-01-1")));
        assert!(r.windows.iter().any(|w| w.id.window == "2026-01-15"));
        assert!(check(&f, Some("2026-02")).windows.is_empty());
    }

    fn counters(records_in: u64, passed: u64, held: u64, released: u64) -> DayCounters {
        DayCounters {
            records_in,
            passed,
            held,
            released,
        }
    }

    #[test]
    fn day_counts_balance_or_name_the_day() {
        let mut f = Facts::default();
        let d = "2026-10-05";
        // 10 in: 7 validated, 2 dead-lettered, 1 duplicate; enrich: 6 + 1
        // parked, later re-emitted; every topic agrees.
        f.add_counters("validate", d, &counters(10, 7, 2, 1));
        f.add_counters("enrich", d, &counters(4, 3, 1, 1));
        f.add_counters("enrich", d, &counters(3, 3, 0, 0));
        for (t, n) in [
            (names::VALIDATED.to_string(), 7),
            (dlq("validate"), 2),
            (names::ENRICHED.to_string(), 7),
            (names::RATED.to_string(), 6),
            (dlq("rate"), 1),
        ] {
            for _ in 0..n {
                f.add_topic_day(&t, d.into());
            }
        }
        // A reject with no readable time.
        f.add_counters("validate", "unknown", &counters(1, 0, 1, 0));
        f.add_topic_day(&dlq("validate"), "unknown".into());
        f.events_total = 11;
        let r = check(&f, None);
        assert!(r.ok(), "{}", render(&r, true));
        assert_eq!(r.days.len(), 2);

        // One validated record missing from the topic, one enriched event
        // that enrich never counted.
        f.topic_days.insert((names::VALIDATED.into(), d.into()), 6);
        f.add_counters("enrich", d, &counters(0, 0, 1, 0));
        let fails = failing(&check(&f, None));
        let day = format!("day {d}");
        assert!(fails.contains(&(day.clone(), "validated_topic")));
        assert!(fails.contains(&(day.clone(), "enrich_split")));
        assert!(!fails.contains(&(day, "events_in")));
        // More events on the topic than validate read: in flight explains it.
        f.events_total = 12;
        assert!(failing(&check(&f, None)).contains(&("all days".into(), "events_topic")));
        f.in_flight.insert("validate".into(), 1);
        assert!(!failing(&check(&f, None)).contains(&("all days".into(), "events_topic")));
    }

    #[test]
    fn a_record_that_is_not_a_posting_fails_naming_it() {
        let mut f = january();
        let r = check(&f, None);
        let ok: Vec<&Check> = r
            .checks
            .iter()
            .filter(|c| c.check == "unreadable_records")
            .collect();
        assert_eq!(ok.len(), 3);
        assert!(ok.iter().all(|c| c.ok));
        f.unreadable
            .entry(names::POSTINGS.to_string())
            .or_default()
            .add(4, 17, "missing field `posting_type`");
        // Whatever the period: the record has none.
        for period in [None, Some("2026-01")] {
            let r = check(&f, period);
            assert!(!r.ok());
            assert_eq!(
                failing(&r),
                [("topic finance.postings".to_string(), "unreadable_records")]
            );
            let text = render(&r, false);
            assert!(
                text.contains(
                    "FAIL topic finance.postings: unreadable_records: 1 record(s) of \
                     finance.postings are not postings and were left out: partition 4 offset 17"
                ),
                "{text}"
            );
            assert!(text.contains("reconcile: FAILED"), "{text}");
        }
        let text = prometheus(&check(&f, None), at("2026-02-02T00:00:00Z"));
        assert!(
            text.contains(
                "meterline_reconcile_check_failures{period=\"all\",check=\"unreadable_records\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "meterline_reconcile_count_difference{period=\"all\",check=\"unreadable_records\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn metrics_carry_the_results() {
        let mut f = january();
        let text = prometheus(&check(&f, None), at("2026-02-02T00:00:00Z"));
        assert!(
            text.contains("meterline_reconcile_success{period=\"all\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("meterline_reconcile_checks_failed{period=\"all\"} 0\n"));
        assert!(text.contains(
            "meterline_reconcile_check_failures{period=\"all\",check=\"rated_vs_windows\"} 0\n"
        ));
        assert!(text.contains(
            "meterline_reconcile_last_run_timestamp_seconds{period=\"all\"} 1769990400\n"
        ));
        f.closed.retain(|w| w.window.id != "2026-01-10");
        let text = prometheus(&check(&f, Some("2026-01")), at("2026-02-02T00:00:00Z"));
        assert!(text.contains("meterline_reconcile_success{period=\"2026-01\"} 0\n"));
        assert!(text.contains(
            "meterline_reconcile_check_failures{period=\"2026-01\",check=\"rated_vs_windows\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "meterline_reconcile_amount_difference{period=\"2026-01\",check=\"rated_vs_windows\",currency=\"USD\"} 1.504\n"
        ), "{text}");
        // Every line is a comment or `name{labels} value`.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = l.rsplit_once(' ').unwrap();
            assert!(
                series.starts_with("meterline_reconcile_") && series.ends_with('}'),
                "{l}"
            );
            value.parse::<f64>().unwrap();
        }
    }
}
