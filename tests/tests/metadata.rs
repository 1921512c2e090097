//! Instance metadata (issue 12) from the host daemon over real loopback sockets: every error
//! with its status and body, version gating, sub-paths, text and JSON, the load balancer
//! document, a 100+ KiB instance document served whole, and the limiter not counting them.

use imds_tests::{connect, get, read_response, token_target, Daemon, DemoConfig};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::OnceLock;

const MD: &str = "Metadata: true";
const NEW: &str = "api-version=2025-04-07";
const OLD: &str = "api-version=2017-08-01";
const NOT_FOUND: &str = r#"{"error":"Not found"}"#;
const API_VERSION: &str = r#"{"error":"Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds","newest-versions":["2025-04-07","2024-07-17","2024-03-15"]}"#;

fn instance(user_data: &str) -> Value {
    json!({
        "compute": {
            "azEnvironment": "AzurePublicCloud",
            "location": "westeurope",
            "name": "vm1",
            "osType": "Linux",
            "platformFaultDomain": "0",
            "resourceGroupName": "rg",
            "resourceId": "/subscriptions/8d10da13-8125-4ba9-a717-bf7490507b3d/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
            "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
            "tags": "a:b",
            "tagsList": [{"name": "a", "value": "b"}],
            "userData": user_data,
            "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
            "publicKeys": [{"keyData": "ssh-ed25519 AAAAC3Nza test", "path": "/home/azureuser/.ssh/authorized_keys"}],
            "osProfile": {"adminUsername": "azureuser", "computerName": "vm1", "disablePasswordAuthentication": "true"},
            "storageProfile": {"dataDisks": [], "imageReference": {"offer": "debian-12"}},
            "unicode": "grüße \"quoted\" \\ tab\t/ ☃ 😀"
        },
        "network": {"interface": [{
            "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.2.15", "publicIpAddress": ""}],
                     "subnet": [{"address": "10.0.2.0", "prefix": "24"}]},
            "ipv6": {"ipAddress": []},
            "macAddress": "525400123456"
        }]}
    })
}

fn loadbalancer() -> Value {
    json!({"loadbalancer": {
        "publicIpAddresses": [{"frontendIpAddress": "51.0.0.1", "privateIpAddress": "10.1.0.4"}],
        "inboundRules": [{"frontendIpAddress": "50.0.0.1", "protocol": "tcp", "frontendPort": 80, "backendPort": 443, "privateIpAddress": "10.1.0.4"}],
        "outboundRules": [{"frontendIpAddress": "50.0.0.1", "privateIpAddress": "10.1.0.4"}]
    }})
}

/// ≥ 100 KiB of user data (as Azure allows 64 KB of it, base64 and more).
fn big_user_data() -> String {
    "QUJD".repeat(26 * 1024)
}

struct Running {
    daemon: Daemon,
    instance: Value,
}

fn shared() -> &'static Running {
    static D: OnceLock<Running> = OnceLock::new();
    D.get_or_init(|| {
        let mut j = xtask::config::demo("127.0.0.1:0", Some("127.0.0.1:0"));
        let inst = instance(&big_user_data());
        j["instance"] = inst.clone();
        j["loadbalancer"] = loadbalancer();
        // One costly request per second: instance metadata must not count.
        j["limits"] = json!({"rate_per_s": 1, "in_flight": 1});
        let cfg = DemoConfig::from_json("metadata", j);
        Running {
            daemon: Daemon::start(&cfg),
            instance: inst,
        }
    })
}

fn ask(target: &str) -> imds_tests::Response {
    get(shared().daemon.imds, target, &[MD])
}

fn text(r: &imds_tests::Response) -> String {
    String::from_utf8(r.body.clone()).unwrap()
}

