//! The ledger checks: every posting of `finance.postings` that ledger-sync
//! has read is in the general ledger exactly once or refused there, and
//! the ledger's debits, credits and line counts per legal entity,
//! currency and account equal those of the postings it holds.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;

use super::{amount_check, count_check, in_period};
use crate::contracts::{Posting, Side};
use crate::reconcile::facts::Facts;
use crate::reconcile::ledger::LedgerFacts;
use crate::reconcile::report::Check;

/// Postings named in a failed check's detail.
const NAMED_KEYS_MAX: usize = 5;

/// Runs the ledger checks when the ledger was read; returns notes.
pub(super) fn check_ledger(
    facts: &Facts,
    period: Option<&str>,
    out: &mut Vec<Check>,
) -> Vec<String> {
    let Some(ledger) = &facts.ledger else {
        return Vec::new();
    };
    let mut notes = Vec::new();
    let (due, in_flight) = due_postings(facts, ledger, period);
    if in_flight > 0 {
        notes.push(format!(
            "ledger: {in_flight} posting(s) not yet read by ledger-sync (in flight): run again when it caught up"
        ));
    }
    let mut missing = Vec::new();
    let mut refused = BTreeMap::<String, u64>::new();
    let mut once = 0u64;
    for key in due.keys() {
        match ledger.postings.get(*key) {
            Some(l) if l.rows == 1 => once += 1,
            Some(l) if l.rows == 0 && l.rejected.is_some() => {
                once += 1;
                *refused
                    .entry(l.rejected.clone().unwrap_or_default())
                    .or_default() += 1;
            }
            _ => missing.push(*key),
        }
    }
    let named: Vec<&str> = missing.iter().take(NAMED_KEYS_MAX).copied().collect();
    out.push(count_check(
        "ledger",
        "ledger_once",
        due.len() as u64,
        once,
        format!(
            "postings read by ledger-sync = postings in the ledger exactly once ({}) + refused there ({}); missing or doubled: {}",
            once - refused.values().sum::<u64>(),
            refused.values().sum::<u64>(),
            if named.is_empty() { "none".into() } else { named.join(", ") }
        ),
    ));
    if !refused.is_empty() {
        notes.push(format!(
            "ledger: postings refused by the ledger (on meterline.dlq.ledger, replayable): {refused:?}"
        ));
    }
    check_balances(ledger, &due, period, out);
    notes
}

/// The distinct postings ledger-sync has read (by offset), in the period
/// (by accounting date), and how many it has not read yet.
fn due_postings<'a>(
    facts: &'a Facts,
    ledger: &LedgerFacts,
    period: Option<&str>,
) -> (BTreeMap<&'a str, &'a Posting>, u64) {
    let mut due = BTreeMap::new();
    let mut in_flight = BTreeSet::new();
    for (p, (partition, offset)) in facts.postings.iter().zip(&facts.posting_offsets) {
        if !in_period(period, &p.accounting_date) {
            continue;
        }
        let next = ledger
            .next_offsets
            .get(&(crate::topology::names::POSTINGS.to_string(), *partition))
            .copied()
            .unwrap_or(0);
        if *offset < next {
            due.insert(p.idempotency_key.as_str(), p);
        } else {
            in_flight.insert(p.idempotency_key.as_str());
        }
    }
    let in_flight = in_flight.iter().filter(|k| !due.contains_key(*k)).count();
    (due, in_flight as u64)
}

type Key = (String, String, String);

