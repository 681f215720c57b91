//! Settlements against RabbitMQ: acks coalesced into `basic.ack` with `multiple` must settle
//! exactly what the application acked, never a delivery it rejected, requeued or still holds,
//! and must reach the broker without the consumer asking for more, and before the connection
//! closes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Consumer, Delivery, Exchange, Queue};

fn url() -> Option<(String, Option<String>)> {
    static URL: OnceLock<Option<(String, Option<String>)>> = OnceLock::new();
    URL.get_or_init(|| {
        kombu_amqp::register();
        if !common::broker_up("settle") {
            return None;
        }
        let vhost = common::fresh_vhost("kombu-rs-settle");
        Some((common::url_on(vhost.as_deref()), vhost))
    })
    .clone()
}

async fn setup() -> Option<(String, Option<String>)> {
    tokio::task::spawn_blocking(url).await.ok().flatten()
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// A connection (on the test's vhost, whose name `rabbitmqctl` needs) and a fresh queue
/// `name-<uuid>` holding ten messages; `None` to skip.
async fn ten_messages(name: &str) -> Option<(String, String, Connection, Queue)> {
    let (url, vhost) = setup().await?;
    let Some(vhost) = vhost else {
        assert!(
            !common::required(),
            "rabbitmqctl is needed to read the broker's counts"
        );
        return None;
    };
    let conn = Connection::open(&url).await.expect("open");
    let q = Queue::new(unique(name));
    conn.declare_queue(&q).await.expect("declare");
    let ids: Vec<u32> = (0..10).collect();
    conn.producer()
        .routing_key(q.name.clone())
        .publish_batch(ids.iter())
        .await
        .expect("publish");
    Some((url, vhost, conn, q))
}

/// Ready and unacknowledged messages of `queue` as the broker counts them (`rabbitmqctl`).
fn broker_counts(vhost: &str, queue: &str) -> Option<(u64, u64)> {
    let out = Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "-p",
            vhost,
            "name",
            "messages_ready",
            "messages_unacknowledged",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == queue).then_some(())?;
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
}

/// A consumer of `queue` with a prefetch window of 100.
async fn consumer_of(conn: &Connection, queue: &Queue) -> Consumer {
    conn.consumer([queue.clone()])
        .prefetch(100)
        .build()
        .await
        .expect("consume")
}

/// The consumer's next delivery, within 10 s.
async fn next(consumer: &mut Consumer, what: &str) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .expect("stream open")
        .expect("a good delivery")
}

