//! One batch into the ledger: every row, the acks and dead letters to send
//! (the outbox) and the consumed offsets, in ONE database transaction. So
//! the ledger and its read position never disagree: a crash before the
//! commit leaves nothing of the batch, after it the batch is whole and the
//! next start resumes after it.
//!
//! Offsets are compare-and-set: the transaction locks each partition's row
//! of `consumer_offsets` and goes on only if it still says where this
//! instance thinks it is. An instance that lost a partition in a rebalance
//! (a zombie) and one that took it over can never both write a record.

use std::collections::BTreeMap;

use postgres::{Statement, Transaction};

use crate::contracts::{AckSource, AckStatus, Invoice, LedgerAck, PostingType};
use crate::ledger::reason;
use crate::ledger::record::{debit_credit, CheckedPosting, Decoded, InRecord};
use crate::runtime::dlq::dead_letter;
use crate::runtime::Output;
use crate::topology::names;

/// (topic, partition) -> the next offset to read; absent: from the start.
pub type Positions = BTreeMap<(String, i32), i64>;

/// What one record did to the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Newly in the ledger under this row id.
    Accepted(i64),
    /// Already in the ledger with the same content (sent again).
    Duplicate(i64),
    /// Refused: acked `rejected` (a posting) and dead-lettered.
    Rejected { reason: &'static str },
    /// Already in the ledger with other content: dead-lettered, the stored
    /// one keeps its `accepted` ack.
    Conflict(i64),
    /// An invoice document stored (a new version).
    InvoiceStored,
    /// An invoice version at or below the stored one: nothing to do.
    InvoiceStale,
    /// A delete marker of a compacted topic.
    Tombstone,
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Another instance moved a partition's offset: this one must reload
    /// its positions and drop what it holds of that partition.
    #[error("{topic}[{partition}] is at offset {in_db:?} in the ledger, this instance expected {expected:?}: another instance owns it")]
    Fenced {
        topic: String,
        partition: i32,
        in_db: Option<i64>,
        expected: Option<i64>,
    },
    /// The record at `index` made the database refuse a row (a constraint
    /// or a data exception): retry the batch with it refused.
    #[error("record {index} of the batch: {message}")]
    RowRefused { index: usize, message: String },
    /// Anything else (connection, timeout, serialization): retry the batch.
    #[error("database")]
    Db(#[from] postgres::Error),
    #[error("not connected to the ledger database")]
    NotConnected,
}

/// The prepared statements of one connection (schema written in).
pub struct Statements {
    lock_offset: Statement,
    upsert_offset: Statement,
    find_posting: Statement,
    closed_period: Statement,
    known_accounts: Statement,
    insert_posting: Statement,
    insert_line: Statement,
    insert_invoice_line_posting: Statement,
    insert_control_total: Statement,
    status_accepted: Statement,
    status_rejected: Statement,
    invoice_version: Statement,
    delete_invoice_lines: Statement,
    upsert_invoice: Statement,
    insert_invoice_line: Statement,
    insert_outbox: Statement,
}

impl Statements {
    pub fn prepare(c: &mut postgres::Client, s: &str) -> Result<Self, postgres::Error> {
        let mut p = |sql: &str| c.prepare(&sql.replace("{s}", s));
        Ok(Statements {
            lock_offset: p("SELECT next_offset FROM {s}.consumer_offsets \
                 WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE")?,
            upsert_offset: p("INSERT INTO {s}.consumer_offsets (consumer_group, topic, partition, next_offset) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (consumer_group, topic, partition) \
                 DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()")?,
            find_posting: p("SELECT posting_id, document FROM {s}.postings WHERE idempotency_key = $1")?,
            closed_period: p("SELECT legal_entity, from_date::text, to_date::text FROM {s}.closed_periods \
                 WHERE legal_entity IN ($1, '*') AND $2::date BETWEEN from_date AND to_date LIMIT 1")?,
            known_accounts: p("SELECT account FROM {s}.accounts WHERE legal_entity = $1 AND account = ANY($2)")?,
            insert_posting: p("INSERT INTO {s}.postings (idempotency_key, posting_type, kind, legal_entity, \
                 currency, accounting_date, customer_id, erp_customer_id, subscription_id, invoice_id, \
                 billing_period_id, window_kind, window_id, adjusts_window_id, segment_id, meter, document, \
                 source_topic, source_partition, source_offset) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                 $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20) RETURNING posting_id")?,
            insert_line: p("INSERT INTO {s}.journal_lines (posting_id, line_no, account, debit, credit) \
                 VALUES ($1, $2, $3, $4, $5)")?,
            insert_invoice_line_posting: p("INSERT INTO {s}.invoice_line_postings (posting_id, description, \
                 quantity, unit, amount, tax_code) VALUES ($1, $2, $3, $4, $5, $6)")?,
            insert_control_total: p("INSERT INTO {s}.control_totals (posting_id, event_count, quantity, \
                 amount, amount_rounded, lineage_digest) VALUES ($1, $2, $3, $4, $5, $6)")?,
            status_accepted: p("INSERT INTO {s}.posting_status (idempotency_key, status, posting_id) \
                 VALUES ($1, 'accepted', $2) ON CONFLICT (idempotency_key) DO UPDATE \
                 SET status = 'accepted', posting_id = EXCLUDED.posting_id, reason = NULL, message = NULL, \
                 updated_at = now()")?,
            // A refusal never overwrites an accepted posting's standing.
            status_rejected: p("INSERT INTO {s}.posting_status (idempotency_key, status, reason, message) \
                 VALUES ($1, 'rejected', $2, $3) ON CONFLICT (idempotency_key) DO UPDATE \
                 SET reason = EXCLUDED.reason, message = EXCLUDED.message, updated_at = now() \
                 WHERE {s}.posting_status.status = 'rejected'")?,
            invoice_version: p("SELECT version FROM {s}.invoices WHERE invoice_id = $1 FOR UPDATE")?,
            delete_invoice_lines: p("DELETE FROM {s}.invoice_lines WHERE invoice_id = $1")?,
            upsert_invoice: p("INSERT INTO {s}.invoices (invoice_id, version, status, customer_id, \
                 erp_customer_id, subscription_id, legal_entity, currency, period_start, period_end, subtotal, \
                 tax, service_credits, total, credited, disputed, open_amount, document) VALUES ($1, $2, $3, \
                 $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18) \
                 ON CONFLICT (invoice_id) DO UPDATE SET version = EXCLUDED.version, status = EXCLUDED.status, \
                 subtotal = EXCLUDED.subtotal, tax = EXCLUDED.tax, service_credits = EXCLUDED.service_credits, \
                 total = EXCLUDED.total, credited = EXCLUDED.credited, disputed = EXCLUDED.disputed, \
                 open_amount = EXCLUDED.open_amount, document = EXCLUDED.document, synced_at = now()")?,
            insert_invoice_line: p("INSERT INTO {s}.invoice_lines (invoice_id, line_no, kind, description, \
                 quantity, unit, amount, tax_code, posting_key) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)")?,
            insert_outbox: p("INSERT INTO {s}.outbox (topic, partition, key, value, headers) \
                 VALUES ($1, $2, $3, $4, $5)")?,
        })
    }
}

/// What a batch writes besides the rows.
pub struct BatchContext<'a> {
    pub statements: &'a Statements,
    pub group: &'a str,
    pub require_known_accounts: bool,
    /// Full names of the ack and dead-letter topics.
    pub acks_topic: &'a str,
    pub dlq_topic: &'a str,
    pub dlq_partitions: i32,
    /// Records of this batch the database refused on an earlier try, by
    /// index: refused again without touching the database.
    pub refused_rows: &'a BTreeMap<usize, String>,
}

