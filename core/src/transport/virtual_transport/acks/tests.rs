//! The ack batch against test backends whose acks are slow or fail.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use super::*;
use crate::channel::{Channel, ConsumeOptions, Outgoing};
use crate::entity::{Exchange, Queue};
use crate::error::ErrorKind;
use crate::transport::BrokerConnection;
use crate::transport::memory::MemoryBackend;
use crate::transport::virtual_transport::{
    BackendCapabilities, BindingRow, DeadLetter, Envelope, Fetched, StoredQueue, TakeMode,
    VirtualChannel, VirtualConnection,
};

#[test]
fn acks_are_grouped_per_queue_in_order() {
    let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
    let entry = |owner, queue: &Arc<str>, id| Entry {
        owner,
        queue: queue.clone(),
        receipt: Receipt::Id(id),
    };
    let groups = per_queue(vec![entry(7, &a, 1), entry(8, &b, 2), entry(9, &a, 3)]);
    assert_eq!(
        groups,
        vec![
            Group {
                queue: a,
                receipts: vec![Receipt::Id(1), Receipt::Id(3)],
                owners: vec![7, 9],
            },
            Group {
                queue: b,
                receipts: vec![Receipt::Id(2)],
                owners: vec![8],
            },
        ]
    );
}

/// The memory backend with acks that take a while to write, or fail.
#[derive(Debug, Default)]
struct TestAcks {
    inner: MemoryBackend,
    /// How long each `ack_many` takes.
    delay: Duration,
    /// The queue whose acks fail (none: no ack fails).
    failing: Option<&'static str>,
    /// How many times they fail before they succeed.
    failures: AtomicU32,
    /// What they fail with.
    kind: Option<ErrorKind>,
    /// `ack_many` calls.
    calls: AtomicU32,
}

impl TestAcks {
    fn slow(delay: Duration) -> Self {
        TestAcks {
            delay,
            ..TestAcks::default()
        }
    }

