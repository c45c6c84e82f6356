//! `meterline export`: the rated events of `usage.rated` as Parquet files,
//! one row per (event, measure), with their lineage keys, partitioned by
//! event date:
//!
//! ```text
//! <dir>/event_date=YYYY-MM-DD/part-<partition>-<first_offset:020>-<last_offset:020>.parquet
//! <dir>/_progress/partition-<partition>.json
//! ```
//!
//! `event_date` is the UTC date of the event time (the folder, not a
//! column). The columns are listed by [`file::schema`] and in the README
//! ("Event history (Parquet)").
//!
//! # Money is exact
//!
//! Quantities and the marginal amount are Parquet `DECIMAL(38, s)` in a
//! 16-byte `FIXED_LEN_BYTE_ARRAY`, at the fixed scales `export.amount_scale`
//! (default 20) and `export.quantity_scale` (default 18), each with an exact
//! text twin (`marginal_amount_text`, ...). A rated value can carry up to 28
//! fractional digits: one that does not fit its column exactly is written
//! as NULL there (never rounded), its text is still exact, and it is
//! counted in a warning line per file and in the summary. No float touches
//! an amount.
//!
//! # Lineage keys
//!
//! `day_window_id` and `billing_period_id` are computed from the event time
//! with [`crate::calendar`] in the subscription's zone and anchor day (what
//! enrich puts on the event and aggregate accumulates in). The accrual
//! posting's idempotency key is *not* exported: it cannot be derived from
//! the event with shared code. An event that arrives after its day window
//! closed is accrued in an adjustment of the current day (which day depends
//! on aggregate's watermark when the event arrived, not on the event), an
//! accrual that rounds to zero is not posted at all, and the key's parts
//! and version belong to the post stage. The business key's parts that
//! the event does determine are columns (legal entity, subscription,
//! segment id, day window id): `meterline lineage` resolves the rest.
//!
//! # Exactly once
//!
//! The output, not the consumer group, is the record of progress. Per input
//! partition, records are exported in batches (`--batch-events`, or when
//! the batch's first record is `batch_max_ms` old, or at the end): for
//! each event date in the batch, one file named after the partition and the
//! batch's first and last offset, each written whole ([`store::Output::write`]:
//! temp name, fsync, rename, fsync of the folder; an object store's PUT);
//! after every file of the batch, the marker `_progress/partition-<p>.json`
//! (`last_offset` = the batch's last offset), written the same way.
//!
//! On start, the markers are read; every temp file, and every data file
//! of a partition whose first offset is beyond its marker (a batch that
//! crashed before its marker), is deleted; each partition is read from its
//! marker + 1. A crash at any point therefore leaves no partial file (a
//! file is whole or absent) and no duplicate row: a batch's rows are
//! visible in files either with its marker, or until the next start
//! deletes them and exports them again. Batches of a partition cover
//! disjoint offset ranges, so a file whose first offset is at or below the
//! marker is entirely exported. The consumer group `<namespace>meterline.export`
//! gets the marker's offset committed after each marker, for monitoring
//! only (lag); it is never read back. A reader of the files must skip names
//! starting with `.` or `_` (pyarrow, Spark, DuckDB's `*.parquet` glob do)
//! and may see a crashed batch's files until the next start.
//!
//! One export process per output location: two would delete each other's
//! unmarked files.

pub mod decimal;
pub mod file;
pub mod layout;
pub mod rows;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::contracts::RatedEvent;
use crate::kafka::{self, ClientError, ReaderContext};
use file::{Row, Scales};
use layout::{DataFile, Marker, MARKER_VERSION};
use store::{Output, OutputError};

