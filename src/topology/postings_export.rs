//! `meterline postings --format ...`: the committed postings of
//! `finance.postings` as ERP journal-import files, and the selection
//! (`--period`, `--from`/`--to`, `--legal-entity`) every format shares.
//!
//! Only `journal_entry` postings are journal entries: `invoice_line` and
//! `control_total` postings become no rows of a journal file (`json` prints
//! every posting of the selection). Rows come in a deterministic order: by
//! accounting date, legal entity and idempotency key, then the entry's line
//! order. Amounts are the contract's decimal strings at the currency's
//! scale, never through a float. Every entry is checked to balance before
//! anything is written; one that does not is an error naming it.
//!
//! Column sets (what the ERPs document; assumptions are in README.md,
//! "ERP import files"):
//! * NetSuite CSV import, Journal Entry: header fields (External ID, Date,
//!   Subsidiary, Currency, Memo) from "Journal Entry and Intercompany Journal
//!   Entry Header Fields Table"
//!   <https://docs.oracle.com/en/cloud/saas/netsuite/ns-online-help/section_1534492479.html>;
//!   line fields (Account, Debit, Credit, Memo, Name) from "... Line-Level
//!   Fields Table" (each entry at least two lines and balanced; Debit and
//!   Credit at most 10 digits before and 2 after the decimal point)
//!   <https://docs.oracle.com/en/cloud/saas/netsuite/ns-online-help/section_1534492737.html>.
//!   Rows of one entry share the External ID.
//! * Dynamics 365 Finance, data entity "General journal" (AOT
//!   LedgerJournalEntity, lines as in LedgerJournalLineEntity): field names
//!   JOURNALBATCHNUMBER, LINENUMBER, ACCOUNTTYPE, ACCOUNTDISPLAYVALUE,
//!   TRANSDATE, TEXT, VOUCHER, CURRENCYCODE, DEBITAMOUNT, CREDITAMOUNT from
//!   <https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/data-entities/entity-general-journal>,
//!   <https://learn.microsoft.com/en-us/dynamics365/fin-ops-core/dev-itpro/data-entities/entity-general-journal-ledgerjournalline>
//!   and the Common Data Model's LedgerJournalEntity attributes
//!   <https://learn.microsoft.com/en-us/common-data-model/schema/core/operationscommon/entities/finance/generalledger/ledgerjournalentity>.

use std::borrow::Cow;
use std::collections::BTreeMap;

use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use super::postings::{meter_label, PostingRecord};
use crate::contracts::{JournalLine, Posting, PostingType, Side};

/// Length in bytes of an ISO date, `YYYY-MM-DD`.
pub const ISO_DATE_LEN: usize = 10;
/// Length in bytes of a period, `YYYY-MM`.
pub const PERIOD_LEN: usize = 7;
/// NetSuite's columns, in file order.
pub const NETSUITE_COLUMNS: [&str; 10] = [
    "External ID",
    "Date",
    "Subsidiary",
    "Currency",
    "Account",
    "Debit",
    "Credit",
    "Memo",
    "Name",
    "Line Memo",
];
/// Dynamics 365's columns (General journal entity fields), in file order.
pub const D365_COLUMNS: [&str; 12] = [
    "JOURNALBATCHNUMBER",
    "LINENUMBER",
    "VOUCHER",
    "TRANSDATE",
    "ACCOUNTTYPE",
    "ACCOUNTDISPLAYVALUE",
    "DEBITAMOUNT",
    "CREDITAMOUNT",
    "CURRENCYCODE",
    "TEXT",
    "DOCUMENT",
    "DATAAREAID",
];
/// D365 ACCOUNTTYPE of every line: the postings name ledger accounts.
pub const D365_ACCOUNT_TYPE: &str = "Ledger";
/// Prefix of a file's JOURNALBATCHNUMBER (then a digest of its entries).
pub const D365_BATCH_PREFIX: &str = "ML-";
/// Hex characters of the SHA-256 of the file's idempotency keys in the
/// JOURNALBATCHNUMBER (12 hex = 48 bits).
pub const D365_BATCH_DIGEST_HEX_CHARS: usize = 12;
/// Prefix of a VOUCHER placeholder (then the entry's number in the file).
pub const D365_VOUCHER_PREFIX: &str = "ML";
/// Digits of the entry number in a VOUCHER placeholder (zero-padded).
pub const D365_VOUCHER_DIGITS: usize = 6;

