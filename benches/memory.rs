//! Memory transport throughput and latency against a bare `tokio::sync::mpsc` channel doing the
//! same work in the same run, with mimalloc as the global allocator (both sides).
//!
//! ```text
//! cargo bench --bench memory                      # 1,000,000 messages
//! cargo bench --bench memory -- 200000            # fewer
//! cargo bench --bench memory_system_alloc         # the same with the system allocator
//! ```
//!
//! Messages are kombu's benchmark body, `{"id": N, "payload": "x" * 64}` as JSON (~90 bytes).
//! Rows:
//! - typed: a producer task serializes a struct and publishes; a consumer task deserializes it
//!   and acks. The ceiling does the same serde_json work around an unbounded mpsc channel.
//! - raw: pre-encoded bytes, no decoding (kombu: `publish_bytes`, ack). The ceiling moves the
//!   same `Bytes` through mpsc.
//! - phases: publish everything, then consume everything with ack (one task each).
//! - latency: one message in flight (publish, receive, decode, ack in one task), p50 and p99.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "memory_common.rs"]
mod common;
mod support;

fn main() -> kombu::Result<()> {
    common::run("mimalloc", support::record)
}
