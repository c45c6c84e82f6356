package dev.meterline.kstreams;

import java.math.BigDecimal;
import java.math.BigInteger;
import java.math.RoundingMode;
import java.util.HashMap;
import java.util.Map;
import java.util.regex.Pattern;

/**
 * Exact decimals with rust_decimal's semantics where they differ from
 * BigDecimal's, so amounts print with the same scale as meterline's:
 * an operand that is zero is returned unchanged by +/- (its scale is not
 * applied), a zero product is a plain 0, and a value must fit a 96-bit
 * mantissa with at most 28 fractional digits.
 */
final class Dec {
    private Dec() {}

    static final int MAX_SCALE = 28;
    static final BigInteger MAX_MANTISSA = BigInteger.ONE.shiftLeft(96).subtract(BigInteger.ONE);
    private static final int MAX_DIGITS = 29;

    /** Thrown for results meterline would refuse; {@code code} is meterline's reason code. */
    static final class DecimalException extends RuntimeException {
        final String code;
        DecimalException(String code, String message) {
            super(message);
            this.code = code;
        }
    }

    static BigDecimal add(BigDecimal a, BigDecimal b) {
        if (a.signum() == 0) return b;
        if (b.signum() == 0) return a;
        return check(a.add(b), Math.max(a.scale(), b.scale()));
    }

    static BigDecimal sub(BigDecimal a, BigDecimal b) {
        if (a.signum() == 0) return b.negate();
        if (b.signum() == 0) return a;
        return check(a.subtract(b), Math.max(a.scale(), b.scale()));
    }

    static BigDecimal mul(BigDecimal a, BigDecimal b) {
        if (a.signum() == 0 || b.signum() == 0) return BigDecimal.ZERO;
        return check(a.multiply(b), a.scale() + b.scale());
    }

    private static BigDecimal check(BigDecimal r, int scale) {
        if (scale > MAX_SCALE) {
            throw new DecimalException("precision_exceeded",
                "result needs more than 28 significant digits and would be rounded");
        }
        if (r.unscaledValue().abs().compareTo(MAX_MANTISSA) > 0) {
            throw new DecimalException(scale == 0 ? "arithmetic_overflow" : "precision_exceeded",
                "result does not fit a decimal");
        }
        return r;
    }

    /** Rounds to {@code exponent} fractional digits, half-even; always that scale. */
    static BigDecimal roundToExponent(BigDecimal a, int exponent) {
        return a.setScale(exponent, RoundingMode.HALF_EVEN);
    }

    /** ISO 4217 minor units, from meterline's src/money.rs MINOR_UNITS. */
    private static final Map<String, Integer> MINOR_UNITS = new HashMap<>();
    static {
        String table = ""
            + "AED2 AFN2 ALL2 AMD2 AOA2 ARS2 AUD2 AWG2 AZN2 BAM2 BBD2 BDT2 BHD3 BIF0 BMD2 BND2 BOB2 BOV2 BRL2 BSD2 "
            + "BTN2 BWP2 BYN2 BZD2 CAD2 CDF2 CHE2 CHF2 CHW2 CLF4 CLP0 CNY2 COP2 COU2 CRC2 CUP2 CVE2 CZK2 DJF0 DKK2 "
            + "DOP2 DZD2 EGP2 ERN2 ETB2 EUR2 FJD2 FKP2 GBP2 GEL2 GHS2 GIP2 GMD2 GNF0 GTQ2 GYD2 HKD2 HNL2 HTG2 HUF2 "
            + "IDR2 ILS2 INR2 IQD3 IRR2 ISK0 JMD2 JOD3 JPY0 KES2 KGS2 KHR2 KMF0 KPW2 KRW0 KWD3 KYD2 KZT2 LAK2 LBP2 "
            + "LKR2 LRD2 LSL2 LYD3 MAD2 MDL2 MGA2 MKD2 MMK2 MNT2 MOP2 MRU2 MUR2 MVR2 MWK2 MXN2 MXV2 MYR2 MZN2 NAD2 "
            + "NGN2 NIO2 NOK2 NPR2 NZD2 OMR3 PAB2 PEN2 PGK2 PHP2 PKR2 PLN2 PYG0 QAR2 RON2 RSD2 RUB2 RWF0 SAR2 SBD2 "
            + "SCR2 SDG2 SEK2 SGD2 SHP2 SLE2 SOS2 SRD2 SSP2 STN2 SVC2 SYP2 SZL2 THB2 TJS2 TMT2 TND3 TOP2 TRY2 TTD2 "
            + "TWD2 TZS2 UAH2 UGX0 USD2 USN2 UYI0 UYU2 UYW4 UZS2 VED2 VES2 VND0 VUV0 WST2 XAD2 XAF0 XCD2 XCG2 XOF0 "
            + "XPF0 YER2 ZAR2 ZMW2 ZWG2";
        for (String e : table.split(" ")) {
            MINOR_UNITS.put(e.substring(0, 3), e.charAt(3) - '0');
        }
    }

