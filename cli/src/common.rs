//! What every command shares: the broker URL, connecting, errors with hints, headers, progress.

use std::fmt;
use std::io::IsTerminal as _;
use std::sync::Once;

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};
use kombu::{BrokerUrl, Connection, ErrorKind, Headers, Queue, Value};

use crate::cli::Global;

/// The URL used when neither `--url` nor `$KOMBU_URL` gives one.
pub const DEFAULT_URL: &str = "sqlite://kombu.db";

/// A kombu error carried through anyhow: its text (which already includes its cause, so the
/// chain does not print it twice) and its kind (for the hint).
#[derive(Debug)]
pub struct BrokerError {
    pub kind: ErrorKind,
    text: String,
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for BrokerError {}

impl From<kombu::Error> for BrokerError {
    fn from(e: kombu::Error) -> Self {
        // `{:#}`: the error with its causes (its `{}` leaves the source out).
        BrokerError {
            kind: e.kind(),
            text: format!("{e:#}"),
        }
    }
}

impl BrokerError {
    /// The error as the cause of `context`: what the context already says (the URL, the queue,
    /// the operation) is not repeated.
    fn under(mut self, context: &str) -> Self {
        self.text = tidy_cause(&self.text, context, self.kind);
        self
    }
}

/// `.ctx("what failed")` on kombu results: an anyhow error that keeps the kind for the hint.
pub trait Ctx<T> {
    fn ctx(self, what: impl fmt::Display + Send + Sync + 'static) -> anyhow::Result<T>;
}

impl<T, E: Into<kombu::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl fmt::Display + Send + Sync + 'static) -> anyhow::Result<T> {
        self.map_err(|e| {
            let what = what.to_string();
            anyhow::Error::new(BrokerError::from(e.into()).under(&what)).context(what)
        })
    }
}

/// Every [`ErrorKind`]'s label as kombu errors print it first.
const KIND_LABELS: [&str; 14] = [
    "connection error",
    "timed out",
    "closed",
    "invalid URL",
    "invalid configuration",
    "not found",
    "precondition failed",
    "access refused",
    "unsupported",
    "codec error",
    "settlement error",
    "unroutable",
    "protocol error",
    "broker error",
];

/// Lower case, with `-` and `_` as spaces: `NOT_FOUND` and `not found` compare equal.
fn normalized(text: &str) -> String {
    text.to_lowercase().replace(['-', '_'], " ")
}

/// Whether `segment` only names a URL ("connect to redis://h/0", "redis redis://h/0"): a URL
/// and at most three other words.
fn names_a_url(segment: &str) -> bool {
    let words: Vec<&str> = segment.split_whitespace().collect();
    words.iter().any(|w| w.contains("://")) && words.len() <= 4
}

/// A kombu error's text (`kind: context: context: source`) cut down to what `context` does
/// not already say: the `": "`-separated parts that only name a URL when `context` names one,
/// parts that another part or the context already contains, and kind labels after the first
/// part are left out. Never empty: the kind label stays when nothing else does.
fn tidy_cause(cause: &str, context: &str, kind: ErrorKind) -> String {
    let parts: Vec<&str> = cause.split(": ").map(str::trim).collect();
    let norms: Vec<String> = parts.iter().map(|p| normalized(p)).collect();
    let context_norm = normalized(context);
    let context_has_url = context.contains("://");
    let mut kept: Vec<&str> = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let norm = &norms[i];
        if part.is_empty() || (context_has_url && names_a_url(part)) {
            continue;
        }
        if context_norm.contains(norm.as_str()) {
            continue;
        }
        let elsewhere = norms.iter().enumerate().any(|(j, other)| {
            j != i && other.contains(norm.as_str()) && (other.len() > norm.len() || j < i)
        });
        if elsewhere {
            continue;
        }
        if i > 0 && KIND_LABELS.contains(part) {
            continue;
        }
        kept.push(part);
    }
    if kept.is_empty() {
        return kind.to_string();
    }
    kept.join(": ")
}

/// An error that carries its own hint (what to try), printed after it.
#[derive(Debug)]
pub struct Hinted {
    text: String,
    hint: String,
}

impl fmt::Display for Hinted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Hinted {}

/// An error with its own hint.
pub fn hinted(text: impl Into<String>, hint: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Hinted {
        text: text.into(),
        hint: hint.into(),
    })
}

