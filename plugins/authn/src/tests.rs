//! The policy end to end (natively): tokens are signed here, with keys generated for the run.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use hmac::{Hmac, KeyInit, Mac};
use rsa::traits::PublicKeyParts;
use sha2::{Digest, Sha256};

use portcullis_sdk::{kv, serde_json};

use super::*;
use crate::jwt::Rejection;

const ISS: &str = "https://idp.example.com/realms/acme";
const AUD: &str = "https://mcp.example.com/mcp";
const META: &str = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp";
/// "Now" for every test: 2027-01-15T08:00:00Z.
const NOW: i64 = 1_800_000_000;
const HS_SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";
const API_KEY: &str = "pk_test-key-for-the-ci-bot-000000000000000000";

struct Keys {
    rsa: rsa::PrivateKey,
    ec: p256::ecdsa::SigningKey,
    ed: ed25519_dalek::SigningKey,
}

/// Keys generated once per test run (RSA generation takes a moment).
fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rsa = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048).expect("RSA key");
        let ec = loop {
            if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&random32()) {
                break key;
            }
        };
        let ed = ed25519_dalek::SigningKey::from_bytes(&random32());
        Keys { rsa, ec, ed }
    })
}

fn random32() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("randomness");
    bytes
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_jwk(key: &rsa::PrivateKey, kid: &str) -> Value {
    json!({
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": b64(&key.n().to_be_bytes_trimmed_vartime()),
        "e": b64(&key.e().to_be_bytes_trimmed_vartime()),
    })
}

fn ec_jwk(key: &p256::ecdsa::SigningKey, kid: &str) -> Value {
    let point = key.verifying_key().to_sec1_point(false);
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid,
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
    })
}

fn ed_jwk(key: &ed25519_dalek::SigningKey, kid: &str) -> Value {
    json!({ "kty": "OKP", "crv": "Ed25519", "kid": kid, "alg": "EdDSA",
            "x": b64(&key.verifying_key().to_bytes()) })
}

/// The public JWKS of the test keys: `rsa-1`, `ec-1`, `ed-1`.
fn jwks() -> Value {
    let k = keys();
    json!({ "keys": [rsa_jwk(&k.rsa, "rsa-1"), ec_jwk(&k.ec, "ec-1"), ed_jwk(&k.ed, "ed-1")] })
}

