//! A take of an unreadable entry whose consumer dies before `set_aside` loses nothing: the
//! lease ends, a sweep puts the stored bytes back in the queue, and a late `set_aside` of the
//! dead take moves nothing (its field is gone) while the new take's moves it. Needs the Redis
//! server of `$KOMBU_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`); skipped without one
//! unless `KOMBU_TEST_REQUIRE` is set.

use std::time::Duration;

use kombu_core::transport::virtual_transport::{Backend, Envelope, Receipt, TakeMode};
use kombu_core::{BrokerUrl, Message, Queue};

use crate::backend::RedisBackend;
use crate::options::Options;

fn dead_letter(raw: &bytes::Bytes) -> Envelope {
    Envelope::new(Message::new(raw.clone()), String::new(), "q.dlq".to_owned())
}

#[tokio::test]
async fn an_unreadable_entry_taken_and_abandoned_comes_back() -> kombu_core::Result<()> {
    let server = std::env::var("KOMBU_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".to_owned());
    let prefix = format!("kombu-rs-abandoned-{}:", uuid::Uuid::new_v4().simple());
    let url = BrokerUrl::parse(&format!(
        "{server}?global_keyprefix={prefix}&visibility_timeout=1"
    ))?;
    let backend = match RedisBackend::connect_to(
        vec![(Options::from_url(&url)?, "test".to_owned(), url.clone())],
        kombu_core::FailoverStrategy::RoundRobin,
    )
    .await
    {
        Ok(backend) => backend,
        Err(e) if std::env::var_os("KOMBU_TEST_REQUIRE").is_none() => {
            eprintln!("skipped: no Redis: {e}");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    backend.queue("q", Some(&Queue::new("q"))).await?;
    backend.queue("q.dlq", Some(&Queue::new("q.dlq"))).await?;
    let mut conn = backend.conn().await?;
    let raw: &[u8] = b"\x00\xff \"not\" an envelope";
    let _: i64 = redis::cmd("LPUSH")
        .arg(format!("{prefix}q"))
        .arg(raw)
        .query_async(&mut conn)
        .await
        .map_err(backend.err("LPUSH"))?;

    let lease = TakeMode::Lease(Some(Duration::from_millis(50)));
    let first = backend.get_many("q", 10, lease).await?;
    assert!(first.taken.is_empty());
    assert_eq!(first.unreadable.len(), 1);
    let dead = first.unreadable[0].clone();
    assert_eq!(dead.raw.as_ref(), raw);
    assert!(matches!(dead.receipt, Receipt::Key(_)));
    // The consumer dies here: no set_aside. After the lease (and the sweep's pause), a take
    // finds it again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let second = backend.get_many("q", 10, lease).await?;
    assert_eq!(second.unreadable.len(), 1, "the entry came back");
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
    let unacked: u64 = redis::cmd("HLEN")
        .arg(format!("{prefix}unacked"))
        .query_async(&mut conn)
        .await
        .map_err(backend.err("HLEN"))?;
    assert_eq!(unacked, 0, "nothing left unacked");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .map_err(backend.err("KEYS"))?;
    if !keys.is_empty() {
        let _: i64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .map_err(backend.err("DEL"))?;
    }
    Ok(())
}
