//! What a change does to one invoice and which postings it makes: drafts
//! adding lines, tax and service credits at approval, credit memos and
//! disputes. Pure functions of the [`InvoiceState`] (and the balance or the
//! tax table they are given); the processor loads and stores.

use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;

use super::error::InvoiceError;
use super::postings::{self, local_date, period_date};
use super::state::{Balance, InvoiceState, TaxApplied};
use crate::config::{InvoiceConfig, TaxMode};
use crate::contracts::{
    Command, CreditMemo, DraftPart, Invoice, InvoiceDocLine, InvoiceLine, InvoiceStatus,
    InvoiceTotals, Posting, PostingType, Side, StatusChange,
};
use crate::money::{self, RoundingMode};
use crate::refdata::RefTables;

/// Line kinds that make the subtotal (what usage and the plan charge).
const CHARGE_LINE_KINDS: [&str; 3] = ["usage", "base_fee", "minimum_true_up"];

/// A new invoice for the first draft part that names it.
pub fn open(part: &DraftPart, invoice_id: &str) -> InvoiceState {
    InvoiceState {
        doc: Invoice {
            invoice_id: invoice_id.to_string(),
            version: 0,
            customer: part.customer.clone(),
            subscription_id: part.subscription_id.clone(),
            plan_id: part.plan_id.clone(),
            plan_version: part.plan_version,
            legal_entity: part.legal_entity.clone(),
            currency: part.currency.clone(),
            time_zone: part.time_zone.clone(),
            service_interval: part.service_interval.clone(),
            status: InvoiceStatus::Draft,
            holds: Vec::new(),
            lines: Vec::new(),
            totals: InvoiceTotals::default(),
            credit_memos: Vec::new(),
            disputes: Vec::new(),
            postings: Vec::new(),
            history: Vec::new(),
        },
        pending: Vec::new(),
        gl_accounts: part.gl_accounts.clone(),
        tax_code: part.tax_code.clone(),
        has_adjustments: false,
        taxes: Vec::new(),
        tax_applied: false,
        supplements: 0,
        is_supplement: false,
    }
}

/// Adds a draft part's lines and pending postings.
pub fn add_part(st: &mut InvoiceState, part: &DraftPart) -> Result<(), InvoiceError> {
    if part.currency != st.doc.currency {
        return Err(InvoiceError::CurrencyMismatch {
            invoice: st.doc.currency.clone(),
            draft: part.currency.clone(),
        });
    }
    st.has_adjustments |= part.adjusts.is_some();
    // The plan version of the period close (in force at its start) wins.
    if part.closes {
        st.doc.plan_version = part.plan_version;
        st.tax_code = part.tax_code.clone();
    }
    for p in &part.postings {
        if let Some(l) = &p.invoice_line {
            st.doc.lines.push(doc_line(&p.kind, l, &p.idempotency_key));
        }
    }
    st.pending.extend(part.postings.iter().cloned());
    recompute(&mut st.doc)
}

fn doc_line(kind: &str, l: &InvoiceLine, posting_key: &str) -> InvoiceDocLine {
    InvoiceDocLine {
        kind: kind.to_string(),
        description: l.description.clone(),
        quantity: l.quantity,
        unit: l.unit.clone(),
        amount: l.amount,
        tax_code: l.tax_code.clone(),
        posting_key: posting_key.to_string(),
        breakdown: l.breakdown.clone(),
    }
}

fn sum(mut items: impl Iterator<Item = Decimal>) -> Result<Decimal, InvoiceError> {
    items.try_fold(Decimal::ZERO, |a, b| {
        a.checked_add(b).ok_or(InvoiceError::Overflow)
    })
}

/// The totals from the lines, credit memos and disputes.
pub fn recompute(doc: &mut Invoice) -> Result<(), InvoiceError> {
    let of = |kinds: &[&str]| {
        sum(doc
            .lines
            .iter()
            .filter(|l| kinds.contains(&l.kind.as_str()))
            .map(|l| l.amount))
    };
    let subtotal = of(&CHARGE_LINE_KINDS)?;
    let tax = of(&["tax"])?;
    // Drawn credits are negative lines; shown as a positive amount (and
    // never as a negative zero).
    let drawn = of(&["service_credit"])?;
    let service_credits = if drawn.is_zero() {
        Decimal::ZERO
    } else {
        -drawn
    };
    let total = subtotal
        .checked_add(tax)
        .and_then(|t| t.checked_sub(service_credits))
        .ok_or(InvoiceError::Overflow)?;
    let credited = sum(doc.credit_memos.iter().map(|m| m.amount))?;
    let disputed = sum(doc
        .disputes
        .iter()
        .filter(|d| d.status == "open")
        .map(|d| d.amount))?;
    let open = total
        .checked_sub(credited)
        .and_then(|t| t.checked_sub(disputed))
        .ok_or(InvoiceError::Overflow)?;
    doc.totals = InvoiceTotals {
        subtotal,
        tax,
        service_credits,
        total,
        credited,
        disputed,
        open,
    };
    Ok(())
}

