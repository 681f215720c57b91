//! What the AMQP tests share: the broker URL, a check that it is up (skip or fail per
//! `KOMBU_TEST_REQUIRE`), and a virtual host of their own, made fresh for each test binary run.

#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

/// The broker of the tests: `$KOMBU_TEST_AMQP_URL`, else guest on 127.0.0.1:5672.
pub fn base_url() -> String {
    std::env::var("KOMBU_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/".to_owned())
}

/// Whether the AMQP tests must run (`KOMBU_TEST_REQUIRE` names amqp or is `all`).
pub fn required() -> bool {
    std::env::var("KOMBU_TEST_REQUIRE")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .any(|r| r == "all" || r == "amqp")
}

/// Whether the broker answers on its port; when it does not, a skip message (or a panic when
/// the tests are required).
pub fn broker_up(test: &str) -> bool {
    let url = kombu_core::BrokerUrl::parse(&base_url()).expect("KOMBU_TEST_AMQP_URL parses");
    let host = url
        .host()
        .unwrap_or("127.0.0.1")
        .replace("localhost", "127.0.0.1");
    let port = url.port().unwrap_or(5672);
    let addr = format!("{host}:{port}");
    let up = addr
        .parse()
        .ok()
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok())
        .is_some();
    if !up {
        if required() {
            panic!("{test}: no AMQP broker at {addr}, and KOMBU_TEST_REQUIRE requires one");
        }
        eprintln!("{test}: skipped, no AMQP broker at {addr}");
    }
    up
}

/// A virtual host named `name`, deleted and made again (so what earlier runs left there is
/// gone), with all permissions for the URL's user. `None` when `rabbitmqctl` cannot do it (not
/// root, another machine): the tests then use the URL's own virtual host, with unique names.
pub fn fresh_vhost(name: &str) -> Option<String> {
    let url = kombu_core::BrokerUrl::parse(&base_url()).ok()?;
    let user = url
        .username()
        .filter(|u| !u.is_empty())
        .unwrap_or("guest")
        .to_owned();
    let ctl = |args: &[&str]| {
        Command::new("rabbitmqctl")
            .args(args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let _ = ctl(&["delete_vhost", name]);
    if !ctl(&["add_vhost", name]) || !ctl(&["set_permissions", "-p", name, &user, ".*", ".*", ".*"])
    {
        eprintln!("rabbitmqctl could not make vhost {name}; using the URL's vhost");
        return None;
    }
    Some(name.to_owned())
}

/// The test URL on virtual host `vhost` (percent-encoded).
pub fn url_on(vhost: Option<&str>) -> String {
    let base = base_url();
    let Some(vhost) = vhost else { return base };
    let (before, query) = match base.split_once('?') {
        Some((b, q)) => (b.to_owned(), format!("?{q}")),
        None => (base.clone(), String::new()),
    };
    let after_scheme = before.find("://").map_or(0, |i| i + 3);
    let authority_end = before[after_scheme..]
        .find('/')
        .map_or(before.len(), |i| after_scheme + i);
    let encoded: String = vhost
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("{}/{encoded}{query}", &before[..authority_end])
}
