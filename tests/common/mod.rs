//! Shared test harness: a real broker (started by `deploy/local/test` or
//! `.ci/run`), one namespace per test so tests never see each other's topics,
//! and helpers to produce, read back and run the `meterline` binary.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// Partitions of every pipeline topic in tests (smaller than production's 6:
/// the broker holds many namespaces at once).
pub const TEST_PARTITIONS: i32 = 3;
/// How long a reader waits for a new topic to appear in the metadata.
pub const METADATA_WAIT_S: u64 = 15;
/// Every stage, in pipeline order (what `meterline run` runs by default).
pub fn all_stages() -> Vec<&'static str> {
    meterline::topology::STAGES.iter().map(|s| s.name).collect()
}
/// How long a test waits for the pipeline to deliver before failing.
pub const WAIT_TIMEOUT_MS: u64 = 120_000;
// (kept long: a loaded 2-core machine)

pub fn bootstrap() -> String {
    std::env::var("METERLINE_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

pub fn registry_url() -> Option<String> {
    std::env::var("METERLINE_TEST_REGISTRY")
        .ok()
        .filter(|s| !s.is_empty())
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `meterline` binary: $METERLINE_TEST_BIN when set (a copy of this
/// build's binary: the shared target directory's `debug/meterline` can be
/// replaced by another checkout's build while a test runs), else cargo's.
pub fn bin() -> PathBuf {
    std::env::var_os("METERLINE_TEST_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_meterline")))
}

/// A test's own world: namespace, config file, state dir.
pub struct World {
    pub ns: String,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl World {
    /// `extra` is appended to the generated config (TOML).
    pub fn new(name: &str, extra: &str) -> World {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let ns = format!("t.{name}.{}.", nanos % 1_000_000_000);
        let dir = tempfile::tempdir().unwrap();
        let topics = std::fs::read_to_string(repo().join("topology/topics.toml"))
            .unwrap()
            .replace("partitions = 6", &format!("partitions = {TEST_PARTITIONS}"));
        std::fs::write(dir.path().join("topics.toml"), topics).unwrap();
        let config_path = dir.path().join("meterline.toml");
        let w = World {
            ns,
            dir,
            config_path,
        };
        w.write_config(extra);
        w
    }

    pub fn write_config(&self, extra: &str) {
        let text = format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
[kafka.client]
"topic.metadata.refresh.interval.ms" = "1000"
[topology]
topics_file = "topics.toml"
meters_file = "{meters}"
schemas_dir = "{schemas}"
namespace = "{ns}"
[runtime]
state_dir = "state"
session_timeout_ms = 6000
transaction_timeout_ms = 10000
{http}
{extra}
"#,
            http = if extra.contains("[http]") {
                ""
            } else {
                "[http]\nlisten_addr = \"\""
            },
            bootstrap = bootstrap(),
            meters = repo().join("topology/meters.toml").display(),
            schemas = repo().join("schemas").display(),
            ns = self.ns,
        );
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn topic(&self, t: &str) -> String {
        format!("{}{}", self.ns, t)
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config")
            .arg(&self.config_path)
            .env("METERLINE_LOG", "warn");
        c
    }

    /// Runs the binary to completion.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    pub fn apply(&self) {
        let out = self.run(&["topology", "apply"]);
        assert!(
            out.status.success(),
            "apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `meterline run` for the given stages with an instance id.
    pub fn spawn_stage(&self, stages: &[&str], instance: &str) -> Stage {
        let mut c = self.cmd();
        c.arg("run");
        for s in stages {
            c.arg("--stage").arg(s);
        }
        self.spawn(c, instance)
    }

    /// Starts `meterline api` (the config's `[api]` on `port`) and waits
    /// until it answers /healthz.
    pub fn spawn_api(&self, port: u16) -> Stage {
        let mut c = self.cmd();
        c.arg("api");
        let api = self.spawn(c, "api");
        wait_until("the API answers /healthz", || {
            http_get(port, "/healthz").is_some_and(|(s, _)| s == 200)
        });
        api
    }

    /// Starts a long-running verb in the world's directory.
    fn spawn(&self, mut c: Command, instance: &str) -> Stage {
        c.env("METERLINE__RUNTIME__INSTANCE_ID", instance)
            .env("METERLINE_LOG", "warn")
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map(Stage)
            .unwrap()
    }

    /// `meterline refdata load` of a JSON-lines text; asserts it succeeded.
    pub fn load_refdata(&self, kind: &str, text: &str) {
        let path = self.dir.path().join(format!("{kind}.jsonl"));
        std::fs::write(&path, text).unwrap();
        let out = self.run(&[
            "refdata",
            "load",
            "--kind",
            kind,
            "--file",
            &path_str(&path),
        ]);
        assert!(
            out.status.success(),
            "refdata load {kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }
}

pub fn client_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap());
    c
}

pub fn producer() -> BaseProducer {
    client_config()
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// A record as produced or read back.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub timestamp_ms: Option<i64>,
}

impl Rec {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.value.as_deref().unwrap_or(b"null")).unwrap()
    }
}

/// A record to produce: key, value, headers.
pub type Record = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

/// Produces records and waits until all are acknowledged.
pub fn produce(topic: &str, records: &[Record]) {
    let p = producer();
    for (k, v, h) in records {
        let h: Vec<(String, Option<Vec<u8>>)> = h
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        let mut r: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(topic).headers(meterline::kafka::owned_headers(&h));
        if let Some(k) = k {
            r = r.key(k);
        }
        if let Some(v) = v {
            r = r.payload(v);
        }
        if let Err(e) = meterline::kafka::send_waiting(&p, r) {
            panic!("produce: {e}");
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// Longest a read of a topic to its end may take.
pub const READ_TIMEOUT_S: u64 = 60;
/// How long [`Tail::read_new`] waits for new records when the last call
/// left it at the end of every partition.
pub const TAIL_IDLE_POLL_MS: u64 = 500;

/// A [`Tail::read_new`] call takes a partition that delivered nothing for
/// this long as caught up, end reported or not: a read_committed reader
/// gets no end report while a transactional writer keeps a transaction
/// open, nor (seen in CI) past a partition's trailing aborted records.
pub const TAIL_QUIET_MS: u64 = 3_000;
/// Longest a [`Tail::read_new`] call reads; a writer that never pauses
/// leaves the rest to the next call (wait loops call again).
pub const TAIL_CALL_BUDGET_S: u64 = 20;

/// Reads a whole topic (every partition to its end) at an isolation level.
pub fn read_all(topic: &str, read_committed: bool) -> Vec<Rec> {
    let mut tail = Tail::new(topic, read_committed);
    let budget = Duration::from_secs(READ_TIMEOUT_S);
    match tail.read(budget, None) {
        Ok(out) => out,
        Err(out) => panic!("{}", tail.stuck(&out)),
    }
}

/// A reader that keeps its place in a topic: each [`Tail::read_new`]
/// returns only what was written since the last one, so a test that waits
/// on a topic growing by large records reads each record once.
pub struct Tail {
    topic: String,
    consumer: BaseConsumer,
    /// Partitions whose end the reader reached and has seen nothing past.
    at_end: BTreeMap<i32, bool>,
}

impl Tail {
    pub fn new(topic: &str, read_committed: bool) -> Self {
        let c: BaseConsumer = client_config()
            .set("group.id", "meterline-test-reader")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set(
                "isolation.level",
                if read_committed {
                    "read_committed"
                } else {
                    "read_uncommitted"
                },
            )
            .create()
            .unwrap();
        // A topic created a moment ago may not be in the metadata yet.
        let t0 = Instant::now();
        let parts = loop {
            let md = c
                .fetch_metadata(Some(topic), Duration::from_secs(10))
                .unwrap();
            let n = md.topics()[0].partitions().len() as i32;
            if n > 0 {
                break n;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(METADATA_WAIT_S),
                "topic {topic} does not exist"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let mut tpl = TopicPartitionList::new();
        for p in 0..parts {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        Tail {
            topic: topic.to_string(),
            consumer: c,
            at_end: (0..parts).map(|p| (p, false)).collect(),
        }
    }

    /// Every record written since the last call, up to the end of every
    /// partition. librdkafka reports an end once per arrival there, so a
    /// call that starts with every partition at its end polls for
    /// [`TAIL_IDLE_POLL_MS`] before it concludes nothing new came (a record
    /// that does come marks its partition open until its end again). A
    /// partition quiet for [`TAIL_QUIET_MS`] counts as caught up, and a
    /// call returns what it has after [`TAIL_CALL_BUDGET_S`].
    pub fn read_new(&mut self) -> Vec<Rec> {
        let budget = Duration::from_secs(TAIL_CALL_BUDGET_S);
        let quiet = Duration::from_millis(TAIL_QUIET_MS);
        self.read(budget, Some(quiet)).unwrap_or_else(|out| out)
    }

    /// Reads until every partition reported its end (or, with `quiet`,
    /// delivered nothing for that long): Ok, or Err with what it read when
    /// `budget` ran out first.
    fn read(&mut self, budget: Duration, quiet: Option<Duration>) -> Result<Vec<Rec>, Vec<Rec>> {
        let mut out: Vec<Rec> = Vec::new();
        let t0 = Instant::now();
        let mut last_record = t0;
        let idle = Duration::from_millis(if self.at_end.values().all(|e| *e) {
            TAIL_IDLE_POLL_MS
        } else {
            0
        });
        loop {
            let open = self.at_end.values().any(|e| !e);
            let caught_up = quiet.is_some_and(|q| last_record.elapsed() >= q);
            if (!open && t0.elapsed() >= idle) || (open && caught_up) {
                return Ok(out);
            }
            if t0.elapsed() >= budget {
                return Err(out);
            }
            match self.consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    self.at_end.insert(p, true);
                }
                // librdkafka reports a dropped connection and reconnects by
                // itself: keep reading (the loop is bounded by its timeout).
                Some(Err(e)) if transient(&e) => {}
                Some(Err(e)) => panic!("read {}: {e}", self.topic),
                Some(Ok(m)) => {
                    self.at_end.insert(m.partition(), false);
                    last_record = Instant::now();
                    out.push(Rec {
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(<[u8]>::to_vec),
                        value: m.payload().map(<[u8]>::to_vec),
                        headers: meterline::kafka::record_headers(&m).headers,
                        timestamp_ms: m.timestamp().to_millis(),
                    })
                }
            }
        }
    }

    /// Why a read did not reach the end: per open partition, the last
    /// offset read and the broker's watermarks.
    fn stuck(&self, out: &[Rec]) -> String {
        let open: Vec<String> = (self.at_end.iter().filter(|(_, e)| !**e))
            .map(|(p, _)| {
                let last = out
                    .iter()
                    .filter(|r| r.partition == *p)
                    .map(|r| r.offset)
                    .max();
                let wm = self
                    .consumer
                    .fetch_watermarks(&self.topic, *p, Duration::from_secs(5));
                format!("partition {p}: last offset read {last:?}, watermarks {wm:?}")
            })
            .collect();
        format!(
            "reading {} reached no end in {READ_TIMEOUT_S} s, after {} records: {open:?}",
            self.topic,
            out.len()
        )
    }
}

/// A client error librdkafka recovers from by itself (a connection to the
/// broker dropped and being re-established).
fn transient(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            rdkafka::types::RDKafkaErrorCode::AllBrokersDown
                | rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}

/// Waits until `f` (reading topics) says the expected state is reached.
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_millis(WAIT_TIMEOUT_MS),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Reads a metric value from Prometheus text.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (lhs, value) = l.rsplit_once(' ')?;
        let (metric, labelset) = match lhs.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (lhs, ""),
        };
        if metric != name {
            return None;
        }
        let have: BTreeMap<&str, &str> = labelset
            .split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
            value.parse().ok()
        } else {
            None
        }
    })
}

/// A running `meterline` process, killed when dropped (a failing test must
/// not leave stages running against the shared broker).
pub struct Stage(pub Child);

impl Drop for Stage {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            kill9(self);
        }
    }
}

