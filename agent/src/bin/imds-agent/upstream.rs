//! The host daemon's driver for broker mode: one non-blocking TCP socket per broker task,
//! moving bytes between it and the task's [`Pipe`] (`imds_agent::broker::runner::Runner`
//! polls the task futures).

use imds_agent::broker::pipe::{Pipe, PipeState, Target};
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};

/// mio tokens of upstream sockets start here.
pub const FIRST_UPSTREAM: usize = 8;

/// One upstream socket slot.
#[derive(Default)]
pub struct Slot {
    stream: Option<TcpStream>,
    connected: bool,
}

fn resolve(t: &Target) -> Option<SocketAddr> {
    if let Some(a) = t.address {
        return Some(a);
    }
    // Host names resolve through the system resolver (blocking, but only at connect time);
    // IPv4 first, as `localhost` often lists ::1 before 127.0.0.1.
    let addrs: Vec<SocketAddr> = (t.host.as_str(), t.port).to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

/// Move bytes for one pipe. Returns whether anything happened.
pub fn drive(pipe: &Pipe, slot: &mut Slot, index: usize, registry: &Registry) -> bool {
    let mut progress = false;
    if pipe.wants_close() {
        if let Some(mut s) = slot.stream.take() {
            let _ = registry.deregister(&mut s);
        }
        slot.connected = false;
        if pipe.state() == PipeState::CloseRequested {
            pipe.set_closed();
        }
        return true;
    }
    if let Some(target) = pipe.take_connect_request() {
        progress = true;
        match resolve(&target).map(TcpStream::connect) {
            Some(Ok(mut s)) => {
                if registry
                    .register(
                        &mut s,
                        Token(FIRST_UPSTREAM + index),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_ok()
                {
                    let _ = s.set_nodelay(true);
                    slot.stream = Some(s);
                    slot.connected = false;
                } else {
                    pipe.set_failed();
                }
            }
            _ => pipe.set_failed(),
        }
    }
    let Some(stream) = slot.stream.as_mut() else {
        return progress;
    };
    if !slot.connected {
        match stream.take_error() {
            Ok(Some(_)) | Err(_) => {
                pipe.set_failed();
                return true;
            }
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => {
                slot.connected = true;
                pipe.set_open();
                progress = true;
            }
            Err(e) if e.kind() == ErrorKind::NotConnected => return progress,
            Err(_) => {
                pipe.set_failed();
                return true;
            }
        }
    }
    // Socket ← pipe.
    let mut buf = [0u8; 4096];
    while pipe.has_tx() {
        let n = pipe.peek_tx(&mut buf);
        match stream.write(&buf[..n]) {
            Ok(0) => break,
            Ok(w) => {
                pipe.consume_tx(w);
                progress = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                pipe.set_failed();
                return true;
            }
        }
    }
    // Socket → pipe.
    loop {
        let room = pipe.rx_room().min(buf.len());
        if room == 0 {
            break;
        }
        match stream.read(&mut buf[..room]) {
            Ok(0) => {
                pipe.set_rx_eof();
                progress = true;
                break;
            }
            Ok(n) => {
                pipe.push_rx(&buf[..n]);
                progress = true;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                pipe.set_failed();
                return true;
            }
        }
    }
    progress
}
