//! [`AmqpChannel`]: core's native [`Channel`] on a lapin channel.
//!
//! The lapin channel underneath is opened lazily and replaced when it ends: after a
//! channel-level error (NOT_FOUND, PRECONDITION_FAILED, ACCESS_REFUSED close the AMQP channel)
//! the next operation opens a fresh one, so one failed declaration never makes the connection
//! unusable. After the connection drops, operations wait for the connection to recover and run
//! again (declarations are idempotent; a publish interrupted before any of its frames were
//! written is published again; one whose confirm never came fails with an error marked
//! outcome-unknown, which the producer retries only when told to: never a silent duplicate),
//! and consumers subscribe again by themselves.
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use async_trait::async_trait;
use kombu_core::transport::{Channel, ConsumeOptions, DeliveryStream, Outgoing, QueueStats};
use kombu_core::{Binding, Capabilities, Delivery, ErrorKind, Exchange, Queue, Result};
use lapin::options::{
    BasicGetOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use parking_lot::Mutex;

use crate::connection::{
    Declared, SendPending, Shared, bind, capabilities, declarable, declare_exchange,
    declare_queue_only, no_arguments,
};
use crate::consume::{consume, delivery};
use crate::error::{is_connection_loss, map};
use crate::lapin_channel::{DRAIN, Inner, Slot};
use crate::mapping::{short_string, to_table};

/// A channel on an AMQP connection: core's [`Channel`] on a lapin channel.
///
/// The lapin channel underneath is opened lazily and replaced when it ends: after a
/// channel-level error (NOT_FOUND, PRECONDITION_FAILED, ACCESS_REFUSED close the AMQP channel)
/// the next operation opens a fresh one, so one failed declaration never makes the connection
/// unusable. After the connection drops, operations wait for the connection to recover and run
/// again (declarations are idempotent; a publish interrupted before any of its frames were
/// written is published again; one whose confirm never came fails with an error marked
/// outcome-unknown, which the producer retries only when told to: never a silent duplicate),
/// and consumers subscribe again by themselves. Applications reach
/// it through `kombu::Connection` with an `amqp://` URL rather than by name.
pub struct AmqpChannel {
    inner: Arc<Inner>,
}

impl fmt::Debug for AmqpChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.inner.slot.lock().as_ref().map(|s| s.channel.id());
        f.debug_struct("AmqpChannel")
            .field("channel_id", &id)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .field("confirms", &self.inner.confirms)
            .finish()
    }
}

impl Drop for AmqpChannel {
    fn drop(&mut self) {
        // Unsettled deliveries return to their queues when the AMQP channel closes.
        self.inner.closed.store(true, Ordering::Release);
        let Some(Slot {
            channel,
            settlements,
        }) = self.inner.slot.lock().take()
        else {
            return;
        };
        settlements.flush();
        if channel.status().connected()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let in_flight = self.inner.in_flight.clone();
            let unwritten = self.inner.unwritten.clone();
            handle.spawn(async move {
                unwritten.drain(DRAIN).await;
                in_flight.drain(DRAIN).await;
                if let Err(error) = channel.close(200, "OK".into()).await {
                    tracing::debug!(%error, "closing a dropped AMQP channel failed");
                }
            });
        }
    }
}

impl AmqpChannel {
    pub(crate) async fn open(shared: Arc<Shared>) -> Result<AmqpChannel> {
        let confirms = shared.options().confirm_publish;
        let channel = AmqpChannel {
            inner: Arc::new(Inner {
                shared,
                slot: Mutex::new(None),
                opening: tokio::sync::Mutex::new(()),
                closed: AtomicBool::new(false),
                confirms,
                capabilities: capabilities(confirms),
                in_flight: Arc::default(),
                unwritten: Arc::default(),
            }),
        };
        let pending: Weak<dyn SendPending> =
            Arc::downgrade(&channel.inner) as Weak<dyn SendPending>;
        channel.inner.shared.register(pending);
        channel.inner.run(|_| async { Ok(()) }).await?;
        Ok(channel)
    }

