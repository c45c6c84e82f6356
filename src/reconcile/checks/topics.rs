//! `unreadable_records`.

use crate::topology::names;

use super::super::facts::Facts;
use super::super::report::Check;
use super::count_check;

/// Topics whose records reconcile parses, with what they must be.
const PARSED_TOPICS: &[(&str, &str)] = &[
    (names::RATED, "rated events"),
    (names::WINDOWS, "closed windows"),
    (names::POSTINGS, "postings"),
];

/// `unreadable_records`: one check per parsed topic, whatever the period (a
/// record that does not parse has no day or window).
pub(super) fn check_unreadable(facts: &Facts, checks: &mut Vec<Check>) {
    for (topic, contract) in PARSED_TOPICS {
        let u = facts.unreadable.get(*topic).cloned().unwrap_or_default();
        checks.push(count_check(
            &format!("topic {topic}"),
            "unreadable_records",
            0,
            u.count,
            u.describe(topic, contract),
        ));
    }
}
