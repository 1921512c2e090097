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
    self,
    asn1::{AnyRef, BitStringRef},
    Decode as _, Reader as _, SliceReader, Tag, TagNumber, Tagged as _,
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

/// The key of a DER `SubjectPublicKeyInfo`: the content of its `subjectPublicKey` BIT STRING
/// (for an EC key, the SEC1 point).
fn spki_key_bits(spki: &[u8]) -> der::Result<&[u8]> {
    let mut outer = SliceReader::new(spki)?;
    let info = AnyRef::decode(&mut outer)?;
    info.tag().assert_eq(Tag::Sequence)?;
    let mut fields = SliceReader::new(info.value())?;
    AnyRef::decode(&mut fields)?
        .tag()
        .assert_eq(Tag::Sequence)?;
    let bits = BitStringRef::decode(&mut fields)?;
    bits.as_bytes().ok_or_else(|| Tag::BitString.value_error())
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
                // The same calls as embedded-tls's own `CertVerifier` (so the image carries
                // one copy of them): the SEC1 point of the key, a DER signature. The key's
                // algorithm identifier is not checked again: the pin covers the whole SPKI.
                use p256::ecdsa::{signature::Verifier as _, Signature, VerifyingKey};
                let key = spki_key_bits(&spki)
                    .ok()
                    .and_then(|bits| VerifyingKey::from_sec1_bytes(bits).ok())
                    .ok_or(TlsError::InvalidCertificate)?;
                let signature =
                    Signature::from_der(verify.signature).map_err(|_| TlsError::DecodeError)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{signature::Signer as _, Signature, SigningKey};
    use p256::pkcs8::EncodePublicKey as _;

    /// A verifier past `verify_certificate` for `key`'s SPKI, with the transcript `hello`.
    fn verifier_for(key: &SigningKey) -> PinVerifier {
        let spki = key.verifying_key().to_public_key_der().unwrap();
        let mut transcript = Hash::new();
        transcript.update(b"hello");
        PinVerifier {
            pin: Sha256::digest(spki.as_bytes()).into(),
            spki: Some(heapless::Vec::from_slice(spki.as_bytes()).unwrap()),
            transcript: Some(transcript),
        }
    }

    /// A `CertificateVerify` signature by `key` over the transcript `transcript`.
    fn certificate_verify(key: &SigningKey, transcript: &[u8]) -> std::vec::Vec<u8> {
        let mut message = std::vec![0x20u8; 64];
        message.extend_from_slice(b"TLS 1.3, server CertificateVerify\x00");
        message.extend_from_slice(&Sha256::digest(transcript));
        let signature: Signature = key.sign(&message);
        signature.to_der().as_bytes().to_vec()
    }

    #[test]
    fn signature_by_the_pinned_key_over_the_transcript_is_accepted_and_no_other() {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let other = SigningKey::from_bytes(&[8u8; 32].into()).unwrap();
        let check = |signature: &[u8], scheme| {
            verifier_for(&key).verify_signature(CertificateVerifyRef {
                signature_scheme: scheme,
                signature,
            })
        };
        let good = certificate_verify(&key, b"hello");
        assert!(check(&good, SignatureScheme::EcdsaSecp256r1Sha256).is_ok());
        assert!(matches!(
            check(
                &certificate_verify(&key, b"hullo"),
                SignatureScheme::EcdsaSecp256r1Sha256
            ),
            Err(TlsError::InvalidSignature)
        ));
        assert!(matches!(
            check(
                &certificate_verify(&other, b"hello"),
                SignatureScheme::EcdsaSecp256r1Sha256
            ),
            Err(TlsError::InvalidSignature)
        ));
        assert!(check(
            &good[..good.len() - 1],
            SignatureScheme::EcdsaSecp256r1Sha256
        )
        .is_err());
        assert!(check(&good, SignatureScheme::Ed25519).is_err());
    }

    #[test]
    fn key_bits_of_an_spki_are_its_sec1_point() {
        let key = SigningKey::from_bytes(&[7u8; 32].into()).unwrap();
        let spki = key.verifying_key().to_public_key_der().unwrap();
        let point = key.verifying_key().to_encoded_point(false);
        assert_eq!(spki_key_bits(spki.as_bytes()).unwrap(), point.as_bytes());
        let bytes = spki.as_bytes();
        assert!(spki_key_bits(&bytes[..bytes.len() - 1]).is_err());
        assert!(spki_key_bits(b"").is_err());
    }
}
