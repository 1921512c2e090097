//! The byte pipe between an upstream TCP connection and the TLS session that runs over it.
//!
//! The broker task is an `async fn` that never touches a socket: it reads and writes this pipe
//! (through [`PipeIo`], an `embedded-io-async` stream) and asks for a connection by setting
//! the pipe's state. The driver — the host daemon's event loop, or the unikernel's smoltcp loop
//! — opens the real socket, moves bytes both ways and reports what happened. Single-threaded:
//! the two sides take turns, so a `RefCell` is all the sharing needed.

use crate::limits::{HOST_NAME_MAX, UPSTREAM_PIPE_BUF};
use core::cell::RefCell;
use core::net::SocketAddr;
use core::task::Poll;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name (TLS server name; resolved unless `address` is set).
    pub host: heapless::String<HOST_NAME_MAX>,
    /// TCP port.
    pub port: u16,
    /// A fixed address (no DNS) if configured.
    pub address: Option<SocketAddr>,
}

/// The connection's life, as both sides see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeState {
    /// No connection.
    Idle,
    /// The task wants a connection to [`PipeInner::target`]; the driver has not started yet.
    ConnectRequested,
    /// The driver is connecting (DNS, SYN).
    Connecting,
    /// Connected: bytes flow.
    Open,
    /// The task is done with the connection: the driver closes the socket, then sets `Idle`.
    CloseRequested,
    /// Connecting failed or the connection broke.
    Failed,
}

#[derive(Debug)]
/// The shared state of a [`Pipe`].
pub struct PipeInner {
    /// Where the connection is.
    pub state: PipeState,
    /// A connect request the driver has not taken yet.
    pub target: Option<Target>,
    /// Socket → TLS.
    pub rx: heapless::Deque<u8, UPSTREAM_PIPE_BUF>,
    /// TLS → socket.
    pub tx: heapless::Deque<u8, UPSTREAM_PIPE_BUF>,
    /// The peer closed its side.
    pub rx_eof: bool,
}

/// One upstream connection slot.
#[derive(Debug)]
pub struct Pipe {
    inner: RefCell<PipeInner>,
}

impl Default for Pipe {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipe {
    /// An idle pipe.
    pub const fn new() -> Self {
        Pipe {
            inner: RefCell::new(PipeInner {
                state: PipeState::Idle,
                target: None,
                rx: heapless::Deque::new(),
                tx: heapless::Deque::new(),
                rx_eof: false,
            }),
        }
    }

    /// Where the connection is.
    pub fn state(&self) -> PipeState {
        self.inner.borrow().state
    }

    // ---- task side ----

    /// Ask the driver for a new connection.
    pub fn request_connect(&self, target: Target) {
        let mut p = self.inner.borrow_mut();
        p.rx.clear();
        p.tx.clear();
        p.rx_eof = false;
        p.target = Some(target);
        p.state = PipeState::ConnectRequested;
    }

    /// Ask the driver to close the connection.
    pub fn request_close(&self) {
        let mut p = self.inner.borrow_mut();
        if p.state != PipeState::Idle {
            p.state = PipeState::CloseRequested;
        }
    }

    // ---- driver side ----

    /// A connection the driver should open, if any (moves the state to `Connecting`).
    pub fn take_connect_request(&self) -> Option<Target> {
        let mut p = self.inner.borrow_mut();
        if p.state == PipeState::ConnectRequested {
            p.state = PipeState::Connecting;
            p.target.clone()
        } else {
            None
        }
    }

    /// The driver's socket is connected.
    pub fn set_open(&self) {
        let mut p = self.inner.borrow_mut();
        if p.state == PipeState::Connecting {
            p.state = PipeState::Open;
        }
    }

    /// Connecting failed, or the connection broke.
    pub fn set_failed(&self) {
        let mut p = self.inner.borrow_mut();
        if p.state != PipeState::Idle && p.state != PipeState::CloseRequested {
            p.state = PipeState::Failed;
        }
    }

