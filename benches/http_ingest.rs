//! HTTP ingestion benchmark (issue 14): the same seeded events submitted
//!
//! * K (the baseline): straight to Kafka, by N client threads sharing one
//!   idempotent producer (acks=all, the API's settings), each sending a
//!   batch and waiting for every acknowledgement before the next;
//! * H: through `meterline api` (`POST /api/v1/events`, one keep-alive
//!   connection per client), each request a batch, answered 204 once the
//!   broker acknowledged it;
//!
//! in the same run, against the local broker. Reports events/s (and the
//! ratio H/K), p50/p99 latency of a batch's acknowledgement and the API
//! process's CPU seconds. Run with `deploy/local/bench-http`, or
//!
//!     cargo bench --bench http_ingest -- [--events N] [--clients C] [--batch B]
//!
//! `cargo test --benches` runs only the self-checks (no broker).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meterline::loadgen::Generator;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

const SEED: u64 = 7;
const CUSTOMERS: u32 = 100;
const DEFAULT_EVENTS: usize = 200_000;
const DEFAULT_CLIENTS: usize = 4;
const DEFAULT_BATCH: usize = 100;
const ACK_TIMEOUT_MS: u64 = 30_000;
const READY_TIMEOUT_MS: u64 = 60_000;
const TOKEN: &str = "mtl_bench_http";
/// Batches each path sends before it is timed (connections, producer id,
/// partition leaders, allocator), counted in its topic but not in the table.
const WARMUP_BATCHES: usize = 20;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        self_check();
        return;
    }
    let opts = Opts::parse(&args);
    if let Err(e) = run(&opts) {
        eprintln!("http_ingest bench: error: {e}");
        std::process::exit(2);
    }
}

#[derive(Debug, Clone)]
struct Opts {
    bootstrap: String,
    events: usize,
    clients: usize,
    batch: usize,
    repo: PathBuf,
}

impl Opts {
    fn parse(args: &[String]) -> Opts {
        let value = |name: &str, default: usize| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        Opts {
            bootstrap: std::env::var("METERLINE_TEST_BOOTSTRAP")
                .unwrap_or_else(|_| "127.0.0.1:9092".into()),
            events: value("--events", DEFAULT_EVENTS),
            clients: value("--clients", DEFAULT_CLIENTS).max(1),
            batch: value("--batch", DEFAULT_BATCH).max(1),
            repo: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
        }
    }
}

/// The seeded events, as (subject, structured-mode JSON).
fn events(n: usize) -> Vec<(String, String)> {
    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    let mut g = Generator::new(SEED, CUSTOMERS, 0.0, 0.0, start)
        .with_types(&["llm.tokens".to_string()])
        .unwrap_or_else(|e| panic!("{e}"))
        .with_timeline(n as u64, 0.0)
        .with_spread_hours(1);
    (0..n)
        .map(|_| {
            let r = g.next_record();
            (r.key, r.value)
        })
        .collect()
}

struct Measured {
    seconds: f64,
    latencies_ms: Vec<f64>,
    cpu_s: Option<f64>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Splits the batches over the clients, runs `send` for each client's
/// share on its own thread, and times the whole.
fn drive<F>(
    batches: Vec<Vec<(String, String)>>,
    clients: usize,
    send: F,
) -> Result<Measured, String>
where
    F: Fn(usize, &[Vec<(String, String)>]) -> Result<Vec<f64>, String> + Send + Sync + 'static,
{
    let send = Arc::new(send);
    let mut shares: Vec<Vec<Vec<(String, String)>>> = vec![Vec::new(); clients];
    for (i, b) in batches.into_iter().enumerate() {
        shares[i % clients].push(b);
    }
    let t0 = Instant::now();
    let handles: Vec<_> = shares
        .into_iter()
        .enumerate()
        .map(|(c, share)| {
            let send = send.clone();
            std::thread::spawn(move || send(c, &share))
        })
        .collect();
    let mut latencies_ms = Vec::new();
    for h in handles {
        latencies_ms.extend(h.join().map_err(|_| "a client panicked".to_string())??);
    }
    let seconds = t0.elapsed().as_secs_f64();
    latencies_ms.sort_by(f64::total_cmp);
    Ok(Measured {
        seconds,
        latencies_ms,
        cpu_s: None,
    })
}

fn producer(bootstrap: &str) -> Result<FutureProducer, String> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", ACK_TIMEOUT_MS.to_string())
        .create()
        .map_err(|e| e.to_string())
}

