//! Regression tests for faults found in review: each failed before its fix. Those that hold
//! for every transport are in the conformance suite (`dropped_delivery_requeued`,
//! `lease_end_frees_prefetch_slot`, `polling_after_end`); these are about the memory
//! transport's URL options and buffering, and the virtual channel over a faulty backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{BrokerUrl, Connection, Queue};

fn uniq(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("regression-{tag}-{}", N.fetch_add(1, Ordering::Relaxed))
}

#[test]
fn passwords_with_reserved_characters_never_show() {
    for raw in [
        "redis://:pa/ss@host:6379/0",
        "amqp://user:se?cret@host//",
        "amqp://user:se#cret@host//",
    ] {
        let secret = raw.split_once(':').unwrap().1[2..]
            .split('@')
            .next()
            .unwrap()
            .split_once(':')
            .map_or_else(
                || raw[raw.find("://").unwrap() + 4..raw.find('@').unwrap()].to_owned(),
                |(_, p)| p.to_owned(),
            );
        match BrokerUrl::parse(raw) {
            Ok(u) => {
                let shown = format!("{u} {u:?}");
                assert!(!shown.contains(&secret), "leaked {secret:?}: {shown}");
            }
            Err(e) => assert!(!e.to_string().contains(&secret), "leaked {secret:?}: {e}"),
        }
    }
}

#[tokio::test]
async fn huge_visibility_timeout_in_url_does_not_panic() {
    kombu_core::transport::memory::register();
    let r = tokio::spawn(async {
        Connection::open("memory://x?visibility_timeout=1e30")
            .await
            .map(|_| ())
    })
    .await;
    assert!(r.is_ok(), "panicked: {r:?}");
}

#[tokio::test]
async fn large_visibility_timeout_in_url_does_not_panic_on_consume() {
    kombu_core::transport::memory::register();
    let r = tokio::spawn(async {
        let name = uniq("vt");
        let conn = Connection::open(&format!("memory://{name}?visibility_timeout=1e15"))
            .await
            .unwrap();
        let mut c = conn.consumer([Queue::new("q")]).build().await.unwrap();
        conn.producer().routing_key("q").publish(&1).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.next()).await;
    })
    .await;
    assert!(r.is_ok(), "panicked: {r:?}");
}

#[tokio::test]
async fn huge_visibility_timeout_1e19_consume() {
    kombu_core::transport::memory::register();
    let r = tokio::spawn(async {
        let name = uniq("vt19");
        let conn = Connection::open(&format!("memory://{name}?visibility_timeout=1e19"))
            .await
            .unwrap();
        let mut c = conn.consumer([Queue::new("q")]).build().await.unwrap();
        conn.producer().routing_key("q").publish(&1).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(2), c.next()).await;
    })
    .await;
    assert!(r.is_ok(), "panicked: {r:?}");
}

#[tokio::test]
async fn no_ack_consumer_dropped_after_one_keeps_the_rest() {
    kombu_core::transport::memory::register();
    let conn = Connection::open(&format!("memory://{}", uniq("noack")))
        .await
        .unwrap();
    conn.declare_queue(&Queue::new("q")).await.unwrap();
    for i in 0..10 {
        conn.producer().routing_key("q").publish(&i).await.unwrap();
    }
    let mut c = conn
        .consumer([Queue::new("q")])
        .no_ack(true)
        .prefetch(1)
        .build()
        .await
        .unwrap();
    let _d = c.next().await.unwrap().unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        conn.queue_size("q").await.unwrap(),
        9,
        "buffered no-ack messages lost"
    );
}

#[tokio::test]
async fn closing_a_no_ack_consumer_keeps_what_it_had_not_handed_out() {
    kombu_core::transport::memory::register();
    let conn = Connection::open(&format!("memory://{}", uniq("noack2")))
        .await
        .unwrap();
    conn.declare_queue(&Queue::new("q")).await.unwrap();
    for i in 0..1000 {
        conn.producer().routing_key("q").publish(&i).await.unwrap();
    }
    let mut c = conn
        .consumer([Queue::new("q")])
        .no_ack(true)
        .prefetch(1)
        .build()
        .await
        .unwrap();
    let _d = c.next().await.unwrap().unwrap();
    c.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(conn.queue_size("q").await.unwrap(), 999);
}

