package dev.meterline.kstreams;

import java.io.IOException;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.Duration;
import java.time.Instant;
import java.time.ZoneId;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * aggregate (meterline src/stages/aggregate/mod.rs): per rating segment a
 * day window and a billing-period window, per subscription and period a
 * period-close window, in a RocksDB store keyed by end time so closing is a
 * range scan. Watermark per partition (task) = greatest event time -
 * grace, advanced by a wall-clock punctuator after idle_advance of no input
 * (only when that closes a window). A window is emitted once, when the
 * watermark reaches its end; a late event becomes an adjustment in the
 * current open window naming the closed one. Control digest: the sum mod
 * 2^256 of SHA-256(len(source) source len(id) id) over a window's events.
 */
final class AggregateProcessor implements Processor<byte[], byte[], byte[], byte[]> {
    static final String STORE = "aggregate-windows";
    private static final byte[] CLOCK_KEY = {'M'};
    private static final int CLOSE_SCAN_BATCH = 1_000;
    private static final BigInteger MOD = BigInteger.ONE.shiftLeft(256);
    static final String EMPTY_DIGEST = "0".repeat(64);

    private final long graceMs;
    private final long idleAdvanceMs;
    private final String out;
    private final String dlq;
    private ProcessorContext<byte[], byte[]> ctx;
    private KeyValueStore<Bytes, byte[]> store;
    private Long lastInputMs;
    private final MessageDigest sha = RateProcessor.sha256();

    AggregateProcessor(Config cfg, String out, String dlq) {
        this.graceMs = cfg.gracePeriodS * 1000L;
        this.idleAdvanceMs = cfg.idleAdvanceS * 1000L;
        this.out = out;
        this.dlq = dlq;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
        ctx = context;
        store = context.getStateStore(STORE);
        context.schedule(Duration.ofSeconds(1), PunctuationType.WALL_CLOCK_TIME, this::punctuate);
    }

    private static int rank(String kind) {
        switch (kind) {
            case "day": return 0;
            case "billing_period": return 1;
            default: return 2;
        }
    }

    static byte[] windowKey(long endMs, String kind, String scope, String windowId, Model.Window adjusts) {
        return new Keys('W').i64(endMs).bytes(new byte[] {(byte) rank(kind)}).str(scope).str(windowId)
            .str(adjusts == null ? "R" : "A" + adjusts.id).build();
    }

    byte[] eventDigest(String source, String id) {
        sha.reset();
        for (String part : new String[] {source, id}) {
            byte[] b = part.getBytes(StandardCharsets.UTF_8);
            sha.update(ByteBuffer.allocate(8).putLong(b.length).array());
            sha.update(b);
        }
        return sha.digest();
    }

    static String addDigest(String acc, byte[] item) {
        BigInteger sum = new BigInteger(acc, 16).add(new BigInteger(1, item)).mod(MOD);
        String hex = sum.toString(16);
        return hex.length() == 64 ? hex : "0".repeat(64 - hex.length()) + hex;
    }

    private Model.PartitionClock loadClock() throws IOException {
        byte[] b = store.get(Bytes.wrap(CLOCK_KEY));
        return b == null ? new Model.PartitionClock() : Json.MAPPER.readValue(b, Model.PartitionClock.class);
    }

    private void storeClock(Model.PartitionClock c) throws IOException {
        store.put(Bytes.wrap(CLOCK_KEY), Json.MAPPER.writeValueAsBytes(c));
    }

    private static Model.Window copy(Model.Window w) {
        return w == null ? null : new Model.Window(w.id, w.start, w.end);
    }

    private static Model.ClosedWindow newWindow(Model.Enriched e, String kind, Model.Window window, Model.Window adjusts,
                                                Model.Clearing clearing, Model.SegmentInfo segment) {
        Model.ClosedWindow w = new Model.ClosedWindow();
        w.kind = kind;
        w.window = copy(window);
        w.adjusts = copy(adjusts);
        w.clearing = clearing;
        w.customer = e.customer;
        w.subscription_id = e.subscription_id;
        w.plan_id = e.plan_id;
        w.legal_entity = e.legal_entity;
        w.currency = e.currency;
        w.time_zone = e.time_zone;
        w.billing_anchor_day = e.billing_anchor_day;
        w.gl_accounts = e.gl_accounts;
        w.segment = segment;
        w.plan_version = e.plan_version;
        w.tax_code = e.tax_code;
        w.base_fee = e.base_fee;
        w.minimum_commitment = e.minimum_commitment;
        w.quantity = BigDecimal.ZERO;
        w.amount = BigDecimal.ZERO;
        w.event_count = 0;
        w.lineage_digest = EMPTY_DIGEST;
        w.closed_at_watermark_ms = 0;
        return w;
    }

