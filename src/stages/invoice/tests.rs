//! The invoice stage over real drafts: January usage of `sub-1` aggregated
//! and posted by the stages before it (in memory), then policies, commands
//! and their postings, to the cent.

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rust_decimal::Decimal;
use rust_decimal_macros::dec;
use sha2::Sha256;

use super::*;
use crate::contracts::{ClosedWindow, DisputeOutcome, Invoice, Posting, PostingType, Side};
use crate::runtime::testing::{Harness, Record};
use crate::stages::fixtures::{aggregate_all, drafts_of, january_events, post_and_invoice};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn config(invoice: &str) -> Config {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let text = format!("[topology]\nnamespace = \"x.\"\n[invoice]\n{invoice}\n");
    Config::from_parts(&text, "test", &[], dir).unwrap()
}

/// January: `daily` marginal amounts of "tokens" from Jan 10, then an event
/// that closes January; the windows aggregate emits.
fn january(daily: &[Decimal]) -> Vec<ClosedWindow> {
    aggregate_all(&january_events(daily))
}

const JAN: &str = "sub-1@2026-01-01";

/// The postings and the invoice harness after January's windows.
fn run(invoice: &str, daily: &[Decimal]) -> (Vec<Posting>, Harness<InvoiceProcessor>) {
    let cfg = config(invoice);
    let (postings, _, h) = post_and_invoice(&cfg, &january(daily));
    (postings, h)
}

fn latest(h: &Harness<InvoiceProcessor>, id: &str) -> Invoice {
    let v = h
        .stores
        .get(INVOICES, &state::invoice_key(id))
        .unwrap()
        .unwrap();
    serde_json::from_slice::<InvoiceState>(&v).unwrap().doc
}

fn command(kind: CommandKind, id: &str, invoice: Option<&str>) -> Command {
    let mut c = Command::new(id, kind, "cust-1", "alice", at("2026-02-03T10:00:00Z"));
    c.invoice_id = invoice.map(str::to_string);
    c.reason = "test".into();
    c
}

/// Sends `c`; Ok(postings) or the reject code.
fn send(h: &mut Harness<InvoiceProcessor>, c: &Command) -> Result<Vec<Posting>, &'static str> {
    send_signed(h, c, None)
}

fn send_signed(
    h: &mut Harness<InvoiceProcessor>,
    c: &Command,
    signature: Option<String>,
) -> Result<Vec<Posting>, &'static str> {
    let value = c.to_json_bytes().unwrap();
    let headers: Vec<(String, Option<Vec<u8>>)> = signature
        .map(|s| vec![(SIGNATURE_HEADER.to_string(), Some(s.into_bytes()))])
        .unwrap_or_default();
    let out = h.process_record(Record {
        key: Some(c.customer_id.as_bytes()),
        value: Some(&value),
        headers: &headers,
        timestamp_ms: None,
    });
    h.commit().unwrap();
    match out {
        Ok(out) => Ok(out
            .iter()
            .filter(|o| o.topic == "x.finance.postings")
            .map(|o| Posting::from_json_slice(o.value.as_deref().unwrap()).unwrap())
            .collect()),
        Err(StageError::Reject { code, .. }) => Err(code),
        Err(e) => panic!("{e}"),
    }
}

/// (kind, Dr accounts and amounts, Cr accounts and amounts) of each entry.
fn entries(postings: &[Posting]) -> Vec<(String, Vec<String>)> {
    postings
        .iter()
        .filter(|p| p.posting_type == PostingType::JournalEntry)
        .map(|p| {
            assert!(p.is_balanced(), "{p:?}");
            let lines = p
                .lines
                .iter()
                .map(|l| {
                    let side = if l.side == Side::Debit { "Dr" } else { "Cr" };
                    format!("{side} {} {}", l.account, l.amount)
                })
                .collect();
            (p.kind.clone(), lines)
        })
        .collect()
}

/// The lines of the journal entries of one kind.
fn entries_of(postings: &[Posting], kind: &str) -> Vec<(String, Vec<String>)> {
    entries(postings)
        .into_iter()
        .filter(|(k, _)| k == kind)
        .collect()
}

fn kinds(postings: &[Posting], t: PostingType) -> Vec<&str> {
    postings
        .iter()
        .filter(|p| p.posting_type == t)
        .map(|p| p.kind.as_str())
        .collect()
}

