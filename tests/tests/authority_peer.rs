//! The OAuth2 authority peer (node oidc-provider, tests/peers/authority) works end to end without
//! the agent: RFC 7523 assertions built here, client credentials over TLS 1.3 trusting only the
//! throw-away CA, both request styles, access tokens verified against its JWKS, TLS 1.2 and wrong
//! certificates refused, and every fault switch doing what it says.

use imds_tests::authority::{
    curl_token_request, https_request, post_form, token_form, Alg, Authority, AuthorityOpts,
    ClientKey, ClientSpec, Fault, ServerCert, ServerKey, Style, TlsVersions,
};
use imds_tests::Response;
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

const ARM: &str = "https://management.azure.com/";
const VAULT: &str = "https://vault.azure.net";

fn start(clients: Vec<ClientSpec>) -> Authority {
    Authority::start(AuthorityOpts {
        clients,
        ..Default::default()
    })
}

fn es256_client(id: &str) -> (ClientKey, ClientSpec) {
    let key = ClientKey::generate(Alg::ES256, &format!("{id}-key"));
    let spec = ClientSpec::new(id, &key);
    (key, spec)
}

fn error_of(r: &Response) -> String {
    r.json()["error"].as_str().unwrap_or_default().to_string()
}

/// The last logged request's `error` (why oidc-provider refused it).
fn last_error(a: &Authority) -> String {
    a.requests().last().expect("a logged request")["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn es256_client_gets_verifiable_tokens_in_both_styles() {
    let (key, spec) = es256_client("app-es256");
    let a = start(vec![spec]);
    eprintln!("authority started in {:?}", a.startup);

    // v1: resource=R to /oauth2/token; Entra v1 shape (strings, expires_on, resource).
    let body = token_form(
        Style::V1,
        ARM,
        &key.client_assertion("app-es256", &a.token_url_v1),
    );
    let (r, version) = post_form(&a.token_url_v1, &a.ca_pem, &body, TlsVersions::Tls13Only)
        .unwrap_or_else(|e| panic!("{e}\n{}", a.log_text()));
    assert_eq!(version, "TLSv1_3");
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["token_type"], "Bearer");
    assert_eq!(j["resource"], ARM);
    let expires_in: u64 = j["expires_in"]
        .as_str()
        .expect("v1: string")
        .parse()
        .unwrap();
    let expires_on: u64 = j["expires_on"]
        .as_str()
        .expect("v1: string")
        .parse()
        .unwrap();
    assert_eq!(expires_in, 3600);
    assert!(expires_on.abs_diff(imds_tests::authority::unix_now() + 3600) < 60);
    let claims = a
        .verify_access_token(j["access_token"].as_str().unwrap(), ARM)
        .unwrap();
    assert_eq!(claims["client_id"], "app-es256");
    assert_eq!(claims["sub"], "app-es256");
    assert_eq!(claims["tid"], a.tenant.as_str());
    assert_eq!(claims["ver"], "1.0");

    // v2: scope=R/.default to /oauth2/v2.0/token; JSON numbers, scope, no expires_on.
    let r = a
        .request_token(Style::V2, "app-es256", &key, VAULT)
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert!(j["expires_in"].is_u64(), "v2: a number: {j}");
    assert!(j.get("expires_on").is_none());
    assert_eq!(j["scope"], format!("{VAULT}/.default"));
    let token = j["access_token"].as_str().unwrap();
    let claims = a.verify_access_token(token, VAULT).unwrap();
    assert_eq!(claims["ver"], "2.0");
    // Signed with the provider's ES256 key, JWT access token profile.
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["typ"], "at+jwt");
    // A token for one resource is not one for another.
    assert!(a.verify_access_token(token, ARM).is_err());

    // The other style on each endpoint works too; the shape follows the endpoint.
    let body = token_form(
        Style::V2,
        ARM,
        &key.client_assertion("app-es256", &a.token_url_v1),
    );
    let (r, _) = post_form(&a.token_url_v1, &a.ca_pem, &body, TlsVersions::Tls13Only).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["expires_in"].is_string());
    assert_eq!(r.json()["resource"], ARM);

    // `localhost` names the same endpoint (the certificate covers it).
    let url = a.token_url_at(Style::V2, "localhost");
    let body = token_form(Style::V2, ARM, &key.client_assertion("app-es256", &url));
    let (r, _) = post_form(&url, &a.ca_pem, &body, TlsVersions::Tls13Only).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    // The request log shows what was sent.
    let log = a.requests();
    assert_eq!(log.len(), 4);
    assert_eq!(log[0]["style"], "v1");
    assert_eq!(log[0]["params"]["resource"], ARM);
    assert_eq!(
        log[0]["assertion"]["claims"]["aud"],
        a.token_url_v1.as_str()
    );
    assert_eq!(log[0]["assertion"]["header"]["kid"], "app-es256-key");
    assert_eq!(log[1]["params"]["scope"], format!("{VAULT}/.default"));
    assert!(log.iter().all(|e| e["status"] == 200));
    a.clear_requests();
    assert!(a.requests().is_empty());

    let status = a.terminate();
    assert!(status.success(), "exit on SIGTERM: {status:?}");
}

