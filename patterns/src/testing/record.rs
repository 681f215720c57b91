//! What the recorder keeps: every publish, every delivery and its settlement, and the shared
//! log they are written to.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kombu_core::transport::{Decoder, Outcome, Outgoing};
use kombu_core::{DeliveryInfo, Headers, Message, Properties, Result, dead_letter};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

/// One message published through a recorded connection, as the broker took it.
///
/// Published messages are recorded once the broker accepted them: a publish that failed is not
/// here. Dead letters the consumer wrote (a message it could not decode, sent to its queue's
/// dead-letter exchange or `<queue>.dlq`) and messages it published back
/// ([`ErrorAction::Requeue`](kombu_core::ErrorAction::Requeue)) are publishes too.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// The exchange it was published to (`""`: the default exchange, routing by queue name).
    pub exchange: String,
    /// Its routing key (on the default exchange: the queue's name).
    pub routing_key: String,
    /// The message: body (serialized, possibly compressed), content type, headers, properties.
    pub message: Message,
    /// How long it was held back before consumers could see it (`Publish::delay` / `eta`);
    /// `None`: delivered at once.
    pub delay: Option<Duration>,
}

impl Published {
    /// The application headers.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// A header as a string, when it is one.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.message.headers.get(name).and_then(|v| v.as_str())
    }

    /// The properties (correlation id, reply-to, priority, expiration, ...).
    pub fn properties(&self) -> &Properties {
        &self.message.properties
    }

    /// The serialized (possibly compressed) body.
    pub fn body(&self) -> &Bytes {
        &self.message.body
    }

    /// The content type (`application/json`, ...).
    pub fn content_type(&self) -> Option<&str> {
        self.message.content_type.as_deref()
    }

    /// Decodes the body into `T` as a consumer would: decompressed, deserialized by its content
    /// type with the default serializer registry (every content type accepted).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Decoder::default().decode(&self.message)
    }

    /// Why the message was dead-lettered, when it is a dead letter a consumer wrote (its
    /// `x-kombu-dead-reason` header).
    pub fn dead_letter_reason(&self) -> Option<&str> {
        self.header_str(dead_letter::REASON)
    }
}

/// How a delivery handed out by a recorded connection was settled.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Not settled yet (the handler still has it).
    Pending,
    /// Acknowledged: done.
    Acked,
    /// Put back in its queue, marked redelivered: requeued, dropped unsettled, or published
    /// back by the consumer's [`ErrorAction::Requeue`](kombu_core::ErrorAction::Requeue).
    Requeued,
    /// Rejected on a queue without a dead-letter exchange: the broker dropped it.
    Rejected,
    /// Dead-lettered: rejected on a queue declared (through a recorded connection) with a
    /// dead-letter exchange, or copied to the dead-letter path by the consumer's error policy
    /// (a message it could not decode or refused). `reason` is the consumer's
    /// `x-kombu-dead-reason`, or `"rejected"`.
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// Delivered to a no-ack consumer: settled when it was handed out.
    NoAck,
}

impl Settlement {
    /// Whether it is settled (anything but [`Settlement::Pending`]).
    pub fn is_settled(&self) -> bool {
        !matches!(self, Settlement::Pending)
    }
}

/// One delivery a recorded connection handed out (to a consumer or a `get`), with how it was
/// settled so far.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq)]
pub struct Consumed {
    /// Where it came from: queue, exchange, routing key, whether it was redelivered, tags.
    pub info: DeliveryInfo,
    /// The message as delivered.
    pub message: Message,
    /// How it was settled, as of when this copy was taken from the recorder.
    pub settlement: Settlement,
}

impl Consumed {
    /// The queue it was taken from.
    pub fn queue(&self) -> &str {
        &self.info.queue
    }

    /// Decodes the body into `T` (default registry, every content type accepted).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Decoder::default().decode(&self.message)
    }
}

/// What a consumer published before it acked a delivery: a copy that says how the ack is to be
/// read (dead-lettered, published back).
#[derive(Debug)]
struct Pending {
    queue: String,
    body: Bytes,
    settlement: Settlement,
}

#[derive(Debug, Default)]
struct Log {
    published: Vec<Published>,
    /// Whether `published[i]` was returned by a wait already.
    published_taken: Vec<bool>,
    consumed: Vec<Consumed>,
    /// Whether `consumed[i]` was returned by a wait already.
    consumed_taken: Vec<bool>,
    /// Queues declared with a dead-letter exchange: a reject there dead-letters.
    dead_letter_queues: HashSet<String>,
    /// Copies published ahead of the ack of the delivery they stand for.
    pending: Vec<Pending>,
    /// How many clears there were: an entry from before a clear names nothing any more.
    generation: u64,
}

/// The log one recorder and every connection to its URL share. Every change wakes the waits.
#[derive(Debug, Default)]
pub(crate) struct State {
    log: Mutex<Log>,
    changed: Notify,
}

/// Where a delivery is in the log, to record its settlement later: its index, and the
/// generation of the log (a clear starts a new one, whose indexes name other deliveries).
pub(crate) type Entry = (usize, u64);

impl State {
    fn touch(&self) {
        self.changed.notify_waiters();
    }

    pub(crate) fn changed(&self) -> &Notify {
        &self.changed
    }

