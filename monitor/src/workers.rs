//! Workers as their events show them (Celery's `Worker` state): the fields of their latest
//! heartbeat, the times of the last heartbeats heard, and counts of their events by type.

use std::collections::HashMap;

use serde_json::{Map, Value as Json};

/// At most this many event types are counted per worker (custom task events are any name).
const EVENT_TYPES: usize = 64;

/// How many heartbeats a worker keeps (Celery keeps 4).
const HEARTBEATS: usize = 4;

/// Celery's expire window: a worker is alive while its last heartbeat is younger than its
/// `freq` times this.
const EXPIRE_WINDOW: f64 = 2.0;

/// One worker.
#[derive(Debug, Clone, Default)]
pub struct Worker {
    /// Its node name.
    pub hostname: String,
    /// Every field of its latest worker event (`freq`, `active`, `processed`, `loadavg`,
    /// `sw_ident`, ...).
    pub fields: Map<String, Json>,
    /// When the last heartbeats were heard, oldest first (Celery's order).
    pub heartbeats: Vec<f64>,
    /// Events by type (`task-received`, `worker-heartbeat`, ...).
    pub events: HashMap<String, u64>,
}

impl Worker {
    /// Its heartbeat interval (seconds; Celery's default 60 until it says).
    pub fn freq(&self) -> f64 {
        self.fields
            .get("freq")
            .and_then(Json::as_f64)
            .unwrap_or(60.0)
    }

    /// Whether it is alive at `now`: a heartbeat within twice its interval.
    pub fn alive(&self, now: f64) -> bool {
        self.heartbeats
            .last()
            .is_some_and(|last| now < last + self.freq() * EXPIRE_WINDOW)
    }

    fn count(&mut self, kind: &str) {
        if let Some(n) = self.events.get_mut(kind) {
            *n += 1;
        } else if self.events.len() < EVENT_TYPES {
            self.events.insert(kind.to_owned(), 1);
        }
    }

    fn heard(&mut self, at: f64) {
        if self.heartbeats.len() >= HEARTBEATS {
            self.heartbeats.remove(0);
        }
        match self.heartbeats.last() {
            Some(last) if at <= *last => {
                let at_index = self.heartbeats.partition_point(|h| *h <= at);
                self.heartbeats.insert(at_index, at);
            }
            _ => self.heartbeats.push(at),
        }
    }
}

/// The workers seen, in the order first seen, at most `max` (the oldest seen go first).
#[derive(Debug)]
pub struct Workers {
    order: Vec<String>,
    by_name: HashMap<String, Worker>,
    max: usize,
}

impl Workers {
    /// None yet; at most `max`.
    pub fn new(max: usize) -> Workers {
        Workers {
            order: Vec::new(),
            by_name: HashMap::new(),
            max: max.max(1),
        }
    }

    /// The worker of `hostname`, remembered from now on (the oldest seen goes past `max`).
    fn entry(&mut self, hostname: &str) -> Option<&mut Worker> {
        if !self.by_name.contains_key(hostname) {
            if self.order.len() >= self.max {
                let gone = self.order.remove(0);
                self.by_name.remove(&gone);
            }
            self.order.push(hostname.to_owned());
            let worker = Worker {
                hostname: hostname.to_owned(),
                ..Worker::default()
            };
            self.by_name.insert(hostname.to_owned(), worker);
        }
        self.by_name.get_mut(hostname)
    }

    /// Applies an event of `kind` from `hostname` (adjusted `timestamp`, received at
    /// `local_received`), as Celery's `State` does.
    pub fn apply(
        &mut self,
        kind: &str,
        hostname: &str,
        timestamp: f64,
        local_received: f64,
        fields: &Map<String, Json>,
    ) {
        if let Some(subject) = kind.strip_prefix("worker-") {
            if subject == "offline" && !self.by_name.contains_key(hostname) {
                return;
            }
            let Some(worker) = self.entry(hostname) else {
                return;
            };
            worker.count(kind);
            for (key, value) in fields {
                worker.fields.insert(key.clone(), value.clone());
            }
            if subject == "offline" {
                worker.heartbeats.clear();
            } else if local_received > 0.0 && timestamp > 0.0 {
                worker.heard(local_received);
            }
        } else if kind.starts_with("task-") {
            if kind == "task-sent" {
                return;
            }
            // Celery passes the event's own timestamp as the heartbeat here.
            let Some(worker) = self.entry(hostname) else {
                return;
            };
            worker.count(kind);
            if local_received > 0.0 {
                worker.heard(timestamp);
            }
        }
    }

    /// The workers in the order first seen.
    pub fn iter(&self) -> impl Iterator<Item = &Worker> {
        self.order.iter().filter_map(|name| self.by_name.get(name))
    }

    /// One worker.
    pub fn get(&self, hostname: &str) -> Option<&Worker> {
        self.by_name.get(hostname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(value: Json) -> Map<String, Json> {
        match value {
            Json::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn alive_by_heartbeat_and_offline_at_once() {
        let mut workers = Workers::new(10);
        let beat = fields(json!({"freq": 2.0, "active": 1, "processed": 5}));
        workers.apply("worker-heartbeat", "w@h", 100.0, 100.0, &beat);
        let w = workers.get("w@h").expect("known");
        assert!(w.alive(103.9));
        assert!(!w.alive(104.0), "2 × freq");
        assert_eq!(w.fields["processed"], json!(5));
        workers.apply("worker-offline", "w@h", 101.0, 101.0, &Map::new());
        assert!(!workers.get("w@h").expect("kept").alive(101.5));
        // An offline from a worker never seen is not kept.
        workers.apply("worker-offline", "x@h", 1.0, 1.0, &Map::new());
        assert!(workers.get("x@h").is_none());
    }

    #[test]
    fn keeps_four_heartbeats_and_a_bounded_number_of_workers() {
        let mut workers = Workers::new(2);
        for t in [5.0, 1.0, 3.0, 4.0, 2.0, 6.0] {
            workers.apply("worker-heartbeat", "a@h", t, t, &Map::new());
        }
        assert_eq!(
            workers.get("a@h").expect("a").heartbeats,
            [3.0, 4.0, 5.0, 6.0]
        );
        workers.apply("worker-online", "b@h", 1.0, 1.0, &Map::new());
        workers.apply("worker-online", "c@h", 1.0, 1.0, &Map::new());
        let names: Vec<&str> = workers.iter().map(|w| w.hostname.as_str()).collect();
        assert_eq!(names, ["b@h", "c@h"]);
    }
}
