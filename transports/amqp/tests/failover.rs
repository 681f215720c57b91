//! Failover URLs on AMQP against the shared RabbitMQ: a dead first alternative is passed over
//! and the URL in use is the live one; `failover_strategy=shuffle` (an option the transport
//! accepts on its URLs) opens either of two live alternatives; a connection lost mid-use (a
//! loopback proxy in front of the broker, cut) moves to the next alternative.

mod common;

use std::collections::HashSet;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use kombu_core::{Connection, FailoverStrategy, LinkState, Queue, RetryPolicy};

/// The shared broker's URL with `?connect_timeout=2` (and the separator for more options), or
/// `None` when it is down and not required.
fn live_url() -> Option<String> {
    kombu_amqp::register();
    if !common::broker_up("failover") {
        return None;
    }
    let base = common::base_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}connect_timeout=2"))
}

#[tokio::test]
async fn a_dead_first_alternative_is_passed_over_and_the_url_in_use_says_so() {
    let Some(live) = tokio::task::spawn_blocking(live_url).await.ok().flatten() else {
        return;
    };
    let list = format!("amqp://guest:guest@127.0.0.1:1/?connect_timeout=1;{live}");
    let conn = Connection::open(&list).await.expect("the second URL");
    let in_use = conn.url();
    assert_ne!(in_use.port(), Some(1), "{in_use}");
    assert_eq!(in_use.expose(), conn.alternates()[1].expose());
    let q = Queue::new(format!("failover-{}", uuid::Uuid::new_v4().simple()));
    conn.declare_queue(&q).await.expect("declare");
    conn.producer()
        .routing_key(q.name.clone())
        .publish("via the second URL")
        .await
        .expect("publish");
    assert_eq!(conn.queue_size(&q.name).await.expect("size"), 1);
    conn.delete_queue(&q.name).await.expect("delete");
    conn.close().await.expect("close");

    // Under a retry policy: found in the first round, no retry.
    let conn = Connection::builder(&list)
        .retry_policy(RetryPolicy::default().max_retries(Some(1)))
        .on_retry(|event| panic!("no retry expected: {}", event.error))
        .open()
        .await
        .expect("the second URL");
    assert_ne!(conn.url().port(), Some(1));
    conn.close().await.expect("close");

    // Every alternative dead: retried by the policy, then a recoverable error.
    let err = Connection::builder(
        "amqp://127.0.0.1:1/?connect_timeout=1;amqp://127.0.0.1:2/?connect_timeout=1",
    )
    .retry_policy(
        RetryPolicy::default()
            .max_retries(Some(1))
            .interval_start(Duration::from_millis(10)),
    )
    .open()
    .await
    .expect_err("nothing listens");
    assert!(err.is_recoverable(), "{err}");
}

#[tokio::test]
async fn shuffle_opens_either_live_alternative() {
    let Some(live) = tokio::task::spawn_blocking(live_url).await.ok().flatten() else {
        return;
    };
    // The same broker under two names: which one was opened shows in the URL in use.
    let other = live.replacen("127.0.0.1", "localhost", 1);
    assert_ne!(other, live, "KOMBU_TEST_AMQP_URL names 127.0.0.1");
    let list = format!("{live}&failover_strategy=shuffle;{other}");
    let mut hosts = HashSet::new();
    for _ in 0..32 {
        let conn = Connection::open(&list).await.expect("open");
        assert_eq!(conn.failover_strategy(), FailoverStrategy::Shuffle);
        hosts.insert(conn.url().host().unwrap_or_default().to_owned());
        conn.close().await.expect("close");
        if hosts.len() == 2 {
            break;
        }
    }
    // Each open picks the first with probability 1/2: missing one in 32 opens is 2^-31.
    assert_eq!(hosts.len(), 2, "{hosts:?}");
}

/// A loopback TCP proxy to `target` (threads, std only) that can be cut: the listener closes
/// and every proxied connection is shut down, as a broker that went away.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    /// Set: what either side sends is read and dropped (a partition without a reset).
    frozen: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

/// Copies `from` to `to` until either ends, dropping what it reads while `frozen` is set.
fn pipe(mut from: TcpStream, mut to: TcpStream, frozen: Arc<AtomicBool>) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) if !frozen.load(Ordering::SeqCst) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Ok(_) => {}
        }
    }
    let _ = to.shutdown(Shutdown::Both);
}

