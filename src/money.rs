//! Currencies and rounding for postings.
//!
//! Usage is rated in [`Decimal`] with as many fractional digits as the price
//! needs, but an ERP ledger only accepts amounts in whole *minor units* of the
//! currency (cents for USD, no fraction for JPY, fils for BHD). This module is
//! the single place where that conversion happens:
//!
//! * [`minor_unit_exponent`] looks up how many fractional digits a currency
//!   has, from the ISO 4217 "list one" table [`MINOR_UNITS`] (all active codes
//!   that have a minor unit). Codes are matched case-sensitively and must be
//!   exactly three uppercase ASCII letters; anything else is
//!   [`MoneyError::UnknownCurrency`]. Active codes that ISO lists with minor
//!   unit "N.A." (precious metals, SDR, bond-market units, `XTS`, `XXX`, see
//!   [`CODES_WITHOUT_MINOR_UNIT`]) cannot be posted as money and yield
//!   [`MoneyError::NoMinorUnit`] instead, so the error says what is wrong.
//! * [`RoundingMode`] names the seven rounding rules a tenant may configure.
//!   It (de)serialises in `snake_case`; the default is `half_even` (banker's
//!   rounding), which does not bias sums of many rounded lines up or down.
//! * [`round_to_minor`] rounds one amount to the currency's minor unit. The
//!   result always carries exactly the currency's scale (so `1.5` USD becomes
//!   `1.50`, which serialises as `"1.50"`), and a zero result is never
//!   negative (`-0.001` USD rounds to `0.00`, not `-0.00`). Rounding an
//!   already rounded amount returns it unchanged (idempotent).
//! * [`allocate_rounded`] rounds a set of lines that belong to one posting and
//!   reports the *rounding difference*: `round(sum(raw)) - sum(round(raw_i))`.
//!   Posting every rounded line plus one rounding line carrying that
//!   difference makes the posted total equal the correctly rounded total of
//!   the raw amounts, instead of drifting by up to half a minor unit per line.
//! * [`idempotency_key`] derives the deterministic key that makes re-sending
//!   a posting to the ERP harmless: a hex SHA-256 over a length-prefixed
//!   encoding of its parts and a version, so no two different part lists can
//!   collide by concatenation (`["ab", "c"]` vs `["a", "bc"]`).
//!
//! Money is never represented as a float anywhere in this module.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every ISO 4217 alphabetic code is exactly this many ASCII uppercase letters.
pub const CURRENCY_CODE_LEN: usize = 3;