/// What `meterline postings` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The readable table (the default).
    Table,
    /// Every posting of the selection, one JSON object per line, as on the topic.
    Json,
    /// NetSuite CSV import, journal entries.
    NetsuiteCsv,
    /// Dynamics 365 Finance general journal (data entity) import.
    D365JournalCsv,
}

/// Why an export file cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    #[error("journal entry {key} does not balance: debits {debits}, credits {credits} {currency}")]
    Unbalanced {
        key: String,
        debits: Decimal,
        credits: Decimal,
        currency: String,
    },
    #[error("journal entry {key} has no lines")]
    NoLines { key: String },
    #[error("journal entry {key}: account {account} amount {amount} is not a positive amount at the scale of {currency}")]
    BadAmount {
        key: String,
        account: String,
        amount: Decimal,
        currency: String,
    },
    #[error("journal entry {key}: currency {currency}: {error}")]
    Currency {
        key: String,
        currency: String,
        error: String,
    },
    #[error("posting {key}: accounting_date {date:?} is not YYYY-MM-DD")]
    BadDate { key: String, date: String },
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<NaiveDate, String> {
    if s.len() != ISO_DATE_LEN {
        return Err(format!("{s:?} is not a date YYYY-MM-DD"));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map_err(|e| format!("{s:?} is not a date YYYY-MM-DD: {e}"))
}

/// A month, `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub first: NaiveDate,
    pub last: NaiveDate,
}

/// Parses `YYYY-MM` into its first and last day.
pub fn parse_period(s: &str) -> Result<Period, String> {
    let bad = || format!("{s:?} is not a period YYYY-MM");
    if s.len() != PERIOD_LEN {
        return Err(bad());
    }
    let first = parse_date(&format!("{s}-01")).map_err(|_| bad())?;
    let next = if first.month() == 12 {
        NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
    };
    let last = next.and_then(|d| d.pred_opt()).ok_or_else(bad)?;
    Ok(Period { first, last })
}

/// Which postings: accounting dates from..=to (each bound optional) and
/// one legal entity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub legal_entity: Option<String>,
}

impl Selection {
    /// Whether `p` is selected; a date filter needs a readable date.
    pub fn contains(&self, p: &Posting) -> Result<bool, ExportError> {
        if let Some(le) = &self.legal_entity {
            if &p.legal_entity != le {
                return Ok(false);
            }
        }
        if self.from.is_none() && self.to.is_none() {
            return Ok(true);
        }
        let date = parse_date(&p.accounting_date).map_err(|_| ExportError::BadDate {
            key: p.idempotency_key.clone(),
            date: p.accounting_date.clone(),
        })?;
        Ok(self.from.is_none_or(|f| date >= f) && self.to.is_none_or(|t| date <= t))
    }

    /// The selected records, in the export order: accounting date, legal
    /// entity, idempotency key.
    pub fn apply<'a>(
        &self,
        records: &'a [PostingRecord],
    ) -> Result<Vec<&'a PostingRecord>, ExportError> {
        let mut out = Vec::new();
        for r in records {
            if self.contains(&r.posting)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| export_key(&a.posting).cmp(&export_key(&b.posting)));
        Ok(out)
    }
}

fn export_key(p: &Posting) -> (&str, &str, &str) {
    (&p.accounting_date, &p.legal_entity, &p.idempotency_key)
}

/// One balanced journal entry with its lines' amounts as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    pub posting: &'a Posting,
    pub lines: Vec<(&'a JournalLine, String)>,
}

/// What a journal file holds, for the summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub entries: usize,
    pub lines: usize,
    /// invoice_line and control_total postings of the selection (no rows).
    pub not_journal_entries: usize,
    /// Debits (= credits) per currency.
    pub debits: BTreeMap<String, Decimal>,
}

