//! The one error type of kombu-core.
//!
//! An [`Error`] has a [`ErrorKind`], a message with context (which operation, which queue or URL),
//! an optional source, and says whether retrying can help ([`Error::is_recoverable`]). Retry
//! loops and reconnecting consumers read that flag instead of guessing from messages.
//!
//! As the standard library's convention wants, `{}` shows the kind and the message but not the
//! source (walk [`source`](std::error::Error::source) for it, as error reporters do); `{:#}`
//! shows the whole chain on one line. A serializer's error stays the typed source of the codec
//! error it becomes ([`Error::serializer_error`]).

use std::collections::BTreeSet;
use std::fmt;

use crate::dead_letter::DeadLettered;
use crate::value::{Headers, Value};

/// What went wrong, coarsely. Transports map their own failures onto these kinds.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The broker could not be reached or the connection was lost. Recoverable.
    Connection,
    /// An operation did not finish in time. Recoverable.
    Timeout,
    /// The connection or channel was closed by this side; no more operations are possible on it.
    Closed,
    /// A URL could not be parsed, or names no registered transport.
    InvalidUrl,
    /// Configuration given by the caller is invalid (bad option, bad entity definition).
    Config,
    /// A named entity (queue, exchange) does not exist (AMQP 404 NOT_FOUND).
    NotFound,
    /// A redeclaration conflicts with the existing entity (AMQP 406 PRECONDITION_FAILED).
    PreconditionFailed,
    /// The broker refused access (AMQP 403 ACCESS_REFUSED, bad credentials).
    AccessRefused,
    /// Another connection holds the entity exclusively (AMQP 405 RESOURCE_LOCKED: another
    /// connection's exclusive queue).
    Locked,
    /// The transport cannot do this (see its [`Capabilities`](crate::Capabilities)).
    Unsupported,
    /// A body could not be encoded, decoded, compressed or decompressed, or its content type is
    /// not accepted.
    Codec,
    /// A delivery was settled twice or after its channel closed.
    Settlement,
    /// A delivery was taken on a connection that has since been lost (and reconnected): it
    /// cannot be settled any more, and need not be: the broker gives the message again (AMQP
    /// at once; a virtual transport when its lease ends, or at once when its consumer returned
    /// it). A warning for the caller, not a failure.
    StaleDelivery,
    /// A message was returned by the broker as unroutable (mandatory publish).
    Unroutable,
    /// The broker answered with something this library did not expect.
    Protocol,
    /// Any other broker-side failure.
    Broker,
    /// A message that could not be consumed was moved aside to a dead-letter place; the
    /// consumer goes on with the next one. Not a failure of the consumer: the error carries
    /// where the message went ([`Error::dead_lettered`]).
    DeadLettered,
}

impl ErrorKind {
    /// Whether an error of this kind is, by default, worth retrying after reconnecting.
    pub fn is_recoverable(self) -> bool {
        matches!(self, ErrorKind::Connection | ErrorKind::Timeout)
    }

    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection error",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Closed => "closed",
            ErrorKind::InvalidUrl => "invalid URL",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::NotFound => "not found",
            ErrorKind::PreconditionFailed => "precondition failed",
            ErrorKind::AccessRefused => "access refused",
            ErrorKind::Locked => "resource locked",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Codec => "codec error",
            ErrorKind::Settlement => "settlement error",
            ErrorKind::StaleDelivery => "stale delivery",
            ErrorKind::Unroutable => "unroutable",
            ErrorKind::Protocol => "protocol error",
            ErrorKind::Broker => "broker error",
            ErrorKind::DeadLettered => "dead-lettered",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every fallible kombu-core operation.
pub struct Error {
    kind: ErrorKind,
    recoverable: bool,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    /// Where the message went, for [`ErrorKind::DeadLettered`].
    dead: Option<Box<DeadLettered>>,
    /// A publish failed after the broker may have stored the message.
    outcome_unknown: bool,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message giving context.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            recoverable: kind.is_recoverable(),
            message: message.into(),
            source: None,
            dead: None,
            outcome_unknown: false,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Overrides whether retrying can help.
    pub fn set_recoverable(mut self, recoverable: bool) -> Self {
        self.recoverable = recoverable;
        self
    }

    /// Prefixes the message with more context (for example the operation and queue).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = if self.message.is_empty() {
            context.to_string()
        } else {
            format!("{context}: {}", self.message)
        };
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether reconnecting and retrying the operation can succeed.
    pub fn is_recoverable(&self) -> bool {
        self.recoverable
    }

    /// Marks a failed publish (or other write) as one the broker may have carried out anyway:
    /// the request was sent, the answer was lost (the connection dropped, or no confirm came
    /// in time). Retrying it may store the message twice, so publish retries leave such an
    /// error to the caller unless told that duplicates are acceptable.
    pub fn with_outcome_unknown(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }

    /// Whether the broker may have carried out the failed operation anyway (see
    /// [`Error::with_outcome_unknown`]). `false` means it certainly did not.
    pub fn outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    /// The message, without kind or source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The serializer's error behind an [`ErrorKind::Codec`] error, to match on what it was:
    ///
    /// ```
    /// use kombu_core::serializers::{Accept, Error as SerializerError, Registry};
    ///
    /// let json_only = Accept::from_content_types(["application/json"]);
    /// let refused = Registry::default()
    ///     .check_accept(Some("application/x-yaml"), Some(&json_only))
    ///     .map_err(kombu_core::Error::from)
    ///     .unwrap_err();
    /// assert!(matches!(
    ///     refused.serializer_error(),
    ///     Some(SerializerError::ContentDisallowed { .. })
    /// ));
    /// ```
    pub fn serializer_error(&self) -> Option<&kombu_serializers::Error> {
        let source = self.source.as_deref()?;
        source.downcast_ref::<kombu_serializers::Error>()
    }

    /// An [`ErrorKind::DeadLettered`] error: a message was moved aside, as `record` says.
    pub fn from_dead_lettered(record: DeadLettered) -> Self {
        let mut error = Error::new(ErrorKind::DeadLettered, record.to_string());
        error.dead = Some(Box::new(record));
        error
    }

    /// Where the message went, for an [`ErrorKind::DeadLettered`] error.
    pub fn dead_lettered(&self) -> Option<&DeadLettered> {
        self.dead.as_deref()
    }

    /// Shorthand for an [`ErrorKind::Closed`] error.
    pub fn closed(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::Closed, what)
    }

    /// Shorthand for an [`ErrorKind::Config`] error.
    pub fn config(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, what)
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error.
    pub fn unsupported(what: impl Into<String>) -> Self {
        Error::new(ErrorKind::Unsupported, what)
    }

    /// An [`ErrorKind::PreconditionFailed`] error for redeclaring `entity` (for example
    /// `queue "jobs"`) with settings other than those it exists with. Each difference is
    /// `(setting, value it exists with, value asked for)`, named once:
    ///
    /// ```
    /// # use kombu_core::{Error, ErrorKind};
    /// let e = Error::inequivalent(
    ///     format_args!("queue {:?}", "jobs"),
    ///     [("durable".to_owned(), "true".to_owned(), "false".to_owned())],
    /// );
    /// assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
    /// assert_eq!(
    ///     e.to_string(),
    ///     "precondition failed: queue \"jobs\" exists with durable=true; you asked for durable=false"
    /// );
    /// ```
    ///
    /// With no difference given, says only that the settings differ.
    pub fn inequivalent(
        entity: impl fmt::Display,
        differences: impl IntoIterator<Item = (String, String, String)>,
    ) -> Self {
        let (mut existing, mut requested) = (Vec::new(), Vec::new());
        for (setting, has, asked) in differences {
            existing.push(format!("{setting}={has}"));
            requested.push(format!("{setting}={asked}"));
        }
        let message = if existing.is_empty() {
            format!(
                "{entity} exists with other settings (durable, exclusive, auto_delete or \
                 x-arguments) than asked for"
            )
        } else {
            format!(
                "{entity} exists with {}; you asked for {}",
                existing.join(", "),
                requested.join(", ")
            )
        };
        Error::new(ErrorKind::PreconditionFailed, message)
    }

    /// [`Error::inequivalent`] from the settings `entity` exists with and those asked for, as
    /// tables of setting name to value (`durable`, `x-max-priority`, ...; a `kombu-rs:` prefix
    /// on a name is left out). Names the settings whose values differ; a setting missing on
    /// one side reads `none`, a string value is shown without quotes.
    pub fn inequivalent_settings(
        entity: impl fmt::Display,
        existing: &Headers,
        requested: &Headers,
    ) -> Self {
        let names: BTreeSet<&String> = existing.keys().chain(requested.keys()).collect();
        let differences = names.into_iter().filter_map(|name| {
            let (has, asked) = (existing.get(name), requested.get(name));
            (has != asked).then(|| {
                let setting = name.strip_prefix("kombu-rs:").unwrap_or(name);
                (setting.to_owned(), show_setting(has), show_setting(asked))
            })
        });
        Error::inequivalent(entity, differences)
    }
}

/// A setting's value as [`Error::inequivalent_settings`] shows it.
fn show_setting(value: Option<&Value>) -> String {
    match value {
        None => "none".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}")),
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind)
            .field("recoverable", &self.recoverable)
            .field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

