//! What ledger-sync reads: a record of one of its input topics, decoded
//! into what the ledger stores, and the checks that need no database.

use chrono::NaiveDate;
use rust_decimal::Decimal;

use crate::contracts::{Invoice, Posting, PostingType, Side};
use crate::ledger::reason;
use crate::runtime::InputRecord;

/// Which input a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `finance.postings`.
    Postings,
    /// `finance.invoices`.
    Invoices,
    /// `finance.postings.ledger_retry`: replayed dead letters, postings or
    /// invoice documents (told apart by their fields).
    Retry,
}

/// One consumed record, owned (a batch outlives the consumer's buffers).
#[derive(Debug, Clone)]
pub struct InRecord {
    pub input: Input,
    /// Full topic name (namespace applied).
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
}

impl InRecord {
    pub fn as_input(&self) -> InputRecord<'_> {
        InputRecord {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &self.headers,
            timestamp_ms: self.timestamp_ms,
        }
    }
}

/// A record decoded.
#[derive(Debug)]
pub enum Decoded {
    Posting(Box<CheckedPosting>),
    Invoice(Box<Invoice>),
    /// A compacted topic's delete marker: nothing to store.
    Tombstone,
    /// Not storable: (reason code, message). A posting's key is known when
    /// the record parsed as one.
    Refused {
        reason: &'static str,
        message: String,
        idempotency_key: Option<String>,
    },
}

/// A posting that passed the checks needing no database.
#[derive(Debug)]
pub struct CheckedPosting {
    pub posting: Posting,
    pub accounting_date: NaiveDate,
    /// The record's value as JSON, stored as the posting's document and
    /// compared with a stored one when the key is seen again.
    pub document: serde_json::Value,
}

/// Decodes a record of `input`.
pub fn decode(input: Input, value: Option<&[u8]>) -> Decoded {
    let Some(value) = value else {
        return match input {
            Input::Invoices => Decoded::Tombstone,
            _ => refused(
                reason::INVALID_POSTING,
                "the record has no value".into(),
                None,
            ),
        };
    };
    match input {
        Input::Postings => decode_posting(value),
        Input::Invoices => decode_invoice(value),
        Input::Retry => {
            // An invoice document has `history`; a posting never does.
            let is_invoice = serde_json::from_slice::<serde_json::Value>(value)
                .ok()
                .is_some_and(|v| v.get("history").is_some() && v.get("invoice_id").is_some());
            if is_invoice {
                decode_invoice(value)
            } else {
                decode_posting(value)
            }
        }
    }
}

fn refused(reason: &'static str, message: String, key: Option<String>) -> Decoded {
    Decoded::Refused {
        reason,
        message,
        idempotency_key: key,
    }
}

fn decode_invoice(value: &[u8]) -> Decoded {
    match Invoice::from_json_slice(value) {
        Ok(inv) => Decoded::Invoice(Box::new(inv)),
        Err(e) => refused(
            reason::INVALID_INVOICE,
            format!("not an invoice: {e}"),
            None,
        ),
    }
}

fn decode_posting(value: &[u8]) -> Decoded {
    let posting = match Posting::from_json_slice(value) {
        Ok(p) => p,
        Err(e) => return refused(reason::INVALID_POSTING, format!("not a posting: {e}"), None),
    };
    let key = Some(posting.idempotency_key.clone());
    let Ok(accounting_date) = NaiveDate::parse_from_str(&posting.accounting_date, "%Y-%m-%d")
    else {
        let message = format!(
            "accounting_date {:?} is not a YYYY-MM-DD date",
            posting.accounting_date
        );
        return refused(reason::INVALID_POSTING, message, key);
    };
    if let Err(message) = check_balanced(&posting) {
        return refused(reason::UNBALANCED_POSTING, message, key);
    }
    let document = match serde_json::from_slice(value) {
        Ok(d) => d,
        Err(e) => return refused(reason::INVALID_POSTING, format!("not JSON: {e}"), key),
    };
    Decoded::Posting(Box::new(CheckedPosting {
        posting,
        accounting_date,
        document,
    }))
}

/// The idempotency key of a record that parses as a posting (a row the
/// database refused is still acked under its key).
pub fn idempotency_key_of(rec: &InRecord) -> Option<String> {
    match decode(rec.input, rec.value.as_deref()) {
        Decoded::Posting(p) => Some(p.posting.idempotency_key),
        Decoded::Refused {
            idempotency_key, ..
        } => idempotency_key,
        Decoded::Invoice(_) | Decoded::Tombstone => None,
    }
}

/// A journal entry has lines, each > 0, and debits equal credits exactly.
pub fn check_balanced(p: &Posting) -> Result<(), String> {
    if p.posting_type != PostingType::JournalEntry {
        return Ok(());
    }
    if p.lines.is_empty() {
        return Err("a journal entry without lines".into());
    }
    if let Some(l) = p.lines.iter().find(|l| l.amount <= Decimal::ZERO) {
        return Err(format!(
            "line on {} has amount {} (must be > 0)",
            l.account, l.amount
        ));
    }
    let (debits, credits) = p.totals();
    if debits != credits {
        return Err(format!("debits {debits} != credits {credits}"));
    }
    Ok(())
}

/// (debit, credit) columns of a journal line.
pub fn debit_credit(side: Side, amount: Decimal) -> (Decimal, Decimal) {
    match side {
        Side::Debit => (amount, Decimal::ZERO),
        Side::Credit => (Decimal::ZERO, amount),
    }
}
