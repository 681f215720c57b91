//! Python kombu (its Redis transport) and kombu-rs on one Redis, both ways.
//!
//! `interop/redis_interop.py` is Python's side. Every test uses its own `global_keyprefix` (a
//! UUID) on both sides, so the tests run in parallel on one server without sharing a key.
//! Covered: every serializer and compression kombu ships (json with nested values, headers and
//! properties, text, raw bytes, msgpack, yaml; zlib, bzip2, lzma, brotli, zstd), direct and
//! topic routing with the bindings declared on one side and the publisher on the other, kombu's
//! priority order (lower numbers first), acks across sides, and recovery after a crash: what a
//! SIGKILLed Rust consumer held is restored by Python kombu's `restore_visible`, and what a
//! Python consumer held when it died (`os._exit`) is restored by kombu-rs.
//!
//! The server is `$KOMBU_REDIS_URL` (default `redis://127.0.0.1:6379/0`; scripts/test starts
//! one). The Python interpreter is `$KOMBU_PYTHON` (scripts/python-env makes a venv with kombu
//! and redis-py), else `~/.cache/kombu-rs/venv/bin/python` when it exists. Without one the tests
//! fail when `KOMBU_TEST_REQUIRE` is set (as in CI) and are skipped with a message otherwise.

use kombu_test_support::interop::*;
use kombu_test_support::{KillOnDrop, lines, python};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Binding, Connection, Consumer, Delivery, Exchange, Queue};
use serde_json::{Value as Json, json};

/// The child consumer's role (see `holder_child`): `URL\tQUEUE\tACK\tHOLD`.
const HOLDER_ENV: &str = "KOMBU_REDIS_INTEROP_HOLDER";

