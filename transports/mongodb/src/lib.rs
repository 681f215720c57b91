//! The MongoDB transport for kombu-rs: queues in Python kombu's collections (`mongodb://`
//! shared with kombu's MongoDB transport), with leased takes that a consumer's crash does not
//! lose.
//!
//! URLs: `mongodb://[user:password@]host1[:port1][,host2[:port2],...][/database][?options]` and
//! `mongodb+srv://[user:password@]cluster.example.net[/database][?options]`, as the official
//! driver reads them: credentials, `authSource`, `replicaSet`, `tls` / `ssl`, `tlsCAFile`,
//! `serverSelectionTimeoutMS` (default here 10 s), the write concern (`w`, `journal`,
//! `wtimeoutMS`; default here `journal=true`, so a publish the server acknowledged is in its
//! journal when it returns: it survives that server's crash; on a replica set add `w=majority`
//! so it also survives a failover) and the driver's other options pass through (reads always
//! go to the primary, whatever `readPreference` says: a take must see what it just leased).
//! The database is the URL's path, else `default_database`, else `kombu_default` (kombu's
//! rule). kombu's transport options, read from the same query string and not passed on:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `visibility_timeout` | `3600` | seconds after a take (or its last extension) before this connection's consumers return an unsettled message to its queue (its consumer died or went silent), whoever took it |
//! | `polling_interval` | `1` | longest pause, in seconds, between two looks when the server has no change streams |
//! | `ttl` | `false` | kombu's TTL mode: `expire_at` on queue and routing documents from `x-expires`, and kombu's TTL indexes, so the server deletes what expired |
//! | `capped_queue_size` | `100000` | bytes of the capped broadcast collection (fanout), when this connection creates it |
//! | `calc_queue_size` | `true` | count messages for `queue_size` / declare (kombu answers 0 when off) |
//! | `default_database` | `kombu_default` | the database when the URL has no path |
//! | `messages_collection`, `routing_collection`, `broadcast_collection`, `queues_collection` | `messages`, `messages.routing`, `messages.broadcast`, `messages.queues` | kombu's collection names |
//! | `connect_timeout` | the driver's | seconds to open a connection |
//! | `change_streams` | `true` | wait with a change stream where the server has them; `false`: poll |
//! | `max_payload_size` | `16777216` | bytes; a longer payload is not parsed but moved to the dead-letter queue |
//!
//! # Layout, and how it meets Python kombu
//!
//! What kombu's MongoDB transport makes, this one makes and reads (`../shared` of the project:
//! kombu's wire formats, §4): the capped `messages.broadcast` collection and kombu's indexes
//! on connect; messages as `{_id, payload: <envelope JSON>, queue, priority: 9 - p,
//! expire_at?}` in `messages`, taken highest priority first, then oldest; bindings as
//! `{exchange, queue, routing_key, pattern}` in `messages.routing` (`pattern`: kombu's
//! regular expression for topic bindings, which Python consumers route with); queue
//! declarations in `messages.queues` (`{_id: queue, options: {arguments, ...}, expire_at}`;
//! a declaration is compared with the record there, Python kombu's included (it records its
//! queues with `ttl=True`), and one that differs fails as on RabbitMQ);
//! fanout messages as `{payload, queue: <exchange>}` in the capped broadcast collection, read
//! by every queue of a process bound to the exchange through a tailable cursor
//! (at-most-once, as in kombu). kombu-rs adds a collection of exchange declarations
//! (`messages.kombu_rs.exchanges`; Python kombu keeps exchanges in each process's memory)
//! and, on queue documents, `kombu_rs_settings` (the arguments a redeclaration must match).
//! The Celery beat of kombu-celery keeps its lease and runs in `kombu_rs.beat` of the same
//! database, opened with these URL rules through [`MongoDatabase`].
//!
//! # Leases: crash safety beyond kombu
//!
//! Python kombu deletes a message when it fetches it (`find_one_and_delete`), so a consumer
//! that dies loses what it held. Here a take leases instead: one update moves each document
//! out of its queue (`queue` becomes `kombu_rs.leased:<queue>`, which kombu's index still
//! serves, so the sweep for passed leases needs no index of its own) and records the take
//! time (`kombu_rs_taken_at`, Unix seconds) and the take's id (`kombu_rs_take`). An ack
//! deletes the document (only if that take still holds it), a requeue puts its `queue` back
//! (marked `kombu_rs_redelivered`), and a consumer whose visibility timeout passed since the
//! take (or the last [`Delivery::extend_lease`](kombu_core::Delivery::extend_lease)) returns it,
//! whoever took it. A batch take is a find of up to the prefetch count of candidates, one
//! `update_many` that leases those still ready (atomic per document, so two consumers never
//! lease the same one), and, only when another consumer got some first, a find of what this
//! take got. A take whose outcome is unknown (an error after its update was sent) is returned
//! to its queue by the next take that gets through. Documents with any BSON `_id` (a bare
//! client may write strings or numbers) are taken and settled alike.
//!
//! With Python kombu consumers on the same collection: they never see a leased document
//! (their filter is `{queue: q}`), they count only ready ones, and what they fetch is gone
//! from the store at once (a Python consumer that dies loses it, as kombu always did). Both
//! take from the same ready documents in the same order. Only a kombu-rs consumer returns a
//! passed lease (Python kombu knows nothing of them): messages a killed kombu-rs consumer held
//! come back when a kombu-rs consumer of that queue takes again, not while only Python
//! consumers run.
//!
//! # Delayed messages
//!
//! A message published with [`Publish::delay`](kombu_core::Publish::delay) (or `eta`) is
//! stored in `messages` with `queue: "kombu_rs.delayed:<queue>"` and its due date,
//! `kombu_rs_due`, so Python kombu's takes, sizes and purges of the queue never see it, and
//! its `_id` is an `ObjectId` of its due second (it sorts among the messages published then:
//! the tail of its queue). Once due, one `update_many` gives it its `queue` back (atomic per
//! document: nothing lost or doubled if a process dies): a kombu-rs take of the queue does it
//! when a message is due as far as its process knows (or at least once a second), and a task
//! in each process that knows of delayed messages (it stored them, found them on connect, or
//! looked at their queue) does it when they fall due, so Python consumers get them while such
//! a process runs. Waiting consumers return by the next due time; a change stream's insert of
//! a delayed message makes the waiters of its queue look again. `queue_size` counts the
//! messages already due as ready; `purge` removes them with the ready ones and leaves those
//! not yet due; a queue's deletion removes them all. A delayed message's expiration counts
//! from its due time.
//!
//! # Waiting
//!
//! Consumers wait on a change stream of the `messages` collection where the server has them
//! (replica sets and sharded clusters; a standalone MongoDB refuses them, and the transport
//! then polls, fast after activity, backing off to `polling_interval`).
//!
//! # Expiry and dead letters
//!
//! A message's `expire_at` is the earlier of its own expiration and its queue's
//! `x-message-ttl` (kombu's rule). A take never delivers an expired message: it removes it
//! (and dead-letters it when the queue has a dead-letter exchange), whatever `ttl` says; with
//! `ttl=true` the server's TTL monitor deletes expired documents too (about once a minute,
//! without dead-lettering, as with kombu). Rejected messages go to the queue's dead-letter
//! exchange. Payloads that are not envelopes (wrong BSON type, not JSON, over
//! `max_payload_size`) are moved to `<queue>.dlq`, except one of about 12 MiB or more: its
//! dead letter (the bytes in base64 in an envelope) would exceed MongoDB's 16 MiB document
//! limit, so the move fails, the consumer's stream ends with that error, and the document
//! comes back after the visibility timeout; remove such a document by hand.
//!
//! Not supported (declared in the capabilities): `x-max-length`.

mod backend;
mod browse;
mod database;
mod delayed;
mod documents;
mod errors;
mod fanout;
mod link;
mod options;
mod take;
mod topology;
mod watch;

use std::sync::{Arc, Once};

use async_trait::async_trait;
use kombu_core::transport::virtual_transport::VirtualConnection;
use kombu_core::transport::{BrokerConnection, Transport, register_transport};
use kombu_core::{BrokerUrl, Result};

use crate::backend::MongoBackend;
pub use crate::database::MongoDatabase;
use crate::options::Options;

/// Registers the `mongodb` and `mongodb+srv` URL schemes (idempotent).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| register_transport(Arc::new(MongoTransport)));
}

/// The MongoDB transport (see the crate documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct MongoTransport;

#[async_trait]
impl Transport for MongoTransport {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["mongodb"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        let options = Options::from_url(url)?;
        let visibility = options.visibility_timeout;
        let backend = MongoBackend::connect(options, url.masked()).await?;
        Ok(Arc::new(VirtualConnection::new(backend, Some(visibility))))
    }
}
