//! `kombu::rpc` on every transport (memory, SQLite, Redis, AMQP with direct reply-to,
//! MongoDB): calls and replies, handler errors, 50 concurrent calls each getting its own
//! reply, a timed-out call whose late reply is counted and given to nobody, a server replying
//! after its client is gone, and a request without `reply_to`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use kombu::rpc::{DIRECT_REPLY_TO, RpcClient, RpcServer};
use kombu::{Connection, Error, ErrorKind, Exchange, Queue};
use kombu_test_support::brokers;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(10);

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Op {
    Double(i64),
    Fail(String),
    /// Waits for a permit of the test's gate before answering.
    Slow(i64),
}

/// What holds the slow requests: a semaphore the test adds permits to, and a count of the
/// slow requests that reached the handler.
struct Gate {
    permits: Semaphore,
    entered: AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            permits: Semaphore::new(0),
            entered: AtomicUsize::new(0),
        }
    }
}

impl Gate {
    fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

/// The server's handler: doubles, fails on request, or waits for the gate.
fn handler(
    gate: Arc<Gate>,
) -> impl Fn(Op) -> std::pin::Pin<Box<dyn Future<Output = kombu::Result<i64>> + Send>> + Send + 'static
{
    move |op| {
        let gate = gate.clone();
        Box::pin(async move {
            match op {
                Op::Double(n) => Ok(n * 2),
                Op::Fail(why) => Err(Error::new(ErrorKind::Config, why)),
                Op::Slow(n) => {
                    gate.entered.fetch_add(1, Ordering::SeqCst);
                    let permit = gate.permits.acquire().await;
                    drop(permit);
                    Ok(n)
                }
            }
        })
    }
}

/// Waits until `check` holds (polling), failing after `WAIT`.
async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_get_their_replies_on_every_transport() {
    for broker in brokers::every("rpc-call") {
        let t = broker.transport;
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("rpc");
        // Bound to an exchange of its own too: calls through either exchange reach it.
        let exchange = Exchange::direct(unique("rpc-x"));
        let bound = Queue::new(queue.as_str())
            .exchange(exchange.clone())
            .routing_key("pricing");
        let server = RpcServer::builder(&conn, bound)
            .concurrency(8)
            .build()
            .await
            .expect(t);
        let gate = Arc::new(Gate::default());
        let running = server.spawn(handler(gate));
        let client = RpcClient::new(&conn).await.expect(t);
        if t == "amqp" {
            assert_eq!(client.reply_to(), DIRECT_REPLY_TO, "{t}");
        } else {
            assert!(client.reply_to().starts_with("reply."), "{t}");
        }

        let four: i64 = client.call(&queue, &Op::Double(2), WAIT).await.expect(t);
        assert_eq!(four, 4, "{t}");

        // A handler error comes back as an error, not as a timeout.
        let failed = client
            .call::<_, i64>(&queue, &Op::Fail("no such account".into()), WAIT)
            .await
            .expect_err(t);
        assert_eq!(failed.kind(), ErrorKind::Broker, "{t}: {failed:#}");
        assert!(
            failed.message().contains("no such account"),
            "{t}: {failed:#}"
        );

        // A request that does not decode into the server's type: an error reply, and the
        // request is moved aside.
        let refused = client
            .call::<_, i64>(&queue, "not an op", WAIT)
            .await
            .expect_err(t);
        assert_eq!(refused.kind(), ErrorKind::Broker, "{t}: {refused:#}");
        let dlq = kombu::dead_letter::dlq_name(&queue);
        assert_eq!(conn.queue_size(&dlq).await.expect(t), 1, "{t}");

        // 50 calls at once, each with its own reply.
        let requests: Vec<Op> = (0..50).map(Op::Double).collect();
        let calls = requests
            .iter()
            .map(|op| client.call::<_, i64>(&queue, op, WAIT));
        let replies = join_all(calls).await;
        for (n, reply) in replies.into_iter().enumerate() {
            assert_eq!(reply.expect(t), 2 * n as i64, "{t}: call {n}");
        }
        assert_eq!(client.late_replies(), 0, "{t}");
        // Counted after each reply is out, so maybe a moment after the caller has it.
        eventually("53 replies counted", || running.served() == 53).await;

        let through = RpcClient::builder(&conn)
            .exchange(exchange.clone())
            .build()
            .await
            .expect(t);
        let ten: i64 = through
            .call("pricing", &Op::Double(5), WAIT)
            .await
            .expect(t);
        assert_eq!(ten, 10, "{t}");
        through.close().await.expect(t);

        let reply_queue = client.reply_to().to_owned();
        client.close().await.expect(t);
        if t != "amqp" {
            let left = conn.queue_exists(&reply_queue).await.expect(t);
            assert!(!left, "{t}: the reply queue is deleted on close");
        }
        running.stop().await.expect(t);
        conn.delete_queue(&queue).await.expect(t);
        conn.delete_queue(&dlq).await.expect(t);
        conn.delete_exchange(&exchange.name).await.expect(t);
        conn.close().await.expect(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_reply_is_counted_and_given_to_nobody_on_every_transport() {
    for broker in brokers::every("rpc-late") {
        let t = broker.transport;
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("rpc-late");
        let server = RpcServer::builder(&conn, queue.as_str())
            .concurrency(4)
            .build()
            .await
            .expect(t);
        let gate = Arc::new(Gate::default());
        let running = server.spawn(handler(gate.clone()));
        let client = RpcClient::new(&conn).await.expect(t);

        let timed_out = client
            .call::<_, i64>(&queue, &Op::Slow(7), Duration::from_millis(200))
            .await
            .expect_err(t);
        assert_eq!(timed_out.kind(), ErrorKind::Timeout, "{t}: {timed_out:#}");
        assert!(!timed_out.is_recoverable(), "{t}");

        // A call in flight when the late reply arrives gets its own reply, not the late one.
        let waiting = client.call::<_, i64>(&queue, &Op::Slow(8), WAIT);
        let release = async {
            // Both slow requests are in the handler (the server runs four at once).
            eventually("both requests taken", || gate.entered() == 2).await;
            gate.permits.add_permits(2);
        };
        let (reply, ()) = tokio::join!(waiting, release);
        assert_eq!(reply.expect(t), 8, "{t}");
        eventually("the late reply counted", || client.late_replies() == 1).await;
        let fresh: i64 = client.call(&queue, &Op::Double(21), WAIT).await.expect(t);
        assert_eq!(fresh, 42, "{t}");
        assert_eq!(client.late_replies(), 1, "{t}");

        client.close().await.expect(t);
        running.stop().await.expect(t);
        conn.delete_queue(&queue).await.expect(t);
        conn.close().await.expect(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_after_the_client_is_gone_wedges_nothing_on_every_transport() {
    for broker in brokers::every("rpc-gone") {
        let t = broker.transport;
        let conn = Connection::open(&broker.url).await.expect("open");
        let queue = unique("rpc-gone");
        let server = RpcServer::new(&conn, queue.as_str()).await.expect(t);
        let gate = Arc::new(Gate::default());
        let running = server.spawn(handler(gate.clone()));

        // The client times out and goes away; the server then replies to nobody.
        let client = RpcClient::new(&conn).await.expect(t);
        let reply_queue = client.reply_to().to_owned();
        let gone = client
            .call::<_, i64>(&queue, &Op::Slow(1), Duration::from_millis(100))
            .await
            .expect_err(t);
        assert_eq!(gone.kind(), ErrorKind::Timeout, "{t}");
        client.close().await.expect(t);
        gate.permits.add_permits(1);
        eventually("the orphan reply sent", || running.served() == 1).await;

        // A request without reply_to: handled and acked, no reply.
        conn.producer()
            .routing_key(queue.as_str())
            .publish(&Op::Double(5))
            .await
            .expect(t);

        // The server goes on serving a new client.
        let client = RpcClient::new(&conn).await.expect(t);
        let six: i64 = client.call(&queue, &Op::Double(3), WAIT).await.expect(t);
        assert_eq!(six, 6, "{t}");
        // The server is sequential: the request without reply_to was settled before.
        assert_eq!(conn.queue_size(&queue).await.expect(t), 0, "{t}");
        eventually("2 replies counted", || running.served() == 2).await;
        client.close().await.expect(t);
        running.stop().await.expect(t);
        conn.delete_queue(&queue).await.expect(t);
        if reply_queue != DIRECT_REPLY_TO {
            // On the virtual transports the orphan reply re-created the deleted reply queue's
            // key, as kombu's default exchange does; delete it.
            conn.delete_queue(&reply_queue).await.expect(t);
        }
        conn.close().await.expect(t);
    }
}

/// On RabbitMQ a client may use a reply queue of its own instead of direct reply-to; direct
/// reply-to is refused elsewhere.
#[tokio::test]
async fn a_reply_queue_of_its_own_on_rabbitmq_and_no_direct_reply_to_elsewhere() {
    let memory = Connection::open("memory://rpc-no-direct")
        .await
        .expect("open");
    let refused = RpcClient::builder(&memory)
        .direct_reply_to(true)
        .build()
        .await
        .expect_err("memory has no direct reply-to");
    assert_eq!(refused.kind(), ErrorKind::Unsupported, "{refused:#}");

    let Some(broker) = brokers::broker("amqp", "rpc-own-reply-queue") else {
        return;
    };
    let conn = Connection::open(&broker.url).await.expect("open");
    let queue = unique("rpc-own");
    let running = RpcServer::new(&conn, queue.as_str())
        .await
        .expect("server")
        .spawn(handler(Arc::new(Gate::default())));
    let client = RpcClient::builder(&conn)
        .direct_reply_to(false)
        .build()
        .await
        .expect("client");
    assert!(
        client.reply_to().starts_with("reply."),
        "{}",
        client.reply_to()
    );
    let four: i64 = client
        .call(&queue, &Op::Double(2), WAIT)
        .await
        .expect("call");
    assert_eq!(four, 4);
    let reply_queue = client.reply_to().to_owned();
    client.close().await.expect("close");
    assert!(
        !conn.queue_exists(&reply_queue).await.expect("exists"),
        "deleted on close"
    );
    running.stop().await.expect("stop");
    conn.delete_queue(&queue).await.expect("delete");
    conn.close().await.expect("close");
}
