//! `meterline ledger-sync`: the books delivered into a general ledger in
//! PostgreSQL, exactly once, with an acknowledgement per posting.
//!
//! It reads `finance.postings`, `finance.invoices` and
//! `finance.postings.ledger_retry` (the ledger's replayed dead letters)
//! read_committed, as a consumer group (`<ns>meterline.ledger`): instances
//! share the partitions. Each batch of rows and the offsets it consumed
//! commit in ONE database transaction ([`write`]); the offsets live in the
//! ledger (`consumer_offsets`), are read back when a partition is assigned,
//! and are compare-and-set, so neither a crash nor a rebalance can lose or
//! double a row ([`sync`]). Postings are keyed by their idempotency key (a
//! unique column): a posting sent twice is stored once.
//!
//! The ledger refuses a posting dated in a closed period
//! (`closed_periods`), naming an unknown account (`accounts`, when
//! `[ledger] require_known_accounts`), or that a constraint rejects; a
//! refused posting is acked `rejected` on `finance.postings.acks` and
//! dead-lettered to `meterline.dlq.ledger` with its reason ([`reason`]),
//! and `meterline replay --from meterline.dlq.ledger` brings it back once
//! the cause is fixed. Acks and dead letters are written to an outbox
//! table in the batch's transaction and sent after it ([`outbox`]).
//!
//! The tables ([`schema`]) are created and migrated by the connector.

pub mod events;
pub mod outbox;
pub mod reason;
pub mod record;
pub mod schema;
pub mod sync;
pub mod write;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::runtime::StageStatus;
use crate::topology::names;

/// A connection to the ledger database: TLS when the server offers it
/// (`sslmode` of the URL: `require` refuses a plain one), bounded connect,
/// `statement_timeout` set when given.
pub fn connect(
    url: &str,
    application: &str,
    connect_timeout: std::time::Duration,
    statement_timeout_ms: Option<u64>,
) -> Result<postgres::Client, postgres::Error> {
    use std::str::FromStr;
    let mut pc = postgres::Config::from_str(url)?;
    pc.connect_timeout(connect_timeout)
        .application_name(application);
    if let Some(ms) = statement_timeout_ms {
        pc.options(&format!("-c statement_timeout={ms}"));
    }
    match native_tls::TlsConnector::new() {
        Ok(tls) => pc.connect(postgres_native_tls::MakeTlsConnector::new(tls)),
        Err(e) => {
            tracing::warn!(error = %e, "no TLS for the ledger connection");
            pc.connect(postgres::NoTls)
        }
    }
}

/// Runs ledger-sync until SIGTERM/SIGINT, serving /metrics, /healthz and
/// /readyz on `http.listen_addr` (ready: connected to the ledger and every
/// assigned partition positioned).
pub fn run(rt: &tokio::runtime::Runtime, config: Arc<Config>) -> anyhow::Result<()> {
    let addr = config.http.listen_addr.clone();
    let listener = rt
        .block_on(crate::http::bind(&addr))
        .with_context(|| format!("cannot listen on http.listen_addr {addr}"))?;
    let status = Arc::new(StageStatus::default());
    let shutdown = Arc::new(AtomicBool::new(false));
    if let Some(listener) = listener {
        let statuses = Arc::new(vec![(names::LEDGER, status.clone())]);
        let keys = Arc::new(config.api.keys.clone());
        let sd = shutdown.clone();
        rt.spawn(async move {
            if let Err(e) = crate::http::serve_on(listener, statuses, keys).await {
                tracing::error!(error = %e, "metrics server failed: stopping");
                sd.store(true, Ordering::SeqCst);
            }
        });
    }
    let sd = shutdown.clone();
    rt.spawn(async move {
        crate::cli::shutdown_signal().await;
        tracing::info!("signal received: finishing the batch and stopping");
        sd.store(true, Ordering::SeqCst);
    });
    let mut sync = sync::LedgerSync::new(config, status)?;
    let worker = std::thread::Builder::new()
        .name("ledger-sync".into())
        .spawn(move || sync.run(&shutdown))
        .context("starting the ledger-sync thread")?;
    match worker.join() {
        Ok(r) => r.map_err(anyhow::Error::from),
        Err(_) => anyhow::bail!("ledger-sync panicked"),
    }
}
