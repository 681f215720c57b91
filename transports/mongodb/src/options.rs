//! URL options: the connection string handed to the driver, the database, and kombu's
//! transport options read from the query (and removed from what the driver sees).

use std::time::Duration;

use kombu_core::{BrokerUrl, Error, ErrorKind, Result};
use mongodb::options::ConnectionString;

/// kombu's default database when the URL names none.
const DEFAULT_DATABASE: &str = "kombu_default";

/// Query options that are kombu's (or kombu-rs's), not the driver's: removed from the
/// connection string before the driver parses it.
const OWN_OPTIONS: &[&str] = &[
    "visibility_timeout",
    "polling_interval",
    "ttl",
    "capped_queue_size",
    "calc_queue_size",
    "default_database",
    "messages_collection",
    "routing_collection",
    "broadcast_collection",
    "queues_collection",
    "connect_timeout",
    "change_streams",
    "max_payload_size",
    "failover_strategy",
];

/// Options parsed from a URL.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The URL without kombu's options: what the driver parses (credentials, hosts, `tls`,
    /// `authSource`, `replicaSet`, ... are the driver's).
    #[cfg(test)]
    pub(crate) driver_url: String,
    /// The connection string as the driver parsed it (no DNS lookup yet for `mongodb+srv://`).
    pub(crate) connection: ConnectionString,
    /// The database: the URL's path, else `default_database`, else `kombu_default`.
    pub(crate) database: String,
    pub(crate) visibility_timeout: Duration,
    pub(crate) polling_interval: Duration,
    /// kombu's `ttl`: write `expire_at` for every expiring message and queue and create
    /// kombu's TTL indexes, so the server removes what expired.
    pub(crate) ttl: bool,
    pub(crate) capped_queue_size: u64,
    pub(crate) calc_queue_size: bool,
    pub(crate) messages: String,
    pub(crate) routing: String,
    pub(crate) broadcast: String,
    pub(crate) queues: String,
    /// Wait with a change stream when the server has them (`change_streams=false`: poll).
    pub(crate) change_streams: bool,
    /// Payloads longer than this (bytes) are not parsed: moved to the dead-letter queue.
    pub(crate) max_payload_size: u64,
}

/// The default [`Options::max_payload_size`]: 16 MiB, MongoDB's largest document.
const DEFAULT_MAX_PAYLOAD_SIZE: u64 = 16 << 20;

/// How long an operation waits for a server it can use when the URL does not say
/// (`serverSelectionTimeoutMS`): the driver's 30 s would hold a consumer that long per
/// attempt during an outage.
pub(crate) const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

impl Options {
    pub(crate) fn from_url(url: &BrokerUrl) -> Result<Options> {
        let scheme = url.scheme();
        if scheme != "mongodb" && scheme != "mongodb+srv" {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "{}: the MongoDB transport takes mongodb:// and mongodb+srv:// URLs",
                    url.masked()
                ),
            ));
        }
        let driver_url = without_own_options(url.expose());
        let mut connection = ConnectionString::parse(&driver_url).map_err(|e| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!("{}: not a MongoDB connection string", url.masked()),
            )
            .with_source(e)
        })?;
        if let Some(timeout) = url.query_seconds("connect_timeout")? {
            connection.connect_timeout = Some(timeout);
        }
        let database = match connection.default_database.as_deref() {
            Some(db) if !db.is_empty() => db.to_owned(),
            _ => url
                .query("default_database")
                .unwrap_or_else(|| DEFAULT_DATABASE.to_owned()),
        };
        let messages = url
            .query("messages_collection")
            .unwrap_or_else(|| "messages".to_owned());
        Ok(Options {
            #[cfg(test)]
            driver_url,
            connection,
            database,
            visibility_timeout: url
                .query_seconds("visibility_timeout")?
                .unwrap_or(Duration::from_secs(3600)),
            polling_interval: url
                .query_seconds("polling_interval")?
                .unwrap_or(Duration::from_secs(1)),
            ttl: url.query_bool("ttl")?.unwrap_or(false),
            capped_queue_size: url.query_number("capped_queue_size")?.unwrap_or(100_000),
            calc_queue_size: url.query_bool("calc_queue_size")?.unwrap_or(true),
            routing: url
                .query("routing_collection")
                .unwrap_or_else(|| "messages.routing".to_owned()),
            broadcast: url
                .query("broadcast_collection")
                .unwrap_or_else(|| "messages.broadcast".to_owned()),
            queues: url
                .query("queues_collection")
                .unwrap_or_else(|| "messages.queues".to_owned()),
            messages,
            change_streams: url.query_bool("change_streams")?.unwrap_or(true),
            max_payload_size: url
                .query_number("max_payload_size")?
                .unwrap_or(DEFAULT_MAX_PAYLOAD_SIZE),
        })
    }

    /// kombu-rs's own collection of exchange declarations (Python kombu keeps exchanges in
    /// each process's memory).
    pub(crate) fn exchanges(&self) -> String {
        format!("{}.kombu_rs.exchanges", self.messages)
    }
}

