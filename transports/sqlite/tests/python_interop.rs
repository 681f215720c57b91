//! Python kombu (SQLAlchemy transport, `sqla+sqlite:///FILE`) and kombu-rs on one SQLite file,
//! both ways.
//!
//! `interop/sqla_interop.py` is Python's side: it publishes one message of every kind (JSON with
//! nested values, text, raw bytes, msgpack, zlib-compressed JSON, headers and properties, and one
//! through a direct exchange) that Rust consumes and checks, and it consumes what Rust published
//! and prints it as JSON for these tests to check. Settlement crosses over too: a message Rust
//! acked is never seen by Python, and a message Python acked (kombu leaves its row invisible)
//! is never delivered by Rust, even after Rust's visibility timeout has passed.
//!
//! The Python interpreter is `$KOMBU_PYTHON` (scripts/python-env makes a venv with kombu and
//! SQLAlchemy), else `~/.cache/kombu-rs/venv/bin/python` when it exists. Without one the tests
//! fail when `KOMBU_TEST_REQUIRE` is set (as in CI) and are skipped with a message otherwise.

use kombu_test_support::interop::*;
use kombu_test_support::python;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use futures::StreamExt;
use kombu_core::{Connection, Consumer, Delivery, DeliveryMode, Exchange, Headers, Queue, Value};
use serde_json::{Value as Json, json};

/// Longest wait for one delivery before the test fails (a guard, not a timing assertion).
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    // The directory cargo runs the test in, read at run time: a test binary compiled in another
    // checkout sharing the target directory would carry that checkout's path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/sqla_interop.py")
}

