//! A fanout publish made right after a queue's bind returned reaches that queue: the tail
//! that reads the broadcast collection starts in the background, but its position (after the
//! exchange's documents present at the bind) is read before the bind returns, as kombu counts
//! its cursor's offset in the bind. Before, a tail that started after such a publish counted
//! it among the documents to skip (about one round in ten on SecantusDB lost its message).
//!
//! The server is `$KOMBU_TEST_MONGODB_URL`; one database of its own, dropped when it passes.

mod support;

use std::time::Duration;

use futures::StreamExt;
use kombu_core::{Connection, Exchange, Queue};

const ROUNDS: usize = 10;

#[tokio::test]
async fn a_publish_right_after_the_bind_is_read() {
    let Some(server) = support::require("a_publish_right_after_the_bind_is_read").await else {
        return;
    };
    let name = support::fresh_database("fanoutbind");
    let url = format!("{server}/{name}");
    for round in 0..ROUNDS {
        // A connection per round: each bind starts a tail of its own.
        let conn = Connection::open(&url).await.expect("open");
        let x = Exchange::fanout(format!("x{round}"));
        conn.declare_exchange(&x).await.expect("declare");
        let q = Queue::new(format!("q{round}")).exchange(x.clone());
        let mut consumer = conn.consumer([q]).build().await.expect("consume");
        conn.producer()
            .exchange(x)
            .publish(&round.to_string())
            .await
            .expect("publish");
        let d = match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            other => panic!("round {round}: the publish made after the bind is lost: {other:?}"),
        };
        assert_eq!(d.decode::<String>().expect("decode"), round.to_string());
        d.ack().await.expect("ack");
        consumer.close().await.expect("close");
        conn.close().await.expect("close");
    }
    if let Ok(client) = mongodb::Client::with_uri_str(&server).await {
        let _ = client.database(&name).drop().await;
    }
}
