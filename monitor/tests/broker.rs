//! The broker page's data on every transport but memory: `/api/broker/queues` (ready,
//! unacked, consumers, the oldest message's age and how it is known, the dead-letter queue,
//! what the transport cannot tell), `/api/broker/queues/<name>/messages` (messages read
//! without taking them; 501 on AMQP) and the queue gauges of `/metrics`; on RabbitMQ with
//! what its management API adds (unacked, the head message's timestamp, rates).

mod support;

use std::time::Duration;

use kombu_core::{Connection, Queue};
use kombu_monitor::Monitor;
use kombu_test_support::brokers;
use kombu_test_support::http::{get as http_get, post as http_post};
use serde_json::{Value as Json, json};

/// `GET path` on `port` off the runtime's threads: status and body.
async fn get(port: u16, path: &str) -> (u16, String) {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || http_get(port, &path))
        .await
        .expect("joined")
        .unwrap_or_else(|| panic!("no answer"))
}

/// `POST path` with a form `body` on `port`: status and body.
async fn post(port: u16, path: &str, body: &str) -> (u16, String) {
    let (path, body) = (path.to_owned(), body.to_owned());
    tokio::task::spawn_blocking(move || http_post(port, &path, &body))
        .await
        .expect("joined")
        .unwrap_or_else(|| panic!("no answer"))
}

