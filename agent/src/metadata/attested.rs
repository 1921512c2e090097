//! `/metadata/attested/document`: the VM's identity document, signed (INSTANCE.md §2.1).
//!
//! The answer is `{"encoding":"pkcs7","signature":"<base64 DER>"}`: a CMS `SignedData` (RFC
//! 5652, version 1) carrying the configured signer certificate and the compact JSON document
//! as attached `id-data` content, with one `SignerInfo` (issuerAndSerialNumber of the
//! certificate, digest SHA-256, **no signed attributes**: the signature covers the content
//! itself, as Azure's does). ES256 (P-256) in every build; RSA PKCS#1 v1.5 with SHA-256 (as
//! Azure signs) with the `rsa` feature.
//!
//! The DER goes through the `der` crate's encoder (structs with borrowed fields deriving
//! `Sequence`), into a fixed buffer: nothing allocates but the `rsa` crate's big integers.
//!
//! The document is valid for [`VALIDITY_S`] (Azure's samples show 5 s, 45 s and 6 h; this
//! agent picks 6 h).

#![allow(clippy::result_large_err)]

use super::civil::{two, Civil};
use crate::limits::{ATTEST_CERT_DER_MAX, ATTEST_DER_MAX, ATTEST_NONCE_MAX};
use crate::pem::{certificate_parts, CertificateParts};
use core::fmt;
use der::asn1::{AnyRef, ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Encode, Sequence};
use imds_hal::text::Text;
use serde::Serialize;

/// How long a signed document is valid (`timeStamp.expiresOn - createdOn`).
pub const VALIDITY_S: u64 = 6 * 3600;
/// First IMDS api-version with the attested document.
pub const MIN_API_VERSION: &str = "2018-10-01";

/// The signer's private key.
#[derive(Clone)]
pub enum AttestKey {
    /// P-256: ecdsa-with-SHA256.
    P256(p256::ecdsa::SigningKey),
    /// RSA: rsaEncryption (PKCS#1 v1.5 with SHA-256).
    #[cfg(feature = "rsa")]
    Rsa(alloc::boxed::Box<rsa::RsaPrivateKey>),
}

/// The configured signer: its key and its certificate (DER).
#[derive(Clone)]
pub struct Attestation {
    /// The private key.
    pub key: AttestKey,
    /// The certificate, DER (its public key is the key's).
    pub certificate: heapless::Vec<u8, ATTEST_CERT_DER_MAX>,
}

impl fmt::Debug for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Attestation(<key redacted>)")
    }
}

fn key_matches(key: &AttestKey, cert: &CertificateParts<'_>) -> bool {
    match key {
        AttestKey::P256(k) => {
            let point = k.verifying_key().to_encoded_point(false);
            cert.key_algorithm == crate::pem::EC_PUBLIC_KEY_OID
                && cert.public_key == point.as_bytes()
        }
        #[cfg(feature = "rsa")]
        AttestKey::Rsa(k) => {
            use rsa::pkcs1::DecodeRsaPublicKey;
            use rsa::traits::PublicKeyParts;
            cert.key_algorithm == OID_RSA_ENCRYPTION.as_bytes()
                && rsa::RsaPublicKey::from_pkcs1_der(cert.public_key)
                    .is_ok_and(|p| p.n() == k.n() && p.e() == k.e())
        }
    }
}

impl Attestation {
    /// A signer from its key and certificate (DER): the certificate must be X.509 and hold
    /// the key's public key. Err: the field at fault (`key` or `certificate`) and why.
    pub fn new(
        key: AttestKey,
        certificate: heapless::Vec<u8, ATTEST_CERT_DER_MAX>,
    ) -> Result<Attestation, (&'static str, &'static str)> {
        let cert = certificate_parts(&certificate)
            .ok_or(("certificate", "is not an X.509 certificate"))?;
        if !key_matches(&key, &cert) {
            return Err((
                "certificate",
                "does not hold the public key of `attestation.key`",
            ));
        }
        Ok(Attestation { key, certificate })
    }
}

