//! Event-time windows for billing, in a subscription's IANA time zone.
//!
//! Usage is billed per *local* calendar unit of the customer: a "day" or a
//! "month" starts at local midnight in the subscription's time zone
//! ([`chrono_tz::Tz`]), not at UTC midnight. Every window produced here is a
//! half-open UTC interval `[start, end)`, so consecutive windows tile the
//! timeline without gaps or overlaps and an instant exactly on a boundary
//! belongs to the *later* window.
//!
//! # Local midnight
//!
//! All boundaries are "local midnight of some date", resolved by
//! [`local_midnight`]:
//!
//! * normally there is exactly one such instant;
//! * when a fall-back makes midnight occur twice (e.g. `America/Havana`
//!   falls back from 01:00 to 00:00), the **first** occurrence is the
//!   boundary, so the repeated hour belongs to the new day;
//! * when a spring-forward skips midnight (e.g. `America/Santiago` or
//!   `America/Havana` jump from 00:00 to 01:00), the boundary is the
//!   **instant the clocks jump**, i.e. the first instant whose local time is
//!   at or after midnight.
//!
//! Consequently a [`LocalDay`] may be 23 or 25 hours long (or other lengths
//! in zones with unusual shifts), and a date that a zone skipped entirely
//! (`Pacific/Apia` skipped 2011-12-30) is an empty day whose start equals
//! its end.
//!
//! # Billing periods
//!
//! A [`BillingPeriod`] is a calendar month measured from the subscription's
//! billing anchor day (1..=31, [`MIN_ANCHOR_DAY`]..=[`MAX_ANCHOR_DAY`]): it
//! starts at local midnight of the anchor day of one month and ends at local
//! midnight of the anchor day of the next month. In a month shorter than the
//! anchor the anchor is clamped to the month's last day, for that month only:
//! with anchor 31 the periods start on Jan 31, Feb 28 (Feb 29 in a leap
//! year), Mar 31, Apr 30, ... The period's id is its local start date as
//! `YYYY-MM-DD` (e.g. `2026-02-28`); it is unique for one subscription
//! (anchor and time zone), not globally.
//!
//! [`periods_overlapping`] lists every period that overlaps a half-open range
//! `[a, b)`, which is what a base fee "charged for every billing period the
//! subscription overlaps" needs.
//!
//! # Range and errors
//!
//! Windows are supported for local dates in years
//! [`MIN_SUPPORTED_YEAR`]..=[`MAX_SUPPORTED_YEAR`]; outside that,
//! and for anything else that cannot be computed, functions return a
//! [`CalendarError`] rather than panic. [`CalendarError::code`] is a stable
//! `snake_case` identifier.

use std::fmt;

use chrono::{
    DateTime, Datelike, MappedLocalTime, Months, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeDelta, TimeZone, Utc,
};
use chrono_tz::Tz;

/// Smallest valid billing anchor day.
pub const MIN_ANCHOR_DAY: u8 = 1;
/// Largest valid billing anchor day; months shorter than this clamp it.
pub const MAX_ANCHOR_DAY: u8 = 31;
/// First calendar year (of a window's local start date) that is supported.
pub const MIN_SUPPORTED_YEAR: i32 = 1;
/// Last calendar year (of a window's local start date) that is supported.
/// Far inside chrono's own limits, so the arithmetic near the edges of the
/// supported range can never reach chrono's panicking corners.
pub const MAX_SUPPORTED_YEAR: i32 = 9999;

/// Format of window ids: the local start date, ISO 8601 `YYYY-MM-DD`.
const DATE_ID_FORMAT: &str = "%Y-%m-%d";

/// Half-width of the UTC search interval used to find the instant a
/// spring-forward jumps over local midnight. It must exceed the magnitude of
/// every UTC offset (tzdb uses -12 h..+14 h) so that the interval is
/// guaranteed to start before and end after the jump; a skipped day such as
/// Apia's 24-hour jump is also covered.
const GAP_SEARCH_RADIUS_SECS: i64 = 26 * 60 * 60;

/// How many neighbouring windows [`LocalDay::containing`] and
/// [`BillingPeriod::containing`] may step to when the local date of an
/// instant does not already give the window containing it. With real tzdb
/// data the first guess is right (no step); a step is only needed if a zone
/// ever falls back across midnight, and a correct answer is always at most
/// one window away.
const MAX_NEIGHBOUR_STEPS: usize = 2;

/// Errors of the calendar module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The billing anchor day is not in 1..=31.
    #[error("invalid billing anchor day {0}: must be between 1 and 31")]
    InvalidAnchorDay(u8),
    /// [`parse_tz`] was given a name that is not an IANA time zone.
    #[error("unknown time zone {0:?}: not an IANA time zone name")]
    UnknownTimeZone(String),
    /// A date or instant lies outside the supported range (local years
    /// 1..=9999) or outside what chrono can represent.
    #[error("{0} is outside the supported calendar range (local years 1 to 9999)")]
    OutOfRange(String),
    /// A range `[start, end)` whose start lies after its end.
    #[error("invalid range: start {start} is after end {end}")]
    InvalidRange {
        /// Start of the rejected range.
        start: DateTime<Utc>,
        /// End of the rejected range.
        end: DateTime<Utc>,
    },
    /// The time zone data gave no consistent window boundary; not expected
    /// with real tzdb data.
    #[error("cannot resolve the local midnight window of {date} in {tz}")]
    UnresolvableLocalTime {
        /// The local date whose boundary could not be resolved.
        date: NaiveDate,
        /// The time zone.
        tz: Tz,
    },
}

impl CalendarError {
    /// Stable machine-readable identifier of the error kind.
    pub const fn code(&self) -> &'static str {
        match self {
            CalendarError::InvalidAnchorDay(_) => reasons::INVALID_ANCHOR_DAY,
            CalendarError::UnknownTimeZone(_) => reasons::UNKNOWN_TIME_ZONE,
            CalendarError::OutOfRange(_) => reasons::OUT_OF_RANGE,
            CalendarError::InvalidRange { .. } => reasons::INVALID_RANGE,
            CalendarError::UnresolvableLocalTime { .. } => reasons::UNRESOLVABLE_LOCAL_TIME,
        }
    }
}

/// The codes of [`CalendarError`] (see [`crate::reason`]).
pub mod reasons {
    crate::reason_codes! {
        INVALID_ANCHOR_DAY => "invalid_anchor_day",
            "A billing anchor day is not between 1 and 31.";
        UNKNOWN_TIME_ZONE => "unknown_time_zone",
            "A time zone name is not an IANA time zone.";
        OUT_OF_RANGE => "out_of_range",
            "A date or instant lies outside the supported calendar range (local years 1 to 9999).";
        INVALID_RANGE => "invalid_range",
            "A range's start lies after its end.";
        UNRESOLVABLE_LOCAL_TIME => "unresolvable_local_time",
            "The time zone data gives no consistent local midnight (not expected with real tzdb data).";
    }

