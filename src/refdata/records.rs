//! The reference record types, their Kafka keys and their validation.
//!
//! The JSON of every record is the serde form of its struct: unknown fields
//! are refused, decimals are strings, instants RFC 3339. Encoding a record
//! ([`RefRecord::to_json_bytes`]) writes one canonical form (instants in UTC
//! with `Z`, optional fields as `null`, maps sorted), so the same record
//! always produces the same topic value.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::serde_with::{optional_decimal_str, optional_rfc3339_utc};
use super::{RefError, RefKind};
use crate::calendar::{self, MAX_ANCHOR_DAY, MIN_ANCHOR_DAY};
use crate::contracts::rfc3339_utc;
use crate::money;
use crate::rating::ChargeModel;

/// Longest text field (id, name, account, tax code, meter slug) in bytes.
/// Generous for real ids; it keeps a broken producer from filling the tables
/// and every enriched event with megabytes of text.
pub const MAX_TEXT_LEN: usize = 256;

/// Separates plan id and version in a plan's Kafka key, `"<id>:<version>"`.
/// Plan ids must not contain it, so a key splits one way only.
pub const PLAN_KEY_SEPARATOR: char = ':';

/// The Kafka key of plan `id`, version `version`: `"<id>:<version>"`.
pub fn plan_key(id: &str, version: u32) -> String {
    format!("{id}{PLAN_KEY_SEPARATOR}{version}")
}

/// Splits a plan key into id and version. The version must be written in
/// canonical decimal (no sign, no leading zeros), so that one plan version
/// has exactly one key.
pub fn parse_plan_key(key: &str) -> Result<(&str, u32), RefError> {
    let invalid = |reason| RefError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    let (id, version_text) = key
        .rsplit_once(PLAN_KEY_SEPARATOR)
        .ok_or_else(|| invalid("a plan key is \"<id>:<version>\""))?;
    if id.is_empty() {
        return Err(invalid("the plan id is empty"));
    }
    let version: u32 = version_text
        .parse()
        .map_err(|_| invalid("the version is not an unsigned 32-bit integer"))?;
    if version.to_string() != version_text {
        return Err(invalid(
            "the version must be written without sign or leading zeros",
        ));
    }
    Ok((id, version))
}

/// What the three record types have in common.
pub trait Record: Serialize + DeserializeOwned {
    /// The table the record belongs to.
    const KIND: RefKind;

    /// The record's Kafka key on its compacted topic.
    fn key(&self) -> String;

    /// The checks beyond the JSON shape (see the module docs of
    /// [`crate::refdata`]); the first failing check is reported.
    fn validate(&self) -> Result<(), RefError>;
}

/// Lifecycle of a customer. Informational: enrich resolves usage of a
/// suspended or closed customer like any other (whether to bill it is a
/// finance decision, not a reason to lose the usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerStatus {
    Active,
    Suspended,
    Closed,
}

/// One customer, keyed by `id` on `ref.customers`. The id is the `subject`
/// of the customer's usage events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Customer {
    pub id: String,
    pub name: String,
    pub legal_entity: String,
    pub erp_customer_id: String,
    pub status: CustomerStatus,
}

impl Record for Customer {
    const KIND: RefKind = RefKind::Customers;

    fn key(&self) -> String {
        self.id.clone()
    }

    fn validate(&self) -> Result<(), RefError> {
        check_text("id", &self.id)?;
        check_text("name", &self.name)?;
        check_text("legal_entity", &self.legal_entity)?;
        check_text("erp_customer_id", &self.erp_customer_id)
    }
}

