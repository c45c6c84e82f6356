//! `meterline loadgen`: a seeded, reproducible stream of CloudEvents usage
//! events (about 200 bytes each) for demos, tests and benchmarks.
//!
//! The same seed and options give the same events in the same order (ids,
//! customers, values, which ones are duplicates or malformed), except `time`,
//! which is placed relative to the moment the run starts so events stay
//! within the validate stage's accepted window.

use std::io::Write;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::config::Config;
use crate::kafka::{self, ClientError};

/// Progress is reported this often.
const PROGRESS_INTERVAL_MS: u64 = 500;
const MS_PER_HOUR: i64 = 3_600_000;
/// Event times jitter backwards by up to this much around their place in the timeline.
const JITTER_MS: i64 = 60_000;

#[derive(Debug, Clone, clap::Args)]
pub struct LoadgenArgs {
    /// Number of events (duplicates and malformed ones included).
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Number of distinct customers (subjects).
    #[arg(long, default_value_t = 20)]
    pub customers: u32,
    /// Fraction of events that are exact re-sends of an earlier one.
    #[arg(long, default_value_t = 0.02)]
    pub duplicate_fraction: f64,
    /// Fraction of events that are malformed (several kinds).
    #[arg(long, default_value_t = 0.01)]
    pub malformed_fraction: f64,
    /// Events per second; 0 = as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Topic to produce to (namespace added).
    #[arg(long, default_value = "usage.events")]
    pub topic: String,
    /// Event times are spread over this many hours before now (days in the
    /// past give the aggregate stage windows to close).
    #[arg(long, default_value_t = 6)]
    pub spread_hours: u32,
    /// Fraction of events whose time lies far behind the stream (late usage).
    #[arg(long, default_value_t = 0.01)]
    pub late_fraction: f64,
    /// Only these event types (comma-separated; default: all five the
    /// bundled meters know). Benchmarks use a subset their meters file knows.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Write JSON lines to stdout instead of producing.
    #[arg(long)]
    pub stdout: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("writing: {0}")]
    Io(#[from] std::io::Error),
    #[error("--types: {0}")]
    Types(String),
}

/// What kind of event the generator made at one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Valid,
    Duplicate,
    Malformed(&'static str),
}

/// Kinds of malformed event, with the reason code validate gives them.
pub const MALFORMED: &[(&str, &str)] = &[
    ("malformed_json", "{\"specversion\":\"1.0\",\"id\":"),
    ("missing_attribute", ""),
    ("value_negative", ""),
    ("value_not_numeric", ""),
    ("unknown_event_type", ""),
];

/// One generated record.
#[derive(Debug, Clone)]
pub struct Generated {
    pub key: String,
    pub value: String,
    pub kind: Kind,
}

/// The deterministic generator.
pub struct Generator {
    rng: StdRng,
    seed: u64,
    customers: u32,
    duplicate_fraction: f64,
    malformed_fraction: f64,
    start: DateTime<Utc>,
    spread_ms: i64,
    count: u64,
    late_fraction: f64,
    n: u64,
    valid: Vec<(String, String)>,
    /// Indexes into TYPES this run draws from.
    types: Vec<usize>,
}

const TYPES: &[(&str, &str)] = &[
    ("llm.tokens", "tokens"),
    ("api.request", "region"),
    ("storage.snapshot", "bytes"),
    ("seats.active", "seats"),
    ("user.active", "user_id"),
];
const MODELS: &[&str] = &["small", "large", "vision"];
const REGIONS: &[&str] = &["eu", "us", "ap"];

