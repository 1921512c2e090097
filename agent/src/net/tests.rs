//! The network loop on a simulated wire: a smoltcp client (and, for broker mode, a DNS server
//! and a TLS 1.3 authority) on the far side, wired by two frame queues.

use super::listeners::{Slot, SlotState};
use super::*;
use crate::broker::pipe::{Pipe, PipeState};
use crate::broker::task::{self, TaskBuffers};
use crate::config::tests::{doc, SYS};
use crate::config::{AuthorityConfig, Config};
use crate::limits::BROKER_TASKS;
use crate::limits::IDLE_TIMEOUT_US;
use core::future::Future;
use core::pin::Pin;
use core::task::Waker;
use imds_hal::EntropyError;
use smoltcp::phy::{DeviceCapabilities, FaultInjector, Medium, RxToken};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::EthernetFrame;
use smoltcp::wire::IpAddress;
use std::boxed::Box;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::string::{String, ToString};
use std::vec::Vec;

const SERVER_MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const CLIENT_MAC: [u8; 6] = [0x52, 0x54, 0, 0xAA, 0xBB, 0xCC];
const SERVER_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 15);
const CLIENT_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 100);
const TOKEN_REQUEST: &str = "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/ HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n";

type Queue = Rc<RefCell<VecDeque<Vec<u8>>>>;

/// One end of an Ethernet cable.
struct Wire {
    rx: Queue,
    tx: Queue,
}

fn cable() -> (Wire, Wire) {
    let (a, b) = (Queue::default(), Queue::default());
    (
        Wire {
            rx: a.clone(),
            tx: b.clone(),
        },
        Wire { rx: b, tx: a },
    )
}

