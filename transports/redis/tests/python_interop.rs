//! Python kombu (its Redis transport) and kombu-rs on one Redis, both ways.
//!
//! `interop/redis_interop.py` is Python's side. Every test uses its own `global_keyprefix` (a
//! UUID) on both sides, so the tests run in parallel on one server without sharing a key.
//! Covered: every serializer and compression kombu ships (json with nested values, headers and
//! properties, text, raw bytes, msgpack, yaml; zlib, bzip2, lzma, brotli, zstd), direct and
//! topic routing with the bindings declared on one side and the publisher on the other, kombu's
//! priority order (lower numbers first), fanout over PUB/SUB, mandatory publishes to queues Python
//! declared, Python's non-finite JSON, and Python reading the dead letters kombu-rs made of
//! unreadable entries. Acks across sides and recovery after a crash are in
//! `python_recovery.rs`.
//!
//! The server is `$KOMBU_REDIS_URL` (default `redis://127.0.0.1:6379/0`; scripts/test starts
//! one). The Python interpreter is `$KOMBU_PYTHON` (scripts/python-env makes a venv with kombu
//! and redis-py), else `~/.cache/kombu-rs/venv/bin/python` when it exists. Without one the tests
//! fail when `KOMBU_TEST_REQUIRE` is set (as in CI) and are skipped with a message otherwise.

use kombu_test_support::interop::*;
use kombu_test_support::python;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kombu_core::{Binding, Connection, Delivery, Exchange, Queue};
use serde_json::{Value as Json, json};

mod python_support;
use python_support::*;

#[tokio::test]
async fn python_publishes_rust_consumes() {
    let Some(python) = python() else { return };
    let space = Space::new("py2rs");
    let published = space.python(&python, "publish", &["py2rs"]);
    assert_eq!(published["published"], 10);

    let conn = open(&space.url("")).await;
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
        nothing_within(&mut consumer, Duration::from_millis(300)).await,
        None
    );
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size("py2rs").await.expect("size"), 0);
    let left = space.python(&python, "drain", &["py2rs"]);
    assert_eq!(left["messages"], json!([]), "Python sees what Rust acked");
    space.clean().await;
}

/// Publishes one message of every case (10) from Rust to `queue` through the default exchange.
#[tokio::test]
async fn rust_publishes_python_consumes() {
    let Some(python) = python() else { return };
    let space = Space::new("rs2py");
    let conn = open(&space.url("")).await;
    publish_cases(&conn, "rs2py", None).await;
    assert_eq!(conn.queue_size("rs2py").await.expect("size"), 10);

    let out = space.python(&python, "consume", &["rs2py", "10"]);
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
    space.clean().await;
}

fn via_and_key(d: &Delivery) -> (String, String) {
    let body = d.decode::<Json>().expect("decode");
    assert_eq!(body["rk"], d.routing_key(), "{body}");
    (
        body["via"].as_str().expect("via").to_owned(),
        d.routing_key().to_owned(),
    )
}

#[tokio::test]
async fn python_bindings_route_rust_publishes() {
    let Some(python) = python() else { return };
    let space = Space::new("pybind");
    space.python(&python, "bind", &[]);
    let conn = open(&space.url("")).await;
    // Publishers name the exchange type they expect (kombu keeps types in memory).
    conn.producer()
        .exchange(Exchange::direct("py.direct"))
        .message(&json!({"via": "py.direct", "rk": "rk.direct"}))
        .routing_key("rk.direct")
        .send()
        .await
        .expect("publish direct");
    conn.producer()
        .exchange(Exchange::direct("py.direct"))
        .message(&json!({"via": "py.direct", "rk": "rk.other"}))
        .routing_key("rk.other")
        .send()
        .await
        .expect("publish direct, unbound key");
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

    let mut d_consumer = cases_consumer(&conn, "pyd").await;
    let d = next_delivery(&mut d_consumer).await;
    assert_eq!(d.exchange(), "py.direct");
    assert_eq!(
        via_and_key(&d),
        ("py.direct".to_owned(), "rk.direct".to_owned())
    );
    d.ack().await.expect("ack");
    d_consumer.close().await.expect("close");

    let mut t_consumer = cases_consumer(&conn, "pyt").await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut t_consumer).await;
        assert_eq!(d.exchange(), "py.topic");
        let (via, key) = via_and_key(&d);
        assert_eq!(via, "py.topic");
        keys.push(key);
        d.ack().await.expect("ack");
    }
    assert_eq!(sorted(keys), ["fx.spot.eur", "stock.nyse.usd"]);
    assert_eq!(
        nothing_within(&mut t_consumer, Duration::from_millis(300)).await,
        None
    );
    t_consumer.close().await.expect("close");
    space.clean().await;
}

