//! The worker's mailbox: it listens on `<node>.celery.pidbox` (bound to the fanout exchange
//! `celery.pidbox`), handles the commands addressed to it ([`super::commands`]) and replies
//! as a Celery worker does (`{node: payload}` to the caller's reply exchange and routing key,
//! with the command's `ticket` and the worker's `clock` as headers, transient).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Binding, Connection, Consumer, DeliveryMode, Exchange, Queue, Result, Value};
use serde_json::{Map, Value as Json};

use super::Shared;
use crate::control::{Command, PIDBOX_EXCHANGE, ReplyTo, mailbox_queue};

/// How long the mailbox queue lives after its worker is gone (`control_queue_expires`).
const MAILBOX_EXPIRES: Duration = Duration::from_secs(10);
/// How long a command waits in it (`control_queue_ttl`).
const MAILBOX_TTL: Duration = Duration::from_secs(300);

/// Declares the worker's mailbox queue and starts listening on it.
pub(crate) async fn listen(conn: &Connection, node: &str) -> Result<Consumer> {
    let exchange = Exchange::fanout(PIDBOX_EXCHANGE).durable(false);
    conn.declare_exchange(&exchange)
        .await
        .map_err(|e| e.context("declaring the remote-control exchange"))?;
    let queue = Queue::new(mailbox_queue(node))
        .durable(false)
        .exclusive(true)
        .auto_delete(true)
        .expires(MAILBOX_EXPIRES)
        .message_ttl(MAILBOX_TTL)
        .bind(Binding::new(PIDBOX_EXCHANGE, ""));
    conn.consumer([queue])
        .no_ack(true)
        .build()
        .await
        .map_err(|e| e.context(format!("listening on the mailbox of {node}")))
}

/// Handles commands until the consumer ends (the worker aborts this at its end).
pub(crate) async fn serve(shared: Arc<Shared>, mut mailbox: Consumer) {
    while let Some(item) = mailbox.next().await {
        let delivery = match item {
            Ok(delivery) => delivery,
            Err(refused) => {
                tracing::warn!(%refused, "a remote-control message that could not be read");
                continue;
            }
        };
        let command: Command = match delivery.decode() {
            Ok(command) => command,
            Err(error) => {
                tracing::warn!(error = %format_args!("{error:#}"), "a remote-control message that is no command");
                continue;
            }
        };
        if !command.is_for(&shared.hostname) {
            continue;
        }
        if let Some(Value::Int(clock)) = delivery.headers().get("clock") {
            shared.clock.adjust(u64::try_from(*clock).unwrap_or(0));
        }
        tracing::debug!(method = %command.method, "remote-control command");
        let payload = super::commands::handle(&shared, &command.method, &command.arguments).await;
        if let (Some(payload), Some(ticket), Some(reply_to)) =
            (payload, &command.ticket, &command.reply_to)
            && let Err(error) = reply(&shared, ticket, reply_to, payload).await
        {
            tracing::warn!(
                error = %format_args!("{error:#}"),
                method = %command.method,
                "a remote-control reply was not sent"
            );
        }
    }
}

/// Sends `{node: payload}` where `reply_to` says.
async fn reply(shared: &Shared, ticket: &str, reply_to: &ReplyTo, payload: Json) -> Result<()> {
    let exchange = Exchange::direct(reply_to.exchange.as_str()).durable(false);
    shared.conn.declare_exchange(&exchange).await?;
    let mut body = Map::new();
    body.insert(shared.hostname.to_string(), payload);
    let clock = i64::try_from(shared.clock.forward()).unwrap_or(i64::MAX);
    shared
        .conn
        .producer()
        .exchange(exchange)
        .serializer("json")
        .message(&body)
        .routing_key(reply_to.routing_key.as_str())
        .header("ticket", ticket)
        .header("clock", Value::Int(clock))
        .delivery_mode(DeliveryMode::Transient)
        .send()
        .await
}

/// Celery's mingle, in the background: asks the other workers (`hello`) for the ids they
/// were told to revoke and their clocks, and takes them, so a task revoked before this worker
/// started is not run here either. Celery does it at start on AMQP and Redis; a lone worker
/// hears nothing.
pub(crate) async fn mingle(shared: Arc<Shared>) {
    let control = crate::control::Control::new(&shared.conn);
    let mut arguments = Map::new();
    arguments.insert(
        "from_node".into(),
        Json::String(shared.hostname.to_string()),
    );
    arguments.insert("revoked".into(), Json::Array(Vec::new()));
    let options = crate::control::Broadcast::new().timeout(Duration::from_secs(1));
    let replies = match control.broadcast("hello", arguments, &options).await {
        Ok(replies) => replies,
        Err(error) => {
            tracing::debug!(error = %format_args!("{error:#}"), "mingle: no hello sent");
            return;
        }
    };
    let mut synced = 0;
    for (node, reply) in replies {
        if node == *shared.hostname {
            continue;
        }
        if let Some(clock) = reply.get("clock").and_then(Json::as_u64) {
            shared.clock.adjust(clock);
        }
        let ids = super::commands::revoked_ids(reply.get("revoked"));
        let mut revoked = shared.revoked.lock();
        for id in &ids {
            revoked.add(id);
        }
        synced += 1;
    }
    tracing::info!(nodes = synced, "mingle: synced with other workers");
}
