//! Configuration: one TOML file plus environment overrides.
//!
//! Every key is declared; an unknown key is an error that names it (a typo in
//! `dedupe_horizon_days` must not silently fall back to a default that changes
//! what finance is billed). Two kinds of environment override exist:
//!
//! * `METERLINE__<SECTION>__<KEY>=value` sets any key of the file
//!   (`METERLINE__RUNTIME__COMMIT_INTERVAL_MS=250`). The value is parsed as TOML
//!   when it can be (numbers, booleans, arrays) and taken as a string otherwise.
//! * `METERLINE_KAFKA__<PROPERTY>=value` sets a librdkafka client property for
//!   every client, `_` standing for `.` (`METERLINE_KAFKA__SASL_MECHANISM=PLAIN`
//!   sets `sasl.mechanism`). librdkafka property names contain no `_`, so the
//!   mapping is unambiguous. This is how secrets reach the clients without being
//!   written into the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod api;
pub use api::{ApiConfig, ApiKeyConfig, ApiScope};
mod ledger;
pub use ledger::{check_schema_name, LedgerConfig};
mod export;
pub use export::{
    ExportConfig, DEFAULT_EXPORT_AMOUNT_SCALE, DEFAULT_EXPORT_BATCH_EVENTS,
    DEFAULT_EXPORT_BATCH_MAX_MS, DEFAULT_EXPORT_QUANTITY_SCALE, EXPORT_DECIMAL_PRECISION,
};
mod invoice;
pub use invoice::{
    ApprovalMode, InvoiceConfig, TaxMode, DEFAULT_INVOICE_WAIT_TIMEOUT_S, INVOICE_DOC_MAX_BYTES,
    MAX_COMMAND_REASON_BYTES,
};

use crate::meter::Meter;
use crate::money::RoundingMode;

/// Prefix of the environment variables that override file keys.
pub const ENV_PREFIX: &str = "METERLINE__";
const SECONDS_PER_DAY: u64 = 86_400;

/// The librdkafka property bounding one produced record.
pub const MESSAGE_MAX_BYTES_PROPERTY: &str = "message.max.bytes";
/// librdkafka's default `message.max.bytes`.
pub const LIBRDKAFKA_DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// Room for a record batch's own header around one record.
pub const RECORD_BATCH_OVERHEAD_BYTES: usize = 4 * 1024;

/// Prefix of the environment variables that set librdkafka properties.
pub const ENV_KAFKA_PREFIX: &str = "METERLINE_KAFKA__";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
}

/// The whole configuration of one meterline process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub kafka: KafkaConfig,
    #[serde(default)]
    pub registry: Option<RegistryConfig>,
    #[serde(default)]
    pub topology: TopologyConfig,
    #[serde(default)]
    pub runtime: RuntimeConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub validate: ValidateConfig,
    #[serde(default)]
    pub rate: RateConfig,
    #[serde(default)]
    pub lineage: LineageConfig,
    #[serde(default)]
    pub aggregate: AggregateConfig,
    #[serde(default)]
    pub post: PostConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub invoice: InvoiceConfig,
    #[serde(default)]
    pub ledger: LedgerConfig,
    #[serde(default)]
    pub export: ExportConfig,
    /// Filled from `topology.meters_file` after loading; not a file key.
    #[serde(skip)]
    pub meters: Vec<Meter>,
    /// Directory of the config file; relative paths in it are resolved from here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    #[serde(default = "defaults::bootstrap_servers")]
    pub bootstrap_servers: String,
    /// librdkafka properties for every client (security.protocol, sasl.*, ssl.*, ...).
    #[serde(default)]
    pub client: BTreeMap<String, String>,
    /// librdkafka properties for consumers only.
    #[serde(default)]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for producers only.
    #[serde(default)]
    pub producer: BTreeMap<String, String>,
    /// How long an admin or metadata request may take before the broker is
    /// reported unreachable.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: defaults::bootstrap_servers(),
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
            request_timeout_ms: defaults::request_timeout_ms(),
        }
    }
}

/// A Confluent-compatible schema registry, for the Avro encodings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL of the Confluent REST API, e.g. `http://127.0.0.1:8081`.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyConfig {
    /// Topic declarations (relative to the config file).
    #[serde(default = "defaults::topics_file")]
    pub topics_file: PathBuf,
    /// Meter declarations (relative to the config file).
    #[serde(default = "defaults::meters_file")]
    pub meters_file: PathBuf,
    /// Avro schemas registered by `topology apply` when a registry is configured.
    #[serde(default = "defaults::schemas_dir")]
    pub schemas_dir: PathBuf,
    /// Prefix put before every topic name and consumer group id, so that several
    /// pipelines (or test runs) can share one cluster. Empty in production.
    #[serde(default)]
    pub namespace: String,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            topics_file: defaults::topics_file(),
            meters_file: defaults::meters_file(),
            schemas_dir: defaults::schemas_dir(),
            namespace: String::new(),
        }
    }
}

