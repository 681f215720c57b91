//! Entries in a queue's list that are not kombu envelopes (written by a raw client, a broken
//! producer, an attacker) are never dropped and never block the queue: a consumer gets the
//! good messages around them in order, one `DeadLettered` error item per hostile entry, and
//! `<queue>.dlq` holds each one's bytes unchanged as an ordinary message. Also for fanout
//! messages received over PUB/SUB, and for an entry whose consumer died between the take and
//! the move to the dead-letter queue.
//!
//! The server is `$KOMBU_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`); each test runs
//! under a fresh `global_keyprefix` and deletes its keys at the end.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kombu_core::dead_letter::{Destination, ORIGINAL_QUEUE, REASON, TRANSPORT};
use kombu_core::{Binding, Connection, Consumer, ErrorKind, Exchange, Queue, Value};

fn server() -> String {
    std::env::var("KOMBU_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

/// A raw client on the test server and a fresh key prefix; `None` (skip) when there is no
/// server and `KOMBU_TEST_REQUIRE` is not set.
async fn setup() -> Option<(redis::aio::MultiplexedConnection, String)> {
    kombu_redis::register();
    let raw = match redis::Client::open(server()) {
        Ok(client) => client.get_multiplexed_async_connection().await,
        Err(e) => Err(e),
    };
    match raw {
        Ok(raw) => Some((
            raw,
            format!("kombu-rs-unreadable-{}:", uuid::Uuid::new_v4().simple()),
        )),
        Err(e) => {
            assert!(
                std::env::var_os("KOMBU_TEST_REQUIRE").is_none(),
                "no Redis at {}: {e}",
                server()
            );
            eprintln!("skipped: no Redis: {e}");
            None
        }
    }
}

fn url(prefix: &str) -> String {
    format!(
        "{}?global_keyprefix={prefix}&visibility_timeout=1&polling_interval=0.05&fanout_patterns=false",
        server()
    )
}

async fn clean(raw: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(raw)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query_async(raw).await;
    }
}

/// What a broken or hostile producer may leave in a queue.
fn hostile() -> Vec<(&'static str, Vec<u8>)> {
    let envelope = |body: &str, encoding: &str| {
        format!(
            r#"{{"body": "{body}", "content-encoding": "utf-8", "content-type": "text/plain", "headers": {{}}, "properties": {{"body_encoding": "{encoding}", "delivery_info": {{"exchange": "", "routing_key": "jobs"}}, "delivery_mode": 2, "priority": 0, "delivery_tag": "t"}}}}"#
        )
        .into_bytes()
    };
    let depth = 100_000;
    let mut deep = b"{\"headers\": ".to_vec();
    deep.extend(std::iter::repeat_n(b'[', depth));
    deep.extend(std::iter::repeat_n(b']', depth));
    deep.push(b'}');
    vec![
        ("not JSON", b"this is not JSON \xff\x00".to_vec()),
        ("a JSON array", b"[1, 2, 3]".to_vec()),
        ("invalid base64", envelope("!!not base64!!", "base64")),
        ("unknown body_encoding", envelope("aGVsbG8=", "rot13")),
        ("100,000-deep nesting", deep),
    ]
}

/// The next stream item, within a few seconds.
async fn next(consumer: &mut Consumer) -> Result<kombu_core::Delivery, kombu_core::ConsumeError> {
    tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("an item within 10 s")
        .expect("the stream goes on")
}

/// Consumes until `good` deliveries arrived: their bodies (acked) and the dead-letter notices.
async fn consume(consumer: &mut Consumer, good: usize) -> (Vec<String>, Vec<kombu_core::Error>) {
    let (mut bodies, mut notices) = (Vec::new(), Vec::new());
    while bodies.len() < good {
        match next(consumer).await {
            Ok(delivery) => {
                bodies.push(delivery.decode::<String>().expect("a good message"));
                delivery.ack().await.expect("ack");
            }
            Err(err) => notices.push(err.error),
        }
    }
    (bodies, notices)
}

/// Every message of `queue` through `get` (acked): body and headers.
async fn drain(conn: &Connection, queue: &str) -> Vec<(Bytes, kombu_core::Headers)> {
    let mut out = Vec::new();
    while let Some(delivery) = conn
        .default_channel()
        .get(queue, false)
        .await
        .expect("get from the dead-letter queue")
    {
        out.push((delivery.body().clone(), delivery.headers().clone()));
        delivery.ack().await.expect("ack");
    }
    out
}

fn assert_notice(err: &kombu_core::Error, queue: &str) {
    assert_eq!(err.kind(), ErrorKind::DeadLettered, "{err:#}");
    let dead = err.dead_lettered().expect("where it went");
    assert_eq!(dead.queue, queue);
    assert_eq!(dead.destination, Destination::Queue(format!("{queue}.dlq")));
}

fn assert_dead_letter(letter: &(Bytes, kombu_core::Headers), queue: &str, raw: &[u8]) {
    assert_eq!(letter.0.as_ref(), raw, "the body is the stored bytes");
    assert_eq!(letter.1.get(ORIGINAL_QUEUE), Some(&Value::from(queue)));
    assert_eq!(letter.1.get(TRANSPORT), Some(&Value::from("redis")));
    assert!(
        matches!(letter.1.get(REASON), Some(Value::String(r)) if r.starts_with("unreadable envelope")),
        "{:?}",
        letter.1.get(REASON)
    );
}

async fn unacked_len(raw: &mut redis::aio::MultiplexedConnection, prefix: &str) -> (u64, u64) {
    let hash: u64 = redis::cmd("HLEN")
        .arg(format!("{prefix}unacked"))
        .query_async(raw)
        .await
        .expect("HLEN");
    let index: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}unacked_index"))
        .query_async(raw)
        .await
        .expect("ZCARD");
    (hash, index)
}

