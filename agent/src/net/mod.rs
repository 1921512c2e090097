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
//!   closed to make room. While no socket listens at all, a SYN is dropped, not reset (the
//!   client retransmits, as with a full Linux backlog): `listeners::SynGuard`.
//! * Timeouts: a connection idle for [`crate::limits::IDLE_TIMEOUT_US`] (or whose request head
//!   does not complete in time) is reset; a closing socket gets [`CLOSE_LINGER_US`].
//! * Slirp (QEMU user networking) drops the first SYN towards a guest whose MAC it has not
//!   seen, so one ARP request for the gateway is sent as soon as the address is known.
//! * Broker mode (cargo feature `broker`): the authority's sockets and DNS, in `upstream`
//!   (`Net::poll_upstream`). Drivers that never call `poll_upstream` leave those sockets
//!   closed; a build without the feature has none.
//!
//! Parts: the interface (address, DHCP, ARP, the ready line) here; the port-80 sockets and
//! their connections in `listeners`; broker mode's sockets in `upstream`. An address change
//! is reported once in [`PollStatus::address_change`]: the driver moves the agent's own subnet.
//!
//! Memory is fixed: [`NetMemory`] holds every socket buffer and connection; nothing allocates.

use core::fmt::Write;
use core::net::IpAddr;
use imds_hal::text::Text;

use imds_hal::{Clock, Entropy};
use smoltcp::iface::{
    Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet, SocketStorage,
};
use smoltcp::phy::{Device, TxToken};
use smoltcp::socket::dhcpv4;
#[cfg(feature = "dns")]
use smoltcp::socket::dns;
mod listeners;
use listeners::{Slot, SynGuard};
#[cfg(feature = "broker")]
mod upstream;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr,
};
#[cfg(feature = "broker")]
pub use upstream::{EPHEMERAL_PORT_FIRST, UPSTREAM_TCP_RX_BUF, UPSTREAM_TCP_TX_BUF};

use crate::agent::Agent;
use crate::config::NetworkConfig;
use crate::connection::Connection;
use crate::guard::{Cidr, Guard};
#[cfg(feature = "broker")]
use crate::limits::BROKER_TASKS;
use crate::limits::{DNS_SERVERS, LISTEN_SOCKETS};

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
pub use crate::limits::{TCP_RX_BUF, TCP_TX_BUF};
/// A socket we closed gets this long to finish the FIN exchange before it is reset.
pub const CLOSE_LINGER_US: u64 = 5_000_000;
/// A socket closed less than this long ago counts as a spare listener when deciding whether
/// to close a connection to make room (its peer's acknowledgement is on the way).
pub const CLOSING_SOON_US: u64 = 100_000;
/// When fewer sockets than this are spare (listening, or closed a moment ago), a waiting
/// connection is closed ([`Connection::eviction_key`]), so that a new client finds a listener
/// (smoltcp would answer a SYN nobody listens for with a reset; while no socket listens, the
/// SYN guard of `listeners` drops such a SYN instead and the client retransmits).
pub const SPARE_LISTENERS: usize = 2;
/// smoltcp socket slots: the listeners, the upstream sockets, DHCP and DNS.
#[cfg(feature = "broker")]
pub const NET_SOCKETS: usize = LISTEN_SOCKETS + BROKER_TASKS + 2;
/// smoltcp socket slots: the listeners and DHCP.
#[cfg(not(feature = "broker"))]
pub const NET_SOCKETS: usize = LISTEN_SOCKETS + 1;

/// Every buffer of the network loop. About 300 KiB: put it in a `static` or on a big stack.
///
/// The fields are public so that bare-metal code can initialise it in place (a `static` in
/// `.bss`, each connection written with [`Connection::new`]) instead of building it on the
/// stack; on the host, `Box::new(NetMemory::new())`.
pub struct NetMemory<'a> {
    /// smoltcp's socket table: the listening sockets, the upstream sockets, DHCP, DNS.
    pub sockets: [SocketStorage<'a>; NET_SOCKETS],
    /// Receive buffers of the listening sockets.
    pub tcp_rx: [[u8; TCP_RX_BUF]; LISTEN_SOCKETS],
    /// Send buffers of the listening sockets.
    pub tcp_tx: [[u8; TCP_TX_BUF]; LISTEN_SOCKETS],
    /// One connection per listening socket.
    pub conns: [Connection; LISTEN_SOCKETS],
    /// Buffers of the upstream (broker) sockets.
    #[cfg(feature = "broker")]
    pub upstream_rx: [[u8; UPSTREAM_TCP_RX_BUF]; BROKER_TASKS],
    #[cfg(feature = "broker")]
    /// Send buffers of the upstream sockets.
    pub upstream_tx: [[u8; UPSTREAM_TCP_TX_BUF]; BROKER_TASKS],
    /// Query slots of the DNS socket (one per upstream socket).
    #[cfg(feature = "dns")]
    pub dns_queries: [Option<dns::DnsQuery>; BROKER_TASKS],
}

