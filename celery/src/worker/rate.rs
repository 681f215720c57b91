//! Per-task rate limits as Celery writes them (`"10/s"`, `"100/m"`, `"1000/h"`, a bare number
//! per second): a token bucket of one per worker, as Celery's.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use kombu_core::{Error, ErrorKind};
use tokio::time::Instant;

/// A task's rate limit: at most `count` starts per `per`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    interval: Duration,
}

impl RateLimit {
    /// At most `count` per `per` (a zero count or period: no limit worth the name, one per
    /// nanosecond).
    pub fn new(count: u32, per: Duration) -> Self {
        let interval = per.checked_div(count.max(1)).unwrap_or(Duration::ZERO);
        RateLimit {
            interval: interval.max(Duration::from_nanos(1)),
        }
    }

    /// The time between two starts.
    pub fn interval(&self) -> Duration {
        self.interval
    }
}

impl FromStr for RateLimit {
    type Err = Error;

    /// Celery's rate-limit strings: `"10/s"`, `"100/m"`, `"1000/h"`, `"5"` (per second).
    fn from_str(text: &str) -> Result<Self, Error> {
        let bad = || {
            Error::new(
                ErrorKind::Config,
                format!("rate limit {text:?}: expected N, N/s, N/m or N/h"),
            )
        };
        let (count, per) = match text.trim().split_once('/') {
            Some((count, unit)) => {
                let per = match unit.trim() {
                    "s" => Duration::from_secs(1),
                    "m" => Duration::from_secs(60),
                    "h" => Duration::from_secs(3600),
                    _ => return Err(bad()),
                };
                (count.trim(), per)
            }
            None => (text.trim(), Duration::from_secs(1)),
        };
        let count: f64 = count.parse().map_err(|_| bad())?;
        if !(count.is_finite() && count > 0.0) {
            return Err(bad());
        }
        let interval = Duration::try_from_secs_f64(per.as_secs_f64() / count).map_err(|_| bad())?;
        Ok(RateLimit {
            interval: interval.max(Duration::from_nanos(1)),
        })
    }
}

impl fmt::Display for RateLimit {
    /// As Celery writes it: a whole count per second, minute or hour where there is one
    /// (`100/s`, `10/m`), else per second with three decimals.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_second = 1.0 / self.interval.as_secs_f64();
        for (unit, seconds) in [("s", 1.0), ("m", 60.0), ("h", 3600.0)] {
            let count = per_second * seconds;
            if count >= 1.0 && (count - count.round()).abs() < 1e-6 {
                return write!(f, "{}/{unit}", count.round());
            }
        }
        write!(f, "{per_second:.3}/s")
    }
}

/// The bucket of one task on one worker.
#[derive(Debug)]
pub(crate) struct Bucket {
    interval: Duration,
    next: Mutex<Option<Instant>>,
}

impl Bucket {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Bucket {
            interval: limit.interval,
            next: Mutex::new(None),
        }
    }

    /// How long the caller must wait before it may start; takes its slot.
    pub(crate) fn take(&self) -> Duration {
        let now = Instant::now();
        let Ok(mut next) = self.next.lock() else {
            return Duration::ZERO;
        };
        let start = next.map_or(now, |at| at.max(now));
        *next = Some(start.checked_add(self.interval).unwrap_or(start));
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_celerys_rate_strings() {
        let limit = |s: &str| s.parse::<RateLimit>().map(|r| r.interval());
        assert_eq!(limit("10/s").ok(), Some(Duration::from_millis(100)));
        assert_eq!(limit("2/m").ok(), Some(Duration::from_secs(30)));
        assert_eq!(limit("1/h").ok(), Some(Duration::from_secs(3600)));
        assert_eq!(limit("4").ok(), Some(Duration::from_millis(250)));
        assert!(limit("0/s").is_err());
        assert!(limit("ten/s").is_err());
        assert!(limit("10/d").is_err());
        let shown = |s: &str| s.parse::<RateLimit>().map(|r| r.to_string()).ok();
        assert_eq!(shown("100/s").as_deref(), Some("100/s"));
        assert_eq!(shown("10/m").as_deref(), Some("10/m"));
        assert_eq!(shown("7/h").as_deref(), Some("7/h"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_spaces_starts_by_the_interval() {
        let bucket = Bucket::new(RateLimit::new(2, Duration::from_secs(1)));
        assert_eq!(bucket.take(), Duration::ZERO);
        assert_eq!(bucket.take(), Duration::from_millis(500));
        assert_eq!(bucket.take(), Duration::from_millis(1000));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(bucket.take(), Duration::ZERO);
    }
}
