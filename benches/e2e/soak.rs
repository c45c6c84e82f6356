//! `--soak-mins M`: does any stage process grow without bound? The
//! exactly-once pipeline runs at `--soak-fraction` (0.5) of the rate its
//! throughput run reached, for M minutes of wall time. The scenario's 72
//! hours of event time are spread evenly over the run, one event hour per
//! chunk in order, so day windows close, post and are released as in
//! production, and state that should expire does. The resident set (VmRSS)
//! of every stage process is sampled after each chunk; the report lists it
//! at a quarter, half, three quarters and the end of the run, the peak
//! (VmHWM), and each stage's state directory on disk at the end.
//!
//! Each process's RocksDB cache in use (`meterline_store_memory_bytes{kind=
//! "block_cache"}`, memtables included) is sampled with it: that memory is
//! bounded by `runtime.store_memory_mb` and fills as the stores are read.
//! So is its consumer's queue of input fetched ahead
//! (`meterline_consumer_queue_bytes`, bounded by librdkafka's
//! `queued.max.messages.kbytes`), which fills when a stage lags.
//! A process **grows** when its memory outside those two (RSS minus the
//! cache in use and the queue) at the end exceeds the same half way by more than
//! [`GROWTH_TOLERANCE_PCT`] percent and [`GROWTH_FLOOR_MB`] MB, and so does
//! its RSS (a cache that shrinks gives memory back to the allocator, which
//! keeps it: the outside then rises with RSS flat, and nothing grew): the first
//! half absorbs buffers filling (librdkafka's queues, the allocator's
//! pools), the second half must be flat.
//!
//! Where growth comes from, the report splits it by who holds the memory:
//! the C heap in use beyond the cache and the queue (RocksDB's and
//! librdkafka's other allocations, `meterline_native_heap_bytes{state=
//! "in_use"}`), the C heap glibc holds free (fragmentation,
//! `state="free"`), and the rest (Rust's heap under mimalloc, stacks). It
//! lists RocksDB's table readers too (`kind="table_readers"`), which grow
//! with the files on disk.

use std::fmt::Write as _;

use super::*;

/// One chunk per event hour of the scenario.
pub const SOAK_CHUNKS: u32 = SPREAD_HOURS;
/// Growth in the second half of the run tolerated, percent of the half-way RSS.
pub const GROWTH_TOLERANCE_PCT: f64 = 10.0;
/// ... and at least this much, in MB (allocator noise on small processes).
pub const GROWTH_FLOOR_MB: f64 = 16.0;
/// How long the outputs may stay still before the run counts as drained.
const DRAIN_QUIET_S: u64 = 8;
/// The soak stops producing when the disk holding the benchmark's output
/// has less free than this (the broker on the same disk stops at 0: a
/// 30-minute soak at 6,900 events/s wrote 21 GB of topics here).
pub const SOAK_MIN_FREE_DISK_MB: u64 = 6 * 1024;
/// Retention of the soak namespace's delete-policy topics (the pipeline's
/// topics, not its changelogs): uncompressed, the pipeline writes ~4 KB
/// per input event to its topics and ~3.4 KB to its changelogs (measured
/// on a 400,000-event run), tens of GB in 30 minutes at the broker's
/// 7-day default. Ten minutes is well beyond any stage's lag.
const SOAK_TOPIC_RETENTION_MS: u64 = 10 * 60 * 1000;
/// Segment roll of every soak topic, so retention and compaction can act
/// during the run (a log deletes or compacts closed segments only).
const SOAK_SEGMENT_MS: u64 = 60 * 1000;
/// The soak's processes compress what they produce (librdkafka's
/// `compression.type`): the changelogs of 30 minutes at half the rate
/// (lineage, kept events, dedupe entries: ~3.4 KB of JSON per input event
/// uncompressed) would not fit this disk. Set through the environment, as a
/// user would (`METERLINE_KAFKA__COMPRESSION_TYPE`).
const SOAK_COMPRESSION: &str = "lz4";
/// The tag of the soak's processes and state directory.
const SOAK_TAG: &str = ".soak";