#[tokio::test]
async fn rust_bindings_route_python_publishes() {
    let Some(python) = python() else { return };
    let space = Space::new("rsbind");
    let conn = open(&space.url("")).await;
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

    let out = space.python(&python, "publish_routed", &[]);
    assert_eq!(out["published"], 4);
    assert_eq!(conn.queue_size("rsd").await.expect("size"), 1);
    assert_eq!(conn.queue_size("rst").await.expect("size"), 2);

    let mut d_consumer = cases_consumer(&conn, "rsd").await;
    let d = next_delivery(&mut d_consumer).await;
    assert_eq!(d.exchange(), "rs.direct");
    assert_eq!(
        via_and_key(&d),
        ("rs.direct".to_owned(), "rk.direct".to_owned())
    );
    d.ack().await.expect("ack");
    d_consumer.close().await.expect("close");

    let mut t_consumer = cases_consumer(&conn, "rst").await;
    let mut keys = Vec::new();
    for _ in 0..2 {
        let d = next_delivery(&mut t_consumer).await;
        assert_eq!(d.exchange(), "rs.topic");
        keys.push(via_and_key(&d).1);
        d.ack().await.expect("ack");
    }
    assert_eq!(sorted(keys), ["fx.spot.eur", "stock.nyse.usd"]);
    assert_eq!(
        nothing_within(&mut t_consumer, Duration::from_millis(300)).await,
        None
    );
    t_consumer.close().await.expect("close");
    space.clean().await;
}

const PUBLISH_ORDER: [u8; 7] = [0, 1, 3, 5, 6, 9, 2];
/// kombu's order for the default steps 0,3,6,9: bucket by bucket, lowest first, FIFO inside.
const KOMBU_ORDER: [u8; 7] = [0, 1, 2, 3, 5, 6, 9];

#[tokio::test]
async fn python_priorities_consumed_in_kombus_order_by_rust() {
    let Some(python) = python() else { return };
    let space = Space::new("pypri");
    let args: Vec<String> = std::iter::once("pri".to_owned())
        .chain(PUBLISH_ORDER.iter().map(u8::to_string))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    space.python(&python, "priorities", &args);

    let conn = open(&space.url("")).await;
    let mut consumer = cases_consumer(&conn, "pri").await;
    let mut order = Vec::new();
    for _ in 0..PUBLISH_ORDER.len() {
        let d = next_delivery(&mut consumer).await;
        let p = d.decode::<Json>().expect("decode")["p"]
            .as_u64()
            .expect("p");
        assert_eq!(d.properties().priority, Some(p as u8));
        order.push(p as u8);
        d.ack().await.expect("ack");
    }
    assert_eq!(order, KOMBU_ORDER);
    consumer.close().await.expect("close");
    space.clean().await;
}

#[tokio::test]
async fn rust_priorities_consumed_in_kombus_order_by_python() {
    let Some(python) = python() else { return };
    let space = Space::new("rspri");
    let conn = open(&space.url("")).await;
    let producer = conn
        .producer()
        .routing_key("pri")
        .declare(Queue::new("pri"));
    for p in PUBLISH_ORDER {
        producer
            .message(&json!({ "p": p }))
            .priority(p)
            .send()
            .await
            .expect("publish");
    }
    let out = space.python(&python, "drain", &["pri"]);
    let order: Vec<u64> = out["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert_eq!(m["properties"]["priority"], m["payload"]["p"], "{m}");
            m["payload"]["p"].as_u64().expect("p")
        })
        .collect();
    let expected: Vec<u64> = KOMBU_ORDER.iter().map(|p| u64::from(*p)).collect();
    assert_eq!(order, expected, "{out}");
    space.clean().await;
}

