//! Celery's `auth` serializer: message bodies signed with RSA-PSS, verified against a store of
//! X.509 certificates (`celery/security/serialization.py`, `celery/security/certificate.py`).
//!
//! Feature `auth` (links the system OpenSSL, as Celery does through `cryptography`).
//!
//! ```
//! use kombu_serializers::Registry;
//! use kombu_serializers::auth::{AuthSerializer, CertStore, Certificate, PrivateKey};
//! # let (key_pem, cert_pem) = kombu_serializers::auth::self_signed_for_tests("worker", 1)?;
//!
//! let key = PrivateKey::from_pem(&key_pem, None)?;
//! let cert = Certificate::from_pem(&cert_pem)?;
//! let mut store = CertStore::new();
//! store.add(cert.clone())?;          // usually CertStore::from_path("/etc/ssl/celery-certs")
//!
//! let mut registry = Registry::default();
//! registry.register_serializer(AuthSerializer::new(store).with_signer(key, cert)?);
//!
//! // Producer: task_serializer = "auth".
//! let signed = registry.encode(&serde_json::json!({"args": [2, 2]}), "auth")?;
//! assert_eq!(signed.content_type, "application/data");
//!
//! // Consumer: accept_content = ["auth"] (strict: unsigned messages are refused).
//! let accept = registry.accept(["auth"])?;
//! let value: serde_json::Value = registry.decode(
//!     &signed.body, Some(&signed.content_type), Some(&signed.content_encoding), Some(&accept))?;
//! assert_eq!(value["args"][1], 2);
//! # Ok::<(), kombu_serializers::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};
use openssl::rsa::Padding;
use openssl::sign::{RsaPssSaltlen, Signer, Verifier};
use openssl::x509::X509;

use super::{InnerCodec, pack, unpack};
use crate::error::{Error, Result};
use crate::raw::RAW_CONTENT_TYPE;
use crate::registry::Registry;
use crate::serializer::Serializer;

const NAME: &str = "auth";

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidKey {
        serializer: NAME.to_owned(),
        reason: reason.into(),
    }
}

fn refuse(reason: impl Into<String>) -> Error {
    Error::Signature {
        serializer: NAME.to_owned(),
        reason: reason.into(),
    }
}

/// The hash used for signatures (Celery's `security_digest`; both sides must agree).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Digest {
    /// SHA-256, Celery's default.
    #[default]
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Digest {
    /// Parses a Celery `security_digest` name: `sha256`, `sha384` or `sha512`.
    pub fn from_name(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().replace('-', "").as_str() {
            "sha256" => Ok(Digest::Sha256),
            "sha384" => Ok(Digest::Sha384),
            "sha512" => Ok(Digest::Sha512),
            _ => Err(invalid(format!(
                "unsupported digest {name:?} (use sha256, sha384 or sha512)"
            ))),
        }
    }

    fn md(self) -> MessageDigest {
        match self {
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha384 => MessageDigest::sha384(),
            Digest::Sha512 => MessageDigest::sha512(),
        }
    }
}

/// An X.509 certificate with its Celery signer id.
#[derive(Clone)]
pub struct Certificate {
    x509: X509,
    id: String,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("id", &self.id)
            .field("not_after", &self.x509.not_after().to_string())
            .finish()
    }
}

impl Certificate {
    /// Reads one PEM certificate. Only certificates with an RSA public key are accepted, as in
    /// Celery.
    pub fn from_pem(pem: &[u8]) -> Result<Self> {
        let x509 = X509::from_pem(pem)
            .map_err(|e| invalid(format!("not a PEM X.509 certificate: {e}")))?;
        let key = x509
            .public_key()
            .map_err(|e| invalid(format!("unreadable certificate public key: {e}")))?;
        if key.id() != Id::RSA {
            return Err(invalid("the certificate's public key is not RSA"));
        }
        let id = signer_id(&x509)?;
        Ok(Certificate { x509, id })
    }

    /// The signer id written into signed messages: the issuer's attribute values joined by
    /// spaces, a space, and the serial number in decimal (Celery's `Certificate.get_id`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the certificate's validity period has ended.
    pub fn has_expired(&self) -> bool {
        Asn1Time::days_from_now(0).is_ok_and(|now| self.x509.not_after() < now)
    }

