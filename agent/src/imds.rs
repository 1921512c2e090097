//! The IMDS router: every rule of the wire contract (PROTOCOL.md §1, §2, §4) in one place.
//!
//! Input: a parsed [`Request`], the wall-clock time and an entropy source. Output: a [`Reply`]
//! (status, JSON body, headers). The router never touches sockets; errors of every other module
//! are mapped to wire error codes here and nowhere else.

use crate::agent::Agent;
#[cfg(feature = "broker")]
use crate::broker::FetchError;
use crate::config::Guid;
use crate::fields::{Fields, Value};
use crate::guard::Refusal;
use crate::http::HttpError;
use crate::http::{ContentType, Method, Request};
use crate::identity::{SelectError, Selector};
use crate::limits::{
    CONN_TX_BUF, DESCRIPTION_MAX, PARAM_DECODE_BUF, RESOURCE_MAX, RETRY_AFTER_DEFAULT_S,
};
use crate::oidc;
use crate::query;
use crate::query::QueryError;
use crate::token::Token;
use crate::token::{MintError, Need, Obtained, TokenError};
use imds_hal::text::Text;
use imds_hal::Entropy;
use serde::Serialize;

/// Which listener a request arrived on (for logs; routes are the same on both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// `169.254.169.254:80` (or the configured IMDS address).
    Imds,
    /// The legacy VM-extension endpoint, `localhost:50342`.
    Legacy,
    /// App Service / Functions (`app_service`, host daemon; module `hosts`).
    AppService,
    /// Azure ML (`azure_ml`, host daemon; module `hosts`).
    AzureMl,
    /// Azure Arc (`arc`, host daemon; module `hosts`).
    Arc,
}

/// IMDS api-versions the agent accepts (every published one; token endpoint: from 2018-02-01).
pub const API_VERSIONS: &[&str] = &[
    "2017-03-01",
    "2017-04-02",
    "2017-08-01",
    "2017-10-01",
    "2017-12-01",
    "2018-02-01",
    "2018-04-02",
    "2018-10-01",
    "2019-02-01",
    "2019-03-11",
    "2019-04-30",
    "2019-06-01",
    "2019-06-04",
    "2019-08-01",
    "2019-08-15",
    "2019-11-01",
    "2020-06-01",
    "2020-07-15",
    "2020-09-01",
    "2020-10-01",
    "2020-12-01",
    "2021-01-01",
    "2021-02-01",
    "2021-03-01",
    "2021-05-01",
    "2021-08-01",
    "2021-10-01",
    "2021-11-01",
    "2021-11-15",
    "2021-12-13",
    "2022-02-01",
    "2022-03-01",
    "2022-05-01",
    "2022-07-01",
    "2022-08-01",
    "2022-09-01",
    "2022-11-01",
    "2023-07-01",
    "2023-11-15",
    "2024-03-15",
    "2024-07-17",
    "2025-04-07",
];
/// First api-version of the managed-identity token endpoint.
pub const TOKEN_MIN_API_VERSION: &str = "2018-02-01";
/// What an api-version error lists as `newest-versions` (newest first).
pub const NEWEST_VERSIONS: [&str; 3] = ["2025-04-07", "2024-07-17", "2024-03-15"];

/// What the router knows about a request besides its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctx {
    /// The time the request is handled at.
    pub now: Now,
    /// The source address.
    pub peer: core::net::IpAddr,
    /// When this request started waiting for a fetch, if it does.
    pub parked_since_us: Option<u64>,
}

/// The two clocks a request is handled at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall clock, Unix seconds (token times).
    pub unix_s: u64,
    /// Monotonic microseconds (timeouts, holds).
    pub mono_us: u64,
}

/// What the router answers.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// The body's type.
    pub content_type: ContentType,
    /// A `Retry-After` header.
    pub retry_after_s: Option<u32>,
    /// An `Allow` header (405).
    pub allow: Option<&'static str>,
    /// The body.
    pub body: heapless::Vec<u8, CONN_TX_BUF>,
    /// Client id of the identity a token was issued for (for the log line).
    pub client_id: Option<Guid>,
    /// Close the connection after this reply.
    pub close: bool,
    /// No answer yet: the request waits for an upstream fetch (the connection keeps it and
    /// asks again on the next loop turn).
    pub pending: bool,
    /// The body is not in `body` but rendered by the connection chunk by chunk (instance
    /// metadata, module `metadata`).
    pub big: Option<crate::metadata::BodySource>,
    /// Azure Arc's 401 challenge (`Basic realm=<key file>`; host daemon, module `hosts`).
    #[cfg(feature = "std")]
    pub challenge: Option<heapless::String<{ crate::limits::ARC_CHALLENGE_HEADER_MAX }>>,
}

impl Reply {
    /// An empty reply.
    pub const fn new() -> Reply {
        Reply {
            status: 500,
            content_type: ContentType::Json,
            retry_after_s: None,
            allow: None,
            body: heapless::Vec::new(),
            client_id: None,
            close: false,
            pending: false,
            big: None,
            #[cfg(feature = "std")]
            challenge: None,
        }
    }

    /// Reset to the empty state (reuse without a new stack frame).
    pub fn clear(&mut self) {
        self.status = 500;
        self.content_type = ContentType::Json;
        self.retry_after_s = None;
        self.allow = None;
        self.body.clear();
        self.client_id = None;
        self.close = false;
        self.pending = false;
        self.big = None;
        #[cfg(feature = "std")]
        {
            self.challenge = None;
        }
    }

    /// The `WWW-Authenticate` header to send, if any.
    pub fn www_authenticate(&self) -> Option<&str> {
        #[cfg(feature = "std")]
        return self.challenge.as_deref();
        #[cfg(not(feature = "std"))]
        None
    }

    pub(crate) fn json<T: Serialize>(&mut self, status: u16, value: &T) {
        self.status = status;
        self.content_type = ContentType::Json;
        self.body.clear();
        let _ = self.body.resize(self.body.capacity(), 0);
        match serde_json_core::to_slice(value, &mut self.body) {
            Ok(n) => self.body.truncate(n),
            Err(_) => {
                self.body.clear();
                self.status = 500;
                let _ = self.body.extend_from_slice(
                    br#"{"error":"server_error","error_description":"Response too large"}"#,
                );
            }
        }
    }

    /// A flat IMDS error body.
    pub fn error(&mut self, status: u16, code: &str, description: &str) {
        self.json(
            status,
            &Fields(&[
                ("error", Value::Str(code)),
                ("error_description", Value::Str(description)),
            ]),
        );
    }

    /// The answer to `error` (its [`wire`] form).
    pub fn fail(&mut self, error: Error) {
        let w = wire(error);
        let mut description: heapless::String<DESCRIPTION_MAX> = heapless::String::new();
        w.description.describe(&mut description);
        self.retry_after_s = w.retry_after_s;
        if w.newest_versions {
            self.api_version_error(&description);
        } else {
            self.error(w.status, w.code, &description);
        }
    }

