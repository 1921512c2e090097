//! The walker of `/metadata/instance`: one pass over a JSON document with serde-json-core's
//! deserializer (one visitor type, `Step`), which
//! * serves: follows the sub-path through the stored compact document,
//!   hides the fields the api-version does not have, and writes the answer into a [`Sink`]
//!   window — an empty window is the counting pass (exists? leaf? Content-Length), a window
//!   at an offset is one chunk of a large reply;
//! * loads (`load`): reads the config's `instance` / `loadbalancer` value and writes its
//!   compact copy, refusing numbers, booleans and `null` (ports of a load balancer excepted)
//!   with the path of the field, and an `instance` without `compute` and `network` objects.
//!   Loading is at the newest api-version: no field is hidden, no version table is looked up.

use super::since;
use crate::limits::{CONFIG_STRING_MAX, METADATA_DEPTH_MAX, METADATA_FIELD_PATH_MAX};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What is asked.
#[derive(Clone, Copy)]
pub struct Query<'a> {
    /// The sub-path below `/metadata/instance`, without leading or trailing `/` (`""`: all).
    pub path: &'a str,
    /// The api-version (an entry of [`since::SUPPORTED`]).
    pub version: &'a str,
    /// `format=text`.
    pub text: bool,
    /// `extended=true`: the top level gains `"extended":{"compute":{"ppsType":"None"}}`.
    pub extended: bool,
}

/// Why there is no answer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// 404: no such key or index (or hidden at this api-version).
    NotFound,
    /// 400: a leaf without `format=text`.
    LeafNeedsText,
    /// Reading a config document (`load`): what is wrong at the walk's current path.
    Invalid(&'static str),
}

/// What the answer is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A JSON document (object or array).
    Json,
    /// A leaf's bare value.
    Text,
}

/// Where the answer goes: the window `skip..skip + out.len()` of it is copied into `out`;
/// `total` counts every byte of the answer (the window may be empty: a counting pass).
pub struct Sink<'o> {
    skip: usize,
    out: &'o mut [u8],
    total: usize,
}

impl<'o> Sink<'o> {
    /// A window of the answer starting at byte `skip`.
    pub fn new(skip: usize, out: &'o mut [u8]) -> Self {
        Sink {
            skip,
            out,
            total: 0,
        }
    }

    /// Bytes of the answer seen so far.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Bytes copied into the window.
    pub fn filled(&self) -> usize {
        self.total.saturating_sub(self.skip).min(self.out.len())
    }

    fn full(&self) -> bool {
        !self.out.is_empty() && self.total >= self.skip + self.out.len()
    }

    /// Append `b` to the answer.
    pub fn put(&mut self, b: &[u8]) {
        let start = self.total;
        self.total += b.len();
        let lo = start.max(self.skip);
        let hi = self.total.min(self.skip + self.out.len());
        if lo < hi {
            self.out[lo - self.skip..hi - self.skip].copy_from_slice(&b[lo - start..hi - start]);
        }
    }
}

/// The field path of the current node, for [`since::visible`] (`compute.publicKeys[]`).
struct Gate {
    path: heapless::String<METADATA_FIELD_PATH_MAX>,
    /// The api-version's [`since::index`]: every field is visible at most of them (at the
    /// newest, which the config reader loads at), and then no path is looked up.
    at: usize,
    /// The path did not fit: nothing below is in the table (all its paths are shorter).
    overflow: usize,
}

impl Gate {
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
    /// Whether the child `key` of the current object exists at the api-version.
    #[inline(never)]
    fn child_visible(&mut self, key: &str) -> bool {
        if self.overflow > 0 || since::all_visible(self.at) {
            return true;
        }
        let sep = if self.path.is_empty() { "" } else { "." };
        let mark = self.push(sep, key);
        let v = self.overflow > 0 || since::visible(&self.path, self.at);
        self.pop(mark);
        v
    }
}

struct Walk<'q, 'o> {
    q: Query<'q>,
    sink: Sink<'o>,
    gate: Gate,
    miss: Option<Miss>,
    kind: Kind,
    /// The window is full, or the sub-path's node was written: the walk stopped early (not an
    /// error).
    stopped: bool,
    /// Reading a config document into its stored copy (`Some(ports)`: `loadbalancer`, whose
    /// `…Port` members are numbers) rather than serving the stored copy.
    load: Option<bool>,
    depth: usize,
    /// Loading an `instance`: where the compact copy of the first value of each of its
    /// [`REQUIRED`] members starts (`usize::MAX`: absent), for their shape.
    required: [usize; 2],
}