struct Rx(Vec<u8>);
struct Tx(Queue);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = std::vec![0; len];
        let r = f(&mut frame);
        self.0.borrow_mut().push_back(frame);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;
    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx)> {
        let frame = self.rx.borrow_mut().pop_front()?;
        Some((Rx(frame), Tx(self.tx.clone())))
    }
    fn transmit(&mut self, _: Instant) -> Option<Tx> {
        Some(Tx(self.tx.clone()))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

struct TestClock(Cell<u64>);

impl TestClock {
    fn advance(&self, us: u64) {
        self.0.set(self.0.get() + us);
    }
}

impl Clock for TestClock {
    fn monotonic_us(&self) -> u64 {
        self.0.get()
    }
    fn unix_time_s(&self) -> u64 {
        1_767_225_600 + self.0.get() / 1_000_000
    }
}

struct CountingEntropy(u8);

impl Entropy for CountingEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        for b in buf {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// The agent's side and a smoltcp client on the same link; in broker mode also the broker
/// tasks, and on the client's side a TLS authority and a DNS server when started.
struct Rig {
    net: Net<'static>,
    /// The agent's NIC, with smoltcp's fault injector in front (no faults unless set).
    server: FaultInjector<Wire>,
    /// Frames waiting for the agent (the same queue the injector's device reads).
    server_rx: Queue,
    agent: &'static RefCell<Agent>,
    clock: &'static TestClock,
    entropy: CountingEntropy,
    log: String,
    client: Interface,
    client_dev: Wire,
    client_sockets: SocketSet<'static>,
    next_port: u16,
    pipes: &'static [Pipe; BROKER_TASKS],
    tasks: Vec<Task>,
    authority: Option<FakeAuthority>,
    dns: Option<FakeDns>,
}

/// A static address on the client's /24: no DHCP, no DNS server.
const STATIC_NET: &str = r#""network":{"address":"10.0.2.15/24","gateway":"10.0.2.2"},"#;

impl Rig {
    /// Issuer mode.
    fn new() -> Rig {
        Rig::with_config(&doc(STATIC_NET, SYS))
    }

    fn with_config(doc: &str) -> Rig {
        let config = Config::parse(doc.as_bytes()).unwrap();
        let network = config.network.unwrap();
        let authority = config.authority.clone();
        let (server, mut client_dev) = cable();
        let server_rx = server.rx.clone();
        let mut server = FaultInjector::new(server, 0x5eed);
        let clock: &'static TestClock = Box::leak(Box::new(TestClock(Cell::new(1_000_000))));
        let mut entropy = CountingEntropy(0);
        let mut log = String::new();
        let memory = Box::leak(Box::new(NetMemory::new()));
        let net = Net::new(
            &mut server,
            SERVER_MAC,
            Some(&network),
            memory,
            clock,
            &mut entropy,
            &mut log,
        );
        let agent: &'static RefCell<Agent> = Box::leak(Box::new(RefCell::new(Agent::new(config))));
        let pipes: &'static [Pipe; BROKER_TASKS] =
            Box::leak(Box::new([const { Pipe::new() }; BROKER_TASKS]));
        let mut tasks: Vec<Task> = Vec::new();
        if let Some(authority) = authority {
            let authority: &'static AuthorityConfig = Box::leak(Box::new(authority));
            for (i, pipe) in pipes.iter().enumerate() {
                let bufs = Box::leak(Box::new(TaskBuffers::new()));
                tasks.push(Box::pin(task::run(
                    agent,
                    authority,
                    pipe,
                    clock,
                    CountingEntropy(100 + i as u8),
                    bufs,
                )));
            }
        }
        let mut client = Interface::new(
            IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC))),
            &mut client_dev,
            Instant::from_micros(1_000_000),
        );
        client.update_ip_addrs(|a| {
            a.push(IpCidr::Ipv4(Ipv4Cidr::new(CLIENT_IP, 24))).unwrap();
        });
        // 169.254.169.254 is reached through the agent, as a VM reaches IMDS.
        client
            .routes_mut()
            .add_default_ipv4_route(SERVER_IP)
            .unwrap();
        let storage = Box::leak(Box::new([const { SocketStorage::EMPTY }; 48]));
        Rig {
            net,
            server,
            server_rx,
            agent,
            clock,
            entropy,
            log,
            client,
            client_dev,
            client_sockets: SocketSet::new(&mut storage[..]),
            next_port: 49_152,
            pipes,
            tasks,
            authority: None,
            dns: None,
        }
    }

    /// Broker mode against [`FakeAuthority`] at `authority.test:443`; `address`: the
    /// config's `authority.address` (else the name is resolved by DNS).
    fn broker(address: Option<&str>, extra: &str) -> Rig {
        Rig::broker_trusting(|pki| json_field("ca_cert", &pki.ca_pem), address, extra)
    }

    /// [`Rig::broker`] with the `authority` trust field(s) `trust` makes of the PKI.
    fn broker_trusting(
        trust: impl FnOnce(&FakePki) -> String,
        address: Option<&str>,
        extra: &str,
    ) -> Rig {
        let pki = FakePki::new();
        let doc = broker_doc(&trust(&pki), address, extra);
        let mut rig = Rig::with_config(&doc);
        rig.authority = Some(FakeAuthority::new(&mut rig.client_sockets, pki));
        rig
    }

    /// One poll of the agent's side only (the client's frames stay queued).
    fn poll_server(&mut self) -> PollStatus {
        self.net.poll(
            &mut self.server,
            &mut self.agent.borrow_mut(),
            self.clock,
            &mut self.entropy,
            &mut self.log,
        )
    }

    /// Advance time by `us` and let every side run.
    fn step(&mut self, us: u64) {
        self.clock.advance(us);
        for _ in 0..4 {
            let status = self.poll_server();
            if let Some(change) = status.address_change {
                change.apply_to(self.agent.borrow_mut().guard_mut());
            }
            let mut upstream = false;
            if !self.tasks.is_empty() {
                for t in self.tasks.iter_mut() {
                    let _ = t
                        .as_mut()
                        .poll(&mut core::task::Context::from_waker(Waker::noop()));
                }
                upstream = self.net.poll_upstream(&self.pipes[..], &mut self.log);
                self.agent.borrow_mut().drain_events(&mut self.log);
            }
            let now = Instant::from_micros(self.clock.0.get() as i64);
            let client = self
                .client
                .poll(now, &mut self.client_dev, &mut self.client_sockets);
            if let Some(a) = self.authority.as_mut() {
                a.serve(&mut self.client_sockets);
            }
            if let Some(d) = self.dns.as_mut() {
                d.serve(&mut self.client_sockets);
            }
            if client == PollResult::None && self.server_rx.borrow().is_empty() && !upstream {
                break;
            }
        }
    }

    /// A client socket connecting to `to`:80 (its SYN goes out at the client's next poll).
    fn start_connect(&mut self, to: Ipv4Address) -> SocketHandle {
        let rx = tcp::SocketBuffer::new(&mut Box::leak(Box::new([0u8; 8192]))[..]);
        let tx = tcp::SocketBuffer::new(&mut Box::leak(Box::new([0u8; 8192]))[..]);
        let handle = self.client_sockets.add(tcp::Socket::new(rx, tx));
        self.next_port += 1;
        let port = self.next_port;
        let cx = self.client.context();
        self.client_sockets
            .get_mut::<tcp::Socket>(handle)
            .connect(cx, (IpAddress::Ipv4(to), HTTP_PORT), port)
            .unwrap();
        handle
    }

    /// One poll of the client's side only (the agent's frames stay queued).
    fn poll_client(&mut self) {
        let now = Instant::from_micros(self.clock.0.get() as i64);
        self.client
            .poll(now, &mut self.client_dev, &mut self.client_sockets);
    }

    /// Connect to `to`:80, stepping `step_us` at a time.
    fn connect_with(&mut self, to: Ipv4Address, step_us: u64) -> SocketHandle {
        let handle = self.start_connect(to);
        for _ in 0..2_000 {
            self.step(step_us);
            if self.socket(handle).state() == tcp::State::Established {
                return handle;
            }
        }
        panic!("no connection: {:?}", self.socket(handle).state());
    }

    fn connect(&mut self, to: Ipv4Address) -> SocketHandle {
        self.connect_with(to, 1_000)
    }

    fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.client_sockets.get_mut::<tcp::Socket>(h)
    }

    /// Send `request`, read until a whole response (head + Content-Length body) is in,
    /// stepping `step_us` at a time for at most `steps` steps.
    fn exchange_with(
        &mut self,
        h: SocketHandle,
        request: &str,
        step_us: u64,
        steps: usize,
    ) -> String {
        self.socket(h).send_slice(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        for _ in 0..steps {
            self.step(step_us);
            let s = self.socket(h);
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if http_complete(&got) {
                return String::from_utf8_lossy(&got).into_owned();
            }
        }
        panic!(
            "no complete response; got {:?}\nlog:\n{}",
            String::from_utf8_lossy(&got),
            self.log
        );
    }

    fn exchange(&mut self, h: SocketHandle, request: &str) -> String {
        self.exchange_with(h, request, 1_000, 200)
    }

    /// A token request on a new connection (`Connection: close`), answered within
    /// `virtual_s` seconds of virtual time (10 ms steps).
    fn token(&mut self, resource: &str, virtual_s: u64) -> String {
        let h = self.connect_with(IMDS_ADDRESS, 10_000);
        let request = std::format!(
            "GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource={resource} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n"
        );
        let answer = self.exchange_with(h, &request, 10_000, virtual_s as usize * 100);
        self.socket(h).abort();
        self.step(1_000);
        self.client_sockets.remove(h);
        answer
    }
}

