//! Request/reply over `reply_to` and `correlation_id`: [`RpcClient`] and [`RpcServer`], in
//! the shapes of Python kombu's `kombu.common.send_reply` / `collect_replies`.
//!
//! **The wire.** A request is an ordinary message published to an exchange (the default one
//! unless [`RpcClientBuilder::exchange`]) with the routing key given to
//! [`call`](RpcClient::call), carrying `reply_to` (the client's reply queue) and a fresh
//! `correlation_id`. The server replies as kombu's `send_reply` does: through the default
//! exchange with routing key = the request's `reply_to`, the same `correlation_id`, and the
//! request's serializer (its content type). So a Python client that publishes with
//! `reply_to`/`correlation_id` and reads its reply queue (`collect_replies`) can call an
//! [`RpcServer`], and an [`RpcClient`] can call a Python server that answers with
//! `send_reply`.
//!
//! **Reply queue.** Each client has one reply queue and one consumer task, shared by all its
//! calls; replies are dispatched to the waiting calls by `correlation_id`.
//! - On RabbitMQ (`amqp://`, `amqps://`, `pyamqp://`) it is direct reply-to,
//!   `amq.rabbitmq.reply-to`: consumed no-ack, never declared, and the requests are published
//!   on the consumer's own channel (RabbitMQ requires both). After the connection is lost and
//!   recovered the consumer subscribes again on a new channel, whose reply address differs: a
//!   call in flight across the loss times out.
//! - Elsewhere (and on RabbitMQ with [`direct_reply_to(false)`](RpcClientBuilder::direct_reply_to))
//!   it is a queue `reply.<uuid>`, not durable, exclusive and auto-delete, declared by the
//!   client and deleted by [`close`](RpcClient::close) (or when the client is dropped inside a
//!   runtime): the virtual transports do not delete auto-delete queues by themselves.
//!
//! **Late replies.** A reply whose call timed out (or was cancelled), or whose
//! `correlation_id` no call is waiting for, is a late reply: acked, counted
//! ([`RpcClient::late_replies`]), logged at debug, and never handed to another call.
//!
//! **Errors.** kombu has no error shape for replies. When the handler fails (or the request
//! does not decode), the server replies with the header [`ERROR_HEADER`] set to the error's
//! text and the body `{"error": <text>, "kind": <kind>}` in the request's serializer; the
//! client turns such a reply into an [`ErrorKind::Broker`](kombu_core::ErrorKind::Broker) error (not recoverable) whose
//! message is the server's. Application errors a caller should match on belong in the
//! response type (a `Result<T, E>` serializes as `{"Ok": ..}` / `{"Err": ..}`). A call that
//! gets no reply within its timeout fails with [`ErrorKind::Timeout`](kombu_core::ErrorKind::Timeout), marked not recoverable
//! (the request may have been handled: calling again is the caller's choice).
//!
//! **Lost connections.** Client and server ride through a dropped connection as their
//! consumers do: the reply consumer subscribes again (to direct reply-to on the channel the
//! requests go out on, or to its own reply queue, declared again), and calls made after the
//! reconnection are answered (`tests/rpc_recovery.rs`). A call in flight when the connection
//! drops fails with its timeout: its reply was addressed to the old channel (direct reply-to)
//! or may have been lost with the server's connection.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use std::time::Duration;
//! use kombu_patterns::rpc::{RpcClient, RpcServer};
//!
//! # kombu_core::transport::memory::register();
//! let conn = kombu_core::Connection::open("memory://doc-rpc").await?;
//! let server = RpcServer::new(&conn, "add").await?;
//! let running = server.spawn(|(a, b): (i64, i64)| async move { Ok(a + b) });
//!
//! let client = RpcClient::new(&conn).await?;
//! let sum: i64 = client.call("add", &(2, 3), Duration::from_secs(5)).await?;
//! assert_eq!(sum, 5);
//!
//! client.close().await?;
//! running.stop().await?; // handlers in flight finish and reply first
//! # Ok(()) }
//! ```

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::CoreConnection;

mod client;
mod server;

pub use client::{RpcClient, RpcClientBuilder};
pub use server::{RpcServer, RpcServerBuilder, RunningServer};

/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The header of an error reply: the server's error, as text (see the [module](self) docs).
pub const ERROR_HEADER: &str = "x-kombu-rpc-error";

/// Whether `conn` talks to RabbitMQ, where direct reply-to exists.
fn is_amqp(conn: &CoreConnection) -> bool {
    matches!(conn.url().scheme(), "amqp" | "amqps" | "pyamqp")
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding it leaves a map that is still whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