/// The invoice's gross amount before service credits: what the hold rules
/// compare and what a credit memo's tax share is taken of.
pub fn gross(doc: &Invoice) -> Decimal {
    doc.totals.subtotal + doc.totals.tax
}

/// One tax line per tax code of the charge lines, at the rate in force at
/// the end of the service interval, rounded once per code. Err: the codes
/// with no rate (the invoice must wait).
pub fn plan_tax(
    st: &InvoiceState,
    tables: &RefTables,
    config: &InvoiceConfig,
    mode: RoundingMode,
) -> Result<Result<Vec<TaxApplied>, Vec<String>>, InvoiceError> {
    if config.tax == TaxMode::None {
        return Ok(Ok(Vec::new()));
    }
    let mut bases: std::collections::BTreeMap<&str, Decimal> = Default::default();
    for l in &st.doc.lines {
        if let (true, Some(code)) = (CHARGE_LINE_KINDS.contains(&l.kind.as_str()), &l.tax_code) {
            let b = bases.entry(code.as_str()).or_default();
            *b = b.checked_add(l.amount).ok_or(InvoiceError::Overflow)?;
        }
    }
    let at = st.doc.service_interval.end - Duration::milliseconds(1);
    let (mut taxes, mut missing) = (Vec::new(), Vec::new());
    for (code, base) in bases {
        let Some(rate) = tables.tax_rate_at(&st.doc.legal_entity, code, at) else {
            missing.push(code.to_string());
            continue;
        };
        let exact = base
            .checked_mul(rate.rate_percent)
            .ok_or(InvoiceError::Overflow)?
            / Decimal::ONE_HUNDRED;
        taxes.push(TaxApplied {
            tax_code: code.to_string(),
            rate_percent: rate.rate_percent,
            tax_payable_account: rate.tax_payable_account.clone(),
            amount: money::round_to_minor(exact, &st.doc.currency, mode)?,
        });
    }
    Ok(if missing.is_empty() {
        Ok(taxes)
    } else {
        Err(missing)
    })
}

/// Adds one tax line and entry per tax code to the invoice (pending: they
/// post with its approval), once: at its close when every rate is known,
/// else at its approval.
pub fn apply_tax(st: &mut InvoiceState, taxes: Vec<TaxApplied>) -> Result<(), InvoiceError> {
    if st.tax_applied {
        return Ok(());
    }
    let date = period_date(st)?;
    let receivable = st.gl_accounts.receivable.clone();
    for t in taxes {
        if t.amount.is_zero() {
            continue;
        }
        let line = InvoiceLine {
            description: format!("tax {} at {} %", t.tax_code, t.rate_percent),
            quantity: Decimal::ONE,
            unit: None,
            amount: t.amount,
            tax_code: Some(t.tax_code.clone()),
            breakdown: crate::rating::Parts::new(),
        };
        let p = postings::line(st, "tax", &t.tax_code, &date, line.clone());
        st.doc
            .lines
            .push(doc_line("tax", &line, &p.idempotency_key));
        st.pending.push(p);
        st.pending.extend(postings::pair(
            st,
            "tax",
            &t.tax_code,
            &date,
            &receivable,
            &t.tax_payable_account,
            t.amount,
        ));
        st.taxes.push(t);
    }
    st.tax_applied = true;
    recompute(&mut st.doc)
}

/// Approves and posts: the pending postings (with the tax, which
/// [`apply_tax`] must have added), then the service credit drawn from
/// `balance` (never more than the gross). Returns the postings in emission
/// order.
pub fn approve(
    st: &mut InvoiceState,
    balance: Option<&mut Balance>,
    at: DateTime<Utc>,
) -> Result<Vec<Posting>, InvoiceError> {
    debug_assert!(st.tax_applied);
    let date = period_date(st)?;
    let mut out = std::mem::take(&mut st.pending);
    if let Some(balance) = balance {
        out.extend(draw_service_credit(st, balance, at, &date)?);
    }
    recompute(&mut st.doc)?;
    st.doc
        .postings
        .extend(out.iter().map(|p| p.idempotency_key.clone()));
    Ok(out)
}

