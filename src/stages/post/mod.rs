//! The post stage: closed windows in, finance postings out: accrual journal
//! entries, invoice lines, period-close entries and control totals, rounded
//! once, balanced, each with a deterministic idempotency key.
//!
//! For each record of `usage.windows` (a [`ClosedWindow`] JSON; anything
//! else is rejected to `meterline.dlq.post` with [`MALFORMED_CLOSED_WINDOW`]):
//!
//! * **day window** (one segment, one local day): an accrual journal entry
//!   Dr unbilled receivable, Cr usage revenue, of the window's amount rounded
//!   to the currency's minor unit. The rounded accrual is added to the
//!   ledger sum of the invoice window that will clear it
//!   ([`ClosedWindow::clearing`]).
//! * **billing-period window** (one segment, one period, or an adjustment of
//!   a closed period): the invoice line (quantity, rounded amount L, tax
//!   code); a rounding entry Dr unbilled receivable, Cr usage revenue of
//!   `L - A`, where A is the sum of the rounded accruals posted for that
//!   segment and period, so that unbilled receivable clears to zero; and the
//!   reclass Dr receivable, Cr unbilled receivable of L. A regular line's L
//!   is added to the subscription period's spend.
//! * **period close** (one subscription, one period): the base fee (invoice
//!   line and entry Dr receivable, Cr usage revenue), then a minimum
//!   commitment true-up line and entry (same accounts) of
//!   `commitment - (spend + base fee)` where that is positive.
//!
//! Every window also gets a control total: its event count, unrounded and
//! rounded amount and lineage digest, as aggregate computed them.
//!
//! **What is posted when.** Accruals and control totals go to
//! `finance.postings` at once. Everything else of a billing-period window or
//! a period close (invoice lines, rounding, reclass, base fee, true-up)
//! waits for the approval of its invoice: it goes, in the same transaction,
//! to `billing.commands` as a `draft` command ([`draft_command`], keyed by
//! the customer, actor [`DRAFT_ACTOR`], id derived from the window) for the
//! invoice stage, which posts it when the invoice `<subscription>@<period>`
//! is approved. The period close's draft closes the invoice (so does a
//! window of a period after the subscription's end, which has no period
//! close). The postings are computed here exactly as before, so with
//! automatic approval `finance.postings` receives the same records.
//!
//! Rules that hold for every journal entry: a negative amount swaps the debit
//! and credit accounts; an entry whose amount rounds to zero is not posted;
//! the debits equal the credits to the minor unit (checked before emitting:
//! an unbalanced entry is a bug and stops the stage). An invoice line is
//! posted unless both its quantity and its rounded amount are zero (a line
//! of free usage is still shown).
//!
//! Rounding happens here and only here, with [`money::round_to_minor`] and
//! config `post.rounding_mode` (default [`ROUNDING_MODE`]); amounts carry the currency's scale (USD `"1.50"`, JPY
//! `"150"`, BHD `"1.500"`).
//!
//! Every [`Posting`] carries `idempotency_key =
//! money::idempotency_key(business_key, POSTING_KEY_VERSION)`, where the
//! business key is (posting type, kind, legal entity, subscription, segment
//! id or "", window kind, window id, adjusted window id or ""): the same
//! window always yields the same keys, so an ERP connector can upsert.
//! Postings go to `finance.postings` keyed by `["<legal entity>","<subscription>"]`
//! (a JSON array, unambiguous whatever the ids contain).
//!
//! # The ledger store (store 0, `ledger`)
//!
//! | key | value |
//! |---|---|
//! | `A` segment id, clearing period id, adjusted period id or "" | rounded accruals posted, decimal string |
//! | `S` subscription id, period id | rounded regular invoice lines of the period, decimal string |
//!
//! Both are deleted when the window that consumes them is posted (the
//! segment's billing-period window, the period close), so the store holds
//! only open periods. Aggregate emits a period's day windows before its
//! billing-period windows and those before its period close, on one
//! partition (keyed by customer), which is what makes the sums complete.

pub mod reason;

use chrono::{Duration, NaiveDate};
use rust_decimal::Decimal;

use crate::calendar;
use crate::config::Config;
use crate::contracts::{
    invoice_id, ClosedWindow, Command, CommandKind, ControlTotal, DraftPart, InvoiceLine,
    JournalLine, Posting, PostingType, Window, WindowKind,
};
use crate::money::{self, MoneyError, RoundingMode};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::store::keys::KeyBuilder;
use crate::store::StoreId;
use crate::topology::{self, StageSpec};

