//! `meterline invoices`: list and show the documents of `finance.invoices`,
//! and send finance operators' commands to `billing.commands` (signed with
//! `$METERLINE_ACTOR_KEY`, in a Kafka transaction), waiting a bounded time
//! for the invoice stage to apply or refuse each.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use rdkafka::message::Message;
use rust_decimal::Decimal;

use crate::config::Config;
use crate::contracts::{Command, CommandKind, DisputeOutcome, Invoice, InvoiceFilter, Posting};

use crate::runtime::dlq::headers as dlq_headers;
use crate::topology::{counts, names};

/// The environment variable holding the actor's command key (hex).
pub const ACTOR_KEY_ENV: &str = "METERLINE_ACTOR_KEY";
/// How often a waiting command looks for its outcome.
const OUTCOME_POLL_MS: u64 = 500;
/// Dead letters are stamped by the broker (append time): how far its clock
/// may lag this machine's before a refusal would be missed.
const CLOCK_SKEW_ALLOWANCE_MS: i64 = 5_000;
/// A service credit changes no invoice: how long the CLI looks for a
/// refusal before saying it saw none.
const SERVICE_CREDIT_REFUSAL_WAIT_S: u64 = 5;

#[derive(Debug, Args)]
pub struct InvoicesArgs {
    #[command(subcommand)]
    pub action: InvoicesAction,
}

