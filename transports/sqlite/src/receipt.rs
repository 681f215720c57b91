//! Receipts: a taken row's id and its `version` after the take, packed in one value.

use kombu_core::transport::virtual_transport::Receipt;
use kombu_core::{Error, ErrorKind, Result};

/// Bits of a receipt that hold the row's `version` after the take: a row taken again (its
/// lease passed) has another version, so a late settlement of the old take touches nothing.
const VERSION_BITS: u32 = 20;
pub(crate) const VERSION_MASK: i64 = (1 << VERSION_BITS) - 1;

pub(crate) fn receipt(id: i64, version: i64) -> Receipt {
    match u64::try_from(id) {
        Ok(id) if id < (1 << (64 - VERSION_BITS)) => {
            Receipt::Id(id << VERSION_BITS | (version & VERSION_MASK).unsigned_abs())
        }
        _ => Receipt::Key(format!("{id}.{version}")),
    }
}

/// The row id and the version (masked) a receipt names.
pub(crate) fn receipt_row(receipt: &Receipt) -> Result<(i64, i64)> {
    let bad = || Error::new(ErrorKind::Settlement, "not a sqlite receipt");
    match receipt {
        Receipt::Id(packed) => {
            let id = i64::try_from(packed >> VERSION_BITS).map_err(|_| bad())?;
            let version = i64::try_from(packed & VERSION_MASK.unsigned_abs()).map_err(|_| bad())?;
            Ok((id, version))
        }
        Receipt::Key(key) => {
            let (id, version) = key.split_once('.').ok_or_else(bad)?;
            let id = id.parse().map_err(|_| bad())?;
            let version: i64 = version.parse().map_err(|_| bad())?;
            Ok((id, version & VERSION_MASK))
        }
        Receipt::Unleased => Err(bad()),
    }
}
