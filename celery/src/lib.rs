//! Celery's task protocol on kombu-rs: send tasks to Celery workers, and read the task
//! messages Celery sends, on every transport kombu-rs has, side by side with Python Celery
//! 5.x. Re-exported by the facade as `kombu::celery` (feature `celery`).
//!
//! - [`Celery`] is the client: [`Celery::send_task`] writes task protocol 2 exactly as
//!   Celery 5.7 does (every header, `null` when unset; the body `[args, kwargs, embed]`;
//!   `correlation_id` = the task id; persistent; `eta`/`countdown` and `expires` as ISO 8601
//!   times in UTC with their offset; priority; retries; `root_id`/`parent_id`; `link`,
//!   `link_error`, `chain`; [`Celery::group`] sends a group), routes it as Celery does (the task's queue by
//!   [`CeleryBuilder::route`] globs, else `celery`; the default exchange with the queue's name
//!   as key) and declares the queue first. A [`Task`] declares a task's name, argument and
//!   result types once.
//! - [`TaskRequest::from_delivery`] reads a task message of protocol 2 or 1, as a worker
//!   does.
//! - Results in Celery's format: [`ResultMeta`] (states, the stored document, a failure's
//!   `exc_type` / `exc_message` / `exc_module`), [`backend::ResultBackend`] and Celery's Redis
//!   backend [`backend::RedisResultBackend`] (`celery-task-meta-<id>`, `SETEX` for
//!   `result_expires` and `PUBLISH` in one transaction, waiting on the key's channel), and
//!   its `rpc://` backend [`backend::RpcResultBackend`] (results as messages to the client's
//!   reply queue), and its SQL backend on SQLite [`backend::SqlResultBackend`] (`db+sqlite://`,
//!   Celery's `celery_taskmeta` table); [`Sent::get`] is Celery's `AsyncResult.get(timeout)`.
//!
//! - [`worker::Worker`] runs Celery tasks in Rust: typed async functions registered by task
//!   name, on the queues Python workers use, with Celery's acks, eta, expiry, time limits,
//!   retries, rate limits, results and chains.
//! - Canvas: chains and callbacks in the embed, groups ([`Celery::group`]) and chords
//!   ([`Celery::chord`]: joined in the Redis backend in Celery's layout, else through Celery's
//!   `celery.chord_unlock`, which the worker runs).
//!
//! - Operations: [`events`] (Celery's monitoring events: sent by the worker and, when asked,
//!   the client; heard with [`events::EventReceiver`]) and [`control`] (Celery's remote
//!   control: the worker answers `celery inspect` / `celery control`, and
//!   [`control::Control`] asks Python and Rust workers alike).
//!
//! Headers: kombu-rs keeps headers in a sorted map, so a message's header keys come in
//! alphabetical order rather than Celery's; Celery reads them by name.

pub mod backend;
pub mod beat;
mod canvas;
mod client;
pub mod clock;
pub mod control;
pub mod events;
mod message;
mod repr;
mod request;
mod result;
pub mod worker;

pub use canvas::{ChordSent, GroupSent};
pub use client::{Celery, CeleryBuilder, DEFAULT_QUEUE, Sent, Task, TaskOptions};
pub use message::{Signature, When};
pub use request::TaskRequest;
pub use result::{ResultMeta, State, TaskError, TaskFailure};
