//! Broker URLs: parsing as kombu does (wire format reference §8), failover lists, and masking.
//!
//! ```
//! use kombu_core::BrokerUrl;
//!
//! # fn main() -> kombu_core::Result<()> {
//! let url = BrokerUrl::parse("amqp://user:s%40cret@rabbit:5672/%2Fvh?heartbeat=10")?;
//! assert_eq!(url.transport(), "amqp");
//! assert_eq!(url.password().as_deref(), Some("s@cret"));
//! assert_eq!(url.virtual_host().as_deref(), Some("/vh"));
//! assert_eq!(url.query("heartbeat").as_deref(), Some("10"));
//! assert_eq!(url.to_string(), "amqp://user:**@rabbit:5672/%2Fvh?heartbeat=10");
//!
//! let all = BrokerUrl::parse_failover("memory://a;memory://b")?;
//! assert_eq!(all.len(), 2);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode_str;

use crate::error::{Error, ErrorKind, Result};

/// A parsed broker URL. [`Display`](fmt::Display) and [`Debug`](fmt::Debug) mask the password
/// as `**`; [`BrokerUrl::expose`] gives the URL as written.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    raw: String,
    scheme: String,
    /// Byte range of the password in `raw`, if any.
    password_span: Option<(usize, usize)>,
    /// Byte range of a user name given without a password (`scheme://NAME@host`), if any.
    lone_user_span: Option<(usize, usize)>,
    userinfo: Option<(String, Option<String>)>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    query: Vec<(String, String)>,
}

