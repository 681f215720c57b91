//! Fanout exchanges over PUB/SUB, as kombu does them: a publish is one `PUBLISH` to the
//! exchange's topic; queues of this process bound to a fanout exchange subscribe to it through
//! one PUB/SUB connection per backend, and what arrives waits in memory for their consumers
//! (at-most-once, like kombu's: nothing is kept in Redis).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kombu_core::transport::virtual_transport::{Receipt, Taken, Unreadable, envelope};
use kombu_core::{Error, ErrorKind, Result};
use parking_lot::Mutex;

use crate::backend::RedisBackend;

/// Fanout exchanges over PUB/SUB, as kombu does them: queues of this process bound to a
/// fanout exchange subscribe to its topic; what arrives waits here for their consumers
/// (at-most-once, like kombu's: nothing is kept in Redis).
#[derive(Default)]
pub(crate) struct Fanout {
    /// Queue → the patterns it subscribes to.
    queues: Mutex<HashMap<String, Vec<String>>>,
    /// Messages received for each queue, oldest first.
    buffers: Mutex<HashMap<String, VecDeque<Vec<u8>>>>,
    /// Adds subscriptions to the live PUB/SUB connection.
    sink: tokio::sync::Mutex<Option<redis::aio::PubSubSink>>,
}

/// Most messages kept for one fanout queue before the oldest are dropped (a queue bound in
/// this process that nobody consumes must not grow without bound).
const FANOUT_BUFFER: usize = 100_000;

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout").finish_non_exhaustive()
    }
}

impl Fanout {
    /// Buffers a message that arrived on `pattern` for every queue subscribed to it; whether
    /// any was.
    fn deliver(&self, pattern: &str, payload: &[u8]) -> bool {
        let targets: Vec<String> = self
            .queues
            .lock()
            .iter()
            .filter(|(_, patterns)| patterns.iter().any(|p| p == pattern))
            .map(|(q, _)| q.clone())
            .collect();
        let mut buffers = self.buffers.lock();
        for queue in &targets {
            let buffer = buffers.entry(queue.clone()).or_default();
            if buffer.len() >= FANOUT_BUFFER {
                buffer.pop_front();
                tracing::warn!(%queue, "fanout buffer full: oldest message dropped");
            }
            buffer.push_back(payload.to_vec());
        }
        !targets.is_empty()
    }

    /// Whether `queue` is bound to a fanout exchange in this process.
    pub(crate) fn is_fanout_queue(&self, queue: &str) -> bool {
        self.queues.lock().contains_key(queue)
    }

    /// Takes up to `max` buffered messages of `queue`, oldest first.
    fn take(&self, queue: &str, max: usize) -> Vec<Vec<u8>> {
        let mut buffers = self.buffers.lock();
        let Some(buffer) = buffers.get_mut(queue) else {
            return Vec::new();
        };
        let n = max.min(buffer.len());
        buffer.drain(..n).collect()
    }

    /// How many messages of `queue` are buffered.
    pub(crate) fn len(&self, queue: &str) -> usize {
        self.buffers.lock().get(queue).map_or(0, |b| b.len())
    }

    /// Drops every buffered message of `queue` and returns how many there were.
    pub(crate) fn purge(&self, queue: &str) -> usize {
        self.buffers
            .lock()
            .get_mut(queue)
            .map_or(0, |b| std::mem::take(b).len())
    }

    /// Up to `max` buffered messages of `queue` as deliveries, handed over outright
    /// ([`Receipt::Unleased`]: there is nothing to settle in Redis; the virtual channel puts a
    /// requeued or restored one back in the queue's list, as kombu restores it), and the
    /// messages that are not kombu envelopes, for core to move to the queue's dead-letter
    /// queue (also [`Receipt::Unleased`]).
    pub(crate) fn take_deliveries(&self, queue: &str, max: usize) -> (Vec<Taken>, Vec<Unreadable>) {
        let mut taken = Vec::new();
        let mut unreadable = Vec::new();
        for body in self.take(queue, max) {
            match envelope::decode(&body) {
                Ok(env) => taken.push(Taken {
                    envelope: Arc::new(env),
                    receipt: Receipt::Unleased,
                }),
                Err(err) => unreadable.push(Unreadable {
                    raw: body.into(),
                    reason: err.to_string(),
                    receipt: Receipt::Unleased,
                }),
            }
        }
        (taken, unreadable)
    }
}

impl RedisBackend {
    /// Starts (once) this backend's PUB/SUB connection for the topics of fanout exchanges
    /// that queues of this process are bound to. It reconnects and resubscribes after a
    /// failure.
    pub(crate) fn ensure_listener(&self) {
        let mut slot = self.listener.lock();
        if slot.is_some() {
            return;
        }
        let client = self.client.clone();
        let wake = self.wake.clone();
        let fanout = self.fanout.clone();
        *slot = Some(tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(pubsub) => {
                        let (mut sink, mut stream) = pubsub.split();
                        let subscribed = {
                            let mut slot = fanout.sink.lock().await;
                            let patterns: Vec<String> =
                                fanout.queues.lock().values().flatten().cloned().collect();
                            let mut ok = true;
                            for p in patterns {
                                ok &= sink.psubscribe(&p).await.is_ok();
                            }
                            *slot = Some(sink);
                            ok
                        };
                        if subscribed {
                            while let Some(msg) = futures::StreamExt::next(&mut stream).await {
                                if let Ok(pattern) = msg.get_pattern::<String>()
                                    && fanout.deliver(&pattern, msg.get_payload_bytes())
                                {
                                    wake.notify_waiters();
                                }
                            }
                        }
                        *fanout.sink.lock().await = None;
                    }
                    Err(err) => tracing::debug!(error = %err, "redis PUB/SUB connection"),
                }
                // Reconnect after a broken subscription (fanout messages published meanwhile
                // are lost, as in kombu).
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    /// Subscribes `queue` to a fanout exchange's topic for `binding_key`.
    pub(crate) async fn subscribe_fanout(
        &self,
        queue: &str,
        exchange: &str,
        binding_key: &str,
    ) -> Result<()> {
        let pattern = self.options.fanout_pattern(exchange, binding_key);
        {
            let mut queues = self.fanout.queues.lock();
            let patterns = queues.entry(queue.to_owned()).or_default();
            if patterns.contains(&pattern) {
                return Ok(());
            }
            patterns.push(pattern.clone());
        }
        self.ensure_listener();
        // Wait until the subscription is live, so that what is published once `bind` returns
        // reaches this queue (PUB/SUB keeps nothing for late subscribers).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(sink) = self.fanout.sink.lock().await.as_mut() {
                return sink
                    .psubscribe(&pattern)
                    .await
                    .map_err(self.err("subscribe to a fanout exchange"));
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "redis {}: no PUB/SUB connection for fanout exchange {exchange:?}",
                        self.label
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
