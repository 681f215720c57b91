//! The command line: every command, argument and example.

use clap::{Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

/// Publish, consume, inspect and move messages on any broker kombu-rs speaks.
#[derive(Debug, Parser)]
#[command(
    name = "kombu",
    version,
    propagate_version = true,
    after_help = "\
The broker is --url, else $KOMBU_URL, else sqlite://kombu.db (a file in the current directory;
stderr says so). URLs: sqlite:///absolute/path.db, sqlite://relative.db, redis://host:6379/0,
amqp://user:password@host:5672//, mongodb://host:27017/database, memory:// (lives only as
long as one command).
Errors are one line on stderr (--verbose: every cause and a backtrace). The library's warnings
go to stderr too; RUST_LOG filters them (default: kombu's warnings and errors; RUST_LOG=debug
for more, RUST_LOG=off for none).

Examples:
  kombu --url sqlite:///tmp/q.db publish --routing-key jobs --declare-queue jobs '{\"id\": 1}'
  kombu --url sqlite:///tmp/q.db consume --queue jobs --count 1
  kombu --url sqlite:///tmp/q.db size jobs"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Broker URL (default: $KOMBU_URL, else sqlite://kombu.db). `bench` takes it several times.
    #[arg(long = "url", value_name = "URL", global = true)]
    pub urls: Vec<String>,
    /// On error, print every cause and a backtrace instead of one line (RUST_BACKTRACE alone
    /// does not).
    #[arg(long, short, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages (BODY, else stdin).
    #[command(after_help = "\
Examples:
  kombu publish --routing-key jobs --declare-queue jobs '{\"id\": 1}'
  kombu publish --exchange logs --exchange-type topic --routing-key app.error '\"disk full\"'
  seq 1 100 | kombu publish --routing-key numbers --declare-queue numbers --lines
  kombu publish --routing-key blobs --serializer raw --compression zstd < image.png

On the default exchange (no --exchange) the routing key names the queue, whether kombu-rs,
Python kombu or a Celery worker declared it. When no queue of that name exists anywhere, Redis
and SQLite store the message under that name all the same, as Python kombu does (it waits for
whoever consumes that queue), and a warning on stderr says so: there a typo makes a new queue.
RabbitMQ and memory:// would drop the message, so there it is an error. --mandatory makes it an
error everywhere (and, with --exchange, a message that no bound queue takes is an error rather
than dropped). --declare-queue or `kombu declare queue` creates the queue first.

Entities are durable unless --transient, as kombu declares them. --exchange without
--exchange-type uses an existing exchange as it is (whatever its type and durability: it is not
declared again, and --transient then only warns) and declares a missing one as a direct
exchange; with --exchange-type it must have that type.

Messages are sent in batches (one broker round trip for many messages where the transport allows
it). Every publish returns once the broker has the message: confirmed where the broker confirms,
committed to the store for SQLite and memory. --confirm says so in the summary.")]
    Publish(PublishArgs),
    /// Consume messages and print them.
    #[command(after_help = "\
Examples:
  kombu consume --queue jobs --count 10 --timeout 5
  kombu consume --queue jobs --queue other --format pretty
  kombu consume --queue jobs --requeue --count 1     # peek: the message stays in the queue
  kombu consume --queue blobs --count 1 --format raw > blob.bin
  kombu consume --queue celery --accept pickle --count 1

A queue that does not exist is an error (nothing is created) unless --declare is given.
Accepted by default: json, msgpack, yaml, text and raw (and untyped bytes); pickle only when
named in --accept. With --requeue, only --count messages are taken from the queue, so no other
message is marked redelivered.

