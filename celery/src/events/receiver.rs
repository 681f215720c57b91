//! Hearing events: a queue of the receiver's own on the event exchange, as Celery's
//! `EventReceiver` declares it (`celeryev.<uuid>`: exclusive, auto-delete, its messages
//! dropped after 5 s and the queue after 60 s unused, so a slow or dead monitor holds no
//! backlog), consumed without acks.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kombu_core::{Binding, Connection, Consumer, Error, ErrorKind, Queue, Result};
use serde_json::Value as Json;

use super::{Event, event_exchange};

/// Celery's `event_queue_ttl`.
const QUEUE_TTL: Duration = Duration::from_secs(5);
/// Celery's `event_queue_expires`.
const QUEUE_EXPIRES: Duration = Duration::from_secs(60);

/// Configures an [`EventReceiver`]; from [`EventReceiver::builder`].
#[derive(Debug)]
pub struct EventReceiverBuilder {
    conn: Connection,
    routing_keys: Vec<String>,
    prefix: String,
    wake: bool,
}

impl EventReceiverBuilder {
    /// Hears only events whose routing key matches `pattern` (a topic pattern: `task.#`,
    /// `worker.heartbeat`; repeatable; default `#`, everything). A worker's task events come
    /// under `task.multi`: bind `task.#` rather than `task.succeeded` to hear them. On Redis
    /// (a fanout exchange) patterns are kombu's PUB/SUB patterns (`#` as `*`).
    pub fn routing_key(mut self, pattern: impl Into<String>) -> Self {
        self.routing_keys.push(pattern.into());
        self
    }

    /// The queue name's prefix (Celery's `event_queue_prefix`, default `celeryev`).
    pub fn queue_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Whether to ask every worker for a heartbeat once listening, so live workers show at
    /// once (Celery's receiver does; default `true`).
    pub fn wake_workers(mut self, wake: bool) -> Self {
        self.wake = wake;
        self
    }

    /// Declares the queue, binds it and starts listening.
    pub async fn build(self) -> Result<EventReceiver> {
        let conn = self.conn;
        let name = format!("{}.{}", self.prefix, uuid::Uuid::new_v4());
        let exchange = event_exchange(&conn);
        conn.declare_exchange(&exchange)
            .await
            .map_err(|e| e.context("declaring the event exchange"))?;
        let keys = match self.routing_keys.is_empty() {
            true => vec!["#".to_owned()],
            false => self.routing_keys,
        };
        let mut queue = Queue::new(name.as_str())
            .durable(false)
            .exclusive(true)
            .auto_delete(true)
            .message_ttl(QUEUE_TTL)
            .expires(QUEUE_EXPIRES);
        for key in &keys {
            queue = queue.bind(Binding::new(super::EVENT_EXCHANGE, key.as_str()));
        }
        let consumer = conn
            .consumer([queue])
            .no_ack(true)
            .build()
            .await
            .map_err(|e| e.context(format!("listening to events on {name:?}")))?;
        if self.wake {
            let control = crate::control::Control::new(&conn);
            if let Err(error) = control.cast("heartbeat", Default::default(), None).await {
                tracing::warn!(
                    error = %format_args!("{error:#}"),
                    "asking the workers for a heartbeat failed (they show at their next one)"
                );
            }
        }
        Ok(EventReceiver {
            consumer,
            queue: name,
            pending: VecDeque::new(),
        })
    }
}

/// The events on a broker, as a [`Stream`] of [`Event`]s in the order they came (a batch
/// in its order). An item that is not an event (a body that is no JSON object or list of
/// objects with a `type`) is an error item, and the stream goes on.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> kombu_core::Result<()> {
/// use futures::StreamExt;
/// use kombu_celery::events::{EventDispatcher, EventKind, EventReceiver};
///
/// # kombu_core::transport::memory::register();
/// let conn = kombu_core::Connection::open("memory://doc-events").await?;
/// let mut events = EventReceiver::builder(&conn).build().await?;
/// let sender = EventDispatcher::new(&conn, "node@host");
/// sender.emit(EventKind::parse("task-progress"), Default::default()).await?;
/// let event = events.next().await.expect("an event")?;
/// assert_eq!(event.kind().as_str(), "task-progress");
/// assert_eq!(event.hostname(), Some("node@host"));
/// # Ok(()) }
/// ```
pub struct EventReceiver {
    consumer: Consumer,
    queue: String,
    pending: VecDeque<Event>,
}

impl std::fmt::Debug for EventReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventReceiver")
            .field("queue", &self.queue)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl EventReceiver {
    /// A receiver on `conn`; see [`EventReceiverBuilder`].
    pub fn builder(conn: &impl AsRef<Connection>) -> EventReceiverBuilder {
        EventReceiverBuilder {
            conn: conn.as_ref().clone(),
            routing_keys: Vec::new(),
            prefix: super::EVENT_EXCHANGE.to_owned(),
            wake: true,
        }
    }

    /// The name of its queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// Stops listening (the queue goes with it).
    pub async fn close(self) -> Result<()> {
        self.consumer.close().await
    }
}

/// The events of one message body: an object, or a list of them (a batch).
fn events_of(body: Json) -> Result<Vec<Event>> {
    let not_event = || {
        Error::new(
            ErrorKind::Codec,
            "an event message that is no event (a JSON object with a type) nor a list of them",
        )
    };
    match body {
        Json::Array(items) => items
            .into_iter()
            .map(|item| Event::from_json(item).ok_or_else(not_event))
            .collect(),
        other => Event::from_json(other)
            .map(|e| vec![e])
            .ok_or_else(not_event),
    }
}

impl Stream for EventReceiver {
    type Item = Result<Event>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(event)));
            }
            let delivery = match this.consumer.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(refused))) => {
                    return Poll::Ready(Some(Err(Error::new(
                        ErrorKind::Codec,
                        format!("an event message that could not be read: {refused}"),
                    ))));
                }
                Poll::Ready(Some(Ok(delivery))) => delivery,
            };
            match delivery.decode::<Json>().and_then(events_of) {
                Ok(events) => this.pending.extend(events),
                Err(error) => return Poll::Ready(Some(Err(error))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::events_of;
    use serde_json::json;

    #[test]
    fn a_body_is_one_event_or_a_batch() {
        let one = events_of(json!({"type": "worker-online"})).expect("one");
        assert_eq!(one.len(), 1);
        let batch = events_of(json!([{"type": "task-received"}, {"type": "task-started"}]))
            .expect("a batch");
        assert_eq!(
            batch.iter().map(|e| e.kind().as_str()).collect::<Vec<_>>(),
            ["task-received", "task-started"]
        );
        assert!(events_of(json!("text")).is_err());
        assert!(events_of(json!([{"type": "x"}, 3])).is_err());
    }
}
