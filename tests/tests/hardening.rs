//! Who may ask and how often, against the real daemon: the allow-list (403), the `Host` check
//! against DNS rebinding (403), the per-source limit on costly requests (429 + Retry-After)
//! while cached answers stay free, and config errors for these fields.

use imds_tests::{get, token_target, Daemon, DemoConfig};

const MD: &str = "Metadata: true";
const MGMT: &str = "https://management.azure.com/";

fn demo_with(name: &str, f: impl FnOnce(&mut serde_json::Value)) -> DemoConfig {
    let mut json = xtask::config::demo("127.0.0.1:0", Some("127.0.0.1:0"));
    f(&mut json);
    DemoConfig::from_json(name, json)
}

#[test]
fn sources_outside_the_allow_list_get_403() {
    let cfg = demo_with("allow", |j| {
        j["allow"] = serde_json::json!(["10.0.0.0/8", "fd00::/8"])
    });
    let d = Daemon::start(&cfg);
    for target in [
        token_target(MGMT, ""),
        "/metadata/identity/info?api-version=2018-02-01".into(),
    ] {
        let r = get(d.imds, &target, &[MD]);
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.json()["error"], "forbidden");
    }
    let r = get(
        d.legacy.unwrap(),
        &format!("/oauth2/token?resource={}", imds_tests::pct(MGMT)),
        &[MD],
    );
    assert_eq!(r.status, 403);
    // The public keys stay public.
    assert_eq!(get(d.imds, "/.well-known/jwks.json", &[]).status, 200);
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(
        d.log_text()
            .contains("GET /metadata/identity/oauth2/token 403"),
        "a log line per refusal"
    );
    // Loopback is in the default list.
    let d2 = Daemon::start(&DemoConfig::new("allow-default"));
    assert_eq!(get(d2.imds, &token_target(MGMT, ""), &[MD]).status, 200);
}

#[test]
fn dns_names_in_host_are_refused_unless_listed() {
    let cfg = demo_with("hosts", |j| {
        j["allow_hosts"] = serde_json::json!(["imds.internal"])
    });
    let d = Daemon::start(&cfg);
    let target = token_target(MGMT, "");
    let send = |host: &str| {
        let req = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nMetadata: true\r\nConnection: close\r\n\r\n"
        );
        imds_tests::raw(d.imds, req.as_bytes())
    };
    for bad in [
        "attacker.example",
        "attacker.example:80",
        "169.254.169.254.nip.io",
    ] {
        let r = send(bad);
        assert_eq!(r.status, 403, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"], "forbidden");
    }
    for ok in [
        "169.254.169.254",
        "127.0.0.1:80",
        "localhost:50342",
        "[::1]",
        "IMDS.internal",
    ] {
        assert_eq!(send(ok).status, 200, "{ok}");
    }
}

#[test]
fn costly_requests_are_limited_per_source_cached_ones_are_not() {
    let cfg = demo_with("limits", |j| {
        j["limits"] = serde_json::json!({"rate_per_s": 3, "in_flight": 5})
    });
    let d = Daemon::start(&cfg);
    // Prime the cache (1 mint), then many cached answers: never throttled.
    assert_eq!(get(d.imds, &token_target(MGMT, ""), &[MD]).status, 200);
    for _ in 0..50 {
        assert_eq!(get(d.imds, &token_target(MGMT, ""), &[MD]).status, 200);
    }
    // Fresh mints (bypass_cache) beyond the rate get 429 with Retry-After.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..8 {
        let r = get(d.imds, &token_target(MGMT, "&bypass_cache=true"), &[MD]);
        if r.status == 429 {
            assert_eq!(r.json()["error"], "too_many_requests");
            retry_after = r.header("retry-after").map(str::to_owned);
        }
        statuses.push(r.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().filter(|&&s| s == 200).count() >= 2,
        "{statuses:?}"
    );
    assert!(retry_after.is_some_and(|s| s.parse::<u32>().is_ok_and(|n| n >= 1)));
    // The cached token is still served while the source is throttled.
    assert_eq!(get(d.imds, &token_target(MGMT, ""), &[MD]).status, 200);
    // After a second, credit is back.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(
        get(d.imds, &token_target(MGMT, "&bypass_cache=true"), &[MD]).status,
        200
    );
}

#[test]
fn zero_disables_the_limit() {
    let cfg = demo_with("nolimits", |j| {
        j["limits"] = serde_json::json!({"rate_per_s": 0})
    });
    let d = Daemon::start(&cfg);
    for _ in 0..40 {
        assert_eq!(
            get(d.imds, &token_target(MGMT, "&bypass_cache=true"), &[MD]).status,
            200
        );
    }
}

#[test]
fn bad_guard_config_is_refused() {
    for (field, value, needle) in [
        ("allow", serde_json::json!(["10.0.0.0/40"]), "allow[0]"),
        ("allow", serde_json::json!("10.0.0.0/8"), "allow"),
        ("limits", serde_json::json!({"rate": 1}), "limits"),
        ("limits", serde_json::json!({"rate_per_s": -1}), "limits"),
    ] {
        let cfg = demo_with("badguard", |j| j[field] = value.clone());
        let out = std::process::Command::new(imds_tests::daemon_binary())
            .arg("--config")
            .arg(&cfg.path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{field}={value}: {err}");
    }
}