pub struct Soak {
    pub rate: f64,
    pub mins: f64,
    pub events: u64,
    pub outputs: usize,
    rows: Vec<Row>,
    /// Why the run ended before its last chunk, if it did.
    pub stopped: Option<String>,
}

struct Row {
    label: String,
    rss_mb: Vec<f64>,
    /// The RocksDB cache in use at each sample (empty when not known).
    store_mb: Vec<f64>,
    /// The consumer's queue at each sample (empty when not known).
    queue_mb: Vec<f64>,
    /// What explains the rest (empty when not known): RocksDB's table
    /// readers, the C heap in use and the C heap freed but held.
    readers_mb: Vec<f64>,
    heap_used_mb: Vec<f64>,
    heap_free_mb: Vec<f64>,
    peak_mb: f64,
    state_mb: Option<f64>,
    /// CPU time of the process over the soak per event produced, µs
    /// (background threads included: compaction, librdkafka).
    cpu_us_per_event: Option<f64>,
}

/// The sample at `num / den` of a series (0 when empty).
fn sample_at(v: &[f64], num: usize, den: usize) -> f64 {
    let n = v.len();
    if n == 0 {
        return 0.0;
    }
    v[((n * num) / den).saturating_sub(1).min(n - 1)]
}

impl Row {
    /// RSS at `num / den` of the run.
    fn at(&self, num: usize, den: usize) -> f64 {
        sample_at(&self.rss_mb, num, den)
    }

    /// RSS outside the RocksDB cache and the consumer queue at `num / den`
    /// of the run.
    fn outside_at(&self, num: usize, den: usize) -> f64 {
        self.at(num, den)
            - sample_at(&self.store_mb, num, den)
            - sample_at(&self.queue_mb, num, den)
    }

    fn second_half_growth_mb(&self) -> f64 {
        self.at(1, 1) - self.at(1, 2)
    }

    fn second_half_outside_growth_mb(&self) -> f64 {
        self.outside_at(1, 1) - self.outside_at(1, 2)
    }

    /// The second-half growth of the memory outside the cache and the queue,
    /// split by who holds it: (C heap in use beyond the cache and the queue,
    /// which are C allocations too; C heap freed but held by glibc; the rest,
    /// Rust's mimalloc heap and anything unmeasured). None when not scraped.
    fn outside_growth_split_mb(&self) -> Option<(f64, f64, f64)> {
        if self.heap_used_mb.is_empty() || self.store_mb.is_empty() {
            return None;
        }
        let c_used = |n, d| {
            sample_at(&self.heap_used_mb, n, d)
                - sample_at(&self.store_mb, n, d)
                - sample_at(&self.queue_mb, n, d)
        };
        let used = c_used(1, 1) - c_used(1, 2);
        let free = sample_at(&self.heap_free_mb, 1, 1) - sample_at(&self.heap_free_mb, 1, 2);
        Some((
            used,
            free,
            self.second_half_outside_growth_mb() - used - free,
        ))
    }

    /// Both the resident set and the memory outside the bounded two rose:
    /// RSS rising with the cache filling is not growth, and neither is the
    /// outside rising while RSS stays (the cache shrank and the allocator
    /// kept its pages for what came next).
    fn grows(&self) -> bool {
        let beyond = |growth: f64, half: f64| {
            growth > GROWTH_FLOOR_MB && growth > half * GROWTH_TOLERANCE_PCT / 100.0
        };
        beyond(self.second_half_growth_mb(), self.at(1, 2))
            && beyond(self.second_half_outside_growth_mb(), self.outside_at(1, 2))
    }
}

