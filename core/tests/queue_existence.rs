//! The virtual channel asks its backend whether a queue exists as rarely as it can: once per
//! distinct queue of a mandatory batch to the default exchange (not once per message), never
//! for a publish without `mandatory`, and for `size`/`purge` only when they find nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use kombu_core::memory::MemoryBackend;
use kombu_core::virtual_transport::*;
use kombu_core::{Capabilities, Channel, ErrorKind, Exchange, Message, Outgoing, Queue, Result};

/// The memory backend, counting `queue_exists` calls.
#[derive(Debug)]
struct Counting {
    inner: MemoryBackend,
    exists_calls: AtomicUsize,
}

#[async_trait]
impl Backend for Counting {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn declare_exchange(&self, e: &Exchange) -> Result<()> {
        self.inner.declare_exchange(e).await
    }
    async fn lookup_exchange(&self, n: &str) -> Result<Option<Exchange>> {
        self.inner.lookup_exchange(n).await
    }
    async fn delete_exchange(&self, n: &str) -> Result<()> {
        self.inner.delete_exchange(n).await
    }
    async fn declare_queue(&self, q: &Queue) -> Result<()> {
        self.inner.declare_queue(q).await
    }
    async fn queue_exists(&self, q: &str) -> Result<bool> {
        self.exists_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.queue_exists(q).await
    }
    async fn delete_queue(&self, q: &str) -> Result<u64> {
        self.inner.delete_queue(q).await
    }
    async fn bind(&self, r: &BindingRow) -> Result<()> {
        self.inner.bind(r).await
    }
    async fn unbind(&self, r: &BindingRow) -> Result<()> {
        self.inner.unbind(r).await
    }
    async fn bindings(&self, e: &str) -> Result<Arc<[BindingRow]>> {
        self.inner.bindings(e).await
    }
    async fn put(&self, q: &str, e: Envelope) -> Result<Vec<DeadLetter>> {
        self.inner.put(q, e).await
    }
    async fn put_many(&self, i: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        self.inner.put_many(i).await
    }
    async fn get_many(&self, q: &str, m: usize, t: TakeMode) -> Result<Fetched> {
        self.inner.get_many(q, m, t).await
    }
    async fn ack(&self, q: &str, r: &Receipt) -> Result<()> {
        self.inner.ack(q, r).await
    }
    async fn reject(&self, q: &str, r: &Receipt) -> Result<Option<DeadLetter>> {
        self.inner.reject(q, r).await
    }
    async fn restore(&self, q: &str, r: &Receipt) -> Result<()> {
        self.inner.restore(q, r).await
    }
    async fn extend_lease(&self, q: &str, r: &Receipt, by: Duration) -> Result<()> {
        self.inner.extend_lease(q, r, by).await
    }
    async fn purge(&self, q: &str) -> Result<u64> {
        self.inner.purge(q).await
    }
    async fn size(&self, q: &str) -> Result<u64> {
        self.inner.size(q).await
    }
    async fn wait(&self, qs: &[String], t: Duration) -> Result<()> {
        self.inner.wait(qs, t).await
    }
}

fn to(queue: &str, mandatory: bool) -> Outgoing {
    Outgoing {
        exchange: String::new(),
        routing_key: queue.to_owned(),
        message: Message::new(&b"x"[..]),
        mandatory,
    }
}

#[tokio::test]
async fn a_mandatory_batch_asks_once_per_distinct_queue() {
    let backend = Arc::new(Counting {
        inner: MemoryBackend::new(),
        exists_calls: AtomicUsize::new(0),
    });
    let ch = VirtualChannel::new(backend.clone(), None);
    ch.declare_queue(&Queue::new("a")).await.unwrap();
    ch.declare_queue(&Queue::new("b")).await.unwrap();
    let calls = || backend.exists_calls.load(Ordering::SeqCst);

    let batch: Vec<Outgoing> = (0..100)
        .map(|i| to(if i % 2 == 0 { "a" } else { "b" }, true))
        .collect();
    ch.publish_batch(batch).await.unwrap();
    assert_eq!(calls(), 2, "one look per distinct queue, not per message");
    assert_eq!(ch.queue_size("a").await.unwrap(), 50);
    assert_eq!(ch.queue_size("b").await.unwrap(), 50);
    assert_eq!(calls(), 2, "a size that finds messages asks nothing");

    let batch: Vec<Outgoing> = (0..100).map(|_| to("a", false)).collect();
    ch.publish_batch(batch).await.unwrap();
    ch.publish(to("a", false)).await.unwrap();
    assert_eq!(calls(), 2, "publishes without mandatory ask nothing");

    let e = ch
        .publish_batch(vec![to("a", true), to("missing", true), to("a", true)])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unroutable, "{e}");
    assert_eq!(
        ch.queue_size("a").await.unwrap(),
        151,
        "nothing of it stored"
    );

    let e = ch.queue_size("missing").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    let e = ch.purge("missing").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    ch.purge("a").await.unwrap();
    assert_eq!(ch.queue_size("a").await.unwrap(), 0, "empty, and it exists");
}
