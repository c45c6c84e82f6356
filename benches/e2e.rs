//! End-to-end benchmark against the local broker (issue 6): throughput, latency,
//! CPU and memory of
//!
//! * P: a passthrough chain of five consume -> produce hops with meterline's
//!   own transactional client settings and no work (the ceiling of the
//!   five-stage design; meterline's sixth hop, the repartition by identity
//!   before dedupe, is part of what the ratio measures);
//! * meterline, all six stages, exactly-once (one process per stage);
//! * meterline with `runtime.processing_guarantee = "at_least_once"`;
//! * K: the same topology in Kafka Streams (`benches/kstreams`), when built;
//!
//! each on the same seeded input, plus a recovery measurement (SIGKILL of
//! validate + dedupe with 1,000,000 keys in dedupe's store). Methods: README,
//! "End-to-end benchmark". Run it with `deploy/local/bench` (builds everything
//! and starts the broker), or
//!
//!     cargo bench --bench e2e -- [--events N] [--systems p,eos,alos,k] [--recovery-keys N]
//!
//! `cargo test --benches` runs only the quick self-checks below (no broker).
//! The binary re-executes itself with `--hop` for each passthrough hop.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, TimeZone, Utc};
use meterline::config::Config;
use meterline::kafka;
use meterline::loadgen::{Generator, Kind};
use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};

const SEED: u64 = 42;
const CUSTOMERS: u32 = 100;
const SPREAD_HOURS: u32 = 72;
const TYPES: &[&str] = &["api.request", "llm.tokens"];
const PARTITIONS: i32 = 6;
const COMMIT_INTERVAL_MS: u64 = 100;
/// Throughput runs per system unless `--runs` says otherwise: single runs
/// on this machine differ by up to 1.6x, so the table reports the median.
const DEFAULT_RUNS: usize = 3;
/// Issue 18's targets, printed beside what the run measured.
const TARGET_EOS_OVER_P: f64 = 0.7;
const TARGET_EOS_OVER_K: f64 = 6.0;
const TARGET_CPU_OVER_P: f64 = 3.0;
/// meterline's `runtime.max_batch_records` default, used by the hops too.
const MAX_BATCH_RECORDS: usize = 5_000;
/// The pipeline's stages, in order (named once, in `topology::STAGES`).
fn stage_names() -> impl Iterator<Item = &'static str> {
    meterline::topology::STAGES.iter().map(|s| s.name)
}
const HOPS: usize = 5;

#[path = "e2e/soak.rs"]
mod soak;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--hop") {
        hop(&args[1..]);
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing.
    if !args.iter().any(|a| a == "--bench") {
        self_check();
        return;
    }
    let opts = Opts::parse(&args);
    if let Err(e) = run(opts) {
        eprintln!("e2e bench: error: {e}");
        std::process::exit(2);
    }
}

// ---------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    bootstrap: String,
    events: u64,
    systems: Vec<String>,
    recovery_keys: u64,
    latency_fraction: f64,
    latency_secs: f64,
    /// Minutes of the soak run (0: none).
    soak_mins: f64,
    /// The soak's rate, a fraction of the exactly-once throughput.
    soak_fraction: f64,
    /// Throughput runs per system; the table shows the median run.
    runs: usize,
    out: PathBuf,
    kstreams_jar: PathBuf,
    repo: PathBuf,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut o = Opts {
            bootstrap: std::env::var("METERLINE_TEST_BOOTSTRAP")
                .unwrap_or_else(|_| "127.0.0.1:9092".into()),
            events: 200_000,
            systems: vec!["eos".into(), "alos".into(), "p".into(), "k".into()],
            recovery_keys: 1_000_000,
            latency_fraction: 0.7,
            latency_secs: 40.0,
            soak_mins: 0.0,
            soak_fraction: 0.5,
            runs: DEFAULT_RUNS,
            out: std::env::var("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|_| repo.join("target"))
                .join("e2e-bench"),
            kstreams_jar: repo.join("benches/kstreams/target/meterline-kstreams.jar"),
            repo,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().unwrap_or_default();
            match a.as_str() {
                "--bench" => {}
                "--bootstrap" => o.bootstrap = val(),
                "--events" => o.events = val().parse().expect("--events N"),
                "--systems" => o.systems = val().split(',').map(str::to_string).collect(),
                "--recovery-keys" => o.recovery_keys = val().parse().expect("--recovery-keys N"),
                "--latency-fraction" => {
                    o.latency_fraction = val().parse().expect("--latency-fraction F")
                }
                "--latency-secs" => o.latency_secs = val().parse().expect("--latency-secs S"),
                "--soak-mins" => o.soak_mins = val().parse().expect("--soak-mins M"),
                "--soak-fraction" => o.soak_fraction = val().parse().expect("--soak-fraction F"),
                "--runs" => o.runs = val().parse::<usize>().expect("--runs N").max(1),
                "--out" => o.out = PathBuf::from(val()),
                "--kstreams-jar" => o.kstreams_jar = PathBuf::from(val()),
                other => {
                    eprintln!("e2e bench: unknown argument {other:?}");
                    std::process::exit(2);
                }
            }
        }
        o
    }
}

// ---------------------------------------------------------------------------
// The scenario: seeded loadgen events (as `meterline loadgen --types
// api.request,llm.tokens --customers 100 --spread-hours 72 --late-fraction 0`)
// whose timeline ends at a UTC midnight M, then one "tail" event per customer
// at M + 15 min. The tail moves every partition's watermark past M + grace, so
// every day window before M closes, triggered by the last records of the
// input: the last posting is due when the last input record is processed.

#[derive(Clone)]
struct Event {
    key: String,
    value: String,
    /// Event time (ms) of events validate accepts; None for malformed ones.
    event_ms: Option<i64>,
}

fn timeline_end() -> DateTime<Utc> {
    let now = Utc::now();
    let midnight = Utc
        .from_utc_datetime(&now.date_naive().and_hms_opt(0, 0, 0).unwrap())
        .to_utc();
    // The tail (M + 15 min) must not be in the future.
    if now - midnight < chrono::Duration::minutes(20) {
        midnight - chrono::Duration::days(1)
    } else {
        midnight
    }
}

fn scenario(count: u64, end: DateTime<Utc>, tail: bool) -> Vec<Event> {
    let types: Vec<String> = TYPES.iter().map(|s| s.to_string()).collect();
    let mut g = Generator::new(SEED, CUSTOMERS, 0.02, 0.01, end)
        .with_spread_hours(SPREAD_HOURS)
        .with_timeline(count, 0.0)
        .with_types(&types)
        .expect("scenario types");
    let mut out = Vec::with_capacity(count as usize + CUSTOMERS as usize);
    for _ in 0..count {
        out.push(next_event(&mut g));
    }
    if tail {
        let t = end + chrono::Duration::minutes(15);
        let time = t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        for c in 0..CUSTOMERS {
            let subject = format!("cust-{c:04}");
            out.push(Event {
                key: subject.clone(),
                value: format!(
                    r#"{{"specversion":"1.0","id":"tail-{c}","source":"loadgen/{SEED}","type":"api.request","subject":"{subject}","time":"{time}","data":{{"region":"eu"}}}}"#
                ),
                event_ms: Some(t.timestamp_millis()),
            });
        }
    }
    out
}

/// The generator's next record as an input event (malformed: no event time).
fn next_event(g: &mut Generator) -> Event {
    let r = g.next_record();
    let event_ms = match r.kind {
        Kind::Malformed(_) => None,
        _ => event_time_ms(&r.value),
    };
    Event {
        key: r.key,
        value: r.value,
        event_ms,
    }
}

fn event_time_ms(value: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(value).ok()?;
    let t = v.get("time")?.as_str()?;
    Some(DateTime::parse_from_rfc3339(t).ok()?.timestamp_millis())
}

// ---------------------------------------------------------------------------
// Kafka helpers

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// A meterline Config for `ns` (the lib's client settings, for P's hops too).
fn config_for(opts_repo: &Path, bootstrap: &str, ns: &str) -> Config {
    let meters = opts_repo.join("benches/scenario/meters.toml");
    Config::from_parts(
        &format!(
            "[kafka]\nbootstrap_servers = \"{bootstrap}\"\n[topology]\nnamespace = \"{ns}\"\nmeters_file = \"{}\"\n",
            meters.display()
        ),
        "e2e-bench",
        // METERLINE_KAFKA__* client properties reach P's hops as meterline's.
        &std::env::vars()
            .filter(|(k, _)| k.starts_with(meterline::config::ENV_KAFKA_PREFIX))
            .collect::<Vec<_>>(),
        opts_repo.to_path_buf(),
    )
    .expect("bench config")
}