    /** The windows one event touches, each loaded once and counted once. */
    private Model.ClosedWindow touch(Map<Bytes, Model.ClosedWindow> touched, byte[] key,
                                     java.util.function.Supplier<Model.ClosedWindow> fresh, byte[] digest)
            throws IOException {
        Bytes k = Bytes.wrap(key);
        Model.ClosedWindow w = touched.get(k);
        if (w != null) return w;
        byte[] stored = store.get(k);
        w = stored != null ? Json.MAPPER.readValue(stored, Model.ClosedWindow.class) : fresh.get();
        w.event_count += 1;
        w.lineage_digest = addDigest(w.lineage_digest, digest);
        touched.put(k, w);
        return w;
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        Main.IN_AGGREGATE.incrementAndGet();
        lastInputMs = System.currentTimeMillis();
        Model.Rated rated;
        try {
            rated = Json.MAPPER.readValue(record.value(), Model.Rated.class);
            Model.Enriched e = rated.enriched;
            if (rated.measures.size() != e.event.measures.size() || e.charges.size() != rated.measures.size()) {
                throw new IOException("measures and charges do not match");
            }
        } catch (IOException | RuntimeException ex) {
            ctx.forward(Dlq.letter(ctx, record, "aggregate", "malformed_rated_event", String.valueOf(ex.getMessage())), dlq);
            return;
        }
        try {
            aggregate(rated);
        } catch (IOException ex) {
            throw new IllegalStateException("aggregate store", ex);
        }
    }

    private void aggregate(Model.Rated rated) throws IOException {
        Model.Enriched e = rated.enriched;
        Model.PartitionClock clock = loadClock();
        Long wm = clock.watermark_ms;
        // targets: regular windows, or adjustments in the current open ones
        Model.Window day = e.local_day;
        Model.Window dayAdjusts = null;
        Model.Window period = e.billing_period;
        Model.Window periodAdjusts = null;
        long dayEnd = day.endMs();
        long periodEnd = period.endMs();
        boolean dayClosed = wm != null && dayEnd <= wm;
        boolean periodClosed = wm != null && periodEnd <= wm;
        if (dayClosed || periodClosed) {
            ZoneId tz = ZoneId.of(e.time_zone);
            Instant now = Instant.ofEpochMilli(wm);
            if (dayClosed) {
                dayAdjusts = e.local_day;
                day = Cal.day(tz, now);
                dayEnd = day.endMs();
            }
            if (periodClosed) {
                periodAdjusts = e.billing_period;
                period = Cal.period(e.billing_anchor_day, tz, now);
                periodEnd = period.endMs();
            }
        }
        byte[] digest = eventDigest(rated.source, rated.id);
        Model.Clearing clearing = new Model.Clearing();
        clearing.period = period;
        clearing.adjusts = periodAdjusts;
        Map<Bytes, Model.ClosedWindow> touched = new TreeMap<>();
        for (int i = 0; i < rated.measures.size(); i++) {
            Model.RatedMeasure rm = rated.measures.get(i);
            Model.Measure measure = e.event.measures.get(i);
            Model.ResolvedCharge charge = e.charges.get(i);
            Model.SegmentInfo seg = new Model.SegmentInfo();
            seg.segment_id = rm.segment_id;
            seg.segment_key = rm.segment_key;
            seg.meter = rm.meter;
            seg.plan_version = rm.plan_version;
            seg.group = measure.group;
            seg.aggregation = rm.aggregation;
            seg.tax_code = charge.tax_code;
            seg.unit = charge.unit;
            final Model.Window d = day, da = dayAdjusts, p = period, pa = periodAdjusts;
            Model.ClosedWindow dw = touch(touched, windowKey(dayEnd, "day", rm.segment_id, day.id, dayAdjusts),
                () -> newWindow(e, "day", d, da, clearing, seg), digest);
            add(dw, rm.marginal_quantity, rm.marginal_amount);
            Model.ClosedWindow pw = touch(touched,
                windowKey(periodEnd, "billing_period", rm.segment_id, period.id, periodAdjusts),
                () -> newWindow(e, "billing_period", p, pa, clearing, seg), digest);
            add(pw, rm.marginal_quantity, rm.marginal_amount);
            if (periodAdjusts == null) {
                Model.ClosedWindow close = touch(touched,
                    windowKey(periodEnd, "period_close", e.subscription_id, period.id, null),
                    () -> newWindow(e, "period_close", p, null, clearing, null), digest);
                add(close, BigDecimal.ZERO, rm.marginal_amount);
                if (e.plan_version > close.plan_version) {
                    close.plan_version = e.plan_version;
                    close.plan_id = e.plan_id;
                    close.base_fee = e.base_fee;
                    close.minimum_commitment = e.minimum_commitment;
                    close.tax_code = e.tax_code;
                    close.gl_accounts = e.gl_accounts;
                }
            }
        }
        for (Map.Entry<Bytes, Model.ClosedWindow> t : touched.entrySet()) {
            store.put(t.getKey(), Json.MAPPER.writeValueAsBytes(t.getValue()));
        }
        long eventMs = Json.parseTime(e.event.time).toEpochMilli();
        Long beforeMax = clock.max_event_ms;
        Long beforeWm = clock.watermark_ms;
        clock.max_event_ms = beforeMax == null ? eventMs : Math.max(beforeMax, eventMs);
        long candidate = clock.max_event_ms - graceMs;
        clock.watermark_ms = beforeWm == null ? candidate : Math.max(beforeWm, candidate);
        if (!clock.max_event_ms.equals(beforeMax) || !clock.watermark_ms.equals(beforeWm)) {
            storeClock(clock);
        }
        if (!clock.watermark_ms.equals(beforeWm)) {
            closeUntil(clock.watermark_ms);
        }
    }

