//! The aarch64 image under QEMU `virt` (TCG): the whole HTTP contract and azure-identity over
//! user networking (`hostfwd`), once per way the guest can be given its NIC and its config —
//! virtio-mmio (`virtio-net-device`) with the config in fw_cfg, `virtio-net-pci` on the PCIe
//! ECAM with the config in fw_cfg, virtio-mmio with the config as `-initrd` — plus the boot
//! paths that must stop the machine with their exit code (no config, bad config, no NIC, panic,
//! CPU exception), as `unikernel.rs` checks them on x86.
//!
//! TCG emulating aarch64 is slower than x86 on x86: each variant boots one guest, shared by
//! all the checks of that variant (a `static`; QEMU is killed by its watchdog when this process
//! ends). The image is built first (a no-op for cargo when it is up to date), through the same
//! xtask helper as `cargo xtask run --arch aarch64`; nothing is skipped.

use imds_tests::contract::Target;
use imds_tests::sdk::python_get_token;
use imds_tests::{verify_with_jwks, DemoConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use xtask::qemu::{self, exit, Arch, ConfigVia, Guest, Machine, Network, QemuOpts};

/// Boot to serving under TCG aarch64 on a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// A failing boot stops in a few seconds.
const EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// Concurrent clients of the contract's `concurrent_clients` case.
const CLIENTS: usize = 4;

const SCOPE: &str = "https://management.azure.com/.default";

/// The release aarch64 image (the flat Linux arm64 Image), built once per test process.
fn image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| qemu::build_image_for(Arch::Aarch64, true, &[]))
        .clone()
}

/// How the guest's NIC is plugged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nic {
    /// `virtio-net-device` on a virtio-mmio transport (found in the device tree).
    Mmio,
    /// `virtio-net-pci` on `virt`'s PCIe host bridge (ECAM, BARs assigned by the guest).
    Pci,
}

impl Nic {
    /// The `-device` QEMU must be given for it.
    fn device(self) -> &'static str {
        match self {
            Nic::Mmio => "virtio-net-device",
            Nic::Pci => "virtio-net-pci",
        }
    }
}

/// The aarch64 image booted with `opts`, past its ready line.
fn boot_ready(opts: &QemuOpts) -> Guest {
    let mut guest = Guest::spawn(&image(), opts).expect("spawn QEMU");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    guest
}

/// The aarch64 options: `nic`, the config passed `via`, user networking.
fn aarch64_opts(nic: Nic, via: ConfigVia, network: Network) -> QemuOpts {
    QemuOpts {
        arch: Arch::Aarch64,
        config_via: via,
        network,
        machine: match nic {
            Nic::Mmio => Machine::Virt,
            Nic::Pci => Machine::VirtPci,
        },
        ..QemuOpts::default()
    }
}

struct Running {
    guest: Guest,
    target: Target,
}

impl std::ops::Deref for Running {
    type Target = Target;
    fn deref(&self) -> &Target {
        &self.target
    }
}

/// Boot the demo config on aarch64 with `nic` and the config passed `via`, port 80 forwarded
/// from a free loopback port; wait until it serves. Checks that QEMU was given that NIC and
/// that the guest says where its config came from.
fn boot(name: &str, nic: Nic, via: ConfigVia) -> Running {
    let cfg = DemoConfig::new(name);
    let port = qemu::free_port();
    let opts = QemuOpts {
        config: Some(cfg.path.clone()),
        ..aarch64_opts(
            nic,
            via,
            Network::User {
                hostfwd_port: Some(port),
            },
        )
    };
    let guest = boot_ready(&opts);
    // The variant is what it claims to be: QEMU was given that NIC and that config source.
    let cmd = &guest.command;
    assert!(cmd.starts_with("qemu-system-aarch64 "), "{cmd}");
    assert!(cmd.contains(&format!("{},", nic.device())), "{cmd}");
    let other = match nic {
        Nic::Mmio => Nic::Pci,
        Nic::Pci => Nic::Mmio,
    };
    assert!(!cmd.contains(other.device()), "{cmd}");
    match via {
        ConfigVia::FwCfg => {
            assert!(cmd.contains("name=opt/imds-agent/config"), "{cmd}");
            assert!(!cmd.contains("-initrd"), "{cmd}");
        }
        ConfigVia::Initrd => {
            assert!(cmd.contains("-initrd"), "{cmd}");
            assert!(!cmd.contains("opt/imds-agent/config"), "{cmd}");
        }
    }
    let out = guest.output();
    let said = match via {
        ConfigVia::FwCfg => "config: from fw_cfg",
        ConfigVia::Initrd => "config: from the initrd",
    };
    assert!(
        out.contains(said),
        "the guest does not say {said:?}:\n{out}"
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Running {
        guest,
        target: Target {
            imds: addr,
            // One listener: the legacy path is answered on port 80 too.
            legacy: addr,
            cfg,
        },
    }
}

/// azure-identity (Python, unmodified) gets a system- and a user-assigned token from `r`, each
/// verified with the guest's JWKS.
fn azure_identity_gets_tokens(r: &Running) {
    let base = format!("http://{}", r.imds);
    let keys = imds_tests::get(r.imds, "/.well-known/jwks.json", &[]).json();
    let sys = r
        .cfg
        .system
        .clone()
        .expect("the demo has a system identity");
    let user = r.cfg.users[1].clone();
    for (client_id, expect) in [
        (None, &sys.client_id),
        (Some(user.client_id.as_str()), &user.client_id),
    ] {
        let got = python_get_token(&base, SCOPE, client_id)
            .unwrap_or_else(|e| panic!("{e}\n{}", r.guest.output()));
        let claims = verify_with_jwks(got["token"].as_str().unwrap(), &keys)
            .expect("verifies with the guest's JWKS");
        assert_eq!(&claims["appid"], expect.as_str());
        assert_eq!(claims["aud"], "https://management.azure.com");
    }
}

/// virtio-mmio, config in fw_cfg.
mod mmio {
    use super::*;

    fn shared() -> &'static Running {
        static G: OnceLock<Running> = OnceLock::new();
        G.get_or_init(|| boot("aarch64-mmio", Nic::Mmio, ConfigVia::FwCfg))
    }

    imds_tests::contract_tests!(shared(), CLIENTS);

    #[test]
    fn azure_identity() {
        azure_identity_gets_tokens(shared());
    }
}