impl Summary {
    pub fn describe(&self) -> String {
        let mut s = format!("{} journal entries, {} lines", self.entries, self.lines);
        for (c, d) in &self.debits {
            s.push_str(&format!("; debits = credits {d} {c}"));
        }
        s.push_str(&format!(
            "; {} invoice_line/control_total posting(s) are not journal entries (no rows)",
            self.not_journal_entries
        ));
        s
    }
}

/// The journal entries of `postings` (in their order), each checked.
pub fn journal_entries<'a>(
    postings: &[&'a Posting],
) -> Result<(Vec<Entry<'a>>, Summary), ExportError> {
    let mut entries = Vec::new();
    let mut summary = Summary::default();
    for p in postings {
        if p.posting_type != PostingType::JournalEntry {
            summary.not_journal_entries += 1;
            continue;
        }
        let entry = entry(p)?;
        summary.entries += 1;
        summary.lines += entry.lines.len();
        *summary.debits.entry(p.currency.clone()).or_default() += p.totals().0;
        entries.push(entry);
    }
    Ok((entries, summary))
}

fn entry(p: &Posting) -> Result<Entry<'_>, ExportError> {
    let key = || p.idempotency_key.clone();
    if p.lines.is_empty() {
        return Err(ExportError::NoLines { key: key() });
    }
    let (debits, credits) = p.totals();
    if debits != credits {
        return Err(ExportError::Unbalanced {
            key: key(),
            debits,
            credits,
            currency: p.currency.clone(),
        });
    }
    let exponent =
        crate::money::minor_unit_exponent(&p.currency).map_err(|e| ExportError::Currency {
            key: key(),
            currency: p.currency.clone(),
            error: e.to_string(),
        })?;
    let lines = p
        .lines
        .iter()
        .map(|l| {
            Ok((
                l,
                amount_text(l.amount, exponent).ok_or_else(|| bad_amount(p, l))?,
            ))
        })
        .collect::<Result<_, ExportError>>()?;
    Ok(Entry { posting: p, lines })
}

fn bad_amount(p: &Posting, l: &JournalLine) -> ExportError {
    ExportError::BadAmount {
        key: p.idempotency_key.clone(),
        account: l.account.clone(),
        amount: l.amount,
        currency: p.currency.clone(),
    }
}

/// `amount` with exactly `exponent` decimals; None when it is not positive
/// or has more decimals than that (which would need rounding).
fn amount_text(amount: Decimal, exponent: u32) -> Option<String> {
    if amount <= Decimal::ZERO {
        return None;
    }
    let mut a = amount.normalize();
    if a.scale() > exponent {
        return None;
    }
    a.rescale(exponent);
    (a.scale() == exponent).then(|| a.to_string())
}

/// One CSV field (RFC 4180): quoted, with quotes doubled, when it holds a
/// comma, a quote, CR or LF.
pub fn csv_field(s: &str) -> Cow<'_, str> {
    if s.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(s)
    }
}

/// Appends one CSV record ending with CRLF (RFC 4180).
pub fn csv_record(out: &mut String, fields: &[&str]) {
    let fields: Vec<Cow<'_, str>> = fields.iter().map(|f| csv_field(f)).collect();
    out.push_str(&fields.join(","));
    out.push_str("\r\n");
}

/// `accrual sub-1 day 2026-01-10` (adjustments: `... adjusts 2026-01-09`).
pub fn memo(p: &Posting) -> String {
    let mut s = format!(
        "{} {} {} {}",
        p.kind,
        p.subscription_id,
        p.window_kind.as_str(),
        p.window.id
    );
    if let Some(a) = &p.adjusts {
        s.push_str(&format!(" adjusts {}", a.id));
    }
    s
}

/// The line memo: the meter (with its group), the invoice, or both.
fn line_memo(p: &Posting) -> String {
    let mut parts = Vec::new();
    if let Some(m) = meter_label(p) {
        parts.push(format!("meter {m}"));
    }
    if let Some(i) = &p.invoice_id {
        parts.push(format!("invoice {i}"));
    }
    parts.join(" ")
}

/// The (debit, credit) columns of a line: one filled, the other empty.
fn sides<'a>(line: &JournalLine, amount: &'a str) -> (&'a str, &'a str) {
    match line.side {
        Side::Debit => (amount, ""),
        Side::Credit => ("", amount),
    }
}

