//! One URL per transport, for tests that run a pattern on every transport: [`every`] lists
//! those whose broker answers, and fails the test when one that `KOMBU_TEST_REQUIRE` requires
//! (`all`, or a comma-separated list of transport names) does not.
//!
//! Each URL is fresh where the transport allows it, so tests running at once do not share
//! state: memory gets a unique name, SQLite a new file, Redis a unique `global_keyprefix`,
//! MongoDB a unique database. AMQP shares the broker's default virtual host (use unique queue
//! and exchange names there).
//!
//! The servers: `KOMBU_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`),
//! `KOMBU_TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/`),
//! `KOMBU_TEST_MONGODB_URL` (no default: scripts/test starts one and sets it).

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

/// A transport's URL for one test.
#[derive(Debug, Clone)]
pub struct Broker {
    /// The transport's name: `memory`, `sqlite`, `redis`, `amqp` or `mongodb`.
    pub transport: &'static str,
    /// The URL to open.
    pub url: String,
    /// A directory to delete when the broker is dropped (SQLite's file).
    _dir: Option<std::sync::Arc<TempDir>>,
}

#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        // The last clone of the broker is gone; a missing directory is fine.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `KOMBU_TEST_REQUIRE` requires `transport`.
pub fn required(transport: &str) -> bool {
    std::env::var("KOMBU_TEST_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .any(|r| r == "all" || r == transport)
}

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn answers(url: &str, default_port: u16) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let host = parsed.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = parsed.port().unwrap_or(default_port);
    let Ok(mut addrs) = (host.as_str(), port).to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// A broker for `transport` (`memory`, `sqlite`, `redis`, `amqp`, `mongodb`), fresh for
/// one test; `None` (with a message on standard error) when its server does not answer, and a
/// panic instead when `KOMBU_TEST_REQUIRE` requires it. `test` names the test in the message.
pub fn broker(transport: &'static str, test: &str) -> Option<Broker> {
    let id = unique();
    let (url, dir, server) = match transport {
        "memory" => (format!("memory://{test}-{id}"), None, None),
        "sqlite" => {
            let dir = std::env::temp_dir().join(format!("kombu-rs-{test}-{id}"));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                panic!("{test}: cannot make {}: {e}", dir.display());
            }
            let url = format!("sqlite://{}", dir.join("broker.db").display());
            (url, Some(std::sync::Arc::new(TempDir(dir))), None)
        }
        "redis" => {
            let base = std::env::var("KOMBU_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
            let sep = if base.contains('?') { '&' } else { '?' };
            let url = format!("{base}{sep}global_keyprefix={test}-{id}:");
            (url, None, Some((base, 6379)))
        }
        "amqp" => {
            let url = std::env::var("KOMBU_TEST_AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/".to_owned());
            (url.clone(), None, Some((url, 5672)))
        }
        "mongodb" => {
            let Ok(base) = std::env::var("KOMBU_TEST_MONGODB_URL") else {
                if required(transport) {
                    panic!(
                        "{test}: KOMBU_TEST_MONGODB_URL is not set, and KOMBU_TEST_REQUIRE requires mongodb"
                    );
                }
                eprintln!("{test}: mongodb skipped (KOMBU_TEST_MONGODB_URL is not set)");
                return None;
            };
            let base = base.trim_end_matches('/').to_owned();
            let db = format!("t{}", &id[..16]);
            (format!("{base}/{db}"), None, Some((base, 27017)))
        }
        other => panic!("{test}: no transport {other:?}"),
    };
    if let Some((server, port)) = server
        && !answers(&server, port)
    {
        if required(transport) {
            panic!("{test}: no {transport} server at {server}, and KOMBU_TEST_REQUIRE requires it");
        }
        eprintln!("{test}: {transport} skipped (no server at {server})");
        return None;
    }
    Some(Broker {
        transport,
        url,
        _dir: dir,
    })
}

/// Every transport's broker for one test ([`broker`] for each of memory, sqlite, redis, amqp
/// and mongodb), those that answer.
pub fn every(test: &str) -> Vec<Broker> {
    ["memory", "sqlite", "redis", "amqp", "mongodb"]
        .into_iter()
        .filter_map(|t| broker(t, test))
        .collect()
}

/// Celery's (Python kombu's) broker URL and `broker_transport_options` (JSON) for the broker
/// kombu-rs opens at `url` (of `transport`): Redis's base URL with the test's key prefix as
/// `global_keyprefix`, SQLite's file as `sqla+sqlite:///<file>`, any other URL as it is.
pub fn celery_side(transport: &str, url: &str) -> (String, String) {
    match transport {
        "redis" => {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            let prefix = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("global_keyprefix="))
                .unwrap_or("");
            (
                base.to_owned(),
                serde_json::json!({ "global_keyprefix": prefix }).to_string(),
            )
        }
        "sqlite" => {
            let file = url.strip_prefix("sqlite://").unwrap_or(url);
            (format!("sqla+sqlite:///{file}"), "{}".to_owned())
        }
        _ => (url.to_owned(), "{}".to_owned()),
    }
}

