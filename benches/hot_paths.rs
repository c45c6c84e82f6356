//! Micro-benchmarks of the per-record hot paths, without Kafka.
//!
//! Every benchmark processes a batch of N items per iteration and is reported
//! per element (`Throughput::Elements(N)`). The baseline, measured in the
//! same run, is serde_json parsing the same structured-mode event bytes into
//! a `serde_json::Value`; at the end of the run a markdown table gives each
//! benchmark's time per element, elements per second and ratio to the
//! baseline (read back from criterion's `new/estimates.json` files).
//!
//!     cargo bench --bench hot_paths              # everything, ~90 s
//!     cargo bench --bench hot_paths -- decode    # one group (ratios need the baseline too)
//!
//! `cargo test --benches` runs each benchmark once, as a smoke test.
//!
//! The processors run as the runtime drives them: `Processor::process` with a
//! `Ctx` over `PartitionStores` (MemBackend, or RocksBackend in a temporary
//! directory), writes staying in the transaction overlay until
//! `apply_committed` (called between batches, outside the timed section,
//! where a benchmark needs state to carry over).

// The allocator the `meterline` binary ships with (src/main.rs): per-record
// allocation is a large part of these paths, so measuring them on glibc's
// malloc would measure something else.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::{Record, Value as AvroValue};
use apache_avro::writer::datum::GenericDatumWriter;
use apache_avro::Schema;
use chrono::{DateTime, SecondsFormat, Utc};
use criterion::{BatchSize, Criterion, Throughput};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use serde_json::json;
use sha2::Sha256;

use meterline::config::Config;
use meterline::contracts::{
    ChargeSource, Clearing, ClosedWindow, CloudEvent, CustomerInfo, Encoding, EnrichedEvent,
    Measure, Origin, RatedEvent, RatedHead, ResolvedCharge, SegmentInfo, ValidatedEvent, Window,
    WindowKind,
};
use meterline::ingest::decode::{
    self, AvroDecodeError, AvroDecoder, RawRecord, WriterSchema, CLOUDEVENT_AVRO_SCHEMA_EXAMPLE,
    CONFLUENT_HEADER_LEN, CONFLUENT_MAGIC_BYTE,
};
use meterline::ingest::members::check_unique_members;
use meterline::ingest::rules::{self, MeterIndex, ValidateRules};
use meterline::meter::Aggregation;
use meterline::rating::{ChargeModel, Observation, SegmentState, Tier};
use meterline::refdata::GlAccounts;
use meterline::runtime::{Ctx, InputRecord, Output, Processor};
use meterline::stages::aggregate::AggregateProcessor;
use meterline::stages::dedupe::DedupeProcessor;
use meterline::stages::post::{post_window, PostProcessor};
use meterline::stages::rate::RateProcessor;
use meterline::stages::validate::ValidateProcessor;
use meterline::store::keys::KeyBuilder;
use meterline::store::rocks::{RocksBackend, StoreMemory, DEFAULT_STORE_MEMORY_MB};
use meterline::store::{Backend, MemBackend, PartitionStores, Writes};

/// Items per iteration of the cheap benchmarks (decode, rules, rating, lookups).
const N: usize = 1_000;
/// Items per iteration of the processor benchmarks (rate, aggregate, post).
const N_PROC: usize = 200;
/// Events accepted into the dedupe store before the lookup-hit benchmarks.
const DEDUPE_FILL: u64 = 100_000;
/// The MemBackend dedupe store of the "new events" benchmark is replaced
/// (outside the timed section) past this many events, to bound memory.
const MEM_DEDUPE_RESET: u64 = 500_000;

const BASELINE: (&str, &str) = ("baseline", "serde_json_value");
const MODELS: [&str; 3] = ["small", "large", "vision"];
const SOURCE: &str = "svc/api";
const HMAC_KEY: &[u8] = b"0123456789abcdef0123456789abcdef";
const EXAMPLE_SCHEMA_ID: u32 = 7;

type Headers = Vec<(String, Option<Vec<u8>>)>;

/// One input record, owned.
struct Rec {
    key: Vec<u8>,
    value: Vec<u8>,
    headers: Headers,
}

impl Rec {
    fn raw(&self) -> RawRecord<'_> {
        RawRecord {
            key: Some(&self.key),
            value: Some(&self.value),
            headers: &self.headers,
        }
    }
}

/// The benchmarks of this run, in order: (group, function, elements per iteration).
#[derive(Default)]
struct Plan {
    rows: Vec<(String, String, u64)>,
}

impl Plan {
    fn add(&mut self, group: &str, function: &str, elements: usize) -> Throughput {
        self.rows
            .push((group.to_string(), function.to_string(), elements as u64));
        Throughput::Elements(elements as u64)
    }
}

fn config() -> Config {
    // The repository's topology/meters.toml (llm.tokens -> meter `tokens`, SUM, group by model).
    Config::from_parts(
        "[topology]\nnamespace = \"bench.\"\n",
        "bench",
        &[],
        PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    )
    .expect("bench config")
}

/// The clock a stage sees (`Ctx::now_ms`) for records of `topic`. The raw
/// events validate reads are stamped with the wall clock (its future-time
/// rule compares them to now); the records of the later stages are from
/// January 2026, and their clock is that day, an hour after the events (on
/// today's clock the rate stage's January segments would have expired).
fn bench_now_ms(topic: &str) -> i64 {
    if topic.ends_with("usage.events") {
        meterline::runtime::wall_clock_ms()
    } else {
        utc("2026-01-10T13:00:00Z").timestamp_millis()
    }
}

fn rate_processor(cfg: &Config) -> RateProcessor {
    RateProcessor::new(cfg)
}

/// Stores per partition: as many as the stage with the most has (dedupe).
const STORES_PER_PARTITION: usize = 4;

fn mem_stores() -> PartitionStores {
    PartitionStores::new(Box::<MemBackend>::default(), STORES_PER_PARTITION)
}

