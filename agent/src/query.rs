//! Query-string and form (`application/x-www-form-urlencoded`) decoding into a fixed buffer.
//!
//! Values arrive both percent-encoded and raw (azure-core sends `resource=https://x/` with a
//! bare `:` and `/`): `%XX` and `+` are decoded the way form decoding does, everything else is
//! kept as is. Names compare ASCII-case-insensitively (msal-node lower-cases whole URLs).

use crate::limits::MAX_PARAMS;

/// Why a query or form body could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryError {
    /// `%` not followed by two hex digits.
    BadPercentEncoding,
    /// Decoded bytes are not UTF-8.
    NotUtf8,
    /// More than [`MAX_PARAMS`] parameters.
    TooManyParams,
    /// Decoded text does not fit the buffer.
    TooLong,
}

impl QueryError {
    /// The message.
    pub fn as_str(&self) -> &'static str {
        match self {
            QueryError::BadPercentEncoding => "Invalid percent-encoding in the query string",
            QueryError::NotUtf8 => "Query string is not valid UTF-8",
            QueryError::TooManyParams => "Too many query parameters",
            QueryError::TooLong => "Query string too long",
        }
    }
}

impl core::fmt::Display for QueryError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::error::Error for QueryError {}

/// Decoded parameters, in the order sent; borrowed from the decode buffer.
#[derive(Debug, Default)]
pub struct Params<'b> {
    entries: heapless::Vec<(&'b str, &'b str), MAX_PARAMS>,
}

impl<'b> Params<'b> {
    /// First value of `name` (case-insensitive name match).
    pub fn get(&self, name: &str) -> Option<&'b str> {
        self.entries
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// First parameter name that occurs more than once, if any.
    pub fn duplicate(&self) -> Option<&'b str> {
        for (i, (a, _)) in self.entries.iter().enumerate() {
            if self.entries[i + 1..]
                .iter()
                .any(|(b, _)| a.eq_ignore_ascii_case(b))
            {
                return Some(a);
            }
        }
        None
    }

    /// How many parameters there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The parameters in order, as (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&'b str, &'b str)> + '_ {
        self.entries.iter().copied()
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode one component into `out`, returning the number of bytes written.
fn decode_component(input: &[u8], out: &mut [u8]) -> Result<usize, QueryError> {
    let mut i = 0;
    let mut w = 0;
    while i < input.len() {
        let b = match input[i] {
            b'+' => {
                i += 1;
                b' '
            }
            b'%' => {
                let hi = input.get(i + 1).copied().and_then(hex);
                let lo = input.get(i + 2).copied().and_then(hex);
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        i += 3;
                        (h << 4) | l
                    }
                    _ => return Err(QueryError::BadPercentEncoding),
                }
            }
            b => {
                i += 1;
                b
            }
        };
        *out.get_mut(w).ok_or(QueryError::TooLong)? = b;
        w += 1;
    }
    Ok(w)
}

/// Decode `a=b&c=d` (a query string or a form body) using `buf` for the decoded text.
pub fn decode<'b>(input: &[u8], buf: &'b mut [u8]) -> Result<Params<'b>, QueryError> {
    // First pass: decode every name and value into `buf`, remembering their ranges.
    let mut ranges: heapless::Vec<(usize, usize, usize, usize), MAX_PARAMS> = heapless::Vec::new();
    let mut w = 0;
    for pair in input.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        let ns = w;
        w += decode_component(name, &mut buf[w..])?;
        let vs = w;
        w += decode_component(value, &mut buf[w..])?;
        ranges
            .push((ns, vs, vs, w))
            .map_err(|_| QueryError::TooManyParams)?;
    }
    // Second pass: hand out string slices of the (now immutable) buffer.
    let buf: &'b [u8] = buf;
    let mut params = Params::default();
    for (ns, ne, vs, ve) in ranges {
        let name = core::str::from_utf8(&buf[ns..ne]).map_err(|_| QueryError::NotUtf8)?;
        let value = core::str::from_utf8(&buf[vs..ve]).map_err(|_| QueryError::NotUtf8)?;
        // Cannot overflow: `ranges` has the same capacity.
        let _ = params.entries.push((name, value));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_percent_plus_and_raw() {
        let mut buf = [0u8; 256];
        let p = decode(
            b"api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F&x=a+b&raw=https://vault.azure.net",
            &mut buf,
        )
        .unwrap();
        assert_eq!(p.get("api-version"), Some("2018-02-01"));
        assert_eq!(p.get("resource"), Some("https://management.azure.com/"));
        assert_eq!(p.get("x"), Some("a b"));
        assert_eq!(p.get("raw"), Some("https://vault.azure.net"));
        assert_eq!(p.get("API-VERSION"), Some("2018-02-01"));
        assert_eq!(p.duplicate(), None);
    }

    #[test]
    fn duplicates_empty_and_flags() {
        let mut buf = [0u8; 64];
        let p = decode(b"a=1&&b&A=2", &mut buf).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p.get("b"), Some(""));
        assert_eq!(p.duplicate(), Some("a"));
    }

    #[test]
    fn errors() {
        let mut buf = [0u8; 64];
        assert_eq!(
            decode(b"a=%zz", &mut buf).unwrap_err(),
            QueryError::BadPercentEncoding
        );
        assert_eq!(
            decode(b"a=%4", &mut buf).unwrap_err(),
            QueryError::BadPercentEncoding
        );
        assert_eq!(decode(b"a=%ff", &mut buf).unwrap_err(), QueryError::NotUtf8);
        let mut small = [0u8; 4];
        assert_eq!(
            decode(b"abc=def", &mut small).unwrap_err(),
            QueryError::TooLong
        );
        let many = b"a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1&a=1";
        assert_eq!(
            decode(many, &mut buf).unwrap_err(),
            QueryError::TooManyParams
        );
    }
}