// ---- the peers of broker mode, on the client's side of the wire ----------------------

const AUTHORITY_HOST: &str = "authority.test";
const AUTHORITY_PORT: u16 = 443;

/// A throw-away CA and a server certificate for [`AUTHORITY_HOST`].
struct FakePki {
    ca_pem: String,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key_der: Vec<u8>,
    /// The leaf key's DER `SubjectPublicKeyInfo`, as rcgen encodes it.
    spki_der: Vec<u8>,
}

impl FakePki {
    fn new() -> FakePki {
        let dn = |cn: &str| {
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::CommonName, cn);
            dn
        };
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name = dn("net.rs test CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = std::vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        ca.not_before = rcgen::date_time_ymd(2024, 1, 1);
        ca.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf =
            rcgen::CertificateParams::new(std::vec![AUTHORITY_HOST.to_string()]).unwrap();
        leaf.distinguished_name = dn(AUTHORITY_HOST);
        leaf.key_usages = std::vec![rcgen::KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = std::vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        leaf.not_before = rcgen::date_time_ymd(2024, 1, 1);
        leaf.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        FakePki {
            ca_pem: ca.pem(),
            chain: std::vec![leaf.der().clone()],
            key_der: key.serialize_der(),
            spki_der: key.public_key_der(),
        }
    }
}

/// A broker-mode config: the system identity with the test key, the authority at
/// `https://authority.test/tenant/oauth2/token`.
fn broker_doc(trust: &str, address: Option<&str>, extra: &str) -> String {
    let address = address
        .map(|a| std::format!(r#","address":"{a}""#))
        .unwrap_or_default();
    let key = crate::config::tests::TEST_KEY_PEM;
    std::format!(
        r#"{{"tenant_id":"72f988bf-86f1-41af-91ab-2d7cd011db47",{STATIC_NET}{extra}"authority":{{"token_url":"https://{AUTHORITY_HOST}/tenant/oauth2/token",{trust},"timeout_s":20{address}}},"identities":[{{"kind":"system","client_id":"11111111-1111-1111-1111-111111111111","object_id":"21111111-1111-1111-1111-111111111111","resource_id":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm","key":"{key}"}}]}}"#
    )
}

/// `"name":"value"` with the value's newlines escaped.
fn json_field(name: &str, value: &str) -> String {
    std::format!(r#""{name}":"{}""#, value.replace('\n', "\\n"))
}

/// One TLS session of [`FakeAuthority`].
struct Session {
    tls: rustls::ServerConnection,
    request: Vec<u8>,
    outbox: Vec<u8>,
    answered: bool,
}

/// An OAuth2 token endpoint over TLS 1.3 (rustls) on smoltcp sockets listening on
/// `CLIENT_IP:443`: it answers every complete request with a fresh v1 token, or not at all
/// while `silent`.
struct FakeAuthority {
    config: std::sync::Arc<rustls::ServerConfig>,
    listeners: Vec<(SocketHandle, Option<Session>)>,
    /// Plain-text requests received.
    requests: Vec<String>,
    silent: bool,
}

impl FakeAuthority {
    fn new(sockets: &mut SocketSet<'static>, pki: FakePki) -> FakeAuthority {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                pki.chain,
                rustls::pki_types::PrivateKeyDer::Pkcs8(pki.key_der.into()),
            )
            .unwrap();
        let listeners = (0..BROKER_TASKS)
            .map(|_| {
                let rx = tcp::SocketBuffer::new(&mut Box::leak(Box::new([0u8; 16384]))[..]);
                let tx = tcp::SocketBuffer::new(&mut Box::leak(Box::new([0u8; 16384]))[..]);
                let mut s = tcp::Socket::new(rx, tx);
                s.listen(AUTHORITY_PORT).unwrap();
                (sockets.add(s), None)
            })
            .collect();
        FakeAuthority {
            config: std::sync::Arc::new(config),
            listeners,
            requests: Vec::new(),
            silent: false,
        }
    }

    fn serve(&mut self, sockets: &mut SocketSet<'static>) {
        for (handle, session) in self.listeners.iter_mut() {
            let s = sockets.get_mut::<tcp::Socket>(*handle);
            if !s.is_open() {
                *session = None;
                s.listen(AUTHORITY_PORT).unwrap();
                continue;
            }
            if session.is_none() && s.may_recv() && !s.is_listening() {
                if s.state() == tcp::State::SynReceived {
                    continue;
                }
                *session = Some(Session {
                    tls: rustls::ServerConnection::new(self.config.clone()).unwrap(),
                    request: Vec::new(),
                    outbox: Vec::new(),
                    answered: false,
                });
            }
            let Some(sess) = session.as_mut() else {
                continue;
            };
            while s.can_recv() {
                let data = s.recv(|b| (b.len(), b.to_vec())).unwrap();
                let mut rd = &data[..];
                while !rd.is_empty() {
                    if sess.tls.read_tls(&mut rd).is_err() {
                        break;
                    }
                }
            }
            if sess.tls.process_new_packets().is_err() {
                // E.g. the client refused our certificate: send the alert, then reset.
                let _ = sess.tls.write_tls(&mut sess.outbox);
                let _ = s.send_slice(&sess.outbox);
                s.close();
                *session = None;
                continue;
            }
            let mut plain = [0u8; 8192];
            loop {
                match std::io::Read::read(&mut sess.tls.reader(), &mut plain) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sess.request.extend_from_slice(&plain[..n]),
                }
            }
            if !sess.answered && !self.silent && http_complete(&sess.request) {
                sess.answered = true;
                self.requests
                    .push(String::from_utf8_lossy(&sess.request).into_owned());
                let body = std::format!(
                    r#"{{"access_token":"eyJ0eXAiOiJKV1QifQ.fake-token-{}.c2ln","token_type":"Bearer","expires_in":"3600","resource":"r"}}"#,
                    self.requests.len()
                );
                let answer = std::format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                std::io::Write::write_all(&mut sess.tls.writer(), answer.as_bytes()).unwrap();
                sess.tls.send_close_notify();
            }
            while sess.tls.wants_write() {
                if sess.tls.write_tls(&mut sess.outbox).is_err() {
                    break;
                }
            }
            if !sess.outbox.is_empty() && s.can_send() {
                let n = s.send_slice(&sess.outbox).unwrap_or(0);
                sess.outbox.drain(..n);
            }
            if sess.answered && sess.outbox.is_empty() && s.state() != tcp::State::FinWait1 {
                s.close();
            }
        }
    }
}

/// Whether `b` holds a whole HTTP message (head and Content-Length body).
fn http_complete(b: &[u8]) -> bool {
    let text = String::from_utf8_lossy(b);
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let len = text[..end]
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        .unwrap_or(0);
    b.len() >= end + 4 + len
}

/// A DNS server on `CLIENT_IP:53` that knows one name.
struct FakeDns {
    handle: SocketHandle,
    name: &'static str,
    address: Ipv4Address,
    /// Names asked for.
    queries: Vec<String>,
}

impl FakeDns {
    fn new(sockets: &mut SocketSet<'static>, name: &'static str, address: Ipv4Address) -> Self {
        let meta = || Box::leak(Box::new([udp::PacketMetadata::EMPTY; 4]));
        let buf = || &mut Box::leak(Box::new([0u8; 2048]))[..];
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(&mut meta()[..], buf()),
            udp::PacketBuffer::new(&mut meta()[..], buf()),
        );
        s.bind(53).unwrap();
        FakeDns {
            handle: sockets.add(s),
            name,
            address,
            queries: Vec::new(),
        }
    }

    fn serve(&mut self, sockets: &mut SocketSet<'static>) {
        let s = sockets.get_mut::<udp::Socket>(self.handle);
        while let Ok((query, meta)) = s.recv() {
            let query = query.to_vec();
            // Header (12 bytes), then one question: labels, type, class.
            let mut i = 12;
            let mut labels = Vec::new();
            while i < query.len() && query[i] != 0 {
                let n = query[i] as usize;
                labels.push(String::from_utf8_lossy(&query[i + 1..i + 1 + n]).into_owned());
                i += 1 + n;
            }
            let question_end = i + 5;
            let name = labels.join(".");
            let known = name == self.name;
            self.queries.push(name);
            let mut answer = Vec::new();
            answer.extend_from_slice(&query[0..2]); // id
            answer.extend_from_slice(if known { &[0x81, 0x80] } else { &[0x81, 0x83] });
            answer.extend_from_slice(&[0, 1, 0, known as u8, 0, 0, 0, 0]);
            answer.extend_from_slice(&query[12..question_end]);
            if known {
                answer.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                answer.extend_from_slice(&self.address.octets());
            }
            s.send_slice(&answer, meta.endpoint).unwrap();
        }
    }
}

#[test]
fn arp_request_for_the_gateway_at_start() {
    let mut rig = Rig::new();
    rig.poll_server();
    let frames: Vec<Vec<u8>> = rig.client_dev.rx.borrow().iter().cloned().collect();
    let arp = frames
        .iter()
        .find_map(|f| {
            let eth = EthernetFrame::new_checked(&f[..]).ok()?;
            if eth.ethertype() != EthernetProtocol::Arp {
                return None;
            }
            ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).ok()?).ok()
        })
        .expect("an ARP frame");
    assert_eq!(
        arp,
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(SERVER_MAC),
            source_protocol_addr: SERVER_IP,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: Ipv4Address::new(10, 0, 2, 2),
        }
    );
    assert!(
        rig.log.contains("address 10.0.2.15/24 (static)"),
        "{}",
        rig.log
    );
}