/// Runs a command of the interop script (blocking; no Rust consumer is running meanwhile).
fn run_python(python: &Path, args: &[&str]) -> Json {
    let out = Command::new(python)
        .arg(script())
        .args(args)
        .output()
        .expect("run the interop script");
    assert!(
        out.status.success(),
        "sqla_interop.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sqla_interop.py {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A fresh directory with a database path in it; removed when the test passes, kept (and its
/// path printed) when it fails.
struct TempDb {
    dir: PathBuf,
    path: PathBuf,
}

impl TempDb {
    fn new(name: &str) -> TempDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "kombu-sqlite-interop-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the temp directory");
        let path = dir.join("broker.db");
        TempDb { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("a UTF-8 temp path")
    }

    /// kombu-rs's URL for the file.
    fn rust_url(&self) -> String {
        format!("sqlite://{}", self.path())
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("database kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

async fn open(url: &str) -> Connection {
    kombu_sqlite::register();
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn consumer(conn: &Connection, queue: &str) -> Consumer {
    conn.consumer([Queue::new(queue)])
        .accept(["json", "msgpack", "text", "raw"])
        .build()
        .await
        .expect("start consuming")
}

async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(DELIVERY_TIMEOUT, consumer.next()).await {
        Err(_) => panic!("no delivery within {DELIVERY_TIMEOUT:?}"),
        Ok(None) => panic!("the delivery stream ended"),
        Ok(Some(Err(e))) => panic!("delivery refused: {e}"),
        Ok(Some(Ok(d))) => d,
    }
}

/// Whether a delivery arrives within `wait`; it is requeued if one does.
async fn nothing_within(consumer: &mut Consumer, wait: Duration) -> Option<String> {
    match tokio::time::timeout(wait, consumer.next()).await {
        Err(_) | Ok(None) => None,
        Ok(Some(Ok(d))) => Some(format!(
            "{d:?} body {:?}",
            String::from_utf8_lossy(&d.decompressed_body().unwrap_or_default())
        )),
        Ok(Some(Err(e))) => Some(format!("error {e}")),
    }
}

/// Checks one of the messages `sqla_interop.py publish` wrote to `queue`; returns its case.
/// `restored`: Python took it and put it back on close, which stores the body decompressed
/// and drops the `compression` header (wire format reference §1.5).
fn check_python_message(d: &Delivery, queue: &str, restored: bool) -> String {
    let case = case_of(d);
    if case != "direct" {
        assert_eq!(d.exchange(), "", "{case}");
        assert_eq!(d.routing_key(), queue, "{case}");
    }
    match case.as_str() {
        "json" => {
            assert_eq!(d.content_type(), Some("application/json"));
            assert_eq!(d.decode::<Json>().expect("decode json"), nested());
            assert_eq!(headers_json(d.headers()), json_headers());
            let p = d.properties();
            assert_eq!(p.correlation_id.as_deref(), Some("cid-1"));
            assert_eq!(p.reply_to.as_deref(), Some("replies"));
            assert_eq!(p.message_id.as_deref(), Some("mid-1"));
            assert_eq!(p.priority, Some(5));
            assert_eq!(p.delivery_mode, Some(DeliveryMode::Persistent));
        }
        "text" => {
            assert_eq!(d.content_type(), Some("text/plain"));
            assert_eq!(d.decode::<String>().expect("decode text"), TEXT);
        }
        "bytes" => {
            assert_eq!(d.content_type(), Some("application/data"));
            assert_eq!(d.message().content_encoding.as_deref(), Some("binary"));
            assert_eq!(&d.body()[..], BYTES);
            let decoded: bytes::Bytes = d.decode().expect("decode raw bytes");
            assert_eq!(&decoded[..], BYTES);
        }
        "msgpack" => {
            assert_eq!(d.content_type(), Some("application/x-msgpack"));
            assert_eq!(
                d.decode::<Json>().expect("decode msgpack"),
                json!({"id": 4, "kind": "msgpack", "list": [1, 2, 3], "f": 1.5, "s": "\u{e9}"})
            );
        }
        "zlib" => {
            let expected = (!restored).then_some("application/x-gzip");
            assert_eq!(
                d.headers().get("compression").and_then(Value::as_str),
                expected
            );
            assert_eq!(
                d.decode::<Json>().expect("decode zlib json"),
                json!({"id": 5, "kind": "zlib", "data": "x".repeat(2000)})
            );
        }
        "direct" => {
            assert_eq!(d.exchange(), "py.direct");
            assert_eq!(d.routing_key(), "rk.direct");
            assert_eq!(
                d.decode::<Json>().expect("decode"),
                json!({"id": 6, "kind": "direct"})
            );
        }
        other => panic!("unexpected case {other}"),
    }
    case
}

#[tokio::test]
async fn python_publishes_rust_consumes() {
    let Some(python) = python() else { return };
    let db = TempDb::new("py2rs");
    // Python creates the tables (kombu's DDL); kombu-rs adds its columns to them on open.
    let published = run_python(&python, &["publish", db.path(), "py2rs"]);
    assert_eq!(published["published"], 6);

    let conn = open(&db.rust_url()).await;
    assert_eq!(conn.queue_size("py2rs").await.expect("size"), 6);
    let mut consumer = consumer(&conn, "py2rs").await;
    let mut seen = Vec::new();
    for _ in 0..6 {
        let d = next(&mut consumer).await;
        let case = check_python_message(&d, "py2rs", false);
        assert!(!d.redelivered(), "{case}: a first delivery");
        seen.push(case);
        d.ack().await.expect("ack");
    }
    seen.sort();
    assert_eq!(
        seen,
        ["bytes", "direct", "json", "msgpack", "text", "zlib"],
        "every message exactly once"
    );
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_millis(500)).await,
        None
    );
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size("py2rs").await.expect("size"), 0);
    // And Python finds nothing left either.
    let left = run_python(&python, &["drain", db.path(), "py2rs"]);
    assert_eq!(left["messages"], json!([]), "Python sees what Rust acked");
}

/// Publishes one message of every kind from Rust to `queue` (6 in all, the last through the
/// direct exchange `rs.direct`).
async fn publish_variety(conn: &Connection, queue: &str) {
    // Declared first, so that its bindings and arguments are kombu-rs's.
    let producer = conn
        .producer()
        .routing_key(queue)
        .declare(Queue::new(queue));
    let mut map = Headers::new();
    map.insert("k".into(), "v".into());
    producer
        .message(&nested())
        .header("h-str", "v")
        .header("h-int", 42)
        .header("h-list", vec![Value::Int(1), "x".into(), Value::Null])
        .header("h-map", map)
        .header("h-bool", true)
        .header("case", "json")
        .correlation_id("cid-1")
        .reply_to("replies")
        .message_id("mid-1")
        .priority(5)
        .send()
        .await
        .expect("publish json");
    producer
        .message(TEXT)
        .serializer("text")
        .header("case", "text")
        .send()
        .await
        .expect("publish text");
    producer
        .message(&bytes::Bytes::from_static(BYTES))
        .serializer("raw")
        .header("case", "bytes")
        .send()
        .await
        .expect("publish bytes");
    producer
        .message(&json!({"id": 4, "kind": "msgpack", "list": [1, 2, 3], "f": 1.5, "s": "\u{e9}"}))
        .serializer("msgpack")
        .header("case", "msgpack")
        .send()
        .await
        .expect("publish msgpack");
    producer
        .message(&json!({"id": 5, "kind": "zlib", "data": "x".repeat(2000)}))
        .compression("zlib")
        .header("case", "zlib")
        .send()
        .await
        .expect("publish zlib");
    let direct = Exchange::direct("rs.direct");
    conn.producer()
        .exchange(direct.clone())
        .declare(Queue::new(queue).exchange(direct).routing_key("rk.direct"))
        .message(&json!({"id": 6, "kind": "direct"}))
        .routing_key("rk.direct")
        .header("case", "direct")
        .send()
        .await
        .expect("publish direct");
}

#[tokio::test]
async fn rust_publishes_python_consumes() {
    let Some(python) = python() else { return };
    let db = TempDb::new("rs2py");
    // Rust creates the tables this time; Python's SQLAlchemy uses them as they are.
    let conn = open(&db.rust_url()).await;
    publish_variety(&conn, "rs2py").await;
    assert_eq!(conn.queue_size("rs2py").await.expect("size"), 6);

    let out = run_python(&python, &["consume", db.path(), "rs2py", "6"]);
    let messages = out["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 6, "Python consumed every message: {out}");
    let mut seen = Vec::new();
    for m in messages {
        let case = m["headers"]["case"]
            .as_str()
            .expect("case header")
            .to_owned();
        if case != "direct" {
            assert_eq!(m["delivery_info"]["exchange"], "", "{case}: {m}");
            assert_eq!(m["delivery_info"]["routing_key"], "rs2py", "{case}: {m}");
        }
        match case.as_str() {
            "json" => {
                assert_eq!(m["content_type"], "application/json", "{m}");
                assert_eq!(m["payload"], nested(), "{m}");
                assert_eq!(m["headers"], json_headers(), "{m}");
                assert_eq!(m["properties"]["correlation_id"], "cid-1", "{m}");
                assert_eq!(m["properties"]["reply_to"], "replies", "{m}");
                assert_eq!(m["properties"]["message_id"], "mid-1", "{m}");
                assert_eq!(m["properties"]["priority"], 5, "{m}");
            }
            "text" => {
                assert_eq!(m["content_type"], "text/plain", "{m}");
                assert_eq!(m["payload"], TEXT, "{m}");
            }
            "bytes" => {
                assert_eq!(m["content_type"], "application/data", "{m}");
                assert_eq!(m["content_encoding"], "binary", "{m}");
                let b64 = m["payload_b64"].as_str().expect("Python decoded bytes");
                assert_eq!(STANDARD.decode(b64).expect("base64"), BYTES, "{m}");
            }
            "msgpack" => {
                assert_eq!(m["content_type"], "application/x-msgpack", "{m}");
                assert_eq!(
                    m["payload"],
                    json!({"id": 4, "kind": "msgpack", "list": [1, 2, 3], "f": 1.5, "s": "\u{e9}"}),
                    "{m}"
                );
            }
            "zlib" => {
                assert_eq!(m["headers"]["compression"], "application/x-gzip", "{m}");
                assert_eq!(
                    m["payload"],
                    json!({"id": 5, "kind": "zlib", "data": "x".repeat(2000)}),
                    "{m}"
                );
            }
            "direct" => {
                assert_eq!(m["delivery_info"]["exchange"], "rs.direct", "{m}");
                assert_eq!(m["delivery_info"]["routing_key"], "rk.direct", "{m}");
                assert_eq!(m["payload"], json!({"id": 6, "kind": "direct"}), "{m}");
            }
            other => panic!("unexpected case {other}: {m}"),
        }
        seen.push(case);
    }
    seen.sort();
    assert_eq!(seen, ["bytes", "direct", "json", "msgpack", "text", "zlib"]);
    // Python took (and acked) them all: kombu leaves the rows invisible, Rust counts none ready.
    assert_eq!(conn.queue_size("rs2py").await.expect("size"), 0);
}

#[tokio::test]
async fn python_url_with_four_slashes_names_the_same_file_in_rust() {
    let Some(python) = python() else { return };
    let db = TempDb::new("url");
    run_python(&python, &["put", db.path(), "urlq", "from-python"]);
    // The URL exactly as Python writes it for an absolute path: sqla+sqlite:////abs/path.db.
    let conn = open(&format!("sqla+sqlite:///{}", db.path())).await;
    let mut consumer = consumer(&conn, "urlq").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.decode::<String>().expect("decode"), "from-python");
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn message_rust_acked_is_never_seen_by_python() {
    let Some(python) = python() else { return };
    let db = TempDb::new("rsack");
    let conn = open(&db.rust_url()).await;
    let producer = conn
        .producer()
        .routing_key("ackq")
        .declare(Queue::new("ackq"));
    producer.publish("first").await.expect("publish");
    producer.publish("second").await.expect("publish");

    let mut consumer = conn
        .consumer([Queue::new("ackq")])
        .prefetch(1)
        .build()
        .await
        .expect("consume");
    let d = next(&mut consumer).await;
    assert_eq!(d.decode::<String>().expect("decode"), "first");
    d.ack().await.expect("ack");
    // Closing returns whatever the consumer may have taken ahead ("second").
    consumer.close().await.expect("close");

    let out = run_python(&python, &["drain", db.path(), "ackq"]);
    let bodies: Vec<&Json> = out["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(
        bodies,
        [&json!("second")],
        "Python sees only the unacked one: {out}"
    );
    assert_eq!(conn.queue_size("ackq").await.expect("size"), 0);
}

#[tokio::test]
async fn message_python_acked_is_never_delivered_by_rust() {
    let Some(python) = python() else { return };
    let db = TempDb::new("pyack");
    run_python(&python, &["put", db.path(), "ackq2", "p-first", "p-second"]);
    let taken = run_python(&python, &["take_ack", db.path(), "ackq2"]);
    assert_eq!(taken["message"]["payload"], "p-first", "{taken}");

    // A short visibility timeout, and long enough a wait for it to pass: the row Python took
    // and acked (left with visible = 0, no lease) must not come back as an expired lease.
    let conn = open(&format!("{}?visibility_timeout=0.5", db.rust_url())).await;
    assert_eq!(conn.queue_size("ackq2").await.expect("size"), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut consumer = consumer(&conn, "ackq2").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.decode::<String>().expect("decode"), "p-second");
    assert!(!d.redelivered());
    d.ack().await.expect("ack");
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_secs(2)).await,
        None,
        "the message Python acked came back"
    );
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size("ackq2").await.expect("size"), 0);
}

