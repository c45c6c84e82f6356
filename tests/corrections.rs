//! Corrections end to end (issue 16), against the real broker.
//!
//! Three customers on one plan (tokens: graduated, SUM; api_calls: volume
//! per region, COUNT; active_users: per unit, UNIQUE_COUNT; peak_seats: per
//! unit, MAX), 60 usage events each over two monthly periods P0 and P1
//! (months four and three before the current one, so the test holds
//! whatever day it runs). Then, timed at the end of P1 (P0 already closed):
//!
//! * 10 retractions (5%), 7 of events of the closed P0 (one a MAX meter's,
//!   which falls back on the other observation of its segment) and 3 of P1;
//! * 2 amendments (1%), one of each period;
//! * five corrections that must be dead-lettered by rate with their code
//!   and change nothing: a retraction of an event already retracted, of an
//!   unknown event, of an event older than any state kept, of an event of a
//!   MAX segment with more observations than `rate.correction_history_max`
//!   (2 here), and an amendment of an unknown event (its replacement must
//!   not be billed either);
//!
//! then one event per customer two months later, which closes P1 and P2.
//!
//! Checked: the books per subscription, original period and meter (the
//! billing-period windows' unrounded amounts, adjustments counted under the
//! period they adjust) equal the charge models applied to the usage without
//! the retracted events and with the amended values, computed here
//! independently, to the last decimal; the P0 corrections arrived as
//! adjustments in P1 naming P0; every journal balances; the dead letters;
//! reconcile passes.
//!
//! A second test SIGKILLs the process running rate three times during a
//! burst of retractions: each is applied exactly once.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Datelike, Months, TimeZone, Utc};
use common::*;
use meterline::contracts::{PostingType, RatedEvent};
use meterline::rating::ChargeModel;
use rust_decimal::Decimal;

/// Events up to 5 months old are accepted; one day of grace; the idle
/// advance is off for the test's length (a clock event closes periods).
const CONFIG: &str = "[validate]\nmax_event_age_days = 200\ndedupe_horizon_days = 201\n\
[aggregate]\ngrace_period_s = 86400\nidle_advance_s = 86400\n\
[rate]\ncorrection_history_max = 2\n";
const SOURCE: &str = "svc";
const OPS: &str = "ops";
const CUSTOMERS: [&str; 3] = ["c-0", "c-1", "c-2"];
const EVENTS_PER_CUSTOMER: usize = 60;
const TOKENS: &str = r#"{"model":"graduated","tiers":[{"up_to":"1000","unit_price":"0.002"},{"up_to":"5000","unit_price":"0.0015","flat_fee":"1.00"},{"up_to":null,"unit_price":"0.001"}]}"#;
const API_CALLS: &str = r#"{"model":"volume","tiers":[{"up_to":"10","unit_price":"0.10"},{"up_to":null,"unit_price":"0.05"}]}"#;
const USERS: &str = r#"{"model":"per_unit","unit_price":"2.50"}"#;
const SEATS: &str = r#"{"model":"per_unit","unit_price":"30.00"}"#;

