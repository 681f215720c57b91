//! A message row's payload as stored, read whatever its storage class.

use rusqlite::types::ValueRef;

/// A row's payload as stored, whatever its storage class.
pub(crate) struct Payload {
    /// The stored bytes: a TEXT value's (UTF-8 or not), a BLOB's, a number's text.
    pub(crate) bytes: Vec<u8>,
    /// Why it is not even parsed (`NULL`, longer than `max_payload_size`).
    pub(crate) unreadable: Option<String>,
}

impl Payload {
    /// Reads the payload column; `oversize` is SQL's `octet_length(payload) > max`. Never
    /// fails: whatever is stored is carried on, byte for byte.
    pub(crate) fn read(value: ValueRef<'_>, oversize: bool, max: i64) -> Payload {
        let (bytes, mut unreadable) = match value {
            ValueRef::Text(b) => (b.to_vec(), None),
            ValueRef::Blob(b) => (b.to_vec(), None),
            ValueRef::Null => (Vec::new(), Some("the payload is NULL".to_owned())),
            ValueRef::Integer(i) => (i.to_string().into_bytes(), None),
            ValueRef::Real(f) => (f.to_string().into_bytes(), None),
        };
        if oversize {
            unreadable = Some(format!(
                "the payload is {} bytes, over max_payload_size ({max})",
                bytes.len()
            ));
        }
        Payload { bytes, unreadable }
    }
}