/// Waits (bounded) until the broker counts `want` for `queue`; what it counted last.
async fn await_counts(vhost: &str, queue: &str, want: (u64, u64)) -> Option<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (v, q) = (vhost.to_owned(), queue.to_owned());
        let got = tokio::task::spawn_blocking(move || broker_counts(&v, &q))
            .await
            .ok()
            .flatten();
        if got == Some(want) || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn mixed_settlements_keep_their_outcomes() {
    let Some((url, _)) = setup().await else {
        return;
    };
    let conn = Connection::open(&url).await.expect("open");
    let dlx = Exchange::direct(unique("settle-dlx").as_str());
    let dead = Queue::new(unique("settle-dead"))
        .exchange(dlx.clone())
        .routing_key("dead");
    conn.declare_queue(&dead).await.expect("declare dead");
    let q = Queue::new(unique("settle"))
        .dead_letter_exchange(dlx.name.as_str())
        .dead_letter_routing_key("dead");
    conn.declare_queue(&q).await.expect("declare");
    const N: u32 = 600;
    let ids: Vec<u32> = (0..N).collect();
    let producer = conn.producer().routing_key(q.name.clone());
    for chunk in ids.chunks(100) {
        producer.publish_batch(chunk.iter()).await.expect("publish");
    }

    // Of every ten: 3 rejected, 5 held until the end (60, within the prefetch window), 7
    // requeued once, the rest acked at once.
    let mut consumer = consumer_of(&conn, &q).await;
    let mut deliveries: BTreeMap<u32, u32> = BTreeMap::new();
    let mut held = Vec::new();
    let mut acked = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() + held.len() < (N as usize) * 9 / 10 {
        assert!(Instant::now() < deadline, "stalled after {deliveries:?}");
        let d = next(&mut consumer, "a delivery within 10 s").await;
        let id: u32 = d.decode().expect("decode");
        *deliveries.entry(id).or_default() += 1;
        match id % 10 {
            3 => d.reject().await.expect("reject"),
            5 => held.push((id, d)),
            7 if !d.redelivered() => d.requeue().await.expect("requeue"),
            _ => {
                d.ack().await.expect("ack");
                assert!(acked.insert(id), "{id} acked twice");
            }
        }
    }
    for (id, d) in held {
        d.ack().await.expect("ack held");
        acked.insert(id);
    }

    // Every message came once, the requeued ones twice; the rejected ones went to the
    // dead-letter queue, and nothing is left.
    for id in 0..N {
        let want = if id % 10 == 7 { 2 } else { 1 };
        assert_eq!(deliveries.get(&id), Some(&want), "deliveries of {id}");
    }
    let mut dead_consumer = consumer_of(&conn, &dead).await;
    let mut dead_ids = BTreeSet::new();
    while dead_ids.len() < (N / 10) as usize {
        let d = next(&mut dead_consumer, "a dead letter within 10 s").await;
        dead_ids.insert(d.decode::<u32>().expect("decode"));
        d.ack().await.expect("ack");
    }
    let want: BTreeSet<u32> = (0..N).filter(|id| id % 10 == 3).collect();
    assert_eq!(
        dead_ids, want,
        "exactly the rejected ones were dead-lettered"
    );
    consumer.close().await.expect("close");
    dead_consumer.close().await.expect("close dead");
    assert_eq!(conn.queue_size(&q.name).await.expect("size"), 0);
    assert_eq!(conn.queue_size(&dead.name).await.expect("size"), 0);
    conn.delete_queue(&q.name).await.expect("delete");
    conn.delete_queue(&dead.name).await.expect("delete dead");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn acks_reach_the_broker_without_more_polling() {
    let Some((_, vhost, conn, q)) = ten_messages("linger").await else {
        return;
    };
    let mut consumer = consumer_of(&conn, &q).await;
    let mut held = Vec::new();
    for n in 0..10 {
        let d = next(&mut consumer, "a delivery within 10 s").await;
        if n % 3 == 0 {
            held.push(d);
        } else {
            d.ack().await.expect("ack");
        }
    }
    // Six acked and four held: too few acks to fill a batch, and the consumer is not polled
    // again, so only the linger timer sends them.
    assert_eq!(
        await_counts(&vhost, &q.name, (0, 4)).await,
        Some((0, 4)),
        "ready and unacked after the acks"
    );
    // Held deliveries dropped unsettled are requeued, and come again; acked, nothing is left.
    drop(held);
    for _ in 0..4 {
        let d = next(&mut consumer, "a redelivery within 10 s").await;
        assert!(d.redelivered());
        d.ack().await.expect("ack");
    }
    assert_eq!(
        await_counts(&vhost, &q.name, (0, 0)).await,
        Some((0, 0)),
        "ready and unacked after the redeliveries were acked"
    );
    consumer.close().await.expect("close");
    conn.delete_queue(&q.name).await.expect("delete");
    conn.close().await.expect("close");
}

#[tokio::test]
async fn closing_the_connection_sends_recorded_acks() {
    let Some((url, vhost, conn, q)) = ten_messages("close-acks").await else {
        return;
    };
    // Ten acks, fewer than a batch: recorded, then the connection (not the consumer) closes.
    let mut consumer = consumer_of(&conn, &q).await;
    for _ in 0..10 {
        next(&mut consumer, "a delivery within 10 s")
            .await
            .ack()
            .await
            .expect("ack");
    }
    conn.close().await.expect("close");
    drop(consumer);
    // Had the acks been dropped, the ten would stay unacknowledged until the broker made them
    // ready again: never none ready and none unacknowledged.
    assert_eq!(
        await_counts(&vhost, &q.name, (0, 0)).await,
        Some((0, 0)),
        "ready and unacked after the close"
    );
    let check = Connection::open(&url).await.expect("open");
    check.delete_queue(&q.name).await.expect("delete");
    check.close().await.expect("close");
}
