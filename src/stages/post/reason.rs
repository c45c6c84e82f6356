//! post's reason codes (see [`crate::reason`]): its own, and money's and the
//! calendar's it passes on. Stable: never rename one, only add.

crate::reason_codes! {
    MALFORMED_CLOSED_WINDOW => "malformed_closed_window",
        "The input record has no value or is not a closed window.";
    @also [
        crate::money::reasons::UNKNOWN_CURRENCY,
        crate::money::reasons::NO_MINOR_UNIT,
        crate::money::reasons::UNKNOWN_ROUNDING_MODE,
        crate::money::reasons::AMOUNT_OVERFLOW,
        crate::money::reasons::UNBALANCED_JOURNAL_ENTRY,
        crate::calendar::reasons::INVALID_ANCHOR_DAY,
        crate::calendar::reasons::UNKNOWN_TIME_ZONE,
        crate::calendar::reasons::OUT_OF_RANGE,
        crate::calendar::reasons::INVALID_RANGE,
        crate::calendar::reasons::UNRESOLVABLE_LOCAL_TIME,
    ]
}

#[cfg(test)]
mod tests {
    use super::super::PostError as E;
    use super::CODES;
    use rust_decimal::Decimal;

    #[test]
    fn every_code_post_gives_is_in_its_table() {
        let mut all = vec![
            E::Malformed("x".into()),
            E::Overflow,
            E::Unbalanced {
                key: "k".into(),
                debits: Decimal::ONE,
                credits: Decimal::ZERO,
            },
        ];
        all.extend(
            crate::money::reasons::one_of_each()
                .into_iter()
                .map(E::Money),
        );
        all.extend(
            crate::calendar::reasons::one_of_each()
                .into_iter()
                .map(E::Calendar),
        );
        // A new kind fails to compile here: add it to the list above.
        for e in &all {
            match e {
                E::Malformed(_)
                | E::Money(_)
                | E::Calendar(_)
                | E::Overflow
                | E::Unbalanced { .. } => {}
            }
        }
        for e in all {
            assert!(CODES.contains(&e.code()), "{}", e.code());
        }
    }
}