/// One scrape of a process's memory gauges, MB.
struct Gauges {
    /// Bounded: the RocksDB cache in use and the consumer queue.
    cache: f64,
    queue: f64,
    /// Not bounded: RocksDB's table readers; the C heap in use and held free.
    readers: f64,
    heap_used: f64,
    heap_free: f64,
}

/// The memory gauges of a process serving /metrics on `port`.
fn gauges(port: Option<u16>) -> Option<Gauges> {
    let body = http_get(port?, "/metrics")?;
    let mb = |name: &str, labels: &str| metric_sum(&body, name, labels) / (1024.0 * 1024.0);
    Some(Gauges {
        cache: mb("meterline_store_memory_bytes", "kind=\"block_cache\""),
        queue: mb("meterline_consumer_queue_bytes", ""),
        readers: mb("meterline_store_memory_bytes", "kind=\"table_readers\""),
        heap_used: mb("meterline_native_heap_bytes", "state=\"in_use\""),
        heap_free: mb("meterline_native_heap_bytes", "state=\"free\""),
    })
}

/// Runs the soak; `rate` events per second for `mins` minutes.
pub fn soak(env: &Env, rate: f64, mins: f64) -> Result<Soak, String> {
    let ns = env.ns(System::Eos, "soak");
    let (input, output) = env.setup(System::Eos, &ns)?;
    let boot = &env.opts.bootstrap;
    let shortened = shorten_retention(boot, &ns)?;
    eprintln!(
        "e2e: soak: {shortened} topics of {ns} roll segments every {} s; delete-policy ones keep {} min",
        SOAK_SEGMENT_MS / 1000,
        SOAK_TOPIC_RETENTION_MS / 60_000
    );
    let tail = Tail::start(boot, &output)?;
    let launch = Launch {
        tag: SOAK_TAG,
        env: vec![("METERLINE_KAFKA__COMPRESSION_TYPE", SOAK_COMPRESSION)],
        serve_metrics: true,
    };
    let (mut procs, groups) = env.spawn(System::Eos, &ns, &launch)?;
    let (_, ready) = wait_ready(boot, &groups, &mut procs, Duration::from_secs(90));
    if !ready {
        std::thread::sleep(Duration::from_secs(10));
    }
    let tck = env.tck;
    let cpu_at_start: Vec<Option<f64>> =
        procs.iter().map(|p| cpu_secs(p.child.id(), tck)).collect();
    let chunk_secs = mins * 60.0 / f64::from(SOAK_CHUNKS);
    let per_chunk = ((rate * chunk_secs) as u64).max(1);
    let first = timeline_end() - chrono::Duration::hours(i64::from(SPREAD_HOURS));
    eprintln!(
        "e2e: soak: {mins} min at {rate:.0} events/s, {SOAK_CHUNKS} chunks of {per_chunk} events (one event hour each), producers compress with {SOAK_COMPRESSION}"
    );
    let mut rss: Vec<Vec<f64>> = vec![Vec::new(); procs.len()];
    let mut scraped: Vec<Vec<Gauges>> = procs.iter().map(|_| Vec::new()).collect();
    let mut events = 0u64;
    let mut stopped = None;
    for k in 0..SOAK_CHUNKS {
        if let Some(free) = free_disk_mb(&env.opts.out).filter(|f| *f < SOAK_MIN_FREE_DISK_MB) {
            stopped = Some(format!(
                "stopped after {k} of {SOAK_CHUNKS} chunks: {free} MB free on the disk, under {SOAK_MIN_FREE_DISK_MB}"
            ));
            eprintln!("e2e: soak: {}", stopped.as_deref().unwrap_or_default());
            break;
        }
        let end = first + chrono::Duration::hours(i64::from(k) + 1);
        let chunk = soak_chunk(k, per_chunk, end);
        produce(boot, &input, &chunk, rate)?;
        events += chunk.len() as u64;
        for (i, p) in procs.iter().enumerate() {
            rss[i].push(mb(status_kb(p.child.id(), "VmRSS")));
            scraped[i].extend(gauges(p.metrics_port));
        }
        if k % 8 == 7 {
            let total: f64 = rss.iter().filter_map(|r| r.last()).sum();
            eprintln!(
                "e2e: soak: chunk {}/{SOAK_CHUNKS}, {events} events, {} postings, RSS {total:.0} MB (all stages)",
                k + 1,
                tail.count()
            );
        }
    }
    drain(&tail, Duration::from_secs(DRAIN_QUIET_S));
    let state = env.opts.out.join(format!("state-{ns}{SOAK_TAG}"));
    let rows: Vec<Row> = procs
        .iter()
        .zip(rss.into_iter().zip(scraped).zip(cpu_at_start))
        .map(|(p, ((rss_mb, scraped), cpu_start))| {
            let cpu = cpu_secs(p.child.id(), tck)
                .zip(cpu_start)
                .map(|(e, s)| e - s);
            // A series with a gap (a scrape failed) would misalign: drop it.
            let series = |f: fn(&Gauges) -> f64| {
                if scraped.len() == rss_mb.len() {
                    scraped.iter().map(f).collect()
                } else {
                    Vec::new()
                }
            };
            Row {
                state_mb: stage_of(&p.label).and_then(|s| dir_mb(&state.join(format!("{ns}{s}")))),
                peak_mb: mb(status_kb(p.child.id(), "VmHWM")),
                label: p.label.clone(),
                store_mb: series(|g| g.cache),
                queue_mb: series(|g| g.queue),
                readers_mb: series(|g| g.readers),
                heap_used_mb: series(|g| g.heap_used),
                heap_free_mb: series(|g| g.heap_free),
                cpu_us_per_event: cpu.map(|c| c * 1e6 / events.max(1) as f64),
                rss_mb,
            }
        })
        .collect();
    stop_all(&mut procs);
    let outputs = tail.finish().len();
    Ok(Soak {
        rate,
        mins,
        events,
        outputs,
        rows,
        stopped,
    })
}

