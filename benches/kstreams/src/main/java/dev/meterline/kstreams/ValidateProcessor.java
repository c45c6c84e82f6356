package dev.meterline.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.processor.api.RecordMetadata;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * validate (meterline src/stages/validate/): CloudEvents structured-mode JSON
 * only (binary mode and Avro are refused as unsupported_encoding; no HMAC,
 * no source allow-list), required attributes, specversion, RFC 3339 time
 * within [now - max age, now + skew], data an object, a known type, exact
 * non-negative meter values; then dedupe on (source, id) in a RocksDB store
 * whose entries expire dedupe_horizon behind the partition's stream time.
 * Rejects go to the DLQ; duplicates are counted and dropped.
 */
final class ValidateProcessor implements Processor<byte[], byte[], byte[], byte[]> {
    static final String STORE = "validate-dedupe";
    private static final String[] REQUIRED = {"specversion", "id", "source", "type", "subject", "time"};
    private static final int PURGE_BATCH_MAX = 5_000;

    private final Meters meters;
    private final long maxAgeMs;
    private final long maxSkewMs;
    private final long horizonMs;
    private final String out;
    private final String dlq;
    private ProcessorContext<byte[], byte[]> ctx;
    private KeyValueStore<Bytes, byte[]> store;
    private long streamTimeMs = Long.MIN_VALUE;
    static final java.util.concurrent.atomic.AtomicLong DUPLICATES = new java.util.concurrent.atomic.AtomicLong();

    ValidateProcessor(Meters meters, Config cfg, String out, String dlq) {
        this.meters = meters;
        this.maxAgeMs = cfg.maxEventAgeDays * 86_400_000L;
        this.maxSkewMs = cfg.maxClockSkewS * 1000L;
        this.horizonMs = cfg.dedupeHorizonDays * 86_400_000L;
        this.out = out;
        this.dlq = dlq;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
        ctx = context;
        store = context.getStateStore(STORE);
        context.schedule(Duration.ofSeconds(1), PunctuationType.WALL_CLOCK_TIME, this::purge);
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        Main.IN_VALIDATE.incrementAndGet();
        Model.Validated v;
        try {
            v = validate(record);
        } catch (Dlq.Reject r) {
            ctx.forward(Dlq.letter(ctx, record, "validate", r.code, r.getMessage()), dlq);
            return;
        }
        byte[] entry = new Keys('E').str(v.source).str(v.id).build();
        if (store.get(Bytes.wrap(entry)) != null) {
            DUPLICATES.incrementAndGet();
            return;
        }
        long timeMs = Json.parseTime(v.time).toEpochMilli();
        store.put(Bytes.wrap(entry), ByteBuffer.allocate(8).putLong(timeMs).array());
        store.put(Bytes.wrap(new Keys('X').i64(timeMs).str(v.source).str(v.id).build()), new byte[0]);
        streamTimeMs = Math.max(streamTimeMs, timeMs);
        byte[] value;
        try {
            value = Json.MAPPER.writeValueAsBytes(v);
        } catch (IOException e) {
            throw new IllegalStateException("serializing a validated event", e);
        }
        ctx.forward(new Record<>(v.subject.getBytes(StandardCharsets.UTF_8), value, record.timestamp(),
            new RecordHeaders()), out);
    }

    private void purge(long nowMs) {
        if (streamTimeMs == Long.MIN_VALUE) return;
        long cutoff = streamTimeMs - horizonMs;
        List<byte[]> expired = new ArrayList<>();
        try (KeyValueIterator<Bytes, byte[]> it = store.range(
                Bytes.wrap(Keys.prefixI64('X', Long.MIN_VALUE)), Bytes.wrap(Keys.prefixI64('X', cutoff)))) {
            while (it.hasNext() && expired.size() < PURGE_BATCH_MAX) {
                KeyValue<Bytes, byte[]> kv = it.next();
                expired.add(kv.key.get());
            }
        }
        for (byte[] k : expired) {
            String[] parts = Keys.readStrings(k, 8, 2);
            store.delete(Bytes.wrap(k));
            store.delete(Bytes.wrap(new Keys('E').str(parts[0]).str(parts[1]).build()));
        }
    }

    private static String header(Record<byte[], byte[]> r, String name, boolean ignoreCase) {
        String found = null;
        for (Header h : r.headers()) {
            if (ignoreCase ? h.key().equalsIgnoreCase(name) : h.key().equals(name)) {
                found = h.value() == null ? null : new String(h.value(), StandardCharsets.UTF_8);
                if (found == null) return "";
            }
        }
        return found;
    }

