//! The in-memory reference tables of the enrich stage.
//!
//! The tables are a plain materialization of the three compacted topics:
//! the stage rebuilds them on start by reading every topic from the
//! beginning and then keeps applying new records. There is no other state,
//! so the tables after a restart are the tables before it.
//!
//! * A record upserts the value under its key; a tombstone removes it.
//! * A malformed or invalid record (or one whose key does not match its
//!   value) is refused with a [`RefError`] and changes nothing: the caller
//!   logs it and skips it, and the previous value under that key, if any,
//!   stays in force until a valid record or a tombstone replaces it.
//! * Subscriptions are indexed by customer id and plans by id, with their
//!   versions sorted, which are the two lookups enrichment needs.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::records::{parse_plan_key, Customer, Plan, RefRecord, Subscription, TaxRate};
use super::{RefError, RefKind, RefTrigger};

/// Customers, subscriptions and plan versions currently in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefTables {
    customers: BTreeMap<String, Customer>,
    subscriptions: BTreeMap<String, Subscription>,
    /// Customer id -> ids of its subscriptions. Kept in step with
    /// `subscriptions`; an entry never holds an empty set.
    subscriptions_by_customer: BTreeMap<String, BTreeSet<String>>,
    /// Plan id -> version -> plan. An entry never holds an empty map.
    plans: BTreeMap<String, BTreeMap<u32, Plan>>,
    /// (legal entity, tax code) -> effective from -> rate.
    tax_rates: BTreeMap<(String, String), BTreeMap<DateTime<Utc>, TaxRate>>,
}

impl RefTables {
    /// Empty tables.
    pub fn new() -> Self {
        RefTables::default()
    }

    /// Applies one record of topic `kind`: an upsert if `value` is `Some`, a
    /// tombstone if it is `None`.
    ///
    /// # Errors
    /// A value that does not parse or validate, a key that does not match the
    /// value, or a tombstone with a malformed plan key; the tables are
    /// unchanged.
    pub fn apply(
        &mut self,
        kind: RefKind,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), RefError> {
        self.apply_tracked(kind, key, value).map(|_| ())
    }

