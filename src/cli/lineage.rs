//! `meterline lineage`: asks every instance (`lineage.endpoints`, or
//! `--endpoint`) what its stages' lineage stores know, and prints the path
//! of one event through the stages, or the window behind one posting.
//!
//! Each instance answers only for the partitions it owns, so the answers of
//! all instances are merged; a stage that no instance answers for prints
//! "not seen" (not yet processed, expired, or its instance not asked).

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use crate::config::Config;
use crate::http::percent_encode;

/// Environment variable holding the API key lineage queries send (needed
/// when the stages have `api.keys`).
pub const API_KEY_ENV: &str = "METERLINE_API_KEY";
use crate::lineage::{PostingSources, Step, Steps, WindowPostings, WindowRef};

#[derive(Debug, Clone, clap::Args)]
pub struct LineageArgs {
    /// The event's CloudEvents `source`.
    #[arg(required_unless_present = "posting")]
    pub source: Option<String>,
    /// The event's CloudEvents `id`.
    #[arg(required_unless_present = "posting")]
    pub id: Option<String>,
    /// Instead: the idempotency key of a posting, to list what is behind it.
    #[arg(long, conflicts_with_all = ["source", "id"])]
    pub posting: Option<String>,
    /// Base URL of an instance to ask (repeatable). Default:
    /// `lineage.endpoints`, else `http://<http.listen_addr>`.
    #[arg(long = "endpoint")]
    pub endpoints: Vec<String>,
    /// Print the merged answers as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Stages that keep per-event steps, in pipeline order (post keeps lineage
/// per window and posting, printed after them).
const STAGE_ORDER: &[&str] = &["validate", "dedupe", "enrich", "rate", "aggregate"];

/// One value a stage's partition answered.
#[derive(Debug, Clone, serde::Deserialize)]
struct Found {
    partition: i32,
    value: serde_json::Value,
}

type Answer = BTreeMap<String, Vec<Found>>;

fn endpoints(config: &Config, args: &LineageArgs) -> Vec<String> {
    if !args.endpoints.is_empty() {
        return args.endpoints.clone();
    }
    crate::lineage::remote::endpoints(config)
}

/// Asks every endpoint; merges the answers. Fails only if none answered.
fn ask(endpoints: &[String], path: &str) -> anyhow::Result<Answer> {
    let token = std::env::var(API_KEY_ENV).ok();
    let (merged, errors) = crate::lineage::remote::ask_all(endpoints, path, token.as_deref())
        .map_err(|e| anyhow::Error::msg(with_key_hint(e, token.is_some())))?;
    for err in &errors {
        eprintln!("lineage: {err}");
    }
    merged
        .into_iter()
        .map(|(stage, found)| {
            let found: Vec<Found> = found
                .into_iter()
                .map(serde_json::from_value)
                .collect::<Result<_, _>>()
                .with_context(|| format!("{path}: not a lineage answer"))?;
            Ok((stage, found))
        })
        .collect()
}

/// `error`, and when an instance refused for want of a key, how to send one.
fn with_key_hint(error: String, key_sent: bool) -> String {
    if !error.contains("HTTP 401") {
        return error;
    }
    match key_sent {
        false => {
            format!("{error}\nthe stages have api.keys: set {API_KEY_ENV} to a key with scope read")
        }
        true => format!("{error}\nthe key in {API_KEY_ENV} is not one of the stages' api.keys"),
    }
}

fn describe_window(w: &WindowRef) -> String {
    let scope = if w.kind == "period_close" {
        format!("subscription {}", w.scope)
    } else {
        format!("segment {}", short(&w.scope))
    };
    match &w.adjusts {
        Some(a) => format!("{} {} adjusting {} ({scope})", w.kind, w.window, a),
        None => format!("{} {} ({scope})", w.kind, w.window),
    }
}

fn short(s: &str) -> &str {
    s.get(..12).unwrap_or(s)
}

fn describe_step(stage: &str, s: &Step) -> String {
    let at = if s.offset < 0 {
        format!("p{} (re-emitted)", s.partition)
    } else {
        format!("p{}@{}", s.partition, s.offset)
    };
    let d = &s.detail;
    let text = |k: &str| {
        d.get(k)
            .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
    };
    let detail = match (stage, s.outcome.as_str()) {
        (_, "dead_lettered") | (_, "parked") => {
            format!("reason {}", s.reason.as_deref().unwrap_or("?"))
        }
        ("validate", "validated") => format!(
            "subject {}, time {}",
            text("subject").unwrap_or_default(),
            text("time").unwrap_or_default()
        ),
        ("dedupe", "first_copy") => format!(
            "first copy, on to usage.validated for subject {}",
            text("subject").unwrap_or_default()
        ),
        ("dedupe", "duplicate") => format!(
            "duplicate of an accepted copy, dropped (this copy's subject {})",
            text("subject").unwrap_or_default()
        ),
        ("enrich", "enriched") if d.get("retracts").is_some() => format!(
            "retraction of {}, on to rate unresolved",
            d.get("retracts").map(identity).unwrap_or_default()
        ),
        ("enrich", "enriched") => format!(
            "subscription {}, plan {} v{}, {} {}, period {}{}",
            text("subscription").unwrap_or_default(),
            text("plan").unwrap_or_default(),
            text("plan_version").unwrap_or_default(),
            text("legal_entity").unwrap_or_default(),
            text("currency").unwrap_or_default(),
            text("billing_period").unwrap_or_default(),
            if d.get("healed").and_then(|h| h.as_bool()) == Some(true) {
                ", healed after parking"
            } else {
                ""
            }
        ),
        ("rate", "rated") => {
            let mut t = describe_measures(d.get("measures"));
            if let Some(c) = d.get("corrects") {
                t.push_str(&format!(
                    "{}corrects {}: {}",
                    if t.is_empty() { "" } else { "; " },
                    identity(c),
                    describe_measures(d.get("retracted_measures"))
                ));
            }
            t
        }
        ("rate", "retracted") | ("rate", "amended") => format!(
            "by {}: {}",
            d.get("by")
                .and_then(|b| b.as_array())
                .map(|b| b
                    .iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("/"))
                .unwrap_or_default(),
            describe_measures(d.get("measures"))
        ),
        ("rate", "rerated") => format!(
            "subscription {}, {} segment(s) looked at",
            text("subscription").unwrap_or_default(),
            d.get("segments")
                .and_then(|x| x.as_array())
                .map_or(0, Vec::len)
        ),
        ("aggregate", "windowed") => s
            .windows()
            .iter()
            .map(describe_window)
            .collect::<Vec<_>>()
            .join("; "),
        _ => String::new(),
    };
    format!("{:<10} {:<13} {:<16} {detail}", stage, s.outcome, at)
}

/// `source/id` of a correction's JSON.
fn identity(c: &serde_json::Value) -> String {
    let f = |k: &str| c.get(k).and_then(|v| v.as_str()).unwrap_or_default();
    format!("{}/{}", f("source"), f("id"))
}

/// A rated step's measures: per meter the quantity and amount it moved.
fn describe_measures(measures: Option<&serde_json::Value>) -> String {
    let Some(ms) = measures.and_then(|m| m.as_array()) else {
        return String::new();
    };
    ms.iter()
        .map(|m| {
            let f = |k: &str| {
                m.get(k)
                    .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
                    .unwrap_or_default()
            };
            let delta = f("marginal_quantity");
            let sign = if delta.starts_with('-') { "" } else { "+" };
            format!(
                "{} v{} quantity {sign}{delta} (segment total {}), amount {}",
                f("meter"),
                f("plan_version"),
                f("quantity_after"),
                f("marginal_amount")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn steps_of(found: &[Found]) -> Vec<Step> {
    let mut steps = Vec::new();
    for f in found {
        if let Ok(s) = serde_json::from_value::<Steps>(f.value.clone()) {
            steps.extend(s.steps);
            if s.more > 0 {
                steps.push(Step {
                    outcome: format!("+{} more", s.more),
                    partition: f.partition,
                    offset: -1,
                    reason: None,
                    detail: serde_json::Value::Null,
                });
            }
        }
    }
    steps
}

/// Runs the verb; `Ok(false)` when nothing is known of the event/posting.
pub fn run(config: &Config, args: &LineageArgs) -> anyhow::Result<bool> {
    let eps = endpoints(config, args);
    if let Some(key) = &args.posting {
        return posting_lineage(&eps, key, args.json);
    }
    let (Some(source), Some(id)) = (&args.source, &args.id) else {
        bail!("give <source> <id>, or --posting <key>");
    };
    event_lineage(&eps, source, id, args.json)
}

/// `--posting <key>`: the posting's window(s) and every posting of each.
fn posting_lineage(eps: &[String], key: &str, json: bool) -> anyhow::Result<bool> {
    let a = ask(
        eps,
        &format!("/lineage/posting?key={}", percent_encode(key)),
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&to_json(&a))?);
    }
    let Some(found) = a.get("post").and_then(|f| f.first()) else {
        if !json {
            println!("posting {key}: not known to any instance asked");
        }
        return Ok(false);
    };
    let src: PostingSources =
        serde_json::from_value(found.value.clone()).context("posting lineage entry")?;
    if !json {
        println!("posting {key}");
        println!(
            "  {} event(s), lineage digest {}",
            src.event_count, src.lineage_digest
        );
        for w in &src.windows {
            println!("  window {}", describe_window(w));
            if let Ok(p) = ask(eps, &w.lineage_path()) {
                print_window_postings(&p, key);
            }
        }
    }
    Ok(true)
}

/// The postings of one window, the one asked for marked with `*`.
fn print_window_postings(p: &Answer, key: &str) {
    for f in p.get("post").into_iter().flatten() {
        if let Ok(wp) = serde_json::from_value::<WindowPostings>(f.value.clone()) {
            for posting in wp.postings {
                let mark = if posting.idempotency_key == key {
                    "*"
                } else {
                    " "
                };
                println!(
                    "   {mark} {:<13} {:<16} {:>14}  {}",
                    posting.posting_type, posting.kind, posting.amount, posting.idempotency_key
                );
            }
        }
    }
}

/// `<source> <id>`: the event's step in each stage, then the postings of
/// every window it went into.
fn event_lineage(eps: &[String], source: &str, id: &str, json: bool) -> anyhow::Result<bool> {
    let a = ask(
        eps,
        &format!(
            "/lineage/event?source={}&id={}",
            percent_encode(source),
            percent_encode(id)
        ),
    )?;
    let (lines, windows, known) = stage_lines(&a);
    let mut postings = BTreeMap::new();
    for w in &windows {
        let p = ask(eps, &w.lineage_path())?;
        let made: Vec<WindowPostings> = p
            .get("post")
            .into_iter()
            .flatten()
            .filter_map(|f| serde_json::from_value(f.value.clone()).ok())
            .collect();
        postings.insert(w.clone(), made);
    }
    if json {
        let mut j = to_json(&a);
        if let Some(o) = j.as_object_mut() {
            o.insert(
                "windows".into(),
                serde_json::to_value(
                    postings
                        .iter()
                        .map(|(w, p)| serde_json::json!({"window": w, "posted": p}))
                        .collect::<Vec<_>>(),
                )?,
            );
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(known);
    }
    println!("event source={source} id={id}");
    for l in lines {
        println!("  {l}");
    }
    print_postings(&postings);
    if !known {
        println!("  (no stage of the instances asked knows this event)");
    }
    Ok(known)
}

/// One line per step of each stage (or "not seen"), the windows aggregate
/// put the event into (sorted, once each), and whether any stage knows it.
fn stage_lines(a: &Answer) -> (Vec<String>, Vec<WindowRef>, bool) {
    let mut windows: Vec<WindowRef> = Vec::new();
    let mut known = false;
    let mut lines = Vec::new();
    for stage in STAGE_ORDER {
        let steps = a.get(*stage).map(|f| steps_of(f)).unwrap_or_default();
        if steps.is_empty() {
            lines.push(format!("{stage:<10} not seen"));
            continue;
        }
        known = true;
        for s in &steps {
            lines.push(describe_step(stage, s));
            if *stage == "aggregate" {
                windows.extend(s.windows());
            }
        }
    }
    windows.sort();
    windows.dedup();
    (lines, windows, known)
}

/// What post made of each window (or that it is still open).
fn print_postings(postings: &BTreeMap<WindowRef, Vec<WindowPostings>>) {
    for (w, made) in postings {
        if made.is_empty() {
            println!(
                "  {:<10} window {}: open (not closed yet)",
                "post",
                describe_window(w)
            );
            continue;
        }
        for m in made {
            println!(
                "  {:<10} window {}: {} event(s){}",
                "post",
                describe_window(w),
                m.event_count,
                m.invoice
                    .as_ref()
                    .map(|i| format!(", invoiced on {i} (meterline invoices show {i})"))
                    .unwrap_or_default()
            );
            for p in &m.postings {
                println!(
                    "  {:<10}   {:<13} {:<16} {:>14}  {}  {}",
                    "", p.posting_type, p.kind, p.amount, p.accounting_date, p.idempotency_key
                );
            }
        }
    }
}

fn to_json(a: &Answer) -> serde_json::Value {
    serde_json::Value::Object(
        a.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    serde_json::Value::Array(
                        v.iter()
                            .map(
                                |f| serde_json::json!({"partition": f.partition, "value": f.value}),
                            )
                            .collect(),
                    ),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_for_want_of_a_key_says_how_to_send_one() {
        let refused = "http://127.0.0.1:9464: HTTP 401: {}".to_string();
        assert!(with_key_hint(refused.clone(), false)
            .ends_with(&format!("set {API_KEY_ENV} to a key with scope read")));
        assert!(with_key_hint(refused, true).ends_with("is not one of the stages' api.keys"));
        let down = "http://127.0.0.1:9464: connection refused".to_string();
        assert_eq!(with_key_hint(down.clone(), false), down);
    }
}