#[test]
fn auto_approval_posts_at_the_close_what_post_computed() {
    let (postings, h) = run("", &[dec!(12.345), dec!(20.005)]);
    let doc = latest(&h, JAN);
    assert_eq!(doc.status, InvoiceStatus::Posted);
    let actions: Vec<_> = doc
        .history
        .iter()
        .map(|c| (c.status, c.actor.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            (InvoiceStatus::Draft, "meterline:post"),
            (InvoiceStatus::Approved, POLICY_ACTOR),
            (InvoiceStatus::Posted, POLICY_ACTOR),
        ]
    );
    // usage 32.35 (rounded once per segment, half-even), base fee 10.00,
    // true-up 57.65; the accruals 12.34 + 20.00 leave a rounding of 0.01.
    let lines: Vec<_> = doc
        .lines
        .iter()
        .map(|l| (l.kind.as_str(), l.amount.to_string()))
        .collect();
    assert_eq!(
        lines,
        [
            ("usage", "32.35".into()),
            ("base_fee", "10.00".into()),
            ("minimum_true_up", "57.65".into())
        ]
    );
    assert_eq!(doc.totals.total, dec!(100.00));
    assert_eq!(doc.totals.open, dec!(100.00));
    let journal_kinds: Vec<_> = entries(&postings).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        journal_kinds,
        [
            "accrual",
            "accrual",
            "rounding",
            "reclass",
            "base_fee",
            "minimum_true_up"
        ]
    );
    // Every posting the invoice lists reached finance.postings once.
    let keys: Vec<&str> = postings
        .iter()
        .map(|p| p.idempotency_key.as_str())
        .collect();
    for k in &doc.postings {
        assert_eq!(keys.iter().filter(|x| *x == k).count(), 1, "{k}");
    }
}

#[test]
fn manual_approval_holds_everything_until_approved_once() {
    let (postings, mut h) = run("approval = \"manual\"", &[dec!(40)]);
    assert_eq!(
        kinds(&postings, PostingType::InvoiceLine),
        Vec::<&str>::new()
    );
    assert_eq!(
        kinds(&postings, PostingType::JournalEntry),
        ["accrual"],
        "accruals keep posting daily"
    );
    let doc = latest(&h, JAN);
    assert_eq!(doc.status, InvoiceStatus::PendingApproval);
    assert_eq!(doc.holds[0].rule, "manual_approval");
    let approve = command(CommandKind::Approve, "c1", Some(JAN));
    let posted = send(&mut h, &approve).unwrap();
    assert_eq!(
        kinds(&posted, PostingType::InvoiceLine),
        ["usage", "base_fee", "minimum_true_up"]
    );
    let doc = latest(&h, JAN);
    assert_eq!(doc.status, InvoiceStatus::Posted);
    assert_eq!(doc.history.last().unwrap().actor, "alice");
    assert!(doc.holds.is_empty());
    // Re-sent: nothing; a new approve: refused.
    assert_eq!(send(&mut h, &approve), Ok(vec![]));
    assert_eq!(latest(&h, JAN).version, doc.version);
    let again = command(CommandKind::Approve, "c2", Some(JAN));
    assert_eq!(send(&mut h, &again), Err(reason::INVALID_TRANSITION));
}

#[test]
fn each_hold_rule_names_itself() {
    let (_, h) = run("hold_total_above = { USD = \"99.99\" }", &[dec!(5)]);
    let doc = latest(&h, JAN);
    assert_eq!(doc.status, InvoiceStatus::PendingApproval);
    assert_eq!(doc.holds.len(), 1);
    assert_eq!(doc.holds[0].rule, "total_above");
    assert!(
        doc.holds[0]
            .detail
            .contains("100.00 USD is above 99.99 USD"),
        "{:?}",
        doc.holds
    );
    let (_, h) = run("hold_total_above = { USD = \"100.00\" }", &[dec!(5)]);
    assert_eq!(
        latest(&h, JAN).status,
        InvoiceStatus::Posted,
        "at the limit is not above it"
    );
    let (_, h) = run("tax = \"table\"", &[dec!(5)]);
    let doc = latest(&h, JAN);
    assert_eq!(doc.holds[0].rule, "tax_rate_missing");
    assert!(
        doc.holds[0].detail.contains("TX-PLAN, TX-USAGE"),
        "{:?}",
        doc.holds
    );
}