/// Fanout over PUB/SUB, kombu's way: a Python consumer of a queue bound to a fanout exchange
/// gets what kombu-rs publishes to it.
#[tokio::test]
async fn rust_fanout_publishes_reach_python_subscribers() {
    let Some(python) = python() else { return };
    let space = Space::new("fanout-rs-py");
    let mut child = Command::new(&python)
        .arg(script())
        .args(["fanout_consume", &space.prefix, "bcast", "py-fq", "3"])
        .env("KOMBU_REDIS_URL", server())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python consumer");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.trim() == "READY" {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the Python consumer subscribed");

    let conn = open(&space.url("")).await;
    let x = Exchange::fanout("bcast");
    conn.declare_exchange(&x).await.expect("declare");
    let producer = conn.producer().exchange(x);
    for i in 0..3 {
        producer.publish(&json!({"i": i})).await.expect("publish");
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("the Python consumer ran");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Json = serde_json::from_slice(&out.stdout).expect("JSON");
    let bodies: Vec<Json> = got["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["payload"].clone())
        .collect();
    assert_eq!(bodies, [json!({"i": 0}), json!({"i": 1}), json!({"i": 2})]);
    space.clean().await;
}

/// And the other way: a kombu-rs queue bound to a fanout exchange gets Python's publishes.
#[tokio::test]
async fn python_fanout_publishes_reach_rust_subscribers() {
    let Some(python) = python() else { return };
    let space = Space::new("fanout-py-rs");
    let conn = open(&space.url("")).await;
    let q = Queue::new("rs-fq").exchange(Exchange::fanout("bcast"));
    let mut consumer = conn
        .consumer([q])
        .accept(["json"])
        .build()
        .await
        .expect("consume");
    let published = space.python(&python, "fanout_publish", &["bcast", "3"]);
    assert_eq!(published["published"], 3);
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut consumer).await;
        got.push(d.decode::<Json>().expect("decode"));
        d.ack().await.expect("ack");
    }
    assert_eq!(got, [json!({"i": 0}), json!({"i": 1}), json!({"i": 2})]);
    consumer.close().await.expect("close");
    space.clean().await;
}

/// Publishes `{"via": "rust", "text": text}` to `queue` through the default exchange with
/// `mandatory`.
async fn mandatory(conn: &Connection, queue: &str, text: &str) -> kombu_core::Result<()> {
    conn.producer()
        .message(&json!({"via": "rust", "text": text}))
        .routing_key(queue.to_owned())
        .mandatory(true)
        .send()
        .await
}