    /// Whether the certificate's validity period has not begun yet.
    pub fn is_not_yet_valid(&self) -> bool {
        Asn1Time::days_from_now(0).is_ok_and(|now| self.x509.not_before() > now)
    }

    fn check_current(&self) -> Result<()> {
        if self.has_expired() {
            return Err(refuse(format!(
                "certificate {:?} expired on {}",
                self.id,
                self.x509.not_after()
            )));
        }
        if self.is_not_yet_valid() {
            return Err(refuse(format!(
                "certificate {:?} is not valid before {}",
                self.id,
                self.x509.not_before()
            )));
        }
        Ok(())
    }
}

fn signer_id(x509: &X509) -> Result<String> {
    let mut id = String::new();
    for entry in x509.issuer_name().entries() {
        let value = entry
            .data()
            .to_string()
            .map_err(|e| invalid(format!("unreadable issuer attribute: {e}")))?;
        id.push_str(&value);
        id.push(' ');
    }
    let serial = x509
        .serial_number()
        .to_bn()
        .and_then(|bn| bn.to_dec_str())
        .map_err(|e| invalid(format!("unreadable serial number: {e}")))?;
    id.push_str(&serial);
    Ok(id)
}

/// An RSA private key for signing.
#[derive(Clone)]
pub struct PrivateKey(PKey<Private>);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PrivateKey(RSA {} bits)", self.0.bits())
    }
}

impl PrivateKey {
    /// Reads a PEM private key (PKCS#8 or traditional RSA), decrypting it with `passphrase`
    /// when given (Celery's `security_key_password`). Only RSA keys are accepted.
    pub fn from_pem(pem: &[u8], passphrase: Option<&[u8]>) -> Result<Self> {
        let key = match passphrase {
            Some(pass) => PKey::private_key_from_pem_passphrase(pem, pass),
            None => PKey::private_key_from_pem(pem),
        }
        .map_err(|e| invalid(format!("not a readable PEM private key: {e}")))?;
        if key.id() != Id::RSA {
            return Err(invalid("the private key is not RSA"));
        }
        Ok(PrivateKey(key))
    }
}

/// Certificates that may sign messages, by signer id (Celery's `CertStore`).
#[derive(Debug, Clone, Default)]
pub struct CertStore {
    certs: BTreeMap<String, Certificate>,
}

impl CertStore {
    /// An empty store.
    pub fn new() -> Self {
        CertStore::default()
    }

    /// Adds a certificate; a second certificate with the same signer id is an error.
    pub fn add(&mut self, cert: Certificate) -> Result<()> {
        if self.certs.contains_key(cert.id()) {
            return Err(invalid(format!("duplicate certificate {:?}", cert.id())));
        }
        self.certs.insert(cert.id().to_owned(), cert);
        Ok(())
    }

    /// Loads every file in a directory (Celery's `security_cert_store` given a directory; an
    /// unreadable or non-certificate file is an error), or one certificate file.
    /// Expired certificates are loaded but refused when a message names them.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| invalid(format!("cannot read {}: {e}", p.display())))
        };
        let mut store = CertStore::new();
        if path.is_dir() {
            let mut files = Vec::new();
            for entry in std::fs::read_dir(path)
                .map_err(|e| invalid(format!("cannot list {}: {e}", path.display())))?
            {
                let entry =
                    entry.map_err(|e| invalid(format!("cannot list {}: {e}", path.display())))?;
                if entry.path().is_file() {
                    files.push(entry.path());
                }
            }
            files.sort();
            for file in files {
                let cert = Certificate::from_pem(&read(&file)?)
                    .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                store.add(cert)?;
            }
        } else {
            store.add(Certificate::from_pem(&read(path)?)?)?;
        }
        Ok(store)
    }

    /// The certificate with this signer id.
    pub fn get(&self, id: &str) -> Option<&Certificate> {
        self.certs.get(id)
    }

    /// Number of certificates.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

#[derive(Clone)]
struct SigningIdentity {
    key: PrivateKey,
    cert: Certificate,
}