fn tax_rate(h: &mut Harness<InvoiceProcessor>, code: &str, pct: &str) {
    let from = "2026-01-01T00:00:00Z";
    let value = format!(
        r#"{{"legal_entity":"ml-us","tax_code":"{code}","rate_percent":"{pct}","effective_from":"{from}","tax_payable_account":"2300"}}"#
    );
    let key = crate::refdata::tax_rate_key("ml-us", code, &at(from));
    h.table_record(
        topology::names::REF_TAX_RATES,
        Some(key.as_bytes()),
        Some(value.as_bytes()),
    );
}

#[test]
fn a_held_invoice_is_approved_with_one_tax_line_per_code() {
    let (_, mut h) = run("tax = \"table\"", &[dec!(12.345)]);
    let approve = command(CommandKind::Approve, "c1", Some(JAN));
    assert_eq!(send(&mut h, &approve), Err(reason::TAX_RATE_MISSING));
    tax_rate(&mut h, "TX-USAGE", "19");
    tax_rate(&mut h, "TX-PLAN", "7.5");
    let posted = send(&mut h, &approve).unwrap();
    let doc = latest(&h, JAN);
    // usage 12.345 -> 12.34 at 19 % = 2.3446 -> 2.34; base fee 10 + true-up 77.66
    // at 7.5 % = 6.5745 -> 6.57.
    let tax: Vec<_> = doc
        .lines
        .iter()
        .filter(|l| l.kind == "tax")
        .map(|l| (l.tax_code.clone().unwrap(), l.amount))
        .collect();
    assert_eq!(
        tax,
        [
            ("TX-PLAN".to_string(), dec!(6.57)),
            ("TX-USAGE".to_string(), dec!(2.34))
        ]
    );
    assert_eq!(
        (doc.totals.subtotal, doc.totals.tax, doc.totals.total),
        (dec!(100.00), dec!(8.91), dec!(108.91))
    );
    let taxes = entries_of(&posted, "tax");
    assert_eq!(
        taxes,
        [
            (
                "tax".to_string(),
                vec!["Dr 1200 6.57".to_string(), "Cr 2300 6.57".to_string()]
            ),
            (
                "tax".to_string(),
                vec!["Dr 1200 2.34".to_string(), "Cr 2300 2.34".to_string()]
            ),
        ]
    );
}

/// A posted January with tax and accounts for credits and disputes.
fn posted_with_accounts() -> Harness<InvoiceProcessor> {
    let cfg = config("approval = \"manual\"\ntax = \"table\"");
    let mut windows = january(&[dec!(12.345)]);
    for w in &mut windows {
        w.gl_accounts.credits = Some("4900".into());
        w.gl_accounts.disputed_receivable = Some("1250".into());
    }
    let (_, _, mut h) = post_and_invoice(&cfg, &windows);
    tax_rate(&mut h, "TX-USAGE", "19");
    tax_rate(&mut h, "TX-PLAN", "7.5");
    send(&mut h, &command(CommandKind::Approve, "a", Some(JAN))).unwrap();
    h
}

#[test]
fn a_credit_memo_takes_its_tax_share_and_never_exceeds_what_is_open() {
    let mut h = posted_with_accounts();
    let mut credit = command(CommandKind::Credit, "c10", Some(JAN));
    credit.percent = Some(dec!(10));
    let posted = send(&mut h, &credit).unwrap();
    // 10 % of 108.91 = 10.891 -> 10.89; tax shares 10.89 x 6.57 / 108.91 = 0.66,
    // 10.89 x 2.34 / 108.91 = 0.23; net 10.00.
    assert_eq!(
        entries(&posted),
        [(
            "credit_memo".to_string(),
            vec![
                "Dr 4900 10.00".to_string(),
                "Dr 2300 0.66".to_string(),
                "Dr 2300 0.23".to_string(),
                "Cr 1200 10.89".to_string()
            ]
        )]
    );
    let line = posted
        .iter()
        .find(|p| p.posting_type == PostingType::InvoiceLine)
        .unwrap();
    assert_eq!(line.invoice_line.as_ref().unwrap().amount, dec!(-10.89));
    assert_eq!(line.invoice_id.as_deref(), Some(JAN));
    let doc = latest(&h, JAN);
    assert_eq!(
        (doc.totals.credited, doc.totals.open),
        (dec!(10.89), dec!(98.02))
    );
    // The document lists the credit memo's two postings last, once each.
    let keys: Vec<&String> = posted.iter().map(|p| &p.idempotency_key).collect();
    assert_eq!(
        doc.postings[doc.postings.len() - 2..]
            .iter()
            .collect::<Vec<_>>(),
        keys
    );
    assert_eq!(doc.postings.iter().filter(|k| keys.contains(k)).count(), 2);
    let mut too_much = command(CommandKind::Credit, "c11", Some(JAN));
    too_much.amount = Some(dec!(98.03));
    assert_eq!(send(&mut h, &too_much), Err(reason::EXCEEDS_OPEN_AMOUNT));
    too_much.amount = Some(dec!(1.001));
    assert_eq!(send(&mut h, &too_much), Err(reason::INVALID_AMOUNT));
    too_much.amount = Some(dec!(98.02));
    send(&mut h, &too_much).unwrap();
    assert_eq!(latest(&h, JAN).totals.open, dec!(0));
}

