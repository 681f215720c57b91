//! lapin's errors as kombu-core [`Error`]s: AMQP reply codes become kinds (404 NotFound, 406
//! PreconditionFailed, 403 AccessRefused, 312 Unroutable), lost connections are recoverable
//! [`ErrorKind::Connection`] errors.

use kombu_core::{Error, ErrorKind};
use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};

/// Whether the error ended the connection (as opposed to one channel or one operation).
pub(crate) fn is_connection_loss(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::MissingHeartbeatError
        | lapin::ErrorKind::InvalidConnectionState(_) => true,
        lapin::ErrorKind::ProtocolError(p) => matches!(p.kind(), AMQPErrorKind::Hard(_)),
        _ => false,
    }
}

/// `e` as a kombu-core error, with `context` (the operation and its entity).
pub(crate) fn map(e: lapin::Error, context: impl std::fmt::Display) -> Error {
    let kind = match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => ErrorKind::NotFound,
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => ErrorKind::PreconditionFailed,
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => ErrorKind::AccessRefused,
            AMQPErrorKind::Soft(AMQPSoftError::NOROUTE) => ErrorKind::Unroutable,
            AMQPErrorKind::Soft(_) => ErrorKind::Broker,
            AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED) => ErrorKind::Connection,
            AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED) => ErrorKind::AccessRefused,
            AMQPErrorKind::Hard(_) => ErrorKind::Protocol,
        },
        lapin::ErrorKind::IOError(_)
        | lapin::ErrorKind::MissingHeartbeatError
        | lapin::ErrorKind::InvalidConnectionState(_) => ErrorKind::Connection,
        lapin::ErrorKind::InvalidChannelState(..) | lapin::ErrorKind::InvalidChannel(_) => {
            ErrorKind::Closed
        }
        lapin::ErrorKind::AuthProviderError(_) => ErrorKind::AccessRefused,
        lapin::ErrorKind::ParsingError(_) | lapin::ErrorKind::InvalidProtocolVersion(_) => {
            ErrorKind::Protocol
        }
        _ => ErrorKind::Broker,
    };
    Error::new(kind, context.to_string()).with_source(e)
}
