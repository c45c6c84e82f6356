//! Operator commands: what each does to an invoice and which entries it
//! posts. The table (status x command -> status, postings) is in README.md
//! ("Invoices"); every refusal is an [`InvoiceError`] with its code, and a
//! refused command changes nothing.

use rust_decimal::Decimal;

use super::book::{self, credit_memo};
use super::error::InvoiceError;
use super::postings::{self, local_date};
use super::state::{self, read, write, Balance, Grant, InvoiceState};
use super::{Approval, Changes, InvoiceProcessor};
use crate::config::ApprovalMode;
use crate::contracts::{Command, CommandKind, Dispute, DisputeOutcome, Hold, InvoiceStatus};
use crate::money;
use crate::runtime::{Ctx, StageError};

/// Applies operator command `cmd` (not a draft or notice).
pub fn apply(
    p: &mut InvoiceProcessor,
    ctx: &mut Ctx<'_>,
    cmd: &Command,
    ch: &mut Changes,
) -> Result<(), StageError> {
    if cmd.kind == CommandKind::Credit && cmd.invoice_id.is_none() {
        return grant(ctx, cmd);
    }
    let id = cmd.invoice_id.as_deref().ok_or_else(|| {
        InvoiceError::Malformed(format!("{} needs invoice_id", cmd.kind.as_str()))
    })?;
    let mut st = read::<InvoiceState>(ctx, &state::invoice_key(id))?
        .ok_or_else(|| InvoiceError::UnknownInvoice(id.to_string()))?;
    st.complete_accounts(&p.tables);
    if st.doc.customer.id != cmd.customer_id {
        return Err(InvoiceError::CustomerMismatch(format!(
            "invoice {id} is customer {}'s, not {}'s",
            st.doc.customer.id, cmd.customer_id
        ))
        .into());
    }
    match cmd.kind {
        CommandKind::Approve => approve(p, ctx, &mut st, cmd, ch)?,
        CommandKind::Hold => hold(&mut st, cmd)?,
        CommandKind::Release => release(p, ctx, &mut st, cmd, ch)?,
        CommandKind::Void => void(p, ctx, &mut st, cmd, ch)?,
        CommandKind::Credit => credit(&mut st, cmd, ch)?,
        CommandKind::DisputeOpen => dispute_open(&mut st, cmd, ch)?,
        CommandKind::DisputeResolve => dispute_resolve(&mut st, cmd, ch)?,
        CommandKind::Draft | CommandKind::EventParked | CommandKind::EventUnparked => {
            return Err(InvoiceError::Malformed("not an operator command".into()).into())
        }
    }
    ch.invoices.push(st);
    Ok(())
}

fn refuse(st: &InvoiceState, cmd: &Command, why: &'static str) -> InvoiceError {
    InvoiceError::InvalidTransition {
        command: cmd.kind.as_str(),
        invoice: st.doc.invoice_id.clone(),
        status: st.doc.status.as_str(),
        why,
    }
}

fn require(st: &InvoiceState, cmd: &Command, status: InvoiceStatus) -> Result<(), InvoiceError> {
    if st.doc.status == status {
        return Ok(());
    }
    Err(refuse(
        st,
        cmd,
        match st.doc.status {
            InvoiceStatus::Draft => "its period is still open",
            InvoiceStatus::PendingApproval => "it is not posted yet: approve or void it",
            InvoiceStatus::Approved | InvoiceStatus::Posted => "it is already posted",
            InvoiceStatus::Voided => "it is voided",
        },
    ))
}

/// Adds the invoice's tax now if its close could not (a rate was
/// missing), or refuses naming the codes still without a rate.
fn tax(p: &InvoiceProcessor, st: &mut InvoiceState) -> Result<(), InvoiceError> {
    if st.tax_applied {
        return Ok(());
    }
    let taxes = book::plan_tax(st, &p.tables, &p.invoice, p.rounding_mode)?
        .map_err(|missing| InvoiceError::TaxRateMissing(missing.join(", ")))?;
    book::apply_tax(st, taxes)
}

/// Approves and posts a held invoice on `cmd`, its actor's (tax first).
fn approve_by(
    p: &mut InvoiceProcessor,
    ctx: &mut Ctx<'_>,
    st: &mut InvoiceState,
    cmd: &Command,
    draw_credits: bool,
    ch: &mut Changes,
) -> Result<(), StageError> {
    tax(p, st)?;
    let how = Approval {
        action: cmd.kind.as_str(),
        actor: &cmd.actor,
        draw_credits,
    };
    p.approve_now(ctx, st, cmd, how, ch)
}

fn approve(
    p: &mut InvoiceProcessor,
    ctx: &mut Ctx<'_>,
    st: &mut InvoiceState,
    cmd: &Command,
    ch: &mut Changes,
) -> Result<(), StageError> {
    require(st, cmd, InvoiceStatus::PendingApproval)?;
    approve_by(p, ctx, st, cmd, true, ch)
}