/// One subscription, keyed by `id` on `ref.subscriptions`. Effective-dated:
/// active on `[start, end)`, open-ended when `end` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    pub id: String,
    pub customer_id: String,
    pub plan_id: String,
    /// First instant the subscription is active (inclusive).
    #[serde(with = "rfc3339_utc")]
    pub start: DateTime<Utc>,
    /// First instant it is no longer active (exclusive); `None` = open.
    #[serde(default, with = "optional_rfc3339_utc")]
    pub end: Option<DateTime<Utc>>,
    /// Day of the month billing periods start on, 1..=31, clamped in short
    /// months (see [`crate::calendar`]).
    pub billing_anchor_day: u8,
    /// IANA time zone in which billing periods and days are local.
    pub time_zone: String,
    /// ISO 4217 code; must equal the plan's currency to be rated.
    pub currency: String,
    /// The legal entity that bills this subscription.
    pub legal_entity: String,
    /// Minimum spend per billing period, in `currency`.
    #[serde(default, with = "optional_decimal_str")]
    pub minimum_commitment: Option<Decimal>,
    /// Meter slug -> charge model replacing the plan's charge for that meter
    /// (or adding one the plan lacks).
    #[serde(default, deserialize_with = "map_or_null")]
    pub price_overrides: BTreeMap<String, ChargeModel>,
}

impl Subscription {
    /// Whether the subscription is active at `t`: `start <= t < end`.
    pub fn is_active_at(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && self.end.is_none_or(|end| t < end)
    }
}

impl Record for Subscription {
    const KIND: RefKind = RefKind::Subscriptions;

    fn key(&self) -> String {
        self.id.clone()
    }

    fn validate(&self) -> Result<(), RefError> {
        check_text("id", &self.id)?;
        check_text("customer_id", &self.customer_id)?;
        check_plan_id("plan_id", &self.plan_id)?;
        if let Some(end) = self.end {
            if end <= self.start {
                return Err(RefError::EndNotAfterStart {
                    start: self.start,
                    end,
                });
            }
        }
        if !(MIN_ANCHOR_DAY..=MAX_ANCHOR_DAY).contains(&self.billing_anchor_day) {
            return Err(RefError::InvalidAnchorDay(self.billing_anchor_day));
        }
        calendar::parse_tz(&self.time_zone)
            .map_err(|_| RefError::UnknownTimeZone(self.time_zone.clone()))?;
        check_currency(&self.currency)?;
        check_text("legal_entity", &self.legal_entity)?;
        if let Some(amount) = self.minimum_commitment {
            check_not_negative("minimum_commitment", amount)?;
        }
        for (meter, model) in &self.price_overrides {
            check_text("price_overrides (meter slug)", meter)?;
            check_charge(&format!("price_overrides.{meter}"), model)?;
        }
        Ok(())
    }
}

/// The general ledger accounts a plan's usage posts to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlAccounts {
    /// Credited for usage revenue (accruals, base fee, true-up).
    pub usage_revenue: String,
    /// Debited by accruals, cleared at period close.
    pub unbilled_receivable: String,
    /// Debited when invoice lines are issued.
    pub receivable: String,
    /// Debited by service credits and credit memos (credits and
    /// allowances, a contra-revenue account). Needed by the invoice stage
    /// only when a credit is drawn or issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<String>,
    /// Debited when part of an invoice is disputed, until the dispute ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disputed_receivable: Option<String>,
}

impl GlAccounts {
    /// The three accounts every plan has, and no credit or dispute account.
    pub fn new(usage_revenue: &str, unbilled_receivable: &str, receivable: &str) -> GlAccounts {
        GlAccounts {
            usage_revenue: usage_revenue.to_string(),
            unbilled_receivable: unbilled_receivable.to_string(),
            receivable: receivable.to_string(),
            credits: None,
            disputed_receivable: None,
        }
    }

    fn validate(&self) -> Result<(), RefError> {
        check_text("gl_accounts.usage_revenue", &self.usage_revenue)?;
        check_text("gl_accounts.unbilled_receivable", &self.unbilled_receivable)?;
        check_text("gl_accounts.receivable", &self.receivable)?;
        if let Some(account) = &self.credits {
            check_text("gl_accounts.credits", account)?;
        }
        if let Some(account) = &self.disputed_receivable {
            check_text("gl_accounts.disputed_receivable", account)?;
        }
        Ok(())
    }
}