/// The report of queue `name` in a `/api/broker/queues` body.
fn queue_of(body: &str, name: &str) -> Json {
    let all: Json = serde_json::from_str(body).expect("JSON");
    all["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("{name} not in {body}"))
}

/// A metric sample's value in a text exposition, if present.
fn sample(text: &str, family: &str, queue: &str) -> Option<f64> {
    let prefix = format!("{family}{{queue=\"{queue}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

async fn check(broker: brokers::Broker) {
    let transport = broker.transport;
    let conn = Connection::open(&broker.url).await.expect("open");
    let name = format!("monitor-broker-{}", uuid::Uuid::new_v4().simple());
    let dlq = format!("{name}.dlq");
    for q in [&name, &dlq] {
        conn.declare_queue(&Queue::new(q.clone()))
            .await
            .expect("declare");
    }
    let producer = conn.producer().routing_key(name.clone());
    // Published "a minute ago" by their timestamp property (RabbitMQ reports the head's).
    let stamped = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        - 60;
    for n in 1..=3 {
        producer
            .message(&json!({"n": n}))
            .header("task", "tasks.add")
            .properties(kombu_core::Properties::default().timestamp(stamped))
            .send()
            .await
            .expect("publish");
    }
    conn.producer()
        .routing_key(dlq.clone())
        .publish(&"dead")
        .await
        .expect("publish a dead letter");
    // One message held: unacked.
    let channel = conn.channel().await.expect("channel");
    let held = channel
        .get(&name, false)
        .await
        .expect("get")
        .expect("a message to hold");

    let monitor = Monitor::builder(&conn)
        .queues([name.clone()])
        .start()
        .await
        .expect("start");
    let (port, server) = support::serve(&monitor).await;

    let (status, body) = get(port, "/api/broker/queues").await;
    assert_eq!(status, 200, "{transport}: {body}");
    let all: Json = serde_json::from_str(&body).expect("JSON");
    let report = queue_of(&body, &name);
    assert_eq!(report["ready"], 2, "{transport}: {report}");
    assert_eq!(
        report["dead_letter_queue"],
        json!({"name": dlq, "ready": 1}),
        "{transport}: {report}"
    );
    if transport == "amqp" {
        assert_eq!(all["transport"], "rabbitmq");
        assert_eq!(report["consumers"], 0, "{report}");
        assert!(all["unreported"]["messages"].is_string(), "{body}");
        assert_eq!(
            all["management_api"],
            json!({"url": "http://127.0.0.1:15672/api/", "error": null}),
            "{body}"
        );
        // The management API samples its figures every few seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let report = loop {
            let (_, body) = get(port, "/api/broker/queues").await;
            let report = queue_of(&body, &name);
            if report["unacked"] == 1 && report["oldest_message_age"].is_number() {
                break report;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the management API never told the held message and the head's timestamp: \
                 {body}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(
            report["oldest_message_age_source"], "message_timestamp",
            "{report}"
        );
        let age = report["oldest_message_age"].as_f64().expect("an age");
        assert!((59.0..600.0).contains(&age), "{report}");
        assert!(
            report["publish_rate"].is_number() || report["publish_rate"].is_null(),
            "{report}"
        );
    } else {
        assert_eq!(report["unacked"], 1, "{transport}: {report}");
        assert_eq!(report["consumers"], Json::Null, "{transport}: {report}");
        assert!(all["unreported"]["consumers"].is_string(), "{body}");
        let source = if transport == "mongodb" {
            "store"
        } else {
            "observed"
        };
        assert_eq!(
            report["oldest_message_age_source"], source,
            "{transport}: {report}"
        );
        if source == "observed" {
            // Seen at the head a moment ago, and still there later (reports are kept two
            // seconds).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (_, body) = get(port, "/api/broker/queues").await;
                let later = queue_of(&body, &name);
                let age = later["oldest_message_age"].as_f64().expect("an age");
                if age >= 1.0 {
                    assert_eq!(later["oldest_message_age_source"], "observed");
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{transport}: the age does not grow: {later}"
                );
            }
        } else {
            assert!(
                report["oldest_message_age"]
                    .as_f64()
                    .is_some_and(|a| (0.0..600.0).contains(&a)),
                "{transport}: {report}"
            );
        }
    }

    let path = format!("/api/broker/queues/{name}/messages?limit=10");
    let (status, body) = get(port, &path).await;
    if transport == "amqp" {
        assert_eq!(status, 501, "{body}");
        assert!(body.contains("redeliver=yes"), "{body}");
        // Taking and requeueing, only when asked for by name.
        let (status, body) = post(port, &path, "").await;
        assert_eq!(status, 400, "{body}");
        let (status, body) = post(port, &path, "redeliver=yes").await;
        assert_eq!(status, 200, "{body}");
        let seen: Json = serde_json::from_str(&body).expect("JSON");
        let bodies: Vec<&Json> = seen["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| &m["body"])
            .collect();
        assert_eq!(bodies, [&json!({"n": 2}), &json!({"n": 3})], "{body}");
        assert_eq!(seen["requeued"], 2, "{body}");
        // Back in the queue, in their order, marked redelivered.
        let again = channel.get(&name, false).await.expect("get").expect("n 2");
        assert_eq!(again.decode::<Json>().expect("JSON"), json!({"n": 2}));
        assert!(again.redelivered());
        again.requeue().await.expect("requeue");
    } else {
        assert_eq!(status, 200, "{transport}: {body}");
        let seen: Json = serde_json::from_str(&body).expect("JSON");
        let messages = seen["messages"].as_array().expect("messages");
        let bodies: Vec<&Json> = messages.iter().map(|m| &m["body"]).collect();
        assert_eq!(
            bodies,
            [&json!({"n": 2}), &json!({"n": 3})],
            "{transport}: the ready ones in order, the held one not: {body}"
        );
        assert_eq!(messages[0]["headers"]["task"], "tasks.add", "{body}");
        assert_eq!(messages[0]["body_encoding"], "json", "{body}");
        assert_eq!(messages[0]["redelivered"], false, "{body}");
        // Nothing was taken.
        let (_, body) = get(port, "/api/broker/queues").await;
        assert_eq!(queue_of(&body, &name)["ready"], 2, "{transport}: {body}");
        let (status, _) = get(port, &format!("/api/broker/queues/{name}/messages?limit=x")).await;
        assert_eq!(status, 400);
        let (status, body) = get(port, "/api/broker/queues/no-such-queue-here/messages").await;
        assert_eq!(status, 404, "{transport}: {body}");
    }

    let (status, text) = get(port, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&text, "kombu_queue_messages", &name),
        Some(2.0),
        "{transport}: {text}"
    );
    let unacked = sample(&text, "kombu_queue_unacked_messages", &name);
    let age = sample(&text, "kombu_queue_oldest_message_age_seconds", &name);
    if transport == "amqp" {
        assert_eq!(unacked, Some(1.0), "{text}");
        assert!(age.is_some_and(|a| a >= 59.0), "{text}");
    } else {
        assert_eq!(unacked, Some(1.0), "{transport}: {text}");
        assert!(age.is_some_and(|a| a >= 0.0), "{transport}: {text}");
    }

    // The dead letter goes back to its queue.
    let (status, body) = post(port, &format!("/api/broker/queues/{name}/replay"), "").await;
    assert_eq!(status, 200, "{transport}: {body}");
    assert_eq!(
        serde_json::from_str::<Json>(&body).expect("JSON"),
        json!({"moved": 1, "unreadable": 0, "dead_letter_queue": dlq}),
        "{transport}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while conn.queue_size(&name).await.expect("size") != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "{transport}: not replayed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(conn.queue_size(&dlq).await.expect("size"), 0);
    let (status, _) = post(port, "/api/broker/queues/no-such-queue-here/replay", "").await;
    assert_eq!(status, 404);

    held.ack().await.expect("ack");
    channel.close().await.expect("close the channel");
    server.abort();
    monitor.stop().await;

    // Read-only: both steering calls refused.
    let monitor = Monitor::builder(&conn)
        .queues([name.clone()])
        .read_only(true)
        .start()
        .await
        .expect("start");
    let (port, server) = support::serve(&monitor).await;
    for path in [
        format!("/api/broker/queues/{name}/replay"),
        format!("/api/broker/queues/{name}/messages"),
    ] {
        let (status, body) = post(port, &path, "redeliver=yes").await;
        assert_eq!((status, body.as_str()), (403, "Read only mode is enabled"));
    }
    server.abort();
    monitor.stop().await;
    for q in [&name, &dlq] {
        conn.delete_queue(q).await.expect("delete");
    }
    conn.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_page_on_every_transport() {
    kombu_redis::register();
    kombu_amqp::register();
    kombu_sqlite::register();
    kombu_mongodb::register();
    for transport in ["sqlite", "redis", "amqp", "mongodb"] {
        if let Some(broker) = brokers::broker(transport, "monitor-broker") {
            check(broker).await;
        }
    }
}
