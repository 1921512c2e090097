//! Every serving rule of issue 12 (points 1–4, 7) on the router, the config errors, and the
//! chunked rendering of large answers.

use super::*;
use crate::config::tests::{doc, SYS};
use crate::config::Config;
use crate::http::{self, Parse};
use std::string::String;
use std::vec::Vec;

/// An instance document in Azure's shape (INSTANCE.md §1.3), with one unknown key.
pub const INSTANCE: &str = r#"{
 "compute": {
  "azEnvironment": "AzurePublicCloud",
  "location": "westeurope",
  "name": "vm1",
  "osType": "Linux",
  "platformFaultDomain": "0",
  "resourceGroupName": "rg",
  "resourceId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1",
  "subscriptionId": "8d10da13-8125-4ba9-a717-bf7490507b3d",
  "tags": "a:b;c:d",
  "tagsList": [{"name": "a", "value": "b"}, {"name": "c", "value": "d"}],
  "userData": "I2Nsb3VkLWNvbmZpZwo=",
  "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
  "publicKeys": [{"keyData": "ssh-ed25519 AAAA test", "path": "/home/azureuser/.ssh/authorized_keys"}],
  "osProfile": {"adminUsername": "azureuser", "computerName": "vm1", "disablePasswordAuthentication": "true"},
  "storageProfile": {"dataDisks": [{"lun": "0", "isUltraDisk": "false", "name": "d0"}], "imageReference": {"offer": "debian-12", "exactVersion": "1.2"}},
  "futureField": {"quoted": "say \"hi\"\n"}
 },
 "network": {"interface": [{"ipv4": {"ipAddress": [{"privateIpAddress": "10.0.2.15", "publicIpAddress": ""}], "subnet": [{"address": "10.0.2.0", "prefix": "24"}]}, "ipv6": {"ipAddress": []}, "macAddress": "525400123456"}]}
}"#;

pub const LOADBALANCER: &str = r#"{"loadbalancer":{"publicIpAddresses":[{"frontendIpAddress":"51.0.0.1","privateIpAddress":"10.1.0.4"}],"inboundRules":[{"frontendIpAddress":"50.0.0.1","protocol":"tcp","frontendPort":80,"backendPort":443,"privateIpAddress":"10.1.0.4"}],"outboundRules":[]}}"#;

fn docs() -> Documents {
    let mut d = Documents::default();
    assert!(load(INSTANCE.as_bytes(), &mut d.instance, false).is_ok());
    assert!(load(LOADBALANCER.as_bytes(), &mut d.loadbalancer, true).is_ok());
    d
}

struct Reply {
    status: u16,
    text: bool,
    body: String,
}

/// The router's answer to `GET target` with `headers`, the body assembled in 100-byte chunks.
fn ask_with(docs: &Documents, method: &str, target: &str, headers: &str) -> Reply {
    let raw = format!("{method} {target} HTTP/1.1\r\nHost: 169.254.169.254\r\n{headers}\r\n");
    let Ok(Parse::Complete(req, _)) = http::parse(raw.as_bytes()) else {
        panic!("bad request text")
    };
    let answer = route(docs, &req).unwrap_or_else(|| panic!("not routed: {target}"));
    let (status, text, body) = match answer {
        super::Answer::Error { status, body } => (status, false, body.as_bytes().to_vec()),
        super::Answer::MethodNotAllowed => (405, false, METHOD_NOT_ALLOWED.as_bytes().to_vec()),
        super::Answer::Ok(b, ct) => {
            let mut out = Vec::new();
            let mut chunk = [0u8; 100];
            loop {
                let n = render_chunk(docs, &b, out.len(), &mut chunk);
                out.extend_from_slice(&chunk[..n]);
                if n == 0 {
                    break;
                }
            }
            assert_eq!(out.len(), b.len, "Content-Length equals the rendered body");
            (200, ct == ContentType::Text, out)
        }
    };
    Reply {
        status,
        text,
        body: String::from_utf8(body).unwrap(),
    }
}

fn ask(docs: &Documents, target: &str) -> Reply {
    ask_with(docs, "GET", target, "Metadata: true\r\n")
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{e}: {s}"))
}

const V_NEW: &str = "api-version=2025-04-07";
const V_OLD: &str = "api-version=2017-08-01";

