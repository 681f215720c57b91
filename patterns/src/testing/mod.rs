//! A recording broker for the unit tests of a service: everything it publishes and consumes,
//! and how it settled each delivery, with helpers to assert on them and to wait for a message
//! with a timeout.
//!
//! A [`Recorder`] names an in-process memory broker and gives its URL,
//! `memory+record://NAME`. The service under test opens that URL as it would open any broker
//! (`Connection::open(&rec.url())`, or from its configuration); every connection to it is the
//! memory transport with each publish, delivery and settlement written to the recorder's log.
//! The test then reads the log:
//!
//! - [`Recorder::published`], [`published_to`](Recorder::published_to) (by routing key),
//!   [`published_on`](Recorder::published_on) (by exchange),
//!   [`published_values`](Recorder::published_values) (decoded), and
//!   [`assert_published`](Recorder::assert_published): what went out, as the broker took it;
//! - [`Recorder::consumed`] and [`consumed_from`](Recorder::consumed_from): every delivery
//!   handed out, with its [`Settlement`] (acked, requeued, rejected, dead-lettered, pending);
//! - [`next_published`](Recorder::next_published), [`wait_published`](Recorder::wait_published)
//!   and [`wait_settled`](Recorder::wait_settled) wait for what has not happened yet, and
//!   [`await_message`](Recorder::await_message) takes a message from a queue, each with a
//!   timeout;
//! - [`Recorder::clear`] forgets everything recorded so far.
//!
//! The test's own traffic stays out of the log when it goes through
//! [`broker_url`](Recorder::broker_url) (`memory://NAME`, the same broker, not recorded).
//!
//! # Time
//!
//! Waits use tokio's clock and sleep until the log changes (no polling), so they work under
//! `tokio::time::pause()` (`#[tokio::test(start_paused = true)]`): a wait for something that
//! never comes returns its [`ErrorKind::Timeout`] at once in real time, as soon as every task
//! is idle. The memory transport's TTLs and visibility timeouts follow the same clock.
//!
//! # A service test
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> kombu_core::Result<()> {
//! use std::time::Duration;
//! use futures::StreamExt;
//! use kombu_core::{Connection, Queue};
//! use kombu_patterns::testing::{Recorder, Settlement};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Resize { image: String, width: u32 }
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Resized { image: String }
//!
//! /// The service under test: takes one job from "resize", announces the result on "resized".
//! async fn service(url: String) -> kombu_core::Result<()> {
//!     let conn = Connection::open(&url).await?;
//!     let mut jobs = conn.consumer([Queue::new("resize")]).build().await?;
//!     if let Some(delivery) = jobs.next().await {
//!         let delivery = delivery?;
//!         let job: Resize = delivery.decode()?;
//!         conn.producer().routing_key("resized").publish(&Resized { image: job.image }).await?;
//!         delivery.ack().await?;
//!     }
//!     Ok(())
//! }
//!
//! let rec = Recorder::new();
//! let running = tokio::spawn(service(rec.url()));
//!
//! // The test's input, sent around the recorder (rec.url() would record it too).
//! let input = Connection::open(&rec.broker_url()).await?;
//! input.declare_queue(&Queue::new("resize")).await?;
//! input.producer().routing_key("resize")
//!     .publish(&Resize { image: "cat.png".into(), width: 64 }).await?;
//!
//! // What the service did.
//! let out = rec.wait_published("resized", Duration::from_secs(5)).await?;
//! assert_eq!(out.decode::<Resized>()?, Resized { image: "cat.png".into() });
//! let handled = rec.wait_settled("resize", Duration::from_secs(5)).await?;
//! assert_eq!(handled.settlement, Settlement::Acked);
//! rec.assert_published("resized", &Resized { image: "cat.png".into() })?;
//! # running.await.map_err(|e| kombu_core::Error::new(kombu_core::ErrorKind::Closed, e.to_string()))??;
//! # Ok(()) }
//! ```

mod record;
mod transport;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use kombu_core::{Connection, Delivery, Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;
use tokio::time::Instant;

pub use record::{Consumed, Published, Settlement};
use record::{State, state_of};

/// A recording memory broker for unit tests: see the [module docs](self).
///
/// Clones share the log. The broker and its log live as long as the process (as memory
/// brokers do); [`Recorder::new`] picks a fresh name each time, so tests running in parallel
/// never see each other's messages.
#[derive(Clone)]
pub struct Recorder {
    name: Arc<str>,
    state: Arc<State>,
    /// A connection to `memory://NAME` of the recorder's own, for `await_message`.
    plain: Arc<OnceCell<Connection>>,
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    /// A recorder over a memory broker of its own (a fresh name). Registers the
    /// `memory+record` and `memory` schemes with kombu-core, so its URL opens from the
    /// `kombu` facade and from `kombu_core::Connection` alike.
    pub fn new() -> Recorder {
        Recorder::named(&format!("kombu-record-{}", uuid::Uuid::new_v4().simple()))
    }

    /// The recorder of the broker `name` (`memory+record://NAME`): every recorder and
    /// connection with this name shares one broker and one log, for a service whose
    /// configuration names its broker URL.
    pub fn named(name: &str) -> Recorder {
        transport::register();
        Recorder {
            name: Arc::from(name),
            state: state_of(name),
            plain: Arc::new(OnceCell::new()),
        }
    }

    /// The URL the service under test opens: `memory+record://NAME`. Options of the memory
    /// transport (`?visibility_timeout=30`) may be appended.
    pub fn url(&self) -> String {
        format!("{}://{}", transport::SCHEME, self.name)
    }

    /// The same broker, not recorded: `memory://NAME`, for the test's own inputs and checks.
    pub fn broker_url(&self) -> String {
        format!("memory://{}", self.name)
    }

    /// Opens a recorded connection (core's [`Connection`]; the `kombu` facade's
    /// `Connection::open(&rec.url())` gives the facade's).
    pub async fn connect(&self) -> Result<Connection> {
        Connection::open(&self.url()).await
    }

    /// Every message published so far, in order.
    pub fn published(&self) -> Vec<Published> {
        self.state.all_published()
    }

    /// The messages published with this routing key (to any exchange; on the default exchange
    /// the routing key is the queue's name).
    pub fn published_to(&self, routing_key: &str) -> Vec<Published> {
        self.state
            .all_published()
            .into_iter()
            .filter(|p| p.routing_key == routing_key)
            .collect()
    }

    /// The messages published to this exchange (`""`: the default exchange).
    pub fn published_on(&self, exchange: &str) -> Vec<Published> {
        self.state
            .all_published()
            .into_iter()
            .filter(|p| p.exchange == exchange)
            .collect()
    }

    /// The messages published with this routing key, decoded into `T`; fails on the first one
    /// that does not decode.
    pub fn published_values<T: DeserializeOwned>(&self, routing_key: &str) -> Result<Vec<T>> {
        self.published_to(routing_key)
            .iter()
            .map(Published::decode)
            .collect()
    }

    /// `Ok` when a message published with this routing key decodes to `expected`; else an
    /// error listing what was published with that key (for `?` in a test returning
    /// `Result`).
    pub fn assert_published<T>(&self, routing_key: &str, expected: &T) -> Result<()>
    where
        T: DeserializeOwned + PartialEq + fmt::Debug,
    {
        let found = self.published_to(routing_key);
        if found
            .iter()
            .any(|p| p.decode::<T>().is_ok_and(|v| &v == expected))
        {
            return Ok(());
        }
        let seen: Vec<String> = found
            .iter()
            .map(|p| match p.decode::<T>() {
                Ok(v) => format!("{v:?}"),
                Err(e) => format!("<{} bytes that do not decode: {e}>", p.body().len()),
            })
            .collect();
        Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "nothing published with routing key {routing_key:?} is {expected:?}; \
                 published with it: [{}]",
                seen.join(", ")
            ),
        ))
    }

    /// Every delivery handed out so far, in order, with how each was settled.
    pub fn consumed(&self) -> Vec<Consumed> {
        self.state.all_consumed()
    }

    /// The deliveries taken from this queue.
    pub fn consumed_from(&self, queue: &str) -> Vec<Consumed> {
        self.state
            .all_consumed()
            .into_iter()
            .filter(|c| c.info.queue == queue)
            .collect()
    }

    /// The next message published that no wait has returned yet, in publish order, waiting
    /// up to `timeout` (tokio time) for one; [`ErrorKind::Timeout`] when none comes.
    pub async fn next_published(&self, timeout: Duration) -> Result<Published> {
        self.wait(timeout, "a publish", || self.state.take_published(|_| true))
            .await
    }

    /// The first message published with this routing key that no wait has returned yet (one
    /// published before the call counts), waiting up to `timeout`.
    pub async fn wait_published(&self, routing_key: &str, timeout: Duration) -> Result<Published> {
        let what = format!("a publish with routing key {routing_key:?}");
        self.wait(timeout, &what, || {
            self.state.take_published(|p| p.routing_key == routing_key)
        })
        .await
    }

    /// The first delivery from this queue that is settled and that no wait has returned yet
    /// (the service is done with it: acked, rejected, requeued, dead-lettered), waiting up
    /// to `timeout`.
    pub async fn wait_settled(&self, queue: &str, timeout: Duration) -> Result<Consumed> {
        let what = format!("a settled delivery from queue {queue:?}");
        self.wait(timeout, &what, || {
            self.state.take_settled(|c| c.info.queue == queue)
        })
        .await
    }

    /// Takes a message from `queue` of the broker (as a consumer on the other side would,
    /// not recorded), waiting up to `timeout` for one; settle it as usual (dropped
    /// unsettled, it goes back to the queue). A queue nobody declared yet counts as empty.
    pub async fn await_message(&self, queue: &str, timeout: Duration) -> Result<Delivery> {
        let url = self.broker_url();
        let conn = self
            .plain
            .get_or_try_init(|| Connection::open(&url))
            .await?;
        let deadline = Instant::now() + timeout;
        loop {
            let changed = self.state.changed().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match conn.default_channel().get(queue, false).await {
                Ok(Some(delivery)) => return Ok(delivery),
                Ok(None) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.context(format!("taking a message from {queue:?}"))),
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(timed_out(&format!("a message in queue {queue:?}"), timeout));
            }
        }
    }

    /// Forgets everything recorded so far (publishes, deliveries, what waits returned).
    /// Queues declared with a dead-letter exchange are remembered.
    pub fn clear(&self) {
        self.state.clear();
    }

    /// Looks with `find`, and again each time the log changes, until it finds something or
    /// `timeout` passes.
    async fn wait<T>(
        &self,
        timeout: Duration,
        what: &str,
        find: impl Fn() -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            // Registered before looking, so a change between the look and the sleep wakes it.
            let changed = self.state.changed().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = find() {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(timed_out(what, timeout));
            }
        }
    }
}

fn timed_out(what: &str, timeout: Duration) -> Error {
    Error::new(
        ErrorKind::Timeout,
        format!("{what} did not come within {timeout:?}"),
    )
}

#[cfg(test)]
mod tests;
