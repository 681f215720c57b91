//! Crash mode: a consumer killed with SIGKILL loses nothing. What it held comes back after the
//! visibility timeout, what it acked never comes back.
//!
//! A transport turns it on with a `harness = false` test target (`[[test]] name = "crash"`,
//! `harness = false`) whose `main` calls [`main`] with a [`CrashHarness`] and a [`CrashPlan`].
//! The binary is the parent, or, when `KOMBU_<TRANSPORT>_CRASH_CHILD` names a broker URL, the
//! child consumer (the same binary, re-executed):
//!
//! 1. The parent publishes [`CrashPlan::total`] messages (`{"id": N}`) to queue `crash` in a
//!    fresh namespace whose visibility timeout is short (the harness's URL).
//! 2. The child consumes with [`CrashPlan::prefetch`], acks [`CrashPlan::acked_by_child`] and
//!    prints each acked id; then it takes [`CrashPlan::held_by_child`] more without settling
//!    them, prints their ids, makes sure its acks reached the broker (a read, which writes any
//!    batched acks first), prints `READY` and sleeps.
//! 3. The parent kills it (`Child::kill`: SIGKILL on Unix; no destructor, no channel close).
//! 4. A new consumer in the parent takes and acks messages until every message the child did
//!    not ack has arrived. Checked: none of the acked ids comes back; every other id arrives;
//!    an id arrives twice only if it was in flight at the kill (never, with
//!    [`CrashPlan::exactly_once`]); the redelivered ones are exactly the ones the child held;
//!    nothing more arrives afterwards and the queue is empty.
//!
//! Timeouts ([`CrashPlan::guard`]) only guard against hanging; nothing here asserts how fast
//! anything is.
//!
//! ```no_run
//! struct Memory;
//! #[async_trait::async_trait]
//! impl kombu_core::conformance::crash::CrashHarness for Memory {
//!     fn transport(&self) -> &'static str {
//!         "memory"
//!     }
//!     fn register(&self) {
//!         kombu_core::transport::memory::register();
//!     }
//!     async fn fresh_url(&self) -> String {
//!         "memory://crash?visibility_timeout=2".to_owned()
//!     }
//! }
//! fn main() {
//!     kombu_core::conformance::crash::main(&Memory, &Default::default());
//! }
//! ```

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value as Json, json};

use super::support::{KillOnDrop, lines};
use crate::{Connection, Consumer, Delivery, Queue};

/// The test's name, as test runners list and filter it.
pub const TEST_NAME: &str = "killed_consumer_loses_nothing";

/// The queue the messages go through.
const QUEUE: &str = "crash";

/// What a transport's broker must provide for the crash test.
#[async_trait]
pub trait CrashHarness: Send + Sync {
    /// The transport's name; the child's environment variable is
    /// `KOMBU_<NAME IN CAPITALS>_CRASH_CHILD`.
    fn transport(&self) -> &'static str;

    /// Registers the transport's URL schemes (in the parent and in the child).
    fn register(&self);

    /// URL of a fresh namespace on the broker (a key prefix, a new database file) with a
    /// visibility timeout of about 2 s. A test helper: it panics when it cannot make one.
    async fn fresh_url(&self) -> String;

    /// Removes what the test left under `url` once it passed (a failing test keeps it for
    /// inspection).
    async fn clean(&self, url: &str) {
        let _ = url;
    }
}

/// How many messages the crash test moves, and what it may accept.
#[derive(Debug, Clone)]
pub struct CrashPlan {
    /// Messages published before the child starts.
    pub total: u64,
    /// Messages the child acks before it is killed.
    pub acked_by_child: usize,
    /// Messages the child holds unsettled when it is killed.
    pub held_by_child: usize,
    /// The prefetch of the child and of the parent's consumer (at least `held_by_child`).
    pub prefetch: u16,
    /// How long any step may take before the test fails as hung.
    pub guard: Duration,
    /// Whether every message the child did not ack must arrive exactly once afterwards;
    /// otherwise the ones in flight at the kill may arrive twice (at-least-once).
    pub exactly_once: bool,
}

impl Default for CrashPlan {
    /// 10,000 messages, 3,000 acked and 100 held by the child, prefetch 100, 120 s guard,
    /// exactly once.
    fn default() -> Self {
        CrashPlan {
            total: 10_000,
            acked_by_child: 3_000,
            held_by_child: 100,
            prefetch: 100,
            guard: Duration::from_secs(120),
            exactly_once: true,
        }
    }
}