fn hold(st: &mut InvoiceState, cmd: &Command) -> Result<(), InvoiceError> {
    require(st, cmd, InvoiceStatus::PendingApproval)?;
    st.doc.holds.push(Hold {
        rule: "held".to_string(),
        detail: format!("held by {}: {}", cmd.actor, cmd.reason),
    });
    book::record(st, InvoiceStatus::PendingApproval, "hold", &cmd.actor, cmd);
    Ok(())
}

/// Clears every hold: with `approval = "auto"` the invoice is approved and
/// posted; with `manual` it still waits for `approve`.
fn release(
    p: &mut InvoiceProcessor,
    ctx: &mut Ctx<'_>,
    st: &mut InvoiceState,
    cmd: &Command,
    ch: &mut Changes,
) -> Result<(), StageError> {
    require(st, cmd, InvoiceStatus::PendingApproval)?;
    if p.invoice.approval == ApprovalMode::Manual {
        st.doc.holds = vec![Hold {
            rule: "manual_approval".to_string(),
            detail: "released; invoice.approval = manual: waits for approve".to_string(),
        }];
        book::record(
            st,
            InvoiceStatus::PendingApproval,
            "release",
            &cmd.actor,
            cmd,
        );
        return Ok(());
    }
    approve_by(p, ctx, st, cmd, true, ch)
}

/// A full credit memo of what is still open; a held invoice is posted
/// first (its accruals must clear) and credited in the same transaction.
fn void(
    p: &mut InvoiceProcessor,
    ctx: &mut Ctx<'_>,
    st: &mut InvoiceState,
    cmd: &Command,
    ch: &mut Changes,
) -> Result<(), StageError> {
    match st.doc.status {
        // Posted without drawing service credits: they stay the customer's.
        InvoiceStatus::PendingApproval => approve_by(p, ctx, st, cmd, false, ch)?,
        InvoiceStatus::Posted if st.doc.totals.disputed > Decimal::ZERO => {
            return Err(refuse(st, cmd, "a dispute is open: resolve it first").into());
        }
        InvoiceStatus::Posted => {}
        _ => require(st, cmd, InvoiceStatus::Posted)?,
    }
    let open = st.doc.totals.open;
    if open > Decimal::ZERO {
        let receivable = st.gl_accounts.receivable.clone();
        ch.postings
            .extend(credit_memo(st, cmd, open, "void", &receivable)?);
    }
    book::record(st, InvoiceStatus::Voided, "void", &cmd.actor, cmd);
    Ok(())
}

/// An amount of the invoice's currency: > 0, within its minor unit.
fn amount(st: &InvoiceState, value: Decimal, what: &str) -> Result<Decimal, InvoiceError> {
    let exponent = money::minor_unit_exponent(&st.doc.currency)?;
    if value <= Decimal::ZERO || !money::fits_minor_unit(value, exponent) {
        return Err(InvoiceError::InvalidAmount(format!(
            "{what} {value} must be > 0 with at most {exponent} decimals ({})",
            st.doc.currency
        )));
    }
    // The currency's fixed scale (5 -> 5.00), as every other posted amount.
    Ok(money::round_to_exponent(
        value,
        exponent,
        money::RoundingMode::HalfEven,
    ))
}

/// Within what is still open on the invoice.
fn within_open(st: &InvoiceState, value: Decimal) -> Result<(), InvoiceError> {
    if value > st.doc.totals.open {
        return Err(InvoiceError::ExceedsOpen {
            invoice: st.doc.invoice_id.clone(),
            amount: value,
            open: st.doc.totals.open,
        });
    }
    Ok(())
}

/// A credit memo of `amount`, or of `percent` of the invoice's total
/// (rounded once, half-even).
fn credit(st: &mut InvoiceState, cmd: &Command, ch: &mut Changes) -> Result<(), StageError> {
    require(st, cmd, InvoiceStatus::Posted)?;
    let value = match (cmd.amount, cmd.percent) {
        (Some(a), None) => amount(st, a, "amount")?,
        (None, Some(pct)) if pct > Decimal::ZERO && pct <= Decimal::ONE_HUNDRED => {
            let exact = st.doc.totals.total * pct / Decimal::ONE_HUNDRED;
            let rounded =
                money::round_to_minor(exact, &st.doc.currency, money::RoundingMode::HalfEven)
                    .map_err(InvoiceError::from)?;
            amount(st, rounded, "percent of the total")?
        }
        (None, Some(pct)) => {
            return Err(
                InvoiceError::InvalidAmount(format!("percent {pct} is not in (0, 100]")).into(),
            )
        }
        _ => {
            return Err(InvoiceError::Malformed(
                "credit of an invoice needs exactly one of amount and percent".into(),
            )
            .into())
        }
    };
    within_open(st, value)?;
    let receivable = st.gl_accounts.receivable.clone();
    ch.postings
        .extend(credit_memo(st, cmd, value, "credit", &receivable)?);
    book::record(st, InvoiceStatus::Posted, "credit", &cmd.actor, cmd);
    Ok(())
}