/// Gives every topic of the namespace [`SOAK_SEGMENT_MS`] segments, and its
/// delete-policy topics [`SOAK_TOPIC_RETENTION_MS`] retention, keeping the
/// configs `meterline topology apply` set (AlterConfigs replaces a topic's
/// dynamic configs whole). Returns how many topics it changed.
fn shorten_retention(boot: &str, ns: &str) -> Result<usize, String> {
    use rdkafka::admin::{AdminOptions, AlterConfig, ConfigSource, ResourceSpecifier};
    let (admin, topics) = topics_with_prefix(boot, ns)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let specs: Vec<ResourceSpecifier> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let described = rt
        .block_on(admin.describe_configs(&specs, &AdminOptions::new()))
        .map_err(|e| e.to_string())?;
    let segment_ms = SOAK_SEGMENT_MS.to_string();
    let retention_ms = SOAK_TOPIC_RETENTION_MS.to_string();
    let mut kept: Vec<Vec<(String, String)>> = Vec::new();
    for (topic, d) in topics.iter().zip(described) {
        let d = d.map_err(|e| format!("describing {topic}: {e}"))?;
        let mut configs: Vec<(String, String)> = d
            .entries
            .into_iter()
            .filter(|e| e.source == ConfigSource::DynamicTopic)
            .filter_map(|e| Some((e.name, e.value?)))
            .filter(|(k, _)| k != "segment.ms" && k != "retention.ms")
            .collect();
        configs.push(("segment.ms".into(), segment_ms.clone()));
        if configs
            .iter()
            .any(|(k, v)| k == "cleanup.policy" && v == "delete")
        {
            configs.push(("retention.ms".into(), retention_ms.clone()));
        }
        kept.push(configs);
    }
    let alters: Vec<AlterConfig> = topics
        .iter()
        .zip(&kept)
        .map(|(t, configs)| {
            configs.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(t)),
                |a, (k, v)| a.set(k, v),
            )
        })
        .collect();
    let results = rt
        .block_on(admin.alter_configs(&alters, &AdminOptions::new()))
        .map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|(spec, code)| format!("altering {spec:?}: {code}"))?;
    }
    Ok(topics.len())
}

