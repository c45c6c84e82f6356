//! `meterline export` against the real broker: rated events produced onto a
//! namespaced `usage.rated` (built from the contract), exported with
//! `--until-caught-up`, then read back with pyarrow and DuckDB (the venv
//! deploy/local/deps installs: ~/.cache/meterline/venv, or
//! $METERLINE_TEST_PYTHON).
//!
//! * Every measure is one row; the sum of the DECIMAL amount column is the
//!   exact rated total; amounts and quantities are decimals, not floats; a
//!   28-decimal amount is NULL in the decimal column and exact in its text.
//! * SIGKILL mid-run, then a second run: exactly the rated measures, no
//!   duplicate (source, id, meter), no temp file left.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use meterline::calendar::{self, BillingPeriod, LocalDay};
use meterline::contracts::{rating_segment_id, rating_segment_key, RatedEvent};
use rust_decimal::Decimal;
use serde_json::{json, Value};

const TZ: &str = "America/New_York";
const ANCHOR: u8 = 1;
/// An amount with 28 fractional digits: too fine for DECIMAL(38,20).
const TOO_FINE: &str = "0.0000000000000000000000000007";

fn window(id: String, start: DateTime<Utc>, end: DateTime<Utc>) -> Value {
    json!({"id": id, "start": start.to_rfc3339(), "end": end.to_rfc3339()})
}

/// The `i`-th rated event: times spread over three UTC days around local
/// midnight, one or two measures, amounts with up to 20 decimals.
fn rated(i: usize, amount_override: Option<&str>) -> RatedEvent {
    let t0 = DateTime::parse_from_rfc3339("2026-01-09T20:00:00Z")
        .unwrap()
        .to_utc();
    let time = t0 + TimeDelta::seconds((i as i64 * 997) % (3 * 86_400));
    let tz = calendar::parse_tz(TZ).unwrap();
    let day = LocalDay::containing(tz, time).unwrap();
    let period = BillingPeriod::containing(ANCHOR, tz, time).unwrap();
    let customer = format!("cust-{}", i % 7);
    let sub = format!("sub-{}", i % 7);
    let meters: &[&str] = if i.is_multiple_of(3) {
        &["tokens", "requests"]
    } else {
        &["tokens"]
    };
    let mut measures = Vec::new();
    let mut charges = Vec::new();
    let mut ev_measures = Vec::new();
    for (k, meter) in meters.iter().enumerate() {
        let group = std::collections::BTreeMap::new();
        let key = rating_segment_key(&sub, meter, &period.id(), 2, &group);
        let sign = if i.is_multiple_of(4) { "-" } else { "" };
        let amount = amount_override
            .map(str::to_string)
            .unwrap_or_else(|| format!("{sign}{}.{:020}", i % 5, i * 7919 + k));
        measures.push(json!({
            "meter": meter, "segment_key": key, "segment_id": rating_segment_id(&key),
            "plan_version": 2, "aggregation": "SUM",
            "quantity_before": format!("{i}.5"), "quantity_after": format!("{}.75", i + 1),
            "marginal_quantity": "1.25", "marginal_amount": amount,
        }));
        charges.push(json!({"meter": meter, "aggregation": "SUM",
            "charge": {"model": "per_unit", "unit_price": "0.003"}, "source": "plan",
            "tax_code": null, "unit": null}));
        ev_measures
            .push(json!({"meter": meter, "value": "1.25", "unique_value": null, "group": {}}));
    }
    let v = json!({
        "source": "svc/export", "id": format!("evt-{i}"), "customer_id": customer,
        "measures": measures,
        "enriched": {
            "event": {"source": "svc/export", "id": format!("evt-{i}"), "type": "llm.call",
                "subject": customer, "time": time.to_rfc3339(), "measures": ev_measures,
                "data": {}, "origin": {"topic": "usage.events", "partition": 0, "offset": i,
                "encoding": "structured"}},
            "customer": {"id": customer, "name": "C", "legal_entity": "le", "erp_customer_id": "E"},
            "subscription_id": sub, "plan_id": "pro", "plan_version": 2, "currency": "USD",
            "legal_entity": "ml-us", "time_zone": TZ, "billing_anchor_day": ANCHOR,
            "subscription_end": null,
            "billing_period": window(period.id(), period.start(), period.end()),
            "local_day": window(day.id(), day.start(), day.end()),
            "gl_accounts": {"usage_revenue": "4010", "unbilled_receivable": "1210", "receivable": "1200"},
            "tax_code": null, "minimum_commitment": null, "base_fee": null,
            "charges": charges,
        }
    });
    serde_json::from_value(v).unwrap()
}

