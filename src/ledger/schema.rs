//! The ledger's tables, created and migrated by the connector. Each
//! migration runs once, in order, in one transaction with its row in
//! `schema_version`; a migration is never edited once released, only
//! followed by a new one. `{s}` is the schema (checked to be a plain
//! identifier by the config, so it can be written into SQL).
//!
//! Amounts are `numeric` without a declared scale: PostgreSQL keeps every
//! digit it is given, so the ledger holds exactly what the postings say.

use postgres::Transaction;

/// The migrations, in order: (version, name, SQL).
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(1, "journal, invoices, acks outbox", V1)];

/// Serialises migrations of one schema between instances starting at once.
const MIGRATION_LOCK_KEY: i64 = 0x6d65_7465_726c_696e; // "meterlin"

const V1: &str = r#"
CREATE TABLE {s}.postings (
    posting_id        bigserial PRIMARY KEY,
    idempotency_key   text NOT NULL UNIQUE,
    posting_type      text NOT NULL CHECK (posting_type IN ('journal_entry', 'invoice_line', 'control_total')),
    kind              text NOT NULL,
    legal_entity      text NOT NULL,
    currency          text NOT NULL,
    accounting_date   date NOT NULL,
    customer_id       text NOT NULL,
    erp_customer_id   text NOT NULL,
    subscription_id   text NOT NULL,
    invoice_id        text,
    billing_period_id text NOT NULL,
    window_kind       text NOT NULL,
    window_id         text NOT NULL,
    adjusts_window_id text,
    segment_id        text,
    meter             text,
    document          jsonb NOT NULL,
    source_topic      text NOT NULL,
    source_partition  integer NOT NULL,
    source_offset     bigint NOT NULL,
    synced_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX postings_entity_date ON {s}.postings (legal_entity, accounting_date);
CREATE TABLE {s}.journal_lines (
    posting_id bigint NOT NULL REFERENCES {s}.postings (posting_id),
    line_no    integer NOT NULL,
    account    text NOT NULL,
    debit      numeric NOT NULL CHECK (debit >= 0),
    credit     numeric NOT NULL CHECK (credit >= 0),
    CHECK ((debit > 0) <> (credit > 0)),
    PRIMARY KEY (posting_id, line_no)
);
CREATE TABLE {s}.invoice_line_postings (
    posting_id  bigint PRIMARY KEY REFERENCES {s}.postings (posting_id),
    description text NOT NULL,
    quantity    numeric NOT NULL,
    unit        text,
    amount      numeric NOT NULL,
    tax_code    text
);
CREATE TABLE {s}.control_totals (
    posting_id     bigint PRIMARY KEY REFERENCES {s}.postings (posting_id),
    event_count    bigint NOT NULL CHECK (event_count >= 0),
    quantity       numeric NOT NULL,
    amount         numeric NOT NULL,
    amount_rounded numeric NOT NULL,
    lineage_digest text NOT NULL
);
CREATE TABLE {s}.invoices (
    invoice_id      text PRIMARY KEY,
    version         integer NOT NULL CHECK (version >= 1),
    status          text NOT NULL,
    customer_id     text NOT NULL,
    erp_customer_id text NOT NULL,
    subscription_id text NOT NULL,
    legal_entity    text NOT NULL,
    currency        text NOT NULL,
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    subtotal        numeric NOT NULL,
    tax             numeric NOT NULL,
    service_credits numeric NOT NULL,
    total           numeric NOT NULL,
    credited        numeric NOT NULL,
    disputed        numeric NOT NULL,
    open_amount     numeric NOT NULL,
    document        jsonb NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.invoice_lines (
    invoice_id  text NOT NULL REFERENCES {s}.invoices (invoice_id),
    line_no     integer NOT NULL,
    kind        text NOT NULL,
    description text NOT NULL,
    quantity    numeric NOT NULL,
    unit        text,
    amount      numeric NOT NULL,
    tax_code    text,
    posting_key text NOT NULL,
    PRIMARY KEY (invoice_id, line_no)
);
CREATE TABLE {s}.closed_periods (
    legal_entity text NOT NULL,
    from_date    date NOT NULL,
    to_date      date NOT NULL CHECK (to_date >= from_date),
    closed_by    text NOT NULL DEFAULT current_user,
    closed_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (legal_entity, from_date)
);
CREATE TABLE {s}.accounts (
    legal_entity text NOT NULL,
    account      text NOT NULL,
    name         text,
    PRIMARY KEY (legal_entity, account)
);
CREATE TABLE {s}.posting_status (
    idempotency_key text PRIMARY KEY,
    status          text NOT NULL CHECK (status IN ('accepted', 'rejected')),
    posting_id      bigint REFERENCES {s}.postings (posting_id),
    reason          text,
    message         text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'accepted') = (posting_id IS NOT NULL))
);
CREATE TABLE {s}.consumer_offsets (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
CREATE TABLE {s}.outbox (
    seq       bigserial PRIMARY KEY,
    topic     text NOT NULL,
    partition integer,
    key       bytea,
    value     bytea,
    headers   jsonb NOT NULL DEFAULT '[]'
);
CREATE VIEW {s}.trial_balance AS
    SELECT p.legal_entity, p.currency, l.account,
           sum(l.debit) AS debit, sum(l.credit) AS credit,
           sum(l.debit) - sum(l.credit) AS balance, count(*) AS lines
    FROM {s}.journal_lines l JOIN {s}.postings p USING (posting_id)
    GROUP BY p.legal_entity, p.currency, l.account;
"#;

/// Creates the schema when missing and applies the migrations it lacks.
/// Returns the version the schema is at.
pub fn migrate(client: &mut postgres::Client, schema: &str) -> Result<i32, postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.schema_version (
             version integer PRIMARY KEY, name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))?;
    let current = current_version(&mut tx, schema)?;
    for (version, name, sql) in MIGRATIONS.iter().filter(|(v, ..)| *v > current) {
        tx.batch_execute(&sql.replace("{s}", schema))?;
        tx.execute(
            &format!("INSERT INTO {schema}.schema_version (version, name) VALUES ($1, $2)"),
            &[version, name],
        )?;
    }
    let now = current_version(&mut tx, schema)?;
    tx.commit()?;
    Ok(now)
}

fn current_version(tx: &mut Transaction<'_>, schema: &str) -> Result<i32, postgres::Error> {
    let row = tx.query_one(
        &format!("SELECT coalesce(max(version), 0) FROM {schema}.schema_version"),
        &[],
    )?;
    Ok(row.get(0))
}

/// The newest migration's version.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |(v, ..)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        for (i, (v, name, sql)) in MIGRATIONS.iter().enumerate() {
            assert_eq!(*v, i as i32 + 1, "{name}");
            assert!(sql.contains("{s}."), "{name} must qualify its tables");
        }
        assert_eq!(latest_version(), MIGRATIONS.len() as i32);
    }
}
