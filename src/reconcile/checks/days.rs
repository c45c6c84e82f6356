//! The checks per UTC day of event time (validate, enrich, rate) and
//! `events_topic`: one function per check.

use std::collections::BTreeSet;

use crate::lineage::{self, DayCounters};
use crate::topology::names::{self, dlq};

use super::super::facts::Facts;
use super::super::report::{Check, DayRow};
use super::{count_check, in_period};

pub(super) fn check_days(
    facts: &Facts,
    period: Option<&str>,
    checks: &mut Vec<Check>,
) -> Vec<DayRow> {
    let mut days: BTreeSet<String> = facts.counters.keys().map(|(_, d)| d.clone()).collect();
    days.extend(facts.topic_days.keys().map(|(_, d)| d.clone()));
    let mut rows = Vec::new();
    let mut validate_in_total = 0u64;
    for day in days {
        let v = facts.counter("validate", &day);
        validate_in_total += v.records_in;
        if !in_period(period, &day) {
            continue;
        }
        let e = facts.counter("enrich", &day);
        let validated = facts.topic_day(names::VALIDATED, &day);
        let dlq_v = facts.topic_day(&dlq("validate"), &day);
        let enriched = facts.topic_day(names::ENRICHED, &day);
        let rated = facts.topic_day(names::RATED, &day);
        let dlq_r = facts.topic_day(&dlq("rate"), &day);
        let subject = format!("day {day}");
        let first = checks.len();
        checks.push(events_in(&subject, &v));
        checks.push(validated_topic(&subject, &v, validated));
        checks.push(dead_letters_topic(&subject, &v, dlq_v));
        if day != lineage::UNKNOWN_DAY {
            let enrich_dead_letters = facts.dead_letters.get("enrich").copied().unwrap_or(0);
            checks.push(enrich_in(&subject, &v, &e, enrich_dead_letters));
            checks.push(enrich_split(&subject, &e));
            checks.push(enriched_topic(&subject, &e, enriched));
            checks.push(rate_in(&subject, enriched, rated, dlq_r));
        }
        let ok = checks.get(first..).unwrap_or(&[]).iter().all(|c| c.ok);
        rows.push(DayRow {
            day,
            validate: v.into(),
            enrich: e.into(),
            validated_topic: validated,
            dlq_validate_topic: dlq_v,
            enriched_topic: enriched,
            rated_topic: rated,
            dlq_rate_topic: dlq_r,
            ok,
        });
    }
    if period.is_none() {
        checks.push(events_topic(facts, validate_in_total));
    }
    rows
}

/// `events_in`: validate's records in = validated + dead-lettered + duplicates.
fn events_in(subject: &str, v: &DayCounters) -> Check {
    count_check(
        subject,
        "events_in",
        v.records_in,
        v.passed + v.held + v.released,
        format!(
            "events in {} != validated {} + dead-lettered {} + duplicates {}",
            v.records_in, v.passed, v.held, v.released
        ),
    )
}

/// `validated_topic`: validated = records of `usage.validated` that day.
fn validated_topic(subject: &str, v: &DayCounters, validated: u64) -> Check {
    count_check(
        subject,
        "validated_topic",
        v.passed,
        validated,
        format!(
            "validated {} != usage.validated records {validated}",
            v.passed
        ),
    )
}

/// `dead_letters_topic`: dead-lettered = records of `meterline.dlq.validate`
/// that day.
fn dead_letters_topic(subject: &str, v: &DayCounters, dlq_v: u64) -> Check {
    count_check(
        subject,
        "dead_letters_topic",
        v.held,
        dlq_v,
        format!(
            "dead-lettered {} != meterline.dlq.validate records {dlq_v}",
            v.held
        ),
    )
}

/// `enrich_in`: enrich's validated events in = validate's validated.
fn enrich_in(subject: &str, v: &DayCounters, e: &DayCounters, enrich_dead_letters: u64) -> Check {
    count_check(
        subject,
        "enrich_in",
        v.passed,
        e.records_in,
        format!(
            "validated {} != enrich in {} (enrich dead letters: {})",
            v.passed, e.records_in, enrich_dead_letters
        ),
    )
}

/// `enrich_split`: enrich in = enriched on arrival + parked on arrival, and
/// re-emitted <= parked.
fn enrich_split(subject: &str, e: &DayCounters) -> Check {
    let mut split = count_check(
        subject,
        "enrich_split",
        e.records_in,
        e.passed + e.held,
        format!(
            "enrich in {} != enriched {} + parked {} (re-emitted {})",
            e.records_in, e.passed, e.held, e.released
        ),
    );
    if e.released > e.held {
        split.ok = false;
        split.detail = format!("re-emitted {} > parked {}", e.released, e.held);
    }
    split
}

/// `enriched_topic`: records of `usage.enriched` = enriched on arrival +
/// re-emitted.
fn enriched_topic(subject: &str, e: &DayCounters, enriched: u64) -> Check {
    count_check(
        subject,
        "enriched_topic",
        e.passed + e.released,
        enriched,
        format!(
            "enriched {} + re-emitted {} != usage.enriched records {enriched}",
            e.passed, e.released
        ),
    )
}

/// `rate_in`: records of `usage.enriched` = records of `usage.rated` (an
/// amendment's retraction half not counted: it comes with its replacement;
/// nor a rerate's adjustments: its command has no event day) +
/// `meterline.dlq.rate`.
fn rate_in(subject: &str, enriched: u64, rated: u64, dlq_r: u64) -> Check {
    count_check(
        subject,
        "rate_in",
        enriched,
        rated + dlq_r,
        format!(
            "usage.enriched records {enriched} != usage.rated {rated} + meterline.dlq.rate {dlq_r}"
        ),
    )
}

/// `events_topic` (all days): records of `usage.events` = validate's records
/// in + in flight.
fn events_topic(facts: &Facts, validate_in_total: u64) -> Check {
    let fl = facts.in_flight.get("validate").copied().unwrap_or(0);
    count_check(
        "all days",
        "events_topic",
        facts.events_total,
        validate_in_total + fl,
        format!(
            "usage.events records {} != validate records in {validate_in_total} + in flight {fl}",
            facts.events_total
        ),
    )
}
