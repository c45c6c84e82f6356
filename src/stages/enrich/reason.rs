//! enrich's reason codes (see [`crate::reason`]): the dead-letter code of a
//! record that is not a validated event, the park codes of
//! [`ParkReason`](super::resolve::ParkReason) (header `meterline.reason` on
//! `usage.exceptions`, label of the parked metrics) and the codes of a
//! corrupt parked store (in the message of the fatal error that stops the
//! stage). Stable: never rename one, only add.

crate::reason_codes! {
    MALFORMED_VALIDATED_EVENT => "malformed_validated_event",
        "The input record has no value or is not a validated event (dead-lettered).";
    UNKNOWN_METER => "unknown_meter",
        "Parked: the event's meter is not in the meter catalog (a meters.toml fix and a replay resolve it).";
    UNKNOWN_CUSTOMER => "unknown_customer",
        "Parked: the customer is not on ref.customers, or retired.";
    NO_ACTIVE_SUBSCRIPTION => "no_active_subscription",
        "Parked: no subscription of the customer active at the event's time charges its meters.";
    AMBIGUOUS_SUBSCRIPTION => "ambiguous_subscription",
        "Parked: several active subscriptions charge the event's meters.";
    UNKNOWN_PLAN => "unknown_plan",
        "Parked: the subscription refers to a plan of which no version is known.";
    NO_PLAN_VERSION => "no_plan_version",
        "Parked: the subscription's plan has no version in force at the event's time.";
    NO_CHARGE_FOR_METER => "no_charge_for_meter",
        "Parked: the plan version in force has no charge for the event's meter.";
    CURRENCY_MISMATCH => "currency_mismatch",
        "Parked: the subscription bills in another currency than the plan version prices in.";
    NO_BILLING_PERIOD => "no_billing_period",
        "Parked: no billing period can be computed for the subscription.";
    CORRECTION_TARGET_PARKED => "correction_target_parked",
        "Parked: a retraction or amendment names an event that is parked itself; it flows right after that event does (a retraction passed on before would find nothing to take back, and the event would be billed when it healed).";
    PARKED_FORMAT_UNKNOWN => "parked_format_unknown",
        "Fatal: a parked store value has an unknown encoding version.";
    PARKED_VALUE_TRUNCATED => "parked_value_truncated",
        "Fatal: a parked store value is truncated.";
    PARKED_META_INVALID => "parked_meta_invalid",
        "Fatal: a parked entry's metadata does not decode.";
    PARKED_KEY_INVALID => "parked_key_invalid",
        "Fatal: a parked store key does not decode.";
    PARKED_STATS_INVALID => "parked_stats_invalid",
        "Fatal: the parked statistics do not decode.";
}

#[cfg(test)]
mod tests {
    use super::super::parked::ParkedStoreError as E;
    use super::super::resolve::ParkReason;
    use super::{ALL, CODES, MALFORMED_VALIDATED_EVENT};

    #[test]
    fn every_code_enrich_gives_is_in_its_table() {
        // resolve's tests check that every ParkReason's code is in ALL_CODES.
        let mut given: Vec<&str> = vec![MALFORMED_VALIDATED_EVENT];
        given.extend(ParkReason::ALL_CODES);
        let store_errors = [
            E::Format(9),
            E::Truncated,
            E::Meta("x".into()),
            E::Key(crate::store::keys::KeyError("x")),
            E::Stats("x".into()),
        ];
        // A new kind fails to compile here: add it to the list above.
        for e in &store_errors {
            match e {
                E::Format(_) | E::Truncated | E::Meta(_) | E::Key(_) | E::Stats(_) => {}
            }
        }
        given.extend(store_errors.iter().map(E::code));
        assert_eq!(given.len(), ALL.len());
        for code in given {
            assert!(CODES.contains(&code), "{code}");
        }
    }
}
