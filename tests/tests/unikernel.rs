//! The unikernel under QEMU: the whole HTTP contract over user networking (`hostfwd`), plus
//! the boot paths that must stop the machine loudly (no config, bad config, no RDRAND, panic,
//! CPU exception). QEMU's flags come from `xtask::qemu`; every guest has a timeout and is killed
//! when its handle drops.

use imds_tests::contract::Target;
use imds_tests::{get, token_target, DemoConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use xtask::qemu::{self, exit, Guest, Machine, QemuOpts};

/// Boot to serving; generous for a loaded 2-core machine (it takes ~0.1 s when idle).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// A failing boot stops in well under a second.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

const MD: &str = "Metadata: true";
const MGMT: &str = "https://management.azure.com/";

fn image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| qemu::build_image(true)).clone()
}

struct Running {
    guest: Guest,
    target: Target,
}

impl std::ops::Deref for Running {
    type Target = Target;
    fn deref(&self) -> &Target {
        &self.target
    }
}

/// Boot `cfg` on `machine` with port 80 forwarded from a free loopback port; wait until it
/// serves.
fn boot_on(machine: Machine, cfg: &DemoConfig) -> (Guest, SocketAddr) {
    let port = qemu::free_port();
    let opts = QemuOpts {
        machine,
        ..QemuOpts::new(&cfg.path, port)
    };
    let mut guest = Guest::spawn(&image(), &opts).expect("spawn QEMU");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    (guest, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn boot(cfg: &DemoConfig) -> (Guest, SocketAddr) {
    boot_on(Machine::default(), cfg)
}

fn shared() -> &'static Running {
    static G: OnceLock<Running> = OnceLock::new();
    G.get_or_init(|| {
        let cfg = DemoConfig::new("unikernel-contract");
        let (guest, addr) = boot(&cfg);
        Running {
            guest,
            target: Target {
                imds: addr,
                // One listener: the legacy path is answered on port 80 too.
                legacy: addr,
                cfg,
            },
        }
    })
}

imds_tests::contract_tests!(shared(), 8);

/// Boot with `opts` and expect QEMU to stop with guest exit `code` and `message` on serial.
fn expect_exit(opts: QemuOpts, code: u8, message: &str) -> String {
    imds_tests::expect_exit(&image(), &opts, code, message, EXIT_TIMEOUT)
}

fn no_network(config: Option<PathBuf>) -> QemuOpts {
    QemuOpts {
        config,
        network: qemu::Network::None,
        ..QemuOpts::default()
    }
}

#[test]
fn missing_config_stops_the_machine() {
    expect_exit(
        no_network(None),
        exit::CONFIG_MISSING,
        "imds-agent: fatal: no configuration: pass it with -fw_cfg name=opt/imds-agent/config",
    );
}

#[test]
fn invalid_config_names_the_field() {
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    json["tenant_id"] = "not-a-guid".into();
    let cfg = DemoConfig::from_json("unikernel-bad-tenant", json);
    expect_exit(
        no_network(Some(cfg.path)),
        exit::CONFIG_INVALID,
        "imds-agent: fatal: config: field `tenant_id`",
    );
}

#[test]
fn no_rdrand_refuses_to_start() {
    let cfg = DemoConfig::new("unikernel-no-rdrand");
    expect_exit(
        QemuOpts {
            cpu: Some("qemu64".into()),
            ..no_network(Some(cfg.path))
        },
        exit::NO_ENTROPY,
        "imds-agent: fatal: no secure entropy source (RDRAND); refusing to start",
    );
}

#[test]
fn no_nic_stops_the_machine() {
    let cfg = DemoConfig::new("unikernel-no-nic");
    expect_exit(
        no_network(Some(cfg.path)),
        exit::NIC,
        "imds-agent: fatal: network: no virtio-net device",
    );
}

#[test]
fn panic_prints_the_message_and_exits() {
    let opts = QemuOpts {
        fw_cfg: vec![(
            qemu::PANIC_TEST_FW_CFG.into(),
            imds_tests::test_file("panic-test", "panic"),
        )],
        ..no_network(None)
    };
    expect_exit(
        opts,
        exit::PANIC,
        "imds-agent: panic: code addresses on the stack",
    );
}

#[test]
fn panic_addresses_resolve_to_the_panicking_code() {
    let opts = QemuOpts {
        fw_cfg: vec![(
            qemu::PANIC_TEST_FW_CFG.into(),
            imds_tests::test_file("panic-test-line", "panic"),
        )],
        ..no_network(None)
    };
    let mut guest = Guest::spawn(&image(), &opts).expect("spawn QEMU");
    guest.wait_exit(EXIT_TIMEOUT).expect("QEMU exits");
    let out = guest.output();
    let line = out
        .lines()
        .find(|l| l.starts_with("imds-agent: panic: "))
        .unwrap_or_else(|| panic!("no panic line:\n{out}"));
    let addresses: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.starts_with("0x"))
        .collect();
    assert!(!addresses.is_empty(), "{line}");
    // The unstripped build of the same code resolves them: the panic in `crash_test`.
    let mut c = std::process::Command::new("addr2line");
    c.args(["-f", "-i", "-C", "-e"])
        .arg(qemu::symbols_path(true))
        .args(&addresses);
    let lines =
        xtask::run_with_timeout(c, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&lines.stdout);
    assert!(
        text.contains("qemu/src/unikernel.rs:"),
        "{line}\naddr2line:\n{text}"
    );
}

