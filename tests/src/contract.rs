//! The HTTP contract of PROTOCOL.md, as cases that run against any [`Target`]: the host daemon
//! and the unikernel share them (see `contract_tests!`). Every case sends real bytes over a
//! real socket and checks status, headers and JSON.

use crate::{
    connect, get, raw, read_response, token_target, verify_with_jwks, DemoConfig, Response,
};
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;

/// Something that serves the contract.
pub struct Target {
    pub imds: SocketAddr,
    /// The legacy endpoint's address, if the target has a separate one (the unikernel
    /// answers `/oauth2/token` on its one listener).
    pub legacy: SocketAddr,
    pub cfg: DemoConfig,
}

const MGMT: &str = "https://management.azure.com/";
const MD: &str = "Metadata: true";

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8"),
        "error content type"
    );
    let j = r.json();
    assert_eq!(j["error"], code, "body: {j}");
    assert!(
        j["error_description"]
            .as_str()
            .is_some_and(|d| !d.is_empty()),
        "body: {j}"
    );
}

fn jwks(t: &Target) -> Value {
    let r = get(t.imds, "/.well-known/jwks.json", &[]);
    assert_eq!(r.status, 200);
    r.json()
}

/// The fields of an IMDS token answer, all JSON strings as Azure sends them (numbers as
/// decimal strings), and `token_type` Bearer.
pub fn assert_imds_token_shape(j: &Value) {
    for field in [
        "access_token",
        "expires_in",
        "expires_on",
        "ext_expires_in",
        "not_before",
        "resource",
        "token_type",
        "client_id",
    ] {
        assert!(j[field].is_string(), "{field} must be a JSON string: {j}");
    }
    for field in ["expires_in", "expires_on", "ext_expires_in", "not_before"] {
        let s = j[field].as_str().unwrap();
        assert!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
            "{field} = {s:?}"
        );
    }
    assert_eq!(j["token_type"], "Bearer");
}

/// Check a success body field by field and return it.
pub fn assert_token(t: &Target, r: &Response, resource: &str, client_id: &str) -> Value {
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let j = r.json();
    assert_imds_token_shape(&j);
    assert!(j["refresh_token"].is_string(), "{j}");
    assert_eq!(j["resource"], resource, "resource is echoed byte for byte");
    assert_eq!(j["client_id"], client_id);
    let exp: u64 = j["expires_on"].as_str().unwrap().parse().unwrap();
    let nbf: u64 = j["not_before"].as_str().unwrap().parse().unwrap();
    let expires_in: u64 = j["expires_in"].as_str().unwrap().parse().unwrap();
    assert!(exp > nbf);
    assert!(
        expires_in > 300 && expires_in <= exp - nbf,
        "expires_in {expires_in}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        exp.abs_diff(now + expires_in) <= 5,
        "expires_on agrees with expires_in and the clock"
    );
    let claims = verify_with_jwks(j["access_token"].as_str().unwrap(), &jwks(t))
        .expect("token verifies with the JWKS");
    assert_eq!(claims["aud"], resource);
    assert_eq!(claims["appid"], client_id);
    assert_eq!(claims["tid"], t.cfg.tenant_id.as_str());
    assert_eq!(claims["exp"].as_u64(), Some(exp));
    j
}

fn system(t: &Target) -> &crate::Ident {
    t.cfg
        .system
        .as_ref()
        .expect("the demo has a system-assigned identity")
}

// ---- success --------------------------------------------------------------------------------

pub fn system_assigned_by_default(t: &Target) {
    let r = get(t.imds, &token_target(MGMT, ""), &[MD]);
    let j = assert_token(t, &r, MGMT, &system(t).client_id);
    let claims = crate::jwt_claims(j["access_token"].as_str().unwrap());
    assert_eq!(claims["oid"], system(t).object_id.as_str());
    assert_eq!(claims["xms_mirid"], system(t).resource_id.as_str());
    assert_eq!(claims["idtyp"], "app");
    assert!(j.get("object_id").is_none() && j.get("msi_res_id").is_none());
}

