//! aggregate's reason codes (see [`crate::reason`]): its own, and the
//! calendar's and money's it passes on. Stable: never rename one, only add.

crate::reason_codes! {
    MALFORMED_RATED_EVENT => "malformed_rated_event",
        "The input record has no value or is not a rated event.";
    INSTANT_OUT_OF_RANGE => "instant_out_of_range",
        "An event time (ms since the epoch) is outside what a date-time can hold.";
    @also [
        crate::money::reasons::AMOUNT_OVERFLOW,
        crate::calendar::reasons::INVALID_ANCHOR_DAY,
        crate::calendar::reasons::UNKNOWN_TIME_ZONE,
        crate::calendar::reasons::OUT_OF_RANGE,
        crate::calendar::reasons::INVALID_RANGE,
        crate::calendar::reasons::UNRESOLVABLE_LOCAL_TIME,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::AggregateError as E;
    use super::CODES;

    #[test]
    fn every_code_aggregate_gives_is_in_its_table() {
        let mut all = vec![
            E::Malformed("x".into()),
            E::Overflow("w".into()),
            E::Instant(i64::MAX),
        ];
        all.extend(
            crate::calendar::reasons::one_of_each()
                .into_iter()
                .map(E::Calendar),
        );
        // A new kind fails to compile here: add it to the list above.
        for e in &all {
            match e {
                E::Malformed(_) | E::Calendar(_) | E::Overflow(_) | E::Instant(_) => {}
            }
        }
        assert_eq!(all.len(), CODES.len());
        for e in all {
            assert!(CODES.contains(&e.code()), "{}", e.code());
        }
    }
}