/// A PEM certificate's DER (checked to be an X.509 certificate).
pub fn certificate_der(pem: &str) -> Result<heapless::Vec<u8, ATTEST_CERT_DER_MAX>, &'static str> {
    let mut der = [0u8; ATTEST_CERT_DER_MAX];
    let (label, der) = crate::pem::pem_decode(pem.trim(), &mut der)
        .ok_or("is not a PEM certificate (or larger than ATTEST_CERT_DER_MAX bytes of DER)")?;
    if label != "CERTIFICATE" {
        return Err("must be a PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    certificate_parts(der).ok_or("is not an X.509 certificate")?;
    heapless::Vec::from_slice(der).map_err(|_| "certificate too large")
}

// ---- ASN.1 (RFC 5280 certificate, read; RFC 5652 SignedData, written) ------------------------

/// id-signedData (1.2.840.113549.1.7.2).
const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// id-data (1.2.840.113549.1.7.1).
const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// id-sha256 (2.16.840.1.101.3.4.2.1).
const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// ecdsa-with-SHA256 (1.2.840.10045.4.3.2).
const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// rsaEncryption (1.2.840.113549.1.1.1).
#[cfg(feature = "rsa")]
const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// `AlgorithmIdentifier`.
#[derive(Clone, Copy, Sequence)]
struct AlgId<'a> {
    oid: ObjectIdentifier,
    #[asn1(optional = "true")]
    parameters: Option<AnyRef<'a>>,
}

/// A `SET OF` with one element (nothing to sort): the element's encoding under a SET tag.
#[derive(Clone, Copy)]
struct SetOfOne<T>(T);

impl<T> der::FixedTag for SetOfOne<T> {
    const TAG: der::Tag = der::Tag::Set;
}

impl<T: Encode> der::EncodeValue for SetOfOne<T> {
    fn value_len(&self) -> der::Result<der::Length> {
        self.0.encoded_len()
    }
    fn encode_value(&self, writer: &mut impl der::Writer) -> der::Result<()> {
        self.0.encode(writer)
    }
}

impl<'a, T: Decode<'a>> der::DecodeValue<'a> for SetOfOne<T> {
    fn decode_value<R: der::Reader<'a>>(reader: &mut R, header: der::Header) -> der::Result<Self> {
        reader.read_nested(header.length, |r| T::decode(r).map(SetOfOne))
    }
}

/// `ContentInfo` with `SignedData` content.
#[derive(Sequence)]
struct ContentInfo<'a> {
    content_type: ObjectIdentifier,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT")]
    content: SignedData<'a>,
}

/// `SignedData`.
#[derive(Sequence)]
struct SignedData<'a> {
    version: u8,
    digest_algorithms: SetOfOne<AlgId<'a>>,
    encap_content_info: EncapsulatedContentInfo<'a>,
    #[asn1(context_specific = "0", tag_mode = "IMPLICIT", optional = "true")]
    certificates: Option<SetOfOne<AnyRef<'a>>>,
    signer_infos: SetOfOne<SignerInfo<'a>>,
}

/// `EncapsulatedContentInfo`.
#[derive(Sequence)]
struct EncapsulatedContentInfo<'a> {
    e_content_type: ObjectIdentifier,
    #[asn1(context_specific = "0", tag_mode = "EXPLICIT", optional = "true")]
    e_content: Option<OctetStringRef<'a>>,
}

/// `ECDSA-Sig-Value`.
#[derive(Sequence)]
struct EcdsaSigValue<'a> {
    r: UintRef<'a>,
    s: UintRef<'a>,
}

/// `IssuerAndSerialNumber`.
#[derive(Clone, Copy, Sequence)]
struct IssuerAndSerialNumber<'a> {
    issuer: AnyRef<'a>,
    serial_number: AnyRef<'a>,
}