/// Celery's `auth` serializer: name `auth`, content type **`application/data`**, content
/// encoding `utf-8` (as Celery registers it; registering it makes it the decoder for
/// `application/data`, so raw bodies are then verified too and unsigned ones refused).
///
/// Signing: the value is serialized with the inner serializer (json by default), the
/// serialized bytes are signed with RSA-PSS (MGF1 with the same hash, maximum salt length,
/// SHA-256 by default), and the body is
/// `base64(base64(signer) \x00\x01 base64(signature) \x00\x01 content_type \x00\x01 content_encoding \x00\x01 body)`
/// with the signer id of the signing [`Certificate`].
///
/// Verifying: the signer is looked up in the [`CertStore`]; unknown, expired or not yet valid
/// certificates and bad signatures are [`Error::Signature`]; then the inner body is decoded
/// with the serializer its content type names, without an accept check (Celery's
/// `force=True`: the signature is the check). As in Celery, the signature covers the inner
/// body only: message headers and the inner content type and encoding are not signed, so a
/// body that is valid in two formats (`[1, 2]` is both JSON and YAML) can be relabelled. The
/// [`HmacSerializer`](crate::HmacSerializer) signs them too.
///
/// Wire-compatible with Celery in both directions (the interop tests run Celery's
/// `SecureSerializer` against this one).
#[derive(Clone)]
pub struct AuthSerializer {
    signer: Option<Arc<SigningIdentity>>,
    store: Arc<CertStore>,
    digest: Digest,
    inner: InnerCodec,
}

impl std::fmt::Debug for AuthSerializer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSerializer")
            .field("signer", &self.signer.as_ref().map(|s| s.cert.id()))
            .field("certificates", &self.store.len())
            .field("digest", &self.digest)
            .field("serializer", &self.inner.name())
            .finish_non_exhaustive()
    }
}

impl AuthSerializer {
    /// Verifies messages against `store`. Without [`with_signer`](Self::with_signer) it
    /// cannot encode.
    pub fn new(store: CertStore) -> Self {
        AuthSerializer {
            signer: None,
            store: Arc::new(store),
            digest: Digest::default(),
            inner: InnerCodec::default(),
        }
    }

    /// Signs with `key`, naming `cert` as the signer (Celery's `security_key` and
    /// `security_certificate`). The certificate must hold the key's public half.
    pub fn with_signer(mut self, key: PrivateKey, cert: Certificate) -> Result<Self> {
        let public = cert
            .x509
            .public_key()
            .map_err(|e| invalid(format!("unreadable certificate public key: {e}")))?;
        if !public.public_eq(&key.0) {
            return Err(invalid(format!(
                "certificate {:?} does not belong to the private key",
                cert.id()
            )));
        }
        self.signer = Some(Arc::new(SigningIdentity { key, cert }));
        Ok(self)
    }

    /// The hash for signing and verifying (Celery's `security_digest`, default SHA-256).
    pub fn with_digest(mut self, digest: Digest) -> Self {
        self.digest = digest;
        self
    }

    /// The inner serializer that makes the signed body (Celery's `serializer` argument of
    /// `setup_security`, default `json`), looked up in the inner registry.
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

    fn sign(&self, key: &PrivateKey, body: &[u8]) -> Result<Vec<u8>> {
        let fail = |e: openssl::error::ErrorStack| Error::Encode {
            serializer: NAME.to_owned(),
            source: Box::new(e),
        };
        let md = self.digest.md();
        let mut signer = Signer::new(md, &key.0).map_err(fail)?;
        signer.set_rsa_padding(Padding::PKCS1_PSS).map_err(fail)?;
        signer.set_rsa_mgf1_md(md).map_err(fail)?;
        signer
            .set_rsa_pss_saltlen(RsaPssSaltlen::MAXIMUM_LENGTH)
            .map_err(fail)?;
        signer.update(body).map_err(fail)?;
        signer.sign_to_vec().map_err(fail)
    }

    fn verify(&self, cert: &Certificate, body: &[u8], signature: &[u8]) -> Result<()> {
        let fail = |e: openssl::error::ErrorStack| refuse(format!("bad signature: {e}"));
        let public = cert.x509.public_key().map_err(fail)?;
        let md = self.digest.md();
        let mut verifier = Verifier::new(md, &public).map_err(fail)?;
        verifier.set_rsa_padding(Padding::PKCS1_PSS).map_err(fail)?;
        verifier.set_rsa_mgf1_md(md).map_err(fail)?;
        // Celery signs with the maximum salt length; OpenSSL's "maximum" means "recover the
        // salt length from the signature" when verifying.
        verifier
            .set_rsa_pss_saltlen(RsaPssSaltlen::MAXIMUM_LENGTH)
            .map_err(fail)?;
        verifier.update(body).map_err(fail)?;
        // A mismatch is Ok(false); a malformed signature may be Err: both are refusals.
        match verifier.verify(signature) {
            Ok(true) => Ok(()),
            Ok(false) => Err(refuse(format!("bad signature (signer {:?})", cert.id()))),
            Err(e) => Err(fail(e)),
        }
    }
}

