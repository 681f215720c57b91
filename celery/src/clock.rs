//! Celery's Lamport clock (`kombu.clocks.LamportClock`): every event and remote-control
//! message carries the sender's clock, and a receiver moves its own past it, so messages from
//! several nodes can be ordered without synchronised wall clocks.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// A Lamport clock; clones share the same counter.
#[derive(Debug, Clone, Default)]
pub struct LamportClock {
    value: Arc<AtomicU64>,
}

impl LamportClock {
    /// A clock at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The value now.
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }

    /// Ticks once (a local event or a message sent) and returns the new value.
    pub fn forward(&self) -> u64 {
        self.value.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Moves past `other` (a received message's clock): `max(own, other) + 1`, returned.
    pub fn adjust(&self, other: u64) -> u64 {
        let mut now = self.value.load(Ordering::Relaxed);
        loop {
            let next = now.max(other).wrapping_add(1);
            match self
                .value
                .compare_exchange_weak(now, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => now = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LamportClock;

    #[test]
    fn a_clock_ticks_and_moves_past_what_it_hears() {
        let clock = LamportClock::new();
        assert_eq!(clock.forward(), 1);
        assert_eq!(clock.adjust(10), 11);
        assert_eq!(clock.adjust(3), 12, "an older clock still ticks it once");
        assert_eq!(clock.clone().forward(), 13, "clones share the counter");
        assert_eq!(clock.value(), 13);
    }
}