/// `SignerInfo` (version 1: issuerAndSerialNumber; no signed or unsigned attributes).
#[derive(Clone, Copy, Sequence)]
struct SignerInfo<'a> {
    version: u8,
    sid: IssuerAndSerialNumber<'a>,
    digest_algorithm: AlgId<'a>,
    signature_algorithm: AlgId<'a>,
    signature: OctetStringRef<'a>,
}

/// Why no document could be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignError {
    /// The stored certificate does not parse (cannot happen after validation).
    Certificate,
    /// The DER does not fit [`ATTEST_DER_MAX`] (or the encoder failed).
    TooLarge,
    /// The RSA signer failed.
    Signature,
}

/// The signature over `content` (DER ECDSA-Sig-Value, or the RSA signature) in `out`, and the
/// signature algorithm.
fn sign<'o>(
    key: &AttestKey,
    content: &[u8],
    out: &'o mut [u8; 512],
) -> Result<(&'o [u8], AlgId<'static>), SignError> {
    match key {
        AttestKey::P256(k) => {
            use p256::ecdsa::signature::Signer;
            let sig: p256::ecdsa::Signature = k.sign(content);
            // ECDSA-Sig-Value (RFC 5480), through the encoder the rest uses (ecdsa's
            // `to_der` decodes its output again to check it: a DER reader in the image).
            let (r, s) = sig.split_bytes();
            let value = EcdsaSigValue {
                r: UintRef::new(&r).map_err(|_| SignError::Signature)?,
                s: UintRef::new(&s).map_err(|_| SignError::Signature)?,
            };
            let n = value
                .encode_to_slice(&mut out[..])
                .map_err(|_| SignError::TooLarge)?
                .len();
            Ok((
                &out[..n],
                AlgId {
                    oid: OID_ECDSA_SHA256,
                    parameters: None,
                },
            ))
        }
        #[cfg(feature = "rsa")]
        AttestKey::Rsa(k) => {
            use rsa::signature::{SignatureEncoding, Signer};
            let sig = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new((**k).clone())
                .try_sign(content)
                .map_err(|_| SignError::Signature)?
                .to_vec();
            let dst = out.get_mut(..sig.len()).ok_or(SignError::TooLarge)?;
            dst.copy_from_slice(&sig);
            Ok((
                dst,
                AlgId {
                    oid: OID_RSA_ENCRYPTION,
                    parameters: Some(AnyRef::NULL),
                },
            ))
        }
    }
}

/// The CMS `SignedData` (DER) over `content`, signed by `att`, in `out`.
pub fn signed_data<'o>(
    att: &Attestation,
    content: &[u8],
    out: &'o mut [u8],
) -> Result<&'o [u8], SignError> {
    let cert = certificate_parts(&att.certificate).ok_or(SignError::Certificate)?;
    fn tlv((tag, value): (u8, &[u8])) -> Result<(der::Tag, &[u8]), SignError> {
        Ok((
            der::Tag::try_from(tag).map_err(|_| SignError::Certificate)?,
            value,
        ))
    }
    let (issuer_tag, issuer) = tlv(cert.issuer)?;
    let (serial_tag, serial) = tlv(cert.serial)?;
    let (cert_tag, cert_value) =
        tlv(crate::pem::der_tlv(&att.certificate).ok_or(SignError::Certificate)?)?;
    let bad = |_| SignError::Certificate;
    let mut sig_buf = [0u8; 512];
    let (signature, signature_algorithm) = sign(&att.key, content, &mut sig_buf)?;
    let sha256 = AlgId {
        oid: OID_SHA256,
        parameters: None,
    };
    let too_large = |_| SignError::TooLarge;
    let signer_info = SignerInfo {
        version: 1,
        sid: IssuerAndSerialNumber {
            issuer: AnyRef::new(issuer_tag, issuer).map_err(bad)?,
            serial_number: AnyRef::new(serial_tag, serial).map_err(bad)?,
        },
        digest_algorithm: sha256,
        signature_algorithm,
        signature: OctetStringRef::new(signature).map_err(too_large)?,
    };
    let info = ContentInfo {
        content_type: OID_SIGNED_DATA,
        content: SignedData {
            version: 1,
            digest_algorithms: SetOfOne(sha256),
            encap_content_info: EncapsulatedContentInfo {
                e_content_type: OID_DATA,
                e_content: Some(OctetStringRef::new(content).map_err(too_large)?),
            },
            certificates: Some(SetOfOne(AnyRef::new(cert_tag, cert_value).map_err(bad)?)),
            signer_infos: SetOfOne(signer_info),
        },
    };
    let n = info.encode_to_slice(out).map_err(too_large)?.len();
    Ok(&out[..n])
}

