//! An identity's credential for the authority: its private key, the algorithm of its client
//! assertions, and the header values that name it (`kid`, `x5t#S256`, `x5t`).
//!
//! ES256 (P-256) always; with the `rsa` feature also PS256 and RS256 (RSA keys, for Microsoft
//! Entra ID, which rejects ES256 assertions). Keys are zeroized on drop (p256 and rsa do it)
//! and never shown by `Debug`.

use crate::jose;
use core::fmt;
use sha2::Digest;

/// Signature algorithm of a client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// RSASSA-PSS with SHA-256 (Entra ID's choice for certificate credentials).
    #[cfg(feature = "rsa")]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    #[cfg(feature = "rsa")]
    Rs256,
}

impl Alg {
    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            #[cfg(feature = "rsa")]
            Alg::Ps256 => "PS256",
            #[cfg(feature = "rsa")]
            Alg::Rs256 => "RS256",
        }
    }

    /// The config's `alg` for `key` (`None`: the key's natural choice).
    pub fn parse(alg: Option<&str>, key: &ClientKey) -> Result<Alg, &'static str> {
        match (alg, key) {
            (None | Some("ES256"), ClientKey::Es256(_)) => Ok(Alg::Es256),
            #[cfg(feature = "rsa")]
            (None | Some("PS256"), ClientKey::Rsa(_)) => Ok(Alg::Ps256),
            #[cfg(feature = "rsa")]
            (Some("RS256"), ClientKey::Rsa(_)) => Ok(Alg::Rs256),
            #[cfg(feature = "rsa")]
            (Some("PS256" | "RS256"), ClientKey::Es256(_)) => {
                Err("PS256 and RS256 need an RSA key; this key is P-256")
            }
            #[cfg(feature = "rsa")]
            (Some("ES256"), ClientKey::Rsa(_)) => Err("ES256 needs a P-256 key; this key is RSA"),
            #[cfg(not(feature = "rsa"))]
            (Some("PS256" | "RS256"), _) => {
                Err("RSA assertions need the `rsa` build feature, which this build lacks")
            }
            _ => Err("must be \"ES256\", \"PS256\" or \"RS256\""),
        }
    }
}

/// A private key of a supported type.
#[derive(Clone)]
pub enum ClientKey {
    /// A P-256 key (ES256).
    Es256(p256::ecdsa::SigningKey),
    /// An RSA key (PS256, RS256).
    #[cfg(feature = "rsa")]
    Rsa(alloc::boxed::Box<rsa::RsaPrivateKey>),
}

impl fmt::Debug for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientKey(<redacted>)")
    }
}

impl ClientKey {
    /// Decode a PKCS#8 PEM private key (P-256, or RSA with the `rsa` feature).
    pub fn from_pem(pem: &str) -> Result<ClientKey, &'static str> {
        match crate::pem::parse_signing_key(pem) {
            Ok(k) => Ok(ClientKey::Es256(k)),
            #[cfg(feature = "rsa")]
            Err(_) => {
                use rsa::pkcs8::DecodePrivateKey;
                let mut der = [0u8; crate::limits::PEM_MAX];
                let r = (|| {
                    let (label, der) = pem_rfc7468::decode(pem.trim().as_bytes(), &mut der)
                        .map_err(|_| "is not a PEM document")?;
                    if label != "PRIVATE KEY" {
                        return Err("must be a PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)");
                    }
                    rsa::RsaPrivateKey::from_pkcs8_der(der)
                        .map(|k| ClientKey::Rsa(alloc::boxed::Box::new(k)))
                        .map_err(|_| "is not a PKCS#8 P-256 or RSA private key")
                })();
                zeroize::Zeroize::zeroize(&mut der[..]);
                r
            }
            #[cfg(not(feature = "rsa"))]
            Err(e) => Err(e),
        }
    }

    /// RFC 7638 thumbprint of the public key: the `kid` of assertions.
    pub fn kid(&self) -> heapless::String<43> {
        match self {
            ClientKey::Es256(k) => jose::PublicJwk::of(k.verifying_key()).thumbprint(),
            #[cfg(feature = "rsa")]
            ClientKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts;
                let n = k.n().to_bytes_be();
                let e = k.e().to_bytes_be();
                let b64 = |v: &[u8]| {
                    let mut out: heapless::Vec<u8, 1400> = heapless::Vec::new();
                    let _ = jose::b64url_append(v, &mut out);
                    out
                };
                let mut h = sha2::Sha256::new();
                h.update(b"{\"e\":\"");
                h.update(b64(&e));
                h.update(b"\",\"kty\":\"RSA\",\"n\":\"");
                h.update(b64(&n));
                h.update(b"\"}");
                let mut out: heapless::Vec<u8, 43> = heapless::Vec::new();
                let _ = jose::b64url_append(&h.finalize(), &mut out);
                core::str::from_utf8(&out)
                    .ok()
                    .and_then(|s| heapless::String::try_from(s).ok())
                    .unwrap_or_default()
            }
        }
    }
}

/// Thumbprints of a certificate credential.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Thumbprints {
    /// base64url SHA-256 of the DER (`x5t#S256`).
    pub s256: heapless::String<43>,
    /// base64url SHA-1 of the DER (`x5t`, for RS256 with Entra ID).
    pub sha1: heapless::String<27>,
}

fn b64_string<const N: usize>(data: &[u8]) -> heapless::String<N> {
    let mut out: heapless::Vec<u8, N> = heapless::Vec::new();
    let _ = jose::b64url_append(data, &mut out);
    core::str::from_utf8(&out)
        .ok()
        .and_then(|s| heapless::String::try_from(s).ok())
        .unwrap_or_default()
}

/// Thumbprints of a PEM certificate.
pub fn thumbprints(pem: &str) -> Result<Thumbprints, &'static str> {
    let der = crate::pem::certificate_der(pem)?;
    let s256 = b64_string(&sha2::Sha256::digest(&der));
    #[cfg(feature = "rsa")]
    let sha1 = {
        use sha1::Digest as _;
        b64_string(&sha1::Sha1::digest(&der))
    };
    #[cfg(not(feature = "rsa"))]
    let sha1 = heapless::String::new();
    Ok(Thumbprints { s256, sha1 })
}

/// An identity's credential.
#[derive(Clone)]
pub struct Credential {
    /// How assertions are signed.
    pub alg: Alg,
    /// The private key.
    pub key: ClientKey,
    /// The assertion header's `kid`.
    pub kid: heapless::String<43>,
    /// Thumbprints of the client certificate (`x5t`, `x5t#S256`), if configured.
    pub cert: Option<Thumbprints>,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("alg", &self.alg)
            .field("key", &"<redacted>")
            .field("kid", &self.kid)
            .field("cert", &self.cert)
            .finish()
    }
}
