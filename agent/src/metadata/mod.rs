//! The metadata endpoints besides identity (issue 12): `/metadata/instance[/sub/path]` and
//! `/metadata/loadbalancer` (here), `/metadata/attested/document` ([`attested`]) and
//! `/metadata/scheduledevents` ([`events`]).
//!
//! The config's `instance` and `loadbalancer` documents are transcoded while the config is
//! parsed into compact JSON in fixed buffers ([`Doc`]) by the same walker that serves them
//! ([`instance`]: serde-json-core's deserializer walks, strings the config escaped are written
//! again by its serializer, no hand-written tokenizer). A request is answered by walking that
//! copy: the sub-path, the api-version's fields, JSON or a leaf's text.
//!
//! The answer can be much larger than a connection's send buffer: the router answers with a
//! [`BodySource`] (what to render and its length, from a counting walk) and the connection
//! renders the body chunk by chunk as the socket drains ([`render_chunk`]: render from the
//! start, skip what was sent, keep what fits), without allocating; HEAD gets the length only.
//!
//! Choices where Azure's behaviour is unknown (INSTANCE.md §4), all tested: errors are
//! `{"error":"<text>"}` (S1's `ErrorResponse`); an unknown path or index, or a field the
//! api-version does not have, is 404 `{"error":"Not found"}` (also `/metadata/instance` without
//! an `instance` in the config); a leaf without `format=text` (or with `format=json`) is 400
//! `{"error":"Bad request. Leaf nodes need format=text"}`; `format=text` on an object or array
//! answers its JSON; the text body has no trailing newline; `Metadata` must be `true` or `True`
//! (400 `{"error":"Bad request. Required metadata header not specified"}`, INSTANCE.md §1.1);
//! `X-Forwarded-For`/`Forwarded`, a duplicate parameter or an unreadable query are 400 with the
//! texts below; `/metadata/loadbalancer` below api-version 2020-10-01 is the api-version 400;
//! a sub-path is matched as sent (not percent-decoded) and keys of the config documents must
//! not use JSON escapes. These answers are static: the per-source mint/fetch limiter does not
//! count them (module `imds` routes them without the guard).

#[cfg(feature = "attested")]
pub mod attested;
#[cfg(any(feature = "attested", feature = "scheduled-events"))]
pub mod civil;
#[cfg(any(feature = "attested", feature = "scheduled-events"))]
pub mod compute;
#[cfg(feature = "scheduled-events")]
pub mod events;
pub mod instance;
pub mod since;
#[cfg(all(test, feature = "std"))]
mod tests;

use crate::http::{ContentType, Method, Request};
use crate::limits::{LOADBALANCER_MAX, METADATA_PATH_MAX, PARAM_DECODE_BUF};
use crate::query;
use serde::de::{self, DeserializeSeed, MapAccess, Visitor};

pub use crate::limits::INSTANCE_MAX;

/// A JSON document kept as compact JSON in a fixed buffer of `N` bytes (empty: not
/// configured). Without `std` (the unikernel) the buffer is inline; the daemon keeps its
/// 128 KiB buffer on the heap, allocated when the config has the document, so that configs
/// and agents stay small on the stack and an absent document costs nothing.
#[derive(Clone)]
pub struct Doc<const N: usize> {
    len: usize,
    #[cfg(not(feature = "std"))]
    buf: [u8; N],
    #[cfg(feature = "std")]
    buf: std::boxed::Box<[u8]>,
}

impl<const N: usize> Doc<N> {
    /// An empty (absent) document.
    #[cfg(not(feature = "std"))]
    pub const fn new() -> Self {
        Doc {
            len: 0,
            buf: [0; N],
        }
    }
    /// An empty (absent) document.
    #[cfg(feature = "std")]
    pub fn new() -> Self {
        Doc {
            len: 0,
            buf: std::boxed::Box::default(),
        }
    }
    /// The compact JSON.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
    /// Whether the config has none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The buffer and the length of its content, for the config reader: one copy of its code
    /// for every capacity.
    pub(crate) fn parts_mut(&mut self) -> (&mut [u8], &mut usize) {
        #[cfg(feature = "std")]
        if self.buf.is_empty() {
            self.buf = std::vec![0; N].into_boxed_slice();
        }
        (&mut self.buf[..], &mut self.len)
    }
}

impl<const N: usize> Default for Doc<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> core::fmt::Debug for Doc<N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The content (user data) stays out of logs.
        f.write_str("Doc(..)")
    }
}

/// The documents the agent serves.
#[derive(Clone, Default, Debug)]
pub struct Documents {
    /// `instance`: `/metadata/instance`.
    pub instance: Doc<INSTANCE_MAX>,
    /// `loadbalancer`: `/metadata/loadbalancer`.
    pub loadbalancer: Doc<LOADBALANCER_MAX>,
}

