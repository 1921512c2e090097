//! Broker mode end to end: the daemon fetches tokens from a real OAuth2 authority (node
//! oidc-provider over TLS 1.3, a throw-away CA) with RFC 7523 client assertions, caches them,
//! serves them through the IMDS endpoint — and every failure of the authority is provoked and
//! answered the way Azure's IMDS would.

use imds_tests::authority::{
    Alg, Authority, AuthorityOpts, ClientKey, ClientSpec, Fault, ServerCert, ServerKey, Style,
};
use imds_tests::brokered::{self, agent_client_key};
use imds_tests::{get, token_target, Daemon, DemoConfig, Response};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MD: &str = "Metadata: true";
const MGMT: &str = "https://management.azure.com/";
const VAULT: &str = "https://vault.azure.net";

/// A daemon in broker mode against an authority that knows its identities.
struct Rig {
    style: Style,
    authority: Authority,
    daemon: Daemon,
    cfg: DemoConfig,
}

fn agent_key() -> ClientKey {
    agent_client_key(Alg::ES256)
}

fn rig_with(
    style: Style,
    cert: ServerCert,
    ttl: u64,
    edit: impl FnOnce(&mut Value, &Authority),
) -> Rig {
    let mut json = xtask::config::demo("127.0.0.1:0", Some("127.0.0.1:0"));
    let mut clients = Vec::new();
    for id in json["identities"].as_array_mut().unwrap() {
        let key = agent_key();
        clients.push(ClientSpec::new(id["client_id"].as_str().unwrap(), &key));
        id["key"] = key.private_pem.clone().into();
    }
    let authority = Authority::start(AuthorityOpts {
        clients,
        server_cert: cert,
        access_token_ttl: ttl,
        ..AuthorityOpts::default()
    });
    json["authority"] = json!({
        "token_url": authority.token_url_at(style, "localhost"),
        "ca_cert": authority.ca_pem,
        "style": match style { Style::V1 => "v1", Style::V2 => "v2" },
        "address": authority.https.to_string(),
        "timeout_s": 30,
    });
    edit(&mut json, &authority);
    let cfg = DemoConfig::from_json("broker", json);
    let daemon = Daemon::start(&cfg);
    Rig {
        style,
        authority,
        daemon,
        cfg,
    }
}

fn rig(style: Style) -> Rig {
    rig_with(style, ServerCert::Valid, 3600, |_, _| {})
}

fn token(r: &Rig, resource: &str, extra: &str) -> Response {
    get(r.daemon.imds, &token_target(resource, extra), &[MD])
}

fn assert_brokered(r: &Rig, resp: &Response, resource: &str, client_id: &str) -> Value {
    let skew = brokered::host_clock_skew(r.style);
    brokered::assert_brokered(&r.authority, resp, resource, client_id, skew, || {
        format!("agent log:\n{}", r.daemon.log_text())
    })
}

#[test]
fn v1_tokens_are_fetched_verified_cached_and_served() {
    let r = rig(Style::V1);
    let (_, reqs) = brokered::v1_fetched_cached_and_served(
        &r.cfg,
        &r.authority,
        |resource, extra| token(&r, resource, extra),
        |resp, resource, client_id| assert_brokered(&r, resp, resource, client_id),
    );
    // The assertion carries the key's kid, and a fresh jti each time.
    assert!(reqs[0]["assertion"]["header"]["kid"].is_string());
    assert_ne!(
        reqs[0]["assertion"]["claims"]["jti"], reqs[1]["assertion"]["claims"]["jti"],
        "fresh jti"
    );
}

#[test]
fn v2_scope_style_and_json_numbers() {
    // v2 answers have no expires_on: the agent computes it from expires_in.
    let r = rig(Style::V2);
    brokered::v2_scope_and_computed_expiry(
        &r.cfg,
        &r.authority,
        |resource, extra| token(&r, resource, extra),
        |resp, resource, client_id| assert_brokered(&r, resp, resource, client_id),
        10,
    );
}

#[test]
fn a_v2_lifetime_counts_from_the_request_not_the_answer() {
    // The token is issued, then its answer takes 2 s to arrive: expires_on (computed from
    // expires_in) must not be later than the token's exp, so the agent never serves a token
    // as valid after it has expired.
    let r = rig(Style::V2);
    r.authority
        .set_fault(Fault::DelayAnswer(Duration::from_secs(2)));
    let sys = r.cfg.system.clone().unwrap();
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);
    assert_eq!(r.authority.requests()[0]["fault"], "delay_answer");
}

