//! The command line: `meterline <verb>`. Each verb is a thin shell over the
//! library; anyhow lives only here and in main.rs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};

mod invoices;
mod lineage;
mod postings;
mod rerate;

use crate::config::Config;
use crate::kafka;
use crate::refdata::{parse_jsonl_for_meters, PublishRecord, RefKind};
use crate::replay::{ReplayArgs, ReplayOptions, ReplaySummary};
use crate::runtime::StageStatus;
use crate::topology::{self, Topology};

/// Default config file, looked up in the working directory when --config is absent.
pub const DEFAULT_CONFIG_FILE: &str = "meterline.toml";

#[derive(Debug, Parser)]
#[command(
    name = "meterline",
    version,
    about = "Kafka-native, exactly-once usage metering: CloudEvents in, ERP postings out"
)]
pub struct Cli {
    /// Config file (TOML). Default: $METERLINE_CONFIG, else ./meterline.toml if present.
    #[arg(long, global = true, env = "METERLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Topics and the stage graph.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Run stages (all of them when no --stage is given), until SIGTERM/SIGINT.
    Run {
        /// A stage to run (`meterline stages` lists them). Repeatable.
        #[arg(long = "stage")]
        stages: Vec<String>,
    },
    /// Re-publish dead letters (or parked exceptions) to the stage they came from.
    Replay(ReplayArgs),
    /// Produce a seeded, reproducible stream of usage events.
    Loadgen(crate::loadgen::LoadgenArgs),
    /// List the stages this build can run, in pipeline order.
    Stages,
    /// Print the committed postings of finance.postings: a table (default),
    /// JSON lines, or a NetSuite / Dynamics 365 journal-import CSV of the
    /// journal entries, selected by accounting date and legal entity.
    /// Exits 2 on a bad selection, 1 when an export leaves out records
    /// that are not postings (named on stderr).
    Postings(postings::PostingsArgs),
    /// Where one usage event went at each stage (or, with --posting, what
    /// is behind a posting), from the stages' lineage stores over HTTP
    /// (with `api.keys` set, it sends the key in $METERLINE_API_KEY, scope
    /// read). Exits 1 when no instance knows it.
    Lineage(lineage::LineageArgs),
    /// Prove per day and per window that no event or amount was lost,
    /// invented or counted twice between the stages. Exits 0 when every
    /// check holds, 1 when one fails (each named), 2 when Kafka cannot be read.
    Reconcile(crate::reconcile::ReconcileArgs),
    /// Write the rated events of usage.rated as Parquet files, one row
    /// per (event, measure), partitioned by event date, exactly once
    /// (progress markers in the output). Runs until SIGTERM/SIGINT, or with
    /// --until-caught-up until every partition reached its end at start.
    Export(crate::export::ExportArgs),
    /// Serve the HTTP API (api.listen_addr): OpenMeter-compatible usage
    /// submission at POST /api/v1/events, the contract at /v1/openapi.json.
    /// Needs at least one [[api.keys]]. Runs until SIGTERM/SIGINT.
    Api,
    /// Make a new API key: prints the token on stderr (shown once, never
    /// stored) and the [[api.keys]] entry holding its SHA-256 on stdout.
    ApiKey {
        /// Who holds the key (logged with refusals).
        #[arg(long)]
        name: String,
        /// Comma-separated: ingest, read, approve (act on invoices), admin.
        #[arg(long, value_delimiter = ',', default_value = "ingest")]
        scopes: Vec<String>,
    },
    /// Invoices: list, show, and finance operators' commands (approve,
    /// hold, release, void, credit, dispute), signed with
    /// $METERLINE_ACTOR_KEY; each waits for its outcome and prints it
    /// (exit 1: refused, with the reason; 2: not applied in time).
    Invoices(invoices::InvoicesArgs),
    /// Deliver the books into the general ledger (PostgreSQL, [ledger] url
    /// or $METERLINE_LEDGER_URL): postings and invoices exactly once, an
    /// ack per posting on finance.postings.acks, refusals dead-lettered to
    /// meterline.dlq.ledger. Runs until SIGTERM/SIGINT.
    LedgerSync,
    /// Price a subscription's segments again after a plan record was
    /// corrected (same id and version, republished): previews each
    /// segment's difference from rate's changelog, sends the command to
    /// rate (unless --dry-run) and waits for its adjustments. Exits 2 when
    /// they are not seen in time.
    Rerate(rerate::RerateArgs),
    /// Reference data: customers, subscriptions, plans, tax rates.
    Refdata {
        #[command(subcommand)]
        action: RefdataAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum RefdataAction {
    /// Check a JSON-lines file and publish it to its ref.* topic in one
    /// transaction; nothing is published if any line is bad.
    Load {
        /// customers, subscriptions, plans or tax_rates.
        #[arg(long)]
        kind: RefKind,
        /// JSON-lines file: one record per line; `{"id": ..., "deleted": true}`
        /// (plans: with "version") retires a record.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopologyAction {
    /// Create missing topics, report differences, register Avro schemas.
    Apply,
    /// Print the stage graph with each stage's topics and stores.
    Describe {
        /// Print a Mermaid flowchart instead of text.
        #[arg(long)]
        mermaid: bool,
    },
    /// Count the committed records of every pipeline topic (reads them all).
    Counts,
    /// Print the committed records of a topic (pipeline, changelog, dead
    /// letter) as JSON lines: topic, partition, offset, timestamp_ms, key,
    /// headers, value (JSON as JSON, other text as {"text"}, binary as {"hex"}).
    Dump {
        /// A topic of the topology by its name in the topics file
        /// (`usage.rated`, `meterline.rate.segments.changelog`; the
        /// namespace is applied), or any topic's full name.
        topic: String,
        /// Only this partition.
        #[arg(long)]
        partition: Option<i32>,
        /// Stop after this many records.
        #[arg(long, default_value_t = crate::topology::dump::DEFAULT_DUMP_LIMIT)]
        limit: u64,
    },
}

/// `meterline topology <action>`.
fn topology_verb(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    action: TopologyAction,
) -> anyhow::Result<ExitCode> {
    let topology = Topology::load(config)?;
    match action {
        TopologyAction::Describe { mermaid } => {
            if mermaid {
                print!("{}", topology.describe_mermaid());
            } else {
                print!("{}", topology.describe_text());
            }
        }
        TopologyAction::Counts => {
            print!(
                "{}",
                topology::counts::render(&topology::counts::count(config, &topology)?)
            );
        }
        TopologyAction::Apply => {
            let report = rt.block_on(topology::apply::apply(config, &topology))?;
            print!("{}", report.render());
        }
        TopologyAction::Dump {
            topic,
            partition,
            limit,
        } => dump(config, &topology, &topic, partition, limit)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `meterline topology dump`: the records to stdout, the count to stderr.
fn dump(
    config: &Config,
    topology: &Topology,
    topic: &str,
    partition: Option<i32>,
    limit: u64,
) -> anyhow::Result<()> {
    use topology::dump::DumpError;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let dumped = topology::dump::dump(config, topology, topic, partition, limit, &mut out)
        .and_then(|s| {
            std::io::Write::flush(&mut out)
                .map(|()| s)
                .map_err(DumpError::Write)
        });
    let s = match dumped {
        Ok(s) => s,
        // The reader stopped reading (`| head`): not an error.
        Err(DumpError::Write(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let limited = if s.limited {
        format!(", stopped at --limit {limit}")
    } else {
        String::new()
    };
    eprintln!(
        "meterline topology dump: {} record(s) of {}{limited}",
        s.records, s.topic
    );
    Ok(())
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if Path::new(DEFAULT_CONFIG_FILE).exists() => {
            Ok(Config::load(Path::new(DEFAULT_CONFIG_FILE))?)
        }
        None => Ok(Config::defaults_with_env(PathBuf::from("."))?),
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("METERLINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Parses the command line and runs the verb.
pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config = load_config(cli.config.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Topology { action } => topology_verb(&rt, &config, action),
        Command::Run { stages } => run(&rt, Arc::new(config), stages),
        Command::Postings(args) => postings::run(&config, &args),
        Command::Lineage(args) => Ok(if lineage::run(&config, &args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }),
        Command::Reconcile(args) => match crate::reconcile::run(&config, &args) {
            Ok(true) => Ok(ExitCode::SUCCESS),
            Ok(false) => Ok(ExitCode::from(1)),
            Err(e) => {
                eprintln!("meterline: error: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Export(args) => export(&rt, &config, &args),
        Command::Api => {
            let state = crate::api::ApiState::new(Arc::new(config))?;
            rt.block_on(async {
                tokio::select! {
                    r = crate::api::serve(state) => r.map_err(anyhow::Error::from),
                    _ = shutdown_signal() => Ok(()),
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ApiKey { name, scopes } => {
            print!("{}", api_key(&name, &scopes)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Invoices(args) => invoices::run(&config, args),
        Command::Rerate(args) => rerate::run(&config, &args),
        Command::LedgerSync => {
            crate::ledger::run(&rt, Arc::new(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Stages => {
            println!("{}", crate::stages::runnable());
            Ok(ExitCode::SUCCESS)
        }
        Command::Loadgen(args) => {
            crate::loadgen::run(&config, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Refdata {
            action: RefdataAction::Load { kind, file },
        } => refdata_load(&config, kind, &file),
        Command::Replay(args) => {
            let opts = ReplayOptions::from_args(&config, &args)?;
            let summary: ReplaySummary = crate::replay::replay(&config, &opts)?;
            print!("{}", summary.render(opts.dry_run));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A new token (written to stderr, so `>> meterline.toml` keeps it out of
/// the file) and the config entry holding its hash (stdout).
fn api_key(name: &str, scopes: &[String]) -> anyhow::Result<String> {
    for s in scopes {
        if !matches!(s.as_str(), "ingest" | "read" | "approve" | "admin") {
            bail!("unknown scope {s:?} (scopes: ingest, read, approve, admin)");
        }
    }
    let token = crate::api::auth::new_token();
    eprintln!("API key for {name:?} (shown once, stored nowhere): {token}");
    let quoted: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
    Ok(format!(
        "[[api.keys]]\nname = {name:?}\nsha256_hex = \"{}\"\nscopes = [{}]\n",
        crate::api::auth::token_hash_hex(&token),
        quoted.join(", ")
    ))
}

/// SIGTERM or SIGINT.
pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut t) => {
                t.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn run(
    rt: &tokio::runtime::Runtime,
    config: Arc<Config>,
    stages: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let names: Vec<&'static str> = if stages.is_empty() {
        topology::STAGES.iter().map(|s| s.name).collect()
    } else {
        stages
            .iter()
            .map(|s| {
                topology::stage(s).map(|s| s.name).ok_or_else(|| {
                    anyhow!(
                        "unknown stage {s:?} (stages: {})",
                        crate::stages::runnable()
                    )
                })
            })
            .collect::<Result<_, _>>()?
    };
    // Bind before any stage starts: an address in use is a startup error
    // (exit non-zero), not a process that runs without its endpoints.
    let addr = config.http.listen_addr.clone();
    let listener = rt
        .block_on(crate::http::bind(&addr))
        .with_context(|| format!("cannot listen on http.listen_addr {addr}"))?;
    let shutdown = Arc::new(AtomicBool::new(false));
    let mut statuses = Vec::new();
    let mut threads = Vec::new();
    for name in names {
        let status = Arc::new(StageStatus::default());
        statuses.push((name, status.clone()));
        let handle = crate::stages::spawn(name, config.clone(), shutdown.clone(), status)?;
        threads.push((name, handle));
    }
    let statuses = Arc::new(statuses);
    let http_failure: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    if let Some(listener) = listener {
        let (sd, failure) = (shutdown.clone(), http_failure.clone());
        let keys = Arc::new(config.api.keys.clone());
        rt.spawn(async move {
            if let Err(e) = crate::http::serve_on(listener, statuses, keys).await {
                tracing::error!(addr, error = %e, "metrics server failed: stopping");
                if let Ok(mut f) = failure.lock() {
                    f.get_or_insert(format!("HTTP server on {addr} failed: {e}"));
                }
                sd.store(true, Ordering::SeqCst);
            }
        });
    }
    // Stop on SIGTERM/SIGINT, or as soon as any stage dies (a supervisor
    // restarts the process; half a pipeline must not look healthy).
    let sd = shutdown.clone();
    rt.spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("signal received: committing and stopping");
        sd.store(true, Ordering::SeqCst);
    });
    let mut failed = None;
    for (name, handle) in threads {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.store(true, Ordering::SeqCst);
                failed.get_or_insert(format!("{e}"));
            }
            Err(_) => {
                shutdown.store(true, Ordering::SeqCst);
                failed.get_or_insert(format!("stage {name} panicked"));
            }
        }
    }
    if failed.is_none() {
        failed = http_failure.lock().ok().and_then(|mut f| f.take());
    }
    match failed {
        Some(m) => bail!(m),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `meterline export`: stops writing batches on SIGTERM/SIGINT after the
/// one in hand (pending batches are written, with their markers).
fn export(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    args: &crate::export::ExportArgs,
) -> anyhow::Result<ExitCode> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let sd = shutdown.clone();
    rt.spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received: writing pending batches and stopping");
        sd.store(true, Ordering::SeqCst);
    });
    let summary = crate::export::run(config, args, &shutdown)?;
    print!("{}", summary.render());
    Ok(ExitCode::SUCCESS)
}

/// `meterline refdata load`: all or nothing. Every bad line is reported (to
/// stderr, with its line number) and nothing is published unless the whole
/// file is good; then every record goes to the topic in one transaction, so
/// the enrich stage (reading read_committed) sees all of them or none.
fn refdata_load(config: &Config, kind: RefKind, file: &Path) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let meters = config
        .meters
        .iter()
        .map(|m| (m.slug.clone(), m.aggregation))
        .collect();
    let records = match parse_jsonl_for_meters(kind, &text, &meters) {
        Ok(records) => records,
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e} [{}]", file.display(), e.code());
            }
            bail!(
                "{} bad line(s) in {} ({kind}); nothing was published",
                errors.len(),
                file.display()
            );
        }
    };
    let topic = config.topic(kind.topic());
    publish_refdata(config, kind, &topic, &records)?;
    let tombstones = records.iter().filter(|(_, v)| v.is_none()).count();
    println!(
        "refdata load: published {} {kind} record(s) ({tombstones} tombstone(s)) to {topic} in one transaction",
        records.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// How long `refdata load` waits for a topic to appear in the metadata.
const REFDATA_TOPIC_WAIT_MS: u64 = 10_000;
const REFDATA_TOPIC_RETRY_MS: u64 = 250;

fn publish_refdata(
    config: &Config,
    kind: RefKind,
    topic: &str,
    records: &[PublishRecord],
) -> anyhow::Result<()> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use std::time::Duration;

    if records.is_empty() {
        return Ok(());
    }
    // One id per kind: two loads of the same table fence each other instead
    // of interleaving their records.
    let transactional_id = format!("{}meterline.refdata.{kind}", config.topology.namespace);
    let producer: BaseProducer = kafka::create(
        &kafka::transactional_producer_config(config, &transactional_id),
        rdkafka::producer::DefaultProducerContext,
    )?;
    // A topic created a moment ago (`topology apply` just before) may not be
    // in the metadata yet: ask again for a while before calling it missing.
    let waited = std::time::Instant::now();
    loop {
        let md = kafka::metadata(producer.client(), config, Some(topic))?;
        match kafka::partition_count(&md, topic, config) {
            Ok(_) => break,
            Err(e) if waited.elapsed() >= Duration::from_millis(REFDATA_TOPIC_WAIT_MS) => {
                return Err(e.into())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(REFDATA_TOPIC_RETRY_MS)),
        }
    }
    let timeout = Duration::from_millis(config.runtime.transaction_call_timeout_ms);
    producer
        .init_transactions(timeout)
        .with_context(|| format!("init_transactions for {transactional_id}"))?;
    producer.begin_transaction()?;
    let sent = (|| -> anyhow::Result<()> {
        for (key, value) in records {
            let mut record: BaseRecord<'_, str, [u8]> = BaseRecord::to(topic).key(key.as_str());
            if let Some(v) = value {
                record = record.payload(v.as_slice());
            }
            kafka::send_waiting(&producer, record)
                .with_context(|| format!("producing key {key:?}"))?;
        }
        // Commit flushes first and fails if any record failed to deliver;
        // this flush only saves rust-rdkafka's sleep (kafka::flush).
        kafka::flush(&producer, timeout).context("flush")?;
        producer
            .commit_transaction(timeout)
            .context("commit_transaction")
    })();
    if let Err(e) = sent {
        // Nothing of this load becomes visible to read_committed readers.
        let _ = producer.abort_transaction(timeout);
        return Err(e.context(format!("publishing to {topic}; nothing was published")));
    }
    Ok(())
}
