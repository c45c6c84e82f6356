//! The report as text tables, as Prometheus metrics, and the textfile.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use super::checks::CHECKS;
use super::facts::short;
use super::report::{Check, Report};

/// The report as tables: days, windows, failures, summary.
pub fn render(r: &Report, verbose: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "reconcile{}",
        r.period
            .as_ref()
            .map_or(String::new(), |p| format!(" --period {p}"))
    );
    render_days(&mut s, r);
    render_windows(&mut s, r);
    render_rounding(&mut s, r);
    if verbose {
        render_checks(&mut s, r);
    }
    render_dead_letters_and_notes(&mut s, r);
    render_failures(&mut s, r);
    s
}

/// The DAYS table: one row per UTC day of event time.
fn render_days(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "\nDAYS (UTC day of event time; validate: in = validated + dead-lettered + duplicates; \
         enrich: in = enriched + parked, re-emitted = parked events healed)"
    );
    let _ = writeln!(
        s,
        "{:<10} {:>8} {:>9} {:>6} {:>5} | {:>8} {:>8} {:>6} {:>8} | {:>9} {:>6} {:>8} {:>8} {:>6}  check",
        "day", "in", "validated", "dlq", "dup", "enr.in", "enriched", "parked", "re-emit",
        "t:valid", "t:dlq", "t:enrich", "t:rated", "t:dlqr"
    );
    for d in &r.days {
        let _ = writeln!(
            s,
            "{:<10} {:>8} {:>9} {:>6} {:>5} | {:>8} {:>8} {:>6} {:>8} | {:>9} {:>6} {:>8} {:>8} {:>6}  {}",
            d.day,
            d.validate.records_in,
            d.validate.passed,
            d.validate.held,
            d.validate.released,
            d.enrich.records_in,
            d.enrich.passed,
            d.enrich.held,
            d.enrich.released,
            d.validated_topic,
            d.dlq_validate_topic,
            d.enriched_topic,
            d.rated_topic,
            d.dlq_rate_topic,
            if d.ok { "OK" } else { "FAIL" }
        );
    }
}

/// The WINDOWS table: one row per original window.
fn render_windows(s: &mut String, r: &Report) {
    let _ = writeln!(
        s,
        "\nWINDOWS (by original window: adjustments count toward the window they adjust; \
         amounts unrounded except 'rounded')"
    );
    let _ = writeln!(
        s,
        "{:<14} {:<10} {:<14} {:<14} {:<10} {:<4} {:>16} {:>6} {:>16} {:>12} {:>16} {:>12} {:>10}  check",
        "kind", "window", "scope", "subscription", "meter", "cur", "rated", "events", "closed",
        "open", "posted", "rounded", "rounding"
    );
    for w in &r.windows {
        let _ = writeln!(
            s,
            "{:<14} {:<10} {:<14} {:<14} {:<10} {:<4} {:>16} {:>6} {:>16} {:>12} {:>16} {:>12} {:>10}  {}",
            w.id.kind,
            w.id.window,
            short(&w.id.scope),
            w.subscription,
            if w.meter.is_empty() { "-" } else { &w.meter },
            w.currency,
            w.rated.as_deref().unwrap_or("-"),
            w.events,
            w.closed,
            w.open,
            w.posted,
            w.posted_rounded,
            w.rounding,
            if w.ok { "OK" } else { "FAIL" }
        );
    }
}

/// The ROUNDING section, when anything was invoiced.
fn render_rounding(s: &mut String, r: &Report) {
    if !r.rounding.is_empty() {
        let _ = writeln!(
            s,
            "\nROUNDING (invoiced: control totals of billing-period windows)"
        );
        for (c, x) in &r.rounding {
            let _ = writeln!(
                s,
                "{c}: unrounded {} rounded {} difference {}",
                x.unrounded, x.rounded, x.difference
            );
        }
    }
}

/// The CHECKS section (verbose): every check, held or not.
fn render_checks(s: &mut String, r: &Report) {
    let _ = writeln!(s, "\nCHECKS");
    for c in &r.checks {
        let _ = writeln!(
            s,
            "{:<4} {:<22} {:<60} expected {} actual {} difference {}{}",
            if c.ok { "OK" } else { "FAIL" },
            c.check,
            c.subject,
            c.expected,
            c.actual,
            c.difference,
            c.currency
                .as_ref()
                .map_or(String::new(), |cur| format!(" {cur}"))
        );
    }
}

/// Dead letters downstream of validate, then the notes.
fn render_dead_letters_and_notes(s: &mut String, r: &Report) {
    let dl: Vec<String> = r
        .dead_letters
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(st, n)| format!("{st} {n}"))
        .collect();
    if !dl.is_empty() {
        let _ = writeln!(
            s,
            "\ndead letters downstream of validate: {}",
            dl.join(", ")
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "note: {n}");
    }
}