fn rocks_stores(dir: &tempfile::TempDir) -> PartitionStores {
    PartitionStores::new(
        Box::new(
            RocksBackend::open(
                &dir.path().join("db"),
                &StoreMemory::new(DEFAULT_STORE_MEMORY_MB),
            )
            .expect("open rocksdb"),
        ),
        STORES_PER_PARTITION,
    )
}

/// Runs every record through `p` as the runtime would (one partition).
fn process_all<P: Processor>(
    p: &mut P,
    stores: &mut PartitionStores,
    cfg: &Config,
    topic: &str,
    recs: &[Rec],
    out: &mut Vec<Output>,
) {
    let mut ctx = Ctx {
        partition: 0,
        stores,
        out,
        config: cfg,
        now_ms: bench_now_ms(topic),
    };
    for (i, r) in recs.iter().enumerate() {
        let rec = InputRecord {
            topic,
            partition: 0,
            offset: i as i64,
            key: Some(&r.key),
            value: Some(&r.value),
            headers: &r.headers,
            timestamp_ms: Some(1),
        };
        if let Err(e) = p.process(&rec, &mut ctx) {
            panic!("{topic} record {i}: {e}");
        }
    }
}

/// [`Processor::flush`], as the runtime calls it before each commit.
fn flush_processor<P: Processor>(
    p: &mut P,
    stores: &mut PartitionStores,
    cfg: &Config,
    topic: &str,
) {
    let mut out = Vec::new();
    let mut ctx = Ctx {
        partition: 0,
        stores,
        out: &mut out,
        config: cfg,
        now_ms: bench_now_ms(topic),
    };
    if let Err(e) = p.flush(&mut ctx) {
        panic!("{topic} flush: {e}");
    }
    assert!(out.is_empty(), "a flush emits nothing");
}

// ---------------------------------------------------------------- input events

/// The fields of the `seq`-th usage event: an `llm.tokens` event of ~230
/// bytes in structured mode, like `meterline loadgen` produces.
struct Spec {
    id: String,
    subject: String,
    time: String,
    tokens: i64,
    model: &'static str,
}

fn spec(seq: u64, base: DateTime<Utc>) -> Spec {
    Spec {
        id: format!("evt-{seq:010}"),
        subject: format!("cust-{:04}", seq % 500),
        time: (base + chrono::Duration::milliseconds((seq % 3_600_000) as i64))
            .to_rfc3339_opts(SecondsFormat::Millis, true),
        tokens: 100 + ((seq * 37) % 1_900) as i64,
        model: MODELS[(seq % 3) as usize],
    }
}

/// Event times for the validate benchmarks: within the last two hours, so
/// the time rules accept them whenever the run happens.
fn recent_base() -> DateTime<Utc> {
    Utc::now() - chrono::Duration::hours(2)
}

fn structured(s: &Spec) -> Rec {
    let value = format!(
        r#"{{"specversion":"1.0","id":"{}","source":"{SOURCE}","type":"llm.tokens","subject":"{}","time":"{}","datacontenttype":"application/json","data":{{"tokens":{},"model":"{}"}}}}"#,
        s.id, s.subject, s.time, s.tokens, s.model
    );
    Rec {
        key: s.subject.clone().into_bytes(),
        value: value.into_bytes(),
        headers: Vec::new(),
    }
}

fn header(name: &str, value: &str) -> (String, Option<Vec<u8>>) {
    (name.to_string(), Some(value.as_bytes().to_vec()))
}

fn binary(s: &Spec) -> Rec {
    Rec {
        key: s.subject.clone().into_bytes(),
        value: format!(r#"{{"tokens":{},"model":"{}"}}"#, s.tokens, s.model).into_bytes(),
        headers: vec![
            header("ce_specversion", "1.0"),
            header("ce_id", &s.id),
            header("ce_source", SOURCE),
            header("ce_type", "llm.tokens"),
            header("ce_subject", &s.subject),
            header("ce_time", &s.time),
            header("content-type", "application/json"),
        ],
    }
}

fn avro(s: &Spec, schema: &Schema) -> Rec {
    let Schema::Record(record_schema) = schema else {
        panic!("the example schema is a record")
    };
    let data_schema = &record_schema.fields[record_schema.lookup["data"]].schema;
    let mut data = Record::new(data_schema).expect("data record");
    data.put("tokens", s.tokens);
    data.put("model", s.model);
    let mut record = Record::new(schema).expect("record");
    record.put("specversion", "1.0");
    record.put("id", s.id.as_str());
    record.put("source", SOURCE);
    record.put("type", "llm.tokens");
    record.put("subject", s.subject.as_str());
    record.put("time", s.time.as_str());
    record.put(
        "datacontenttype",
        AvroValue::Union(1, Box::new(AvroValue::String("application/json".into()))),
    );
    record.put("data", data);
    let datum = GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_value_to_vec(record))
        .expect("avro datum");
    let mut value = vec![CONFLUENT_MAGIC_BYTE];
    value.extend_from_slice(&EXAMPLE_SCHEMA_ID.to_be_bytes());
    value.extend_from_slice(&datum);
    Rec {
        key: s.subject.clone().into_bytes(),
        value,
        headers: Vec::new(),
    }
}

/// Adds the HMAC-SHA256 signature header the `hmac_keys_hex` rule checks.
fn signed(mut r: Rec) -> Rec {
    let mut mac = Hmac::<Sha256>::new_from_slice(HMAC_KEY).expect("hmac key");
    mac.update(&r.value);
    let sig = hex::encode(mac.finalize().into_bytes());
    r.headers
        .push(header(rules::DEFAULT_SIGNATURE_HEADER, &sig));
    r
}

/// A schema registry over the one example schema, like the unit tests'
/// `FakeRegistry`: a map lookup of the id, then a datum reader built for the
/// writer schema (the production decoder goes through
/// schema_registry_converter's cache instead).
struct FixedRegistry {
    schemas: BTreeMap<u32, Arc<Schema>>,
}

