//! Exact decimals as Parquet `DECIMAL(38, scale)` in a 16-byte
//! `FIXED_LEN_BYTE_ARRAY`: the unscaled value as a big-endian two's
//! complement integer. A [`Decimal`] fits when it can be written at the
//! column's scale without losing a digit and its unscaled value has at most
//! 38 digits; otherwise [`encode`] says so (the column gets NULL, the text
//! column keeps the value). Nothing is ever rounded and no float is involved.

use rust_decimal::Decimal;

use crate::config::EXPORT_DECIMAL_PRECISION;

/// Bytes of one decimal value.
pub const DECIMAL_BYTES: usize = 16;

/// 10^38: an unscaled value of precision 38 is strictly below it.
const PRECISION_LIMIT: i128 = 10_i128.pow(EXPORT_DECIMAL_PRECISION);

/// `d` at `scale`, as the column stores it; `None` when it does not fit
/// exactly (more fractional digits than `scale` that are not zeros, or more
/// than 38 digits in all).
pub fn encode(d: Decimal, scale: u32) -> Option<[u8; DECIMAL_BYTES]> {
    unscaled(d, scale).map(i128::to_be_bytes)
}

/// The unscaled integer of `d` at `scale`, if exact and within precision 38.
pub fn unscaled(d: Decimal, scale: u32) -> Option<i128> {
    let mut mantissa = d.mantissa();
    let own = d.scale();
    let value = if own <= scale {
        let factor = 10_i128.checked_pow(scale - own)?;
        mantissa.checked_mul(factor)?
    } else {
        // Fewer digits than the value carries: exact only when the digits
        // dropped are zeros.
        for _ in scale..own {
            if mantissa % 10 != 0 {
                return None;
            }
            mantissa /= 10;
        }
        mantissa
    };
    (value.unsigned_abs() < PRECISION_LIMIT.unsigned_abs()).then_some(value)
}

/// The value of a column's bytes at `scale`, when a [`Decimal`] can hold it
/// (tests, and readers of the export written in Rust).
pub fn decode(bytes: [u8; DECIMAL_BYTES], scale: u32) -> Option<Decimal> {
    let mut value = i128::from_be_bytes(bytes);
    let mut scale = scale;
    loop {
        if let Ok(d) = Decimal::try_from_i128_with_scale(value, scale) {
            return Some(d);
        }
        // Too many digits for a Decimal: drop fractional zeros, exactly.
        if scale == 0 || value % 10 != 0 {
            return None;
        }
        value /= 10;
        scale -= 1;
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn exact_values_round_trip() {
        for (text, scale) in [
            ("0", 20),
            ("5.00", 20),
            ("-5.00", 20),
            ("0.00000000000000000001", 20),
            ("-0.00000000000000000001", 20),
            ("123456789.12345678901234567891", 20),
            ("-123456789.12345678901234567891", 20),
            ("99999999999.999999999999999999", 18),
            ("999999999999999999", 20),
            ("1500", 0),
            ("0.0000000000000000000000000001", 28),
            ("-0.0000000000000000000000000001", 28),
            ("7.9228162514264337593543950335", 28),
            ("-79228162514264337593543950335", 0),
            ("-0.5", 38),
        ] {
            let d = dec(text);
            let bytes = encode(d, scale).unwrap_or_else(|| panic!("{text} at {scale}"));
            let back = decode(bytes, scale).unwrap();
            assert_eq!(back, d, "{text} at scale {scale}");
            // The column's unscaled integer is the digits at its scale.
            assert_eq!(
                i128::from_be_bytes(bytes),
                unscaled(d, scale).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn encoding_is_twos_complement_big_endian_at_the_column_scale() {
        assert_eq!(encode(dec("-1.5"), 2), Some((-150_i128).to_be_bytes()));
        assert_eq!(encode(dec("1.50"), 1), Some(15_i128.to_be_bytes()));
        let bytes = encode(dec("-0.01"), 2).unwrap();
        assert_eq!(bytes, [0xff; 16]);
    }

    #[test]
    fn a_value_that_does_not_fit_is_refused_not_rounded() {
        // 28 fractional digits into a scale-20 column.
        assert_eq!(encode(dec("0.0000000000000000000000000001"), 20), None);
        assert_eq!(encode(dec("1.000000000000000000001"), 20), None);
        // Trailing zeros beyond the scale are dropped, exactly.
        assert_eq!(
            encode(dec("1.0000000000000000000000000000"), 20),
            Some(10_i128.pow(20).to_be_bytes())
        );
        // 29 digits, 20 of them fractional: 49 > 38 digits.
        assert_eq!(encode(dec("79228162514264337593543950335"), 20), None);
        assert_eq!(encode(dec("-79228162514264337593543950335"), 20), None);
        // Exactly 38 digits at the column's scale fits, 39 does not.
        assert!(encode(dec("999999999999999999"), 20).is_some());
        assert_eq!(encode(dec("1000000000000000000"), 20), None);
        // At scale 38 only |x| < 1 fits.
        assert_eq!(encode(dec("1.5"), 38), None);
    }
}
