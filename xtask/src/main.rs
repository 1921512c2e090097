//! Project tasks. The only place that knows the command lines of cargo, QEMU and test peers.
//!
//! ```text
//! cargo xtask config --demo --out FILE   write a demo config with fresh keys
//! cargo xtask run [--host] ...           run the agent (unikernel under QEMU, or the daemon)
//! cargo xtask size [--json]              image size per section, checked against the budget
//! cargo xtask test                       run every test (installs what they need)
//! cargo xtask bench host                 benchmark the host daemon against nginx
//! cargo xtask bench broker               broker mode: cold first token vs curl, cached under a fetch
//! cargo xtask bench boot                 unikernel: QEMU spawn -> first token, smallest -m
//! cargo xtask doctor [--install]         what the commands need, whether it is there, how to install it
//! ```
//!
//! Every command first installs what it needs (`setup::needs_of`), saying what it runs.

mod bench;
mod bench_broker;
mod boot;
mod fuzz;
mod keygen;
mod size;
mod soak;
mod test;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use xtask::{config, root};

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <command>\n\
         \n\
         config --demo --out FILE [--listen ADDR:PORT] [--user-data FILE] [--no-attestation] [--hosts]   write a demo config with fresh keys, instance metadata and an attestation signer (--hosts: also App Service, Azure ML and Arc endpoints; prints their environment variables)\n\
         run [--arch x86_64|aarch64] [--config FILE] [--initrd] [--port N] [--accel tcg|kvm]\n\
         \x20   [--machine microvm|q35|virt|virt-pci] [--mem MIB]\n\
         \x20   [--print-cmd]                               boot the unikernel under QEMU (TCG), host\n\
         \x20                                               port N (8080) to its port 80; --print-cmd:\n\
         \x20                                               print the QEMU command line instead;\n\
         \x20                                               --arch aarch64: QEMU virt, a Linux arm64\n\
         \x20                                               Image; --initrd: config via -initrd\n\
         run --host [--config FILE] [--port N]           run the host daemon on a demo config\n\
         size [--json]                                   image sizes, fail over qemu/size-budget.json\n\
         test                                            run every test (installs what they need)\n\
         bench host                                      daemon vs nginx, cached tokens over loopback\n\
         bench broker [--runs N] [--unikernel-runs N]    cold first token vs curl; cached tokens while fetching\n\
         bench boot [--runs N] [--max-mem MIB]           QEMU spawn -> first token; smallest -m\n\
         \x20   [--arch x86_64|aarch64] [--print-cmd]       aarch64: ratio to a floor kernel (one PL011 byte)\n\
         fuzz [--seconds N]                              run every cargo-fuzz target (nightly)\n\
         soak [--seconds N] [--target daemon|unikernel|both]   abuse + volume soak, soak.json\n\
         keygen [--alg ES256|PS256|RS256] --out FILE     an identity key for broker mode + its JWK\n\
         deb                                             Debian package of the daemon (cargo-deb), prints its path\n\
         doctor [--install]                              prerequisites: there or not, how to install\n\
         \n\
         Every command installs what it needs first (`doctor` lists it all)."
    );
    ExitCode::from(2)
}