/// The input topic (before the namespace).
pub const INPUT_TOPIC: &str = "usage.rated";
/// How often progress is printed to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(200);

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Local directory to write to (default: config export.dir).
    #[arg(long, conflicts_with = "url")]
    pub dir: Option<PathBuf>,
    /// S3-compatible object store location, s3://bucket/prefix (credentials,
    /// region, endpoint from AWS_* variables). Default: config export.url.
    #[arg(long)]
    pub url: Option<String>,
    /// Events per partition in one batch (default: export.batch_events).
    #[arg(long)]
    pub batch_events: Option<usize>,
    /// Write a batch once its first event is this old (default:
    /// export.batch_max_ms).
    #[arg(long)]
    pub batch_max_ms: Option<u64>,
    /// Exit 0 once every partition is exported up to its end offset at
    /// start, instead of running until SIGTERM/SIGINT.
    #[arg(long)]
    pub until_caught_up: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{0}")]
    Output(#[from] OutputError),
    #[error("{0}")]
    Client(#[from] ClientError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("{topic} partition {partition} offset {offset}: not a rated event: {message}")]
    Malformed {
        topic: String,
        partition: i32,
        offset: i64,
        message: String,
    },
    #[error("writing parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("progress marker {path}: {message}")]
    Marker { path: String, message: String },
    #[error("export: {0}")]
    Usage(String),
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub rows: u64,
    pub files: u64,
    pub batches: u64,
    /// Values written as NULL in their decimal column (exact in `*_text`).
    pub unfit_values: u64,
    /// Files of crashed batches and temp files deleted at start.
    pub leftovers_removed: usize,
    pub calendar: rows::CalendarStats,
}

impl Summary {
    pub fn render(&self) -> String {
        format!(
            "export: {} events, {} rows, {} files in {} batches; {} values not fitting their decimal column (NULL there, exact in *_text); {} leftover files of a crashed run removed; {} events outside the calendar, {} with windows other than enrich's\n",
            self.events,
            self.rows,
            self.files,
            self.batches,
            self.unfit_values,
            self.leftovers_removed,
            self.calendar.unplaced,
            self.calendar.disagreeing
        )
    }
}

/// The output the arguments and config name.
pub fn open_output(config: &Config, args: &ExportArgs) -> Result<Box<dyn Output>, ExportError> {
    if let Some(url) = &args.url {
        return store::open_url(url).map_err(ExportError::from);
    }
    if let Some(dir) = &args.dir {
        return Ok(Box::new(store::LocalDir::open(dir)?));
    }
    if let Some(url) = &config.export.url {
        return store::open_url(url).map_err(ExportError::from);
    }
    match &config.export.dir {
        Some(dir) => Ok(Box::new(store::LocalDir::open(&config.resolve(dir))?)),
        None => Err(ExportError::Usage(
            "no output: give --dir or --url, or set export.dir or export.url".into(),
        )),
    }
}

/// Reads the markers and deletes what a crashed run left: see "Exactly
/// once" in the module docs. Returns each partition's last exported offset
/// and how many files were deleted.
pub fn recover(out: &dyn Output, topic: &str) -> Result<(BTreeMap<i32, i64>, usize), ExportError> {
    let paths = out.list()?;
    let mut markers = BTreeMap::new();
    for path in &paths {
        let Some(partition) = layout::parse_marker_path(path) else {
            continue;
        };
        let bad = |message: String| ExportError::Marker {
            path: format!("{}/{path}", out.describe()),
            message,
        };
        let bytes = out.read(path)?.ok_or_else(|| bad("vanished".into()))?;
        let marker: Marker = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if marker.topic != topic || marker.partition != partition {
            return Err(bad(format!(
                "is for {} partition {}, not {topic} partition {partition}: one output location per topic",
                marker.topic, marker.partition
            )));
        }
        markers.insert(partition, marker.last_offset);
    }
    let leftovers = layout::leftovers(&paths, &markers);
    for path in &leftovers {
        tracing::info!(
            path,
            "removing a file of a batch that crashed before its marker"
        );
        out.delete(path)?;
    }
    Ok((markers, leftovers.len()))
}

/// The rated event of a record. A record that is not one stops the export
/// (it names the record): skipping it would lose usage from the history.
fn parse(topic: &str, m: &BorrowedMessage<'_>) -> Result<RatedEvent, ExportError> {
    m.payload()
        .ok_or_else(|| "no value".to_string())
        .and_then(|v| RatedEvent::from_json_slice(v).map_err(|e| e.to_string()))
        .map_err(|message| ExportError::Malformed {
            topic: topic.to_string(),
            partition: m.partition(),
            offset: m.offset(),
            message,
        })
}

/// One partition's batch being collected.
struct Batch {
    first: i64,
    last: i64,
    events: usize,
    rows: Vec<Row>,
    started: Instant,
}

struct Exporter<'a> {
    out: &'a dyn Output,
    topic: String,
    scales: Scales,
    batch_events: usize,
    batch_max: Duration,
    consumer: BaseConsumer<ReaderContext>,
    batches: BTreeMap<i32, Batch>,
    summary: Summary,
}

