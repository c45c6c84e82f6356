//! What the general ledger holds, for reconcile's ledger checks: read from
//! the PostgreSQL database `meterline ledger-sync` writes (`--ledger-url`
//! or `[ledger] url`).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;

use crate::config::Config;
use crate::topology::names;

/// Bound of the connection attempt.
const LEDGER_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// (legal entity, currency, account, accounting date) -> debits, credits, lines.
pub type LedgerBalances = BTreeMap<(String, String, String, String), (Decimal, Decimal, u64)>;

/// One posting's standing in the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerPosting {
    /// Rows of `postings` with its key (1; the column is unique).
    pub rows: u64,
    /// `rejected` standing's reason (None: accepted or unknown).
    pub rejected: Option<String>,
}

/// What the ledger holds.
#[derive(Debug, Clone, Default)]
pub struct LedgerFacts {
    pub postings: BTreeMap<String, LedgerPosting>,
    pub balances: LedgerBalances,
    /// (topic without namespace, partition) -> the next offset ledger-sync
    /// will read: postings at or after it are in flight.
    pub next_offsets: BTreeMap<(String, i32), i64>,
}

/// Why the ledger could not be read (reconcile exits 2).
#[derive(Debug, thiserror::Error)]
pub enum LedgerReadError {
    #[error("ledger url: {0}")]
    Url(String),
    #[error("ledger database: {0}")]
    Db(#[from] postgres::Error),
}

/// Reads the ledger at `url` in one repeatable-read transaction (one
/// consistent snapshot).
pub fn read_ledger(config: &Config, url: &str) -> Result<LedgerFacts, LedgerReadError> {
    postgres::Config::from_str(url).map_err(|e| LedgerReadError::Url(e.to_string()))?;
    let timeout = Duration::from_millis(LEDGER_CONNECT_TIMEOUT_MS);
    let mut client = crate::ledger::connect(url, "meterline-reconcile", timeout, None)?;
    let s = config.ledger.schema_for(&config.topology.namespace);
    let group = format!("{}meterline.{}", config.topology.namespace, names::LEDGER);
    let mut tx = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()?;
    let mut f = LedgerFacts::default();
    let sql = format!(
        "SELECT s.idempotency_key, count(p.posting_id), max(CASE WHEN s.status = 'rejected' THEN s.reason END) \
         FROM {s}.posting_status s LEFT JOIN {s}.postings p USING (idempotency_key) \
         GROUP BY s.idempotency_key \
         UNION ALL SELECT p.idempotency_key, count(*), NULL FROM {s}.postings p \
         WHERE NOT EXISTS (SELECT 1 FROM {s}.posting_status s WHERE s.idempotency_key = p.idempotency_key) \
         GROUP BY p.idempotency_key"
    );
    for row in tx.query(&sql, &[])? {
        let rows: i64 = row.get(1);
        f.postings.insert(
            row.get(0),
            LedgerPosting {
                rows: rows.max(0) as u64,
                rejected: row.get(2),
            },
        );
    }
    let sql = format!(
        "SELECT p.legal_entity, p.currency, l.account, p.accounting_date::text, \
         sum(l.debit), sum(l.credit), count(*) \
         FROM {s}.journal_lines l JOIN {s}.postings p USING (posting_id) GROUP BY 1, 2, 3, 4"
    );
    for row in tx.query(&sql, &[])? {
        let lines: i64 = row.get(6);
        f.balances.insert(
            (row.get(0), row.get(1), row.get(2), row.get(3)),
            (row.get(4), row.get(5), lines.max(0) as u64),
        );
    }
    let sql = format!(
        "SELECT topic, partition, next_offset FROM {s}.consumer_offsets WHERE consumer_group = $1"
    );
    let ns = config.topology.namespace.as_str();
    for row in tx.query(&sql, &[&group])? {
        let topic: String = row.get(0);
        let logical = topic.strip_prefix(ns).unwrap_or(&topic).to_string();
        f.next_offsets.insert((logical, row.get(1)), row.get(2));
    }
    tx.commit()?;
    Ok(f)
}