/// ISO 4217 minor-unit exponents of every active currency code that has a
/// minor unit, sorted by code so [`minor_unit_exponent`] can binary-search it.
///
/// Source: ISO 4217 list one as amended up to early 2026 (it includes `XCG`,
/// `ZWG`, `XAD` and no longer `BGN`): these 165 codes plus the 13 in
/// [`CODES_WITHOUT_MINOR_UNIT`] are the 178 active codes. Withdrawn codes are
/// deliberately absent, e.g. `HRK` (replaced by `EUR` 2023), `SLL` (by
/// `SLE`), `ZWL` (by `ZWG` 2024), `ANG` (by `XCG` 2025), `CUC` (2021) and
/// `BGN` (by `EUR` 2026): an event in such a currency is a data problem that
/// should surface, not be posted. Update this table with ISO amendments.
pub const MINOR_UNITS: [(&str, u32); 165] = [
    ("AED", 2), // UAE Dirham
    ("AFN", 2), // Afghani
    ("ALL", 2), // Lek
    ("AMD", 2), // Armenian Dram
    ("AOA", 2), // Kwanza
    ("ARS", 2), // Argentine Peso
    ("AUD", 2), // Australian Dollar
    ("AWG", 2), // Aruban Florin
    ("AZN", 2), // Azerbaijan Manat
    ("BAM", 2), // Convertible Mark
    ("BBD", 2), // Barbados Dollar
    ("BDT", 2), // Taka
    ("BHD", 3), // Bahraini Dinar
    ("BIF", 0), // Burundi Franc
    ("BMD", 2), // Bermudian Dollar
    ("BND", 2), // Brunei Dollar
    ("BOB", 2), // Boliviano
    ("BOV", 2), // Mvdol
    ("BRL", 2), // Brazilian Real
    ("BSD", 2), // Bahamian Dollar
    ("BTN", 2), // Ngultrum
    ("BWP", 2), // Pula
    ("BYN", 2), // Belarusian Ruble
    ("BZD", 2), // Belize Dollar
    ("CAD", 2), // Canadian Dollar
    ("CDF", 2), // Congolese Franc
    ("CHE", 2), // WIR Euro
    ("CHF", 2), // Swiss Franc
    ("CHW", 2), // WIR Franc
    ("CLF", 4), // Unidad de Fomento
    ("CLP", 0), // Chilean Peso
    ("CNY", 2), // Yuan Renminbi
    ("COP", 2), // Colombian Peso
    ("COU", 2), // Unidad de Valor Real
    ("CRC", 2), // Costa Rican Colon
    ("CUP", 2), // Cuban Peso
    ("CVE", 2), // Cabo Verde Escudo
    ("CZK", 2), // Czech Koruna
    ("DJF", 0), // Djibouti Franc
    ("DKK", 2), // Danish Krone
    ("DOP", 2), // Dominican Peso
    ("DZD", 2), // Algerian Dinar
    ("EGP", 2), // Egyptian Pound
    ("ERN", 2), // Nakfa
    ("ETB", 2), // Ethiopian Birr
    ("EUR", 2), // Euro
    ("FJD", 2), // Fiji Dollar
    ("FKP", 2), // Falkland Islands Pound
    ("GBP", 2), // Pound Sterling
    ("GEL", 2), // Lari
    ("GHS", 2), // Ghana Cedi
    ("GIP", 2), // Gibraltar Pound
    ("GMD", 2), // Dalasi
    ("GNF", 0), // Guinean Franc
    ("GTQ", 2), // Quetzal
    ("GYD", 2), // Guyana Dollar
    ("HKD", 2), // Hong Kong Dollar
    ("HNL", 2), // Lempira
    ("HTG", 2), // Gourde
    ("HUF", 2), // Forint
    ("IDR", 2), // Rupiah
    ("ILS", 2), // New Israeli Sheqel
    ("INR", 2), // Indian Rupee
    ("IQD", 3), // Iraqi Dinar
    ("IRR", 2), // Iranian Rial
    ("ISK", 0), // Iceland Krona
    ("JMD", 2), // Jamaican Dollar
    ("JOD", 3), // Jordanian Dinar
    ("JPY", 0), // Yen
    ("KES", 2), // Kenyan Shilling
    ("KGS", 2), // Som
    ("KHR", 2), // Riel
    ("KMF", 0), // Comorian Franc
    ("KPW", 2), // North Korean Won
    ("KRW", 0), // Won
    ("KWD", 3), // Kuwaiti Dinar
    ("KYD", 2), // Cayman Islands Dollar
    ("KZT", 2), // Tenge
    ("LAK", 2), // Lao Kip
    ("LBP", 2), // Lebanese Pound
    ("LKR", 2), // Sri Lanka Rupee
    ("LRD", 2), // Liberian Dollar
    ("LSL", 2), // Loti
    ("LYD", 3), // Libyan Dinar
    ("MAD", 2), // Moroccan Dirham
    ("MDL", 2), // Moldovan Leu
    ("MGA", 2), // Malagasy Ariary
    ("MKD", 2), // Denar
    ("MMK", 2), // Kyat
    ("MNT", 2), // Tugrik
    ("MOP", 2), // Pataca
    ("MRU", 2), // Ouguiya
    ("MUR", 2), // Mauritius Rupee
    ("MVR", 2), // Rufiyaa
    ("MWK", 2), // Malawi Kwacha
    ("MXN", 2), // Mexican Peso
    ("MXV", 2), // Mexican Unidad de Inversion (UDI)
    ("MYR", 2), // Malaysian Ringgit
    ("MZN", 2), // Mozambique Metical
    ("NAD", 2), // Namibia Dollar
    ("NGN", 2), // Naira
    ("NIO", 2), // Cordoba Oro
    ("NOK", 2), // Norwegian Krone
    ("NPR", 2), // Nepalese Rupee
    ("NZD", 2), // New Zealand Dollar
    ("OMR", 3), // Rial Omani
    ("PAB", 2), // Balboa
    ("PEN", 2), // Sol
    ("PGK", 2), // Kina
    ("PHP", 2), // Philippine Peso
    ("PKR", 2), // Pakistan Rupee
    ("PLN", 2), // Zloty
    ("PYG", 0), // Guarani
    ("QAR", 2), // Qatari Rial
    ("RON", 2), // Romanian Leu
    ("RSD", 2), // Serbian Dinar
    ("RUB", 2), // Russian Ruble
    ("RWF", 0), // Rwanda Franc
    ("SAR", 2), // Saudi Riyal
    ("SBD", 2), // Solomon Islands Dollar
    ("SCR", 2), // Seychelles Rupee
    ("SDG", 2), // Sudanese Pound
    ("SEK", 2), // Swedish Krona
    ("SGD", 2), // Singapore Dollar
    ("SHP", 2), // Saint Helena Pound
    ("SLE", 2), // Leone
    ("SOS", 2), // Somali Shilling
    ("SRD", 2), // Surinam Dollar
    ("SSP", 2), // South Sudanese Pound
    ("STN", 2), // Dobra
    ("SVC", 2), // El Salvador Colon
    ("SYP", 2), // Syrian Pound
    ("SZL", 2), // Lilangeni
    ("THB", 2), // Baht
    ("TJS", 2), // Somoni
    ("TMT", 2), // Turkmenistan New Manat
    ("TND", 3), // Tunisian Dinar
    ("TOP", 2), // Pa’anga
    ("TRY", 2), // Turkish Lira
    ("TTD", 2), // Trinidad and Tobago Dollar
    ("TWD", 2), // New Taiwan Dollar
    ("TZS", 2), // Tanzanian Shilling
    ("UAH", 2), // Hryvnia
    ("UGX", 0), // Uganda Shilling
    ("USD", 2), // US Dollar
    ("USN", 2), // US Dollar (Next day)
    ("UYI", 0), // Uruguay Peso en Unidades Indexadas (UI)
    ("UYU", 2), // Peso Uruguayo
    ("UYW", 4), // Unidad Previsional
    ("UZS", 2), // Uzbekistan Sum
    ("VED", 2), // Bolívar Soberano
    ("VES", 2), // Bolívar Soberano
    ("VND", 0), // Dong
    ("VUV", 0), // Vatu
    ("WST", 2), // Tala
    ("XAD", 2), // Arab Accounting Dinar
    ("XAF", 0), // CFA Franc BEAC
    ("XCD", 2), // East Caribbean Dollar
    ("XCG", 2), // Caribbean Guilder
    ("XOF", 0), // CFA Franc BCEAO
    ("XPF", 0), // CFP Franc
    ("YER", 2), // Yemeni Rial
    ("ZAR", 2), // Rand
    ("ZMW", 2), // Zambian Kwacha
    ("ZWG", 2), // Zimbabwe Gold
];

