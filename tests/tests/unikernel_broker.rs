//! Broker mode in the unikernel: the image built with the `broker` feature, under QEMU with user
//! networking, fetches tokens from a real OAuth2 authority (node oidc-provider over TLS 1.3 on
//! the host's loopback, reached from the guest at `10.0.2.2`), caches and serves them, and
//! answers every failure of the authority as the daemon does: a wrong CA or name is a 500 (a
//! pinned key is trusted instead), refusals and malformed answers 500, 5xx/429 are retried,
//! a slow or gone authority is a 503 — while cached tokens are still served. Name resolution through slirp's DNS forwarder
//! is covered with a DNS server of the test's own (QEMU runs in a private mount namespace whose
//! `/etc/resolv.conf` points slirp at it). An image without the feature refuses a broker config.

use imds_tests::authority::{Alg, Authority, AuthorityOpts, ClientSpec, Fault, ServerCert, Style};
use imds_tests::brokered::{self, agent_client_key};
use imds_tests::{get, token_target, DemoConfig, Response};
use serde_json::{json, Value};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use xtask::qemu::{self, exit, Guest, QemuOpts};

/// Boot to serving; generous for a loaded 2-core machine (it takes ~0.1 s when idle).
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

const MD: &str = "Metadata: true";
const MGMT: &str = "https://management.azure.com/";
const VAULT: &str = "https://vault.azure.net";
/// The host as QEMU's user networking shows it to the guest.
const SLIRP_HOST: &str = "10.0.2.2";

fn broker_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| qemu::build_image_with(true, &["broker"]))
        .clone()
}

/// A demo config whose identities have keys the authority knows, and that authority.
fn broker_config(style: Style, cert: ServerCert, name: &str) -> (Authority, Value) {
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    let mut clients = Vec::new();
    for id in json["identities"].as_array_mut().unwrap() {
        let key = agent_client_key(Alg::ES256);
        clients.push(ClientSpec::new(id["client_id"].as_str().unwrap(), &key));
        id["key"] = key.private_pem.clone().into();
    }
    let authority = Authority::start(AuthorityOpts {
        clients,
        server_cert: cert,
        ..AuthorityOpts::default()
    });
    // The certificate names `localhost` (embedded-tls checks DNS names, not IP addresses);
    // the guest reaches the host's loopback at 10.0.2.2.
    json["authority"] = json!({
        "token_url": authority.token_url_at(style, name),
        "ca_cert": authority.ca_pem,
        "style": match style { Style::V1 => "v1", Style::V2 => "v2" },
        "address": format!("{SLIRP_HOST}:{}", authority.https.port()),
        "timeout_s": 10,
    });
    (authority, json)
}

/// A booted broker image and its authority.
struct Rig {
    authority: Authority,
    guest: Guest,
    imds: SocketAddr,
    cfg: DemoConfig,
}

fn boot(cfg: &DemoConfig, wrap: impl FnOnce(Command) -> Command) -> (Guest, SocketAddr) {
    let port = qemu::free_port();
    let opts = QemuOpts::new(&cfg.path, port);
    let cmd = wrap(qemu::qemu_command(&broker_image(), &opts));
    let mut guest = Guest::spawn_command(cmd).expect("spawn QEMU");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    (guest, SocketAddr::from(([127, 0, 0, 1], port)))
}

fn rig_with(style: Style, cert: ServerCert, name: &str, edit: impl FnOnce(&mut Value)) -> Rig {
    let (authority, mut json) = broker_config(style, cert, name);
    edit(&mut json);
    let cfg = DemoConfig::from_json("unikernel-broker", json);
    let (guest, imds) = boot(&cfg, |c| c);
    Rig {
        authority,
        guest,
        imds,
        cfg,
    }
}

fn rig(style: Style) -> Rig {
    rig_with(style, ServerCert::Valid, "localhost", |_| {})
}

fn token(r: &Rig, resource: &str, extra: &str) -> Response {
    get(r.imds, &token_target(resource, extra), &[MD])
}

/// v1 answers carry expires_on (the token's exp); for v2 the guest computes it from
/// expires_in with its own wall clock (the RTC: whole seconds), so allow a little skew.
fn assert_brokered(r: &Rig, resp: &Response, resource: &str, client_id: &str) -> Value {
    brokered::assert_brokered(&r.authority, resp, resource, client_id, -5..=5, || {
        format!("guest:\n{}", r.guest.output())
    })
}