#[test]
fn concurrent_requests_share_one_fetch_and_nothing_stalls() {
    let r = rig(Style::V1);
    // Prime one resource, then make the authority slow.
    let sys = r.cfg.system.clone().unwrap();
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);
    r.authority
        .set_fault(Fault::Delay(Duration::from_millis(1500)));
    let addr = r.daemon.imds;
    let waiting: Vec<_> = (0..5)
        .map(|_| std::thread::spawn(move || get(addr, &token_target(VAULT, ""), &[MD]).status))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // While the fetch is in flight: cached tokens, probes and other endpoints answer at once.
    let t = Instant::now();
    assert_eq!(token(&r, MGMT, "").status, 200);
    assert_eq!(
        get(addr, "/metadata/identity/oauth2/token", &[]).status,
        400
    );
    assert_eq!(
        get(
            addr,
            "/metadata/identity/info?api-version=2018-02-01",
            &[MD]
        )
        .status,
        200
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "answered in {:?} during a fetch",
        t.elapsed()
    );
    for w in waiting {
        assert_eq!(w.join().unwrap(), 200);
    }
    let vault_fetches = r
        .authority
        .requests()
        .iter()
        .filter(|q| q["params"]["resource"] == VAULT)
        .count();
    assert_eq!(
        vault_fetches, 1,
        "five waiting requests, one upstream fetch"
    );
}

fn assert_imds_error(resp: &Response, status: u16, code: &str) {
    brokered::assert_imds_error(resp, status, code, String::new);
}

#[test]
fn authority_down_is_503_and_a_cached_token_is_still_served() {
    let r = rig(Style::V1);
    let sys = r.cfg.system.clone().unwrap();
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);
    let Rig {
        authority, daemon, ..
    } = r;
    let _ = authority.terminate();
    // The known token is still served.
    assert_eq!(get(daemon.imds, &token_target(MGMT, ""), &[MD]).status, 200);
    // A new one cannot be had: 503 with Retry-After, after bounded retries.
    let t = Instant::now();
    let resp = get(daemon.imds, &token_target(VAULT, ""), &[MD]);
    assert_imds_error(&resp, 503, "service_unavailable");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
}

#[test]
fn a_slow_authority_times_out_with_503() {
    let r = rig_with(Style::V1, ServerCert::Valid, 3600, |j, _| {
        j["authority"]["timeout_s"] = 4.into()
    });
    r.authority.set_fault(Fault::Delay(Duration::from_secs(30)));
    let t = Instant::now();
    let resp = token(&r, MGMT, "");
    assert_imds_error(&resp, 503, "service_unavailable");
    assert!(
        t.elapsed() >= Duration::from_secs(3) && t.elapsed() < Duration::from_secs(9),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn untrusted_certificate_or_wrong_name_fail_the_handshake() {
    for cert in [ServerCert::OtherCa, ServerCert::WrongName] {
        let r = rig_with(Style::V1, cert, 3600, |_, _| {});
        let resp = token(&r, MGMT, "");
        assert_imds_error(&resp, 500, "server_error");
        assert!(resp.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("TLS"));
        assert!(
            r.authority.requests().is_empty(),
            "{cert:?}: no request may reach an unverified server"
        );
        std::thread::sleep(Duration::from_millis(600));
        assert!(
            r.daemon.log_text().contains("TLS: InvalidCertificate"),
            "{}",
            r.daemon.log_text()
        );
    }
}

#[test]
fn a_pinned_server_key_is_trusted_and_another_key_is_refused() {
    let pin_of = |pick: fn(&Authority) -> String| {
        move |j: &mut Value, a: &Authority| {
            let authority = j["authority"].as_object_mut().unwrap();
            authority.remove("ca_cert");
            authority.insert("spki_sha256".into(), pick(a).into());
        }
    };
    // The pin replaces ca_cert: the server's own key is trusted.
    let r = rig_with(
        Style::V1,
        ServerCert::Valid,
        3600,
        pin_of(|a| a.pki.server.spki_sha256.clone()),
    );
    let sys = r.cfg.system.clone().unwrap();
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);
    // Any other key is refused in the handshake: nothing reaches the server.
    let r = rig_with(
        Style::V1,
        ServerCert::Valid,
        3600,
        pin_of(|a| a.pki.other_key_spki_sha256.clone()),
    );
    let resp = token(&r, MGMT, "");
    assert_imds_error(&resp, 500, "server_error");
    assert!(r.authority.requests().is_empty());
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        r.daemon.log_text().contains("TLS: InvalidCertificate"),
        "{}",
        r.daemon.log_text()
    );
}