#[test]
fn whole_document_compact_and_equal() {
    let d = docs();
    let a = ask(&d, &format!("/metadata/instance?{V_NEW}"));
    assert_eq!((a.status, a.text), (200, false));
    assert!(!a.body.contains(' ') || a.body.contains("ssh-ed25519 AAAA"));
    assert!(!a.body.contains('\n'));
    assert_eq!(json(&a.body), json(INSTANCE));
    // The stored copy is compact too.
    assert!(d.instance.bytes().len() < INSTANCE.len());
}

#[test]
fn version_gating() {
    let d = docs();
    let old = json(&ask(&d, &format!("/metadata/instance?{V_OLD}")).body);
    let c = &old["compute"];
    for hidden in [
        "userData",
        "resourceId",
        "tagsList",
        "storageProfile",
        "publicKeys",
        "osProfile",
        "azEnvironment",
    ] {
        assert!(c.get(hidden).is_none(), "{hidden} at 2017-08-01");
    }
    for shown in [
        "vmId",
        "subscriptionId",
        "tags",
        "resourceGroupName",
        "location",
        "futureField",
    ] {
        assert!(c.get(shown).is_some(), "{shown} at 2017-08-01");
    }
    assert!(old["network"]["interface"][0]["macAddress"].is_string());
    // Nested gates: `exactVersion` from 2023-07-01, `dataDisks[].isUltraDisk` from 2021-05-01.
    let mid = json(
        &ask(
            &d,
            "/metadata/instance/compute/storageProfile?api-version=2021-02-01",
        )
        .body,
    );
    assert!(mid["imageReference"].get("exactVersion").is_none());
    assert_eq!(mid["imageReference"]["offer"], "debian-12");
    assert!(mid["dataDisks"][0].get("isUltraDisk").is_none());
    assert_eq!(mid["dataDisks"][0]["lun"], "0");
    let new = json(
        &ask(
            &d,
            "/metadata/instance/compute/storageProfile?api-version=2023-07-01",
        )
        .body,
    );
    assert_eq!(new["dataDisks"][0]["isUltraDisk"], "false");
    assert_eq!(new["imageReference"]["exactVersion"], "1.2");
    // osProfile.disablePasswordAuthentication from 2020-10-01, osProfile from 2020-07-15.
    let p = json(
        &ask(
            &d,
            "/metadata/instance/compute/osProfile?api-version=2020-07-15",
        )
        .body,
    );
    assert!(p.get("disablePasswordAuthentication").is_none());
    assert_eq!(p["adminUsername"], "azureuser");
    // Nothing at all before 2017-04-02.
    assert_eq!(
        ask(&d, "/metadata/instance?api-version=2017-03-01").body,
        "{}"
    );
    // A sub-path to a hidden field: 404.
    let a = ask(
        &d,
        &format!("/metadata/instance/compute/userData?{V_OLD}&format=text"),
    );
    assert_eq!(
        (a.status, a.body.as_str()),
        (404, r#"{"error":"Not found"}"#)
    );
    let a = ask(
        &d,
        &format!("/metadata/instance/compute/userData?{V_NEW}&format=text"),
    );
    assert_eq!(
        (a.status, a.text, a.body.as_str()),
        (200, true, "I2Nsb3VkLWNvbmZpZwo=")
    );
}

#[test]
fn sub_paths_text_and_json() {
    let d = docs();
    let text = |p: &str| ask(&d, &format!("/metadata/instance/{p}?{V_NEW}&format=text"));
    let a = text("compute/vmId");
    assert_eq!((a.status, a.text), (200, true));
    assert_eq!(a.body, "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
    assert_eq!(
        text("network/interface/0/ipv4/ipAddress/0/privateIpAddress").body,
        "10.0.2.15"
    );
    // Trailing `/`, escapes undone in text.
    assert_eq!(
        text("compute/vmId/").body,
        "02aab8a4-74ef-476e-8182-f6d2ba4166a6"
    );
    assert_eq!(text("compute/futureField/quoted").body, "say \"hi\"\n");
    assert_eq!(
        text("compute/publicKeys/0/keyData").body,
        "ssh-ed25519 AAAA test"
    );
    // An empty string is a leaf too.
    let a = text("network/interface/0/ipv4/ipAddress/0/publicIpAddress");
    assert_eq!((a.status, a.body.as_str()), (200, ""));
    // Objects and arrays: JSON, with or without format=text.
    let a = ask(&d, &format!("/metadata/instance/compute/tagsList?{V_NEW}"));
    assert_eq!((a.status, a.text), (200, false));
    assert_eq!(
        a.body,
        r#"[{"name":"a","value":"b"},{"name":"c","value":"d"}]"#
    );
    let a = ask(
        &d,
        &format!("/metadata/instance/network/interface/0/?{V_NEW}&format=text"),
    );
    assert_eq!((a.status, a.text), (200, false));
    assert_eq!(json(&a.body)["macAddress"], "525400123456");
    assert_eq!(
        ask(
            &d,
            &format!("/metadata/instance/network/interface/0/ipv6/ipAddress?{V_NEW}")
        )
        .body,
        "[]"
    );
    // Unknown keys and indexes, case-sensitive keys, non-decimal indexes: 404.
    for p in [
        "compute/nope",
        "compute/VMID",
        "Compute/vmId",
        "network/interface/1",
        "network/interface/+0",
        "network/interface/x",
        "network/interface/0x0",
        "compute/vmId/deeper",
        "compute//vmId",
    ] {
        let a = text(p);
        assert_eq!(
            (a.status, a.body.as_str()),
            (404, r#"{"error":"Not found"}"#),
            "{p}"
        );
    }
    // A leaf without format=text (or with format=json): 400.
    for q in ["", "&format=json"] {
        let a = ask(&d, &format!("/metadata/instance/compute/vmId?{V_NEW}{q}"));
        assert_eq!(
            (a.status, a.body.as_str()),
            (
                400,
                r#"{"error":"Bad request. Leaf nodes need format=text"}"#
            )
        );
    }
}

#[test]
fn request_rules() {
    let d = docs();
    let target = format!("/metadata/instance/compute?{V_NEW}");
    // Metadata: true or True.
    for h in ["Metadata: true\r\n", "Metadata: True\r\n"] {
        assert_eq!(ask_with(&d, "GET", &target, h).status, 200);
    }
    for h in ["", "Metadata: false\r\n", "Metadata: yes\r\n"] {
        let a = ask_with(&d, "GET", &target, h);
        assert_eq!(
            (a.status, a.body.as_str()),
            (
                400,
                r#"{"error":"Bad request. Required metadata header not specified"}"#
            )
        );
    }
    for h in [
        "X-Forwarded-For: 10.0.0.1\r\n",
        "Forwarded: for=10.0.0.1\r\n",
    ] {
        let a = ask_with(&d, "GET", &target, &format!("Metadata: true\r\n{h}"));
        assert_eq!(a.status, 400);
        assert!(a.body.contains("proxy"), "{}", a.body);
    }
    let a = ask_with(&d, "POST", &target, "Metadata: true\r\n");
    assert_eq!(a.status, 405);
    // HEAD: same head.
    assert_eq!(
        ask_with(&d, "HEAD", &target, "Metadata: true\r\n").status,
        200
    );
    // Duplicate parameters: 400; unknown ones ignored.
    let a = ask(&d, &format!("/metadata/instance?{V_NEW}&{V_NEW}"));
    assert_eq!(
        (a.status, a.body.as_str()),
        (
            400,
            r#"{"error":"Bad request. A query parameter is specified more than once"}"#
        )
    );
    let a = ask(
        &d,
        &format!("/metadata/instance?{V_NEW}&format=json&format=text"),
    );
    assert_eq!(a.status, 400);
    assert_eq!(
        ask(&d, &format!("/metadata/instance?{V_NEW}&whatever=1")).status,
        200
    );
    // extended=true adds extended.compute.ppsType at the top level only.
    let a = json(&ask(&d, &format!("/metadata/instance?{V_NEW}&extended=true")).body);
    assert_eq!(a["extended"]["compute"]["ppsType"], "None");
    assert_eq!(a["compute"]["vmId"], "02aab8a4-74ef-476e-8182-f6d2ba4166a6");
    let a = json(
        &ask(
            &d,
            &format!("/metadata/instance/compute?{V_NEW}&extended=true"),
        )
        .body,
    );
    assert!(a.get("extended").is_none());
}

#[test]
fn api_version_errors() {
    let d = docs();
    const BODY: &str = r#"{"error":"Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds","newest-versions":["2025-04-07","2024-07-17","2024-03-15"]}"#;
    for t in [
        "/metadata/instance",
        "/metadata/instance?format=json",
        "/metadata/instance?api-version=2017-07-01",
        "/metadata/instance?api-version=2022-02-01",
        "/metadata/instance?api-version=",
        "/metadata/instance/compute/vmId?api-version=latest&format=text",
        "/metadata/loadbalancer?api-version=2020-09-01",
        "/metadata/loadbalancer",
    ] {
        let a = ask(&d, t);
        assert_eq!((a.status, a.body.as_str()), (400, BODY), "{t}");
    }
    // Every supported version answers.
    for v in since::supported_versions() {
        assert_eq!(
            ask(&d, &format!("/metadata/instance?api-version={v}")).status,
            200
        );
    }
}

#[test]
fn loadbalancer_and_absent_documents() {
    let d = docs();
    let a = ask(
        &d,
        "/metadata/loadbalancer?api-version=2020-10-01&format=json",
    );
    assert_eq!((a.status, a.text), (200, false));
    assert_eq!(a.body, LOADBALANCER);
    assert_eq!(
        json(&a.body)["loadbalancer"]["inboundRules"][0]["frontendPort"],
        80
    );
    let none = Documents::default();
    let a = ask(&none, "/metadata/loadbalancer?api-version=2020-10-01");
    assert_eq!(a.status, 404);
    assert_eq!(
        a.body,
        r#"{"error":"No load balancer metadata is found. Please check if your VM is using any non-basic SKU load balancer and retry later."}"#
    );
    let a = ask(&none, &format!("/metadata/instance?{V_NEW}"));
    assert_eq!(
        (a.status, a.body.as_str()),
        (404, r#"{"error":"Not found"}"#)
    );
}

fn config_error(extra: &str) -> String {
    let d = doc(extra, SYS);
    format!("{}", Config::parse(d.as_bytes()).unwrap_err())
}

#[test]
fn config_fields() {
    let d = doc(
        &format!(r#""instance":{INSTANCE},"loadbalancer":{LOADBALANCER},"#),
        SYS,
    );
    let c = Config::parse(d.as_bytes()).unwrap();
    assert_eq!(
        json(core::str::from_utf8(c.metadata.instance.bytes()).unwrap()),
        json(INSTANCE)
    );
    assert_eq!(c.metadata.loadbalancer.bytes(), LOADBALANCER.as_bytes());
    // Optional; null is absent.
    let c = Config::parse(doc(r#""instance":null,"#, SYS).as_bytes()).unwrap();
    assert!(c.metadata.instance.is_empty() && c.metadata.loadbalancer.is_empty());
    // Numbers and booleans are refused with their path.
    let bad = INSTANCE.replace(
        r#""platformFaultDomain": "0""#,
        r#""platformFaultDomain": 0"#,
    );
    assert_eq!(
        config_error(&format!(r#""instance":{bad},"#)),
        "config: field `instance.compute.platformFaultDomain`: must be a string, an array or an object (Azure sends every value as a string)"
    );
    let bad = INSTANCE.replace(r#""lun": "0""#, r#""lun": true"#);
    assert!(config_error(&format!(r#""instance":{bad},"#))
        .starts_with("config: field `instance.compute.storageProfile.dataDisks[].lun`: "),);
    let bad = INSTANCE.replace(r#""ipAddress": []"#, r#""ipAddress": [null]"#);
    assert!(config_error(&format!(r#""instance":{bad},"#))
        .starts_with("config: field `instance.network.interface[].ipv6.ipAddress[]`: "));
    // The shape.
    assert_eq!(
        config_error(r#""instance":{"compute":{}},"#),
        "config: field `instance.network`: is required"
    );
    assert_eq!(
        config_error(r#""instance":{"compute":"x","network":{}},"#),
        "config: field `instance.compute`: must be an object"
    );
    assert_eq!(
        config_error(r#""instance":{"network":"y","compute":"x"},"#),
        "config: field `instance.compute`: must be an object"
    );
    assert_eq!(
        config_error(r#""instance":{"compute":{},"network":"y","network":{"compute":"x"}},"#),
        "config: field `instance.network`: must be an object",
        "the first occurrence of a member counts, at the top level only"
    );
    assert_eq!(
        config_error(r#""instance":{"network":{},"x":{"compute":{}}},"#),
        "config: field `instance.compute`: is required"
    );
    let c = Config::parse(
        doc(
            r#""instance":{"network":[],"compute":{},"compute":"x"},"#,
            SYS,
        )
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        c.metadata.instance.bytes(),
        br#"{"network":[],"compute":{},"compute":"x"}"#
    );
    assert_eq!(
        config_error(r#""instance":"x","#),
        "config: field `instance`: must be an object"
    );
    assert_eq!(
        config_error(r#""instance":[],"#),
        "config: field `instance`: must be an object"
    );
    // Load balancer: numbers only as ports.
    assert!(config_error(r#""loadbalancer":{"loadbalancer":{"x":1}},"#)
        .starts_with("config: field `loadbalancer.loadbalancer.x`: must be a string"));
    assert!(
        config_error(r#""loadbalancer":{"loadbalancer":{"frontendPort":"80"}},"#)
            .starts_with("config: field `loadbalancer")
    );
    // Too deep.
    let deep = format!(
        r#""instance":{{"compute":{}"x"{},"network":{{}}}},"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    assert!(config_error(&deep).contains("nested too deeply"));
}

/// An instance document of `size` bytes of compact JSON (user data filling it up).
const BASE: &str = r#"{"compute":{"vmId":"v","userData":""},"network":{"interface":[]}}"#;

fn instance_of(size: usize) -> String {
    let base = BASE;
    let fill = size - base.len();
    base.replace(
        r#""userData":"""#,
        &format!(r#""userData":"{}""#, "A".repeat(fill)),
    )
}

#[test]
fn capacity_no_std_16k_and_full_buffer() {
    // The unikernel's capacity (16 KiB): a 16 KiB document fits exactly, one byte more does not.
    let mut small: Doc<{ 16 * 1024 }> = Doc::new();
    let doc = instance_of(16 * 1024);
    assert_eq!(doc.len(), 16 * 1024);
    assert!(load(doc.as_bytes(), &mut small, false).is_ok());
    assert_eq!(small.bytes(), doc.as_bytes());
    let doc = instance_of(16 * 1024 + 1);
    let Err(p) = load(doc.as_bytes(), &mut small, false) else {
        panic!("fits")
    };
    assert!(p.why.contains("larger than"), "{}", p.why);
    assert!(small.is_empty());
    // The daemon's (128 KiB): the same through the config, with its error.
    let doc_ok = instance_of(INSTANCE_MAX);
    let c = Config::parse(self::doc_big(&doc_ok).as_bytes()).unwrap();
    assert_eq!(c.metadata.instance.bytes().len(), INSTANCE_MAX);
    let e = Config::parse(self::doc_big(&instance_of(INSTANCE_MAX + 1)).as_bytes()).unwrap_err();
    assert_eq!(
        format!("{e}"),
        "config: field `instance`: is larger than 128 KiB of compact JSON (limits::INSTANCE_MAX)"
    );
    // A 128 KiB config document plus the rest fits CONFIG_MAX.
    const { assert!(crate::limits::CONFIG_MAX >= INSTANCE_MAX + 64 * 1024) };
}

fn doc_big(instance: &str) -> String {
    let small = doc("\"instance\":@,", SYS);
    small.replace('@', instance)
}

#[test]
fn large_answers_render_in_windows() {
    let mut d = Documents::default();
    let big = instance_of(100 * 1024);
    assert!(load(big.as_bytes(), &mut d.instance, false).is_ok());
    let a = ask(&d, &format!("/metadata/instance?{V_NEW}"));
    assert_eq!(a.status, 200);
    assert_eq!(a.body, big);
    let a = ask(
        &d,
        &format!("/metadata/instance/compute/userData?{V_NEW}&format=text"),
    );
    assert_eq!(a.body.len(), big.len() - BASE.len());
    assert!(a.body.bytes().all(|b| b == b'A'));
}
