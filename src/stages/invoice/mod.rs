//! The invoice stage: billing periods become invoice documents that wait
//! for approval when a rule says so, and finance operators' commands act on
//! them, each exactly once, in the same Kafka transaction as the postings
//! it causes and the command's offset.
//!
//! Its input is `billing.commands`, keyed by customer id (a [`Command`]
//! JSON per record; anything else is dead-lettered to
//! `meterline.dlq.invoice` with [`reason::MALFORMED_COMMAND`]):
//!
//! * `draft` (from post): the deferred postings of one closed window of
//!   the invoice `<subscription>@<period>` ([`DraftPart`]). The first part
//!   opens the invoice (`draft`); each adds its invoice lines and pending
//!   postings. The part that closes it (the period close) applies the
//!   approval policy ([`policy`]): no rule holds => approved and posted at
//!   once; otherwise `pending_approval` with every rule that held it.
//! * `event_parked` / `event_unparked` (from enrich): the customer's parked
//!   events, for the `parked_events` rule.
//! * operator commands ([`commands`]): `approve`, `hold`, `release`,
//!   `void`, `credit`, `dispute_open`, `dispute_resolve`, each with an id
//!   (applied once: a re-sent id changes nothing), actor, reason and time,
//!   signed by the actor's key when `invoice.actor_keys_hex` is set.
//!
//! Posting an invoice emits, in order: the pending postings (exactly what
//! post computed: invoice lines, rounding, reclass, base fee, true-up), one
//! tax line and entry per tax code (`invoice.tax = "table"`), and the
//! service credit drawn from the customer's balance. Every change of an
//! invoice publishes its next version on `finance.invoices` (compacted,
//! keyed by invoice id). The state machine and the journal entries of each
//! command are tabled in README.md ("Invoices").

pub mod book;
pub mod commands;
pub mod error;
pub mod policy;
pub mod postings;
pub mod reason;
pub mod state;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use self::error::InvoiceError;
use self::state::{read, write, Balance, InvoiceState, LastInvoice, INVOICES};
use crate::config::{Config, InvoiceConfig};
use crate::contracts::{Command, CommandKind, DraftPart, InvoiceStatus, Posting, SIGNATURE_HEADER};
use crate::money::RoundingMode;
use crate::refdata::{RefKind, RefTables};
use crate::runtime::{Ctx, InputRecord, Output, Processor, StageError};
use crate::topology::{self, StageSpec};

/// The actor of the approval policy's decisions in an invoice's history.
pub const POLICY_ACTOR: &str = "meterline:policy";
/// Actors of the stages' commands start with this; no person may use it.
pub const SYSTEM_ACTOR_PREFIX: &str = "meterline:";

/// This stage's entry in the stage table.
#[allow(clippy::indexing_slicing)]
const SPEC: &StageSpec = &topology::STAGES[6];

pub struct InvoiceProcessor {
    postings_topic: String,
    invoices_topic: String,
    invoice: InvoiceConfig,
    rounding_mode: RoundingMode,
    /// `ref.tax_rates`, the only table this stage reads.
    tables: RefTables,
    metrics: metrics::InvoiceMetrics,
    /// Per partition: when its gauges were last summed, and the sums.
    gauges: std::collections::BTreeMap<i32, (i64, metrics::PartitionGauges)>,
}

/// How an invoice is approved: the history's action and actor, and
/// whether the approval draws the customer's service credits (not for a
/// void: they must not be spent on a cancelled invoice).
pub struct Approval<'a> {
    pub action: &'a str,
    pub actor: &'a str,
    pub draw_credits: bool,
}

/// What one command changed: the invoices to store and publish, and the
/// postings to emit, in order.
#[derive(Default)]
pub struct Changes {
    pub invoices: Vec<InvoiceState>,
    pub postings: Vec<Posting>,
}

impl InvoiceProcessor {
    pub fn new(config: &Config) -> Self {
        InvoiceProcessor {
            postings_topic: config.topic(topology::names::POSTINGS),
            invoices_topic: config.topic(topology::names::INVOICES),
            invoice: config.invoice.clone(),
            rounding_mode: config.post.rounding_mode,
            tables: RefTables::new(),
            metrics: metrics::InvoiceMetrics::new(),
            gauges: std::collections::BTreeMap::new(),
        }
    }

