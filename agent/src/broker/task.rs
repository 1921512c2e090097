//! The broker task: an `async fn` that takes queued fetches from the agent and performs them
//! over a [`Pipe`] — TCP connect (by the driver), TLS 1.3 (embedded-tls, server certificate
//! chain and name verified against the configured CA: never an unverified connection), the
//! client-credentials request with a fresh client assertion, and the answer. It retries 5xx,
//! 429 and transport failures with back-off (honouring `Retry-After`) within a total time
//! budget, then reports success (token into the cache) or a [`FetchError`] to the agent.
//!
//! Drivers poll the future with a no-op waker on every loop turn (the pipe and the clock are
//! the only things it waits on), so no executor and no allocation are needed.

use super::pin::PinVerifier;
use super::pipe::{Pipe, PipeIo, PipeState, Target};
use super::rng::Rng;
use super::upstream::{self, ResponseError, TokenAnswer, TokenAnswerError};
use super::{assertion, FetchError, JobQueue, JobSpec};
use crate::config::{AuthorityConfig, Trust};
use crate::limits::{
    FETCH_ATTEMPTS, FETCH_ATTEMPT_TIMEOUT_US, FETCH_BACKOFF_FIRST_US, FETCH_CONNECT_TIMEOUT_US,
    FETCH_RETRY_AFTER_MAX_S, TLS_READ_BUF, TLS_WRITE_BUF, TOKEN_MAX, UPSTREAM_RESPONSE_MAX,
};
use core::cell::{Cell, RefCell};
use core::future::{poll_fn, Future};
use core::pin::pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::Poll;
use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CertificateRef, CertificateVerifyRef, CryptoProvider,
    TlsCipherSuite, TlsClock, TlsConfig, TlsConnection, TlsContext, TlsError, TlsVerifier,
};
use imds_hal::text::Text;
use imds_hal::{Clock, Entropy};

/// One event line, built before it is handed to the agent (cut at its capacity).
type EventLine = heapless::String<{ crate::limits::EVENT_LINE_MAX }>;

/// Largest server certificate chain kept during the handshake.
const CERT_CHAIN_MAX: usize = 4096;

/// Wall-clock seconds for certificate validity checks (embedded-tls asks a static clock).
static UNIX_NOW: AtomicU64 = AtomicU64::new(0);

struct CertClock;

impl TlsClock for CertClock {
    fn now() -> Option<u64> {
        match UNIX_NOW.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }
}

/// The configured trust anchor (`ca_cert` or `spki_sha256`) as a TLS verifier.
// No heap to box the larger one in; one lives per in-flight handshake.
#[allow(clippy::large_enum_variant)]
enum Verifier<'a> {
    Ca(CertVerifier<'a, Aes128GcmSha256, CertClock, CERT_CHAIN_MAX>),
    Pin(PinVerifier),
}

impl TlsVerifier<Aes128GcmSha256> for Verifier<'_> {
    fn set_hostname_verification(&mut self, hostname: &str) -> Result<(), TlsError> {
        match self {
            Verifier::Ca(v) => v.set_hostname_verification(hostname),
            Verifier::Pin(v) => v.set_hostname_verification(hostname),
        }
    }

    fn verify_certificate(
        &mut self,
        transcript: &<Aes128GcmSha256 as TlsCipherSuite>::Hash,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        match self {
            Verifier::Ca(v) => v.verify_certificate(transcript, cert),
            Verifier::Pin(v) => v.verify_certificate(transcript, cert),
        }
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        match self {
            Verifier::Ca(v) => v.verify_signature(verify),
            Verifier::Pin(v) => v.verify_signature(verify),
        }
    }
}

struct Provider<'a, E: Entropy> {
    rng: Rng<'a, E>,
    verifier: Verifier<'a>,
}

