//! What only the AMQP transport has, against RabbitMQ: channel-level errors that keep the
//! connection usable, refused logins and unreachable brokers, failover URLs, heartbeats, the
//! default exchange and `amq.*` never declared, quorum queues, and publishes without confirms
//! (queued, and all written by the close).

mod common;

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, ErrorKind, Exchange, Queue};

fn url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        kombu_amqp::register();
        if !common::broker_up("broker") {
            return None;
        }
        let vhost = common::fresh_vhost("kombu-rs-broker");
        Some(common::url_on(vhost.as_deref()))
    })
    .clone()
}

async fn setup() -> Option<String> {
    tokio::task::spawn_blocking(url).await.ok().flatten()
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// Publishes `text` to `queue` and reads it back on the same connection: it is usable.
async fn still_usable(conn: &Connection, what: &str) {
    let q = Queue::new(unique("usable"));
    conn.declare_queue(&q)
        .await
        .unwrap_or_else(|e| panic!("after {what}: declare: {e}"));
    conn.producer()
        .routing_key(q.name.clone())
        .publish(&what)
        .await
        .unwrap_or_else(|e| panic!("after {what}: publish: {e}"));
    let mut consumer = conn.consumer([q.clone()]).build().await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery")
        .expect("stream open")
        .expect("a good delivery");
    assert_eq!(d.decode::<String>().expect("decode"), what);
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
    conn.delete_queue(&q.name).await.expect("delete");
}

#[tokio::test]
async fn channel_errors_keep_the_connection_usable() {
    let Some(url) = setup().await else { return };
    let conn = Connection::open(&url).await.expect("open");

    // NOT_FOUND: the size of a queue that does not exist, a publish to a missing exchange.
    let e = conn.queue_size(&unique("missing")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!e.is_recoverable());
    still_usable(&conn, "after NOT_FOUND on a queue").await;
    // A publish to an exchange that does not exist.
    let channel = conn.channel().await.expect("channel");
    let e = channel
        .publish(kombu_core::transport::Outgoing::new(
            unique("missing-exchange"),
            "k",
            kombu_core::Message::new(&b"x"[..]),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    // The same channel object works again (a new AMQP channel underneath).
    assert!(channel.queue_size(&unique("missing")).await.is_err());
    let q = Queue::new(unique("after"));
    channel
        .declare_queue(&q)
        .await
        .expect("declare after errors");
    assert_eq!(channel.queue_size(&q.name).await.expect("size"), 0);
    channel.close().await.expect("close");

    // PRECONDITION_FAILED: redeclaring with other arguments or another type.
    let q = Queue::new(unique("pre")).max_length(10);
    conn.declare_queue(&q).await.expect("declare");
    let e = conn
        .declare_queue(&Queue::new(q.name.clone()).max_length(20))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{e}");
    let x = Exchange::topic(unique("pre-x"));
    conn.declare_exchange(&x).await.expect("declare exchange");
    let e = conn
        .declare_exchange(&Exchange::direct(x.name.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PreconditionFailed, "{e}");
    still_usable(&conn, "after PRECONDITION_FAILED").await;

    // ACCESS_REFUSED: queue names starting with `amq.` are reserved.
    let e = conn
        .declare_queue(&Queue::new(format!("amq.{}", unique("reserved"))))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AccessRefused, "{e}");
    still_usable(&conn, "after ACCESS_REFUSED").await;

    conn.delete_queue(&q.name).await.expect("delete");
    conn.delete_exchange(&x.name)
        .await
        .expect("delete exchange");
}

#[tokio::test]
async fn refused_logins_and_unreachable_brokers() {
    let Some(url) = setup().await else { return };
    let bad = url.replacen("guest:guest@", "guest:wrong-secret@", 1);
    assert_ne!(bad, url, "the test URL carries guest:guest");
    let e = Connection::open(&bad).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AccessRefused, "{e}");
    assert!(!e.is_recoverable());
    assert!(!e.to_string().contains("wrong-secret"), "{e}");

    let e = Connection::open("amqp://guest:secret@127.0.0.1:1//?connect_timeout=2")
        .await
        .unwrap_err();
    assert!(e.is_recoverable(), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");

    // Failover: the first URL is unreachable, the second is used.
    let conn = Connection::open(&format!("amqp://127.0.0.1:1//?connect_timeout=1;{url}"))
        .await
        .expect("failover to the second URL");
    assert_ne!(conn.url().port(), Some(1));
    still_usable(&conn, "after failover").await;

    let e = Connection::open("amqp://127.0.0.1//?bogus=1")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{e}");
}

#[tokio::test]
async fn heartbeat_is_negotiated() {
    let Some(url) = setup().await else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let conn = Connection::open(&format!("{url}{sep}heartbeat=7"))
        .await
        .expect("open");
    still_usable(&conn, "with heartbeat 7").await;
    let listed = tokio::task::spawn_blocking(|| {
        Command::new("rabbitmqctl")
            .args(["list_connections", "vhost", "timeout", "client_properties"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    })
    .await
    .expect("rabbitmqctl");
    match listed {
        Some(listing) => assert!(
            listing
                .lines()
                .any(|l| l.contains("kombu-rs-broker") && l.split('\t').nth(1) == Some("7")),
            "no connection with heartbeat 7 on the test vhost:\n{listing}"
        ),
        None if common::required() => panic!("rabbitmqctl list_connections failed"),
        None => eprintln!("heartbeat_is_negotiated: rabbitmqctl unavailable, not checked"),
    }
    conn.close().await.expect("close");
}

#[tokio::test]
async fn default_and_reserved_exchanges_are_not_declared() {
    let Some(url) = setup().await else { return };
    let conn = Connection::open(&url).await.expect("open");
    // Declaring these would fail (ACCESS_REFUSED): kombu never declares them, nor do we.
    conn.declare_exchange(&Exchange::default_exchange())
        .await
        .expect("the default exchange");
    conn.declare_exchange(&Exchange::fanout("amq.fanout"))
        .await
        .expect("amq.fanout");
    let q = Queue::new(unique("amq-bound"))
        .exchange(Exchange::topic("amq.topic"))
        .routing_key("kombu.#");
    conn.declare_queue(&q).await.expect("bound to amq.topic");
    conn.producer()
        .exchange(Exchange::topic("amq.topic"))
        .routing_key("kombu.rs")
        .publish(&"via amq.topic")
        .await
        .expect("publish");
    let channel = conn.channel().await.expect("channel");
    let d = loop {
        if let Some(d) = channel.get(&q.name, false).await.expect("get") {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(d.decode::<String>().expect("decode"), "via amq.topic");
    assert_eq!(d.exchange(), "amq.topic");
    d.ack().await.expect("ack");
    conn.delete_queue(&q.name).await.expect("delete");
}

#[tokio::test]
async fn quorum_queues_round_trip() {
    let Some(url) = setup().await else { return };
    let conn = Connection::open(&url).await.expect("open");
    let q = Queue::new(unique("quorum"))
        .argument("x-queue-type", "quorum")
        .dead_letter_exchange("")
        .dead_letter_routing_key("nowhere");
    let mut consumer = conn
        .consumer([q.clone()])
        .prefetch(10)
        .build()
        .await
        .expect("consume");
    let producer = conn.producer().routing_key(q.name.clone());
    producer
        .publish_batch((0..100u32).collect::<Vec<_>>().iter())
        .await
        .expect("publish");
    let mut seen = std::collections::BTreeSet::new();
    let mut requeued = false;
    let mut redelivered = 0;
    while seen.len() < 100 {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("a delivery")
            .expect("open")
            .expect("good");
        let n = d.decode::<u32>().expect("decode");
        if !requeued {
            assert!(!d.redelivered());
            requeued = true;
            d.requeue().await.expect("requeue");
            continue;
        }
        if d.redelivered() {
            redelivered += 1;
            // Quorum queues count deliveries.
            assert_eq!(
                d.headers().get("x-delivery-count"),
                Some(&kombu_core::Value::Int(1)),
                "{d:?}"
            );
        }
        assert!(seen.insert(n), "{n} twice");
        d.ack().await.expect("ack");
    }
    assert_eq!(redelivered, 1, "the requeued message came back once");
    consumer.close().await.expect("close");
    conn.delete_queue(&q.name).await.expect("delete");
}

#[tokio::test]
async fn publishes_without_confirms() {
    let Some(url) = setup().await else { return };
    let sep = if url.contains('?') { '&' } else { '?' };
    let conn = Connection::open(&format!("{url}{sep}confirm_publish=false"))
        .await
        .expect("open");
    assert!(!conn.capabilities().publisher_confirms);
    assert!(!conn.capabilities().mandatory);
    still_usable(&conn, "without confirms").await;

    // Publishes return once queued. The next other operation is not written before them (lapin
    // writes method frames ahead of queued publishes), and closing writes them all first.
    let q = Queue::new(unique("unconfirmed"));
    conn.declare_queue(&q).await.expect("declare");
    let producer = conn.producer().routing_key(q.name.clone());
    for n in 0..2_000u32 {
        producer.publish(&n).await.expect("publish");
    }
    // (Not `queue_size`: RabbitMQ answers it ahead of deliveries still on their way to the
    // queue.)
    assert_eq!(
        conn.purge(&q.name).await.expect("purge"),
        2_000,
        "the purge comes after the publishes that returned before it"
    );
    for n in 0..2_000u32 {
        producer.publish(&n).await.expect("publish");
    }
    conn.close().await.expect("close");
    let check = Connection::open(&url).await.expect("open");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut size = 0;
    while size < 2_000 && std::time::Instant::now() < deadline {
        size = check.queue_size(&q.name).await.expect("size");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(size, 2_000, "every publish queued before the close arrived");
    check.delete_queue(&q.name).await.expect("delete");
    check.close().await.expect("close");
}

/// `queue_exists` asks without harm: a missing queue is `false` (the 404 closes only a
/// throwaway channel, so a consumer on the same connection keeps its deliveries), a declared
/// one `true`, and another connection's exclusive queue `true` too (it exists, locked).
#[tokio::test]
async fn queue_exists_is_a_harmless_question() {
    let Some(url) = setup().await else { return };
    let conn = Connection::open(&url).await.expect("open");
    let q = Queue::new(unique("exists"));
    conn.declare_queue(&q).await.expect("declare");
    let mut consumer = conn.consumer([q.clone()]).build().await.expect("consume");
    let channel = consumer.channel().clone();
    assert!(!channel.queue_exists(&unique("missing")).await.expect("ask"));
    assert!(!conn.queue_exists(&unique("missing")).await.expect("ask"));
    assert!(conn.queue_exists(&q.name).await.expect("ask"));
    conn.producer()
        .routing_key(q.name.clone())
        .publish(&"after the questions")
        .await
        .expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery")
        .expect("stream open")
        .expect("a good delivery");
    assert_eq!(d.decode::<String>().expect("decode"), "after the questions");
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");

    let owner = Connection::open(&url).await.expect("open");
    let exclusive = Queue::new(unique("exclusive")).exclusive(true);
    owner
        .declare_queue(&exclusive)
        .await
        .expect("declare exclusive");
    assert!(
        conn.queue_exists(&exclusive.name).await.expect("ask"),
        "another connection's exclusive queue exists"
    );
    owner.close().await.expect("close");
    conn.delete_queue(&q.name).await.expect("delete");
    conn.close().await.expect("close");
}
