//! `GET /api/v1/meters/{slug}/query`: OpenMeter's meter query, for SUM and
//! COUNT meters, from aggregate's day windows (a day is the subscription's
//! local day, as in the books): the closed ones ([`ClosedState`]) and the
//! open ones ([`WindowState`]). As OpenMeter's: without `windowSize` one row
//! per subject for the whole range asked, with `windowSize=DAY` one per day;
//! rows are split by the groups `groupBy` names, by none without it. Its
//! POST form reads the same parameters from a JSON body ([`body_pairs`]);
//! [`meter_list`] answers OpenMeter's lists of a meter's subjects and group
//! values from the same days.
//!
//! Every OpenMeter parameter is either applied or refused with a 400 that
//! says why: a filter that were silently ignored would return a larger
//! number than the caller asked for, which finance cannot tell from a
//! right one.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use super::auth::Caller;
use super::follow::{day_key, window_identity, ClosedState, DayKey, WindowState};
use super::problem::Problem;
use super::queries::{check_customer, customer_forbidden, find_meter, invalid, time_param};
use super::usage::exact_number;
use crate::config::Config;
use crate::meter::{Aggregation, Meter};

/// Subjects one query may name (`subject` and `filterCustomerId` together).
pub const METER_QUERY_MAX_SUBJECTS: usize = 100;

/// The parameters this route reads, for the refusal of any other.
const KNOWN_PARAMS: &str = "subject, filterCustomerId, from, to, windowSize, groupBy, \
     filterGroupBy[NAME], clientId";

/// A meter query's parameters, checked against the meter.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct MeterFilter {
    /// Subjects (customer ids) asked for; empty: every subject.
    subjects: BTreeSet<String>,
    /// Days starting at or after it.
    from: Option<DateTime<Utc>>,
    /// Days ending at or before it.
    to: Option<DateTime<Utc>>,
    /// Per group, the values a day may have (`filterGroupBy[NAME]=VALUE`,
    /// repeated for any of several).
    group_filter: BTreeMap<String, BTreeSet<String>>,
    /// The group names rows are split by (`groupBy`); none: rows per
    /// subject only.
    group_by: BTreeSet<String>,
    /// `windowSize=DAY`: a row per day; else one for the whole range.
    daily: bool,
}

impl MeterFilter {
    /// Reads the query's parameters in order (a name may repeat).
    pub fn parse(meter: &Meter, pairs: &[(String, String)]) -> Result<Self, Problem> {
        let mut f = MeterFilter::default();
        for (name, value) in pairs {
            f.read(meter, name, value)?;
        }
        if f.subjects.len() > METER_QUERY_MAX_SUBJECTS {
            return Err(invalid(format!(
                "{} subjects: at most {METER_QUERY_MAX_SUBJECTS} in one query",
                f.subjects.len()
            )));
        }
        if let (Some(from), Some(to)) = (f.from, f.to) {
            if from > to {
                return Err(invalid(format!("from {from} is after to {to}")));
            }
        }
        Ok(f)
    }

    fn read(&mut self, meter: &Meter, name: &str, value: &str) -> Result<(), Problem> {
        match name {
            "subject" | "filterCustomerId" => {
                if !value.is_empty() {
                    self.subjects.insert(value.to_string());
                }
            }
            "from" => self.from = Some(once(name, self.from, time_param(name, value)?)?),
            "to" => self.to = Some(once(name, self.to, time_param(name, value)?)?),
            "windowSize" if value == "DAY" => self.daily = true,
            "windowSize" => {
                return Err(invalid(format!(
                    "windowSize {value:?}: only DAY (the books' local days)"
                )))
            }
            "windowTimeZone" => {
                return Err(invalid(format!(
                    "windowTimeZone {value:?}: not supported; a day is the subscription's local \
                     day (its time zone), as in the books"
                )))
            }
            "groupBy" => self.read_group_by(meter, value)?,
            // OpenMeter's id for cancelling a query in flight; nothing to cancel here.
            "clientId" => {}
            _ => match filter_group_name(name) {
                Some(group) => self.read_group_filter(meter, group, value)?,
                None => {
                    return Err(invalid(format!(
                        "unknown query parameter {name:?}; this route reads {KNOWN_PARAMS}"
                    )))
                }
            },
        }
        Ok(())
    }

