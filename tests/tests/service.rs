//! The host daemon as a system service: systemd readiness on `$NOTIFY_SOCKET`, journal
//! priorities under `JOURNAL_STREAM`, `--check-config` / `--init-config` / `--version` /
//! `--help`, the unit accepted by `systemd-analyze verify`, and the Debian package.
//!
//! Everything runs the real daemon binary of the workspace over real (loopback, Unix
//! datagram) sockets; the package is built once, by the same library function as
//! `cargo xtask deb`.

use imds_tests::{daemon_binary, get, root, target_dir, token_target, DemoConfig, Watchdog};
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MGMT: &str = "https://management.azure.com/";
const MD: &str = "Metadata: true";

/// A fresh directory for one test, under target/.
fn scratch(name: &str) -> PathBuf {
    let d = target_dir()
        .join("test-service")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The daemon binary with the systemd variables of this process (if any) removed.
fn daemon() -> Command {
    let mut c = Command::new(daemon_binary());
    c.env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("run imds-agent")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A spawned daemon whose stderr is collected by a thread until it exits.
struct Spawned {
    child: Child,
    watchdog: Watchdog,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Spawned {
    fn new(mut c: Command) -> Spawned {
        let mut child = c
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imds-agent");
        let watchdog = Watchdog::guard_child(&mut child).expect("watchdog");
        let mut err = child.stderr.take().unwrap();
        let stderr = Some(std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }));
        Spawned {
            child,
            watchdog,
            stderr,
        }
    }

    fn sigterm(&self) {
        let ok = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -TERM");
    }

    /// Wait for the exit (at most 20 s); the exit code and everything written to stderr.
    fn wait(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("imds-agent did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        self.watchdog.disarm();
        let err = self.stderr.take().unwrap().join().unwrap();
        (status.code(), err)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.watchdog.disarm();
    }
}

/// A datagram socket standing in for systemd's notification socket.
fn notify_socket(dir: &Path) -> (UnixDatagram, PathBuf) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (sock, path)
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 20 s");
    text(&buf[..n])
}

/// `STATUS=serving N identities on A, B` → (N, [A, B]).
fn parse_status(msg: &str) -> (usize, Vec<SocketAddr>) {
    let status = msg
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {msg:?}"));
    let rest = status
        .strip_prefix("serving ")
        .unwrap_or_else(|| panic!("STATUS={status}"));
    let (n, rest) = rest.split_once(" identities on ").expect("STATUS format");
    let addrs = rest
        .split(", ")
        .map(|a| a.parse().expect("ADDR:PORT in STATUS"))
        .collect();
    (n.parse().unwrap(), addrs)
}

#[test]
fn ready_once_listening_then_stopping_on_sigterm() {
    let dir = scratch("notify");
    let (sock, path) = notify_socket(&dir);
    let cfg = DemoConfig::new("notify");
    let mut c = daemon();
    c.env("NOTIFY_SOCKET", &path)
        .arg("--config")
        .arg(&cfg.path)
        .args(["--listen", "127.0.0.1:0", "--legacy-listen", "127.0.0.1:0"]);
    let d = Spawned::new(c);

    // The first datagram is READY=1 with the status; nothing comes before it.
    let msg = recv(&sock);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    let (n, addrs) = parse_status(&msg);
    assert_eq!(n, 3, "the demo config has 3 identities: {msg:?}");
    assert_eq!(addrs.len(), 2, "both listeners in STATUS: {msg:?}");
    // At that moment the listener answers a token request at once.
    let r = get(addrs[0], &token_target(MGMT, ""), &[MD]);
    assert_eq!(r.status, 200, "token right after READY=1");
    assert!(r.json()["access_token"].as_str().is_some());
    // The legacy listener accepts too.
    std::net::TcpStream::connect_timeout(&addrs[1], Duration::from_secs(2))
        .expect("legacy listener accepts after READY=1");

    d.sigterm();
    let msg = recv(&sock);
    assert!(msg.lines().any(|l| l == "STOPPING=1"), "{msg:?}");
    let (code, log) = d.wait();
    assert_eq!(code, Some(0), "SIGTERM exits 0; log:\n{log}");
    assert!(log.contains("shutting down"), "{log}");
    // Without JOURNAL_STREAM the log has no priority prefixes.
    assert!(!log.lines().any(|l| l.starts_with('<')), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn no_ready_when_a_listener_cannot_be_bound() {
    // The second listener's port is taken: the first one was bound, but READY=1 must wait for
    // every listener, so the daemon fails (exit 1) without ever sending it.
    let dir = scratch("notready");
    let (sock, path) = notify_socket(&dir);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = DemoConfig::new("notready");
    let mut c = daemon();
    c.env("NOTIFY_SOCKET", &path)
        .arg("--config")
        .arg(&cfg.path)
        .args(["--listen", "127.0.0.1:0", "--legacy-listen"])
        .arg(format!("127.0.0.1:{port}"));
    let (code, log) = Spawned::new(c).wait();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("cannot listen"), "{log}");
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    match sock.recv(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("nothing may be notified, got {other:?}"),
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Wait until `pred` holds for the log file the daemon writes (stderr to a file, so the
/// test can read it while the daemon runs).
fn wait_log(path: &Path, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = std::fs::read_to_string(path).unwrap_or_default();
        if pred(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "log never matched:\n{s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start the daemon with stderr to a file, make a 200 and a 400 request, SIGTERM it; the log.
fn log_of_a_session(name: &str, journal: bool) -> String {
    let dir = scratch(name);
    let log_path = dir.join("stderr.log");
    let cfg = DemoConfig::new(name);
    let mut c = daemon();
    if journal {
        c.env("JOURNAL_STREAM", "8:12345");
    }
    c.arg("--config")
        .arg(&cfg.path)
        .args(["--listen", "127.0.0.1:0", "--legacy-listen", "off"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    let mut child = c.spawn().unwrap();
    let mut watchdog = Watchdog::guard_child(&mut child).unwrap();
    let log = wait_log(&log_path, |s| s.contains("listening"));
    let imds: SocketAddr = log
        .split_whitespace()
        .find_map(|w| w.strip_prefix("imds="))
        .and_then(|a| a.parse().ok())
        .expect("imds= in the listening line");
    assert_eq!(get(imds, &token_target(MGMT, ""), &[MD]).status, 200);
    // No Metadata header: refused with 400.
    assert_eq!(get(imds, &token_target(MGMT, ""), &[]).status, 400);
    wait_log(&log_path, |s| s.contains(" 400 "));
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().unwrap();
    watchdog.disarm();
    assert!(status.success(), "{status}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    log
}

#[test]
fn journal_priorities_only_under_journal_stream() {
    let log = log_of_a_session("journal", true);
    let line = |what: &str| {
        log.lines()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no line with {what:?}:\n{log}"))
            .to_string()
    };
    for l in log.lines() {
        assert!(
            l.starts_with("<6>") || l.starts_with("<4>") || l.starts_with("<3>"),
            "every line has a priority: {l:?}\n{log}"
        );
    }
    assert!(line("listening").starts_with("<6>imds-agent: listening"));
    assert!(line(" 200 ").starts_with("<6>127.0.0.1 GET "), "{log}");
    assert!(line(" 400 ").starts_with("<4>127.0.0.1 GET "), "{log}");
    assert!(line("shutting down").starts_with("<6>imds-agent: signal"));

    let plain = log_of_a_session("nojournal", false);
    assert!(plain.contains("listening") && plain.contains(" 400 "));
    for l in plain.lines() {
        assert!(
            !l.starts_with('<'),
            "no prefix without JOURNAL_STREAM: {l:?}"
        );
    }

    // Errors: a bad config at start, and a listener that cannot be bound.
    let bad = DemoConfig::from_json("journal-bad", serde_json::json!({"tenant_id": "x"}));
    let mut c = daemon();
    c.env("JOURNAL_STREAM", "8:12345")
        .arg("--config")
        .arg(&bad.path);
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.starts_with("<3>imds-agent: "), "{err}");
    assert!(err.lines().all(|l| l.starts_with("<3>")), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = DemoConfig::new("journal-bind");
    let mut c = daemon();
    c.env("JOURNAL_STREAM", "8:12345")
        .arg("--config")
        .arg(&cfg.path)
        .arg("--listen")
        .arg(taken.local_addr().unwrap().to_string())
        .args(["--legacy-listen", "off"]);
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.starts_with("<3>imds-agent: cannot listen"), "{err}");
}

/// `--check-config FILE` output, and the daemon's own start on the same file.
fn check_and_start(path: &Path) -> (Output, Output) {
    let mut c = daemon();
    c.arg("--check-config").arg(path);
    let check = run(c);
    let mut c = daemon();
    c.arg("--config")
        .arg(path)
        .args(["--listen", "127.0.0.1:0", "--legacy-listen", "off"]);
    // A config that is good would serve: only bad ones are started here.
    let start = run(c);
    (check, start)
}

#[test]
fn check_config_good() {
    let cfg = DemoConfig::new("check-good");
    let mut c = daemon();
    c.arg("--check-config").arg(&cfg.path);
    let out = run(c);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("mode: issuer"), "{stdout}");
    assert!(stdout.contains("listen: imds 127.0.0.1:0"), "{stdout}");
    assert!(stdout.contains("identities: 3"), "{stdout}");
    for id in cfg.system.iter().chain(cfg.users.iter()) {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("identity: {}", id.kind))
                    && l.contains(&id.client_id)
                    && l.contains(&id.resource_id)),
            "{id:?} in\n{stdout}"
        );
    }
    // Never the key: neither the PEM armour nor any line of its body.
    let all = format!("{stdout}{}", text(&out.stderr));
    assert!(!all.contains("PRIVATE KEY"), "{all}");
    let pem = cfg.json["signing_key"].as_str().unwrap();
    for body in pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!all.contains(body), "key material in the output");
    }
    // The listener overrides are applied as at start.
    let mut c = daemon();
    c.arg("--check-config").arg(&cfg.path).args([
        "--listen",
        "127.0.0.2:81",
        "--legacy-listen",
        "off",
    ]);
    let stdout = text(&run(c).stdout);
    assert!(
        stdout.contains("listen: imds 127.0.0.2:81") && stdout.contains("listen: legacy off"),
        "{stdout}"
    );
}

#[test]
fn check_config_bad_exits_2_with_the_start_message() {
    let dir = scratch("check-bad");
    let base = xtask::config::demo("127.0.0.1:0", None);
    let mut bad_guid = base.clone();
    bad_guid["identities"][0]["client_id"] = "not-a-guid".into();
    let mut missing = base.clone();
    missing.as_object_mut().unwrap().remove("tenant_id");
    let mut unknown = base.clone();
    unknown["listn"] = serde_json::json!({});
    let not_json = dir.join("not-json.json");
    std::fs::write(&not_json, b"{\"tenant_id\": ").unwrap();
    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "missing file",
            dir.join("does-not-exist.json"),
            "no configuration supplied",
        ),
        ("not JSON", not_json, "config:"),
        (
            "bad GUID",
            DemoConfig::from_json("check-guid", bad_guid).path,
            "identities[0].client_id",
        ),
        (
            "missing field",
            DemoConfig::from_json("check-missing", missing).path,
            "`tenant_id` is required",
        ),
        (
            "unknown field",
            DemoConfig::from_json("check-unknown", unknown).path,
            "unknown field `listn`",
        ),
    ];
    for (what, path, expect) in cases {
        let (check, start) = check_and_start(&path);
        let (c_err, s_err) = (text(&check.stderr), text(&start.stderr));
        assert_eq!(check.status.code(), Some(2), "{what}: {c_err}");
        assert_eq!(start.status.code(), Some(2), "{what}: {s_err}");
        assert!(check.stdout.is_empty(), "{what}: nothing on stdout");
        assert_eq!(c_err, s_err, "{what}: the same message as at start");
        assert!(
            c_err.starts_with(&format!("imds-agent: {}: ", path.display())),
            "{what}: {c_err}"
        );
        assert!(c_err.contains(expect), "{what}: {c_err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn version_and_help() {
    let mut c = daemon();
    c.arg("--version");
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("imds-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
    let mut c = daemon();
    c.arg("--help");
    let out = run(c);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--legacy-listen",
        "--check-config",
        "--init-config",
        "--version",
        "--help",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(flag) || l.contains(&format!(", {flag}"))),
            "--help has a line for {flag}:\n{help}"
        );
    }
    let mut c = daemon();
    c.arg("--bogus");
    let out = run(c);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown argument `--bogus`"));
}

/// `--init-config` into `path` with `bin`; asserts success.
fn init_config(bin: &Path, path: &Path) {
    let out = Command::new(bin)
        .arg("--init-config")
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "--init-config: {}",
        text(&out.stderr)
    );
}

fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

#[test]
fn init_config_writes_a_working_config_and_never_overwrites() {
    let dir = scratch("init");
    let path = dir.join("config.json");
    init_config(&daemon_binary(), &path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let bytes = std::fs::read(&path).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let tenant = json["tenant_id"].as_str().unwrap();
    assert!(is_guid(tenant), "{tenant}");
    assert_eq!(
        json["issuer"],
        format!("https://sts.windows.net/{tenant}/").as_str()
    );
    assert!(json.get("authority").is_none(), "issuer mode");
    assert_eq!(json["listen"]["imds"], "169.254.169.254:80");
    assert_eq!(json["listen"]["legacy"], "127.0.0.1:50342");
    let ids = json["identities"].as_array().unwrap();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0]["kind"], "system");
    assert!(is_guid(ids[0]["client_id"].as_str().unwrap()));
    assert!(is_guid(ids[0]["object_id"].as_str().unwrap()));
    let rid = ids[0]["resource_id"].as_str().unwrap();
    let parts: Vec<&str> = rid.split('/').collect();
    assert_eq!(parts.len(), 9, "{rid}");
    assert_eq!(parts[1], "subscriptions");
    assert!(is_guid(parts[2]), "{rid}");
    assert_eq!(
        &parts[3..8],
        &[
            "resourceGroups",
            "imds",
            "providers",
            "Microsoft.Compute",
            "virtualMachines"
        ]
    );
    assert!(!parts[8].is_empty(), "{rid}");
    let key = json["signing_key"].as_str().unwrap();
    assert!(
        key.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "PKCS#8 PEM"
    );
    {
        use p256::pkcs8::DecodePrivateKey;
        p256::SecretKey::from_pkcs8_pem(key).expect("a P-256 PKCS#8 key");
    }

    // Never overwritten: exit 2, the file unchanged.
    let out = Command::new(daemon_binary())
        .arg("--init-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("already exists"), "{:?}", out);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "file unchanged");

    // Fresh keys and GUIDs each time.
    let other = dir.join("other.json");
    init_config(&daemon_binary(), &other);
    let other: serde_json::Value = serde_json::from_slice(&std::fs::read(&other).unwrap()).unwrap();
    assert_ne!(other["signing_key"], json["signing_key"]);
    assert_ne!(other["tenant_id"], json["tenant_id"]);

    // It works: the daemon serves a token signed with the new key (JWKS) for that identity.
    let cfg = DemoConfig::from_json("init", json.clone());
    let d = imds_tests::Daemon::start_with(
        &cfg,
        &["--listen", "127.0.0.1:0", "--legacy-listen", "off"],
    );
    let r = get(d.imds, &token_target(MGMT, ""), &[MD]);
    assert_eq!(r.status, 200);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let jwks = get(d.imds, "/.well-known/jwks.json", &[MD]).json();
    let claims = imds_tests::verify_with_jwks(&token, &jwks).expect("token verifies");
    assert_eq!(claims["appid"], ids[0]["client_id"]);
    assert_eq!(claims["xms_mirid"], rid);
    assert!(d.terminate().success());
    let _ = std::fs::remove_dir_all(&dir);
}