/// Settings of the exactly-once stage runtime, shared by every stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// A transaction is committed at least this often while records flow.
    #[serde(default = "defaults::commit_interval_ms")]
    pub commit_interval_ms: u64,
    /// ... or when it holds this many input records.
    #[serde(default = "defaults::max_batch_records")]
    pub max_batch_records: usize,
    /// Where the RocksDB stores live.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// Memory all RocksDB stores of one process share, in MiB: one block
    /// cache holding data, index and filter blocks, with the memtables
    /// charged against it (half of it at most before they are flushed).
    /// Bounds a stage process's store memory whatever its state on disk.
    #[serde(default = "defaults::store_memory_mb")]
    pub store_memory_mb: usize,
    /// Write the stores through RocksDB's write-ahead log (default). Off
    /// loses nothing: the stores are a cache of their changelogs and each
    /// write carries its changelog checkpoint, so a crash only loses the
    /// newest writes with their checkpoint and the restore reads them again
    /// (at most the unflushed memtables, half of `store_memory_mb`); it
    /// saved no measurable CPU on 2026-12-06 (README, "Exactly-once and
    /// state").
    #[serde(default = "defaults::store_write_ahead_log")]
    pub store_write_ahead_log: bool,
    /// Stable identity of this process; part of the transactional.id, so a
    /// restarted instance fences its previous incarnation and aborts its open
    /// transaction at once instead of waiting for the transaction timeout.
    #[serde(default = "defaults::instance_id")]
    pub instance_id: String,
    /// Broker-side timeout of an open transaction (aborted after it).
    #[serde(default = "defaults::transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// How long a blocking transaction call (init, commit, abort) may take.
    #[serde(default = "defaults::transaction_call_timeout_ms")]
    pub transaction_call_timeout_ms: u64,
    /// Consumer group session timeout: how soon a dead instance's partitions move.
    #[serde(default = "defaults::session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// How long restoring one store partition from its changelog may take.
    #[serde(default = "defaults::restore_timeout_ms")]
    pub restore_timeout_ms: u64,
    /// `exactly_once` (default): outputs, changelogs and offsets in one Kafka
    /// transaction. `at_least_once`: an idempotent, non-transactional producer;
    /// each commit point flushes, then commits the consumer offsets (a crash
    /// may re-emit what was sent since the last commit). For measuring what
    /// exactly-once costs; postings may be duplicated after a failure.
    #[serde(default)]
    pub processing_guarantee: ProcessingGuarantee,
    /// Static group membership (`group.instance.id = <group>.<instance_id>`):
    /// a restarted instance gets its partitions back at once, without a
    /// rebalance or waiting for the session timeout. But a stopped instance
    /// does not leave the group: its partitions move only after
    /// `session_timeout_ms`. Needs a unique, stable `instance_id` per instance.
    #[serde(default)]
    pub static_membership: bool,
}

