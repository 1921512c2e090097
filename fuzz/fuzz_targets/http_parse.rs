//! `imds_agent::http::parse` on arbitrary bytes: no panic, and a complete request is framed
//! consistently (it uses at most the bytes given, and the same prefix parses the same way).
#![no_main]

use imds_agent::http::{parse, Parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(Parse::Complete(req, used)) = parse(data) else {
        return;
    };
    assert!(
        used > 0 && used <= data.len(),
        "used {used} of {}",
        data.len()
    );
    assert!(req.body.len() <= used);
    assert!(req.minor_version <= 1);
    // Lookups the router does.
    let _ = req.header("metadata");
    let _ = req.has_header("x-forwarded-for");
    let (path, query, body_len, keep_alive) = (req.path, req.query, req.body.len(), req.keep_alive);
    // The request alone, without what follows it (pipelining), frames identically.
    match parse(&data[..used]) {
        Ok(Parse::Complete(again, used_again)) => {
            assert_eq!(used_again, used);
            assert_eq!(
                (again.path, again.query, again.body.len(), again.keep_alive),
                (path, query, body_len, keep_alive)
            );
        }
        other => panic!("prefix of {used} bytes parsed as {other:?}"),
    }
});
