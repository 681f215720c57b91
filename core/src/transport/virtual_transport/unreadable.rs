//! Entries a backend took that are not kombu envelopes: moved to `<queue>.dlq`, byte for byte,
//! logged, and reported to the consumer as an [`ErrorKind::DeadLettered`](crate::ErrorKind)
//! item. Never dropped, never left to block the queue.

use std::borrow::Cow;

use crate::dead_letter::{
    self, DeadLettered, Destination, ORIGINAL_EXCHANGE, ORIGINAL_QUEUE, ORIGINAL_ROUTING_KEY,
    REASON, TRANSPORT,
};
use crate::entity::Queue;
use crate::error::{Error, Result};
use crate::message::{Envelope, Message};
use crate::transport::virtual_transport::Unreadable;
use crate::transport::virtual_transport::channel::Shared;
use crate::value::Value;

/// The dead letter of an unreadable entry of `queue`: the stored bytes as the body
/// (`application/octet-stream`, `binary`), with headers naming the queue, the transport and the
/// reason, addressed to `<queue>.dlq` through the default exchange.
pub fn dead_letter_envelope(
    queue: &str,
    transport: &str,
    reason: &str,
    raw: bytes::Bytes,
) -> Envelope {
    let mut message = Message::new(raw);
    message.content_type = Some(Cow::Borrowed("application/octet-stream"));
    message.content_encoding = Some(Cow::Borrowed("binary"));
    let headers = &mut message.headers;
    headers.insert(
        REASON.to_owned(),
        Value::from(format!("unreadable envelope: {reason}")),
    );
    headers.insert(ORIGINAL_QUEUE.to_owned(), Value::from(queue));
    headers.insert(ORIGINAL_EXCHANGE.to_owned(), Value::from(""));
    headers.insert(ORIGINAL_ROUTING_KEY.to_owned(), Value::from(""));
    headers.insert(TRANSPORT.to_owned(), Value::from(transport));
    Envelope::new(message, String::new(), dead_letter::dlq_name(queue))
}

impl Shared {
    /// Moves unreadable entries of `queue` to `<queue>.dlq` (declared here) and returns one
    /// [`ErrorKind::DeadLettered`](crate::ErrorKind) notice per entry for the consumer. On
    /// failure the leased entries stay unacked and come back when their leases end.
    pub(super) async fn set_aside_unreadable(
        &self,
        queue: &str,
        unreadable: Vec<Unreadable>,
    ) -> Result<Vec<Error>> {
        if unreadable.is_empty() {
            return Ok(Vec::new());
        }
        let transport = self.transport;
        let dlq = dead_letter::dlq_name(queue);
        self.backend
            .queue(&dlq, Some(&Queue::new(dlq.clone())))
            .await
            .map_err(|e| e.context(format!("declaring dead-letter queue {dlq:?}")))?;
        let mut notices = Vec::with_capacity(unreadable.len());
        let mut items = Vec::with_capacity(unreadable.len());
        for entry in unreadable {
            tracing::warn!(
                %queue,
                transport,
                reason = %entry.reason,
                bytes = entry.raw.len(),
                dead_letter_queue = %dlq,
                "unreadable message moved to its dead-letter queue"
            );
            notices.push(Error::from_dead_lettered(DeadLettered::new(
                queue,
                format!("unreadable envelope: {}", entry.reason),
                Destination::Queue(dlq.clone()),
            )));
            let envelope = dead_letter_envelope(queue, transport, &entry.reason, entry.raw);
            items.push((entry.receipt, envelope));
        }
        let pushed_out = self
            .backend
            .set_aside(queue, &dlq, items)
            .await
            .map_err(|e| {
                e.context(format!(
                    "moving unreadable messages of {queue:?} to {dlq:?}"
                ))
            })?;
        self.dead_letter(pushed_out).await?;
        Ok(notices)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dead_letter_keeps_the_bytes_and_names_its_origin() {
        let raw = bytes::Bytes::from_static(b"\xff\x00not json");
        let env = dead_letter_envelope("jobs", "redis", "not JSON", raw.clone());
        assert_eq!(env.message.body, raw);
        assert_eq!(env.routing_key, "jobs.dlq");
        assert_eq!(env.exchange, "");
        assert_eq!(
            env.message.content_type.as_deref(),
            Some("application/octet-stream")
        );
        let h = &env.message.headers;
        assert_eq!(h.get(ORIGINAL_QUEUE), Some(&Value::from("jobs")));
        assert_eq!(h.get(TRANSPORT), Some(&Value::from("redis")));
        assert_eq!(
            h.get(REASON),
            Some(&Value::from("unreadable envelope: not JSON"))
        );
    }
}
