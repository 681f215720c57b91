//! URL options: `amqp://`, `amqps://`, `pyamqp://` as kombu reads them (wire format reference
//! §3.5, §8).

use std::time::Duration;

use kombu_core::{BrokerUrl, Error, ErrorKind, Result};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

/// Everything a connection needs, read from its URL.
#[derive(Clone, PartialEq)]
pub struct AmqpOptions {
    /// Host (kombu rewrites `localhost` to `127.0.0.1`; so do we).
    pub host: String,
    /// Port: 5672, or 5671 with TLS.
    pub port: u16,
    /// Virtual host: `/` by default, `%2f`-decoded.
    pub vhost: String,
    /// User name (`guest`).
    pub user: String,
    /// Password (`guest`).
    pub password: String,
    /// TLS (`amqps://`, or `ssl=true`).
    pub tls: bool,
    /// PEM file of the certificate authorities that sign the server's certificate
    /// (`ssl_ca_certs`); none: the system's roots.
    pub ca_certs: Option<String>,
    /// PEM file of the client certificate (chain) presented to the broker (`ssl_certfile`),
    /// with its private key (`ssl_keyfile`, PEM: PKCS#8, PKCS#1 or SEC1); both or neither.
    pub certfile: Option<String>,
    /// PEM file of the client certificate's private key (`ssl_keyfile`).
    pub keyfile: Option<String>,
    /// Heartbeat interval in seconds; 0 turns heartbeats off (`heartbeat`, default 60, RabbitMQ's
    /// own default, so a dead peer is noticed).
    pub heartbeat: u16,
    /// How long connecting may take (`connect_timeout`, seconds, default 5 as kombu).
    pub connect_timeout: Duration,
    /// Publisher confirms (`confirm_publish`, default on): a publish returns once the broker
    /// has the message.
    pub confirm_publish: bool,
    /// Reconnect, redeclare and resume after the connection drops (`recover`, default on).
    pub recover: bool,
    /// How long recovery keeps trying before operations fail (`recover_timeout`, seconds,
    /// default 60).
    pub recover_timeout: Duration,
    /// Largest frame (`frame_max`), none: the broker's.
    pub frame_max: Option<u32>,
    /// Most channels (`channel_max`), none: the broker's.
    pub channel_max: Option<u16>,
}

impl std::fmt::Debug for AmqpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("vhost", &self.vhost)
            .field("user", &self.user)
            .field("password", &"**")
            .field("tls", &self.tls)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout", &self.connect_timeout)
            .field("confirm_publish", &self.confirm_publish)
            .field("recover", &self.recover)
            .finish_non_exhaustive()
    }
}

/// The query options this transport reads; any other is an error, as in kombu.
pub const OPTIONS: &[&str] = &[
    "heartbeat",
    "connect_timeout",
    "confirm_publish",
    "recover",
    "recover_timeout",
    "ssl",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "frame_max",
    "channel_max",
    // Core reads it (the order of failover URLs); accepted here so that it may be written on
    // an AMQP URL.
    "failover_strategy",
];

