//! The checks per original window (rate, aggregate, post) and the journal
//! checks: one function per check, over the accumulators ([`Windows`])
//! gathered once from the facts.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::contracts::{ClosedWindow, WindowKind};
use crate::contracts::{ControlTotal, Posting, PostingType};

use super::super::facts::{short, Facts, Owner, RecordId, Sum, WindowId};
use super::super::report::{fmt_dec, fmt_signed, Check, Rounding, WindowRow};
use super::{amount_check, count_check, in_period};

/// Signed effect of a journal entry on `account` (debit positive): the
/// balance ([`Posting::totals`]) of its lines on that account.
fn net_on(p: &Posting, account: &str) -> Decimal {
    let mut on_account = p.clone();
    on_account.lines.retain(|l| l.account == account);
    let (debits, credits) = on_account.totals();
    debits - credits
}

/// The journal entries among `posts`.
fn journals<'a>(posts: &'a [&'a Posting]) -> impl Iterator<Item = &'a &'a Posting> {
    posts
        .iter()
        .filter(|p| p.posting_type == PostingType::JournalEntry)
}

/// One original window's figures.
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

/// Unbilled receivable per (segment, clearing period, adjusted period).
type UnbilledKey = (String, String, String);

/// Its net, whether the invoice window that clears it is posted, and the
/// currency.
type Unbilled = (Decimal, bool, String);

/// What the window checks read, gathered once from the facts.
struct Windows<'f> {
    /// Original window -> its figures.
    acc: BTreeMap<WindowId, Acc>,
    /// (subscription, period) -> amount of its regular billing-period
    /// windows (what its period close must be).
    period_usage: BTreeMap<(String, String), Decimal>,
    /// Postings by the window record they came from.
    by_record: BTreeMap<RecordId, Vec<&'f Posting>>,
    /// Closed window records by id.
    closed_records: BTreeMap<RecordId, &'f ClosedWindow>,
    /// Closed window record -> how many times it was closed (more than once:
    /// aggregate emitted it twice).
    times_closed: BTreeMap<RecordId, u64>,
    /// Currency -> posted (unrounded, rounded) of billing-period windows.
    rounding: BTreeMap<String, (Decimal, Decimal)>,
    unbilled: BTreeMap<UnbilledKey, Unbilled>,
    /// (subscription, period) whose invoice waits for approval: its
    /// unbilled receivable is not cleared yet, by design.
    held: std::collections::BTreeSet<(String, String)>,
}

impl<'f> Windows<'f> {
    fn gather(facts: &'f Facts, period: Option<&str>) -> Self {
        let mut w = Windows {
            acc: BTreeMap::new(),
            period_usage: BTreeMap::new(),
            by_record: BTreeMap::new(),
            closed_records: BTreeMap::new(),
            times_closed: BTreeMap::new(),
            rounding: BTreeMap::new(),
            unbilled: BTreeMap::new(),
            held: facts
                .closed
                .iter()
                .filter(|c| facts.awaiting_approval(&c.subscription_id, &c.clearing.period.id))
                .map(|c| (c.subscription_id.clone(), c.clearing.period.id.clone()))
                .collect(),
        };
        w.add_window_records(facts);
        w.add_rated(facts);
        for p in &facts.postings {
            w.by_record
                .entry(RecordId::of_posting(p))
                .or_default()
                .push(p);
        }
        w.closed_records = facts
            .closed
            .iter()
            .map(|c| (RecordId::of_window(c), c))
            .collect();
        for c in &facts.closed {
            *w.times_closed.entry(RecordId::of_window(c)).or_default() += 1;
        }
        w.add_posted(period);
        w.add_posted_without_window(period);
        w
    }

    /// Closed and open windows, and the period-close sums.
    fn add_window_records(&mut self, facts: &Facts) {
        let owner_of = |w: &ClosedWindow| Owner {
            subscription: w.subscription_id.clone(),
            meter: w
                .segment
                .as_ref()
                .map_or(String::new(), |s| s.meter.clone()),
            currency: w.currency.clone(),
        };
        for (w, closed) in facts
            .closed
            .iter()
            .map(|w| (w, true))
            .chain(facts.open.iter().map(|w| (w, false)))
        {
            let id = RecordId::of_window(w).original();
            let a = self.acc.entry(id).or_default();
            a.owner = owner_of(w);
            a.records += 1;
            if closed {
                a.closed.add(w.amount, w.event_count);
            } else {
                a.open.add(w.amount, w.event_count);
            }
            // Period close = the regular billing-period windows of its subscription.
            if w.kind == WindowKind::BillingPeriod && w.adjusts.is_none() {
                *self
                    .period_usage
                    .entry((w.subscription_id.clone(), w.window.id.clone()))
                    .or_default() += w.amount;
            }
        }
    }