fn produce_rated(w: &World, events: &[RatedEvent]) {
    let records: Vec<Record> = events
        .iter()
        .map(|e| {
            (
                Some(e.customer_id.clone().into_bytes()),
                Some(e.to_json_bytes().unwrap()),
                vec![],
            )
        })
        .collect();
    produce(&w.topic("usage.rated"), &records);
}

fn python() -> PathBuf {
    std::env::var("METERLINE_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/meterline/venv/bin/python")
        })
}

/// Reads the export with pyarrow (types, exact sums) and DuckDB (count,
/// sum, the way the README shows).
const READER: &str = r#"
import decimal, json, sys
import pyarrow as pa, pyarrow.dataset as ds, duckdb
decimal.getcontext().prec = 120
root = sys.argv[1]
t = ds.dataset(root, format="parquet", partitioning="hive").to_table()
amount = t.column("marginal_amount")
nonnull = [v for v in amount.to_pylist() if v is not None]
texts = t.column("marginal_amount_text").to_pylist()
keys = list(zip(t.column("source").to_pylist(), t.column("id").to_pylist(), t.column("meter").to_pylist()))
db = duckdb.sql(f"SELECT count(*), sum(marginal_amount)::VARCHAR, typeof(any_value(marginal_amount)), "
                f"count(DISTINCT event_date) FROM read_parquet('{root}/**/*.parquet', hive_partitioning=true)").fetchall()[0]
null_texts = [texts[i] for i, v in enumerate(amount.to_pylist()) if v is None]
print(json.dumps({
  "rows": t.num_rows,
  "distinct_keys": len(set(keys)),
  "types": {f.name: str(f.type) for f in t.schema},
  "amount_sum": str(sum(nonnull, decimal.Decimal(0))),
  "text_sum": str(sum((decimal.Decimal(x) for x in texts), decimal.Decimal(0))),
  "null_amount_texts": null_texts,
  "duckdb": [db[0], db[1], db[2], db[3]],
  "day_of": dict(zip(t.column("id").to_pylist(), t.column("day_window_id").to_pylist())),
}))
"#;

