//! Delayed delivery on Redis: the sorted set `_kombu_rs.delayed` and its mover.
//!
//! Python kombu consumers of a queue see none of its delayed messages before they are due,
//! then get them from their lists as any other message, in kombu's priority order; the
//! connection that stored them moves them while it is open, with no kombu-rs consumer; no message
//! is lost when every connection (so every mover) is gone before it is due, and two movers at
//! once deliver each exactly once; a member of a foreign shape is set aside, not dropped.
//!
//! The server is `$KOMBU_REDIS_URL` (default `redis://127.0.0.1:6379/0`); Python is
//! `$KOMBU_PYTHON` (see `python_interop.rs`).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Queue};
use kombu_test_support::interop::next_delivery;
use kombu_test_support::python;
use serde_json::{Value as Json, json};

mod python_support;
use python_support::*;

/// How long the messages of these tests are delayed.
const DELAY: Duration = Duration::from_secs(3);

/// A raw connection to the test server, for looking at the keys themselves.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(server())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

/// Keeps a kombu-rs consumer of `queue` waiting on `conn` (so its mover runs) until aborted.
fn keep_consuming(conn: &Connection, queue: &str) -> tokio::task::JoinHandle<()> {
    let conn = conn.clone();
    let queue = Queue::new(queue);
    tokio::spawn(async move {
        let mut consumer = conn.consumer([queue]).build().await.expect("consumer");
        while let Some(d) = consumer.next().await {
            if let Ok(d) = d {
                panic!("nothing is published to the idle queue: {d:?}");
            }
        }
    })
}

/// Delayed messages stay out of the lists Python kombu reads until due (a `Queue.get` of
/// every list finds only the message published without a delay), then a Python consumer
/// blocked on the queue gets them, with their priorities, moved by the mover of a kombu-rs
/// connection consuming another queue; messages due together are read in kombu's priority
/// order (lower first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sees_delayed_messages_only_when_due_in_priority_order() {
    let Some(python) = python() else { return };
    let space = Space::new("delay-py");
    let conn = open(&space.url("")).await;
    let producer = conn.producer().routing_key("dq").declare(Queue::new("dq"));
    let sent = Instant::now();
    for p in [9u8, 0, 5] {
        producer
            .message(&json!({ "p": p }))
            .priority(p)
            .header("kind", "delayed")
            .delay(DELAY)
            .send()
            .await
            .expect("publish delayed");
    }
    producer
        .publish(&json!({ "p": "now" }))
        .await
        .expect("publish");
    // The mover of this connection runs from now on.
    let idle = keep_consuming(&conn, "other");

    let early = space.python(&python, "drain", &["dq"]);
    assert!(sent.elapsed() < DELAY, "Python took too long to look");
    let early = early["messages"].as_array().expect("messages").clone();
    assert_eq!(early.len(), 1, "only the undelayed message: {early:?}");
    assert_eq!(early[0]["payload"]["p"], "now");
    assert_eq!(conn.queue_size("dq").await.expect("size"), 0);
    let mut redis = raw().await;
    let held: u64 = redis::cmd("ZCARD")
        .arg(format!("{}_kombu_rs.delayed", space.prefix))
        .query_async(&mut redis)
        .await
        .expect("ZCARD");
    assert_eq!(held, 3, "the delayed messages wait in the sorted set");

    // Python blocks on the queue (BRPOP) until the mover pushes them.
    let consume = {
        let (python, prefix) = (python.clone(), space.prefix.clone());
        tokio::task::spawn_blocking(move || {
            Space { prefix }.python(&python, "consume", &["dq", "3"])
        })
    };
    let out = consume.await.expect("Python consumer");
    let waited = sent.elapsed();
    idle.abort();
    assert!(
        waited >= DELAY,
        "Python got them {waited:?} after publishing"
    );
    let got = out["messages"].as_array().expect("messages");
    let mut ps: Vec<u64> = got
        .iter()
        .filter_map(|m| m["payload"]["p"].as_u64())
        .collect();
    ps.sort_unstable();
    assert_eq!(ps, [0, 5, 9], "{out}");
    for m in got {
        assert_eq!(m["properties"]["priority"], m["payload"]["p"], "{m}");
        assert_eq!(m["headers"]["kind"], "delayed", "{m}");
        assert_eq!(m["delivery_info"]["routing_key"], "dq", "{m}");
    }
    let held: u64 = redis::cmd("ZCARD")
        .arg(format!("{}_kombu_rs.delayed", space.prefix))
        .query_async(&mut redis)
        .await
        .expect("ZCARD");
    assert_eq!(held, 0, "every delayed message left the set");

    // Moved together (they fell due while nobody took), they are read in kombu's priority
    // order, from their priority lists.
    let idle = keep_consuming(&conn, "other");
    for p in [9u8, 0, 5] {
        producer
            .message(&json!({ "p": p }))
            .priority(p)
            .delay(Duration::from_millis(300))
            .send()
            .await
            .expect("publish delayed");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held: u64 = redis::cmd("ZCARD")
            .arg(format!("{}_kombu_rs.delayed", space.prefix))
            .query_async(&mut redis)
            .await
            .expect("ZCARD");
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} delayed messages never moved"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    idle.abort();
    let out = {
        let (python, prefix) = (python.clone(), space.prefix.clone());
        tokio::task::spawn_blocking(move || Space { prefix }.python(&python, "drain", &["dq"]))
            .await
            .expect("Python drain")
    };
    let order: Vec<&Json> = out["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| &m["payload"]["p"])
        .collect();
    assert_eq!(order, [&json!(0), &json!(5), &json!(9)], "{out}");
    space.clean().await;
}