    /// Windows with rated usage, and the period close each billing period
    /// with rated usage has (open or closed).
    fn add_rated(&mut self, facts: &Facts) {
        for (id, owner) in &facts.owners {
            self.acc.entry(id.clone()).or_default().owner = owner.clone();
        }
        for id in facts.rated.keys() {
            self.acc.entry(id.clone()).or_default();
        }
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
                let a = self.acc.entry(close).or_default();
                if a.records == 0 {
                    a.owner = Owner {
                        subscription: o.subscription.clone(),
                        meter: String::new(),
                        currency: o.currency.clone(),
                    };
                }
            }
        }
    }

    /// The postings of one window record.
    fn posts_of(&self, rid: &RecordId) -> &[&'f Posting] {
        self.by_record.get(rid).map(Vec::as_slice).unwrap_or(&[])
    }

    /// What the closed windows of the period posted: per window, per
    /// currency (rounding) and per segment (unbilled receivable).
    fn add_posted(&mut self, period: Option<&str>) {
        for rid in self.times_closed.keys() {
            let orig = rid.original();
            if !in_period(period, &orig.window) {
                continue;
            }
            // Every key of times_closed has its record (gathered together).
            let Some(&w) = self.closed_records.get(rid) else {
                continue;
            };
            let posts = self.by_record.get(rid).map(Vec::as_slice).unwrap_or(&[]);
            let controls = control_totals(posts);
            let posted: Decimal = controls.iter().map(|c| c.amount).sum();
            let posted_rounded: Decimal = controls.iter().map(|c| c.amount_rounded).sum();
            let a = self.acc.entry(orig).or_default();
            a.posted += posted;
            a.posted_rounded += posted_rounded;
            // What is invoiced: billing-period windows (day windows accrue the
            // same usage, period closes sum it again).
            if w.kind == WindowKind::BillingPeriod {
                let r = self.rounding.entry(w.currency.clone()).or_default();
                r.0 += posted;
                r.1 += posted_rounded;
            }
            if controls.is_empty() {
                continue;
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
                let unbilled_acct = &w.gl_accounts.unbilled_receivable;
                let u = self
                    .unbilled
                    .entry(key)
                    .or_insert_with(|| (Decimal::ZERO, false, w.currency.clone()));
                u.0 += journals(posts)
                    .map(|p| net_on(p, unbilled_acct))
                    .sum::<Decimal>();
                if w.kind == WindowKind::BillingPeriod
                    && !self
                        .held
                        .contains(&(w.subscription_id.clone(), w.clearing.period.id.clone()))
                {
                    u.1 = true;
                }
            }
        }
    }

    /// Postings naming a window that was never closed count toward the
    /// window they name.
    fn add_posted_without_window(&mut self, period: Option<&str>) {
        for (rid, posts) in &self.by_record {
            if self.closed_records.contains_key(rid) || !in_period(period, &rid.original().window) {
                continue;
            }
            let currency = posts.first().map_or("", |p| p.currency.as_str());
            let a = self.acc.entry(rid.original()).or_default();
            a.owner.currency = currency.to_string();
            a.owner.subscription = posts
                .first()
                .map_or(String::new(), |p| p.subscription_id.clone());
            for c in posts.iter().filter_map(|p| p.control_total.as_ref()) {
                a.posted += c.amount;
                a.posted_rounded += c.amount_rounded;
            }
        }
    }
}

fn control_totals<'a>(posts: &[&'a Posting]) -> Vec<&'a ControlTotal> {
    posts
        .iter()
        .filter_map(|p| p.control_total.as_ref())
        .collect()
}