/// Active ISO 4217 codes whose minor unit is "N.A.": units of account,
/// precious metals and the testing/no-currency codes. They are valid codes
/// but cannot be rounded to a minor unit, hence a distinct error.
pub const CODES_WITHOUT_MINOR_UNIT: [&str; 13] = [
    "XAG", // Silver
    "XAU", // Gold
    "XBA", // Bond Markets Unit European Composite Unit (EURCO)
    "XBB", // Bond Markets Unit European Monetary Unit (E.M.U.-6)
    "XBC", // Bond Markets Unit European Unit of Account 9 (E.U.A.-9)
    "XBD", // Bond Markets Unit European Unit of Account 17 (E.U.A.-17)
    "XDR", // SDR (Special Drawing Right)
    "XPD", // Palladium
    "XPT", // Platinum
    "XSU", // Sucre
    "XTS", // Codes specifically reserved for testing purposes
    "XUA", // ADB Unit of Account
    "XXX", // The codes assigned for transactions where no currency is involved
];

/// Width of the length prefixes in [`idempotency_key`]: the part count and
/// each part's byte length are written as big-endian `u64` (the version as a
/// big-endian `u32`).
/// Fixed widths (rather than, say, decimal strings with separators) are what
/// make the encoding unambiguous and easy to reproduce in other languages.
const IDEMPOTENCY_LEN_PREFIX_BYTES: usize = std::mem::size_of::<u64>();

/// Errors of the money module. [`MoneyError::code`] gives a stable
/// `snake_case` identifier for logs, metrics and dead-letter records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// The code is not an active ISO 4217 alphabetic code (this includes
    /// lowercase spellings and withdrawn codes).
    #[error("unknown currency code {0:?}: not an active ISO 4217 alphabetic code")]
    UnknownCurrency(String),
    /// The code is an active ISO 4217 code without a minor unit (e.g. `XAU`).
    #[error("currency {0} has no minor unit in ISO 4217 and cannot be posted as money")]
    NoMinorUnit(String),
    /// The text is not one of the rounding mode names.
    #[error("unknown rounding mode {0:?}: expected one of half_even, half_up, half_down, up, down, ceiling, floor")]
    UnknownRoundingMode(String),
    /// Summing the amounts exceeded the range of [`Decimal`].
    #[error("amount overflow: the sum of the amounts does not fit in a decimal")]
    AmountOverflow,
}

impl MoneyError {
    /// Stable machine-readable identifier of the error kind.
    pub const fn code(&self) -> &'static str {
        match self {
            MoneyError::UnknownCurrency(_) => reasons::UNKNOWN_CURRENCY,
            MoneyError::NoMinorUnit(_) => reasons::NO_MINOR_UNIT,
            MoneyError::UnknownRoundingMode(_) => reasons::UNKNOWN_ROUNDING_MODE,
            MoneyError::AmountOverflow => reasons::AMOUNT_OVERFLOW,
        }
    }
}

/// The codes of [`MoneyError`] (see [`crate::reason`]).
pub mod reasons {
    crate::reason_codes! {
        UNKNOWN_CURRENCY => "unknown_currency",
            "A currency code is not an active ISO 4217 alphabetic code.";
        NO_MINOR_UNIT => "no_minor_unit",
            "A currency has no minor unit in ISO 4217 (e.g. XAU) and cannot be posted as money.";
        UNKNOWN_ROUNDING_MODE => "unknown_rounding_mode",
            "A rounding mode name is not one of half_even, half_up, half_down, up, down, ceiling, floor.";
        AMOUNT_OVERFLOW => "amount_overflow",
            "An amount or a sum of amounts does not fit in a decimal.";
        UNBALANCED_JOURNAL_ENTRY => "unbalanced_journal_entry",
            "Fatal, never dead-lettered: a journal entry's debits and credits differ (a bug: the stage that made it stops).";
    }

    /// One error of each kind, for tests that check codes against tables.
    #[cfg(test)]
    pub(crate) fn one_of_each() -> Vec<super::MoneyError> {
        use super::MoneyError as E;
        let all = vec![
            E::UnknownCurrency("x".into()),
            E::NoMinorUnit("XAU".into()),
            E::UnknownRoundingMode("x".into()),
            E::AmountOverflow,
        ];
        // A new kind fails to compile here: add it to the list above.
        for e in &all {
            match e {
                E::UnknownCurrency(_)
                | E::NoMinorUnit(_)
                | E::UnknownRoundingMode(_)
                | E::AmountOverflow => {}
            }
        }
        all
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn every_code_is_in_the_table() {
            for e in super::one_of_each() {
                assert!(super::CODES.contains(&e.code()), "{}", e.code());
            }
        }
    }
}

