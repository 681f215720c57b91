//! Celery's canvas as a client writes it: groups and chords ([`Celery::group`],
//! [`Celery::chord`]), and a signature sent by a worker after its task (a callback, a chain's
//! next step, a chord's body), with the `apply_async` options its signature carries.

use std::time::Duration;

use kombu_core::{Error, ErrorKind, Result};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value as Json};

use crate::backend::{ChordSupport, ResultBackend};
use crate::client::{Celery, Sent, TaskOptions};
use crate::message::Signature;
use crate::result::TaskError;

/// A group sent ([`Celery::group`]): its id and its members' ids, in order.
#[derive(Debug, Clone)]
pub struct GroupSent {
    pub(crate) id: String,
    pub(crate) members: Vec<String>,
}

impl GroupSent {
    /// The group id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The members' task ids, in the group's order.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Every member's value, in order, waiting up to `timeout` in all (Celery's
    /// `GroupResult.get`); the first member that failed ends it with its error.
    pub async fn get<Output: DeserializeOwned>(
        &self,
        backend: &dyn ResultBackend,
        timeout: Duration,
    ) -> std::result::Result<Vec<Output>, TaskError> {
        let deadline = crate::backend::deadline(timeout);
        let mut values = Vec::with_capacity(self.members.len());
        for id in &self.members {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            values.push(Sent::<Output>::new(id.as_str()).get(backend, left).await?);
        }
        Ok(values)
    }
}

/// A chord sent ([`Celery::chord`]): its header, a group, and its body, whose result is the
/// chord's.
#[derive(Debug)]
pub struct ChordSent {
    /// The header tasks, sent as a group.
    pub header: GroupSent,
    /// The body task (not sent yet: the header's last result sends it).
    pub body: Sent<Json>,
}

impl Celery {
    /// Celery's `group(...).apply_async()`: sends each member (its task, arguments and the
    /// `task_id`, `queue` and `priority` among its options) with the group's id and its index,
    /// as Celery writes a group's tasks.
    pub async fn group(&self, members: Vec<Signature>) -> Result<GroupSent> {
        let id = uuid::Uuid::new_v4().to_string();
        let mut ids = Vec::with_capacity(members.len());
        for (index, member) in members.into_iter().enumerate() {
            ids.push(self.send_member(member, &id, index, None, None).await?);
        }
        Ok(GroupSent { id, members: ids })
    }

    /// Celery's `chord(header)(body)`: runs the `header` tasks as a group, then `body` with
    /// the list of their results (in header order) before its own arguments. As Celery writes
    /// it: each header task carries the body (`chord` in its embed) and the group id; with a
    /// backend that joins chords (Redis) the header's size is stored before its last task is
    /// sent, and the worker storing the last result sends the body; with the others (SQL,
    /// memory) a `celery.chord_unlock` task is sent to the body's queue, which polls the
    /// header's results. `backend` must be the workers' result backend; `rpc://` has no
    /// chords ([`ErrorKind::Unsupported`]). An empty header sends the body at once with `[]`.
    pub async fn chord(
        &self,
        header: Vec<Signature>,
        body: Signature,
        backend: &dyn ResultBackend,
    ) -> Result<ChordSent> {
        self.chord_from(header, body, backend, None, None).await
    }

