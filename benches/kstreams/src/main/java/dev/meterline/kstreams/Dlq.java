package dev.meterline.kstreams;

import java.nio.charset.StandardCharsets;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;

/** Dead letters and parked events: the original record byte-for-byte plus meterline's diagnostic headers. */
final class Dlq {
    private Dlq() {}

    /** A reject: the stable reason code and a message. */
    static final class Reject extends Exception {
        final String code;
        Reject(String code, String message) {
            super(message, null, false, false);
            this.code = code;
        }
    }

    private static final int MAX_MESSAGE = 1024;

    static Record<byte[], byte[]> letter(ProcessorContext<?, ?> ctx, Record<byte[], byte[]> original,
                                         String stage, String code, String message) {
        RecordHeaders h = new RecordHeaders();
        for (Header header : original.headers()) h.add(header);
        add(h, "meterline.stage", stage);
        add(h, "meterline.reason", code);
        add(h, "meterline.message", message.length() > MAX_MESSAGE ? message.substring(0, MAX_MESSAGE) : message);
        RecordMetadata md = ctx.recordMetadata().orElse(null);
        if (md != null) {
            add(h, "meterline.original.topic", md.topic());
            add(h, "meterline.original.partition", Integer.toString(md.partition()));
            add(h, "meterline.original.offset", Long.toString(md.offset()));
        }
        add(h, "meterline.original.timestamp", Long.toString(original.timestamp()));
        add(h, "meterline.attempt", "1");
        return new Record<>(original.key(), original.value(), original.timestamp(), h);
    }

    private static void add(RecordHeaders h, String name, String value) {
        h.add(name, value.getBytes(StandardCharsets.UTF_8));
    }
}