/// How an amount is brought to a whole number of minor units.
///
/// The `half_*` modes only differ when the amount lies exactly halfway
/// between two minor units; the other four are directed and move every
/// inexact amount. "Half up" follows the commercial meaning (ties away from
/// zero, so `-2.5` becomes `-3`), not "ties toward positive infinity".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundingMode {
    /// Ties to the even neighbour (banker's rounding): `2.5 -> 2`, `3.5 -> 4`.
    #[default]
    HalfEven,
    /// Ties away from zero: `2.5 -> 3`, `-2.5 -> -3`.
    HalfUp,
    /// Ties toward zero: `2.5 -> 2`, `-2.5 -> -2`.
    HalfDown,
    /// Always away from zero: `2.1 -> 3`, `-2.1 -> -3`.
    Up,
    /// Always toward zero (truncation): `2.9 -> 2`, `-2.9 -> -2`.
    Down,
    /// Always toward positive infinity: `2.1 -> 3`, `-2.9 -> -2`.
    Ceiling,
    /// Always toward negative infinity: `2.9 -> 2`, `-2.1 -> -3`.
    Floor,
}

impl RoundingMode {
    /// All modes, in declaration order.
    pub const ALL: [RoundingMode; 7] = [
        RoundingMode::HalfEven,
        RoundingMode::HalfUp,
        RoundingMode::HalfDown,
        RoundingMode::Up,
        RoundingMode::Down,
        RoundingMode::Ceiling,
        RoundingMode::Floor,
    ];

    /// The `rust_decimal` strategy implementing this mode.
    pub const fn strategy(self) -> RoundingStrategy {
        match self {
            RoundingMode::HalfEven => RoundingStrategy::MidpointNearestEven,
            RoundingMode::HalfUp => RoundingStrategy::MidpointAwayFromZero,
            RoundingMode::HalfDown => RoundingStrategy::MidpointTowardZero,
            RoundingMode::Up => RoundingStrategy::AwayFromZero,
            RoundingMode::Down => RoundingStrategy::ToZero,
            RoundingMode::Ceiling => RoundingStrategy::ToPositiveInfinity,
            RoundingMode::Floor => RoundingStrategy::ToNegativeInfinity,
        }
    }

    /// The serialised (`snake_case`) name, identical to the serde form.
    pub const fn as_str(self) -> &'static str {
        match self {
            RoundingMode::HalfEven => "half_even",
            RoundingMode::HalfUp => "half_up",
            RoundingMode::HalfDown => "half_down",
            RoundingMode::Up => "up",
            RoundingMode::Down => "down",
            RoundingMode::Ceiling => "ceiling",
            RoundingMode::Floor => "floor",
        }
    }
}

impl From<RoundingMode> for RoundingStrategy {
    fn from(mode: RoundingMode) -> Self {
        mode.strategy()
    }
}

impl fmt::Display for RoundingMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoundingMode {
    type Err = MoneyError;

    /// Accepts exactly the serde names (case-sensitive), so a mode written in
    /// a config file and one given on the command line mean the same thing.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RoundingMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == s)
            .ok_or_else(|| MoneyError::UnknownRoundingMode(s.to_owned()))
    }
}

/// The number of fractional digits of `code`'s minor unit (USD 2, JPY 0,
/// BHD 3, CLF 4).
///
/// `code` must be an active ISO 4217 alphabetic code spelled exactly, in
/// uppercase; `"usd"`, `" USD"` and withdrawn codes are
/// [`MoneyError::UnknownCurrency`]. Active codes without a minor unit (e.g.
/// `XAU`) are [`MoneyError::NoMinorUnit`].
pub fn minor_unit_exponent(code: &str) -> Result<u32, MoneyError> {
    if let Ok(index) = MINOR_UNITS.binary_search_by(|(c, _)| (*c).cmp(code)) {
        if let Some((_, exponent)) = MINOR_UNITS.get(index) {
            return Ok(*exponent);
        }
    }
    if CODES_WITHOUT_MINOR_UNIT.binary_search(&code).is_ok() {
        return Err(MoneyError::NoMinorUnit(code.to_owned()));
    }
    Err(MoneyError::UnknownCurrency(code.to_owned()))
}

/// Rounds `amount` to `exponent` fractional digits with `mode`, returning a
/// value whose scale is exactly `exponent` and which is never negative zero.
///
/// This is the currency-independent core of [`round_to_minor`], for callers
/// that already resolved the exponent.
pub fn round_to_exponent(amount: Decimal, exponent: u32, mode: RoundingMode) -> Decimal {
    let mut rounded = amount.round_dp_with_strategy(exponent, mode.strategy());
    // round_dp leaves amounts with fewer digits untouched (1.5 stays 1.5);
    // ledgers and golden files want the currency's fixed scale (1.50). For
    // amounts too large to carry that scale, rescale keeps the largest
    // representable scale, which never changes the value.
    rounded.rescale(exponent);
    // "-0.00" is a valid Decimal but a confusing posting; zero has one sign.
    if rounded.is_zero() {
        rounded.set_sign_positive(true);
    }
    rounded
}

/// Whether `amount` is a whole number of minor units (at most `exponent`
/// decimals once trailing zeros are dropped: 5.10 fits 2, 5.105 does not).
pub fn fits_minor_unit(amount: Decimal, exponent: u32) -> bool {
    amount.normalize().scale() <= exponent
}