fn hmac(secret: &[u8], input: &[u8]) -> Vec<u8> {
    Hmac::<Sha256>::new_from_slice(secret)
        .unwrap()
        .chain_update(input)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// A token with this header and these claims, signed by `sign` over the signing input.
fn token_with(header: Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = sign(input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// A token signed with the test key of `alg` (`kid` as given).
fn token(alg: &str, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": alg, "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let k = keys();
    token_with(header, claims, |input| match alg {
        "HS256" => hmac(HS_SECRET.as_bytes(), input),
        "RS256" => k
            .rsa
            .sign(rsa::Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(input))
            .unwrap(),
        "ES256" => {
            let sig: p256::ecdsa::Signature = k.ec.sign(input);
            sig.to_bytes().to_vec()
        }
        "EdDSA" | "Ed25519" => k.ed.sign(input).to_bytes().to_vec(),
        other => panic!("no test key for {other}"),
    })
}

/// Valid claims for `alice`.
fn claims() -> Value {
    json!({
        "iss": ISS, "aud": [AUD, "account"], "sub": "alice",
        "exp": NOW + 300, "nbf": NOW - 60, "iat": NOW - 60,
        "scope": "openid mcp:tools",
        "realm_access": { "roles": ["dev", "ops"] },
        "org": "acme", "department": "platform",
    })
}

fn claims_with(changes: Value) -> Value {
    let mut c = claims();
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            c.as_object_mut().unwrap().remove(k);
        } else {
            c[k] = v.clone();
        }
    }
    c
}

/// The base configuration: one API key, JWT with every key source inline, overridden by
/// `extra` (top-level keys replace; `jwt` keys are merged).
fn config_json(extra: Value) -> Value {
    let mut base = json!({
        "resource-metadata": META,
        "api-keys": [{
            "sha256": hash_key(API_KEY), "subject": "ci-bot", "roles": ["ci"],
            "tenant": "acme", "attributes": { "team": "infra" },
        }],
        "jwt": {
            "issuer": ISS, "audience": AUD, "leeway": 30,
            "jwks": jwks(), "hs256-secret": HS_SECRET,
            "roles-claim": "realm_access.roles", "tenant-claim": "org",
            "attributes": { "dept": "department" },
        },
    });
    for (k, v) in extra.as_object().unwrap() {
        if k == "jwt" && v.is_object() {
            for (jk, jv) in v.as_object().unwrap() {
                if jv.is_null() {
                    base["jwt"].as_object_mut().unwrap().remove(jk);
                } else {
                    base["jwt"][jk] = jv.clone();
                }
            }
        } else if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn config(extra: Value) -> Config {
    portcullis_sdk::parse_config::<Authn>(&config_json(extra).to_string()).unwrap()
}

fn config_error(extra: Value) -> String {
    match portcullis_sdk::parse_config::<Authn>(&config_json(extra).to_string()) {
        Ok(_) => panic!("config accepted"),
        Err(e) => e,
    }
}

fn request(headers: &[(&str, &str)]) -> Message<'static> {
    headers
        .iter()
        .fold(
            TestMessage::request("tools/call").with_target("fs__read_file"),
            |m, (k, v)| m.with_header(*k, *v),
        )
        .build()
}

fn bearer(cfg: &Config, credential: &str) -> Verdict {
    authenticate(
        cfg,
        &request(&[("Authorization", &format!("Bearer {credential}"))]),
        NOW,
    )
}

/// The identity and method of an accepted request.
fn accepted(verdict: &Verdict) -> (Identity, String) {
    let changes = verdict
        .changes()
        .unwrap_or_else(|| panic!("not accepted: {verdict:?}"));
    (
        changes.identity().expect("an identity").clone(),
        changes.attribute(METHOD).expect("authn.method").to_string(),
    )
}

/// The status and `WWW-Authenticate` of a refusal.
fn refused(verdict: &Verdict) -> (u16, String) {
    let denial = verdict
        .denial()
        .unwrap_or_else(|| panic!("not refused: {verdict:?}"));
    let header = denial
        .http_headers
        .iter()
        .find(|(k, _)| k == "WWW-Authenticate")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    (denial.http_status.expect("an HTTP status"), header)
}

const INVALID_TOKEN: &str = "Bearer resource_metadata=\"https://mcp.example.com/.well-known/oauth-protected-resource/mcp\", error=\"invalid_token\"";

/// The reason `jwt::validate` gives (what the log says).
fn reason(cfg: &Config, token: &str) -> String {
    let jwt = cfg.jwt.as_ref().unwrap();
    match jwt::validate(jwt, token, NOW).and_then(|t| jwt::identity(&jwt.claims, &t.claims)) {
        Err(Rejection::Invalid(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Asserts a token gets the 401 with `invalid_token` and that the log reason contains `why`.
fn assert_rejected(cfg: &Config, token: &str, why: &str) {
    assert_eq!(
        refused(&bearer(cfg, token)),
        (401, INVALID_TOKEN.into()),
        "{why}"
    );
    let reason = reason(cfg, token);
    assert!(
        reason.contains(why),
        "reason {reason:?} should contain {why:?}"
    );
}

#[test]
fn accepts_valid_tokens_of_every_algorithm() {
    let cfg = config(json!({}));
    for (alg, kid) in [
        ("HS256", None),
        ("RS256", Some("rsa-1")),
        ("ES256", Some("ec-1")),
        ("EdDSA", Some("ed-1")),
        ("Ed25519", Some("ed-1")),
        ("RS256", None),
    ] {
        let (identity, method) = accepted(&bearer(&cfg, &token(alg, kid, &claims())));
        assert_eq!(method, "jwt", "{alg}");
        assert_eq!(identity.subject, "alice", "{alg}");
    }
}

#[test]
fn maps_claims_to_the_identity_by_path() {
    let cfg = config(json!({}));
    let (identity, _) = accepted(&bearer(&cfg, &token("ES256", Some("ec-1"), &claims())));
    assert_eq!(identity.roles, ["dev", "ops"]);
    assert_eq!(identity.scopes, ["openid", "mcp:tools"]);
    assert_eq!(identity.tenant.as_deref(), Some("acme"));
    assert_eq!(identity.attribute("dept"), Some("platform"));

    let cfg = config(json!({ "jwt": {
        "subject-claim": "client.id", "roles-claim": "https://example.com/roles",
        "scopes-claim": "scp", "tenant-claim": "org.id",
        "attributes": { "groups": "groups", "level": "profile.level", "absent": "nope" },
    }}));
    let custom = claims_with(json!({
        "client": { "id": "agent-7" },
        "https://example.com/roles": ["admin"],
        "scp": ["files.read", "files.write"],
        "org": { "id": 42 },
        "groups": ["a", "b"],
        "profile": { "level": 3 },
    }));
    let (identity, _) = accepted(&bearer(&cfg, &token("EdDSA", Some("ed-1"), &custom)));
    assert_eq!(identity.subject, "agent-7");
    assert_eq!(identity.roles, ["admin"]);
    assert_eq!(identity.scopes, ["files.read", "files.write"]);
    assert_eq!(identity.tenant.as_deref(), Some("42"));
    assert_eq!(identity.attribute("groups"), Some("a,b"));
    assert_eq!(identity.attribute("level"), Some("3"));
    assert_eq!(identity.attribute("absent"), None);

    let no_subject = claims_with(json!({ "sub": null }));
    assert_rejected(
        &config(json!({})),
        &token("RS256", Some("rsa-1"), &no_subject),
        "no subject claim",
    );
}

#[test]
fn rejects_expired_tokens_beyond_the_leeway() {
    let cfg = config(json!({}));
    let just_expired = claims_with(json!({ "exp": NOW - 10 }));
    assert!(
        bearer(&cfg, &token("RS256", Some("rsa-1"), &just_expired))
            .changes()
            .is_some(),
        "10 s past exp is within the 30 s leeway"
    );
    let expired = claims_with(json!({ "exp": NOW - 31 }));
    assert_rejected(
        &cfg,
        &token("RS256", Some("rsa-1"), &expired),
        "expired at 2027-01-15T07:59:29Z",
    );
    let no_exp = claims_with(json!({ "exp": null }));
    assert_rejected(
        &cfg,
        &token("ES256", Some("ec-1"), &no_exp),
        "no `exp` claim",
    );
}

#[test]
fn rejects_tokens_not_yet_valid() {
    let cfg = config(json!({}));
    let early = claims_with(json!({ "nbf": NOW + 60 }));
    assert_rejected(
        &cfg,
        &token("EdDSA", Some("ed-1"), &early),
        "not valid before",
    );
    let barely = claims_with(json!({ "nbf": NOW + 20 }));
    assert!(
        bearer(&cfg, &token("EdDSA", Some("ed-1"), &barely))
            .changes()
            .is_some()
    );
}

#[test]
fn rejects_a_wrong_issuer_and_accepts_any_configured_one() {
    let cfg = config(json!({}));
    let other = claims_with(json!({ "iss": "https://evil.example.com" }));
    assert_rejected(
        &cfg,
        &token("RS256", Some("rsa-1"), &other),
        "issuer \"https://evil.example.com\" is not accepted",
    );
    let cfg = config(json!({ "jwt": { "issuer": [ISS, "https://evil.example.com"] } }));
    assert!(
        bearer(&cfg, &token("RS256", Some("rsa-1"), &other))
            .changes()
            .is_some()
    );
}

#[test]
fn rejects_a_wrong_audience() {
    let cfg = config(json!({}));
    let elsewhere = claims_with(json!({ "aud": "https://other.example.com/mcp" }));
    assert_rejected(&cfg, &token("ES256", Some("ec-1"), &elsewhere), "audience");
    let list = claims_with(json!({ "aud": ["account", "https://other.example.com/mcp"] }));
    assert_rejected(
        &cfg,
        &token("ES256", Some("ec-1"), &list),
        "does not include",
    );
    let missing = claims_with(json!({ "aud": null }));
    assert_rejected(
        &cfg,
        &token("ES256", Some("ec-1"), &missing),
        "no `aud` claim",
    );
    let exact = claims_with(json!({ "aud": AUD }));
    assert!(
        bearer(&cfg, &token("ES256", Some("ec-1"), &exact))
            .changes()
            .is_some()
    );
}

#[test]
fn rejects_bad_signatures() {
    let cfg = config(json!({}));
    for (alg, kid) in [
        ("HS256", None),
        ("RS256", Some("rsa-1")),
        ("ES256", Some("ec-1")),
        ("EdDSA", Some("ed-1")),
    ] {
        let good = token(alg, kid, &claims());
        // The same signature over other claims.
        let (_, signature) = good.rsplit_once('.').unwrap();
        let forged = token(alg, kid, &claims_with(json!({ "sub": "admin" })));
        let (forged_input, _) = forged.rsplit_once('.').unwrap();
        assert_rejected(
            &cfg,
            &format!("{forged_input}.{signature}"),
            "bad signature",
        );
        // A flipped bit in the signature.
        let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
        sig[5] ^= 1;
        let (input, _) = good.rsplit_once('.').unwrap();
        assert_rejected(&cfg, &format!("{input}.{}", b64(&sig)), "bad signature");
    }
    // Signed by a key that is not configured, under a configured kid.
    let stranger = ed25519_dalek::SigningKey::from_bytes(&random32());
    let header = json!({ "alg": "EdDSA", "kid": "ed-1" });
    let t = token_with(header, &claims(), |input| {
        stranger.sign(input).to_bytes().to_vec()
    });
    assert_rejected(&cfg, &t, "bad signature");
}

/// Ed25519 verified strictly: a small-order public key verifies, under a lax check, the
/// signature `R` = identity, `s` = 0 for every message. A set that carries such a key (by
/// mistake or by someone who can write the set) must not make every token good.
#[test]
fn refuses_eddsa_signatures_that_only_a_lax_check_accepts() {
    // The identity point: y = 1, encoded little-endian.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = json!({ "kty": "OKP", "crv": "Ed25519", "kid": "ed-weak", "x": b64(&identity) });
    let cfg = config(json!({ "jwt": { "jwks": { "keys": [weak] } } }));
    let header = json!({ "alg": "EdDSA", "kid": "ed-weak" });
    let forged = token_with(header, &claims_with(json!({ "sub": "admin" })), |_| {
        let mut signature = identity.to_vec();
        signature.extend_from_slice(&[0u8; 32]);
        signature
    });
    // The lax check would take it: this test is about the strict one.
    let lax = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
    let (input, sig) = forged.rsplit_once('.').unwrap();
    let sig = ed25519_dalek::Signature::from_slice(&URL_SAFE_NO_PAD.decode(sig).unwrap()).unwrap();
    assert!(ed25519_dalek::Verifier::verify(&lax, input.as_bytes(), &sig).is_ok());
    assert_rejected(&cfg, &forged, "bad signature");
}

#[test]
fn never_accepts_alg_none() {
    let cfg = config(json!({}));
    for alg in ["none", "None", "NONE"] {
        let t = token_with(json!({ "alg": alg }), &claims(), |_| Vec::new());
        assert_rejected(&cfg, &t, "alg `none`");
    }
    let err = config_error(json!({ "jwt": { "algorithms": ["RS256", "none"] } }));
    assert!(
        err.contains("`none` (unsigned tokens) is never accepted"),
        "{err}"
    );
}

#[test]
fn rejects_hs256_tokens_signed_with_a_public_key() {
    let k = keys();
    let jwk = rsa_jwk(&k.rsa, "rsa-1");
    let n = k.rsa.n().to_be_bytes_trimmed_vartime();
    let secrets: [Vec<u8>; 3] = [
        jwk.to_string().into_bytes(),
        jwks().to_string().into_bytes(),
        n.to_vec(),
    ];
    // Only RSA keys configured: no HS256 key exists at all.
    let rsa_only = config(json!({ "jwt": { "hs256-secret": null, "jwks": { "keys": [jwk] } } }));
    // RSA keys and an HS256 secret: the token is checked against the secret only.
    let both = config(json!({}));
    for secret in &secrets {
        for kid in [Some("rsa-1"), None] {
            let mut header = json!({ "alg": "HS256" });
            if let Some(kid) = kid {
                header["kid"] = json!(kid);
            }
            let t = token_with(header, &claims(), |input| hmac(secret, input));
            assert_rejected(&rsa_only, &t, "alg HS256");
            // Naming the RSA key finds no HS256 key of that kid; without a kid, the one
            // HS256 key is tried, and fails.
            let why = match kid {
                Some(_) => "unknown key id \"rsa-1\" for alg HS256",
                None => "bad signature",
            };
            assert_rejected(&both, &t, why);
        }
    }
    // An RS256 token cannot pick the HMAC secret either.
    let t = token_with(json!({ "alg": "RS256" }), &claims(), |input| {
        hmac(HS_SECRET.as_bytes(), input)
    });
    assert_rejected(&both, &t, "bad signature");
}

#[test]
fn rejects_unknown_key_ids_and_disallowed_algorithms() {
    let cfg = config(json!({}));
    assert_rejected(
        &cfg,
        &token("RS256", Some("rsa-2"), &claims()),
        "unknown key id \"rsa-2\" for alg RS256",
    );
    assert_rejected(
        &cfg,
        &token("ES256", Some("rsa-1"), &claims()),
        "unknown key id",
    );
    let t = token_with(json!({ "alg": "RS512" }), &claims(), |_| vec![1; 256]);
    assert_rejected(&cfg, &t, "unsupported alg \"RS512\"");
    let rs_only = config(
        json!({ "jwt": { "algorithms": ["RS256"], "hs256-secret": null,
        "jwks": { "keys": [rsa_jwk(&keys().rsa, "rsa-1")] } } }),
    );
    assert_rejected(
        &rs_only,
        &token("ES256", Some("ec-1"), &claims()),
        "not allowed by jwt.algorithms",
    );
}

#[test]
fn rejects_malformed_tokens() {
    let cfg = config(json!({}));
    let good = token("EdDSA", Some("ed-1"), &claims());
    assert_rejected(&cfg, "a.b.c", "header");
    assert_rejected(&cfg, &format!("{good}.x.y"), "JWE");
    assert_rejected(
        &cfg,
        &format!("{good}="),
        "signature is not unpadded base64url",
    );
    let crit = token_with(
        json!({ "alg": "HS256", "crit": ["exp"], "exp": 1 }),
        &claims(),
        |i| hmac(HS_SECRET.as_bytes(), i),
    );
    assert_rejected(&cfg, &crit, "crit");
    let huge = claims_with(json!({ "pad": "x".repeat(20_000) }));
    assert_rejected(&cfg, &token("HS256", None, &huge), "longer than");
    let array = token_with(json!({ "alg": "HS256" }), &json!([1]), |i| {
        hmac(HS_SECRET.as_bytes(), i)
    });
    assert_rejected(&cfg, &array, "claims: not a JSON object");
}

#[test]
fn answers_401_with_the_exact_challenges() {
    let cfg = config(json!({}));
    let none = authenticate(&cfg, &request(&[]), NOW);
    assert_eq!(
        refused(&none),
        (401, format!("Bearer resource_metadata=\"{META}\""))
    );
    let denial = none.denial().unwrap();
    assert_eq!(
        (denial.code, denial.message.as_str()),
        (codes::UNAUTHENTICATED, "authentication required")
    );
    assert_eq!(denial.data, None, "no detail for the client");

    let with_scope = config(json!({ "required-scopes": ["mcp:tools", "mcp:read"] }));
    assert_eq!(
        refused(&authenticate(&with_scope, &request(&[]), NOW)).1,
        format!("Bearer resource_metadata=\"{META}\", scope=\"mcp:tools mcp:read\"")
    );
    assert_eq!(
        refused(&bearer(&with_scope, "pk_wrong")).1,
        format!(
            "Bearer resource_metadata=\"{META}\", scope=\"mcp:tools mcp:read\", error=\"invalid_token\""
        )
    );
    let bad = bearer(
        &cfg,
        &token("HS256", None, &claims_with(json!({ "exp": 1 }))),
    );
    assert_eq!(
        bad.denial().unwrap().message,
        "authentication required",
        "generic, whatever the reason"
    );

    let bare = config(json!({ "resource-metadata": null }));
    assert_eq!(
        refused(&authenticate(&bare, &request(&[]), NOW)).1,
        "Bearer"
    );
    assert_eq!(
        refused(&bearer(&bare, "x")).1,
        "Bearer error=\"invalid_token\""
    );

    // Another scheme is not a credential we take, and never falls back to anonymous.
    let anon = config(json!({ "anonymous": { "roles": ["guest"] } }));
    let basic = authenticate(
        &anon,
        &request(&[("Authorization", "Basic YWxpY2U6c2VjcmV0")]),
        NOW,
    );
    assert_eq!(
        refused(&basic),
        (401, format!("Bearer resource_metadata=\"{META}\""))
    );
    assert_eq!(refused(&bearer(&cfg, "")).1, INVALID_TOKEN);
}

#[test]
fn answers_403_for_insufficient_scope() {
    let cfg = config(json!({ "required-scopes": ["mcp:tools", "mcp:admin"] }));
    let verdict = bearer(&cfg, &token("RS256", Some("rsa-1"), &claims()));
    assert_eq!(
        refused(&verdict),
        (
            403,
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"mcp:tools mcp:admin\", resource_metadata=\"{META}\""
            )
        )
    );
    let denial = verdict.denial().unwrap();
    assert_eq!(
        (denial.code, denial.message.as_str()),
        (codes::DENIED, "insufficient scope")
    );
    let enough = claims_with(json!({ "scope": "mcp:admin mcp:tools" }));
    assert!(
        bearer(&cfg, &token("RS256", Some("rsa-1"), &enough))
            .changes()
            .is_some()
    );
    let as_array = claims_with(json!({ "scope": ["mcp:tools", "mcp:admin"] }));
    assert!(
        bearer(&cfg, &token("RS256", Some("rsa-1"), &as_array))
            .changes()
            .is_some()
    );
    // API keys are the operator's own grant: required-scopes applies to JWTs.
    assert!(bearer(&cfg, API_KEY).changes().is_some());
}

#[test]
fn api_keys_valid_unknown_and_expired() {
    let cfg = config(json!({}));
    let (identity, method) = accepted(&bearer(&cfg, API_KEY));
    assert_eq!(method, "api-key");
    assert_eq!(identity.subject, "ci-bot");
    assert_eq!(identity.roles, ["ci"]);
    assert_eq!(identity.tenant.as_deref(), Some("acme"));
    assert_eq!(identity.attribute("team"), Some("infra"));
    assert_eq!(
        accepted(&authenticate(
            &cfg,
            &request(&[("authorization", &format!("bearer   {API_KEY} "))]),
            NOW
        ))
        .0
        .subject,
        "ci-bot",
        "the scheme is case-insensitive"
    );

    assert_eq!(
        refused(&bearer(&cfg, "pk_unknown")),
        (401, INVALID_TOKEN.into())
    );
    assert_eq!(refused(&bearer(&cfg, &API_KEY[..API_KEY.len() - 1])).0, 401);

    let expiring = |expires: Value| {
        config(
            json!({ "api-keys": [{ "sha256": hash_key(API_KEY), "subject": "temp", "expires": expires }] }),
        )
    };
    assert!(
        bearer(&expiring(json!("2027-01-15T08:00:01Z")), API_KEY)
            .changes()
            .is_some()
    );
    assert_eq!(
        refused(&bearer(&expiring(json!("2027-01-15T08:00:00Z")), API_KEY)).0,
        401
    );
    assert_eq!(
        refused(&bearer(
            &expiring(json!("2027-01-15T09:00:00+02:00")),
            API_KEY
        ))
        .0,
        401
    );
    // An unquoted TOML datetime reaches the plugin in toml's JSON form.
    let toml_form = json!({ "$__toml_private_datetime": "2026-12-31T23:59:59Z" });
    assert_eq!(refused(&bearer(&expiring(toml_form), API_KEY)).0, 401);

    // Several keys: each maps to its own identity.
    let second = "pk_second";
    let cfg = config(json!({ "api-keys": [
        { "sha256": hash_key(API_KEY), "subject": "one" },
        { "sha256": hash_key(second).to_uppercase(), "subject": "two", "scopes": ["mcp:tools"] },
    ] }));
    let (two, _) = accepted(&bearer(&cfg, second));
    assert_eq!(
        (two.subject.as_str(), two.scopes.as_slice()),
        ("two", ["mcp:tools".to_string()].as_slice())
    );
}

#[test]
fn reads_api_keys_from_a_custom_header() {
    let cfg = config(json!({ "api-key-header": "X-API-Key" }));
    let (identity, method) = accepted(&authenticate(
        &cfg,
        &request(&[("x-api-key", API_KEY)]),
        NOW,
    ));
    assert_eq!(
        (identity.subject.as_str(), method.as_str()),
        ("ci-bot", "api-key")
    );
    let wrong = authenticate(&cfg, &request(&[("X-Api-Key", "pk_nope")]), NOW);
    assert_eq!(refused(&wrong), (401, INVALID_TOKEN.into()));
    // Without the setting, the header is not a credential.
    let plain = config(json!({}));
    assert_eq!(
        refused(&authenticate(
            &plain,
            &request(&[("x-api-key", API_KEY)]),
            NOW
        ))
        .1,
        format!("Bearer resource_metadata=\"{META}\"")
    );
    // Authorization still works beside it.
    assert!(bearer(&cfg, API_KEY).changes().is_some());
}

#[test]
fn anonymous_access_only_when_configured() {
    let off = config(json!({}));
    assert_eq!(refused(&authenticate(&off, &request(&[]), NOW)).0, 401);

    let on = config(
        json!({ "anonymous": { "subject": "anonymous", "roles": ["guest"] }, "required-scopes": ["mcp:tools"] }),
    );
    let (identity, method) = accepted(&authenticate(&on, &request(&[]), NOW));
    assert_eq!(
        (identity.subject.as_str(), method.as_str()),
        ("anonymous", "anonymous")
    );
    assert_eq!(identity.roles, ["guest"]);
    // A credential that fails is refused, never downgraded to anonymous.
    assert_eq!(refused(&bearer(&on, "pk_wrong")).0, 401);
    let expired = claims_with(json!({ "exp": NOW - 3600 }));
    assert_eq!(
        refused(&bearer(&on, &token("HS256", None, &expired))).0,
        401
    );
    // Defaults: subject "anonymous", no roles.
    let (identity, _) = accepted(&authenticate(
        &config(json!({ "anonymous": {} })),
        &request(&[]),
        NOW,
    ));
    assert_eq!(
        (identity.subject.as_str(), identity.roles.len()),
        ("anonymous", 0)
    );
}

/// A fresh directory for a test's JWKS file.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("authn-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn reads_the_jwks_file_at_each_call() {
    let dir = temp_dir("file");
    let path = dir.join("jwks.json");
    // Without the verified-token cache, which would keep accepting `t` after the rotation
    // below (see the next test).
    let extra = json!({ "jwt": { "jwks": null, "hs256-secret": null,
                                 "jwks-file": path.to_str().unwrap(), "cache-seconds": 0 } });
    let cfg = config(extra.clone());
    let t = token("ES256", Some("ec-1"), &claims());

    // Missing: not the caller's fault.
    let verdict = bearer(&cfg, &t);
    let denial = verdict.denial().unwrap();
    assert_eq!(
        (denial.http_status, denial.message.as_str()),
        (Some(503), "authentication unavailable")
    );

    // An IdP's set, with keys this policy cannot use: those are skipped.
    let mut set = jwks();
    set["keys"].as_array_mut().unwrap().extend([
        json!({ "kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" }),
        json!({ "kty": "EC", "crv": "P-384", "kid": "p384", "x": "AA", "y": "AA" }),
    ]);
    std::fs::write(&path, set.to_string()).unwrap();
    assert!(bearer(&cfg, &t).changes().is_some());
    assert_eq!(kv::get(&cache_key(extra, &t)), None, "cache-seconds = 0");

    // Rotated: the old key is gone, the new one works at once.
    let rotated = p256::ecdsa::SigningKey::from_slice(&random32()).unwrap();
    std::fs::write(
        &path,
        json!({ "keys": [ec_jwk(&rotated, "ec-2")] }).to_string(),
    )
    .unwrap();
    assert_eq!(refused(&bearer(&cfg, &t)).0, 401);
    let fresh = token_with(
        json!({ "alg": "ES256", "kid": "ec-2" }),
        &claims(),
        |input| {
            let sig: p256::ecdsa::Signature = rotated.sign(input);
            sig.to_bytes().to_vec()
        },
    );
    assert!(bearer(&cfg, &fresh).changes().is_some());

    // Inline keys are tried first and work without the file.
    let both = config(json!({ "jwt": { "jwks-file": path.to_str().unwrap() } }));
    std::fs::write(&path, "not json").unwrap();
    assert!(
        bearer(&both, &token("RS256", Some("rsa-1"), &claims()))
            .changes()
            .is_some()
    );
    assert_eq!(
        bearer(&both, &fresh).denial().unwrap().http_status,
        Some(503)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rejects_bad_configurations_with_clear_errors() {
    let mut rs512 = rsa_fields();
    rs512.insert("alg".into(), json!("RS512"));
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "api-keys": [{ "sha256": "abc", "subject": "x" }] }),
            "api-keys[0]: sha256 must be 64 hex digits",
        ),
        (
            json!({ "api-keys": [{ "sha256": API_KEY, "subject": "x" }] }),
            "looks like the key itself",
        ),
        (
            json!({ "api-keys": [{ "sha256": hash_key("a"), "subject": "x", "role": ["r"] }] }),
            "unknown field `role`",
        ),
        (
            json!({ "api-keys": [{ "sha256": hash_key("a"), "subject": "" }] }),
            "subject must not be empty",
        ),
        (
            json!({ "api-keys": [{ "sha256": hash_key("a"), "subject": "x", "expires": "tomorrow" }] }),
            "api-keys[0].expires",
        ),
        (
            json!({ "api-keys": [{ "sha256": hash_key("a"), "subject": "x" }, { "sha256": hash_key("a"), "subject": "y" }] }),
            "listed twice",
        ),
        (json!({ "api-key": [] }), "unknown field `api-key`"),
        (json!({ "api-key-header": "authorization" }), "always read"),
        (
            json!({ "api-key-header": "x api key" }),
            "not a header name",
        ),
        (
            json!({ "resource-metadata": "/.well-known/oauth-protected-resource" }),
            "absolute http(s) URL",
        ),
        (json!({ "required-scopes": ["a b"] }), "is not a scope"),
        (
            json!({ "jwt": { "algorithms": ["RS384"] } }),
            "unsupported algorithm \"RS384\" (supported: HS256, RS256, ES256, EdDSA)",
        ),
        (
            json!({ "jwt": { "algorithms": ["RS256"] } }),
            "but jwt.algorithms does not allow it",
        ),
        (json!({ "jwt": { "issuer": [] } }), "jwt.issuer"),
        (json!({ "jwt": { "audience": "" } }), "jwt.audience"),
        (
            json!({ "jwt": { "jwks": null, "hs256-secret": null } }),
            "jwks, jwks-file, jwks-url, discover = true or hs256-secret",
        ),
        (
            json!({ "jwt": { "hs256-secret": "short" } }),
            "at least 32 bytes",
        ),
        (
            json!({ "jwt": { "jwks-file": "jwks.json" } }),
            "absolute path",
        ),
        (
            json!({ "jwt": { "roles-claim": "realm_access..roles" } }),
            "not a claim path",
        ),
        (json!({ "jwt": { "jwks": [] } }), "not a JWK Set"),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "RSA", "kid": "r", "e": "AQAB" }] } } }),
            "keys[0] (kid \"r\"): missing `n`",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "RSA", "n": b64(&[0xff; 128]), "e": "AQAB" }] } } }),
            "smaller than 2048 bits",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [rsa_jwk(&keys().rsa, "r"), { "kty": "EC", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32]) }] } } }),
            "keys[1]: not a point on P-256",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "EC", "crv": "P-521", "x": "AA", "y": "AA" }] } } }),
            "unsupported EC curve \"P-521\"",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": "not base64!" }] } } }),
            "`x` is not unpadded base64url",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [rs512] } } }),
            "unsupported alg \"RS512\" for a RSA key",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "oct", "k": b64(b"short") }] } } }),
            "at least 32 bytes",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [{ "kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB" }] } } }),
            "no signature verification key",
        ),
        (json!({ "jwt": { "leeway": -1 } }), "invalid config"),
        (
            json!({ "jwt": { "cache-seconds": "60s" } }),
            "invalid type: string \"60s\", expected u32",
        ),
        (
            json!({ "jwt": { "issuer": ISS, "audience": AUD, "jwks-uri": "https://x" } }),
            "unknown field `jwks-uri`",
        ),
        (
            json!({ "anonymous": { "subject": "" } }),
            "anonymous.subject must not be empty",
        ),
        (
            json!({ "anonymous": { "role": ["guest"] } }),
            "unknown field `role`",
        ),
    ];
    for (extra, expected) in cases {
        let err = config_error(extra.clone());
        assert!(
            err.contains(expected),
            "{extra}:\n  got {err:?}\n  expected {expected:?}"
        );
    }
    // A configuration without any method loads, and refuses everyone.
    let nothing = portcullis_sdk::parse_config::<Authn>("{}").unwrap();
    assert_eq!(
        refused(&authenticate(&nothing, &request(&[]), NOW)).1,
        "Bearer"
    );
    assert_eq!(refused(&bearer(&nothing, API_KEY)).0, 401);
}

