//! Helpers shared by the `kombu` binary's end-to-end tests (tests/cli_*.rs): the binary on a
//! URL, brokers to run it against, and short ways to declare, publish, consume and delete.

// Each tests/cli_*.rs is a crate of its own that uses only a part of this module.
#![allow(dead_code)]

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;
use tempfile::TempDir;

/// The binary with a clean environment (no `KOMBU_URL`, no backtraces).
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kombu"));
    cmd.env_remove("KOMBU_URL")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    cmd
}

/// The binary on `url`.
pub fn kombu(url: &str) -> Command {
    let mut cmd = bin();
    cmd.args(["--url", url]);
    cmd
}

pub fn sqlite_url(dir: &Path, name: &str) -> String {
    format!("sqlite://{}", dir.join(name).display())
}

pub fn setup() -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path(), "broker.db");
    (dir, url)
}

pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.assert().success().get_output().stdout.clone();
    String::from_utf8(out).unwrap()
}

pub fn size(url: &str, queue: &str) -> u64 {
    stdout_of(kombu(url).args(["size", queue]))
        .trim()
        .parse()
        .unwrap()
}

/// Consumes `count` messages as JSON objects.
pub fn consume_json(url: &str, queue: &str, count: usize) -> Vec<Value> {
    let out = stdout_of(kombu(url).args([
        "consume",
        "--queue",
        queue,
        "--count",
        &count.to_string(),
        "--timeout",
        "5",
    ]));
    let messages: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), count, "{out}");
    messages
}

/// `redis_interop.py` of the Redis transport's tests: Python kombu's side (declares, consumes).
pub const REDIS_INTEROP_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../transports/redis/tests/interop/redis_interop.py"
);

/// A Redis URL whose `global_keyprefix` is `prefix` (Python kombu's side uses the same one).
pub fn redis_url_with_prefix(prefix: &str) -> String {
    format!("redis://127.0.0.1:6379/0?global_keyprefix={prefix}")
}

