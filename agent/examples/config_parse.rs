//! `cargo run --release -p imds-agent --example config_parse [-- CONFIG [N]]`: what
//! `Config::parse` costs on the host, in µs per parse (N parses, default 10000, the fastest of
//! 10 rounds), with the signing key's share and the `instance` document's shown apart (issue
//! 11: the unikernel boots through this parse).
//!
//! CONFIG defaults to `target/demo/config.json`, the default image's config as `cargo xtask
//! run` writes it (or `cargo xtask config --demo --no-attestation --out FILE`). Profile with
//! `CARGO_PROFILE_RELEASE_DEBUG=true cargo build --release -p imds-agent --example
//! config_parse` and `perf record -g target/release/examples/config_parse`. Instructions
//! (what QEMU's TCG pays for, and steady on a busy machine): `valgrind --tool=callgrind
//! target/release/examples/config_parse CONFIG 20`, then `callgrind_annotate --inclusive=yes`
//! on its output: the three calls of `time` in `main` (full parse, without `instance`, the key
//! alone) over N. `--no-default-features --features std,broker` parses as the issuer image
//! does (no attested document, no scheduled events).

use imds_agent::config::Config;
use std::hint::black_box;
use std::time::Instant;

/// µs per call of `f`: the fastest of 10 rounds of `n / 10` calls (the machine is shared).
#[inline(never)] // one symbol per measurement: `valgrind --tool=callgrind` counts each apart
fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let per_round = (n / 10).max(1);
    (0..10)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..per_round {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(per_round)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/demo/config.json").into()
    });
    let n: u32 = args
        .next()
        .map_or(10000, |s| s.parse().expect("N: a number"));
    let text = std::fs::read(&path).unwrap_or_else(|e| {
        panic!("{path}: {e} (write one: cargo xtask config --demo --no-attestation --out {path})")
    });
    let doc: serde_json::Value = serde_json::from_slice(&text).expect("the config is JSON");
    let key = doc["signing_key"]
        .as_str()
        .expect("an issuer config (signing_key)");
    let mut bare = doc.clone();
    bare.as_object_mut().unwrap().remove("instance");
    let bare = serde_json::to_vec(&bare).unwrap();
    Config::parse(&text).expect("the config parses");

    let full = time(n, || {
        black_box(Config::parse(black_box(&text)).is_ok());
    });
    let no_instance = time(n, || {
        black_box(Config::parse(black_box(&bare)).is_ok());
    });
    let key_us = time(n, || {
        black_box(imds_agent::pem::parse_signing_key(black_box(key)).is_ok());
    });
    println!("{path}: {} B, {n} parses", text.len());
    println!("Config::parse                  {full:8.1} µs");
    println!("  of which the signing key     {key_us:8.1} µs");
    println!("  without the key              {:8.1} µs", full - key_us);
    println!(
        "  without `instance` and key   {:8.1} µs",
        no_instance - key_us
    );
    println!(
        "  `instance` alone             {:8.1} µs",
        full - no_instance
    );
}