pub fn user_assigned_by_each_selector(t: &Target) {
    let u = &t.cfg.users[0];
    let r = get(
        t.imds,
        &token_target(MGMT, &format!("&client_id={}", u.client_id)),
        &[MD],
    );
    assert_token(t, &r, MGMT, &u.client_id);
    let upper = u.client_id.to_uppercase();
    let r = get(
        t.imds,
        &token_target(MGMT, &format!("&client_id={upper}")),
        &[MD],
    );
    assert_token(t, &r, MGMT, &u.client_id);
    for sel in ["object_id", "principal_id"] {
        let r = get(
            t.imds,
            &token_target(MGMT, &format!("&{sel}={}", u.object_id)),
            &[MD],
        );
        let j = assert_token(t, &r, MGMT, &u.client_id);
        assert_eq!(j["object_id"], u.object_id.as_str(), "object_id echoed");
    }
    for sel in ["msi_res_id", "mi_res_id"] {
        let rid = u.resource_id.to_lowercase();
        let r = get(
            t.imds,
            &token_target(MGMT, &format!("&{sel}={}", crate::pct(&rid))),
            &[MD],
        );
        let j = assert_token(t, &r, MGMT, &u.client_id);
        assert_eq!(j["msi_res_id"], u.resource_id.as_str(), "msi_res_id echoed");
    }
    let u2 = &t.cfg.users[1];
    let r = get(
        t.imds,
        &token_target(MGMT, &format!("&client_id={}", u2.client_id)),
        &[MD],
    );
    assert_token(t, &r, MGMT, &u2.client_id);
}

pub fn header_and_path_variants(t: &Target) {
    let sys = &system(t).client_id;
    // Lower-case header name (Rust SDK), `True` (Azure samples).
    for h in ["metadata: true", "Metadata: True", "METADATA:TRUE"] {
        assert_token(t, &get(t.imds, &token_target(MGMT, ""), &[h]), MGMT, sys);
    }
    // msal-node: the whole URL lower-cased, a trailing slash, a Content-Type with no body.
    let target = "/metadata/identity/oauth2/token/?api-version=2019-08-01&resource=https://management.azure.com/";
    assert_token(
        t,
        &get(
            t.imds,
            target,
            &[MD, "Content-Type: application/x-www-form-urlencoded"],
        ),
        MGMT,
        sys,
    );
    let target = "/METADATA/identity/oauth2/token?api-version=2025-04-07&resource=https%3A%2F%2Fmanagement.azure.com%2F";
    assert_token(t, &get(t.imds, target, &[MD]), MGMT, sys);
    // Raw resource with bare ':' and '/', '+' as space.
    let target =
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
    assert_token(
        t,
        &get(t.imds, target, &[MD]),
        "https://vault.azure.net",
        sys,
    );
    let target = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://x+y";
    assert_token(t, &get(t.imds, target, &[MD]), "api://x y", sys);
    // Unknown parameters are ignored.
    let r = get(
        t.imds,
        &token_target(MGMT, "&authority=x&xms_cc=cp1&token_sha256_to_refresh=ab"),
        &[MD],
    );
    assert_token(t, &r, MGMT, sys);
}

pub fn head_answers_without_body(t: &Target) {
    let req = format!(
        "HEAD {} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nConnection: close\r\n\r\n",
        token_target(MGMT, "")
    );
    let r = raw(t.imds, req.as_bytes());
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert!(r.header("content-length").is_some_and(|l| l != "0"));
}

pub fn cache_and_bypass(t: &Target) {
    let a = get(t.imds, &token_target("https://cache.test/", ""), &[MD]).json();
    let b = get(t.imds, &token_target("https://cache.test/", ""), &[MD]).json();
    assert_eq!(a["access_token"], b["access_token"], "served from cache");
    let c = get(
        t.imds,
        &token_target("https://cache.test/", "&bypass_cache=true"),
        &[MD],
    )
    .json();
    assert_ne!(
        a["access_token"], c["access_token"],
        "bypass_cache forces a fresh token"
    );
    let d = get(t.imds, &token_target("https://cache.test/", ""), &[MD]).json();
    assert_eq!(
        c["access_token"], d["access_token"],
        "the fresh token replaced the cached one"
    );
    // With and without a trailing slash are different resources, hence different tokens.
    let e = get(t.imds, &token_target("https://cache.test", ""), &[MD]).json();
    assert_eq!(e["resource"], "https://cache.test");
    assert_ne!(e["access_token"], d["access_token"]);
    assert_eq!(
        crate::jwt_claims(e["access_token"].as_str().unwrap())["aud"],
        "https://cache.test"
    );
}