// ---- config time ------------------------------------------------------------------------------

pub use instance::Invalid as Problem;

/// Transcode the next value of `map` (the config's `instance`, or with `ports` its
/// `loadbalancer`) into `out`. `null` leaves `out` empty. Err: what is wrong and where (the
/// serde error that stopped the parse is then only the carrier).
pub(crate) fn transcode<'de, A: MapAccess<'de>>(
    map: &mut A,
    (buf, len): (&mut [u8], &mut usize),
    ports: bool,
) -> Result<Result<(), Problem>, A::Error> {
    let r = map.next_value_seed(Top(buf, ports))?;
    Ok(check(len, r))
}

/// Transcode a whole JSON document (an `instance`, or with `loadbalancer` a load balancer
/// document) into `out`, as the config reader does (tests, fuzzing, tools).
pub fn load<const N: usize>(
    json: &[u8],
    out: &mut Doc<N>,
    loadbalancer: bool,
) -> Result<(), Problem> {
    let invalid = || Problem {
        path: heapless::String::new(),
        why: "is not valid JSON",
    };
    let mut scratch = [0u8; crate::limits::CONFIG_STRING_MAX];
    let mut de = serde_json_core::de::Deserializer::new(json, Some(&mut scratch));
    let (buf, len) = out.parts_mut();
    let r = match Top(buf, loadbalancer).deserialize(&mut de) {
        Ok(Ok(len)) => de.end().map(|_| len).map_err(|_| invalid()),
        Ok(Err(p)) => Err(p),
        Err(_) => Err(invalid()),
    };
    check(len, r)
}

/// Keep what was loaded into `out` (its shape was checked while loading).
fn check(out_len: &mut usize, loaded: Result<usize, Problem>) -> Result<(), Problem> {
    *out_len = 0;
    *out_len = loaded?;
    Ok(())
}

/// The value of a config field: `null` (absent) or a document, loaded by the walker.
struct Top<'b>(&'b mut [u8], bool);

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Result<usize, Problem>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Result<usize, Problem>;
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("null or an object")
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(0))
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        instance::load(d, self.0, self.1)
    }
}

// ---- serving ----------------------------------------------------------------------------------

/// Which document a large body comes from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    /// `instance`, walked for a sub-path.
    Instance,
    /// `loadbalancer`, as stored.
    LoadBalancer,
}

/// A body rendered by the connection in chunks (see the module documentation).
#[derive(Clone, Debug)]
pub struct BodySource {
    /// The document.
    pub source: Source,
    /// The sub-path below `/metadata/instance`.
    pub path: heapless::String<METADATA_PATH_MAX>,
    /// The api-version (an entry of [`since::SUPPORTED`]).
    pub version: &'static str,
    /// `format=text`.
    pub text: bool,
    /// `extended=true`.
    pub extended: bool,
    /// The body's length.
    pub len: usize,
}

impl BodySource {
    fn query(&self) -> instance::Query<'_> {
        instance::Query {
            path: &self.path,
            version: self.version,
            text: self.text,
            extended: self.extended,
        }
    }
}

/// Bytes `skip..skip + out.len()` of the body (fewer at its end): how many were written.
pub fn render_chunk(docs: &Documents, body: &BodySource, skip: usize, out: &mut [u8]) -> usize {
    match body.source {
        Source::LoadBalancer => {
            let b = docs.loadbalancer.bytes();
            let tail = b.get(skip..).unwrap_or(&[]);
            let n = tail.len().min(out.len());
            out[..n].copy_from_slice(&tail[..n]);
            n
        }
        Source::Instance => {
            match instance::render(
                docs.instance.bytes(),
                body.query(),
                instance::Sink::new(skip, out),
            ) {
                Ok((_, _, filled)) => filled,
                Err(_) => 0,
            }
        }
    }
}

// Error bodies are constants (no serializer for them in the image). Texts: module docs.

/// 400 for a bad or missing api-version (INSTANCE.md §1.2; cloud-init falls back on it).
pub const API_VERSION_ERROR: &str = r#"{"error":"Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds","newest-versions":["2025-04-07","2024-07-17","2024-03-15"]}"#;
/// 404 of an unknown path or index.
pub const NOT_FOUND: &str = r#"{"error":"Not found"}"#;
/// 400 of a leaf without `format=text`.
pub const LEAF_NEEDS_TEXT: &str = r#"{"error":"Bad request. Leaf nodes need format=text"}"#;
/// 404 of `/metadata/loadbalancer` without a `loadbalancer` in the config (Azure's text).
pub const NO_LOADBALANCER: &str = r#"{"error":"No load balancer metadata is found. Please check if your VM is using any non-basic SKU load balancer and retry later."}"#;
/// 400 without `Metadata: true`.
pub const NO_METADATA_HEADER: &str =
    r#"{"error":"Bad request. Required metadata header not specified"}"#;
