//! [`MongoServer`] does what the MongoDB fault tests count on: a SecantusDB killed with SIGKILL
//! comes back on the same port and storage, serving, with the writes it acknowledged with
//! `j: true` (and, with `--sync-on-commit`, those acknowledged with `w: 1` alone; without it
//! some of those are lost, which the test reports); `--standalone` reaches the server; one
//! inside a network namespace is reached through it.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kombu_test_support::faults::{self, MongoServer, Netns};

/// Ports of the MongoDB fault tests' range (27100-27109) that only this binary uses.
const KILL_PORT: u16 = 27100;
const SYNC_KILL_PORT: u16 = 27101;
const STANDALONE_PORT: u16 = 27102;
const NETNS_PORT: u16 = 27103;

/// How many documents the kill tests write with `j: true`, then with `w: 1` alone, each
/// acknowledged on its own, before the kill.
const JOURNALED: usize = 200;
const UNJOURNALED: usize = 1000;

/// Inserts `sys.argv[3]` documents into `kombu_test.journaled` with `w: 1, j: true`, then
/// `sys.argv[4]` into `kombu_test.unjournaled` with `w: 1` alone, one `insert_one` each; SIGKILLs
/// the server (pid `sys.argv[2]`) right after the last acknowledgement; prints how many of each
/// were acknowledged.
const WRITE_THEN_KILL: &str = r#"
import os, signal, sys, pymongo
from pymongo.write_concern import WriteConcern
url, pid, journaled, unjournaled = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
client = pymongo.MongoClient(url, serverSelectionTimeoutMS=10000)
db = client.kombu_test
acked = []
for name, n, j in (("journaled", journaled, True), ("unjournaled", unjournaled, False)):
    collection = db.get_collection(name, write_concern=WriteConcern(w=1, j=j))
    acked.append(sum(collection.insert_one({"_id": i, "body": "x" * 100}).acknowledged for i in range(n)))
os.kill(pid, signal.SIGKILL)
print(*acked)
"#;

/// Prints how many documents `kombu_test.journaled` and `kombu_test.unjournaled` hold.
const COUNT: &str = r#"
import sys, pymongo
db = pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=10000).kombu_test
print(db.journaled.count_documents({}), db.unjournaled.count_documents({}))
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

fn counts(line: &str) -> (usize, usize) {
    let mut n = line
        .split_whitespace()
        .map(|c| c.parse::<usize>().expect("a count"));
    (n.next().expect("a count"), n.next().expect("two counts"))
}

/// Writes with `j: true`, then with `w: 1` alone, SIGKILLs the server right after the last
/// acknowledgement, starts it again on the same storage and counts what came back: every
/// journaled write must, and every unjournaled one when `unjournaled_kept`. Returns how many
/// unjournaled writes came back per round.
fn killed_server_comes_back(
    test: &str,
    port: u16,
    args: &[&str],
    unjournaled_kept: bool,
) -> Vec<usize> {
    let mut kept = Vec::new();
    for round in 1..=faults::rounds() {
        let started = Instant::now();
        let mut server = MongoServer::start_with_args(port, args);
        let start_took = started.elapsed();
        let pid = server.pid().expect("the server runs").to_string();
        let written = server.run_python(
            WRITE_THEN_KILL,
            &[&pid, &JOURNALED.to_string(), &UNJOURNALED.to_string()],
        );
        assert_eq!(counts(&written), (JOURNALED, UNJOURNALED), "acknowledged");
        server.sigkill(); // reaps it
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
        let (journaled, unjournaled) = counts(&server.run_python(COUNT, &[]));
        // Information only (no time is asserted).
        eprintln!(
            "{test} round {round} ({args:?}): started in {start_took:?}, restarted in \
             {restart_took:?}; after SIGKILL: {journaled}/{JOURNALED} j:true writes, \
             {unjournaled}/{UNJOURNALED} w:1 writes"
        );
        assert_eq!(journaled, JOURNALED, "every j:true write survives SIGKILL");
        assert!(unjournaled <= UNJOURNALED);
        if unjournaled_kept {
            assert_eq!(unjournaled, UNJOURNALED, "every w:1 write survives SIGKILL");
        }
        kept.push(unjournaled);
    }
    kept
}

#[test]
fn killed_secantusdb_keeps_its_journaled_writes() {
    let test = "mongo_server_sigkill";
    if !MongoServer::can_run(test) {
        return;
    }
    let kept = killed_server_comes_back(test, KILL_PORT, &[], false);
    // Not asserted (it depends on timing): without --sync-on-commit, the last w:1 writes before
    // a SIGKILL are usually lost.
    eprintln!(
        "{test}: w:1 writes kept per round without --sync-on-commit: {kept:?} of {UNJOURNALED}"
    );
}

#[test]
fn killed_secantusdb_with_sync_on_commit_keeps_every_acknowledged_write() {
    let test = "mongo_server_sigkill_sync_on_commit";
    if !MongoServer::can_run(test) {
        return;
    }
    killed_server_comes_back(test, SYNC_KILL_PORT, &["--sync-on-commit"], true);
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
    assert_eq!(server.run_python(HELLO, &[]).trim(), "True None");
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
    // A single-node replica set by default, advertising the address it listens on.
    assert_eq!(server.run_python(HELLO, &[]).trim(), "True secantus");
    netns.cut();
    assert!(!server.ping(), "the cut server still answers");
    netns.restore();
    server.wait_ready();
}
