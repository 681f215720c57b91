//! `flaky://NAME`: the memory transport (`memory://NAME`) with faults a test arranges: connects,
//! declarations and publishes that fail a given number of times with a given error, and a link
//! state the test sets.
// Each test file uses part of these helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use kombu_core::transport::{
    BrokerConnection, Channel, ConsumeOptions, DeliveryStream, Outgoing, Transport,
};
use kombu_core::{
    Binding, BrokerUrl, Capabilities, Delivery, Error, ErrorKind, Exchange, LinkReporter,
    LinkState, LinkWatch, Queue, Result,
};
use parking_lot::Mutex;

/// How an arranged failure fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A lost connection before anything was sent: recoverable, outcome known.
    Refused,
    /// A lost reply: recoverable, outcome unknown.
    Unknown,
    /// Not recoverable (an access refusal).
    Fatal,
}

impl Failure {
    fn error(self, what: &str) -> Error {
        match self {
            Failure::Refused => Error::new(ErrorKind::Connection, format!("{what}: refused")),
            Failure::Unknown => Error::new(ErrorKind::Connection, format!("{what}: reply lost"))
                .with_outcome_unknown(),
            Failure::Fatal => Error::new(ErrorKind::AccessRefused, format!("{what}: denied")),
        }
    }
}

/// The faults and counters of one `flaky://NAME` broker.
#[derive(Debug, Default)]
pub struct Faults {
    /// Failures still to give, per operation (`connect`, `declare`, `publish`).
    pending: Mutex<HashMap<&'static str, (u32, Failure)>>,
    /// Tries per operation, failed ones included.
    tries: Mutex<HashMap<&'static str, u32>>,
    /// Connections opened.
    pub connects: AtomicU32,
    /// The link state of every connection of this broker.
    pub link: LinkReporter,
}

impl Faults {
    /// The next `count` tries of `operation` fail with `failure`.
    pub fn fail(&self, operation: &'static str, count: u32, failure: Failure) {
        self.pending.lock().insert(operation, (count, failure));
    }

    /// How many times `operation` was tried.
    pub fn tries(&self, operation: &'static str) -> u32 {
        self.tries.lock().get(operation).copied().unwrap_or(0)
    }

    fn check(&self, operation: &'static str) -> Result<()> {
        *self.tries.lock().entry(operation).or_default() += 1;
        let mut pending = self.pending.lock();
        match pending.get_mut(operation) {
            Some((left, failure)) if *left > 0 => {
                *left -= 1;
                Err(failure.error(operation))
            }
            _ => Ok(()),
        }
    }
}

static BROKERS: LazyLock<Mutex<HashMap<String, Arc<Faults>>>> = LazyLock::new(Default::default);

/// The faults of `flaky://name` (made on first use).
pub fn faults(name: &str) -> Arc<Faults> {
    BROKERS
        .lock()
        .entry(name.to_owned())
        .or_insert_with(|| {
            Arc::new(Faults {
                link: LinkReporter::new(),
                ..Faults::default()
            })
        })
        .clone()
}

#[derive(Debug)]
struct FlakyTransport;

#[async_trait]
impl Transport for FlakyTransport {
    fn name(&self) -> &'static str {
        "flaky"
    }
    fn schemes(&self) -> &'static [&'static str] {
        &["flaky"]
    }
    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        let name = url.host().unwrap_or_default().to_owned();
        let faults = faults(&name);
        faults.check("connect")?;
        faults.connects.fetch_add(1, Ordering::SeqCst);
        let memory = BrokerUrl::parse(&format!("memory://flaky-{name}"))?;
        let inner = kombu_core::transport::transport_for(&memory)
            .ok_or_else(|| Error::config("memory transport not registered"))?
            .connect(&memory)
            .await?;
        Ok(Arc::new(FlakyConnection { inner, faults }))
    }
}

#[derive(Debug)]
struct FlakyConnection {
    inner: Arc<dyn BrokerConnection>,
    faults: Arc<Faults>,
}

#[async_trait]
impl BrokerConnection for FlakyConnection {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn channel(&self) -> Result<Arc<dyn Channel>> {
        Ok(Arc::new(FlakyChannel {
            inner: self.inner.channel().await?,
            faults: self.faults.clone(),
        }))
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
    fn link(&self) -> LinkWatch {
        self.faults.link.subscribe()
    }
}

#[derive(Debug)]
struct FlakyChannel {
    inner: Arc<dyn Channel>,
    faults: Arc<Faults>,
}

#[async_trait]
impl Channel for FlakyChannel {
    fn capabilities(&self) -> &Capabilities {
        self.inner.capabilities()
    }
    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        self.faults.check("declare")?;
        self.inner.declare_exchange(exchange).await
    }
    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.inner.delete_exchange(name).await
    }
    async fn exchange_exists(&self, name: &str) -> Result<bool> {
        self.inner.exchange_exists(name).await
    }
    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        self.faults.check("declare")?;
        self.inner.declare_queue(queue).await
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
    async fn purge(&self, queue: &str) -> Result<u64> {
        self.inner.purge(queue).await
    }
    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        self.inner.delete_queue(queue).await
    }
    async fn publish(&self, outgoing: Outgoing) -> Result<()> {
        self.faults.check("publish")?;
        self.inner.publish(outgoing).await
    }
    async fn publish_batch(&self, batch: Vec<Outgoing>) -> Result<()> {
        self.faults.check("publish")?;
        self.inner.publish_batch(batch).await
    }
    async fn consume(&self, queues: &[String], options: &ConsumeOptions) -> Result<DeliveryStream> {
        self.inner.consume(queues, options).await
    }
    async fn get(&self, queue: &str, no_ack: bool) -> Result<Option<Delivery>> {
        self.inner.get(queue, no_ack).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

/// Registers `flaky://` (and `memory://`, which it wraps).
pub fn install() {
    kombu_core::transport::memory::register();
    kombu_core::transport::register_transport(Arc::new(FlakyTransport));
}

/// Sets the link state every connection of `flaky://name` reports.
pub fn set_link(name: &str, state: LinkState) {
    faults(name).link.report(state);
}
