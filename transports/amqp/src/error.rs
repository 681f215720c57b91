//! lapin's errors as kombu-core [`Error`]s: AMQP reply codes become kinds (404 NotFound, 406
//! PreconditionFailed, 403 AccessRefused, 405 Locked, 312 Unroutable), lost connections are recoverable
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

/// `e` as a kombu-core error, with `context` (the operation and its entity). A
/// PRECONDITION_FAILED for an inequivalent redeclaration becomes kombu-core's sentence naming
/// the setting and both values ([`Error::inequivalent`]), alone: the broker's reply says the
/// same, so it is not repeated as the cause.
pub(crate) fn map(e: lapin::Error, context: impl std::fmt::Display) -> Error {
    if let lapin::ErrorKind::ProtocolError(p) = e.kind()
        && let AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) = p.kind()
        && let Some(error) = inequivalent(p.get_message().as_str())
    {
        return error;
    }
    let kind = match e.kind() {
        lapin::ErrorKind::ProtocolError(p) => match p.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => ErrorKind::NotFound,
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED) => ErrorKind::PreconditionFailed,
            AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => ErrorKind::AccessRefused,
            AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => ErrorKind::Locked,
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

/// RabbitMQ's reply to an inequivalent redeclaration, `inequivalent arg 'durable' for queue
/// 'jobs' in vhost '/': received 'false' but current is 'true'`, as [`Error::inequivalent`]
/// (`queue "jobs" exists with durable=true; you asked for durable=false`); `None` for any
/// other text.
fn inequivalent(reply: &str) -> Option<Error> {
    let text = reply
        .strip_prefix("PRECONDITION_FAILED - ")
        .unwrap_or(reply);
    let rest = text.strip_prefix("inequivalent arg '")?;
    let (setting, rest) = rest.split_once("' for ")?;
    let (entity, rest) = rest.split_once(" '")?;
    let (name, rest) = rest.split_once("' in vhost '")?;
    let (_, rest) = rest.split_once("': received ")?;
    let (asked, has) = rest.split_once(" but current is ")?;
    Some(Error::inequivalent(
        format_args!("{entity} {name:?}"),
        [(
            setting.to_owned(),
            argument_value(has),
            argument_value(asked),
        )],
    ))
}

/// One side of RabbitMQ's comparison: `'true'`, `none`, or `the value '5' of type 'signedint'`,
/// as the bare value (`true`, `none`, `5`).
fn argument_value(text: &str) -> String {
    let text = text.trim();
    if let Some(typed) = text.strip_prefix("the value '")
        && let Some((value, _)) = typed.rsplit_once("' of type '")
    {
        return value.to_owned();
    }
    text.strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''))
        .unwrap_or(text)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rabbitmq_inequivalent_replies_name_the_setting_and_both_values() {
        for (reply, expected) in [
            (
                "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'jobs' in vhost '/': \
                 received 'false' but current is 'true'",
                "queue \"jobs\" exists with durable=true; you asked for durable=false",
            ),
            (
                "PRECONDITION_FAILED - inequivalent arg 'x-max-priority' for queue 'q' in vhost \
                 '/': received the value '5' of type 'signedint' but current is none",
                "queue \"q\" exists with x-max-priority=none; you asked for x-max-priority=5",
            ),
            (
                "PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue 'q' in vhost \
                 'v': received the value 'classic' of type 'longstr' but current is the value \
                 'quorum' of type 'longstr'",
                "queue \"q\" exists with x-queue-type=quorum; you asked for \
                 x-queue-type=classic",
            ),
            (
                "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'logs' in vhost '/': \
                 received 'fanout' but current is 'direct'",
                "exchange \"logs\" exists with type=direct; you asked for type=fanout",
            ),
        ] {
            let e = inequivalent(reply).expect(reply);
            assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
            assert_eq!(e.message(), expected);
        }
        assert!(inequivalent("PRECONDITION_FAILED - unknown delivery tag 1").is_none());
    }
}