#[tokio::test]
async fn messages_python_restored_on_close_arrive_redelivered() {
    let Some(python) = python() else { return };
    let db = TempDb::new("pyrestore");
    run_python(&python, &["publish", db.path(), "restq"]);
    // Python takes five without settling and closes its channel: kombu re-inserts them as new
    // rows with a top-level "redelivered": true.
    let taken = run_python(&python, &["take_close", db.path(), "restq", "5"]);
    assert_eq!(
        taken["taken"],
        json!(["json", "text", "bytes", "msgpack", "zlib"]),
        "{taken}"
    );

    let conn = open(&db.rust_url()).await;
    let mut consumer = consumer(&conn, "restq").await;
    let mut redelivered = Vec::new();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let d = next(&mut consumer).await;
        let case = check_python_message(&d, "restq", d.redelivered());
        if d.redelivered() {
            redelivered.push(case.clone());
        }
        seen.push(case);
        d.ack().await.expect("ack");
    }
    seen.sort();
    redelivered.sort();
    assert_eq!(seen, ["bytes", "direct", "json", "msgpack", "text", "zlib"]);
    assert_eq!(
        redelivered,
        ["bytes", "json", "msgpack", "text", "zlib"],
        "the messages Python restored arrive marked redelivered"
    );
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_millis(500)).await,
        None
    );
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size("restq").await.expect("size"), 0);
}

