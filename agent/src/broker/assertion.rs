//! RFC 7523 client assertions: a JWT the agent signs with the identity's key to prove itself to
//! the authority. Claims: `aud` = the token endpoint URL, `iss` = `sub` = client id, a fresh
//! random `jti`, `iat` = `nbf` = now, `exp` = now + 10 minutes. Header: `kid`, and `x5t#S256`
//! (certificate credentials) when a certificate is configured.

use crate::jose;
use imds_hal::{Entropy, EntropyError};
use serde::Serialize;

/// Lifetime of an assertion.
pub const ASSERTION_LIFETIME_S: u64 = 600;
/// Longest assertion.
pub const ASSERTION_MAX: usize = 1536;

/// Why no assertion could be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssertionError {
    Entropy(EntropyError),
    TooLarge,
}

impl core::fmt::Display for AssertionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AssertionError::Entropy(e) => write!(f, "client assertion: {e}"),
            AssertionError::TooLarge => f.write_str("client assertion too large"),
        }
    }
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
    #[serde(rename = "x5t#S256", skip_serializing_if = "Option::is_none")]
    x5t_s256: Option<&'a str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
}

/// Sign an ES256 client assertion into `out`.
#[allow(clippy::too_many_arguments)]
pub fn es256<E: Entropy>(
    key: &p256::ecdsa::SigningKey,
    kid: &str,
    x5t_s256: Option<&str>,
    client_id: &str,
    token_url: &str,
    now: u64,
    entropy: &mut E,
    out: &mut heapless::Vec<u8, ASSERTION_MAX>,
) -> Result<(), AssertionError> {
    let mut rnd = [0u8; 18];
    entropy.fill(&mut rnd).map_err(AssertionError::Entropy)?;
    let mut jti: heapless::Vec<u8, 24> = heapless::Vec::new();
    jose::b64url_append(&rnd, &mut jti).map_err(|_| AssertionError::TooLarge)?;
    let header = Header {
        alg: "ES256",
        typ: "JWT",
        kid,
        x5t_s256,
    };
    let claims = Claims {
        aud: token_url,
        iss: client_id,
        sub: client_id,
        jti: core::str::from_utf8(&jti).unwrap_or(""),
        iat: now,
        nbf: now,
        exp: now + ASSERTION_LIFETIME_S,
    };
    let mut h = [0u8; 256];
    let hl = serde_json_core::to_slice(&header, &mut h).map_err(|_| AssertionError::TooLarge)?;
    let mut c = [0u8; 768];
    let cl = serde_json_core::to_slice(&claims, &mut c).map_err(|_| AssertionError::TooLarge)?;
    jose::sign_es256(key, &h[..hl], &c[..cl], out).map_err(|_| AssertionError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Seq(u8);
    impl Entropy for Seq {
        fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
            for b in buf {
                self.0 = self.0.wrapping_add(1);
                *b = self.0;
            }
            Ok(())
        }
    }

    #[test]
    fn claims_and_header() {
        let key = p256::ecdsa::SigningKey::from_bytes(&[3u8; 32].into()).unwrap();
        let mut out = heapless::Vec::new();
        es256(
            &key,
            "kid1",
            Some("thumb"),
            "cid",
            "https://a/t/oauth2/token",
            100,
            &mut Seq(0),
            &mut out,
        )
        .unwrap();
        let mut buf = [0u8; 1024];
        let p = jose::verify_es256(&out, key.verifying_key(), &mut buf).unwrap();
        let s = core::str::from_utf8(p).unwrap();
        assert!(
            s.contains(r#""aud":"https://a/t/oauth2/token","iss":"cid","sub":"cid""#),
            "{s}"
        );
        assert!(s.contains(r#""iat":100,"nbf":100,"exp":700"#), "{s}");
        let h = std::string::String::from_utf8(out.split(|&b| b == b'.').next().unwrap().to_vec())
            .unwrap();
        let mut hb = [0u8; 256];
        let h = jose::b64url_decode(h.as_bytes(), &mut hb).unwrap();
        assert_eq!(
            h,
            br#"{"alg":"ES256","typ":"JWT","kid":"kid1","x5t#S256":"thumb"}"#
        );
        // A fresh jti each time.
        let mut out2 = heapless::Vec::new();
        es256(
            &key,
            "kid1",
            None,
            "cid",
            "https://a/",
            100,
            &mut Seq(77),
            &mut out2,
        )
        .unwrap();
        let mut buf2 = [0u8; 1024];
        let p2 = jose::verify_es256(&out2, key.verifying_key(), &mut buf2).unwrap();
        assert!(!core::str::from_utf8(p2).unwrap().contains(
            s.split("\"jti\":\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        ));
    }
}
