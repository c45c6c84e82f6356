//! Resolution: a validated event plus the reference tables give an enriched
//! event, or the reason to park it.
//!
//! [`resolve`] finds, for the event's `subject` (the customer id) and `time`:
//!
//! 1. the meters: every measure's meter must be in the meter catalog
//!    (`topology/meters.toml`), else [`ParkReason::UnknownMeter`] (a config
//!    problem: fixing the config and replaying `usage.exceptions` resolves
//!    it, no reference record does);
//! 2. the customer: unknown or retired => [`ParkReason::UnknownCustomer`];
//! 3. the subscription: among the customer's subscriptions active at `time`
//!    (`start <= time < end`), those that *charge* a measured meter, i.e.
//!    have a price override for it or whose plan version in force at `time`
//!    has a charge for it.
//!    * More than one subscription charging the same meter, or the event's
//!      meters charged by different subscriptions =>
//!      [`ParkReason::AmbiguousSubscription`].
//!    * Exactly one => that subscription.
//!    * None: if exactly one subscription is active, it is the one (and the
//!      checks below say what is missing); otherwise, if an active
//!      subscription's plan cannot be resolved, that one (first by id),
//!      since its plan is what is missing; otherwise
//!      [`ParkReason::NoActiveSubscription`] (no subscription active at all,
//!      or several that all charge other meters).
//!
//!    A subscription whose plan is unknown or has no version in force yet
//!    charges only the meters it overrides: its plan might charge more, but
//!    enrichment does not hold back the customer's other subscriptions for a
//!    plan that may never arrive.
//! 4. the plan version in force at `time`: the greatest version whose
//!    `effective_from <= time`; no version of the plan at all =>
//!    [`ParkReason::UnknownPlan`], none in force yet =>
//!    [`ParkReason::NoPlanVersion`];
//! 5. a charge for every measured meter: the subscription's override if
//!    there is one, else the plan's charge, else
//!    [`ParkReason::NoChargeForMeter`];
//! 6. plan and subscription in the same currency (prices are in the plan's
//!    currency, the subscription bills in its own), else
//!    [`ParkReason::CurrencyMismatch`];
//! 7. the billing period and local day containing `time` in the
//!    subscription's time zone and anchor day ([`crate::calendar`]); a time
//!    outside the calendar's range => [`ParkReason::NoBillingPeriod`].
//!
//! The [`EnrichedEvent`] carries everything the rate, aggregate and post
//! stages need, so none of them reads the reference tables: the charge of
//! every measure, the period and day windows, accounts, tax codes, base fee
//! and commitment. Its JSON is deterministic (fields in declaration order,
//! maps sorted, decimals as strings, instants in one RFC 3339 form).
//!
//! # Rating segments
//!
//! Rate keeps cumulative usage per rating segment: (subscription, meter,
//! billing period, plan version, group). A new plan version taking effect
//! mid-period therefore starts a new segment in the same period.
//! [`EnrichedEvent::rating_segment_key`] gives the segment of a measure as a
//! stable, readable string and [`EnrichedEvent::rating_segment_id`] its
//! SHA-256 as fixed-length hex, for store keys.
//!
//! # Re-emission
//!
//! [`ParkReason::resolved_by`] lists the [`RefTrigger`]s of the reference
//! records that may resolve a park (see [`crate::refdata`]): the customer's
//! record for an unknown customer; otherwise any subscription of the
//! customer and any version of the plans of the subscriptions that were
//! active at the event's time. Coarse on purpose: a retried event that is
//! still unresolved is simply parked again.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use crate::calendar;
use crate::contracts::{
    rfc3339_utc, CustomerInfo, EnrichedEvent, ResolvedCharge, ValidatedEvent, Window,
};
use crate::meter::Meter;
use crate::refdata::{Customer, Plan, RefKind, RefTables, RefTrigger, Subscription};

use super::reason;

/// The meters of `topology/meters.toml`, by slug.
pub type MeterCatalog = BTreeMap<String, Meter>;

/// Builds a [`MeterCatalog`] from a list of meters (the last of equal slugs wins;
/// the topology loader refuses duplicates anyway).
pub fn meter_catalog(meters: impl IntoIterator<Item = Meter>) -> MeterCatalog {
    meters
        .into_iter()
        .map(|meter| (meter.slug.clone(), meter))
        .collect()
}

/// Why an event cannot be enriched now. Parked on `usage.exceptions`, counted
/// as revenue at risk and retried when a matching reference record arrives
/// ([`resolved_by`](ParkReason::resolved_by)).
///
/// `candidate_plans` is, where present, the sorted ids of the plans of the
/// customer's subscriptions active at the event's time: a new version (or
/// retirement) of any of them can change the outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParkReason {
    #[error("meter {meter:?} is not in the meter catalog (topology/meters.toml)")]
    UnknownMeter { customer: String, meter: String },
    #[error("customer {customer:?} is unknown: not on ref.customers, or retired")]
    UnknownCustomer { customer: String },
    #[error(
        "customer {customer:?} has no subscription active at {} that charges meters {meters:?}{}",
        rfc3339_utc::format(.time),
        active_note(.subscriptions)
    )]
    NoActiveSubscription {
        customer: String,
        time: DateTime<Utc>,
        meters: Vec<String>,
        /// Active subscriptions that charge none of the meters (may be empty).
        subscriptions: Vec<String>,
        candidate_plans: Vec<String>,
    },
    #[error("{}", ambiguous_message(.customer, .meter, .subscriptions))]
    AmbiguousSubscription {
        customer: String,
        /// The meter charged by several subscriptions; `None` when each meter
        /// has one subscription but the event's meters have different ones.
        meter: Option<String>,
        subscriptions: Vec<String>,
        candidate_plans: Vec<String>,
    },
    #[error("subscription {subscription:?} refers to plan {plan:?}, of which no version is known")]
    UnknownPlan {
        customer: String,
        subscription: String,
        plan: String,
        candidate_plans: Vec<String>,
    },
    #[error(
        "plan {plan:?} of subscription {subscription:?} has no version in force at {}",
        rfc3339_utc::format(.time)
    )]
    NoPlanVersion {
        customer: String,
        subscription: String,
        plan: String,
        time: DateTime<Utc>,
        candidate_plans: Vec<String>,
    },
    #[error(
        "plan {plan:?} version {version} has no charge and subscription {subscription:?} no price override for meter {meter:?}"
    )]
    NoChargeForMeter {
        customer: String,
        subscription: String,
        plan: String,
        version: u32,
        meter: String,
        candidate_plans: Vec<String>,
    },
    #[error(
        "subscription {subscription:?} bills in {subscription_currency} but plan {plan:?} version {version} prices in {plan_currency}"
    )]
    CurrencyMismatch {
        customer: String,
        subscription: String,
        subscription_currency: String,
        plan: String,
        version: u32,
        plan_currency: String,
        candidate_plans: Vec<String>,
    },
    #[error("no billing period for subscription {subscription:?}: {message}")]
    NoBillingPeriod {
        customer: String,
        subscription: String,
        message: String,
        candidate_plans: Vec<String>,
    },
    /// A retraction or amendment whose event is parked: it waits for it
    /// (checked by the processor, which holds the parked store).
    #[error(
        "the event it corrects, source {target_source:?} id {target_id:?}, is parked \
         ({target_reason}): this correction flows right after it does"
    )]
    CorrectionTargetParked {
        customer: String,
        target_source: String,
        target_id: String,
        target_reason: String,
    },
}

