//! The upstream exchange, sans-IO: the token request bytes, and reading the authority's answer.
//!
//! Request: RFC 6749 §4.4 client credentials as a form `POST`, authenticated with an RFC 7523
//! client assertion; v1 style sends `resource=R`, v2 style `scope=R/.default`.
//! Response: an HTTP/1.1 answer (`Content-Length`, chunked, or until close) whose JSON body is
//! read leniently: numbers may arrive as JSON numbers (v2) or strings (v1); `expires_on` is
//! computed when absent.

use crate::limits::{TOKEN_MAX, UPSTREAM_RESPONSE_MAX};
use imds_hal::text::{Checked, Text};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

/// Request style of the authority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `resource=R` (Entra v1, RFC 8707 resource indicators).
    V1,
    /// `scope=R/.default` (Entra v2).
    V2,
}

/// The `client_assertion_type` of RFC 7523.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn pct_encode<W: core::fmt::Write>(out: &mut W, s: &str) -> core::fmt::Result {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.write_char(b as char)?
            }
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.write_char('%')?;
                out.write_char(HEX[usize::from(b >> 4)] as char)?;
                out.write_char(HEX[usize::from(b & 0xf)] as char)?
            }
        }
    }
    Ok(())
}

/// Build the whole HTTP request (head and form body) into `out`.
#[allow(clippy::too_many_arguments)]
pub fn write_token_request<const N: usize>(
    out: &mut heapless::String<N>,
    host: &str,
    port: u16,
    path: &str,
    style: Style,
    client_id: &str,
    resource: &str,
    assertion: &str,
) -> Result<(), core::fmt::Error> {
    let mut body: heapless::String<{ TOKEN_MAX + 1024 }> = heapless::String::new();
    body.push_str("grant_type=client_credentials&client_id=")
        .map_err(|_| core::fmt::Error)?;
    pct_encode(&mut body, client_id)?;
    match style {
        Style::V1 => {
            body.push_str("&resource=").map_err(|_| core::fmt::Error)?;
            pct_encode(&mut body, resource)?;
        }
        Style::V2 => {
            body.push_str("&scope=").map_err(|_| core::fmt::Error)?;
            pct_encode(&mut body, resource)?;
            pct_encode(&mut body, "/.default")?;
        }
    }
    body.push_str("&client_assertion_type=")
        .map_err(|_| core::fmt::Error)?;
    pct_encode(&mut body, ASSERTION_TYPE)?;
    body.push_str("&client_assertion=")
        .map_err(|_| core::fmt::Error)?;
    body.push_str(assertion).map_err(|_| core::fmt::Error)?;
    out.clear();
    let mut w = Checked::new(out);
    w.put("POST ")
        .put(path)
        .put(" HTTP/1.1\r\nHost: ")
        .put(host);
    if port != 443 {
        w.put(":").dec(port.into());
    }
    w.put("\r\nContent-Type: application/x-www-form-urlencoded\r\nAccept: application/json\r\nContent-Length: ")
        .dec(body.len() as u64)
        .put("\r\nConnection: close\r\nUser-Agent: imds-agent\r\n\r\n")
        .put(&body);
    w.result()
}

/// Why an upstream answer could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseError {
    /// Not complete yet (more bytes needed).
    Incomplete,
    /// Not HTTP, bad framing, or larger than [`UPSTREAM_RESPONSE_MAX`].
    Malformed,
}

/// A complete HTTP response from the authority.
#[derive(Debug)]
pub struct HttpAnswer<'a> {
    /// HTTP status.
    pub status: u16,
    /// The `Retry-After` header, in seconds.
    pub retry_after_s: Option<u32>,
    /// The body.
    pub body: &'a [u8],
}