    /// [`chord`](Self::chord) with the group id given (a chord Celery froze) and sent by the
    /// task `parent` (a worker sending a chord step of a chain).
    pub(crate) async fn chord_from(
        &self,
        header: Vec<Signature>,
        mut body: Signature,
        backend: &dyn ResultBackend,
        group_id: Option<String>,
        parent: Option<&crate::TaskRequest>,
    ) -> Result<ChordSent> {
        let support = backend.chord_support();
        if support == ChordSupport::Unsupported {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{backend:?} has no chords (Celery's rpc:// neither)"),
            ));
        }
        let group_id = group_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let body_id = match body.options.get("task_id").and_then(Json::as_str) {
            Some(id) => id.to_owned(),
            None => uuid::Uuid::new_v4().to_string(),
        };
        body.options
            .insert("task_id".into(), Json::from(body_id.as_str()));
        // As Celery's freeze: a group id the body has already (an outer group's) stays.
        body.options
            .entry("group_id")
            .or_insert_with(|| Json::from(group_id.as_str()));
        if let Some(reply_to) = &self.reply_to {
            body.options
                .entry("reply_to")
                .or_insert_with(|| Json::from(reply_to.as_str()));
        }
        if header.is_empty() {
            let mut options = TaskOptions::new().task_id(body_id.as_str());
            options.fields.group_id = Some(group_id.clone());
            let mut args = vec![Json::Array(Vec::new())];
            args.extend(body.args.iter().cloned());
            self.send_task(&body.task, args, body.kwargs.clone(), options)
                .await?;
            return Ok(ChordSent {
                header: GroupSent {
                    id: group_id,
                    members: Vec::new(),
                },
                body: Sent::new(body_id),
            });
        }
        let size = header.len();
        let mut ids = Vec::with_capacity(size);
        for (index, member) in header.into_iter().enumerate() {
            if support == ChordSupport::Join && index + 1 == size {
                backend.set_chord_size(&group_id, size).await?;
            }
            ids.push(
                self.send_member(member, &group_id, index, Some(&body), parent)
                    .await?,
            );
        }
        if support == ChordSupport::Unlock {
            let results: Vec<Json> = ids
                .iter()
                .map(|id| {
                    Json::Array(vec![
                        Json::Array(vec![Json::from(id.as_str()), Json::Null]),
                        Json::Null,
                    ])
                })
                .collect();
            let mut kwargs = Map::new();
            kwargs.insert("interval".into(), Json::Null);
            kwargs.insert("max_retries".into(), Json::Null);
            kwargs.insert("result".into(), Json::Array(results));
            let mut options = TaskOptions::new().countdown(Duration::from_secs(1));
            if let Some(queue) = body.options.get("queue").and_then(Json::as_str) {
                options = options.queue(queue);
            } else {
                options = options.queue(self.queue_of(&body.task));
            }
            let body_json = serde_json::to_value(&body).map_err(|e| {
                Error::new(ErrorKind::Codec, "a chord body that does not serialize").with_source(e)
            })?;
            self.send_task(
                crate::worker::CHORD_UNLOCK,
                (group_id.as_str(), body_json),
                kwargs,
                options,
            )
            .await?;
        }
        Ok(ChordSent {
            header: GroupSent {
                id: group_id,
                members: ids,
            },
            body: Sent::new(body_id),
        })
    }

    /// Sends one member of group `group_id` at `index` (a chord's header task with `chord`).
    async fn send_member(
        &self,
        member: Signature,
        group_id: &str,
        index: usize,
        chord: Option<&Signature>,
        parent: Option<&crate::TaskRequest>,
    ) -> Result<String> {
        if let Some(kind) = &member.subtask_type {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "a {kind} as a member of a group or chord header is not sent by kombu-celery yet"
                ),
            ));
        }
        let mut options =
            options_of(&member).group(group_id, u32::try_from(index).unwrap_or(u32::MAX));
        options.fields.chord = chord.cloned();
        if let Some(parent) = parent {
            options = options
                .parent_id(parent.id.as_str())
                .root_id(parent.root_id.as_deref().unwrap_or(&parent.id));
        }
        self.send_task(&member.task, member.args, member.kwargs, options)
            .await
    }

    /// Sends `sig` as a worker does after its task (Celery's `signature.apply_async`): `first`
    /// (the parent's result, or its id for an errback) before the signature's own arguments
    /// unless it is immutable, `parent` as its parent and root, `chain` (Celery's order, the
    /// next task last) as the rest of its chain; its options `task_id`, `queue`, `priority`,
    /// `countdown`, `group_id` / `group_index`, `chord` and `reply_to` are honoured, and the
    /// parent's `priority` when it has none.
    pub(crate) async fn send_signature(
        &self,
        sig: &Signature,
        first: Option<Json>,
        parent: &crate::TaskRequest,
        chain: Vec<Signature>,
        priority: Option<u8>,
    ) -> Result<String> {
        let mut chain = chain;
        let unrolled;
        let sig = match sig.subtask_type.as_deref() {
            None => sig,
            // Celery's chain signature (`celery.chain`, its tasks first to last in
            // `kwargs.tasks`): its first task, the others before the rest of `chain`.
            Some("chain") => {
                let mut tasks = Signature::list(sig.kwargs.get("tasks")).map_err(|e| {
                    Error::new(ErrorKind::Codec, "a chain whose tasks do not parse").with_source(e)
                })?;
                if tasks.is_empty() {
                    return Err(Error::new(ErrorKind::Codec, "a chain without tasks"));
                }
                unrolled = tasks.remove(0);
                chain.extend(tasks.into_iter().rev());
                &unrolled
            }
            Some(_) => sig,
        };
        // A body or callback carrying the rest of a chain in its options (Celery puts a
        // chord step's followers there).
        if chain.is_empty()
            && let Some(Json::Array(items)) = sig.options.get("chain")
        {
            chain = items
                .iter()
                .filter_map(|t| serde_json::from_value(t.clone()).ok())
                .collect();
        }
        if let Some(kind) = &sig.subtask_type {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "a {kind} ({}) as a callback, chain step or chord body is not sent by \
                     kombu-celery yet",
                    sig.task
                ),
            ));
        }
        let mut args = Vec::with_capacity(sig.args.len() + 1);
        if let Some(first) = first.filter(|_| !sig.immutable) {
            args.push(first);
        }
        args.extend(sig.args.iter().cloned());
        let mut options = options_of(sig)
            .parent_id(parent.id.as_str())
            .root_id(parent.root_id.as_deref().unwrap_or(&parent.id));
        options.fields.chain = chain;
        if options.priority.is_none() {
            options.priority = priority;
        }
        self.send_task(&sig.task, args, sig.kwargs.clone(), options)
            .await
    }
}

