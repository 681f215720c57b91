//! Fault mode: messages keep flowing while the broker is restarted or cut off, and every
//! confirmed message arrives.
//!
//! A transport's fault test (a binary of its own: it runs a broker of its own, see
//! `kombu-test-support`'s `faults` module) calls [`run`] with the broker's URL, a
//! [`FaultPlan`] and the fault itself: a blocking closure that restarts the server, or cuts
//! the link and restores it, and returns the instant the server was reachable again. The
//! runner:
//!
//! 1. opens two connections (one publishes, one consumes) and starts an acking consumer on a
//!    fresh queue;
//! 2. publishes [`FaultPlan::messages`] messages (`u32` ids) in batches, with confirms where
//!    the transport has them, through a producer whose built-in retry is off
//!    (`.retry(false)`); a batch that fails is published again by the runner (after a short
//!    sleep) until it succeeds, so the publisher rides through the outage with that loop as
//!    its only retry. A batch that was published again may arrive twice;
//! 3. once [`FaultPlan::fault_after`] messages are confirmed, runs the fault on a blocking
//!    thread; until the fault returns, batches go out every 10 ms so that some are on their
//!    way when the connection drops, and the last [`FaultPlan::held_back`] messages wait for
//!    the server's return, so some are published after it;
//! 4. consumes and acks until every confirmed id has arrived. The consumer is the one built
//!    before the fault: it must resume by itself (a stream that ends, or errors that are
//!    not recoverable, fail the test; recoverable error items are counted and shown). An ack
//!    that fails (a delivery taken on a connection that is gone) is counted as stale;
//! 5. closes the consumer, which must return `Ok` (a consumer's close reports acks it could
//!    not write), and checks that the queue is empty (an ack given up on would leave its
//!    message leased, to come again after the visibility timeout).
//!
//! It returns a [`FaultReport`]: sent (confirmed), received (distinct ids), lost (confirmed
//! but never received: must be 0, the runner fails otherwise), duplicated (ids received more
//! than once), and the recovery time, from the server's return to the first delivery after
//! it. A duplicate is allowed only for an id in flight at the fault: first received no
//! earlier than [`ACK_WINDOW`] before the fault started (its ack may still have been on its
//! way when the connection dropped), or whose ack failed, or published again by the retry
//! loop, or whose publish was under way while the fault ran. An id received and acked well
//! before the fault that arrives again fails the run.
//!
//! Every wait is bounded by [`FaultPlan::guard`]; nothing asserts how fast anything is (the
//! numbers are printed).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::{Duration, Instant};
//!
//! use kombu_core::conformance::faults::{self, FaultPlan};
//!
//! kombu_core::transport::memory::register();
//! let plan = FaultPlan {
//!     messages: 200,
//!     batch: 20,
//!     fault_after: 60,
//!     held_back: 40,
//!     prefetch: 10,
//!     guard: Duration::from_secs(30),
//! };
//! // The memory broker cannot fail: this "fault" only pauses (a real test kills a server).
//! let report = faults::run("memory pause", "memory://doc-faults", &plan, || {
//!     std::thread::sleep(Duration::from_millis(50));
//!     Instant::now()
//! })
//! .await;
//! println!("{report}");
//! assert_eq!((report.sent, report.received, report.lost), (200, 200, 0));
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use parking_lot::Mutex;

use crate::{Connection, LinkState, LinkWatch, Queue};

/// How long before the fault's start an id's first receipt still counts as in flight: its ack
/// may not have reached the broker when the connection dropped (an AMQP ack is written
/// without an answer; a Redis ack may be waiting for its reply), so the broker hands it out
/// again. Deliveries received earlier than that were acked long before the fault and must
/// never come again.
pub const ACK_WINDOW: Duration = Duration::from_secs(1);

