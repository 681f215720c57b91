//! `rediss://` against the TLS-only server scripts/test starts on 127.0.0.1:6380, whose
//! certificate comes from the test CA `$KOMBU_TEST_REDIS_TLS_CA`.

use futures::StreamExt;
use kombu_core::{Connection, Queue};

/// The CA file, or `None` (skip) when there is no TLS server and nothing requires one.
fn ca() -> Option<String> {
    let path = std::env::var("KOMBU_TEST_REDIS_TLS_CA").ok().or_else(|| {
        let home = std::env::var("HOME").ok()?;
        let p = format!("{home}/.cache/kombu-rs/tls/ca.pem");
        std::path::Path::new(&p).exists().then_some(p)
    });
    if path.is_none() {
        let why = "no TLS Redis (scripts/test starts one on 127.0.0.1:6380)";
        if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
            panic!("{why}; KOMBU_TEST_REQUIRE is set, so this is a failure");
        }
        eprintln!("skipped: {why}");
    }
    path
}

fn url(query: &str) -> String {
    format!(
        "rediss://127.0.0.1:6380/0?global_keyprefix=tls-{}:&{query}",
        uuid::Uuid::new_v4().simple()
    )
}

#[tokio::test]
async fn round_trip_over_tls_with_the_servers_ca() {
    let Some(ca) = ca() else { return };
    kombu_redis::register();
    let conn = Connection::open(&url(&format!("ssl_ca_certs={ca}")))
        .await
        .expect("connect over TLS");
    let q = Queue::new("secure");
    conn.declare_queue(&q).await.expect("declare");
    conn.producer()
        .routing_key("secure")
        .publish("over tls")
        .await
        .expect("publish");
    let mut consumer = conn.consumer([q]).build().await.expect("consume");
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
        .expect("not refused");
    assert_eq!(d.decode::<String>().expect("decode"), "over tls");
    d.ack().await.expect("ack");
    consumer.close().await.expect("close");
}

#[tokio::test]
async fn an_untrusted_certificate_is_refused_unless_verification_is_off() {
    let Some(_) = ca() else { return };
    kombu_redis::register();
    // The system roots do not trust the test CA.
    let err = Connection::open(&url(""))
        .await
        .expect_err("an unverifiable certificate must fail");
    assert_eq!(err.kind(), kombu_core::ErrorKind::Connection, "{err}");
    // kombu's ssl_cert_reqs=none connects without verifying.
    let conn = Connection::open(&url("ssl_cert_reqs=none"))
        .await
        .expect("connect without verification");
    assert!(
        !conn
            .queue_exists("nothing-here")
            .await
            .expect("a round trip")
    );
}