impl ParkReason {
    /// Every park code, for metrics and dashboards. Codes are a contract:
    /// never rename one, only add.
    pub const ALL_CODES: &'static [&'static str] = &[
        reason::UNKNOWN_METER,
        reason::UNKNOWN_CUSTOMER,
        reason::NO_ACTIVE_SUBSCRIPTION,
        reason::AMBIGUOUS_SUBSCRIPTION,
        reason::UNKNOWN_PLAN,
        reason::NO_PLAN_VERSION,
        reason::NO_CHARGE_FOR_METER,
        reason::CURRENCY_MISMATCH,
        reason::NO_BILLING_PERIOD,
        reason::CORRECTION_TARGET_PARKED,
    ];

    /// Stable snake_case code.
    pub const fn code(&self) -> &'static str {
        match self {
            ParkReason::UnknownMeter { .. } => reason::UNKNOWN_METER,
            ParkReason::UnknownCustomer { .. } => reason::UNKNOWN_CUSTOMER,
            ParkReason::NoActiveSubscription { .. } => reason::NO_ACTIVE_SUBSCRIPTION,
            ParkReason::AmbiguousSubscription { .. } => reason::AMBIGUOUS_SUBSCRIPTION,
            ParkReason::UnknownPlan { .. } => reason::UNKNOWN_PLAN,
            ParkReason::NoPlanVersion { .. } => reason::NO_PLAN_VERSION,
            ParkReason::NoChargeForMeter { .. } => reason::NO_CHARGE_FOR_METER,
            ParkReason::CurrencyMismatch { .. } => reason::CURRENCY_MISMATCH,
            ParkReason::NoBillingPeriod { .. } => reason::NO_BILLING_PERIOD,
            ParkReason::CorrectionTargetParked { .. } => reason::CORRECTION_TARGET_PARKED,
        }
    }

    /// The human-readable explanation (the `Display` text).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The customer (event subject) the park is about.
    pub fn customer(&self) -> &str {
        match self {
            ParkReason::UnknownMeter { customer, .. }
            | ParkReason::UnknownCustomer { customer }
            | ParkReason::NoActiveSubscription { customer, .. }
            | ParkReason::AmbiguousSubscription { customer, .. }
            | ParkReason::UnknownPlan { customer, .. }
            | ParkReason::NoPlanVersion { customer, .. }
            | ParkReason::NoChargeForMeter { customer, .. }
            | ParkReason::CurrencyMismatch { customer, .. }
            | ParkReason::NoBillingPeriod { customer, .. }
            | ParkReason::CorrectionTargetParked { customer, .. } => customer,
        }
    }

    /// The reference records that may resolve this park (see the module
    /// docs): empty for [`UnknownMeter`](ParkReason::UnknownMeter), which
    /// only a config fix and a replay resolve.
    pub fn resolved_by(&self) -> Vec<RefTrigger> {
        let customer = self.customer();
        let candidate_plans = match self {
            ParkReason::UnknownMeter { .. } => return Vec::new(),
            ParkReason::UnknownCustomer { .. } => {
                return vec![RefTrigger::new(RefKind::Customers, customer)]
            }
            // Whatever releases the event it waits for (plans: a sweep).
            ParkReason::CorrectionTargetParked { .. } => {
                return vec![
                    RefTrigger::new(RefKind::Customers, customer),
                    RefTrigger::new(RefKind::Subscriptions, customer),
                ]
            }
            ParkReason::NoActiveSubscription {
                candidate_plans, ..
            }
            | ParkReason::AmbiguousSubscription {
                candidate_plans, ..
            }
            | ParkReason::UnknownPlan {
                candidate_plans, ..
            }
            | ParkReason::NoPlanVersion {
                candidate_plans, ..
            }
            | ParkReason::NoChargeForMeter {
                candidate_plans, ..
            }
            | ParkReason::CurrencyMismatch {
                candidate_plans, ..
            }
            | ParkReason::NoBillingPeriod {
                candidate_plans, ..
            } => candidate_plans,
        };
        let mut triggers = vec![RefTrigger::new(RefKind::Subscriptions, customer)];
        triggers.extend(
            candidate_plans
                .iter()
                .map(|plan| RefTrigger::new(RefKind::Plans, plan.clone())),
        );
        triggers
    }

    /// Whether a record firing `trigger` may resolve this park.
    pub fn is_resolved_by(&self, trigger: &RefTrigger) -> bool {
        self.resolved_by().contains(trigger)
    }
}

fn active_note(subscriptions: &[String]) -> String {
    if subscriptions.is_empty() {
        String::new()
    } else {
        format!(" (active, but charging other meters: {subscriptions:?})")
    }
}

fn ambiguous_message(customer: &str, meter: &Option<String>, subscriptions: &[String]) -> String {
    match meter {
        Some(meter) => format!(
            "customer {customer:?} has more than one active subscription for meter {meter:?}: {subscriptions:?}"
        ),
        None => format!(
            "the event's meters are charged by different subscriptions of customer {customer:?}: {subscriptions:?}"
        ),
    }
}

/// Why an active subscription's plan cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PlanProblem {
    Unknown,
    NoVersion,
}

/// An active subscription with its plan version in force at the event's time.
struct Candidate<'a> {
    subscription: &'a Subscription,
    plan: Result<&'a Plan, PlanProblem>,
}

impl Candidate<'_> {
    fn id(&self) -> &str {
        &self.subscription.id
    }

    /// Whether the subscription charges `meter`: an override, or a charge of
    /// its plan version (unknown for an unresolved plan, so only overrides).
    fn charges(&self, meter: &str) -> bool {
        self.subscription.price_overrides.contains_key(meter)
            || self.plan.is_ok_and(|plan| plan.charges.contains_key(meter))
    }
}