/// Runs the export: until `shutdown` is set, or with `until_caught_up`
/// until every partition reached its end offset at start. Pending batches
/// are written before returning.
pub fn run(
    config: &Config,
    args: &ExportArgs,
    shutdown: &AtomicBool,
) -> Result<Summary, ExportError> {
    let out = open_output(config, args)?;
    let topic = config.topic(INPUT_TOPIC);
    let (markers, removed) = recover(out.as_ref(), &topic)?;
    let mut cc = kafka::reader_config(config);
    cc.set("group.id", config.group_id("export"));
    let consumer: BaseConsumer<ReaderContext> = kafka::create(&cc, ReaderContext)?;
    let mut caught = BTreeSet::new();
    let ends = assign(config, &consumer, &topic, &markers, &mut caught)?;
    let mut ex = Exporter {
        out: out.as_ref(),
        topic,
        scales: Scales {
            amount: config.export.amount_scale,
            quantity: config.export.quantity_scale,
        },
        batch_events: args
            .batch_events
            .unwrap_or(config.export.batch_events)
            .max(1),
        batch_max: Duration::from_millis(args.batch_max_ms.unwrap_or(config.export.batch_max_ms)),
        consumer,
        batches: BTreeMap::new(),
        summary: Summary {
            leftovers_removed: removed,
            ..Summary::default()
        },
    };
    ex.poll_loop(&ends, caught, args.until_caught_up, shutdown)?;
    ex.flush_all()?;
    eprintln!("{}", ex.progress_line(ends.len(), ends.len()));
    Ok(ex.summary)
}

/// Assigns every partition at its marker + 1 (the beginning without one);
/// returns each partition's end offset now, and adds to `caught` those
/// with nothing to read.
fn assign(
    config: &Config,
    consumer: &BaseConsumer<ReaderContext>,
    topic: &str,
    markers: &BTreeMap<i32, i64>,
    caught: &mut BTreeSet<i32>,
) -> Result<BTreeMap<i32, i64>, ExportError> {
    let md = kafka::metadata(consumer.client(), config, Some(topic))?;
    let partitions = kafka::partition_count(&md, topic, config)?;
    let timeout = Duration::from_millis(config.kafka.request_timeout_ms);
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout)?;
        let next = markers.get(&p).map(|m| m + 1);
        if next.is_some_and(|n| n < low) {
            tracing::warn!(
                partition = p,
                next = next.unwrap_or_default(),
                low,
                "records after the marker are gone from the topic (retention): they cannot be exported"
            );
        }
        let offset = next.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(topic, p, offset)?;
        ends.insert(p, high);
        if next.unwrap_or(low).max(low) >= high {
            caught.insert(p);
        }
    }
    consumer.assign(&tpl)?;
    Ok(ends)
}

