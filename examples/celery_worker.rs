//! A Celery worker in Rust, beside Python's: it runs the tasks of `examples/python/tasks.py`
//! (`tasks.add`, `tasks.mul`, `tasks.echo`, `tasks.sleep`, `tasks.fail`, `tasks.flaky`) from
//! the same queues, and stores results where Celery's `AsyncResult.get()` reads them.
//!
//! ```text
//! cargo run --example celery_worker --features celery -- \
//!     --broker redis://127.0.0.1:6379/0 --backend redis://127.0.0.1:6379/1 \
//!     [--queue Q]... [--concurrency N | --autoscale MAX,MIN] [--hostname NAME] [-E]
//! # then, from Python (examples/python/tasks.py):
//! #   add.delay(2, 3).get(timeout=10) == 5
//! ```
//!
//! `-E` (`--task-events`) sends task events, as Celery's `-E`: with it, `celery events` and
//! Flower show the tasks; without it they still see the worker (its heartbeats). `celery
//! inspect` and `celery control` reach it as any Celery worker.
//!
//! Backends: `redis://...`, `rpc://` (results to each caller's reply queue), and
//! `db+sqlite:///path.db` (Celery's SQL tables). It stops with status 0 on SIGINT or SIGTERM,
//! letting running tasks finish.
//!
//! Without `--broker` it shows itself on `KOMBU_URL` (default `memory://`): it starts, sends
//! `tasks.add(2, 3)` and `tasks.flaky(2)` to itself, prints their results and stops.

use std::process::ExitCode;
use std::time::Duration;

use kombu::Connection;
use kombu::celery::backend::{RedisResultBackend, SqlResultBackend};
use kombu::celery::worker::{TaskContext, TaskFail, TaskSettings, Worker, WorkerBuilder};
use kombu::celery::{Celery, Task, TaskFailure};
use serde_json::Value as Json;

const ADD: Task<(i64, i64), i64> = Task::new("tasks.add");
const MUL: Task<(i64, i64), i64> = Task::new("tasks.mul");
const ECHO: Task<(Json,), Json> = Task::new("tasks.echo");
const SLEEP: Task<(f64,), f64> = Task::new("tasks.sleep");
const FAIL: Task<(String,), ()> = Task::new("tasks.fail");
const FLAKY: Task<(u32,), u32> = Task::new("tasks.flaky");

/// The tasks, as `examples/python/tasks.py` defines them.
fn tasks(worker: WorkerBuilder) -> WorkerBuilder {
    let params = |names: &[&str]| TaskSettings::new().params(names.iter().copied());
    worker
        .task_with(ADD, params(&["x", "y"]), |(x, y), _: TaskContext| async move {
            Ok(x + y)
        })
        .task_with(MUL, params(&["x", "y"]), |(x, y), _: TaskContext| async move {
            Ok(x * y)
        })
        .task_with(ECHO, params(&["value"]), |(value,), _: TaskContext| async move {
            Ok(value)
        })
        .task_with(
            SLEEP,
            params(&["seconds"]),
            |(seconds,), _: TaskContext| async move {
                let wait = Duration::try_from_secs_f64(seconds).map_err(|e| {
                    TaskFail::from(TaskFailure::value_error(format!("seconds: {e}")))
                })?;
                tokio::time::sleep(wait).await;
                Ok(seconds)
            },
        )
        .task_with(FAIL, params(&["message"]), |(message,), _: TaskContext| async move {
            Err(TaskFailure::value_error(message).into())
        })
        .task_with(
            FLAKY,
            params(&["times"]).max_retries(None),
            |(times,), ctx: TaskContext| async move {
                if ctx.retries() < times {
                    return Err(ctx.retry().countdown(Duration::from_millis(100)).into());
                }
                Ok(ctx.retries())
            },
        )
}