/// One line per failed check, then the summary line.
fn render_failures(s: &mut String, r: &Report) {
    let failures: Vec<&Check> = r.failures().collect();
    if !failures.is_empty() {
        let _ = writeln!(s);
    }
    for c in &failures {
        let _ = writeln!(
            s,
            "FAIL {}: {}: {} (expected {}, actual {}, difference {}{})",
            c.subject,
            c.check,
            c.detail,
            c.expected,
            c.actual,
            c.difference,
            c.currency
                .as_ref()
                .map_or(String::new(), |cur| format!(" {cur}"))
        );
    }
    let _ = writeln!(
        s,
        "\nreconcile: {} — {} check(s), {} failed; {} day(s), {} window(s)",
        if failures.is_empty() { "OK" } else { "FAILED" },
        r.checks.len(),
        failures.len(),
        r.days.len(),
        r.windows.len()
    );
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Gauge families in the text exposition format, every sample labelled
/// with the reconciled period.
struct Families {
    s: String,
    period: String,
}

impl Families {
    fn family(&mut self, name: &str, help: &str, samples: Vec<(String, f64)>) {
        let (s, period) = (&mut self.s, &self.period);
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for (labels, v) in samples {
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(s, "{name}{{period=\"{period}\"{sep}{labels}}} {v}");
        }
    }
}

/// The report as Prometheus metrics (text exposition format 0.0.4).
pub fn prometheus(r: &Report, now: DateTime<Utc>) -> String {
    let mut f = Families {
        s: String::new(),
        period: esc(r.period.as_deref().unwrap_or("all")),
    };
    outcome_families(&mut f, r);
    difference_families(&mut f, r);
    coverage_families(&mut f, r, now);
    f.s
}

/// Success, checks by result, checks failed.
fn outcome_families(f: &mut Families, r: &Report) {
    let mut family =
        |name: &str, help: &str, samples: Vec<(String, f64)>| f.family(name, help, samples);
    let failed = r.failures().count();
    family(
        "meterline_reconcile_success",
        "1 when every reconcile check held, else 0.",
        vec![(String::new(), if failed == 0 { 1.0 } else { 0.0 })],
    );
    family(
        "meterline_reconcile_checks",
        "Checks evaluated by the last reconcile, by result.",
        vec![
            ("result=\"ok\"".into(), (r.checks.len() - failed) as f64),
            ("result=\"fail\"".into(), failed as f64),
        ],
    );
    family(
        "meterline_reconcile_checks_failed",
        "Checks that failed in the last reconcile.",
        vec![(String::new(), failed as f64)],
    );
}

/// Failures per check, count and amount differences, rounding.
fn difference_families(f: &mut Families, r: &Report) {
    let mut family =
        |name: &str, help: &str, samples: Vec<(String, f64)>| f.family(name, help, samples);
    let mut by_check: BTreeMap<&str, f64> = CHECKS.iter().map(|c| (*c, 0.0)).collect();
    let mut count_diff: BTreeMap<&str, f64> = CHECKS.iter().map(|c| (*c, 0.0)).collect();
    let mut amount_diff: BTreeMap<(&str, String), f64> = BTreeMap::new();
    for c in &r.checks {
        if !c.ok {
            *by_check.entry(c.check).or_default() += 1.0;
        }
        match &c.currency {
            Some(cur) => {
                *amount_diff.entry((c.check, cur.clone())).or_default() += c.diff.abs();
            }
            None => *count_diff.entry(c.check).or_default() += c.diff.abs(),
        }
    }
    family(
        "meterline_reconcile_check_failures",
        "Days or windows failing each check.",
        by_check
            .iter()
            .map(|(c, n)| (format!("check=\"{c}\""), *n))
            .collect(),
    );
    family(
        "meterline_reconcile_count_difference",
        "Sum of |actual - expected| of the record-count checks, by check.",
        count_diff
            .iter()
            .filter(|(c, _)| {
                !matches!(
                    **c,
                    "rated_vs_windows"
                        | "period_close"
                        | "posted_amount"
                        | "accrual_amount"
                        | "invoice_amount"
                        | "unbilled_cleared"
                )
            })
            .map(|(c, n)| (format!("check=\"{c}\""), *n))
            .collect(),
    );
    family(
        "meterline_reconcile_amount_difference",
        "Sum of |actual - expected| of the money checks, by check and currency (unrounded).",
        amount_diff
            .iter()
            .map(|((c, cur), n)| (format!("check=\"{c}\",currency=\"{}\"", esc(cur)), *n))
            .collect(),
    );
    family(
        "meterline_reconcile_rounding_difference",
        "Invoiced rounded minus unrounded amounts (billing-period control totals), by currency.",
        r.rounding
            .iter()
            .map(|(c, x)| (format!("currency=\"{}\"", esc(c)), x.diff))
            .collect(),
    );
}

/// What was reconciled (windows by kind, days, in-flight records) and when.
fn coverage_families(f: &mut Families, r: &Report, now: DateTime<Utc>) {
    let mut family =
        |name: &str, help: &str, samples: Vec<(String, f64)>| f.family(name, help, samples);
    let mut kinds: BTreeMap<&str, f64> = BTreeMap::new();
    for w in &r.windows {
        *kinds.entry(w.id.kind.as_str()).or_default() += 1.0;
    }
    family(
        "meterline_reconcile_windows",
        "Original windows reconciled, by kind.",
        kinds
            .iter()
            .map(|(k, n)| (format!("kind=\"{k}\""), *n))
            .collect(),
    );
    family(
        "meterline_reconcile_days",
        "Days of event time reconciled.",
        vec![(String::new(), r.days.len() as f64)],
    );
    family(
        "meterline_reconcile_in_flight_records",
        "Input records a stage had not committed when reconcile read.",
        r.in_flight
            .iter()
            .map(|(st, n)| (format!("stage=\"{st}\""), *n as f64))
            .collect(),
    );
    family(
        "meterline_reconcile_last_run_timestamp_seconds",
        "When the last reconcile ran (Unix time).",
        vec![(String::new(), now.timestamp() as f64)],
    );
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), as
/// node_exporter's textfile collector requires.
pub fn write_textfile(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
