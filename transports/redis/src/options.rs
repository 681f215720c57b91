//! URL options: the server (host, TLS files, Unix socket, sentinel), the database and the
//! transport options of the crate documentation, parsed once into [`Options`] with
//! [`BrokerUrl`]'s typed accessors.

use std::time::Duration;

use kombu_core::{BrokerUrl, Error, ErrorKind, Result};

/// How long a reply may take by default: the redis crate's own default (half a second) is
/// shorter than a take of a 50 MB message needs.
pub(crate) const DEFAULT_SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Options parsed from a URL.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// The URL handed to the redis crate (no transport options).
    pub(crate) client_url: String,
    /// `rediss://` with a CA bundle or a client certificate of its own.
    pub(crate) tls: Option<TlsFiles>,
    /// `sentinel://`: the sentinel to ask, the master's name, and how to log in to the master.
    pub(crate) sentinel: Option<SentinelTarget>,
    /// The database number.
    pub(crate) db: i64,
    /// `visibility_timeout`: how long an unacked message stays out of its queue.
    pub(crate) visibility_timeout: Duration,
    /// `priority_steps`, sorted, without duplicates, starting with 0.
    pub(crate) priority_steps: Vec<u8>,
    /// `sep`: separator of priority keys and binding members.
    pub(crate) sep: String,
    /// `global_keyprefix`.
    pub(crate) prefix: String,
    /// kombu's `unacked` hash, prefixed.
    pub(crate) unacked: String,
    /// kombu's `unacked_index` sorted set, prefixed.
    pub(crate) unacked_index: String,
    /// kombu's `unacked_mutex`, prefixed.
    pub(crate) unacked_mutex: String,
    /// `polling_interval`: the longest pause between looks when a consumer cannot block.
    pub(crate) polling_interval: Duration,
    /// `socket_timeout`: how long a command's reply may take (a take of large messages is
    /// one long reply).
    pub(crate) socket_timeout: Duration,
    /// `keyprefix_fanout`, already formatted (`/{db}.` by default).
    pub(crate) fanout_prefix: String,
    /// `fanout_patterns`: fanout topics carry the routing key.
    pub(crate) fanout_patterns: bool,
}

/// Where `sentinel://` finds its master.
#[derive(Debug, Clone)]
pub(crate) struct SentinelTarget {
    /// `redis://host:port` of the sentinel.
    pub(crate) sentinel: String,
    /// The name the sentinel monitors the master under.
    pub(crate) master_name: String,
    /// The master's user.
    pub(crate) username: Option<String>,
    /// The master's password.
    pub(crate) password: Option<String>,
}

/// PEM files for `rediss://` (kombu's `ssl_ca_certs`, `ssl_certfile`, `ssl_keyfile`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsFiles {
    /// CA bundle that verifies the server's certificate.
    pub(crate) ca_certs: Option<String>,
    /// Client certificate.
    pub(crate) certfile: Option<String>,
    /// The client certificate's key.
    pub(crate) keyfile: Option<String>,
}

/// The database number in the URL's path (`/3`; none: 0), or why it is not one.
fn database(url: &BrokerUrl) -> std::result::Result<i64, String> {
    match url.path().unwrap_or_default().trim_matches('/') {
        "" => Ok(0),
        d => d
            .parse::<i64>()
            .map_err(|_| format!("the database {d:?} is not a number")),
    }
}