/// What a stage guarantees about its outputs (see [`RuntimeConfig`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessingGuarantee {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            commit_interval_ms: defaults::commit_interval_ms(),
            max_batch_records: defaults::max_batch_records(),
            state_dir: defaults::state_dir(),
            store_memory_mb: defaults::store_memory_mb(),
            store_write_ahead_log: defaults::store_write_ahead_log(),
            instance_id: defaults::instance_id(),
            transaction_timeout_ms: defaults::transaction_timeout_ms(),
            transaction_call_timeout_ms: defaults::transaction_call_timeout_ms(),
            session_timeout_ms: defaults::session_timeout_ms(),
            restore_timeout_ms: defaults::restore_timeout_ms(),
            processing_guarantee: ProcessingGuarantee::default(),
            static_membership: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`; empty disables the server.
    #[serde(default = "defaults::listen_addr")]
    pub listen_addr: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen_addr: defaults::listen_addr(),
        }
    }
}

/// Settings of the validate stage (see `stages::validate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidateConfig {
    /// Events whose `time` is older than now minus this are rejected.
    #[serde(default = "defaults::max_event_age_days")]
    pub max_event_age_days: u32,
    /// Events whose `time` is later than now plus this are rejected.
    #[serde(default = "defaults::max_clock_skew_s")]
    pub max_clock_skew_s: u32,
    /// A copy of (`source`, `id`) seen within this horizon is a duplicate.
    #[serde(default = "defaults::dedupe_horizon_days")]
    pub dedupe_horizon_days: u32,
    /// Sources allowed to send events; empty allows all. `prefix*` matches a prefix.
    #[serde(default)]
    pub allowed_sources: Vec<String>,
    /// source -> HMAC-SHA256 key (hex). Events from such a source must be signed.
    #[serde(default)]
    pub hmac_keys_hex: BTreeMap<String, String>,
    /// Header carrying the hex HMAC-SHA256 signature (see the README, "Signing").
    #[serde(default = "defaults::signature_header")]
    pub signature_header: String,
    /// Refuse (`signature_required`) events from a source that has no key in
    /// `hmac_keys_hex`: with it, every accepted event is signed.
    #[serde(default)]
    pub require_signature: bool,
    /// Largest input record accepted (key + value + header keys and values),
    /// in bytes; a larger one is dead-lettered as `event_too_large`. Must be
    /// below the producer's `message.max.bytes`, so that what validate emits
    /// for an accepted event always fits in one Kafka record.
    #[serde(default = "defaults::max_event_bytes")]
    pub max_event_bytes: usize,
    /// CloudEvents `type` of a retraction: `data` names an accepted event,
    /// `{"source": ..., "id": ..., "time"?: ...}`, whose contribution is
    /// removed (README, "Corrections"). No meter may consume this type.
    #[serde(default = "defaults::retract_type")]
    pub retract_type: String,
    /// CloudEvents `type` of an amendment: `data` is a retraction's plus
    /// `"event"`, the replacement CloudEvent; both are applied or neither.
    #[serde(default = "defaults::amend_type")]
    pub amend_type: String,
    /// Sources whose retractions and amendments may correct another
    /// source's events (`prefix*` matches a prefix). Unset: any source may
    /// correct any source's events. Set: a source not listed may correct
    /// only its own (`correction_source_not_permitted`); `[]`: every source
    /// only its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction_sources: Option<Vec<String>>,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            max_event_age_days: defaults::max_event_age_days(),
            max_clock_skew_s: defaults::max_clock_skew_s(),
            dedupe_horizon_days: defaults::dedupe_horizon_days(),
            allowed_sources: Vec::new(),
            hmac_keys_hex: BTreeMap::new(),
            signature_header: defaults::signature_header(),
            require_signature: false,
            max_event_bytes: defaults::max_event_bytes(),
            retract_type: defaults::retract_type(),
            amend_type: defaults::amend_type(),
            correction_sources: None,
        }
    }
}

/// Lineage kept by the stages and queried by `meterline lineage` (see
/// `crate::lineage`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineageConfig {
    /// Lineage entries are dropped this many days after their first write.
    #[serde(default = "defaults::lineage_retention_days")]
    pub retention_days: u32,
    /// Base URLs of the instances `meterline lineage` asks (each serves the
    /// partitions it owns); empty: this config's `http.listen_addr`.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

impl Default for LineageConfig {
    fn default() -> Self {
        LineageConfig {
            retention_days: defaults::lineage_retention_days(),
            endpoints: Vec::new(),
        }
    }
}

/// Settings of the rate stage (see `stages::rate`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateConfig {
    /// A rating segment's cumulative state is released this many days after
    /// its billing period ends; a later event for it is dead-lettered
    /// (`segment_expired`) instead of being priced from zero. Must exceed
    /// `validate.max_event_age_days`. Unset: that plus
    /// [`SEGMENT_RETENTION_MARGIN_DAYS`].
    #[serde(default)]
    pub segment_retention_days: Option<u32>,
    /// MAX and LATEST segments keep up to this many observations so that a
    /// retraction can fall back on the others; a segment with more refuses
    /// retractions (`retraction_unsupported`). Unset:
    /// [`DEFAULT_CORRECTION_HISTORY_MAX`]; at most
    /// [`CORRECTION_HISTORY_MAX_LIMIT`] (a retraction reads them all).
    #[serde(default)]
    pub correction_history_max: Option<u32>,
}

/// Default of `rate.correction_history_max`, in observations per segment.
pub const DEFAULT_CORRECTION_HISTORY_MAX: u32 = 1_000;
/// The largest `rate.correction_history_max` accepted.
pub const CORRECTION_HISTORY_MAX_LIMIT: u32 = 10_000;

/// Days a rating segment outlives the oldest acceptable event by default:
/// room for events parked on `usage.exceptions` and healed later.
pub const SEGMENT_RETENTION_MARGIN_DAYS: u32 = 25;

/// Settings of the aggregate stage (see `stages::aggregate`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregateConfig {
    /// How long after the greatest event time seen a window stays open for
    /// late events: `watermark = greatest event time - grace_period_s`.
    #[serde(default = "defaults::grace_period_s")]
    pub grace_period_s: u32,
    /// Wall-clock seconds without input after which a partition's watermark
    /// advances by the wall clock (`now - grace_period_s`).
    #[serde(default = "defaults::idle_advance_s")]
    pub idle_advance_s: u32,
    /// Cut-over instant (RFC 3339): billing periods ending at or before it
    /// are not closed by the subscription walk (they were billed before
    /// meterline took over); unset, every period from each subscription's
    /// start closes. Usage in such a period is still billed.
    #[serde(
        default,
        with = "crate::refdata::serde_with::optional_rfc3339_utc",
        skip_serializing_if = "Option::is_none"
    )]
    pub periods_from: Option<chrono::DateTime<chrono::Utc>>,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            grace_period_s: defaults::grace_period_s(),
            idle_advance_s: defaults::idle_advance_s(),
            periods_from: None,
        }
    }
}

