//! The queues a worker consumes, which remote control changes while it runs
//! (`add_consumer`, `cancel_consumer`): one consumer for the queues it started with, one more
//! per queue added. Cancelling a queue retires the consumer that held it (it is no longer
//! read, and the queues it had besides get a consumer of their own); a retired consumer is
//! closed, giving back what it prefetched, once no task it handed out still runs.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use kombu_core::{
    Binding, Connection, ConsumeError, Consumer, Delivery, Exchange, ExchangeKind, Queue, Result,
};

use super::{ETA_EXCHANGE, QueueInfo};

/// One consumer and what it reads.
struct Entry {
    queues: Vec<String>,
    consumer: Consumer,
    /// Cloned into each task it hands out: one strong count means none runs.
    inflight: Arc<()>,
}

/// The worker's consumers.
pub(crate) struct Consumers {
    conn: Connection,
    prefetch: u16,
    active: Vec<Entry>,
    retired: Vec<Entry>,
    next: usize,
}

/// A queue as the worker declares it: durable, bound to `exchange` (default: a direct
/// exchange of the queue's name) with `routing_key` (default: the queue's name), and on
/// RabbitMQ to [`ETA_EXCHANGE`] for its delayed tasks.
pub(crate) async fn declare(conn: &Connection, info: &QueueInfo) -> Result<()> {
    let kind = match info.exchange_type.as_str() {
        "topic" => ExchangeKind::Topic,
        "fanout" => ExchangeKind::Fanout,
        "headers" => ExchangeKind::Headers,
        _ => ExchangeKind::Direct,
    };
    let declaration = Queue::new(info.name.as_str())
        .exchange(Exchange::new(info.exchange.as_str(), kind))
        .routing_key(info.routing_key.as_str());
    conn.declare_queue(&declaration)
        .await
        .map_err(|e| e.context(format!("declaring the worker's queue {:?}", info.name)))?;
    if conn.messaging_system() == "rabbitmq" {
        conn.declare_exchange(&Exchange::topic(ETA_EXCHANGE))
            .await?;
        conn.bind(
            &info.name,
            &Binding::new(ETA_EXCHANGE, format!("#.{}", info.name)),
        )
        .await
        .map_err(|e| e.context(format!("binding {:?} for delayed tasks", info.name)))?;
    }
    Ok(())
}

impl Consumers {
    /// No consumer yet; each prefetches `prefetch` messages.
    pub(crate) fn new(conn: &Connection, prefetch: u16) -> Consumers {
        Consumers {
            conn: conn.clone(),
            prefetch,
            active: Vec::new(),
            retired: Vec::new(),
            next: 0,
        }
    }

    /// Starts a consumer of `queues` (declared already).
    pub(crate) async fn start(&mut self, queues: Vec<String>) -> Result<()> {
        let consumer = self
            .conn
            .consumer(queues.iter().map(|q| Queue::new(q.as_str())))
            .prefetch(self.prefetch)
            .declare(false)
            .build()
            .await
            .map_err(|e| {
                e.context(format!(
                    "starting the Celery worker's consumer of {queues:?}"
                ))
            })?;
        self.active.push(Entry {
            queues,
            consumer,
            inflight: Arc::new(()),
        });
        Ok(())
    }

    /// Whether `queue` is consumed now.
    pub(crate) fn consumes(&self, queue: &str) -> bool {
        self.active
            .iter()
            .any(|e| e.queues.iter().any(|q| q == queue))
    }

    /// Stops reading `queue`: its consumer is retired, and the other queues it read get a
    /// consumer of their own. `false` when it was not consumed.
    pub(crate) async fn cancel(&mut self, queue: &str) -> Result<bool> {
        let Some(at) = self
            .active
            .iter()
            .position(|e| e.queues.iter().any(|q| q == queue))
        else {
            return Ok(false);
        };
        let entry = self.active.remove(at);
        let rest: Vec<String> = entry
            .queues
            .iter()
            .filter(|q| *q != queue)
            .cloned()
            .collect();
        self.retired.push(entry);
        if !rest.is_empty() {
            self.start(rest).await?;
        }
        self.sweep().await;
        Ok(true)
    }

    /// The consumer of a delivery from [`next`](Self::next).
    pub(crate) fn consumer(&self, at: usize) -> Option<&Consumer> {
        self.active.get(at).map(|e| &e.consumer)
    }

    /// A token the task of a delivery from consumer `at` holds while it runs.
    pub(crate) fn token(&self, at: usize) -> Arc<()> {
        self.active
            .get(at)
            .map_or_else(|| Arc::new(()), |e| e.inflight.clone())
    }

    /// The consumer (active or retired) whose token this is.
    pub(crate) fn holding(&self, token: &Arc<()>) -> Option<&Consumer> {
        self.active
            .iter()
            .chain(&self.retired)
            .find(|e| Arc::ptr_eq(&e.inflight, token))
            .map(|e| &e.consumer)
    }

    /// Closes the retired consumers none of whose tasks still runs.
    pub(crate) async fn sweep(&mut self) {
        let mut keep = Vec::new();
        for entry in std::mem::take(&mut self.retired) {
            if Arc::strong_count(&entry.inflight) > 1 {
                keep.push(entry);
                continue;
            }
            if let Err(error) = entry.consumer.close().await {
                tracing::warn!(error = %format_args!("{error:#}"), queues = ?entry.queues, "closing a cancelled consumer");
            }
        }
        self.retired = keep;
    }

    /// Closes every consumer (what they hold goes back to the queues); the first error.
    pub(crate) async fn close(self) -> Result<()> {
        let mut result = Ok(());
        for entry in self.active.into_iter().chain(self.retired) {
            let closed = entry.consumer.close().await;
            if result.is_ok() {
                result = closed;
            }
        }
        result
    }
}

impl Stream for Consumers {
    /// A delivery (or a refused one) and the index of its consumer.
    type Item = (usize, std::result::Result<Delivery, ConsumeError>);

    /// The next delivery of any active consumer, taking them in turn; the end when one of
    /// them ends (it failed for good); pending for ever with none.
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let n = this.active.len();
        for i in 0..n {
            let at = (this.next + i) % n;
            match this.active[at].consumer.poll_next_unpin(cx) {
                Poll::Ready(Some(item)) => {
                    this.next = at + 1;
                    return Poll::Ready(Some((at, item)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }
}
