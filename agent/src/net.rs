//! The network loop of the unikernel: smoltcp over any [`smoltcp::phy::Device`], the agent's
//! HTTP connections on port 80.
//!
//! Data flow of one poll: the NIC's frames go through smoltcp (`Interface::poll`); DHCP events
//! set the interface address; each established TCP socket's bytes are copied into its
//! [`Connection`] (sans-IO HTTP + router), and the connection's answer is copied back into the
//! socket; a second `Interface::poll` sends it out.
//!
//! * Addresses: the one from DHCP (default) or from the config's `network` field, **and**
//!   `169.254.169.254/32`, so that clients on the link reach the agent at the IMDS address.
//! * Sockets: smoltcp has no listen backlog, so concurrency is [`LISTEN_SOCKETS`] listening
//!   sockets on port 80; each is listening again as soon as its connection ends (our FIN
//!   acknowledged). When fewer than [`SPARE_LISTENERS`] are free, the longest-idle keep-alive
//!   connection is closed to make room.
//! * Timeouts: a connection idle for [`crate::limits::IDLE_TIMEOUT_US`] (or whose request head
//!   does not complete in time) is reset; a closing socket gets [`CLOSE_LINGER_US`].
//! * Slirp (QEMU user networking) drops the first SYN towards a guest whose MAC it has not
//!   seen, so one ARP request for the gateway is sent as soon as the address is known.
//!
//! Memory is fixed: [`NetMemory`] holds every socket buffer and connection; nothing allocates.

use core::fmt::Write;
use core::net::{IpAddr, Ipv4Addr};

use imds_hal::{Clock, Entropy};
use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet, SocketStorage,
};
use smoltcp::phy::{Device, TxToken};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr,
};

use crate::config::NetworkConfig;
use crate::limits::LISTEN_SOCKETS;
use crate::server::{Agent, Connection, Listener};

/// The TCP port the agent answers on.
pub const HTTP_PORT: u16 = 80;
/// The IMDS address, answered on next to the interface's own address.
pub const IMDS_ADDRESS: Ipv4Address = Ipv4Address::new(169, 254, 169, 254);
/// Receive buffer of one TCP socket (the advertised window). A request larger than this
/// arrives in several polls.
pub const TCP_RX_BUF: usize = 2048;
/// Send buffer of one TCP socket. A response larger than this leaves in several polls.
pub const TCP_TX_BUF: usize = 4096;
/// A socket we closed gets this long to finish the FIN exchange before it is reset.
pub const CLOSE_LINGER_US: u64 = 5_000_000;
/// When fewer sockets than this are listening, the longest-idle keep-alive connection is
/// closed, so that a new client finds a listener (smoltcp answers a SYN nobody listens for with
/// a reset).
pub const SPARE_LISTENERS: usize = 2;

/// Every buffer of the network loop. About 300 KiB: put it in a `static` or on a big stack.
///
/// The fields are public so that bare-metal code can initialise it in place (a `static` in
/// `.bss`, each connection written with [`Connection::new`]) instead of building it on the
/// stack; on the host, `Box::new(NetMemory::new())`.
pub struct NetMemory<'a> {
    /// smoltcp's socket table: the DHCP socket and the listening sockets.
    pub sockets: [SocketStorage<'a>; LISTEN_SOCKETS + 1],
    pub tcp_rx: [[u8; TCP_RX_BUF]; LISTEN_SOCKETS],
    pub tcp_tx: [[u8; TCP_TX_BUF]; LISTEN_SOCKETS],
    pub conns: [Connection; LISTEN_SOCKETS],
}

impl NetMemory<'_> {
    pub const fn new() -> Self {
        NetMemory {
            sockets: [const { SocketStorage::EMPTY }; LISTEN_SOCKETS + 1],
            tcp_rx: [[0; TCP_RX_BUF]; LISTEN_SOCKETS],
            tcp_tx: [[0; TCP_TX_BUF]; LISTEN_SOCKETS],
            conns: [const { Connection::new() }; LISTEN_SOCKETS],
        }
    }
}

