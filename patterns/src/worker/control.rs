//! The outside of a running worker: its counters ([`WorkerStats`]) and the [`WorkerHandle`]
//! that reads them and stops it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

/// What a worker has done so far; from [`WorkerHandle::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerStats {
    /// Messages whose handler succeeded (and were acked).
    pub handled: u64,
    /// Attempts that failed: an error, a timeout or a panic of the handler.
    pub failed: u64,
    /// Failed messages republished for another attempt.
    pub retried: u64,
    /// Messages dead-lettered: retries used up, a permanent error, or a body that did not
    /// decode (under the default error policy).
    pub dead_lettered: u64,
    /// Messages put back in their queue as they were (a handler's [`JobError::requeue`],
    /// or the error policy's requeue of a body that did not decode).
    ///
    /// [`JobError::requeue`]: super::JobError::requeue
    pub requeued: u64,
}

/// The shared counters behind [`WorkerStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    handled: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dead_lettered: AtomicU64,
    requeued: AtomicU64,
}

/// One of the counters.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Count {
    Handled,
    Failed,
    Retried,
    DeadLettered,
    Requeued,
}

impl Counters {
    pub(crate) fn add(&self, count: Count) {
        let counter = match count {
            Count::Handled => &self.handled,
            Count::Failed => &self.failed,
            Count::Retried => &self.retried,
            Count::DeadLettered => &self.dead_lettered,
            Count::Requeued => &self.requeued,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> WorkerStats {
        WorkerStats {
            handled: self.handled.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            requeued: self.requeued.load(Ordering::Relaxed),
        }
    }
}

/// Reads a worker's counters and stops it, from any task; from
/// [`Worker::handle`](super::Worker::handle). Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    pub(crate) counters: Arc<Counters>,
    /// Wakes the lanes that wait when the worker stops.
    pub(crate) stop: Arc<watch::Sender<bool>>,
    /// Set with `stop`: read by busy lanes at each turn, cheaper than the watch.
    stopped: Arc<AtomicBool>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("stopped", &self.is_stopped())
            .field("stats", &self.stats())
            .finish()
    }
}

impl WorkerHandle {
    pub(crate) fn new() -> Self {
        WorkerHandle {
            counters: Arc::new(Counters::default()),
            stop: Arc::new(watch::Sender::new(false)),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// What the worker has done so far.
    pub fn stats(&self) -> WorkerStats {
        self.counters.snapshot()
    }

    /// Stops the worker gracefully: it takes no new message, lets the handlers in flight
    /// finish within its shutdown timeout, returns the messages it prefetched and did not
    /// start to their queues, and [`Worker::run`](super::Worker::run) returns. Idempotent; a
    /// stop before `run` makes `run` return at once.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.send_replace(true);
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}
