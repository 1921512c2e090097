//! The image with the `rsa` feature (Microsoft Entra ID style) in QEMU: an RSA server
//! certificate on the authority and a PS256 identity key; the token is fetched over TLS 1.3
//! through the guest, verified against the authority's JWKS and served from the cache.

use imds_tests::authority::{Alg, Authority, AuthorityOpts, ClientSpec, ServerKey, Style};
use imds_tests::brokered::{agent_client_key, assert_brokered};
use imds_tests::{get, token_target, DemoConfig};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use xtask::qemu::{self, Guest, QemuOpts};

const MGMT: &str = "https://management.azure.com/";

#[test]
fn the_rsa_image_gets_tokens_from_an_rsa_authority_with_ps256() {
    let image = qemu::build_image_with(true, &["rsa"]);
    let key = agent_client_key(Alg::PS256);
    let mut cfg_json = xtask::config::demo("127.0.0.1:0", None);
    let ids = cfg_json["identities"].as_array_mut().unwrap();
    ids.truncate(1);
    ids[0]["key"] = key.private_pem.clone().into();
    ids[0]["alg"] = "PS256".into();
    let client_id = ids[0]["client_id"].as_str().unwrap().to_string();
    let authority = Authority::start(AuthorityOpts {
        clients: vec![ClientSpec::new(&client_id, &key)],
        server_key: ServerKey::Rsa2048,
        ..AuthorityOpts::default()
    });
    cfg_json["authority"] = json!({
        "token_url": authority.token_url_at(Style::V2, "localhost"),
        "ca_cert": authority.ca_pem,
        "style": "v2",
        "address": format!("10.0.2.2:{}", authority.https.port()),
        "timeout_s": 60,
    });
    let cfg = DemoConfig::from_json("unikernel-rsa", cfg_json);
    let port = qemu::free_port();
    let mut guest = Guest::spawn(&image, &QemuOpts::new(&cfg.path, port)).expect("spawn QEMU");
    guest
        .wait_ready(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let r = get(addr, &token_target(MGMT, ""), &["Metadata: true"]);
    // v2: the guest computes expires_on from expires_in with its own (RTC) clock.
    let j = assert_brokered(&authority, &r, MGMT, &client_id, -5..=5, || {
        format!("guest:\n{}", guest.output())
    });
    assert_eq!(
        authority.requests()[0]["assertion"]["header"]["alg"],
        "PS256"
    );
    let again = get(addr, &token_target(MGMT, ""), &["Metadata: true"]).json();
    assert_eq!(
        again["access_token"], j["access_token"],
        "served from the cache"
    );
}
