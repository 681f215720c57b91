//! The driver's errors as kombu-rs errors: which are recoverable (the server is away, a
//! primary is stepping down), and which writes may have happened anyway.

use kombu_core::{Error, ErrorKind};
use mongodb::error::{Error as DriverError, ErrorKind as DriverKind, WriteFailure};

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

/// Retryable codes that mean the server stopped in the middle of an operation: a write may
/// have been applied (in part, for a multi-document one).
const INTERRUPTED_CODES: &[i32] = &[89, 91, 189, 262, 9001, 11600, 11602];

/// The driver's error as kombu-rs's: `label` names the server (masked URL), `what` the
/// operation.
pub(crate) fn driver_error(label: &str, what: &str, op: Op, err: DriverError) -> Error {
    let message = format!("mongodb {label}: {what}");
    // Whether a write may have been applied though it failed.
    let mut maybe_applied = is_link_loss(&err);
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
            maybe_applied |= INTERRUPTED_CODES.contains(&command.code);
            (ErrorKind::Connection, true)
        }
        // The write was applied on the server that answered, not (yet) as the write concern
        // asked (a replication timeout, a failover).
        DriverKind::Write(WriteFailure::WriteConcernError(_)) => {
            maybe_applied = true;
            (ErrorKind::Timeout, true)
        }
        DriverKind::InsertMany(failure) if failure.write_concern_error.is_some() => {
            maybe_applied = true;
            (ErrorKind::Timeout, true)
        }
        _ if err.contains_label("RetryableWriteError")
            || err.contains_label("TransientTransactionError") =>
        {
            maybe_applied = true;
            (ErrorKind::Connection, true)
        }
        _ => (ErrorKind::Broker, false),
    };
    let mut error = Error::new(kind, message)
        .with_source(err)
        .set_recoverable(recoverable);
    if maybe_applied && op == Op::Write {
        error = error.with_outcome_unknown();
    }
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> DriverError {
        DriverError::from(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        ))
    }

    #[test]
    fn a_lost_connection_is_recoverable_and_leaves_a_write_unknown() {
        let read = driver_error("l", "find", Op::Read, io());
        assert!(read.is_recoverable() && !read.outcome_unknown());
        let write = driver_error("l", "publish", Op::Write, io());
        assert!(write.is_recoverable() && write.outcome_unknown());
        assert_eq!(write.kind(), ErrorKind::Connection);
    }

    #[test]
    fn other_errors_are_not_retried() {
        let other = driver_error("l", "x", Op::Write, DriverError::custom("x"));
        assert!(!other.is_recoverable() && !other.outcome_unknown());
    }
}
