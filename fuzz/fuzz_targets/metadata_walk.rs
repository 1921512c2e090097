//! The `/metadata/instance` sub-path walker (and the config-time transcoder it reads from).
//!
//! Input: one flags byte (bit 0 `format=text`, bit 1 `extended=true`, bits 2.. the api-version
//! index, the window size from the next byte), the sub-path up to the first `\n`, then an
//! optional document: when it is a valid `instance` it is walked, otherwise the fixture
//! (`fuzz/fixtures/instance.json`).
//! Checks: no panic; the body rendered in small windows equals the body rendered at once and
//! has the counted length; a whole document renders to what the transcoder stored.
#![no_main]

use imds_agent::metadata::instance::{render, Query, Sink};
use imds_agent::metadata::{load, since, Doc, INSTANCE_MAX};
use libfuzzer_sys::fuzz_target;

const FIXTURE: &[u8] = include_bytes!("../fixtures/instance.json");

fuzz_target!(|data: &[u8]| {
    let [flags, window, rest @ ..] = data else {
        return;
    };
    let (path, doc) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let Ok(path) = core::str::from_utf8(path) else {
        return;
    };
    let mut stored: Box<Doc<INSTANCE_MAX>> = Box::default();
    if doc.is_empty() || load(doc, &mut stored, false).is_err() {
        assert!(load(FIXTURE, &mut stored, false).is_ok());
    }
    let versions: Vec<&str> = since::supported_versions().collect();
    let version = versions[usize::from(flags >> 2) % versions.len()];
    let q = Query {
        path,
        version,
        text: flags & 1 != 0,
        extended: flags & 2 != 0,
    };
    let counted = render(stored.bytes(), q, Sink::new(0, &mut []));
    let Ok((kind, total, _)) = counted else {
        return;
    };
    let mut whole = vec![0u8; total];
    let r = render(stored.bytes(), q, Sink::new(0, &mut whole));
    assert!(r == Ok((kind, total, total)));
    // At most ~200 windows (each is a walk of the whole document).
    let step = usize::from(*window).max(1).max(total / 200);
    let mut pieces = Vec::new();
    let mut chunk = vec![0u8; step];
    while pieces.len() < total {
        let Ok((_, _, n)) = render(stored.bytes(), q, Sink::new(pieces.len(), &mut chunk)) else {
            panic!("a later window fails")
        };
        assert!(n > 0);
        pieces.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(pieces, whole);
    // The whole document at the newest version is the stored copy.
    if path.is_empty() && !q.extended && version == since::NEWEST[0] {
        assert_eq!(whole, stored.bytes());
    }
});
