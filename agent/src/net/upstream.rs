//! The broker's upstream client in the network loop (cargo feature `broker`): [`BROKER_TASKS`]
//! outgoing TCP sockets, one per [`Pipe`] of a broker task ([`crate::broker::task`]), and the
//! DNS socket that resolves the authority's host name (feature `dns`).
//!
//! [`Net::poll_upstream`] serves them the way the host daemon serves its upstream sockets: a
//! connect request is connected (to `Target::address`, an IPv4 literal host, or the host
//! resolved by smoltcp's DNS socket with the servers DHCP announced — a static `network`
//! config has none, so there the authority needs an `address`), bytes are moved both ways, a
//! FIN is the pipe's end of input, a reset or a refused connection fails the pipe, and a close
//! request closes the socket. Timeouts are the task's.

use core::fmt::Write;
use core::net::Ipv4Addr;
use imds_hal::text::Text;

use smoltcp::iface::{SocketHandle, SocketSet};
#[cfg(feature = "dns")]
use smoltcp::socket::dns;
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, Ipv4Address};

use super::Net;
use crate::broker::pipe::{Pipe, PipeState, Target};
use crate::limits::BROKER_TASKS;
pub use crate::limits::{UPSTREAM_TCP_RX_BUF, UPSTREAM_TCP_TX_BUF};

/// Local ports of upstream connections (the IANA dynamic range).
pub const EPHEMERAL_PORT_FIRST: u16 = 49_152;
/// How many ephemeral ports there are.
const PORT_SPAN: u16 = u16::MAX - EPHEMERAL_PORT_FIRST + 1;
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

/// The upstream sockets of a [`Net`].
pub(super) struct Upstream {
    slots: [UpstreamSlot; BROKER_TASKS],
    #[cfg(feature = "dns")]
    pub(super) dns: SocketHandle,
    /// The next local port of an upstream connection.
    next_port: u16,
}

