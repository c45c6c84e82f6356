package dev.meterline.kstreams;

import java.math.BigDecimal;

/**
 * Pricing of a cumulative period quantity, as meterline's
 * src/rating/charge.rs: per_unit, graduated and volume (K does not
 * implement package). The marginal amount of an event is
 * price(after) - price(before), exact, unrounded.
 */
final class Charge {
    private Charge() {}

    static final class RatingException extends RuntimeException {
        final String code;
        RatingException(String code, String message) {
            super(message);
            this.code = code;
        }
    }

    static void validate(Model.ChargeModel m) {
        switch (m.model) {
            case "per_unit":
                if (m.unit_price == null || m.unit_price.signum() < 0) {
                    throw new RatingException("negative_price", "unit_price must not be negative");
                }
                return;
            case "graduated":
            case "volume": {
                if (m.tiers == null || m.tiers.isEmpty()) throw new RatingException("no_tiers", "no tiers");
                BigDecimal previous = null;
                int last = m.tiers.size() - 1;
                for (int i = 0; i <= last; i++) {
                    Model.Tier t = m.tiers.get(i);
                    if (t.unit_price.signum() < 0 || (t.flat_fee != null && t.flat_fee.signum() < 0)) {
                        throw new RatingException("negative_price", "tier " + i + ": negative price");
                    }
                    if (t.up_to == null) {
                        if (i != last) throw new RatingException("open_tier_not_last", "tier " + i + " is open");
                    } else {
                        if (i == last) throw new RatingException("last_tier_not_open", "the last tier must be open");
                        if (previous == null && t.up_to.signum() <= 0) {
                            throw new RatingException("tier_bound_not_positive", "tier " + i);
                        }
                        if (previous != null && t.up_to.compareTo(previous) <= 0) {
                            throw new RatingException("tier_bounds_not_increasing", "tier " + i);
                        }
                        previous = t.up_to;
                    }
                }
                return;
            }
            default:
                throw new RatingException("unsupported_charge_model", "K does not implement the " + m.model + " model");
        }
    }

    private static BigDecimal line(BigDecimal quantity, BigDecimal unitPrice, BigDecimal flatFee) {
        return Dec.add(Dec.mul(quantity, unitPrice), flatFee == null ? BigDecimal.ZERO : flatFee);
    }

    static BigDecimal price(Model.ChargeModel m, BigDecimal q) {
        validate(m);
        if (q.signum() < 0) throw new RatingException("negative_quantity", "quantity " + q + " is negative");
        if (q.signum() == 0) return BigDecimal.ZERO;
        BigDecimal total = BigDecimal.ZERO;
        switch (m.model) {
            case "per_unit":
                return Dec.add(total, line(q, m.unit_price, null));
            case "graduated": {
                BigDecimal lower = BigDecimal.ZERO;
                for (Model.Tier t : m.tiers) {
                    if (q.compareTo(lower) <= 0) break;
                    BigDecimal top = (t.up_to != null && t.up_to.compareTo(q) < 0) ? t.up_to : q;
                    total = Dec.add(total, line(Dec.sub(top, lower), t.unit_price, t.flat_fee));
                    if (t.up_to == null) break;
                    lower = t.up_to;
                }
                return total;
            }
            case "volume": {
                for (Model.Tier t : m.tiers) {
                    if (t.up_to == null || q.compareTo(t.up_to) <= 0) {
                        return Dec.add(total, line(q, t.unit_price, t.flat_fee));
                    }
                }
                throw new RatingException("last_tier_not_open", "the last tier must be open");
            }
            default:
                throw new RatingException("unsupported_charge_model", m.model);
        }
    }

    static BigDecimal marginal(Model.ChargeModel m, BigDecimal before, BigDecimal after) {
        if (before.compareTo(after) == 0) {
            validate(m);
            if (after.signum() < 0) throw new RatingException("negative_quantity", "negative quantity");
            return BigDecimal.ZERO;
        }
        return Dec.sub(price(m, after), price(m, before));
    }
}
