//! A task as Celery's event state keeps it (`celery.events.state.Task`): its fields, how an
//! event changes them (states by precedence, so events that arrive late do not undo newer
//! ones), and its JSON as Flower shows it.

use serde_json::{Map, Value as Json};

/// The fields of a task in the order Celery's `Task.as_dict` gives them (Flower's JSON).
pub const FIELDS: [&str; 31] = [
    "uuid",
    "name",
    "state",
    "received",
    "sent",
    "started",
    "rejected",
    "succeeded",
    "failed",
    "retried",
    "revoked",
    "args",
    "kwargs",
    "eta",
    "expires",
    "retries",
    "worker",
    "result",
    "exception",
    "timestamp",
    "runtime",
    "traceback",
    "exchange",
    "routing_key",
    "clock",
    "client",
    "root",
    "root_id",
    "parent",
    "parent_id",
    "children",
];

/// Fields kept from an event, as Celery keeps every event field but shows only [`FIELDS`]
/// (`worker`, `client`, `root`, `parent` and `children` are the state's, not the event's).
fn kept(key: &str) -> bool {
    FIELDS.contains(&key) && !matches!(key, "worker" | "client" | "root" | "parent" | "children")
}

/// What a `task-received` that arrives after a later state may still add.
const RECEIVED_KEEPS: [&str; 8] = [
    "name",
    "args",
    "kwargs",
    "parent_id",
    "root_id",
    "retries",
    "eta",
    "expires",
];

/// The state an event type means (`task-` removed), `None` for a custom one.
pub fn state_of(subject: &str) -> Option<&'static str> {
    Some(match subject {
        "sent" => "PENDING",
        "received" => "RECEIVED",
        "started" => "STARTED",
        "failed" => "FAILURE",
        "retried" => "RETRY",
        "succeeded" => "SUCCESS",
        "revoked" => "REVOKED",
        "rejected" => "REJECTED",
        _ => return None,
    })
}

/// Celery's precedence: lower is later in a task's life (custom states between FAILURE and
/// REVOKED).
fn precedence(state: &str) -> usize {
    match state {
        "SUCCESS" => 0,
        "FAILURE" => 1,
        "REVOKED" => 3,
        "STARTED" => 4,
        "RECEIVED" => 5,
        "REJECTED" => 6,
        "RETRY" => 7,
        "PENDING" => 8,
        _ => 2,
    }
}

/// A task's fields as the events made them (`worker` and `client` are node names).
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Everything but the derived `root`, `parent` and `children`.
    pub fields: Map<String, Json>,
}

impl Task {
    /// A task known by its id only: PENDING, clock 0.
    pub fn new(uuid: &str) -> Task {
        let mut fields = Map::new();
        fields.insert("uuid".into(), uuid.into());
        fields.insert("state".into(), "PENDING".into());
        fields.insert("clock".into(), 0.into());
        Task { fields }
    }