pub fn kill9(stage: &mut Stage) {
    unsafe {
        libc_kill(stage.0.id() as i32, 9);
    }
    let _ = stage.0.wait();
}

/// SIGTERM, then the exit status (a clean stop exits 0).
pub fn terminate(stage: &mut Stage) -> std::process::ExitStatus {
    unsafe {
        libc_kill(stage.0.id() as i32, 15);
    }
    stage.0.wait().unwrap()
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A free TCP port on loopback (for a stage's /metrics).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET http://127.0.0.1:port/path, body as text (plain HTTP/1.0, no client crate needed).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    meterline::http::http_get(&format!("http://127.0.0.1:{port}"), path).ok()
}

/// A structured-mode CloudEvent.
pub fn cloudevent(
    source: &str,
    id: &str,
    ty: &str,
    subject: &str,
    time: &str,
    data: &str,
) -> String {
    format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"{source}","type":"{ty}","subject":"{subject}","time":"{time}","data":{data}}}"#
    )
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// The invoice stage caught up with post: every period close on
/// `finance.postings` has its invoice `<subscription>@<period>` out of
/// `draft` on `finance.invoices` (so the postings its approval made are
/// there too: they commit in the same transaction).
pub fn invoices_caught_up(w: &World) -> bool {
    let closes: std::collections::BTreeSet<String> = read_all(&w.topic("finance.postings"), true)
        .iter()
        .map(Rec::json)
        .filter(|p| p["posting_type"] == "control_total" && p["kind"] == "period_close")
        .map(|p| {
            format!(
                "{}@{}",
                p["subscription_id"].as_str().unwrap_or_default(),
                p["window"]["id"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let mut latest: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for r in read_all(&w.topic("finance.invoices"), true) {
        let v = r.json();
        let id = v["invoice_id"].as_str().unwrap_or_default().to_string();
        let version = v["version"].as_u64().unwrap_or_default();
        let status = v["status"].as_str().unwrap_or_default().to_string();
        if latest.get(&id).is_none_or(|(seen, _)| *seen < version) {
            latest.insert(id, (version, status));
        }
    }
    closes
        .iter()
        .all(|id| latest.get(id).is_some_and(|(_, status)| status != "draft"))
}

/// The PostgreSQL of the tests (`deploy/local/test` starts one and sets it).
pub fn postgres_url() -> String {
    std::env::var("METERLINE_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!("METERLINE_TEST_POSTGRES is not set: run deploy/local/postgres start and export METERLINE_TEST_POSTGRES=$(deploy/local/postgres url)")
    })
}

/// A client of the tests' PostgreSQL.
pub fn postgres_client() -> postgres::Client {
    postgres::Client::connect(&postgres_url(), postgres::NoTls).unwrap()
}

impl World {
    /// The ledger schema of this world's namespace.
    pub fn ledger_schema(&self) -> String {
        meterline::config::LedgerConfig::default().schema_for(&self.ns)
    }

    /// Starts `meterline ledger-sync` (the config must name the ledger).
    pub fn spawn_ledger_sync(&self, instance: &str) -> Stage {
        let mut c = self.cmd();
        c.arg("ledger-sync")
            .env("METERLINE_LEDGER_URL", postgres_url())
            // Beside stages of the same world: no second listener on their port.
            .env("METERLINE__HTTP__LISTEN_ADDR", "");
        self.spawn(c, instance)
    }
}

/// The GL accounts every test plan uses, as the JSON member of a plan line.
pub const GL_ACCOUNTS_JSON: &str =
    r#""gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200"}"#;

/// Every committed posting on the world's `finance.postings`, in order.
pub fn postings(w: &World) -> Vec<meterline::contracts::Posting> {
    read_all(&w.topic("finance.postings"), true)
        .into_iter()
        .map(|r| {
            meterline::contracts::Posting::from_json_slice(r.value.as_deref().unwrap()).unwrap()
        })
        .collect()
}

/// How many period closes (control totals of kind `period_close`) there are.
pub fn period_closes(ps: &[meterline::contracts::Posting]) -> usize {
    ps.iter()
        .filter(|p| {
            p.posting_type == meterline::contracts::PostingType::ControlTotal
                && p.kind == "period_close"
        })
        .count()
}

/// The signed change a journal entry makes to `account` (debit positive).
pub fn signed(p: &meterline::contracts::Posting, account: &str) -> rust_decimal::Decimal {
    use meterline::contracts::Side;
    p.lines
        .iter()
        .filter(|l| l.account == account)
        .map(|l| match l.side {
            Side::Debit => l.amount,
            Side::Credit => -l.amount,
        })
        .sum()
}

/// `ref.customers` lines: one active customer per id, named after it, in
/// legal entity `le-us`, ERP id `ERP-<id>`.
pub fn customer_lines(ids: &[&str]) -> String {
    ids.iter()
        .map(|c| {
            format!(
                r#"{{"id":"{c}","name":"{c}","legal_entity":"le-us","erp_customer_id":"ERP-{c}","status":"active"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
