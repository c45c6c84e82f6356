//! `billing.commands` and `finance.invoices`: what finance operators, the
//! post stage and enrich send to the invoice stage, and the invoice
//! documents it publishes.
//!
//! A [`Command`] is one JSON object on `billing.commands`, keyed by the
//! customer id (so a customer's commands, drafts and parked-event notices
//! are on one partition, in order). Operators send `approve`, `hold`,
//! `release`, `void`, `credit`, `dispute_open`, `dispute_resolve`; the
//! post stage sends `draft` (the deferred postings of one closed window,
//! [`DraftPart`]); enrich sends `event_parked` / `event_unparked`
//! ([`ParkedEvent`]). When actor keys are configured, an operator command
//! carries the header [`SIGNATURE_HEADER`]: the hex HMAC-SHA256 of the
//! record value's exact bytes under the actor's key.
//!
//! An [`Invoice`] is the state of one invoice after a change, keyed by its
//! id on the compacted `finance.invoices`; `version` counts its changes.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{rfc3339_utc, CustomerInfo, Posting, Window};
use crate::money::optional_decimal_str;
use crate::refdata::GlAccounts;

/// Version of the command contract; see [`super`] for what a change may do.
pub const COMMAND_VERSION: u32 = 1;
/// Version of the invoice document.
pub const INVOICE_VERSION: u32 = 1;
/// The record header carrying an operator command's signature:
/// lowercase hex of HMAC-SHA256(actor key, record value bytes).
pub const SIGNATURE_HEADER: &str = "meterline.signature";

/// What a command asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// post: lines and deferred postings of one closed window.
    Draft,
    /// enrich: an event of the customer was parked (revenue at risk).
    EventParked,
    /// enrich: a parked event flowed on (or was dropped).
    EventUnparked,
    Approve,
    Hold,
    Release,
    Void,
    Credit,
    DisputeOpen,
    DisputeResolve,
}

impl CommandKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Draft => "draft",
            CommandKind::EventParked => "event_parked",
            CommandKind::EventUnparked => "event_unparked",
            CommandKind::Approve => "approve",
            CommandKind::Hold => "hold",
            CommandKind::Release => "release",
            CommandKind::Void => "void",
            CommandKind::Credit => "credit",
            CommandKind::DisputeOpen => "dispute_open",
            CommandKind::DisputeResolve => "dispute_resolve",
        }
    }

    /// Sent by a meterline stage, not by a person: never signed by an actor.
    pub fn is_system(self) -> bool {
        matches!(
            self,
            CommandKind::Draft | CommandKind::EventParked | CommandKind::EventUnparked
        )
    }

    /// Every operator command, in the order the CLI lists them.
    pub const OPERATOR: [CommandKind; 7] = [
        CommandKind::Approve,
        CommandKind::Hold,
        CommandKind::Release,
        CommandKind::Void,
        CommandKind::Credit,
        CommandKind::DisputeOpen,
        CommandKind::DisputeResolve,
    ];
}

/// How a dispute ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeOutcome {
    /// The charge stands: the disputed receivable goes back to receivable.
    Won,
    /// The customer won: a credit memo for the disputed amount.
    Lost,
}

/// One record on `billing.commands`.
///
/// ```json
/// {"id":"cmd-7","kind":"credit","customer_id":"cust-42",
///  "invoice_id":"sub-1@2026-01-01","actor":"alice","reason":"SLA breach",
///  "time":"2026-02-03T10:00:00Z","percent":"10"}
/// ```
///
/// * `id`: unique per customer; a command whose id was applied before
///   changes nothing (counted as a duplicate).
/// * `invoice_id`: every invoice command; a `credit` without it credits
///   the customer's balance in `currency` (drawn by the next invoices'
///   approval), with an optional `expires`.
/// * `credit`: `amount` (gross, the invoice's currency) or `percent` of
///   the invoice's total; `dispute_open`: `amount`; `dispute_resolve`:
///   `dispute_id` (the id of the `dispute_open` command) and `outcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub id: String,
    pub kind: CommandKind,
    pub customer_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    pub actor: String,
    #[serde(default)]
    pub reason: String,
    #[serde(with = "rfc3339_utc")]
    pub time: DateTime<Utc>,
    #[serde(
        default,
        with = "optional_decimal_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub amount: Option<Decimal>,
    #[serde(
        default,
        with = "optional_decimal_str",
        skip_serializing_if = "Option::is_none"
    )]
    pub percent: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(
        default,
        with = "optional_rfc3339",
        skip_serializing_if = "Option::is_none"
    )]
    pub expires: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispute_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<DisputeOutcome>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draft: Option<DraftPart>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked: Option<ParkedEvent>,
}

