//! What a task's end sends on: its callbacks and errbacks, the next step of its chain, and
//! the groups and chords among them, as Celery's canvas writes them; and the message of its
//! retry.

use std::time::Duration;

use chrono::Utc;
use kombu_core::{Message, Value};
use serde_json::{Value as Json, json};

use super::{Results, Shared};
use crate::message::isoformat;
use crate::request::TaskRequest;

/// Sends a callback, errback or the chain's next task: a plain or chain signature through
/// the client, a group as its members with `first` each (Celery's `group.apply_async(args)`),
/// a chord as [`Celery::chord`](crate::Celery::chord) does with `first` given to its header
/// tasks and the rest of `chain` to its body.
pub(crate) async fn send(
    shared: &Shared,
    sig: &crate::Signature,
    first: Option<Json>,
    parent: &TaskRequest,
    chain: Vec<crate::Signature>,
    priority: Option<u8>,
) -> kombu_core::Result<()> {
    match sig.subtask_type.as_deref() {
        Some("group") => {
            if !chain.is_empty() {
                return Err(kombu_core::Error::new(
                    kombu_core::ErrorKind::Unsupported,
                    "a group followed by more of its chain (Celery sends that as a chord)",
                ));
            }
            let group_id = sig
                .options
                .get("task_id")
                .and_then(Json::as_str)
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
            for (index, member) in signatures(sig.kwargs.get("tasks"), "group")?
                .into_iter()
                .enumerate()
            {
                let mut member = member;
                member.options.insert("group_id".into(), json!(group_id));
                member.options.insert("group_index".into(), json!(index));
                // The group's own routing and timing apply to members that set none.
                for key in ["queue", "priority", "countdown", "reply_to"] {
                    if let Some(value) = sig.options.get(key) {
                        member.options.entry(key).or_insert_with(|| value.clone());
                    }
                }
                shared
                    .client
                    .send_signature(&member, first.clone(), parent, Vec::new(), priority)
                    .await?;
            }
            Ok(())
        }
        Some("chord") => {
            let Results::Backend(backend) = &shared.results else {
                return Err(kombu_core::Error::new(
                    kombu_core::ErrorKind::Unsupported,
                    "a chord needs a result backend (WorkerBuilder::result_backend)",
                ));
            };
            // The header: a list of signatures, or a group's.
            let header = match sig.kwargs.get("header") {
                Some(Json::Object(group)) => signatures(
                    group.get("kwargs").and_then(|k| k.get("tasks")),
                    "chord header",
                )?,
                other => signatures(other, "chord header")?,
            };
            let header = header
                .into_iter()
                .map(|mut member| {
                    if let Some(first) = first.clone().filter(|_| !member.immutable) {
                        member.args.insert(0, first);
                    }
                    member
                })
                .collect();
            let mut body: crate::Signature = sig
                .kwargs
                .get("body")
                .cloned()
                .map(serde_json::from_value)
                .transpose()
                .map_err(|e| {
                    kombu_core::Error::new(
                        kombu_core::ErrorKind::Codec,
                        "a chord body that does not parse",
                    )
                    .with_source(e)
                })?
                .ok_or_else(|| {
                    kombu_core::Error::new(kombu_core::ErrorKind::Codec, "a chord without a body")
                })?;
            if !chain.is_empty() {
                body.options.insert("chain".into(), json!(chain));
            }
            // Celery's chord.run: the group id is the header's `task_id` (the chord
            // signature carries the same); not the body's `group_id`, which inside an outer
            // group or chord is the outer one's.
            let header_id = match sig.kwargs.get("header") {
                Some(Json::Object(group)) => group
                    .get("options")
                    .and_then(|o| o.get("task_id"))
                    .and_then(Json::as_str),
                _ => None,
            };
            let group_id = header_id
                .or_else(|| sig.options.get("task_id").and_then(Json::as_str))
                .map(str::to_owned);
            shared
                .client
                .chord_from(header, body, backend.as_ref(), group_id, Some(parent))
                .await
                .map(|_| ())
        }
        _ => shared
            .client
            .send_signature(sig, first, parent, chain, priority)
            .await
            .map(|_| ()),
    }
}

/// The signatures of a canvas's `tasks` (or header) list, which must be there.
fn signatures(value: Option<&Json>, what: &str) -> kombu_core::Result<Vec<crate::Signature>> {
    if !matches!(value, Some(Json::Array(_))) {
        return Err(kombu_core::Error::new(
            kombu_core::ErrorKind::Codec,
            format!("a {what} without its tasks"),
        ));
    }
    crate::Signature::list(value).map_err(|e| {
        kombu_core::Error::new(
            kombu_core::ErrorKind::Codec,
            format!("a {what} task that does not parse"),
        )
        .with_source(e)
    })
}

/// The message of the task's retry: the same one with `retries` one higher and its `eta`
/// the countdown from now (protocol 2 in the headers, protocol 1 in the body).
pub(crate) fn retry_message(
    message: &Message,
    request: &TaskRequest,
    countdown: Duration,
) -> Result<Message, String> {
    let mut message = message.clone();
    let retries = i64::from(request.retries) + 1;
    let eta = chrono::Duration::from_std(countdown)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .map(isoformat)
        .ok_or_else(|| format!("a countdown of {countdown:?} is past any date"))?;
    match request.protocol {
        1 => {
            // The body holds the retries: rewritten, or the retry would loop unchanged.
            let body = match serde_json::from_slice::<Json>(&message.body) {
                Ok(Json::Object(body))
                    if message.content_type.as_deref() == Some("application/json")
                        && message.compression().is_none() =>
                {
                    body
                }
                _ => {
                    return Err(
                        "a protocol 1 message whose body is not plain JSON cannot be retried"
                            .to_owned(),
                    );
                }
            };
            let mut body = body;
            body.insert("retries".into(), json!(retries));
            body.insert("eta".into(), json!(eta));
            message.body = serde_json::to_vec(&Json::Object(body))
                .map_err(|e| e.to_string())?
                .into();
        }
        _ => {
            message
                .headers
                .insert("retries".to_owned(), Value::Int(retries));
            message.headers.insert("eta".to_owned(), Value::from(eta));
        }
    }
    Ok(message)
}