/// Version of the idempotency key's business key; bump it if the meaning of
/// the parts ever changes.
pub const POSTING_KEY_VERSION: u32 = 1;
/// Rounding of every posted amount: the default of config `post.rounding_mode`.
pub const ROUNDING_MODE: RoundingMode = RoundingMode::HalfEven;

/// The ledger store's index in the stage's store list.
const LEDGER: StoreId = 0;
/// Lineage: window -> postings, posting -> window (see [`crate::lineage`]).
const LINEAGE: StoreId = 1;
const ACCRUED_PREFIX: u8 = b'A';
const SPEND_PREFIX: u8 = b'S';

/// Reject code of an input record that is not a closed window.
pub use reason::MALFORMED_CLOSED_WINDOW;

/// Why a window cannot be posted. [`code`](PostError::code) is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    #[error("not a closed window: {0}")]
    Malformed(String),
    #[error("{0}")]
    Money(#[from] MoneyError),
    #[error("calendar: {0}")]
    Calendar(#[from] calendar::CalendarError),
    #[error("amount overflow")]
    Overflow,
    #[error("journal entry {key} does not balance: debits {debits}, credits {credits}")]
    Unbalanced {
        key: String,
        debits: Decimal,
        credits: Decimal,
    },
}

impl PostError {
    pub fn code(&self) -> &'static str {
        match self {
            PostError::Malformed(_) => MALFORMED_CLOSED_WINDOW,
            PostError::Money(e) => e.code(),
            PostError::Calendar(e) => e.code(),
            PostError::Overflow => money::reasons::AMOUNT_OVERFLOW,
            PostError::Unbalanced { .. } => money::reasons::UNBALANCED_JOURNAL_ENTRY,
        }
    }
}

