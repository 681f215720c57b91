//! The `memory+record://` transport: the memory transport, with every channel wrapped so that
//! publishes, deliveries and settlements are written to the recorder's log.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use kombu_core::transport::memory::MemoryTransport;
use kombu_core::transport::{
    BrokerConnection, Channel, ConsumeOptions, DeliveryStream, Envelope, Outcome, Outgoing,
    QueueStats, Settler, Transport,
};
use kombu_core::{
    Binding, BrokerUrl, Capabilities, Delivery, Error, ErrorKind, Exchange, LinkWatch, Queue,
    Result,
};
use parking_lot::Mutex;

use super::record::{Entry, State, state_of};

/// The scheme a recorder's URL has.
pub(crate) const SCHEME: &str = "memory+record";

/// Registers `memory+record://` (and `memory://`, which it stands on); idempotent.
pub(crate) fn register() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        kombu_core::transport::memory::register();
        kombu_core::transport::register_transport(Arc::new(RecordTransport));
    });
}

/// `memory+record://NAME`: the memory broker `memory://NAME`, recorded in the log of `NAME`.
#[derive(Debug)]
struct RecordTransport;

#[async_trait]
impl Transport for RecordTransport {
    fn name(&self) -> &'static str {
        "memory+record"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &[SCHEME]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        let name = url.host().unwrap_or_default();
        let memory = BrokerUrl::parse(&format!("memory://{}", url.rest()))
            .map_err(|e| e.context(format!("the memory broker behind {url}")))?;
        let inner = MemoryTransport.connect(&memory).await?;
        Ok(Arc::new(RecordConnection {
            inner,
            state: state_of(name),
            visibility_timeout: url.query_seconds("visibility_timeout")?,
        }))
    }
}

#[derive(Debug)]
struct RecordConnection {
    inner: Arc<dyn BrokerConnection>,
    state: Arc<State>,
    visibility_timeout: Option<Duration>,
}

#[async_trait]
impl BrokerConnection for RecordConnection {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn channel(&self) -> Result<Arc<dyn Channel>> {
        let inner = self.inner.channel().await?;
        Ok(Arc::new(RecordChannel {
            inner,
            settler: Arc::new(RecordSettler {
                state: self.state.clone(),
                held: Mutex::new(HashMap::new()),
            }),
            visibility_timeout: self.visibility_timeout,
        }))
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }

    fn link(&self) -> LinkWatch {
        self.inner.link()
    }
}

/// A memory channel whose publishes and deliveries are recorded. Deliveries are handed out
/// wrapped: the wrapper's settler settles the memory channel's delivery, then records how.
#[derive(Debug)]
struct RecordChannel {
    inner: Arc<dyn Channel>,
    settler: Arc<RecordSettler>,
    visibility_timeout: Option<Duration>,
}

impl RecordChannel {
    fn state(&self) -> &Arc<State> {
        &self.settler.state
    }
}

/// Records a delivery and hands out its wrapper.
fn wrap(settler: &Arc<RecordSettler>, delivery: Delivery, lease: Option<Duration>) -> Delivery {
    let info = delivery.info().clone();
    let message = delivery.message().clone();
    let no_ack = delivery.is_no_ack();
    let entry = settler.state.consumed(&info, &message, no_ack);
    if no_ack {
        return Delivery::new(message, info, None);
    }
    settler.held.lock().insert(
        info.delivery_tag,
        Held {
            delivery: Arc::new(tokio::sync::Mutex::new(Some(delivery))),
            entry,
            lease,
        },
    );
    let as_settler: Arc<dyn Settler> = settler.clone();
    Delivery::new(message, info, Some(as_settler))
}

