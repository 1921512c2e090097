//! `--check-config FILE` and `--init-config FILE`: what a machine without the source tree
//! needs to set the daemon up (the Debian package's post-install script runs `--init-config`).

use imds_agent::config::{Config, IdentityKind, DEFAULT_IMDS_LISTEN, DEFAULT_LEGACY_LISTEN};
use imds_agent::limits::CONFIG_MAX;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use zeroize::Zeroizing;

/// What the daemon would serve with `config` and these listeners: listeners, mode, and each
/// identity (kind, client id, resource id). Never a key.
pub fn describe(
    path: &Path,
    config: &Config,
    imds: SocketAddr,
    legacy: Option<SocketAddr>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}: ok", path.display());
    let _ = writeln!(s, "listen: imds {imds}");
    match legacy {
        Some(a) => {
            let _ = writeln!(s, "listen: legacy {a}");
        }
        None => {
            let _ = writeln!(s, "listen: legacy off");
        }
    }
    // The other Azure hosts' endpoints (never their secrets).
    if let Some(e) = &config.hosts.app_service {
        let _ = writeln!(s, "listen: app_service {}", e.listen);
    }
    if let Some(e) = &config.hosts.azure_ml {
        let _ = writeln!(s, "listen: azure_ml {}", e.listen);
    }
    if let Some(a) = &config.hosts.arc {
        let _ = writeln!(s, "listen: arc {} (key files in {})", a.listen, a.key_dir);
    }
    match &config.authority {
        Some(a) => {
            let _ = writeln!(
                s,
                "mode: broker (tokens from {}; {})",
                a.token_url,
                if config.signing_key.is_some() {
                    "own tokens signed too"
                } else {
                    "no signing key"
                }
            );
        }
        None => {
            let _ = writeln!(
                s,
                "mode: issuer (iss {}, tokens valid {} s)",
                config.issuer, config.token_lifetime_s
            );
        }
    }
    let _ = writeln!(s, "tenant: {}", config.tenant_id);
    let _ = writeln!(s, "identities: {}", config.identities.len());
    for i in &config.identities {
        let _ = writeln!(
            s,
            "identity: {} client_id={} resource_id={}",
            match i.kind {
                IdentityKind::System => "system",
                IdentityKind::User => "user",
            },
            i.client_id,
            i.resource_id
        );
    }
    s
}

/// A random GUID (version 4 layout) from the OS RNG.
fn guid() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    imds_agent::config::guid_v4(b).as_str().to_string()
}

/// This machine's host name as an Azure resource name (letters, digits, `-`, `_`, `.`; at
/// most 64 characters), or `vm`.
fn vm_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(64)
        .collect();
    if name.is_empty() || name == "localhost" {
        "vm".into()
    } else {
        name
    }
}

#[derive(Serialize)]
struct Doc<'a> {
    #[serde(rename = "_about")]
    about: &'a str,
    tenant_id: &'a str,
    issuer: &'a str,
    token_lifetime_s: u32,
    refresh_margin_s: u32,
    signing_key: &'a str,
    listen: Listen<'a>,
    identities: [Identity<'a>; 1],
}

#[derive(Serialize)]
struct Listen<'a> {
    imds: &'a str,
    legacy: &'a str,
}

#[derive(Serialize)]
struct Identity<'a> {
    kind: &'a str,
    client_id: &'a str,
    object_id: &'a str,
    resource_id: &'a str,
}

/// A fresh working configuration: a new P-256 signing key, a tenant, one system-assigned
/// identity, issuer mode, the default listeners. The key material is wiped when dropped.
pub fn fresh_config() -> Zeroizing<Vec<u8>> {
    let key = p256::SecretKey::random(&mut OsRng); // zeroized on drop
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .expect("PKCS#8 encoding of a P-256 key"); // Zeroizing<String>
    let tenant = guid();
    let issuer = format!("https://sts.windows.net/{tenant}/");
    let resource_id = format!(
        "/subscriptions/{}/resourceGroups/imds/providers/Microsoft.Compute/virtualMachines/{}",
        guid(),
        vm_name()
    );
    let (client_id, object_id) = (guid(), guid());
    let doc = Doc {
        about: "imds-agent configuration written by `imds-agent --init-config`. Fields starting \
                with _ are comments. Every field is described in \
                /usr/share/doc/imds-agent/config.example.json. Check with \
                `imds-agent --check-config FILE`.",
        tenant_id: &tenant,
        issuer: &issuer,
        token_lifetime_s: imds_agent::config::DEFAULT_TOKEN_LIFETIME_S,
        refresh_margin_s: imds_agent::config::DEFAULT_REFRESH_MARGIN_S,
        signing_key: &pem,
        listen: Listen {
            imds: DEFAULT_IMDS_LISTEN,
            legacy: DEFAULT_LEGACY_LISTEN,
        },
        identities: [Identity {
            kind: "system",
            client_id: &client_id,
            object_id: &object_id,
            resource_id: &resource_id,
        }],
    };
    // Room for the whole document up front: no reallocation leaves a copy of the key behind.
    let mut out = Zeroizing::new(Vec::with_capacity(8 * 1024));
    serde_json::to_writer_pretty(&mut *out, &doc).expect("JSON");
    out.push(b'\n');
    out
}

/// `--init-config FILE`: write a fresh config, mode 0600; never overwrite. Err(exit code,
/// message).
pub fn init_config(path: &Path) -> Result<(), (u8, String)> {
    use std::os::unix::fs::OpenOptionsExt;
    let doc = fresh_config();
    debug_assert!(doc.len() <= CONFIG_MAX);
    // What we write must be what the daemon accepts.
    if let Err(e) = Config::parse(&doc) {
        return Err((
            1,
            format!("internal error: the fresh config does not parse: {e}"),
        ));
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                (
                    2,
                    format!("{}: already exists; not overwriting it", path.display()),
                )
            } else {
                (1, format!("{}: {e}", path.display()))
            }
        })?;
    let written = f.write_all(&doc).and_then(|()| f.sync_all());
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(path);
        return Err((1, format!("{}: {e}", path.display())));
    }
    Ok(())
}