    fn record(&self, entry: Declared) {
        self.inner.shared.record(entry);
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// Declares one entry on the broker and records it for replay after a reconnect.
    pub(crate) async fn declare_entry(&self, entry: &Declared) -> Result<()> {
        self.inner
            .run(|ch| async move { crate::connection::declare(&ch, entry).await })
            .await?;
        self.record(entry.clone());
        Ok(())
    }
}

impl AmqpChannel {
    /// A passive declaration of `queue`: its ready messages and consumers.
    async fn declare_ok(&self, queue: &str) -> Result<QueueStats> {
        let name = short_string("queue name", queue)?;
        self.inner
            .run(|ch| {
                let name = name.clone();
                async move {
                    let q = ch
                        .queue_declare(
                            name,
                            QueueDeclareOptions {
                                passive: true,
                                ..QueueDeclareOptions::default()
                            },
                            no_arguments(),
                        )
                        .await
                        .map_err(|e| map(e, format!("size of queue {queue:?}")))?;
                    Ok(QueueStats::new(u64::from(q.message_count()))
                        .consumers(u64::from(q.consumer_count())))
                }
            })
            .await
    }
}

#[async_trait]
impl Channel for AmqpChannel {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.capabilities
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.inner
            .run(|ch| async move { declare_exchange(&ch, exchange).await })
            .await?;
        if declarable(&exchange.name) {
            self.record(Declared::Exchange(exchange.clone()));
        }
        Ok(())
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        let exchange = short_string("exchange name", name)?;
        self.inner
            .run(|ch| {
                let exchange = exchange.clone();
                async move {
                    ch.exchange_delete(exchange, ExchangeDeleteOptions::default())
                        .await
                        .map_err(|e| map(e, format!("delete exchange {name:?}")))
                }
            })
            .await?;
        self.inner.shared.forget(|d| match d {
            Declared::Exchange(e) => e.name == name,
            Declared::Binding(_, b) => b.exchange == name,
            Declared::ExchangeBinding {
                destination,
                source,
                ..
            } => destination == name || source == name,
            Declared::Queue(_) => false,
        });
        Ok(())
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        queue.validate()?;
        if let Some(exchange) = &queue.exchange
            && declarable(&exchange.name)
        {
            self.declare_exchange(exchange).await?;
        }
        self.inner
            .run(|ch| async move { declare_queue_only(&ch, queue).await })
            .await?;
        self.record(Declared::Queue(queue.clone()));
        for binding in queue.bindings() {
            self.bind(&queue.name, &binding).await?;
        }
        Ok(())
    }