/// Parse a complete response in `buf` (`eof`: the peer closed, so "until close" bodies end).
/// A chunked body is de-chunked in place, hence `&mut`.
pub fn parse_response(buf: &mut [u8], eof: bool) -> Result<HttpAnswer<'_>, ResponseError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if !eof => return Err(ResponseError::Incomplete),
        _ => return Err(ResponseError::Malformed),
    };
    let status = resp.code.unwrap_or(0);
    let mut content_length = None;
    let mut chunked = false;
    let mut retry_after_s = None;
    for h in resp.headers.iter() {
        let v = crate::http::trim(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let s = core::str::from_utf8(v).map_err(|_| ResponseError::Malformed)?;
            content_length = Some(s.parse::<usize>().map_err(|_| ResponseError::Malformed)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            retry_after_s = core::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse::<u32>().ok());
        }
    }
    let body_start = head_len;
    let body_len = if chunked {
        // A dry run first: a partial chunked body must stay untouched for the next try.
        dechunk(&mut buf[body_start..], eof, true)?;
        dechunk(&mut buf[body_start..], eof, false)?
    } else if let Some(len) = content_length {
        if len > UPSTREAM_RESPONSE_MAX {
            return Err(ResponseError::Malformed);
        }
        if buf.len() - body_start < len {
            return Err(if eof {
                ResponseError::Malformed
            } else {
                ResponseError::Incomplete
            });
        }
        len
    } else if eof {
        buf.len() - body_start
    } else {
        return Err(ResponseError::Incomplete);
    };
    Ok(HttpAnswer {
        status,
        retry_after_s,
        body: &buf[body_start..body_start + body_len],
    })
}

/// Decode a chunked body in place; returns the decoded length.
fn dechunk(buf: &mut [u8], eof: bool, dry_run: bool) -> Result<usize, ResponseError> {
    let incomplete = || {
        if eof {
            ResponseError::Malformed
        } else {
            ResponseError::Incomplete
        }
    };
    let mut read = 0;
    let mut write = 0;
    loop {
        let (consumed, size) = match httparse::parse_chunk_size(&buf[read..]) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return Err(incomplete()),
            Err(_) => return Err(ResponseError::Malformed),
        };
        read += consumed;
        let size = usize::try_from(size).map_err(|_| ResponseError::Malformed)?;
        if size == 0 {
            return Ok(write);
        }
        // A size near usize::MAX must not wrap around (found by the upstream_parse fuzzer).
        let end = read
            .checked_add(size)
            .and_then(|e| e.checked_add(2))
            .ok_or(ResponseError::Malformed)?;
        if buf.len() < end {
            return Err(incomplete());
        }
        if !dry_run {
            buf.copy_within(read..read + size, write);
        }
        write += size;
        read += size;
        if &buf[read..read + 2] != b"\r\n" {
            return Err(ResponseError::Malformed);
        }
        read += 2;
    }
}

// ---- the JSON body ----------------------------------------------------------------------

/// What a token answer says, read leniently.
#[derive(Debug)]
pub struct TokenAnswer {
    /// The token.
    pub access_token: crate::secret::Secret<TOKEN_MAX>,
    /// Expiry, Unix seconds.
    pub expires_on: u64,
    /// Start of validity, Unix seconds.
    pub not_before: u64,
}

/// Why a token answer is unusable.
// The OAuth variant carries the authority's error text inline: the core has no heap.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenAnswerError {
    /// Not JSON, or no `access_token`, or no usable expiry.
    Malformed(&'static str),
    /// An OAuth2 error body (`error`, `error_description`): the description is kept for logs.
    OAuth {
        /// The OAuth2 `error` code.
        error: heapless::String<64>,
        /// The `error_description`.
        description: heapless::String<200>,
    },
}

impl TokenAnswerError {
    /// The message, written without `core::fmt`; `Display` writes the same.
    pub fn describe<W: Text + ?Sized>(&self, out: &mut W) {
        match self {
            TokenAnswerError::Malformed(why) => out.put("malformed token response: ").put(why),
            TokenAnswerError::OAuth { error, description } => {
                out.put(error).put(": ").put(description)
            }
        };
    }
}

impl core::fmt::Display for TokenAnswerError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.describe(f);
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Want {
    Num,
    Str,
}

enum Found<const N: usize> {
    Absent,
    Num(u64),
    Str(heapless::String<N>),
}

/// Extracts one top-level field of an object by name, ignoring the rest.
struct FieldSeed<'n, const N: usize> {
    name: &'n str,
    want: Want,
}

