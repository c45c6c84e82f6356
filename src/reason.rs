//! Reason codes: the stable snake_case strings that say why a record was
//! dead-lettered, parked or stopped a stage. They are a public contract
//! (the `meterline.reason` header of dead letters and parked events,
//! metrics labels, dashboards, alerts, runbooks, the README): never rename
//! one, only add new ones.
//!
//! Every code is declared once, in one table made by [`reason_codes!`]:
//! the runtime's ([`crate::runtime::dlq::reasons`]), each library whose
//! errors stages pass on ([`crate::money::reasons`],
//! [`crate::calendar::reasons`], [`crate::rating::reasons`]) and each stage's
//! own `reason.rs`. A table that also gives codes declared elsewhere (post
//! passes money's codes on) names them after `@also`, so the table still
//! lists every code its errors can give, without declaring it twice. Tests
//! (below and in each table's module) check that no code is declared twice
//! and that every code an error's `code()` returns is in its table.

/// One declared reason code and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReasonCode {
    /// The stable snake_case code.
    pub code: &'static str,
    /// A one-line meaning, for documentation.
    pub description: &'static str,
}

/// Declares a table of reason codes in the current module.
///
/// ```text
/// reason_codes! {
///     MALFORMED_RATED_EVENT => "malformed_rated_event", "The input record is not a rated event.";
///     @also [crate::money::reasons::AMOUNT_OVERFLOW]
/// }
/// ```
///
/// generates, for each entry, `pub const NAME: &str = "code"` (documented by
/// its description); `ALL`, the declared codes with their descriptions in
/// order (a [`ReasonCode`] slice); and `CODES`, every code the table's
/// owner gives: the declared ones, then the `@also` ones (constants of
/// other tables).
///
/// With `pub enum Name { Variant => "code", "description"; ... }` it
/// generates instead an enum with one variant per code (`code()`,
/// `description()`, `from_code()`, `Name::ALL`), `ALL` and `CODES` as
/// above; an `@also { Variant => path::TO::CODE, "description"; }` block
/// first gives variants whose codes another table declares.
#[macro_export]
macro_rules! reason_codes {
    (
        $(#[$enum_meta:meta])*
        pub enum $enum:ident {
            $(@also { $($avariant:ident => $acode:path, $adescription:literal;)* })?
            $($variant:ident => $code:literal, $description:literal;)*
        }
    ) => {
        $(#[$enum_meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $enum {
            $($(
                #[doc = $adescription]
                $avariant,
            )*)?
            $(
                #[doc = $description]
                $variant,
            )*
        }

        impl $enum {
            /// Every variant, in table order.
            pub const ALL: &'static [$enum] = &[$($($enum::$avariant,)*)? $($enum::$variant,)*];

            /// The stable snake_case code.
            pub const fn code(&self) -> &'static str {
                match self {
                    $($($enum::$avariant => $acode,)*)?
                    $($enum::$variant => $code,)*
                }
            }

            /// A one-line meaning, for documentation.
            pub const fn description(&self) -> &'static str {
                match self {
                    $($($enum::$avariant => $adescription,)*)?
                    $($enum::$variant => $description,)*
                }
            }

            /// The variant with this code, if any.
            pub fn from_code(code: &str) -> Option<$enum> {
                match code {
                    $($(c if c == $acode => Some($enum::$avariant),)*)?
                    $($code => Some($enum::$variant),)*
                    _ => None,
                }
            }
        }

        /// The codes this table declares, in order, with their meanings.
        pub const ALL: &[$crate::reason::ReasonCode] = &[
            $($crate::reason::ReasonCode { code: $code, description: $description },)*
        ];

        /// Every code of the table, in the order of the enum's `ALL`: the
        /// ones declared elsewhere (`@also`), then the ones declared here.
        pub const CODES: &[&str] = &[$($($acode,)*)? $($code,)*];
    };
    (
        $($name:ident => $code:literal, $description:literal;)*
        $(@also [$($also:path),* $(,)?])?
    ) => {
        $(
            #[doc = $description]
            pub const $name: &str = $code;
        )*

        /// The codes this table declares, in order, with their meanings.
        pub const ALL: &[$crate::reason::ReasonCode] = &[
            $($crate::reason::ReasonCode { code: $code, description: $description },)*
        ];

        /// Every code this table's owner gives: the ones declared here, then
        /// the ones declared by other tables (`@also`).
        pub const CODES: &[&str] = &[$($code,)* $($($also,)*)?];
    };
}