impl AvroDecoder for FixedRegistry {
    fn decode(&self, wire: &[u8]) -> Result<AvroValue, AvroDecodeError> {
        self.decode_with_schema(wire).map(|(v, _)| v)
    }

    fn decode_with_schema(
        &self,
        wire: &[u8],
    ) -> Result<(AvroValue, Option<Arc<dyn WriterSchema>>), AvroDecodeError> {
        let header = wire
            .get(..CONFLUENT_HEADER_LEN)
            .ok_or_else(|| AvroDecodeError::Malformed("short".into()))?;
        if header[0] != CONFLUENT_MAGIC_BYTE {
            return Err(AvroDecodeError::Malformed("bad magic byte".into()));
        }
        let id = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let schema = self
            .schemas
            .get(&id)
            .ok_or_else(|| AvroDecodeError::SchemaNotFound(format!("id {id}")))?
            .clone();
        let mut body = &wire[CONFLUENT_HEADER_LEN..];
        let value = GenericDatumReader::builder(&schema)
            .build()
            .and_then(|reader| reader.read_value(&mut body))
            .map_err(|e| AvroDecodeError::Malformed(e.to_string()))?;
        if !body.is_empty() {
            return Err(AvroDecodeError::Malformed("trailing bytes".into()));
        }
        Ok((value, Some(schema as Arc<dyn WriterSchema>)))
    }
}

fn fixed_registry() -> FixedRegistry {
    let schema = Schema::parse_str(CLOUDEVENT_AVRO_SCHEMA_EXAMPLE).expect("example schema");
    FixedRegistry {
        schemas: BTreeMap::from([(EXAMPLE_SCHEMA_ID, Arc::new(schema))]),
    }
}

// ------------------------------------------------- enriched, rated, windowed

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("instant")
        .with_timezone(&Utc)
}

fn window(id: &str, start: &str, end: &str) -> Window {
    Window {
        id: id.into(),
        start: utc(start),
        end: utc(end),
    }
}

/// 2026-01, anchor day 1, America/New_York.
fn billing_period() -> Window {
    window("2026-01-01", "2026-01-01T05:00:00Z", "2026-02-01T05:00:00Z")
}

fn local_day() -> Window {
    window("2026-01-10", "2026-01-10T05:00:00Z", "2026-01-11T05:00:00Z")
}

fn gl() -> GlAccounts {
    GlAccounts::new("4010", "1210", "1200")
}

fn customer() -> CustomerInfo {
    CustomerInfo {
        id: "cust-0042".into(),
        name: "Acme".into(),
        legal_entity: "acme".into(),
        erp_customer_id: "C-42".into(),
    }
}

/// Five tiers: 1,000 free, then 0.002 (+5.00 on entry), 0.0015, 0.001, 0.0005.
fn tiers5() -> Vec<Tier> {
    vec![
        Tier::bounded(dec!(1000), dec!(0)),
        Tier::bounded(dec!(10000), dec!(0.002)).with_flat_fee(dec!(5.00)),
        Tier::bounded(dec!(100000), dec!(0.0015)),
        Tier::bounded(dec!(1000000), dec!(0.001)),
        Tier::open(dec!(0.0005)),
    ]
}

/// The `seq`-th enriched event of one customer: one `tokens` measure (SUM,
/// graduated 5 tiers) in one of three segments (group `model`), event times
/// 1 ms apart from 2026-01-10T12:00Z, so they stay in one local day.
fn enriched_event(seq: u64) -> EnrichedEvent {
    let s = spec(seq, utc("2026-01-10T12:00:00Z"));
    let time = utc("2026-01-10T12:00:00Z") + chrono::Duration::milliseconds(seq as i64);
    EnrichedEvent {
        event: ValidatedEvent {
            correction: None,
            source: SOURCE.into(),
            id: s.id,
            event_type: "llm.tokens".into(),
            subject: "cust-0042".into(),
            time,
            measures: vec![Measure {
                meter: "tokens".into(),
                value: Some(Decimal::from(s.tokens)),
                unique_value: None,
                group: BTreeMap::from([("model".to_string(), s.model.to_string())]),
            }],
            data: json!({"tokens": s.tokens, "model": s.model}),
            origin: Origin {
                topic: "bench.usage.events".into(),
                partition: 0,
                offset: seq as i64,
                encoding: Encoding::Structured,
            },
        },
        customer: customer(),
        subscription_id: "sub-0042".into(),
        plan_id: "pro".into(),
        plan_version: 2,
        currency: "USD".into(),
        legal_entity: "ml-us".into(),
        time_zone: "America/New_York".into(),
        billing_anchor_day: 1,
        subscription_end: None,
        billing_period: billing_period(),
        local_day: local_day(),
        gl_accounts: gl(),
        tax_code: Some("TX0".into()),
        minimum_commitment: None,
        base_fee: None,
        charges: vec![ResolvedCharge {
            meter: "tokens".into(),
            aggregation: Aggregation::Sum,
            charge: ChargeModel::Graduated { tiers: tiers5() },
            source: ChargeSource::Plan,
            tax_code: Some("TX1".into()),
            unit: Some("tokens".into()),
            prorate: false,
        }],
    }
}

fn enriched_rec(seq: u64) -> Rec {
    Rec {
        key: b"cust-0042".to_vec(),
        value: enriched_event(seq).to_json_bytes().expect("enriched json"),
        headers: Vec::new(),
    }
}

fn outputs_to_recs(out: Vec<Output>) -> Vec<Rec> {
    out.into_iter()
        .map(|o| Rec {
            key: o.key.unwrap_or_default(),
            value: o.value.expect("a value"),
            headers: Vec::new(),
        })
        .collect()
}