/// Settings of the post stage (see `stages::post`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostConfig {
    /// How every posted amount is rounded to the currency's minor unit:
    /// half_even | half_up | half_down | up | down | ceiling | floor.
    #[serde(default = "defaults::rounding_mode")]
    pub rounding_mode: RoundingMode,
}

impl Default for PostConfig {
    fn default() -> Self {
        PostConfig {
            rounding_mode: defaults::rounding_mode(),
        }
    }
}

pub(crate) mod defaults {
    use std::path::PathBuf;

    use crate::money::RoundingMode;

    pub const BOOTSTRAP_SERVERS: &str = "127.0.0.1:9092";
    pub fn bootstrap_servers() -> String {
        BOOTSTRAP_SERVERS.to_string()
    }
    pub fn max_event_bytes() -> usize {
        256 * 1024
    }
    pub fn request_timeout_ms() -> u64 {
        10_000
    }
    pub fn topics_file() -> PathBuf {
        PathBuf::from("topology/topics.toml")
    }
    pub fn meters_file() -> PathBuf {
        PathBuf::from("topology/meters.toml")
    }
    pub fn schemas_dir() -> PathBuf {
        PathBuf::from("schemas")
    }
    pub fn commit_interval_ms() -> u64 {
        100
    }
    pub fn max_batch_records() -> usize {
        5_000
    }
    pub fn store_memory_mb() -> usize {
        crate::store::rocks::DEFAULT_STORE_MEMORY_MB
    }
    pub fn store_write_ahead_log() -> bool {
        true
    }
    pub fn state_dir() -> PathBuf {
        PathBuf::from("state")
    }
    pub fn instance_id() -> String {
        "0".to_string()
    }
    pub fn transaction_timeout_ms() -> u64 {
        60_000
    }
    pub fn transaction_call_timeout_ms() -> u64 {
        30_000
    }
    pub fn session_timeout_ms() -> u64 {
        10_000
    }
    pub fn restore_timeout_ms() -> u64 {
        300_000
    }
    pub fn listen_addr() -> String {
        "127.0.0.1:9464".to_string()
    }
    pub fn max_event_age_days() -> u32 {
        35
    }
    pub fn max_clock_skew_s() -> u32 {
        300
    }
    pub fn dedupe_horizon_days() -> u32 {
        40
    }
    pub fn retract_type() -> String {
        "meterline.usage.retract".to_string()
    }
    pub fn amend_type() -> String {
        "meterline.usage.amend".to_string()
    }
    pub fn signature_header() -> String {
        "meterline-signature".to_string()
    }
    pub fn lineage_retention_days() -> u32 {
        90
    }
    pub fn grace_period_s() -> u32 {
        600
    }
    pub fn idle_advance_s() -> u32 {
        60
    }
    pub fn rounding_mode() -> RoundingMode {
        RoundingMode::HalfEven
    }
}

/// The meters file: `[[meter]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetersFile {
    #[serde(default)]
    meter: Vec<Meter>,
}