    /// [`apply`](RefTables::apply), returning the [`RefTrigger`]s the record
    /// fires, i.e. which parked events it may resolve (see the module docs of
    /// [`crate::refdata`]). A subscription fires the trigger of its previous
    /// customer too, so a tombstone or a move to another customer wakes the
    /// events it used to make ambiguous.
    pub fn apply_tracked(
        &mut self,
        kind: RefKind,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<Vec<RefTrigger>, RefError> {
        match value {
            None => self.retire(kind, key),
            Some(bytes) => {
                let record = RefRecord::decode(kind, bytes)?;
                let expected = record.key();
                if expected != key {
                    return Err(RefError::KeyMismatch {
                        key: key.to_owned(),
                        expected,
                    });
                }
                Ok(self.insert_valid(record))
            }
        }
    }

    /// Upserts a record built in code, after validating it. Returns the
    /// triggers it fires.
    pub fn upsert(&mut self, record: RefRecord) -> Result<Vec<RefTrigger>, RefError> {
        record.validate()?;
        Ok(self.insert_valid(record))
    }

    /// Removes the record with `key` from table `kind`, if present. Returns
    /// the triggers it fires. Retiring an absent key is not an error:
    /// compacted topics keep tombstones for a while and replay them.
    pub fn retire(&mut self, kind: RefKind, key: &str) -> Result<Vec<RefTrigger>, RefError> {
        let triggers = match kind {
            RefKind::Customers => {
                self.customers.remove(key);
                vec![RefTrigger::new(RefKind::Customers, key)]
            }
            RefKind::Subscriptions => match self.subscriptions.remove(key) {
                Some(old) => {
                    self.unindex_subscription(&old.customer_id, key);
                    vec![RefTrigger::new(RefKind::Subscriptions, old.customer_id)]
                }
                None => Vec::new(),
            },
            RefKind::Plans => {
                let (plan_id, version) = parse_plan_key(key)?;
                if let Some(versions) = self.plans.get_mut(plan_id) {
                    versions.remove(&version);
                    if versions.is_empty() {
                        self.plans.remove(plan_id);
                    }
                }
                vec![RefTrigger::new(RefKind::Plans, plan_id)]
            }
            RefKind::TaxRates => {
                let (pair, from) = parse_tax_rate_key(key)?;
                if let Some(rows) = self.tax_rates.get_mut(&pair) {
                    rows.remove(&from);
                    if rows.is_empty() {
                        self.tax_rates.remove(&pair);
                    }
                }
                Vec::new()
            }
        };
        Ok(triggers)
    }

    fn insert_valid(&mut self, record: RefRecord) -> Vec<RefTrigger> {
        match record {
            RefRecord::Customer(customer) => {
                let trigger = RefTrigger::new(RefKind::Customers, customer.id.clone());
                self.customers.insert(customer.id.clone(), customer);
                vec![trigger]
            }
            RefRecord::Subscription(subscription) => {
                let id = subscription.id.clone();
                let customer_id = subscription.customer_id.clone();
                let mut triggers =
                    vec![RefTrigger::new(RefKind::Subscriptions, customer_id.clone())];
                if let Some(old) = self.subscriptions.insert(id.clone(), subscription) {
                    if old.customer_id != customer_id {
                        self.unindex_subscription(&old.customer_id, &id);
                        triggers.push(RefTrigger::new(RefKind::Subscriptions, old.customer_id));
                    }
                }
                self.subscriptions_by_customer
                    .entry(customer_id)
                    .or_default()
                    .insert(id);
                triggers
            }
            RefRecord::Plan(plan) => {
                let trigger = RefTrigger::new(RefKind::Plans, plan.id.clone());
                self.plans
                    .entry(plan.id.clone())
                    .or_default()
                    .insert(plan.version, plan);
                vec![trigger]
            }
            RefRecord::TaxRate(rate) => {
                self.tax_rates
                    .entry((rate.legal_entity.clone(), rate.tax_code.clone()))
                    .or_default()
                    .insert(rate.effective_from, rate);
                Vec::new()
            }
        }
    }

    /// The tax rate of `legal_entity` and `tax_code` in force at `t`: the
    /// row with the greatest `effective_from` at or before `t`.
    pub fn tax_rate_at(
        &self,
        legal_entity: &str,
        tax_code: &str,
        t: DateTime<Utc>,
    ) -> Option<&TaxRate> {
        self.tax_rates
            .get(&(legal_entity.to_string(), tax_code.to_string()))?
            .range(..=t)
            .next_back()
            .map(|(_, rate)| rate)
    }

    fn unindex_subscription(&mut self, customer_id: &str, subscription_id: &str) {
        if let Some(ids) = self.subscriptions_by_customer.get_mut(customer_id) {
            ids.remove(subscription_id);
            if ids.is_empty() {
                self.subscriptions_by_customer.remove(customer_id);
            }
        }
    }

    /// The customer with `id`, unless unknown or retired.
    pub fn customer(&self, id: &str) -> Option<&Customer> {
        self.customers.get(id)
    }

    /// The subscription with `id`.
    pub fn subscription(&self, id: &str) -> Option<&Subscription> {
        self.subscriptions.get(id)
    }

    /// Every subscription of a customer, ordered by subscription id.
    pub fn subscriptions_of<'a>(
        &'a self,
        customer_id: &str,
    ) -> impl Iterator<Item = &'a Subscription> + 'a {
        self.subscriptions_by_customer
            .get(customer_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.subscriptions.get(id))
    }

    /// The subscriptions of a customer active at `t` (`start <= t < end`),
    /// ordered by subscription id.
    pub fn active_subscriptions<'a>(
        &'a self,
        customer_id: &str,
        t: DateTime<Utc>,
    ) -> impl Iterator<Item = &'a Subscription> + 'a {
        self.subscriptions_of(customer_id)
            .filter(move |subscription| subscription.is_active_at(t))
    }

    /// Ids of the customers that have at least one subscription, in order,
    /// from `from` (inclusive) on.
    pub fn customers_with_subscriptions_from<'a>(
        &'a self,
        from: &str,
    ) -> impl Iterator<Item = &'a str> + 'a {
        self.subscriptions_by_customer
            .range::<str, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .map(|(id, _)| id.as_str())
    }

    /// Whether any version of plan `plan_id` is known.
    pub fn has_plan(&self, plan_id: &str) -> bool {
        self.plans.contains_key(plan_id)
    }

    /// Every known version of a plan, in ascending version order.
    pub fn plan_versions<'a>(&'a self, plan_id: &str) -> impl Iterator<Item = &'a Plan> + 'a {
        self.plans
            .get(plan_id)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// One version of a plan.
    pub fn plan(&self, plan_id: &str, version: u32) -> Option<&Plan> {
        self.plans.get(plan_id)?.get(&version)
    }

    /// The version of a plan in force at `t`: the greatest version whose
    /// `effective_from` is at or before `t`. Versions are compared by number,
    /// not by date, so a correction published as a new version with an
    /// earlier `effective_from` takes over from that date.
    pub fn plan_effective_at(&self, plan_id: &str, t: DateTime<Utc>) -> Option<&Plan> {
        self.plans
            .get(plan_id)?
            .values()
            .rev()
            .find(|plan| plan.effective_from <= t)
    }

    /// Number of records in table `kind` (plan versions for `Plans`).
    pub fn len(&self, kind: RefKind) -> usize {
        match kind {
            RefKind::Customers => self.customers.len(),
            RefKind::Subscriptions => self.subscriptions.len(),
            RefKind::Plans => self.plans.values().map(BTreeMap::len).sum(),
            RefKind::TaxRates => self.tax_rates.values().map(BTreeMap::len).sum(),
        }
    }

    /// Whether the customer, subscription and plan tables are all empty
    /// (tax rates are optional).
    pub fn is_empty(&self) -> bool {
        self.customers.is_empty() && self.subscriptions.is_empty() && self.plans.is_empty()
    }
}