    /// A system command comes from a meterline actor; an operator command
    /// from a person, signed by their key when keys are configured.
    fn authenticate(&self, rec: &InputRecord<'_>, cmd: &Command) -> Result<(), InvoiceError> {
        let system_actor = cmd.actor.starts_with(SYSTEM_ACTOR_PREFIX);
        if cmd.kind.is_system() != system_actor {
            return Err(InvoiceError::UnknownActor(cmd.actor.clone()));
        }
        if system_actor || self.invoice.actor_keys_hex.is_empty() {
            return Ok(());
        }
        let key = self
            .invoice
            .actor_key(&cmd.actor)
            .ok_or_else(|| InvoiceError::UnknownActor(cmd.actor.clone()))?;
        let signature = rec
            .headers
            .iter()
            .find(|(k, _)| k == SIGNATURE_HEADER)
            .and_then(|(_, v)| v.as_deref())
            .ok_or_else(|| InvoiceError::SignatureMissing(cmd.actor.clone()))?;
        let invalid = || InvoiceError::SignatureInvalid(cmd.actor.clone());
        let signature = std::str::from_utf8(signature)
            .ok()
            .and_then(|s| hex::decode(s.trim()).ok())
            .ok_or_else(invalid)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|_| invalid())?;
        mac.update(rec.value.unwrap_or_default());
        mac.verify_slice(&signature).map_err(|_| invalid())
    }

    /// The invoice a draft part goes to: its own while in draft; once it
    /// closed, a supplementary invoice `<id>~N` (a window that arrived
    /// after the period close, which aggregate's order rules out for one
    /// subscription, or a replayed window).
    fn target(&self, ctx: &mut Ctx<'_>, part: &DraftPart) -> Result<String, StageError> {
        let base_id = part.invoice_id.clone();
        let Some(mut base) = read::<InvoiceState>(ctx, &state::invoice_key(&base_id))? else {
            return Ok(base_id);
        };
        if base.doc.status == InvoiceStatus::Draft {
            return Ok(base_id);
        }
        if base.supplements > 0 {
            let current = format!("{base_id}~{}", base.supplements);
            let open = read::<InvoiceState>(ctx, &state::invoice_key(&current))?;
            if open.is_some_and(|s| s.doc.status == InvoiceStatus::Draft) {
                return Ok(current);
            }
        }
        base.supplements += 1;
        let id = format!("{base_id}~{}", base.supplements);
        write(ctx, state::invoice_key(&base_id), &base)?;
        Ok(id)
    }

    fn draft(
        &mut self,
        ctx: &mut Ctx<'_>,
        cmd: &Command,
        ch: &mut Changes,
    ) -> Result<(), StageError> {
        let part = cmd
            .draft
            .as_ref()
            .ok_or_else(|| InvoiceError::Malformed("a draft without its part".into()))?;
        if part.customer.id != cmd.customer_id {
            return Err(InvoiceError::CustomerMismatch(format!(
                "the draft's customer {} is not the command's {}",
                part.customer.id, cmd.customer_id
            ))
            .into());
        }
        let id = self.target(ctx, part)?;
        let supplement = id != part.invoice_id;
        let mut st = match read::<InvoiceState>(ctx, &state::invoice_key(&id))? {
            Some(st) => st,
            None => {
                let mut st = book::open(part, &id);
                st.is_supplement = supplement;
                book::record(&mut st, InvoiceStatus::Draft, "draft", &cmd.actor, cmd);
                st
            }
        };
        book::add_part(&mut st, part)?;
        // A part for an invoice that already closed has no period close to
        // wait for: its supplementary invoice closes with it (no draft is
        // ever left open for good).
        if part.closes || supplement {
            self.close(ctx, &mut st, cmd, ch)?;
        }
        ch.invoices.push(st);
        Ok(())
    }

    /// The period closed: the policy approves or holds.
    fn close(
        &mut self,
        ctx: &mut Ctx<'_>,
        st: &mut InvoiceState,
        cmd: &Command,
        ch: &mut Changes,
    ) -> Result<(), StageError> {
        let doc = &st.doc;
        let supplement = st.is_supplement;
        let last_key = state::last_key(&doc.subscription_id);
        let previous = match supplement {
            true => None,
            false => read::<LastInvoice>(ctx, &last_key)?,
        };
        let (from, to) = state::parked_range(
            &doc.customer.id,
            doc.service_interval.start.timestamp_millis(),
            doc.service_interval.end.timestamp_millis(),
        );
        let parked = !ctx.stores.scan(INVOICES, &from, &to, 1)?.is_empty();
        st.complete_accounts(&self.tables);
        let tax = book::plan_tax(st, &self.tables, &self.invoice, self.rounding_mode)?;
        if let Ok(taxes) = &tax {
            book::apply_tax(st, taxes.clone())?;
        }
        let mut balance = self.balance(ctx, st)?;
        balance.expire(cmd.time);
        let facts = policy::Facts {
            previous_gross: previous.as_ref().map(|p| p.total),
            parked_in_interval: parked,
            tax_codes_missing: tax.clone().err().unwrap_or_default(),
            credits_account_missing: st.gl_accounts.credits.is_none()
                && balance.available() > rust_decimal::Decimal::ZERO
                && book::gross(&st.doc) > rust_decimal::Decimal::ZERO,
        };
        let holds = policy::holds(st, &self.invoice, &facts);
        if !supplement && previous.is_none_or(|p| p.service_start <= st.doc.service_interval.start)
        {
            let last = LastInvoice {
                invoice_id: st.doc.invoice_id.clone(),
                service_start: st.doc.service_interval.start,
                total: book::gross(&st.doc),
            };
            write(ctx, last_key, &last)?;
        }
        match holds.is_empty() && st.tax_applied {
            true => {
                let how = Approval {
                    action: "policy",
                    actor: POLICY_ACTOR,
                    draw_credits: true,
                };
                self.approve_now(ctx, st, cmd, how, ch)
            }
            false => {
                st.doc.holds = holds;
                book::record(
                    st,
                    InvoiceStatus::PendingApproval,
                    "policy",
                    POLICY_ACTOR,
                    cmd,
                );
                Ok(())
            }
        }
    }

    fn balance(&self, ctx: &Ctx<'_>, st: &InvoiceState) -> Result<Balance, StageError> {
        let key = state::balance_key(&st.doc.customer.id, &st.doc.currency);
        Ok(read::<Balance>(ctx, &key)?.unwrap_or_default())
    }

    /// Approves and posts `st` now (its tax applied): history `approved`
    /// then `posted`, the postings of [`book::approve`] queued, the balance
    /// drawn stored.
    fn approve_now(
        &mut self,
        ctx: &mut Ctx<'_>,
        st: &mut InvoiceState,
        cmd: &Command,
        how: Approval<'_>,
        ch: &mut Changes,
    ) -> Result<(), StageError> {
        let Approval {
            action,
            actor,
            draw_credits,
        } = how;
        let mut balance = self.balance(ctx, st)?;
        book::record(st, InvoiceStatus::Approved, action, actor, cmd);
        let postings = book::approve(st, draw_credits.then_some(&mut balance), cmd.time)?;
        if draw_credits {
            let key = state::balance_key(&st.doc.customer.id, &st.doc.currency);
            match balance.grants.is_empty() {
                true => ctx.stores.delete(INVOICES, key),
                false => write(ctx, key, &balance)?,
            }
        }
        st.doc.holds.clear();
        book::record(st, InvoiceStatus::Posted, action, actor, cmd);
        ch.postings.extend(postings);
        Ok(())
    }

    /// Stores and publishes each changed invoice (next version), then
    /// emits the postings, every journal checked balanced first. Every
    /// document is serialized and its size checked before anything is
    /// counted or written, so a refused command leaves no trace.
    fn emit(&mut self, ctx: &mut Ctx<'_>, ch: Changes) -> Result<(), StageError> {
        book::check_balanced(&ch.postings)?;
        let mut versions = Vec::with_capacity(ch.invoices.len());
        for mut st in ch.invoices {
            book::list_postings(&mut st.doc, &ch.postings);
            st.doc.version += 1;
            let value = document(&st.doc)?;
            versions.push((st, value));
        }
        for (st, value) in versions {
            let key = state::invoice_key(&st.doc.invoice_id);
            let before = read::<InvoiceState>(ctx, &key)?.map_or(0, |b| b.doc.history.len());
            self.metrics.invoice_changed(&st.doc, before);
            self.watch(ctx, &st.doc)?;
            ctx.emit(Output {
                topic: self.invoices_topic.clone(),
                key: Some(st.doc.invoice_id.clone().into_bytes()),
                value: Some(value),
                headers: Vec::new(),
                partition: None,
            });
            write(ctx, key, &st)?;
        }
        for p in ch.postings {
            let key = serde_json::to_vec(&[&p.legal_entity, &p.subscription_id])
                .map_err(|e| StageError::Fatal(format!("serializing a key: {e}")))?;
            crate::internal_events::PostingEmitted {
                stage: SPEC.name,
                posting_type: p.posting_type.as_str(),
                kind: p.kind.as_str(),
                idempotency_key: &p.idempotency_key,
            }
            .emit(&self.metrics.postings);
            let value = p
                .to_json_bytes()
                .map_err(|e| StageError::Fatal(format!("serializing a posting: {e}")))?;
            ctx.emit(Output {
                topic: self.postings_topic.clone(),
                key: Some(key),
                value: Some(value),
                headers: Vec::new(),
                partition: None,
            });
        }
        Ok(())
    }

    /// Keeps the `Q` entry of an invoice that waits for approval or has an
    /// open dispute (what the gauges read), drops it otherwise.
    fn watch(&self, ctx: &mut Ctx<'_>, doc: &crate::contracts::Invoice) -> Result<(), StageError> {
        let key = state::watch_key(&doc.invoice_id);
        let waiting = doc.status == InvoiceStatus::PendingApproval;
        if !waiting && doc.totals.disputed.is_zero() {
            ctx.stores.delete(INVOICES, key);
            return Ok(());
        }
        let before = read::<state::Watch>(ctx, &key)?;
        let since = before
            .and_then(|w| w.pending_since_ms)
            .unwrap_or(ctx.now_ms);
        let watch = state::Watch {
            currency: doc.currency.clone(),
            legal_entity: doc.legal_entity.clone(),
            pending_since_ms: waiting.then_some(since),
            pending_amount: if waiting {
                book::gross(doc)
            } else {
                rust_decimal::Decimal::ZERO
            },
            disputed: doc.totals.disputed,
        };
        write(ctx, key, &watch)
    }

    /// Sums the partition's waiting invoices and service-credit balances.
    fn measure(ctx: &Ctx<'_>) -> Result<metrics::PartitionGauges, StageError> {
        let mut g = metrics::PartitionGauges::default();
        let (from, to) = state::watch_range();
        for (_, v) in ctx
            .stores
            .scan(INVOICES, &from, &to, metrics::GAUGES_SCAN_MAX)?
        {
            let w: state::Watch = serde_json::from_slice(&v)
                .map_err(|e| StageError::Fatal(format!("invoices store: corrupt watch: {e}")))?;
            let pair = (w.currency.clone(), w.legal_entity.clone());
            if let Some(since) = w.pending_since_ms {
                let e = g.pending.entry(pair.clone()).or_default();
                e.0 += 1;
                e.1 += w.pending_amount;
                g.oldest_pending_since_ms =
                    Some(g.oldest_pending_since_ms.map_or(since, |o| o.min(since)));
            }
            if !w.disputed.is_zero() {
                *g.disputed.entry(pair).or_default() += w.disputed;
            }
        }
        let (from, to) = state::all_balances_range();
        for (k, v) in ctx
            .stores
            .scan(INVOICES, &from, &to, metrics::GAUGES_SCAN_MAX)?
        {
            let mut r =
                crate::store::keys::KeyReader::new(&k, from.first().copied().unwrap_or_default())
                    .map_err(|e| {
                    StageError::Fatal(format!("invoices store: corrupt balance key: {e}"))
                })?;
            let _customer = r.str().map_err(|e| StageError::Fatal(e.to_string()))?;
            let currency = r
                .str()
                .map_err(|e| StageError::Fatal(e.to_string()))?
                .to_string();
            let b: Balance = serde_json::from_slice(&v)
                .map_err(|e| StageError::Fatal(format!("invoices store: corrupt balance: {e}")))?;
            *g.credit_balance.entry(currency).or_default() += b.available();
        }
        Ok(g)
    }

    /// enrich's notice of a parked (or no longer parked) event.
    fn parked(&self, ctx: &mut Ctx<'_>, cmd: &Command) -> Result<(), StageError> {
        let e = cmd.parked.as_ref().ok_or_else(|| {
            InvoiceError::Malformed("a parked-event notice without its event".into())
        })?;
        let key = state::parked_key(
            &cmd.customer_id,
            e.event_time.timestamp_millis(),
            &e.source,
            &e.id,
        );
        match cmd.kind {
            CommandKind::EventParked => {
                let code = e.code.clone().unwrap_or_default().into_bytes();
                ctx.stores.put(INVOICES, key, code);
            }
            _ => ctx.stores.delete(INVOICES, key),
        }
        Ok(())
    }
}

