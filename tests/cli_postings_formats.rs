//! `meterline postings --format ...` against the real broker: postings
//! built from the contract are produced onto the test's own
//! `finance.postings`, and the ERP import files are checked row by row.
//!
//! * netsuite-csv of one period: one row per journal line of the period's
//!   journal entries (none for an invoice line or another month), debits =
//!   credits per currency to the cent, External IDs = idempotency keys; the
//!   exact file, with a memo that needs quoting and a swapped negative entry.
//! * d365-journal-csv of one legal entity and a date range, to stdout.
//! * json: the selected postings byte for byte as produced.
//! * Bad arguments exit 2; a record that is not a posting makes an export
//!   exit 1 naming it on stderr.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use meterline::contracts::{JournalLine, Posting, PostingType, Side};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;

/// A posting of the contract's example with these fields.
fn posting(kind: &str, sub: &str, date: &str, le: &str, currency: &str) -> Posting {
    let example = meterline::contracts::EXAMPLE_JOURNAL_ENTRY;
    let mut p = Posting::from_json_slice(example.as_bytes()).unwrap();
    p.kind = kind.to_string();
    p.subscription_id = sub.to_string();
    p.accounting_date = date.to_string();
    p.legal_entity = le.to_string();
    p.currency = currency.to_string();
    p.idempotency_key = meterline::money::idempotency_key(&[kind, sub, date, le], 1);
    p
}

fn line(account: &str, side: Side, amount: Decimal) -> JournalLine {
    JournalLine {
        account: account.to_string(),
        side,
        amount,
    }
}

/// accrual (USD), a credit memo of -12.30 EUR (sides swapped) for a
/// subscription id with a comma and a quote, a three-line entry (USD), an
/// invoice line and an accrual of February.
fn postings() -> Vec<Posting> {
    let mut accrual = posting("accrual", "sub-1", "2026-01-10", "ml-us", "USD");
    accrual.lines = JournalLine::pair("1210", "4010", dec!(4.50)).unwrap();
    let mut memo = posting("credit_memo", "sub,\"2\"", "2026-01-20", "ml-de", "EUR");
    memo.lines = JournalLine::pair("1200", "4010", dec!(-12.30)).unwrap();
    memo.meter = None;
    let mut tax = posting("tax", "sub-1", "2026-01-31", "ml-us", "USD");
    tax.lines = vec![
        line("1200", Side::Debit, dec!(10.00)),
        line("4010", Side::Credit, dec!(8.00)),
        line("2200", Side::Credit, dec!(2.00)),
    ];
    let mut invoice_line = posting("usage", "sub-1", "2026-01-31", "ml-us", "USD");
    invoice_line.posting_type = PostingType::InvoiceLine;
    let mut february = posting("accrual", "sub-1", "2026-02-01", "ml-us", "USD");
    february.lines = JournalLine::pair("1210", "4010", dec!(1.00)).unwrap();
    vec![accrual, memo, tax, invoice_line, february]
}

/// RFC 4180 records of `text` (quoted fields, doubled quotes, CRLF).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut rows, mut row, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') | (false, '"') => quoted = !quoted,
            (true, c) => field.push(c),
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => assert_eq!(chars.next(), Some('\n'), "CR without LF"),
            (false, '\n') => panic!("LF without CR"),
            (false, c) => field.push(c),
        }
        if !quoted && c == '\r' {
            row.push(std::mem::take(&mut field));
            rows.push(std::mem::take(&mut row));
        }
    }
    assert!(
        field.is_empty() && row.is_empty(),
        "last record without CRLF"
    );
    rows
}