// ---- errors ---------------------------------------------------------------------------------

pub fn metadata_header_required(t: &Target) {
    for headers in [
        &[][..],
        &["Metadata: false"][..],
        &["Metadata: yes"][..],
        &["Metadata:"][..],
    ] {
        let r = get(t.imds, &token_target(MGMT, ""), headers);
        assert_error(&r, 400, "invalid_request");
        assert_eq!(
            r.json()["error_description"],
            "Required metadata header not specified"
        );
    }
    // The probe every SDK sends: a bare GET without header.
    let r = get(t.imds, "/metadata/identity/oauth2/token", &[]);
    assert_error(&r, 400, "invalid_request");
}

pub fn proxied_requests_refused(t: &Target) {
    let r = get(
        t.imds,
        &token_target(MGMT, ""),
        &[MD, "X-Forwarded-For: 10.0.0.1"],
    );
    assert_error(&r, 400, "invalid_request");
    let r = get(
        t.imds,
        &token_target(MGMT, ""),
        &[MD, "Forwarded: for=10.0.0.1"],
    );
    assert_error(&r, 400, "invalid_request");
}

pub fn methods(t: &Target) {
    for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let req = format!("{m} {} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", token_target(MGMT, ""));
        let r = raw(t.imds, req.as_bytes());
        assert_error(&r, 405, "method_not_allowed");
        assert!(r.header("allow").is_some_and(|a| a.contains("GET")));
    }
}

pub fn api_version_rules(t: &Target) {
    let base = format!(
        "/metadata/identity/oauth2/token?resource={}",
        crate::pct(MGMT)
    );
    for q in [
        "",
        "&api-version=",
        "&api-version=2099-01-01",
        "&api-version=2017-12-01",
        "&api-version=latest",
    ] {
        let r = get(t.imds, &format!("{base}{q}"), &[MD]);
        assert_error(&r, 400, "invalid_request");
        let newest = r.json()["newest-versions"].clone();
        assert!(
            newest
                .as_array()
                .is_some_and(|a| a.iter().any(|v| v == "2025-04-07")),
            "{newest}"
        );
    }
    for v in ["2018-02-01", "2019-08-01", "2021-02-01", "2025-04-07"] {
        let r = get(t.imds, &format!("{base}&api-version={v}"), &[MD]);
        assert_eq!(r.status, 200, "api-version {v}");
    }
}

pub fn resource_rules(t: &Target) {
    let r = get(
        t.imds,
        "/metadata/identity/oauth2/token?api-version=2018-02-01",
        &[MD],
    );
    assert_error(&r, 400, "invalid_request");
    let r = get(
        t.imds,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=",
        &[MD],
    );
    assert_error(&r, 400, "invalid_request");
    let long = "x".repeat(imds_agent::limits::RESOURCE_MAX + 1);
    let r = get(t.imds, &token_target(&long, ""), &[MD]);
    assert_error(&r, 400, "invalid_request");
    let r = get(
        t.imds,
        &token_target(MGMT, "&resource=https://other/"),
        &[MD],
    );
    assert_error(&r, 400, "invalid_request");
    let r = get(
        t.imds,
        &token_target(MGMT, "&api-version=2018-02-01"),
        &[MD],
    );
    assert_error(&r, 400, "invalid_request");
    let r = get(
        t.imds,
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=%zz",
        &[MD],
    );
    assert_error(&r, 400, "invalid_request");
}