/// `--broker`, `--backend`, `--queue` (repeatable), `--concurrency`, `--autoscale`,
/// `--hostname`, `-E`.
#[derive(Debug, Default)]
struct Args {
    broker: Option<String>,
    backend: Option<String>,
    queues: Vec<String>,
    concurrency: Option<usize>,
    autoscale: Option<(usize, usize)>,
    hostname: Option<String>,
    task_events: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--broker" => args.broker = Some(value()?),
            "--backend" => args.backend = Some(value()?),
            "--queue" | "-Q" => args.queues.push(value()?),
            "--concurrency" | "-c" => {
                let n = value()?;
                args.concurrency = Some(n.parse().map_err(|e| format!("--concurrency {n}: {e}"))?);
            }
            "--hostname" | "-n" => args.hostname = Some(value()?),
            "--autoscale" => {
                let text = value()?;
                let bad = || format!("--autoscale {text}: expected MAX,MIN");
                let (max, min) = text.split_once(',').ok_or_else(bad)?;
                args.autoscale = Some((
                    max.trim().parse().map_err(|_| bad())?,
                    min.trim().parse().map_err(|_| bad())?,
                ));
            }
            "-E" | "--task-events" => args.task_events = true,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

/// The worker with the result backend at `url`.
async fn with_backend(
    worker: WorkerBuilder,
    url: &str,
) -> Result<WorkerBuilder, Box<dyn std::error::Error>> {
    Ok(match url.split_once("://").map(|(scheme, _)| scheme) {
        Some("redis" | "rediss") => worker.result_backend(RedisResultBackend::connect(url).await?),
        Some("db+sqlite") => worker.result_backend(SqlResultBackend::open(url).await?),
        Some("rpc") => worker.rpc_results(),
        _ => return Err(format!("result backend {url}: redis://, rpc:// or db+sqlite://").into()),
    })
}

const USAGE: &str = "usage: celery_worker --broker URL --backend URL [--queue Q]... \
                     [--concurrency N | --autoscale MAX,MIN] [--hostname NAME] [-E]";

#[tokio::main]
async fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    // The worker's log (ready, failures, retries) on standard error, at INFO.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::INFO)
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("celery_worker: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let run = match &args.broker {
        Some(broker) => serve(broker, &args).await,
        None => demo().await,
    };
    match run {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("celery_worker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the worker on `broker` until SIGINT or SIGTERM.
async fn serve(broker: &str, args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let conn = Connection::open(broker).await?;
    let mut worker = tasks(Worker::builder(&conn));
    if let Some(url) = &args.backend {
        worker = with_backend(worker, url).await?;
    }
    for queue in &args.queues {
        worker = worker.queue(queue);
    }
    if let Some(n) = args.concurrency {
        worker = worker.concurrency(n);
    }
    if let Some((max, min)) = args.autoscale {
        worker = worker.autoscale(max, min);
    }
    if let Some(name) = &args.hostname {
        worker = worker.hostname(name);
    }
    worker = worker.task_events(args.task_events);
    println!("celery_worker: consuming on {}", conn.url());
    worker.build()?.run_until_signal().await?;
    println!("celery_worker: stopped");
    Ok(())
}

/// Sends two tasks to a worker of its own on `KOMBU_URL` and prints their results.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("KOMBU_URL").unwrap_or_else(|_| "memory://".to_owned());
    let conn = Connection::open(&url).await?;
    let queue = format!("celery-demo-{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("celery-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let results = format!("db+sqlite:///{}", dir.join("results.db").display());
    let worker = with_backend(tasks(Worker::builder(&conn)), &results)
        .await?
        .queue(&queue)
        .concurrency(2)
        .build()?;
    let handle = worker.handle();
    let running = tokio::spawn(worker.run());
    let celery = Celery::builder(&conn).default_queue(&queue).build();
    let backend = SqlResultBackend::open(&results).await?;
    let sum = celery.call(&ADD, (2, 3)).await?;
    let retried = celery.call(&FLAKY, (2,)).await?;
    println!(
        "tasks.add(2, 3) = {}",
        sum.get(&backend, Duration::from_secs(30)).await?
    );
    println!(
        "tasks.flaky(2) = {} retries",
        retried.get(&backend, Duration::from_secs(30)).await?
    );
    handle.stop();
    running.await??;
    conn.delete_queue(&queue).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