type Admin = rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>;

/// An admin client and the names of the cluster's topics starting with `prefix`.
fn topics_with_prefix(bootstrap: &str, prefix: &str) -> Result<(Admin, Vec<String>), String> {
    let admin: Admin = client(bootstrap)
        .create()
        .map_err(|e: KafkaError| e.to_string())?;
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    let topics = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    Ok((admin, topics))
}

fn create_topics(bootstrap: &str, topics: &[String]) -> Result<(), String> {
    let admin: rdkafka::admin::AdminClient<_> = client(bootstrap)
        .create()
        .map_err(|e: KafkaError| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let new: Vec<_> = topics
        .iter()
        .map(|t| {
            rdkafka::admin::NewTopic::new(t, PARTITIONS, rdkafka::admin::TopicReplication::Fixed(1))
        })
        .collect();
    let res = rt
        .block_on(admin.create_topics(&new, &rdkafka::admin::AdminOptions::new()))
        .map_err(|e| e.to_string())?;
    for r in res {
        if let Err((t, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(format!("creating {t}: {code}"));
            }
        }
    }
    Ok(())
}

/// Delivery reports of the input producer: the partition of each record.
struct Deliveries {
    partitions: Vec<AtomicI32>,
    failed: AtomicU64,
}

struct DeliveryCtx(Arc<Deliveries>);
impl ClientContext for DeliveryCtx {}
impl ProducerContext for DeliveryCtx {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, i: usize) {
        match r {
            Ok(m) => self.0.partitions[i].store(m.partition(), Ordering::Relaxed),
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// What the input producer did: per record, its partition and produce time.
struct Produced {
    partitions: Vec<i32>,
    produced_ms: Vec<i64>,
}

/// Produces `events` to `topic` (murmur2 by key, as Java clients and
/// meterline do), at `rate` events/s (0: as fast as possible). Each record's
/// timestamp is its produce time.
fn produce(bootstrap: &str, topic: &str, events: &[Event], rate: f64) -> Result<Produced, String> {
    let d = Arc::new(Deliveries {
        partitions: (0..events.len()).map(|_| AtomicI32::new(-1)).collect(),
        failed: AtomicU64::new(0),
    });
    let p: BaseProducer<DeliveryCtx> = client(bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", kafka::PARTITIONER)
        .set("linger.ms", if rate > 0.0 { "0" } else { "20" })
        .create_with_context(DeliveryCtx(d.clone()))
        .map_err(|e| e.to_string())?;
    let mut produced_ms = Vec::with_capacity(events.len());
    let t0 = Instant::now();
    for (i, e) in events.iter().enumerate() {
        if rate > 0.0 {
            let due = Duration::from_secs_f64(i as f64 / rate);
            if let Some(w) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(w);
            }
        }
        let ts = now_ms();
        produced_ms.push(ts);
        let rec: BaseRecord<'_, str, str, usize> = BaseRecord::with_opaque_to(topic, i)
            .key(e.key.as_str())
            .payload(e.value.as_str())
            .timestamp(ts);
        kafka::send_waiting(&p, rec).map_err(|e| format!("produce: {e}"))?;
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(120))
        .map_err(|e| format!("flush: {e}"))?;
    if d.failed.load(Ordering::Relaxed) > 0 {
        return Err("some input records were not delivered".into());
    }
    Ok(Produced {
        partitions: d
            .partitions
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect(),
        produced_ms,
    })
}

/// A record read from an output topic under read_committed.
struct OutRec {
    /// When the tail consumer received it (readable under read_committed).
    seen: Instant,
    seen_ms: i64,
    timestamp_ms: Option<i64>,
    key: Vec<u8>,
    value: Vec<u8>,
}

/// Reads `topic` from the beginning under read_committed on a thread,
/// timestamping each record as it arrives, until stopped.
struct Tail {
    records: Arc<Mutex<Vec<OutRec>>>,
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Tail {
    fn start(bootstrap: &str, topic: &str) -> Result<Tail, String> {
        let c: BaseConsumer = client(bootstrap)
            .set("group.id", format!("{topic}.e2e-tail"))
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e: KafkaError| e.to_string())?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
        }
        c.assign(&tpl).map_err(|e| e.to_string())?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (records.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
                    let rec = OutRec {
                        seen: Instant::now(),
                        seen_ms: now_ms(),
                        timestamp_ms: m.timestamp().to_millis(),
                        key: m.key().unwrap_or_default().to_vec(),
                        value: m.payload().unwrap_or_default().to_vec(),
                    };
                    r.lock().unwrap().push(rec);
                }
            }
        });
        Ok(Tail {
            records,
            stop,
            handle: Some(handle),
        })
    }

    fn count(&self) -> usize {
        self.records.lock().unwrap().len()
    }

    fn finish(mut self) -> Vec<OutRec> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        std::mem::take(&mut *self.records.lock().unwrap())
    }
}

/// Greatest (end offset - committed offset) over the partitions of `topic`
/// for `group`; None when the group has committed nothing yet. A partition
/// written in transactions ends with a commit marker the group never commits
/// past: its lag stays at 1 when everything was consumed.
fn group_lag(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    let c: BaseConsumer = client(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .ok()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    let mut lag = 0;
    for e in committed.elements() {
        let (_, high) = c
            .fetch_watermarks(topic, e.partition(), Duration::from_secs(5))
            .ok()?;
        match e.offset() {
            Offset::Offset(o) => lag = lag.max(high - o),
            _ if high == 0 => {}
            _ => return None,
        }
    }
    Some(lag)
}

/// True when every group is Stable with at least one member.
fn groups_stable(bootstrap: &str, groups: &[String]) -> bool {
    let Ok(c) = client(bootstrap).create::<BaseConsumer>() else {
        return false;
    };
    groups.iter().all(|g| {
        c.fetch_group_list(Some(g), Duration::from_secs(5))
            .ok()
            .is_some_and(|l| {
                l.groups()
                    .iter()
                    .any(|i| i.state() == "Stable" && !i.members().is_empty())
            })
    })
}

// ---------------------------------------------------------------------------
// Processes

struct Proc {
    label: String,
    child: Child,
    /// Where the process serves /metrics (meterline's stages).
    metrics_port: Option<u16>,
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32, tck: f64) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / tck)
}