    /// One error of each kind, for tests that check codes against tables.
    #[cfg(test)]
    pub(crate) fn one_of_each() -> Vec<super::CalendarError> {
        use super::CalendarError as E;
        let all = vec![
            E::InvalidAnchorDay(0),
            E::UnknownTimeZone("x".into()),
            E::OutOfRange("x".into()),
            E::InvalidRange {
                start: chrono::DateTime::UNIX_EPOCH,
                end: chrono::DateTime::UNIX_EPOCH,
            },
            E::UnresolvableLocalTime {
                date: chrono::NaiveDate::MIN,
                tz: chrono_tz::UTC,
            },
        ];
        // A new kind fails to compile here: add it to the list above.
        for e in &all {
            match e {
                E::InvalidAnchorDay(_)
                | E::UnknownTimeZone(_)
                | E::OutOfRange(_)
                | E::InvalidRange { .. }
                | E::UnresolvableLocalTime { .. } => {}
            }
        }
        all
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn every_code_is_in_the_table() {
            for e in super::one_of_each() {
                assert!(super::CODES.contains(&e.code()), "{}", e.code());
            }
        }
    }
}

/// Parses an IANA time zone name such as `"America/New_York"` or `"UTC"`.
///
/// Matching is exact and case-sensitive (as in the tz database), so
/// `"america/new_york"` is rejected instead of silently guessed.
pub fn parse_tz(name: &str) -> Result<Tz, CalendarError> {
    name.parse::<Tz>()
        .map_err(|_| CalendarError::UnknownTimeZone(name.to_owned()))
}

/// The UTC instant at which local date `date` begins in `tz`: its local
/// midnight, the first occurrence if midnight is repeated by a fall-back,
/// or the instant the clocks jump if midnight is skipped by a
/// spring-forward (see the module docs).
///
/// # Errors
/// [`CalendarError::OutOfRange`] outside the supported years.
pub fn local_midnight(tz: Tz, date: NaiveDate) -> Result<DateTime<Utc>, CalendarError> {
    check_supported(date)?;
    midnight_utc(tz, date)
}

/// The local day of `tz` containing instant `t`. Same as
/// [`LocalDay::containing`].
pub fn day_containing(tz: Tz, t: DateTime<Utc>) -> Result<LocalDay, CalendarError> {
    LocalDay::containing(tz, t)
}

/// The billing period containing instant `t` for a subscription with
/// billing anchor `anchor_day` in time zone `tz`. Same as
/// [`BillingPeriod::containing`].
pub fn period_containing(
    anchor_day: u8,
    tz: Tz,
    t: DateTime<Utc>,
) -> Result<BillingPeriod, CalendarError> {
    BillingPeriod::containing(anchor_day, tz, t)
}

/// All billing periods that overlap the half-open range `[a, b)`, in order:
/// the period containing `a` up to and including the period containing the
/// last instant before `b`. An empty range (`a == b`) yields no periods.
///
/// # Errors
/// [`CalendarError::InvalidRange`] if `a > b`; otherwise the errors of
/// [`BillingPeriod::containing`] for the first and last period. Once this
/// returns `Ok`, iteration cannot fail.
pub fn periods_overlapping(
    anchor_day: u8,
    tz: Tz,
    a: DateTime<Utc>,
    b: DateTime<Utc>,
) -> Result<BillingPeriods, CalendarError> {
    if a > b {
        return Err(CalendarError::InvalidRange { start: a, end: b });
    }
    validate_anchor(anchor_day)?;
    if a == b {
        return Ok(BillingPeriods {
            next: None,
            last: None,
        });
    }
    let last_instant = b
        .checked_sub_signed(TimeDelta::nanoseconds(1))
        .ok_or_else(|| CalendarError::OutOfRange(b.to_rfc3339()))?;
    let first = BillingPeriod::containing(anchor_day, tz, a)?;
    let last = BillingPeriod::containing(anchor_day, tz, last_instant)?;
    Ok(BillingPeriods {
        next: Some(first),
        last: Some(last),
    })
}

/// One local calendar day of a time zone as a half-open UTC interval
/// `[start, end)`. Usually 24 hours; 23 or 25 around daylight-saving
/// switches, and empty for a date the zone skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalDay {
    date: NaiveDate,
    tz: Tz,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl LocalDay {
    /// The window of local date `date` in `tz`.
    ///
    /// # Errors
    /// [`CalendarError::OutOfRange`] outside the supported years.
    pub fn for_date(tz: Tz, date: NaiveDate) -> Result<Self, CalendarError> {
        check_supported(date)?;
        let next_date = date
            .succ_opt()
            .ok_or_else(|| CalendarError::OutOfRange(date.to_string()))?;
        Ok(LocalDay {
            date,
            tz,
            start: midnight_utc(tz, date)?,
            end: midnight_utc(tz, next_date)?,
        })
    }

    /// The local day containing `t`, i.e. `start <= t < end`.
    ///
    /// # Errors
    /// [`CalendarError::OutOfRange`] if `t`'s local date is outside the
    /// supported years.
    pub fn containing(tz: Tz, t: DateTime<Utc>) -> Result<Self, CalendarError> {
        let date = local_date_of(tz, t)?;
        let day = LocalDay::for_date(tz, date)?;
        // The local date already is the answer with real tz data; stepping is
        // a safety net that keeps `start <= t < end` true by construction.
        step_to_containing(day, t, date, tz)
    }

    /// The local calendar date.
    pub fn date(&self) -> NaiveDate {
        self.date
    }

    /// The time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// First instant of the day (inclusive).
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// First instant of the next day (exclusive end).
    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }

    /// Elapsed time from start to end (23 h or 25 h around DST switches).
    pub fn duration(&self) -> TimeDelta {
        self.end - self.start
    }

    /// Whether `start <= t < end`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    /// Stable id: the local date as `YYYY-MM-DD`.
    pub fn id(&self) -> String {
        self.date.format(DATE_ID_FORMAT).to_string()
    }

    /// The following local day; its start equals this day's end.
    pub fn next(&self) -> Result<Self, CalendarError> {
        let date = self
            .date
            .succ_opt()
            .ok_or_else(|| CalendarError::OutOfRange(self.date.to_string()))?;
        LocalDay::for_date(self.tz, date)
    }

    /// The preceding local day; its end equals this day's start.
    pub fn previous(&self) -> Result<Self, CalendarError> {
        let date = self
            .date
            .pred_opt()
            .ok_or_else(|| CalendarError::OutOfRange(self.date.to_string()))?;
        LocalDay::for_date(self.tz, date)
    }
}