/// virtio-net-pci on the PCIe ECAM, config in fw_cfg.
mod pci {
    use super::*;

    fn shared() -> &'static Running {
        static G: OnceLock<Running> = OnceLock::new();
        G.get_or_init(|| boot("aarch64-pci", Nic::Pci, ConfigVia::FwCfg))
    }

    imds_tests::contract_tests!(shared(), CLIENTS);

    #[test]
    fn azure_identity() {
        azure_identity_gets_tokens(shared());
    }
}

/// virtio-mmio, config as `-initrd` (the device tree's `linux,initrd-start/-end`).
mod initrd {
    use super::*;

    fn shared() -> &'static Running {
        static G: OnceLock<Running> = OnceLock::new();
        G.get_or_init(|| boot("aarch64-initrd", Nic::Mmio, ConfigVia::Initrd))
    }

    imds_tests::contract_tests!(shared(), CLIENTS);

    #[test]
    fn azure_identity() {
        azure_identity_gets_tokens(shared());
    }
}

/// Boot with `opts` and expect QEMU to stop with guest exit `code` and `message` on serial.
fn expect_exit(opts: QemuOpts, code: u8, message: &str) -> String {
    imds_tests::expect_exit(&image(), &opts, code, message, EXIT_TIMEOUT)
}

/// aarch64, virtio-mmio transport, no NIC plugged, `config` in fw_cfg.
fn no_network(config: Option<PathBuf>) -> QemuOpts {
    QemuOpts {
        config,
        ..aarch64_opts(Nic::Mmio, ConfigVia::FwCfg, Network::None)
    }
}

#[test]
fn missing_config_stops_the_machine() {
    expect_exit(
        no_network(None),
        exit::CONFIG_MISSING,
        "imds-agent: fatal: no configuration",
    );
}

#[test]
fn invalid_config_names_the_field() {
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    json["tenant_id"] = "not-a-guid".into();
    let cfg = DemoConfig::from_json("aarch64-bad-tenant", json);
    expect_exit(
        no_network(Some(cfg.path)),
        exit::CONFIG_INVALID,
        "imds-agent: fatal: config: field `tenant_id`",
    );
}

#[test]
fn invalid_config_from_the_initrd_names_the_field() {
    let mut json = xtask::config::demo("127.0.0.1:0", None);
    json["tenant_id"] = "not-a-guid".into();
    let cfg = DemoConfig::from_json("aarch64-bad-tenant-initrd", json);
    expect_exit(
        QemuOpts {
            config: Some(cfg.path),
            ..aarch64_opts(Nic::Mmio, ConfigVia::Initrd, Network::None)
        },
        exit::CONFIG_INVALID,
        "imds-agent: fatal: config: field `tenant_id`",
    );
}

#[test]
fn no_nic_stops_the_machine() {
    let cfg = DemoConfig::new("aarch64-no-nic");
    expect_exit(
        no_network(Some(cfg.path)),
        exit::NIC,
        "imds-agent: fatal: network: no virtio-net device",
    );
}

/// No NIC, and the image's crash test hook (fw_cfg `PANIC_TEST_FW_CFG`) set to `content`
/// (written to the test file `name`).
fn crash_test(name: &str, content: &str) -> QemuOpts {
    QemuOpts {
        fw_cfg: vec![(
            qemu::PANIC_TEST_FW_CFG.into(),
            imds_tests::test_file(name, content),
        )],
        ..no_network(None)
    }
}