#[test]
fn cpu_exception_is_reported() {
    let opts = QemuOpts {
        fw_cfg: vec![(
            qemu::PANIC_TEST_FW_CFG.into(),
            imds_tests::test_file("ud2-test", "ud2"),
        )],
        ..no_network(None)
    };
    expect_exit(
        opts,
        exit::CPU_EXCEPTION,
        "imds-agent: fatal: CPU exception 6 (invalid opcode)",
    );
}

#[test]
fn static_address_from_the_config() {
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    // Slirp's network; the guest must not ask DHCP.
    json["network"] = serde_json::json!({"address": "10.0.2.15/24", "gateway": "10.0.2.2"});
    let cfg = DemoConfig::from_json("unikernel-static", json);
    let (guest, addr) = boot(&cfg);
    let out = guest.output();
    assert!(out.contains("net: address 10.0.2.15/24 (static)"), "{out}");
    assert!(!out.contains("DHCP"), "{out}");
    let r = get(addr, &token_target(MGMT, ""), &[MD]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_one_ready_line(&guest.output(), "10.0.2.15");
}

/// Exactly one ready line, naming the guest's address and the IMDS one.
fn assert_one_ready_line(out: &str, address: &str) {
    let ready: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(qemu::READY_LINE))
        .collect();
    assert_eq!(
        ready,
        [format!(
            "imds-agent: ready: http://{address}:80 http://169.254.169.254:80"
        )],
        "{out}"
    );
}

#[test]
fn one_ready_line_after_the_dhcp_lease() {
    let (guest, addr) = boot(&DemoConfig::new("unikernel-ready"));
    let r = get(addr, &token_target(MGMT, ""), &[MD]);
    assert_eq!(r.status, 200, "{}", r.text());
    let out = guest.output();
    let lease = out.find("net: DHCP address").expect("a DHCP lease line");
    let ready = out.find(qemu::READY_LINE).expect("the ready line");
    assert!(lease < ready, "{out}");
    assert_one_ready_line(&out, "10.0.2.15");
}

#[test]
fn pci_nic_on_q35() {
    // The PCI path: port-I/O configuration space, BARs assigned by the guest (qboot leaves them
    // unassigned), virtio-net-pci.
    let cfg = DemoConfig::new("unikernel-q35");
    let (guest, addr) = boot_on(Machine::Q35, &cfg);
    let r = get(addr, &token_target(MGMT, ""), &[MD]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        guest.output().contains("virtio-net up"),
        "{}",
        guest.output()
    );
}

#[test]
fn no_nic_on_q35_stops_the_machine() {
    let cfg = DemoConfig::new("unikernel-q35-no-nic");
    expect_exit(
        QemuOpts {
            machine: Machine::Q35,
            ..no_network(Some(cfg.path))
        },
        exit::NIC,
        "imds-agent: fatal: network: no virtio-net device",
    );
}

