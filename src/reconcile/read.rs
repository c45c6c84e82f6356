//! Reading Kafka: everything reconcile checks, under read_committed.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;

use crate::config::Config;
use crate::contracts::Posting;
use crate::contracts::{ClosedWindow, Command, CommandKind, Invoice};
use crate::kafka::{self, ClientError};
use crate::lineage::{self, DayCounters};
use crate::topology::counts::for_each_record;
use crate::topology::names::{self, dlq};
use crate::topology::postings::{parse_or_count, Unreadable};

use super::facts::{Facts, RecordId};

#[derive(Deserialize)]
struct TimeOnly {
    time: DateTime<Utc>,
}

/// A record of `usage.enriched`: an enriched event or a retraction.
#[derive(Deserialize)]
#[serde(untagged)]
enum EnrichedTime {
    Event { event: TimeOnly },
    Retraction { retraction: TimeOnly },
}

fn validated_day(v: &[u8]) -> Option<String> {
    serde_json::from_slice::<TimeOnly>(v)
        .ok()
        .map(|t| lineage::day_of(t.time))
}

fn enriched_day(v: &[u8]) -> Option<String> {
    serde_json::from_slice::<EnrichedTime>(v)
        .ok()
        .map(|t| match t {
            EnrichedTime::Event { event: t } | EnrichedTime::Retraction { retraction: t } => {
                lineage::day_of(t.time)
            }
        })
}

fn unknown() -> String {
    lineage::UNKNOWN_DAY.to_string()
}

fn headers_of(m: &rdkafka::message::BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    kafka::record_headers(m).headers
}

/// The committed offsets of a stage's consumer group on its input topic.
fn committed(config: &Config, stage: &str, topic: &str) -> Result<BTreeMap<i32, i64>, ClientError> {
    let mut cc = kafka::reader_config(config);
    cc.set("group.id", config.group_id(stage));
    let c: BaseConsumer = kafka::create(&cc, rdkafka::consumer::DefaultConsumerContext)?;
    // A topic created a moment ago may not be in the metadata yet: wait
    // for it a bounded time, as the stages do.
    let md = kafka::check_topics(&c, config, &[topic.to_string()])?;
    let parts = kafka::partition_count(&md, topic, config)?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(
        tpl,
        std::time::Duration::from_millis(config.kafka.request_timeout_ms),
    )?;
    Ok(got
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                },
            )
        })
        .collect())
}