    /// Acks of `queue` fail `times` times with `kind`.
    fn failing(queue: &'static str, times: u32, kind: ErrorKind) -> Self {
        TestAcks {
            failing: Some(queue),
            failures: AtomicU32::new(times),
            kind: Some(kind),
            ..TestAcks::default()
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Backend for TestAcks {
    fn capabilities(&self) -> BackendCapabilities {
        self.inner.capabilities()
    }
    async fn exchange(&self, n: &str, d: Option<&Exchange>) -> Result<Option<Exchange>> {
        self.inner.exchange(n, d).await
    }
    async fn delete_exchange(&self, n: &str) -> Result<()> {
        self.inner.delete_exchange(n).await
    }
    async fn queue(&self, n: &str, d: Option<&Queue>) -> Result<Option<StoredQueue>> {
        self.inner.queue(n, d).await
    }
    async fn delete_queue(&self, n: &str) -> Result<u64> {
        self.inner.delete_queue(n).await
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
    async fn put_many(&self, i: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        self.inner.put_many(i).await
    }
    async fn get_many(&self, q: &str, m: usize, t: TakeMode) -> Result<Fetched> {
        self.inner.get_many(q, m, t).await
    }
    async fn ack_many(&self, q: &str, r: &[Receipt]) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        if self.failing == Some(q) {
            let left = self.failures.load(Ordering::SeqCst);
            if left > 0 {
                self.failures.store(left - 1, Ordering::SeqCst);
                let kind = self.kind.unwrap_or(ErrorKind::Broker);
                return Err(Error::new(kind, "store busy"));
            }
        }
        self.inner.ack_many(q, r).await
    }
    async fn reject(&self, q: &str, r: &Receipt, requeue: bool) -> Result<Option<DeadLetter>> {
        self.inner.reject(q, r, requeue).await
    }
    async fn purge(&self, q: &str) -> Result<u64> {
        self.inner.purge(q).await
    }
    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        self.inner.wait(queues, timeout).await
    }
}

/// A channel over `backend` with one message in each of `queues`, leased for 30 s.
async fn channel_with(backend: Arc<TestAcks>, queues: &[&str]) -> VirtualChannel {
    let channel = VirtualChannel::new(backend, Some(Duration::from_secs(30)));
    for queue in queues {
        channel.declare_queue(&Queue::new(*queue)).await.unwrap();
        let outgoing = Outgoing::new("", *queue, crate::Message::new("m"));
        channel.publish(outgoing).await.unwrap();
    }
    channel
}

/// A consumer stream left unpolled while it waits for its channel's acks to be written
/// (a `select!` dropped its `next()`) holds nothing that `close` waits for.
#[tokio::test]
async fn an_abandoned_stream_does_not_stall_close() {
    let backend = Arc::new(TestAcks::slow(Duration::from_millis(100)));
    let channel = channel_with(backend, &["q"]).await;
    let mut stream = channel
        .consume(&["q".into()], &ConsumeOptions::default())
        .await
        .unwrap();
    let delivery = stream.next().await.unwrap().unwrap();
    delivery.ack().await.unwrap();
    // Idle: the stream waits for the ack's write, and is then abandoned.
    let idle = tokio::time::timeout(Duration::from_millis(20), stream.next()).await;
    assert!(idle.is_err(), "nothing more to deliver");
    let closed = tokio::time::timeout(Duration::from_secs(5), channel.close()).await;
    assert!(matches!(closed, Ok(Ok(()))), "close stalled: {closed:?}");
}

/// A write that fails for a moment (a busy store) is retried: the ack lands, close is
/// clean, and the message does not come back when its lease ends.
#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried() {
    let backend = Arc::new(TestAcks::failing("q", 2, ErrorKind::Timeout));
    let channel = channel_with(backend.clone(), &["q"]).await;
    let delivery = channel.get("q", false).await.unwrap().unwrap();
    delivery.ack().await.unwrap();
    channel.close().await.unwrap();
    assert_eq!(backend.calls(), 3, "two failures, then written");
    tokio::time::sleep(Duration::from_secs(60)).await;
    let other = VirtualChannel::new(backend.clone(), Some(Duration::from_secs(30)));
    assert!(other.get("q", true).await.unwrap().is_none(), "acked");
}

/// Once the retries are exhausted the channel's close reports the failure, with the
/// backend's error as its source, and the message comes back when its lease ends.
#[tokio::test(start_paused = true)]
async fn exhausted_retries_are_reported_by_close() {
    let backend = Arc::new(TestAcks::failing("q", u32::MAX, ErrorKind::Timeout));
    let channel = channel_with(backend.clone(), &["q"]).await;
    let delivery = channel.get("q", false).await.unwrap().unwrap();
    let started = tokio::time::Instant::now();
    delivery.ack().await.unwrap();
    let err = channel.close().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    let source = std::error::Error::source(&err).expect("the backend's error");
    let source = source.downcast_ref::<Arc<Error>>().expect("typed");
    assert_eq!(source.message(), "store busy");
    // Retried under the policy until its deadline (30 s), then given up.
    assert!(backend.calls() > 10, "retried: {} calls", backend.calls());
    assert!(
        tokio::time::Instant::now() - started >= Duration::from_secs(25),
        "given up only near the policy's deadline"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Restored by a take with a visibility timeout (the visibility rule: the restorer's).
    let other = VirtualChannel::new(backend.clone(), Some(Duration::from_secs(30)));
    let back = other.get("q", true).await.unwrap();
    assert!(back.is_some(), "back when its lease ended");
}

/// An error retrying cannot help is not retried.
#[tokio::test(start_paused = true)]
async fn a_non_recoverable_failure_is_not_retried() {
    let backend = Arc::new(TestAcks::failing("q", u32::MAX, ErrorKind::Broker));
    let channel = channel_with(backend.clone(), &["q"]).await;
    let delivery = channel.get("q", false).await.unwrap().unwrap();
    delivery.ack().await.unwrap();
    let err = channel.close().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Broker);
    assert_eq!(backend.calls(), 1);
}

/// One channel's failed acks are its own: another channel of the connection counts, purges,
/// deletes, consumes idly and closes without an error; the failing channel's close reports
/// them, once.
#[tokio::test(start_paused = true)]
async fn failures_are_reported_to_their_channel_only() {
    let backend = Arc::new(TestAcks::failing("bad", u32::MAX, ErrorKind::Timeout));
    let connection = VirtualConnection::new(backend.clone(), Some(Duration::from_secs(30)));
    let failing = connection.channel().await.unwrap();
    let other = connection.channel().await.unwrap();
    for queue in ["bad", "good", "spare"] {
        other.declare_queue(&Queue::new(queue)).await.unwrap();
        let outgoing = Outgoing::new("", queue, crate::Message::new("m"));
        other.publish(outgoing).await.unwrap();
    }
    let delivery = failing.get("bad", false).await.unwrap().unwrap();
    delivery.ack().await.unwrap();

    let mut stream = other
        .consume(&["good".into()], &ConsumeOptions::default())
        .await
        .unwrap();
    stream.next().await.unwrap().unwrap().ack().await.unwrap();
    // Idle past all the retries of the other channel's acks: the stream does not end.
    let idle = tokio::time::timeout(Duration::from_secs(5), stream.next()).await;
    assert!(idle.is_err(), "an idle consumer keeps waiting: {idle:?}");
    drop(stream);
    let delivery = failing.get("bad", true).await.unwrap();
    assert!(delivery.is_none(), "still leased");
    let ack = failing.get("spare", false).await.unwrap().unwrap();
    ack.ack().await.unwrap();
    assert_eq!(other.queue_size("good").await.unwrap(), 0);
    assert_eq!(other.purge("spare").await.unwrap(), 0);
    other.delete_queue("good").await.unwrap();
    other.close().await.unwrap();

    let err = failing.close().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    connection.close().await.unwrap();
}

/// A settlement that waits for its own ack (the batch is full) fails only if that ack was
/// not written, not for another channel's.
#[tokio::test(start_paused = true)]
async fn a_waiting_settlement_reports_its_own_ack_only() {
    let backend = Arc::new(TestAcks::failing("bad", u32::MAX, ErrorKind::Broker));
    let batch = Arc::new(AckBatch::new(backend.clone()));
    batch.push(1, Arc::from("bad"), Receipt::Id(1));
    let good = batch
        .push_and_flush(Arc::from("good"), Receipt::Id(2))
        .await;
    assert!(good.is_ok(), "{good:?}");
    let bad = batch.push_and_flush(Arc::from("bad"), Receipt::Id(3)).await;
    assert!(bad.is_err(), "its own ack failed");
    assert!(
        batch.flush_owned(1).await.is_err(),
        "channel 1's ack failed"
    );
    assert!(batch.flush_owned(1).await.is_ok(), "reported once");
    assert!(batch.state.lock().failures.is_empty(), "tickets forgotten");
}

/// A writer dropped mid-write (its runtime shut down) frees the batch: the next flush, on
/// another runtime, writes the acks it held instead of waiting forever.
#[test]
fn a_writer_dropped_mid_write_frees_the_batch() {
    let backend = Arc::new(TestAcks::slow(Duration::from_millis(200)));
    let batch = Arc::new(AckBatch::new(backend.clone()));
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    first.block_on(async {
        batch.push(1, Arc::from("q"), Receipt::Id(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
    assert_eq!(backend.calls(), 1, "the writer is inside ack_many");
    drop(first);
    assert!(!batch.is_empty(), "the ack is back in the queue");
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    second.block_on(async {
        let flushed = tokio::time::timeout(Duration::from_secs(5), batch.flush()).await;
        assert!(flushed.is_ok(), "flush stalled");
        batch.push(1, Arc::from("q"), Receipt::Id(2));
        let flushed = tokio::time::timeout(Duration::from_secs(5), batch.flush()).await;
        assert!(flushed.is_ok(), "flush stalled");
    });
    assert_eq!(backend.calls(), 3, "written again, then the next ack");
    assert!(batch.is_empty());
}
