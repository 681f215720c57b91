//! The `hmac` serializer: bodies authenticated with HMAC-SHA256 under a shared secret.

use std::collections::BTreeMap;
use std::sync::Arc;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{InnerCodec, SEP, pack, unpack};
use crate::error::{Error, Result};
use crate::registry::Registry;
use crate::serializer::Serializer;

/// Content type of the [`HmacSerializer`]'s output.
pub const HMAC_CONTENT_TYPE: &str = "application/x-kombu-hmac-sha256";

/// Shortest secret accepted, in bytes (256 bits, the size of the SHA-256 output).
pub const HMAC_MIN_SECRET_LEN: usize = 32;

const NAME: &str = "hmac";

type HmacSha256 = Hmac<Sha256>;

/// The `hmac` serializer: a body signed with HMAC-SHA256 under a shared secret, for teams that
/// want signed messages without running an X.509 PKI (Celery's [`auth`](crate::auth) needs
/// one).
///
/// Name `hmac`, content type [`application/x-kombu-hmac-sha256`](HMAC_CONTENT_TYPE), content
/// encoding `utf-8`. This is kombu-rs's own format (neither kombu nor Celery has it); it reuses
/// the envelope of Celery's `auth` serializer so that it is easy to implement elsewhere:
///
/// ```text
/// fields  = base64(key_id) \x00\x01 base64(mac) \x00\x01 content_type \x00\x01 content_encoding \x00\x01 body
/// payload = base64(fields)
/// mac     = HMAC-SHA256(secret, base64(key_id) \x00\x01 content_type \x00\x01 content_encoding \x00\x01 body)
/// ```
///
/// `body` is the inner serializer's output (json by default), `content_type` and
/// `content_encoding` describe it; the MAC covers every field but itself, so neither the key
/// id, nor the inner content type, nor the body can be changed. Base64 is the standard alphabet
/// with padding. In Python:
///
/// ```text
/// import base64, hmac, hashlib
/// def verify(payload: bytes, keys: dict[str, bytes]) -> tuple[str, str, bytes]:
///     f = base64.b64decode(payload).split(b"\x00\x01", 4)
///     key = keys[base64.b64decode(f[0]).decode()]
///     mac = hmac.new(key, b"\x00\x01".join([f[0], f[2], f[3], f[4]]), hashlib.sha256).digest()
///     if not hmac.compare_digest(mac, base64.b64decode(f[1])):
///         raise ValueError("bad signature")
///     return f[2].decode(), f[3].decode(), f[4]   # content type, encoding, body
/// ```
///
/// Verification looks the key id up among the keys the serializer knows (the signing key plus
/// any [`with_verification_key`](Self::with_verification_key), so keys can be rotated),
/// compares the MAC in constant time, and only then deserializes the body with the serializer
/// its content type names (without an accept check: the signature is the check). Unknown key
/// ids, bad MACs and malformed envelopes are [`Error::Signature`].
///
/// Secrets must be at least [`HMAC_MIN_SECRET_LEN`] (32) random bytes. The secret is kept only
/// as HMAC's keyed state and never printed by `Debug`.
///
/// A consumer that requires signatures accepts only `hmac`: `registry.accept(["hmac"])` is
/// [strict](crate::Accept::strict), so it refuses unsigned messages of every type.
///
/// ```
/// use kombu_serializers::{HmacSerializer, Registry};
///
/// let mut registry = Registry::default();
/// registry.register_serializer(HmacSerializer::new("2026-11", [42u8; 32])?);
///
/// let signed = registry.encode(&vec!["add", "2", "2"], "hmac")?;
/// assert_eq!(signed.content_type, "application/x-kombu-hmac-sha256");
///
/// let accept = registry.accept(["hmac"])?;
/// let value: Vec<String> = registry.decode(
///     &signed.body, Some(&signed.content_type), Some(&signed.content_encoding), Some(&accept))?;
/// assert_eq!(value, ["add", "2", "2"]);
///
/// // An unsigned message is refused by the same consumer.
/// let plain = registry.encode(&vec!["add"], "json")?;
/// assert!(registry.decode::<Vec<String>>(&plain.body, Some("application/json"), None, Some(&accept)).is_err());
/// # Ok::<(), kombu_serializers::Error>(())
/// ```
#[derive(Clone)]
pub struct HmacSerializer {
    signing_key: String,
    keys: Arc<BTreeMap<String, HmacSha256>>,
    inner: InnerCodec,
}

