//! xtask as a library: the pieces that tests share with the `cargo xtask` commands
//! (demo configs, QEMU command lines), so that no command line is written twice.

pub mod authority;
pub mod config;
pub mod cycles;
pub mod deb;
pub mod http;
pub mod jit;
pub mod load;
pub mod qemu;
pub mod setup;
pub mod watchdog;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `target/` of the workspace (honours CARGO_TARGET_DIR; a relative one is taken from the
/// workspace root, where the xtask commands run cargo).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| root().join(d))
        .unwrap_or_else(|| root().join("target"))
}

/// Runs a command to completion within `timeout` (killed after it); Err with its output
/// unless it succeeded.
pub fn run_with_timeout(mut c: Command, timeout: Duration) -> Result<Output, String> {
    let what = format!("{c:?}");
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let out_t = drain(child.stdout.take().expect("stdout"));
    let err_t = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} timed out after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    };
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Send SIGTERM to `child` and wait (at most 10 s) for its exit status; panics naming `what`
/// if it is still running then (tests of a clean shutdown).
pub fn terminate(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what} did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
