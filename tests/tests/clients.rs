//! Real IMDS clients, unmodified: cloud-init 22.4.2's Azure datasource and the Azure Linux
//! agent (waagent 2.7.3.0), from Debian 12's packages extracted under `target/test-tools/`
//! (`xtask::setup::azure_clients`), read the instance metadata the agent serves at
//! 169.254.169.254 — their IMDS addresses are constants, so each test makes a network
//! namespace where the agent owns that address: the host daemon on `169.254.169.254:80`, or the
//! unikernel in QEMU on a tap device. Nothing leaves the namespace.
//!
//! The daemon's config is what `cargo xtask config --demo --user-data FILE` writes; the
//! unikernel's is `xtask::config::demo_full`. What the clients read (printed as JSON by `tests/py/cloudinit_imds.py` and
//! `tests/py/waagent_imds.py`) must equal the config's `instance` document: cloud-init's
//! api-version 2021-08-01 (+ `extended=true`) answered at once, and 2019-06-01 too; the network
//! config it generates (MAC, the secondary address with its prefix); the admin user, host name,
//! password policy, SSH keys and user data it would apply; waagent's `get_compute()` fields and
//! `validate()` → `(True, '')`. Needs root (namespaces, tap devices). And the demo config
//! describes one VM: its identity token, instance document and attested document agree.

use imds_tests::netns::Netns;
use imds_tests::DemoConfig;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;
use xtask::qemu::{self, Guest, Network, QemuOpts};
use xtask::setup::AzureClients;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// One client run. Both give up well within this when nothing answers (cloud-init: 2 s
/// timeout, no retries; waagent: its own retry budget).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// A second private address on the NIC: cloud-init turns every address but the first (which
/// DHCP gives) into a static `address/prefix`, so the generated config shows the prefix.
const SECONDARY_IP: &str = "10.0.2.16";

/// The clients, installed once per test process (a test must fail, not skip, without them).
fn clients() -> AzureClients {
    static C: OnceLock<AzureClients> = OnceLock::new();
    C.get_or_init(|| {
        xtask::setup::ensure(&[xtask::setup::Need::Python])
            .and_then(|()| xtask::setup::azure_clients())
            .unwrap_or_else(|e| panic!("installing cloud-init and waagent failed: {e}"))
    })
    .clone()
}

/// The demo config with its `instance` document, plus [`SECONDARY_IP`] on the NIC.
fn config(name: &str, mut json: Value) -> (DemoConfig, Value) {
    assert!(
        json.get("instance").is_some(),
        "the demo config has no `instance`: the agent's config parser does not accept it"
    );
    json["instance"]["network"]["interface"][0]["ipv4"]["ipAddress"]
        .as_array_mut()
        .unwrap()
        .push(json!({"privateIpAddress": SECONDARY_IP, "publicIpAddress": ""}));
    let instance = json["instance"].clone();
    (DemoConfig::from_json(name, json), instance)
}

/// `cargo xtask config --demo --listen ADDR --user-data FILE`, as a user runs it: the
/// document it writes.
fn xtask_demo(listen: &str, user_data: &[u8]) -> Value {
    let dir = imds_tests::target_dir().join("test-configs");
    std::fs::create_dir_all(&dir).unwrap();
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stem = format!("clients-xtask-{}-{seq}", std::process::id());
    let (ud, out) = (
        dir.join(format!("{stem}.ud")),
        dir.join(format!("{stem}.json")),
    );
    std::fs::write(&ud, user_data).unwrap();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(imds_tests::root())
        .args([
            "run", "--quiet", "-p", "xtask", "--", "config", "--demo", "--listen", listen,
        ])
        .arg("--user-data")
        .arg(&ud)
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run cargo xtask config");
    assert!(status.success(), "cargo xtask config --demo failed");
    let json = serde_json::from_slice(&std::fs::read(&out).unwrap()).expect("JSON");
    let _ = std::fs::remove_file(&ud);
    let _ = std::fs::remove_file(&out);
    json
}

/// Run `tests/py/<script>` with the client at `pythonpath` inside `ns`; its JSON output.
fn run_client(
    ns: &Netns,
    script: &str,
    pythonpath: &std::path::Path,
    context: &dyn Fn() -> String,
) -> Value {
    let c = clients();
    let mut cmd = ns.command(&c.python);
    cmd.arg(imds_tests::root().join("tests/py").join(script))
        .env("PYTHONPATH", pythonpath)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("NO_PROXY", "*")
        .env("no_proxy", "*");
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    let out = xtask::run_with_timeout(cmd, CLIENT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{script}: {e}\n{}", context()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}): {stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            context()
        )
    })
}

fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    v.pointer(path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {path} in {v}"))
}

/// `agent/tests-data/instance-since.json`: the api-version each instance field appeared in
/// (INSTANCE.md §1.3, machine-readable; the agent serves by it).
fn since_table() -> Value {
    let path = imds_tests::root().join("agent/tests-data/instance-since.json");
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice::<Value>(&text).expect("JSON")["since"].clone()
}

/// `doc` as Azure serves it at api-version `version`: every field whose "since" entry is newer
/// dropped (paths joined with `.`, `[]` for array elements; unlisted fields follow their parent).
fn at_version(doc: &Value, version: &str, since: &Value, path: &str) -> Value {
    match doc {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter_map(|(k, v)| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    match since.get(&p).and_then(Value::as_str) {
                        Some(v0) if v0 > version => None,
                        _ => Some((k.clone(), at_version(v, version, since, &p))),
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|v| at_version(v, version, since, &format!("{path}[]")))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// cloud-init read exactly the config's document, at the versions and with the results the
/// module doc lists.
fn check_cloud_init(out: &Value, instance: &Value) {
    assert_eq!(
        out["versions"],
        json!({"want": "2021-08-01", "min": "2019-06-01"})
    );
    // The fallback helper asked for 2021-08-01 with extended=true, got a 200 at once, and did
    // not fall back.
    let want = "http://169.254.169.254/metadata/instance?api-version=2021-08-01&extended=true";
    let read: Vec<&Value> = out["fallback_urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| !u["status"].is_null())
        .collect();
    assert_eq!(read, [&json!({"url": want, "status": 200})], "{out}");
    assert!(
        out["fallback_urls"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["url"] == want),
        "no other URL was asked for: {}",
        out["fallback_urls"]
    );
    let since = since_table();
    let md = &out["metadata"];
    let mut expect = at_version(instance, "2021-08-01", &since, "");
    expect["extended"] = json!({"compute": {"ppsType": "None"}});
    assert_eq!(md, &expect, "the document at 2021-08-01 (+ extended)");
    // What a 2021-08-01 client does not get (the demo carries fields up to 2023-11-15).
    assert!(md["compute"].get("physicalZone").is_none());
    assert!(md["compute"]["securityProfile"]
        .get("securityType")
        .is_none());
    assert_eq!(out["ppstype"], "None");

    // The fallback version, asked for directly: a 200, the network unchanged, no `extended`
    // (cloud-init sends it from 2021-03-01 only), no field newer than 2019-06-01.
    let old = "http://169.254.169.254/metadata/instance?api-version=2019-06-01";
    assert!(
        out["urls_2019"]
            .as_array()
            .unwrap()
            .contains(&json!({"url": old, "status": 200})),
        "{}",
        out["urls_2019"]
    );
    let md19 = &out["metadata_2019"];
    assert_eq!(
        md19,
        &at_version(instance, "2019-06-01", &since, ""),
        "the document at 2019-06-01"
    );
    for present in [
        "vmId",
        "name",
        "location",
        "subscriptionId",
        "resourceId",
        "storageProfile",
    ] {
        assert!(
            md19["compute"].get(present).is_some(),
            "{present} at 2019-06-01: {md19}"
        );
    }
    for hidden in [
        "userData",
        "osProfile",
        "tagsList",
        "securityProfile",
        "physicalZone",
    ] {
        assert!(
            md19["compute"].get(hidden).is_none(),
            "{hidden} is newer than 2019-06-01: {md19}"
        );
    }
    assert!(md19["compute"]["storageProfile"]["imageReference"]
        .get("exactVersion")
        .is_none());

    // What cloud-init would configure from it.
    let nic = &instance["network"]["interface"][0];
    let mac = s(nic, "/macAddress").to_ascii_lowercase();
    let mac: Vec<&str> = (0..6).map(|i| &mac[2 * i..2 * i + 2]).collect();
    let prefix = s(nic, "/ipv4/subnet/0/prefix");
    assert_eq!(
        out["network_config"],
        json!({"version": 2, "ethernets": {"eth0": {
            "dhcp4": true,
            "dhcp4-overrides": {"route-metric": 100},
            "dhcp6": false,
            "addresses": [format!("{SECONDARY_IP}/{prefix}")],
            "match": {"macaddress": mac.join(":")},
            "set-name": "eth0",
        }}})
    );
    assert_eq!(mac.join(":"), "52:54:00:12:34:56");
    assert_eq!(s(nic, "/ipv4/ipAddress/0/privateIpAddress"), "10.0.2.15");
    assert_eq!(prefix, "24");
    let c = &instance["compute"];
    assert_eq!(out["username"], c["osProfile"]["adminUsername"]);
    assert_eq!(out["hostname"], c["osProfile"]["computerName"]);
    assert_eq!(out["disable_password"], true);
    let keys: Vec<&Value> = c["publicKeys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["keyData"])
        .collect();
    assert_eq!(
        out["ssh_keys"]
            .as_array()
            .unwrap()
            .iter()
            .collect::<Vec<_>>(),
        keys
    );
    // User data: the bytes the config encoded (the script prints them base64 again).
    assert_eq!(out["userdata"], c["userData"]);
    assert!(!s(c, "/userData").is_empty());
}

/// waagent's telemetry fields and health check.
fn check_waagent(out: &Value, instance: &Value) {
    let c = &instance["compute"];
    let got = out["compute"].as_object().expect("compute fields");
    for field in [
        "location",
        "name",
        "offer",
        "osType",
        "placementGroupId",
        "platformFaultDomain",
        "platformUpdateDomain",
        "publisher",
        "resourceGroupName",
        "sku",
        "subscriptionId",
        "tags",
        "version",
        "vmId",
        "vmSize",
        "vmScaleSetName",
        "zone",
    ] {
        assert_eq!(got.get(field), c.get(field), "compute.{field}: {out}");
    }
    // A platform image (publisher set, not an endorsed distribution).
    assert_eq!(out["image_origin"], 3);
    assert_eq!(out["validate"], json!([true, ""]));
}

fn run_both(ns: &Netns, instance: &Value, context: &dyn Fn() -> String) {
    let c = clients();
    let ci = run_client(ns, "cloudinit_imds.py", &c.cloud_init, context);
    let wa = run_client(ns, "waagent_imds.py", &c.waagent, context);
    let checked = std::panic::catch_unwind(|| {
        check_cloud_init(&ci, instance);
        check_waagent(&wa, instance);
    });
    if let Err(e) = checked {
        // The server's side of it (log, guest console) with the failed comparison.
        eprintln!("{}", context());
        std::panic::resume_unwind(e);
    }
}

#[test]
fn cloud_init_and_waagent_read_the_daemon_at_169_254_169_254() {
    let ns = Netns::new("cl");
    ns.exec(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"]);
    let user_data = b"#cloud-config\nruncmd:\n  - [sh, -c, 'echo from the imds-agent test']\n";
    let (cfg, instance) = config(
        "clients-daemon",
        xtask_demo("169.254.169.254:80", user_data),
    );
    use base64::Engine as _;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(s(&instance, "/compute/userData"))
            .unwrap(),
        user_data,
        "--user-data FILE is compute.userData"
    );
    let mut cmd = ns.command(imds_tests::daemon_binary());
    cmd.arg("--config")
        .arg(&cfg.path)
        .args(["--listen", "169.254.169.254:80", "--legacy-listen", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn the daemon in the namespace");
    let mut watchdog = imds_tests::Watchdog::guard_child(&mut child).expect("watchdog");
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = log.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
                if line.contains("listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        });
    }
    let context = || format!("daemon log:\n{}", log.lock().unwrap());
    if rx.recv_timeout(Duration::from_secs(20)).is_err() {
        let _ = child.kill();
        panic!("the daemon did not start in the namespace; {}", context());
    }
    run_both(&ns, &instance, &context);
    let _ = child.kill();
    let _ = child.wait();
    watchdog.disarm();
}

#[test]
fn cloud_init_and_waagent_read_the_unikernel_on_a_tap() {
    let ns = Netns::new("clu");
    let tap = "tap0";
    // The guest is where QEMU's user networking would put it (the demo document describes
    // that NIC: QEMU's default MAC 52:54:00:12:34:56, 10.0.2.15/24); its IMDS address is
    // on-link (the unikernel answers ARP for 169.254.169.254 itself).
    ns.exec(&["ip", "tuntap", "add", tap, "mode", "tap"]);
    ns.exec(&["ip", "addr", "add", "10.0.2.2/24", "dev", tap]);
    ns.exec(&["ip", "link", "set", tap, "up"]);
    ns.exec(&["ip", "route", "add", "169.254.169.254/32", "dev", tap]);
    // The default image: no attestation signer (it has no attested document).
    let mut json = xtask::config::demo_full(
        "127.0.0.1:0",
        None,
        xtask::config::DEMO_USER_DATA.as_bytes(),
        false,
    );
    json["network"] = json!({"address": "10.0.2.15/24", "gateway": "10.0.2.2"});
    let (cfg, instance) = config("clients-uk", json);
    let opts = QemuOpts {
        config: Some(cfg.path.clone()),
        network: Network::Tap { ifname: tap.into() },
        ..QemuOpts::default()
    };
    let image = qemu::build_image(true);
    let qemu_cmd = qemu::qemu_command(&image, &opts);
    let mut cmd = ns.command(qemu_cmd.get_program());
    cmd.args(qemu_cmd.get_args());
    let mut guest = Guest::spawn_command(cmd).expect("spawn QEMU in the namespace");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    // Any HTTP answer from 169.254.169.254 over the tap (ARP resolved, link up) before the
    // clients, which try once.
    let c = clients();
    let out = ns
        .command(&c.python)
        .args([
            "-c",
            "import urllib.request,urllib.error,time\n\
             for i in range(60):\n\
             \ttry:\n\
             \t\turllib.request.urlopen('http://169.254.169.254/metadata/versions', timeout=2); break\n\
             \texcept urllib.error.HTTPError: break\n\
             \texcept Exception: time.sleep(0.5)\n\
             else: raise SystemExit('no answer')\n",
        ])
        .output()
        .expect("reach the guest");
    assert!(
        out.status.success(),
        "169.254.169.254 does not answer in the namespace: {}\nguest:\n{}",
        String::from_utf8_lossy(&out.stderr),
        guest.output()
    );
    // The document's NIC is the guest's real one.
    let neigh = Command::new("ip")
        .args([
            "-n",
            &ns.name,
            "neigh",
            "show",
            "169.254.169.254",
            "dev",
            tap,
        ])
        .output()
        .expect("ip neigh");
    let neigh = String::from_utf8_lossy(&neigh.stdout);
    assert!(neigh.contains("lladdr 52:54:00:12:34:56"), "{neigh}");
    run_both(&ns, &instance, &|| format!("guest:\n{}", guest.output()));
    // The guest's side: it answered each client's request.
    let console = guest.output();
    for line in [
        "GET /metadata/instance 200",
        "GET /metadata/instance/compute 200",
    ] {
        assert!(console.contains(line), "{line:?} in\n{console}");
    }
}

/// `cargo xtask config --demo` describes one VM: the system identity's token names the
/// instance's `resourceId`, and the attested document, signed by the demo's attestation key,
/// verifies (`openssl cms -verify`) with the demo's certificate and carries the instance's
/// `vmId`, subscription and SKU. The host daemon on loopback.
#[test]
fn the_demo_config_describes_one_vm() {
    let json = xtask_demo("127.0.0.1:0", xtask::config::DEMO_USER_DATA.as_bytes());
    for field in ["instance", "attestation"] {
        assert!(
            json.get(field).is_some(),
            "the demo config has no `{field}`: the agent's config parser does not accept it"
        );
    }
    let compute = json["instance"]["compute"].clone();
    let cert = s(&json, "/attestation/certificate").to_string();
    let cfg = DemoConfig::from_json("clients-one-vm", json);
    let d = imds_tests::Daemon::start(&cfg);
    let md = "Metadata: true";

    let r = imds_tests::get(
        d.imds,
        &imds_tests::token_target("https://management.azure.com/", ""),
        &[md],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let claims = imds_tests::jwt_claims(s(&r.json(), "/access_token"));
    assert_eq!(claims["xms_mirid"], compute["resourceId"]);

    let nonce = "demo0123456789";
    let r = imds_tests::get(
        d.imds,
        &format!("/metadata/attested/document?api-version=2025-04-07&nonce={nonce}"),
        &[md],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(s(&r.json(), "/signature"))
        .expect("base64");
    let dir = imds_tests::target_dir().join("test-configs");
    let stem = dir.join(format!("clients-one-vm-{}", std::process::id()));
    let (sig, pem) = (stem.with_extension("der"), stem.with_extension("pem"));
    std::fs::write(&sig, &der).unwrap();
    std::fs::write(&pem, &cert).unwrap();
    let out = Command::new("openssl")
        .args(["cms", "-verify", "-noverify", "-inform", "DER", "-in"])
        .arg(&sig)
        .arg("-certfile")
        .arg(&pem)
        .output()
        .expect("run openssl");
    let _ = std::fs::remove_file(&sig);
    let _ = std::fs::remove_file(&pem);
    assert!(
        out.status.success(),
        "openssl cms -verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).expect("the signed JSON document");
    assert_eq!(doc["nonce"], nonce);
    for field in ["vmId", "subscriptionId", "sku"] {
        assert_eq!(doc[field], compute[field], "{field}");
    }
}