#[tokio::test]
async fn dead_letter_failure_during_fetch_strands_nothing() {
    use kombu_core::transport::virtual_transport::VirtualChannel;
    use kombu_core::transport::{Channel, ConsumeOptions, Outgoing};
    use kombu_core::{Exchange, Message};
    let backend = Arc::new(flaky::Flaky::new());
    let ch = VirtualChannel::new(backend.clone(), None);
    ch.declare_queue(&Queue::new("dead").exchange(Exchange::fanout("dlx")))
        .await
        .unwrap();
    ch.declare_queue(&Queue::new("q").dead_letter_exchange("dlx"))
        .await
        .unwrap();
    let mut m1 = Message::new("expiring");
    m1.properties.expiration = Some(Duration::from_millis(1));
    ch.publish(Outgoing::new("", "q", m1)).await.unwrap();
    ch.publish(Outgoing::new("", "q", Message::new("live")))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    backend.fail_put.store(true, Ordering::SeqCst);
    let mut s = ch
        .consume(&["q".into()], &ConsumeOptions::default())
        .await
        .unwrap();
    let first = s.next().await.unwrap();
    assert!(first.is_err());
    backend.fail_put.store(false, Ordering::SeqCst);
    drop(s);
    ch.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let q = backend.size("q").await.unwrap();
    assert_eq!(
        q, 1,
        "the live message was leased by get_many but never registered: stranded"
    );
}

#[tokio::test]
async fn reject_while_the_broker_refuses_puts_loses_nothing() {
    use kombu_core::transport::virtual_transport::VirtualChannel;
    use kombu_core::transport::{Channel, ConsumeOptions, Outgoing};
    use kombu_core::{Exchange, Message};
    let backend = Arc::new(flaky::Flaky::new());
    let ch = VirtualChannel::new(backend.clone(), None);
    ch.declare_queue(&Queue::new("dead").exchange(Exchange::fanout("dlx")))
        .await
        .unwrap();
    ch.declare_queue(&Queue::new("q").dead_letter_exchange("dlx"))
        .await
        .unwrap();
    ch.publish(Outgoing::new("", "q", Message::new("m")))
        .await
        .unwrap();
    let mut s = ch
        .consume(&["q".into()], &ConsumeOptions::default())
        .await
        .unwrap();
    let d = s.next().await.unwrap().unwrap();
    backend.fail_put.store(true, Ordering::SeqCst);
    let err = d.reject().await.unwrap_err();
    assert!(
        format!("{:#}", err.error).contains("retry"),
        "{err}: {:#}",
        err.error
    );
    backend.fail_put.store(false, Ordering::SeqCst);
    // The delivery still holds the message; retrying dead-letters it.
    err.into_delivery().reject().await.unwrap();
    drop(s);
    ch.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (q, dead) = (
        backend.size("q").await.unwrap(),
        backend.size("dead").await.unwrap(),
    );
    assert_eq!((q, dead), (0, 1), "message lost or duplicated");
}