#[tokio::test]
async fn hostile_entries_go_to_the_dead_letter_queue_byte_for_byte() {
    let Some((mut raw, prefix)) = setup().await else {
        return;
    };
    let conn = Connection::open(&url(&prefix)).await.expect("connect");
    conn.declare_queue(&Queue::new("jobs"))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key("jobs");
    producer.publish("first").await.expect("publish");
    let hostile = hostile();
    for (_, bytes) in &hostile {
        // What a publish does: LPUSH onto the queue's list.
        let _: i64 = redis::cmd("LPUSH")
            .arg(format!("{prefix}jobs"))
            .arg(bytes.as_slice())
            .query_async(&mut raw)
            .await
            .expect("LPUSH");
    }
    producer.publish("second").await.expect("publish");

    let mut consumer = conn
        .consumer([Queue::new("jobs")])
        .build()
        .await
        .expect("consumer");
    let (bodies, notices) = consume(&mut consumer, 2).await;
    assert_eq!(bodies, ["first", "second"]);
    assert_eq!(notices.len(), hostile.len(), "{notices:?}");
    for err in &notices {
        assert_notice(err, "jobs");
    }
    consumer.close().await.expect("close");

    let letters = drain(&conn, "jobs.dlq").await;
    assert_eq!(letters.len(), hostile.len());
    for (letter, (what, bytes)) in letters.iter().zip(&hostile) {
        assert_eq!(letter.0.as_ref(), bytes.as_slice(), "{what}");
        assert_dead_letter(letter, "jobs", bytes);
    }
    assert_eq!(conn.queue_size("jobs").await.expect("size"), 0);
    assert_eq!(conn.queue_size("jobs.dlq").await.expect("size"), 0);
    conn.close().await.expect("close");
    assert_eq!(
        unacked_len(&mut raw, &prefix).await,
        (0, 0),
        "nothing left unacked"
    );
    clean(&mut raw, &prefix).await;
}

