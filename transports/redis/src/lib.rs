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
//! | `visibility_timeout` | `3600` | seconds after delivery before an unacked message is restored |
//! | `priority_steps` | `0,3,6,9` | priority buckets; **lower numbers are consumed first**, as in kombu |
//! | `sep` | `\x06\x16` | separator of priority keys and binding members |
//! | `global_keyprefix` | empty | prefix of every key |
//! | `unacked_key`, `unacked_index_key`, `unacked_mutex_key` | `unacked`, `unacked_index`, `unacked_mutex` | kombu's ack-emulation keys |
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
//! queued and written in batches in the background (see `AckQueue`).
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
//! A lease can be extended (`unacked_index` moves forward). Scores are written as `deadline −
//! visibility_timeout`, which is the delivery time for an ordinary lease, so a Python sweeper
//! configured with the same `visibility_timeout` restores a message exactly when its lease
//! ends.
//!
//! * Fanout exchanges go over PUB/SUB as in kombu: a publish is one `PUBLISH` to
//!   `<global_keyprefix><fanout_prefix><exchange>[/<routing key>]` (`fanout_prefix` defaults
//!   to `/{db}.`, `fanout_patterns` to on); a queue of this process bound to a fanout
//!   exchange subscribes to the binding's topic (`#` as Redis's `*`) when it is bound, and its
//!   consumers get what arrives from then on. At-most-once, like kombu's: nothing is stored.
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

use std::collections::HashMap;
use std::sync::{Arc, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use kombu_core::virtual_transport::{
    Backend, BindingRow, DeadLetter, Envelope, Fetched, Receipt, TakeMode, Taken, TopologyCache,
    VirtualConnection, envelope, router,
};
use kombu_core::{
    BrokerConnection, BrokerUrl, Capabilities, Error, ErrorKind, Exchange, ExchangeKind, Headers,
    Queue, Result, Transport, register_transport,
};
use parking_lot::Mutex;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

mod watch;

/// Registers the `redis`, `rediss`, `redis+socket`, `unix` and `sentinel` URL schemes
/// (idempotent).
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| register_transport(Arc::new(RedisTransport)));
}

/// The Redis transport (see the crate documentation).
#[derive(Debug, Default, Clone, Copy)]
pub struct RedisTransport;

#[derive(Debug, Clone)]
struct Options {
    /// The URL handed to the redis crate (no transport options).
    client_url: String,
    /// `rediss://` with a CA bundle or a client certificate of its own.
    tls: Option<TlsFiles>,
    /// `sentinel://`: the sentinel to ask, the master's name, and how to log in to the master.
    sentinel: Option<SentinelTarget>,
    db: i64,
    visibility_timeout: Duration,
    priority_steps: Vec<u8>,
    sep: String,
    prefix: String,
    unacked: String,
    unacked_index: String,
    unacked_mutex: String,
    polling_interval: Duration,
    /// `keyprefix_fanout`, already formatted (`/{db}.` by default).
    fanout_prefix: String,
    fanout_patterns: bool,
}

/// Where `sentinel://` finds its master.
#[derive(Debug, Clone)]
struct SentinelTarget {
    /// `redis://host:port` of the sentinel.
    sentinel: String,
    master_name: String,
    username: Option<String>,
    password: Option<String>,
}

/// PEM files for `rediss://` (kombu's `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`).
#[derive(Debug, Clone, Default)]
struct TlsFiles {
    ca_certs: Option<String>,
    certfile: Option<String>,
    keyfile: Option<String>,
}

fn seconds(url: &BrokerUrl, key: &str, default: f64) -> Result<Duration> {
    let Some(v) = url.query(key) else {
        return Ok(Duration::from_secs_f64(default));
    };
    v.parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| Error::config(format!("{key}={v:?} is not a number of seconds")))
}

impl Options {
    fn from_url(url: &BrokerUrl) -> Result<Options> {
        let bad =
            |why: String| Error::new(ErrorKind::InvalidUrl, format!("{}: {why}", url.masked()));
        let mut tls = None;
        let mut sentinel = None;
        let (client_url, db) = match url.scheme() {
            scheme @ ("redis" | "rediss") => {
                let db = match url.path().unwrap_or_default().trim_matches('/') {
                    "" => 0,
                    d => d
                        .parse::<i64>()
                        .map_err(|_| bad(format!("the database {d:?} is not a number")))?,
                };
                let host = url.host().unwrap_or("localhost");
                let port = url.port().unwrap_or(6379);
                let auth = match (url.username(), url.password()) {
                    (Some(""), Some(p)) | (None, Some(p)) => format!(":{}@", enc(&p)),
                    (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(&p)),
                    (Some(u), None) if !u.is_empty() => format!("{}@", enc(u)),
                    _ => String::new(),
                };
                let mut client = format!("{scheme}://{auth}{host}:{port}/{db}");
                if scheme == "rediss" {
                    match url
                        .query("ssl_cert_reqs")
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                    {
                        None => {}
                        Some(r) if r == "required" || r == "cert_required" => {}
                        Some(r)
                            if r == "none"
                                || r == "cert_none"
                                || r == "optional"
                                || r == "cert_optional" =>
                        {
                            // No verification of the server's certificate (kombu's default for
                            // a bare rediss:// URL; ours verifies unless told otherwise).
                            client.push_str("#insecure");
                        }
                        Some(other) => {
                            return Err(bad(format!(
                                "ssl_cert_reqs={other:?}: use required, optional or none"
                            )));
                        }
                    }
                    let files = TlsFiles {
                        ca_certs: url.query("ssl_ca_certs"),
                        certfile: url.query("ssl_certfile"),
                        keyfile: url.query("ssl_keyfile"),
                    };
                    if files.certfile.is_some() != files.keyfile.is_some() {
                        return Err(bad("ssl_certfile and ssl_keyfile go together".into()));
                    }
                    if files.ca_certs.is_some() || files.certfile.is_some() {
                        tls = Some(files);
                    }
                }
                (client, db)
            }
            "sentinel" => {
                let master_name = url.query("master_name").ok_or_else(|| {
                    bad("a sentinel:// URL needs ?master_name=<the monitored master's name>".into())
                })?;
                let db = match url.path().unwrap_or_default().trim_matches('/') {
                    "" => 0,
                    d => d
                        .parse::<i64>()
                        .map_err(|_| bad(format!("the database {d:?} is not a number")))?,
                };
                let host = url.host().unwrap_or("localhost");
                let port = url.port().unwrap_or(26379);
                sentinel = Some(SentinelTarget {
                    sentinel: format!("redis://{host}:{port}"),
                    master_name,
                    username: url.username().filter(|u| !u.is_empty()).map(str::to_owned),
                    password: url.password().map(|p| p.into_owned()),
                });
                // Replaced by the master's address when connecting.
                (String::new(), db)
            }
            "redis+socket" | "unix" => {
                let rest = url.rest();
                let before_query = rest.split_once('?').map_or(rest, |(p, _)| p);
                // `[user[:password]@]/path`: credentials only before the path's first `/`.
                let path = match before_query.split_once('@') {
                    Some((userinfo, path)) if !userinfo.contains('/') => path,
                    _ => before_query,
                };
                let db = match url.query("virtual_host").or_else(|| url.query("db")) {
                    None => 0,
                    Some(d) => d
                        .trim_matches('/')
                        .parse::<i64>()
                        .map_err(|_| bad(format!("the database {d:?} is not a number")))?,
                };
                let mut client = format!("redis+unix://{path}?db={db}");
                // Credentials only before the path (a password in the query would not be
                // masked when the URL is shown).
                if let Some(user) = url.username().filter(|u| !u.is_empty()) {
                    client.push_str(&format!("&user={}", enc(user)));
                }
                if let Some(password) = url.password() {
                    client.push_str(&format!("&pass={}", enc(&password)));
                }
                (client, db)
            }
            other => {
                return Err(bad(format!(
                    "the Redis transport does not take {other}:// URLs"
                )));
            }
        };
        let priority_steps = match url.query("priority_steps") {
            None => vec![0, 3, 6, 9],
            Some(s) => {
                let mut steps = s
                    .trim_matches(|c| c == '[' || c == ']')
                    .split(',')
                    .map(|p| p.trim().parse::<u8>())
                    .collect::<std::result::Result<Vec<u8>, _>>()
                    .map_err(|_| {
                        Error::config(format!(
                            "priority_steps={s:?}: numbers 0-255, comma-separated"
                        ))
                    })?;
                steps.sort_unstable();
                steps.dedup();
                if steps.first() != Some(&0) {
                    steps.insert(0, 0);
                }
                steps
            }
        };
        let prefix = url.query("global_keyprefix").unwrap_or_default();
        let key = |name: &str, default: &str| {
            format!(
                "{prefix}{}",
                url.query(name).unwrap_or_else(|| default.to_owned())
            )
        };
        Ok(Options {
            client_url,
            tls,
            sentinel,
            db,
            visibility_timeout: seconds(url, "visibility_timeout", 3600.0)?,
            priority_steps,
            sep: url.query("sep").unwrap_or_else(|| "\x06\x16".to_owned()),
            unacked: key("unacked_key", "unacked"),
            unacked_index: key("unacked_index_key", "unacked_index"),
            unacked_mutex: key("unacked_mutex_key", "unacked_mutex"),
            polling_interval: seconds(url, "polling_interval", 1.0)?,
            fanout_prefix: match url.query("fanout_prefix").as_deref() {
                None | Some("true") | Some("True") | Some("1") => format!("/{db}."),
                Some("false") | Some("False") | Some("0") => String::new(),
                Some(custom) => custom.to_owned(),
            },
            fanout_patterns: !matches!(
                url.query("fanout_patterns").as_deref(),
                Some("false") | Some("False") | Some("0")
            ),
            prefix,
        })
    }