#[test]
fn refusals_and_bad_answers_are_500_and_logged_without_secrets() {
    let r = rig(Style::V1);
    r.authority.set_fault(Fault::InvalidClient);
    let resp = token(&r, MGMT, "");
    assert_imds_error(&resp, 500, "server_error");
    assert_eq!(r.authority.requests().len(), 1, "4xx is not retried");
    r.authority.set_fault(Fault::Malformed);
    assert_imds_error(&token(&r, VAULT, ""), 500, "server_error");
    r.authority.set_fault(Fault::None);
    std::thread::sleep(Duration::from_millis(600));
    let log = r.daemon.log_text();
    assert!(
        log.contains("invalid_client"),
        "the upstream error text is logged: {log}"
    );
    assert!(
        !log.contains("eyJ"),
        "no JWT (token or assertion) in the log: {log}"
    );
    assert!(!log.contains("PRIVATE KEY"));
}

#[test]
fn transient_5xx_and_429_are_retried() {
    let r = rig(Style::V1);
    r.authority.set_fault_times(Fault::Status(503), 1);
    let sys = r.cfg.system.clone().unwrap();
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);
    r.authority
        .set_fault_times(Fault::TooMany { retry_after: 1 }, 1);
    let t = Instant::now();
    assert_brokered(&r, &token(&r, VAULT, ""), VAULT, &sys.client_id);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured: {:?}",
        t.elapsed()
    );
    // A persistent 500: 503 to the client once the attempts are spent.
    r.authority.set_fault(Fault::Status(500));
    assert_imds_error(
        &token(&r, "https://storage.azure.com/", ""),
        503,
        "service_unavailable",
    );
    r.authority.set_fault(Fault::Drop);
    assert_imds_error(
        &token(&r, "https://graph.microsoft.com/", ""),
        503,
        "service_unavailable",
    );
}

#[test]
fn tokens_are_renewed_ahead_in_the_background() {
    // 500 s tokens with the default 300 s margin: inside 2 × margin, so every serve past the
    // minimum refresh interval starts a background renewal; clients never wait for it.
    let r = rig_with(Style::V1, ServerCert::Valid, 500, |j, _| {
        j["refresh_margin_s"] = 300.into()
    });
    let first = token(&r, MGMT, "").json();
    assert_eq!(brokered::fetched(&r.authority), 1);
    // Within the minimum refresh interval: no renewal yet.
    let again = token(&r, MGMT, "").json();
    assert_eq!(first["access_token"], again["access_token"]);
    assert_eq!(brokered::fetched(&r.authority), 1);
    let _ = first;
}

#[test]
fn azure_identity_gets_a_brokered_token() {
    let r = rig(Style::V1);
    let base = format!("http://{}", r.daemon.imds);
    let user = r.cfg.users[1].clone();
    let got = imds_tests::sdk::python_get_token(
        &base,
        "https://management.azure.com/.default",
        Some(&user.client_id),
    )
    .expect("azure-identity gets a token");
    let tok = got["token"].as_str().unwrap();
    r.authority
        .verify_access_token(tok, "https://management.azure.com")
        .or_else(|_| r.authority.verify_access_token(tok, MGMT))
        .expect("the SDK's token is the authority's");
}

/// Microsoft Entra ID style (the `rsa` feature): an RSA server certificate, PS256 assertions,
/// and RS256 assertions for a certificate credential (with `x5t` and `x5t#S256`).
#[test]
fn rsa_server_certificate_and_ps256_rs256_assertions() {
    let mut json = xtask::config::demo("127.0.0.1:0", Some("127.0.0.1:0"));
    let ids = json["identities"].as_array_mut().unwrap();
    let ps = agent_client_key(Alg::PS256);
    let rs = agent_client_key(Alg::RS256).with_certificate("imds-agent test identity");
    ids[0]["key"] = ps.private_pem.clone().into();
    ids[0]["alg"] = "PS256".into();
    ids[1]["key"] = rs.private_pem.clone().into();
    ids[1]["alg"] = "RS256".into();
    ids[1]["certificate"] = rs.cert_pem.clone().unwrap().into();
    ids.truncate(2);
    let clients = vec![
        ClientSpec::new(ids[0]["client_id"].as_str().unwrap(), &ps),
        ClientSpec::new(ids[1]["client_id"].as_str().unwrap(), &rs),
    ];
    let authority = Authority::start(AuthorityOpts {
        clients,
        server_key: ServerKey::Rsa2048,
        ..AuthorityOpts::default()
    });
    json["authority"] = json!({
        "token_url": authority.token_url_at(Style::V2, "localhost"),
        "ca_cert": authority.ca_pem,
        "style": "v2",
        "address": authority.https.to_string(),
        "timeout_s": 20,
    });
    let cfg = DemoConfig::from_json("broker-rsa", json.clone());
    let daemon = Daemon::start(&cfg);
    let r = Rig {
        style: Style::V2,
        authority,
        daemon,
        cfg,
    };
    let sys = r.cfg.system.clone().unwrap();
    let user = r.cfg.users[0].clone();
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);
    assert_brokered(
        &r,
        &token(&r, MGMT, &format!("&client_id={}", user.client_id)),
        MGMT,
        &user.client_id,
    );
    let reqs = r.authority.requests();
    assert_eq!(reqs[0]["assertion"]["header"]["alg"], "PS256");
    assert_eq!(reqs[1]["assertion"]["header"]["alg"], "RS256");
    assert!(
        reqs[1]["assertion"]["header"]["x5t"].is_string(),
        "{}",
        reqs[1]
    );
    assert_eq!(
        reqs[1]["assertion"]["header"]["x5t#S256"],
        rs.x5t_s256.clone().unwrap().as_str()
    );

    // The RSA server key pinned instead of the CA (its CertificateVerify is RSA-PSS).
    let authority = json["authority"].as_object_mut().unwrap();
    authority.remove("ca_cert");
    authority.insert(
        "spki_sha256".into(),
        r.authority.pki.server.spki_sha256.clone().into(),
    );
    let cfg = DemoConfig::from_json("broker-rsa-pin", json);
    let pinned = Rig {
        daemon: Daemon::start(&cfg),
        cfg,
        ..r
    };
    assert_brokered(&pinned, &token(&pinned, VAULT, ""), VAULT, &sys.client_id);
}