impl NetMemory<'_> {
    /// Zeroed memory, every socket slot empty.
    pub const fn new() -> Self {
        NetMemory {
            sockets: [const { SocketStorage::EMPTY }; NET_SOCKETS],
            tcp_rx: [[0; TCP_RX_BUF]; LISTEN_SOCKETS],
            tcp_tx: [[0; TCP_TX_BUF]; LISTEN_SOCKETS],
            conns: [const { Connection::new() }; LISTEN_SOCKETS],
            #[cfg(feature = "broker")]
            upstream_rx: [[0; UPSTREAM_TCP_RX_BUF]; BROKER_TASKS],
            #[cfg(feature = "broker")]
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

/// What one [`Net::poll`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollStatus {
    /// Frames came in or went out: more may follow, poll again at once.
    pub busy: bool,
    /// When smoltcp next needs a poll for its own timers (retransmission, DHCP renewal), if
    /// ever. A caller that sleeps must also wake for incoming frames (or poll regularly).
    pub next_in: Option<Duration>,
    /// The interface address changed (reported once): the driver moves the agent's own subnet
    /// ([`AddressChange::apply_to`]). Nothing was served in this poll, so that the next one
    /// serves with the new subnet in place.
    pub address_change: Option<AddressChange>,
}

/// The interface address before and after a change (the static address at start, a DHCP
/// lease with a new address, a lost lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressChange {
    /// The address the driver knew (None: none).
    pub old: Option<Ipv4Cidr>,
    /// The address now (None: none).
    pub new: Option<Ipv4Cidr>,
}

impl AddressChange {
    /// The agent's own subnet in `guard` becomes the new address's (unless `allow` is
    /// configured): a client on the old subnet only is no longer let in.
    pub fn apply_to(&self, guard: &mut Guard) {
        let own = |a: Ipv4Cidr| Cidr::new(IpAddr::V4(a.address()), a.prefix_len());
        guard.replace_own_subnet(self.old.map(own), self.new.map(own));
    }
}

/// The interface, its sockets and the connections.
pub struct Net<'a> {
    iface: Interface,
    sockets: SocketSet<'a>,
    dhcp: Option<SocketHandle>,
    slots: [Slot; LISTEN_SOCKETS],
    /// No listener is in `Listen` state: the [`SynGuard`] drops SYNs for port 80.
    no_listener: bool,
    conns: &'a mut [Connection; LISTEN_SOCKETS],
    /// The broker's upstream sockets.
    #[cfg(feature = "broker")]
    upstream: upstream::Upstream,
    /// DNS servers (from DHCP, or [`Net::set_dns_servers`]).
    dns_servers: heapless::Vec<Ipv4Address, DNS_SERVERS>,
    mac: EthernetAddress,
    address: Option<Ipv4Cidr>,
    gateway: Option<Ipv4Address>,
    /// An ARP request for the gateway is due.
    arp_due: bool,
    /// The ready line ([`READY_PREFIX`]) is due: an address was just set.
    ready_due: bool,
    /// An address change the driver has not been told about.
    address_change: Option<AddressChange>,
}