fn server() -> String {
    std::env::var("KOMBU_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned())
}

fn script() -> PathBuf {
    // The directory cargo runs the test in, read at run time: a test binary compiled in another
    // checkout sharing the target directory would carry that checkout's path.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/redis_interop.py")
}

/// A test's key space: the prefix both sides put in front of every key.
struct Space {
    prefix: String,
}

impl Space {
    fn new(name: &str) -> Space {
        Space {
            prefix: format!("kombu-rs-test:{name}:{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    /// kombu-rs's URL for the space, with extra query options (`k=v&...`).
    fn url(&self, extra: &str) -> String {
        let prefix: String = self
            .prefix
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let sep = if extra.is_empty() { "" } else { "&" };
        format!("{}?global_keyprefix={prefix}{sep}{extra}", server())
    }

    /// Runs a command of the interop script (blocking) with this prefix.
    fn python(&self, python: &Path, command: &str, args: &[&str]) -> Json {
        let out = Command::new(python)
            .arg(script())
            .arg(command)
            .arg(&self.prefix)
            .args(args)
            .env("KOMBU_REDIS_URL", server())
            .output()
            .expect("run the interop script");
        assert!(
            out.status.success(),
            "redis_interop.py {command} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Python's json.dumps: NaN may be in what it prints.
        kombu_core::serializers::from_python_json(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "redis_interop.py {command} {args:?} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Deletes every key of the space.
    async fn clean(&self) {
        let Ok(client) = redis::Client::open(server()) else {
            return;
        };
        let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> =
                redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
    }
}

async fn open(url: &str) -> Connection {
    kombu_redis::register();
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
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

#[tokio::test]
async fn acks_cross_sides() {
    let Some(python) = python() else { return };
    let space = Space::new("acks");
    // Rust acks one; Python finds only the other.
    let conn = open(&space.url("visibility_timeout=1")).await;
    let producer = conn
        .producer()
        .routing_key("ackq")
        .declare(Queue::new("ackq"));
    producer.publish("first").await.expect("publish");
    producer.publish("second").await.expect("publish");
    let mut first = conn
        .consumer([Queue::new("ackq")])
        .prefetch(1)
        .build()
        .await
        .expect("consume");
    let d = next_delivery(&mut first).await;
    assert_eq!(d.decode::<String>().expect("decode"), "first");
    d.ack().await.expect("ack");
    first.close().await.expect("close");
    // Past Rust's visibility timeout: an acked message must not come back.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let out = space.python(&python, "drain", &["ackq"]);
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

    // Python acks one; Rust never gets it, even after its visibility timeout passed.
    space.python(&python, "put", &["ackq2", "p-first", "p-second"]);
    let taken = space.python(&python, "take_ack", &["ackq2"]);
    assert_eq!(taken["message"]["payload"], "p-first", "{taken}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut consumer = cases_consumer(&conn, "ackq2").await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.decode::<String>().expect("decode"), "p-second");
    assert!(!d.redelivered());
    d.ack().await.expect("ack");
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_millis(2_500)).await,
        None,
        "the message Python acked came back"
    );
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size("ackq2").await.expect("size"), 0);
    space.clean().await;
}

/// The child role of `python_recovers_what_a_killed_rust_consumer_held`: consumes from the
/// queue, acks the first ACK deliveries, holds the next HOLD unsettled, prints `ACKED id` /
/// `HELD id` lines and `READY`, and waits to be killed. A no-op unless `HOLDER_ENV` is set.
#[tokio::test]
async fn holder_child() {
    let Ok(spec) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('\t').collect();
    let [url, queue, ack, hold] = parts[..] else {
        panic!("bad {HOLDER_ENV}: {spec:?}")
    };
    let ack: usize = ack.parse().expect("ACK");
    let hold: usize = hold.parse().expect("HOLD");
    let conn = open(url).await;
    let mut consumer = conn
        .consumer([Queue::new(queue)])
        .prefetch(u16::try_from(ack + hold).expect("prefetch"))
        .build()
        .await
        .expect("child: consume");
    let mut out = std::io::stdout().lock();
    // The harness printed `test holder_child ... ` without a newline.
    writeln!(out).expect("stdout");
    let mut held = Vec::new();
    for i in 0..ack + hold {
        let d = next_delivery(&mut consumer).await;
        let id = d.decode::<Json>().expect("decode")["id"]
            .as_u64()
            .expect("id");
        if i < ack {
            d.ack().await.expect("child: ack");
            writeln!(out, "ACKED {id}").expect("stdout");
        } else {
            writeln!(out, "HELD {id}").expect("stdout");
            held.push(d);
        }
    }
    // kombu-redis queues acks and writes them in batches; any read writes the queued ones
    // first. Without this barrier a kill right after READY can lose the last acks (those
    // messages would come back: at-least-once), which is not what this test is about.
    conn.queue_size(queue).await.expect("child: flush acks");
    writeln!(out, "READY").expect("stdout");
    out.flush().expect("stdout");
    drop(out);
    tokio::time::sleep(Duration::from_secs(120)).await;
    drop(held);
}

#[tokio::test]
async fn python_recovers_what_a_killed_rust_consumer_held() {
    let Some(python) = python() else { return };
    let space = Space::new("rskill");
    let url = space.url("visibility_timeout=1");
    let conn = open(&url).await;
    let producer = conn
        .producer()
        .routing_key("held")
        .declare(Queue::new("held"));
    for id in 0..5u64 {
        producer
            .publish(&json!({ "id": id }))
            .await
            .expect("publish");
    }
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().expect("current exe"))
            .args([
                "holder_child",
                "--exact",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(HOLDER_ENV, format!("{url}\theld\t2\t3"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child consumer"),
    );
    let stdout = child.0.stdout.take().expect("child stdout");
    let rx = lines(stdout);
    let mut acked = BTreeSet::new();
    let mut held = BTreeSet::new();
    loop {
        let line = rx
            .recv_timeout(DELIVERY_TIMEOUT)
            .unwrap_or_else(|e| panic!("the child did not get ready ({e})"));
        if line == "READY" {
            break;
        }
        if let Some(id) = line.strip_prefix("ACKED ") {
            acked.insert(id.parse::<u64>().expect("id"));
        } else if let Some(id) = line.strip_prefix("HELD ") {
            held.insert(id.parse::<u64>().expect("id"));
        }
        // Other lines are the test harness's own output.
    }
    assert_eq!(acked, BTreeSet::from([0, 1]));
    assert_eq!(held, BTreeSet::from([2, 3, 4]));
    child.0.kill().expect("SIGKILL the child");
    child.0.wait().expect("reap the child");

    // Python kombu (visibility_timeout=1) restores them in restore_visible and takes them.
    let out = space.python(&python, "recover", &["held", "3"]);
    let messages = out["messages"].as_array().expect("messages");
    let ids: BTreeSet<u64> = messages
        .iter()
        .map(|m| m["payload"]["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(messages.len(), 3, "{out}");
    assert_eq!(ids, held, "{out}");
    for m in messages {
        assert_eq!(m["redelivered"], true, "{m}");
        assert_eq!(m["delivery_info"]["routing_key"], "held", "{m}");
    }
    // Nothing more for anyone: the acked ones never come back.
    let left = space.python(&python, "drain", &["held"]);
    assert_eq!(left["messages"], json!([]), "{left}");
    assert_eq!(conn.queue_size("held").await.expect("size"), 0);
    space.clean().await;
}

#[tokio::test]
async fn rust_recovers_what_a_dead_python_consumer_held() {
    let Some(python) = python() else { return };
    let space = Space::new("pykill");
    space.python(&python, "put", &["pyheld", "m0", "m1", "m2", "m3"]);
    // Python takes three without acking and exits abruptly (os._exit).
    let taken = space.python(&python, "take_exit", &["pyheld", "3"]);
    let taken: BTreeSet<String> = taken["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["payload"].as_str().expect("payload").to_owned())
        .collect();
    assert_eq!(
        taken,
        BTreeSet::from(["m0".into(), "m1".into(), "m2".into()])
    );

    let conn = open(&space.url("visibility_timeout=1")).await;
    assert_eq!(conn.queue_size("pyheld").await.expect("size"), 1);
    let mut consumer = cases_consumer(&conn, "pyheld").await;
    let mut fresh = BTreeSet::new();
    let mut redelivered = BTreeSet::new();
    for _ in 0..4 {
        let d = next_delivery(&mut consumer).await;
        let body = d.decode::<String>().expect("decode");
        assert_eq!(d.routing_key(), "pyheld");
        let new = if d.redelivered() {
            redelivered.insert(body.clone())
        } else {
            fresh.insert(body.clone())
        };
        assert!(new, "{body} delivered twice");
        d.ack().await.expect("ack");
    }
    assert_eq!(fresh, BTreeSet::from(["m3".to_owned()]));
    assert_eq!(
        redelivered, taken,
        "what Python held comes back, redelivered"
    );
    assert_eq!(
        nothing_within(&mut consumer, Duration::from_millis(2_500)).await,
        None
    );
    consumer.close().await.expect("close");
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

/// A message with `NaN` in its headers that a Python consumer held when it died is restored by
/// kombu-rs (its `unacked` entry is Python JSON too) and delivered, redelivered, with its
/// non-finite header values as they were: the restore writes back the text Python stored, as
/// Python's own restore does (re-encoding it would make them null).
#[tokio::test]
async fn rust_recovers_a_non_finite_message_a_dead_python_consumer_held() {
    let Some(python) = python() else { return };
    let space = Space::new("pynankill");
    space.python(&python, "nonfinite", &["pynanheld"]);
    let taken = space.python(&python, "take_exit", &["pynanheld", "1"]);
    assert_eq!(
        taken["messages"].as_array().map(Vec::len),
        Some(1),
        "{taken}"
    );

    let conn = open(&space.url("visibility_timeout=1")).await;
    let mut consumer = cases_consumer(&conn, "pynanheld").await;
    let d = next_delivery(&mut consumer).await;
    assert!(d.redelivered(), "restored from Python's unacked");
    assert_eq!(d.routing_key(), "pynanheld");
    assert!(
        matches!(d.headers().get("score"), Some(kombu_core::Value::Float(f)) if f.is_nan()),
        "{:?}",
        d.headers()
    );
    assert_eq!(
        d.headers().get("hi"),
        Some(&kombu_core::Value::Float(f64::INFINITY))
    );
    assert_eq!(
        d.headers().get("lo"),
        Some(&kombu_core::Value::Float(f64::NEG_INFINITY))
    );
    assert_eq!(
        d.headers().get("who"),
        Some(&kombu_core::Value::from("a\u{fffd}b"))
    );
    let body: Json = d.decode().expect("decode");
    assert_eq!(body["n"], 1, "{body}");
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
    space.clean().await;
}