const UNIT: &str = "packaging/imds-agent.service";

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    xtask::setup::ensure_apt("systemd-analyze", "systemd").unwrap();
    xtask::setup::ensure_apt("ip", "iproute2").unwrap();
    let unit = std::fs::read_to_string(root().join(UNIT)).unwrap();
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "MemoryDenyWriteExecute=yes",
        "Restart=on-failure",
        "LoadCredential=config.json:/etc/imds-agent/config.json",
        "ExecStart=/usr/bin/imds-agent --config ${CREDENTIALS_DIRECTORY}/config.json",
        "ExecStartPre=+/usr/sbin/ip address replace 169.254.169.254/32 dev imds0",
        "ExecStopPost=+-/usr/sbin/ip link delete imds0",
    ] {
        assert!(unit.lines().any(|l| l == line), "{UNIT} has `{line}`");
    }
    let families = unit
        .lines()
        .find_map(|l| l.strip_prefix("RestrictAddressFamilies="))
        .expect("RestrictAddressFamilies=");
    for f in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(families.split_whitespace().any(|x| x == f), "{families}");
    }

    // verify checks that ExecStart's binary exists: a copy that runs the built one.
    let dir = scratch("unit");
    let copy = dir.join("imds-agent.service");
    let bin = daemon_binary();
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/imds-agent", bin.to_str().unwrap()),
    )
    .unwrap();
    let check = |path: &Path| {
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(path)
            .env("SYSTEMD_LOG_LEVEL", "warning")
            .output()
            .expect("run systemd-analyze");
        let complaints: Vec<String> = text(&out.stderr)
            .lines()
            .chain(text(&out.stdout).lines())
            .filter(|l| l.contains("imds-agent.service"))
            .map(str::to_string)
            .collect();
        (out.status.success(), complaints)
    };
    let (ok, complaints) = check(&copy);
    assert!(ok && complaints.is_empty(), "verify: {complaints:?}");

    // The check has teeth: a misspelt key or a bad value is reported.
    let broken = dir.join("broken").join("imds-agent.service");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(
        &broken,
        std::fs::read_to_string(&copy)
            .unwrap()
            .replace("Type=notify", "Type=notifyy\nProtectHomes=yes"),
    )
    .unwrap();
    let (_, complaints) = check(&broken);
    assert!(
        complaints.iter().any(|l| l.contains("notifyy"))
            && complaints.iter().any(|l| l.contains("ProtectHomes")),
        "{complaints:?}"
    );

    // The networkd alternative: what the files say.
    let netdev = std::fs::read_to_string(root().join("packaging/network/50-imds.netdev")).unwrap();
    assert!(netdev.contains("Name=imds0") && netdev.contains("Kind=dummy"));
    let network =
        std::fs::read_to_string(root().join("packaging/network/50-imds.network")).unwrap();
    assert!(network.contains("Name=imds0") && network.contains("Address=169.254.169.254/32"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The package, built once per test process (a release build) by `cargo xtask deb`'s code.
fn deb() -> &'static Path {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(|| xtask::deb::build().expect("cargo xtask deb"))
}

/// Extract the package's files (`dpkg-deb -x`) and control files (`dpkg-deb -e`) into `dir`:
/// (root, control).
fn unpack(dir: &Path) -> (PathBuf, PathBuf) {
    let (x, ctrl) = (dir.join("root"), dir.join("DEBIAN"));
    for (flag, to) in [("-x", &x), ("-e", &ctrl)] {
        let ok = Command::new("dpkg-deb")
            .arg(flag)
            .arg(deb())
            .arg(to)
            .status()
            .expect("dpkg-deb")
            .success();
        assert!(ok, "dpkg-deb {flag}");
    }
    (x, ctrl)
}

#[test]
fn deb_package_contents_and_its_binary() {
    let deb = deb();
    assert!(deb.extension().is_some_and(|e| e == "deb"), "{deb:?}");
    let out = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(deb)
        .output()
        .expect("dpkg-deb");
    assert!(out.status.success());
    let listing = text(&out.stdout);
    let has = |path: &str, mode: &str| {
        listing.lines().any(|l| {
            l.starts_with(mode) && l.split_whitespace().last() == Some(&format!(".{path}")[..])
        })
    };
    for (path, mode) in [
        ("/usr/bin/imds-agent", "-rwxr-xr-x"),
        ("/lib/systemd/system/imds-agent.service", "-rw-r--r--"),
        (
            "/usr/share/doc/imds-agent/network/50-imds.netdev",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/imds-agent/network/50-imds.network",
            "-rw-r--r--",
        ),
        (
            "/usr/share/doc/imds-agent/config.example.json",
            "-rw-r--r--",
        ),
        ("/usr/share/doc/imds-agent/SERVICE.md", "-rw-r--r--"),
        ("/usr/share/doc/imds-agent/README.md", "-rw-r--r--"),
        ("/usr/share/doc/imds-agent/copyright", "-rw-r--r--"),
    ] {
        assert!(has(path, mode), "{path} ({mode}) in\n{listing}");
    }
    assert!(
        !listing.contains("/etc/"),
        "no config (no key) in the package:\n{listing}"
    );

    // Control: the dependency for the Exec*=+ lines, and the maintainer scripts.
    let dir = scratch("deb");
    let (x, ctrl) = unpack(&dir);
    let control = std::fs::read_to_string(ctrl.join("control")).unwrap();
    assert!(control.contains("Package: imds-agent"), "{control}");
    assert!(
        control
            .lines()
            .any(|l| l.starts_with("Depends:") && l.contains("iproute2")),
        "{control}"
    );
    let postinst = std::fs::read_to_string(ctrl.join("postinst")).unwrap();
    assert!(
        postinst.contains("[ ! -e \"$CONFIG\" ]")
            && postinst.contains("/usr/bin/imds-agent --init-config \"$CONFIG\""),
        "{postinst}"
    );
    for s in ["postinst", "prerm", "postrm"] {
        let mode = std::fs::metadata(ctrl.join(s))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{s} is executable");
    }

    // The packaged binary alone: --init-config output passes its own --check-config.
    let bin = x.join("usr/bin/imds-agent");
    let out = Command::new(&bin).arg("--version").output().unwrap();
    assert_eq!(
        text(&out.stdout),
        format!("imds-agent {}\n", env!("CARGO_PKG_VERSION"))
    );
    let config = dir.join("config.json");
    init_config(&bin, &config);
    let out = Command::new(&bin)
        .arg("--check-config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("identity: system client_id="));

    // The example config is right but for its placeholder key: with a real key it passes.
    let example: serde_json::Value = serde_json::from_slice(
        &std::fs::read(x.join("usr/share/doc/imds-agent/config.example.json")).unwrap(),
    )
    .unwrap();
    let out = Command::new(&bin)
        .arg("--check-config")
        .arg(x.join("usr/share/doc/imds-agent/config.example.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "the placeholder is not a key");
    assert!(text(&out.stderr).contains("signing_key"));
    let fresh: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let mut example = example;
    example["signing_key"] = fresh["signing_key"].clone();
    let filled = dir.join("example-with-key.json");
    std::fs::write(&filled, serde_json::to_vec(&example).unwrap()).unwrap();
    let out = Command::new(&bin)
        .arg("--check-config")
        .arg(&filled)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("identities: 2"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The maintainer scripts of the package, run for real against the packaged binary: in a
/// private mount namespace where /etc, /var and /usr/bin are copy-on-write overlays (the
/// upper layers are scratch directories), so the machine's own /etc is never touched.
#[test]
fn maintainer_scripts_create_the_config_once_and_purge_it() {
    let dir = scratch("maint");
    let (x, ctrl) = unpack(&dir);
    let ov = dir.join("overlay");
    let mut mounts = String::new();
    for (name, lower) in [("etc", "/etc"), ("var", "/var"), ("bin", "/usr/bin")] {
        let (upper, work) = (ov.join(name).join("upper"), ov.join(name).join("work"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        if name == "bin" {
            std::fs::copy(x.join("usr/bin/imds-agent"), upper.join("imds-agent")).unwrap();
        }
        mounts.push_str(&format!(
            "mount -t overlay overlay -o lowerdir={lower},upperdir={},workdir={} {lower}\n",
            upper.display(),
            work.display()
        ));
    }
    let host_had_config = Path::new("/etc/imds-agent").exists();
    let script = format!(
        r#"set -eu
{mounts}
test ! -e /etc/imds-agent/config.json || {{ echo "a config is already there"; exit 1; }}
C={ctrl}
sh $C/postinst configure
echo "mode=$(stat -c %a /etc/imds-agent/config.json) dir=$(stat -c %a /etc/imds-agent)"
/usr/bin/imds-agent --check-config /etc/imds-agent/config.json
cp /etc/imds-agent/config.json {first}
sh $C/postinst configure 0.1.0-1
cmp /etc/imds-agent/config.json {first} && echo "upgrade: unchanged"
echo '{{"edited": true}}' > /etc/imds-agent/config.json
sh $C/postinst configure 0.1.0-1
grep -q edited /etc/imds-agent/config.json && echo "edited: kept"
sh $C/prerm remove
sh $C/postrm remove
test -f /etc/imds-agent/config.json && echo "remove: kept"
sh $C/postrm purge
test ! -e /etc/imds-agent && echo "purge: removed"
"#,
        ctrl = ctrl.display(),
        first = dir.join("first.json").display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    for expect in [
        "imds-agent: wrote /etc/imds-agent/config.json (mode 0600)",
        "mode=600 dir=755",
        "/etc/imds-agent/config.json: ok",
        "identity: system client_id=",
        "upgrade: unchanged",
        "edited: kept",
        "remove: kept",
        "purge: removed",
    ] {
        assert!(stdout.contains(expect), "{expect:?} in\n{stdout}{stderr}");
    }
    assert_eq!(
        Path::new("/etc/imds-agent").exists(),
        host_had_config,
        "the machine's /etc is untouched"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