#[test]
fn a_lost_dispute_is_a_credit_memo_and_a_won_one_goes_back_to_receivable() {
    let mut h = posted_with_accounts();
    let mut open = command(CommandKind::DisputeOpen, "d1", Some(JAN));
    open.amount = Some(dec!(20.00));
    let opened = send(&mut h, &open).unwrap();
    assert_eq!(
        entries(&opened),
        [(
            "dispute_open".into(),
            vec!["Dr 1250 20.00".into(), "Cr 1200 20.00".into()]
        )]
    );
    assert_eq!(latest(&h, JAN).totals.disputed, dec!(20.00));
    let void = command(CommandKind::Void, "v", Some(JAN));
    assert_eq!(send(&mut h, &void), Err(reason::INVALID_TRANSITION));
    let mut lost = command(CommandKind::DisputeResolve, "d1-end", Some(JAN));
    lost.dispute_id = Some("d1".into());
    lost.outcome = Some(DisputeOutcome::Lost);
    let posted = send(&mut h, &lost).unwrap();
    // 20.00 x 6.57 / 108.91 = 1.21, x 2.34 / 108.91 = 0.43.
    assert_eq!(
        entries(&posted),
        [(
            "credit_memo".into(),
            vec![
                "Dr 4900 18.36".into(),
                "Dr 2300 1.21".into(),
                "Dr 2300 0.43".into(),
                "Cr 1250 20.00".into()
            ]
        )]
    );
    let doc = latest(&h, JAN);
    assert_eq!(
        (doc.totals.disputed, doc.totals.credited, doc.totals.open),
        (dec!(0), dec!(20.00), dec!(88.91))
    );
    // Listed last: the dispute's entry, then the lost dispute's credit memo.
    let last: Vec<&String> = opened
        .iter()
        .chain(&posted)
        .map(|p| &p.idempotency_key)
        .collect();
    assert_eq!(last.len(), 3);
    let listed = doc.postings.len();
    assert_eq!(doc.postings[listed - 3..].iter().collect::<Vec<_>>(), last);
    assert_eq!(send(&mut h, &lost), Ok(vec![]), "re-sent: nothing");
    lost.id = "d1-again".into();
    assert_eq!(send(&mut h, &lost), Err(reason::UNKNOWN_DISPUTE));
    let mut open = command(CommandKind::DisputeOpen, "d2", Some(JAN));
    open.amount = Some(dec!(5));
    send(&mut h, &open).unwrap();
    let mut won = command(CommandKind::DisputeResolve, "d2-end", Some(JAN));
    won.dispute_id = Some("d2".into());
    won.outcome = Some(DisputeOutcome::Won);
    assert_eq!(
        entries(&send(&mut h, &won).unwrap()),
        [(
            "dispute_won".into(),
            vec!["Dr 1200 5.00".into(), "Cr 1250 5.00".into()]
        )]
    );
    assert_eq!(latest(&h, JAN).totals.open, dec!(88.91));
    let posted = send(&mut h, &void).unwrap();
    assert_eq!(entries(&posted)[0].1.last().unwrap(), "Cr 1200 88.91");
    let doc = latest(&h, JAN);
    assert_eq!(
        (doc.status, doc.totals.open),
        (InvoiceStatus::Voided, dec!(0))
    );
}