/// A service credit to the customer's balance in `currency`: no posting
/// now; drawn as a credit line by the next invoices' approval.
fn grant(ctx: &mut Ctx<'_>, cmd: &Command) -> Result<(), StageError> {
    let currency = cmd.currency.as_deref().ok_or_else(|| {
        InvoiceError::Malformed("a credit without invoice_id needs a currency".into())
    })?;
    let exponent = money::minor_unit_exponent(currency).map_err(InvoiceError::from)?;
    let value = cmd
        .amount
        .ok_or_else(|| InvoiceError::Malformed("a service credit needs an amount".into()))?;
    if value <= Decimal::ZERO || !money::fits_minor_unit(value, exponent) {
        return Err(InvoiceError::InvalidAmount(format!(
            "amount {value} must be > 0 with at most {exponent} decimals ({currency})"
        ))
        .into());
    }
    if cmd.expires.is_some_and(|e| e <= cmd.time) {
        return Err(
            InvoiceError::InvalidAmount("expires is not after the command's time".into()).into(),
        );
    }
    let key = state::balance_key(&cmd.customer_id, currency);
    let mut balance = read::<Balance>(ctx, &key)?.unwrap_or_default();
    balance.grants.push(Grant {
        id: cmd.id.clone(),
        remaining: money::round_to_exponent(value, exponent, money::RoundingMode::HalfEven),
        expires: cmd.expires,
        granted_at: cmd.time,
    });
    write(ctx, key, &balance)
}

fn dispute_open(st: &mut InvoiceState, cmd: &Command, ch: &mut Changes) -> Result<(), StageError> {
    require(st, cmd, InvoiceStatus::Posted)?;
    let value = cmd
        .amount
        .ok_or_else(|| InvoiceError::Malformed("dispute_open needs an amount".into()))?;
    let value = amount(st, value, "amount")?;
    within_open(st, value)?;
    let disputed = st
        .gl_accounts
        .disputed_receivable
        .clone()
        .ok_or(InvoiceError::GlAccountMissing("disputed_receivable"))?;
    let date = local_date(st, cmd.time).map_err(InvoiceError::from)?;
    let receivable = st.gl_accounts.receivable.clone();
    ch.postings.extend(postings::pair(
        st,
        "dispute_open",
        &cmd.id,
        &date,
        &disputed,
        &receivable,
        value,
    ));
    st.doc.disputes.push(Dispute {
        id: cmd.id.clone(),
        amount: value,
        status: "open".to_string(),
        opened_by: cmd.actor.clone(),
        reason: cmd.reason.clone(),
        opened_at: cmd.time,
        resolved_by: None,
        resolved_at: None,
    });
    book::recompute(&mut st.doc)?;
    book::record(st, InvoiceStatus::Posted, "dispute_open", &cmd.actor, cmd);
    Ok(())
}

/// `won`: the disputed receivable goes back to receivable; `lost`: a
/// credit memo of the disputed amount, credited to the disputed receivable.
fn dispute_resolve(
    st: &mut InvoiceState,
    cmd: &Command,
    ch: &mut Changes,
) -> Result<(), StageError> {
    require(st, cmd, InvoiceStatus::Posted)?;
    let (Some(dispute_id), Some(outcome)) = (cmd.dispute_id.as_deref(), cmd.outcome) else {
        return Err(
            InvoiceError::Malformed("dispute_resolve needs dispute_id and outcome".into()).into(),
        );
    };
    let unknown = || InvoiceError::UnknownDispute {
        invoice: st.doc.invoice_id.clone(),
        dispute: dispute_id.to_string(),
    };
    let index = st
        .doc
        .disputes
        .iter()
        .position(|d| d.id == dispute_id && d.status == "open")
        .ok_or_else(unknown)?;
    let value = st
        .doc
        .disputes
        .get(index)
        .map(|d| d.amount)
        .ok_or_else(unknown)?;
    let disputed = st
        .gl_accounts
        .disputed_receivable
        .clone()
        .ok_or(InvoiceError::GlAccountMissing("disputed_receivable"))?;
    let receivable = st.gl_accounts.receivable.clone();
    let status = match outcome {
        DisputeOutcome::Won => {
            let date = local_date(st, cmd.time).map_err(InvoiceError::from)?;
            ch.postings.extend(postings::pair(
                st,
                "dispute_won",
                &cmd.id,
                &date,
                &receivable,
                &disputed,
                value,
            ));
            "won"
        }
        DisputeOutcome::Lost => "lost",
    };
    if let Some(d) = st.doc.disputes.get_mut(index) {
        d.status = status.to_string();
        d.resolved_by = Some(cmd.actor.clone());
        d.resolved_at = Some(cmd.time);
    }
    book::recompute(&mut st.doc)?;
    if outcome == DisputeOutcome::Lost {
        ch.postings
            .extend(credit_memo(st, cmd, value, "dispute_lost", &disputed)?);
    }
    book::record(
        st,
        InvoiceStatus::Posted,
        "dispute_resolve",
        &cmd.actor,
        cmd,
    );
    Ok(())
}
