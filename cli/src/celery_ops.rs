//! `kombu celery inspect`, `kombu celery control` and `kombu celery events`: Celery's
//! remote control and events, against Python and Rust workers alike.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kombu::StreamExt;
use kombu::celery::control::{Broadcast, Control};
use kombu::celery::events::EventReceiver;
use serde_json::{Map, Value as Json};

use crate::Outcome;
use crate::cli::Global;
use crate::common::{connect, mask, url};
use crate::consume::stopped_by;
use crate::lifecycle::Signals;

/// `kombu celery inspect` and `kombu celery control`.
#[derive(Debug, Args)]
pub struct RemoteArgs {
    /// The command (ping, stats, active, revoke, rate_limit, ...).
    pub command: String,
    /// Its arguments, as Celery's command line takes them (revoke ID..., rate_limit TASK
    /// RATE, time_limit TASK SOFT HARD, add_consumer QUEUE [EXCHANGE [TYPE [KEY]]],
    /// pool_grow N, autoscale MAX MIN, registered [ATTRIBUTE]..., query_task ID...).
    pub args: Vec<String>,
    /// Keyword arguments as a JSON object, merged over the positional ones (for commands
    /// this tool does not know).
    #[arg(long, value_name = "JSON-OBJECT")]
    pub kwargs: Option<String>,
    /// Only this node (repeatable; `name@host`); the wait ends once each named one replied.
    #[arg(long, short = 'd', value_name = "NODE")]
    pub destination: Vec<String>,
    /// Only nodes whose name matches this glob (`celery@*`).
    #[arg(long, value_name = "GLOB")]
    pub pattern: Option<String>,
    /// Seconds to wait for the next reply (the wait ends when none came for this long).
    #[arg(long, short = 't', value_name = "SECONDS", default_value_t = 1.0)]
    pub timeout: f64,
}

/// `kombu celery events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Stop after this many events.
    #[arg(long, short = 'n', value_name = "N")]
    pub count: Option<u64>,
    /// Only events whose routing key matches (a topic pattern: `worker.#`, `task.#`;
    /// repeatable; default all). A worker's task events come under `task.multi`.
    #[arg(long, value_name = "PATTERN")]
    pub routing_key: Vec<String>,
}

/// The keyword names of a command's positional arguments (Celery's `args=` declarations),
/// and the name the rest go to (its variadic one).
fn signature(command: &str) -> (&'static [(&'static str, Kind)], Option<&'static str>) {
    use Kind::{Bool, Float, Int, Text};
    match command {
        "revoke" => (&[], Some("task_id")),
        "terminate" => (&[("signal", Text)], Some("task_id")),
        "rate_limit" => (&[("task_name", Text), ("rate_limit", Text)], None),
        "time_limit" => (
            &[("task_name", Text), ("soft", Float), ("hard", Float)],
            None,
        ),
        "add_consumer" => (
            &[
                ("queue", Text),
                ("exchange", Text),
                ("exchange_type", Text),
                ("routing_key", Text),
            ],
            None,
        ),
        "cancel_consumer" => (&[("queue", Text)], None),
        "pool_grow" | "pool_shrink" => (&[("n", Int)], None),
        "autoscale" => (&[("max", Int), ("min", Int)], None),
        "active" => (&[("safe", Bool)], None),
        "conf" => (&[("with_defaults", Bool)], None),
        "registered" => (&[], Some("taskinfoitems")),
        "query_task" => (&[], Some("ids")),
        "shutdown" => (&[("msg", Text)], None),
        _ => (&[], None),
    }
}

/// How a positional argument is read.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Text,
    Int,
    Float,
    Bool,
}

