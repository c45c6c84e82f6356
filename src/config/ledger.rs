//! Settings of `meterline ledger-sync` and of reconcile's ledger check
//! (section `[ledger]`): where the general ledger is and how hard to try.

use serde::{Deserialize, Serialize};

/// Longest PostgreSQL identifier (NAMEDATALEN - 1).
pub const MAX_SCHEMA_NAME_BYTES: usize = 63;

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerConfig {
    /// PostgreSQL connection URL (`postgres://user:password@host:port/db`,
    /// libpq's key=value form also works). `$METERLINE_LEDGER_URL` overrides
    /// it, so the password can stay out of the file. Never logged.
    #[serde(default)]
    pub url: Option<String>,
    /// Schema holding the ledger's tables (created and migrated by the
    /// connector). Default: `meterline_ledger`, or `<namespace>ledger` with
    /// the namespace's non-identifier characters as `_` when a namespace is set.
    #[serde(default)]
    pub schema: Option<String>,
    /// Postings (and invoice documents) written per database transaction.
    #[serde(default = "batch_max_records")]
    pub batch_max_records: usize,
    /// Longest wait for a batch to fill before it is written anyway.
    #[serde(default = "batch_max_wait_ms")]
    pub batch_max_wait_ms: u64,
    /// Refuse journal lines whose account is not in the `accounts` table
    /// (per legal entity). Off: any account is accepted.
    #[serde(default)]
    pub require_known_accounts: bool,
    /// Connecting to the database gives up after this long (then retried).
    #[serde(default = "connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Server-side bound of one statement (`statement_timeout`).
    #[serde(default = "statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// First wait after a database failure; doubled per failure up to
    /// `retry_max_backoff_ms`. Nothing is skipped: the batch is retried
    /// until it commits (readiness is false meanwhile).
    #[serde(default = "retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    #[serde(default = "retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
}

fn batch_max_records() -> usize {
    500
}
fn batch_max_wait_ms() -> u64 {
    200
}
fn connect_timeout_ms() -> u64 {
    5_000
}
fn statement_timeout_ms() -> u64 {
    30_000
}
fn retry_initial_backoff_ms() -> u64 {
    200
}
fn retry_max_backoff_ms() -> u64 {
    10_000
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: None,
            schema: None,
            batch_max_records: batch_max_records(),
            batch_max_wait_ms: batch_max_wait_ms(),
            require_known_accounts: false,
            connect_timeout_ms: connect_timeout_ms(),
            statement_timeout_ms: statement_timeout_ms(),
            retry_initial_backoff_ms: retry_initial_backoff_ms(),
            retry_max_backoff_ms: retry_max_backoff_ms(),
        }
    }
}

impl std::fmt::Debug for LedgerConfig {
    /// The URL may hold a password: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("schema", &self.schema)
            .field("batch_max_records", &self.batch_max_records)
            .field("batch_max_wait_ms", &self.batch_max_wait_ms)
            .field("require_known_accounts", &self.require_known_accounts)
            .finish_non_exhaustive()
    }
}

impl LedgerConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.batch_max_records == 0 {
            return Err("ledger.batch_max_records must be at least 1".into());
        }
        if self.retry_initial_backoff_ms == 0
            || self.retry_max_backoff_ms < self.retry_initial_backoff_ms
        {
            return Err(
                "ledger.retry_initial_backoff_ms must be > 0 and <= ledger.retry_max_backoff_ms"
                    .into(),
            );
        }
        if let Some(s) = &self.schema {
            check_schema_name(s)?;
        }
        Ok(())
    }

    /// The URL: `$METERLINE_LEDGER_URL`, else `url`.
    pub fn resolved_url(&self) -> Option<String> {
        std::env::var("METERLINE_LEDGER_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .or_else(|| self.url.clone())
    }

    /// The schema name for a topology namespace (see [`LedgerConfig::schema`]).
    pub fn schema_for(&self, namespace: &str) -> String {
        if let Some(s) = &self.schema {
            return s.clone();
        }
        if namespace.is_empty() {
            return "meterline_ledger".into();
        }
        let mut s: String = namespace
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        if s.starts_with(|c: char| c.is_ascii_digit()) {
            s.insert(0, '_');
        }
        s.push_str("ledger");
        s.truncate(MAX_SCHEMA_NAME_BYTES);
        s
    }
}

/// A schema name is used in SQL text: only `[a-z_][a-z0-9_]*`, at most
/// [`MAX_SCHEMA_NAME_BYTES`].
pub fn check_schema_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SCHEMA_NAME_BYTES
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "ledger.schema {s:?}: only lowercase letters, digits and _, starting with a letter or _, at most {MAX_SCHEMA_NAME_BYTES} bytes"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_from_namespaces_are_identifiers() {
        let c = LedgerConfig::default();
        assert_eq!(c.schema_for(""), "meterline_ledger");
        assert_eq!(c.schema_for("t.led.42."), "t_led_42_ledger");
        assert_eq!(c.schema_for("9x-"), "_9x_ledger");
        for ns in ["", "t.led.42.", "9x-", "Ünï.", &"a".repeat(100)] {
            check_schema_name(&c.schema_for(ns)).unwrap();
        }
        assert!(check_schema_name("x; drop table y").is_err());
        assert!(check_schema_name("Upper").is_err());
    }

    #[test]
    fn debug_never_shows_the_url() {
        let c = LedgerConfig {
            url: Some("postgres://u:secret@h/db".into()),
            ..LedgerConfig::default()
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
