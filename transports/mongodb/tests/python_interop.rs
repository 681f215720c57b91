//! Python kombu (its MongoDB transport, pymongo) and kombu-rs on one database, both ways.
//!
//! `interop/mongo_interop.py` is Python's side. Every test uses a database of its own
//! (`support::fresh_database`), which both sides name in their URLs (kombu takes the database
//! from the URL's path), and drops it when it passes. Covered: every serializer and compression
//! kombu ships (json with nested values, headers and properties, text, raw bytes, msgpack, yaml;
//! zlib (kombu's `gzip` is its alias), bzip2, lzma, brotli, zstd; pickle, read-only, when
//! kombu-rs is built with its `pickle` feature), direct and topic routing with the bindings declared on one
//! side and the publisher on the other (kombu routes topic bindings with the `pattern` regular
//! expression of their routing documents), priorities (highest first, both ways), fanout
//! through the capped broadcast collection both ways, message expiry (Python's `expire_at`
//! honoured by Rust's takes; Rust's `expire_at` written as kombu's `ttl` mode writes it and
//! read back with pymongo), settlement across the sides (a message Rust holds leased is
//! invisible to Python's consumers and sizes, comes back to a Rust consumer once the visibility
//! timeout passed, and a Rust ack deletes it), and Python reading the dead letters kombu-rs
//! made of unreadable documents.
//!
//! The server is `$KOMBU_TEST_MONGODB_URL` (scripts/test starts a SecantusDB); the Python
//! interpreter is `$KOMBU_PYTHON` (scripts/python-env makes a venv with kombu and pymongo), else
//! `~/.cache/kombu-rs/venv/bin/python` when it exists. Without either the tests fail when
//! `KOMBU_TEST_REQUIRE` is set (as in CI) and are skipped with a message otherwise.
//!
//! Over 700 lines: one file per transport for its interop with Python kombu (as Redis and
//! SQLite have), each case a test of its own sharing the `Db` helper and the Python script.

mod support;

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Binding, Connection, Consumer, Delivery, ErrorKind, Exchange, Queue, Value};
use kombu_test_support::interop::*;
use kombu_test_support::{KillOnDrop, lines, python};
use serde_json::{Value as Json, json};

fn script() -> PathBuf {
    // The directory cargo runs the test in, read at run time: a test binary compiled in another
    // checkout sharing the target directory would carry that checkout's path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/mongo_interop.py")
}

/// A test's database on the server, and the Python interpreter.
struct Db {
    server: String,
    name: String,
    python: PathBuf,
}

impl Db {
    /// A fresh database for test `what`; `None` (skipped) without a server or a Python.
    async fn new(what: &str) -> Option<Db> {
        let server = support::require(what).await?;
        let python = python()?;
        Some(Db {
            server,
            name: support::fresh_database(what),
            python,
        })
    }

    /// kombu's URL for the database (the database in the path).
    fn python_url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    /// kombu-rs's URL for the database, with extra query options (`k=v&...`).
    fn rust_url(&self, extra: &str) -> String {
        let sep = if extra.is_empty() { "" } else { "&" };
        format!(
            "{}/{}?polling_interval=0.1{sep}{extra}",
            self.server, self.name
        )
    }

    async fn open(&self, extra: &str) -> Connection {
        kombu_mongodb::register();
        let url = self.rust_url(extra);
        Connection::open(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"))
    }

    /// The Python command of the interop script, with its arguments after the URL.
    fn command(&self, command: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.python);
        cmd.arg(script())
            .arg(command)
            .arg(self.python_url())
            .args(args);
        cmd
    }

    /// Runs a command of the interop script (blocking) on this database.
    fn python(&self, command: &str, args: &[&str]) -> Json {
        let out = self
            .command(command, args)
            .output()
            .expect("run the interop script");
        assert!(
            out.status.success(),
            "mongo_interop.py {command} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "mongo_interop.py {command} {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// The bodies Python takes from `queue` now (`Queue.get` until empty, each acked).
    fn python_drain(&self, queue: &str) -> Vec<Json> {
        let out = self.python("drain", &[queue]);
        out["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["payload"].clone())
            .collect()
    }

    /// The size of `queue` as Python kombu reports it.
    fn python_size(&self, queue: &str) -> u64 {
        self.python("size", &[queue])["size"]
            .as_u64()
            .expect("a size")
    }

    /// A raw client's view of the database.
    async fn raw(&self) -> mongodb::Database {
        let client = mongodb::Client::with_uri_str(&self.server)
            .await
            .expect("a raw client");
        client.database(&self.name)
    }

    /// Drops the database (at the end of a test that passed).
    async fn drop_database(&self) {
        let _ = self.raw().await.drop().await;
    }
}

/// A description of the delivery arriving within `wait`, if one does.
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

// --- serializers and compression ---------------------------------------------------------

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