/// A local calendar interval `[start, end)` that knows its neighbours: a
/// day, a billing period.
trait Neighbours: Sized {
    fn bounds(&self) -> (DateTime<Utc>, DateTime<Utc>);
    fn previous(&self) -> Result<Self, CalendarError>;
    fn next(&self) -> Result<Self, CalendarError>;
}

impl Neighbours for LocalDay {
    fn bounds(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        (self.start, self.end)
    }
    fn previous(&self) -> Result<Self, CalendarError> {
        LocalDay::previous(self)
    }
    fn next(&self) -> Result<Self, CalendarError> {
        LocalDay::next(self)
    }
}

impl Neighbours for BillingPeriod {
    fn bounds(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        (self.start, self.end)
    }
    fn previous(&self) -> Result<Self, CalendarError> {
        BillingPeriod::previous(self)
    }
    fn next(&self) -> Result<Self, CalendarError> {
        BillingPeriod::next(self)
    }
}

/// From `guess` (built for local date `date`), steps at most
/// [`MAX_NEIGHBOUR_STEPS`] neighbours towards `t`: the interval containing
/// it, or [`CalendarError::UnresolvableLocalTime`].
fn step_to_containing<I: Neighbours>(
    guess: I,
    t: DateTime<Utc>,
    date: NaiveDate,
    tz: Tz,
) -> Result<I, CalendarError> {
    let mut interval = guess;
    for _ in 0..MAX_NEIGHBOUR_STEPS {
        let (start, end) = interval.bounds();
        if t < start {
            interval = interval.previous()?;
        } else if t >= end {
            interval = interval.next()?;
        } else {
            return Ok(interval);
        }
    }
    let (start, end) = interval.bounds();
    if start <= t && t < end {
        Ok(interval)
    } else {
        Err(CalendarError::UnresolvableLocalTime { date, tz })
    }
}

impl fmt::Display for LocalDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.date.format(DATE_ID_FORMAT))
    }
}

/// One billing period of a subscription: from local midnight of the anchor
/// day of one month to local midnight of the anchor day of the next month,
/// as a half-open UTC interval `[start, end)`. See the module docs for the
/// clamping rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BillingPeriod {
    anchor_day: u8,
    tz: Tz,
    /// First day of the month in which the period starts; the identity of
    /// the period for stepping (independent of clamping).
    month: NaiveDate,
    start_date: NaiveDate,
    end_date: NaiveDate,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl BillingPeriod {
    /// The period that starts in calendar month `year`-`month` (1..=12).
    ///
    /// # Errors
    /// [`CalendarError::InvalidAnchorDay`], or [`CalendarError::OutOfRange`]
    /// for an invalid month or a year outside the supported range.
    pub fn starting_in_month(
        anchor_day: u8,
        tz: Tz,
        year: i32,
        month: u32,
    ) -> Result<Self, CalendarError> {
        validate_anchor(anchor_day)?;
        let first = NaiveDate::from_ymd_opt(year, month, 1)
            .ok_or_else(|| CalendarError::OutOfRange(format!("{year:04}-{month:02}")))?;
        BillingPeriod::build(anchor_day, tz, first)
    }

    /// The period containing `t`, i.e. `start <= t < end`.
    ///
    /// # Errors
    /// [`CalendarError::InvalidAnchorDay`] unless `anchor_day` is in 1..=31;
    /// [`CalendarError::OutOfRange`] if `t`'s local date is outside the
    /// supported years.
    pub fn containing(anchor_day: u8, tz: Tz, t: DateTime<Utc>) -> Result<Self, CalendarError> {
        validate_anchor(anchor_day)?;
        let date = local_date_of(tz, t)?;
        let this_month = first_of_month(date)?;
        // Before this month's (clamped) anchor day, t is still in the period
        // that started in the previous month.
        let start_month = if date >= anchor_date(anchor_day, this_month)? {
            this_month
        } else {
            shift_month(this_month, -1)?
        };
        let period = BillingPeriod::build(anchor_day, tz, start_month)?;
        // Safety net as in LocalDay::containing.
        step_to_containing(period, t, date, tz)
    }

    /// The billing anchor day (1..=31) as configured, before clamping.
    pub fn anchor_day(&self) -> u8 {
        self.anchor_day
    }

    /// The subscription's time zone.
    pub fn tz(&self) -> Tz {
        self.tz
    }

    /// First instant of the period (inclusive).
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// First instant of the next period (exclusive end).
    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }

    /// Local date on which the period starts (the clamped anchor day).
    pub fn start_date(&self) -> NaiveDate {
        self.start_date
    }

    /// Local date on which the next period starts; the last local day of
    /// this period is the day before.
    pub fn end_date(&self) -> NaiveDate {
        self.end_date
    }

    /// Number of local calendar days in the period (28..=31), e.g. for
    /// day-based proration.
    pub fn day_count(&self) -> i64 {
        (self.end_date - self.start_date).num_days()
    }

    /// Elapsed time from start to end.
    pub fn duration(&self) -> TimeDelta {
        self.end - self.start
    }

    /// Whether `start <= t < end`.
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t < self.end
    }

    /// Stable id: the local start date as `YYYY-MM-DD`, e.g. `2026-02-28`.
    pub fn id(&self) -> String {
        self.start_date.format(DATE_ID_FORMAT).to_string()
    }

    /// The following period; its start equals this period's end.
    pub fn next(&self) -> Result<Self, CalendarError> {
        BillingPeriod::build(self.anchor_day, self.tz, shift_month(self.month, 1)?)
    }

    /// The preceding period; its end equals this period's start.
    pub fn previous(&self) -> Result<Self, CalendarError> {
        BillingPeriod::build(self.anchor_day, self.tz, shift_month(self.month, -1)?)
    }

    /// Builds the period starting in the month whose first day is `month`.
    /// `anchor_day` must already be validated.
    fn build(anchor_day: u8, tz: Tz, month: NaiveDate) -> Result<Self, CalendarError> {
        let start_date = anchor_date(anchor_day, month)?;
        check_supported(start_date)?;
        let end_date = anchor_date(anchor_day, shift_month(month, 1)?)?;
        Ok(BillingPeriod {
            anchor_day,
            tz,
            month,
            start_date,
            end_date,
            start: midnight_utc(tz, start_date)?,
            end: midnight_utc(tz, end_date)?,
        })
    }
}

impl fmt::Display for BillingPeriod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.start_date.format(DATE_ID_FORMAT))
    }
}

/// Iterator over consecutive billing periods, returned by
/// [`periods_overlapping`].
#[derive(Debug, Clone)]
pub struct BillingPeriods {
    next: Option<BillingPeriod>,
    last: Option<BillingPeriod>,
}

