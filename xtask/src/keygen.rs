//! `cargo xtask keygen [--alg ES256|PS256|RS256] --out FILE`: a fresh identity key (PKCS#8 PEM)
//! for broker mode, and the public JWK to register with the authority — with the `kid` the
//! agent puts in its client assertions (the RFC 7638 thumbprint).

use crate::Result;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand_core::OsRng;
use serde_json::json;

pub fn run(args: &[String]) -> Result {
    let alg = crate::flag_value(args, "--alg").unwrap_or_else(|| "ES256".into());
    let out = crate::flag_value(args, "--out").ok_or("--out FILE is required")?;
    let pem = match alg.as_str() {
        "ES256" => p256::SecretKey::random(&mut OsRng)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| e.to_string())?
            .to_string(),
        "PS256" | "RS256" => {
            let key = rsa::RsaPrivateKey::new(&mut OsRng, 2048).map_err(|e| e.to_string())?;
            rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&key, rsa::pkcs8::LineEnding::LF)
                .map_err(|e| e.to_string())?
                .to_string()
        }
        other => return Err(format!("--alg: `{other}` is not ES256, PS256 or RS256")),
    };
    let key = imds_agent::config::ClientKey::from_pem(&pem).map_err(|e| format!("key {e}"))?;
    let kid = key.kid();
    let jwk = public_jwk(&pem, &alg, &kid)?;
    std::fs::write(&out, &pem).map_err(|e| format!("{out}: {e}"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600));
    }
    eprintln!("wrote {out} (private key: keep it out of logs; put it in identities[].key)");
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({ "keys": [jwk] })).unwrap()
    );
    Ok(())
}

fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

fn public_jwk(pem: &str, alg: &str, kid: &str) -> Result<serde_json::Value> {
    if alg == "ES256" {
        use p256::pkcs8::DecodePrivateKey;
        let sk = p256::SecretKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
        let point =
            p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&sk.public_key(), false);
        Ok(
            json!({"kty": "EC", "crv": "P-256", "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
                  "kid": kid, "use": "sig", "alg": alg}),
        )
    } else {
        use rsa::pkcs8::DecodePrivateKey;
        use rsa::traits::PublicKeyParts;
        let k = rsa::RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
        Ok(
            json!({"kty": "RSA", "n": b64(&k.n().to_bytes_be()), "e": b64(&k.e().to_bytes_be()),
                  "kid": kid, "use": "sig", "alg": alg}),
        )
    }
}