/// K: each client sends a batch straight to Kafka and waits for its acks.
fn kafka_direct(
    opts: &Opts,
    producer: &Arc<FutureProducer>,
    topic: &str,
    batches: Vec<Vec<(String, String)>>,
) -> Result<Measured, String> {
    let producer = producer.clone();
    let topic = topic.to_string();
    drive(batches, opts.clients, move |_, share| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let mut lat = Vec::with_capacity(share.len());
        for batch in share {
            let t = Instant::now();
            let mut pending = Vec::with_capacity(batch.len());
            for (key, value) in batch {
                let r = FutureRecord::to(&topic)
                    .key(key.as_bytes())
                    .payload(value.as_bytes());
                pending.push(producer.send_result(r).map_err(|(e, _)| e.to_string())?);
            }
            rt.block_on(async {
                for f in pending {
                    f.await
                        .map_err(|_| "canceled".to_string())?
                        .map_err(|(e, _)| e.to_string())?;
                }
                Ok::<(), String>(())
            })?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(lat)
    })
}

/// One HTTP/1.1 keep-alive connection of a client.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Result<Conn, String> {
        let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let writer = s.try_clone().map_err(|e| e.to_string())?;
        Ok(Conn {
            reader: BufReader::new(s),
            writer,
        })
    }

    /// POSTs `body`; the status code.
    fn post(&mut self, body: &str) -> Result<u16, String> {
        write!(
            self.writer,
            "POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/cloudevents-batch+json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let (status, length) = read_head(&mut self.reader)?;
        let mut rest = vec![0; length];
        self.reader
            .read_exact(&mut rest)
            .map_err(|e| e.to_string())?;
        Ok(status)
    }
}

/// Status and Content-Length of a response head.
fn read_head(r: &mut impl BufRead) -> Result<(u16, usize), String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
    let mut length = 0;
    loop {
        line.clear();
        r.read_line(&mut line).map_err(|e| e.to_string())?;
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, length));
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().map_err(|_| format!("bad length {v:?}"))?;
            }
        }
    }
}

fn batch_body(batch: &[(String, String)]) -> String {
    let values: Vec<&str> = batch.iter().map(|(_, v)| v.as_str()).collect();
    format!("[{}]", values.join(","))
}

/// H: each client POSTs its batches on its own connection.
fn http(opts: &Opts, port: u16, batches: Vec<Vec<(String, String)>>) -> Result<Measured, String> {
    let _ = opts;
    drive(batches, opts.clients, move |_, share| {
        let mut conn = Conn::open(port)?;
        let mut lat = Vec::with_capacity(share.len());
        for batch in share {
            let body = batch_body(batch);
            let t = Instant::now();
            let status = conn.post(&body)?;
            if status != 204 {
                return Err(format!("the API answered {status}"));
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(lat)
    })
}

fn write_config(
    opts: &Opts,
    dir: &std::path::Path,
    ns: &str,
    port: u16,
) -> Result<PathBuf, String> {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()));
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\n[topology]\ntopics_file = \"{}\"\nmeters_file = \"{}\"\nschemas_dir = \"{}\"\nnamespace = \"{ns}\"\n[http]\nlisten_addr = \"\"\n[api]\nlisten_addr = \"127.0.0.1:{port}\"\n[[api.keys]]\nname = \"bench\"\nsha256_hex = \"{hash}\"\nscopes = [\"ingest\"]\n",
        opts.bootstrap,
        opts.repo.join("topology/topics.toml").display(),
        opts.repo.join("topology/meters.toml").display(),
        opts.repo.join("schemas").display(),
    );
    let path = dir.join(format!("{}meterline.toml", ns));
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path)
}

fn meterline(config: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meterline"));
    c.arg("--config")
        .arg(config)
        .args(args)
        .env("METERLINE_LOG", "warn");
    c
}

fn apply(config: &std::path::Path) -> Result<(), String> {
    let out = meterline(config, &["topology", "apply"])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "topology apply: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn wait_ready(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
    while Instant::now() < deadline {
        if meterline::http::http_get(&format!("http://127.0.0.1:{port}"), "/healthz")
            .is_ok_and(|(s, _)| s == 200)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("the API did not start".into())
}

/// Records in `topic` (sum of high watermarks: its producers are not transactional).
fn count(bootstrap: &str, topic: &str) -> Result<i64, String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| e.to_string())?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let mut total = 0;
    for t in md.topics() {
        for p in t.partitions() {
            let (lo, hi) = c
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            total += hi - lo;
        }
    }
    Ok(total)
}

