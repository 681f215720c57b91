//! Python kombu (its MongoDB transport, pymongo) and kombu-rs on one database: expiry and
//! settlement across the sides. `python_interop.rs` has the messages themselves.
//!
//! Covered: message expiry (Python's `expire_at` honoured by Rust's takes; Rust's `expire_at`
//! written as kombu's `ttl` mode writes it and read back with pymongo), settlement across the
//! sides (a message Rust holds leased is invisible to Python's consumers and sizes, comes back
//! to a Rust consumer once the visibility timeout passed, and a Rust ack deletes it; a message
//! Python took is never delivered by Rust), Python reading the dead letters kombu-rs made of
//! unreadable documents, and queue expiry. Each test uses a database of its own, dropped when
//! it passes.
//!
//! The server is `$KOMBU_TEST_MONGODB_URL` (scripts/test starts a SecantusDB); the Python
//! interpreter is `$KOMBU_PYTHON` (scripts/python-env makes a venv with kombu and pymongo), else
//! `~/.cache/kombu-rs/venv/bin/python` when it exists. Without either the tests fail when
//! `KOMBU_TEST_REQUIRE` is set (as in CI) and are skipped with a message otherwise.

mod python;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{ErrorKind, Exchange, Queue};
use kombu_test_support::interop::*;
use serde_json::{Value as Json, json};

use python::{Db, nothing_within};

// --- expiry --------------------------------------------------------------------------------

/// Python kombu with `ttl=True` writes `expire_at` from a message's expiration and its queue's
/// `x-message-ttl` (the earlier); Rust's takes never deliver a message whose `expire_at`
/// passed (MongoDB's TTL monitor, about once a minute, would delete it later).
#[tokio::test]
async fn rust_does_not_deliver_what_python_made_expire() {
    let Some(db) = Db::new("pyttl").await else {
        return;
    };
    db.python("ttl_publish", &["pyttl"]);
    let docs = python_expiries(&db, "pyttl");
    assert_eq!(docs.get("kept"), Some(&None), "{docs:?}");
    assert!(within(docs["long"], Duration::from_secs(600)), "{docs:?}");
    // "short" may be gone already (the server's TTL monitor deleted it).
    assert!(
        docs.get("short")
            .is_none_or(|left| left.is_some_and(|l| l <= 200)),
        "{docs:?}"
    );
    // Past the 200 ms of "short" and of pyttl.ttl's x-message-ttl.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // With ttl=true, kombu-rs makes kombu's TTL indexes, which Python made already.
    let conn = db.open("ttl=true").await;
    let mut consumer = cases_consumer(&conn, "pyttl").await;
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut consumer).await;
        bodies.push(d.decode::<String>().expect("decode"));
        d.ack().await.expect("ack");
    }
    assert_eq!(bodies, ["kept", "long"]);
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_secs(1)).await,
        None,
        "the expired message was delivered"
    );
    consumer.close().await.expect("close");

    // Python recorded pyttl.ttl's arguments (ttl=True): a Rust declaration without its
    // x-message-ttl is refused as RabbitMQ refuses one, and the same declaration is accepted.
    let err = conn
        .declare_queue(&Queue::new("pyttl.ttl"))
        .await
        .expect_err("a declaration that differs from Python's record");
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed, "{err}");
    assert!(err.to_string().contains("x-message-ttl"), "{err}");
    let same = Queue::new("pyttl.ttl").message_ttl(Duration::from_millis(200));
    conn.declare_queue(&same)
        .await
        .expect("the declaration Python made");
    // Every message of the queue with a message TTL expired, "q-long" by the queue's TTL
    // though its own expiration is long.
    let mut consumer = conn
        .consumer([same])
        .accept(["json", "msgpack", "yaml", "text", "raw"])
        .build()
        .await
        .expect("consume pyttl.ttl");
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_secs(1)).await,
        None,
        "a message past its queue's x-message-ttl was delivered"
    );
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size("pyttl").await.expect("size"), 0);
    assert_eq!(conn.queue_size("pyttl.ttl").await.expect("size"), 0);
    conn.close().await.expect("close");
    db.drop_database().await;
}

