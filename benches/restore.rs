//! How long a store takes to restore from its changelog, against the real
//! broker: 1,000,000 keys written to a changelog partition in transactions
//! (as the runtime writes them), then restored into a fresh RocksDB store.
//! The baseline in the same run is a plain read_committed read of the same
//! partition (no RocksDB), so the ratio says what the store costs.
//!
//!     cargo bench --bench restore            # needs a broker on 127.0.0.1:9092
//!     RESTORE_KEYS=200000 cargo bench --bench restore

use std::time::{Duration, Instant};

use meterline::config::Config;
use meterline::metrics::StageMetrics;
use meterline::store::rocks::{RocksBackend, StoreMemory, DEFAULT_STORE_MEMORY_MB};
use meterline::store::PartitionStores;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const DEFAULT_KEYS: u64 = 1_000_000;
const KEYS_PER_TRANSACTION: u64 = 10_000;

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: only run for real under bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let bootstrap =
        std::env::var("METERLINE_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let keys: u64 = std::env::var("RESTORE_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_KEYS);
    let ns = format!("bench.restore.{}.", std::process::id());
    let topic = format!("{ns}changelog");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("topology")).unwrap();
    std::fs::write(dir.path().join("topology/meters.toml"), "").unwrap();
    let config = Config::from_parts(
        &format!(
            "[kafka]\nbootstrap_servers = \"{bootstrap}\"\n[topology]\nnamespace = \"{ns}\"\n"
        ),
        "bench",
        &[],
        dir.path().to_path_buf(),
    )
    .unwrap();

    let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(
        admin.create_topics(
            &[
                rdkafka::admin::NewTopic::new(
                    &topic,
                    1,
                    rdkafka::admin::TopicReplication::Fixed(1),
                )
                .set("cleanup.policy", "compact"),
            ],
            &rdkafka::admin::AdminOptions::new(),
        ),
    )
    .unwrap();

    eprintln!(
        "restore bench: writing {keys} keys to {topic} in transactions of {KEYS_PER_TRANSACTION}"
    );
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", format!("{ns}writer"))
        .set("linger.ms", "20")
        .create()
        .unwrap();
    p.init_transactions(Duration::from_secs(30)).unwrap();
    let t0 = Instant::now();
    for chunk in 0..keys.div_ceil(KEYS_PER_TRANSACTION) {
        p.begin_transaction().unwrap();
        for i in chunk * KEYS_PER_TRANSACTION..((chunk + 1) * KEYS_PER_TRANSACTION).min(keys) {
            let k = format!("E\0\0\0\x0bsource-{:04}\0\0\0\x0cevt-{i:08}", i % 1000);
            let v = (i as i64).to_be_bytes();
            let r = BaseRecord::<[u8], [u8]>::to(&topic)
                .partition(0)
                .key(k.as_bytes())
                .payload(&v);
            if let Err(e) = meterline::kafka::send_waiting(&p, r) {
                panic!("{e}");
            }
        }
        p.commit_transaction(Duration::from_secs(60)).unwrap();
    }
    eprintln!(
        "restore bench: written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );

    // Baseline: read the partition to its end, no store.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{ns}baseline"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let t0 = Instant::now();
    let mut n = 0u64;
    loop {
        match c.poll(Duration::from_millis(500)) {
            Some(Ok(_)) => n += 1,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => panic!("{e}"),
            None => {}
        }
    }
    let baseline = t0.elapsed();
    assert_eq!(n, keys);

    // The real restore into a fresh RocksDB store, as a stage writes it by
    // default (through RocksDB's write-ahead log), then again without the
    // log (`runtime.store_write_ahead_log = false`) into another fresh store.
    let metrics = StageMetrics::new("bench");
    let restore_into = |stores: &mut PartitionStores| {
        let t0 = Instant::now();
        let restored = meterline::runtime::restore::restore_store(
            &config, "bench", "dedupe", 0, &topic, 0, stores, &metrics,
        )
        .unwrap();
        (restored, t0.elapsed())
    };
    let fresh_stores = |name: &str, write_ahead_log: bool| {
        let backend = RocksBackend::open(
            &dir.path().join(name),
            &StoreMemory::new(DEFAULT_STORE_MEMORY_MB),
        )
        .unwrap()
        .with_write_ahead_log(write_ahead_log);
        PartitionStores::new(Box::new(backend), 1)
    };
    let mut stores = fresh_stores("db", true);
    let (restored, restore) = restore_into(&mut stores);
    assert_eq!(restored, keys);
    let (unlogged, restore_unlogged) = restore_into(&mut fresh_stores("db-unlogged", false));
    assert_eq!(unlogged, keys);

    // A restart after a clean stop (or a crash right after a memtable
    // flush): the checkpoint is current, nothing to replay.
    let (again, warm) = restore_into(&mut stores);
    assert_eq!(again, 0);

    println!("| measurement | keys | seconds | keys/s |");
    println!("|---|---:|---:|---:|");
    println!("| baseline: read the changelog partition (read_committed, no store) | {n} | {:.2} | {:.0} |", baseline.as_secs_f64(), n as f64 / baseline.as_secs_f64());
    println!(
        "| restore into an empty RocksDB store | {restored} | {:.2} | {:.0} |",
        restore.as_secs_f64(),
        restored as f64 / restore.as_secs_f64()
    );
    println!(
        "| the same without RocksDB's write-ahead log (runtime.store_write_ahead_log = false) | {restored} | {:.2} | {:.0} |",
        restore_unlogged.as_secs_f64(),
        restored as f64 / restore_unlogged.as_secs_f64()
    );
    println!(
        "| restore with a current checkpoint (a restart after a clean stop) | 0 | {:.3} | - |",
        warm.as_secs_f64()
    );
    println!(
        "ratio restore / baseline: {:.2}; without the write-ahead log: {:.2}",
        restore.as_secs_f64() / baseline.as_secs_f64(),
        restore_unlogged.as_secs_f64() / baseline.as_secs_f64()
    );
}
