//! Python kombu (its MongoDB transport, pymongo) and kombu-rs on one database, both ways: the
//! messages themselves. `python_settlement.rs` has expiry and settlement across the sides.
//!
//! `interop/mongo_interop.py` is Python's side. Every test uses a database of its own
//! (`support::fresh_database`), which both sides name in their URLs (kombu takes the database
//! from the URL's path), and drops it when it passes. Covered: every serializer and compression
//! kombu ships (json with nested values, headers and properties, text, raw bytes, msgpack, yaml;
//! zlib (kombu's `gzip` is its alias), bzip2, lzma, brotli, zstd; pickle, read-only, when
//! kombu-rs is built with its `pickle` feature), direct and topic routing with the bindings
//! declared on one side and the publisher on the other (kombu routes topic bindings with the
//! `pattern` regular expression of their routing documents), priorities (highest first, both
//! ways), and fanout through the capped broadcast collection both ways.
//!
//! The server is `$KOMBU_TEST_MONGODB_URL` (scripts/test starts a SecantusDB); the Python
//! interpreter is `$KOMBU_PYTHON` (scripts/python-env makes a venv with kombu and pymongo), else
//! `~/.cache/kombu-rs/venv/bin/python` when it exists. Without either the tests fail when
//! `KOMBU_TEST_REQUIRE` is set (as in CI) and are skipped with a message otherwise.

mod python;
mod support;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::process::Stdio;
use std::time::Duration;

use kombu_core::{Binding, Connection, Delivery, Exchange, Queue, Value};
use kombu_test_support::interop::*;
use kombu_test_support::{KillOnDrop, lines};
use serde_json::{Value as Json, json};

use python::{Db, nothing_within};
#[tokio::test]
async fn python_publishes_rust_consumes() {
    let Some(db) = Db::new("py2rs").await else {
        return;
    };
    let published = db.python("publish", &["py2rs"]);
    assert_eq!(published["published"], 10);

    let conn = db.open("").await;
    assert_eq!(conn.queue_size("py2rs").await.expect("size"), 10);
    let mut consumer = cases_consumer(&conn, "py2rs").await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let d = next_delivery(&mut consumer).await;
        let case = case_of(&d);
        assert!(!d.redelivered(), "{case}: a first delivery");
        assert_eq!(d.exchange(), "", "{case}");
        assert_eq!(d.routing_key(), "py2rs", "{case}");
        check_case(&d, &case);
        seen.push(case);
        d.ack().await.expect("ack");
    }
    assert_eq!(sorted(seen), CASES, "every message exactly once");
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_millis(500)).await,
        None
    );
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size("py2rs").await.expect("size"), 0);
    assert_eq!(db.python_size("py2rs"), 0, "Python counts what Rust acked");
    assert_eq!(db.python_drain("py2rs"), Vec::<Json>::new());
    conn.close().await.expect("close");
    db.drop_database().await;
}

/// pickle is read-only in kombu-rs, and only with kombu-serializers' `pickle` feature (the
/// facade's `pickle`; kombu-test-support turns it on for the tests): without it the test says
/// so and checks nothing.
#[tokio::test]
async fn python_pickle_is_read_when_the_feature_is_on() {
    let Some(db) = Db::new("pypickle").await else {
        return;
    };
    let conn = db.open("").await;
    if conn.registry().serializer("pickle").is_err() {
        eprintln!("python_pickle_is_read_when_the_feature_is_on: skipped, no pickle feature");
        return;
    }
    db.python("publish_pickle", &["pypickle"]);
    let mut consumer = conn
        .consumer([Queue::new("pypickle")])
        .accept(["pickle"])
        .build()
        .await
        .expect("consume");
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.content_type(), Some("application/x-python-serialize"));
    assert_eq!(case_of(&d), "pickle");
    let body: BTreeMap<String, Value> = d.decode().expect("decode pickle");
    assert_eq!(
        body.get("b"),
        Some(&Value::Bytes(vec![1, 2, 0xff])),
        "{body:?}"
    );
    assert_eq!(body.get("n"), Some(&Value::Int(1)), "{body:?}");
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
    conn.close().await.expect("close");
    db.drop_database().await;
}