// ---- the document ------------------------------------------------------------------------------

/// Why a `nonce` is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadNonce;

/// The nonce to sign: the request's (at most [`ATTEST_NONCE_MAX`] ASCII alphanumerics), or
/// when absent or empty the current UTC time as `YYYYMMDD-HHMMSS` (Azure's default).
pub fn nonce(
    given: Option<&str>,
    unix_s: u64,
) -> Result<heapless::String<ATTEST_NONCE_MAX>, BadNonce> {
    match given {
        Some(n) if !n.is_empty() => {
            if n.len() > ATTEST_NONCE_MAX || !n.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(BadNonce);
            }
            heapless::String::try_from(n).map_err(|_| BadNonce)
        }
        _ => {
            let c = Civil::of(unix_s);
            let mut s = heapless::String::new();
            s.dec(c.year as u64);
            two(&mut s, c.month);
            two(&mut s, c.day);
            s.put("-");
            two(&mut s, c.hour);
            two(&mut s, c.minute);
            two(&mut s, c.second);
            Ok(s)
        }
    }
}

/// Azure's `MM/dd/yy HH:mm:ss -0000`.
fn azure_time(unix_s: u64) -> heapless::String<24> {
    let c = Civil::of(unix_s);
    let mut s = heapless::String::new();
    two(&mut s, c.month);
    s.put("/");
    two(&mut s, c.day);
    s.put("/");
    two(&mut s, (c.year % 100) as u8);
    s.put(" ");
    two(&mut s, c.hour);
    s.put(":");
    two(&mut s, c.minute);
    s.put(":");
    two(&mut s, c.second);
    s.put(" -0000");
    s
}

#[derive(Serialize)]
struct Plan<'a> {
    name: &'a str,
    product: &'a str,
    publisher: &'a str,
}

#[derive(Serialize)]
struct TimeStamp<'a> {
    #[serde(rename = "createdOn")]
    created_on: &'a str,
    #[serde(rename = "expiresOn")]
    expires_on: &'a str,
}

#[derive(Serialize)]
struct Document<'a> {
    nonce: &'a str,
    plan: Plan<'a>,
    #[serde(rename = "timeStamp")]
    time_stamp: TimeStamp<'a>,
    #[serde(rename = "vmId")]
    vm_id: &'a str,
    #[serde(rename = "subscriptionId")]
    subscription_id: &'a str,
    sku: &'a str,
    #[serde(rename = "licenseType")]
    license_type: &'a str,
}

/// The `compute` values the signed document carries (`""` when the config has none).
#[derive(Debug, Clone, Copy, Default)]
pub struct Claims<'a> {
    /// `vmId`.
    pub vm_id: &'a str,
    /// `subscriptionId`.
    pub subscription_id: &'a str,
    /// `sku`.
    pub sku: &'a str,
    /// `licenseType`.
    pub license_type: &'a str,
    /// `plan.name`.
    pub plan_name: &'a str,
    /// `plan.product`.
    pub plan_product: &'a str,
    /// `plan.publisher`.
    pub plan_publisher: &'a str,
}

/// Largest signed JSON document.
const DOCUMENT_MAX: usize = 640;