/// The `main` of a transport's crash test target: runs the child when this process is one,
/// else lists, filters (as `cargo test FILTER` and nextest pass them) and runs the test.
pub fn main<H: CrashHarness>(harness: &H, plan: &CrashPlan) {
    let child_env = format!(
        "KOMBU_{}_CRASH_CHILD",
        harness.transport().to_ascii_uppercase()
    );
    if let Ok(url) = std::env::var(&child_env) {
        runtime().block_on(child(harness, plan, &url));
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
    runtime().block_on(parent(harness, plan, &child_env));
    println!("test {TEST_NAME} ... ok");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime") // ok: a test helper; panics are its failures
}

fn id_of(d: &Delivery) -> u64 {
    d.decode::<Json>().expect("decode")["id"] // ok: a test helper; panics are its failures
        .as_u64()
        .expect("an id in the body") // ok: a test helper; panics are its failures
}

async fn next_within(consumer: &mut Consumer, guard: Duration, who: &str) -> Delivery {
    match tokio::time::timeout(guard, consumer.next()).await {
        Err(_) => panic!("{who}: no delivery within {guard:?}"),
        Ok(None) => panic!("{who}: the stream ended"),
        Ok(Some(d)) => d.unwrap_or_else(|e| panic!("{who}: delivery: {e}")),
    }
}

async fn child<H: CrashHarness>(harness: &H, plan: &CrashPlan, url: &str) {
    harness.register();
    let conn = Connection::open(url).await.expect("child: open"); // ok: a test helper
    let mut consumer = conn
        .consumer([Queue::new(QUEUE)])
        .prefetch(plan.prefetch)
        .build()
        .await
        .expect("child: consume"); // ok: a test helper
    let mut out = std::io::stdout().lock();
    for _ in 0..plan.acked_by_child {
        let d = next_within(&mut consumer, plan.guard, "child").await;
        let id = id_of(&d);
        d.ack().await.expect("child: ack"); // ok: a test helper
        // The parent must never see these again (the acks are on the broker by READY).
        writeln!(out, "ACKED {id}").expect("stdout"); // ok: a test helper
    }
    let mut held = Vec::with_capacity(plan.held_by_child);
    for _ in 0..plan.held_by_child {
        let d = next_within(&mut consumer, plan.guard, "child").await;
        writeln!(out, "HELD {}", id_of(&d)).expect("stdout"); // ok: a test helper
        held.push(d);
    }
    // A transport may queue acks and write them in batches (kombu-redis does); any read writes
    // the queued ones first. This barrier makes every ACKED line above an ack that is on the
    // broker before the parent kills us (a kill could otherwise lose the last few).
    conn.queue_size(QUEUE).await.expect("child: flush acks"); // ok: a test helper
    writeln!(out, "READY").expect("stdout"); // ok: a test helper
    out.flush().expect("stdout"); // ok: a test helper
    drop(out);
    // Killed here, holding the unsettled deliveries.
    tokio::time::sleep(Duration::from_secs(600)).await;
    drop(held);
}

/// Says where the broker's state is when the test fails (it is cleaned only on success).
struct KeptOnFailure<'a>(&'a str);

impl Drop for KeptOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("broker state kept for inspection: {}", self.0);
        }
    }
}

