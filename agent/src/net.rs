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
//!   acknowledged). When fewer than [`SPARE_LISTENERS`] are free, the connection that has
//!   waited longest without a complete request (idle keep-alive, or a slow request head) is
//!   closed to make room.
//! * Timeouts: a connection idle for [`crate::limits::IDLE_TIMEOUT_US`] (or whose request head
//!   does not complete in time) is reset; a closing socket gets [`CLOSE_LINGER_US`].
//! * Slirp (QEMU user networking) drops the first SYN towards a guest whose MAC it has not
//!   seen, so one ARP request for the gateway is sent as soon as the address is known.
//! * Broker mode: [`BROKER_TASKS`] outgoing TCP sockets, one per [`Pipe`] of a broker task
//!   ([`crate::broker::task`]). [`Net::poll_upstream`] serves them the way the host daemon
//!   serves its upstream sockets: a connect request is connected (to `Target::address`, an
//!   IPv4 literal host, or the host resolved by smoltcp's DNS socket with the servers DHCP
//!   announced — a static `network` config has none, so there the authority needs an
//!   `address`), bytes are moved both ways, a FIN is the pipe's end of input, a reset or a
//!   refused connection fails the pipe, and a close request closes the socket. Timeouts are
//!   the task's. Drivers that never call `poll_upstream` (the issuer image) leave the sockets
//!   closed.
//!
//! Memory is fixed: [`NetMemory`] holds every socket buffer and connection; nothing allocates.

use core::fmt::Write;
use core::net::{IpAddr, Ipv4Addr};

use imds_hal::{Clock, Entropy};
use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet, SocketStorage,
};
use smoltcp::phy::{Device, TxToken};
#[cfg(feature = "dns")]
use smoltcp::socket::dns;
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv4Cidr,
};

use crate::broker::pipe::{Pipe, PipeState, Target};
use crate::config::NetworkConfig;
use crate::limits::{BROKER_TASKS, LISTEN_SOCKETS};
use crate::server::{Agent, Connection, Listener};

/// The TCP port the agent answers on.
pub const HTTP_PORT: u16 = 80;
/// The start of the one line the agent prints when it starts serving on an address:
/// `imds-agent: ready: http://A.B.C.D:80 http://169.254.169.254:80`. Printed once the listening
/// sockets answer on that address (static, or each DHCP lease with a new address), after the
/// gateway was asked for its MAC. Harnesses wait for it before they connect (documented in the
/// READMEs): a connection sent earlier reaches a guest without an address and costs a SYN
/// retransmission (about a second).
pub const READY_PREFIX: &str = "imds-agent: ready: ";
/// The IMDS address, answered on next to the interface's own address.
pub const IMDS_ADDRESS: Ipv4Address = Ipv4Address::new(169, 254, 169, 254);
/// Receive buffer of one TCP socket (the advertised window). A request larger than this
/// arrives in several polls.
pub const TCP_RX_BUF: usize = 2048;
/// Send buffer of one TCP socket. A response larger than this leaves in several polls.
pub const TCP_TX_BUF: usize = 4096;
/// A socket we closed gets this long to finish the FIN exchange before it is reset.
pub const CLOSE_LINGER_US: u64 = 5_000_000;
/// A socket closed less than this long ago counts as a spare listener when deciding whether
/// to close a connection to make room (its peer's acknowledgement is on the way).
pub const CLOSING_SOON_US: u64 = 100_000;
/// When fewer sockets than this are spare (listening, or closed a moment ago), a waiting
/// connection is closed ([`Connection::eviction_key`]), so that a new client finds a listener
/// (smoltcp answers a SYN nobody listens for with a reset).
pub const SPARE_LISTENERS: usize = 2;
/// Receive buffer of one upstream (authority) socket: the window the authority may fill
/// before the TLS session has read it. One TLS record is up to 16 KiB; a token answer is a
/// few KiB.
pub const UPSTREAM_TCP_RX_BUF: usize = 8192;
/// Send buffer of one upstream socket (the TLS handshake's first flight and the token request
/// fit in it).
pub const UPSTREAM_TCP_TX_BUF: usize = 4096;
/// Local ports of upstream connections (the IANA dynamic range).
pub const EPHEMERAL_PORT_FIRST: u16 = 49_152;
/// How many ephemeral ports there are.
const PORT_SPAN: u16 = u16::MAX - EPHEMERAL_PORT_FIRST + 1;
/// smoltcp socket slots: the listeners, the upstream sockets, DHCP and DNS.
pub const NET_SOCKETS: usize = LISTEN_SOCKETS + BROKER_TASKS + 2;

