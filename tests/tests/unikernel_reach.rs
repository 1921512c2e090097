//! The x86 image without QEMU's extras (issue 14, part 1): QEMU TCG runs that stand in for the
//! contracts of Firecracker (>= 1.12) and Cloud Hypervisor, which cannot run here.
//!
//! * Firecracker stand-in: `microvm` with the config as `-initrd` (the first PVH module, as
//!   Firecracker's `initrd_path`), no config in fw_cfg, and `auto-kernel-cmdline=on`, so the NIC
//!   is announced on the PVH command line (`virtio_mmio.device=512@0xfeb00e00:12`, the form
//!   Firecracker uses with its own addresses): boots, says where config and NIC came from, and
//!   the whole contract suite passes.
//! * No wall clock: `microvm,rtc=off,pit=off` under TCG (Firecracker has no RTC, Cloud
//!   Hypervisor no PIT; TCG has no kvmclock): the agent refuses to start (exit code 8). Under
//!   KVM the same machine takes its wall time from kvmclock; that run is reported, not asserted
//!   (slow on this project's paravirtual `/dev/kvm`: ~6 s to the NIC), by hand:
//!   `qemu-system-x86_64 -M microvm,x-option-roms=off,acpi=off,pic=off,auto-kernel-cmdline=on,rtc=off,pit=off
//!   -nodefaults -no-user-config -nographic -no-reboot -m 32 -accel kvm -cpu max,-arch-capabilities
//!   -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=0x04 -initrd config.json
//!   -netdev user,id=net0 -device virtio-net-device,netdev=net0 -kernel <image>`
//!   (`clock: TSC 2100 MHz (kvmclock), wall ... (kvmclock)`; with `+invtsc` QEMU also
//!   publishes CPUID `0x4000_0010`: `(CPUID 0x40000010)`).
//! * Cloud Hypervisor stand-in: `q35` with SeaBIOS and a 1 GiB `ivshmem-plain` BAR that
//!   overflows the 32-bit PCI window, so SeaBIOS puts every 64-bit BAR — the NIC's too — above
//!   4 GiB (Cloud Hypervisor always does): the image keeps and maps it, and the contract suite
//!   passes.

use imds_tests::contract::Target;
use imds_tests::DemoConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;
use xtask::qemu::{self, exit, ConfigVia, Firmware, Guest, Machine, QemuOpts};

/// Boot to serving; generous for a loaded 2-core machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// A failing boot stops in well under a second.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| qemu::build_image(true)).clone()
}

struct Running {
    guest: Guest,
    /// The serial console up to the ready line.
    boot_log: String,
    target: Target,
}

impl std::ops::Deref for Running {
    type Target = Target;
    fn deref(&self) -> &Target {
        &self.target
    }
}

/// Boot with `opts` (port 80 forwarded from `port`) and wait until it serves.
fn serve(cfg: DemoConfig, opts: QemuOpts, port: u16) -> Running {
    let mut guest = Guest::spawn(&image(), &opts).expect("spawn QEMU");
    guest
        .wait_ready(BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    let boot_log = guest.output();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Running {
        guest,
        boot_log,
        target: Target {
            imds: addr,
            legacy: addr,
            cfg,
        },
    }
}

/// The Firecracker stand-in's options: config as the initrd, the NIC on the command line.
fn firecracker_opts(cfg: &DemoConfig, port: u16) -> QemuOpts {
    QemuOpts {
        machine: Machine::Microvm,
        config_via: ConfigVia::Initrd,
        machine_props: vec!["auto-kernel-cmdline=on".into()],
        ..QemuOpts::new(&cfg.path, port)
    }
}

/// The Cloud Hypervisor stand-in's options: `q35`, SeaBIOS, the NIC's 64-bit BAR above 4 GiB.
fn high_bar_opts(cfg: &DemoConfig, port: u16) -> QemuOpts {
    QemuOpts {
        machine: Machine::Q35,
        firmware: Firmware::SeaBios,
        extra: [
            "-object",
            "memory-backend-ram,id=bigbar,size=1G",
            "-device",
            "ivshmem-plain,memdev=bigbar",
        ]
        .map(Into::into)
        .to_vec(),
        ..QemuOpts::new(&cfg.path, port)
    }
}

/// No RTC, no PIT (`microvm`).
fn no_clock_opts(cfg: &DemoConfig) -> QemuOpts {
    QemuOpts {
        config_via: ConfigVia::Initrd,
        machine_props: vec![
            "auto-kernel-cmdline=on".into(),
            "rtc=off".into(),
            "pit=off".into(),
        ],
        network: qemu::Network::None,
        ..QemuOpts::new(&cfg.path, 0)
    }
}

mod firecracker_standin {
    use super::*;

    pub(super) fn shared() -> &'static Running {
        static G: OnceLock<Running> = OnceLock::new();
        G.get_or_init(|| {
            let cfg = DemoConfig::new("reach-firecracker");
            let port = qemu::free_port();
            let opts = firecracker_opts(&cfg, port);
            serve(cfg, opts, port)
        })
    }

    imds_tests::contract_tests!(shared(), 8);

    #[test]
    fn config_from_the_pvh_module_and_nic_from_the_command_line() {
        let r = shared();
        let size = std::fs::metadata(&r.cfg.path).unwrap().len();
        let log = &r.boot_log;
        assert!(
            log.contains(&format!(
                "imds-agent: config: from the PVH module (initrd), {size} bytes"
            )),
            "{log}\ncommand: {}",
            r.guest.command
        );
        assert!(
            log.contains("imds-agent: nic: virtio-mmio at 0xfeb")
                && log.contains(" from the kernel command line"),
            "{log}"
        );
        assert!(!log.contains("fw_cfg"), "{log}");
        assert!(log.contains("(CMOS RTC)"), "{log}");
    }
}

