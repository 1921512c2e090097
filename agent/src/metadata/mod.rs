//! Instance metadata (issue 12): `/metadata/instance[/sub/path]` and `/metadata/loadbalancer`.
//!
//! The config's `instance` and `loadbalancer` documents are transcoded while the config is
//! parsed (serde-json-core's deserializer walks them, its serializer writes every string) into
//! compact JSON in fixed buffers ([`Doc`]). A request is answered by walking that copy again
//! ([`instance::render`]): the sub-path, the api-version's fields, JSON or a leaf's text.
//!
//! The answer can be much larger than a connection's send buffer: the router replies with a
//! [`BodySource`] (what to render and its length, from a counting walk) and the connection
//! renders the body chunk by chunk as the socket drains ([`render_chunk`]), without allocating.
//!
//! Choices where Azure's behaviour is unknown (INSTANCE.md §4): errors are `{"error":"<text>"}`;
//! an unknown path or index is 404 `{"error":"Not found"}` (also for `/metadata/instance`
//! without an `instance` in the config); a leaf without `format=text` is 400
//! `{"error":"Bad request. Leaf nodes need format=text"}`; `format=text` on an object or array
//! answers its JSON; the text body has no trailing newline; a missing `Metadata` header is 400
//! `{"error":"Bad request. Required metadata header not specified"}` (INSTANCE.md §1.1).
//! These answers are static: the per-source mint/fetch limiter does not count them.

pub mod instance;
pub mod since;
#[cfg(all(test, feature = "std"))]
mod tests;

use crate::http::{ContentType, Method, Request};
use crate::imds::Reply;
use crate::limits::{
    LOADBALANCER_MAX, METADATA_DEPTH_MAX, METADATA_FIELD_PATH_MAX, METADATA_PATH_MAX,
    PARAM_DECODE_BUF,
};
use crate::query;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Serialize;

pub use crate::limits::INSTANCE_MAX;

/// A JSON document kept as compact JSON in a fixed buffer of `N` bytes (empty: not
/// configured). Without `std` (the unikernel) the buffer is inline; the daemon keeps its
/// 128 KiB buffer on the heap, once, so that configs and agents stay small on the stack.
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
            buf: std::vec![0; N].into_boxed_slice(),
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

/// Why a document of the config was refused, and where (`compute.platformFaultDomain`).
pub struct Problem {
    /// The path inside the document.
    pub path: heapless::String<METADATA_FIELD_PATH_MAX>,
    /// What is wrong.
    pub why: &'static str,
}

/// What the config reader hands the transcoder.
pub(crate) struct Transcode<'a> {
    out: &'a mut [u8],
    len: usize,
    path: heapless::String<METADATA_FIELD_PATH_MAX>,
    /// Path segments that did not fit `path` (it shows the outer ones).
    overflow: usize,
    depth: usize,
    /// `loadbalancer`: a member named `…Port` holds a number (Azure's ports are numbers).
    ports: bool,
    problem: Option<&'static str>,
}

#[cfg(not(feature = "std"))]
const TOO_LARGE: &str = "is larger than 16 KiB of compact JSON (limits::INSTANCE_MAX)";
#[cfg(feature = "std")]
const TOO_LARGE: &str = "is larger than 128 KiB of compact JSON (limits::INSTANCE_MAX)";
#[cfg(not(feature = "std"))]
const LB_TOO_LARGE: &str = "is larger than 4 KiB of compact JSON (limits::LOADBALANCER_MAX)";
#[cfg(feature = "std")]
const LB_TOO_LARGE: &str = "is larger than 16 KiB of compact JSON (limits::LOADBALANCER_MAX)";

/// Transcode the next value of `map` (the config's `instance`, or with `ports` its
/// `loadbalancer`) into `out`. `null` leaves `out` empty. Err: what is wrong and where (the
/// serde error that stopped the parse is then only the carrier).
pub(crate) fn transcode<'de, A: MapAccess<'de>, const N: usize>(
    map: &mut A,
    out: &mut Doc<N>,
    ports: bool,
) -> Result<Result<(), Problem>, A::Error> {
    finish(out, ports, |t| map.next_value_seed(Top(t)))
}

