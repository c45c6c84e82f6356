//! ledger-sync's reason codes (see [`crate::reason`]): why the general
//! ledger refused a posting (acked `rejected`, dead-lettered to
//! `meterline.dlq.ledger`) or an invoice document (dead-lettered). Stable:
//! never rename one, only add.

crate::reason_codes! {
    INVALID_POSTING => "invalid_posting",
        "The record on finance.postings (or the retry topic) has no value or is not a posting (JSON error, an accounting_date that is not a date).";
    INVALID_INVOICE => "invalid_invoice",
        "The record on finance.invoices is not an invoice document.";
    CLOSED_PERIOD => "closed_period",
        "The posting's accounting_date is in a period closed in the ledger (closed_periods, for its legal entity or '*'): reopen the period, then replay it.";
    UNKNOWN_ACCOUNT => "unknown_account",
        "ledger.require_known_accounts is on and a journal line's account is not in the accounts table for its legal entity: add it, then replay.";
    CONSTRAINT_VIOLATION => "constraint_violation",
        "The database refused the row (an integrity constraint or a data exception, named in the message).";
    IDEMPOTENCY_CONFLICT => "idempotency_conflict",
        "A posting whose idempotency key the ledger already holds with other content: the ledger keeps the first (its ack stays accepted); the other is dead-lettered for review.";
    UNBALANCED_POSTING => "unbalanced_posting",
        "A journal_entry posting whose debits and credits differ, that has no lines, or a line amount that is not > 0: the ledger never holds an unbalanced entry.";
}