impl Default for NetMemory<'_> {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// The socket listens (or is in the middle of a handshake).
    Listening,
    /// A connection is established and owns the slot's [`Connection`].
    Active { peer_closed: bool },
    /// We closed (or reset) the socket; it is re-armed once smoltcp is done with it.
    Closing { since_us: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    handle: SocketHandle,
    state: SlotState,
}

/// What one [`Net::poll`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollStatus {
    /// Frames came in or went out: more may follow, poll again at once.
    pub busy: bool,
    /// When smoltcp next needs a poll for its own timers (retransmission, DHCP renewal), if
    /// ever. A caller that sleeps must also wake for incoming frames (or poll regularly).
    pub next_in: Option<Duration>,
}

/// The interface, its sockets and the connections.
pub struct Net<'a> {
    iface: Interface,
    sockets: SocketSet<'a>,
    dhcp: Option<SocketHandle>,
    slots: [Slot; LISTEN_SOCKETS],
    conns: &'a mut [Connection; LISTEN_SOCKETS],
    mac: EthernetAddress,
    address: Option<Ipv4Cidr>,
    gateway: Option<Ipv4Address>,
    /// An ARP request for the gateway is due.
    arp_due: bool,
}

fn instant(us: u64) -> Instant {
    Instant::from_micros(i64::try_from(us).unwrap_or(i64::MAX))
}

