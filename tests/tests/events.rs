//! The attested document and scheduled events, from the real daemon over loopback sockets:
//! the signature checked by `openssl cms -verify`, the events played out in real time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use imds_tests::attested::{cms_verify, scratch, signer};
use imds_tests::{get, raw, Daemon, DemoConfig};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const MD: &str = "Metadata: true";
const VM_ID: &str = "5c0a2e3f-9b1d-4e6a-8f7c-2d4b6a8e0c13";

fn config(name: &str, extra: Value) -> DemoConfig {
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    for (k, v) in extra.as_object().unwrap() {
        json[k] = v.clone();
    }
    DemoConfig::from_json(name, json)
}

fn instance() -> Value {
    json!({
        "compute": {"vmId": VM_ID, "name": "events-vm", "subscriptionId": "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6",
                    "sku": "12-gen2", "plan": {"name": "", "product": "", "publisher": ""}},
        "network": {"interface": []}
    })
}

fn attested_round(newkey: &str) {
    let dir = scratch(&format!("attested-{newkey}"));
    let (key, cert) = signer(&dir, newkey);
    let cfg = config(
        &format!("attested-{newkey}"),
        json!({"attestation": {"key": key, "certificate": cert}, "instance": instance()}),
    );
    let d = Daemon::start(&cfg);
    let nonce = "n0nce12345abcdefXYZ";
    let r = get(
        d.imds,
        &format!("/metadata/attested/document?api-version=2025-04-07&nonce={nonce}"),
        &[MD],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["encoding"], "pkcs7");
    let der = B64.decode(v["signature"].as_str().unwrap()).unwrap();
    let content = cms_verify(&dir, &der, &dir.join("cert.pem")).expect("openssl verifies");
    let doc: Value = serde_json::from_slice(&content).expect("JSON content");
    assert_eq!(doc["nonce"], nonce);
    assert_eq!(doc["vmId"], VM_ID);
    assert_eq!(
        doc["subscriptionId"],
        "0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6"
    );
    assert_eq!(doc["sku"], "12-gen2");
    assert!(doc["timeStamp"]["createdOn"]
        .as_str()
        .unwrap()
        .ends_with(" -0000"));
    // The same blob with one byte of the content changed does not verify.
    let at = der
        .windows(content.len())
        .position(|w| w == content.as_slice())
        .expect("content attached");
    let mut bad = der.clone();
    bad[at + 2] ^= 0x01;
    assert!(cms_verify(&dir, &bad, &dir.join("cert.pem")).is_err());
    // Default nonce: the UTC time, YYYYMMDD-HHMMSS.
    let r = get(
        d.imds,
        "/metadata/attested/document?api-version=2018-10-01",
        &[MD],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let der = B64.decode(r.json()["signature"].as_str().unwrap()).unwrap();
    let doc: Value =
        serde_json::from_slice(&cms_verify(&dir, &der, &dir.join("cert.pem")).unwrap()).unwrap();
    let n = doc["nonce"].as_str().unwrap();
    assert_eq!(n.len(), 15, "{n}");
    assert_eq!(&n[8..9], "-");
    // Errors.
    for (target, status) in [
        ("/metadata/attested/document?api-version=2018-04-02", 400),
        (
            "/metadata/attested/document?api-version=2021-02-01&nonce=not-alnum",
            400,
        ),
    ] {
        assert_eq!(get(d.imds, target, &[MD]).status, status, "{target}");
    }
    assert_eq!(
        get(
            d.imds,
            "/metadata/attested/document?api-version=2021-02-01",
            &[]
        )
        .status,
        400
    );
}

#[test]
fn attested_document_verifies_with_openssl_p256() {
    attested_round("ec");
}

#[test]
fn attested_document_verifies_with_openssl_rsa() {
    attested_round("rsa:2048");
}

#[test]
fn attested_document_is_404_without_attestation() {
    let cfg = config("attested-none", json!({}));
    let d = Daemon::start(&cfg);
    let r = get(
        d.imds,
        "/metadata/attested/document?api-version=2021-02-01",
        &[MD],
    );
    assert_eq!(r.status, 404, "{}", r.text());
}

fn events(addr: std::net::SocketAddr) -> Value {
    let r = get(
        addr,
        "/metadata/scheduledevents?api-version=2020-07-01",
        &[MD],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn post(addr: std::net::SocketAddr, body: &str) -> imds_tests::Response {
    let req = format!(
        "POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: {addr}\r\nMetadata: true\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    raw(addr, req.as_bytes())
}

/// Poll until `pred` holds for the document (at most 5 s).
fn until(addr: std::net::SocketAddr, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let d = events(addr);
        if pred(&d) {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "waiting for {what}: {d}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn scheduled_events_in_real_time() {
    let cfg = config(
        "events",
        json!({
            "instance": instance(),
            "scheduled_events": [
                {"EventType": "Freeze", "appear_after_s": 0, "notice_s": 600, "DurationInSeconds": 1,
                 "Description": "Host update"},
                {"EventType": "Reboot", "appear_after_s": 1, "notice_s": 1, "DurationInSeconds": 1}
            ]
        }),
    );
    let d = Daemon::start(&cfg);
    // The freeze is there at once, Scheduled, NotBefore ten minutes ahead.
    let doc = events(d.imds);
    let first = doc["Events"][0].clone();
    assert_eq!(first["EventType"], "Freeze");
    assert_eq!(first["EventStatus"], "Scheduled");
    assert_eq!(first["ResourceType"], "VirtualMachine");
    assert_eq!(first["Resources"], json!(["events-vm"]));
    assert_eq!(first["EventSource"], "Platform");
    assert_eq!(first["Description"], "Host update");
    assert_eq!(first["DurationInSeconds"], 1);
    assert!(first["NotBefore"].as_str().unwrap().ends_with(" GMT"));
    assert!(doc["DocumentIncarnation"].is_u64());
    let id = first["EventId"].as_str().unwrap().to_owned();
    // Approval: malformed bodies and unknown ids are 400; the real one 200.
    assert_eq!(post(d.imds, "{\"StartRequests\":").status, 400);
    assert_eq!(
        post(
            d.imds,
            r#"{"StartRequests":[{"EventId":"00000000-0000-4000-8000-000000000000"}]}"#
        )
        .status,
        400
    );
    let before = events(d.imds)["DocumentIncarnation"].as_u64().unwrap();
    let approved = Instant::now();
    let r = post(
        d.imds,
        &format!(r#"{{"StartRequests":[{{"EventId":"{id}"}}]}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let doc = events(d.imds);
    let freeze = doc["Events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["EventId"] == id.as_str())
        .cloned();
    if approved.elapsed() < Duration::from_millis(900) {
        let freeze = freeze.expect("started, not gone yet");
        assert_eq!(freeze["EventStatus"], "Started");
        assert_eq!(freeze["NotBefore"], "");
        assert!(doc["DocumentIncarnation"].as_u64().unwrap() > before);
    }
    // Gone a second after it started.
    until(d.imds, "the freeze to be gone", |d| {
        d["Events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["EventId"] != id.as_str())
    });
    // The reboot appears at 1 s, starts at its NotBefore (1 s later) unapproved, then goes.
    let reboot = |d: &Value| {
        d["Events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["EventType"] == "Reboot")
            .cloned()
    };
    until(d.imds, "the reboot to start", |d| {
        reboot(d).is_some_and(|e| e["EventStatus"] == "Started" && e["NotBefore"] == "")
    });
    let last = until(d.imds, "the reboot to be gone", |d| reboot(d).is_none());
    assert_eq!(last["Events"], json!([]));
    // appear + start + gone of both events.
    let n = last["DocumentIncarnation"].as_u64().unwrap();
    assert_eq!(n, 7, "{last}");
    // Its own api-version list.
    let r = get(
        d.imds,
        "/metadata/scheduledevents?api-version=2021-02-01",
        &[MD],
    );
    assert_eq!(r.status, 400);
}
