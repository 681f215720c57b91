//! Pieces every virtual transport needs: the connection over a backend, and a short-lived
//! cache of the routing tables for backends that keep them in a shared store.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::capabilities::Capabilities;
use crate::channel::Channel;
use crate::entity::Exchange;
use crate::error::Result;
use crate::link::{LinkReporter, LinkWatch};
use crate::transport::BrokerConnection;
use crate::transport::virtual_transport::acks::AckBatch;
use crate::transport::virtual_transport::{Backend, BindingRow, VirtualChannel};
use crate::url::BrokerUrl;

/// A [`BrokerConnection`] over a [`Backend`]: its channels are [`VirtualChannel`]s with the
/// connection's default visibility timeout. Its channels queue their acks in one batch, which
/// a channel writes when it closes and the connection when it closes (so the acks of a
/// consumer dropped without closing its channel are on the broker once `close` returns). A
/// channel's `close` reports the failures of its own acks only; the connection's `close`
/// reports those of channels not closed yet (a dropped channel's are only logged).
#[derive(Debug)]
pub struct VirtualConnection {
    backend: Arc<dyn Backend>,
    visibility: Option<Duration>,
    capabilities: Capabilities,
    acks: Arc<AckBatch>,
}

impl VirtualConnection {
    /// A connection whose channels lease with `visibility` unless a consumer sets its own.
    pub fn new(backend: Arc<dyn Backend>, visibility: Option<Duration>) -> Self {
        let capabilities = VirtualChannel::new(backend.clone(), None)
            .capabilities()
            .clone();
        VirtualConnection {
            acks: Arc::new(AckBatch::new(backend.clone())),
            backend,
            visibility,
            capabilities,
        }
    }
}

#[async_trait]
impl BrokerConnection for VirtualConnection {
    fn capabilities(&self) -> Capabilities {
        self.capabilities.clone()
    }

    async fn channel(&self) -> Result<Arc<dyn Channel>> {
        Ok(Arc::new(VirtualChannel::with_acks(
            self.backend.clone(),
            self.visibility,
            self.acks.clone(),
        )))
    }

    async fn close(&self) -> Result<()> {
        self.acks.flush_all().await
    }

    fn link(&self) -> LinkWatch {
        match self.backend.link() {
            Some(link) => link,
            None => LinkReporter::new().subscribe(),
        }
    }

    fn url_in_use(&self) -> Option<BrokerUrl> {
        self.backend.url_in_use()
    }
}

/// Exchanges and binding lists read from a shared store, kept for a moment: the virtual
/// channel looks both up on every publish. Declarations made through the same backend clear
/// it ([`TopologyCache::clear`]); those made by other processes take effect within the
/// cache's lifetime.
#[derive(Debug)]
pub struct TopologyCache {
    ttl: Duration,
    inner: Mutex<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    exchanges: HashMap<String, (Instant, Option<Exchange>)>,
    bindings: HashMap<String, (Instant, Arc<[BindingRow]>)>,
}

impl TopologyCache {
    /// A cache whose entries live for `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TopologyCache {
            ttl,
            inner: Mutex::new(Entries::default()),
        }
    }

    /// A fresh cached lookup of an exchange (`Some(None)`: known not to exist).
    pub fn exchange(&self, name: &str) -> Option<Option<Exchange>> {
        let inner = self.inner.lock();
        let (at, found) = inner.exchanges.get(name)?;
        (at.elapsed() < self.ttl).then(|| found.clone())
    }

    /// Remembers a lookup of an exchange.
    pub fn put_exchange(&self, name: &str, found: Option<Exchange>) {
        self.inner
            .lock()
            .exchanges
            .insert(name.to_owned(), (Instant::now(), found));
    }

    /// A fresh cached binding list of an exchange.
    pub fn bindings(&self, exchange: &str) -> Option<Arc<[BindingRow]>> {
        let inner = self.inner.lock();
        let (at, rows) = inner.bindings.get(exchange)?;
        (at.elapsed() < self.ttl).then(|| rows.clone())
    }

    /// Remembers an exchange's binding list.
    pub fn put_bindings(&self, exchange: &str, rows: Arc<[BindingRow]>) {
        self.inner
            .lock()
            .bindings
            .insert(exchange.to_owned(), (Instant::now(), rows));
    }

    /// Forgets an exchange's binding list (to read it again now).
    pub fn forget_bindings(&self, exchange: &str) {
        self.inner.lock().bindings.remove(exchange);
    }

    /// Forgets everything (after a declaration, a binding change or a deletion).
    pub fn clear(&self) {
        let mut inner = self.inner.lock();
        inner.exchanges.clear();
        inner.bindings.clear();
    }
}
