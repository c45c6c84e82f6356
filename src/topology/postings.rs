//! `meterline postings`: the committed postings of `finance.postings` as a
//! readable table (what an ERP connector would receive), with a check that
//! every journal entry balances. A record that is not a posting is never
//! skipped silently: it is counted and the first ones are named
//! ([`Unreadable`]); reconcile fails on them.

use std::collections::BTreeMap;

use rdkafka::message::Message;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::config::Config;
use crate::contracts::{segment_key_group, segment_label, Posting, Side};
use crate::kafka::ClientError;
use crate::topology::names;

/// Records a topic should not hold (they do not parse as its contract) named
/// one by one in a report; the rest are only counted.
pub const UNREADABLE_NAMED_MAX: usize = 10;
/// Longest parse error kept for one unreadable record.
const UNREADABLE_ERROR_MAX_BYTES: usize = 200;

/// One record that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnreadableRecord {
    pub partition: i32,
    pub offset: i64,
    /// Why it does not parse (a null value, or the JSON error).
    pub error: String,
}

/// The records of a topic that do not parse as its contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub count: u64,
    /// The first [`UNREADABLE_NAMED_MAX`] of them, in reading order.
    pub first: Vec<UnreadableRecord>,
}

impl Unreadable {
    /// Counts one record that does not parse.
    pub fn add(&mut self, partition: i32, offset: i64, error: &str) {
        self.count += 1;
        if self.first.len() < UNREADABLE_NAMED_MAX {
            let mut error = error.to_string();
            if error.len() > UNREADABLE_ERROR_MAX_BYTES {
                let mut cut = UNREADABLE_ERROR_MAX_BYTES;
                while !error.is_char_boundary(cut) {
                    cut -= 1;
                }
                error.truncate(cut);
            }
            self.first.push(UnreadableRecord {
                partition,
                offset,
                error,
            });
        }
    }

    /// `N record(s) of TOPIC ...: p0@12 (error), ...`; empty when there are none.
    pub fn describe(&self, topic: &str, contract: &str) -> String {
        if self.count == 0 {
            return String::new();
        }
        let named: Vec<String> = self
            .first
            .iter()
            .map(|r| {
                format!(
                    "partition {} offset {} ({})",
                    r.partition, r.offset, r.error
                )
            })
            .collect();
        format!(
            "{} record(s) of {topic} are not {contract} and were left out: {}{}",
            self.count,
            named.join("; "),
            if self.count > self.first.len() as u64 {
                "; ..."
            } else {
                ""
            }
        )
    }
}