impl<'de, const N: usize> DeserializeSeed<'de> for FieldSeed<'_, N> {
    type Value = Found<N>;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Found<N>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for FieldSeed<'_, N> {
    type Value = Found<N>;
    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found<N>, A::Error> {
        let mut found = Found::Absent;
        while let Some(key) = map.next_key::<heapless::String<64>>()? {
            if key == self.name {
                found = match self.want {
                    Want::Num => Found::Num(map.next_value::<u64>()?),
                    Want::Str => Found::Str(map.next_value::<heapless::String<N>>()?),
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

fn field<const N: usize>(
    body: &[u8],
    name: &str,
    want: Want,
    scratch: &mut [u8],
) -> Result<Found<N>, serde_json_core::de::Error> {
    let mut de = serde_json_core::de::Deserializer::new(body, Some(scratch));
    let v = FieldSeed::<N> { name, want }.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

fn string_field<const N: usize>(
    body: &[u8],
    name: &str,
    scratch: &mut [u8],
) -> Option<heapless::String<N>> {
    match field::<N>(body, name, Want::Str, scratch) {
        Ok(Found::Str(s)) => Some(s),
        _ => None,
    }
}

/// A number that may be sent as a JSON number or a string of digits.
fn lenient_number(body: &[u8], name: &str, scratch: &mut [u8]) -> Option<u64> {
    match field::<24>(body, name, Want::Num, scratch) {
        Ok(Found::Num(n)) => Some(n),
        Ok(_) => None,
        Err(_) => match field::<24>(body, name, Want::Str, scratch) {
            Ok(Found::Str(s)) => s.trim().parse().ok(),
            _ => None,
        },
    }
}

/// Read a token answer (v1 or v2) to a request sent at `now` (Unix seconds). A v2 answer's
/// `expires_on` is `now + expires_in`: counted from when the request left, it is never later
/// than the token's `exp` (the authority's clock had passed `now` when it issued the token).
#[allow(clippy::result_large_err)]
pub fn parse_token_body(body: &[u8], now: u64) -> Result<TokenAnswer, TokenAnswerError> {
    let mut scratch = [0u8; TOKEN_MAX];
    // Validate it is one JSON object at all (and find an OAuth error if there is one).
    if field::<1>(body, "", Want::Num, &mut scratch).is_err() {
        return Err(TokenAnswerError::Malformed("not a JSON object"));
    }
    if let Some(error) = string_field::<64>(body, "error", &mut scratch) {
        let description =
            string_field::<200>(body, "error_description", &mut scratch).unwrap_or_default();
        return Err(TokenAnswerError::OAuth { error, description });
    }
    let token = string_field::<TOKEN_MAX>(body, "access_token", &mut scratch);
    scratch.iter_mut().for_each(|b| *b = 0);
    let token = token.ok_or(TokenAnswerError::Malformed("no access_token"))?;
    if token.is_empty() {
        return Err(TokenAnswerError::Malformed("empty access_token"));
    }
    if let Some(tt) = string_field::<32>(body, "token_type", &mut scratch) {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(TokenAnswerError::Malformed("token_type is not Bearer"));
        }
    }
    let expires_on = match lenient_number(body, "expires_on", &mut scratch) {
        Some(t) => t,
        None => {
            now + lenient_number(body, "expires_in", &mut scratch)
                .ok_or(TokenAnswerError::Malformed("no expires_in or expires_on"))?
        }
    };
    if expires_on <= now {
        return Err(TokenAnswerError::Malformed("token already expired"));
    }
    let not_before = lenient_number(body, "not_before", &mut scratch)
        .unwrap_or(now)
        .min(now);
    let mut access_token = crate::secret::Secret::new();
    let _ = access_token.buf_mut().extend_from_slice(token.as_bytes());
    let mut token = token;
    // Wipe the transient copy.
    let mut bytes = core::mem::take(&mut token).into_bytes();
    zeroize::Zeroize::zeroize(bytes.as_mut_slice());
    Ok(TokenAnswer {
        access_token,
        expires_on,
        not_before,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_v1_and_v2() {
        let mut s: heapless::String<4096> = heapless::String::new();
        write_token_request(
            &mut s,
            "login.example",
            443,
            "/t/oauth2/token",
            Style::V1,
            "cid",
            "https://r/",
            "a.b.c",
        )
        .unwrap();
        assert!(s.starts_with("POST /t/oauth2/token HTTP/1.1\r\nHost: login.example\r\n"));
        assert!(s.ends_with("grant_type=client_credentials&client_id=cid&resource=https%3A%2F%2Fr%2F&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c"));
        write_token_request(
            &mut s,
            "localhost",
            8443,
            "/token",
            Style::V2,
            "cid",
            "https://r",
            "a.b.c",
        )
        .unwrap();
        assert!(s.contains("Host: localhost:8443\r\n"));
        assert!(s.contains("&scope=https%3A%2F%2Fr%2F.default&"));
        let body_len = s.split("\r\n\r\n").nth(1).unwrap().len();
        assert!(s.contains(&std::format!("Content-Length: {body_len}\r\n")));
    }

    #[test]
    fn responses_framed_three_ways() {
        let mut b = *b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        let a = parse_response(&mut b, false).unwrap();
        assert_eq!((a.status, a.body), (200, &b"{}"[..]));
        let mut b = *b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}";
        assert_eq!(
            parse_response(&mut b, false).unwrap_err(),
            ResponseError::Incomplete
        );
        assert_eq!(
            parse_response(&mut b, true).unwrap_err(),
            ResponseError::Malformed
        );
        let mut b = *b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        let a = parse_response(&mut b, false).unwrap();
        assert_eq!(
            (a.status, a.retry_after_s, a.body),
            (429, Some(7), &b"{\"a\":1}"[..])
        );
        let mut b = *b"HTTP/1.0 503 X\r\n\r\nbody";
        assert_eq!(
            parse_response(&mut b, false).unwrap_err(),
            ResponseError::Incomplete
        );
        assert_eq!(parse_response(&mut b, true).unwrap().body, b"body");
        let mut b = *b"garbage\r\n\r\n";
        assert_eq!(
            parse_response(&mut b, true).unwrap_err(),
            ResponseError::Malformed
        );
    }

    #[test]
    fn a_chunk_size_near_the_top_of_usize_is_malformed_not_a_panic() {
        // Found by `cargo xtask fuzz --seconds 600` (upstream_parse): the chunk end wrapped.
        for size in ["FFFFFFFFFFFFFFFF", "FFFFFFFFFFFFFFFE", "FFFFFFFFFFFFFFF0"] {
            let mut b = std::format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nxx\r\n"
            )
            .into_bytes();
            for eof in [false, true] {
                assert_eq!(
                    parse_response(&mut b, eof).unwrap_err(),
                    ResponseError::Malformed,
                    "{size} eof={eof}"
                );
            }
        }
        // The fuzzer's input itself.
        let mut b = *b"HTTP/1.0 200 OKOK\r\nTransfer-Encoding:chUnked\r\n\nFFFFFFFFFFFFFFFF\r\nTransfer-Encoding:chUnked\r\n\nFFFFFFFFFFFFFFFF\x00\x00\x00#";
        assert!(parse_response(&mut b, true).is_err());
    }

    #[test]
    fn v1_strings_and_v2_numbers() {
        let v1 = br#"{"token_type":"Bearer","expires_in":"3599","ext_expires_in":"3599","expires_on":"1700003599","not_before":"1700000000","resource":"https://r/","access_token":"eyJ.x.y"}"#;
        let t = parse_token_body(v1, 1_700_000_000).unwrap();
        assert_eq!((t.expires_on, t.not_before), (1_700_003_599, 1_700_000_000));
        assert_eq!(t.access_token.as_str(), "eyJ.x.y");
        let v2 = br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ.a.b","scope":"https://r/.default"}"#;
        let t = parse_token_body(v2, 1_000).unwrap();
        assert_eq!((t.expires_on, t.not_before), (4_599, 1_000));
        let mixed = br#"{"access_token":"t","expires_in":"60","token_type":"bearer"}"#;
        assert_eq!(parse_token_body(mixed, 10).unwrap().expires_on, 70);
    }

    #[test]
    fn bad_token_bodies() {
        assert!(matches!(
            parse_token_body(b"not json", 0),
            Err(TokenAnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_token_body(b"[1,2]", 0),
            Err(TokenAnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_token_body(br#"{"expires_in":5}"#, 0),
            Err(TokenAnswerError::Malformed("no access_token"))
        ));
        assert!(matches!(
            parse_token_body(br#"{"access_token":"x"}"#, 0),
            Err(TokenAnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_token_body(br#"{"access_token":"x","expires_in":"soon"}"#, 0),
            Err(TokenAnswerError::Malformed(_))
        ));
        assert!(matches!(
            parse_token_body(
                br#"{"access_token":"x","expires_in":5,"token_type":"mac"}"#,
                0
            ),
            Err(TokenAnswerError::Malformed(_))
        ));
        match parse_token_body(
            br#"{"error":"invalid_client","error_description":"AADSTS7000215: bad \"secret\""}"#,
            0,
        ) {
            Err(TokenAnswerError::OAuth { error, description }) => {
                assert_eq!(error, "invalid_client");
                assert!(description.contains("\"secret\""));
            }
            other => panic!("{other:?}"),
        }
    }
}