    fn read_group_by(&mut self, meter: &Meter, value: &str) -> Result<(), Problem> {
        for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            // Rows are always per subject.
            if name == "subject" {
                continue;
            }
            group_name(meter, name)?;
            self.group_by.insert(name.to_string());
        }
        Ok(())
    }

    fn read_group_filter(
        &mut self,
        meter: &Meter,
        group: &str,
        value: &str,
    ) -> Result<(), Problem> {
        group_name(meter, group)?;
        self.group_filter
            .entry(group.to_string())
            .or_default()
            .insert(value.to_string());
        Ok(())
    }

    /// Checks the caller may read what the query asks for: each subject, or
    /// every customer when it names none.
    pub fn check_caller(&self, caller: &Caller<'_>) -> Result<(), Problem> {
        if self.subjects.is_empty() && !caller.key.customers.is_empty() {
            return Err(customer_forbidden(caller));
        }
        self.subjects
            .iter()
            .try_for_each(|s| check_customer(caller, s))
    }

    /// Whether the day of `meter` counts for this query.
    fn wants(&self, meter: &str, k: &DayKey) -> bool {
        k.meter == meter
            && (self.subjects.is_empty() || self.subjects.contains(&k.subject))
            && self.from.is_none_or(|f| k.start >= f)
            && self.to.is_none_or(|t| k.end <= t)
            && self
                .group_filter
                .iter()
                .all(|(name, values)| k.group.get(name).is_some_and(|v| values.contains(v)))
    }

    /// The part of a day's group its row is split by.
    fn row_group(&self, group: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        group
            .iter()
            .filter(|(name, _)| self.group_by.contains(*name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }
}

/// `NAME` of a `filterGroupBy[NAME]` parameter.
fn filter_group_name(param: &str) -> Option<&str> {
    param
        .strip_prefix("filterGroupBy[")?
        .strip_suffix(']')
        .filter(|n| !n.is_empty())
}

fn group_name(meter: &Meter, name: &str) -> Result<(), Problem> {
    if meter.group_by.contains_key(name) {
        return Ok(());
    }
    let known: Vec<&str> = meter.group_by.keys().map(String::as_str).collect();
    Err(invalid(format!(
        "meter {} has no group {name:?} (its groups: {})",
        meter.slug,
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )))
}

/// `new`, unless the parameter already had another value.
fn once(
    name: &str,
    before: Option<DateTime<Utc>>,
    new: DateTime<Utc>,
) -> Result<DateTime<Utc>, Problem> {
    match before {
        Some(b) if b != new => Err(invalid(format!("{name} given twice ({b} and {new})"))),
        _ => Ok(new),
    }
}

/// A meter query: the meter's slug and the query's parameters in order.
pub struct MeterQuery<'a> {
    pub slug: &'a str,
    pub pairs: &'a [(String, String)],
}

/// The members of OpenMeter's `MeterQueryRequest` this route reads, for the
/// refusal of any other.
const KNOWN_MEMBERS: &str = "subject, filterCustomerId, from, to, windowSize, windowTimeZone, \
     groupBy, filterGroupBy, advancedMeterGroupByFilters, clientId";

/// The body of `POST /api/v1/meters/{slug}/query` (OpenMeter's
/// `MeterQueryRequest`) as the pairs of the GET form, so both are read and
/// refused by one parser: a list is its parameter repeated, `filterGroupBy`'s
/// `{NAME: [VALUE, ...]}` is `filterGroupBy[NAME]` once per value, and a null
/// member is an absent one.
pub fn body_pairs(body: &[u8]) -> Result<Vec<(String, String)>, Problem> {
    let value: Value = serde_json::from_slice(body).map_err(|e| invalid(format!("body: {e}")))?;
    let Value::Object(members) = value else {
        return Err(invalid("body: not a JSON object (a MeterQueryRequest)"));
    };
    let mut pairs = Vec::new();
    for (name, value) in members.into_iter().filter(|(_, v)| !v.is_null()) {
        match name.as_str() {
            "from" | "to" | "windowSize" | "windowTimeZone" | "clientId" => {
                pairs.push((name.clone(), member_text(&name, &value)?));
            }
            "subject" | "filterCustomerId" | "groupBy" => {
                for text in member_texts(&name, &value)? {
                    pairs.push((name.clone(), text));
                }
            }
            "filterGroupBy" => pairs.extend(group_filter_pairs(&value)?),
            "advancedMeterGroupByFilters" => {
                if value.as_object().is_none_or(|o| !o.is_empty()) {
                    return Err(invalid(
                        "advancedMeterGroupByFilters: not supported; filterGroupBy \
                         takes exact values",
                    ));
                }
            }
            _ => {
                return Err(invalid(format!(
                    "unknown body member {name:?}; this route reads {KNOWN_MEMBERS}"
                )))
            }
        }
    }
    Ok(pairs)
}

