package dev.meterline.kstreams;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.CountDownLatch;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.BytesDeserializer;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;

/**
 * K: meterline's five-stage topology (validate -> enrich -> rate ->
 * aggregate -> post) with Kafka Streams, exactly_once_v2, RocksDB stores.
 * By default the stages are joined by topics as meterline's are
 * (&lt;ns&gt;kstreams.usage.validated, .enriched, .rated, .windows); --fused
 * chains them in one sub-topology instead.
 */
public final class Main {
    static final java.util.concurrent.atomic.AtomicLong IN_VALIDATE = new java.util.concurrent.atomic.AtomicLong();
    static final java.util.concurrent.atomic.AtomicLong IN_ENRICH = new java.util.concurrent.atomic.AtomicLong();
    static final java.util.concurrent.atomic.AtomicLong IN_RATE = new java.util.concurrent.atomic.AtomicLong();
    static final java.util.concurrent.atomic.AtomicLong IN_AGGREGATE = new java.util.concurrent.atomic.AtomicLong();
    static final java.util.concurrent.atomic.AtomicLong IN_POST = new java.util.concurrent.atomic.AtomicLong();

    static final String[] OUTPUT_TOPICS = {
        "usage.validated", "usage.enriched", "usage.rated", "usage.windows", "finance.postings", "dlq",
        "usage.exceptions"};