fn assert_imds_error(guest: &Guest, resp: &Response, status: u16, code: &str) {
    brokered::assert_imds_error(resp, status, code, || format!("guest:\n{}", guest.output()));
}

/// Wait until the guest's console shows `needle` (the agent's log lines are printed once per
/// loop turn).
fn wait_log(r: &mut Rig, needle: &str) {
    if let Err(e) = r.guest.wait_for_any(&[needle], Duration::from_secs(10)) {
        panic!("{e}");
    }
}

#[test]
fn v1_tokens_are_fetched_verified_cached_and_served() {
    let mut r = rig(Style::V1);
    let (_, reqs) = brokered::v1_fetched_cached_and_served(
        &r.cfg,
        &r.authority,
        |resource, extra| token(&r, resource, extra),
        |resp, resource, client_id| assert_brokered(&r, resp, resource, client_id),
    );
    // aud = the token URL, as the guest reaches it.
    assert_eq!(
        reqs[0]["assertion"]["claims"]["aud"],
        r.authority.token_url_at(Style::V1, "localhost")
    );
    wait_log(&mut r, "upstream: ");
    let out = r.guest.output();
    assert!(out.contains("booting (broker)"), "{out}");
    assert!(
        out.contains("imds-agent: broker mode: https://localhost:"),
        "{out}"
    );
    assert!(
        out.contains("GET /metadata/identity/oauth2/token 200"),
        "{out}"
    );
    assert!(!out.contains("eyJ"), "no JWT on the console:\n{out}");
}

#[test]
fn v2_scope_style() {
    // v2 answers have no expires_on: the agent computes it from expires_in with its own clock.
    let r = rig(Style::V2);
    brokered::v2_scope_and_computed_expiry(
        &r.cfg,
        &r.authority,
        |resource, extra| token(&r, resource, extra),
        |resp, resource, client_id| assert_brokered(&r, resp, resource, client_id),
        30,
    );
}

#[test]
fn a_certificate_from_another_ca_is_500_and_no_request_reaches_it() {
    let mut r = rig_with(Style::V1, ServerCert::OtherCa, "localhost", |_| {});
    let resp = token(&r, MGMT, "");
    assert_imds_error(&r.guest, &resp, 500, "server_error");
    assert!(
        resp.json()["error_description"]
            .as_str()
            .unwrap()
            .contains("TLS"),
        "{}",
        resp.text()
    );
    assert!(
        r.authority.requests().is_empty(),
        "no request may reach an unverified server"
    );
    wait_log(&mut r, "TLS: InvalidCertificate");
}

#[test]
fn a_wrong_name_is_500_and_a_pinned_key_is_trusted_instead_of_a_ca() {
    let mut r = rig_with(Style::V1, ServerCert::WrongName, "localhost", |_| {});
    assert_imds_error(&r.guest, &token(&r, MGMT, ""), 500, "server_error");
    assert!(r.authority.requests().is_empty());
    wait_log(&mut r, "TLS: InvalidCertificate");

    // `spki_sha256` instead of `ca_cert`: the server's own key is the anchor.
    let (authority, mut json) = broker_config(Style::V1, ServerCert::Valid, "localhost");
    let a = json["authority"].as_object_mut().unwrap();
    a.remove("ca_cert");
    a.insert(
        "spki_sha256".into(),
        authority.pki.server.spki_sha256.clone().into(),
    );
    let cfg = DemoConfig::from_json("unikernel-broker-pin", json);
    let (guest, imds) = boot(&cfg, |c| c);
    let r = Rig {
        authority,
        guest,
        imds,
        cfg,
    };
    let sys = r.cfg.system.clone().unwrap();
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);
}

