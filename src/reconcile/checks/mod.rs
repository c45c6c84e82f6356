//! The checks: [`check`] runs them all over the [`Facts`]; one function per
//! check in `days.rs`, `windows.rs`, `periods.rs`, `invoices.rs` and
//! `topics.rs`.

mod days;
mod invoices;
mod ledger;
mod periods;
mod topics;
mod windows;

use rust_decimal::Decimal;

use super::facts::Facts;
use super::report::{fmt_dec, fmt_signed, Check, Report};

/// Whether `id` (a day or window id) is in the period reconciled.
pub(super) fn in_period(period: Option<&str>, id: &str) -> bool {
    period.is_none_or(|p| id.starts_with(p))
}

/// A record-count check: ok when `actual` = `expected`.
pub(super) fn count_check(
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

/// A money check: ok when `actual` = `expected`.
pub(super) fn amount_check(
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

/// Runs every check over `facts`, restricted to `period` (a prefix of day
/// and window ids).
pub fn check(facts: &Facts, period: Option<&str>) -> Report {
    let mut checks = Vec::new();
    let days = days::check_days(facts, period, &mut checks);
    let (windows, rounding) = windows::check_windows(facts, period, &mut checks);
    periods::check_subscription_periods(facts, period, &mut checks);
    invoices::check_invoices(facts, period, &mut checks);
    topics::check_unreadable(facts, &mut checks);
    let mut notes = ledger::check_ledger(facts, period, &mut checks);
    let held: Vec<&str> = facts
        .invoices
        .values()
        .filter(|i| i.status == crate::contracts::InvoiceStatus::PendingApproval)
        .filter(|i| in_period(period, &i.service_interval.id))
        .map(|i| i.invoice_id.as_str())
        .collect();
    if !held.is_empty() {
        notes.push(format!(
            "{} invoice(s) wait for approval (their lines, rounding and reclass are posted when approved): {}",
            held.len(),
            held.join(", ")
        ));
    }
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
    "ledger_once",
    "ledger_debits",
    "ledger_credits",
    "ledger_lines",
];
