//! A daemon started by a test process that dies without dropping it (kept in a `static`, or
//! the process killed) must not outlive it: `Daemon` has a watchdog.

use imds_tests::{Daemon, DemoConfig};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const HELPER_ENV: &str = "IMDS_TESTS_WATCHDOG_HELPER";

/// Run by `daemon_dies_with_its_test_process` in a child test process: start a daemon, keep it
/// in a static, print its pid and exit without running destructors.
#[test]
#[ignore = "helper run by daemon_dies_with_its_test_process"]
fn helper_leaks_a_daemon() {
    if std::env::var_os(HELPER_ENV).is_none() {
        return;
    }
    static LEAKED: OnceLock<Daemon> = OnceLock::new();
    let d = LEAKED.get_or_init(|| Daemon::start(&DemoConfig::new("watchdog")));
    println!("DAEMON-PID {}", d.pid());
    std::process::exit(0);
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for this purpose (its parent, the helper, is gone and init reaps it).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

#[test]
fn daemon_dies_with_its_test_process() {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "helper_leaks_a_daemon",
            "--nocapture",
        ])
        .env(HELPER_ENV, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = helper.stdout.take().unwrap();
    let pid: u32 = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find_map(|l| {
            l.strip_prefix("DAEMON-PID ")
                .and_then(|p| p.trim().parse().ok())
        })
        .expect("the helper printed the daemon's pid");
    let _ = helper.wait();
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the daemon (pid {pid}) outlived the test process that started it");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
