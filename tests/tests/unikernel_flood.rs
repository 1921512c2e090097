//! The unikernel under a flood of garbage frames: its NIC is a tap device in a network
//! namespace the test creates (nothing leaves it); a Python AF_PACKET sender floods the tap
//! with malformed Ethernet / ARP / IPv4 / TCP / UDP / IPv6 frames while a client in the same
//! namespace asks for tokens at 169.254.169.254. Every request must be answered, and the guest
//! must still be up and serving afterwards. Needs root (network namespaces, tap devices).

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use xtask::qemu::{self, Guest, Network, QemuOpts};

use imds_tests::DemoConfig;

const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
const GUEST_IP: &str = "10.0.3.15";
const HOST_IP: &str = "10.0.3.1";
const GUEST_MAC: &str = "52:54:00:12:34:56";
const TAP: &str = "tap0";
/// How long the flood lasts (the client's requests run meanwhile).
const FLOOD_SECONDS: u32 = 20;

/// A network namespace with a tap device, deleted on drop.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("imds-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "tuntap", "add", TAP, "mode", "tap"]);
        ip(&["-n", n, "addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
        ip(&["-n", n, "link", "set", TAP, "up"]);
        // The IMDS address is on the link: the guest answers ARP for it.
        ip(&["-n", n, "route", "add", "169.254.169.254/32", "dev", TAP]);
        ns
    }

    /// `program args...` run inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The flood: prebuilt malformed frames of many kinds, sent round-robin through an AF_PACKET
/// socket on the tap (i.e. to the guest) until the time is up; prints how many were sent.
const FLOOD_PY: &str = r#"
import random, socket, struct, sys, time
seconds, tap, guest_mac, guest_ip = float(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
gmac = bytes.fromhex(guest_mac.replace(':', ''))
gip = socket.inet_aton(guest_ip)
rnd = random.Random(1234)
def rb(n): return bytes(rnd.getrandbits(8) for _ in range(n))
def mac(): return bytes([0x02]) + rb(5)
def eth(dst, etype, payload): return dst + mac() + struct.pack('>H', etype) + payload
def ipv4(proto, payload, **kw):
    ihl = kw.get('ihl', 5); total = kw.get('total', 20 + len(payload))
    h = struct.pack('>BBHHHBBH4s4s', (4 << 4) | ihl, 0, total & 0xffff, rnd.getrandbits(16),
        kw.get('frag', 0), kw.get('ttl', 64), proto, kw.get('csum', rnd.getrandbits(16)),
        kw.get('src', bytes([10, 0, 3, rnd.randrange(2, 250)])), kw.get('dst', gip))
    return h + payload
frames = []
for i in range(3000):
    k = i % 12
    if k == 0:   # random bytes to the guest
        frames.append(gmac + rb(rnd.randrange(0, 1500)))
    elif k == 1: # random bytes, broadcast
        frames.append(b'\xff' * 6 + rb(rnd.randrange(0, 1500)))
    elif k == 2: # unknown ethertypes
        frames.append(eth(gmac, rnd.getrandbits(16), rb(rnd.randrange(0, 1400))))
    elif k == 3: # IPv4 with a bad header checksum / bad lengths / bad ihl
        frames.append(eth(gmac, 0x0800, ipv4(6, rb(rnd.randrange(0, 1400)),
            total=rnd.getrandbits(16), ihl=rnd.randrange(0, 16))))
    elif k == 4: # IPv4 truncated mid-header
        frames.append(eth(gmac, 0x0800, ipv4(6, b'')[:rnd.randrange(0, 20)]))
    elif k == 5: # TCP to port 80 with random flags and a wrong checksum
        tcp = struct.pack('>HHIIBBHHH', rnd.getrandbits(16), 80, rnd.getrandbits(32),
            rnd.getrandbits(32), 5 << 4, rnd.getrandbits(8), 1024, rnd.getrandbits(16), 0)
        frames.append(eth(gmac, 0x0800, ipv4(6, tcp + rb(rnd.randrange(0, 600)), csum=0)))
    elif k == 6: # fragments (smoltcp drops them: no reassembly configured)
        frames.append(eth(gmac, 0x0800, ipv4(17, rb(rnd.randrange(8, 1400)),
            frag=0x2000 | rnd.getrandbits(13))))
    elif k == 7: # UDP garbage to DHCP / DNS / random ports
        udp = struct.pack('>HHHH', rnd.getrandbits(16), rnd.choice([67, 68, 53, rnd.getrandbits(16)]),
            rnd.getrandbits(16), rnd.getrandbits(16)) + rb(rnd.randrange(0, 1000))
        frames.append(eth(gmac, 0x0800, ipv4(17, udp)))
    elif k == 8: # malformed ARP (bad hardware / protocol lengths)
        frames.append(eth(b'\xff' * 6, 0x0806, struct.pack('>HHBBH', 1, 0x0800,
            rnd.getrandbits(8), rnd.getrandbits(8), rnd.getrandbits(16)) + rb(rnd.randrange(0, 60))))
    elif k == 9: # ARP requests for other networks' addresses (never for the host's)
        frames.append(eth(b'\xff' * 6, 0x0806, struct.pack('>HHBBH', 1, 0x0800, 6, 4, 1)
            + mac() + bytes([192, 168, 7, rnd.randrange(1, 250)]) + b'\0' * 6
            + bytes([192, 168, 8, rnd.randrange(1, 250)])))
    elif k == 10: # IPv6 garbage (the guest speaks IPv4 only)
        frames.append(eth(gmac, 0x86DD, rb(rnd.randrange(0, 1400))))
    else:        # ICMP with a wrong checksum, and runt frames
        frames.append(eth(gmac, 0x0800, ipv4(1, b'\x08\x00\xde\xad' + rb(rnd.randrange(0, 500)))))
        frames.append(rb(rnd.randrange(0, 14)))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((tap, 0))
sent = dropped = 0
end = time.time() + seconds
while time.time() < end:
    for f in frames:
        try:
            s.send(f); sent += 1
        except OSError:
            dropped += 1
print(sent, dropped, flush=True)
"#;

/// One token request from inside the namespace (curl, fresh connection); (status, body).
fn token_in(ns: &Netns) -> (u16, String) {
    let out = ns
        .command("curl")
        .args([
            "--silent",
            "--show-error",
            "--noproxy",
            "*",
            "--max-time",
            "60",
            "-H",
            "Metadata: true",
            "--write-out",
            "\n%{http_code}",
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/",
        ])
        .output()
        .expect("run curl in the namespace");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
    (
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

fn flooder(ns: &Netns, seconds: u32) -> Child {
    ns.command("python3")
        .args([
            "-c",
            FLOOD_PY,
            &seconds.to_string(),
            TAP,
            GUEST_MAC,
            GUEST_IP,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 in the namespace")
}

fn image() -> PathBuf {
    qemu::build_image(true)
}

#[test]
fn garbage_frames_do_not_stop_the_guest_from_serving() {
    let ns = Netns::new("flood");
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    json["network"] = serde_json::json!({"address": format!("{GUEST_IP}/24"), "gateway": HOST_IP});
    let cfg = DemoConfig::from_json("unikernel-flood", json);
    let opts = QemuOpts {
        config: Some(cfg.path.clone()),
        network: Network::Tap { ifname: TAP.into() },
        ..QemuOpts::default()
    };
    let qemu_cmd = qemu::qemu_command(&image(), &opts);
    let mut cmd = ns.command(&qemu_cmd.get_program().to_string_lossy());
    cmd.args(qemu_cmd.get_args());
    let mut guest = Guest::spawn_command(cmd).expect("spawn QEMU in the namespace");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, body) = token_in(&ns);
    assert_eq!(status, 200, "before the flood: {body}\n{}", guest.output());

    let flood = flooder(&ns, FLOOD_SECONDS);
    let started = Instant::now();
    let mut answered = 0;
    while started.elapsed() < Duration::from_secs(u64::from(FLOOD_SECONDS) - 2) {
        let (status, body) = token_in(&ns);
        assert_eq!(
            status,
            200,
            "request {answered} during the flood: {body}\nguest:\n{}",
            guest.output()
        );
        assert!(body.contains("\"access_token\":\"ey"), "{body}");
        answered += 1;
    }
    let out = flood.wait_with_output().expect("flooder output");
    let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "flooder: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: u64 = report
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(sent > 10_000, "the flood sent only {report}");
    eprintln!("flood: {report} (sent, refused by the tap); {answered} tokens served meanwhile");
    assert!(answered >= 3, "{answered} tokens during the flood");

    // Still up and serving, nothing crashed.
    let (status, body) = token_in(&ns);
    assert_eq!(status, 200, "after the flood: {body}\n{}", guest.output());
    let console = guest.output();
    assert!(!console.contains("panic"), "{console}");
    assert!(!console.contains("fatal"), "{console}");
}