impl<'a> Net<'a> {
    /// Set up the interface on `device` (MAC `mac`), with the static address of `network` or
    /// DHCP, and [`LISTEN_SOCKETS`] sockets listening on port [`HTTP_PORT`].
    pub fn new<D: Device, C: Clock, E: Entropy, W: Write>(
        device: &mut D,
        mac: [u8; 6],
        network: Option<&NetworkConfig>,
        mem: &'a mut NetMemory<'a>,
        clock: &C,
        entropy: &mut E,
        log: &mut W,
    ) -> Net<'a> {
        let mac = EthernetAddress(mac);
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(mac));
        let mut seed = [0u8; 8];
        // The seed only randomises TCP initial sequence numbers and ephemeral ports.
        config.random_seed = match entropy.fill(&mut seed) {
            Ok(()) => u64::from_le_bytes(seed),
            Err(_) => clock.monotonic_us(),
        };
        let iface = Interface::new(config, device, instant(clock.monotonic_us()));

        let NetMemory {
            sockets,
            tcp_rx,
            tcp_tx,
            conns,
        } = mem;
        let mut sockets = SocketSet::new(&mut sockets[..]);
        let dhcp = match network {
            Some(_) => None,
            None => Some(sockets.add(dhcpv4::Socket::new())),
        };
        let mut rx = tcp_rx.iter_mut();
        let mut tx = tcp_tx.iter_mut();
        let slots = core::array::from_fn(|_| {
            let (Some(rx), Some(tx)) = (rx.next(), tx.next()) else {
                unreachable!("one buffer pair per slot")
            };
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(&mut rx[..]),
                tcp::SocketBuffer::new(&mut tx[..]),
            );
            // No smoltcp timeout: it counts from the peer's last packet even on a quiet
            // connection; the idle timeout of `Connection` covers dead peers.
            socket.set_nagle_enabled(false);
            let _ = socket.listen(HTTP_PORT);
            Slot {
                handle: sockets.add(socket),
                state: SlotState::Listening,
            }
        });

        let mut net = Net {
            iface,
            sockets,
            dhcp,
            slots,
            conns,
            mac,
            address: None,
            gateway: None,
            arp_due: false,
        };
        match network {
            Some(n) => {
                let cidr = Ipv4Cidr::new(n.address, n.prefix_len);
                net.set_address(Some(cidr), n.gateway);
                let _ = write!(log, "imds-agent: net: address {cidr} (static)");
            }
            None => {
                net.set_address(None, None);
                let _ = write!(log, "imds-agent: net: waiting for DHCP");
            }
        }
        let _ = writeln!(
            log,
            ", also answering on {IMDS_ADDRESS}, {LISTEN_SOCKETS} sockets on port {HTTP_PORT}"
        );
        net
    }

    /// The interface address (without the IMDS one), once known.
    pub fn address(&self) -> Option<Ipv4Cidr> {
        self.address
    }

    /// The default gateway, if any.
    pub fn gateway(&self) -> Option<Ipv4Address> {
        self.gateway
    }

    fn set_address(&mut self, address: Option<Ipv4Cidr>, gateway: Option<Ipv4Address>) {
        self.address = address;
        self.gateway = gateway;
        self.iface.update_ip_addrs(|addrs| {
            addrs.clear();
            if let Some(a) = address {
                let _ = addrs.push(IpCidr::Ipv4(a));
            }
            let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(IMDS_ADDRESS, 32)));
        });
        let routes = self.iface.routes_mut();
        routes.remove_default_ipv4_route();
        if let Some(gw) = gateway {
            let _ = routes.add_default_ipv4_route(gw);
        }
        self.arp_due = address.is_some() && gateway.is_some();
    }

    /// One round: receive, run DHCP, serve every connection, send.
    pub fn poll<D: Device, C: Clock, E: Entropy, W: Write>(
        &mut self,
        device: &mut D,
        agent: &mut Agent,
        clock: &C,
        entropy: &mut E,
        log: &mut W,
    ) -> PollStatus {
        let now = instant(clock.monotonic_us());
        let received = self.iface.poll(now, device, &mut self.sockets);
        self.poll_dhcp(clock, log);
        if let Some(a) = self.address {
            // The agent's own subnet may ask for tokens (unless `allow` is configured).
            agent.guard_mut().add_own_subnet(crate::guard::Cidr::new(
                IpAddr::V4(a.address()),
                a.prefix_len(),
            ));
        }
        if self.arp_due {
            self.arp_due = false;
            if let (Some(a), Some(gw)) = (self.address, self.gateway) {
                send_arp_request(device, now, self.mac, a.address(), gw);
            }
        }
        self.serve(agent, clock, entropy, log);
        let now = instant(clock.monotonic_us());
        let sent = self.iface.poll(now, device, &mut self.sockets);
        PollStatus {
            busy: received == PollResult::SocketStateChanged
                || sent == PollResult::SocketStateChanged,
            next_in: self.iface.poll_delay(now, &self.sockets),
        }
    }

    fn poll_dhcp<C: Clock, W: Write>(&mut self, clock: &C, log: &mut W) {
        let Some(handle) = self.dhcp else { return };
        let event = self.sockets.get_mut::<dhcpv4::Socket>(handle).poll();
        match event {
            Some(dhcpv4::Event::Configured(c)) => {
                let (address, router) = (c.address, c.router);
                self.set_address(Some(address), router);
                let _ = write!(log, "imds-agent: net: DHCP address {address}");
                if let Some(gw) = router {
                    let _ = write!(log, ", gateway {gw}");
                }
                let _ = writeln!(log, " ({} ms since boot)", clock.monotonic_us() / 1000);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                if self.address.is_some() {
                    let _ = writeln!(log, "imds-agent: net: DHCP lease lost");
                }
                self.set_address(None, None);
            }
            None => {}
        }
    }

    fn serve<C: Clock, E: Entropy, W: Write>(
        &mut self,
        agent: &mut Agent,
        clock: &C,
        entropy: &mut E,
        log: &mut W,
    ) {
        let mut listening = 0;
        for (slot, conn) in self.slots.iter_mut().zip(self.conns.iter_mut()) {
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            serve_slot(slot, socket, conn, agent, clock, entropy, log);
            if slot.state == SlotState::Listening && socket.state() == tcp::State::Listen {
                listening += 1;
            }
        }
        if listening < SPARE_LISTENERS {
            self.make_room(clock.monotonic_us());
        }
    }

    /// (Almost) every socket is busy: close the keep-alive connection idle the longest, so that
    /// a new client is not refused while an old one merely holds its connection open.
    fn make_room(&mut self, now_us: u64) {
        let victim = self
            .slots
            .iter()
            .zip(self.conns.iter())
            .enumerate()
            .filter(|(_, (s, c))| matches!(s.state, SlotState::Active { .. }) && c.is_idle())
            .min_by_key(|(_, (_, c))| c.last_activity_us())
            .map(|(i, _)| i);
        if let Some(i) = victim {
            let slot = &mut self.slots[i];
            self.sockets.get_mut::<tcp::Socket>(slot.handle).close();
            slot.state = SlotState::Closing { since_us: now_us };
        }
    }
}

