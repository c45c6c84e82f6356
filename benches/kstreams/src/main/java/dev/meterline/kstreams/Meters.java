package dev.meterline.kstreams;

import com.fasterxml.jackson.databind.JsonNode;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * The meters K supports, read from a meters.toml like meterline's
 * (topology/meters.toml): aggregation COUNT, SUM or MAX, value_property and
 * group_by as simple JSONPaths ($.a.b). Anything else is refused at startup.
 */
final class Meters {
    static final class Meter {
        final String slug;
        final String eventType;
        final String aggregation;
        final String[] valuePath;
        /** group name -> path, sorted by name. */
        final TreeMap<String, String[]> groupBy;

        Meter(String slug, String eventType, String aggregation, String[] valuePath, TreeMap<String, String[]> groupBy) {
            this.slug = slug;
            this.eventType = eventType;
            this.aggregation = aggregation;
            this.valuePath = valuePath;
            this.groupBy = groupBy;
        }
    }

    /** event type -> meters sorted by slug. */
    final Map<String, List<Meter>> byEventType = new TreeMap<>();
    final Map<String, Meter> bySlug = new TreeMap<>();

    List<Meter> metersFor(String eventType) {
        return byEventType.getOrDefault(eventType, List.of());
    }

    /** The benchmark scenario's meters (benches/scenario/meters.toml). */
    static Meters scenario() {
        Meters m = new Meters();
        TreeMap<String, String[]> region = new TreeMap<>();
        region.put("region", path("$.region"));
        m.add(new Meter("api_calls", "api.request", "COUNT", null, region));
        TreeMap<String, String[]> model = new TreeMap<>();
        model.put("model", path("$.model"));
        m.add(new Meter("tokens", "llm.tokens", "SUM", path("$.tokens"), model));
        return m;
    }

    private void add(Meter meter) {
        if (bySlug.put(meter.slug, meter) != null) {
            throw new IllegalArgumentException("meter slug `" + meter.slug + "` is declared more than once");
        }
        List<Meter> list = byEventType.computeIfAbsent(meter.eventType, k -> new ArrayList<>());
        list.add(meter);
        list.sort((a, b) -> a.slug.compareTo(b.slug));
    }

    private static final Pattern KV = Pattern.compile("\\s*([A-Za-z0-9_]+)\\s*=\\s*(.+?)\\s*");
    private static final Pattern INLINE = Pattern.compile("\\s*([A-Za-z0-9_]+|\"[^\"]*\")\\s*=\\s*\"([^\"]*)\"\\s*");

    /** Parses the subset of TOML a meters file uses; refuses what K does not implement. */
    static Meters load(Path file) throws IOException {
        Meters meters = new Meters();
        List<Map<String, String>> blocks = new ArrayList<>();
        Map<String, String> current = null;
        int n = 0;
        for (String raw : Files.readAllLines(file)) {
            n++;
            String line = stripComment(raw).trim();
            if (line.isEmpty()) continue;
            if (line.equals("[[meter]]")) {
                current = new LinkedHashMap<>();
                blocks.add(current);
                continue;
            }
            if (line.startsWith("[")) {
                throw new IllegalArgumentException(file + ":" + n + ": K supports only [[meter]] tables, not " + line);
            }
            Matcher m = KV.matcher(line);
            if (current == null || !m.matches()) {
                throw new IllegalArgumentException(file + ":" + n + ": cannot parse: " + raw);
            }
            current.put(m.group(1), m.group(2));
        }
        for (Map<String, String> b : blocks) {
            String slug = unquote(b.get("slug"));
            String type = unquote(b.get("event_type"));
            String agg = unquote(b.get("aggregation"));
            if (slug == null || type == null || agg == null) {
                throw new IllegalArgumentException(file + ": a meter needs slug, event_type and aggregation");
            }
            for (String k : b.keySet()) {
                if (!List.of("slug", "event_type", "aggregation", "value_property", "group_by", "description").contains(k)) {
                    throw new IllegalArgumentException(file + ": meter " + slug + ": K does not support `" + k + "`");
                }
            }
            if (!List.of("COUNT", "SUM", "MAX").contains(agg)) {
                throw new IllegalArgumentException(file + ": meter " + slug + ": K supports COUNT, SUM and MAX, not " + agg);
            }
            String vp = unquote(b.get("value_property"));
            if (!agg.equals("COUNT") && vp == null) {
                throw new IllegalArgumentException(file + ": meter " + slug + " needs a value_property");
            }
            TreeMap<String, String[]> groupBy = new TreeMap<>();
            String gb = b.get("group_by");
            if (gb != null) {
                gb = gb.trim();
                if (!gb.startsWith("{") || !gb.endsWith("}")) {
                    throw new IllegalArgumentException(file + ": meter " + slug + ": group_by must be an inline table");
                }
                String inner = gb.substring(1, gb.length() - 1).trim();
                if (!inner.isEmpty()) {
                    for (String part : inner.split(",")) {
                        Matcher m = INLINE.matcher(part);
                        if (!m.matches()) {
                            throw new IllegalArgumentException(file + ": meter " + slug + ": cannot parse group_by " + gb);
                        }
                        String name = m.group(1).startsWith("\"") ? unquote(m.group(1)) : m.group(1);
                        groupBy.put(name, path(m.group(2)));
                    }
                }
            }
            meters.add(new Meter(slug, type, agg, vp == null ? null : path(vp), groupBy));
        }
        return meters;
    }

    private static String stripComment(String line) {
        boolean inString = false;
        for (int i = 0; i < line.length(); i++) {
            char c = line.charAt(i);
            if (c == '"') inString = !inString;
            if (c == '#' && !inString) return line.substring(0, i);
        }
        return line;
    }

    private static String unquote(String v) {
        if (v == null) return null;
        v = v.trim();
        if (v.length() >= 2 && v.startsWith("\"") && v.endsWith("\"")) return v.substring(1, v.length() - 1);
        throw new IllegalArgumentException("expected a quoted string: " + v);
    }

    private static final Pattern SEGMENT = Pattern.compile("[A-Za-z_][A-Za-z0-9_-]*");

    /** A JSONPath of the form $.a.b (the only form K supports). */
    static String[] path(String text) {
        if (!text.startsWith("$.")) {
            throw new IllegalArgumentException("K supports JSONPaths of the form $.a.b, not " + text);
        }
        String[] parts = text.substring(2).split("\\.", -1);
        for (String p : parts) {
            if (!SEGMENT.matcher(p).matches()) {
                throw new IllegalArgumentException("K supports JSONPaths of the form $.a.b, not " + text);
            }
        }
        return parts;
    }

    /** The node at {@code path} in {@code data}, or null if absent. */
    static JsonNode get(JsonNode data, String[] path) {
        JsonNode n = data;
        for (String p : path) {
            if (n == null || !n.isObject()) return null;
            n = n.get(p);
        }
        return n;
    }
}