mod high_bar {
    use super::*;

    pub(super) fn shared() -> &'static Running {
        static G: OnceLock<Running> = OnceLock::new();
        G.get_or_init(|| {
            let cfg = DemoConfig::new("reach-high-bar");
            let port = qemu::free_port();
            let opts = high_bar_opts(&cfg, port);
            serve(cfg, opts, port)
        })
    }

    imds_tests::contract_tests!(shared(), 8);

    #[test]
    fn the_nic_bar_is_above_4_gib_and_kept() {
        let log = &shared().boot_log;
        let line = log
            .lines()
            .find(|l| l.contains("imds-agent: nic: PCI, BAR at 0x"))
            .unwrap_or_else(|| panic!("no high-BAR line in:\n{log}"));
        let hex = line
            .split("BAR at 0x")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap();
        let bar = u64::from_str_radix(hex, 16).unwrap();
        assert!(bar >= 1 << 32, "{line}");
        assert!(line.ends_with("(above 4 GiB, mapped)"), "{line}");
    }
}

#[test]
fn no_rtc_and_no_pit_under_tcg_refuses_to_mint() {
    let cfg = DemoConfig::new("reach-no-clock");
    let out = imds_tests::expect_exit(
        &image(),
        &no_clock_opts(&cfg),
        exit::NO_WALL_CLOCK,
        "imds-agent: fatal: no wall clock (no CMOS RTC, no kvmclock); refusing to mint tokens with a wrong time",
        EXIT_TIMEOUT,
    );
    assert!(
        out.contains("(PIT unavailable, approximate), wall none"),
        "{out}"
    );
    assert!(!out.contains("imds-agent: config:"), "{out}");
}

#[test]
fn no_config_names_both_ways() {
    let opts = QemuOpts {
        config: None,
        network: qemu::Network::None,
        ..QemuOpts::default()
    };
    imds_tests::expect_exit(
        &image(),
        &opts,
        exit::CONFIG_MISSING,
        "imds-agent: fatal: no configuration: pass it with -fw_cfg name=opt/imds-agent/config,file=<config.json> or as the initrd (-initrd <config.json>",
        EXIT_TIMEOUT,
    );
}

#[test]
fn a_config_too_large_for_the_module_path_is_refused_by_size() {
    // The module is read by its size, not up to trailing padding: a document one byte over
    // the image's CONFIG_MAX is refused with exactly that size.
    // The image's CONFIG_MAX (`agent/src/limits.rs`, without `std`) + 1.
    let size = 64 * 1024 + 1;
    let path = imds_tests::test_file("reach-too-large.json", vec![b' '; size]);
    let opts = QemuOpts {
        config: Some(path),
        config_via: ConfigVia::Initrd,
        network: qemu::Network::None,
        ..QemuOpts::default()
    };
    imds_tests::expect_exit(
        &image(),
        &opts,
        exit::CONFIG_MISSING,
        &format!(
            "imds-agent: fatal: the PVH module (initrd): configuration too large ({size} bytes)"
        ),
        EXIT_TIMEOUT,
    );
}

/// The image built with `virtio-rng`.
fn rng_image() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| qemu::build_image_with(true, &["virtio-rng"]))
        .clone()
}

/// A CPU without RDRAND (`qemu64`) and a virtio-rng device: the `virtio-rng` image takes its
/// entropy from the device (on microvm found through the command line; on q35 qboot, a PCI
/// function whose BARs it assigns next to the NIC's) and mints tokens.
#[test]
fn virtio_rng_when_the_cpu_has_no_rdrand() {
    for (machine, device) in [
        (Machine::Microvm, "virtio-rng-device"),
        (Machine::Q35, "virtio-rng-pci"),
    ] {
        let cfg = DemoConfig::new("reach-virtio-rng");
        let port = qemu::free_port();
        let opts = QemuOpts {
            machine,
            cpu: Some("qemu64".into()),
            config_via: ConfigVia::Initrd,
            machine_props: if machine == Machine::Microvm {
                vec!["auto-kernel-cmdline=on".into()]
            } else {
                vec![]
            },
            extra: vec!["-device".into(), device.into()],
            ..QemuOpts::new(&cfg.path, port)
        };
        let mut guest = Guest::spawn(&rng_image(), &opts).expect("spawn QEMU");
        guest
            .wait_ready(BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        let out = guest.output();
        assert!(
            out.contains("imds-agent: entropy: virtio-rng (no RDRAND)"),
            "{out}"
        );
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let r = imds_tests::get(
            addr,
            &imds_tests::token_target("https://management.azure.com/", ""),
            &["Metadata: true"],
        );
        assert_eq!(r.status, 200, "{machine:?}: {}\n{out}", r.text());
    }
}

/// Without RDRAND and without a virtio-rng device the `virtio-rng` image refuses to start,
/// naming both sources.
#[test]
fn no_rdrand_and_no_virtio_rng_refuses() {
    let cfg = DemoConfig::new("reach-no-entropy");
    imds_tests::expect_exit(
        &rng_image(),
        &QemuOpts {
            cpu: Some("qemu64".into()),
            network: qemu::Network::None,
            ..QemuOpts::new(&cfg.path, 0)
        },
        exit::NO_ENTROPY,
        "imds-agent: fatal: no secure entropy source (RDRAND, virtio-rng); refusing to start",
        EXIT_TIMEOUT,
    );
}
