//! PEM and PKCS#8 for the two shapes the configuration holds: a P-256 key (issuer mode's
//! `signing_key`, broker mode's client keys) and a certificate (broker mode's `ca_cert` and
//! client certificates).
//!
//! The image used to decode them with the `pem-rfc7468` and `pkcs8`/`sec1`/`der` crates: ~30 KiB
//! of code for two fixed shapes (generic DER machinery and the `Debug` of its errors). Here they
//! are read on the base64 crate the image has anyway, with the same rules (the tests compare
//! both against those crates on valid and mutated input).

#[cfg(feature = "broker")]
use crate::limits::CA_DER_MAX;
use crate::limits::PEM_MAX;
use zeroize::Zeroize;

/// Decode a PKCS#8 PEM P-256 private key.
#[inline(never)]
pub fn parse_signing_key(pem: &str) -> Result<p256::ecdsa::SigningKey, &'static str> {
    let mut der = [0u8; PEM_MAX];
    let result = (|| {
        let (label, der) = pem_decode(pem.trim_ascii(), &mut der).ok_or("is not a PEM document")?;
        if label != "PRIVATE KEY" {
            return Err("must be a PKCS#8 PEM (-----BEGIN PRIVATE KEY-----)");
        }
        pkcs8_p256(der).ok_or("is not a PKCS#8 P-256 private key")
    })();
    der.zeroize();
    result
}

/// Decode a PEM certificate to DER.
#[cfg(feature = "broker")]
pub fn certificate_der(pem: &str) -> Result<heapless::Vec<u8, CA_DER_MAX>, &'static str> {
    let mut der = [0u8; CA_DER_MAX];
    let (label, der) = pem_decode(pem.trim_ascii(), &mut der)
        .ok_or("is not a PEM certificate (or larger than 2048 bytes of DER)")?;
    if label != "CERTIFICATE" {
        return Err("must be a PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    heapless::Vec::from_slice(der).map_err(|_| "certificate too large")
}

/// The PEM document `pem` (RFC 7468, as strict as the `pem-rfc7468` crate: explanatory text
/// before it, 64-column base64 lines, padding, matching labels): its label and its decoded
/// body in `out`. `None` if it is not one, or if `out` is too small.
pub fn pem_decode<'p, 'o>(pem: &'p str, out: &'o mut [u8]) -> Option<(&'p str, &'o [u8])> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    const END: &[u8] = b"-----END ";
    const WIDTH: usize = 64;
    fn strip_leading_eol(b: &[u8]) -> Option<&[u8]> {
        match b {
            [b'\r', b'\n', rest @ ..] | [b'\n' | b'\r', rest @ ..] => Some(rest),
            _ => None,
        }
    }
    fn strip_trailing_eol(b: &[u8]) -> Option<&[u8]> {
        match b {
            [head @ .., b'\r', b'\n'] | [head @ .., b'\n' | b'\r'] => Some(head),
            _ => None,
        }
    }
    let mut data = pem.as_bytes();
    // Explanatory text before the boundary, ending with a line feed.
    if !data.starts_with(BEGIN) {
        let at = data
            .windows(BEGIN.len() + 1)
            .position(|w| w[0] == b'\n' && &w[1..] == BEGIN)?;
        if data[..at].contains(&0) {
            return None;
        }
        data = &data[at + 1..];
    }
    let data = &data[BEGIN.len()..];
    // Label: printable characters but `-`, single spaces or tabs inside.
    let label_len = data.iter().position(|&b| b == b'-')?;
    let (label, rest) = data.split_at(label_len);
    let mut last_wsp = true;
    for &b in label {
        let wsp = b == b' ' || b == b'\t';
        if (wsp && last_wsp) || !(wsp || matches!(b, 0x21..=0x2C | 0x2E..=0x7E)) {
            return None;
        }
        last_wsp = wsp;
    }
    let label = core::str::from_utf8(label).ok()?;
    let body = strip_leading_eol(rest.strip_prefix(b"-----")?)?;
    let body = strip_trailing_eol(body).unwrap_or(body);
    let body = body
        .strip_suffix(b"-----")?
        .strip_suffix(label.as_bytes())?
        .strip_suffix(END)?;
    let mut text = strip_trailing_eol(body)?;
    // Base64 in lines of exactly WIDTH characters, the last one at most WIDTH. A full line is
    // 16 whole base64 blocks, so each line is decoded on its own, straight into `out` (no
    // copy of the text to wipe), with padding allowed in the last line only: the same as
    // decoding the lines joined.
    let mut n = 0;
    while !text.is_empty() {
        let line = match text.get(WIDTH..) {
            None | Some([]) => core::mem::take(&mut text),
            Some(after) => {
                let line = &text[..WIDTH];
                text = strip_leading_eol(after)?;
                if line.contains(&b'=') {
                    return None;
                }
                line
            }
        };
        n += <base64ct::Base64 as base64ct::Encoding>::decode(line, out.get_mut(n..)?)
            .ok()?
            .len();
    }
    Some((label, &out[..n]))
}