impl<E: Entropy> CryptoProvider for Provider<'_, E> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = p256::ecdsa::DerSignature;

    fn rng(&mut self) -> impl embedded_tls::CryptoRngCore {
        &mut self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Aes128GcmSha256>, TlsError> {
        Ok(&mut self.verifier)
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum AttemptError {
    Connect,
    Timeout,
    Broken,
    Entropy,
    Tls(TlsError),
    Http(ResponseError),
    Status {
        status: u16,
        retry_after_s: Option<u32>,
    },
    Refused {
        status: u16,
        answer: TokenAnswerError,
    },
    Token(TokenAnswerError),
}

impl AttemptError {
    fn retryable(&self) -> bool {
        matches!(
            self,
            AttemptError::Connect
                | AttemptError::Timeout
                | AttemptError::Broken
                | AttemptError::Tls(TlsError::Io(_))
                | AttemptError::Tls(TlsError::ConnectionClosed)
                | AttemptError::Status { .. }
        )
    }

    /// What the clients waiting for the fetch are told.
    fn fetch_error(&self) -> FetchError {
        match self {
            AttemptError::Connect => FetchError::Unreachable,
            AttemptError::Timeout => FetchError::Timeout,
            AttemptError::Broken
            | AttemptError::Tls(TlsError::Io(_))
            | AttemptError::Tls(TlsError::ConnectionClosed) => FetchError::Broken,
            AttemptError::Status { retry_after_s, .. } => FetchError::Unavailable {
                retry_after_s: *retry_after_s,
            },
            AttemptError::Entropy => FetchError::Entropy,
            AttemptError::Tls(_) => FetchError::Tls,
            AttemptError::Http(_) | AttemptError::Token(_) => FetchError::Unreadable,
            AttemptError::Refused { .. } => FetchError::Refused,
        }
    }
}

impl AttemptError {
    /// The message, written without `core::fmt`; `Display` writes the same.
    fn describe<W: Text + ?Sized>(&self, out: &mut W) {
        match self {
            AttemptError::Connect => {
                out.put("connect failed");
            }
            AttemptError::Timeout => {
                out.put("timed out");
            }
            AttemptError::Broken => {
                out.put("connection broken");
            }
            AttemptError::Entropy => {
                out.put("entropy source failed");
            }
            AttemptError::Tls(e) => {
                out.put("TLS: ").put(tls_error(e));
            }
            AttemptError::Http(e) => {
                out.put("HTTP: ").put(match e {
                    ResponseError::Incomplete => "Incomplete",
                    ResponseError::Malformed => "Malformed",
                });
            }
            AttemptError::Status {
                status,
                retry_after_s,
            } => {
                out.put("HTTP ").dec((*status).into()).put(" (Retry-After ");
                match retry_after_s {
                    Some(s) => out.put("Some(").dec((*s).into()).put(")"),
                    None => out.put("None"),
                };
                out.put(")");
            }
            AttemptError::Refused { status, answer } => {
                out.put("HTTP ").dec((*status).into()).put(": ");
                answer.describe(out);
            }
            AttemptError::Token(e) => e.describe(out),
        }
    }
}

/// embedded-tls's error by the name of its variant (its `Debug`, without the payload of the
/// few that carry one).
fn tls_error(e: &TlsError) -> &'static str {
    match e {
        TlsError::ConnectionClosed => "ConnectionClosed",
        TlsError::Unimplemented => "Unimplemented",
        TlsError::MissingHandshake => "MissingHandshake",
        TlsError::HandshakeAborted(..) => "HandshakeAborted",
        TlsError::AbortHandshake(..) => "AbortHandshake",
        TlsError::IoError => "IoError",
        TlsError::InternalError => "InternalError",
        TlsError::InvalidRecord => "InvalidRecord",
        TlsError::UnknownContentType => "UnknownContentType",
        TlsError::InvalidNonceLength => "InvalidNonceLength",
        TlsError::InvalidTicketLength => "InvalidTicketLength",
        TlsError::UnknownExtensionType => "UnknownExtensionType",
        TlsError::InsufficientSpace => "InsufficientSpace",
        TlsError::InvalidHandshake => "InvalidHandshake",
        TlsError::InvalidCipherSuite => "InvalidCipherSuite",
        TlsError::InvalidSignatureScheme => "InvalidSignatureScheme",
        TlsError::InvalidSignature => "InvalidSignature",
        TlsError::InvalidExtensionsLength => "InvalidExtensionsLength",
        TlsError::InvalidSessionIdLength => "InvalidSessionIdLength",
        TlsError::InvalidSupportedVersions => "InvalidSupportedVersions",
        TlsError::InvalidApplicationData => "InvalidApplicationData",
        TlsError::InvalidKeyShare => "InvalidKeyShare",
        TlsError::InvalidCertificate => "InvalidCertificate",
        TlsError::InvalidCertificateEntry => "InvalidCertificateEntry",
        TlsError::InvalidCertificateRequest => "InvalidCertificateRequest",
        TlsError::InvalidPrivateKey => "InvalidPrivateKey",
        TlsError::UnableToInitializeCryptoEngine => "UnableToInitializeCryptoEngine",
        TlsError::ParseError(_) => "ParseError",
        TlsError::OutOfMemory => "OutOfMemory",
        TlsError::CryptoError => "CryptoError",
        TlsError::EncodeError => "EncodeError",
        TlsError::DecodeError => "DecodeError",
        TlsError::Io(_) => "Io",
    }
}

impl core::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.describe(f);
        Ok(())
    }
}

