//! A password-protected Redis (started by this test on a free loopback port): a URL without
//! the password is refused at connect time with the server's NOAUTH, as an access error, and
//! nothing panics; with the password everything works.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, ErrorKind, Queue};

const PASSWORD: &str = "k13-s3cret";

/// A `redis-server` child, killed when dropped.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `redis-server --requirepass` on a free port; `None` (skip) when there is no
/// `redis-server` and `KOMBU_TEST_REQUIRE` is not set.
fn start() -> Option<Server> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let spawned = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--requirepass", PASSWORD])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(e) => {
            let why = format!("cannot start redis-server: {e}");
            if std::env::var_os("KOMBU_TEST_REQUIRE").is_some() {
                panic!("{why}; KOMBU_TEST_REQUIRE is set, so this is a failure");
            }
            eprintln!("skipped: {why}");
            return None;
        }
    };
    let server = Server { child, port };
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "redis-server on port {port} did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(server)
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
