//! Tokens: the fixed-size cache and the issuer that mints self-signed ES256 JWTs.
//!
//! The cache never knows HTTP: it maps (identity index, resource) to a token and its times.
//! A cached token is served while it has more than the refresh margin to live; otherwise the
//! caller obtains a fresh one (mint, or later an upstream fetch) and inserts it. When the cache
//! is full, the entry that expires soonest is evicted.

use crate::config::IdentityConfig;
use crate::jose::{self, PublicJwk};
use crate::limits::{RESOURCE_MAX, TOKEN_CACHE_CAPACITY, TOKEN_MAX};
use core::fmt;
use imds_hal::{Entropy, EntropyError};
use serde::Serialize;
use zeroize::Zeroize;

/// Bytes that must not leak: zeroized on drop, redacted in `Debug`.
#[derive(Clone, Default)]
pub struct Secret<const N: usize> {
    bytes: heapless::Vec<u8, N>,
}

impl<const N: usize> Secret<N> {
    pub fn new() -> Self {
        Secret {
            bytes: heapless::Vec::new(),
        }
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The secret as text (tokens are ASCII); empty if it is not UTF-8.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.bytes).unwrap_or("")
    }
    pub fn buf_mut(&mut self) -> &mut heapless::Vec<u8, N> {
        &mut self.bytes
    }
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl<const N: usize> Drop for Secret<N> {
    fn drop(&mut self) {
        self.bytes.as_mut_slice().zeroize();
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<redacted {} bytes>)", self.bytes.len())
    }
}

/// An access token with its times (Unix seconds).
#[derive(Debug, Clone)]
pub struct Token {
    pub access_token: Secret<TOKEN_MAX>,
    pub not_before: u64,
    pub expires_on: u64,
    /// Monotonic time the agent obtained it (broker mode: `bypass_cache` needs a newer one).
    pub obtained_us: u64,
}

impl Token {
    /// Seconds left at `now` (0 when expired).
    pub fn expires_in(&self, now: u64) -> u64 {
        self.expires_on.saturating_sub(now)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    identity: u8,
    resource: heapless::String<RESOURCE_MAX>,
    token: Token,
}

/// What an insert did to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    /// A new entry in a free slot.
    Added,
    /// The entry for the same (identity, resource) was replaced.
    Replaced,
    /// The cache was full: the entry expiring soonest was evicted.
    Evicted,
}

/// Fixed-capacity token cache keyed by (identity, resource).
#[derive(Debug)]
pub struct TokenCache {
    entries: heapless::Vec<Entry, TOKEN_CACHE_CAPACITY>,
    margin_s: u64,
}

impl TokenCache {
    /// `margin_s`: a token with this many seconds (or fewer) left is no longer served.
    pub fn new(margin_s: u32) -> Self {
        TokenCache {
            entries: heapless::Vec::new(),
            margin_s: margin_s as u64,
        }
    }

    /// A token for (identity, resource) that still has more than the margin to live.
    /// `resource` is compared byte for byte: `https://x` and `https://x/` differ.
    pub fn get(&self, identity: u8, resource: &str, now: u64) -> Option<&Token> {
        self.entries
            .iter()
            .find(|e| e.identity == identity && e.resource == resource)
            .map(|e| &e.token)
            .filter(|t| t.expires_on > now.saturating_add(self.margin_s))
    }

    /// The entry for (identity, resource), however little it has left.
    pub fn peek(&self, identity: u8, resource: &str) -> Option<&Token> {
        self.entries
            .iter()
            .find(|e| e.identity == identity && e.resource == resource)
            .map(|e| &e.token)
    }

    /// Store a token. Resources longer than [`RESOURCE_MAX`] are not cached.
    pub fn insert(&mut self, identity: u8, resource: &str, token: Token) -> Insert {
        let Ok(key) = heapless::String::try_from(resource) else {
            return Insert::Added;
        };
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.identity == identity && e.resource == key)
        {
            e.token = token;
            return Insert::Replaced;
        }
        let entry = Entry {
            identity,
            resource: key,
            token,
        };
        match self.entries.push(entry) {
            Ok(()) => Insert::Added,
            Err(entry) => {
                // Full: evict the entry that expires soonest (expired ones first, naturally).
                let victim = self
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| e.token.expires_on)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                self.entries[victim] = entry;
                Insert::Evicted
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the cache holds any entry (fresh or not) for (identity, resource).
    pub fn contains(&self, identity: u8, resource: &str) -> bool {
        self.entries
            .iter()
            .any(|e| e.identity == identity && e.resource == resource)
    }
}

/// Why a token could not be minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MintError {
    /// No random bytes for the token id.
    Entropy(EntropyError),
    /// The token would not fit [`TOKEN_MAX`] (a very long resource).
    TooLarge,
}

