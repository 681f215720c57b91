//! The memory benchmark (see `benches/memory.rs`) with the system allocator.

#[path = "memory_common.rs"]
mod common;
mod support;

fn main() -> kombu::Result<()> {
    common::run("system", support::record)
}
