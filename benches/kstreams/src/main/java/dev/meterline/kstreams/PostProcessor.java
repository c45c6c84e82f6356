package dev.meterline.kstreams;

import java.io.IOException;
import java.math.BigDecimal;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.time.Instant;
import java.time.LocalDate;
import java.time.ZoneId;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * post (meterline src/stages/post/mod.rs and src/money.rs): accrual per
 * segment and day; at period close the invoice line, rounding entry and
 * reclass per segment, base fee and minimum-commitment true-up per
 * subscription; a control total per window. Amounts rounded half-even to
 * the currency's minor unit, negative amounts swap sides, zero entries are
 * not posted, every entry checked to balance. Postings are written as JSON
 * byte-identical to meterline's (serde field order and escaping), keyed
 * by ["legal entity","subscription"].
 */
final class PostProcessor implements Processor<byte[], byte[], byte[], byte[]> {
    static final String STORE = "post-ledger";
    static final int POSTING_KEY_VERSION = 1;

    private final String out;
    private final String dlq;
    private ProcessorContext<byte[], byte[]> ctx;
    private KeyValueStore<Bytes, byte[]> store;
    private final MessageDigest sha = RateProcessor.sha256();

    PostProcessor(String out, String dlq) {
        this.out = out;
        this.dlq = dlq;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
        ctx = context;
        store = context.getStateStore(STORE);
    }

    /** money::idempotency_key: hex SHA-256 of u32 version, u64 count, (u64 len, bytes)*. */
    String idempotencyKey(List<String> parts, int version) {
        sha.reset();
        sha.update(ByteBuffer.allocate(4).putInt(version).array());
        sha.update(ByteBuffer.allocate(8).putLong(parts.size()).array());
        for (String p : parts) {
            byte[] b = p.getBytes(StandardCharsets.UTF_8);
            sha.update(ByteBuffer.allocate(8).putLong(b.length).array());
            sha.update(b);
        }
        return RateProcessor.hex(sha.digest());
    }

    private static final class Line {
        final String account;
        final String side;
        final BigDecimal amount;

        Line(String account, String side, BigDecimal amount) {
            this.account = account;
            this.side = side;
            this.amount = amount;
        }
    }

    private static final class Invoice {
        String description;
        BigDecimal quantity;
        String unit;
        BigDecimal amount;
        String taxCode;
    }

    /** Dr debit, Cr credit of amount; a negative amount swaps the sides; null for zero. */
    static List<Line> twoLines(String debit, String credit, BigDecimal amount) {
        if (amount.signum() == 0) return null;
        String dr = debit, cr = credit;
        if (amount.signum() < 0) {
            dr = credit;
            cr = debit;
        }
        BigDecimal a = amount.abs();
        return List.of(new Line(dr, "debit", a), new Line(cr, "credit", a));
    }

    private final class Builder {
        final Model.ClosedWindow w;
        final String accountingDate;
        final BigDecimal amountRounded;

        Builder(Model.ClosedWindow w, String accountingDate, BigDecimal amountRounded) {
            this.w = w;
            this.accountingDate = accountingDate;
            this.amountRounded = amountRounded;
        }

