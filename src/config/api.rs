//! Settings of `meterline api` (section `[api]`): where it listens, the
//! bounds of a request, and the API keys it accepts.

use serde::{Deserialize, Serialize};

/// Default listen address of `meterline api`.
pub const DEFAULT_API_LISTEN_ADDR: &str = "127.0.0.1:8090";
/// Default largest request body: 1 MiB (OpenMeter's clients batch far less).
pub const DEFAULT_API_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Default most events in one batch.
pub const DEFAULT_API_MAX_BATCH_EVENTS: usize = 1_000;
/// Default wait for the broker to acknowledge a request's events.
pub const DEFAULT_API_ACK_TIMEOUT_MS: u64 = 10_000;
/// Default Retry-After of a 429 (the producer queue was full).
pub const DEFAULT_API_RETRY_AFTER_S: u32 = 1;
/// Default days of closed day windows the meter query answers from.
pub const DEFAULT_API_METER_QUERY_DAYS: u32 = 35;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address `meterline api` listens on.
    #[serde(default = "listen_addr")]
    pub listen_addr: String,
    /// Largest request body; a larger one is refused with 413.
    #[serde(default = "max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events in one batch; more are refused with 413.
    #[serde(default = "max_batch_events")]
    pub max_batch_events: usize,
    /// How long a request waits for the broker to acknowledge its events
    /// before answering 503 (the events may still arrive: a retry is safe,
    /// dedupe drops the copies).
    #[serde(default = "ack_timeout_ms")]
    pub ack_timeout_ms: u64,
    /// Retry-After of a 429 answer.
    #[serde(default = "retry_after_s")]
    pub retry_after_s: u32,
    /// Days of closed day windows (by when they closed) kept in memory for
    /// OpenMeter's meter query.
    #[serde(default = "meter_query_days")]
    pub meter_query_days: u32,
    /// The accepted keys; `meterline api` refuses to start without one.
    #[serde(default)]
    pub keys: Vec<ApiKeyConfig>,
    /// PEM certificate chain: with `tls_key_file`, the API serves HTTPS
    /// only. Relative to the config file.
    #[serde(default)]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// The file `meterline reconcile --report-file` writes: the console's
    /// Reconcile page shows the last run from it. Relative to the config file.
    #[serde(default)]
    pub reconcile_report_file: Option<std::path::PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen_addr: listen_addr(),
            max_body_bytes: max_body_bytes(),
            max_batch_events: max_batch_events(),
            ack_timeout_ms: ack_timeout_ms(),
            retry_after_s: retry_after_s(),
            meter_query_days: meter_query_days(),
            keys: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            reconcile_report_file: None,
        }
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiScope {
    /// Submit usage events.
    Ingest,
    /// Read what the pipeline holds (customers, contracts, usage).
    Read,
    /// Act on invoices through the API and the console: approve, hold,
    /// release, void, credit, dispute (each a command signed with the key's
    /// actor's key in `invoice.actor_keys_hex`). Includes nothing of read:
    /// an approver key lists both.
    Approve,
    /// Everything, including replaying dead letters from the console.
    Admin,
}

/// One API key. Only its SHA-256 is configured: the token itself is shown
/// once by `meterline api key-new` and never stored. Two keys with the
/// same scopes are how a key is rotated: add the new one, move the
/// clients, remove the old one.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Who holds it (logged with each refusal, never the token).
    pub name: String,
    /// Hex SHA-256 of the bearer token.
    pub sha256_hex: String,
    pub scopes: Vec<ApiScope>,
    /// Ingest only events of these sources (`prefix*` matches a prefix);
    /// empty: any source. The API signs, with validate's HMAC key, only the
    /// events of sources a key lists here.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Read only these customers; empty: all.
    #[serde(default)]
    pub customers: Vec<String>,
    /// The actor the key's commands carry and are signed as (its key in
    /// `invoice.actor_keys_hex`); default: the key's name.
    #[serde(default)]
    pub actor: Option<String>,
}

impl ApiKeyConfig {
    /// Who this key's commands are by.
    pub fn actor(&self) -> &str {
        self.actor.as_deref().unwrap_or(&self.name)
    }
}

/// The hash is not the token, but Debug shows neither.
impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig")
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("sources", &self.sources)
            .field("customers", &self.customers)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

impl ApiConfig {
    /// What `Config::check` refuses in this section.
    pub fn check(&self) -> Result<(), String> {
        if self.max_body_bytes == 0
            || self.max_batch_events == 0
            || self.ack_timeout_ms == 0
            || self.meter_query_days == 0
        {
            return Err(
                "api.max_body_bytes, api.max_batch_events, api.ack_timeout_ms and api.meter_query_days must be > 0"
                    .into(),
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(
                "api.tls_cert_file and api.tls_key_file go together (both or neither)".into(),
            );
        }
        for k in &self.keys {
            let hash = hex::decode(&k.sha256_hex)
                .map_err(|_| format!("api.keys {:?}: sha256_hex is not hex", k.name))?;
            if hash.len() != 32 {
                return Err(format!(
                    "api.keys {:?}: sha256_hex must be 64 hex digits (a SHA-256)",
                    k.name
                ));
            }
            if k.scopes.is_empty() {
                return Err(format!("api.keys {:?}: no scopes", k.name));
            }
        }
        Ok(())
    }
}

fn listen_addr() -> String {
    DEFAULT_API_LISTEN_ADDR.to_string()
}
fn max_body_bytes() -> usize {
    DEFAULT_API_MAX_BODY_BYTES
}
fn max_batch_events() -> usize {
    DEFAULT_API_MAX_BATCH_EVENTS
}
fn ack_timeout_ms() -> u64 {
    DEFAULT_API_ACK_TIMEOUT_MS
}
fn retry_after_s() -> u32 {
    DEFAULT_API_RETRY_AFTER_S
}
fn meter_query_days() -> u32 {
    DEFAULT_API_METER_QUERY_DAYS
}