#[tokio::test(start_paused = true)]
async fn idle_consumer_on_a_remote_backend_does_not_spin() {
    use kombu_core::transport::virtual_transport::VirtualChannel;
    use kombu_core::transport::{Channel, ConsumeOptions};
    let backend = Arc::new(flaky::Flaky::new());
    let ch = VirtualChannel::new(backend.clone(), None);
    ch.declare_queue(&Queue::new("q")).await.unwrap();
    let mut s = ch
        .consume(&["q".into()], &ConsumeOptions::default())
        .await
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_millis(3500), s.next()).await;
    let n = backend.gets.load(Ordering::SeqCst);
    assert!(n <= 6, "idle consumer made {n} get_many calls in 3.5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_exactly_once() {
    kombu_core::transport::memory::register();
    let name = uniq("stress");
    let conn = Connection::open(&format!("memory://{name}")).await.unwrap();
    conn.declare_queue(&Queue::new("q")).await.unwrap();
    conn.declare_queue(&Queue::new("r")).await.unwrap();
    const N: usize = 20000;
    let seen = Arc::new((0..2 * N).map(|_| AtomicUsize::new(0)).collect::<Vec<_>>());
    let total = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for k in 0..6 {
        let conn = conn.clone();
        let seen = seen.clone();
        let total = total.clone();
        handles.push(tokio::spawn(async move {
            let queues = if k % 2 == 0 {
                vec![Queue::new("q"), Queue::new("r")]
            } else {
                vec![Queue::new("q")]
            };
            let mut c = conn
                .consumer(queues)
                .prefetch((k as u16) % 3)
                .build()
                .await
                .unwrap();
            loop {
                match tokio::time::timeout(Duration::from_secs(2), c.next()).await {
                    Ok(Some(Ok(d))) => {
                        let i: usize = d.decode().unwrap();
                        seen[i].fetch_add(1, Ordering::Relaxed);
                        if total.fetch_add(1, Ordering::Relaxed) + 1 == 2 * N {
                            d.ack().await.unwrap();
                            return;
                        }
                        if i.is_multiple_of(7) && !d.redelivered() {
                            seen[i].fetch_sub(1, Ordering::Relaxed);
                            total.fetch_sub(1, Ordering::Relaxed);
                            d.requeue().await.unwrap();
                        } else {
                            d.ack().await.unwrap();
                        }
                    }
                    Ok(other) => panic!("{other:?}"),
                    Err(_) => return,
                }
            }
        }));
    }
    for p in 0..4 {
        let conn = conn.clone();
        handles.push(tokio::spawn(async move {
            let prod = conn.producer();
            for i in (p..2 * N).step_by(4) {
                let q = if i < N { "q" } else { "r" };
                prod.message(&i).routing_key(q).send().await.unwrap();
                if i % 1000 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    let start = std::time::Instant::now();
    for h in handles {
        h.await.unwrap();
    }
    let missing: Vec<usize> = (0..2 * N)
        .filter(|&i| seen[i].load(Ordering::Relaxed) != 1)
        .collect();
    assert!(
        missing.is_empty(),
        "not exactly once: {} e.g. {:?}; took {:?}",
        missing.len(),
        &missing[..missing.len().min(10)],
        start.elapsed()
    );
}

fn to(queue: &str, mandatory: bool) -> kombu_core::transport::Outgoing {
    use kombu_core::Message;
    use kombu_core::transport::Outgoing;
    Outgoing::new("", queue.to_owned(), Message::new(&b"x"[..])).mandatory(mandatory)
}

/// The virtual channel asks its backend whether a queue exists as rarely as it can: once per
/// distinct queue of a mandatory batch to the default exchange (not once per message), never
/// for a publish without `mandatory`, and for `size`/`purge` only when they find nothing.
#[tokio::test]
async fn a_mandatory_batch_asks_once_per_distinct_queue() {
    use kombu_core::ErrorKind;
    use kombu_core::transport::virtual_transport::VirtualChannel;
    use kombu_core::transport::{Channel, Outgoing};
    let backend = Arc::new(flaky::Flaky::new());
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

mod flaky {
    use super::*;
    use async_trait::async_trait;
    use kombu_core::transport::memory::MemoryBackend;
    use kombu_core::transport::virtual_transport::*;
    use kombu_core::{Error, Exchange, Result};
    use std::sync::atomic::AtomicBool;

    #[derive(Debug)]
    pub struct Flaky {
        pub inner: MemoryBackend,
        pub fail_put: AtomicBool,
        pub gets: AtomicUsize,
        /// `queue_exists` calls.
        pub exists_calls: AtomicUsize,
    }

    impl Flaky {
        /// The memory backend, counting, failing nothing yet.
        pub fn new() -> Self {
            Flaky {
                inner: MemoryBackend::new(),
                fail_put: false.into(),
                gets: 0.into(),
                exists_calls: 0.into(),
            }
        }

        /// Ready messages of a queue (0 if it does not exist).
        pub async fn size(&self, q: &str) -> Result<u64> {
            Ok(self.inner.queue(q, None).await?.map_or(0, |s| s.messages))
        }
    }

    /// The memory backend's methods, counted or failing on demand.
    #[async_trait]
    impl Backend for Flaky {
        fn capabilities(&self) -> BackendCapabilities {
            let mut c = self.inner.capabilities();
            // A remote store: no idle spinning.
            c.idle_spins = 0;
            c
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
            if self.fail_put.load(Ordering::SeqCst) {
                return Err(Error::new(kombu_core::ErrorKind::Connection, "broker down"));
            }
            self.inner.put(q, e).await
        }
        async fn put_many(&self, i: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
            if self.fail_put.load(Ordering::SeqCst) {
                return Err(Error::new(kombu_core::ErrorKind::Connection, "broker down"));
            }
            self.inner.put_many(i).await
        }
        async fn get_many(&self, q: &str, m: usize, t: TakeMode) -> Result<Fetched> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get_many(q, m, t).await
        }
        async fn ack_many(&self, q: &str, r: &[Receipt]) -> Result<()> {
            self.inner.ack_many(q, r).await
        }
        async fn reject(&self, q: &str, r: &Receipt, requeue: bool) -> Result<Option<DeadLetter>> {
            self.inner.reject(q, r, requeue).await
        }
        async fn extend_lease(&self, q: &str, r: &Receipt) -> Result<()> {
            self.inner.extend_lease(q, r).await
        }
        async fn purge(&self, q: &str) -> Result<u64> {
            self.inner.purge(q).await
        }
        async fn wait(&self, qs: &[String], t: Duration) -> Result<()> {
            self.inner.wait(qs, t).await
        }
    }
}