/// A closed window of segment `i` as aggregate emits it.
fn closed_window(kind: WindowKind, i: usize) -> ClosedWindow {
    let segment_id = format!("{:064x}", i as u128 * 0x9e37_79b9_7f4a_7c15);
    ClosedWindow {
        kind,
        window: match kind {
            WindowKind::Day => local_day(),
            _ => billing_period(),
        },
        adjusts: None,
        clearing: Clearing {
            period: billing_period(),
            adjusts: None,
        },
        customer: customer(),
        subscription_id: format!("sub-{i:04}"),
        plan_id: "pro".into(),
        legal_entity: "ml-us".into(),
        currency: "USD".into(),
        time_zone: "America/New_York".into(),
        billing_anchor_day: 1,
        subscription_end: None,
        gl_accounts: gl(),
        segment: Some(SegmentInfo {
            segment_key: format!(r#"["sub-{i:04}","tokens","2026-01-01",2,{{"model":"small"}}]"#),
            segment_id,
            meter: "tokens".into(),
            plan_version: 2,
            group: BTreeMap::from([("model".to_string(), "small".to_string())]),
            aggregation: Aggregation::Sum,
            tax_code: Some("TX1".into()),
            unit: Some("tokens".into()),
        }),
        plan_version: 2,
        tax_code: Some("TX0".into()),
        base_fee: None,
        minimum_commitment: None,
        quantity: Decimal::from(10_000 + i as i64 * 7),
        // Unrounded sums of marginal amounts, e.g. 23.4567.
        amount: Decimal::new(234_567 + i as i64 * 13, 4),
        event_count: 40 + i as u64,
        lineage_digest: format!("{:064x}", i as u128 * 0x517c_c1b7_2722_0a95),
        closed_at_watermark_ms: utc("2026-02-01T05:10:00Z").timestamp_millis(),
        parts: Default::default(),
    }
}

fn window_rec(w: &ClosedWindow) -> Rec {
    Rec {
        key: w.customer.id.clone().into_bytes(),
        value: w.to_json_bytes().expect("window json"),
        headers: Vec::new(),
    }
}

// -------------------------------------------------------------- benchmarks

fn bench_baseline(c: &mut Criterion, plan: &mut Plan) {
    let base = recent_base();
    let recs: Vec<Rec> = (0..N as u64).map(|i| structured(&spec(i, base))).collect();
    let mut g = c.benchmark_group(BASELINE.0);
    g.throughput(plan.add(BASELINE.0, BASELINE.1, N));
    g.bench_function(BASELINE.1, |b| {
        b.iter(|| {
            for r in &recs {
                let v: serde_json::Value = serde_json::from_slice(&r.value).expect("json");
                black_box(v);
            }
        })
    });
    g.finish();
}

fn bench_decode(c: &mut Criterion, plan: &mut Plan) {
    let base = recent_base();
    let registry = fixed_registry();
    let schema = registry.schemas[&EXAMPLE_SCHEMA_ID].clone();
    let structured: Vec<Rec> = (0..N as u64).map(|i| structured(&spec(i, base))).collect();
    let binary: Vec<Rec> = (0..N as u64).map(|i| binary(&spec(i, base))).collect();
    let avro: Vec<Rec> = (0..N as u64)
        .map(|i| avro(&spec(i, base), &schema))
        .collect();
    let decoder: Option<&dyn AvroDecoder> = Some(&registry);

    let mut g = c.benchmark_group("decode");
    for (name, recs, expected) in [
        ("structured", &structured, Encoding::Structured),
        ("binary", &binary, Encoding::Binary),
        ("avro", &avro, Encoding::Avro),
    ] {
        // Sanity: every record decodes with the expected encoding.
        let (_, enc) = decode::decode(&recs[0].raw(), decoder).expect("decodes");
        assert_eq!(enc, expected);
        g.throughput(plan.add("decode", name, N));
        g.bench_function(name, |b| {
            b.iter(|| {
                for r in recs.iter() {
                    black_box(decode::decode(&r.raw(), decoder).expect("decodes"));
                }
            })
        });
    }
    g.finish();
}

fn bench_validate(c: &mut Criterion, plan: &mut Plan) {
    let cfg = config();
    let base = recent_base();
    let now = Utc::now();
    let meters = MeterIndex::new(&cfg.meters).expect("meters");
    let plain_rules = ValidateRules::default();
    let hmac_rules = ValidateRules {
        hmac_keys: BTreeMap::from([(SOURCE.to_string(), HMAC_KEY.to_vec())]),
        ..ValidateRules::default()
    };
    let recs: Vec<Rec> = (0..N as u64)
        .map(|i| signed(structured(&spec(i, base))))
        .collect();
    let events: Vec<CloudEvent> = recs
        .iter()
        .map(|r| decode::decode(&r.raw(), None).expect("decodes").0)
        .collect();
    let origin = |i: usize| Origin {
        topic: "bench.usage.events".into(),
        partition: 0,
        offset: i as i64,
        encoding: Encoding::Structured,
    };

    let mut g = c.benchmark_group("validate");
    for (name, rule_set) in [("rules", &plain_rules), ("rules_hmac", &hmac_rules)] {
        g.throughput(plan.add("validate", name, N));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    events
                        .iter()
                        .cloned()
                        .enumerate()
                        .map(|(i, e)| (e, origin(i)))
                        .collect::<Vec<_>>()
                },
                |input| {
                    for ((event, origin), r) in input.into_iter().zip(&recs) {
                        black_box(
                            rules::validate(event, &r.raw(), &meters, rule_set, now, origin)
                                .expect("valid"),
                        );
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }

    // The whole gate on events never seen: validate (decode, rules, lineage,
    // seq, claim keyed by identity), dedupe on the claim (parse, dedupe miss,
    // two dedupe writes: entry + expiry index, verdict), dedupe on the
    // verdict (release in seq order, output keyed by subject). Each batch of N is one transaction, committed to the backend
    // between batches.
    let rocks_dir = tempfile::tempdir().expect("tempdir");
    for backend in ["mem", "rocks"] {
        let name = format!("process_new_{backend}");
        let new_stores = || match backend {
            "mem" => mem_stores(),
            _ => rocks_stores(&rocks_dir),
        };
        let mut gate = Gate::new(&cfg, new_stores());
        let mut seq = 0u64;
        g.throughput(plan.add("validate", &name, N));
        g.bench_function(&name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if backend == "mem" && seq >= MEM_DEDUPE_RESET {
                        gate = Gate::new(&cfg, new_stores());
                        seq = 0;
                    }
                    let recs: Vec<Rec> = (0..N)
                        .map(|_| {
                            seq += 1;
                            structured(&spec(seq + 1_000_000_000, base))
                        })
                        .collect();
                    let t = Instant::now();
                    let out = gate.process(&cfg, &recs);
                    total += t.elapsed();
                    assert_eq!(out.len(), N, "every new event is accepted");
                    gate.commit(seq as i64);
                }
                total
            })
        });
    }

    // Duplicates: DEDUPE_FILL events accepted and committed, then N of them
    // sent again. `process_duplicate_*` is the whole gate on a copy (decode,
    // rules, claim; dedupe: parse, hit, verdict; release: nothing out); `dedupe/hit_*` is
    // the store lookup alone, with the entry key built as
    // src/stages/dedupe/store.rs does.
    let mut hit_benches = Vec::new();
    for backend in ["mem", "rocks"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut gate = Gate::new(
            &cfg,
            match backend {
                "mem" => mem_stores(),
                _ => rocks_stores(&dir),
            },
        );
        let fill: Vec<Rec> = (0..DEDUPE_FILL)
            .map(|i| structured(&spec(i, base)))
            .collect();
        for (k, chunk) in fill.chunks(5_000).enumerate() {
            let out = gate.process(&cfg, chunk);
            assert_eq!(out.len(), chunk.len());
            gate.commit(k as i64);
        }
        let step = (DEDUPE_FILL as usize) / N;
        let dups: Vec<Rec> = fill.into_iter().step_by(step).take(N).collect();
        let keys: Vec<Vec<u8>> = (0..DEDUPE_FILL)
            .step_by(step)
            .take(N)
            .map(|i| {
                KeyBuilder::new(b'E')
                    .str(SOURCE)
                    .str(&spec(i, base).id)
                    .build()
            })
            .collect();
        for k in &keys {
            assert!(
                gate.dedupe_stores.get(0, k).expect("get").is_some(),
                "a dedupe hit"
            );
        }
        let name = format!("process_duplicate_{backend}");
        g.throughput(plan.add("validate", &name, N));
        g.bench_function(&name, |b| {
            b.iter(|| {
                let out = gate.process(&cfg, &dups);
                assert!(out.is_empty(), "duplicates are dropped");
            })
        });
        // Duplicates write lineage and counters, never the dedupe store.
        assert!(gate.dedupe_stores.pending(0).is_empty());
        hit_benches.push((backend, gate.dedupe_stores, keys, dir));
    }
    g.finish();

    let mut g = c.benchmark_group("dedupe");
    for (backend, stores, keys, _dir) in &hit_benches {
        let name = format!("hit_{backend}");
        g.throughput(plan.add("dedupe", &name, keys.len()));
        g.bench_function(&name, |b| {
            b.iter(|| {
                for k in keys {
                    black_box(stores.get(0, k).expect("get"));
                }
            })
        });
    }
    g.finish();
}

