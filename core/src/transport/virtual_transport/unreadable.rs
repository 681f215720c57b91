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
use base64::Engine as _;

use crate::transport::virtual_transport::channel::Shared;
use crate::transport::virtual_transport::{Receipt, Unreadable};
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
        // Entries no store holds any more (received over PUB/SUB): if moving them fails, this
        // log line is the one place left that has their bytes.
        let unleased: Vec<bytes::Bytes> = items
            .iter()
            .filter(|(receipt, _)| *receipt == Receipt::Unleased)
            .map(|(_, envelope)| envelope.message.body.clone())
            .collect();
        let pushed_out = match self.backend.set_aside(queue, &dlq, items).await {
            Ok(pushed_out) => pushed_out,
            Err(error) => {
                for raw in &unleased {
                    tracing::error!(
                        %queue,
                        %error,
                        bytes_base64 = %base64::engine::general_purpose::STANDARD.encode(raw),
                        "an unreadable message held by no store could not be moved to its \
                         dead-letter queue; its bytes are in this line"
                    );
                }
                return Err(error.context(format!(
                    "moving unreadable messages of {queue:?} to {dlq:?}"
                )));
            }
        };
        self.dead_letter(pushed_out).await?;
        Ok(notices)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use futures::StreamExt;

    use super::*;
    use crate::ErrorKind;
    use crate::channel::{Channel, ConsumeOptions, Outgoing};
    use crate::entity::Exchange;
    use crate::transport::memory::MemoryBackend;
    use crate::transport::virtual_transport::{
        Backend, BackendCapabilities, BindingRow, DeadLetter, Fetched, Receipt, StoredQueue,
        TakeMode, VirtualChannel,
    };

    const BROKEN: &[u8] = b"\xffthis entry is broken";

    /// Memory, except that a message whose body is [`BROKEN`] comes out of a take as an
    /// unreadable entry (as a raw client's bytes would from Redis or SQLite), with its lease.
    /// Leaves `set_aside` to the trait's default.
    #[derive(Debug)]
    struct Breaking(MemoryBackend);

    #[async_trait]
    impl Backend for Breaking {
        fn capabilities(&self) -> BackendCapabilities {
            let mut c = self.0.capabilities();
            c.transport = "breaking";
            c
        }
        async fn exchange(&self, name: &str, d: Option<&Exchange>) -> Result<Option<Exchange>> {
            self.0.exchange(name, d).await
        }
        async fn delete_exchange(&self, name: &str) -> Result<()> {
            self.0.delete_exchange(name).await
        }
        async fn queue(&self, name: &str, d: Option<&Queue>) -> Result<Option<StoredQueue>> {
            self.0.queue(name, d).await
        }
        async fn delete_queue(&self, name: &str) -> Result<u64> {
            self.0.delete_queue(name).await
        }
        async fn bind(&self, row: &BindingRow) -> Result<()> {
            self.0.bind(row).await
        }
        async fn unbind(&self, row: &BindingRow) -> Result<()> {
            self.0.unbind(row).await
        }
        async fn bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
            self.0.bindings(exchange).await
        }
        async fn fresh_bindings(&self, exchange: &str) -> Result<Arc<[BindingRow]>> {
            self.0.fresh_bindings(exchange).await
        }
        async fn put_many(&self, items: Vec<(String, Envelope)>) -> Result<Vec<DeadLetter>> {
            self.0.put_many(items).await
        }
        async fn get_many(&self, queue: &str, max: usize, mode: TakeMode) -> Result<Fetched> {
            let mut fetched = self.0.get_many(queue, max, mode).await?;
            let (broken, good) = fetched
                .taken
                .drain(..)
                .partition(|t| t.envelope.message.body.as_ref() == BROKEN);
            fetched.taken = good;
            fetched.unreadable = broken
                .into_iter()
                .map(|t: crate::transport::virtual_transport::Taken| Unreadable {
                    raw: t.envelope.message.body.clone(),
                    reason: "broken on purpose".to_owned(),
                    receipt: t.receipt,
                })
                .collect();
            Ok(fetched)
        }
        async fn ack_many(&self, queue: &str, receipts: &[Receipt]) -> Result<()> {
            self.0.ack_many(queue, receipts).await
        }
        async fn reject(&self, q: &str, r: &Receipt, requeue: bool) -> Result<Option<DeadLetter>> {
            self.0.reject(q, r, requeue).await
        }
    }

    #[tokio::test]
    async fn an_unreadable_entry_goes_to_its_dead_letter_queue_between_good_messages() {
        let backend = Arc::new(Breaking(MemoryBackend::new()));
        let channel = VirtualChannel::new(backend.clone(), None);
        channel.declare_queue(&Queue::new("q")).await.unwrap();
        for body in [&b"\"one\""[..], BROKEN, &b"\"two\""[..]] {
            let message = Message::new(body.to_vec()).content_type("application/json");
            channel
                .publish(Outgoing::new("", "q", message))
                .await
                .unwrap();
        }
        let mut stream = channel
            .consume(&["q".to_owned()], &ConsumeOptions::default())
            .await
            .unwrap();
        // The notice comes before the deliveries taken in the same batch.
        let notice = stream.next().await.unwrap().unwrap_err();
        assert_eq!(notice.kind(), ErrorKind::DeadLettered);
        let record = notice.dead_lettered().unwrap();
        assert_eq!(record.queue, "q");
        assert_eq!(record.destination, Destination::Queue("q.dlq".to_owned()));
        assert_eq!(record.reason, "unreadable envelope: broken on purpose");
        for expected in [&b"\"one\""[..], &b"\"two\""[..]] {
            let d = stream.next().await.unwrap().unwrap();
            assert_eq!(d.body().as_ref(), expected);
            d.ack().await.unwrap();
        }
        drop(stream);

        assert_eq!(channel.queue_size("q").await.unwrap(), 0);
        // Read past the wrapper, which would find the dead letter's body broken again.
        let mut dead = backend
            .0
            .get_many("q.dlq", 10, TakeMode::NoAck)
            .await
            .unwrap()
            .taken;
        assert_eq!(dead.len(), 1);
        let dead = dead.pop().unwrap().envelope;
        assert_eq!(dead.message.body.as_ref(), BROKEN);
        assert_eq!(
            dead.message.headers.get(TRANSPORT),
            Some(&Value::from("breaking"))
        );
        assert_eq!(
            dead.message.content_type.as_deref(),
            Some("application/octet-stream")
        );
        channel.close().await.unwrap();
        // Nothing left leased: the default set_aside acked the original.
        let leftover = backend.0.get_many("q", 10, TakeMode::NoAck).await.unwrap();
        assert!(leftover.taken.is_empty());
    }

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
