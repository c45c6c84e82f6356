//! `meterline rerate`: after a plan record is corrected (same id and
//! version, republished), price a subscription's segments again under it
//! (see `stages::rate::rerate`).
//!
//! The command is built from the reference data as it is now (the
//! subscription, every version of its plan, its price overrides, the
//! meters of the config), previewed against rate's `segments` changelog
//! (what each segment has been billed, what it would be billed now) and,
//! unless `--dry-run`, sent to rate on `usage.enriched` in a Kafka
//! transaction keyed by the customer. The CLI then waits a bounded time for
//! rate's adjustments on `usage.rated`. With nothing to change it sends
//! nothing.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::Utc;
use clap::Args;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::contracts::{
    segment_key_group, segment_label, RatedEvent, Rerate, RerateCharge, RerateRecord,
};
use crate::kafka;
use crate::refdata::{RefKind, RefTables};
use crate::stages::rate::rerate::{assess_changelog, Assessed, Outcome};
use crate::topology::{counts, names};

/// How long the CLI waits for rate's adjustments, by default.
const DEFAULT_WAIT_S: u64 = 30;
/// How often it looks for them.
const WAIT_POLL_MS: u64 = 200;

#[derive(Debug, Args)]
pub struct RerateArgs {
    /// The subscription whose segments are priced again.
    #[arg(long)]
    pub subscription: String,
    /// Only the segments of this meter.
    #[arg(long)]
    pub meter: Option<String>,
    /// Only the segments of this billing period (its id, YYYY-MM-DD).
    #[arg(long)]
    pub period: Option<String>,
    /// Print the differences; send and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Who asks (kept in the adjustments' data and the lineage).
    #[arg(long, env = "USER", default_value = "cli")]
    pub actor: String,
    /// Seconds to wait for rate's adjustments.
    #[arg(long, default_value_t = DEFAULT_WAIT_S)]
    pub timeout_s: u64,
}

pub fn run(config: &Config, args: &RerateArgs) -> anyhow::Result<ExitCode> {
    let cmd = command(config, args)?;
    let assessed = preview(config, &cmd)?;
    print!("{}", render(&cmd, &assessed));
    let changes = assessed
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Adjusted { .. }))
        .count();
    if args.dry_run {
        println!("dry run: nothing sent, nothing changed");
        return Ok(ExitCode::SUCCESS);
    }
    if changes == 0 {
        println!("nothing to re-rate: every segment is billed its corrected price");
        return Ok(ExitCode::SUCCESS);
    }
    let rated_topic = config.topic(names::RATED);
    let from = end_offsets(config, &rated_topic)?;
    let value = RerateRecord {
        rerate: cmd.clone(),
    }
    .to_json_bytes()?;
    let topic = config.topic(names::ENRICHED);
    crate::commands::publish_in_transaction(
        config,
        "rerate-cli",
        &topic,
        cmd.customer_id.as_bytes(),
        &value,
        rdkafka::message::OwnedHeaders::new(),
    )
    .with_context(|| format!("sending rerate {} to {topic}", cmd.id))?;
    println!("sent rerate {} ({changes} segment(s) to adjust)", cmd.id);
    let seen = wait_for_adjustments(config, &rated_topic, from, &cmd.id, changes, args.timeout_s)?;
    if seen >= changes {
        println!("applied: {seen} adjustment(s) on {rated_topic}");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{seen} of {changes} adjustment(s) seen within {} s: rate applies the command when it runs \
         (`meterline lineage {} {}`)",
        args.timeout_s,
        crate::stages::rate::rerate::RERATE_SOURCE,
        cmd.id
    );
    Ok(ExitCode::from(2))
}

/// The command from the reference data as it is now.
fn command(config: &Config, args: &RerateArgs) -> anyhow::Result<Rerate> {
    if let Some(m) = &args.meter {
        if !config.meters.iter().any(|x| x.slug == *m) {
            bail!("--meter {m:?}: no such meter in the config");
        }
    }
    if let Some(p) = &args.period {
        chrono::NaiveDate::parse_from_str(p, "%Y-%m-%d")
            .map_err(|e| anyhow!("--period {p:?}: a billing period id is YYYY-MM-DD ({e})"))?;
    }
    let tables = read_tables(config)?;
    let sub = tables.subscription(&args.subscription).ok_or_else(|| {
        anyhow!(
            "subscription {:?} is not on ref.subscriptions",
            args.subscription
        )
    })?;
    let mut charges = Vec::new();
    for plan in tables.plan_versions(&sub.plan_id) {
        for meter in &config.meters {
            if let Some(charge) = plan.resolve_charge(sub, meter) {
                charges.push(RerateCharge {
                    plan_version: plan.version,
                    charge,
                });
            }
        }
    }
    if charges.is_empty() {
        bail!(
            "plan {:?} of subscription {:?} has no version on ref.plans",
            sub.plan_id,
            sub.id
        );
    }
    let now = Utc::now();
    Ok(Rerate {
        id: format!(
            "{}@{}",
            sub.id,
            now.timestamp_nanos_opt().unwrap_or_default()
        ),
        subscription_id: sub.id.clone(),
        customer_id: sub.customer_id.clone(),
        meter: args.meter.clone(),
        period: args.period.clone(),
        charges,
        actor: args.actor.clone(),
        time: now,
    })
}