/// The keyword arguments of `command` from its positional `args` and `--kwargs`.
fn arguments(
    command: &str,
    args: &[String],
    kwargs: Option<&str>,
) -> anyhow::Result<Map<String, Json>> {
    let (named, rest) = signature(command);
    let mut out = Map::new();
    let mut given = args.iter();
    for ((name, kind), text) in named.iter().zip(given.by_ref()) {
        let value = match kind {
            Kind::Text => Json::String(text.clone()),
            Kind::Int => Json::from(
                text.parse::<i64>()
                    .with_context(|| format!("{command}: {name} {text:?} is not a whole number"))?,
            ),
            Kind::Float => Json::from(
                text.parse::<f64>()
                    .with_context(|| format!("{command}: {name} {text:?} is not a number"))?,
            ),
            Kind::Bool => Json::Bool(matches!(
                text.to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on" | "y" | "t"
            )),
        };
        out.insert((*name).to_owned(), value);
    }
    let left: Vec<Json> = given.map(|s| Json::String(s.clone())).collect();
    match rest {
        Some(name) => {
            out.insert(name.to_owned(), Json::Array(left));
        }
        None if !left.is_empty() => bail!(
            "{command} takes at most {} argument(s); give others with --kwargs",
            named.len()
        ),
        None => {}
    }
    if let Some(text) = kwargs {
        let extra: Map<String, Json> =
            serde_json::from_str(text).context("--kwargs is not a JSON object")?;
        out.extend(extra);
    }
    Ok(out)
}

/// Sends the command and prints `{node: reply}`; no reply is a timeout (status 3).
pub async fn remote(global: &Global, args: RemoteArgs) -> anyhow::Result<Outcome> {
    let arguments = arguments(&args.command, &args.args, args.kwargs.as_deref())?;
    let Ok(timeout) = Duration::try_from_secs_f64(args.timeout) else {
        bail!(
            "--timeout must be a number of seconds, not {}",
            args.timeout
        );
    };
    let url = url(global)?;
    let conn = connect(&url).await?;
    let control = Control::new(&conn);
    let destination = (!args.destination.is_empty()).then(|| args.destination.clone());
    if args.command == "shutdown" {
        // A worker stopping sends no reply: sent without waiting for one.
        control
            .cast("shutdown", arguments, destination)
            .await
            .with_context(|| format!("sending shutdown on {}", mask(&url)))?;
        print_json(&Json::Object(Map::new()))?;
        return Ok(Outcome::Done);
    }
    let mut options = Broadcast::new().timeout(timeout);
    for node in &args.destination {
        options = options.destination(node.as_str());
    }
    if let Some(pattern) = &args.pattern {
        options = options.pattern(pattern.as_str());
    }
    let replies = control
        .inspect(&args.command, arguments, &options)
        .await
        .with_context(|| format!("sending {} on {}", args.command, mask(&url)))?;
    let none = replies.is_empty();
    print_json(&Json::Object(replies))?;
    if none {
        eprintln!("no node replied within {} s", args.timeout);
        return Ok(Outcome::TimedOut);
    }
    Ok(Outcome::Done)
}

fn print_json(value: &Json) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(value)?)?;
    out.flush()?;
    Ok(())
}