impl BrokerUrl {
    /// Parses one URL: `scheme://[user[:password]@]host[:port][/path][?query]`. The scheme is
    /// lower-cased; user, password, host and path are percent-decoded. Schemes that parse their
    /// own URLs (SQLite paths, `:memory:`) get the raw text through [`BrokerUrl::expose`] and
    /// [`BrokerUrl::rest`].
    pub fn parse(raw: &str) -> Result<BrokerUrl> {
        let raw = raw.trim();
        let Some((scheme, rest)) = raw.split_once("://") else {
            return Err(invalid(raw, "missing \"://\" after the scheme"));
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
        {
            return Err(invalid(
                raw,
                "the scheme has characters other than letters, digits, '+' and '-'",
            ));
        }
        let scheme_len = scheme.len() + 3;
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
            None => (before_query, None),
        };
        let mut password_span = None;
        let mut lone_user_span = None;
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(at) => {
                let info = &authority[..at];
                let (user, pass) = match info.split_once(':') {
                    Some((u, p)) => {
                        let start = scheme_len + u.len() + 1;
                        password_span = Some((start, start + p.len()));
                        (u, Some(p))
                    }
                    None => {
                        if !info.is_empty() {
                            lone_user_span = Some((scheme_len, scheme_len + info.len()));
                        }
                        (info, None)
                    }
                };
                (
                    Some((decode(user)?, pass.map(decode).transpose()?)),
                    &authority[at + 1..],
                )
            }
            None => (None, authority),
        };
        if userinfo.is_none() && authority.contains(':') {
            // `user:pass` whose password has a `/`, `?` or `#` in it ends the authority early;
            // parsing on would show the password as a port, path or query.
            let path_has_at = path.is_some_and(|p| p.contains('@'));
            let query_has_at = query.is_some_and(|q| q.contains('@'));
            let port_is_not_a_port = authority
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_err());
            if path_has_at || (port_is_not_a_port && query_has_at) {
                return Err(invalid(
                    raw,
                    "the user or password has '/', '?' or '#' in it: percent-encode them \
                     (%2F, %3F, %23)",
                ));
            }
        }
        let (host, port) = split_host_port(hostport);
        let port =
            match port {
                None | Some("") => None,
                Some(p) => Some(p.parse::<u16>().map_err(|_| {
                    invalid(raw, &format!("port {p:?} is not a number up to 65535"))
                })?),
            };
        let query = match query {
            None => Vec::new(),
            Some(q) => url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        };
        Ok(BrokerUrl {
            raw: raw.to_owned(),
            scheme: scheme.to_ascii_lowercase(),
            password_span,
            lone_user_span,
            userinfo,
            host: (!host.is_empty()).then(|| decode(host)).transpose()?,
            port,
            path: path.map(decode).transpose()?,
            query,
        })
    }

    /// Parses a `;`-separated list of failover URLs (at least one).
    pub fn parse_failover(raw: &str) -> Result<Vec<BrokerUrl>> {
        let urls: Vec<BrokerUrl> = raw
            .split(';')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(BrokerUrl::parse)
            .collect::<Result<_>>()?;
        if urls.is_empty() {
            return Err(Error::new(ErrorKind::InvalidUrl, "no broker URL given"));
        }
        Ok(urls)
    }

    /// The scheme as written, lower-cased (`sqla+sqlite`, `amqp`).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The transport part of the scheme: before a `+` (`sqla+sqlite` → `sqla`).
    pub fn transport(&self) -> &str {
        self.scheme.split('+').next().unwrap_or(&self.scheme)
    }

    /// Everything after `://`, untouched (for transports that parse their own URLs).
    pub fn rest(&self) -> &str {
        self.raw
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or_default()
    }

    /// User name, percent-decoded.
    pub fn username(&self) -> Option<&str> {
        self.userinfo.as_ref().map(|(u, _)| u.as_str())
    }

    /// Password, percent-decoded.
    pub fn password(&self) -> Option<Cow<'_, str>> {
        self.userinfo
            .as_ref()
            .and_then(|(_, p)| p.as_deref())
            .map(Cow::Borrowed)
    }

    /// Host name, percent-decoded (brackets kept off IPv6 literals).
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The path without its leading `/`, percent-decoded (`None` when there is no path).
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// kombu's virtual host: the path without its first `/`, `/` when empty or missing.
    pub fn virtual_host(&self) -> Option<Cow<'_, str>> {
        match self.path.as_deref() {
            None | Some("") => Some(Cow::Borrowed("/")),
            Some(p) => Some(Cow::Borrowed(p)),
        }
    }

    /// The last value of a query parameter.
    pub fn query(&self, key: &str) -> Option<String> {
        self.query
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    /// Every query parameter, in order.
    pub fn query_pairs(&self) -> &[(String, String)] {
        &self.query
    }

    /// A query option as a duration in seconds (`?visibility_timeout=1.5`): `None` when
    /// absent, an [`ErrorKind::InvalidUrl`] error naming the option when it is not a
    /// non-negative number of seconds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("redis://localhost/0?visibility_timeout=1.5&sep=x")?;
    /// assert_eq!(url.query_seconds("visibility_timeout")?, Some(Duration::from_millis(1500)));
    /// assert_eq!(url.query_seconds("polling_interval")?, None);
    /// assert!(url.query_seconds("sep").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn query_seconds(&self, key: &str) -> Result<Option<std::time::Duration>> {
        self.query_with(key, "a number of seconds", |v| {
            v.parse::<f64>()
                .ok()
                .and_then(|s| std::time::Duration::try_from_secs_f64(s).ok())
        })
    }

    /// A query option as a boolean: `1`, `true`, `yes`, `on` and `0`, `false`, `no`, `off`
    /// (any case), as kombu reads them. `None` when absent.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("amqp://localhost/?confirm_publish=yes&ssl=maybe")?;
    /// assert_eq!(url.query_bool("confirm_publish")?, Some(true));
    /// assert!(url.query_bool("ssl").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn query_bool(&self, key: &str) -> Result<Option<bool>> {
        self.query_with(
            key,
            "a boolean (true/false, yes/no, on/off, 1/0)",
            |v| match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Some(true),
                "0" | "false" | "no" | "off" => Some(false),
                _ => None,
            },
        )
    }

    /// A query option parsed as a number (or any [`FromStr`](std::str::FromStr) type). `None`
    /// when absent.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("amqp://localhost/?channel_max=64&frame_max=big")?;
    /// assert_eq!(url.query_number::<u16>("channel_max")?, Some(64));
    /// assert!(url.query_number::<u32>("frame_max").is_err());
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn query_number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        self.query_with(key, "a valid number", |v| v.parse::<T>().ok())
    }

    /// A comma-separated query option as a list, items trimmed, empty items dropped
    /// (`?priority_steps=0,3,6,9`). `None` when absent.
    ///
    /// ```
    /// # use kombu_core::BrokerUrl;
    /// let url = BrokerUrl::parse("redis://localhost/?priority_steps=0, 5,9")?;
    /// assert_eq!(url.query_list("priority_steps"), Some(vec!["0".into(), "5".into(), "9".into()]));
    /// # Ok::<(), kombu_core::Error>(())
    /// ```
    pub fn query_list(&self, key: &str) -> Option<Vec<String>> {
        self.query(key).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// The error every typed accessor gives for a value it cannot read: the masked URL, the
    /// option and what it should be. A configuration mistake: not recoverable.
    fn query_with<T>(
        &self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>> {
        let Some(v) = self.query(key) else {
            return Ok(None);
        };
        parse(&v).map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidUrl,
                format!("{}: option {key}={v:?} is not {expected}", self.masked()),
            )
        })
    }

    /// The URL exactly as given, password included. Never log this.
    pub fn expose(&self) -> &str {
        &self.raw
    }

    /// The URL with its password replaced by `**`.
    ///
    /// On Redis URLs (`redis`, `rediss`, `redis+socket`, `unix`, `sentinel`) a user name given
    /// without a password (`redis://SECRET@host/0`) is masked too: Redis authenticates with a
    /// password, never with a user name alone, so such user info is most likely a password
    /// written without its leading `:`.
    pub fn masked(&self) -> String {
        let span = self.password_span.or_else(|| {
            self.lone_user_span
                .filter(|_| LONE_USER_IS_SECRET.contains(&self.scheme.as_str()))
        });
        match span {
            Some((start, end)) => format!("{}**{}", &self.raw[..start], &self.raw[end..]),
            None => self.raw.clone(),
        }
    }
}

