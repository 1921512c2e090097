//! Pieces shared by the load tools (`bench`, `soak`): free ports, percentiles, a release
//! daemon with its log in a file, and a process's resident memory.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait until `addr` accepts connections.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// The `p`-th percentile (0..=100) of sorted values (nearest rank); 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of `values` (any order; the mean of the middle two for an even count); 0 for
/// none.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Resident memory of a process in KiB (`VmRSS` of /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Build the daemon in release; its path.
pub fn build_release_daemon() -> Result<PathBuf, String> {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(crate::root()).args([
        "build",
        "--release",
        "-p",
        "imds-agent",
        "--bin",
        "imds-agent",
    ]);
    crate::qemu::announce_build("the host daemon (release)", &c);
    let s = c.status().map_err(|e| format!("cargo build: {e}"))?;
    if !s.success() {
        return Err(format!("cargo build --release -p imds-agent failed: {s}"));
    }
    Ok(crate::target_dir().join("release/imds-agent"))
}

/// A running daemon (killed on drop, and by a [`Watchdog`] if this process dies first), its log
/// in a file.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    watchdog: Watchdog,
}

impl Daemon {
    /// Start `bin` with `config` on `127.0.0.1:port`, legacy listener off.
    pub fn start(bin: &Path, config: &Path, port: u16, log: &Path) -> Result<Daemon, String> {
        let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--legacy-listen",
                "off",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let watchdog = Watchdog::guard_child(&mut child).map_err(|e| format!("watchdog: {e}"))?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let d = Daemon {
            child,
            addr,
            log: log.to_path_buf(),
            watchdog,
        };
        if !wait_listening(addr, Duration::from_secs(15)) {
            return Err(format!(
                "the daemon did not listen on {addr}; see {}",
                log.display()
            ));
        }
        Ok(d)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.watchdog.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