pub fn selection_errors(t: &Target) {
    let u = &t.cfg.users[0];
    let r = get(
        t.imds,
        &token_target(
            MGMT,
            &format!("&client_id={}&object_id={}", u.client_id, u.object_id),
        ),
        &[MD],
    );
    assert_error(&r, 400, "invalid_request");
    let r = get(
        t.imds,
        &token_target(MGMT, &format!("&client_id={0}&client_id={0}", u.client_id)),
        &[MD],
    );
    assert_error(&r, 400, "invalid_request");
    let r = get(
        t.imds,
        &token_target(MGMT, "&client_id=00000000-0000-0000-0000-00000000dead"),
        &[MD],
    );
    assert_error(&r, 400, "invalid_request");
    assert_eq!(r.json()["error_description"], "Identity not found");
    let r = get(
        t.imds,
        &token_target(MGMT, "&msi_res_id=/subscriptions/nope"),
        &[MD],
    );
    assert_eq!(r.json()["error_description"], "Identity not found");
}

pub fn neighbouring_endpoints(t: &Target) {
    let r = get(
        t.imds,
        "/metadata/identity/getplatformmetadata?api-version=2025-04-07",
        &[MD],
    );
    assert_ne!(r.status, 200);
    assert_error(&r, 404, "not_found");
    let r = get(
        t.imds,
        "/metadata/identity/info?api-version=2018-02-01",
        &[MD],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tenantId"], t.cfg.tenant_id.as_str());
    let r = get(
        t.imds,
        "/metadata/identity/info?api-version=2018-02-01",
        &[],
    );
    assert_error(&r, 400, "invalid_request");
    let r = get(t.imds, "/metadata/identity/info", &[MD]);
    assert_error(&r, 400, "invalid_request");
    let r = get(t.imds, "/metadata/versions", &[MD]);
    assert_eq!(r.status, 200);
    let v = r.json();
    assert!(v["apiVersions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == "2018-02-01")));
    let r = get(t.imds, "/no/such/path", &[MD]);
    assert_error(&r, 404, "not_found");
    let r = get(t.imds, "/.well-known/openid-configuration", &[]);
    assert_eq!(r.status, 200);
    let d = r.json();
    assert!(d["issuer"]
        .as_str()
        .is_some_and(|i| i.contains(&t.cfg.tenant_id)));
    assert!(d["jwks_uri"]
        .as_str()
        .is_some_and(|u| u.ends_with("/.well-known/jwks.json")));
    assert_eq!(d["id_token_signing_alg_values_supported"][0], "ES256");
    let keys = jwks(t);
    assert_eq!(keys["keys"][0]["kty"], "EC");
    assert_eq!(keys["keys"][0]["crv"], "P-256");
}

pub fn legacy_endpoint(t: &Target) {
    let sys = &system(t).client_id;
    let u = &t.cfg.users[0];
    let target = format!("/oauth2/token?resource={}", crate::pct(MGMT));
    assert_token(t, &get(t.legacy, &target, &[MD]), MGMT, sys);
    let r = get(
        t.legacy,
        &format!("{target}&client_id={}", u.client_id),
        &[MD],
    );
    assert_token(t, &r, MGMT, &u.client_id);
    let r = get(
        t.legacy,
        &format!("{target}&object_id={}", u.object_id),
        &[MD],
    );
    assert_token(t, &r, MGMT, &u.client_id);
    // Form POST.
    let body = format!("resource={}&client_id={}", crate::pct(MGMT), u.client_id);
    let req = format!(
        "POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_token(t, &raw(t.legacy, req.as_bytes()), MGMT, &u.client_id);
    // Errors: no header, no resource, a POST that is not a form.
    assert_error(&get(t.legacy, &target, &[]), 400, "invalid_request");
    assert_error(
        &get(t.legacy, "/oauth2/token", &[MD]),
        400,
        "invalid_request",
    );
    let req = "POST /oauth2/token HTTP/1.1\r\nHost: localhost\r\nMetadata: true\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    assert_error(&raw(t.legacy, req.as_bytes()), 400, "invalid_request");
}

pub fn unreadable_requests(t: &Target) {
    // Garbage: 400 JSON, then the connection closes.
    let mut s = connect(t.imds);
    s.write_all(b"\x16\x03\x01\x02\x00garbage\r\n\r\n").unwrap();
    let r = read_response(&mut s, false).unwrap();
    assert_error(&r, 400, "invalid_request");
    assert_eq!(r.header("connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        std::io::Read::read_to_end(&mut s, &mut rest).unwrap_or(0),
        0,
        "closed after the error"
    );
    // Header section too large: 431.
    let big = format!(
        "GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(imds_agent::limits::REQUEST_HEAD_MAX)
    );
    assert_error(&raw(t.imds, big.as_bytes()), 431, "invalid_request");
    // URI too long: 414.
    let long = format!(
        "GET /{} HTTP/1.1\r\n\r\n",
        "a".repeat(imds_agent::limits::REQUEST_TARGET_MAX + 10)
    );
    assert_error(&raw(t.imds, long.as_bytes()), 414, "invalid_request");
    // Body too large: 413.
    let req = format!(
        "POST /oauth2/token HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
        imds_agent::limits::REQUEST_BODY_MAX + 1
    );
    assert_error(&raw(t.legacy, req.as_bytes()), 413, "invalid_request");
    // Bad Content-Length, chunked bodies: 400.
    assert_error(
        &raw(t.imds, b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"),
        400,
        "invalid_request",
    );
    assert_error(
        &raw(
            t.legacy,
            b"POST /oauth2/token HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        400,
        "invalid_request",
    );
}

pub fn keep_alive_and_pipelining(t: &Target) {
    let mut s = connect(t.imds);
    let one = format!(
        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n\r\n",
        token_target(MGMT, "")
    );
    for _ in 0..5 {
        s.write_all(one.as_bytes()).unwrap();
        let r = read_response(&mut s, false).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    // Three requests in one write, answered in order.
    let probe = "GET /metadata/identity/oauth2/token HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    let info = "GET /metadata/identity/info?api-version=2018-02-01 HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n\r\n";
    s.write_all(format!("{one}{probe}{info}").as_bytes())
        .unwrap();
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    assert_eq!(read_response(&mut s, false).unwrap().status, 400);
    let r = read_response(&mut s, false).unwrap();
    assert_eq!(r.json()["tenantId"], t.cfg.tenant_id.as_str());
    // A request split into tiny pieces still works.
    for chunk in one.as_bytes().chunks(7) {
        s.write_all(chunk).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(read_response(&mut s, false).unwrap().status, 200);
    // HTTP/1.0 without keep-alive closes.
    let r = raw(
        t.imds,
        format!(
            "GET {} HTTP/1.0\r\nMetadata: true\r\n\r\n",
            token_target(MGMT, "")
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
}

pub fn concurrent_clients(t: &Target, clients: usize, requests: usize) {
    let addr = t.imds;
    let sys = system(t).client_id.clone();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let sys = sys.clone();
            std::thread::spawn(move || {
                let mut s = connect(addr);
                for j in 0..requests {
                    let resource = format!("https://concurrent.test/{}", (i + j) % 4);
                    let req = format!(
                        "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nMetadata: true\r\n\r\n",
                        token_target(&resource, "")
                    );
                    s.write_all(req.as_bytes()).unwrap();
                    let r = read_response(&mut s, false).unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                    let j = r.json();
                    assert_eq!(j["client_id"], sys.as_str());
                    assert_eq!(j["resource"], resource.as_str());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
}

/// Generate one `#[test]` per contract case for a target built by `$setup` (an expression
/// returning something that derefs to [`Target`]; it is built once per test).
#[macro_export]
macro_rules! contract_tests {
    ($setup:expr, $clients:expr) => {
        $crate::contract_tests!(@cases $setup;
            system_assigned_by_default, user_assigned_by_each_selector, header_and_path_variants,
            head_answers_without_body, cache_and_bypass, metadata_header_required,
            proxied_requests_refused, methods, api_version_rules, resource_rules, selection_errors,
            neighbouring_endpoints, legacy_endpoint, unreadable_requests, keep_alive_and_pipelining);
        #[test]
        fn concurrent_clients() {
            let t = $setup;
            $crate::contract::concurrent_clients(&t, $clients, 20);
        }
    };
    (@cases $setup:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let t = $setup;
                $crate::contract::$name(&t);
            }
        )*
    };
}
