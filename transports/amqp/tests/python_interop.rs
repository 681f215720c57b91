//! Python kombu (py-amqp) and kombu-rs on one RabbitMQ, both ways.
//!
//! `interop/amqp_interop.py` is Python's side. The tests share a virtual host made fresh for
//! the run (`kombu-rs-interop`), each with names of its own. Covered: every serializer and
//! compression kombu ships, headers and properties, in both directions; the same topology
//! (topic, fanout and headers exchanges, a queue with every kombu queue argument, a quorum
//! queue) declared by one side and declared again by the other without PRECONDITION_FAILED,
//! with messages published by one side routed to the queues the other bound.
//!
//! The Python interpreter is `$KOMBU_PYTHON` (scripts/python-env makes a venv with kombu and
//! py-amqp), else `~/.cache/kombu-rs/venv/bin/python` when it exists.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kombu_core::{Binding, Connection, Exchange, HeaderMatch, Headers, Queue, Value};
use kombu_test_support::interop::*;
use kombu_test_support::python;
use serde_json::{Value as Json, json};

/// The URL of the run's virtual host, or `None` (skip) without a broker.
fn url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(|| {
        kombu_amqp::register();
        if !common::broker_up("python_interop") {
            return None;
        }
        let vhost = common::fresh_vhost("kombu-rs-interop");
        Some(common::url_on(vhost.as_deref()))
    })
    .clone()
}

/// The broker and the Python interpreter, or `None` to skip.
async fn setup() -> Option<(String, PathBuf)> {
    let url = tokio::task::spawn_blocking(url).await.ok().flatten()?;
    Some((url, python()?))
}

fn script() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/amqp_interop.py")
}