impl AmqpOptions {
    /// Reads a URL: `amqp://[user[:password]@]host[:port][/vhost][?options]`, `amqps://` for
    /// TLS, `pyamqp://` as `amqp://`.
    pub fn from_url(url: &BrokerUrl) -> Result<AmqpOptions> {
        let mut tls = match url.scheme() {
            "amqp" | "pyamqp" => false,
            "amqps" => true,
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidUrl,
                    format!("{url}: scheme {other:?} is not an AMQP scheme (amqp, amqps, pyamqp)"),
                ));
            }
        };
        let mut options = AmqpOptions {
            host: String::new(),
            port: 0,
            vhost: url
                .virtual_host()
                .map_or_else(|| "/".to_owned(), |v| v.into_owned()),
            user: url
                .username()
                .filter(|u| !u.is_empty())
                .unwrap_or("guest")
                .to_owned(),
            password: url
                .password()
                .map_or_else(|| "guest".to_owned(), |p| p.into_owned()),
            tls: false,
            ca_certs: None,
            certfile: None,
            keyfile: None,
            heartbeat: 60,
            connect_timeout: Duration::from_secs(5),
            confirm_publish: true,
            recover: true,
            recover_timeout: Duration::from_secs(60),
            frame_max: None,
            channel_max: None,
        };
        if let Some((other, _)) = url
            .query_pairs()
            .iter()
            .find(|(key, _)| !OPTIONS.contains(&key.as_str()))
        {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!(
                    "{url}: unknown option {other:?} (known: {})",
                    OPTIONS.join(", ")
                ),
            ));
        }
        if let Some(secs) = url.query_seconds("heartbeat")? {
            options.heartbeat = u16::try_from(secs.as_secs()).unwrap_or(u16::MAX);
        }
        if let Some(timeout) = url.query_seconds("connect_timeout")? {
            options.connect_timeout = timeout;
        }
        if let Some(confirm) = url.query_bool("confirm_publish")? {
            options.confirm_publish = confirm;
        }
        if let Some(recover) = url.query_bool("recover")? {
            options.recover = recover;
        }
        if let Some(timeout) = url.query_seconds("recover_timeout")? {
            options.recover_timeout = timeout;
        }
        tls = tls || url.query_bool("ssl")?.unwrap_or(false);
        options.ca_certs = url.query("ssl_ca_certs");
        options.certfile = url.query("ssl_certfile");
        options.keyfile = url.query("ssl_keyfile");
        options.frame_max = url.query_number("frame_max")?;
        options.channel_max = url.query_number("channel_max")?;
        if options.certfile.is_some() != options.keyfile.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidUrl,
                format!("{url}: ssl_certfile and ssl_keyfile go together"),
            ));
        }
        options.tls = tls;
        options.host = match url.host() {
            None | Some("") | Some("localhost") => "127.0.0.1".to_owned(),
            Some(h) => h.to_owned(),
        };
        options.port = url.port().unwrap_or(if tls { 5671 } else { 5672 });
        Ok(options)
    }

    /// The URI lapin connects to.
    pub(crate) fn uri(&self) -> AMQPUri {
        AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: self.user.clone(),
                    password: self.password.clone(),
                },
                host: self.host.clone(),
                port: self.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                frame_max: self.frame_max,
                channel_max: self.channel_max,
                heartbeat: Some(self.heartbeat),
                connection_timeout: Some(
                    u64::try_from(self.connect_timeout.as_millis()).unwrap_or(u64::MAX),
                ),
                auth_mechanism: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<AmqpOptions> {
        AmqpOptions::from_url(&BrokerUrl::parse(url)?)
    }

    #[test]
    fn kombu_defaults_and_vhosts() {
        let o = parse("amqp://").unwrap();
        assert_eq!(
            (o.host.as_str(), o.port, o.vhost.as_str()),
            ("127.0.0.1", 5672, "/")
        );
        assert_eq!((o.user.as_str(), o.password.as_str()), ("guest", "guest"));
        assert!(o.confirm_publish && o.recover && !o.tls);
        assert_eq!(parse("amqp://h//").unwrap().vhost, "/");
        assert_eq!(parse("amqp://h/").unwrap().vhost, "/");
        assert_eq!(parse("amqp://h/%2f").unwrap().vhost, "/");
        assert_eq!(parse("amqp://h/%2Fvh").unwrap().vhost, "/vh");
        assert_eq!(parse("amqp://h/vh").unwrap().vhost, "vh");
        let o = parse("pyamqp://u:p%40ss@rabbit:5673/x?heartbeat=10&connect_timeout=2.5").unwrap();
        assert_eq!((o.user.as_str(), o.password.as_str()), ("u", "p@ss"));
        assert_eq!((o.host.as_str(), o.port), ("rabbit", 5673));
        assert_eq!(o.heartbeat, 10);
        assert_eq!(o.connect_timeout, Duration::from_millis(2500));
        assert!(!format!("{o:?}").contains("p@ss"));
        let o = parse("amqps://h").unwrap();
        assert!(o.tls);
        assert_eq!(o.port, 5671);
        assert!(parse("amqp://h?ssl=true").unwrap().tls);
        let o = parse("amqps://h?ssl_certfile=/c.pem&ssl_keyfile=/k.pem").unwrap();
        assert_eq!(
            (o.certfile.as_deref(), o.keyfile.as_deref()),
            (Some("/c.pem"), Some("/k.pem"))
        );
        assert!(parse("amqps://h?ssl_certfile=/c.pem").is_err());
        assert!(parse("amqps://h?ssl_keyfile=/k.pem").is_err());
        assert!(
            !parse("amqp://h?confirm_publish=false")
                .unwrap()
                .confirm_publish
        );
    }

    #[test]
    fn bad_options_are_errors() {
        for url in [
            "amqp://h?nope=1",
            "amqp://h?heartbeat=x",
            "amqp://h?confirm_publish=maybe",
            "redis://h",
        ] {
            let e = parse(url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidUrl, "{url}: {e}");
        }
    }
}