/// The members an `instance` must have, as objects.
const REQUIRED: [&str; 2] = ["compute", "network"];

impl Walk<'_, '_> {
    fn fail<E: de::Error>(&mut self, miss: Miss) -> E {
        self.miss = Some(miss);
        E::custom("")
    }
    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        self.depth += 1;
        if self.depth > METADATA_DEPTH_MAX {
            return Err(self.fail(Miss::Invalid(
                "is nested too deeply (limits::METADATA_DEPTH_MAX)",
            )));
        }
        Ok(())
    }
    /// The node a sub-path names was written: the rest of the document cannot change the
    /// answer (a later duplicate key is ignored), so the walk ends here.
    fn done<E: de::Error>(&mut self) -> E {
        self.stopped = true;
        E::custom("")
    }
    fn stop<E: de::Error>(&mut self) -> Result<(), E> {
        if self.load.is_none() && self.sink.full() {
            self.stopped = true;
            return Err(E::custom(""));
        }
        Ok(())
    }
}

/// Walk `doc` (a stored `instance`) for `q`, writing the window of `sink`.
pub fn render(doc: &[u8], q: Query<'_>, sink: Sink<'_>) -> Result<(Kind, usize, usize), Miss> {
    let mut w = Walk::new(q, sink, None);
    // Strings with escapes are unescaped here (the config held them to this size).
    let mut scratch = [0u8; CONFIG_STRING_MAX];
    let mut de = serde_json_core::de::Deserializer::new(doc, Some(&mut scratch));
    let r = Step {
        w: &mut w,
        rest: Some(q.path),
        target: false,
    }
    .deserialize(&mut de);
    match (r, w.miss) {
        (_, Some(m)) => Err(m),
        (Ok(()), None) => Ok((w.kind, w.sink.total(), w.sink.filled())),
        (Err(_), None) if w.stopped => Ok((w.kind, w.sink.total(), w.sink.filled())),
        // The stored document is valid: only a bug gets here.
        (Err(_), None) => Err(Miss::NotFound),
    }
}

impl<'q, 'o> Walk<'q, 'o> {
    fn new(q: Query<'q>, sink: Sink<'o>, load: Option<bool>) -> Self {
        Walk {
            q,
            sink,
            gate: Gate {
                path: heapless::String::new(),
                at: since::index(q.version),
                overflow: 0,
            },
            miss: None,
            kind: Kind::Json,
            stopped: false,
            load,
            depth: 0,
            required: [usize::MAX; 2],
        }
    }
}

/// What `load` found wrong, and where (`compute.platformFaultDomain`; `[]` for an array
/// element).
pub struct Invalid {
    /// The path inside the document.
    pub path: heapless::String<METADATA_FIELD_PATH_MAX>,
    /// What is wrong.
    pub why: &'static str,
}

/// Read a config document (the value `d` is at) with the same walker, writing its compact
/// copy into `out`: `Ok(Ok(len))`, or what is wrong with it (the serde error then only
/// carries it), or the deserializer's own error. Numbers, booleans and `null` are refused
/// (`ports`: except in `…Port` members); keys with escapes are not supported.
pub(crate) fn load<'de, D: de::Deserializer<'de>>(
    d: D,
    out: &mut [u8],
    ports: bool,
) -> Result<Result<usize, Invalid>, D::Error> {
    let q = Query {
        path: "",
        version: super::since::NEWEST[0],
        text: false,
        extended: false,
    };
    let mut w = Walk::new(q, Sink::new(0, out), Some(ports));
    let r = Step {
        w: &mut w,
        rest: None,
        target: true,
    }
    .deserialize(d);
    let why = match (r, w.miss) {
        (Err(e), None) => return Err(e),
        (_, Some(Miss::Invalid(why))) => why,
        (_, Some(_)) => "must be an object",
        (Ok(()), None) if w.sink.total() > w.sink.out.len() => {
            w.gate.path.clear();
            if ports {
                LB_TOO_LARGE
            } else {
                TOO_LARGE
            }
        }
        (Ok(()), None) if w.sink.out.first() != Some(&b'{') => "must be an object",
        (Ok(()), None) => {
            // An `instance` has `compute` and `network` objects (or arrays: what the serving
            // walker finds below them), each at its first occurrence.
            let out = &w.sink.out;
            let wrong = REQUIRED
                .iter()
                .zip(w.required)
                .find(|(_, at)| !ports && !matches!(out.get(*at), Some(b'{' | b'[')));
            let Some((key, at)) = wrong else {
                return Ok(Ok(w.sink.total()));
            };
            let _ = w.gate.path.push_str(key);
            if at == usize::MAX {
                "is required"
            } else {
                "must be an object"
            }
        }
    };
    Ok(Err(Invalid {
        path: w.gate.path,
        why,
    }))
}

