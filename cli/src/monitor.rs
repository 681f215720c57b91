//! `kombu monitor`: the monitor of kombu-monitor on the broker, served over HTTP until SIGINT
//! or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use kombu_monitor::{Limits, Monitor};

use crate::Outcome;
use crate::cli::Global;
use crate::common::{connect, url};
use crate::consume::stopped_by;
use crate::lifecycle::Signals;

/// A password or token: never shown (`Debug` prints `***`).
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;

    fn from_str(text: &str) -> Result<Secret, String> {
        if text.is_empty() {
            return Err("empty".to_owned());
        }
        Ok(Secret(text.to_owned()))
    }
}

/// `kombu monitor`.
#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Where to listen (loopback only unless --auth or --token is given).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:5555")]
    pub listen: SocketAddr,
    /// Let USER with PASSWORD call the API (HTTP Basic); may be repeated. Prefer the
    /// environment variable: a command line is visible to every user of the machine.
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "KOMBU_MONITOR_AUTH",
        hide_env_values = true
    )]
    pub auth: Vec<Secret>,
    /// Let callers presenting `Authorization: Bearer TOKEN` call the API (in a browser: the
    /// token as the password, any user name).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "KOMBU_MONITOR_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Secret>,
    /// Read task results here (/api/task/result/ID): redis:// or db+sqlite://.
    #[arg(long, value_name = "URL")]
    pub backend: Option<String>,
    /// Serve everything under this path (behind a reverse proxy): /PREFIX/api/tasks.
    #[arg(long, value_name = "PREFIX")]
    pub url_prefix: Option<String>,
    /// Refuse every call that steers workers or sends tasks.
    #[arg(long)]
    pub read_only: bool,
    /// RabbitMQ's management API, for unacked messages and rates on AMQP (default:
    /// http://<broker host>:15672/api/, https://...:15671 for amqps://, with the broker's
    /// credentials). Prefer the environment variable when the URL holds a password.
    #[arg(
        long,
        value_name = "URL",
        env = "KOMBU_MONITOR_BROKER_API",
        hide_env_values = true
    )]
    pub broker_api: Option<Secret>,
    /// Watch this queue too, beside those the workers consume; may be repeated.
    #[arg(long = "queue", value_name = "NAME")]
    pub queues: Vec<String>,
    /// Keep the task history in this SQLite file (across restarts); default: in memory.
    #[arg(long, value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// At most this many tasks in the history (the least recently changed go first).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub max_tasks: u64,
    /// Tasks without an event for this many hours leave the history.
    #[arg(long, value_name = "HOURS", default_value_t = 168.0)]
    pub max_age: f64,
}

/// Runs the monitor until SIGINT or SIGTERM.
pub async fn run(global: &Global, args: MonitorArgs) -> anyhow::Result<Outcome> {
    if !args.listen.ip().is_loopback() && args.auth.is_empty() && args.token.is_none() {
        bail!(
            "--listen {}: without --auth or --token the monitor listens on loopback only \
             (127.0.0.1 or ::1)",
            args.listen
        );
    }
    let max_age = Duration::try_from_secs_f64(args.max_age * 3600.0)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--max-age {} is no number of hours", args.max_age))?;
    let url = url(global)?;
    let conn = connect(&url).await?;
    let mut builder = Monitor::builder(&conn)
        .limits(Limits {
            max_tasks: args.max_tasks.max(1),
            max_age,
        })
        .read_only(args.read_only)
        .queues(args.queues.iter().cloned());
    if let Some(api) = &args.broker_api {
        builder = builder.broker_api(&api.0);
    }
    for pair in &args.auth {
        match pair.0.split_once(':') {
            Some((user, password)) if !password.is_empty() => {
                builder = builder.basic_auth(user, password);
            }
            _ => bail!("--auth takes USER:PASSWORD, with a password"),
        }
    }
    if let Some(token) = &args.token {
        builder = builder.token(token.0.as_str());
    }
    if let Some(prefix) = &args.url_prefix {
        builder = builder.url_prefix(prefix);
    }
    if let Some(url) = &args.backend {
        match crate::celery::open_backend(url, None).await? {
            crate::celery::Backend::Stored(backend) => {
                builder = builder.result_backend(std::sync::Arc::from(backend));
            }
            crate::celery::Backend::Rpc(_) => {
                bail!("--backend rpc:// cannot be read by task id: use redis:// or db+sqlite://")
            }
        }
    }
    let monitor = builder.start().await.context("starting the monitor")?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    eprintln!("monitor: http://{}/api/tasks", args.listen);
    let mut signals = Signals::install_saying("the monitor");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let signal = {
        let serving = monitor.serve(listener, async move {
            let _ = stopped.await;
        });
        tokio::pin!(serving);
        tokio::select! {
            signal = signals.wait() => {
                let _ = stop.send(());
                (&mut serving).await.context("the monitor")?;
                signal
            }
            served = &mut serving => {
                served.context("the monitor")?;
                bail!("the monitor's HTTP server stopped by itself");
            }
        }
    };
    monitor.stop().await;
    Ok(stopped_by(signal))
}