/// Runs a command of the interop script (blocking) and parses its JSON output.
fn run_python(python: &Path, url: &str, command: &str, args: &[&str]) -> Json {
    let out = Command::new(python)
        .arg(script())
        .arg(command)
        .args(args)
        .env("KOMBU_AMQP_URL", url)
        .output()
        .expect("run the interop script");
    assert!(
        out.status.success(),
        "amqp_interop.py {command} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "amqp_interop.py {command} {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

async fn open(url: &str) -> Connection {
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

#[tokio::test]
async fn python_publishes_rust_consumes() {
    let Some((url, python)) = setup().await else {
        return;
    };
    let queue = unique("py2rs");
    let published = run_python(&python, &url, "publish", &[&queue]);
    assert_eq!(published["published"], 10);

    let conn = open(&url).await;
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 10);
    let mut consumer = cases_consumer(&conn, &queue).await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let d = next_delivery(&mut consumer).await;
        let case = case_of(&d);
        assert!(!d.redelivered(), "{case}: a first delivery");
        assert_eq!(d.exchange(), "", "{case}");
        assert_eq!(d.routing_key(), queue, "{case}");
        check_case(&d, &case);
        seen.push(case);
        d.ack().await.expect("ack");
    }
    assert_eq!(sorted(seen), CASES, "every message exactly once");
    consumer.close().await.expect("close");
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 0);
    conn.delete_queue(&queue).await.expect("delete");
}

/// Publishes one message of every case (10) from Rust to `queue` through the default exchange.
#[tokio::test]
async fn rust_publishes_python_consumes() {
    let Some((url, python)) = setup().await else {
        return;
    };
    let queue = unique("rs2py");
    let conn = open(&url).await;
    publish_cases(&conn, &queue, Some(Duration::from_secs(600))).await;
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 10);

    let out = run_python(&python, &url, "consume", &[&queue, "10"]);
    let messages = out["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 10, "Python consumed every message: {out}");
    let mut seen = Vec::new();
    for m in messages {
        assert_eq!(m["properties"]["delivery_mode"], 2, "{m}");
        let case = check_read_by_python(m, &queue, |m| {
            assert_eq!(m["content_encoding"], "utf-8", "{m}");
            assert_eq!(m["properties"]["expiration"], "600000", "{m}");
        });
        seen.push(case);
    }
    assert_eq!(sorted(seen), CASES);
    assert_eq!(conn.queue_size(&queue).await.expect("size"), 0);
    conn.delete_queue(&queue).await.expect("delete");
}

/// The topology of `amqp_interop.py`'s `topology(prefix)`, as kombu-rs entities.
fn topology(prefix: &str) -> Vec<Queue> {
    let topic = Exchange::topic(format!("{prefix}.topic"));
    let fanout = Exchange::fanout(format!("{prefix}.fanout"));
    let headers = Exchange::headers(format!("{prefix}.headers"));
    let h = |pairs: &[(&str, &str)]| -> Headers {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect()
    };
    let all = Binding::headers(
        headers.name.clone(),
        HeaderMatch::All,
        h(&[("format", "pdf"), ("type", "report")]),
    );
    let any = Binding::headers(
        headers.name.clone(),
        HeaderMatch::Any,
        h(&[("format", "zip"), ("type", "report")]),
    );
    vec![
        Queue::new(format!("{prefix}.t1"))
            .exchange(topic.clone())
            .routing_key("stock.*.usd"),
        Queue::new(format!("{prefix}.t2"))
            .exchange(topic)
            .routing_key("#.eur"),
        Queue::new(format!("{prefix}.f1"))
            .exchange(fanout.clone())
            .routing_key("f1"),
        Queue::new(format!("{prefix}.f2")).exchange(fanout),
        Queue::new(format!("{prefix}.hall"))
            .exchange(headers.clone())
            .binding_arguments(all.arguments),
        Queue::new(format!("{prefix}.hany"))
            .exchange(headers)
            .binding_arguments(any.arguments),
        Queue::new(format!("{prefix}.args"))
            .max_priority(10)
            .message_ttl(Duration::from_secs(60))
            .expires(Duration::from_secs(3600))
            .max_length(100)
            .dead_letter_exchange(format!("{prefix}.dlx"))
            .dead_letter_routing_key("dead"),
        Queue::new(format!("{prefix}.quorum")).argument("x-queue-type", "quorum"),
    ]
}

/// What each queue of the topology receives from `publish_routed` (either side's), as
/// `via/rk` strings.
fn routed(prefix: &str) -> BTreeMap<String, Vec<String>> {
    let q = |s: &str| format!("{prefix}.{s}");
    let v = |items: &[&str]| items.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    BTreeMap::from([
        (q("t1"), v(&["topic/stock.nyse.usd"])),
        (q("t2"), v(&["topic/fx.spot.eur"])),
        (q("f1"), v(&["fanout/anything"])),
        (q("f2"), v(&["fanout/anything"])),
        (q("hall"), v(&["headers/m1", "headers/m5"])),
        (q("hany"), v(&["headers/m1", "headers/m3", "headers/m5"])),
        (q("args"), v(&[])),
        (q("quorum"), v(&[])),
    ])
}

const HEADER_MESSAGES: [(&str, &[(&str, &str)]); 5] = [
    ("m1", &[("format", "pdf"), ("type", "report")]),
    ("m2", &[("format", "pdf"), ("type", "log")]),
    ("m3", &[("format", "zip")]),
    ("m4", &[]),
    (
        "m5",
        &[("format", "pdf"), ("type", "report"), ("extra", "1")],
    ),
];

/// The same publishes as `amqp_interop.py publish_routed`.
async fn publish_routed(conn: &Connection, prefix: &str) {
    let topic = conn
        .producer()
        .exchange(Exchange::topic(format!("{prefix}.topic")));
    for rk in ["stock.nyse.usd", "stock.usd", "fx.spot.eur"] {
        topic
            .message(&json!({"via": "topic", "rk": rk}))
            .routing_key(rk)
            .send()
            .await
            .expect("publish topic");
    }
    conn.producer()
        .exchange(Exchange::fanout(format!("{prefix}.fanout")))
        .message(&json!({"via": "fanout", "rk": "anything"}))
        .routing_key("anything")
        .send()
        .await
        .expect("publish fanout");
    let headers = conn
        .producer()
        .exchange(Exchange::headers(format!("{prefix}.headers")));
    for (body, pairs) in HEADER_MESSAGES {
        let hs: Headers = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
            .collect();
        headers
            .message(&json!({"via": "headers", "rk": body}))
            .headers(hs)
            .send()
            .await
            .expect("publish headers");
    }
}

fn tag(body: &Json) -> String {
    format!(
        "{}/{}",
        body["via"].as_str().expect("via"),
        body["rk"].as_str().expect("rk")
    )
}

#[tokio::test]
async fn python_declares_rust_redeclares_and_publishes() {
    let Some((url, python)) = setup().await else {
        return;
    };
    let prefix = unique("pydecl");
    run_python(&python, &url, "declare", &[&prefix]);
    let conn = open(&url).await;
    // Declaring what kombu declared, with the same definitions, must not conflict.
    for q in topology(&prefix) {
        conn.declare_queue(&q)
            .await
            .unwrap_or_else(|e| panic!("redeclare {}: {e}", q.name));
    }
    publish_routed(&conn, &prefix).await;
    let expected = routed(&prefix);
    let names: Vec<&str> = expected.keys().map(String::as_str).collect();
    let out = run_python(&python, &url, "drain", &names);
    for (queue, want) in &expected {
        let got: Vec<String> = out[queue]
            .as_array()
            .unwrap_or_else(|| panic!("no result for {queue}: {out}"))
            .iter()
            .map(|m| tag(&m["payload"]))
            .collect();
        assert_eq!(&sorted(got), want, "queue {queue}");
    }
    for queue in expected.keys() {
        conn.delete_queue(queue).await.expect("delete");
    }
}

#[tokio::test]
async fn rust_declares_python_redeclares_and_publishes() {
    let Some((url, python)) = setup().await else {
        return;
    };
    let prefix = unique("rsdecl");
    let conn = open(&url).await;
    for q in topology(&prefix) {
        conn.declare_queue(&q)
            .await
            .unwrap_or_else(|e| panic!("declare {}: {e}", q.name));
    }
    // kombu declares the same entities again (it would raise on PRECONDITION_FAILED) and
    // publishes through them.
    run_python(&python, &url, "declare", &[&prefix]);
    run_python(&python, &url, "publish_routed", &[&prefix]);
    let channel = conn.channel().await.expect("channel");
    for (queue, want) in routed(&prefix) {
        let mut got = Vec::new();
        while let Some(d) = channel.get(&queue, false).await.expect("get") {
            got.push(tag(&d.decode::<Json>().expect("decode")));
            d.ack().await.expect("ack");
        }
        assert_eq!(sorted(got), want, "queue {queue}");
        conn.delete_queue(&queue).await.expect("delete");
    }
}