/// Free space of the filesystem holding `path`, in MB (`df -Pk`).
fn free_disk_mb(path: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(path).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let kb: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// The events of event hour `k`: in order within the hour, ids of their
/// own (the generator's seed is per chunk), 2% duplicates, 1% malformed.
fn soak_chunk(k: u32, n: u64, end: DateTime<Utc>) -> Vec<Event> {
    let types: Vec<String> = TYPES.iter().map(|s| s.to_string()).collect();
    let mut g = Generator::new(SEED + 100 + u64::from(k), CUSTOMERS, 0.02, 0.01, end)
        .with_spread_hours(1)
        .with_timeline(n, 0.0)
        .with_types(&types)
        .expect("scenario types");
    (0..n).map(|_| next_event(&mut g)).collect()
}

fn mb(kb: Option<u64>) -> f64 {
    kb.unwrap_or(0) as f64 / 1024.0
}

/// "meterline rate" -> "rate".
fn stage_of(label: &str) -> Option<&str> {
    label.strip_prefix("meterline ")
}

/// Bytes under `dir`, in MB (None when it does not exist).
pub fn dir_mb(dir: &Path) -> Option<f64> {
    fn walk(d: &Path) -> u64 {
        let Ok(entries) = std::fs::read_dir(d) else {
            return 0;
        };
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => walk(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    }
    dir.exists().then(|| walk(dir) as f64 / (1024.0 * 1024.0))
}

/// The report's soak section.
pub fn render(s: &Soak) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "\n## Soak: {} min at {:.0} events/s (exactly-once), {} events, {} postings\n",
        s.mins, s.rate, s.events, s.outputs
    );
    let _ = writeln!(
        w,
        "Producers compress with {SOAK_COMPRESSION}; the namespace's topics roll segments every {} s, its delete-policy topics keep {} min; stores share `runtime.store_memory_mb` per process.\n",
        SOAK_SEGMENT_MS / 1000,
        SOAK_TOPIC_RETENTION_MS / 60_000
    );
    if let Some(why) = &s.stopped {
        let _ = writeln!(w, "**Incomplete**: {why}.\n");
    }
    let _ = writeln!(
        w,
        "| process | RSS MB at 1/4 | 1/2 | 3/4 | end | end - 1/2 | RocksDB cache MB at end | consumer queue MB at end | outside both: end - 1/2 | of which C heap in use | C heap held free | the rest (Rust) | RocksDB table readers MB at end | peak RSS MB | state on disk MB | CPU µs per event | verdict |"
    );
    let _ = writeln!(
        w,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    for r in &s.rows {
        let last = |v: &[f64]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                format!("{:.0}", sample_at(v, 1, 1))
            }
        };
        let split = r
            .outside_growth_split_mb()
            .map_or("- | - | -".into(), |(u, f, rest)| {
                format!("{u:+.0} | {f:+.0} | {rest:+.0}")
            });
        let _ = writeln!(
            w,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:+.0} | {} | {} | {:+.0} | {split} | {} | {:.0} | {} | {} | {} |",
            r.label,
            r.at(1, 4),
            r.at(1, 2),
            r.at(3, 4),
            r.at(1, 1),
            r.second_half_growth_mb(),
            last(&r.store_mb),
            last(&r.queue_mb),
            r.second_half_outside_growth_mb(),
            last(&r.readers_mb),
            r.peak_mb,
            r.state_mb.map_or("-".into(), |m| format!("{m:.0}")),
            r.cpu_us_per_event.map_or("-".into(), |c| format!("{c:.1}")),
            if r.grows() { "GROWS" } else { "flat" }
        );
    }
    let growing: Vec<&str> = s
        .rows
        .iter()
        .filter(|r| r.grows())
        .map(|r| r.label.as_str())
        .collect();
    let _ = writeln!(
        w,
        "\n{} (a process grows when its RSS, and its memory outside the RocksDB cache, bounded by runtime.store_memory_mb, and its consumer queue, bounded by queued.max.messages.kbytes, both rose in the second half by more than {GROWTH_TOLERANCE_PCT}% and {GROWTH_FLOOR_MB} MB)",
        if growing.is_empty() {
            "No process grew in the second half".to_string()
        } else {
            format!("GROWING: {}", growing.join(", "))
        }
    );
    out
}