fn member_text(name: &str, value: &Value) -> Result<String, Problem> {
    value
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| invalid(format!("body member {name}: not a string")))
}

/// A list of strings (or one string, read as a list of one).
fn member_texts(name: &str, value: &Value) -> Result<Vec<String>, Problem> {
    match value {
        Value::Array(items) => items.iter().map(|v| member_text(name, v)).collect(),
        _ => Ok(vec![member_text(name, value)?]),
    }
}

fn group_filter_pairs(value: &Value) -> Result<Vec<(String, String)>, Problem> {
    let groups = value
        .as_object()
        .ok_or_else(|| invalid("body member filterGroupBy: not an object of group names"))?;
    let mut pairs = Vec::new();
    for (group, values) in groups {
        let texts = member_texts(&format!("filterGroupBy.{group}"), values)?;
        if texts.is_empty() {
            return Err(invalid(format!(
                "body member filterGroupBy.{group}: an empty list (name at least one value, \
                 or leave the group out)"
            )));
        }
        let param = format!("filterGroupBy[{group}]");
        pairs.extend(texts.into_iter().map(|t| (param.clone(), t)));
    }
    Ok(pairs)
}

/// Answers a meter query. Only SUM and COUNT meters: a day window holds the
/// day's summed marginal quantities, which is a SUM or COUNT meter's value
/// for the day but not a MAX, LATEST or UNIQUE_COUNT meter's.
pub fn meter_query(
    config: &Config,
    days: &ClosedState,
    open: &WindowState,
    caller: &Caller<'_>,
    q: &MeterQuery<'_>,
) -> Result<Value, Problem> {
    let meter = find_meter(config, q.slug)?;
    if !matches!(meter.aggregation, Aggregation::Sum | Aggregation::Count) {
        return Err(invalid(format!(
            "meter {} aggregates {:?}: its per-day value is not kept (only SUM and COUNT meters are queryable)",
            meter.slug, meter.aggregation
        )));
    }
    let filter = MeterFilter::parse(meter, q.pairs)?;
    filter.check_caller(caller)?;
    let mut rows = Rows::default();
    for (k, v) in days
        .days
        .iter()
        .filter(|(k, _)| filter.wants(&meter.slug, k))
    {
        rows.add(&filter, k, *v);
    }
    // Open day windows not yet seen closed (closed wins when both are read).
    for w in open.by_subscription.values().flat_map(|m| m.values()) {
        let (Some(k), Some(id)) = (day_key(w), window_identity(w)) else {
            continue;
        };
        if filter.wants(&meter.slug, &k) && !days.counted(&id) {
            rows.add(&filter, &k, w.quantity);
        }
    }
    Ok(json!({
        "windowSize": filter.daily.then_some("DAY"),
        "from": filter.from.map(|f| f.to_rfc3339()),
        "to": filter.to.map(|t| t.to_rfc3339()),
        "data": rows.into_json(&filter),
    }))
}

/// OpenMeter's lists of a meter: with `group` None, `GET
/// /api/v1/meters/{slug}/subjects`, the subjects with a day of the meter;
/// with `Some(group)`, `GET /api/v1/meters/{slug}/group-by/{group}/values`,
/// the values of the group in its days. Days in the range (`from`, `to`,
/// whole days as the query counts them) whose subject the key may read;
/// sorted. Any meter, whatever its aggregation: no value is read.
pub fn meter_list(
    config: &Config,
    days: &ClosedState,
    open: &WindowState,
    caller: &Caller<'_>,
    q: &MeterQuery<'_>,
    group: Option<&str>,
) -> Result<Value, Problem> {
    let meter = find_meter(config, q.slug)?;
    match group {
        None => distinct_of_days(meter, days, open, caller, q.pairs, |k| {
            Some(k.subject.clone())
        }),
        Some(group) => {
            group_name(meter, group)?;
            distinct_of_days(meter, days, open, caller, q.pairs, |k| {
                k.group.get(group).cloned()
            })
        }
    }
}

