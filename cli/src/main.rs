//! `kombu`: publish, consume, inspect and move messages on any broker kombu-rs speaks, from the
//! command line.
//!
//! Every command takes the broker URL from `--url`, else `$KOMBU_URL`, else
//! `sqlite://kombu.db` (a file in the current directory; stderr says so). Errors are one line on
//! stderr naming what failed and the URL once (never its password), and what to try; `--verbose`
//! adds every cause and a backtrace. The exit status is 1 (2 for a command line clap refuses, 3
//! when `consume --timeout` runs out, 4 when `consume` dead-lettered a message, 130 when
//! `consume` or `move` stopped on Ctrl-C, 0 when they stopped on SIGTERM; a second signal exits
//! at once with 130 or 143).
//! The library's own warnings go to stderr too, filtered by `RUST_LOG` (default `warn`).

mod admin;
mod bench;
mod celery;
mod celery_ops;
mod cli;
mod common;
mod consume;
mod dlq;
mod lifecycle;
mod monitor;
mod publish;
mod render;
mod transfer;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser as _};

use crate::cli::{Cli, Command};

/// How a command ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Did what was asked.
    Done,
    /// `consume --timeout` passed before `--count` messages arrived.
    TimedOut,
    /// Stopped by Ctrl-C (SIGINT); a SIGTERM stop is [`Outcome::Done`].
    Interrupted,
    /// `consume` ended as [`Outcome::Done`] but moved messages it could not print to their
    /// dead-letter queue.
    DeadLettered,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only `--verbose` prints every cause and a backtrace: a RUST_BACKTRACE left set in the
    // user's environment does not turn one-line errors into pages.
    let verbose = cli.global.verbose;
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet (no runtime, no threads), so no one reads the
        // environment concurrently.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RUST_LIB_BACKTRACE", if verbose { "1" } else { "0" })
        };
    }
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // The AMQP client (lapin) parses a message's header tables recursively on a thread of
        // its own whose stack comes from RUST_MIN_STACK: at its 2 MiB default, headers nested
        // a thousand deep (a few KiB that any publisher can send) overflow it and abort the
        // process, and the message stays first in its queue. 256 MiB holds the deepest a
        // 128 KiB frame can carry; it is address space, used only as deep as a parse goes.
        // SAFETY: as above, nothing else runs yet.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RUST_MIN_STACK", (256usize << 20).to_string())
        };
    }
    // `consume` prints a line of its own for each message it dead-letters or requeues (a peek
    // does not see what the transport sets aside: the library's warning says it).
    init_tracing(matches!(&cli.command, Command::Consume(args) if !args.requeue));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // Blocking tasks (SQLite calls) may still be finishing a statement; give them a moment.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::TimedOut) => ExitCode::from(3),
        Ok(Outcome::Interrupted) => ExitCode::from(130),
        Ok(Outcome::DeadLettered) => ExitCode::from(4),
        Err(err) => {
            report(&err, verbose);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let global = cli.global;
    match cli.command {
        Command::Publish(args) => publish::run(&global, args).await,
        Command::Consume(args) => consume::run(&global, args).await,
        Command::Declare(args) => admin::declare(&global, args).await,
        Command::Bind(args) => admin::bind(&global, args, true).await,
        Command::Unbind(args) => admin::bind(&global, args, false).await,
        Command::Size(args) => admin::size(&global, args).await,
        Command::Purge(args) => admin::purge(&global, args).await,
        Command::Delete(args) => admin::delete(&global, args).await,
        Command::Move(args) => transfer::run(&global, args).await,
        Command::Dlq(args) => dlq::run(&global, args).await,
        Command::Bench(args) => bench::run(&global, args).await,
        Command::Celery(args) => celery::run(&global, args).await,
        Command::Monitor(args) => monitor::run(&global, args).await,
        Command::Completions(args) => {
            let mut cmd = Cli::command();
            let mut out = std::io::stdout().lock();
            clap_complete::generate(args.shell, &mut cmd, "kombu", &mut out);
            out.flush()?;
            Ok(Outcome::Done)
        }
    }
}

/// What is logged without `RUST_LOG`: kombu's own warnings and errors. The crates beneath it
/// (lapin logs every channel a broker closes as an error) stay quiet: what they report reaches
/// the user as kombu's error.
const DEFAULT_LOG: &str = "off,kombu=warn,kombu_core=warn,kombu_serializers=warn,\
                           kombu_sqlite=warn,kombu_redis=warn,kombu_amqp=warn,kombu_celery=warn,\
                           kombu_monitor=warn";

/// Added to [`DEFAULT_LOG`] for `consume`, which prints its own line for each message the
/// consumer's policy or the transport moved aside: the library's warning would repeat it.
const CONSUME_QUIET: &str = ",kombu_core::consumer::policy=error,\
                             kombu_core::transport::virtual_transport::unreadable=error";

/// Sends tracing events to stderr, filtered by `RUST_LOG` (default [`DEFAULT_LOG`], so the
/// library's warnings reach the user; `RUST_LOG=debug` shows more, `RUST_LOG=off` nothing).
fn init_tracing(consume: bool) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => tracing_subscriber::EnvFilter::new(spec),
        _ if consume => tracing_subscriber::EnvFilter::new(format!("{DEFAULT_LOG}{CONSUME_QUIET}")),
        _ => tracing_subscriber::EnvFilter::new(DEFAULT_LOG),
    };
    // Fails only when a subscriber is already installed: nothing to do then.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .try_init();
}

/// Prints the error: one line (the context chain, then a hint), or with `--verbose` every cause
/// and the backtrace when one was captured.
fn report(err: &anyhow::Error, verbose: bool) {
    let hint = common::hint_for(err);
    let mut stderr = std::io::stderr().lock();
    let line = match hint {
        Some(hint) => format!("error: {err:#}; {hint}"),
        None => format!("error: {err:#}"),
    };
    // A broken stderr leaves nothing to report to.
    let _ = writeln!(stderr, "{}", line.replace('\n', " "));
    if verbose {
        let _ = writeln!(stderr, "\ndetails: {err:?}");
    }
}