/// What the self-check asserts of the verdict.
pub fn self_check() {
    let row = |rss_mb: Vec<f64>| Row {
        label: "x".into(),
        rss_mb,
        store_mb: Vec::new(),
        queue_mb: Vec::new(),
        readers_mb: Vec::new(),
        heap_used_mb: Vec::new(),
        heap_free_mb: Vec::new(),
        peak_mb: 0.0,
        state_mb: None,
        cpu_us_per_event: None,
    };
    let flat = row(vec![100.0, 300.0, 320.0, 325.0]);
    assert_eq!(flat.at(1, 2), 300.0);
    assert_eq!(flat.at(1, 1), 325.0);
    assert!(!flat.grows(), "+25 MB on 300 is under 10%");
    assert!(
        row(vec![100.0, 180.0, 200.0, 205.0]).grows(),
        "+25 MB on 180 is not"
    );
    assert!(row(vec![100.0, 150.0, 200.0, 250.0]).grows());
    assert!(
        !row(vec![10.0, 20.0, 25.0, 30.0]).grows(),
        "under the 16 MB floor"
    );
    assert!(!row(vec![]).grows());
    // The RocksDB cache filling to its bound is not growth; the rest is.
    let mut cache_fills = row(vec![100.0, 180.0, 230.0, 260.0]);
    cache_fills.store_mb = vec![40.0, 110.0, 170.0, 190.0];
    assert!(!cache_fills.grows(), "outside the cache: 70 -> 70");
    let mut leaks = row(vec![100.0, 180.0, 230.0, 260.0]);
    leaks.store_mb = vec![40.0, 110.0, 110.0, 110.0];
    assert!(leaks.grows(), "outside the cache: 70 -> 150");
    // The cache shrinking leaves RSS where it was: the outside "grows" by
    // what the cache gave back, the process does not.
    let mut shrinks = row(vec![330.0, 387.0, 389.0, 384.0]);
    shrinks.store_mb = vec![200.0, 314.0, 200.0, 143.0];
    assert!(shrinks.second_half_outside_growth_mb() > 100.0);
    assert!(!shrinks.grows(), "RSS fell by 3 MB");
    // Its growth split: the C heap in use rose 30 beyond the cache, glibc
    // holds 20 more free, the remaining 30 is Rust's.
    leaks.queue_mb = vec![0.0; 4];
    leaks.heap_used_mb = vec![60.0, 150.0, 170.0, 180.0];
    leaks.heap_free_mb = vec![5.0, 10.0, 20.0, 30.0];
    assert_eq!(leaks.outside_growth_split_mb(), Some((30.0, 20.0, 30.0)));
    assert!(free_disk_mb(Path::new("/")).is_some(), "df -Pk answers");
    let chunk = soak_chunk(3, 500, Utc.with_ymd_and_hms(2026, 1, 10, 4, 0, 0).unwrap());
    assert_eq!(chunk.len(), 500);
    let hour_start = Utc
        .with_ymd_and_hms(2026, 1, 10, 3, 0, 0)
        .unwrap()
        .timestamp_millis();
    // Within its hour, but for the generator's jitter (up to a minute back).
    assert!(chunk
        .iter()
        .filter_map(|e| e.event_ms)
        .all(|t| t >= hour_start - 60_000 && t <= hour_start + 3_600_000));
}
