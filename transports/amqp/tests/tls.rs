//! `amqps://` against the broker's TLS listener on 127.0.0.1:5671 (scripts/test configures it,
//! with a server certificate from a test CA: `$KOMBU_TEST_AMQP_TLS_CA`).

use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Queue};

/// The test CA, or `None` (skip, or a failure when the AMQP tests are required).
fn test_ca() -> Option<String> {
    match std::env::var("KOMBU_TEST_AMQP_TLS_CA") {
        Ok(ca) => Some(ca),
        Err(_) => {
            let why =
                "KOMBU_TEST_AMQP_TLS_CA is not set (scripts/test sets up RabbitMQ's TLS listener)";
            let required = std::env::var("KOMBU_TEST_REQUIRE")
                .unwrap_or_default()
                .split(',')
                .any(|r| r.trim() == "all" || r.trim() == "amqp");
            if required {
                panic!("{why}; KOMBU_TEST_REQUIRE requires it");
            }
            eprintln!("skipped: {why}");
            None
        }
    }
}

#[tokio::test]
async fn amqps_round_trip_with_the_test_ca_and_refusal_without_it() {
    let Some(ca) = test_ca() else {
        return;
    };
    kombu_amqp::register();
    let url = format!("amqps://guest:guest@127.0.0.1:5671/?ssl_ca_certs={ca}");
    let conn = Connection::open(&url)
        .await
        .expect("a TLS connection verified against the test CA");
    let queue = Queue::new(format!("tls-{}", uuid::Uuid::new_v4().simple())).auto_delete(true);
    conn.declare_queue(&queue).await.expect("declare");
    conn.producer()
        .routing_key(queue.name.as_str())
        .publish("over TLS")
        .await
        .expect("confirmed publish");
    let mut consumer = conn
        .consumer([queue.clone()])
        .build()
        .await
        .expect("consumer");
    let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
        .await
        .expect("a delivery")
        .expect("open stream")
        .expect("delivery");
    assert_eq!(delivery.decode::<String>().expect("decode"), "over TLS");
    delivery.ack().await.expect("ack");
    consumer.close().await.expect("close");
    conn.delete_queue(&queue.name).await.expect("delete");

    // The system's roots do not know the test CA: the server is not trusted.
    let untrusted = Connection::open("amqps://guest:guest@127.0.0.1:5671/?connect_timeout=10")
        .await
        .expect_err("a server certificate no trusted CA signed");
    assert!(
        untrusted.to_string().to_lowercase().contains("cert")
            || format!("{untrusted:?}").to_lowercase().contains("cert"),
        "{untrusted:?}"
    );
}
