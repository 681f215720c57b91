//! Opening a connection: plain TCP, TLS (`rediss://`, with a CA bundle or a client
//! certificate of its own), a Unix socket, or the master a sentinel names; then a check that
//! the server lets this user in and allows transactions. And the mapping of the redis crate's
//! errors onto kombu's kinds.

use kombu_core::{Error, ErrorKind, Result};
use redis::aio::MultiplexedConnection;

use crate::options::Options;

/// Longest a connection attempt may take (less when `socket_timeout` is shorter).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A client for `options`' server and one multiplexed connection to it, checked
/// ([`check_access`]). `label` (the masked URL) names the server in errors.
pub(crate) async fn open(
    options: &Options,
    label: &str,
) -> Result<(redis::Client, MultiplexedConnection)> {
    let client = match (&options.sentinel, &options.tls) {
        (Some(target), _) => {
            let mut sentinel = redis::sentinel::Sentinel::build(vec![target.sentinel.as_str()])
                .map_err(|e| redis_error(label, "bad sentinel address", e))?;
            let mut login = redis::RedisConnectionInfo::default().set_db(options.db);
            if let Some(user) = &target.username {
                login = login.set_username(user);
            }
            if let Some(password) = &target.password {
                login = login.set_password(password);
            }
            let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                .set_redis_connection_info(login);
            let master = sentinel
                .async_master_for(&target.master_name, Some(&node))
                .await;
            master.map_err(|e| {
                redis_error(
                    label,
                    &format!("no master {:?} from the sentinel", target.master_name),
                    e,
                )
            })?
        }
        (None, None) => {
            if options.client_url.starts_with("rediss://") {
                install_crypto_provider();
            }
            redis::Client::open(options.client_url.as_str())
                .map_err(|e| redis_error(label, "bad connection parameters", e))?
        }
        (None, Some(files)) => {
            install_crypto_provider();
            let read = |path: &str| {
                std::fs::read(path).map_err(|e| {
                    Error::new(
                        ErrorKind::Config,
                        format!("redis {label}: cannot read {path}"),
                    )
                    .with_source(e)
                })
            };
            let root_cert = files.ca_certs.as_deref().map(read).transpose()?;
            let client_tls = match (&files.certfile, &files.keyfile) {
                (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                    client_cert: read(cert)?,
                    client_key: read(key)?,
                }),
                _ => None,
            };
            redis::Client::build_with_tls(
                options.client_url.as_str(),
                redis::TlsCertificates {
                    client_tls,
                    root_cert,
                },
            )
            .map_err(|e| redis_error(label, "bad connection parameters", e))?
        }
    };
    // A connection attempt is bounded too: across a partition its SYNs go unanswered, and a
    // reconnection (one at a time) must not sit in the kernel's retries while every command
    // waits behind it.
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(options.socket_timeout))
        .set_connection_timeout(Some(options.socket_timeout.min(CONNECT_TIMEOUT)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| redis_error(label, "cannot connect", e))?;
    check_access(&mut conn, label).await?;
    Ok((client, conn))
}

/// A redis crate error as kombu's: refused logins and ACL denials are
/// [`ErrorKind::AccessRefused`], I/O and dropped connections [`ErrorKind::Connection`],
/// timeouts [`ErrorKind::Timeout`], the rest [`ErrorKind::Broker`] (recoverable when the
/// server only says it is not ready yet: `LOADING`, `TRYAGAIN`, `MASTERDOWN`, `CLUSTERDOWN`); the message names the
/// server (`label`) and what was being done (`what`), the redis error is the source.
pub(crate) fn redis_error(label: &str, what: &str, err: redis::RedisError) -> Error {
    let refused = matches!(
        err.kind(),
        redis::ErrorKind::AuthenticationFailed
            | redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
    ) || err.code() == Some("WRONGPASS")
        || err.code() == Some("NOAUTH");
    let kind = if refused {
        ErrorKind::AccessRefused
    } else if err.is_io_error() || err.is_connection_dropped() || err.is_connection_refusal() {
        ErrorKind::Connection
    } else if err.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Broker
    };
    // A server that is up but not serving yet (LOADING its append-only file after a restart,
    // a replica whose master is down): nothing was done, and asking again shortly works.
    let not_ready = matches!(
        err.kind(),
        redis::ErrorKind::Server(
            redis::ServerErrorKind::BusyLoading
                | redis::ServerErrorKind::TryAgain
                | redis::ServerErrorKind::MasterDown
                | redis::ServerErrorKind::ClusterDown
        )
    );
    Error::new(kind, format!("redis {label}: {what}"))
        .set_recoverable(kind.is_recoverable() || not_ready)
        .with_source(err)
}

/// A plain `PING` on a new connection, so that a server that wants a password the URL does not
/// give (or that refuses this user every command) is an [`ErrorKind::AccessRefused`] error at
/// connect time, then an empty transaction (`MULTI`, `EXEC`), so that a user the server does
/// not allow transactions is one too. The redis crate sends no `AUTH` without a password, and
/// 1.8 panics in its connection task (an overflow in debug builds; a bogus error index in
/// release builds) whenever the `MULTI` of a transaction is refused, by `NOAUTH` or an ACL's
/// `NOPERM`; callers then only see a broken pipe. kombu-rs sends transactions (declaring a
/// queue, purging one, writing acks), so this connection must be allowed them.
pub(crate) async fn check_access(conn: &mut MultiplexedConnection, label: &str) -> Result<()> {
    let pong: redis::RedisResult<redis::Value> = redis::cmd("PING").query_async(conn).await;
    match pong {
        Ok(_) => {}
        // The whole story is in the message; the server's own text adds nothing to it.
        Err(e) if e.code() == Some("NOAUTH") => {
            return Err(Error::new(
                ErrorKind::AccessRefused,
                format!(
                    "redis {label}: the server requires a password (NOAUTH) and the URL gives \
                     none (a user name alone is not sent); give it as \
                     redis://:PASSWORD@host:port/db or redis://USER:PASSWORD@host:port/db"
                ),
            ));
        }
        Err(e) => return Err(redis_error(label, "cannot connect", e)),
    }
    // Plain commands in a plain pipeline (not the crate's transaction support, which is what
    // a refused MULTI breaks), each answer on its own.
    let replies: Vec<redis::Value> = redis::pipe()
        .cmd("MULTI")
        .cmd("EXEC")
        .ignore_errors()
        .query_async(conn)
        .await
        .map_err(|e| redis_error(label, "cannot connect", e))?;
    for (command, reply) in ["MULTI", "EXEC"].into_iter().zip(&replies) {
        if let redis::Value::ServerError(err) = reply {
            let code = err.code();
            let detail = err.details().unwrap_or_default();
            return Err(Error::new(
                if code == "NOPERM" {
                    ErrorKind::AccessRefused
                } else {
                    ErrorKind::Broker
                },
                format!(
                    "redis {label}: the server refuses {command} ({code}: {detail}); kombu-rs \
                     needs transactions (MULTI and EXEC): for an ACL user, grant them with \
                     ACL SETUSER <user> +multi +exec"
                ),
            ));
        }
    }
    Ok(())
}

/// rustls needs a process-wide crypto provider; ring is ours (a no-op when one is set).
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
