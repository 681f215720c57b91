//! A queue with the settings of its handler ([`Route`]), and the retry [`Backoff`].

use std::time::Duration;

use kombu_core::Queue;

/// A queue a worker consumes, with the settings of its handler; each unset one is the
/// worker's (see [`WorkerBuilder`](super::WorkerBuilder)). A queue or its name converts into a
/// route with the worker's settings.
///
/// ```
/// use std::time::Duration;
/// use kombu_patterns::worker::{Backoff, Route};
///
/// let route = Route::from("thumbnails")
///     .concurrency(4) // at most 4 handlers of this queue at once
///     .timeout(Duration::from_secs(30)) // a handler running longer has failed
///     .max_retries(5)
///     .backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)));
/// assert_eq!(route.queue().name, "thumbnails");
/// ```
#[derive(Debug, Clone)]
pub struct Route {
    pub(crate) queue: Queue,
    pub(crate) concurrency: Option<usize>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_retries: Option<u32>,
    pub(crate) backoff: Option<Backoff>,
}

impl Route {
    /// The route of `queue` (declared by the worker unless it declares nothing), with the
    /// worker's settings. `Route::from("name")` routes a plain queue of that name.
    pub fn new(queue: Queue) -> Self {
        Route {
            queue,
            concurrency: None,
            timeout: None,
            max_retries: None,
            backoff: None,
        }
    }

    /// The queue.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Most handlers of this queue running at once (at least 1); the worker's own bound holds
    /// too. The queue's consumer prefetches as many messages.
    pub fn concurrency(mut self, max: usize) -> Self {
        self.concurrency = Some(max.max(1));
        self
    }

    /// How long one handler may run; past it the attempt has failed (retried, then
    /// dead-lettered).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How many times a failed message is tried again before it is dead-lettered (0: never).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = Some(retries);
        self
    }

    /// How long a failed message waits before it is tried again.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

impl From<Queue> for Route {
    fn from(queue: Queue) -> Self {
        Route::new(queue)
    }
}

impl From<&str> for Route {
    fn from(queue: &str) -> Self {
        Route::new(Queue::new(queue))
    }
}

impl From<String> for Route {
    fn from(queue: String) -> Self {
        Route::new(Queue::new(queue))
    }
}

/// How long a failed message waits before its next attempt: `initial`, multiplied by
/// `factor` after each retry, at most `max`.
///
/// ```
/// use std::time::Duration;
/// use kombu_patterns::worker::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
/// assert_eq!(backoff.delay(0), Duration::from_millis(100));
/// assert_eq!(backoff.delay(2), Duration::from_millis(400));
/// assert_eq!(backoff.delay(9), Duration::from_secs(1));
/// assert_eq!(Backoff::none().delay(3), Duration::ZERO);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    factor: u32,
    max: Duration,
}

impl Default for Backoff {
    /// 1 s, doubling, at most 5 minutes.
    fn default() -> Self {
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(300))
    }
}

impl Backoff {
    /// `initial`, doubling after each retry, at most `max`.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            factor: 2,
            max,
        }
    }

    /// Always `delay`.
    pub fn fixed(delay: Duration) -> Self {
        Backoff {
            initial: delay,
            factor: 1,
            max: delay,
        }
    }

    /// No wait: a failed message is republished at once.
    pub fn none() -> Self {
        Backoff::fixed(Duration::ZERO)
    }

    /// The wait before retry number `retries + 1` (after `retries` retries so far).
    pub fn delay(&self, retries: u32) -> Duration {
        let factor = self.factor.checked_pow(retries).unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}
