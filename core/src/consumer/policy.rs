//! The consumer's error policy: dead-lettering, counted requeues, stopping. A poison message
//! is moved aside or retried, never dropped and never left at the head of its queue.

use crate::channel::{Delivery, Outgoing};
use crate::consumer::{ConsumeError, Consumer, ErrorAction};
use crate::dead_letter::{
    self, DeadLettered, Destination, ORIGINAL_EXCHANGE, ORIGINAL_QUEUE, ORIGINAL_ROUTING_KEY,
    REASON, REDELIVERIES,
};
use crate::entity::Queue;
use crate::error::{Error, ErrorKind, Result};
use crate::message::Message;
use crate::value::Value;

/// What [`Consumer::handle`] did with a refused delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Handled {
    /// Moved aside: by the consumer now, or by the transport before it reached the consumer
    /// (an entry it could not read at all).
    DeadLettered(DeadLettered),
    /// Put back at the tail of its queue for another try (this many so far).
    Requeued {
        /// Tries counted in the [`REDELIVERIES`] header, this one included.
        redeliveries: u32,
    },
}

/// The tries a requeued message has had.
fn redeliveries(delivery: &Delivery) -> u32 {
    match delivery.headers().get(REDELIVERIES) {
        Some(Value::Int(n)) => u32::try_from(*n).unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => 0,
    }
}

impl Consumer {
    /// Settles what the stream refused, by the consumer's policy ([`ErrorAction`], or its
    /// `on_error` hook):
    ///
    /// - a delivery that is not accepted (or, from the handler styles, does not decode) is
    ///   dead-lettered ([`Consumer::dead_letter`]), requeued with a count, or left in its queue
    ///   with the error returned (`Stop`);
    /// - an entry the transport already moved aside ([`ErrorKind::DeadLettered`]) is reported
    ///   as [`Handled::DeadLettered`];
    /// - any other error (the broker failed) is returned.
    pub async fn handle(&self, refused: ConsumeError) -> Result<Handled> {
        let ConsumeError { error, delivery } = refused;
        let Some(delivery) = delivery else {
            return match error.dead_lettered() {
                Some(record) => Ok(Handled::DeadLettered(record.clone())),
                None => Err(error),
            };
        };
        let reason = format!("{error:#}");
        match self.action_for(&error, &delivery) {
            ErrorAction::DeadLetter => Ok(Handled::DeadLettered(
                self.dead_letter(delivery, reason).await?,
            )),
            ErrorAction::Requeue => self.requeue_counted(delivery, reason).await,
            ErrorAction::Stop => {
                self.leave_in_queue(delivery).await?;
                Err(error)
            }
        }
    }

    /// Moves a delivery aside for good: a copy (body byte for byte, properties and headers,
    /// plus the [`dead_letter`](crate::dead_letter) headers, without its expiration) goes to
    /// its queue's dead-letter exchange if the queue was given to this consumer with one (and
    /// some queue is bound there), else to the queue `<queue>.dlq`, declared if missing; once
    /// the copy is stored the original is acked (a failure in between leaves both, never
    /// neither). Logs at `warn` and returns where it went.
    pub async fn dead_letter(
        &self,
        delivery: Delivery,
        reason: impl Into<String>,
    ) -> Result<DeadLettered> {
        let reason = reason.into();
        let queue = delivery.queue().to_owned();
        let mut message = delivery.message().clone();
        message.properties.expiration = None;
        let headers = &mut message.headers;
        headers.insert(REASON.to_owned(), Value::from(reason.as_str()));
        headers.insert(ORIGINAL_QUEUE.to_owned(), Value::from(queue.as_str()));
        headers.insert(
            ORIGINAL_EXCHANGE.to_owned(),
            Value::from(delivery.exchange()),
        );
        headers.insert(
            ORIGINAL_ROUTING_KEY.to_owned(),
            Value::from(delivery.routing_key()),
        );
        let destination = self.store_dead_letter(&delivery, message).await?;
        delivery.ack().await.map_err(|e| {
            Error::from(e).context("the dead letter was stored, but acking the original failed")
        })?;
        tracing::warn!(%queue, %destination, %reason, "message dead-lettered");
        crate::metrics::record_dead_lettered(self.system, &queue);
        Ok(DeadLettered::new(queue, reason, destination))
    }