/// `{}`: the kind and the message, not the source (the standard library's convention: a
/// reporter walks [`source`](std::error::Error::source)). `{:#}`: the whole chain, each cause
/// after a `: `.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if f.alternate() {
            let mut cause = std::error::Error::source(self);
            while let Some(e) = cause {
                write!(f, ": {e}")?;
                cause = e.source();
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

/// An [`ErrorKind::Codec`] error whose source is the serializer's error, kept typed
/// ([`Error::serializer_error`]).
impl From<kombu_serializers::Error> for Error {
    fn from(err: kombu_serializers::Error) -> Self {
        use kombu_serializers::Error as E;
        let what = match &err {
            E::UnknownSerializer { .. } => "unknown serializer",
            E::UnknownCompression { .. } => "unknown compression",
            E::ContentDisallowed { .. } => "content type not accepted",
            E::Encode { .. } => "cannot encode the body",
            E::Decode { .. } => "cannot decode the body",
            E::Signature { .. } => "signature refused",
            E::InvalidKey { .. } => "unusable signing keys",
            E::Compress { .. } => "cannot compress the body",
            E::Decompress { .. } => "cannot decompress the body",
            E::TooLarge { .. } => "body too large once decompressed",
            _ => "serializer error",
        };
        Error::new(ErrorKind::Codec, what).with_source(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_kind_and_context_and_alternate_adds_the_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = Error::new(ErrorKind::Connection, "connect memory://x")
            .with_source(io)
            .context("open");
        // `{}` does not repeat the source (std convention); `{:#}` shows the chain.
        assert_eq!(
            err.to_string(),
            "connection error: open: connect memory://x"
        );
        assert_eq!(
            format!("{err:#}"),
            "connection error: open: connect memory://x: refused"
        );
        let source = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("refused"));
        assert!(err.is_recoverable());
        assert!(!Error::config("bad").is_recoverable());
        assert!(
            !Error::new(ErrorKind::Timeout, "t")
                .set_recoverable(false)
                .is_recoverable()
        );
    }

    #[test]
    fn a_serializer_error_stays_a_typed_source() {
        let json_only = kombu_serializers::Accept::from_content_types(["application/json"]);
        let refused = kombu_serializers::Registry::default()
            .check_accept(Some("application/x-yaml"), Some(&json_only))
            .unwrap_err();
        let err = Error::from(refused);
        assert_eq!(err.kind(), ErrorKind::Codec);
        assert!(!err.is_recoverable());
        let source = std::error::Error::source(&err).unwrap();
        assert!(matches!(
            source.downcast_ref::<kombu_serializers::Error>(),
            Some(kombu_serializers::Error::ContentDisallowed { .. })
        ));
        assert!(matches!(
            err.serializer_error(),
            Some(kombu_serializers::Error::ContentDisallowed { .. })
        ));
        // The source's text is in the chain, once, not in `{}`.
        assert!(!err.to_string().contains("Refusing"), "{err}");
        assert_eq!(format!("{err:#}").matches("Refusing").count(), 1, "{err:#}");
    }

    #[test]
    fn configuration_mistakes_are_not_recoverable() {
        assert!(!Error::config("bad option").is_recoverable());
        assert!(!Error::new(ErrorKind::InvalidUrl, "bad URL").is_recoverable());
        assert!(!ErrorKind::Config.is_recoverable());
        assert!(!ErrorKind::InvalidUrl.is_recoverable());
        let bad_option = crate::BrokerUrl::parse("memory://x?visibility_timeout=soon")
            .unwrap()
            .query_seconds("visibility_timeout")
            .unwrap_err();
        assert!(!bad_option.is_recoverable(), "{bad_option}");
    }

    #[test]
    fn inequivalent_names_each_differing_setting_once() {
        let settings = |pairs: &[(&str, Value)]| -> Headers {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect()
        };
        let existing = settings(&[
            ("kombu-rs:durable", Value::Bool(true)),
            ("kombu-rs:exclusive", Value::Bool(false)),
            ("x-dead-letter-exchange", Value::from("dlx")),
        ]);
        let requested = settings(&[
            ("kombu-rs:durable", Value::Bool(false)),
            ("kombu-rs:exclusive", Value::Bool(false)),
            ("x-dead-letter-exchange", Value::from("dlx")),
            ("x-max-priority", Value::Int(5)),
        ]);
        let e = Error::inequivalent_settings("queue \"jobs\"", &existing, &requested);
        assert_eq!(e.kind(), ErrorKind::PreconditionFailed);
        assert_eq!(
            e.message(),
            "queue \"jobs\" exists with durable=true, x-max-priority=none; you asked for \
             durable=false, x-max-priority=5"
        );
        assert_eq!(
            e.to_string().matches("durable").count(),
            2,
            "each value named once: {e}"
        );
        let e = Error::inequivalent("queue \"q\"", []);
        assert!(e.message().contains("other settings"), "{e}");
    }
}