impl Config {
    /// Loads `path`, applies the environment overrides and loads the meters.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let env: Vec<(String, String)> = std::env::vars().collect();
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Config::from_parts(&text, &path.display().to_string(), &env, base_dir)
    }

    /// The defaults alone (plus environment), for commands run without a file.
    pub fn defaults_with_env(base_dir: PathBuf) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Config::from_parts("", "(defaults)", &env, base_dir)
    }

    /// Parses `text`, applies `env` overrides, validates and loads the meters.
    pub fn from_parts(
        text: &str,
        origin: &str,
        env: &[(String, String)],
        base_dir: PathBuf,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_string(),
                    message: one_line(&e.to_string()),
                })?;
        apply_env(&mut table, env)?;
        let mut config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.to_string(),
                    message: one_line(&e.to_string()),
                })?;
        config.base_dir = base_dir;
        config.check()?;
        config.meters = config.load_meters()?;
        Ok(config)
    }

    /// Resolves a path of the config relative to the config file.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    fn load_meters(&self) -> Result<Vec<Meter>, ConfigError> {
        let path = self.resolve(&self.topology.meters_file);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: MetersFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: one_line(&e.to_string()),
        })?;
        Ok(file.meter)
    }

    fn check(&self) -> Result<(), ConfigError> {
        self.api.check().map_err(ConfigError::Invalid)?;
        self.invoice.check().map_err(ConfigError::Invalid)?;
        self.ledger.check().map_err(ConfigError::Invalid)?;
        self.export.check().map_err(ConfigError::Invalid)?;
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "kafka.bootstrap_servers must not be empty".into(),
            ));
        }
        if self.runtime.commit_interval_ms == 0 {
            return Err(ConfigError::Invalid(
                "runtime.commit_interval_ms must be > 0".into(),
            ));
        }
        if self.runtime.max_batch_records == 0 {
            return Err(ConfigError::Invalid(
                "runtime.max_batch_records must be > 0".into(),
            ));
        }
        let memory_mb = self.runtime.store_memory_mb;
        if !(crate::store::rocks::MIN_STORE_MEMORY_MB..=crate::store::rocks::MAX_STORE_MEMORY_MB)
            .contains(&memory_mb)
        {
            return Err(ConfigError::Invalid(format!(
                "runtime.store_memory_mb ({memory_mb}) must be between {} and {}",
                crate::store::rocks::MIN_STORE_MEMORY_MB,
                crate::store::rocks::MAX_STORE_MEMORY_MB
            )));
        }
        let horizon_s = u64::from(self.validate.dedupe_horizon_days) * SECONDS_PER_DAY;
        let accept_window_s = u64::from(self.validate.max_event_age_days) * SECONDS_PER_DAY
            + u64::from(self.validate.max_clock_skew_s);
        if horizon_s < accept_window_s {
            // A duplicate older than the horizon but still young enough to be
            // accepted would be billed twice: its dedupe entry is gone, the
            // event is not too old. Refuse the combination.
            return Err(ConfigError::Invalid(format!(
                "validate.dedupe_horizon_days ({}) must cover validate.max_event_age_days ({}) plus validate.max_clock_skew_s ({})",
                self.validate.dedupe_horizon_days, self.validate.max_event_age_days, self.validate.max_clock_skew_s
            )));
        }
        if let Some(days) = self.rate.segment_retention_days {
            if days <= self.validate.max_event_age_days {
                // An event still young enough to be accepted could reach a
                // released segment and be refused: keep segments longer.
                return Err(ConfigError::Invalid(format!(
                    "rate.segment_retention_days ({days}) must exceed validate.max_event_age_days ({})",
                    self.validate.max_event_age_days
                )));
            }
        }
        let message_max_bytes = self.producer_message_max_bytes()?;
        if self.validate.max_event_bytes == 0 || self.validate.max_event_bytes >= message_max_bytes
        {
            // An accepted event bigger than what the producer may send would
            // fail to produce on every retry: its partition would never move.
            return Err(ConfigError::Invalid(format!(
                "validate.max_event_bytes ({}) must be > 0 and below the producer's message.max.bytes ({message_max_bytes})",
                self.validate.max_event_bytes
            )));
        }
        let dead_letter_bytes =
            crate::runtime::dlq::DEAD_LETTER_MAX_BYTES + RECORD_BATCH_OVERHEAD_BYTES;
        if message_max_bytes < dead_letter_bytes {
            return Err(ConfigError::Invalid(format!(
                "the producer's message.max.bytes ({message_max_bytes}) must be at least {dead_letter_bytes}: dead letters take up to that much"
            )));
        }
        self.check_correction_types()?;
        if self.correction_history_max() > CORRECTION_HISTORY_MAX_LIMIT {
            return Err(ConfigError::Invalid(format!(
                "rate.correction_history_max ({}) must be at most {CORRECTION_HISTORY_MAX_LIMIT}",
                self.correction_history_max()
            )));
        }
        for (source, key) in &self.validate.hmac_keys_hex {
            if hex::decode(key).is_err() || key.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "validate.hmac_keys_hex.{source}: not a hex string"
                )));
            }
        }
        Ok(())
    }

    /// The correction types are distinct, not empty, and no meter's.
    fn check_correction_types(&self) -> Result<(), ConfigError> {
        let v = &self.validate;
        if v.retract_type.is_empty() || v.amend_type.is_empty() || v.retract_type == v.amend_type {
            return Err(ConfigError::Invalid(format!(
                "validate.retract_type ({:?}) and validate.amend_type ({:?}) must be two different non-empty types",
                v.retract_type, v.amend_type
            )));
        }
        if let Some(m) = self
            .meters
            .iter()
            .find(|m| m.event_type == v.retract_type || m.event_type == v.amend_type)
        {
            return Err(ConfigError::Invalid(format!(
                "meter {:?} consumes {:?}, the type of a correction (validate.retract_type / amend_type)",
                m.slug, m.event_type
            )));
        }
        Ok(())
    }

    /// `rate.correction_history_max`, or its default.
    pub fn correction_history_max(&self) -> u32 {
        self.rate
            .correction_history_max
            .unwrap_or(DEFAULT_CORRECTION_HISTORY_MAX)
    }

    /// `rate.segment_retention_days`, or its default.
    pub fn segment_retention_days(&self) -> u32 {
        self.rate.segment_retention_days.unwrap_or(
            self.validate
                .max_event_age_days
                .saturating_add(SEGMENT_RETENTION_MARGIN_DAYS),
        )
    }

    /// The producers' `message.max.bytes` (librdkafka's default unless set
    /// in `kafka.client` or `kafka.producer`): the largest record a stage can
    /// write.
    pub fn producer_message_max_bytes(&self) -> Result<usize, ConfigError> {
        match self.producer_props().get(MESSAGE_MAX_BYTES_PROPERTY) {
            None => Ok(LIBRDKAFKA_DEFAULT_MESSAGE_MAX_BYTES),
            Some(text) => text.trim().parse().map_err(|_| {
                ConfigError::Invalid(format!(
                    "kafka property {MESSAGE_MAX_BYTES_PROPERTY} = {text:?} is not a byte count"
                ))
            }),
        }
    }

    /// librdkafka properties for a consumer: common, then consumer-specific.
    pub fn consumer_props(&self) -> BTreeMap<String, String> {
        let mut props = self.common_props();
        props.extend(self.kafka.consumer.clone());
        props
    }

    /// librdkafka properties for a producer: common, then producer-specific.
    pub fn producer_props(&self) -> BTreeMap<String, String> {
        let mut props = self.common_props();
        props.extend(self.kafka.producer.clone());
        props
    }

    /// librdkafka properties for every client.
    pub fn common_props(&self) -> BTreeMap<String, String> {
        let mut props = BTreeMap::new();
        props.insert(
            "bootstrap.servers".to_string(),
            self.kafka.bootstrap_servers.clone(),
        );
        props.extend(self.kafka.client.clone());
        props
    }

    /// A topic's full name in this deployment (namespace applied).
    pub fn topic(&self, name: &str) -> String {
        format!("{}{}", self.topology.namespace, name)
    }

    /// A consumer group / transactional id base in this deployment.
    pub fn group_id(&self, stage: &str) -> String {
        format!("{}meterline.{}", self.topology.namespace, stage)
    }
}