    /// Publishes the dead letter where it belongs and says where that was.
    async fn store_dead_letter(
        &self,
        delivery: &Delivery,
        message: Message,
    ) -> Result<Destination> {
        let queue = delivery.queue();
        let mandatory = self.channel.capabilities().mandatory;
        let declared = self.declared.iter().find(|q| q.name == queue);
        // Through the dead-letter exchange only when the broker can say that no queue took
        // the copy (mandatory) and the exchange exists (publishing to a missing one closes an
        // AMQP channel, this consumer's); otherwise `<queue>.dlq`, which is declared first.
        if let Some(q) = declared
            && let Some(exchange) = q.dead_letter_exchange.as_deref().filter(|x| !x.is_empty())
            && self.usable_exchange(queue, exchange, mandatory).await?
        {
            let routing_key = q
                .dead_letter_routing_key
                .clone()
                .unwrap_or_else(|| delivery.routing_key().to_owned());
            let out =
                Outgoing::new(exchange, routing_key.clone(), message.clone()).mandatory(mandatory);
            match self.channel.publish(out).await {
                Ok(()) => {
                    return Ok(Destination::Exchange {
                        exchange: exchange.to_owned(),
                        routing_key,
                    });
                }
                // No queue bound there: the message would be dropped; `<queue>.dlq` instead.
                Err(e) if e.kind() == ErrorKind::Unroutable => {
                    tracing::warn!(
                        %queue,
                        %exchange,
                        "dead-letter exchange routes nowhere; using the dead-letter queue"
                    );
                }
                Err(e) => {
                    return Err(
                        e.context(format!("publishing a dead letter to exchange {exchange:?}"))
                    );
                }
            }
        }
        let dlq = dead_letter::dlq_name(queue);
        // Declared only when missing: a `<queue>.dlq` the application declared its own way
        // is used as it is.
        if !self.conn.queue_exists(&dlq).await? {
            self.conn
                .maybe_declare_queue(&Queue::new(dlq.clone()))
                .await
                .map_err(|e| e.context(format!("declaring dead-letter queue {dlq:?}")))?;
        }
        self.publish_to_queue(&dlq, message, "publishing a dead letter")
            .await?;
        Ok(Destination::Queue(dlq))
    }

    /// Whether dead letters of `queue` may go through `exchange`.
    async fn usable_exchange(&self, queue: &str, exchange: &str, mandatory: bool) -> Result<bool> {
        if !mandatory {
            tracing::warn!(
                %queue,
                %exchange,
                "this connection cannot publish mandatory messages (AMQP without publisher \
                 confirms), so an unrouted dead letter would be lost: using the dead-letter queue"
            );
            return Ok(false);
        }
        if !self.conn.exchange_exists(exchange).await? {
            tracing::warn!(
                %queue,
                %exchange,
                "the dead-letter exchange does not exist; using the dead-letter queue"
            );
            return Ok(false);
        }
        Ok(true)
    }

    /// [`ErrorAction::Requeue`]: a copy with one more try counted goes to the tail of the
    /// queue and the original is acked; past `max_redeliveries` tries, dead-lettered.
    async fn requeue_counted(&self, delivery: Delivery, reason: String) -> Result<Handled> {
        let tries = redeliveries(&delivery);
        if tries >= self.max_redeliveries {
            let reason = format!("{reason} (given up after {tries} redeliveries)");
            return Ok(Handled::DeadLettered(
                self.dead_letter(delivery, reason).await?,
            ));
        }
        let mut message = delivery.message().clone();
        message
            .headers
            .insert(REDELIVERIES.to_owned(), Value::from(i64::from(tries) + 1));
        let queue = delivery.queue().to_owned();
        self.publish_to_queue(&queue, message, "publishing back")
            .await?;
        delivery.ack().await.map_err(|e| {
            Error::from(e).context("the message was requeued, but acking the original failed")
        })?;
        tracing::warn!(%queue, %reason, tries = tries + 1, "message requeued");
        Ok(Handled::Requeued {
            redeliveries: tries + 1,
        })
    }

    /// [`ErrorAction::Stop`]: the message stays in its queue (requeued; a no-ack delivery,
    /// already settled, is published back).
    async fn leave_in_queue(&self, delivery: Delivery) -> Result<()> {
        if delivery.is_no_ack() {
            let queue = delivery.queue().to_owned();
            let message = delivery.message().clone();
            return self
                .publish_to_queue(&queue, message, "publishing back")
                .await;
        }
        delivery.requeue().await.map_err(Error::from)
    }

    /// Publishes `message` to `queue` through the default exchange (mandatory where the
    /// transport can say no queue took it); `what` names the step in an error.
    async fn publish_to_queue(&self, queue: &str, message: Message, what: &str) -> Result<()> {
        let mandatory = self.channel.capabilities().mandatory;
        let out = Outgoing::new("", queue, message).mandatory(mandatory);
        self.channel
            .publish(out)
            .await
            .map_err(|e| e.context(format!("{what} to queue {queue:?}")))
    }
}