/// NetSuite's journal-entry CSV: one row per journal line.
pub fn netsuite_csv(entries: &[Entry<'_>]) -> String {
    let mut out = String::new();
    csv_record(&mut out, &NETSUITE_COLUMNS);
    for e in entries {
        let p = e.posting;
        let (memo, line_memo) = (memo(p), line_memo(p));
        for (line, amount) in &e.lines {
            let (debit, credit) = sides(line, amount);
            csv_record(
                &mut out,
                &[
                    &p.idempotency_key,
                    &p.accounting_date,
                    &p.legal_entity,
                    &p.currency,
                    &line.account,
                    debit,
                    credit,
                    &memo,
                    &p.erp_customer_id,
                    &line_memo,
                ],
            );
        }
    }
    out
}

/// The file's JOURNALBATCHNUMBER: a digest of its entries' keys, so the
/// same selection gives the same batch.
pub fn d365_batch(entries: &[Entry<'_>]) -> String {
    let mut h = Sha256::new();
    for e in entries {
        h.update(e.posting.idempotency_key.as_bytes());
        h.update(b"\n");
    }
    let digest = hex::encode(h.finalize());
    format!(
        "{D365_BATCH_PREFIX}{}",
        &digest[..D365_BATCH_DIGEST_HEX_CHARS]
    )
}

/// Dynamics 365's general journal CSV: one row per journal line, numbered
/// from 1 in the file; the lines of an entry share a VOUCHER.
pub fn d365_journal_csv(entries: &[Entry<'_>]) -> String {
    let mut out = String::new();
    csv_record(&mut out, &D365_COLUMNS);
    let batch = d365_batch(entries);
    let mut line_number = 0u64;
    for (n, e) in entries.iter().enumerate() {
        let p = e.posting;
        let voucher = format!(
            "{D365_VOUCHER_PREFIX}{:0width$}",
            n + 1,
            width = D365_VOUCHER_DIGITS
        );
        let text = memo(p);
        for (line, amount) in &e.lines {
            line_number += 1;
            let (debit, credit) = sides(line, amount);
            csv_record(
                &mut out,
                &[
                    &batch,
                    &line_number.to_string(),
                    &voucher,
                    &p.accounting_date,
                    D365_ACCOUNT_TYPE,
                    &line.account,
                    debit,
                    credit,
                    &p.currency,
                    &text,
                    &p.idempotency_key,
                    &p.legal_entity,
                ],
            );
        }
    }
    out
}

/// Every selected posting, one JSON object per line, byte for byte as on
/// the topic except that CR and LF (only ever whitespace between JSON
/// tokens) become spaces and surrounding whitespace is trimmed.
pub fn json_lines(records: &[&PostingRecord]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        let v = r.value.trim_ascii();
        out.extend(
            v.iter()
                .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }),
        );
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    fn posting(
        key: &str,
        date: &str,
        le: &str,
        currency: &str,
        lines: Vec<JournalLine>,
    ) -> Posting {
        let mut p =
            Posting::from_json_slice(crate::contracts::EXAMPLE_JOURNAL_ENTRY.as_bytes()).unwrap();
        p.idempotency_key = key.to_string();
        p.accounting_date = date.to_string();
        p.legal_entity = le.to_string();
        p.currency = currency.to_string();
        p.lines = lines;
        p
    }

    fn record(p: Posting) -> PostingRecord {
        PostingRecord {
            value: p.to_json_bytes().unwrap(),
            posting: p,
        }
    }

    /// An accrual in USD whose subscription id needs quoting, and (given
    /// first, dated earlier) a credit memo of -3 JPY in another entity whose
    /// sides `JournalLine::pair` swapped, plus an invoice line (no rows).
    fn example() -> Vec<PostingRecord> {
        let mut accrual = posting(
            "k-usd",
            "2026-01-10",
            "ml-us",
            "USD",
            JournalLine::pair("1210", "4010", dec!(4.5)).unwrap(),
        );
        accrual.subscription_id = "sub-1, \"gold\"".to_string();
        let mut memo = posting(
            "k-jpy",
            "2026-01-09",
            "ml-jp",
            "JPY",
            JournalLine::pair("1200", "4010", dec!(-3)).unwrap(),
        );
        memo.kind = "credit_memo".to_string();
        memo.meter = None;
        memo.invoice_id = Some("sub-9@2026-01-01".to_string());
        let mut line = posting("k-line", "2026-01-10", "ml-us", "USD", vec![]);
        line.posting_type = PostingType::InvoiceLine;
        vec![record(accrual), record(line), record(memo)]
    }

    fn entries_of(records: &[PostingRecord]) -> (String, String, Summary) {
        let selected = Selection::default().apply(records).unwrap();
        let postings: Vec<&Posting> = selected.iter().map(|r| &r.posting).collect();
        let (entries, summary) = journal_entries(&postings).unwrap();
        (netsuite_csv(&entries), d365_journal_csv(&entries), summary)
    }

    #[test]
    fn the_line_memo_names_the_meters_group() {
        let mut p = posting("k", "2026-01-10", "ml-us", "USD", vec![]);
        p.segment_key = Some(r#"["sub-1","tokens","2026-01-01",2,{"model":"gpt-4o"}]"#.into());
        assert_eq!(line_memo(&p), "meter tokens model=gpt-4o");
        p.invoice_id = Some("sub-1@2026-01-01".into());
        assert_eq!(
            line_memo(&p),
            "meter tokens model=gpt-4o invoice sub-1@2026-01-01"
        );
    }

    #[test]
    fn netsuite_rows_one_per_line_quoted_and_ordered() {
        let (csv, _, summary) = entries_of(&example());
        assert_eq!(
            csv,
            "External ID,Date,Subsidiary,Currency,Account,Debit,Credit,Memo,Name,Line Memo\r\n\
             k-jpy,2026-01-09,ml-jp,JPY,4010,3,,credit_memo sub-1 day 2026-01-10,C-42,invoice sub-9@2026-01-01\r\n\
             k-jpy,2026-01-09,ml-jp,JPY,1200,,3,credit_memo sub-1 day 2026-01-10,C-42,invoice sub-9@2026-01-01\r\n\
             k-usd,2026-01-10,ml-us,USD,1210,4.50,,\"accrual sub-1, \"\"gold\"\" day 2026-01-10\",C-42,meter tokens\r\n\
             k-usd,2026-01-10,ml-us,USD,4010,,4.50,\"accrual sub-1, \"\"gold\"\" day 2026-01-10\",C-42,meter tokens\r\n"
        );
        assert_eq!(summary.entries, 2);
        assert_eq!(summary.lines, 4);
        assert_eq!(summary.not_journal_entries, 1);
        assert_eq!(summary.debits["USD"], dec!(4.50));
        assert_eq!(summary.debits["JPY"], dec!(3));
    }

    #[test]
    fn d365_rows_number_lines_and_share_a_voucher_per_entry() {
        let records = example();
        let (_, csv, _) = entries_of(&records);
        let batch = {
            let selected = Selection::default().apply(&records).unwrap();
            let postings: Vec<&Posting> = selected.iter().map(|r| &r.posting).collect();
            d365_batch(&journal_entries(&postings).unwrap().0)
        };
        assert!(batch.starts_with("ML-") && batch.len() == 15, "{batch}");
        let expected = "JOURNALBATCHNUMBER,LINENUMBER,VOUCHER,TRANSDATE,ACCOUNTTYPE,ACCOUNTDISPLAYVALUE,\
             DEBITAMOUNT,CREDITAMOUNT,CURRENCYCODE,TEXT,DOCUMENT,DATAAREAID\r\n\
             B,1,ML000001,2026-01-09,Ledger,4010,3,,JPY,credit_memo sub-1 day 2026-01-10,k-jpy,ml-jp\r\n\
             B,2,ML000001,2026-01-09,Ledger,1200,,3,JPY,credit_memo sub-1 day 2026-01-10,k-jpy,ml-jp\r\n\
             B,3,ML000002,2026-01-10,Ledger,1210,4.50,,USD,\"accrual sub-1, \"\"gold\"\" day 2026-01-10\",k-usd,ml-us\r\n\
             B,4,ML000002,2026-01-10,Ledger,4010,,4.50,USD,\"accrual sub-1, \"\"gold\"\" day 2026-01-10\",k-usd,ml-us\r\n"
            .replace("B,", &format!("{batch},"));
        assert_eq!(csv, expected);
    }

    #[test]
    fn an_unbalanced_entry_is_an_error_naming_it() {
        let mut lines = JournalLine::pair("1210", "4010", dec!(4.50)).unwrap();
        lines[1].amount = dec!(4.49);
        let p = posting("k-bad", "2026-01-10", "ml-us", "USD", lines);
        let err = journal_entries(&[&p]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "journal entry k-bad does not balance: debits 4.50, credits 4.49 USD"
        );
    }

    #[test]
    fn amounts_keep_the_currency_scale_or_are_refused() {
        assert_eq!(amount_text(dec!(4.5), 2).as_deref(), Some("4.50"));
        assert_eq!(amount_text(dec!(4.500), 2).as_deref(), Some("4.50"));
        assert_eq!(amount_text(dec!(1.234), 3).as_deref(), Some("1.234"));
        assert_eq!(amount_text(dec!(7), 0).as_deref(), Some("7"));
        assert_eq!(amount_text(dec!(4.505), 2), None);
        assert_eq!(amount_text(dec!(0), 2), None);
        assert_eq!(amount_text(dec!(-1), 2), None);
        let p = posting("k-x", "2026-01-10", "ml-us", "USD", vec![]);
        assert_eq!(
            journal_entries(&[&p]).unwrap_err(),
            ExportError::NoLines { key: "k-x".into() }
        );
    }

    #[test]
    fn csv_fields_are_quoted_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
    }

    #[test]
    fn periods_and_dates_parse_strictly() {
        let p = parse_period("2026-02").unwrap();
        assert_eq!(p.first.to_string(), "2026-02-01");
        assert_eq!(p.last.to_string(), "2026-02-28");
        assert_eq!(
            parse_period("2025-12").unwrap().last.to_string(),
            "2025-12-31"
        );
        for bad in ["2026-13", "2026-1", "2026/01", "202601", "2026-01-01", ""] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
        assert!(parse_date("2026-02-30").is_err());
        assert!(parse_date("2026-2-3").is_err());
        assert_eq!(parse_date("2026-02-03").unwrap().to_string(), "2026-02-03");
    }

    #[test]
    fn the_selection_filters_dates_inclusively_and_the_entity() {
        let records = example();
        let keys = |s: &Selection| -> Vec<String> {
            s.apply(&records)
                .unwrap()
                .iter()
                .map(|r| r.posting.idempotency_key.clone())
                .collect()
        };
        let all = Selection::default();
        assert_eq!(keys(&all), ["k-jpy", "k-line", "k-usd"]);
        let jan10 = parse_date("2026-01-10").unwrap();
        let day = Selection {
            from: Some(jan10),
            to: Some(jan10),
            legal_entity: None,
        };
        assert_eq!(keys(&day), ["k-line", "k-usd"]);
        let to9 = Selection {
            to: parse_date("2026-01-09").ok(),
            ..Selection::default()
        };
        assert_eq!(keys(&to9), ["k-jpy"]);
        let jp = Selection {
            legal_entity: Some("ml-jp".into()),
            ..Selection::default()
        };
        assert_eq!(keys(&jp), ["k-jpy"]);
        let mut odd = records[0].clone();
        odd.posting.accounting_date = "10/01/2026".into();
        assert!(matches!(
            day.apply(&[odd]),
            Err(ExportError::BadDate { .. })
        ));
    }

    #[test]
    fn json_prints_every_selected_posting_as_on_the_topic() {
        let mut records = example();
        records[1].value = b" {\"a\":\n1}\r\n".to_vec();
        let selected = Selection::default().apply(&records).unwrap();
        let text = String::from_utf8(json_lines(&selected)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].as_bytes(), records[2].value.as_slice());
        assert_eq!(lines[1], "{\"a\": 1}");
    }
}
