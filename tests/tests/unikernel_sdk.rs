//! Real Azure SDK clients against the real unikernel: azure-identity (Python, unmodified) over
//! QEMU's user networking, and — as on a real VM — with no override at all, dialing
//! 169.254.169.254 from inside a network namespace this test creates, where the unikernel's
//! virtio-net is plugged into a tap device. Nothing leaves the namespace.

use imds_tests::netns::Netns;
use imds_tests::sdk::python_get_token;
use imds_tests::{verify_with_jwks, DemoConfig};
use std::process::Command;
use std::time::Duration;
use xtask::qemu::{self, Guest, Network, QemuOpts};

const SCOPE: &str = "https://management.azure.com/.default";
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn jwks(addr: std::net::SocketAddr) -> serde_json::Value {
    imds_tests::get(addr, "/.well-known/jwks.json", &[]).json()
}

#[test]
fn azure_identity_gets_system_and_user_tokens_from_the_unikernel() {
    let cfg = DemoConfig::new("uk-sdk");
    let port = qemu::free_port();
    let image = qemu::build_image(true);
    let mut guest = Guest::spawn(&image, &QemuOpts::new(&cfg.path, port)).expect("spawn QEMU");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let base = format!("http://{addr}");
    let keys = jwks(addr);
    let sys = cfg.system.clone().unwrap();
    let user = cfg.users[1].clone();
    for (client_id, expect) in [
        (None, &sys.client_id),
        (Some(user.client_id.as_str()), &user.client_id),
    ] {
        let got = python_get_token(&base, SCOPE, client_id)
            .unwrap_or_else(|e| panic!("{e}\n{}", guest.output()));
        let claims = verify_with_jwks(got["token"].as_str().unwrap(), &keys)
            .expect("verifies with the unikernel's JWKS");
        assert_eq!(&claims["appid"], expect.as_str());
        assert_eq!(claims["aud"], "https://management.azure.com");
    }
}

#[test]
fn azure_identity_reaches_169_254_169_254_with_no_override() {
    // A namespace with a tap device; QEMU runs inside it and plugs the guest's NIC into the
    // tap. Nothing is routed out of the namespace.
    let ns = Netns::new("t");
    let tap = "tap0";
    ns.exec(&["ip", "tuntap", "add", tap, "mode", "tap"]);
    ns.exec(&["ip", "addr", "add", "10.77.0.1/24", "dev", tap]);
    ns.exec(&["ip", "link", "set", tap, "up"]);
    // On-link: the unikernel answers ARP for 169.254.169.254 itself.
    ns.exec(&["ip", "route", "add", "169.254.169.254/32", "dev", tap]);
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    json["network"] = serde_json::json!({"address": "10.77.0.2/24", "gateway": "10.77.0.1"});
    let cfg = DemoConfig::from_json("uk-netns", json);
    let opts = QemuOpts {
        config: Some(cfg.path.clone()),
        network: Network::Tap { ifname: tap.into() },
        ..QemuOpts::default()
    };
    let image = qemu::build_image(true);
    let qemu_cmd = qemu::qemu_command(&image, &opts);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(qemu_cmd.get_program())
        .args(qemu_cmd.get_args());
    let mut guest = Guest::spawn_command(cmd).expect("spawn QEMU in the namespace");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));

    let venv = imds_tests::sdk::ensure_python_venv();
    let script = imds_tests::root().join("tests/py/get_token.py");
    let sys = cfg.system.clone().unwrap();
    let user = cfg.users[0].clone();
    // The JWKS over the namespace's link, retried until the link is up (ARP, tap carrier):
    // a VM's SDK likewise asks once the agent answers.
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .arg(venv.join("bin/python"))
        .args([
            "-c",
            "import urllib.request,sys,time\n\
             for i in range(60):\n\
             \ttry:\n\
             \t\tsys.stdout.write(urllib.request.urlopen('http://169.254.169.254/.well-known/jwks.json', timeout=2).read().decode()); break\n\
             \texcept Exception as e:\n\
             \t\ttime.sleep(0.5)\n",
        ])
        .output()
        .expect("fetch JWKS");
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JWKS from 169.254.169.254 in the namespace: {}\nguest:\n{}",
            String::from_utf8_lossy(&out.stderr),
            guest.output()
        )
    });
    for client_id in [None, Some(user.client_id.as_str())] {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns.name])
            .arg(venv.join("bin/python"))
            .arg(&script)
            .args(["imds", SCOPE])
            .env_remove("AZURE_POD_IDENTITY_AUTHORITY_HOST");
        if let Some(id) = client_id {
            c.arg(id);
        }
        let out = c.output().expect("run the SDK in the namespace");
        assert!(
            out.status.success(),
            "SDK failed: {}\nguest:\n{}",
            String::from_utf8_lossy(&out.stderr),
            guest.output()
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON line");
        let claims = verify_with_jwks(got["token"].as_str().unwrap(), &keys).expect("verifies");
        let expect = client_id.unwrap_or(&sys.client_id);
        assert_eq!(claims["appid"], expect);
    }
    let out = guest.output();
    assert!(
        out.contains("GET /metadata/identity/oauth2/token 200"),
        "{out}"
    );
}
