//! The postings the invoice stage makes itself: tax, service credits, credit
//! memos and disputes. Each carries the invoice id and an idempotency key of
//! (posting type, kind, legal entity, subscription, "", "invoice", invoice
//! id, discriminator), the discriminator being the tax code or the command
//! id: the same command on the same invoice always yields the same keys.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use super::state::InvoiceState;
use crate::calendar;
use crate::contracts::{InvoiceLine, JournalLine, Posting, PostingType, Side, WindowKind};
use crate::money;

/// Version of these postings' business keys.
pub const INVOICE_POSTING_KEY_VERSION: u32 = 1;

/// The local date (the invoice's time zone) of `t`, `YYYY-MM-DD`.
pub fn local_date(st: &InvoiceState, t: DateTime<Utc>) -> Result<String, calendar::CalendarError> {
    let tz = calendar::parse_tz(&st.doc.time_zone)?;
    Ok(t.with_timezone(&tz)
        .date_naive()
        .format("%Y-%m-%d")
        .to_string())
}

/// The last local date of the service interval: the date of everything
/// posted at approval, as of the invoice lines.
pub fn period_date(st: &InvoiceState) -> Result<String, calendar::CalendarError> {
    local_date(st, st.doc.service_interval.end - Duration::milliseconds(1))
}

/// A posting of the invoice with nothing but its identity.
pub fn base(
    st: &InvoiceState,
    posting_type: PostingType,
    kind: &str,
    discriminator: &str,
    accounting_date: String,
) -> Posting {
    let d = &st.doc;
    let business_key: Vec<String> = vec![
        posting_type.as_str().to_string(),
        kind.to_string(),
        d.legal_entity.clone(),
        d.subscription_id.clone(),
        String::new(),
        "invoice".to_string(),
        d.invoice_id.clone(),
        discriminator.to_string(),
    ];
    let parts: Vec<&str> = business_key.iter().map(String::as_str).collect();
    Posting {
        posting_type,
        kind: kind.to_string(),
        idempotency_key: money::idempotency_key(&parts, INVOICE_POSTING_KEY_VERSION),
        business_key,
        key_version: INVOICE_POSTING_KEY_VERSION,
        legal_entity: d.legal_entity.clone(),
        customer_id: d.customer.id.clone(),
        erp_customer_id: d.customer.erp_customer_id.clone(),
        subscription_id: d.subscription_id.clone(),
        plan_id: d.plan_id.clone(),
        plan_version: d.plan_version,
        currency: d.currency.clone(),
        accounting_date,
        billing_period: d.service_interval.clone(),
        window_kind: WindowKind::PeriodClose,
        window: d.service_interval.clone(),
        adjusts: None,
        segment_id: None,
        segment_key: None,
        meter: None,
        lines: Vec::new(),
        invoice_line: None,
        control_total: None,
        invoice_id: Some(d.invoice_id.clone()),
    }
}

/// A journal entry of `lines` (zero amounts dropped); None when nothing
/// is left. The caller checks the balance.
pub fn journal(
    st: &InvoiceState,
    kind: &str,
    discriminator: &str,
    date: &str,
    lines: Vec<(String, Side, Decimal)>,
) -> Option<Posting> {
    let lines: Vec<JournalLine> = lines
        .into_iter()
        .filter(|(_, _, amount)| !amount.is_zero())
        .map(|(account, side, amount)| JournalLine {
            account,
            side,
            amount,
        })
        .collect();
    entry(st, kind, discriminator, date, lines)
}

/// A two-line entry Dr `debit`, Cr `credit` (sides swapped when negative).
pub fn pair(
    st: &InvoiceState,
    kind: &str,
    discriminator: &str,
    date: &str,
    debit: &str,
    credit: &str,
    amount: Decimal,
) -> Option<Posting> {
    let lines = JournalLine::pair(debit, credit, amount)?;
    entry(st, kind, discriminator, date, lines)
}

fn entry(
    st: &InvoiceState,
    kind: &str,
    discriminator: &str,
    date: &str,
    lines: Vec<JournalLine>,
) -> Option<Posting> {
    if lines.is_empty() {
        return None;
    }
    let mut p = base(
        st,
        PostingType::JournalEntry,
        kind,
        discriminator,
        date.to_string(),
    );
    p.lines = lines;
    Some(p)
}

/// An invoice line posting.
pub fn line(
    st: &InvoiceState,
    kind: &str,
    discriminator: &str,
    date: &str,
    line: InvoiceLine,
) -> Posting {
    let mut p = base(
        st,
        PostingType::InvoiceLine,
        kind,
        discriminator,
        date.to_string(),
    );
    p.invoice_line = Some(line);
    p
}