#[test]
fn every_failure_of_the_authority_is_answered_in_the_guest() {
    let mut r = rig_with(Style::V1, ServerCert::Valid, "localhost", |j| {
        j["authority"]["timeout_s"] = 4.into()
    });
    let sys = r.cfg.system.clone().unwrap();
    let resource = |n: u32| format!("https://failure-{n}.example/");

    // A token fetched before the trouble starts.
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);

    // 4xx (invalid_client): not retried, 500, the upstream's error text on the console.
    r.authority.clear_requests();
    r.authority.set_fault(Fault::InvalidClient);
    assert_imds_error(&r.guest, &token(&r, &resource(1), ""), 500, "server_error");
    assert_eq!(r.authority.requests().len(), 1, "4xx is not retried");
    wait_log(&mut r, "invalid_client");

    // Malformed JSON: 500.
    r.authority.set_fault(Fault::Malformed);
    assert_imds_error(&r.guest, &token(&r, &resource(2), ""), 500, "server_error");

    // One 503, one 429 with Retry-After: retried, the client gets its token.
    r.authority.set_fault_times(Fault::Status(503), 1);
    let res = resource(3);
    assert_brokered(&r, &token(&r, &res, ""), &res, &sys.client_id);
    r.authority
        .set_fault_times(Fault::TooMany { retry_after: 1 }, 1);
    let t = Instant::now();
    let res = resource(4);
    assert_brokered(&r, &token(&r, &res, ""), &res, &sys.client_id);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "Retry-After honoured: {:?}",
        t.elapsed()
    );

    // A persistent 500: 503 with Retry-After once the attempts are spent.
    r.authority.set_fault(Fault::Status(500));
    assert_imds_error(
        &r.guest,
        &token(&r, &resource(5), ""),
        503,
        "service_unavailable",
    );

    // Too slow: 503 within the fetch budget (timeout_s = 4).
    r.authority.set_fault(Fault::Delay(Duration::from_secs(30)));
    let t = Instant::now();
    assert_imds_error(
        &r.guest,
        &token(&r, &resource(6), ""),
        503,
        "service_unavailable",
    );
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());

    // Through all of it the known token is served from the cache.
    assert_eq!(token(&r, MGMT, "").status, 200);
    r.authority.set_fault(Fault::None);
    let out = r.guest.output();
    assert!(!out.contains("eyJ"), "no JWT on the console:\n{out}");
}

#[test]
fn authority_down_is_503_and_a_cached_token_is_still_served() {
    let r = rig(Style::V1);
    assert_eq!(token(&r, MGMT, "").status, 200);
    let Rig {
        authority,
        guest,
        imds,
        cfg,
    } = r;
    let _ = authority.terminate();
    let _ = cfg;
    let token = |resource| get(imds, &token_target(resource, ""), &[MD]);
    // The known token is still served.
    assert_eq!(token(MGMT).status, 200);
    // A new one cannot be had: 503 with Retry-After, after bounded retries.
    let t = Instant::now();
    let resp = token(VAULT);
    assert_imds_error(&guest, &resp, 503, "service_unavailable");
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    // The guest is still up and serving.
    assert_eq!(token(MGMT).status, 200);
}

#[test]
fn an_image_without_the_broker_feature_refuses_a_broker_config() {
    let (_authority, json) = broker_config(Style::V1, ServerCert::Valid, "localhost");
    let cfg = DemoConfig::from_json("unikernel-issuer-broker-config", json);
    let opts = QemuOpts {
        config: Some(cfg.path.clone()),
        network: qemu::Network::None,
        ..QemuOpts::default()
    };
    imds_tests::expect_exit(
        &qemu::build_image(true),
        &opts,
        exit::CONFIG_INVALID,
        "imds-agent: fatal: config: field `authority`: broker mode needs a build with the `broker` feature",
        BOOT_TIMEOUT,
    );
}

// ---- name resolution through slirp ------------------------------------------------------------

/// A DNS server on a loopback address that answers A queries for `name` with `address` (and
/// NXDOMAIN for anything else), counting the questions.
struct TestDns {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
}

impl TestDns {
    fn start(name: &'static str, address: [u8; 4]) -> TestDns {
        // Port 53 (resolv.conf has no port) on an address of 127/8 nobody else uses.
        let sock = (2..250)
            .find_map(|i| UdpSocket::bind(("127.53.0.".to_string() + &i.to_string(), 53)).ok())
            .expect("a free 127.53.0.x:53");
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (asked, stop) = (asked.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    if let Some(answer) = dns_answer(&buf[..n], name, address, &asked) {
                        let _ = sock.send_to(&answer, from);
                    }
                }
            });
        }
        TestDns { addr, asked, stop }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The answer to one query: `address` for an A question about `name`, no records for other