/// Outputs read back as input records.
fn as_recs(outputs: Vec<Output>) -> Vec<Rec> {
    outputs
        .into_iter()
        .map(|o| Rec {
            key: o.key.unwrap_or_default(),
            value: o.value.unwrap_or_default(),
            headers: Vec::new(),
        })
        .collect()
}

/// The gate: validate, then dedupe on validate's claims and on its own
/// verdicts (as `usage.identified` carries them), each over its own stores.
struct Gate {
    validate: ValidateProcessor,
    validate_stores: PartitionStores,
    dedupe: DedupeProcessor,
    dedupe_stores: PartitionStores,
}

impl Gate {
    fn new(cfg: &Config, dedupe_stores: PartitionStores) -> Gate {
        Gate {
            validate: ValidateProcessor::with_parts(cfg, ValidateRules::default(), None)
                .expect("processor"),
            validate_stores: mem_stores(),
            dedupe: DedupeProcessor::new(cfg),
            dedupe_stores,
        }
    }

    /// dedupe's outputs (to `usage.validated`) for `recs` (on
    /// `usage.events`): validate's claims, dedupe's verdicts on them, and
    /// the release of the verdicts (all on partition 0 here).
    fn process(&mut self, cfg: &Config, recs: &[Rec]) -> Vec<Output> {
        let mut claims = Vec::with_capacity(recs.len());
        let (validate, stores) = (&mut self.validate, &mut self.validate_stores);
        process_all(
            validate,
            stores,
            cfg,
            "bench.usage.events",
            recs,
            &mut claims,
        );
        let mut verdicts = Vec::with_capacity(claims.len());
        let topic = "bench.usage.identified";
        let (dedupe, stores) = (&mut self.dedupe, &mut self.dedupe_stores);
        process_all(dedupe, stores, cfg, topic, &as_recs(claims), &mut verdicts);
        let mut out = Vec::with_capacity(verdicts.len());
        process_all(dedupe, stores, cfg, topic, &as_recs(verdicts), &mut out);
        out
    }

    fn commit(&mut self, offset: i64) {
        self.validate_stores
            .apply_committed(&[(0, offset)])
            .expect("commit");
        self.dedupe_stores
            .apply_committed(&[(0, offset)])
            .expect("commit");
    }
}

