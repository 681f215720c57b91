//! [`MongoServer`] does what the MongoDB fault tests count on: a SecantusDB killed with SIGKILL
//! comes back on the same port and storage, serving, with the writes it acknowledged (with and
//! without `--sync-on-commit`); `--standalone` reaches the server; one inside a network
//! namespace is reached through it.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kombu_test_support::faults::{self, MongoServer, Netns};

/// Ports of the MongoDB fault tests' range (27100-27109) that only this binary uses.
const KILL_PORT: u16 = 27100;
const SYNC_KILL_PORT: u16 = 27101;
const STANDALONE_PORT: u16 = 27102;
const NETNS_PORT: u16 = 27103;

/// How many documents the kill tests write, each acknowledged on its own, before the kill.
const DOCUMENTS: usize = 200;

/// Inserts `DOCUMENTS` documents into `kombu_test.kept`, one `insert_one` each, with `w: 1`
/// and `j: true`, and prints how many the server acknowledged.
const WRITE: &str = r#"
import sys, pymongo
from pymongo.write_concern import WriteConcern
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000)
kept = client.kombu_test.get_collection("kept", write_concern=WriteConcern(w=1, j=True))
acked = 0
for i in range(200):
    if kept.insert_one({"_id": i, "body": "x" * 100}).acknowledged:
        acked += 1
print(acked)
"#;

/// Prints how many documents `kombu_test.kept` holds, and whether the first and the last one
/// written are there.
const READ: &str = r#"
import sys, pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000)
kept = client.kombu_test.kept
print(kept.count_documents({}), kept.find_one({"_id": 0}) is not None, kept.find_one({"_id": 199}) is not None)
"#;

/// Prints whether the server says it is a writable primary, and its replica set's name.
const HELLO: &str = r#"
import sys, pymongo
client = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000, directConnection=True)
hello = client.admin.command("hello")
print(hello.get("isWritablePrimary"), hello.get("setName"))
"#;

fn connects(port: u16) -> bool {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Writes, SIGKILLs the server right after the last acknowledgement, starts it again on the
/// same storage and requires every acknowledged document back.
fn killed_server_keeps_acknowledged_writes(test: &str, port: u16, args: &[&str]) {
    if !MongoServer::can_run(test) {
        return;
    }
    for round in 1..=faults::rounds() {
        let started = Instant::now();
        let mut server = MongoServer::start_with_args(port, args);
        let start_took = started.elapsed();
        let writing = Instant::now();
        let acked = server.run_python(WRITE);
        let write_took = writing.elapsed();
        assert_eq!(acked.trim(), DOCUMENTS.to_string(), "acknowledged writes");
        server.sigkill();
        assert!(
            !connects(port),
            "the killed server still accepts connections"
        );
        assert!(!server.ping(), "the killed server still answers");
        assert!(
            server.storage_path().join("WiredTiger").is_file(),
            "the storage is kept: {}",
            server.storage_path().display()
        );

        let restarting = Instant::now();
        let serving = server.start_again();
        let restart_took = serving - restarting;
        assert!(connects(port), "the restarted server accepts connections");
        assert!(server.ping(), "the restarted server answers a ping");
        let read = server.run_python(READ);
        // Information only (no time is asserted): how long the server took to serve, and the
        // writes (the Python script included) took.
        eprintln!(
            "{test} round {round} ({args:?}): started in {start_took:?}, {DOCUMENTS} writes \
             acknowledged in {write_took:?}, restarted in {restart_took:?}; after SIGKILL and \
             restart (count, first, last): {}",
            read.trim()
        );
        assert_eq!(
            read.trim(),
            format!("{DOCUMENTS} True True"),
            "every acknowledged write survives the SIGKILL"
        );
    }
}

#[test]
fn secantusdb_killed_comes_back_with_what_it_acknowledged() {
    killed_server_keeps_acknowledged_writes("mongo_server_sigkill", KILL_PORT, &[]);
}

#[test]
fn secantusdb_killed_with_sync_on_commit_comes_back_with_what_it_acknowledged() {
    killed_server_keeps_acknowledged_writes(
        "mongo_server_sigkill_sync_on_commit",
        SYNC_KILL_PORT,
        &["--sync-on-commit"],
    );
}

#[test]
fn extra_flags_reach_the_server() {
    if !MongoServer::can_run("mongo_server_standalone") {
        return;
    }
    let server = MongoServer::start_with_args(STANDALONE_PORT, &["--standalone"]);
    assert_eq!(
        server.url(),
        format!("mongodb://127.0.0.1:{STANDALONE_PORT}")
    );
    assert_eq!(server.port(), STANDALONE_PORT);
    // Standalone: a writable primary of no replica set.
    assert_eq!(server.run_python(HELLO).trim(), "True None");
}

#[test]
fn a_server_in_a_namespace_is_reached_through_it() {
    if !MongoServer::can_run("mongo_server_netns")
        || !faults::can_run("mongo_server_netns", "mongodb", true, &["ip", "ss", "nft"])
    {
        return;
    }
    let netns = Netns::create();
    let mut server = MongoServer::start_in(&netns, NETNS_PORT, &[]);
    assert_eq!(
        server.url(),
        format!("mongodb://{}:{NETNS_PORT}", netns.ns_ip())
    );
    // The replica set it advertises names its own address, so a driver following it stays
    // on the namespace's address.
    assert_eq!(server.run_python(HELLO).trim(), "True secantus");
    netns.cut();
    assert!(!server.ping(), "the cut server still answers");
    netns.restore();
    server.wait_ready();
}