    fn api_version_error(&mut self, description: &str) {
        self.json(
            400,
            &Fields(&[
                ("error", Value::Str("invalid_request")),
                ("error_description", Value::Str(description)),
                ("newest-versions", Value::Strs(&NEWEST_VERSIONS)),
            ]),
        );
    }
}

impl Default for Reply {
    fn default() -> Self {
        Reply::new()
    }
}

// ---- The one wire-error table -----------------------------------------------------------------

/// The router's own reasons to refuse a request (the other modules' errors have their types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestError {
    /// 404: no such path.
    PathNotFound,
    /// 405: not a method the endpoint answers.
    MethodNotAllowed,
    /// 400: no `Metadata: true`.
    MetadataHeaderMissing,
    /// 400: `X-Forwarded-For` or `Forwarded`.
    Proxied,
    /// 400: the query string cannot be read.
    InvalidQuery,
    /// 400: no `api-version`.
    ApiVersionMissing,
    /// 400: an `api-version` the endpoint does not know.
    ApiVersionInvalid,
    /// 400: a POST that is not a form.
    NotForm,
    /// 400: no `resource`.
    ResourceMissing,
    /// 400: a `resource` longer than [`RESOURCE_MAX`].
    ResourceTooLong,
    /// 400: a parameter given twice.
    RepeatedParameter,
    /// 400: the selected identity does not exist.
    IdentityNotFound,
    /// 500: no issuer and no authority.
    NoTokenSource,
    /// 500: the answer does not fit the reply buffer.
    ResponseTooLarge,
    /// A parked request waited longer than [`crate::limits::FETCH_WAIT_MAX_US`] for its fetch.
    FetchWaitTimeout,
    /// The job table is full.
    FetchesFull,
    /// 400: an attested-document `nonce` that is not 1 to 32 alphanumerics.
    NonceInvalid,
    /// 500: the attested document could not be signed.
    AttestationFailed,
    /// 400: a scheduled-events `POST` body that is not `{"StartRequests":[{"EventId":…}]}`.
    StartRequestMalformed,
    /// 400: a scheduled-events `POST` naming an event that is not in the document.
    EventIdUnknown,
}

/// Every error the agent answers with, whichever module found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The request cannot be read (`http`).
    Http(HttpError),
    /// The query string or form body cannot be decoded (`query`).
    Query(QueryError),
    /// The router's own checks.
    Request(RequestError),
    /// No single identity matches (`identity`).
    Select(SelectError),
    /// Minting failed (`token::issuer`).
    Mint(MintError),
    /// The fetch from the authority failed (`broker`).
    #[cfg(feature = "broker")]
    Fetch(FetchError),
    /// The guard refused: allow-lists, rate, in-flight (`guard`).
    Refused(Refusal),
}

/// An error as it goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    /// HTTP status.
    pub status: u16,
    /// The `error` field.
    pub code: &'static str,
    /// The `error_description` field.
    pub description: Description,
    /// The `Retry-After` header.
    pub retry_after_s: Option<u32>,
    /// The body also lists `newest-versions` (api-version errors).
    pub newest_versions: bool,
}

/// An `error_description`: fixed text, or the error's own `Display`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Description {
    /// Fixed text.
    Text(&'static str),
    /// The HTTP error's text.
    Http(HttpError),
    /// The query error's text.
    Query(QueryError),
}

impl Description {
    /// The text, written without `core::fmt`; `Display` writes the same.
    pub fn describe<W: Text + ?Sized>(&self, out: &mut W) {
        match self {
            Description::Text(t) => {
                out.put(t);
            }
            Description::Http(e) => e.describe(out),
            Description::Query(e) => {
                out.put(e.as_str());
            }
        }
    }
}

impl core::fmt::Display for Description {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.describe(f);
        Ok(())
    }
}

impl From<TokenError> for Error {
    fn from(e: TokenError) -> Error {
        match e {
            TokenError::NoTokenSource => Error::Request(RequestError::NoTokenSource),
            TokenError::Mint(e) => Error::Mint(e),
            TokenError::Refused(r) => Error::Refused(r),
            #[cfg(feature = "broker")]
            TokenError::Fetch(e) => Error::Fetch(e),
            #[cfg(feature = "broker")]
            TokenError::FetchesFull => Error::Request(RequestError::FetchesFull),
        }
    }
}

/// The one table from errors to the wire: status, code, description, Retry-After.
pub fn wire(error: Error) -> WireError {
    use Description::Text;
    use RequestError as R;
    let (status, description, retry_after_s) = match error {
        Error::Http(e) => (e.status(), Description::Http(e), None),
        Error::Query(e) => (400, Description::Query(e), None),
        Error::Request(e) => match e {
            R::PathNotFound => (404, Text("Path not found"), None),
            R::MethodNotAllowed => (405, Text("The requested method is not allowed"), None),
            R::MetadataHeaderMissing => (400, Text("Required metadata header not specified"), None),
            R::Proxied => (
                400,
                Text("Request through a proxy (X-Forwarded-For / Forwarded) is not allowed"),
                None,
            ),
            R::InvalidQuery => (400, Text("Invalid query string"), None),
            R::ApiVersionMissing => (
                400,
                Text("Required query variable 'api-version' is missing"),
                None,
            ),
            R::ApiVersionInvalid => (
                400,
                Text("Bad request. api-version is invalid or was not specified in the request."),
                None,
            ),
            R::NotForm => (
                400,
                Text("POST body must be application/x-www-form-urlencoded"),
                None,
            ),
            R::ResourceMissing => (
                400,
                Text("Required query variable 'resource' is missing"),
                None,
            ),
            R::ResourceTooLong => (400, Text("Parameter 'resource' is too long"), None),
            R::RepeatedParameter => (
                400,
                Text("A query parameter is specified more than once"),
                None,
            ),
            R::IdentityNotFound => (400, Text("Identity not found"), None),
            R::NoTokenSource => (500, Text("No token source configured"), None),
            R::ResponseTooLarge => (500, Text("Response too large"), None),
            R::FetchWaitTimeout => (
                503,
                Text("Timed out waiting for the token authority"),
                Some(RETRY_AFTER_DEFAULT_S),
            ),
            R::FetchesFull => (503, Text("Too many token requests in progress"), Some(1)),
            R::NonceInvalid => (
                400,
                Text("Parameter 'nonce' must be at most 32 alphanumeric characters"),
                None,
            ),
            R::AttestationFailed => (500, Text("The attested document could not be signed"), None),
            R::StartRequestMalformed => (
                400,
                Text("Bad request. The body must be {\"StartRequests\":[{\"EventId\":\"<id>\"}]}"),
                None,
            ),
            R::EventIdUnknown => (
                400,
                Text("Bad request. An EventId is not a current scheduled event"),
                None,
            ),
        },
        Error::Select(e) => (400, Text(e.description()), None),
        Error::Mint(MintError::TooLarge) => (400, Text("Parameter 'resource' is too long"), None),
        Error::Mint(MintError::Entropy(_)) => {
            (500, Text("Token service unavailable: no entropy"), None)
        }
        #[cfg(feature = "broker")]
        Error::Fetch(e) => {
            let unavailable = |t, after: Option<u32>| {
                (503, Text(t), Some(after.unwrap_or(RETRY_AFTER_DEFAULT_S)))
            };
            match e {
                FetchError::Unreachable => unavailable("The token authority is unreachable", None),
                FetchError::Timeout => {
                    unavailable("The token authority did not answer in time", None)
                }
                FetchError::Broken => {
                    unavailable("The connection to the token authority broke", None)
                }
                FetchError::Unavailable { retry_after_s } => {
                    unavailable("The token authority is unavailable", retry_after_s)
                }
                FetchError::Entropy => (500, Text("No entropy for the TLS handshake"), None),
                FetchError::Tls => (
                    500,
                    Text(
                        "TLS with the token authority failed (untrusted certificate or wrong name)",
                    ),
                    None,
                ),
                FetchError::Unreadable => (
                    500,
                    Text("The token authority sent an unreadable answer"),
                    None,
                ),
                FetchError::Refused => (
                    500,
                    Text("The token authority refused the token request"),
                    None,
                ),
                FetchError::NoCredential => (
                    500,
                    Text("The identity has no credential for the token authority"),
                    None,
                ),
            }
        }
        Error::Refused(Refusal::TooMany { retry_after_s }) => {
            (429, Text("Too many requests"), Some(retry_after_s))
        }
        Error::Refused(Refusal::SourceNotAllowed) => (
            403,
            Text("The source address is not allowed to get tokens"),
            None,
        ),
        Error::Refused(Refusal::HostNotAllowed) => (
            403,
            Text("The Host header names a host that is not allowed"),
            None,
        ),
    };
    WireError {
        status,
        code: error_code(status),
        description,
        retry_after_s,
        newest_versions: matches!(
            error,
            Error::Request(R::ApiVersionMissing | R::ApiVersionInvalid)
        ),
    }
}