#[test]
fn ps256_certificate_client_and_rsa_server_like_entra() {
    let t = Instant::now();
    let key = ClientKey::generate(Alg::PS256, "ps-key").with_certificate("app-ps256");
    eprintln!("RSA client key + certificate in {:?}", t.elapsed());
    let x5t = key.x5t_s256.clone().unwrap();
    let spec = ClientSpec::new("app-ps256", &key).resources(&[ARM]);
    let t = Instant::now();
    let a = Authority::start(AuthorityOpts {
        clients: vec![spec],
        server_key: ServerKey::Rsa2048,
        token_alg: Alg::RS256,
        ..Default::default()
    });
    eprintln!("authority (RSA PKI) started in {:?}", t.elapsed());

    for style in [Style::V1, Style::V2] {
        let r = a.request_token(style, "app-ps256", &key, ARM).unwrap();
        assert_eq!(r.status, 200, "{style:?}: {}", r.text());
        let token = r.json()["access_token"].as_str().unwrap().to_string();
        let claims = a.verify_access_token(&token, ARM).unwrap();
        assert_eq!(claims["client_id"], "app-ps256");
    }
    let log = a.requests();
    assert_eq!(log[0]["assertion"]["header"]["alg"], "PS256");
    assert_eq!(log[0]["assertion"]["header"]["x5t#S256"], x5t.as_str());

    // The registered certificate is required: the same key without x5t#S256 is refused.
    let mut no_cert = key.clone();
    no_cert.x5t_s256 = None;
    let r = a
        .request_token(Style::V2, "app-ps256", &no_cert, ARM)
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(error_of(&r), "invalid_client");
    assert!(last_error(&a).contains("x5t#S256"), "{}", last_error(&a));

    // Resources outside the client's list are refused.
    let r = a
        .request_token(Style::V1, "app-ps256", &key, VAULT)
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(error_of(&r), "invalid_target");
}

#[test]
fn rs256_client_and_ps256_tokens() {
    let key = ClientKey::generate(Alg::RS256, "rs-key");
    let a = Authority::start(AuthorityOpts {
        clients: vec![ClientSpec::new("app-rs256", &key)],
        token_alg: Alg::PS256,
        ..Default::default()
    });
    let r = a.request_token(Style::V2, "app-rs256", &key, ARM).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    a.verify_access_token(r.json()["access_token"].as_str().unwrap(), ARM)
        .unwrap();
}

