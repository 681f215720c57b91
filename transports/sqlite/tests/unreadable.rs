//! Rows whose payload is not a kombu envelope (written by a raw client, a broken producer, an
//! attacker: not JSON, a BLOB, text that is not UTF-8, too long) never make a take fail and are
//! never dropped or stranded: a consumer gets the good messages around them in order, one
//! `DeadLettered` error item per hostile row, and `<queue>.dlq` holds each one's bytes unchanged
//! as an ordinary message. Also for a row whose consumer died between the take and the move to
//! the dead-letter queue. Each test on a fresh database file.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kombu_core::dead_letter::{Destination, ORIGINAL_QUEUE, REASON, TRANSPORT};
use kombu_core::{Connection, Consumer, ErrorKind, Headers, Queue, Value};
use rusqlite::params;

/// A fresh database file and its URL with `extra` options.
fn fresh(extra: &str) -> (std::path::PathBuf, String) {
    kombu_sqlite::register();
    let path = std::env::temp_dir().join(format!(
        "kombu-sqlite-unreadable-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let url = format!(
        "sqlite://{}?visibility_timeout=1&polling_interval=0.05{extra}",
        path.display()
    );
    (path, url)
}

fn remove(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// How a hostile payload is stored.
enum Stored {
    /// As TEXT (bytes as given, UTF-8 or not).
    Text(Vec<u8>),
    /// As a BLOB.
    Blob(Vec<u8>),
}

impl Stored {
    fn bytes(&self) -> &[u8] {
        match self {
            Stored::Text(b) | Stored::Blob(b) => b,
        }
    }
}

fn envelope_text(body: &str, encoding: &str) -> Vec<u8> {
    format!(
        r#"{{"body": "{body}", "content-encoding": "utf-8", "content-type": "text/plain", "headers": {{}}, "properties": {{"body_encoding": "{encoding}", "delivery_info": {{"exchange": "", "routing_key": "jobs"}}, "delivery_mode": 2, "priority": 0, "delivery_tag": "t"}}}}"#
    )
    .into_bytes()
}

/// What a broken or hostile producer may leave in a queue.
fn hostile() -> Vec<(&'static str, Stored)> {
    let depth = 100_000;
    let mut deep = b"{\"headers\": ".to_vec();
    deep.extend(std::iter::repeat_n(b'[', depth));
    deep.extend(std::iter::repeat_n(b']', depth));
    deep.push(b'}');
    vec![
        ("not JSON", Stored::Text(b"this is not JSON".to_vec())),
        ("a JSON array", Stored::Text(b"[1, 2, 3]".to_vec())),
        (
            "invalid base64",
            Stored::Text(envelope_text("!!not base64!!", "base64")),
        ),
        (
            "unknown body_encoding",
            Stored::Text(envelope_text("aGVsbG8=", "rot13")),
        ),
        ("100,000-deep nesting", Stored::Text(deep)),
        ("a BLOB", Stored::Blob(b"\x00\x01\xff binary".to_vec())),
        (
            "text that is not UTF-8",
            Stored::Text(b"{\"body\": \"\xff\xfe\"}".to_vec()),
        ),
        // A readable envelope stored as a BLOB is hostile only by its bytes: readable.
    ]
}

/// Inserts `payload` into `queue` as a publish does (visible, no timestamp), or as a take
/// that died left it (`leased_until`: invisible with a lease).
fn insert(db: &rusqlite::Connection, queue: &str, payload: &Stored, leased_until: Option<f64>) {
    let visible = leased_until.is_none();
    let sql = match payload {
        Stored::Text(_) => {
            "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id, lease_until) \
             VALUES (?1, NULL, CAST(?2 AS TEXT), 2, (SELECT id FROM kombu_queue WHERE name = ?3), ?4)"
        }
        Stored::Blob(_) => {
            "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id, lease_until) \
             VALUES (?1, NULL, ?2, 2, (SELECT id FROM kombu_queue WHERE name = ?3), ?4)"
        }
    };
    db.execute(sql, params![visible, payload.bytes(), queue, leased_until])
        .expect("insert a row");
}

fn open_raw(path: &std::path::Path) -> rusqlite::Connection {
    let db = rusqlite::Connection::open(path).expect("open the file");
    db.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    db
}

/// Rows of `queue`: (visible, invisible).
fn rows(db: &rusqlite::Connection, queue: &str) -> (i64, i64) {
    db.query_row(
        "SELECT COALESCE(SUM(visible = 1), 0), COALESCE(SUM(visible = 0), 0) FROM kombu_message \
         WHERE queue_id = (SELECT id FROM kombu_queue WHERE name = ?1)",
        [queue],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .expect("count rows")
}

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

fn assert_dead_letter(body: &[u8], headers: &Headers, queue: &str, raw: &[u8], what: &str) {
    assert_eq!(body, raw, "{what}: the body is the stored bytes");
    assert_eq!(headers.get(ORIGINAL_QUEUE), Some(&Value::from(queue)));
    assert_eq!(headers.get(TRANSPORT), Some(&Value::from("sqlite")));
    assert!(
        matches!(headers.get(REASON), Some(Value::String(r)) if r.starts_with("unreadable envelope")),
        "{what}: {:?}",
        headers.get(REASON)
    );
}

#[tokio::test]
async fn hostile_rows_go_to_the_dead_letter_queue_byte_for_byte() {
    let (path, url) = fresh("");
    let conn = Connection::open(&url).await.expect("open");
    conn.declare_queue(&Queue::new("jobs"))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key("jobs");
    producer.publish("first").await.expect("publish");
    let db = open_raw(&path);
    let hostile = hostile();
    for (_, payload) in &hostile {
        insert(&db, "jobs", payload, None);
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
    for ((body, headers), (what, payload)) in letters.iter().zip(&hostile) {
        assert_dead_letter(body, headers, "jobs", payload.bytes(), what);
    }
    conn.close().await.expect("close");
    assert_eq!(
        rows(&db, "jobs"),
        (0, 0),
        "the queue is empty, nothing unacked"
    );
    assert_eq!(rows(&db, "jobs.dlq"), (0, 0));
    drop(db);
    remove(&path);
}

#[tokio::test]
async fn an_oversize_row_is_not_parsed_but_kept_whole() {
    let (path, url) = fresh("&max_payload_size=2000");
    let conn = Connection::open(&url).await.expect("open");
    conn.declare_queue(&Queue::new("big"))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key("big");
    producer.publish("first").await.expect("publish");
    let db = open_raw(&path);
    // A well-formed envelope, but longer than the bound.
    let body = "a".repeat(3000);
    let oversize = Stored::Text(envelope_text(&body, "utf-8"));
    insert(&db, "big", &oversize, None);
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
    assert!(
        notices[0].to_string().contains("max_payload_size"),
        "{}",
        notices[0]
    );
    consumer.close().await.expect("close");
    // Read through kombu, as `kombu dlq list` does: the dead letter (base64 of the row) is
    // itself over this test's small bound, and a dead-letter queue is not bounded again, so
    // it is read where it is instead of being moved one queue deeper.
    let channel = conn.channel().await.expect("channel");
    let letter = channel
        .get("big.dlq", false)
        .await
        .expect("get")
        .expect("the dead letter is readable in big.dlq");
    assert_dead_letter(
        letter.body(),
        letter.headers(),
        "big",
        oversize.bytes(),
        "oversize",
    );
    letter.ack().await.expect("ack");
    channel.close().await.expect("close");
    conn.close().await.expect("close");
    assert_eq!(rows(&db, "big.dlq"), (0, 0), "nothing moved deeper");
    assert_eq!(rows(&db, "big.dlq.dlq"), (0, 0), "nothing moved deeper");
    assert_eq!(rows(&db, "big"), (0, 0));
    drop(db);
    remove(&path);
}

#[tokio::test]
async fn a_no_ack_consumer_sets_hostile_rows_aside_too() {
    let (path, url) = fresh("");
    let conn = Connection::open(&url).await.expect("open");
    conn.declare_queue(&Queue::new("fast"))
        .await
        .expect("declare");
    let producer = conn.producer().routing_key("fast");
    producer.publish("first").await.expect("publish");
    let db = open_raw(&path);
    let blob = Stored::Blob(b"\x00garbage".to_vec());
    insert(&db, "fast", &blob, None);
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
    assert_dead_letter(&letters[0].0, &letters[0].1, "fast", blob.bytes(), "BLOB");
    conn.close().await.expect("close");
    assert_eq!(rows(&db, "fast"), (0, 0));
    drop(db);
    remove(&path);
}

/// A consumer that took an unreadable row and died before moving it aside leaves it
/// invisible with a lease that ends: it comes back and the next consumer moves it aside.
#[tokio::test]
async fn an_unreadable_row_of_a_dead_consumer_comes_back() {
    let (path, url) = fresh("");
    let conn = Connection::open(&url).await.expect("open");
    conn.declare_queue(&Queue::new("orphans"))
        .await
        .expect("declare");
    let db = open_raw(&path);
    let hostile = Stored::Text(b"\xfe\xff not an envelope".to_vec());
    let long_ago = kombu_core::transport::unix_now() - 60.0;
    insert(&db, "orphans", &hostile, Some(long_ago));
    assert_eq!(rows(&db, "orphans"), (0, 1));

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
    assert_dead_letter(
        &letters[0].0,
        &letters[0].1,
        "orphans",
        hostile.bytes(),
        "orphan",
    );
    conn.close().await.expect("close");
    assert_eq!(rows(&db, "orphans"), (0, 0));
    drop(db);
    remove(&path);
}