#[test]
fn one_ready_line_once_the_address_is_armed() {
    let mut rig = Rig::new();
    assert!(!rig.log.contains(READY_PREFIX), "{}", rig.log);
    for _ in 0..3 {
        rig.poll_server();
    }
    let ready: Vec<&str> = rig
        .log
        .lines()
        .filter(|l| l.starts_with(READY_PREFIX))
        .collect();
    assert_eq!(
        ready,
        ["imds-agent: ready: http://10.0.2.15:80 http://169.254.169.254:80"],
        "{}",
        rig.log
    );
    // Sent after the gateway's ARP request (the frame is queued by the same poll).
    assert!(!rig.client_dev.rx.borrow().is_empty());
}

#[test]
fn token_on_the_imds_address_and_on_the_own_address() {
    let mut rig = Rig::new();
    for to in [IMDS_ADDRESS, SERVER_IP] {
        let h = rig.connect(to);
        let answer = rig.exchange(h, &std::format!("{TOKEN_REQUEST}\r\n"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"access_token\":\"ey"), "{answer}");
        assert!(answer.contains("\"token_type\":\"Bearer\""), "{answer}");
    }
    assert!(
        rig.log
            .contains("10.0.2.100 GET /metadata/identity/oauth2/token 200"),
        "{}",
        rig.log
    );
}