/// `raw` without the query options that are kombu's, keeping every other byte as written
/// (the driver reads percent-encoding itself).
fn without_own_options(raw: &str) -> String {
    let Some((head, query)) = raw.split_once('?') else {
        return raw.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !OWN_OPTIONS.contains(&key)
        })
        .collect();
    if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::options::{HostInfo, Tls};

    fn options(url: &str) -> Result<Options> {
        Options::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn the_database_comes_from_the_path_else_the_option_else_kombus_default() -> Result<()> {
        assert_eq!(options("mongodb://127.0.0.1/jobs")?.database, "jobs");
        assert_eq!(
            options("mongodb://127.0.0.1/?default_database=other")?.database,
            "other"
        );
        assert_eq!(options("mongodb://127.0.0.1")?.database, "kombu_default");
        assert_eq!(options("mongodb://127.0.0.1/")?.database, "kombu_default");
        Ok(())
    }

    #[test]
    fn kombus_options_are_read_and_hidden_from_the_driver() -> Result<()> {
        let o = options(
            "mongodb://u:p%40ss@h1:27017,h2:27018/db?replicaSet=rs0&ttl=true&capped_queue_size=5000\
             &calc_queue_size=false&visibility_timeout=2.5&authSource=admin&polling_interval=0.1\
             &messages_collection=m&routing_collection=m.r&broadcast_collection=m.b\
             &queues_collection=m.q&connect_timeout=3&change_streams=false",
        )?;
        assert!(o.ttl && !o.calc_queue_size && !o.change_streams);
        assert_eq!(o.capped_queue_size, 5000);
        assert_eq!(o.visibility_timeout, Duration::from_millis(2500));
        assert_eq!(o.polling_interval, Duration::from_millis(100));
        assert_eq!((o.messages.as_str(), o.routing.as_str()), ("m", "m.r"));
        assert_eq!((o.broadcast.as_str(), o.queues.as_str()), ("m.b", "m.q"));
        assert_eq!(o.exchanges(), "m.kombu_rs.exchanges");
        assert_eq!(
            o.driver_url,
            "mongodb://u:p%40ss@h1:27017,h2:27018/db?replicaSet=rs0&authSource=admin"
        );
        // What the driver makes of the rest: hosts, replica set, credentials, auth source.
        let c = &o.connection;
        assert_eq!(c.replica_set.as_deref(), Some("rs0"));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(3)));
        assert!(matches!(&c.host_info, HostInfo::HostIdentifiers(hosts) if hosts.len() == 2));
        let credential = c.credential.clone().unwrap_or_default();
        assert_eq!(credential.username.as_deref(), Some("u"));
        assert_eq!(credential.password.as_deref(), Some("p@ss"));
        assert_eq!(credential.source.as_deref(), Some("admin"));
        Ok(())
    }

    #[test]
    fn srv_and_tls_urls_parse_without_a_lookup() -> Result<()> {
        let o = options(
            "mongodb+srv://user:secret@cluster0.example.net/app?tls=true&tlsCAFile=/etc/ca.pem\
             &tlsAllowInvalidCertificates=true&ttl=true",
        )?;
        assert_eq!(o.database, "app");
        assert!(o.ttl);
        assert!(matches!(
            &o.connection.host_info,
            HostInfo::DnsRecord(name) if name == "cluster0.example.net"
        ));
        assert!(matches!(
            &o.connection.tls,
            Some(Tls::Enabled(tls)) if tls.ca_file_path.as_deref()
                == Some(std::path::Path::new("/etc/ca.pem"))
                && tls.allow_invalid_certificates == Some(true)
        ));
        let plain = options("mongodb://h/db?ssl=false")?;
        assert!(matches!(plain.connection.tls, Some(Tls::Disabled)));
        Ok(())
    }

    #[test]
    fn bad_urls_and_options_fail() {
        assert!(options("redis://h/0").is_err());
        assert!(options("mongodb://h/db?ttl=maybe").is_err());
        assert!(options("mongodb://h/db?visibility_timeout=soon").is_err());
        assert!(options("mongodb://h/db?capped_queue_size=-1").is_err());
        // The driver's own checks: an SRV URL names one host, without a port.
        assert!(options("mongodb+srv://a.example.net:27017/db").is_err());
    }
}