fn bench_rating(c: &mut Criterion, plan: &mut Plan) {
    // N SUM events of 100..2,000 units: the cumulative quantity walks from 0
    // to ~1,050,000, through all five tiers.
    let values: Vec<Decimal> = (0..N as u64)
        .map(|i| Decimal::from(100 + (i * 37) % 1_900))
        .collect();
    let models = [
        (
            "per_unit",
            ChargeModel::PerUnit {
                unit_price: dec!(0.0004),
            },
        ),
        ("graduated_5", ChargeModel::Graduated { tiers: tiers5() }),
        ("volume_5", ChargeModel::Volume { tiers: tiers5() }),
        (
            "package",
            ChargeModel::Package {
                size: dec!(1000),
                price: dec!(2.50),
                free_units: dec!(500),
            },
        ),
    ];
    let mut g = c.benchmark_group("rating");
    for (name, model) in &models {
        g.throughput(plan.add("rating", name, N));
        g.bench_function(*name, |b| {
            b.iter(|| {
                let mut state = SegmentState::new(Aggregation::Sum);
                for v in &values {
                    let change = state.observe(Observation::value(*v)).expect("observe");
                    // price(after) - price(before), as the rate stage does.
                    black_box(model.marginal(&change).expect("price"));
                }
            })
        });
    }
    // How much of a price is the table check every price call starts with.
    let graduated = &models[1].1;
    g.throughput(plan.add("rating", "validate_graduated_5", N));
    g.bench_function("validate_graduated_5", |b| {
        b.iter(|| {
            for _ in 0..N {
                black_box(black_box(graduated).validate()).expect("valid");
            }
        })
    });
    g.finish();
}

/// Attribution for the processors below: typed JSON parsing of their input
/// records alone (the same records the rate, aggregate and post benchmarks
/// read), with the record sizes printed once.
fn bench_json(c: &mut Criterion, plan: &mut Plan) {
    let cfg = config();
    let enriched: Vec<Rec> = (1..=N_PROC as u64).map(enriched_rec).collect();
    let mut rate = rate_processor(&cfg);
    let mut out = Vec::new();
    process_all(
        &mut rate,
        &mut mem_stores(),
        &cfg,
        "bench.usage.enriched",
        &enriched,
        &mut out,
    );
    let rated = outputs_to_recs(out);
    let windows: Vec<Rec> = (0..N_PROC)
        .map(|i| window_rec(&closed_window(WindowKind::BillingPeriod, i)))
        .collect();
    eprintln!(
        "hot_paths: record sizes: structured event {} B, enriched {} B, rated {} B, closed window {} B",
        structured(&spec(1, recent_base())).value.len(),
        enriched[0].value.len(),
        rated[0].value.len(),
        windows[0].value.len()
    );
    let mut g = c.benchmark_group("json");
    g.throughput(plan.add("json", "parse_enriched", N_PROC));
    g.bench_function("parse_enriched", |b| {
        b.iter(|| {
            for r in &enriched {
                black_box(EnrichedEvent::from_json_slice(&r.value).expect("enriched"));
            }
        })
    });
    g.throughput(plan.add("json", "parse_rated", N_PROC));
    g.bench_function("parse_rated", |b| {
        b.iter(|| {
            for r in &rated {
                black_box(RatedEvent::from_json_slice(&r.value).expect("rated"));
            }
        })
    });
    g.throughput(plan.add("json", "parse_rated_head", N_PROC));
    g.bench_function("parse_rated_head", |b| {
        b.iter(|| {
            for r in &rated {
                black_box(RatedHead::head_from_json_slice(&r.value).expect("rated"));
            }
        })
    });
    // The second pass validate makes over every JSON event (a member named
    // twice is refused), on the baseline's records: its cost against a parse.
    let events: Vec<Rec> = (0..N as u64)
        .map(|i| structured(&spec(i, recent_base())))
        .collect();
    g.throughput(plan.add("json", "unique_members", N));
    g.bench_function("unique_members", |b| {
        b.iter(|| {
            for r in &events {
                assert!(black_box(check_unique_members(black_box(&r.value))).is_ok());
            }
        })
    });
    g.throughput(plan.add("json", "window_roundtrip", N_PROC));
    g.bench_function("window_roundtrip", |b| {
        b.iter(|| {
            for r in &windows {
                let w = ClosedWindow::from_json_slice(&r.value).expect("window");
                black_box(w.to_json_bytes().expect("json"));
            }
        })
    });
    g.finish();
}

fn bench_rate(c: &mut Criterion, plan: &mut Plan) {
    let cfg = config();
    let recs: Vec<Rec> = (1..=N_PROC as u64).map(enriched_rec).collect();
    let mut p = rate_processor(&cfg);
    let mut stores = mem_stores();
    let mut g = c.benchmark_group("rate");
    g.throughput(plan.add("rate", "process", N_PROC));
    g.bench_function("process", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(N_PROC);
            process_all(
                &mut p,
                &mut stores,
                &cfg,
                "bench.usage.enriched",
                &recs,
                &mut out,
            );
            assert_eq!(out.len(), N_PROC);
        })
    });
    g.finish();
}

fn bench_aggregate(c: &mut Criterion, plan: &mut Plan) {
    // Fresh rated events each batch (rated by the rate processor outside the
    // timed section), event time rising 1 ms per event: every event moves
    // the watermark (clock written, close scan finds nothing, as within a
    // day), and updates its day, billing-period and period-close windows.
    let cfg = config();
    let mut rate = rate_processor(&cfg);
    let mut rate_stores = mem_stores();
    let mut agg = AggregateProcessor::new(&cfg);
    let mut stores = mem_stores();
    let mut seq = 0u64;
    let mut g = c.benchmark_group("aggregate");
    g.throughput(plan.add("aggregate", "process", N_PROC));
    g.bench_function("process", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let enriched: Vec<Rec> = (0..N_PROC)
                    .map(|_| {
                        seq += 1;
                        enriched_rec(seq)
                    })
                    .collect();
                let mut rated = Vec::with_capacity(N_PROC);
                process_all(
                    &mut rate,
                    &mut rate_stores,
                    &cfg,
                    "bench.usage.enriched",
                    &enriched,
                    &mut rated,
                );
                rate_stores.apply_committed(&[]).expect("commit");
                let rated = outputs_to_recs(rated);
                let mut out = Vec::new();
                let t = Instant::now();
                process_all(
                    &mut agg,
                    &mut stores,
                    &cfg,
                    "bench.usage.rated",
                    &rated,
                    &mut out,
                );
                // The batch is one transaction: its windows and clock are
                // written once, before the commit, as the runtime does.
                flush_processor(&mut agg, &mut stores, &cfg, "bench.usage.rated");
                total += t.elapsed();
                assert!(out.is_empty(), "no window closes within the day");
                stores.apply_committed(&[]).expect("commit");
            }
            total
        })
    });
    g.finish();
}

