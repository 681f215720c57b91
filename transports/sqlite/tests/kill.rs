//! Producer and consumer processes on one SQLite file, SIGKILLed at random points and
//! restarted, while messages flow: nothing a producer saw committed is lost, and what arrives
//! twice is only what a killed consumer had in hand.
//!
//! A `harness = false` test target: `main` is the parent, or, when `KOMBU_SQLITE_KILL_ROLE` is
//! set, a child (the same binary, re-executed) with the database URL in
//! `KOMBU_SQLITE_KILL_URL`:
//!
//! - `produce:G`: publishes `{"id": G * 1,000,000 + n}` for n = 0, 1, ... to queue `kill`, one
//!   publish at a time, printing `SENT id` once each publish returned (committed);
//! - `consume`: consumes `kill` (prefetch 10), printing `RECV id` for each delivery before it
//!   acks it.
//!
//! The parent runs one producer and one consumer and, every 0.2 to 1.2 s (a pseudo-random
//! pause), SIGKILLs one or both and starts new ones, for `KOMBU_SOAK_SECONDS` (default 10 s;
//! `scripts/soak` runs it longer). Consumers alternate between the file's default visibility
//! timeout (3,600 s) and a short one (2 s): what a killed consumer had taken under the long
//! one comes back through a consumer with the short one, by the visibility rule (the take time
//! plus the restorer's own timeout), not after an hour. Then the producer is killed for good,
//! a consumer with the short timeout drains the queue, and the parent counts: sent (a `SENT`
//! line), received (distinct ids), lost (sent, never received: must be 0), duplicated
//! (received more than once: only ids a killed consumer had received first), and the time
//! from each consumer's start to its first delivery. The guards (60 s of draining) only keep
//! a failure from hanging; nothing here asserts how fast anything is.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kombu_core::{Connection, Queue};
use serde_json::{Value as Json, json};

const TEST_NAME: &str = "producers_and_consumers_killed_lose_nothing";
const ROLE_ENV: &str = "KOMBU_SQLITE_KILL_ROLE";
const URL_ENV: &str = "KOMBU_SQLITE_KILL_URL";
const QUEUE: &str = "kill";
const SHORT_VISIBILITY: &str = "visibility_timeout=2";
const DRAIN_GUARD: Duration = Duration::from_secs(60);

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        let url = std::env::var(URL_ENV).expect("child: no database URL");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(async {
            match role.split_once(':') {
                Some(("produce", g)) => produce(&url, g.parse().expect("generation")).await,
                None if role == "consume" => consume(&url).await,
                _ => panic!("unknown role {role}"),
            }
        });
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        // Not ignored: the list of ignored tests is empty (nextest asks for both).
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

async fn open(url: &str) -> Connection {
    kombu_sqlite::register();
    Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("open {url}: {e}"))
}

async fn produce(url: &str, generation: u64) {
    let conn = open(url).await;
    let producer = conn
        .producer()
        .routing_key(QUEUE)
        .declare(Queue::new(QUEUE));
    let mut out = std::io::stdout().lock();
    for n in 0.. {
        let id = generation * 1_000_000 + n;
        producer
            .publish(&json!({ "id": id }))
            .await
            .unwrap_or_else(|e| panic!("producer: publish {id}: {e}"));
        writeln!(out, "SENT {id}").expect("stdout");
    }
}

async fn consume(url: &str) {
    let conn = open(url).await;
    let mut consumer = conn
        .consumer([Queue::new(QUEUE)])
        .prefetch(10)
        .build()
        .await
        .expect("consumer: consume");
    let mut out = std::io::stdout().lock();
    while let Some(item) = consumer.next().await {
        let d = item.unwrap_or_else(|e| panic!("consumer: delivery: {e}"));
        let id = d.decode::<Json>().expect("consumer: decode")["id"]
            .as_u64()
            .expect("consumer: an id");
        writeln!(out, "RECV {id}").expect("stdout");
        d.ack()
            .await
            .unwrap_or_else(|e| panic!("consumer: ack {id}: {e}"));
    }
    panic!("consumer: the stream ended");
}

/// A line a child printed: which child (`P<g>` or `C<g>`), the line, and when it was read.
type Line = (String, String, Instant);

