//! Crontab schedules (`"30 2 * * *"`) in a time zone, with the daylight-saving rules a
//! scheduler needs (Celery #1604, #10107 are what happens without them):
//!
//! - a local time that does not exist (the hour skipped in spring) runs once, as far past the
//!   start of the gap as it was into the hour before the clocks moved (02:30 → 03:30 where
//!   02:00 became 03:00): a daily 02:30 job still runs that night, once;
//! - a local time that happens twice (the hour repeated in autumn) runs once, the first time,
//!   when the job names its hours (`30 1 * * *`); a job that runs every hour (`0 * * * *`,
//!   `*/15 * * * *`) runs in both, since both are hours that pass: every hour gets its run,
//!   none gets two.
//!
//! Fields: minute, hour, day of month, month, day of week (0 or 7 Sunday; names `sun`...`sat`,
//! `jan`...`dec`), each `*`, a number, a range `a-b`, a step `*/n` or `a-b/n`, or a list of
//! these. As in cron, when both the day of month and the day of week are restricted, a day
//! matching either runs.

use std::fmt;
use std::str::FromStr;

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, Offset,
    TimeZone, Utc,
};
use chrono_tz::Tz;
use kombu_core::{Error, ErrorKind};

/// A crontab schedule: five fields, as cron reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crontab {
    text: String,
    minutes: Vec<u32>,
    hours: Vec<u32>,
    days: Vec<u32>,
    months: Vec<u32>,
    weekdays: Vec<u32>,
    /// Whether the day of month / week field is `*` (unrestricted).
    any_day: bool,
    any_weekday: bool,
    /// Whether every hour is listed (the job runs in both copies of a repeated hour).
    every_hour: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn invalid(text: &str, why: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Config, format!("crontab {text:?}: {why}"))
}

/// The values of one field within `min..=max`; `names` read as `min`, `min + 1`, ...
fn field(text: &str, part: &str, min: u32, max: u32, names: &[&str]) -> Result<Vec<u32>, Error> {
    let value = |s: &str| -> Result<u32, Error> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(min + u32::try_from(i).unwrap_or(0));
        }
        s.parse::<u32>()
            .map_err(|_| invalid(text, format!("{s:?} is not a number")))
    };
    let mut out = Vec::new();
    for item in part.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| invalid(text, format!("step {step:?}")))?;
                (range, step)
            }
            None => (item, 1),
        };
        let (from, to) = match range {
            "*" => (min, max),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                None if item.contains('/') => (value(r)?, max),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if from < min || to > max || from > to {
            return Err(invalid(text, format!("{item:?} is outside {min}-{max}")));
        }
        out.extend((from..=to).step_by(usize::try_from(step).unwrap_or(1)));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl FromStr for Crontab {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        let parts: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = parts[..] else {
            return Err(invalid(
                text,
                "expected 5 fields: minute hour day month weekday",
            ));
        };
        let hours = field(text, hour, 0, 23, &[])?;
        Ok(Crontab {
            text: parts.join(" "),
            minutes: field(text, minute, 0, 59, &[])?,
            every_hour: hours.len() == 24,
            hours,
            days: field(text, day, 1, 31, &[])?,
            months: field(text, month, 1, 12, &MONTHS)?,
            // Sunday is 0 or 7.
            weekdays: {
                let mut days: Vec<u32> = field(text, weekday, 0, 7, &WEEKDAYS)?
                    .into_iter()
                    .map(|d| d % 7)
                    .collect();
                days.sort_unstable();
                days.dedup();
                days
            },
            any_day: day == "*",
            any_weekday: weekday == "*",
        })
    }
}