fn bench_post(c: &mut Criterion, plan: &mut Plan) {
    let cfg = config();
    let days: Vec<ClosedWindow> = (0..N_PROC)
        .map(|i| closed_window(WindowKind::Day, i))
        .collect();
    let periods: Vec<ClosedWindow> = (0..N_PROC)
        .map(|i| closed_window(WindowKind::BillingPeriod, i))
        .collect();
    let mut g = c.benchmark_group("post");

    // The postings of a billing-period window alone (invoice line, rounding
    // entry, reclass, control total), no JSON or store.
    g.throughput(plan.add("post", "build_billing_period", N_PROC));
    g.bench_function("build_billing_period", |b| {
        b.iter(|| {
            for w in &periods {
                black_box(post_window(w, dec!(23.45), dec!(100.00)).expect("posted"));
            }
        })
    });

    // A day window: its accrual and control total; a billing-period window:
    // its control total and the draft handing the rest to the invoice stage.
    for (name, windows, per_window) in [
        ("process_day", &days, 2usize),
        ("process_billing_period", &periods, 2usize),
    ] {
        let recs: Vec<Rec> = windows.iter().map(window_rec).collect();
        let mut p = PostProcessor::new(&cfg);
        let mut stores = mem_stores();
        g.throughput(plan.add("post", name, N_PROC));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut out = Vec::with_capacity(N_PROC * per_window);
                process_all(
                    &mut p,
                    &mut stores,
                    &cfg,
                    "bench.usage.windows",
                    &recs,
                    &mut out,
                );
                assert_eq!(out.len(), N_PROC * per_window);
            })
        });
    }
    g.finish();
}

// ------------------------------------------------------------------ report

/// Where criterion writes its results, resolved as criterion 0.8 does.
/// Open windows of the state measurement: half of them day windows, half
/// billing-period windows, of as many rating segments.
const STATE_OPEN_WINDOWS: usize = 10_000;

/// Bytes (keys + values) of one store, as its changelog and RocksDB hold it
/// before compression.
fn store_bytes(stores: &PartitionStores, store: u8) -> usize {
    stores
        .committed_scan(store, &[], &[0xff; 8], usize::MAX)
        .expect("scan")
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum()
}

/// Issue 18: aggregate's state per 10,000 open windows. One event per
/// rating segment (its own group), each opening the segment's day and
/// billing-period window, through rate and aggregate as the runtime drives
/// them (aggregate's window cache flushed before the commit). Returns the
/// windows store's bytes and the lineage store's bytes per event.
fn aggregate_state(cfg: &Config) -> (usize, usize) {
    let segments = STATE_OPEN_WINDOWS / 2;
    let enriched: Vec<Rec> = (0..segments)
        .map(|i| {
            let mut e = enriched_event(i as u64);
            e.event.measures[0].group = BTreeMap::from([("model".to_string(), format!("m-{i}"))]);
            Rec {
                key: e.event.subject.clone().into_bytes(),
                value: e.to_json_bytes().expect("enriched json"),
                headers: Vec::new(),
            }
        })
        .collect();
    let mut rated = Vec::new();
    let mut rate_stores = mem_stores();
    process_all(
        &mut rate_processor(cfg),
        &mut rate_stores,
        cfg,
        "bench.usage.enriched",
        &enriched,
        &mut rated,
    );
    let rated = outputs_to_recs(rated);
    let mut agg = AggregateProcessor::new(cfg);
    let mut stores = mem_stores();
    let mut out = Vec::new();
    process_all(
        &mut agg,
        &mut stores,
        cfg,
        "bench.usage.rated",
        &rated,
        &mut out,
    );
    flush_processor(&mut agg, &mut stores, cfg, "bench.usage.rated");
    stores.apply_committed(&[]).expect("commit");
    assert!(out.is_empty(), "no window closes");
    let spec = AggregateProcessor::new(cfg).spec();
    let id = |name: &str| spec.stores.iter().position(|s| *s == name).expect("store") as u8;
    let windows = store_bytes(&stores, id("windows"));
    let lineage = store_bytes(&stores, id("lineage"));
    assert!(windows > 0 && lineage > 0, "the stores were written");
    (windows, lineage / segments)
}

fn report_state(cfg: &Config) {
    let (windows, lineage_per_event) = aggregate_state(cfg);
    println!(
        "\nhot_paths: aggregate state per {} open windows: {} KB in the windows store \
         (keys + values, before compression); lineage {lineage_per_event} bytes per event\n",
        group_digits(STATE_OPEN_WINDOWS as f64, 0),
        group_digits(windows as f64 / 1024.0, 0),
    );
}

fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    let from_metadata = std::env::var_os("CARGO").and_then(|cargo| {
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(PathBuf::from(v["target_directory"].as_str()?).join("criterion"))
    });
    from_metadata.unwrap_or_else(|| PathBuf::from("target/criterion"))
}

/// Criterion's typical time per iteration (the slope of the linear
/// regression, else the mean), in ns, if `estimates.json` was written by
/// this run.
fn typical_ns(
    home: &std::path::Path,
    group: &str,
    function: &str,
    since: SystemTime,
) -> Option<f64> {
    let path = home
        .join(safe_name(group))
        .join(safe_name(function))
        .join("new/estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None; // stale: filtered out of this run
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    let estimate = |s: &str| v[s]["point_estimate"].as_f64();
    estimate("slope").or_else(|| estimate("mean"))
}

/// Criterion's directory-name sanitization.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '?' | '"' | '/' | '\\' | '*' | '<' | '>' | ':' | '|' | '^' => '_',
            c => c,
        })
        .collect()
}

