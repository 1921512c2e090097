//! One `imds_agent::connection::Connection` and an `Agent` driven the way the host daemon and the
//! unikernel drive them, by a script of socket events read from the input.
//!
//! Input format (also written by `fuzz/seeds.py`), a sequence of records `op [args]`:
//!
//! | op & 7 | meaning                                                             |
//! |--------|---------------------------------------------------------------------|
//! | 0..=3  | the peer sends: `len` byte, then `len` bytes (cut at end of input)  |
//! | 4      | time passes: `n` byte, n × 100 ms; n ≥ 250: (n − 249) × 6 h         |
//! | 5      | the peer reads: `n` byte, up to n × 16 bytes of the response        |
//! | 6      | the peer closes its side (FIN)                                      |
//! | 7      | a new TCP connection reuses the state (bit 3: legacy listener)      |
//!
//! Bit 4 of a send record (op 0..=3) makes the peer a slow reader for that step: the server's
//! answer stays queued (back-pressure). Otherwise the peer reads everything after each step.
//!
//! Checked: no panic; every response the peer reads is a well-formed HTTP/1.1 status line and
//! header section (httparse) with a status `http::reason` knows, its reason phrase, and a
//! `Content-Length` equal to its body (or no body: HEAD).
#![no_main]

use core::cell::Cell;
use core::net::{IpAddr, Ipv4Addr};
use imds_agent::config::Config;
use imds_agent::http::reason;
use imds_agent::connection::{Connection, Listener};
use imds_agent::Agent;
use imds_hal::{Clock, Entropy, EntropyError};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// The fixed configuration (a throw-away test key, three identities).
const CONFIG: &[u8] = include_bytes!("../fixtures/agent.json");

/// 2026-01-01T00:00:00Z: wall time at monotonic zero.
const EPOCH_S: u64 = 1_767_225_600;

struct FakeClock(Cell<u64>);

impl Clock for FakeClock {
    fn monotonic_us(&self) -> u64 {
        self.0.get()
    }
    fn unix_time_s(&self) -> u64 {
        EPOCH_S + self.0.get() / 1_000_000
    }
}

/// Deterministic bytes (xorshift): reproducible runs, not secure, fuzzing only.
struct FakeEntropy(u64);

impl Entropy for FakeEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = self.0 as u8;
        }
        Ok(())
    }
}

/// Log lines are formatted (that code runs) and dropped.
struct Sink;

impl core::fmt::Write for Sink {
    fn write_str(&mut self, _: &str) -> core::fmt::Result {
        Ok(())
    }
}

struct Peer {
    /// Sent by the peer, not yet read by the server.
    inbound: Vec<u8>,
    /// Read by the peer from the response being sent.
    received: Vec<u8>,
    closed: bool,
}

struct World {
    agent: Agent,
    conn: Box<Connection>,
    clock: FakeClock,
    entropy: FakeEntropy,
    peer: Peer,
    /// The server closed the connection (the socket is gone until the next op 7).
    gone: bool,
}

impl World {
    /// Move bytes the way the daemon's `drive` does, until nothing moves; the peer reads up to
    /// `read_limit` bytes.
    fn pump(&mut self, mut read_limit: usize) {
        if self.gone {
            return;
        }
        for _ in 0..64 {
            let mut progress = false;
            let space = self.conn.rx_space();
            if !space.is_empty() && !self.peer.inbound.is_empty() {
                let n = space.len().min(self.peer.inbound.len());
                space[..n].copy_from_slice(&self.peer.inbound[..n]);
                self.peer.inbound.drain(..n);
                self.conn.rx_commit(n, self.clock.monotonic_us());
                progress = true;
            }
            if self.peer.closed && self.peer.inbound.is_empty() {
                self.conn.rx_closed();
            }
            self.conn
                .process(&mut self.agent, &self.clock, &mut self.entropy, &mut Sink);
            let pending = self.conn.tx_pending();
            let n = pending.len().min(read_limit);
            if n > 0 {
                self.peer.received.extend_from_slice(&pending[..n]);
                self.conn.tx_consume(n);
                read_limit -= n;
                progress = true;
                // A large answer is queued chunk by chunk: whole once no chunk is left.
                if self.conn.tx_pending().is_empty() && !self.conn.body_pending() {
                    self.check_response();
                }
            }
            if self.conn.wants_close() {
                self.gone = true;
                break;
            }
            if !progress {
                break;
            }
        }
    }