/// Schemes whose lone user info (`scheme://INFO@host`, no `:`) is masked as a password: the
/// Redis ones. AMQP and others keep it: there it is a user name.
const LONE_USER_IS_SECRET: &[&str] = &["redis", "rediss", "redis+socket", "unix", "sentinel"];

fn split_host_port(hostport: &str) -> (&str, Option<&str>) {
    if let Some(rest) = hostport.strip_prefix('[') {
        // IPv6 literal.
        return match rest.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':')),
            None => (hostport, None),
        };
    }
    match hostport.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
        _ => (hostport, None),
    }
}

fn decode(s: &str) -> Result<String> {
    percent_decode_str(s)
        .decode_utf8()
        .map(Cow::into_owned)
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidUrl,
                "URL part is not UTF-8 after percent-decoding",
            )
            .with_source(e)
        })
}

fn invalid(raw: &str, why: &str) -> Error {
    // The raw URL may carry a password: show only its scheme.
    let scheme = raw.split_once("://").map_or("?", |(s, _)| s);
    Error::new(
        ErrorKind::InvalidUrl,
        format!("cannot parse {scheme}:// URL: {why}"),
    )
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BrokerUrl").field(&self.masked()).finish()
    }
}

impl std::str::FromStr for BrokerUrl {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        BrokerUrl::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kombu_forms() {
        let u = BrokerUrl::parse("amqp://guest:guest@localhost:5672//").unwrap();
        assert_eq!(u.virtual_host().as_deref(), Some("/"));
        assert_eq!(u.port(), Some(5672));
        assert_eq!(u.to_string(), "amqp://guest:**@localhost:5672//");
        assert!(!format!("{u:?}").contains("guest@"));

        let u = BrokerUrl::parse("amqp://h/vh").unwrap();
        assert_eq!(u.virtual_host().as_deref(), Some("vh"));
        let u = BrokerUrl::parse("amqp://h").unwrap();
        assert_eq!(u.virtual_host().as_deref(), Some("/"));

        let u = BrokerUrl::parse("redis://:p%3Aw@127.0.0.1:6379/3").unwrap();
        assert_eq!(u.username(), Some(""));
        assert_eq!(u.password().as_deref(), Some("p:w"));
        assert_eq!(u.path(), Some("3"));
        assert_eq!(u.masked(), "redis://:**@127.0.0.1:6379/3");

        let u = BrokerUrl::parse("sqla+sqlite:///tmp/x.db").unwrap();
        assert_eq!(u.scheme(), "sqla+sqlite");
        assert_eq!(u.transport(), "sqla");
        assert_eq!(u.rest(), "/tmp/x.db");

        let u = BrokerUrl::parse("sqlite://:memory:").unwrap();
        assert_eq!(u.rest(), ":memory:");

