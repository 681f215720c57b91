//! Python kombu and kombu-rs on one Redis: acks across sides, and recovery after a crash: what
//! a SIGKILLed Rust consumer held is restored by Python kombu's `restore_visible`, and what a
//! Python consumer held when it died (`os._exit`) is restored by kombu-rs. The server and the
//! interpreter are found as in `python_interop.rs`.

use kombu_test_support::interop::*;
use kombu_test_support::{KillOnDrop, lines, python};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use kombu_core::Queue;
use serde_json::{Value as Json, json};

mod python_support;
use python_support::*;

/// The child consumer's role (see `holder_child`): `URL\tQUEUE\tACK\tHOLD`.
const HOLDER_ENV: &str = "KOMBU_REDIS_INTEROP_HOLDER";

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
    // Core queues acks and writes them in batches; any read writes the queued ones
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