/// A field of /proc/<pid>/status in kB (VmHWM: peak resident set).
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn broker_pid() -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            if String::from_utf8_lossy(&cmd).contains("kafka.Kafka") {
                return Some(pid);
            }
        }
    }
    None
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn stop_all(procs: &mut [Proc]) {
    for p in procs.iter() {
        signal(p.child.id(), "-TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in procs.iter_mut() {
        loop {
            if matches!(p.child.try_wait(), Ok(Some(_))) {
                break;
            }
            if Instant::now() > deadline {
                let _ = p.child.kill();
                let _ = p.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The sum of a metric's series whose labels include `label` (`k="v"`;
/// every series when empty).
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split([' ', '{']).next() == Some(name))
        .filter(|l| {
            label.is_empty()
                || l.split_once('{')
                    .and_then(|(_, rest)| rest.split_once('}'))
                    .is_some_and(|(labels, _)| labels.split(',').any(|kv| kv == label))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        // fold, not sum: an empty f64 sum is -0.0, printed "-0.00".
        .fold(0.0, |a, b| a + b)
}

/// How a system under test is started.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    P,
    Eos,
    Alos,
    K,
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::P => "P (passthrough, 5 hops)",
            System::Eos => "meterline exactly-once",
            System::Alos => "meterline at-least-once",
            System::K => "K (Kafka Streams)",
        }
    }
    fn tag(self) -> &'static str {
        match self {
            System::P => "p",
            System::Eos => "eos",
            System::Alos => "alos",
            System::K => "k",
        }
    }
}

struct Env {
    opts: Opts,
    run_id: String,
    tck: f64,
    meterline: PathBuf,
    broker: Option<u32>,
    /// Partitions the broker held when the run started (None: unknown).
    broker_partitions: Option<usize>,
}

/// What a step adds to the defaults when it starts meterline's stages.
#[derive(Default)]
pub struct Launch {
    /// Part of the log and state names (empty for the throughput runs).
    pub tag: &'static str,
    /// Environment variables for every stage process (configuration, as a
    /// user would set it).
    pub env: Vec<(&'static str, &'static str)>,
    /// Each stage process serves /metrics on a free port (`Proc::metrics_port`).
    pub serve_metrics: bool,
}

impl Env {
    fn ns(&self, sys: System, phase: &str) -> String {
        format!("{}.{}.{}.", self.run_id, sys.tag(), phase)
    }

    /// A reference-data file of the scenario. Subscriptions start on the
    /// first of the month of the scenario's first event: billing periods are
    /// driven by subscriptions, and periods before the events (which K, the
    /// usage-driven peer, does not post) would only add postings to compare.
    fn scenario_file(&self, kind: &str) -> Result<PathBuf, String> {
        let path = self
            .opts
            .repo
            .join(format!("benches/scenario/{kind}.jsonl"));
        if kind != "subscriptions" {
            return Ok(path);
        }
        let first = timeline_end() - chrono::Duration::hours(i64::from(SPREAD_HOURS));
        let start = format!("{}-01T00:00:00Z", first.format("%Y-%m"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let out = self
            .opts
            .out
            .join(format!("{}.subscriptions.jsonl", self.run_id));
        std::fs::write(&out, text.replace("2026-01-01T00:00:00Z", &start))
            .map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(out)
    }

    fn meterline_cmd(&self, ns: &str) -> Command {
        let mut c = Command::new(&self.meterline);
        c.current_dir(&self.opts.repo)
            .env("METERLINE__KAFKA__BOOTSTRAP_SERVERS", &self.opts.bootstrap)
            .env("METERLINE__TOPOLOGY__NAMESPACE", ns)
            .env(
                "METERLINE__TOPOLOGY__METERS_FILE",
                self.opts.repo.join("benches/scenario/meters.toml"),
            )
            .env(
                "METERLINE__RUNTIME__COMMIT_INTERVAL_MS",
                COMMIT_INTERVAL_MS.to_string(),
            )
            .env("METERLINE__HTTP__LISTEN_ADDR", "")
            .env(
                "METERLINE_LOG",
                std::env::var("E2E_METERLINE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("METERLINE_CONFIG");
        c
    }

    fn log(&self, name: &str) -> Stdio {
        std::fs::File::create(self.opts.out.join(format!("{}.{name}.log", self.run_id)))
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null())
    }

    fn run_ok(&self, mut c: Command, what: &str) -> Result<(), String> {
        let out = c.output().map_err(|e| format!("{what}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{what} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// Topics (and reference data) of a namespace; returns (input, output).
    fn setup(&self, sys: System, ns: &str) -> Result<(String, String), String> {
        let input = format!("{ns}usage.events");
        match sys {
            System::P => {
                let mut topics = vec![input.clone()];
                topics.extend((1..=HOPS).map(|i| format!("{ns}p.hop{i}")));
                create_topics(&self.opts.bootstrap, &topics)?;
                Ok((input, format!("{ns}p.hop{HOPS}")))
            }
            _ => {
                let mut c = self.meterline_cmd(ns);
                c.args(["topology", "apply"]);
                self.run_ok(c, "meterline topology apply")?;
                for kind in ["customers", "subscriptions", "plans"] {
                    let file = self.scenario_file(kind)?;
                    let mut c = self.meterline_cmd(ns);
                    c.args(["refdata", "load", "--kind", kind, "--file"])
                        .arg(file);
                    self.run_ok(c, "meterline refdata load")?;
                }
                if sys == System::K {
                    let out = format!("{ns}kstreams.finance.postings");
                    create_topics(&self.opts.bootstrap, std::slice::from_ref(&out))?;
                    Ok((input, out))
                } else {
                    Ok((input, format!("{ns}finance.postings")))
                }
            }
        }
    }

    /// Starts the system's processes; returns them and the consumer groups
    /// that must be Stable before it consumes.
    fn spawn(
        &self,
        sys: System,
        ns: &str,
        launch: &Launch,
    ) -> Result<(Vec<Proc>, Vec<String>), String> {
        let tag = launch.tag;
        let state = self.opts.out.join(format!("state-{}{tag}", ns));
        let mut procs = Vec::new();
        let mut groups = Vec::new();
        match sys {
            System::Eos | System::Alos => {
                for s in stage_names() {
                    let mut c = self.meterline_cmd(ns);
                    c.args(["run", "--stage", s])
                        .env("METERLINE__RUNTIME__STATE_DIR", &state)
                        .env(
                            "METERLINE__RUNTIME__PROCESSING_GUARANTEE",
                            if sys == System::Eos {
                                "exactly_once"
                            } else {
                                "at_least_once"
                            },
                        )
                        .stdout(Stdio::null())
                        .stderr(self.log(&format!("{}{tag}.{s}", sys.tag())));
                    c.envs(launch.env.iter().copied());
                    let mut metrics_port = None;
                    if launch.serve_metrics {
                        let port = free_port();
                        c.env("METERLINE__HTTP__LISTEN_ADDR", format!("127.0.0.1:{port}"));
                        metrics_port = Some(port);
                    }
                    let child = c.spawn().map_err(|e| format!("spawn meterline: {e}"))?;
                    procs.push(Proc {
                        label: format!("meterline {s}"),
                        child,
                        metrics_port,
                    });
                    groups.push(format!("{ns}meterline.{s}"));
                }
            }
            System::P => {
                let exe = std::env::current_exe().map_err(|e| e.to_string())?;
                for i in 1..=HOPS {
                    let from = if i == 1 {
                        format!("{ns}usage.events")
                    } else {
                        format!("{ns}p.hop{}", i - 1)
                    };
                    let group = format!("{ns}p.hop{i}");
                    let child = Command::new(&exe)
                        .args(["--hop", &self.opts.bootstrap, &from])
                        .arg(format!("{ns}p.hop{i}"))
                        .arg(&group)
                        .arg(self.opts.repo.as_os_str())
                        .stdout(Stdio::null())
                        .stderr(self.log(&format!("p{tag}.hop{i}")))
                        .spawn()
                        .map_err(|e| format!("spawn hop: {e}"))?;
                    procs.push(Proc {
                        label: format!("hop {i}"),
                        child,
                        metrics_port: None,
                    });
                    groups.push(group);
                }
            }
            System::K => {
                let child = Command::new("java")
                    .arg("-jar")
                    .arg(&self.opts.kstreams_jar)
                    .args(["--bootstrap", &self.opts.bootstrap, "--namespace", ns])
                    .arg("--state-dir")
                    .arg(&state)
                    .args(["--commit-interval-ms", &COMMIT_INTERVAL_MS.to_string()])
                    .stdout(self.log(&format!("k{tag}.out")))
                    .stderr(self.log(&format!("k{tag}")))
                    .spawn()
                    .map_err(|e| format!("spawn java: {e}"))?;
                procs.push(Proc {
                    label: "kafka streams (jvm)".into(),
                    child,
                    metrics_port: None,
                });
                groups.push(kstreams_app_id(&self.opts.repo, ns));
            }
        }
        Ok((procs, groups))
    }
}

/// K's application.id (its consumer group), as benches/kstreams names it.
fn kstreams_app_id(repo: &Path, ns: &str) -> String {
    // The peer documents its application id in benches/kstreams/APP_ID
    // ("{ns}" replaced by the namespace); default: "<ns>kstreams".
    std::fs::read_to_string(repo.join("benches/kstreams/APP_ID"))
        .ok()
        .map(|s| s.trim().replace("{ns}", ns))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{ns}kstreams"))
}

// ---------------------------------------------------------------------------
// One throughput run

struct ProcStat {
    label: String,
    cpu_s: f64,
    peak_mb: f64,
    /// Store writes sent to changelogs (meterline's stages), from /metrics.
    changelog_records: Option<f64>,
    /// Key and value bytes written: (to output topics, to changelogs),
    /// meterline's stages, from /metrics.
    bytes_written: Option<(f64, f64)>,
    /// Transactions committed and the seconds of each commit phase, in the
    /// order of `metrics::COMMIT_PHASES_IN_ORDER` (meterline's stages).
    commit_phases: Option<(f64, [f64; 4])>,
}

/// Commits and seconds per commit phase from a stage's /metrics.
fn commit_phases(body: &str) -> (f64, [f64; 4]) {
    let commits = metric_sum(body, "meterline_transaction_commits_total", "");
    let phases = meterline::metrics::COMMIT_PHASES_IN_ORDER.map(|phase| {
        metric_sum(
            body,
            "meterline_transaction_commit_phase_seconds_total",
            &format!("phase=\"{phase}\""),
        )
    });
    (commits, phases)
}

struct Throughput {
    sys: System,
    elapsed_s: f64,
    startup_s: f64,
    events: usize,
    outputs: Vec<OutRec>,
    procs: Vec<ProcStat>,
    broker_cpu_s: Option<f64>,
    note: String,
    /// events/s of every run of this system, ascending (this one is the median).
    runs_eps: Vec<f64>,
}

impl Throughput {
    fn eps(&self) -> f64 {
        self.events as f64 / self.elapsed_s.max(1e-9)
    }

    fn cpu_us_per_event(&self) -> f64 {
        self.procs.iter().map(|p| p.cpu_s).sum::<f64>() * 1e6 / self.events.max(1) as f64
    }
}

/// The run with the median events/s (the lower middle of an even count),
/// carrying every run's events/s for the spread.
fn median_run(mut runs: Vec<Throughput>) -> Throughput {
    assert!(!runs.is_empty(), "at least one run");
    runs.sort_by(|a, b| a.eps().total_cmp(&b.eps()));
    let all: Vec<f64> = runs.iter().map(Throughput::eps).collect();
    let mut t = runs.swap_remove((all.len() - 1) / 2);
    t.runs_eps = all;
    t
}

/// Waits for `groups` to be Stable (at most `max`); the wait in seconds and
/// whether they became stable.
fn wait_ready(
    bootstrap: &str,
    groups: &[String],
    procs: &mut [Proc],
    max: Duration,
) -> (f64, bool) {
    let t0 = Instant::now();
    while t0.elapsed() < max {
        if procs
            .iter_mut()
            .any(|p| matches!(p.child.try_wait(), Ok(Some(_))))
        {
            return (t0.elapsed().as_secs_f64(), false);
        }
        if groups_stable(bootstrap, groups) {
            return (t0.elapsed().as_secs_f64(), true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (t0.elapsed().as_secs_f64(), false)
}

fn throughput(
    env: &Env,
    sys: System,
    events: &[Event],
    expected: Option<usize>,
    phase: &str,
) -> Result<Throughput, String> {
    let ns = env.ns(sys, phase);
    let (input, output) = env.setup(sys, &ns)?;
    let boot = &env.opts.bootstrap;
    eprintln!(
        "e2e: {}: pre-loading {} events into {input}",
        sys.name(),
        events.len()
    );
    produce(boot, &input, events, 0.0)?;
    let tail = Tail::start(boot, &output)?;
    let spawned = Instant::now();
    let launch = Launch {
        serve_metrics: true,
        ..Launch::default()
    };
    let (mut procs, groups) = env.spawn(sys, &ns, &launch)?;
    let (startup_s, ready) = wait_ready(boot, &groups, &mut procs, Duration::from_secs(90));
    let mut note = String::new();
    // Consumption starts when every group holds its partitions.
    let start = if ready {
        Instant::now()
    } else {
        note.push_str("groups not seen Stable: timed from spawn; ");
        spawned
    };
    let broker_cpu0 = env.broker.and_then(|p| cpu_secs(p, env.tck));
    eprintln!(
        "e2e: {}: ready after {startup_s:.1} s, processing",
        sys.name()
    );
    // Done: the expected count reached (P: one output per input; others: the
    // count of the first meterline run), or no new output for `quiet` with
    // every meterline group caught up.
    let quiet = Duration::from_secs(if expected.is_some() { 3 } else { 8 });
    let stall = Duration::from_secs(90);
    let mut samples: Vec<(Instant, Vec<Option<f64>>, Option<f64>)> = Vec::new();
    let mut last_count = 0usize;
    let mut last_change = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(100));
        samples.push((
            Instant::now(),
            procs
                .iter()
                .map(|p| cpu_secs(p.child.id(), env.tck))
                .collect(),
            env.broker.and_then(|p| cpu_secs(p, env.tck)),
        ));
        if let Some((i, p)) = procs
            .iter_mut()
            .enumerate()
            .find_map(|(i, p)| p.child.try_wait().ok().flatten().map(|s| (i, s)))
        {
            note.push_str(&format!("{} exited early ({p}); ", env_label(&procs, i)));
            break;
        }
        let n = tail.count();
        if n != last_count {
            last_count = n;
            last_change = Instant::now();
        }
        let stable = last_change.elapsed() >= quiet;
        let done = match expected {
            Some(e) => (n >= e && stable) || (n > e),
            None => {
                stable
                    && n > 0
                    && (sys == System::K
                        || stage_names().zip(stage_inputs(&ns)).all(|(s, t)| {
                            let lag = group_lag(boot, &format!("{ns}meterline.{s}"), &t);
                            // usage.events is not transactional: no marker.
                            lag.is_some_and(|l| l <= i64::from(s != "validate"))
                        }))
            }
        };
        if done {
            if let Some(e) = expected {
                if n > e {
                    // More than expected: let it settle to see how many.
                    std::thread::sleep(Duration::from_secs(3));
                }
            }
            break;
        }
        if last_change.elapsed() >= stall {
            note.push_str(&format!("stalled at {n} outputs; "));
            break;
        }
    }
    let peaks: Vec<f64> = procs
        .iter()
        .map(|p| status_kb(p.child.id(), "VmHWM").unwrap_or(0) as f64 / 1024.0)
        .collect();
    let metrics: Vec<Option<String>> = procs
        .iter()
        .map(|p| http_get(p.metrics_port?, "/metrics"))
        .collect();
    let changelogs: Vec<Option<f64>> = metrics
        .iter()
        .map(|body| {
            Some(metric_sum(
                body.as_ref()?,
                "meterline_changelog_records_total",
                "",
            ))
        })
        .collect();
    let bytes_written: Vec<Option<(f64, f64)>> = metrics
        .iter()
        .map(|body| {
            let body = body.as_ref()?;
            Some((
                metric_sum(body, "meterline_records_out_bytes_total", ""),
                metric_sum(body, "meterline_changelog_bytes_total", ""),
            ))
        })
        .collect();
    let phases: Vec<Option<(f64, [f64; 4])>> = metrics
        .iter()
        .map(|body| Some(commit_phases(body.as_ref()?)))
        .collect();
    stop_all(&mut procs);
    let outputs = tail.finish();
    let end = outputs.iter().map(|o| o.seen).max().unwrap_or(start);
    // CPU at the last output (the first sample after it).
    let at_end = samples
        .iter()
        .find(|(t, _, _)| *t >= end)
        .or(samples.last());
    let proc_stats = procs
        .iter()
        .enumerate()
        .map(|(i, p)| ProcStat {
            label: p.label.clone(),
            cpu_s: at_end.and_then(|s| s.1[i]).unwrap_or(0.0),
            peak_mb: peaks[i],
            changelog_records: changelogs[i],
            bytes_written: bytes_written[i],
            commit_phases: phases[i],
        })
        .collect();
    let broker_cpu_s = match (broker_cpu0, at_end.and_then(|s| s.2)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let elapsed_s = end.saturating_duration_since(start).as_secs_f64();
    eprintln!(
        "e2e: {}: {} outputs, last after {elapsed_s:.2} s",
        sys.name(),
        outputs.len()
    );
    Ok(Throughput {
        sys,
        elapsed_s,
        startup_s,
        events: events.len(),
        outputs,
        procs: proc_stats,
        broker_cpu_s,
        note,
        runs_eps: Vec::new(),
    })
}

fn env_label(procs: &[Proc], i: usize) -> String {
    procs.get(i).map(|p| p.label.clone()).unwrap_or_default()
}

fn stage_inputs(ns: &str) -> Vec<String> {
    meterline::topology::STAGES
        .iter()
        .map(|s| format!("{ns}{}", s.input))
        .collect()
}

// ---------------------------------------------------------------------------
// Latency at a fraction of the measured rate

struct Latency {
    rate: f64,
    events: usize,
    samples: Vec<f64>,
    unmatched: usize,
}

/// A posting's latency: readable time minus the produce time of the input
/// event that made its window due (the first event on the customer's
/// partition whose event time reached window end + grace). P: an output's
/// readable time minus its input's produce time (the hops keep timestamps).
fn latency(env: &Env, sys: System, rate: f64, grace_ms: i64) -> Result<Latency, String> {
    let n = ((rate * env.opts.latency_secs) as u64).clamp(20_000, env.opts.events.max(20_000));
    let events = scenario(n, timeline_end(), false);
    let ns = env.ns(sys, "lat");
    let (input, output) = env.setup(sys, &ns)?;
    let boot = &env.opts.bootstrap;
    let tail = Tail::start(boot, &output)?;
    let (mut procs, groups) = env.spawn(sys, &ns, &Launch::default())?;
    let (_, ready) = wait_ready(boot, &groups, &mut procs, Duration::from_secs(90));
    if !ready {
        std::thread::sleep(Duration::from_secs(10));
    }
    eprintln!(
        "e2e: {}: latency run, {} events at {rate:.0}/s",
        sys.name(),
        events.len()
    );
    let produced = produce(boot, &input, &events, rate)?;
    // Let the last windows drain (at least one commit interval on each hop).
    drain(&tail, Duration::from_secs(4));
    stop_all(&mut procs);
    let outputs = tail.finish();
    let mut samples = Vec::new();
    let mut unmatched = 0;
    if sys == System::P {
        for o in &outputs {
            match o.timestamp_ms {
                Some(ts) => samples.push((o.seen_ms - ts) as f64),
                None => unmatched += 1,
            }
        }
    } else {
        let idx = TriggerIndex::new(&events, &produced);
        for o in &outputs {
            match posting_due(&o.value, grace_ms).and_then(|(c, due)| idx.trigger(&c, due)) {
                Some(produced_ms) => samples.push((o.seen_ms - produced_ms) as f64),
                None => unmatched += 1,
            }
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(Latency {
        rate,
        events: events.len(),
        samples,
        unmatched,
    })
}

/// Waits until the outputs `tail` counts have not moved for `quiet`.
fn drain(tail: &Tail, quiet: Duration) {
    let mut last = tail.count();
    let mut since = Instant::now();
    while since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(200));
        let c = tail.count();
        if c != last {
            last = c;
            since = Instant::now();
        }
    }
}

/// Customer and due event time (window end + grace) of a posting.
fn posting_due(value: &[u8], grace_ms: i64) -> Option<(String, i64)> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let customer = v.get("customer_id")?.as_str()?.to_string();
    let end = v.get("window")?.get("end")?.as_str()?;
    let end = DateTime::parse_from_rfc3339(end).ok()?.timestamp_millis();
    Some((customer, end + grace_ms))
}

/// Per input partition, in produce order: the running maximum event time and
/// the produce time, to find the first event that moved the watermark to a time.
struct TriggerIndex {
    customer_partition: HashMap<String, i32>,
    partitions: BTreeMap<i32, Vec<(i64, i64)>>,
}

impl TriggerIndex {
    fn new(events: &[Event], produced: &Produced) -> TriggerIndex {
        let mut customer_partition = HashMap::new();
        let mut partitions: BTreeMap<i32, Vec<(i64, i64)>> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let p = produced.partitions[i];
            customer_partition.insert(e.key.clone(), p);
            if let Some(t) = e.event_ms {
                let v = partitions.entry(p).or_default();
                let max = v.last().map_or(t, |(m, _)| (*m).max(t));
                v.push((max, produced.produced_ms[i]));
            }
        }
        TriggerIndex {
            customer_partition,
            partitions,
        }
    }

    /// Produce time of the first event on `customer`'s partition whose
    /// running max event time reached `due`.
    fn trigger(&self, customer: &str, due: i64) -> Option<i64> {
        let v = self
            .partitions
            .get(self.customer_partition.get(customer)?)?;
        let i = v.partition_point(|(max, _)| *max < due);
        v.get(i).map(|(_, produced)| *produced)
    }
}

fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[i])
}

// ---------------------------------------------------------------------------
// Recovery: SIGKILL of validate + dedupe (one process) with N keys in
// dedupe's store.

struct Recovery {
    mode: &'static str,
    keys: f64,
    /// dedupe's state directory just before the kill, MB.
    dedupe_state_mb: Option<f64>,
    kill_to_commit_s: Option<f64>,
    spawn_to_commit_s: Option<f64>,
}

fn spawn_gate(
    env: &Env,
    ns: &str,
    state: &Path,
    port: u16,
    static_m: bool,
    tag: &str,
) -> Result<Proc, String> {
    let mut c = env.meterline_cmd(ns);
    c.args(["run", "--stage", "validate", "--stage", "dedupe"])
        .env("METERLINE__RUNTIME__STATE_DIR", state)
        .env("METERLINE__HTTP__LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env(
            "METERLINE__RUNTIME__STATIC_MEMBERSHIP",
            if static_m { "true" } else { "false" },
        )
        .stdout(Stdio::null())
        .stderr(env.log(&format!("recovery.{tag}")));
    Ok(Proc {
        label: "meterline validate+dedupe".into(),
        child: c.spawn().map_err(|e| format!("spawn: {e}"))?,
        metrics_port: Some(port),
    })
}

fn commits(port: u16) -> Option<f64> {
    let body = http_get(port, "/metrics")?;
    Some(metric_sum(
        &body,
        "meterline_transaction_commits_total",
        "stage=\"dedupe\"",
    ))
}

fn recovery(env: &Env) -> Result<Vec<Recovery>, String> {
    let ns = format!("{}.recovery.", env.run_id);
    let boot = env.opts.bootstrap.clone();
    let (input, _) = env.setup(System::Eos, &ns)?;
    let state = env.opts.out.join(format!("state-{ns}"));
    // Two dedupe keys per accepted event ((source, id) and its expiry entry).
    let n = env.opts.recovery_keys.div_ceil(2);
    let mut g = Generator::new(SEED + 1, CUSTOMERS, 0.0, 0.0, Utc::now())
        .with_spread_hours(SPREAD_HOURS)
        .with_timeline(n, 0.0)
        .with_types(&TYPES.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .map_err(|e| e.to_string())?;
    let events: Vec<Event> = (0..n)
        .map(|_| {
            let r = g.next_record();
            Event {
                key: r.key,
                value: r.value,
                event_ms: None,
            }
        })
        .collect();
    eprintln!(
        "e2e: recovery: loading {n} events through validate and dedupe ({} keys)",
        2 * n
    );
    produce(&boot, &input, &events, 0.0)?;
    let group = format!("{ns}meterline.validate");
    let dedupe_group = format!("{ns}meterline.dedupe");
    let identified = format!("{ns}usage.identified");
    let mut results = Vec::new();
    let mut port = free_port();
    let mut p = spawn_gate(env, &ns, &state, port, false, "load")?;
    let t0 = Instant::now();
    // usage.identified is transactional: its last record may be a marker.
    while group_lag(&boot, &group, &input) != Some(0)
        || group_lag(&boot, &dedupe_group, &identified).is_none_or(|l| l > 1)
    {
        if t0.elapsed() > Duration::from_secs(600) {
            return Err("recovery: validate and dedupe did not catch up in 600 s".into());
        }
        if let Ok(Some(s)) = p.child.try_wait() {
            return Err(format!("recovery: validate exited ({s})"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Keep records flowing during the kill, so a transaction is open.
    let more = Arc::new(AtomicBool::new(true));
    let feeder = {
        let (more, boot, input) = (more.clone(), boot.clone(), input.clone());
        let mut g = Generator::new(SEED + 2, CUSTOMERS, 0.0, 0.0, Utc::now())
            .with_spread_hours(1)
            .with_timeline(1_000_000, 0.0);
        std::thread::spawn(move || {
            while more.load(Ordering::Relaxed) {
                let batch: Vec<Event> = (0..200)
                    .map(|_| {
                        let r = g.next_record();
                        Event {
                            key: r.key,
                            value: r.value,
                            event_ms: None,
                        }
                    })
                    .collect();
                let _ = produce(&boot, &input, &batch, 2_000.0);
            }
        })
    };
    for (mode, static_m) in [
        ("dynamic membership (default)", false),
        ("static membership", true),
    ] {
        if static_m {
            // Switch modes cleanly: SIGTERM leaves the group, the static
            // instance joins and restores from its checkpoint.
            signal(p.child.id(), "-TERM");
            let _ = p.child.wait();
            port = free_port();
            p = spawn_gate(env, &ns, &state, port, true, "static-warm")?;
            let t = Instant::now();
            while commits(port).unwrap_or(0.0) < 20.0 && t.elapsed() < Duration::from_secs(120) {
                std::thread::sleep(Duration::from_millis(200));
            }
        } else {
            std::thread::sleep(Duration::from_secs(6));
        }
        // The store size gauge refreshes every 5 s.
        let keys = http_get(port, "/metrics")
            .map(|b| metric_sum(&b, "meterline_store_keys", "stage=\"dedupe\""))
            .unwrap_or(0.0);
        let dedupe_state_mb = soak::dir_mb(&state.join(format!("{ns}dedupe")));
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        signal(p.child.id(), "-KILL");
        let _ = p.child.wait();
        port = free_port();
        let spawned = Instant::now();
        p = spawn_gate(
            env,
            &ns,
            &state,
            port,
            static_m,
            &format!("restart-{static_m}"),
        )?;
        let mut first = None;
        while killed.elapsed() < Duration::from_secs(120) {
            if commits(port).unwrap_or(0.0) >= 1.0 {
                first = Some(Instant::now());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let r = Recovery {
            mode,
            keys,
            dedupe_state_mb,
            kill_to_commit_s: first.map(|f| (f - killed).as_secs_f64()),
            spawn_to_commit_s: first.map(|f| (f - spawned).as_secs_f64()),
        };
        eprintln!(
            "e2e: recovery ({mode}): {:.0} keys, first commit {:?} s after SIGKILL",
            r.keys, r.kill_to_commit_s
        );
        results.push(r);
    }
    more.store(false, Ordering::Relaxed);
    let _ = feeder.join();
    stop_all(std::slice::from_mut(&mut p));
    Ok(results)
}

// ---------------------------------------------------------------------------
// Postings agreement

fn dump(path: &Path, outputs: &[OutRec]) -> Result<(), String> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
    // "KEY<TAB>VALUE" per record, as benches/kstreams/compare.py reads it.
    for o in outputs {
        f.write_all(&o.key).map_err(|e| e.to_string())?;
        f.write_all(b"\t").map_err(|e| e.to_string())?;
        f.write_all(&o.value).map_err(|e| e.to_string())?;
        f.write_all(b"\n").map_err(|e| e.to_string())?;
    }
    f.flush().map_err(|e| e.to_string())
}

/// Same multiset of posting values.
fn same_postings(a: &[OutRec], b: &[OutRec]) -> bool {
    let mut x: Vec<&[u8]> = a.iter().map(|o| o.value.as_slice()).collect();
    let mut y: Vec<&[u8]> = b.iter().map(|o| o.value.as_slice()).collect();
    x.sort();
    y.sort();
    x == y
}

/// benches/kstreams/compare.py A B when present (its exit status), else an
/// exact comparison of the posting values.
fn compare_with_k(
    env: &Env,
    meterline: &Path,
    k: &Path,
    a: &[OutRec],
    b: &[OutRec],
) -> (bool, String) {
    let script = env.opts.repo.join("benches/kstreams/compare.py");
    if script.exists() {
        match Command::new("python3")
            .arg(&script)
            .arg(meterline)
            .arg(k)
            .output()
        {
            Ok(o) => {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                return (o.status.success(), text.trim().to_string());
            }
            Err(e) => return (false, format!("compare.py: {e}")),
        }
    }
    let same = same_postings(a, b);
    (same, format!("byte-identical posting values: {same}"))
}

// ---------------------------------------------------------------------------
// The run

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let mem_gb = status_meminfo("MemTotal").unwrap_or(0) as f64 / 1024.0 / 1024.0;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem_gb:.0} GB RAM, Linux {}; broker on the same machine",
        kernel.trim()
    )
}

/// Partitions a broker may hold before the run warns that its background
/// work (retention and cleaner checks, metadata) competes with the run:
/// 7,000 left by earlier test runs took 30% of a core, idle (2026-12-07).
const BROKER_PARTITIONS_WARN: usize = 1_000;

/// Partitions of every topic on the broker (None: no metadata).
fn broker_partitions(bootstrap: &str) -> Option<usize> {
    let admin: Admin = client(bootstrap).create().ok()?;
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(30))
        .ok()?;
    Some(md.topics().iter().map(|t| t.partitions().len()).sum())
}

fn warn_busy_broker(partitions: Option<usize>) {
    if let Some(n) = partitions.filter(|n| *n > BROKER_PARTITIONS_WARN) {
        eprintln!(
            "e2e: warning: the broker holds {n} partitions from earlier runs; its background work \
             competes with this run. `deploy/local/kafka stop`, then run deploy/local/bench again: \
             it starts a fresh broker."
        );
    }
}

fn status_meminfo(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn run(opts: Opts) -> Result<(), String> {
    std::fs::create_dir_all(&opts.out).map_err(|e| e.to_string())?;
    let run_id = format!("bench.e2e.{}", Utc::now().format("%Y%m%d-%H%M%S"));
    let partitions = broker_partitions(&opts.bootstrap);
    warn_busy_broker(partitions);
    let env = Env {
        meterline: PathBuf::from(env!("CARGO_BIN_EXE_meterline")),
        tck: clk_tck(),
        broker: broker_pid(),
        broker_partitions: partitions,
        run_id,
        opts,
    };
    let want = |s: System| env.opts.systems.iter().any(|x| x == s.tag());
    let mut k_skip = None;
    if want(System::K) && !env.opts.kstreams_jar.exists() {
        k_skip = Some(format!(
            "K skipped: {} not built (mvn -q -f benches/kstreams/pom.xml package -DskipTests)",
            env.opts.kstreams_jar.display()
        ));
    }
    let grace_ms = i64::from(
        config_for(&env.opts.repo, &env.opts.bootstrap, "")
            .aggregate
            .grace_period_s,
    ) * 1000;
    let events = scenario(env.opts.events, timeline_end(), true);
    eprintln!(
        "e2e: run {} ({} events + {} tail, outputs and logs in {})",
        env.run_id,
        env.opts.events,
        CUSTOMERS,
        env.opts.out.display()
    );

    let mut tps: Vec<Throughput> = Vec::new();
    let mut expected_postings = None;
    let mut agreement = Vec::new();
    let mut disagree = false;
    for sys in [System::Eos, System::Alos, System::P, System::K] {
        if !want(sys) || (sys == System::K && k_skip.is_some()) {
            continue;
        }
        let mut runs: Vec<Throughput> = Vec::new();
        for i in 0..env.opts.runs {
            let expected = match sys {
                System::P => Some(events.len()),
                _ => expected_postings,
            };
            let phase = if i == 0 {
                "tp".to_string()
            } else {
                format!("tp{i}")
            };
            let t = throughput(&env, sys, &events, expected, &phase)?;
            if sys == System::Eos && expected_postings.is_none() {
                expected_postings = Some(t.outputs.len());
            }
            runs.push(t);
        }
        if sys != System::P && runs.len() > 1 {
            // Every run of a system must post the same books.
            let same = runs[1..]
                .iter()
                .all(|r| same_postings(&runs[0].outputs, &r.outputs));
            disagree |= !same;
            agreement.push(format!(
                "{}, {} runs: {} postings",
                sys.name(),
                runs.len(),
                if same { "identical" } else { "DIFFERENT" }
            ));
        }
        let t = median_run(runs);
        dump(
            &env.opts
                .out
                .join(format!("{}.{}.postings.jsonl", env.run_id, sys.tag())),
            if sys == System::P { &[] } else { &t.outputs },
        )?;
        tps.push(t);
    }

    // Agreement of postings.
    let find = |s: System| tps.iter().find(|t| t.sys == s);
    if let (Some(e), Some(a)) = (find(System::Eos), find(System::Alos)) {
        let same = same_postings(&e.outputs, &a.outputs);
        agreement.push(format!(
            "meterline exactly-once vs at-least-once: {} ({} vs {} postings)",
            if same { "identical" } else { "DIFFERENT" },
            e.outputs.len(),
            a.outputs.len()
        ));
    }
    if let (Some(e), Some(k)) = (find(System::Eos), find(System::K)) {
        let pa = env
            .opts
            .out
            .join(format!("{}.eos.postings.jsonl", env.run_id));
        let pb = env
            .opts
            .out
            .join(format!("{}.k.postings.jsonl", env.run_id));
        let (ok, text) = compare_with_k(&env, &pa, &pb, &e.outputs, &k.outputs);
        disagree |= !ok;
        agreement.push(format!(
            "meterline vs K: {} ({} vs {} postings): {text}",
            if ok { "AGREE" } else { "DISAGREE" },
            e.outputs.len(),
            k.outputs.len()
        ));
    }
    if let Some(p) = find(System::P) {
        agreement.push(format!(
            "P: {} of {} input records out of hop {HOPS}",
            p.outputs.len(),
            events.len()
        ));
    }

    // Latency at 70% of each system's measured rate.
    let mut lats: Vec<(System, Latency)> = Vec::new();
    for t in &tps {
        let rate = t.eps() * env.opts.latency_fraction;
        match latency(&env, t.sys, rate, grace_ms) {
            Ok(l) => lats.push((t.sys, l)),
            Err(e) => eprintln!("e2e: latency run of {} failed: {e}", t.sys.name()),
        }
    }

    let rec = if env.opts.recovery_keys > 0 {
        match recovery(&env) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("e2e: recovery failed: {e}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };

    // The soak, at a fraction of the exactly-once rate.
    let soaked = match (env.opts.soak_mins > 0.0, find(System::Eos)) {
        (true, Some(e)) => {
            // The runs before wrote gigabytes (3 runs of 4 systems and the
            // latency runs): the soak needs that disk.
            if std::env::var_os("METERLINE_BENCH_KEEP").is_none() {
                cleanup(&env);
            }
            let rate = e.eps() * env.opts.soak_fraction;
            match soak::soak(&env, rate, env.opts.soak_mins) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("e2e: soak failed: {e}");
                    None
                }
            }
        }
        (true, None) => {
            eprintln!("e2e: --soak-mins needs the exactly-once system (--systems eos,...)");
            None
        }
        _ => None,
    };

    let mut report = render(
        &env,
        &events,
        &tps,
        &lats,
        &rec,
        &agreement,
        k_skip.as_deref(),
    );
    if let Some(s) = &soaked {
        report.push_str(&soak::render(s));
    }
    println!("{report}");
    let path = env.opts.out.join(format!("{}.md", env.run_id));
    let _ = std::fs::write(&path, &report);
    eprintln!("e2e: report written to {}", path.display());
    if std::env::var_os("METERLINE_BENCH_KEEP").is_none() {
        cleanup(&env);
    }
    if disagree {
        return Err("K and meterline postings disagree".into());
    }
    Ok(())
}

/// Deletes this run's topics and state directories (a run writes gigabytes:
/// repeated runs would fill the disk). Set METERLINE_BENCH_KEEP=1 to keep
/// them for inspection; the report, logs and postings dumps are always kept.
fn cleanup(env: &Env) {
    let prefix = format!("{}.", env.run_id);
    let deleted = (|| -> Result<usize, String> {
        let (admin, topics) = topics_with_prefix(&env.opts.bootstrap, &prefix)?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        for chunk in names.chunks(100) {
            rt.block_on(admin.delete_topics(chunk, &rdkafka::admin::AdminOptions::new()))
                .map_err(|e| e.to_string())?;
        }
        Ok(names.len())
    })();
    match deleted {
        Ok(n) => {
            eprintln!("e2e: deleted this run's {n} topics (METERLINE_BENCH_KEEP=1 keeps them)")
        }
        Err(e) => eprintln!("e2e: could not delete this run's topics: {e}"),
    }
    if let Ok(dir) = std::fs::read_dir(&env.opts.out) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("state-{prefix}")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn render(
    env: &Env,
    events: &[Event],
    tps: &[Throughput],
    lats: &[(System, Latency)],
    rec: &[Recovery],
    agreement: &[String],
    k_skip: Option<&str>,
) -> String {
    let mut s = String::new();
    let w = &mut s;
    let _ = writeln!(
        w,
        "## End-to-end benchmark {} ({})",
        env.run_id,
        Utc::now().format("%Y-%m-%d")
    );
    let _ = writeln!(w);
    let _ = writeln!(w, "Machine: {}", machine());
    if let Some(n) = env.broker_partitions {
        let _ = writeln!(w, "Broker: {n} partitions at the start of the run");
    }
    let _ = writeln!(
        w,
        "Input: {} events ({} seeded loadgen events + {} tail), 6 partitions, commit interval {COMMIT_INTERVAL_MS} ms",
        events.len(),
        events.len() - CUSTOMERS as usize,
        CUSTOMERS
    );
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "| system | events/s | elapsed s | outputs | latency rate ev/s | p50 ms | p99 ms | CPU s (all processes) | CPU µs / event | peak RSS MB (sum) | broker CPU s |"
    );
    let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in tps {
        let l = lats.iter().find(|(s, _)| *s == t.sys).map(|(_, l)| l);
        let cpu: f64 = t.procs.iter().map(|p| p.cpu_s).sum();
        let mem: f64 = t.procs.iter().map(|p| p.peak_mb).sum();
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:.2} | {} | {} | {} | {} | {:.1} | {:.0} | {:.0} | {} |",
            t.sys.name(),
            t.eps(),
            t.elapsed_s,
            t.outputs.len(),
            fmt(l.map(|l| l.rate)),
            fmt(l.and_then(|l| percentile(&l.samples, 0.5))),
            fmt(l.and_then(|l| percentile(&l.samples, 0.99))),
            cpu,
            cpu * 1e6 / t.events as f64,
            mem,
            t.broker_cpu_s.map_or("-".into(), |c| format!("{c:.1}")),
        );
    }
    let find = |s: System| tps.iter().find(|t| t.sys == s);
    let eps = |s: System| find(s).map(Throughput::eps);
    let met = |ok: bool| if ok { "met" } else { "not met" };
    let _ = writeln!(w);
    for t in tps.iter().filter(|t| t.runs_eps.len() > 1) {
        let (lo, hi) = (t.runs_eps[0], t.runs_eps[t.runs_eps.len() - 1]);
        let all: Vec<String> = t.runs_eps.iter().map(|e| format!("{e:.0}")).collect();
        let _ = writeln!(
            w,
            "- {}: median of {} runs; events/s {} (spread {:.0}% of the median)",
            t.sys.name(),
            t.runs_eps.len(),
            all.join(", "),
            100.0 * (hi - lo) / t.eps().max(1e-9)
        );
    }
    if let (Some(m), Some(p)) = (eps(System::Eos), eps(System::P)) {
        let r = m / p;
        let _ = writeln!(
            w,
            "- meterline/P = {r:.2} (target >= {TARGET_EOS_OVER_P}: {})",
            met(r >= TARGET_EOS_OVER_P)
        );
    }
    if let (Some(m), Some(p)) = (find(System::Eos), find(System::P)) {
        let r = m.cpu_us_per_event() / p.cpu_us_per_event().max(1e-9);
        let _ = writeln!(
            w,
            "- CPU per event, meterline/P = {r:.1} x (target <= {TARGET_CPU_OVER_P}: {})",
            met(r <= TARGET_CPU_OVER_P)
        );
    }
    if let (Some(m), Some(k)) = (eps(System::Eos), eps(System::K)) {
        let r = m / k;
        let _ = writeln!(
            w,
            "- meterline/K = {r:.2} (target >= {TARGET_EOS_OVER_K}: {})",
            met(r >= TARGET_EOS_OVER_K)
        );
    }
    let p99 = |s: System| {
        lats.iter()
            .find(|(x, _)| *x == s)
            .and_then(|(_, l)| percentile(&l.samples, 0.99))
    };
    if let (Some(m), Some(p)) = (p99(System::Eos), p99(System::P)) {
        let bound = 2.0 * COMMIT_INTERVAL_MS as f64 + p;
        let _ = writeln!(
            w,
            "- meterline p99 latency {m:.0} ms (target <= 2 x commit interval + P's p99 = {bound:.0} ms: {})",
            met(m <= bound)
        );
    }
    if let (Some(m), Some(a)) = (eps(System::Eos), eps(System::Alos)) {
        let _ = writeln!(w, "- exactly-once/at-least-once = {:.2}", m / a);
    }
    if let Some(k) = k_skip {
        let _ = writeln!(w, "- {k}");
    }
    for a in agreement {
        let _ = writeln!(w, "- {a}");
    }
    for (sys, l) in lats {
        let _ = writeln!(
            w,
            "- latency {}: {} events at {:.0}/s, {} samples, {} outputs without a trigger event",
            sys.name(),
            l.events,
            l.rate,
            l.samples.len(),
            l.unmatched
        );
    }
    for t in tps {
        if !t.note.is_empty() {
            let _ = writeln!(w, "- note {}: {}", t.sys.name(), t.note);
        }
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "Per process (throughput run; CPU at the last output):");
    let _ = writeln!(w);
    let _ = writeln!(
        w,
        "| system | process | CPU s | share | CPU µs per event | changelog records per event | bytes written per event: topics + changelogs | ms per commit: send changelogs + flush + commit + apply stores | peak RSS MB | startup s |"
    );
    let _ = writeln!(w, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for t in tps {
        let total: f64 = t.procs.iter().map(|p| p.cpu_s).sum::<f64>().max(1e-9);
        let per_event = |v: f64| v / t.events.max(1) as f64;
        for p in &t.procs {
            let _ = writeln!(
                w,
                "| {} | {} | {:.1} | {:.0}% | {:.1} | {} | {} | {} | {:.0} | {:.1} |",
                t.sys.name(),
                p.label,
                p.cpu_s,
                100.0 * p.cpu_s / total,
                per_event(p.cpu_s * 1e6),
                p.changelog_records
                    .map_or("-".into(), |c| format!("{:.2}", per_event(c))),
                p.bytes_written.map_or("-".into(), |(out, log)| format!(
                    "{:.0} + {:.0}",
                    per_event(out),
                    per_event(log)
                )),
                p.commit_phases
                    .filter(|(commits, _)| *commits > 0.0)
                    .map_or("-".into(), |(commits, s)| format!(
                        "{:.0} + {:.0} + {:.0} + {:.0}",
                        1e3 * s[0] / commits,
                        1e3 * s[1] / commits,
                        1e3 * s[2] / commits,
                        1e3 * s[3] / commits
                    )),
                p.peak_mb,
                t.startup_s
            );
        }
    }
    if !rec.is_empty() {
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "Recovery: SIGKILL of validate + dedupe (one process) while events flow, restart at once (dedupe's first commit):"
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| membership | store keys (RocksDB estimate) | dedupe state MB | per 1M keys written MB | SIGKILL -> first commit s | restart -> first commit s |"
        );
        let _ = writeln!(w, "|---|---:|---:|---:|---:|---:|");
        // Two dedupe keys per loaded event: (source, id) and its expiry entry.
        let written_m = (2 * env.opts.recovery_keys.div_ceil(2)) as f64 / 1e6;
        for r in rec {
            let f = |v: Option<f64>| v.map_or("none in 120 s".into(), |v| format!("{v:.2}"));
            let state = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
            let _ = writeln!(
                w,
                "| {} | {:.0} | {} | {} | {} | {} |",
                r.mode,
                r.keys,
                state(r.dedupe_state_mb),
                state(r.dedupe_state_mb.map(|m| m / written_m.max(1e-9))),
                f(r.kill_to_commit_s),
                f(r.spawn_to_commit_s)
            );
        }
    }
    s
}

use std::fmt::Write as _;

// ---------------------------------------------------------------------------
// P: one passthrough hop (a child process of the bench)

/// `--hop BOOTSTRAP FROM TO GROUP REPO`: read_committed consume -> produce
/// in transactions with meterline's client settings, offsets sent to the
/// transaction, a commit every 100 ms or 5,000 records; no work on records.
fn hop(args: &[String]) {
    let [bootstrap, from, to, group, repo] = args else {
        eprintln!("usage: --hop BOOTSTRAP FROM TO GROUP REPO");
        std::process::exit(2);
    };
    let config = config_for(Path::new(repo), bootstrap, "");
    let consumer: BaseConsumer<HopCtx> = kafka::stage_consumer_config(&config, group)
        .create_with_context(HopCtx)
        .expect("hop consumer");
    let producer: BaseProducer =
        kafka::transactional_producer_config(&config, &format!("{group}.0"))
            .create()
            .expect("hop producer");
    let timeout = Duration::from_secs(30);
    producer
        .init_transactions(timeout)
        .expect("init_transactions");
    consumer.subscribe(&[from.as_str()]).expect("subscribe");
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let mut open: Option<(Instant, usize)> = None;
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            if open.is_none() {
                producer.begin_transaction().expect("begin_transaction");
                open = Some((Instant::now(), 0));
            }
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(to).partition(m.partition());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            if let Some(v) = m.payload() {
                rec = rec.payload(v);
            }
            if let Some(t) = m.timestamp().to_millis() {
                rec = rec.timestamp(t);
            }
            if let Some(h) = m.headers() {
                rec = rec.headers(h.detach());
            }
            if let Err(e) = kafka::send_waiting(&producer, rec) {
                panic!("produce: {e}");
            }
            next.insert(m.partition(), m.offset() + 1);
            if let Some((_, n)) = &mut open {
                *n += 1;
            }
        }
        producer.poll(Duration::ZERO);
        if let Some((t, n)) = open {
            if n >= MAX_BATCH_RECORDS || t.elapsed() >= Duration::from_millis(COMMIT_INTERVAL_MS) {
                kafka::flush(&producer, timeout).expect("flush");
                let mut tpl = TopicPartitionList::new();
                for (p, o) in &next {
                    tpl.add_partition_offset(from, *p, Offset::Offset(*o))
                        .expect("offset");
                }
                let cgm = consumer.group_metadata().expect("group metadata");
                producer
                    .send_offsets_to_transaction(&tpl, &cgm, timeout)
                    .expect("send_offsets_to_transaction");
                producer
                    .commit_transaction(timeout)
                    .expect("commit_transaction");
                open = None;
            }
        }
    }
}

struct HopCtx;
impl ClientContext for HopCtx {}
impl ConsumerContext for HopCtx {}

// ---------------------------------------------------------------------------
// `cargo test --benches`: quick checks of the measurement code, no broker.

fn self_check() {
    soak::self_check();
    // Commit phases per stage, as /metrics renders them.
    let body = "meterline_transaction_commits_total{stage=\"rate\"} 4\n\
        meterline_transaction_commit_phase_seconds_total{phase=\"send_changelogs\",stage=\"rate\"} 0.04\n\
        meterline_transaction_commit_phase_seconds_total{phase=\"flush\",stage=\"rate\"} 0.2\n\
        meterline_transaction_commit_phase_seconds_total{phase=\"commit\",stage=\"rate\"} 0.08\n\
        meterline_transaction_commit_phase_seconds_total{phase=\"apply_stores\",stage=\"rate\"} 0.06\n";
    assert_eq!(commit_phases(body), (4.0, [0.04, 0.2, 0.08, 0.06]));
    // The trigger of a window: first event on the partition whose running
    // max event time reaches end + grace.
    let events: Vec<Event> = [(10, "a"), (30, "b"), (20, "a"), (40, "a")]
        .iter()
        .map(|(t, k)| Event {
            key: k.to_string(),
            value: String::new(),
            event_ms: Some(*t),
        })
        .collect();
    let produced = Produced {
        partitions: vec![0, 0, 0, 0],
        produced_ms: vec![100, 200, 300, 400],
    };
    let idx = TriggerIndex::new(&events, &produced);
    assert_eq!(idx.trigger("a", 25), Some(200));
    assert_eq!(idx.trigger("a", 31), Some(400));
    assert_eq!(idx.trigger("a", 41), None);
    assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
    // The median run is reported, with every run's rate for the spread.
    let run = |elapsed_s: f64, note: &str| Throughput {
        sys: System::Eos,
        elapsed_s,
        startup_s: 0.0,
        events: 100,
        outputs: Vec::new(),
        procs: Vec::new(),
        broker_cpu_s: None,
        note: note.into(),
        runs_eps: Vec::new(),
    };
    let m = median_run(vec![run(2.0, "b"), run(4.0, "c"), run(1.0, "a")]);
    assert_eq!(
        (m.note.as_str(), m.runs_eps.clone()),
        ("b", vec![25.0, 50.0, 100.0])
    );
    assert_eq!(median_run(vec![run(1.0, "a"), run(2.0, "b")]).note, "b");
    assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.99), Some(4.0));
    let p = br#"{"customer_id":"cust-0001","window":{"id":"2026-01-10","start":"2026-01-10T00:00:00Z","end":"2026-01-11T00:00:00Z"}}"#;
    let (c, due) = posting_due(p, 600_000).unwrap();
    assert_eq!(c, "cust-0001");
    assert_eq!(due, 1_768_089_600_000 + 600_000);
    // The scenario: deterministic, tail after the timeline, day windows before it.
    let end = Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap();
    let a = scenario(2_000, end, true);
    let b = scenario(2_000, end, true);
    assert_eq!(a.len(), 2_000 + CUSTOMERS as usize);
    assert!(a.iter().zip(&b).all(|(x, y)| x.value == y.value));
    assert!(a[..2_000]
        .iter()
        .filter_map(|e| e.event_ms)
        .all(|t| t <= end.timestamp_millis()));
    println!("e2e bench: self-check ok (run the benchmark with deploy/local/bench)");
}
