//! azure-identity for Python, unmodified, against the host daemon on loopback.
//!
//! The SDK (pinned in tests/py/requirements.txt) is installed into a venv under
//! target/test-tools/py on first run; without PyPI these tests fail, they do not skip.
//! azure-identity is pointed at the daemon the way a user would redirect it:
//! `AZURE_POD_IDENTITY_AUTHORITY_HOST=http://127.0.0.1:PORT`.

use imds_tests::sdk::{python_get_token, scope_resource};
use imds_tests::{get, verify_with_jwks, Daemon, DemoConfig};
use serde_json::Value;
use std::time::{SystemTime, UNIX_EPOCH};

const SCOPE: &str = "https://management.azure.com/.default";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Ask the SDK for a token and check it the way a resource server would: signature against the
/// daemon's JWKS, audience, and the identity it was issued to.
fn sdk_token_checks(
    d: &Daemon,
    cfg: &DemoConfig,
    scope: &str,
    client_id: Option<&str>,
    expect_appid: &str,
) {
    let base = format!("http://{}", d.imds);
    let got = python_get_token(&base, scope, client_id).unwrap_or_else(|e| {
        panic!(
            "azure-identity failed to get a token from {base}: {e}\ndaemon log:\n{}",
            d.log_text()
        )
    });
    let token = got["token"].as_str().expect("token string");
    let jwks = get(d.imds, "/.well-known/jwks.json", &[]).json();
    let claims: Value = verify_with_jwks(token, &jwks)
        .unwrap_or_else(|e| panic!("token from the SDK does not verify: {e}"));
    assert_eq!(claims["appid"], expect_appid, "claims: {claims}");
    assert_eq!(claims["aud"], scope_resource(scope), "claims: {claims}");
    assert_eq!(claims["tid"], cfg.tenant_id.as_str(), "claims: {claims}");
    // The SDK computes expires_on from expires_in; it must agree with the token's own exp.
    let expires_on = got["expires_on"].as_u64().expect("expires_on");
    let exp = claims["exp"].as_u64().expect("exp claim");
    assert!(
        expires_on.abs_diff(exp) <= 5,
        "SDK expires_on {expires_on} vs exp {exp}"
    );
    assert!(
        expires_on > now() + 3600,
        "token expires too soon: {expires_on}"
    );
    // The SDK's request reached the daemon and was answered for that identity.
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("/metadata/identity/oauth2/token")
                && l.contains(" 200 ")
                && l.contains(expect_appid)),
        "no 200 for {expect_appid} in the daemon log:\n{log}"
    );
}

#[test]
fn system_assigned_token_verifies() {
    let cfg = DemoConfig::new("sdk-python-system");
    let d = Daemon::start(&cfg);
    let sys = cfg
        .system
        .clone()
        .expect("demo has a system-assigned identity");
    sdk_token_checks(&d, &cfg, SCOPE, None, &sys.client_id);
}

#[test]
fn user_assigned_by_client_id_token_verifies() {
    let cfg = DemoConfig::new("sdk-python-user");
    let d = Daemon::start(&cfg);
    // The second user-assigned identity: selection must not just take the first one.
    let user = cfg.users[1].clone();
    sdk_token_checks(
        &d,
        &cfg,
        "api://imds-agent-test/.default",
        Some(&user.client_id),
        &user.client_id,
    );
}

#[test]
fn unknown_client_id_is_reported_by_the_sdk() {
    let cfg = DemoConfig::new("sdk-python-unknown");
    let d = Daemon::start(&cfg);
    let base = format!("http://{}", d.imds);
    let err = python_get_token(&base, SCOPE, Some("00000000-0000-4000-8000-000000000000"))
        .expect_err("no token for an identity the VM does not have");
    // azure-identity turns IMDS's 400 into CredentialUnavailableError carrying the description.
    assert!(err.contains("CredentialUnavailableError"), "{err}");
    assert!(err.contains("Identity not found"), "{err}");
}