/// Held January of a plan with a credits account, and a 150.00 USD
/// service credit granted to the customer.
fn held_with_a_credit() -> Harness<InvoiceProcessor> {
    let cfg = config("approval = \"manual\"");
    let mut windows = january(&[dec!(12.345)]);
    for w in &mut windows {
        w.gl_accounts.credits = Some("4900".into());
    }
    let (_, _, mut h) = post_and_invoice(&cfg, &windows);
    let mut grant = command(CommandKind::Credit, "g1", None);
    grant.amount = Some(dec!(150));
    grant.currency = Some("USD".into());
    assert_eq!(send(&mut h, &grant), Ok(vec![]));
    h
}

#[test]
fn a_service_credit_is_drawn_by_the_next_approval_and_never_makes_it_negative() {
    let mut h = held_with_a_credit();
    let mut expired = command(CommandKind::Credit, "g0", None);
    expired.amount = Some(dec!(7));
    expired.currency = Some("USD".into());
    expired.time = at("2026-01-01T00:00:00Z");
    expired.expires = Some(at("2026-02-01T00:00:00Z"));
    send(&mut h, &expired).unwrap();
    let posted = send(&mut h, &command(CommandKind::Approve, "a", Some(JAN))).unwrap();
    let credit = entries_of(&posted, "service_credit");
    assert_eq!(
        credit,
        [(
            "service_credit".into(),
            vec!["Dr 4900 100.00".into(), "Cr 1200 100.00".into()]
        )]
    );
    let doc = latest(&h, JAN);
    assert_eq!(
        (doc.totals.service_credits, doc.totals.total),
        (dec!(100.00), dec!(0.00))
    );
    let bytes = h
        .stores
        .get(INVOICES, &state::balance_key("cust-1", "USD"))
        .unwrap()
        .unwrap();
    let left: Balance = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        left.available(),
        dec!(50.00),
        "150 - 100 drawn; the expired 7 dropped"
    );
}

#[test]
fn commands_are_signed_by_their_actor_when_keys_are_set() {
    let (_, mut h) = run(
        "approval = \"manual\"\nactor_keys_hex = { alice = \"0a0b\" }",
        &[dec!(1)],
    );
    let mut c = command(CommandKind::Hold, "h1", Some(JAN));
    assert_eq!(send(&mut h, &c), Err(reason::SIGNATURE_MISSING));
    let sign = |c: &Command, key: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(&c.to_json_bytes().unwrap());
        hex::encode(mac.finalize().into_bytes())
    };
    assert_eq!(
        send_signed(&mut h, &c, Some(sign(&c, b"x"))),
        Err(reason::SIGNATURE_INVALID)
    );
    assert_eq!(
        send_signed(&mut h, &c, Some(sign(&c, &[10, 11]))).map(|p| p.len()),
        Ok(0)
    );
    assert_eq!(latest(&h, JAN).holds.last().unwrap().rule, "held");
    c.actor = "mallory".into();
    c.id = "h2".into();
    assert_eq!(
        send_signed(&mut h, &c, Some(sign(&c, &[10, 11]))),
        Err(reason::UNKNOWN_ACTOR)
    );
    c.actor = "meterline:post".into();
    assert_eq!(
        send(&mut h, &c),
        Err(reason::UNKNOWN_ACTOR),
        "no person speaks as a stage"
    );
}