async fn parent<H: CrashHarness>(harness: &H, plan: &CrashPlan, child_env: &str) {
    harness.register();
    let url = harness.fresh_url().await;
    let kept = KeptOnFailure(&url);
    let started = Instant::now();
    let total = plan.total;
    let guard = plan.guard;
    let conn = Connection::open(&url).await.expect("open"); // ok: a test helper
    conn.declare_queue(&Queue::new(QUEUE))
        .await
        .expect("declare"); // ok: a test helper
    let producer = conn.producer().routing_key(QUEUE);
    let bodies: Vec<Json> = (0..total).map(|id| json!({ "id": id })).collect();
    for chunk in bodies.chunks(1_000) {
        producer.publish_batch(chunk).await.expect("publish"); // ok: a test helper
    }
    assert_eq!(conn.queue_size(QUEUE).await.expect("size"), total); // ok: a test helper

    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().expect("current exe")) // ok: a test helper
            .env(child_env, &url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the child consumer"), // ok: a test helper
    );
    let stdout = child.0.stdout.take().expect("child stdout"); // ok: piped above
    let rx = lines(stdout);
    let mut acked = HashSet::new();
    let mut held = HashSet::new();
    let deadline = Instant::now() + guard;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => panic!(
                "the child did not get ready within {guard:?} ({e}); acked {} held {}; \
                 exit status {:?}",
                acked.len(),
                held.len(),
                child.0.try_wait()
            ),
        };
        if line == "READY" {
            break;
        }
        let (what, id) = line.split_once(' ').expect("a child line"); // ok: a test helper
        let id: u64 = id.parse().expect("an id"); // ok: a test helper
        let fresh = match what {
            "ACKED" => acked.insert(id),
            "HELD" => held.insert(id),
            other => panic!("unexpected child line {other} {id}"),
        };
        assert!(fresh, "the child got id {id} twice");
    }
    assert_eq!(acked.len(), plan.acked_by_child);
    assert_eq!(held.len(), plan.held_by_child);
    assert!(acked.is_disjoint(&held));

    child.0.kill().expect("SIGKILL the child"); // ok: a test helper
    let status = child.0.wait().expect("reap the child"); // ok: a test helper
    assert!(!status.success(), "the child was killed, not finished");
    let killed_at = started.elapsed();

    // A fresh connection, as a restarted worker would have.
    let conn = Connection::open(&url).await.expect("reopen"); // ok: a test helper
    let mut consumer = conn
        .consumer([Queue::new(QUEUE)])
        .prefetch(plan.prefetch)
        .build()
        .await
        .expect("consume"); // ok: a test helper
    let expected = total as usize - plan.acked_by_child;
    let mut received: HashMap<u64, usize> = HashMap::new();
    let mut redelivered = HashSet::new();
    let mut deliveries = 0usize;
    let mut first_delivery = None;
    let deadline = Instant::now() + guard;
    while received.len() < expected {
        let left = deadline.saturating_duration_since(Instant::now());
        let d = match tokio::time::timeout(left, consumer.next()).await {
            Err(_) => panic!(
                "only {} of {expected} messages arrived within {guard:?}; missing (first 20): \
                 {:?}",
                received.len(),
                (0..total)
                    .filter(|id| !acked.contains(id) && !received.contains_key(id))
                    .take(20)
                    .collect::<Vec<_>>()
            ),
            Ok(None) => panic!("the stream ended"),
            Ok(Some(d)) => d.expect("delivery"), // ok: a test helper
        };
        deliveries += 1;
        first_delivery.get_or_insert_with(|| started.elapsed());
        let id = id_of(&d);
        assert!(
            !acked.contains(&id),
            "id {id}, acked by the killed child, was delivered again"
        );
        let seen = received.entry(id).or_default();
        *seen += 1;
        assert!(
            !plan.exactly_once || *seen == 1,
            "id {id} delivered twice after the kill"
        );
        if d.redelivered() {
            redelivered.insert(id);
        }
        d.ack().await.expect("ack"); // ok: a test helper
    }
    let duplicates: HashSet<u64> = received
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| *id)
        .collect();
    eprintln!(
        "crash: {total} published, child acked {} and held {}, killed after {killed_at:?}; \
         afterwards {deliveries} deliveries of {} ids, {} redelivered, {} duplicated; \
         recovery took {:?}",
        acked.len(),
        held.len(),
        received.len(),
        redelivered.len(),
        duplicates.len(),
        started.elapsed() - killed_at,
    );
    // The fault mode's one-line report: sent, received, lost, duplicated, and the time from
    // the kill to the new consumer's first delivery.
    eprintln!(
        "{}",
        super::faults::FaultReport {
            name: format!("{} consumer SIGKILL", harness.transport()),
            sent: total,
            received: (acked.len() + received.len()) as u64,
            lost: (0..total)
                .filter(|id| !acked.contains(id) && !received.contains_key(id))
                .count() as u64,
            duplicated: duplicates.len() as u64,
            recovery: first_delivery.map_or(Duration::ZERO, |at| at.saturating_sub(killed_at)),
            publish_retries: 0,
            stale_acks: 0,
            link_losses: 0,
        }
    );
    let all: HashSet<u64> = (0..total).collect();
    let got: HashSet<u64> = received.keys().copied().collect();
    assert_eq!(
        got,
        all.difference(&acked).copied().collect::<HashSet<u64>>(),
        "every id the child did not ack arrives"
    );
    if plan.exactly_once {
        assert_eq!(deliveries, expected, "no duplicates");
    }
    assert!(
        duplicates.is_subset(&held),
        "only messages in flight at the kill may arrive twice: {:?}",
        duplicates.difference(&held).take(20).collect::<Vec<_>>()
    );
    assert_eq!(
        redelivered, held,
        "the redelivered messages are exactly the ones the child held unsettled"
    );
    // Nothing else comes (another look after one more visibility timeout).
    if let Ok(Some(extra)) =
        tokio::time::timeout(Duration::from_millis(2_500), consumer.next()).await
    {
        panic!("an extra delivery after all {expected} arrived: {extra:?}");
    }
    consumer.close().await.expect("close"); // ok: a test helper
    assert_eq!(conn.queue_size(QUEUE).await.expect("size"), 0); // ok: a test helper
    drop(kept);
    harness.clean(&url).await;
}
