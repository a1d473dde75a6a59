//! HS256, RS256 and ES256 signatures checked by the `jsonwebtoken` crate (cargo feature
//! `jsonwebtoken`, off by default), for comparing the crate with the plugin's own calls into
//! RustCrypto (docs/authn.md, *Why the JWS checks are the plugin's own*).
//!
//! Only the signature check moves. Everything around it stays the plugin's, because the crate
//! does not do it or does it less strictly: reading the header and the claims (a member named
//! twice is refused, see [`crate::json`]), `crit`, the one-key-per-`kid` selection, the JWK
//! checks at load (an RSA key of at least 2048 bits, a point on P-256, an HMAC secret of at
//! least 32 bytes), and the time, issuer and audience checks (whole-second NumericDates,
//! `max-lifetime`, `iat`). The crate's key is made once, from the key the plugin has checked.
//!
//! EdDSA stays on `ed25519-dalek`'s `verify_strict`: the crate's verifier uses `verify`,
//! which accepts a small-order key or `R` (with the identity as the key, `R` the identity and
//! `s = 0` is a valid signature of every message).

use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::{Algorithm, DecodingKey};
use rsa::traits::PublicKeyParts;

use crate::jwk::{Alg, Verifier};

/// The crate's key for a checked key, or `None` for EdDSA (see the module docs).
pub fn decoding_key(verifier: &Verifier) -> Option<DecodingKey> {
    match verifier {
        // `from_secret` refuses only an empty secret; the plugin requires 32 bytes at load.
        Verifier::Hmac(secret) => DecodingKey::from_secret(secret).ok(),
        Verifier::Rsa(key) => Some(DecodingKey::from_rsa_raw_components(
            &key.n_bytes(),
            &key.e_bytes(),
        )),
        // The uncompressed SEC1 point, what `DecodingKey::from_ec_components` builds from a JWK.
        Verifier::Es256(key) => Some(DecodingKey::from_ec_der(
            key.to_sec1_point(false).as_bytes(),
        )),
        Verifier::Ed25519(_) => None,
    }
}

/// True if `signature` (decoded) is `key`'s signature of `input` under `alg`.
pub fn verify(alg: Alg, key: &DecodingKey, input: &[u8], signature: &[u8]) -> bool {
    let alg = match alg {
        Alg::Hs256 => Algorithm::HS256,
        Alg::Rs256 => Algorithm::RS256,
        Alg::Es256 => Algorithm::ES256,
        Alg::EdDsa => return false,
    };
    // With `rust_crypto` the only provider, the default is always there.
    let Some(provider) = CryptoProvider::try_get_default() else {
        return false;
    };
    (provider.verifier_factory)(&alg, key)
        .is_ok_and(|verifier| verifier.verify(input, &signature.to_vec()).is_ok())
}