/// Writes `batch` (records at or after `positions`) in one transaction
/// and returns each record's outcome, in order.
pub fn apply(
    client: &mut postgres::Client,
    cx: &BatchContext<'_>,
    batch: &[InRecord],
    positions: &Positions,
) -> Result<Vec<Outcome>, ApplyError> {
    let mut tx = client.transaction()?;
    let next = check_positions(&mut tx, cx, batch, positions)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for (index, rec) in batch.iter().enumerate() {
        let outcome = match cx.refused_rows.get(&index) {
            Some(message) => {
                let key = crate::ledger::record::idempotency_key_of(rec);
                let why = reason::CONSTRAINT_VIOLATION;
                refuse(&mut tx, cx, rec, key.as_deref(), why, message)?
            }
            None => apply_one(&mut tx, cx, rec).map_err(|e| row_error(index, e))?,
        };
        outcomes.push(outcome);
    }
    for ((topic, partition), offset) in &next {
        tx.execute(
            &cx.statements.upsert_offset,
            &[&cx.group, topic, partition, offset],
        )?;
    }
    tx.commit()?;
    Ok(outcomes)
}

/// A data exception (22) or integrity violation (23) is the row's fault;
/// anything else is the database's.
fn row_error(index: usize, e: postgres::Error) -> ApplyError {
    let refused = e.as_db_error().filter(|d| {
        let code = d.code().code();
        code.starts_with("22") || code.starts_with("23")
    });
    match refused {
        Some(d) => {
            let constraint = d
                .constraint()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            let message = format!("{}{constraint}: {}", d.code().code(), d.message());
            ApplyError::RowRefused { index, message }
        }
        None => ApplyError::Db(e),
    }
}

