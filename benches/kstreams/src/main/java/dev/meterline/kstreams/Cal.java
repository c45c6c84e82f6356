package dev.meterline.kstreams;

import java.time.Instant;
import java.time.LocalDate;
import java.time.YearMonth;
import java.time.ZoneId;

/**
 * Local days and billing periods in a subscription's time zone, as
 * meterline's src/calendar.rs: half-open UTC intervals between local
 * midnights (the first instant at or after local midnight), a billing
 * period running from the anchor day of one month (clamped to the month's
 * length) to that of the next; ids are the local start date.
 */
final class Cal {
    private Cal() {}

    static Instant midnight(LocalDate d, ZoneId z) {
        return d.atStartOfDay(z).toInstant();
    }

    static Model.Window day(ZoneId z, Instant t) {
        LocalDate d = LocalDate.ofInstant(t, z);
        Instant start = midnight(d, z);
        if (t.isBefore(start)) {
            d = d.minusDays(1);
            start = midnight(d, z);
        }
        return new Model.Window(d.toString(), Json.time(start), Json.time(midnight(d.plusDays(1), z)));
    }

    private static LocalDate anchored(YearMonth ym, int anchor) {
        return ym.atDay(Math.min(anchor, ym.lengthOfMonth()));
    }

    static Model.Window period(int anchor, ZoneId z, Instant t) {
        LocalDate local = LocalDate.ofInstant(t, z);
        YearMonth ym = YearMonth.from(local);
        LocalDate startDate = anchored(ym, anchor);
        Instant start = midnight(startDate, z);
        if (t.isBefore(start)) {
            ym = ym.minusMonths(1);
            startDate = anchored(ym, anchor);
            start = midnight(startDate, z);
        } else {
            Instant next = midnight(anchored(ym.plusMonths(1), anchor), z);
            if (!t.isBefore(next)) {
                ym = ym.plusMonths(1);
                startDate = anchored(ym, anchor);
                start = next;
            }
        }
        Instant end = midnight(anchored(ym.plusMonths(1), anchor), z);
        return new Model.Window(startDate.toString(), Json.time(start), Json.time(end));
    }
}
