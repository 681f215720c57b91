//! Plain HTTP/1.0 requests to servers the tests run on loopback (Flower, the monitor): no
//! client library, so the bytes sent and read are exactly what the test says.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port") // ok: a test helper; no port means no test can run
}

/// `GET path` on loopback `port`: the status and the body (`None` when nothing answers).
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    request(port, "GET", path, "", "")
}

/// `POST path` with `body`.
pub fn post(port: u16, path: &str, body: &str) -> Option<(u16, String)> {
    request(port, "POST", path, body, "")
}

/// A request on loopback `port` (`headers`: extra lines, each ending in CRLF; a `Host:` line
/// first replaces `Host: 127.0.0.1`): the status and the body.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> Option<(u16, String)> {
    let raw = exchange(port, method, path, body, headers)?;
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// The head of the answer to a GET (status line and headers).
pub fn head(port: u16, path: &str, headers: &str) -> Option<String> {
    let raw = exchange(port, "GET", path, "", headers)?;
    Some(
        raw.split_once("\r\n\r\n")
            .map_or(raw.clone(), |(head, _)| head.to_owned()),
    )
}

fn exchange(port: u16, method: &str, path: &str, body: &str, headers: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let host = match headers.starts_with("Host:") {
        true => "",
        false => "Host: 127.0.0.1\r\n",
    };
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\n{host}{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).ok()?;
    Some(raw)
}
