//! The Redis transport for kombu-rs, sharing queues with Python kombu and Celery on the same
//! Redis: kombu's key layout, with taking a message and recording it as unacked in one atomic
//! step.
//!
//! URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS: the server's
//! certificate is verified against the system's roots, or `ssl_ca_certs=<PEM file>`;
//! `ssl_cert_reqs=none` turns verification off, which is kombu's default for a bare
//! `rediss://`; `ssl_certfile` + `ssl_keyfile` for a client certificate), and
//! `redis+socket:///path/to/redis.sock` and `unix:///path/to/redis.sock` (Unix socket,
//! `?virtual_host=<db>` or `?db=<db>`, credentials as `user:password@` before the path) and
//! `sentinel://` (below). Transport options in the query string, as kombu users
//! know them:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `visibility_timeout` | `3600` | seconds after a take (or its last extension) before this connection's consumers restore an unacked message, whoever took it |
//! | `priority_steps` | `0,3,6,9` | priority buckets; **lower numbers are consumed first**, as in kombu |
//! | `sep` | `\x06\x16` | separator of priority keys and binding members |
//! | `global_keyprefix` | empty | prefix of every key |
//! | `unacked_key`, `unacked_index_key`, `unacked_mutex_key` | `unacked`, `unacked_index`, `unacked_mutex` | kombu's ack-emulation keys |
//! | `socket_timeout` | `30` | seconds a command's reply may take (a take of large messages is one long reply) |
//! | `polling_interval` | `1` | seconds between looks at the lists when an idle consumer cannot block on the server (Redis before 6.2, more than 128 lists, a blocking connection down) |
//! | `fanout_prefix` | `true` (`/{db}.`) | PUB/SUB topic prefix of fanout exchanges; `false` for none, or a string |
//! | `fanout_patterns` | `true` | append `/<routing key>` to fanout topics (kombu's default) |
//!
//! # Layout (kombu's, `kombu/transport/redis.py`)
//!
//! * Queue `q` is the list `q` (priority bucket 0) and `q\x06\x16<n>` for the other steps;
//!   publishers `LPUSH` the JSON envelope, consumers take from the right, bucket 0 first.
//! * Bindings: the set `_kombu.binding.<exchange>` with members
//!   `<routing_key>\x06\x16<pattern>\x06\x16<queue>` (the pattern is kombu's regex for topic
//!   bindings, the binding arguments as JSON for headers bindings, empty otherwise).
//! * Unacked messages: the hash `unacked` (delivery tag → `[envelope, exchange, routing_key]`)
//!   and the sorted set `unacked_index` (delivery tag → delivery time), restored after the
//!   visibility timeout by whichever consumer (Python or Rust) sweeps first, under
//!   `unacked_mutex`.
//! * Delayed messages ([`Publish::delay`](kombu_core::Publish::delay),
//!   [`eta`](kombu_core::Publish::eta)) wait in kombu-rs's sorted set `_kombu_rs.delayed`
//!   (score: the due time in ms by the server's clock; member: a unique id, the list a put
//!   would push to, the envelope) and one Lua script moves the due ones onto their lists
//!   (`LPUSH`, as a put) and out of the set in one atomic step. Until then Python kombu sees
//!   nothing of them and sizes do not count them. The move is run by a task of each kombu-rs
//!   connection that stored delayed messages not yet due (on time: so a Python consumer alone
//!   gets them while their publisher's connection is open), and of each connection with
//!   consumers (within a second for messages whose publisher has gone): see the `delayed`
//!   module.
//! * Exchange types are kept in the hash `_kombu_rs.exchanges` (kombu keeps them in process
//!   memory); an exchange found only by its binding set is taken as direct.
//! * A queue exists (`queue_exists`, so mandatory publishes and the size of a missing queue)
//!   when kombu-rs declared it, one of its lists exists, or a binding table names it: Python
//!   kombu and Celery record nothing else for a queue, and an empty queue has no list. Tables
//!   are read in the order most likely to find it: the one named after the queue (Celery's
//!   default exchange for a queue has its name), those of the exchanges kombu-rs knows, and
//!   only then every `_kombu.binding.*` (`SCAN … COUNT 1000`). A key of such a name that is not
//!   a set is passed over. A queue found bound is taken to exist for 5 seconds without looking
//!   again, unless it is deleted or unbound through the same connection.
//!
//! kombu pops a message and records it as unacked in a later command, so a crash in between
//! loses it. Here one Lua script pops up to `prefetch` messages and writes their `unacked` and
//! `unacked_index` entries, in kombu's format, atomically: a killed consumer's messages are
//! always in `unacked` and come back after the visibility timeout, restored by kombu-rs or by
//! Python kombu. Each entry is keyed by the take (a token and a number), not by the message's
//! `delivery_tag` as kombu keys its own: a message restored and taken again gets a new entry,
//! so a late ack of an earlier take removes nothing. Its value names the default exchange
//! and the queue (`[envelope, "", "<queue>"]`), so whoever restores it, Python kombu's sweep
//! included, puts it back in the queue it came from. Acks are `HDEL` + `ZREM`, as kombu's,
//! one transaction per batch: the virtual channel coalesces them (see `acks`).
//!
//! An entry that is not a kombu envelope (not JSON, a bad body encoding, ...; Python kombu
//! fails on it too) is taken and leased like the others and never dropped: core moves its bytes
//! to `<queue>.dlq` as the body of a dead letter, which one Lua script pushes onto that queue's
//! list (as a publish would, so Rust and Python consumers read it as an ordinary message) in
//! the same atomic step that removes the lease from `unacked`. If its consumer dies in
//! between, the lease ends and the sweep puts the stored bytes back in the queue. A fanout
//! message that is not an envelope is moved there too.
//!
//! # Waiting
//!
//! Idle consumers block on the server: a dedicated connection per list they wait on sends
//! `BLMOVE <list> <list> LEFT LEFT`, which returns when anyone (kombu-rs or Python kombu)
//! pushes, and leaves the list exactly as it was (it pops the newest element and pushes it
//! straight back, in one atomic step). See the `watch` module for the details and the limits
//! (at most 128 watched lists per connection; before Redis 6.2, polling every
//! `polling_interval`).
//!
//! Scores in `unacked_index` are the take time, as kombu writes them, and a lease can be
//! extended ([`Delivery::extend_lease`](kombu_core::Delivery::extend_lease): the score becomes
//! now). A sweep restores what was taken (or extended) at least the sweeper's own
//! `visibility_timeout` ago, as kombu's `restore_visible` does: a consumer with
//! `?visibility_timeout=5` restores what another took under the 3,600 s default after 5 s, and
//! Python and Rust sweepers follow the same rule.
//!
//! * Fanout exchanges go over PUB/SUB as in kombu: a publish is one `PUBLISH` to
//!   `<global_keyprefix><fanout_prefix><exchange>[/<routing key>]` (`fanout_prefix` defaults
//!   to `/{db}.`, `fanout_patterns` to on); a queue of this process bound to a fanout
//!   exchange subscribes to the binding's topic (`#` as Redis's `*`) when it is bound, and its
//!   consumers get what arrives from then on. At-most-once, like kombu's: nothing is stored,
//!   except that a delivery requeued (or returned when its channel closes) goes to its queue's
//!   list, as kombu restores a fanout message.
//!   With kombu's default `fanout_patterns=true` a binding only gets messages published with
//!   its own routing key (an empty key only empty keys); `fanout_patterns=false` gives AMQP's
//!   fanout, where every bound queue gets every message (Python consumers must use the same
//!   setting).
//!
//! * Queue expiry (`x-expires`): as kombu does, a connection that declared a queue with an
//!   expiry refreshes its lists' `PEXPIRE` after every publish and every take, so a queue
//!   nobody uses disappears with its messages. Binding tables follow kombu 5.7: a binding of
//!   an expiring queue raises its exchange's deadline in `_kombu.binding_deadlines` (at least
//!   an hour, or twice `x-expires`, by the server's clock), consumers of the queue refresh it
//!   every third of that, and sweep tables whose deadline passed (at most every minute) unless
//!   `_kombu.binding_permanent.<exchange>` still lists a binding of a queue that does not
//!   expire.
//!
//! * `sentinel://host:26379[/db]?master_name=<name>` asks that sentinel for the master's
//!   address and connects to it (user and password from the URL are the master's). Several
//!   sentinels are `;`-separated URLs, tried in turn as failover alternatives.
//!
//! Priorities follow kombu's buckets, not AMQP's order: the `priorities` capability is off,
//! `priority_buckets` on.
//!
//! # Reconnecting
//!
//! A command that finds the connection dead (I/O error, dropped, refused, no reply in
//! `socket_timeout`) fails with a recoverable error and the next command opens a new
//! connection (one at a time, with back-off; see the `reconnect` module). Consumers wait
//! under their retry policy and resume by themselves; what a consumer had taken into its
//! buffer on the old connection goes back to its queue at once, and so do takes whose reply
//! was lost; the connection's [`link`](kombu_core::Connection::link) reports `Reconnecting`
//! and `Connected`. Publishes and acks whose reply was lost fail with
//! [`Error::outcome_unknown`](kombu_core::Error::outcome_unknown) (the server may have done
//! them). A settle of a delivery taken before the loss acts on that take's own `unacked`
//! field: if its lease survived (a restart with the AOF, a cut connection) it is settled; if
//! the lease is gone (restored, maybe taken again by another consumer under another field)
//! the settle does nothing, and never touches another take's lease.

