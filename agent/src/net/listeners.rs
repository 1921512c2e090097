//! The listening sockets on port 80 and their [`Connection`]s: accept, move bytes between
//! each socket and its connection, close, listen again; make room when (almost) every socket
//! is busy; while none listens, keep smoltcp from resetting a new client's SYN ([`SynGuard`]).

use core::fmt::Write;
use core::net::{IpAddr, Ipv4Addr};

use imds_hal::{Clock, Entropy};
use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, PacketMeta, RxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};

use super::{
    Net, CLOSE_LINGER_US, CLOSING_SOON_US, HTTP_PORT, SPARE_LISTENERS, TCP_RX_BUF, TCP_TX_BUF,
};
use crate::agent::Agent;
use crate::connection::{Connection, Listener};
use crate::limits::LISTEN_SOCKETS;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    /// The socket listens (or is in the middle of a handshake).
    Listening,
    /// A connection is established and owns the slot's [`Connection`].
    Active { peer_closed: bool },
    /// We closed (or reset) the socket; it is re-armed once smoltcp is done with it.
    Closing { since_us: u64 },
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) handle: SocketHandle,
    pub(super) state: SlotState,
}

impl Slot {
    /// Whether the slot can take a new connection now or in a moment: listening, or closed
    /// less than [`CLOSING_SOON_US`] ago (listening again once the peer acknowledges).
    pub(super) fn is_spare(&self, socket: tcp::State, now_us: u64) -> bool {
        match self.state {
            SlotState::Listening => socket == tcp::State::Listen,
            SlotState::Closing { since_us } => now_us.saturating_sub(since_us) < CLOSING_SOON_US,
            SlotState::Active { .. } => false,
        }
    }
}

/// One socket per buffer pair, listening on [`HTTP_PORT`].
pub(super) fn listening_slots<'a>(
    sockets: &mut SocketSet<'a>,
    tcp_rx: &'a mut [[u8; TCP_RX_BUF]; LISTEN_SOCKETS],
    tcp_tx: &'a mut [[u8; TCP_TX_BUF]; LISTEN_SOCKETS],
) -> [Slot; LISTEN_SOCKETS] {
    let mut buffers = tcp_rx.iter_mut().zip(tcp_tx.iter_mut());
    core::array::from_fn(|_| {
        let Some((rx, tx)) = buffers.next() else {
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
    })
}

/// smoltcp answers a SYN that no socket accepts with RST, so a client that arrives while every
/// listener is busy would be refused, unlike a full Linux backlog, where the SYN is dropped
/// and the client retransmits. The guard sits between the NIC and smoltcp: while `on` (no
/// listener is in `Listen` state) it hands smoltcp an empty frame (which smoltcp discards)
/// instead of a SYN for port [`HTTP_PORT`]; every other frame, and every frame while off,
/// passes unchanged. (smoltcp's other way, a raw socket that marks the SYN handled, costs
/// ~2.6 KB of raw-socket code in the image.)
pub(super) struct SynGuard<'d, D> {
    pub(super) device: &'d mut D,
    pub(super) on: bool,
}

/// A received frame, seen by the [`SynGuard`].
pub(super) struct GuardedRx<T> {
    token: T,
    on: bool,
}

impl<D: Device> Device for SynGuard<'_, D> {
    type RxToken<'a>
        = GuardedRx<D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = D::TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, now: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let on = self.on;
        self.device
            .receive(now)
            .map(|(token, tx)| (GuardedRx { token, on }, tx))
    }

    fn transmit(&mut self, now: Instant) -> Option<Self::TxToken<'_>> {
        self.device.transmit(now)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.device.capabilities()
    }
}

impl<T: RxToken> RxToken for GuardedRx<T> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let on = self.on;
        self.token
            .consume(|frame| f(if on && is_http_syn(frame) { &[] } else { frame }))
    }

    fn meta(&self) -> PacketMeta {
        self.token.meta()
    }
}

/// Whether `frame` opens a connection to port [`HTTP_PORT`] (SYN without ACK).
fn is_http_syn(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != EthernetProtocol::Ipv4 {
        return false;
    }
    let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
        return false;
    };
    if ip.next_header() != IpProtocol::Tcp {
        return false;
    }
    TcpPacket::new_checked(ip.payload())
        .is_ok_and(|tcp| tcp.syn() && !tcp.ack() && tcp.dst_port() == HTTP_PORT)
}

impl Net<'_> {
    /// Whether a connection waits for an upstream fetch (the driver keeps polling then).
    pub fn has_parked(&self) -> bool {
        self.slots
            .iter()
            .zip(self.conns.iter())
            .any(|(s, c)| matches!(s.state, SlotState::Active { .. }) && c.is_parked())
    }

    pub(super) fn serve<C: Clock, E: Entropy, W: Write>(
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
        self.no_listener = !self
            .slots
            .iter()
            .any(|s| self.sockets.get::<tcp::Socket>(s.handle).state() == tcp::State::Listen);
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
