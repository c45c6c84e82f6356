//! `meterline postings`: the committed postings of `finance.postings` as a
//! readable table (what an ERP connector would receive), with a check that
//! every journal entry balances.

use std::collections::BTreeMap;

use rdkafka::message::Message;
use rust_decimal::Decimal;

use crate::config::Config;
use crate::kafka::ClientError;
use crate::stages::post::{Posting, Side};
use crate::topology::names;

/// Reads every committed posting.
pub fn read(config: &Config) -> Result<Vec<Posting>, ClientError> {
    let mut out = Vec::new();
    super::counts::for_each_record(config, &config.topic(names::POSTINGS), |m| {
        if let Some(p) = m.payload().and_then(|v| Posting::from_json_slice(v).ok()) {
            out.push(p);
        }
    })?;
    out.sort_by(|a, b| {
        (
            &a.accounting_date,
            &a.subscription_id,
            a.posting_type.as_str(),
            &a.kind,
            &a.meter,
        )
            .cmp(&(
                &b.accounting_date,
                &b.subscription_id,
                b.posting_type.as_str(),
                &b.kind,
                &b.meter,
            ))
    });
    Ok(out)
}

/// The table, one row per posting, and totals per currency.
pub fn render(postings: &[Posting]) -> String {
    let mut s = format!(
        "{:<10} {:<14} {:<8} {:<15} {:<12} {:<8} {:>14}  {:<24} {}\n",
        "date",
        "type",
        "kind",
        "subscription",
        "meter",
        "currency",
        "amount",
        "debit / credit",
        "balanced"
    );
    let mut debits: BTreeMap<String, Decimal> = BTreeMap::new();
    let mut unbalanced = 0usize;
    for p in postings {
        let (amount, accounts, balanced) = if !p.lines.is_empty() {
            let dr: Decimal = p
                .lines
                .iter()
                .filter(|l| l.side == Side::Debit)
                .map(|l| l.amount)
                .sum();
            let cr: Decimal = p
                .lines
                .iter()
                .filter(|l| l.side == Side::Credit)
                .map(|l| l.amount)
                .sum();
            let accts = p
                .lines
                .iter()
                .map(|l| {
                    format!(
                        "{}{}",
                        if l.side == Side::Debit { "Dr " } else { "Cr " },
                        l.account
                    )
                })
                .collect::<Vec<_>>()
                .join(" / ");
            *debits.entry(p.currency.clone()).or_default() += dr;
            if dr != cr {
                unbalanced += 1;
            }
            (dr, accts, if dr == cr { "yes" } else { "NO" })
        } else if let Some(l) = &p.invoice_line {
            (l.amount, format!("qty {}", l.quantity), "")
        } else if let Some(c) = &p.control_total {
            (c.amount_rounded, format!("{} events", c.event_count), "")
        } else {
            (Decimal::ZERO, String::new(), "")
        };
        s.push_str(&format!(
            "{:<10} {:<14} {:<8} {:<15} {:<12} {:<8} {:>14}  {:<24} {}\n",
            p.accounting_date,
            p.posting_type.as_str(),
            p.kind,
            p.subscription_id,
            p.meter.as_deref().unwrap_or("-"),
            p.currency,
            amount.to_string(),
            accounts,
            balanced
        ));
    }
    s.push_str(&format!("{} posting(s); ", postings.len()));
    for (c, d) in &debits {
        s.push_str(&format!("journal debits {d} {c}; "));
    }
    s.push_str(&format!("{unbalanced} unbalanced journal entries\n"));
    s
}
