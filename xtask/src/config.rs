//! `cargo xtask config --demo --out FILE`: a ready configuration with fresh keys.

use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand_core::{OsRng, RngCore};
use serde_json::json;
use std::path::Path;

/// A random GUID (version 4 layout).
pub fn guid() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    imds_agent::config::guid_v4(b).as_str().to_string()
}

/// A fresh P-256 private key as PKCS#8 PEM.
pub fn p256_pem() -> String {
    let key = p256::SecretKey::random(&mut OsRng);
    key.to_pkcs8_pem(LineEnding::LF)
        .expect("PKCS#8 encoding")
        .to_string()
}

/// The demo document: one system-assigned and two user-assigned identities, issuer mode.
pub fn demo(listen_imds: &str, listen_legacy: Option<&str>) -> serde_json::Value {
    let tenant = guid();
    let sub = guid();
    let rg = "imds-demo";
    let user = |name: &str| {
        json!({
            "kind": "user",
            "client_id": guid(),
            "object_id": guid(),
            "resource_id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"),
        })
    };
    json!({
        "tenant_id": tenant,
        "issuer": format!("https://sts.windows.net/{tenant}/"),
        "token_lifetime_s": 86400,
        "refresh_margin_s": 300,
        "signing_key": p256_pem(),
        "listen": { "imds": listen_imds, "legacy": listen_legacy },
        "identities": [
            {
                "kind": "system",
                "client_id": guid(),
                "object_id": guid(),
                "resource_id": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/virtualMachines/demo-vm"),
            },
            user("demo-one"),
            user("demo-two"),
        ]
    })
}

pub fn write_demo(
    out: &Path,
    listen_imds: &str,
    listen_legacy: Option<&str>,
) -> std::io::Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let doc = serde_json::to_string_pretty(&demo(listen_imds, listen_legacy)).expect("json");
    std::fs::write(out, doc)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