#[test]
fn keep_alive_then_close_and_sockets_are_rearmed() {
    let mut rig = Rig::new();
    // More connections than sockets, one after the other: each slot must listen again.
    for _ in 0..LISTEN_SOCKETS * 2 + 1 {
        let h = rig.connect(IMDS_ADDRESS);
        let first = rig.exchange(h, &std::format!("{TOKEN_REQUEST}\r\n"));
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        let second = rig.exchange(h, &std::format!("{TOKEN_REQUEST}Connection: close\r\n\r\n"));
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
        for _ in 0..20 {
            rig.step(1_000);
        }
        assert!(
            !rig.socket(h).may_recv(),
            "server closed after Connection: close"
        );
        rig.socket(h).close();
        rig.step(1_000);
        rig.client_sockets.remove(h);
    }
}

#[test]
fn idle_connection_is_reset() {
    let mut rig = Rig::new();
    let h = rig.connect(IMDS_ADDRESS);
    rig.step(IDLE_TIMEOUT_US / 2);
    assert_eq!(rig.socket(h).state(), tcp::State::Established);
    rig.step(IDLE_TIMEOUT_US / 2 + 1_000_000);
    rig.step(1_000);
    assert_eq!(rig.socket(h).state(), tcp::State::Closed);
    // And the slot serves again.
    let h = rig.connect(IMDS_ADDRESS);
    let answer = rig.exchange(h, &std::format!("{TOKEN_REQUEST}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn full_pool_closes_the_longest_idle_keep_alive_connection() {
    let mut rig = Rig::new();
    let mut held = Vec::new();
    // More keep-alive clients than sockets, each holding its connection open.
    for _ in 0..LISTEN_SOCKETS + 4 {
        let h = rig.connect(IMDS_ADDRESS);
        let answer = rig.exchange(h, &std::format!("{TOKEN_REQUEST}\r\n"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        held.push(h);
    }
    for _ in 0..10 {
        rig.step(1_000);
    }
    // The oldest were closed by the agent (FIN), the newest are still open.
    assert!(!rig.socket(held[0]).may_recv());
    assert!(rig.socket(held[held.len() - 1]).may_recv());
    let open = held.iter().filter(|h| rig.socket(**h).may_recv()).count();
    assert!(open <= LISTEN_SOCKETS - SPARE_LISTENERS + 1, "{open} open");
}

#[test]
fn a_syn_while_no_socket_listens_is_dropped_then_served_on_retransmission() {
    let mut rig = Rig::new();
    // Every socket but the spare ones holds a silent connection (no room is made yet).
    let held: Vec<_> = (0..LISTEN_SOCKETS - SPARE_LISTENERS)
        .map(|_| rig.connect(IMDS_ADDRESS))
        .collect();
    rig.step(1_000);
    assert!(held.iter().all(|&h| rig.socket(h).may_recv()));
    // Two clients at once take the spare sockets: none listens now. The agent closes its
    // oldest connection to make room, but that socket listens only once the FIN is answered.
    let a = rig.start_connect(IMDS_ADDRESS);
    let b = rig.start_connect(IMDS_ADDRESS);
    rig.poll_client();
    rig.clock.advance(100);
    rig.poll_server();
    assert!(rig
        .net
        .slots
        .iter()
        .all(|s| rig.net.sockets.get::<tcp::Socket>(s.handle).state() != tcp::State::Listen));
    // A third client's SYN arrives now: dropped (smoltcp would answer it with RST), ...
    let c = rig.start_connect(IMDS_ADDRESS);
    rig.clock.advance(100);
    rig.poll_client();
    rig.clock.advance(100);
    rig.poll_server();
    rig.clock.advance(100);
    rig.poll_client();
    assert_eq!(rig.socket(c).state(), tcp::State::SynSent, "{}", rig.log);
    // ... and the client's retransmission finds the socket that was closed to make room.
    for _ in 0..3_000 {
        rig.step(1_000);
        if rig.socket(c).state() == tcp::State::Established {
            break;
        }
    }
    assert_eq!(rig.socket(c).state(), tcp::State::Established);
    for h in [a, b, c] {
        let answer = rig.exchange(h, &std::format!("{TOKEN_REQUEST}\r\n"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

const MGMT: &str = "https://management.azure.com/";

#[test]
fn sockets_closed_a_moment_ago_count_as_spare() {
    let handle = Rig::new().net.slots[0].handle;
    let slot = |state| Slot { handle, state };
    let listening = slot(SlotState::Listening);
    assert!(listening.is_spare(tcp::State::Listen, 0));
    assert!(!listening.is_spare(tcp::State::SynReceived, 0));
    let closing = slot(SlotState::Closing { since_us: 1_000 });
    assert!(closing.is_spare(tcp::State::FinWait1, 1_000 + CLOSING_SOON_US - 1));
    // A peer that does not acknowledge for long does not hold off making room.
    assert!(!closing.is_spare(tcp::State::FinWait1, 1_000 + CLOSING_SOON_US));
    let active = slot(SlotState::Active { peer_closed: false });
    assert!(!active.is_spare(tcp::State::Established, 0));
}

#[test]
fn full_pool_closes_silent_connections_before_an_older_client_that_talks() {
    let mut rig = Rig::new();
    let client = rig.connect(IMDS_ADDRESS);
    let answer = rig.exchange(client, &std::format!("{TOKEN_REQUEST}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Then more connections than sockets that never send a byte.
    let mut silent = Vec::new();
    for _ in 0..LISTEN_SOCKETS + 4 {
        silent.push(rig.connect(IMDS_ADDRESS));
        rig.step(1_000);
    }
    for _ in 0..10 {
        rig.step(1_000);
    }
    assert!(!rig.socket(silent[0]).may_recv());
    // The client has been idle longer than any of them, but it talks HTTP: kept.
    let answer = rig.exchange(client, &std::format!("{TOKEN_REQUEST}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn full_pool_closes_slow_request_heads_before_a_busy_keep_alive_client() {
    let mut rig = Rig::new();
    let client = rig.connect(IMDS_ADDRESS);
    let mut slow = Vec::new();
    // Slowloris: more senders than sockets, each trickling its request head a byte at a
    // time, while a real client asks for a token between each new sender.
    for _ in 0..LISTEN_SOCKETS + 4 {
        let h = rig.connect(IMDS_ADDRESS);
        rig.socket(h)
            .send_slice(b"GET /metadata/identity/oauth2")
            .unwrap();
        slow.push(h);
        for &h in &slow {
            if rig.socket(h).may_send() {
                rig.socket(h).send_slice(b"/").unwrap();
            }
        }
        rig.step(1_000);
        let answer = rig.exchange(client, &std::format!("{TOKEN_REQUEST}\r\n"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    for _ in 0..10 {
        rig.step(1_000);
    }
    // The oldest heads were closed; the client that completes its requests never was.
    assert!(!rig.socket(slow[0]).may_recv());
    assert!(rig.socket(slow[slow.len() - 1]).may_recv());
    let answer = rig.exchange(client, &std::format!("{TOKEN_REQUEST}\r\n"));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

#[test]
fn brokered_token_over_tls_on_the_wire_then_from_the_cache() {
    let mut rig = Rig::broker(Some("10.0.2.100:443"), "");
    let answer = rig.token(MGMT, 30);
    assert_eq!(status(&answer), "200", "{answer}\nlog:\n{}", rig.log);
    assert!(answer.contains("fake-token-1"), "{answer}");
    let requests = &rig.authority.as_ref().unwrap().requests;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert!(
        request.starts_with("POST /tenant/oauth2/token HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(request.contains("Host: authority.test\r\n"), "{request}");
    assert!(
        request.contains("client_assertion=ey") && request.contains("resource=https%3A"),
        "{request}"
    );
    // From the cache: the authority sees nothing more.
    let again = rig.token(MGMT, 5);
    assert!(again.contains("fake-token-1"), "{again}");
    assert_eq!(rig.authority.as_ref().unwrap().requests.len(), 1);
    // The upstream sockets were closed again.
    for _ in 0..100 {
        rig.step(10_000);
    }
    assert!(rig.pipes.iter().all(|p| p.state() == PipeState::Idle));
}

#[test]
fn spki_of_a_certificate_is_the_key_it_was_made_for() {
    let pki = FakePki::new();
    let spki = crate::broker::pin::certificate_spki(&pki.chain[0]).unwrap();
    assert_eq!(spki, &pki.spki_der[..]);
    assert!(crate::broker::pin::certificate_spki(&pki.chain[0][..40]).is_err());
    assert!(crate::broker::pin::certificate_spki(b"").is_err());
}

#[test]
fn pinned_public_key_is_trusted_and_a_wrong_pin_is_not() {
    use sha2::Digest as _;
    // Hex here; config's tests cover the base64 and `sha256//` spellings.
    let pin = |spki: &[u8]| {
        sha2::Sha256::digest(spki)
            .iter()
            .map(|b| std::format!("{b:02x}"))
            .collect::<String>()
    };
    let mut rig = Rig::broker_trusting(
        |pki| json_field("spki_sha256", &pin(&pki.spki_der)),
        Some("10.0.2.100:443"),
        "",
    );
    let answer = rig.token(MGMT, 30);
    assert_eq!(status(&answer), "200", "{answer}\nlog:\n{}", rig.log);
    assert_eq!(rig.authority.as_ref().unwrap().requests.len(), 1);

    // A pin of another key is refused before anything is sent.
    let other = rcgen::KeyPair::generate().unwrap().public_key_der();
    let mut rig = Rig::broker_trusting(
        |_| json_field("spki_sha256", &pin(&other)),
        Some("10.0.2.100:443"),
        "",
    );
    let answer = rig.token(MGMT, 30);
    assert_eq!(status(&answer), "500", "{answer}\nlog:\n{}", rig.log);
    assert!(rig.log.contains("InvalidCertificate"), "{}", rig.log);
    assert!(rig.authority.as_ref().unwrap().requests.is_empty());
}

#[test]
fn authority_host_resolved_by_dns() {
    let mut rig = Rig::broker(None, "");
    rig.dns = Some(FakeDns::new(
        &mut rig.client_sockets,
        AUTHORITY_HOST,
        CLIENT_IP,
    ));
    rig.net.set_dns_servers(&[CLIENT_IP]);
    let answer = rig.token(MGMT, 30);
    assert_eq!(status(&answer), "200", "{answer}\nlog:\n{}", rig.log);
    assert_eq!(rig.dns.as_ref().unwrap().queries, [AUTHORITY_HOST]);
}

#[test]
fn unknown_name_or_no_dns_server_is_503() {
    let mut rig = Rig::broker(None, "");
    // Static network config: no DNS server at all.
    let answer = rig.token(MGMT, 30);
    assert_eq!(status(&answer), "503", "{answer}\nlog:\n{}", rig.log);
    assert!(rig.log.contains("no DNS server"), "{}", rig.log);
    // A DNS server that does not know the name (NXDOMAIN).
    rig.dns = Some(FakeDns::new(
        &mut rig.client_sockets,
        "other.test",
        CLIENT_IP,
    ));
    rig.net.set_dns_servers(&[CLIENT_IP]);
    let answer = rig.token("https://vault.azure.net", 30);
    assert_eq!(status(&answer), "503", "{answer}\nlog:\n{}", rig.log);
    assert!(!rig.dns.as_ref().unwrap().queries.is_empty());
    assert!(rig.authority.as_ref().unwrap().requests.is_empty());
}

#[test]
fn refused_connection_is_503() {
    // Nobody listens on port 444: the client's stack answers the SYN with a reset.
    let mut rig = Rig::broker(Some("10.0.2.100:444"), "");
    let answer = rig.token(MGMT, 30);
    assert_eq!(status(&answer), "503", "{answer}\nlog:\n{}", rig.log);
    assert!(rig.log.contains("connect failed"), "{}", rig.log);
}

#[test]
fn a_parked_request_whose_client_leaves_is_released() {
    // One request in flight per source: a parked request that is not released when its
    // client goes away would make every later request of that client a 429.
    let mut rig = Rig::broker(Some("10.0.2.100:443"), r#""limits":{"in_flight":1},"#);
    rig.authority.as_mut().unwrap().silent = true;
    let request = std::format!("{TOKEN_REQUEST}\r\n");
    for _ in 0..3 {
        let h = rig.connect(IMDS_ADDRESS);
        rig.socket(h).send_slice(request.as_bytes()).unwrap();
        for _ in 0..50 {
            rig.step(10_000);
        }
        assert!(rig.net.has_parked(), "log:\n{}", rig.log);
        assert!(!rig.socket(h).can_recv(), "parked, not answered");
        // The client resets its connection.
        rig.socket(h).abort();
        rig.step(1_000);
        rig.client_sockets.remove(h);
        for _ in 0..5 {
            rig.step(1_000);
        }
        assert!(!rig.net.has_parked());
    }
    // The authority answers again: the next request is served, not refused.
    rig.authority.as_mut().unwrap().silent = false;
    let answer = rig.token(MGMT, 30);
    assert_eq!(status(&answer), "200", "{answer}\nlog:\n{}", rig.log);
}

/// Drop and corrupt frames in both directions at the agent's NIC (after the first ARP
/// exchange: ARP has no checksum, and a real NIC's CRC drops corrupted frames anyway; IP
/// and TCP checksums catch what the injector corrupts).
fn lossy(rig: &mut Rig, drop_pct: u8, corrupt_pct: u8) {
    rig.step(1_000);
    let _ = rig.connect(IMDS_ADDRESS);
    rig.server.set_drop_chance(drop_pct);
    rig.server.set_corrupt_chance(corrupt_pct);
}

#[test]
fn token_requests_complete_over_a_lossy_corrupting_link() {
    let mut rig = Rig::new();
    lossy(&mut rig, 15, 10);
    for i in 0..10 {
        let answer = rig.token(MGMT, 60);
        assert_eq!(status(&answer), "200", "request {i}: {answer}");
        assert!(answer.contains("\"access_token\":\"ey"), "{answer}");
    }
}

#[test]
fn brokered_token_completes_over_a_lossy_corrupting_link() {
    let mut rig = Rig::broker(Some("10.0.2.100:443"), "");
    lossy(&mut rig, 10, 5);
    let answer = rig.token(MGMT, 60);
    assert_eq!(status(&answer), "200", "{answer}\nlog:\n{}", rig.log);
    assert!(answer.contains("fake-token-"), "{answer}");
    let answer = rig.token("https://vault.azure.net", 60);
    assert_eq!(status(&answer), "200", "{answer}\nlog:\n{}", rig.log);
}

/// Instance metadata larger than the connection's and the socket's send buffers leaves in
/// chunks; the connection serves the next request after it.
#[test]
fn large_instance_metadata_then_a_text_leaf_on_the_same_connection() {
    let instance = std::format!(
        r#"{{"compute":{{"vmId":"v1","userData":"{}"}},"network":{{"interface":[]}}}}"#,
        "A".repeat(40_000)
    );
    let config = doc(&std::format!("{STATIC_NET}\"instance\":@,"), SYS).replace('@', &instance);
    let mut rig = Rig::with_config(&config);
    let h = rig.connect(IMDS_ADDRESS);
    let answer = rig.exchange(
        h,
        "GET /metadata/instance?api-version=2025-04-07 HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{}", &answer[..200]);
    assert!(answer.contains("Content-Type: application/json; charset=utf-8\r\n"));
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(body, instance);
    let answer = rig.exchange(
        h,
        "GET /metadata/instance/compute/vmId?api-version=2025-04-07&format=text HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Content-Type: text/plain; charset=utf-8\r\n"));
    assert!(answer.ends_with("\r\n\r\nv1"), "{answer}");
}