/// Rounds `amount` to a whole number of minor units of `currency`.
///
/// The result has exactly the currency's scale and is never negative zero.
/// Rounding is idempotent: rounding a rounded amount again returns it.
///
/// # Errors
/// [`MoneyError::UnknownCurrency`] / [`MoneyError::NoMinorUnit`] as in
/// [`minor_unit_exponent`].
pub fn round_to_minor(
    amount: Decimal,
    currency: &str,
    mode: RoundingMode,
) -> Result<Decimal, MoneyError> {
    let exponent = minor_unit_exponent(currency)?;
    Ok(round_to_exponent(amount, exponent, mode))
}

/// Rounds each of `amounts` to `currency`'s minor unit and returns the
/// rounded amounts (same order and length) together with the **rounding
/// difference**
///
/// ```text
/// difference = round(amounts[0] + amounts[1] + ...) - (rounded[0] + rounded[1] + ...)
/// ```
///
/// where every rounding uses `mode`. Hence
/// `sum(rounded) + difference == round_to_minor(sum(amounts))` always holds:
/// a caller that posts the rounded lines plus one extra "rounding" line of
/// `difference` (skipped when it is zero) posts exactly the rounded total of
/// the raw amounts. The difference is itself a whole number of minor units
/// with the currency's scale; it is positive when the rounded lines fall
/// short of the rounded total and negative when they exceed it. An empty
/// slice gives no lines and a zero difference.
///
/// # Errors
/// [`MoneyError::UnknownCurrency`] / [`MoneyError::NoMinorUnit`] for the
/// currency, [`MoneyError::AmountOverflow`] if a sum leaves the range of
/// [`Decimal`].
pub fn allocate_rounded(
    amounts: &[Decimal],
    currency: &str,
    mode: RoundingMode,
) -> Result<(Vec<Decimal>, Decimal), MoneyError> {
    let exponent = minor_unit_exponent(currency)?;
    let mut raw_total = Decimal::ZERO;
    let mut rounded_total = Decimal::ZERO;
    let mut rounded = Vec::with_capacity(amounts.len());
    for amount in amounts {
        raw_total = raw_total
            .checked_add(*amount)
            .ok_or(MoneyError::AmountOverflow)?;
        let line = round_to_exponent(*amount, exponent, mode);
        rounded_total = rounded_total
            .checked_add(line)
            .ok_or(MoneyError::AmountOverflow)?;
        rounded.push(line);
    }
    let difference = round_to_exponent(raw_total, exponent, mode)
        .checked_sub(rounded_total)
        .ok_or(MoneyError::AmountOverflow)?;
    // Both operands are whole minor units, so the subtraction is exact;
    // normalise scale and sign the same way as every other returned amount.
    Ok((rounded, round_to_exponent(difference, exponent, mode)))
}

