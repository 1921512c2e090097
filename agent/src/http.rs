//! HTTP/1.1 over a fixed buffer: the request parser and the response writer.
//!
//! The parser knows nothing of IMDS. It takes the bytes a connection has received so far and
//! says: not complete yet, a complete request (and how many bytes it used), or an error with the
//! status to answer before closing. The request line and headers are read by `httparse`
//! (no allocation, fuzzed upstream); framing (`Content-Length`, limits, keep-alive) is here.

use crate::limits::{MAX_HEADERS, REQUEST_BODY_MAX, REQUEST_HEAD_MAX, REQUEST_TARGET_MAX};
use imds_hal::text::Text;

/// A request method the agent tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`.
    Head,
    /// `POST`.
    Post,
    /// Any other (syntactically valid) method: answered 405 where a route exists.
    Other,
}

impl Method {
    fn from_str(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }
}

/// One header: the name as sent, the raw value.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// The header name as sent.
    pub name: &'a str,
    /// Its raw value.
    pub value: &'a [u8],
}

/// A complete, framed request borrowed from the receive buffer.
#[derive(Debug)]
pub struct Request<'a> {
    /// The method, if one the agent answers.
    pub method: Method,
    /// The method as sent (for the log).
    pub method_str: &'a str,
    /// Path part of the request target (before `?`), not decoded.
    pub path: &'a str,
    /// Query part of the request target (after `?`), not decoded; empty if none.
    pub query: &'a str,
    /// HTTP minor version: 0 or 1.
    pub minor_version: u8,
    /// The headers.
    pub headers: heapless::Vec<Header<'a>, MAX_HEADERS>,
    /// The body (`Content-Length` bytes).
    pub body: &'a [u8],
    /// Whether the connection stays open after the answer.
    pub keep_alive: bool,
}

impl<'a> Request<'a> {
    /// First header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether a header of that name is present at all.
    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

/// Why a request could not be read. Each maps to a status; the connection closes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpError {
    /// Not HTTP/1.x, a malformed request line or header, a bad `Content-Length`.
    BadRequest(&'static str),
    /// Request head larger than [`REQUEST_HEAD_MAX`] or more than [`MAX_HEADERS`] headers.
    HeadTooLarge,
    /// Request target longer than [`REQUEST_TARGET_MAX`].
    UriTooLong,
    /// Body larger than [`REQUEST_BODY_MAX`].
    BodyTooLarge,
}

impl HttpError {
    /// The status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::HeadTooLarge => 431,
            HttpError::UriTooLong => 414,
            HttpError::BodyTooLarge => 413,
        }
    }
}

impl HttpError {
    /// The message, written without `core::fmt`; `Display` writes the same.
    pub fn describe<W: Text + ?Sized>(&self, out: &mut W) {
        match self {
            HttpError::BadRequest(why) => out.put("Bad request: ").put(why),
            HttpError::HeadTooLarge => out.put("Request header section too large"),
            HttpError::UriTooLong => out.put("Request URI too long"),
            HttpError::BodyTooLarge => out.put("Request body too large"),
        };
    }
}

impl core::fmt::Display for HttpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.describe(f);
        Ok(())
    }
}

impl core::error::Error for HttpError {}

/// Result of looking at the bytes received so far.
// `Complete` is large (the header table), but lives on the stack only for one call: no heap here.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parse<'a> {
    /// More bytes are needed.
    Partial,
    /// A whole request, and how many bytes of the buffer it took.
    Complete(Request<'a>, usize),
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    // httparse accepts bare LF line ends as well as CRLF; so do we when framing.
    let mut i = 0;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// Parse one request from the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parse<'_>, HttpError> {
    // Leading empty lines before a request line are allowed (RFC 9112 §2.2).
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
    }
    let data = &buf[start..];
    let head_end = match find_head_end(data) {
        Some(end) => end,
        None => {
            if data.len() >= REQUEST_HEAD_MAX {
                return Err(HttpError::HeadTooLarge);
            }
            // Fail early on a request line that is already too long or not HTTP.
            let line_end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
            if line_end > REQUEST_TARGET_MAX + 32 {
                return Err(HttpError::UriTooLong);
            }
            if line_end < data.len() {
                // The request line is complete: let httparse judge it now, so that garbage
                // is refused without waiting for more.
                check_request_line(&data[..=line_end])?;
            }
            return Ok(Parse::Partial);
        }
    };
    if head_end > REQUEST_HEAD_MAX {
        return Err(HttpError::HeadTooLarge);
    }

    let mut raw_headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw_headers);
    match req.parse(&data[..head_end]) {
        Ok(httparse::Status::Complete(n)) if n == head_end => {}
        Ok(_) => return Err(HttpError::BadRequest("malformed request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(_) => return Err(HttpError::BadRequest("malformed request head")),
    }
    let method_str = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let minor_version = req.version.unwrap_or(1);
    if target.len() > REQUEST_TARGET_MAX {
        return Err(HttpError::UriTooLong);
    }
    if !target.starts_with('/') {
        return Err(HttpError::BadRequest(
            "request target must be an absolute path",
        ));
    }
    let (path, query) = match target.find('?') {
        Some(i) => (&target[..i], &target[i + 1..]),
        None => (target, ""),
    };

    let mut headers: heapless::Vec<Header<'_>, MAX_HEADERS> = heapless::Vec::new();
    let mut content_length: Option<usize> = None;
    let mut conn_close = false;
    let mut conn_keep_alive = false;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = parse_content_length(h.value)?;
            if content_length.is_some_and(|prev| prev != len) {
                return Err(HttpError::BadRequest("conflicting Content-Length headers"));
            }
            content_length = Some(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::BadRequest("Transfer-Encoding is not supported"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = trim(token);
                if t.eq_ignore_ascii_case(b"close") {
                    conn_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    conn_keep_alive = true;
                }
            }
        }
        // Cannot overflow: httparse filled at most MAX_HEADERS.
        let _ = headers.push(Header {
            name: h.name,
            value: h.value,
        });
    }

    let body_len = content_length.unwrap_or(0);
    if body_len > REQUEST_BODY_MAX {
        return Err(HttpError::BodyTooLarge);
    }
    let total = head_end + body_len;
    if data.len() < total {
        return Ok(Parse::Partial);
    }
    let keep_alive = if minor_version == 0 {
        conn_keep_alive && !conn_close
    } else {
        !conn_close
    };
    Ok(Parse::Complete(
        Request {
            method: Method::from_str(method_str),
            method_str,
            path,
            query,
            minor_version,
            headers,
            body: &data[head_end..total],
            keep_alive,
        },
        start + total,
    ))
}