/// Transcode a whole JSON document (an `instance`, or with `loadbalancer` a load balancer
/// document) into `out`, as the config reader does (tests, fuzzing, tools).
pub fn load<const N: usize>(
    json: &[u8],
    out: &mut Doc<N>,
    loadbalancer: bool,
) -> Result<(), Problem> {
    let mut scratch = [0u8; crate::limits::CONFIG_STRING_MAX];
    let mut de = serde_json_core::de::Deserializer::new(json, Some(&mut scratch));
    match finish(out, loadbalancer, |t| {
        Top(t).deserialize(&mut de)?;
        de.end().map(|_| ())
    }) {
        Ok(r) => r,
        Err(_) => Err(Problem {
            path: heapless::String::new(),
            why: "is not valid JSON",
        }),
    }
}

fn finish<E, F, const N: usize>(
    out: &mut Doc<N>,
    ports: bool,
    read: F,
) -> Result<Result<(), Problem>, E>
where
    F: FnOnce(&mut Transcode<'_>) -> Result<(), E>,
{
    out.len = 0;
    let mut t = Transcode {
        out: &mut out.buf[..],
        len: 0,
        path: heapless::String::new(),
        overflow: 0,
        depth: 0,
        ports,
        problem: None,
    };
    let r = read(&mut t);
    let (len, problem, path) = (t.len, t.problem, t.path);
    match (r, problem) {
        (_, Some(why)) => Ok(Err(Problem { path, why })),
        (Err(e), None) => Err(e),
        (Ok(()), None) => {
            if ports || len == 0 {
                out.len = len;
                return Ok(Ok(()));
            }
            // The required shape, checked with the serving walker: `compute` and `network`
            // are objects (a counting walk at the newest api-version finds them).
            for key in ["compute", "network"] {
                let q = instance::Query {
                    path: key,
                    version: since::NEWEST[0],
                    text: false,
                    extended: false,
                };
                let why =
                    match instance::render(&out.buf[..len], q, instance::Sink::new(0, &mut [])) {
                        Ok(_) => continue,
                        Err(instance::Miss::NotFound) => "is required",
                        Err(instance::Miss::LeafNeedsText) => "must be an object",
                    };
                let mut path = heapless::String::new();
                let _ = path.push_str(key);
                return Ok(Err(Problem { path, why }));
            }
            out.len = len;
            Ok(Ok(()))
        }
    }
}

impl Transcode<'_> {
    fn fail<E: de::Error>(&mut self, why: &'static str) -> E {
        self.problem = Some(why);
        E::custom("")
    }
    fn put<E: de::Error>(&mut self, b: &[u8]) -> Result<(), E> {
        match self.out.get_mut(self.len..self.len + b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                self.len += b.len();
                Ok(())
            }
            None => Err(self.too_large()),
        }
    }
    /// A string, quoted and escaped by serde-json-core's serializer.
    fn put_str<E: de::Error>(&mut self, s: &str) -> Result<(), E> {
        match serde_json_core::to_slice(s, &mut self.out[self.len..]) {
            Ok(n) => {
                self.len += n;
                Ok(())
            }
            Err(_) => Err(self.too_large()),
        }
    }
    fn too_large<E: de::Error>(&mut self) -> E {
        self.path.clear();
        self.overflow = 0;
        self.fail(if self.ports { LB_TOO_LARGE } else { TOO_LARGE })
    }
    fn push(&mut self, sep: &str, name: &str) -> usize {
        let mark = self.path.len();
        if self.overflow > 0
            || self.path.push_str(sep).is_err()
            || self.path.push_str(name).is_err()
        {
            self.path.truncate(mark);
            self.overflow += 1;
        }
        mark
    }
    fn pop(&mut self, mark: usize) {
        if self.overflow > 0 {
            self.overflow -= 1;
        } else {
            self.path.truncate(mark);
        }
    }
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > METADATA_DEPTH_MAX {
            return Err(self.fail("is nested too deeply (limits::METADATA_DEPTH_MAX)"));
        }
        Ok(())
    }
}