/// Enriches `event` from the reference tables and the meter catalog, or says
/// why it must be parked. See the module docs for the rules, in order.
///
/// `charges` follows `event.measures`. An event without measures (which the
/// validate stage never emits) has no meter to choose a subscription by, so
/// it resolves only when the customer has exactly one active subscription.
// A ParkReason is about 150 bytes, over clippy's 128 for an `Err`. Parking
// is the cold path and the reason is serialized right away, so boxing it
// would only add an allocation and a deref for every caller.
#[allow(clippy::result_large_err)]
pub fn resolve(
    event: &ValidatedEvent,
    tables: &RefTables,
    meters: &MeterCatalog,
) -> Result<EnrichedEvent, ParkReason> {
    let customer_id = event.subject.as_str();
    let time = event.time;
    check_meters_known(event, meters)?;
    let customer = tables
        .customer(customer_id)
        .ok_or_else(|| ParkReason::UnknownCustomer {
            customer: customer_id.to_owned(),
        })?;

    let candidates: Vec<Candidate<'_>> = tables
        .active_subscriptions(customer_id, time)
        .map(|subscription| Candidate {
            subscription,
            plan: plan_in_force(tables, &subscription.plan_id, time),
        })
        .collect();
    let candidate_plans: Vec<String> = candidates
        .iter()
        .map(|candidate| candidate.subscription.plan_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let measured: BTreeSet<&str> = event.measures.iter().map(|m| m.meter.as_str()).collect();

    let chosen = choose_subscription(customer_id, time, &candidates, &measured, &candidate_plans)?;
    let subscription = chosen.subscription;
    let park = ParkContext {
        customer: customer_id,
        subscription,
        candidate_plans: &candidate_plans,
    };
    let plan = chosen_plan(chosen.plan, &park, time)?;
    let charges = resolve_charges(event, plan, meters, &park)?;
    check_currency(plan, &park)?;
    let (billing_period, local_day) = windows(subscription, time).map_err(|error| {
        let (customer, subscription_id, candidate_plans) = park.owned();
        ParkReason::NoBillingPeriod {
            customer,
            subscription: subscription_id,
            message: error.to_string(),
            candidate_plans,
        }
    })?;
    Ok(enriched_event(
        event,
        customer,
        subscription,
        plan,
        (billing_period, local_day),
        charges,
    ))
}

/// Every measured meter must be in the catalog.
#[allow(clippy::result_large_err)]
fn check_meters_known(event: &ValidatedEvent, meters: &MeterCatalog) -> Result<(), ParkReason> {
    for measure in &event.measures {
        if !meters.contains_key(&measure.meter) {
            return Err(ParkReason::UnknownMeter {
                customer: event.subject.clone(),
                meter: measure.meter.clone(),
            });
        }
    }
    Ok(())
}

/// What a park after the subscription is chosen names: the customer, the
/// subscription, the plans of every candidate.
struct ParkContext<'a> {
    customer: &'a str,
    subscription: &'a Subscription,
    candidate_plans: &'a [String],
}

impl ParkContext<'_> {
    /// (customer, subscription id, candidate plans), owned for a ParkReason.
    fn owned(&self) -> (String, String, Vec<String>) {
        (
            self.customer.to_owned(),
            self.subscription.id.clone(),
            self.candidate_plans.to_vec(),
        )
    }
}

/// The chosen subscription's plan version in force, or why there is none.
#[allow(clippy::result_large_err)]
fn chosen_plan<'a>(
    plan: Result<&'a Plan, PlanProblem>,
    park: &ParkContext<'_>,
    time: DateTime<Utc>,
) -> Result<&'a Plan, ParkReason> {
    plan.map_err(|problem| {
        let (customer, subscription_id, candidate_plans) = park.owned();
        match problem {
            PlanProblem::Unknown => ParkReason::UnknownPlan {
                customer,
                subscription: subscription_id,
                plan: park.subscription.plan_id.clone(),
                candidate_plans,
            },
            PlanProblem::NoVersion => ParkReason::NoPlanVersion {
                customer,
                subscription: subscription_id,
                plan: park.subscription.plan_id.clone(),
                time,
                candidate_plans,
            },
        }
    })
}

/// One charge per measure, in the measures' order: the subscription's
/// override, else the plan's charge; a meter neither prices parks the event.
#[allow(clippy::result_large_err)]
fn resolve_charges(
    event: &ValidatedEvent,
    plan: &Plan,
    meters: &MeterCatalog,
    park: &ParkContext<'_>,
) -> Result<Vec<ResolvedCharge>, ParkReason> {
    let subscription = park.subscription;
    let mut charges = Vec::with_capacity(event.measures.len());
    for measure in &event.measures {
        // Checked at the top; the park keeps this path panic-free.
        let meter = meters
            .get(&measure.meter)
            .ok_or_else(|| ParkReason::UnknownMeter {
                customer: park.customer.to_owned(),
                meter: measure.meter.clone(),
            })?;
        let Some(charge) = plan.resolve_charge(subscription, meter) else {
            let (customer, subscription_id, candidate_plans) = park.owned();
            return Err(ParkReason::NoChargeForMeter {
                customer,
                subscription: subscription_id,
                plan: plan.id.clone(),
                version: plan.version,
                meter: measure.meter.clone(),
                candidate_plans,
            });
        };
        charges.push(charge);
    }
    Ok(charges)
}

/// The plan must bill in the subscription's currency.
#[allow(clippy::result_large_err)]
fn check_currency(plan: &Plan, park: &ParkContext<'_>) -> Result<(), ParkReason> {
    let subscription = park.subscription;
    if plan.currency == subscription.currency {
        return Ok(());
    }
    let (customer, subscription_id, candidate_plans) = park.owned();
    Err(ParkReason::CurrencyMismatch {
        customer,
        subscription: subscription_id,
        subscription_currency: subscription.currency.clone(),
        plan: plan.id.clone(),
        version: plan.version,
        plan_currency: plan.currency.clone(),
        candidate_plans,
    })
}

/// The enriched event, once every part is resolved.
fn enriched_event(
    event: &ValidatedEvent,
    customer: &Customer,
    subscription: &Subscription,
    plan: &Plan,
    (billing_period, local_day): (Window, Window),
    charges: Vec<ResolvedCharge>,
) -> EnrichedEvent {
    EnrichedEvent {
        event: event.clone(),
        customer: CustomerInfo {
            id: customer.id.clone(),
            name: customer.name.clone(),
            legal_entity: customer.legal_entity.clone(),
            erp_customer_id: customer.erp_customer_id.clone(),
        },
        subscription_id: subscription.id.clone(),
        plan_id: plan.id.clone(),
        plan_version: plan.version,
        currency: subscription.currency.clone(),
        legal_entity: subscription.legal_entity.clone(),
        time_zone: subscription.time_zone.clone(),
        billing_anchor_day: subscription.billing_anchor_day,
        subscription_end: subscription.end,
        billing_period,
        local_day,
        gl_accounts: plan.gl_accounts.clone(),
        tax_code: plan.tax_code.clone(),
        minimum_commitment: subscription.minimum_commitment,
        base_fee: plan.base_fee,
        charges,
    }
}