struct ApiProc(Child);

impl Drop for ApiProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(opts: &Opts) -> Result<(), String> {
    let run_id = format!("bench.http.{}.", chrono::Utc::now().timestamp());
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let k_config = write_config(opts, dir.path(), &format!("{run_id}k."), port)?;
    let h_config = write_config(opts, dir.path(), &format!("{run_id}h."), port)?;
    apply(&k_config)?;
    apply(&h_config)?;
    let all = events(opts.events);
    let batches: Vec<Vec<(String, String)>> = all.chunks(opts.batch).map(<[_]>::to_vec).collect();
    eprintln!(
        "http_ingest: {} events, batches of {}, {} clients",
        opts.events, opts.batch, opts.clients
    );

    let warmup: Vec<Vec<(String, String)>> = batches.iter().take(WARMUP_BATCHES).cloned().collect();
    let warmup_events: usize = warmup.iter().map(Vec::len).sum();
    let k_topic = format!("{run_id}k.usage.events");
    // One producer for K's warm-up and runs, as the API keeps one.
    let producer = Arc::new(producer(&opts.bootstrap)?);
    kafka_direct(opts, &producer, &k_topic, warmup.clone())?;
    let k = kafka_direct(opts, &producer, &k_topic, batches.clone())?;

    let api = ApiProc(
        meterline(&h_config, &["api"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    wait_ready(port)?;
    http(opts, port, warmup)?;
    let cpu0 = cpu_secs(api.0.id());
    let batches_again = batches.clone();
    let mut h = http(opts, port, batches)?;
    h.cpu_s = cpu_secs(api.0.id()).zip(cpu0).map(|(b, a)| b - a);
    drop(api);
    // K again, after H: the table shows both, so an order effect (a broker
    // still settling the new topics) is visible instead of hidden.
    let k_again = kafka_direct(opts, &producer, &k_topic, batches_again)?;

    let h_topic = format!("{run_id}h.usage.events");
    let (k_n, h_n) = (
        count(&opts.bootstrap, &k_topic)?,
        count(&opts.bootstrap, &h_topic)?,
    );
    let expected = (opts.events + warmup_events) as i64;
    if k_n != 2 * opts.events as i64 + warmup_events as i64 || h_n != expected {
        return Err(format!(
            "records landed: K {k_n}, H {h_n}, expected {expected} each (with the warm-up)"
        ));
    }
    print!(
        "{}",
        render(
            opts,
            &[
                ("K: straight to Kafka", &k),
                ("H: meterline api", &h),
                ("K again, after H", &k_again)
            ]
        )
    );
    Ok(())
}

/// The table; ratios are to the faster K run (the conservative baseline).
fn render(opts: &Opts, rows: &[(&str, &Measured)]) -> String {
    let rate = |m: &Measured| opts.events as f64 / m.seconds;
    let k_best = rows
        .iter()
        .filter(|(name, _)| name.starts_with('K'))
        .map(|(_, m)| rate(m))
        .fold(0.0, f64::max);
    let mut out = format!(
        "\n{} events, batches of {}, {} clients; every event counted in its topic\n\n",
        opts.events, opts.batch, opts.clients
    );
    out.push_str("| path | events/s | vs faster K | batch ack p50 ms | p99 ms | API CPU s |\n|---|---|---|---|---|---|\n");
    for (name, m) in rows {
        out.push_str(&format!(
            "| {name} | {:.0} | {:.2} | {:.1} | {:.1} | {} |\n",
            rate(m),
            rate(m) / k_best,
            percentile(&m.latencies_ms, 0.5),
            percentile(&m.latencies_ms, 0.99),
            m.cpu_s
                .map(|c| format!("{c:.1}"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    out
}

fn self_check() {
    let sorted = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(percentile(&sorted, 0.5), 2.0);
    assert_eq!(percentile(&sorted, 0.99), 4.0);
    let mut r = BufReader::new(&b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n"[..]);
    assert_eq!(read_head(&mut r).unwrap(), (204, 0));
    let body = batch_body(&[("a".into(), "{\"x\":1}".into()), ("b".into(), "{}".into())]);
    assert_eq!(body, "[{\"x\":1},{}]");
    let ev = events(3);
    assert_eq!(ev.len(), 3);
    assert!(
        ev.iter().all(|(k, v)| v.contains(k.as_str())),
        "keyed by subject"
    );
    println!("http_ingest self-check: ok");
}
