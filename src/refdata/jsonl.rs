//! JSON-lines reference files, as `meterline refdata load` publishes them.
//!
//! One record per line, of the kind given by the caller. Blank lines and
//! lines whose first non-blank character is `#` are skipped. A line
//! `{"id": "...", "deleted": true}` (customers, subscriptions) or
//! `{"id": "...", "version": N, "deleted": true}` (plans) is a tombstone: it
//! retires the record with that key.
//!
//! The file is all or nothing. Every line is checked (JSON syntax, record
//! schema, record validation, and that no key appears twice, which would
//! leave the outcome to the order of publishing), every bad line is reported
//! with its 1-based line number, and records are returned for publishing only
//! when there is no bad line at all.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::records::{check_plan_id, check_text, plan_key, RefRecord};
use super::{RefError, RefKind};
use crate::meter::Aggregation;
use crate::rating::ChargeModel;

/// A record ready to publish: the Kafka key and the value, `None` for a
/// tombstone (a null value).
pub type PublishRecord = (String, Option<Vec<u8>>);

/// Lines whose first non-blank character is this are comments.
const COMMENT_PREFIX: char = '#';
/// The field that makes a line a tombstone.
const TOMBSTONE_FIELD: &str = "deleted";
/// Editors on some platforms start UTF-8 files with a byte order mark; it is
/// not part of the first line's JSON.
const BYTE_ORDER_MARK: char = '\u{feff}';

/// One bad line of a JSON-lines file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {error}")]
pub struct LineError {
    /// 1-based line number.
    pub line: usize,
    pub error: RefError,
}

impl LineError {
    /// The stable code of the underlying [`RefError`].
    pub fn code(&self) -> &'static str {
        self.error.code()
    }
}

/// Checks every line of a JSON-lines file of `kind` records and returns the
/// records to publish, in file order, with canonical values (see
/// [`RefRecord::to_json_bytes`]), or every bad line if there is any.
pub fn parse_jsonl(kind: RefKind, text: &str) -> Result<Vec<PublishRecord>, Vec<LineError>> {
    parse_jsonl_for_meters(kind, text, &BTreeMap::new())
}

/// [`parse_jsonl`], also checking each charge of a plan or a price override
/// against the aggregation of its meter (meter slug -> aggregation, from the
/// config): a percentage of a COUNT meter, or `prorate` on a SUM meter, is
/// a bad line ([`crate::rating::ChargeModel::check_aggregation`]). Meters
/// not in `meters` are not checked (enrich parks their events).
pub fn parse_jsonl_for_meters(
    kind: RefKind,
    text: &str,
    meters: &BTreeMap<String, Aggregation>,
) -> Result<Vec<PublishRecord>, Vec<LineError>> {
    let mut records = Vec::new();
    let mut errors = Vec::new();
    let mut first_line_of_key: BTreeMap<String, usize> = BTreeMap::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index.saturating_add(1);
        let content = if index == 0 {
            raw.strip_prefix(BYTE_ORDER_MARK).unwrap_or(raw)
        } else {
            raw
        }
        .trim();
        if content.is_empty() || content.starts_with(COMMENT_PREFIX) {
            continue;
        }
        match parse_line(kind, content, meters) {
            Ok((key, value)) => match first_line_of_key.entry(key) {
                Entry::Occupied(first) => errors.push(LineError {
                    line,
                    error: RefError::DuplicateKey {
                        key: first.key().clone(),
                        first_line: *first.get(),
                    },
                }),
                Entry::Vacant(slot) => {
                    records.push((slot.key().clone(), value));
                    slot.insert(line);
                }
            },
            Err(error) => errors.push(LineError { line, error }),
        }
    }
    if errors.is_empty() {
        Ok(records)
    } else {
        Err(errors)
    }
}

fn parse_line(
    kind: RefKind,
    line: &str,
    meters: &BTreeMap<String, Aggregation>,
) -> Result<PublishRecord, RefError> {
    // Parse once as a generic value to tell tombstones from records; the
    // record itself is then decoded from the text exactly as the enrich stage
    // decodes a topic value, so a file that passes here also passes there.
    let value: Value = serde_json::from_str(line).map_err(|error| RefError::from_json(&error))?;
    let object = value
        .as_object()
        .ok_or_else(|| RefError::SchemaMismatch("a line must be a JSON object".to_owned()))?;
    if object.contains_key(TOMBSTONE_FIELD) {
        return Ok((tombstone_key(kind, line)?, None));
    }
    let record = RefRecord::decode(kind, line.as_bytes())?;
    check_meters(&record, meters)?;
    Ok((record.key(), Some(record.to_json_bytes()?)))
}

