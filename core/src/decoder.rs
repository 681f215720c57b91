//! [`Decoder`]: how a consumer turns a message's body into a value (the serializer registry,
//! the accept list, the bound on decompressed size).

use bytes::Bytes;
use kombu_serializers::{Accept, DEFAULT_MAX_DECOMPRESSED_SIZE, Registry};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::message::Message;

/// How a consumer decodes bodies: the serializer registry, the accept list, the bound on
/// decompressed size.
#[derive(Debug, Clone)]
pub struct Decoder {
    /// The registry that maps content types to serializers.
    pub registry: Registry,
    /// Accepted content types; none = the registry's default-enabled serializers.
    pub accept: Option<Accept>,
    /// Largest body decompression may produce.
    pub max_decompressed_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            registry: Registry::default(),
            accept: None,
            max_decompressed_size: DEFAULT_MAX_DECOMPRESSED_SIZE,
        }
    }
}

impl Decoder {
    /// Checks the content type against the accept list.
    pub fn check(&self, message: &Message) -> Result<()> {
        self.registry
            .check_accept(message.content_type.as_deref(), self.accept.as_ref())
            .map_err(Error::from)
    }

    /// The body after decompression (bounded), if it is compressed.
    pub fn decompressed(&self, message: &Message) -> Result<Bytes> {
        match message.compression() {
            None => Ok(message.body.clone()),
            Some(compression) => Ok(self.registry.decompress(
                &message.body,
                compression,
                self.max_decompressed_size,
            )?),
        }
    }

    /// Decompresses and deserializes the body, honouring the accept list.
    pub fn decode<T: DeserializeOwned>(&self, message: &Message) -> Result<T> {
        self.check(message)?;
        let body = self.decompressed(message)?;
        Ok(self.registry.decode(
            &body,
            message.content_type.as_deref(),
            message.content_encoding.as_deref(),
            self.accept.as_ref(),
        )?)
    }
}