/// Whether any partition of `topic` had records deleted from its start.
fn truncated(config: &Config, topic: &str) -> Result<bool, ClientError> {
    let c = kafka::reader(config)?;
    // A topic created a moment ago may not be in the metadata yet: wait
    // for it a bounded time, as the stages do.
    let md = kafka::check_topics(&c, config, &[topic.to_string()])?;
    let parts = kafka::partition_count(&md, topic, config)?;
    for p in 0..parts {
        let (low, _) = c.fetch_watermarks(
            topic,
            p,
            std::time::Duration::from_millis(config.kafka.request_timeout_ms),
        )?;
        if low > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Reads a changelog: the latest value per (partition, key).
/// (partition, key) -> latest value of a changelog.
type Latest = BTreeMap<(i32, Vec<u8>), Vec<u8>>;

fn latest(config: &Config, topic: &str) -> Result<Latest, ClientError> {
    let mut m = BTreeMap::new();
    for_each_record(config, topic, |r| {
        let Some(k) = r.key() else { return };
        match r.payload() {
            Some(v) => {
                m.insert((r.partition(), k.to_vec()), v.to_vec());
            }
            None => {
                m.remove(&(r.partition(), k.to_vec()));
            }
        }
    })?;
    Ok(m)
}

/// Input records each stage had not committed when reconcile read them.
struct InFlight {
    /// Stage -> its consumer group's committed offsets on its input topic.
    offsets: BTreeMap<&'static str, BTreeMap<i32, i64>>,
    /// Stage -> input records at or after those offsets.
    counts: BTreeMap<String, u64>,
}

impl InFlight {
    /// Reads the group offsets (before the topics: a record a stage had not
    /// committed then is in flight).
    fn read(config: &Config) -> Result<Self, ClientError> {
        let inputs = [
            ("validate", names::EVENTS),
            ("dedupe", names::IDENTIFIED),
            ("enrich", names::VALIDATED),
            ("rate", names::ENRICHED),
            ("aggregate", names::RATED),
            ("post", names::WINDOWS),
            ("invoice", names::COMMANDS),
        ];
        let mut offsets = BTreeMap::new();
        for (stage, topic) in inputs {
            offsets.insert(stage, committed(config, stage, &config.topic(topic))?);
        }
        Ok(InFlight {
            offsets,
            counts: BTreeMap::new(),
        })
    }

    /// `m`, a record of `stage`'s input topic, was read.
    fn saw(&mut self, stage: &str, m: &rdkafka::message::BorrowedMessage<'_>) {
        let done = self
            .offsets
            .get(stage)
            .and_then(|o| o.get(&m.partition()))
            .copied()
            .unwrap_or(0);
        let n = self.counts.entry(stage.to_string()).or_default();
        if m.offset() >= done {
            *n += 1;
        }
    }
}

/// Reads everything reconcile checks. Records are counted under read_committed.
pub fn read(config: &Config) -> Result<Facts, ClientError> {
    let mut f = Facts::default();
    let mut flight = InFlight::read(config)?;
    read_counters(config, &mut f)?;
    let mut unreadable: BTreeMap<String, Unreadable> = BTreeMap::new();
    read_usage_topics(config, &mut f, &mut flight, &mut unreadable)?;
    // Open windows before closed ones: a window aggregate closes in between
    // is then seen twice (and counted once, closed), never not at all.
    let mut open = read_aggregate_state(config, &mut f)?;
    for ((_, _), v) in latest(config, &config.topic(names::REF_SUBSCRIPTIONS))? {
        if let Ok(sub) = serde_json::from_slice::<crate::refdata::Subscription>(&v) {
            f.subscriptions.push(sub);
        }
    }
    let mut closed = Vec::new();
    let u = unreadable.entry(names::WINDOWS.to_string()).or_default();
    for_each_record(config, &config.topic(names::WINDOWS), |m| {
        flight.saw("post", m);
        if let Some(w) = parse_or_count(m, u, ClosedWindow::from_json_slice) {
            closed.push(w);
        }
    })?;
    let closed_ids: BTreeSet<RecordId> = closed.iter().map(RecordId::of_window).collect();
    open.retain(|w| !closed_ids.contains(&RecordId::of_window(w)));
    f.open = open;
    f.closed = closed;
    let mut postings = Vec::new();
    let mut offsets = Vec::new();
    let u = unreadable.entry(names::POSTINGS.to_string()).or_default();
    for_each_record(config, &config.topic(names::POSTINGS), |m| {
        if let Some(p) = parse_or_count(m, u, Posting::from_json_slice) {
            postings.push(p);
            offsets.push((m.partition(), m.offset()));
        }
    })?;
    f.postings = postings;
    f.posting_offsets = offsets;
    read_invoices(config, &mut f, &mut flight, &mut unreadable)?;
    f.unreadable = unreadable;
    for stage in ["dedupe", "enrich", "aggregate", "post", "invoice"] {
        let n = crate::topology::counts::count_topic(config, &config.topic(&dlq(stage)))?;
        f.dead_letters.insert(stage.to_string(), n);
    }
    f.in_flight = flight.counts;
    for t in [
        names::EVENTS,
        names::IDENTIFIED,
        names::VALIDATED,
        names::ENRICHED,
        names::RATED,
        names::WINDOWS,
    ] {
        if truncated(config, &config.topic(t))? {
            f.truncated.insert(t.to_string());
        }
    }
    Ok(f)
}

/// `finance.invoices` (the latest version of each), and from
/// `billing.commands` the service credits granted (those not refused on
/// the invoice stage's dead-letter topic).
fn read_invoices(
    config: &Config,
    f: &mut Facts,
    flight: &mut InFlight,
    unreadable: &mut BTreeMap<String, Unreadable>,
) -> Result<(), ClientError> {
    let u = unreadable.entry(names::INVOICES.to_string()).or_default();
    for_each_record(config, &config.topic(names::INVOICES), |m| {
        if let Some(inv) = parse_or_count(m, u, Invoice::from_json_slice) {
            if f.invoices
                .get(&inv.invoice_id)
                .is_none_or(|seen| seen.version < inv.version)
            {
                f.invoices.insert(inv.invoice_id.clone(), inv);
            }
        }
    })?;
    let mut refused = BTreeSet::new();
    for_each_record(config, &config.topic(&dlq("invoice")), |m| {
        if let Some(c) = m.payload().and_then(|v| Command::from_json_slice(v).ok()) {
            refused.insert((c.customer_id, c.id));
        }
    })?;
    let mut grants = BTreeMap::new();
    for_each_record(config, &config.topic(names::COMMANDS), |m| {
        flight.saw("invoice", m);
        let Some(c) = m.payload().and_then(|v| Command::from_json_slice(v).ok()) else {
            return;
        };
        if c.kind == CommandKind::Credit
            && c.invoice_id.is_none()
            && !refused.contains(&(c.customer_id.clone(), c.id.clone()))
        {
            // A re-sent id was applied once.
            grants.insert((c.customer_id.clone(), c.id.clone()), c);
        }
    })?;
    f.grants = grants.into_values().collect();
    Ok(())
}

/// The day counters of validate, dedupe and enrich (their `counters`
/// changelogs). dedupe's are added to validate's: validate counts what came
/// in and what it dead-lettered, dedupe what was validated (first copies)
/// and what was a duplicate, and reconcile checks the two as one gate
/// (in = validated + dead-lettered + duplicates, once both have drained).
fn read_counters(config: &Config, f: &mut Facts) -> Result<(), ClientError> {
    for (stage, counted_as) in [
        ("validate", "validate"),
        ("dedupe", "validate"),
        ("enrich", "enrich"),
    ] {
        let topic = config.topic(&names::changelog(stage, lineage::COUNTERS_STORE));
        for ((_, k), v) in latest(config, &topic)? {
            if let (Some(day), Ok(c)) = (
                lineage::counter_day(&k),
                serde_json::from_slice::<DayCounters>(&v),
            ) {
                f.add_counters(counted_as, &day, &c);
            }
        }
    }
    Ok(())
}

/// The records per day of the usage topics and the dead-letter topics of
/// validate and rate, and the rated events.
fn read_usage_topics(
    config: &Config,
    f: &mut Facts,
    flight: &mut InFlight,
    unreadable: &mut BTreeMap<String, Unreadable>,
) -> Result<(), ClientError> {
    let mut events_total = 0u64;
    for_each_record(config, &config.topic(names::EVENTS), |m| {
        events_total += 1;
        flight.saw("validate", m);
    })?;
    f.events_total = events_total;
    for_each_record(config, &config.topic(names::IDENTIFIED), |m| {
        flight.saw("dedupe", m);
    })?;
    let mut days: Vec<(String, String)> = Vec::new();
    for_each_record(config, &config.topic(names::VALIDATED), |m| {
        flight.saw("enrich", m);
        let d = m.payload().and_then(validated_day).unwrap_or_else(unknown);
        days.push((names::VALIDATED.to_string(), d));
    })?;
    for_each_record(config, &config.topic(&dlq("validate")), |m| {
        let (_, _, t) = lineage::identify_raw(m.payload(), &headers_of(m));
        let d = t.map_or_else(unknown, lineage::day_of);
        days.push((dlq("validate"), d));
    })?;
    for_each_record(config, &config.topic(names::ENRICHED), |m| {
        flight.saw("rate", m);
        let d = m.payload().and_then(enriched_day).unwrap_or_else(unknown);
        days.push((names::ENRICHED.to_string(), d));
    })?;
    for_each_record(config, &config.topic(&dlq("rate")), |m| {
        let d = m.payload().and_then(enriched_day).unwrap_or_else(unknown);
        days.push((dlq("rate"), d));
    })?;
    let mut rated = Vec::new();
    let u = unreadable.entry(names::RATED.to_string()).or_default();
    for_each_record(config, &config.topic(names::RATED), |m| {
        flight.saw("aggregate", m);
        if let Some(r) = parse_or_count(m, u, crate::contracts::RatedEvent::from_json_slice) {
            // rate_in counts one rated record per input: an amendment's
            // retraction half comes with its replacement, and a rerate's
            // adjustments with a command that has no event day.
            let amend = crate::contracts::CorrectionKind::Amend;
            let companion = r.correction.as_ref().is_some_and(|c| c.kind == amend);
            if !companion && r.rerate.is_none() {
                days.push((
                    names::RATED.to_string(),
                    lineage::day_of(r.enriched.event.time),
                ));
            }
            rated.push(r);
        }
    })?;
    for r in &rated {
        f.add_rated(r);
    }
    drop(rated);
    for (t, d) in days {
        f.add_topic_day(&t, d);
    }
    Ok(())
}

/// Aggregate's open windows and watermarks (its `windows` changelog), the
/// partition count of `usage.rated` and `aggregate.periods_from`; returns the
/// open windows.
fn read_aggregate_state(config: &Config, f: &mut Facts) -> Result<Vec<ClosedWindow>, ClientError> {
    let topic = config.topic(&names::changelog("aggregate", "windows"));
    let mut open = Vec::new();
    for ((partition, k), v) in latest(config, &topic)? {
        if k.first() == Some(&b'W') {
            if let Ok(w) = ClosedWindow::from_json_slice(&v) {
                open.push(w);
            }
        } else if k == b"M" {
            if let Some(wm) = serde_json::from_slice::<crate::contracts::PartitionClock>(&v)
                .ok()
                .and_then(|c| c.watermark_ms)
            {
                f.watermarks.insert(partition, wm);
            }
        }
    }
    let c = kafka::reader(config)?;
    let rated_topic = config.topic(names::RATED);
    let md = kafka::metadata(c.client(), config, Some(&rated_topic))?;
    f.rated_partitions = kafka::partition_count(&md, &rated_topic, config)?;
    f.periods_from = config.aggregate.periods_from;
    Ok(open)
}