/// The error code IMDS uses for a status.
fn error_code(status: u16) -> &'static str {
    match status {
        400 | 413 | 414 | 431 => "invalid_request",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        429 => "too_many_requests",
        503 => "service_unavailable",
        _ => "server_error",
    }
}

pub(crate) fn decimal(n: u64) -> heapless::String<20> {
    let mut s = heapless::String::new();
    s.dec(n);
    s
}

pub(crate) fn path_is(path: &str, route: &str) -> bool {
    let p = if path.len() > 1 {
        path.strip_suffix('/').unwrap_or(path)
    } else {
        path
    };
    p.eq_ignore_ascii_case(route)
}

pub(crate) fn metadata_header_ok(req: &Request<'_>) -> bool {
    req.header("metadata")
        .map(|v| crate::http::trim(v).eq_ignore_ascii_case(b"true"))
        .unwrap_or(false)
}

pub(crate) fn proxied(req: &Request<'_>) -> bool {
    req.has_header("x-forwarded-for") || req.has_header("forwarded")
}

/// Handle one request.
///
/// Never inlined: the router's locals otherwise end up in the frame of the driver's loop
/// (the image's `serve`), whose every stack access then needs a 32-bit displacement (issuer
/// image -896 B).
#[inline(never)]
pub fn handle<E: Entropy>(
    agent: &mut Agent,
    req: &Request<'_>,
    ctx: &Ctx,
    entropy: &mut E,
    reply: &mut Reply,
) {
    route(agent, req, ctx, entropy, reply);
    if ctx.parked_since_us.is_some() && !reply.pending {
        // A parked request is answered: its wait no longer counts against its source.
        release(agent, ctx.peer);
    }
}

/// A parked request from `peer` is gone without an answer (its connection closed): its wait
/// no longer counts against its source. ([`handle`] releases the ones it answers.)
pub fn release(agent: &mut Agent, peer: core::net::IpAddr) {
    agent.guard.unpark(peer);
}

fn route<E: Entropy>(
    agent: &mut Agent,
    req: &Request<'_>,
    ctx: &Ctx,
    entropy: &mut E,
    reply: &mut Reply,
) {
    reply.clear();
    let path = req.path;
    if path_is(path, "/metadata/identity/oauth2/token") {
        token_endpoint(agent, req, ctx, entropy, reply, Endpoint::Imds);
    } else if path_is(path, "/oauth2/token") {
        token_endpoint(agent, req, ctx, entropy, reply, Endpoint::Legacy);
    } else if path_is(path, "/metadata/identity/info") {
        if guard_checks(agent, req, ctx, reply) && metadata_checks(req, reply, true) {
            reply.json(200, &Fields(&[("tenantId", Value::Str(&agent.tenant))]));
        }
    } else if path_is(path, "/metadata/versions") {
        if metadata_checks(req, reply, false) {
            reply.json(200, &Fields(&[("apiVersions", Value::Strs(API_VERSIONS))]));
        }
    } else if cfg!(feature = "attested") && path_is(path, "/metadata/attested/document") {
        #[cfg(feature = "attested")]
        attested_document(agent, req, ctx, reply);
    } else if cfg!(feature = "scheduled-events") && path_is(path, "/metadata/scheduledevents") {
        #[cfg(feature = "scheduled-events")]
        scheduled_events(agent, req, ctx, reply);
    } else if path_is(path, "/.well-known/openid-configuration") && agent.tokens.issuer.is_some() {
        if get_only(req, reply) {
            discovery(agent, req, reply);
        }
    } else if (path_is(path, "/.well-known/jwks.json") || path_is(path, "/discovery/keys"))
        && agent.tokens.issuer.is_some()
    {
        if get_only(req, reply) {
            jwks(agent, reply);
        }
    } else if let Some(answer) = crate::metadata::route(&agent.metadata, req) {
        // Instance metadata: static answers, not counted by the per-source limiter.
        use crate::metadata::Answer;
        match answer {
            Answer::Error { status, body } => {
                reply.status = status;
                let _ = reply.body.extend_from_slice(body.as_bytes());
            }
            Answer::MethodNotAllowed => {
                reply.status = 405;
                reply.allow = Some("GET, HEAD");
                let _ = reply
                    .body
                    .extend_from_slice(crate::metadata::METHOD_NOT_ALLOWED.as_bytes());
            }
            Answer::Ok(body, content_type) => {
                reply.status = 200;
                reply.content_type = content_type;
                reply.big = Some(body);
            }
        }
    } else {
        // Including /metadata/identity/getplatformmetadata: clients probing it for an mTLS
        // flow must see a non-200 answer and fall back to the classic token endpoint.
        reply.fail(Error::Request(RequestError::PathNotFound));
    }
}

// ---- /metadata/attested/document and /metadata/scheduledevents (module `metadata`) ------------
// Static for the guard: neither counts against the per-source mint/fetch limit.

