//! The driver's errors as kombu-rs errors: which are recoverable (the server is away, a
//! primary is stepping down), and which writes may have happened anyway.

use kombu_core::{Error, ErrorKind};
use mongodb::error::{Error as DriverError, ErrorKind as DriverKind};

/// Server error codes that mean "try again": no primary now, shutting down, a network
/// problem between members (MongoDB's retryable codes).
const RETRYABLE_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

/// What an operation did to the store, for [`driver_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Reads only: a lost reply changed nothing.
    Read,
    /// Writes: a reply lost on the way (the connection broke after the request was sent)
    /// leaves it unknown whether the server did it.
    Write,
}

/// Whether the error says the connection was lost (the request may have reached the server).
pub(crate) fn is_link_loss(err: &DriverError) -> bool {
    matches!(
        err.kind.as_ref(),
        DriverKind::Io(_) | DriverKind::ConnectionPoolCleared { .. }
    )
}

/// The driver's error as kombu-rs's: `label` names the server (masked URL), `what` the
/// operation.
pub(crate) fn driver_error(label: &str, what: &str, op: Op, err: DriverError) -> Error {
    let message = format!("mongodb {label}: {what}");
    let link_lost = is_link_loss(&err);
    let (kind, recoverable) = match err.kind.as_ref() {
        DriverKind::Io(_) | DriverKind::ConnectionPoolCleared { .. } => {
            (ErrorKind::Connection, true)
        }
        DriverKind::ServerSelection { .. } | DriverKind::DnsResolve { .. } => {
            (ErrorKind::Connection, true)
        }
        DriverKind::Authentication { .. } => (ErrorKind::AccessRefused, false),
        DriverKind::InvalidArgument { .. } | DriverKind::InvalidTlsConfig { .. } => {
            (ErrorKind::Config, false)
        }
        DriverKind::Command(command) if RETRYABLE_CODES.contains(&command.code) => {
            (ErrorKind::Connection, true)
        }
        _ if err.contains_label("RetryableWriteError")
            || err.contains_label("TransientTransactionError") =>
        {
            (ErrorKind::Connection, true)
        }
        _ => (ErrorKind::Broker, false),
    };
    let mut error = Error::new(kind, message)
        .with_source(err)
        .set_recoverable(recoverable);
    if link_lost && op == Op::Write {
        error = error.with_outcome_unknown();
    }
    error
}