pub(crate) fn flag_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        return usage();
    };
    let rest = &args[1..];
    if let Err(e) = xtask::setup::ensure(&xtask::setup::needs_of(cmd, rest)) {
        eprintln!("xtask {cmd}: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cmd.as_str() {
        "doctor" => xtask::setup::doctor(rest.iter().any(|a| a == "--install")),
        "config" => cmd_config(rest),
        "run" if rest.iter().any(|a| a == "--host") => cmd_run(rest),
        "run" => boot::run_unikernel(rest),
        "size" => size::run(rest),
        "test" => test::run(rest),
        "bench" if rest.first().is_some_and(|a| a == "boot") => boot::bench(&rest[1..]),
        "bench" if rest.first().is_some_and(|a| a == "broker") => bench_broker::run(&rest[1..]),
        "bench" => bench::run(rest),
        "fuzz" => fuzz::run(rest),
        "soak" => soak::run(rest),
        "keygen" => keygen::run(rest),
        "deb" => xtask::deb::run(rest),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T = ()> = std::result::Result<T, String>;

fn cmd_config(args: &[String]) -> Result {
    if !args.iter().any(|a| a == "--demo") {
        return Err(
            "only --demo is supported: cargo xtask config --demo --out FILE [--user-data FILE] \
             [--no-attestation] [--hosts]"
                .into(),
        );
    }
    let out = flag_value(args, "--out").ok_or("--out FILE is required")?;
    let listen = flag_value(args, "--listen").unwrap_or_else(|| "127.0.0.1:8080".into());
    let legacy = flag_value(args, "--legacy-listen").unwrap_or_else(|| "127.0.0.1:50342".into());
    // `--user-data FILE`: served base64-encoded as `compute.userData` (else a small cloud-config).
    let user_data = match flag_value(args, "--user-data") {
        Some(f) => std::fs::read(&f).map_err(|e| format!("--user-data {f}: {e}"))?,
        None => config::DEMO_USER_DATA.as_bytes().to_vec(),
    };
    // `--no-attestation`: for the default image, which has no attested document and refuses
    // an `attestation` it cannot serve.
    let attestation = !args.iter().any(|a| a == "--no-attestation");
    if args.iter().any(|a| a == "--hosts") {
        // `--hosts`: the other Azure hosts' endpoints (host daemon only), and the variables
        // each protocol's clients need.
        let doc = config::demo_full(&listen, Some(&legacy), &user_data, attestation);
        let (doc, env) = config::with_all_hosts(doc, Some(&legacy))
            .map_err(|e| format!("free loopback ports: {e}"))?;
        config::write_doc(Path::new(&out), &doc).map_err(|e| format!("{out}: {e}"))?;
        eprintln!("wrote {out} (host daemon only: the image refuses app_service, azure_ml, arc)");
        print!("{env}");
        return Ok(());
    }
    config::write_demo_full(
        Path::new(&out),
        &listen,
        Some(&legacy),
        &user_data,
        attestation,
    )
    .map_err(|e| format!("{out}: {e}"))?;
    eprintln!("wrote {out}");
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn status(mut c: Command) -> Result {
    let s = c.status().map_err(|e| format!("{c:?}: {e}"))?;
    if s.success() {
        Ok(())
    } else {
        Err(format!("{c:?} failed: {s}"))
    }
}

fn cmd_run(args: &[String]) -> Result {
    let port: u16 = flag_value(args, "--port")
        .map(|p| p.parse().map_err(|_| "--port: not a number"))
        .transpose()?
        .unwrap_or(8080);
    let config = match flag_value(args, "--config") {
        Some(c) => PathBuf::from(c),
        None => {
            // The daemon serves everything: its demo has an attestation signer (the default
            // image's `target/demo/config.json` has none).
            let p = root().join("target/demo/config-daemon.json");
            if !p.exists() {
                config::write_demo_full(
                    &p,
                    &format!("127.0.0.1:{port}"),
                    Some("127.0.0.1:50342"),
                    config::DEMO_USER_DATA.as_bytes(),
                    true,
                )
                .map_err(|e| e.to_string())?;
            }
            p
        }
    };
    let exe = xtask::load::build_release_daemon()?;
    println!("imds-agent (host daemon) on 127.0.0.1:{port}; try:\n");
    println!("  curl -s -H 'Metadata: true' 'http://127.0.0.1:{port}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/'\n");
    let mut c = Command::new(exe);
    c.arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"));
    // Like the unikernel's QEMU: the daemon goes when this process is killed.
    let mut child = c.spawn().map_err(|e| format!("{c:?}: {e}"))?;
    let mut watchdog =
        xtask::watchdog::Watchdog::guard_child(&mut child).map_err(|e| format!("watchdog: {e}"))?;
    let s = child.wait();
    watchdog.disarm();
    match s.map_err(|e| format!("{c:?}: {e}"))? {
        s if s.success() => Ok(()),
        s => Err(format!("{c:?} failed: {s}")),
    }
}