/// `expire_at` of the documents of `queue` by body, as milliseconds from Python's `now`.
/// (By body: ObjectIds that two processes make in the same second sort by their random part,
/// so `_id` order is not publish order across processes.)
fn python_expiries(db: &Db, queue: &str) -> BTreeMap<String, Option<i64>> {
    let out = db.python("docs", &[queue]);
    let now = out["now_ms"].as_i64().expect("now");
    out["docs"]
        .as_array()
        .expect("docs")
        .iter()
        .map(|d| {
            let body: Json =
                serde_json::from_str(d["body"].as_str().expect("body")).expect("a JSON body");
            (
                body.as_str().expect("a string body").to_owned(),
                d["expire_at_ms"].as_i64().map(|at| at - now),
            )
        })
        .collect()
}

/// Whether `left` (milliseconds from now) is within `ttl`, and not long past `ttl` minus the
/// time a slow test took (a guard against a wrong unit, not a timing assertion).
fn within(left: Option<i64>, ttl: Duration) -> bool {
    let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    left.is_some_and(|left| left <= ttl && left > ttl - 60_000)
}

/// Messages Rust publishes with an expiration, or to a queue with a message TTL, carry kombu's
/// `expire_at` (the earlier of the two, as a BSON date), which Python kombu with `ttl=True`
/// honours through its TTL index (MongoDB's monitor deletes them, about once a minute: the
/// field and the index are checked, not the deletion). And Python with `ttl=True` reads the
/// `x-message-ttl` of a queue Rust declared.
#[tokio::test]
async fn rust_expiries_are_kombus_expire_at() {
    let Some(db) = Db::new("rsttl").await else {
        return;
    };
    let conn = db.open("ttl=true").await;
    let producer = conn
        .producer()
        .routing_key("rsttl")
        .declare(Queue::new("rsttl"));
    producer
        .message(&"expiring")
        .expiration(Duration::from_secs(120))
        .send()
        .await
        .expect("publish");
    producer.publish(&"lasting").await.expect("publish");
    let ttl = Duration::from_secs(300);
    let with_ttl = Queue::new("rsttl.q").message_ttl(ttl);
    let producer = conn
        .producer()
        .routing_key("rsttl.q")
        .declare(with_ttl.clone());
    producer.publish(&"by-queue").await.expect("publish");
    producer
        .message(&"own-earlier")
        .expiration(Duration::from_secs(120))
        .send()
        .await
        .expect("publish");
    // Python with ttl=True: its expire_at from the x-message-ttl Rust recorded.
    db.python("ttl_put", &["rsttl.q", "from-python"]);

    let plain = python_expiries(&db, "rsttl");
    let bodies: Vec<&String> = plain.keys().collect();
    assert_eq!(bodies, ["expiring", "lasting"], "{plain:?}");
    assert!(
        within(plain["expiring"], Duration::from_secs(120)),
        "{plain:?}"
    );
    assert_eq!(plain["lasting"], None, "{plain:?}");
    let by_queue = python_expiries(&db, "rsttl.q");
    let bodies: Vec<&String> = by_queue.keys().collect();
    assert_eq!(bodies, ["by-queue", "from-python", "own-earlier"]);
    assert!(within(by_queue["by-queue"], ttl), "{by_queue:?}");
    assert!(
        within(by_queue["own-earlier"], Duration::from_secs(120)),
        "{by_queue:?}"
    );
    assert!(within(by_queue["from-python"], ttl), "{by_queue:?}");
    // kombu's TTL index, which both sides make with ttl=true.
    let indexes = db.python("indexes", &[]);
    assert_eq!(indexes["indexes"]["expire_at_1"], 0, "{indexes}");

    // A message whose expire_at passed: never delivered by Rust; Python's consumer would get
    // it until the server's monitor deletes it (kombu's get does not look at expire_at).
    producer
        .message(&"gone")
        .expiration(Duration::from_millis(100))
        .send()
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut consumer = conn.consumer([with_ttl]).build().await.expect("consume");
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut consumer).await;
        bodies.push(d.decode::<String>().expect("decode"));
        d.ack().await.expect("ack");
    }
    assert_eq!(sorted(bodies), ["by-queue", "from-python", "own-earlier"]);
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_secs(1)).await,
        None
    );
    consumer.close().await.expect("close");
    conn.close().await.expect("close");
    db.drop_database().await;
}

