//! The remote-control commands a worker obeys, with Celery 5.7's replies
//! (`celery/worker/control.py`): the inspect commands read the worker's state, the control
//! commands change it. A command it does not know answers `{"error": "KeyError('name')"}`,
//! as Celery's does; `shutdown` stops the worker and answers nothing.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value as Json, json};

use super::state::Phase;
use super::{QueueChange, Results, Shared};
use crate::events::EventKind;
use crate::repr::value_repr;
use crate::result::{ResultMeta, State, TaskFailure};

/// `{"ok": text}`.
fn ok(text: impl Into<String>) -> Json {
    json!({"ok": text.into()})
}

/// `{"error": text}`.
fn nok(text: impl Into<String>) -> Json {
    json!({"error": text.into()})
}

/// Python's repr of an exception with one message (`TypeError('...')`).
fn exception(kind: &str, message: &str) -> Json {
    nok(format!("{kind}({})", value_repr(&json!(message))))
}

/// Runs `method`; the payload to reply with (`None`: no reply, as `shutdown`).
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    method: &str,
    args: &Map<String, Json>,
) -> Option<Json> {
    let text = |key: &str| args.get(key).and_then(Json::as_str);
    let reply = match method {
        "ping" => ok("pong"),
        "stats" => stats(shared),
        "active" | "dump_active" => {
            let safe = args.get("safe").and_then(Json::as_bool).unwrap_or(false);
            let active = shared.requests.infos(&shared.hostname, safe, |p| {
                matches!(p, Phase::Active { .. })
            });
            Json::Array(active.into_iter().map(|(_, info)| info).collect())
        }
        "reserved" | "dump_reserved" => {
            let reserved = shared
                .requests
                .infos(&shared.hostname, false, |p| matches!(p, Phase::Reserved));
            Json::Array(reserved.into_iter().map(|(_, info)| info).collect())
        }
        "scheduled" | "dump_schedule" => {
            let scheduled = shared.requests.infos(&shared.hostname, false, |p| {
                matches!(p, Phase::Scheduled { .. })
            });
            Json::Array(
                scheduled
                    .into_iter()
                    // Celery's timer priority for eta tasks is always 6.
                    .map(|(phase, request)| match phase {
                        Phase::Scheduled { eta } => {
                            json!({"eta": eta, "priority": 6, "request": request})
                        }
                        _ => json!({"eta": null, "priority": 6, "request": request}),
                    })
                    .collect(),
            )
        }
        "revoked" | "dump_revoked" => {
            let mut revoked = shared.revoked.lock();
            revoked.purge();
            json!(revoked.ids())
        }
        "registered" | "dump_tasks" => registered(shared, args),
        "active_queues" => Json::Array(shared.queues.lock().iter().map(queue_dict).collect()),
        "conf" | "dump_conf" => conf(shared),
        "clock" => json!({"clock": shared.clock.value()}),
        "hello" => return hello(shared, args),
        "query_task" => {
            let ids: HashSet<String> = id_list(args.get("ids")).into_iter().collect();
            Json::Object(shared.requests.query(&ids, &shared.hostname))
        }
        "report" => ok(format!(
            "software -> {} {}\nnode -> {}\n",
            crate::events::SW_IDENT,
            env!("CARGO_PKG_VERSION"),
            shared.hostname
        )),
        "heartbeat" => {
            super::heartbeat(shared, EventKind::WorkerHeartbeat).await;
            Json::Null
        }
        "revoke" => revoke(shared, args, false).await,
        "terminate" => revoke(shared, args, true).await,
        "shutdown" => {
            tracing::warn!(
                msg = text("msg").unwrap_or("Got shutdown from remote"),
                "remote shutdown: the worker stops"
            );
            shared.control.stop.send_replace(true);
            return None;
        }
        "pool_grow" | "pool_shrink" => {
            let n = count(args.get("n")).unwrap_or(1);
            let grow = method == "pool_grow";
            match shared.pool.resize(shared, grow, n) {
                Ok(()) if grow => ok("pool will grow"),
                Ok(()) => ok("pool will shrink"),
                Err(()) => nok(format!(
                    "{method} is not supported with autoscale. Adjust autoscale range instead."
                )),
            }
        }
        "autoscale" => {
            let max = count(args.get("max"));
            let min = count(args.get("min"));
            match shared.pool.autoscale(shared, max, min) {
                Some((max, min)) => ok(format!("autoscale now max={max} min={min}")),
                None => exception("ValueError", "Autoscale not enabled"),
            }
        }
        "rate_limit" => rate_limit(shared, text("task_name"), args.get("rate_limit")),
        "time_limit" => {
            let seconds = |key: &str| {
                args.get(key)
                    .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
                    .and_then(|s| Duration::try_from_secs_f64(s).ok())
                    .filter(|d| !d.is_zero())
            };
            match text("task_name").and_then(|name| shared.tasks.get(name)) {
                Some(task) => {
                    task.set_time_limits(seconds("hard"), seconds("soft"));
                    ok("time limits set successfully")
                }
                None => nok("unknown task"),
            }
        }
        "add_consumer" => match text("queue") {
            Some(queue) => {
                let change = QueueChange::Add {
                    queue: queue.to_owned(),
                    exchange: text("exchange").map(str::to_owned),
                    exchange_type: text("exchange_type").map(str::to_owned),
                    routing_key: text("routing_key").map(str::to_owned),
                };
                if shared.queue_changes.send(change).is_err() {
                    return Some(nok("the worker is stopping"));
                }
                ok(format!("add consumer {queue}"))
            }
            None => missing("add_consumer", "queue"),
        },
        "cancel_consumer" => match text("queue") {
            Some(queue) => {
                if shared
                    .queue_changes
                    .send(QueueChange::Cancel(queue.to_owned()))
                    .is_err()
                {
                    return Some(nok("the worker is stopping"));
                }
                ok(format!("no longer consuming from {queue}"))
            }
            None => missing("cancel_consumer", "queue"),
        },
        "enable_events" => match shared.events.enabled() {
            false => nok("event dispatcher unavailable"),
            true => match shared.events.set_tasks(true) {
                false => ok("task events enabled"),
                true => ok("task events already enabled"),
            },
        },
        "disable_events" => match shared.events.enabled() {
            false => nok("event dispatcher unavailable"),
            true => match shared.events.set_tasks(false) {
                true => ok("task events disabled"),
                false => ok("task events already disabled"),
            },
        },
        "election" => Json::Null,
        other => exception("KeyError", other),
    };
    Some(reply)
}

