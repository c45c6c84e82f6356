//! The meter query as CSV, OpenMeter's shape, for clients that accept
//! `text/csv` and not JSON (OpenMeter's SDKs' `query_csv`): a header
//! `window_start,window_end,subject,GROUP...,value` (the groups the rows are
//! split by, in name order), then one record per row. `value` is the exact
//! decimal of the JSON answer, never rounded to OpenMeter's six places.

use std::collections::BTreeSet;

use axum::http::{header, HeaderMap};
use serde_json::Value;

use crate::topology::postings_export::csv_record;

/// The media type of the CSV answer.
pub const CSV_CONTENT_TYPE: &str = "text/csv; charset=utf-8";

/// Whether the client asked for CSV: its Accept names `text/csv` (not with
/// q=0) and not `application/json`. A missing Accept, `*/*` or a browser's
/// list get JSON.
pub fn wants_csv(headers: &HeaderMap) -> bool {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(accepted_type)
        .collect::<Vec<_>>();
    accept.iter().any(|t| t == "text/csv") && !accept.iter().any(|t| t == "application/json")
}

/// The media type of one Accept range, lower case, unless its q is 0.
fn accepted_type(range: &str) -> Option<String> {
    let mut parts = range.split(';').map(str::trim);
    let media = parts.next()?.to_ascii_lowercase();
    let refused = parts.any(|p| {
        p.strip_prefix("q=")
            .is_some_and(|q| !q.is_empty() && q.chars().all(|c| c == '0' || c == '.'))
    });
    (!media.is_empty() && !refused).then_some(media)
}

/// The rows of a meter query answer (its `data`) as CSV (RFC 4180).
pub fn rows_csv(answer: &Value) -> String {
    let rows = answer["data"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let groups: BTreeSet<&str> = rows
        .iter()
        .filter_map(|r| r["groupBy"].as_object())
        .flat_map(|g| g.keys().map(String::as_str))
        .collect();
    let mut out = String::new();
    let mut header = vec!["window_start", "window_end", "subject"];
    header.extend(groups.iter().copied());
    header.push("value");
    csv_record(&mut out, &header);
    for row in rows {
        let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
        let mut fields = vec![
            text(&row["windowStart"]),
            text(&row["windowEnd"]),
            text(&row["subject"]),
        ];
        fields.extend(groups.iter().map(|g| {
            row["groupBy"]
                .get(*g)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        }));
        fields.push(text(&row["value"]));
        let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        csv_record(&mut out, &fields);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use serde_json::json;

    fn accept(v: &str) -> bool {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        wants_csv(&h)
    }

    #[test]
    fn csv_only_when_asked_for_and_json_is_not() {
        assert!(accept("text/csv"));
        assert!(accept("Text/CSV; charset=utf-8"));
        assert!(accept("text/csv, text/plain;q=0.5"));
        assert!(!accept("application/json, text/csv"));
        assert!(!accept("text/csv;q=0"));
        assert!(!accept("text/csv; q=0.000"));
        assert!(accept("text/csv;q=0.1"));
        assert!(!accept("*/*"));
        assert!(!accept("text/html,application/xhtml+xml,*/*;q=0.8"));
        assert!(!wants_csv(&HeaderMap::new()));
    }

    #[test]
    fn rows_keep_the_exact_value_and_a_column_per_group() {
        let answer: Value = serde_json::from_str(
            r#"{"windowSize": "DAY", "data": [
                {"value": 1011.5, "windowStart": "2026-12-07T08:00:00Z",
                 "windowEnd": "2026-12-08T08:00:00Z", "subject": "cust-0000",
                 "groupBy": {"model": "gpt, \"4o\""}},
                {"value": 0.000000000000000001, "windowStart": "2026-12-07T08:00:00Z",
                 "windowEnd": "2026-12-08T08:00:00Z", "subject": "cust-0001",
                 "groupBy": {}}]}"#,
        )
        .unwrap();
        assert_eq!(
            rows_csv(&answer),
            "window_start,window_end,subject,model,value\r\n\
             2026-12-07T08:00:00Z,2026-12-08T08:00:00Z,cust-0000,\"gpt, \"\"4o\"\"\",1011.5\r\n\
             2026-12-07T08:00:00Z,2026-12-08T08:00:00Z,cust-0001,,0.000000000000000001\r\n"
        );
        assert_eq!(
            rows_csv(&json!({"data": []})),
            "window_start,window_end,subject,value\r\n"
        );
    }
}
