//! `imds_agent::jose::verify_es256` with a fixed key.
//!
//! Input: first byte even → the rest is a compact JWS to verify (arbitrary bytes: no panic, and
//! nothing verifies that the key did not sign). First byte odd → the rest is `header \n claims`,
//! signed with the fixed key by `sign_es256`, then verified: the round trip must give the claims
//! back whenever the header says ES256 and both fit their buffers.
#![no_main]

use imds_agent::jose::{sign_es256, verify_es256};
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::SigningKey;

const PAYLOAD_MAX: usize = 2048;
const HEADER_MAX: usize = 512;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7u8; 32].into()).expect("fixed key")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let key = key();
    let mut payload = [0u8; PAYLOAD_MAX];
    if mode & 1 == 0 {
        // Random bytes never carry a valid signature by this key; if one "verifies", the
        // verifier is broken (or the input is one of our own tokens in the seed corpus).
        if let Ok(p) = verify_es256(rest, key.verifying_key(), &mut payload) {
            assert!(p.len() <= PAYLOAD_MAX);
        }
        return;
    }
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let header = &rest[..split];
    let claims = rest.get(split + 1..).unwrap_or_default();
    let mut token: heapless::Vec<u8, 8192> = heapless::Vec::new();
    if sign_es256(&key, header, claims, &mut token).is_err() {
        return;
    }
    let result = verify_es256(&token, key.verifying_key(), &mut payload);
    let says_es256 = header.windows(13).any(|w| w == b"\"alg\":\"ES256\"");
    match result {
        Ok(p) => {
            assert!(
                says_es256,
                "verified a token whose header does not say ES256"
            );
            assert_eq!(p, claims, "round trip changed the claims");
        }
        Err(e) => assert!(
            !says_es256 || header.len() > HEADER_MAX || claims.len() > PAYLOAD_MAX,
            "own ES256 token ({} header, {} claims bytes) did not verify: {e:?}",
            header.len(),
            claims.len()
        ),
    }
});
