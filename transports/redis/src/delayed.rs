//! Delayed delivery ([`Publish::delay`](kombu_core::Publish::delay)): a sorted set that due
//! messages are moved out of atomically.
//!
//! # Layout
//!
//! A delayed message is routed at publish time (the virtual channel does it) and stored, for
//! each queue it was routed to, as a member of the sorted set `<global_keyprefix>_kombu_rs.delayed`
//! whose score is its due time in milliseconds since the epoch **by the server's clock**
//! (`TIME`, read in the script that stores it: every client agrees on when a message is due,
//! whatever its own clock says). A member is
//!
//! ```text
//! <id>:<x-expires ms>:<length of the list key>:<list key><envelope>
//! ```
//!
//! `<id>` is 32 random hex digits, so identical messages stay distinct members; the list key
//! is the one a put of the message uses (the queue's list for its priority bucket: `q`, or
//! `q\x06\x16<n>`, under the prefix); `<x-expires ms>` is the queue's `x-expires` when it was
//! declared through the publishing connection (`0`: none); the envelope is the JSON a put
//! stores. Python kombu reads only the lists, so until due a delayed message is invisible to
//! its consumers and to every size (`LLEN`).
//!
//! # Moving
//!
//! One Lua script (`MOVE_DUE`) takes the members due by the server's clock now (a batch
//! of at most [`BATCH`], earliest first), `LPUSH`es each envelope onto its list exactly as a
//! put does (and re-arms the list's `PEXPIRE` for an expiring queue), and `ZREM`s it, in one
//! atomic step: a message is always in the set or in its list, never in both, never in
//! neither, however many movers run and whenever one dies. The push wakes whoever blocks on
//! the list: kombu-rs's watchers (`BLMOVE`) and Python kombu's `BRPOP`. Members of any other
//! shape (a foreign client's) go as they are to the list
//! `<global_keyprefix>_kombu_rs.delayed.unreadable` when due.
//!
//! The mover is a task per kombu-rs connection. It runs while the connection has consumers (it
//! starts when one takes or waits, and ends [`IDLE`] after the last did), and while a delayed
//! message stored through the connection is not yet due (then [`IDLE`] more). It runs the
//! script, then sleeps until the earliest member left is due (the script returns how long, by
//! the server's clock); one stored through its own connection wakes it at once. So a delayed
//! message reaches its queue on time while the connection that stored it stays open, whoever
//! consumes (Python kombu's consumers too). One whose publisher has gone is moved by the other
//! movers, which look at the set at least every [`LOOK_EVERY`] while their connection has
//! consumers (every [`LOOK_EVERY_PUBLISHER`] otherwise): at most that late, once some kombu-rs
//! connection on the same server and prefix consumes or stores delayed messages. A Python
//! consumer alone never moves one.

//! Not done: a queue purged or deleted before its delayed messages are due gets them when they
//! are (Redis keeps a queue as its lists; the message lands in a list of that name). Redis
//! Cluster is not supported (the script pushes to lists it is not given as keys), as
//! kombu's transport supports no cluster either.

use std::sync::Arc;
use std::time::Duration;

use kombu_core::Result;
use kombu_core::transport::virtual_transport::Envelope;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::{RedisBackend, payload, priority_of};
use crate::reconnect::{dead_connection, maybe_written};
use crate::scripts::MOVE_DUE;

/// Most messages one run of the move script moves; a full batch is followed by another at once.
pub(crate) const BATCH: usize = 1000;
/// Longest the mover of a connection with consumers sleeps between looks at the delayed set:
/// a message whose publisher's connection has closed is moved at most about this late (the
/// publisher's own mover moves it on time while that connection is open).
pub(crate) const LOOK_EVERY: Duration = Duration::from_secs(1);
/// The same for a mover kept running only by delayed messages its connection stored (no
/// consumer): those wake it when due; this bounds how late others' messages are moved.
pub(crate) const LOOK_EVERY_PUBLISHER: Duration = Duration::from_secs(60);
/// The mover ends this long after the connection's last take or wait, and after the due time
/// of the last delayed message stored through it.
pub(crate) const IDLE: Duration = Duration::from_secs(30);
/// Longest reply to the move script before its connection is taken for dead.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest delay stored (about 35,000 years): scores stay exact in a double.
const MAX_DELAY_MS: u128 = 1 << 50;