/// Which option named the URL an error is about (`--url`, `--from`, `--to`), for the hint.
#[derive(Debug)]
pub struct Via {
    option: &'static str,
    text: String,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What `memory://` errors add: the broker is gone when the command ends.
pub const MEMORY_NOTE: &str = "memory:// lives only as long as one kombu command, so nothing an \
     earlier command declared or published is there: use sqlite://FILE (or a broker) to keep \
     queues between commands";

/// What to try: an error's own hint, else one from the kind of the first kombu error in the
/// chain.
pub fn hint_for(err: &anyhow::Error) -> Option<String> {
    if let Some(h) = err.downcast_ref::<Hinted>() {
        return Some(h.hint.clone());
    }
    let kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<BrokerError>())
        .map(|e| e.kind)?;
    let option = match err.downcast_ref::<Via>() {
        Some(via) => via.option,
        None => "--url or $KOMBU_URL",
    };
    let text = format!("{err:#}");
    Some(match kind {
        ErrorKind::InvalidUrl => format!(
            "try a URL like sqlite:///absolute/path.db, sqlite://relative.db, \
             redis://host:6379/0, amqp://user:password@host:5672// or \
             mongodb://host:27017/database ({option})"
        ),
        ErrorKind::Connection if text.contains("sqlite") => format!(
            "check that the database file's directory exists and is writable \
             (sqlite:///absolute/path.db, or sqlite://relative.db from the current directory; \
             {option})"
        ),
        ErrorKind::Config if text.contains("sqlite") && text.contains("directory") => format!(
            "check that the database file's directory exists and is writable \
             (sqlite:///absolute/path.db, or sqlite://relative.db from the current directory; \
             {option})"
        ),
        ErrorKind::Connection => format!(
            "check that the broker is running and reachable and that the URL ({option}) is right"
        ),
        ErrorKind::Timeout => "the broker did not answer in time; try again".to_owned(),
        ErrorKind::Closed => "the connection was closed; try again".to_owned(),
        ErrorKind::NotFound if text.contains("memory://") => MEMORY_NOTE.to_owned(),
        ErrorKind::NotFound => "check the name, or create it first with `kombu declare`".to_owned(),
        ErrorKind::PreconditionFailed => {
            "it exists with other settings: declare it with those (--transient for a \
             non-durable one), or delete it first with `kombu delete`"
                .to_owned()
        }
        ErrorKind::AccessRefused => {
            format!("check the user name and password in the URL ({option})")
        }
        ErrorKind::Unsupported => "this transport cannot do that; leave that option out".to_owned(),
        ErrorKind::Codec if text.contains("exceeds the limit") => {
            "raise the bound with --max-size BYTES if the message is expected to be that large"
                .to_owned()
        }
        ErrorKind::Codec => "check --serializer, --compression and --accept against the message \
             (the body must be JSON text for json, msgpack and yaml)"
            .to_owned(),
        ErrorKind::Unroutable => "no queue takes it: create the queue first (--declare-queue \
             QUEUE, or `kombu declare queue QUEUE`) or bind one to the exchange"
            .to_owned(),
        _ => return None,
    })
}

/// The URL with its password hidden; for text that does not even parse, only its scheme.
pub fn mask(raw: &str) -> String {
    match BrokerUrl::parse_failover(raw) {
        Ok(urls) => urls
            .iter()
            .map(BrokerUrl::masked)
            .collect::<Vec<_>>()
            .join(";"),
        Err(_) => match raw.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…"),
            None => "(unparsable URL)".to_owned(),
        },
    }
}

/// Every URL given: `--url`s, else `$KOMBU_URL`, else [`DEFAULT_URL`] (and a note on stderr
/// saying so, once).
pub fn urls(global: &Global) -> Vec<String> {
    if !global.urls.is_empty() {
        return global.urls.clone();
    }
    match std::env::var("KOMBU_URL") {
        Ok(url) if !url.trim().is_empty() => vec![url],
        _ => {
            static NOTED: Once = Once::new();
            NOTED.call_once(|| eprintln!("using {DEFAULT_URL} (no --url or KOMBU_URL)"));
            vec![DEFAULT_URL.to_owned()]
        }
    }
}

/// The one URL a command works on.
pub fn url(global: &Global) -> anyhow::Result<String> {
    let mut all = urls(global);
    if all.len() > 1 {
        return Err(anyhow!(
            "--url was given {} times; this command uses one broker (only `bench` takes \
             several; for failover write one URL with `;` between the alternatives)",
            all.len()
        ));
    }
    // ok: `urls` never returns an empty list, and a 2+ list returned above.
    Ok(all.pop().unwrap_or_else(|| DEFAULT_URL.to_owned()))
}

/// Connects, with the URL (masked) in the error.
pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    connect_via(url, "--url or $KOMBU_URL").await
}

/// Connects to the URL `option` gave; the error's hint names that option.
pub async fn connect_via(url: &str, option: &'static str) -> anyhow::Result<Connection> {
    let what = format!("cannot connect to {}", mask(url));
    match Connection::open(url).await {
        Ok(conn) => Ok(conn),
        Err(e) => Err(anyhow::Error::new(BrokerError::from(e).under(&what))
            .context(Via { option, text: what })),
    }
}

/// Fails with a one-line error and a hint when `queue` exists nowhere on the broker (`what_to_do`
/// is the hint: check the name, or how to create it).
pub async fn require_queue(
    conn: &Connection,
    queue: &str,
    masked: &str,
    what_to_do: &str,
) -> anyhow::Result<()> {
    let exists = conn
        .queue_exists(queue)
        .await
        .ctx(format!("cannot look up queue {queue:?} on {masked}"))?;
    if exists {
        return Ok(());
    }
    let text = format!("queue {queue:?} does not exist on {masked}");
    let hint = if conn.url().scheme() == "memory" {
        format!("{MEMORY_NOTE}; {what_to_do}")
    } else {
        what_to_do.to_owned()
    };
    Err(hinted(text, hint))
}