// --- settlement ----------------------------------------------------------------------------

/// A message a Rust consumer holds (leased, unsettled) is invisible to Python: its consumer
/// does not get it and its size does not count it. Once the visibility timeout passed since
/// the take, another Rust consumer gets it back, redelivered; that consumer's ack deletes it
/// (Python finds nothing, the collection holds nothing), and the first holder's ack is stale.
#[tokio::test]
async fn a_message_rust_holds_is_invisible_to_python() {
    let Some(db) = Db::new("held").await else {
        return;
    };
    let conn = db.open("").await;
    conn.producer()
        .routing_key("held")
        .declare(Queue::new("held"))
        .publish(&"held")
        .await
        .expect("publish");
    // One at a time: the holder must not take what Python publishes next.
    let mut holder = conn
        .consumer([Queue::new("held")])
        .prefetch(1)
        .visibility_timeout(Duration::from_secs(3600))
        .build()
        .await
        .expect("consume");
    let held = next_delivery(&mut holder).await;
    assert_eq!(held.decode::<String>().expect("decode"), "held");

    assert_eq!(db.python_size("held"), 0, "Python counts a leased message");
    let out = db.python("consume", &["held", "1", "2"]);
    assert_eq!(out["messages"], json!([]), "Python got a leased message");
    assert_eq!(db.python_drain("held"), Vec::<Json>::new());

    // Python's messages beside it are Python's to take.
    db.python("put", &["held", "from-python"]);
    assert_eq!(db.python_size("held"), 1);
    assert_eq!(db.python_drain("held"), [json!("from-python")]);

    let restorer_conn = db.open("").await;
    let mut restorer = restorer_conn
        .consumer([Queue::new("held")])
        .visibility_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("consume");
    let copy = next_delivery(&mut restorer).await;
    assert!(copy.redelivered(), "restored after the visibility timeout");
    assert_eq!(copy.decode::<String>().expect("decode"), "held");
    copy.ack().await.expect("ack");
    if let Err(e) = held.ack().await {
        assert!(
            matches!(
                e.error.kind(),
                ErrorKind::Settlement | ErrorKind::StaleDelivery | ErrorKind::Closed
            ),
            "a late ack fails only as a settlement, stale delivery or closed error, not {e}"
        );
    }
    assert_eq!(
        nothing_within(&mut restorer, Duration::from_millis(1500)).await,
        None,
        "the acked message came back"
    );
    restorer.close().await.expect("close");
    holder.close().await.expect("close");
    assert_eq!(db.python_size("held"), 0);
    assert_eq!(db.python_drain("held"), Vec::<Json>::new());
    let left = db
        .raw()
        .await
        .collection::<mongodb::bson::Document>("messages")
        .count_documents(mongodb::bson::doc! {})
        .await
        .expect("count");
    assert_eq!(left, 0, "the ack deleted the document");
    conn.close().await.expect("close");
    restorer_conn.close().await.expect("close");
    db.drop_database().await;
}

/// A message Python takes is gone from the store (kombu deletes on fetch): Rust never
/// delivers it, and gets the one Python left.
#[tokio::test]
async fn a_message_python_took_is_never_delivered_by_rust() {
    let Some(db) = Db::new("pytook").await else {
        return;
    };
    db.python("put", &["pytook", "p-first", "p-second"]);
    let taken = db.python("consume", &["pytook", "1", "30"]);
    // kombu sorts on the priority alone: which of the two equals it takes is the server's.
    let left = match taken["messages"][0]["payload"].as_str() {
        Some("p-first") => "p-second",
        Some("p-second") => "p-first",
        _ => panic!("Python took none: {taken}"),
    };
    let conn = db.open("").await;
    let mut consumer = conn
        .consumer([Queue::new("pytook")])
        .visibility_timeout(Duration::from_secs(1))
        .build()
        .await
        .expect("consume");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.decode::<String>().expect("decode"), left);
    assert!(!d.redelivered());
    d.ack().await.expect("ack");
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_millis(1500)).await,
        None
    );
    consumer.close().await.expect("close");
    conn.close().await.expect("close");
    db.drop_database().await;
}

