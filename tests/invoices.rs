//! Invoices against the real broker, the whole pipeline running: five
//! customers over September, October and November 2026 (closed by the wall
//! clock), a 10 % tax from `ref.tax_rates`, `hold_total_above = 500 USD`,
//! the parked-events rule, actor keys. Finance acts through
//! `meterline invoices` as an operator would. Every amount below is worked
//! out by hand (plan `p`: tokens 0.01 each, base fee 10.00, tax code TX).
//!
//! * c-auto: a 30.00 service credit granted before anything closed; drawn
//!   22.00 by September (to 0.00, never below) and 8.00 by October;
//! * c-big: September 671.00 is held (total_above), approved by the CLI;
//! * c-parked: an event before its subscription's start parks, and its
//!   September stays held (parked_events);
//! * c-credit: September credited 10 % after posting (a credit memo);
//! * c-dispute: September disputed 14.00, then the dispute lost.
//!
//! Then: re-sent commands change nothing, invalid transitions and a wrong
//! signature are refused with their codes, every journal balances, every
//! posting is on finance.postings once, and `meterline reconcile` passes.
//! A second test kills the invoice stage three times while 1,000 credit
//! commands flow: each applied exactly once.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use hmac::{Hmac, Mac};
use meterline::contracts::{
    Command, CommandKind, Invoice, InvoiceStatus, Posting, PostingType, Side,
};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use sha2::Sha256;

const ALICE_KEY: &str = "0a0b0c0d";
const CONFIG: &str = "[validate]\nmax_event_age_days = 400\ndedupe_horizon_days = 401\n\
[aggregate]\ngrace_period_s = 60\nidle_advance_s = 10\n\
[invoice]\nhold_total_above = { USD = \"500.00\" }\nhold_on_parked_events = true\n\
tax = \"table\"\nactor_keys_hex = { alice = \"0a0b0c0d\" }\nwait_timeout_s = 60\n";
const CUSTOMERS: [&str; 5] = ["c-auto", "c-big", "c-parked", "c-credit", "c-dispute"];
const PERIODS: [&str; 3] = ["2026-09-01", "2026-10-01", "2026-11-01"];

fn plans() -> &'static str {
    r#"{"id":"p","version":1,"effective_from":"2025-01-01T00:00:00Z","currency":"USD","base_fee":"10.00","charges":{"tokens":{"model":"per_unit","unit_price":"0.01","tax_code":"TX"}},"gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200","credits":"4900","disputed_receivable":"1250"},"tax_code":"TX"}"#
}