impl std::fmt::Debug for HmacSerializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacSerializer")
            .field("signing_key", &self.signing_key)
            .field("key_ids", &self.keys.keys().collect::<Vec<_>>())
            .field("serializer", &self.inner.name())
            .finish_non_exhaustive()
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        serializer: NAME.to_owned(),
        reason: reason.into(),
    }
}

fn keyed(key_id: &str, secret: &[u8]) -> Result<HmacSha256> {
    if key_id.is_empty() {
        return Err(invalid("the key id is empty"));
    }
    if secret.len() < HMAC_MIN_SECRET_LEN {
        return Err(invalid(format!(
            "the secret for key {key_id:?} is {} bytes; at least {HMAC_MIN_SECRET_LEN} random bytes are required",
            secret.len()
        )));
    }
    HmacSha256::new_from_slice(secret).map_err(|e| invalid(e.to_string()))
}

impl HmacSerializer {
    /// Signs with `secret` under `key_id` (written in every message so the verifier can pick
    /// the key) and verifies messages signed with it. The inner serializer is `json` from
    /// [`Registry::default`].
    pub fn new(key_id: impl Into<String>, secret: impl AsRef<[u8]>) -> Result<Self> {
        let key_id = key_id.into();
        let mac = keyed(&key_id, secret.as_ref())?;
        let mut keys = BTreeMap::new();
        keys.insert(key_id.clone(), mac);
        Ok(HmacSerializer {
            signing_key: key_id,
            keys: Arc::new(keys),
            inner: InnerCodec::default(),
        })
    }

    /// Also accepts messages signed with `secret` under `key_id` (an older or a peer's key).
    pub fn with_verification_key(
        mut self,
        key_id: impl Into<String>,
        secret: impl AsRef<[u8]>,
    ) -> Result<Self> {
        let key_id = key_id.into();
        let mac = keyed(&key_id, secret.as_ref())?;
        Arc::make_mut(&mut self.keys).insert(key_id, mac);
        Ok(self)
    }

    /// The inner serializer that makes the signed body (default `json`), looked up in the
    /// inner registry.
    pub fn with_serializer(mut self, name: &str) -> Result<Self> {
        self.inner.set_serializer(name)?;
        Ok(self)
    }

    /// The registry for inner serialization and for decoding verified bodies (default
    /// [`Registry::default`]).
    pub fn with_registry(mut self, registry: Registry) -> Self {
        self.inner.set_registry(registry);
        self
    }

    fn mac(&self, key: &HmacSha256, signer_b64: &[u8], rest: &[&[u8]]) -> HmacSha256 {
        let mut mac = key.clone();
        mac.update(signer_b64);
        for part in rest {
            mac.update(SEP);
            mac.update(part);
        }
        mac
    }
}

impl Serializer for HmacSerializer {
    fn name(&self) -> &str {
        NAME
    }

    fn content_type(&self) -> &str {
        HMAC_CONTENT_TYPE
    }

    fn content_encoding(&self) -> &str {
        "utf-8"
    }

    fn is_signing(&self) -> bool {
        true
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let inner = self.inner.encode(value)?;
        let key = self
            .keys
            .get(&self.signing_key)
            .ok_or_else(|| invalid("the signing key is missing"))?;
        let signer_b64 = base64::engine::general_purpose::STANDARD.encode(&self.signing_key);
        let tag = self
            .mac(
                key,
                signer_b64.as_bytes(),
                &[
                    inner.content_type.as_bytes(),
                    inner.content_encoding.as_bytes(),
                    &inner.body,
                ],
            )
            .finalize()
            .into_bytes();
        Ok(pack(
            self.signing_key.as_bytes(),
            &tag,
            &inner.content_type,
            &inner.content_encoding,
            &inner.body,
        ))
    }

    fn decode(
        &self,
        data: &[u8],
        visit: &mut dyn FnMut(
            &mut dyn erased_serde::Deserializer<'_>,
        ) -> Result<(), erased_serde::Error>,
    ) -> Result<()> {
        let refuse = |reason: String| Error::Signature {
            serializer: NAME.to_owned(),
            reason,
        };
        let un = unpack(NAME, data)?;
        let key_id = String::from_utf8_lossy(&un.signer);
        let key = self
            .keys
            .get(key_id.as_ref())
            .ok_or_else(|| refuse(format!("unknown key id {key_id:?}")))?;
        self.mac(
            key,
            &un.raw[..un.signer_end],
            &[&un.raw[un.content_type_start..]],
        )
        .verify_slice(&un.signature)
        .map_err(|_| refuse(format!("bad signature (key id {key_id:?})")))?;
        self.inner.decode(&un, visit)
    }
}