impl From<PostError> for StageError {
    fn from(e: PostError) -> Self {
        match e {
            // A bug, not bad input: stop rather than dead-letter books.
            PostError::Unbalanced { .. } => StageError::Fatal(e.to_string()),
            _ => StageError::Reject {
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}

/// Debits equal credits (trivially true for non-journal postings), else
/// the fatal [`PostError::Unbalanced`].
pub fn check_balanced(p: &Posting) -> Result<(), PostError> {
    if p.is_balanced() {
        return Ok(());
    }
    let (debits, credits) = p.totals();
    Err(PostError::Unbalanced {
        key: p.idempotency_key.clone(),
        debits,
        credits,
    })
}

/// Lines of a two-line entry Dr `debit`, Cr `credit` of `amount`; a negative
/// amount swaps the sides; None for zero (not posted).
pub fn two_lines(debit: &str, credit: &str, amount: Decimal) -> Option<Vec<JournalLine>> {
    JournalLine::pair(debit, credit, amount)
}

fn accrued_key(w: &ClosedWindow, segment_id: &str) -> Vec<u8> {
    KeyBuilder::new(ACCRUED_PREFIX)
        .str(segment_id)
        .str(&w.clearing.period.id)
        .str(w.clearing.adjusts.as_ref().map_or("", |a| a.id.as_str()))
        .build()
}

fn spend_key(w: &ClosedWindow) -> Vec<u8> {
    KeyBuilder::new(SPEND_PREFIX)
        .str(&w.subscription_id)
        .str(&w.window.id)
        .build()
}

fn read_sum(ctx: &Ctx<'_>, key: &[u8]) -> Result<Decimal, StageError> {
    match ctx.stores.get(LEDGER, key)? {
        None => Ok(Decimal::ZERO),
        Some(b) => std::str::from_utf8(&b)
            .ok()
            .and_then(|s| s.parse::<Decimal>().ok())
            .ok_or_else(|| StageError::Fatal("ledger store: corrupt sum".into())),
    }
}

/// The last local date of a window in time zone `tz`.
fn last_local_date(w: &Window, tz: &str) -> Result<NaiveDate, PostError> {
    let tz = calendar::parse_tz(tz)?;
    let last = w.end - Duration::milliseconds(1);
    Ok(last.with_timezone(&tz).date_naive())
}

/// Turns one closed window into its postings and the ledger writes they
/// imply. Pure given the two ledger sums it reads; see the module docs.
pub struct Posted {
    pub postings: Vec<Posting>,
    /// New value of the accrued sum of the window's segment and clearing
    /// period (None: delete).
    pub accrued: Option<Decimal>,
    /// New value of the subscription period's spend (None: unchanged; the
    /// period close deletes it).
    pub spend: Option<Decimal>,
}

/// The postings of `w`, given the ledger's accrued sum for its segment and
/// clearing period and the spend of its subscription period, rounded with
/// the default [`ROUNDING_MODE`] (see [`post_window_with`]).
pub fn post_window(
    w: &ClosedWindow,
    accrued: Decimal,
    spend: Decimal,
) -> Result<Posted, PostError> {
    post_window_with(w, accrued, spend, ROUNDING_MODE)
}

/// [`post_window`] with every amount rounded with `mode` (config
/// `post.rounding_mode`).
pub fn post_window_with(
    w: &ClosedWindow,
    accrued: Decimal,
    spend: Decimal,
    mode: RoundingMode,
) -> Result<Posted, PostError> {
    // Checked first: an unknown currency rejects the window, whatever its kind.
    let amount = money::round_to_minor(w.amount, &w.currency, mode)?;
    let accounting_date = match w.kind {
        WindowKind::Day => w.window.id.clone(),
        _ => last_local_date(&w.window, &w.time_zone)?
            .format("%Y-%m-%d")
            .to_string(),
    };
    let b = PostingBuilder { w, accounting_date };
    let mut postings = Vec::new();
    let mut new_accrued = None;
    let mut new_spend = None;
    match w.kind {
        WindowKind::Day => new_accrued = Some(post_day(&b, amount, accrued, &mut postings)?),
        WindowKind::BillingPeriod => {
            new_spend = post_billing_period(&b, amount, accrued, spend, &mut postings)?;
        }
        WindowKind::PeriodClose => post_period_close(&b, spend, mode, &mut postings)?,
    }
    let mut control = b.build(PostingType::ControlTotal, w.kind.as_str());
    control.control_total = Some(ControlTotal {
        event_count: w.event_count,
        quantity: w.quantity,
        amount: w.amount,
        amount_rounded: amount,
        lineage_digest: w.lineage_digest.clone(),
    });
    postings.push(control);
    for p in &postings {
        check_balanced(p)?;
    }
    Ok(Posted {
        postings,
        accrued: new_accrued,
        spend: new_spend,
    })
}

/// Builds the postings of one window: what they share comes from it.
struct PostingBuilder<'w> {
    w: &'w ClosedWindow,
    accounting_date: String,
}

impl PostingBuilder<'_> {
    fn build(&self, posting_type: PostingType, kind: &str) -> Posting {
        let w = self.w;
        let segment = w.segment.as_ref();
        let business_key: Vec<String> = vec![
            posting_type.as_str().to_string(),
            kind.to_string(),
            w.legal_entity.clone(),
            w.subscription_id.clone(),
            segment.map_or(String::new(), |s| s.segment_id.clone()),
            w.kind.as_str().to_string(),
            w.window.id.clone(),
            w.adjusts.as_ref().map_or(String::new(), |a| a.id.clone()),
        ];
        let parts: Vec<&str> = business_key.iter().map(String::as_str).collect();
        Posting {
            posting_type,
            kind: kind.to_string(),
            idempotency_key: money::idempotency_key(&parts, POSTING_KEY_VERSION),
            business_key,
            key_version: POSTING_KEY_VERSION,
            legal_entity: w.legal_entity.clone(),
            customer_id: w.customer.id.clone(),
            erp_customer_id: w.customer.erp_customer_id.clone(),
            subscription_id: w.subscription_id.clone(),
            plan_id: w.plan_id.clone(),
            plan_version: segment.map_or(w.plan_version, |s| s.plan_version),
            currency: w.currency.clone(),
            accounting_date: self.accounting_date.clone(),
            billing_period: w.clearing.period.clone(),
            window_kind: w.kind,
            window: w.window.clone(),
            adjusts: w.adjusts.clone(),
            segment_id: segment.map(|s| s.segment_id.clone()),
            segment_key: segment.map(|s| s.segment_key.clone()),
            meter: segment.map(|s| s.meter.clone()),
            lines: Vec::new(),
            invoice_line: None,
            control_total: None,
            invoice_id: None,
        }
    }

    fn journal(&self, kind: &str, lines: Vec<JournalLine>) -> Posting {
        let mut p = self.build(PostingType::JournalEntry, kind);
        p.lines = lines;
        p
    }

    fn invoice(&self, kind: &str, line: InvoiceLine) -> Posting {
        let mut p = self.build(PostingType::InvoiceLine, kind);
        p.invoice_line = Some(line);
        p
    }
}

/// A day window: its accrual; returns the new accrued sum.
fn post_day(
    b: &PostingBuilder<'_>,
    amount: Decimal,
    accrued: Decimal,
    postings: &mut Vec<Posting>,
) -> Result<Decimal, PostError> {
    let gl = &b.w.gl_accounts;
    if let Some(lines) = two_lines(&gl.unbilled_receivable, &gl.usage_revenue, amount) {
        postings.push(b.journal("accrual", lines));
    }
    accrued.checked_add(amount).ok_or(PostError::Overflow)
}

/// A billing-period window: its invoice line, rounding and reclass; returns
/// the new spend of its subscription period (None: unchanged).
fn post_billing_period(
    b: &PostingBuilder<'_>,
    amount: Decimal,
    accrued: Decimal,
    spend: Decimal,
    postings: &mut Vec<Posting>,
) -> Result<Option<Decimal>, PostError> {
    let w = b.w;
    let gl = &w.gl_accounts;
    let segment = w.segment.as_ref();
    if !(amount.is_zero() && w.quantity.is_zero()) {
        let description = match (&w.segment, &w.adjusts) {
            (Some(s), None) => {
                format!("{} (plan {} v{})", s.label(), w.plan_id, s.plan_version)
            }
            (Some(s), Some(a)) => format!(
                "{} (plan {} v{}), adjustment of period {}",
                s.label(),
                w.plan_id,
                s.plan_version,
                a.id
            ),
            (None, _) => "usage".to_string(),
        };
        postings.push(b.invoice(
            "usage",
            InvoiceLine {
                description,
                quantity: w.quantity,
                unit: segment.and_then(|s| s.unit.clone()),
                amount,
                tax_code: segment.and_then(|s| s.tax_code.clone()),
                breakdown: w.parts.clone(),
            },
        ));
    }
    // Unbilled holds `accrued`; bring it to the invoiced amount, then
    // move exactly that to receivable: it ends at zero.
    let difference = amount.checked_sub(accrued).ok_or(PostError::Overflow)?;
    if let Some(lines) = two_lines(&gl.unbilled_receivable, &gl.usage_revenue, difference) {
        postings.push(b.journal("rounding", lines));
    }
    if let Some(lines) = two_lines(&gl.receivable, &gl.unbilled_receivable, amount) {
        postings.push(b.journal("reclass", lines));
    }
    // An adjustment counts toward no commitment (its period may
    // not even have a period close): the spend is left alone.
    if w.adjusts.is_none() {
        return Ok(Some(spend.checked_add(amount).ok_or(PostError::Overflow)?));
    }
    Ok(None)
}

/// A period close: its base fee and minimum-commitment true-up.
fn post_period_close(
    b: &PostingBuilder<'_>,
    spend: Decimal,
    mode: RoundingMode,
    postings: &mut Vec<Posting>,
) -> Result<(), PostError> {
    let w = b.w;
    let gl = &w.gl_accounts;
    let round = |a: Decimal| money::round_to_minor(a, &w.currency, mode);
    let base_fee = round(w.base_fee.unwrap_or(Decimal::ZERO))?;
    if let Some(lines) = two_lines(&gl.receivable, &gl.usage_revenue, base_fee) {
        postings.push(b.invoice(
            "base_fee",
            InvoiceLine {
                description: format!("base fee (plan {} v{})", w.plan_id, w.plan_version),
                quantity: Decimal::ONE,
                unit: None,
                amount: base_fee,
                tax_code: w.tax_code.clone(),
                breakdown: crate::rating::Parts::new(),
            },
        ));
        postings.push(b.journal("base_fee", lines));
    }
    if let Some(commitment) = w.minimum_commitment {
        let commitment = round(commitment)?;
        let billed = spend.checked_add(base_fee).ok_or(PostError::Overflow)?;
        let shortfall = commitment.checked_sub(billed).ok_or(PostError::Overflow)?;
        if shortfall > Decimal::ZERO {
            if let Some(lines) = two_lines(&gl.receivable, &gl.usage_revenue, shortfall) {
                postings.push(b.invoice(
                    "minimum_true_up",
                    InvoiceLine {
                        description: format!(
                            "minimum commitment {commitment} {}: true-up",
                            w.currency
                        ),
                        quantity: Decimal::ONE,
                        unit: None,
                        amount: shortfall,
                        tax_code: w.tax_code.clone(),
                        breakdown: crate::rating::Parts::new(),
                    },
                ));
                postings.push(b.journal("minimum_true_up", lines));
            }
        }
    }
    Ok(())
}

pub struct PostProcessor {
    postings_topic: String,
    commands_topic: String,
    rounding_mode: RoundingMode,
    /// `meterline_postings_total{stage="post", type, kind}`.
    postings_emitted: prometheus::IntCounterVec,
    /// `meterline_event_time_lag_seconds{stage="post"}`: wall clock minus
    /// the end of the last window posted.
    event_time_lag: prometheus::IntGauge,
}

impl PostProcessor {
    pub fn new(config: &Config) -> Self {
        PostProcessor {
            postings_topic: config.topic(topology::names::POSTINGS),
            commands_topic: config.topic(topology::names::COMMANDS),
            rounding_mode: config.post.rounding_mode,
            postings_emitted: crate::metrics::postings(),
            event_time_lag: crate::metrics::event_time_lag(SPEC.name),
        }
    }
}

/// Actor of the drafts post sends to the invoice stage.
pub const DRAFT_ACTOR: &str = "meterline:post";
/// Version of a draft command id's business key.
const DRAFT_ID_VERSION: u32 = 1;

/// Splits a window's postings into what is posted now (accruals and
/// control totals) and what waits for the approval of its invoice (the
/// invoice lines and the entries of a billing period or a period close).
pub fn split_deferred(w: &ClosedWindow, postings: Vec<Posting>) -> (Vec<Posting>, Vec<Posting>) {
    if w.kind == WindowKind::Day {
        return (postings, Vec::new());
    }
    postings
        .into_iter()
        .partition(|p| p.posting_type == PostingType::ControlTotal)
}

/// Whether no period close will ever complete the invoice `w` belongs to:
/// its clearing period starts at or after the subscription's end (a late
/// event adjusted into a period the subscription does not overlap).
fn clears_after_end(w: &ClosedWindow) -> bool {
    w.subscription_end
        .is_some_and(|end| end <= w.clearing.period.start)
}

/// The draft command handing `deferred` to the invoice stage, keyed by the
/// customer; None when there is nothing to hand (a billing-period window
/// with no posting that does not close its invoice).
pub fn draft_command(w: &ClosedWindow, deferred: Vec<Posting>) -> Option<Command> {
    let closes = w.kind == WindowKind::PeriodClose
        || (w.kind == WindowKind::BillingPeriod && clears_after_end(w));
    if w.kind == WindowKind::Day || (deferred.is_empty() && !closes) {
        return None;
    }
    let r = w.lineage_ref();
    let adjusts = r.adjusts.clone().unwrap_or_default();
    let id_parts = [
        "draft",
        r.kind.as_str(),
        r.scope.as_str(),
        r.window.as_str(),
        adjusts.as_str(),
    ];
    let mut command = Command::new(
        money::idempotency_key(&id_parts, DRAFT_ID_VERSION),
        CommandKind::Draft,
        w.customer.id.clone(),
        DRAFT_ACTOR,
        w.window.end,
    );
    command.invoice_id = Some(invoice_id(&w.subscription_id, &w.clearing.period.id));
    command.draft = Some(DraftPart {
        invoice_id: invoice_id(&w.subscription_id, &w.clearing.period.id),
        customer: w.customer.clone(),
        subscription_id: w.subscription_id.clone(),
        plan_id: w.plan_id.clone(),
        plan_version: w.plan_version,
        legal_entity: w.legal_entity.clone(),
        currency: w.currency.clone(),
        time_zone: w.time_zone.clone(),
        service_interval: w.clearing.period.clone(),
        gl_accounts: w.gl_accounts.clone(),
        tax_code: w.tax_code.clone(),
        adjusts: w.adjusts.clone(),
        closes,
        postings: deferred,
    });
    Some(command)
}

/// The lineage entry of one posting: its amount as lineage shows it.
fn posting_ref(p: &Posting) -> crate::lineage::PostingRef {
    let amount = match (&p.invoice_line, &p.control_total) {
        (Some(l), _) => l.amount,
        (_, Some(c)) => c.amount_rounded,
        _ => p.totals().0,
    };
    crate::lineage::PostingRef {
        idempotency_key: p.idempotency_key.clone(),
        posting_type: p.posting_type.as_str().to_string(),
        kind: p.kind.clone(),
        amount: amount.to_string(),
        accounting_date: p.accounting_date.clone(),
    }
}

fn parse(bytes: Option<&[u8]>) -> Result<ClosedWindow, PostError> {
    let bytes = bytes.ok_or_else(|| PostError::Malformed("the record has no value".into()))?;
    let w =
        ClosedWindow::from_json_slice(bytes).map_err(|e| PostError::Malformed(e.to_string()))?;
    let has_segment = w.segment.is_some();
    if has_segment == (w.kind == WindowKind::PeriodClose) {
        return Err(PostError::Malformed(format!(
            "a {} window {} a segment",
            w.kind.as_str(),
            if has_segment { "with" } else { "without" }
        )));
    }
    Ok(w)
}

/// This stage's entry in the stage table (a constant index: out of range
/// would not compile).
#[allow(clippy::indexing_slicing)]
const SPEC: &StageSpec = &topology::STAGES[5];

impl Processor for PostProcessor {
    fn spec(&self) -> &'static StageSpec {
        SPEC
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let w = parse(rec.value)?;
        let accrued_key = w.segment.as_ref().map(|s| accrued_key(&w, &s.segment_id));
        let accrued = match &accrued_key {
            Some(k) => read_sum(ctx, k)?,
            None => Decimal::ZERO,
        };
        let spend_key = spend_key(&w);
        let spend = match w.kind {
            WindowKind::Day => Decimal::ZERO,
            _ => read_sum(ctx, &spend_key)?,
        };
        let posted = post_window_with(&w, accrued, spend, self.rounding_mode)?;
        match (w.kind, accrued_key) {
            (WindowKind::Day, Some(k)) => {
                if let Some(a) = posted.accrued {
                    ctx.stores.put(LEDGER, k, a.to_string().into_bytes());
                }
            }
            (WindowKind::BillingPeriod, Some(k)) => {
                // Cleared: unbilled receivable of this segment and period is zero.
                ctx.stores.delete(LEDGER, k);
                if let Some(s) = posted.spend {
                    ctx.stores
                        .put(LEDGER, spend_key, s.to_string().into_bytes());
                }
            }
            _ => ctx.stores.delete(LEDGER, spend_key),
        }
        let key = serde_json::to_vec(&[&w.legal_entity, &w.subscription_id])
            .map_err(|e| StageError::Fatal(format!("serializing a key: {e}")))?;
        let now_ms = ctx.now_ms;
        let wref = w.lineage_ref();
        let made = crate::lineage::WindowPostings {
            postings: posted.postings.iter().map(posting_ref).collect(),
            event_count: w.event_count,
            invoice: Some(invoice_id(&w.subscription_id, &w.clearing.period.id)),
        };
        crate::lineage::put_json(
            ctx,
            LINEAGE,
            crate::lineage::window_key(&wref),
            &made,
            now_ms,
        )?;
        let sources = crate::lineage::PostingSources {
            windows: vec![wref],
            event_count: w.event_count,
            lineage_digest: w.lineage_digest.clone(),
        };
        for p in &posted.postings {
            crate::lineage::put_json(
                ctx,
                LINEAGE,
                crate::lineage::posting_key(&p.idempotency_key),
                &sources,
                now_ms,
            )?;
        }
        crate::internal_events::EventTimeLagMeasured {
            stage: SPEC.name,
            lag_s: (now_ms - w.window.end.timestamp_millis()) / 1_000,
        }
        .emit(&self.event_time_lag);
        let (now, deferred) = split_deferred(&w, posted.postings);
        for p in now {
            crate::internal_events::PostingEmitted {
                stage: SPEC.name,
                posting_type: p.posting_type.as_str(),
                kind: p.kind.as_str(),
                idempotency_key: &p.idempotency_key,
            }
            .emit(&self.postings_emitted);
            let value = p
                .to_json_bytes()
                .map_err(|e| StageError::Fatal(format!("serializing a posting: {e}")))?;
            ctx.emit(Output {
                topic: self.postings_topic.clone(),
                key: Some(key.clone()),
                value: Some(value),
                headers: Vec::new(),
                partition: None,
            });
        }
        if let Some(draft) = draft_command(&w, deferred) {
            let value = draft
                .to_json_bytes()
                .map_err(|e| StageError::Fatal(format!("serializing a draft: {e}")))?;
            ctx.emit(Output {
                topic: self.commands_topic.clone(),
                key: Some(w.customer.id.clone().into_bytes()),
                value: Some(value),
                headers: Vec::new(),
                partition: None,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
