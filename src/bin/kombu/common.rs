//! What every command shares: the broker URL, connecting, errors with hints, headers, progress.

use std::fmt;
use std::io::IsTerminal as _;

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
        BrokerError {
            kind: e.kind(),
            text: e.to_string(),
        }
    }
}

/// `.ctx("what failed")` on kombu results: an anyhow error that keeps the kind for the hint.
pub trait Ctx<T> {
    fn ctx(self, what: impl fmt::Display + Send + Sync + 'static) -> anyhow::Result<T>;
}

impl<T, E: Into<kombu::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, what: impl fmt::Display + Send + Sync + 'static) -> anyhow::Result<T> {
        self.map_err(|e| anyhow::Error::new(BrokerError::from(e.into())).context(what))
    }
}

/// What to try, from the kind of the first kombu error in the chain.
pub fn hint_for(err: &anyhow::Error) -> Option<&'static str> {
    let kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<BrokerError>())
        .map(|e| e.kind)?;
    Some(match kind {
        ErrorKind::InvalidUrl => {
            "try a URL like sqlite:///absolute/path.db, sqlite://relative.db or memory:// \
             (--url or $KOMBU_URL)"
        }
        ErrorKind::Connection if format!("{err:#}").contains("sqlite") => {
            "check that the database file's directory exists and is writable (sqlite:///absolute/path.db, \
             or sqlite://relative.db from the current directory)"
        }
        ErrorKind::Connection => {
            "check that the broker is running and reachable and that the URL (--url or \
             $KOMBU_URL) is right"
        }
        ErrorKind::Timeout => "the broker did not answer in time; try again",
        ErrorKind::Closed => "the connection was closed; try again",
        ErrorKind::NotFound => "check the name, or create it first with `kombu declare`",
        ErrorKind::PreconditionFailed => {
            "it exists with other settings: use them, or delete it first with `kombu delete`"
        }
        ErrorKind::AccessRefused => "check the user name and password in the URL",
        ErrorKind::Unsupported => "this transport cannot do that; leave that option out",
        ErrorKind::Codec => {
            "check --serializer, --compression and --accept against the message (the body must \
             be JSON text for json, msgpack and yaml)"
        }
        ErrorKind::Unroutable => {
            "no queue takes it: create the queue first (--declare-queue QUEUE, or `kombu declare \
             queue QUEUE`) or bind one to the exchange"
        }
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

/// Every URL given: `--url`s, else `$KOMBU_URL`, else [`DEFAULT_URL`].
pub fn urls(global: &Global) -> Vec<String> {
    if !global.urls.is_empty() {
        return global.urls.clone();
    }
    match std::env::var("KOMBU_URL") {
        Ok(url) if !url.trim().is_empty() => vec![url],
        _ => vec![DEFAULT_URL.to_owned()],
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
    Connection::open(url)
        .await
        .ctx(format!("cannot connect to {}", mask(url)))
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
    fn masks_passwords_even_in_bad_urls() {
        assert_eq!(mask("foo://u:secret@h/x"), "foo://u:**@h/x");
        assert!(!mask("memory://u:secret@a;memory://v:secret@b").contains("secret"));
        assert!(!mask("foo bar://u:secret@h").contains("secret"));
        assert!(!mask("u:secret@h").contains("secret"));
    }
}