/// A plan's charge for one meter: a [`ChargeModel`] plus an optional tax
/// code, in one JSON object, e.g.
/// `{"model": "per_unit", "unit_price": "0.002", "tax_code": "SW052000"}`.
///
/// The model's fields are flattened into the object, so an unknown field is
/// still refused: it reaches the model's own `deny_unknown_fields` check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanCharge {
    #[serde(flatten)]
    pub model: ChargeModel,
    /// Overrides the plan's `tax_code` for this meter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_code: Option<String>,
    /// Prorate a LATEST or MAX quantity over the billing period (see
    /// [`crate::rating::Timeline`]); applies to a subscription's price
    /// override of the meter too (an override changes the price, not how
    /// it is billed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prorate: bool,
}

/// One version of a plan, keyed by `"<id>:<version>"` on `ref.plans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub id: String,
    pub version: u32,
    /// The version applies from this instant until a greater version's
    /// `effective_from`.
    #[serde(with = "rfc3339_utc")]
    pub effective_from: DateTime<Utc>,
    /// ISO 4217 code of every price in the plan.
    pub currency: String,
    /// Fee per billing period, charged even without usage.
    #[serde(default, with = "optional_decimal_str")]
    pub base_fee: Option<Decimal>,
    /// Meter slug -> charge.
    pub charges: BTreeMap<String, PlanCharge>,
    pub gl_accounts: GlAccounts,
    /// Tax code of the plan's lines where a charge has none of its own (and
    /// of the base fee).
    #[serde(default)]
    pub tax_code: Option<String>,
}

impl Plan {
    /// The plan's charge for `meter`, if any.
    pub fn charge(&self, meter: &str) -> Option<&PlanCharge> {
        self.charges.get(meter)
    }

    /// How `meter` is priced for `subscription` under this plan version:
    /// the subscription's price override, else the plan's charge; the tax
    /// code, unit and proration always come from the plan (an override
    /// changes the price, not what is sold). None: neither prices it.
    pub fn resolve_charge(
        &self,
        subscription: &Subscription,
        meter: &crate::meter::Meter,
    ) -> Option<crate::contracts::ResolvedCharge> {
        use crate::contracts::ChargeSource;
        let plan_charge = self.charge(&meter.slug);
        let (charge, source) = match subscription.price_overrides.get(&meter.slug) {
            Some(model) => (model.clone(), ChargeSource::Override),
            None => (plan_charge?.model.clone(), ChargeSource::Plan),
        };
        Some(crate::contracts::ResolvedCharge {
            meter: meter.slug.clone(),
            aggregation: meter.aggregation,
            charge,
            source,
            tax_code: plan_charge
                .and_then(|c| c.tax_code.clone())
                .or_else(|| self.tax_code.clone()),
            unit: meter.unit_conversion.as_ref().map(|c| c.unit.clone()),
            prorate: plan_charge.is_some_and(|c| c.prorate),
        })
    }
}

impl Record for Plan {
    const KIND: RefKind = RefKind::Plans;

    fn key(&self) -> String {
        plan_key(&self.id, self.version)
    }

    fn validate(&self) -> Result<(), RefError> {
        check_plan_id("id", &self.id)?;
        check_currency(&self.currency)?;
        if let Some(amount) = self.base_fee {
            check_not_negative("base_fee", amount)?;
        }
        for (meter, charge) in &self.charges {
            check_text("charges (meter slug)", meter)?;
            check_charge(&format!("charges.{meter}"), &charge.model)?;
            if let Some(code) = &charge.tax_code {
                check_text(&format!("charges.{meter}.tax_code"), code)?;
            }
        }
        self.gl_accounts.validate()?;
        if let Some(code) = &self.tax_code {
            check_text("tax_code", code)?;
        }
        Ok(())
    }
}

/// Largest tax rate, in percent.
pub const MAX_TAX_RATE_PERCENT: Decimal = Decimal::ONE_HUNDRED;