/// Runs the window and journal checks, in this order: per closed window
/// record `posted_once`, `posted_amount` and `accrual_amount` or
/// `invoice_amount`; `posted_without_window`; `journal_balanced`;
/// `unbilled_cleared`; per original window `period_close` or
/// `rated_vs_windows`. Returns the windows table and the rounding.
pub(super) fn check_windows(
    facts: &Facts,
    period: Option<&str>,
    checks: &mut Vec<Check>,
) -> (Vec<WindowRow>, BTreeMap<String, Rounding>) {
    let mut w = Windows::gather(facts, period);
    for (rid, n) in &w.times_closed {
        if !in_period(period, &rid.original().window) {
            continue;
        }
        let Some(&window) = w.closed_records.get(rid) else {
            continue;
        };
        let subject = rid.describe();
        let posts = w.posts_of(rid);
        let controls = control_totals(posts);
        checks.push(posted_once(&subject, *n, &controls));
        let Some(c) = controls.first() else {
            continue;
        };
        checks.push(posted_amount(&subject, window, c));
        match window.kind {
            WindowKind::Day => checks.push(accrual_amount(&subject, window, c, posts)),
            // A held invoice's lines are not posted yet, by design: checked
            // once it is approved (the invoice checks list it meanwhile).
            WindowKind::BillingPeriod
                if facts.awaiting_approval(&window.subscription_id, &window.clearing.period.id) => {
            }
            WindowKind::BillingPeriod => {
                checks.push(invoice_amount(&subject, window, c, posts));
            }
            WindowKind::PeriodClose => {}
        }
    }
    for (rid, posts) in &w.by_record {
        if w.closed_records.contains_key(rid) || !in_period(period, &rid.original().window) {
            continue;
        }
        checks.push(posted_without_window(rid, posts));
    }
    checks.extend(journal_balanced(facts, period));
    for (key, u) in &w.unbilled {
        if !u.1 || !in_period(period, &key.1) {
            continue;
        }
        checks.push(unbilled_cleared(key, u));
    }
    let rows = window_rows(facts, period, &mut w, checks);
    (rows, rounding_by_currency(w.rounding))
}

/// `posted_once`: every closed window has exactly one control total.
fn posted_once(subject: &str, times_closed: u64, controls: &[&ControlTotal]) -> Check {
    let c_count = controls.len() as u64;
    count_check(
        subject,
        "posted_once",
        times_closed,
        c_count,
        format!("closed {times_closed} time(s), posted (control totals) {c_count} time(s)"),
    )
}