/// Move one slot along: accept, shuttle bytes, close, re-arm.
fn serve_slot<C: Clock, E: Entropy, W: Write>(
    slot: &mut Slot,
    socket: &mut tcp::Socket<'_>,
    conn: &mut Connection,
    agent: &mut Agent,
    clock: &C,
    entropy: &mut E,
    log: &mut W,
) {
    let now_us = clock.monotonic_us();
    if slot.state == SlotState::Listening {
        match socket.state() {
            tcp::State::Listen | tcp::State::SynReceived => return,
            tcp::State::Established | tcp::State::CloseWait => {
                let peer = socket
                    .remote_endpoint()
                    .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |e| e.addr.into());
                conn.reset(Listener::Imds, peer, now_us);
                slot.state = SlotState::Active { peer_closed: false };
            }
            // Reset during the handshake, or any state a listening socket should not reach.
            _ => {
                rearm(slot, socket);
                return;
            }
        }
    }

    if let SlotState::Closing { since_us } = slot.state {
        // Discard whatever the peer still sends; the answer is out.
        let _ = socket.recv(|b| (b.len(), ()));
        // FIN-WAIT-2: the peer has acknowledged everything including our FIN, so it has the
        // whole answer; waiting for its FIN would only keep the slot from listening.
        if !socket.is_open() || socket.state() == tcp::State::FinWait2 {
            rearm(slot, socket);
        } else if now_us.saturating_sub(since_us) > CLOSE_LINGER_US {
            socket.abort();
        }
        return;
    }

    let SlotState::Active { mut peer_closed } = slot.state else {
        return;
    };
    loop {
        let mut progress = false;
        while socket.can_recv() {
            let space = conn.rx_space();
            if space.is_empty() {
                break;
            }
            match socket.recv_slice(space) {
                Ok(n) if n > 0 => {
                    conn.rx_commit(n, now_us);
                    progress = true;
                }
                _ => break,
            }
        }
        if !peer_closed && !socket.may_recv() {
            peer_closed = true;
            conn.rx_closed();
        }
        conn.process(agent, clock, entropy, log);
        let pending = conn.tx_pending();
        if !pending.is_empty() && socket.can_send() {
            if let Ok(n) = socket.send_slice(pending) {
                if n > 0 {
                    conn.tx_consume(n);
                    progress = true;
                }
            }
        }
        if !progress {
            break;
        }
    }
    slot.state = SlotState::Active { peer_closed };

    if !socket.is_active() {
        // Reset by the peer, or smoltcp gave up retransmitting.
        rearm(slot, socket);
    } else if conn.wants_close() {
        socket.close();
        slot.state = SlotState::Closing { since_us: now_us };
    } else if conn.timed_out(now_us) {
        socket.abort();
        slot.state = SlotState::Closing { since_us: now_us };
    }
}

fn rearm(slot: &mut Slot, socket: &mut tcp::Socket<'_>) {
    if socket.is_open() {
        socket.abort();
    }
    let _ = socket.listen(HTTP_PORT);
    slot.state = SlotState::Listening;
}

/// Broadcast "who has `target`? tell `source`" straight through the device.
fn send_arp_request<D: Device>(
    device: &mut D,
    now: Instant,
    mac: EthernetAddress,
    source: Ipv4Address,
    target: Ipv4Address,
) {
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: source,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    let Some(token) = device.transmit(now) else {
        return;
    };
    token.consume(
        EthernetFrame::<&[u8]>::buffer_len(arp.buffer_len()),
        |buf| {
            let mut frame = EthernetFrame::new_unchecked(buf);
            frame.set_dst_addr(EthernetAddress::BROADCAST);
            frame.set_src_addr(mac);
            frame.set_ethertype(EthernetProtocol::Arp);
            arp.emit(&mut ArpPacket::new_unchecked(frame.payload_mut()));
        },
    );
}