/// An RSA JWK's fields without `alg`, as a JSON object to spread into `json!`.
fn rsa_fields() -> serde_json::Map<String, Value> {
    let mut jwk = rsa_jwk(&keys().rsa, "r");
    jwk.as_object_mut().unwrap().remove("alg");
    jwk.as_object().unwrap().clone()
}

#[test]
fn describes_itself_as_a_request_phase_authn_policy() {
    let info = Authn::describe();
    assert_eq!(
        (info.name.as_str(), info.stage, info.phases.as_slice()),
        ("authn", Stage::Authn, [Phase::Request].as_slice())
    );
}

/// The store key the verified-token cache uses for `token` under the configuration `extra`:
/// the hash of the whole `[config]` text, hashed again with the token.
fn cache_key(extra: Value, token: &str) -> String {
    let fingerprint = Sha256::new()
        .chain_update(cache::FORMAT)
        .chain_update(config_json(extra).to_string())
        .finalize();
    let digest = Sha256::new()
        .chain_update(fingerprint)
        .chain_update(token)
        .finalize();
    format!("jwt:{}", apikey::hex(&digest))
}

#[test]
fn a_verified_token_is_cached_under_the_hash_of_config_and_token() {
    let cfg = config(json!({}));
    let t = token("RS256", Some("rsa-1"), &claims());
    let key = cache_key(json!({}), &t);
    let first = accepted(&bearer(&cfg, &t));
    let stored = String::from_utf8(kv::get(&key).expect("an entry")).unwrap();
    let (_, signature) = t.rsplit_once('.').unwrap();
    assert!(
        !stored.contains(signature),
        "the token is not stored: {stored}"
    );
    assert_eq!(
        accepted(&bearer(&cfg, &t)),
        first,
        "the whole identity, again"
    );
}