/// Queues Python kombu declared are reachable from Rust through the default exchange with
/// `mandatory`, without kombu-rs having declared them: one bound to an exchange (kombu keeps
/// only its binding; no list exists while it is empty) and one that only has a list. `size`,
/// `purge` and consuming (without declaring) work on both. A name that exists nowhere is
/// stored without `mandatory`, as kombu stores it, and Python drains it.
#[tokio::test]
async fn python_declared_queues_take_mandatory_default_exchange_publishes() {
    let Some(python) = python() else { return };
    let space = Space::new("pydecl");
    space.python(&python, "bind", &[]);
    space.python(&python, "put", &["pylist", "from-python"]);
    let conn = open(&space.url("")).await;

    // Bound by Python only: no list, not in kombu-rs's registry.
    assert!(conn.queue_exists("pyd").await.expect("exists"));
    assert_eq!(conn.queue_size("pyd").await.expect("size"), 0);
    mandatory(&conn, "pyd", "to-bound")
        .await
        .expect("publish to pyd");
    assert_eq!(conn.queue_size("pyd").await.expect("size"), 1);
    // A list only.
    assert!(conn.queue_exists("pylist").await.expect("exists"));
    assert_eq!(conn.queue_size("pylist").await.expect("size"), 1);
    mandatory(&conn, "pylist", "to-list")
        .await
        .expect("publish to pylist");
    assert_eq!(conn.queue_size("pylist").await.expect("size"), 2);

    for (queue, expected) in [
        ("pyd", vec![json!({"via": "rust", "text": "to-bound"})]),
        (
            "pylist",
            vec![
                json!("from-python"),
                json!({"via": "rust", "text": "to-list"}),
            ],
        ),
    ] {
        let mut consumer = conn
            .consumer([Queue::new(queue)])
            .declare(false)
            .build()
            .await
            .expect("consume without declaring");
        for want in expected {
            let d = next_delivery(&mut consumer).await;
            assert_eq!(d.decode::<Json>().expect("decode"), want, "{queue}");
            d.ack().await.expect("ack");
        }
        consumer.close().await.expect("close");
    }
    // Python's bound queue still routes from its exchange, and Python reads what Rust sent.
    mandatory(&conn, "pyd", "for-python")
        .await
        .expect("publish to pyd");
    let out = space.python(&python, "drain", &["pyd"]);
    assert_eq!(out["messages"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(
        conn.purge("pyd").await.expect("purge an empty bound queue"),
        0
    );

    // A name that exists nowhere (refused with mandatory, NotFound sizes: the conformance
    // suite's `missing_queue`): stored without mandatory, where Python kombu finds it.
    assert!(!conn.queue_exists("nowhere").await.expect("exists"));
    conn.producer()
        .message(&"kept")
        .routing_key("nowhere")
        .send()
        .await
        .expect("a publish without mandatory");
    assert_eq!(conn.queue_size("nowhere").await.expect("size"), 1);
    let out = space.python(&python, "drain", &["nowhere"]);
    assert_eq!(out["messages"].as_array().map(Vec::len), Some(1), "{out}");
    space.clean().await;
}

/// A message Python kombu published with `NaN`, `Infinity`, `-Infinity` and a lone surrogate
/// in its headers and JSON body (what `json.dumps` writes, not RFC JSON) is delivered to a
/// Rust consumer, read as documented: non-finite `Value::Float`s in headers and body, `null`
/// in a `serde_json::Value`, U+FFFD for the surrogate.
#[tokio::test]
async fn python_non_finite_json_reaches_rust() {
    use kombu_core::Value;
    use std::collections::BTreeMap;
    let Some(python) = python() else { return };
    let space = Space::new("nonfinite");
    space.python(&python, "nonfinite", &["pynan"]);
    let conn = open(&space.url("")).await;
    assert_eq!(conn.queue_size("pynan").await.expect("size"), 1);
    let mut consumer = cases_consumer(&conn, "pynan").await;
    let d = next_delivery(&mut consumer).await;
    let headers = d.headers();
    assert!(
        matches!(headers.get("score"), Some(Value::Float(f)) if f.is_nan()),
        "{headers:?}"
    );
    assert_eq!(headers.get("hi"), Some(&Value::Float(f64::INFINITY)));
    assert_eq!(headers.get("lo"), Some(&Value::Float(f64::NEG_INFINITY)));
    assert_eq!(headers.get("who"), Some(&Value::from("a\u{fffd}b")));
    let body: BTreeMap<String, Value> = d.decode().expect("decode into kombu values");
    assert!(
        matches!(body["x"], Value::Float(f) if f.is_nan()),
        "{body:?}"
    );
    assert_eq!(body["hi"], Value::Float(f64::INFINITY));
    assert_eq!(body["lo"], Value::Float(f64::NEG_INFINITY));
    assert_eq!(body["s"], Value::from("a\u{fffd}b"));
    let tree: Json = d.decode().expect("decode into serde_json::Value");
    assert_eq!(
        tree,
        json!({"x": null, "hi": null, "lo": null, "s": "a\u{fffd}b", "n": 1})
    );
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size("pynan").await.expect("size"), 0);
    space.clean().await;
}

/// An entry that is not a kombu envelope is moved by kombu-rs to `<queue>.dlq`, where Python
/// kombu reads it as an ordinary message: the stored bytes as its body, the reason in headers.
#[tokio::test]
async fn python_reads_the_dead_letters_of_unreadable_entries() {
    use base64::Engine as _;
    use futures::StreamExt as _;

    let Some(python) = python() else { return };
    let space = Space::new("dlq");
    let conn = open(&space.url("")).await;
    conn.declare_queue(&Queue::new("dlq"))
        .await
        .expect("declare");
    let raw: &[u8] = b"\xff not an envelope";
    let client = redis::Client::open(server()).expect("client");
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let _: i64 = redis::cmd("LPUSH")
        .arg(format!("{}dlq", space.prefix))
        .arg(raw)
        .query_async(&mut admin)
        .await
        .expect("LPUSH");
    let mut consumer = conn
        .consumer([Queue::new("dlq")])
        .build()
        .await
        .expect("consumer");
    let item = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("an item")
        .expect("the stream goes on");
    let err = item.expect_err("a dead-letter notice");
    assert_eq!(err.error.kind(), kombu_core::ErrorKind::DeadLettered);
    consumer.close().await.expect("close");

    let read = space.python(&python, "dead_letters", &["dlq.dlq"]);
    let messages = read["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 1, "{read}");
    let letter = &messages[0];
    assert_eq!(
        letter["body_b64"],
        json!(base64::engine::general_purpose::STANDARD.encode(raw))
    );
    assert_eq!(letter["content_type"], "application/octet-stream");
    assert_eq!(letter["headers"]["x-kombu-original-queue"], "dlq");
    assert_eq!(letter["headers"]["x-kombu-transport"], "redis");
    space.clean().await;
}