fn report(plan: &Plan, since: SystemTime) {
    let home = criterion_home();
    let per_element: Vec<(String, u64, Option<f64>)> = plan
        .rows
        .iter()
        .map(|(g, f, n)| {
            (
                format!("{g}/{f}"),
                *n,
                typical_ns(&home, g, f, since).map(|ns| ns / *n as f64),
            )
        })
        .collect();
    let baseline_name = format!("{}/{}", BASELINE.0, BASELINE.1);
    let baseline = per_element
        .iter()
        .find(|(name, _, _)| *name == baseline_name)
        .and_then(|(_, _, ns)| *ns);
    let mut table = String::new();
    table.push_str(&format!(
        "| benchmark | batch | ns / element | elements / s | ratio to `{baseline_name}` |\n"
    ));
    table.push_str("|---|---:|---:|---:|---:|\n");
    for (name, n, ns) in &per_element {
        let Some(ns) = ns else { continue };
        let ratio = baseline.map_or("–".to_string(), |b| format!("{:.2}×", ns / b));
        table.push_str(&format!(
            "| {name} | {n} | {} | {} | {ratio} |\n",
            group_digits(*ns, 1),
            group_digits(1e9 / ns, 0),
        ));
    }
    println!(
        "\nhot_paths: time per element (criterion typical estimate / batch size), results in {}\n",
        home.display()
    );
    println!("{table}");
    if baseline.is_none() {
        println!("(no baseline in this run: ratios need `{baseline_name}`)");
    }
    let _ = std::fs::write(home.join("hot_paths-summary.md"), table);
}

/// `1234567.8` -> `1,234,567.8`.
fn group_digits(x: f64, decimals: usize) -> String {
    let text = format!("{x:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    match frac {
        Some(f) => format!("{grouped}.{f}"),
        None => grouped,
    }
}

/// A commit's writes to RocksDB as the runtime applies them: N new dedupe
/// entries (entry and expiry-index keys, as src/stages/dedupe/store.rs
/// builds them) and their lineage records (~500 bytes, what aggregate keeps
/// per event), one write batch with the checkpoint, into a database that
/// keeps growing. `commit` is how a stage writes by default (through
/// RocksDB's write-ahead log); `commit_without_log` with
/// `runtime.store_write_ahead_log = false`.
fn bench_store(c: &mut Criterion, plan: &mut Plan) {
    const LINEAGE_VALUE_BYTES: usize = 500;
    let lineage = vec![b'l'; LINEAGE_VALUE_BYTES];
    let mut g = c.benchmark_group("store");
    for (name, logged) in [("commit", true), ("commit_without_log", false)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut db = RocksBackend::open(
            &dir.path().join("db"),
            &StoreMemory::new(DEFAULT_STORE_MEMORY_MB),
        )
        .expect("open rocksdb")
        .with_write_ahead_log(logged);
        let mut seq = 0i64;
        g.throughput(plan.add("store", name, N));
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let (mut dedupe, mut lineage_writes) = (Writes::new(), Writes::new());
                    for _ in 0..N {
                        seq += 1;
                        let id = format!("evt-{seq:012}");
                        let entry = KeyBuilder::new(b'E').str(SOURCE).str(&id).build();
                        let expiry = KeyBuilder::new(b'X').i64(seq).str(SOURCE).str(&id).build();
                        dedupe.insert(entry, Some(seq.to_be_bytes().to_vec()));
                        dedupe.insert(expiry, Some(Vec::new()));
                        lineage_writes.insert(id.into_bytes(), Some(lineage.clone()));
                    }
                    (dedupe, lineage_writes, seq)
                },
                |(dedupe, lineage_writes, offset)| {
                    db.apply(
                        &[(0, &dedupe), (1, &lineage_writes)],
                        &[(0, offset), (1, offset)],
                    )
                    .expect("apply")
                },
                BatchSize::LargeInput,
            )
        });
    }
    bench_store_get(&mut g, plan);
    g.finish();
}

/// A point lookup of a key the store does not hold (a new event's dedupe
/// entry: most of dedupe's reads), with [`STORE_GET_KEYS`] keys written before,
/// so they sit in the memtable as recent keys do.
fn bench_store_get(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    plan: &mut Plan,
) {
    const STORE_GET_KEYS: i64 = 200_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut db = RocksBackend::open(
        &dir.path().join("db"),
        &StoreMemory::new(DEFAULT_STORE_MEMORY_MB),
    )
    .expect("open rocksdb");
    let mut writes = Writes::new();
    for seq in 0..STORE_GET_KEYS {
        let entry = KeyBuilder::new(b'E')
            .str(SOURCE)
            .str(&format!("evt-{seq:012}"))
            .build();
        writes.insert(entry, Some(seq.to_be_bytes().to_vec()));
    }
    db.apply(&[(0, &writes)], &[(0, STORE_GET_KEYS)])
        .expect("apply");
    let absent: Vec<Vec<u8>> = (0..N)
        .map(|i| {
            KeyBuilder::new(b'E')
                .str(SOURCE)
                .str(&format!("new-{i:012}"))
                .build()
        })
        .collect();
    g.throughput(plan.add("store", "get_miss", N));
    g.bench_function("get_miss", |b| {
        b.iter(|| {
            for k in &absent {
                assert!(db.get(0, k).expect("get").is_none());
            }
        })
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Without --bench (cargo test --benches) or with --test/--list, criterion
    // does not measure: no table then.
    let measuring =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    let since = SystemTime::now();
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut plan = Plan::default();
    bench_baseline(&mut c, &mut plan);
    bench_decode(&mut c, &mut plan);
    bench_validate(&mut c, &mut plan);
    bench_rating(&mut c, &mut plan);
    bench_rate(&mut c, &mut plan);
    bench_aggregate(&mut c, &mut plan);
    bench_post(&mut c, &mut plan);
    bench_json(&mut c, &mut plan);
    bench_store(&mut c, &mut plan);
    c.final_summary();
    if measuring {
        report(&plan, since);
    }
    // Cheap enough to run as the smoke test too.
    report_state(&config());
}
