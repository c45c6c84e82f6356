//! The invoice checks: each invoice's totals are its lines, what it lists
//! as posted is on `finance.postings` exactly once, credit memos stay within
//! what was invoiced, disputes and service credits equal their commands.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::contracts::{Invoice, InvoiceStatus, Posting, PostingType, Side};

use super::super::facts::Facts;
use super::super::report::{fmt_dec, Check};
use super::{amount_check, count_check, in_period};

/// Line kinds that make an invoice's subtotal.
const CHARGE_LINE_KINDS: [&str; 3] = ["usage", "base_fee", "minimum_true_up"];

/// Runs every invoice check of the invoices whose service interval is in
/// `period`, then the service-credit check per customer and currency.
pub(super) fn check_invoices(facts: &Facts, period: Option<&str>, checks: &mut Vec<Check>) {
    let mut by_key: BTreeMap<&str, u64> = BTreeMap::new();
    let mut by_invoice: BTreeMap<&str, Vec<&Posting>> = BTreeMap::new();
    for p in &facts.postings {
        *by_key.entry(p.idempotency_key.as_str()).or_default() += 1;
        if let Some(id) = &p.invoice_id {
            by_invoice.entry(id.as_str()).or_default().push(p);
        }
    }
    for inv in facts.invoices.values() {
        if !in_period(period, &inv.service_interval.id) {
            continue;
        }
        let subject = format!("invoice {}", inv.invoice_id);
        checks.push(invoice_total(&subject, inv));
        if matches!(inv.status, InvoiceStatus::Posted | InvoiceStatus::Voided) {
            checks.push(invoice_posted_once(&subject, inv, &by_key));
        }
        checks.push(credited_within_total(&subject, inv));
        let own = by_invoice
            .get(inv.invoice_id.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        checks.push(disputes_posted(&subject, inv, own));
    }
    checks.extend(service_credits(facts));
}

fn sum_lines(inv: &Invoice, kinds: &[&str]) -> Decimal {
    inv.lines
        .iter()
        .filter(|l| kinds.contains(&l.kind.as_str()))
        .map(|l| l.amount)
        .sum()
}

/// `invoice_total`: total = charge lines + tax lines + service credit
/// lines (negative), and open = total - credited - disputed.
fn invoice_total(subject: &str, inv: &Invoice) -> Check {
    let lines = sum_lines(inv, &CHARGE_LINE_KINDS)
        + sum_lines(inv, &["tax"])
        + sum_lines(inv, &["service_credit"]);
    let t = &inv.totals;
    let mut ch = amount_check(
        subject,
        "invoice_total",
        &inv.currency,
        lines,
        t.total,
        format!("total {} != its lines {}", fmt_dec(t.total), fmt_dec(lines)),
    );
    let open = t.total - t.credited - t.disputed;
    if ch.ok && open != t.open {
        ch.ok = false;
        ch.detail = format!(
            "open {} != total - credited - disputed = {}",
            fmt_dec(t.open),
            fmt_dec(open)
        );
    }
    ch
}

/// `invoice_posted_once`: every posting the invoice lists is on
/// finance.postings exactly once.
fn invoice_posted_once(subject: &str, inv: &Invoice, by_key: &BTreeMap<&str, u64>) -> Check {
    let once = inv
        .postings
        .iter()
        .filter(|k| by_key.get(k.as_str()) == Some(&1))
        .count() as u64;
    let listed = inv.postings.len() as u64;
    count_check(
        subject,
        "invoice_posted_once",
        listed,
        once,
        format!("{listed} posting(s) listed, {once} of them on finance.postings exactly once"),
    )
}

/// `credited_within_total`: credit memos (and lost disputes) never exceed
/// what was invoiced, and nothing open is negative.
fn credited_within_total(subject: &str, inv: &Invoice) -> Check {
    let t = &inv.totals;
    let ok = t.credited <= t.total.max(Decimal::ZERO) && t.open >= Decimal::ZERO.min(t.total);
    Check {
        ok,
        ..amount_check(
            subject,
            "credited_within_total",
            &inv.currency,
            t.total,
            t.credited,
            format!(
                "credited {} of a total {} (open {})",
                fmt_dec(t.credited),
                fmt_dec(t.total),
                fmt_dec(t.open)
            ),
        )
    }
}

/// Sum of the debit lines of the invoice's journal entries of `kind`.
fn debits_of(postings: &[&Posting], kind: &str) -> Decimal {
    postings
        .iter()
        .filter(|p| p.posting_type == PostingType::JournalEntry && p.kind == kind)
        .flat_map(|p| p.lines.iter())
        .filter(|l| l.side == Side::Debit)
        .map(|l| l.amount)
        .sum()
}

/// `disputes_posted`: the disputed receivable posted (opened - won - lost)
/// equals the invoice's open disputes.
fn disputes_posted(subject: &str, inv: &Invoice, own: &[&Posting]) -> Check {
    let lost: Decimal = inv
        .disputes
        .iter()
        .filter(|d| d.status == "lost")
        .map(|d| d.amount)
        .sum();
    let posted = debits_of(own, "dispute_open") - debits_of(own, "dispute_won") - lost;
    amount_check(
        subject,
        "disputes_posted",
        &inv.currency,
        inv.totals.disputed,
        posted,
        format!(
            "disputed receivable posted {} != open disputes {}",
            fmt_dec(posted),
            fmt_dec(inv.totals.disputed)
        ),
    )
}

/// `service_credits_within_granted`: per customer and currency, the
/// service credits drawn by invoices never exceed the credits granted.
fn service_credits(facts: &Facts) -> Vec<Check> {
    let mut granted: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for g in &facts.grants {
        if let (Some(currency), Some(amount)) = (&g.currency, g.amount) {
            *granted
                .entry((g.customer_id.clone(), currency.clone()))
                .or_default() += amount;
        }
    }
    let mut drawn: BTreeMap<(String, String), Decimal> = BTreeMap::new();
    for p in &facts.postings {
        if p.posting_type == PostingType::JournalEntry && p.kind == "service_credit" {
            let debit: Decimal = p
                .lines
                .iter()
                .filter(|l| l.side == Side::Debit)
                .map(|l| l.amount)
                .sum();
            *drawn
                .entry((p.customer_id.clone(), p.currency.clone()))
                .or_default() += debit;
        }
    }
    for key in drawn.keys() {
        granted.entry(key.clone()).or_default();
    }
    granted
        .into_iter()
        .map(|((customer, currency), g)| {
            let d = drawn
                .get(&(customer.clone(), currency.clone()))
                .copied()
                .unwrap_or_default();
            Check {
                ok: d <= g,
                ..amount_check(
                    &format!("customer {customer}"),
                    "service_credits_within_granted",
                    &currency,
                    g,
                    d,
                    format!(
                        "drawn {} of {} granted (outstanding at most {})",
                        fmt_dec(d),
                        fmt_dec(g),
                        fmt_dec(g - d)
                    ),
                )
            }
        })
        .collect()
}
