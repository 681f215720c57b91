//! The fault tests' harness does what the fault tests count on: a Redis server killed with
//! SIGKILL comes back with what it acknowledged (append-only file, `appendfsync always`); a
//! cut link is silent (a connection attempt times out, nothing refuses or resets it) and a
//! restored one carries traffic again; a fault test's port that is taken fails the test.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use kombu_test_support::faults::{self, Netns, RedisServer};

/// Ports of the fault tests' range (16380-16389) that only this binary uses.
const KILL_PORT: u16 = 16382;
const CUT_PORT: u16 = 16383;
const TAKEN_PORT: u16 = 16384;

/// Sends one inline command and returns the first reply bytes.
fn command(ip: &str, port: u16, line: &str) -> std::io::Result<String> {
    let addr: SocketAddr = format!("{ip}:{port}").parse().expect("address");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(format!("{line}\r\n").as_bytes())?;
    let mut reply = [0u8; 256];
    let n = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
}

#[test]
fn redis_killed_comes_back_with_what_it_acknowledged() {
    if !faults::can_run("harness", "redis", false, &["redis-server"]) {
        return;
    }
    let mut server = RedisServer::start(KILL_PORT);
    assert_eq!(
        command("127.0.0.1", KILL_PORT, "SET kept yes").expect("SET"),
        "+OK\r\n"
    );
    server.sigkill();
    assert!(
        command("127.0.0.1", KILL_PORT, "PING").is_err(),
        "the killed server still answers"
    );
    server.start_again();
    assert_eq!(
        command("127.0.0.1", KILL_PORT, "GET kept").expect("GET"),
        "$3\r\nyes\r\n"
    );
}

#[test]
fn a_cut_link_is_silent_and_a_restored_one_works() {
    if !faults::can_run(
        "harness",
        "redis",
        true,
        &["redis-server", "ip", "ss", "nft"],
    ) {
        return;
    }
    let netns = Netns::create();
    let server = RedisServer::start_in(&netns, CUT_PORT);
    assert_eq!(
        command(netns.ns_ip(), CUT_PORT, "PING").expect("PING"),
        "+PONG\r\n"
    );
    // An open connection, to see that it survives the cut unwarned.
    let addr: SocketAddr = format!("{}:{CUT_PORT}", netns.ns_ip())
        .parse()
        .expect("addr");
    let mut open = TcpStream::connect(addr).expect("connect");
    assert_eq!(netns.connections_to(CUT_PORT).len(), 1);

    netns.cut();
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .expect_err("a connection through the cut");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::TimedOut,
        "silence, not a refusal or a reset: {err}"
    );
    open.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    open.write_all(b"PING\r\n")
        .expect("the write is only queued");
    let mut reply = [0u8; 16];
    let read = open.read(&mut reply);
    assert!(
        matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "nothing comes back through the cut: {read:?}"
    );

    netns.restore();
    assert_eq!(
        command(netns.ns_ip(), CUT_PORT, "PING").expect("PING"),
        "+PONG\r\n"
    );
    // The open connection was never reset: its PING is answered once packets flow again.
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let n = open.read(&mut reply).expect("the reply after the restore");
    assert_eq!(&reply[..n], b"+PONG\r\n");
    drop(server);
}

#[test]
#[should_panic(expected = "which this fault test owns, is taken")]
fn a_taken_port_fails_clearly() {
    let _taken = TcpListener::bind(("127.0.0.1", TAKEN_PORT)).expect("bind");
    faults::assert_port_free("127.0.0.1", TAKEN_PORT);
}