impl fmt::Display for Crontab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Crontab {
    fn day_matches(&self, date: NaiveDate) -> bool {
        if !self.months.contains(&date.month()) {
            return false;
        }
        let dom = self.days.contains(&date.day());
        let dow = self
            .weekdays
            .contains(&date.weekday().num_days_from_sunday());
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        }
    }

    /// The local wall-clock times it names on `date`, in order.
    fn times_on(&self, date: NaiveDate) -> impl Iterator<Item = NaiveDateTime> + '_ {
        let matches = self.day_matches(date);
        self.hours
            .iter()
            .filter(move |_| matches)
            .flat_map(move |h| {
                self.minutes.iter().filter_map(move |m| {
                    NaiveTime::from_hms_opt(*h, *m, 0).map(|t| date.and_time(t))
                })
            })
    }

    /// The instants a local time `at` stands for in `tz`: one, two (a repeated hour: the
    /// second only for a job that runs every hour) or, for a time in a skipped hour, the
    /// instant as far past the gap's start as `at` was into it.
    fn instants(&self, tz: Tz, at: NaiveDateTime) -> Vec<DateTime<Utc>> {
        match tz.from_local_datetime(&at) {
            LocalResult::Single(t) => vec![t.with_timezone(&Utc)],
            LocalResult::Ambiguous(first, second) => {
                let mut out = vec![first.with_timezone(&Utc)];
                if self.every_hour {
                    out.push(second.with_timezone(&Utc));
                }
                out
            }
            LocalResult::None => {
                // The offset before the gap applied to `at`: the instant the clocks would have
                // shown `at` had they not moved.
                let before = (1..=26).find_map(|h| {
                    tz.from_local_datetime(&(at - Duration::hours(h)))
                        .earliest()
                        .map(|t| t.offset().fix())
                });
                match before {
                    Some(offset) => offset
                        .from_local_datetime(&at)
                        .single()
                        .map(|t| vec![t.with_timezone(&Utc)])
                        .unwrap_or_default(),
                    None => Vec::new(),
                }
            }
        }
    }

    /// The first run strictly after `after`, in `tz`; `None` if none within eight years (a
    /// date that never comes: `0 0 30 2 *`).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let after_local = after.with_timezone(&tz).naive_local();
        // No zone moves its clocks by a day: local times a day before `after` are past.
        let floor = after_local - Duration::hours(26);
        let start = after_local.date() - Duration::days(1);
        for offset in 0..(366 * 8) {
            let date = start + Duration::days(offset);
            let mut best: Option<DateTime<Utc>> = None;
            for local in self.times_on(date).filter(|l| *l >= floor) {
                for instant in self.instants(tz, local) {
                    if instant > after && best.is_none_or(|b| instant < b) {
                        best = Some(instant);
                    }
                }
            }
            if best.is_some() {
                return best;
            }
        }
        None
    }
}

impl Crontab {
    /// The latest run at or before `at`, in `tz`; `None` if none within eight years.
    pub fn last_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let start = at.with_timezone(&tz).date_naive() + Duration::days(1);
        for back in 0..(366 * 8) {
            let date = start - Duration::days(back);
            let best = self
                .times_on(date)
                .flat_map(|local| self.instants(tz, local))
                .filter(|instant| *instant <= at)
                .max();
            if best.is_some() {
                return best;
            }
        }
        None
    }
}

/// The local hour and minute of `t` in `tz`.
#[cfg(test)]
fn hm(t: DateTime<Utc>, tz: Tz) -> (u32, u32) {
    use chrono::Timelike;
    let local = t.with_timezone(&tz);
    (local.hour(), local.minute())
}