/// Debits and credits per currency of CSV rows (columns by name).
fn sums(
    rows: &[Vec<String>],
    cur: &str,
    dr: &str,
    cr: &str,
) -> BTreeMap<String, (Decimal, Decimal)> {
    let col = |n: &str| rows[0].iter().position(|h| h == n).unwrap();
    let (c, d, k) = (col(cur), col(dr), col(cr));
    let mut out: BTreeMap<String, (Decimal, Decimal)> = BTreeMap::new();
    for r in &rows[1..] {
        assert!(
            r[d].is_empty() != r[k].is_empty(),
            "one of debit, credit: {r:?}"
        );
        let e = out.entry(r[c].clone()).or_default();
        if !r[d].is_empty() {
            e.0 += r[d].parse::<Decimal>().unwrap();
        } else {
            e.1 += r[k].parse::<Decimal>().unwrap();
        }
    }
    out
}

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn netsuite_of_january(w: &World, ps: &[Posting]) {
    let file = w.dir.path().join("je.csv");
    let o = w.run(&[
        "postings",
        "--format",
        "netsuite-csv",
        "--period",
        "2026-01",
        "--output",
        &path_str(&file),
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(out, "");
    assert!(err.contains("3 journal entries, 7 lines"), "{err}");
    let csv = std::fs::read_to_string(&file).unwrap();
    let (a, m, t) = (
        &ps[0].idempotency_key,
        &ps[1].idempotency_key,
        &ps[2].idempotency_key,
    );
    let memo = "\"credit_memo sub,\"\"2\"\" day 2026-01-10\"";
    let expected = format!(
        "External ID,Date,Subsidiary,Currency,Account,Debit,Credit,Memo,Name,Line Memo\r\n\
         {a},2026-01-10,ml-us,USD,1210,4.50,,accrual sub-1 day 2026-01-10,C-42,meter tokens\r\n\
         {a},2026-01-10,ml-us,USD,4010,,4.50,accrual sub-1 day 2026-01-10,C-42,meter tokens\r\n\
         {m},2026-01-20,ml-de,EUR,4010,12.30,,{memo},C-42,\r\n\
         {m},2026-01-20,ml-de,EUR,1200,,12.30,{memo},C-42,\r\n\
         {t},2026-01-31,ml-us,USD,1200,10.00,,tax sub-1 day 2026-01-10,C-42,meter tokens\r\n\
         {t},2026-01-31,ml-us,USD,4010,,8.00,tax sub-1 day 2026-01-10,C-42,meter tokens\r\n\
         {t},2026-01-31,ml-us,USD,2200,,2.00,tax sub-1 day 2026-01-10,C-42,meter tokens\r\n"
    );
    assert_eq!(csv, expected);
    let rows = parse_csv(&csv);
    let january: Vec<&Posting> = ps[..3].iter().collect();
    let lines: usize = january.iter().map(|p| p.lines.len()).sum();
    assert_eq!(rows.len() - 1, lines);
    for (cur, (dr, cr)) in sums(&rows, "Currency", "Debit", "Credit") {
        assert_eq!(dr, cr, "{cur}");
    }
    let ids: BTreeSet<&str> = rows[1..].iter().map(|r| r[0].as_str()).collect();
    let keys: BTreeSet<&str> = january.iter().map(|p| p.idempotency_key.as_str()).collect();
    assert_eq!(ids, keys);
}

fn d365_of_one_entity(w: &World, ps: &[Posting]) {
    let o = w.run(&[
        "postings",
        "--format",
        "d365-journal-csv",
        "--legal-entity",
        "ml-us",
        "--from",
        "2026-01-10",
        "--to",
        "2026-02-01",
    ]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let rows = parse_csv(&out);
    assert_eq!(
        rows[0][..4],
        ["JOURNALBATCHNUMBER", "LINENUMBER", "VOUCHER", "TRANSDATE"]
    );
    // accrual (2), tax (3), February (2); not the EUR memo of ml-de.
    assert_eq!(rows.len() - 1, 7, "{out}");
    let numbers: Vec<&str> = rows[1..].iter().map(|r| r[1].as_str()).collect();
    assert_eq!(numbers, ["1", "2", "3", "4", "5", "6", "7"]);
    let vouchers: Vec<&str> = rows[1..].iter().map(|r| r[2].as_str()).collect();
    assert_eq!(
        vouchers,
        ["ML000001", "ML000001", "ML000002", "ML000002", "ML000002", "ML000003", "ML000003"]
    );
    let docs: BTreeSet<&str> = rows[1..].iter().map(|r| r[10].as_str()).collect();
    let keys: BTreeSet<&str> = [&ps[0], &ps[2], &ps[4]]
        .iter()
        .map(|p| p.idempotency_key.as_str())
        .collect();
    assert_eq!(docs, keys);
    let by_currency = sums(&rows, "CURRENCYCODE", "DEBITAMOUNT", "CREDITAMOUNT");
    assert_eq!(by_currency["USD"], (dec!(15.50), dec!(15.50)));
    assert!(rows[1..]
        .iter()
        .all(|r| r[4] == "Ledger" && r[11] == "ml-us"));
}

#[test]
fn postings_export_to_erp_files() {
    let w = World::new("pfmt", "");
    w.apply();
    let ps = postings();
    let values: Vec<Vec<u8>> = ps.iter().map(|p| p.to_json_bytes().unwrap()).collect();
    let records: Vec<Record> = values
        .iter()
        .map(|v| (Some(b"k".to_vec()), Some(v.clone()), vec![]))
        .collect();
    produce(&w.topic("finance.postings"), &records);

    netsuite_of_january(&w, &ps);
    d365_of_one_entity(&w, &ps);

    let o = w.run(&["postings", "--format", "json", "--period", "2026-01"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let got: BTreeSet<&[u8]> = out.lines().map(str::as_bytes).collect();
    let want: BTreeSet<&[u8]> = values[..4].iter().map(Vec::as_slice).collect();
    assert_eq!(got, want);

    let o = w.run(&["postings"]);
    let (out, _) = text(&o);
    assert!(o.status.success());
    assert!(
        out.contains(
            "5 posting(s); journal debits 12.30 EUR; journal debits 15.50 USD; 0 unbalanced"
        ),
        "{out}"
    );

    for bad in [
        &["postings", "--format", "xml"][..],
        &["postings", "--period", "2026-13"],
        &["postings", "--from", "2026-02-01", "--to", "2026-01-01"],
        &["postings", "--period", "2026-01", "--from", "2026-01-02"],
    ] {
        let o = w.run(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o).1);
    }

    produce(
        &w.topic("finance.postings"),
        &[(None, Some(b"not a posting".to_vec()), vec![])],
    );
    let o = w.run(&[
        "postings",
        "--format",
        "netsuite-csv",
        "--period",
        "2026-01",
    ]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(parse_csv(&out).len() - 1, 7);
    assert!(
        err.contains("WARNING: 1 record(s) of finance.postings are not postings and were left out: partition "),
        "{err}"
    );
}
