package dev.meterline.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.math.BigDecimal;
import java.time.Instant;
import java.time.ZoneId;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * Reference data: the compacted ref.customers, ref.subscriptions and
 * ref.plans topics (src/refdata/: keys id, id, "id:version"; JSON values;
 * null = retired), each in a global RocksDB store, and an in-memory index of
 * them that enrich rebuilds whenever a global store changed.
 */
final class RefData {
    static final String CUSTOMERS = "ref-customers";
    static final String SUBSCRIPTIONS = "ref-subscriptions";
    static final String PLANS = "ref-plans";

    /** Bumped by every global-store update; the index is rebuilt when it moved. */
    static final AtomicLong VERSION = new AtomicLong();

    /** Keeps a global store equal to its topic. */
    static final class Updater implements Processor<Bytes, byte[], Void, Void> {
        private final String storeName;
        private KeyValueStore<Bytes, byte[]> store;

        Updater(String storeName) {
            this.storeName = storeName;
        }

        @Override
        public void init(ProcessorContext<Void, Void> context) {
            store = context.getStateStore(storeName);
        }

        @Override
        public void process(Record<Bytes, byte[]> record) {
            if (record.key() == null) return;
            if (record.value() == null) store.delete(record.key());
            else store.put(record.key(), record.value());
            VERSION.incrementAndGet();
        }
    }

    static final class Subscription {
        String id;
        String customerId;
        String planId;
        Instant start;
        Instant end;
        String endText;
        int anchorDay;
        String timeZone;
        ZoneId zone;
        String currency;
        String legalEntity;
        BigDecimal minimumCommitment;
        Map<String, Model.ChargeModel> overrides = new TreeMap<>();

        boolean activeAt(Instant t) {
            return !start.isAfter(t) && (end == null || t.isBefore(end));
        }
    }

    static final class PlanCharge {
        Model.ChargeModel model;
        String taxCode;
    }

    static final class Plan {
        String id;
        int version;
        Instant effectiveFrom;
        String currency;
        BigDecimal baseFee;
        Map<String, PlanCharge> charges = new TreeMap<>();
        Model.GlAccounts gl;
        String taxCode;
    }

    /** One consistent view of the three tables. */
    static final class Index {
        final long version;
        final Map<String, Model.CustomerInfo> customers = new HashMap<>();
        /** customer id -> its subscriptions, ordered by subscription id. */
        final Map<String, TreeMap<String, Subscription>> subscriptionsByCustomer = new HashMap<>();
        /** plan id -> versions ascending. */
        final Map<String, TreeMap<Integer, Plan>> plans = new HashMap<>();

        Index(long version) {
            this.version = version;
        }

        List<Subscription> active(String customer, Instant t) {
            TreeMap<String, Subscription> subs = subscriptionsByCustomer.get(customer);
            if (subs == null) return List.of();
            List<Subscription> out = new ArrayList<>(1);
            for (Subscription s : subs.values()) if (s.activeAt(t)) out.add(s);
            return out;
        }

        /** The greatest version with effective_from <= t; null if none. */
        Plan planAt(String planId, Instant t) {
            TreeMap<Integer, Plan> versions = plans.get(planId);
            if (versions == null) return null;
            for (Plan p : versions.descendingMap().values()) {
                if (!p.effectiveFrom.isAfter(t)) return p;
            }
            return null;
        }
    }

    static Index build(KeyValueStore<Bytes, byte[]> customers, KeyValueStore<Bytes, byte[]> subscriptions,
                       KeyValueStore<Bytes, byte[]> plans) {
        Index index = new Index(VERSION.get());
        try {
            for (byte[] v : values(customers)) {
                JsonNode n = Json.MAPPER.readTree(v);
                Model.CustomerInfo c = new Model.CustomerInfo();
                c.id = n.path("id").asText();
                c.name = n.path("name").asText();
                c.legal_entity = n.path("legal_entity").asText();
                c.erp_customer_id = n.path("erp_customer_id").asText();
                index.customers.put(c.id, c);
            }
            for (byte[] v : values(subscriptions)) {
                JsonNode n = Json.MAPPER.readTree(v);
                Subscription s = new Subscription();
                s.id = n.path("id").asText();
                s.customerId = n.path("customer_id").asText();
                s.planId = n.path("plan_id").asText();
                s.start = Json.parseRfc3339(n.path("start").asText());
                JsonNode end = n.get("end");
                s.end = end == null || end.isNull() ? null : Json.parseRfc3339(end.asText());
                s.endText = s.end == null ? null : Json.time(s.end);
                s.anchorDay = n.path("billing_anchor_day").asInt();
                s.timeZone = n.path("time_zone").asText();
                s.zone = ZoneId.of(s.timeZone);
                s.currency = n.path("currency").asText();
                s.legalEntity = n.path("legal_entity").asText();
                s.minimumCommitment = decimal(n.get("minimum_commitment"));
                JsonNode overrides = n.get("price_overrides");
                if (overrides != null && overrides.isObject()) {
                    for (Iterator<Map.Entry<String, JsonNode>> it = overrides.fields(); it.hasNext(); ) {
                        Map.Entry<String, JsonNode> e = it.next();
                        s.overrides.put(e.getKey(), Json.MAPPER.treeToValue(e.getValue(), Model.ChargeModel.class));
                    }
                }
                index.subscriptionsByCustomer.computeIfAbsent(s.customerId, k -> new TreeMap<>()).put(s.id, s);
            }
            for (byte[] v : values(plans)) {
                JsonNode n = Json.MAPPER.readTree(v);
                Plan p = new Plan();
                p.id = n.path("id").asText();
                p.version = n.path("version").asInt();
                p.effectiveFrom = Json.parseRfc3339(n.path("effective_from").asText());
                p.currency = n.path("currency").asText();
                p.baseFee = decimal(n.get("base_fee"));
                JsonNode tax = n.get("tax_code");
                p.taxCode = tax == null || tax.isNull() ? null : tax.asText();
                p.gl = Json.MAPPER.treeToValue(n.get("gl_accounts"), Model.GlAccounts.class);
                JsonNode charges = n.get("charges");
                if (charges != null && charges.isObject()) {
                    for (Iterator<Map.Entry<String, JsonNode>> it = charges.fields(); it.hasNext(); ) {
                        Map.Entry<String, JsonNode> e = it.next();
                        PlanCharge pc = new PlanCharge();
                        pc.model = Json.MAPPER.treeToValue(e.getValue(), Model.ChargeModel.class);
                        JsonNode t = e.getValue().get("tax_code");
                        pc.taxCode = t == null || t.isNull() ? null : t.asText();
                        p.charges.put(e.getKey(), pc);
                    }
                }
                index.plans.computeIfAbsent(p.id, k -> new TreeMap<>()).put(p.version, p);
            }
        } catch (IOException e) {
            throw new IllegalStateException("reference data: " + e.getMessage(), e);
        }
        return index;
    }

    private static BigDecimal decimal(JsonNode n) {
        if (n == null || n.isNull()) return null;
        return new BigDecimal(n.asText());
    }

    private static List<byte[]> values(KeyValueStore<Bytes, byte[]> store) {
        List<byte[]> out = new ArrayList<>();
        try (KeyValueIterator<Bytes, byte[]> it = store.all()) {
            while (it.hasNext()) {
                KeyValue<Bytes, byte[]> kv = it.next();
                if (kv.value != null) out.add(kv.value);
            }
        }
        return out;
    }
}
