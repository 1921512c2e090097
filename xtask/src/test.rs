//! `cargo xtask test`: everything CI runs, in order, installing what the tests need.

use crate::{cargo, status, Result};
use xtask::setup;

fn step(name: &str) {
    eprintln!("\n=== xtask test: {name}");
}

pub fn run(args: &[String]) -> Result {
    let quick = args.iter().any(|a| a == "--quick");
    // What the tests need was installed before this ran (`setup::needs_of("test")`); the table
    // shows it in CI's log.
    step("setup (cargo xtask doctor)");
    setup::doctor(false)?;

    step("format");
    let mut c = cargo();
    c.args(["fmt", "--all", "--check"]);
    status(c)?;

    step("clippy (host)");
    let mut c = cargo();
    c.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    status(c)?;

    // Both bare-metal targets: x86_64 and aarch64 (`xtask::qemu::Arch`).
    const TARGETS: [&str; 2] = ["x86_64-unknown-none", "aarch64-unknown-none-softfloat"];
    step("build + clippy (bare metal: the core without std; x86_64 and aarch64)");
    for target in TARGETS {
        let mut c = cargo();
        c.args([
            "build",
            "-p",
            "imds-agent",
            "--no-default-features",
            "--target",
            target,
        ]);
        status(c)?;
        let mut c = cargo();
        c.args([
            "clippy",
            "-p",
            "imds-agent",
            "-p",
            "imds-hal",
            "--no-default-features",
            "--target",
            target,
            "--",
            "-D",
            "warnings",
        ]);
        status(c)?;
    }

    step("clippy (the image, x86_64 and aarch64: issuer, with the broker feature, with attested + scheduled-events, the network floor image of bench boot; x86_64 with virtio-rng)");
    for target in TARGETS {
        let mut variants = vec![
            None,
            Some("broker"),
            Some("attested,scheduled-events"),
            Some("net-floor"),
        ];
        if target == TARGETS[0] {
            // The x86 image's fallback entropy source (aarch64's image always has it).
            variants.push(Some("virtio-rng"));
        }
        for features in variants {
            let mut c = cargo();
            c.args(["clippy", "-p", "imds-unikernel", "--target", target]);
            if let Some(f) = features {
                c.args(["--features", f]);
            }
            c.args(["--", "-D", "warnings"]);
            status(c)?;
        }
    }

    step("one copy of p256 / sha2 / heapless (cargo tree -d)");
    let out = cargo()
        .args([
            "tree",
            "-d",
            "--workspace",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .map_err(|e| e.to_string())?;
    let dups = String::from_utf8_lossy(&out.stdout);
    // Depth 0 lines are the duplicated crates themselves (deeper ones are their dependents).
    for krate in ["0p256 ", "0sha2 ", "0heapless "] {
        if dups.lines().any(|l| l.starts_with(krate)) {
            return Err(format!(
                "duplicate `{}` in the dependency tree:\n{dups}",
                krate[1..].trim()
            ));
        }
    }

    step("module graph: no import cycle between modules of agent/ and qemu/");
    xtask::cycles::check(&xtask::root())?;

    step("the default image's dependencies: no embedded-tls, embedded-io(-async), rand_core, embassy-futures");
    xtask::cycles::check_image_dependencies(&xtask::root())?;

    step("tests (unit, property, integration: daemon, SDK, unikernel)");
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-fail-fast"]);
    if quick {
        c.env("PROPTEST_CASES", "256");
    }
    status(c)?;

    // Fuzz smoke: every cargo-fuzz target for a few seconds, when a nightly toolchain and
    // cargo-fuzz are present (`cargo xtask fuzz` says so and skips otherwise). The long runs
    // are `cargo xtask fuzz --seconds 600`.
    step("fuzz smoke (10 s per target, when nightly + cargo-fuzz are present)");
    crate::fuzz::run(&["--seconds".to_string(), "10".to_string()])?;
    eprintln!("\n=== xtask test: all passed");
    Ok(())
}
