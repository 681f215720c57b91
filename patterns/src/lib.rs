//! # kombu-patterns
//!
//! What services build on kombu-rs's [`Connection`](kombu_core::Connection), as Python's kombu
//! has them beside its Producer and Consumer (`kombu.simple`, `kombu.mixins`, `kombu.common`'s
//! reply helpers). Each works on every transport; the facade crate `kombu` re-exports them as
//! `kombu::simple`, `kombu::rpc`, `kombu::worker` and `kombu::testing`.
//!
//! Every constructor takes a connection as `&impl AsRef<kombu_core::Connection>`: the facade's
//! `kombu::Connection` and core's `kombu_core::Connection` both work.

/// Core's connection, as every pattern takes it (`&impl AsRef<CoreConnection>`: the facade's
/// `kombu::Connection` and `kombu_core::Connection` both are).
pub use kombu_core::Connection as CoreConnection;

pub mod rpc;
pub mod simple;
pub mod testing;
pub mod worker;
