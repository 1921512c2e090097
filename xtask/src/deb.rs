//! `cargo xtask deb`: the Debian package of the host daemon, built with `cargo-deb` from
//! `[package.metadata.deb]` in `agent/Cargo.toml` (binary, systemd unit, networkd files, an
//! example config, maintainer scripts under `packaging/debian/`).

use crate::root;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn cargo_deb_version() -> Option<String> {
    let out = cargo()
        .args(["deb", "--version"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Make sure `cargo deb` works (`setup::Need::CargoDeb`: `cargo install cargo-deb --locked`
/// when `cargo deb --version` fails, saying so); its version.
pub fn ensure_cargo_deb() -> Result<String, String> {
    crate::setup::ensure(&[crate::setup::Need::CargoDeb])?;
    cargo_deb_version().ok_or_else(|| "`cargo deb --version` failed after installing it".into())
}

/// Build the package (a release build of the daemon, with the `rsa` feature for Entra ID)
/// and return the path of the `.deb`.
pub fn build() -> Result<PathBuf, String> {
    ensure_cargo_deb()?;
    let out_dir = crate::target_dir().join("debian");
    let mut c = cargo();
    c.args(["deb", "-p", "imds-agent", "--output"])
        .arg(&out_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!(
        "deb: running: cargo deb -p imds-agent --output {} (a release build: a few minutes the first time)",
        out_dir.display()
    );
    let out = c
        .spawn()
        .and_then(|child| child.wait_with_output())
        .map_err(|e| format!("{c:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{c:?} failed: {}", out.status));
    }
    // cargo-deb prints the path of the package it wrote on stdout.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .map(str::trim)
        .rfind(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .ok_or_else(|| format!("cargo deb printed no .deb path: {stdout}"))?;
    let deb = if deb.is_absolute() {
        deb
    } else {
        root().join(deb)
    };
    if !deb.is_file() {
        return Err(format!("{} was not written", deb.display()));
    }
    Ok(deb)
}

/// `cargo xtask deb`: build the package and print its path.
pub fn run(_args: &[String]) -> Result<(), String> {
    let deb = build()?;
    println!("{}", deb.display());
    Ok(())
}
