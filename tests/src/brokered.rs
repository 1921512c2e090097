//! Checks shared by the broker-mode tests of the daemon (`tests/broker.rs`) and of the
//! unikernel (`tests/unikernel_broker.rs`): the same answers are expected from both.

use crate::authority::{Alg, Authority, ClientKey, Style};
use crate::contract::assert_imds_token_shape;
use crate::{DemoConfig, Response};
use serde_json::Value;
use std::ops::RangeInclusive;

/// A client key whose `kid` is what the agent puts in its assertions (the key's RFC 7638
/// thumbprint), to register with the authority.
pub fn agent_client_key(alg: Alg) -> ClientKey {
    let tmp = ClientKey::generate(alg, "tmp");
    let kid = imds_agent::config::ClientKey::from_pem(&tmp.private_pem)
        .expect("the agent reads the key")
        .kid();
    ClientKey::from_pem(alg, &kid, &tmp.private_pem).expect("key with its kid")
}

/// Token requests the authority answered with 200.
pub fn fetched(authority: &Authority) -> usize {
    authority
        .requests()
        .iter()
        .filter(|q| q["status"] == 200)
        .count()
}

/// The range of `expires_on` minus the token's `exp` for an agent on the host's clock: v1
/// answers carry `expires_on`, so exactly 0; for v2 the agent counts `expires_in` from when it
/// sent the request, so it may be early by the seconds the authority took to answer (a few on
/// a busy machine), never late.
pub fn host_clock_skew(style: Style) -> RangeInclusive<i64> {
    match style {
        Style::V1 => 0..=0,
        Style::V2 => -5..=0,
    }
}

/// A brokered token answer: 200, Azure's field shapes, the token verifies against the
/// authority's JWKS with this client id, and `expires_on` minus the token's `exp` is in
/// `exp_skew_s` (seconds: `0..=0` where the authority sends `expires_on`; for v2 answers the
/// agent computes it from `expires_in` and the time it sent the request, so it may be a little
/// early but never late on the host's clock, and either way on a guest's own clock). `context`
/// is printed on failure (the agent's log, the guest's console).
pub fn assert_brokered(
    authority: &Authority,
    resp: &Response,
    resource: &str,
    client_id: &str,
    exp_skew_s: RangeInclusive<i64>,
    context: impl Fn() -> String,
) -> Value {
    assert_eq!(resp.status, 200, "{}\n{}", resp.text(), context());
    let j = resp.json();
    assert_imds_token_shape(&j);
    assert_eq!(j["resource"], resource);
    assert_eq!(j["client_id"], client_id);
    let claims = authority
        .verify_access_token(j["access_token"].as_str().unwrap(), resource)
        .expect("the brokered token verifies against the authority's JWKS");
    assert_eq!(claims["client_id"], client_id);
    let exp: i64 = j["expires_on"].as_str().unwrap().parse().unwrap();
    let token_exp = claims["exp"].as_i64().unwrap();
    assert!(
        exp_skew_s.contains(&(exp - token_exp)),
        "expires_on {exp} is the token's exp {token_exp} within {exp_skew_s:?}"
    );
    j
}

/// An IMDS error answer: this status and `error` code, and `Retry-After` on a 503.
pub fn assert_imds_error(resp: &Response, status: u16, code: &str, context: impl Fn() -> String) {
    assert_eq!(resp.status, status, "{}\n{}", resp.text(), context());
    assert_eq!(resp.json()["error"], code, "{}", resp.text());
    if status == 503 {
        assert!(
            resp.header("retry-after")
                .is_some_and(|v| v.parse::<u32>().is_ok()),
            "{}",
            resp.text()
        );
    }
}

/// The v1 scenario both ways of running share: a token for the system-assigned identity and
/// one for a user-assigned one are fetched (verified against the authority's JWKS), the same
/// token is then served from the cache, the assertion the authority checked names the client
/// (`iss` = `sub` = client id, ES256), and `bypass_cache` fetches anew. `token(resource,
/// extra query)` asks the agent; `brokered(answer, resource, client id)` is the target's
/// [`assert_brokered`]. Returns the first answer and the requests the authority saw.
pub fn v1_fetched_cached_and_served(
    cfg: &DemoConfig,
    authority: &Authority,
    token: impl Fn(&str, &str) -> Response,
    brokered: impl Fn(&Response, &str, &str) -> Value,
) -> (Value, Vec<Value>) {
    const MGMT: &str = "https://management.azure.com/";
    const VAULT: &str = "https://vault.azure.net";
    let sys = cfg.system.clone().expect("a system-assigned identity");
    let user = cfg.users[0].clone();
    let a = brokered(&token(MGMT, ""), MGMT, &sys.client_id);
    brokered(
        &token(VAULT, &format!("&client_id={}", user.client_id)),
        VAULT,
        &user.client_id,
    );
    assert_eq!(fetched(authority), 2);
    // Served from the cache: the authority sees nothing more.
    let b = token(MGMT, "").json();
    assert_eq!(a["access_token"], b["access_token"]);
    assert_eq!(fetched(authority), 2);
    let reqs = authority.requests();
    let first = &reqs[0];
    assert_eq!(first["params"]["resource"], MGMT);
    assert_eq!(first["assertion"]["claims"]["iss"], sys.client_id.as_str());
    assert_eq!(first["assertion"]["claims"]["sub"], sys.client_id.as_str());
    assert_eq!(first["assertion"]["header"]["alg"], "ES256");
    // bypass_cache forces a new fetch.
    let c = token(MGMT, "&bypass_cache=true").json();
    assert_ne!(a["access_token"], c["access_token"]);
    assert_eq!(fetched(authority), 3);
    (a, reqs)
}

/// The v2 scenario both share: the request carries `scope=R/.default`, and `expires_on` (v2
/// answers have none) is computed from `expires_in` (3600 s) within `skew_s` of now.
pub fn v2_scope_and_computed_expiry(
    cfg: &DemoConfig,
    authority: &Authority,
    token: impl Fn(&str, &str) -> Response,
    brokered: impl Fn(&Response, &str, &str) -> Value,
    skew_s: u64,
) {
    const MGMT: &str = "https://management.azure.com/";
    let sys = cfg.system.clone().expect("a system-assigned identity");
    let j = brokered(&token(MGMT, ""), MGMT, &sys.client_id);
    let req = &authority.requests()[0];
    assert_eq!(
        req["params"]["scope"],
        "https://management.azure.com//.default"
    );
    let exp: u64 = j["expires_on"].as_str().unwrap().parse().unwrap();
    let now = crate::authority::unix_now();
    assert!(exp.abs_diff(now + 3600) < skew_s, "{exp} vs {now}");
}