#[test]
fn bad_requests_are_refused() {
    let (key, spec) = es256_client("app-a");
    let a = start(vec![spec]);
    let post = |url: &str, body: &str| {
        post_form(url, &a.ca_pem, body, TlsVersions::Tls13Only)
            .unwrap()
            .0
    };

    // aud must be the token endpoint posted to (the v2 URL is not the v1 endpoint).
    let body = token_form(
        Style::V1,
        ARM,
        &key.client_assertion("app-a", &a.token_url_v2),
    );
    let r = post(&a.token_url_v1, &body);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"));
    assert!(last_error(&a).contains("aud"), "{}", last_error(&a));

    // An assertion is good once (jti replay).
    let body = token_form(
        Style::V1,
        ARM,
        &key.client_assertion("app-a", &a.token_url_v1),
    );
    assert_eq!(post(&a.token_url_v1, &body).status, 200);
    let r = post(&a.token_url_v1, &body);
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"));

    // Signed by another key with the same kid.
    let other = ClientKey::generate(Alg::ES256, "app-a-key");
    let r = a.request_token(Style::V2, "app-a", &other, ARM).unwrap();
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"));

    // Unknown client.
    let r = a.request_token(Style::V2, "nobody", &key, ARM).unwrap();
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"));

    // sub must equal iss.
    let now = imds_tests::authority::unix_now();
    let bad_sub = key.sign_jws(
        &serde_json::json!({"kid": "app-a-key", "typ": "JWT"}),
        &serde_json::json!({"aud": a.token_url_v2, "iss": "app-a", "sub": "someone-else",
            "jti": imds_tests::authority::random_id(), "iat": now, "nbf": now, "exp": now + 300}),
    );
    let r = post(&a.token_url_v2, &token_form(Style::V2, ARM, &bad_sub));
    // (oidc-provider looks the client up by `sub`: "client not found".)
    assert_eq!((r.status, error_of(&r).as_str()), (401, "invalid_client"));
    assert!(!last_error(&a).is_empty());

    // v2 scope without /.default, and neither scope nor resource.
    let assertion = key.client_assertion("app-a", &a.token_url_v2);
    let body = format!(
        "grant_type=client_credentials&scope=openid&client_assertion_type={}&client_assertion={assertion}",
        imds_tests::pct(imds_tests::authority::JWT_BEARER)
    );
    let r = post(&a.token_url_v2, &body);
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_scope"));
    let assertion = key.client_assertion("app-a", &a.token_url_v2);
    let body = format!(
        "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}",
        imds_tests::pct(imds_tests::authority::JWT_BEARER)
    );
    let r = post(&a.token_url_v2, &body);
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_request"));

    // A client registered at run time works at once.
    let (key_b, spec_b) = es256_client("app-b");
    a.register_client(&spec_b).unwrap();
    let r = a.request_token(Style::V2, "app-b", &key_b, ARM).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `curl --cacert <the authority's CA> EXTRA <its JWKS URL>`.
fn curl(a: &Authority, extra: &[&str]) -> std::process::Output {
    Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(&a.ca_path)
        .args(extra)
        .arg(&a.jwks_url)
        .output()
        .expect("run curl")
}

#[test]
fn only_tls_1_3_and_only_the_right_certificate() {
    let (key, spec) = es256_client("app-tls");
    let a = start(vec![spec]);

    // rustls offering only TLS 1.2: no handshake.
    let e = https_request(
        &a.jwks_url,
        &a.ca_pem,
        "GET",
        &[],
        b"",
        TlsVersions::Tls12Only,
    )
    .unwrap_err();
    assert!(e.contains("handshake"), "{e}");
    // curl capped at TLS 1.2: refused; curl with TLS 1.3: fine.
    let out = curl(&a, &["--tls-max", "1.2"]);
    assert!(!out.status.success(), "TLS 1.2 must be refused");
    let out = curl(&a, &["--tlsv1.3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client that trusts another CA refuses the server.
    let e = a.request_token(Style::V2, "app-tls", &key, ARM);
    assert!(e.is_ok());
    let e = https_request(
        &a.jwks_url,
        &a.other_ca_pem,
        "GET",
        &[],
        b"",
        TlsVersions::Tls13Only,
    )
    .unwrap_err();
    assert!(e.contains("handshake") && e.contains("certificate"), "{e}");
    drop(a);

    // A server certificate for the wrong name, from the trusted CA.
    let a = Authority::start(AuthorityOpts {
        server_cert: ServerCert::WrongName,
        ..Default::default()
    });
    let e = a.get(&a.jwks_url).unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    assert!(!curl(&a, &["--tlsv1.3"]).status.success());
    drop(a);

    // A server certificate for the right name, from another CA.
    let a = Authority::start(AuthorityOpts {
        server_cert: ServerCert::OtherCa,
        ..Default::default()
    });
    let e = a.get(&a.jwks_url).unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    assert!(!curl(&a, &["--tlsv1.3"]).status.success());
}

#[test]
fn fault_switches() {
    let (key, spec) = es256_client("app-f");
    let a = start(vec![spec]);
    let ask = || a.request_token(Style::V2, "app-f", &key, ARM);

    a.set_fault(Fault::Delay(Duration::from_millis(400)));
    let t = Instant::now();
    let r = ask().unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(r.status, 200, "{}", r.text());

    for status in [500, 503] {
        a.set_fault(Fault::Status(status));
        let r = ask().unwrap();
        assert_eq!(r.status, status);
        assert!(r.json()["error"].is_string());
    }

    a.set_fault(Fault::TooMany { retry_after: 7 });
    let r = ask().unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("7"));

    a.set_fault(Fault::Malformed);
    let r = ask().unwrap();
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(serde_json::from_slice::<Value>(&r.body).is_err());

    a.set_fault(Fault::InvalidClient);
    let r = ask().unwrap();
    assert_eq!((r.status, error_of(&r).as_str()), (400, "invalid_client"));

    a.set_fault(Fault::Drop);
    let e = ask().unwrap_err();
    assert!(e.contains("read"), "{e}");

    // Faults apply to token requests only.
    a.set_fault(Fault::Status(503));
    assert_eq!(a.get(&a.jwks_url).unwrap().status, 200);

    // A counted fault, then normal service.
    a.set_fault_times(Fault::Status(503), 2);
    assert_eq!(ask().unwrap().status, 503);
    assert_eq!(ask().unwrap().status, 503);
    assert_eq!(ask().unwrap().status, 200);

    a.set_fault(Fault::Status(500));
    a.set_fault(Fault::None);
    assert_eq!(ask().unwrap().status, 200);

    let faults: Vec<Value> = a.requests().iter().map(|e| e["fault"].clone()).collect();
    assert_eq!(faults[0], "delay");
    assert_eq!(faults[3], "too_many");
    assert_eq!(*faults.last().unwrap(), Value::Null);
}

#[test]
fn curl_token_request_is_timed() {
    let (key, spec) = es256_client("app-curl");
    let a = start(vec![spec]);
    for style in [Style::V1, Style::V2] {
        let url = a.token_url(style);
        let body = token_form(style, ARM, &key.client_assertion("app-curl", url));
        let r = curl_token_request(url, &a.ca_path, &body).unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let j: Value = serde_json::from_str(&r.body).unwrap();
        a.verify_access_token(j["access_token"].as_str().unwrap(), ARM)
            .unwrap();
        assert!(r.time_total > Duration::ZERO && r.time_total <= r.elapsed);
        assert!(r.time_appconnect <= r.time_total);
        eprintln!(
            "curl {style:?}: process {:?}, time_total {:?}, TLS done at {:?}",
            r.elapsed, r.time_total, r.time_appconnect
        );
    }
}
