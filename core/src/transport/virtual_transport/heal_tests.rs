//! A consumer stream rides through a backend that fails: recoverable failures are waited
//! out under the consumer's retry policy, others end it, and what it had taken on a
//! connection the backend has since replaced goes back to its queue at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::channel::{Channel, ConsumeOptions, Outgoing};
use crate::entity::{Exchange, Queue};
use crate::error::{Error, ErrorKind, Result};
use crate::retry::RetryPolicy;
use crate::transport::memory::MemoryBackend;
use crate::transport::virtual_transport::{
    Backend, BackendCapabilities, BindingRow, DeadLetter, Envelope, Fetched, Receipt, StoredQueue,
    TakeMode, VirtualChannel,
};

/// The memory backend, with takes that fail while `failures` is above 0 (each failing take
/// counts it down) with an error of `kind`, requeues that fail likewise while
/// `reject_failures` is above 0, and an epoch the test moves.
#[derive(Debug)]
struct Flaky {
    inner: MemoryBackend,
    failures: AtomicU32,
    reject_failures: AtomicU32,
    kind: ErrorKind,
    epoch: AtomicU64,
}

impl Flaky {
    fn new(failures: u32, kind: ErrorKind) -> Arc<Self> {
        Arc::new(Flaky {
            inner: MemoryBackend::new(),
            failures: AtomicU32::new(failures),
            reject_failures: AtomicU32::new(0),
            kind,
            epoch: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl Backend for Flaky {
    fn capabilities(&self) -> BackendCapabilities {
        self.inner.capabilities()
    }
    async fn exchange(&self, name: &str, declare: Option<&Exchange>) -> Result<Option<Exchange>> {
        self.inner.exchange(name, declare).await
    }
    async fn delete_exchange(&self, name: &str) -> Result<()> {
        self.inner.delete_exchange(name).await
    }
    async fn queue(&self, name: &str, declare: Option<&Queue>) -> Result<Option<StoredQueue>> {
        self.inner.queue(name, declare).await
    }
    async fn delete_queue(&self, name: &str) -> Result<u64> {
        self.inner.delete_queue(name).await
    }
    async fn bind(&self, row: &BindingRow) -> Result<()> {
        self.inner.bind(row).await
    }
    async fn unbind(&self, row: &BindingRow) -> Result<()> {
        self.inner.unbind(row).await
    }
    async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        self.inner.bindings(exchange).await
    }
    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        self.inner.put_many(items).await
    }
    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
        let failing = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Error::new(self.kind, "the broker went away"));
        }
        self.inner.get_many(queue, max, mode).await
    }
    async fn ack_many(&self, queue: &str, receipts: &[Receipt]) -> Result<()> {
        self.inner.ack_many(queue, receipts).await
    }
    async fn reject(
        &self,
        queue: &str,
        receipt: &Receipt,
        requeue: bool,
    ) -> Result<Option<DeadLetter>> {
        let failing = self
            .reject_failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(Error::new(self.kind, "the broker went away"));
        }
        self.inner.reject(queue, receipt, requeue).await
    }
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
}

/// A channel over `backend` holding `n` messages in queue `q`.
async fn channel_with(backend: &Arc<Flaky>, n: usize) -> Result<VirtualChannel> {
    let channel = VirtualChannel::new(backend.clone(), None);
    channel.declare_queue(&Queue::new("q")).await?;
    for i in 0..n {
        let message = crate::Message::new(format!("m{i}"));
        channel.publish(Outgoing::new("", "q", message)).await?;
    }
    Ok(channel)
}

/// What a test returns: a failed step is its error.
type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

/// The next stream item within 10 s (a guard), which must be there.
async fn next_item(
    stream: &mut (impl futures::Stream<Item = Result<crate::Delivery>> + Unpin),
) -> std::result::Result<Result<crate::Delivery>, Box<dyn std::error::Error>> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await?
        .ok_or_else(|| "the stream ended".into())
}