/// A RabbitMQ virtual host of one test's own, made through the management plugin's HTTP API
/// (on 127.0.0.1:15672: the AMQP server of the tests must be local, as `scripts/test` runs
/// it) as the AMQP URL's user, and deleted when dropped: for tests that must see only their
/// own traffic on exchanges every Celery app shares (`celeryev`, `celery.pidbox`).
/// `scripts/test` deletes the `kombu-test-*` virtual hosts an interrupted run left behind.
#[derive(Debug)]
pub struct AmqpVhost {
    /// The broker URL of the virtual host.
    pub url: String,
    /// The virtual host's name.
    pub name: String,
    /// The management API's headers: the user's credentials, JSON.
    headers: String,
}

impl Drop for AmqpVhost {
    fn drop(&mut self) {
        // A vhost left behind is only clutter (scripts/test sweeps them); a failure here is
        // not the test's.
        let _ = crate::http::request(
            MANAGEMENT_PORT,
            "DELETE",
            &format!("/api/vhosts/{}", self.name),
            "",
            &self.headers,
        );
    }
}

const MANAGEMENT_PORT: u16 = 15672;

/// A fresh virtual host on the AMQP server ([`broker`]'s rules: `None` when the server does
/// not answer, a panic when `KOMBU_TEST_REQUIRE` requires AMQP; a panic too when the
/// management API refuses, as nothing can be tested then).
pub fn amqp_vhost(test: &str) -> Option<AmqpVhost> {
    use base64::Engine;
    let base = broker("amqp", test)?;
    let url = url::Url::parse(&base.url)
        .unwrap_or_else(|e| panic!("{test}: the AMQP URL {} is not a URL: {e}", base.url));
    let local = url.host_str().is_some_and(|h| {
        h == "localhost"
            || h.parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    assert!(
        local,
        "{test}: a virtual host of its own needs a local AMQP server, not {}",
        base.url
    );
    let user = match url.username() {
        "" => "guest",
        user => user,
    };
    let password = url.password().unwrap_or("guest");
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let name = format!("kombu-test-{test}-{}", &unique()[..12]);
    let mut vhost_url = url.clone();
    vhost_url.set_path(&name);
    let made = crate::http::request(
        MANAGEMENT_PORT,
        "PUT",
        &format!("/api/vhosts/{name}"),
        "",
        &format!("Authorization: Basic {credentials}\r\nContent-Type: application/json\r\n"),
    );
    if !matches!(made, Some((201 | 204, _))) {
        panic!("{test}: RabbitMQ's management API did not make the vhost: {made:?}");
    }
    // Deleted from here on, whatever follows.
    let vhost = AmqpVhost {
        url: vhost_url.to_string(),
        name,
        headers: format!(
            "Authorization: Basic {credentials}\r\nContent-Type: application/json\r\n"
        ),
    };
    let allowed = crate::http::request(
        MANAGEMENT_PORT,
        "PUT",
        &format!("/api/permissions/{}/{user}", vhost.name),
        r#"{"configure": ".*", "write": ".*", "read": ".*"}"#,
        &vhost.headers,
    );
    if !matches!(allowed, Some((201 | 204, _))) {
        panic!("{test}: RabbitMQ's management API did not grant {user} the vhost: {allowed:?}");
    }
    Some(vhost)
}

/// A broker a test has to itself, even on the exchanges every Celery app shares: on AMQP a
/// virtual host of its own ([`amqp_vhost`]), elsewhere [`broker`]'s fresh URL (on Redis, a key
/// prefix of its own). Dropped, it cleans up as those do.
#[derive(Debug)]
pub struct Isolated {
    /// The URL to open.
    pub url: String,
    _broker: Option<Broker>,
    _vhost: Option<AmqpVhost>,
}

/// [`Isolated`] for `transport`, with [`broker`]'s rules when the server does not answer.
pub fn isolated(transport: &'static str, test: &str) -> Option<Isolated> {
    Some(match transport {
        "amqp" => {
            let vhost = amqp_vhost(test)?;
            Isolated {
                url: vhost.url.clone(),
                _broker: None,
                _vhost: Some(vhost),
            }
        }
        _ => {
            let broker = broker(transport, test)?;
            Isolated {
                url: broker.url.clone(),
                _broker: Some(broker),
                _vhost: None,
            }
        }
    })
}
