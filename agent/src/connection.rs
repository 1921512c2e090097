//! One HTTP connection, sans-IO: bytes in, bytes out, for both ways of running.
//!
//! The host daemon (std sockets) and the unikernel's network loop (smoltcp sockets) own the
//! sockets; each keeps one [`Connection`] per TCP connection and moves bytes between the socket
//! and this buffer pair. `process` parses every complete request, asks the router, and queues
//! the response; a request that cannot be read gets its 4xx answer and the connection closes.

use crate::agent::Agent;
use crate::http::{self, HttpError, Parse, ResponseHead};
use crate::imds;
use crate::imds::Error;
pub use crate::imds::{Ctx, Listener, Now, Reply};
use crate::limits::{CONN_RX_BUF, CONN_TX_BUF, HEAD_DEADLINE_US, IDLE_TIMEOUT_US};
use crate::metadata::{self, BodySource};
use core::fmt::Write;
use core::net::{IpAddr, Ipv4Addr};
use imds_hal::text::Text;
use imds_hal::{Clock, Entropy};

/// Room for the status line and headers in front of the largest body.
pub const RESPONSE_HEAD_MAX: usize = 256;

/// Per-connection state with fixed buffers.
pub struct Connection {
    rx: [u8; CONN_RX_BUF],
    rx_filled: usize,
    tx: heapless::Vec<u8, { CONN_TX_BUF + RESPONSE_HEAD_MAX }>,
    tx_sent: usize,
    listener: Listener,
    peer: IpAddr,
    close_after_tx: bool,
    peer_closed: bool,
    last_activity_us: u64,
    /// When the first byte of a not yet complete request head arrived.
    head_started_us: Option<u64>,
    /// When the request at the head of the buffer started waiting for an upstream fetch.
    parked_since_us: Option<u64>,
    /// Whether a request on this connection has been answered (a client that talks HTTP).
    answered: bool,
    /// Scratch for the router's reply (kept here so that it is not on the stack).
    reply: Reply,
    /// A body larger than `tx`, still being rendered chunk by chunk (instance metadata), and
    /// how much of it is in `tx` already.
    big: Option<(BodySource, usize)>,
}

impl core::fmt::Debug for Connection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("rx", &self.rx_filled)
            .field("tx", &(self.tx.len() - self.tx_sent))
            .finish()
    }
}

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

impl Connection {
    /// An idle connection (drivers call [`Connection::reset`] per TCP connection).
    pub const fn new() -> Self {
        Connection {
            rx: [0; CONN_RX_BUF],
            rx_filled: 0,
            tx: heapless::Vec::new(),
            tx_sent: 0,
            listener: Listener::Imds,
            peer: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            close_after_tx: false,
            peer_closed: false,
            last_activity_us: 0,
            head_started_us: None,
            parked_since_us: None,
            answered: false,
            reply: Reply::new(),
            big: None,
        }
    }

    /// Start a new TCP connection.
    pub fn reset(&mut self, listener: Listener, peer: IpAddr, now_us: u64) {
        self.rx_filled = 0;
        self.tx.clear();
        self.tx_sent = 0;
        self.listener = listener;
        self.peer = peer;
        self.close_after_tx = false;
        self.peer_closed = false;
        self.last_activity_us = now_us;
        self.head_started_us = None;
        self.parked_since_us = None;
        self.answered = false;
        self.reply.clear();
        self.big = None;
    }

    /// The client's address.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// Free space to receive into. Empty while a response is still being sent (back-pressure)
    /// or once the connection is closing.
    pub fn rx_space(&mut self) -> &mut [u8] {
        if self.close_after_tx || self.tx_sent < self.tx.len() || self.big.is_some() {
            return &mut [];
        }
        &mut self.rx[self.rx_filled..]
    }

    /// `n` bytes were written into [`rx_space`](Self::rx_space).
    pub fn rx_commit(&mut self, n: usize, now_us: u64) {
        self.rx_filled = (self.rx_filled + n).min(CONN_RX_BUF);
        if n > 0 {
            self.last_activity_us = now_us;
            if self.head_started_us.is_none() {
                self.head_started_us = Some(now_us);
            }
        }
    }

    /// The peer sent FIN: answer what is complete, then close.
    pub fn rx_closed(&mut self) {
        self.peer_closed = true;
    }