/// One tax rate of a legal entity and tax code, effective from an instant
/// until the next row of the same pair, on `ref.tax_rates` keyed by
/// [`tax_rate_key`]. `rate` is in percent (`"20"` = 20 %).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaxRate {
    pub legal_entity: String,
    pub tax_code: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub rate_percent: Decimal,
    #[serde(with = "rfc3339_utc")]
    pub effective_from: DateTime<Utc>,
    /// Credited with the tax of every invoice approved at this rate.
    pub tax_payable_account: String,
}

/// The Kafka key of a tax rate row: the JSON array
/// `["<legal entity>","<tax code>","<effective from, RFC 3339 UTC>"]`.
pub fn tax_rate_key(legal_entity: &str, tax_code: &str, effective_from: &DateTime<Utc>) -> String {
    serde_json::json!([legal_entity, tax_code, rfc3339_utc::format(effective_from)]).to_string()
}

impl Record for TaxRate {
    const KIND: RefKind = RefKind::TaxRates;

    fn key(&self) -> String {
        tax_rate_key(&self.legal_entity, &self.tax_code, &self.effective_from)
    }

    fn validate(&self) -> Result<(), RefError> {
        check_text("legal_entity", &self.legal_entity)?;
        check_text("tax_code", &self.tax_code)?;
        check_text("tax_payable_account", &self.tax_payable_account)?;
        check_not_negative("rate_percent", self.rate_percent)?;
        if self.rate_percent > MAX_TAX_RATE_PERCENT {
            return Err(RefError::InvalidText {
                field: "rate_percent".into(),
                reason: format!(
                    "{} is above {MAX_TAX_RATE_PERCENT} percent",
                    self.rate_percent
                ),
            });
        }
        Ok(())
    }
}

/// A record of any of the four kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefRecord {
    Customer(Customer),
    Subscription(Subscription),
    Plan(Plan),
    TaxRate(TaxRate),
}

impl RefRecord {
    /// Parses and validates a record value of table `kind`.
    pub fn decode(kind: RefKind, value: &[u8]) -> Result<RefRecord, RefError> {
        let record = match kind {
            RefKind::Customers => RefRecord::Customer(decode_as(value)?),
            RefKind::Subscriptions => RefRecord::Subscription(decode_as(value)?),
            RefKind::Plans => RefRecord::Plan(decode_as(value)?),
            RefKind::TaxRates => RefRecord::TaxRate(decode_as(value)?),
        };
        Ok(record)
    }

    pub fn kind(&self) -> RefKind {
        match self {
            RefRecord::Customer(_) => Customer::KIND,
            RefRecord::Subscription(_) => Subscription::KIND,
            RefRecord::Plan(_) => Plan::KIND,
            RefRecord::TaxRate(_) => TaxRate::KIND,
        }
    }

    /// The record's Kafka key.
    pub fn key(&self) -> String {
        match self {
            RefRecord::Customer(record) => record.key(),
            RefRecord::Subscription(record) => record.key(),
            RefRecord::Plan(record) => record.key(),
            RefRecord::TaxRate(record) => record.key(),
        }
    }

    pub fn validate(&self) -> Result<(), RefError> {
        match self {
            RefRecord::Customer(record) => record.validate(),
            RefRecord::Subscription(record) => record.validate(),
            RefRecord::Plan(record) => record.validate(),
            RefRecord::TaxRate(record) => record.validate(),
        }
    }

    /// The record's canonical topic value.
    pub fn to_json_bytes(&self) -> Result<Vec<u8>, RefError> {
        let encoded = match self {
            RefRecord::Customer(record) => serde_json::to_vec(record),
            RefRecord::Subscription(record) => serde_json::to_vec(record),
            RefRecord::Plan(record) => serde_json::to_vec(record),
            RefRecord::TaxRate(record) => serde_json::to_vec(record),
        };
        encoded.map_err(|error| RefError::Encode(error.to_string()))
    }
}