impl Iterator for BillingPeriods {
    type Item = BillingPeriod;

    fn next(&mut self) -> Option<BillingPeriod> {
        let current = self.next.take()?;
        let reached_last = self.last.is_none_or(|last| current.start >= last.start);
        if !reached_last {
            // Cannot fail: every period up to `last` was proven computable
            // when `last` itself was computed. Ending early is the safe
            // fallback should it ever fail.
            self.next = current.next().ok();
        }
        Some(current)
    }
}

impl std::iter::FusedIterator for BillingPeriods {}

fn validate_anchor(anchor_day: u8) -> Result<(), CalendarError> {
    if (MIN_ANCHOR_DAY..=MAX_ANCHOR_DAY).contains(&anchor_day) {
        Ok(())
    } else {
        Err(CalendarError::InvalidAnchorDay(anchor_day))
    }
}

fn check_supported(date: NaiveDate) -> Result<(), CalendarError> {
    if (MIN_SUPPORTED_YEAR..=MAX_SUPPORTED_YEAR).contains(&date.year()) {
        Ok(())
    } else {
        Err(CalendarError::OutOfRange(date.to_string()))
    }
}

fn first_of_month(date: NaiveDate) -> Result<NaiveDate, CalendarError> {
    date.with_day(1)
        .ok_or_else(|| CalendarError::OutOfRange(date.to_string()))
}

/// First day of the month `delta` months after (or before) `month`.
fn shift_month(month: NaiveDate, delta: i32) -> Result<NaiveDate, CalendarError> {
    let shifted = if delta >= 0 {
        month.checked_add_months(Months::new(delta.unsigned_abs()))
    } else {
        month.checked_sub_months(Months::new(delta.unsigned_abs()))
    };
    shifted.ok_or_else(|| CalendarError::OutOfRange(month.to_string()))
}

/// The anchor date within the month whose first day is `month`, clamped to
/// the month's last day (anchor 31 in February is the 28th or 29th).
fn anchor_date(anchor_day: u8, month: NaiveDate) -> Result<NaiveDate, CalendarError> {
    let day = anchor_day.min(month.num_days_in_month());
    month
        .with_day(u32::from(day))
        .ok_or_else(|| CalendarError::OutOfRange(month.to_string()))
}

/// Local wall-clock time of instant `t` in `tz`, without chrono's panicking
/// `naive_local` (which fails at the edges of the representable range).
fn local_datetime_of(tz: Tz, t: DateTime<Utc>) -> Result<NaiveDateTime, CalendarError> {
    let utc = t.naive_utc();
    let offset = tz.offset_from_utc_datetime(&utc).fix();
    utc.checked_add_offset(offset)
        .ok_or_else(|| CalendarError::OutOfRange(t.to_rfc3339()))
}

fn local_date_of(tz: Tz, t: DateTime<Utc>) -> Result<NaiveDate, CalendarError> {
    let date = local_datetime_of(tz, t)?.date();
    check_supported(date)?;
    Ok(date)
}

/// [`local_midnight`] without the supported-range check, so that the end of
/// a window in the last supported year can still be computed.
fn midnight_utc(tz: Tz, date: NaiveDate) -> Result<DateTime<Utc>, CalendarError> {
    let midnight = date.and_time(NaiveTime::MIN);
    match tz.from_local_datetime(&midnight) {
        MappedLocalTime::Single(at) => Ok(at.with_timezone(&Utc)),
        // Midnight repeated by a fall-back: the day starts at its first
        // occurrence, so the repeated hour belongs to the new day.
        MappedLocalTime::Ambiguous(a, b) => Ok(a.min(b).with_timezone(&Utc)),
        // Midnight skipped by a spring-forward: the day starts when the
        // clocks jump past midnight.
        MappedLocalTime::None => first_instant_at_or_after(tz, midnight, date),
    }
}

