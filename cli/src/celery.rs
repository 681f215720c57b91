//! `kombu celery call` and `kombu celery result`: send a Celery task and read its result;
//! `inspect`, `control` and `events` are in [`crate::celery_ops`].

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use kombu::celery::backend::{
    RedisResultBackend, ResultBackend, RpcResultBackend, SqlResultBackend,
};
use kombu::celery::{Celery, ResultMeta, State, TaskOptions};
use serde_json::{Map, Value as Json};

use crate::Outcome;
use crate::cli::Global;
use crate::common::{connect, mask, url};

/// `kombu celery ...`.
#[derive(Debug, Args)]
pub struct CeleryArgs {
    #[command(subcommand)]
    pub command: CeleryCommand,
}

/// The Celery commands.
#[derive(Debug, Subcommand)]
pub enum CeleryCommand {
    /// Send a task to Celery workers (Python's or Rust's); print its id.
    #[command(after_help = "\
Examples:
  kombu --url redis://localhost:6379/0 celery call tasks.add --args '[2, 3]'
  kombu celery call tasks.add --args '[2, 3]' --backend redis://localhost:6379/1 --wait 10
  kombu celery call reports.daily --kwargs '{\"day\": \"mon\"}' --queue reports --countdown 60

The message is Celery's task protocol 2, routed as Celery routes a task: to the default
exchange with the queue's name (default celery) as routing key, the queue declared first.
With --wait the result is printed as JSON on the last line of stdout. Exit status: 0 on
SUCCESS; 1 on FAILURE, REVOKED or another final state that is not a success (the state, the
exception's type and message on stderr); 3 when the wait ends first.
Result backends: redis:// (Celery's; ?global_keyprefix=... as its transport option), rpc://
(the results come to a reply queue of this command's; the default with --wait on AMQP) and
db+sqlite:///relative.db or db+sqlite:////absolute.db (Celery's SQL tables).")]
    Call(CallArgs),
    /// Print the result of a task (exit status as `call --wait`).
    #[command(after_help = "\
Examples:
  kombu celery result 1c9b6c1e-... --backend redis://localhost:6379/1
  kombu celery result 1c9b6c1e-... --backend redis://localhost:6379/1 --wait 30

Without --wait a task not finished yet prints its state on stderr and exits 3.")]
    Result(ResultArgs),
    /// Ask workers (Python's or Rust's) about themselves: Celery's `inspect`.
    #[command(after_help = "\
Examples:
  kombu --url redis://localhost:6379/0 celery inspect ping
  kombu celery inspect stats --destination celery@web1
  kombu celery inspect active --timeout 3
  kombu celery inspect registered rate_limit
  kombu celery inspect query_task 1c9b6c1e-...

Commands: ping, stats, active, reserved, scheduled, revoked, registered, active_queues, conf,
clock, query_task, report (and any other a worker knows, its keyword arguments with --kwargs).
Prints one JSON object {node: reply, ...} on stdout once no reply came for --timeout seconds
(or every --destination replied). Exit status: 0 if a node replied, 3 if none did. Works on
Redis and RabbitMQ (Celery's broadcast needs a fanout exchange), and on every transport between
kombu-rs workers and clients.")]
    Inspect(crate::celery_ops::RemoteArgs),
    /// Tell workers (Python's or Rust's) to change: Celery's `control`.
    #[command(after_help = "\
Examples:
  kombu --url redis://localhost:6379/0 celery control revoke 1c9b6c1e-... 7d2e...
  kombu celery control terminate SIGTERM 1c9b6c1e-...
  kombu celery control rate_limit tasks.add 10/m
  kombu celery control time_limit tasks.sleep 10 20
  kombu celery control add_consumer reports --destination celery@web1
  kombu celery control cancel_consumer reports
  kombu celery control pool_grow 2
  kombu celery control autoscale 10 3
  kombu celery control enable_events
  kombu celery control shutdown --destination celery@web1

Commands: revoke ID..., terminate SIGNAL ID..., rate_limit TASK RATE, time_limit TASK SOFT
HARD, add_consumer QUEUE [EXCHANGE [TYPE [ROUTING-KEY]]], cancel_consumer QUEUE, pool_grow
[N], pool_shrink [N], autoscale MAX MIN, enable_events, disable_events, heartbeat, shutdown.
Prints {node: reply, ...} as inspect does, with the same exit status; shutdown asks for no
reply (a stopping worker sends none): it prints {} and exits 0 once sent.")]
    Control(crate::celery_ops::RemoteArgs),
    /// Print the events workers and clients send, one JSON object a line.
    #[command(after_help = "\
Examples:
  kombu --url redis://localhost:6379/0 celery events
  kombu celery events --count 10 --routing-key 'worker.#'
  kombu celery events | jq 'select(.type == \"task-failed\")'

Workers send worker-online, worker-heartbeat (every 2 s) and worker-offline, and with task
events on (celery worker -E, or `kombu celery control enable_events`) task-received,
-started, -succeeded, -failed, -retried, -revoked and -rejected; clients send task-sent when
asked. Runs until --count events were printed (exit 0) or until interrupted (Ctrl-C: 130,
SIGTERM: 0). Like Celery's, its queue drops what it holds for 5 s, so a monitor that lags
loses old events rather than building a backlog.")]
    Events(crate::celery_ops::EventsArgs),
    /// Send tasks on a schedule (interval, crontab, solar), as celery beat does, without its
    /// known faults.
    #[command(after_help = "\
Examples:
  kombu --url redis://localhost:6379/0 celery beat --schedule beat.toml
  kombu celery beat --schedule beat.toml --state /var/lib/beat/state.db

A schedule file:
  [beat]
  name = \"default\"            # beats of one name share a lease and their runs
  timezone = \"Europe/Oslo\"    # the entries' default zone (default UTC)

  [[entry]]
  name = \"nightly-report\"
  task = \"reports.nightly\"
  crontab = \"30 2 * * *\"      # or: every = \"10s\"; or: solar = \"sunset\", lat = 59.9, lon = 10.7
  timezone = \"Europe/Oslo\"
  args = [16, 16]
  kwargs = { format = \"pdf\" }
  queue = \"reports\"
  expires = 3600                # seconds after it was due
  catch_up = \"once\"           # missed runs: the latest once (default), or \"skip\"

The lease and the runs live on the broker when it is Redis, RabbitMQ, MongoDB or SQLite (beats
sharing it share the lease), else in <schedule>.state.db beside the schedule (--state to choose).
Each run is recorded before it is sent, under a task id made from the entry and the time it
was due, so a beat that stops in between sends it (same id) when it resumes, and a run sent
is never sent again. Only the beat holding the lease sends; the others wait to take over where
it stopped. Crontabs follow daylight saving: a 02:30 job runs once on the night 02:00 becomes
03:00 (at 03:30), an hourly job runs every hour once across the night clocks go back. Each
run sent is printed as a JSON line; the log goes to stderr. Runs until SIGINT (130) or
SIGTERM (0).")]
    Beat(crate::celery_ops::BeatArgs),
}

/// `kombu celery call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The task's registered name (tasks.add).
    pub name: String,
    /// Positional arguments, a JSON array.
    #[arg(long, value_name = "JSON-ARRAY", default_value = "[]")]
    pub args: String,
    /// Keyword arguments, a JSON object.
    #[arg(long, value_name = "JSON-OBJECT", default_value = "{}")]
    pub kwargs: String,
    /// The queue (default celery).
    #[arg(long)]
    pub queue: Option<String>,
    /// Run no sooner than this many seconds from now.
    #[arg(long, value_name = "SECONDS")]
    pub countdown: Option<f64>,
    /// Run no sooner than this time (ISO 8601 with an offset: 2026-12-07T10:00:00+00:00).
    #[arg(long, value_name = "ISO8601")]
    pub eta: Option<String>,
    /// Not worth running this many seconds from now (then REVOKED).
    #[arg(long, value_name = "SECONDS")]
    pub expires: Option<f64>,
    /// Message priority.
    #[arg(long)]
    pub priority: Option<u8>,
    /// Result backend URL (with --wait: default rpc:// on AMQP brokers, else required).
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,
    /// Wait this many seconds for the result and print it.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<f64>,
    /// Also send a task-sent event (Celery's task_send_sent_event), so monitors show the
    /// task from now on.
    #[arg(long)]
    pub sent_event: bool,
}

/// `kombu celery result`.
#[derive(Debug, Args)]
pub struct ResultArgs {
    /// The task id.
    pub task_id: String,
    /// Result backend URL.
    #[arg(long, value_name = "URL")]
    pub backend: String,
    /// Wait this many seconds for the task to finish.
    #[arg(long, value_name = "SECONDS")]
    pub wait: Option<f64>,
}

pub async fn run(global: &Global, args: CeleryArgs) -> anyhow::Result<Outcome> {
    match args.command {
        CeleryCommand::Call(call) => run_call(global, call).await,
        CeleryCommand::Inspect(remote) | CeleryCommand::Control(remote) => {
            crate::celery_ops::remote(global, remote).await
        }
        CeleryCommand::Events(events) => crate::celery_ops::events(global, events).await,
        CeleryCommand::Beat(beat) => crate::celery_ops::beat(global, beat).await,
        CeleryCommand::Result(result) => {
            if result.backend.starts_with("rpc://") {
                bail!(
                    "rpc:// results come only to the client that sent the task: use \
                     `kombu celery call --wait`"
                );
            }
            let backend = open_backend(&result.backend, None).await?;
            let meta = match result.wait {
                Some(seconds) => backend.wait(&result.task_id, seconds_of(seconds)?).await?,
                None => backend.meta(&result.task_id).await?,
            };
            finish(&meta)
        }
    }
}

async fn run_call(global: &Global, call: CallArgs) -> anyhow::Result<Outcome> {
    let args: Json = serde_json::from_str(&call.args).context("--args is not JSON")?;
    if !args.is_array() {
        bail!("--args must be a JSON array, not {args}");
    }
    let kwargs: Map<String, Json> =
        serde_json::from_str(&call.kwargs).context("--kwargs is not a JSON object")?;
    let mut options = TaskOptions::new();
    if let Some(queue) = &call.queue {
        options = options.queue(queue.as_str());
    }
    if let Some(seconds) = call.countdown {
        options = options.countdown(seconds_of(seconds)?);
    }
    if let Some(text) = &call.eta {
        let at = chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("--eta {text:?} is not an ISO 8601 time with an offset"))?;
        options = options.eta(SystemTime::from(at));
    }
    if let Some(seconds) = call.expires {
        options = options.expires_in(seconds_of(seconds)?);
    }
    if let Some(priority) = call.priority {
        options = options.priority(priority);
    }
    let url = url(global)?;
    let scheme = url.split_once("://").map_or("", |(scheme, _)| scheme);
    let amqp = matches!(scheme, "amqp" | "amqps" | "pyamqp");
    // Refused before anything is sent: a wait with nowhere to read the result from.
    let backend_url = match (&call.wait, &call.backend) {
        (_, Some(backend)) => Some(backend.clone()),
        (Some(_), None) if amqp => Some("rpc://".to_owned()),
        (Some(_), None) => bail!(
            "--wait needs --backend (the result backend's URL; rpc:// is the default on AMQP \
             brokers only)"
        ),
        (None, None) => None,
    };
    let conn = connect(&url).await?;
    let backend = match &backend_url {
        Some(backend) => Some(open_backend(backend, Some(&conn)).await?),
        None => None,
    };
    let mut celery = Celery::builder(&conn).send_sent_events(call.sent_event);
    if let Some(rpc) = backend.as_ref().and_then(|b| b.reply_to()) {
        celery = celery.reply_to(rpc);
    }
    let celery = celery.build();
    let id = celery
        .send_task(&call.name, args, kwargs, options)
        .await
        .with_context(|| format!("sending {} to {}", call.name, mask(&url)))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{id}")?;
        out.flush()?;
    }
    let (Some(seconds), Some(backend)) = (call.wait, backend) else {
        return Ok(Outcome::Done);
    };
    let meta = backend.wait(&id, seconds_of(seconds)?).await?;
    finish(&meta)
}

/// Prints a ready success's value; a failure is the command's error; a task not ready yet is
/// a timeout.
fn finish(meta: &ResultMeta) -> anyhow::Result<Outcome> {
    match &meta.state {
        State::Success => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string(&meta.result)?)?;
            out.flush()?;
            Ok(Outcome::Done)
        }
        state if state.is_ready() => match meta.failure_of() {
            Some(failure) => Err(anyhow!("task {} {state}: {failure}", meta.task_id)),
            None => Err(anyhow!("task {} {state}", meta.task_id)),
        },
        state => {
            eprintln!("task {} is {state}", meta.task_id);
            Ok(Outcome::TimedOut)
        }
    }
}