/// Counts the moves of `link` into [`LinkState::Reconnecting`] until its sender goes.
fn count_losses(mut link: LinkWatch, losses: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        let mut down = matches!(*link.borrow_and_update(), LinkState::Reconnecting { .. });
        while link.changed().await.is_ok() {
            let now = matches!(*link.borrow_and_update(), LinkState::Reconnecting { .. });
            if now && !down {
                losses.fetch_add(1, Ordering::SeqCst);
            }
            down = now;
        }
    });
}

/// What a fault run moved and how it recovered; its `Display` is one line, which each test
/// prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultReport {
    /// Which transport and fault (`"redis restart"`, `"amqp partition"`, ...).
    pub name: String,
    /// Messages published and confirmed (stored, on transports without confirms).
    pub sent: u64,
    /// Distinct messages received.
    pub received: u64,
    /// Confirmed messages never received (a passing run has 0).
    pub lost: u64,
    /// Messages received more than once.
    pub duplicated: u64,
    /// From the server's return to the first delivery after it.
    pub recovery: Duration,
    /// Batches the publisher had to publish again (they failed during the outage).
    pub publish_retries: u64,
    /// Acks refused because their delivery was taken on a connection that is gone.
    pub stale_acks: u64,
    /// Losses the two connections reported (moves to [`LinkState::Reconnecting`]; 0 on a
    /// transport that reports no link state).
    pub link_losses: u64,
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: sent {} received {} lost {} duplicated {} recovery {:.2?} \
             (publish retries {}, stale acks {}, connection losses {})",
            self.name,
            self.sent,
            self.received,
            self.lost,
            self.duplicated,
            self.recovery,
            self.publish_retries,
            self.stale_acks,
            self.link_losses
        )
    }
}

/// How many messages a fault run moves and when the fault strikes.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// Messages published in all.
    pub messages: u32,
    /// Messages per published batch.
    pub batch: u32,
    /// The fault starts once this many messages are confirmed.
    pub fault_after: u32,
    /// The last this many messages are published only after the server's return.
    pub held_back: u32,
    /// The consumer's prefetch.
    pub prefetch: u16,
    /// Bound on the whole run (a guard against hanging, not a timing assertion).
    pub guard: Duration,
}

impl FaultPlan {
    /// The short run of CI: 2,000 messages in batches of 50, the fault after 500, the last 200
    /// after the server's return, prefetch 100, a 120 s guard.
    pub fn short() -> Self {
        FaultPlan {
            messages: 2_000,
            batch: 50,
            fault_after: 500,
            held_back: 200,
            prefetch: 100,
            guard: Duration::from_secs(120),
        }
    }

    /// The soak run: 10,000 messages, the fault after 2,000, the last 500 after the return, a
    /// 300 s guard.
    pub fn long() -> Self {
        FaultPlan {
            messages: 10_000,
            batch: 50,
            fault_after: 2_000,
            held_back: 500,
            prefetch: 200,
            guard: Duration::from_secs(300),
        }
    }

    /// [`FaultPlan::long`] when `KOMBU_SOAK` is set (to anything but `0` or empty), else
    /// [`FaultPlan::short`].
    pub fn from_env() -> Self {
        match std::env::var("KOMBU_SOAK") {
            Ok(v) if !v.is_empty() && v != "0" => FaultPlan::long(),
            _ => FaultPlan::short(),
        }
    }
}

/// What the publisher task shares with the runner.
#[derive(Default)]
struct Published {
    confirmed: Mutex<HashSet<u32>>,
    /// Ids in flight at the fault: of batches that failed at least once and were published
    /// again, or whose publish was under way while the fault ran (a transport that publishes
    /// again by itself what a lost connection left unconfirmed may store those twice).
    in_flight: Mutex<HashSet<u32>>,
    count: AtomicUsize,
    retries: AtomicUsize,
    /// The fault has started.
    fault_started: AtomicBool,
    /// When the fault started.
    fault_started_at: Mutex<Option<Instant>>,
    /// The fault has returned (the server is reachable again).
    back: AtomicBool,
    /// The instant the fault returned: when the server was reachable again. Set before
    /// `back`, and read at each delivery.
    back_at: Mutex<Option<Instant>>,
}

