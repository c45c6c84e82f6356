//! The approval policy: which rules hold an invoice when its period closes.
//! Each rule that holds names itself and what it saw.

use rust_decimal::Decimal;

use super::book::gross;
use super::state::InvoiceState;
use crate::config::{ApprovalMode, InvoiceConfig};
use crate::contracts::Hold;

/// What the rules look at besides the invoice.
pub struct Facts {
    /// The subscription's previous invoice's gross, if any.
    pub previous_gross: Option<Decimal>,
    /// Events of the customer parked with times in the service interval.
    pub parked_in_interval: bool,
    /// Tax codes of the invoice with no rate.
    pub tax_codes_missing: Vec<String>,
    /// Service credits would be drawn but the plan has no credits account.
    pub credits_account_missing: bool,
}

pub fn holds(st: &InvoiceState, config: &InvoiceConfig, facts: &Facts) -> Vec<Hold> {
    let mut out = Vec::new();
    let mut hold = |rule: &str, detail: String| {
        out.push(Hold {
            rule: rule.to_string(),
            detail,
        })
    };
    let total = gross(&st.doc);
    let currency = &st.doc.currency;
    if config.approval == ApprovalMode::Manual {
        hold("manual_approval", "invoice.approval = manual".into());
    }
    if let Some(limit) = config.total_above(currency) {
        if total > limit {
            hold(
                "total_above",
                format!("total {total} {currency} is above {limit} {currency}"),
            );
        }
    }
    if let (Some(ratio), Some(previous)) = (config.change_above_ratio(), facts.previous_gross) {
        if !previous.is_zero() {
            let change = ((total - previous) / previous).abs();
            if change > ratio {
                hold(
                    "total_change",
                    format!(
                        "total {total} changed by {} % from the previous invoice's {previous} (limit {} %)",
                        (change * Decimal::ONE_HUNDRED).round_dp(2),
                        (ratio * Decimal::ONE_HUNDRED).round_dp(2)
                    ),
                );
            }
        }
    }
    if config.hold_on_parked_events && facts.parked_in_interval {
        hold(
            "parked_events",
            "the customer has parked events (revenue at risk) in the service interval".into(),
        );
    }
    if config.hold_on_late_adjustments && st.has_adjustments {
        hold(
            "late_adjustments",
            "the invoice adjusts earlier, closed periods (late events)".into(),
        );
    }
    if !facts.tax_codes_missing.is_empty() {
        hold(
            "tax_rate_missing",
            format!(
                "no rate in ref.tax_rates for {} of legal entity {}",
                facts.tax_codes_missing.join(", "),
                st.doc.legal_entity
            ),
        );
    }
    if facts.credits_account_missing {
        hold(
            "gl_account_missing",
            "service credits to draw but the plan version has no gl_accounts.credits: add it to its record on ref.plans, then approve".into(),
        );
    }
    out
}