impl Upstream {
    /// Add the upstream sockets (and the DNS socket) to `sockets`; the first local port is
    /// chosen by `port_seed`.
    pub(super) fn new<'a>(
        sockets: &mut SocketSet<'a>,
        upstream_rx: &'a mut [[u8; UPSTREAM_TCP_RX_BUF]; BROKER_TASKS],
        upstream_tx: &'a mut [[u8; UPSTREAM_TCP_TX_BUF]; BROKER_TASKS],
        #[cfg(feature = "dns")] dns_queries: &'a mut [Option<dns::DnsQuery>; BROKER_TASKS],
        port_seed: u16,
    ) -> Upstream {
        let mut rx = upstream_rx.iter_mut();
        let mut tx = upstream_tx.iter_mut();
        let slots = core::array::from_fn(|_| {
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
        Upstream {
            slots,
            #[cfg(feature = "dns")]
            dns: sockets.add(dns::Socket::new(&[], &mut dns_queries[..])),
            next_port: EPHEMERAL_PORT_FIRST + (port_seed % PORT_SPAN),
        }
    }
}

impl Net<'_> {
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
        let handle = self.upstream.slots[i].handle;
        if pipe.wants_close() {
            let mut progress = false;
            if !matches!(self.upstream.slots[i].state, UpstreamState::Idle) {
                #[cfg(feature = "dns")]
                if let UpstreamState::Resolving { query, .. } = self.upstream.slots[i].state {
                    self.sockets
                        .get_mut::<dns::Socket>(self.upstream.dns)
                        .cancel_query(query);
                }
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                match socket.state() {
                    // Say goodbye properly; the FIN exchange finishes in the background.
                    tcp::State::Established | tcp::State::CloseWait => socket.close(),
                    _ => socket.abort(),
                }
                self.upstream.slots[i].state = UpstreamState::Idle;
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
        if let UpstreamState::Resolving { query, port } = self.upstream.slots[i].state {
            let dns = self.sockets.get_mut::<dns::Socket>(self.upstream.dns);
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
                            log.put("imds-agent: upstream: DNS: no IPv4 address").end();
                            self.upstream.slots[i].state = UpstreamState::Idle;
                            pipe.set_failed();
                        }
                    }
                }
                Err(dns::GetQueryResultError::Failed) => {
                    progress = true;
                    log.put("imds-agent: upstream: DNS: the name was not resolved")
                        .put(if self.dns_servers.is_empty() {
                            " (no DNS server: a static network config needs authority.address)"
                        } else {
                            ""
                        })
                        .end();
                    self.upstream.slots[i].state = UpstreamState::Idle;
                    pipe.set_failed();
                }
            }
        }

        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        match self.upstream.slots[i].state {
            UpstreamState::Connecting => match socket.state() {
                tcp::State::Established | tcp::State::CloseWait => {
                    self.upstream.slots[i].state = UpstreamState::Open { eof: false };
                    pipe.set_open();
                    progress = true;
                }
                // Refused (RST) or given up.
                tcp::State::Closed => {
                    self.upstream.slots[i].state = UpstreamState::Idle;
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
                    self.upstream.slots[i].state = UpstreamState::Idle;
                    pipe.set_failed();
                    progress = true;
                } else if !eof && !socket.may_recv() {
                    // The peer's FIN, and everything before it is in the pipe.
                    self.upstream.slots[i].state = UpstreamState::Open { eof: true };
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
        let socket = self
            .sockets
            .get_mut::<tcp::Socket>(self.upstream.slots[i].handle);
        if socket.is_open() {
            // The previous connection is still saying goodbye: cut it short.
            socket.abort();
        }
        self.upstream.slots[i].state = UpstreamState::Idle;
        let ip = match target.address {
            Some(core::net::SocketAddr::V4(a)) => {
                return self.connect_upstream(i, pipe, *a.ip(), a.port(), log);
            }
            Some(core::net::SocketAddr::V6(a)) => {
                log.put("imds-agent: upstream: ")
                    .socket(a.into())
                    .put(": IPv6 is not supported by the network loop")
                    .end();
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
            let dns = self.sockets.get_mut::<dns::Socket>(self.upstream.dns);
            match dns.start_query(cx, &target.host, smoltcp::wire::DnsQueryType::A) {
                Ok(query) => {
                    self.upstream.slots[i].state = UpstreamState::Resolving {
                        query,
                        port: target.port,
                    };
                }
                Err(e) => {
                    log.put("imds-agent: upstream: DNS: cannot ask for ")
                        .put(&target.host)
                        .put(": ")
                        .put(match e {
                            dns::StartQueryError::NoFreeSlot => "no free slot",
                            dns::StartQueryError::InvalidName => "invalid name",
                            dns::StartQueryError::NameTooLong => "name too long",
                        })
                        .end();
                    pipe.set_failed();
                }
            }
        }
        #[cfg(not(feature = "dns"))]
        {
            log.put("imds-agent: upstream: ")
                .put(&target.host)
                .put(": this build has no DNS: configure authority.address")
                .end();
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
        let local_port = self.upstream.next_port;
        self.upstream.next_port = if self.upstream.next_port == u16::MAX {
            EPHEMERAL_PORT_FIRST
        } else {
            self.upstream.next_port + 1
        };
        let cx = self.iface.context();
        let socket = self
            .sockets
            .get_mut::<tcp::Socket>(self.upstream.slots[i].handle);
        match socket.connect(cx, (IpAddress::Ipv4(ip), port), local_port) {
            Ok(()) => self.upstream.slots[i].state = UpstreamState::Connecting,
            Err(e) => {
                log.put("imds-agent: upstream: connect ")
                    .ipv4(ip.octets())
                    .put(":")
                    .dec(port.into())
                    .put(": ")
                    .put(match e {
                        tcp::ConnectError::InvalidState => "invalid state",
                        tcp::ConnectError::Unaddressable => "unaddressable destination",
                    })
                    .end();
                self.upstream.slots[i].state = UpstreamState::Idle;
                pipe.set_failed();
            }
        }
    }
}