#[cfg(not(feature = "std"))]
const TOO_LARGE: &str = "is larger than 16 KiB of compact JSON (limits::INSTANCE_MAX)";
#[cfg(feature = "std")]
const TOO_LARGE: &str = "is larger than 128 KiB of compact JSON (limits::INSTANCE_MAX)";
#[cfg(not(feature = "std"))]
const LB_TOO_LARGE: &str = "is larger than 4 KiB of compact JSON (limits::LOADBALANCER_MAX)";
#[cfg(feature = "std")]
const LB_TOO_LARGE: &str = "is larger than 16 KiB of compact JSON (limits::LOADBALANCER_MAX)";

/// The next segment of a sub-path and the rest.
fn split(path: &str) -> (&str, &str) {
    match path.split_once('/') {
        Some((a, b)) => (a, b),
        None => (path, ""),
    }
}

/// One value of the walk: with `rest`, follow that sub-path into it; without, write it (JSON;
/// the named leaf as text with `format=text`), fields gated by version. One visitor type for
/// both (each visitor type is another copy of serde-json-core's parser in the image).
struct Step<'w, 'q, 'o> {
    w: &'w mut Walk<'q, 'o>,
    rest: Option<&'q str>,
    /// This node is the one the sub-path names (not one inside it).
    target: bool,
}

impl<'de> DeserializeSeed<'de> for Step<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(mut self, d: D) -> Result<(), D::Error> {
        if self.rest == Some("") {
            self.rest = None;
            self.target = true;
        }
        d.deserialize_ignored_any(self)
    }
}

/// An array index in a sub-path: decimal digits only.
fn index(seg: &str) -> Option<usize> {
    if seg.is_empty() || seg.len() > 9 || !seg.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(seg.bytes().fold(0, |n, b| n * 10 + usize::from(b - b'0')))
}

/// Write a string without backslash (what the deserializer lends: it had no escape, so it
/// needs none) between quotes.
fn put_plain(w: &mut Walk<'_, '_>, v: &str) {
    w.sink.put(b"\"");
    w.sink.put(v.as_bytes());
    w.sink.put(b"\"");
}

/// Write an unescaped string as JSON: escaped again by serde-json-core's serializer, a
/// character at a time.
fn put_escaped(w: &mut Walk<'_, '_>, v: &str) {
    w.sink.put(b"\"");
    for c in v.chars() {
        let (mut utf8, mut b) = ([0u8; 4], [0u8; 16]);
        let one: &str = c.encode_utf8(&mut utf8);
        if let Ok(n) = serde_json_core::to_slice(one, &mut b) {
            w.sink.put(&b[1..n - 1]);
        }
    }
    w.sink.put(b"\"");
}

impl Step<'_, '_, '_> {
    /// A string value: `plain` when the deserializer lent it as it stands in the document
    /// (no escapes), otherwise unescaped into its scratch buffer.
    fn string<E: de::Error>(self, v: &str, plain: bool) -> Result<(), E> {
        if self.w.load.is_some() && plain && v.bytes().any(|b| b < 0x20) {
            return Err(self.w.fail(Miss::Invalid("has a control character")));
        }
        if self.rest.is_some() {
            // A key below a leaf.
            Err(self.w.fail(Miss::NotFound))
        } else if !self.target {
            if plain {
                put_plain(self.w, v);
            } else {
                put_escaped(self.w, v);
            }
            Ok(())
        } else if self.w.q.text {
            self.w.kind = Kind::Text;
            self.w.sink.put(v.as_bytes());
            Ok(())
        } else {
            // A leaf asked for without `format=text` (or, loading, a document that is one).
            Err(self.w.fail(Miss::LeafNeedsText))
        }
    }
}