    public static void main(String[] args) throws Exception {
        Config cfg;
        Meters meters;
        try {
            cfg = Config.parse(args);
            meters = cfg.metersFile == null ? Meters.scenario() : Meters.load(cfg.metersFile);
        } catch (Exception e) {
            System.err.println("meterline-kstreams: error: " + e.getMessage());
            System.exit(2);
            return;
        }
        String ns = cfg.namespace;
        String k = ns + "kstreams.";
        createTopics(cfg, ns + "usage.events", k);

        Topology topology = build(cfg, meters, ns, k);
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, ns + "kstreams");
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, cfg.bootstrap);
        p.put(StreamsConfig.STATE_DIR_CONFIG, cfg.stateDir);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, cfg.commitIntervalMs);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, cfg.threads);
        p.put(StreamsConfig.DEFAULT_KEY_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        p.put(StreamsConfig.DEFAULT_VALUE_SERDE_CLASS_CONFIG, Serdes.ByteArraySerde.class);
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, -1);

        KafkaStreams streams = new KafkaStreams(topology, p);
        CountDownLatch done = new CountDownLatch(1);
        int[] exit = {0};
        streams.setUncaughtExceptionHandler(e -> {
            System.err.println("meterline-kstreams: error: " + e);
            e.printStackTrace();
            exit[0] = 1;
            return StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setStateListener((now, before) -> {
            System.err.println("meterline-kstreams: state " + before + " -> " + now);
            if (now == KafkaStreams.State.ERROR || now == KafkaStreams.State.NOT_RUNNING) done.countDown();
        });
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            streams.close(Duration.ofSeconds(60));
            done.countDown();
        }, "shutdown"));
        System.err.println(topology.describe());
        streams.start();
        Thread stats = new Thread(() -> {
            String last = "";
            long t0 = System.nanoTime();
            while (true) {
                try {
                    Thread.sleep(1_000);
                } catch (InterruptedException e) {
                    return;
                }
                String s = "records in: validate " + IN_VALIDATE.get() + ", enrich " + IN_ENRICH.get()
                    + ", rate " + IN_RATE.get() + ", aggregate " + IN_AGGREGATE.get() + ", post " + IN_POST.get()
                    + "; duplicates " + ValidateProcessor.DUPLICATES.get() + ", parked " + EnrichProcessor.PARKED.get();
                if (!s.equals(last)) {
                    System.err.printf("meterline-kstreams: t=%.1fs %s%n", (System.nanoTime() - t0) / 1e9, s);
                }
                last = s;
                continue;
            }
        }, "stats");
        stats.setDaemon(true);
        stats.start();
        done.await();
        System.exit(exit[0]);
    }

    private static StoreBuilder<KeyValueStore<Bytes, byte[]>> store(String name) {
        return Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(name), Serdes.Bytes(), Serdes.ByteArray());
    }

    static Topology build(Config cfg, Meters meters, String ns, String k) {
        Topology t = new Topology();
        String[][] refs = {
            {RefData.CUSTOMERS, ns + "ref.customers"},
            {RefData.SUBSCRIPTIONS, ns + "ref.subscriptions"},
            {RefData.PLANS, ns + "ref.plans"}};
        for (String[] r : refs) {
            String name = r[0];
            t.addGlobalStore(store(name).withLoggingDisabled(), name + "-source", new BytesDeserializer(),
                new ByteArrayDeserializer(), r[1], name + "-updater", () -> new RefData.Updater(name));
        }
        ByteArrayDeserializer de = new ByteArrayDeserializer();
        ByteArraySerializer se = new ByteArraySerializer();
        boolean fused = cfg.fused;

        t.addSource("validate-in", de, de, ns + "usage.events");
        String validateOut = fused ? "enrich" : "validated-out";
        t.addProcessor("validate", () -> new ValidateProcessor(meters, cfg, validateOut, "validate-dlq"), "validate-in");
        t.addStateStore(store(ValidateProcessor.STORE), "validate");
        t.addSink("validate-dlq", k + "dlq", se, se, "validate");

        String enrichIn = "validate";
        if (!fused) {
            t.addSink("validated-out", k + "usage.validated", se, se, "validate");
            t.addSource("enrich-in", de, de, k + "usage.validated");
            enrichIn = "enrich-in";
        }
        String enrichOut = fused ? "rate" : "enriched-out";
        t.addProcessor("enrich", () -> new EnrichProcessor(meters, enrichOut, "enrich-exceptions", "enrich-dlq"), enrichIn);
        t.addSink("enrich-exceptions", k + "usage.exceptions", se, se, "enrich");
        t.addSink("enrich-dlq", k + "dlq", se, se, "enrich");

        String rateIn = "enrich";
        if (!fused) {
            t.addSink("enriched-out", k + "usage.enriched", se, se, "enrich");
            t.addSource("rate-in", de, de, k + "usage.enriched");
            rateIn = "rate-in";
        }
        String rateOut = fused ? "aggregate" : "rated-out";
        t.addProcessor("rate", () -> new RateProcessor(rateOut, "rate-dlq"), rateIn);
        t.addStateStore(store(RateProcessor.STORE), "rate");
        t.addSink("rate-dlq", k + "dlq", se, se, "rate");

        String aggregateIn = "rate";
        if (!fused) {
            t.addSink("rated-out", k + "usage.rated", se, se, "rate");
            t.addSource("aggregate-in", de, de, k + "usage.rated");
            aggregateIn = "aggregate-in";
        }
        String aggregateOut = fused ? "post" : "windows-out";
        t.addProcessor("aggregate", () -> new AggregateProcessor(cfg, aggregateOut, "aggregate-dlq"), aggregateIn);
        t.addStateStore(store(AggregateProcessor.STORE), "aggregate");
        t.addSink("aggregate-dlq", k + "dlq", se, se, "aggregate");

        String postIn = "aggregate";
        if (!fused) {
            t.addSink("windows-out", k + "usage.windows", se, se, "aggregate");
            t.addSource("post-in", de, de, k + "usage.windows");
            postIn = "post-in";
        }
        t.addProcessor("post", () -> new PostProcessor("postings-out", "post-dlq"), postIn);
        t.addStateStore(store(PostProcessor.STORE), "post");
        t.addSink("post-dlq", k + "dlq", se, se, "post");
        t.addSink("postings-out", k + "finance.postings", se, se, "post");
        return t;
    }

    /** Creates K's output topics, if missing, with the input topic's partition count and replication. */
    static void createTopics(Config cfg, String input, String k) throws Exception {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, cfg.bootstrap);
        try (Admin admin = Admin.create(p)) {
            TopicDescription d = admin.describeTopics(List.of(input)).allTopicNames().get().get(input);
            int partitions = d.partitions().size();
            short replication = (short) d.partitions().get(0).replicas().size();
            Set<String> existing = admin.listTopics().names().get();
            List<NewTopic> missing = new ArrayList<>();
            for (String name : OUTPUT_TOPICS) {
                String topic = k + name;
                if (!existing.contains(topic)) {
                    NewTopic nt = new NewTopic(topic, partitions, replication);
                    if (name.equals("finance.postings")) nt.configs(Map.of("retention.ms", "-1"));
                    missing.add(nt);
                }
            }
            if (!missing.isEmpty()) {
                admin.createTopics(missing).all().get();
                System.err.println("meterline-kstreams: created " + missing.size() + " topic(s) with " + partitions
                    + " partitions");
            }
        }
    }
}
