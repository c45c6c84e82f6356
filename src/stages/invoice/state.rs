//! What the invoice stage keeps (store 0, `invoices`), its keys and codec.
//!
//! | key | value |
//! |---|---|
//! | `I` invoice id | [`InvoiceState`] JSON: the document and what waits for approval |
//! | `L` subscription id | [`LastInvoice`] JSON: the latest closed invoice's total (rule `total_change`) |
//! | `B` customer id, currency | [`Balance`] JSON: service-credit grants not yet drawn |
//! | `C` customer id, command id | empty: the command was applied (a re-sent one changes nothing) |
//! | `P` customer id, event time ms, source, id | park code: an event of the customer is parked |
//! | `Q` invoice id | [`Watch`] JSON: an invoice waiting for approval or with an open dispute (what the gauges read) |
//!
//! Keys are built with [`crate::store::keys`]; every value is JSON with
//! decimals as strings.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::contracts::{optional_rfc3339, rfc3339_utc, Invoice, Posting};
use crate::refdata::{GlAccounts, RefTables};
use crate::runtime::{Ctx, StageError};
use crate::store::keys::KeyBuilder;
use crate::store::StoreId;

/// The store's index in the stage's store list.
pub const INVOICES: StoreId = 0;
const INVOICE_PREFIX: u8 = b'I';
const LAST_PREFIX: u8 = b'L';
const BALANCE_PREFIX: u8 = b'B';
const COMMAND_PREFIX: u8 = b'C';
const PARKED_PREFIX: u8 = b'P';
const WATCH_PREFIX: u8 = b'Q';

/// A tax line of an approved invoice, kept to split later credit memos.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaxApplied {
    pub tax_code: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate_percent: Decimal,
    pub tax_payable_account: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// One invoice as the stage keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceState {
    pub doc: Invoice,
    /// Postings of its drafts that wait for approval, in arrival order.
    pub pending: Vec<Posting>,
    pub gl_accounts: GlAccounts,
    /// The plan's tax code (base fee, true-up).
    pub tax_code: Option<String>,
    /// Some part adjusts an earlier, closed window (late events).
    pub has_adjustments: bool,
    /// Its tax lines (added at the close, or at approval when a rate was
    /// missing at the close; posted with the approval).
    pub taxes: Vec<TaxApplied>,
    /// The tax lines are on the invoice (perhaps none: no taxable line, or
    /// `invoice.tax = "none"`).
    #[serde(default)]
    pub tax_applied: bool,
    /// Supplementary invoices opened for drafts that arrived after this one
    /// closed (`<id>~1`, `<id>~2`, ...).
    pub supplements: u32,
    /// This is such a supplementary invoice (no `total_change` rule, not the
    /// subscription's last invoice).
    #[serde(default)]
    pub is_supplement: bool,
}

impl InvoiceState {
    /// Fills the credits and disputed-receivable accounts the invoice was
    /// drafted without (its windows carry the plan's accounts as they were
    /// when the usage was enriched) from its plan version's record as it is
    /// now. So adding an account to a plan serves invoices drafted before:
    /// a refused credit or dispute can be sent again. An account the
    /// invoice has is never changed: what was booked stays as booked.
    pub fn complete_accounts(&mut self, tables: &RefTables) {
        let Some(plan) = tables.plan(&self.doc.plan_id, self.doc.plan_version) else {
            return;
        };
        let (mine, plan) = (&mut self.gl_accounts, &plan.gl_accounts);
        if mine.credits.is_none() {
            mine.credits.clone_from(&plan.credits);
        }
        if mine.disputed_receivable.is_none() {
            mine.disputed_receivable
                .clone_from(&plan.disputed_receivable);
        }
    }
}

/// The latest closed invoice of a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastInvoice {
    pub invoice_id: String,
    #[serde(with = "rfc3339_utc")]
    pub service_start: DateTime<Utc>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
}

/// One service credit granted to a customer, partly drawn perhaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The `credit` command's id.
    pub id: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub remaining: Decimal,
    #[serde(default, with = "optional_rfc3339")]
    pub expires: Option<DateTime<Utc>>,
    #[serde(with = "rfc3339_utc")]
    pub granted_at: DateTime<Utc>,
}

/// A customer's service credits in one currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balance {
    pub grants: Vec<Grant>,
}

impl Balance {
    /// Drops the grants expired at `at`; returns what they still held.
    pub fn expire(&mut self, at: DateTime<Utc>) -> Decimal {
        let expired: Decimal = self
            .grants
            .iter()
            .filter(|g| g.expires.is_some_and(|e| e <= at))
            .map(|g| g.remaining)
            .sum();
        self.grants.retain(|g| g.expires.is_none_or(|e| e > at));
        expired
    }

    /// What can be drawn now.
    pub fn available(&self) -> Decimal {
        self.grants.iter().map(|g| g.remaining).sum()
    }

    /// Draws up to `max` (> 0), the grant expiring first first (grants
    /// without expiry last, then by grant time); returns what was drawn.
    pub fn draw(&mut self, max: Decimal) -> Decimal {
        self.grants.sort_by(|a, b| {
            (a.expires.is_none(), a.expires, a.granted_at, &a.id).cmp(&(
                b.expires.is_none(),
                b.expires,
                b.granted_at,
                &b.id,
            ))
        });
        let mut drawn = Decimal::ZERO;
        for g in &mut self.grants {
            let take = g.remaining.min(max - drawn);
            if take <= Decimal::ZERO {
                break;
            }
            g.remaining -= take;
            drawn += take;
        }
        self.grants.retain(|g| g.remaining > Decimal::ZERO);
        debug_assert!(drawn <= max);
        drawn
    }
}

