package dev.meterline.kstreams;

import java.nio.file.Path;

/** K's command line (defaults as meterline's src/config/mod.rs). */
final class Config {
    String bootstrap = "127.0.0.1:9092";
    String namespace = "";
    String stateDir = "state-kstreams";
    Path metersFile;
    long gracePeriodS = 600;
    long idleAdvanceS = 60;
    long maxEventAgeDays = 35;
    long maxClockSkewS = 300;
    long dedupeHorizonDays = -1;
    long commitIntervalMs = 100;
    int threads = Runtime.getRuntime().availableProcessors();
    boolean fused = false;

    static final String USAGE = String.join("\n",
        "usage: java -jar meterline-kstreams.jar --bootstrap HOST:PORT --namespace NS --state-dir DIR",
        "         [--meters-file FILE] [--grace-period-s N] [--idle-advance-s N] [--max-event-age-days N]",
        "         [--max-clock-skew-s N] [--dedupe-horizon-days N] [--commit-interval-ms N] [--threads N] [--fused]",
        "Reads <NS>usage.events and <NS>ref.{customers,subscriptions,plans}; writes <NS>kstreams.*;",
        "application.id <NS>kstreams. Runs until SIGTERM.");

    static Config parse(String[] args) {
        Config c = new Config();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (a.equals("--fused")) {
                c.fused = true;
                continue;
            }
            if (a.equals("-h") || a.equals("--help")) {
                System.out.println(USAGE);
                System.exit(0);
            }
            if (i + 1 >= args.length) throw new IllegalArgumentException(a + " needs a value\n" + USAGE);
            String v = args[++i];
            switch (a) {
                case "--bootstrap": c.bootstrap = v; break;
                case "--namespace": c.namespace = v; break;
                case "--state-dir": c.stateDir = v; break;
                case "--meters-file": c.metersFile = Path.of(v); break;
                case "--grace-period-s": c.gracePeriodS = Long.parseLong(v); break;
                case "--idle-advance-s": c.idleAdvanceS = Long.parseLong(v); break;
                case "--max-event-age-days": c.maxEventAgeDays = Long.parseLong(v); break;
                case "--max-clock-skew-s": c.maxClockSkewS = Long.parseLong(v); break;
                case "--dedupe-horizon-days": c.dedupeHorizonDays = Long.parseLong(v); break;
                case "--commit-interval-ms": c.commitIntervalMs = Long.parseLong(v); break;
                case "--threads": c.threads = Integer.parseInt(v); break;
                default: throw new IllegalArgumentException("unknown option " + a + "\n" + USAGE);
            }
        }
        if (c.dedupeHorizonDays < 0) {
            // must cover max_event_age_days + max_clock_skew_s (meterline refuses less)
            c.dedupeHorizonDays = Math.max(40, c.maxEventAgeDays + 1);
        }
        return c;
    }
}
