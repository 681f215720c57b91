//! [`RpcClient`]: one reply queue and one reply consumer for all of a client's calls.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kombu_core::transport::{Channel, Outgoing};
use kombu_core::{
    ConsumeError, Consumer, Delivery, Error, ErrorKind, Exchange, Producer, Queue, Result,
    StopHandle,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{DIRECT_REPLY_TO, ERROR_HEADER, is_amqp, lock};
use crate::CoreConnection;

/// What the client's calls and its reply consumer share.
#[derive(Debug, Default)]
struct Pending {
    waiting: Mutex<HashMap<String, oneshot::Sender<Delivery>>>,
    late: AtomicU64,
}

impl Pending {
    /// Hands a reply to its call, or settles it as a late reply.
    async fn dispatch(&self, reply: Delivery) {
        let id = reply.properties().correlation_id.clone();
        let waiting = id.as_deref().and_then(|id| lock(&self.waiting).remove(id));
        let late = match waiting {
            Some(call) => match call.send(reply) {
                Ok(()) => return,
                Err(reply) => reply,
            },
            None => reply,
        };
        self.late.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            correlation_id = ?id,
            queue = late.queue(),
            "late RPC reply dropped (its call timed out, or it matches no call)"
        );
        if let Err(error) = late.ack().await {
            tracing::debug!(error = %format_args!("{:#}", error.error), "acking a late reply failed");
        }
    }
}

/// Removes a call's entry when the call ends, however it ends (reply, timeout, cancellation).
struct Waiting<'a> {
    pending: &'a Pending,
    id: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.pending.waiting).remove(self.id);
    }
}

/// Options of an [`RpcClient`], from [`RpcClient::builder`].
#[derive(Debug, Clone)]
pub struct RpcClientBuilder {
    conn: CoreConnection,
    exchange: Option<Exchange>,
    serializer: Option<String>,
    accept: Option<Vec<String>>,
    direct_reply_to: Option<bool>,
}

impl RpcClientBuilder {
    /// Publishes requests to this exchange (declared on first use) instead of the default
    /// exchange; [`call`](RpcClient::call)'s routing key is then matched against its bindings.
    pub fn exchange(mut self, exchange: Exchange) -> Self {
        self.exchange = Some(exchange);
        self
    }

    /// Serializer of the requests by name (default `json`); the server replies in the same.
    pub fn serializer(mut self, name: impl Into<String>) -> Self {
        self.serializer = Some(name.into());
        self
    }

    /// Serializers accepted in replies, by name or content type (default: the registry's
    /// default-enabled ones).
    pub fn accept<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.accept = Some(names.into_iter().map(|s| s.as_ref().to_owned()).collect());
        self
    }

    /// Whether to use RabbitMQ's direct reply-to (default: on AMQP URLs only). `true` on
    /// another transport fails to build with [`ErrorKind::Unsupported`].
    pub fn direct_reply_to(mut self, direct: bool) -> Self {
        self.direct_reply_to = Some(direct);
        self
    }

    /// Starts the reply consumer (declaring the reply queue unless it is direct reply-to).
    pub async fn build(self) -> Result<RpcClient> {
        let conn = self.conn;
        let amqp = is_amqp(&conn);
        let direct = self.direct_reply_to.unwrap_or(amqp);
        if direct && !amqp {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "direct reply-to ({DIRECT_REPLY_TO}) exists on RabbitMQ only, not on {}://",
                    conn.url().scheme()
                ),
            ));
        }
        let (queue, temporary) = if direct {
            (Queue::new(DIRECT_REPLY_TO), false)
        } else {
            let name = format!("reply.{}", uuid::Uuid::new_v4().simple());
            let queue = Queue::new(name)
                .durable(false)
                .exclusive(true)
                .auto_delete(true);
            (queue, true)
        };
        let reply_to = queue.name.clone();
        let mut consumer = conn
            .consumer([queue])
            .declare(!direct)
            .no_ack(direct)
            .tag(format!("rpc-client-{}", uuid::Uuid::new_v4().simple()));
        if let Some(names) = &self.accept {
            consumer = consumer.accept(names);
        }
        let consumer = consumer.build().await?;
        let channel = consumer.channel().clone();
        let stop = consumer.stop_handle();
        let pending = Arc::new(Pending::default());
        let cleanup = temporary.then(|| (conn.clone(), reply_to.clone()));
        let task = tokio::spawn(run_replies(consumer, pending.clone(), cleanup));
        let mut producer = conn.producer();
        if let Some(exchange) = &self.exchange {
            producer = producer.exchange(exchange.clone());
        }
        if let Some(serializer) = self.serializer {
            producer = producer.serializer(serializer);
        }
        Ok(RpcClient {
            conn,
            channel,
            producer,
            exchange: self.exchange,
            reply_to,
            pending,
            stop,
            task: Some(task),
        })
    }
}

/// The reply consumer: hands each reply to its call; at the end, fails the calls still
/// waiting (their senders go), closes the consumer and deletes a temporary reply queue.
async fn run_replies(
    mut consumer: Consumer,
    pending: Arc<Pending>,
    cleanup: Option<(CoreConnection, String)>,
) {
    while let Some(item) = consumer.next().await {
        match item {
            Ok(reply) => pending.dispatch(reply).await,
            // Not accepted: its call gets it and fails decoding it with the accept error.
            Err(ConsumeError {
                delivery: Some(reply),
                ..
            }) => pending.dispatch(reply).await,
            Err(ConsumeError { error, .. }) => {
                tracing::warn!(error = %format_args!("{error:#}"), "RPC reply consumer failed");
            }
        }
    }
    lock(&pending.waiting).clear();
    if let Err(error) = consumer.close().await {
        tracing::debug!(error = %format_args!("{error:#}"), "closing the RPC reply consumer failed");
    }
    if let Some((conn, queue)) = cleanup
        && let Err(error) = conn.delete_queue(&queue).await
    {
        tracing::debug!(%queue, error = %format_args!("{error:#}"), "deleting the reply queue failed");
    }
}