#[test]
fn a_cached_token_outlives_its_key_in_the_jwks_file_for_at_most_cache_seconds() {
    let dir = temp_dir("cached");
    let path = dir.join("jwks.json");
    std::fs::write(&path, jwks().to_string()).unwrap();
    let cfg = config(json!({ "jwt": { "jwks": null, "hs256-secret": null,
                                      "jwks-file": path.to_str().unwrap(), "cache-seconds": 1 } }));
    let t = token("ES256", Some("ec-1"), &claims());
    assert!(bearer(&cfg, &t).changes().is_some());

    // The key is rotated out: a token it signed that was not cached is refused at once…
    let rotated = p256::ecdsa::SigningKey::from_slice(&random32()).unwrap();
    std::fs::write(
        &path,
        json!({ "keys": [ec_jwk(&rotated, "ec-2")] }).to_string(),
    )
    .unwrap();
    let uncached = token("ES256", Some("ec-1"), &claims_with(json!({ "sub": "bob" })));
    assert_eq!(refused(&bearer(&cfg, &uncached)).0, 401);
    // …the cached one is accepted from the cache, until cache-seconds have passed.
    assert!(bearer(&cfg, &t).changes().is_some());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(refused(&bearer(&cfg, &t)).0, 401);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_cached_token_is_never_served_at_or_after_its_exp() {
    let strict = json!({ "jwt": { "leeway": 0 } });
    let cfg = config(strict.clone());
    let t = token("ES256", Some("ec-1"), &claims()); // exp: NOW + 300
    let at = |now: i64| {
        authenticate(
            &cfg,
            &request(&[("Authorization", &format!("Bearer {t}"))]),
            now,
        )
    };
    assert!(at(NOW).changes().is_some());
    assert!(kv::get(&cache_key(strict.clone(), &t)).is_some());
    assert!(at(NOW + 299).changes().is_some());
    assert_eq!(refused(&at(NOW + 300)).0, 401, "cached, but expired");

    // An entry lives no longer than its token: this one expires a second from now.
    let short = token(
        "ES256",
        Some("ec-1"),
        &claims_with(json!({ "exp": NOW + 1 })),
    );
    assert!(bearer(&cfg, &short).changes().is_some());
    assert!(kv::get(&cache_key(strict.clone(), &short)).is_some());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(kv::get(&cache_key(strict, &short)), None);

    // Accepted only thanks to the leeway, so already past `exp`: not cached at all.
    let late = token(
        "ES256",
        Some("ec-1"),
        &claims_with(json!({ "exp": NOW - 10 })),
    );
    assert!(bearer(&config(json!({})), &late).changes().is_some());
    assert_eq!(kv::get(&cache_key(json!({}), &late)), None);
}

#[test]
fn a_changed_configuration_never_sees_identities_cached_under_the_old_one() {
    let t = token("RS256", Some("rsa-1"), &claims());
    assert_eq!(
        accepted(&bearer(&config(json!({})), &t)).0.roles,
        ["dev", "ops"]
    );
    let remapped = config(json!({ "jwt": { "roles-claim": "org" } }));
    assert_eq!(accepted(&bearer(&remapped, &t)).0.roles, ["acme"]);
    let without_the_key =
        config(json!({ "jwt": { "jwks": { "keys": [ec_jwk(&keys().ec, "ec-1")] } } }));
    assert_rejected(&without_the_key, &t, "unknown key id \"rsa-1\"");
}

#[test]
fn only_accepted_tokens_are_cached_and_scopes_are_checked_on_every_call() {
    let cfg = config(json!({}));
    let good = token("EdDSA", Some("ed-1"), &claims());
    let (input, _) = good.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", b64(&[7; 64]));
    let expired = token(
        "EdDSA",
        Some("ed-1"),
        &claims_with(json!({ "exp": NOW - 3600 })),
    );
    for bad in [&forged, &expired] {
        for _ in 0..2 {
            assert_eq!(refused(&bearer(&cfg, bad)).0, 401);
        }
        assert_eq!(kv::get(&cache_key(json!({}), bad)), None);
    }

    // A valid token without a required scope: its identity is cached, and refused each time.
    let extra = json!({ "required-scopes": ["mcp:admin"] });
    let strict = config(extra.clone());
    for _ in 0..2 {
        assert_eq!(refused(&bearer(&strict, &good)).0, 403);
    }
    assert!(kv::get(&cache_key(extra, &good)).is_some());
}

/// A token from raw JSON texts (to write what `json!` cannot: repeated members, odd
/// numbers), signed with the HS256 secret.
fn raw_hs256(header: &str, claims: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let signature = hmac(HS_SECRET.as_bytes(), input.as_bytes());
    format!("{input}.{}", b64(&signature))
}

/// The claims of [`claims`] as JSON text, with `extra` members appended verbatim.
fn claims_text_with(extra: &str) -> String {
    let text = claims().to_string();
    format!("{},{extra}}}", &text[..text.len() - 1])
}

#[test]
fn refuses_unknown_key_ids_for_every_algorithm() {
    let cfg = config(json!({}));
    // The attack: an HS256 token signed with the configured secret, naming a key that does
    // not exist. The secret has no kid, so it does not stand in for one.
    assert_rejected(
        &cfg,
        &token("HS256", Some("attacker-kid"), &claims()),
        "unknown key id \"attacker-kid\" for alg HS256",
    );
    for (alg, good, other) in [
        ("RS256", "rsa-1", "ec-1"),
        ("ES256", "ec-1", "ed-1"),
        ("EdDSA", "ed-1", "rsa-1"),
    ] {
        assert!(
            bearer(&cfg, &token(alg, Some(good), &claims()))
                .changes()
                .is_some()
        );
        assert_rejected(
            &cfg,
            &token(alg, Some("nope"), &claims()),
            &format!("unknown key id \"nope\" for alg {alg}"),
        );
        // The kid of another algorithm's key is unknown too.
        assert_rejected(
            &cfg,
            &token(alg, Some(other), &claims()),
            &format!("unknown key id {other:?} for alg {alg}"),
        );
    }
    // A kid-less key inline does not stand in for the kid of a jwks-file either.
    let dir = temp_dir("kid");
    let path = dir.join("jwks.json");
    std::fs::write(&path, json!({ "keys": [] }).to_string()).unwrap();
    let mut lone = rsa_jwk(&keys().rsa, "x");
    lone.as_object_mut().unwrap().remove("kid");
    let with_file = config(json!({ "jwt": { "jwks": { "keys": [lone] },
        "jwks-file": path.to_str().unwrap(), "cache-seconds": 0 } }));
    assert_rejected(
        &with_file,
        &token("RS256", Some("rsa-1"), &claims()),
        "unknown key id \"rsa-1\" for alg RS256",
    );
    assert!(
        bearer(&with_file, &token("RS256", None, &claims()))
            .changes()
            .is_some()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_token_without_kid_is_checked_only_against_a_lone_key_of_its_algorithm() {
    let k = keys();
    let second = p256::ecdsa::SigningKey::from_slice(&random32()).unwrap();
    let two = config(json!({ "jwt": { "jwks": { "keys": [
        ec_jwk(&k.ec, "ec-1"), ec_jwk(&second, "ec-2"), rsa_jwk(&k.rsa, "rsa-1"),
    ] } } }));
    assert_rejected(
        &two,
        &token("ES256", None, &claims()),
        "no `kid` in the header, and more than one configured key verifies alg ES256",
    );
    assert!(
        bearer(&two, &token("ES256", Some("ec-1"), &claims()))
            .changes()
            .is_some()
    );
    // One key of that algorithm: it is the one.
    assert!(
        bearer(&two, &token("RS256", None, &claims()))
            .changes()
            .is_some()
    );
    assert!(
        bearer(&two, &token("HS256", None, &claims()))
            .changes()
            .is_some()
    );

    // One key inline and one in the jwks-file are two keys.
    let dir = temp_dir("nokid");
    let path = dir.join("jwks.json");
    std::fs::write(
        &path,
        json!({ "keys": [ec_jwk(&second, "ec-2")] }).to_string(),
    )
    .unwrap();
    let split =
        config(json!({ "jwt": { "jwks-file": path.to_str().unwrap(), "cache-seconds": 0 } }));
    assert_rejected(
        &split,
        &token("ES256", None, &claims()),
        "more than one configured key verifies alg ES256",
    );
    std::fs::write(&path, json!({ "keys": [] }).to_string()).unwrap();
    assert!(
        bearer(&split, &token("ES256", None, &claims()))
            .changes()
            .is_some()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn refuses_key_sets_a_token_could_not_name_a_key_in() {
    let k = keys();
    let second = p256::ecdsa::SigningKey::from_slice(&random32()).unwrap();
    let mut no_kid = ec_jwk(&second, "x");
    no_kid.as_object_mut().unwrap().remove("kid");
    let oct = json!({ "kty": "oct", "kid": "hs-1", "k": b64(&[7; 32]) });
    for (extra, expected) in [
        (
            json!({ "jwt": { "jwks": { "keys": [ec_jwk(&k.ec, "same"), ec_jwk(&second, "same")] } } }),
            "two ES256 keys have the kid \"same\"",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [ec_jwk(&k.ec, "ec-1"), no_kid] } } }),
            "several ES256 keys are configured (jwks, hs256-secret) and one has no `kid`",
        ),
        (
            json!({ "jwt": { "jwks": { "keys": [oct.clone()] } } }),
            "several HS256 keys",
        ),
        (json!({ "jwt": { "max-lifetime": 0 } }), "jwt.max-lifetime"),
        (json!({ "jwt": { "max-lifetime": -1 } }), "expected u32"),
    ] {
        let err = config_error(extra.clone());
        assert!(
            err.contains(expected),
            "{extra}:\n  got {err:?}\n  expected {expected:?}"
        );
    }
    // An HS256 secret with a kid, as a jwks key instead of hs256-secret.
    let cfg = config(json!({ "jwt": { "hs256-secret": null, "jwks": { "keys": [oct] } } }));
    let t = token_with(json!({ "alg": "HS256", "kid": "hs-1" }), &claims(), |i| {
        hmac(&[7; 32], i)
    });
    assert!(bearer(&cfg, &t).changes().is_some());
}

#[test]
fn refuses_times_that_are_not_whole_seconds_in_range() {
    let cfg = config(json!({}));
    for (claim, value, why) in [
        (
            "exp",
            "1e300",
            "`exp` is 1e+300, not a whole number of seconds",
        ),
        (
            "exp",
            "1800000300.5",
            "`exp` is 1800000300.5, not a whole number",
        ),
        ("exp", "18000003e2", "not a whole number"),
        ("exp", "-1", "`exp` is -1, not a whole number"),
        (
            "exp",
            "18446744073709551615",
            "not a whole number of seconds from 0 to",
        ),
        ("exp", "\"1800000300\"", "`exp` is not a number"),
        ("nbf", "-5", "`nbf` is -5"),
        ("nbf", "1e19", "`nbf` is 1e+19"),
        ("iat", "1799999940.0", "`iat` is 1799999940.0"),
        ("iat", "null", "`iat` is not a number"),
    ] {
        let mut claims = claims();
        claims.as_object_mut().unwrap().remove(claim);
        let text = claims.to_string();
        let t = raw_hs256(
            r#"{"alg":"HS256"}"#,
            &format!("{},\"{claim}\":{value}}}", &text[..text.len() - 1]),
        );
        assert_rejected(&cfg, &t, why);
    }
    // Not JSON at all (JSON has no NaN, and 1e400 overflows a double).
    for value in ["NaN", "1e400", "Infinity"] {
        let t = raw_hs256(r#"{"alg":"HS256"}"#, &format!("{{\"exp\":{value}}}"));
        assert_rejected(&cfg, &t, "claims: not a JSON object");
    }
}

#[test]
fn refuses_tokens_valid_beyond_max_lifetime_or_issued_in_the_future() {
    let cfg = config(json!({}));
    let accepts = |cfg: &Config, changes: Value| {
        bearer(cfg, &token("ES256", Some("ec-1"), &claims_with(changes)))
            .changes()
            .is_some()
    };
    // Default max-lifetime: a day, from now plus the 30 s leeway, and from iat.
    assert!(accepts(&cfg, json!({ "exp": NOW + 86_400, "iat": null })));
    assert!(accepts(
        &cfg,
        json!({ "exp": NOW + 86_400 + 30, "iat": null })
    ));
    assert_rejected(
        &cfg,
        &token(
            "ES256",
            Some("ec-1"),
            &claims_with(json!({ "exp": NOW + 86_400 + 31, "iat": null })),
        ),
        "beyond jwt.max-lifetime (86400s) from now",
    );
    assert_rejected(
        &cfg,
        &token(
            "ES256",
            Some("ec-1"),
            &claims_with(json!({ "exp": i64::MAX })),
        ),
        "beyond jwt.max-lifetime",
    );
    assert_rejected(
        &cfg,
        &token(
            "ES256",
            Some("ec-1"),
            &claims_with(json!({ "iat": NOW - 86_400 })),
        ),
        "lifetime from `iat` to `exp` is 86700s, beyond jwt.max-lifetime (86400s)",
    );
    // iat: in the future within the leeway is clock skew; beyond it, a token minted ahead.
    assert!(accepts(&cfg, json!({ "iat": NOW + 30 })));
    assert_rejected(
        &cfg,
        &token(
            "ES256",
            Some("ec-1"),
            &claims_with(json!({ "iat": NOW + 31 })),
        ),
        "issued in the future, at 2027-01-15T08:00:31Z",
    );

    // Configurable.
    let hour = config(json!({ "jwt": { "max-lifetime": 3600 } }));
    assert!(accepts(&hour, json!({ "exp": NOW + 3000 })));
    assert!(!accepts(
        &hour,
        json!({ "exp": NOW + 3600, "iat": NOW - 60 })
    ));
    assert!(!accepts(&hour, json!({ "exp": NOW + 3700, "iat": null })));
    let year = config(json!({ "jwt": { "max-lifetime": 31_536_000 } }));
    assert!(accepts(&year, json!({ "exp": NOW + 30 * 86_400 })));
}

#[test]
fn refuses_repeated_members_in_the_header_and_the_claims() {
    let cfg = config(json!({}));
    let header = r#"{"alg":"HS256","typ":"JWT"}"#;
    // The same text without the repetition is accepted.
    assert!(
        bearer(&cfg, &raw_hs256(header, &claims().to_string()))
            .changes()
            .is_some()
    );
    for (part, t) in [
        (
            "header",
            raw_hs256(r#"{"alg":"HS256","alg":"none"}"#, &claims().to_string()),
        ),
        (
            "header",
            raw_hs256(
                r#"{"alg":"HS256","kid":"a","kid":"b"}"#,
                &claims().to_string(),
            ),
        ),
        (
            "claims",
            raw_hs256(header, &claims_text_with(r#""sub":"admin""#)),
        ),
        (
            "claims",
            raw_hs256(
                header,
                &claims_text_with(r#""aud":"https://mcp.example.com/mcp""#),
            ),
        ),
        (
            "claims",
            raw_hs256(header, &claims_text_with(r#""exp":9999999999"#)),
        ),
        // The same name spelt with an escape is the same name.
        (
            "claims",
            raw_hs256(header, &claims_text_with(r#""s\u0075b":"admin""#)),
        ),
        // Nested: the roles a claim path reads.
        (
            "claims",
            raw_hs256(
                header,
                &claims_text_with(r#""x":{"roles":["dev"],"roles":["admin"]}"#),
            ),
        ),
        (
            "claims",
            raw_hs256(header, &claims_text_with(r#""x":[{"a":1,"a":2}]"#)),
        ),
    ] {
        let reason = reason(&cfg, &t);
        assert!(
            reason.starts_with(&format!("{part}: not a JSON object (member "))
                && reason.contains("appears more than once"),
            "{reason}"
        );
        assert_eq!(refused(&bearer(&cfg, &t)), (401, INVALID_TOKEN.into()));
    }
}

/// `discover = true`: the issuer's discovery document names the key set; both are fetched
/// once and then served from the store; a new `kid` fetches the set again (at most once per
/// `jwks-refresh-seconds`); an outage is ridden out on the last good set until
/// `jwks-stale-seconds` past its freshness, then refused with 503.
#[test]
fn keys_from_the_provider_by_discovery_rotation_and_outage() {
    use portcullis_sdk::http::{Response, testing};
    let discovery = format!("{ISS}/.well-known/openid-configuration");
    let certs = "https://idp.example.com/realms/acme/certs";
    testing::respond(
        &discovery,
        Ok(
            Response::new(200, json!({ "issuer": ISS, "jwks_uri": certs }).to_string())
                .with_header("Cache-Control", "public, max-age=3600"),
        ),
    );
    testing::respond(
        certs,
        Ok(Response::new(200, jwks().to_string()).with_header("Cache-Control", "max-age=120")),
    );
    let cfg = config(
        json!({ "jwt": { "jwks": null, "hs256-secret": null, "discover": true,
                                       "cache-seconds": 0, "jwks-stale-seconds": 600 } }),
    );
    let at = |t: &str, now: i64| {
        authenticate(
            &cfg,
            &request(&[("Authorization", &format!("Bearer {t}"))]),
            now,
        )
    };
    let t = token("ES256", Some("ec-1"), &claims());
    assert!(at(&t, NOW).changes().is_some());
    assert!(at(&t, NOW + 1).changes().is_some());
    assert_eq!(testing::requests(), [discovery.as_str(), certs]);

    // Rotation: a new kid is fetched at once, although the cached set is still fresh.
    let rotated = p256::ecdsa::SigningKey::from_slice(&random32()).unwrap();
    testing::respond(
        certs,
        Ok(Response::new(
            200,
            json!({ "keys": [ec_jwk(&rotated, "ec-2")] }).to_string(),
        )),
    );
    // Valid for an hour: the outage below lasts longer than claims()' five minutes.
    let long = claims_with(json!({ "exp": NOW + 3600 }));
    let fresh = token_with(json!({ "alg": "ES256", "kid": "ec-2" }), &long, |input| {
        let sig: p256::ecdsa::Signature = rotated.sign(input);
        sig.to_bytes().to_vec()
    });
    assert!(at(&fresh, NOW + 2).changes().is_some());
    assert_eq!(testing::requests(), [certs]);
    // Another unknown kid within the interval: no fetch, refused.
    let made_up = token("ES256", Some("nope"), &claims());
    assert_eq!(refused(&at(&made_up, NOW + 3)).0, 401);
    assert!(
        testing::requests().is_empty(),
        "at most one fetch per interval"
    );

    // Outage: past freshness (5 min without caching headers), the last good set serves.
    testing::unreachable(certs);
    assert!(at(&fresh, NOW + 400).changes().is_some());
    assert_eq!(testing::requests(), [certs], "one try");
    // Past freshness + jwks-stale-seconds: refused, not the caller's fault.
    let verdict = at(&fresh, NOW + 2 + 300 + 601);
    assert_eq!(verdict.denial().unwrap().http_status, Some(503));
}

#[test]
fn provider_settings_are_checked() {
    for (extra, says) in [
        (
            json!({ "jwt": { "discover": true, "jwks-url": "https://idp.example.com/certs" } }),
            "not both",
        ),
        (json!({ "jwt": { "jwks-url": "/certs" } }), "jwt.jwks-url"),
        (
            json!({ "jwt": { "discover": true, "issuer": ["https://a.example", "https://b.example"] } }),
            "exactly one issuer",
        ),
        (
            json!({ "jwt": { "jwks-url": "https://idp.example.com/certs", "jwks-min-seconds": 10, "jwks-max-seconds": 5 } }),
            "jwks-min-seconds",
        ),
    ] {
        let e = config_error(extra);
        assert!(e.contains(says), "{e}");
    }
}
