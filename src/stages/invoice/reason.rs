//! invoice's reason codes (see [`crate::reason`]): why a command is
//! dead-lettered to `meterline.dlq.invoice`, and the codes of money and the
//! calendar it passes on. Stable: never rename one, only add.

crate::reason_codes! {
    MALFORMED_COMMAND => "malformed_command",
        "The record has no value, is not a command (unknown field, missing id, actor or time), or lacks what its kind needs (an amount, a currency, a dispute id, an outcome).";
    CUSTOMER_MISMATCH => "customer_mismatch",
        "The record key is not the command's customer_id, or the invoice belongs to another customer.";
    SIGNATURE_MISSING => "command_signature_missing",
        "Actor keys are configured and the command has no meterline.signature header.";
    SIGNATURE_INVALID => "command_signature_invalid",
        "The signature is not the HMAC-SHA256 of the record value under the actor's key.";
    UNKNOWN_ACTOR => "unknown_actor",
        "Actor keys are configured and the command's actor has none (or a person used a meterline actor).";
    UNKNOWN_INVOICE => "unknown_invoice",
        "No invoice with that id on this customer's partition (sent before its period closed, or a wrong id): re-send it after the invoice exists.";
    INVALID_TRANSITION => "invalid_transition",
        "The command does not apply to the invoice's status (e.g. approving a posted invoice, crediting a held one, voiding one with an open dispute).";
    INVALID_AMOUNT => "invalid_amount",
        "An amount that is not > 0 or has more decimals than the currency's minor unit, or a percent outside (0, 100].";
    EXCEEDS_OPEN_AMOUNT => "exceeds_open_amount",
        "A credit or dispute above what is still open on the invoice (total - credited - disputed).";
    UNKNOWN_DISPUTE => "unknown_dispute",
        "dispute_resolve names no open dispute of the invoice.";
    GL_ACCOUNT_MISSING => "gl_account_missing",
        "The invoice's plan version has no gl_accounts.credits (credits, voids of posted invoices, service credits) or gl_accounts.disputed_receivable (disputes). Add the account to the plan version's record on ref.plans and send the command again: the invoice stage reads ref.plans and completes the invoice's accounts (it never changes one the invoice has).";
    TAX_RATE_MISSING => "tax_rate_missing",
        "invoice.tax = table and a line's tax code has no rate in ref.tax_rates for the invoice's legal entity.";
    CURRENCY_MISMATCH => "draft_currency_mismatch",
        "A draft whose currency differs from its invoice's.";
    INVOICE_TOO_LARGE => "invoice_too_large",
        "The command would make the invoice's document larger than 512 KiB (its record on finance.invoices must fit Kafka's message limit): hundreds of credit memos, disputes or history entries with long reasons. Nothing changed; combine the adjustments into fewer, larger commands.";
    @also [
        crate::money::reasons::UNKNOWN_CURRENCY,
        crate::money::reasons::NO_MINOR_UNIT,
        crate::money::reasons::AMOUNT_OVERFLOW,
        crate::money::reasons::UNBALANCED_JOURNAL_ENTRY,
        crate::calendar::reasons::UNKNOWN_TIME_ZONE,
    ]
}