/// What `project` reads from each day of `meter` in the range of `pairs`
/// (only `from` and `to`) whose subject the key may read: sorted, distinct.
fn distinct_of_days(
    meter: &Meter,
    days: &ClosedState,
    open: &WindowState,
    caller: &Caller<'_>,
    pairs: &[(String, String)],
    project: impl Fn(&DayKey) -> Option<String>,
) -> Result<Value, Problem> {
    if let Some((name, _)) = pairs.iter().find(|(n, _)| n != "from" && n != "to") {
        return Err(invalid(format!(
            "unknown query parameter {name:?}; this route reads from, to"
        )));
    }
    let filter = MeterFilter::parse(meter, pairs)?;
    let wanted = |k: &DayKey| filter.wants(&meter.slug, k) && caller.may_read(&k.subject);
    let open_days: Vec<DayKey> = open
        .by_subscription
        .values()
        .flat_map(|m| m.values())
        .filter_map(day_key)
        .collect();
    let found: BTreeSet<String> = days
        .days
        .keys()
        .chain(open_days.iter())
        .filter(|k| wanted(k))
        .filter_map(project)
        .collect();
    Ok(json!(found))
}

/// The query's rows: per window (a day, or the whole range: `None`),
/// subject and (projected) group, the exact sum; and the days' span.
#[derive(Default)]
struct Rows {
    sums: BTreeMap<RowKey, Decimal>,
    span: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

type RowKey = (
    Option<(DateTime<Utc>, DateTime<Utc>)>,
    String,
    BTreeMap<String, String>,
);

impl Rows {
    fn add(&mut self, filter: &MeterFilter, k: &DayKey, v: Decimal) {
        let window = filter.daily.then_some((k.start, k.end));
        let key = (window, k.subject.clone(), filter.row_group(&k.group));
        *self.sums.entry(key).or_default() += v;
        self.span = Some(match self.span {
            None => (k.start, k.end),
            Some((s, e)) => (s.min(k.start), e.max(k.end)),
        });
    }

