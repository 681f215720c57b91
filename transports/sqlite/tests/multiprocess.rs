//! Two publisher processes and two consumer processes on one SQLite file: every message is
//! consumed exactly once, and no process fails (no `database is locked`).
//!
//! A `harness = false` test target: `main` is the parent, or, when `KOMBU_SQLITE_MP_ROLE` is
//! set, a child (the same binary, re-executed) with the database URL in `KOMBU_SQLITE_MP_URL`:
//!
//! - `publish:P`: publishes ids `P * 10,000 .. (P + 1) * 10,000` as `{"id": N}` to queue `mp`,
//!   the first 2,000 one by one (one transaction each, the most lock contention) and the rest in
//!   batches of 100; prints `DONE`.
//! - `consume`: consumes `mp` and acks each delivery, printing `ID N` once the ack is done,
//!   until its standard input closes; then closes its consumer (returning anything it took
//!   ahead) and prints `DONE`.
//!
//! All four start at once on a file that does not exist yet, so they also race to create the
//! schema. The parent collects the consumers' output until 20,000 distinct ids have been acked,
//! closes their standard input, and checks: every id exactly once across both consumers, every
//! child exited successfully, no child wrote `database is locked` (or anything else) to its
//! standard error, and the queue is empty.
//!
//! The timeout (120 s) only guards against hanging; nothing here asserts how fast anything is.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Queue};
use serde_json::{Value as Json, json};

const TEST_NAME: &str = "two_publishers_two_consumers_every_message_once";
const ROLE_ENV: &str = "KOMBU_SQLITE_MP_ROLE";
const URL_ENV: &str = "KOMBU_SQLITE_MP_URL";
const QUEUE: &str = "mp";
const PER_PUBLISHER: u64 = 10_000;
const PUBLISHERS: u64 = 2;
const ONE_BY_ONE: u64 = 2_000;
const GUARD: Duration = Duration::from_secs(120);

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let url = std::env::var(URL_ENV).expect("child: no database URL");
        runtime().block_on(async {
            match role.split_once(':') {
                Some(("publish", p)) => publisher(&url, p.parse().expect("publisher number")).await,
                None if role == "consume" => consumer(&url).await,
                _ => panic!("unknown role {role}"),
            }
        });
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        // The test is not ignored: the list of ignored tests (`--ignored`, which nextest asks
        // for too) is empty, else nextest would skip it as ignored.
        if !args.iter().any(|a| a == "--ignored") {
            println!("{TEST_NAME}: test");
        }
        return;
    }
    // `cargo test FILTER` passes the filter to every test binary: honour it.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| TEST_NAME.contains(f.as_str())) {
        println!("test {TEST_NAME} ... filtered out");
        return;
    }
    println!("test {TEST_NAME} ...");
    parent();
    println!("test {TEST_NAME} ... ok");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn open(url: &str) -> Connection {
    kombu_sqlite::register();
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn publisher(url: &str, p: u64) {
    let conn = open(url).await;
    let producer = conn
        .producer()
        .routing_key(QUEUE)
        .declare(Queue::new(QUEUE));
    let ids = p * PER_PUBLISHER..(p + 1) * PER_PUBLISHER;
    let (single, batched) = (
        ids.start..ids.start + ONE_BY_ONE,
        ids.start + ONE_BY_ONE..ids.end,
    );
    for id in single {
        producer
            .publish(&json!({ "id": id }))
            .await
            .unwrap_or_else(|e| panic!("publisher {p}: publish {id}: {e}"));
    }
    let bodies: Vec<Json> = batched.map(|id| json!({ "id": id })).collect();
    for chunk in bodies.chunks(100) {
        producer
            .publish_batch(chunk)
            .await
            .unwrap_or_else(|e| panic!("publisher {p}: publish a batch: {e}"));
    }
    println!("DONE");
}

async fn consumer(url: &str) {
    let conn = open(url).await;
    let mut consumer = conn
        .consumer([Queue::new(QUEUE)])
        .prefetch(100)
        .build()
        .await
        .expect("consumer: consume");
    // Standard input closing is the signal to stop.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = stop_tx.send(());
    });
    println!("READY");
    let mut out = std::io::stdout().lock();
    loop {
        tokio::select! {
            _ = &mut stop_rx => break,
            item = consumer.next() => {
                let d = item
                    .expect("consumer: the stream ended")
                    .unwrap_or_else(|e| panic!("consumer: delivery: {e}"));
                let id = d.decode::<Json>().expect("consumer: decode")["id"]
                    .as_u64()
                    .expect("consumer: an id");
                d.ack().await.unwrap_or_else(|e| panic!("consumer: ack {id}: {e}"));
                writeln!(out, "ID {id}").expect("stdout");
            }
        }
    }
    consumer.close().await.expect("consumer: close");
    writeln!(out, "DONE").expect("stdout");
}

