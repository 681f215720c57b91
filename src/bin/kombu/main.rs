//! `kombu`: publish, consume, inspect and move messages on any broker kombu-rs speaks, from the
//! command line.
//!
//! Every command takes the broker URL from `--url`, else `$KOMBU_URL`, else
//! `sqlite://kombu.db` (a file in the current directory). Errors are one line on stderr naming
//! what failed and the URL (never its password), and what to try; the exit status is 1 (2 for a
//! command line clap refuses, 3 when `consume --timeout` runs out).

mod admin;
mod bench;
mod cli;
mod common;
mod consume;
mod publish;
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
    /// Stopped by Ctrl-C.
    Interrupted,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `--verbose`, or a backtrace asked for the usual way, prints every cause of an error.
    let verbose = cli.global.verbose
        || std::env::var_os("RUST_BACKTRACE").is_some_and(|v| !v.is_empty() && v != "0");
    if verbose && std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: nothing else runs yet (no runtime, no threads), so no one reads the
        // environment concurrently.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "1") };
    }
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
        Command::Bench(args) => bench::run(&global, args).await,
        Command::Completions(args) => {
            let mut cmd = Cli::command();
            let mut out = std::io::stdout().lock();
            clap_complete::generate(args.shell, &mut cmd, "kombu", &mut out);
            out.flush()?;
            Ok(Outcome::Done)
        }
    }
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
