//! Property tests: the parsers that read bytes from untrusted peers never panic, never claim
//! more bytes than they were given, and agree with themselves on re-parsing.

use imds_agent::http::{self, Parse};
use imds_agent::query;
use proptest::prelude::*;

fn request_like() -> impl Strategy<Value = Vec<u8>> {
    // Mix of plausible request pieces and raw noise, so both the happy and the odd paths run.
    let piece = prop_oneof![
        Just(b"GET ".to_vec()),
        Just(b"POST ".to_vec()),
        Just(b"/metadata/identity/oauth2/token?api-version=2018-02-01&resource=x".to_vec()),
        Just(b" HTTP/1.1\r\n".to_vec()),
        Just(b" HTTP/1.0\r\n".to_vec()),
        Just(b"Metadata: true\r\n".to_vec()),
        Just(b"Content-Length: 3\r\n".to_vec()),
        Just(b"Content-Length: 99999999999\r\n".to_vec()),
        Just(b"Connection: close\r\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"abc".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn http_parse_never_panics_and_stays_in_bounds(buf in request_like()) {
        match http::parse(&buf) {
            Ok(Parse::Complete(req, used)) => {
                prop_assert!(used <= buf.len());
                prop_assert!(req.body.len() <= imds_agent::limits::REQUEST_BODY_MAX);
                prop_assert!(req.path.starts_with('/'));
                // Parsing exactly the consumed prefix gives the same request.
                match http::parse(&buf[..used]) {
                    Ok(Parse::Complete(again, used2)) => {
                        prop_assert_eq!(used, used2);
                        prop_assert_eq!(req.path, again.path);
                        prop_assert_eq!(req.body, again.body);
                    }
                    other => prop_assert!(false, "prefix re-parse: {:?}", other),
                }
            }
            Ok(Parse::Partial) => {}
            Err(e) => prop_assert!(matches!(e.status(), 400 | 413 | 414 | 431)),
        }
    }

    #[test]
    fn http_parse_arbitrary_bytes(buf in proptest::collection::vec(any::<u8>(), 0..6000)) {
        if let Ok(Parse::Complete(_, used)) = http::parse(&buf) {
            prop_assert!(used <= buf.len());
        }
    }

    #[test]
    fn query_decode_never_panics(input in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let mut buf = [0u8; imds_agent::limits::PARAM_DECODE_BUF];
        let decoded = query::decode(&input, &mut buf);
        if let Ok(params) = &decoded {
            prop_assert!(params.len() <= imds_agent::limits::MAX_PARAMS);
            // Decoding never produces more bytes than it was given.
            let total: usize = params.iter().map(|(n, v)| n.len() + v.len()).sum();
            prop_assert!(total <= input.len());
        }
        drop(decoded);
    }

    #[test]
    fn query_roundtrip(pairs in proptest::collection::vec(("[a-z_-]{1,12}", "\\PC{0,40}"), 1..8)) {
        // Percent-encode every byte of name and value; decoding gives them back.
        let enc = |s: &str| s.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
        let q = pairs.iter().map(|(n, v)| format!("{}={}", enc(n), enc(v))).collect::<Vec<_>>().join("&");
        let mut buf = [0u8; 4096];
        let params = query::decode(q.as_bytes(), &mut buf).unwrap();
        let got: Vec<(String, String)> = params.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        prop_assert_eq!(got, pairs);
    }

    #[test]
    fn config_parse_never_panics(doc in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let _ = imds_agent::config::Config::parse(&doc);
    }
}