    private static void add(Model.ClosedWindow w, BigDecimal quantity, BigDecimal amount) {
        w.quantity = Dec.add(w.quantity, quantity);
        w.amount = Dec.add(w.amount, amount);
    }

    /** Emits and deletes every open window ending at or before the watermark, in key order. */
    private void closeUntil(long watermarkMs) throws IOException {
        Bytes from = Bytes.wrap(new byte[] {'W'});
        Bytes to = Bytes.wrap(Keys.prefixI64('W', watermarkMs + 1));
        long now = System.currentTimeMillis();
        while (true) {
            List<KeyValue<Bytes, byte[]>> batch = new ArrayList<>();
            try (KeyValueIterator<Bytes, byte[]> it = store.range(from, to)) {
                while (it.hasNext() && batch.size() < CLOSE_SCAN_BATCH) {
                    KeyValue<Bytes, byte[]> kv = it.next();
                    if (kv.key.equals(to)) break;
                    batch.add(kv);
                }
            }
            if (batch.isEmpty()) return;
            for (KeyValue<Bytes, byte[]> kv : batch) {
                Model.ClosedWindow w = Json.MAPPER.readValue(kv.value, Model.ClosedWindow.class);
                w.closed_at_watermark_ms = watermarkMs;
                byte[] bytes = Json.MAPPER.writeValueAsBytes(w);
                store.delete(kv.key);
                ctx.forward(new Record<>(w.customer.id.getBytes(StandardCharsets.UTF_8), bytes, now,
                    new RecordHeaders()), out);
            }
        }
    }

    private void punctuate(long nowMs) {
        if (lastInputMs == null) lastInputMs = nowMs;
        if (nowMs - lastInputMs < idleAdvanceMs) return;
        try {
            Model.PartitionClock clock = loadClock();
            long candidate = nowMs - graceMs;
            if (clock.watermark_ms != null && clock.watermark_ms >= candidate) return;
            boolean any;
            try (KeyValueIterator<Bytes, byte[]> it = store.range(Bytes.wrap(new byte[] {'W'}),
                    Bytes.wrap(Keys.prefixI64('W', candidate + 1)))) {
                any = it.hasNext();
            }
            if (!any) return;
            clock.watermark_ms = candidate;
            storeClock(clock);
            closeUntil(candidate);
        } catch (IOException ex) {
            throw new IllegalStateException("aggregate store", ex);
        }
    }
}
