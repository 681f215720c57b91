//! RPC across lost connections on RabbitMQ: `rabbitmqctl close_all_connections` on a virtual
//! host of this test's own drops the client's and the server's connections (nothing else uses
//! the vhost). Both reconnect by themselves; calls go on, with direct reply-to (the reply
//! consumer subscribes again on the channel requests go out on) and with a reply queue of the
//! client's own (declared again: it was exclusive, so the broker deleted it). A call in flight
//! when the connection drops may time out (its reply was addressed to the old channel or
//! queue); none hangs past its timeout.

use std::process::Command;
use std::time::{Duration, Instant};

use kombu::Connection;
use kombu::rpc::{RpcClient, RpcServer};

/// How long the calls may fail while the connections come back.
const RECOVERY: Duration = Duration::from_secs(60);

fn rabbitmqctl(args: &[&str]) -> bool {
    Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A fresh vhost `name` the guest user may use; `None` (skipped) unless AMQP is required.
fn fresh_vhost(name: &str) -> Option<String> {
    let made = rabbitmqctl(&["add_vhost", name])
        && rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]);
    match made {
        true => Some(format!("amqp://guest:guest@127.0.0.1:5672/{name}")),
        false if kombu_test_support::brokers::required("amqp") => {
            panic!("rabbitmqctl cannot make the vhost {name}, and AMQP is required")
        }
        false => {
            eprintln!("rpc_recovery: skipped, rabbitmqctl unavailable");
            None
        }
    }
}

/// Calls until one succeeds (each call bounded by its timeout), then five more in a row.
async fn calls_resume(client: &RpcClient, queue: &str, what: &str) {
    let started = Instant::now();
    let mut failures = Vec::new();
    loop {
        let call = client.call::<_, i64>(queue, &21i64, Duration::from_secs(2));
        // The call's own timeout bounds it; this guard only catches a hang.
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Err(_) => panic!("{what}: a call hung past its timeout"),
            Ok(Ok(answer)) => {
                assert_eq!(answer, 42, "{what}");
                break;
            }
            Ok(Err(error)) => {
                assert!(
                    started.elapsed() < RECOVERY,
                    "{what}: calls still fail after {RECOVERY:?}: {failures:?}"
                );
                failures.push(format!("{:?}: {error:#}", error.kind()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    eprintln!(
        "{what}: calls resumed after {:?} ({} failed meanwhile: {failures:?})",
        started.elapsed(),
        failures.len()
    );
    for i in 0..5 {
        let answer: i64 = client
            .call(queue, &i, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("{what}: call {i} after recovery: {e:#}"));
        assert_eq!(answer, 2 * i, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_after_the_connections_drop() {
    // A vhost of this run's own: another run on the same broker keeps its own.
    let vhost = format!("kombu-rs-rpc-recovery-{}", uuid::Uuid::new_v4().simple());
    let name = vhost.clone();
    let Some(url) = tokio::task::spawn_blocking(move || fresh_vhost(&name))
        .await
        .expect("setup")
    else {
        return;
    };
    let server_conn = Connection::open(&url).await.expect("open");
    let client_conn = Connection::open(&url).await.expect("open");
    let queue = "rpc.double";
    let running = RpcServer::new(&server_conn, queue)
        .await
        .expect("server")
        .spawn(|n: i64| async move { Ok::<_, kombu::Error>(2 * n) });
    let direct = RpcClient::new(&client_conn).await.expect("direct client");
    let own = RpcClient::builder(&client_conn)
        .direct_reply_to(false)
        .build()
        .await
        .expect("client with its own reply queue");
    for client in [&direct, &own] {
        let answer: i64 = client
            .call(queue, &1i64, Duration::from_secs(10))
            .await
            .expect("a call before");
        assert_eq!(answer, 2);
    }

    for round in 1..=2 {
        let (mut client_link, mut server_link) = (client_conn.link(), server_conn.link());
        client_link.mark_unchanged();
        server_link.mark_unchanged();
        let name = vhost.clone();
        assert!(
            tokio::task::spawn_blocking(move || rabbitmqctl(&[
                "close_all_connections",
                "-p",
                &name,
                "kombu-rs rpc recovery test",
            ]))
            .await
            .expect("rabbitmqctl"),
            "rabbitmqctl close_all_connections failed"
        );
        calls_resume(&direct, queue, &format!("direct reply-to, round {round}")).await;
        calls_resume(&own, queue, &format!("own reply queue, round {round}")).await;
        // The calls went on because both connections came back, not because none dropped.
        assert!(
            client_link.has_changed().unwrap_or(false),
            "round {round}: the client's connection never dropped"
        );
        assert!(
            server_link.has_changed().unwrap_or(false),
            "round {round}: the server's connection never dropped"
        );
    }

    direct.close().await.expect("close");
    own.close().await.expect("close");
    running.stop().await.expect("server stops");
    let _ = tokio::task::spawn_blocking(move || rabbitmqctl(&["delete_vhost", &vhost])).await;
}