/// Run `fut` until it completes or the monotonic clock passes `deadline_us`.
async fn until<C: Clock, F: Future>(clock: &C, deadline_us: u64, fut: F) -> Option<F::Output> {
    let mut fut = pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(v) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(v));
        }
        if clock.monotonic_us() >= deadline_us {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    })
    .await
}

async fn sleep_until<C: Clock>(clock: &C, t_us: u64) {
    poll_fn(|_| {
        if clock.monotonic_us() >= t_us {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Wait until the driver has opened (or failed to open) the connection.
async fn connected(pipe: &Pipe) -> bool {
    poll_fn(|_| match pipe.state() {
        PipeState::Open => Poll::Ready(true),
        PipeState::Failed | PipeState::Idle => Poll::Ready(false),
        _ => Poll::Pending,
    })
    .await
}

/// Wait until the driver has closed the socket.
async fn closed(pipe: &Pipe) {
    pipe.request_close();
    poll_fn(|_| {
        if pipe.state() == PipeState::Idle {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// Buffers of one task (kept in the task's future: no heap).
pub struct TaskBuffers {
    tls_read: [u8; TLS_READ_BUF],
    tls_write: [u8; TLS_WRITE_BUF],
    request: heapless::String<{ TOKEN_MAX + 2048 }>,
    response: [u8; UPSTREAM_RESPONSE_MAX],
}

impl TaskBuffers {
    /// Zeroed buffers.
    pub const fn new() -> Self {
        TaskBuffers {
            tls_read: [0; TLS_READ_BUF],
            tls_write: [0; TLS_WRITE_BUF],
            request: heapless::String::new(),
            response: [0; UPSTREAM_RESPONSE_MAX],
        }
    }
}

impl Default for TaskBuffers {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(clippy::too_many_arguments)]
async fn attempt<C: Clock, E: Entropy>(
    authority: &AuthorityConfig,
    job: &JobSpec,
    pipe: &Pipe,
    clock: &C,
    entropy: &mut E,
    bufs: &mut TaskBuffers,
) -> Result<TokenAnswer, AttemptError> {
    pipe.request_connect(Target {
        host: authority.host.clone(),
        port: authority.port,
        address: authority.address,
    });
    let connect_deadline = clock.monotonic_us() + FETCH_CONNECT_TIMEOUT_US;
    match until(clock, connect_deadline, connected(pipe)).await {
        Some(true) => {}
        Some(false) => return Err(AttemptError::Connect),
        None => return Err(AttemptError::Timeout),
    }
    UNIX_NOW.store(clock.unix_time_s(), Ordering::Relaxed);
    let failed = Cell::new(false);
    let mut tls: TlsConnection<'_, PipeIo<'_>, Aes128GcmSha256> =
        TlsConnection::new(PipeIo(pipe), &mut bufs.tls_read, &mut bufs.tls_write);
    let config = TlsConfig::new().with_server_name(&authority.host);
    // RSA server certificates (Entra ID) need the RSA signature schemes offered.
    #[cfg(feature = "rsa")]
    let config = config.enable_rsa_signatures();
    let provider = Provider {
        rng: Rng {
            entropy,
            failed: &failed,
        },
        verifier: match &authority.trust {
            Trust::Ca(der) => Verifier::Ca(CertVerifier::new(Certificate::X509(&der[..]))),
            Trust::SpkiSha256(pin) => Verifier::Pin(PinVerifier::new(*pin)),
        },
    };
    tls.open(TlsContext::new(&config, provider))
        .await
        .map_err(AttemptError::Tls)?;
    if failed.get() {
        return Err(AttemptError::Entropy);
    }

    // The request, with a fresh assertion.
    let mut assertion_buf = heapless::Vec::new();
    assertion::sign(
        &job.credential,
        &job.client_id,
        &authority.token_url,
        clock.unix_time_s(),
        entropy,
        &mut assertion_buf,
    )
    .map_err(|_| AttemptError::Entropy)?;
    let written = upstream::write_token_request(
        &mut bufs.request,
        &authority.host,
        authority.port,
        &authority.path,
        authority.style,
        &job.client_id,
        &job.resource,
        core::str::from_utf8(&assertion_buf).unwrap_or(""),
    );
    zeroize::Zeroize::zeroize(assertion_buf.as_mut_slice());
    if written.is_err() {
        wipe(&mut bufs.request);
        return Err(AttemptError::Http(ResponseError::Malformed));
    }
    // A v2 answer's lifetime counts from here (see `parse_token_body`).
    let sent_at = clock.unix_time_s();
    let sent = write_all(&mut tls, bufs.request.as_bytes()).await;
    wipe(&mut bufs.request);
    sent?;

    // The answer.
    let mut len = 0;
    let mut eof = false;
    let outcome = loop {
        if !eof {
            if len == bufs.response.len() {
                break Err(AttemptError::Http(ResponseError::Malformed));
            }
            match tls.read(&mut bufs.response[len..]).await {
                Ok(0) | Err(TlsError::ConnectionClosed) => eof = true,
                Ok(n) => len += n,
                // After the handshake, a failing read is a broken connection (transient).
                Err(_) => break Err(AttemptError::Broken),
            }
        }
        match upstream::parse_response(&mut bufs.response[..len], eof) {
            Err(ResponseError::Incomplete) if !eof => continue,
            Err(e) => break Err(AttemptError::Http(e)),
            Ok(answer) => {
                break match answer.status {
                    200 => upstream::parse_token_body(answer.body, sent_at)
                        .map_err(AttemptError::Token),
                    429 | 500..=599 => Err(AttemptError::Status {
                        status: answer.status,
                        retry_after_s: answer.retry_after_s,
                    }),
                    status => Err(AttemptError::Refused {
                        status,
                        answer: match upstream::parse_token_body(answer.body, sent_at) {
                            Err(e) => e,
                            Ok(_) => TokenAnswerError::Malformed("a token with an error status"),
                        },
                    }),
                };
            }
        }
    };
    // The answer held the token: wipe the buffer.
    bufs.response[..len].iter_mut().for_each(|b| *b = 0);
    outcome
}

fn wipe<const N: usize>(s: &mut heapless::String<N>) {
    let mut v = core::mem::take(s).into_bytes();
    zeroize::Zeroize::zeroize(v.as_mut_slice());
}

async fn write_all(
    tls: &mut TlsConnection<'_, PipeIo<'_>, Aes128GcmSha256>,
    mut data: &[u8],
) -> Result<(), AttemptError> {
    while !data.is_empty() {
        let n = tls.write(data).await.map_err(|_| AttemptError::Broken)?;
        if n == 0 {
            return Err(AttemptError::Broken);
        }
        data = &data[n..];
    }
    tls.flush().await.map_err(|_| AttemptError::Broken)
}

/// The broker task: forever take a queued job, fetch, report. `agent` is shared with the
/// driver's HTTP connections (never borrowed across an `await`).
pub async fn run<A: JobQueue, C: Clock, E: Entropy>(
    agent: &RefCell<A>,
    authority: &AuthorityConfig,
    pipe: &Pipe,
    clock: &C,
    mut entropy: E,
    bufs: &mut TaskBuffers,
) {
    loop {
        let job = poll_fn(|_| match agent.borrow_mut().start_job() {
            Some(j) => Poll::Ready(j),
            None => Poll::Pending,
        })
        .await;
        let started = clock.monotonic_us();
        let total_deadline = started + authority.timeout_us;
        let mut attempt_no = 0;
        let result = loop {
            attempt_no += 1;
            // One attempt may use half the budget (at least FETCH_ATTEMPT_TIMEOUT_US).
            let attempt_us = FETCH_ATTEMPT_TIMEOUT_US.max(authority.timeout_us / 2);
            let deadline = (clock.monotonic_us() + attempt_us).min(total_deadline);
            let r = until(
                clock,
                deadline,
                attempt(authority, &job, pipe, clock, &mut entropy, bufs),
            )
            .await
            .unwrap_or(Err(AttemptError::Timeout));
            closed(pipe).await;
            match r {
                Ok(answer) => break Ok(answer),
                Err(e) => {
                    let now = clock.monotonic_us();
                    let backoff_us = match &e {
                        AttemptError::Status {
                            retry_after_s: Some(s),
                            ..
                        } => (*s as u64).min(FETCH_RETRY_AFTER_MAX_S) * 1_000_000,
                        _ => FETCH_BACKOFF_FIRST_US << attempt_no.min(4),
                    };
                    if !e.retryable()
                        || attempt_no >= FETCH_ATTEMPTS
                        || now + backoff_us >= total_deadline
                    {
                        break Err(e);
                    }
                    let mut line = EventLine::new();
                    line.put("upstream: ")
                        .put(&job.client_id)
                        .put(" ")
                        .put(&job.resource)
                        .put(": attempt ")
                        .dec(attempt_no.into())
                        .put(" failed (");
                    e.describe(&mut line);
                    line.put("); retrying in ")
                        .dec(backoff_us / 1000)
                        .put(" ms");
                    agent.borrow_mut().event(&line);
                    sleep_until(clock, now + backoff_us).await;
                }
            }
        };
        let elapsed_ms = (clock.monotonic_us() - started) / 1000;
        let mut a = agent.borrow_mut();
        match result {
            Ok(answer) => {
                let mut line = EventLine::new();
                line.put("upstream: ")
                    .put(&job.client_id)
                    .put(" ")
                    .put(&job.resource)
                    .put(": token (expires in ")
                    .dec(answer.expires_on.saturating_sub(clock.unix_time_s()))
                    .put(" s) in ")
                    .dec(elapsed_ms)
                    .put(" ms");
                a.event(&line);
                a.finish_job(
                    job.identity,
                    &job.resource,
                    Ok(answer),
                    clock.monotonic_us(),
                );
            }
            Err(e) => {
                let mut line = EventLine::new();
                line.put("upstream: ")
                    .put(&job.client_id)
                    .put(" ")
                    .put(&job.resource)
                    .put(": failed after ")
                    .dec(attempt_no.into())
                    .put(" attempt(s) in ")
                    .dec(elapsed_ms)
                    .put(" ms: ");
                e.describe(&mut line);
                a.event(&line);
                a.finish_job(
                    job.identity,
                    &job.resource,
                    Err(e.fetch_error()),
                    clock.monotonic_us(),
                );
            }
        }
    }
}