--format raw and base64 print the body after decompression without decoding it, so they show
any message whatever its serializer. In --format json, bytes inside a decoded body (msgpack
bin, kombu's {\"__type__\": \"bytes\"} JSON tags, pickle bytes) are shown as base64 text,
numbers JSON has no room for (Python's NaN, Infinity, -Infinity) as null, and
properties.priority is a number on every transport (0 when the message has none).

A message that cannot be printed (its serializer is not accepted, its body does not decode,
its compression is truncated or decompresses past --max-size) is never put back at the head of
its queue to block it. --on-error says what happens to it:
  dead-letter  (default) it goes to its dead-letter queue, QUEUE.dlq (declared on first use),
               with headers saying why (x-kombu-dead-reason) and where it came from; stderr
               says so in one line, and the next message is consumed.
               `kombu dlq list QUEUE` shows them, `kombu dlq replay QUEUE` puts them back.
  requeue      it goes back to the end of its queue for another try, the tries counted in its
               x-kombu-redeliveries header; after --max-redeliveries tries it is dead-lettered.
  stop         it stays in its queue and consume exits 1.
--count counts the messages printed, not the ones dead-lettered or requeued. An entry that
Redis or SQLite cannot read as a message at all was already moved to QUEUE.dlq by the transport;
stderr says so the same way. kombu consume cannot see a queue's x-dead-letter-exchange: give it
with --dead-letter-exchange to dead-letter there (and `kombu dlq list QUEUE --dlq Q` to read the
queue Q bound to it).

With --no-ack the broker removed each message when it was delivered: a dead-lettered or
requeued one is a copy published again, and if that fails the message is gone.

With --requeue (a peek) nothing is dead-lettered or requeued: a message that cannot be printed
is left where it was, stderr says why, and it is not counted in --count. (An entry Redis or
SQLite cannot read at all is moved to QUEUE.dlq by the transport whenever it is taken, a peek
too; a warning on stderr says so.)

Stopping: SIGINT (Ctrl-C) or SIGTERM stops consume once the message in hand is printed and
acked; the messages it had taken and not printed (its prefetch) go back to their queue at once,
and nothing is lost. A second signal exits at once (130, or 143 for SIGTERM): what was taken
then returns when the broker sees the connection gone, or when its visibility timeout passes.

A broker restart does not end consume: stderr says when the connection is lost, while it
reconnects, and when it is back, and consuming goes on (a broker away for more than about 30
seconds is an error). An ack the broker can no longer apply, because the connection it was
delivered on was lost, is a warning on stderr: the broker delivers that message again, so it
may be printed twice.

Exit status:
  0    --count messages were printed, none dead-lettered; or stopped by SIGTERM
  3    --timeout seconds passed without a message (before --count were printed)
  4    as 0, but at least one message was dead-lettered (stderr says which)
  1    any error, and --on-error stop on a message that cannot be printed
  130  stopped by SIGINT (Ctrl-C)
  130, 143  a second SIGINT or SIGTERM: exited at once
3 wins over 4: a run that timed out exits 3 even if it dead-lettered messages.")]
    Consume(ConsumeArgs),
    /// Declare an exchange or a queue.
    #[command(after_help = "\
Examples:
  kombu declare exchange logs --type topic
  kombu declare queue errors --exchange logs --routing-key '*.error'
  kombu declare queue scratch --transient

Exchanges and queues are durable (they survive a broker restart), as kombu declares them, unless
--transient is given; `kombu publish` declares them the same way.")]
    Declare(DeclareArgs),
    /// Bind a queue to an exchange.
    #[command(after_help = "\
Examples:
  kombu bind errors logs --routing-key 'app.error'
  kombu bind urgent alerts --header level=high --header team=ops --match any")]
    Bind(BindArgs),
    /// Remove a binding (same arguments as `bind`).
    #[command(after_help = "\
Examples:
  kombu unbind errors logs --routing-key 'app.error'")]
    Unbind(BindArgs),
    /// Print the number of ready messages in a queue.
    #[command(after_help = "\
Example:
  kombu size jobs

A queue that exists nowhere is an error (exit 1) on every transport, not 0: on Redis a queue
exists when kombu-rs or Python kombu declared it, bound it, or it holds messages.")]
    Size(QueueArg),
    /// Remove every ready message from a queue; print how many.
    #[command(after_help = "Example:\n  kombu purge jobs")]
    Purge(QueueArg),
    /// Delete a queue or an exchange.
    #[command(after_help = "\
Examples:
  kombu delete queue jobs
  kombu delete exchange logs")]
    Delete(DeleteArgs),
    /// Move messages from a queue of one broker to another, losing none.
    #[command(after_help = "\
Examples:
  kombu move --from sqlite:///old.db --to sqlite:///new.db --queue jobs
  kombu move --from sqlite:///a.db --to sqlite:///b.db --queue jobs --to-exchange logs --to-routing-key app.info

Each message is acknowledged on the source only after the destination has it (the publish
returned: confirmed or committed), so a crash midway may duplicate messages but never loses one.
Bodies, content type and encoding, headers and properties are copied byte for byte. Without
--to-exchange the messages go to the queue of the same name on the destination (declared first).
A source queue that does not exist is an error.

A broker restart on either side does not end the move: stderr says when a connection is lost
and when it is back, the messages in hand go back to the source, and the move goes on (a broker
away for more than about 30 seconds is an error). Messages whose ack the source can no longer
apply (the connection they were taken on was lost) are delivered again, and moved twice.

SIGINT (Ctrl-C) or SIGTERM stops the move once the messages in hand are on the destination and
acked on the source; it exits 130 after SIGINT, 0 after SIGTERM. A second signal exits at once
(130 or 143): the messages in hand then return to the source queue when the broker sees the
connection gone, or when their visibility timeout passes.")]
    Move(MoveArgs),
    /// Inspect and replay the dead letters of a queue.
    #[command(after_help = "\
Examples:
  kombu dlq list jobs
  kombu dlq list jobs --format json --count 10
  kombu dlq replay jobs
  kombu dlq replay jobs --count 1

Dead letters are the messages `kombu consume` (or any kombu-rs consumer) could not read, and the
entries Redis or SQLite could not read at all: they are kept in the queue QUEUE.dlq, with headers
saying why (x-kombu-dead-reason) and where they came from (x-kombu-original-queue,
x-kombu-original-exchange, x-kombu-original-routing-key; x-kombu-transport for unreadable
entries). A queue declared with a dead-letter exchange sends its dead letters there instead:
give the queue bound to that exchange with --dlq.")]
    Dlq(DlqArgs),
    /// Measure publish and consume throughput and latency.
    #[command(after_help = "\
Examples:
  kombu bench --url memory:// --url sqlite:///tmp/bench.db --messages 10000
  kombu bench --url sqlite:///tmp/bench.db --producers 4 --consumers 4 --batch 100 --json

For each URL: publish --messages messages to a fresh queue, then consume and ack them all; the
queue is deleted afterwards. Publish latency is per publish call (one message, or one batch with
--batch), from the call until it returns: until the broker confirmed it where it confirms (AMQP
unless the URL says confirm_publish=false), stored for Redis, committed for SQLite. Consume
latency is per delivery: from asking for the next message until it is decoded and acked.
--json prints one JSON object per URL, one per line.")]
    Bench(BenchArgs),
    /// Celery: send tasks, read results, inspect and control workers, watch events, run a beat.
    Celery(crate::celery::CeleryArgs),
    /// Watch Celery workers and tasks: Flower's HTTP API over a task history kept in SQLite.
    #[command(after_help = "\
Examples:
  kombu --url redis://localhost:6379/0 monitor
  kombu --url amqp://guest:guest@localhost// monitor --listen 127.0.0.1:5555 --db monitor.db
  curl -s 127.0.0.1:5555/api/tasks?state=FAILURE
  KOMBU_MONITOR_AUTH=ops:secret kombu monitor --listen 0.0.0.0:5555 --read-only

It listens to the workers' events (start workers with -E, or send them `kombu celery control
enable_events`) and asks them for their state by remote control, Python and Rust workers alike.
Served so far, with Flower's paths, parameters and JSON: /api/tasks (with ?search=),
/api/task/info/ID, /api/task/types, /api/workers, /healthcheck, the worker controls
(/api/worker/...), revoke, rate-limit, timeout, send-task, async-apply, /api/task/result/ID
(with --backend), /api/queues/length (every transport) and /metrics (Flower's metrics and the
queues' lengths). --db keeps the history across restarts (default: in memory); it holds at most
--max-tasks tasks, none older than --max-age. Without --auth or --token it listens on loopback
only; --read-only refuses every steering call.")]
    Monitor(crate::monitor::MonitorArgs),
    /// Print a shell completion script.
    #[command(after_help = "\
Examples:
  kombu completions bash > ~/.local/share/bash-completion/completions/kombu
  kombu completions zsh > ~/.zfunc/_kombu
  kombu completions fish > ~/.config/fish/completions/kombu.fish")]
    Completions(CompletionsArgs),
}

/// Exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExchangeType {
    Direct,
    Topic,
    Fanout,
    Headers,
}

impl From<ExchangeType> for kombu::ExchangeKind {
    fn from(t: ExchangeType) -> Self {
        match t {
            ExchangeType::Direct => kombu::ExchangeKind::Direct,
            ExchangeType::Topic => kombu::ExchangeKind::Topic,
            ExchangeType::Fanout => kombu::ExchangeKind::Fanout,
            ExchangeType::Headers => kombu::ExchangeKind::Headers,
        }
    }
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Exchange to publish to ("" = the default exchange: the routing key names the queue).
    #[arg(long, default_value = "")]
    pub exchange: String,
    /// Type of --exchange: declared with this type (an error if it exists with another).
    /// Without it, an existing exchange is used as it is and a missing one is declared direct.
    #[arg(long, value_enum, requires = "exchange")]
    pub exchange_type: Option<ExchangeType>,
    /// Routing key.
    #[arg(long, default_value = "")]
    pub routing_key: String,
    /// Serializer: json, msgpack, yaml (BODY is JSON text), raw or text (BODY as given).
    #[arg(long, default_value = "json")]
    pub serializer: String,
    /// Compression: zlib, bzip2, lzma, brotli or zstd.
    #[arg(long)]
    pub compression: Option<String>,
    /// Message priority (queues declared with --max-priority).
    #[arg(long)]
    pub priority: Option<u8>,
    /// Header K=V (V is JSON when it parses as JSON, else a string); repeatable.
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// Per-message time to live in milliseconds.
    #[arg(long, value_name = "MS")]
    pub expiration: Option<u64>,
    /// Correlation id.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Reply-to queue.
    #[arg(long, value_name = "QUEUE")]
    pub reply_to: Option<String>,
    /// Declare this queue first, bound to --exchange with --binding-key.
    #[arg(long, value_name = "QUEUE")]
    pub declare_queue: Option<String>,
    /// Binding key for --declare-queue (default: --routing-key).
    #[arg(long, value_name = "KEY", requires = "declare_queue")]
    pub binding_key: Option<String>,
    /// Publish the body (or every line) this many times.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Every input line is one message (empty lines are skipped).
    #[arg(long)]
    pub lines: bool,
    /// Wait for the broker's confirmation (every publish already does; see below).
    #[arg(long)]
    pub confirm: bool,
    /// Fail when no queue takes the message (on the default exchange: when no queue has the
    /// routing key's name) instead of storing it for a queue to come, or dropping it.
    #[arg(long)]
    pub mandatory: bool,
    /// Declare --exchange and --declare-queue non-durable (default: durable, as kombu); an
    /// existing exchange is used as it is.
    #[arg(long)]
    pub transient: bool,
    /// The message body; stdin when absent.
    pub body: Option<String>,
}

/// Output formats of `consume`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
    /// The body alone, one per line.
    Body,
    /// The body's bytes after decompression, exactly, nothing between messages (not decoded;
    /// no accept list).
    Raw,
    /// The body after decompression as base64, one per line (not decoded; no accept list).
    Base64,
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Queue to consume from; repeatable.
    #[arg(long = "queue", value_name = "QUEUE", required = true)]
    pub queues: Vec<String>,
    /// Stop after printing this many messages (exit 0, or 4 if some were dead-lettered).
    #[arg(long)]
    pub count: Option<u64>,
    /// Give up when this many seconds pass without a message (exit 3).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<f64>,
    /// Messages are removed as they are delivered (at most once).
    #[arg(long, conflicts_with = "requeue")]
    pub no_ack: bool,
    /// Return the messages to the queue instead of acking them (peek); takes only --count
    /// messages from the queue, and dead-letters none (one it cannot print stays where it was).
    #[arg(long)]
    pub requeue: bool,
    /// Most unacknowledged messages held at once.
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Accepted serializers by name or content type; repeatable (default: json, msgpack, yaml,
    /// text, raw; pickle only when named).
    #[arg(long = "accept", value_name = "NAME")]
    pub accept: Vec<String>,
    /// Create the queues that do not exist (else a missing queue is an error).
    #[arg(long)]
    pub declare: bool,
    /// Largest body decompression may produce, in bytes.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = kombu::serializers::DEFAULT_MAX_DECOMPRESSED_SIZE
    )]
    pub max_size: usize,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub format: Format,
    /// What to do with a message that cannot be printed (not accepted, does not decode).
    #[arg(long, value_enum, default_value = "dead-letter")]
    pub on_error: OnError,
    /// With --on-error requeue: tries before a message is dead-lettered.
    #[arg(long, value_name = "N", default_value_t = kombu::DEFAULT_MAX_REDELIVERIES)]
    pub max_redeliveries: u32,
    /// Dead-letter to this exchange (the queues' x-dead-letter-exchange) instead of QUEUE.dlq;
    /// QUEUE.dlq all the same when no queue is bound there.
    #[arg(long, value_name = "E")]
    pub dead_letter_exchange: Option<String>,
    /// Routing key of dead letters sent to --dead-letter-exchange (default: the message's own).
    #[arg(long, value_name = "K", requires = "dead_letter_exchange")]
    pub dead_letter_routing_key: Option<String>,
}

/// `consume --on-error`: what happens to a message that cannot be printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnError {
    /// Move it to its dead-letter queue (QUEUE.dlq) and go on.
    DeadLetter,
    /// Put it at the end of its queue, up to --max-redeliveries tries, then dead-letter it.
    Requeue,
    /// Leave it in its queue and exit 1.
    Stop,
}

impl From<OnError> for kombu::ErrorAction {
    fn from(o: OnError) -> Self {
        match o {
            OnError::DeadLetter => kombu::ErrorAction::DeadLetter,
            OnError::Requeue => kombu::ErrorAction::Requeue,
            OnError::Stop => kombu::ErrorAction::Stop,
        }
    }
}

#[derive(Debug, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub what: DlqCommand,
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print the dead letters of a queue without removing them.
    #[command(after_help = "\
Examples:
  kombu dlq list jobs
  kombu dlq list jobs --format json | jq .reason

One line per dead letter (--format json: one JSON object), oldest first: why it was
dead-lettered, the queue, exchange and routing key it came from, its content type and encoding,
its size in bytes, and its body shown as `kombu consume` shows bodies when it decodes (with the
--accept list), else as base64 (--format json: body_base64, and body_error says why it does not
decode). A line shows the first 200 characters of a body; --format json all of it. The messages stay in the
dead-letter queue, in their order (on RabbitMQ and Redis they are marked redelivered).")]
    List(DlqListArgs),
    /// Move dead letters back to their queue.
    #[command(after_help = "\
Examples:
  kombu dlq replay jobs
  kombu dlq replay jobs --count 10

Each dead letter, oldest first, is published to QUEUE through the default exchange (routing key
QUEUE), not to its original exchange, which might deliver it to other queues bound there too.
Its body, content type and encoding, properties and headers go back byte for byte, without the
x-kombu-* headers dead-lettering added (x-kombu-dead-reason, x-kombu-original-*,
x-kombu-transport, x-kombu-redeliveries), so it gets its tries afresh. It is removed from the
dead-letter queue only once QUEUE has it: a crash may duplicate a message, never lose it.
An entry Redis or SQLite could not read at all (it has x-kombu-transport) is not a message to
replay: it is skipped and stays in the dead-letter queue (stderr says so). Prints how many
messages were moved. QUEUE must exist.")]
    Replay(DlqReplayArgs),
}

/// Output formats of `dlq list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DlqFormat {
    /// One line per dead letter.
    Line,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Args)]
pub struct DlqListArgs {
    /// The queue whose dead letters to show.
    pub queue: String,
    /// The dead-letter queue to read (default: QUEUE.dlq), e.g. the queue bound to QUEUE's
    /// dead-letter exchange.
    #[arg(long, value_name = "QUEUE")]
    pub dlq: Option<String>,
    /// Show at most this many.
    #[arg(long)]
    pub count: Option<u64>,
    /// Serializers whose bodies are decoded; repeatable (default as `consume`).
    #[arg(long = "accept", value_name = "NAME")]
    pub accept: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "line")]
    pub format: DlqFormat,
}

