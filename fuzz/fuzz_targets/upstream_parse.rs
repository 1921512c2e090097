//! The broker's reading of the authority's answer on arbitrary bytes: the HTTP response
//! framing (`Content-Length`, chunked, until close — de-chunked in place) and the lenient token
//! JSON (v1 strings, v2 numbers). No panic; a body never extends past the buffer; a parsed
//! token is non-empty and not already expired.
#![no_main]

use imds_agent::broker::upstream::{parse_response, parse_token_body};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = 1_700_000_000;
    // The whole input as a JSON body.
    if let Ok(t) = parse_token_body(data, now) {
        assert!(!t.access_token.is_empty());
        assert!(t.expires_on > now);
        assert!(t.not_before <= now);
    }
    // The whole input as an HTTP answer, complete (EOF) and not yet complete.
    for eof in [false, true] {
        let mut buf = data.to_vec();
        let len = buf.len();
        if let Ok(answer) = parse_response(&mut buf, eof) {
            assert!(answer.body.len() <= len);
            let _ = parse_token_body(answer.body, now);
        }
    }
});