impl Proxy {
    fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a proxy port");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let frozen = Arc::new(AtomicBool::new(false));
        let streams: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (target, stop2, streams2) = (target.to_owned(), stop.clone(), streams.clone());
        let frozen2 = frozen.clone();
        let accept = std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let pipes = [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ];
                streams2.lock().extend([client, server]);
                for (from, to) in pipes {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let frozen = frozen2.clone();
                        std::thread::spawn(move || pipe(from, to, frozen));
                    }
                }
            }
            // The listener is dropped here: new connections are refused.
        });
        Proxy {
            port,
            stop,
            frozen,
            streams,
            accept: Some(accept),
        }
    }

    /// Stops listening (new connections are refused).
    fn stop_listening(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Once the accept loop ended, no connection is proxied any more.
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }

    /// Stops listening and drops whatever either side sends from now on, without closing
    /// anything: writes succeed, answers never come.
    fn freeze(&mut self) {
        self.stop_listening();
        self.frozen.store(true, Ordering::SeqCst);
    }

    /// Stops listening and shuts every proxied connection down.
    fn cut(&mut self) {
        self.stop_listening();
        for stream in self.streams.lock().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

#[tokio::test]
async fn a_connection_lost_mid_use_moves_to_the_next_alternative() {
    let Some(live) = tokio::task::spawn_blocking(live_url).await.ok().flatten() else {
        return;
    };
    let broker = kombu_core::BrokerUrl::parse(&live).expect("live URL");
    let target = format!(
        "{}:{}",
        broker.host().unwrap_or("127.0.0.1"),
        broker.port().unwrap_or(5672)
    );
    let mut proxy = Proxy::start(&target);
    let via_proxy = live.replacen(
        &format!(":{}/", broker.port().unwrap_or(5672)),
        &format!(":{}/", proxy.port),
        1,
    );
    assert_ne!(via_proxy, live, "the live URL names its port");
    let conn = Connection::open(&format!("{via_proxy};{live}"))
        .await
        .expect("through the proxy");
    assert_eq!(conn.url().port(), Some(proxy.port));
    let q = Queue::new(format!(
        "failover-mid-use-{}",
        uuid::Uuid::new_v4().simple()
    ));
    conn.declare_queue(&q).await.expect("declare");
    let producer = conn.producer().routing_key(q.name.clone());
    producer.publish("before the cut").await.expect("publish");

    // Every link state the connection reports from here on.
    let mut link = conn.link();
    assert_eq!(*link.borrow_and_update(), LinkState::Connected);
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while link.changed().await.is_ok() {
            let state = link.borrow_and_update().clone();
            let done = state == LinkState::Connected;
            seen.push(state);
            if done {
                break;
            }
        }
        seen
    });

    proxy.cut();
    let cut_at = std::time::Instant::now();
    // Recovery (the background watcher or the next use) moves to the second URL; the publish
    // waits for it, under the transport's own recovery and the producer's policy. A publish
    // written to the cut connection before its loss was seen has an unknown outcome: this one
    // may arrive twice, as it opts into.
    producer
        .clone()
        .retry_unknown(true)
        .publish("after the cut")
        .await
        .expect("publish after the cut");
    let moved = conn.url();
    println!(
        "moved from port {} to {} in {:?}",
        proxy.port,
        moved.port().unwrap_or_default(),
        cut_at.elapsed()
    );
    assert_eq!(moved.expose(), conn.alternates()[1].expose(), "{moved}");
    let seen = tokio::time::timeout(Duration::from_secs(30), seen)
        .await
        .expect("the link reports Connected again")
        .expect("the watcher task");
    assert!(
        matches!(seen.first(), Some(LinkState::Reconnecting { .. })),
        "the loss is reported first: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&LinkState::Connected), "{seen:?}");
    // The queue was declared again on the new connection; both messages are there.
    assert_eq!(conn.queue_size(&q.name).await.expect("size"), 2);
    conn.delete_queue(&q.name).await.expect("delete");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn a_publish_whose_confirm_never_came_has_an_unknown_outcome_and_is_not_repeated() {
    let Some(live) = tokio::task::spawn_blocking(live_url).await.ok().flatten() else {
        return;
    };
    let broker = kombu_core::BrokerUrl::parse(&live).expect("live URL");
    let port = broker.port().unwrap_or(5672);
    let target = format!("{}:{port}", broker.host().unwrap_or("127.0.0.1"));
    let mut proxy = Proxy::start(&target);
    // The only URL goes through the proxy; missing heartbeats end the connection within a few
    // seconds, and recovery gives up after one.
    let via_proxy = live.replacen(&format!(":{port}/"), &format!(":{}/", proxy.port), 1)
        + "&heartbeat=1&recover_timeout=1";
    let conn = Connection::open(&via_proxy)
        .await
        .expect("through the proxy");
    let q = Queue::new(format!(
        "failover-unknown-{}",
        uuid::Uuid::new_v4().simple()
    ));
    conn.declare_queue(&q).await.expect("declare");
    let producer = conn.producer().routing_key(q.name.clone());
    producer.publish("confirmed").await.expect("publish");

    proxy.freeze();
    let frozen_at = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), producer.publish("lost confirm"))
        .await
        .expect("the publish ends (guard)")
        .expect_err("no confirm can come");
    println!("failed after {:?}: {err:#}", frozen_at.elapsed());
    assert!(err.is_recoverable(), "{err:#}");
    assert!(err.outcome_unknown(), "the frames were written: {err:#}");
    proxy.cut();

    // The first message is on the broker; whether the second is, nobody knows (here: not, the
    // proxy dropped it). The producer did not publish it again.
    let direct = Connection::open(&live).await.expect("direct");
    assert_eq!(direct.queue_size(&q.name).await.expect("size"), 1);
    direct.delete_queue(&q.name).await.expect("delete");
    direct.close().await.expect("close");
}