/// Every charge of the record fits its meter's aggregation.
fn check_meters(
    record: &RefRecord,
    meters: &BTreeMap<String, Aggregation>,
) -> Result<(), RefError> {
    let check =
        |field: String, model: &ChargeModel, meter: &str, prorate: bool| match meters.get(meter) {
            Some(aggregation) => model
                .check_aggregation(*aggregation, prorate)
                .map_err(|source| RefError::InvalidChargeModel { field, source }),
            None => Ok(()),
        };
    match record {
        RefRecord::Plan(plan) => plan.charges.iter().try_for_each(|(meter, charge)| {
            check(
                format!("charges.{meter}"),
                &charge.model,
                meter,
                charge.prorate,
            )
        }),
        RefRecord::Subscription(sub) => {
            sub.price_overrides.iter().try_for_each(|(meter, model)| {
                check(format!("price_overrides.{meter}"), model, meter, false)
            })
        }
        RefRecord::Customer(_) | RefRecord::TaxRate(_) => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Tombstone {
    id: String,
    deleted: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaxRateTombstone {
    legal_entity: String,
    tax_code: String,
    #[serde(with = "crate::contracts::rfc3339_utc")]
    effective_from: chrono::DateTime<chrono::Utc>,
    deleted: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanTombstone {
    id: String,
    version: u32,
    deleted: bool,
}

/// The key a tombstone line retires.
fn tombstone_key(kind: RefKind, line: &str) -> Result<String, RefError> {
    let shape = |error: serde_json::Error| {
        let expected = match kind {
            RefKind::Plans => r#"{"id": "...", "version": N, "deleted": true}"#,
            RefKind::Customers | RefKind::Subscriptions => r#"{"id": "...", "deleted": true}"#,
            RefKind::TaxRates => {
                r#"{"legal_entity": "...", "tax_code": "...", "effective_from": "...", "deleted": true}"#
            }
        };
        RefError::InvalidTombstone(format!("{error}; a tombstone line is exactly {expected}"))
    };
    let (key, deleted) = match kind {
        RefKind::Plans => {
            let tombstone: PlanTombstone = serde_json::from_str(line).map_err(shape)?;
            check_plan_id("id", &tombstone.id)?;
            (
                plan_key(&tombstone.id, tombstone.version),
                tombstone.deleted,
            )
        }
        RefKind::Customers | RefKind::Subscriptions => {
            let tombstone: Tombstone = serde_json::from_str(line).map_err(shape)?;
            check_text("id", &tombstone.id)?;
            (tombstone.id, tombstone.deleted)
        }
        RefKind::TaxRates => {
            let t: TaxRateTombstone = serde_json::from_str(line).map_err(shape)?;
            check_text("legal_entity", &t.legal_entity)?;
            check_text("tax_code", &t.tax_code)?;
            (
                super::tax_rate_key(&t.legal_entity, &t.tax_code, &t.effective_from),
                t.deleted,
            )
        }
    };
    if !deleted {
        // `"deleted": false` is most likely a record with a stray flag; say
        // so instead of silently publishing or retiring anything.
        return Err(RefError::InvalidTombstone(
            "\"deleted\" must be true; drop the field to publish a record".to_owned(),
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CUSTOMER_A: &str = r#"{"id":"cust-1","name":"Acme","legal_entity":"acme-us","erp_customer_id":"C-1","status":"active"}"#;
    const CUSTOMER_B: &str = r#"{"id":"cust-2","name":"Globex","legal_entity":"globex-de","erp_customer_id":"C-2","status":"suspended"}"#;
    const PLAN: &str = r#"{"id":"api-pro","version":1,"effective_from":"2026-01-01T00:00:00Z","currency":"USD","charges":{"requests":{"model":"per_unit","unit_price":"0.0004"}},"gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200"}}"#;

    #[test]
    fn good_file_yields_records_and_tombstones_in_order() {
        let text = format!(
            "\u{feff}# customers for the demo\n\n{CUSTOMER_A}\r\n   \n  # retired\n{{\"id\": \"cust-9\", \"deleted\": true}}\n{CUSTOMER_B}\n"
        );
        let records = parse_jsonl(RefKind::Customers, &text).unwrap();
        let keys: Vec<_> = records
            .iter()
            .map(|(key, value)| (key.as_str(), value.is_some()))
            .collect();
        assert_eq!(
            keys,
            [("cust-1", true), ("cust-9", false), ("cust-2", true)]
        );
        assert_eq!(records[0].1.as_deref(), Some(CUSTOMER_A.as_bytes()));
    }

    #[test]
    fn charges_that_do_not_fit_their_meter_are_refused_with_the_line() {
        let meters = BTreeMap::from([
            ("requests".to_string(), Aggregation::Count),
            ("seats".to_string(), Aggregation::Latest),
        ]);
        let gl = r#""gl_accounts":{"usage_revenue":"4010","unbilled_receivable":"1210","receivable":"1200"}"#;
        let plan = |version: u32, charges: &str| {
            format!(
                r#"{{"id":"p","version":{version},"effective_from":"2026-01-01T00:00:00Z","currency":"USD","charges":{charges},{gl}}}"#
            )
        };
        let text = [
            plan(1, r#"{"requests":{"model":"percentage","rate":"1"}}"#),
            plan(
                2,
                r#"{"seats":{"model":"per_unit","unit_price":"5","prorate":true}}"#,
            ),
            plan(
                3,
                r#"{"requests":{"model":"per_unit","unit_price":"5","prorate":true}}"#,
            ),
            plan(4, r#"{"other":{"model":"percentage","rate":"1"}}"#),
        ]
        .join("\n");
        let errors = parse_jsonl_for_meters(RefKind::Plans, &text, &meters).unwrap_err();
        let got: Vec<(usize, String)> = errors.iter().map(|e| (e.line, e.to_string())).collect();
        assert_eq!(
            got,
            [
                (
                    1,
                    "line 1: charges.requests: a percentage charge cannot price a COUNT meter"
                        .to_string()
                ),
                (
                    3,
                    "line 3: charges.requests: prorate applies to a cumulative model of a latest or max meter, not a per_unit charge of a COUNT meter".to_string()
                ),
            ]
        );
        assert!(errors.iter().all(|e| e.code() == "invalid_charge_model"));
        // Without the meters (a unit test's plain parse) nothing is checked.
        assert!(parse_jsonl(RefKind::Plans, &text).is_ok());
    }

    #[test]
    fn plan_lines_are_keyed_by_id_and_version() {
        let text = format!("{PLAN}\n{{\"id\":\"api-pro\",\"version\":0,\"deleted\":true}}\n");
        let records = parse_jsonl(RefKind::Plans, &text).unwrap();
        assert_eq!(records[0].0, "api-pro:1");
        assert_eq!(records[1], ("api-pro:0".to_owned(), None));
    }

    #[test]
    fn every_bad_line_is_reported_and_nothing_is_published() {
        let text = [
            CUSTOMER_A,                                                // 1 ok
            "{\"id\": \"cust-3\", \"name\": ",                         // 2 syntax
            "",                                                        // 3 blank
            "[1, 2]",                                                  // 4 not an object
            &CUSTOMER_B.replace("suspended", "asleep"),                // 5 schema
            "# comment",                                               // 6 skipped
            &CUSTOMER_B.replace("\"C-2\"", "\"\""),                    // 7 validation
            CUSTOMER_A,                                                // 8 duplicate of 1
            "{\"id\": \"cust-4\", \"deleted\": false}",                // 9 bad tombstone
            "{\"id\": \"cust-5\", \"version\": 1, \"deleted\": true}", // 10 plan-style tombstone
            CUSTOMER_B,                                                // 11 ok
        ]
        .join("\n");
        let errors = parse_jsonl(RefKind::Customers, &text).unwrap_err();
        let found: Vec<_> = errors.iter().map(|e| (e.line, e.code())).collect();
        assert_eq!(
            found,
            [
                (2, "malformed_json"),
                (4, "schema_mismatch"),
                (5, "schema_mismatch"),
                (7, "invalid_text"),
                (8, "duplicate_key"),
                (9, "invalid_tombstone"),
                (10, "invalid_tombstone"),
            ]
        );
        assert_eq!(
            errors[4].to_string(),
            "line 8: duplicate key \"cust-1\", first on line 1"
        );
        assert!(errors[1].to_string().starts_with("line 4: "));
    }

    #[test]
    fn a_tombstone_and_a_record_with_the_same_key_conflict() {
        let text = format!("{CUSTOMER_A}\n{{\"id\":\"cust-1\",\"deleted\":true}}");
        let errors = parse_jsonl(RefKind::Customers, &text).unwrap_err();
        assert_eq!((errors[0].line, errors[0].code()), (2, "duplicate_key"));
    }

    #[test]
    fn plan_tombstones_need_a_version() {
        let errors =
            parse_jsonl(RefKind::Plans, "{\"id\":\"api-pro\",\"deleted\":true}").unwrap_err();
        assert_eq!(errors[0].code(), "invalid_tombstone");
        assert!(
            errors[0].to_string().contains("\"version\": N"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_kind_decides_the_schema() {
        let errors = parse_jsonl(RefKind::Subscriptions, CUSTOMER_A).unwrap_err();
        assert_eq!(errors[0].code(), "schema_mismatch");
    }

    #[test]
    fn empty_and_comment_only_files_publish_nothing() {
        assert_eq!(parse_jsonl(RefKind::Plans, "").unwrap(), []);
        assert_eq!(
            parse_jsonl(RefKind::Plans, "# nothing yet\n\n").unwrap(),
            []
        );
    }
}