/// A DER reader for the fixed shapes below: definite lengths up to 65535, low tag numbers.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next tag and value.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let [tag, len, rest @ ..] = self.0 else {
            return None;
        };
        if tag & 0x1f == 0x1f {
            return None;
        }
        // Minimal length encodings only (DER).
        let (len, rest) = match (*len, rest) {
            (0..=0x7f, rest) => (usize::from(*len), rest),
            (0x81, [l, rest @ ..]) if *l >= 0x80 => (usize::from(*l), rest),
            (0x82, [h, l, rest @ ..]) if *h != 0 => (usize::from(*h) << 8 | usize::from(*l), rest),
            _ => return None,
        };
        let value = rest.get(..len)?;
        self.0 = &rest[len..];
        Some((*tag, value))
    }

    /// The next value, which must have tag `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        self.next().filter(|(t, _)| *t == tag).map(|(_, v)| v)
    }

    /// The context-specific field numbered `n`, as the `der` crate finds it: lower-numbered
    /// context-specific fields before it are skipped; `None` when the next field is not one.
    #[allow(clippy::type_complexity)]
    fn context_specific(&mut self, n: u8) -> Option<Option<(u8, &'a [u8])>> {
        loop {
            match self.0.first() {
                Some(&t) if t & 0xc0 == 0x80 && t & 0x1f < n => {
                    self.next()?;
                }
                Some(&t) if t & 0xc0 == 0x80 && t & 0x1f == n => return self.next().map(Some),
                _ => return Some(None),
            }
        }
    }

    /// The only value: tag `tag`, nothing after it.
    fn only(bytes: &'a [u8], tag: u8) -> Option<&'a [u8]> {
        let mut d = Der(bytes);
        let v = d.expect(tag)?;
        d.0.is_empty().then_some(v)
    }
}

