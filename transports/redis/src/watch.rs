//! Blocking waits for messages, pushed by anyone (kombu-rs or Python kombu), without polling.
//!
//! Redis has no blocking multi-key peek, and a blocking pop (kombu's `BRPOP`) would take the
//! message before it is recorded as unacked. Instead each list a consumer waits on gets a
//! *watcher*: a task with a dedicated connection that sends `BLMOVE <list> <list> LEFT LEFT`.
//! That command blocks until the list has an element, then pops the newest one and pushes it
//! straight back where it was, in one atomic step: the list is unchanged, and nothing is ever
//! outside it. When it returns, the watcher wakes every consumer waiting on that list, and they
//! take messages with the atomic take script as usual.
//!
//! A watcher blocks only while someone waits on its list: a consumer that is busy handing out
//! messages costs nothing here. Watchers whose list nobody waits on for [`IDLE`] end, and their
//! connections go back to a small pool. At most [`MAX_WATCHERS`] run per connection; waits on
//! further lists, and every wait on a server without `BLMOVE` (before Redis 6.2), fall back to
//! looking at the lists every `polling_interval`. While a watcher cannot reach the server it
//! wakes its waiters every `polling_interval`, so they look for themselves.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

/// Longest one `BLMOVE` blocks; a watcher whose waiters left ends within about this long.
const BLOCK: Duration = Duration::from_secs(5);
/// How much later than [`BLOCK`] a `BLMOVE`'s answer may come before the connection is taken
/// for dead.
const RESPONSE_MARGIN: Duration = Duration::from_secs(3);
/// A watcher with no waiter for this long ends and returns its connection to the pool.
const IDLE: Duration = Duration::from_secs(30);
/// Most watchers (so dedicated connections) of one kombu-rs connection.
pub(crate) const MAX_WATCHERS: usize = 128;
/// Most idle blocking connections kept for later watchers.
const POOL: usize = 8;

/// The watchers of one backend.
pub(crate) struct Watchers {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// What the watchers of one backend share with their tasks.
struct Shared {
    client: redis::Client,
    label: String,
    /// How long a watcher that cannot reach the server waits before trying again.
    retry: Duration,
    /// The lists watched now (a watcher leaves when it ends).
    map: Mutex<HashMap<String, Arc<Watch>>>,
    /// Idle blocking connections.
    pool: Mutex<Vec<MultiplexedConnection>>,
    /// The server has no `BLMOVE`: every wait polls.
    unsupported: AtomicBool,
}

/// One watched list.
struct Watch {
    key: String,
    state: Mutex<State>,
    /// Woken (all waiters) when the list had an element.
    ready: Notify,
    /// Woken (one permit) when a waiter arrives, for a watcher with none.
    wanted: Notify,
}

#[derive(Default)]
struct State {
    /// Bumped at every wake-up; a waiter registered under an older epoch was woken.
    epoch: u64,
    /// Waiters registered under the current epoch.
    waiting: usize,
    /// A task is watching the list.
    running: bool,
}

/// A waiter's registration on one list; dropping it deregisters.
pub(crate) struct Registration {
    watch: Arc<Watch>,
    epoch: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.watch.state.lock();
        if state.epoch == self.epoch {
            state.waiting = state.waiting.saturating_sub(1);
        }
    }
}

impl Watchers {
    /// Watchers connecting with `client`; `retry` is the pause between attempts to reach an
    /// unreachable server (kombu's `polling_interval`).
    pub(crate) fn new(client: redis::Client, label: String, retry: Duration) -> Self {
        Watchers {
            shared: Arc::new(Shared {
                client,
                label,
                retry,
                map: Mutex::new(HashMap::new()),
                pool: Mutex::new(Vec::new()),
                unsupported: AtomicBool::new(false),
            }),
            tasks: Mutex::new(Vec::new()),
        }
    }

    /// Registers a waiter on each list in `keys` (starting watchers where needed) and waits
    /// until one of them has an element, `other` fires, or `timeout` passes. Returns false at
    /// once, without waiting, when the lists cannot all be watched (too many watchers, or a
    /// server without `BLMOVE`): the caller then polls.
    pub(crate) async fn wait(
        &self,
        keys: &[String],
        timeout: Duration,
        other: impl std::future::Future<Output = ()>,
    ) -> bool {
        if self.shared.unsupported.load(Ordering::Acquire) {
            return false;
        }
        let mut watches = Vec::with_capacity(keys.len());
        {
            let mut map = self.shared.map.lock();
            let new = keys.iter().filter(|k| !map.contains_key(*k)).count();
            if map.len() + new > MAX_WATCHERS {
                return false;
            }
            for key in keys {
                let watch = map
                    .entry(key.clone())
                    .or_insert_with(|| {
                        Arc::new(Watch {
                            key: key.clone(),
                            state: Mutex::new(State::default()),
                            ready: Notify::new(),
                            wanted: Notify::new(),
                        })
                    })
                    .clone();
                watches.push(watch);
            }
        }
        // Each waiter's future is enabled before it is counted, so a wake-up that follows the
        // registration is never missed.
        let mut notified = Vec::with_capacity(watches.len());
        let mut registrations = Vec::with_capacity(watches.len());
        for watch in &watches {
            let mut fut = Box::pin(watch.ready.notified());
            fut.as_mut().enable();
            notified.push(fut);
            let spawn = {
                let mut state = watch.state.lock();
                state.waiting += 1;
                registrations.push(Registration {
                    watch: watch.clone(),
                    epoch: state.epoch,
                });
                !std::mem::replace(&mut state.running, true)
            };
            if spawn {
                self.spawn(watch.clone());
            } else {
                watch.wanted.notify_one();
            }
        }
        // Fires when any list had an element (never, with no list to watch).
        let any = async move {
            if notified.is_empty() {
                std::future::pending::<()>().await;
            }
            futures::future::select_all(notified).await;
        };
        tokio::select! {
            () = any => {}
            () = other => {}
            () = tokio::time::sleep(timeout) => {}
        }
        drop(registrations);
        true
    }