/// Calls servers and awaits their replies: one reply queue and one reply consumer for all its
/// calls, which may run concurrently (`call` takes `&self`). See the [module](crate::rpc) docs.
pub struct RpcClient {
    conn: CoreConnection,
    /// The reply consumer's channel: requests go out on it (direct reply-to requires it).
    channel: Arc<dyn Channel>,
    producer: Producer,
    /// The producer's exchange, declared before the first request.
    exchange: Option<Exchange>,
    reply_to: String,
    pending: Arc<Pending>,
    stop: StopHandle,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcClient")
            .field("reply_to", &self.reply_to)
            .field("waiting", &lock(&self.pending.waiting).len())
            .field("late_replies", &self.late_replies())
            .finish()
    }
}

impl RpcClient {
    /// A client with the defaults: JSON requests to the default exchange, direct reply-to on
    /// RabbitMQ, else a reply queue of its own.
    pub async fn new(conn: &impl AsRef<CoreConnection>) -> Result<RpcClient> {
        Self::builder(conn).build().await
    }

    /// A client with options.
    pub fn builder(conn: &impl AsRef<CoreConnection>) -> RpcClientBuilder {
        RpcClientBuilder {
            conn: conn.as_ref().clone(),
            exchange: None,
            serializer: None,
            accept: None,
            direct_reply_to: None,
        }
    }

    /// The queue replies come to (the `reply_to` of every request).
    pub fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// Replies dropped because no call was waiting for them (timed out, cancelled, unknown).
    pub fn late_replies(&self) -> u64 {
        self.pending.late.load(Ordering::Relaxed)
    }

    /// Publishes `request` with `routing_key` (on the default exchange: the server's queue)
    /// and waits up to `timeout` for the reply, decoded into `Resp`. Fails with
    /// [`ErrorKind::Timeout`] when no reply came in time (its late reply is then counted, see
    /// [`late_replies`](Self::late_replies)), with [`ErrorKind::Broker`] when the server
    /// replied with an error, [`ErrorKind::Codec`] when the reply does not decode.
    pub async fn call<Req, Resp>(
        &self,
        routing_key: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let outgoing = self
            .producer
            .message(request)
            .routing_key(routing_key)
            .reply_to(self.reply_to.as_str())
            .correlation_id(id.as_str())
            .build()?;
        let (sender, reply) = oneshot::channel();
        lock(&self.pending.waiting).insert(id.clone(), sender);
        let _waiting = Waiting {
            pending: &self.pending,
            id: &id,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || {
            Error::new(
                ErrorKind::Timeout,
                format!("no reply to the call to {routing_key:?} within {timeout:?}"),
            )
            .set_recoverable(false)
        };
        tokio::time::timeout_at(deadline, self.publish(outgoing))
            .await
            .map_err(|_| timed_out())??;
        let reply = match tokio::time::timeout_at(deadline, reply).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(_)) => {
                return Err(Error::new(
                    ErrorKind::Closed,
                    format!(
                        "the RPC client's reply consumer ended before the reply to the call to \
                         {routing_key:?} came"
                    ),
                ));
            }
            Ok(Ok(reply)) => reply,
        };
        let result = match reply.headers().get(ERROR_HEADER) {
            Some(error) => Err(Error::new(
                ErrorKind::Broker,
                format!(
                    "the RPC server of {routing_key:?} failed: {}",
                    error.as_str().unwrap_or("(no text)")
                ),
            )
            .set_recoverable(false)),
            None => reply.decode::<Resp>(),
        };
        if let Err(error) = reply.ack().await {
            tracing::debug!(error = %format_args!("{:#}", error.error), "acking a reply failed");
        }
        result
    }

    /// Publishes a request on the reply consumer's channel, the declarations first, under
    /// the connection's retry policy (else the default one).
    async fn publish(&self, outgoing: Outgoing) -> Result<()> {
        if let Some(exchange) = &self.exchange {
            self.conn.maybe_declare_exchange(exchange).await?;
        }
        let policy = self.conn.retry_policy().cloned().unwrap_or_default();
        policy
            .run(
                || self.channel.publish(outgoing.clone()),
                |event| {
                    tracing::warn!(
                        attempt = event.attempt,
                        error = %format_args!("{:#}", event.error),
                        "RPC request publish failed; retrying"
                    );
                },
            )
            .await
    }

    /// Stops the reply consumer, fails the calls still waiting with [`ErrorKind::Closed`],
    /// and deletes a reply queue of its own.
    pub async fn close(mut self) -> Result<()> {
        self.stop.stop();
        if let Some(task) = self.task.take() {
            task.await.map_err(|e| {
                Error::new(ErrorKind::Closed, "the RPC reply consumer task failed").with_source(e)
            })?;
        }
        Ok(())
    }
}

impl Drop for RpcClient {
    /// Stops the reply consumer; its task closes it and deletes the reply queue.
    fn drop(&mut self) {
        self.stop.stop();
    }
}