/// The service credit line and entry drawn at approval (Dr credits, Cr
/// receivable), none when nothing is available or the invoice is not
/// positive.
fn draw_service_credit(
    st: &mut InvoiceState,
    balance: &mut Balance,
    at: DateTime<Utc>,
    date: &str,
) -> Result<Vec<Posting>, InvoiceError> {
    balance.expire(at);
    let gross = gross(&st.doc);
    if gross <= Decimal::ZERO || balance.available() <= Decimal::ZERO {
        return Ok(Vec::new());
    }
    let credits = st
        .gl_accounts
        .credits
        .clone()
        .ok_or(InvoiceError::GlAccountMissing("credits"))?;
    let drawn = balance.draw(gross);
    let line = InvoiceLine {
        description: "service credit".to_string(),
        quantity: Decimal::ONE,
        unit: None,
        amount: -drawn,
        tax_code: None,
        breakdown: crate::rating::Parts::new(),
    };
    let p = postings::line(st, "service_credit", "", date, line.clone());
    st.doc
        .lines
        .push(doc_line("service_credit", &line, &p.idempotency_key));
    let mut out = vec![p];
    let receivable = st.gl_accounts.receivable.clone();
    out.extend(postings::pair(
        st,
        "service_credit",
        "",
        date,
        &credits,
        &receivable,
        drawn,
    ));
    Ok(out)
}

/// A credit memo of `amount` (gross) against the invoice, crediting
/// `from_account` (receivable, or disputed receivable for a lost dispute):
/// Dr credits (net), Dr tax payable (each tax line's share), Cr
/// `from_account`; plus a negative invoice line `credit_memo`.
pub fn credit_memo(
    st: &mut InvoiceState,
    cmd: &Command,
    amount: Decimal,
    cause: &str,
    from_account: &str,
) -> Result<Vec<Posting>, InvoiceError> {
    let credits = st
        .gl_accounts
        .credits
        .clone()
        .ok_or(InvoiceError::GlAccountMissing("credits"))?;
    let gross = gross(&st.doc);
    let mut tax_total = Decimal::ZERO;
    let mut lines = Vec::new();
    for t in &st.taxes {
        let share = if gross.is_zero() {
            Decimal::ZERO
        } else {
            let exact = amount.checked_mul(t.amount).ok_or(InvoiceError::Overflow)? / gross;
            money::round_to_minor(exact, &st.doc.currency, RoundingMode::HalfEven)?
        };
        tax_total += share;
        lines.push((t.tax_payable_account.clone(), Side::Debit, share));
    }
    let net = amount - tax_total;
    lines.insert(0, (credits, Side::Debit, net));
    lines.push((from_account.to_string(), Side::Credit, amount));
    let date = local_date(st, cmd.time)?;
    let line = InvoiceLine {
        description: format!("credit memo ({cause}): {}", cmd.reason),
        quantity: Decimal::ONE,
        unit: None,
        amount: -amount,
        tax_code: None,
        breakdown: crate::rating::Parts::new(),
    };
    let mut out = vec![postings::line(st, "credit_memo", &cmd.id, &date, line)];
    out.extend(postings::journal(st, "credit_memo", &cmd.id, &date, lines));
    st.doc.credit_memos.push(CreditMemo {
        id: cmd.id.clone(),
        amount,
        tax: tax_total,
        cause: cause.to_string(),
        actor: cmd.actor.clone(),
        reason: cmd.reason.clone(),
        time: cmd.time,
    });
    recompute(&mut st.doc)?;
    Ok(out)
}

/// Lists on the invoice, after what it lists, each of `postings` made for
/// it that it does not list yet: credit memos and disputes (approval lists
/// its own in [`approve`]), so the document names every posting of it.
pub fn list_postings(doc: &mut Invoice, postings: &[Posting]) {
    for p in postings {
        let ours = p.invoice_id.as_deref() == Some(doc.invoice_id.as_str());
        if ours && !doc.postings.contains(&p.idempotency_key) {
            doc.postings.push(p.idempotency_key.clone());
        }
    }
}

/// Records a change made by `actor` on `cmd` in the history.
pub fn record(
    st: &mut InvoiceState,
    status: InvoiceStatus,
    action: &str,
    actor: &str,
    cmd: &Command,
) {
    st.doc.status = status;
    st.doc.history.push(StatusChange {
        status,
        action: action.to_string(),
        actor: actor.to_string(),
        command_id: cmd.id.clone(),
        reason: cmd.reason.clone(),
        at: cmd.time,
    });
}

/// Checks every journal entry balances (a bug otherwise: fatal).
pub fn check_balanced(postings: &[Posting]) -> Result<(), InvoiceError> {
    for p in postings {
        if p.posting_type == PostingType::JournalEntry && !p.is_balanced() {
            let (debits, credits) = p.totals();
            return Err(InvoiceError::Unbalanced {
                key: p.idempotency_key.clone(),
                debits,
                credits,
            });
        }
    }
    Ok(())
}