/// An invoice's record on `finance.invoices`, refused when larger than
/// [`crate::config::INVOICE_DOC_MAX_BYTES`].
fn document(doc: &crate::contracts::Invoice) -> Result<Vec<u8>, StageError> {
    let value = doc
        .to_json_bytes()
        .map_err(|e| StageError::Fatal(format!("serializing an invoice: {e}")))?;
    let max = crate::config::INVOICE_DOC_MAX_BYTES;
    if value.len() > max {
        let invoice = doc.invoice_id.clone();
        let bytes = value.len();
        return Err(InvoiceError::TooLarge {
            invoice,
            bytes,
            max,
        }
        .into());
    }
    Ok(value)
}

fn parse(rec: &InputRecord<'_>) -> Result<Command, InvoiceError> {
    let value = rec
        .value
        .ok_or_else(|| InvoiceError::Malformed("the record has no value".into()))?;
    let cmd =
        Command::from_json_slice(value).map_err(|e| InvoiceError::Malformed(e.to_string()))?;
    if cmd.id.trim().is_empty() || cmd.actor.trim().is_empty() || cmd.customer_id.is_empty() {
        return Err(InvoiceError::Malformed(
            "id, actor and customer_id must not be empty".into(),
        ));
    }
    if cmd.reason.len() > crate::config::MAX_COMMAND_REASON_BYTES {
        return Err(InvoiceError::Malformed(format!(
            "reason is longer than {} bytes",
            crate::config::MAX_COMMAND_REASON_BYTES
        )));
    }
    if rec.key != Some(cmd.customer_id.as_bytes()) {
        return Err(InvoiceError::CustomerMismatch(format!(
            "the record key must be the customer id {:?} (commands are keyed by customer)",
            cmd.customer_id
        )));
    }
    Ok(cmd)
}

