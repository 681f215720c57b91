//! A password-protected Redis (started by this test on a free loopback port): a URL without
//! the password is refused at connect time with the server's NOAUTH, as an access error, and
//! nothing panics; with the password everything works. An ACL user the server does not allow
//! transactions is refused at connect time too, naming what it lacks.

use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, ErrorKind, Queue};

mod support;

const PASSWORD: &str = "k13-s3cret";

fn start() -> Option<support::Server> {
    support::start(&["--requirepass", PASSWORD])
}

#[tokio::test]
async fn a_password_protected_server_without_the_password_is_an_access_error() {
    let Some(server) = start() else { return };
    kombu_redis::register();
    let port = server.port;

    let err = Connection::open(&format!("redis://127.0.0.1:{port}/0"))
        .await
        .expect_err("no password for a server that requires one");
    assert_eq!(err.kind(), ErrorKind::AccessRefused, "{err}");
    let text = err.to_string();
    assert!(text.contains("NOAUTH"), "{text}");
    assert!(text.contains("requires a password"), "{text}");

    // The password written where the user name goes is not sent (Redis has no user name
    // alone), so the same error, and the secret is not shown.
    let err = Connection::open(&format!("redis://{PASSWORD}@127.0.0.1:{port}/0"))
        .await
        .expect_err("a lone user info is not a password");
    assert_eq!(err.kind(), ErrorKind::AccessRefused, "{err}");
    assert!(!err.to_string().contains(PASSWORD), "{err}");
    assert!(!format!("{err:?}").contains(PASSWORD), "{err:?}");

    // With the password: declare (a transaction), publish, size, consume and ack.
    let conn = Connection::open(&format!("redis://:{PASSWORD}@127.0.0.1:{port}/0"))
        .await
        .expect("the password is accepted");
    let q = Queue::new("jobs");
    conn.declare_queue(&q).await.expect("declare");
    conn.producer()
        .routing_key("jobs")
        .publish(&"hi")
        .await
        .expect("publish");
    assert_eq!(conn.queue_size("jobs").await.expect("size"), 1);
    let mut consumer = conn.consumer([q]).build().await.expect("consumer");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery in time")
        .expect("the stream is open")
        .expect("a delivery");
    assert_eq!(delivery.decode::<String>().expect("decode"), "hi");
    delivery.ack().await.expect("ack");
    consumer.close().await.expect("close the consumer");
    conn.close().await.expect("close");
}

/// The redis crate (1.8) panics in its connection task when the `MULTI` of a transaction is
/// refused; a user without `+multi` is told so when it connects instead of meeting a broken
/// pipe at its first declaration.
#[tokio::test]
async fn an_acl_user_refused_transactions_is_an_access_error_at_connect() {
    let Some(server) = start() else { return };
    kombu_redis::register();
    let port = server.port;
    let admin =
        redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{port}/0")).expect("client");
    let mut admin = admin.get_connection().expect("admin connection");
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nomulti")
        .arg("on")
        .arg(">pw")
        .arg("~*")
        .arg("&*")
        .arg("+@all")
        .arg("-multi")
        .query(&mut admin)
        .expect("create the ACL user");

    let err = Connection::open(&format!("redis://nomulti:pw@127.0.0.1:{port}/0"))
        .await
        .expect_err("a user that may not run MULTI");
    assert_eq!(err.kind(), ErrorKind::AccessRefused, "{err}");
    let text = err.to_string();
    assert!(text.contains("refuses MULTI"), "{text}");
    assert!(text.contains("NOPERM"), "{text}");
    assert!(text.contains("+multi"), "{text}");

    // Allowed transactions, the same user declares a queue (a transaction) and uses it.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("nomulti")
        .arg("+multi")
        .query(&mut admin)
        .expect("allow MULTI");
    let conn = Connection::open(&format!("redis://nomulti:pw@127.0.0.1:{port}/0"))
        .await
        .expect("the user connects");
    conn.declare_queue(&Queue::new("jobs"))
        .await
        .expect("declare");
    conn.producer()
        .routing_key("jobs")
        .publish(&"hi")
        .await
        .expect("publish");
    assert_eq!(conn.queue_size("jobs").await.expect("size"), 1);
    conn.close().await.expect("close");
}
