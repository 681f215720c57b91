//! Documents in `messages` whose `payload` is not a kombu envelope (written by a raw client, a
//! broken producer, an attacker: a string that is not JSON or not an envelope, a number, a
//! BSON binary of garbage, a sub-document, no payload at all, one over `max_payload_size`)
//! never make a take fail and are never dropped or stranded: a consumer gets the good
//! messages around them in order, one `DeadLettered` error item per hostile document, and
//! `<queue>.dlq` holds each one's stored bytes as an ordinary message (a string's or a
//! binary's bytes unchanged; any other BSON value, or the whole document when there is no
//! payload, as relaxed extended JSON). Also for a no-ack consumer, and for a hostile document
//! whose consumer died between the take and the move to the dead-letter queue.
//!
//! The server is `$KOMBU_TEST_MONGODB_URL`; each test in a database of its own, dropped when
//! it passes.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kombu_core::dead_letter::{Destination, ORIGINAL_QUEUE, REASON, TRANSPORT};
use kombu_core::{Connection, Consumer, ErrorKind, Headers, Queue, Value};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, Document, doc};

/// A test's database, its kombu-rs URL, and a raw client's `messages` collection.
struct Db {
    url: String,
    database: mongodb::Database,
}

impl Db {
    async fn new(what: &str, extra: &str) -> Option<Db> {
        let server = support::require(what).await?;
        let name = support::fresh_database(what);
        let client = mongodb::Client::with_uri_str(&server)
            .await
            .expect("a raw client");
        Some(Db {
            url: format!("{server}/{name}?visibility_timeout=1&polling_interval=0.05{extra}"),
            database: client.database(&name),
        })
    }

    async fn open(&self) -> Connection {
        Connection::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }

    fn messages(&self) -> mongodb::Collection<Document> {
        self.database.collection("messages")
    }

    /// Inserts a hostile document into `queue` as kombu's `_put` would place a message
    /// (`priority` 9: kombu's stored priority of an unprioritized message), `payload` as given
    /// (none for `None`).
    async fn insert(&self, queue: &str, id: ObjectId, payload: Option<&Bson>) {
        let mut document = doc! { "_id": id, "queue": queue, "priority": 9 };
        if let Some(payload) = payload {
            document.insert("payload", payload.clone());
        }
        self.messages()
            .insert_one(document)
            .await
            .expect("insert a hostile document");
    }

    /// Documents left in `messages`, ready or leased, for any queue.
    async fn documents(&self) -> u64 {
        self.messages()
            .count_documents(doc! {})
            .await
            .expect("count")
    }

    async fn drop_database(&self) {
        let _ = self.database.drop().await;
    }
}

/// A hostile payload and the bytes its dead letter carries.
struct Hostile {
    what: &'static str,
    /// `None`: the document has no `payload` field.
    payload: Option<Bson>,
    id: ObjectId,
}

impl Hostile {
    /// What the dead letter's body must be: a string's or a binary's bytes; any other value,
    /// or the whole document without a payload, as relaxed extended JSON.
    fn check(&self, body: &[u8], queue: &str) {
        match &self.payload {
            Some(Bson::String(text)) => assert_eq!(body, text.as_bytes(), "{}", self.what),
            Some(Bson::Binary(binary)) => assert_eq!(body, &binary.bytes[..], "{}", self.what),
            Some(other) => {
                let stored: serde_json::Value =
                    serde_json::from_slice(body).expect("extended JSON");
                assert_eq!(
                    stored,
                    other.clone().into_relaxed_extjson(),
                    "{}",
                    self.what
                );
            }
            None => {
                let stored: serde_json::Value =
                    serde_json::from_slice(body).expect("extended JSON");
                assert_eq!(stored["_id"]["$oid"], self.id.to_hex(), "{stored}");
                assert_eq!(stored["queue"], queue, "{stored}");
                assert!(stored.get("payload").is_none(), "{stored}");
            }
        }
    }
}

fn hostile() -> Vec<Hostile> {
    let envelope_with = |body: &str, encoding: &str| {
        format!(
            r#"{{"body": "{body}", "content-encoding": "utf-8", "content-type": "text/plain", "headers": {{}}, "properties": {{"body_encoding": "{encoding}", "delivery_info": {{"exchange": "", "routing_key": "jobs"}}, "delivery_mode": 2, "priority": 0, "delivery_tag": "t"}}}}"#
        )
    };
    let cases: Vec<(&'static str, Option<Bson>)> = vec![
        (
            "a string that is not JSON",
            Some(Bson::String("this is not JSON \u{fffd}\u{0}".into())),
        ),
        ("a JSON array", Some(Bson::String("[1, 2, 3]".into()))),
        (
            "invalid base64",
            Some(Bson::String(envelope_with("!!not base64!!", "base64"))),
        ),
        ("a number", Some(Bson::Int32(42))),
        ("a double", Some(Bson::Double(1.5))),
        (
            "a binary of garbage",
            Some(Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: b"\xff\x00 garbage \x80".to_vec(),
            })),
        ),
        (
            "a sub-document",
            Some(Bson::Document(doc! { "body": "x", "nested": { "n": 1 } })),
        ),
        ("null", Some(Bson::Null)),
        ("no payload", None),
    ];
    cases
        .into_iter()
        .map(|(what, payload)| Hostile {
            what,
            payload,
            id: ObjectId::new(),
        })
        .collect()
}