fn check_request_line(line: &[u8]) -> Result<(), HttpError> {
    let mut no_headers: [httparse::Header<'_>; 0] = [];
    let mut req = httparse::Request::new(&mut no_headers);
    match req.parse(line) {
        // The head is not complete, so Partial is the expected answer for a good line;
        // TooManyHeaders means the line parsed and a header follows.
        Ok(_) | Err(httparse::Error::TooManyHeaders) => Ok(()),
        Err(_) => Err(HttpError::BadRequest("malformed request line")),
    }
}

fn parse_content_length(v: &[u8]) -> Result<usize, HttpError> {
    let v = trim(v);
    if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadRequest("invalid Content-Length"));
    }
    Ok(v.iter()
        .fold(0usize, |acc, &d| acc * 10 + (d - b'0') as usize))
}

pub(crate) fn trim(mut v: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = v {
        if first.is_ascii_whitespace() {
            v = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = v {
        if last.is_ascii_whitespace() {
            v = rest;
        } else {
            break;
        }
    }
    v
}

/// Reason phrase of the statuses the agent sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Content types the agent answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// `application/json`.
    Json,
    /// `text/plain`.
    Text,
}

impl ContentType {
    fn as_str(self) -> &'static str {
        match self {
            ContentType::Json => "application/json; charset=utf-8",
            ContentType::Text => "text/plain; charset=utf-8",
        }
    }
}

/// The head of a response; the body is written by the caller into the same buffer.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'a> {
    /// Status code.
    pub status: u16,
    /// The body's type.
    pub content_type: ContentType,
    /// A `Retry-After` header.
    pub retry_after_s: Option<u32>,
    /// An `Allow` header (405).
    pub allow: Option<&'static str>,
    /// A `WWW-Authenticate` header (401: Azure Arc's challenge, module `hosts`).
    pub www_authenticate: Option<&'a str>,
    /// `Connection: keep-alive` or `close`.
    pub keep_alive: bool,
}

/// The response could not fit the connection's send buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseTooLarge;

/// Write a whole response (`head`, then `body` unless `head_only`) into `out`.
pub fn write_response<const N: usize>(
    out: &mut heapless::Vec<u8, N>,
    head: &ResponseHead,
    body: &[u8],
    head_only: bool,
) -> Result<(), ResponseTooLarge> {
    write_head(out, head, body.len())?;
    if !head_only {
        out.extend_from_slice(body).map_err(|_| ResponseTooLarge)?;
    }
    Ok(())
}

