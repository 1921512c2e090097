//! The other Azure hosts' managed-identity protocols (issue 13) on the host daemon: App Service
//! (`app_service`) and Azure ML (`azure_ml`), over real sockets and with unmodified clients
//! (azure-identity sync and aio, MSAL Python's `ManagedIdentityClient`) that see only that
//! protocol's environment variables.

use imds_tests::sdk::{python_host_token, scope_resource};
use imds_tests::{get, pct, raw, token_target, verify_with_jwks, Daemon, DemoConfig};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SCOPE: &str = "https://management.azure.com/.default";
const MGMT: &str = "https://management.azure.com";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The daemon with `app_service` and `azure_ml` on free loopback ports.
struct Hosts {
    cfg: DemoConfig,
    d: Daemon,
    app: SocketAddr,
    ml: SocketAddr,
    app_secret: String,
    ml_secret: String,
}

/// The address the daemon logged as `listening NAME=ADDR`.
fn logged_addr(d: &Daemon, name: &str) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log_text();
        let found = log.split_whitespace().find_map(|w| {
            w.strip_prefix(&format!("{name}="))
                .and_then(|v| v.parse::<SocketAddr>().ok())
        });
        if let Some(a) = found {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no {name}= listener in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(name: &str) -> Hosts {
    let doc = xtask::config::with_hosts(
        xtask::config::demo("127.0.0.1:0", Some("127.0.0.1:0")),
        "127.0.0.1:0",
        "127.0.0.1:0",
    );
    let app_secret = doc["app_service"]["secret"].as_str().unwrap().to_string();
    let ml_secret = doc["azure_ml"]["secret"].as_str().unwrap().to_string();
    let cfg = DemoConfig::from_json(name, doc);
    let d = Daemon::start(&cfg);
    let app = logged_addr(&d, "app_service");
    let ml = logged_addr(&d, "azure_ml");
    Hosts {
        cfg,
        d,
        app,
        ml,
        app_secret,
        ml_secret,
    }
}

impl Hosts {
    fn sys(&self) -> String {
        self.cfg.system.as_ref().unwrap().client_id.clone()
    }
    fn app_get(&self, query: &str, headers: &[&str]) -> imds_tests::Response {
        get(self.app, &format!("/msi/token?{query}"), headers)
    }
    fn app_header(&self) -> String {
        format!("X-IDENTITY-HEADER: {}", self.app_secret)
    }
    fn ml_header(&self) -> String {
        format!("secret: {}", self.ml_secret)
    }
    fn claims(&self, token: &str) -> Value {
        let jwks = get(self.d.imds, "/.well-known/jwks.json", &[]).json();
        verify_with_jwks(token, &jwks).unwrap_or_else(|e| panic!("token does not verify: {e}"))
    }
    /// The secrets never reach the log.
    fn assert_log_clean(&self) {
        let log = self.d.log_text();
        assert!(
            !log.contains(&self.app_secret),
            "app_service secret in the log:\n{log}"
        );
        assert!(
            !log.contains(&self.ml_secret),
            "azure_ml secret in the log:\n{log}"
        );
    }
}

/// A 4xx JSON error with `statusCode` (= the status) and a non-empty `message`.
fn assert_error(r: &imds_tests::Response, status: u16, message_has: &str) {
    assert_eq!(
        r.status,
        status,
        "body: {}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    let b = r.json();
    assert_eq!(b["statusCode"], status, "body: {b}");
    let m = b["message"].as_str().expect("message string");
    assert!(
        m.contains(message_has),
        "message {m:?} lacks {message_has:?}"
    );
}

fn digits(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("{v} is not a string"));
    assert!(
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        "{s:?}"
    );
    s.parse().unwrap()
}

#[test]
fn app_service_token_shape_and_identity() {
    let h = start("hosts-app-ok");
    let q = format!("api-version=2019-08-01&resource={}", pct(MGMT));
    // No `Metadata` header: App Service clients need not send one.
    let r = h.app_get(&q, &[&h.app_header()]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    let expires_on = digits(&b["expires_on"]);
    digits(&b["not_before"]);
    assert!(expires_on > now() + 3600, "{b}");
    assert_eq!(b["resource"], MGMT);
    assert_eq!(b["token_type"], "Bearer");
    assert_eq!(b["client_id"], h.sys().as_str());
    let claims = h.claims(b["access_token"].as_str().unwrap());
    assert_eq!(claims["appid"], h.sys().as_str());
    assert_eq!(claims["aud"], MGMT);
    assert_eq!(claims["exp"].as_u64(), Some(expires_on));

    // The same cache as the IMDS endpoint: the same token for the same identity and resource.
    let imds = get(h.d.imds, &token_target(MGMT, ""), &["Metadata: true"]).json();
    assert_eq!(imds["access_token"], b["access_token"]);

    // Every selector App Service names picks that identity.
    let u = &h.cfg.users[0];
    for sel in [
        format!("client_id={}", u.client_id),
        format!("object_id={}", u.object_id),
        format!("principal_id={}", u.object_id),
        format!("mi_res_id={}", pct(&u.resource_id)),
    ] {
        let r = h.app_get(&format!("{q}&{sel}"), &[&h.app_header()]);
        assert_eq!(r.status, 200, "{sel}: {}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        assert_eq!(b["client_id"], u.client_id.as_str(), "{sel}");
        let claims = h.claims(b["access_token"].as_str().unwrap());
        assert_eq!(claims["appid"], u.client_id.as_str(), "{sel}");
    }
    h.assert_log_clean();
}

#[test]
fn app_service_errors() {
    let h = start("hosts-app-errors");
    let q = format!("api-version=2019-08-01&resource={}", pct(MGMT));
    let hdr = h.app_header();
    assert_error(&h.app_get(&q, &[]), 400, "X-IDENTITY-HEADER");
    assert_error(
        &h.app_get(&q, &["X-IDENTITY-HEADER: wrong"]),
        401,
        "X-IDENTITY-HEADER",
    );
    // One character off, same length.
    let mut near = h.app_secret.clone();
    let last = if near.ends_with('0') { "1" } else { "0" };
    near.replace_range(near.len() - 1.., last);
    assert_error(
        &h.app_get(&q, &[&format!("X-IDENTITY-HEADER: {near}")]),
        401,
        "X-IDENTITY-HEADER",
    );
    // The IMDS protocol's header does not stand in for it.
    assert_error(
        &h.app_get(&q, &["Metadata: true"]),
        400,
        "X-IDENTITY-HEADER",
    );
    let r = format!("resource={}", pct(MGMT));
    assert_error(&h.app_get(&r, &[&hdr]), 400, "api-version");
    for v in ["2017-09-01", "2018-02-01", "2019-08-02"] {
        assert_error(
            &h.app_get(&format!("api-version={v}&{r}"), &[&hdr]),
            400,
            "api-version",
        );
    }
    assert_error(
        &h.app_get("api-version=2019-08-01", &[&hdr]),
        400,
        "resource",
    );
    assert_error(
        &h.app_get("api-version=2019-08-01&resource=", &[&hdr]),
        400,
        "resource",
    );
    assert_error(
        &h.app_get(
            &format!("{q}&client_id=00000000-0000-0000-0000-000000000000"),
            &[&hdr],
        ),
        400,
        "Identity not found",
    );
    let u = &h.cfg.users[0];
    assert_error(
        &h.app_get(
            &format!("{q}&client_id={}&object_id={}", u.client_id, u.object_id),
            &[&hdr],
        ),
        400,
        "Only one",
    );
    assert_error(
        &h.app_get(&format!("{q}&{r}"), &[&hdr]),
        400,
        "more than once",
    );
    // Other paths and methods.
    assert_error(
        &get(
            h.app,
            &format!("/metadata/identity/oauth2/token?{q}"),
            &[&hdr],
        ),
        404,
        "not found",
    );
    let post = format!(
        "POST /msi/token?{q} HTTP/1.1\r\nHost: {}\r\n{hdr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        h.app
    );
    let resp = raw(h.app, post.as_bytes());
    assert_error(&resp, 405, "not allowed");
    // A proxied request is refused like on IMDS.
    assert_error(
        &h.app_get(&q, &[&hdr, "X-Forwarded-For: 10.0.0.1"]),
        400,
        "",
    );
    h.assert_log_clean();
}

#[test]
fn azure_ml_token_and_errors() {
    let h = start("hosts-ml");
    let q = format!("api-version=2017-09-01&resource={}", pct(MGMT));
    let hdr = h.ml_header();
    let r = get(h.ml, &format!("/msi/token?{q}"), &[&hdr]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert!(digits(&b["expires_on"]) > now() + 3600);
    assert_eq!(b["resource"], MGMT);
    assert_eq!(b["client_id"], h.sys().as_str());
    // `clientid` may name the system-assigned identity (Azure ML passes its default one).
    for id in [h.sys(), h.cfg.users[1].client_id.clone()] {
        let r = get(h.ml, &format!("/msi/token?{q}&clientid={id}"), &[&hdr]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        assert_eq!(b["client_id"], id.as_str());
        assert_eq!(
            h.claims(b["access_token"].as_str().unwrap())["appid"],
            id.as_str()
        );
    }
    let ml = |query: &str, headers: &[&str]| get(h.ml, &format!("/msi/token?{query}"), headers);
    assert_error(&ml(&q, &[]), 400, "secret");
    assert_error(&ml(&q, &["secret: nope"]), 401, "secret");
    // App Service's header on the Azure ML listener is not its secret.
    assert_error(
        &ml(&q, &[&format!("X-IDENTITY-HEADER: {}", h.ml_secret)]),
        400,
        "secret",
    );
    assert_error(
        &ml(
            &format!("api-version=2019-08-01&resource={}", pct(MGMT)),
            &[&hdr],
        ),
        400,
        "api-version",
    );
    assert_error(&ml("api-version=2017-09-01", &[&hdr]), 400, "resource");
    assert_error(
        &ml(
            &format!("{q}&clientid=00000000-0000-0000-0000-000000000000"),
            &[&hdr],
        ),
        400,
        "Identity not found",
    );
    // Each listener takes only its own secret.
    assert_error(
        &h.app_get(
            &format!("api-version=2019-08-01&resource={}", pct(MGMT)),
            &[&format!("X-IDENTITY-HEADER: {}", h.ml_secret)],
        ),
        401,
        "X-IDENTITY-HEADER",
    );
    h.assert_log_clean();
}

/// A client's token for `client_id` (system-assigned without) over the protocol `env`
/// selects: it verifies against the daemon's JWKS and names that identity.
fn client_checks(h: &Hosts, client: &str, env: &[(&str, &str)], client_id: Option<&str>) {
    let got = python_host_token(client, env, SCOPE, client_id).unwrap_or_else(|e| {
        panic!(
            "{client} with {env:?} failed: {e}\ndaemon log:\n{}",
            h.d.log_text()
        )
    });
    let token = got["token"].as_str().expect("token");
    let claims = h.claims(token);
    let want = client_id.map(str::to_string).unwrap_or_else(|| h.sys());
    assert_eq!(claims["appid"], want.as_str(), "{client}: {claims}");
    assert_eq!(claims["aud"], scope_resource(SCOPE), "{client}: {claims}");
    let expires_on = got["expires_on"].as_u64().expect("expires_on");
    let exp = claims["exp"].as_u64().unwrap();
    assert!(
        expires_on.abs_diff(exp) <= 5,
        "{client}: {expires_on} vs exp {exp}"
    );
    // The request took this protocol's path (not an IMDS fallback).
    let log = h.d.log_text();
    assert!(
        log.lines().any(|l| l.contains(" /msi/token ")
            && l.contains(" 200 ")
            && l.contains(want.as_str())),
        "{client}: no 200 on /msi/token for {want} in the daemon log:\n{log}"
    );
}

#[test]
fn app_service_real_clients() {
    let h = start("hosts-app-clients");
    let endpoint = format!("http://{}/msi/token", h.app);
    let env = [
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IDENTITY_HEADER", h.app_secret.as_str()),
    ];
    let user = h.cfg.users[0].client_id.clone();
    for client in ["sync", "aio", "msal"] {
        client_checks(&h, client, &env, None);
        client_checks(&h, client, &env, Some(&user));
    }
    h.assert_log_clean();
}

#[test]
fn azure_ml_real_clients() {
    let h = start("hosts-ml-clients");
    let endpoint = format!("http://{}/msi/token", h.ml);
    let env = [
        ("MSI_ENDPOINT", endpoint.as_str()),
        ("MSI_SECRET", h.ml_secret.as_str()),
    ];
    let user = h.cfg.users[1].client_id.clone();
    for client in ["sync", "aio", "msal"] {
        client_checks(&h, client, &env, None);
        client_checks(&h, client, &env, Some(&user));
    }
    h.assert_log_clean();
}

// ---- Azure Arc ------------------------------------------------------------------------------

const ARC_TOKEN: &str = "/metadata/identity/oauth2/token";

/// The daemon with `arc` on a free loopback port, key files in `key_dir`.
fn start_arc(name: &str, key_dir: &str) -> (DemoConfig, Daemon, SocketAddr) {
    let mut doc = xtask::config::demo("127.0.0.1:0", Some("127.0.0.1:0"));
    doc["arc"] = serde_json::json!({ "listen": "127.0.0.1:0", "key_dir": key_dir });
    let cfg = DemoConfig::from_json(name, doc);
    let d = Daemon::start(&cfg);
    let arc = logged_addr(&d, "arc");
    (cfg, d, arc)
}

/// A key directory of this test, not yet created (the daemon creates it).
fn test_key_dir(name: &str) -> std::path::PathBuf {
    let dir = imds_tests::target_dir()
        .join("test-arc")
        .join(format!("{name}-{}", std::process::id()))
        .join("tokens");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    dir
}

/// The challenge's key file path, checked byte for byte against `Basic realm=<dir>/<hex>.key`.
fn challenged(r: &imds_tests::Response, dir: &str) -> std::path::PathBuf {
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    let v = r.header("www-authenticate").expect("WWW-Authenticate");
    let path = v
        .strip_prefix("Basic realm=")
        .unwrap_or_else(|| panic!("{v:?}"));
    let name = path
        .strip_prefix(&format!("{dir}/"))
        .and_then(|n| n.strip_suffix(".key"))
        .unwrap_or_else(|| panic!("{v:?} is not in {dir}"));
    assert_eq!(name.len(), 32, "{v:?}");
    assert!(
        name.bytes().all(|b| b.is_ascii_hexdigit()),
        "{v:?}: the name is hex"
    );
    assert_eq!(v.matches('=').count(), 1, "{v:?}");
    // Empty or JSON body.
    if !r.body.is_empty() {
        r.json();
    }
    std::path::PathBuf::from(path)
}

fn read_key(path: &std::path::Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{}",
        path.display()
    );
    let bytes = std::fs::read(path).unwrap();
    assert!(!bytes.is_empty() && bytes.len() <= 4096);
    assert!(
        bytes.iter().all(|b| b.is_ascii_graphic()),
        "printable ASCII, no newline: {bytes:?}"
    );
    String::from_utf8(bytes).unwrap()
}

fn gone_soon(path: &std::path::Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn arc_challenge_round_over_sockets() {
    use std::os::unix::fs::PermissionsExt;
    let dir_path = test_key_dir("round");
    let dir = dir_path.to_str().unwrap().to_string();
    let (cfg, d, arc) = start_arc("hosts-arc", &dir);
    // The directory was created 0700.
    let mode = std::fs::metadata(&dir_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    let q = format!("{ARC_TOKEN}?api-version=2020-06-01&resource={}", pct(MGMT));
    let md = "Metadata: true";
    // Errors before any challenge.
    let r = get(arc, &q, &[]);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.header("www-authenticate").is_none());
    let r = get(
        arc,
        &format!("{ARC_TOKEN}?api-version=2018-02-01&resource=x"),
        &[md],
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("api-version"));

    // The round: 401 + key file, then the token with its content.
    let key = challenged(&get(arc, &q, &[md]), &dir);
    let secret = read_key(&key);
    let auth = format!("Authorization: Basic {secret}");
    let r = get(arc, &q, &[md, &auth]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert!(digits(&b["expires_in"]) > 3600);
    assert!(digits(&b["expires_on"]) > now() + 3600);
    assert_eq!(b["resource"], MGMT);
    let sys = cfg.system.as_ref().unwrap();
    assert_eq!(b["client_id"], sys.client_id.as_str());
    assert!(
        gone_soon(&key),
        "used key file {} still there",
        key.display()
    );

    // Replayed: a fresh challenge (another file), no token.
    let r = get(arc, &q, &[md, &auth]);
    let key2 = challenged(&r, &dir);
    assert_ne!(key2, key);
    // A wrong secret: the same.
    let key3 = challenged(&get(arc, &q, &[md, "Authorization: Basic nope"]), &dir);
    // api-version 2019-11-01 too, and each selector is echoed.
    let u = &cfg.users[0];
    for (sel, field, value) in [
        (
            format!("client_id={}", u.client_id),
            "client_id",
            u.client_id.clone(),
        ),
        (
            format!("object_id={}", u.object_id),
            "object_id",
            u.object_id.clone(),
        ),
        (
            format!("msi_res_id={}", pct(&u.resource_id)),
            "msi_res_id",
            u.resource_id.clone(),
        ),
    ] {
        let q = format!(
            "{ARC_TOKEN}?api-version=2019-11-01&resource={}&{sel}",
            pct(MGMT)
        );
        let key = challenged(&get(arc, &q, &[md]), &dir);
        let auth = format!("Authorization: Basic {}", read_key(&key));
        let r = get(arc, &q, &[md, &auth]);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        assert_eq!(b[field], value.as_str(), "{sel}: {b}");
        assert_eq!(b["client_id"], u.client_id.as_str());
        digits(&b["expires_in"]);
        digits(&b["expires_on"]);
    }
    // Outstanding key files go at shutdown; the secrets never reach the log.
    assert!(key2.exists() && key3.exists());
    let log = d.log_text();
    assert!(!log.contains(&secret), "a secret in the log:\n{log}");
    assert!(d.terminate().success());
    assert!(!key2.exists() && !key3.exists());
    assert_eq!(std::fs::read_dir(&dir_path).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(dir_path.parent().unwrap());
}

/// Real clients accept key files only under /var/opt/azcmagent/tokens (Linux): this test
/// uses that directory (as root), creates what is missing and removes only what it made.
#[test]
fn arc_real_clients() {
    const DIR: &str = "/var/opt/azcmagent/tokens";
    let parents = ["/var/opt/azcmagent", DIR];
    let existed: Vec<bool> = parents
        .iter()
        .map(|p| std::path::Path::new(p).exists())
        .collect();
    let before: Vec<_> = std::fs::read_dir(DIR)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let (cfg, d, arc) = start_arc("hosts-arc-clients", DIR);
    let endpoint = format!("http://{arc}{ARC_TOKEN}");
    let imds = format!("http://{arc}");
    let env = [
        ("IDENTITY_ENDPOINT", endpoint.as_str()),
        ("IMDS_ENDPOINT", imds.as_str()),
    ];
    let h = Hosts {
        app: arc,
        ml: arc,
        app_secret: "-".into(),
        ml_secret: "-".into(),
        cfg,
        d,
    };
    let user = h.cfg.users[0].client_id.clone();
    let mut failure = None;
    for client in ["sync", "aio", "msal"] {
        for id in [None, Some(user.as_str())] {
            if failure.is_none() {
                failure = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    arc_client_checks(&h, client, &env, id)
                }))
                .err();
            }
        }
    }
    assert!(h.d.terminate().success());
    // Every key file the daemon wrote is gone; what was there before stays.
    let after: Vec<_> = std::fs::read_dir(DIR)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert_eq!(after, before, "key files left in {DIR}");
    for (p, existed) in parents.iter().zip(existed).rev() {
        if !existed {
            std::fs::remove_dir(p).unwrap_or_else(|e| panic!("removing {p}: {e}"));
        }
    }
    if let Some(p) = failure {
        std::panic::resume_unwind(p);
    }
}

fn arc_client_checks(h: &Hosts, client: &str, env: &[(&str, &str)], client_id: Option<&str>) {
    let got = python_host_token(client, env, SCOPE, client_id).unwrap_or_else(|e| {
        panic!(
            "{client} over Arc failed: {e}\ndaemon log:\n{}",
            h.d.log_text()
        )
    });
    let claims = h.claims(got["token"].as_str().expect("token"));
    let want = client_id.map(str::to_string).unwrap_or_else(|| h.sys());
    assert_eq!(claims["appid"], want.as_str(), "{client}: {claims}");
    let log = h.d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!(" {ARC_TOKEN} 401 ")))
            && log
                .lines()
                .any(|l| l.contains(&format!(" {ARC_TOKEN} 200 ")) && l.contains(want.as_str())),
        "{client}: no 401 then 200 for {want} in the log:\n{log}"
    );
}

// ---- Cloud Shell: the legacy listener ---------------------------------------------------------

fn form_post(addr: SocketAddr, body: &str, headers: &[&str]) -> imds_tests::Response {
    let mut req = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.push_str(body);
    raw(addr, req.as_bytes())
}

#[test]
fn cloud_shell_errors_over_sockets() {
    let cfg = DemoConfig::new("hosts-cloudshell");
    let d = Daemon::start(&cfg);
    let legacy = d.legacy.expect("legacy listener");
    let body = format!("resource={}", pct(MGMT));
    let r = form_post(legacy, &body, &["Metadata: true"]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let b = r.json();
    assert_eq!(b["resource"], MGMT);
    digits(&b["expires_in"]);
    digits(&b["expires_on"]);
    // A form POST's errors: Cloud Shell's {"error": {"code", "message"}}.
    for (body, headers) in [
        (body.as_str(), &[][..]),
        ("", &["Metadata: true"][..]),
        (
            "resource=x&client_id=00000000-0000-0000-0000-000000000000",
            &["Metadata: true"][..],
        ),
    ] {
        let r = form_post(legacy, body, headers);
        assert_eq!(r.status, 400, "{body}");
        let b = r.json();
        assert_eq!(b["error"]["code"], "invalid_request", "{b}");
        assert!(!b["error"]["message"].as_str().unwrap().is_empty(), "{b}");
    }
    // A GET (the VM extension's clients) keeps IMDS's flat errors.
    let r = get(legacy, "/oauth2/token?resource=x", &[]);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "invalid_request");
}

#[test]
fn cloud_shell_real_clients() {
    let cfg = DemoConfig::new("hosts-cloudshell-clients");
    // MSAL's Cloud Shell client always dials localhost:50342.
    let d = Daemon::start_with(
        &cfg,
        &[
            "--listen",
            "127.0.0.1:0",
            "--legacy-listen",
            "127.0.0.1:50342",
        ],
    );
    let legacy = d.legacy.expect("legacy listener");
    let endpoint = format!("http://{legacy}/oauth2/token");
    let h = Hosts {
        app: legacy,
        ml: legacy,
        app_secret: "-".into(),
        ml_secret: "-".into(),
        cfg,
        d,
    };
    // azure-identity: MSI_ENDPOINT alone; system-assigned only (it refuses a client_id).
    for client in ["sync", "aio"] {
        cloud_shell_checks(&h, client, &[("MSI_ENDPOINT", endpoint.as_str())]);
    }
    cloud_shell_checks(
        &h,
        "msal-cloudshell",
        &[("AZUREPS_HOST_ENVIRONMENT", "cloud-shell/1.0")],
    );
}

fn cloud_shell_checks(h: &Hosts, client: &str, env: &[(&str, &str)]) {
    let got = python_host_token(client, env, SCOPE, None).unwrap_or_else(|e| {
        panic!(
            "{client} in Cloud Shell failed: {e}\ndaemon log:\n{}",
            h.d.log_text()
        )
    });
    let claims = h.claims(got["token"].as_str().expect("token"));
    assert_eq!(claims["appid"], h.sys().as_str(), "{client}: {claims}");
    let log = h.d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains(" POST /oauth2/token 200 ") && l.contains(&h.sys())),
        "{client}: no POST /oauth2/token 200 in the log:\n{log}"
    );
}

/// `--check-config` names the other hosts' listeners and never their secrets.
#[test]
fn check_config_lists_the_endpoints_without_secrets() {
    let doc = xtask::config::with_hosts(
        xtask::config::demo("127.0.0.1:0", None),
        "127.0.0.1:18181",
        "127.0.0.1:18182",
    );
    let secrets = [
        doc["app_service"]["secret"].as_str().unwrap().to_string(),
        doc["azure_ml"]["secret"].as_str().unwrap().to_string(),
    ];
    let cfg = DemoConfig::from_json("hosts-check", doc);
    let out = std::process::Command::new(imds_tests::daemon_binary())
        .arg("--check-config")
        .arg(&cfg.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("listen: app_service 127.0.0.1:18181"),
        "{text}"
    );
    assert!(text.contains("listen: azure_ml 127.0.0.1:18182"), "{text}");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "{text}");
    }
}