/// A connection that stored delayed messages moves them when due by itself while it stays
/// open: a Python consumer, with no kombu-rs consumer anywhere, gets them on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_publisher_moves_its_delayed_messages_for_python_consumers() {
    let Some(python) = python() else { return };
    let space = Space::new("delay-pub");
    let conn = open(&space.url("")).await;
    let producer = conn.producer().routing_key("pq").declare(Queue::new("pq"));
    let sent = Instant::now();
    for i in 0..3 {
        producer
            .message(&json!({ "i": i }))
            .delay(Duration::from_millis(1500))
            .send()
            .await
            .expect("publish delayed");
    }
    let out = {
        let (python, prefix) = (python.clone(), space.prefix.clone());
        tokio::task::spawn_blocking(move || {
            Space { prefix }.python(&python, "consume", &["pq", "3"])
        })
        .await
        .expect("Python consumer")
    };
    let waited = sent.elapsed();
    // Not before they were due, and on time (Python's consumer polls every second at most).
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(1500 + 5_000),
        "Python got them {waited:?} after publishing"
    );
    let got = out["messages"].as_array().expect("messages");
    let mut is: Vec<u64> = got
        .iter()
        .filter_map(|m| m["payload"]["i"].as_u64())
        .collect();
    is.sort_unstable();
    assert_eq!(is, [0, 1, 2], "{out}");
    conn.close().await.expect("close");
    space.clean().await;
}

/// Messages stored while no consumer runs, and every connection closed before they are due,
/// wait in Redis; two connections consuming later (two movers at once) deliver each exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_outlive_their_movers_and_arrive_exactly_once() {
    const N: usize = 300;
    let space = Space::new("delay-movers");
    let url = space.url("");
    let first = {
        let conn = open(&url).await;
        conn.declare_queue(&Queue::new("mq"))
            .await
            .expect("declare");
        // A mover runs on this connection while it lives.
        let idle = keep_consuming(&conn, "other");
        let producer = conn.producer().routing_key("mq");
        let first = Instant::now();
        for i in 0..N {
            producer
                .message(&json!({ "i": i }))
                .delay(Duration::from_millis(2000 + (i % 10) as u64 * 50))
                .send()
                .await
                .expect("publish delayed");
        }
        idle.abort();
        let _ = idle.await;
        conn.close().await.expect("close");
        assert!(
            first.elapsed() < Duration::from_millis(1500),
            "publishing took {:?}: messages may have fallen due meanwhile",
            first.elapsed()
        );
        first
    };
    let key = format!("{}_kombu_rs.delayed", space.prefix);
    let mut redis = raw().await;
    let held: usize = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("ZCARD");
    assert_eq!(held, N, "nothing was due while the first connection lived");
    // Every message falls due with no kombu-rs connection left.
    tokio::time::sleep_until((first + Duration::from_millis(2600)).into()).await;
    let held: usize = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("ZCARD");
    assert_eq!(held, N, "no mover, so none moved");

    let (a, b) = (open(&url).await, open(&url).await);
    let q = Queue::new("mq");
    let mut ca = a
        .consumer([q.clone()])
        .prefetch(10)
        .build()
        .await
        .expect("a");
    let mut cb = b.consumer([q]).prefetch(10).build().await.expect("b");
    let mut seen = HashSet::new();
    let mut received = 0;
    while received < N {
        let d = tokio::select! {
            d = next_delivery(&mut ca) => d,
            d = next_delivery(&mut cb) => d,
        };
        let i = d.decode::<Json>().expect("decode")["i"]
            .as_u64()
            .expect("i");
        assert!(seen.insert(i), "message {i} delivered twice");
        received += 1;
        d.ack().await.expect("ack");
    }
    assert_eq!(
        nothing_within(&mut ca, Duration::from_millis(300)).await,
        None
    );
    assert_eq!(
        nothing_within(&mut cb, Duration::from_millis(300)).await,
        None
    );
    let held: usize = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("ZCARD");
    assert_eq!(held, 0);
    assert_eq!(a.queue_size("mq").await.expect("size"), 0);
    space.clean().await;
}

/// A member of the delayed set of a shape kombu-rs does not write is moved, as it was, to
/// `_kombu_rs.delayed.unreadable` when due, and the well-formed members around it arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_members_are_set_aside_when_due() {
    let space = Space::new("delay-foreign");
    let conn = open(&space.url("")).await;
    conn.declare_queue(&Queue::new("fq"))
        .await
        .expect("declare");
    let mut redis = raw().await;
    let key = format!("{}_kombu_rs.delayed", space.prefix);
    let foreign = ["garbage", "0123456789abcdef0123456789abcdef:x:3:abc{}"];
    for m in foreign {
        let _: i64 = redis::cmd("ZADD")
            .arg(&key)
            .arg(0)
            .arg(m)
            .query_async(&mut redis)
            .await
            .expect("ZADD");
    }
    conn.producer()
        .routing_key("fq")
        .message(&"fine")
        .delay(Duration::from_millis(200))
        .send()
        .await
        .expect("publish delayed");
    let mut consumer = conn
        .consumer([Queue::new("fq")])
        .build()
        .await
        .expect("consumer");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.decode::<String>().expect("decode"), "fine");
    d.ack().await.expect("ack");
    let mut aside: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{}_kombu_rs.delayed.unreadable", space.prefix))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await
        .expect("LRANGE");
    aside.sort();
    let mut expected: Vec<String> = foreign.iter().map(|m| (*m).to_owned()).collect();
    expected.sort();
    assert_eq!(aside, expected);
    let held: usize = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .expect("ZCARD");
    assert_eq!(held, 0);
    space.clean().await;
}