/// The status line and headers of a response whose body (`content_length` bytes) follows
/// separately (a body rendered in chunks, module `metadata`).
pub fn write_head<const N: usize>(
    out: &mut heapless::Vec<u8, N>,
    head: &ResponseHead,
    content_length: usize,
) -> Result<(), ResponseTooLarge> {
    /// Appends to `out`, remembering whether anything did not fit.
    struct Append<'a, const N: usize> {
        out: &'a mut heapless::Vec<u8, N>,
        full: bool,
    }
    impl<const N: usize> core::fmt::Write for Append<'_, N> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            if self.out.extend_from_slice(s.as_bytes()).is_err() {
                self.full = true;
            }
            Ok(())
        }
    }
    // Written piece by piece, without `core::fmt`'s formatting machinery (see `imds_hal::text`).
    let mut w = Append { out, full: false };
    w.put("HTTP/1.1 ")
        .dec(head.status.into())
        .put(" ")
        .put(reason(head.status))
        .put("\r\nContent-Type: ")
        .put(head.content_type.as_str())
        .put("\r\nContent-Length: ")
        .dec(content_length as u64)
        .put("\r\nServer: imds-agent\r\n");
    if let Some(secs) = head.retry_after_s {
        w.put("Retry-After: ").dec(secs.into()).put("\r\n");
    }
    if let Some(allow) = head.allow {
        w.put("Allow: ").put(allow).put("\r\n");
    }
    if let Some(challenge) = head.www_authenticate {
        w.put("WWW-Authenticate: ").put(challenge).put("\r\n");
    }
    w.put(if head.keep_alive {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    if w.full {
        return Err(ResponseTooLarge);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf) {
            Ok(Parse::Complete(r, n)) => (r, n),
            other => panic!("expected complete, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /metadata/identity/oauth2/token?resource=x&api-version=2018-02-01 HTTP/1.1\r\nHost: a\r\nMetadata: true\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(n, raw.len());
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/metadata/identity/oauth2/token");
        assert_eq!(r.query, "resource=x&api-version=2018-02-01");
        assert_eq!(r.header("METADATA"), Some(&b"true"[..]));
        assert!(r.keep_alive);
        assert!(r.body.is_empty());
    }

    #[test]
    fn partial_until_blank_line() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Ok(Parse::Partial)
        ));
        assert!(matches!(parse(b"GET / HT"), Ok(Parse::Partial)));
        assert!(matches!(parse(b""), Ok(Parse::Partial)));
    }

    #[test]
    fn body_framed_by_content_length_and_pipelining() {
        let raw =
            b"POST /oauth2/token HTTP/1.1\r\nContent-Length: 5\r\n\r\nabcdeGET / HTTP/1.1\r\n\r\n";
        let (r, n) = complete(raw);
        assert_eq!(r.body, b"abcde");
        let (r2, _) = complete(&raw[n..]);
        assert_eq!(r2.method, Method::Get);
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Ok(Parse::Partial)
        ));
    }

    #[test]
    fn keep_alive_rules() {
        assert!(!complete(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive);
        assert!(
            complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .0
                .keep_alive
        );
        assert!(
            !complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .0
                .keep_alive
        );
    }

    #[test]
    fn errors() {
        assert_eq!(parse(b"garbage\r\n\r\n").unwrap_err().status(), 400);
        assert_eq!(parse(b"\x00\x01\x02 \r\n").unwrap_err().status(), 400);
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 99999\r\n\r\n")
                .unwrap_err()
                .status(),
            413
        );
        let mut big = [b'a'; REQUEST_HEAD_MAX + 10];
        big[..16].copy_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(parse(&big).unwrap_err().status(), 431);
        let mut long = [b'a'; REQUEST_TARGET_MAX + 100];
        long[..5].copy_from_slice(b"GET /");
        assert_eq!(parse(&long).unwrap_err().status(), 414);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut buf: heapless::Vec<u8, 4096> = heapless::Vec::new();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n").unwrap();
        for _ in 0..MAX_HEADERS + 1 {
            buf.extend_from_slice(b"X: y\r\n").unwrap();
        }
        buf.extend_from_slice(b"\r\n").unwrap();
        assert_eq!(parse(&buf).unwrap_err().status(), 431);
    }

    #[test]
    fn response_writer() {
        let mut out: heapless::Vec<u8, 512> = heapless::Vec::new();
        let head = ResponseHead {
            status: 429,
            content_type: ContentType::Json,
            retry_after_s: Some(2),
            allow: None,
            www_authenticate: None,
            keep_alive: true,
        };
        write_response(&mut out, &head, b"{}", false).unwrap();
        let s = core::str::from_utf8(&out).unwrap();
        assert!(s.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(s.contains("Retry-After: 2\r\n"));
        assert!(s.contains("Content-Length: 2\r\n"));
        assert!(s.ends_with("\r\n\r\n{}"));
        assert_eq!(
            s,
            "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 2\r\nServer: imds-agent\r\nRetry-After: 2\r\nConnection: keep-alive\r\n\r\n{}"
        );
    }

    #[test]
    fn a_response_that_does_not_fit_is_refused() {
        let head = ResponseHead {
            status: 405,
            content_type: ContentType::Json,
            retry_after_s: None,
            allow: Some("GET, HEAD"),
            www_authenticate: None,
            keep_alive: false,
        };
        // The head alone does not fit.
        let mut small: heapless::Vec<u8, 64> = heapless::Vec::new();
        assert_eq!(
            write_response(&mut small, &head, b"{}", false),
            Err(ResponseTooLarge)
        );
        // The head fits, the body does not.
        let mut out: heapless::Vec<u8, 200> = heapless::Vec::new();
        assert_eq!(
            write_response(&mut out, &head, &[b'x'; 100], false),
            Err(ResponseTooLarge)
        );
        out.clear();
        write_response(&mut out, &head, &[b'x'; 100], true).unwrap();
        assert!(core::str::from_utf8(&out)
            .unwrap()
            .contains("Allow: GET, HEAD\r\nConnection: close\r\n\r\n"));
    }
}