        let u = BrokerUrl::parse("memory://NAME?visibility_timeout=1.5").unwrap();
        assert_eq!(u.host(), Some("NAME"));
        assert_eq!(u.query("visibility_timeout").as_deref(), Some("1.5"));

        let u = BrokerUrl::parse("amqp://u:pw@[::1]:5673/").unwrap();
        assert_eq!(u.host(), Some("::1"));
        assert_eq!(u.port(), Some(5673));
        assert_eq!(u.to_string(), "amqp://u:**@[::1]:5673/");

        let u = BrokerUrl::parse("amqp://u:p@ss@host/").unwrap();
        assert_eq!(u.password().as_deref(), Some("p@ss"));
        assert_eq!(u.to_string(), "amqp://u:**@host/");

        // Percent-encoded '/' and '?' in a password are fine and masked.
        let u = BrokerUrl::parse("redis://:pa%2Fss%3F@host:6379/0").unwrap();
        assert_eq!(u.password().as_deref(), Some("pa/ss?"));
        assert_eq!(u.to_string(), "redis://:**@host:6379/0");
        // Unencoded, they are refused, and the error does not echo the URL.
        for raw in [
            "redis://:pa/ss@host:6379/0",
            "amqp://user:se?cret@host//",
            "amqp://u:1234567/x@h//",
        ] {
            let err = BrokerUrl::parse(raw).unwrap_err();
            let shown = err.to_string();
            assert!(shown.contains("percent-encode"), "{shown}");
            for secret in ["pa/ss", "se?cret", "1234567"] {
                assert!(!shown.contains(secret), "{shown}");
            }
        }
        // An '@' in a path or query after a plain authority is not user info.
        let u = BrokerUrl::parse("sqla+sqlite:///tmp/a@b.db").unwrap();
        assert_eq!(u.rest(), "/tmp/a@b.db");
        let u = BrokerUrl::parse("redis://host:6379/0?client_name=a@b").unwrap();
        assert_eq!(u.host(), Some("host"));
    }

    #[test]
    fn redis_lone_user_info_is_masked_as_a_password() {
        for (raw, shown) in [
            ("redis://SECRET@host/0", "redis://**@host/0"),
            ("rediss://SECRET@host:6380/1", "rediss://**@host:6380/1"),
            (
                "sentinel://SECRET@host:26379?master_name=m",
                "sentinel://**@host:26379?master_name=m",
            ),
            (
                "redis+socket://SECRET@/tmp/r.sock",
                "redis+socket://**@/tmp/r.sock",
            ),
            (
                "unix://SECRET@/tmp/r.sock?db=2",
                "unix://**@/tmp/r.sock?db=2",
            ),
            ("REDIS://SECRET@host/0", "REDIS://**@host/0"),
            // With a password, only the password is masked, as before.
            ("redis://user:SECRET@host/0", "redis://user:**@host/0"),
            ("redis://:SECRET@host/0", "redis://:**@host/0"),
            ("redis://host/0", "redis://host/0"),
        ] {
            let u = BrokerUrl::parse(raw).unwrap();
            assert_eq!(u.masked(), shown, "{raw}");
            assert_eq!(u.to_string(), shown, "{raw}");
            assert!(!format!("{u:?}").contains("SECRET"), "{raw}");
        }
        let all = BrokerUrl::parse_failover("redis://SECRET@h1/0;redis://SECRET@h2/0").unwrap();
        assert!(all.iter().all(|u| !u.masked().contains("SECRET")));
        // On AMQP a lone user info is a user name (guest's password is then the default).
        let u = BrokerUrl::parse("amqp://guest@host//").unwrap();
        assert_eq!(u.username(), Some("guest"));
        assert_eq!(u.masked(), "amqp://guest@host//");
    }

    #[test]
    fn failover_and_errors() {
        let all = BrokerUrl::parse_failover("amqp://a:pw@h1//; amqp://a:pw@h2//").unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].host(), Some("h2"));
        assert!(BrokerUrl::parse_failover(" ; ").is_err());
        let err = BrokerUrl::parse("amqp://u:secret@h:99999/").unwrap_err();
        assert!(!err.to_string().contains("secret"));
        assert!(BrokerUrl::parse("no-scheme").is_err());
        assert!(BrokerUrl::parse("a.b://x").is_err());
    }
}