/// Locks each partition's offset row and checks it is where this instance
/// thinks; returns the offsets to store after the batch.
fn check_positions(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    batch: &[InRecord],
    positions: &Positions,
) -> Result<Positions, ApplyError> {
    let mut next = Positions::new();
    for rec in batch {
        let k = (rec.topic.clone(), rec.partition);
        let stored = next.insert(k, rec.offset + 1);
        debug_assert!(stored.is_none_or(|s| s <= rec.offset), "batch out of order");
    }
    for (topic, partition) in next.keys() {
        let rows = tx.query(&cx.statements.lock_offset, &[&cx.group, topic, partition])?;
        let in_db: Option<i64> = rows.first().map(|r| r.get(0));
        let expected = positions.get(&(topic.clone(), *partition)).copied();
        if in_db != expected {
            return Err(ApplyError::Fenced {
                topic: topic.clone(),
                partition: *partition,
                in_db,
                expected,
            });
        }
    }
    Ok(next)
}

fn apply_one(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    rec: &InRecord,
) -> Result<Outcome, postgres::Error> {
    match crate::ledger::record::decode(rec.input, rec.value.as_deref()) {
        Decoded::Tombstone => Ok(Outcome::Tombstone),
        Decoded::Refused {
            reason,
            message,
            idempotency_key,
        } => refuse(tx, cx, rec, idempotency_key.as_deref(), reason, &message),
        Decoded::Invoice(inv) => store_invoice(tx, cx, &inv),
        Decoded::Posting(p) => apply_posting(tx, cx, rec, &p),
    }
}

fn apply_posting(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    rec: &InRecord,
    p: &CheckedPosting,
) -> Result<Outcome, postgres::Error> {
    let key = p.posting.idempotency_key.as_str();
    if let Some(row) = tx.query_opt(&cx.statements.find_posting, &[&key])? {
        let (id, stored): (i64, serde_json::Value) = (row.get(0), row.get(1));
        if stored == p.document {
            send_ack(tx, cx, rec, key, AckStatus::Accepted, Some(id), None)?;
            return Ok(Outcome::Duplicate(id));
        }
        let message = format!("the ledger holds {key} as row {id} with other content");
        dead_letter_row(tx, cx, rec, reason::IDEMPOTENCY_CONFLICT, &message)?;
        send_ack(tx, cx, rec, key, AckStatus::Accepted, Some(id), None)?;
        return Ok(Outcome::Conflict(id));
    }
    if let Some(refusal) = ledger_refusal(tx, cx, p)? {
        return refuse(tx, cx, rec, Some(key), refusal.0, &refusal.1);
    }
    let id = insert_posting(tx, cx, rec, p)?;
    tx.execute(&cx.statements.status_accepted, &[&key, &id])?;
    send_ack(tx, cx, rec, key, AckStatus::Accepted, Some(id), None)?;
    Ok(Outcome::Accepted(id))
}