impl Options {
    /// Parses `url` (one of the transport's schemes): an [`ErrorKind::InvalidUrl`] error for
    /// an address or option it cannot read.
    pub(crate) fn from_url(url: &BrokerUrl) -> Result<Options> {
        let bad =
            |why: String| Error::new(ErrorKind::InvalidUrl, format!("{}: {why}", url.masked()));
        let mut tls = None;
        let mut sentinel = None;
        let (client_url, db) = match url.scheme() {
            scheme @ ("redis" | "rediss") => {
                let db = database(url).map_err(bad)?;
                let host = url.host().unwrap_or("localhost");
                let port = url.port().unwrap_or(6379);
                let auth = match (url.username(), url.password()) {
                    (Some(""), Some(p)) | (None, Some(p)) => format!(":{}@", enc(&p)),
                    (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(&p)),
                    (Some(u), None) if !u.is_empty() => format!("{}@", enc(u)),
                    _ => String::new(),
                };
                let mut client = format!("{scheme}://{auth}{host}:{port}/{db}");
                if scheme == "rediss" {
                    match url
                        .query("ssl_cert_reqs")
                        .as_deref()
                        .map(str::to_ascii_lowercase)
                    {
                        None => {}
                        Some(r) if r == "required" || r == "cert_required" => {}
                        Some(r)
                            if r == "none"
                                || r == "cert_none"
                                || r == "optional"
                                || r == "cert_optional" =>
                        {
                            // No verification of the server's certificate (kombu's default for
                            // a bare rediss:// URL; ours verifies unless told otherwise).
                            client.push_str("#insecure");
                        }
                        Some(other) => {
                            return Err(bad(format!(
                                "ssl_cert_reqs={other:?}: use required, optional or none"
                            )));
                        }
                    }
                    let files = TlsFiles {
                        ca_certs: url.query("ssl_ca_certs"),
                        certfile: url.query("ssl_certfile"),
                        keyfile: url.query("ssl_keyfile"),
                    };
                    if files.certfile.is_some() != files.keyfile.is_some() {
                        return Err(bad("ssl_certfile and ssl_keyfile go together".into()));
                    }
                    if files.ca_certs.is_some() || files.certfile.is_some() {
                        tls = Some(files);
                    }
                }
                (client, db)
            }
            "sentinel" => {
                let master_name = url.query("master_name").ok_or_else(|| {
                    bad("a sentinel:// URL needs ?master_name=<the monitored master's name>".into())
                })?;
                let db = database(url).map_err(bad)?;
                let host = url.host().unwrap_or("localhost");
                let port = url.port().unwrap_or(26379);
                sentinel = Some(SentinelTarget {
                    sentinel: format!("redis://{host}:{port}"),
                    master_name,
                    username: url.username().filter(|u| !u.is_empty()).map(str::to_owned),
                    password: url.password().map(|p| p.into_owned()),
                });
                // Replaced by the master's address when connecting.
                (String::new(), db)
            }
            "redis+socket" | "unix" => {
                let rest = url.rest();
                let before_query = rest.split_once('?').map_or(rest, |(p, _)| p);
                // `[user[:password]@]/path`: credentials only before the path's first `/`.
                let path = match before_query.split_once('@') {
                    Some((userinfo, path)) if !userinfo.contains('/') => path,
                    _ => before_query,
                };
                let db = match url.query("virtual_host").or_else(|| url.query("db")) {
                    None => 0,
                    Some(d) => d
                        .trim_matches('/')
                        .parse::<i64>()
                        .map_err(|_| bad(format!("the database {d:?} is not a number")))?,
                };
                let mut client = format!("redis+unix://{path}?db={db}");
                // Credentials only before the path (a password in the query would not be
                // masked when the URL is shown).
                if let Some(user) = url.username().filter(|u| !u.is_empty()) {
                    client.push_str(&format!("&user={}", enc(user)));
                }
                if let Some(password) = url.password() {
                    client.push_str(&format!("&pass={}", enc(&password)));
                }
                (client, db)
            }
            other => {
                return Err(bad(format!(
                    "the Redis transport does not take {other}:// URLs"
                )));
            }
        };
        let priority_steps = match url.query_list("priority_steps") {
            None => vec![0, 3, 6, 9],
            Some(items) => {
                // Python's list notation too: `[0, 3, 6, 9]`.
                let mut steps = items
                    .iter()
                    .map(|p| p.trim_matches(['[', ']']).trim().parse::<u8>())
                    .collect::<std::result::Result<Vec<u8>, _>>()
                    .map_err(|_| {
                        Error::config(format!(
                            "priority_steps={:?}: numbers 0-255, comma-separated",
                            items.join(",")
                        ))
                    })?;
                steps.sort_unstable();
                steps.dedup();
                if steps.first() != Some(&0) {
                    steps.insert(0, 0);
                }
                steps
            }
        };
        let prefix = url.query("global_keyprefix").unwrap_or_default();
        let key = |name: &str, default: &str| {
            format!(
                "{prefix}{}",
                url.query(name).unwrap_or_else(|| default.to_owned())
            )
        };
        Ok(Options {
            client_url,
            tls,
            sentinel,
            db,
            visibility_timeout: url
                .query_seconds("visibility_timeout")?
                .unwrap_or(Duration::from_secs(3600)),
            priority_steps,
            sep: url.query("sep").unwrap_or_else(|| "\x06\x16".to_owned()),
            unacked: key("unacked_key", "unacked"),
            unacked_index: key("unacked_index_key", "unacked_index"),
            unacked_mutex: key("unacked_mutex_key", "unacked_mutex"),
            polling_interval: url
                .query_seconds("polling_interval")?
                .unwrap_or(Duration::from_secs(1)),
            socket_timeout: url
                .query_seconds("socket_timeout")?
                .unwrap_or(DEFAULT_SOCKET_TIMEOUT),
            fanout_prefix: match url.query_bool("fanout_prefix") {
                Ok(None | Some(true)) => format!("/{db}."),
                Ok(Some(false)) => String::new(),
                // Not a boolean: the prefix itself.
                Err(_) => url.query("fanout_prefix").unwrap_or_default(),
            },
            fanout_patterns: url.query_bool("fanout_patterns")?.unwrap_or(true),
            prefix,
        })
    }
}

