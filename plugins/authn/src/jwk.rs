//! Verification keys: JWKs (RFC 7517) and the HS256 secret, each bound to exactly one
//! algorithm.
//!
//! Binding a key to one algorithm is what defeats algorithm confusion: an RSA key can only
//! ever verify RS256, so an HS256 token "signed" with the RSA public key as an HMAC secret
//! finds no key to be checked against.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use p256::ecdsa::signature::Verifier as _;
use portcullis_sdk::serde_json::Value;
use sha2::{Digest, Sha256};

/// The JWS algorithms this policy verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// HMAC with SHA-256, a shared secret (`kty: oct`).
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`kty: RSA`).
    Rs256,
    /// ECDSA on P-256 with SHA-256 (`kty: EC`, `crv: P-256`).
    Es256,
    /// Ed25519 (`kty: OKP`, `crv: Ed25519`), named `EdDSA` (or `Ed25519`, RFC 9864).
    EdDsa,
}

/// What the error messages list as supported.
pub const SUPPORTED: &str = "HS256, RS256, ES256, EdDSA";

/// The smallest RSA modulus accepted (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;

impl Alg {
    /// Every supported algorithm.
    pub const ALL: [Alg; 4] = [Alg::Hs256, Alg::Rs256, Alg::Es256, Alg::EdDsa];

    /// The algorithm a JWS `alg` names (exact, case-sensitive as RFC 7515 says), if supported.
    pub fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" | "Ed25519" => Some(Alg::EdDsa),
            _ => None,
        }
    }

    /// The JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }
}

/// A public key (or the shared secret) that checks signatures of one algorithm.
pub enum Verifier {
    /// An HMAC-SHA-256 secret.
    Hmac(Vec<u8>),
    /// An RSA public key.
    Rsa(Box<rsa::PublicKey>),
    /// A P-256 public key.
    Es256(p256::ecdsa::VerifyingKey),
    /// An Ed25519 public key.
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl fmt::Debug for Verifier {
    /// Never prints key material (the HMAC secret is a secret).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} key", self.alg().name())
    }
}

impl Verifier {
    /// The one algorithm this key verifies.
    pub fn alg(&self) -> Alg {
        match self {
            Verifier::Hmac(_) => Alg::Hs256,
            Verifier::Rsa(_) => Alg::Rs256,
            Verifier::Es256(_) => Alg::Es256,
            Verifier::Ed25519(_) => Alg::EdDsa,
        }
    }

    /// True if `signature` is this key's signature of `input` (the JWS signing input).
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        match self {
            Verifier::Hmac(secret) => Hmac::<Sha256>::new_from_slice(secret)
                .map(|mac| mac.chain_update(input))
                .is_ok_and(|mac| mac.verify_slice(signature).is_ok()),
            Verifier::Rsa(key) => key
                .verify(
                    rsa::Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(input),
                    signature,
                )
                .is_ok(),
            Verifier::Es256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(input, &sig).is_ok()),
            Verifier::Ed25519(key) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify_strict(input, &sig).is_ok()),
        }
    }
}

/// A verification key with its key id.
#[derive(Debug)]
pub struct Key {
    /// The JWK's `kid`, which a token's header names to pick it.
    pub kid: Option<String>,
    /// The key.
    pub verifier: Verifier,
    /// The same key as `jsonwebtoken` holds it (HS256, RS256, ES256), made once.
    #[cfg(feature = "jsonwebtoken")]
    jws: Option<jsonwebtoken::DecodingKey>,
}

impl Key {
    /// A key, checked already, with its `kid`.
    pub fn new(kid: Option<String>, verifier: Verifier) -> Key {
        Key {
            #[cfg(feature = "jsonwebtoken")]
            jws: crate::via_jsonwebtoken::decoding_key(&verifier),
            kid,
            verifier,
        }
    }

    /// True if `signature` is this key's signature of `input` (the JWS signing input).
    pub fn verify(&self, input: &[u8], signature: &[u8]) -> bool {
        #[cfg(feature = "jsonwebtoken")]
        if let Some(key) = &self.jws {
            return crate::via_jsonwebtoken::verify(self.verifier.alg(), key, input, signature);
        }
        self.verifier.verify(input, signature)
    }
}

/// The smallest HMAC secret accepted: as long as the hash output (RFC 7518 §3.2).
pub const MIN_HMAC_BYTES: usize = 32;

/// What reading a JWKS found besides usable keys.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The keys that verify signatures with a supported algorithm.
    pub keys: Vec<Key>,
    /// Keys left out and why (`keys[2] (kid "x"): unsupported alg "RS512"`).
    pub skipped: Vec<String>,
}

/// How strict [`parse_jwks`] is about keys it cannot use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The operator wrote the set: any key that is malformed or unsupported is an error
    /// (keys marked for encryption, `use: enc`, are skipped).
    Strict,
    /// The set is a copy of an identity provider's: keys that cannot be used are skipped and
    /// reported in [`Parsed::skipped`]. A set that is not a JWKS at all is still an error.
    Lenient,
}