    /// Check one whole response (the connection queues exactly one at a time).
    fn check_response(&mut self) {
        let r = core::mem::take(&mut self.peer.received);
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let shown = || String::from_utf8_lossy(&r[..r.len().min(400)]).into_owned();
        let head_len = match resp.parse(&r) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!("malformed response head ({other:?}): {:?}", shown()),
        };
        assert_eq!(resp.version, Some(1), "not HTTP/1.1: {:?}", shown());
        let status = resp.code.expect("status");
        // A status the writer knows, with its reason phrase (the list lives in http::reason).
        let known = reason(status);
        assert!(
            known != "Unknown",
            "unexpected status {status}: {:?}",
            shown()
        );
        assert_eq!(resp.reason, Some(known), "reason phrase: {:?}", shown());
        let len: usize = resp
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| core::str::from_utf8(h.value).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no Content-Length: {:?}", shown()));
        let body = r.len() - head_len;
        // A HEAD answer carries the length of the body it leaves out.
        assert!(
            body == len || body == 0,
            "Content-Length {len}, body {body}: {:?}",
            shown()
        );
    }
}

fuzz_target!(|data: &[u8]| {
    // Parsed once (key parsing dominates otherwise); every input gets a fresh agent.
    static PARSED: OnceLock<Config> = OnceLock::new();
    let config = PARSED
        .get_or_init(|| Config::parse(CONFIG).expect("fixture config"))
        .clone();
    let clock = FakeClock(Cell::new(1_000_000));
    let mut conn = Box::new(Connection::new());
    conn.reset(
        Listener::Imds,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        clock.monotonic_us(),
    );
    let mut w = World {
        agent: Agent::new(config),
        conn,
        clock,
        entropy: FakeEntropy(0x9E37_79B9_7F4A_7C15),
        peer: Peer {
            inbound: Vec::new(),
            received: Vec::new(),
            closed: false,
        },
        gone: false,
    };
    let mut it = data.iter().copied();
    while let Some(op) = it.next() {
        match op & 7 {
            0..=3 => {
                let len = it.next().unwrap_or(0) as usize;
                if !w.peer.closed {
                    w.peer.inbound.extend(it.by_ref().take(len));
                }
                w.pump(if op & 0x10 != 0 { 0 } else { usize::MAX });
            }
            4 => {
                let n = it.next().unwrap_or(0) as u64;
                let step_us = if n < 250 {
                    n * 100_000
                } else {
                    (n - 249) * 6 * 3600 * 1_000_000
                };
                let now = w.clock.monotonic_us() + step_us;
                w.clock.0.set(now);
                if !w.gone && w.conn.timed_out(now) {
                    w.gone = true; // the daemon's sweep closes it
                }
                w.pump(0);
            }
            5 => {
                let n = it.next().unwrap_or(0) as usize;
                w.pump(n * 16);
            }
            6 => {
                w.peer.closed = true;
                w.pump(usize::MAX);
            }
            _ => {
                let listener = if op & 8 != 0 {
                    Listener::Legacy
                } else {
                    Listener::Imds
                };
                w.conn.reset(
                    listener,
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, op)),
                    w.clock.monotonic_us(),
                );
                w.peer = Peer {
                    inbound: Vec::new(),
                    received: Vec::new(),
                    closed: false,
                };
                w.gone = false;
            }
        }
    }
    w.pump(usize::MAX);
});