#[derive(Debug, Subcommand)]
pub enum InvoicesAction {
    /// The latest version of every invoice, filtered.
    List {
        /// draft, pending_approval, posted or voided.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        customer: Option<String>,
        /// The service interval's id (its local start date, YYYY-MM-DD).
        #[arg(long)]
        period: Option<String>,
        #[arg(long)]
        legal_entity: Option<String>,
        /// Only invoices this hold rule holds now (tax_rate_missing,
        /// manual_approval, held, ...).
        #[arg(long)]
        held_by: Option<String>,
        /// Print JSON lines (the documents) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One invoice: lines, totals, holds, credit memos, disputes, postings
    /// and the history with actors.
    Show {
        invoice_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve held invoices: each is posted in the same transaction.
    Approve(Act),
    /// Hold invoices waiting for approval (a release will not post them).
    Hold(Act),
    /// Clear the holds: with invoice.approval = auto each invoice is posted.
    Release(Act),
    /// A full credit memo of what is open (a held invoice is posted first).
    Void(Act),
    /// A credit memo of an invoice (--amount or --percent), or, with
    /// --customer and --currency instead of an invoice, a service credit to
    /// the customer's balance drawn by the next invoices' approval.
    Credit(CreditArgs),
    /// Open or resolve a dispute of part of an invoice.
    Dispute {
        #[command(subcommand)]
        action: DisputeAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum DisputeAction {
    /// Dr disputed receivable, Cr receivable of --amount.
    Open {
        invoice_id: String,
        #[arg(long)]
        amount: Decimal,
        #[command(flatten)]
        common: Common,
    },
    /// won: back to receivable; lost: a credit memo of the disputed amount.
    Resolve {
        invoice_id: String,
        /// The dispute's id (the id of its open command, shown by `show`).
        #[arg(long)]
        dispute_id: String,
        /// won or lost.
        #[arg(long)]
        outcome: String,
        #[command(flatten)]
        common: Common,
    },
}

/// What every command carries besides its target.
#[derive(Debug, Args)]
pub struct Common {
    /// Who acts (the key in $METERLINE_ACTOR_KEY must be theirs).
    #[arg(long, env = "METERLINE_ACTOR")]
    pub actor: String,
    /// Why: kept on the invoice's history.
    #[arg(long)]
    pub reason: String,
    /// The command's id (default: a new one). Re-sending an id that was
    /// applied changes nothing; a refused one is tried again.
    #[arg(long)]
    pub command_id: Option<String>,
    /// Seconds to wait for the outcome (default invoice.wait_timeout_s).
    #[arg(long)]
    pub timeout_s: Option<u64>,
}

/// The invoices one command kind is sent for, one command each, in order
/// (at most [`ACT_MAX_INVOICES`]; `--command-id` only with one). Every id
/// is looked up before anything is sent, so a mistyped one sends nothing.
#[derive(Debug, Args)]
pub struct Act {
    #[arg(required = true, num_args = 1..)]
    pub invoice_ids: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

/// Most invoices one `approve`, `hold`, `release` or `void` acts on.
pub const ACT_MAX_INVOICES: usize = 500;

#[derive(Debug, Args)]
pub struct CreditArgs {
    /// The invoice to credit; omit it for a service credit to a balance.
    pub invoice_id: Option<String>,
    #[arg(long)]
    pub amount: Option<Decimal>,
    /// Percent of the invoice's total.
    #[arg(long)]
    pub percent: Option<Decimal>,
    /// Balance credit: the customer.
    #[arg(long)]
    pub customer: Option<String>,
    /// Balance credit: the currency.
    #[arg(long)]
    pub currency: Option<String>,
    /// Balance credit: when it expires (RFC 3339).
    #[arg(long)]
    pub expires: Option<DateTime<Utc>>,
    #[command(flatten)]
    pub common: Common,
}

pub fn run(config: &Config, args: InvoicesArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        InvoicesAction::List {
            status,
            customer,
            period,
            legal_entity,
            held_by,
            json,
        } => {
            let all = read_invoices(config)?;
            let filter = InvoiceFilter {
                status,
                customer,
                period,
                legal_entity,
                held_by,
            };
            let shown: Vec<&Invoice> = all.values().filter(|i| filter.matches(i)).collect();
            print!("{}", render_list(&shown, json)?);
            Ok(ExitCode::SUCCESS)
        }
        InvoicesAction::Show { invoice_id, json } => {
            let all = read_invoices(config)?;
            let inv = all
                .get(&invoice_id)
                .ok_or_else(|| anyhow!("no invoice {invoice_id:?} on finance.invoices"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(inv)?);
            } else {
                let postings = crate::topology::postings::read(config)?.postings;
                print!("{}", render_show(inv, &postings));
            }
            Ok(ExitCode::SUCCESS)
        }
        InvoicesAction::Approve(a) => act(config, CommandKind::Approve, a),
        InvoicesAction::Hold(a) => act(config, CommandKind::Hold, a),
        InvoicesAction::Release(a) => act(config, CommandKind::Release, a),
        InvoicesAction::Void(a) => act(config, CommandKind::Void, a),
        InvoicesAction::Credit(c) => credit(config, c),
        InvoicesAction::Dispute { action } => dispute(config, action),
    }
}

/// The latest version of every invoice, by id.
pub fn read_invoices(config: &Config) -> anyhow::Result<BTreeMap<String, Invoice>> {
    let mut latest: BTreeMap<String, Invoice> = BTreeMap::new();
    let mut unreadable = crate::topology::postings::Unreadable::default();
    counts::for_each_record(config, &config.topic(names::INVOICES), |m| {
        let parsed =
            crate::topology::postings::parse_or_count(m, &mut unreadable, Invoice::from_json_slice);
        if let Some(inv) = parsed {
            if latest
                .get(&inv.invoice_id)
                .is_none_or(|seen| seen.version < inv.version)
            {
                latest.insert(inv.invoice_id.clone(), inv);
            }
        }
    })?;
    let note = unreadable.describe(&config.topic(names::INVOICES), "invoices");
    if !note.is_empty() {
        eprintln!("meterline: warning: {note}");
    }
    Ok(latest)
}

fn render_list(invoices: &[&Invoice], json: bool) -> anyhow::Result<String> {
    let mut out = String::new();
    if json {
        for i in invoices {
            out.push_str(&serde_json::to_string(i)?);
            out.push('\n');
        }
        return Ok(out);
    }
    out.push_str(&format!(
        "{:<36} {:<14} {:<12} {:<18} {:>14} {:>14} {:<4} holds\n",
        "invoice", "customer", "period", "status", "total", "open", "cur"
    ));
    for i in invoices {
        let holds: Vec<&str> = i.holds.iter().map(|h| h.rule.as_str()).collect();
        out.push_str(&format!(
            "{:<36} {:<14} {:<12} {:<18} {:>14} {:>14} {:<4} {}\n",
            i.invoice_id,
            i.customer.id,
            i.service_interval.id,
            i.status.as_str(),
            i.totals.total,
            i.totals.open,
            i.currency,
            holds.join(",")
        ));
    }
    out.push_str(&format!("{} invoice(s)\n", invoices.len()));
    Ok(out)
}

fn render_show(i: &Invoice, postings: &[Posting]) -> String {
    let mut out = format!(
        "invoice {} (version {}): {}\ncustomer {} ({}), subscription {}, plan {} v{}, legal entity {}\nservice interval {} [{} .. {})\n",
        i.invoice_id,
        i.version,
        i.status.as_str(),
        i.customer.id,
        i.customer.name,
        i.subscription_id,
        i.plan_id,
        i.plan_version,
        i.legal_entity,
        i.service_interval.id,
        i.service_interval.start,
        i.service_interval.end
    );
    for h in &i.holds {
        out.push_str(&format!("held: {} ({})\n", h.rule, h.detail));
    }
    out.push_str("lines:\n");
    for l in &i.lines {
        out.push_str(&format!(
            "  {:<16} {:>14} {}  qty {} {}{}\n",
            l.kind,
            l.amount,
            i.currency,
            l.quantity,
            l.description,
            l.tax_code
                .as_ref()
                .map(|c| format!(" [tax code {c}]"))
                .unwrap_or_default()
        ));
    }
    let t = &i.totals;
    out.push_str(&format!(
        "totals: subtotal {} + tax {} - service credits {} = total {}; credited {}, disputed {}, open {} {}\n",
        t.subtotal, t.tax, t.service_credits, t.total, t.credited, t.disputed, t.open, i.currency
    ));
    for m in &i.credit_memos {
        out.push_str(&format!(
            "credit memo {}: {} (tax {}) {} by {} at {}: {}\n",
            m.id, m.amount, m.tax, m.cause, m.actor, m.time, m.reason
        ));
    }
    for d in &i.disputes {
        out.push_str(&format!(
            "dispute {}: {} {} opened by {} at {}{}\n",
            d.id,
            d.amount,
            d.status,
            d.opened_by,
            d.opened_at,
            d.resolved_by
                .as_ref()
                .map(|r| format!(", resolved by {r}"))
                .unwrap_or_default()
        ));
    }
    out.push_str("postings:\n");
    let by_key: BTreeMap<&str, &Posting> = postings
        .iter()
        .map(|p| (p.idempotency_key.as_str(), p))
        .collect();
    for k in &i.postings {
        match by_key.get(k.as_str()) {
            Some(p) => out.push_str(&format!("  {}\n", posting_line(p))),
            None => out.push_str(&format!("  {k} (not on finance.postings yet)\n")),
        }
    }
    out.push_str("history:\n");
    for c in &i.history {
        out.push_str(&format!(
            "  {}  {:<16} -> {:<16} by {} ({}){}\n",
            c.at,
            c.action,
            c.status.as_str(),
            c.actor,
            c.command_id,
            if c.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", c.reason)
            }
        ));
    }
    out
}

fn posting_line(p: &Posting) -> String {
    let what = match (&p.invoice_line, p.lines.is_empty()) {
        (Some(l), _) => format!("invoice line {} {}", l.amount, l.description),
        (None, false) => p
            .lines
            .iter()
            .map(|l| format!("{:?} {} {}", l.side, l.account, l.amount))
            .collect::<Vec<_>>()
            .join(", "),
        _ => String::new(),
    };
    format!(
        "{} {:<16} {} {}  [{}]",
        p.accounting_date,
        p.kind,
        p.posting_type.as_str(),
        what,
        p.idempotency_key
    )
}

/// A new command of `kind` from `common`, for `customer`.
fn new_command(kind: CommandKind, customer: &str, common: &Common) -> Command {
    let id = common.command_id.clone().unwrap_or_else(|| {
        format!(
            "cli-{}-{}-{:08x}",
            common.actor,
            Utc::now().timestamp_millis(),
            rand::random::<u32>()
        )
    });
    let mut c = Command::new(id, kind, customer, common.actor.clone(), Utc::now());
    c.reason = common.reason.clone();
    c
}

/// The customer of an invoice, from finance.invoices.
fn customer_of(config: &Config, invoice_id: &str) -> anyhow::Result<String> {
    read_invoices(config)?
        .get(invoice_id)
        .map(|i| i.customer.id.clone())
        .ok_or_else(|| {
            anyhow!("no invoice {invoice_id:?} on finance.invoices (has its period closed?)")
        })
}

/// Sends `kind` for each invoice of `a` and waits for each outcome: exit 0
/// when every one was applied, else the code of the last that was not (1
/// refused, 2 not applied in time).
fn act(config: &Config, kind: CommandKind, a: Act) -> anyhow::Result<ExitCode> {
    let ids = &a.invoice_ids;
    if ids.len() > ACT_MAX_INVOICES {
        bail!(
            "{} invoices named: at most {ACT_MAX_INVOICES} at once",
            ids.len()
        );
    }
    if ids.len() > 1 && a.common.command_id.is_some() {
        bail!("--command-id names one command: give it with one invoice");
    }
    let invoices = read_invoices(config)?;
    let mut targets = Vec::with_capacity(ids.len());
    let mut unknown = Vec::new();
    for id in ids {
        match invoices.get(id) {
            Some(i) => targets.push((id, i.customer.id.as_str())),
            None => unknown.push(id.as_str()),
        }
    }
    if !unknown.is_empty() {
        bail!(
            "no invoice {} on finance.invoices (has its period closed?): nothing sent",
            unknown.join(", ")
        );
    }
    let mut exit = ExitCode::SUCCESS;
    for (id, customer) in targets {
        let mut cmd = new_command(kind, customer, &a.common);
        cmd.invoice_id = Some(id.clone());
        let code = send_and_wait(config, &cmd, a.common.timeout_s)?;
        if code != ExitCode::SUCCESS {
            exit = code;
        }
    }
    Ok(exit)
}

fn credit(config: &Config, c: CreditArgs) -> anyhow::Result<ExitCode> {
    match &c.invoice_id {
        Some(id) => {
            let customer = customer_of(config, id)?;
            let mut cmd = new_command(CommandKind::Credit, &customer, &c.common);
            cmd.invoice_id = Some(id.clone());
            cmd.amount = c.amount;
            cmd.percent = c.percent;
            send_and_wait(config, &cmd, c.common.timeout_s)
        }
        None => {
            let (Some(customer), Some(currency), Some(amount)) =
                (&c.customer, &c.currency, c.amount)
            else {
                bail!("a service credit needs --customer, --currency and --amount (or name an invoice)");
            };
            let mut cmd = new_command(CommandKind::Credit, customer, &c.common);
            cmd.currency = Some(currency.clone());
            cmd.amount = Some(amount);
            cmd.expires = c.expires;
            let sent_ms = Utc::now().timestamp_millis() - CLOCK_SKEW_ALLOWANCE_MS;
            send(config, &cmd)?;
            println!(
                "service credit {} of {amount} {currency} sent for customer {customer}: drawn by the approval of its next invoices",
                cmd.id
            );
            wait_refusal(config, &cmd, c.common.timeout_s, sent_ms)
        }
    }
}

fn dispute(config: &Config, action: DisputeAction) -> anyhow::Result<ExitCode> {
    match action {
        DisputeAction::Open {
            invoice_id,
            amount,
            common,
        } => {
            let customer = customer_of(config, &invoice_id)?;
            let mut cmd = new_command(CommandKind::DisputeOpen, &customer, &common);
            cmd.invoice_id = Some(invoice_id);
            cmd.amount = Some(amount);
            send_and_wait(config, &cmd, common.timeout_s)
        }
        DisputeAction::Resolve {
            invoice_id,
            dispute_id,
            outcome,
            common,
        } => {
            let outcome = match outcome.as_str() {
                "won" => DisputeOutcome::Won,
                "lost" => DisputeOutcome::Lost,
                other => bail!("--outcome {other:?}: won or lost"),
            };
            let customer = customer_of(config, &invoice_id)?;
            let mut cmd = new_command(CommandKind::DisputeResolve, &customer, &common);
            cmd.invoice_id = Some(invoice_id);
            cmd.dispute_id = Some(dispute_id);
            cmd.outcome = Some(outcome);
            send_and_wait(config, &cmd, common.timeout_s)
        }
    }
}

/// Publishes `cmd` keyed by its customer in one transaction, signed with
/// `$METERLINE_ACTOR_KEY` when it is set.
pub fn send(config: &Config, cmd: &Command) -> anyhow::Result<()> {
    let key_hex = std::env::var(ACTOR_KEY_ENV).ok();
    crate::commands::send_command(config, "invoices-cli", cmd, key_hex.as_deref()).map_err(|e| {
        match e {
            crate::commands::PublishError::KeyNotHex => {
                anyhow!("{ACTOR_KEY_ENV} is not a hex string")
            }
            e => anyhow!("command {}: {e}", cmd.id),
        }
    })
}

/// How a sent command ended, as far as the topics show.
enum Outcome {
    Applied(Box<Invoice>),
    Refused { code: String, message: String },
}

/// The invoice version that records `cmd`, or its dead letter written at
/// or after `sent_ms` (an earlier refusal of the same id is not this one's:
/// a command id is recorded only when it applies, so a re-send may apply).
fn outcome(config: &Config, cmd: &Command, sent_ms: i64) -> anyhow::Result<Option<Outcome>> {
    if let Some(id) = &cmd.invoice_id {
        if let Some(inv) = read_invoices(config)?.remove(id) {
            if inv.change_by(&cmd.id).is_some() {
                return Ok(Some(Outcome::Applied(Box::new(inv))));
            }
        }
    }
    let mut refused = None;
    counts::for_each_record(config, &config.topic(&names::dlq("invoice")), |m| {
        let now = m.timestamp().to_millis().is_some_and(|t| t >= sent_ms);
        let same = now
            && m.payload()
                .and_then(|v| Command::from_json_slice(v).ok())
                .is_some_and(|c| c.id == cmd.id && c.customer_id == cmd.customer_id);
        if same {
            refused = Some(Outcome::Refused {
                code: crate::kafka::header_text(m, dlq_headers::REASON),
                message: crate::kafka::header_text(m, dlq_headers::MESSAGE),
            });
        }
    })?;
    Ok(refused)
}

fn send_and_wait(
    config: &Config,
    cmd: &Command,
    timeout_s: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let sent_ms = Utc::now().timestamp_millis() - CLOCK_SKEW_ALLOWANCE_MS;
    send(config, cmd)?;
    let timeout = Duration::from_secs(timeout_s.unwrap_or(config.invoice.wait_timeout_s));
    let started = Instant::now();
    loop {
        match outcome(config, cmd, sent_ms)? {
            Some(Outcome::Applied(inv)) => {
                println!(
                    "{} {}: {} (version {}), total {} open {} {}{}",
                    cmd.kind.as_str(),
                    inv.invoice_id,
                    inv.status.as_str(),
                    inv.version,
                    inv.totals.total,
                    inv.totals.open,
                    inv.currency,
                    if inv.holds.is_empty() {
                        String::new()
                    } else {
                        let rules: Vec<&str> = inv.holds.iter().map(|h| h.rule.as_str()).collect();
                        format!(", held by {}", rules.join(", "))
                    }
                );
                return Ok(ExitCode::SUCCESS);
            }
            Some(Outcome::Refused { code, message }) => {
                print_refused(cmd, &code, &message);
                return Ok(ExitCode::from(1));
            }
            None if started.elapsed() >= timeout => {
                eprintln!(
                    "{} {}: sent, not applied within {} s (is the invoice stage running?); re-sending with --command-id {} is safe",
                    cmd.kind.as_str(),
                    cmd.id,
                    timeout.as_secs(),
                    cmd.id
                );
                return Ok(ExitCode::from(2));
            }
            None => std::thread::sleep(Duration::from_millis(OUTCOME_POLL_MS)),
        }
    }
}

/// A refusal, and how to try the command again without ever applying it
/// twice: a refused id is not spent, so re-sent under its own id it is
/// applied once, and its dead letter replayed later changes nothing (a new
/// id and a replay would both apply).
fn print_refused(cmd: &Command, code: &str, message: &str) {
    eprintln!(
        "{} {}: refused [{code}] {message}",
        cmd.kind.as_str(),
        cmd.id
    );
    eprintln!(
        "to try it again once the cause is fixed, re-send it with --command-id {} \
         (or replay it from meterline.dlq.invoice): under its own id it is applied at most once",
        cmd.id
    );
}

/// For a command that changes no invoice (a service credit): waits a
/// bounded time for a refusal (exit 1); none seen: exit 0, said so.
fn wait_refusal(
    config: &Config,
    cmd: &Command,
    timeout_s: Option<u64>,
    sent_ms: i64,
) -> anyhow::Result<ExitCode> {
    let wait_s = timeout_s.unwrap_or(SERVICE_CREDIT_REFUSAL_WAIT_S);
    let timeout = Duration::from_secs(wait_s);
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(Outcome::Refused { code, message }) = outcome(config, cmd, sent_ms)? {
            print_refused(cmd, &code, &message);
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(OUTCOME_POLL_MS));
    }
    println!("no refusal of {} within {wait_s} s", cmd.id);
    Ok(ExitCode::SUCCESS)
}