/// Parses `K=V`: `V` is JSON when it parses as JSON, else a string.
pub fn parse_header(text: &str) -> anyhow::Result<(String, Value)> {
    let Some((key, value)) = text.split_once('=') else {
        return Err(anyhow!(
            "header {text:?} is not K=V (for example --header level=3)"
        ));
    };
    if key.is_empty() {
        return Err(anyhow!("header {text:?} has an empty name"));
    }
    let value = match serde_json::from_str::<serde_json::Value>(value) {
        Ok(json) => Value::from_json(json),
        Err(_) => Value::String(value.to_owned()),
    };
    Ok((key.to_owned(), value))
}

/// Parses every `K=V`.
pub fn parse_headers(texts: &[String]) -> anyhow::Result<Headers> {
    texts.iter().map(|t| parse_header(t)).collect()
}

/// Declares a queue (and its exchange, which must match), accepting a queue that already exists
/// with other settings: then only its bindings are added.
pub async fn declare_queue_lenient(conn: &Connection, queue: &Queue) -> kombu::Result<()> {
    if let Some(exchange) = &queue.exchange
        && !exchange.is_default()
    {
        conn.declare_exchange(exchange).await?;
    }
    match conn.declare_queue(queue).await {
        Err(e) if e.kind() == ErrorKind::PreconditionFailed => {
            for binding in queue.bindings() {
                conn.bind(&queue.name, &binding).await?;
            }
            Ok(())
        }
        other => other,
    }
}

/// Warns on stderr about each option the broker accepts but does not honour.
pub fn warn_unhonoured(conn: &Connection, masked: &str, options: &[(bool, &str, bool)]) {
    for (given, option, honoured) in options {
        if *given && !*honoured {
            eprintln!(
                "warning: {masked} ({}) does not honour {option}; it is stored but has no effect",
                conn.url().scheme()
            );
        }
    }
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress(len: Option<u64>, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::no_length(),
    };
    let template = match len {
        Some(_) => "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        None => "{prefix} [{elapsed_precise}] {spinner} {pos} ({per_sec})",
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_prefix(what.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_json_or_strings() {
        let (k, v) = parse_header("level=3").unwrap();
        assert_eq!((k.as_str(), v), ("level", Value::Int(3)));
        assert_eq!(
            parse_header("a=b=c").unwrap().1,
            Value::String("b=c".into())
        );
        assert_eq!(parse_header("t=true").unwrap().1, Value::Bool(true));
        assert_eq!(
            parse_header("s=\"3\"").unwrap().1,
            Value::String("3".into())
        );
        assert!(parse_header("novalue").is_err());
        assert!(parse_header("=v").is_err());
    }

    #[test]
    fn causes_leave_out_what_the_context_says() {
        let cause = "connection error: connect to redis://127.0.0.1:1/0: redis \
                     redis://127.0.0.1:1/0: cannot connect: Connection refused (os error 111)";
        assert_eq!(
            tidy_cause(
                cause,
                "cannot connect to redis://127.0.0.1:1/0",
                ErrorKind::Connection
            ),
            "connection error: Connection refused (os error 111)"
        );
        let cause = "connection error: connect to amqp://guest:**@127.0.0.1:1//: connect to \
                     amqp://127.0.0.1:1//: connection error: connect to amqp://127.0.0.1:1//: IO \
                     error: Connection refused (os error 111)";
        assert_eq!(
            tidy_cause(
                cause,
                "cannot connect to amqp://guest:**@127.0.0.1:1//",
                ErrorKind::Connection
            ),
            "connection error: IO error: Connection refused (os error 111)"
        );
        let cause = "not found: size of queue \"q\": protocol error: AMQP soft error: NOT-FOUND: \
                     NOT_FOUND - no queue 'q' in vhost '/'";
        assert_eq!(
            tidy_cause(
                cause,
                "cannot get the size of queue \"q\" on amqp://h//",
                ErrorKind::NotFound
            ),
            "AMQP soft error: NOT_FOUND - no queue 'q' in vhost '/'"
        );
        // A URL in a longer sentence stays; so does a cause the context does not name.
        let cause = "invalid URL: no transport for scheme \"foo\" in foo://h/x (registered: amqp)";
        assert_eq!(
            tidy_cause(cause, "cannot connect to foo://h/x", ErrorKind::InvalidUrl),
            cause
        );
        // Nothing left but the kind.
        assert_eq!(
            tidy_cause("timed out: declare", "cannot declare", ErrorKind::Timeout),
            "timed out"
        );
    }

    #[test]
    fn masks_passwords_even_in_bad_urls() {
        assert_eq!(mask("foo://u:secret@h/x"), "foo://u:**@h/x");
        assert!(!mask("memory://u:secret@a;memory://v:secret@b").contains("secret"));
        assert!(!mask("foo bar://u:secret@h").contains("secret"));
        assert!(!mask("u:secret@h").contains("secret"));
    }
}