/// The document: `null` or an object.
struct Top<'t, 'a>(&'t mut Transcode<'a>);

impl<'de> DeserializeSeed<'de> for Top<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for Top<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("null or an object")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let t = self.0;
        d.deserialize_ignored_any(Value { t, top: true })
    }
}

/// One value of the document (any JSON type: the deserializer's `ignored_any` tells which).
struct Value<'t, 'a> {
    t: &'t mut Transcode<'a>,
    top: bool,
}

impl<'de> DeserializeSeed<'de> for Value<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_ignored_any(self)
    }
}

impl<'de> Visitor<'de> for Value<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a string, an array or an object")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if self.top {
            return Err(self.t.fail("must be an object"));
        }
        self.t.put_str(v)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // A number, `true`, `false` or `null` (serde-json-core does not say which).
        Err(self.t.fail(if self.t.ports {
            "must be a string, an array or an object (numbers only in `…Port` fields)"
        } else {
            "must be a string, an array or an object (Azure sends every value as a string)"
        }))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let t = self.t;
        if self.top {
            return Err(t.fail("must be an object"));
        }
        t.enter()?;
        t.put(b"[")?;
        let mut i = 0u64;
        loop {
            let mut n = heapless::String::<24>::new();
            let _ = n.push('[');
            imds_hal::text::Text::dec(&mut n, i);
            let _ = n.push(']');
            let mark = t.push("", &n);
            let more = seq
                .next_element_seed(Element {
                    t: &mut *t,
                    comma: i > 0,
                })?
                .is_some();
            t.pop(mark);
            if !more {
                break;
            }
            i += 1;
        }
        t.put(b"]")?;
        t.depth -= 1;
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let t = self.t;
        t.enter()?;
        t.put(b"{")?;
        let mut first = true;
        while let Some(mark) = map.next_key_seed(Key {
            t: &mut *t,
            comma: !first,
        })? {
            first = false;
            // `Key` pushed the key onto the path.
            if t.ports && t.overflow == 0 && t.path.ends_with("Port") {
                map.next_value_seed(Port(&mut *t))?;
            } else {
                map.next_value_seed(Value {
                    t: &mut *t,
                    top: false,
                })?;
            }
            t.pop(mark);
        }
        t.put(b"}")?;
        t.depth -= 1;
        Ok(())
    }
}

/// An array element: `,` (unless first) then the value.
struct Element<'t, 'a> {
    t: &'t mut Transcode<'a>,
    comma: bool,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.comma {
            self.t.put(b",")?;
        }
        Value {
            t: self.t,
            top: false,
        }
        .deserialize(d)
    }
}

/// An object key: `,` (unless first), the key and `:`; the key goes onto the path.
struct Key<'t, 'a> {
    t: &'t mut Transcode<'a>,
    comma: bool,
}

impl<'de> DeserializeSeed<'de> for Key<'_, '_> {
    type Value = usize;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_, '_> {
    type Value = usize;
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        if self.comma {
            self.t.put(b",")?;
        }
        self.t.put_str(v)?;
        self.t.put(b":")?;
        let sep = if self.t.path.is_empty() { "" } else { "." };
        Ok(self.t.push(sep, v))
    }
}

/// A `…Port` member of `loadbalancer`: a non-negative integer.
struct Port<'t, 'a>(&'t mut Transcode<'a>);

impl<'de> DeserializeSeed<'de> for Port<'_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_u64(self)
    }
}

impl<'de> Visitor<'de> for Port<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a port number")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let mut n = heapless::String::<20>::new();
        imds_hal::text::Text::dec(&mut n, v);
        self.0.put(n.as_bytes())
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