/// Reads a JWK Set (`{ "keys": [ … ] }`).
pub fn parse_jwks(set: &Value, mode: Mode) -> Result<Parsed, String> {
    let keys = set
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWK Set: expected an object with a `keys` array")?;
    let mut parsed = Parsed::default();
    for (i, jwk) in keys.iter().enumerate() {
        let kid = jwk.get("kid").and_then(Value::as_str);
        let at = match kid {
            Some(kid) => format!("keys[{i}] (kid {kid:?})"),
            None => format!("keys[{i}]"),
        };
        match parse_jwk(jwk) {
            Ok(Some(verifier)) => parsed
                .keys
                .push(Key::new(kid.map(str::to_string), verifier)),
            Ok(None) => parsed.skipped.push(format!("{at}: not for signatures")),
            Err(e) if mode == Mode::Lenient => parsed.skipped.push(format!("{at}: {e}")),
            Err(e) => return Err(format!("{at}: {e}")),
        }
    }
    Ok(parsed)
}

/// One JWK as a verification key; `None` for a key meant for something else (`use: enc`,
/// `key_ops` without `verify`).
fn parse_jwk(jwk: &Value) -> Result<Option<Verifier>, String> {
    if !jwk.is_object() {
        return Err("not a JSON object".into());
    }
    let field = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{name}` must be a string")),
        }
    };
    if field("kid").is_err() {
        return Err("`kid` must be a string".into());
    }
    if field("use")?.is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    if let Some(ops) = jwk.get("key_ops") {
        let ops = ops.as_array().ok_or("`key_ops` must be an array")?;
        if !ops.iter().any(|op| op.as_str() == Some("verify")) {
            return Ok(None);
        }
    }
    let kty = field("kty")?.ok_or("missing `kty`")?;
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        let text = field(name)?.ok_or_else(|| format!("missing `{name}`"))?;
        URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| format!("`{name}` is not unpadded base64url"))
    };
    let fixed = |name: &str| -> Result<[u8; 32], String> {
        <[u8; 32]>::try_from(bytes(name)?).map_err(|_| format!("`{name}` must be 32 bytes"))
    };
    let (verifier, expected) = match kty {
        "oct" => {
            let secret = bytes("k")?;
            if secret.len() < MIN_HMAC_BYTES {
                return Err(format!(
                    "an HS256 secret must be at least {MIN_HMAC_BYTES} bytes"
                ));
            }
            (Verifier::Hmac(secret), Alg::Hs256)
        }
        "RSA" => (
            Verifier::Rsa(Box::new(rsa_key(&bytes("n")?, &bytes("e")?)?)),
            Alg::Rs256,
        ),
        "EC" => match field("crv")? {
            Some("P-256") => {
                let mut point = vec![0x04];
                point.extend_from_slice(&fixed("x")?);
                point.extend_from_slice(&fixed("y")?);
                let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                    .map_err(|_| "not a point on P-256".to_string())?;
                (Verifier::Es256(key), Alg::Es256)
            }
            Some(crv) => return Err(format!("unsupported EC curve {crv:?} (supported: P-256)")),
            None => return Err("missing `crv`".into()),
        },
        "OKP" => match field("crv")? {
            Some("Ed25519") => {
                let key = ed25519_dalek::VerifyingKey::from_bytes(&fixed("x")?)
                    .map_err(|_| "not an Ed25519 public key".to_string())?;
                (Verifier::Ed25519(key), Alg::EdDsa)
            }
            Some(crv) => {
                return Err(format!(
                    "unsupported OKP curve {crv:?} (supported: Ed25519)"
                ));
            }
            None => return Err("missing `crv`".into()),
        },
        other => {
            return Err(format!(
                "unsupported kty {other:?} (supported: oct, RSA, EC, OKP)"
            ));
        }
    };
    if let Some(alg) = field("alg")?
        && Alg::parse(alg) != Some(expected)
    {
        return Err(format!(
            "unsupported alg {alg:?} for a {kty} key (this policy verifies {} with it)",
            expected.name()
        ));
    }
    Ok(Some(verifier))
}

/// An RSA public key from its modulus and exponent (big-endian), at least 2048 bits.
fn rsa_key(n: &[u8], e: &[u8]) -> Result<rsa::PublicKey, String> {
    let trim = |b: &[u8]| -> Vec<u8> { b.iter().copied().skip_while(|&x| x == 0).collect() };
    let (n, e) = (trim(n), trim(e));
    if n.is_empty() || e.is_empty() {
        return Err("`n` and `e` must not be zero".into());
    }
    rsa::PublicKey::new_with_size_limits(
        rsa::BoxedUint::from_be_slice_vartime(&n),
        rsa::BoxedUint::from_be_slice_vartime(&e),
        MIN_RSA_BITS..=rsa::PublicKey::MAX_SIZE,
    )
    .map_err(|err| match err {
        rsa::Error::ModulusTooSmall => {
            format!("the RSA key is smaller than {MIN_RSA_BITS} bits")
        }
        other => format!("not a valid RSA public key ({other})"),
    })
}