#[tokio::test]
async fn message_leased_by_rust_is_invisible_to_python_until_requeued() {
    let Some(python) = python() else { return };
    let db = TempDb::new("lease");
    let conn = open(&db.rust_url()).await;
    conn.producer()
        .routing_key("leaseq")
        .declare(Queue::new("leaseq"))
        .publish("held")
        .await
        .expect("publish");
    let mut consumer = consumer(&conn, "leaseq").await;
    let d = next(&mut consumer).await;
    assert_eq!(d.decode::<String>().expect("decode"), "held");

    // Held unsettled by Rust: Python must not take it.
    let out = run_python(&python, &["drain", db.path(), "leaseq"]);
    assert_eq!(
        out["messages"],
        json!([]),
        "Python took a message Rust holds"
    );

    d.requeue().await.expect("requeue");
    // Closing returns it even if the consumer took it again meanwhile.
    consumer.close().await.expect("close");
    let out = run_python(&python, &["drain", db.path(), "leaseq"]);
    let bodies: Vec<&Json> = out["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| &m["payload"])
        .collect();
    assert_eq!(bodies, [&json!("held")], "requeued, Python gets it: {out}");
    assert_eq!(conn.queue_size("leaseq").await.expect("size"), 0);
}

/// A queue Python kombu declared (a `kombu_queue` row, no message) exists for Rust: it takes a
/// mandatory publish through the default exchange, and its size and purge work. A name that
/// exists nowhere is, without `mandatory`, created and stored as Python kombu's SQLAlchemy
/// transport does, so Python reads it.
#[tokio::test]
async fn python_declared_queue_takes_mandatory_default_exchange_publishes() {
    let Some(python) = python() else { return };
    let db = TempDb::new("declared");
    run_python(&python, &["declare", db.path(), "pyq"]);
    let conn = open(&db.rust_url()).await;
    assert!(conn.queue_exists("pyq").await.expect("exists"));
    assert_eq!(conn.queue_size("pyq").await.expect("size"), 0);
    conn.producer()
        .message(&"to-pyq")
        .routing_key("pyq")
        .mandatory(true)
        .send()
        .await
        .expect("a mandatory publish to Python's queue");
    assert_eq!(conn.queue_size("pyq").await.expect("size"), 1);
    let out = run_python(&python, &["drain", db.path(), "pyq"]);
    assert_eq!(out["messages"].as_array().map(Vec::len), Some(1), "{out}");
    assert_eq!(conn.purge("pyq").await.expect("purge"), 0);

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
    let out = run_python(&python, &["drain", db.path(), "nowhere"]);
    assert_eq!(out["messages"].as_array().map(Vec::len), Some(1), "{out}");
}

/// A message Python kombu published with `NaN`, `Infinity`, `-Infinity` and a lone surrogate
/// in its headers and JSON body reaches a Rust consumer, read as documented.
#[tokio::test]
async fn python_non_finite_json_reaches_rust() {
    let Some(python) = python() else { return };
    let db = TempDb::new("nonfinite");
    run_python(&python, &["nonfinite", db.path(), "pynan"]);
    let conn = open(&db.rust_url()).await;
    let mut consumer = consumer(&conn, "pynan").await;
    let d = next(&mut consumer).await;
    assert!(
        matches!(d.headers().get("score"), Some(Value::Float(f)) if f.is_nan()),
        "{:?}",
        d.headers()
    );
    assert_eq!(d.headers().get("who"), Some(&Value::from("a\u{fffd}b")));
    let body: std::collections::BTreeMap<String, Value> = d.decode().expect("decode");
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
        json!({"x": null, "hi": null, "lo": null, "s": "a\u{fffd}b"})
    );
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
}