/// The next stream item, within a guard.
async fn next(consumer: &mut Consumer) -> Result<kombu_core::Delivery, kombu_core::ConsumeError> {
    tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("an item within 30 s")
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

/// Whether an item arrives within `wait`.
async fn quiet(consumer: &mut Consumer, wait: Duration) -> Option<String> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Err(_) | Ok(None) => None,
        Ok(Some(Ok(d))) => Some(format!("{d:?}")),
        Ok(Some(Err(e))) => Some(format!("error {e}")),
    }
}

/// Every message of `queue` through `get` (acked): body and headers, in order.
async fn drain(conn: &Connection, queue: &str) -> Vec<(Bytes, Headers)> {
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

fn assert_letter_headers(headers: &Headers, queue: &str) -> String {
    assert_eq!(headers.get(ORIGINAL_QUEUE), Some(&Value::from(queue)));
    assert_eq!(headers.get(TRANSPORT), Some(&Value::from("mongodb")));
    match headers.get(REASON) {
        Some(Value::String(r)) if r.starts_with("unreadable envelope") => r.clone(),
        other => panic!("not an unreadable envelope's reason: {other:?}"),
    }
}

#[tokio::test]
async fn hostile_documents_go_to_the_dead_letter_queue() {
    let Some(db) = Db::new("unreadable", "").await else {
        return;
    };
    let conn = db.open().await;
    conn.declare_queue(&Queue::new("jobs"))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key("jobs");
    producer.publish("first").await.expect("publish");
    let hostile = hostile();
    for h in &hostile {
        db.insert("jobs", h.id, h.payload.as_ref()).await;
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
    assert_eq!(quiet(&mut consumer, Duration::from_millis(500)).await, None);
    consumer.close().await.expect("close");

    let letters = drain(&conn, "jobs.dlq").await;
    assert_eq!(letters.len(), hostile.len());
    for ((body, headers), h) in letters.iter().zip(&hostile) {
        h.check(body, "jobs");
        let reason = assert_letter_headers(headers, "jobs");
        if matches!(h.payload, Some(Bson::String(_)) | Some(Bson::Binary(_))) {
            continue;
        }
        assert!(
            reason.contains("not a string") || reason.contains("no payload"),
            "{}: {reason}",
            h.what
        );
    }
    assert_eq!(conn.queue_size("jobs").await.expect("size"), 0);
    assert_eq!(conn.queue_size("jobs.dlq").await.expect("size"), 0);
    conn.close().await.expect("close");
    assert_eq!(db.documents().await, 0, "nothing left, ready or leased");
    db.drop_database().await;
}

#[tokio::test]
async fn an_oversize_payload_is_not_parsed_but_kept_whole() {
    let Some(db) = Db::new("oversize", "&max_payload_size=1000").await else {
        return;
    };
    let conn = db.open().await;
    conn.declare_queue(&Queue::new("big"))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key("big");
    producer.publish("first").await.expect("publish");
    // An envelope would be readable but for its length.
    let long = format!("{{\"body\": \"{}\"}}", "x".repeat(2000));
    let id = ObjectId::new();
    db.insert("big", id, Some(&Bson::String(long.clone())))
        .await;
    producer.publish("second").await.expect("publish");

    let mut consumer = conn
        .consumer([Queue::new("big")])
        .build()
        .await
        .expect("consumer");
    let (bodies, notices) = consume(&mut consumer, 2).await;
    assert_eq!(bodies, ["first", "second"]);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_notice(&notices[0], "big");
    consumer.close().await.expect("close");
    // The dead letter is over the limit too: read on a connection without it (through this
    // one it would be set aside again, to big.dlq.dlq).
    let unlimited = Connection::open(db.url.trim_end_matches("&max_payload_size=1000"))
        .await
        .expect("open");
    let letters = drain(&unlimited, "big.dlq").await;
    unlimited.close().await.expect("close");
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0.as_ref(), long.as_bytes(), "kept whole");
    let reason = assert_letter_headers(&letters[0].1, "big");
    assert!(reason.contains("max_payload_size"), "{reason}");
    conn.close().await.expect("close");
    assert_eq!(db.documents().await, 0);
    db.drop_database().await;
}

#[tokio::test]
async fn a_no_ack_consumer_sets_hostile_documents_aside_too() {
    let Some(db) = Db::new("unreadnoack", "").await else {
        return;
    };
    let conn = db.open().await;
    conn.declare_queue(&Queue::new("fast"))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key("fast");
    producer.publish("first").await.expect("publish");
    let garbage = Bson::Binary(Binary {
        subtype: BinarySubtype::Generic,
        bytes: b"\x00garbage".to_vec(),
    });
    db.insert("fast", ObjectId::new(), Some(&garbage)).await;
    producer.publish("second").await.expect("publish");
    let mut consumer = conn
        .consumer([Queue::new("fast")])
        .no_ack(true)
        .build()
        .await
        .expect("consumer");
    let (bodies, notices) = consume(&mut consumer, 2).await;
    assert_eq!(bodies, ["first", "second"]);
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert_notice(&notices[0], "fast");
    consumer.close().await.expect("close");
    let letters = drain(&conn, "fast.dlq").await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0.as_ref(), b"\x00garbage");
    assert_letter_headers(&letters[0].1, "fast");
    conn.close().await.expect("close");
    assert_eq!(db.documents().await, 0);
    db.drop_database().await;
}