/// A member of the delayed set (see the module documentation).
pub(crate) fn member(list_key: &str, expires_ms: u64, envelope: &[u8]) -> Vec<u8> {
    let id = uuid::Uuid::new_v4().simple();
    let mut m = format!("{id}:{expires_ms}:{}:{list_key}", list_key.len()).into_bytes();
    m.extend_from_slice(envelope);
    m
}

/// A delay in whole milliseconds, rounded up (a message is never due early), capped.
pub(crate) fn delay_ms(delay: Duration) -> u64 {
    let ms = delay.as_nanos().div_ceil(1_000_000).min(MAX_DELAY_MS);
    u64::try_from(ms).unwrap_or(u64::MAX) // capped at 2^50 above: always fits
}

/// The mover of one connection (see the module documentation).
pub(crate) struct Mover {
    shared: Arc<Shared>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the mover's task shares with its connection.
struct Shared {
    client: redis::Client,
    label: String,
    /// Pause after a failure to reach the server.
    retry: Duration,
    /// The delayed set.
    key: String,
    /// Where members of another shape go.
    unreadable_key: String,
    script: redis::Script,
    state: Mutex<State>,
    /// A delayed message was stored through this connection: look again.
    stored: Notify,
    /// Wakes the connection's idle consumers after a move.
    moved: Arc<Notify>,
}

/// Whether the task runs, when a consumer last took or waited, and when the last delayed
/// message stored through the connection is due.
struct State {
    running: bool,
    active: Instant,
    until: Instant,
}

impl State {
    /// Whether a consumer took or waited within [`IDLE`].
    fn consuming(&self) -> bool {
        self.active.elapsed() <= IDLE
    }

    /// Whether the mover has a reason to run on.
    fn wanted(&self) -> bool {
        self.consuming() || self.until.elapsed() <= IDLE
    }
}

impl std::fmt::Debug for Mover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mover")
            .field("key", &self.shared.key)
            .finish_non_exhaustive()
    }
}

impl Mover {
    /// The mover of the delayed set `key` (members of another shape to `unreadable_key`),
    /// connecting with `client`; `moved` is notified after each move.
    pub(crate) fn new(
        client: redis::Client,
        label: String,
        retry: Duration,
        (key, unreadable_key): (String, String),
        moved: Arc<Notify>,
    ) -> Self {
        Mover {
            shared: Arc::new(Shared {
                client,
                label,
                retry,
                key,
                unreadable_key,
                script: redis::Script::new(MOVE_DUE),
                state: Mutex::new({
                    // Long ago: nothing keeps a new mover running.
                    let past = Instant::now()
                        .checked_sub(IDLE * 2)
                        .unwrap_or_else(Instant::now);
                    State {
                        running: false,
                        active: past,
                        until: past,
                    }
                }),
                stored: Notify::new(),
                moved,
            }),
            task: Mutex::new(None),
        }
    }

    /// A consumer takes or waits: the mover runs (for [`IDLE`] more at least).
    pub(crate) fn touch(&self) {
        let start = {
            let mut state = self.shared.state.lock();
            state.active = Instant::now();
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            self.start();
        }
    }

    /// A delayed message due in `delay` was stored through this connection: the mover runs
    /// until it is due (and [`IDLE`] more), and a running one looks again now (the message may
    /// be due before it planned to look).
    pub(crate) fn stored(&self, delay: Duration) {
        let start = {
            let mut state = self.shared.state.lock();
            // Capped as the stored score is (so the sum cannot overflow).
            let delay = delay.min(Duration::from_millis(delay_ms(delay)));
            if let Some(due) = Instant::now().checked_add(delay) {
                state.until = state.until.max(due);
            }
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            self.start();
        }
        self.shared.stored.notify_one();
    }

    fn start(&self) {
        let task = tokio::spawn(run(self.shared.clone()));
        if let Some(old) = self.task.lock().replace(task) {
            old.abort(); // ended already: it cleared `running`
        }
    }
}