    /// A string field.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Json::as_str)
    }

    /// A number field.
    pub fn f64(&self, key: &str) -> Option<f64> {
        self.fields.get(key).and_then(Json::as_f64)
    }

    /// Applies the event `subject` (`received`, `succeeded`, ... or a custom one) from
    /// `hostname` at `timestamp` (already adjusted) with the event's `fields`, as Celery's
    /// `State` and `Task.event` do.
    pub fn apply(
        &mut self,
        subject: &str,
        hostname: &str,
        timestamp: f64,
        event: &Map<String, Json>,
    ) {
        if subject == "sent" {
            self.fields.insert("client".into(), hostname.into());
        } else {
            self.fields.insert("worker".into(), hostname.into());
        }
        let state = match state_of(subject) {
            Some(state) => {
                self.fields.insert(subject.into(), timestamp.into());
                state.to_owned()
            }
            None => subject.to_uppercase(),
        };
        let current = self.str("state").unwrap_or("PENDING").to_owned();
        let older =
            state != "RETRY" && current != "RETRY" && precedence(&state) > precedence(&current);
        for (key, value) in event {
            let merge = match (older, state.as_str()) {
                (true, "RECEIVED") => RECEIVED_KEEPS.contains(&key.as_str()),
                _ => kept(key),
            };
            if merge && key != "state" {
                self.fields.insert(key.clone(), value.clone());
            }
        }
        if !older {
            self.fields.insert("state".into(), state.into());
            self.fields.insert("timestamp".into(), timestamp.into());
        }
    }

    /// Flower's JSON of the task: [`FIELDS`] in order (missing ones null), `root` and `parent`
    /// repeating `root_id` and `parent_id`, `children` given. `worker_last`: as in
    /// `/api/tasks`, where `worker` is moved to the end and left out when there is none; else
    /// as in `/api/task/info`, in place and null when there is none.
    pub fn to_flower(&self, children: &[String], worker_last: bool) -> Json {
        let mut out = Map::new();
        for key in FIELDS {
            let value = match key {
                "root" => self.fields.get("root_id").cloned(),
                "parent" => self.fields.get("parent_id").cloned(),
                "children" => Some(Json::from(children.to_vec())),
                "worker" if worker_last => continue,
                _ => self.fields.get(key).cloned(),
            };
            out.insert(key.into(), value.unwrap_or(Json::Null));
        }
        if worker_last && let Some(worker) = self.fields.get("worker").filter(|w| !w.is_null()) {
            out.insert("worker".into(), worker.clone());
        }
        Json::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(value: Json) -> Map<String, Json> {
        match value {
            Json::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn events_in_order_make_a_success() {
        let mut task = Task::new("t");
        let received = event(json!({"uuid": "t", "name": "tasks.add", "args": "(1, 2)",
            "kwargs": "{}", "retries": 0, "clock": 3, "timestamp": 10.0, "hostname": "w@h"}));
        task.apply("received", "w@h", 10.0, &received);
        task.apply(
            "started",
            "w@h",
            11.0,
            &event(json!({"clock": 4, "timestamp": 11.0})),
        );
        task.apply(
            "succeeded",
            "w@h",
            12.0,
            &event(json!({"result": "3", "runtime": 1.0, "clock": 5, "timestamp": 12.0})),
        );
        assert_eq!(task.str("state"), Some("SUCCESS"));
        assert_eq!(task.f64("received"), Some(10.0));
        assert_eq!(task.f64("succeeded"), Some(12.0));
        assert_eq!(task.f64("timestamp"), Some(12.0));
        assert_eq!(task.str("worker"), Some("w@h"));
        assert!(!task.fields.contains_key("hostname"), "not a task field");
    }

    #[test]
    fn late_events_do_not_undo_the_state() {
        let mut task = Task::new("t");
        task.apply(
            "succeeded",
            "w@h",
            12.0,
            &event(json!({"result": "3", "clock": 5, "timestamp": 12.0})),
        );
        // A late started: state stays, its timestamp and clock are merged (Celery does).
        task.apply(
            "started",
            "w@h",
            11.0,
            &event(json!({"clock": 4, "timestamp": 11.0})),
        );
        assert_eq!(task.str("state"), Some("SUCCESS"));
        assert_eq!(task.f64("timestamp"), Some(11.0));
        assert_eq!(task.fields["clock"], json!(4));
        // A late received: only its task fields.
        task.apply(
            "received",
            "w@h",
            10.0,
            &event(json!({"name": "tasks.add", "clock": 3, "timestamp": 10.0})),
        );
        assert_eq!(task.str("name"), Some("tasks.add"));
        assert_eq!(task.fields["clock"], json!(4));
        assert_eq!(task.f64("received"), Some(10.0));
        // RETRY is never older: retried then received is RECEIVED again.
        let mut retried = Task::new("r");
        retried.apply("retried", "w@h", 1.0, &Map::new());
        retried.apply("received", "w@h", 2.0, &Map::new());
        assert_eq!(retried.str("state"), Some("RECEIVED"));
        // A custom event is its own state, between FAILURE and REVOKED.
        let mut custom = Task::new("c");
        custom.apply("started", "w@h", 1.0, &Map::new());
        custom.apply("progress", "w@h", 2.0, &Map::new());
        assert_eq!(custom.str("state"), Some("PROGRESS"));
    }

    #[test]
    fn flower_json_has_celerys_fields_in_order() {
        let mut task = Task::new("t");
        task.apply(
            "sent",
            "client@h",
            1.0,
            &event(json!({"name": "x", "parent_id": "p"})),
        );
        let listed = task.to_flower(&["c".to_owned()], true);
        let keys: Vec<&str> = listed
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let want: Vec<&str> = FIELDS.iter().copied().filter(|k| *k != "worker").collect();
        assert_eq!(keys, want, "no worker yet: left out of the list");
        assert_eq!(listed["parent"], json!("p"));
        assert_eq!(listed["children"], json!(["c"]));
        assert_eq!(listed["client"], json!("client@h"));
        let info = task.to_flower(&[], false);
        let keys: Vec<&str> = info
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(keys, FIELDS);
        assert_eq!(info["worker"], Json::Null);
        task.apply("received", "w@h", 2.0, &Map::new());
        let listed = task.to_flower(&[], true);
        assert_eq!(
            listed
                .as_object()
                .and_then(|m| m.keys().next_back())
                .map(String::as_str),
            Some("worker")
        );
    }
}
