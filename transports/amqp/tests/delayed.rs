//! kombu's native delayed delivery shared with Python kombu (and so with Celery), both ways,
//! each direction on a virtual host of its own made fresh for the run:
//!
//! - Python declares the layout (`declare_native_delayed_delivery_exchanges_and_queues`, quorum
//!   queues, as Celery's worker does) and binds its queue
//!   (`bind_queue_to_native_delayed_delivery_exchange`); kombu-rs publishes with a delay; Python
//!   receives the message once due, and not before.
//! - kombu-rs declares the layout (its first delayed publish); Python declares it again without
//!   PRECONDITION_FAILED, publishes with `calculate_routing_key` to `celery_delayed_27`, and a
//!   kombu-rs consumer of a queue bound with `#.<key>` receives it once due.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Exchange, Queue};
use kombu_test_support::python;
use serde_json::Value as Json;

/// Python's side: `declare-and-receive` and `declare-and-publish`.
const SCRIPT: &str = r#"
import json, sys, time
from kombu import Connection, Exchange, Queue
from kombu.transport.native_delayed_delivery import (
    bind_queue_to_native_delayed_delivery_exchange, calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues, level_name)

command, url, exchange_name, key = sys.argv[1:5]
with Connection(url) as conn:
    declare_native_delayed_delivery_exchanges_and_queues(conn, "quorum")
    exchange = Exchange(exchange_name, type="topic")
    queue = Queue(exchange_name + ".q", exchange=exchange, routing_key=key)
    queue(conn.channel()).declare()
    bind_queue_to_native_delayed_delivery_exchange(conn, queue)
    if command == "declare-and-receive":
        print(json.dumps({"ready": True}), flush=True)
        start = time.monotonic()
        q = queue(conn.channel())
        while time.monotonic() - start < 30:
            m = q.get(no_ack=False)
            if m is None:
                time.sleep(0.05)
                continue
            m.ack()
            print(json.dumps({"body": m.decode(), "waited": time.monotonic() - start,
                              "routing_key": m.delivery_info["routing_key"]}), flush=True)
            break
    else:
        with conn.Producer() as producer:
            producer.publish("from python", exchange=level_name(27),
                             routing_key=calculate_routing_key(int(sys.argv[5]), key),
                             serializer="json")
        print(json.dumps({"published": True}), flush=True)
"#;

async fn setup(vhost: &str) -> Option<(String, std::path::PathBuf)> {
    kombu_amqp::register();
    if !common::broker_up("delayed") {
        return None;
    }
    let vhost = vhost.to_owned();
    let vhost = tokio::task::spawn_blocking(move || common::fresh_vhost(&vhost))
        .await
        .ok()
        .flatten();
    Some((common::url_on(vhost.as_deref()), python()?))
}

fn last_json(output: &[u8]) -> Json {
    let text = String::from_utf8_lossy(output);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn python_command(python: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(SCRIPT).args(args);
    cmd
}

#[tokio::test]
async fn python_declares_and_receives_what_rust_delays() {
    let Some((url, python)) = setup("kombu-rs-delayed-py").await else {
        return;
    };
    let name = format!("delayed-{}", uuid::Uuid::new_v4().simple());
    let key = format!("{name}.key");
    // Python declares everything and waits for the message.
    let child = python_command(&python, &["declare-and-receive", &url, &name, &key])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start Python");
    let mut child = kombu_test_support::KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("stdout");
    let lines = kombu_test_support::lines(stdout);
    let ready = lines
        .recv_timeout(Duration::from_secs(60))
        .expect("Python declared the layout");
    assert!(ready.contains("ready"), "{ready}");

    let conn = Connection::open(&url).await.expect("connect");
    let sent = Instant::now();
    conn.producer()
        .exchange(Exchange::topic(name.clone()))
        .message(&"from rust")
        .routing_key(key.clone())
        .delay(Duration::from_secs(2))
        .send()
        .await
        .expect("delayed publish on Python's layout");
    let got = tokio::task::spawn_blocking(move || lines.recv_timeout(Duration::from_secs(40)))
        .await
        .expect("join")
        .expect("Python received the delayed message");
    let got: Json = serde_json::from_str(&got).expect("JSON");
    assert_eq!(got["body"], "from rust");
    assert!(
        sent.elapsed() >= Duration::from_secs(2),
        "delivered before its delay: {got}"
    );
    assert!(
        got["routing_key"]
            .as_str()
            .is_some_and(|k| k.ends_with(&format!(".{key}"))),
        "{got}"
    );
}

#[tokio::test]
async fn rust_declares_and_receives_what_python_delays() {
    let Some((url, python)) = setup("kombu-rs-delayed-rs").await else {
        return;
    };
    let name = format!("delayed-{}", uuid::Uuid::new_v4().simple());
    let key = format!("{name}.key");
    let conn = Connection::open(&url).await.expect("connect");
    let exchange = Exchange::topic(name.clone());
    let queue = Queue::new(format!("{name}.rs"))
        .exchange(exchange.clone())
        .routing_key(format!("#.{key}"));
    let mut consumer = conn.consumer([queue]).build().await.expect("consume");
    // kombu-rs's first delayed publish declares the layout (and binds the delivery exchange).
    conn.producer()
        .exchange(exchange)
        .message(&"from rust")
        .routing_key(key.clone())
        .delay(Duration::from_secs(1))
        .send()
        .await
        .expect("delayed publish");
    // Python declares the same layout again (no PRECONDITION_FAILED) and publishes.
    let out = python_command(&python, &["declare-and-publish", &url, &name, &key, "2"])
        .output()
        .expect("run Python");
    assert!(
        out.status.success(),
        "Python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(last_json(&out.stdout)["published"], true);
    let sent = Instant::now();
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(30), consumer.next())
            .await
            .expect("the delayed messages arrive")
            .expect("stream open")
            .expect("delivery");
        bodies.push(d.decode::<String>().expect("JSON"));
        d.ack().await.expect("ack");
    }
    assert_eq!(bodies, ["from rust", "from python"]);
    assert!(
        sent.elapsed() >= Duration::from_millis(1500),
        "Python's 2 s delay was not kept"
    );
}