impl<'de> Visitor<'de> for Step<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("instance metadata")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.string(v, false)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<(), E> {
        self.string(v, true)
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        // A number, `true`, `false` or `null` (serde-json-core does not say which): refused
        // in the config, so never in a stored `instance`.
        let miss = match self.w.load {
            None => Miss::NotFound,
            Some(false) => Miss::Invalid(
                "must be a string, an array or an object (Azure sends every value as a string)",
            ),
            Some(true) => Miss::Invalid(
                "must be a string, an array or an object (numbers only in `…Port` fields)",
            ),
        };
        Err(self.w.fail(miss))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let w = self.w;
        w.enter()?;
        let Some(path) = self.rest else {
            // `format=text` on an object or array: the JSON (INSTANCE.md §1.4: UNKNOWN upstream).
            w.sink.put(b"{");
            let mut first = true;
            while let Some(key) = map.next_key::<&str>()? {
                if !w.gate.child_visible(key) {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                if !first {
                    w.sink.put(b",");
                }
                first = false;
                put_plain(w, key);
                w.sink.put(b":");
                let sep = if w.gate.path.is_empty() { "" } else { "." };
                let mark = w.gate.push(sep, key);
                if w.load == Some(false) && w.depth == 1 {
                    if let Some(i) = REQUIRED.iter().position(|r| *r == key) {
                        w.required[i] = w.required[i].min(w.sink.total());
                    }
                }
                if w.load == Some(true) && key.ends_with("Port") {
                    map.next_value_seed(Port(&mut *w))?;
                } else {
                    map.next_value_seed(Step {
                        w: &mut *w,
                        rest: None,
                        target: false,
                    })?;
                }
                w.gate.pop(mark);
                w.stop()?;
            }
            if self.target && w.q.path.is_empty() && w.q.extended {
                if !first {
                    w.sink.put(b",");
                }
                w.sink.put(br#""extended":{"compute":{"ppsType":"None"}}"#);
            }
            w.sink.put(b"}");
            w.depth -= 1;
            return Ok(());
        };
        let (seg, rest) = split(path);
        while let Some(key) = map.next_key::<&str>()? {
            if key == seg && w.gate.child_visible(key) {
                let sep = if w.gate.path.is_empty() { "" } else { "." };
                w.gate.push(sep, key);
                map.next_value_seed(Step {
                    w: &mut *w,
                    rest: Some(rest),
                    target: false,
                })?;
                return Err(w.done());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Err(w.fail(Miss::NotFound))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let w = self.w;
        w.enter()?;
        let wanted = self.rest.map(|path| {
            let (seg, rest) = split(path);
            (index(seg), rest)
        });
        if wanted.is_none() {
            w.sink.put(b"[");
        }
        let mark = w.gate.push("", "[]");
        let mut i = 0usize;
        loop {
            let more = match wanted {
                // Writing: every element, `,` before all but the first (written by the seed
                // once the element is known to exist).
                None => seq
                    .next_element_seed(Element {
                        w: &mut *w,
                        comma: i > 0,
                    })?
                    .is_some(),
                Some((Some(n), rest)) if n == i => {
                    if seq
                        .next_element_seed(Step {
                            w: &mut *w,
                            rest: Some(rest),
                            target: false,
                        })?
                        .is_some()
                    {
                        return Err(w.done());
                    }
                    false
                }
                Some(_) => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                break;
            }
            i += 1;
            if wanted.is_none() {
                w.stop()?;
            }
        }
        w.gate.pop(mark);
        w.depth -= 1;
        match wanted {
            None => {
                w.sink.put(b"]");
                Ok(())
            }
            Some(_) => Err(w.fail(Miss::NotFound)),
        }
    }
}

/// A `…Port` member of a `loadbalancer` being loaded: a non-negative integer.
struct Port<'w, 'q, 'o>(&'w mut Walk<'q, 'o>);

impl<'de> DeserializeSeed<'de> for Port<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_u64(self)
    }
}

impl<'de> Visitor<'de> for Port<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a port number")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        let mut n = heapless::String::<20>::new();
        imds_hal::text::Text::dec(&mut n, v);
        self.0.sink.put(n.as_bytes());
        Ok(())
    }
}

/// An array element being written: `,` (unless first) then the value.
struct Element<'w, 'q, 'o> {
    w: &'w mut Walk<'q, 'o>,
    comma: bool,
}

impl<'de> DeserializeSeed<'de> for Element<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        if self.comma {
            self.w.sink.put(b",");
        }
        d.deserialize_ignored_any(Step {
            w: self.w,
            rest: None,
            target: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_windows() {
        let mut buf = [0u8; 4];
        let mut s = Sink::new(3, &mut buf);
        s.put(b"ab");
        s.put(b"cdefgh");
        assert_eq!(s.total(), 8);
        assert_eq!(s.filled(), 4);
        assert_eq!(&buf, b"defg");
        assert_eq!(index("012"), Some(12));
        assert_eq!(index("-1"), None);
        assert_eq!(index(""), None);
        assert_eq!(index("1a"), None);
    }
}