struct TempDb {
    dir: PathBuf,
    path: PathBuf,
}

impl TempDb {
    fn new(name: &str) -> TempDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "kombu-sqlite-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the temp directory");
        let path = dir.join("broker.db");
        TempDb { dir, path }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("database kept for inspection: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A child process; killed if the parent fails first.
struct Worker {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Event {
    Line(String, String),
    Closed,
}

fn spawn(name: &str, role: &str, url: &str, events: &mpsc::Sender<Event>) -> Worker {
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(ROLE_ENV, role)
        .env(URL_ENV, url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let stdout = child.stdout.take().expect("stdout");
    let tx = events.clone();
    let who = name.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(Event::Line(who.clone(), line)).is_err() {
                return;
            }
        }
        let _ = tx.send(Event::Closed);
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    Worker {
        name: name.to_owned(),
        stdin: child.stdin.take(),
        child,
        stderr: Some(stderr),
    }
}

fn parent() {
    let db = TempDb::new("multiprocess");
    let url = format!("sqlite://{}", db.path.to_str().expect("UTF-8 path"));
    let total = (PER_PUBLISHER * PUBLISHERS) as usize;
    let (tx, rx) = mpsc::channel();
    let mut workers = vec![
        spawn("consumer-0", "consume", &url, &tx),
        spawn("consumer-1", "consume", &url, &tx),
        spawn("publisher-0", "publish:0", &url, &tx),
        spawn("publisher-1", "publish:1", &url, &tx),
    ];
    drop(tx);

    // id -> the consumers that acked it (a duplicate shows both).
    let mut acked: HashMap<u64, Vec<String>> = HashMap::with_capacity(total);
    let mut lines = 0usize;
    let mut done: Vec<String> = Vec::new();
    let mut closed = 0;
    let deadline = Instant::now() + GUARD;
    let mut stopping = false;
    while closed < workers.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match rx.recv_timeout(left) {
            Ok(event) => event,
            Err(e) => {
                let stderr: Vec<String> = workers
                    .iter_mut()
                    .map(|w| {
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                        let text = w.stderr.take().map(|h| h.join().unwrap_or_default());
                        format!("{}: {}", w.name, text.unwrap_or_default())
                    })
                    .collect();
                panic!(
                    "not finished within {GUARD:?} ({e}): {} distinct ids acked of {total}, \
                     finished: {done:?}; stderr: {stderr:#?}",
                    acked.len()
                );
            }
        };
        match event {
            Event::Closed => closed += 1,
            Event::Line(who, line) => {
                if line == "DONE" {
                    done.push(who);
                } else if line == "READY" {
                } else if let Some(id) = line.strip_prefix("ID ") {
                    let id: u64 = id.parse().expect("an id");
                    assert!(id < total as u64, "{who} acked unknown id {id}");
                    acked.entry(id).or_default().push(who);
                    lines += 1;
                } else {
                    panic!("unexpected line from {who}: {line}");
                }
            }
        }
        if !stopping && acked.len() == total {
            // Every id arrived: stop the consumers (anything late shows up as a duplicate).
            stopping = true;
            for w in &mut workers {
                drop(w.stdin.take());
            }
        }
    }

    let mut failures = Vec::new();
    for w in &mut workers {
        let status = w.child.wait().expect("wait for a child");
        let stderr = w
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if !status.success() || !stderr.trim().is_empty() {
            failures.push(format!("{} exited {status}; stderr:\n{stderr}", w.name));
        }
    }
    assert!(
        failures.is_empty(),
        "children failed:\n{}",
        failures.join("\n")
    );
    done.sort();
    assert_eq!(
        done,
        ["consumer-0", "consumer-1", "publisher-0", "publisher-1"],
        "every child finished"
    );
    let duplicates: Vec<(&u64, &Vec<String>)> = acked
        .iter()
        .filter(|(_, by)| by.len() > 1)
        .take(20)
        .collect();
    assert!(
        duplicates.is_empty(),
        "acked more than once (first 20): {duplicates:?}"
    );
    assert_eq!(acked.len(), total, "every id acked");
    assert_eq!(lines, total, "no id acked twice");
    let per_consumer = |name: &str| {
        acked
            .values()
            .filter(|by| by.iter().any(|b| b == name))
            .count()
    };
    println!(
        "consumer-0 acked {}, consumer-1 acked {}",
        per_consumer("consumer-0"),
        per_consumer("consumer-1")
    );

    let rt = runtime();
    rt.block_on(async {
        let conn = open(&url).await;
        assert_eq!(
            conn.queue_size(QUEUE).await.expect("size"),
            0,
            "queue empty"
        );
    });
}
