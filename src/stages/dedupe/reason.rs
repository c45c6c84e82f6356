//! dedupe's reason codes (see [`crate::reason`]). Stable: never rename one,
//! only add. Only validate and dedupe write `usage.identified`: each of these
//! means something else wrote there (or a bug), never a producer error.

crate::reason_codes! {
    MALFORMED_IDENTIFIED_EVENT => "malformed_identified_event",
        "A record of usage.identified has no value, is not a claim or a verdict, or its event is not a validated event.";
    NOT_KEYED_BY_IDENTITY => "not_keyed_by_identity",
        "A claim's key is not its event's identity [source, id]: its copies may sit on other partitions, so it cannot be deduplicated.";
    INVALID_ORIGIN_PARTITION => "invalid_origin_partition",
        "A claim names an origin partition usage.identified does not have.";
    MISROUTED_VERDICT => "misrouted_verdict",
        "A verdict is not on the partition it names as its origin.";
    STALE_VERDICT => "stale_verdict",
        "A verdict whose seq was released already (a second copy of it, e.g. after a failure in at_least_once mode).";
}