#[tokio::test]
async fn rust_publishes_python_consumes() {
    let Some(db) = Db::new("rs2py").await else {
        return;
    };
    let conn = db.open("").await;
    publish_cases(&conn, "rs2py", None).await;
    assert_eq!(conn.queue_size("rs2py").await.expect("size"), 10);
    assert_eq!(db.python_size("rs2py"), 10);

    let out = db.python("consume", &["rs2py", "10", "60"]);
    let messages = out["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 10, "Python consumed every message: {out}");
    let mut seen = Vec::new();
    for m in messages {
        let case = check_read_by_python(m, "rs2py", |m| {
            assert_eq!(m["properties"]["delivery_mode"], 2, "{m}");
        });
        seen.push(case);
    }
    assert_eq!(sorted(seen), CASES);
    assert_eq!(conn.queue_size("rs2py").await.expect("size"), 0);
    conn.close().await.expect("close");
    db.drop_database().await;
}

// --- routing -------------------------------------------------------------------------------

fn via_and_key(d: &Delivery) -> (String, String) {
    let body = d.decode::<Json>().expect("decode");
    assert_eq!(body["rk"], d.routing_key(), "{body}");
    (
        body["via"].as_str().expect("via").to_owned(),
        d.routing_key().to_owned(),
    )
}

/// Every delivery of `queue` (checked to come from `exchange`) until it is quiet: the routing
/// keys, sorted.
async fn routed_keys(conn: &Connection, queue: &str, exchange: &str, n: usize) -> Vec<String> {
    let mut consumer = cases_consumer(conn, queue).await;
    let mut keys = Vec::new();
    for _ in 0..n {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.exchange(), exchange);
        let (via, key) = via_and_key(&d);
        assert_eq!(via, exchange);
        keys.push(key);
        d.ack().await.expect("ack");
    }
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_millis(500)).await,
        None,
        "{queue}: nothing else routed"
    );
    consumer.close().await.expect("close");
    sorted(keys)
}

#[tokio::test]
async fn python_bindings_route_rust_publishes() {
    let Some(db) = Db::new("pybind").await else {
        return;
    };
    db.python("bind", &[]);
    let conn = db.open("").await;
    // Publishers name the exchange type they expect (kombu keeps types in memory).
    let direct = conn.producer().exchange(Exchange::direct("py.direct"));
    for rk in ["rk.direct", "rk.other"] {
        direct
            .message(&json!({"via": "py.direct", "rk": rk}))
            .routing_key(rk)
            .send()
            .await
            .expect("publish direct");
    }
    let topic = conn.producer().exchange(Exchange::topic("py.topic"));
    for rk in [
        "stock.nyse.usd",
        "stock.usd",
        "fx.spot.eur",
        "stock.nyse.usd.x",
    ] {
        topic
            .message(&json!({"via": "py.topic", "rk": rk}))
            .routing_key(rk)
            .send()
            .await
            .expect("publish topic");
    }
    assert_eq!(conn.queue_size("pyd").await.expect("size"), 1);
    assert_eq!(conn.queue_size("pyt").await.expect("size"), 2);
    assert_eq!(
        routed_keys(&conn, "pyd", "py.direct", 1).await,
        ["rk.direct"]
    );
    assert_eq!(
        routed_keys(&conn, "pyt", "py.topic", 2).await,
        ["fx.spot.eur", "stock.nyse.usd"]
    );
    conn.close().await.expect("close");
    db.drop_database().await;
}

#[tokio::test]
async fn rust_bindings_route_python_publishes() {
    let Some(db) = Db::new("rsbind").await else {
        return;
    };
    let conn = db.open("").await;
    conn.declare_exchange(&Exchange::direct("rs.direct"))
        .await
        .expect("declare direct");
    conn.declare_exchange(&Exchange::topic("rs.topic"))
        .await
        .expect("declare topic");
    conn.declare_queue(
        &Queue::new("rsd")
            .exchange(Exchange::direct("rs.direct"))
            .routing_key("rk.direct"),
    )
    .await
    .expect("declare rsd");
    conn.declare_queue(
        &Queue::new("rst")
            .bind(Binding::new("rs.topic", "stock.*.usd"))
            .bind(Binding::new("rs.topic", "#.eur")),
    )
    .await
    .expect("declare rst");

    // Python routes with the routing documents Rust wrote (kombu: `pattern` for topic).
    let out = db.python("publish_routed", &[]);
    assert_eq!(out["published"], 4);
    assert_eq!(conn.queue_size("rsd").await.expect("size"), 1);
    assert_eq!(conn.queue_size("rst").await.expect("size"), 2);
    assert_eq!(
        routed_keys(&conn, "rsd", "rs.direct", 1).await,
        ["rk.direct"]
    );
    assert_eq!(
        routed_keys(&conn, "rst", "rs.topic", 2).await,
        ["fx.spot.eur", "stock.nyse.usd"]
    );
    conn.close().await.expect("close");
    db.drop_database().await;
}

// --- priorities ----------------------------------------------------------------------------

/// Every priority, mixed, some twice.
const PUBLISH_ORDER: [u8; 12] = [3, 0, 9, 5, 1, 8, 2, 7, 4, 6, 9, 0];

/// kombu's MongoDB order: highest priority first (stored as `9 - p`, sorted ascending), FIFO
/// among equals: `(p, i)` with `i` the publish index.
fn mongo_order() -> Vec<(u64, u64)> {
    let mut order: Vec<(u64, u64)> = PUBLISH_ORDER
        .iter()
        .enumerate()
        .map(|(i, p)| (u64::from(*p), i as u64))
        .collect();
    order.sort_by_key(|(p, i)| (std::cmp::Reverse(*p), *i));
    order
}

