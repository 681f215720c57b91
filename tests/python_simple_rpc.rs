//! kombu-rs's `simple` and `rpc` against Python kombu on one broker, both ways, on Redis,
//! RabbitMQ and SQLite (Python's SQLAlchemy transport on the same file); SimpleBuffer on Redis
//! and SQLite (its queue is exclusive, which RabbitMQ enforces per connection).
//!
//! `tests/interop/simple_rpc.py` is Python's side: a `kombu.simple.SimpleQueue` putting and
//! getting, a server answering with `kombu.common.send_reply`, a client publishing with
//! `reply_to` / `correlation_id` and reading its replies with `collect_replies`. The Python
//! interpreter is `$KOMBU_PYTHON` (scripts/python-env); without one the tests fail when
//! `KOMBU_TEST_REQUIRE` is set and are skipped otherwise.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kombu::rpc::{RpcClient, RpcServer};
use kombu::simple::{SimpleBuffer, SimpleQueue};
use kombu::{Connection, DeliveryMode};
use kombu_test_support::brokers;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

const WAIT: Duration = Duration::from_secs(10);
const TRANSPORTS: [&str; 3] = ["redis", "amqp", "sqlite"];

fn script() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/interop/simple_rpc.py")
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// Python's URL and transport options for the broker kombu-rs opens at `url`.
fn python_side(transport: &str, url: &str) -> (String, String) {
    match transport {
        "redis" => {
            let (base, query) = url.split_once('?').expect("a key prefix");
            let prefix = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("global_keyprefix="))
                .expect("global_keyprefix");
            (
                base.to_owned(),
                json!({ "global_keyprefix": prefix }).to_string(),
            )
        }
        "sqlite" => {
            let file = url.strip_prefix("sqlite://").expect("a SQLite file");
            (
                format!("sqla+sqlite:///{file}"),
                json!({ "polling_interval": 0.05 }).to_string(),
            )
        }
        _ => (url.to_owned(), "{}".to_owned()),
    }
}

fn command(python: &Path, transport: &str, url: &str, args: &[&str]) -> Command {
    let (py_url, options) = python_side(transport, url);
    let mut command = Command::new(python);
    command
        .arg(script())
        .arg(args[0])
        .arg(py_url)
        .arg(options)
        .args(&args[1..]);
    command
}

/// Runs a command of the script to its end (blocking) and returns what it printed.
fn run(python: &Path, transport: &str, url: &str, args: &[&str]) -> Json {
    let out = command(python, transport, url, args)
        .output()
        .expect("run simple_rpc.py");
    assert!(
        out.status.success(),
        "{transport}: simple_rpc.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{transport}: simple_rpc.py {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

async fn run_async(
    python: PathBuf,
    transport: &'static str,
    url: String,
    args: Vec<String>,
) -> Json {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&python, transport, &url, &args)
    })
    .await
    .expect("the Python command")
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Item {
    n: u32,
    from: String,
}

