//! Request signing with Ed25519, in the manner of HTTP Message Signatures (RFC 9421).
//!
//! The engine signs the method, the path, a SHA-256 digest of the body (RFC 9530
//! `content-digest`) and the request headers that say which call and which attempt this is
//! ([`SIGNED_FIELDS`]: call id, attempt, idempotency key), with a creation time. Three
//! headers carry it:
//!
//! ```text
//! content-digest: sha-256=:<base64 of SHA-256(body)>:
//! signature-input: engine=("@method" "@path" "content-digest" "engine-call-id" "engine-attempt" "idempotency-key");created=<unix seconds>;keyid="<id>";alg="ed25519"
//! signature: engine=:<base64 of the Ed25519 signature>:
//! ```
//!
//! The signature covers the RFC 9421 signature base:
//!
//! ```text
//! "@method": POST
//! "@path": /forward
//! "content-digest": sha-256=:...:
//! "engine-call-id": 0190...
//! "engine-attempt": 1
//! "idempotency-key": 0190...
//! "@signature-params": ("@method" ... "idempotency-key");created=...;keyid="...";alg="ed25519"
//! ```
//!
//! Protocol 2 signed only the first three; a verifier of this version refuses such a
//! signature with [`SignatureError::Outdated`], since its call id and attempt could have been
//! changed in flight. Keys are 32 bytes, written in standard base64: the private key is the
//! Ed25519 seed.
//!
//! ```
//! use sdk::signing::{KeyPair, Signer, Verifier};
//! let keys = KeyPair::generate();
//! let signer = Signer::from_base64("engine", &keys.private_base64()).unwrap();
//! let verifier = Verifier::from_base64(&keys.public_base64()).unwrap();
//! let mut headers = vec![
//!     ("engine-call-id", "0190a0e4-0000-7000-8000-000000000001".to_string()),
//!     ("engine-attempt", "1".to_string()),
//!     ("idempotency-key", "0190a0e4-0000-7000-8000-000000000001".to_string()),
//! ];
//! let signature = signer.sign("POST", "/forward", b"{}", &headers, 1_700_000_000).unwrap();
//! headers.extend(signature);
//! assert!(verifier.verify("POST", "/forward", b"{}", &headers, 1_700_000_010).is_ok());
//! assert!(verifier.verify("POST", "/forward", b"{ }", &headers, 1_700_000_010).is_err());
//! headers[1].1 = "2".to_string(); // a replayed request posing as another attempt
//! assert!(verifier.verify("POST", "/forward", b"{}", &headers, 1_700_000_010).is_err());
//! ```

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use sha2::{Digest, Sha256};

/// Header names of a signed request.
pub mod header {
    /// `sha-256=:<base64>:` of the body (RFC 9530).
    pub const CONTENT_DIGEST: &str = "content-digest";
    /// The covered components and parameters (RFC 9421).
    pub const SIGNATURE_INPUT: &str = "signature-input";
    /// The signature itself (RFC 9421).
    pub const SIGNATURE: &str = "signature";
}

/// How far a signature's creation time may be from the verifier's clock. Default 5 minutes.
pub const DEFAULT_MAX_SKEW: Duration = Duration::from_secs(300);

/// The request headers covered by a signature besides the method, path and digest.
pub const SIGNED_FIELDS: [&str; 3] = [
    crate::protocol::header::CALL_ID,
    crate::protocol::header::ATTEMPT,
    crate::protocol::header::IDEMPOTENCY_KEY,
];

const COMPONENTS: &str = r#"("@method" "@path" "content-digest" "engine-call-id" "engine-attempt" "idempotency-key")"#;
/// What protocol 2 signed.
const COMPONENTS_V2: &str = r#"("@method" "@path" "content-digest")"#;

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// A signing header is absent.
    Missing(&'static str),
    /// A header does not have the expected form.
    Malformed(&'static str),
    /// The body does not match `content-digest`.
    DigestMismatch,
    /// The signature was made too long ago (or too far in the future).
    Stale {
        /// When the signature was made (Unix seconds).
        created: u64,
        /// The verifier's clock (Unix seconds).
        now: u64,
    },
    /// The signature does not verify with the configured key.
    Invalid,
    /// The signature covers only the method, path and digest (an engine of protocol 2):
    /// the call id and attempt are not protected. Upgrade the engine.
    Outdated,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Missing(h) => write!(f, "missing `{h}` header: the request is not signed"),
            Self::Malformed(h) => write!(f, "malformed `{h}` header"),
            Self::DigestMismatch => f.write_str("the body does not match content-digest"),
            Self::Stale { created, now } => write!(f, "stale signature: created at {created}, now {now}"),
            Self::Invalid => f.write_str("invalid signature"),
            Self::Outdated => f.write_str(
                "the signature covers only method, path and digest (an engine of protocol 2): upgrade the engine so that the call id and attempt are signed too",
            ),
        }
    }
}

impl std::error::Error for SignatureError {}