#[tokio::test]
async fn python_priorities_consumed_highest_first_by_rust() {
    let Some(db) = Db::new("pypri").await else {
        return;
    };
    let args: Vec<String> = std::iter::once("pri".to_owned())
        .chain(PUBLISH_ORDER.iter().map(u8::to_string))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    db.python("priorities", &args);

    let conn = db.open("").await;
    let mut consumer = cases_consumer(&conn, "pri").await;
    let mut order = Vec::new();
    for _ in 0..PUBLISH_ORDER.len() {
        let d = next_delivery(&mut consumer).await;
        let body = d.decode::<Json>().expect("decode");
        let (p, i) = (
            body["p"].as_u64().expect("p"),
            body["i"].as_u64().expect("i"),
        );
        assert_eq!(d.properties().priority.map(u64::from), Some(p));
        order.push((p, i));
        d.ack().await.expect("ack");
    }
    assert_eq!(order, mongo_order());
    consumer.close().await.expect("close");
    conn.close().await.expect("close");
    db.drop_database().await;
}

#[tokio::test]
async fn rust_priorities_consumed_highest_first_by_python() {
    let Some(db) = Db::new("rspri").await else {
        return;
    };
    let conn = db.open("").await;
    let producer = conn
        .producer()
        .routing_key("pri")
        .declare(Queue::new("pri"));
    for (i, p) in PUBLISH_ORDER.iter().enumerate() {
        producer
            .message(&json!({ "p": p, "i": i }))
            .priority(*p)
            .send()
            .await
            .expect("publish");
    }
    let out = db.python("drain", &["pri"]);
    let order: Vec<u64> = out["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert_eq!(m["properties"]["priority"], m["payload"]["p"], "{m}");
            m["payload"]["p"].as_u64().expect("p")
        })
        .collect();
    // kombu sorts on the stored priority alone: the order among equals is the server's.
    let expected: Vec<u64> = mongo_order().into_iter().map(|(p, _)| p).collect();
    assert_eq!(order, expected, "{out}");
    conn.close().await.expect("close");
    db.drop_database().await;
}

// --- fanout --------------------------------------------------------------------------------

/// Rust fanout publishes reach a Python consumer of a queue bound to the exchange in its
/// process (its tailable cursor, opened at the bind, sees what is inserted after).
#[tokio::test]
async fn rust_fanout_publishes_reach_python_subscribers() {
    let Some(db) = Db::new("fanrs2py").await else {
        return;
    };
    // Rust first: the broadcast collection and kombu's indexes exist before Python binds.
    let conn = db.open("").await;
    let x = Exchange::fanout("bcast");
    conn.declare_exchange(&x).await.expect("declare");
    let mut child = db
        .command("fanout_consume", &["bcast", "py-fq", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python consumer");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = lines(child.stderr.take().expect("stderr"));
    let mut child = KillOnDrop(child);
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut text);
        text
    });
    let mut log = Vec::new();
    loop {
        let line = stderr
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("the Python consumer did not bind ({e}): {log:?}"));
        if line.trim() == "READY" {
            break;
        }
        log.push(line);
    }

    let producer = conn.producer().exchange(x);
    for i in 0..3 {
        producer.publish(&json!({"i": i})).await.expect("publish");
    }
    let status = tokio::task::spawn_blocking(move || child.0.wait())
        .await
        .expect("join")
        .expect("the Python consumer ran");
    let stdout = reader.join().unwrap_or_default();
    let stderr: Vec<String> = stderr.try_iter().collect();
    assert!(status.success(), "{stderr:?}");
    let got: Json = serde_json::from_str(&stdout).expect("JSON");
    let bodies: Vec<Json> = got["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert_eq!(m["delivery_info"]["exchange"], "bcast", "{m}");
            m["payload"].clone()
        })
        .collect();
    assert_eq!(
        bodies,
        [json!({"i": 0}), json!({"i": 1}), json!({"i": 2})],
        "{stderr:?}"
    );
    conn.close().await.expect("close");
    db.drop_database().await;
}

/// Python fanout publishes reach a Rust consumer of a queue bound to the exchange in the Rust
/// process: its tail, positioned in the bind, reads what is inserted after.
#[tokio::test]
async fn python_fanout_publishes_reach_rust_subscribers() {
    let Some(db) = Db::new("fanpy2rs").await else {
        return;
    };
    let conn = db.open("").await;
    let x = Exchange::fanout("bcast");
    conn.declare_exchange(&x).await.expect("declare");
    let q = Queue::new("rs-fq").exchange(x);
    let mut consumer = conn
        .consumer([q])
        .accept(["json"])
        .build()
        .await
        .expect("consume");
    let published = db.python("fanout_publish", &["bcast", "3"]);
    assert_eq!(published["published"], 3);
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.exchange(), "bcast");
        got.push(d.decode::<Json>().expect("decode"));
        d.ack().await.expect("ack");
    }
    assert_eq!(got, [json!({"i": 0}), json!({"i": 1}), json!({"i": 2})]);
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_millis(500)).await,
        None
    );
    consumer.close().await.expect("close");
    conn.close().await.expect("close");
    db.drop_database().await;
}