// --- dead letters --------------------------------------------------------------------------

/// A document whose payload is not a kombu envelope is moved by kombu-rs to `<queue>.dlq`,
/// where Python kombu reads it as an ordinary message: the stored bytes as its body, the
/// reason in its headers.
#[tokio::test]
async fn python_reads_the_dead_letters_of_unreadable_documents() {
    use base64::Engine as _;

    let Some(db) = Db::new("pydlq").await else {
        return;
    };
    let conn = db.open("").await;
    conn.declare_queue(&Queue::new("dlq"))
        .await
        .expect("declare");
    let raw = "not an envelope \u{e9}";
    db.raw()
        .await
        .collection::<mongodb::bson::Document>("messages")
        .insert_one(mongodb::bson::doc! { "payload": raw, "queue": "dlq", "priority": 9 })
        .await
        .expect("insert");
    let mut consumer = conn
        .consumer([Queue::new("dlq")])
        .build()
        .await
        .expect("consumer");
    let item = tokio::time::timeout(DELIVERY_TIMEOUT, consumer.next())
        .await
        .expect("an item")
        .expect("the stream goes on");
    let err = item.expect_err("a dead-letter notice");
    assert_eq!(err.error.kind(), ErrorKind::DeadLettered);
    consumer.close().await.expect("close");

    let read = db.python("dead_letters", &["dlq.dlq"]);
    let messages = read["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{read}");
    let letter = &messages[0];
    assert_eq!(
        letter["body_b64"],
        json!(base64::engine::general_purpose::STANDARD.encode(raw))
    );
    assert_eq!(letter["content_type"], "application/octet-stream");
    assert_eq!(letter["headers"]["x-kombu-original-queue"], "dlq");
    assert_eq!(letter["headers"]["x-kombu-transport"], "mongodb");
    assert_eq!(db.python_size("dlq.dlq"), 0);
    conn.close().await.expect("close");
    db.drop_database().await;
}

/// kombu's `ttl` mode for a queue with `x-expires`: its queue and routing documents carry
/// `expire_at` (now + x-expires), which every declaration and every take moves on, as kombu
/// refreshes it, so MongoDB's TTL monitor removes only a queue nobody uses.
#[tokio::test]
async fn queue_expiry_is_kombus_expire_at_and_moves_on() {
    let Some(db) = Db::new("qexp").await else {
        return;
    };
    let conn = db.open("ttl=true").await;
    let exchange = Exchange::direct("qexp.x");
    let queue = Queue::new("qexp.q")
        .expires(Duration::from_secs(600))
        .exchange(exchange.clone())
        .routing_key("k");
    conn.declare_queue(&queue).await.expect("declare");
    let raw = db.raw().await;
    let expire_at = |collection: &'static str, filter: mongodb::bson::Document| {
        let raw = raw.clone();
        async move {
            raw.collection::<mongodb::bson::Document>(collection)
                .find_one(filter)
                .await
                .expect("find")
                .and_then(|d| d.get_datetime("expire_at").ok().copied())
                .expect("an expire_at date")
        }
    };
    let now = mongodb::bson::DateTime::now().timestamp_millis();
    let first = expire_at("messages.queues", mongodb::bson::doc! { "_id": "qexp.q" }).await;
    let left = first.timestamp_millis() - now;
    assert!(left > 500_000 && left <= 600_000, "{left} ms left of 600 s");
    let bound = expire_at(
        "messages.routing",
        mongodb::bson::doc! { "queue": "qexp.q" },
    )
    .await;
    assert!(bound.timestamp_millis() - now > 500_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    conn.declare_queue(&queue).await.expect("declare again");
    let again = expire_at("messages.queues", mongodb::bson::doc! { "_id": "qexp.q" }).await;
    assert!(again > first, "a redeclaration moves the queue's expiry on");
    conn.close().await.expect("close");
    db.drop_database().await;
}