fn plan_in_force<'a>(
    tables: &'a RefTables,
    plan_id: &str,
    time: DateTime<Utc>,
) -> Result<&'a Plan, PlanProblem> {
    if !tables.has_plan(plan_id) {
        return Err(PlanProblem::Unknown);
    }
    tables
        .plan_effective_at(plan_id, time)
        .ok_or(PlanProblem::NoVersion)
}

/// Step 3 of the module docs: the one subscription the event belongs to.
#[allow(clippy::result_large_err)] // see `resolve`
fn choose_subscription<'c, 'a>(
    customer: &str,
    time: DateTime<Utc>,
    candidates: &'c [Candidate<'a>],
    measured: &BTreeSet<&str>,
    candidate_plans: &[String],
) -> Result<&'c Candidate<'a>, ParkReason> {
    let mut charging: BTreeSet<&str> = BTreeSet::new();
    for meter in measured {
        let for_meter: Vec<String> = candidates
            .iter()
            .filter(|candidate| candidate.charges(meter))
            .map(|candidate| candidate.id().to_owned())
            .collect();
        if for_meter.len() > 1 {
            return Err(ParkReason::AmbiguousSubscription {
                customer: customer.to_owned(),
                meter: Some((*meter).to_owned()),
                subscriptions: for_meter,
                candidate_plans: candidate_plans.to_vec(),
            });
        }
        charging.extend(
            candidates
                .iter()
                .filter(|candidate| candidate.charges(meter))
                .map(Candidate::id),
        );
    }
    if charging.len() > 1 {
        return Err(ParkReason::AmbiguousSubscription {
            customer: customer.to_owned(),
            meter: None,
            subscriptions: charging.into_iter().map(str::to_owned).collect(),
            candidate_plans: candidate_plans.to_vec(),
        });
    }
    if let Some(id) = charging.first() {
        if let Some(candidate) = candidates.iter().find(|candidate| candidate.id() == *id) {
            return Ok(candidate);
        }
    }
    // Nothing charges the meters: pick the subscription that explains why.
    let explaining = match candidates {
        [only] => Some(only),
        _ => candidates.iter().find(|candidate| candidate.plan.is_err()),
    };
    explaining.ok_or_else(|| ParkReason::NoActiveSubscription {
        customer: customer.to_owned(),
        time,
        meters: measured.iter().map(|meter| (*meter).to_owned()).collect(),
        subscriptions: candidates
            .iter()
            .map(|candidate| candidate.id().to_owned())
            .collect(),
        candidate_plans: candidate_plans.to_vec(),
    })
}