/// The `apply_async` options a signature carries, as [`TaskOptions`]: `task_id`, `queue`,
/// `reply_to`, `priority`, `countdown`, `group_id` / `group_index`, `chord`, `link` and
/// `link_error`.
fn options_of(sig: &Signature) -> TaskOptions {
    let text = |key: &str| sig.options.get(key).and_then(Json::as_str);
    let mut options = TaskOptions::new();
    if let Some(id) = text("task_id") {
        options = options.task_id(id);
    }
    if let Some(queue) = text("queue") {
        options = options.queue(queue);
    }
    if let Some(reply_to) = text("reply_to") {
        options = options.reply_to(reply_to);
    }
    if let Some(priority) = sig
        .options
        .get("priority")
        .and_then(Json::as_u64)
        .and_then(|p| u8::try_from(p).ok())
    {
        options = options.priority(priority);
    }
    if let Some(countdown) = sig
        .options
        .get("countdown")
        .and_then(Json::as_f64)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        options = options.countdown(countdown);
    }
    if let Some(group) = text("group_id") {
        options.fields.group_id = Some(group.to_owned());
        options.fields.group_index = sig
            .options
            .get("group_index")
            .and_then(Json::as_u64)
            .and_then(|i| u32::try_from(i).ok());
    }
    if let Some(chord) = sig.options.get("chord") {
        options.fields.chord = serde_json::from_value(chord.clone()).ok();
    }
    for (key, list) in [("link", true), ("link_error", false)] {
        let callbacks: Vec<Signature> = match sig.options.get(key) {
            Some(Json::Array(items)) => items
                .iter()
                .filter_map(|s| serde_json::from_value(s.clone()).ok())
                .collect(),
            Some(one @ Json::Object(_)) => {
                serde_json::from_value(one.clone()).into_iter().collect()
            }
            _ => Vec::new(),
        };
        match list {
            true => options.fields.link.extend(callbacks),
            false => options.fields.link_error.extend(callbacks),
        }
    }
    options
}
