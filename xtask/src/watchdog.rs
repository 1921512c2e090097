//! Kill a child process when this process dies without cleaning up.
//!
//! `Drop` impls do not run when a test binary exits with values still in `static`s, nor when
//! the process is killed. A [`Watchdog`] is a `sh` that waits on a pipe from this process and
//! kills the guarded child when the pipe closes, which the kernel does however this process
//! ends. Disarm it once the child has been reaped, so that a reused pid is never killed.

use std::io;
use std::process::{Child, Command, Stdio};

/// Kills process `pid` (with SIGKILL) when this process ends; see the module docs.
#[derive(Debug)]
pub struct Watchdog {
    sh: Option<Child>,
}

impl Watchdog {
    /// Watch over `pid`, a child of this process that is still running.
    pub fn guard(pid: u32) -> io::Result<Watchdog> {
        let sh = Command::new("sh")
            .arg("-c")
            .arg(format!("read _ignored; kill -9 {pid} 2>/dev/null"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Watchdog { sh: Some(sh) })
    }

    /// Watch over `child`; if the watchdog cannot start, kill the child and fail.
    pub fn guard_child(child: &mut Child) -> io::Result<Watchdog> {
        Watchdog::guard(child.id()).inspect_err(|_| {
            let _ = child.kill();
            let _ = child.wait();
        })
    }

    /// The guarded child is gone (reaped): stop watching. The `sh` is killed before its pipe
    /// closes, so it never runs its `kill`.
    pub fn disarm(&mut self) {
        if let Some(mut sh) = self.sh.take() {
            let _ = sh.kill();
            let _ = sh.wait();
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.disarm();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn wait_gone(child: &mut Child) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn kills_when_the_pipe_closes() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut w = Watchdog::guard(child.id()).unwrap();
        // What the kernel does when this process dies: the pipe's write end closes.
        drop(w.sh.as_mut().unwrap().stdin.take());
        assert!(wait_gone(&mut child), "the watchdog did not kill the child");
        w.disarm();
    }

    #[test]
    fn disarmed_does_not_kill() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let mut w = Watchdog::guard(child.id()).unwrap();
        w.disarm();
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            child.try_wait().unwrap().is_none(),
            "disarmed watchdog killed"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}
