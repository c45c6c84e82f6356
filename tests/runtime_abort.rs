//! The runtime's abort path against the real broker: a processor that fails
//! retriably on one record (twice) makes the runtime abort the transaction,
//! drop the transaction's store writes and rewind the consumer; after the
//! retry every record is output exactly once and no store write is applied
//! twice. The same holds when the producer itself fails mid-transaction
//! (fatally, not fenced) and is replaced in place.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use meterline::config::Config;
use meterline::runtime::{run_stage, Ctx, InputRecord, Output, Processor, StageError, StageStatus};
use meterline::topology::{self, StageSpec};

const RECORDS: usize = 200;
const POISON_FAILURES: u32 = 2;

/// Counts how often it has seen each key, in its store, and emits the count.
struct Counting {
    out_topic: String,
    poison_failures_left: u32,
    /// On the poison record, once: the producer fails (through the
    /// runtime's fault point) right after this record is processed.
    producer_fault: Option<Arc<StageStatus>>,
}

impl Processor for Counting {
    fn spec(&self) -> &'static StageSpec {
        &topology::STAGES[0]
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let key = rec.key.unwrap_or_default().to_vec();
        let seen = ctx
            .stores
            .get(0, &key)?
            .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
            .unwrap_or(0);
        ctx.stores
            .put(0, key.clone(), (seen + 1).to_be_bytes().to_vec());
        if rec.value == Some(b"poison") {
            if let Some(status) = self.producer_fault.take() {
                status.inject_producer_failure.store(true, Ordering::SeqCst);
            }
        }
        if rec.value == Some(b"poison") && self.poison_failures_left > 0 {
            // Fail after writing state: the write must be rolled back.
            self.poison_failures_left -= 1;
            return Err(StageError::Retriable("dependency down".into()));
        }
        ctx.emit(Output {
            topic: self.out_topic.clone(),
            key: Some(key),
            value: Some(format!("{}", seen + 1).into_bytes()),
            headers: vec![],
            partition: None,
        });
        Ok(())
    }
}

#[test]
fn retriable_failure_aborts_rewinds_and_rolls_back_state() {
    let m = run_counting("abort", POISON_FAILURES, false);
    assert_eq!(
        metric(
            &m,
            "meterline_transaction_aborts_total",
            &[
                ("stage", "validate"),
                ("cause", "retriable_processing_error")
            ]
        ),
        Some(POISON_FAILURES as f64),
        "{m}"
    );
}

#[test]
fn failed_producer_is_replaced_and_its_transaction_aborted() {
    let m = run_counting("replace", 0, true);
    // At least the injected one (the broker race this recovers from may
    // add one in the other test of this binary: the metrics are global).
    let replaced = metric(
        &m,
        "meterline_transaction_aborts_total",
        &[("stage", "validate"), ("cause", "producer_replaced")],
    );
    assert!(replaced.is_some_and(|n| n >= 1.0), "{m}");
}

/// Runs the counting stage over [`RECORDS`] records (the middle one the
/// poison) until every record is output, checks each was output exactly
/// once with its state applied once, and returns the metrics.
fn run_counting(name: &str, poison_failures: u32, producer_fault: bool) -> String {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
    let port = free_port();
    let w = World::new(
        name,
        &format!("[http]\nlisten_addr = \"127.0.0.1:{port}\"\n"),
    );
    w.apply();
    let records: Vec<Record> = (0..RECORDS)
        .map(|i| {
            let v: &[u8] = if i == RECORDS / 2 { b"poison" } else { b"ok" };
            (Some(format!("k{i}").into_bytes()), Some(v.to_vec()), vec![])
        })
        .collect();
    produce(&w.topic("usage.events"), &records);

    let mut config = Config::load(&w.config_path).unwrap();
    config.runtime.state_dir = w.state_dir();
    assert!(Path::new(&w.config_path).exists());
    let shutdown = Arc::new(AtomicBool::new(false));
    let status = Arc::new(StageStatus::default());
    let processor = Counting {
        out_topic: w.topic("usage.identified"),
        poison_failures_left: poison_failures,
        producer_fault: producer_fault.then(|| status.clone()),
    };
    let handle = {
        let (config, shutdown, status) = (Arc::new(config), shutdown.clone(), status.clone());
        std::thread::spawn(move || run_stage(config, processor, shutdown, status))
    };
    let out_topic = w.topic("usage.identified");
    wait_until("every record output", || {
        read_all(&out_topic, true).len() >= RECORDS
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    shutdown.store(true, Ordering::SeqCst);
    handle.join().unwrap().unwrap();

    let out = read_all(&out_topic, true);
    assert_eq!(out.len(), RECORDS, "each record output exactly once");
    for r in &out {
        assert_eq!(
            r.value.as_deref(),
            Some(&b"1"[..]),
            "state applied once: {r:?}"
        );
    }
    meterline::metrics::render()
}

/// Two instances with one transactional.id (a zombie and its replacement):
/// the older one is fenced and must stop, never replace its producer and
/// fence the newer one back; the newer one takes every partition and each
/// record is output exactly once.
#[test]
fn a_fenced_instance_stops_instead_of_fencing_its_replacement() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_test_writer()
        .try_init();
    let w = World::new("fence", "");
    w.apply();
    let batch = |from: usize| -> Vec<Record> {
        (from..from + RECORDS)
            .map(|i| {
                (
                    Some(format!("k{i}").into_bytes()),
                    Some(b"ok".to_vec()),
                    vec![],
                )
            })
            .collect()
    };
    produce(&w.topic("usage.events"), &batch(0));
    let mut config = Config::load(&w.config_path).unwrap();
    config.runtime.state_dir = w.state_dir();
    let config = Arc::new(config);
    let out_topic = w.topic("usage.identified");
    let start = |dir: &str| {
        let mut c = (*config).clone();
        c.runtime.state_dir = w.state_dir().join(dir);
        let (c, shutdown, status) = (
            Arc::new(c),
            Arc::new(AtomicBool::new(false)),
            Arc::new(StageStatus::default()),
        );
        let processor = Counting {
            out_topic: out_topic.clone(),
            poison_failures_left: 0,
            producer_fault: None,
        };
        let sd = shutdown.clone();
        let handle = std::thread::spawn(move || run_stage(c, processor, sd, status));
        (shutdown, handle)
    };
    let (_, older) = start("older");
    wait_until("the first batch output", || {
        read_all(&out_topic, true).len() >= RECORDS
    });
    // Same instance id, so the same transactional.id: its init fences the older.
    let (newer_stop, newer) = start("newer");
    std::thread::sleep(std::time::Duration::from_secs(3));
    produce(&w.topic("usage.events"), &batch(RECORDS));
    let stopped = older.join().unwrap();
    let err = stopped.expect_err("the fenced instance stops").to_string();
    assert!(err.contains("fenced"), "{err}");
    wait_until("the second batch output", || {
        read_all(&out_topic, true).len() >= 2 * RECORDS
    });
    std::thread::sleep(std::time::Duration::from_secs(1));
    newer_stop.store(true, Ordering::SeqCst);
    newer.join().unwrap().expect("the newer instance runs on");
    let out = read_all(&out_topic, true);
    assert_eq!(out.len(), 2 * RECORDS, "each record output exactly once");
    assert!(
        out.iter().all(|r| r.value.as_deref() == Some(&b"1"[..])),
        "state applied once"
    );
}