/// Whether `code` is a well-formed reason code: lowercase ASCII words joined
/// by single underscores.
pub fn is_snake_case(code: &str) -> bool {
    !code.is_empty()
        && code.starts_with(|c: char| c.is_ascii_lowercase())
        && !code.ends_with('_')
        && !code.contains("__")
        && code
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Every table: its owner, the codes it declares and every code it gives.
/// A new table belongs here (the tests below read it).
pub fn tables() -> [(&'static str, &'static [ReasonCode], &'static [&'static str]); 13] {
    use crate::stages;
    [
        (
            "runtime",
            crate::runtime::dlq::reasons::ALL,
            crate::runtime::dlq::reasons::CODES,
        ),
        (
            "money",
            crate::money::reasons::ALL,
            crate::money::reasons::CODES,
        ),
        (
            "calendar",
            crate::calendar::reasons::ALL,
            crate::calendar::reasons::CODES,
        ),
        (
            "rating",
            crate::rating::reasons::ALL,
            crate::rating::reasons::CODES,
        ),
        (
            "validate",
            crate::ingest::reason::ALL,
            crate::ingest::reason::CODES,
        ),
        (
            "dedupe",
            stages::dedupe::reason::ALL,
            stages::dedupe::reason::CODES,
        ),
        (
            "enrich",
            stages::enrich::reason::ALL,
            stages::enrich::reason::CODES,
        ),
        (
            "rate",
            stages::rate::reason::ALL,
            stages::rate::reason::CODES,
        ),
        (
            "aggregate",
            stages::aggregate::reason::ALL,
            stages::aggregate::reason::CODES,
        ),
        (
            "post",
            stages::post::reason::ALL,
            stages::post::reason::CODES,
        ),
        (
            "invoice",
            stages::invoice::reason::ALL,
            stages::invoice::reason::CODES,
        ),
        ("api", crate::api::reasons::ALL, crate::api::reasons::CODES),
        (
            "ledger",
            crate::ledger::reason::ALL,
            crate::ledger::reason::CODES,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn no_code_is_declared_twice_across_all_tables() {
        let mut declared: BTreeMap<&str, &str> = BTreeMap::new();
        for (owner, all, _) in tables() {
            for reason in all {
                assert!(
                    is_snake_case(reason.code),
                    "{owner}: {} is not snake_case",
                    reason.code
                );
                assert!(
                    !reason.description.is_empty(),
                    "{owner}: {} has no description",
                    reason.code
                );
                if let Some(first) = declared.insert(reason.code, owner) {
                    panic!("{} is declared by {first} and by {owner}", reason.code);
                }
            }
        }
    }

    #[test]
    fn every_code_a_table_gives_is_declared_once_and_listed_once() {
        let declared: BTreeSet<&str> = tables()
            .iter()
            .flat_map(|(_, all, _)| all.iter().map(|r| r.code))
            .collect();
        for (owner, all, codes) in tables() {
            let mut seen = BTreeSet::new();
            for code in codes {
                assert!(
                    declared.contains(code),
                    "{owner} gives {code}, declared nowhere"
                );
                assert!(seen.insert(*code), "{owner} lists {code} twice");
            }
            for reason in all {
                assert!(
                    seen.contains(reason.code),
                    "{owner}: {} not in CODES",
                    reason.code
                );
            }
        }
    }

    /// The README's "Reason codes" section names every declared code.
    #[test]
    fn the_readme_names_every_code() {
        let readme = include_str!("../README.md");
        let start = readme.find("## Reason codes").unwrap();
        let section = &readme[start..];
        let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
        let words: BTreeSet<&str> = section[..end]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .collect();
        for (owner, all, _) in tables() {
            for reason in all {
                assert!(
                    words.contains(reason.code),
                    "README's Reason codes section does not name {owner}'s {}",
                    reason.code
                );
            }
        }
    }

    #[test]
    fn snake_case_is_checked() {
        assert!(is_snake_case("amount_overflow"));
        assert!(is_snake_case("v2_code"));
        for bad in ["", "Amount", "a__b", "a_", "_a", "a-b", "a b", "2a"] {
            assert!(!is_snake_case(bad), "{bad:?}");
        }
    }
}
