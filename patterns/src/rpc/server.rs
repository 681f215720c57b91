//! [`RpcServer`]: serves a queue, replying to each request as kombu's `send_reply` does.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use kombu_core::transport::Outgoing;
use kombu_core::{
    ConsumeError, Consumer, Delivery, Error, ErrorKind, Queue, Result, StopHandle, Value,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::ERROR_HEADER;
use crate::CoreConnection;

/// Options of an [`RpcServer`], from [`RpcServer::builder`].
#[derive(Debug, Clone)]
pub struct RpcServerBuilder {
    conn: CoreConnection,
    queue: Queue,
    accept: Option<Vec<String>>,
    prefetch: u16,
    concurrency: usize,
}

impl RpcServerBuilder {
    /// Serializers accepted in requests, by name or content type (default: the registry's
    /// default-enabled ones). A request that is not accepted gets an error reply and is
    /// dead-lettered.
    pub fn accept<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.accept = Some(names.into_iter().map(|s| s.as_ref().to_owned()).collect());
        self
    }

    /// How many requests are handled at once (default 1: one after the other). The consumer's
    /// prefetch is at least this.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How many requests the consumer may hold unsettled (default: the concurrency).
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// Declares the queue (unless it exists as declared by this connection) and starts
    /// consuming it; requests wait in the consumer until [`RpcServer::serve`].
    pub async fn build(self) -> Result<RpcServer> {
        let concurrency_prefetch = u16::try_from(self.concurrency).unwrap_or(u16::MAX);
        let prefetch = self.prefetch.max(concurrency_prefetch);
        let mut consumer = self
            .conn
            .consumer([self.queue])
            .prefetch(prefetch)
            .tag(format!("rpc-server-{}", uuid::Uuid::new_v4().simple()));
        if let Some(names) = &self.accept {
            consumer = consumer.accept(names);
        }
        Ok(RpcServer {
            conn: self.conn,
            consumer: consumer.build().await?,
            concurrency: self.concurrency,
            served: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// Serves a queue: for each request runs an async handler and publishes what it returns to
/// the request's `reply_to`, then acks the request. See the [module](crate::rpc) docs for the
/// reply's shape and for error replies.
///
/// - A request without `reply_to` is handled, acked and logged at warn (nobody waits for
///   the answer).
/// - A request that is not accepted or does not decode into the request type gets an error
///   reply (when it has a `reply_to`) and is dead-lettered (to `<queue>.dlq`).
/// - A reply that cannot be published (the broker is gone past the retry policy) leaves the
///   request unacked: it goes back to its queue and is handled again (at-least-once).
/// - A stop ([`stop_handle`](Self::stop_handle)) takes no more requests, lets the handlers
///   in flight finish and reply, and closes the consumer (what it held goes back).
/// - Leases are not extended while a handler runs: on the virtual transports a handler that
///   outlives the visibility timeout (an hour by default) sees its request handed out again.
pub struct RpcServer {
    conn: CoreConnection,
    consumer: Consumer,
    concurrency: usize,
    served: Arc<AtomicU64>,
}

impl fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcServer")
            .field("queues", &self.consumer.queues())
            .field("concurrency", &self.concurrency)
            .field("served", &self.served.load(Ordering::Relaxed))
            .finish()
    }
}

/// A step of the serve loop.
enum Step {
    /// A handler finished.
    Done,
    /// The consumer gave a request, a refusal, or ended (`None`).
    Next(Option<Result<Delivery, ConsumeError>>),
}

impl RpcServer {
    /// A server of `queue` (a name, or a [`Queue`] bound as you like) with the defaults.
    pub async fn new(conn: &impl AsRef<CoreConnection>, queue: impl Into<Queue>) -> Result<Self> {
        Self::builder(conn, queue).build().await
    }

    /// A server with options.
    pub fn builder(conn: &impl AsRef<CoreConnection>, queue: impl Into<Queue>) -> RpcServerBuilder {
        RpcServerBuilder {
            conn: conn.as_ref().clone(),
            queue: queue.into(),
            accept: None,
            prefetch: 0,
            concurrency: 1,
        }
    }

    /// Stops [`serve`](Self::serve) from another task (idempotent).
    pub fn stop_handle(&self) -> StopHandle {
        self.consumer.stop_handle()
    }

    /// A counter of the requests answered so far (replies published, error replies included),
    /// readable while the server runs.
    pub fn served(&self) -> Arc<AtomicU64> {
        self.served.clone()
    }

    /// Serves until stopped ([`stop_handle`](Self::stop_handle)) or until the consumer ends;
    /// returns the error of a broker failure the consumer could not ride through.
    pub async fn serve<Req, Resp, F, Fut>(self, handler: F) -> Result<()>
    where
        Req: DeserializeOwned,
        Resp: Serialize,
        F: Fn(Req) -> Fut,
        Fut: Future<Output = Result<Resp>>,
    {
        let RpcServer {
            conn,
            mut consumer,
            concurrency,
            served,
        } = self;
        let mut in_flight = FuturesUnordered::new();
        let mut failure = None;
        loop {
            let step = tokio::select! {
                Some(()) = in_flight.next(), if !in_flight.is_empty() => Step::Done,
                item = consumer.next(), if in_flight.len() < concurrency => Step::Next(item),
                else => break,
            };
            match step {
                Step::Done => {}
                Step::Next(None) => break,
                Step::Next(Some(Ok(request))) => match request.decode::<Req>() {
                    Ok(value) => {
                        in_flight.push(respond(&conn, request, handler(value), &served));
                    }
                    Err(error) => {
                        refuse(&conn, &consumer, error, request, &served).await;
                    }
                },
                Step::Next(Some(Err(ConsumeError {
                    error,
                    delivery: Some(request),
                }))) => refuse(&conn, &consumer, error, request, &served).await,
                Step::Next(Some(Err(ConsumeError {
                    error,
                    delivery: None,
                }))) => match error.dead_lettered() {
                    Some(record) => tracing::warn!(%record, "unreadable request moved aside"),
                    None => {
                        failure = Some(error);
                        break;
                    }
                },
            }
        }
        while in_flight.next().await.is_some() {}
        let closed = consumer.close().await;
        match failure {
            Some(error) => Err(error),
            None => closed,
        }
    }

    /// Runs [`serve`](Self::serve) on a task of its own; stop it with
    /// [`RunningServer::stop`].
    pub fn spawn<Req, Resp, F, Fut>(self, handler: F) -> RunningServer
    where
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        F: Fn(Req) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
    {
        let stop = self.stop_handle();
        let served = self.served();
        RunningServer {
            stop,
            served,
            task: tokio::spawn(self.serve(handler)),
        }
    }
}

/// An [`RpcServer`] serving on a task of its own ([`RpcServer::spawn`]).
#[derive(Debug)]
pub struct RunningServer {
    stop: StopHandle,
    served: Arc<AtomicU64>,
    task: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// A handle that stops the server from elsewhere.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    /// Stops the server and waits until its handlers in flight replied and its consumer
    /// closed; returns what [`RpcServer::serve`] returned.
    pub async fn stop(self) -> Result<()> {
        self.stop.stop();
        self.task.await.map_err(|e| {
            Error::new(ErrorKind::Closed, "the RPC server task failed").with_source(e)
        })?
    }
}

/// Runs one request's handler, replies, then acks the request.
async fn respond<Resp: Serialize>(
    conn: &CoreConnection,
    request: Delivery,
    handled: impl Future<Output = Result<Resp>>,
    served: &AtomicU64,
) {
    let result = handled.await;
    let Some(reply_to) = reply_to(&request) else {
        match &result {
            Err(error) => tracing::warn!(
                queue = request.queue(),
                error = %format_args!("{error:#}"),
                "RPC request without reply_to failed; acked, nobody to tell"
            ),
            Ok(_) => tracing::warn!(
                queue = request.queue(),
                "RPC request without reply_to handled; acked, no reply sent"
            ),
        }
        settle(request).await;
        return;
    };
    let reply = match &result {
        Ok(response) => match reply_message(conn, &request, &reply_to, response, None) {
            Ok(reply) => Ok(reply),
            // The response does not serialize: the caller hears why.
            Err(error) => error_message(conn, &request, &reply_to, &error),
        },
        Err(error) => error_message(conn, &request, &reply_to, error),
    };
    drop(result);
    let published = match reply {
        Ok(reply) => publish(conn, reply).await,
        Err(error) => Err(error),
    };
    match published {
        Ok(()) => {
            served.fetch_add(1, Ordering::Relaxed);
            settle(request).await;
        }
        Err(error) => {
            tracing::warn!(
                queue = request.queue(),
                %reply_to,
                error = %format_args!("{error:#}"),
                "RPC reply could not be published; the request goes back to its queue"
            );
            if let Err(error) = request.requeue().await {
                tracing::warn!(
                    error = %format_args!("{:#}", error.error),
                    "requeueing an RPC request failed"
                );
            }
        }
    }
}

/// A request that is not accepted or does not decode: moved aside by the consumer's
/// dead-letter path, then an error reply (so the caller hears of it once it is moved).
async fn refuse(
    conn: &CoreConnection,
    consumer: &Consumer,
    error: Error,
    request: Delivery,
    served: &AtomicU64,
) {
    let reply = reply_to(&request).map(|reply_to| error_message(conn, &request, &reply_to, &error));
    let refused = ConsumeError {
        error,
        delivery: Some(request),
    };
    if let Err(error) = consumer.handle(refused).await {
        tracing::warn!(
            error = %format_args!("{error:#}"),
            "moving a refused RPC request aside failed; it comes back"
        );
    }
    let published = match reply {
        None => return,
        Some(Ok(reply)) => publish(conn, reply).await,
        Some(Err(error)) => Err(error),
    };
    match published {
        Ok(()) => {
            served.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!(
            error = %format_args!("{e:#}"),
            "RPC error reply could not be published"
        ),
    }
}

fn reply_to(request: &Delivery) -> Option<String> {
    request
        .properties()
        .reply_to
        .clone()
        .filter(|r| !r.is_empty())
}

async fn settle(request: Delivery) {
    if let Err(error) = request.ack().await {
        tracing::warn!(
            error = %format_args!("{:#}", error.error),
            "acking an RPC request failed"
        );
    }
}

/// Publishes a reply under the connection's retry policy (else the default one).
async fn publish(conn: &CoreConnection, reply: Outgoing) -> Result<()> {
    conn.producer().send_batch(vec![reply]).await
}

/// kombu's `send_reply`: to the default exchange, routing key = `reply_to`, the request's
/// correlation id and serializer (JSON when the request's content type names no serializer
/// or that serializer cannot carry the value, as raw and text cannot carry a structure).
fn reply_message<T: Serialize + ?Sized>(
    conn: &CoreConnection,
    request: &Delivery,
    reply_to: &str,
    body: &T,
    error: Option<&str>,
) -> Result<Outgoing> {
    let serializer = request
        .content_type()
        .filter(|ct| conn.registry().serializer(ct).is_ok())
        .unwrap_or("json");
    let producer = conn.producer().routing_key(reply_to);
    let build = |serializer: &str| {
        let mut reply = producer.message(body).serializer(serializer);
        if let Some(id) = &request.properties().correlation_id {
            reply = reply.correlation_id(id.as_str());
        }
        if let Some(error) = error {
            reply = reply.header(ERROR_HEADER, Value::from(error));
        }
        reply.build()
    };
    match build(serializer) {
        Err(e) if e.kind() == ErrorKind::Codec && serializer != "json" => build("json"),
        other => other,
    }
}

/// An error reply: [`ERROR_HEADER`] with the error's text, the body `{"error", "kind"}`.
fn error_message(
    conn: &CoreConnection,
    request: &Delivery,
    reply_to: &str,
    error: &Error,
) -> Result<Outgoing> {
    let text = format!("{error:#}");
    let body = serde_json::json!({ "error": text, "kind": error.kind().to_string() });
    reply_message(conn, request, reply_to, &body, Some(&text))
}