#[test]
fn large_document_served_whole_and_exact() {
    let r = ask(&format!("/metadata/instance?{NEW}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    assert!(r.body.len() > 100 * 1024, "{}", r.body.len());
    assert_eq!(
        r.header("content-length")
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        r.body.len()
    );
    assert!(!r.body.contains(&b'\n'), "compact");
    assert_eq!(r.json(), shared().instance);
    // The leaf alone, as text.
    let r = ask(&format!(
        "/metadata/instance/compute/userData?{NEW}&format=text"
    ));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(text(&r), big_user_data());
}

#[test]
fn keep_alive_pipelined_and_head() {
    let d = &shared().daemon;
    let mut s = connect(d.imds);
    let req = |m: &str, t: &str| {
        format!("{m} {t} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n")
    };
    // Two requests in one write: the large answer, then a small one after it.
    let both = req("GET", &format!("/metadata/instance?{NEW}"))
        + &req(
            "GET",
            &format!("/metadata/instance/compute/vmId?{NEW}&format=text"),
        );
    s.write_all(both.as_bytes()).unwrap();
    let first = read_response(&mut s, false).unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.json(), shared().instance);
    let second = read_response(&mut s, false).unwrap();
    assert_eq!(text(&second), "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
    // HEAD: the GET's head, no body; the connection goes on.
    s.write_all(req("HEAD", &format!("/metadata/instance?{NEW}")).as_bytes())
        .unwrap();
    let head = read_response(&mut s, true).unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length").unwrap(),
        first.body.len().to_string()
    );
    s.write_all(
        req(
            "GET",
            &format!("/metadata/instance/compute/name?{NEW}&format=text"),
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(text(&read_response(&mut s, false).unwrap()), "vm1");
}

#[test]
fn version_gating_2017_08_01_vs_newest() {
    let old = ask(&format!("/metadata/instance?{OLD}")).json();
    for hidden in [
        "userData",
        "resourceId",
        "tagsList",
        "storageProfile",
        "publicKeys",
        "osProfile",
    ] {
        assert!(old["compute"].get(hidden).is_none(), "{hidden}");
    }
    assert_eq!(
        old["compute"]["subscriptionId"],
        "8d10da13-8125-4ba9-a717-bf7490507b3d"
    );
    assert_eq!(old["network"]["interface"][0]["macAddress"], "525400123456");
    let new = ask(&format!("/metadata/instance/compute?{NEW}")).json();
    assert_eq!(new, shared().instance["compute"]);
    let r = ask(&format!(
        "/metadata/instance/compute/resourceId?{OLD}&format=text"
    ));
    assert_eq!((r.status, text(&r).as_str()), (404, NOT_FOUND));
}

#[test]
fn sub_paths_and_text() {
    let t = |p: &str| ask(&format!("/metadata/instance/{p}?{NEW}&format=text"));
    let r = t("network/interface/0/ipv4/ipAddress/0/privateIpAddress");
    assert_eq!((r.status, text(&r).as_str()), (200, "10.0.2.15"));
    let r = t("compute/publicKeys/0/keyData/");
    assert_eq!(text(&r), "ssh-ed25519 AAAAC3Nza test");
    let r = t("compute/unicode");
    assert_eq!(text(&r), "grüße \"quoted\" \\ tab\t/ ☃ 😀");
    let r = ask(&format!(
        "/metadata/instance/network/interface/0/ipv4/subnet/0?{NEW}"
    ));
    assert_eq!(r.json(), json!({"address": "10.0.2.0", "prefix": "24"}));
    for p in [
        "compute/VmId",
        "network/interface/1",
        "network/interface/first",
        "compute/vmId/x",
    ] {
        let r = t(p);
        assert_eq!((r.status, text(&r).as_str()), (404, NOT_FOUND), "{p}");
    }
    let r = ask(&format!("/metadata/instance/compute/vmId?{NEW}"));
    assert_eq!(
        (r.status, text(&r).as_str()),
        (
            400,
            r#"{"error":"Bad request. Leaf nodes need format=text"}"#
        )
    );
    let r = ask(&format!("/metadata/instance?{NEW}&extended=true&unknown=1"));
    assert_eq!(r.json()["extended"]["compute"]["ppsType"], "None");
}

#[test]
fn every_error_status_and_body() {
    let d = &shared().daemon;
    let target = format!("/metadata/instance/compute?{NEW}");
    let r = get(d.imds, &target, &[]);
    assert_eq!(
        (r.status, text(&r).as_str()),
        (
            400,
            r#"{"error":"Bad request. Required metadata header not specified"}"#
        )
    );
    assert_eq!(get(d.imds, &target, &["Metadata: True"]).status, 200);
    for h in ["X-Forwarded-For: 10.0.0.9", "Forwarded: for=10.0.0.9"] {
        let r = get(d.imds, &target, &[MD, h]);
        assert_eq!(
            (r.status, text(&r).as_str()),
            (
                400,
                r#"{"error":"Bad request. Requests through a proxy (X-Forwarded-For, Forwarded) are not allowed"}"#
            )
        );
    }
    let r = ask(&format!("{target}&api-version=2025-04-07"));
    assert_eq!(
        (r.status, text(&r).as_str()),
        (
            400,
            r#"{"error":"Bad request. A query parameter is specified more than once"}"#
        )
    );
    for t in [
        "/metadata/instance",
        "/metadata/instance?api-version=2099-01-01",
        "/metadata/instance/compute/vmId?format=text",
        "/metadata/loadbalancer?api-version=2020-09-01",
    ] {
        let r = ask(t);
        assert_eq!((r.status, text(&r).as_str()), (400, API_VERSION), "{t}");
    }
    let r = imds_tests::raw(
        d.imds,
        format!("POST {target} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
}

#[test]
fn loadbalancer_document() {
    let r = ask("/metadata/loadbalancer?api-version=2020-10-01&format=json");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), loadbalancer());
    assert_eq!(
        r.json()["loadbalancer"]["inboundRules"][0]["backendPort"],
        443
    );
}

#[test]
fn static_answers_do_not_count_against_the_limiter() {
    let d = &shared().daemon;
    for _ in 0..30 {
        let r = ask(&format!(
            "/metadata/instance/compute/vmId?{NEW}&format=text"
        ));
        assert_eq!(r.status, 200);
    }
    // The limiter (1 per second) still has its token for a mint (no other test of this
    // process asks for tokens).
    let r = get(
        d.imds,
        &token_target("https://management.azure.com/", ""),
        &[MD],
    );
    assert_eq!(r.status, 200);
    let log = d.log_text();
    assert!(
        !log.contains("/metadata/instance/compute/vmId 429"),
        "{log}"
    );
}

#[test]
fn absent_documents_and_config_errors() {
    // The demo without `instance` and `loadbalancer`.
    let cfg = DemoConfig::new("metadata-absent");
    let d = Daemon::start(&cfg);
    let r = get(d.imds, &format!("/metadata/instance?{NEW}"), &[MD]);
    assert_eq!((r.status, text(&r).as_str()), (404, NOT_FOUND));
    let r = get(
        d.imds,
        "/metadata/loadbalancer?api-version=2020-10-01",
        &[MD],
    );
    assert_eq!(r.status, 404);
    assert_eq!(
        text(&r),
        r#"{"error":"No load balancer metadata is found. Please check if your VM is using any non-basic SKU load balancer and retry later."}"#
    );
    drop(d);
    // A number in `instance`: refused with its path.
    let mut j = xtask::config::demo("127.0.0.1:0", None);
    let mut inst = instance("x");
    inst["compute"]["platformFaultDomain"] = json!(0);
    j["instance"] = inst;
    let e = start_fails(j);
    assert!(
        e.contains("instance.compute.platformFaultDomain") && e.contains("must be a string"),
        "{e}"
    );
    // Too large for the daemon's 128 KiB.
    let mut j = xtask::config::demo("127.0.0.1:0", None);
    j["instance"] = instance(&"A".repeat(130 * 1024));
    let e = start_fails(j);
    assert!(e.contains("`instance`: is larger than 128 KiB"), "{e}");
}

fn start_fails(json: Value) -> String {
    let cfg = DemoConfig::from_json("metadata-bad", json);
    let out = std::process::Command::new(imds_tests::daemon_binary())
        .arg("--config")
        .arg(&cfg.path)
        .args(["--listen", "127.0.0.1:0", "--legacy-listen", "off"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "bad config exits with 2");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