/// The ledger's own rules: closed periods, known accounts.
fn ledger_refusal(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    p: &CheckedPosting,
) -> Result<Option<(&'static str, String)>, postgres::Error> {
    let posting = &p.posting;
    if posting.posting_type != PostingType::ControlTotal {
        let args: [&(dyn postgres::types::ToSql + Sync); 2] =
            [&posting.legal_entity, &p.accounting_date];
        if let Some(row) = tx.query_opt(&cx.statements.closed_period, &args)? {
            let (entity, from, to): (String, String, String) = (row.get(0), row.get(1), row.get(2));
            let message = format!(
                "accounting date {} is in the closed period {from}..{to} of {entity}",
                posting.accounting_date
            );
            return Ok(Some((reason::CLOSED_PERIOD, message)));
        }
    }
    if cx.require_known_accounts && !posting.lines.is_empty() {
        let accounts: Vec<&str> = posting.lines.iter().map(|l| l.account.as_str()).collect();
        let known: Vec<String> = tx
            .query(
                &cx.statements.known_accounts,
                &[&posting.legal_entity, &accounts],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(missing) = accounts.iter().find(|a| !known.iter().any(|k| k == *a)) {
            let message = format!(
                "account {missing} is not in the accounts table of {}",
                posting.legal_entity
            );
            return Ok(Some((reason::UNKNOWN_ACCOUNT, message)));
        }
    }
    Ok(None)
}

fn insert_posting(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    rec: &InRecord,
    p: &CheckedPosting,
) -> Result<i64, postgres::Error> {
    let q = &p.posting;
    let st = cx.statements;
    let row = tx.query_one(
        &st.insert_posting,
        &[
            &q.idempotency_key,
            &q.posting_type.as_str(),
            &q.kind,
            &q.legal_entity,
            &q.currency,
            &p.accounting_date,
            &q.customer_id,
            &q.erp_customer_id,
            &q.subscription_id,
            &q.invoice_id,
            &q.billing_period.id,
            &q.window_kind.as_str(),
            &q.window.id,
            &q.adjusts.as_ref().map(|w| w.id.as_str()),
            &q.segment_id,
            &q.meter,
            &p.document,
            &rec.topic,
            &rec.partition,
            &rec.offset,
        ],
    )?;
    let id: i64 = row.get(0);
    for (n, line) in q.lines.iter().enumerate() {
        let (debit, credit) = debit_credit(line.side, line.amount);
        let line_no = n as i32 + 1;
        tx.execute(
            &st.insert_line,
            &[&id, &line_no, &line.account, &debit, &credit],
        )?;
    }
    if let Some(l) = &q.invoice_line {
        let args: [&(dyn postgres::types::ToSql + Sync); 6] = [
            &id,
            &l.description,
            &l.quantity,
            &l.unit,
            &l.amount,
            &l.tax_code,
        ];
        tx.execute(&st.insert_invoice_line_posting, &args)?;
    }
    if let Some(c) = &q.control_total {
        let events = i64::try_from(c.event_count).unwrap_or(i64::MAX);
        let args: [&(dyn postgres::types::ToSql + Sync); 6] = [
            &id,
            &events,
            &c.quantity,
            &c.amount,
            &c.amount_rounded,
            &c.lineage_digest,
        ];
        tx.execute(&st.insert_control_total, &args)?;
    }
    Ok(id)
}

fn store_invoice(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    inv: &Invoice,
) -> Result<Outcome, postgres::Error> {
    let st = cx.statements;
    let version = i32::try_from(inv.version).unwrap_or(i32::MAX);
    if let Some(row) = tx.query_opt(&st.invoice_version, &[&inv.invoice_id])? {
        let stored: i32 = row.get(0);
        if stored >= version {
            return Ok(Outcome::InvoiceStale);
        }
    }
    let document = serde_json::to_value(inv).unwrap_or(serde_json::Value::Null);
    let t = &inv.totals;
    let status = inv.status.as_str();
    let args: [&(dyn postgres::types::ToSql + Sync); 18] = [
        &inv.invoice_id,
        &version,
        &status,
        &inv.customer.id,
        &inv.customer.erp_customer_id,
        &inv.subscription_id,
        &inv.legal_entity,
        &inv.currency,
        &inv.service_interval.start,
        &inv.service_interval.end,
        &t.subtotal,
        &t.tax,
        &t.service_credits,
        &t.total,
        &t.credited,
        &t.disputed,
        &t.open,
        &document,
    ];
    tx.execute(&st.upsert_invoice, &args)?;
    tx.execute(&st.delete_invoice_lines, &[&inv.invoice_id])?;
    for (n, l) in inv.lines.iter().enumerate() {
        let line_no = n as i32 + 1;
        let args: [&(dyn postgres::types::ToSql + Sync); 9] = [
            &inv.invoice_id,
            &line_no,
            &l.kind,
            &l.description,
            &l.quantity,
            &l.unit,
            &l.amount,
            &l.tax_code,
            &l.posting_key,
        ];
        tx.execute(&st.insert_invoice_line, &args)?;
    }
    Ok(Outcome::InvoiceStored)
}

/// A refused record: dead-lettered; a posting (its key known) also acked
/// `rejected` and its standing recorded.
fn refuse(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    rec: &InRecord,
    key: Option<&str>,
    reason: &'static str,
    message: &str,
) -> Result<Outcome, postgres::Error> {
    dead_letter_row(tx, cx, rec, reason, message)?;
    if let Some(key) = key {
        tx.execute(&cx.statements.status_rejected, &[&key, &reason, &message])?;
        send_ack(
            tx,
            cx,
            rec,
            key,
            AckStatus::Rejected,
            None,
            Some((reason, message)),
        )?;
    }
    Ok(Outcome::Rejected { reason })
}

fn dead_letter_row(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    rec: &InRecord,
    reason: &str,
    message: &str,
) -> Result<(), postgres::Error> {
    let out = dead_letter(
        names::LEDGER,
        &rec.as_input(),
        reason,
        message,
        cx.dlq_topic,
        cx.dlq_partitions,
    );
    enqueue(tx, cx, &out)
}

fn send_ack(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    rec: &InRecord,
    key: &str,
    status: AckStatus,
    row: Option<i64>,
    refusal: Option<(&str, &str)>,
) -> Result<(), postgres::Error> {
    let ack = LedgerAck {
        idempotency_key: key.to_string(),
        status,
        ledger_row_id: row,
        reason: refusal.map(|r| r.0.to_string()),
        message: refusal.map(|r| r.1.to_string()),
        source: AckSource {
            topic: rec.topic.clone(),
            partition: rec.partition,
            offset: rec.offset,
        },
    };
    let out = Output {
        topic: cx.acks_topic.to_string(),
        key: Some(key.as_bytes().to_vec()),
        value: Some(ack.to_json_bytes().unwrap_or_default()),
        headers: Vec::new(),
        partition: None,
    };
    enqueue(tx, cx, &out)
}

/// Puts a record in the outbox, sent after the commit.
fn enqueue(
    tx: &mut Transaction<'_>,
    cx: &BatchContext<'_>,
    out: &Output,
) -> Result<(), postgres::Error> {
    let headers = crate::ledger::outbox::headers_to_json(&out.headers);
    let args: [&(dyn postgres::types::ToSql + Sync); 5] =
        [&out.topic, &out.partition, &out.key, &out.value, &headers];
    tx.execute(&cx.statements.insert_outbox, &args)?;
    Ok(())
}
