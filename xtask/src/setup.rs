//! Installing what tests and benchmarks need, on a fresh Debian machine with only Rust.
//! Every install is idempotent and says what it runs.

use std::process::{Command, Stdio};
use std::sync::Once;

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Make sure `cmd` exists, installing Debian package `pkg` if not.
pub fn ensure_apt(cmd: &str, pkg: &str) -> Result<(), String> {
    if have(cmd) {
        return Ok(());
    }
    let sudo = if is_root() { "" } else { "sudo " };
    eprintln!("setup: `{cmd}` missing; running: {sudo}apt-get install -y {pkg}");
    static UPDATE: Once = Once::new();
    UPDATE.call_once(|| {
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("{sudo}apt-get update -qq"))
            .status();
    });
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq {pkg} >/dev/null"
        ))
        .status()
        .is_ok_and(|s| s.success());
    if ok && have(cmd) {
        Ok(())
    } else {
        Err(format!(
            "could not install `{pkg}` (needed for `{cmd}`); run: sudo apt-get install -y {pkg}"
        ))
    }
}

/// The bare-metal Rust target.
pub fn ensure_rust_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(crate::root())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("x86_64-unknown-none"))
        .unwrap_or(false);
    if installed {
        return Ok(());
    }
    eprintln!("setup: running: rustup target add x86_64-unknown-none");
    let ok = Command::new("rustup")
        .args(["target", "add", "x86_64-unknown-none"])
        .current_dir(crate::root())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        Ok(())
    } else {
        Err("could not install the target; run: rustup target add x86_64-unknown-none".into())
    }
}

/// QEMU for the unikernel.
pub fn ensure_qemu() -> Result<(), String> {
    ensure_apt("qemu-system-x86_64", "qemu-system-x86")
}