/// A running child and the generation it is.
struct Running {
    child: Child,
    generation: u64,
    started: Instant,
}

struct Parent {
    exe: std::path::PathBuf,
    base_url: String,
    lines: mpsc::Sender<Line>,
}

impl Parent {
    fn spawn(&self, name: String, role: String, url: &str) -> Child {
        let mut child = Command::new(&self.exe)
            .env(ROLE_ENV, role)
            .env(URL_ENV, url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn a child");
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = self.lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines.send((name.clone(), line, Instant::now())).is_err() {
                    break;
                }
            }
        });
        child
    }

    fn producer(&self, generation: u64) -> Running {
        let child = self.spawn(
            format!("P{generation}"),
            format!("produce:{generation}"),
            &self.base_url,
        );
        Running {
            child,
            generation,
            started: Instant::now(),
        }
    }

    /// Even generations take with the short visibility timeout, odd ones with the default.
    fn consumer(&self, generation: u64) -> Running {
        let url = if generation.is_multiple_of(2) {
            format!("{}?{SHORT_VISIBILITY}", self.base_url)
        } else {
            self.base_url.clone()
        };
        let child = self.spawn(format!("C{generation}"), "consume".to_owned(), &url);
        Running {
            child,
            generation,
            started: Instant::now(),
        }
    }
}

fn kill(running: &mut Running) {
    // SIGKILL on Unix: no destructor, no close, no restore runs in the child.
    let _ = running.child.kill();
    let _ = running.child.wait();
}

/// xorshift64*: pseudo-random pauses and choices without another dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Default)]
struct Counts {
    sent: HashSet<u64>,
    /// Sent and not received yet.
    outstanding: HashSet<u64>,
    received: HashMap<u64, u32>,
    /// Consumer generation that first received each id.
    first_by: HashMap<u64, u64>,
    /// Consumer generation → time from its start to its first delivery.
    first_delivery: HashMap<u64, Duration>,
    /// Consumer generation → when it was killed.
    killed_at: HashMap<u64, Instant>,
    /// For each message a killed consumer had and another received again: the time from the
    /// kill to the second delivery.
    restored_after: Vec<Duration>,
}

impl Counts {
    fn take(&mut self, (who, line, at): Line, consumers: &HashMap<u64, Instant>) {
        let Some((what, id)) = line.split_once(' ') else {
            panic!("{who}: unexpected output {line:?}");
        };
        let id: u64 = id.parse().expect("an id");
        match what {
            "SENT" => {
                self.sent.insert(id);
                if !self.received.contains_key(&id) {
                    self.outstanding.insert(id);
                }
            }
            "RECV" => {
                let generation: u64 = who[1..].parse().expect("a generation");
                self.outstanding.remove(&id);
                let seen = self.received.entry(id).or_default();
                *seen += 1;
                if *seen == 2
                    && let Some(killed) = self.first_by.get(&id).and_then(|g| self.killed_at.get(g))
                {
                    self.restored_after
                        .push(at.saturating_duration_since(*killed));
                }
                self.first_by.entry(id).or_insert(generation);
                if let Some(started) = consumers.get(&generation) {
                    self.first_delivery
                        .entry(generation)
                        .or_insert_with(|| at.saturating_duration_since(*started));
                }
            }
            _ => panic!("{who}: unexpected output {line:?}"),
        }
    }
}