fn read_export(dir: &Path) -> Value {
    let out = std::process::Command::new(python())
        .arg("-c")
        .arg(READER)
        .arg(dir)
        .output()
        .expect("python3 venv with pyarrow and duckdb (deploy/local/deps installs it)");
    assert!(
        out.status.success(),
        "reading the export with pyarrow/duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn export(w: &World, dir: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "export",
        "--until-caught-up",
        "--dir",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = w.run(&args);
    assert!(
        out.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn total(events: &[RatedEvent]) -> Decimal {
    events
        .iter()
        .flat_map(|e| &e.measures)
        .map(|m| m.marginal_amount)
        .sum()
}

fn measures(events: &[RatedEvent]) -> usize {
    events.iter().map(|e| e.measures.len()).sum()
}

fn files_named(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_named(&path, found);
        } else {
            found.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn export_writes_every_measure_once_with_exact_decimal_amounts() {
    let w = World::new("export", "");
    w.apply();
    let mut events: Vec<RatedEvent> = (0..300).map(|i| rated(i, None)).collect();
    events.push(rated(300, Some(TOO_FINE)));
    produce_rated(&w, &events);
    let dir = w.dir.path().join("export");
    let out = export(&w, &dir, &["--batch-events", "50"]);
    let summary = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        summary.contains("0 events outside the calendar, 0 with windows other than enrich's"),
        "{summary}"
    );
    let too_fine = events[300].measures.len();
    assert!(
        summary.contains(&format!("{too_fine} values not fitting")),
        "{summary}"
    );

    let r = read_export(&dir);
    assert_eq!(
        r["rows"].as_u64().unwrap() as usize,
        measures(&events),
        "{r}"
    );
    assert_eq!(r["distinct_keys"], r["rows"]);
    let exact = total(&events);
    let fine: Decimal = events[..300]
        .iter()
        .flat_map(|e| &e.measures)
        .map(|m| m.marginal_amount)
        .sum();
    let parse = |v: &Value| Decimal::from_str(v.as_str().unwrap()).unwrap();
    assert_eq!(parse(&r["amount_sum"]), fine, "{r}");
    assert_eq!(parse(&r["text_sum"]), exact, "{r}");
    assert_eq!(parse(&r["duckdb"][1]), fine, "{r}");
    assert_eq!(r["duckdb"][0].as_u64().unwrap() as usize, measures(&events));
    assert_eq!(r["duckdb"][2], "DECIMAL(38,20)");
    assert_eq!(r["duckdb"][3], 4, "Jan 9 to 12 UTC: {}", r["duckdb"]);
    assert_eq!(r["null_amount_texts"], json!(vec![TOO_FINE; too_fine]));
    assert_eq!(r["types"]["marginal_amount"], "decimal128(38, 20)");
    for q in ["quantity_before", "quantity_after", "marginal_quantity"] {
        assert_eq!(r["types"][q], "decimal128(38, 18)", "{q}");
    }
    for (name, ty) in r["types"].as_object().unwrap() {
        let ty = ty.as_str().unwrap();
        assert!(
            !ty.contains("float") && !ty.contains("double"),
            "{name}: {ty}"
        );
    }
    // 2026-01-10T03:00Z is still Jan 9 in New York.
    let e = events
        .iter()
        .find(|e| {
            e.enriched
                .event
                .time
                .to_rfc3339()
                .starts_with("2026-01-10T03")
        })
        .unwrap();
    assert_eq!(r["day_of"][&e.id], e.enriched.local_day.id.as_str());
    assert_eq!(e.enriched.local_day.id, "2026-01-09");

    // A second run finds nothing new and writes nothing.
    let again = export(&w, &dir, &[]);
    assert!(String::from_utf8_lossy(&again.stdout).starts_with("export: 0 events, 0 rows, 0 files"));
    assert_eq!(read_export(&dir)["rows"], r["rows"]);
}

#[test]
fn a_killed_export_leaves_no_duplicate_no_partial_file_and_catches_up() {
    let w = World::new("export_kill", "");
    w.apply();
    let events: Vec<RatedEvent> = (0..20_000).map(|i| rated(i, None)).collect();
    produce_rated(&w, &events);
    let dir = w.dir.path().join("export");
    let mut child = Stage(
        w.cmd()
            .args([
                "export",
                "--until-caught-up",
                "--batch-events",
                "300",
                "--dir",
            ])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    while !dir.join("_progress").is_dir()
        || std::fs::read_dir(dir.join("_progress")).unwrap().count() == 0
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no marker appeared"
        );
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "export ended before its first marker"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "export finished before it could be killed: make the input larger"
    );
    kill9(&mut child);

    export(&w, &dir, &["--batch-events", "700"]);
    let r = read_export(&dir);
    assert_eq!(
        r["rows"].as_u64().unwrap() as usize,
        measures(&events),
        "{}",
        r["duckdb"]
    );
    assert_eq!(
        r["distinct_keys"], r["rows"],
        "duplicate (source, id, meter)"
    );
    assert_eq!(
        Decimal::from_str(r["amount_sum"].as_str().unwrap()).unwrap(),
        total(&events)
    );
    let mut names = Vec::new();
    files_named(&dir, &mut names);
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with('.') && !n.ends_with(".tmp")),
        "temp files left: {names:?}"
    );
}