    fn spawn(&self, watch: Arc<Watch>) {
        let task = tokio::spawn(run(watch, self.shared.clone()));
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }
}

impl Drop for Watchers {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

/// A watcher: blocks on its list while it has waiters, wakes them when the list has an element.
async fn run(watch: Arc<Watch>, shared: Arc<Shared>) {
    let (label, retry) = (&shared.label, shared.retry);
    let mut conn: Option<MultiplexedConnection> = None;
    // The list the connection in `conn` is named after.
    let mut named: Option<String> = None;
    loop {
        // Wait for a waiter; end after IDLE without one.
        loop {
            let wanted = watch.wanted.notified();
            tokio::pin!(wanted);
            wanted.as_mut().enable();
            if watch.state.lock().waiting > 0 {
                break;
            }
            if tokio::time::timeout(IDLE, wanted).await.is_err() {
                // Locks in the waiters' order: the map, then the watch.
                let mut map = shared.map.lock();
                let mut state = watch.state.lock();
                if state.waiting == 0 {
                    state.running = false;
                    if map.get(&watch.key).is_some_and(|w| Arc::ptr_eq(w, &watch)) {
                        map.remove(&watch.key);
                    }
                    drop((state, map));
                    if let Some(c) = conn.take() {
                        let mut pool = shared.pool.lock();
                        if pool.len() < POOL {
                            pool.push(c);
                        }
                    }
                    return;
                }
            }
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(&shared.client, &shared.pool).await {
                Ok(c) => {
                    named = None;
                    c
                }
                Err(err) => {
                    tracing::debug!(url = %label, key = %watch.key, error = %err, "redis watcher cannot connect");
                    fail(&watch, retry).await;
                    continue;
                }
            },
        };
        if named.as_deref() != Some(watch.key.as_str()) {
            // Named after its list, for whoever reads CLIENT LIST (best effort: a user
            // without the right to name connections still watches).
            let name: String = watch
                .key
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                .collect();
            let _: redis::RedisResult<()> = redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(format!("kombu-rs:watch:{name}"))
                .query_async(&mut c)
                .await;
            named = Some(watch.key.clone());
        }
        let moved: redis::RedisResult<Option<redis::Value>> = redis::cmd("BLMOVE")
            .arg(&watch.key)
            .arg(&watch.key)
            .arg("LEFT")
            .arg("LEFT")
            .arg(BLOCK.as_secs_f64())
            .query_async(&mut c)
            .await;
        match moved {
            Ok(found) => {
                conn = Some(c);
                if found.is_some() {
                    {
                        let mut state = watch.state.lock();
                        state.epoch += 1;
                        state.waiting = 0;
                    }
                    watch.ready.notify_waiters();
                }
            }
            Err(err) => {
                let text = err.to_string().to_ascii_lowercase();
                if text.contains("unknown command") || text.contains("noperm") {
                    tracing::warn!(url = %label, error = %err, "no BLMOVE here (Redis before 6.2, or an ACL without it): idle consumers poll");
                    shared.unsupported.store(true, Ordering::Release);
                    watch.state.lock().running = false;
                    watch.ready.notify_waiters();
                    return;
                }
                if err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_timeout()
                {
                    // A new connection next time (this one may be dead).
                    named = None;
                    tracing::debug!(url = %label, key = %watch.key, error = %err, "redis watcher lost its connection; reconnecting");
                } else {
                    conn = Some(c);
                    tracing::debug!(url = %label, key = %watch.key, error = %err, "redis watcher's BLMOVE failed");
                }
                fail(&watch, retry).await;
            }
        }
    }
}

/// A watcher that cannot block on the server wakes its waiters (they look for themselves)
/// and pauses before trying again: meanwhile its waiters poll at that pace.
async fn fail(watch: &Watch, retry: Duration) {
    {
        let mut state = watch.state.lock();
        state.epoch += 1;
        state.waiting = 0;
    }
    watch.ready.notify_waiters();
    tokio::time::sleep(retry).await;
}

/// A connection for blocking commands: its response timeout is [`BLOCK`] and a margin (a
/// `BLMOVE` answers when it has something or its own timeout passes), so a connection that went
/// silent is noticed and replaced.
async fn connect(
    client: &redis::Client,
    pool: &Mutex<Vec<MultiplexedConnection>>,
) -> redis::RedisResult<MultiplexedConnection> {
    if let Some(c) = pool.lock().pop() {
        return Ok(c);
    }
    let config =
        redis::AsyncConnectionConfig::new().set_response_timeout(Some(BLOCK + RESPONSE_MARGIN));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