impl Generator {
    pub fn new(
        seed: u64,
        customers: u32,
        duplicate_fraction: f64,
        malformed_fraction: f64,
        start: DateTime<Utc>,
    ) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            seed,
            customers: customers.max(1),
            duplicate_fraction,
            malformed_fraction,
            start,
            spread_ms: 6 * MS_PER_HOUR,
            count: 1,
            late_fraction: 0.0,
            n: 0,
            valid: Vec::new(),
            types: (0..TYPES.len()).collect(),
        }
    }

    /// Restricts the event types drawn (unknown names are refused).
    pub fn with_types(mut self, names: &[String]) -> Result<Self, String> {
        if names.is_empty() {
            return Ok(self);
        }
        let mut types = Vec::with_capacity(names.len());
        for n in names {
            match TYPES.iter().position(|(t, _)| t == n) {
                Some(i) => types.push(i),
                None => {
                    let known: Vec<&str> = TYPES.iter().map(|(t, _)| *t).collect();
                    return Err(format!(
                        "unknown event type {n:?} (known: {})",
                        known.join(", ")
                    ));
                }
            }
        }
        self.types = types;
        Ok(self)
    }

    fn event(&mut self, id: &str, subject: &str) -> String {
        // Indices drawn in range of the slices they index (here and below);
        // the defaults are never used.
        let drawn = self.rng.random_range(0..self.types.len());
        let (ty, _) = self
            .types
            .get(drawn)
            .and_then(|t| TYPES.get(*t))
            .copied()
            .unwrap_or_default();
        // Event time walks forward through the spread as the stream goes on
        // (telemetry arrives roughly in order), with a little jitter, and a
        // `late_fraction` of events arrive far behind (late usage).
        let spread = self.spread_ms.max(1);
        let progress =
            (self.n.min(self.count) as i64).saturating_mul(spread) / (self.count.max(1) as i64);
        let mut back_ms = (spread - progress + self.rng.random_range(0..JITTER_MS)).max(0);
        if self.rng.random::<f64>() < self.late_fraction {
            back_ms = back_ms.saturating_add(self.rng.random_range(0..spread / 2 + 1));
        }
        let time = (self.start - chrono::Duration::milliseconds(back_ms))
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let data = match ty {
            "llm.tokens" => format!(
                r#"{{"tokens":{},"model":"{}"}}"#,
                self.rng.random_range(1..5_000),
                MODELS
                    .get(self.rng.random_range(0..MODELS.len()))
                    .copied()
                    .unwrap_or_default()
            ),
            "api.request" => format!(
                r#"{{"region":"{}"}}"#,
                REGIONS
                    .get(self.rng.random_range(0..REGIONS.len()))
                    .copied()
                    .unwrap_or_default()
            ),
            "storage.snapshot" => format!(
                r#"{{"bytes":{}}}"#,
                self.rng.random_range(1_000_000u64..50_000_000_000)
            ),
            "seats.active" => format!(r#"{{"seats":{}}}"#, self.rng.random_range(1..500)),
            _ => format!(r#"{{"user_id":"u-{}"}}"#, self.rng.random_range(0..200)),
        };
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"loadgen/{}","type":"{ty}","subject":"{subject}","time":"{time}","data":{data}}}"#,
            self.seed
        )
    }

    /// Lays event times out over `count` events (earliest first), with
    /// `late_fraction` of them arriving far behind.
    pub fn with_timeline(mut self, count: u64, late_fraction: f64) -> Self {
        self.count = count.max(1);
        self.late_fraction = late_fraction;
        self
    }

    /// Spreads event times over `hours` before the start.
    pub fn with_spread_hours(mut self, hours: u32) -> Self {
        self.spread_ms = i64::from(hours.max(1)) * MS_PER_HOUR;
        self
    }

    /// The next record.
    pub fn next_record(&mut self) -> Generated {
        self.n += 1;
        let subject = format!("cust-{:04}", self.rng.random_range(0..self.customers));
        let roll: f64 = self.rng.random();
        if roll < self.malformed_fraction {
            let (code, _) = MALFORMED
                .get((self.n as usize) % MALFORMED.len())
                .copied()
                .unwrap_or_default();
            let id = format!("bad-{}-{}", self.seed, self.n);
            let value = match code {
                "malformed_json" => r#"{"specversion":"1.0","id":"#.to_string(),
                "missing_attribute" => self
                    .event(&id, &subject)
                    .replace(r#""source":"#, r#""sauce":"#),
                "value_negative" => format!(
                    r#"{{"specversion":"1.0","id":"{id}","source":"loadgen/{}","type":"llm.tokens","subject":"{subject}","time":"{}","data":{{"tokens":-3,"model":"small"}}}}"#,
                    self.seed,
                    self.start
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
                "value_not_numeric" => format!(
                    r#"{{"specversion":"1.0","id":"{id}","source":"loadgen/{}","type":"seats.active","subject":"{subject}","time":"{}","data":{{"seats":"many"}}}}"#,
                    self.seed,
                    self.start
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                ),
                _ => self
                    .event(&id, &subject)
                    .replacen(r#""type":""#, r#""type":"unknown."#, 1),
            };
            return Generated {
                key: subject,
                value,
                kind: Kind::Malformed(code),
            };
        }
        if roll < self.malformed_fraction + self.duplicate_fraction && !self.valid.is_empty() {
            let i = self.rng.random_range(0..self.valid.len());
            let (key, value) = self.valid.get(i).cloned().unwrap_or_default();
            return Generated {
                key,
                value,
                kind: Kind::Duplicate,
            };
        }
        let id = format!("evt-{}-{}", self.seed, self.n);
        let value = self.event(&id, &subject);
        self.valid.push((subject.clone(), value.clone()));
        Generated {
            key: subject,
            value,
            kind: Kind::Valid,
        }
    }
}

/// Counts of what was generated.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LoadgenSummary {
    pub valid: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

pub fn run(config: &Config, args: &LoadgenArgs) -> Result<LoadgenSummary, LoadgenError> {
    let mut generator = Generator::new(
        args.seed,
        args.customers,
        args.duplicate_fraction,
        args.malformed_fraction,
        Utc::now(),
    )
    .with_spread_hours(args.spread_hours)
    .with_timeline(args.count, args.late_fraction)
    .with_types(&args.types)
    .map_err(LoadgenError::Types)?;
    let topic = config.topic(&args.topic);
    let producer: Option<BaseProducer> = if args.stdout {
        None
    } else {
        let p: BaseProducer = kafka::producer_config(config)
            .set("linger.ms", "20")
            .create()
            .map_err(|e| ClientError::Config(e.to_string()))?;
        let md = kafka::metadata(p.client(), config, Some(&topic))?;
        kafka::partition_count(&md, &topic, config)?;
        Some(p)
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut summary = LoadgenSummary::default();
    let t0 = Instant::now();
    let mut last = Instant::now();
    for i in 0..args.count {
        let g = generator.next_record();
        match g.kind {
            Kind::Valid => summary.valid += 1,
            Kind::Duplicate => summary.duplicates += 1,
            Kind::Malformed(_) => summary.malformed += 1,
        }
        match &producer {
            None => writeln!(out, "{}", g.value)?,
            Some(p) => {
                let rec: BaseRecord<'_, str, str> = BaseRecord::to(&topic)
                    .key(g.key.as_str())
                    .payload(g.value.as_str());
                crate::kafka::send_waiting(p, rec)?;
                p.poll(Duration::ZERO);
            }
        }
        if args.rate > 0 {
            let due = Duration::from_secs_f64((i + 1) as f64 / args.rate as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if last.elapsed() >= Duration::from_millis(PROGRESS_INTERVAL_MS) {
            last = Instant::now();
            let secs = t0.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\rloadgen: {}/{} events ({:.0}%), {:.0} events/s   ",
                i + 1,
                args.count,
                100.0 * (i + 1) as f64 / args.count.max(1) as f64,
                (i + 1) as f64 / secs
            );
        }
    }
    if let Some(p) = &producer {
        p.flush(Duration::from_secs(60))?;
    }
    out.flush()?;
    eprintln!(
        "\rloadgen: {} events: {} valid, {} duplicates, {} malformed in {:.1} s              ",
        args.count,
        summary.valid,
        summary.duplicates,
        summary.malformed,
        t0.elapsed().as_secs_f64()
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let start = Utc::now();
        let mut a = Generator::new(7, 5, 0.1, 0.1, start);
        let mut b = Generator::new(7, 5, 0.1, 0.1, start);
        for _ in 0..1_000 {
            let (x, y) = (a.next_record(), b.next_record());
            assert_eq!((x.key, x.value, x.kind), (y.key, y.value, y.kind));
        }
    }

    #[test]
    fn types_restrict_the_event_types() {
        let mut g = Generator::new(3, 5, 0.0, 0.0, Utc::now())
            .with_types(&["api.request".to_string()])
            .unwrap();
        for _ in 0..200 {
            assert!(g.next_record().value.contains(r#""type":"api.request""#));
        }
        assert!(Generator::new(3, 5, 0.0, 0.0, Utc::now())
            .with_types(&["nope".to_string()])
            .is_err());
    }

    #[test]
    fn events_are_about_200_bytes_and_kinds_match_fractions() {
        let mut g = Generator::new(1, 20, 0.05, 0.02, Utc::now());
        let mut sizes = 0usize;
        let mut kinds = (0, 0, 0);
        for _ in 0..10_000 {
            let r = g.next_record();
            sizes += r.value.len();
            match r.kind {
                Kind::Valid => kinds.0 += 1,
                Kind::Duplicate => kinds.1 += 1,
                Kind::Malformed(_) => kinds.2 += 1,
            }
        }
        let avg = sizes / 10_000;
        assert!((150..=260).contains(&avg), "average size {avg}");
        assert!((400..600).contains(&kinds.1), "{kinds:?}");
        assert!((150..250).contains(&kinds.2), "{kinds:?}");
    }
}