/// An S3-compatible server (moto's standalone server, installed by
/// deploy/local/deps) on a free port, stopped when dropped.
struct S3Server {
    child: std::process::Child,
    port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_server() -> S3Server {
    let bin = std::env::var("METERLINE_TEST_MOTO")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap())
                .join(".cache/meterline/venv-moto/bin/moto_server")
        });
    let port = free_port();
    let child = std::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{} (deploy/local/deps installs it): {e}", bin.display()));
    let server = S3Server { child, port };
    wait_until("the S3 server", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    server
}

/// Creates the bucket, or reads the export back from it, with pyarrow's S3
/// file system.
const S3_READER: &str = r#"
import decimal, json, sys
import pyarrow.dataset as ds, pyarrow.fs as pafs
port, what = sys.argv[1], sys.argv[2]
fs = pafs.S3FileSystem(access_key="test", secret_key="test", region="us-east-1",
                       endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True)
if what == "create":
    fs.create_dir("meterline-history")
    print("{}")
    sys.exit(0)
names = [f.path for f in fs.get_file_info(pafs.FileSelector("meterline-history/hist", recursive=True))]
t = ds.dataset("meterline-history/hist", filesystem=fs, format="parquet", partitioning="hive",
               exclude_invalid_files=True, ignore_prefixes=["_", "."]).to_table()
amount = [v for v in t.column("marginal_amount").to_pylist() if v is not None]
keys = list(zip(t.column("source").to_pylist(), t.column("id").to_pylist(), t.column("meter").to_pylist()))
print(json.dumps({
  "rows": t.num_rows,
  "distinct_keys": len(set(keys)),
  "amount_type": str(t.schema.field("marginal_amount").type),
  "amount_sum": str(sum(amount, decimal.Decimal(0))),
  "temp_files": [n for n in names if n.rsplit("/", 1)[-1].startswith(".")],
  "markers": len([n for n in names if "/_progress/" in n]),
}))
"#;

fn s3_python(port: u16, what: &str) -> Value {
    let out = std::process::Command::new(python())
        .args(["-c", S3_READER, &port.to_string(), what])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn export_to_s3(w: &World, port: u16) -> std::process::Output {
    let out = w
        .cmd()
        .args([
            "export",
            "--until-caught-up",
            "--batch-events",
            "40",
            "--url",
            "s3://meterline-history/hist",
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_ALLOW_HTTP", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "export to S3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn export_to_an_s3_compatible_store_writes_every_measure_once() {
    let s3 = s3_server();
    s3_python(s3.port, "create");
    let w = World::new("exports3", "");
    w.apply();
    let events: Vec<RatedEvent> = (0..150).map(|i| rated(i, None)).collect();
    produce_rated(&w, &events);
    export_to_s3(&w, s3.port);
    // A second run finds everything exported and writes nothing.
    export_to_s3(&w, s3.port);
    let r = s3_python(s3.port, "read");
    assert_eq!(
        r["rows"].as_u64().unwrap() as usize,
        measures(&events),
        "{r}"
    );
    assert_eq!(r["distinct_keys"], r["rows"], "{r}");
    assert_eq!(r["amount_type"], "decimal128(38, 20)");
    assert_eq!(
        Decimal::from_str(r["amount_sum"].as_str().unwrap()).unwrap(),
        total(&events),
        "{r}"
    );
    assert_eq!(r["temp_files"], json!([]), "{r}");
    assert!(r["markers"].as_u64().unwrap() >= 1, "{r}");
}