#[cfg(any(feature = "attested", feature = "scheduled-events"))]
/// The query of a metadata request: decodable, no parameter twice, an `api-version` that
/// `valid` accepts. Then `then` gets the parameters.
fn metadata_query(
    req: &Request<'_>,
    reply: &mut Reply,
    valid: impl Fn(&str) -> bool,
    then: impl FnOnce(&query::Params<'_>, &mut Reply),
) {
    let mut buf = [0u8; PARAM_DECODE_BUF];
    let Ok(params) = query::decode(req.query.as_bytes(), &mut buf) else {
        reply.fail(Error::Request(RequestError::InvalidQuery));
        return;
    };
    if params.duplicate().is_some() {
        reply.fail(Error::Request(RequestError::RepeatedParameter));
        return;
    }
    match params.get("api-version") {
        None => reply.fail(Error::Request(RequestError::ApiVersionMissing)),
        Some(v) if !valid(v) => reply.fail(Error::Request(RequestError::ApiVersionInvalid)),
        Some(_) => then(&params, reply),
    }
}

/// `GET /metadata/attested/document?api-version=V[&nonce=N]` (404 without `attestation`).
#[cfg(feature = "attested")]
#[inline(never)]
fn attested_document(agent: &Agent, req: &Request<'_>, ctx: &Ctx, reply: &mut Reply) {
    use crate::metadata::attested::{self, Claims, SignError};
    let Some(att) = agent.attestation.as_ref() else {
        reply.fail(Error::Request(RequestError::PathNotFound));
        return;
    };
    if !metadata_checks(req, reply, false) {
        return;
    }
    let valid = |v: &str| API_VERSIONS.contains(&v) && v >= attested::MIN_API_VERSION;
    metadata_query(req, reply, valid, |params, reply| {
        let Ok(nonce) = attested::nonce(params.get("nonce"), ctx.now.unix_s) else {
            reply.fail(Error::Request(RequestError::NonceInvalid));
            return;
        };
        let f = |name| agent.compute_field(name).unwrap_or("");
        let claims = Claims {
            vm_id: f("vmId"),
            subscription_id: f("subscriptionId"),
            sku: f("sku"),
            license_type: f("licenseType"),
            plan_name: f("plan/name"),
            plan_product: f("plan/product"),
            plan_publisher: f("plan/publisher"),
        };
        match attested::answer(&claims, att, &nonce, ctx.now.unix_s, &mut reply.body) {
            Ok(()) => reply.status = 200,
            Err(SignError::TooLarge) => reply.fail(Error::Request(RequestError::ResponseTooLarge)),
            Err(_) => reply.fail(Error::Request(RequestError::AttestationFailed)),
        }
    });
}

/// `GET` (the document) and `POST` (approvals) `/metadata/scheduledevents?api-version=V`,
/// answered at once (no first-call delay).
#[cfg(feature = "scheduled-events")]
#[inline(never)]
fn scheduled_events(agent: &mut Agent, req: &Request<'_>, ctx: &Ctx, reply: &mut Reply) {
    use crate::metadata::events::{self, StartError};
    if !matches!(req.method, Method::Get | Method::Head | Method::Post) {
        reply.allow = Some("GET, HEAD, POST");
        reply.fail(Error::Request(RequestError::MethodNotAllowed));
        return;
    }
    if !metadata_header_ok(req) {
        reply.fail(Error::Request(RequestError::MetadataHeaderMissing));
        return;
    }
    if proxied(req) {
        reply.fail(Error::Request(RequestError::Proxied));
        return;
    }
    let now = ctx.now;
    let valid = |v: &str| events::API_VERSIONS.contains(&v);
    metadata_query(req, reply, valid, |_, reply| {
        if req.method == Method::Post {
            match agent.schedule.start(req.body, now.mono_us) {
                Ok(()) => reply.status = 200,
                Err(StartError::Malformed) => {
                    reply.fail(Error::Request(RequestError::StartRequestMalformed))
                }
                Err(StartError::UnknownEvent) => {
                    reply.fail(Error::Request(RequestError::EventIdUnknown))
                }
            }
            return;
        }
        // The VM's name, copied: the schedule is borrowed mutably below.
        let name: heapless::String<{ crate::limits::COMPUTE_FIELD_MAX }> = agent
            .compute_field("name")
            .and_then(|n| heapless::String::try_from(n).ok())
            .unwrap_or_default();
        let one = [name.as_str()];
        let resources: &[&str] = if name.is_empty() { &[] } else { &one };
        reply.json(
            200,
            &agent.schedule.document(now.mono_us, now.unix_s, resources),
        );
    });
}

fn get_only(req: &Request<'_>, reply: &mut Reply) -> bool {
    if matches!(req.method, Method::Get | Method::Head) {
        true
    } else {
        reply.allow = Some("GET, HEAD");
        reply.fail(Error::Request(RequestError::MethodNotAllowed));
        false
    }
}

/// Method, `Metadata` header, proxy headers and (optionally) api-version.
fn metadata_checks(req: &Request<'_>, reply: &mut Reply, need_api_version: bool) -> bool {
    if !get_only(req, reply) {
        return false;
    }
    if !metadata_header_ok(req) {
        reply.fail(Error::Request(RequestError::MetadataHeaderMissing));
        return false;
    }
    if proxied(req) {
        reply.fail(Error::Request(RequestError::Proxied));
        return false;
    }
    if need_api_version {
        let mut buf = [0u8; PARAM_DECODE_BUF];
        let Ok(params) = query::decode(req.query.as_bytes(), &mut buf) else {
            reply.fail(Error::Request(RequestError::InvalidQuery));
            return false;
        };
        match params.get("api-version") {
            None => {
                reply.fail(Error::Request(RequestError::ApiVersionMissing));
                return false;
            }
            Some(v) if !API_VERSIONS.contains(&v) => {
                reply.fail(Error::Request(RequestError::ApiVersionInvalid));
                return false;
            }
            Some(_) => {}
        }
    }
    true
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Imds,
    Legacy,
}

fn is_form(req: &Request<'_>) -> bool {
    req.header("content-type")
        .map(|v| {
            let v = crate::http::trim(v);
            v.len() >= 33 && v[..33].eq_ignore_ascii_case(b"application/x-www-form-urlencoded")
        })
        .unwrap_or(false)
}

/// The source allow-list and the `Host` check (403).
fn guard_checks(agent: &Agent, req: &Request<'_>, ctx: &Ctx, reply: &mut Reply) -> bool {
    if !agent.guard.source_allowed(ctx.peer) {
        reply.fail(Error::Refused(Refusal::SourceNotAllowed));
        return false;
    }
    if !agent.guard.host_allowed(req.header("host")) {
        reply.fail(Error::Refused(Refusal::HostNotAllowed));
        return false;
    }
    true
}

fn token_endpoint<E: Entropy>(
    agent: &mut Agent,
    req: &Request<'_>,
    ctx: &Ctx,
    entropy: &mut E,
    reply: &mut Reply,
    endpoint: Endpoint,
) {
    // 1. Method.
    let allowed = matches!(
        (endpoint, req.method),
        (_, Method::Get | Method::Head) | (Endpoint::Legacy, Method::Post)
    );
    if !allowed {
        reply.allow = Some(if endpoint == Endpoint::Legacy {
            "GET, HEAD, POST"
        } else {
            "GET, HEAD"
        });
        reply.fail(Error::Request(RequestError::MethodNotAllowed));
        return;
    }
    // Who may ask.
    if !guard_checks(agent, req, ctx, reply) {
        return;
    }
    // 2. Metadata header (fast path for SDK probes).
    if !metadata_header_ok(req) {
        reply.fail(Error::Request(RequestError::MetadataHeaderMissing));
        return;
    }
    // 3. Proxied requests may not come from this VM.
    if proxied(req) {
        reply.fail(Error::Request(RequestError::Proxied));
        return;
    }
    // Parameters: the query, or for a legacy form POST the body.
    let source: &[u8] = if req.method == Method::Post {
        if !is_form(req) {
            reply.fail(Error::Request(RequestError::NotForm));
            return;
        }
        req.body
    } else {
        req.query.as_bytes()
    };
    let mut buf = [0u8; PARAM_DECODE_BUF];
    let params = match query::decode(source, &mut buf) {
        Ok(p) => p,
        Err(e) => {
            reply.fail(Error::Query(e));
            return;
        }
    };
    // 4. api-version (IMDS only; the legacy endpoint has none).
    if endpoint == Endpoint::Imds {
        match params.get("api-version") {
            None => {
                reply.fail(Error::Request(RequestError::ApiVersionMissing));
                return;
            }
            Some(v) if !API_VERSIONS.contains(&v) || v < TOKEN_MIN_API_VERSION => {
                reply.fail(Error::Request(RequestError::ApiVersionInvalid));
                return;
            }
            Some(_) => {}
        }
    }
    // 5. resource.
    let resource = match params.get("resource") {
        Some(r) if !r.is_empty() => r,
        _ => {
            reply.fail(Error::Request(RequestError::ResourceMissing));
            return;
        }
    };
    if resource.len() > RESOURCE_MAX {
        reply.fail(Error::Request(RequestError::ResourceTooLong));
        return;
    }
    // 6. A parameter given twice.
    if params.duplicate().is_some() {
        reply.fail(Error::Request(RequestError::RepeatedParameter));
        return;
    }
    // Identity selection.
    let selector = match Selector::from_params(&params) {
        Ok(s) => s,
        Err(e) => {
            reply.fail(Error::Select(e));
            return;
        }
    };
    let index = match agent.identities.select(selector) {
        Ok(i) => i,
        Err(
            e @ (SelectError::NotFound
            | SelectError::MultipleUserAssigned
            | SelectError::MultipleSelectors),
        ) => {
            reply.fail(Error::Select(e));
            return;
        }
    };
    let bypass = params
        .get("bypass_cache")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let tr = TokenRequest {
        index,
        resource,
        selector,
        bypass,
        parked_since_us: ctx.parked_since_us,
        peer: ctx.peer,
        mono_us: ctx.now.mono_us,
    };
    serve_token(agent, &tr, ctx.now, entropy, reply);
}

pub(crate) struct TokenRequest<'a> {
    pub(crate) index: u8,
    pub(crate) resource: &'a str,
    pub(crate) selector: Selector<'a>,
    pub(crate) bypass: bool,
    pub(crate) parked_since_us: Option<u64>,
    pub(crate) peer: core::net::IpAddr,
    pub(crate) mono_us: u64,
}