    /// The driver closed the socket after `CloseRequested`.
    pub fn set_closed(&self) {
        let mut p = self.inner.borrow_mut();
        p.state = PipeState::Idle;
        p.rx.clear();
        p.tx.clear();
    }

    /// Whether the driver should close its socket now.
    pub fn wants_close(&self) -> bool {
        matches!(self.state(), PipeState::CloseRequested | PipeState::Failed)
    }

    /// Free room for bytes from the socket.
    pub fn rx_room(&self) -> usize {
        let p = self.inner.borrow();
        p.rx.capacity() - p.rx.len()
    }

    /// Bytes received from the socket (at most [`rx_room`](Self::rx_room) are taken).
    pub fn push_rx(&self, data: &[u8]) -> usize {
        let mut p = self.inner.borrow_mut();
        let mut n = 0;
        for &b in data {
            if p.rx.push_back(b).is_err() {
                break;
            }
            n += 1;
        }
        n
    }

    /// The peer closed its side of the connection.
    pub fn set_rx_eof(&self) {
        self.inner.borrow_mut().rx_eof = true;
    }

    /// Copy bytes waiting to be sent into `out` without removing them.
    pub fn peek_tx(&self, out: &mut [u8]) -> usize {
        let p = self.inner.borrow();
        let (a, b) = p.tx.as_slices();
        let n1 = a.len().min(out.len());
        out[..n1].copy_from_slice(&a[..n1]);
        let n2 = b.len().min(out.len() - n1);
        out[n1..n1 + n2].copy_from_slice(&b[..n2]);
        n1 + n2
    }

    /// `n` bytes of the pending output were sent.
    pub fn consume_tx(&self, n: usize) {
        let mut p = self.inner.borrow_mut();
        for _ in 0..n {
            p.tx.pop_front();
        }
    }

    /// Whether bytes wait to be sent.
    pub fn has_tx(&self) -> bool {
        !self.inner.borrow().tx.is_empty()
    }
}

/// Errors of the pipe stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeError {
    /// The connection failed or is not open.
    Broken,
}

impl embedded_io::Error for PipeError {
    fn kind(&self) -> embedded_io::ErrorKind {
        embedded_io::ErrorKind::ConnectionReset
    }
}

impl core::fmt::Display for PipeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("upstream connection broken")
    }
}

impl core::error::Error for PipeError {}

/// The task's view of a pipe: an async byte stream.
pub struct PipeIo<'p>(pub &'p Pipe);

impl embedded_io::ErrorType for PipeIo<'_> {
    type Error = PipeError;
}

impl embedded_io_async::Read for PipeIo<'_> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, PipeError> {
        core::future::poll_fn(|_| {
            let mut p = self.0.inner.borrow_mut();
            if !p.rx.is_empty() {
                let mut n = 0;
                while n < buf.len() {
                    match p.rx.pop_front() {
                        Some(b) => {
                            buf[n] = b;
                            n += 1;
                        }
                        None => break,
                    }
                }
                return Poll::Ready(Ok(n));
            }
            match p.state {
                PipeState::Open if p.rx_eof => Poll::Ready(Ok(0)),
                PipeState::Open | PipeState::Connecting | PipeState::ConnectRequested => {
                    Poll::Pending
                }
                _ => Poll::Ready(Err(PipeError::Broken)),
            }
        })
        .await
    }
}

impl embedded_io_async::Write for PipeIo<'_> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, PipeError> {
        core::future::poll_fn(|_| {
            let mut p = self.0.inner.borrow_mut();
            if p.state != PipeState::Open {
                return Poll::Ready(Err(PipeError::Broken));
            }
            let mut n = 0;
            for &b in buf {
                if p.tx.push_back(b).is_err() {
                    break;
                }
                n += 1;
            }
            if n == 0 && !buf.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(Ok(n))
            }
        })
        .await
    }

    async fn flush(&mut self) -> Result<(), PipeError> {
        core::future::poll_fn(|_| {
            let p = self.0.inner.borrow();
            if p.state != PipeState::Open {
                Poll::Ready(Err(PipeError::Broken))
            } else if p.tx.is_empty() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        })
        .await
    }
}