/// The api-version error of `/metadata/*` (INSTANCE.md §1.2; cloud-init falls back on it).
pub const API_VERSION_ERROR: &str = "Bad request. api-version is invalid or was not specified in the request. For more information refer to aka.ms/azureimds";
/// 404 of an unknown path or index.
pub const NOT_FOUND: &str = "Not found";
/// 400 of a leaf without `format=text`.
pub const LEAF_NEEDS_TEXT: &str = "Bad request. Leaf nodes need format=text";
/// 404 of `/metadata/loadbalancer` without a `loadbalancer` in the config (Azure's text).
pub const NO_LOADBALANCER: &str = "No load balancer metadata is found. Please check if your VM is using any non-basic SKU load balancer and retry later.";
/// First api-version of `/metadata/loadbalancer`.
pub const LOADBALANCER_SINCE: &str = "2020-10-01";

fn error(reply: &mut Reply, status: u16, text: &str) {
    #[derive(Serialize)]
    struct E<'a> {
        error: &'a str,
    }
    reply.json(status, &E { error: text });
}

fn api_version_error(reply: &mut Reply) {
    #[derive(Serialize)]
    struct E<'a> {
        error: &'a str,
        #[serde(rename = "newest-versions")]
        newest_versions: [&'a str; 3],
    }
    reply.json(
        400,
        &E {
            error: API_VERSION_ERROR,
            newest_versions: since::NEWEST,
        },
    );
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

/// Answer `/metadata/instance…` and `/metadata/loadbalancer`; `false`: not one of them.
pub fn route(docs: &Documents, req: &Request<'_>, reply: &mut Reply) -> bool {
    let (source, sub) = if let Some(sub) = below(req.path, "/metadata/instance") {
        (Source::Instance, sub)
    } else if let Some("") = below(req.path, "/metadata/loadbalancer") {
        (Source::LoadBalancer, "")
    } else {
        return false;
    };
    if !matches!(req.method, Method::Get | Method::Head) {
        reply.allow = Some("GET, HEAD");
        error(reply, 405, "Bad request. Http method is not allowed");
        return true;
    }
    let metadata = req
        .header("metadata")
        .map(|v| matches!(crate::http::trim(v), b"true" | b"True"))
        .unwrap_or(false);
    if !metadata {
        error(
            reply,
            400,
            "Bad request. Required metadata header not specified",
        );
        return true;
    }
    if req.has_header("x-forwarded-for") || req.has_header("forwarded") {
        error(
            reply,
            400,
            "Bad request. Requests through a proxy (X-Forwarded-For, Forwarded) are not allowed",
        );
        return true;
    }
    let mut buf = [0u8; PARAM_DECODE_BUF];
    let Ok(params) = query::decode(req.query.as_bytes(), &mut buf) else {
        error(reply, 400, "Bad request. The query string cannot be read");
        return true;
    };
    if params.duplicate().is_some() {
        error(
            reply,
            400,
            "Bad request. A query parameter is specified more than once",
        );
        return true;
    }
    let version = match params.get("api-version").and_then(since::supported) {
        Some(v) if source == Source::Instance || v >= LOADBALANCER_SINCE => v,
        _ => {
            api_version_error(reply);
            return true;
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
    match source {
        Source::LoadBalancer => {
            if docs.loadbalancer.is_empty() {
                error(reply, 404, NO_LOADBALANCER);
                return true;
            }
            body.len = docs.loadbalancer.bytes().len();
            reply.content_type = ContentType::Json;
        }
        Source::Instance => {
            if docs.instance.is_empty() || body.path.push_str(sub).is_err() {
                error(reply, 404, NOT_FOUND);
                return true;
            }
            let counted = instance::render(
                docs.instance.bytes(),
                body.query(),
                instance::Sink::new(0, &mut []),
            );
            match counted {
                Ok((kind, len, _)) => {
                    body.len = len;
                    reply.content_type = match kind {
                        instance::Kind::Json => ContentType::Json,
                        instance::Kind::Text => ContentType::Text,
                    };
                }
                Err(instance::Miss::NotFound) => {
                    error(reply, 404, NOT_FOUND);
                    return true;
                }
                Err(instance::Miss::LeafNeedsText) => {
                    error(reply, 400, LEAF_NEEDS_TEXT);
                    return true;
                }
            }
        }
    }
    reply.status = 200;
    reply.body.clear();
    reply.big = Some(body);
    true
}