/// `posted_amount`: the control total (unrounded amount, events, lineage
/// digest) is the closed window's.
fn posted_amount(subject: &str, w: &ClosedWindow, c: &ControlTotal) -> Check {
    let mut ch = amount_check(
        subject,
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
    ch
}

/// `accrual_amount`: a day window's accrual entries are its control total's
/// rounded amount.
fn accrual_amount(subject: &str, w: &ClosedWindow, c: &ControlTotal, posts: &[&Posting]) -> Check {
    let unbilled_acct = &w.gl_accounts.unbilled_receivable;
    let accrued: Decimal = journals(posts)
        .filter(|p| p.kind == "accrual")
        .map(|p| net_on(p, unbilled_acct))
        .sum();
    amount_check(
        subject,
        "accrual_amount",
        &w.currency,
        c.amount_rounded,
        accrued,
        format!(
            "accrual entries {} != control total rounded {}",
            fmt_dec(accrued),
            fmt_dec(c.amount_rounded)
        ),
    )
}

/// `invoice_amount`: a billing-period window's invoice line and reclass are
/// its control total's rounded amount.
fn invoice_amount(subject: &str, w: &ClosedWindow, c: &ControlTotal, posts: &[&Posting]) -> Check {
    let unbilled_acct = &w.gl_accounts.unbilled_receivable;
    let invoiced: Decimal = posts
        .iter()
        .filter_map(|p| p.invoice_line.as_ref())
        .map(|l| l.amount)
        .sum();
    let reclassed: Decimal = -journals(posts)
        .filter(|p| p.kind == "reclass")
        .map(|p| net_on(p, unbilled_acct))
        .sum::<Decimal>();
    let mut ch = amount_check(
        subject,
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
    ch
}

/// `posted_without_window`: no posting names a window aggregate never closed.
fn posted_without_window(rid: &RecordId, posts: &[&Posting]) -> Check {
    count_check(
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
    )
}

/// `journal_balanced`: every journal entry's debits = credits. One check per
/// unbalanced entry, else one for all of them (none without entries).
fn journal_balanced(facts: &Facts, period: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut entries = 0u64;
    for p in &facts.postings {
        let rid = RecordId::of_posting(p);
        if p.posting_type != PostingType::JournalEntry || !in_period(period, &rid.original().window)
        {
            continue;
        }
        entries += 1;
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
    if entries > 0 && checks.is_empty() {
        checks.push(count_check(
            "all journal entries",
            "journal_balanced",
            entries,
            entries,
            String::new(),
        ));
    }
    checks
}

/// `unbilled_cleared`: once a period is invoiced, the unbilled receivable of
/// each segment nets to zero.
fn unbilled_cleared((seg, period_id, adjusts): &UnbilledKey, u: &Unbilled) -> Check {
    let (net, _, currency) = u;
    let subject = format!(
        "unbilled segment {} period {period_id}{}",
        short(seg),
        if adjusts.is_empty() {
            String::new()
        } else {
            format!(" (adjusting {adjusts})")
        }
    );
    amount_check(
        &subject,
        "unbilled_cleared",
        currency,
        Decimal::ZERO,
        *net,
        format!(
            "unbilled receivable nets to {} after the invoice",
            fmt_dec(*net)
        ),
    )
}

/// `period_close`: a period close's amount is its subscription's regular
/// billing-period windows.
fn period_close(subject: &str, currency: &str, a: &Acc, usage: Decimal) -> Check {
    if a.records == 0 {
        return count_check(
            subject,
            "period_close",
            1,
            0,
            "no period-close window (closed or open) for a period with rated usage".to_string(),
        );
    }
    let windows = a.closed.amount + a.open.amount;
    amount_check(
        subject,
        "period_close",
        currency,
        usage,
        windows,
        format!(
            "period close {} != billing-period windows {}",
            fmt_dec(windows),
            fmt_dec(usage)
        ),
    )
}

/// `rated_vs_windows`: the rated marginal amounts (and events) are the
/// closed plus the still-open windows.
fn rated_vs_windows(subject: &str, currency: &str, a: &Acc, rated: Sum) -> Check {
    let windows = a.closed.amount + a.open.amount;
    let mut ch = amount_check(
        subject,
        "rated_vs_windows",
        currency,
        rated.amount,
        windows,
        format!(
            "rated {} != closed {} + open {}",
            fmt_dec(rated.amount),
            fmt_dec(a.closed.amount),
            fmt_dec(a.open.amount)
        ),
    );
    let window_events = a.closed.events + a.open.events;
    if ch.ok && rated.events != window_events {
        ch.ok = false;
        ch.detail = format!(
            "rated events {} != closed {} + open {}",
            rated.events, a.closed.events, a.open.events
        );
    }
    ch
}

/// Per original window: its `period_close` or `rated_vs_windows` check, and
/// its row, failed when any check naming it failed.
fn window_rows(
    facts: &Facts,
    period: Option<&str>,
    w: &mut Windows<'_>,
    checks: &mut Vec<Check>,
) -> Vec<WindowRow> {
    let mut rows = Vec::new();
    for (id, a) in &mut w.acc {
        if !in_period(period, &id.window) {
            continue;
        }
        let subject = id.describe();
        let currency = a.owner.currency.clone();
        let is_close = id.kind == WindowKind::PeriodClose.as_str();
        let rated = facts.rated.get(id).copied();
        let first = checks.len();
        if is_close {
            let usage = w
                .period_usage
                .get(&(id.scope.clone(), id.window.clone()))
                .copied()
                .unwrap_or_default();
            checks.push(period_close(&subject, &currency, a, usage));
        } else {
            checks.push(rated_vs_windows(
                &subject,
                &currency,
                a,
                rated.unwrap_or_default(),
            ));
        }
        // Every check naming this window (including its adjustments' and
        // journal checks) decides its row.
        let desc = subject.clone();
        a.ok = checks.get(first..).unwrap_or(&[]).iter().all(|c| c.ok)
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
    rows
}

fn rounding_by_currency(
    rounding: BTreeMap<String, (Decimal, Decimal)>,
) -> BTreeMap<String, Rounding> {
    rounding
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
        .collect()
}
