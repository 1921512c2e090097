//! Public-key pinning (`authority.spki_sha256`): an embedded-tls [`TlsVerifier`] that trusts
//! the server whose end-entity certificate carries the pinned key and that proves, with its
//! TLS 1.3 `CertificateVerify`, that it holds the private half.
//!
//! The pin is the SHA-256 of the certificate's DER `SubjectPublicKeyInfo` (RFC 7469 §2.4, what
//! curl's `--pinnedpubkey sha256//…` compares). The certificate is walked with the `der` crate
//! (p256's), the key decoded with p256 (or rsa), the signature checked the way embedded-tls's
//! own [`CertVerifier`](embedded_tls::pki::CertVerifier) does (RFC 8446 §4.4.3). Chain, name
//! and validity dates are not consulted: the key itself is the trust anchor.

use crate::limits::SPKI_MAX;
use embedded_tls::{
    Aes128GcmSha256, CertificateEntryRef, CertificateRef, CertificateVerifyRef, SignatureScheme,
    TlsCipherSuite, TlsError, TlsVerifier,
};
use p256::pkcs8::der::{
    self, asn1::AnyRef, Decode as _, Reader as _, SliceReader, Tag, TagNumber, Tagged as _,
};
use sha2::{Digest, Sha256};

type Hash = <Aes128GcmSha256 as TlsCipherSuite>::Hash;

/// Verifies the server against a pinned public key.
pub struct PinVerifier {
    pin: [u8; 32],
    /// The leaf's `SubjectPublicKeyInfo`, once its hash matched the pin.
    spki: Option<heapless::Vec<u8, SPKI_MAX>>,
    /// The handshake transcript up to the `Certificate` message.
    transcript: Option<Hash>,
}

impl PinVerifier {
    /// A verifier that trusts the server key whose SPKI hashes to `pin`.
    pub fn new(pin: [u8; 32]) -> Self {
        PinVerifier {
            pin,
            spki: None,
            transcript: None,
        }
    }
}

/// The DER `SubjectPublicKeyInfo` (tag and length included) of an X.509 certificate: the
/// seventh field of `tbsCertificate` when the `[0]` version is present, the sixth otherwise
/// (RFC 5280 §4.1).
pub fn certificate_spki(cert: &[u8]) -> der::Result<&[u8]> {
    let mut outer = SliceReader::new(cert)?;
    let certificate = AnyRef::decode(&mut outer)?;
    certificate.tag().assert_eq(Tag::Sequence)?;
    let mut fields = SliceReader::new(certificate.value())?;
    let tbs = AnyRef::decode(&mut fields)?;
    tbs.tag().assert_eq(Tag::Sequence)?;
    let mut tbs = SliceReader::new(tbs.value())?;
    let version = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber::N0,
    };
    if tbs.peek_tag()? == version {
        AnyRef::decode(&mut tbs)?;
    }
    // serialNumber, signature, issuer, validity, subject.
    for _ in 0..5 {
        AnyRef::decode(&mut tbs)?;
    }
    let spki = tbs.tlv_bytes()?;
    // It must be a SEQUENCE (AlgorithmIdentifier, BIT STRING).
    let mut check = SliceReader::new(spki)?;
    AnyRef::decode(&mut check)?.tag().assert_eq(Tag::Sequence)?;
    Ok(spki)
}

impl TlsVerifier<Aes128GcmSha256> for PinVerifier {
    fn set_hostname_verification(&mut self, _hostname: &str) -> Result<(), TlsError> {
        // The pinned key identifies the server; its certificate's names are not consulted.
        Ok(())
    }

    fn verify_certificate(
        &mut self,
        transcript: &Hash,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        let Some(CertificateEntryRef::X509(leaf)) = cert.entries.first() else {
            return Err(TlsError::InvalidCertificate);
        };
        let spki = certificate_spki(leaf).map_err(|_| TlsError::DecodeError)?;
        if Sha256::digest(spki)[..] != self.pin {
            return Err(TlsError::InvalidCertificate);
        }
        self.spki = Some(heapless::Vec::from_slice(spki).map_err(|_| TlsError::InsufficientSpace)?);
        self.transcript = Some(transcript.clone());
        Ok(())
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        let (Some(spki), Some(transcript)) = (self.spki.take(), self.transcript.take()) else {
            return Err(TlsError::InvalidCertificate);
        };
        // RFC 8446 §4.4.3: 64 spaces, the context string, a zero byte, the transcript hash.
        let mut message = [0x20u8; 64 + 34 + 32];
        message[64..98].copy_from_slice(b"TLS 1.3, server CertificateVerify\x00");
        message[98..].copy_from_slice(&transcript.finalize());
        let verified = match verify.signature_scheme {
            SignatureScheme::EcdsaSecp256r1Sha256 => {
                use p256::ecdsa::{signature::Verifier as _, DerSignature, VerifyingKey};
                use p256::pkcs8::DecodePublicKey as _;
                let key = VerifyingKey::from_public_key_der(&spki)
                    .map_err(|_| TlsError::InvalidCertificate)?;
                let signature = DerSignature::from_bytes(verify.signature)
                    .map_err(|_| TlsError::DecodeError)?;
                key.verify(&message, &signature).is_ok()
            }
            #[cfg(feature = "rsa")]
            SignatureScheme::RsaPssRsaeSha256 => {
                rsa_pss::<Sha256>(&spki, &message, verify.signature)?
            }
            #[cfg(feature = "rsa")]
            SignatureScheme::RsaPssRsaeSha384 => {
                rsa_pss::<sha2::Sha384>(&spki, &message, verify.signature)?
            }
            #[cfg(feature = "rsa")]
            SignatureScheme::RsaPssRsaeSha512 => {
                rsa_pss::<sha2::Sha512>(&spki, &message, verify.signature)?
            }
            _ => return Err(TlsError::InvalidSignatureScheme),
        };
        if verified {
            Ok(())
        } else {
            Err(TlsError::InvalidSignature)
        }
    }
}

/// RSASSA-PSS (rsaEncryption key) over `message` with digest `D`.
#[cfg(feature = "rsa")]
fn rsa_pss<D>(spki: &[u8], message: &[u8], signature: &[u8]) -> Result<bool, TlsError>
where
    D: Digest + sha2::digest::FixedOutputReset,
{
    use rsa::pkcs8::DecodePublicKey as _;
    use rsa::pss::{Signature, VerifyingKey};
    use rsa::signature::Verifier as _;
    let key =
        rsa::RsaPublicKey::from_public_key_der(spki).map_err(|_| TlsError::InvalidCertificate)?;
    let signature = Signature::try_from(signature).map_err(|_| TlsError::DecodeError)?;
    Ok(VerifyingKey::<D>::new(key)
        .verify(message, &signature)
        .is_ok())
}