    /// The list holding `queue`'s messages of `priority` (kombu's `_q_for_pri`).
    fn list_key(&self, queue: &str, priority: u8) -> String {
        let step = self
            .priority_steps
            .iter()
            .rev()
            .find(|s| **s <= priority.min(9))
            .copied()
            .unwrap_or(0);
        if step == 0 {
            format!("{}{queue}", self.prefix)
        } else {
            format!("{}{queue}{}{step}", self.prefix, self.sep)
        }
    }

    /// Every list of `queue`, in consumption order (bucket 0 first).
    fn list_keys(&self, queue: &str) -> Vec<String> {
        self.priority_steps
            .iter()
            .map(|s| self.list_key(queue, *s))
            .collect()
    }

    fn binding_key(&self, exchange: &str) -> String {
        format!("{}_kombu.binding.{exchange}", self.prefix)
    }

    /// kombu 5.7's set of the members of an exchange's table whose queues do not expire: the
    /// binding sweep keeps a table while it has any.
    fn binding_permanent_key(&self, exchange: &str) -> String {
        format!("{}_kombu.binding_permanent.{exchange}", self.prefix)
    }

    /// kombu 5.7's deadlines of binding tables of expiring queues (exchange → ms, server
    /// clock).
    fn binding_deadlines_key(&self) -> String {
        format!("{}_kombu.binding_deadlines", self.prefix)
    }

    fn exchanges_key(&self) -> String {
        format!("{}_kombu_rs.exchanges", self.prefix)
    }

    /// The PUB/SUB channel of a fanout publish (kombu's `_get_publish_topic`).
    fn fanout_topic(&self, exchange: &str, routing_key: &str) -> String {
        if self.fanout_patterns && !routing_key.is_empty() {
            format!(
                "{}{}{exchange}/{routing_key}",
                self.prefix, self.fanout_prefix
            )
        } else {
            format!("{}{}{exchange}", self.prefix, self.fanout_prefix)
        }
    }

    /// The pattern a queue bound to a fanout exchange subscribes to (kombu's
    /// `_get_subscribe_topic`: `#` becomes Redis's `*`).
    fn fanout_pattern(&self, exchange: &str, binding_key: &str) -> String {
        self.fanout_topic(exchange, &binding_key.replace('#', "*"))
    }

    fn queues_key(&self) -> String {
        format!("{}_kombu_rs.queues", self.prefix)
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// kombu's `TopicExchange.key_to_pattern`: the regex Python consumers match routing keys with.
fn topic_pattern(key: &str) -> String {
    let escaped: String = key
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || ".#*".contains(c) {
                c.to_string()
            } else if c == '\0' {
                "\\000".to_owned()
            } else {
                format!("\\{c}")
            }
        })
        .collect();
    let words: Vec<&str> = escaped
        .split('.')
        .map(|w| match w {
            "*" => "[^\\.]+",
            "#" => ".*?",
            w => w,
        })
        .collect();
    format!("^{}$", words.join("\\."))
}

#[async_trait]
impl Transport for RedisTransport {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["redis", "rediss", "sentinel", "unix"]
    }

    async fn connect(&self, url: &BrokerUrl) -> Result<Arc<dyn BrokerConnection>> {
        let options = Options::from_url(url)?;
        let label = url.masked();
        let backend = RedisBackend::connect(options.clone(), label).await?;
        Ok(Arc::new(VirtualConnection::new(
            Arc::new(backend),
            Some(options.visibility_timeout),
        )))
    }
}

/// Pops up to `ARGV[1]` messages from the lists in `KEYS[3..]` (in order) and, unless
/// `ARGV[3]` is `0` (no-ack), records each in kombu's `unacked` hash (`KEYS[1]`) and
/// `unacked_index` (`KEYS[2]`, score `ARGV[2]`) in the same atomic step. The n-th message
/// taken is recorded under the field `ARGV[4] .. n` (the take's token, unique per take), with
/// the value `[<envelope>` .. `ARGV[5]` (`, "", "<queue>"]`: kombu's `[envelope, exchange,
/// routing_key]`, naming the default exchange and the queue, so whoever restores it, Python
/// kombu or kombu-rs, returns it to the queue it was taken from). Returns the envelopes.
///
/// A field names one take, not the message: after a restore the message is taken again under
/// a new field, so a late settlement of an earlier take touches nothing.
const TAKE: &str = r#"
local max = tonumber(ARGV[1])
local lease = ARGV[3] ~= '0'
local score, token, suffix = ARGV[2], ARGV[4], ARGV[5]
local out, scores, entries = {}, {}, {}
local n, m = 0, 0
for i = 3, #KEYS do
  if n >= max then break end
  local got = redis.call('RPOP', KEYS[i], max - n)
  if got then
    for _, raw in ipairs(got) do
      n = n + 1
      out[n] = raw
      if lease then
        local field = token .. n
        m = m + 2
        scores[m - 1] = score
        scores[m] = field
        entries[m - 1] = field
        entries[m] = '[' .. raw .. suffix
      end
    end
  end
end
-- One call each for the whole batch (in slices, to stay within Lua's argument limit).
for s = 1, m, 1000 do
  local e = math.min(s + 999, m)
  redis.call('ZADD', KEYS[2], unpack(scores, s, e))
  redis.call('HSET', KEYS[1], unpack(entries, s, e))
end
return out
"#;

/// Moves an unacked message back: when `KEYS[1]` (unacked) still holds the field `ARGV[1]`,
/// removes it from there and from `KEYS[2]` (unacked_index) and `RPUSH`es `ARGV[2]` (the
/// redelivered envelope) onto every list in `KEYS[3..]`. With a ceiling `ARGV[3]` (a sweep),
/// only while the lease's score is still at most that: a lease extended since the sweep read
/// the index stays. Returns 1 when it moved it.
///
/// `RPUSH` is the end consumers take from (`RPOP`), so a requeued or restored message is the
/// next one taken: a requeue keeps the message's place, as RabbitMQ's does, and a channel's
/// close restores its messages newest first, which keeps their order. kombu restores to the
/// same end, but `LPUSH`es a `reject(requeue=True)` to the far end, behind every queued message;
/// both sides read the same lists, so this is a difference in order only, not in format.
const RESTORE: &str = r#"
if ARGV[3] ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if score and tonumber(score) > tonumber(ARGV[3]) then return 0 end
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  for i = 3, #KEYS do
    redis.call('RPUSH', KEYS[i], ARGV[2])
  end
  return 1
end
return 0
"#;

/// kombu 5.7's `REFRESH_BINDING`: adds member `ARGV[1]` to binding table `KEYS[1]` and raises
/// exchange `ARGV[2]`'s deadline in `KEYS[2]` to `ARGV[3]` ms from now, by the server clock.
const REFRESH_BINDING: &str = r#"
redis.call('SADD', KEYS[1], ARGV[1])
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[2], 'GT', ms + tonumber(ARGV[3]), ARGV[2])
"#;

/// kombu 5.7's `SWEEP_BINDINGS`: deletes up to `ARGV[3]` binding tables whose deadline in
/// `KEYS[1]` has passed, unless their permanent set (`ARGV[2]` .. exchange) still has members;
/// `ARGV[1]` is the table key without the exchange name.
const SWEEP_BINDINGS: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local overdue = redis.call(
    'ZRANGEBYSCORE', KEYS[1], '-inf', ms, 'LIMIT', 0, tonumber(ARGV[3]))
for _, exchange in ipairs(overdue) do
    if redis.call('EXISTS', ARGV[2] .. exchange) == 0 then
        redis.call('DEL', ARGV[1] .. exchange)
    end
    redis.call('ZREM', KEYS[1], exchange)
end
return #overdue
"#;

/// A binding table of an expiring queue lives at least this long past its last refresh
/// (kombu's `MIN_BINDING_TTL`), or twice the queue's `x-expires` if that is longer.
const MIN_BINDING_TTL_MS: u64 = 60 * 60 * 1000;
/// Seconds between two sweeps of overdue binding tables (kombu's `BINDING_SWEEP_INTERVAL`).
const BINDING_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Releases `KEYS[1]` if it still holds our token `ARGV[1]`.
const UNLOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

/// Acks waiting to be written: `ack` returns once its ack is queued, and one pipeline writes
/// every queued ack (one round trip for many), in the background while the consumer goes on.
/// A sweep for overdue leases, `size`, `purge`, `wait`, a restore and a channel's close write
/// the queued acks first, so this process never restores or counts a message it acked (a take
/// need not: an acked message is in `unacked`, out of every list). If the process dies with acks still queued, those messages come back after the
/// visibility timeout (at-least-once, as when a consumer dies before acking).
struct AckQueue {
    /// Fields of `unacked` (one per take) whose messages were settled.
    pending: Mutex<Vec<String>>,
    flushing: tokio::sync::Mutex<()>,
    running: std::sync::atomic::AtomicBool,
    conn: MultiplexedConnection,
    /// `unacked` and `unacked_index`.
    keys: [String; 2],
    label: String,
}

impl AckQueue {
    /// Writes every queued ack (waiting for a flush already in progress first).
    async fn flush(&self) -> Result<()> {
        let _turn = self.flushing.lock().await;
        loop {
            let batch = std::mem::take(&mut *self.pending.lock());
            if batch.is_empty() {
                return Ok(());
            }
            self.write(&batch).await?;
        }
    }

    /// kombu's ack (`HDEL unacked`, `ZREM unacked_index`) for a batch, in one transaction.
    async fn write(&self, batch: &[String]) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for chunk in batch.chunks(1000) {
            pipe.hdel(&self.keys[0], chunk)
                .ignore()
                .zrem(&self.keys[1], chunk)
                .ignore();
        }
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(|e| redis_error(&self.label, "ack", e))
    }
}