/// The earliest UTC instant (whole second) whose local time in `tz` is at or
/// after `target`, for a `target` that lies in a daylight-saving gap.
///
/// chrono-tz does not expose transition instants, so this bisects: the local
/// time at `target - radius` (read as UTC) is certainly before `target` and
/// the local time at `target + radius` certainly at or after it. Bisection
/// keeps that invariant and ends on two adjacent seconds where the local
/// time steps from before `target` to after it, i.e. the jump over the
/// (non-existent) `target`. tzdb transitions fall on whole seconds.
fn first_instant_at_or_after(
    tz: Tz,
    target: NaiveDateTime,
    date: NaiveDate,
) -> Result<DateTime<Utc>, CalendarError> {
    let unresolvable = || CalendarError::UnresolvableLocalTime { date, tz };
    let local_at = |secs: i64| -> Result<NaiveDateTime, CalendarError> {
        let instant = DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| CalendarError::OutOfRange(date.to_string()))?;
        local_datetime_of(tz, instant)
    };
    let centre = target.and_utc().timestamp();
    let mut before = centre
        .checked_sub(GAP_SEARCH_RADIUS_SECS)
        .ok_or_else(unresolvable)?;
    let mut after = centre
        .checked_add(GAP_SEARCH_RADIUS_SECS)
        .ok_or_else(unresolvable)?;
    if local_at(before)? >= target || local_at(after)? < target {
        return Err(unresolvable());
    }
    while after - before > 1 {
        let mid = before + (after - before) / 2;
        if local_at(mid)? >= target {
            after = mid;
        } else {
            before = mid;
        }
    }
    DateTime::from_timestamp(after, 0).ok_or_else(unresolvable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("test instant must be RFC 3339")
            .with_timezone(&Utc)
    }

    fn date(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("test date must be YYYY-MM-DD")
    }

    fn tz(name: &str) -> Tz {
        parse_tz(name).expect("test time zone must exist")
    }

    fn hours(h: i64) -> TimeDelta {
        TimeDelta::hours(h)
    }

    /// Asserts the local day of `tz` on `day` spans `[start, end)` and that
    /// both boundaries are assigned to the later day.
    fn assert_day(zone: &str, day: &str, start: &str, end: &str, length: TimeDelta) {
        let zone = tz(zone);
        let d = LocalDay::for_date(zone, date(day)).expect("day");
        assert_eq!(d.start(), utc(start), "start of {day} in {zone}");
        assert_eq!(d.end(), utc(end), "end of {day} in {zone}");
        assert_eq!(d.duration(), length, "length of {day} in {zone}");
        assert_eq!(d.id(), day);
        assert_eq!(d.to_string(), day);
        if d.duration() > TimeDelta::zero() {
            assert_eq!(day_containing(zone, d.start()).expect("containing"), d);
            let last = d.end() - TimeDelta::nanoseconds(1);
            assert_eq!(day_containing(zone, last).expect("containing"), d);
        }
        let before = d.start() - TimeDelta::nanoseconds(1);
        assert_eq!(
            day_containing(zone, before).expect("containing").end(),
            d.start()
        );
        assert_eq!(
            day_containing(zone, d.end()).expect("containing").start(),
            d.end()
        );
    }

    /// Asserts the period of `anchor` in `zone` containing `t`.
    fn assert_period(anchor: u8, zone: &str, t: &str, start: &str, end: &str, id: &str) {
        let p = period_containing(anchor, tz(zone), utc(t)).expect("period");
        assert_eq!(
            (p.start(), p.end(), p.id()),
            (utc(start), utc(end), id.to_owned()),
            "anchor {anchor} in {zone} at {t}"
        );
        assert!(p.contains(utc(t)));
    }

    // ---- local days -------------------------------------------------------

    #[test]
    fn utc_day_is_24_hours() {
        assert_day(
            "UTC",
            "2026-02-28",
            "2026-02-28T00:00:00Z",
            "2026-03-01T00:00:00Z",
            hours(24),
        );
    }

    #[test]
    fn new_york_days_across_both_dst_switches() {
        // Spring forward at 02:00 on 2026-03-08: 23-hour day.
        assert_day(
            "America/New_York",
            "2026-03-08",
            "2026-03-08T05:00:00Z",
            "2026-03-09T04:00:00Z",
            hours(23),
        );
        // Fall back at 02:00 on 2026-11-01: 25-hour day.
        assert_day(
            "America/New_York",
            "2026-11-01",
            "2026-11-01T04:00:00Z",
            "2026-11-02T05:00:00Z",
            hours(25),
        );
    }

    #[test]
    fn kolkata_day_uses_half_hour_offset() {
        assert_day(
            "Asia/Kolkata",
            "2026-02-28",
            "2026-02-27T18:30:00Z",
            "2026-02-28T18:30:00Z",
            hours(24),
        );
    }

    #[test]
    fn chatham_days_use_quarter_hour_offsets_and_dst() {
        // Summer (+13:45) and winter (+12:45) midnights.
        assert_eq!(
            local_midnight(tz("Pacific/Chatham"), date("2026-02-01")).expect("midnight"),
            utc("2026-01-31T10:15:00Z")
        );
        assert_eq!(
            local_midnight(tz("Pacific/Chatham"), date("2026-07-01")).expect("midnight"),
            utc("2026-06-30T11:15:00Z")
        );
        // DST ends 2026-04-05 03:45 -> 02:45: 25 hours; starts 2026-09-27: 23.
        assert_day(
            "Pacific/Chatham",
            "2026-04-05",
            "2026-04-04T10:15:00Z",
            "2026-04-05T11:15:00Z",
            hours(25),
        );
        assert_day(
            "Pacific/Chatham",
            "2026-09-27",
            "2026-09-26T11:15:00Z",
            "2026-09-27T10:15:00Z",
            hours(23),
        );
    }

    #[test]
    fn santiago_midnight_gap_starts_when_clocks_jump() {
        // 2024-09-07 24:00 -04 jumps to 2024-09-08 01:00 -03 at 04:00Z.
        assert_day(
            "America/Santiago",
            "2024-09-08",
            "2024-09-08T04:00:00Z",
            "2024-09-09T03:00:00Z",
            hours(23),
        );
        // 2024-04-06 24:00 -03 falls back to 23:00 -04: Saturday is 25 hours.
        assert_day(
            "America/Santiago",
            "2024-04-06",
            "2024-04-06T03:00:00Z",
            "2024-04-07T04:00:00Z",
            hours(25),
        );
    }

    #[test]
    fn havana_midnight_gap_and_ambiguous_midnight() {
        // Spring forward 2024-03-10 00:00 -05 -> 01:00 -04 (midnight skipped).
        assert_day(
            "America/Havana",
            "2024-03-10",
            "2024-03-10T05:00:00Z",
            "2024-03-11T04:00:00Z",
            hours(23),
        );
        // Fall back 2024-11-03 01:00 -04 -> 00:00 -05: midnight occurs at
        // 04:00Z and again at 05:00Z; the first occurrence starts the day.
        assert_day(
            "America/Havana",
            "2024-11-03",
            "2024-11-03T04:00:00Z",
            "2024-11-04T05:00:00Z",
            hours(25),
        );
        let havana = tz("America/Havana");
        let second_midnight = utc("2024-11-03T05:00:00Z");
        assert_eq!(
            day_containing(havana, second_midnight).expect("day").date(),
            date("2024-11-03")
        );
    }

    #[test]
    fn apia_skipped_date_is_an_empty_day() {
        // Samoa skipped 2011-12-30 when it moved across the date line.
        assert_day(
            "Pacific/Apia",
            "2011-12-30",
            "2011-12-30T10:00:00Z",
            "2011-12-30T10:00:00Z",
            TimeDelta::zero(),
        );
        assert_day(
            "Pacific/Apia",
            "2011-12-29",
            "2011-12-29T10:00:00Z",
            "2011-12-30T10:00:00Z",
            hours(24),
        );
    }

    #[test]
    fn day_next_and_previous_are_adjacent() {
        let d = LocalDay::for_date(tz("America/New_York"), date("2026-03-08")).expect("day");
        let next = d.next().expect("next");
        let prev = d.previous().expect("previous");
        assert_eq!(next.start(), d.end());
        assert_eq!(prev.end(), d.start());
        assert_eq!(next.date(), date("2026-03-09"));
        assert_eq!(prev.date(), date("2026-03-07"));
        assert_eq!(d.tz(), tz("America/New_York"));
    }

    // ---- billing periods: month lengths and anchors (UTC) -----------------

    #[test]
    fn anchor_31_clamps_in_short_months() {
        assert_period(
            31,
            "UTC",
            "2026-02-15T12:00:00Z",
            "2026-01-31T00:00:00Z",
            "2026-02-28T00:00:00Z",
            "2026-01-31",
        );
        assert_period(
            31,
            "UTC",
            "2026-02-28T00:00:00Z",
            "2026-02-28T00:00:00Z",
            "2026-03-31T00:00:00Z",
            "2026-02-28",
        );
        assert_period(
            31,
            "UTC",
            "2026-04-29T23:59:59.999999999Z",
            "2026-03-31T00:00:00Z",
            "2026-04-30T00:00:00Z",
            "2026-03-31",
        );
        assert_period(
            31,
            "UTC",
            "2026-04-30T00:00:00Z",
            "2026-04-30T00:00:00Z",
            "2026-05-31T00:00:00Z",
            "2026-04-30",
        );
        assert_period(
            31,
            "UTC",
            "2028-02-29T00:00:00Z",
            "2028-02-29T00:00:00Z",
            "2028-03-31T00:00:00Z",
            "2028-02-29",
        );
        // Year rollover.
        assert_period(
            31,
            "UTC",
            "2027-01-01T00:00:00Z",
            "2026-12-31T00:00:00Z",
            "2027-01-31T00:00:00Z",
            "2026-12-31",
        );
    }

    #[test]
    fn anchor_30_in_february_of_leap_and_common_years() {
        assert_period(
            30,
            "UTC",
            "2026-03-01T00:00:00Z",
            "2026-02-28T00:00:00Z",
            "2026-03-30T00:00:00Z",
            "2026-02-28",
        );
        assert_period(
            30,
            "UTC",
            "2028-02-29T00:00:00Z",
            "2028-02-29T00:00:00Z",
            "2028-03-30T00:00:00Z",
            "2028-02-29",
        );
        assert_period(
            30,
            "UTC",
            "2028-02-28T23:59:59Z",
            "2028-01-30T00:00:00Z",
            "2028-02-29T00:00:00Z",
            "2028-01-30",
        );
        // 30-day month: the anchor is the last day itself.
        assert_period(
            30,
            "UTC",
            "2026-04-30T00:00:00Z",
            "2026-04-30T00:00:00Z",
            "2026-05-30T00:00:00Z",
            "2026-04-30",
        );
    }

    #[test]
    fn anchor_29_clamps_only_in_common_february() {
        assert_period(
            29,
            "UTC",
            "2026-02-28T05:00:00Z",
            "2026-02-28T00:00:00Z",
            "2026-03-29T00:00:00Z",
            "2026-02-28",
        );
        assert_period(
            29,
            "UTC",
            "2026-01-29T00:00:00Z",
            "2026-01-29T00:00:00Z",
            "2026-02-28T00:00:00Z",
            "2026-01-29",
        );
        assert_period(
            29,
            "UTC",
            "2028-02-29T05:00:00Z",
            "2028-02-29T00:00:00Z",
            "2028-03-29T00:00:00Z",
            "2028-02-29",
        );
        assert_period(
            29,
            "UTC",
            "2028-02-28T23:00:00Z",
            "2028-01-29T00:00:00Z",
            "2028-02-29T00:00:00Z",
            "2028-01-29",
        );
    }

    #[test]
    fn anchors_28_15_and_1_never_clamp() {
        assert_period(
            28,
            "UTC",
            "2028-02-29T12:00:00Z",
            "2028-02-28T00:00:00Z",
            "2028-03-28T00:00:00Z",
            "2028-02-28",
        );
        assert_period(
            28,
            "UTC",
            "2026-02-27T23:59:59Z",
            "2026-01-28T00:00:00Z",
            "2026-02-28T00:00:00Z",
            "2026-01-28",
        );
        assert_period(
            15,
            "UTC",
            "2026-02-14T23:59:59Z",
            "2026-01-15T00:00:00Z",
            "2026-02-15T00:00:00Z",
            "2026-01-15",
        );
        assert_period(
            15,
            "UTC",
            "2026-02-15T00:00:00Z",
            "2026-02-15T00:00:00Z",
            "2026-03-15T00:00:00Z",
            "2026-02-15",
        );
        assert_period(
            1,
            "UTC",
            "2026-02-28T23:59:59Z",
            "2026-02-01T00:00:00Z",
            "2026-03-01T00:00:00Z",
            "2026-02-01",
        );
        assert_period(
            1,
            "UTC",
            "2028-02-29T12:00:00Z",
            "2028-02-01T00:00:00Z",
            "2028-03-01T00:00:00Z",
            "2028-02-01",
        );
        assert_period(
            1,
            "UTC",
            "2026-12-31T23:59:59Z",
            "2026-12-01T00:00:00Z",
            "2027-01-01T00:00:00Z",
            "2026-12-01",
        );
    }

    #[test]
    fn period_start_dates_over_months_of_28_29_30_31_days() {
        // Start dates of consecutive periods, following next() from January.
        let cases: [(u8, i32, [&str; 4]); 12] = [
            (
                1,
                2026,
                ["2026-01-01", "2026-02-01", "2026-03-01", "2026-04-01"],
            ),
            (
                15,
                2026,
                ["2026-01-15", "2026-02-15", "2026-03-15", "2026-04-15"],
            ),
            (
                28,
                2026,
                ["2026-01-28", "2026-02-28", "2026-03-28", "2026-04-28"],
            ),
            (
                29,
                2026,
                ["2026-01-29", "2026-02-28", "2026-03-29", "2026-04-29"],
            ),
            (
                30,
                2026,
                ["2026-01-30", "2026-02-28", "2026-03-30", "2026-04-30"],
            ),
            (
                31,
                2026,
                ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"],
            ),
            (
                1,
                2028,
                ["2028-01-01", "2028-02-01", "2028-03-01", "2028-04-01"],
            ),
            (
                15,
                2028,
                ["2028-01-15", "2028-02-15", "2028-03-15", "2028-04-15"],
            ),
            (
                28,
                2028,
                ["2028-01-28", "2028-02-28", "2028-03-28", "2028-04-28"],
            ),
            (
                29,
                2028,
                ["2028-01-29", "2028-02-29", "2028-03-29", "2028-04-29"],
            ),
            (
                30,
                2028,
                ["2028-01-30", "2028-02-29", "2028-03-30", "2028-04-30"],
            ),
            (
                31,
                2028,
                ["2028-01-31", "2028-02-29", "2028-03-31", "2028-04-30"],
            ),
        ];
        for (anchor, year, starts) in cases {
            let mut p = BillingPeriod::starting_in_month(anchor, Tz::UTC, year, 1).expect("period");
            for (i, expected) in starts.iter().enumerate() {
                assert_eq!(p.id(), *expected, "anchor {anchor}, period {i}");
                assert_eq!(p.start_date(), date(expected));
                assert_eq!(p.anchor_day(), anchor);
                let next = p.next().expect("next");
                assert_eq!(next.start(), p.end());
                assert_eq!(next.start_date(), p.end_date());
                assert_eq!(next.previous().expect("previous"), p);
                assert_eq!(p.day_count(), p.duration().num_days());
                p = next;
            }
        }
    }

    #[test]
    fn anchor_31_walks_a_whole_year() {
        let expected = [
            "2026-01-31",
            "2026-02-28",
            "2026-03-31",
            "2026-04-30",
            "2026-05-31",
            "2026-06-30",
            "2026-07-31",
            "2026-08-31",
            "2026-09-30",
            "2026-10-31",
            "2026-11-30",
            "2026-12-31",
            "2027-01-31",
        ];
        let mut p = BillingPeriod::starting_in_month(31, Tz::UTC, 2026, 1).expect("period");
        for id in expected {
            assert_eq!(p.to_string(), id);
            p = p.next().expect("next");
        }
        // A clamped start does not stick: February 28 is followed by March 31.
        let feb = period_containing(31, Tz::UTC, utc("2026-03-01T00:00:00Z")).expect("period");
        assert_eq!(feb.day_count(), 31);
        assert_eq!(feb.end_date(), date("2026-03-31"));
    }

    // ---- billing periods in time zones ------------------------------------

    #[test]
    fn new_york_periods_across_both_dst_switches() {
        // March: starts in EST (-5), ends in EDT (-4).
        assert_period(
            1,
            "America/New_York",
            "2026-03-15T12:00:00Z",
            "2026-03-01T05:00:00Z",
            "2026-04-01T04:00:00Z",
            "2026-03-01",
        );
        // November: starts in EDT, ends in EST.
        assert_period(
            1,
            "America/New_York",
            "2026-11-01T04:00:00Z",
            "2026-11-01T04:00:00Z",
            "2026-12-01T05:00:00Z",
            "2026-11-01",
        );
        // Local Feb 28 23:59:59 is still February's period.
        assert_period(
            1,
            "America/New_York",
            "2026-03-01T04:59:59Z",
            "2026-02-01T05:00:00Z",
            "2026-03-01T05:00:00Z",
            "2026-02-01",
        );
        // Anchored on the spring-forward day itself (the jump is at 02:00).
        let p = period_containing(8, tz("America/New_York"), utc("2026-03-08T05:00:00Z"))
            .expect("period");
        assert_eq!(p.start(), utc("2026-03-08T05:00:00Z"));
        assert_eq!(p.end(), utc("2026-04-08T04:00:00Z"));
        assert_eq!(p.duration(), TimeDelta::days(31) - hours(1));
    }

    #[test]
    fn kolkata_period_boundary_belongs_to_later_period() {
        assert_period(
            15,
            "Asia/Kolkata",
            "2026-03-14T18:30:00Z",
            "2026-03-14T18:30:00Z",
            "2026-04-14T18:30:00Z",
            "2026-03-15",
        );
        assert_period(
            15,
            "Asia/Kolkata",
            "2026-03-14T18:29:59.999999999Z",
            "2026-02-14T18:30:00Z",
            "2026-03-14T18:30:00Z",
            "2026-02-15",
        );
    }

    #[test]
    fn chatham_period_spans_dst_end() {
        // 2026-04-01 00:00Z is 13:45 local on April 1 (+13:45); the period
        // ends on May 1 local midnight, after DST ended (+12:45).
        assert_period(
            1,
            "Pacific/Chatham",
            "2026-04-01T00:00:00Z",
            "2026-03-31T10:15:00Z",
            "2026-04-30T11:15:00Z",
            "2026-04-01",
        );
    }

    #[test]
    fn midnight_gap_zone_periods() {
        // Santiago: the period anchored on the 8th starts when clocks jump.
        assert_period(
            8,
            "America/Santiago",
            "2024-09-10T00:00:00Z",
            "2024-09-08T04:00:00Z",
            "2024-10-08T03:00:00Z",
            "2024-09-08",
        );
        // Exactly at the jump is the new period, one second before the old.
        assert_period(
            8,
            "America/Santiago",
            "2024-09-08T04:00:00Z",
            "2024-09-08T04:00:00Z",
            "2024-10-08T03:00:00Z",
            "2024-09-08",
        );
        let before = period_containing(8, tz("America/Santiago"), utc("2024-09-08T03:59:59Z"))
            .expect("period");
        assert_eq!(before.id(), "2024-08-08");
        assert_eq!(before.end(), utc("2024-09-08T04:00:00Z"));
        // Havana ambiguous midnight: first occurrence starts the period, and
        // the repeated hour after it stays in the new period.
        for t in [
            "2024-11-03T04:00:00Z",
            "2024-11-03T04:30:00Z",
            "2024-11-03T05:30:00Z",
        ] {
            assert_period(
                3,
                "America/Havana",
                t,
                "2024-11-03T04:00:00Z",
                "2024-12-03T05:00:00Z",
                "2024-11-03",
            );
        }
        assert_period(
            3,
            "America/Havana",
            "2024-11-03T03:59:59Z",
            "2024-10-03T04:00:00Z",
            "2024-11-03T04:00:00Z",
            "2024-10-03",
        );
    }

    // ---- overlapping periods ------------------------------------------------

    fn overlapping_ids(anchor: u8, zone: Tz, a: &str, b: &str) -> Vec<String> {
        periods_overlapping(anchor, zone, utc(a), utc(b))
            .expect("range")
            .map(|p| p.id())
            .collect()
    }

    #[test]
    fn periods_overlapping_a_subscription() {
        assert_eq!(
            overlapping_ids(31, Tz::UTC, "2026-01-15T00:00:00Z", "2026-04-30T00:00:00Z"),
            ["2025-12-31", "2026-01-31", "2026-02-28", "2026-03-31"]
        );
        // Ending one nanosecond into the next period includes it.
        assert_eq!(
            overlapping_ids(
                31,
                Tz::UTC,
                "2026-01-31T00:00:00Z",
                "2026-04-30T00:00:00.000000001Z"
            ),
            ["2026-01-31", "2026-02-28", "2026-03-31", "2026-04-30"]
        );
        // Inside a single period.
        assert_eq!(
            overlapping_ids(
                1,
                tz("America/New_York"),
                "2026-03-02T00:00:00Z",
                "2026-03-03T00:00:00Z"
            ),
            ["2026-03-01"]
        );
        // Empty range.
        assert!(
            overlapping_ids(1, Tz::UTC, "2026-03-02T00:00:00Z", "2026-03-02T00:00:00Z").is_empty()
        );
    }

    #[test]
    fn periods_overlapping_rejects_reversed_range_and_bad_anchor() {
        let a = utc("2026-03-02T00:00:00Z");
        let b = utc("2026-03-01T00:00:00Z");
        let err = periods_overlapping(1, Tz::UTC, a, b).expect_err("reversed");
        assert_eq!(err.code(), "invalid_range");
        let err = periods_overlapping(0, Tz::UTC, b, a).expect_err("anchor");
        assert_eq!(err.code(), "invalid_anchor_day");
    }

    // ---- errors -------------------------------------------------------------

    #[test]
    fn invalid_anchor_days_are_rejected() {
        let t = utc("2026-03-02T00:00:00Z");
        for anchor in [0, 32, u8::MAX] {
            let err = period_containing(anchor, Tz::UTC, t).expect_err("invalid anchor");
            assert_eq!(err, CalendarError::InvalidAnchorDay(anchor));
            assert_eq!(err.code(), "invalid_anchor_day");
        }
        let err = BillingPeriod::starting_in_month(0, Tz::UTC, 2026, 1).expect_err("anchor");
        assert_eq!(err.code(), "invalid_anchor_day");
        let err = BillingPeriod::starting_in_month(1, Tz::UTC, 2026, 13).expect_err("month");
        assert_eq!(err.code(), "out_of_range");
    }

    #[test]
    fn parse_tz_accepts_iana_names_only() {
        assert_eq!(parse_tz("America/New_York"), Ok(Tz::America__New_York));
        assert_eq!(parse_tz("UTC"), Ok(Tz::UTC));
        for bad in [
            "",
            "Mars/Olympus_Mons",
            "america/new_york",
            "EST5EDT ",
            "+05:30",
        ] {
            let err = parse_tz(bad).expect_err("unknown zone");
            assert_eq!(err, CalendarError::UnknownTimeZone(bad.to_owned()));
            assert_eq!(err.code(), "unknown_time_zone");
        }
    }

    #[test]
    fn extreme_instants_are_errors_not_panics() {
        let zone = tz("Pacific/Kiritimati");
        for t in [DateTime::<Utc>::MAX_UTC, DateTime::<Utc>::MIN_UTC] {
            assert_eq!(
                day_containing(zone, t).expect_err("range").code(),
                "out_of_range"
            );
            assert_eq!(
                period_containing(31, zone, t).expect_err("range").code(),
                "out_of_range"
            );
        }
        let last = utc("9999-12-31T09:59:59Z"); // 23:59:59 local, still 9999
        let day = day_containing(zone, last).expect("last supported day");
        assert_eq!(day.id(), "9999-12-31");
        assert_eq!(day.next().expect_err("range").code(), "out_of_range");
        let period = period_containing(31, zone, last).expect("last supported period");
        assert_eq!(period.id(), "9999-12-31");
        assert_eq!(period.next().expect_err("range").code(), "out_of_range");
        assert_eq!(
            local_midnight(zone, date("0000-12-31"))
                .expect_err("range")
                .code(),
            "out_of_range"
        );
    }

    #[test]
    fn error_codes_are_stable() {
        let t = utc("2026-01-01T00:00:00Z");
        let errors = [
            (CalendarError::InvalidAnchorDay(0), "invalid_anchor_day"),
            (
                CalendarError::UnknownTimeZone("x".to_owned()),
                "unknown_time_zone",
            ),
            (CalendarError::OutOfRange("x".to_owned()), "out_of_range"),
            (
                CalendarError::InvalidRange { start: t, end: t },
                "invalid_range",
            ),
            (
                CalendarError::UnresolvableLocalTime {
                    date: date("2026-01-01"),
                    tz: Tz::UTC,
                },
                "unresolvable_local_time",
            ),
        ];
        for (err, code) in errors {
            assert_eq!(err.code(), code);
            assert!(!err.to_string().is_empty());
        }
    }

    // ---- properties -------------------------------------------------------

    /// Zones with half/quarter-hour offsets, midnight DST switches, a skipped
    /// day, the date line and southern-hemisphere DST.
    const PROPERTY_ZONES: [&str; 16] = [
        "UTC",
        "America/New_York",
        "Asia/Kolkata",
        "Pacific/Chatham",
        "America/Santiago",
        "America/Havana",
        "America/Sao_Paulo",
        "Asia/Beirut",
        "Asia/Tehran",
        "Australia/Lord_Howe",
        "Asia/Kathmandu",
        "Pacific/Apia",
        "Pacific/Kiritimati",
        "America/St_Johns",
        "Europe/London",
        "America/Scoresbysund",
    ];

    /// 1800-01-01T00:00:00Z ..= 2400-01-01T00:00:00Z, covering LMT-era
    /// offsets, today's rules and far-future extrapolation.
    const PROPERTY_MIN_SECS: i64 = -5_364_662_400;
    const PROPERTY_MAX_SECS: i64 = 13_569_465_600;

    fn instant() -> impl Strategy<Value = DateTime<Utc>> {
        (PROPERTY_MIN_SECS..PROPERTY_MAX_SECS, 0u32..1_000_000_000).prop_map(|(s, n)| {
            DateTime::from_timestamp(s, n).expect("property range is representable")
        })
    }

    fn zone() -> impl Strategy<Value = Tz> {
        proptest::sample::select(&PROPERTY_ZONES[..]).prop_map(tz)
    }

    proptest! {
        #[test]
        fn period_contains_instant_and_tiles_the_timeline(
            t in instant(),
            anchor in MIN_ANCHOR_DAY..=MAX_ANCHOR_DAY,
            zone in zone(),
        ) {
            let p = period_containing(anchor, zone, t).expect("period");
            prop_assert!(p.start() <= t && t < p.end(), "{} not in {:?}", t, p);
            let next = p.next().expect("next");
            prop_assert_eq!(next.start(), p.end());
            let previous = p.previous().expect("previous");
            prop_assert_eq!(previous.end(), p.start());
            let clamped = u32::from(anchor).min(u32::from(p.start_date().num_days_in_month()));
            prop_assert_eq!(p.start_date().day(), clamped);
            prop_assert!((28..=31).contains(&p.day_count()));
            // The start instant itself maps back to the same period.
            prop_assert_eq!(period_containing(anchor, zone, p.start()).expect("period"), p);
        }

        #[test]
        fn day_contains_instant_and_tiles_the_timeline(t in instant(), zone in zone()) {
            let d = day_containing(zone, t).expect("day");
            prop_assert!(d.start() <= t && t < d.end(), "{} not in {:?}", t, d);
            prop_assert_eq!(d.next().expect("next").start(), d.end());
            prop_assert_eq!(d.previous().expect("previous").end(), d.start());
            // No real day is longer than 25 hours except across a date-line move.
            prop_assert!(d.duration() <= TimeDelta::hours(48));
        }

        #[test]
        fn overlapping_periods_are_contiguous_and_cover_the_range(
            a in instant(),
            span_secs in 0i64..(3 * 366 * 24 * 60 * 60),
            anchor in MIN_ANCHOR_DAY..=MAX_ANCHOR_DAY,
            zone in zone(),
        ) {
            let b = a + TimeDelta::seconds(span_secs);
            let periods: Vec<_> = periods_overlapping(anchor, zone, a, b).expect("range").collect();
            if a == b {
                prop_assert!(periods.is_empty());
            } else {
                let first = periods.first().expect("non-empty");
                let last = periods.last().expect("non-empty");
                prop_assert!(first.contains(a));
                prop_assert!(last.start() < b && b <= last.end());
                for pair in periods.windows(2) {
                    prop_assert_eq!(pair[0].end(), pair[1].start());
                }
            }
        }
    }
}