/// Applies `METERLINE__A__B=v` and `METERLINE_KAFKA__X_Y=v` onto the table.
fn apply_env(table: &mut toml::Table, env: &[(String, String)]) -> Result<(), ConfigError> {
    for (var, value) in env {
        if let Some(prop) = var.strip_prefix(ENV_KAFKA_PREFIX) {
            if prop.is_empty() {
                continue;
            }
            let prop = prop.to_ascii_lowercase().replace('_', ".");
            let kafka = table
                .entry("kafka")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let client = as_table(kafka, var)?
                .entry("client")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            as_table(client, var)?.insert(prop, toml::Value::String(value.clone()));
        } else if let Some(path) = var.strip_prefix(ENV_PREFIX) {
            let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
            if parts.iter().any(String::is_empty) {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "empty key segment".into(),
                });
            }
            // `split` yields at least one segment.
            let Some((leaf, path)) = parts.split_last() else {
                continue;
            };
            let mut cursor = &mut *table;
            for part in path {
                let next = cursor
                    .entry(part.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                cursor = as_table(next, var)?;
            }
            cursor.insert(leaf.clone(), parse_env_value(value));
        }
    }
    Ok(())
}

fn as_table<'a>(value: &'a mut toml::Value, var: &str) -> Result<&'a mut toml::Table, ConfigError> {
    value.as_table_mut().ok_or_else(|| ConfigError::Env {
        var: var.to_string(),
        message: "overrides a key that is not a table".into(),
    })
}

/// An env value is TOML when it parses as a TOML value (`5`, `true`, `["a"]`),
/// else a plain string, so `METERLINE__KAFKA__BOOTSTRAP_SERVERS=h:9092` works unquoted.
fn parse_env_value(value: &str) -> toml::Value {
    let probe = format!("v = {value}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(value.to_string())),
        Err(_) => toml::Value::String(value.to_string()),
    }
}