impl Drop for Mover {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().take() {
            task.abort();
        }
    }
}

/// The mover's task: moves what is due, sleeps until the next is (at most [`LOOK_EVERY`], or
/// [`LOOK_EVERY_PUBLISHER`] without consumers), until nothing wants it (see [`State::wanted`]).
async fn run(shared: Arc<Shared>) {
    let mut conn: Option<MultiplexedConnection> = None;
    loop {
        let most = {
            let mut state = shared.state.lock();
            if !state.wanted() {
                state.running = false;
                return;
            }
            match state.consuming() {
                true => LOOK_EVERY,
                false => LOOK_EVERY_PUBLISHER,
            }
        };
        let mut c = match conn.take() {
            Some(c) => c,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(RESPONSE_TIMEOUT));
                match shared
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                {
                    Ok(c) => c,
                    Err(err) => {
                        tracing::debug!(url = %shared.label, error = %err, "delayed-message mover cannot connect");
                        tokio::time::sleep(shared.retry).await;
                        continue;
                    }
                }
            }
        };
        let moved: redis::RedisResult<(usize, i64)> = shared
            .script
            .key(&shared.key)
            .key(&shared.unreadable_key)
            .arg(BATCH)
            .invoke_async(&mut c)
            .await;
        match moved {
            Ok((moved, wait)) => {
                conn = Some(c);
                if moved > 0 {
                    shared.moved.notify_waiters();
                }
                if moved >= BATCH {
                    continue;
                }
                let pause =
                    u64::try_from(wait).map_or(most, |ms| Duration::from_millis(ms).min(most));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = shared.stored.notified() => {}
                }
            }
            Err(err) => {
                if !dead_connection(&err) {
                    conn = Some(c);
                }
                tracing::warn!(url = %shared.label, error = %err, "delayed messages not moved; trying again");
                tokio::time::sleep(shared.retry).await;
            }
        }
    }
}

impl RedisBackend {
    /// [`Backend::put_delayed`](kombu_core::transport::virtual_transport::Backend::put_delayed):
    /// one script adds a member per message to the delayed set, due `delay` from now by the
    /// server's clock.
    pub(crate) async fn store_delayed(
        &self,
        items: Vec<(String, Envelope)>,
        delay: Duration,
    ) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let o = &self.options;
        let key = o.delayed_key();
        let mut script = self.put_delayed.key(&key);
        script.arg(delay_ms(delay));
        {
            let expiring = self.expiring.lock();
            for (queue, env) in &items {
                let expires = expiring.get(queue).copied().unwrap_or(0);
                script.arg(member(
                    &o.list_key(queue, priority_of(env)),
                    expires,
                    &payload(env),
                ));
            }
        }
        let mut conn = self.conn().await?;
        let due: redis::RedisResult<i64> = script.invoke_async(&mut conn).await;
        let stored = due
            .map_err(self.err("store delayed messages"))
            .map_err(maybe_written);
        // Stored, or perhaps (a lost reply): either way this connection's mover sees to it.
        if stored
            .as_ref()
            .map_or_else(kombu_core::Error::outcome_unknown, |_| true)
        {
            self.mover.stored(delay);
        }
        stored.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_carry_their_list_and_envelope_and_differ() {
        let a = member("p:q\x06\x163", 0, br#"{"body": "x"}"#);
        let b = member("p:q\x06\x163", 0, br#"{"body": "x"}"#);
        assert_ne!(a, b, "identical messages are distinct members");
        let text = String::from_utf8_lossy(&a);
        assert_eq!(text.as_bytes().get(32), Some(&b':'));
        assert!(
            text.ends_with(":0:6:p:q\x06\x163{\"body\": \"x\"}"),
            "{text:?}"
        );
    }

    #[test]
    fn delays_round_up_to_whole_milliseconds_and_are_capped() {
        assert_eq!(delay_ms(Duration::from_micros(1)), 1);
        assert_eq!(delay_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(delay_ms(Duration::from_nanos(1_500_001)), 2);
        assert_eq!(delay_ms(Duration::MAX), 1 << 50);
    }
}