impl Command {
    /// A command of `kind` with nothing but its identity set.
    pub fn new(
        id: impl Into<String>,
        kind: CommandKind,
        customer_id: impl Into<String>,
        actor: impl Into<String>,
        time: DateTime<Utc>,
    ) -> Command {
        Command {
            id: id.into(),
            kind,
            customer_id: customer_id.into(),
            invoice_id: None,
            actor: actor.into(),
            reason: String::new(),
            time,
            amount: None,
            percent: None,
            currency: None,
            expires: None,
            dispute_id: None,
            outcome: None,
            draft: None,
            parked: None,
        }
    }

    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What the post stage hands the invoice stage for one closed window: the
/// invoice it belongs to and the postings that wait for its approval
/// (invoice lines, rounding, reclass, base fee, true-up).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DraftPart {
    /// [`invoice_id`] of the subscription and billing period.
    pub invoice_id: String,
    pub customer: CustomerInfo,
    pub subscription_id: String,
    pub plan_id: String,
    pub plan_version: u32,
    pub legal_entity: String,
    pub currency: String,
    pub time_zone: String,
    /// The billing period invoiced.
    pub service_interval: Window,
    pub gl_accounts: GlAccounts,
    /// The tax code of the base fee and true-up (the plan's).
    pub tax_code: Option<String>,
    /// Not null: the part adjusts this already closed window (a late event).
    pub adjusts: Option<Window>,
    /// The last part of the invoice (the period close, or a window of a
    /// period that has none: after the subscription's end).
    pub closes: bool,
    pub postings: Vec<Posting>,
}

/// The event a parked-event notice is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkedEvent {
    pub source: String,
    pub id: String,
    #[serde(with = "rfc3339_utc")]
    pub event_time: DateTime<Utc>,
    /// The park code (`event_parked` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The deterministic id of a subscription's invoice for a billing period:
/// `<subscription id>@<period id>` (the period id is its local start date).
pub fn invoice_id(subscription_id: &str, period_id: &str) -> String {
    format!("{subscription_id}@{period_id}")
}

/// Where an invoice is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Its period is still open: lines arrive as windows close.
    Draft,
    /// Held by a rule or by manual approval; nothing of it posted yet.
    PendingApproval,
    /// Approved (by the policy or an actor); posted in the same transaction.
    Approved,
    /// Its lines, tax and credits are on `finance.postings`.
    Posted,
    /// Cancelled by a full credit memo.
    Voided,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::PendingApproval => "pending_approval",
            InvoiceStatus::Approved => "approved",
            InvoiceStatus::Posted => "posted",
            InvoiceStatus::Voided => "voided",
        }
    }

    pub const ALL: [InvoiceStatus; 5] = [
        InvoiceStatus::Draft,
        InvoiceStatus::PendingApproval,
        InvoiceStatus::Approved,
        InvoiceStatus::Posted,
        InvoiceStatus::Voided,
    ];
}

/// One line of an invoice document. `kind`: `usage` | `base_fee` |
/// `minimum_true_up` | `tax` | `service_credit`; `amount` rounded, signed
/// (a service credit is negative).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceDocLine {
    pub kind: String,
    pub description: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub unit: Option<String>,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    pub tax_code: Option<String>,
    /// The invoice-line posting's idempotency key.
    pub posting_key: String,
    /// The invoice-line posting's breakdown (see
    /// [`crate::contracts::InvoiceLine::breakdown`]).
    #[serde(default, skip_serializing_if = "crate::rating::Parts::is_empty")]
    pub breakdown: crate::rating::Parts,
}

/// Why an invoice waits for approval: the rule and what it saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// `manual_approval` | `total_above` | `total_change` | `parked_events`
    /// | `late_adjustments` | `tax_rate_missing` | `gl_account_missing` |
    /// `held` (a hold command).
    pub rule: String,
    pub detail: String,
}

