//! `amqps://` against the broker's TLS listener on 127.0.0.1:5671 (scripts/test configures it,
//! with a server certificate from a test CA: `$KOMBU_TEST_AMQP_TLS_CA`), and client certificates.

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

/// A certificate and key made here, signed by nobody the broker trusts (`openssl`).
fn stranger_identity(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("stranger.pem"), dir.join("stranger-key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=stranger"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "openssl: {made:?}");
    (cert.display().to_string(), key.display().to_string())
}

#[tokio::test]
async fn client_certificates_are_presented() {
    let Some(ca) = test_ca() else {
        return;
    };
    kombu_amqp::register();
    // The test CA's server certificate is also made for client authentication.
    let dir = std::path::Path::new(&ca)
        .parent()
        .expect("the test CA's folder");
    let (cert, key) = (dir.join("server.pem"), dir.join("server-key.pem"));
    let url = format!(
        "amqps://guest:guest@127.0.0.1:5671/?ssl_ca_certs={ca}&ssl_certfile={}&ssl_keyfile={}",
        cert.display(),
        key.display()
    );
    let conn = Connection::open(&url)
        .await
        .expect("a TLS connection with a client certificate the broker trusts");
    let queue = Queue::new(format!("mtls-{}", uuid::Uuid::new_v4().simple())).auto_delete(true);
    conn.declare_queue(&queue).await.expect("declare");
    conn.producer()
        .routing_key(queue.name.as_str())
        .publish("with a client certificate")
        .await
        .expect("confirmed publish");
    assert_eq!(conn.queue_size(&queue.name).await.expect("size"), 1);
    conn.delete_queue(&queue.name).await.expect("delete");
    conn.close().await.expect("close");

    // A certificate no trusted CA signed is presented too, and the broker refuses it (it
    // would let a client without one in).
    let scratch = std::env::temp_dir().join(format!("kombu-mtls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).expect("scratch folder");
    let (cert, key) = stranger_identity(&scratch);
    let refused = Connection::open(&format!(
        "amqps://guest:guest@127.0.0.1:5671/?ssl_ca_certs={ca}&ssl_certfile={cert}&ssl_keyfile={key}&connect_timeout=10"
    ))
    .await;
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(refused.is_err(), "the broker verifies client certificates");

    // Files that cannot be read are configuration errors.
    let missing = Connection::open(&format!(
        "amqps://guest:guest@127.0.0.1:5671/?ssl_ca_certs={ca}&ssl_certfile=/nonexistent.pem&ssl_keyfile=/nonexistent-key.pem"
    ))
    .await
    .expect_err("a missing certificate file");
    assert!(missing.to_string().contains("ssl_certfile"), "{missing}");
}