        byte[] posting(String postingType, String kind, List<Line> lines, Invoice invoice, boolean control) {
            Model.SegmentInfo s = w.segment;
            List<String> bk = List.of(postingType, kind, w.legal_entity, w.subscription_id,
                s == null ? "" : s.segment_id, w.kind, w.window.id, w.adjusts == null ? "" : w.adjusts.id);
            StringBuilder sb = new StringBuilder(1400);
            sb.append("{\"posting_type\":");
            Json.str(sb, postingType).append(",\"kind\":");
            Json.str(sb, kind).append(",\"idempotency_key\":");
            Json.str(sb, idempotencyKey(bk, POSTING_KEY_VERSION)).append(",\"business_key\":[");
            for (int i = 0; i < bk.size(); i++) {
                if (i > 0) sb.append(',');
                Json.str(sb, bk.get(i));
            }
            sb.append("],\"key_version\":").append(POSTING_KEY_VERSION).append(",\"legal_entity\":");
            Json.str(sb, w.legal_entity).append(",\"customer_id\":");
            Json.str(sb, w.customer.id).append(",\"erp_customer_id\":");
            Json.str(sb, w.customer.erp_customer_id).append(",\"subscription_id\":");
            Json.str(sb, w.subscription_id).append(",\"plan_id\":");
            Json.str(sb, w.plan_id).append(",\"plan_version\":").append(s == null ? w.plan_version : s.plan_version)
                .append(",\"currency\":");
            Json.str(sb, w.currency).append(",\"accounting_date\":");
            Json.str(sb, accountingDate).append(",\"billing_period\":");
            window(sb, w.clearing.period).append(",\"window_kind\":");
            Json.str(sb, w.kind).append(",\"window\":");
            window(sb, w.window).append(",\"adjusts\":");
            window(sb, w.adjusts).append(",\"segment_id\":");
            Json.str(sb, s == null ? null : s.segment_id).append(",\"segment_key\":");
            Json.str(sb, s == null ? null : s.segment_key).append(",\"meter\":");
            Json.str(sb, s == null ? null : s.meter).append(",\"lines\":[");
            if (lines != null) {
                for (int i = 0; i < lines.size(); i++) {
                    Line l = lines.get(i);
                    if (i > 0) sb.append(',');
                    sb.append("{\"account\":");
                    Json.str(sb, l.account).append(",\"side\":");
                    Json.str(sb, l.side).append(",\"amount\":");
                    Json.str(sb, Dec.str(l.amount)).append('}');
                }
            }
            sb.append("],\"invoice_line\":");
            if (invoice == null) {
                sb.append("null");
            } else {
                sb.append("{\"description\":");
                Json.str(sb, invoice.description).append(",\"quantity\":");
                Json.str(sb, Dec.str(invoice.quantity)).append(",\"unit\":");
                Json.str(sb, invoice.unit).append(",\"amount\":");
                Json.str(sb, Dec.str(invoice.amount)).append(",\"tax_code\":");
                Json.str(sb, invoice.taxCode).append('}');
            }
            sb.append(",\"control_total\":");
            if (!control) {
                sb.append("null");
            } else {
                sb.append("{\"event_count\":").append(w.event_count).append(",\"quantity\":");
                Json.str(sb, Dec.str(w.quantity)).append(",\"amount\":");
                Json.str(sb, Dec.str(w.amount)).append(",\"amount_rounded\":");
                Json.str(sb, Dec.str(amountRounded)).append(",\"lineage_digest\":");
                Json.str(sb, w.lineage_digest).append('}');
            }
            sb.append('}');
            return sb.toString().getBytes(StandardCharsets.UTF_8);
        }
    }

    private static StringBuilder window(StringBuilder sb, Model.Window w) {
        if (w == null) return sb.append("null");
        sb.append("{\"id\":");
        Json.str(sb, w.id).append(",\"start\":");
        Json.str(sb, w.start).append(",\"end\":");
        return Json.str(sb, w.end).append('}');
    }

    private BigDecimal readSum(byte[] key) {
        byte[] b = store.get(Bytes.wrap(key));
        return b == null ? BigDecimal.ZERO : new BigDecimal(new String(b, StandardCharsets.UTF_8));
    }

    /** meterline's SegmentInfo::label: the meter, then each group as name=value in name order
     *  (an absent value as name=(none)). Group names are ASCII in practice, where TreeMap's
     *  order is Rust's BTreeMap's. */
    static String label(Model.SegmentInfo s) {
        StringBuilder sb = new StringBuilder(s.meter);
        if (s.group != null) {
            boolean first = true;
            for (Map.Entry<String, String> g : s.group.entrySet()) {
                sb.append(first ? " " : ", ").append(g.getKey()).append('=')
                  .append(g.getValue().isEmpty() ? "(none)" : g.getValue());
                first = false;
            }
        }
        return sb.toString();
    }

    private static void checkBalanced(List<Line> lines) {
        BigDecimal d = BigDecimal.ZERO, c = BigDecimal.ZERO;
        for (Line l : lines) {
            if (l.side.equals("debit")) d = d.add(l.amount);
            else c = c.add(l.amount);
        }
        if (d.compareTo(c) != 0) throw new IllegalStateException("journal entry does not balance: " + d + " vs " + c);
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        Main.IN_POST.incrementAndGet();
        Model.ClosedWindow w;
        try {
            w = Json.MAPPER.readValue(record.value(), Model.ClosedWindow.class);
            if ((w.segment != null) == w.kind.equals("period_close")) throw new IOException("segment does not fit the kind");
        } catch (IOException | RuntimeException ex) {
            ctx.forward(Dlq.letter(ctx, record, "post", "malformed_closed_window", String.valueOf(ex.getMessage())), dlq);
            return;
        }
        List<byte[]> postings;
        try {
            postings = post(w);
        } catch (Dec.DecimalException ex) {
            ctx.forward(Dlq.letter(ctx, record, "post", ex.code, ex.getMessage()), dlq);
            return;
        }
        StringBuilder key = new StringBuilder("[");
        Json.str(key, w.legal_entity).append(',');
        Json.str(key, w.subscription_id).append(']');
        byte[] k = key.toString().getBytes(StandardCharsets.UTF_8);
        for (byte[] p : postings) {
            ctx.forward(new Record<>(k, p, record.timestamp(), new RecordHeaders()), out);
        }
    }