impl Exporter<'_> {
    fn poll_loop(
        &mut self,
        ends: &BTreeMap<i32, i64>,
        mut caught: BTreeSet<i32>,
        until_caught_up: bool,
        shutdown: &AtomicBool,
    ) -> Result<(), ExportError> {
        let mut last_progress = Instant::now();
        self.update_caught(ends, &mut caught)?;
        loop {
            if shutdown.load(Ordering::SeqCst) || (until_caught_up && caught.len() == ends.len()) {
                return Ok(());
            }
            match self.consumer.poll(POLL) {
                None => {}
                Some(Ok(m)) => {
                    let (p, offset) = (m.partition(), m.offset());
                    let event = parse(&self.topic, &m);
                    drop(m);
                    self.add(p, offset, event?)?;
                    if ends.get(&p).is_some_and(|end| offset + 1 >= *end) {
                        caught.insert(p);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => self.update_caught(ends, &mut caught)?,
                Some(Err(e)) => tracing::warn!(error = %e, "reading {}", self.topic),
            }
            self.flush_due()?;
            if last_progress.elapsed() >= PROGRESS_EVERY {
                eprintln!("{}", self.progress_line(caught.len(), ends.len()));
                last_progress = Instant::now();
            }
        }
    }

    /// Marks the partitions whose position reached their end at start (a
    /// commit marker or an aborted transaction can be the last records).
    fn update_caught(
        &self,
        ends: &BTreeMap<i32, i64>,
        caught: &mut BTreeSet<i32>,
    ) -> Result<(), ExportError> {
        let position = self.consumer.position()?;
        for e in position.elements() {
            if let (Offset::Offset(at), Some(end)) = (e.offset(), ends.get(&e.partition())) {
                if at >= *end {
                    caught.insert(e.partition());
                }
            }
        }
        Ok(())
    }

    fn progress_line(&self, caught: usize, partitions: usize) -> String {
        let s = &self.summary;
        format!(
            "export: {} events, {} rows, {} files written; {caught}/{partitions} partitions caught up",
            s.events, s.rows, s.files
        )
    }

    fn add(&mut self, partition: i32, offset: i64, event: RatedEvent) -> Result<(), ExportError> {
        let rows = rows::rows(&event, partition, offset, &mut self.summary.calendar);
        let batch = self.batches.entry(partition).or_insert_with(|| Batch {
            first: offset,
            last: offset,
            events: 0,
            rows: Vec::new(),
            started: Instant::now(),
        });
        batch.last = offset;
        batch.events += 1;
        batch.rows.extend(rows);
        self.summary.events += 1;
        if batch.events >= self.batch_events {
            self.flush(partition)?;
        }
        Ok(())
    }

    fn flush_due(&mut self) -> Result<(), ExportError> {
        let due: Vec<i32> = self
            .batches
            .iter()
            .filter(|(_, b)| b.started.elapsed() >= self.batch_max)
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            self.flush(p)?;
        }
        Ok(())
    }

    fn flush_all(&mut self) -> Result<(), ExportError> {
        let all: Vec<i32> = self.batches.keys().copied().collect();
        for p in all {
            self.flush(p)?;
        }
        Ok(())
    }

    /// Writes a partition's batch: its files, then its marker, then the
    /// group offset (monitoring).
    fn flush(&mut self, partition: i32) -> Result<(), ExportError> {
        let Some(batch) = self.batches.remove(&partition) else {
            return Ok(());
        };
        let mut by_date: BTreeMap<NaiveDate, Vec<Row>> = BTreeMap::new();
        for row in batch.rows {
            by_date.entry(row.event_date).or_default().push(row);
        }
        for (date, rows) in by_date {
            let f = DataFile {
                date,
                partition,
                first_offset: batch.first,
                last_offset: batch.last,
            };
            let (bytes, stats) = file::write(&rows, self.scales)?;
            if stats.unfit_values > 0 {
                tracing::warn!(
                    file = f.path(),
                    values = stats.unfit_values,
                    "values that do not fit their decimal column: NULL there, exact in *_text"
                );
            }
            self.out.write(&f.path(), &bytes)?;
            self.summary.files += 1;
            self.summary.rows += stats.rows as u64;
            self.summary.unfit_values += stats.unfit_values as u64;
        }
        let marker = Marker {
            version: MARKER_VERSION,
            topic: self.topic.clone(),
            partition,
            last_offset: batch.last,
        };
        let bytes = serde_json::to_vec(&marker).map_err(|e| ExportError::Marker {
            path: layout::marker_path(partition),
            message: e.to_string(),
        })?;
        self.out.write(&layout::marker_path(partition), &bytes)?;
        self.summary.batches += 1;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(batch.last + 1))?;
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            tracing::debug!(error = %e, "committing the export group's offset (monitoring only)");
        }
        Ok(())
    }
}