#[test]
fn boot_log_and_request_log() {
    let t = shared();
    let r = get(t.imds, &token_target("https://vault.azure.net", ""), &[MD]);
    assert_eq!(r.status, 200, "{}", r.text());
    let out = t.guest.output();
    for line in [
        "imds-agent: unikernel",
        "(PIT-calibrated)",
        "imds-agent: virtio-net up, MAC 52:54:00:12:34:56",
        "also answering on 169.254.169.254",
        "GET /metadata/identity/oauth2/token 200",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert!(!out.contains("BEGIN PRIVATE KEY"), "the log shows a key");
}

/// The README's harness recipe, as a user runs it: spawn the line `cargo xtask run --print-cmd`
/// prints (through a shell), wait for the ready line, then ask for a token.
#[test]
fn the_print_cmd_line_boots_and_serves_after_the_ready_line() {
    image(); // built once for this test binary (the print-cmd run then finds it up to date)
    let cfg = DemoConfig::new("unikernel-print-cmd");
    let port = qemu::free_port();
    let mut cargo = std::process::Command::new(env!("CARGO"));
    cargo
        .current_dir(xtask::root())
        .args(["xtask", "run", "--print-cmd", "--port", &port.to_string()])
        .arg("--config")
        .arg(&cfg.path);
    let out =
        xtask::run_with_timeout(cargo, Duration::from_secs(600)).unwrap_or_else(|e| panic!("{e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .expect("a line");
    assert!(line.starts_with("qemu-system-x86_64 "), "{stdout}");
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c").arg(format!("exec {line}"));
    let mut guest = Guest::spawn_command(sh).expect("spawn the printed command");
    let ready = guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ready,
        "imds-agent: ready: http://10.0.2.15:80 http://169.254.169.254:80"
    );
    let r = get(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &token_target(MGMT, ""),
        &[MD],
    );
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The smallest guest the image is built for: 2 MiB of RAM, the stack below 1 MiB.
#[test]
fn serves_in_2_mib_with_its_stack_below_1_mib() {
    let cfg = DemoConfig::new("unikernel-2mib");
    let port = qemu::free_port();
    let opts = QemuOpts {
        mem_mb: 2,
        ..QemuOpts::new(&cfg.path, port)
    };
    let mut guest = Guest::spawn(&image(), &opts).expect("spawn QEMU");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    for resource in [MGMT, "https://vault.azure.net"] {
        let r = get(addr, &token_target(resource, ""), &[MD]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let out = guest.output();
    let range = out
        .lines()
        .find_map(|l| l.split_once(", stack ").map(|(_, r)| r.to_string()))
        .unwrap_or_else(|| panic!("no stack range:\n{out}"));
    let (lo, hi) = range.split_once("..").expect("a range");
    let hex = |v: &str| u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap();
    assert!(hex(lo) >= 0x1_0000 && hex(hi) <= 0x10_0000, "{range}");
    assert!(hex(hi) - hex(lo) >= 448 * 1024, "{range}");
}

/// The image built with `attested` and `scheduled-events` (`cargo xtask run --features
/// attested,scheduled-events`).
fn extras_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| qemu::build_image_with(true, &["attested", "scheduled-events"]))
        .clone()
}

/// The attested document (verified by `openssl cms`) and scheduled events (approved by a
/// `POST`) from the image built with those features, with the config through fw_cfg.
#[test]
fn attested_document_and_scheduled_events() {
    use base64::Engine as _;
    use imds_tests::attested::{cms_verify, scratch, signer};
    let dir = scratch("unikernel-attested");
    let (key, cert) = signer(&dir, "ec");
    let vm_id = "7d3c1b2a-0f9e-4d8c-b7a6-958473625140";
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    json["attestation"] = serde_json::json!({"key": key, "certificate": cert});
    json["instance"] =
        serde_json::json!({"compute": {"vmId": vm_id, "name": "guest"}, "network": {}});
    json["scheduled_events"] = serde_json::json!([{"EventType": "Reboot"}]);
    let cfg = DemoConfig::from_json("unikernel-attested", json);
    let port = qemu::free_port();
    let mut guest =
        Guest::spawn(&extras_image(), &QemuOpts::new(&cfg.path, port)).expect("spawn QEMU");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let r = get(
        addr,
        "/metadata/attested/document?api-version=2025-04-07&nonce=fromtheimage1",
        &[MD],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let der = base64::engine::general_purpose::STANDARD
        .decode(r.json()["signature"].as_str().unwrap())
        .unwrap();
    let content = cms_verify(&dir, &der, &dir.join("cert.pem")).expect("openssl verifies");
    let doc: serde_json::Value = serde_json::from_slice(&content).unwrap();
    assert_eq!(doc["nonce"], "fromtheimage1");
    assert_eq!(doc["vmId"], vm_id);

    let events = |addr| {
        let r = get(
            addr,
            "/metadata/scheduledevents?api-version=2020-07-01",
            &[MD],
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    let d = events(addr);
    assert_eq!(d["Events"][0]["EventStatus"], "Scheduled");
    assert_eq!(d["Events"][0]["Resources"], serde_json::json!(["guest"]));
    let id = d["Events"][0]["EventId"].as_str().unwrap().to_owned();
    let body = format!(r#"{{"StartRequests":[{{"EventId":"{id}"}}]}}"#);
    let req = format!(
        "POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: {addr}\r\nMetadata: true\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(imds_tests::raw(addr, req.as_bytes()).status, 200);
    let after = events(addr);
    assert_eq!(after["Events"][0]["EventStatus"], "Started");
    assert_eq!(
        after["DocumentIncarnation"].as_u64().unwrap(),
        d["DocumentIncarnation"].as_u64().unwrap() + 1
    );
}

/// Instance metadata (issue 12) from the image: a ~14 KiB document (near the unikernel's
/// 16 KiB capacity, several times its TCP send buffer) whole and exact, and a text leaf.
#[test]
fn instance_metadata_whole_and_a_text_leaf() {
    let mut j = xtask::config::demo("127.0.0.1:0", None);
    let instance = serde_json::json!({
        "compute": {
            "vmId": "02aab8a4-74ef-476e-8182-f6d2ba4166a6",
            "name": "vm1",
            "userData": "QUJD".repeat(3500),
            "tagsList": [{"name": "a", "value": "b"}]
        },
        "network": {"interface": [{
            "ipv4": {"ipAddress": [{"privateIpAddress": "10.0.2.15", "publicIpAddress": ""}],
                     "subnet": [{"address": "10.0.2.0", "prefix": "24"}]},
            "ipv6": {"ipAddress": []},
            "macAddress": "525400123456"
        }]}
    });
    j["instance"] = instance.clone();
    let cfg = DemoConfig::from_json("unikernel-instance", j);
    let (_guest, addr) = boot(&cfg);
    let r = get(addr, "/metadata/instance?api-version=2025-04-07", &[MD]);
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 14_000, "{}", r.body.len());
    assert_eq!(r.json(), instance);
    let r = get(
        addr,
        "/metadata/instance/network/interface/0/ipv4/ipAddress/0/privateIpAddress?api-version=2021-02-01&format=text",
        &[MD],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(r.body, b"10.0.2.15");
    let r = get(
        addr,
        "/metadata/instance/compute/tagsList?api-version=2017-08-01",
        &[MD],
    );
    assert_eq!(r.status, 404);
}

/// The default image has neither the attested document nor scheduled events: a config that
/// asks for either is refused at boot with the feature to build with (not served as 404).
#[test]
fn the_default_image_refuses_attestation_and_scheduled_events_with_the_feature_to_use() {
    for (field, json_value, text) in [
        (
            "attestation",
            serde_json::json!({"key": "-", "certificate": "-"}),
            "imds-agent: fatal: config: field `attestation`: the attested document needs a build with the `attested` feature",
        ),
        (
            "scheduled_events",
            serde_json::json!([{"EventType": "Reboot"}]),
            "imds-agent: fatal: config: field `scheduled_events`: scheduled events need a build with the `scheduled-events` feature",
        ),
    ] {
        let mut json = xtask::config::demo("127.0.0.1:0", None);
        json[field] = json_value;
        let cfg = DemoConfig::from_json("unikernel-extras-refused", json);
        expect_exit(no_network(Some(cfg.path.clone())), exit::CONFIG_INVALID, text);
    }
}

/// The other Azure hosts' endpoints (issue 13) are the host daemon's: the image refuses them at
/// boot with a config error naming the field.
#[test]
fn the_image_refuses_the_other_hosts_endpoints() {
    for field in ["app_service", "azure_ml"] {
        let mut json = xtask::config::demo("127.0.0.1:0", None);
        json[field] = serde_json::json!({"listen": "127.0.0.1:8081", "secret": "s3cret-value"});
        let cfg = DemoConfig::from_json("unikernel-hosts-refused", json);
        let text = format!(
            "imds-agent: fatal: config: field `{field}`: is served by the host daemon only"
        );
        let out = expect_exit(
            no_network(Some(cfg.path.clone())),
            exit::CONFIG_INVALID,
            &text,
        );
        assert!(!out.contains("s3cret-value"), "{out}");
    }
}
