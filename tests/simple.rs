//! `kombu::simple` on every transport (memory, SQLite, Redis, AMQP, MongoDB): put and get with
//! ack, get_nowait, empty, qsize and clear, an unsettled message coming back, a poison message
//! moved aside, and the no-ack SimpleBuffer with kombu's declarations.

use std::time::Duration;

use kombu::simple::{SimpleBuffer, SimpleQueue, is_empty};
use kombu::{Connection, ErrorKind};
use kombu_test_support::brokers;
use serde::{Deserialize, Serialize};

const WAIT: Duration = Duration::from_secs(10);

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Job {
    id: u32,
    what: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_queue_puts_and_gets_on_every_transport() {
    for broker in brokers::every("simple-queue") {
        let t = broker.transport;
        let conn = Connection::open(&broker.url).await.expect("open");
        let name = unique("simple");
        let mut queue = SimpleQueue::new(&conn, &name).await.expect(t);
        assert_eq!(queue.qsize().await.expect(t), 0, "{t}");

        // Empty: at once without waiting, and after the timeout.
        let nothing = queue.get_nowait::<Job>().await.expect_err(t);
        assert!(is_empty(&nothing), "{t}: {nothing:#}");
        assert!(!nothing.is_recoverable(), "{t}");

        for id in 0..3 {
            let job = Job {
                id,
                what: format!("job {id}"),
            };
            queue
                .message(&job)
                .header("n", i64::from(id))
                .send()
                .await
                .expect(t);
        }
        assert_eq!(queue.qsize().await.expect(t), 3, "{t}");

        // kombu's basic_get path, before any consumer.
        let first = queue.get_nowait::<Job>().await.expect(t);
        assert_eq!(first.id, 0, "{t}");
        assert_eq!(
            first.delivery().headers().get("n"),
            Some(&0i64.into()),
            "{t}"
        );
        first.ack().await.expect(t);

        for id in 1..3 {
            let job = queue.get::<Job>(WAIT).await.expect(t);
            assert_eq!(job.value().id, id, "{t}");
            assert_eq!(job.delivery().routing_key(), name, "{t}");
            assert_eq!(
                job.delivery().exchange(),
                name,
                "{t}: through the queue's own exchange"
            );
            job.ack().await.expect(t);
        }
        let empty = queue
            .get::<Job>(Duration::from_millis(50))
            .await
            .expect_err(t);
        assert!(is_empty(&empty), "{t}: {empty:#}");
        assert_eq!(empty.kind(), ErrorKind::Timeout, "{t}");

        // clear purges what is ready.
        queue
            .put(&Job {
                id: 9,
                what: "x".into(),
            })
            .await
            .expect(t);
        queue
            .put(&Job {
                id: 10,
                what: "y".into(),
            })
            .await
            .expect(t);
        queue.close().await.expect(t);
        let queue = SimpleQueue::new(&conn, &name).await.expect(t);
        assert_eq!(queue.clear().await.expect(t), 2, "{t}");
        assert_eq!(queue.qsize().await.expect(t), 0, "{t}");
        queue.close().await.expect(t);
        conn.delete_queue(&name).await.expect(t);
        conn.close().await.expect(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_message_comes_back_and_a_poison_one_is_moved_aside() {
    for broker in brokers::every("simple-requeue") {
        let t = broker.transport;
        let conn = Connection::open(&broker.url).await.expect("open");
        let name = unique("simple-back");
        let mut queue = SimpleQueue::new(&conn, &name).await.expect(t);
        queue.put("not a job").await.expect(t);
        queue
            .put(&Job {
                id: 1,
                what: "kept".into(),
            })
            .await
            .expect(t);

        // A body that is not a Job: dead-lettered, and the queue goes on.
        let poison = queue.get::<Job>(WAIT).await.expect_err(t);
        assert_eq!(poison.kind(), ErrorKind::DeadLettered, "{t}: {poison:#}");
        let dlq = kombu::dead_letter::dlq_name(&name);
        assert_eq!(conn.queue_size(&dlq).await.expect(t), 1, "{t}");

        // Dropped unsettled: back in the queue, redelivered.
        let job = queue.get::<Job>(WAIT).await.expect(t);
        assert!(!job.delivery().redelivered(), "{t}");
        drop(job);
        let again = queue.get::<Job>(WAIT).await.expect(t);
        assert_eq!(again.id, 1, "{t}");
        assert!(again.delivery().redelivered(), "{t}");
        again.requeue().await.expect(t);
        queue.close().await.expect(t);

        // Another SimpleQueue of the same name (a second process, say) gets it.
        let mut other = SimpleQueue::new(&conn, &name).await.expect(t);
        let (job, delivery) = other.get::<Job>(WAIT).await.expect(t).into_parts();
        assert_eq!(job.what, "kept", "{t}");
        delivery.ack().await.expect(t);
        other.close().await.expect(t);
        conn.delete_queue(&name).await.expect(t);
        conn.delete_queue(&dlq).await.expect(t);
        conn.close().await.expect(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_buffer_is_no_ack_and_transient_on_every_transport() {
    for broker in brokers::every("simple-buffer") {
        let t = broker.transport;
        let conn = Connection::open(&broker.url).await.expect("open");
        let name = unique("buffer");
        let mut buffer = SimpleBuffer::new(&conn, &name).await.expect(t);
        for n in 0..3u32 {
            buffer.put(&n).await.expect(t);
        }
        assert_eq!(buffer.qsize().await.expect(t), 3, "{t}");
        assert_eq!(buffer.get_nowait::<u32>().await.expect(t), 0, "{t}");
        assert_eq!(buffer.get::<u32>(WAIT).await.expect(t), 1, "{t}");
        assert_eq!(buffer.get::<u32>(WAIT).await.expect(t), 2, "{t}");
        let empty = buffer.get::<u32>(Duration::from_millis(50)).await;
        assert!(empty.as_ref().is_err_and(is_empty), "{t}: {empty:?}");
        buffer.close().await.expect(t);
        // No-ack: what was taken is gone even though nothing was acked.
        assert_eq!(conn.queue_size(&name).await.unwrap_or(0), 0, "{t}");

        // Transient messages (kombu's exchange delivery_mode='transient').
        let buffer = SimpleBuffer::new(&conn, &name).await.expect(t);
        buffer.put("x").await.expect(t);
        let got = conn
            .default_channel()
            .get(&name, false)
            .await
            .expect(t)
            .expect("a message");
        assert_eq!(
            got.properties().delivery_mode,
            Some(kombu::DeliveryMode::Transient),
            "{t}"
        );
        got.ack().await.expect(t);
        buffer.close().await.expect(t);
        conn.delete_queue(&name).await.expect(t);
        conn.close().await.expect(t);
    }
}

/// kombu declares a SimpleBuffer's queue exclusive: on RabbitMQ a second connection cannot
/// declare it (RESOURCE_LOCKED), as between two Python processes.
#[tokio::test]
async fn a_buffer_belongs_to_its_connection_on_rabbitmq() {
    let Some(broker) = brokers::broker("amqp", "simple-exclusive") else {
        return;
    };
    let name = unique("buffer-exclusive");
    let owner = Connection::open(&broker.url).await.expect("open");
    let buffer = SimpleBuffer::new(&owner, &name).await.expect("declare");
    let other = Connection::open(&broker.url).await.expect("open");
    let refused = SimpleBuffer::new(&other, &name)
        .await
        .expect_err("exclusive");
    assert_eq!(refused.kind(), ErrorKind::Locked, "{refused:#}");
    buffer.close().await.expect("close");
    other.close().await.expect("close");
    owner.close().await.expect("close");
}