/// Subscriptions and plans, read from their compacted topics.
fn read_tables(config: &Config) -> anyhow::Result<RefTables> {
    let mut tables = RefTables::new();
    for kind in [RefKind::Subscriptions, RefKind::Plans] {
        let topic = config.topic(kind.topic());
        let mut bad = 0usize;
        counts::for_each_record(config, &topic, |m| {
            let key = m.key().map(String::from_utf8_lossy).unwrap_or_default();
            if tables.apply(kind, &key, m.payload()).is_err() {
                bad += 1;
            }
        })?;
        if bad > 0 {
            eprintln!("warning: {bad} record(s) of {topic} do not parse (skipped, as enrich does)");
        }
    }
    Ok(tables)
}

/// What the command would do now, from rate's `segments` changelog.
fn preview(config: &Config, cmd: &Rerate) -> anyhow::Result<Vec<Assessed>> {
    let topic = config.topic(&names::changelog("rate", "segments"));
    let mut records = Vec::new();
    counts::for_each_record(config, &topic, |m| {
        if let Some(k) = m.key() {
            records.push((k.to_vec(), m.payload().map(<[u8]>::to_vec)));
        }
    })?;
    Ok(assess_changelog(records, cmd))
}

fn render(cmd: &Rerate, assessed: &[Assessed]) -> String {
    let mut s = format!(
        "rerate of subscription {} (customer {}): {} segment(s)\n",
        cmd.subscription_id,
        cmd.customer_id,
        assessed.len()
    );
    for a in assessed {
        let billed = a.billed.map_or_else(|| "?".to_string(), |b| b.to_string());
        let what = match &a.outcome {
            Outcome::Unchanged => "unchanged".to_string(),
            Outcome::Adjusted { price, difference } => {
                format!("price now {price}, difference {difference}")
            }
            Outcome::Skipped { reason } => format!("skipped: {reason}"),
        };
        s.push_str(&format!(
            "  {} {} v{} quantity {} billed {billed}: {what}\n",
            a.period,
            label(a),
            a.plan_version,
            a.quantity
        ));
    }
    s
}

/// The meter and group of an assessed segment, read from its key (the
/// meter alone if the key is not a segment key).
fn label(a: &Assessed) -> String {
    let group = segment_key_group(&a.segment_key).unwrap_or_default();
    segment_label(&a.meter, &group)
}

/// Each partition's end offset of `topic` now.
fn end_offsets(config: &Config, topic: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let c = kafka::reader(config)?;
    let md = kafka::check_topics(&c, config, &[topic.to_string()])?;
    let parts = kafka::partition_count(&md, topic, config)?;
    let timeout = Duration::from_millis(config.runtime.transaction_call_timeout_ms);
    (0..parts)
        .map(|p| Ok((p, c.fetch_watermarks(topic, p, timeout)?.1)))
        .collect()
}

/// How many of the command's adjustments reached `topic` after `from`.
fn wait_for_adjustments(
    config: &Config,
    topic: &str,
    from: BTreeMap<i32, i64>,
    id: &str,
    want: usize,
    timeout_s: u64,
) -> anyhow::Result<usize> {
    let c = kafka::reader(config)?;
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in from {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))?;
    }
    c.assign(&tpl)?;
    let started = Instant::now();
    let mut seen = 0;
    while seen < want && started.elapsed() < Duration::from_secs(timeout_s) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(WAIT_POLL_MS)) {
            let ours = m
                .payload()
                .and_then(|v| RatedEvent::from_json_slice(v).ok())
                .is_some_and(|r| r.rerate.as_deref() == Some(id));
            seen += usize::from(ours);
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use rust_decimal_macros::dec;

    use super::*;

    fn assessed(segment_key: &str, outcome: Outcome) -> Assessed {
        Assessed {
            segment_key: segment_key.to_string(),
            meter: "tokens".to_string(),
            period: "2026-10-01".to_string(),
            plan_version: 2,
            quantity: dec!(800),
            billed: Some(dec!(1.60)),
            outcome,
        }
    }

    #[test]
    fn each_segment_of_the_table_names_its_group() {
        let cmd: Rerate = serde_json::from_value(serde_json::json!({
            "id": "r-1", "subscription_id": "sub-1", "customer_id": "cust-42",
            "meter": null, "period": null, "charges": [], "actor": "cli",
            "time": "2026-10-05T00:00:00Z"
        }))
        .unwrap();
        let rows = [
            assessed(
                r#"["sub-1","tokens","2026-10-01",2,{"model":"gpt-4o","region":""}]"#,
                Outcome::Adjusted {
                    price: dec!(1.50),
                    difference: dec!(-0.10),
                },
            ),
            assessed(
                r#"["sub-1","tokens","2026-10-01",2,{}]"#,
                Outcome::Unchanged,
            ),
        ];
        assert_eq!(
            render(&cmd, &rows),
            "rerate of subscription sub-1 (customer cust-42): 2 segment(s)\n\
             \x20 2026-10-01 tokens model=gpt-4o, region=(none) v2 quantity 800 billed 1.60: \
             price now 1.50, difference -0.10\n\
             \x20 2026-10-01 tokens v2 quantity 800 billed 1.60: unchanged\n"
        );
    }
}