    pub(crate) fn declared_dead_letter_queue(&self, queue: &str) {
        self.log.lock().dead_letter_queues.insert(queue.to_owned());
    }

    pub(crate) fn published(&self, outgoing: &Outgoing) {
        let (exchange, routing_key, message) =
            (&outgoing.exchange, &outgoing.routing_key, &outgoing.message);
        {
            let mut log = self.log.lock();
            let original = message
                .headers
                .get(dead_letter::ORIGINAL_QUEUE)
                .and_then(|v| v.as_str());
            if let Some(queue) = original {
                // A dead letter the consumer's error policy wrote before acking the original.
                let reason = message
                    .headers
                    .get(dead_letter::REASON)
                    .and_then(|v| v.as_str())
                    .unwrap_or("dead-lettered")
                    .to_owned();
                let pending = Pending {
                    queue: queue.to_owned(),
                    body: message.body.clone(),
                    settlement: Settlement::DeadLettered { reason },
                };
                log.pending.push(pending);
            } else if message.headers.contains_key(dead_letter::REDELIVERIES) && exchange.is_empty()
            {
                // Published back to its queue by ErrorAction::Requeue, then acked.
                let pending = Pending {
                    queue: routing_key.clone(),
                    body: message.body.clone(),
                    settlement: Settlement::Requeued,
                };
                log.pending.push(pending);
            }
            log.published.push(Published {
                exchange: exchange.clone(),
                routing_key: routing_key.clone(),
                message: message.clone(),
                delay: outgoing.delay,
            });
            log.published_taken.push(false);
        }
        self.touch();
    }

    /// Records a delivery handed out; returns its entry.
    pub(crate) fn consumed(&self, info: &DeliveryInfo, message: &Message, no_ack: bool) -> Entry {
        let entry = {
            let mut log = self.log.lock();
            log.consumed.push(Consumed {
                info: info.clone(),
                message: message.clone(),
                settlement: if no_ack {
                    Settlement::NoAck
                } else {
                    Settlement::Pending
                },
            });
            log.consumed_taken.push(false);
            (log.consumed.len() - 1, log.generation)
        };
        self.touch();
        entry
    }

    /// Records how the delivery of `entry` was settled.
    pub(crate) fn settled(&self, entry: Entry, outcome: Outcome) {
        {
            let mut log = self.log.lock();
            let (index, generation) = entry;
            if generation != log.generation {
                return; // cleared since it was handed out
            }
            let Some(consumed) = log.consumed.get(index) else {
                return;
            };
            let queue = consumed.info.queue.clone();
            let body = consumed.message.body.clone();
            let settlement = match outcome {
                Outcome::Requeue => Settlement::Requeued,
                Outcome::Reject if log.dead_letter_queues.contains(&queue) => {
                    Settlement::DeadLettered {
                        reason: "rejected".to_owned(),
                    }
                }
                Outcome::Reject => Settlement::Rejected,
                Outcome::Ack => {
                    let copy = log
                        .pending
                        .iter()
                        .position(|p| p.queue == queue && p.body == body);
                    match copy {
                        Some(i) => log.pending.remove(i).settlement,
                        None => Settlement::Acked,
                    }
                }
            };
            if let Some(consumed) = log.consumed.get_mut(index) {
                consumed.settlement = settlement;
            }
        }
        self.touch();
    }

    pub(crate) fn clear(&self) {
        {
            let mut log = self.log.lock();
            // Declarations stay: the queues still have their dead-letter exchanges.
            let kept = Log {
                dead_letter_queues: std::mem::take(&mut log.dead_letter_queues),
                generation: log.generation + 1,
                ..Log::default()
            };
            *log = kept;
        }
        self.touch();
    }

    pub(crate) fn all_published(&self) -> Vec<Published> {
        self.log.lock().published.clone()
    }

    pub(crate) fn all_consumed(&self) -> Vec<Consumed> {
        self.log.lock().consumed.clone()
    }

    /// The first publish matching `filter` no wait returned yet, marked returned.
    pub(crate) fn take_published(&self, filter: impl Fn(&Published) -> bool) -> Option<Published> {
        let mut log = self.log.lock();
        let log = &mut *log;
        let i = (0..log.published.len())
            .find(|&i| !log.published_taken[i] && filter(&log.published[i]))?;
        log.published_taken[i] = true;
        Some(log.published[i].clone())
    }

    /// The first settled delivery matching `filter` no wait returned yet, marked returned.
    pub(crate) fn take_settled(&self, filter: impl Fn(&Consumed) -> bool) -> Option<Consumed> {
        let mut log = self.log.lock();
        let log = &mut *log;
        let i = (0..log.consumed.len()).find(|&i| {
            !log.consumed_taken[i]
                && log.consumed[i].settlement.is_settled()
                && filter(&log.consumed[i])
        })?;
        log.consumed_taken[i] = true;
        Some(log.consumed[i].clone())
    }
}

/// The recorders of this process by name: a connection to `memory+record://NAME` writes to the
/// log of `NAME`, whoever opened it.
pub(crate) fn state_of(name: &str) -> Arc<State> {
    static STATES: std::sync::LazyLock<Mutex<std::collections::HashMap<String, Arc<State>>>> =
        std::sync::LazyLock::new(Default::default);
    STATES.lock().entry(name.to_owned()).or_default().clone()
}