/// The first instant of the month `back` months before the current one.
fn month_start(back: u32) -> DateTime<Utc> {
    let now = Utc::now();
    let this = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    this - Months::new(back)
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn plan() -> String {
    format!(
        r#"{{"id":"mix","version":1,"effective_from":"2020-01-01T00:00:00Z","currency":"USD","charges":{{"tokens":{TOKENS},"api_calls":{API_CALLS},"active_users":{USERS},"peak_seats":{SEATS}}},{GL_ACCOUNTS_JSON}}}"#
    )
}

fn subscriptions() -> String {
    let (start, end) = (rfc3339(month_start(4)), rfc3339(month_start(0)));
    CUSTOMERS
        .iter()
        .map(|c| {
            format!(
                r#"{{"id":"s-{c}","customer_id":"{c}","plan_id":"mix","start":"{start}","end":"{end}","billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us"}}"#
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One usage event as the test knows it.
#[derive(Clone)]
struct Usage {
    customer: &'static str,
    id: String,
    time: DateTime<Utc>,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Tokens(Decimal),
    Call(&'static str),
    User(String),
    Seats(u32),
}

impl Usage {
    fn cloudevent(&self) -> String {
        let (ty, data) = match &self.kind {
            Kind::Tokens(v) => ("llm.tokens", format!(r#"{{"tokens":"{v}","model":"m"}}"#)),
            Kind::Call(region) => ("api.request", format!(r#"{{"region":"{region}"}}"#)),
            Kind::User(u) => ("user.active", format!(r#"{{"user_id":"{u}"}}"#)),
            Kind::Seats(n) => ("seats.active", format!(r#"{{"seats":{n}}}"#)),
        };
        cloudevent(
            SOURCE,
            &self.id,
            ty,
            self.customer,
            &rfc3339(self.time),
            &data,
        )
    }

    /// (meter, group value) of the segment it feeds.
    fn segment(&self) -> (&'static str, String) {
        match &self.kind {
            Kind::Tokens(_) => ("tokens", "m".into()),
            Kind::Call(region) => ("api_calls", region.to_string()),
            Kind::User(_) => ("active_users", String::new()),
            Kind::Seats(_) => ("peak_seats", String::new()),
        }
    }
}

/// A small deterministic generator (no seed to pass around).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// 60 events per customer spread over P0 and P1, plus one seats event.
fn usage() -> Vec<Usage> {
    let (p0, p2) = (month_start(4), month_start(2));
    let span_s = (p2 - p0).num_seconds() - 7_200;
    let mut rng = Lcg(16);
    let mut out = Vec::new();
    for (k, customer) in CUSTOMERS.iter().enumerate() {
        for i in 0..EVENTS_PER_CUSTOMER {
            let offset_s = span_s * i as i64 / EVENTS_PER_CUSTOMER as i64 + 60 * k as i64;
            let kind = match i % 4 {
                0 | 1 => Kind::Tokens(Decimal::new(rng.next(300_000) as i64, 2)),
                2 => Kind::Call(if rng.next(2) == 0 { "eu" } else { "us" }),
                _ => Kind::User(format!("u{}", rng.next(6))),
            };
            out.push(Usage {
                customer,
                id: format!("{customer}-e{i}"),
                time: p0 + chrono::TimeDelta::seconds(offset_s),
                kind,
            });
        }
        // Seats: c-0 three observations (beyond the bound of 2), c-1 two,
        // c-2 one.
        let seats: [&[u32]; 3] = [&[3, 5, 4], &[6, 2], &[7]];
        for (j, n) in seats[k].iter().enumerate() {
            out.push(Usage {
                customer,
                id: format!("{customer}-seats{j}"),
                time: p0 + chrono::TimeDelta::hours(1 + j as i64),
                kind: Kind::Seats(*n),
            });
        }
    }
    out
}

/// The retracted events: per customer k, events 5 + 4k (tokens), 26 + 4k
/// (api call) and 39 + 4k (user), those below 30 in P0; and c-1's peak of 6
/// seats (its segment falls back on 2).
fn retracted() -> BTreeSet<String> {
    let mut out = BTreeSet::from(["c-1-seats0".to_string()]);
    for (k, c) in CUSTOMERS.iter().enumerate() {
        for i in [5 + 4 * k, 26 + 4 * k, 39 + 4 * k] {
            out.insert(format!("{c}-e{i}"));
        }
    }
    out
}

/// The amended events (tokens, one in each period) and their new values.
fn amended() -> BTreeMap<String, Decimal> {
    BTreeMap::from([
        ("c-0-e9".to_string(), Decimal::new(123_456, 2)),
        ("c-1-e41".to_string(), Decimal::new(7, 0)),
    ])
}

/// The corrections, timed two hours before P1 ends, and the five that
/// rate must refuse.
fn corrections(events: &[Usage]) -> Vec<(String, String)> {
    let at = rfc3339(month_start(2) - chrono::TimeDelta::hours(2));
    let by_id: BTreeMap<&str, &Usage> = events.iter().map(|e| (e.id.as_str(), e)).collect();
    let retract = |id: &str, customer: &str, target: &str, time: Option<String>| {
        let time = time
            .map(|t| format!(r#","time":"{t}""#))
            .unwrap_or_default();
        let data = format!(r#"{{"source":"{SOURCE}","id":"{target}"{time}}}"#);
        (
            customer.to_string(),
            cloudevent(OPS, id, "meterline.usage.retract", customer, &at, &data),
        )
    };
    let mut out = Vec::new();
    for target in retracted() {
        let e = by_id[target.as_str()];
        out.push(retract(&format!("r-{target}"), e.customer, &target, None));
    }
    for (target, value) in amended() {
        let e = by_id[target.as_str()];
        let replacement = Usage {
            id: format!("{target}-v2"),
            time: e.time + chrono::TimeDelta::minutes(1),
            kind: Kind::Tokens(value),
            ..e.clone()
        };
        let data = format!(
            r#"{{"source":"{SOURCE}","id":"{target}","event":{}}}"#,
            replacement.cloudevent()
        );
        let amend = cloudevent(
            OPS,
            &format!("a-{target}"),
            "meterline.usage.amend",
            e.customer,
            &at,
            &data,
        );
        out.push((e.customer.to_string(), amend));
    }
    // Refused by rate, each with its code.
    let first = "c-0-e5".to_string();
    let ancient = rfc3339(Utc::now() - chrono::TimeDelta::days(400));
    out.push(retract("bad-twice", "c-0", &first, None));
    out.push(retract("bad-unknown", "c-0", "no-such-event", None));
    out.push(retract("bad-expired", "c-0", "ancient", Some(ancient)));
    out.push(retract("bad-max", "c-0", "c-0-seats1", None));
    let ghost = Usage {
        customer: "c-0",
        id: "ghost-v2".into(),
        time: month_start(3),
        kind: Kind::Tokens(Decimal::new(999_999, 0)),
    };
    let data = format!(
        r#"{{"source":"{SOURCE}","id":"ghost","event":{}}}"#,
        ghost.cloudevent()
    );
    out.push((
        "c-0".into(),
        cloudevent(OPS, "bad-ghost", "meterline.usage.amend", "c-0", &at, &data),
    ));
    out
}

/// The usage the books must show: retracted events gone, amended ones with
/// their new values.
fn corrected_usage(events: &[Usage]) -> Vec<Usage> {
    let gone = retracted();
    let amended = amended();
    events
        .iter()
        .filter(|e| !gone.contains(&e.id))
        .map(|e| match amended.get(&e.id) {
            Some(v) => Usage {
                kind: Kind::Tokens(*v),
                ..e.clone()
            },
            None => e.clone(),
        })
        .collect()
}

/// (subscription, period id, meter) -> the models' price of `events`.
fn expected_books(events: &[Usage]) -> BTreeMap<(String, String, String), Decimal> {
    expected_books_with(events, TOKENS)
}

/// [`expected_books`] with `tokens` as the tokens charge.
fn expected_books_with(
    events: &[Usage],
    tokens: &str,
) -> BTreeMap<(String, String, String), Decimal> {
    // Segment (subscription, period, meter, group) -> its events.
    let mut segments: BTreeMap<(String, String, &str, String), Vec<&Usage>> = BTreeMap::new();
    for e in events {
        let period = Utc
            .with_ymd_and_hms(e.time.year(), e.time.month(), 1, 0, 0, 0)
            .unwrap()
            .format("%Y-%m-%d")
            .to_string();
        let (meter, group) = e.segment();
        segments
            .entry((format!("s-{}", e.customer), period, meter, group))
            .or_default()
            .push(e);
    }
    let model = |json: &str| serde_json::from_str::<ChargeModel>(json).unwrap();
    let mut books = BTreeMap::new();
    for ((sub, period, meter, _), es) in segments {
        let quantity = match meter {
            "tokens" => es
                .iter()
                .map(|e| match e.kind {
                    Kind::Tokens(v) => v,
                    _ => unreachable!(),
                })
                .sum(),
            "api_calls" => Decimal::from(es.len()),
            "active_users" => {
                let users: BTreeSet<String> = es
                    .iter()
                    .map(|e| match &e.kind {
                        Kind::User(u) => u.clone(),
                        _ => unreachable!(),
                    })
                    .collect();
                Decimal::from(users.len())
            }
            _ => es
                .iter()
                .map(|e| match e.kind {
                    Kind::Seats(n) => Decimal::from(n),
                    _ => unreachable!(),
                })
                .max()
                .unwrap(),
        };
        let json = match meter {
            "tokens" => tokens,
            "api_calls" => API_CALLS,
            "active_users" => USERS,
            _ => SEATS,
        };
        *books
            .entry((sub, period, meter.to_string()))
            .or_insert(Decimal::ZERO) += model(json).price(quantity).unwrap();
    }
    books
}

fn setup(name: &str, extra: &str) -> (World, Vec<Usage>) {
    let w = World::new(name, &format!("{CONFIG}{extra}"));
    w.apply();
    w.load_refdata("plans", &plan());
    w.load_refdata("customers", &customer_lines(&CUSTOMERS));
    w.load_refdata("subscriptions", &subscriptions());
    let events = usage();
    let records: Vec<_> = events
        .iter()
        .map(|e| {
            (
                Some(e.customer.as_bytes().to_vec()),
                Some(e.cloudevent().into_bytes()),
                vec![],
            )
        })
        .collect();
    produce(&w.topic("usage.events"), &records);
    (w, events)
}

fn produce_keyed(w: &World, records: &[(String, String)]) {
    let records: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            (
                Some(k.as_bytes().to_vec()),
                Some(v.as_bytes().to_vec()),
                vec![],
            )
        })
        .collect();
    produce(&w.topic("usage.events"), &records);
}

/// One event per customer in P3, closing P1 and P2.
fn clock_events() -> Vec<(String, String)> {
    let at = rfc3339(month_start(1) + chrono::TimeDelta::days(14));
    CUSTOMERS
        .iter()
        .map(|c| {
            let event = cloudevent(
                SOURCE,
                &format!("{c}-clock"),
                "llm.tokens",
                c,
                &at,
                r#"{"tokens":"1","model":"m"}"#,
            );
            (c.to_string(), event)
        })
        .collect()
}

#[test]
fn retractions_and_amendments_leave_the_books_of_the_corrected_usage() {
    let port = free_port();
    let http = format!("[http]\nlisten_addr = \"127.0.0.1:{port}\"\n");
    let (w, events) = setup("corrections", &http);
    produce_keyed(&w, &corrections(&events));
    produce_keyed(&w, &clock_events());
    let mut run = w.spawn_stage(&all_stages(), "a");
    let closes = 3 * CUSTOMERS.len();
    wait_until("P0, P1 and P2 closed for every subscription", || {
        period_closes(&postings(&w)) >= closes && invoices_caught_up(&w)
    });
    std::thread::sleep(Duration::from_secs(3));
    let ps = postings(&w);
    // Lineage: the retracted event names its retraction, which went to the
    // windows of the open period.
    let endpoint = format!("http://127.0.0.1:{port}");
    let lineage = |source: &str, id: &str| {
        stdout_of(&w.run(&["lineage", "--endpoint", &endpoint, source, id]))
    };
    let original = lineage(SOURCE, "c-0-e5");
    assert!(
        original.lines().any(|l| l.trim_start().starts_with("rate")
            && l.contains("retracted")
            && l.contains("by ops/r-c-0-e5")),
        "{original}"
    );
    let retraction = lineage(OPS, "r-c-0-e5");
    assert!(
        retraction
            .lines()
            .any(|l| l.trim_start().starts_with("rate") && l.contains("corrects svc/c-0-e5")),
        "{retraction}"
    );
    assert!(
        retraction
            .lines()
            .any(|l| l.trim_start().starts_with("aggregate") && l.contains("windowed")),
        "{retraction}"
    );
    assert!(terminate(&mut run).success(), "SIGTERM exits 0");

    let (p0, p1) = (
        month_start(4).format("%Y-%m-%d").to_string(),
        month_start(3).format("%Y-%m-%d").to_string(),
    );
    let mut books: BTreeMap<(String, String, String), Decimal> = BTreeMap::new();
    let mut adjustments_of_p0 = 0;
    for p in &ps {
        assert!(p.is_balanced(), "{p:?}");
        let Some(ct) = &p.control_total else { continue };
        if p.posting_type != PostingType::ControlTotal || p.kind != "billing_period" {
            continue;
        }
        let original = p.adjusts.as_ref().unwrap_or(&p.billing_period).id.clone();
        if p.adjusts.as_ref().is_some_and(|a| a.id == p0) {
            assert_eq!(p.billing_period.id, p1, "a P0 correction lands in P1");
            adjustments_of_p0 += 1;
        }
        if original == p0 || original == p1 {
            let key = (
                p.subscription_id.clone(),
                original,
                p.meter.clone().unwrap_or_default(),
            );
            *books.entry(key).or_default() += ct.amount;
        }
    }
    let mut want = expected_books(&corrected_usage(&events));
    want.retain(|_, v| !v.is_zero());
    books.retain(|_, v| !v.is_zero());
    assert_eq!(books, want, "per subscription, original period and meter");
    assert!(
        adjustments_of_p0 >= 3,
        "P0's retractions are adjustments in P1"
    );
    // Sanity: the corrections changed the books.
    assert_ne!(want, expected_books(&events));

    // Each refused correction once, with its code.
    let mut codes: Vec<String> = read_all(&w.topic("meterline.dlq.rate"), true)
        .iter()
        .filter_map(|r| r.header("meterline.reason"))
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            "already_corrected",
            "retraction_target_expired",
            "retraction_target_unknown",
            "retraction_target_unknown",
            "retraction_unsupported",
        ]
    );
    let rated: Vec<RatedEvent> = read_all(&w.topic("usage.rated"), true)
        .iter()
        .map(|r| RatedEvent::from_json_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    let corrected: Vec<&str> = rated
        .iter()
        .filter_map(|r| r.correction.as_ref().map(|c| c.id.as_str()))
        .collect();
    assert_eq!(corrected.len(), retracted().len() + amended().len());
    assert!(
        rated.iter().all(|r| r.id != "ghost-v2"),
        "nothing of a refused amendment"
    );

    let o = w.run(&["reconcile"]);
    let report = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && report.contains("reconcile: OK"),
        "{report}{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn sigkill_of_rate_three_times_applies_each_retraction_once() {
    let (w, events) = setup("correctioncrash", "");
    let mut front = w.spawn_stage(&["validate", "dedupe", "enrich"], "a");
    let mut rate = w.spawn_stage(&["rate"], "a");
    let rated_topic = w.topic("usage.rated");
    wait_until("every event rated", || {
        read_all(&rated_topic, true).len() >= events.len()
    });
    // Retract every other usage event, in bursts, killing rate in between.
    let at = rfc3339(month_start(2) - chrono::TimeDelta::hours(2));
    let targets: Vec<&Usage> = events
        .iter()
        .filter(|e| !matches!(e.kind, Kind::Seats(_)))
        .step_by(2)
        .collect();
    let retractions: Vec<(String, String)> = targets
        .iter()
        .map(|e| {
            let data = format!(r#"{{"source":"{SOURCE}","id":"{}"}}"#, e.id);
            let event = cloudevent(
                OPS,
                &format!("r-{}", e.id),
                "meterline.usage.retract",
                e.customer,
                &at,
                &data,
            );
            (e.customer.to_string(), event)
        })
        .collect();
    let mut kills = 0;
    for chunk in retractions.chunks(retractions.len() / 3 + 1) {
        let before = read_all(&rated_topic, true).len();
        produce_keyed(&w, chunk);
        // Killed once the burst is being applied, mid-way more often than not.
        wait_until("rate applying the burst", || {
            read_all(&rated_topic, true).len() > before
        });
        kill9(&mut rate);
        kills += 1;
        rate = w.spawn_stage(&["rate"], "a");
    }
    assert_eq!(kills, 3);
    wait_until("every retraction rated", || {
        read_all(&rated_topic, true).len() >= events.len() + targets.len()
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(terminate(&mut rate).success());
    assert!(terminate(&mut front).success());
    let rated: Vec<RatedEvent> = read_all(&rated_topic, true)
        .iter()
        .map(|r| RatedEvent::from_json_slice(r.value.as_deref().unwrap()).unwrap())
        .collect();
    assert_eq!(
        rated.len(),
        events.len() + targets.len(),
        "each input rated once"
    );
    let mut per_target: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &rated {
        if let Some(c) = &r.correction {
            *per_target.entry(c.id.as_str()).or_default() += 1;
        }
    }
    let want: BTreeMap<&str, usize> = targets.iter().map(|e| (e.id.as_str(), 1)).collect();
    assert_eq!(per_target, want, "each retraction applied once");
    // The amounts rated add up to the models' price of what remains.
    let gone: BTreeSet<&str> = targets.iter().map(|e| e.id.as_str()).collect();
    let remaining: Vec<Usage> = events
        .iter()
        .filter(|e| !gone.contains(e.id.as_str()))
        .cloned()
        .collect();
    let mut got: BTreeMap<(String, String, String), Decimal> = BTreeMap::new();
    for r in &rated {
        for m in &r.measures {
            let key = (
                r.enriched.subscription_id.clone(),
                r.enriched.billing_period.id.clone(),
                m.meter.clone(),
            );
            *got.entry(key).or_default() += m.marginal_amount;
        }
    }
    let mut want = expected_books(&remaining);
    want.retain(|_, v| !v.is_zero());
    got.retain(|_, v| !v.is_zero());
    assert_eq!(got, want);
}

/// The tokens charge corrected: the second tier at 0.0012 instead of 0.0015.
const TOKENS_CORRECTED: &str = r#"{"model":"graduated","tiers":[{"up_to":"1000","unit_price":"0.002"},{"up_to":"5000","unit_price":"0.0012","flat_fee":"1.00"},{"up_to":null,"unit_price":"0.001"}]}"#;

fn rated_records(w: &World) -> Vec<RatedEvent> {
    read_all(&w.topic("usage.rated"), true)
        .iter()
        .map(|r| RatedEvent::from_json_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

/// (period, meter) -> the sum of the subscription's rated amounts.
fn rated_books(rated: &[RatedEvent], subscription: &str) -> BTreeMap<(String, String), Decimal> {
    let mut out = BTreeMap::new();
    for r in rated
        .iter()
        .filter(|r| r.enriched.subscription_id == subscription)
    {
        for m in &r.measures {
            *out.entry((r.enriched.billing_period.id.clone(), m.meter.clone()))
                .or_insert(Decimal::ZERO) += m.marginal_amount;
        }
    }
    out
}

fn stdout_of(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn rerate_after_a_corrected_plan_bills_the_corrected_price_once() {
    let (w, events) = setup("rerate", "");
    let mut run = w.spawn_stage(&all_stages(), "a");
    wait_until("every event rated", || {
        rated_records(&w).len() >= events.len()
    });
    let sub = "s-c-0";
    // Nothing corrected yet: every segment unchanged, nothing sent.
    let o = w.run(&["rerate", "--subscription", sub]);
    assert!(o.status.success(), "{}", stdout_of(&o));
    assert!(
        stdout_of(&o).contains("nothing to re-rate"),
        "{}",
        stdout_of(&o)
    );

    let corrected = plan().replace(TOKENS, TOKENS_CORRECTED);
    w.load_refdata("plans", &corrected);
    let dry = w.run(&["rerate", "--subscription", sub, "--dry-run"]);
    let text = stdout_of(&dry);
    assert!(dry.status.success(), "{text}");
    assert_eq!(
        text.matches("price now").count(),
        2,
        "two tokens segments: {text}"
    );
    assert!(text.contains("dry run: nothing sent"), "{text}");
    std::thread::sleep(Duration::from_secs(2));
    let before = rated_records(&w);
    assert_eq!(before.len(), events.len(), "a dry run sends nothing");

    let o = w.run(&["rerate", "--subscription", sub, "--actor", "ana"]);
    assert!(o.status.success(), "{}", stdout_of(&o));
    assert!(
        stdout_of(&o).contains("applied: 2 adjustment(s)"),
        "{}",
        stdout_of(&o)
    );
    let after = rated_records(&w);
    let mine: Vec<&Usage> = events.iter().filter(|e| e.customer == "c-0").collect();
    let mine: Vec<Usage> = mine.into_iter().cloned().collect();
    // The tokens segments at the corrected price of their quantity.
    let want: BTreeMap<(String, String), Decimal> = expected_books_with(&mine, TOKENS_CORRECTED)
        .into_iter()
        .map(|((_, p, m), v)| ((p, m), v))
        .collect();
    assert_eq!(rated_books(&after, sub), want);
    assert_ne!(
        rated_books(&before, sub),
        want,
        "the correction changed the books"
    );
    // Other subscriptions untouched.
    assert_eq!(rated_books(&after, "s-c-1"), rated_books(&before, "s-c-1"));
    // A second run with nothing changed emits nothing.
    let o = w.run(&["rerate", "--subscription", sub]);
    assert!(
        stdout_of(&o).contains("nothing to re-rate"),
        "{}",
        stdout_of(&o)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(rated_records(&w).len(), after.len());
    assert!(terminate(&mut run).success());
    let o = w.run(&["reconcile"]);
    let report = stdout_of(&o);
    assert!(
        o.status.success() && report.contains("reconcile: OK"),
        "{report}"
    );
}

/// A retraction and an amendment of events parked for an unknown customer
/// wait with them in enrich (`correction_target_parked`); when the customer
/// arrives, each event flows and its correction right after it: the
/// retracted event bills nothing, the amended one its new value, and rate
/// dead-letters nothing. (Before, both corrections reached rate first, were
/// refused as `retraction_target_unknown`, and the events were billed in
/// full once they healed.)
#[test]
fn corrections_of_parked_events_wait_for_them_and_apply_when_they_heal() {
    let w = World::new("correctionparked", CONFIG);
    w.apply();
    w.load_refdata("plans", &plan());
    let customer = "c-9";
    let at = rfc3339(month_start(2) + chrono::TimeDelta::days(3));
    let tokens = |id: &str, n: u32| {
        let data = format!(r#"{{"tokens":"{n}","model":"m"}}"#);
        cloudevent(SOURCE, id, "llm.tokens", customer, &at, &data)
    };
    let retract = cloudevent(
        OPS,
        "r-1",
        "meterline.usage.retract",
        customer,
        &at,
        &format!(r#"{{"source":"{SOURCE}","id":"e-1"}}"#),
    );
    let amend = cloudevent(
        OPS,
        "a-2",
        "meterline.usage.amend",
        customer,
        &at,
        &format!(
            r#"{{"source":"{SOURCE}","id":"e-2","event":{}}}"#,
            tokens("e-2b", 500)
        ),
    );
    let records: Vec<(String, String)> = [tokens("e-1", 2000), tokens("e-2", 300), retract, amend]
        .into_iter()
        .map(|v| (customer.to_string(), v))
        .collect();
    produce_keyed(&w, &records);
    let mut run = w.spawn_stage(&["validate", "dedupe", "enrich", "rate"], "a");
    let exceptions = w.topic("usage.exceptions");
    wait_until("the events and their corrections parked", || {
        read_all(&exceptions, true).len() >= 4
    });
    let mut reasons: Vec<String> = read_all(&exceptions, true)
        .iter()
        .filter_map(|r| r.header("meterline.reason"))
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "correction_target_parked",
            "correction_target_parked",
            "unknown_customer",
            "unknown_customer"
        ]
    );
    assert!(rated_records(&w).is_empty(), "nothing flows while parked");

    w.load_refdata("customers", &customer_lines(&[customer]));
    let (start, end) = (rfc3339(month_start(4)), rfc3339(month_start(0)));
    w.load_refdata(
        "subscriptions",
        &format!(
            r#"{{"id":"s-c-9","customer_id":"{customer}","plan_id":"mix","start":"{start}","end":"{end}","billing_anchor_day":1,"time_zone":"UTC","currency":"USD","legal_entity":"ml-us"}}"#
        ),
    );
    // e-1, e-2, the retraction of e-1, the amendment's two halves.
    wait_until("the events and their corrections rated", || {
        rated_records(&w).len() >= 5
    });
    std::thread::sleep(Duration::from_secs(2));
    let rated = rated_records(&w);
    assert!(terminate(&mut run).success(), "SIGTERM exits 0");
    assert_eq!(rated.len(), 5, "rated once each");
    let refused = read_all(&w.topic("meterline.dlq.rate"), true);
    assert!(refused.is_empty(), "rate refused nothing: {refused:?}");
    // What is billed: the 500 tokens of the replacement alone, at 0.002.
    let books = rated_books(&rated, "s-c-9");
    let tokens_total: Decimal = books.values().copied().sum();
    assert_eq!(tokens_total, Decimal::new(100, 2), "{books:?}");
}
