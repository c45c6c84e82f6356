package dev.meterline.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import java.math.BigDecimal;
import java.util.List;
import java.util.TreeMap;

/**
 * The records K passes between its stages (JSON via {@link Json#MAPPER}),
 * mirroring meterline's contracts: ValidatedEvent (src/event.rs),
 * EnrichedEvent (src/stages/enrich/resolve.rs), RatedEvent
 * (src/stages/rate/mod.rs) and ClosedWindow (src/stages/aggregate/mod.rs).
 * Field names are meterline's; instants are canonical RFC 3339 strings and
 * decimals strings with their scale.
 */
final class Model {
    private Model() {}

    public static final class Measure {
        public String meter;
        public BigDecimal value;
        public String unique_value;
        public TreeMap<String, String> group;
    }

    public static final class Origin {
        public String topic;
        public int partition;
        public long offset;
        public String encoding;
    }

    public static final class Validated {
        public String source;
        public String id;
        public String type;
        public String subject;
        public String time;
        public List<Measure> measures;
        public JsonNode data;
        public Origin origin;
    }

    public static final class Window {
        public String id;
        public String start;
        public String end;

        Window() {}

        Window(String id, String start, String end) {
            this.id = id;
            this.start = start;
            this.end = end;
        }

        long endMs() {
            return Json.parseTime(end).toEpochMilli();
        }
    }

    public static final class CustomerInfo {
        public String id;
        public String name;
        public String legal_entity;
        public String erp_customer_id;
    }

    public static final class Tier {
        public BigDecimal up_to;
        public BigDecimal unit_price;
        public BigDecimal flat_fee;
    }

    /** per_unit {unit_price} | graduated {tiers} | volume {tiers}. */
    public static final class ChargeModel {
        public String model;
        public BigDecimal unit_price;
        public List<Tier> tiers;
    }

    public static final class GlAccounts {
        public String usage_revenue;
        public String unbilled_receivable;
        public String receivable;
    }

    public static final class ResolvedCharge {
        public String meter;
        public String aggregation;
        public ChargeModel charge;
        public String source;
        public String tax_code;
        public String unit;
    }

    public static final class Enriched {
        public Validated event;
        public CustomerInfo customer;
        public String subscription_id;
        public String plan_id;
        public int plan_version;
        public String currency;
        public String legal_entity;
        public String time_zone;
        public int billing_anchor_day;
        public String subscription_end;
        public Window billing_period;
        public Window local_day;
        public GlAccounts gl_accounts;
        public String tax_code;
        public BigDecimal minimum_commitment;
        public BigDecimal base_fee;
        public List<ResolvedCharge> charges;
    }

    public static final class RatedMeasure {
        public String meter;
        public String segment_key;
        public String segment_id;
        public int plan_version;
        public String aggregation;
        public BigDecimal quantity_before;
        public BigDecimal quantity_after;
        public BigDecimal marginal_quantity;
        public BigDecimal marginal_amount;
    }

    public static final class Rated {
        public String source;
        public String id;
        public String customer_id;
        public List<RatedMeasure> measures;
        public Enriched enriched;
    }

    public static final class SegmentInfo {
        public String segment_id;
        public String segment_key;
        public String meter;
        public int plan_version;
        public TreeMap<String, String> group;
        public String aggregation;
        public String tax_code;
        public String unit;
    }

    public static final class Clearing {
        public Window period;
        public Window adjusts;
    }

    /** kind: day | billing_period | period_close. */
    public static final class ClosedWindow {
        public String kind;
        public Window window;
        public Window adjusts;
        public Clearing clearing;
        public CustomerInfo customer;
        public String subscription_id;
        public String plan_id;
        public String legal_entity;
        public String currency;
        public String time_zone;
        public int billing_anchor_day;
        public GlAccounts gl_accounts;
        public SegmentInfo segment;
        public int plan_version;
        public String tax_code;
        public BigDecimal base_fee;
        public BigDecimal minimum_commitment;
        public BigDecimal quantity;
        public BigDecimal amount;
        public long event_count;
        public String lineage_digest;
        public long closed_at_watermark_ms;
    }

    /** Rate's per-segment state. */
    public static final class SegmentState {
        public String aggregation;
        public BigDecimal quantity;
    }

    /** Aggregate's per-partition clock. */
    public static final class PartitionClock {
        public Long max_event_ms;
        public Long watermark_ms;
    }
}