/// What [`obtain`] found for a token request.
pub(crate) enum Got<'a> {
    /// The token, and the identity it is for.
    Ready(&'a Token, &'a crate::config::IdentityConfig),
    /// A fetch is queued or running: the caller parks the request ([`park`]).
    Pending,
    /// No token: an unknown identity, a refused, failed or timed-out mint or fetch.
    Failed(Error),
}

/// The token of request `r` from the agent's token source (cached, minted, or a fetch the
/// request waits for), a mint or fetch charged to the request's source. Every protocol's
/// token endpoint (IMDS, legacy, and the other hosts') obtains its tokens here.
pub(crate) fn obtain<'a, E: Entropy>(
    agent: &'a mut Agent,
    r: &TokenRequest<'_>,
    now: Now,
    entropy: &mut E,
) -> Got<'a> {
    let Some(identity) = agent.identities.get(r.index) else {
        return Got::Failed(Error::Request(RequestError::IdentityNotFound));
    };
    let need = Need {
        bypass: r.bypass,
        parked_since_us: r.parked_since_us,
    };
    let guard = &mut agent.guard;
    match agent.tokens.obtain(
        identity,
        r.index,
        r.resource,
        need,
        now.unix_s,
        now.mono_us,
        entropy,
        || guard.charge(r.peer, r.mono_us),
    ) {
        Obtained::Ready(t) => Got::Ready(t, identity),
        Obtained::Pending => Got::Pending,
        Obtained::Failed(e) => Got::Failed(e.into()),
    }
}

/// The IMDS answer to a token request: the token, or the request parked, or the error.
fn serve_token<E: Entropy>(
    agent: &mut Agent,
    r: &TokenRequest<'_>,
    now: Now,
    entropy: &mut E,
    reply: &mut Reply,
) {
    match obtain(agent, r, now, entropy) {
        Got::Ready(t, identity) => {
            write_token(reply, t, r.resource, identity, r.selector, now.unix_s)
        }
        Got::Pending => park(agent, r, reply),
        Got::Failed(e) => reply.fail(e),
    }
}

/// Mark the request as waiting; a source's first wait counts against its in-flight limit. A
/// request that waited [`crate::limits::FETCH_WAIT_MAX_US`] is answered 503 instead (and
/// released by [`handle`], like every parked request once it is answered).
pub(crate) fn park(agent: &mut Agent, r: &TokenRequest<'_>, reply: &mut Reply) {
    match r.parked_since_us {
        None => {
            if let Err(refusal) = agent.guard.park(r.peer, r.mono_us) {
                reply.fail(Error::Refused(refusal));
                return;
            }
        }
        Some(since) if r.mono_us.saturating_sub(since) > crate::limits::FETCH_WAIT_MAX_US => {
            reply.fail(Error::Request(RequestError::FetchWaitTimeout));
            return;
        }
        Some(_) => {}
    }
    reply.pending = true;
}