/// `A.B.C.D/N`, as smoltcp's `Display` writes it.
fn put_cidr<W: Write + ?Sized>(log: &mut W, c: Ipv4Cidr) {
    log.ipv4(c.address().octets())
        .put("/")
        .dec(c.prefix_len().into());
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
            #[cfg(feature = "broker")]
            upstream_rx,
            #[cfg(feature = "broker")]
            upstream_tx,
            #[cfg(feature = "dns")]
            dns_queries,
        } = mem;
        let mut sockets = SocketSet::new(&mut sockets[..]);
        let dhcp = match network {
            Some(_) => None,
            None => Some(sockets.add(dhcpv4::Socket::new())),
        };
        let slots = listeners::listening_slots(&mut sockets, tcp_rx, tcp_tx);
        #[cfg(feature = "broker")]
        let upstream = upstream::Upstream::new(
            &mut sockets,
            upstream_rx,
            upstream_tx,
            #[cfg(feature = "dns")]
            dns_queries,
            u16::from_le_bytes([seed[0], seed[1]]),
        );

        let mut net = Net {
            iface,
            sockets,
            dhcp,
            slots,
            no_listener: false,
            conns,
            #[cfg(feature = "broker")]
            upstream,
            dns_servers: heapless::Vec::new(),
            mac,
            address: None,
            gateway: None,
            arp_due: false,
            ready_due: false,
            address_change: None,
        };
        match network {
            Some(n) => {
                let cidr = Ipv4Cidr::new(n.address, n.prefix_len);
                net.set_address(Some(cidr), n.gateway);
                log.put("imds-agent: net: address ");
                put_cidr(log, cidr);
                log.put(" (static)");
            }
            None => {
                net.set_address(None, None);
                log.put("imds-agent: net: waiting for DHCP");
            }
        }
        log.put(", also answering on ")
            .ipv4(IMDS_ADDRESS.octets())
            .put(", ")
            .dec(LISTEN_SOCKETS as u64)
            .put(" sockets on port ")
            .dec(HTTP_PORT.into())
            .end();
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

    /// Replace the DNS servers (at most [`DNS_SERVERS`] are kept).
    pub fn set_dns_servers(&mut self, servers: &[Ipv4Address]) {
        self.dns_servers.clear();
        for s in servers.iter().take(self.dns_servers.capacity()) {
            let _ = self.dns_servers.push(*s);
        }
        #[cfg(feature = "dns")]
        {
            let mut list: heapless::Vec<smoltcp::wire::IpAddress, DNS_SERVERS> =
                heapless::Vec::new();
            for s in &self.dns_servers {
                let _ = list.push(smoltcp::wire::IpAddress::Ipv4(*s));
            }
            self.sockets
                .get_mut::<dns::Socket>(self.upstream.dns)
                .update_servers(&list);
        }
    }

    fn set_address(&mut self, address: Option<Ipv4Cidr>, gateway: Option<Ipv4Address>) {
        if address != self.address {
            // Not reported yet: the old address is still the one the driver knows.
            let old = self.address_change.map_or(self.address, |c| c.old);
            self.address_change = Some(AddressChange { old, new: address });
        }
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
        let device = &mut SynGuard {
            device,
            on: self.no_listener,
        };
        let now = instant(clock.monotonic_us());
        let received = self.iface.poll(now, device, &mut self.sockets);
        self.poll_dhcp(clock, log);
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
                log.put(READY_PREFIX)
                    .put("http://")
                    .ipv4(a.address().octets())
                    .put(":")
                    .dec(HTTP_PORT.into())
                    .put(" http://")
                    .ipv4(IMDS_ADDRESS.octets())
                    .put(":")
                    .dec(HTTP_PORT.into())
                    .end();
            }
        }
        if let Some(change) = self.address_change.take() {
            // The driver moves the agent's own subnet first; the next poll serves.
            return PollStatus {
                busy: true,
                next_in: self.iface.poll_delay(now, &self.sockets),
                address_change: Some(change),
            };
        }
        self.serve(agent, clock, entropy, log);
        device.on = self.no_listener;
        let now = instant(clock.monotonic_us());
        let sent = self.iface.poll(now, device, &mut self.sockets);
        PollStatus {
            busy: received == PollResult::SocketStateChanged
                || sent == PollResult::SocketStateChanged,
            next_in: self.iface.poll_delay(now, &self.sockets),
            address_change: None,
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
                log.put("imds-agent: net: DHCP address ");
                put_cidr(log, address);
                if let Some(gw) = router {
                    log.put(", gateway ").ipv4(gw.octets());
                }
                if let Some(dns) = servers.first() {
                    log.put(", DNS ").ipv4(dns.octets());
                }
                log.put(" (")
                    .dec(clock.monotonic_us() / 1000)
                    .put(" ms since boot)")
                    .end();
            }
            Some(dhcpv4::Event::Deconfigured) => {
                if self.address.is_some() {
                    log.put("imds-agent: net: DHCP lease lost").end();
                }
                self.set_address(None, None);
                self.set_dns_servers(&[]);
            }
            None => {}
        }
    }
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

// The tests drive the issuer and the broker paths over a simulated wire.
#[cfg(all(test, feature = "broker"))]
mod tests;