    /// A whole-range row spans `from` to `to` as asked, else the days found.
    fn into_json(self, filter: &MeterFilter) -> Vec<Value> {
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let span = self.span;
        self.sums
            .into_iter()
            .filter_map(|((window, subject, group), v)| {
                let (start, end) = window.or_else(|| {
                    span.map(|(s, e)| (filter.from.unwrap_or(s), filter.to.unwrap_or(e)))
                })?;
                Some(json!({
                    "value": exact_number(v),
                    "windowStart": at(start),
                    "windowEnd": at(end),
                    "subject": subject,
                    "groupBy": group,
                }))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meter() -> Meter {
        Meter {
            slug: "tokens".into(),
            event_type: "llm.tokens".into(),
            aggregation: Aggregation::Sum,
            value_property: Some("$.tokens".into()),
            group_by: [("model", "$.model"), ("region", "$.region")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            unit_conversion: None,
        }
    }

    fn pairs(q: &str) -> Vec<(String, String)> {
        crate::http::query_pairs(Some(q.to_string()))
    }

    fn parse(q: &str) -> Result<MeterFilter, String> {
        MeterFilter::parse(&meter(), &pairs(q)).map_err(|p| p.detail)
    }

    fn day(subject: &str, day: u32, group: &[(&str, &str)]) -> DayKey {
        let start = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 3, day, 0, 0, 0).unwrap();
        DayKey {
            meter: "tokens".into(),
            subject: subject.into(),
            start,
            end: start + chrono::Duration::days(1),
            group: group
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            segment_id: "seg".into(),
        }
    }

    /// The rows of `days` (each with its quantity) under query `q`, as
    /// (window start, window end, subject, group, value), the days of March.
    fn rows(q: &str, days: &[(DayKey, &str)]) -> Vec<(u32, u32, String, Value, String)> {
        rows_of(&pairs(q), days)
    }

    /// [`rows`] of a POST body.
    fn body_rows(body: &str, days: &[(DayKey, &str)]) -> Vec<(u32, u32, String, Value, String)> {
        rows_of(&body_pairs(body.as_bytes()).unwrap(), days)
    }

    fn rows_of(
        pairs: &[(String, String)],
        days: &[(DayKey, &str)],
    ) -> Vec<(u32, u32, String, Value, String)> {
        let filter = MeterFilter::parse(&meter(), pairs).unwrap();
        let mut rows = Rows::default();
        for (k, v) in days.iter().filter(|(k, _)| filter.wants("tokens", k)) {
            rows.add(&filter, k, v.parse().unwrap());
        }
        let day = |t: &Value| t.as_str().unwrap()[8..10].parse::<u32>().unwrap();
        rows.into_json(&filter)
            .iter()
            .map(|r| {
                let subject = r["subject"].as_str().unwrap().to_string();
                let value = r["value"].to_string();
                (
                    day(&r["windowStart"]),
                    day(&r["windowEnd"]),
                    subject,
                    r["groupBy"].clone(),
                    value,
                )
            })
            .collect()
    }

    fn sample() -> Vec<(DayKey, &'static str)> {
        vec![
            (day("a", 1, &[("model", "m1"), ("region", "eu")]), "10.5"),
            (day("a", 1, &[("model", "m1"), ("region", "us")]), "2"),
            (day("a", 1, &[("model", "m2"), ("region", "eu")]), "0.25"),
            (day("a", 1, &[("region", "eu")]), "7"),
            (day("a", 2, &[("model", "m1"), ("region", "eu")]), "1"),
            (day("b", 1, &[("model", "m1"), ("region", "eu")]), "100"),
            (day("c", 1, &[("model", "m1"), ("region", "eu")]), "1000"),
        ]
    }

    #[test]
    fn group_filters_and_group_by_give_the_exact_sums_asked_for() {
        let s = sample();
        let row = |start, end, subject: &str, group: Value, value: &str| {
            (start, end, subject.to_string(), group, value.to_string())
        };
        assert_eq!(
            rows(
                "subject=a&subject=b&filterGroupBy%5Bmodel%5D=m1&groupBy=subject&windowSize=DAY",
                &s
            ),
            vec![
                row(1, 2, "a", json!({}), "12.5"),
                row(1, 2, "b", json!({}), "100"),
                row(2, 3, "a", json!({}), "1"),
            ]
        );
        assert_eq!(
            rows(
                "filterCustomerId=a&groupBy=model&windowSize=DAY&to=2026-03-02T00:00:00Z",
                &s
            ),
            vec![
                row(1, 2, "a", json!({}), "7"),
                row(1, 2, "a", json!({"model": "m1"}), "12.5"),
                row(1, 2, "a", json!({"model": "m2"}), "0.25"),
            ],
            "a day without a model is its own group"
        );
        let all = rows("subject=a&groupBy=model,region&windowSize=DAY", &s);
        assert_eq!(all.len(), 5, "every group apart: {all:?}");
        let total: Decimal = all.iter().map(|r| r.4.parse::<Decimal>().unwrap()).sum();
        assert_eq!(total.to_string(), "20.75");
        assert!(rows("filterGroupBy%5Bregion%5D=apac", &s).is_empty());
        assert_eq!(
            rows(
                "subject=a&filterGroupBy%5Bmodel%5D=m1&filterGroupBy%5Bmodel%5D=m2",
                &s
            ),
            vec![row(1, 3, "a", json!({}), "13.75")],
            "a repeated group filter is any of its values; a day without the group is out"
        );
    }

    #[test]
    fn a_post_body_asks_what_its_get_form_asks() {
        let s = sample();
        let body = r#"{"subject": ["a", "b"], "filterGroupBy": {"model": ["m1", "m2"]},
            "groupBy": ["subject"], "windowSize": "DAY", "windowTimeZone": null,
            "clientId": "c1", "advancedMeterGroupByFilters": {}}"#;
        let day = |start, subject: &str, value: &str| {
            (
                start,
                start + 1,
                subject.to_string(),
                json!({}),
                value.to_string(),
            )
        };
        assert_eq!(
            body_rows(body, &s),
            vec![day(1, "a", "12.75"), day(1, "b", "100"), day(2, "a", "1")]
        );
        let get = "filterCustomerId=c&from=2026-03-01T00:00:00Z&groupBy=model";
        let post = r#"{"filterCustomerId": "c", "from": "2026-03-01T00:00:00Z",
            "groupBy": ["model"]}"#;
        assert_eq!(body_rows(post, &s), rows(get, &s));
        assert_eq!(body_rows("{}", &s).len(), 3, "one row per subject");
    }

    #[test]
    fn a_post_body_it_cannot_honour_is_refused() {
        let refused = [
            ("", "body: EOF"),
            ("[]", "not a JSON object"),
            (
                r#"{"windowTimeZone": "UTC"}"#,
                "windowTimeZone \"UTC\": not supported",
            ),
            (r#"{"filter": "model"}"#, "unknown body member \"filter\""),
            (r#"{"subject": [1]}"#, "subject: not a string"),
            (r#"{"from": 1}"#, "from: not a string"),
            (
                r#"{"filterGroupBy": ["m1"]}"#,
                "not an object of group names",
            ),
            (r#"{"filterGroupBy": {"model": []}}"#, "an empty list"),
            (
                r#"{"filterGroupBy": {"colour": ["red"]}}"#,
                "has no group \"colour\"",
            ),
            (
                r#"{"advancedMeterGroupByFilters": {"model": {"$eq": "m1"}}}"#,
                "advancedMeterGroupByFilters: not supported",
            ),
        ];
        for (body, why) in refused {
            let detail = body_pairs(body.as_bytes())
                .and_then(|p| MeterFilter::parse(&meter(), &p))
                .expect_err(body)
                .detail;
            assert!(detail.contains(why), "{body}: {detail}");
        }
    }

    #[test]
    fn without_window_size_or_group_by_a_row_is_a_subjects_total_as_in_openmeter() {
        let s = sample();
        assert_eq!(
            rows("subject=a", &s),
            vec![(1, 3, "a".to_string(), json!({}), "20.75".to_string())],
            "one row: from the first day found to the end of the last"
        );
        assert_eq!(
            rows(
                "from=2026-03-01T00:00:00Z&to=2026-03-09T00:00:00Z&subject=a&subject=c",
                &s
            ),
            vec![
                (1, 9, "a".to_string(), json!({}), "20.75".to_string()),
                (1, 9, "c".to_string(), json!({}), "1000".to_string()),
            ],
            "the range asked"
        );
        assert_eq!(
            rows("subject=a&from=2026-03-02T00:00:00Z", &s),
            vec![(2, 3, "a".to_string(), json!({}), "1".to_string())]
        );
    }

    #[test]
    fn parameters_it_cannot_honour_are_refused_not_ignored() {
        let refused = [
            (
                "windowTimeZone=UTC",
                "windowTimeZone \"UTC\": not supported",
            ),
            ("windowSize=HOUR", "only DAY"),
            ("groupBy=colour", "has no group \"colour\""),
            ("filterGroupBy%5Bcolour%5D=red", "has no group \"colour\""),
            (
                "from=2026-03-02",
                "from \"2026-03-02\": not an RFC 3339 time",
            ),
            (
                "to=2026-03-02T00:00:00Z&to=2026-03-03T00:00:00Z",
                "to given twice",
            ),
            (
                "from=2026-03-02T00:00:00Z&to=2026-03-01T00:00:00Z",
                "is after to",
            ),
            ("filter=model", "unknown query parameter \"filter\""),
            ("filterGroupBy%5B%5D=x", "unknown query parameter"),
        ];
        for (q, why) in refused {
            let detail = parse(q).expect_err(q);
            assert!(detail.contains(why), "{q}: {detail}");
        }
        assert!(parse("windowSize=DAY&clientId=c1&groupBy=model,region&subject=").is_ok());
        let many: String = (0..=METER_QUERY_MAX_SUBJECTS)
            .map(|i| format!("subject=s{i}&"))
            .collect();
        assert!(parse(&many).unwrap_err().contains("at most"));
    }
}
