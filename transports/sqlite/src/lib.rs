//! The SQLite transport for kombu-rs: durable queues in one file, shared between processes and
//! with Python kombu's SQLAlchemy transport (`sqla+sqlite:///same.db`).
//!
//! URLs: `sqlite:///absolute/path.db`, `sqlite://relative.db`, `sqlite://:memory:` (one
//! database per process), and `sqla+sqlite://` / `sqlalchemy+sqlite://` as aliases that read
//! the path as SQLAlchemy (so Python kombu) does: `sqla+sqlite:///relative.db`,
//! `sqla+sqlite:////absolute/path.db`. The same URL string opens the same file on both sides.
//!
//! A publish through the default exchange to a queue that no one declared (in any process,
//! Rust or Python) creates it in `kombu_queue` and stores the message, as Python kombu's
//! SQLAlchemy transport does; with `mandatory` it fails as unroutable instead. A queue exists
//! when it has a row in `kombu_queue` (whoever made it); `queue_size` and `purge` of one that
//! does not fail with `NotFound`.
//! Options in the query string:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `visibility_timeout` | `3600` | seconds after a take (or its last extension) before this connection's consumers make an unsettled message visible again (its consumer died or went silent), whoever took it |
//! | `polling_interval` | `0.2` | longest pause, in seconds, between two looks for rows written by other processes when idle |
//! | `busy_timeout` | `30` | seconds a statement waits for another process's write lock before failing |
//! | `synchronous` | `normal` | SQLite's `synchronous` pragma: `normal` (safe against process crashes) or `full` (also against power loss) |
//! | `max_payload_size` | `134217728` (128 MiB) | bytes; a row whose payload is longer is not parsed but moved to the queue's dead-letter queue as unreadable |
//!
//! # Layout and how it meets Python kombu
//!
//! Messages live in kombu's tables, `kombu_queue (id, name)` and `kombu_message (id, visible,
//! timestamp, payload, version, queue_id)`, created with exactly the DDL SQLAlchemy emits, the
//! kombu JSON envelope in `payload`. kombu-rs adds columns with defaults, so Python's
//! inserts still work: `taken_at` (a Unix time, `NULL`), `redelivered` (`0`) and `lease_until`
//! (`NULL`; the lease end earlier versions recorded, converted to `taken_at` on open: stop
//! earlier kombu-rs versions before a new one opens their file, since the conversion clears
//! the lease ends they still rely on for their extensions and their restores). And two
//! tables of its own, `kombu_rs_exchange` and `kombu_rs_binding` (and `kombu_rs_queue` for
//! queue arguments), so that exchanges and bindings declared in one process route publishes in
//! every other (Python kombu keeps them per connection, in memory). Each process caches what
//! it read of them for a second: a binding made by another process routes this process's
//! publishes within a second; its own declarations take effect at once.
//!
//! * Taking a message sets `visible = 0` (as kombu does) plus a lease, `taken_at = now` (the
//!   take time, not a lease end; [`Delivery::extend_lease`](kombu_core::Delivery::extend_lease)
//!   sets it to now again). Acking **deletes** the row; kombu leaves its acked rows invisible
//!   forever, which kombu-rs ignores like any invisible row without a lease.
//! * A lease that passed makes the row visible again (marked redelivered), so a consumer killed
//!   with messages in hand loses none. It has passed for a consumer once `taken_at` plus *that
//!   consumer's* `visibility_timeout` is past: a consumer with `?visibility_timeout=5` restores
//!   rows taken under the 3,600 s default after 5 s. Rows a Python consumer took have no lease
//!   and stay invisible, as kombu expects.
//! * Order: `timestamp, id` like kombu (new rows have a `NULL` timestamp); a restored row gets
//!   its `NULL` timestamp back, so it returns to its place near the head.
//! * A row that is not a kombu envelope (not JSON, a bad body encoding, a BLOB or text that is
//!   not UTF-8, longer than `max_payload_size`) never makes a take fail and is never dropped:
//!   it is taken like the others, and core moves its bytes to `<queue>.dlq` as the body of a
//!   dead letter; the insert there and the delete of the row are one transaction.
//! * Delayed messages ([`Publish::delay`](kombu_core::Publish::delay), `eta`) are rows with
//!   `visible = 0` and a due time, `due_at` (Unix seconds; `NULL` otherwise), and neither a
//!   take time nor a lease end, so no lease restore takes one for a lease and no receipt
//!   names one; Python kombu reads only visible rows, so it neither takes nor counts them.
//!   Once due, a row is copied to a fresh visible row (a new id: the tail of its queue) and
//!   deleted, in one transaction: by any kombu-rs take of its queue, and by a task in each
//!   process that has the file open and knows of delayed rows (it stored them, or found them
//!   when it opened the file), so Python consumers get them while such a process runs.
//!   `queue_size` counts the rows already due
//!   as ready; `purge` removes them with the ready rows and leaves those not yet due; a queue's
//!   deletion removes them all. Python kombu's purge deletes every row of the queue, delayed
//!   ones included (it deletes kombu-rs's leased rows too).
//! * The database runs in WAL mode with a busy timeout; takes run in `BEGIN IMMEDIATE`
//!   transactions, so concurrent consumers in any process never take the same row.
//!
//! Every SQLite call runs on tokio's blocking pool, never on the async executor's threads.
//! Consumers in this process wake as soon as a publish commits; rows written by other
//! processes are noticed by polling, fast after activity and backing off to
//! `polling_interval` when idle.
//!
//! A consumer waiting for delayed rows returns at the earliest due time among its queues
//! (`benches/delay.rs` measures how late they arrive); a row another process stores
//! meanwhile, due earlier still, is noticed at its next poll (within `polling_interval`).
//!
//! Not supported (declared in the capabilities, so the conformance suite skips them):
//! priorities, message and queue TTL, max length and dead-lettering.

mod backend;
mod browse;
mod delayed;
mod options;
mod payload;
mod receipt;
mod schema;
#[cfg(test)]
mod unreadable_tests;

use std::sync::{Arc, Once};

use async_trait::async_trait;
use kombu_core::transport::virtual_transport::VirtualConnection;
use kombu_core::transport::{BrokerConnection, Transport, register_transport};
use kombu_core::{BrokerUrl, Result};

use crate::backend::SqliteBackend;
use crate::options::Options;

/// Registers the `sqlite`, `sqla+sqlite` and `sqlalchemy+sqlite` URL schemes (idempotent).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| register_transport(Arc::new(SqliteTransport)));
}

/// The SQLite transport (see the crate documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct SqliteTransport;

#[async_trait]
impl Transport for SqliteTransport {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["sqlite", "sqla", "sqlalchemy"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        let options = Options::from_url(url)?;
        let label = url.masked();
        let backend = SqliteBackend::shared(options.clone(), label).await?;
        Ok(Arc::new(VirtualConnection::new(
            backend,
            Some(options.visibility_timeout),
        )))
    }
}