impl fmt::Display for MintError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MintError::Entropy(e) => write!(f, "cannot mint a token: {e}"),
            MintError::TooLarge => f.write_str("cannot mint a token: it would be too large"),
        }
    }
}

impl core::error::Error for MintError {}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// Claims shaped like Entra ID v1 access tokens for managed identities.
#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    aio: &'a str,
    appid: &'a str,
    appidacr: &'a str,
    idp: &'a str,
    idtyp: &'a str,
    oid: &'a str,
    rh: &'a str,
    sub: &'a str,
    tid: &'a str,
    uti: &'a str,
    ver: &'a str,
    xms_mirid: &'a str,
}

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

    pub fn jwk(&self) -> &PublicJwk {
        &self.jwk
    }

    pub fn issuer_url(&self) -> &str {
        &self.issuer
    }

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
        let claims = Claims {
            aud: resource,
            iss: &self.issuer,
            iat: now,
            nbf: now,
            exp,
            aio: "imds-agent",
            appid: &identity.client_id,
            appidacr: "2",
            idp: &self.issuer,
            idtyp: "app",
            oid: &identity.object_id,
            rh: "imds-agent",
            sub: &identity.object_id,
            tid: &self.tenant_id,
            uti,
            ver: "1.0",
            xms_mirid: &identity.resource_id,
        };
        let header = Header {
            alg: "ES256",
            typ: "JWT",
            kid: &self.kid,
        };
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
    use crate::config::IdentityKind;

    fn tok(expires_on: u64) -> Token {
        let mut t = Token {
            access_token: Secret::new(),
            not_before: 0,
            expires_on,
            obtained_us: 0,
        };
        t.access_token.buf_mut().extend_from_slice(b"tok").unwrap();
        t
    }

    #[test]
    fn serves_until_margin() {
        let mut c = TokenCache::new(300);
        c.insert(0, "https://r/", tok(10_000));
        assert!(c.get(0, "https://r/", 9_000).is_some());
        assert!(c.get(0, "https://r/", 9_699).is_some());
        assert!(
            c.get(0, "https://r/", 9_700).is_none(),
            "at the margin: mint anew"
        );
        assert!(
            c.get(0, "https://r", 9_000).is_none(),
            "trailing slash is another resource"
        );
        assert!(c.get(1, "https://r/", 9_000).is_none(), "other identity");
        assert_eq!(c.insert(0, "https://r/", tok(20_000)), Insert::Replaced);
        assert_eq!(c.get(0, "https://r/", 9_700).unwrap().expires_on, 20_000);
    }

    #[test]
    fn full_cache_evicts_soonest_expiring() {
        let mut c = TokenCache::new(0);
        for i in 0..TOKEN_CACHE_CAPACITY {
            let r = std::format!("r{i}");
            assert_eq!(c.insert(0, &r, tok(1_000 + i as u64)), Insert::Added);
        }
        assert_eq!(c.len(), TOKEN_CACHE_CAPACITY);
        // r0 expires soonest: it goes.
        assert_eq!(c.insert(1, "new", tok(5_000)), Insert::Evicted);
        assert_eq!(c.len(), TOKEN_CACHE_CAPACITY);
        assert!(!c.contains(0, "r0"));
        assert!(c.contains(0, "r1"));
        assert!(c.get(1, "new", 0).is_some());
    }

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
    struct NoEntropy;
    impl Entropy for NoEntropy {
        fn fill(&mut self, _: &mut [u8]) -> Result<(), EntropyError> {
            Err(EntropyError::Unavailable)
        }
    }

    fn identity() -> IdentityConfig {
        IdentityConfig {
            kind: IdentityKind::User,
            client_id: "12222222-2222-2222-2222-222222222222".try_into().unwrap(),
            object_id: "22222222-2222-2222-2222-222222222222".try_into().unwrap(),
            resource_id: "/subscriptions/s/x".try_into().unwrap(),
            #[cfg(feature = "broker")]
            credential: None,
        }
    }

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

    #[test]
    fn secret_debug_is_redacted() {
        let t = tok(1);
        assert!(!std::format!("{t:?}").contains("tok\""));
        assert!(std::format!("{:?}", t.access_token).contains("redacted"));
    }
}