/// The amounts of an invoice, at the currency's scale.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceTotals {
    /// Usage, base fee and true-up lines.
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    /// Service credits drawn from the customer's balance (>= 0).
    #[serde(with = "rust_decimal::serde::str")]
    pub service_credits: Decimal,
    /// subtotal + tax - service_credits.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// Credit memos issued against it (including lost disputes and a void).
    #[serde(with = "rust_decimal::serde::str")]
    pub credited: Decimal,
    /// Open disputes.
    #[serde(with = "rust_decimal::serde::str")]
    pub disputed: Decimal,
    /// total - credited - disputed: what is still receivable.
    #[serde(with = "rust_decimal::serde::str")]
    pub open: Decimal,
}

/// A credit memo against an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditMemo {
    /// The command that issued it.
    pub id: String,
    /// Gross (tax included), > 0.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// The tax part of `amount`.
    #[serde(with = "rust_decimal::serde::str")]
    pub tax: Decimal,
    /// `credit` | `void` | `dispute_lost`.
    pub cause: String,
    pub actor: String,
    pub reason: String,
    #[serde(with = "rfc3339_utc")]
    pub time: DateTime<Utc>,
}

/// A dispute of part of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    /// The `dispute_open` command's id.
    pub id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    /// `open` | `won` | `lost`.
    pub status: String,
    pub opened_by: String,
    pub reason: String,
    #[serde(with = "rfc3339_utc")]
    pub opened_at: DateTime<Utc>,
    pub resolved_by: Option<String>,
    #[serde(default, with = "optional_rfc3339")]
    pub resolved_at: Option<DateTime<Utc>>,
}

/// One change of an invoice, with who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: InvoiceStatus,
    /// The command kind (`draft` for lines arriving, `policy` for the
    /// approval policy's decision).
    pub action: String,
    pub actor: String,
    pub command_id: String,
    pub reason: String,
    #[serde(with = "rfc3339_utc")]
    pub at: DateTime<Utc>,
}

/// One record on `finance.invoices`: an invoice after its latest change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub invoice_id: String,
    /// 1 for the first record of the invoice, +1 per change.
    pub version: u32,
    pub customer: CustomerInfo,
    pub subscription_id: String,
    pub plan_id: String,
    pub plan_version: u32,
    pub legal_entity: String,
    pub currency: String,
    pub time_zone: String,
    pub service_interval: Window,
    pub status: InvoiceStatus,
    /// The rules holding it (empty unless `pending_approval`).
    pub holds: Vec<Hold>,
    pub lines: Vec<InvoiceDocLine>,
    pub totals: InvoiceTotals,
    pub credit_memos: Vec<CreditMemo>,
    pub disputes: Vec<Dispute>,
    /// Idempotency keys of every posting of the invoice, in emission order.
    pub postings: Vec<String>,
    pub history: Vec<StatusChange>,
}

impl Invoice {
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub fn from_json_slice(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The change a command made, if the invoice saw that command.
    pub fn change_by(&self, command_id: &str) -> Option<&StatusChange> {
        self.history.iter().find(|c| c.command_id == command_id)
    }
}

/// Which invoices a list shows (`meterline invoices list`, `GET
/// /v1/invoices`): every field given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvoiceFilter {
    /// `draft`, `pending_approval`, `approved`, `posted` or `voided`.
    pub status: Option<String>,
    pub customer: Option<String>,
    /// The service interval's id (its local start date, YYYY-MM-DD).
    pub period: Option<String>,
    pub legal_entity: Option<String>,
    /// A hold rule (`tax_rate_missing`, ...): invoices it holds now.
    pub held_by: Option<String>,
}

impl InvoiceFilter {
    pub fn matches(&self, i: &Invoice) -> bool {
        let is = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let held = |rule: &str| i.holds.iter().any(|h| h.rule == rule);
        is(&self.status, i.status.as_str())
            && is(&self.customer, &i.customer.id)
            && is(&self.period, &i.service_interval.id)
            && is(&self.legal_entity, &i.legal_entity)
            && self.held_by.as_deref().is_none_or(held)
    }
}

/// `Option<DateTime<Utc>>` as RFC 3339 in [`rfc3339_utc`]'s form, or null.
pub mod optional_rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        time: &Option<DateTime<Utc>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(t) => serializer.serialize_str(&super::rfc3339_utc::format(t)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<String>::deserialize(deserializer)?
            .map(|text| {
                DateTime::parse_from_rfc3339(&text)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(serde::de::Error::custom)
            })
            .transpose()
    }
}
