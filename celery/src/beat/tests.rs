//! The beat under a mocked clock: `tick(now)` driven through daylight-saving nights in
//! several zones, stops between a record and its send, missed runs, two instances.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use parking_lot::Mutex;

use super::*;

/// Remembers what it sent; fails the sends it is told to.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<(String, String, DateTime<Utc>)>>,
    fail_next: Mutex<usize>,
}

#[async_trait]
impl Sender for Arc<Recorder> {
    async fn send(&self, entry: &Entry, task_id: &str, scheduled: DateTime<Utc>) -> Result<()> {
        {
            let mut fail = self.fail_next.lock();
            if *fail > 0 {
                *fail -= 1;
                return Err(kombu_core::Error::new(
                    ErrorKind::Connection,
                    "the broker is away",
                ));
            }
        }
        self.sent
            .lock()
            .push((entry.name.clone(), task_id.to_owned(), scheduled));
        Ok(())
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("a time")
        .with_timezone(&Utc)
}

fn cron(name: &str, text: &str, zone: &str) -> Entry {
    let tz: Tz = zone.parse().expect("a zone");
    Entry::new(
        name,
        "tasks.t",
        Schedule::Crontab(text.parse().expect("a crontab")),
    )
    .timezone(tz)
}

/// Ticks from `from` to `to` at the times the beat asks for.
async fn drive(beat: &mut Beat, from: &str, to: &str) {
    let (mut now, end) = (utc(from), utc(to));
    while now < end {
        let wake = beat.tick(now).await.expect("a tick");
        assert!(wake > now, "the beat asks to be woken later");
        now = wake.min(end);
    }
}

fn sent_of(recorder: &Recorder, entry: &str) -> Vec<DateTime<Utc>> {
    recorder
        .sent
        .lock()
        .iter()
        .filter(|(name, _, _)| name == entry)
        .map(|(_, _, at)| *at)
        .collect()
}

#[tokio::test]
async fn daylight_saving_nights_in_several_zones() {
    // Spring forward in New York (03-08) and Oslo (03-29), fall back in Sydney (04-05) and
    // New York (11-01): four days around each, a fresh beat for each window.
    for (from, to) in [
        ("2026-03-06T00:00:00Z", "2026-03-10T00:00:00Z"),
        ("2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z"),
        ("2026-04-03T00:00:00Z", "2026-04-07T00:00:00Z"),
        ("2026-10-30T00:00:00Z", "2026-11-03T00:00:00Z"),
    ] {
        let recorder = Arc::new(Recorder::default());
        let entries = vec![
            cron("oslo-daily", "30 2 * * *", "Europe/Oslo"),
            cron("ny-daily", "30 2 * * *", "America/New_York"),
            cron("ny-hourly", "0 * * * *", "America/New_York"),
            cron("sydney-hourly", "0 * * * *", "Australia/Sydney"),
            cron("kolkata-daily", "30 2 * * *", "Asia/Kolkata"),
        ];
        // A long lease: the mocked clock ticks only when a run is due, not to renew it.
        let mut beat = Beat::new(
            "dst",
            entries,
            Arc::new(MemoryStore::new()),
            recorder.clone(),
        )
        .lease_ttl(Duration::from_secs(30 * 86_400));
        drive(&mut beat, from, to).await;
        for (entry, zone) in [
            ("oslo-daily", "Europe/Oslo"),
            ("ny-daily", "America/New_York"),
            ("kolkata-daily", "Asia/Kolkata"),
        ] {
            let tz: Tz = zone.parse().expect("a zone");
            let days: Vec<_> = sent_of(&recorder, entry)
                .iter()
                .map(|t| t.with_timezone(&tz).date_naive())
                .collect();
            let mut unique = days.clone();
            unique.dedup();
            assert_eq!(days, unique, "{entry} from {from}: once a day");
            assert!(days.len() >= 3, "{entry} from {from}: every day: {days:?}");
        }
        // Hourly: one run per real hour, none twice, none skipped.
        for entry in ["ny-hourly", "sydney-hourly"] {
            let runs = sent_of(&recorder, entry);
            assert_eq!(runs.len(), 95, "{entry} from {from}: {}", runs.len());
            assert!(
                runs.windows(2)
                    .all(|w| w[1] - w[0] == chrono::Duration::hours(1)),
                "{entry} from {from}: every hour once"
            );
        }
        let ids: std::collections::HashSet<String> = recorder
            .sent
            .lock()
            .iter()
            .map(|(_, id, _)| id.clone())
            .collect();
        assert_eq!(ids.len(), recorder.sent.lock().len(), "a run id each");
        let all: Vec<DateTime<Utc>> = recorder.sent.lock().iter().map(|(_, _, at)| *at).collect();
        // The nights themselves.
        match from {
            "2026-03-06T00:00:00Z" => assert!(
                all.contains(&utc("2026-03-08T07:30:00Z")),
                "New York 03:30 EDT"
            ),
            "2026-03-27T00:00:00Z" => assert!(
                all.contains(&utc("2026-03-29T01:30:00Z")),
                "Oslo 03:30 CEST"
            ),
            "2026-04-03T00:00:00Z" => assert!(
                all.contains(&utc("2026-04-04T15:00:00Z"))
                    && all.contains(&utc("2026-04-04T16:00:00Z")),
                "Sydney's two 02:00s"
            ),
            _ => assert!(
                all.contains(&utc("2026-11-01T05:00:00Z"))
                    && all.contains(&utc("2026-11-01T06:00:00Z")),
                "New York's two 01:00s"
            ),
        }
    }
}

#[tokio::test]
async fn a_stop_between_record_and_send_resends_the_same_id_once() {
    let store = Arc::new(MemoryStore::new());
    let recorder = Arc::new(Recorder::default());
    let every = || {
        vec![Entry::new(
            "tick",
            "tasks.tick",
            Schedule::Every(Duration::from_secs(60)),
        )]
    };
    let mut first = Beat::new("s", every(), store.clone(), recorder.clone())
        .lease_ttl(Duration::from_millis(200));
    first
        .tick(utc("2026-01-01T00:00:00Z"))
        .await
        .expect("leader");
    // The send fails after the record (as a crash would leave it): the run stays unsent.
    *recorder.fail_next.lock() = 1;
    assert!(first.tick(utc("2026-01-01T00:01:00Z")).await.is_err());
    assert!(recorder.sent.lock().is_empty());
    let runs = store.runs().await.expect("runs");
    assert_eq!(
        runs["tick"],
        Run {
            scheduled: utc("2026-01-01T00:01:00Z"),
            sent: false
        }
    );
    drop(first); // gone without releasing its lease
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut second = Beat::new("s", every(), store.clone(), recorder.clone());
    second
        .tick(utc("2026-01-01T00:01:30Z"))
        .await
        .expect("a tick");
    let sent = recorder.sent.lock().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].1, run_id("s", "tick", utc("2026-01-01T00:01:00Z")));
    // And never again: a third instance (after the second's lease ran out) sends only what
    // comes due next.
    second
        .tick(utc("2026-01-01T00:01:40Z"))
        .await
        .expect("a tick");
    store.release(second.owner()).await.expect("release");
    let mut third = Beat::new("s", every(), store.clone(), recorder.clone());
    third
        .tick(utc("2026-01-01T00:01:50Z"))
        .await
        .expect("a tick");
    assert_eq!(
        recorder.sent.lock().len(),
        1,
        "the finished run is not repeated"
    );
    third
        .tick(utc("2026-01-01T00:02:00Z"))
        .await
        .expect("a tick");
    assert_eq!(
        sent_of(&recorder, "tick"),
        [utc("2026-01-01T00:01:00Z"), utc("2026-01-01T00:02:00Z")]
    );
}

