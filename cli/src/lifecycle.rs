//! What lets `consume` and `move` run for long: SIGINT / SIGTERM stop them gracefully (a second
//! signal exits at once), the connection's link changes are told on stderr, and recoverable
//! broker errors are ridden through with back-off instead of ending the command.

use kombu::{Connection, Error, ErrorKind, LinkState, RetryPolicy};
use tokio::sync::watch;
use tokio::time::Instant;

/// A signal that asks the command to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM (a supervisor's stop: systemd, Docker, Kubernetes, kill).
    Terminate,
}

impl Signal {
    /// The exit status of a process killed by this signal (128 + its number), used when a
    /// second one exits at once.
    fn exit_status(self) -> i32 {
        match self {
            Signal::Interrupt => 130,
            Signal::Terminate => 143,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// The first SIGINT or SIGTERM the process received, from [`Signals::install`]. The second one
/// exits the process at once (status 130 or 143), without putting anything back: what it
/// held returns when its broker sees the connection gone or its visibility timeout passes.
#[derive(Debug, Clone)]
pub struct Signals {
    first: watch::Receiver<Option<Signal>>,
}

impl Signals {
    /// Starts listening for SIGINT and SIGTERM (on Unix; Ctrl-C elsewhere). From now on neither
    /// kills the process by itself.
    pub fn install() -> Signals {
        Signals::install_saying("after the message in hand")
    }

    /// [`install`](Self::install), telling on the first signal that the command is
    /// `stopping ...` (`what`).
    pub fn install_saying(what: &'static str) -> Signals {
        let (tx, first) = watch::channel(None);
        let mut listener = Listener::new();
        tokio::spawn(async move {
            let mut seen = false;
            loop {
                let Some(signal) = listener.next().await else {
                    // No signal can be listened for: nothing stops the command but its end.
                    return;
                };
                if seen {
                    eprintln!("{}: exiting now", signal.name());
                    std::process::exit(signal.exit_status());
                }
                seen = true;
                eprintln!("{}: stopping {what} (again to exit at once)", signal.name());
                tx.send_replace(Some(signal));
            }
        });
        Signals { first }
    }

    /// The signal received, if any.
    pub fn received(&self) -> Option<Signal> {
        *self.first.borrow()
    }

    /// Returns the first signal once one was received.
    pub async fn wait(&mut self) -> Signal {
        match self.first.wait_for(Option::is_some).await {
            Ok(signal) => signal.unwrap_or(Signal::Interrupt),
            // The listener ended without a signal: none will come.
            Err(_) => std::future::pending().await,
        }
    }
}

/// The OS signals listened for, registered once (a signal between two waits is kept).
struct Listener {
    #[cfg(unix)]
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Listener {
    #[cfg(unix)]
    fn new() -> Listener {
        use tokio::signal::unix::{SignalKind, signal};
        let streams = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(int), Ok(term)) => Some((int, term)),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("warning: cannot listen for SIGINT and SIGTERM: {e}");
                None
            }
        };
        Listener { streams }
    }

    #[cfg(unix)]
    async fn next(&mut self) -> Option<Signal> {
        let (int, term) = self.streams.as_mut()?;
        tokio::select! {
            got = int.recv() => got.map(|()| Signal::Interrupt),
            got = term.recv() => got.map(|()| Signal::Terminate),
        }
    }

    #[cfg(not(unix))]
    fn new() -> Listener {
        Listener {}
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Option<Signal> {
        tokio::signal::ctrl_c().await.ok()?;
        Some(Signal::Interrupt)
    }
}

/// Tells on stderr each change of `conn`'s link (lost and reconnecting, connected again,
/// failed), prefixed with `label` (which connection), until the connection goes away.
pub fn report_link(conn: &Connection, label: &str) {
    let mut link = conn.link();
    let conn = conn.clone();
    let label = label.to_owned();
    tokio::spawn(async move {
        // Only changes from now on: the state at the start is the connection just opened.
        link.borrow_and_update();
        while link.changed().await.is_ok() {
            let state = link.borrow_and_update().clone();
            let url = conn.url();
            match state {
                LinkState::Connected => eprintln!("{label}connected again to {url}"),
                LinkState::Reconnecting { attempt, error } => eprintln!(
                    "{label}connection to {url} lost, reconnecting (attempt {attempt}): {error}"
                ),
                LinkState::Failed { error } => {
                    eprintln!("{label}connection to {url} failed for good: {error}");
                }
                LinkState::Closed => return,
                other => eprintln!("{label}connection to {url}: {other}"),
            }
        }
    });
}

/// Rides through a run of recoverable errors: each waits as `policy` says, and the run gives up
/// once its deadline (or its retries) is spent. A success ends the run.
pub struct Backoff {
    policy: RetryPolicy,
    run: Option<(Instant, kombu::Delays)>,
}

impl Backoff {
    /// Retries under the default policy: a broker back within half a minute is ridden through.
    pub fn new() -> Backoff {
        Backoff {
            policy: RetryPolicy::default(),
            run: None,
        }
    }

    /// Whether `error` is worth another try (recoverable, and the run not spent); if so, waits
    /// before returning `true`, after saying on stderr what failed (`what`).
    pub async fn retry(&mut self, error: &Error, what: &str) -> bool {
        if !error.is_recoverable() || error.kind() == ErrorKind::StaleDelivery {
            return false;
        }
        let (started, delays) = self
            .run
            .get_or_insert_with(|| (Instant::now(), self.policy.delays()));
        let Some(delay) = delays.next_within(started.elapsed()) else {
            return false;
        };
        // A write the broker may have done: trying it again may do it twice.
        let twice = if error.outcome_unknown() {
            " (the broker may have done it already: it may happen twice)"
        } else {
            ""
        };
        eprintln!(
            "warning: {what}: {error:#}; trying again in {} ms{twice}",
            delay.as_millis()
        );
        tokio::time::sleep(delay).await;
        true
    }

    /// A success: the next error starts a new run.
    pub fn reset(&mut self) {
        self.run = None;
    }
}

/// The warning printed for a settlement the broker can no longer apply (its channel or
/// connection was lost): the message is given again, to this consumer or another.
pub fn stale_warning(what: &str, error: &Error) {
    eprintln!("warning: {what}: {error:#}; so it may be seen twice");
}