    private Model.Validated validate(Record<byte[], byte[]> record) throws Dlq.Reject {
        byte[] value = record.value();
        if (value == null || value.length == 0) throw new Dlq.Reject("empty_value", "the record has no value");
        if (header(record, "ce_specversion", false) != null) {
            throw new Dlq.Reject("unsupported_encoding", "K accepts CloudEvents structured mode only");
        }
        if (value.length >= 5 && value[0] == 0) {
            throw new Dlq.Reject("unsupported_encoding",
                "the value is in the Confluent Avro wire format but no schema registry is configured");
        }
        String contentType = header(record, "content-type", true);
        if (contentType != null && contentType.split(";")[0].trim().equalsIgnoreCase("application/cloudevents-batch+json")) {
            throw new Dlq.Reject("unsupported_encoding", "CloudEvents batches are not accepted: send one event per record");
        }
        JsonNode root;
        try {
            root = Json.MAPPER.readTree(value);
        } catch (IOException e) {
            throw new Dlq.Reject("malformed_json", "the structured-mode envelope is not valid JSON: " + e.getMessage());
        }
        if (root == null || root.isMissingNode()) {
            throw new Dlq.Reject("malformed_json", "the structured-mode envelope is not valid JSON: EOF");
        }
        if (!root.isObject()) {
            throw new Dlq.Reject("not_an_object", "the structured-mode envelope is not an object");
        }
        ObjectNode envelope = (ObjectNode) root;
        String[] attrs = new String[REQUIRED.length];
        for (int i = 0; i < REQUIRED.length; i++) {
            JsonNode n = envelope.get(REQUIRED[i]);
            if (n == null || n.isNull()) {
                throw new Dlq.Reject("missing_attribute", "attribute `" + REQUIRED[i] + "` is missing");
            }
            if (!n.isTextual()) {
                throw new Dlq.Reject("invalid_attribute", "attribute `" + REQUIRED[i] + "` is not a string");
            }
            if (n.textValue().isEmpty()) {
                throw new Dlq.Reject("invalid_attribute", "attribute `" + REQUIRED[i] + "` is empty");
            }
            attrs[i] = n.textValue();
        }
        if (!attrs[0].equals("1.0")) {
            throw new Dlq.Reject("unsupported_specversion", "specversion is " + attrs[0] + ", only \"1.0\" is supported");
        }
        Instant time = Json.parseRfc3339(attrs[5]);
        if (time == null) throw new Dlq.Reject("invalid_time", "time " + attrs[5] + " is not RFC 3339");
        JsonNode dct = envelope.get("datacontenttype");
        if (dct != null && !dct.isNull() && !dct.isTextual()) {
            throw new Dlq.Reject("invalid_attribute", "attribute `datacontenttype` is not a string");
        }
        long now = System.currentTimeMillis();
        long t = time.toEpochMilli();
        if (time.isBefore(Instant.ofEpochMilli(now - maxAgeMs))) {
            throw new Dlq.Reject("event_too_old", "time " + attrs[5] + " is too old");
        }
        if (time.isAfter(Instant.ofEpochMilli(now + maxSkewMs))) {
            throw new Dlq.Reject("event_in_future", "time " + attrs[5] + " is in the future");
        }
        JsonNode data = envelope.get("data");
        if (data == null || !data.isObject()) {
            throw new Dlq.Reject("data_not_object", "data is not a JSON object");
        }
        List<Meters.Meter> ms = meters.metersFor(attrs[3]);
        if (ms.isEmpty()) throw new Dlq.Reject("unknown_event_type", "no meter consumes type " + attrs[3]);
        List<Model.Measure> measures = new ArrayList<>(ms.size());
        for (Meters.Meter m : ms) {
            Model.Measure measure = new Model.Measure();
            measure.meter = m.slug;
            if (!m.aggregation.equals("COUNT")) measure.value = numeric(m, data);
            measure.group = new TreeMap<>();
            for (Map.Entry<String, String[]> g : m.groupBy.entrySet()) {
                measure.group.put(g.getKey(), groupValue(Meters.get(data, g.getValue())));
            }
            measures.add(measure);
        }
        Model.Validated v = new Model.Validated();
        v.source = attrs[2];
        v.id = attrs[1];
        v.type = attrs[3];
        v.subject = attrs[4];
        v.time = Json.time(time);
        v.measures = measures;
        v.data = data;
        Model.Origin o = new Model.Origin();
        RecordMetadata md = ctx.recordMetadata().orElse(null);
        if (md != null) {
            o.topic = md.topic();
            o.partition = md.partition();
            o.offset = md.offset();
        }
        o.encoding = "structured";
        v.origin = o;
        return v;
    }

    private static BigDecimal numeric(Meters.Meter m, JsonNode data) throws Dlq.Reject {
        JsonNode n = Meters.get(data, m.valuePath);
        String where = "meter `" + m.slug + "`: value ";
        if (n == null || n.isNull()) throw new Dlq.Reject("value_missing", where + "is missing or null");
        BigDecimal value;
        try {
            if (n.isNumber()) value = Dec.fit(n.decimalValue());
            else if (n.isTextual()) value = Dec.parseExact(n.textValue());
            else throw new Dlq.Reject("value_not_numeric", where + "is not a number");
        } catch (Dec.NumericException e) {
            switch (e.error) {
                case NOT_FINITE: throw new Dlq.Reject("value_not_finite", where + "is not finite");
                case OUT_OF_RANGE: throw new Dlq.Reject("value_out_of_range", where + "cannot be held exactly as a decimal");
                default: throw new Dlq.Reject("value_not_numeric", where + "is not numeric");
            }
        }
        if (value.signum() < 0) throw new Dlq.Reject("value_negative", where + value.toPlainString() + " is negative");
        return value;
    }

    private static String groupValue(JsonNode n) {
        if (n == null || n.isNull()) return "";
        if (n.isTextual()) return n.textValue();
        return n.toString();
    }
}
