package dev.meterline.kstreams;

import java.io.IOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * rate (meterline src/stages/rate/mod.rs): per measure, the rating segment
 * (subscription, meter, billing period, plan version, group), its cumulative
 * quantity in a RocksDB store, and the marginal amount
 * price(after) - price(before), exact.
 */
final class RateProcessor implements Processor<byte[], byte[], byte[], byte[]> {
    static final String STORE = "rate-segments";
    private final String out;
    private final String dlq;
    private ProcessorContext<byte[], byte[]> ctx;
    private KeyValueStore<Bytes, byte[]> store;
    private final MessageDigest sha = sha256();

    RateProcessor(String out, String dlq) {
        this.out = out;
        this.dlq = dlq;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
        ctx = context;
        store = context.getStateStore(STORE);
    }

    /** The segment as a JSON array: ["sub","meter","period",version,{group}] (compact, keys sorted). */
    static String segmentKey(String subscription, String meter, String period, int version, Map<String, String> group) {
        StringBuilder sb = new StringBuilder(96).append('[');
        Json.str(sb, subscription).append(',');
        Json.str(sb, meter).append(',');
        Json.str(sb, period).append(',').append(version).append(",{");
        boolean first = true;
        for (Map.Entry<String, String> e : group.entrySet()) {
            if (!first) sb.append(',');
            first = false;
            Json.str(sb, e.getKey()).append(':');
            Json.str(sb, e.getValue());
        }
        return sb.append("}]").toString();
    }

    private static final char[] HEX = "0123456789abcdef".toCharArray();

    static String hex(byte[] b) {
        char[] out = new char[b.length * 2];
        for (int i = 0; i < b.length; i++) {
            out[2 * i] = HEX[(b[i] >> 4) & 0xF];
            out[2 * i + 1] = HEX[b[i] & 0xF];
        }
        return new String(out);
    }

    static MessageDigest sha256() {
        try {
            return MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        Main.IN_RATE.incrementAndGet();
        Model.Enriched e;
        try {
            e = Json.MAPPER.readValue(record.value(), Model.Enriched.class);
            if (e.charges.size() != e.event.measures.size()) throw new IOException("charges do not match measures");
            for (int i = 0; i < e.charges.size(); i++) {
                if (!e.charges.get(i).meter.equals(e.event.measures.get(i).meter)) {
                    throw new IOException("the charge of measure " + i + " is for another meter");
                }
            }
        } catch (IOException | RuntimeException ex) {
            ctx.forward(Dlq.letter(ctx, record, "rate", "malformed_enriched_event", String.valueOf(ex.getMessage())), dlq);
            return;
        }
        Map<String, Model.SegmentState> states = new LinkedHashMap<>();
        List<Model.RatedMeasure> measures = new ArrayList<>(e.event.measures.size());
        try {
            for (int i = 0; i < e.event.measures.size(); i++) {
                Model.Measure m = e.event.measures.get(i);
                Model.ResolvedCharge charge = e.charges.get(i);
                String key = segmentKey(e.subscription_id, m.meter, e.billing_period.id, e.plan_version, m.group);
                String id = hex(sha.digest(key.getBytes(StandardCharsets.UTF_8)));
                Model.SegmentState state = states.remove(id);
                if (state == null) {
                    byte[] stored = store.get(Bytes.wrap(new Keys('G').str(id).build()));
                    if (stored != null) {
                        state = Json.MAPPER.readValue(stored, Model.SegmentState.class);
                    } else {
                        state = new Model.SegmentState();
                        state.aggregation = charge.aggregation;
                        state.quantity = BigDecimal.ZERO;
                    }
                }
                if (!state.aggregation.equals(charge.aggregation)) {
                    throw new Charge.RatingException("observation_mismatch", "segment aggregates with " + state.aggregation);
                }
                BigDecimal before = state.quantity;
                BigDecimal after;
                switch (state.aggregation) {
                    case "COUNT":
                        after = Dec.add(before, BigDecimal.ONE);
                        break;
                    case "SUM":
                    case "MAX": {
                        if (m.value == null) throw new Charge.RatingException("measure_value_missing", m.meter + " needs a value");
                        if (m.value.signum() < 0) throw new Charge.RatingException("negative_value", "negative value");
                        after = state.aggregation.equals("SUM") ? Dec.add(before, m.value)
                            : (m.value.compareTo(before) > 0 ? m.value : before);
                        break;
                    }
                    default:
                        throw new Charge.RatingException("observation_mismatch", "K does not rate " + state.aggregation);
                }
                BigDecimal amount = Charge.marginal(charge.charge, before, after);
                BigDecimal delta = Dec.sub(after, before);
                state.quantity = after;
                Model.RatedMeasure rm = new Model.RatedMeasure();
                rm.meter = m.meter;
                rm.segment_key = key;
                rm.segment_id = id;
                rm.plan_version = e.plan_version;
                rm.aggregation = state.aggregation;
                rm.quantity_before = before;
                rm.quantity_after = after;
                rm.marginal_quantity = delta;
                rm.marginal_amount = amount;
                measures.add(rm);
                states.put(id, state);
            }
        } catch (Charge.RatingException | Dec.DecimalException ex) {
            String code = ex instanceof Charge.RatingException ? ((Charge.RatingException) ex).code
                : ((Dec.DecimalException) ex).code;
            ctx.forward(Dlq.letter(ctx, record, "rate", code, ex.getMessage()), dlq);
            return;
        } catch (IOException ex) {
            throw new IllegalStateException("segment store: stored state is corrupt", ex);
        }
        Model.Rated rated = new Model.Rated();
        rated.source = e.event.source;
        rated.id = e.event.id;
        rated.customer_id = e.customer.id;
        rated.measures = measures;
        rated.enriched = e;
        byte[] value;
        try {
            for (Map.Entry<String, Model.SegmentState> s : states.entrySet()) {
                store.put(Bytes.wrap(new Keys('G').str(s.getKey()).build()), Json.MAPPER.writeValueAsBytes(s.getValue()));
            }
            value = Json.MAPPER.writeValueAsBytes(rated);
        } catch (IOException ex) {
            throw new IllegalStateException("serializing a rated event", ex);
        }
        ctx.forward(new Record<>(rated.customer_id.getBytes(StandardCharsets.UTF_8), value, record.timestamp(),
            new RecordHeaders()), out);
    }
}