#[tokio::test]
async fn missed_runs_run_once_or_are_skipped() {
    let recorder = Arc::new(Recorder::default());
    let store = Arc::new(MemoryStore::new());
    let entries = vec![
        cron("once", "0 * * * *", "UTC"),
        cron("skip", "0 * * * *", "UTC").catch_up(CatchUp::Skip),
    ];
    let mut beat = Beat::new("c", entries.clone(), store.clone(), recorder.clone());
    drive(&mut beat, "2026-01-01T00:00:00Z", "2026-01-01T01:00:01Z").await;
    assert_eq!(sent_of(&recorder, "once"), [utc("2026-01-01T01:00:00Z")]);
    assert_eq!(sent_of(&recorder, "skip"), [utc("2026-01-01T01:00:00Z")]);
    store.release(beat.owner()).await.expect("release");
    // Down from 01:00 to 05:30: four runs missed.
    let mut back = Beat::new("c", entries, store, recorder.clone());
    back.tick(utc("2026-01-01T05:30:00Z"))
        .await
        .expect("a tick");
    assert_eq!(
        sent_of(&recorder, "once"),
        [utc("2026-01-01T01:00:00Z"), utc("2026-01-01T05:00:00Z")],
        "the latest, once"
    );
    assert_eq!(
        sent_of(&recorder, "skip"),
        [utc("2026-01-01T01:00:00Z")],
        "none"
    );
    drive(&mut back, "2026-01-01T05:30:00Z", "2026-01-01T06:00:01Z").await;
    assert_eq!(
        sent_of(&recorder, "skip").last(),
        Some(&utc("2026-01-01T06:00:00Z")),
        "on time again"
    );
}

