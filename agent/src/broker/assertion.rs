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
    /// No entropy for the assertion id or the signature.
    Entropy(EntropyError),
    /// The assertion does not fit its buffer.
    TooLarge,
}

impl core::fmt::Display for AssertionError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AssertionError::Entropy(e) => {
                f.write_str("client assertion: ")?;
                f.write_str(e.as_str())
            }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    x5t: Option<&'a str>,
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
    let header = Header {
        alg: "ES256",
        typ: "JWT",
        kid,
        x5t_s256,
        x5t: None,
    };
    let mut h = [0u8; HEADER_MAX];
    let mut c = [0u8; CLAIMS_MAX];
    let (hl, cl) = encode(&header, client_id, token_url, now, entropy, &mut h, &mut c)?;
    jose::sign_es256(key, &h[..hl], &c[..cl], out).map_err(|_| AssertionError::TooLarge)
}

const HEADER_MAX: usize = 320;
const CLAIMS_MAX: usize = 768;

/// The JSON of `header` and of the claims (fresh random `jti`), into `h` and `c`.
fn encode<E: Entropy>(
    header: &Header<'_>,
    client_id: &str,
    token_url: &str,
    now: u64,
    entropy: &mut E,
    h: &mut [u8],
    c: &mut [u8],
) -> Result<(usize, usize), AssertionError> {
    let mut rnd = [0u8; 18];
    entropy.fill(&mut rnd).map_err(AssertionError::Entropy)?;
    let mut jti: heapless::Vec<u8, 24> = heapless::Vec::new();
    jose::b64url_append(&rnd, &mut jti).map_err(|_| AssertionError::TooLarge)?;
    let claims = Claims {
        aud: token_url,
        iss: client_id,
        sub: client_id,
        jti: core::str::from_utf8(&jti).unwrap_or(""),
        iat: now,
        nbf: now,
        exp: now + ASSERTION_LIFETIME_S,
    };
    let hl = serde_json_core::to_slice(header, h).map_err(|_| AssertionError::TooLarge)?;
    let cl = serde_json_core::to_slice(&claims, c).map_err(|_| AssertionError::TooLarge)?;
    Ok((hl, cl))
}

/// Sign a client assertion with `cred` (ES256, or PS256 / RS256 with the `rsa` feature).
pub fn sign<E: Entropy>(
    cred: &crate::broker::credential::Credential,
    client_id: &str,
    token_url: &str,
    now: u64,
    entropy: &mut E,
    out: &mut heapless::Vec<u8, ASSERTION_MAX>,
) -> Result<(), AssertionError> {
    use crate::broker::credential::ClientKey;
    let x5t_s256 = cred.cert.as_ref().map(|c| c.s256.as_str());
    match &cred.key {
        ClientKey::Es256(key) => es256(
            key, &cred.kid, x5t_s256, client_id, token_url, now, entropy, out,
        ),
        #[cfg(feature = "rsa")]
        ClientKey::Rsa(key) => rsa_sign(cred, key, client_id, token_url, now, entropy, out),
    }
}

/// PS256 (RSASSA-PSS, random salt) or RS256 (PKCS#1 v1.5) with the `rsa` crate. RS256
/// carries `x5t` (SHA-1 thumbprint) as Entra ID expects for certificate credentials.
#[cfg(feature = "rsa")]
#[allow(clippy::too_many_arguments)]
fn rsa_sign<E: Entropy>(
    cred: &crate::broker::credential::Credential,
    key: &rsa::RsaPrivateKey,
    client_id: &str,
    token_url: &str,
    now: u64,
    entropy: &mut E,
    out: &mut heapless::Vec<u8, ASSERTION_MAX>,
) -> Result<(), AssertionError> {
    use crate::broker::credential::Alg;
    use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
    let cert = cred.cert.as_ref();
    let header = Header {
        alg: cred.alg.name(),
        typ: "JWT",
        kid: &cred.kid,
        x5t_s256: cert.map(|c| c.s256.as_str()),
        x5t: cert
            .filter(|_| cred.alg == Alg::Rs256)
            .map(|c| c.sha1.as_str()),
    };
    let mut h = [0u8; HEADER_MAX];
    let mut c = [0u8; CLAIMS_MAX];
    let (hl, cl) = encode(&header, client_id, token_url, now, entropy, &mut h, &mut c)?;
    out.clear();
    jose::b64url_append(&h[..hl], out).map_err(|_| AssertionError::TooLarge)?;
    out.push(b'.').map_err(|_| AssertionError::TooLarge)?;
    jose::b64url_append(&c[..cl], out).map_err(|_| AssertionError::TooLarge)?;
    let sig = match cred.alg {
        Alg::Ps256 => {
            let signer = rsa::pss::BlindedSigningKey::<sha2::Sha256>::new(key.clone());
            let failed = core::cell::Cell::new(false);
            let mut rng = crate::broker::rng::Rng {
                entropy,
                failed: &failed,
            };
            let sig = signer
                .try_sign_with_rng(&mut rng, out)
                .map_err(|_| AssertionError::Entropy(imds_hal::EntropyError::Failed))?;
            if failed.get() {
                return Err(AssertionError::Entropy(imds_hal::EntropyError::Failed));
            }
            sig.to_vec()
        }
        _ => rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(key.clone())
            .sign(out)
            .to_vec(),
    };
    out.push(b'.').map_err(|_| AssertionError::TooLarge)?;
    jose::b64url_append(&sig, out).map_err(|_| AssertionError::TooLarge)
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