const DER_INTEGER: u8 = 0x02;
const DER_BIT_STRING: u8 = 0x03;
const DER_OCTET_STRING: u8 = 0x04;
const DER_OID: u8 = 0x06;
const DER_SEQUENCE: u8 = 0x30;
/// id-ecPublicKey (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// prime256v1 / secp256r1 (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A P-256 key from PKCS#8 DER (RFC 5958 `OneAsymmetricKey`, v1 or v2, holding an RFC 5915
/// `ECPrivateKey`), with the rules of p256's `from_pkcs8_der`: algorithm id-ecPublicKey with
/// the P-256 curve; context-specific fields skipped where the `der` crate skips them; v2 must
/// carry the outer public key and v1 must not; an inner public key must match the private key.
pub fn pkcs8_p256(der: &[u8]) -> Option<p256::ecdsa::SigningKey> {
    let mut info = Der(Der::only(der, DER_SEQUENCE)?);
    let v2 = match info.expect(DER_INTEGER)? {
        [0] => false,
        [1] => true,
        _ => return None,
    };
    let mut alg = Der(info.expect(DER_SEQUENCE)?);
    if alg.expect(DER_OID)? != OID_EC_PUBLIC_KEY || alg.expect(DER_OID)? != OID_P256 {
        return None;
    }
    if !alg.0.is_empty() {
        return None;
    }
    let private_key = info.expect(DER_OCTET_STRING)?;
    // [0] attributes (skipped), [1] IMPLICIT BIT STRING public key, further context-specific
    // fields (skipped).
    let outer_public = match info.context_specific(1)? {
        Some((tag, value)) if tag & 0x20 == 0 => Some(bit_string_bytes(value)?),
        Some(_) => return None,
        None => None,
    };
    while !info.0.is_empty() {
        if info.next()?.0 & 0xc0 != 0x80 {
            return None;
        }
    }
    if outer_public.is_some() != v2 {
        return None;
    }

    let mut ec = Der(Der::only(private_key, DER_SEQUENCE)?);
    if ec.expect(DER_INTEGER)? != [1] {
        return None;
    }
    let scalar = ec.expect(DER_OCTET_STRING)?;
    // [0] EXPLICIT parameters (any one value; p256 does not check them), [1] EXPLICIT
    // BIT STRING public key.
    if let Some((tag, value)) = ec.context_specific(0)? {
        if tag & 0x20 == 0 || !oid_well_formed(Der::only(value, DER_OID)?) {
            return None;
        }
    }
    let public = match ec.context_specific(1)? {
        Some((tag, value)) if tag & 0x20 != 0 => {
            Some(bit_string_bytes(Der::only(value, DER_BIT_STRING)?)?)
        }
        Some(_) => return None,
        None => None,
    };
    if !ec.0.is_empty() {
        return None;
    }
    let key = p256::ecdsa::SigningKey::from_slice(scalar).ok()?;
    if let Some(public) = public {
        let compressed = matches!(public.first(), Some(2 | 3));
        if key.verifying_key().to_encoded_point(compressed).as_bytes() != public {
            return None;
        }
    }
    Some(key)
}

/// What a CMS signer needs from an X.509 certificate (RFC 5280): its issuer and serial number
/// (tag and value, to be written again as read) and its public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateParts<'a> {
    /// The issuer `Name`: tag, value.
    pub issuer: (u8, &'a [u8]),
    /// The `serialNumber` INTEGER: tag, value.
    pub serial: (u8, &'a [u8]),
    /// The public key's algorithm OID (content bytes).
    pub key_algorithm: &'a [u8],
    /// The public key (the BIT STRING's bytes).
    pub public_key: &'a [u8],
}

/// The parts of a DER certificate a signer needs (the shape is checked up to the public key:
/// `Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }`).
pub fn certificate_parts(der: &[u8]) -> Option<CertificateParts<'_>> {
    let mut cert = Der(Der::only(der, DER_SEQUENCE)?);
    let mut tbs = Der(cert.expect(DER_SEQUENCE)?);
    cert.expect(DER_SEQUENCE)?;
    cert.expect(DER_BIT_STRING)?;
    if !cert.0.is_empty() {
        return None;
    }
    // [0] EXPLICIT version, optional.
    if tbs.0.first() == Some(&0xa0) {
        tbs.next()?;
    }
    let serial = tbs.next().filter(|(t, _)| *t == DER_INTEGER)?;
    tbs.expect(DER_SEQUENCE)?;
    let issuer = tbs.next().filter(|(t, _)| *t == DER_SEQUENCE)?;
    tbs.expect(DER_SEQUENCE)?;
    tbs.expect(DER_SEQUENCE)?;
    let mut spki = Der(tbs.expect(DER_SEQUENCE)?);
    let mut alg = Der(spki.expect(DER_SEQUENCE)?);
    let key_algorithm = alg.expect(DER_OID)?;
    let public_key = bit_string_bytes(spki.expect(DER_BIT_STRING)?)?;
    Some(CertificateParts {
        issuer,
        serial,
        key_algorithm,
        public_key,
    })
}

/// The tag and value of a DER document that is one value.
pub fn der_tlv(der: &[u8]) -> Option<(u8, &[u8])> {
    let mut d = Der(der);
    let tlv = d.next()?;
    d.0.is_empty().then_some(tlv)
}

