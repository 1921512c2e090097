//! The attested document's checks: a signer made by openssl, `openssl cms -verify` on the
//! answer (for the daemon's and the unikernel's tests).

use crate::target_dir;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory for one test under `target/test-events`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = target_dir()
        .join("test-events")
        .join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Run `openssl` with `args`.
pub fn openssl(args: &[&str]) -> std::process::Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl")
}

/// A key (PKCS#8 PEM) and a self-signed certificate for it, made by openssl.
pub fn signer(dir: &Path, newkey: &str) -> (String, String) {
    let (key, cert) = (dir.join("key.pem"), dir.join("cert.pem"));
    let mut args = vec!["req", "-x509", "-newkey", newkey];
    if newkey == "ec" {
        args.extend(["-pkeyopt", "ec_paramgen_curve:prime256v1"]);
    }
    args.extend([
        "-nodes",
        "-subj",
        "/CN=attested.metadata.example",
        "-days",
        "2",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    let out = openssl(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        std::fs::read_to_string(key).unwrap(),
        std::fs::read_to_string(cert).unwrap(),
    )
}

/// `openssl cms -verify -noverify` on the DER blob: the verified content, or the failure.
pub fn cms_verify(dir: &Path, der: &[u8], cert: &Path) -> Result<Vec<u8>, String> {
    let blob = dir.join("signature.der");
    std::fs::write(&blob, der).unwrap();
    let out = openssl(&[
        "cms",
        "-verify",
        "-noverify",
        "-binary",
        "-inform",
        "DER",
        "-in",
        blob.to_str().unwrap(),
        "-certfile",
        cert.to_str().unwrap(),
    ]);
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}
