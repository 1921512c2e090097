//! Azure Arc's key files (issue 13): the daemon's side of [`imds_agent::challenge`].
//!
//! The core issues a challenge (a file name and a secret) and answers 401 naming
//! `<key_dir>/<name>.key`; before that answer is sent, [`sync`] writes the file (the secret, no
//! newline, mode 0600, created new) and removes the files of used or expired secrets. The
//! directory is created 0700 when missing ([`prepare`]); at shutdown [`clear`] removes every
//! file still there. Errors are logged by path, never with a secret.

use imds_agent::Agent;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

fn key_path(dir: &str, name: &str) -> PathBuf {
    Path::new(dir).join(format!("{name}.key"))
}

/// Create the key directory (mode 0700, parents as needed) unless it exists.
pub fn prepare(dir: &str) -> io::Result<()> {
    if Path::new(dir).is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("arc.key_dir {dir}: {e}")))
}

fn write_key(path: &Path, secret: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(secret)?;
    f.sync_all()
}

/// Write the new key files and remove the used and expired ones. Returns the failures, as
/// log lines (paths only).
pub fn sync(agent: &mut Agent, now_us: u64) -> Vec<String> {
    let Some(dir) = agent.arc_key_dir().map(str::to_string) else {
        return Vec::new();
    };
    let failures = std::cell::RefCell::new(Vec::new());
    agent.sync_arc_keys(
        now_us,
        |name, secret| {
            let path = key_path(&dir, name);
            match write_key(&path, secret) {
                Ok(()) => true,
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    failures
                        .borrow_mut()
                        .push(format!("cannot write {}: {e}", path.display()));
                    false
                }
            }
        },
        |name| {
            let path = key_path(&dir, name);
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    failures
                        .borrow_mut()
                        .push(format!("cannot remove {}: {e}", path.display()));
                }
            }
        },
    );
    failures.into_inner()
}

/// Remove every key file still there (shutdown).
pub fn clear(agent: &mut Agent) {
    let Some(dir) = agent.arc_key_dir().map(str::to_string) else {
        return;
    };
    agent.clear_arc_keys(|name| {
        let _ = std::fs::remove_file(key_path(&dir, name));
    });
}