fn seconds_of(seconds: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| anyhow!("{seconds} is not a number of seconds"))
}

/// A result backend, and the reply queue its results come to when it is `rpc://`.
pub(crate) enum Backend {
    Stored(Box<dyn ResultBackend>),
    Rpc(RpcResultBackend),
}

impl Backend {
    fn reply_to(&self) -> Option<&str> {
        match self {
            Backend::Rpc(rpc) => Some(rpc.reply_to()),
            Backend::Stored(_) => None,
        }
    }

    async fn wait(&self, task_id: &str, timeout: Duration) -> kombu::Result<ResultMeta> {
        match self {
            Backend::Stored(b) => b.wait(task_id, timeout).await,
            Backend::Rpc(b) => b.wait(task_id, timeout).await,
        }
    }

    async fn meta(&self, task_id: &str) -> kombu::Result<ResultMeta> {
        match self {
            Backend::Stored(b) => b.meta(task_id).await,
            Backend::Rpc(b) => b.meta(task_id).await,
        }
    }
}

/// The result backend at `url` (`rpc://` replies over `conn`, the broker's connection).
pub(crate) async fn open_backend(
    url: &str,
    conn: Option<&kombu::Connection>,
) -> anyhow::Result<Backend> {
    let scheme = url.split_once("://").map_or(url, |(scheme, _)| scheme);
    match (scheme, conn) {
        ("redis" | "rediss", _) => {
            let backend = RedisResultBackend::connect(url)
                .await
                .with_context(|| format!("cannot reach the result backend {}", mask(url)))?;
            Ok(Backend::Stored(Box::new(backend)))
        }
        ("db+sqlite", _) => {
            let backend = SqlResultBackend::open(url)
                .await
                .with_context(|| format!("cannot open the result backend {}", mask(url)))?;
            Ok(Backend::Stored(Box::new(backend)))
        }
        ("rpc", Some(conn)) => {
            let backend = RpcResultBackend::new(conn)
                .await
                .context("cannot start the rpc:// result backend's reply queue")?;
            Ok(Backend::Rpc(backend))
        }
        (other, _) => bail!(
            "result backend {other}:// is not supported (redis://, rpc:// and db+sqlite:// are); \
             given {}",
            mask(url)
        ),
    }
}