fn parent() {
    let seconds: u64 = std::env::var("KOMBU_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let dir =
        std::env::temp_dir().join(format!("kombu-sqlite-kill-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create the temp directory");
    let path = dir.join("broker.db");
    let (tx, rx) = mpsc::channel::<Line>();
    let parent = Parent {
        exe: std::env::current_exe().expect("this test's binary"),
        base_url: format!("sqlite://{}", path.to_str().expect("UTF-8 path")),
        lines: tx,
    };
    let mut rng = Rng(u64::try_from(nanos & u128::from(u64::MAX)).unwrap_or(1) | 1);
    let mut counts = Counts::default();
    let mut consumer_starts: HashMap<u64, Instant> = HashMap::new();
    let (mut kills_p, mut kills_c) = (0u32, 0u32);
    let mut killed_consumers: HashSet<u64> = HashSet::new();

    let mut producer = parent.producer(0);
    let mut consumer = parent.consumer(0);
    consumer_starts.insert(0, consumer.started);
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        let pause = Duration::from_millis(200 + rng.next() % 1000);
        let until = Instant::now() + pause;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(line) => counts.take(line, &consumer_starts),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    unreachable!("the parent holds a sender")
                }
            }
        }
        let which = rng.next() % 3;
        if which != 1 {
            kill(&mut producer);
            kills_p += 1;
            producer = parent.producer(producer.generation + 1);
        }
        if which != 0 {
            kill(&mut consumer);
            kills_c += 1;
            killed_consumers.insert(consumer.generation);
            counts.killed_at.insert(consumer.generation, Instant::now());
            consumer = parent.consumer(consumer.generation + 1);
            consumer_starts.insert(consumer.generation, consumer.started);
        }
    }
    kill(&mut producer);
    kills_p += 1;
    if !consumer.generation.is_multiple_of(2) {
        // Drain with the short timeout: it restores what the long-timeout ones left leased.
        kill(&mut consumer);
        kills_c += 1;
        killed_consumers.insert(consumer.generation);
        counts.killed_at.insert(consumer.generation, Instant::now());
        consumer = parent.consumer(consumer.generation + 1);
        consumer_starts.insert(consumer.generation, consumer.started);
    }
    let drain_start = Instant::now();
    // When the last message sent arrived (lines the killed producer printed are read for at
    // least half a second before the sent set counts as final).
    let mut drained = Duration::ZERO;
    loop {
        if counts.outstanding.is_empty() && drain_start.elapsed() > Duration::from_millis(500) {
            break;
        }
        if drain_start.elapsed() > DRAIN_GUARD {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let at = line.2;
                counts.take(line, &consumer_starts);
                if counts.outstanding.is_empty() {
                    drained = at.saturating_duration_since(drain_start);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the parent holds a sender"),
        }
    }
    kill(&mut consumer);
    while let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
        counts.take(line, &consumer_starts);
    }

    let lost: Vec<u64> = {
        let mut lost: Vec<u64> = counts
            .sent
            .iter()
            .filter(|id| !counts.received.contains_key(id))
            .copied()
            .collect();
        lost.sort_unstable();
        lost
    };
    let duplicated: Vec<u64> = counts
        .received
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    let unconfirmed = counts
        .received
        .keys()
        .filter(|id| !counts.sent.contains(id))
        .count();
    let mut recoveries: Vec<Duration> = counts.first_delivery.values().copied().collect();
    recoveries.sort_unstable();
    let median = recoveries
        .get(recoveries.len() / 2)
        .copied()
        .unwrap_or_default();
    let max = recoveries.last().copied().unwrap_or_default();
    let mut restored = counts.restored_after.clone();
    restored.sort_unstable();
    let restored_median = restored
        .get(restored.len() / 2)
        .copied()
        .unwrap_or_default();
    let restored_max = restored.last().copied().unwrap_or_default();
    println!(
        "sqlite kill test: {seconds} s, {kills_p} producer kills, {kills_c} consumer kills; \
         sent (committed) {}, received {} (+{unconfirmed} committed by a producer killed before \
         it printed), lost {}, duplicated {}; consumer start to first delivery: median {:?}, \
         max {:?}; a killed consumer's message redelivered after the kill: median {:?}, max \
         {:?}; every sent message received {:?} after the producer's last kill",
        counts.sent.len(),
        counts.received.len() - unconfirmed,
        lost.len(),
        duplicated.len(),
        median,
        max,
        restored_median,
        restored_max,
        drained,
    );
    assert!(
        lost.is_empty(),
        "{} committed messages never arrived: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(!counts.sent.is_empty(), "the producers sent nothing");
    // A duplicate is a message a consumer received and was killed before its ack committed.
    let unexplained: Vec<u64> = duplicated
        .iter()
        .filter(|id| {
            counts
                .first_by
                .get(id)
                .is_none_or(|g| !killed_consumers.contains(g))
        })
        .copied()
        .collect();
    assert!(
        unexplained.is_empty(),
        "delivered twice though the first consumer was not killed: {unexplained:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
