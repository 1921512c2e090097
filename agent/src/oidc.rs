//! The OpenID documents of issuer mode: discovery (`/.well-known/openid-configuration`) and
//! the key set (`/.well-known/jwks.json`, `/discovery/keys`), as values the router
//! serializes. Relying parties verify the agent's tokens with them.

use crate::fields::{Fields, Value};
use crate::http::Request;
use crate::token::Issuer;
use imds_hal::text::Text;
use serde::{Serialize, Serializer};

/// A `Host` header value safe to echo into a URL, or the IMDS address.
pub fn host_of<'r>(req: &Request<'r>) -> &'r str {
    req.header("host")
        .and_then(|h| core::str::from_utf8(crate::http::trim(h)).ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .unwrap_or("169.254.169.254")
}

/// The agent's URLs as a client reached it (`Host`).
pub struct Urls {
    jwks_uri: heapless::String<300>,
    token_endpoint: heapless::String<300>,
}

impl Urls {
    /// The URLs on `host` (from [`host_of`]).
    pub fn for_host(host: &str) -> Urls {
        let mut jwks_uri = heapless::String::new();
        jwks_uri
            .put("http://")
            .put(host)
            .put("/.well-known/jwks.json");
        let mut token_endpoint = heapless::String::new();
        token_endpoint
            .put("http://")
            .put(host)
            .put("/metadata/identity/oauth2/token");
        Urls {
            jwks_uri,
            token_endpoint,
        }
    }
}

/// The discovery document.
pub struct Discovery<'a> {
    issuer: &'a str,
    jwks_uri: &'a str,
    token_endpoint: &'a str,
    authorization_endpoint: &'a str,
    response_types_supported: [&'a str; 1],
    subject_types_supported: [&'a str; 1],
    id_token_signing_alg_values_supported: [&'a str; 1],
    token_endpoint_auth_methods_supported: [&'a str; 1],
    claims_supported: [&'a str; 12],
}

impl Serialize for Discovery<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Fields(&[
            ("issuer", Value::Str(self.issuer)),
            ("jwks_uri", Value::Str(self.jwks_uri)),
            ("token_endpoint", Value::Str(self.token_endpoint)),
            (
                "authorization_endpoint",
                Value::Str(self.authorization_endpoint),
            ),
            (
                "response_types_supported",
                Value::Strs(&self.response_types_supported),
            ),
            (
                "subject_types_supported",
                Value::Strs(&self.subject_types_supported),
            ),
            (
                "id_token_signing_alg_values_supported",
                Value::Strs(&self.id_token_signing_alg_values_supported),
            ),
            (
                "token_endpoint_auth_methods_supported",
                Value::Strs(&self.token_endpoint_auth_methods_supported),
            ),
            ("claims_supported", Value::Strs(&self.claims_supported)),
        ])
        .serialize(s)
    }
}

/// The discovery document of `issuer`, reached at `urls`.
pub fn discovery<'a>(issuer: &'a Issuer, urls: &'a Urls) -> Discovery<'a> {
    Discovery {
        issuer: issuer.issuer_url(),
        jwks_uri: &urls.jwks_uri,
        token_endpoint: &urls.token_endpoint,
        authorization_endpoint: &urls.token_endpoint,
        response_types_supported: ["token"],
        subject_types_supported: ["pairwise"],
        id_token_signing_alg_values_supported: ["ES256"],
        token_endpoint_auth_methods_supported: ["none"],
        claims_supported: [
            "aud",
            "iss",
            "iat",
            "nbf",
            "exp",
            "sub",
            "oid",
            "appid",
            "tid",
            "idtyp",
            "xms_mirid",
            "uti",
        ],
    }
}

/// One public key (RFC 7517).
pub struct Jwk<'a> {
    kty: &'a str,
    crv: &'a str,
    x: &'a str,
    y: &'a str,
    kid: &'a str,
    use_: &'a str,
    alg: &'a str,
}

/// The key set.
pub struct Jwks<'a> {
    keys: [Jwk<'a>; 1],
}

impl Serialize for Jwks<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let [k] = &self.keys;
        let key = [Fields(&[
            ("kty", Value::Str(k.kty)),
            ("crv", Value::Str(k.crv)),
            ("x", Value::Str(k.x)),
            ("y", Value::Str(k.y)),
            ("kid", Value::Str(k.kid)),
            ("use", Value::Str(k.use_)),
            ("alg", Value::Str(k.alg)),
        ])];
        Fields(&[("keys", Value::Objs(&key))]).serialize(s)
    }
}

/// The key set of `issuer`: its one ES256 key.
pub fn jwks(issuer: &Issuer) -> Jwks<'_> {
    let jwk = issuer.jwk();
    Jwks {
        keys: [Jwk {
            kty: "EC",
            crv: "P-256",
            x: &jwk.x,
            y: &jwk.y,
            kid: issuer.kid(),
            use_: "sig",
            alg: "ES256",
        }],
    }
}