impl Processor for InvoiceProcessor {
    fn spec(&self) -> &'static StageSpec {
        SPEC
    }

    fn process(&mut self, rec: &InputRecord<'_>, ctx: &mut Ctx<'_>) -> Result<(), StageError> {
        let cmd = parse(rec)?;
        self.authenticate(rec, &cmd)?;
        if matches!(
            cmd.kind,
            CommandKind::EventParked | CommandKind::EventUnparked
        ) {
            return self.parked(ctx, &cmd);
        }
        let applied = state::command_key(&cmd.customer_id, &cmd.id);
        if ctx.stores.get(INVOICES, &applied)?.is_some() {
            self.metrics.duplicate(cmd.kind);
            return Ok(());
        }
        let mut ch = Changes::default();
        match cmd.kind {
            CommandKind::Draft => self.draft(ctx, &cmd, &mut ch)?,
            _ => commands::apply(self, ctx, &cmd, &mut ch)?,
        }
        ctx.stores.put(INVOICES, applied, Vec::new());
        self.emit(ctx, ch)?;
        self.metrics.applied(cmd.kind);
        Ok(())
    }

    /// Every [`metrics::GAUGES_INTERVAL_MS`]: the partition's gauges.
    fn punctuate(&mut self, ctx: &mut Ctx<'_>, now_ms: i64) -> Result<(), StageError> {
        let due = self
            .gauges
            .get(&ctx.partition)
            .is_none_or(|(at, _)| now_ms - at >= metrics::GAUGES_INTERVAL_MS);
        if due {
            let g = Self::measure(ctx)?;
            self.gauges.insert(ctx.partition, (now_ms, g));
            self.metrics.measured(&self.gauges, now_ms);
        }
        Ok(())
    }

    fn on_revoked(&mut self, partition: i32) {
        self.gauges.remove(&partition);
    }

    /// Tax rates, and plans for the accounts an invoice was drafted
    /// without ([`InvoiceState::complete_accounts`]).
    fn on_table_record(&mut self, table: &str, key: Option<&[u8]>, value: Option<&[u8]>) {
        let kind = match table {
            topology::names::REF_TAX_RATES => RefKind::TaxRates,
            topology::names::REF_PLANS => RefKind::Plans,
            _ => return,
        };
        let key = String::from_utf8_lossy(key.unwrap_or_default()).into_owned();
        if let Err(e) = self.tables.apply(kind, &key, value) {
            tracing::warn!(table, key, code = e.code(), error = %e, "reference record skipped");
        }
    }
}

mod metrics;

#[cfg(test)]
mod tests;