/// Writes queued acks in the background until none are left.
fn spawn_flusher(acks: Arc<AckQueue>) {
    use std::sync::atomic::Ordering;
    if acks.running.swap(true, Ordering::AcqRel) {
        return;
    }
    tokio::spawn(async move {
        loop {
            if let Err(err) = acks.flush().await {
                tracing::warn!(url = %acks.label, error = %err, "acks not written; those messages will be redelivered after the visibility timeout");
            }
            acks.running.store(false, Ordering::Release);
            // An ack queued after the last drain but before `running` was cleared.
            if acks.pending.lock().is_empty() || acks.running.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    });
}

/// Fanout exchanges over PUB/SUB, as kombu does them: queues of this process bound to a
/// fanout exchange subscribe to its topic; what arrives waits here for their consumers
/// (at-most-once, like kombu's: nothing is kept in Redis).
#[derive(Default)]
struct Fanout {
    /// Queue → the patterns it subscribes to.
    queues: Mutex<HashMap<String, Vec<String>>>,
    /// Messages received for each queue, oldest first.
    buffers: Mutex<HashMap<String, std::collections::VecDeque<Vec<u8>>>>,
    /// Adds subscriptions to the live PUB/SUB connection.
    sink: tokio::sync::Mutex<Option<redis::aio::PubSubSink>>,
}

/// Most messages kept for one fanout queue before the oldest are dropped (a queue bound in
/// this process that nobody consumes must not grow without bound).
const FANOUT_BUFFER: usize = 100_000;
/// Receipt prefix of a fanout delivery (nothing to settle in Redis).
const FANOUT_RECEIPT: &str = "\u{0}fanout\n";

impl Fanout {
    fn deliver(&self, pattern: &str, payload: &[u8]) -> bool {
        let targets: Vec<String> = self
            .queues
            .lock()
            .iter()
            .filter(|(_, patterns)| patterns.iter().any(|p| p == pattern))
            .map(|(q, _)| q.clone())
            .collect();
        let mut buffers = self.buffers.lock();
        for queue in &targets {
            let buffer = buffers.entry(queue.clone()).or_default();
            if buffer.len() >= FANOUT_BUFFER {
                buffer.pop_front();
                tracing::warn!(%queue, "fanout buffer full: oldest message dropped");
            }
            buffer.push_back(payload.to_vec());
        }
        !targets.is_empty()
    }

    fn is_fanout_queue(&self, queue: &str) -> bool {
        self.queues.lock().contains_key(queue)
    }

    fn take(&self, queue: &str, max: usize) -> Vec<Vec<u8>> {
        let mut buffers = self.buffers.lock();
        let Some(buffer) = buffers.get_mut(queue) else {
            return Vec::new();
        };
        let n = max.min(buffer.len());
        buffer.drain(..n).collect()
    }

    fn len(&self, queue: &str) -> usize {
        self.buffers.lock().get(queue).map_or(0, |b| b.len())
    }
}

/// The bindings of an expiring queue made through one connection, `(exchange, member)`, and
/// when their tables' deadlines were last pushed on.
type ExpiringBindings = (Vec<(String, String)>, Option<Instant>);

const TOPOLOGY_TTL: Duration = Duration::from_secs(1);
/// How long a queue found in a binding table is taken to exist without looking again.
const BOUND_TTL: Duration = Duration::from_secs(5);
/// The `COUNT` of each `SCAN` step for binding tables (Redis's default, 10, costs a round trip
/// per ten keys of the whole database).
const SCAN_COUNT: usize = 1000;
/// Binding tables read per round trip.
const TABLES_PER_READ: usize = 256;
/// At most one sweep for expired leases per this interval per connection.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Overdue messages restored per batch of a sweep, and most batches per sweep.
const SWEEP_BATCH: usize = 100;
const SWEEP_ROUNDS: usize = 20;

struct RedisBackend {
    conn: MultiplexedConnection,
    client: redis::Client,
    options: Options,
    label: String,
    take: redis::Script,
    restore: redis::Script,
    unlock: redis::Script,
    topology: TopologyCache,
    /// Queues found in a binding table, and when ([`BOUND_TTL`]).
    bound: Mutex<HashMap<String, Instant>>,
    /// Whether `SCAN` takes `TYPE` (Redis 6 and later); off after the server refused it.
    scan_type: std::sync::atomic::AtomicBool,
    last_sweep: Mutex<Option<Instant>>,
    /// Wakes this connection's idle consumers: its own publishes and restores, fanout
    /// messages received.
    wake: Arc<tokio::sync::Notify>,
    /// Blocking waits for what other connections push.
    watchers: watch::Watchers,
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    acks: Arc<AckQueue>,
    fanout: Arc<Fanout>,
    /// `x-expires` (ms) of queues declared through this connection: their lists get a
    /// `PEXPIRE` after every publish and take, as kombu does, so an unused queue disappears.
    expiring: Mutex<HashMap<String, u64>>,
    /// Bindings of those queues made through this connection, `(exchange, member)`, which
    /// consumers of the queue keep alive as kombu 5.7 does (binding deadlines), and when they
    /// were last refreshed.
    expiring_bindings: Mutex<HashMap<String, ExpiringBindings>>,
    /// When this connection last swept overdue binding tables.
    bindings_swept: Mutex<Option<Instant>>,
    refresh_binding: redis::Script,
    sweep_bindings: redis::Script,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.label)
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBackend {
    fn drop(&mut self) {
        if let Some(task) = self.listener.lock().take() {
            task.abort();
        }
    }
}

fn redis_error(label: &str, what: &str, err: redis::RedisError) -> Error {
    let refused = matches!(
        err.kind(),
        redis::ErrorKind::AuthenticationFailed
            | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || err.code() == Some("WRONGPASS")
        || err.code() == Some("NOAUTH");
    let kind = if refused {
        ErrorKind::AccessRefused
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        ErrorKind::Connection
    } else if err.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Broker
    };
    Error::new(kind, format!("redis {label}: {what}")).with_source(err)
}

/// A plain `PING` on a new connection, so that a server that wants a password the URL does not
/// give (or that refuses this user every command) is an [`ErrorKind::AccessRefused`] error at
/// connect time, then an empty transaction (`MULTI`, `EXEC`), so that a user the server does
/// not allow transactions is one too. The redis crate sends no `AUTH` without a password, and
/// 1.8 panics in its connection task (an overflow in debug builds; a bogus error index in
/// release builds) whenever the `MULTI` of a transaction is refused, by `NOAUTH` or an ACL's
/// `NOPERM`; callers then only see a broken pipe. kombu-rs sends transactions (declaring a
/// queue, purging one, writing acks), so this connection must be allowed them.
async fn check_access(conn: &mut MultiplexedConnection, label: &str) -> Result<()> {
    let pong: redis::RedisResult<redis::Value> = redis::cmd("PING").query_async(conn).await;
    match pong {
        Ok(_) => {}
        // The whole story is in the message; the server's own text adds nothing to it.
        Err(e) if e.code() == Some("NOAUTH") => {
            return Err(Error::new(
                ErrorKind::AccessRefused,
                format!(
                    "redis {label}: the server requires a password (NOAUTH) and the URL gives \
                     none (a user name alone is not sent); give it as \
                     redis://:PASSWORD@host:port/db or redis://USER:PASSWORD@host:port/db"
                ),
            ));
        }
        Err(e) => return Err(redis_error(label, "cannot connect", e)),
    }
    // Plain commands in a plain pipeline (not the crate's transaction support, which is what
    // a refused MULTI breaks), each answer on its own.
    let replies: Vec<redis::Value> = redis::pipe()
        .cmd("MULTI")
        .cmd("EXEC")
        .ignore_errors()
        .query_async(conn)
        .await
        .map_err(|e| redis_error(label, "cannot connect", e))?;
    for (command, reply) in ["MULTI", "EXEC"].into_iter().zip(&replies) {
        if let redis::Value::ServerError(err) = reply {
            let code = err.code();
            let detail = err.details().unwrap_or_default();
            return Err(Error::new(
                if code == "NOPERM" {
                    ErrorKind::AccessRefused
                } else {
                    ErrorKind::Broker
                },
                format!(
                    "redis {label}: the server refuses {command} ({code}: {detail}); kombu-rs \
                     needs transactions (MULTI and EXEC): for an ACL user, grant them with \
                     ACL SETUSER <user> +multi +exec"
                ),
            ));
        }
    }
    Ok(())
}

/// rustls needs a process-wide crypto provider; ring is ours (a no-op when one is set).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn payload(env: &Envelope) -> Vec<u8> {
    envelope::encode(env)
}

fn priority_of(env: &Envelope) -> u8 {
    env.message.properties.priority.unwrap_or(0)
}