/// The billing period and local day containing `time` for `subscription`.
fn windows(
    subscription: &Subscription,
    time: DateTime<Utc>,
) -> Result<(Window, Window), calendar::CalendarError> {
    let tz = calendar::parse_tz(&subscription.time_zone)?;
    let period = calendar::period_containing(subscription.billing_anchor_day, tz, time)?;
    let day = calendar::day_containing(tz, time)?;
    Ok((
        Window {
            id: period.id(),
            start: period.start(),
            end: period.end(),
        },
        Window {
            id: day.id(),
            start: day.start(),
            end: day.end(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contracts::{
        rating_segment_id, rating_segment_key, ChargeSource, Encoding, Measure, Origin,
    };
    use crate::meter::Aggregation;
    use crate::meter::UnitConversion;
    use crate::rating::ChargeModel;
    use crate::refdata::parse_jsonl;
    use rust_decimal_macros::dec;
    use serde_json::{json, Value};

    const CUSTOMER: &str = "cust-42";
    const LOS_ANGELES: &str = "America/Los_Angeles";
    const V2_FROM: &str = "2026-02-15T00:00:00Z";

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn customer_line(id: &str) -> String {
        json!({"id": id, "name": "Acme Corp", "legal_entity": "acme-us",
               "erp_customer_id": "C-000042", "status": "active"})
        .to_string()
    }

    fn plan_line(id: &str, version: u32, effective_from: &str, requests_price: &str) -> String {
        json!({
            "id": id, "version": version, "effective_from": effective_from,
            "currency": "USD", "base_fee": "49.00",
            "charges": {
                "input_tokens": {"model": "graduated", "tiers": [
                    {"up_to": "1000000", "unit_price": "0"},
                    {"up_to": null, "unit_price": "0.0000020"}], "tax_code": "SW052000"},
                "requests": {"model": "per_unit", "unit_price": requests_price}
            },
            "gl_accounts": {"usage_revenue": "4010", "unbilled_receivable": "1210", "receivable": "1200"},
            "tax_code": "SW050000"
        })
        .to_string()
    }

    /// A subscription of `CUSTOMER` to `plan`; `changes` overwrite fields.
    fn subscription_line(id: &str, plan: &str, changes: Value) -> String {
        let mut line = json!({
            "id": id, "customer_id": CUSTOMER, "plan_id": plan,
            "start": "2026-01-01T08:00:00Z", "end": "2026-07-01T07:00:00Z",
            "billing_anchor_day": 1, "time_zone": LOS_ANGELES, "currency": "USD",
            "legal_entity": "meterline-us", "minimum_commitment": "100.00"
        });
        for (field, value) in changes.as_object().unwrap() {
            line[field] = value.clone();
        }
        line.to_string()
    }

    /// Publishes lines through the JSON-lines loader into the tables, as
    /// `refdata load` followed by the enrich stage's topic reader would.
    fn load(tables: &mut RefTables, kind: RefKind, lines: &[String]) {
        for (key, value) in parse_jsonl(kind, &lines.join("\n")).unwrap() {
            tables.apply(kind, &key, value.as_deref()).unwrap();
        }
    }

    fn meters() -> MeterCatalog {
        meter_catalog([
            Meter {
                slug: "input_tokens".into(),
                event_type: "llm.call".into(),
                aggregation: Aggregation::Sum,
                value_property: Some("$.tokens".into()),
                group_by: BTreeMap::from([("model".into(), "$.model".into())]),
                unit_conversion: Some(UnitConversion {
                    multiply_by: dec!(0.001),
                    unit: "1K tokens".into(),
                }),
            },
            Meter {
                slug: "requests".into(),
                event_type: "llm.call".into(),
                aggregation: Aggregation::Count,
                value_property: None,
                group_by: BTreeMap::new(),
                unit_conversion: None,
            },
            Meter {
                slug: "storage_gb".into(),
                event_type: "storage.snapshot".into(),
                aggregation: Aggregation::Max,
                value_property: Some("$.gb".into()),
                group_by: BTreeMap::new(),
                unit_conversion: None,
            },
        ])
    }

    /// Customer, plan api-pro v1 (from Jan 1) and v2 (from Feb 15), and
    /// subscription sub-1 in Los Angeles time, anchor 1, Jan 1 to Jul 1.
    fn world() -> RefTables {
        let mut tables = RefTables::new();
        load(&mut tables, RefKind::Customers, &[customer_line(CUSTOMER)]);
        load(
            &mut tables,
            RefKind::Plans,
            &[
                plan_line("api-pro", 1, "2026-01-01T00:00:00Z", "0.0004"),
                plan_line("api-pro", 2, V2_FROM, "0.0003"),
            ],
        );
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line("sub-1", "api-pro", json!({}))],
        );
        tables
    }

    fn measure(meter: &str) -> Measure {
        let (value, group) = match meter {
            "input_tokens" => (
                Some(dec!(1500.500)),
                BTreeMap::from([("model".to_owned(), "gpt-4o".to_owned())]),
            ),
            "requests" => (None, BTreeMap::new()),
            _ => (Some(dec!(12.25)), BTreeMap::new()),
        };
        Measure {
            meter: meter.to_owned(),
            value,
            unique_value: None,
            group,
        }
    }

    fn event(time: &str, meters: &[&str]) -> ValidatedEvent {
        ValidatedEvent {
            correction: None,
            source: "svc/gateway".into(),
            id: "evt-1".into(),
            event_type: "llm.call".into(),
            subject: CUSTOMER.into(),
            time: at(time),
            measures: meters.iter().map(|meter| measure(meter)).collect(),
            data: json!({"model": "gpt-4o", "tokens": 1500500}),
            origin: Origin {
                topic: "usage.validated".into(),
                partition: 2,
                offset: 77,
                encoding: Encoding::Structured,
            },
        }
    }

    fn llm_call(time: &str) -> ValidatedEvent {
        event(time, &["input_tokens", "requests"])
    }

    fn park(tables: &RefTables, event: &ValidatedEvent) -> ParkReason {
        resolve(event, tables, &meters()).unwrap_err()
    }

    fn enrich(tables: &RefTables, event: &ValidatedEvent) -> EnrichedEvent {
        resolve(event, tables, &meters()).unwrap()
    }

    // ---- the happy path ---------------------------------------------------

    #[test]
    fn enriches_with_customer_subscription_plan_and_windows() {
        let enriched = enrich(&world(), &llm_call("2026-01-20T18:30:00Z"));
        assert_eq!(enriched.customer.erp_customer_id, "C-000042");
        assert_eq!(enriched.customer.legal_entity, "acme-us");
        assert_eq!(
            (
                enriched.subscription_id.as_str(),
                enriched.plan_id.as_str(),
                enriched.plan_version
            ),
            ("sub-1", "api-pro", 1)
        );
        assert_eq!(enriched.currency, "USD");
        assert_eq!(enriched.legal_entity, "meterline-us");
        assert_eq!(
            (enriched.time_zone.as_str(), enriched.billing_anchor_day),
            (LOS_ANGELES, 1)
        );
        assert_eq!(
            enriched.billing_period,
            Window {
                id: "2026-01-01".into(),
                start: at("2026-01-01T08:00:00Z"),
                end: at("2026-02-01T08:00:00Z"),
            }
        );
        assert_eq!(
            enriched.local_day,
            Window {
                id: "2026-01-20".into(),
                start: at("2026-01-20T08:00:00Z"),
                end: at("2026-01-21T08:00:00Z"),
            }
        );
        assert_eq!(enriched.gl_accounts.unbilled_receivable, "1210");
        assert_eq!(enriched.tax_code.as_deref(), Some("SW050000"));
        assert_eq!(enriched.minimum_commitment, Some(dec!(100.00)));
        assert_eq!(enriched.base_fee, Some(dec!(49.00)));

        let meters: Vec<_> = enriched.charges.iter().map(|c| c.meter.as_str()).collect();
        assert_eq!(meters, ["input_tokens", "requests"]);
        let tokens = enriched.charge("input_tokens").unwrap();
        assert_eq!(tokens.aggregation, Aggregation::Sum);
        assert_eq!(tokens.source, ChargeSource::Plan);
        assert_eq!(tokens.tax_code.as_deref(), Some("SW052000"));
        assert_eq!(tokens.unit.as_deref(), Some("1K tokens"));
        let requests = enriched.charge("requests").unwrap();
        assert_eq!(requests.aggregation, Aggregation::Count);
        assert_eq!(
            requests.charge,
            ChargeModel::PerUnit {
                unit_price: dec!(0.0004)
            }
        );
        // No charge-level tax code: the plan's applies.
        assert_eq!(requests.tax_code.as_deref(), Some("SW050000"));
        assert_eq!(requests.unit, None);
        assert_eq!(enriched.event, llm_call("2026-01-20T18:30:00Z"));
    }

    // ---- effective dating -------------------------------------------------

    #[test]
    fn subscription_start_is_inclusive_and_end_exclusive() {
        let tables = world();
        assert_eq!(
            enrich(&tables, &llm_call("2026-01-01T08:00:00Z")).subscription_id,
            "sub-1"
        );
        assert_eq!(
            park(&tables, &llm_call("2026-01-01T07:59:59.999999999Z")).code(),
            "no_active_subscription"
        );
        assert_eq!(
            enrich(&tables, &llm_call("2026-07-01T06:59:59.999999999Z")).subscription_id,
            "sub-1"
        );
        let at_end = park(&tables, &llm_call("2026-07-01T07:00:00Z"));
        assert_eq!(at_end.code(), "no_active_subscription");
        assert_eq!(
            at_end.to_string(),
            "customer \"cust-42\" has no subscription active at 2026-07-01T07:00:00Z that charges meters [\"input_tokens\", \"requests\"]"
        );
    }

    #[test]
    fn a_renewal_ending_where_the_next_starts_hands_over_at_the_boundary() {
        let mut tables = world();
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-2",
                "api-pro",
                json!({"start": "2026-07-01T07:00:00Z", "end": null}),
            )],
        );
        assert_eq!(
            enrich(&tables, &llm_call("2026-07-01T06:59:59Z")).subscription_id,
            "sub-1"
        );
        assert_eq!(
            enrich(&tables, &llm_call("2026-07-01T07:00:00Z")).subscription_id,
            "sub-2"
        );
    }

    #[test]
    fn the_subscription_time_zone_decides_the_billing_period() {
        // 03:00 UTC on March 1 is still February 28 in Los Angeles.
        let tables = world();
        let enriched = enrich(&tables, &llm_call("2026-03-01T03:00:00Z"));
        assert_eq!(enriched.billing_period.id, "2026-02-01");
        assert_eq!(enriched.billing_period.start, at("2026-02-01T08:00:00Z"));
        assert_eq!(enriched.billing_period.end, at("2026-03-01T08:00:00Z"));
        assert_eq!(enriched.local_day.id, "2026-02-28");

        // The same instant for a UTC subscription is in March.
        let mut utc = RefTables::new();
        load(&mut utc, RefKind::Customers, &[customer_line(CUSTOMER)]);
        load(
            &mut utc,
            RefKind::Plans,
            &[plan_line("api-pro", 1, "2026-01-01T00:00:00Z", "0.0004")],
        );
        load(
            &mut utc,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-1",
                "api-pro",
                json!({"time_zone": "UTC"}),
            )],
        );
        let enriched = enrich(&utc, &llm_call("2026-03-01T03:00:00Z"));
        assert_eq!(enriched.billing_period.id, "2026-03-01");
        assert_eq!(enriched.local_day.id, "2026-03-01");
    }

    #[test]
    fn the_anchor_day_decides_the_billing_period() {
        let mut tables = world();
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-1",
                "api-pro",
                json!({"billing_anchor_day": 31}),
            )],
        );
        let enriched = enrich(&tables, &llm_call("2026-03-01T03:00:00Z"));
        // Anchor 31 clamps to Feb 28 in 2026.
        assert_eq!(enriched.billing_period.id, "2026-02-28");
        assert_eq!(enriched.billing_anchor_day, 31);
    }

    #[test]
    fn a_plan_version_taking_effect_mid_period_starts_a_new_segment() {
        let tables = world();
        let before = enrich(&tables, &llm_call("2026-02-14T23:59:59Z"));
        let after = enrich(&tables, &llm_call(V2_FROM));
        assert_eq!((before.plan_version, after.plan_version), (1, 2));
        assert_eq!(before.billing_period, after.billing_period);
        assert_eq!(
            before.charge("requests").unwrap().charge,
            ChargeModel::PerUnit {
                unit_price: dec!(0.0004)
            }
        );
        assert_eq!(
            after.charge("requests").unwrap().charge,
            ChargeModel::PerUnit {
                unit_price: dec!(0.0003)
            }
        );
        let tokens = measure("input_tokens");
        assert_ne!(
            before.rating_segment_key(&tokens),
            after.rating_segment_key(&tokens)
        );
    }

    #[test]
    fn an_override_beats_the_plan_charge() {
        let mut tables = world();
        let override_model = json!({"model": "per_unit", "unit_price": "0.0000015"});
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-1",
                "api-pro",
                json!({"price_overrides": {"input_tokens": override_model}}),
            )],
        );
        let enriched = enrich(&tables, &llm_call("2026-01-20T18:30:00Z"));
        let tokens = enriched.charge("input_tokens").unwrap();
        assert_eq!(
            tokens.charge,
            ChargeModel::PerUnit {
                unit_price: dec!(0.0000015)
            }
        );
        assert_eq!(tokens.source, ChargeSource::Override);
        // The override changes the price, not the tax treatment.
        assert_eq!(tokens.tax_code.as_deref(), Some("SW052000"));
        assert_eq!(
            enriched.charge("requests").unwrap().source,
            ChargeSource::Plan
        );
    }

    #[test]
    fn an_override_charges_a_meter_the_plan_lacks() {
        let mut tables = world();
        let storage = json!({"model": "per_unit", "unit_price": "0.023"});
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-1",
                "api-pro",
                json!({"price_overrides": {"storage_gb": storage}}),
            )],
        );
        let enriched = enrich(&tables, &event("2026-01-20T18:30:00Z", &["storage_gb"]));
        let charge = enriched.charge("storage_gb").unwrap();
        assert_eq!(charge.source, ChargeSource::Override);
        assert_eq!(charge.aggregation, Aggregation::Max);
        assert_eq!(charge.tax_code.as_deref(), Some("SW050000"));
    }

    // ---- park reasons -----------------------------------------------------

    #[test]
    fn unknown_customer() {
        let mut tables = world();
        let mut stranger = llm_call("2026-01-20T18:30:00Z");
        stranger.subject = "cust-7".into();
        let reason = park(&tables, &stranger);
        assert_eq!(reason.code(), "unknown_customer");
        assert_eq!(
            reason.resolved_by(),
            [RefTrigger::new(RefKind::Customers, "cust-7")]
        );

        // A tombstone retires the customer: its usage parks from then on.
        tables.apply(RefKind::Customers, CUSTOMER, None).unwrap();
        let reason = park(&tables, &llm_call("2026-01-20T18:30:00Z"));
        assert_eq!(
            reason,
            ParkReason::UnknownCustomer {
                customer: CUSTOMER.into()
            }
        );
        assert_eq!(
            reason.message(),
            "customer \"cust-42\" is unknown: not on ref.customers, or retired"
        );
        // ...and re-publishing it resolves the park.
        let triggers = tables
            .apply_tracked(
                RefKind::Customers,
                CUSTOMER,
                Some(customer_line(CUSTOMER).as_bytes()),
            )
            .unwrap();
        assert!(triggers
            .iter()
            .any(|trigger| reason.is_resolved_by(trigger)));
        assert!(resolve(&llm_call("2026-01-20T18:30:00Z"), &tables, &meters()).is_ok());
    }

    #[test]
    fn no_active_subscription() {
        let mut tables = world();
        tables.apply(RefKind::Subscriptions, "sub-1", None).unwrap();
        let reason = park(&tables, &llm_call("2026-01-20T18:30:00Z"));
        assert_eq!(reason.code(), "no_active_subscription");
        assert_eq!(
            reason.resolved_by(),
            [RefTrigger::new(RefKind::Subscriptions, CUSTOMER)]
        );
        let triggers = tables
            .apply_tracked(
                RefKind::Subscriptions,
                "sub-1",
                Some(subscription_line("sub-1", "api-pro", json!({})).as_bytes()),
            )
            .unwrap();
        assert!(triggers
            .iter()
            .any(|trigger| reason.is_resolved_by(trigger)));
    }

    #[test]
    fn several_active_subscriptions_charging_other_meters() {
        let mut tables = world();
        load(
            &mut tables,
            RefKind::Plans,
            &[plan_line("api-lite", 1, "2026-01-01T00:00:00Z", "0.0005")],
        );
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line("sub-2", "api-lite", json!({}))],
        );
        let reason = park(&tables, &event("2026-01-20T18:30:00Z", &["storage_gb"]));
        assert_eq!(reason.code(), "no_active_subscription");
        assert!(
            reason
                .message()
                .ends_with("(active, but charging other meters: [\"sub-1\", \"sub-2\"])"),
            "{reason}"
        );
        assert_eq!(
            reason.resolved_by(),
            [
                RefTrigger::new(RefKind::Subscriptions, CUSTOMER),
                RefTrigger::new(RefKind::Plans, "api-lite"),
                RefTrigger::new(RefKind::Plans, "api-pro"),
            ]
        );
    }

    #[test]
    fn ambiguous_subscription_for_one_meter() {
        let mut tables = world();
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line("sub-0", "api-pro", json!({}))],
        );
        let reason = park(&tables, &llm_call("2026-01-20T18:30:00Z"));
        assert_eq!(reason.code(), "ambiguous_subscription");
        assert_eq!(
            reason.message(),
            "customer \"cust-42\" has more than one active subscription for meter \"input_tokens\": [\"sub-0\", \"sub-1\"]"
        );
        // Ending one of them resolves it.
        let triggers = tables
            .apply_tracked(RefKind::Subscriptions, "sub-0", None)
            .unwrap();
        assert!(triggers
            .iter()
            .any(|trigger| reason.is_resolved_by(trigger)));
        assert_eq!(
            enrich(&tables, &llm_call("2026-01-20T18:30:00Z")).subscription_id,
            "sub-1"
        );
    }

    #[test]
    fn ambiguous_when_the_meters_of_one_event_belong_to_different_subscriptions() {
        let mut tables = world();
        // sub-2 charges storage_gb (by override; its plan is not known yet),
        // sub-1 charges input_tokens: each meter has one subscription, but
        // one event cannot be billed to two.
        let storage = json!({"storage_gb": {"model": "per_unit", "unit_price": "0.023"}});
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-2",
                "ghost",
                json!({"price_overrides": storage}),
            )],
        );
        let reason = park(
            &tables,
            &event("2026-01-20T18:30:00Z", &["input_tokens", "storage_gb"]),
        );
        assert_eq!(
            reason,
            ParkReason::AmbiguousSubscription {
                customer: CUSTOMER.into(),
                meter: None,
                subscriptions: vec!["sub-1".into(), "sub-2".into()],
                candidate_plans: vec!["api-pro".into(), "ghost".into()],
            }
        );
    }

    #[test]
    fn plan_charges_pick_the_subscription_among_several_active() {
        let mut tables = world();
        let storage_plan = json!({
            "id": "storage", "version": 1, "effective_from": "2026-01-01T00:00:00Z",
            "currency": "USD", "charges": {"storage_gb": {"model": "per_unit", "unit_price": "0.023"}},
            "gl_accounts": {"usage_revenue": "4020", "unbilled_receivable": "1210", "receivable": "1200"}
        });
        load(&mut tables, RefKind::Plans, &[storage_plan.to_string()]);
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line("sub-2", "storage", json!({}))],
        );
        let storage = enrich(&tables, &event("2026-01-20T18:30:00Z", &["storage_gb"]));
        assert_eq!(
            (
                storage.subscription_id.as_str(),
                storage.gl_accounts.usage_revenue.as_str()
            ),
            ("sub-2", "4020")
        );
        assert_eq!(storage.tax_code, None);
        assert_eq!(storage.charges[0].tax_code, None);
        assert_eq!(storage.base_fee, None);
        assert_eq!(
            enrich(&tables, &llm_call("2026-01-20T18:30:00Z")).subscription_id,
            "sub-1"
        );
    }

    #[test]
    fn unknown_plan() {
        let mut tables = world();
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line("sub-1", "api-max", json!({}))],
        );
        let reason = park(&tables, &llm_call("2026-01-20T18:30:00Z"));
        assert_eq!(reason.code(), "unknown_plan");
        assert!(reason.is_resolved_by(&RefTrigger::new(RefKind::Plans, "api-max")));
        let triggers = tables
            .apply_tracked(
                RefKind::Plans,
                "api-max:1",
                Some(plan_line("api-max", 1, "2026-01-01T00:00:00Z", "0.0004").as_bytes()),
            )
            .unwrap();
        assert!(triggers
            .iter()
            .any(|trigger| reason.is_resolved_by(trigger)));
        assert_eq!(
            enrich(&tables, &llm_call("2026-01-20T18:30:00Z")).plan_id,
            "api-max"
        );
    }

    #[test]
    fn no_plan_version_in_force_yet() {
        let mut tables = world();
        // The subscription starts before the plan's first version.
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-1",
                "api-pro",
                json!({"start": "2025-12-01T08:00:00Z"}),
            )],
        );
        let reason = park(&tables, &llm_call("2025-12-31T23:59:59Z"));
        assert_eq!(reason.code(), "no_plan_version");
        assert_eq!(
            reason.message(),
            "plan \"api-pro\" of subscription \"sub-1\" has no version in force at 2025-12-31T23:59:59Z"
        );
        assert_eq!(
            enrich(&tables, &llm_call("2026-01-01T00:00:00Z")).plan_version,
            1
        );
    }

    #[test]
    fn no_charge_for_meter() {
        let tables = world();
        let reason = park(
            &tables,
            &event("2026-01-20T18:30:00Z", &["requests", "storage_gb"]),
        );
        assert_eq!(
            reason,
            ParkReason::NoChargeForMeter {
                customer: CUSTOMER.into(),
                subscription: "sub-1".into(),
                plan: "api-pro".into(),
                version: 1,
                meter: "storage_gb".into(),
                candidate_plans: vec!["api-pro".into()],
            }
        );
        assert_eq!(
            reason.resolved_by(),
            [
                RefTrigger::new(RefKind::Subscriptions, CUSTOMER),
                RefTrigger::new(RefKind::Plans, "api-pro")
            ]
        );
    }

    #[test]
    fn currency_mismatch() {
        let mut tables = world();
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-1",
                "api-pro",
                json!({"currency": "EUR"}),
            )],
        );
        let reason = park(&tables, &llm_call("2026-01-20T18:30:00Z"));
        assert_eq!(reason.code(), "currency_mismatch");
        assert_eq!(
            reason.message(),
            "subscription \"sub-1\" bills in EUR but plan \"api-pro\" version 1 prices in USD"
        );
    }

    #[test]
    fn unknown_meter_is_a_config_problem() {
        let tables = world();
        let mut event = llm_call("2026-01-20T18:30:00Z");
        event.measures.push(measure("gpu_seconds"));
        let reason = park(&tables, &event);
        assert_eq!(reason.code(), "unknown_meter");
        assert_eq!(reason.resolved_by(), []);
    }

    #[test]
    fn calendar_failures_park_instead_of_panicking() {
        let mut tables = world();
        load(
            &mut tables,
            RefKind::Subscriptions,
            &[subscription_line(
                "sub-1",
                "api-pro",
                json!({"time_zone": "Pacific/Kiritimati", "end": null}),
            )],
        );
        // Local time is already year 10000 in UTC+14.
        let reason = park(&tables, &llm_call("9999-12-31T12:00:00Z"));
        assert_eq!(reason.code(), "no_billing_period");
    }

    #[test]
    fn plan_version_tombstones_fall_back_to_the_previous_version() {
        let mut tables = world();
        assert_eq!(
            enrich(&tables, &llm_call("2026-03-10T00:00:00Z")).plan_version,
            2
        );
        tables.apply(RefKind::Plans, "api-pro:2", None).unwrap();
        assert_eq!(
            enrich(&tables, &llm_call("2026-03-10T00:00:00Z")).plan_version,
            1
        );
        tables.apply(RefKind::Plans, "api-pro:1", None).unwrap();
        assert_eq!(
            park(&tables, &llm_call("2026-03-10T00:00:00Z")).code(),
            "unknown_plan"
        );
    }

    #[test]
    fn park_codes_are_stable_and_listed() {
        let reasons = [
            ParkReason::UnknownMeter {
                customer: "c".into(),
                meter: "m".into(),
            },
            ParkReason::UnknownCustomer {
                customer: "c".into(),
            },
            ParkReason::NoActiveSubscription {
                customer: "c".into(),
                time: at("2026-01-01T00:00:00Z"),
                meters: vec![],
                subscriptions: vec![],
                candidate_plans: vec![],
            },
            ParkReason::AmbiguousSubscription {
                customer: "c".into(),
                meter: Some("m".into()),
                subscriptions: vec![],
                candidate_plans: vec![],
            },
            ParkReason::UnknownPlan {
                customer: "c".into(),
                subscription: "s".into(),
                plan: "p".into(),
                candidate_plans: vec![],
            },
            ParkReason::NoPlanVersion {
                customer: "c".into(),
                subscription: "s".into(),
                plan: "p".into(),
                time: at("2026-01-01T00:00:00Z"),
                candidate_plans: vec![],
            },
            ParkReason::NoChargeForMeter {
                customer: "c".into(),
                subscription: "s".into(),
                plan: "p".into(),
                version: 1,
                meter: "m".into(),
                candidate_plans: vec![],
            },
            ParkReason::CurrencyMismatch {
                customer: "c".into(),
                subscription: "s".into(),
                subscription_currency: "EUR".into(),
                plan: "p".into(),
                version: 1,
                plan_currency: "USD".into(),
                candidate_plans: vec![],
            },
            ParkReason::NoBillingPeriod {
                customer: "c".into(),
                subscription: "s".into(),
                message: "m".into(),
                candidate_plans: vec![],
            },
            ParkReason::CorrectionTargetParked {
                customer: "c".into(),
                target_source: "svc".into(),
                target_id: "e1".into(),
                target_reason: "unknown_customer".into(),
            },
        ];
        let codes: Vec<_> = reasons.iter().map(ParkReason::code).collect();
        assert_eq!(codes, ParkReason::ALL_CODES);
        assert!(reasons.iter().all(|reason| reason.customer() == "c"));
    }

    // ---- the output contract ----------------------------------------------

    #[test]
    fn enriched_event_json_round_trips_with_exact_decimals() {
        let enriched = enrich(&world(), &llm_call("2026-03-01T03:00:00Z"));
        let bytes = enriched.to_json_bytes().unwrap();
        let back = EnrichedEvent::from_json_slice(&bytes).unwrap();
        assert_eq!(back, enriched);
        // Scale survives, not just the value: 100.00 stays "100.00".
        assert_eq!(back.minimum_commitment.unwrap().to_string(), "100.00");
        assert_eq!(
            back.event.measures[0].value.unwrap().to_string(),
            "1500.500"
        );
        // Deterministic: encoding again gives the same bytes.
        assert_eq!(back.to_json_bytes().unwrap(), bytes);

        let text = String::from_utf8(bytes).unwrap();
        for expected in [
            r#""minimum_commitment":"100.00","base_fee":"49.00""#,
            r#"{"up_to":null,"unit_price":"0.0000020"}"#,
            r#""billing_period":{"id":"2026-02-01","start":"2026-02-01T08:00:00Z","end":"2026-03-01T08:00:00Z"}"#,
            r#""local_day":{"id":"2026-02-28","start":"2026-02-28T08:00:00Z","end":"2026-03-01T08:00:00Z"}"#,
            r#""aggregation":"SUM","charge":{"model":"graduated""#,
            r#""source":"plan","tax_code":"SW052000","unit":"1K tokens"}"#,
        ] {
            assert!(text.contains(expected), "{expected} not in {text}");
        }
        assert!(
            text.starts_with(r#"{"event":{"source":"svc/gateway","id":"evt-1","#),
            "{text}"
        );
        // No JSON number stands for money anywhere.
        let value: Value = serde_json::from_str(&text).unwrap();
        assert!(value["charges"][1]["charge"]["unit_price"].is_string());
    }

    #[test]
    fn enriched_event_json_has_the_documented_shape() {
        let enriched = enrich(&world(), &llm_call("2026-03-01T03:00:00Z"));
        let value = serde_json::to_value(&enriched).unwrap();
        let fields: Vec<_> = value.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            fields,
            [
                "base_fee",
                "billing_anchor_day",
                "billing_period",
                "charges",
                "currency",
                "customer",
                "event",
                "gl_accounts",
                "legal_entity",
                "local_day",
                "minimum_commitment",
                "plan_id",
                "plan_version",
                "subscription_end",
                "subscription_id",
                "tax_code",
                "time_zone",
            ]
        );
        assert_eq!(
            value["customer"],
            json!({"id": "cust-42", "name": "Acme Corp", "legal_entity": "acme-us", "erp_customer_id": "C-000042"})
        );
        // Version 2 is in force on March 1.
        assert_eq!(
            value["charges"][1]["charge"],
            json!({"model": "per_unit", "unit_price": "0.0003"})
        );
    }

    #[test]
    fn rating_segment_keys_are_stable_and_distinct() {
        let enriched = enrich(&world(), &llm_call("2026-03-01T03:00:00Z"));
        let tokens = &enriched.event.measures[0];
        let key = enriched.rating_segment_key(tokens);
        assert_eq!(
            key,
            r#"["sub-1","input_tokens","2026-02-01",2,{"model":"gpt-4o"}]"#
        );
        let id = enriched.rating_segment_id(tokens);
        assert_eq!(id.len(), 64);
        assert!(id
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(id, rating_segment_id(&key));

        let group = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let base = rating_segment_key("s", "m", "2026-02-01", 1, &group(&[("a", "1")]));
        let variants = [
            rating_segment_key("s2", "m", "2026-02-01", 1, &group(&[("a", "1")])),
            rating_segment_key("s", "m2", "2026-02-01", 1, &group(&[("a", "1")])),
            rating_segment_key("s", "m", "2026-03-01", 1, &group(&[("a", "1")])),
            rating_segment_key("s", "m", "2026-02-01", 2, &group(&[("a", "1")])),
            rating_segment_key("s", "m", "2026-02-01", 1, &group(&[("a", "2")])),
            rating_segment_key("s", "m", "2026-02-01", 1, &group(&[])),
            // Quoting keeps separators inside ids from colliding.
            rating_segment_key("s\",\"m", "", "2026-02-01", 1, &group(&[("a", "1")])),
        ];
        for variant in &variants {
            assert_ne!(variant, &base);
        }
        // Group order does not matter: it is a sorted map.
        assert_eq!(
            rating_segment_key("s", "m", "p", 1, &group(&[("b", "2"), ("a", "1")])),
            rating_segment_key("s", "m", "p", 1, &group(&[("a", "1"), ("b", "2")]))
        );
    }
}
