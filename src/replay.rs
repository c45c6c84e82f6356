//! `meterline replay`: re-publish dead letters (or parked exceptions) to the
//! stage input they came from, transactionally.
//!
//! Only a dead-letter topic (`meterline.dlq.<stage>`, back to that stage's
//! input) or `usage.exceptions` (back to `usage.validated`, enrich's input)
//! can be replayed, and each record only to the topic its
//! `meterline.original.topic` header names, which must be that input: any
//! other `--from` or `--to` is refused before anything is read or sent
//! ([`ReplayError::Refused`]), and a record whose header names another topic
//! (or none) stops the replay before it is sent, its transaction aborted
//! ([`ReplayError::ForeignRecord`], [`ReplayError::NoTarget`]). Without this
//! a replay could write foreign records into the books (`finance.postings`).
//!
//! Progress is kept in a consumer group (`meterline.replay.<from>.<reason|all>`
//! by default) whose offsets are committed in the same transaction as the
//! re-published records, so running the same replay twice sends nothing the
//! second time, and a crash mid-replay resumes without sending twice. Records
//! a filter skips (another reason, before --since) are passed over for this
//! group only. `--until` and `--limit` stop the replay; what lies beyond stays
//! for the next run. Replayed records carry `meterline.attempt` + 1 and
//! `meterline.replayed.from`; the diagnostic headers are removed. An event
//! that was in fact processed before is dropped downstream as a duplicate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::DateTime;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::kafka::{self, ClientError};
use crate::runtime::dlq::{attempt_of, headers, last_header};
use crate::topology::{names, STAGES};

/// Records per replay transaction.
const REPLAY_BATCH_RECORDS: usize = 1_000;
/// One poll of the replay consumer.
const REPLAY_POLL_MS: u64 = 200;
/// Progress line every this many records read.
const PROGRESS_EVERY_RECORDS: u64 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("--{flag}: {message}")]
    Arg { flag: &'static str, message: String },
    /// The source or target is not one replay may use; nothing was read or sent.
    #[error("replay refused ({code}): {message}")]
    Refused { code: &'static str, message: String },
    #[error(
        "record {topic}/{partition}@{offset} has no {header} header: it is not a dead letter \
         and was not replayed (nor was the rest of its batch)"
    )]
    NoTarget {
        topic: String,
        partition: i32,
        offset: i64,
        header: &'static str,
    },
    #[error(
        "record {topic}/{partition}@{offset} came from {origin}, not from {target}: replay sends \
         a record only back to the input it came from; it was not replayed (nor was the rest of \
         its batch)"
    )]
    ForeignRecord {
        topic: String,
        partition: i32,
        offset: i64,
        origin: String,
        target: String,
    },
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("replay took longer than {0} ms without reaching the end of the topic")]
    Timeout(u64),
}

/// `meterline replay` arguments (the `cli` parses them; [`ReplayOptions::from_args`]
/// checks them).
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Topic to replay from: a dead-letter topic or usage.exceptions (namespace added).
    #[arg(long)]
    pub from: String,
    /// Only records dead-lettered with this reason code.
    #[arg(long)]
    pub reason: Option<String>,
    /// Only records dead-lettered at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Stop at the first record dead-lettered after this time (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Replay at most this many records.
    #[arg(long)]
    pub limit: Option<u64>,
    /// The topic the records go back to (namespace added); optional, and
    /// only the input they came from is accepted (anything else is refused).
    #[arg(long)]
    pub to: Option<String>,
    /// Print what would be replayed, by reason; send and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Consumer group keeping replay progress (default: meterline.replay.<from>.<reason|all>).
    #[arg(long)]
    pub group: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub from: String,
    pub reason: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: Option<u64>,
    /// The one topic records may go back to (namespace applied): the input
    /// of the stage whose dead letters (or exceptions) `from` holds.
    pub target: String,
    /// The topics (namespace applied) a record's `meterline.original.topic`
    /// may name: the target, or for the ledger every topic ledger-sync reads.
    pub origins: Vec<String>,
    pub dry_run: bool,
    pub group: String,
    /// Give up when the end of the topic is not reached within this time.
    pub timeout_ms: u64,
}

fn parse_time(flag: &'static str, v: &str) -> Result<i64, ReplayError> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|e| ReplayError::Arg {
            flag,
            message: format!("{v:?} is not an RFC 3339 time: {e}"),
        })
}