    /// Parse and answer every complete request in the receive buffer. A request that waits
    /// for an upstream fetch stays at the head of the buffer ("parked") and is handled again
    /// on the next call.
    ///
    /// Never inlined: inlined into the image's one-loop driver, the per-request locals widened
    /// its frame past 12 KiB, so that every stack access there took a 32-bit displacement
    /// (issuer image -128 B on top of `imds::handle`'s out-of-lining).
    #[inline(never)]
    pub fn process<C: Clock, E: Entropy, W: Write>(
        &mut self,
        agent: &mut Agent,
        clock: &C,
        entropy: &mut E,
        log: &mut W,
    ) {
        if self.tx_sent >= self.tx.len() {
            self.refill(agent);
        }
        loop {
            if self.close_after_tx
                || self.tx_sent < self.tx.len()
                || self.big.is_some()
                || self.rx_filled == 0
            {
                break;
            }
            let start_us = clock.monotonic_us();
            enum Outcome {
                Partial,
                Parked,
                Failed(HttpError),
                Answered {
                    used: usize,
                    keep_alive: bool,
                    ok: bool,
                },
            }
            let outcome = match http::parse(&self.rx[..self.rx_filled]) {
                Ok(Parse::Partial) => Outcome::Partial,
                Err(e) => Outcome::Failed(e),
                Ok(Parse::Complete(req, used)) => {
                    let now = Now {
                        unix_s: clock.unix_time_s(),
                        mono_us: start_us,
                    };
                    let ctx = Ctx {
                        now,
                        peer: self.peer,
                        parked_since_us: self.parked_since_us,
                    };
                    // The router parks a request that waits for a fetch, answers it when the
                    // fetch ends or the wait is too long, and releases it then.
                    #[cfg(feature = "std")]
                    crate::hosts::handle(
                        self.listener,
                        agent,
                        &req,
                        &ctx,
                        entropy,
                        &mut self.reply,
                    );
                    #[cfg(not(feature = "std"))]
                    imds::handle(agent, &req, &ctx, entropy, &mut self.reply);
                    if self.reply.pending {
                        self.parked_since_us.get_or_insert(start_us);
                        Outcome::Parked
                    } else {
                        let keep_alive = req.keep_alive && !self.reply.close;
                        let big = self.reply.big.take();
                        let head = ResponseHead {
                            status: self.reply.status,
                            content_type: self.reply.content_type,
                            retry_after_s: self.reply.retry_after_s,
                            allow: self.reply.allow,
                            www_authenticate: self.reply.www_authenticate(),
                            keep_alive,
                        };
                        self.tx.clear();
                        self.tx_sent = 0;
                        let head_only = req.method == http::Method::Head;
                        let ok = match big {
                            Some(body) => {
                                let ok = http::write_head(&mut self.tx, &head, body.len).is_ok();
                                if ok && !head_only && body.len > 0 {
                                    self.big = Some((body, 0));
                                }
                                ok
                            }
                            None => http::write_response(
                                &mut self.tx,
                                &head,
                                &self.reply.body,
                                head_only,
                            )
                            .is_ok(),
                        };
                        let since = self.parked_since_us.unwrap_or(start_us);
                        let micros = clock.monotonic_us().saturating_sub(since);
                        put_peer(log, self.peer)
                            .put(" ")
                            .put(req.method_str)
                            .put(" ")
                            .put(req.path)
                            .put(" ")
                            .dec(self.reply.status.into())
                            .put(" ")
                            .put(self.reply.client_id.as_deref().unwrap_or("-"))
                            .put(" ")
                            .dec(micros)
                            .put("us")
                            .end();
                        Outcome::Answered {
                            used,
                            keep_alive,
                            ok,
                        }
                    }
                }
            };
            match outcome {
                Outcome::Partial if self.rx_filled == CONN_RX_BUF => {
                    // Only possible with padding before the request line: refuse, don't stall.
                    self.answer_error(HttpError::HeadTooLarge, log);
                    break;
                }
                Outcome::Partial | Outcome::Parked => break,
                Outcome::Failed(e) => {
                    self.answer_error(e, log);
                    break;
                }
                Outcome::Answered {
                    used,
                    keep_alive,
                    ok,
                } => {
                    self.parked_since_us = None;
                    self.answered = true;
                    // Drop the request from the receive buffer (pipelined bytes move up).
                    self.rx.copy_within(used..self.rx_filled, 0);
                    self.rx_filled -= used;
                    self.head_started_us = if self.rx_filled > 0 {
                        Some(start_us)
                    } else {
                        None
                    };
                    if !ok {
                        self.tx.clear();
                        self.big = None;
                        self.close_after_tx = true;
                        break;
                    }
                    // The first chunk of a large body goes out with the head.
                    self.refill(agent);
                    if !keep_alive {
                        self.close_after_tx = true;
                    }
                }
            }
        }
        if self.peer_closed
            && self.tx_sent >= self.tx.len()
            && self.big.is_none()
            && self.parked_since_us.is_none()
        {
            self.close_after_tx = true;
        }
    }