/// A key-pair error: the text is not base64 of 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(String);

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn key_bytes(text: &str, what: &str) -> Result<[u8; 32], KeyError> {
    let bytes = BASE64
        .decode(text.trim())
        .map_err(|e| KeyError(format!("{what} is not base64: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| KeyError(format!("{what} must be 32 bytes, got {}", b.len())))
}

/// A new Ed25519 key pair (see `engine keygen`).
#[derive(Debug, Clone)]
pub struct KeyPair {
    signing: SigningKey,
}

impl KeyPair {
    /// Generate a key pair from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0_u8; 32];
        getrandom(&mut seed);
        Self {
            signing: SigningKey::from_bytes(&seed),
        }
    }

    /// The private key (the engine's `signing_key`), base64.
    pub fn private_base64(&self) -> String {
        BASE64.encode(self.signing.to_bytes())
    }

    /// The public key (the handler's verify key), base64.
    pub fn public_base64(&self) -> String {
        BASE64.encode(self.signing.verifying_key().to_bytes())
    }
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("reading /dev/urandom");
}

/// Signs requests (the engine side).
#[derive(Debug, Clone)]
pub struct Signer {
    key: SigningKey,
    key_id: String,
}

impl Signer {
    /// A signer from a base64 private key; `key_id` is sent as `keyid`.
    pub fn from_base64(key_id: &str, private_key: &str) -> Result<Self, KeyError> {
        Ok(Self {
            key: SigningKey::from_bytes(&key_bytes(private_key, "the signing key")?),
            key_id: key_id.to_string(),
        })
    }

    /// The three headers (name, value) that sign this request, created at `now` (Unix
    /// seconds). `headers` must hold every one of [`SIGNED_FIELDS`]; the first missing one
    /// is the error.
    pub fn sign<H: SignatureHeaders + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &H,
        now: u64,
    ) -> Result<Vec<(&'static str, String)>, SignatureError> {
        let digest = content_digest(body);
        let params = format!(r#"{COMPONENTS};created={now};keyid="{}";alg="ed25519""#, self.key_id);
        let base = signature_base(method, path, &digest, headers, &params)?;
        let signature = self.key.sign(base.as_bytes());
        Ok(vec![
            (header::CONTENT_DIGEST, digest),
            (header::SIGNATURE_INPUT, format!("engine={params}")),
            (
                header::SIGNATURE,
                format!("engine=:{}:", BASE64.encode(signature.to_bytes())),
            ),
        ])
    }
}

/// Verifies requests (the handler side).
#[derive(Debug, Clone)]
pub struct Verifier {
    key: VerifyingKey,
    max_skew: Duration,
}

impl Verifier {
    /// A verifier from a base64 public key.
    pub fn from_base64(public_key: &str) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(&key_bytes(public_key, "the verify key")?)
            .map_err(|e| KeyError(format!("the verify key is not an Ed25519 public key: {e}")))?;
        Ok(Self {
            key,
            max_skew: DEFAULT_MAX_SKEW,
        })
    }

    /// Accept signatures created at most this far from now.
    #[must_use]
    pub fn with_max_skew(mut self, skew: Duration) -> Self {
        self.max_skew = skew;
        self
    }

    /// Check a request. `headers` yields header values by lower-case name; `now` is Unix seconds.
    pub fn verify<H: SignatureHeaders + ?Sized>(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        headers: &H,
        now: u64,
    ) -> Result<(), SignatureError> {
        let digest = headers
            .value(header::CONTENT_DIGEST)
            .ok_or(SignatureError::Missing(header::CONTENT_DIGEST))?;
        let input = headers
            .value(header::SIGNATURE_INPUT)
            .ok_or(SignatureError::Missing(header::SIGNATURE_INPUT))?;
        let signature = headers
            .value(header::SIGNATURE)
            .ok_or(SignatureError::Missing(header::SIGNATURE))?;

        let params = input
            .strip_prefix("engine=")
            .ok_or(SignatureError::Malformed(header::SIGNATURE_INPUT))?;
        if params.starts_with(COMPONENTS_V2) {
            return Err(SignatureError::Outdated);
        }
        if !params.starts_with(COMPONENTS) {
            return Err(SignatureError::Malformed(header::SIGNATURE_INPUT));
        }
        let created: u64 = params
            .split(';')
            .find_map(|p| p.strip_prefix("created="))
            .and_then(|c| c.parse().ok())
            .ok_or(SignatureError::Malformed(header::SIGNATURE_INPUT))?;
        if created.abs_diff(now) > self.max_skew.as_secs() {
            return Err(SignatureError::Stale { created, now });
        }
        if content_digest(body) != digest {
            return Err(SignatureError::DigestMismatch);
        }
        let signature = signature
            .strip_prefix("engine=:")
            .and_then(|s| s.strip_suffix(':'))
            .and_then(|s| BASE64.decode(s).ok())
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or(SignatureError::Malformed(header::SIGNATURE))?;
        let base = signature_base(method, path, digest, headers, params)?;
        self.key
            .verify(base.as_bytes(), &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

/// Where [`Verifier::verify`] reads header values from.
pub trait SignatureHeaders {
    /// The value of the header `name` (lower case), if present and text.
    fn value(&self, name: &str) -> Option<&str>;
}

impl SignatureHeaders for [(&'static str, String)] {
    fn value(&self, name: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

impl SignatureHeaders for Vec<(&'static str, String)> {
    fn value(&self, name: &str) -> Option<&str> {
        self.as_slice().value(name)
    }
}

impl SignatureHeaders for axum::http::HeaderMap {
    fn value(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(|v| v.to_str().ok())
    }
}

fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", BASE64.encode(Sha256::digest(body)))
}

fn signature_base<H: SignatureHeaders + ?Sized>(
    method: &str,
    path: &str,
    digest: &str,
    headers: &H,
    params: &str,
) -> Result<String, SignatureError> {
    use std::fmt::Write as _;
    let mut base = format!(
        "\"@method\": {}\n\"@path\": {path}\n\"content-digest\": {digest}\n",
        method.to_ascii_uppercase()
    );
    for name in SIGNED_FIELDS {
        let value = headers.value(name).ok_or(SignatureError::Missing(name))?;
        // RFC 9421 §2.1: the field value with leading and trailing whitespace removed.
        let _ = writeln!(base, "\"{name}\": {}", value.trim());
    }
    let _ = write!(base, "\"@signature-params\": {params}");
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(attempt: &str) -> Vec<(&'static str, String)> {
        vec![
            ("engine-call-id", "0190a0e4-0000-7000-8000-000000000001".into()),
            ("engine-attempt", attempt.into()),
            ("idempotency-key", "0190a0e4-0000-7000-8000-000000000001".into()),
        ]
    }

    fn signed(signer: &Signer, path: &str, body: &[u8], now: u64) -> Vec<(&'static str, String)> {
        let mut headers = fields("1");
        headers.extend(signer.sign("POST", path, body, &headers, now).unwrap());
        headers
    }

    fn pair() -> (Signer, Verifier) {
        let keys = KeyPair::generate();
        (
            Signer::from_base64("test", &keys.private_base64()).unwrap(),
            Verifier::from_base64(&keys.public_base64()).unwrap(),
        )
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let (signer, verifier) = pair();
        let headers = signed(&signer, "/f", b"body", 1000);
        assert_eq!(verifier.verify("POST", "/f", b"body", &headers, 1000), Ok(()));
        for (i, changed) in [(0, "0190a0e4-0000-7000-8000-000000000002"), (1, "2"), (2, "other")] {
            let mut tampered = headers.clone();
            tampered[i].1 = changed.into();
            assert_eq!(
                verifier.verify("POST", "/f", b"body", &tampered, 1000),
                Err(SignatureError::Invalid),
                "{} changed",
                tampered[i].0
            );
        }
        let mut stripped = headers.clone();
        stripped.remove(1);
        assert_eq!(
            verifier.verify("POST", "/f", b"body", &stripped, 1000),
            Err(SignatureError::Missing("engine-attempt"))
        );
        assert_eq!(
            verifier.verify("POST", "/g", b"body", &headers, 1000),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verifier.verify("PUT", "/f", b"body", &headers, 1000),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verifier.verify("POST", "/f", b"bodx", &headers, 1000),
            Err(SignatureError::DigestMismatch)
        );
        let (_, other) = pair();
        assert_eq!(
            other.verify("POST", "/f", b"body", &headers, 1000),
            Err(SignatureError::Invalid)
        );
    }

    #[test]
    fn stale_and_missing_signatures_are_refused() {
        let (signer, verifier) = pair();
        let headers = signed(&signer, "/f", b"", 1000);
        assert!(matches!(
            verifier.verify("POST", "/f", b"", &headers, 1000 + 301),
            Err(SignatureError::Stale { .. })
        ));
        assert!(verifier.verify("POST", "/f", b"", &headers, 1000 - 299).is_ok());
        let none: Vec<(&'static str, String)> = Vec::new();
        assert_eq!(
            verifier.verify("POST", "/f", b"", &none, 1000),
            Err(SignatureError::Missing(header::CONTENT_DIGEST))
        );
    }

    #[test]
    fn a_protocol_2_signature_is_refused_as_outdated() {
        let (signer, verifier) = pair();
        let mut headers = signed(&signer, "/f", b"", 1000);
        let input = headers.iter_mut().find(|(n, _)| *n == header::SIGNATURE_INPUT).unwrap();
        input.1 = format!("engine={COMPONENTS_V2};created=1000;keyid=\"k\";alg=\"ed25519\"");
        let refused = verifier.verify("POST", "/f", b"", &headers, 1000).unwrap_err();
        assert_eq!(refused, SignatureError::Outdated);
        assert!(refused.to_string().contains("upgrade the engine"));
    }

    #[test]
    fn signing_needs_the_call_headers() {
        let (signer, _) = pair();
        let none: Vec<(&'static str, String)> = Vec::new();
        assert_eq!(
            signer.sign("POST", "/f", b"", &none, 1000),
            Err(SignatureError::Missing("engine-call-id"))
        );
    }

    #[test]
    fn bad_keys_are_explained() {
        assert!(Verifier::from_base64("not base64!")
            .unwrap_err()
            .to_string()
            .contains("base64"));
        assert!(Signer::from_base64("k", "AAAA")
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
    }
}
