//! The wire-to-kombu mapping as the fuzz targets (`fuzz/`) and their corpus test call it: not
//! part of the API.

use kombu_core::{Headers, Message};
use lapin::protocol::basic::parse_properties;
use lapin::types::parsing::parse_field_table;

use crate::mapping;

/// `bytes` parsed as an AMQP field table (a 32-bit length, then the entries) and mapped to
/// kombu headers as a delivery's headers are; `None` when they are not a field table.
pub fn headers_from_field_table(bytes: &[u8]) -> Option<Headers> {
    let (_, table) = parse_field_table(bytes).ok()?;
    Some(mapping::from_table(&table))
}

/// `bytes` parsed as the basic properties of a content header (flags, then the properties
/// they announce) and mapped to the message a delivery with an empty body carries; `None`
/// when they are not basic properties.
pub fn message_from_properties(bytes: &[u8]) -> Option<Message> {
    let (_, props) = parse_properties(bytes).ok()?;
    Some(mapping::to_message(Vec::new(), &props))
}

/// `message` through a publish and a delivery: its basic properties as kombu writes them,
/// mapped back to the message a consumer sees.
pub fn through_properties(message: &Message) -> Message {
    let props = mapping::to_properties(message);
    mapping::to_message(message.body.to_vec(), &props)
}
