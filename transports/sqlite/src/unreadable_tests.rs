//! A take of an unreadable row whose consumer dies before `set_aside` loses nothing: the lease
//! ends, the row comes back, and a late `set_aside` of the dead take moves nothing (its version
//! check fails, as a late ack's does) while the new take's moves it.

use std::time::Duration;

use kombu_core::transport::virtual_transport::{Backend, Envelope, Receipt, TakeMode};
use kombu_core::{BrokerUrl, Message, Queue};

use crate::backend::SqliteBackend;
use crate::options::Options;

fn dead_letter(raw: &bytes::Bytes) -> Envelope {
    Envelope::new(Message::new(raw.clone()), String::new(), "q.dlq".to_owned())
}

#[tokio::test]
async fn an_unreadable_row_taken_and_abandoned_comes_back() -> kombu_core::Result<()> {
    let path = std::env::temp_dir().join(format!(
        "kombu-sqlite-abandoned-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let url = BrokerUrl::parse(&format!("sqlite://{}", path.display()))?;
    let backend = SqliteBackend::shared(Options::from_url(&url)?, "test".to_owned()).await?;
    backend.queue("q", Some(&Queue::new("q"))).await?;
    backend.queue("q.dlq", Some(&Queue::new("q.dlq"))).await?;
    {
        let db = rusqlite::Connection::open(&path).map_err(broker)?;
        db.execute(
            "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) \
             VALUES (1, NULL, x'00ff', 1, (SELECT id FROM kombu_queue WHERE name = 'q'))",
            [],
        )
        .map_err(broker)?;
    }
    let lease = TakeMode::Lease(Some(Duration::from_millis(50)));
    let first = backend.get_many("q", 10, lease).await?;
    assert!(first.taken.is_empty());
    assert_eq!(first.unreadable.len(), 1);
    let dead = first.unreadable[0].clone();
    assert_eq!(dead.raw.as_ref(), b"\x00\xff");
    assert_ne!(dead.receipt, Receipt::Unleased);
    // The consumer dies here: no set_aside. While the lease holds, nothing is there.
    assert!(
        backend
            .get_many("q", 10, lease)
            .await?
            .unreadable
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = backend.get_many("q", 10, lease).await?;
    assert_eq!(second.unreadable.len(), 1, "the row came back");
    let again = second.unreadable[0].clone();
    assert_eq!(again.raw, dead.raw);
    assert_ne!(again.receipt, dead.receipt);

    // The dead take's late set_aside moves nothing; the live one's moves it.
    let late = vec![(dead.receipt.clone(), dead_letter(&dead.raw))];
    backend.set_aside("q", "q.dlq", late).await?;
    assert_eq!(
        backend.queue("q.dlq", None).await?.map(|q| q.messages),
        Some(0)
    );
    let live = vec![(again.receipt.clone(), dead_letter(&again.raw))];
    backend.set_aside("q", "q.dlq", live).await?;
    assert_eq!(
        backend.queue("q.dlq", None).await?.map(|q| q.messages),
        Some(1)
    );
    let out = backend.get_many("q.dlq", 10, TakeMode::NoAck).await?;
    assert_eq!(out.taken.len(), 1);
    assert_eq!(out.taken[0].envelope.message.body, dead.raw);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let left = backend.get_many("q", 10, lease).await?;
    assert!(left.taken.is_empty() && left.unreadable.is_empty());
    drop(backend);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

fn broker(e: rusqlite::Error) -> kombu_core::Error {
    kombu_core::Error::new(kombu_core::ErrorKind::Broker, "raw sqlite").with_source(e)
}

/// Rows Python kombu took (visible 0, no take time: it never acks nor deletes them) are not
/// unacked; a kombu-rs lease is. A peek shows the ready rows in take order, an unreadable one
/// as the dead letter it would become.
#[tokio::test]
async fn stats_count_only_kombu_rs_leases_and_peeks_take_nothing() -> kombu_core::Result<()> {
    let path = std::env::temp_dir().join(format!(
        "kombu-sqlite-stats-{}.db",
        uuid::Uuid::new_v4().simple()
    ));
    let url = BrokerUrl::parse(&format!("sqlite://{}", path.display()))?;
    let backend = SqliteBackend::shared(Options::from_url(&url)?, "test".to_owned()).await?;
    backend.queue("q", Some(&Queue::new("q"))).await?;
    {
        let db = rusqlite::Connection::open(&path).map_err(broker)?;
        // Taken by Python kombu long ago, then a row that is not an envelope.
        db.execute_batch(
            "INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) \
             VALUES (0, '2020-01-01 00:00:00', 'old', 1, (SELECT id FROM kombu_queue WHERE name = 'q')); \
             INSERT INTO kombu_message (visible, timestamp, payload, version, queue_id) \
             VALUES (1, NULL, x'00ff', 1, (SELECT id FROM kombu_queue WHERE name = 'q'));",
        )
        .map_err(broker)?;
    }
    backend
        .put(
            "q",
            Envelope::new(Message::new(&b"\"a\""[..]), String::new(), "q".to_owned()),
        )
        .await?;
    let stats = backend
        .queue_stats("q")
        .await?
        .ok_or_else(|| kombu_core::Error::new(kombu_core::ErrorKind::NotFound, "no queue q"))?;
    assert_eq!((stats.ready, stats.unacked), (2, Some(0)));
    let seen = backend.peek("q", 10).await?;
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].routing_key, "q.dlq",
        "the unreadable row first, as stored"
    );
    assert_eq!(seen[1].message.body.as_ref(), b"\"a\"");
    let taken = backend.get_many("q", 1, TakeMode::Lease(None)).await?;
    assert_eq!(taken.unreadable.len(), 1, "the peek took nothing");
    let stats = backend
        .queue_stats("q")
        .await?
        .ok_or_else(|| kombu_core::Error::new(kombu_core::ErrorKind::NotFound, "no queue q"))?;
    assert_eq!((stats.ready, stats.unacked), (1, Some(1)));
    let _ = std::fs::remove_file(&path);
    Ok(())
}
