//! JOSE on p256 + sha2: base64url, ES256 compact JWS, the public JWK and its RFC 7638
//! thumbprint. No hand-written crypto: signing and verification are p256's ECDSA.

use base64ct::{Base64UrlUnpadded as B64, Encoding as _};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// JOSE operations that can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoseError {
    /// The output buffer is too small.
    TooLarge,
    /// Not a compact JWS (three base64url parts).
    Malformed,
    /// The header's `alg` is not ES256.
    UnsupportedAlg,
    /// The signature does not verify.
    BadSignature,
}

impl core::fmt::Display for JoseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            JoseError::TooLarge => "JWS larger than its buffer",
            JoseError::Malformed => "not a compact JWS",
            JoseError::UnsupportedAlg => "unsupported JWS algorithm",
            JoseError::BadSignature => "JWS signature does not verify",
        })
    }
}

impl core::error::Error for JoseError {}

/// Append the base64url (no padding) encoding of `data` to `out`.
pub fn b64url_append<const N: usize>(
    data: &[u8],
    out: &mut heapless::Vec<u8, N>,
) -> Result<(), JoseError> {
    let start = out.len();
    let need = B64::encoded_len(data);
    out.resize(start + need, 0)
        .map_err(|_| JoseError::TooLarge)?;
    B64::encode(data, &mut out[start..]).map_err(|_| JoseError::TooLarge)?;
    Ok(())
}

/// Base64url-decode `data` into `out`, returning the decoded prefix.
pub fn b64url_decode<'o>(data: &[u8], out: &'o mut [u8]) -> Result<&'o [u8], JoseError> {
    B64::decode(data, out).map_err(|_| JoseError::Malformed)
}

/// The public key's affine coordinates, base64url-encoded (43 characters each).
pub struct PublicJwk {
    /// The x coordinate, base64url.
    pub x: heapless::String<43>,
    /// The y coordinate, base64url.
    pub y: heapless::String<43>,
}

impl PublicJwk {
    /// The JWK of `key`.
    pub fn of(key: &VerifyingKey) -> PublicJwk {
        // Uncompressed SEC1 point: 0x04 || x || y. (Slicing its bytes rather than calling
        // `x()`/`y()` keeps sec1's tag decoding, and the `Debug` of its errors that its
        // `expect` would link, out of the image.)
        let point = key.to_encoded_point(false);
        let bytes = point.as_bytes();
        let enc = |c: Option<&[u8]>| {
            let mut s = heapless::String::<43>::new();
            let mut buf = [0u8; 43];
            if let Some(c) = c {
                if let Ok(n) = B64::encode(c, &mut buf).map(str::len) {
                    for &b in &buf[..n] {
                        let _ = s.push(b as char);
                    }
                }
            }
            s
        };
        PublicJwk {
            x: enc(bytes.get(1..33)),
            y: enc(bytes.get(33..65)),
        }
    }

    /// RFC 7638 thumbprint: SHA-256 over the required members in lexicographic order,
    /// base64url-encoded. Used as `kid`.
    pub fn thumbprint(&self) -> heapless::String<43> {
        let mut h = Sha256::new();
        h.update(b"{\"crv\":\"P-256\",\"kty\":\"EC\",\"x\":\"");
        h.update(self.x.as_bytes());
        h.update(b"\",\"y\":\"");
        h.update(self.y.as_bytes());
        h.update(b"\"}");
        let digest = h.finalize();
        let mut buf = [0u8; 43];
        let mut s = heapless::String::new();
        if let Ok(n) = B64::encode(&digest[..], &mut buf).map(str::len) {
            for &b in &buf[..n] {
                let _ = s.push(b as char);
            }
        }
        s
    }
}

/// Produce `b64(header).b64(claims).b64(sig)` signed with ES256 into `out`.
///
/// Never inlined: the ECDSA arithmetic inlined into the token endpoint grew it (issuer image
/// -320 B).
#[inline(never)]
pub fn sign_es256<const N: usize>(
    key: &SigningKey,
    header_json: &[u8],
    claims_json: &[u8],
    out: &mut heapless::Vec<u8, N>,
) -> Result<(), JoseError> {
    out.clear();
    b64url_append(header_json, out)?;
    out.push(b'.').map_err(|_| JoseError::TooLarge)?;
    b64url_append(claims_json, out)?;
    let sig: Signature = key.sign(out);
    out.push(b'.').map_err(|_| JoseError::TooLarge)?;
    b64url_append(&sig.to_bytes(), out)
}

/// Verify an ES256 compact JWS and return its decoded payload (in `payload_buf`).
pub fn verify_es256<'p>(
    token: &[u8],
    key: &VerifyingKey,
    payload_buf: &'p mut [u8],
) -> Result<&'p [u8], JoseError> {
    let dot1 = token
        .iter()
        .position(|&b| b == b'.')
        .ok_or(JoseError::Malformed)?;
    let dot2 = dot1
        + 1
        + token[dot1 + 1..]
            .iter()
            .position(|&b| b == b'.')
            .ok_or(JoseError::Malformed)?;
    let (signing_input, sig_b64) = (&token[..dot2], &token[dot2 + 1..]);
    let mut header = [0u8; 512];
    let header = b64url_decode(&token[..dot1], &mut header)?;
    // A compact check of `alg`: the header is ours or an authority's, and must say ES256.
    if !header.windows(13).any(|w| w == b"\"alg\":\"ES256\"") {
        return Err(JoseError::UnsupportedAlg);
    }
    let mut sig = [0u8; 64];
    let sig = b64url_decode(sig_b64, &mut sig)?;
    let sig = Signature::from_slice(sig).map_err(|_| JoseError::Malformed)?;
    key.verify(signing_input, &sig)
        .map_err(|_| JoseError::BadSignature)?;
    b64url_decode(&token[dot1 + 1..dot2], payload_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32].into()).unwrap()
    }

    #[test]
    fn sign_then_verify_roundtrip_and_tamper() {
        let k = key();
        let mut out: heapless::Vec<u8, 1024> = heapless::Vec::new();
        sign_es256(
            &k,
            br#"{"alg":"ES256","typ":"JWT"}"#,
            br#"{"aud":"x"}"#,
            &mut out,
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let payload = verify_es256(&out, k.verifying_key(), &mut buf).unwrap();
        assert_eq!(payload, br#"{"aud":"x"}"#);
        // Tamper with the payload: must not verify.
        let mut bad = out.clone();
        let i = bad.iter().position(|&b| b == b'.').unwrap() + 2;
        bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
        assert!(verify_es256(&bad, k.verifying_key(), &mut buf).is_err());
        // Another key: must not verify.
        let other = SigningKey::from_bytes(&[9u8; 32].into()).unwrap();
        assert_eq!(
            verify_es256(&out, other.verifying_key(), &mut buf),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn rfc7638_thumbprint_vector() {
        // Thumbprint of the RFC 7517 appendix A.1 EC key, computed with an independent tool.
        let x = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
        let y = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";
        let jwk = PublicJwk {
            x: heapless::String::try_from(x).unwrap(),
            y: heapless::String::try_from(y).unwrap(),
        };
        assert_eq!(
            jwk.thumbprint().as_str(),
            "cn-I_WNMClehiVp51i_0VpOENW1upEerA8sEam5hn-s"
        );
    }

    #[test]
    fn jwk_coordinates_are_43_chars() {
        let jwk = PublicJwk::of(key().verifying_key());
        assert_eq!(jwk.x.len(), 43);
        assert_eq!(jwk.y.len(), 43);
    }
}