#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// The queue to move the dead letters back to.
    pub queue: String,
    /// The dead-letter queue to take them from (default: QUEUE.dlq).
    #[arg(long, value_name = "QUEUE")]
    pub dlq: Option<String>,
    /// Move at most this many.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct DeclareArgs {
    #[command(subcommand)]
    pub what: DeclareWhat,
}

#[derive(Debug, Subcommand)]
pub enum DeclareWhat {
    /// Declare an exchange.
    #[command(after_help = "Example:\n  kombu declare exchange logs --type topic")]
    Exchange {
        /// Exchange name.
        name: String,
        /// Exchange type.
        #[arg(long = "type", value_enum)]
        kind: ExchangeType,
        /// Does not survive a broker restart (default: durable, as kombu declares exchanges).
        #[arg(long)]
        transient: bool,
        /// Deleted when its last binding goes.
        #[arg(long)]
        auto_delete: bool,
    },
    /// Declare a queue (and its binding to --exchange).
    #[command(after_help = "\
Examples:
  kombu declare queue jobs
  kombu declare queue errors --exchange logs --routing-key '*.error'
  kombu declare queue urgent --max-priority 9 --dead-letter-exchange dlx")]
    Queue(DeclareQueueArgs),
}

#[derive(Debug, Args)]
pub struct DeclareQueueArgs {
    /// Queue name.
    pub name: String,
    /// Bind the queue to this (existing) exchange.
    #[arg(long)]
    pub exchange: Option<String>,
    /// Binding key for --exchange.
    #[arg(long, default_value = "")]
    pub routing_key: String,
    /// Highest priority honoured (x-max-priority).
    #[arg(long, value_name = "N")]
    pub max_priority: Option<u8>,
    /// Message time to live in the queue, milliseconds (x-message-ttl).
    #[arg(long, value_name = "MS")]
    pub message_ttl: Option<u64>,
    /// Delete the queue after it is unused this long, milliseconds (x-expires).
    #[arg(long, value_name = "MS")]
    pub expires: Option<u64>,
    /// At most this many ready messages (x-max-length).
    #[arg(long, value_name = "N")]
    pub max_length: Option<u64>,
    /// Dead-letter exchange (x-dead-letter-exchange).
    #[arg(long, value_name = "E")]
    pub dead_letter_exchange: Option<String>,
    /// Dead-letter routing key (x-dead-letter-routing-key).
    #[arg(long, value_name = "K")]
    pub dead_letter_routing_key: Option<String>,
    /// Does not survive a broker restart (default: durable, as kombu declares queues).
    #[arg(long)]
    pub transient: bool,
}