/// types of it, NXDOMAIN for other names.
fn dns_answer(
    q: &[u8],
    name: &str,
    address: [u8; 4],
    asked: &Mutex<Vec<String>>,
) -> Option<Vec<u8>> {
    let mut i = 12;
    let mut labels = Vec::new();
    while *q.get(i)? != 0 {
        let n = q[i] as usize;
        labels.push(String::from_utf8_lossy(q.get(i + 1..i + 1 + n)?).into_owned());
        i += 1 + n;
    }
    let qtype = u16::from_be_bytes([*q.get(i + 1)?, *q.get(i + 2)?]);
    let end = i + 5;
    let asked_name = labels.join(".");
    asked.lock().unwrap().push(asked_name.clone());
    let known = asked_name.eq_ignore_ascii_case(name);
    let answer_a = known && qtype == 1;
    let mut a = Vec::new();
    a.extend_from_slice(&q[0..2]);
    a.extend_from_slice(if known { &[0x81, 0x80] } else { &[0x81, 0x83] });
    a.extend_from_slice(&[0, 1, 0, answer_a as u8, 0, 0, 0, 0]);
    a.extend_from_slice(q.get(12..end)?);
    if answer_a {
        a.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4]);
        a.extend_from_slice(&address);
    }
    Some(a)
}

/// Run `qemu` in a private mount namespace whose `/etc/resolv.conf` is `resolv` (slirp sends
/// the guest's DNS queries to the nameserver it names). Needs root (the tests run as root).
fn with_resolv_conf(qemu: Command, resolv: &Path) -> Command {
    let mut c = Command::new("unshare");
    c.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#,
    ])
    .arg(resolv)
    .arg(qemu.get_program())
    .args(qemu.get_args());
    c
}

#[test]
fn the_authority_host_is_resolved_through_slirp_dns() {
    // `localhost` -> 10.0.2.2 (the host as the guest sees it): the name the certificate
    // carries, at the address where the guest reaches the authority.
    let dns = TestDns::start("localhost", [10, 0, 2, 2]);
    let (authority, mut json) = broker_config(Style::V1, ServerCert::Valid, "localhost");
    json["authority"].as_object_mut().unwrap().remove("address");
    let cfg = DemoConfig::from_json("unikernel-broker-dns", json);
    let resolv = imds_tests::target_dir()
        .join("test-configs")
        .join(format!("resolv-{}.conf", std::process::id()));
    std::fs::write(&resolv, format!("nameserver {}\n", dns.addr.ip())).unwrap();
    let (guest, imds) = boot(&cfg, |c| with_resolv_conf(c, &resolv));
    let r = Rig {
        authority,
        guest,
        imds,
        cfg,
    };
    let out = r.guest.output();
    assert!(out.contains("DNS (servers from DHCP)"), "{out}");
    assert!(
        out.contains(", DNS 10.0.2.3"),
        "slirp's DNS from DHCP:\n{out}"
    );
    let sys = r.cfg.system.clone().unwrap();
    assert_brokered(&r, &token(&r, MGMT, ""), MGMT, &sys.client_id);
    assert!(
        dns.asked().iter().any(|n| n == "localhost"),
        "{:?}",
        dns.asked()
    );
    let _ = std::fs::remove_file(&resolv);
}

#[test]
fn an_unresolvable_authority_host_is_503() {
    // Slirp forwards to the DNS server of the test, which knows no such name.
    let dns = TestDns::start("other.example", [10, 0, 2, 2]);
    let (authority, mut json) = broker_config(Style::V1, ServerCert::Valid, "localhost");
    json["authority"].as_object_mut().unwrap().remove("address");
    let cfg = DemoConfig::from_json("unikernel-broker-nxdomain", json);
    let resolv = imds_tests::target_dir()
        .join("test-configs")
        .join(format!("resolv-nx-{}.conf", std::process::id()));
    std::fs::write(&resolv, format!("nameserver {}\n", dns.addr.ip())).unwrap();
    let (guest, imds) = boot(&cfg, |c| with_resolv_conf(c, &resolv));
    let mut r = Rig {
        authority,
        guest,
        imds,
        cfg,
    };
    let resp = token(&r, MGMT, "");
    assert_imds_error(&r.guest, &resp, 503, "service_unavailable");
    assert!(r.authority.requests().is_empty());
    assert!(dns.asked().iter().any(|n| n == "localhost"));
    wait_log(&mut r, "DNS: the name was not resolved");
    let _ = std::fs::remove_file(&resolv);
}