use std::sync::{Arc, Once};

use async_trait::async_trait;
use kombu_core::transport::virtual_transport::VirtualConnection;
use kombu_core::transport::{BrokerConnection, Transport, register_transport};
use kombu_core::{BrokerUrl, FailoverStrategy, Result};

mod acks;
mod backend;
mod browse;
mod connect;
mod delayed;
mod fanout;
mod keys;
mod options;
mod reconnect;
mod scripts;
mod topology;
mod unacked;
#[cfg(test)]
mod unreadable_tests;
mod watch;

use crate::backend::RedisBackend;
use crate::options::Options;

/// Registers the `redis`, `rediss`, `redis+socket`, `unix` and `sentinel` URL schemes
/// (idempotent).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| register_transport(Arc::new(RedisTransport)));
}

/// The Redis transport (see the crate documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisTransport;

#[async_trait]
impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["redis", "rediss", "sentinel", "unix"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        self.connect_with_alternates(url, std::slice::from_ref(url))
            .await
    }

    /// Connects to `url`; a connection lost later goes back to it or on to the Redis URLs
    /// after it among `alternates` (wrapping around), in turn.
    async fn connect_with_alternates(
        &self,
        url: &BrokerUrl,
        alternates: &[BrokerUrl],
    ) -> Result<Arc<dyn BrokerConnection>> {
        self.connect_failover(url, alternates, FailoverStrategy::RoundRobin)
            .await
    }

    /// Connects to `url`; a connection lost later tries the Redis URLs among `alternates` in
    /// `strategy`'s order (round-robin: back to `url`, then the ones after it).
    async fn connect_failover(
        &self,
        url: &BrokerUrl,
        alternates: &[BrokerUrl],
        strategy: FailoverStrategy,
    ) -> Result<Arc<dyn BrokerConnection>> {
        let options = Options::from_url(url)?;
        let start = alternates.iter().position(|a| a == url).unwrap_or(0);
        let mut alternatives = vec![(options.clone(), url.masked(), url.clone())];
        let n = alternates.len();
        for other in (1..n).map(|i| &alternates[(start + i) % n]) {
            let ours = self
                .schemes()
                .contains(&other.scheme().split('+').next().unwrap_or(""));
            // An alternative this transport cannot parse is left to the connect-time failover.
            if ours
                && other != url
                && let Ok(o) = Options::from_url(other)
            {
                alternatives.push((o, other.masked(), other.clone()));
            }
        }
        let backend = RedisBackend::connect_to(alternatives, strategy).await?;
        Ok(Arc::new(VirtualConnection::new(
            Arc::new(backend),
            Some(options.visibility_timeout),
        )))
    }
}
