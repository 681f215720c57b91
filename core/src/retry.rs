//! [`RetryPolicy`]: how an operation is tried again after a recoverable error, as kombu's
//! `retry_policy` (`interval_start`, `interval_step`, `interval_max`, `max_retries`), plus
//! jitter and a deadline.
//!
//! Only errors whose kind says they are recoverable ([`Error::is_recoverable`]) are retried: a
//! refused login, a bad option or a missing queue fails at once. The waits grow linearly, as
//! kombu's do: `interval_start`, then `interval_step` more after each retry, never more than
//! `interval_max`; jitter spreads each wait by up to its fraction either way, so that many
//! clients that lost the same broker do not come back in step.
//!
//! ```
//! use std::time::Duration;
//! use kombu_core::RetryPolicy;
//!
//! let policy = RetryPolicy::default()
//!     .max_retries(Some(3))
//!     .interval_start(Duration::ZERO)
//!     .interval_step(Duration::from_millis(200))
//!     .interval_max(Duration::from_millis(500))
//!     .jitter(0.0);
//! let waits: Vec<Duration> = policy.delays().collect();
//! assert_eq!(
//!     waits,
//!     [Duration::ZERO, Duration::from_millis(200), Duration::from_millis(400)]
//! );
//! ```

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Result};

/// How an operation is tried again after a recoverable error. See the [module](crate::retry) docs.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Most retries after the first try; `None` = no limit (the deadline, if any, still holds).
    pub max_retries: Option<u32>,
    /// The wait before the first retry.
    pub interval_start: Duration,
    /// How much longer each following wait is.
    pub interval_step: Duration,
    /// The longest wait.
    pub interval_max: Duration,
    /// Each wait is spread by up to this fraction of it, either way (0 = exact, at most 1).
    pub jitter: f64,
    /// No retry starts later than this after the first try (`None` = no deadline).
    pub deadline: Option<Duration>,
    /// Whether an error marked [`Error::outcome_unknown`] (a write the broker may have done: a
    /// publish whose confirm or reply was lost) is retried too. Off by default: retrying it
    /// may duplicate the write. On = at least once, with possible duplicates.
    pub retry_unknown: bool,
}

impl Default for RetryPolicy {
    /// Unlimited retries within 30 s, waiting 100 ms, then 300 ms, 500 ms, ... up to 2 s,
    /// each spread by 20 %: a broker restart of a few seconds is ridden through, a broker that
    /// stays away is reported within half a minute.
    fn default() -> Self {
        RetryPolicy {
            max_retries: None,
            interval_start: Duration::from_millis(100),
            interval_step: Duration::from_millis(200),
            interval_max: Duration::from_secs(2),
            jitter: 0.2,
            deadline: Some(Duration::from_secs(30)),
            retry_unknown: false,
        }
    }
}

/// One retry about to happen, as a retry callback sees it.
#[derive(Debug)]
pub struct RetryEvent<'a> {
    /// The retry's number, 1 for the first.
    pub attempt: u32,
    /// What failed.
    pub error: &'a Error,
    /// How long it waits before the retry.
    pub delay: Duration,
}

impl RetryPolicy {
    /// A policy that never retries.
    pub fn never() -> Self {
        RetryPolicy {
            max_retries: Some(0),
            ..RetryPolicy::default()
        }
    }

    /// The default waits with neither a retry limit nor a deadline: for consumers, which wait
    /// for their broker as long as it takes.
    pub fn forever() -> Self {
        RetryPolicy {
            max_retries: None,
            deadline: None,
            ..RetryPolicy::default()
        }
    }

    /// Sets the most retries (`None` = no limit).
    #[must_use]
    pub fn max_retries(mut self, max: Option<u32>) -> Self {
        self.max_retries = max;
        self
    }

    /// Sets the wait before the first retry.
    #[must_use]
    pub fn interval_start(mut self, wait: Duration) -> Self {
        self.interval_start = wait;
        self
    }

    /// Sets how much longer each following wait is.
    #[must_use]
    pub fn interval_step(mut self, step: Duration) -> Self {
        self.interval_step = step;
        self
    }

    /// Sets the longest wait.
    #[must_use]
    pub fn interval_max(mut self, max: Duration) -> Self {
        self.interval_max = max;
        self
    }