impl Serializer for AuthSerializer {
    fn name(&self) -> &str {
        NAME
    }

    fn content_type(&self) -> &str {
        RAW_CONTENT_TYPE
    }

    fn content_encoding(&self) -> &str {
        "utf-8"
    }

    fn is_signing(&self) -> bool {
        true
    }

    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>> {
        let identity = self.signer.as_ref().ok_or_else(|| Error::Encode {
            serializer: NAME.to_owned(),
            source: "this auth serializer has no signing key (AuthSerializer::with_signer)".into(),
        })?;
        let inner = self.inner.encode(value)?;
        let signature = self.sign(&identity.key, &inner.body)?;
        Ok(pack(
            identity.cert.id().as_bytes(),
            &signature,
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
        let un = unpack(NAME, data)?;
        let signer = String::from_utf8_lossy(&un.signer);
        let cert = self
            .store
            .get(&signer)
            .ok_or_else(|| refuse(format!("unknown certificate {signer:?}")))?;
        cert.check_current()?;
        self.verify(cert, un.body(), &un.signature)?;
        self.inner.decode(&un, visit)
    }
}

/// Makes a 2048-bit RSA key and a self-signed certificate (issuer `CN=<common_name>`, O=kombu-rs,
/// the given serial, valid from now for `days` days; a negative `days` makes one that has
/// already expired), as PEM `(key, certificate)`. For tests and examples; use your PKI's
/// certificates in production.
#[doc(hidden)]
pub fn self_signed_for_tests(common_name: &str, serial: u32) -> Result<(Vec<u8>, Vec<u8>)> {
    self_signed_with_validity(common_name, serial, 365)
}

/// [`self_signed_for_tests`] with a validity in days (negative: expired `-days` days ago).
#[doc(hidden)]
pub fn self_signed_with_validity(
    common_name: &str,
    serial: u32,
    days: i32,
) -> Result<(Vec<u8>, Vec<u8>)> {
    use openssl::asn1::Asn1Integer;
    use openssl::bn::BigNum;
    use openssl::rsa::Rsa;
    use openssl::x509::{X509Builder, X509NameBuilder};

    let fail = |e: openssl::error::ErrorStack| invalid(e.to_string());
    let rsa = Rsa::generate(2048).map_err(fail)?;
    let key = PKey::from_rsa(rsa).map_err(fail)?;
    let mut name = X509NameBuilder::new().map_err(fail)?;
    name.append_entry_by_text("O", "kombu-rs").map_err(fail)?;
    name.append_entry_by_text("CN", common_name).map_err(fail)?;
    let name = name.build();
    let mut builder = X509Builder::new().map_err(fail)?;
    builder.set_version(2).map_err(fail)?;
    let serial = BigNum::from_u32(serial)
        .and_then(|bn| Asn1Integer::from_bn(&bn))
        .map_err(fail)?;
    builder.set_serial_number(&serial).map_err(fail)?;
    builder.set_subject_name(&name).map_err(fail)?;
    builder.set_issuer_name(&name).map_err(fail)?;
    builder.set_pubkey(&key).map_err(fail)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| invalid(e.to_string()))?
        .as_secs();
    let now = i64::try_from(now).map_err(|e| invalid(e.to_string()))?;
    let day = 86_400;
    // Negative validity: valid for one day, ending `-days` days ago.
    let (from, to) = if days >= 0 {
        (now - 60, now + i64::from(days) * day)
    } else {
        (now + i64::from(days - 1) * day, now + i64::from(days) * day)
    };
    let not_before = Asn1Time::from_unix(from).map_err(fail)?;
    let not_after = Asn1Time::from_unix(to).map_err(fail)?;
    builder.set_not_before(&not_before).map_err(fail)?;
    builder.set_not_after(&not_after).map_err(fail)?;
    builder.sign(&key, MessageDigest::sha256()).map_err(fail)?;
    let cert = builder.build();
    Ok((
        key.private_key_to_pem_pkcs8().map_err(fail)?,
        cert.to_pem().map_err(fail)?,
    ))
}
