package dev.meterline.kstreams;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.TreeSet;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueStore;

/**
 * enrich (meterline src/stages/enrich/resolve.rs): the customer, the one
 * subscription active at the event's time that charges its meters, the plan
 * version in force then, the charge of every measure (subscription override,
 * else plan), the billing period and local day. Unresolvable events are
 * parked on K's exceptions topic with header meterline.reason (K does not
 * re-emit them when reference data arrives).
 */
final class EnrichProcessor implements Processor<byte[], byte[], byte[], byte[]> {
    private final Meters meters;
    private final String out;
    private final String exceptions;
    private final String dlq;
    private ProcessorContext<byte[], byte[]> ctx;
    private KeyValueStore<Bytes, byte[]> customers;
    private KeyValueStore<Bytes, byte[]> subscriptions;
    private KeyValueStore<Bytes, byte[]> plans;
    private RefData.Index index;
    static final AtomicLong PARKED = new AtomicLong();

    EnrichProcessor(Meters meters, String out, String exceptions, String dlq) {
        this.meters = meters;
        this.out = out;
        this.exceptions = exceptions;
        this.dlq = dlq;
    }

    @Override
    public void init(ProcessorContext<byte[], byte[]> context) {
        ctx = context;
        customers = context.getStateStore(RefData.CUSTOMERS);
        subscriptions = context.getStateStore(RefData.SUBSCRIPTIONS);
        plans = context.getStateStore(RefData.PLANS);
    }

    private RefData.Index index() {
        if (index == null || index.version != RefData.VERSION.get()) {
            index = RefData.build(customers, subscriptions, plans);
        }
        return index;
    }

    /** A park: meterline's reason code. */
    private static final class Park extends Exception {
        final String code;
        Park(String code, String message) {
            super(message, null, false, false);
            this.code = code;
        }
    }

    private static final class Candidate {
        final RefData.Subscription sub;
        final RefData.Plan plan;
        final String planProblem;

        Candidate(RefData.Subscription sub, RefData.Plan plan, String planProblem) {
            this.sub = sub;
            this.plan = plan;
            this.planProblem = planProblem;
        }

        boolean charges(String meter) {
            return sub.overrides.containsKey(meter) || (plan != null && plan.charges.containsKey(meter));
        }
    }

    @Override
    public void process(Record<byte[], byte[]> record) {
        Main.IN_ENRICH.incrementAndGet();
        Model.Validated v;
        try {
            v = Json.MAPPER.readValue(record.value(), Model.Validated.class);
        } catch (IOException | RuntimeException e) {
            ctx.forward(Dlq.letter(ctx, record, "enrich", "malformed_validated_event", String.valueOf(e.getMessage())), dlq);
            return;
        }
        Model.Enriched e;
        try {
            e = resolve(v, index());
        } catch (Park p) {
            PARKED.incrementAndGet();
            Record<byte[], byte[]> parked = Dlq.letter(ctx, record, "enrich", p.code, p.getMessage());
            ctx.forward(parked, exceptions);
            return;
        } catch (Charge.RatingException r) {
            ctx.forward(Dlq.letter(ctx, record, "enrich", r.code, r.getMessage()), dlq);
            return;
        }
        byte[] value;
        try {
            value = Json.MAPPER.writeValueAsBytes(e);
        } catch (IOException ex) {
            throw new IllegalStateException("serializing an enriched event", ex);
        }
        ctx.forward(new Record<>(v.subject.getBytes(StandardCharsets.UTF_8), value, record.timestamp(),
            new RecordHeaders()), out);
    }