fn write_token(
    reply: &mut Reply,
    t: &Token,
    resource: &str,
    identity: &crate::config::IdentityConfig,
    selector: Selector<'_>,
    now: u64,
) {
    let expires_in = decimal(t.expires_in(now).max(1));
    let expires_on = decimal(t.expires_on);
    let not_before = decimal(t.not_before);
    // A JWT is base64url and dots: nothing in it needs JSON escaping. serde-json-core writes
    // strings a character at a time, which was a third of the daemon's time per cached
    // answer for ~1 KB tokens; so it serializes the body with an empty `access_token` and the
    // token bytes are put between its quotes. Any other token goes through serde whole.
    let token = t.access_token.as_bytes();
    let plain = token
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let body = Fields(&[
        (
            "access_token",
            Value::Str(if plain { "" } else { t.access_token.as_str() }),
        ),
        ("refresh_token", Value::Str("")),
        ("expires_in", Value::Str(&expires_in)),
        ("expires_on", Value::Str(&expires_on)),
        ("ext_expires_in", Value::Str(&expires_in)),
        ("not_before", Value::Str(&not_before)),
        ("resource", Value::Str(resource)),
        ("token_type", Value::Str("Bearer")),
        ("client_id", Value::Str(&identity.client_id)),
        (
            "object_id",
            matches!(selector, Selector::ObjectId(_))
                .then_some(identity.object_id.as_str())
                .into(),
        ),
        (
            "msi_res_id",
            matches!(selector, Selector::ResourceId(_))
                .then_some(identity.resource_id.as_str())
                .into(),
        ),
    ]);
    reply.json(200, &body);
    if reply.status != 200 {
        return;
    }
    if plain {
        const OPEN: &[u8] = br#"{"access_token":""#;
        let old = reply.body.len();
        if !reply.body.starts_with(OPEN) || reply.body.resize(old + token.len(), 0).is_err() {
            reply.body.clear();
            reply.fail(Error::Request(RequestError::ResponseTooLarge));
            return;
        }
        reply
            .body
            .copy_within(OPEN.len()..old, OPEN.len() + token.len());
        reply.body[OPEN.len()..OPEN.len() + token.len()].copy_from_slice(token);
    }
    reply.client_id = Some(identity.client_id.clone());
}

fn discovery(agent: &Agent, req: &Request<'_>, reply: &mut Reply) {
    let Some(issuer) = agent.tokens.issuer.as_ref() else {
        return;
    };
    let urls = oidc::Urls::for_host(oidc::host_of(req));
    reply.json(200, &oidc::discovery(issuer, &urls));
}