    /// Sets the jitter, a fraction of each wait (clamped to 0..=1).
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// Sets the deadline (`None` = none).
    #[must_use]
    pub fn deadline(mut self, deadline: Option<Duration>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Sets whether errors whose outcome is unknown ([`Error::outcome_unknown`]) are retried
    /// (off by default: a retry may then duplicate a write the broker did).
    #[must_use]
    pub fn retry_unknown(mut self, retry: bool) -> Self {
        self.retry_unknown = retry;
        self
    }

    /// Whether this policy may retry after `error`: it is recoverable, and either its outcome
    /// is known (the broker did not do it) or [`retry_unknown`](RetryPolicy::retry_unknown)
    /// is on.
    pub fn retries(&self, error: &Error) -> bool {
        error.is_recoverable() && (self.retry_unknown || !error.outcome_unknown())
    }

    /// The waits before each retry, in order (endless without `max_retries`); the deadline is
    /// not applied here.
    pub fn delays(&self) -> Delays {
        Delays {
            policy: self.clone(),
            attempt: 0,
        }
    }

    /// Runs `op` until it succeeds, fails with an error this policy does not retry (not
    /// recoverable, or of unknown outcome without [`retry_unknown`](RetryPolicy::retry_unknown)),
    /// or the policy gives up (retries spent, or the next retry would start after the
    /// deadline); then returns the last error. `on_retry` sees each retry before its wait.
    pub async fn run<T, F, Fut, R>(&self, mut op: F, mut on_retry: R) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
        R: FnMut(&RetryEvent<'_>),
    {
        let started = Instant::now();
        let mut delays = self.delays();
        loop {
            let error = match op().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if !self.retries(&error) {
                return Err(error);
            }
            let Some(delay) = delays.next_within(started.elapsed()) else {
                return Err(error);
            };
            on_retry(&RetryEvent {
                attempt: delays.attempt,
                error: &error,
                delay,
            });
            tokio::time::sleep(delay).await;
        }
    }
}

/// A callback that sees each retry (for logs and metrics), kept by a connection, a producer or
/// a consumer's [`ConsumeOptions`](crate::transport::ConsumeOptions). Cheap to clone; two are
/// equal when they are clones of one callback.
#[derive(Clone)]
pub struct OnRetry(std::sync::Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>);

impl OnRetry {
    /// Wraps `callback`.
    pub fn new(callback: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        OnRetry(std::sync::Arc::new(callback))
    }

    /// Calls the callback.
    pub fn call(&self, event: &RetryEvent<'_>) {
        (self.0)(event)
    }
}

impl PartialEq for OnRetry {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl std::fmt::Debug for OnRetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnRetry(..)")
    }
}

/// Logs a retry (at warn: the broker misbehaves) and passes it to `callback`, if any.
pub(crate) fn report(what: &str, event: &RetryEvent<'_>, callback: Option<&OnRetry>) {
    tracing::warn!(
        attempt = event.attempt,
        delay = ?event.delay,
        error = %format_args!("{:#}", event.error),
        "{what} failed; retrying"
    );
    if let Some(callback) = callback {
        callback.call(event);
    }
}

/// The waits of a [`RetryPolicy`], from [`RetryPolicy::delays`].
#[derive(Debug, Clone)]
pub struct Delays {
    policy: RetryPolicy,
    attempt: u32,
}

impl Delays {
    /// The next wait, unless the retries are used up or the retry would start past the
    /// policy's deadline, `elapsed` being the time since the first try.
    pub fn next_within(&mut self, elapsed: Duration) -> Option<Duration> {
        let delay = self.next()?;
        match self.policy.deadline {
            Some(deadline) if elapsed.saturating_add(delay) > deadline => None,
            _ => Some(delay),
        }
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if let Some(max) = self.policy.max_retries
            && self.attempt >= max
        {
            return None;
        }
        let p = &self.policy;
        let linear = p
            .interval_step
            .checked_mul(self.attempt)
            .and_then(|step| p.interval_start.checked_add(step))
            .unwrap_or(p.interval_max);
        let base = linear.min(p.interval_max);
        self.attempt = self.attempt.saturating_add(1);
        Some(spread(base, p.jitter))
    }
}

/// `base` moved by a random fraction of up to `jitter` of it, either way.
/// The field is public, so it is clamped here too (not only by [`RetryPolicy::jitter`]); a
/// wait too long for a `Duration` saturates instead of panicking.
fn spread(base: Duration, jitter: f64) -> Duration {
    let jitter = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    if jitter == 0.0 || base.is_zero() {
        return base;
    }
    // Uniform in [-1, 1) from a fresh UUID's random bits: no extra dependency for this.
    let bits = uuid::Uuid::new_v4().as_u128() as u64;
    let unit = (bits >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
    let factor = (1.0 + unit * jitter).max(0.0);
    Duration::try_from_secs_f64(base.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn extreme_settings_do_not_panic() {
        let mut policy = RetryPolicy::default().interval_max(Duration::MAX);
        policy.interval_start = Duration::MAX;
        policy.jitter = f64::INFINITY;
        assert_eq!(policy.delays().next(), Some(Duration::MAX));
        policy.jitter = 1.0;
        assert!(policy.delays().next().is_some());
        policy.jitter = f64::NAN;
        assert_eq!(policy.delays().next(), Some(Duration::MAX));
    }

    #[test]
    fn waits_grow_linearly_up_to_the_max() {
        let policy = RetryPolicy::default()
            .max_retries(Some(5))
            .interval_start(Duration::from_millis(100))
            .interval_step(Duration::from_millis(300))
            .interval_max(Duration::from_millis(800))
            .jitter(0.0);
        let waits: Vec<u128> = policy.delays().map(|d| d.as_millis()).collect();
        assert_eq!(waits, [100, 400, 700, 800, 800]);
        assert_eq!(RetryPolicy::never().delays().count(), 0);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let policy = RetryPolicy::default()
            .interval_start(Duration::from_secs(1))
            .interval_step(Duration::ZERO)
            .jitter(0.25);
        for wait in policy.delays().take(200) {
            assert!(
                wait >= Duration::from_millis(750) && wait <= Duration::from_millis(1250),
                "{wait:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_recoverable_errors_and_reports_each() {
        let policy = RetryPolicy::default().max_retries(Some(4)).jitter(0.0);
        let mut tries = 0;
        let mut seen = Vec::new();
        let result: Result<u32> = policy
            .run(
                || {
                    tries += 1;
                    let n = tries;
                    async move {
                        if n < 3 {
                            Err(Error::new(ErrorKind::Connection, "down"))
                        } else {
                            Ok(n)
                        }
                    }
                },
                |event| seen.push((event.attempt, event.delay)),
            )
            .await;
        assert_eq!(result.expect("third try works"), 3);
        assert_eq!(
            seen,
            [
                (1, Duration::from_millis(100)),
                (2, Duration::from_millis(300))
            ]
        );

        let mut tries = 0;
        let refused: Result<()> = policy
            .run(
                || {
                    tries += 1;
                    async { Err(Error::config("bad option")) }
                },
                |_| panic!("a configuration error is not retried"),
            )
            .await;
        assert!(refused.is_err());
        assert_eq!(tries, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline_or_the_retry_limit() {
        let policy = RetryPolicy::default()
            .jitter(0.0)
            .interval_start(Duration::from_secs(1))
            .interval_step(Duration::ZERO)
            .deadline(Some(Duration::from_millis(3500)));
        let mut tries = 0;
        let result: Result<()> = policy
            .run(
                || {
                    tries += 1;
                    async { Err(Error::new(ErrorKind::Connection, "down")) }
                },
                |_| {},
            )
            .await;
        assert_eq!(result.expect_err("gives up").kind(), ErrorKind::Connection);
        assert_eq!(
            tries, 4,
            "tries at 0, 1, 2 and 3 s; the next would start after 3.5 s"
        );

        let mut tries = 0;
        let limited: Result<()> = RetryPolicy::default()
            .max_retries(Some(2))
            .run(
                || {
                    tries += 1;
                    async { Err(Error::new(ErrorKind::Timeout, "slow")) }
                },
                |_| {},
            )
            .await;
        assert!(limited.is_err());
        assert_eq!(tries, 3);
    }
}