/// A deterministic idempotency key: lowercase hex SHA-256 (64 characters) of
///
/// ```text
/// u32_be(version) || u64_be(parts.len()) || for each part: u64_be(part.len()) || part (UTF-8 bytes)
/// ```
///
/// Every part is prefixed by its byte length, so no concatenation of
/// different parts can produce the same byte stream (`["ab", "c"]` and
/// `["a", "bc"]` differ, as do `[]` and `[""]`). Bump `version` whenever the
/// meaning of the parts changes, so new keys can never collide with keys the
/// ERP already stored under the old meaning. The function is a pure
/// function of its inputs and stable across releases and platforms.
pub fn idempotency_key(parts: &[&str], version: u32) -> String {
    let mut hasher = Sha256::new();
    hasher.update(version.to_be_bytes());
    hasher.update(length_prefix(parts.len()));
    for part in parts {
        hasher.update(length_prefix(part.len()));
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Fixed-width big-endian length; `usize` always fits in `u64` on supported
/// targets, and the saturating fallback keeps this panic-free regardless.
fn length_prefix(len: usize) -> [u8; IDEMPOTENCY_LEN_PREFIX_BYTES] {
    u64::try_from(len).unwrap_or(u64::MAX).to_be_bytes()
}

/// `Option<Decimal>` as an optional JSON string: absent or `null` is
/// `None`. Unlike `rust_decimal::serde::str_option`, `""` is refused
/// rather than read as absent, and a JSON number is refused.
pub mod optional_decimal_str {
    use rust_decimal::Decimal;
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(transparent)]
    struct DecimalString(#[serde(with = "rust_decimal::serde::str")] Decimal);

    pub fn serialize<S: Serializer>(
        value: &Option<Decimal>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        rust_decimal::serde::str_option::serialize(value, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Decimal>, D::Error> {
        Ok(Option::<DecimalString>::deserialize(deserializer)?.map(|DecimalString(value)| value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rust_decimal_macros::dec;

    #[test]
    fn tables_are_sorted_unique_well_formed_and_disjoint() {
        let well_formed = |code: &str| {
            code.len() == CURRENCY_CODE_LEN && code.bytes().all(|b| b.is_ascii_uppercase())
        };
        for pair in MINOR_UNITS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} !< {}", pair[0].0, pair[1].0);
        }
        for pair in CODES_WITHOUT_MINOR_UNIT.windows(2) {
            assert!(pair[0] < pair[1], "{} !< {}", pair[0], pair[1]);
        }
        for (code, exponent) in MINOR_UNITS {
            assert!(well_formed(code), "{code}");
            assert!(exponent <= 4, "{code}");
            assert_eq!(minor_unit_exponent(code), Ok(exponent));
            assert!(!CODES_WITHOUT_MINOR_UNIT.contains(&code), "{code}");
        }
        for code in CODES_WITHOUT_MINOR_UNIT {
            assert!(well_formed(code), "{code}");
        }
    }

    #[test]
    fn known_exponents() {
        let expected = [
            ("USD", 2),
            ("EUR", 2),
            ("GBP", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("CLP", 0),
            ("ISK", 0),
            ("BHD", 3),
            ("KWD", 3),
            ("JOD", 3),
            ("OMR", 3),
            ("TND", 3),
            ("LYD", 3),
            ("IQD", 3),
            ("CLF", 4),
            ("UYW", 4),
            ("XCG", 2),
            ("ZWG", 2),
            ("SLE", 2),
            ("VND", 0),
            ("XOF", 0),
        ];
        for (code, exponent) in expected {
            assert_eq!(minor_unit_exponent(code), Ok(exponent), "{code}");
        }
    }

    #[test]
    fn unknown_currencies_are_rejected() {
        for code in [
            "", "usd", "Usd", "US", "USDX", " USD", "USD ", "ABC", "HRK", "BGN", "ANG", "ZWL", "€",
        ] {
            let err = minor_unit_exponent(code).expect_err(code);
            assert_eq!(err, MoneyError::UnknownCurrency(code.to_owned()));
            assert_eq!(err.code(), "unknown_currency");
            assert_eq!(
                round_to_minor(dec!(1), code, RoundingMode::HalfEven),
                Err(MoneyError::UnknownCurrency(code.to_owned()))
            );
        }
    }

    #[test]
    fn codes_without_minor_unit_get_their_own_error() {
        for code in ["XAU", "XDR", "XXX", "XTS"] {
            let err = minor_unit_exponent(code).expect_err(code);
            assert_eq!(err, MoneyError::NoMinorUnit(code.to_owned()));
            assert_eq!(err.code(), "no_minor_unit");
        }
    }

    /// USD amounts probing ties (x.xx5), near-ties and negatives, and the
    /// expected result for every mode, in `RoundingMode::ALL` order:
    /// half_even, half_up, half_down, up, down, ceiling, floor.
    const USD_CASES: [(&str, [&str; 7]); 8] = [
        (
            "2.345",
            ["2.34", "2.35", "2.34", "2.35", "2.34", "2.35", "2.34"],
        ),
        (
            "2.355",
            ["2.36", "2.36", "2.35", "2.36", "2.35", "2.36", "2.35"],
        ),
        (
            "-2.345",
            [
                "-2.34", "-2.35", "-2.34", "-2.35", "-2.34", "-2.34", "-2.35",
            ],
        ),
        (
            "-2.355",
            [
                "-2.36", "-2.36", "-2.35", "-2.36", "-2.35", "-2.35", "-2.36",
            ],
        ),
        (
            "2.341",
            ["2.34", "2.34", "2.34", "2.35", "2.34", "2.35", "2.34"],
        ),
        (
            "-2.349",
            [
                "-2.35", "-2.35", "-2.35", "-2.35", "-2.34", "-2.34", "-2.35",
            ],
        ),
        (
            "2.3450001",
            ["2.35", "2.35", "2.35", "2.35", "2.34", "2.35", "2.34"],
        ),
        (
            "-0.005",
            ["0.00", "-0.01", "0.00", "-0.01", "0.00", "0.00", "-0.01"],
        ),
    ];

    #[test]
    fn usd_rounding_in_every_mode() {
        for (amount, expected) in USD_CASES {
            let amount: Decimal = amount.parse().expect("amount");
            for (mode, want) in RoundingMode::ALL.into_iter().zip(expected) {
                let got = round_to_minor(amount, "USD", mode).expect("USD");
                // Compare text so the scale (always 2) is checked too.
                assert_eq!(got.to_string(), want, "{amount} {mode}");
            }
        }
    }

    #[test]
    fn jpy_rounding_at_half_yen() {
        // (amount, half_even, half_up, half_down, up, down, ceiling, floor)
        let cases = [
            ("2.5", ["2", "3", "2", "3", "2", "3", "2"]),
            ("3.5", ["4", "4", "3", "4", "3", "4", "3"]),
            ("-2.5", ["-2", "-3", "-2", "-3", "-2", "-2", "-3"]),
            ("-0.4", ["0", "0", "0", "-1", "0", "0", "-1"]),
        ];
        for (amount, expected) in cases {
            let amount: Decimal = amount.parse().expect("amount");
            for (mode, want) in RoundingMode::ALL.into_iter().zip(expected) {
                let got = round_to_minor(amount, "JPY", mode).expect("JPY");
                assert_eq!(got.to_string(), want, "{amount} {mode}");
            }
        }
    }

    #[test]
    fn bhd_and_clf_rounding() {
        let round = |amount, currency, mode| round_to_minor(amount, currency, mode).expect("known");
        assert_eq!(
            round(dec!(1.2345), "BHD", RoundingMode::HalfEven).to_string(),
            "1.234"
        );
        assert_eq!(
            round(dec!(1.2355), "BHD", RoundingMode::HalfEven).to_string(),
            "1.236"
        );
        assert_eq!(
            round(dec!(1.2345), "BHD", RoundingMode::HalfUp).to_string(),
            "1.235"
        );
        assert_eq!(
            round(dec!(-1.2345), "BHD", RoundingMode::HalfUp).to_string(),
            "-1.235"
        );
        assert_eq!(
            round(dec!(1.2345), "BHD", RoundingMode::HalfDown).to_string(),
            "1.234"
        );
        assert_eq!(
            round(dec!(1.2341), "BHD", RoundingMode::Ceiling).to_string(),
            "1.235"
        );
        assert_eq!(
            round(dec!(-1.2349), "BHD", RoundingMode::Floor).to_string(),
            "-1.235"
        );
        assert_eq!(
            round(dec!(0.12345), "CLF", RoundingMode::HalfEven).to_string(),
            "0.1234"
        );
        assert_eq!(
            round(dec!(0.12355), "CLF", RoundingMode::HalfEven).to_string(),
            "0.1236"
        );
    }

    #[test]
    fn results_carry_the_currency_scale_and_no_negative_zero() {
        let mode = RoundingMode::HalfEven;
        assert_eq!(
            round_to_minor(dec!(1.5), "USD", mode)
                .expect("USD")
                .to_string(),
            "1.50"
        );
        assert_eq!(
            round_to_minor(dec!(7), "BHD", mode)
                .expect("BHD")
                .to_string(),
            "7.000"
        );
        assert_eq!(
            round_to_minor(dec!(100.00), "JPY", mode)
                .expect("JPY")
                .to_string(),
            "100"
        );
        let zero = round_to_minor(dec!(-0.001), "USD", mode).expect("USD");
        assert_eq!(zero.to_string(), "0.00");
        assert!(zero.is_sign_positive());
        // Very large amounts keep their value even where the scale cannot grow.
        let max = round_to_minor(Decimal::MAX, "USD", mode).expect("USD");
        assert_eq!(max, Decimal::MAX);
    }

    #[test]
    fn rounding_mode_serde_names_and_default() {
        assert_eq!(RoundingMode::default(), RoundingMode::HalfEven);
        let names = [
            "half_even",
            "half_up",
            "half_down",
            "up",
            "down",
            "ceiling",
            "floor",
        ];
        for (mode, name) in RoundingMode::ALL.into_iter().zip(names) {
            let json = serde_json::to_string(&mode).expect("serialize");
            assert_eq!(json, format!("\"{name}\""));
            let back: RoundingMode = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, mode);
            assert_eq!(mode.as_str(), name);
            assert_eq!(mode.to_string(), name);
            assert_eq!(name.parse::<RoundingMode>(), Ok(mode));
            assert_eq!(RoundingStrategy::from(mode), mode.strategy());
        }
        assert!(serde_json::from_str::<RoundingMode>("\"HALF_EVEN\"").is_err());
        assert!(serde_json::from_str::<RoundingMode>("\"bankers\"").is_err());
        let err = "HalfEven"
            .parse::<RoundingMode>()
            .expect_err("case-sensitive");
        assert_eq!(err.code(), "unknown_rounding_mode");
    }

    #[test]
    fn allocate_reports_rounding_difference() {
        // Thirds: each line rounds down, the total rounds to 1.00.
        let (lines, diff) = allocate_rounded(
            &[dec!(0.333), dec!(0.333), dec!(0.334)],
            "USD",
            RoundingMode::HalfEven,
        )
        .expect("USD");
        assert_eq!(lines, [dec!(0.33), dec!(0.33), dec!(0.33)]);
        assert_eq!(diff.to_string(), "0.01");

        // Three half-cent lines: banker's rounding sends each to 0.00 but the
        // 0.015 total to 0.02.
        let (lines, diff) =
            allocate_rounded(&[dec!(0.005); 3], "USD", RoundingMode::HalfEven).expect("USD");
        assert_eq!(lines, [dec!(0.00); 3]);
        assert_eq!(diff, dec!(0.02));

        // Lines that round up overshoot: the difference is negative.
        let (lines, diff) = allocate_rounded(
            &[dec!(0.5), dec!(0.5), dec!(0.5)],
            "JPY",
            RoundingMode::HalfUp,
        )
        .expect("JPY");
        assert_eq!(lines, [dec!(1), dec!(1), dec!(1)]);
        assert_eq!(diff, dec!(-1));

        // Negative lines (credits).
        let (lines, diff) =
            allocate_rounded(&[dec!(-1.0005), dec!(-1.0005)], "BHD", RoundingMode::HalfUp)
                .expect("BHD");
        assert_eq!(lines, [dec!(-1.001), dec!(-1.001)]);
        assert_eq!(diff.to_string(), "0.001");

        // Exact amounts need no rounding line; the zero has the currency scale.
        let (_, diff) =
            allocate_rounded(&[dec!(1.25), dec!(2.5)], "USD", RoundingMode::HalfEven).expect("USD");
        assert_eq!(diff.to_string(), "0.00");
    }

    #[test]
    fn allocate_edge_cases() {
        let (lines, diff) = allocate_rounded(&[], "USD", RoundingMode::HalfEven).expect("USD");
        assert!(lines.is_empty());
        assert!(diff.is_zero());
        assert_eq!(
            allocate_rounded(&[dec!(1)], "usd", RoundingMode::HalfEven),
            Err(MoneyError::UnknownCurrency("usd".to_owned()))
        );
        let err = allocate_rounded(&[Decimal::MAX, Decimal::MAX], "USD", RoundingMode::HalfEven)
            .expect_err("overflow");
        assert_eq!(err, MoneyError::AmountOverflow);
        assert_eq!(err.code(), "amount_overflow");
    }

    #[test]
    fn idempotency_key_is_pinned() {
        // Computed once from the documented encoding (and cross-checked with
        // an independent implementation); it must never change, or documents
        // already posted to the ERP would be posted again.
        const PINNED_KEY: &str = "528c65f5d23df990a4098e40f25dc0332f30da42a9a8985a20c6e17b31a25368";
        assert_eq!(
            idempotency_key(&["tenant-1", "sub-42", "2026-02-28", "base_fee"], 1),
            PINNED_KEY
        );
    }

    #[test]
    fn idempotency_key_matches_documented_encoding() {
        // u32_be(version) || u64_be(count) || (u64_be(len) || bytes)*
        let mut encoded = Vec::new();
        encoded.extend_from_slice(&7u32.to_be_bytes());
        encoded.extend_from_slice(&2u64.to_be_bytes());
        encoded.extend_from_slice(&2u64.to_be_bytes());
        encoded.extend_from_slice(b"ab");
        // Lengths count UTF-8 bytes, not characters: "é" is 2 bytes.
        encoded.extend_from_slice(&2u64.to_be_bytes());
        encoded.extend_from_slice("é".as_bytes());
        let expected = hex::encode(Sha256::digest(&encoded));
        assert_eq!(idempotency_key(&["ab", "é"], 7), expected);
    }

    #[test]
    fn idempotency_key_is_unambiguous() {
        let keys = [
            idempotency_key(&["ab", "c"], 1),
            idempotency_key(&["a", "bc"], 1),
            idempotency_key(&["abc"], 1),
            idempotency_key(&["a", "b", "c"], 1),
            idempotency_key(&["ab", "c"], 2),
            idempotency_key(&[], 1),
            idempotency_key(&[""], 1),
            idempotency_key(&["", ""], 1),
        ];
        for (i, a) in keys.iter().enumerate() {
            assert_eq!(a.len(), 64);
            assert!(a
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(
            idempotency_key(&["ab", "c"], 1),
            idempotency_key(&["ab", "c"], 1)
        );
    }

    fn currency() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(&["USD", "JPY", "BHD", "CLF", "EUR", "KWD"][..])
    }

    /// Arbitrary decimals with up to 12 fractional digits.
    fn amount() -> impl Strategy<Value = Decimal> {
        (any::<i64>(), 0u32..=12).prop_map(|(mantissa, scale)| Decimal::new(mantissa, scale))
    }

    fn mode() -> impl Strategy<Value = RoundingMode> {
        proptest::sample::select(&RoundingMode::ALL[..])
    }

    proptest! {
        #[test]
        fn half_modes_stay_within_half_a_minor_unit(
            x in amount(),
            currency in currency(),
            mode in proptest::sample::select(
                &[RoundingMode::HalfEven, RoundingMode::HalfUp, RoundingMode::HalfDown][..]
            ),
        ) {
            let exponent = minor_unit_exponent(currency).expect("known");
            let half_unit = Decimal::new(5, exponent + 1);
            let rounded = round_to_minor(x, currency, mode).expect("known");
            prop_assert!((rounded - x).abs() <= half_unit, "{} -> {}", x, rounded);
            prop_assert_eq!(rounded.scale(), exponent);
        }

        #[test]
        fn directed_modes_stay_within_one_minor_unit_on_their_side(
            x in amount(),
            currency in currency(),
            mode in mode(),
        ) {
            let exponent = minor_unit_exponent(currency).expect("known");
            let unit = Decimal::new(1, exponent);
            let r = round_to_minor(x, currency, mode).expect("known");
            prop_assert!((r - x).abs() < unit);
            match mode {
                RoundingMode::Ceiling => prop_assert!(r >= x),
                RoundingMode::Floor => prop_assert!(r <= x),
                RoundingMode::Up => prop_assert!(r.abs() >= x.abs()),
                RoundingMode::Down => prop_assert!(r.abs() <= x.abs()),
                _ => {}
            }
        }

        #[test]
        fn round_to_minor_is_idempotent(x in amount(), currency in currency(), mode in mode()) {
            let once = round_to_minor(x, currency, mode).expect("known");
            let twice = round_to_minor(once, currency, mode).expect("known");
            prop_assert_eq!(once, twice);
            prop_assert_eq!(once.to_string(), twice.to_string());
        }

        #[test]
        fn allocation_lines_plus_difference_equal_rounded_total(
            amounts in proptest::collection::vec(
                (-1_000_000_000i64..1_000_000_000, 0u32..=6)
                    .prop_map(|(m, s)| Decimal::new(m, s)),
                0..20,
            ),
            currency in currency(),
            mode in mode(),
        ) {
            let (lines, diff) = allocate_rounded(&amounts, currency, mode).expect("known");
            prop_assert_eq!(lines.len(), amounts.len());
            let total: Decimal = amounts.iter().sum();
            let posted: Decimal = lines.iter().sum::<Decimal>() + diff;
            prop_assert_eq!(posted, round_to_minor(total, currency, mode).expect("known"));
            prop_assert_eq!(round_to_minor(diff, currency, mode).expect("known"), diff);
        }
    }
}