    async fn bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.inner
            .run(|ch| async move { bind(&ch, queue, binding).await })
            .await?;
        self.record(Declared::Binding(queue.to_owned(), binding.clone()));
        Ok(())
    }

    async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        let q = short_string("queue name", queue)?;
        let x = short_string("exchange name", &binding.exchange)?;
        let rk = short_string("routing key", &binding.routing_key)?;
        let args = to_table(&binding.arguments);
        let result = self
            .inner
            .run(|ch| {
                let (q, x, rk, args) = (q.clone(), x.clone(), rk.clone(), args.clone());
                async move {
                    ch.queue_unbind(q, x, rk, args).await.map_err(|e| {
                        map(
                            e,
                            format!(
                                "unbind queue {queue:?} from exchange {:?}",
                                binding.exchange
                            ),
                        )
                    })
                }
            })
            .await;
        self.inner
            .shared
            .forget(|d| matches!(d, Declared::Binding(q, b) if q == queue && b == binding));
        match result {
            // A binding whose queue or exchange is gone is gone too.
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn exchange_exists(&self, name: &str) -> Result<bool> {
        if name.is_empty() {
            self.inner.check_open()?;
            return Ok(true);
        }
        // The type is not compared by a passive declaration.
        let exchange = short_string("exchange name", name)?;
        self.inner
            .exists(format!("look up exchange {name:?}"), |ch| async move {
                let options = ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                };
                ch.exchange_declare(
                    exchange,
                    lapin::ExchangeKind::Direct,
                    options,
                    no_arguments(),
                )
                .await
            })
            .await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        let name = short_string("queue name", queue)?;
        self.inner
            .exists(format!("look up queue {queue:?}"), |ch| async move {
                let options = QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                };
                ch.queue_declare(name, options, no_arguments())
                    .await
                    .map(drop)
            })
            .await
    }

    async fn queue_size(&self, queue: &str) -> Result<u64> {
        Ok(self.declare_ok(queue).await?.ready)
    }

    /// The ready messages and consumers a passive declaration reports. Unsettled messages
    /// and the age of the oldest one are not in AMQP 0-9-1 (RabbitMQ's management API has
    /// them).
    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.declare_ok(queue).await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        let name = short_string("queue name", queue)?;
        self.inner
            .run(|ch| {
                let name = name.clone();
                async move {
                    ch.queue_purge(name, QueuePurgeOptions::default())
                        .await
                        .map(u64::from)
                        .map_err(|e| map(e, format!("purge queue {queue:?}")))
                }
            })
            .await
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        let name = short_string("queue name", queue)?;
        let deleted = self
            .inner
            .run(|ch| {
                let name = name.clone();
                async move {
                    ch.queue_delete(name, QueueDeleteOptions::default())
                        .await
                        .map(u64::from)
                        .map_err(|e| map(e, format!("delete queue {queue:?}")))
                }
            })
            .await?;
        self.inner.shared.forget(|d| match d {
            Declared::Queue(q) => q.name == queue,
            Declared::Binding(q, _) => q == queue,
            Declared::Exchange(_) | Declared::ExchangeBinding { .. } => false,
        });
        Ok(deleted)
    }

    async fn publish(&self, outgoing: Outgoing) -> Result<()> {
        let outgoing = self.route_delayed(outgoing).await?;
        self.inner
            .publish_all(std::slice::from_ref(&outgoing))
            .await
    }

    async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<()> {
        let mut routed = Vec::with_capacity(batch.len());
        for outgoing in batch {
            routed.push(self.route_delayed(outgoing).await?);
        }
        self.inner.publish_all(&routed).await
    }
    async fn consume(&self, queues: &[String], options: &ConsumeOptions) -> Result<DeliveryStream> {
        consume(&self.inner, queues, options).await
    }

    async fn get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        let name = short_string("queue name", queue)?;
        let got = self
            .inner
            .run_on_slot(|slot| {
                let name = name.clone();
                async move {
                    let got = slot
                        .channel
                        .basic_get(name, BasicGetOptions { no_ack })
                        .await
                        .map_err(|e| map(e, format!("get from queue {queue:?}")))?;
                    Ok(got.map(|m| (m, slot.settlements)))
                }
            })
            .await?;
        Ok(got.map(|(m, settlements)| {
            settlements.seen(m.delivery.delivery_tag, !no_ack);
            let settle = (!no_ack).then_some(&settlements);
            delivery(m.delivery, &Arc::from(queue), &Arc::from(""), settle)
        }))
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        let slot = self.inner.slot.lock().take();
        if let Some(slot) = &slot {
            slot.settlements.flush();
        }
        self.inner.unwritten.drain(DRAIN).await;
        self.inner.in_flight.drain(DRAIN).await;
        if let Some(Slot { channel, .. }) = slot
            && channel.status().connected()
            && let Err(e) = channel.close(200, "OK".into()).await
        {
            // A channel whose connection dropped is closed already.
            if !is_connection_loss(&e) {
                return Err(map(e, "close the AMQP channel"));
            }
        }
        Ok(())
    }
}
