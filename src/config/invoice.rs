//! Settings of the invoice stage and `meterline invoices` (section
//! `[invoice]`): the approval policy, its hold rules, tax, and the actors
//! whose commands are accepted.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Default bound of `meterline invoices <command>` waiting for the new status.
pub const DEFAULT_INVOICE_WAIT_TIMEOUT_S: u64 = 30;
/// Longest command reason kept on an invoice's history, in bytes.
pub const MAX_COMMAND_REASON_BYTES: usize = 1_024;
/// Largest invoice document (one record on `finance.invoices`, JSON): half
/// of Kafka's default message limit (1,000,000 bytes for librdkafka's
/// `message.max.bytes`, 1 MiB for a topic's `max.message.bytes`), so the
/// invoice stage's state record, which holds the document, fits too. A
/// command that would make a document larger is refused
/// (`invoice_too_large`) instead of failing at the broker.
pub const INVOICE_DOC_MAX_BYTES: usize = 512 * 1024;

/// How an invoice leaves `draft` at its period close.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalMode {
    /// Approved and posted at once unless a hold rule holds it.
    Auto,
    /// Every invoice waits for an `approve` command.
    Manual,
}

/// Where tax comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaxMode {
    /// No tax lines (tax is computed elsewhere, e.g. by the ERP).
    None,
    /// One tax line per tax code from `ref.tax_rates`; a line whose tax
    /// code has no rate holds the invoice (`tax_rate_missing`).
    Table,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceConfig {
    /// `auto` (default) or `manual`.
    #[serde(default = "approval")]
    pub approval: ApprovalMode,
    /// Hold rule `total_above`: currency -> amount; an invoice whose total
    /// is above it waits for approval. Decimal strings (`{ USD = "10000" }`).
    /// Written as strings so no amount passes through a float.
    #[serde(default)]
    pub hold_total_above: BTreeMap<String, String>,
    /// Hold rule `total_change`: an invoice whose total differs from the
    /// subscription's previous invoice by more than this ratio of it
    /// (`"0.5"` = 50 %) waits. Unset: off.
    #[serde(default)]
    pub hold_change_above_ratio: Option<String>,
    /// Hold rule `parked_events`: the customer has events parked (revenue
    /// at risk) with event times in the service interval.
    #[serde(default)]
    pub hold_on_parked_events: bool,
    /// Hold rule `late_adjustments`: the invoice carries adjustments of
    /// earlier, already closed periods (late events).
    #[serde(default)]
    pub hold_on_late_adjustments: bool,
    /// `none` (default) or `table`.
    #[serde(default = "tax")]
    pub tax: TaxMode,
    /// Actor -> HMAC-SHA256 key (hex). When not empty, every operator
    /// command must be signed by its actor's key; unknown actors, unsigned
    /// and wrongly signed commands are dead-lettered.
    #[serde(default)]
    pub actor_keys_hex: BTreeMap<String, String>,
    /// How long `meterline invoices <command>` waits for the new status.
    #[serde(default = "wait_timeout_s")]
    pub wait_timeout_s: u64,
}

impl std::fmt::Debug for InvoiceConfig {
    /// Keys are secrets: only the actors are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InvoiceConfig")
            .field("approval", &self.approval)
            .field("hold_total_above", &self.hold_total_above)
            .field("hold_change_above_ratio", &self.hold_change_above_ratio)
            .field("hold_on_parked_events", &self.hold_on_parked_events)
            .field("hold_on_late_adjustments", &self.hold_on_late_adjustments)
            .field("tax", &self.tax)
            .field("actors", &self.actor_keys_hex.keys().collect::<Vec<_>>())
            .field("wait_timeout_s", &self.wait_timeout_s)
            .finish()
    }
}

fn approval() -> ApprovalMode {
    ApprovalMode::Auto
}
fn tax() -> TaxMode {
    TaxMode::None
}
fn wait_timeout_s() -> u64 {
    DEFAULT_INVOICE_WAIT_TIMEOUT_S
}

impl Default for InvoiceConfig {
    fn default() -> Self {
        InvoiceConfig {
            approval: approval(),
            hold_total_above: BTreeMap::new(),
            hold_change_above_ratio: None,
            hold_on_parked_events: false,
            hold_on_late_adjustments: false,
            tax: tax(),
            actor_keys_hex: BTreeMap::new(),
            wait_timeout_s: wait_timeout_s(),
        }
    }
}

impl InvoiceConfig {
    /// Refuses values that cannot be meant.
    pub fn check(&self) -> Result<(), String> {
        for (currency, text) in &self.hold_total_above {
            match text.parse::<Decimal>() {
                Ok(amount) if !amount.is_sign_negative() => {}
                _ => {
                    return Err(format!(
                    "invoice.hold_total_above.{currency} ({text:?}) must be a decimal string >= 0"
                ))
                }
            }
        }
        if let Some(text) = &self.hold_change_above_ratio {
            match text.parse::<Decimal>() {
                Ok(ratio) if !ratio.is_sign_negative() => {}
                _ => {
                    return Err(format!(
                        "invoice.hold_change_above_ratio ({text:?}) must be a decimal string >= 0"
                    ))
                }
            }
        }
        for (actor, key) in &self.actor_keys_hex {
            if key.is_empty() || hex::decode(key).is_err() {
                return Err(format!("invoice.actor_keys_hex.{actor}: not a hex string"));
            }
        }
        if self.wait_timeout_s == 0 {
            return Err("invoice.wait_timeout_s must be > 0".into());
        }
        Ok(())
    }

    /// Rule `total_above`'s threshold for `currency` (checked at load).
    pub fn total_above(&self, currency: &str) -> Option<Decimal> {
        self.hold_total_above.get(currency)?.parse().ok()
    }

    /// Rule `total_change`'s ratio (checked at load).
    pub fn change_above_ratio(&self) -> Option<Decimal> {
        self.hold_change_above_ratio.as_ref()?.parse().ok()
    }

    /// The key of `actor`, decoded (checked at load).
    pub fn actor_key(&self, actor: &str) -> Option<Vec<u8>> {
        self.actor_keys_hex
            .get(actor)
            .and_then(|k| hex::decode(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_post_every_invoice_as_before() {
        let c = InvoiceConfig::default();
        assert_eq!(c.approval, ApprovalMode::Auto);
        assert_eq!(c.tax, TaxMode::None);
        assert!(c.hold_total_above.is_empty() && c.hold_change_above_ratio.is_none());
        assert!(!c.hold_on_parked_events && !c.hold_on_late_adjustments);
        assert!(c.check().is_ok());
    }

    #[test]
    fn keys_are_not_shown_and_bad_values_are_refused() {
        let mut c = InvoiceConfig::default();
        c.actor_keys_hex.insert("alice".into(), "00ff".into());
        let shown = format!("{c:?}");
        assert!(
            shown.contains("alice") && !shown.contains("00ff"),
            "{shown}"
        );
        c.actor_keys_hex.insert("bob".into(), "zz".into());
        assert!(c.check().unwrap_err().contains("bob"));
        let mut c = InvoiceConfig::default();
        c.hold_total_above.insert("USD".into(), "-1".into());
        assert!(c.check().unwrap_err().contains("USD"));
        c.hold_total_above.insert("USD".into(), "1000.50".into());
        assert_eq!(c.total_above("USD"), Some(Decimal::new(100050, 2)));
        c.hold_change_above_ratio = Some("x".into());
        assert!(c.check().is_err());
    }
}
