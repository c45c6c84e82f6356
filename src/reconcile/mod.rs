//! `meterline reconcile`: proves, from what Kafka holds, that nothing was
//! lost, invented or double-counted between the stages.
//!
//! It reads (read_committed, every partition to its end) the stage topics,
//! the `counters` changelogs of validate, dedupe and enrich, the open windows of
//! aggregate (its `windows` changelog) and `finance.postings`, and checks:
//!
//! **Per UTC day of event time** (validate, enrich, rate; "validate" is the
//! gate of validate and dedupe together: validate counts records in and
//! dead letters, dedupe first copies (validated) and duplicates):
//!
//! | check | equality |
//! |---|---|
//! | `events_in` | validate: records in = validated + dead-lettered + duplicates |
//! | `validated_topic` | validated = records of `usage.validated` that day |
//! | `dead_letters_topic` | dead-lettered = records of `meterline.dlq.validate` that day |
//! | `enrich_in` | enrich: validated events in = validate's validated |
//! | `enrich_split` | enrich: in = enriched on arrival + parked on arrival (and re-emitted <= parked) |
//! | `enriched_topic` | records of `usage.enriched` = enriched on arrival + re-emitted |
//! | `rate_in` | records of `usage.enriched` = records of `usage.rated` + `meterline.dlq.rate` |
//! | `events_topic` | (all days) records of `usage.events` = validate's records in + in flight |
//!
//! A record dedupe dead-letters (only a record something other than validate
//! wrote to `usage.identified`) is listed under the dead letters downstream of
//! validate.
//!
//! **Per window** (rate, aggregate, post), keyed by the *original* window
//! (kind, segment or subscription, window id; an adjustment counts toward
//! the window it adjusts):
//!
//! | check | equality |
//! |---|---|
//! | `rated_vs_windows` | sum of rated marginal amounts (and events) = closed windows + still-open windows |
//! | `period_close` | a period close's amount = its subscription's regular billing-period windows |
//! | `posted_once` | every closed window has exactly one control total |
//! | `posted_amount` | control total (unrounded amount, events, lineage digest) = the closed window |
//! | `posted_without_window` | no posting names a window aggregate never closed |
//! | `journal_balanced` | every journal entry's debits = credits |
//! | `accrual_amount` | day window: accrual entry = the control total's rounded amount |
//! | `invoice_amount` | billing-period window: invoice line and reclass = the rounded amount |
//! | `unbilled_cleared` | once a period is invoiced, unbilled receivable of each segment nets to zero |
//!
//! **Per subscription and billing period** (aggregate, from `ref.subscriptions`):
//!
//! | check | equality |
//! |---|---|
//! | `subscription_period_closed` | every period a subscription overlaps that ended at or before its partition's watermark has exactly one regular `period_close` window, with or without usage |
//!
//! **Per topic** (`usage.rated`, `usage.windows`, `finance.postings`):
//!
//! | check | equality |
//! |---|---|
//! | `unreadable_records` | no record fails to parse as the topic's contract (a foreign record in the books, e.g. written by hand or by a misdirected tool, is named by partition and offset instead of being skipped) |
//!
//! **The general ledger** (only with `--ledger-url` or `[ledger] url`; read
//! from the PostgreSQL ledger-sync writes, in one snapshot, `ledger.rs`):
//!
//! | check | equality |
//! |---|---|
//! | `ledger_once` | every posting ledger-sync has read (by the offsets the ledger keeps) is in the ledger exactly once or refused there |
//! | `ledger_debits`, `ledger_credits`, `ledger_lines` | per legal entity, currency and account: the ledger's journal lines = those of the postings it holds |
//!
//! The rounding difference (rounded minus unrounded posted amounts) is shown
//! per window and per currency; it is not a failure.
//!
//! The checks hold on a drained pipeline. Records a stage has not yet
//! committed are reported as "in flight" (per stage, from its consumer
//! group's committed offsets) and differences they explain are expected.
//! The topics of usage have a 7-day retention: reconcile a period before its
//! records expire (`--period`), e.g. at period close.
//!
//! [`Facts`] is what was read (`facts.rs`), [`check`] is pure arithmetic
//! over it (`checks/`: one function per check; unit tested in `tests.rs`),
//! [`read`] does the Kafka part (`read.rs`), `render.rs` prints the table,
//! JSON and Prometheus textfile from the [`Report`] (`report.rs`).

mod checks;
mod facts;
pub mod ledger;
mod read;
mod render;
mod report;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

use chrono::Utc;

use crate::config::Config;
use crate::kafka::ClientError;

pub use checks::{check, CHECKS};
pub use facts::{Facts, Sum, WindowId};
pub use read::read;
pub use render::{prometheus, render, write_textfile};
pub use report::{Check, CountersView, DayRow, Report, Rounding, WindowRow};

/// `meterline reconcile` arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReconcileArgs {
    /// Only days and windows whose id starts with this (e.g. 2026-10 or 2026-10-05).
    #[arg(long)]
    pub period: Option<String>,
    /// Print every check (OK ones too), one line each.
    #[arg(long)]
    pub verbose: bool,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Print the results as Prometheus metrics (text format) after the report.
    #[arg(long)]
    pub prometheus: bool,
    /// Write the results as Prometheus metrics to this file (atomically; for
    /// node_exporter's textfile collector: a `.prom` file in its directory).
    #[arg(long)]
    pub textfile: Option<PathBuf>,
    /// Also write the report as JSON to this file (atomically), with when it
    /// ran: what `meterline api` serves to the console's Reconcile page
    /// (`api.reconcile_report_file`).
    #[arg(long)]
    pub report_file: Option<PathBuf>,
    /// Also check the general ledger ledger-sync writes (PostgreSQL URL;
    /// default: [ledger] url or $METERLINE_LEDGER_URL when set): every
    /// posting it has read is in the ledger once or refused, and debits,
    /// credits and lines per legal entity, currency and account agree.
    #[arg(long)]
    pub ledger_url: Option<String>,
}

/// Why reconcile could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Kafka(#[from] ClientError),
    #[error("writing {path}: {source}")]
    Textfile {
        path: String,
        source: std::io::Error,
    },
    #[error("encoding the report: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerReadError),
}

/// `meterline reconcile`: reads, checks, prints; Ok(true) when every check held.
pub fn run(config: &Config, args: &ReconcileArgs) -> Result<bool, ReconcileError> {
    // The ledger before Kafka: every posting its snapshot holds was on the
    // topic before reconcile reads it, so a running ledger-sync can only
    // make postings in flight, never ledger rows reconcile has not seen.
    let url = args
        .ledger_url
        .clone()
        .or_else(|| config.ledger.resolved_url());
    let ledger = url.map(|u| ledger::read_ledger(config, &u)).transpose()?;
    let mut facts = read(config)?;
    facts.ledger = ledger;
    let report = check(&facts, args.period.as_deref());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report, args.verbose));
    }
    let metrics = prometheus(&report, Utc::now());
    if args.prometheus {
        print!("{metrics}");
    }
    if let Some(path) = &args.textfile {
        write_textfile(path, &metrics).map_err(|source| ReconcileError::Textfile {
            path: path.display().to_string(),
            source,
        })?;
    }
    if let Some(path) = &args.report_file {
        let doc = serde_json::json!({
            "run_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "ok": report.ok(),
            "period": args.period,
            "ledger_checked": facts.ledger.is_some(),
            "report": report,
        });
        write_textfile(path, &serde_json::to_string(&doc)?).map_err(|source| {
            ReconcileError::Textfile {
                path: path.display().to_string(),
                source,
            }
        })?;
    }
    Ok(report.ok())
}