/// id-ecPublicKey, for [`CertificateParts::key_algorithm`].
pub const EC_PUBLIC_KEY_OID: &[u8] = OID_EC_PUBLIC_KEY;

/// Whether `oid` is an object identifier the `const-oid` crate accepts (3 to 39 bytes, a
/// valid first octet, base-128 arcs that fit in 32 bits, the last one complete).
fn oid_well_formed(oid: &[u8]) -> bool {
    if !(3..=39).contains(&oid.len()) || oid[0] >= 120 {
        return false;
    }
    let mut arc_bytes = 0;
    for &b in &oid[1..] {
        arc_bytes += 1;
        if arc_bytes > 5 && b & 0xf0 != 0 {
            return false;
        }
        if b & 0x80 == 0 {
            arc_bytes = 0;
        }
    }
    arc_bytes == 0
}

/// The bytes of a DER BIT STRING value with no unused bits.
fn bit_string_bytes(value: &[u8]) -> Option<&[u8]> {
    match value {
        [0, bytes @ ..] => Some(bytes),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::DecodePrivateKey;
    use proptest::prelude::*;
    use std::vec::Vec;

    fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut v = std::vec![tag];
        match value.len() {
            n @ 0..=0x7f => v.push(n as u8),
            n @ 0x80..=0xff => v.extend([0x81, n as u8]),
            n => v.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        v.extend_from_slice(value);
        v
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// PKCS#8 for `scalar`: v2 adds the outer public key; `inner_pk` the ECPrivateKey's
    /// (compressed or not); `params` the ECPrivateKey's [0] curve OID.
    fn pkcs8(scalar: [u8; 32], v2: bool, inner_pk: Option<bool>, params: bool) -> Vec<u8> {
        let key = p256::ecdsa::SigningKey::from_slice(&scalar).unwrap();
        let point = |c: bool| key.verifying_key().to_encoded_point(c).as_bytes().to_vec();
        let mut ec = cat(&[&tlv(DER_INTEGER, &[1]), &tlv(DER_OCTET_STRING, &scalar)]);
        if params {
            ec.extend(tlv(0xa0, &tlv(DER_OID, OID_P256)));
        }
        if let Some(c) = inner_pk {
            let bits = cat(&[&[0], &point(c)]);
            ec.extend(tlv(0xa1, &tlv(DER_BIT_STRING, &bits)));
        }
        let alg = cat(&[&tlv(DER_OID, OID_EC_PUBLIC_KEY), &tlv(DER_OID, OID_P256)]);
        let mut info = cat(&[
            &tlv(DER_INTEGER, &[u8::from(v2)]),
            &tlv(DER_SEQUENCE, &alg),
            &tlv(DER_OCTET_STRING, &tlv(DER_SEQUENCE, &ec)),
        ]);
        if v2 {
            info.extend(tlv(0x81, &cat(&[&[0], &point(false)])));
        }
        tlv(DER_SEQUENCE, &info)
    }

    fn shapes() -> Vec<Vec<u8>> {
        let s = [0x42; 32];
        std::vec![
            pkcs8(s, false, Some(false), false),
            pkcs8(s, false, None, false),
            pkcs8(s, false, Some(true), true),
            pkcs8(s, true, Some(false), true),
            pkcs8(s, true, None, false),
        ]
    }

    fn reference(der: &[u8]) -> Option<[u8; 32]> {
        p256::ecdsa::SigningKey::from_pkcs8_der(der)
            .ok()
            .map(|k| k.to_bytes().into())
    }

    fn ours(der: &[u8]) -> Option<[u8; 32]> {
        pkcs8_p256(der).map(|k| k.to_bytes().into())
    }

    fn pem(label: &str, der: &[u8]) -> std::string::String {
        let mut b64 = std::vec![0u8; der.len() * 4 / 3 + 4];
        let n = <base64ct::Base64 as base64ct::Encoding>::encode(der, &mut b64)
            .unwrap()
            .len();
        let mut s = std::format!("-----BEGIN {label}-----\n");
        for line in b64[..n].chunks(64) {
            s.push_str(core::str::from_utf8(line).unwrap());
            s.push('\n');
        }
        s.push_str(&std::format!("-----END {label}-----\n"));
        s
    }

    fn pem_reference(text: &str) -> Option<(std::string::String, Vec<u8>)> {
        let mut buf = [0u8; PEM_MAX];
        pem_rfc7468::decode(text.as_bytes(), &mut buf)
            .ok()
            .map(|(l, d)| (l.into(), d.to_vec()))
    }

    fn pem_ours(text: &str) -> Option<(std::string::String, Vec<u8>)> {
        let mut buf = [0u8; PEM_MAX];
        pem_decode(text, &mut buf).map(|(l, d)| (l.into(), d.to_vec()))
    }

    #[test]
    fn valid_shapes_agree() {
        for der in shapes() {
            assert!(reference(&der).is_some(), "reference refuses {der:02x?}");
            assert_eq!(ours(&der), reference(&der), "{der:02x?}");
        }
        let c = "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgevZzL1gdAFr88hb2\nOF/2NxApJCzGCEDdfSp6VQO30hyhRANCAAQRWz+jn65BtOMvdyHKcvjBeBSDZH2r\n1RTwjmYSi9R/zpBnuQ4EiMnCqfMPWiZqB4QdbAd0E7oH50VpuZ1P087G\n-----END PRIVATE KEY-----\n";
        let (label, der) = pem_ours(c).unwrap();
        assert_eq!(Some((label.clone(), der.clone())), pem_reference(c));
        assert_eq!(label, "PRIVATE KEY");
        assert!(ours(&der).is_some());
    }

    #[test]
    fn refusals() {
        let good = pkcs8([7; 32], false, Some(false), false);
        // Another key's public key, another curve, trailing data, a zero scalar.
        let mut other_pk = pkcs8([8; 32], false, Some(false), false);
        other_pk[36..68].copy_from_slice(&good[36..68]);
        let mut curve = good.clone();
        let at = curve.windows(8).position(|w| w == OID_P256).unwrap();
        curve[at + 7] = 0x22;
        let mut trailing = good.clone();
        trailing.push(0);
        for bad in [other_pk, curve, trailing, pkcs8_zero()] {
            assert_eq!(reference(&bad), None);
            assert_eq!(ours(&bad), None, "{bad:02x?}");
        }
    }

    fn pkcs8_zero() -> Vec<u8> {
        let mut d = pkcs8([7; 32], false, None, false);
        let n = d.len();
        d[n - 32..].fill(0);
        d
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn mutated_der_agrees(
            shape in 0usize..5,
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut der = shapes().swap_remove(shape);
            for (i, b) in edits {
                let i = i.index(der.len());
                der[i] = b;
            }
            if let Some(c) = cut {
                der.truncate(c.index(der.len() + 1));
            }
            prop_assert_eq!(ours(&der), reference(&der), "{:02x?}", der);
        }

        #[test]
        fn mutated_pem_agrees(
            shape in 0usize..5,
            edits in proptest::collection::vec(
                (any::<prop::sample::Index>(), prop::sample::select(std::vec![
                    'A', 'z', '0', '+', '/', '=', '-', ' ', '\t', '\n', '\r', ':', '\0', 'E',
                ])),
                0..3,
            ),
            preamble in prop::sample::select(std::vec!["", "text\n", "a\r\n", "x"]),
            label in prop::sample::select(std::vec!["PRIVATE KEY", "CERTIFICATE", "", "A  B", "a"]),
        ) {
            let text = std::format!("{preamble}{}", pem(label, &shapes()[shape]));
            let mut chars: Vec<char> = text.chars().collect();
            for (i, c) in edits {
                let i = i.index(chars.len());
                chars[i] = c;
            }
            let text: std::string::String = chars.into_iter().collect();
            let text = text.trim();
            prop_assert_eq!(pem_ours(text), pem_reference(text), "{:?}", text);
        }
    }
}