/// What Python printed after getting the three items Rust put (n 10..13, header origin=rust)
/// with `mode`.
fn assert_rust_items(got: &Json, t: &str, mode: DeliveryMode) {
    let messages = got["messages"].as_array().expect("messages");
    let bodies: Vec<&Json> = messages.iter().map(|m| &m["body"]).collect();
    assert_eq!(
        bodies,
        [
            &json!({"n": 10, "from": "rust"}),
            &json!({"n": 11, "from": "rust"}),
            &json!({"n": 12, "from": "rust"})
        ],
        "{t}"
    );
    for m in messages {
        assert_eq!(m["headers"]["origin"], "rust", "{t}: {m}");
        assert_eq!(m["delivery_mode"], mode.as_u8(), "{t}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queues_interoperate_with_python() {
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    for transport in TRANSPORTS {
        let Some(broker) = brokers::broker(transport, "py-simple") else {
            continue;
        };
        let t = transport;
        let name = unique("py-simple");

        // Python puts, Rust gets.
        let put = run(&python, t, &broker.url, &["simple_put", &name, "3"]);
        assert_eq!(put["put"], 3, "{t}");
        let conn = Connection::open(&broker.url).await.expect("open");
        let mut queue = SimpleQueue::new(&conn, &name).await.expect(t);
        for n in 0..3 {
            let item = queue.get::<Item>(WAIT).await.expect(t);
            assert_eq!(
                *item,
                Item {
                    n,
                    from: "python".into()
                },
                "{t}"
            );
            let headers = item.delivery().headers();
            assert_eq!(
                headers.get("origin").and_then(|v| v.as_str()),
                Some("python"),
                "{t}"
            );
            assert_eq!(item.delivery().routing_key(), name, "{t}");
            item.ack().await.expect(t);
        }

        // Rust puts, Python gets.
        for n in 10..13 {
            queue
                .message(&Item {
                    n,
                    from: "rust".into(),
                })
                .header("origin", "rust")
                .send()
                .await
                .expect(t);
        }
        queue.close().await.expect(t);
        let got = run_async(
            python.clone(),
            t,
            broker.url.clone(),
            vec!["simple_get".into(), name.clone(), "3".into()],
        )
        .await;
        assert_rust_items(&got, t, DeliveryMode::Persistent);
        assert_eq!(conn.queue_size(&name).await.expect(t), 0, "{t}");
        conn.delete_queue(&name).await.expect(t);
        conn.close().await.expect(t);
    }
}

/// A SimpleBuffer's queue is exclusive, and RabbitMQ gives an exclusive queue to one
/// connection: a Python and a Rust buffer cannot share one there (by design, for both). On
/// the stores, which have no exclusive queues, they share it as kombu does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_buffers_interoperate_with_python_on_the_stores() {
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    for transport in ["redis", "sqlite"] {
        let Some(broker) = brokers::broker(transport, "py-buffer") else {
            continue;
        };
        let t = transport;
        let name = unique("py-buffer");

        // Python puts, Rust gets (no ack: the buffer settles as it takes).
        let put = run(&python, t, &broker.url, &["buffer_put", &name, "3"]);
        assert_eq!(put["put"], 3, "{t}");
        let conn = Connection::open(&broker.url).await.expect("open");
        let mut buffer = SimpleBuffer::new(&conn, &name).await.expect(t);
        for n in 0..3 {
            let item: Item = buffer.get(WAIT).await.expect(t);
            assert_eq!(
                item,
                Item {
                    n,
                    from: "python".into()
                },
                "{t}"
            );
        }
        assert_eq!(buffer.qsize().await.expect(t), 0, "{t}: taken is gone");
        buffer.close().await.expect(t);

        // Rust puts (transient), Python gets. A buffer that never consumed: closing one that
        // did would delete its auto-delete queue, as kombu's does.
        let buffer = SimpleBuffer::new(&conn, &name).await.expect(t);
        for n in 10..13 {
            buffer
                .message(&Item {
                    n,
                    from: "rust".into(),
                })
                .header("origin", "rust")
                .send()
                .await
                .expect(t);
        }
        buffer.close().await.expect(t);
        let got = run_async(
            python.clone(),
            t,
            broker.url.clone(),
            vec!["buffer_get".into(), name.clone(), "3".into()],
        )
        .await;
        assert_rust_items(&got, t, DeliveryMode::Transient);
        let _ = conn.delete_queue(&name).await;
        conn.close().await.expect(t);
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Sum {
    a: i64,
    b: i64,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Answer {
    sum: i64,
    server: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_server_answers_a_python_client() {
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    for transport in TRANSPORTS {
        let Some(broker) = brokers::broker(transport, "py-rpc-client") else {
            continue;
        };
        let t = transport;
        let queue = unique("py-rpc-server");
        let conn = Connection::open(&broker.url).await.expect("open");
        let server = RpcServer::new(&conn, queue.as_str()).await.expect(t);
        let running = server.spawn(|req: Sum| async move {
            Ok(Answer {
                sum: req.a + req.b,
                server: "rust".into(),
            })
        });
        let out = run_async(
            python.clone(),
            t,
            broker.url.clone(),
            vec!["rpc_client".into(), queue.clone(), "3".into()],
        )
        .await;
        let mut replies = out["replies"].as_array().expect("replies").clone();
        replies.sort_by_key(|r| r["correlation_id"].as_str().unwrap_or_default().to_owned());
        assert_eq!(replies.len(), 3, "{t}: {out}");
        for (i, reply) in replies.iter().enumerate() {
            assert_eq!(reply["correlation_id"], format!("py-{i}"), "{t}: {reply}");
            assert_eq!(
                reply["body"],
                json!({"sum": i + 10, "server": "rust"}),
                "{t}: {reply}"
            );
            assert_eq!(reply["content_type"], "application/json", "{t}: {reply}");
        }
        running.stop().await.expect(t);
        conn.delete_queue(&queue).await.expect(t);
        conn.close().await.expect(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_calls_a_python_server() {
    let Some(python) = kombu_test_support::python() else {
        return;
    };
    for transport in TRANSPORTS {
        let Some(broker) = brokers::broker(transport, "py-rpc-server") else {
            continue;
        };
        let t = transport;
        let queue = unique("py-rpc-server");
        let mut child = command(&python, t, &broker.url, &["rpc_server", &queue, "3"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the Python server");
        let stdout = child.stdout.take().expect("stdout");
        let (lines, ready) = tokio::task::spawn_blocking(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.next().and_then(Result::ok);
            (lines, ready)
        })
        .await
        .expect("read");
        assert_eq!(
            ready.as_deref(),
            Some("ready"),
            "{t}: the Python server did not start"
        );

        let conn = Connection::open(&broker.url).await.expect("open");
        let client = RpcClient::new(&conn).await.expect(t);
        let calls = (0..3).map(|a| Sum { a, b: 100 }).collect::<Vec<_>>();
        let answers = futures::future::join_all(
            calls
                .iter()
                .map(|sum| client.call::<_, Answer>(&queue, sum, WAIT)),
        )
        .await;
        for (a, answer) in answers.into_iter().enumerate() {
            assert_eq!(
                answer.expect(t),
                Answer {
                    sum: a as i64 + 100,
                    server: "python".into()
                },
                "{t}"
            );
        }
        assert_eq!(client.late_replies(), 0, "{t}");
        let reply_to = client.reply_to().to_owned();
        client.close().await.expect(t);

        let (done, status) = tokio::task::spawn_blocking(move || {
            let done: Vec<String> = lines.map_while(Result::ok).collect();
            (done, child.wait_with_output())
        })
        .await
        .expect("wait");
        let status = status.expect("the Python server");
        assert!(
            status.status.success(),
            "{t}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        let report: Json = serde_json::from_str(done.last().expect("a report")).expect("JSON");
        assert_eq!(report["served"], 3, "{t}: {report}");
        for request in report["requests"].as_array().expect("requests") {
            let seen = request["reply_to"].as_str().unwrap_or_default();
            // RabbitMQ hands the server the full direct reply-to address.
            assert!(seen.starts_with(&reply_to), "{t}: {request}");
            assert_eq!(request["content_type"], "application/json", "{t}");
            assert_eq!(
                request["correlation_id"].as_str().map(str::len),
                Some(32),
                "{t}"
            );
        }
        conn.delete_queue(&queue).await.expect(t);
        conn.close().await.expect(t);
    }
}
