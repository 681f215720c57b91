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
use parking_lot::Mutex;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value as Json;

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

impl ManagedQueue {
    /// A row of the API's queue list: its name and what it tells, each field read on its own
    /// (a field of another type, as older brokers write `""` for an unknown one, is unknown).
    fn read(row: &Json) -> Option<(String, ManagedQueue)> {
        let name = row.get("name")?.as_str()?.to_owned();
        let count = |key: &str| row.get(key).and_then(Json::as_u64);
        let rate = |key: &str| {
            row.get("message_stats")
                .and_then(|s| s.get(key))
                .and_then(|d| d.get("rate"))
                .and_then(Json::as_f64)
        };
        Some((
            name,
            ManagedQueue {
                ready: count("messages_ready"),
                unacked: count("messages_unacknowledged"),
                consumers: count("consumers"),
                head_timestamp: count("head_message_timestamp"),
                publish_rate: rate("publish_details"),
                deliver_rate: rate("deliver_get_details"),
                ack_rate: rate("ack_details"),
            },
        ))
    }
}

/// After a failed call, the next waits this long (its error is answered meanwhile): an API
/// that does not answer costs a scrape nothing.
const BACKOFF: Duration = Duration::from_secs(30);

/// A client of one broker's management API.
pub(crate) struct Management {
    client: reqwest::Client,
    /// Until when calls are not made, and the error that stopped them.
    paused: Mutex<Option<(std::time::Instant, String)>>,
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
    /// The API beside an AMQP broker: `http://<host>:15672/api/` (for `amqps://`,
    /// `https://<host>:15671/api/`: its password is not sent in the clear), its credentials
    /// (guest when it has none) and virtual host.
    pub(crate) fn beside(broker: &BrokerUrl) -> Result<Management> {
        let host = broker.host().unwrap_or("localhost");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let base = match broker.scheme() {
            "amqps" => format!("https://{host}:15671/api/"),
            _ => format!("http://{host}:15672/api/"),
        };
        Ok(Management {
            client: client()?,
            paused: Mutex::new(None),
            base,
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

    /// Every queue of the virtual host, by name; after a failure, that failure again for
    /// [`BACKOFF`] without calling.
    pub(crate) async fn queues(&self) -> Result<HashMap<String, ManagedQueue>> {
        let rows = self.rows(Some(COLUMNS)).await?;
        Ok(rows.iter().filter_map(ManagedQueue::read).collect())
    }

    /// The queues named in `names` as the API describes them, every field, in the API's
    /// order: what Flower's `/api/queues/length` answers on RabbitMQ.
    pub(crate) async fn described(&self, names: &[String]) -> Result<Vec<Json>> {
        let rows = self.rows(None).await?;
        Ok(rows
            .into_iter()
            .filter(|row| {
                row.get("name")
                    .and_then(Json::as_str)
                    .is_some_and(|name| names.iter().any(|n| n == name))
            })
            .collect())
    }

    /// The virtual host's queues (only `columns` of each, when named); after a failure, that
    /// failure again for [`BACKOFF`] without calling.
    async fn rows(&self, columns: Option<&str>) -> Result<Vec<Json>> {
        if let Some((until, error)) = self.paused.lock().as_ref()
            && std::time::Instant::now() < *until
        {
            return Err(Error::new(ErrorKind::Connection, error.clone()));
        }
        let answer = self.call(columns).await;
        *self.paused.lock() = match &answer {
            Ok(_) => None,
            Err(e) => Some((std::time::Instant::now() + BACKOFF, format!("{e:#}"))),
        };
        answer
    }

    async fn call(&self, columns: Option<&str>) -> Result<Vec<Json>> {
        let mut url = format!(
            "{}queues/{}",
            self.base,
            utf8_percent_encode(&self.vhost, NON_ALPHANUMERIC)
        );
        if let Some(columns) = columns {
            url.push_str("?columns=");
            url.push_str(columns);
        }
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
        response.json().await.map_err(failed)
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
        let m = Management::beside(&BrokerUrl::parse("amqps://rabbit.example/")?)?;
        assert_eq!(m.base, "https://rabbit.example:15671/api/");
        let m = Management::beside(&BrokerUrl::parse("amqp://localhost")?)?;
        assert_eq!((m.user.as_str(), m.vhost.as_str()), ("guest", "/"));
        assert!(Management::at("amqp://x", &broker).is_err());
        Ok(())
    }

    #[test]
    fn rows_read_field_by_field() {
        let rows: Vec<Json> = serde_json::from_str(
            r#"[{"name": "a", "messages_ready": 2, "messages_unacknowledged": 1,
                 "consumers": 3, "head_message_timestamp": 1700000000,
                 "message_stats": {"publish_details": {"rate": 1.5},
                                   "deliver_get_details": {"rate": 0.5}}},
                {"name": "b", "messages_ready": 0, "head_message_timestamp": ""},
                {"no": "name"}]"#,
        )
        .expect("rows");
        let queues: Vec<(String, ManagedQueue)> =
            rows.iter().filter_map(ManagedQueue::read).collect();
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[0].1.unacked, Some(1));
        assert_eq!(queues[0].1.head_timestamp, Some(1_700_000_000));
        assert_eq!(queues[0].1.publish_rate, Some(1.5));
        assert_eq!(queues[0].1.ack_rate, None);
        assert_eq!(
            queues[1].1,
            ManagedQueue {
                ready: Some(0),
                ..ManagedQueue::default()
            }
        );
    }
}