/// Refusal code: `--from` is neither a dead-letter topic nor usage.exceptions.
pub const NOT_REPLAYABLE_SOURCE: &str = "not_replayable_source";
/// Refusal code: `--to` is not the input the records came from.
pub const NOT_ORIGIN_TARGET: &str = "not_origin_target";

/// One replayable topic (before the namespace): where its records go back
/// to, and the topics their `meterline.original.topic` may name.
struct Route {
    from: String,
    target: &'static str,
    origins: Vec<&'static str>,
}

/// Every replayable topic: each stage's dead letters back to its input;
/// enrich's parked events back to enrich's input; the general ledger's
/// refusals back to ledger-sync through its retry topic (finance.postings
/// itself is written only by the stages that make postings), from any
/// topic ledger-sync reads.
fn routes() -> Vec<Route> {
    let mut r: Vec<Route> = STAGES
        .iter()
        .map(|s| Route {
            from: s.dlq(),
            target: s.input,
            origins: vec![s.input],
        })
        .collect();
    r.push(Route {
        from: names::EXCEPTIONS.to_string(),
        target: names::VALIDATED,
        origins: vec![names::VALIDATED],
    });
    r.push(Route {
        from: names::dlq(names::LEDGER),
        target: names::LEDGER_RETRY,
        origins: vec![names::POSTINGS, names::INVOICES, names::LEDGER_RETRY],
    });
    r
}

fn route(from: &str) -> Option<Route> {
    routes().into_iter().find(|r| r.from == from)
}

/// The input topic (before the namespace) that the records of `from` (before
/// the namespace) go back to, or None when `from` may not be replayed.
pub fn replay_target(from: &str) -> Option<&'static str> {
    route(from).map(|r| r.target)
}

impl ReplayOptions {
    pub fn from_args(config: &Config, a: &ReplayArgs) -> Result<Self, ReplayError> {
        let Some(Route {
            target, origins, ..
        }) = route(&a.from)
        else {
            let dlqs: Vec<String> = routes()
                .into_iter()
                .map(|r| r.from)
                .filter(|f| f.as_str() != names::EXCEPTIONS)
                .collect();
            return Err(ReplayError::Refused {
                code: NOT_REPLAYABLE_SOURCE,
                message: format!(
                    "--from {}: replay reads only a dead-letter topic ({}) or {}",
                    a.from,
                    dlqs.join(", "),
                    names::EXCEPTIONS
                ),
            });
        };
        if let Some(to) = a.to.as_deref().filter(|to| *to != target) {
            return Err(ReplayError::Refused {
                code: NOT_ORIGIN_TARGET,
                message: format!(
                    "--to {to}: the records of {} go back only to the topic they came from, {target}",
                    a.from
                ),
            });
        }
        let group = a.group.clone().unwrap_or_else(|| {
            format!(
                "{}meterline.replay.{}.{}",
                config.topology.namespace,
                a.from,
                a.reason.as_deref().unwrap_or("all")
            )
        });
        Ok(ReplayOptions {
            from: config.topic(&a.from),
            reason: a.reason.clone(),
            since_ms: a
                .since
                .as_deref()
                .map(|v| parse_time("since", v))
                .transpose()?,
            until_ms: a
                .until
                .as_deref()
                .map(|v| parse_time("until", v))
                .transpose()?,
            limit: a.limit,
            target: config.topic(target),
            origins: origins.into_iter().map(|t| config.topic(t)).collect(),
            dry_run: a.dry_run,
            group,
            timeout_ms: 600_000,
        })
    }
}

/// What a replay read and sent (or would send).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReplaySummary {
    pub read: u64,
    pub skipped: u64,
    /// Sent (or, dry-run, would send) by reason code.
    pub by_reason: BTreeMap<String, u64>,
    /// Sent (or would send) by target topic.
    pub by_target: BTreeMap<String, u64>,
}

impl ReplaySummary {
    pub fn sent(&self) -> u64 {
        self.by_reason.values().sum()
    }

