//! The memory transport's delayed messages: per queue, held by due time (tokio's clock) until
//! a look at the queue finds them due and moves them to its tail.

use std::collections::BTreeMap;

use tokio::time::Instant;

use crate::transport::virtual_transport::Envelope;

/// A queue's delayed messages, by due time then arrival.
#[derive(Debug, Default)]
pub(super) struct Delayed {
    held: BTreeMap<(Instant, u64), Envelope>,
    next_seq: u64,
}

impl Delayed {
    /// Holds `envelope` until `due`.
    pub(super) fn hold(&mut self, due: Instant, envelope: Envelope) {
        self.held.insert((due, self.next_seq), envelope);
        self.next_seq += 1;
    }

    /// The earliest due time, if any message is held.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.held.keys().next().map(|(due, _)| *due)
    }

    /// Takes every message due by `now`, earliest first.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<Envelope> {
        let mut due = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            due.push(entry.remove());
        }
        due
    }

    /// How many are due by `now`.
    pub(super) fn count_due(&self, now: Instant) -> usize {
        self.held.keys().take_while(|(due, _)| *due <= now).count()
    }

    /// How many are held.
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }
}
