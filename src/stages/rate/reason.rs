//! rate's reason codes (see [`crate::reason`]): its own, and the rating
//! library's, which a measure that cannot be priced is dead-lettered with.
//! Stable: never rename one, only add.

crate::reason_codes! {
    MALFORMED_ENRICHED_EVENT => "malformed_enriched_event",
        "The input record has no value or is not an enriched event.";
    MEASURE_VALUE_MISSING => "measure_value_missing",
        "A measure of a SUM, MAX or LATEST meter carries no value.";
    MEASURE_UNIQUE_VALUE_MISSING => "measure_unique_value_missing",
        "A measure of a UNIQUE_COUNT meter carries no unique_value.";
    SEGMENT_EXPIRED => "segment_expired",
        "The event's billing period ended more than rate.segment_retention_days ago; its rating state is released.";
    DYNAMIC_AMOUNT_INVALID => "dynamic_amount_invalid",
        "A dynamic charge's amount_property is missing, not a finite non-negative decimal, or not exact.";
    DYNAMIC_CURRENCY_MISMATCH => "dynamic_currency_mismatch",
        "A dynamic charge's currency_property is missing or names another currency than the plan's.";
    RETRACTION_TARGET_UNKNOWN => "retraction_target_unknown",
        "A retraction or amendment names an event this partition never rated (never accepted, dead-lettered, not yet seen, or another subject's; a correction of a parked event waits in enrich); nothing changed.";
    RETRACTION_TARGET_EXPIRED => "retraction_target_expired",
        "A retraction or amendment names an event whose billing period's rating state is released (rate.segment_retention_days); nothing changed.";
    ALREADY_CORRECTED => "already_corrected",
        "A retraction or amendment names an event already retracted or amended; nothing changed.";
    RETRACTION_SUBJECT_MISMATCH => "retraction_subject_mismatch",
        "A retraction or amendment names an event of another subject; nothing changed.";
    RETRACTION_UNSUPPORTED => "retraction_unsupported",
        "A retraction or amendment names an event with a measure that cannot be taken back (a percentage transaction that used a free allowance since used up, or a MAX/LATEST segment beyond rate.correction_history_max); nothing changed.";
    RERATE_TOO_LARGE => "rerate_too_large",
        "A rerate command's subscription has more segments kept than one command re-rates (MAX_RERATE_SEGMENTS); name a meter or a period.";
    @also [
        crate::rating::reasons::NEGATIVE_QUANTITY,
        crate::rating::reasons::NEGATIVE_VALUE,
        crate::rating::reasons::OBSERVATION_MISMATCH,
        crate::rating::reasons::DISTINCT_VALUE_NEEDS_SET,
        crate::rating::reasons::ARITHMETIC_OVERFLOW,
        crate::rating::reasons::PRECISION_EXCEEDED,
        crate::rating::reasons::NO_TIERS,
        crate::rating::reasons::TOO_MANY_TIERS,
        crate::rating::reasons::TIER_BOUND_NOT_POSITIVE,
        crate::rating::reasons::TIER_BOUNDS_NOT_INCREASING,
        crate::rating::reasons::OPEN_TIER_NOT_LAST,
        crate::rating::reasons::LAST_TIER_NOT_OPEN,
        crate::rating::reasons::NEGATIVE_PRICE,
        crate::rating::reasons::PACKAGE_SIZE_NOT_POSITIVE,
        crate::rating::reasons::NEGATIVE_FREE_UNITS,
        crate::rating::reasons::PERCENTAGE_OUT_OF_RANGE,
        crate::rating::reasons::MIN_ABOVE_MAX,
        crate::rating::reasons::TOO_MANY_FREE_EVENTS,
        crate::rating::reasons::INVALID_AMOUNT_PROPERTY,
        crate::rating::reasons::MODEL_AGGREGATION_MISMATCH,
        crate::rating::reasons::NOT_CUMULATIVE,
        crate::rating::reasons::PRORATION_HISTORY_FULL,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::RateError as E;
    use super::CODES;
    use crate::meter::Aggregation;

    #[test]
    fn every_code_rate_gives_is_in_its_table() {
        let mut all = vec![
            E::Malformed("x".into()),
            E::MissingValue {
                meter: "m".into(),
                aggregation: Aggregation::Sum,
            },
            E::MissingUniqueValue { meter: "m".into() },
            E::SegmentExpired {
                period: "p".into(),
                days: 1,
            },
            E::DynamicAmount {
                meter: "m".into(),
                detail: "x".into(),
            },
            E::DynamicCurrency {
                meter: "m".into(),
                detail: "x".into(),
            },
            E::RetractionUnknown {
                event_source: "s".into(),
                id: "i".into(),
            },
            E::RetractionExpired {
                event_source: "s".into(),
                id: "i".into(),
            },
            E::AlreadyCorrected {
                event_source: "s".into(),
                id: "i".into(),
                by: "b".into(),
            },
            E::RetractionSubjectMismatch {
                event_source: "s".into(),
                id: "i".into(),
            },
            E::RetractionUnsupported {
                meter: "m".into(),
                detail: "x".into(),
            },
            E::RerateTooLarge {
                subscription: "s".into(),
                max: 1,
            },
        ];
        all.extend(
            crate::rating::reasons::one_of_each()
                .into_iter()
                .map(|source| E::Rating {
                    meter: "m".into(),
                    source,
                }),
        );
        // A new kind fails to compile here: add it to the list above.
        for e in &all {
            match e {
                E::Malformed(_)
                | E::MissingValue { .. }
                | E::MissingUniqueValue { .. }
                | E::SegmentExpired { .. }
                | E::DynamicAmount { .. }
                | E::DynamicCurrency { .. }
                | E::RetractionUnknown { .. }
                | E::RetractionExpired { .. }
                | E::AlreadyCorrected { .. }
                | E::RetractionSubjectMismatch { .. }
                | E::RetractionUnsupported { .. }
                | E::RerateTooLarge { .. }
                | E::Rating { .. } => {}
            }
        }
        assert_eq!(all.len(), CODES.len());
        for e in all {
            assert!(CODES.contains(&e.code()), "{}", e.code());
        }
    }
}
