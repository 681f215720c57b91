//! The Redis result backend's chord join, on its own: the part that completes the header
//! claims the chord (once), parts stored twice count once, results come in header order
//! whatever the order they arrived in, the claim renews while held, and a chord once done
//! ignores late copies of its header tasks without bringing its keys back.

use kombu_celery::backend::{ChordReady, RedisResultBackend, ResultBackend};
use kombu_celery::{ResultMeta, State, TaskFailure};
use kombu_test_support::brokers;
use serde_json::json;

async fn part(
    backend: &RedisResultBackend,
    group: &str,
    index: u32,
    meta: &ResultMeta,
) -> Option<ChordReady> {
    backend
        .chord_part_return(group, Some(index), meta)
        .await
        .expect("a chord part")
}

#[tokio::test]
async fn the_last_part_claims_the_chord_once() {
    let Some(broker) = brokers::broker("redis", "celery-redis-chords") else {
        return;
    };
    let backend = RedisResultBackend::connect(&broker.url)
        .await
        .expect("the backend");
    let group = uuid::Uuid::new_v4().to_string();
    backend.set_chord_size(&group, 3).await.expect("size");
    let first = ResultMeta::success("part-0", json!(10));
    let second = ResultMeta::failure("part-1", State::Failure, &TaskFailure::value_error("no"));
    let third = ResultMeta::success("part-2", json!(30));
    assert!(part(&backend, &group, 0, &first).await.is_none());
    // The same part again (a redelivered header task) counts once.
    assert!(part(&backend, &group, 0, &first).await.is_none());
    // Out of order: index 2 arrives before index 1, which completes the header.
    assert!(part(&backend, &group, 2, &third).await.is_none());
    let ready = part(&backend, &group, 1, &second)
        .await
        .expect("the last part claims the chord");
    let parts: Vec<(String, State, serde_json::Value)> = ready
        .parts
        .iter()
        .map(|p| (p.task_id.clone(), p.state.clone(), p.result.clone()))
        .collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0], ("part-0".into(), State::Success, json!(10)));
    assert_eq!(
        (parts[1].0.as_str(), &parts[1].1),
        ("part-1", &State::Failure)
    );
    assert_eq!(parts[1].2["exc_type"], json!("ValueError"));
    assert_eq!(parts[2], ("part-2".into(), State::Success, json!(30)));
    // A copy of the last part finds the chord claimed already.
    assert!(part(&backend, &group, 1, &second).await.is_none());
    assert!(
        backend.chord_claim(&ready).await.expect("renew"),
        "the holder keeps its claim"
    );
    backend.chord_done(&ready).await.expect("done");

    // Done: a late copy neither counts nor claims, nor brings the chord's keys back.
    assert!(part(&backend, &group, 0, &first).await.is_none());
    let prefix = backend
        .key("x")
        .strip_suffix("celery-task-meta-x")
        .expect("the key layout")
        .to_owned();
    let base = broker.url.split('?').next().expect("a URL").to_owned();
    let mut conn = redis::Client::open(base)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let key = |suffix: &str| format!("{prefix}celery-taskset-meta-{group}{suffix}");
    let marker: Option<String> = redis::cmd("GET")
        .arg(key(".c"))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(marker.as_deref(), Some("done"));
    let left: i64 = redis::cmd("EXISTS")
        .arg(key(".j"))
        .arg(key(".d"))
        .arg(key(".s"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(left, 0, "the chord's data stays gone");
}