/// Prints events, one JSON object a line, until `--count` or a signal.
pub async fn events(global: &Global, args: EventsArgs) -> anyhow::Result<Outcome> {
    let url = url(global)?;
    let conn = connect(&url).await?;
    let mut signals = Signals::install();
    let mut builder = EventReceiver::builder(&conn);
    for key in &args.routing_key {
        builder = builder.routing_key(key.as_str());
    }
    let mut receiver = builder
        .build()
        .await
        .with_context(|| format!("listening to events on {}", mask(&url)))?;
    let mut printed = 0u64;
    let outcome = loop {
        if args.count.is_some_and(|n| printed >= n) {
            break Outcome::Done;
        }
        let next = tokio::select! {
            next = receiver.next() => next,
            signal = signals.wait() => break stopped_by(signal),
        };
        match next {
            None => bail!("the event stream on {} ended", mask(&url)),
            Some(Err(error)) => eprintln!("warning: {error:#}"),
            Some(Ok(event)) => {
                print_json(&event.into_json())?;
                printed += 1;
            }
        }
    };
    if let Err(error) = receiver.close().await {
        eprintln!("warning: closing the event queue: {error:#}");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::{arguments, sqlite_file};

    #[test]
    fn a_sqlite_brokers_file_reads_as_the_transport_reads_it() {
        let file = |url: &str| sqlite_file(url).map(|p| p.display().to_string());
        assert_eq!(file("sqlite:///tmp/x.db").as_deref(), Some("/tmp/x.db"));
        assert_eq!(
            file("sqlite://kombu.db?polling_interval=1").as_deref(),
            Some("kombu.db")
        );
        assert_eq!(file("sqla+sqlite:///x.db").as_deref(), Some("x.db"));
        assert_eq!(
            file("sqla+sqlite:////abs/x.db").as_deref(),
            Some("/abs/x.db")
        );
        assert_eq!(file("sqlite://:memory:"), None);
        assert_eq!(file("redis://h/0"), None);
    }
    use serde_json::json;

    #[test]
    fn positional_arguments_read_as_celerys() {
        let args = |cmd: &str, given: &[&str]| {
            let given: Vec<String> = given.iter().map(|s| (*s).to_owned()).collect();
            arguments(cmd, &given, None).map(serde_json::Value::Object)
        };
        assert_eq!(
            args("revoke", &["a", "b"]).ok(),
            Some(json!({"task_id": ["a", "b"]}))
        );
        assert_eq!(
            args("terminate", &["SIGKILL", "a"]).ok(),
            Some(json!({"signal": "SIGKILL", "task_id": ["a"]}))
        );
        assert_eq!(
            args("time_limit", &["tasks.add", "1.5", "3"]).ok(),
            Some(json!({"task_name": "tasks.add", "soft": 1.5, "hard": 3.0}))
        );
        assert_eq!(args("pool_grow", &["2"]).ok(), Some(json!({"n": 2})));
        assert_eq!(args("ping", &[]).ok(), Some(json!({})));
        assert!(args("ping", &["x"]).is_err(), "ping takes no argument");
        assert!(args("pool_grow", &["two"]).is_err());
        let merged = arguments("ping", &[], Some(r#"{"x": 1}"#)).ok();
        assert_eq!(merged.map(serde_json::Value::Object), Some(json!({"x": 1})));
    }
}

/// `kombu celery beat`.
#[derive(Debug, Args)]
pub struct BeatArgs {
    /// The schedule file (TOML: [[entry]] tables).
    #[arg(long, value_name = "FILE")]
    pub schedule: std::path::PathBuf,
    /// Where the lease and the runs live: redis://..., amqp://... or mongodb://... (shared by
    /// beats on any machine), a SQLite file or sqlite:// URL (beats on one machine), or memory
    /// (forgotten on exit). Default: the broker when it is Redis, RabbitMQ, MongoDB or
    /// SQLite, else <schedule>.state.db beside the schedule.
    #[arg(long, value_name = "PATH|URL")]
    pub state: Option<String>,
    /// Seconds the lease lasts unless renewed: how long the others wait before one takes
    /// over from a beat that died.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub lease_ttl: f64,
}

/// Sends each run through Celery and prints it as a JSON line.
struct Printing(kombu::celery::Celery);

#[async_trait::async_trait]
impl kombu::celery::beat::Sender for Printing {
    async fn send(
        &self,
        entry: &kombu::celery::beat::Entry,
        task_id: &str,
        scheduled: chrono::DateTime<chrono::Utc>,
    ) -> kombu::Result<()> {
        kombu::celery::beat::Sender::send(&self.0, entry, task_id, scheduled).await?;
        let line = serde_json::json!({
            "entry": entry.name,
            "task": entry.task,
            "id": task_id,
            "scheduled": scheduled.to_rfc3339(),
        });
        let mut out = std::io::stdout().lock();
        // A closed stdout does not stop the schedule.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
        Ok(())
    }
}

/// Runs the schedule until SIGINT or SIGTERM.
pub async fn beat(global: &Global, args: BeatArgs) -> anyhow::Result<Outcome> {
    use kombu::celery::beat::{
        AmqpStore, Beat, BeatStore, MemoryStore, MongoStore, RedisStore, ScheduleFile, SqliteStore,
    };
    use std::sync::Arc;

    let text = std::fs::read_to_string(&args.schedule)
        .with_context(|| format!("reading {}", args.schedule.display()))?;
    let file =
        ScheduleFile::parse(&text).with_context(|| format!("in {}", args.schedule.display()))?;
    if file.entries.is_empty() {
        bail!("{} has no [[entry]]", args.schedule.display());
    }
    let url = url(global)?;
    // First: it registers the transports the state's URL may need too.
    let conn = connect(&url).await?;
    // Default: on the broker where it can hold a lease (Redis, RabbitMQ, MongoDB, a SQLite
    // broker's file), so beats sharing the broker share the lease; else a file beside the
    // schedule.
    let state = match args.state.clone() {
        Some(state) => state,
        None if is_redis(&url) || is_amqp(&url) || is_mongodb(&url) => url.clone(),
        None => match sqlite_file(&url) {
            Some(path) => path.display().to_string(),
            None => args
                .schedule
                .with_extension("state.db")
                .display()
                .to_string(),
        },
    };
    let store: Arc<dyn BeatStore> = match state.as_str() {
        "memory" => Arc::new(MemoryStore::new()),
        url if is_redis(url) => Arc::new(
            RedisStore::connect(url, &file.name)
                .await
                .with_context(|| format!("the beat state at {}", mask(url)))?,
        ),
        url if is_amqp(url) => Arc::new(
            AmqpStore::connect(url, &file.name)
                .await
                .with_context(|| format!("the beat state at {}", mask(url)))?,
        ),
        url if is_mongodb(url) => Arc::new(
            MongoStore::connect(url, &file.name)
                .await
                .with_context(|| format!("the beat state at {}", mask(url)))?,
        ),
        url if url.contains("://") => match sqlite_file(url) {
            Some(path) => Arc::new(SqliteStore::open(path, &file.name)?),
            None => bail!(
                "--state {}: a file, a sqlite://, redis://, amqp:// or mongodb:// URL, or memory",
                mask(url)
            ),
        },
        path => Arc::new(SqliteStore::open(path, &file.name)?),
    };
    let shown = match state.contains("://") {
        true => mask(&state),
        false => state.clone(),
    };
    eprintln!("beat state: {shown}");
    let mut signals = Signals::install_saying("the beat");
    let names: Vec<String> = file
        .entries
        .iter()
        .map(|e| format!("{} ({})", e.name, e.schedule))
        .collect();
    eprintln!("beat {:?}: {}", file.name, names.join(", "));
    let ttl = std::time::Duration::try_from_secs_f64(args.lease_ttl)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--lease-ttl {} is no number of seconds", args.lease_ttl))?;
    let beat = Beat::new(
        &file.name,
        file.entries,
        store,
        Printing(kombu::celery::Celery::new(&conn)),
    )
    .lease_ttl(ttl);
    let mut received = None;
    beat.run_until(async {
        received = Some(signals.wait().await);
    })
    .await
    .context("the beat")?;
    let signal = received.unwrap_or(crate::lifecycle::Signal::Interrupt);
    Ok(stopped_by(signal))
}

fn is_amqp(url: &str) -> bool {
    ["amqp://", "amqps://", "pyamqp://"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
}

fn is_mongodb(url: &str) -> bool {
    url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")
}

fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// The file of a SQLite broker URL (`sqlite:///tmp/x.db` → `/tmp/x.db`; SQLAlchemy's one-slash
/// rule for `sqla+sqlite://`), as the SQLite transport reads it; `None` for another URL or an
/// in-memory database.
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let (scheme, rest) = url.split_once("://")?;
    let location = rest.split_once('?').map_or(rest, |(p, _)| p);
    let location = match scheme {
        "sqlite" => location,
        "sqla+sqlite" | "sqlalchemy+sqlite" => location.strip_prefix('/').unwrap_or(location),
        _ => return None,
    };
    (!matches!(location, "" | ":memory:" | "/:memory:")).then(|| std::path::PathBuf::from(location))
}
