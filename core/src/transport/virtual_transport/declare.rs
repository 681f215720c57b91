//! Declarations through the virtual channel: exchanges, queues, bindings, and the queue
//! counts. The backend only stores a spec if none is stored and returns what is; the
//! comparison of a redeclaration with what is stored, and its `PreconditionFailed`, are here,
//! once for every backend.

use crate::entity::{Binding, Exchange, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::message::Envelope;
use crate::transport::QueueStats;
use crate::transport::virtual_transport::channel::Shared;
use crate::transport::virtual_transport::{BindingRow, queue_settings};
use crate::value::Headers;

impl Shared {
    /// Declares an exchange, failing if one of that name exists with another type.
    pub(super) async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        if exchange.is_default() {
            return Ok(());
        }
        let stored = self
            .backend
            .exchange(&exchange.name, Some(exchange))
            .await?;
        match stored {
            Some(existing) if existing.kind != exchange.kind => Err(Error::inequivalent(
                format_args!("exchange {:?}", exchange.name),
                [(
                    "type".to_owned(),
                    existing.kind.to_string(),
                    exchange.kind.to_string(),
                )],
            )),
            _ => Ok(()),
        }
    }

    /// Declares a queue (and its exchange and bindings), failing if it exists with other
    /// settings ([`queue_settings`]).
    pub(super) async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        queue.validate()?;
        if let Some(exchange) = &queue.exchange {
            self.declare_exchange(exchange).await?;
        }
        let stored = self.backend.queue(&queue.name, Some(queue)).await?;
        if let Some(has) = stored.and_then(|s| s.settings) {
            let asked = queue_settings(queue);
            if !same_settings(&has, &asked) {
                return Err(Error::inequivalent_settings(
                    format_args!("queue {:?}", queue.name),
                    &has,
                    &asked,
                ));
            }
        }
        for binding in queue.bindings() {
            self.bind(&queue.name, &binding).await?;
        }
        Ok(())
    }

    pub(super) async fn bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        if binding.exchange.is_empty() {
            return Err(Error::new(
                ErrorKind::AccessRefused,
                "queues cannot be bound to the default exchange",
            ));
        }
        if self
            .backend
            .exchange(&binding.exchange, None)
            .await?
            .is_none()
        {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no exchange {:?} to bind to", binding.exchange),
            ));
        }
        self.backend.bind(&row(queue, binding)).await
    }

    pub(super) async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.backend.unbind(&row(queue, binding)).await
    }

    /// A queue's ready count, or [`ErrorKind::NotFound`] when it exists nowhere.
    pub(super) async fn queue_size(&self, queue: &str) -> Result<u64> {
        // Ordering only: acks queued before are written first.
        self.acks.flush().await;
        match self.backend.queue(queue, None).await? {
            Some(stored) => Ok(stored.messages),
            None => Err(missing(queue)),
        }
    }

    /// What the store tells of a queue, or [`ErrorKind::NotFound`] when it exists nowhere.
    pub(super) async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        // Ordering only: acks queued before are written first.
        self.acks.flush().await;
        match self.backend.queue_stats(queue).await? {
            Some(stats) => Ok(stats),
            None => Err(missing(queue)),
        }
    }

    /// Up to `limit` ready messages of a queue, not taken; [`ErrorKind::NotFound`] when it
    /// exists nowhere.
    pub(super) async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.acks.flush().await;
        let seen = self.backend.peek(queue, limit).await?;
        if seen.is_empty() && !self.backend.queue_exists(queue).await? {
            return Err(missing(queue));
        }
        Ok(seen)
    }

    /// Purges a queue's ready messages, or fails with [`ErrorKind::NotFound`] when it exists
    /// nowhere (asked only when nothing was purged).
    pub(super) async fn purge(&self, queue: &str) -> Result<u64> {
        // Ordering only: acks queued before are written first.
        self.acks.flush().await;
        let count = self.backend.purge(queue).await?;
        if count == 0 && !self.backend.queue_exists(queue).await? {
            return Err(missing(queue));
        }
        Ok(count)
    }
}

/// Whether stored settings match the requested ones: equal, or equal as JSON (a store that
/// keeps them as JSON hands back what JSON could hold of them, such as bytes as a list).
fn same_settings(has: &Headers, asked: &Headers) -> bool {
    if has == asked {
        return true;
    }
    match (serde_json::to_value(has), serde_json::to_value(asked)) {
        (Ok(has), Ok(asked)) => has == asked,
        _ => false,
    }
}

fn row(queue: &str, binding: &Binding) -> BindingRow {
    BindingRow {
        exchange: binding.exchange.clone(),
        routing_key: binding.routing_key.clone(),
        queue: queue.to_owned(),
        arguments: binding.arguments.clone(),
    }
}

fn missing(queue: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("no queue {queue:?}: declare it first"),
    )
}