    pub fn render(&self, dry_run: bool) -> String {
        let verb = if dry_run { "would replay" } else { "replayed" };
        let mut s = String::new();
        for (r, n) in &self.by_reason {
            s.push_str(&format!("{verb:>12} {n:>8}  reason {r}\n"));
        }
        for (t, n) in &self.by_target {
            s.push_str(&format!("{:>12} {n:>8}  to {t}\n", "->"));
        }
        s.push_str(&format!(
            "replay: {verb} {} record(s); read {}, skipped {} by the filters{}\n",
            self.sent(),
            self.read,
            self.skipped,
            if dry_run {
                " (dry run: nothing sent, nothing committed)"
            } else {
                ""
            }
        ));
        s
    }
}

/// Runs a replay to the end of the source topic (or --until / --limit).
pub fn replay(config: &Config, opts: &ReplayOptions) -> Result<ReplaySummary, ReplayError> {
    let call_timeout = Duration::from_millis(config.runtime.transaction_call_timeout_ms);
    let (consumer, mut open) = assign_source(config, opts, call_timeout)?;
    let producer = replay_producer(config, opts, call_timeout)?;

    let mut summary = ReplaySummary::default();
    let mut pending: BTreeMap<i32, i64> = BTreeMap::new();
    let mut in_txn = 0usize;
    let t0 = Instant::now();
    while !open.is_empty() {
        if t0.elapsed() > Duration::from_millis(opts.timeout_ms) {
            return Err(ReplayError::Timeout(opts.timeout_ms));
        }
        if opts.limit.is_some_and(|l| summary.sent() >= l) {
            break;
        }
        let msg = match consumer.poll(Duration::from_millis(REPLAY_POLL_MS)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
                continue;
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => m,
        };
        let p = msg.partition();
        if !open.contains_key(&p) {
            continue;
        }
        summary.read += 1;
        if summary.read % PROGRESS_EVERY_RECORDS == 0 {
            eprintln!(
                "replay: read {} record(s), {} to replay so far",
                summary.read,
                summary.sent()
            );
        }
        let hs = kafka::record_headers(&msg).headers;
        let ts = msg.timestamp().to_millis();
        if let (Some(until), Some(ts)) = (opts.until_ms, ts) {
            if ts > until {
                // Later records of this partition are later still: stop here,
                // leaving this one for a future run.
                open.remove(&p);
                let _ = consumer.pause(&single(&opts.from, p));
                continue;
            }
        }
        let reason = last_header(&hs, headers::REASON)
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .unwrap_or_else(|| "none".to_string());
        let skip = opts.reason.as_ref().is_some_and(|r| *r != reason)
            || matches!((opts.since_ms, ts), (Some(s), Some(t)) if t < s);
        if skip {
            summary.skipped += 1;
            pending.insert(p, msg.offset() + 1);
            continue;
        }
        // Checked before anything of this record is sent; what this
        // transaction holds so far is rolled back with it.
        if let Some(e) = origin_error(opts, p, msg.offset(), &hs) {
            if let (Some(producer), true) = (&producer, in_txn > 0) {
                abort_open_transaction(producer, call_timeout);
            }
            return Err(e);
        }
        let target = opts.target.clone();
        *summary.by_reason.entry(reason).or_default() += 1;
        *summary.by_target.entry(target.clone()).or_default() += 1;
        pending.insert(p, msg.offset() + 1);
        let Some(producer) = &producer else { continue };
        if in_txn == 0 {
            producer.begin_transaction()?;
        }
        send_replayed(producer, &target, &opts.from, &msg, &hs)?;
        in_txn += 1;
        if in_txn >= REPLAY_BATCH_RECORDS {
            commit(producer, &consumer, &opts.from, &mut pending, call_timeout)?;
            in_txn = 0;
        }
    }
    if let Some(producer) = &producer {
        commit_last(
            producer,
            &consumer,
            opts,
            in_txn,
            &mut pending,
            call_timeout,
        )?;
    }
    Ok(summary)
}

/// Sends one dead letter to `target` as it was (key, value), its diagnostic
/// headers replaced by where it was replayed from.
fn send_replayed(
    producer: &BaseProducer,
    target: &str,
    from_topic: &str,
    msg: &BorrowedMessage<'_>,
    hs: &[(String, Option<Vec<u8>>)],
) -> Result<(), ReplayError> {
    let from = format!("{}:{}:{}", from_topic, msg.partition(), msg.offset());
    let mut rec: BaseRecord<'_, [u8], [u8]> =
        BaseRecord::to(target).headers(replayed_headers(hs, &from));
    if let Some(k) = msg.key() {
        rec = rec.key(k);
    }
    if let Some(v) = msg.payload() {
        rec = rec.payload(v);
    }
    // No timestamp: stamped when written (append time), like every
    // meterline record; the dead letter's is when it failed.
    kafka::send_waiting(producer, rec)?;
    Ok(())
}

