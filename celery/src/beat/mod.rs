//! Beat (in progress).
mod crontab;
pub use crontab::Crontab;
