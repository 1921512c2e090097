//! Test support: start the real daemon on loopback, talk raw HTTP to it, verify tokens.
//!
//! The HTTP contract cases live in [`contract`] and run against any target (the host daemon,
//! the unikernel under QEMU) through the [`Target`] they are given.

pub mod attested;
pub mod brokered;
pub mod contract;
pub mod netns;
pub mod sdk;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
pub use xtask::http::pct;

pub use xtask::watchdog::Watchdog;
pub use xtask::{authority, root, target_dir};

/// An identity of a demo config.
#[derive(Debug, Clone)]
pub struct Ident {
    pub kind: String,
    pub client_id: String,
    pub object_id: String,
    pub resource_id: String,
}

/// A demo config written to disk, with its identities at hand.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub path: PathBuf,
    pub json: Value,
    pub tenant_id: String,
    pub system: Option<Ident>,
    pub users: Vec<Ident>,
}

impl DemoConfig {
    /// The standard demo (1 system-assigned + 2 user-assigned), written under target/test-configs.
    pub fn new(name: &str) -> DemoConfig {
        Self::from_json(
            name,
            xtask::config::demo("127.0.0.1:0", Some("127.0.0.1:0")),
        )
    }

    /// A config from a JSON document (e.g. the demo with identities changed).
    pub fn from_json(name: &str, json: Value) -> DemoConfig {
        let dir = target_dir().join("test-configs");
        std::fs::create_dir_all(&dir).unwrap();
        // Unique per call: tests of one process run in parallel threads and must not read
        // each other's config.
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{name}-{}-{seq}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        let mut system = None;
        let mut users = Vec::new();
        for i in json["identities"].as_array().cloned().unwrap_or_default() {
            let id = Ident {
                kind: i["kind"].as_str().unwrap_or_default().into(),
                client_id: i["client_id"].as_str().unwrap_or_default().into(),
                object_id: i["object_id"].as_str().unwrap_or_default().into(),
                resource_id: i["resource_id"].as_str().unwrap_or_default().into(),
            };
            if id.kind == "system" {
                system = Some(id);
            } else {
                users.push(id);
            }
        }
        DemoConfig {
            path,
            tenant_id: json["tenant_id"].as_str().unwrap_or_default().into(),
            json,
            system,
            users,
        }
    }
}

/// A file `name-<pid>` with `content` under `target/test-configs/` (a config the test makes
/// up, a fw_cfg test hook's content), for QEMU or the daemon to read.
pub fn test_file(name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let dir = target_dir().join("test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}", std::process::id()));
    std::fs::write(&path, content).unwrap();
    path
}

/// Boot `image` with `opts` and expect QEMU to stop within `timeout` with guest exit `code`
/// and `message` on serial. Returns the serial console.
pub fn expect_exit(
    image: &Path,
    opts: &xtask::qemu::QemuOpts,
    code: u8,
    message: &str,
    timeout: Duration,
) -> String {
    let mut guest = xtask::qemu::Guest::spawn(image, opts).expect("spawn QEMU");
    let status = guest
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("QEMU still running:\n{}", guest.output()));
    let out = guest.output();
    assert_eq!(
        status.code().and_then(xtask::qemu::guest_exit_code),
        Some(code),
        "status {status}; output:\n{out}\ncommand: {}",
        guest.command
    );
    assert!(out.contains(message), "missing {message:?} in:\n{out}");
    out
}

/// Path of the daemon binary (built once per test process).
pub fn daemon_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            // With the `rsa` feature: the broker tests talk to RSA (Entra-style) authorities.
            .args([
                "build",
                "--quiet",
                "-p",
                "imds-agent",
                "--bin",
                "imds-agent",
                "--features",
                "rsa",
            ])
            .status()
            .expect("run cargo build");
        assert!(status.success(), "building the daemon failed");
        target_dir().join("debug/imds-agent")
    })
    .clone()
}

