package dev.meterline.kstreams;

import com.fasterxml.jackson.annotation.JsonFormat;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.databind.DeserializationFeature;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.cfg.JsonNodeFeature;
import com.fasterxml.jackson.databind.node.JsonNodeFactory;
import java.math.BigDecimal;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.time.format.DateTimeParseException;

/** JSON: one shared mapper for the intermediate records, and serde_json-compatible writing for postings. */
final class Json {
    private Json() {}

    /**
     * Exact numbers (no float, trailing zeros kept), decimals written as
     * strings in plain notation, unknown fields ignored.
     */
    static final ObjectMapper MAPPER = new ObjectMapper();
    static {
        MAPPER.setNodeFactory(JsonNodeFactory.withExactBigDecimals(true));
        MAPPER.configure(JsonNodeFeature.STRIP_TRAILING_BIGDECIMAL_ZEROES, false);
        MAPPER.enable(DeserializationFeature.USE_BIG_DECIMAL_FOR_FLOATS);
        MAPPER.disable(DeserializationFeature.FAIL_ON_UNKNOWN_PROPERTIES);
        MAPPER.enable(DeserializationFeature.FAIL_ON_TRAILING_TOKENS);
        MAPPER.enable(JsonGenerator.Feature.WRITE_BIGDECIMAL_AS_PLAIN);
        MAPPER.configOverride(BigDecimal.class).setFormat(JsonFormat.Value.forShape(JsonFormat.Shape.STRING));
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    /** A JSON string literal exactly as serde_json writes it. */
    static StringBuilder str(StringBuilder sb, String s) {
        if (s == null) return sb.append("null");
        sb.append('"');
        for (int i = 0, n = s.length(); i < n; i++) {
            char c = s.charAt(i);
            switch (c) {
                case '"': sb.append("\\\""); break;
                case '\\': sb.append("\\\\"); break;
                case '\b': sb.append("\\b"); break;
                case '\t': sb.append("\\t"); break;
                case '\n': sb.append("\\n"); break;
                case '\f': sb.append("\\f"); break;
                case '\r': sb.append("\\r"); break;
                default:
                    if (c < 0x20) {
                        sb.append("\\u00").append(HEX[c >> 4]).append(HEX[c & 0xF]);
                    } else {
                        sb.append(c);
                    }
            }
        }
        return sb.append('"');
    }

    static String quote(String s) {
        return str(new StringBuilder(s.length() + 2), s).toString();
    }

    /**
     * An instant as chrono's to_rfc3339_opts(AutoSi, true): UTC, "Z", and 0,
     * 3, 6 or 9 fractional digits, as few as represent it.
     */
    static String time(Instant t) {
        OffsetDateTime d = t.atOffset(ZoneOffset.UTC);
        StringBuilder sb = new StringBuilder(30);
        int year = d.getYear();
        pad(sb, year, 4).append('-');
        pad(sb, d.getMonthValue(), 2).append('-');
        pad(sb, d.getDayOfMonth(), 2).append('T');
        pad(sb, d.getHour(), 2).append(':');
        pad(sb, d.getMinute(), 2).append(':');
        pad(sb, d.getSecond(), 2);
        int nanos = d.getNano();
        if (nanos != 0) {
            sb.append('.');
            if (nanos % 1_000_000 == 0) pad(sb, nanos / 1_000_000, 3);
            else if (nanos % 1_000 == 0) pad(sb, nanos / 1_000, 6);
            else pad(sb, nanos, 9);
        }
        return sb.append('Z').toString();
    }

    private static StringBuilder pad(StringBuilder sb, int v, int width) {
        String s = Integer.toString(v);
        for (int i = s.length(); i < width; i++) sb.append('0');
        return sb.append(s);
    }

    /** RFC 3339 with any offset, to an instant; null if it is not RFC 3339. */
    static Instant parseRfc3339(String text) {
        try {
            return OffsetDateTime.parse(text, DateTimeFormatter.ISO_OFFSET_DATE_TIME).toInstant();
        } catch (DateTimeParseException e) {
            return null;
        }
    }

    /** Our own canonical instants ("...Z"). */
    static Instant parseTime(String text) {
        return Instant.parse(text);
    }
}