    private Model.Enriched resolve(Model.Validated v, RefData.Index ix) throws Park {
        String customerId = v.subject;
        Instant time = Json.parseTime(v.time);
        for (Model.Measure m : v.measures) {
            if (!meters.bySlug.containsKey(m.meter)) {
                throw new Park("unknown_meter", "meter " + m.meter + " is not in the meter catalog");
            }
        }
        Model.CustomerInfo customer = ix.customers.get(customerId);
        if (customer == null) throw new Park("unknown_customer", "unknown customer " + customerId);

        List<Candidate> candidates = new ArrayList<>(1);
        for (RefData.Subscription s : ix.active(customerId, time)) {
            RefData.Plan plan = null;
            String problem = null;
            if (!ix.plans.containsKey(s.planId)) problem = "unknown_plan";
            else {
                plan = ix.planAt(s.planId, time);
                if (plan == null) problem = "no_plan_version";
            }
            candidates.add(new Candidate(s, plan, problem));
        }
        TreeSet<String> measured = new TreeSet<>();
        for (Model.Measure m : v.measures) measured.add(m.meter);

        TreeSet<String> charging = new TreeSet<>();
        for (String meter : measured) {
            List<String> forMeter = new ArrayList<>();
            for (Candidate c : candidates) if (c.charges(meter)) forMeter.add(c.sub.id);
            if (forMeter.size() > 1) {
                throw new Park("ambiguous_subscription", "meter " + meter + " is charged by " + forMeter);
            }
            charging.addAll(forMeter);
        }
        if (charging.size() > 1) throw new Park("ambiguous_subscription", "meters charged by " + charging);
        Candidate chosen = null;
        if (charging.size() == 1) {
            for (Candidate c : candidates) if (c.sub.id.equals(charging.first())) chosen = c;
        } else if (candidates.size() == 1) {
            chosen = candidates.get(0);
        } else {
            for (Candidate c : candidates) {
                if (c.planProblem != null) {
                    chosen = c;
                    break;
                }
            }
        }
        if (chosen == null) throw new Park("no_active_subscription", "no active subscription charges " + measured);
        RefData.Subscription sub = chosen.sub;
        if (chosen.planProblem != null) throw new Park(chosen.planProblem, "plan " + sub.planId);
        RefData.Plan plan = chosen.plan;

        List<Model.ResolvedCharge> charges = new ArrayList<>(v.measures.size());
        for (Model.Measure m : v.measures) {
            Model.ResolvedCharge rc = new Model.ResolvedCharge();
            rc.meter = m.meter;
            rc.aggregation = meters.bySlug.get(m.meter).aggregation;
            Model.ChargeModel override = sub.overrides.get(m.meter);
            RefData.PlanCharge pc = plan.charges.get(m.meter);
            if (override != null) {
                rc.charge = override;
                rc.source = "override";
            } else if (pc != null) {
                rc.charge = pc.model;
                rc.source = "plan";
            } else {
                throw new Park("no_charge_for_meter", "plan " + plan.id + " v" + plan.version + " has no charge for " + m.meter);
            }
            Charge.validate(rc.charge);
            rc.tax_code = pc != null && pc.taxCode != null ? pc.taxCode : plan.taxCode;
            rc.unit = null;
            charges.add(rc);
        }
        if (!plan.currency.equals(sub.currency)) {
            throw new Park("currency_mismatch", "subscription " + sub.currency + ", plan " + plan.currency);
        }
        Model.Enriched e = new Model.Enriched();
        e.event = v;
        e.customer = customer;
        e.subscription_id = sub.id;
        e.plan_id = plan.id;
        e.plan_version = plan.version;
        e.currency = sub.currency;
        e.legal_entity = sub.legalEntity;
        e.time_zone = sub.timeZone;
        e.billing_anchor_day = sub.anchorDay;
        e.subscription_end = sub.endText;
        e.billing_period = Cal.period(sub.anchorDay, sub.zone, time);
        e.local_day = Cal.day(sub.zone, time);
        e.gl_accounts = plan.gl;
        e.tax_code = plan.taxCode;
        e.minimum_commitment = sub.minimumCommitment;
        e.base_fee = plan.baseFee;
        e.charges = charges;
        return e;
    }
}