/// The compact JSON document for `nonce` at `unix_s`, in `out`.
pub fn document<'o>(
    claims: &Claims<'_>,
    nonce: &str,
    unix_s: u64,
    out: &'o mut [u8; DOCUMENT_MAX],
) -> Option<&'o [u8]> {
    let created = azure_time(unix_s);
    let expires = azure_time(unix_s + VALIDITY_S);
    let doc = Document {
        nonce,
        plan: Plan {
            name: claims.plan_name,
            product: claims.plan_product,
            publisher: claims.plan_publisher,
        },
        time_stamp: TimeStamp {
            created_on: &created,
            expires_on: &expires,
        },
        vm_id: claims.vm_id,
        subscription_id: claims.subscription_id,
        sku: claims.sku,
        license_type: claims.license_type,
    };
    let n = serde_json_core::to_slice(&doc, out).ok()?;
    Some(&out[..n])
}

/// The answer's body `{"encoding":"pkcs7","signature":"<base64 DER>"}` in `body`.
pub fn answer<const N: usize>(
    claims: &Claims<'_>,
    att: &Attestation,
    nonce: &str,
    unix_s: u64,
    body: &mut heapless::Vec<u8, N>,
) -> Result<(), SignError> {
    use base64ct::Encoding as _;
    let mut doc = [0u8; DOCUMENT_MAX];
    let content = document(claims, nonce, unix_s, &mut doc).ok_or(SignError::TooLarge)?;
    let mut der = [0u8; ATTEST_DER_MAX];
    let der = signed_data(att, content, &mut der)?;
    const HEAD: &[u8] = br#"{"encoding":"pkcs7","signature":""#;
    const TAIL: &[u8] = br#""}"#;
    body.clear();
    body.extend_from_slice(HEAD)
        .map_err(|_| SignError::TooLarge)?;
    let at = body.len();
    let len = base64ct::Base64::encoded_len(der);
    body.resize(at + len, 0).map_err(|_| SignError::TooLarge)?;
    base64ct::Base64::encode(der, &mut body[at..]).map_err(|_| SignError::TooLarge)?;
    body.extend_from_slice(TAIL)
        .map_err(|_| SignError::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Agent;
    use crate::config::tests::{doc, SYS};
    use crate::config::Config;
    use crate::config::ConfigError;
    use crate::imds::tests::ask_at;
    use crate::imds::{Now, Reply};
    use std::string::{String, ToString};
    use std::vec::Vec;

    pub(crate) const VM_ID: &str = "8d10da9e-7dd6-4a9c-9a6b-0d5e2b6c1f33";

    /// A P-256 key and a self-signed certificate for it (PEM), from rcgen.
    pub(crate) fn p256_signer() -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(std::vec!["metadata.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (key.serialize_pem(), cert.pem())
    }

    /// The test config with `extra` top-level fields (a JSON object's members).
    pub(crate) fn config_with(extra: serde_json::Value) -> Result<Config, ConfigError> {
        let mut v: serde_json::Value = serde_json::from_str(&doc("", SYS)).unwrap();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Config::parse(serde_json::to_string(&v).unwrap().as_bytes())
    }

    fn instance() -> serde_json::Value {
        serde_json::json!({
            "compute": {
                "vmId": VM_ID, "name": "vm-one", "subscriptionId": "11111111-2222-3333-4444-555555555555",
                "sku": "22_04-lts-gen2", "location": "westeurope",
                "plan": {"name": "p", "product": "q", "publisher": "r"},
                "tagsList": [{"name": "a", "value": "b"}]
            },
            "network": {"interface": []}
        })
    }

    fn agent_with(key: &str, cert: &str) -> Agent {
        Agent::new(
            config_with(serde_json::json!({
                "attestation": {"key": key, "certificate": cert},
                "instance": instance(),
            }))
            .unwrap(),
        )
    }

    const NOW: Now = Now {
        unix_s: 1_775_946_418,
        mono_us: 0,
    };

    fn get(agent: &mut Agent, target: &str) -> Reply {
        ask_at(
            agent,
            &std::format!(
                "GET {target} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n"
            ),
            NOW,
        )
    }

    /// The signed content and the signature of a `SignedData` blob, checked field by field.
    fn open(der: &[u8], cert_der: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let info = ContentInfo::from_der(der).unwrap();
        assert_eq!(info.content_type, OID_SIGNED_DATA);
        let sd = info.content;
        assert_eq!(sd.version, 1);
        assert_eq!(sd.digest_algorithms.0.oid, OID_SHA256);
        assert_eq!(sd.encap_content_info.e_content_type, OID_DATA);
        assert_eq!(sd.certificates.unwrap().0.to_der().unwrap(), cert_der);
        let si = sd.signer_infos.0;
        assert_eq!(si.version, 1);
        let cert = certificate_parts(cert_der).unwrap();
        use der::Tagged;
        assert_eq!(
            (u8::from(si.sid.issuer.tag()), si.sid.issuer.value()),
            cert.issuer
        );
        assert_eq!(
            (
                u8::from(si.sid.serial_number.tag()),
                si.sid.serial_number.value()
            ),
            cert.serial
        );
        assert_eq!(si.digest_algorithm.oid, OID_SHA256);
        assert_eq!(si.signature_algorithm.oid, OID_ECDSA_SHA256);
        (
            sd.encap_content_info.e_content.unwrap().as_bytes().to_vec(),
            si.signature.as_bytes().to_vec(),
        )
    }

    #[test]
    fn attested_document_is_a_signed_data_over_the_json() {
        use base64ct::Encoding as _;
        use p256::ecdsa::signature::Verifier;
        let (key, cert) = p256_signer();
        let mut agent = agent_with(&key, &cert);
        let r = get(
            &mut agent,
            "/metadata/attested/document?api-version=2025-04-07&nonce=abc123XYZ",
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["encoding"], "pkcs7");
        let der = base64ct::Base64::decode_vec(v["signature"].as_str().unwrap()).unwrap();
        let att = agent.attestation.clone().unwrap();
        let (content, sig) = open(&der, &att.certificate);
        let doc: serde_json::Value = serde_json::from_slice(&content).unwrap();
        assert_eq!(
            doc,
            serde_json::json!({
                "nonce": "abc123XYZ",
                "plan": {"name": "p", "product": "q", "publisher": "r"},
                "timeStamp": {"createdOn": "04/11/26 22:26:58 -0000", "expiresOn": "04/12/26 04:26:58 -0000"},
                "vmId": VM_ID,
                "subscriptionId": "11111111-2222-3333-4444-555555555555",
                "sku": "22_04-lts-gen2",
                "licenseType": ""
            })
        );
        // Compact JSON, keys in Azure's order.
        assert!(content.starts_with(br#"{"nonce":"abc123XYZ","plan":{"name":"p""#));
        #[allow(irrefutable_let_patterns)] // refutable with the `rsa` feature
        let AttestKey::P256(k) = &att.key
        else {
            panic!()
        };
        let sig = p256::ecdsa::Signature::from_der(&sig).unwrap();
        k.verifying_key().verify(&content, &sig).unwrap();
    }

    #[test]
    fn attested_nonce_rules() {
        assert_eq!(
            nonce(None, 1_775_946_418).unwrap().as_str(),
            "20260411-222658"
        );
        assert_eq!(nonce(Some(""), 0).unwrap().as_str(), "19700101-000000");
        assert_eq!(nonce(Some("a1"), 0).unwrap().as_str(), "a1");
        assert!(nonce(Some(&"a".repeat(32)), 0).is_ok());
        assert_eq!(nonce(Some(&"a".repeat(33)), 0), Err(BadNonce));
        assert_eq!(nonce(Some("a-b"), 0), Err(BadNonce));
        assert_eq!(nonce(Some("é"), 0), Err(BadNonce));
    }

    #[test]
    fn attested_route_errors() {
        let (key, cert) = p256_signer();
        let mut agent = agent_with(&key, &cert);
        let body = |r: &Reply| String::from_utf8_lossy(&r.body).into_owned();
        // Default nonce: the request time.
        let r = get(
            &mut agent,
            "/metadata/attested/document?api-version=2018-10-01",
        );
        assert_eq!(r.status, 200, "{}", body(&r));
        for (target, status) in [
            ("/metadata/attested/document", 400),
            ("/metadata/attested/document?api-version=2018-04-02", 400),
            ("/metadata/attested/document?api-version=2099-01-01", 400),
            ("/metadata/attested/document?api-version=2021-02-01&nonce=a%2Db", 400),
            (
                "/metadata/attested/document?api-version=2021-02-01&nonce=123456789012345678901234567890123",
                400,
            ),
            (
                "/metadata/attested/document?api-version=2021-02-01&api-version=2021-02-01",
                400,
            ),
        ] {
            let r = get(&mut agent, target);
            assert_eq!(r.status, status, "{target}: {}", body(&r));
        }
        let r = get(
            &mut agent,
            "/metadata/attested/document?api-version=2018-04-02",
        );
        assert!(body(&r).contains("newest-versions"), "{}", body(&r));
        // No Metadata header.
        let r = ask_at(
            &mut agent,
            "GET /metadata/attested/document?api-version=2021-02-01 HTTP/1.1\r\nHost: x\r\n\r\n",
            NOW,
        );
        assert_eq!(r.status, 400);
        // Not configured: 404.
        let mut bare = Agent::new(config_with(serde_json::json!({})).unwrap());
        let r = get(
            &mut bare,
            "/metadata/attested/document?api-version=2021-02-01",
        );
        assert_eq!(r.status, 404);
    }

    #[test]
    fn attestation_config_errors_name_the_field() {
        let (key, cert) = p256_signer();
        let (other_key, _) = p256_signer();
        let err = |v: serde_json::Value| {
            let mut s = String::new();
            config_with(v).unwrap_err().describe(&mut s);
            s
        };
        assert_eq!(
            err(serde_json::json!({"attestation": {"key": other_key, "certificate": cert}})),
            "config: field `attestation.certificate`: does not hold the public key of `attestation.key`"
        );
        assert_eq!(
            err(serde_json::json!({"attestation": {"key": key}})),
            "config: field `attestation.certificate` is required"
        );
        assert_eq!(
            err(serde_json::json!({"attestation": {"certificate": cert}})),
            "config: field `attestation.key` is required"
        );
        assert!(
            err(serde_json::json!({"attestation": {"key": cert, "certificate": cert}}))
                .starts_with("config: field `attestation.key`: ")
        );
        assert!(
            err(serde_json::json!({"attestation": {"key": key, "certificate": key}}))
                .starts_with("config: field `attestation.certificate`: must be a PEM certificate")
        );
        assert_eq!(
            err(serde_json::json!({"attestation": {"key": key, "certificate": cert, "x": 1}})),
            "config: unknown field `attestation.x`"
        );
        // `null`: none.
        assert!(config_with(serde_json::json!({"attestation": null}))
            .unwrap()
            .attestation
            .is_none());
    }

    #[test]
    fn metadata_endpoints_do_not_count_against_the_token_limit() {
        let (key, cert) = p256_signer();
        let mut agent = Agent::new(
            config_with(serde_json::json!({
                "attestation": {"key": key, "certificate": cert},
                "scheduled_events": [{"EventType": "Freeze"}],
                "limits": {"rate_per_s": 1, "in_flight": 1},
            }))
            .unwrap(),
        );
        for _ in 0..5 {
            let r = get(
                &mut agent,
                "/metadata/attested/document?api-version=2021-02-01",
            );
            assert_eq!(r.status, 200);
            let r = get(
                &mut agent,
                "/metadata/scheduledevents?api-version=2020-07-01",
            );
            assert_eq!(r.status, 200);
        }
        let token = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F";
        let r = get(&mut agent, token);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        // The limit is real: another mint in the same second is refused.
        let r = get(&mut agent, &std::format!("{token}&bypass_cache=true"));
        assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    }
}
