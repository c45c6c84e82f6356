//! The parked statistics (events per park code, revenue at risk) and how the
//! revenue at risk of one parked event is estimated.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::contracts::ValidatedEvent;
use crate::refdata::RefTables;

use super::parked::ParkedMeta;
use super::resolve::ParkReason;

/// A decimal written as a JSON string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(super) struct DecimalStr(#[serde(with = "rust_decimal::serde::str")] pub(super) Decimal);

/// Revenue at risk of one parked event (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct AtRisk {
    pub(super) currency: String,
    pub(super) amount: DecimalStr,
    /// The subscription's legal entity ("" in entries parked before it was kept).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(super) legal_entity: String,
}

/// The partition's parked statistics (key `S`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ParkedStats {
    /// Park code -> parked events; codes at 0 are removed.
    pub(super) by_reason: BTreeMap<String, u64>,
    /// Currency -> revenue at risk.
    pub(super) at_risk: BTreeMap<String, DecimalStr>,
    /// Currency -> legal entity -> revenue at risk (the same amounts).
    #[serde(default)]
    pub(super) at_risk_by_entity: BTreeMap<String, BTreeMap<String, DecimalStr>>,
}

impl ParkedStats {
    pub(super) fn add(&mut self, meta: &ParkedMeta) {
        *self.by_reason.entry(meta.reason.clone()).or_default() += 1;
        if let Some(r) = &meta.at_risk {
            let total = self
                .at_risk
                .entry(r.currency.clone())
                .or_insert(DecimalStr(Decimal::ZERO));
            // Metrics only: an overflow (not reachable with real prices)
            // leaves the total as it was rather than failing the event.
            total.0 = total.0.checked_add(r.amount.0).unwrap_or(total.0);
            let by_entity = self
                .at_risk_by_entity
                .entry(r.currency.clone())
                .or_default()
                .entry(r.legal_entity.clone())
                .or_insert(DecimalStr(Decimal::ZERO));
            by_entity.0 = by_entity.0.checked_add(r.amount.0).unwrap_or(by_entity.0);
        }
    }

    pub(super) fn remove(&mut self, meta: &ParkedMeta) {
        if let Some(n) = self.by_reason.get_mut(&meta.reason) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_reason.remove(&meta.reason);
            }
        }
        if let Some(r) = &meta.at_risk {
            if let Some(total) = self.at_risk.get_mut(&r.currency) {
                total.0 = total.0.checked_sub(r.amount.0).unwrap_or(total.0);
                if total.0.is_zero() {
                    self.at_risk.remove(&r.currency);
                }
            }
            if let Some(entities) = self.at_risk_by_entity.get_mut(&r.currency) {
                if let Some(total) = entities.get_mut(&r.legal_entity) {
                    total.0 = total.0.checked_sub(r.amount.0).unwrap_or(total.0);
                    if total.0.is_zero() {
                        entities.remove(&r.legal_entity);
                    }
                }
                if entities.is_empty() {
                    self.at_risk_by_entity.remove(&r.currency);
                }
            }
        }
    }
}

/// See "Revenue at risk" in the module docs.
pub(super) fn revenue_at_risk(
    event: &ValidatedEvent,
    reason: &ParkReason,
    tables: &RefTables,
) -> Option<AtRisk> {
    let named = match reason {
        ParkReason::UnknownPlan { subscription, .. }
        | ParkReason::NoPlanVersion { subscription, .. }
        | ParkReason::NoChargeForMeter { subscription, .. }
        | ParkReason::CurrencyMismatch { subscription, .. }
        | ParkReason::NoBillingPeriod { subscription, .. } => Some(subscription.as_str()),
        ParkReason::UnknownMeter { .. }
        | ParkReason::UnknownCustomer { .. }
        | ParkReason::NoActiveSubscription { .. }
        | ParkReason::AmbiguousSubscription { .. }
        | ParkReason::CorrectionTargetParked { .. } => None,
    };
    let subscription = match named {
        Some(id) => tables.subscription(id)?,
        None => {
            let mut active = tables.active_subscriptions(&event.subject, event.time);
            let only = active.next()?;
            if active.next().is_some() {
                return None;
            }
            only
        }
    };
    let plan = tables.plan_effective_at(&subscription.plan_id, event.time)?;
    let mut total = Decimal::ZERO;
    let mut priced = false;
    for measure in &event.measures {
        let model = match subscription.price_overrides.get(&measure.meter) {
            Some(model) => model,
            None => match plan.charge(&measure.meter) {
                Some(charge) => &charge.model,
                None => continue,
            },
        };
        // COUNT and UNIQUE_COUNT measures carry no value: the event counts once.
        let quantity = measure.value.unwrap_or(Decimal::ONE);
        let price = at_risk_price(model, quantity, &event.data)?;
        total = total.checked_add(price)?;
        priced = true;
    }
    priced.then(|| AtRisk {
        currency: plan.currency.clone(),
        amount: DecimalStr(total),
        legal_entity: subscription.legal_entity.clone(),
    })
}

/// What one parked event would cost on its own: the price of its quantity,
/// a percentage charge's fee for one paid transaction, or a dynamic
/// charge's amount as the event carries it (None when it carries none).
fn at_risk_price(
    model: &crate::rating::ChargeModel,
    quantity: Decimal,
    data: &serde_json::Value,
) -> Option<Decimal> {
    use crate::rating::ChargeModel;
    match model {
        ChargeModel::Percentage(p) => p.paid(quantity, Decimal::ZERO).ok().map(|c| c.amount),
        ChargeModel::Dynamic {
            amount_property, ..
        } => crate::rating::dynamic_amount(data, amount_property).ok(),
        _ => model.price(quantity).ok(),
    }
}