async fn publish_all(
    conn: Arc<Connection>,
    queue: String,
    plan: FaultPlan,
    shared: Arc<Published>,
    started: Instant,
) {
    // The loop below is the publisher's only retry: the producer's own is off, so what the
    // report counts as publish retries is every one there was.
    let producer = conn.producer().routing_key(queue).retry(false);
    for start in (0..plan.messages).step_by(plan.batch.max(1) as usize) {
        if shared.count.load(Ordering::SeqCst) >= plan.fault_after as usize {
            if start + plan.held_back >= plan.messages {
                while !shared.back.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            } else if !shared.back.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let batch: Vec<u32> = (start..(start + plan.batch).min(plan.messages)).collect();
        loop {
            let back_before = shared.back.load(Ordering::SeqCst);
            let published = producer.publish_batch(batch.iter()).await;
            if !back_before && shared.fault_started.load(Ordering::SeqCst) {
                shared.in_flight.lock().extend(batch.iter().copied());
            }
            match published {
                Ok(()) => {
                    shared.confirmed.lock().extend(batch.iter().copied());
                    shared.count.fetch_add(batch.len(), Ordering::SeqCst);
                    break;
                }
                Err(e) => {
                    let n = shared.retries.fetch_add(1, Ordering::SeqCst);
                    if n < 3 || n.is_multiple_of(50) {
                        eprintln!("fault run: batch at {start} failed, publishing it again: {e}");
                    }
                    shared.in_flight.lock().extend(batch.iter().copied());
                    assert!(
                        started.elapsed() < plan.guard,
                        "the publisher could not publish the batch at {start} within {:?}: {e}",
                        plan.guard
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Runs the fault mode against the broker at `url` (its transport registered) and returns
/// what happened. `fault` runs on a blocking thread once [`FaultPlan::fault_after`] messages
/// are confirmed; it returns when the server is reachable again, with that instant.
///
/// A test helper: it panics (fails the test) when a confirmed message is lost, when the
/// consumer ends or fails instead of resuming, when a message arrives twice without having
/// been in flight at the fault, or when the run outlasts [`FaultPlan::guard`].
pub async fn run<F>(name: &str, url: &str, plan: &FaultPlan, fault: F) -> FaultReport
where
    F: FnOnce() -> Instant + Send + 'static,
{
    run_then(name, url, plan, fault, || ()).await.0
}

/// [`run`], then `at_end` on a blocking thread once every message has arrived, while the
/// run's connections are still open (to look at them: which connections a client has after
/// a partition, say); returns its result with the report.
pub async fn run_then<F, A, R>(
    name: &str,
    url: &str,
    plan: &FaultPlan,
    fault: F,
    at_end: A,
) -> (FaultReport, R)
where
    F: FnOnce() -> Instant + Send + 'static,
    A: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let started = Instant::now();
    let queue = format!("fault-{}", uuid::Uuid::new_v4().simple());
    let consumer_conn = Connection::open(url)
        .await
        .unwrap_or_else(|e| panic!("{name}: open the consumer's connection: {e}"));
    let producer_conn = Arc::new(
        Connection::open(url)
            .await
            .unwrap_or_else(|e| panic!("{name}: open the producer's connection: {e}")),
    );
    let mut consumer = consumer_conn
        .consumer([Queue::new(queue.clone())])
        .prefetch(plan.prefetch)
        .build()
        .await
        .unwrap_or_else(|e| panic!("{name}: consume: {e}"));

    let losses = Arc::new(AtomicUsize::new(0));
    count_losses(consumer_conn.link(), losses.clone());
    count_losses(producer_conn.link(), losses.clone());
    let shared = Arc::new(Published::default());
    let mut publisher = Some(tokio::spawn(publish_all(
        producer_conn.clone(),
        queue.clone(),
        plan.clone(),
        shared.clone(),
        started,
    )));
    let mut fault_task = Some({
        let shared = shared.clone();
        let fault_after = plan.fault_after as usize;
        tokio::spawn(async move {
            while shared.count.load(Ordering::SeqCst) < fault_after {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            *shared.fault_started_at.lock() = Some(Instant::now());
            shared.fault_started.store(true, Ordering::SeqCst);
            let back = tokio::task::spawn_blocking(fault).await;
            if let Ok(at) = back {
                *shared.back_at.lock() = Some(at);
            }
            shared.back.store(true, Ordering::SeqCst);
            back
        })
    });

    let mut received: HashMap<u32, usize> = HashMap::new();
    // When each id was first received.
    let mut first_seen: HashMap<u32, Instant> = HashMap::new();
    // Ids one of whose acks failed (the broker hands them out again).
    let mut ack_failed: HashSet<u32> = HashSet::new();
    let mut fault_over = false;
    let mut first_after: Option<Instant> = None;
    // The last poll of the consumer found nothing.
    let mut idle = false;
    let mut stale_acks = 0u64;
    let mut stream_errors = 0u64;
    let mut last_error = String::new();
    loop {
        if publisher.as_ref().is_some_and(|p| p.is_finished())
            && let Some(p) = publisher.take()
            && let Err(e) = p.await
        {
            std::panic::resume_unwind(e.into_panic());
        }
        if fault_task.as_ref().is_some_and(|f| f.is_finished())
            && let Some(f) = fault_task.take()
        {
            match f.await {
                Ok(Ok(_)) => fault_over = true,
                Ok(Err(e)) | Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        let all_in = publisher.is_none()
            && fault_over
            && first_after.is_some()
            && shared
                .confirmed
                .lock()
                .iter()
                .all(|n| received.contains_key(n));
        // Every id is in; go on until the consumer is idle and the queue has no ready
        // message, so copies still queued (a duplicate not yet delivered) are counted and
        // checked too.
        if all_in && idle && matches!(consumer_conn.queue_size(&queue).await, Ok(0)) {
            break;
        }
        if started.elapsed() >= plan.guard {
            // What the broker holds and how the consumer's connection stands, to tell a lost
            // message from a consumer that stopped receiving.
            let ready = match tokio::time::timeout(
                Duration::from_secs(10),
                producer_conn.queue_size(&queue),
            )
            .await
            {
                Ok(Ok(n)) => n.to_string(),
                Ok(Err(e)) => format!("unknown ({e})"),
                Err(_) => "unknown (no answer in 10 s)".to_owned(),
            };
            let link = format!("{:?}", *consumer_conn.link().borrow());
            let confirmed = shared.confirmed.lock();
            let missing: Vec<&u32> = confirmed
                .iter()
                .filter(|n| !received.contains_key(n))
                .take(10)
                .collect();
            panic!(
                "{name}: after {:?}: {} of {} confirmed messages received (missing, first \
                 10: {missing:?}); {} published, {} publish retries; fault {}; {stream_errors} \
                 error items from the consumer (last: {last_error}); {ready} ready in the queue; \
                 {} connection losses seen; the consumer's link: {link}",
                plan.guard,
                received.len(),
                confirmed.len(),
                shared.count.load(Ordering::SeqCst),
                shared.retries.load(Ordering::SeqCst),
                if fault_over { "over" } else { "not over" },
                losses.load(Ordering::SeqCst),
            );
        }
        let polled = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
        idle = polled.is_err();
        match polled {
            Err(_) => {}
            Ok(None) => panic!(
                "{name}: the consumer's stream ended instead of resuming (last error: \
                 {last_error})"
            ),
            Ok(Some(Err(e))) => {
                assert!(
                    e.delivery.is_none() && e.error.is_recoverable(),
                    "{name}: the consumer failed instead of resuming: {e}: {:#} ({:?})",
                    e.error,
                    e.error.kind()
                );
                stream_errors += 1;
                if stream_errors <= 3 {
                    eprintln!("{name}: the consumer reported (and goes on): {:#}", e.error);
                }
                last_error = format!("{:#}", e.error);
                // A consumer that reports the same failure at once, again and again, must
                // not spin the test's thread.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(Some(Ok(d))) => {
                let now = Instant::now();
                let n: u32 = d.decode().unwrap_or_else(|e| panic!("{name}: decode: {e}"));
                *received.entry(n).or_default() += 1;
                first_seen.entry(n).or_insert(now);
                if first_after.is_none() && shared.back_at.lock().is_some() {
                    first_after = Some(now);
                }
                if let Err(e) = d.ack().await {
                    ack_failed.insert(n);
                    stale_acks += 1;
                    if stale_acks <= 3 {
                        eprintln!("{name}: an ack was refused (its delivery is redelivered): {e}");
                    }
                }
            }
        }
    }

    let confirmed = shared.confirmed.lock().clone();
    let in_flight = shared.in_flight.lock().clone();
    let fault_started_at = shared.fault_started_at.lock().unwrap_or(started);
    let back = shared.back_at.lock().unwrap_or(started); // set: the loop ends after the fault
    let window_start = fault_started_at
        .checked_sub(ACK_WINDOW)
        .unwrap_or(fault_started_at);
    let duplicates: Vec<u32> = received
        .iter()
        .filter(|(_, times)| **times > 1)
        .map(|(id, _)| *id)
        .collect();
    let unexpected: Vec<String> = duplicates
        .iter()
        .filter(|id| {
            let seen = first_seen.get(id).copied().unwrap_or(started);
            seen < window_start && !ack_failed.contains(id) && !in_flight.contains(id)
        })
        .take(10)
        .map(|id| {
            let seen = first_seen.get(id).copied().unwrap_or(started);
            format!(
                "{id} (first received {:.2?} before the fault started)",
                fault_started_at.saturating_duration_since(seen)
            )
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "{name}: messages received and acked before the fault arrived again: {unexpected:?} \
         ({} duplicated in all)",
        duplicates.len()
    );
    assert_eq!(
        confirmed.len(),
        plan.messages as usize,
        "{name}: every message was published and confirmed in the end"
    );
    let report = FaultReport {
        name: name.to_owned(),
        sent: confirmed.len() as u64,
        received: received.len() as u64,
        lost: confirmed
            .iter()
            .filter(|n| !received.contains_key(n))
            .count() as u64,
        duplicated: duplicates.len() as u64,
        recovery: first_after.map_or(Duration::ZERO, |at| at.saturating_duration_since(back)),
        publish_retries: shared.retries.load(Ordering::SeqCst) as u64,
        stale_acks,
        link_losses: losses.load(Ordering::SeqCst) as u64,
    };
    assert_eq!(report.lost, 0, "{name}: confirmed messages were lost");
    let looked = match tokio::task::spawn_blocking(at_end).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    };
    // A consumer's close writes its pending acks and reports those it could not write: such a
    // message stays leased and comes again after the visibility timeout.
    if let Err(e) = consumer.close().await {
        panic!("{name}: closing the consumer failed (acks not written?): {e:#}");
    }
    let left = consumer_conn
        .ensure(&crate::RetryPolicy::default().max_retries(Some(20)), || {
            consumer_conn.queue_size(&queue)
        })
        .await
        .unwrap_or_else(|e| panic!("{name}: the queue's size at the end: {e:#}"));
    assert_eq!(left, 0, "{name}: messages left in the queue at the end");
    let _ = consumer_conn.delete_queue(&queue).await;
    let _ = consumer_conn.close().await;
    let _ = producer_conn.close().await;
    (report, looked)
}
