//! Why a command is refused, with its stable code (see [`super::reason`]).

use rust_decimal::Decimal;

use super::reason;
use crate::calendar::CalendarError;
use crate::money::{self, MoneyError};
use crate::runtime::StageError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    #[error("not a command: {0}")]
    Malformed(String),
    #[error("{0}")]
    CustomerMismatch(String),
    #[error("actor {0:?} sent no meterline.signature header")]
    SignatureMissing(String),
    #[error("the signature is not actor {0:?}'s over the record value")]
    SignatureInvalid(String),
    #[error("actor {0:?} has no key in invoice.actor_keys_hex")]
    UnknownActor(String),
    #[error("no invoice {0:?} for this customer (not closed yet, or a wrong id)")]
    UnknownInvoice(String),
    #[error("{command} does not apply to invoice {invoice} in status {status}: {why}")]
    InvalidTransition {
        command: &'static str,
        invoice: String,
        status: &'static str,
        why: &'static str,
    },
    #[error("{0}")]
    InvalidAmount(String),
    #[error("{amount} is above the open amount {open} of invoice {invoice}")]
    ExceedsOpen {
        invoice: String,
        amount: Decimal,
        open: Decimal,
    },
    #[error("invoice {invoice} has no open dispute {dispute:?}")]
    UnknownDispute { invoice: String, dispute: String },
    #[error("the plan version has no gl_accounts.{0}: add it to its record on ref.plans (`meterline refdata load --kind plans`) and send the command again")]
    GlAccountMissing(&'static str),
    #[error("no tax rate for tax code(s) {0} of this legal entity in ref.tax_rates")]
    TaxRateMissing(String),
    #[error("a draft in {draft} for an invoice in {invoice}")]
    CurrencyMismatch { invoice: String, draft: String },
    #[error("invoice {invoice} would be {bytes} bytes, above the {max} a record may hold")]
    TooLarge {
        invoice: String,
        bytes: usize,
        max: usize,
    },
    #[error("{0}")]
    Money(#[from] MoneyError),
    #[error("calendar: {0}")]
    Calendar(#[from] CalendarError),
    #[error("amount overflow")]
    Overflow,
    #[error("journal entry {key} does not balance: debits {debits}, credits {credits}")]
    Unbalanced {
        key: String,
        debits: Decimal,
        credits: Decimal,
    },
}

impl InvoiceError {
    pub fn code(&self) -> &'static str {
        match self {
            InvoiceError::Malformed(_) => reason::MALFORMED_COMMAND,
            InvoiceError::CustomerMismatch(_) => reason::CUSTOMER_MISMATCH,
            InvoiceError::SignatureMissing(_) => reason::SIGNATURE_MISSING,
            InvoiceError::SignatureInvalid(_) => reason::SIGNATURE_INVALID,
            InvoiceError::UnknownActor(_) => reason::UNKNOWN_ACTOR,
            InvoiceError::UnknownInvoice(_) => reason::UNKNOWN_INVOICE,
            InvoiceError::InvalidTransition { .. } => reason::INVALID_TRANSITION,
            InvoiceError::InvalidAmount(_) => reason::INVALID_AMOUNT,
            InvoiceError::ExceedsOpen { .. } => reason::EXCEEDS_OPEN_AMOUNT,
            InvoiceError::UnknownDispute { .. } => reason::UNKNOWN_DISPUTE,
            InvoiceError::GlAccountMissing(_) => reason::GL_ACCOUNT_MISSING,
            InvoiceError::TaxRateMissing(_) => reason::TAX_RATE_MISSING,
            InvoiceError::CurrencyMismatch { .. } => reason::CURRENCY_MISMATCH,
            InvoiceError::TooLarge { .. } => reason::INVOICE_TOO_LARGE,
            InvoiceError::Money(e) => e.code(),
            InvoiceError::Calendar(e) => e.code(),
            InvoiceError::Overflow => money::reasons::AMOUNT_OVERFLOW,
            InvoiceError::Unbalanced { .. } => money::reasons::UNBALANCED_JOURNAL_ENTRY,
        }
    }
}

impl From<InvoiceError> for StageError {
    fn from(e: InvoiceError) -> Self {
        match e {
            // A bug, not bad input: stop rather than dead-letter books.
            InvoiceError::Unbalanced { .. } => StageError::Fatal(e.to_string()),
            _ => StageError::Reject {
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}