/// A required argument that is missing, as Python's `TypeError`.
fn missing(method: &str, arg: &str) -> Json {
    exception(
        "TypeError",
        &format!("{method}() missing 1 required positional argument: '{arg}'"),
    )
}

/// A count argument: a number or its text.
fn count(value: Option<&Json>) -> Option<usize> {
    let value = value?;
    value
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .or_else(|| value.as_str()?.trim().parse().ok())
}

/// Task ids: one string or a list of them.
/// The revoked ids a `hello` or its reply carries: Celery's LimitedSet as a map (id → time)
/// or a list.
pub(crate) fn revoked_ids(value: Option<&Json>) -> Vec<String> {
    match value {
        Some(Json::Object(map)) => map.keys().cloned().collect(),
        other => id_list(other),
    }
}

fn id_list(value: Option<&Json>) -> Vec<String> {
    match value {
        Some(Json::String(id)) => vec![id.clone()],
        Some(Json::Array(ids)) => ids
            .iter()
            .filter_map(Json::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// Python's repr of a set of strings (`{'a', 'b'}`, `set()`).
fn set_repr(ids: &[String]) -> String {
    match ids.is_empty() {
        true => "set()".to_owned(),
        false => {
            let items: Vec<String> = ids.iter().map(|id| value_repr(&json!(id))).collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

/// A signal by name (`SIGTERM`, `TERM`, `KILL`) or number.
fn signal_number(value: Option<&Json>) -> Result<i32, Json> {
    const SIGNALS: [(&str, i32); 8] = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("KILL", 9),
        ("USR1", 10),
        ("USR2", 12),
        ("TERM", 15),
        ("ABRT", 6),
    ];
    match value {
        None | Some(Json::Null) => Ok(15),
        Some(Json::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| exception("ValueError", "not a signal number")),
        Some(Json::String(name)) if name.chars().all(|c| c.is_ascii_digit()) => name
            .parse()
            .map_err(|_| exception("ValueError", "not a signal number")),
        Some(Json::String(name)) => {
            if name.to_uppercase() != *name {
                return Err(exception(
                    "TypeError",
                    "signal name must be uppercase string.",
                ));
            }
            let bare = name.strip_prefix("SIG").unwrap_or(name);
            SIGNALS
                .iter()
                .find(|(known, _)| *known == bare)
                .map(|(_, n)| *n)
                .ok_or_else(|| exception("AttributeError", &format!("signal SIG{bare} unknown")))
        }
        Some(_) => Err(exception("TypeError", "a signal is a name or a number")),
    }
}

/// `revoke` (and `terminate`): remembered as revoked (so the worker will not run them), the
/// running ones stopped when `terminate`, and those not running here marked REVOKED in the
/// result backend while they are not finished.
async fn revoke(shared: &Arc<Shared>, args: &Map<String, Json>, force_terminate: bool) -> Json {
    let ids = id_list(args.get("task_id"));
    let mut unique: Vec<String> = Vec::new();
    for id in ids {
        if !unique.contains(&id) {
            unique.push(id);
        }
    }
    {
        let mut revoked = shared.revoked.lock();
        for id in &unique {
            revoked.add(id);
        }
    }
    // Python's truth: Flower sends `terminate` as 1 or 0.
    let terminate = force_terminate || args.get("terminate").is_some_and(truthy);
    let set: HashSet<String> = unique.iter().cloned().collect();
    let running = shared.requests.active_ids();
    if let Results::Backend(backend) = &shared.results {
        for id in unique.iter().filter(|id| !running.contains(*id)) {
            match backend.meta(id).await {
                Ok(meta)
                    if matches!(
                        meta.state,
                        State::Pending | State::Received | State::Retry | State::Rejected
                    ) =>
                {
                    let failure =
                        TaskFailure::new("celery.exceptions", "TaskRevokedError", "revoked");
                    let stored = backend
                        .store(&ResultMeta::failure(id.as_str(), State::Revoked, &failure))
                        .await;
                    if let Err(error) = stored {
                        tracing::warn!(error = %format_args!("{error:#}"), %id, "marking a revoked task failed");
                    }
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %format_args!("{error:#}"), %id, "reading a revoked task's state failed");
                }
            }
        }
    }
    if !terminate {
        return ok(format!("tasks {} flagged as revoked", set_repr(&unique)));
    }
    let signal = match signal_number(args.get("signal")) {
        Ok(signal) => signal,
        Err(error) => return error,
    };
    let hit = shared.requests.terminate(&set, signal);
    match hit.is_empty() {
        true => ok("terminate: tasks unknown"),
        false => ok(format!("terminate: {}", hit.join(", "))),
    }
}

/// `rate_limit`: a task's new rate, or none.
fn rate_limit(shared: &Shared, name: Option<&str>, rate: Option<&Json>) -> Json {
    let Some(task) = name.and_then(|name| shared.tasks.get(name)) else {
        return nok("unknown task");
    };
    let text = match rate {
        None | Some(Json::Null) | Some(Json::Bool(false)) => String::new(),
        Some(Json::String(text)) => text.clone(),
        Some(Json::Number(n)) if n.as_f64() == Some(0.0) => String::new(),
        Some(other) => other.to_string(),
    };
    if text.trim().is_empty() {
        task.set_rate(None);
        return ok("rate limit disabled successfully");
    }
    match text.parse::<super::RateLimit>() {
        Ok(limit) => {
            task.set_rate(Some((limit, text.trim().to_owned())));
            ok("new rate limit set successfully")
        }
        Err(error) => nok(format!(
            "Invalid rate limit string: ValueError({})",
            value_repr(&json!(error.to_string()))
        )),
    }
}

/// `registered`: the task names (builtins `celery.*` only when asked), each with the
/// attributes asked for that are set (`tasks.add [rate_limit=10/m]`).
fn registered(shared: &Shared, args: &Map<String, Json>) -> Json {
    let builtins = args
        .get("builtins")
        .and_then(Json::as_bool)
        .unwrap_or(false);
    let items: Vec<String> = match args.get("taskinfoitems") {
        Some(Json::Array(items)) if !items.is_empty() => items
            .iter()
            .filter_map(Json::as_str)
            .filter(|i| !i.starts_with('_'))
            .map(str::to_owned)
            .collect(),
        _ => vec!["exchange".into(), "routing_key".into(), "rate_limit".into()],
    };
    let mut names: Vec<&String> = shared
        .tasks
        .keys()
        .filter(|name| builtins || !name.starts_with("celery."))
        .collect();
    names.sort();
    let listed = names.into_iter().map(|name| {
        let attributes: Vec<String> = shared
            .tasks
            .get(name)
            .map(|task| {
                items
                    .iter()
                    .filter_map(|item| task.attribute(item).map(|v| format!("{item}={v}")))
                    .collect()
            })
            .unwrap_or_default();
        match attributes.is_empty() {
            true => name.clone(),
            false => format!("{name} [{}]", attributes.join(" ")),
        }
    });
    Json::Array(listed.map(Json::String).collect())
}

/// `hello` from another node starting (Celery's mingle): its revoked ids merged into ours,
/// ours and our clock returned; nothing to a hello of our own.
fn hello(shared: &Shared, args: &Map<String, Json>) -> Option<Json> {
    let from = args.get("from_node").and_then(Json::as_str);
    if from == Some(&*shared.hostname) {
        return Some(Json::Null);
    }
    let theirs = revoked_ids(args.get("revoked"));
    let mut revoked = shared.revoked.lock();
    for id in &theirs {
        revoked.add(id);
    }
    revoked.purge();
    Some(json!({"revoked": revoked.ids(), "clock": shared.clock.forward()}))
}

/// kombu's `Queue.as_dict(recurse=True)` of a queue the worker consumes.
fn queue_dict(queue: &super::QueueInfo) -> Json {
    json!({
        "name": queue.name,
        "exchange": {
            "name": queue.exchange,
            "type": queue.exchange_type,
            "arguments": null,
            "durable": true,
            "passive": false,
            "auto_delete": false,
            "delivery_mode": null,
            "no_declare": false,
        },
        "routing_key": queue.routing_key,
        "queue_arguments": null,
        "binding_arguments": null,
        "consumer_arguments": null,
        "durable": true,
        "exclusive": false,
        "auto_delete": false,
        "no_ack": false,
        "alias": null,
        "bindings": [],
        "no_declare": null,
        "expires": null,
        "message_ttl": null,
        "max_length": null,
        "max_length_bytes": null,
        "max_priority": null,
    })
}

/// `conf`: the worker's settings under Celery's names (the broker URL masked).
fn conf(shared: &Shared) -> Json {
    let queues: Vec<String> = shared
        .queues
        .lock()
        .iter()
        .map(|q| q.name.clone())
        .collect();
    json!({
        "broker_url": shared.conn.url().masked(),
        "worker_concurrency": shared.pool.size(),
        "worker_prefetch_multiplier": shared.prefetch / shared.pool.initial.max(1),
        "task_acks_late": shared.acks_late,
        "worker_send_task_events": shared.events.tasks_enabled(),
        "task_default_queue": queues.first(),
        "task_queues": queues,
    })
}

/// `stats`: Celery's shape (Flower reads `total` and `broker`).
fn stats(shared: &Shared) -> Json {
    let mut stats = base_stats(shared);
    if let (Some(autoscaler), Json::Object(map)) = (shared.pool.stats(shared), &mut stats) {
        map.insert("autoscaler".into(), autoscaler);
    }
    stats
}

fn base_stats(shared: &Shared) -> Json {
    let url = shared.conn.url();
    let transport = match shared.conn.messaging_system() {
        "rabbitmq" => "amqp",
        other => other,
    };
    let alternates: Vec<String> = shared
        .conn
        .alternates()
        .iter()
        .skip(1)
        .map(kombu_core::BrokerUrl::masked)
        .collect();
    json!({
        "total": Json::Object(shared.totals.lock().iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        "pid": std::process::id(),
        "clock": shared.clock.value().to_string(),
        "uptime": shared.started.elapsed().as_secs(),
        "pool": {
            "implementation": "kombu_celery.worker:TokioPool",
            "max-concurrency": shared.pool.size(),
            "processes": [std::process::id()],
            "max-tasks-per-child": "N/A",
            "put-guarded-by-semaphore": false,
            // The worker-wide soft and hard limits (per-task limits are set on the tasks).
            "timeouts": [0, 0],
        },
        "broker": {
            "hostname": url.host(),
            "userid": url.username(),
            "virtual_host": url.virtual_host(),
            "port": url.port(),
            "insist": false,
            "ssl": url.scheme().ends_with('s') && url.scheme() != "redis",
            "transport": transport,
            "connect_timeout": 4,
            "transport_options": {},
            "login_method": null,
            "uri_prefix": null,
            "heartbeat": null,
            "failover_strategy": "round-robin",
            "alternates": alternates,
        },
        "prefetch_count": shared.prefetch,
        "rusage": rusage(),
    })
}

/// The process's resource use as Python's `resource.getrusage` names it, read from `/proc`
/// (`"N/A"` where there is none).
fn rusage() -> Json {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return json!("N/A");
    };
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Clock ticks: 100 a second on Linux.
    let seconds = |ticks: u64| ticks as f64 / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let status_field = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    json!({
        "utime": seconds(field(11)),
        "stime": seconds(field(12)),
        "maxrss": status_field("VmHWM:"),
        "ixrss": 0, "idrss": 0, "isrss": 0,
        "minflt": field(7),
        "majflt": field(9),
        "nswap": 0, "inblock": 0, "oublock": 0, "msgsnd": 0, "msgrcv": 0, "nsignals": 0,
        "nvcsw": status_field("voluntary_ctxt_switches:"),
        "nivcsw": status_field("nonvoluntary_ctxt_switches:"),
    })
}

/// Whether a JSON argument is true as Python reads it (`if value:`).
fn truthy(value: &Json) -> bool {
    match value {
        Json::Null => false,
        Json::Bool(b) => *b,
        Json::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
        Json::String(s) => !s.is_empty(),
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::{set_repr, signal_number};
    use serde_json::json;

    #[test]
    fn reply_texts_read_as_pythons() {
        assert_eq!(set_repr(&[]), "set()");
        assert_eq!(set_repr(&["a".into(), "b'c".into()]), "{'a', 'b\\'c'}");
        assert_eq!(signal_number(None), Ok(15));
        assert_eq!(signal_number(Some(&json!("SIGKILL"))), Ok(9));
        assert_eq!(signal_number(Some(&json!("KILL"))), Ok(9));
        assert_eq!(signal_number(Some(&json!(2))), Ok(2));
        assert_eq!(
            signal_number(Some(&json!("term"))),
            Err(json!({"error": "TypeError('signal name must be uppercase string.')"}))
        );
    }

    #[test]
    fn arguments_are_true_as_python_reads_them() {
        for yes in [
            json!(true),
            json!(1),
            json!(2.5),
            json!("x"),
            json!([0]),
            json!({"a": 1}),
        ] {
            assert!(super::truthy(&yes), "{yes}");
        }
        for no in [
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!([]),
            json!({}),
            json!(null),
        ] {
            assert!(!super::truthy(&no), "{no}");
        }
    }
}