#[cfg(test)]
mod tests {
    use super::Crontab;
    use chrono::{DateTime, Utc};
    use chrono_tz::Tz;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("a time")
            .with_timezone(&Utc)
    }

    /// Every run in [from, to).
    fn runs(cron: &str, tz: Tz, from: &str, to: &str) -> Vec<DateTime<Utc>> {
        let cron: Crontab = cron.parse().expect("a crontab");
        // From `from` itself on (`next_after` is strictly after).
        let (mut at, end) = (utc(from) - chrono::Duration::seconds(1), utc(to));
        let mut out = Vec::new();
        while let Some(next) = cron.next_after(at, tz) {
            if next >= end {
                break;
            }
            out.push(next);
            at = next;
        }
        out
    }

    #[test]
    fn fields_read_as_cron() {
        let c: Crontab = "*/15 9-17 * jan,jul mon-fri".parse().expect("parses");
        assert_eq!(c.minutes, [0, 15, 30, 45]);
        assert_eq!(c.hours, (9..=17).collect::<Vec<_>>());
        assert_eq!(c.months, [1, 7]);
        assert_eq!(c.weekdays, [1, 2, 3, 4, 5]);
        let sunday: Crontab = "0 0 * * 7".parse().expect("parses");
        assert_eq!(sunday.weekdays, [0]);
        let weekend: Crontab = "0 0 * * 6-7".parse().expect("parses");
        assert_eq!(weekend.weekdays, [0, 6]);
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "x * * * *",
            "5-1 * * * *",
        ] {
            assert!(bad.parse::<Crontab>().is_err(), "{bad}");
        }
    }

    #[test]
    fn day_of_month_or_week_as_cron() {
        // The 13th, or any Friday, in 2026-02: Fridays 6, 13, 20, 27 and the 13th.
        let days: Vec<u32> = runs(
            "0 12 13 * fri",
            chrono_tz::UTC,
            "2026-02-01T00:00:00Z",
            "2026-03-01T00:00:00Z",
        )
        .iter()
        .map(chrono::Datelike::day)
        .collect();
        assert_eq!(days, [6, 13, 20, 27]);
    }

    #[test]
    fn a_daily_job_in_the_skipped_hour_runs_once_that_night() {
        // Spring forward: Oslo 2026-03-29 02:00 → 03:00, New York 2026-03-08 02:00 → 03:00,
        // Sydney 2026-10-04 02:00 → 03:00.
        for (zone, from, to, want) in [
            (
                "Europe/Oslo",
                "2026-03-27T12:00:00Z",
                "2026-03-30T12:00:00Z",
                [
                    "2026-03-28T01:30:00Z",
                    "2026-03-29T01:30:00Z",
                    "2026-03-30T00:30:00Z",
                ],
            ),
            (
                "America/New_York",
                "2026-03-06T12:00:00Z",
                "2026-03-09T12:00:00Z",
                [
                    "2026-03-07T07:30:00Z",
                    "2026-03-08T07:30:00Z",
                    "2026-03-09T06:30:00Z",
                ],
            ),
            (
                "Australia/Sydney",
                "2026-10-02T00:00:00Z",
                "2026-10-05T00:00:00Z",
                [
                    "2026-10-02T16:30:00Z",
                    "2026-10-03T16:30:00Z",
                    "2026-10-04T15:30:00Z",
                ],
            ),
        ] {
            let tz: Tz = zone.parse().expect("a zone");
            let got = runs("30 2 * * *", tz, from, to);
            let want: Vec<DateTime<Utc>> = want.iter().map(|s| utc(s)).collect();
            assert_eq!(got, want, "{zone}");
            // On the night itself the run is at 03:30 local.
            assert_eq!(super::hm(got[1], tz), (3, 30), "{zone}");
        }
    }

    #[test]
    fn an_hourly_job_runs_every_hour_once_across_fall_back() {
        // Fall back: New York 2026-11-01 02:00 EDT → 01:00 EST; Oslo 2026-10-25 03:00 → 02:00;
        // Sydney 2026-04-05 03:00 → 02:00.
        for (zone, from, to) in [
            (
                "America/New_York",
                "2026-11-01T02:00:00Z",
                "2026-11-01T10:00:00Z",
            ),
            (
                "Europe/Oslo",
                "2026-10-24T22:00:00Z",
                "2026-10-25T04:00:00Z",
            ),
            (
                "Australia/Sydney",
                "2026-04-04T13:00:00Z",
                "2026-04-04T19:00:00Z",
            ),
        ] {
            let tz: Tz = zone.parse().expect("a zone");
            let got = runs("0 * * * *", tz, from, to);
            let (start, end) = (utc(from), utc(to));
            let hours = (end - start).num_hours();
            assert_eq!(got.len() as i64, hours, "{zone}: one run an hour: {got:?}");
            assert!(
                got.windows(2)
                    .all(|w| w[1] - w[0] == chrono::Duration::hours(1)),
                "{zone}: {got:?}"
            );
            // A job that names its hour runs once in the repeated hour.
            let named = runs("30 1 * * *", tz, from, to);
            assert!(named.len() <= 1, "{zone}: {named:?}");
        }
        // And across spring forward an hourly job runs every hour that passes.
        let tz: Tz = "America/New_York".parse().expect("a zone");
        let got = runs(
            "0 * * * *",
            tz,
            "2026-03-08T04:00:00Z",
            "2026-03-08T10:00:00Z",
        );
        assert_eq!(got.len(), 6, "{got:?}");
    }

    #[test]
    fn a_repeated_hour_runs_a_named_time_once() {
        let tz: Tz = "America/New_York".parse().expect("a zone");
        let got = runs(
            "30 1 * * *",
            tz,
            "2026-10-31T12:00:00Z",
            "2026-11-02T12:00:00Z",
        );
        // 2026-11-01 01:30 EDT (05:30Z), not 01:30 EST as well; then 2026-11-02 01:30 EST.
        assert_eq!(
            got,
            [utc("2026-11-01T05:30:00Z"), utc("2026-11-02T06:30:00Z")]
        );
    }

    #[test]
    fn the_latest_run_before_a_time_agrees_with_the_runs_after() {
        for (cron, zone) in [
            ("0 * * * *", "America/New_York"),
            ("30 2 * * *", "Europe/Oslo"),
            ("*/7 1-3 * * *", "Australia/Sydney"),
        ] {
            let tz: Tz = zone.parse().expect("a zone");
            let c: Crontab = cron.parse().expect("a crontab");
            let all = runs(cron, tz, "2026-03-01T00:00:00Z", "2026-04-10T00:00:00Z");
            for pair in all.windows(2) {
                let between = pair[0] + (pair[1] - pair[0]) / 2;
                assert_eq!(
                    c.last_at_or_before(between, tz),
                    Some(pair[0]),
                    "{cron} {zone}"
                );
                assert_eq!(
                    c.last_at_or_before(pair[1], tz),
                    Some(pair[1]),
                    "{cron} {zone}: at"
                );
            }
        }
    }

    #[test]
    fn a_date_that_never_comes_is_none() {
        let c: Crontab = "0 0 30 2 *".parse().expect("parses");
        assert_eq!(
            c.next_after(utc("2026-01-01T00:00:00Z"), chrono_tz::UTC),
            None
        );
    }
}