    private List<byte[]> post(Model.ClosedWindow w) {
        BigDecimal amount = Dec.roundToMinor(w.amount, w.currency);
        String accountingDate;
        if (w.kind.equals("day")) {
            accountingDate = w.window.id;
        } else {
            Instant last = Json.parseTime(w.window.end).minusMillis(1);
            accountingDate = LocalDate.ofInstant(last, ZoneId.of(w.time_zone)).toString();
        }
        Model.SegmentInfo s = w.segment;
        byte[] accruedKey = s == null ? null : new Keys('A').str(s.segment_id).str(w.clearing.period.id)
            .str(w.clearing.adjusts == null ? "" : w.clearing.adjusts.id).build();
        byte[] spendKey = new Keys('S').str(w.subscription_id).str(w.window.id).build();
        BigDecimal accrued = accruedKey == null ? BigDecimal.ZERO : readSum(accruedKey);
        BigDecimal spend = w.kind.equals("day") ? BigDecimal.ZERO : readSum(spendKey);

        Builder b = new Builder(w, accountingDate, amount);
        Model.GlAccounts gl = w.gl_accounts;
        List<byte[]> out = new ArrayList<>(4);
        switch (w.kind) {
            case "day": {
                List<Line> lines = twoLines(gl.unbilled_receivable, gl.usage_revenue, amount);
                if (lines != null) {
                    checkBalanced(lines);
                    out.add(b.posting("journal_entry", "accrual", lines, null, false));
                }
                store.put(Bytes.wrap(accruedKey), Dec.str(Dec.add(accrued, amount)).getBytes(StandardCharsets.UTF_8));
                break;
            }
            case "billing_period": {
                if (!(amount.signum() == 0 && w.quantity.signum() == 0)) {
                    Invoice inv = new Invoice();
                    inv.description = w.adjusts == null
                        ? label(s) + " (plan " + w.plan_id + " v" + s.plan_version + ")"
                        : label(s) + " (plan " + w.plan_id + " v" + s.plan_version + "), adjustment of period " + w.adjusts.id;
                    inv.quantity = w.quantity;
                    inv.unit = s.unit;
                    inv.amount = amount;
                    inv.taxCode = s.tax_code;
                    out.add(b.posting("invoice_line", "usage", null, inv, false));
                }
                List<Line> rounding = twoLines(gl.unbilled_receivable, gl.usage_revenue, Dec.sub(amount, accrued));
                if (rounding != null) {
                    checkBalanced(rounding);
                    out.add(b.posting("journal_entry", "rounding", rounding, null, false));
                }
                List<Line> reclass = twoLines(gl.receivable, gl.unbilled_receivable, amount);
                if (reclass != null) {
                    checkBalanced(reclass);
                    out.add(b.posting("journal_entry", "reclass", reclass, null, false));
                }
                store.delete(Bytes.wrap(accruedKey));
                if (w.adjusts == null) {
                    store.put(Bytes.wrap(spendKey), Dec.str(Dec.add(spend, amount)).getBytes(StandardCharsets.UTF_8));
                }
                break;
            }
            default: {
                BigDecimal baseFee = Dec.roundToMinor(w.base_fee == null ? BigDecimal.ZERO : w.base_fee, w.currency);
                List<Line> fee = twoLines(gl.receivable, gl.usage_revenue, baseFee);
                if (fee != null) {
                    Invoice inv = new Invoice();
                    inv.description = "base fee (plan " + w.plan_id + " v" + w.plan_version + ")";
                    inv.quantity = BigDecimal.ONE;
                    inv.amount = baseFee;
                    inv.taxCode = w.tax_code;
                    out.add(b.posting("invoice_line", "base_fee", null, inv, false));
                    checkBalanced(fee);
                    out.add(b.posting("journal_entry", "base_fee", fee, null, false));
                }
                if (w.minimum_commitment != null) {
                    BigDecimal commitment = Dec.roundToMinor(w.minimum_commitment, w.currency);
                    BigDecimal shortfall = Dec.sub(commitment, Dec.add(spend, baseFee));
                    if (shortfall.signum() > 0) {
                        List<Line> lines = twoLines(gl.receivable, gl.usage_revenue, shortfall);
                        if (lines != null) {
                            Invoice inv = new Invoice();
                            inv.description = "minimum commitment " + Dec.str(commitment) + " " + w.currency + ": true-up";
                            inv.quantity = BigDecimal.ONE;
                            inv.amount = shortfall;
                            inv.taxCode = w.tax_code;
                            out.add(b.posting("invoice_line", "minimum_true_up", null, inv, false));
                            checkBalanced(lines);
                            out.add(b.posting("journal_entry", "minimum_true_up", lines, null, false));
                        }
                    }
                }
                store.delete(Bytes.wrap(spendKey));
            }
        }
        out.add(b.posting("control_total", w.kind, null, null, true));
        return out;
    }
}