/// The last transaction: what it holds, or only offsets (records the
/// filters skipped), committed with the offsets reached.
fn commit_last(
    producer: &BaseProducer,
    consumer: &BaseConsumer<kafka::ReaderContext>,
    opts: &ReplayOptions,
    mut in_txn: usize,
    pending: &mut BTreeMap<i32, i64>,
    call_timeout: Duration,
) -> Result<(), ReplayError> {
    if in_txn == 0 && !pending.is_empty() {
        producer.begin_transaction()?;
        in_txn = 1;
    }
    if in_txn > 0 {
        commit(producer, consumer, &opts.from, pending, call_timeout)?;
    }
    Ok(())
}

/// The replay consumer, assigned every partition of the source where this
/// group left off, and the partitions still open (all of them).
fn assign_source(
    config: &Config,
    opts: &ReplayOptions,
    call_timeout: Duration,
) -> Result<(BaseConsumer<kafka::ReaderContext>, BTreeMap<i32, ()>), ReplayError> {
    let mut cc = kafka::reader_config(config);
    cc.set("group.id", &opts.group);
    // ReaderContext: partition ends (how the replay loop knows it is done)
    // are not logged as client errors.
    let consumer: BaseConsumer<kafka::ReaderContext> = kafka::create(&cc, kafka::ReaderContext)?;
    let md = kafka::metadata(consumer.client(), config, Some(&opts.from))?;
    let partitions = kafka::partition_count(&md, &opts.from, config)?;
    let md = kafka::metadata(consumer.client(), config, Some(&opts.target))?;
    kafka::partition_count(&md, &opts.target, config)?;

    // Start each partition where this group left off.
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(&opts.from, p);
    }
    let committed = consumer.committed_offsets(tpl, call_timeout)?;
    let mut assign = TopicPartitionList::new();
    let mut open: BTreeMap<i32, ()> = BTreeMap::new();
    for e in committed.elements() {
        let start = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        assign.add_partition_offset(&opts.from, e.partition(), start)?;
        open.insert(e.partition(), ());
    }
    consumer.assign(&assign)?;
    Ok((consumer, open))
}

/// The transactional producer of a replay (None for a dry run).
fn replay_producer(
    config: &Config,
    opts: &ReplayOptions,
    call_timeout: Duration,
) -> Result<Option<BaseProducer>, ReplayError> {
    if opts.dry_run {
        return Ok(None);
    }
    let p: BaseProducer = kafka::create(
        &kafka::transactional_producer_config(config, &format!("{}.producer", opts.group)),
        rdkafka::producer::DefaultProducerContext,
    )?;
    p.init_transactions(call_timeout)?;
    Ok(Some(p))
}

/// Why the record at `partition`/`offset` of the source, with headers `hs`,
/// may not go to the replay's target (None when it may).
fn origin_error(
    opts: &ReplayOptions,
    partition: i32,
    offset: i64,
    hs: &[(String, Option<Vec<u8>>)],
) -> Option<ReplayError> {
    match last_header(hs, headers::ORIGINAL_TOPIC) {
        None => Some(ReplayError::NoTarget {
            topic: opts.from.clone(),
            partition,
            offset,
            header: headers::ORIGINAL_TOPIC,
        }),
        Some(o) if !opts.origins.iter().any(|t| t.as_bytes() == o) => {
            Some(ReplayError::ForeignRecord {
                topic: opts.from.clone(),
                partition,
                offset,
                origin: String::from_utf8_lossy(o).into_owned(),
                target: opts.target.clone(),
            })
        }
        Some(_) => None,
    }
}

/// Aborts the open transaction before a replay stops on an error.
fn abort_open_transaction(producer: &BaseProducer, call_timeout: Duration) {
    // Delivery reports are served only when polled (flush does), and abort
    // waits for them.
    let _ = crate::kafka::flush(producer, call_timeout);
    if let Err(abort) = producer.abort_transaction(call_timeout) {
        // Uncommitted either way: the broker aborts it on timeout, or the
        // next replay of this group fences it.
        eprintln!("replay: aborting the open transaction failed: {abort}");
    }
}