#[async_trait]
impl Channel for RecordChannel {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.inner.declare_exchange(exchange).await
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.inner.delete_exchange(name).await
    }

    async fn exchange_exists(&self, name: &str) -> Result<bool> {
        self.inner.exchange_exists(name).await
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        self.inner.declare_queue(queue).await?;
        if queue.dead_letter_exchange.is_some() {
            self.state().declared_dead_letter_queue(&queue.name);
        }
        Ok(())
    }

    async fn bind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.inner.bind(queue, binding).await
    }

    async fn unbind(&self, queue: &str, binding: &Binding) -> Result<()> {
        self.inner.unbind(queue, binding).await
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        self.inner.queue_exists(queue).await
    }

    async fn queue_size(&self, queue: &str) -> Result<u64> {
        self.inner.queue_size(queue).await
    }

    async fn queue_stats(&self, queue: &str) -> Result<QueueStats> {
        self.inner.queue_stats(queue).await
    }

    async fn peek(&self, queue: &str, limit: usize) -> Result<Vec<Envelope>> {
        self.inner.peek(queue, limit).await
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        self.inner.purge(queue).await
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        self.inner.delete_queue(queue).await
    }

    async fn publish(&self, outgoing: Outgoing) -> Result<()> {
        let copy = outgoing.clone();
        self.inner.publish(outgoing).await?;
        self.state().published(&copy);
        Ok(())
    }

    async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<()> {
        let copies = batch.clone();
        self.inner.publish_batch(batch).await?;
        for out in &copies {
            self.state().published(out);
        }
        Ok(())
    }

    async fn consume(&self, queues: &[String], options: &ConsumeOptions) -> Result<DeliveryStream> {
        let stream = self.inner.consume(queues, options).await?;
        let settler = self.settler.clone();
        let lease = options.visibility_timeout.or(self.visibility_timeout);
        Ok(stream
            .map(move |item| item.map(|delivery| wrap(&settler, delivery, lease)))
            .boxed())
    }

    async fn get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        let taken = self.inner.get(queue, no_ack).await?;
        Ok(taken.map(|delivery| wrap(&self.settler, delivery, self.visibility_timeout)))
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// A delivery of the memory channel, held until its wrapper is settled.
#[derive(Debug, Clone)]
struct Held {
    /// Locked while it is settled or its lease extended, so that the two never race; `None`
    /// once settled.
    delivery: Arc<tokio::sync::Mutex<Option<Delivery>>>,
    entry: Entry,
    lease: Option<Duration>,
}

#[derive(Debug)]
struct RecordSettler {
    state: Arc<State>,
    held: Mutex<HashMap<u64, Held>>,
}

fn stale(tag: u64) -> Error {
    Error::new(
        ErrorKind::StaleDelivery,
        format!("delivery {tag} of a recorded channel is settled already"),
    )
}

#[async_trait]
impl Settler for RecordSettler {
    async fn settle(&self, delivery_tag: u64, outcome: Outcome) -> Result<()> {
        let held = self.held.lock().get(&delivery_tag).cloned();
        let Some(held) = held else {
            return Err(stale(delivery_tag));
        };
        let mut slot = held.delivery.lock().await;
        let Some(delivery) = slot.take() else {
            return Err(stale(delivery_tag));
        };
        match delivery.settle(outcome).await {
            Ok(()) => {
                drop(slot);
                self.held.lock().remove(&delivery_tag);
                self.state.settled(held.entry, outcome);
                Ok(())
            }
            Err(mut failed) => {
                // The memory channel's delivery is kept, to settle again.
                let placeholder = Error::new(ErrorKind::Settlement, "settlement failed");
                let error = std::mem::replace(&mut failed.error, placeholder);
                *slot = Some(failed.into_delivery());
                Err(error)
            }
        }
    }

    async fn extend_lease(&self, delivery_tag: u64) -> Result<()> {
        let held = self.held.lock().get(&delivery_tag).cloned();
        let Some(held) = held else {
            return Err(stale(delivery_tag));
        };
        let slot = held.delivery.lock().await;
        match slot.as_ref() {
            Some(delivery) => delivery.extend_lease().await,
            None => Err(stale(delivery_tag)),
        }
    }

    fn lease_timeout(&self, delivery_tag: u64) -> Option<Duration> {
        self.held.lock().get(&delivery_tag).and_then(|h| h.lease)
    }
}