/// `s` percent-encoded for the userinfo of the URL handed to the redis crate.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() -> Result<()> {
        let o = Options::from_url(&BrokerUrl::parse("redis://u:p%40ss@h:6380/2")?)?;
        assert_eq!(o.client_url, "redis://u:p%40ss@h:6380/2");
        assert!(Options::from_url(&BrokerUrl::parse("redis://h/x")?).is_err());
        let o = Options::from_url(&BrokerUrl::parse(
            "redis://h?priority_steps=0,5&visibility_timeout=2",
        )?)?;
        assert_eq!(o.priority_steps, [0, 5]);
        assert_eq!(o.visibility_timeout, Duration::from_secs(2));
        // Unix sockets: credentials only before the path; an `@` inside the path is the path's.
        let o = Options::from_url(&BrokerUrl::parse("unix:///run/app@1/redis.sock")?)?;
        assert_eq!(o.client_url, "redis+unix:///run/app@1/redis.sock?db=0");
        let o = Options::from_url(&BrokerUrl::parse("unix://u:p%40ss@/tmp/r.sock?db=2")?)?;
        assert_eq!(
            o.client_url,
            "redis+unix:///tmp/r.sock?db=2&user=u&pass=p%40ss"
        );
        assert_eq!(o.db, 2);
        Ok(())
    }

    #[test]
    fn transport_options_read_with_the_typed_accessors() -> Result<()> {
        let parse = |url: &str| Options::from_url(&BrokerUrl::parse(url)?);
        let o = parse("redis://h")?;
        assert_eq!(o.visibility_timeout, Duration::from_secs(3600));
        assert_eq!(o.polling_interval, Duration::from_secs(1));
        assert_eq!((o.fanout_prefix.as_str(), o.fanout_patterns), ("/0.", true));
        let o = parse("redis://h/2?polling_interval=0.05&fanout_patterns=False")?;
        assert_eq!(o.polling_interval, Duration::from_millis(50));
        assert!(!o.fanout_patterns);
        assert_eq!(o.fanout_prefix, "/2.");
        assert_eq!(parse("redis://h?fanout_prefix=off")?.fanout_prefix, "");
        assert_eq!(parse("redis://h?fanout_prefix=True")?.fanout_prefix, "/0.");
        assert_eq!(parse("redis://h?fanout_prefix=app.")?.fanout_prefix, "app.");
        assert_eq!(
            parse("redis://h?priority_steps=[0, 9, 3]")?.priority_steps,
            [0, 3, 9]
        );
        for bad in [
            "redis://h?visibility_timeout=soon",
            "redis://h?polling_interval=-1",
            "redis://h?fanout_patterns=maybe",
        ] {
            let err = parse(bad).err().map(|e| e.kind());
            assert_eq!(err, Some(ErrorKind::InvalidUrl), "{bad}");
        }
        assert!(parse("redis://h?priority_steps=0,x").is_err());
        Ok(())
    }
}