/// Parses a record value with `parse`, counting it in `unreadable` when it
/// has no value or does not parse.
pub fn parse_or_count<T, E: std::fmt::Display>(
    m: &impl Message,
    unreadable: &mut Unreadable,
    parse: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Option<T> {
    let parsed = match m.payload() {
        None => Err("no value (null)".to_string()),
        Some(v) => parse(v).map_err(|e| e.to_string()),
    };
    match parsed {
        Ok(t) => Some(t),
        Err(e) => {
            unreadable.add(m.partition(), m.offset(), &e);
            None
        }
    }
}

/// What `finance.postings` holds: the postings and the records that are not.
#[derive(Debug, Default)]
pub struct PostingsTopic {
    pub postings: Vec<Posting>,
    pub unreadable: Unreadable,
}

/// One posting as read, with the record's value exactly as on the topic.
#[derive(Debug, Clone)]
pub struct PostingRecord {
    pub posting: Posting,
    pub value: Vec<u8>,
}

/// Every committed posting with its record value (in the table's order),
/// and the records that are not postings.
pub fn read_records(config: &Config) -> Result<(Vec<PostingRecord>, Unreadable), ClientError> {
    let mut out = Vec::new();
    let mut unreadable = Unreadable::default();
    super::counts::for_each_record(config, &config.topic(names::POSTINGS), |m| {
        if let Some(p) = parse_or_count(m, &mut unreadable, Posting::from_json_slice) {
            out.push(PostingRecord {
                posting: p,
                value: m.payload().unwrap_or_default().to_vec(),
            });
        }
    })?;
    out.sort_by(|a, b| table_order(&a.posting, &b.posting));
    Ok((out, unreadable))
}

/// The table's order: date, subscription, type, kind, meter.
fn table_order(a: &Posting, b: &Posting) -> std::cmp::Ordering {
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
}

/// Reads every committed posting, counting records that are not postings.
pub fn read(config: &Config) -> Result<PostingsTopic, ClientError> {
    let (records, unreadable) = read_records(config)?;
    Ok(PostingsTopic {
        postings: records.into_iter().map(|r| r.posting).collect(),
        unreadable,
    })
}

/// The meter of a posting and its segment's group (`api_calls region=eu`;
/// None for postings of no meter), so two groups' postings of one meter
/// are told apart: the table's meter column, the ERP files' line memo.
pub fn meter_label(p: &Posting) -> Option<String> {
    let meter = p.meter.as_deref()?;
    let group = p.segment_key.as_deref().and_then(segment_key_group);
    Some(segment_label(meter, &group.unwrap_or_default()))
}

/// The table, one row per posting, totals per currency and, when there are
/// any, the records that are not postings.
pub fn render(topic: &PostingsTopic) -> String {
    let postings = &topic.postings;
    let mut s = format!(
        "{:<10} {:<14} {:<8} {:<15} {:<22} {:<8} {:>14}  {:<24} {}\n",
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
            let (dr, cr) = p.totals();
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
            "{:<10} {:<14} {:<8} {:<15} {:<22} {:<8} {:>14}  {:<24} {}\n",
            p.accounting_date,
            p.posting_type.as_str(),
            p.kind,
            p.subscription_id,
            meter_label(p).as_deref().unwrap_or("-"),
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
    s.push_str(&format!("{unbalanced} unbalanced journal entries; "));
    s.push_str(&format!(
        "{} record(s) that are not postings\n",
        topic.unreadable.count
    ));
    if topic.unreadable.count > 0 {
        s.push_str(&format!(
            "WARNING: {}\n",
            topic.unreadable.describe(names::POSTINGS, "postings")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_records_are_counted_and_the_first_named() {
        let mut u = Unreadable::default();
        for i in 0..(UNREADABLE_NAMED_MAX as i64 + 2) {
            u.add(1, i, &"x".repeat(UNREADABLE_ERROR_MAX_BYTES + 5));
        }
        assert_eq!(u.count, UNREADABLE_NAMED_MAX as u64 + 2);
        assert_eq!(u.first.len(), UNREADABLE_NAMED_MAX);
        assert_eq!(u.first[3].offset, 3);
        assert_eq!(u.first[0].error.len(), UNREADABLE_ERROR_MAX_BYTES);
        let text = u.describe("finance.postings", "postings");
        assert!(
            text.starts_with("12 record(s) of finance.postings are not postings"),
            "{text}"
        );
        assert!(text.contains("partition 1 offset 0 (x"), "{text}");
        assert!(text.ends_with("; ..."), "{text}");
        assert_eq!(Unreadable::default().describe("t", "c"), "");
    }

    fn journal(credit: &str) -> Posting {
        let example = crate::contracts::EXAMPLE_JOURNAL_ENTRY;
        let mut p = Posting::from_json_slice(example.as_bytes()).unwrap();
        p.idempotency_key = "5d41".into();
        let line = |account: &str, side: &str, amount: &str| -> crate::contracts::JournalLine {
            serde_json::from_value(
                serde_json::json!({"account": account, "side": side, "amount": amount}),
            )
            .unwrap()
        };
        p.lines = vec![
            line("1210", "debit", "4.50"),
            line("4010", "credit", credit),
        ];
        p
    }

    #[test]
    fn journal_rows_show_their_debits_and_whether_they_balance() {
        let topic = PostingsTopic {
            postings: vec![journal("4.50"), journal("4.49")],
            unreadable: Unreadable::default(),
        };
        let text = render(&topic);
        let rows: Vec<&str> = text.lines().skip(1).take(2).collect();
        assert!(rows[0].contains(" 4.50  Dr 1210 / Cr 4010 "), "{text}");
        assert!(rows[0].ends_with(" yes"), "{text}");
        assert!(rows[1].contains(" 4.50  Dr 1210 / Cr 4010 "), "{text}");
        assert!(rows[1].ends_with(" NO"), "{text}");
        assert!(
            text.contains("2 posting(s); journal debits 9.00 USD; 1 unbalanced journal entries; "),
            "{text}"
        );
    }

    #[test]
    fn the_meter_column_names_the_segments_group() {
        let mut grouped = journal("4.50");
        grouped.meter = Some("api_calls".into());
        grouped.segment_key = Some(r#"["s-1","api_calls","2026-01-01",1,{"region":"eu"}]"#.into());
        let mut no_meter = journal("4.50");
        no_meter.meter = None;
        no_meter.segment_key = None;
        let topic = PostingsTopic {
            postings: vec![grouped, no_meter],
            unreadable: Unreadable::default(),
        };
        let text = render(&topic);
        let rows: Vec<&str> = text.lines().skip(1).take(2).collect();
        assert!(rows[0].contains(" api_calls region=eu "), "{text}");
        assert!(rows[1].contains(" -  "), "{text}");
    }

    #[test]
    fn the_table_reports_records_that_are_not_postings() {
        let mut topic = PostingsTopic::default();
        assert!(render(&topic).ends_with("0 record(s) that are not postings\n"));
        topic.unreadable.add(2, 7, "missing field `kind`");
        let text = render(&topic);
        assert!(
            text.contains(
                "0 posting(s); 0 unbalanced journal entries; 1 record(s) that are not postings\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "WARNING: 1 record(s) of finance.postings are not postings and were left out: \
                 partition 2 offset 7 (missing field `kind`)"
            ),
            "{text}"
        );
    }
}