fn customers() -> String {
    CUSTOMERS
        .iter()
        .map(|c| format!(r#"{{"id":"{c}","name":"{c}","legal_entity":"le","erp_customer_id":"E-{c}","status":"active"}}"#))
        .collect::<Vec<_>>()
        .join("\n")
}

fn subscriptions() -> String {
    CUSTOMERS
        .iter()
        .map(|c| {
            // c-parked's subscription starts on Sep 5: an event of Sep 3 parks.
            let start = if *c == "c-parked" { "2026-09-05" } else { "2026-09-01" };
            format!(
                r#"{{"id":"s-{c}","customer_id":"{c}","plan_id":"p","start":"{start}T00:00:00Z","end":null,"billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us","minimum_commitment":null}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

const TAX_RATES: &str = r#"{"legal_entity":"ml-us","tax_code":"TX","rate_percent":"10","effective_from":"2026-01-01T00:00:00Z","tax_payable_account":"2300"}"#;

/// (customer, id, time, tokens), in event-time order: a customer sharing a
/// partition with another must not see its September events arrive after
/// October's (they would be late, adjustments in October).
const EVENTS: &[(&str, &str, &str, u32)] = &[
    ("c-parked", "p0", "2026-09-03T10:00:00Z", 700), // parked: before the start
    ("c-auto", "a1", "2026-09-10T10:00:00Z", 1000),  // 10.00
    ("c-parked", "p1", "2026-09-10T10:00:00Z", 100), // 1.00
    ("c-credit", "r1", "2026-09-10T10:00:00Z", 2000), // 20.00
    ("c-dispute", "d1", "2026-09-10T10:00:00Z", 3000), // 30.00
    ("c-big", "b1", "2026-09-12T10:00:00Z", 60000),  // 600.00
    ("c-auto", "a2", "2026-10-10T10:00:00Z", 500),   // 5.00
];

fn sign(value: &[u8], key_hex: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&hex::decode(key_hex).unwrap()).unwrap();
    mac.update(value);
    hex::encode(mac.finalize().into_bytes())
}

/// A command record signed with `key_hex`.
fn command_record(c: &Command, key_hex: &str) -> Record {
    let value = c.to_json_bytes().unwrap();
    let signature = sign(&value, key_hex);
    (
        Some(c.customer_id.clone().into_bytes()),
        Some(value),
        vec![("meterline.signature".to_string(), signature.into_bytes())],
    )
}

fn setup(name: &str) -> World {
    let w = World::new(name, CONFIG);
    w.apply();
    w.load_refdata("plans", plans());
    w.load_refdata("customers", &customers());
    w.load_refdata("subscriptions", &subscriptions());
    w.load_refdata("tax_rates", TAX_RATES);
    // The service credit, before anything closes.
    let mut grant = Command::new(
        "grant-1",
        CommandKind::Credit,
        "c-auto",
        "alice",
        chrono::Utc::now(),
    );
    grant.amount = Some(Decimal::new(3000, 2));
    grant.currency = Some("USD".into());
    grant.reason = "goodwill".into();
    produce(
        &w.topic("billing.commands"),
        &[command_record(&grant, ALICE_KEY)],
    );
    let events: Vec<Record> = EVENTS
        .iter()
        .map(|(c, id, time, tokens)| {
            let v = cloudevent(
                "inv",
                id,
                "llm.tokens",
                c,
                time,
                &format!(r#"{{"tokens":{tokens},"model":"m"}}"#),
            );
            (Some(c.as_bytes().to_vec()), Some(v.into_bytes()), vec![])
        })
        .collect();
    produce(&w.topic("usage.events"), &events);
    w
}

/// The latest version of every invoice (the whole topic, read to its end).
fn invoices(w: &World) -> BTreeMap<String, Invoice> {
    let mut all = BTreeMap::new();
    keep_latest(&mut all, read_all(&w.topic("finance.invoices"), true));
    all
}

/// Keeps, per invoice, the highest version among `all` and `records`.
fn keep_latest(all: &mut BTreeMap<String, Invoice>, records: Vec<Rec>) {
    for r in records {
        let inv = Invoice::from_json_slice(r.value.as_deref().unwrap()).unwrap();
        if all
            .get(&inv.invoice_id)
            .is_none_or(|i| i.version < inv.version)
        {
            all.insert(inv.invoice_id.clone(), inv);
        }
    }
}

/// The latest version of every invoice, kept up to date by reading only
/// what `finance.invoices` got since the last refresh (an invoice credited
/// 1,000 times has 1,000 versions that grow with each memo).
struct Latest {
    tail: Tail,
    all: BTreeMap<String, Invoice>,
}

impl Latest {
    fn new(w: &World) -> Self {
        Latest {
            tail: Tail::new(&w.topic("finance.invoices"), true),
            all: BTreeMap::new(),
        }
    }

    fn refresh(&mut self) -> &BTreeMap<String, Invoice> {
        keep_latest(&mut self.all, self.tail.read_new());
        &self.all
    }
}

fn every_invoice_closed(w: &World) -> bool {
    let all = invoices(w);
    CUSTOMERS.iter().all(|c| {
        PERIODS.iter().all(|p| {
            all.get(&format!("s-{c}@{p}"))
                .is_some_and(|i| i.status != InvoiceStatus::Draft)
        })
    })
}

fn id(c: &str, period: &str) -> String {
    format!("s-{c}@{period}")
}

/// `meterline invoices <args>` as alice (or with `key`).
fn cli(w: &World, key: &str, args: &[&str]) -> std::process::Output {
    let mut c = w.cmd();
    c.arg("invoices").args(args);
    c.args(["--actor", "alice", "--reason", "test"]);
    c.env("METERLINE_ACTOR_KEY", key).output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// "Dr 4900 3.00, Cr 1200 3.30" of a journal entry.
fn lines(p: &Posting) -> String {
    p.lines
        .iter()
        .map(|l| {
            let side = if l.side == Side::Debit { "Dr" } else { "Cr" };
            format!("{side} {} {}", l.account, l.amount)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The invoice stage's own journal entries of an invoice (tax, service
/// credit, credit memo, dispute), as (kind, lines).
fn own_entries(ps: &[Posting], invoice: &str) -> Vec<(String, String)> {
    ps.iter()
        .filter(|p| {
            p.invoice_id.as_deref() == Some(invoice) && p.posting_type == PostingType::JournalEntry
        })
        .map(|p| (p.kind.clone(), lines(p)))
        .collect()
}

fn totals(i: &Invoice) -> (String, String, String, String) {
    let t = &i.totals;
    (
        t.subtotal.to_string(),
        t.tax.to_string(),
        t.service_credits.to_string(),
        t.total.to_string(),
    )
}

fn s(a: &str, b: &str, c: &str, d: &str) -> (String, String, String, String) {
    (a.into(), b.into(), c.into(), d.into())
}

#[test]
fn finance_acts_on_invoices_and_every_command_lands_once() {
    let w = setup("inv");
    let mut run = w.spawn_stage(&all_stages(), "a");
    wait_until("15 invoices out of draft", || every_invoice_closed(&w));
    let all = invoices(&w);
    let st = |c: &str, p: &str| all[&id(c, p)].status;
    // The policy's decisions.
    assert_eq!(st("c-auto", PERIODS[0]), InvoiceStatus::Posted);
    let big = &all[&id("c-big", PERIODS[0])];
    assert_eq!(big.status, InvoiceStatus::PendingApproval);
    assert_eq!(big.holds.len(), 1, "{:?}", big.holds);
    assert_eq!(big.holds[0].rule, "total_above");
    assert_eq!(totals(big), s("610.00", "61.00", "0", "671.00"));
    let parked = &all[&id("c-parked", PERIODS[0])];
    assert_eq!(parked.status, InvoiceStatus::PendingApproval);
    assert_eq!(
        parked
            .holds
            .iter()
            .map(|h| h.rule.as_str())
            .collect::<Vec<_>>(),
        ["parked_events"]
    );
    assert_eq!(totals(parked), s("11.00", "1.10", "0", "12.10"));
    for c in ["c-auto", "c-big", "c-parked", "c-credit", "c-dispute"] {
        for p in &PERIODS[1..] {
            assert_eq!(st(c, p), InvoiceStatus::Posted, "{c} {p}");
        }
    }
    // The service credit: 22.00 drawn by September, the 8.00 left by October.
    assert_eq!(
        totals(&all[&id("c-auto", PERIODS[0])]),
        s("20.00", "2.00", "22.00", "0.00")
    );
    assert_eq!(
        totals(&all[&id("c-auto", PERIODS[1])]),
        s("15.00", "1.50", "8.00", "8.50")
    );
    assert_eq!(
        totals(&all[&id("c-auto", PERIODS[2])]),
        s("10.00", "1.00", "0", "11.00")
    );
    let ps = postings(&w);
    assert_eq!(
        own_entries(&ps, &id("c-auto", PERIODS[0])),
        [
            ("tax".to_string(), "Dr 1200 2.00, Cr 2300 2.00".to_string()),
            (
                "service_credit".to_string(),
                "Dr 4900 22.00, Cr 1200 22.00".to_string()
            ),
        ]
    );
    assert_eq!(
        own_entries(&ps, &id("c-auto", PERIODS[1]))[1],
        (
            "service_credit".to_string(),
            "Dr 4900 8.00, Cr 1200 8.00".to_string()
        )
    );
    // Nothing of the held invoices is posted but their accruals.
    let held_lines = ps.iter().filter(|p| {
        p.subscription_id == "s-c-big"
            && p.billing_period.id == PERIODS[0]
            && p.posting_type == PostingType::InvoiceLine
    });
    assert_eq!(held_lines.count(), 0);

    // Approve the held one, as alice: first with a mistyped second id,
    // which sends nothing.
    let big_id = id("c-big", PERIODS[0]);
    let o = cli(&w, ALICE_KEY, &["approve", &big_id, "c-nope@2026-01-01"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("nothing sent"), "{}", text(&o));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(invoices(&w)[&big_id].status, InvoiceStatus::PendingApproval);
    let o = cli(
        &w,
        ALICE_KEY,
        &["approve", &big_id, "--command-id", "approve-big"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("posted"), "{}", text(&o));
    let ps = postings(&w);
    let big_posted: Vec<(String, String)> = ps
        .iter()
        .filter(|p| {
            p.subscription_id == "s-c-big"
                && p.billing_period.id == PERIODS[0]
                && p.posting_type != PostingType::ControlTotal
        })
        .filter(|p| p.kind != "accrual")
        .map(|p| match &p.invoice_line {
            Some(l) => (format!("line {}", p.kind), l.amount.to_string()),
            None => (format!("je {}", p.kind), lines(p)),
        })
        .collect();
    assert_eq!(
        big_posted,
        [
            ("line usage".to_string(), "600.00".to_string()),
            (
                "je reclass".to_string(),
                "Dr 1200 600.00, Cr 1210 600.00".to_string()
            ),
            ("line base_fee".to_string(), "10.00".to_string()),
            (
                "je base_fee".to_string(),
                "Dr 1200 10.00, Cr 4010 10.00".to_string()
            ),
            ("line tax".to_string(), "61.00".to_string()),
            (
                "je tax".to_string(),
                "Dr 1200 61.00, Cr 2300 61.00".to_string()
            ),
        ]
    );
    let approved = invoices(&w)[&big_id].clone();
    assert_eq!(approved.status, InvoiceStatus::Posted);
    let last = approved.history.last().unwrap();
    assert_eq!(
        (last.actor.as_str(), last.command_id.as_str()),
        ("alice", "approve-big")
    );
    // Re-sent with the same id: the same answer, nothing new.
    let o = cli(
        &w,
        ALICE_KEY,
        &["approve", &big_id, "--command-id", "approve-big"],
    );
    assert!(o.status.success(), "{}", text(&o));
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(invoices(&w)[&big_id].version, approved.version);
    assert_eq!(postings(&w).len(), ps.len());

    // Refusals, each with its code on the dead-letter topic; two invoices
    // at once, one command and one answer each.
    let auto = [id("c-auto", PERIODS[0]), id("c-auto", PERIODS[1])];
    let o = cli(&w, ALICE_KEY, &["approve", &auto[0], &auto[1]]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert_eq!(
        text(&o).matches("refused [invalid_transition]").count(),
        2,
        "{}",
        text(&o)
    );
    let o = cli(
        &w,
        ALICE_KEY,
        &["credit", &id("c-parked", PERIODS[0]), "--percent", "10"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("[invalid_transition]"), "{}", text(&o));
    let o = cli(
        &w,
        "ffff",
        &["credit", &id("c-credit", PERIODS[0]), "--percent", "10"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("[command_signature_invalid]"),
        "{}",
        text(&o)
    );
    let o = cli(
        &w,
        ALICE_KEY,
        &["credit", &id("c-credit", PERIODS[0]), "--amount", "33.01"],
    );
    assert!(text(&o).contains("[exceeds_open_amount]"), "{}", text(&o));
    let mut dlq: Vec<String> = read_all(&w.topic("meterline.dlq.invoice"), true)
        .iter()
        .map(|r| r.header("meterline.reason").unwrap())
        .collect();
    dlq.sort();
    assert_eq!(
        dlq,
        [
            "command_signature_invalid",
            "exceeds_open_amount",
            "invalid_transition",
            "invalid_transition",
            "invalid_transition"
        ]
    );

    // A 10 % credit memo: 3.30, of which tax 3.30 x 3.00 / 33.00 = 0.30.
    let credit_id = id("c-credit", PERIODS[0]);
    let credit = [
        "credit",
        &credit_id,
        "--percent",
        "10",
        "--command-id",
        "cm-1",
    ];
    let o = cli(&w, ALICE_KEY, &credit);
    assert!(o.status.success(), "{}", text(&o));
    // A dispute of 14.00, lost: a credit memo, tax 14 x 4.00 / 44.00 = 1.27.
    let dispute_id = id("c-dispute", PERIODS[0]);
    let open = [
        "dispute",
        "open",
        &dispute_id,
        "--amount",
        "14.00",
        "--command-id",
        "dsp-1",
    ];
    let o = cli(&w, ALICE_KEY, &open);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        invoices(&w)[&dispute_id].totals.disputed.to_string(),
        "14.00"
    );
    let lost = [
        "dispute",
        "resolve",
        &dispute_id,
        "--dispute-id",
        "dsp-1",
        "--outcome",
        "lost",
        "--command-id",
        "dsp-1-end",
    ];
    let o = cli(&w, ALICE_KEY, &lost);
    assert!(o.status.success(), "{}", text(&o));
    // Each of them re-sent with its id: the same answer, nothing changes.
    let versions = |w: &World| -> Vec<u32> {
        [&credit_id, &dispute_id]
            .iter()
            .map(|i| invoices(w)[*i].version)
            .collect()
    };
    let (before, n) = (versions(&w), postings(&w).len());
    for args in [&credit[..], &open[..], &lost[..]] {
        let o = cli(&w, ALICE_KEY, args);
        assert!(o.status.success(), "{}", text(&o));
    }
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!((versions(&w), postings(&w).len()), (before, n));
    let ps = postings(&w);
    assert_eq!(
        own_entries(&ps, &credit_id),
        [
            ("tax".to_string(), "Dr 1200 3.00, Cr 2300 3.00".to_string()),
            (
                "credit_memo".to_string(),
                "Dr 4900 3.00, Dr 2300 0.30, Cr 1200 3.30".to_string()
            ),
        ]
    );
    assert_eq!(
        own_entries(&ps, &dispute_id),
        [
            ("tax".to_string(), "Dr 1200 4.00, Cr 2300 4.00".to_string()),
            (
                "dispute_open".to_string(),
                "Dr 1250 14.00, Cr 1200 14.00".to_string()
            ),
            (
                "credit_memo".to_string(),
                "Dr 4900 12.73, Dr 2300 1.27, Cr 1250 14.00".to_string()
            ),
        ]
    );
    let all = invoices(&w);
    let t = &all[&credit_id].totals;
    assert_eq!(
        (t.credited.to_string(), t.open.to_string()),
        ("3.30".into(), "29.70".into())
    );
    let t = &all[&dispute_id].totals;
    assert_eq!(
        (
            t.credited.to_string(),
            t.disputed.to_string(),
            t.open.to_string()
        ),
        ("14.00".into(), "0".into(), "30.00".into())
    );

    // The books: every journal balances, every posting once.
    let mut keys = std::collections::BTreeSet::new();
    for p in &ps {
        assert!(p.is_balanced(), "{p:?}");
        assert!(keys.insert(p.idempotency_key.clone()), "twice: {p:?}");
    }
    assert!(terminate(&mut run).success());
    let o = w.run(&["reconcile"]);
    assert!(o.status.success(), "{}", text(&o));
    let report = text(&o);
    assert!(report.contains("reconcile: OK"), "{report}");
    assert!(
        report.contains("1 invoice(s) wait for approval")
            && report.contains(": s-c-parked@2026-09-01"),
        "{report}"
    );
    let show = w.run(&["invoices", "show", &dispute_id]);
    assert!(
        text(&show).contains("dispute dsp-1: 14.00 lost opened by alice"),
        "{}",
        text(&show)
    );
}

#[test]
fn sigkill_of_the_invoice_stage_applies_each_of_1000_commands_once() {
    const COMMANDS: usize = 1_000;
    const KILLS: usize = 3;
    let w = setup("invkill");
    let mut up = w.spawn_stage(
        &["validate", "dedupe", "enrich", "rate", "aggregate", "post"],
        "up",
    );
    let mut inv = w.spawn_stage(&["invoice"], "inv");
    wait_until("15 invoices out of draft", || every_invoice_closed(&w));
    // November of c-auto: total 11.00, credited 0.01 at a time, 1,000 times.
    let target = id("c-auto", PERIODS[2]);
    let records: Vec<Record> = (0..COMMANDS)
        .map(|i| {
            let mut c = Command::new(
                format!("cr-{i}"),
                CommandKind::Credit,
                "c-auto",
                "alice",
                chrono::Utc::now(),
            );
            c.invoice_id = Some(target.clone());
            c.amount = Some(Decimal::new(1, 2));
            command_record(&c, ALICE_KEY)
        })
        .collect();
    let topic = w.topic("billing.commands");
    let sender = std::thread::spawn(move || {
        for chunk in records.chunks(50) {
            produce(&topic, chunk);
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1_500)));
        kill9(&mut inv);
        inv = w.spawn_stage(&["invoice"], "inv");
    }
    sender.join().unwrap();
    let mut latest = Latest::new(&w);
    wait_until("every credit applied", || {
        latest.refresh()[&target].credit_memos.len() == COMMANDS
    });
    std::thread::sleep(Duration::from_secs(3));
    let doc = latest.refresh()[&target].clone();
    assert_eq!(doc.totals.credited.to_string(), "10.00");
    assert_eq!(doc.totals.open.to_string(), "1.00");
    let ps = postings(&w);
    let memos: Vec<&Posting> = ps
        .iter()
        .filter(|p| p.invoice_id.as_deref() == Some(target.as_str()) && p.kind == "credit_memo")
        .collect();
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for p in &memos {
        *by_key.entry(p.idempotency_key.as_str()).or_default() += 1;
    }
    assert_eq!(
        by_key.len(),
        2 * COMMANDS,
        "an invoice line and an entry per command"
    );
    assert!(by_key.values().all(|n| *n == 1), "each posting once");
    assert!(read_all(&w.topic("meterline.dlq.invoice"), true).is_empty());
    assert!(terminate(&mut inv).success());
    assert!(terminate(&mut up).success());
}