#[tokio::test]
async fn a_no_ack_consumer_sets_hostile_entries_aside_too() {
    let Some((mut raw, prefix)) = setup().await else {
        return;
    };
    let conn = Connection::open(&url(&prefix)).await.expect("connect");
    conn.declare_queue(&Queue::new("fast"))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key("fast");
    producer.publish("first").await.expect("publish");
    let _: i64 = redis::cmd("LPUSH")
        .arg(format!("{prefix}fast"))
        .arg(&b"\x00garbage"[..])
        .query_async(&mut raw)
        .await
        .expect("LPUSH");
    producer.publish("second").await.expect("publish");
    let mut consumer = conn
        .consumer([Queue::new("fast")])
        .no_ack(true)
        .build()
        .await
        .expect("consumer");
    let (bodies, notices) = consume(&mut consumer, 2).await;
    assert_eq!(bodies, ["first", "second"]);
    assert_eq!(notices.len(), 1);
    assert_notice(&notices[0], "fast");
    consumer.close().await.expect("close");
    let letters = drain(&conn, "fast.dlq").await;
    assert_eq!(letters.len(), 1);
    assert_dead_letter(&letters[0], "fast", b"\x00garbage");
    conn.close().await.expect("close");
    assert_eq!(unacked_len(&mut raw, &prefix).await, (0, 0));
    clean(&mut raw, &prefix).await;
}

#[tokio::test]
async fn an_unreadable_fanout_message_goes_to_the_dead_letter_queue() {
    let Some((mut raw, prefix)) = setup().await else {
        return;
    };
    let conn = Connection::open(&url(&prefix)).await.expect("connect");
    let exchange = Exchange::fanout("news");
    conn.declare_exchange(&exchange).await.expect("declare");
    let queue = Queue::new("listener").bind(Binding::new("news", ""));
    let mut consumer = conn.consumer([queue]).build().await.expect("consumer");
    let producer = conn.producer().exchange(exchange);
    producer.publish("first").await.expect("publish");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{prefix}/0.news"))
        .arg(&b"{not an envelope"[..])
        .query_async(&mut raw)
        .await
        .expect("PUBLISH");
    producer.publish("second").await.expect("publish");
    let (bodies, notices) = consume(&mut consumer, 2).await;
    assert_eq!(bodies, ["first", "second"]);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_notice(&notices[0], "listener");
    consumer.close().await.expect("close");
    let letters = drain(&conn, "listener.dlq").await;
    assert_eq!(letters.len(), 1);
    assert_dead_letter(&letters[0], "listener", b"{not an envelope");
    conn.close().await.expect("close");
    clean(&mut raw, &prefix).await;
}

/// A consumer that took an unreadable entry and died before moving it aside leaves it in
/// `unacked` under its take's field, as TAKE wrote it (`[` raw `, "", "<queue>"]`), with a
/// lease that ends. It comes back to its queue and is moved aside by the next consumer.
#[tokio::test]
async fn an_unreadable_entry_of_a_dead_consumer_comes_back() {
    let Some((mut raw, prefix)) = setup().await else {
        return;
    };
    let conn = Connection::open(&url(&prefix)).await.expect("connect");
    conn.declare_queue(&Queue::new("orphans"))
        .await
        .expect("declare");
    let hostile = b"\xfe\xff not an envelope \"quoted\"";
    let mut entry = b"[".to_vec();
    entry.extend_from_slice(hostile);
    entry.extend_from_slice(b", \"\", \"orphans\"]");
    let field = format!(
        "{}{}:1",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let long_ago = kombu_core::transport::unix_now() - 60.0;
    let () = redis::pipe()
        .atomic()
        .hset(format!("{prefix}unacked"), &field, entry)
        .ignore()
        .zadd(format!("{prefix}unacked_index"), &field, long_ago)
        .ignore()
        .query_async(&mut raw)
        .await
        .expect("a take's records");

    let mut consumer = conn
        .consumer([Queue::new("orphans")])
        .build()
        .await
        .expect("consumer");
    let err = next(&mut consumer).await.expect_err("a dead-letter notice");
    assert_notice(&err.error, "orphans");
    consumer.close().await.expect("close");
    let letters = drain(&conn, "orphans.dlq").await;
    assert_eq!(letters.len(), 1);
    assert_dead_letter(&letters[0], "orphans", hostile);
    assert_eq!(conn.queue_size("orphans").await.expect("size"), 0);
    conn.close().await.expect("close");
    assert_eq!(unacked_len(&mut raw, &prefix).await, (0, 0));
    clean(&mut raw, &prefix).await;
}