#[test]
fn commands_that_do_not_fit_change_nothing() {
    let (_, mut h) = run("approval = \"manual\"", &[dec!(1)]);
    let before = latest(&h, JAN);
    assert_eq!(
        send(
            &mut h,
            &command(CommandKind::Approve, "x", Some("sub-1@2026-02-01"))
        ),
        Err(reason::UNKNOWN_INVOICE)
    );
    let mut other = command(CommandKind::Approve, "y", Some(JAN));
    other.customer_id = "cust-2".into();
    assert_eq!(send(&mut h, &other), Err(reason::CUSTOMER_MISMATCH));
    assert_eq!(
        send(&mut h, &command(CommandKind::Credit, "z", Some(JAN))),
        Err(reason::INVALID_TRANSITION)
    );
    assert_eq!(
        send(&mut h, &command(CommandKind::Approve, "", Some(JAN))),
        Err(reason::MALFORMED_COMMAND)
    );
    let out = h.process(Some(b"cust-1"), Some(br#"{"id":"q","kind":"approve","customer_id":"cust-1","actor":"a","time":"2026-02-03T10:00:00Z","invoice_id":"x","amout":"1"}"#));
    assert!(matches!(
        out,
        Err(StageError::Reject {
            code: reason::MALFORMED_COMMAND,
            ..
        })
    ));
    assert_eq!(latest(&h, JAN), before);
}

#[test]
fn parked_events_in_the_service_interval_hold_the_invoice() {
    let cfg = config("hold_on_parked_events = true");
    let windows = january(&[dec!(3)]);
    let mut h = Harness::new(cfg.clone(), InvoiceProcessor::new(&cfg), 0);
    let notice = |kind, time: &str| {
        let mut c = Command::new(
            format!("n-{time}"),
            kind,
            "cust-1",
            "meterline:enrich",
            at(time),
        );
        c.parked = Some(crate::contracts::ParkedEvent {
            source: "svc".into(),
            id: "p1".into(),
            event_time: at(time),
            code: Some("unknown_customer".into()),
        });
        c
    };
    // Parked in February, then one in January that heals: neither holds.
    send(
        &mut h,
        &notice(CommandKind::EventParked, "2026-02-01T00:00:00Z"),
    )
    .unwrap();
    send(
        &mut h,
        &notice(CommandKind::EventParked, "2026-01-20T00:00:00Z"),
    )
    .unwrap();
    send(
        &mut h,
        &notice(CommandKind::EventUnparked, "2026-01-20T00:00:00Z"),
    )
    .unwrap();
    send(
        &mut h,
        &notice(CommandKind::EventParked, "2026-01-31T23:59:59Z"),
    )
    .unwrap();
    for d in drafts_of(&cfg, &windows) {
        h.process(d.key.as_deref(), d.value.as_deref()).unwrap();
    }
    let doc = latest(&h, JAN);
    assert_eq!(doc.status, InvoiceStatus::PendingApproval);
    assert_eq!(
        doc.holds
            .iter()
            .map(|x| x.rule.as_str())
            .collect::<Vec<_>>(),
        ["parked_events"]
    );
}

#[test]
fn a_part_for_an_invoice_already_closed_is_a_supplementary_invoice_closed_at_once() {
    let cfg = config("");
    let windows = january(&[dec!(3)]);
    let mut h = Harness::new(cfg.clone(), InvoiceProcessor::new(&cfg), 0);
    let drafts = drafts_of(&cfg, &windows);
    for d in &drafts {
        h.process(d.key.as_deref(), d.value.as_deref()).unwrap();
    }
    assert_eq!(latest(&h, JAN).status, InvoiceStatus::Posted);
    // A window nobody drafted before (new id, new posting keys) for January.
    let mut late = Command::from_json_slice(drafts[0].value.as_deref().unwrap()).unwrap();
    assert!(!late.draft.as_ref().unwrap().closes);
    late.id = "late-window".into();
    for p in &mut late.draft.as_mut().unwrap().postings {
        p.idempotency_key = format!("{}-late", p.idempotency_key);
    }
    let posted = send(&mut h, &late).unwrap();
    assert_eq!(kinds(&posted, PostingType::InvoiceLine), ["usage"]);
    let sup = latest(&h, "sub-1@2026-01-01~1");
    assert_eq!(sup.status, InvoiceStatus::Posted, "never left open");
    assert_eq!(sup.lines.len(), 1);
    assert_eq!(latest(&h, JAN).status, InvoiceStatus::Posted);
}

#[test]
fn voiding_a_held_invoice_spends_no_service_credit() {
    let mut h = held_with_a_credit();
    let posted = send(&mut h, &command(CommandKind::Void, "v", Some(JAN))).unwrap();
    let memo = entries_of(&posted, "credit_memo");
    assert_eq!(
        memo,
        [(
            "credit_memo".to_string(),
            vec!["Dr 4900 100.00".to_string(), "Cr 1200 100.00".to_string()]
        )]
    );
    assert!(entries(&posted).iter().all(|(k, _)| k != "service_credit"));
    let doc = latest(&h, JAN);
    assert_eq!(
        (doc.status, doc.totals.open),
        (InvoiceStatus::Voided, dec!(0))
    );
    let bytes = h
        .stores
        .get(INVOICES, &state::balance_key("cust-1", "USD"))
        .unwrap()
        .unwrap();
    let left: Balance = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        left.available(),
        dec!(150),
        "the credit is still the customer's"
    );
}

#[test]
fn a_credit_that_would_outgrow_the_invoice_record_is_refused_and_changes_nothing() {
    let mut h = posted_with_accounts();
    let long = "r".repeat(crate::config::MAX_COMMAND_REASON_BYTES);
    let credit = |i: usize| {
        let mut c = command(CommandKind::Credit, &format!("cr-{i}"), Some(JAN));
        c.amount = Some(dec!(0.01));
        c.reason.clone_from(&long);
        c
    };
    let mut applied = 0;
    let refusal = loop {
        assert!(applied < 1_000, "no refusal after {applied} credits");
        match send(&mut h, &credit(applied)) {
            Ok(posted) => assert_eq!(entries_of(&posted, "credit_memo").len(), 1),
            Err(code) => break code,
        }
        applied += 1;
    };
    assert_eq!(refusal, reason::INVOICE_TOO_LARGE);
    let doc = latest(&h, JAN);
    let bytes = doc.to_json_bytes().unwrap().len();
    // Every credit before the refusal applied, to the cent; the last
    // document fits and one more memo would not.
    assert!(applied > 100, "refused after {applied} credits");
    assert_eq!(doc.credit_memos.len(), applied);
    assert_eq!(doc.totals.credited, Decimal::new(applied as i64, 2));
    assert!(bytes <= crate::config::INVOICE_DOC_MAX_BYTES);
    assert!(bytes + 2 * long.len() > crate::config::INVOICE_DOC_MAX_BYTES);
    // The refusal left nothing: the same document, and the command id is
    // not taken (it is refused again, not counted as a duplicate).
    assert_eq!(
        send(&mut h, &credit(applied)),
        Err(reason::INVOICE_TOO_LARGE)
    );
    assert_eq!(latest(&h, JAN), doc);
}

/// Plan `pro` version 1 (the fixtures' plan) with a credits and a
/// disputed-receivable account, as `meterline refdata load` publishes it.
fn pro_with_credit_accounts(h: &mut Harness<InvoiceProcessor>) {
    let value = serde_json::json!({
        "id": "pro", "version": 1, "effective_from": "2026-01-01T00:00:00Z",
        "currency": "USD",
        "charges": {"tokens": {"model": "per_unit", "unit_price": "0.01"}},
        "gl_accounts": {"usage_revenue": "4000", "unbilled_receivable": "1210",
            "receivable": "1200", "credits": "4950", "disputed_receivable": "1260"}
    })
    .to_string();
    let key = crate::refdata::plan_key("pro", 1);
    h.table_record(
        topology::names::REF_PLANS,
        Some(key.as_bytes()),
        Some(value.as_bytes()),
    );
}

#[test]
fn an_account_added_to_the_plan_later_serves_invoices_drafted_without_it() {
    let (_, mut h) = run("", &[dec!(12.345)]);
    assert_eq!(latest(&h, JAN).status, InvoiceStatus::Posted);
    let mut credit = command(CommandKind::Credit, "c1", Some(JAN));
    credit.amount = Some(dec!(5));
    let mut dispute = command(CommandKind::DisputeOpen, "d1", Some(JAN));
    dispute.amount = Some(dec!(2));
    assert_eq!(send(&mut h, &credit), Err("gl_account_missing"));
    assert_eq!(send(&mut h, &dispute), Err("gl_account_missing"));
    let before = latest(&h, JAN);
    assert!(before.credit_memos.is_empty() && before.disputes.is_empty());

    // Fixed, then re-sent under the refused ids (as `meterline invoices`
    // advises): a refused id was not spent.
    pro_with_credit_accounts(&mut h);
    assert_eq!(
        entries(&send(&mut h, &credit).unwrap()),
        [(
            "credit_memo".to_string(),
            vec!["Dr 4950 5.00".to_string(), "Cr 1200 5.00".to_string()]
        )]
    );
    assert_eq!(
        entries(&send(&mut h, &dispute).unwrap()),
        [(
            "dispute_open".to_string(),
            vec!["Dr 1260 2.00".to_string(), "Cr 1200 2.00".to_string()]
        )]
    );
    // Their dead letters replayed later (the same records again): nothing.
    assert_eq!(send(&mut h, &credit), Ok(vec![]));
    assert_eq!(send(&mut h, &dispute), Ok(vec![]));
    let after = latest(&h, JAN);
    assert_eq!(after.credit_memos.len(), 1);
    assert_eq!(after.totals.credited, dec!(5.00));
    assert_eq!(after.totals.disputed, dec!(2.00));
}
