//! The Redis result backend's chord join, on its own: the part that completes the header
//! claims the chord (once), parts stored twice count once, the claim renews while held, and a
//! chord once done ignores late copies of its header tasks.

use kombu_celery::backend::{RedisResultBackend, ResultBackend};
use kombu_celery::{ResultMeta, State, TaskFailure};
use kombu_test_support::brokers;
use serde_json::json;

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
    assert!(
        backend
            .chord_part_return(&group, Some(0), &first)
            .await
            .expect("part")
            .is_none()
    );
    // The same part again (a redelivered header task) counts once.
    assert!(
        backend
            .chord_part_return(&group, Some(0), &first)
            .await
            .expect("part")
            .is_none()
    );
    assert!(
        backend
            .chord_part_return(&group, Some(1), &second)
            .await
            .expect("part")
            .is_none()
    );
    // Out of order by arrival, in order by index.
    let ready = backend
        .chord_part_return(&group, Some(2), &third)
        .await
        .expect("part")
        .expect("the last part claims the chord");
    let parts: Vec<(String, State, serde_json::Value)> = ready
        .parts
        .iter()
        .map(|p| (p.task_id.clone(), p.state.clone(), p.result.clone()))
        .collect();
    assert_eq!(parts[0], ("part-0".into(), State::Success, json!(10)));
    assert_eq!(parts[1].1, State::Failure);
    assert_eq!(parts[1].2["exc_type"], json!("ValueError"));
    assert_eq!(parts[2], ("part-2".into(), State::Success, json!(30)));
    // A copy of the last part finds the chord claimed already.
    assert!(
        backend
            .chord_part_return(&group, Some(2), &third)
            .await
            .expect("part")
            .is_none()
    );
    assert!(
        backend.chord_claim(&ready).await.expect("renew"),
        "the holder keeps its claim"
    );
    backend.chord_done(&ready).await.expect("done");
    // Done: a late copy neither counts nor claims.
    assert!(
        backend
            .chord_part_return(&group, Some(1), &second)
            .await
            .expect("part")
            .is_none()
    );
}