/// 400 with `X-Forwarded-For` or `Forwarded`.
pub const PROXIED: &str = r#"{"error":"Bad request. Requests through a proxy (X-Forwarded-For, Forwarded) are not allowed"}"#;
/// 400 for a parameter given twice.
pub const DUPLICATE_PARAMETER: &str =
    r#"{"error":"Bad request. A query parameter is specified more than once"}"#;
/// 400 for a query string that cannot be decoded.
pub const BAD_QUERY: &str = r#"{"error":"Bad request. The query string cannot be read"}"#;
/// 405 for a method other than GET and HEAD.
pub const METHOD_NOT_ALLOWED: &str = r#"{"error":"Bad request. Http method is not allowed"}"#;
/// First api-version of `/metadata/loadbalancer`.
pub const LOADBALANCER_SINCE: &str = "2020-10-01";

/// What the router answers (module `imds` puts it into its reply).
// The core has no heap to box the body source in; one lives for one request.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// An error: status and the whole JSON body.
    Error {
        /// The status.
        status: u16,
        /// The body.
        body: &'static str,
    },
    /// 405, with `Allow: GET, HEAD`.
    MethodNotAllowed,
    /// 200: the body, rendered chunk by chunk by the connection.
    Ok(BodySource, ContentType),
}

fn error(status: u16, body: &'static str) -> Option<Answer> {
    Some(Answer::Error { status, body })
}

/// `path` is `route` or below it: the sub-path (without the leading and a trailing `/`).
fn below<'p>(path: &'p str, route: &str) -> Option<&'p str> {
    let head = path.get(..route.len())?;
    if !head.eq_ignore_ascii_case(route) {
        return None;
    }
    let rest = &path[route.len()..];
    if rest.is_empty() {
        return Some("");
    }
    let rest = rest.strip_prefix('/')?;
    Some(rest.strip_suffix('/').unwrap_or(rest))
}

/// Answer `/metadata/instance…` and `/metadata/loadbalancer`; `None`: not one of them.
pub fn route(docs: &Documents, req: &Request<'_>) -> Option<Answer> {
    let (source, sub) = if let Some(sub) = below(req.path, "/metadata/instance") {
        (Source::Instance, sub)
    } else if let Some("") = below(req.path, "/metadata/loadbalancer") {
        (Source::LoadBalancer, "")
    } else {
        return None;
    };
    if !matches!(req.method, Method::Get | Method::Head) {
        return Some(Answer::MethodNotAllowed);
    }
    let metadata = req
        .header("metadata")
        .map(|v| matches!(crate::http::trim(v), b"true" | b"True"))
        .unwrap_or(false);
    if !metadata {
        return error(400, NO_METADATA_HEADER);
    }
    if req.has_header("x-forwarded-for") || req.has_header("forwarded") {
        return error(400, PROXIED);
    }
    let mut buf = [0u8; PARAM_DECODE_BUF];
    let Ok(params) = query::decode(req.query.as_bytes(), &mut buf) else {
        return error(400, BAD_QUERY);
    };
    if params.duplicate().is_some() {
        return error(400, DUPLICATE_PARAMETER);
    }
    let version = match params.get("api-version").and_then(since::supported) {
        Some(v) if source == Source::Instance || v >= LOADBALANCER_SINCE => v,
        _ => {
            return error(400, API_VERSION_ERROR);
        }
    };
    let text = params
        .get("format")
        .is_some_and(|f| f.eq_ignore_ascii_case("text"));
    let extended = params
        .get("extended")
        .is_some_and(|f| f.eq_ignore_ascii_case("true"));
    let mut body = BodySource {
        source,
        path: heapless::String::new(),
        version,
        text,
        extended,
        len: 0,
    };
    let content_type = match source {
        Source::LoadBalancer => {
            if docs.loadbalancer.is_empty() {
                return error(404, NO_LOADBALANCER);
            }
            body.len = docs.loadbalancer.bytes().len();
            ContentType::Json
        }
        Source::Instance => {
            if docs.instance.is_empty() || body.path.push_str(sub).is_err() {
                return error(404, NOT_FOUND);
            }
            let counted = instance::render(
                docs.instance.bytes(),
                body.query(),
                instance::Sink::new(0, &mut []),
            );
            match counted {
                Ok((kind, len, _)) => {
                    body.len = len;
                    match kind {
                        instance::Kind::Json => ContentType::Json,
                        instance::Kind::Text => ContentType::Text,
                    }
                }
                Err(instance::Miss::NotFound | instance::Miss::Invalid(_)) => {
                    return error(404, NOT_FOUND);
                }
                Err(instance::Miss::LeafNeedsText) => {
                    return error(400, LEAF_NEEDS_TEXT);
                }
            }
        }
    };
    Some(Answer::Ok(body, content_type))
}
