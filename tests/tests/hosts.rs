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