/// toml errors span several lines with a caret diagram; the CLI promises one line.
fn one_line(message: &str) -> String {
    let mut parts = message.lines().map(str::trim).filter(|l| {
        !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^' || c == ' ')
    });
    let mut out = parts.next().unwrap_or("").to_string();
    for p in parts {
        if p.chars().next().is_some_and(|c| c.is_ascii_digit()) && p.contains('|') {
            continue;
        }
        out.push_str(": ");
        out.push_str(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_meters(dir: &Path) {
        std::fs::create_dir_all(dir.join("topology")).unwrap();
        std::fs::write(
            dir.join("topology/meters.toml"),
            "[[meter]]\nslug = \"tokens\"\nevent_type = \"llm.tokens\"\naggregation = \"SUM\"\nvalue_property = \"$.tokens\"\n",
        )
        .unwrap();
    }

    #[test]
    fn unknown_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let err = Config::from_parts(
            "[runtime]\ncommit_intervall_ms = 5\n",
            "x.toml",
            &[],
            dir.path().to_path_buf(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("commit_intervall_ms"), "{err}");
        assert!(err.contains("x.toml"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn correction_sources_unset_differs_from_empty() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let sources = |toml: &str| {
            let c = Config::from_parts(toml, "x.toml", &[], dir.path().to_path_buf()).unwrap();
            let rules = crate::ingest::rules::ValidateRules::from_config(&c.validate).unwrap();
            rules.correction_sources
        };
        assert_eq!(sources(""), None);
        assert_eq!(
            sources("[validate]\ncorrection_sources = []\n"),
            Some(vec![])
        );
        assert_eq!(
            sources("[validate]\ncorrection_sources = [\"ops/*\"]\n"),
            Some(vec!["ops/*".to_string()])
        );
    }

    #[test]
    fn env_overrides_file_and_sets_kafka_properties() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let env = vec![
            (
                "METERLINE__RUNTIME__COMMIT_INTERVAL_MS".to_string(),
                "250".to_string(),
            ),
            (
                "METERLINE__KAFKA__BOOTSTRAP_SERVERS".to_string(),
                "broker:9093".to_string(),
            ),
            (
                "METERLINE_KAFKA__SASL_MECHANISM".to_string(),
                "PLAIN".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let c = Config::from_parts(
            "[runtime]\ncommit_interval_ms = 5\n",
            "x.toml",
            &env,
            dir.path().to_path_buf(),
        )
        .unwrap();
        assert_eq!(c.runtime.commit_interval_ms, 250);
        assert_eq!(c.kafka.bootstrap_servers, "broker:9093");
        assert_eq!(c.common_props().get("sasl.mechanism").unwrap(), "PLAIN");
        assert_eq!(c.meters.len(), 1);
    }

    #[test]
    fn processing_guarantee_and_static_membership_parse() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let c = Config::from_parts("", "x.toml", &[], dir.path().to_path_buf()).unwrap();
        assert_eq!(
            c.runtime.processing_guarantee,
            ProcessingGuarantee::ExactlyOnce
        );
        assert!(!c.runtime.static_membership);
        let env = vec![
            (
                "METERLINE__RUNTIME__PROCESSING_GUARANTEE".to_string(),
                "at_least_once".to_string(),
            ),
            (
                "METERLINE__RUNTIME__STATIC_MEMBERSHIP".to_string(),
                "true".to_string(),
            ),
        ];
        let c = Config::from_parts("", "x.toml", &env, dir.path().to_path_buf()).unwrap();
        assert_eq!(
            c.runtime.processing_guarantee,
            ProcessingGuarantee::AtLeastOnce
        );
        assert!(c.runtime.static_membership);
        let err = Config::from_parts(
            "[runtime]\nprocessing_guarantee = \"twice\"\n",
            "x.toml",
            &[],
            dir.path().to_path_buf(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("twice"), "{err}");
    }

    #[test]
    fn unknown_env_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let env = vec![("METERLINE__RUNTIME__NOPE".to_string(), "1".to_string())];
        let err = Config::from_parts("", "x.toml", &env, dir.path().to_path_buf())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn aggregate_and_post_settings_default_parse_and_refuse_unknown() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let base = dir.path().to_path_buf();
        let c = Config::from_parts("", "x.toml", &[], base.clone()).unwrap();
        assert_eq!(c.aggregate.grace_period_s, 600);
        assert_eq!(c.aggregate.idle_advance_s, 60);
        assert_eq!(c.post.rounding_mode, RoundingMode::HalfEven);
        let env = vec![(
            "METERLINE__AGGREGATE__IDLE_ADVANCE_S".to_string(),
            "2".to_string(),
        )];
        let c = Config::from_parts(
            "[aggregate]\ngrace_period_s = 60\n[post]\nrounding_mode = \"half_up\"\n",
            "x.toml",
            &env,
            base.clone(),
        )
        .unwrap();
        assert_eq!(c.aggregate.grace_period_s, 60);
        assert_eq!(c.aggregate.idle_advance_s, 2);
        assert_eq!(c.post.rounding_mode, RoundingMode::HalfUp);
        for (text, named) in [
            ("[aggregate]\ngrace_period = 60\n", "grace_period"),
            ("[post]\nrounding = \"up\"\n", "rounding"),
            ("[post]\nrounding_mode = \"half_odd\"\n", "half_odd"),
            ("[aggregate]\ngrace_period_s = -1\n", "grace_period_s"),
        ] {
            let err = Config::from_parts(text, "x.toml", &[], base.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{text}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn api_keys_come_from_the_file_or_an_inline_env_array_and_bad_hashes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let base = dir.path().to_path_buf();
        let hash = "ab".repeat(32);
        let env = vec![(
            "METERLINE__API__KEYS".to_string(),
            format!(
                r#"[{{ name = "ops", sha256_hex = "{hash}", scopes = ["read", "ingest"], customers = ["c-1"] }}]"#
            ),
        )];
        let c = Config::from_parts("", "x.toml", &env, base.clone()).unwrap();
        assert_eq!(c.api.keys.len(), 1);
        assert_eq!(c.api.keys[0].scopes, vec![ApiScope::Read, ApiScope::Ingest]);
        assert_eq!(c.api.keys[0].customers, vec!["c-1".to_string()]);
        assert_eq!(c.api.max_batch_events, api::DEFAULT_API_MAX_BATCH_EVENTS);
        assert!(
            !format!("{:?}", c.api.keys[0]).contains(&hash),
            "Debug hides the hash"
        );
        for (text, named) in [
            (
                "[[api.keys]]\nname = \"k\"\nsha256_hex = \"zz\"\nscopes = [\"read\"]\n",
                "not hex",
            ),
            (
                "[[api.keys]]\nname = \"k\"\nsha256_hex = \"abcd\"\nscopes = [\"read\"]\n",
                "64 hex",
            ),
            (
                "[[api.keys]]\nname = \"k\"\nsha256_hex = \"abcd\"\nscopes = [\"root\"]\n",
                "root",
            ),
            ("[api]\nmax_batch_events = 0\n", "max_batch_events"),
        ] {
            let err = Config::from_parts(text, "x.toml", &[], base.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(named), "{text}: {err}");
        }
    }

    #[test]
    fn horizon_shorter_than_max_age_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let err = Config::from_parts(
            "[validate]\nmax_event_age_days = 10\ndedupe_horizon_days = 10\n",
            "x.toml",
            &[],
            dir.path().to_path_buf(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("dedupe_horizon_days"), "{err}");
    }

    /// Every key is documented optional: a `[kafka.client]` table (or a
    /// `METERLINE_KAFKA__*` variable, which writes into it) without
    /// `bootstrap_servers` keeps the default servers.
    #[test]
    fn kafka_client_without_bootstrap_servers_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let base = dir.path().to_path_buf();
        let c = Config::from_parts(
            "[kafka.client]\n\"security.protocol\" = \"PLAINTEXT\"\n",
            "x.toml",
            &[],
            base.clone(),
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, defaults::BOOTSTRAP_SERVERS);
        assert_eq!(
            c.common_props()
                .get("security.protocol")
                .map(String::as_str),
            Some("PLAINTEXT")
        );
        let env = vec![(
            "METERLINE_KAFKA__SASL_PASSWORD".to_string(),
            "secret".to_string(),
        )];
        let c = Config::from_parts("", "x.toml", &env, base.clone()).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, defaults::BOOTSTRAP_SERVERS);
        assert_eq!(
            c.common_props().get("sasl.password").map(String::as_str),
            Some("secret")
        );
        let c = Config::from_parts("[kafka]\n[kafka.producer]\n", "x.toml", &[], base).unwrap();
        assert_eq!(c.kafka.bootstrap_servers, defaults::BOOTSTRAP_SERVERS);
    }

    #[test]
    fn max_event_bytes_defaults_and_must_fit_the_producer() {
        let dir = tempfile::tempdir().unwrap();
        write_meters(dir.path());
        let base = dir.path().to_path_buf();
        let c = Config::from_parts("", "x.toml", &[], base.clone()).unwrap();
        assert_eq!(c.validate.max_event_bytes, 262_144);
        assert!(!c.validate.require_signature);
        assert_eq!(
            c.producer_message_max_bytes().unwrap(),
            LIBRDKAFKA_DEFAULT_MESSAGE_MAX_BYTES
        );
        let c = Config::from_parts(
            "[validate]\nmax_event_bytes = 1000\nrequire_signature = true\n",
            "x.toml",
            &[],
            base.clone(),
        )
        .unwrap();
        assert_eq!(c.validate.max_event_bytes, 1000);
        assert!(c.validate.require_signature);
        for text in [
            "[validate]\nmax_event_bytes = 0\n",
            "[validate]\nmax_event_bytes = 1000000\n",
            "[validate]\nmax_event_bytes = 900000\n[kafka.producer]\n\"message.max.bytes\" = \"800000\"\n",
            "[validate]\nmax_event_bytes = 900000\n[kafka.client]\n\"message.max.bytes\" = \"900000\"\n",
        ] {
            let err = Config::from_parts(text, "x.toml", &[], base.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_event_bytes"), "{text}: {err}");
        }
        // Dead letters must fit too.
        let err = Config::from_parts(
            "[validate]\nmax_event_bytes = 1000\n[kafka.producer]\n\"message.max.bytes\" = \"100000\"\n",
            "x.toml",
            &[],
            base.clone(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("dead letters"), "{err}");
        let err = Config::from_parts(
            "[kafka.producer]\n\"message.max.bytes\" = \"lots\"\n",
            "x.toml",
            &[],
            base,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("message.max.bytes"), "{err}");
    }
}
