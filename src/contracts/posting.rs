//! `finance.postings`: what the post stage writes and ERP connectors, the
//! ledger sync and reconcile read.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{Window, WindowKind};

/// Version of this contract; see [`super`] for what a change may do.
pub const POSTING_VERSION: u32 = 1;

/// What a posting is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostingType {
    JournalEntry,
    InvoiceLine,
    ControlTotal,
}

impl PostingType {
    pub fn as_str(self) -> &'static str {
        match self {
            PostingType::JournalEntry => "journal_entry",
            PostingType::InvoiceLine => "invoice_line",
            PostingType::ControlTotal => "control_total",
        }
    }
}

/// Side of a journal line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Debit,
    Credit,
}

/// One line of a journal entry; `amount` > 0, at the currency's scale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalLine {
    pub account: String,
    pub side: Side,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

impl JournalLine {
    /// The lines of a two-line entry Dr `debit`, Cr `credit` of `amount`; a
    /// negative amount swaps the sides; None for zero (not posted).
    pub fn pair(debit: &str, credit: &str, amount: Decimal) -> Option<Vec<JournalLine>> {
        if amount.is_zero() {
            return None;
        }
        let (dr, cr) = if amount.is_sign_negative() {
            (credit, debit)
        } else {
            (debit, credit)
        };
        let amount = amount.abs();
        Some(vec![
            JournalLine {
                account: dr.to_string(),
                side: Side::Debit,
                amount,
            },
            JournalLine {
                account: cr.to_string(),
                side: Side::Credit,
                amount,
            },
        ])
    }
}

/// An invoice line; `amount` rounded, may be negative (an adjustment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub description: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub unit: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub tax_code: Option<String>,
    /// What the amount is made of, unrounded, for the models that explain
    /// it (percentage: free and paid events, billable amount, percentage
    /// and fixed fees, min/max adjustment; graduated_percentage: amount and
    /// fee per tier; prorated charges: full-period amount and proration
    /// adjustment). Absent otherwise.
    #[serde(default, skip_serializing_if = "crate::rating::Parts::is_empty")]
    pub breakdown: crate::rating::Parts,
}

/// A window's control total, for reconciliation with the inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlTotal {
    pub event_count: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// The window's unrounded amount.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount_rounded: Decimal,
    pub lineage_digest: String,
}

/// A journal-entry accrual in the wire form, without lines: the base of
/// examples and tests, which set the fields they care about
/// (`Posting::from_json_slice(EXAMPLE_JOURNAL_ENTRY.as_bytes())`).
#[doc(hidden)]
pub const EXAMPLE_JOURNAL_ENTRY: &str = concat!(
    r#"{"posting_type":"journal_entry","kind":"accrual","idempotency_key":"k","#,
    r#""business_key":["journal_entry","accrual"],"key_version":1,"legal_entity":"ml-us","#,
    r#""customer_id":"cust-42","erp_customer_id":"C-42","subscription_id":"sub-1","#,
    r#""plan_id":"pro","plan_version":2,"currency":"USD","accounting_date":"2026-01-10","#,
    r#""billing_period":{"id":"2026-01-01","start":"2026-01-01T05:00:00Z","end":"2026-02-01T05:00:00Z"},"#,
    r#""window_kind":"day","#,
    r#""window":{"id":"2026-01-10","start":"2026-01-10T05:00:00Z","end":"2026-01-11T05:00:00Z"},"#,
    r#""adjusts":null,"segment_id":"3f1c","segment_key":null,"meter":"tokens","#,
    r#""lines":[],"invoice_line":null,"control_total":null}"#
);

/// One record on `finance.postings`. See the module docs and [`Posting::kind`].
///
/// ```json
/// {"posting_type":"journal_entry","kind":"accrual",
///  "idempotency_key":"5d41…(64 hex)",
///  "business_key":["journal_entry","accrual","ml-us","sub-1","3f1c…","day","2026-01-10",""],
///  "key_version":1,"legal_entity":"ml-us","customer_id":"cust-42","erp_customer_id":"C-42",
///  "subscription_id":"sub-1","plan_id":"pro","plan_version":2,"currency":"USD",
///  "accounting_date":"2026-01-10",
///  "billing_period":{"id":"2026-01-01","start":"2026-01-01T05:00:00Z","end":"2026-02-01T05:00:00Z"},
///  "window_kind":"day",
///  "window":{"id":"2026-01-10","start":"2026-01-10T05:00:00Z","end":"2026-01-11T05:00:00Z"},
///  "adjusts":null,"segment_id":"3f1c…","segment_key":"[\"sub-1\",\"tokens\",\"2026-01-01\",2,{}]",
///  "meter":"tokens",
///  "lines":[{"account":"1210","side":"debit","amount":"5.00"},
///           {"account":"4010","side":"credit","amount":"5.00"}],
///  "invoice_line":null,"control_total":null}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Posting {
    pub posting_type: PostingType,
    /// journal_entry: `accrual` | `rounding` | `reclass` | `base_fee` |
    /// `minimum_true_up` | `tax` | `service_credit` | `credit_memo` |
    /// `dispute_open` | `dispute_won` | `dispute_lost`; invoice_line:
    /// `usage` | `base_fee` | `minimum_true_up` | `tax` | `service_credit`
    /// | `credit_memo`; control_total: the window kind.
    pub kind: String,
    pub idempotency_key: String,
    pub business_key: Vec<String>,
    pub key_version: u32,
    pub legal_entity: String,
    pub customer_id: String,
    pub erp_customer_id: String,
    pub subscription_id: String,
    pub plan_id: String,
    pub plan_version: u32,
    pub currency: String,
    /// Local date (subscription time zone) the posting belongs to: the day
    /// of a day window, the last day of a period otherwise.
    pub accounting_date: String,
    /// The billing period that invoices it (for an adjustment: the current one).
    pub billing_period: Window,
    pub window_kind: WindowKind,
    pub window: Window,
    /// Not null: an adjustment of this closed window.
    pub adjusts: Option<Window>,
    pub segment_id: Option<String>,
    pub segment_key: Option<String>,
    pub meter: Option<String>,
    /// journal_entry only (else empty): debits and credits balance exactly.
    pub lines: Vec<JournalLine>,
    pub invoice_line: Option<InvoiceLine>,
    pub control_total: Option<ControlTotal>,
    /// The invoice the posting belongs to, on postings the invoice stage
    /// makes (tax, service credits, credit memos, disputes); absent
    /// (not written) on the postings of windows, whose invoice is
    /// `<subscription>@<billing_period.id>` ([`super::invoice_id`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
}

impl Posting {
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Sum of debits and sum of credits.
    pub fn totals(&self) -> (Decimal, Decimal) {
        self.lines
            .iter()
            .fold((Decimal::ZERO, Decimal::ZERO), |(d, c), l| match l.side {
                Side::Debit => (d + l.amount, c),
                Side::Credit => (d, c + l.amount),
            })
    }

    /// Debits equal credits (trivially true for non-journal postings).
    pub fn is_balanced(&self) -> bool {
        let (debits, credits) = self.totals();
        debits == credits
    }
}
