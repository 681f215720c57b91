//! When an entry runs: every so often, on a crontab, or at a solar event of a place.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use kombu_core::{Error, ErrorKind};
use sunrise::{Coordinates, DawnType, SolarDay, SolarEvent};

use super::Crontab;

/// A schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// Every interval, counted from the previous scheduled run (so runs do not drift).
    Every(Duration),
    /// A crontab in the entry's time zone.
    Crontab(Crontab),
    /// A solar event at a place (Celery's `solar`).
    Solar(Solar),
}

impl Schedule {
    /// The first run strictly after `after` (`tz`: the entry's zone, for crontabs).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(every) => chrono::Duration::from_std(*every)
                .ok()
                .and_then(|d| after.checked_add_signed(d)),
            Schedule::Crontab(cron) => cron.next_after(after, tz),
            Schedule::Solar(solar) => solar.next_after(after),
        }
    }
}

impl Schedule {
    /// The latest run at or before `at` (`None` for [`Every`](Schedule::Every), which counts
    /// from a previous run, and when there is none within years).
    pub fn last_at_or_before(&self, at: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Every(_) => None,
            Schedule::Crontab(cron) => cron.last_at_or_before(at, tz),
            Schedule::Solar(solar) => solar.last_at_or_before(at),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(every) => write!(f, "every {}s", every.as_secs_f64()),
            Schedule::Crontab(cron) => write!(f, "crontab {cron}"),
            Schedule::Solar(solar) => write!(f, "{solar}"),
        }
    }
}

/// Celery's solar events.
const EVENTS: [&str; 9] = [
    "dawn_astronomical",
    "dawn_nautical",
    "dawn_civil",
    "sunrise",
    "solar_noon",
    "sunset",
    "dusk_civil",
    "dusk_nautical",
    "dusk_astronomical",
];

/// A solar event (Celery's names: `sunrise`, `sunset`, `solar_noon`, `dawn_civil`,
/// `dusk_nautical`, ...) at a latitude and longitude.
#[derive(Debug, Clone, PartialEq)]
pub struct Solar {
    event: &'static str,
    coordinates: Coordinates,
}

impl Solar {
    /// `event` (one of Celery's names) at `lat`, `lon` (degrees).
    pub fn new(event: &str, lat: f64, lon: f64) -> Result<Solar, Error> {
        let event = EVENTS.iter().find(|e| **e == event).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("solar event {event:?}: one of {}", EVENTS.join(", ")),
            )
        })?;
        let coordinates = Coordinates::new(lat, lon).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!("solar: {lat}, {lon} is no latitude and longitude"),
            )
        })?;
        Ok(Solar { event, coordinates })
    }

    /// The event on the UTC `date` (none on a day it does not happen: a polar day or night).
    fn on(&self, date: chrono::NaiveDate) -> Option<DateTime<Utc>> {
        let day = SolarDay::new(self.coordinates, date);
        let at = |event| day.event_time(event);
        match self.event {
            "dawn_astronomical" => at(SolarEvent::Dawn(DawnType::Astronomical)),
            "dawn_nautical" => at(SolarEvent::Dawn(DawnType::Nautical)),
            "dawn_civil" => at(SolarEvent::Dawn(DawnType::Civil)),
            "sunrise" => at(SolarEvent::Sunrise),
            "sunset" => at(SolarEvent::Sunset),
            "dusk_civil" => at(SolarEvent::Dusk(DawnType::Civil)),
            "dusk_nautical" => at(SolarEvent::Dusk(DawnType::Nautical)),
            "dusk_astronomical" => at(SolarEvent::Dusk(DawnType::Astronomical)),
            // The transit, halfway between a rise and a set of the same depth.
            _ => [
                (SolarEvent::Sunrise, SolarEvent::Sunset),
                (
                    SolarEvent::Dawn(DawnType::Astronomical),
                    SolarEvent::Dusk(DawnType::Astronomical),
                ),
            ]
            .into_iter()
            .find_map(|(rise, set)| {
                let (rise, set) = (at(rise)?, at(set)?);
                Some(rise + (set - rise) / 2)
            }),
        }
    }

    /// The first event strictly after `after` (looking a year ahead).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = after.date_naive() - chrono::Duration::days(1);
        (0..=367)
            .filter_map(|d| self.on(start + chrono::Duration::days(d)))
            .find(|t| *t > after)
    }
}

impl Solar {
    /// The latest event at or before `at` (looking a year back).
    pub fn last_at_or_before(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = at.date_naive() + chrono::Duration::days(1);
        (0..=367)
            .filter_map(|d| self.on(start - chrono::Duration::days(d)))
            .find(|t| *t <= at)
    }
}

impl fmt::Display for Solar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at {}, {}",
            self.event,
            self.coordinates.lat(),
            self.coordinates.lon()
        )
    }
}

/// Reads `every` texts: `10s`, `5m`, `1h`, `2d`, `1.5s`, or a bare number of seconds.
pub fn parse_every(text: &str) -> Result<Duration, Error> {
    let bad = || {
        Error::new(
            ErrorKind::Config,
            format!("every = {text:?}: expected a number with s, m, h or d (10s, 5m, 1h)"),
        )
    };
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit.trim() {
        "s" | "sec" | "secs" | "seconds" => 1.0,
        "m" | "min" | "minutes" => 60.0,
        "h" | "hours" => 3600.0,
        "d" | "days" => 86_400.0,
        _ => return Err(bad()),
    };
    let n = f64::from_str(number.trim()).map_err(|_| bad())?;
    Duration::try_from_secs_f64(n * scale)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::{Schedule, Solar, parse_every};
    use chrono::{DateTime, Timelike, Utc};
    use std::time::Duration;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("a time")
            .with_timezone(&Utc)
    }

    #[test]
    fn every_reads_units_and_counts_from_the_last_run() {
        assert_eq!(parse_every("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(parse_every("5m").ok(), Some(Duration::from_secs(300)));
        assert_eq!(parse_every("1.5 h").ok(), Some(Duration::from_secs(5400)));
        assert_eq!(parse_every("30").ok(), Some(Duration::from_secs(30)));
        assert!(parse_every("0s").is_err() && parse_every("soon").is_err());
        let every = Schedule::Every(Duration::from_secs(10));
        assert_eq!(
            every.next_after(utc("2026-01-01T00:00:00Z"), chrono_tz::UTC),
            Some(utc("2026-01-01T00:00:10Z"))
        );
    }

    #[test]
    fn solar_events_come_in_their_order_of_the_day() {
        // Oslo, midsummer: dawn, sunrise, noon, sunset, dusk in order, noon near 11:2x UTC.
        let at = utc("2026-06-21T00:00:00Z");
        let next = |event: &str| {
            Solar::new(event, 59.91, 10.75)
                .expect("an event")
                .next_after(at)
                .expect("happens")
        };
        let (rise, noon, set) = (next("sunrise"), next("solar_noon"), next("sunset"));
        assert!(rise < noon && noon < set, "{rise} {noon} {set}");
        assert_eq!(noon.hour(), 11);
        assert!(next("dawn_civil") < rise && next("dusk_civil") > set);
        // No astronomical dusk in an Oslo midsummer night: the next is weeks away.
        assert!(next("dusk_astronomical") - at > chrono::Duration::days(7));
        assert!(Solar::new("noonish", 0.0, 0.0).is_err());
        assert!(Solar::new("sunrise", 91.0, 0.0).is_err());
    }
}