/// Parses one record of type `T` and validates it.
fn decode_as<T: Record>(value: &[u8]) -> Result<T, RefError> {
    let record: T = serde_json::from_slice(value).map_err(|error| {
        let refused = RefError::from_json(&error);
        match refused {
            // serde names the visitor, not the rule; say how to fix it.
            RefError::SchemaMismatch(message) if message.contains(DECIMAL_EXPECTATION) => {
                RefError::SchemaMismatch(format!(
                    "{message} (decimals are JSON strings, e.g. \"0.50\")"
                ))
            }
            other => other,
        }
    })?;
    record.validate()?;
    Ok(record)
}

/// What rust_decimal's visitor says it expected; its presence in a serde
/// message means a decimal was given as something other than a string.
const DECIMAL_EXPECTATION: &str = "a Decimal type";

/// `price_overrides: null` reads as no overrides, like an absent field.
fn map_or_null<'de, D>(deserializer: D) -> Result<BTreeMap<String, ChargeModel>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<BTreeMap<String, ChargeModel>>::deserialize(deserializer)?.unwrap_or_default())
}

pub(super) fn check_text(field: &str, value: &str) -> Result<(), RefError> {
    let invalid = |reason: &str| {
        Err(RefError::InvalidText {
            field: field.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if value.is_empty() {
        return invalid("must not be empty");
    }
    if value.len() > MAX_TEXT_LEN {
        return invalid(&format!("is longer than {MAX_TEXT_LEN} bytes"));
    }
    if value.trim() != value {
        return invalid("must not start or end with whitespace");
    }
    if value.chars().any(char::is_control) {
        return invalid("must not contain control characters");
    }
    Ok(())
}

pub(super) fn check_plan_id(field: &str, value: &str) -> Result<(), RefError> {
    check_text(field, value)?;
    if value.contains(PLAN_KEY_SEPARATOR) {
        return Err(RefError::InvalidText {
            field: field.to_owned(),
            reason: format!(
                "a plan id must not contain {PLAN_KEY_SEPARATOR:?} (it separates id and version in the key)"
            ),
        });
    }
    Ok(())
}

fn check_currency(code: &str) -> Result<(), RefError> {
    money::minor_unit_exponent(code)
        .map(|_| ())
        .map_err(RefError::InvalidCurrency)
}

fn check_not_negative(field: &str, value: Decimal) -> Result<(), RefError> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(RefError::NegativeAmount {
            field: field.to_owned(),
            value,
        });
    }
    Ok(())
}

fn check_charge(field: &str, model: &ChargeModel) -> Result<(), RefError> {
    model
        .validate()
        .map_err(|source| RefError::InvalidChargeModel {
            field: field.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_decimal_macros::dec;

    const CUSTOMER: &str = r#"{"id":"cust-42","name":"Acme Corp","legal_entity":"acme-us","erp_customer_id":"C-000042","status":"active"}"#;
    const SUBSCRIPTION: &str = r#"{"id":"sub-1","customer_id":"cust-42","plan_id":"api-pro","start":"2026-01-01T08:00:00Z","end":null,"billing_anchor_day":1,"time_zone":"America/Los_Angeles","currency":"USD","legal_entity":"meterline-us","minimum_commitment":"100.00","price_overrides":{"input_tokens":{"model":"per_unit","unit_price":"0.0008"}}}"#;
    const PLAN: &str = r#"{"id":"api-pro","version":2,"effective_from":"2026-03-15T00:00:00Z","currency":"USD","base_fee":"49.00","charges":{"input_tokens":{"model":"graduated","tiers":[{"up_to":"1000000","unit_price":"0"},{"up_to":null,"unit_price":"0.000002"}],"tax_code":"SW052000"},"requests":{"model":"per_unit","unit_price":"0.0004"}},"gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200"},"tax_code":"SW050000"}"#;

    fn decode(kind: RefKind, text: &str) -> Result<RefRecord, RefError> {
        RefRecord::decode(kind, text.as_bytes())
    }

    fn with(base: &str, field: &str, value: serde_json::Value) -> String {
        let mut object: serde_json::Value = serde_json::from_str(base).unwrap();
        object[field] = value;
        object.to_string()
    }

    fn without(base: &str, field: &str) -> String {
        let mut object: serde_json::Value = serde_json::from_str(base).unwrap();
        object.as_object_mut().unwrap().remove(field);
        object.to_string()
    }

    fn code_of(kind: RefKind, text: &str) -> &'static str {
        decode(kind, text).unwrap_err().code()
    }

    #[test]
    fn samples_decode_and_have_their_keys() {
        let customer = decode(RefKind::Customers, CUSTOMER).unwrap();
        assert_eq!(
            (customer.kind(), customer.key()),
            (RefKind::Customers, "cust-42".into())
        );
        let subscription = decode(RefKind::Subscriptions, SUBSCRIPTION).unwrap();
        assert_eq!(subscription.key(), "sub-1");
        let plan = decode(RefKind::Plans, PLAN).unwrap();
        assert_eq!(
            (plan.kind(), plan.key()),
            (RefKind::Plans, "api-pro:2".into())
        );
        let RefRecord::Plan(plan) = plan else {
            unreachable!()
        };
        assert_eq!(plan.base_fee, Some(dec!(49.00)));
        assert_eq!(
            plan.charge("input_tokens").unwrap().tax_code.as_deref(),
            Some("SW052000")
        );
        assert_eq!(plan.charge("requests").unwrap().tax_code, None);
    }

    #[test]
    fn tax_rates_are_keyed_by_entity_code_and_instant_and_bounded() {
        let line = r#"{"legal_entity":"ml-eu","tax_code":"VAT","rate_percent":"19.0","effective_from":"2026-01-01T01:00:00+01:00","tax_payable_account":"2300"}"#;
        let rate = decode(RefKind::TaxRates, line).unwrap();
        assert_eq!(rate.key(), r#"["ml-eu","VAT","2026-01-01T00:00:00Z"]"#);
        let written = String::from_utf8(rate.to_json_bytes().unwrap()).unwrap();
        assert!(written.contains(r#""rate_percent":"19.0""#), "{written}");
        let too_high = line.replace("19.0", "100.01");
        assert_eq!(code_of(RefKind::TaxRates, &too_high), "invalid_text");
        let negative = line.replace("19.0", "-1");
        assert_eq!(code_of(RefKind::TaxRates, &negative), "negative_amount");
        let number = line.replace(r#""19.0""#, "19.0");
        assert_eq!(code_of(RefKind::TaxRates, &number), "schema_mismatch");
    }

    #[test]
    fn canonical_encoding_round_trips_and_keeps_decimal_scale() {
        for (kind, text) in [
            (RefKind::Customers, CUSTOMER),
            (RefKind::Subscriptions, SUBSCRIPTION),
            (RefKind::Plans, PLAN),
        ] {
            let record = decode(kind, text).unwrap();
            let bytes = record.to_json_bytes().unwrap();
            assert_eq!(RefRecord::decode(kind, &bytes).unwrap(), record);
            // The samples are already canonical.
            assert_eq!(String::from_utf8(bytes).unwrap(), text, "{kind}");
        }
    }

    #[test]
    fn instants_with_offsets_are_normalized_to_utc() {
        let text = with(SUBSCRIPTION, "start", "2026-01-01T00:00:00-08:00".into());
        let RefRecord::Subscription(sub) = decode(RefKind::Subscriptions, &text).unwrap() else {
            unreachable!()
        };
        let encoded = serde_json::to_value(&sub).unwrap();
        assert_eq!(encoded["start"], "2026-01-01T08:00:00Z");
        assert_eq!(encoded["end"], serde_json::Value::Null);
    }

    #[test]
    fn optional_fields_may_be_absent_or_null() {
        let minimal = without(&without(SUBSCRIPTION, "end"), "minimum_commitment");
        let minimal = without(&minimal, "price_overrides");
        assert!(decode(RefKind::Subscriptions, &minimal).is_ok());
        let null_overrides = with(SUBSCRIPTION, "price_overrides", serde_json::Value::Null);
        assert!(decode(RefKind::Subscriptions, &null_overrides).is_ok());
        let plan = without(&without(PLAN, "base_fee"), "tax_code");
        assert!(decode(RefKind::Plans, &plan).is_ok());
    }

    #[test]
    fn shape_errors_are_schema_mismatches() {
        let cases = [
            (RefKind::Customers, with(CUSTOMER, "nickname", "x".into())),
            (RefKind::Customers, without(CUSTOMER, "erp_customer_id")),
            (
                RefKind::Customers,
                with(CUSTOMER, "status", "deleted".into()),
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "start", "2026-01-01".into()),
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "billing_anchor_day", 400.into()),
            ),
            (RefKind::Plans, with(PLAN, "version", (-1).into())),
        ];
        for (kind, text) in cases {
            assert_eq!(code_of(kind, &text), "schema_mismatch", "{text}");
        }
        assert_eq!(code_of(RefKind::Customers, "{\"id\":"), "malformed_json");
    }

    #[test]
    fn decimals_must_be_strings() {
        let number = with(SUBSCRIPTION, "minimum_commitment", serde_json::json!(100.5));
        let error = decode(RefKind::Subscriptions, &number).unwrap_err();
        assert_eq!(error.code(), "schema_mismatch");
        assert!(
            error.to_string().contains("decimals are JSON strings"),
            "{error}"
        );
        let empty = with(SUBSCRIPTION, "minimum_commitment", "".into());
        assert_eq!(code_of(RefKind::Subscriptions, &empty), "schema_mismatch");
        // Inside a flattened plan charge as well.
        let charge = with(
            PLAN,
            "charges",
            serde_json::json!({"requests": {"model": "per_unit", "unit_price": 0.5}}),
        );
        assert_eq!(code_of(RefKind::Plans, &charge), "schema_mismatch");
    }

    #[test]
    fn unknown_fields_inside_a_plan_charge_are_refused() {
        let typo = with(
            PLAN,
            "charges",
            serde_json::json!({"requests": {"model": "per_unit", "unit_prize": "0.5"}}),
        );
        assert_eq!(code_of(RefKind::Plans, &typo), "schema_mismatch");
        let extra = with(
            PLAN,
            "charges",
            serde_json::json!({"requests": {"model": "per_unit", "unit_price": "0.5", "taxcode": "X"}}),
        );
        assert_eq!(code_of(RefKind::Plans, &extra), "schema_mismatch");
    }

    #[test]
    fn semantic_checks_have_their_codes() {
        let cases = [
            (
                RefKind::Customers,
                with(CUSTOMER, "id", "".into()),
                "invalid_text",
            ),
            (
                RefKind::Customers,
                with(CUSTOMER, "name", " Acme".into()),
                "invalid_text",
            ),
            (
                RefKind::Customers,
                with(CUSTOMER, "legal_entity", "a\u{7}b".into()),
                "invalid_text",
            ),
            (
                RefKind::Customers,
                with(CUSTOMER, "id", "x".repeat(257).into()),
                "invalid_text",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "plan_id", "a:b".into()),
                "invalid_text",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "billing_anchor_day", 0.into()),
                "invalid_anchor_day",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "billing_anchor_day", 32.into()),
                "invalid_anchor_day",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "time_zone", "america/los_angeles".into()),
                "unknown_time_zone",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "currency", "usd".into()),
                "unknown_currency",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "currency", "XAU".into()),
                "no_minor_unit",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "minimum_commitment", "-1".into()),
                "negative_amount",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "end", "2026-01-01T08:00:00Z".into()),
                "end_not_after_start",
            ),
            (
                RefKind::Subscriptions,
                with(SUBSCRIPTION, "end", "2025-12-31T00:00:00Z".into()),
                "end_not_after_start",
            ),
            (
                RefKind::Subscriptions,
                with(
                    SUBSCRIPTION,
                    "price_overrides",
                    serde_json::json!({"x": {"model": "per_unit", "unit_price": "-1"}}),
                ),
                "invalid_charge_model",
            ),
            (
                RefKind::Plans,
                with(PLAN, "id", "api:pro".into()),
                "invalid_text",
            ),
            (
                RefKind::Plans,
                with(PLAN, "currency", "EURO".into()),
                "unknown_currency",
            ),
            (
                RefKind::Plans,
                with(PLAN, "base_fee", "-0.01".into()),
                "negative_amount",
            ),
            (
                RefKind::Plans,
                with(
                    PLAN,
                    "charges",
                    serde_json::json!({"x": {"model": "volume", "tiers": []}}),
                ),
                "invalid_charge_model",
            ),
            (
                RefKind::Plans,
                with(
                    PLAN,
                    "gl_accounts",
                    serde_json::json!({"usage_revenue": "4010", "unbilled_receivable": "", "receivable": "1200"}),
                ),
                "invalid_text",
            ),
            (
                RefKind::Plans,
                with(PLAN, "tax_code", "".into()),
                "invalid_text",
            ),
        ];
        for (kind, text, code) in cases {
            assert_eq!(code_of(kind, &text), code, "{text}");
        }
    }

    #[test]
    fn error_messages_name_the_field() {
        let text = with(
            PLAN,
            "charges",
            serde_json::json!({"x": {"model": "volume", "tiers": []}}),
        );
        let message = decode(RefKind::Plans, &text).unwrap_err().to_string();
        assert_eq!(message, "charges.x: a tiered model needs at least one tier");
    }

    #[test]
    fn a_subscription_is_active_from_start_inclusive_to_end_exclusive() {
        let text = with(SUBSCRIPTION, "end", "2026-02-01T08:00:00Z".into());
        let RefRecord::Subscription(sub) = decode(RefKind::Subscriptions, &text).unwrap() else {
            unreachable!()
        };
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        assert!(!sub.is_active_at(at("2026-01-01T07:59:59.999999999Z")));
        assert!(sub.is_active_at(at("2026-01-01T08:00:00Z")));
        assert!(sub.is_active_at(at("2026-02-01T07:59:59.999999999Z")));
        assert!(!sub.is_active_at(at("2026-02-01T08:00:00Z")));
    }

    /// The JSON Schema documents in `schemas/` describe these records: their
    /// examples must decode, and their properties must be exactly the fields
    /// a record is written with.
    #[test]
    fn schema_documents_match_the_records() {
        let schemas = [
            (
                RefKind::Customers,
                include_str!("../../schemas/ref.customers-value.json"),
            ),
            (
                RefKind::Subscriptions,
                include_str!("../../schemas/ref.subscriptions-value.json"),
            ),
            (
                RefKind::Plans,
                include_str!("../../schemas/ref.plans-value.json"),
            ),
            (
                RefKind::TaxRates,
                include_str!("../../schemas/ref.tax_rates-value.json"),
            ),
        ];
        for (kind, text) in schemas {
            let schema: serde_json::Value = serde_json::from_str(text).unwrap();
            let properties: Vec<&String> =
                schema["properties"].as_object().unwrap().keys().collect();
            let examples = schema["examples"].as_array().unwrap();
            assert!(!examples.is_empty(), "{kind}");
            for example in examples {
                let record = decode(kind, &example.to_string()).unwrap();
                let written: serde_json::Value =
                    serde_json::from_slice(&record.to_json_bytes().unwrap()).unwrap();
                let fields: Vec<&String> = written.as_object().unwrap().keys().collect();
                assert_eq!(fields, properties, "{kind}");
            }
        }
    }

    #[test]
    fn plan_keys_are_canonical() {
        assert_eq!(plan_key("api-pro", 7), "api-pro:7");
        assert_eq!(parse_plan_key("api-pro:7").unwrap(), ("api-pro", 7));
        for bad in [
            "api-pro",
            ":7",
            "api-pro:",
            "api-pro:07",
            "api-pro:+7",
            "api-pro:-1",
            "api-pro:4294967296",
        ] {
            assert_eq!(
                parse_plan_key(bad).unwrap_err().code(),
                "invalid_key",
                "{bad}"
            );
        }
    }
}
