//! Issuer mode: self-signed ES256 JWT access tokens, minted with the configured key.

use super::Token;
use crate::config::IdentityConfig;
use crate::fields::{Fields, Value};
use crate::jose::{self, PublicJwk};
use crate::limits::TOKEN_MAX;
use crate::secret::Secret;
use core::fmt;
use imds_hal::{Entropy, EntropyError};
use zeroize::Zeroize;

/// Why a token could not be minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintError {
    /// No random bytes for the token id.
    Entropy(EntropyError),
    /// The token would not fit [`TOKEN_MAX`] (a very long resource).
    TooLarge,
}

impl MintError {
    /// The message, written without `core::fmt`; `Display` writes the same.
    pub fn describe<W: imds_hal::text::Text + ?Sized>(&self, out: &mut W) {
        out.put("cannot mint a token: ").put(match self {
            MintError::Entropy(e) => e.as_str(),
            MintError::TooLarge => "it would be too large",
        });
    }
}

impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.describe(f);
        Ok(())
    }
}

impl core::error::Error for MintError {}

/// Issuer mode: mints ES256 JWT access tokens with the configured key.
pub struct Issuer {
    key: p256::ecdsa::SigningKey,
    kid: heapless::String<43>,
    jwk: PublicJwk,
    issuer: heapless::String<{ crate::limits::URL_MAX }>,
    tenant_id: heapless::String<36>,
    lifetime_s: u64,
}

impl fmt::Debug for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issuer")
            .field("key", &"<redacted>")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl Issuer {
    /// An issuer minting with `key`, `iss` = `issuer`, for `tenant_id`, tokens living `lifetime_s`.
    pub fn new(
        key: p256::ecdsa::SigningKey,
        issuer: &str,
        tenant_id: &str,
        lifetime_s: u32,
    ) -> Issuer {
        let jwk = PublicJwk::of(key.verifying_key());
        Issuer {
            kid: jwk.thumbprint(),
            jwk,
            key,
            issuer: heapless::String::try_from(issuer).unwrap_or_default(),
            tenant_id: heapless::String::try_from(tenant_id).unwrap_or_default(),
            lifetime_s: lifetime_s as u64,
        }
    }

    /// RFC 7638 thumbprint of the signing key: the `kid` of every token.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (for the key set).
    pub fn jwk(&self) -> &PublicJwk {
        &self.jwk
    }

    /// The `iss` of minted tokens.
    pub fn issuer_url(&self) -> &str {
        &self.issuer
    }

    /// The public key.
    pub fn verifying_key(&self) -> &p256::ecdsa::VerifyingKey {
        self.key.verifying_key()
    }

    /// Mint a token for `identity` and `resource`, valid from `now`.
    pub fn mint<E: Entropy>(
        &self,
        identity: &IdentityConfig,
        resource: &str,
        now: u64,
        entropy: &mut E,
    ) -> Result<Token, MintError> {
        let mut rnd = [0u8; 16];
        entropy.fill(&mut rnd).map_err(MintError::Entropy)?;
        let mut uti: heapless::Vec<u8, 24> = heapless::Vec::new();
        jose::b64url_append(&rnd, &mut uti).map_err(|_| MintError::TooLarge)?;
        let uti = core::str::from_utf8(&uti).unwrap_or("");
        let exp = now + self.lifetime_s;
        // Claims shaped like Entra ID v1 access tokens for managed identities.
        let claims = Fields(&[
            ("aud", Value::Str(resource)),
            ("iss", Value::Str(&self.issuer)),
            ("iat", Value::Num(now)),
            ("nbf", Value::Num(now)),
            ("exp", Value::Num(exp)),
            ("aio", Value::Str("imds-agent")),
            ("appid", Value::Str(&identity.client_id)),
            ("appidacr", Value::Str("2")),
            ("idp", Value::Str(&self.issuer)),
            ("idtyp", Value::Str("app")),
            ("oid", Value::Str(&identity.object_id)),
            ("rh", Value::Str("imds-agent")),
            ("sub", Value::Str(&identity.object_id)),
            ("tid", Value::Str(&self.tenant_id)),
            ("uti", Value::Str(uti)),
            ("ver", Value::Str("1.0")),
            ("xms_mirid", Value::Str(&identity.resource_id)),
        ]);
        let header = Fields(&[
            ("alg", Value::Str("ES256")),
            ("typ", Value::Str("JWT")),
            ("kid", Value::Str(&self.kid)),
        ]);
        let mut hbuf = [0u8; 128];
        let hlen =
            serde_json_core::to_slice(&header, &mut hbuf).map_err(|_| MintError::TooLarge)?;
        let mut cbuf = [0u8; TOKEN_MAX];
        let clen =
            serde_json_core::to_slice(&claims, &mut cbuf).map_err(|_| MintError::TooLarge)?;
        let mut token = Token {
            access_token: Secret::new(),
            not_before: now,
            expires_on: exp,
            obtained_us: 0,
        };
        let r = jose::sign_es256(
            &self.key,
            &hbuf[..hlen],
            &cbuf[..clen],
            token.access_token.buf_mut(),
        )
        .map_err(|_| MintError::TooLarge);
        cbuf.zeroize();
        r.map(|_| token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u8);
    impl Entropy for Counter {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
            for b in buf {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
            Ok(())
        }
    }
    use crate::token::{test_identity as identity, NoEntropy};

    #[test]
    fn minted_token_verifies_and_has_entra_claims() {
        let key = p256::ecdsa::SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
        let iss = Issuer::new(key, "https://sts.windows.net/t/", "t", 3600);
        let t = iss
            .mint(
                &identity(),
                "https://management.azure.com/",
                1_700_000_000,
                &mut Counter(0),
            )
            .unwrap();
        assert_eq!(t.expires_on, 1_700_003_600);
        let mut buf = [0u8; 2048];
        let payload =
            jose::verify_es256(t.access_token.as_bytes(), iss.verifying_key(), &mut buf).unwrap();
        let s = core::str::from_utf8(payload).unwrap();
        for needle in [
            r#""aud":"https://management.azure.com/""#,
            r#""iss":"https://sts.windows.net/t/""#,
            r#""exp":1700003600"#,
            r#""appid":"12222222-2222-2222-2222-222222222222""#,
            r#""oid":"22222222-2222-2222-2222-222222222222""#,
            r#""sub":"22222222-2222-2222-2222-222222222222""#,
            r#""idtyp":"app""#,
            r#""xms_mirid":"/subscriptions/s/x""#,
        ] {
            assert!(s.contains(needle), "{needle} missing in {s}");
        }
        // Header carries the RFC 7638 kid.
        let header_b64 = t.access_token.as_str().split('.').next().unwrap();
        let mut hb = [0u8; 256];
        let h = jose::b64url_decode(header_b64.as_bytes(), &mut hb).unwrap();
        let h = core::str::from_utf8(h).unwrap();
        assert!(h.contains(iss.kid()), "{h}");
        // Each token gets a distinct uti.
        let t2 = iss
            .mint(
                &identity(),
                "https://management.azure.com/",
                1_700_000_000,
                &mut Counter(50),
            )
            .unwrap();
        assert_ne!(t.access_token.as_str(), t2.access_token.as_str());
    }

    #[test]
    fn mint_without_entropy_fails() {
        let key = p256::ecdsa::SigningKey::from_bytes(&[5u8; 32].into()).unwrap();
        let iss = Issuer::new(key, "https://i/", "t", 3600);
        assert_eq!(
            iss.mint(&identity(), "r", 0, &mut NoEntropy).unwrap_err(),
            MintError::Entropy(EntropyError::Unavailable)
        );
    }
}
