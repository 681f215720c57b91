//! RabbitMQ's management HTTP API: what AMQP 0-9-1 cannot tell of a queue (unacknowledged
//! messages, message rates, the head message's timestamp), read from
//! `GET <api>/queues/<vhost>` as Flower's broker page reads it.
//!
//! By default the API is found beside the broker: `http://<broker host>:15672/api/`, the
//! broker URL's credentials and virtual host (Flower's default for `--broker_api`);
//! [`MonitorBuilder::broker_api`](crate::MonitorBuilder::broker_api) names another
//! (`https://user:password@host:15671/api/`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kombu_core::{BrokerUrl, Error, ErrorKind, Result};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

/// How long one call to the API may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The fields asked for (the API leaves the rest out).
const COLUMNS: &str = "name,messages_ready,messages_unacknowledged,consumers,\
                       head_message_timestamp,message_stats.publish_details.rate,\
                       message_stats.deliver_get_details.rate,message_stats.ack_details.rate";

/// What the management API tells of one queue.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ManagedQueue {
    pub(crate) ready: Option<u64>,
    pub(crate) unacked: Option<u64>,
    pub(crate) consumers: Option<u64>,
    /// The head message's `timestamp` property (seconds since the epoch), when it has one.
    pub(crate) head_timestamp: Option<u64>,
    /// Messages a second: published to the queue, delivered or got from it, acked.
    pub(crate) publish_rate: Option<f64>,
    pub(crate) deliver_rate: Option<f64>,
    pub(crate) ack_rate: Option<f64>,
}

#[derive(Deserialize)]
struct Rate {
    rate: Option<f64>,
}

#[derive(Deserialize, Default)]
struct Stats {
    publish_details: Option<Rate>,
    deliver_get_details: Option<Rate>,
    ack_details: Option<Rate>,
}

#[derive(Deserialize)]
struct Row {
    name: String,
    messages_ready: Option<u64>,
    messages_unacknowledged: Option<u64>,
    consumers: Option<u64>,
    head_message_timestamp: Option<u64>,
    message_stats: Option<Stats>,
}

impl From<Row> for ManagedQueue {
    fn from(row: Row) -> Self {
        let stats = row.message_stats.unwrap_or_default();
        let rate = |r: Option<Rate>| r.and_then(|r| r.rate);
        ManagedQueue {
            ready: row.messages_ready,
            unacked: row.messages_unacknowledged,
            consumers: row.consumers,
            head_timestamp: row.head_message_timestamp,
            publish_rate: rate(stats.publish_details),
            deliver_rate: rate(stats.deliver_get_details),
            ack_rate: rate(stats.ack_details),
        }
    }
}

/// A client of one broker's management API.
#[derive(Clone)]
pub(crate) struct Management {
    client: reqwest::Client,
    /// `<scheme>://<host>:<port>/<path>/`, without credentials.
    base: String,
    user: String,
    password: String,
    vhost: String,
}

impl std::fmt::Debug for Management {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is never shown.
        f.debug_struct("Management")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("vhost", &self.vhost)
            .finish()
    }
}

/// An HTTP client verifying servers against the system's roots, with the project's crypto
/// provider (ring).
fn client() -> Result<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A certificate the store cannot take is skipped, as browsers skip it.
        let _ = roots.add(cert);
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("TLS for the management API: {e}"),
        )
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("an HTTP client for the management API: {e}"),
            )
        })
}

impl Management {
    /// The API beside an AMQP broker: `http://<host>:15672/api/`, its credentials (guest
    /// when it has none) and virtual host.
    pub(crate) fn beside(broker: &BrokerUrl) -> Result<Management> {
        let host = broker.host().unwrap_or("localhost");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        Ok(Management {
            client: client()?,
            base: format!("http://{host}:15672/api/"),
            user: broker.username().unwrap_or("guest").to_owned(),
            password: broker
                .password()
                .map_or_else(|| "guest".to_owned(), |p| p.into_owned()),
            vhost: broker
                .virtual_host()
                .map_or_else(|| "/".to_owned(), |v| v.into_owned()),
        })
    }