fn jwks(agent: &Agent, reply: &mut Reply) {
    let Some(issuer) = agent.tokens.issuer.as_ref() else {
        return;
    };
    reply.json(200, &oidc::jwks(issuer));
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{IdentityConfig, IdentityKind};
    use crate::secret::Secret;

    // ---- the router, function level: `Request` in, `Reply` out; one test per case of the
    // contract suite (tests/src/contract.rs) that the router decides ----

    use crate::config::tests::{doc, SYS, USER1, USER2};
    use crate::config::Config;
    use crate::http::{self, Parse};
    use crate::token::CountingEntropy;
    use std::string::String;
    use std::vec::Vec;

    const MGMT: &str = "https://management.azure.com/";
    const MD: &str = "Metadata: true";
    const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    const USER1_CLIENT: &str = "12222222-2222-2222-2222-222222222222";
    const USER1_OBJECT: &str = "22222222-2222-2222-2222-222222222222";
    const USER1_RESOURCE: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/one";
    const SYS_CLIENT: &str = "11111111-1111-1111-1111-111111111111";

    fn agent() -> Agent {
        let d = doc("", &[SYS, USER1, USER2].join(","));
        Agent::new(Config::parse(d.as_bytes()).unwrap())
    }

    /// The router's answer to the raw request `raw`.
    fn ask(agent: &mut Agent, raw: &str) -> Reply {
        let now = Now {
            unix_s: 1_000_000,
            mono_us: 0,
        };
        ask_at(agent, raw, now)
    }

    /// The router's answer to the raw request `raw` at `now`, from 127.0.0.1 (the metadata
    /// modules' tests use it too).
    pub(crate) fn ask_at(agent: &mut Agent, raw: &str, now: Now) -> Reply {
        let Ok(Parse::Complete(req, _)) = http::parse(raw.as_bytes()) else {
            panic!("not a complete request: {raw}")
        };
        let ctx = Ctx {
            now,
            peer: "127.0.0.1".parse().unwrap(),
            parked_since_us: None,
        };
        let mut reply = Reply::new();
        // Another token id for every request.
        static REQUESTS: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
        let seed = REQUESTS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        handle(agent, &req, &ctx, &mut CountingEntropy(seed), &mut reply);
        reply
    }

    fn request(method: &str, target: &str, headers: &[&str], body: &str) -> String {
        let mut r = std::format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
        for h in headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        if !body.is_empty() {
            r.push_str(&std::format!("Content-Length: {}\r\n", body.len()));
        }
        r.push_str("\r\n");
        r.push_str(body);
        r
    }

    fn get(agent: &mut Agent, target: &str, headers: &[&str]) -> Reply {
        ask(agent, &request("GET", target, headers, ""))
    }

    fn token_target(resource: &str, extra: &str) -> String {
        std::format!(
            "/metadata/identity/oauth2/token?api-version=2018-02-01&resource={}{extra}",
            resource.replace(':', "%3A").replace('/', "%2F")
        )
    }

    fn body(r: &Reply) -> &str {
        core::str::from_utf8(&r.body).unwrap()
    }

    /// The value of a JSON string field of the body.
    fn field<'r>(r: &'r Reply, name: &str) -> Option<&'r str> {
        let key = std::format!("\"{name}\":\"");
        let b = body(r);
        let start = b.find(&key)? + key.len();
        Some(&b[start..start + b[start..].find('"')?])
    }

    fn assert_token(r: &Reply, resource: &str, client_id: &str) {
        assert_eq!(r.status, 200, "{}", body(r));
        assert_eq!(field(r, "resource"), Some(resource), "{}", body(r));
        assert_eq!(field(r, "client_id"), Some(client_id), "{}", body(r));
        assert_eq!(field(r, "token_type"), Some("Bearer"));
        assert!(field(r, "access_token").is_some_and(|t| t.split('.').count() == 3));
    }

    fn assert_error(r: &Reply, status: u16, code: &str) {
        assert_eq!(r.status, status, "{}", body(r));
        assert_eq!(field(r, "error"), Some(code), "{}", body(r));
        assert!(field(r, "error_description").is_some());
    }

    #[test]
    fn router_system_assigned_by_default() {
        let mut a = agent();
        let r = get(&mut a, &token_target(MGMT, ""), &[MD]);
        assert_token(&r, MGMT, SYS_CLIENT);
        assert!(field(&r, "object_id").is_none() && field(&r, "msi_res_id").is_none());
    }

    #[test]
    fn router_user_assigned_by_each_selector() {
        let mut a = agent();
        for sel in [
            std::format!("&client_id={USER1_CLIENT}"),
            std::format!("&client_id={}", USER1_CLIENT.to_uppercase()),
        ] {
            assert_token(
                &get(&mut a, &token_target(MGMT, &sel), &[MD]),
                MGMT,
                USER1_CLIENT,
            );
        }
        // Echoed: the selector's field with the identity's own spelling.
        let rid = USER1_RESOURCE.to_lowercase();
        for (sel, value, echo, echoed) in [
            ("object_id", USER1_OBJECT, "object_id", USER1_OBJECT),
            ("principal_id", USER1_OBJECT, "object_id", USER1_OBJECT),
            ("msi_res_id", rid.as_str(), "msi_res_id", USER1_RESOURCE),
            ("mi_res_id", rid.as_str(), "msi_res_id", USER1_RESOURCE),
        ] {
            let selector = std::format!("&{sel}={value}");
            let r = get(&mut a, &token_target(MGMT, &selector), &[MD]);
            assert_token(&r, MGMT, USER1_CLIENT);
            assert_eq!(field(&r, echo), Some(echoed), "{sel}");
        }
    }

    #[test]
    fn router_header_and_path_variants() {
        let mut a = agent();
        for h in ["metadata: true", "Metadata: True", "METADATA:TRUE"] {
            assert_token(
                &get(&mut a, &token_target(MGMT, ""), &[h]),
                MGMT,
                SYS_CLIENT,
            );
        }
        let target = "/metadata/identity/oauth2/token/?api-version=2019-08-01&resource=https://management.azure.com/";
        let r = get(
            &mut a,
            target,
            &[MD, "Content-Type: application/x-www-form-urlencoded"],
        );
        assert_token(&r, MGMT, SYS_CLIENT);
        let target = "/METADATA/identity/oauth2/token?api-version=2025-04-07&resource=https%3A%2F%2Fmanagement.azure.com%2F";
        assert_token(&get(&mut a, target, &[MD]), MGMT, SYS_CLIENT);
        let target = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";
        assert_token(
            &get(&mut a, target, &[MD]),
            "https://vault.azure.net",
            SYS_CLIENT,
        );
        let target = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api://x+y";
        assert_token(&get(&mut a, target, &[MD]), "api://x y", SYS_CLIENT);
        let extra = "&authority=x&xms_cc=cp1&token_sha256_to_refresh=ab";
        assert_token(
            &get(&mut a, &token_target(MGMT, extra), &[MD]),
            MGMT,
            SYS_CLIENT,
        );
    }

    #[test]
    fn router_head_answers_like_get() {
        // The router answers HEAD like GET; the connection sends the head only.
        let mut a = agent();
        let r = ask(&mut a, &request("HEAD", &token_target(MGMT, ""), &[MD], ""));
        assert_token(&r, MGMT, SYS_CLIENT);
    }

    #[test]
    fn router_cache_and_bypass() {
        let mut a = agent();
        let token = |a: &mut Agent, extra: &str| {
            let r = get(a, &token_target("https://cache.test/", extra), &[MD]);
            String::from(field(&r, "access_token").unwrap())
        };
        let first = token(&mut a, "");
        assert_eq!(token(&mut a, ""), first, "served from the cache");
        let fresh = token(&mut a, "&bypass_cache=true");
        assert_ne!(fresh, first, "bypass_cache forces a fresh token");
        assert_eq!(
            token(&mut a, ""),
            fresh,
            "the fresh token replaced the cached one"
        );
        let r = get(&mut a, &token_target("https://cache.test", ""), &[MD]);
        assert_eq!(field(&r, "resource"), Some("https://cache.test"));
        assert_ne!(field(&r, "access_token"), Some(fresh.as_str()));
    }

    #[test]
    fn router_metadata_header_required() {
        let mut a = agent();
        for headers in [
            &[][..],
            &["Metadata: false"][..],
            &["Metadata: yes"][..],
            &["Metadata:"][..],
        ] {
            let r = get(&mut a, &token_target(MGMT, ""), headers);
            assert_error(&r, 400, "invalid_request");
            assert_eq!(
                field(&r, "error_description"),
                Some("Required metadata header not specified")
            );
        }
        assert_error(
            &get(&mut a, "/metadata/identity/oauth2/token", &[]),
            400,
            "invalid_request",
        );
    }

    #[test]
    fn router_proxied_requests_refused() {
        let mut a = agent();
        for h in ["X-Forwarded-For: 10.0.0.1", "Forwarded: for=10.0.0.1"] {
            assert_error(
                &get(&mut a, &token_target(MGMT, ""), &[MD, h]),
                400,
                "invalid_request",
            );
        }
    }

    #[test]
    fn router_methods() {
        let mut a = agent();
        for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            let r = ask(
                &mut a,
                &request(m, &token_target(MGMT, ""), &[MD, "Content-Length: 0"], ""),
            );
            assert_error(&r, 405, "method_not_allowed");
            assert!(r.allow.is_some_and(|v| v.contains("GET")));
        }
    }

    #[test]
    fn router_api_version_rules() {
        let mut a = agent();
        let base = "/metadata/identity/oauth2/token?resource=https%3A%2F%2Fmanagement.azure.com%2F";
        // Missing, empty, unknown, older than the token endpoint, not a date.
        for version in [
            None,
            Some(""),
            Some("2099-01-01"),
            Some("2017-12-01"),
            Some("latest"),
        ] {
            let q = version
                .map(|v| std::format!("&api-version={v}"))
                .unwrap_or_default();
            let r = get(&mut a, &std::format!("{base}{q}"), &[MD]);
            assert_error(&r, 400, "invalid_request");
            assert!(
                body(&r).contains(r#""newest-versions":["2025-04-07""#),
                "{}",
                body(&r)
            );
        }
        for v in ["2018-02-01", "2019-08-01", "2021-02-01", "2025-04-07"] {
            assert_eq!(
                get(&mut a, &std::format!("{base}&api-version={v}"), &[MD]).status,
                200,
                "{v}"
            );
        }
    }

    #[test]
    fn router_resource_rules() {
        let mut a = agent();
        let long = "x".repeat(RESOURCE_MAX + 1);
        for target in [
            String::from("/metadata/identity/oauth2/token?api-version=2018-02-01"),
            String::from("/metadata/identity/oauth2/token?api-version=2018-02-01&resource="),
            token_target(&long, ""),
            token_target(MGMT, "&resource=https://other/"),
            token_target(MGMT, "&api-version=2018-02-01"),
            String::from("/metadata/identity/oauth2/token?api-version=2018-02-01&resource=%zz"),
        ] {
            assert_error(&get(&mut a, &target, &[MD]), 400, "invalid_request");
        }
    }

    #[test]
    fn router_selection_errors() {
        let mut a = agent();
        for extra in [
            std::format!("&client_id={USER1_CLIENT}&object_id={USER1_OBJECT}"),
            std::format!("&client_id={USER1_CLIENT}&client_id={USER1_CLIENT}"),
        ] {
            assert_error(
                &get(&mut a, &token_target(MGMT, &extra), &[MD]),
                400,
                "invalid_request",
            );
        }
        for extra in [
            "&client_id=00000000-0000-0000-0000-00000000dead",
            "&msi_res_id=/subscriptions/nope",
        ] {
            let r = get(&mut a, &token_target(MGMT, extra), &[MD]);
            assert_error(&r, 400, "invalid_request");
            assert_eq!(field(&r, "error_description"), Some("Identity not found"));
        }
    }

    #[test]
    fn router_neighbouring_endpoints() {
        let mut a = agent();
        let r = get(
            &mut a,
            "/metadata/identity/getplatformmetadata?api-version=2025-04-07",
            &[MD],
        );
        assert_error(&r, 404, "not_found");
        let r = get(
            &mut a,
            "/metadata/identity/info?api-version=2018-02-01",
            &[MD],
        );
        assert_eq!(r.status, 200);
        assert_eq!(field(&r, "tenantId"), Some(TENANT));
        let r = get(
            &mut a,
            "/metadata/identity/info?api-version=2018-02-01",
            &[],
        );
        assert_error(&r, 400, "invalid_request");
        assert_error(
            &get(&mut a, "/metadata/identity/info", &[MD]),
            400,
            "invalid_request",
        );
        let r = get(&mut a, "/metadata/versions", &[MD]);
        assert_eq!(r.status, 200);
        assert!(body(&r).contains(r#""2018-02-01""#));
        assert_error(&get(&mut a, "/no/such/path", &[MD]), 404, "not_found");
        let r = get(&mut a, "/.well-known/openid-configuration", &[]);
        assert_eq!(r.status, 200);
        assert!(field(&r, "issuer").is_some_and(|i| i.contains(TENANT)));
        assert!(field(&r, "jwks_uri").is_some_and(|u| u.ends_with("/.well-known/jwks.json")));
        assert!(body(&r).contains(r#""id_token_signing_alg_values_supported":["ES256"]"#));
        for path in ["/.well-known/jwks.json", "/discovery/keys"] {
            let r = get(&mut a, path, &[]);
            assert_eq!(r.status, 200);
            assert_eq!(field(&r, "kty"), Some("EC"));
            assert_eq!(field(&r, "crv"), Some("P-256"));
        }
    }

    #[test]
    fn router_legacy_endpoint() {
        let mut a = agent();
        let target = "/oauth2/token?resource=https%3A%2F%2Fmanagement.azure.com%2F";
        assert_token(&get(&mut a, target, &[MD]), MGMT, SYS_CLIENT);
        for sel in [
            std::format!("&client_id={USER1_CLIENT}"),
            std::format!("&object_id={USER1_OBJECT}"),
        ] {
            let r = get(&mut a, &std::format!("{target}{sel}"), &[MD]);
            assert_token(&r, MGMT, USER1_CLIENT);
        }
        let form =
            std::format!("resource=https%3A%2F%2Fmanagement.azure.com%2F&client_id={USER1_CLIENT}");
        let post = request(
            "POST",
            "/oauth2/token",
            &[MD, "Content-Type: application/x-www-form-urlencoded"],
            &form,
        );
        assert_token(&ask(&mut a, &post), MGMT, USER1_CLIENT);
        assert_error(&get(&mut a, target, &[]), 400, "invalid_request");
        assert_error(&get(&mut a, "/oauth2/token", &[MD]), 400, "invalid_request");
        let json = request(
            "POST",
            "/oauth2/token",
            &[MD, "Content-Type: application/json"],
            "{}",
        );
        assert_error(&ask(&mut a, &json), 400, "invalid_request");
    }

    /// Unreadable requests never reach the router: the connection answers them through the
    /// same table.
    #[test]
    fn router_unreadable_requests_in_the_wire_table() {
        for (e, status) in [
            (HttpError::BadRequest("malformed request head"), 400),
            (HttpError::HeadTooLarge, 431),
            (HttpError::UriTooLong, 414),
            (HttpError::BodyTooLarge, 413),
        ] {
            let w = wire(Error::Http(e));
            assert_eq!(
                (w.status, w.code, w.retry_after_s),
                (status, "invalid_request", None)
            );
        }
        let mut r = Reply::new();
        r.fail(Error::Http(HttpError::BadRequest("malformed request head")));
        assert_eq!(
            field(&r, "error_description"),
            Some("Bad request: malformed request head")
        );
    }

    #[test]
    fn wire_table_retry_after() {
        let cases: Vec<(Error, u16, &str, Option<u32>)> = std::vec![
            (
                Error::Refused(Refusal::TooMany { retry_after_s: 3 }),
                429,
                "too_many_requests",
                Some(3)
            ),
            (
                Error::Request(RequestError::FetchWaitTimeout),
                503,
                "service_unavailable",
                Some(RETRY_AFTER_DEFAULT_S)
            ),
            (
                Error::Request(RequestError::FetchesFull),
                503,
                "service_unavailable",
                Some(1)
            ),
            (
                Error::Mint(MintError::TooLarge),
                400,
                "invalid_request",
                None
            ),
            (
                Error::Refused(Refusal::SourceNotAllowed),
                403,
                "forbidden",
                None
            ),
            #[cfg(feature = "broker")]
            (
                Error::Fetch(FetchError::Unavailable {
                    retry_after_s: Some(7)
                }),
                503,
                "service_unavailable",
                Some(7)
            ),
            #[cfg(feature = "broker")]
            (
                Error::Fetch(FetchError::Unreachable),
                503,
                "service_unavailable",
                Some(RETRY_AFTER_DEFAULT_S)
            ),
            #[cfg(feature = "broker")]
            (Error::Fetch(FetchError::Tls), 500, "server_error", None),
        ];
        for (e, status, code, retry) in cases {
            let w = wire(e);
            assert_eq!(
                (w.status, w.code, w.retry_after_s),
                (status, code, retry),
                "{e:?}"
            );
        }
    }

    fn reply_for(token: &[u8]) -> Reply {
        let mut access_token = Secret::new();
        access_token.buf_mut().extend_from_slice(token).unwrap();
        let t = Token {
            access_token,
            not_before: 100,
            expires_on: 1000,
            obtained_us: 0,
        };
        let id = IdentityConfig {
            kind: IdentityKind::System,
            client_id: "11111111-1111-1111-1111-111111111111".try_into().unwrap(),
            object_id: "21111111-1111-1111-1111-111111111111".try_into().unwrap(),
            resource_id: "/subscriptions/s/x".try_into().unwrap(),
            #[cfg(feature = "broker")]
            credential: None,
        };
        let mut reply = Reply::new();
        write_token(&mut reply, &t, "https://r/", &id, Selector::Default, 400);
        reply
    }

    #[test]
    fn token_body_with_a_plain_jwt_and_with_one_that_needs_escaping() {
        let r = reply_for(b"eyJ0.eyJ1-_x.c2ln");
        assert_eq!(r.status, 200);
        let body = core::str::from_utf8(&r.body).unwrap();
        assert!(
            body.starts_with(r#"{"access_token":"eyJ0.eyJ1-_x.c2ln","refresh_token":"","expires_in":"600","expires_on":"1000","#),
            "{body}"
        );
        assert!(body.ends_with(
            r#""token_type":"Bearer","client_id":"11111111-1111-1111-1111-111111111111"}"#
        ));
        // An opaque token with characters JSON must escape goes through serde whole.
        let r = reply_for(b"a\"b\\c+/=");
        let body = core::str::from_utf8(&r.body).unwrap();
        assert!(
            body.starts_with(r#"{"access_token":"a\"b\\c+/=","#),
            "{body}"
        );
    }
}
