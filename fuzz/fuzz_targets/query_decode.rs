//! `imds_agent::query::decode` on arbitrary bytes (query strings and form bodies): no panic,
//! and what it decodes never grows beyond the input.
#![no_main]

use imds_agent::limits::PARAM_DECODE_BUF;
use imds_agent::query::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut buf = [0u8; PARAM_DECODE_BUF];
    let Ok(params) = decode(data, &mut buf) else {
        return;
    };
    let decoded: usize = params.iter().map(|(n, v)| n.len() + v.len()).sum();
    assert!(
        decoded <= data.len(),
        "decoded {decoded} bytes from {}",
        data.len()
    );
    assert_eq!(params.len(), params.iter().count());
    // Lookups the router does.
    for name in [
        "api-version",
        "resource",
        "client_id",
        "object_id",
        "msi_res_id",
        "bypass_cache",
    ] {
        let _ = params.get(name);
    }
    if let Some(d) = params.duplicate() {
        assert!(
            params
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(d))
                .count()
                >= 2
        );
    }
});