    /// The API at `api` (`http[s]://[user:password@]host:port/api/`), for the virtual host
    /// of `broker`; credentials from `api`, else from `broker`.
    pub(crate) fn at(api: &str, broker: &BrokerUrl) -> Result<Management> {
        let mut url = url::Url::parse(api).map_err(|e| {
            Error::new(
                ErrorKind::Config,
                format!("the management API URL is not a URL: {e}"),
            )
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "the management API URL must be http:// or https://, not {}://",
                    url.scheme()
                ),
            ));
        }
        let mut me = Management::beside(broker)?;
        if !url.username().is_empty() {
            me.user = decode(url.username());
            me.password = decode(url.password().unwrap_or(""));
        }
        // Credentials travel in the header, not the URL.
        let _ = url.set_username("");
        let _ = url.set_password(None);
        let mut base = url.to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        me.base = base;
        Ok(me)
    }

    /// Where the API is (no credentials), for messages.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// Every queue of the virtual host, by name.
    pub(crate) async fn queues(&self) -> Result<HashMap<String, ManagedQueue>> {
        let url = format!(
            "{}queues/{}?columns={COLUMNS}",
            self.base,
            utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC)
        );
        let failed = |e: reqwest::Error| {
            Error::new(
                ErrorKind::Connection,
                format!("the management API at {}: {e}", self.base),
            )
        };
        let response = self
            .client
            .get(&url)
            .basic_auth(&self.user, Some(&self.password))
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            let kind = match status.as_u16() {
                401 | 403 => ErrorKind::AccessRefused,
                404 => ErrorKind::NotFound,
                _ => ErrorKind::Connection,
            };
            return Err(Error::new(
                kind,
                format!("the management API at {} answered {status}", self.base),
            ));
        }
        let rows: Vec<Row> = response.json().await.map_err(failed)?;
        Ok(rows
            .into_iter()
            .map(|row| (row.name.clone(), ManagedQueue::from(row)))
            .collect())
    }
}

/// A percent-decoded URL part.
fn decode(part: &str) -> String {
    percent_encoding::percent_decode_str(part)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_beside_the_broker_and_named() -> Result<()> {
        let broker = BrokerUrl::parse("amqp://u:p%40ss@rabbit.example:5672/prod")?;
        let m = Management::beside(&broker)?;
        assert_eq!(m.base, "http://rabbit.example:15672/api/");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("u", "p@ss"));
        assert_eq!(m.vhost, "prod");
        assert!(!format!("{m:?}").contains("p@ss"));
        let m = Management::at("https://admin:s%2Fecret@mgmt.example:15671/api", &broker)?;
        assert_eq!(m.base, "https://mgmt.example:15671/api/");
        assert_eq!((m.user.as_str(), m.password.as_str()), ("admin", "s/ecret"));
        let m = Management::beside(&BrokerUrl::parse("amqp://localhost")?)?;
        assert_eq!((m.user.as_str(), m.vhost.as_str()), ("guest", "/"));
        assert!(Management::at("amqp://x", &broker).is_err());
        Ok(())
    }

    #[test]
    fn rows_read_with_and_without_stats() {
        let rows: Vec<Row> = serde_json::from_str(
            r#"[{"name": "a", "messages_ready": 2, "messages_unacknowledged": 1,
                 "consumers": 3, "head_message_timestamp": 1700000000,
                 "message_stats": {"publish_details": {"rate": 1.5},
                                   "deliver_get_details": {"rate": 0.5}}},
                {"name": "b", "messages_ready": 0}]"#,
        )
        .expect("rows");
        let queues: Vec<ManagedQueue> = rows.into_iter().map(ManagedQueue::from).collect();
        assert_eq!(queues[0].unacked, Some(1));
        assert_eq!(queues[0].head_timestamp, Some(1_700_000_000));
        assert_eq!(queues[0].publish_rate, Some(1.5));
        assert_eq!(queues[0].ack_rate, None);
        assert_eq!(
            queues[1],
            ManagedQueue {
                ready: Some(0),
                ..ManagedQueue::default()
            }
        );
    }
}
