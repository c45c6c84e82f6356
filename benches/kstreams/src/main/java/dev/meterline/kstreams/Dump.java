package dev.meterline.kstreams;

import java.io.BufferedOutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.PartitionInfo;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * Prints every committed record of a topic as "key TAB value" lines (read_committed,
 * from the beginning to the end offsets at start), the input format of compare.py:
 * java -cp meterline-kstreams.jar dev.meterline.kstreams.Dump --bootstrap B --topic T
 */
public final class Dump {
    public static void main(String[] args) {
        String bootstrap = "127.0.0.1:9092";
        String topic = null;
        for (int i = 0; i + 1 < args.length; i += 2) {
            if (args[i].equals("--bootstrap")) bootstrap = args[i + 1];
            else if (args[i].equals("--topic")) topic = args[i + 1];
        }
        if (topic == null) {
            System.err.println("usage: Dump --bootstrap HOST:PORT --topic TOPIC");
            System.exit(2);
        }
        Properties p = new Properties();
        p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        PrintStream out = new PrintStream(new BufferedOutputStream(System.out, 1 << 16), false, StandardCharsets.UTF_8);
        long n = 0;
        try (KafkaConsumer<byte[], byte[]> c = new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
            List<TopicPartition> tps = new ArrayList<>();
            for (PartitionInfo pi : c.partitionsFor(topic)) tps.add(new TopicPartition(topic, pi.partition()));
            c.assign(tps);
            c.seekToBeginning(tps);
            Map<TopicPartition, Long> end = c.endOffsets(tps);
            int idle = 0;
            while (idle < 20) {
                boolean done = true;
                for (TopicPartition tp : tps) if (c.position(tp) < end.get(tp)) done = false;
                if (done) break;
                var records = c.poll(Duration.ofMillis(500));
                idle = records.isEmpty() ? idle + 1 : 0;
                for (ConsumerRecord<byte[], byte[]> r : records) {
                    out.print(r.key() == null ? "" : new String(r.key(), StandardCharsets.UTF_8));
                    out.print('\t');
                    out.print(r.value() == null ? "" : new String(r.value(), StandardCharsets.UTF_8));
                    out.print('\n');
                    n++;
                }
            }
        }
        out.flush();
        System.err.println("dump: " + n + " records from " + topic);
    }
}