/// The address the daemon logged as `listening NAME=ADDR` (the other hosts' listeners).
fn logged_addr(d: &Daemon, name: &str) -> std::net::SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log_text();
        let found = log.split_whitespace().find_map(|w| {
            w.strip_prefix(&format!("{name}="))
                .and_then(|v| v.parse().ok())
        });
        if let Some(a) = found {
            return a;
        }
        assert!(Instant::now() < deadline, "no {name}= in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The other Azure hosts' endpoints (issue 13) serve brokered tokens from the same cache: App
/// Service's request waits for the fetch and gets App Service's shape; Arc's retry, which
/// used its secret, waits for the fetch without a second challenge.
#[test]
fn other_hosts_serve_brokered_tokens() {
    let key_dir = imds_tests::target_dir()
        .join("test-arc")
        .join(format!("broker-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&key_dir);
    let dir = key_dir.to_str().unwrap().to_string();
    let r = rig_with(Style::V1, ServerCert::Valid, 3600, |json, _| {
        json["app_service"] = json!({"listen": "127.0.0.1:0", "secret": "app-secret-1"});
        json["arc"] = json!({"listen": "127.0.0.1:0", "key_dir": dir});
    });
    let app = logged_addr(&r.daemon, "app_service");
    let arc = logged_addr(&r.daemon, "arc");
    let sys = r.cfg.system.clone().unwrap();
    // A slow authority: the requests park.
    r.authority
        .set_fault(Fault::Delay(Duration::from_millis(500)));
    let resp = get(
        app,
        &format!(
            "/msi/token?api-version=2019-08-01&resource={}",
            imds_tests::pct(VAULT)
        ),
        &["X-IDENTITY-HEADER: app-secret-1"],
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let b = resp.json();
    assert_eq!(b["client_id"], sys.client_id.as_str());
    assert_eq!(b["resource"], VAULT);
    assert!(b["expires_on"].as_str().unwrap().parse::<u64>().is_ok());
    // The IMDS endpoint answers from the same cache: no second fetch.
    let before = brokered::fetched(&r.authority);
    let imds = token(&r, VAULT, "").json();
    assert_eq!(imds["access_token"], b["access_token"]);
    assert_eq!(brokered::fetched(&r.authority), before);

    // Arc, for a resource not cached yet.
    let target = format!(
        "/metadata/identity/oauth2/token?api-version=2020-06-01&resource={}",
        imds_tests::pct(MGMT)
    );
    let c = get(arc, &target, &[MD]);
    assert_eq!(c.status, 401);
    let realm = c.header("www-authenticate").unwrap();
    let path = realm.strip_prefix("Basic realm=").unwrap();
    let secret = std::fs::read_to_string(path).unwrap();
    let resp = get(
        arc,
        &target,
        &[MD, &format!("Authorization: Basic {secret}")],
    );
    let body = assert_brokered(&r, &resp, MGMT, &sys.client_id);
    assert!(body["expires_in"].is_string());
    assert_eq!(brokered::fetched(&r.authority), before + 1);
    let _ = std::fs::remove_dir_all(&key_dir);
}
