//! Celery's `rpc://` result backend (`celery/backends/rpc.py`; `celery-protocol.md` §3.5): a
//! worker publishes each result document as a message to the task's `reply_to` queue (the
//! default exchange, the queue's name as routing key, `correlation_id` = the task id,
//! transient); the client consumes its one reply queue (named by its id: non-durable,
//! auto-delete, `x-expires` a day, as Celery declares it) for all its tasks.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kombu_core::{Connection, DeliveryMode, Error, ErrorKind, Queue, Result, StopHandle};
use serde_json::Value as Json;
use tokio::sync::Notify;

use super::ResultBackend;
use crate::result::ResultMeta;

/// How long Celery's reply queue lives unused (`result_expires`, a day).
const REPLY_QUEUE_EXPIRES: Duration = Duration::from_secs(86_400);

/// Results kept per client: past it, the oldest task's result is forgotten (it reads PENDING
/// again), so a long-lived client does not grow without bound.
const KEPT: usize = 100_000;

/// The latest result of each task a client heard of, the oldest first out.
#[derive(Debug, Default)]
struct Latest {
    by_id: HashMap<String, ResultMeta>,
    order: VecDeque<String>,
}

impl Latest {
    fn insert(&mut self, meta: ResultMeta) {
        let id = meta.task_id.clone();
        if self.by_id.insert(id.clone(), meta).is_none() {
            self.order.push_back(id);
            while self.order.len() > KEPT {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                }
            }
        }
    }

    fn get(&self, task_id: &str) -> Option<&ResultMeta> {
        self.by_id.get(task_id)
    }
}

/// What the reply consumer and the client share.
#[derive(Debug, Default)]
struct Replies {
    /// The latest result of each task this client heard of (at most [`KEPT`]).
    latest: Mutex<Latest>,
    /// Rings on each reply.
    arrived: Notify,
}

/// Celery's `rpc://` result backend, as a client: send tasks with
/// [`reply_to`](RpcResultBackend::reply_to) as their `reply_to` (a [`Celery`](crate::Celery)
/// built with [`CeleryBuilder::reply_to`](crate::CeleryBuilder::reply_to)) and their workers'
/// results come back to it. Results are held by this client only, as Celery's: another
/// client (or a restarted one) cannot read them.
pub struct RpcResultBackend {
    conn: Connection,
    reply_to: String,
    replies: Arc<Replies>,
    stop: StopHandle,
}

impl std::fmt::Debug for RpcResultBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcResultBackend")
            .field("reply_to", &self.reply_to)
            .finish_non_exhaustive()
    }
}

impl RpcResultBackend {
    /// Declares a reply queue of this client's own on `conn` and starts consuming it.
    pub async fn new(conn: &impl AsRef<Connection>) -> Result<RpcResultBackend> {
        let conn = conn.as_ref().clone();
        let reply_to = uuid::Uuid::new_v4().to_string();
        let queue = Queue::new(reply_to.as_str())
            .durable(false)
            .auto_delete(true)
            .expires(REPLY_QUEUE_EXPIRES);
        let consumer = conn
            .consumer([queue])
            .no_ack(true)
            .build()
            .await
            .map_err(|e| e.context("starting the rpc:// result consumer"))?;
        let stop = consumer.stop_handle();
        let replies = Arc::new(Replies::default());
        let shared = replies.clone();
        tokio::spawn(async move {
            let mut consumer = consumer;
            while let Some(item) = consumer.next().await {
                let Ok(reply) = item else {
                    tracing::warn!("an rpc:// result that could not be read was set aside");
                    continue;
                };
                let doc: Json = match reply.decode() {
                    Ok(doc) => doc,
                    Err(error) => {
                        tracing::warn!(error = %format_args!("{error:#}"), "an rpc:// result that is not JSON");
                        continue;
                    }
                };
                let id = reply
                    .properties()
                    .correlation_id
                    .clone()
                    .unwrap_or_default();
                let meta = ResultMeta::from_json(&id, &doc);
                if let Ok(mut latest) = shared.latest.lock() {
                    latest.insert(meta);
                }
                shared.arrived.notify_waiters();
            }
        });
        Ok(RpcResultBackend {
            conn,
            reply_to,
            replies,
            stop,
        })
    }

    /// The reply queue: the `reply_to` of the tasks whose results come here.
    pub fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// A worker's side: publishes `meta` to the caller's reply queue `reply_to`, with
    /// `correlation_id` (the task's), as Celery's rpc backend does.
    pub async fn reply(
        conn: &Connection,
        reply_to: &str,
        correlation_id: &str,
        meta: &ResultMeta,
    ) -> Result<()> {
        conn.producer()
            .routing_key(reply_to)
            .message(&meta.to_json())
            .correlation_id(correlation_id)
            .delivery_mode(DeliveryMode::Transient)
            .send()
            .await
    }

    fn latest(&self, task_id: &str) -> Option<ResultMeta> {
        self.replies
            .latest
            .lock()
            .ok()
            .and_then(|latest| latest.get(task_id).cloned())
    }
}

impl Drop for RpcResultBackend {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

#[async_trait]
impl ResultBackend for RpcResultBackend {
    async fn meta(&self, task_id: &str) -> Result<ResultMeta> {
        Ok(self
            .latest(task_id)
            .unwrap_or_else(|| ResultMeta::pending(task_id)))
    }

    async fn store(&self, meta: &ResultMeta) -> Result<()> {
        let _ = (&self.conn, meta);
        Err(Error::new(
            ErrorKind::Unsupported,
            "rpc:// results go to the caller's reply queue: RpcResultBackend::reply with the \
             task's reply_to and correlation id",
        ))
    }

    fn chord_support(&self) -> super::ChordSupport {
        super::ChordSupport::Unsupported
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> Result<ResultMeta> {
        let deadline = super::deadline(timeout);
        loop {
            let arrived = self.replies.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let meta = self.meta(task_id).await?;
            if meta.state.is_ready() {
                return Ok(meta);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.meta(task_id).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{KEPT, Latest};
    use crate::result::ResultMeta;

    #[test]
    fn the_oldest_results_go_past_the_bound() {
        let mut latest = Latest::default();
        for i in 0..=KEPT {
            latest.insert(ResultMeta::pending(format!("t{i}")));
        }
        // A result stored again keeps its place.
        latest.insert(ResultMeta::pending("t5"));
        assert!(latest.get("t0").is_none(), "the oldest is forgotten");
        assert!(latest.get("t1").is_some());
        assert!(latest.get(&format!("t{KEPT}")).is_some());
        assert_eq!(latest.by_id.len(), KEPT);
        assert_eq!(latest.order.len(), KEPT);
    }
}