impl RedisBackend {
    async fn connect(options: Options, label: String) -> Result<RedisBackend> {
        let client = match (&options.sentinel, &options.tls) {
            (Some(target), _) => {
                let mut sentinel = redis::sentinel::Sentinel::build(vec![target.sentinel.as_str()])
                    .map_err(|e| redis_error(&label, "bad sentinel address", e))?;
                let mut login = redis::RedisConnectionInfo::default().set_db(options.db);
                if let Some(user) = &target.username {
                    login = login.set_username(user);
                }
                if let Some(password) = &target.password {
                    login = login.set_password(password);
                }
                let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(login);
                let master = sentinel
                    .async_master_for(&target.master_name, Some(&node))
                    .await;
                master.map_err(|e| {
                    redis_error(
                        &label,
                        &format!("no master {:?} from the sentinel", target.master_name),
                        e,
                    )
                })?
            }
            (None, None) => {
                if options.client_url.starts_with("rediss://") {
                    install_crypto_provider();
                }
                redis::Client::open(options.client_url.as_str())
                    .map_err(|e| redis_error(&label, "bad connection parameters", e))?
            }
            (None, Some(files)) => {
                install_crypto_provider();
                let read = |path: &str| {
                    std::fs::read(path).map_err(|e| {
                        Error::new(
                            ErrorKind::Config,
                            format!("redis {label}: cannot read {path}"),
                        )
                        .with_source(e)
                    })
                };
                let root_cert = files.ca_certs.as_deref().map(read).transpose()?;
                let client_tls = match (&files.certfile, &files.keyfile) {
                    (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                        client_cert: read(cert)?,
                        client_key: read(key)?,
                    }),
                    _ => None,
                };
                redis::Client::build_with_tls(
                    options.client_url.as_str(),
                    redis::TlsCertificates {
                        client_tls,
                        root_cert,
                    },
                )
                .map_err(|e| redis_error(&label, "bad connection parameters", e))?
            }
        };
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| redis_error(&label, "cannot connect", e))?;
        check_access(&mut conn, &label).await?;
        let acks = Arc::new(AckQueue {
            pending: Mutex::new(Vec::new()),
            flushing: tokio::sync::Mutex::new(()),
            running: std::sync::atomic::AtomicBool::new(false),
            conn: conn.clone(),
            keys: [options.unacked.clone(), options.unacked_index.clone()],
            label: label.clone(),
        });
        let watchers =
            watch::Watchers::new(client.clone(), label.clone(), options.polling_interval);
        Ok(RedisBackend {
            watchers,
            acks,
            conn,
            client,
            options,
            label,
            take: redis::Script::new(TAKE),
            restore: redis::Script::new(RESTORE),
            unlock: redis::Script::new(UNLOCK),
            topology: TopologyCache::new(TOPOLOGY_TTL),
            bound: Mutex::new(HashMap::new()),
            scan_type: std::sync::atomic::AtomicBool::new(true),
            last_sweep: Mutex::new(None),
            wake: Arc::new(tokio::sync::Notify::new()),
            listener: Mutex::new(None),
            fanout: Arc::new(Fanout::default()),
            expiring: Mutex::new(HashMap::new()),
            expiring_bindings: Mutex::new(HashMap::new()),
            bindings_swept: Mutex::new(None),
            refresh_binding: redis::Script::new(REFRESH_BINDING),
            sweep_bindings: redis::Script::new(SWEEP_BINDINGS),
        })
    }

    fn err(&self, what: &str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
        let what = what.to_owned();
        move |e| redis_error(&self.label, &what, e)
    }

    fn forget_topology(&self) {
        self.topology.clear();
        self.bound.lock().clear();
    }

    /// Starts (once) this backend's PUB/SUB connection for the topics of fanout exchanges
    /// that queues of this process are bound to. It reconnects and resubscribes after a
    /// failure.
    fn ensure_listener(&self) {
        let mut slot = self.listener.lock();
        if slot.is_some() {
            return;
        }
        let client = self.client.clone();
        let wake = self.wake.clone();
        let fanout = self.fanout.clone();
        *slot = Some(tokio::spawn(async move {
            loop {
                match client.get_async_pubsub().await {
                    Ok(pubsub) => {
                        let (mut sink, mut stream) = pubsub.split();
                        let subscribed = {
                            let mut slot = fanout.sink.lock().await;
                            let patterns: Vec<String> =
                                fanout.queues.lock().values().flatten().cloned().collect();
                            let mut ok = true;
                            for p in patterns {
                                ok &= sink.psubscribe(&p).await.is_ok();
                            }
                            *slot = Some(sink);
                            ok
                        };
                        if subscribed {
                            while let Some(msg) = futures::StreamExt::next(&mut stream).await {
                                if let Ok(pattern) = msg.get_pattern::<String>()
                                    && fanout.deliver(&pattern, msg.get_payload_bytes())
                                {
                                    wake.notify_waiters();
                                }
                            }
                        }
                        *fanout.sink.lock().await = None;
                    }
                    Err(err) => tracing::debug!(error = %err, "redis PUB/SUB connection"),
                }
                // Reconnect after a broken subscription (fanout messages published meanwhile
                // are lost, as in kombu).
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    /// Subscribes `queue` to a fanout exchange's topic for `binding_key`.
    async fn subscribe_fanout(&self, queue: &str, exchange: &str, binding_key: &str) -> Result<()> {
        let pattern = self.options.fanout_pattern(exchange, binding_key);
        {
            let mut queues = self.fanout.queues.lock();
            let patterns = queues.entry(queue.to_owned()).or_default();
            if patterns.contains(&pattern) {
                return Ok(());
            }
            patterns.push(pattern.clone());
        }
        self.ensure_listener();
        // Wait until the subscription is live, so that what is published once `bind` returns
        // reaches this queue (PUB/SUB keeps nothing for late subscribers).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(sink) = self.fanout.sink.lock().await.as_mut() {
                return sink
                    .psubscribe(&pattern)
                    .await
                    .map_err(self.err("subscribe to a fanout exchange"));
            }
            if Instant::now() >= deadline {
                return Err(Error::new(
                    ErrorKind::Connection,
                    format!(
                        "redis {}: no PUB/SUB connection for fanout exchange {exchange:?}",
                        self.label
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Adds `member` to `exchange`'s binding table and pushes the table's deadline to its TTL
    /// from now (for a queue expiring after `expires_ms`).
    async fn refresh_binding_table(
        &self,
        exchange: &str,
        member: &str,
        expires_ms: u64,
    ) -> Result<()> {
        let ttl = expires_ms.saturating_mul(2).max(MIN_BINDING_TTL_MS);
        let mut conn = self.conn.clone();
        let _: () = self
            .refresh_binding
            .key(self.options.binding_key(exchange))
            .key(self.options.binding_deadlines_key())
            .arg(member)
            .arg(exchange)
            .arg(ttl)
            .invoke_async(&mut conn)
            .await
            .map_err(self.err("refresh a binding table's deadline"))?;
        Ok(())
    }

    /// What a consumer of an expiring queue does for binding tables, as kombu 5.7: refreshes
    /// the queue's bindings every third of their TTL, and sweeps overdue tables (anyone's)
    /// at most every [`BINDING_SWEEP_EVERY`].
    async fn binding_upkeep(&self, queue: &str, expires_ms: u64) -> Result<()> {
        let ttl = Duration::from_millis(expires_ms.saturating_mul(2).max(MIN_BINDING_TTL_MS));
        let due: Vec<(String, String)> = match self.expiring_bindings.lock().get(queue) {
            Some((rows, refreshed)) if refreshed.is_none_or(|t| t.elapsed() >= ttl / 3) => {
                rows.clone()
            }
            _ => Vec::new(),
        };
        // Refreshed first, so that a sweep never deletes this connection's own tables.
        for (exchange, member) in &due {
            self.refresh_binding_table(exchange, member, expires_ms)
                .await?;
        }
        // Marked only once done, so that a failed refresh is tried again at the next take.
        if !due.is_empty()
            && let Some((_, refreshed)) = self.expiring_bindings.lock().get_mut(queue)
        {
            *refreshed = Some(Instant::now());
        }
        let sweep = {
            let mut swept = self.bindings_swept.lock();
            let due = swept.is_none_or(|t| t.elapsed() >= BINDING_SWEEP_EVERY);
            if due {
                *swept = Some(Instant::now());
            }
            due
        };
        if sweep {
            let mut conn = self.conn.clone();
            let removed: i64 = self
                .sweep_bindings
                .key(self.options.binding_deadlines_key())
                .arg(self.options.binding_key(""))
                .arg(self.options.binding_permanent_key(""))
                .arg(100)
                .invoke_async(&mut conn)
                .await
                .map_err(self.err("sweep overdue binding tables"))?;
            if removed > 0 {
                self.forget_topology();
            }
        }
        Ok(())
    }

    /// Restores messages whose lease passed (ours or Python's), kombu's `restore_visible`.
    async fn sweep(&self) -> Result<()> {
        {
            let mut last = self.last_sweep.lock();
            if last.is_some_and(|t| t.elapsed() < SWEEP_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        // A message acked here but not yet written must not look overdue.
        self.acks.flush().await?;
        let mut conn = self.conn.clone();
        let o = &self.options;
        let ceiling = unix_now() - o.visibility_timeout.as_secs_f64();
        let mut overdue = redis::cmd("ZRANGEBYSCORE");
        overdue
            .arg(&o.unacked_index)
            .arg("-inf")
            .arg(ceiling)
            .arg("LIMIT")
            .arg(0)
            .arg(SWEEP_BATCH);
        let mut due: Vec<String> = overdue
            .query_async(&mut conn)
            .await
            .map_err(self.err("read unacked_index"))?;
        if due.is_empty() {
            return Ok(());
        }
        let token = uuid::Uuid::new_v4().to_string();
        let locked: Option<String> = redis::cmd("SET")
            .arg(&o.unacked_mutex)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(300_000)
            .query_async(&mut conn)
            .await
            .map_err(self.err("take unacked_mutex"))?;
        if locked.is_none() {
            return Ok(()); // another consumer is sweeping
        }
        // Batch after batch while the mutex is ours, up to SWEEP_ROUNDS of them.
        let mut result = Ok(());
        for _ in 0..SWEEP_ROUNDS {
            result = self.restore_tags(&due, None, Some(ceiling)).await;
            if result.is_err() || due.len() < SWEEP_BATCH {
                break;
            }
            due = match overdue.query_async::<Vec<String>>(&mut conn).await {
                Ok(due) if !due.is_empty() => due,
                Ok(_) => break,
                Err(e) => {
                    result = Err(redis_error(&self.label, "read unacked_index", e));
                    break;
                }
            };
        }
        let _: i64 = self
            .unlock
            .key(&o.unacked_mutex)
            .arg(&token)
            .invoke_async(&mut conn)
            .await
            .map_err(self.err("release unacked_mutex"))?;
        result
    }

    /// Restores unacked messages by their `unacked` field: to `queue` when known (our own
    /// deliveries), else to the queues their exchange routes them to now (kombu's rule; what
    /// kombu-rs took names the default exchange and its queue, so it goes back there). A sweep
    /// passes its `ceiling`: a lease whose score moved past it since (extended) stays.
    async fn restore_tags(
        &self,
        fields: &[String],
        queue: Option<&str>,
        ceiling: Option<f64>,
    ) -> Result<()> {
        let mut conn = self.conn.clone();
        let o = &self.options;
        for field in fields {
            let stored: Option<String> = conn
                .hget(&o.unacked, field)
                .await
                .map_err(self.err("read unacked"))?;
            let parsed = stored.as_deref().map(parse_unacked);
            let (mut env, exchange, routing_key) = match parsed {
                Some(Ok(parts)) => parts,
                None | Some(Err(_)) => {
                    if let Some(Err(err)) = parsed {
                        // Nobody can read it (Python's sweep neither): out of the index, so
                        // sweeps do not stall on it; the entry stays in the hash to inspect.
                        tracing::error!(url = %self.label, %field, error = %err, "unreadable unacked entry taken out of unacked_index");
                    }
                    // Settled meanwhile (or unreadable): drop the index entry.
                    let _: i64 = conn
                        .zrem(&o.unacked_index, field)
                        .await
                        .map_err(self.err("clean unacked_index"))?;
                    continue;
                }
            };
            env.redelivered = true;
            let queues: Vec<String> = match queue {
                Some(q) => vec![q.to_owned()],
                None => {
                    self.lookup(&exchange, &routing_key, &env.message.headers)
                        .await?
                }
            };
            let mut script = self.restore.key(&o.unacked);
            script.key(&o.unacked_index);
            for q in &queues {
                script.key(o.list_key(q, priority_of(&env)));
            }
            // What was stored, marked redelivered; re-encoded only if it cannot be edited.
            let body = stored
                .as_deref()
                .and_then(restored_envelope)
                .filter(|text| {
                    envelope::decode(text.as_bytes()).is_ok_and(|restored| restored.redelivered)
                })
                .map_or_else(|| payload(&env), String::into_bytes);
            script
                .arg(field)
                .arg(body)
                .arg(ceiling.map_or_else(String::new, |c| c.to_string()));
            let _: i64 = script
                .invoke_async(&mut conn)
                .await
                .map_err(self.err("restore"))?;
        }
        self.wake.notify_waiters();
        Ok(())
    }

    /// The type of an exchange kombu-rs has no record of, guessed from a member of its
    /// binding set (Python's topic bindings carry kombu's `^...$` regex; direct and fanout
    /// ones no pattern, so both read as direct).
    async fn inferred_kind(&self, exchange: &str) -> Result<ExchangeKind> {
        let mut conn = self.conn.clone();
        let member: Option<String> = conn
            .srandmember(self.options.binding_key(exchange))
            .await
            .map_err(self.err("read bindings"))?;
        let pattern = member
            .as_deref()
            .and_then(|m| m.split(self.options.sep.as_str()).nth(1))
            .unwrap_or_default()
            .to_owned();
        Ok(if pattern.starts_with('^') {
            ExchangeKind::Topic
        } else if pattern.starts_with('{') {
            ExchangeKind::Headers
        } else {
            ExchangeKind::Direct
        })
    }

    /// The queues `exchange` routes `routing_key` to now.
    async fn lookup(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: &Headers,
    ) -> Result<Vec<String>> {
        if exchange.is_empty() {
            return Ok(vec![routing_key.to_owned()]);
        }
        let kind = match self.lookup_exchange(exchange).await? {
            Some(x) => x.kind,
            None => self.inferred_kind(exchange).await?,
        };
        let rows = self.bindings(exchange).await?;
        Ok(router::route(kind, &rows, routing_key, headers)
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// Whether `queue` is the queue part of a member of any binding table
    /// (`_kombu.binding.*`). The likely tables first, each in one round trip: the one named
    /// after the queue (kombu's and Celery's default exchange for a queue has its name), then
    /// those of the exchanges in `exchanges` (kombu-rs's registry). Only then all of them,
    /// found with `SCAN` (a few round trips per hundred thousand keys).
    async fn bound_anywhere(&self, queue: &str, exchanges: &[String]) -> Result<bool> {
        let mut probed = vec![self.options.binding_key(queue)];
        for exchange in exchanges {
            let table = self.options.binding_key(exchange);
            if !probed.contains(&table) {
                probed.push(table);
            }
        }
        for chunk in probed.chunks(TABLES_PER_READ) {
            if self.bound_in(chunk, queue).await? {
                return Ok(true);
            }
        }
        let mut rest = self.binding_tables().await?;
        rest.retain(|t| !probed.contains(t));
        for chunk in rest.chunks(TABLES_PER_READ) {
            if self.bound_in(chunk, queue).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether `queue` is bound in one of `tables` (one round trip).
    async fn bound_in(&self, tables: &[String], queue: &str) -> Result<bool> {
        let sep = &self.options.sep;
        Ok(self
            .read_tables(tables)
            .await?
            .iter()
            .flat_map(|(_, members)| members)
            .any(|member| member_queue(member, sep) == Some(queue)))
    }

    /// The members of binding tables, in one round trip. A table that cannot be read (a key
    /// of that name that is not a set) is left out, and so is a member that is not UTF-8:
    /// neither is kombu's, and neither stops the others being read.
    async fn read_tables(&self, tables: &[String]) -> Result<Vec<(String, Vec<String>)>> {
        if tables.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for table in tables {
            pipe.smembers(table);
        }
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> = pipe
            .ignore_errors()
            .query_async(&mut conn)
            .await
            .map_err(self.err("read bindings"))?;
        let mut out = Vec::with_capacity(tables.len());
        for (table, reply) in tables.iter().zip(replies) {
            let items = match reply {
                redis::Value::Array(items) | redis::Value::Set(items) => items,
                other => {
                    tracing::debug!(url = %self.label, %table, reply = ?other, "binding table skipped: not a set");
                    continue;
                }
            };
            let members = items
                .into_iter()
                .filter_map(|item| match item {
                    redis::Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
                    redis::Value::SimpleString(text) => Some(text),
                    _ => None,
                })
                .collect();
            out.push((table.clone(), members));
        }
        Ok(out)
    }

    /// Every binding table (`_kombu.binding.*`) of the database, found with `SCAN … COUNT`
    /// (and `TYPE set` where the server has it, so that only sets come back).
    async fn binding_tables(&self) -> Result<Vec<String>> {
        use std::sync::atomic::Ordering::Relaxed;
        let pattern = format!("{}_kombu.binding.*", glob_escape(&self.options.prefix));
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let typed = self.scan_type.load(Relaxed);
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            if typed {
                scan.arg("TYPE").arg("set");
            }
            let step: redis::RedisResult<(u64, Vec<Vec<u8>>)> = scan.query_async(&mut conn).await;
            let (next, keys) = match step {
                Ok(step) => step,
                // Before Redis 6, SCAN has no TYPE: start again without it.
                Err(e)
                    if typed
                        && cursor == 0
                        && e.code() == Some("ERR")
                        && !(e.is_io_error() || e.is_connection_dropped()) =>
                {
                    self.scan_type.store(false, Relaxed);
                    continue;
                }
                Err(e) => return Err(self.err("list binding tables")(e)),
            };
            out.extend(keys.into_iter().filter_map(|k| String::from_utf8(k).ok()));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        // SCAN may return a key more than once.
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn member(&self, row: &BindingRow, kind: ExchangeKind) -> Result<String> {
        let pattern = match kind {
            ExchangeKind::Topic => topic_pattern(&row.routing_key),
            ExchangeKind::Headers => serde_json::to_string(&row.arguments)
                .map_err(|e| Error::new(ErrorKind::Codec, "binding arguments").with_source(e))?,
            _ => String::new(),
        };
        let sep = &self.options.sep;
        Ok(format!(
            "{}{sep}{pattern}{sep}{}",
            row.routing_key, row.queue
        ))
    }
}

/// The queue part of a binding-table member (`<routing key><sep><pattern><sep><queue>`, as
/// kombu splits it).
fn member_queue<'a>(member: &'a str, sep: &str) -> Option<&'a str> {
    let mut parts = member.splitn(3, sep);
    let _routing_key = parts.next()?;
    let _pattern = parts.next()?;
    parts.next()
}

/// `text` with Redis glob metacharacters escaped, for a literal match in SCAN MATCH.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn is_fanout_receipt(receipt: &Receipt) -> bool {
    matches!(receipt, Receipt::Key(key) if key.starts_with(FANOUT_RECEIPT))
}

/// A receipt is the message's field in `unacked` (one per take).
fn field_of(receipt: &Receipt) -> Result<&str> {
    match receipt {
        Receipt::Key(key) => Ok(key),
        Receipt::Id(_) => Err(Error::new(
            ErrorKind::Settlement,
            "redis receipts are unacked fields",
        )),
    }
}

/// The envelope of an unacked entry (`[envelope, exchange, routing_key]`) as it was stored,
/// marked redelivered as Python kombu's restore marks it (`headers.redelivered` and
/// `properties.delivery_info.redelivered`, or the envelope's own `redelivered` when it has
/// neither object), and otherwise unchanged: what Python's `json.dumps` wrote beyond RFC JSON
/// (`NaN`, `Infinity`, lone surrogates) goes back as it was, as Python's own restore writes it.
/// `None` when the text is not such an entry.
fn restored_envelope(stored: &str) -> Option<String> {
    let b = stored.as_bytes();
    let open = skip_ws(b, 0);
    if b.get(open) != Some(&b'[') {
        return None;
    }
    let start = skip_ws(b, open + 1);
    if b.get(start) != Some(&b'{') {
        return None;
    }
    let end = value_end(b, start)?;
    let env = b.get(start..end)?;
    let top = object_members(env, 0)?;
    let mut edits: Vec<(usize, usize, &str)> = Vec::new();
    let mut marked = false;
    let find = |members: &[(String, usize, usize)], key: &str| {
        members
            .iter()
            .find(|(k, ..)| k == key)
            .map(|(_, s, e)| (*s, *e))
            .filter(|(s, _)| env.get(*s) == Some(&b'{'))
    };
    if let Some((s, e)) = find(&top, "headers") {
        mark_redelivered(env, s, e, &mut edits)?;
        marked = true;
    }
    if let Some((s, _)) = find(&top, "properties") {
        let properties = object_members(env, s)?;
        if let Some((s, e)) = find(&properties, "delivery_info") {
            mark_redelivered(env, s, e, &mut edits)?;
            marked = true;
        }
    }
    if !marked {
        mark_redelivered(env, 0, env.len(), &mut edits)?;
    }
    // Every offset is that of an ASCII byte, so a char boundary.
    let mut out = std::str::from_utf8(env).ok()?.to_owned();
    edits.sort_by_key(|(at, ..)| *at);
    for (at, remove, insert) in edits.into_iter().rev() {
        out.replace_range(at..at + remove, insert);
    }
    Some(out)
}

/// Sets `"redelivered": true` in the JSON object `b[start..end]`: its own member's value
/// replaced, or a member added at its end (as Python adds a key to a dict).
fn mark_redelivered(
    b: &[u8],
    start: usize,
    end: usize,
    edits: &mut Vec<(usize, usize, &'static str)>,
) -> Option<()> {
    let members = object_members(b, start)?;
    if let Some((_, s, e)) = members.iter().find(|(k, ..)| k == "redelivered") {
        edits.push((*s, e - s, "true"));
    } else if members.is_empty() {
        edits.push((end - 1, 0, "\"redelivered\": true"));
    } else {
        edits.push((end - 1, 0, ", \"redelivered\": true"));
    }
    Some(())
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// The end (exclusive) of the JSON string starting at `b[i]` (a `"`).
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The end (exclusive) of the JSON value starting at `b[i]`; scalars (numbers, `true`,
/// Python's `NaN`…) end at the next delimiter.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b
                .get(j)
                .is_some_and(|c| !matches!(c, b',' | b']' | b'}') && !c.is_ascii_whitespace())
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The members of the JSON object starting at `b[start]` (a `{`): key, and where its value
/// starts and ends.
fn object_members(b: &[u8], start: usize) -> Option<Vec<(String, usize, usize)>> {
    if b.get(start) != Some(&b'{') {
        return None;
    }
    let mut out = Vec::new();
    let mut i = skip_ws(b, start + 1);
    if b.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let key: String = std::str::from_utf8(b.get(i..key_end)?)
            .ok()
            .and_then(|k| serde_json::from_str(k).ok())
            .unwrap_or_default();
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(b, i + 1);
        let value_stop = value_end(b, value_start)?;
        out.push((key, value_start, value_stop));
        i = skip_ws(b, value_stop);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

fn parse_unacked(stored: &str) -> Result<(Envelope, String, String)> {
    let bad = || {
        Error::new(
            ErrorKind::Protocol,
            "unacked entry is not [envelope, exchange, routing_key]",
        )
    };
    // Written by Python kombu too: json.dumps may put NaN or Infinity in it (null in this
    // tree; what is restored is the stored text, see `restored_envelope`).
    let value: serde_json::Value = kombu_core::serializers::from_python_json(stored.as_bytes())
        .map_err(|e| bad().with_source(e))?;
    let serde_json::Value::Array(mut parts) = value else {
        return Err(bad());
    };
    if parts.len() < 3 {
        return Err(bad());
    }
    let routing_key = parts
        .pop()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let exchange = parts
        .pop()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let env = parts.pop().ok_or_else(bad)?;
    Ok((envelope::from_json(env)?, exchange, routing_key))
}

#[async_trait]
impl Backend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::none();
        c.persistent = true;
        c.shared_between_processes = true;
        c.visibility_timeout = true;
        c.implicit_queues = true;
        c.priority_buckets = true;
        c
    }

    async fn declare_exchange(&self, exchange: &Exchange) -> Result<()> {
        let spec = serde_json::json!({
            "type": exchange.kind.as_str(),
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "arguments": exchange.arguments,
        })
        .to_string();
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .hset(self.options.exchanges_key(), &exchange.name, spec)
            .await
            .map_err(self.err("declare exchange"))?;
        self.forget_topology();
        Ok(())
    }

    async fn lookup_exchange(&self, name: &str) -> Result<Option<Exchange>> {
        if let Some(found) = self.topology.exchange(name) {
            return Ok(found);
        }
        let mut conn = self.conn.clone();
        let spec: Option<String> = conn
            .hget(self.options.exchanges_key(), name)
            .await
            .map_err(self.err("look up exchange"))?;
        let found = match spec {
            Some(spec) => {
                let v: serde_json::Value = serde_json::from_str(&spec).map_err(|e| {
                    Error::new(ErrorKind::Protocol, "stored exchange").with_source(e)
                })?;
                let kind: ExchangeKind = v["type"].as_str().unwrap_or("direct").parse()?;
                let mut x = Exchange::new(name, kind);
                x.durable = v["durable"].as_bool().unwrap_or(true);
                x.auto_delete = v["auto_delete"].as_bool().unwrap_or(false);
                x.arguments = serde_json::from_value(v["arguments"].clone()).unwrap_or_default();
                Some(x)
            }
            None => {
                // Not declared by kombu-rs. Python kombu keeps exchange types in process
                // memory, so its exchanges are unknown here until declared (with any type):
                // publishers declare the exchanges they publish to, as kombu's do.
                None
            }
        };
        self.topology.put_exchange(name, found.clone());
        Ok(found)
    }

    async fn delete_exchange(&self, name: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .hdel(self.options.exchanges_key(), name)
            .ignore()
            .del(self.options.binding_key(name))
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(self.err("delete exchange"))?;
        self.forget_topology();
        Ok(())
    }

    async fn declare_queue(&self, queue: &Queue) -> Result<()> {
        // kombu writes nothing (a queue is its lists); the arguments are kept so that a
        // conflicting redeclaration fails as on a broker.
        let mut spec = queue.declare_arguments();
        for (flag, on) in [
            ("durable", queue.durable),
            ("exclusive", queue.exclusive),
            ("auto_delete", queue.auto_delete),
        ] {
            spec.insert(format!("kombu-rs:{flag}"), kombu_core::Value::Bool(on));
        }
        let requested = spec;
        let spec = serde_json::to_string(&requested)
            .map_err(|e| Error::new(ErrorKind::Codec, "queue arguments").with_source(e))?;
        if let Some(expires) = queue.expires {
            let ms = u64::try_from(expires.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            self.expiring.lock().insert(queue.name.clone(), ms);
        } else {
            // Redeclared without an expiry: no stale TTL applies (as in kombu).
            self.expiring.lock().remove(&queue.name);
            self.expiring_bindings.lock().remove(&queue.name);
        }
        let mut conn = self.conn.clone();
        let (_, stored): (i64, String) = redis::pipe()
            .atomic()
            .hset_nx(self.options.queues_key(), &queue.name, &spec)
            .hget(self.options.queues_key(), &queue.name)
            .query_async(&mut conn)
            .await
            .map_err(self.err("declare queue"))?;
        if stored != spec {
            // What it was declared with, to name what differs (nothing named if unreadable).
            let has: Headers = serde_json::from_str(&stored).unwrap_or_default();
            return Err(Error::inequivalent_settings(
                format_args!("queue {:?}", queue.name),
                &has,
                &requested,
            ));
        }
        Ok(())
    }

    async fn delete_queue(&self, queue: &str) -> Result<u64> {
        let removed = self.purge(queue).await?;
        // Remove the queue from every binding table (kombu removes the ones it knows).
        let mut conn = self.conn.clone();
        let tables = self.binding_tables().await?;
        let _: i64 = conn
            .hdel(self.options.queues_key(), queue)
            .await
            .map_err(self.err("delete queue"))?;
        let sep = &self.options.sep;
        let table_prefix = self.options.binding_key("");
        self.expiring_bindings.lock().remove(queue);
        self.bound.lock().remove(queue);
        for chunk in tables.chunks(TABLES_PER_READ) {
            for (table, members) in self.read_tables(chunk).await? {
                let gone: Vec<&String> = members
                    .iter()
                    .filter(|m| member_queue(m, sep) == Some(queue))
                    .collect();
                if gone.is_empty() {
                    continue;
                }
                let exchange = table.strip_prefix(&table_prefix).unwrap_or_default();
                let _: () = redis::pipe()
                    .srem(&table, &gone)
                    .ignore()
                    .srem(self.options.binding_permanent_key(exchange), &gone)
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .map_err(self.err("unbind"))?;
            }
        }
        self.forget_topology();
        Ok(removed)
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool> {
        // A queue exists when kombu-rs recorded it, one of its lists (priority buckets) exists,
        // or it is bound in one of kombu's binding tables (a queue Python kombu or a Celery
        // worker declared, whose list does not exist while it is empty). One found bound is
        // taken to exist for BOUND_TTL without looking again (unless deleted through here).
        let seen = self.bound.lock().get(queue).copied();
        if seen.is_some_and(|at| at.elapsed() < BOUND_TTL) {
            return Ok(true);
        }
        let mut conn = self.conn.clone();
        let (declared, lists, exchanges): (bool, i64, Vec<Vec<u8>>) = redis::pipe()
            .hexists(self.options.queues_key(), queue)
            .cmd("EXISTS")
            .arg(self.options.list_keys(queue))
            .hkeys(self.options.exchanges_key())
            .query_async(&mut conn)
            .await
            .map_err(self.err("queue exists"))?;
        if declared || lists > 0 {
            return Ok(true);
        }
        let exchanges: Vec<String> = exchanges
            .into_iter()
            .filter_map(|x| String::from_utf8(x).ok())
            .collect();
        let bound = self.bound_anywhere(queue, &exchanges).await?;
        let mut seen = self.bound.lock();
        if bound {
            seen.insert(queue.to_owned(), Instant::now());
        } else {
            seen.remove(queue);
        }
        Ok(bound)
    }

    async fn bind(&self, row: &BindingRow) -> Result<()> {
        let kind = self
            .lookup_exchange(&row.exchange)
            .await?
            .map_or(ExchangeKind::Direct, |x| x.kind);
        let member = self.member(row, kind)?;
        let mut conn = self.conn.clone();
        let expires = self.expiring.lock().get(&row.queue).copied();
        match expires {
            Some(ms) => {
                // An expiring queue's table gets a deadline that its consumers push on.
                self.refresh_binding_table(&row.exchange, &member, ms)
                    .await?;
                let mut bindings = self.expiring_bindings.lock();
                let entry = bindings.entry(row.queue.clone()).or_default();
                let binding = (row.exchange.clone(), member);
                if !entry.0.contains(&binding) {
                    entry.0.push(binding);
                }
            }
            None => {
                let _: () = redis::pipe()
                    .sadd(self.options.binding_key(&row.exchange), &member)
                    .ignore()
                    .sadd(self.options.binding_permanent_key(&row.exchange), &member)
                    .ignore()
                    .query_async(&mut conn)
                    .await
                    .map_err(self.err("bind"))?;
            }
        }
        self.forget_topology();
        if kind == ExchangeKind::Fanout {
            self.subscribe_fanout(&row.queue, &row.exchange, &row.routing_key)
                .await?;
        }
        Ok(())
    }

    async fn unbind(&self, row: &BindingRow) -> Result<()> {
        let kind = self
            .lookup_exchange(&row.exchange)
            .await?
            .map_or(ExchangeKind::Direct, |x| x.kind);
        let member = self.member(row, kind)?;
        let mut conn = self.conn.clone();
        let _: () = redis::pipe()
            .srem(self.options.binding_key(&row.exchange), &member)
            .ignore()
            .srem(self.options.binding_permanent_key(&row.exchange), &member)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(self.err("unbind"))?;
        if let Some((bindings, _)) = self.expiring_bindings.lock().get_mut(&row.queue) {
            bindings.retain(|(x, m)| !(x == &row.exchange && m == &member));
        }
        self.forget_topology();
        Ok(())
    }

    async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
        if let Some(rows) = self.topology.bindings(exchange) {
            return Ok(rows);
        }
        let mut conn = self.conn.clone();
        let mut members: Vec<String> = conn
            .smembers(self.options.binding_key(exchange))
            .await
            .map_err(self.err("read bindings"))?;
        members.sort();
        let sep = &self.options.sep;
        let mut rows = Vec::with_capacity(members.len());
        for m in members {
            let mut parts = m.splitn(3, sep.as_str());
            let (Some(rk), Some(pattern), Some(queue)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let arguments: Headers = if pattern.starts_with('{') {
                serde_json::from_str(pattern).unwrap_or_default()
            } else {
                Headers::new()
            };
            rows.push(BindingRow {
                exchange: exchange.to_owned(),
                routing_key: rk.to_owned(),
                queue: queue.to_owned(),
                arguments,
            });
        }
        let rows: Arc<[BindingRow]> = rows.into();
        self.topology.put_bindings(exchange, rows.clone());
        Ok(rows)
    }

    async fn put(&self, queue: &str, envelope: Envelope) -> Result<Vec<DeadLetter>> {
        self.put_many(vec![(queue.to_owned(), envelope)]).await
    }

    async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
        let mut pipe = redis::pipe();
        for (queue, env) in &items {
            pipe.lpush(self.options.list_key(queue, priority_of(env)), payload(env))
                .ignore();
        }
        {
            let expiring = self.expiring.lock();
            if !expiring.is_empty() {
                let mut done = std::collections::HashSet::new();
                for (queue, _) in &items {
                    if let Some(ms) = expiring.get(queue)
                        && done.insert(queue.as_str())
                    {
                        for key in self.options.list_keys(queue) {
                            pipe.cmd("PEXPIRE").arg(key).arg(*ms).ignore();
                        }
                    }
                }
            }
        }
        let mut conn = self.conn.clone();
        let _: () = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("publish"))?;
        // This connection's idle consumers look at once; others' watchers see the push.
        self.wake.notify_waiters();
        Ok(Vec::new())
    }

    async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
        // Queued acks need not be written first: what they settle is in `unacked`, out of
        // every list, and the sweep below writes them before it restores anything.
        let mut fetched = Fetched::default();
        if self.fanout.is_fanout_queue(queue) {
            for body in self.fanout.take(queue, max.max(1)) {
                match envelope::decode(&body) {
                    Ok(env) => fetched.taken.push(Taken {
                        envelope: Arc::new(env),
                        receipt: Receipt::Key(format!(
                            "{FANOUT_RECEIPT}{}",
                            String::from_utf8_lossy(&body)
                        )),
                    }),
                    Err(err) => {
                        tracing::warn!(url = %self.label, %queue, error = %err, "unreadable fanout message dropped");
                    }
                }
            }
            if fetched.taken.len() >= max.max(1) {
                return Ok(fetched);
            }
        }
        let max = max.max(1) - fetched.taken.len();
        self.sweep().await?;
        let o = &self.options;
        let (lease, score) = match mode {
            TakeMode::NoAck => ("0", 0.0),
            TakeMode::Lease(timeout) => {
                let timeout = timeout.unwrap_or(o.visibility_timeout);
                // kombu's score is the delivery time; a lease of another length moves it so
                // that sweepers using the connection's timeout restore it when it ends.
                (
                    "1",
                    unix_now() + timeout.as_secs_f64() - o.visibility_timeout.as_secs_f64(),
                )
            }
        };
        let keys = o.list_keys(queue);
        let mut script = self.take.key(&o.unacked);
        script.key(&o.unacked_index);
        for k in &keys {
            script.key(k);
        }
        // Fields are `<token>:<n>`; the token is unique per take. Two UUIDs make every field
        // longer than Redis's `zset-max-listpack-value` (64 bytes), so `unacked_index` is a
        // skip list from its first entry: in the compact listpack form every insert scans the
        // set and parses each score, which made a take of 100 cost about 1 ms on the server.
        let token = format!(
            "{}{}:",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let suffix = format!(", \"\", {}]", serde_json::Value::from(queue));
        script
            .arg(max)
            .arg(score)
            .arg(lease)
            .arg(&token)
            .arg(&suffix);
        let mut conn = self.conn.clone();
        let raw: Vec<Vec<u8>> = script
            .invoke_async(&mut conn)
            .await
            .map_err(self.err("take"))?;
        // What was taken is in `unacked` now and must reach the consumer: the upkeep of an
        // expiring queue that follows is best effort (it is done again at the next take).
        let expires = self.expiring.lock().get(queue).copied();
        if let Some(ms) = expires {
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("PEXPIRE").arg(key).arg(ms).ignore();
            }
            let refreshed: redis::RedisResult<()> = pipe.query_async(&mut conn).await;
            if let Err(err) = refreshed {
                tracing::warn!(url = %self.label, %queue, error = %err, "queue expiry not refreshed");
            }
            if let Err(err) = self.binding_upkeep(queue, ms).await {
                tracing::warn!(url = %self.label, %queue, error = %err, "binding tables not kept up");
            }
        }
        fetched.taken.reserve(raw.len());
        let mut unreadable = Vec::new();
        for (n, body) in raw.iter().enumerate() {
            let field = format!("{token}{}", n + 1);
            match envelope::decode(body) {
                Ok(env) => fetched.taken.push(Taken {
                    envelope: Arc::new(env),
                    receipt: Receipt::Key(field),
                }),
                Err(err) => {
                    // Not a kombu envelope: nobody can consume it (kombu fails on it too).
                    // Dropped, so that it does not come back forever.
                    tracing::error!(url = %self.label, %queue, error = %err, body = %String::from_utf8_lossy(body), "unreadable message dropped");
                    unreadable.push(field);
                }
            }
        }
        if !unreadable.is_empty() && lease == "1" {
            self.acks.pending.lock().extend(unreadable);
            spawn_flusher(self.acks.clone());
        }
        Ok(fetched)
    }

    async fn ack(&self, _queue: &str, receipt: &Receipt) -> Result<()> {
        if is_fanout_receipt(receipt) {
            return Ok(()); // nothing in Redis to settle
        }
        let field = field_of(receipt)?;
        let queued = {
            let mut pending = self.acks.pending.lock();
            pending.push(field.to_owned());
            pending.len()
        };
        if queued >= 256 {
            // Keep the queue short under a flood of acks.
            return self.acks.flush().await;
        }
        spawn_flusher(self.acks.clone());
        Ok(())
    }

    /// Queues the ack for the background writer without waiting (the common case of `ack`).
    fn try_ack(&self, _queue: &str, receipt: &Receipt) -> Option<Result<()>> {
        if is_fanout_receipt(receipt) {
            return Some(Ok(())); // nothing in Redis to settle
        }
        let field = match field_of(receipt) {
            Ok(field) => field,
            Err(e) => return Some(Err(e)),
        };
        self.acks.pending.lock().push(field.to_owned());
        spawn_flusher(self.acks.clone());
        Some(Ok(()))
    }

    async fn reject(&self, queue: &str, receipt: &Receipt) -> Result<Option<DeadLetter>> {
        self.ack(queue, receipt).await?;
        Ok(None)
    }

    async fn restore(&self, queue: &str, receipt: &Receipt) -> Result<()> {
        self.acks.flush().await?;
        if let Receipt::Key(key) = receipt
            && let Some(body) = key.strip_prefix(FANOUT_RECEIPT)
        {
            // Back to the head of this process's buffer for the queue.
            let mut env = envelope::decode(body.as_bytes())?;
            env.redelivered = true;
            self.fanout
                .buffers
                .lock()
                .entry(queue.to_owned())
                .or_default()
                .push_front(payload(&env));
            self.wake.notify_waiters();
            return Ok(());
        }
        self.restore_tags(&[field_of(receipt)?.to_owned()], Some(queue), None)
            .await
    }

    async fn extend_lease(&self, _queue: &str, receipt: &Receipt, by: Duration) -> Result<()> {
        self.acks.flush().await?;
        if is_fanout_receipt(receipt) {
            return Ok(()); // held in this process, no lease to extend
        }
        let field = field_of(receipt)?;
        let o = &self.options;
        let score = unix_now() + by.as_secs_f64() - o.visibility_timeout.as_secs_f64();
        let mut conn = self.conn.clone();
        // XX: only a lease this take still holds (a restored message's field is gone).
        let _: i64 = redis::cmd("ZADD")
            .arg(&o.unacked_index)
            .arg("XX")
            .arg(score)
            .arg(field)
            .query_async(&mut conn)
            .await
            .map_err(self.err("extend lease"))?;
        Ok(())
    }

    async fn purge(&self, queue: &str) -> Result<u64> {
        self.acks.flush().await?;
        let keys = self.options.list_keys(queue);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for k in &keys {
            pipe.llen(k);
        }
        for k in &keys {
            pipe.del(k).ignore();
        }
        let mut conn = self.conn.clone();
        let lens: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("purge"))?;
        let buffered = self
            .fanout
            .buffers
            .lock()
            .get_mut(queue)
            .map_or(0, |b| std::mem::take(b).len());
        Ok(lens.iter().sum::<u64>() + buffered as u64)
    }

    async fn size(&self, queue: &str) -> Result<u64> {
        self.acks.flush().await?;
        let mut pipe = redis::pipe();
        for k in self.options.list_keys(queue) {
            pipe.llen(k);
        }
        let mut conn = self.conn.clone();
        let lens: Vec<u64> = pipe
            .query_async(&mut conn)
            .await
            .map_err(self.err("size"))?;
        Ok(lens.iter().sum::<u64>() + self.fanout.len(queue) as u64)
    }

    async fn flush(&self) -> Result<()> {
        self.acks.flush().await
    }

    fn native_fanout(&self) -> bool {
        true
    }

    async fn publish_fanout(&self, envelope: Envelope) -> Result<()> {
        let topic = self
            .options
            .fanout_topic(&envelope.exchange, &envelope.routing_key);
        let mut conn = self.conn.clone();
        let _: i64 = conn
            .publish(topic, payload(&envelope))
            .await
            .map_err(self.err("publish to a fanout exchange"))?;
        Ok(())
    }

    async fn wait(&self, queues: &[String], timeout: Duration) -> Result<()> {
        self.acks.flush().await?;
        let notified = self.wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.sweep().await?;
        if queues.iter().any(|q| self.fanout.len(q) > 0) {
            return Ok(());
        }
        let keys: Vec<String> = queues
            .iter()
            .filter(|q| !self.fanout.is_fanout_queue(q))
            .flat_map(|q| self.options.list_keys(q))
            .collect();
        if self.watchers.wait(&keys, timeout, &mut notified).await {
            return Ok(());
        }
        // No blocking wait possible: look every so often, backing off to `polling_interval`.
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(5);
        loop {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.llen(k);
            }
            let mut conn = self.conn.clone();
            let lens: Vec<u64> = pipe
                .query_async(&mut conn)
                .await
                .map_err(self.err("poll"))?;
            if lens.iter().any(|n| *n > 0) || queues.iter().any(|q| self.fanout.len(q) > 0) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::select! {
                _ = &mut notified => return Ok(()),
                _ = tokio::time::sleep(pause.min(left)) => {}
            }
            pause = (pause * 2).min(self.options.polling_interval.max(Duration::from_millis(5)));
            self.sweep().await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_are_kombus() {
        assert_eq!(topic_pattern("a.*.c"), r"^a\.[^\.]+\.c$");
        assert_eq!(topic_pattern("a.#"), r"^a\..*?$");
        assert_eq!(topic_pattern("usd-eur.x"), r"^usd\-eur\.x$");
    }

    #[test]
    fn priority_keys_follow_kombus_steps() -> Result<()> {
        let o = Options::from_url(&BrokerUrl::parse(
            "redis://localhost/3?global_keyprefix=p:",
        )?)?;
        assert_eq!(o.db, 3);
        assert_eq!(o.list_key("q", 0), "p:q");
        assert_eq!(o.list_key("q", 2), "p:q");
        assert_eq!(o.list_key("q", 5), "p:q\x06\x163");
        assert_eq!(o.list_key("q", 9), "p:q\x06\x169");
        assert_eq!(o.list_keys("q").len(), 4);
        assert_eq!(o.unacked, "p:unacked");
        assert_eq!(o.binding_key("x"), "p:_kombu.binding.x");
        Ok(())
    }

    #[test]
    fn urls() -> Result<()> {
        let o = Options::from_url(&BrokerUrl::parse("redis://u:p%40ss@h:6380/2")?)?;
        assert_eq!(o.client_url, "redis://u:p%40ss@h:6380/2");
        assert!(Options::from_url(&BrokerUrl::parse("redis://h/x")?).is_err());
        let o = Options::from_url(&BrokerUrl::parse(
            "redis://h?priority_steps=0,5&visibility_timeout=2",
        )?)?;
        assert_eq!(o.priority_steps, [0, 5]);
        assert_eq!(o.visibility_timeout, Duration::from_secs(2));
        // Unix sockets: credentials only before the path; an `@` inside the path is the path's.
        let o = Options::from_url(&BrokerUrl::parse("unix:///run/app@1/redis.sock")?)?;
        assert_eq!(o.client_url, "redis+unix:///run/app@1/redis.sock?db=0");
        let o = Options::from_url(&BrokerUrl::parse("unix://u:p%40ss@/tmp/r.sock?db=2")?)?;
        assert_eq!(
            o.client_url,
            "redis+unix:///tmp/r.sock?db=2&user=u&pass=p%40ss"
        );
        assert_eq!(o.db, 2);
        Ok(())
    }

    #[test]
    fn a_restored_entry_keeps_what_python_wrote() {
        // Python kombu's entry for a message with NaN and Infinity in its headers and a lone
        // surrogate; strings with braces, quotes and the key names in them.
        let stored = r#"[{"body": "eyJ4IjogTmFOfQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"score": NaN, "hi": Infinity, "lo": -Infinity, "who": "a\ud800b", "odd": "}{\"redelivered\": false"}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q"}, "priority": 0, "body_encoding": "base64", "delivery_tag": "t-1"}}, "", "q"]"#;
        let restored = restored_envelope(stored).expect("an unacked entry");
        assert_eq!(
            restored,
            r#"{"body": "eyJ4IjogTmFOfQ==", "content-encoding": "utf-8", "content-type": "application/json", "headers": {"score": NaN, "hi": Infinity, "lo": -Infinity, "who": "a\ud800b", "odd": "}{\"redelivered\": false", "redelivered": true}, "properties": {"delivery_mode": 2, "delivery_info": {"exchange": "", "routing_key": "q", "redelivered": true}, "priority": 0, "body_encoding": "base64", "delivery_tag": "t-1"}}"#
        );
        let env = envelope::decode(restored.as_bytes()).expect("decode");
        assert!(env.redelivered);
        assert!(matches!(env.message.headers["score"], kombu_core::Value::Float(f) if f.is_nan()));

        // A marker already there is set, not repeated; empty objects get one; an envelope
        // without headers or delivery_info is marked on its own.
        let stored = r#"[ {"body": "x", "headers": {"redelivered": false}, "properties": {"delivery_info": {}}} , "ex", "rk"]"#;
        assert_eq!(
            restored_envelope(stored).as_deref(),
            Some(
                r#"{"body": "x", "headers": {"redelivered": true}, "properties": {"delivery_info": {"redelivered": true}}}"#
            )
        );
        assert_eq!(
            restored_envelope(r#"[{"body": "x"}, "", "q"]"#).as_deref(),
            Some(r#"{"body": "x", "redelivered": true}"#)
        );
        for bad in ["", "{}", "[1, 2]", r#"[{"body": "x""#, r#"[{"body" "x"}]"#] {
            assert_eq!(restored_envelope(bad), None, "{bad}");
        }
    }
}
