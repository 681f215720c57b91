//! What a broker can tell of one queue: [`QueueStats`], from
//! [`Channel::queue_stats`](crate::transport::Channel::queue_stats).

use std::time::SystemTime;

/// What a broker can tell of one queue at a moment: [`Channel::queue_stats`](crate::transport::Channel::queue_stats). A figure the
/// transport cannot know is `None`, never a guess.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages ready to be delivered (as [`Channel::queue_size`](crate::transport::Channel::queue_size)).
    pub ready: u64,
    /// Messages delivered (or taken) and not yet settled.
    pub unacked: Option<u64>,
    /// Consumers subscribed to the queue.
    pub consumers: Option<u64>,
    /// When the oldest ready message was stored, where the store records it.
    pub oldest: Option<SystemTime>,
}

impl QueueStats {
    /// Stats of a queue with `ready` ready messages and nothing else known.
    pub fn new(ready: u64) -> Self {
        QueueStats {
            ready,
            ..QueueStats::default()
        }
    }

    /// With the count of unsettled messages.
    pub fn unacked(mut self, unacked: u64) -> Self {
        self.unacked = Some(unacked);
        self
    }

    /// With the count of consumers.
    pub fn consumers(mut self, consumers: u64) -> Self {
        self.consumers = Some(consumers);
        self
    }

    /// With when the oldest ready message was stored.
    pub fn oldest(mut self, at: Option<SystemTime>) -> Self {
        self.oldest = at;
        self
    }
}