#[test]
fn panic_prints_the_message_and_exits() {
    let opts = crash_test("aarch64-panic-test", "panic");
    expect_exit(
        opts,
        exit::PANIC,
        "imds-agent: panic: code addresses on the stack",
    );
}

#[test]
fn cpu_exception_is_reported() {
    let opts = crash_test("aarch64-ud2-test", "ud2");
    let out = expect_exit(
        opts,
        exit::CPU_EXCEPTION,
        "imds-agent: fatal: CPU exception (synchronous, class ",
    );
    // `udf`: the exception class of an undefined instruction, and where it was.
    assert!(out.contains("(undefined instruction)) at pc 0x"), "{out}");
}

/// The stack lies above an unmapped 2 MiB guard block (the top of the ECAM window, just below
/// RAM): an overflow is a data abort in the guard, reported, not a silent write elsewhere.
#[test]
fn stack_overflow_is_reported() {
    let opts = crash_test("aarch64-stack-overflow-test", "stack-overflow");
    let out = expect_exit(
        opts,
        exit::CPU_EXCEPTION,
        "imds-agent: fatal: CPU exception (synchronous, class 0x25 data abort) at pc 0x",
    );
    let field = |name: &str| {
        out.split(&format!(", {name} 0x"))
            .nth(1)
            .and_then(|rest| u64::from_str_radix(rest.split(',').next()?, 16).ok())
            .unwrap_or_else(|| panic!("no {name}: {out}"))
    };
    let far = field("far");
    assert!(
        (0x3FE0_0000..0x4000_0000).contains(&far),
        "the fault is not in the guard block below RAM: {far:#x}\n{out}"
    );
    // A translation fault (ESR DFSC 0b0001xx): the block is unmapped. (Mapped, as the rest
    // of the ECAM window is, the write would end in an external abort from QEMU instead.)
    let esr = field("esr");
    assert_eq!(
        esr & 0x3C,
        0x04,
        "not a translation fault: esr {esr:#x}\n{out}"
    );
}

#[test]
fn panic_addresses_resolve_to_the_panicking_code() {
    let opts = crash_test("aarch64-panic-test-line", "panic");
    let out = expect_exit(opts, exit::PANIC, "imds-agent: panic: ");
    let line = out
        .lines()
        .find(|l| l.starts_with("imds-agent: panic: "))
        .unwrap_or_else(|| panic!("no panic line:\n{out}"));
    let addresses: Vec<&str> = line
        .split_whitespace()
        .filter(|w| w.starts_with("0x"))
        .collect();
    assert!(!addresses.is_empty(), "{line}");
    // cargo's ELF of the same code as the flat Image resolves them: the panic in `crash_test`.
    let mut c = std::process::Command::new("addr2line");
    c.args(["-f", "-i", "-C", "-e"])
        .arg(qemu::symbols_path_for(Arch::Aarch64, true, &[]))
        .args(&addresses);
    let lines =
        xtask::run_with_timeout(c, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&lines.stdout);
    assert!(
        text.contains("qemu/src/unikernel.rs:"),
        "{line}\naddr2line:\n{text}"
    );
}

/// A CPU without `RNDR` (`cortex-a57`) and a `virtio-rng-device`: the image takes its entropy
/// from the device (`imds_hal::virtio_rng`, the same code as x86's fallback) and mints a
/// token.
#[test]
fn virtio_rng_when_the_cpu_has_no_rndr() {
    let cfg = DemoConfig::new("aarch64-virtio-rng");
    let port = qemu::free_port();
    let opts = QemuOpts {
        config: Some(cfg.path.clone()),
        cpu: Some("cortex-a57".into()),
        extra: vec!["-device".into(), "virtio-rng-device".into()],
        ..aarch64_opts(
            Nic::Mmio,
            ConfigVia::FwCfg,
            Network::User {
                hostfwd_port: Some(port),
            },
        )
    };
    let guest = boot_ready(&opts);
    let out = guest.output();
    assert!(out.contains("imds-agent: entropy: virtio-rng"), "{out}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let r = imds_tests::get(
        addr,
        &imds_tests::token_target("https://management.azure.com/", ""),
        &["Metadata: true"],
    );
    assert_eq!(r.status, 200, "{}\n{out}", r.text());
}

/// Without `RNDR` and without a virtio-rng device the image refuses to start, naming both.
#[test]
fn no_rndr_and_no_virtio_rng_refuses() {
    let cfg = DemoConfig::new("aarch64-no-entropy");
    expect_exit(
        QemuOpts {
            cpu: Some("cortex-a57".into()),
            ..no_network(Some(cfg.path))
        },
        exit::NO_ENTROPY,
        "imds-agent: fatal: no secure entropy source (RNDR, virtio-rng); refusing to start",
    );
}