/// A running host daemon, killed on drop, and by a [`Watchdog`] when the test process dies
/// without dropping it (a daemon kept in a `static`). Its stderr (the log) is collected.
pub struct Daemon {
    child: Child,
    watchdog: Watchdog,
    pub imds: SocketAddr,
    pub legacy: Option<SocketAddr>,
    pub log: Arc<Mutex<String>>,
}

impl Daemon {
    /// Start the daemon on free loopback ports and wait until it listens.
    pub fn start(config: &DemoConfig) -> Daemon {
        Self::start_with(
            config,
            &["--listen", "127.0.0.1:0", "--legacy-listen", "127.0.0.1:0"],
        )
    }

    pub fn start_with(config: &DemoConfig, args: &[&str]) -> Daemon {
        let mut child = Command::new(daemon_binary())
            .arg("--config")
            .arg(&config.path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn imds-agent");
        let watchdog = Watchdog::guard_child(&mut child).expect("start the daemon's watchdog");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut first = Some(tx);
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push_str(&line);
                    log.lock().unwrap().push('\n');
                    if line.contains("listening") {
                        if let Some(tx) = first.take() {
                            let _ = tx.send(line);
                        }
                    }
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                drop(watchdog);
                panic!("daemon did not start; log:\n{}", log.lock().unwrap());
            }
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .and_then(|v| v.parse::<SocketAddr>().ok())
        };
        Daemon {
            imds: field("imds").expect("imds address in the log"),
            legacy: field("legacy"),
            child,
            watchdog,
            log,
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let s = xtask::terminate(&mut self.child, "daemon");
        self.watchdog.disarm();
        s
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.watchdog.disarm();
    }
}

pub use xtask::http::{connect, read_response, Response};

/// Send raw bytes on a new connection and read one response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> Response {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    read_response(&mut s, request.starts_with(b"HEAD")).expect("read response")
}

/// `GET target` with the given extra header lines.
pub fn get(addr: SocketAddr, target: &str, headers: &[&str]) -> Response {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    raw(addr, req.as_bytes())
}

/// The token endpoint URL for `resource` with extra query text.
pub fn token_target(resource: &str, extra: &str) -> String {
    format!(
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}{extra}",
        pct(resource)
    )
}

/// Decode the claims of a JWT without verifying it.
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("JWT payload");
    serde_json::from_slice(&B64.decode(payload).expect("base64url")).expect("claims JSON")
}

/// Verify an ES256 JWT against a JWKS document; returns its claims.
pub fn verify_with_jwks(token: &str, jwks: &Value) -> Result<Value, String> {
    use p256::ecdsa::signature::Verifier;
    let mut parts = token.split('.');
    let (h, p, s) = (
        parts.next().ok_or("no header")?,
        parts.next().ok_or("no payload")?,
        parts.next().ok_or("no signature")?,
    );
    let header: Value = serde_json::from_slice(&B64.decode(h).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if header["alg"] != "ES256" {
        return Err(format!("alg is {}", header["alg"]));
    }
    let kid = header["kid"].as_str().ok_or("no kid")?;
    let key = jwks["keys"]
        .as_array()
        .ok_or("no keys")?
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or("kid not in JWKS")?;
    let coord = |c: &str| {
        B64.decode(key[c].as_str().unwrap_or_default())
            .map_err(|e| e.to_string())
    };
    let (x, y) = (coord("x")?, coord("y")?);
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|e| e.to_string())?;
    let sig = p256::ecdsa::Signature::from_slice(&B64.decode(s).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    vk.verify(format!("{h}.{p}").as_bytes(), &sig)
        .map_err(|_| "signature does not verify".to_string())?;
    serde_json::from_slice(&B64.decode(p).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

pub use xtask::load::wait_listening;

/// A directory under target/ for test tools (venvs, node packages).
pub fn exists(p: &Path) -> bool {
    p.exists()
}