/// Runs a command of `redis_interop.py` under `prefix`; returns its stdout.
pub fn redis_interop_py(python: &Path, prefix: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(python)
        .arg(REDIS_INTEROP_PY)
        .arg(args[0])
        .arg(prefix)
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis_interop.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Deletes the `kombu publish` queues and exchanges a test made on a shared broker.
pub fn delete_entities(url: &str, queues: &[&str], exchanges: &[&str]) {
    for q in queues {
        delete_queue(url, q);
    }
    for x in exchanges {
        kombu(url)
            .args(["delete", "exchange", x])
            .assert()
            .success();
    }
}

/// A `redis-server` of this test's own on a free loopback port (so that its statistics count
/// only what the test sent), killed when dropped.
pub struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test installs it)");
        let server = PrivateRedis { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// How many times the server read from its clients' sockets: a round trip costs at least
    /// one, a pipelined batch one per socket buffer full.
    pub fn reads(&self) -> u64 {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = redis::Client::open(self.url()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let info: String = redis::cmd("INFO")
                .arg("stats")
                .query_async(&mut conn)
                .await
                .unwrap();
            info.lines()
                .find_map(|l| l.strip_prefix("total_reads_processed:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis URL under a key prefix of its own (the server scripts/test starts on 6379).
pub fn redis_url() -> String {
    format!(
        "redis://127.0.0.1:6379/0?global_keyprefix=cli-{}:",
        uuid::Uuid::new_v4().simple()
    )
}

/// The RabbitMQ scripts/test starts.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672//";

/// A queue name of its own for a test on a shared broker.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// One broker of each kind that keeps queues between commands: a SQLite file, Redis, RabbitMQ.
/// The `TempDir` holds the SQLite file.
pub fn every_broker() -> (TempDir, Vec<String>) {
    let (dir, sqlite) = setup();
    (dir, vec![sqlite, redis_url(), AMQP_URL.to_owned()])
}

/// Runs `f` with a connection to `url` through the library, on a runtime of its own.
pub fn with_connection<T>(url: &str, f: impl AsyncFnOnce(&kombu::Connection) -> T) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let conn = kombu::Connection::open(url).await.unwrap();
        let out = f(&conn).await;
        conn.close().await.unwrap();
        out
    })
}

/// Puts `message` on `queue` (declared) as another producer (a Python service) would.
pub fn put_message(url: &str, queue: &str, message: kombu::Message) {
    with_connection(url, async |conn| {
        conn.declare_queue(&kombu::Queue::new(queue)).await.unwrap();
        conn.default_channel()
            .publish(kombu::Outgoing {
                exchange: String::new(),
                routing_key: queue.to_owned(),
                message,
                mandatory: false,
            })
            .await
            .unwrap();
    })
}

pub fn queue_exists(url: &str, queue: &str) -> bool {
    with_connection(url, async |conn| conn.queue_exists(queue).await.unwrap())
}

/// A message with `content_type`, as Python kombu would write it with that serializer.
pub fn message_of(content_type: &'static str, body: &[u8]) -> kombu::Message {
    kombu::Message {
        body: body.to_vec().into(),
        content_type: Some(content_type.into()),
        content_encoding: Some("binary".into()),
        ..kombu::Message::default()
    }
}

/// `pickle.dumps({"b": b"\x01\x02\xff", "n": 1}, protocol=4)`, as Python 3 writes it.
pub const PICKLE_BYTES: &[u8] =
    b"\x80\x04\x95\x15\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01b\x94C\x03\x01\x02\xff\x94\x8c\x01n\x94K\x01u.";

pub fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// A TCP proxy to `upstream` that holds everything the broker sends for `delay` before passing
/// it on: a slow network. Returns its port; it lives as long as the test process.
pub fn slow_proxy(upstream: &str, delay: std::time::Duration) -> u16 {
    use std::io::{Read as _, Write as _};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = upstream.to_owned();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { break };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let _ = (client.set_nodelay(true), server.set_nodelay(true));
            let (Ok(mut from_client), Ok(mut to_server)) = (client.try_clone(), server.try_clone())
            else {
                continue;
            };
            let (mut from_server, mut to_client) = (server, client);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_client, &mut to_server);
                let _ = to_server.shutdown(Shutdown::Write);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = from_server.read(&mut buf) {
                    std::thread::sleep(delay);
                    if to_client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = to_client.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

/// Consumes every message of `queues` (peeking them back) as `--format json` objects.
pub fn peek_json(url: &str, queues: &[&str], count: usize) -> Vec<Value> {
    let mut cmd = kombu(url);
    cmd.arg("consume");
    for q in queues {
        cmd.args(["--queue", q]);
    }
    let out = stdout_of(cmd.args(["--requeue", "--count", &count.to_string(), "--timeout", "5"]));
    let messages: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(messages.len(), count, "{url}: {out}");
    messages
}

/// `rabbitmqctl list_exchanges name durable` row of `exchange`: its durability, if it exists.
pub fn rabbitmq_exchange_durable(exchange: &str) -> Option<bool> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "list_exchanges",
            "name",
            "durable",
            "--no-table-headers",
            "--quiet",
        ])
        .output()
        .expect("rabbitmqctl (root on the broker's machine)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .find_map(|l| {
            let (name, durable) = l.split_once('\t')?;
            (name == exchange).then(|| durable.trim() == "true")
        })
}

/// Declares `queue` on `url`.
pub fn declare(url: &str, queue: &str) {
    kombu(url)
        .args(["declare", "queue", queue])
        .assert()
        .success();
}

/// Publishes each line of `lines` to `queue` on `url` (the default exchange) as a message.
pub fn publish_lines(url: &str, queue: &str, lines: &str) {
    kombu(url)
        .args(["publish", "--routing-key", queue, "--lines"])
        .write_stdin(lines)
        .assert()
        .success();
}

/// Deletes `queue` on `url`.
pub fn delete_queue(url: &str, queue: &str) {
    kombu(url)
        .args(["delete", "queue", queue])
        .assert()
        .success();
}

/// Declares `exchange` of type `kind` on `url`.
pub fn declare_exchange(url: &str, exchange: &str, kind: &str) {
    kombu(url)
        .args(["declare", "exchange", exchange, "--type", kind])
        .assert()
        .success();
}

/// Declares `queue` on `url`, bound to `exchange` with `routing_key`.
pub fn declare_bound_queue(url: &str, queue: &str, exchange: &str, routing_key: &str) {
    kombu(url)
        .args(["declare", "queue", queue, "--exchange", exchange])
        .args(["--routing-key", routing_key])
        .assert()
        .success();
}
