//! Signed bodies: Celery's `auth` serializer ([`auth`](crate::auth), feature `auth`) and the
//! HMAC-SHA256 serializer ([`HmacSerializer`](crate::HmacSerializer), feature `hmac`).
//!
//! Both wrap an inner serializer (json by default) and share Celery's envelope: the base64 of
//! five fields joined by the two bytes `\x00\x01`:
//!
//! ```text
//! base64( base64(signer) \x00\x01 base64(signature) \x00\x01 content_type \x00\x01 content_encoding \x00\x01 body )
//! ```
//!
//! where `body` is the inner serializer's output, `content_type` / `content_encoding` describe
//! it, and the signature covers what the scheme says (Celery: `body` only). Splitting takes at
//! most four separators, so the body may contain `\x00\x01` itself.

#[cfg(feature = "auth")]
pub mod auth;
#[cfg(feature = "hmac")]
pub(crate) mod hmac;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::registry::{Encoded, Registry};

/// The field separator of the signed envelope.
pub(crate) const SEP: &[u8] = b"\x00\x01";

/// The five fields of a signed envelope, decoded.
#[derive(Debug)]
pub(crate) struct Unpacked {
    pub(crate) signer: Vec<u8>,
    pub(crate) signature: Vec<u8>,
    pub(crate) content_type: String,
    pub(crate) content_encoding: String,
    /// The inner body, as `raw[body_start..]`.
    pub(crate) raw: Vec<u8>,
    pub(crate) body_start: usize,
    /// Where the third field (the content type) starts in `raw`: the HMAC covers
    /// `raw[..signature field] + raw[content_type_start..]`.
    pub(crate) content_type_start: usize,
    /// End of the first field (the base64 signer) in `raw`.
    pub(crate) signer_end: usize,
}

impl Unpacked {
    pub(crate) fn body(&self) -> &[u8] {
        &self.raw[self.body_start..]
    }
}

/// The serializer inside a signed body, and the registry that decodes verified bodies.
#[derive(Debug, Clone)]
pub(crate) struct InnerCodec {
    registry: Registry,
    name: Cow<'static, str>,
}

impl Default for InnerCodec {
    /// `json` from [`Registry::default`].
    fn default() -> Self {
        InnerCodec {
            registry: Registry::default(),
            name: Cow::Borrowed("json"),
        }
    }
}

impl InnerCodec {
    /// Chooses the inner serializer by name or content type (it must be in the registry).
    pub(crate) fn set_serializer(&mut self, name: &str) -> Result<()> {
        let found = self.registry.serializer(name)?;
        self.name = Cow::Owned(found.name().to_owned());
        Ok(())
    }

    pub(crate) fn set_registry(&mut self, registry: Registry) {
        self.registry = registry;
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Encoded> {
        self.registry.encode(value, &self.name)
    }

    /// Decodes a verified body with the serializer its content type names, without an accept
    /// check (Celery's `force=True`: the signature is the check).
    pub(crate) fn decode(
        &self,
        verified: &Unpacked,
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        self.registry.decode_forced(
            verified.body(),
            &verified.content_type,
            Some(&verified.content_encoding),
            visit,
        )
    }
}

/// Joins the fields and base64-encodes the result (Celery's `_pack`).
pub(crate) fn pack(
    signer: &[u8],
    signature: &[u8],
    content_type: &str,
    content_encoding: &str,
    body: &[u8],
) -> Vec<u8> {
    let signer = STANDARD.encode(signer);
    let signature = STANDARD.encode(signature);
    let mut fields = Vec::with_capacity(
        signer.len()
            + signature.len()
            + content_type.len()
            + content_encoding.len()
            + body.len()
            + 4 * SEP.len(),
    );
    for (i, field) in [
        signer.as_bytes(),
        signature.as_bytes(),
        content_type.as_bytes(),
        content_encoding.as_bytes(),
        body,
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            fields.extend_from_slice(SEP);
        }
        fields.extend_from_slice(field);
    }
    STANDARD.encode(fields).into_bytes()
}

fn find_sep(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?
        .windows(SEP.len())
        .position(|w| w == SEP)
        .map(|p| p + from)
}

/// Decodes and splits a signed envelope (Celery's `_unpack`). ASCII whitespace in the base64
/// text is ignored (Python's `b64decode` skips it too).
pub(crate) fn unpack(serializer: &str, data: &[u8]) -> Result<Unpacked> {
    let malformed = |reason: String| Error::Signature {
        serializer: serializer.to_owned(),
        reason,
    };
    let text: Vec<u8> = if data.iter().any(u8::is_ascii_whitespace) {
        data.iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect()
    } else {
        data.to_vec()
    };
    let raw = STANDARD
        .decode(&text)
        .map_err(|e| malformed(format!("the body is not a signed envelope (base64: {e})")))?;
    let mut bounds = [0usize; 4];
    let mut from = 0;
    for bound in &mut bounds {
        let at = find_sep(&raw, from).ok_or_else(|| {
            malformed("the body is not a signed envelope (fewer than five fields)".to_owned())
        })?;
        *bound = at;
        from = at + SEP.len();
    }
    let [signer_end, signature_end, type_end, encoding_end] = bounds;
    let field = |start: usize, end: usize| &raw[start..end];
    let b64 = |name: &str, bytes: &[u8]| {
        STANDARD
            .decode(bytes)
            .map_err(|e| malformed(format!("the {name} field is not base64: {e}")))
    };
    let text = |name: &str, bytes: &[u8]| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| malformed(format!("the {name} field is not UTF-8")))
    };
    let signer = b64("signer", field(0, signer_end))?;
    let signature = b64("signature", field(signer_end + SEP.len(), signature_end))?;
    let content_type = text("content type", field(signature_end + SEP.len(), type_end))?;
    let content_encoding = text(
        "content encoding",
        field(type_end + SEP.len(), encoding_end),
    )?;
    Ok(Unpacked {
        signer,
        signature,
        content_type,
        content_encoding,
        body_start: encoding_end + SEP.len(),
        content_type_start: signature_end + SEP.len(),
        signer_end,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_unpack_round_trip_keeps_separators_in_the_body() {
        let packed = pack(
            b"CA 42",
            b"\x01\x02",
            "application/json",
            "utf-8",
            b"{\"a\": \"\x00\x01\"}",
        );
        let un = unpack("auth", &packed).expect("unpack");
        assert_eq!(un.signer, b"CA 42");
        assert_eq!(un.signature, b"\x01\x02");
        assert_eq!(un.content_type, "application/json");
        assert_eq!(un.content_encoding, "utf-8");
        assert_eq!(un.body(), b"{\"a\": \"\x00\x01\"}");
    }

    #[test]
    fn malformed_envelopes_are_signature_errors() {
        for bad in [
            &b"not base64!"[..],
            b"",
            STANDARD.encode(b"a\x00\x01b").as_bytes(),
            STANDARD
                .encode(b"!!\x00\x01AA==\x00\x01t\x00\x01e\x00\x01b")
                .as_bytes(),
        ] {
            let err = unpack("auth", bad).expect_err("malformed");
            assert!(matches!(err, Error::Signature { .. }), "{err}");
        }
    }
}