#[tokio::test]
async fn two_beats_on_one_store_send_each_run_once() {
    let recorder = Arc::new(Recorder::default());
    let store = Arc::new(MemoryStore::new());
    let entries = || {
        vec![Entry::new(
            "tick",
            "tasks.tick",
            Schedule::Every(Duration::from_secs(10)),
        )]
    };
    let mut a = Beat::new("pair", entries(), store.clone(), recorder.clone());
    let mut b = Beat::new("pair", entries(), store.clone(), recorder.clone());
    let mut now = utc("2026-01-01T00:00:00Z");
    for _ in 0..30 {
        a.tick(now).await.expect("a");
        b.tick(now).await.expect("b");
        now += chrono::Duration::seconds(5);
    }
    assert!(a.is_leader() != b.is_leader(), "one leader");
    let runs = sent_of(&recorder, "tick");
    let mut unique = runs.clone();
    unique.dedup();
    assert_eq!(runs, unique, "each run once");
    assert_eq!(runs.len(), 14, "{runs:?}");
    // The leader stops: the other takes over where it stopped.
    let last = *runs.last().expect("runs");
    store
        .release(if a.is_leader() { a.owner() } else { b.owner() })
        .await
        .expect("release");
    let follower = if a.is_leader() { &mut b } else { &mut a };
    follower.tick(now).await.expect("takes over");
    assert!(follower.is_leader());
    follower
        .tick(now + chrono::Duration::seconds(10))
        .await
        .expect("sends");
    let after = sent_of(&recorder, "tick");
    assert!(
        after.len() > runs.len() && after[runs.len()] == last + chrono::Duration::seconds(10),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_beat_that_lost_its_lease_cannot_record() {
    let store = Arc::new(MemoryStore::new());
    assert!(
        store
            .lease("a", Duration::from_millis(50))
            .await
            .expect("lease")
    );
    let run = Run {
        scheduled: utc("2026-01-01T00:00:00Z"),
        sent: false,
    };
    store
        .record("a", "e", run)
        .await
        .expect("recorded while held");
    assert!(
        !store
            .lease("b", Duration::from_secs(10))
            .await
            .expect("lease"),
        "held by a"
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(
        store
            .lease("b", Duration::from_secs(10))
            .await
            .expect("lease"),
        "a's ran out"
    );
    let refused = store.record("a", "e", run).await.expect_err("a lost it");
    assert_eq!(refused.kind(), ErrorKind::PreconditionFailed);
}
