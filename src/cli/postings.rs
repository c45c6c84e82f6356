//! `meterline postings [--format F] [--period YYYY-MM | --from D --to D]
//! [--legal-entity L] [--output FILE]`: the committed postings as a table
//! (the default), JSON lines, or an ERP journal-import file
//! ([`crate::topology::postings_export`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;

use crate::config::Config;
use crate::topology::names;
use crate::topology::postings::{self, PostingsTopic, Unreadable};
use crate::topology::postings_export::{self as export, Format, Period, Selection};

/// Exit code of a bad selection (as clap's for a bad argument).
const EXIT_USAGE: u8 = 2;
/// Exit code of an export file written while records of the topic were
/// not postings (they are in no file: someone must look).
const EXIT_UNREADABLE: u8 = 1;

#[derive(Debug, Args)]
pub struct PostingsArgs {
    /// table (default), json (every posting of the selection, one object a
    /// line, as on the topic), netsuite-csv or d365-journal-csv (journal
    /// entries only, one row per journal line).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Postings whose accounting_date is in this month (YYYY-MM).
    #[arg(long, value_parser = export::parse_period, conflicts_with_all = ["from", "to"])]
    pub period: Option<Period>,
    /// Postings whose accounting_date is on or after this date (YYYY-MM-DD).
    #[arg(long, value_parser = export::parse_date)]
    pub from: Option<NaiveDate>,
    /// Postings whose accounting_date is on or before this date (YYYY-MM-DD).
    #[arg(long, value_parser = export::parse_date)]
    pub to: Option<NaiveDate>,
    /// Postings of this legal entity only.
    #[arg(long)]
    pub legal_entity: Option<String>,
    /// Write to this file (replaced whole, through a temporary file next
    /// to it) instead of stdout.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

impl PostingsArgs {
    fn selection(&self) -> Selection {
        let (from, to) = match self.period {
            Some(p) => (Some(p.first), Some(p.last)),
            None => (self.from, self.to),
        };
        Selection {
            from,
            to,
            legal_entity: self.legal_entity.clone(),
        }
    }
}

/// Runs the verb: 0 when written, 1 when records that are not postings
/// were left out of an export, 2 for a bad selection.
pub fn run(config: &Config, args: &PostingsArgs) -> anyhow::Result<ExitCode> {
    let selection = args.selection();
    if let (Some(from), Some(to)) = (selection.from, selection.to) {
        if from > to {
            eprintln!("meterline: error: --from {from} is after --to {to}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    }
    let (records, unreadable) = postings::read_records(config)?;
    let selected = selection.apply(&records)?;
    let body = match args.format {
        Format::Table => {
            let topic = PostingsTopic {
                postings: table_rows(&records, &selection)?,
                unreadable,
            };
            write_out(args.output.as_deref(), postings::render(&topic).as_bytes())?;
            return Ok(ExitCode::SUCCESS);
        }
        Format::Json => export::json_lines(&selected),
        Format::NetsuiteCsv | Format::D365JournalCsv => {
            journal_file(args.format, &selected)?.into_bytes()
        }
    };
    write_out(args.output.as_deref(), &body)?;
    Ok(report_unreadable(&unreadable))
}

/// The selected postings in the table's order (that of `records`).
fn table_rows(
    records: &[postings::PostingRecord],
    selection: &Selection,
) -> anyhow::Result<Vec<crate::contracts::Posting>> {
    let mut rows = Vec::new();
    for r in records {
        if selection.contains(&r.posting)? {
            rows.push(r.posting.clone());
        }
    }
    Ok(rows)
}

/// A NetSuite or D365 file of the selection's journal entries; the summary
/// goes to stderr.
fn journal_file(format: Format, selected: &[&postings::PostingRecord]) -> anyhow::Result<String> {
    let ps: Vec<&crate::contracts::Posting> = selected.iter().map(|r| &r.posting).collect();
    let (entries, summary) = export::journal_entries(&ps)?;
    eprintln!("meterline postings: {}", summary.describe());
    Ok(match format {
        Format::D365JournalCsv => export::d365_journal_csv(&entries),
        _ => export::netsuite_csv(&entries),
    })
}

/// Names the records that are not postings on stderr (they are in no
/// export); the exit code says whether there were any.
fn report_unreadable(unreadable: &Unreadable) -> ExitCode {
    if unreadable.count == 0 {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "WARNING: {}",
        unreadable.describe(names::POSTINGS, "postings")
    );
    ExitCode::from(EXIT_UNREADABLE)
}

/// Writes `body` to stdout, or to `path` through a temporary file renamed
/// over it (a reader never sees half a file).
fn write_out(path: Option<&Path>, body: &[u8]) -> anyhow::Result<()> {
    let Some(path) = path else {
        let mut out = std::io::stdout().lock();
        out.write_all(body).context("writing to stdout")?;
        return out.flush().context("writing to stdout");
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