    /// Render the next chunk of a large body into the free end of `tx`.
    fn refill(&mut self, agent: &Agent) {
        let Some((body, done)) = self.big.as_mut() else {
            return;
        };
        let start = self.tx.len();
        let _ = self.tx.resize(self.tx.capacity(), 0);
        let n = metadata::render_chunk(&agent.metadata, body, *done, &mut self.tx[start..]);
        self.tx.truncate(start + n);
        *done += n;
        if *done >= body.len {
            self.big = None;
        } else if n == 0 {
            // Cannot happen (the documents do not change): never leave the client hanging.
            self.big = None;
            self.close_after_tx = true;
        }
    }

    fn answer_error<W: Write>(&mut self, e: HttpError, log: &mut W) {
        self.reply.clear();
        self.reply.fail(Error::Http(e));
        let head = ResponseHead {
            status: self.reply.status,
            content_type: self.reply.content_type,
            retry_after_s: None,
            allow: None,
            www_authenticate: None,
            keep_alive: false,
        };
        self.tx.clear();
        self.tx_sent = 0;
        let _ = http::write_response(&mut self.tx, &head, &self.reply.body, false);
        put_peer(log, self.peer)
            .put(" - - ")
            .dec(e.status().into())
            .put(" - 0us (");
        e.describe(log);
        log.put(")").end();
        self.rx_filled = 0;
        self.close_after_tx = true;
    }

    /// Bytes waiting to be sent.
    pub fn tx_pending(&self) -> &[u8] {
        &self.tx[self.tx_sent..]
    }

    /// Whether more of the current answer's body is still to be rendered into `tx` (a large
    /// instance-metadata answer): the next `process` call queues its next chunk.
    pub fn body_pending(&self) -> bool {
        self.big.is_some()
    }

    /// `n` bytes of [`tx_pending`](Self::tx_pending) were sent.
    pub fn tx_consume(&mut self, n: usize) {
        self.tx_sent = (self.tx_sent + n).min(self.tx.len());
        if self.tx_sent == self.tx.len() {
            self.tx.clear();
            self.tx_sent = 0;
        }
    }

    /// Everything is sent and the connection should be closed now.
    pub fn wants_close(&self) -> bool {
        (self.close_after_tx || self.peer_closed)
            && self.tx_sent >= self.tx.len()
            && self.big.is_none()
    }

    /// When bytes last arrived (monotonic microseconds).
    pub fn last_activity_us(&self) -> u64 {
        self.last_activity_us
    }

    /// The connection goes away: release what its parked request held. Drivers call this
    /// before dropping or reusing a connection.
    pub fn abandon(&mut self, agent: &mut Agent) {
        if self.parked_since_us.take().is_some() {
            imds::release(agent, self.peer);
        }
    }

    /// Whether a request waits for an upstream fetch (the driver should call `process` again
    /// on its next turn even without new bytes).
    pub fn is_parked(&self) -> bool {
        self.parked_since_us.is_some()
    }

    /// Whether the connection has outlived its idle timeout or its request-head deadline.
    pub fn timed_out(&self, now_us: u64) -> bool {
        if self.parked_since_us.is_some() {
            // Waiting for the authority: the router answers 503 when that takes too long.
            return false;
        }
        now_us.saturating_sub(self.last_activity_us) > IDLE_TIMEOUT_US
            || self
                .head_started_us
                .is_some_and(|t| now_us.saturating_sub(t) > HEAD_DEADLINE_US)
    }

    /// When the pool is full, which connection to close first: the one with the lowest key.
    /// Connections that have never had a request answered go before those that have (a
    /// client that talks HTTP), and within each group the one waiting longest: a keep-alive
    /// connection between requests counts from its last activity, one whose request head is
    /// still incomplete from the head's first byte — so a slowloris sender that trickles a
    /// byte now and then is older than any real client (whose head arrives in one go) and
    /// goes first. `None` while the connection works for its client (a parked request, an
    /// answer being sent): never closed to make room.
    pub fn eviction_key(&self) -> Option<(bool, u64)> {
        if self.parked_since_us.is_some()
            || self.tx_sent < self.tx.len()
            || self.big.is_some()
            || self.close_after_tx
        {
            return None;
        }
        let since = if self.rx_filled == 0 {
            self.last_activity_us
        } else {
            self.head_started_us.unwrap_or(self.last_activity_us)
        };
        Some((self.answered, since))
    }
}

/// The peer's address in the access log. Without `std` (the image: smoltcp without IPv6) a
/// peer is always IPv4, and the IPv6 text code (~500 bytes) stays out of the image.
fn put_peer<W: Text + ?Sized>(log: &mut W, peer: IpAddr) -> &mut W {
    match peer {
        IpAddr::V4(a) => log.ipv4(a.octets()),
        #[cfg(feature = "std")]
        IpAddr::V6(a) => log.ipv6(a),
        #[cfg(not(feature = "std"))]
        IpAddr::V6(_) => log.put("[IPv6]"),
    }
}