fn check_balances(
    ledger: &LedgerFacts,
    due: &BTreeMap<&str, &Posting>,
    period: Option<&str>,
    out: &mut Vec<Check>,
) {
    let mut expected: BTreeMap<Key, (Decimal, Decimal, u64)> = BTreeMap::new();
    for (key, p) in due {
        let refused = ledger
            .postings
            .get(*key)
            .is_some_and(|l| l.rows == 0 && l.rejected.is_some());
        if refused {
            continue;
        }
        for l in &p.lines {
            let e = expected
                .entry((
                    p.legal_entity.clone(),
                    p.currency.clone(),
                    l.account.clone(),
                ))
                .or_default();
            match l.side {
                Side::Debit => e.0 += l.amount,
                Side::Credit => e.1 += l.amount,
            }
            e.2 += 1;
        }
    }
    let mut actual: BTreeMap<Key, (Decimal, Decimal, u64)> = BTreeMap::new();
    for ((entity, currency, account, date), (d, c, n)) in &ledger.balances {
        if !in_period(period, date) {
            continue;
        }
        let a = actual
            .entry((entity.clone(), currency.clone(), account.clone()))
            .or_default();
        a.0 += d;
        a.1 += c;
        a.2 += n;
    }
    let keys: BTreeSet<&Key> = expected.keys().chain(actual.keys()).collect();
    for k in keys {
        let e = expected.get(k).copied().unwrap_or_default();
        let a = actual.get(k).copied().unwrap_or_default();
        let subject = format!("ledger {} account {}", k.0, k.2);
        let what = "the ledger's journal lines = the postings it holds";
        out.push(amount_check(
            &subject,
            "ledger_debits",
            &k.1,
            e.0,
            a.0,
            format!("debits: {what}"),
        ));
        out.push(amount_check(
            &subject,
            "ledger_credits",
            &k.1,
            e.1,
            a.1,
            format!("credits: {what}"),
        ));
        out.push(count_check(
            &subject,
            "ledger_lines",
            e.2,
            a.2,
            format!("lines: {what}"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{JournalLine, EXAMPLE_JOURNAL_ENTRY};
    use crate::reconcile::ledger::LedgerPosting;
    use rust_decimal_macros::dec;

    fn posting(key: &str, amount: Decimal) -> Posting {
        let mut p = Posting::from_json_slice(EXAMPLE_JOURNAL_ENTRY.as_bytes()).unwrap();
        p.idempotency_key = key.into();
        p.lines = JournalLine::pair("1210", "4010", amount).unwrap();
        p
    }

    /// Facts of three postings at offsets 0..3 of partition 0, and a ledger
    /// that has read the first two and holds what `rows` says.
    fn facts(rows: &[(&str, u64, Option<&str>)], ledger_debit: Decimal) -> Facts {
        let mut ledger = LedgerFacts::default();
        for (key, n, rejected) in rows {
            let standing = LedgerPosting {
                rows: *n,
                rejected: rejected.map(String::from),
            };
            ledger.postings.insert(key.to_string(), standing);
        }
        let k = ("ml-us".to_string(), "USD".to_string());
        let date = "2026-01-10".to_string();
        let line = |account: &str, d: Decimal, c: Decimal| {
            let key = (k.0.clone(), k.1.clone(), account.to_string(), date.clone());
            (key, (d, c, 1))
        };
        ledger.balances = [
            line("1210", ledger_debit, Decimal::ZERO),
            line("4010", Decimal::ZERO, ledger_debit),
        ]
        .into();
        ledger
            .next_offsets
            .insert(("finance.postings".into(), 0), 2);
        Facts {
            postings: vec![
                posting("a", dec!(1.50)),
                posting("b", dec!(2.00)),
                posting("c", dec!(9)),
            ],
            posting_offsets: vec![(0, 0), (0, 1), (0, 2)],
            ledger: Some(ledger),
            ..Facts::default()
        }
    }

    fn run(f: &Facts) -> (Vec<Check>, Vec<String>) {
        let mut out = Vec::new();
        let notes = check_ledger(f, None, &mut out);
        (out, notes)
    }

    #[test]
    fn postings_read_are_in_the_ledger_once_or_refused_and_amounts_agree() {
        let f = facts(
            &[("a", 1, None), ("b", 0, Some("closed_period"))],
            dec!(1.50),
        );
        let (checks, notes) = run(&f);
        assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
        assert_eq!(
            checks.iter().filter(|c| c.check == "ledger_debits").count(),
            2
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("1 posting(s) not yet read")),
            "{notes:?}"
        );
        assert!(
            notes.iter().any(|n| n.contains("closed_period")),
            "{notes:?}"
        );
    }

    #[test]
    fn a_missing_or_doubled_posting_and_a_wrong_amount_fail_by_name() {
        let f = facts(&[("a", 2, None)], dec!(1.49));
        let (checks, _) = run(&f);
        let once = checks.iter().find(|c| c.check == "ledger_once").unwrap();
        assert!(!once.ok);
        assert!(
            once.detail.contains('a') && once.detail.contains('b'),
            "{}",
            once.detail
        );
        let debit = checks
            .iter()
            .find(|c| c.check == "ledger_debits" && c.subject.ends_with("1210"))
            .unwrap();
        assert!(!debit.ok, "{debit:?}");
        assert_eq!(debit.difference, "-2.01");
    }

    #[test]
    fn without_a_ledger_there_is_no_ledger_check() {
        let (checks, notes) = run(&Facts::default());
        assert!(checks.is_empty() && notes.is_empty());
    }
}