    static int minorUnitExponent(String currency) {
        Integer e = MINOR_UNITS.get(currency);
        if (e == null) {
            throw new DecimalException("unknown_currency", "unknown currency " + currency);
        }
        return e;
    }

    static BigDecimal roundToMinor(BigDecimal a, String currency) {
        return roundToExponent(a, minorUnitExponent(currency));
    }

    /** rust_decimal's Display: plain digits with the value's scale. */
    static String str(BigDecimal d) {
        return d.toPlainString();
    }

    // --- exact parsing (validate's parse_exact_decimal) ---------------------

    private static final Pattern NUMERIC = Pattern.compile("[+-]?(\\d+\\.?\\d*|\\.\\d+)([eE][+-]?\\d+)?");

    /** NotNumeric / NotFinite / OutOfRange as meterline's NumericError. */
    enum NumericError { NOT_NUMERIC, NOT_FINITE, OUT_OF_RANGE }

    static final class NumericException extends Exception {
        final NumericError error;
        NumericException(NumericError error) {
            super(error.name(), null, false, false);
            this.error = error;
        }
    }

    /** Parses numeric text exactly, keeping its scale (see rules.rs parse_exact_decimal). */
    static BigDecimal parseExact(String text) throws NumericException {
        String unsigned = text.startsWith("+") || text.startsWith("-") ? text.substring(1) : text;
        if (unsigned.equalsIgnoreCase("nan") || unsigned.equalsIgnoreCase("inf")
                || unsigned.equalsIgnoreCase("infinity")) {
            throw new NumericException(NumericError.NOT_FINITE);
        }
        if (!NUMERIC.matcher(text).matches()) {
            throw new NumericException(NumericError.NOT_NUMERIC);
        }
        BigDecimal raw;
        try {
            raw = new BigDecimal(text);
        } catch (NumberFormatException | ArithmeticException e) {
            throw new NumericException(NumericError.OUT_OF_RANGE);
        }
        return fit(raw);
    }

    /** An exact value brought into rust_decimal's range the way decimal_from_digits does. */
    static BigDecimal fit(BigDecimal raw) throws NumericException {
        if (raw.signum() == 0) {
            int scale = Math.max(0, Math.min(MAX_SCALE, raw.scale()));
            return BigDecimal.ZERO.setScale(scale);
        }
        BigInteger unscaled = raw.unscaledValue();
        int scale = raw.scale();
        // drop trailing zeros only as far as needed to fit
        while ((scale > MAX_SCALE || unscaled.abs().toString().length() > MAX_DIGITS) && scale > 0) {
            BigInteger[] qr = unscaled.divideAndRemainder(BigInteger.TEN);
            if (qr[1].signum() != 0) break;
            unscaled = qr[0];
            scale--;
        }
        if (scale < 0) {
            if (-(long) scale + unscaled.abs().toString().length() > MAX_DIGITS) {
                throw new NumericException(NumericError.OUT_OF_RANGE);
            }
            unscaled = unscaled.multiply(BigInteger.TEN.pow(-scale));
            scale = 0;
        }
        if (scale > MAX_SCALE || unscaled.abs().toString().length() > MAX_DIGITS
                || unscaled.abs().compareTo(MAX_MANTISSA) > 0) {
            throw new NumericException(NumericError.OUT_OF_RANGE);
        }
        return new BigDecimal(unscaled, scale);
    }
}