#[cfg(test)]
mod tests {
    //! The loop against a smoltcp client on a second interface, wired by two frame queues.

    use super::*;
    use crate::config::tests::{doc, SYS};
    use crate::config::Config;
    use crate::limits::IDLE_TIMEOUT_US;
    use imds_hal::EntropyError;
    use smoltcp::phy::{DeviceCapabilities, Medium, RxToken};
    use smoltcp::wire::{EthernetFrame, IpAddress};
    use std::boxed::Box;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;
    use std::string::String;
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

    /// The agent's side and a smoltcp client on the same link.
    struct Rig {
        net: Net<'static>,
        server: Wire,
        agent: Box<Agent>,
        clock: TestClock,
        entropy: CountingEntropy,
        log: String,
        client: Interface,
        client_dev: Wire,
        client_sockets: SocketSet<'static>,
        next_port: u16,
    }

    impl Rig {
        fn new() -> Rig {
            let config = Config::parse(
                doc(
                    r#""network":{"address":"10.0.2.15/24","gateway":"10.0.2.2"},"#,
                    SYS,
                )
                .as_bytes(),
            )
            .unwrap();
            let network = config.network.unwrap();
            let (mut server, mut client_dev) = cable();
            let clock = TestClock(Cell::new(1_000_000));
            let mut entropy = CountingEntropy(0);
            let mut log = String::new();
            let memory = Box::leak(Box::new(NetMemory::new()));
            let net = Net::new(
                &mut server,
                SERVER_MAC,
                Some(&network),
                memory,
                &clock,
                &mut entropy,
                &mut log,
            );
            let agent = Box::new(Agent::new(config));
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
            let storage = Box::leak(Box::new([const { SocketStorage::EMPTY }; 40]));
            Rig {
                net,
                server,
                agent,
                clock,
                entropy,
                log,
                client,
                client_dev,
                client_sockets: SocketSet::new(&mut storage[..]),
                next_port: 49_152,
            }
        }

        /// Advance time by `us` and let both sides run.
        fn step(&mut self, us: u64) {
            self.clock.0.set(self.clock.0.get() + us);
            for _ in 0..4 {
                self.net.poll(
                    &mut self.server,
                    &mut self.agent,
                    &self.clock,
                    &mut self.entropy,
                    &mut self.log,
                );
                let now = Instant::from_micros(self.clock.0.get() as i64);
                if self
                    .client
                    .poll(now, &mut self.client_dev, &mut self.client_sockets)
                    == PollResult::None
                    && self.server.rx.borrow().is_empty()
                {
                    break;
                }
            }
        }

        fn connect(&mut self, to: Ipv4Address) -> SocketHandle {
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
            for _ in 0..50 {
                self.step(1_000);
                if self.socket(handle).state() == tcp::State::Established {
                    return handle;
                }
            }
            panic!("no connection: {:?}", self.socket(handle).state());
        }

        fn socket(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
            self.client_sockets.get_mut::<tcp::Socket>(h)
        }

        /// Send `request`, read until a whole response (head + Content-Length body) is in.
        fn exchange(&mut self, h: SocketHandle, request: &str) -> String {
            self.socket(h).send_slice(request.as_bytes()).unwrap();
            let mut got = Vec::new();
            for _ in 0..200 {
                self.step(1_000);
                let s = self.socket(h);
                while s.can_recv() {
                    s.recv(|b| {
                        got.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some(head_end) = text.find("\r\n\r\n") {
                    let len = text[..head_end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= head_end + 4 + len {
                        return text;
                    }
                }
            }
            panic!(
                "no complete response; got {:?}",
                String::from_utf8_lossy(&got)
            );
        }
    }

    #[test]
    fn arp_request_for_the_gateway_at_start() {
        let mut rig = Rig::new();
        rig.net.poll(
            &mut rig.server,
            &mut rig.agent,
            &rig.clock,
            &mut rig.entropy,
            &mut rig.log,
        );
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
}