/// The (legal entity, tax code) pair and effective instant of a tax rate
/// key ([`super::tax_rate_key`]).
fn parse_tax_rate_key(key: &str) -> Result<((String, String), DateTime<Utc>), RefError> {
    let invalid = |reason: &'static str| RefError::InvalidKey {
        key: key.to_owned(),
        reason,
    };
    let (entity, code, from): (String, String, String) =
        serde_json::from_str(key).map_err(|_| {
            invalid("a tax rate key is [\"<legal entity>\",\"<tax code>\",\"<effective from>\"]")
        })?;
    let from = DateTime::parse_from_rfc3339(&from)
        .map_err(|_| invalid("effective from is not RFC 3339"))?
        .with_timezone(&Utc);
    Ok(((entity, code), from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn customer(id: &str) -> String {
        format!(
            r#"{{"id":"{id}","name":"Acme","legal_entity":"acme-us","erp_customer_id":"C-{id}","status":"active"}}"#
        )
    }

    fn subscription(id: &str, customer: &str, start: &str, end: Option<&str>) -> String {
        let end = end.map_or("null".to_owned(), |end| format!("\"{end}\""));
        format!(
            r#"{{"id":"{id}","customer_id":"{customer}","plan_id":"api-pro","start":"{start}","end":{end},"billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"le"}}"#
        )
    }

    fn plan(version: u32, effective_from: &str) -> String {
        format!(
            r#"{{"id":"api-pro","version":{version},"effective_from":"{effective_from}","currency":"USD","charges":{{}},"gl_accounts":{{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200"}}}}"#
        )
    }

    fn apply(tables: &mut RefTables, kind: RefKind, key: &str, value: &str) -> Vec<RefTrigger> {
        tables
            .apply_tracked(kind, key, Some(value.as_bytes()))
            .unwrap()
    }

    fn ids<'a>(subscriptions: impl Iterator<Item = &'a Subscription>) -> Vec<&'a str> {
        subscriptions.map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn the_tax_rate_in_force_is_the_latest_row_at_or_before_the_instant() {
        let row = |from: &str, pct: &str| {
            format!(
                r#"{{"legal_entity":"le","tax_code":"VAT","rate_percent":"{pct}","effective_from":"{from}","tax_payable_account":"2300"}}"#
            )
        };
        let mut tables = RefTables::new();
        for (from, pct) in [
            ("2026-01-01T00:00:00Z", "19"),
            ("2026-07-01T00:00:00Z", "16"),
        ] {
            let text = row(from, pct);
            let key = super::super::tax_rate_key("le", "VAT", &at(from));
            tables
                .apply(RefKind::TaxRates, &key, Some(text.as_bytes()))
                .unwrap();
        }
        let pct = |tables: &RefTables, t: &str| {
            tables
                .tax_rate_at("le", "VAT", at(t))
                .map(|r| r.rate_percent.to_string())
        };
        assert_eq!(pct(&tables, "2025-12-31T23:59:59Z"), None);
        assert_eq!(pct(&tables, "2026-06-30T23:59:59Z").as_deref(), Some("19"));
        assert_eq!(pct(&tables, "2026-07-01T00:00:00Z").as_deref(), Some("16"));
        assert_eq!(tables.len(RefKind::TaxRates), 2);
        let key = super::super::tax_rate_key("le", "VAT", &at("2026-07-01T00:00:00Z"));
        tables.apply(RefKind::TaxRates, &key, None).unwrap();
        assert_eq!(pct(&tables, "2026-08-01T00:00:00Z").as_deref(), Some("19"));
        assert!(tables
            .tax_rate_at("le", "OTHER", at("2026-08-01T00:00:00Z"))
            .is_none());
        assert!(
            tables.is_empty(),
            "tax rates alone do not count as loaded reference data"
        );
    }

    #[test]
    fn customers_are_upserted_and_retired() {
        let mut tables = RefTables::new();
        assert!(tables.is_empty());
        apply(&mut tables, RefKind::Customers, "c1", &customer("c1"));
        assert_eq!(tables.customer("c1").unwrap().erp_customer_id, "C-c1");
        let renamed = customer("c1").replace("Acme", "Acme Inc");
        apply(&mut tables, RefKind::Customers, "c1", &renamed);
        assert_eq!(tables.customer("c1").unwrap().name, "Acme Inc");
        assert_eq!(tables.len(RefKind::Customers), 1);
        let triggers = tables
            .apply_tracked(RefKind::Customers, "c1", None)
            .unwrap();
        assert_eq!(triggers, [RefTrigger::new(RefKind::Customers, "c1")]);
        assert!(tables.customer("c1").is_none());
        // Retiring again, or retiring the unknown, is fine.
        tables.apply(RefKind::Customers, "c1", None).unwrap();
        tables.apply(RefKind::Customers, "nobody", None).unwrap();
    }

    #[test]
    fn bad_records_are_refused_and_change_nothing() {
        let mut tables = RefTables::new();
        apply(&mut tables, RefKind::Customers, "c1", &customer("c1"));
        let before = tables.clone();
        let other_key = customer("c1");
        let cases: [(&str, &[u8], &str); 4] = [
            ("c1", b"{not json", "malformed_json"),
            ("c1", b"", "malformed_json"),
            ("c1", br#"{"id":"c1"}"#, "schema_mismatch"),
            ("c2", other_key.as_bytes(), "key_mismatch"),
        ];
        for (key, value, code) in cases {
            let error = tables
                .apply(RefKind::Customers, key, Some(value))
                .unwrap_err();
            assert_eq!(error.code(), code);
        }
        let error = tables.apply(RefKind::Plans, "api-pro", None).unwrap_err();
        assert_eq!(error.code(), "invalid_key");
        assert_eq!(tables, before);
    }

    #[test]
    fn subscriptions_are_indexed_by_customer() {
        let mut tables = RefTables::new();
        for (id, customer) in [("s2", "c1"), ("s1", "c1"), ("s3", "c2")] {
            let triggers = apply(
                &mut tables,
                RefKind::Subscriptions,
                id,
                &subscription(id, customer, "2026-01-01T00:00:00Z", None),
            );
            assert_eq!(
                triggers,
                [RefTrigger::new(RefKind::Subscriptions, customer)]
            );
        }
        assert_eq!(ids(tables.subscriptions_of("c1")), ["s1", "s2"]);
        assert_eq!(ids(tables.subscriptions_of("c2")), ["s3"]);
        assert_eq!(ids(tables.subscriptions_of("c3")), Vec::<&str>::new());

        // Moving s2 to c2 re-indexes it and wakes both customers.
        let triggers = apply(
            &mut tables,
            RefKind::Subscriptions,
            "s2",
            &subscription("s2", "c2", "2026-01-01T00:00:00Z", None),
        );
        assert_eq!(
            triggers,
            [
                RefTrigger::new(RefKind::Subscriptions, "c2"),
                RefTrigger::new(RefKind::Subscriptions, "c1")
            ]
        );
        assert_eq!(ids(tables.subscriptions_of("c1")), ["s1"]);
        assert_eq!(ids(tables.subscriptions_of("c2")), ["s2", "s3"]);

        // A tombstone wakes the customer the subscription belonged to.
        let triggers = tables
            .apply_tracked(RefKind::Subscriptions, "s1", None)
            .unwrap();
        assert_eq!(triggers, [RefTrigger::new(RefKind::Subscriptions, "c1")]);
        assert_eq!(ids(tables.subscriptions_of("c1")), Vec::<&str>::new());
        assert!(tables.subscription("s1").is_none());
        assert_eq!(
            tables
                .apply_tracked(RefKind::Subscriptions, "s1", None)
                .unwrap(),
            []
        );
        assert_eq!(tables.len(RefKind::Subscriptions), 2);
    }

    #[test]
    fn active_subscriptions_use_half_open_intervals() {
        let mut tables = RefTables::new();
        let end = "2026-02-01T00:00:00Z";
        apply(
            &mut tables,
            RefKind::Subscriptions,
            "old",
            &subscription("old", "c1", "2026-01-01T00:00:00Z", Some(end)),
        );
        apply(
            &mut tables,
            RefKind::Subscriptions,
            "new",
            &subscription("new", "c1", end, None),
        );
        let active = |t: &str| ids(tables.active_subscriptions("c1", at(t)));
        assert_eq!(active("2025-12-31T23:59:59Z"), Vec::<&str>::new());
        assert_eq!(active("2026-01-01T00:00:00Z"), ["old"]);
        assert_eq!(active("2026-01-31T23:59:59.999Z"), ["old"]);
        assert_eq!(active(end), ["new"]);
        assert_eq!(active("2099-01-01T00:00:00Z"), ["new"]);
    }

    #[test]
    fn plan_versions_are_sorted_and_selected_by_effective_date() {
        let mut tables = RefTables::new();
        apply(
            &mut tables,
            RefKind::Plans,
            "api-pro:3",
            &plan(3, "2026-03-15T00:00:00Z"),
        );
        apply(
            &mut tables,
            RefKind::Plans,
            "api-pro:1",
            &plan(1, "2026-01-01T00:00:00Z"),
        );
        let triggers = apply(
            &mut tables,
            RefKind::Plans,
            "api-pro:2",
            &plan(2, "2026-02-01T00:00:00Z"),
        );
        assert_eq!(triggers, [RefTrigger::new(RefKind::Plans, "api-pro")]);
        let versions: Vec<_> = tables.plan_versions("api-pro").map(|p| p.version).collect();
        assert_eq!(versions, [1, 2, 3]);
        let effective = |t: &str| {
            tables
                .plan_effective_at("api-pro", at(t))
                .map(|p| p.version)
        };
        assert_eq!(effective("2025-12-31T23:59:59Z"), None);
        assert_eq!(effective("2026-01-01T00:00:00Z"), Some(1));
        assert_eq!(effective("2026-03-14T23:59:59Z"), Some(2));
        assert_eq!(effective("2026-03-15T00:00:00Z"), Some(3));
        assert_eq!(tables.plan("api-pro", 2).unwrap().version, 2);
        assert_eq!(tables.len(RefKind::Plans), 3);
    }

    #[test]
    fn the_greatest_version_wins_even_with_an_earlier_date() {
        let mut tables = RefTables::new();
        apply(
            &mut tables,
            RefKind::Plans,
            "api-pro:1",
            &plan(1, "2026-02-01T00:00:00Z"),
        );
        apply(
            &mut tables,
            RefKind::Plans,
            "api-pro:2",
            &plan(2, "2026-01-01T00:00:00Z"),
        );
        let version = tables
            .plan_effective_at("api-pro", at("2026-03-01T00:00:00Z"))
            .unwrap()
            .version;
        assert_eq!(version, 2);
    }

    #[test]
    fn plan_tombstones_retire_single_versions() {
        let mut tables = RefTables::new();
        apply(
            &mut tables,
            RefKind::Plans,
            "api-pro:1",
            &plan(1, "2026-01-01T00:00:00Z"),
        );
        apply(
            &mut tables,
            RefKind::Plans,
            "api-pro:2",
            &plan(2, "2026-02-01T00:00:00Z"),
        );
        let triggers = tables
            .apply_tracked(RefKind::Plans, "api-pro:2", None)
            .unwrap();
        assert_eq!(triggers, [RefTrigger::new(RefKind::Plans, "api-pro")]);
        let now = at("2026-06-01T00:00:00Z");
        assert_eq!(tables.plan_effective_at("api-pro", now).unwrap().version, 1);
        tables.apply(RefKind::Plans, "api-pro:1", None).unwrap();
        assert!(!tables.has_plan("api-pro"));
        assert!(tables.plan_effective_at("api-pro", now).is_none());
        assert!(tables.is_empty());
    }

    #[test]
    fn upsert_validates_records_built_in_code() {
        let mut tables = RefTables::new();
        let RefRecord::Customer(mut record) =
            RefRecord::decode(RefKind::Customers, customer("c1").as_bytes()).unwrap()
        else {
            unreachable!()
        };
        record.name = String::new();
        let error = tables.upsert(RefRecord::Customer(record)).unwrap_err();
        assert_eq!(error.code(), "invalid_text");
        assert!(tables.is_empty());
    }
}
