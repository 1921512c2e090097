//! The host daemon over real loopback sockets: the whole HTTP contract, plus what depends on
//! the daemon's own configuration and process (other identity sets, config errors, signals).

use imds_tests::contract::Target;
use imds_tests::{get, token_target, Daemon, DemoConfig};
use std::sync::OnceLock;

struct Running {
    _daemon: Daemon,
    target: Target,
}

impl std::ops::Deref for Running {
    type Target = Target;
    fn deref(&self) -> &Target {
        &self.target
    }
}

fn shared() -> &'static Running {
    static D: OnceLock<Running> = OnceLock::new();
    D.get_or_init(|| {
        let cfg = DemoConfig::new("daemon-contract");
        let daemon = Daemon::start(&cfg);
        Running {
            target: Target {
                imds: daemon.imds,
                legacy: daemon.legacy.expect("legacy listener"),
                cfg,
            },
            _daemon: daemon,
        }
    })
}

imds_tests::contract_tests!(shared(), 32);

const MD: &str = "Metadata: true";
const MGMT: &str = "https://management.azure.com/";

fn with_identities(name: &str, keep: impl Fn(&serde_json::Value) -> bool) -> DemoConfig {
    let mut json = xtask::config::demo("127.0.0.1:0", Some("127.0.0.1:0"));
    let ids: Vec<_> = json["identities"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| keep(i))
        .cloned()
        .collect();
    json["identities"] = serde_json::Value::Array(ids);
    DemoConfig::from_json(name, json)
}

#[test]
fn several_user_assigned_and_no_system_needs_a_selector() {
    let cfg = with_identities("users-only", |i| i["kind"] == "user");
    let d = Daemon::start(&cfg);
    let r = get(d.imds, &token_target(MGMT, ""), &[MD]);
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error_description"],
        "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request"
    );
    let r = get(
        d.imds,
        &token_target(MGMT, &format!("&client_id={}", cfg.users[1].client_id)),
        &[MD],
    );
    assert_eq!(r.status, 200);
}

#[test]
fn a_single_user_assigned_identity_is_the_default() {
    let cfg = with_identities("one-user", |i| {
        i["kind"] == "user" && i["resource_id"].as_str().unwrap().ends_with("demo-one")
    });
    let d = Daemon::start(&cfg);
    let r = get(d.imds, &token_target(MGMT, ""), &[MD]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["client_id"], cfg.users[0].client_id.as_str());
}

fn start_fails(json: serde_json::Value) -> String {
    let cfg = DemoConfig::from_json("bad", json);
    let out = std::process::Command::new(imds_tests::daemon_binary())
        .arg("--config")
        .arg(&cfg.path)
        .args(["--listen", "127.0.0.1:0", "--legacy-listen", "off"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad config exits with 2");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_config_is_refused_with_the_field_named() {
    let base = xtask::config::demo("127.0.0.1:0", None);
    let mut j = base.clone();
    j["identities"][1]["client_id"] = "not-a-guid".into();
    let e = start_fails(j);
    assert!(
        e.contains("identities[1].client_id") && e.contains("GUID"),
        "{e}"
    );
    let mut j = base.clone();
    j["token_lifetime_s"] = "soon".into();
    let e = start_fails(j);
    assert!(
        e.contains("token_lifetime_s") && e.contains("wrong type"),
        "{e}"
    );
    let mut j = base.clone();
    j["signing_key"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into();
    let e = start_fails(j);
    assert!(e.contains("signing_key"), "{e}");
    assert!(!e.contains("AAAA"), "the key is never echoed: {e}");
    let mut j = base.clone();
    j.as_object_mut().unwrap().remove("tenant_id");
    assert!(start_fails(j).contains("`tenant_id` is required"));
    let mut j = base;
    j["listn"] = serde_json::json!({});
    assert!(start_fails(j).contains("unknown field `listn`"));
    // Missing file and unparsable JSON.
    let out = std::process::Command::new(imds_tests::daemon_binary())
        .args(["--config", "/nonexistent/imds.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no configuration supplied"));
    let cfg = imds_tests::target_dir().join("test-configs/garbage.json");
    std::fs::write(&cfg, b"{\"tenant_id\": ").unwrap();
    let out = std::process::Command::new(imds_tests::daemon_binary())
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config:"));
}

#[test]
fn log_lines_and_clean_exit_on_sigterm() {
    let cfg = DemoConfig::new("log");
    let d = Daemon::start(&cfg);
    let r = get(d.imds, &token_target(MGMT, ""), &[MD]);
    assert_eq!(r.status, 200);
    let token = r.json()["access_token"].as_str().unwrap().to_string();
    let r = get(
        d.imds,
        &format!("{}&client_id=zz", token_target(MGMT, "")),
        &[MD],
    );
    assert_eq!(r.status, 400);
    std::thread::sleep(std::time::Duration::from_millis(700));
    let log = d.log_text();
    let sys = &cfg.system.as_ref().unwrap().client_id;
    assert!(
        log.lines()
            .any(|l| l.contains("GET /metadata/identity/oauth2/token 200")
                && l.contains(sys.as_str())
                && l.ends_with("us")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("GET /metadata/identity/oauth2/token 400 -")),
        "{log}"
    );
    assert!(!log.contains("api-version"), "no query strings in the log");
    let sig = token.rsplit('.').next().unwrap();
    assert!(
        !log.contains(sig) && !log.contains(&token[..40]),
        "no token in the log"
    );
    assert!(!log.contains("PRIVATE KEY"));
    let status = d.terminate();
    assert!(status.success(), "SIGTERM exits cleanly: {status}");
}
