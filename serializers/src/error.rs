//! The crate's error type.
//!
//! As the standard library's convention wants, an error's `Display` does not repeat its
//! [`source`](std::error::Error::source): the variants that wrap another error (`Encode`,
//! `Decode`, `Compress`, `Decompress`) name what failed, and the cause is their source.

/// Everything that can go wrong while looking up, encoding, decoding, compressing or
/// decompressing a message body.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No serializer is registered under this name or content type.
    #[error("no serializer named or typed {name:?} is registered")]
    UnknownSerializer {
        /// The name or content type that was looked up.
        name: String,
    },

    /// No compressor is registered under this alias or content type.
    #[error("no compression named or typed {name:?} is registered")]
    UnknownCompression {
        /// The alias or content type that was looked up.
        name: String,
    },

    /// The content type is not in the accept list (or is disabled when there is no accept list).
    ///
    /// The message follows kombu's `ContentDisallowed`: it names the refused type and the types
    /// that would have been accepted.
    #[error(
        "Refusing to deserialize untrusted content of type {content_type} (accepted: {})",
        format_allowed(.allowed)
    )]
    ContentDisallowed {
        /// The refused content type.
        content_type: String,
        /// The content types that would have been accepted.
        allowed: Vec<String>,
    },

    /// The serializer could not encode the value.
    #[error("serializer {serializer:?} failed to encode the value")]
    Encode {
        /// Name of the serializer.
        serializer: String,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The body could not be decoded as the given content type.
    #[error("failed to decode content of type {content_type:?}")]
    Decode {
        /// Content type that was being decoded.
        content_type: String,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A signed message failed verification: unknown or expired signer, bad signature or
    /// MAC, or a malformed signed envelope. The body was not deserialized.
    #[error("{serializer} refused the message: {reason}")]
    Signature {
        /// Name of the signing serializer (`auth`, `hmac`).
        serializer: String,
        /// Why the message was refused.
        reason: String,
    },

    /// Keys or certificates given to a signing serializer are unusable (unreadable PEM, a
    /// non-RSA key, a certificate that does not match the key, a secret that is too short).
    #[error("invalid {serializer} key material: {reason}")]
    InvalidKey {
        /// Name of the signing serializer (`auth`, `hmac`).
        serializer: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Compression failed.
    #[error("{compression} compression failed")]
    Compress {
        /// Name of the compressor.
        compression: String,
        /// What went wrong.
        source: std::io::Error,
    },

    /// Decompression failed (corrupt or truncated input).
    #[error("{compression} decompression failed")]
    Decompress {
        /// Name of the compressor.
        compression: String,
        /// What went wrong.
        source: std::io::Error,
    },

    /// The decompressed output would exceed the size limit.
    #[error("{compression} decompressed output exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Name of the compressor.
        compression: String,
        /// The limit in bytes.
        limit: usize,
    },
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn format_allowed(allowed: &[String]) -> String {
    if allowed.is_empty() {
        "none".to_owned()
    } else {
        allowed.join(", ")
    }
}

/// A plain message error used by the raw and text serializers (implements serde's error traits).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MessageError(pub(crate) String);

impl std::fmt::Display for MessageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MessageError {}

impl serde::ser::Error for MessageError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        MessageError(msg.to_string())
    }
}

impl serde::de::Error for MessageError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        MessageError(msg.to_string())
    }
}
