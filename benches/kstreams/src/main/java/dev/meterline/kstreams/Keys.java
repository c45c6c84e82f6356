package dev.meterline.kstreams;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;

/** Store key encodings, as meterline's src/store/keys.rs (length-prefixed strings, order-preserving i64). */
final class Keys {
    private final ByteArrayOutputStream buf = new ByteArrayOutputStream(64);

    Keys(char prefix) {
        buf.write((byte) prefix);
    }

    Keys str(String s) {
        return bytes(s.getBytes(StandardCharsets.UTF_8));
    }

    Keys bytes(byte[] b) {
        buf.writeBytes(ByteBuffer.allocate(4).putInt(b.length).array());
        buf.writeBytes(b);
        return this;
    }

    Keys i64(long v) {
        buf.writeBytes(encodeI64(v));
        return this;
    }

    byte[] build() {
        return buf.toByteArray();
    }

    static byte[] encodeI64(long v) {
        return ByteBuffer.allocate(8).putLong(v ^ Long.MIN_VALUE).array();
    }

    static byte[] prefixI64(char prefix, long v) {
        byte[] out = new byte[9];
        out[0] = (byte) prefix;
        System.arraycopy(encodeI64(v), 0, out, 1, 8);
        return out;
    }

    /** Reads length-prefixed strings back, after the prefix byte and {@code skip} bytes. */
    static String[] readStrings(byte[] key, int skip, int count) {
        ByteBuffer b = ByteBuffer.wrap(key);
        b.position(1 + skip);
        String[] out = new String[count];
        for (int i = 0; i < count; i++) {
            int len = b.getInt();
            out[i] = new String(key, b.position(), len, StandardCharsets.UTF_8);
            b.position(b.position() + len);
        }
        return out;
    }
}