/// A consumer that took a hostile document and died before moving it aside leaves it leased
/// (`queue: "kombu_rs.leased:<queue>"` and a take time long past): it comes back to its queue and
/// is moved aside by the next consumer.
#[tokio::test]
async fn a_hostile_document_of_a_dead_consumer_comes_back() {
    let Some(db) = Db::new("unreadorphan", "").await else {
        return;
    };
    let conn = db.open().await;
    conn.declare_queue(&Queue::new("orphans"))
        .await
        .expect("declare");
    let long_ago = kombu_core::transport::unix_now() - 60.0;
    db.messages()
        .insert_one(doc! {
            "_id": ObjectId::new(),
            "payload": "{\"not\": \"an envelope\"",
            "priority": 9,
            "queue": "kombu_rs.leased:orphans",
            "kombu_rs_taken_at": long_ago,
            "kombu_rs_take": ObjectId::new(),
        })
        .await
        .expect("a leased hostile document");

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
    assert_eq!(letters[0].0.as_ref(), b"{\"not\": \"an envelope\"");
    assert_letter_headers(&letters[0].1, "orphans");
    assert_eq!(conn.queue_size("orphans").await.expect("size"), 0);
    conn.close().await.expect("close");
    assert_eq!(db.documents().await, 0);
    db.drop_database().await;
}

/// Documents whose `_id` is not an ObjectId (a bare client may choose strings or numbers):
/// a good one is delivered and its ack deletes it, a hostile one goes to the dead-letter
/// queue, and neither blocks the queue (BSON sorts numbers and strings before ObjectIds, so
/// they are at its head).
#[tokio::test]
async fn documents_with_other_ids_are_taken_settled_and_set_aside() {
    let Some(db) = Db::new("unreadids", "").await else {
        return;
    };
    let conn = db.open().await;
    conn.declare_queue(&Queue::new("jobs"))
        .await
        .expect("declare");
    conn.producer()
        .routing_key("jobs")
        .publish(&"after them")
        .await
        .expect("publish");
    let env = kombu_core::transport::virtual_transport::Envelope::new(
        kombu_core::Message::new("a string id"),
        String::new(),
        "jobs".into(),
    );
    let payload = String::from_utf8(kombu_core::transport::virtual_transport::envelope::encode(
        &env,
    ))
    .expect("UTF-8 envelope");
    db.messages()
        .insert_one(doc! { "_id": "order-17", "payload": payload, "queue": "jobs", "priority": 0 })
        .await
        .expect("a good document with a string id");
    db.messages()
        .insert_one(doc! { "_id": 42_i64, "payload": "not JSON", "queue": "jobs", "priority": 0 })
        .await
        .expect("a hostile document with a number id");

    let mut consumer = conn
        .consumer([Queue::new("jobs")])
        .accept(["json", "text"])
        .build()
        .await
        .expect("consumer");
    let mut bodies = Vec::new();
    let mut notices = 0;
    while bodies.len() < 2 {
        match next(&mut consumer).await {
            Ok(delivery) => {
                bodies.push(String::from_utf8_lossy(delivery.body()).into_owned());
                delivery.ack().await.expect("ack");
            }
            Err(err) => {
                assert_eq!(err.error.kind(), ErrorKind::DeadLettered, "{}", err.error);
                notices += 1;
            }
        }
    }
    assert_eq!(bodies, ["a string id", "\"after them\""]);
    assert_eq!(notices, 1);
    consumer.close().await.expect("close");
    let dead = drain(&conn, "jobs.dlq").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(&dead[0].0[..], b"not JSON");
    // Every document is gone: the acks matched the string id, the move the number id.
    assert_eq!(db.documents().await, 0);
    conn.close().await.expect("close the connection");
    db.drop_database().await;
}