/// The headers of a replayed record: the dead letter's, without the
/// diagnostic ones, with `meterline.attempt` + 1 and
/// `meterline.replayed.from` = `from`.
fn replayed_headers(hs: &[(String, Option<Vec<u8>>)], from: &str) -> OwnedHeaders {
    let attempt = attempt_of(hs).saturating_add(1).to_string();
    let mut out = OwnedHeaders::new();
    for (k, v) in hs {
        let k = k.as_str();
        if headers::DIAGNOSTIC.contains(&k) || k == headers::ATTEMPT || k == headers::REPLAYED_FROM
        {
            continue;
        }
        out = out.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    out.insert(Header {
        key: headers::ATTEMPT,
        value: Some(attempt.as_bytes()),
    })
    .insert(Header {
        key: headers::REPLAYED_FROM,
        value: Some(from.as_bytes()),
    })
}

/// Sends one record, waiting while the producer's queue is full.
fn single(topic: &str, p: i32) -> TopicPartitionList {
    let mut t = TopicPartitionList::new();
    t.add_partition(topic, p);
    t
}

fn commit(
    producer: &BaseProducer,
    consumer: &BaseConsumer<kafka::ReaderContext>,
    topic: &str,
    pending: &mut BTreeMap<i32, i64>,
    timeout: Duration,
) -> Result<(), ReplayError> {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in pending.iter() {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    crate::kafka::flush(producer, timeout)?;
    if tpl.count() > 0 {
        let cgm = consumer.group_metadata().ok_or_else(|| {
            KafkaError::Subscription("replay consumer has no group metadata".into())
        })?;
        producer.send_offsets_to_transaction(&tpl, &cgm, timeout)?;
    }
    producer.commit_transaction(timeout)?;
    pending.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(from: &str, to: Option<&str>) -> Result<ReplayOptions, ReplayError> {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let config =
            Config::from_parts("[topology]\nnamespace = \"ns.\"\n", "test", &[], dir).unwrap();
        let args = ReplayArgs {
            from: from.to_owned(),
            reason: None,
            since: None,
            until: None,
            limit: None,
            to: to.map(str::to_owned),
            dry_run: false,
            group: None,
        };
        ReplayOptions::from_args(&config, &args)
    }

    fn refusal(r: Result<ReplayOptions, ReplayError>) -> (&'static str, String) {
        match r {
            Err(e @ ReplayError::Refused { code, .. }) => (code, e.to_string()),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn dead_letters_and_exceptions_go_back_to_their_stage_input_only() {
        for (from, target) in [
            ("meterline.dlq.validate", "ns.usage.events"),
            ("meterline.dlq.enrich", "ns.usage.validated"),
            ("meterline.dlq.rate", "ns.usage.enriched"),
            ("meterline.dlq.aggregate", "ns.usage.rated"),
            ("meterline.dlq.post", "ns.usage.windows"),
            ("usage.exceptions", "ns.usage.validated"),
        ] {
            let o = options(from, None).unwrap();
            assert_eq!(
                (o.from.as_str(), o.target.as_str()),
                (&*format!("ns.{from}"), target)
            );
            // Naming the origin with --to is allowed, and changes nothing.
            let logical = target.strip_prefix("ns.").unwrap();
            assert_eq!(options(from, Some(logical)).unwrap().target, target);
        }
    }

    #[test]
    fn any_other_source_or_target_is_refused_by_code() {
        let (code, text) = refusal(options("usage.validated", Some("finance.postings")));
        assert_eq!(code, NOT_REPLAYABLE_SOURCE);
        assert!(text.contains("--from usage.validated"), "{text}");
        for from in [
            "finance.postings",
            "usage.events",
            "meterline.dlq.nope",
            "ref.plans",
        ] {
            assert_eq!(
                refusal(options(from, None)).0,
                NOT_REPLAYABLE_SOURCE,
                "{from}"
            );
        }
        let (code, text) = refusal(options("meterline.dlq.validate", Some("finance.postings")));
        assert_eq!(code, NOT_ORIGIN_TARGET);
        assert!(text.contains("--to finance.postings"), "{text}");
        assert!(text.contains("usage.events"), "{text}");
        assert_eq!(
            refusal(options("usage.exceptions", Some("usage.enriched"))).0,
            NOT_ORIGIN_TARGET
        );
    }
}
