//! Waiting without change streams: what a standalone MongoDB makes the transport do.
//!
//! - The scenarios of the conformance suite that wait (for a publish, a requeue, a lease that
//!   passes, a fanout message) with `change_streams=false` on the shared test server: the
//!   adaptive poll alone must carry them.
//! - `a_standalone_server_is_polled`: a server of the test's own started `--standalone`
//!   (SecantusDB then refuses change streams with MongoDB's error 40573, as a standalone
//!   `mongod` does); a consumer receives what a bare client inserted in kombu's layout (no
//!   local wake-up: only a look at the store finds it) and what the transport published.

mod support;

use std::time::Duration;

use async_trait::async_trait;
use kombu_core::conformance::{Harness, next_delivery};
use kombu_core::transport::virtual_transport::{Envelope, envelope};
use kombu_core::{Connection, Message, Queue};
use kombu_test_support::faults::MongoServer;
use mongodb::bson::doc;

struct Polling;

#[async_trait]
impl Harness for Polling {
    fn transport(&self) -> &'static str {
        kombu_mongodb::register();
        "mongodb"
    }
    async fn fresh_url(&self) -> Option<String> {
        let url = support::server().await?;
        Some(format!(
            "{url}/{}?visibility_timeout=1&polling_interval=0.05&change_streams=false",
            support::fresh_database("p")
        ))
    }
}

kombu_core::conformance_tests!(@each Polling;
    round_trip,
    fanout_routing,
    requeue_redelivers,
    visibility_timeout,
    competing_consumers,
    multi_queue_consumer,
    lease_restored_by_restorers_timeout,
);

/// The standalone server's port.
const STANDALONE_PORT: u16 = 27111;
/// A guard against hanging, not a timing assertion.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_server_is_polled() {
    if !MongoServer::can_run("mongodb standalone") {
        return;
    }
    kombu_mongodb::register();
    let server = tokio::task::spawn_blocking(|| {
        MongoServer::start_with_args(STANDALONE_PORT, &["--standalone"])
    })
    .await
    .expect("start secantusd --standalone");
    let url = format!("{}/standalone?polling_interval=0.2", server.url());
    let conn = Connection::open(&url).await.expect("connect");
    let queue = Queue::new("jobs");
    conn.declare_queue(&queue).await.expect("declare");
    let mut consumer = conn
        .consumer([queue.clone()])
        .build()
        .await
        .expect("consumer");

    // A document a bare client writes, as Python kombu would: nothing in this process wakes
    // the consumer, so only its poll can find it.
    let env = Envelope::new(
        Message::new("from a bare client"),
        String::new(),
        "jobs".into(),
    );
    let payload = String::from_utf8(envelope::encode(&env)).expect("UTF-8 envelope");
    let client = mongodb::Client::with_uri_str(server.url())
        .await
        .expect("bare client");
    client
        .database("standalone")
        .collection::<mongodb::bson::Document>("messages")
        .insert_one(doc! { "payload": payload, "queue": "jobs", "priority": 9 })
        .await
        .expect("insert");
    let delivery = next_delivery(&mut consumer, PATIENCE).await;
    assert_eq!(&delivery.body()[..], b"from a bare client");
    delivery.ack().await.expect("ack");

    conn.producer()
        .routing_key("jobs")
        .publish(&"through the transport")
        .await
        .expect("publish");
    let delivery = next_delivery(&mut consumer, PATIENCE).await;
    assert_eq!(
        delivery.decode::<String>().expect("a JSON string"),
        "through the transport"
    );
    delivery.ack().await.expect("ack");
    consumer.close().await.expect("close");
    conn.close().await.expect("close the connection");
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .expect("stop secantusd");
}