/// Header matching of a headers-exchange binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MatchMode {
    All,
    Any,
}

#[derive(Debug, Args)]
pub struct BindArgs {
    /// The queue.
    pub queue: String,
    /// The exchange.
    pub exchange: String,
    /// Binding key (direct and topic exchanges).
    #[arg(long, default_value = "")]
    pub routing_key: String,
    /// Header K=V to match (headers exchanges); repeatable.
    #[arg(long = "header", value_name = "K=V")]
    pub headers: Vec<String>,
    /// Whether all or any of the headers must match.
    #[arg(long = "match", value_enum, default_value = "all")]
    pub match_mode: MatchMode,
}

#[derive(Debug, Args)]
pub struct QueueArg {
    /// Queue name.
    pub queue: String,
}

/// What `delete` deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EntityKind {
    Queue,
    Exchange,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// queue or exchange.
    #[arg(value_enum)]
    pub kind: EntityKind,
    /// Its name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    /// Source broker URL.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// Destination broker URL.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Source queue (it must exist).
    #[arg(long)]
    pub queue: String,
    /// Destination exchange (default: the default exchange, to the queue of the same name).
    #[arg(long, value_name = "E")]
    pub to_exchange: Option<String>,
    /// Destination routing key (default: the queue name without --to-exchange, else the
    /// message's own routing key).
    #[arg(long, value_name = "K")]
    pub to_routing_key: Option<String>,
    /// Move at most this many messages.
    #[arg(long)]
    pub count: Option<u64>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Messages per URL.
    #[arg(long, default_value_t = 10_000)]
    pub messages: u64,
    /// Body size in bytes (before serialization).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 1)]
    pub producers: u32,
    /// Concurrent consumers.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// Consumer prefetch.
    #[arg(long, default_value_t = 100)]
    pub prefetch: u16,
    /// Messages per publish call.
    #[arg(long, default_value_t = 1)]
    pub batch: u32,
    /// Serializer.
    #[arg(long, default_value = "json")]
    pub serializer: String,
    /// Compression.
    #[arg(long)]
    pub compression: Option<String>,
    /// Print JSON lines (one object per URL) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