/// Every buffer of the network loop. About 300 KiB: put it in a `static` or on a big stack.
///
/// The fields are public so that bare-metal code can initialise it in place (a `static` in
/// `.bss`, each connection written with [`Connection::new`]) instead of building it on the
/// stack; on the host, `Box::new(NetMemory::new())`.
pub struct NetMemory<'a> {
    /// smoltcp's socket table: the listening sockets, the upstream sockets, DHCP, DNS.
    pub sockets: [SocketStorage<'a>; NET_SOCKETS],
    pub tcp_rx: [[u8; TCP_RX_BUF]; LISTEN_SOCKETS],
    pub tcp_tx: [[u8; TCP_TX_BUF]; LISTEN_SOCKETS],
    pub conns: [Connection; LISTEN_SOCKETS],
    /// Buffers of the upstream (broker) sockets.
    pub upstream_rx: [[u8; UPSTREAM_TCP_RX_BUF]; BROKER_TASKS],
    pub upstream_tx: [[u8; UPSTREAM_TCP_TX_BUF]; BROKER_TASKS],
    /// Query slots of the DNS socket (one per upstream socket).
    #[cfg(feature = "dns")]
    pub dns_queries: [Option<dns::DnsQuery>; BROKER_TASKS],
}

impl NetMemory<'_> {
    pub const fn new() -> Self {
        NetMemory {
            sockets: [const { SocketStorage::EMPTY }; NET_SOCKETS],
            tcp_rx: [[0; TCP_RX_BUF]; LISTEN_SOCKETS],
            tcp_tx: [[0; TCP_TX_BUF]; LISTEN_SOCKETS],
            conns: [const { Connection::new() }; LISTEN_SOCKETS],
            upstream_rx: [[0; UPSTREAM_TCP_RX_BUF]; BROKER_TASKS],
            upstream_tx: [[0; UPSTREAM_TCP_TX_BUF]; BROKER_TASKS],
            #[cfg(feature = "dns")]
            dns_queries: [const { None }; BROKER_TASKS],
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

impl Slot {
    /// Whether the slot can take a new connection now or in a moment: listening, or closed
    /// less than [`CLOSING_SOON_US`] ago (listening again once the peer acknowledges).
    fn is_spare(&self, socket: tcp::State, now_us: u64) -> bool {
        match self.state {
            SlotState::Listening => socket == tcp::State::Listen,
            SlotState::Closing { since_us } => now_us.saturating_sub(since_us) < CLOSING_SOON_US,
            SlotState::Active { .. } => false,
        }
    }
}

/// Where an upstream socket is in serving its pipe.
#[derive(Clone, Copy)]
enum UpstreamState {
    /// No connection (the socket may still be finishing a FIN exchange).
    Idle,
    /// Waiting for the DNS answer for the target host.
    #[cfg(feature = "dns")]
    Resolving { query: dns::QueryHandle, port: u16 },
    /// SYN sent.
    Connecting,
    /// Bytes flow; `eof`: the peer's FIN was passed on to the pipe.
    Open { eof: bool },
}

#[derive(Clone, Copy)]
struct UpstreamSlot {
    handle: SocketHandle,
    state: UpstreamState,
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
    upstream: [UpstreamSlot; BROKER_TASKS],
    #[cfg(feature = "dns")]
    dns: SocketHandle,
    /// DNS servers (from DHCP, or [`Net::set_dns_servers`]).
    dns_servers: heapless::Vec<Ipv4Address, 3>,
    /// The next local port of an upstream connection.
    next_port: u16,
    mac: EthernetAddress,
    address: Option<Ipv4Cidr>,
    gateway: Option<Ipv4Address>,
    /// An ARP request for the gateway is due.
    arp_due: bool,
    /// The ready line ([`READY_PREFIX`]) is due: an address was just set.
    ready_due: bool,
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
            upstream_rx,
            upstream_tx,
            #[cfg(feature = "dns")]
            dns_queries,
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

        let mut rx = upstream_rx.iter_mut();
        let mut tx = upstream_tx.iter_mut();
        let upstream = core::array::from_fn(|_| {
            let (Some(rx), Some(tx)) = (rx.next(), tx.next()) else {
                unreachable!("one buffer pair per upstream slot")
            };
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(&mut rx[..]),
                tcp::SocketBuffer::new(&mut tx[..]),
            );
            socket.set_nagle_enabled(false);
            UpstreamSlot {
                handle: sockets.add(socket),
                state: UpstreamState::Idle,
            }
        });
        #[cfg(feature = "dns")]
        let dns = sockets.add(dns::Socket::new(&[], &mut dns_queries[..]));
        let next_port = EPHEMERAL_PORT_FIRST + (u16::from_le_bytes([seed[0], seed[1]]) % PORT_SPAN);

        let mut net = Net {
            iface,
            sockets,
            dhcp,
            slots,
            conns,
            upstream,
            #[cfg(feature = "dns")]
            dns,
            dns_servers: heapless::Vec::new(),
            next_port,
            mac,
            address: None,
            gateway: None,
            arp_due: false,
            ready_due: false,
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

    /// The DNS servers upstream host names are resolved with (DHCP sets them; with a static
    /// `network` config there are none unless the driver sets some).
    pub fn dns_servers(&self) -> &[Ipv4Address] {
        &self.dns_servers
    }

    /// Replace the DNS servers (at most three are kept).
    pub fn set_dns_servers(&mut self, servers: &[Ipv4Address]) {
        self.dns_servers.clear();
        for s in servers.iter().take(self.dns_servers.capacity()) {
            let _ = self.dns_servers.push(*s);
        }
        #[cfg(feature = "dns")]
        {
            let mut list: heapless::Vec<IpAddress, 3> = heapless::Vec::new();
            for s in &self.dns_servers {
                let _ = list.push(IpAddress::Ipv4(*s));
            }
            self.sockets
                .get_mut::<dns::Socket>(self.dns)
                .update_servers(&list);
        }
    }

    /// Whether a connection waits for an upstream fetch (the driver keeps polling then).
    pub fn has_parked(&self) -> bool {
        self.slots
            .iter()
            .zip(self.conns.iter())
            .any(|(s, c)| matches!(s.state, SlotState::Active { .. }) && c.is_parked())
    }

    /// Serve the broker tasks' pipes (`pipes[i]` by upstream socket `i`; at most
    /// [`BROKER_TASKS`]): connect on request, move bytes, report the peer's FIN or a broken
    /// connection, close on request. Call it after [`Net::poll`] and after polling the tasks;
    /// what it queues leaves on the next `poll`. Returns whether anything happened.
    pub fn poll_upstream<W: Write>(&mut self, pipes: &[Pipe], log: &mut W) -> bool {
        let mut progress = false;
        for (i, pipe) in pipes.iter().enumerate().take(BROKER_TASKS) {
            progress |= self.serve_upstream(i, pipe, log);
        }
        progress
    }

    fn serve_upstream<W: Write>(&mut self, i: usize, pipe: &Pipe, log: &mut W) -> bool {
        let handle = self.upstream[i].handle;
        if pipe.wants_close() {
            let mut progress = false;
            if !matches!(self.upstream[i].state, UpstreamState::Idle) {
                #[cfg(feature = "dns")]
                if let UpstreamState::Resolving { query, .. } = self.upstream[i].state {
                    self.sockets
                        .get_mut::<dns::Socket>(self.dns)
                        .cancel_query(query);
                }
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                match socket.state() {
                    // Say goodbye properly; the FIN exchange finishes in the background.
                    tcp::State::Established | tcp::State::CloseWait => socket.close(),
                    _ => socket.abort(),
                }
                self.upstream[i].state = UpstreamState::Idle;
                progress = true;
            }
            if pipe.state() == PipeState::CloseRequested {
                pipe.set_closed();
                progress = true;
            }
            return progress;
        }

        let mut progress = false;
        if let Some(target) = pipe.take_connect_request() {
            progress = true;
            self.start_upstream(i, pipe, &target, log);
        }

        #[cfg(feature = "dns")]
        if let UpstreamState::Resolving { query, port } = self.upstream[i].state {
            let dns = self.sockets.get_mut::<dns::Socket>(self.dns);
            match dns.get_query_result(query) {
                Err(dns::GetQueryResultError::Pending) => {}
                Ok(addrs) => {
                    progress = true;
                    let v4 = addrs.iter().find_map(|a| match a {
                        IpAddress::Ipv4(v4) => Some(*v4),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    });
                    match v4 {
                        Some(ip) => self.connect_upstream(i, pipe, ip, port, log),
                        None => {
                            let _ = writeln!(log, "imds-agent: upstream: DNS: no IPv4 address");
                            self.upstream[i].state = UpstreamState::Idle;
                            pipe.set_failed();
                        }
                    }
                }
                Err(dns::GetQueryResultError::Failed) => {
                    progress = true;
                    let _ = writeln!(
                        log,
                        "imds-agent: upstream: DNS: the name was not resolved{}",
                        if self.dns_servers.is_empty() {
                            " (no DNS server: a static network config needs authority.address)"
                        } else {
                            ""
                        }
                    );
                    self.upstream[i].state = UpstreamState::Idle;
                    pipe.set_failed();
                }
            }
        }

        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        match self.upstream[i].state {
            UpstreamState::Connecting => match socket.state() {
                tcp::State::Established | tcp::State::CloseWait => {
                    self.upstream[i].state = UpstreamState::Open { eof: false };
                    pipe.set_open();
                    progress = true;
                }
                // Refused (RST) or given up.
                tcp::State::Closed => {
                    self.upstream[i].state = UpstreamState::Idle;
                    pipe.set_failed();
                    progress = true;
                }
                _ => {}
            },
            UpstreamState::Open { eof } => {
                // Socket ← pipe.
                if pipe.has_tx() && socket.can_send() {
                    if let Ok(n) = socket.send(|buf| {
                        let n = pipe.peek_tx(buf);
                        (n, n)
                    }) {
                        pipe.consume_tx(n);
                        progress |= n > 0;
                    }
                }
                // Socket → pipe.
                while socket.can_recv() && pipe.rx_room() > 0 {
                    match socket.recv(|buf| {
                        let n = pipe.push_rx(buf);
                        (n, n)
                    }) {
                        Ok(n) if n > 0 => progress = true,
                        _ => break,
                    }
                }
                if socket.state() == tcp::State::Closed {
                    // Reset by the peer, or retransmissions given up: what is unread is lost.
                    self.upstream[i].state = UpstreamState::Idle;
                    pipe.set_failed();
                    progress = true;
                } else if !eof && !socket.may_recv() {
                    // The peer's FIN, and everything before it is in the pipe.
                    self.upstream[i].state = UpstreamState::Open { eof: true };
                    pipe.set_rx_eof();
                    progress = true;
                }
            }
            _ => {}
        }
        progress
    }

    /// A connect request: the address, an IPv4 literal, or a DNS query for the host.
    fn start_upstream<W: Write>(&mut self, i: usize, pipe: &Pipe, target: &Target, log: &mut W) {
        let socket = self.sockets.get_mut::<tcp::Socket>(self.upstream[i].handle);
        if socket.is_open() {
            // The previous connection is still saying goodbye: cut it short.
            socket.abort();
        }
        self.upstream[i].state = UpstreamState::Idle;
        let ip = match target.address {
            Some(core::net::SocketAddr::V4(a)) => {
                return self.connect_upstream(i, pipe, *a.ip(), a.port(), log);
            }
            Some(core::net::SocketAddr::V6(a)) => {
                let _ = writeln!(
                    log,
                    "imds-agent: upstream: {a}: IPv6 is not supported by the network loop"
                );
                pipe.set_failed();
                return;
            }
            None => target.host.parse::<Ipv4Addr>().ok(),
        };
        if let Some(ip) = ip {
            return self.connect_upstream(i, pipe, ip, target.port, log);
        }
        #[cfg(feature = "dns")]
        {
            let cx = self.iface.context();
            let dns = self.sockets.get_mut::<dns::Socket>(self.dns);
            match dns.start_query(cx, &target.host, smoltcp::wire::DnsQueryType::A) {
                Ok(query) => {
                    self.upstream[i].state = UpstreamState::Resolving {
                        query,
                        port: target.port,
                    };
                }
                Err(e) => {
                    let _ = writeln!(
                        log,
                        "imds-agent: upstream: DNS: cannot ask for {}: {e}",
                        target.host
                    );
                    pipe.set_failed();
                }
            }
        }
        #[cfg(not(feature = "dns"))]
        {
            let _ = writeln!(
                log,
                "imds-agent: upstream: {}: this build has no DNS: configure authority.address",
                target.host
            );
            pipe.set_failed();
        }
    }

    fn connect_upstream<W: Write>(
        &mut self,
        i: usize,
        pipe: &Pipe,
        ip: Ipv4Address,
        port: u16,
        log: &mut W,
    ) {
        let local_port = self.next_port;
        self.next_port = if self.next_port == u16::MAX {
            EPHEMERAL_PORT_FIRST
        } else {
            self.next_port + 1
        };
        let cx = self.iface.context();
        let socket = self.sockets.get_mut::<tcp::Socket>(self.upstream[i].handle);
        match socket.connect(cx, (IpAddress::Ipv4(ip), port), local_port) {
            Ok(()) => self.upstream[i].state = UpstreamState::Connecting,
            Err(e) => {
                let _ = writeln!(log, "imds-agent: upstream: connect {ip}:{port}: {e}");
                self.upstream[i].state = UpstreamState::Idle;
                pipe.set_failed();
            }
        }
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
        self.ready_due = address.is_some();
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
        if self.ready_due {
            self.ready_due = false;
            if let Some(a) = self.address {
                // After the gateway's ARP request: a client that connects on this line finds
                // the guest's MAC known to the gateway (slirp drops a SYN for an unknown one).
                let _ = writeln!(
                    log,
                    "{READY_PREFIX}http://{}:{HTTP_PORT} http://{IMDS_ADDRESS}:{HTTP_PORT}",
                    a.address()
                );
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
                let servers = c.dns_servers.clone();
                self.set_address(Some(address), router);
                self.set_dns_servers(&servers);
                let _ = write!(log, "imds-agent: net: DHCP address {address}");
                if let Some(gw) = router {
                    let _ = write!(log, ", gateway {gw}");
                }
                if let Some(dns) = servers.first() {
                    let _ = write!(log, ", DNS {dns}");
                }
                let _ = writeln!(log, " ({} ms since boot)", clock.monotonic_us() / 1000);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                if self.address.is_some() {
                    let _ = writeln!(log, "imds-agent: net: DHCP lease lost");
                }
                self.set_address(None, None);
                self.set_dns_servers(&[]);
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
        for (slot, conn) in self.slots.iter_mut().zip(self.conns.iter_mut()) {
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            serve_slot(slot, socket, conn, agent, clock, entropy, log);
        }
        let now_us = clock.monotonic_us();
        let spare = self
            .slots
            .iter()
            .filter(|s| s.is_spare(self.sockets.get::<tcp::Socket>(s.handle).state(), now_us))
            .count();
        // Closing another connection while others are about to free their sockets would
        // only cost a client its connection (under a flood of short connections, the
        // well-behaved keep-alive client was the one closed).
        if spare < SPARE_LISTENERS {
            self.make_room(agent, now_us);
        }
    }

    /// (Almost) every socket is busy: close the connection that has waited longest without
    /// giving the agent a request (an idle keep-alive connection, or a request head that does
    /// not complete: [`Connection::eviction_key`]), so that a new client is not refused
    /// while old or slow ones merely hold their sockets.
    fn make_room(&mut self, agent: &mut Agent, now_us: u64) {
        let victim = self
            .slots
            .iter()
            .zip(self.conns.iter())
            .enumerate()
            .filter(|(_, (s, _))| matches!(s.state, SlotState::Active { .. }))
            .filter_map(|(i, (_, c))| c.eviction_key().map(|k| (i, k)))
            .min_by_key(|&(_, k)| k)
            .map(|(i, _)| i);
        if let Some(i) = victim {
            self.conns[i].abandon(agent);
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
                conn.abandon(agent);
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
        conn.abandon(agent);
        rearm(slot, socket);
    } else if conn.wants_close() {
        conn.abandon(agent);
        socket.close();
        slot.state = SlotState::Closing { since_us: now_us };
    } else if conn.timed_out(now_us) {
        conn.abandon(agent);
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
    use crate::broker::task::{self, TaskBuffers};
    use crate::config::tests::{doc, SYS};
    use crate::config::{AuthorityConfig, Config};
    use crate::limits::IDLE_TIMEOUT_US;
    use core::future::Future;
    use core::pin::Pin;
    use core::task::Waker;
    use imds_hal::EntropyError;
    use smoltcp::phy::{DeviceCapabilities, FaultInjector, Medium, RxToken};
    use smoltcp::socket::udp;
    use smoltcp::wire::EthernetFrame;
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
            let agent: &'static RefCell<Agent> =
                Box::leak(Box::new(RefCell::new(Agent::new(config))));
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

        /// Advance time by `us` and let every side run.
        fn step(&mut self, us: u64) {
            self.clock.advance(us);
            for _ in 0..4 {
                self.net.poll(
                    &mut self.server,
                    &mut self.agent.borrow_mut(),
                    self.clock,
                    &mut self.entropy,
                    &mut self.log,
                );
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

        /// Connect to `to`:80, stepping `step_us` at a time.
        fn connect_with(&mut self, to: Ipv4Address, step_us: u64) -> SocketHandle {
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

    /// Whether `b` holds a whole HTTP request (head and Content-Length body).
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
        rig.net.poll(
            &mut rig.server,
            &mut rig.agent.borrow_mut(),
            rig.clock,
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
    fn one_ready_line_once_the_address_is_armed() {
        let mut rig = Rig::new();
        assert!(!rig.log.contains(READY_PREFIX), "{}", rig.log);
        for _ in 0..3 {
            rig.net.poll(
                &mut rig.server,
                &mut rig.agent.borrow_mut(),
                rig.clock,
                &mut rig.entropy,
                &mut rig.log,
            );
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
}