/// What the gauges need of an invoice that waits or is disputed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub currency: String,
    pub legal_entity: String,
    /// Wall clock when it started waiting for approval (None: not waiting).
    pub pending_since_ms: Option<i64>,
    /// Its gross while it waits.
    #[serde(with = "rust_decimal::serde::str")]
    pub pending_amount: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub disputed: Decimal,
}

pub fn watch_key(invoice_id: &str) -> Vec<u8> {
    KeyBuilder::new(WATCH_PREFIX).str(invoice_id).build()
}

/// Every watch key.
pub fn watch_range() -> (Vec<u8>, Vec<u8>) {
    (vec![WATCH_PREFIX], vec![WATCH_PREFIX + 1])
}

/// Every balance key.
pub fn all_balances_range() -> (Vec<u8>, Vec<u8>) {
    (vec![BALANCE_PREFIX], vec![BALANCE_PREFIX + 1])
}

pub fn invoice_key(invoice_id: &str) -> Vec<u8> {
    KeyBuilder::new(INVOICE_PREFIX).str(invoice_id).build()
}

pub fn last_key(subscription_id: &str) -> Vec<u8> {
    KeyBuilder::new(LAST_PREFIX).str(subscription_id).build()
}

pub fn balance_key(customer_id: &str, currency: &str) -> Vec<u8> {
    KeyBuilder::new(BALANCE_PREFIX)
        .str(customer_id)
        .str(currency)
        .build()
}

/// All balances of a customer: `[from, to)`.
pub fn balance_range(customer_id: &str) -> (Vec<u8>, Vec<u8>) {
    let from = KeyBuilder::new(BALANCE_PREFIX).str(customer_id).build();
    let to = crate::lineage::prefix_end(&from);
    (from, to)
}

pub fn command_key(customer_id: &str, command_id: &str) -> Vec<u8> {
    KeyBuilder::new(COMMAND_PREFIX)
        .str(customer_id)
        .str(command_id)
        .build()
}

pub fn parked_key(customer_id: &str, event_ms: i64, source: &str, id: &str) -> Vec<u8> {
    KeyBuilder::new(PARKED_PREFIX)
        .str(customer_id)
        .i64(event_ms)
        .str(source)
        .str(id)
        .build()
}

/// Parked-event keys of a customer with event times in `[from_ms, to_ms)`.
pub fn parked_range(customer_id: &str, from_ms: i64, to_ms: i64) -> (Vec<u8>, Vec<u8>) {
    let key = |ms| {
        KeyBuilder::new(PARKED_PREFIX)
            .str(customer_id)
            .i64(ms)
            .build()
    };
    (key(from_ms), key(to_ms))
}

/// Reads a JSON value of the store; a value that does not parse is
/// corrupt state (fatal, never dead-lettered).
pub fn read<T: DeserializeOwned>(ctx: &Ctx<'_>, key: &[u8]) -> Result<Option<T>, StageError> {
    match ctx.stores.get(INVOICES, key)? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StageError::Fatal(format!("invoices store: corrupt value: {e}"))),
    }
}

pub fn write<T: Serialize>(ctx: &mut Ctx<'_>, key: Vec<u8>, value: &T) -> Result<(), StageError> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| StageError::Fatal(format!("invoices store: serializing: {e}")))?;
    ctx.stores.put(INVOICES, key, bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::keys::KeyReader;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn grant(id: &str, amount: Decimal, expires: Option<&str>, granted: &str) -> Grant {
        Grant {
            id: id.into(),
            remaining: amount,
            expires: expires.map(at),
            granted_at: at(granted),
        }
    }

    #[test]
    fn credits_expiring_first_are_drawn_first_and_never_more_than_asked() {
        let mut b = Balance {
            grants: vec![
                grant("forever", dec!(50), None, "2026-01-01T00:00:00Z"),
                grant(
                    "march",
                    dec!(20),
                    Some("2026-03-31T00:00:00Z"),
                    "2026-01-02T00:00:00Z",
                ),
                grant(
                    "old",
                    dec!(5),
                    Some("2026-02-01T00:00:00Z"),
                    "2026-01-03T00:00:00Z",
                ),
            ],
        };
        assert_eq!(b.expire(at("2026-02-01T00:00:00Z")), dec!(5));
        assert_eq!(b.available(), dec!(70));
        assert_eq!(b.draw(dec!(30)), dec!(30));
        assert_eq!(b.grants.len(), 1, "march drawn in full first");
        assert_eq!(b.grants[0].remaining, dec!(40));
        assert_eq!(b.draw(dec!(100)), dec!(40));
        assert!(b.grants.is_empty());
    }

    proptest! {
        #[test]
        fn parked_keys_round_trip_and_sort_by_time(
            customer in "[a-z0-9-]{1,12}", ms in -1_000_000_000_000i64..4_000_000_000_000, source in ".{0,8}", id in ".{0,8}"
        ) {
            let key = parked_key(&customer, ms, &source, &id);
            let mut r = KeyReader::new(&key, b'P').unwrap();
            prop_assert_eq!(r.str().unwrap(), customer.as_str());
            prop_assert_eq!(r.i64().unwrap(), ms);
            prop_assert_eq!(r.str().unwrap(), source.as_str());
            prop_assert_eq!(r.str().unwrap(), id.as_str());
            r.finish().unwrap();
            let (from, to) = parked_range(&customer, ms, ms + 1);
            prop_assert!(from.as_slice() <= key.as_slice() && key.as_slice() < to.as_slice());
            let (from, _) = parked_range(&customer, ms + 1, ms + 2);
            prop_assert!(key.as_slice() < from.as_slice());
        }
    }
}
