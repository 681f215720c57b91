//! URL options: the database file (or `:memory:`) and the query options of the crate
//! documentation, parsed once into [`Options`].

use std::path::PathBuf;
use std::time::Duration;

use kombu_core::{BrokerUrl, Error, ErrorKind, Result};

/// Options parsed from a URL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Options {
    /// `None` for `:memory:`.
    pub(crate) path: Option<PathBuf>,
    pub(crate) visibility_timeout: Duration,
    pub(crate) polling_interval: Duration,
    pub(crate) busy_timeout: Duration,
    pub(crate) synchronous_full: bool,
    /// Payloads longer than this (bytes) are not parsed: the row is moved to the queue's
    /// dead-letter queue as unreadable.
    pub(crate) max_payload_size: u64,
}

/// The default [`Options::max_payload_size`]: 128 MiB, above the envelope of a 64 MiB body
/// (base64 makes it about 85 MiB).
pub(crate) const DEFAULT_MAX_PAYLOAD_SIZE: u64 = 128 << 20;

impl Options {
    pub(crate) fn from_url(url: &BrokerUrl) -> Result<Options> {
        let scheme = url.scheme();
        if scheme != "sqlite" && scheme != "sqla+sqlite" && scheme != "sqlalchemy+sqlite" {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "{}: the SQLite transport takes sqlite://, sqla+sqlite:// and \
                     sqlalchemy+sqlite:// URLs",
                    url.masked()
                ),
            ));
        }
        let rest = url.rest();
        let mut location = rest.split_once('?').map_or(rest, |(p, _)| p);
        if scheme != "sqlite" {
            // SQLAlchemy's rule: after `sqlite://` one `/` separates, so `sqla+sqlite:///x.db`
            // is the relative `x.db` and `sqla+sqlite:////abs/x.db` the absolute `/abs/x.db`,
            // the same file Python kombu opens for the same URL.
            location = location.strip_prefix('/').unwrap_or(location);
        }
        let path = match location {
            "" | ":memory:" | "/:memory:" => None,
            p => Some(PathBuf::from(p)),
        };
        let synchronous_full = match url.query("synchronous").as_deref() {
            None | Some("normal") => false,
            Some("full") => true,
            Some(other) => {
                return Err(Error::config(format!(
                    "synchronous={other:?}: use normal or full"
                )));
            }
        };
        Ok(Options {
            path,
            visibility_timeout: url
                .query_seconds("visibility_timeout")?
                .unwrap_or(Duration::from_secs(3600)),
            polling_interval: url
                .query_seconds("polling_interval")?
                .unwrap_or(Duration::from_millis(200)),
            busy_timeout: url
                .query_seconds("busy_timeout")?
                .unwrap_or(Duration::from_secs(30)),
            synchronous_full,
            max_payload_size: url
                .query_number("max_payload_size")?
                .unwrap_or(DEFAULT_MAX_PAYLOAD_SIZE),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(url: &str) -> Result<Options> {
        Options::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn urls_name_a_file_or_memory() -> Result<()> {
        assert_eq!(
            options("sqlite:///var/lib/q.db")?.path,
            Some(PathBuf::from("/var/lib/q.db"))
        );
        assert_eq!(
            options("sqlite://relative.db")?.path,
            Some(PathBuf::from("relative.db"))
        );
        assert_eq!(options("sqlite://:memory:")?.path, None);
        // The sqla+ aliases read paths as SQLAlchemy does (and so Python kombu).
        assert_eq!(
            options("sqla+sqlite:///x.db")?.path,
            Some(PathBuf::from("x.db"))
        );
        assert_eq!(
            options("sqla+sqlite:////tmp/x.db")?.path,
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(
            options("sqlalchemy+sqlite:////tmp/x.db?visibility_timeout=2.5")?.visibility_timeout,
            Duration::from_millis(2500)
        );
        assert!(options("sqla+postgresql://h/db").is_err());
        assert!(options("sqlite:///x.db?visibility_timeout=soon").is_err());
        assert!(options("sqlite:///x.db?synchronous=off").is_err());
        assert_eq!(
            options("sqlite:///x.db")?.max_payload_size,
            DEFAULT_MAX_PAYLOAD_SIZE
        );
        assert_eq!(
            options("sqlite:///x.db?max_payload_size=1000")?.max_payload_size,
            1000
        );
        assert!(options("sqlite:///x.db?max_payload_size=-1").is_err());
        Ok(())
    }
}