fn quick() -> RetryPolicy {
    RetryPolicy::forever()
        .interval_start(Duration::from_millis(1))
        .interval_step(Duration::from_millis(1))
        .interval_max(Duration::from_millis(5))
}

#[tokio::test]
async fn a_stream_rides_through_recoverable_take_failures() -> TestResult {
    let backend = Flaky::new(5, ErrorKind::Connection);
    let channel = channel_with(&backend, 3).await?;
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut options = ConsumeOptions::default().retry(quick());
    let record = seen.clone();
    options.on_retry = Some(crate::retry::OnRetry::new(move |event| {
        record.lock().push((event.attempt, event.error.kind()));
    }));
    let mut stream = channel.consume(&["q".into()], &options).await?;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let delivery = next_item(&mut stream).await??;
        bodies.push(String::from_utf8_lossy(delivery.body()).into_owned());
        delivery.ack().await?;
    }
    assert_eq!(bodies, ["m0", "m1", "m2"]);
    assert_eq!(
        backend.failures.load(Ordering::Acquire),
        0,
        "all five failed"
    );
    let expected: Vec<(u32, ErrorKind)> = (1..=5).map(|i| (i, ErrorKind::Connection)).collect();
    assert_eq!(*seen.lock(), expected, "the callback saw each retry");
    Ok(())
}

#[tokio::test]
async fn a_stream_ends_on_an_error_that_is_not_recoverable() -> TestResult {
    let backend = Flaky::new(1, ErrorKind::AccessRefused);
    let channel = channel_with(&backend, 1).await?;
    let options = ConsumeOptions::default().retry(quick());
    let mut stream = channel.consume(&["q".into()], &options).await?;
    let Err(error) = next_item(&mut stream).await? else {
        return Err("a delivery, not the error".into());
    };
    assert_eq!(error.kind(), ErrorKind::AccessRefused);
    Ok(())
}

#[tokio::test]
async fn a_retry_policy_that_gives_up_hands_out_the_error() -> TestResult {
    let backend = Flaky::new(10, ErrorKind::Connection);
    let channel = channel_with(&backend, 1).await?;
    let options = ConsumeOptions::default().retry(quick().max_retries(Some(2)));
    let mut stream = channel.consume(&["q".into()], &options).await?;
    let Err(error) = next_item(&mut stream).await? else {
        return Err("a delivery, not the error".into());
    };
    assert_eq!(error.kind(), ErrorKind::Connection);
    assert_eq!(
        backend.failures.load(Ordering::Acquire),
        7,
        "three takes failed"
    );
    Ok(())
}

#[tokio::test]
async fn takes_of_a_lost_connection_go_back_and_are_taken_again() -> TestResult {
    let backend = Flaky::new(0, ErrorKind::Connection);
    let channel = channel_with(&backend, 5).await?;
    let options = ConsumeOptions::default().prefetch(10).retry(quick());
    let mut stream = channel.consume(&["q".into()], &options).await?;
    let first = next_item(&mut stream).await??;
    assert_eq!(first.body().as_ref(), b"m0");
    // Four are in the stream's buffer. The backend finds its connection lost, and cannot
    // take them back at first.
    backend.reject_failures.store(3, Ordering::Release);
    backend.epoch.store(1, Ordering::Release);
    let mut rest = Vec::new();
    for _ in 0..4 {
        let delivery = next_item(&mut stream).await??;
        assert!(
            delivery.redelivered(),
            "went back to the queue and was taken again"
        );
        rest.push(String::from_utf8_lossy(delivery.body()).into_owned());
        delivery.ack().await?;
    }
    assert_eq!(rest, ["m1", "m2", "m3", "m4"], "in their order");
    assert_eq!(backend.reject_failures.load(Ordering::Acquire), 0);
    first.ack().await?;
    channel.close().await?;
    let stored = backend.queue("q", None).await?.ok_or("the queue is gone")?;
    assert_eq!(stored.messages, 0);
    Ok(())
}
