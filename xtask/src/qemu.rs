//! The unikernel image and QEMU: the one place that knows QEMU's flags.
//!
//! `build_image` builds `imds-unikernel` for `x86_64-unknown-none` ([`build_image_for`]: for
//! an [`Arch`]; on aarch64 the ELF becomes a flat Linux arm64 Image, [`flat_image`]);
//! `qemu_command` turns [`QemuOpts`] into a `qemu-system-x86_64` (or `qemu-system-aarch64`)
//! command line; `print_cmd` shows it as one shell-quoted line. Tests and `cargo xtask run`
//! both go through these functions.
//!
//! Machine profile, measured on this project's build machines (TCG, medians of 10 boots with
//! the load of other builds around; spawn -> first serial line / DHCP lease / first HTTP answer):
//!
//! | machine | first line | DHCP | HTTP |
//! |---|---:|---:|---:|
//! | `microvm,x-option-roms=off,acpi=off,pic=off,auto-kernel-cmdline=off` + virtio-net-device | 38 ms | 79 ms | 86 ms |
//! | `microvm` (defaults) + virtio-net-device | 46 ms | 88 ms | 96 ms |
//! | `q35` + qboot + virtio-net-pci (`romfile=`) | 59 ms | 112 ms | 120 ms |
//!
//! (SeaBIOS instead of qboot costs ~60 ms more on `q35`; `pc` is like `q35`.) So the default is
//! the lean `microvm` ([`Machine::Microvm`]), whose NIC sits in a virtio-mmio slot;
//! [`Machine::Q35`] keeps the PCI path (port-I/O configuration space, guest-assigned BARs)
//! covered.
//!
//! Exit status: the guest leaves through `isa-debug-exit` (port 0xF4), so QEMU's status is
//! `2 * code + 1` for guest code `code` (see [`guest_exit_code`] and `qemu/README.md`). The
//! aarch64 image leaves through Arm semihosting `SYS_EXIT` (`-semihosting-config
//! enable=on,target=native`) with the same status `2 * code + 1`, so one mapping serves both;
//! without semihosting it powers off through PSCI (status 0).

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::watchdog::Watchdog;
use crate::{root, target_dir};

/// The target the (x86_64) image is built for.
pub const TARGET: &str = "x86_64-unknown-none";
/// The target the aarch64 image is built for.
pub const TARGET_AARCH64: &str = "aarch64-unknown-none-softfloat";
/// The file name of the aarch64 image QEMU boots (a Linux arm64 Image, beside cargo's ELF).
pub const AARCH64_IMAGE: &str = "imds-unikernel.img";
/// The image's package.
pub const PACKAGE: &str = "imds-unikernel";
/// qboot, the fastest firmware for `-kernel` boots (Debian package `qemu-system-data`).
pub const QBOOT: &str = "/usr/share/qemu/qboot.rom";
/// fw_cfg name the guest reads its configuration from.
pub const CONFIG_FW_CFG: &str = "opt/imds-agent/config";
/// fw_cfg name that makes the guest fail on purpose right after boot: content `ud2` raises a
/// CPU exception, anything else panics (tests of the failure paths).
pub const PANIC_TEST_FW_CFG: &str = "opt/imds-agent/panic-test";
/// Guest RAM by default: the image needs ~2 MiB above 1 MiB (mostly `.bss`), qboot a little.
pub const DEFAULT_MEM_MB: u32 = 32;

/// Guest exit codes (written to isa-debug-exit by the image; `qemu/src/exit_code.rs`).
pub mod exit {
    pub const PANIC: u8 = 1;
    pub const BAD_BOOT: u8 = 2;
    pub const NO_ENTROPY: u8 = 3;
    pub const CONFIG_MISSING: u8 = 4;
    pub const CONFIG_INVALID: u8 = 5;
    pub const NIC: u8 = 6;
    pub const CPU_EXCEPTION: u8 = 7;
    pub const NO_WALL_CLOCK: u8 = 8;
}

/// The guest exit code behind a QEMU exit status (`2 * code + 1`), if it is one. The same on
/// both architectures: x86's `isa-debug-exit` makes it, the aarch64 image asks semihosting
/// `SYS_EXIT` for it.
pub fn guest_exit_code(qemu_status: i32) -> Option<u8> {
    if qemu_status > 0 && qemu_status % 2 == 1 {
        u8::try_from((qemu_status - 1) / 2).ok()
    } else {
        None
    }
}

/// The QEMU machine. Each architecture has a lean one whose NIC is on virtio-mmio and one
/// whose NIC is on PCI; the names of the other architecture's mean its same kind
/// (`Microvm` on aarch64 is `Virt`, `VirtPci` on x86 is `Q35`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Machine {
    /// x86: `microvm` without option ROMs, ACPI or PIC; the NIC is `virtio-net-device` (MMIO).
    #[default]
    Microvm,
    /// x86: `q35` with qboot when installed; the NIC is `virtio-net-pci`.
    Q35,
    /// aarch64: `virt`; the NIC is `virtio-net-device` (a `virtio,mmio` node).
    Virt,
    /// aarch64: `virt`; the NIC is `virtio-net-pci` (PCIe ECAM, BARs assigned by the guest).
    VirtPci,
}

impl Machine {
    /// Whether the NIC sits on PCI.
    pub fn pci(self) -> bool {
        matches!(self, Machine::Q35 | Machine::VirtPci)
    }
}

impl std::str::FromStr for Machine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "microvm" => Ok(Machine::Microvm),
            "q35" => Ok(Machine::Q35),
            "virt" => Ok(Machine::Virt),
            "virt-pci" => Ok(Machine::VirtPci),
            _ => Err(format!(
                "unknown machine `{s}` (microvm or q35; aarch64: virt or virt-pci)"
            )),
        }
    }
}

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// Emulation. The default: on this project's machines `/dev/kvm` is the host's `kvm_pvm`
    /// (a paravirtual KVM for PVM-aware Linux guests), on which QEMU 7.2 does not start a guest
    /// and QEMU 10 runs the image hundreds of times slower than TCG.
    #[default]
    Tcg,
    /// Hardware virtualisation, for real KVM hosts.
    Kvm,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            _ => Err(format!("unknown accelerator `{s}` (tcg or kvm)")),
        }
    }
}

/// The guest's architecture (which image, which `qemu-system-*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arch {
    /// `x86_64-unknown-none`, a PVH ELF for `qemu-system-x86_64 -kernel`.
    #[default]
    X86_64,
    /// `aarch64-unknown-none-softfloat`, a Linux arm64 Image for `qemu-system-aarch64 -M virt`.
    Aarch64,
}

impl Arch {
    /// The Rust target of its image.
    pub fn target(self) -> &'static str {
        match self {
            Arch::X86_64 => TARGET,
            Arch::Aarch64 => TARGET_AARCH64,
        }
    }

    /// The QEMU program that runs it.
    pub fn qemu_program(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" => Ok(Arch::X86_64),
            "aarch64" => Ok(Arch::Aarch64),
            _ => Err(format!("unknown arch `{s}` (x86_64 or aarch64)")),
        }
    }
}

/// The firmware QEMU runs before the image's PVH entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    /// `microvm`: its own qboot; `q35`: qboot when installed (assigns no PCI BARs), else SeaBIOS.
    #[default]
    Default,
    /// QEMU's default SeaBIOS (assigns PCI BARs, 64-bit ones above 4 GiB when the 32-bit
    /// window overflows).
    SeaBios,
}

/// How the configuration document reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfigVia {
    /// fw_cfg file `opt/imds-agent/config` (QEMU's way).
    #[default]
    FwCfg,
    /// `-initrd`: the first PVH module on x86 (Firecracker's `initrd_path`, Cloud Hypervisor's
    /// `--initramfs`), the device tree's `linux,initrd-start/-end` on Arm.
    Initrd,
}

/// Where the guest's network card is plugged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// QEMU user networking (slirp: guest 10.0.2.15/24 by DHCP, gateway 10.0.2.2), with guest
    /// port 80 forwarded from `127.0.0.1:<port>` when a port is given.
    User { hostfwd_port: Option<u16> },
    /// A tap interface that already exists (`ip tuntap add NAME mode tap`); QEMU runs no
    /// scripts.
    Tap { ifname: String },
    /// No NIC (the guest stops with exit code `NIC`).
    None,
}

/// How to run the image.
#[derive(Debug, Clone)]
pub struct QemuOpts {
    /// The guest's architecture.
    pub arch: Arch,
    /// The configuration document (`None`: boot without one, the guest refuses to start).
    pub config: Option<PathBuf>,
    /// How [`QemuOpts::config`] is passed.
    pub config_via: ConfigVia,
    pub network: Network,
    pub machine: Machine,
    pub accel: Accel,
    pub mem_mb: u32,
    /// `-cpu` model; `None`: `max` (RDRAND under TCG), `max,-arch-capabilities` under KVM.
    /// `Some("qemu64")` has no RDRAND.
    pub cpu: Option<String>,
    /// Extra fw_cfg files `(name, file)`, e.g. [`PANIC_TEST_FW_CFG`].
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// Machine properties added to the profile's `-M` (`key=value`; a key the profile sets is
    /// replaced), e.g. `microvm`'s `rtc=off`, `pit=off`, `auto-kernel-cmdline=on`.
    pub machine_props: Vec<String>,
    /// The firmware (`q35` only; `microvm` always runs its qboot).
    pub firmware: Firmware,
    /// Serial console: `None` is QEMU's stdio; `Some(path)` writes it to a file.
    pub serial_file: Option<PathBuf>,
    /// Appended verbatim.
    pub extra: Vec<OsString>,
}

impl QemuOpts {
    /// User networking with port 80 forwarded from `127.0.0.1:hostfwd_port`, TCG, defaults.
    pub fn new(config: impl Into<PathBuf>, hostfwd_port: u16) -> QemuOpts {
        QemuOpts {
            config: Some(config.into()),
            network: Network::User {
                hostfwd_port: Some(hostfwd_port),
            },
            ..QemuOpts::default()
        }
    }
}

impl Default for QemuOpts {
    fn default() -> Self {
        QemuOpts {
            arch: Arch::default(),
            config: None,
            config_via: ConfigVia::default(),
            network: Network::User { hostfwd_port: None },
            machine: Machine::default(),
            accel: Accel::default(),
            mem_mb: DEFAULT_MEM_MB,
            cpu: None,
            fw_cfg: Vec::new(),
            machine_props: Vec::new(),
            firmware: Firmware::default(),
            serial_file: None,
            extra: Vec::new(),
        }
    }
}

/// The file QEMU boots, built by [`build_image`]: the `release` build stripped
/// (`…/image/imds-unikernel-stripped`), or the debug build as cargo wrote it (x86_64; see
/// [`image_path_for`]).
pub fn image_path(release: bool) -> PathBuf {
    image_path_with(release, &[])
}

/// What cargo wrote for the image: with `release` (profile `image`), the same code as
/// [`image_path`] with its symbol table and line tables, for `cargo xtask size`, the stack
/// probe of `bench boot` and `addr2line` on the addresses a panic prints.
pub fn symbols_path(release: bool) -> PathBuf {
    symbols_path_with(release, &[])
}

/// The cargo command that builds the image (`--profile image` when `release`, else `dev`).
pub fn build_command(release: bool) -> Command {
    build_command_for(Arch::X86_64, release)
}

/// [`build_command`] for `arch`.
pub fn build_command_for(arch: Arch, release: bool) -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root()).args([
        "build",
        "-p",
        PACKAGE,
        "--target",
        arch.target(),
        "--profile",
        if release { "image" } else { "dev" },
    ]);
    c
}

/// Say what is about to be built before a build that may take minutes (cargo's own progress
/// follows on the terminal).
pub fn announce_build(what: &str, c: &Command) {
    eprintln!(
        "xtask: building {what} (first build: a few minutes): {}",
        print_cmd(c)
    );
}

/// Build the image; the path of the file QEMU boots, or why not.
pub fn try_build_image(release: bool) -> Result<PathBuf, String> {
    try_build_image_with(release, &[])
}

/// Build the image and return its path; panics (with the command line) when the build fails.
pub fn build_image(release: bool) -> PathBuf {
    try_build_image(release).unwrap_or_else(|e| panic!("{e}"))
}

/// The target directory of an image built with `features` (`target/image-broker` for
/// `["broker"]`): its own, so that a feature build never overwrites the default image that
/// other tests and `cargo xtask size` look at (and neither rebuild flips the other).
fn features_target_dir(features: &[&str]) -> PathBuf {
    if features.is_empty() {
        return target_dir();
    }
    target_dir().join(format!("image-{}", features.join("-")))
}

/// [`symbols_path`] of the build with `features`.
pub fn symbols_path_with(release: bool, features: &[&str]) -> PathBuf {
    symbols_path_for(Arch::X86_64, release, features)
}

/// [`symbols_path_with`] for `arch`: the ELF cargo wrote.
pub fn symbols_path_for(arch: Arch, release: bool, features: &[&str]) -> PathBuf {
    features_target_dir(features)
        .join(arch.target())
        .join(if release { "image" } else { "debug" })
        .join(PACKAGE)
}

/// [`image_path`] of the build with `features`.
pub fn image_path_with(release: bool, features: &[&str]) -> PathBuf {
    image_path_for(Arch::X86_64, release, features)
}

/// [`image_path_with`] for `arch`: on aarch64 the flat Linux arm64 Image [`AARCH64_IMAGE`]
/// beside the ELF (release and debug builds alike; it has no symbols).
pub fn image_path_for(arch: Arch, release: bool, features: &[&str]) -> PathBuf {
    let built = symbols_path_for(arch, release, features);
    match arch {
        Arch::Aarch64 => built.with_file_name(AARCH64_IMAGE),
        Arch::X86_64 if release => built.with_file_name(format!("{PACKAGE}-stripped")),
        Arch::X86_64 => built,
    }
}

/// Build the image with cargo features of `imds-unikernel` (e.g. `broker`); the path of the
/// file QEMU boots, or why not. A release build is stripped after linking (`objcopy
/// --strip-all`), not by cargo: the profile's `strip` changes the generated code, and the
/// stripped file must be the same code as the one with symbols ([`symbols_path_with`]).
pub fn try_build_image_with(release: bool, features: &[&str]) -> Result<PathBuf, String> {
    try_build_image_for(Arch::X86_64, release, features)
}

/// [`try_build_image_with`] for `arch`. On aarch64 the ELF's loadable segment becomes the
/// flat Image QEMU boots ([`flat_image`]), release and debug builds alike.
pub fn try_build_image_for(
    arch: Arch,
    release: bool,
    features: &[&str],
) -> Result<PathBuf, String> {
    let mut c = build_command_for(arch, release);
    let what = if features.is_empty() {
        format!("the unikernel image ({})", arch.target())
    } else {
        c.arg("--features")
            .arg(features.join(","))
            .env("CARGO_TARGET_DIR", features_target_dir(features));
        format!(
            "the unikernel image ({}) with {}",
            arch.target(),
            features.join(", ")
        )
    };
    announce_build(&what, &c);
    let status = c.status().map_err(|e| format!("{}: {e}", print_cmd(&c)))?;
    if !status.success() {
        return Err(format!("{} failed: {status}", print_cmd(&c)));
    }
    let built = symbols_path_for(arch, release, features);
    if !built.is_file() {
        return Err(format!("{} built no {}", print_cmd(&c), built.display()));
    }
    let image = image_path_for(arch, release, features);
    if arch == Arch::Aarch64 {
        flat_image(&built, &image)?;
        return Ok(image);
    }
    if !release {
        return Ok(built);
    }
    crate::setup::ensure_apt("objcopy", "binutils")?;
    let mut strip = Command::new("objcopy");
    strip.arg("--strip-all").arg(&built).arg(&image);
    let out = strip
        .output()
        .map_err(|e| format!("{}: {e}", print_cmd(&strip)))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            print_cmd(&strip),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(image)
}

/// [`try_build_image_with`], panicking (with the command line) when the build fails.
pub fn build_image_with(release: bool, features: &[&str]) -> PathBuf {
    try_build_image_with(release, features).unwrap_or_else(|e| panic!("{e}"))
}

/// [`try_build_image_for`], panicking (with the command line) when the build fails.
pub fn build_image_for(arch: Arch, release: bool, features: &[&str]) -> PathBuf {
    try_build_image_for(arch, release, features).unwrap_or_else(|e| panic!("{e}"))
}

/// Offset of the Linux arm64 Image header's magic (`ARM\x64`).
const ARM64_MAGIC_AT: usize = 0x38;

/// Write the flat binary of `elf` to `out`: the file bytes of its `PT_LOAD` segments, each at
/// its address less the lowest one (`.bss` is not in the file: the boot code zeroes it). The
/// result must start with a Linux arm64 Image header (magic `ARM\x64` at 0x38). Returns its
/// size.
pub fn flat_image(elf: &Path, out: &Path) -> Result<u64, String> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    use object::Endianness;
    let data = std::fs::read(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let file = ElfFile64::<Endianness>::parse(&*data)
        .map_err(|e| format!("{}: not an ELF64 file: {e}", elf.display()))?;
    let endian = file.endian();
    let mut loads = Vec::new();
    for ph in file.elf_program_headers() {
        if ph.p_type(endian) != object::elf::PT_LOAD || ph.p_filesz(endian) == 0 {
            continue;
        }
        let bytes = ph
            .data(endian, &*data)
            .map_err(|_| format!("{}: a PT_LOAD segment lies outside the file", elf.display()))?;
        loads.push((ph.p_paddr(endian), bytes));
    }
    let base = loads
        .iter()
        .map(|(a, _)| *a)
        .min()
        .ok_or_else(|| format!("{}: no loadable segment", elf.display()))?;
    let end = loads
        .iter()
        .map(|(a, b)| a + b.len() as u64)
        .max()
        .unwrap_or(base);
    let mut flat = vec![0u8; usize::try_from(end - base).map_err(|e| e.to_string())?];
    for (addr, bytes) in loads {
        let at = (addr - base) as usize;
        flat[at..at + bytes.len()].copy_from_slice(bytes);
    }
    if flat.get(ARM64_MAGIC_AT..ARM64_MAGIC_AT + 4) != Some(b"ARM\x64".as_slice()) {
        return Err(format!(
            "{}: the first loaded bytes are not a Linux arm64 Image header",
            elf.display()
        ));
    }
    std::fs::write(out, &flat).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(flat.len() as u64)
}

/// QEMU's `-opt key=value,...` values treat `,` as a separator; a literal one is doubled.
fn opt_escape(s: &OsStr) -> OsString {
    s.to_string_lossy().replace(',', ",,").into()
}

fn fw_cfg_arg(name: &str, file: &Path) -> OsString {
    let mut a = OsString::from(format!("name={name},file="));
    a.push(opt_escape(file.as_os_str()));
    a
}

/// The `qemu-system-x86_64` (`qemu-system-aarch64` for [`Arch::Aarch64`]) command that boots
/// `image` as `opts` says. Nothing is spawned.
pub fn qemu_command(image: &Path, opts: &QemuOpts) -> Command {
    let mut c = Command::new(opts.arch.qemu_program());
    let (name, profile): (&str, &[&str]) = match (opts.arch, opts.machine.pci()) {
        // microvm's default firmware is qboot already (bios-microvm.bin). The PIT stays: the
        // guest calibrates its TSC against it.
        (Arch::X86_64, false) => (
            "microvm",
            &[
                "x-option-roms=off",
                "acpi=off",
                "pic=off",
                "auto-kernel-cmdline=off",
            ],
        ),
        (Arch::X86_64, true) => ("q35", &[]),
        // The Image boots straight from `-kernel` (no firmware); the device tree says where
        // everything is.
        (Arch::Aarch64, _) => ("virt", &[]),
    };
    let key = |p: &str| p.split('=').next().unwrap_or_default().to_string();
    let mut m = name.to_string();
    for p in profile {
        if !opts.machine_props.iter().any(|o| key(o) == key(p)) {
            m.push(',');
            m.push_str(p);
        }
    }
    for p in &opts.machine_props {
        m.push(',');
        m.push_str(p);
    }
    c.arg("-M").arg(m);
    if opts.machine == Machine::Q35
        && opts.firmware == Firmware::Default
        && Path::new(QBOOT).is_file()
    {
        c.args(["-bios", QBOOT]);
    }
    c.args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    c.arg("-m").arg(opts.mem_mb.to_string());
    match opts.accel {
        Accel::Tcg => c.args(["-accel", "tcg"]),
        Accel::Kvm => c.args(["-accel", "kvm"]),
    };
    let cpu = opts.cpu.clone().unwrap_or_else(|| {
        match (opts.arch, opts.accel) {
            // TCG's `max` has RDRAND (x86) and RNDR (aarch64).
            (_, Accel::Tcg) => "max",
            // `-cpu host`/`max` with arch-capabilities aborts on some KVM hosts (MSR 0x10a).
            (Arch::X86_64, Accel::Kvm) => "max,-arch-capabilities",
            (Arch::Aarch64, Accel::Kvm) => "host",
        }
        .to_string()
    });
    c.arg("-cpu").arg(cpu);
    match &opts.serial_file {
        Some(f) => {
            let mut a = OsString::from("file:");
            a.push(f.as_os_str());
            c.arg("-serial").arg(a)
        }
        None => c.args(["-serial", "stdio"]),
    };
    match opts.arch {
        Arch::X86_64 => c.args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]),
        // SYS_EXIT with a status. `target=native`: QEMU serves the calls itself (no gdb).
        Arch::Aarch64 => c.args(["-semihosting-config", "enable=on,target=native"]),
    };
    c.args(["-rtc", "base=utc"]);
    match (&opts.config, opts.config_via) {
        (Some(config), ConfigVia::FwCfg) => c.arg("-fw_cfg").arg(fw_cfg_arg(CONFIG_FW_CFG, config)),
        (Some(config), ConfigVia::Initrd) => c.arg("-initrd").arg(config),
        (None, _) => &mut c,
    };
    for (name, file) in &opts.fw_cfg {
        c.arg("-fw_cfg").arg(fw_cfg_arg(name, file));
    }
    let netdev = match &opts.network {
        Network::User { hostfwd_port } => Some(match hostfwd_port {
            Some(port) => format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:80"),
            None => "user,id=net0".to_string(),
        }),
        Network::Tap { ifname } => Some(format!(
            "tap,id=net0,ifname={},script=no,downscript=no",
            ifname.replace(',', ",,")
        )),
        Network::None => None,
    };
    if let Some(netdev) = netdev {
        c.arg("-netdev").arg(netdev);
        c.args([
            "-device",
            if opts.machine.pci() {
                // No option ROM: nothing in the guest would run it.
                "virtio-net-pci,netdev=net0,romfile="
            } else {
                "virtio-net-device,netdev=net0"
            },
        ]);
    }
    c.arg("-kernel").arg(image);
    c.args(&opts.extra);
    c
}

/// Quote one word for a POSIX shell (only when needed).
fn shell_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// `cmd` as one shell-quoted line (environment and working directory not shown).
pub fn print_cmd(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `curl` that asks a guest forwarded from `127.0.0.1:port` for a token.
pub fn curl_hint(port: u16) -> String {
    format!(
        "curl -s -H 'Metadata: true' 'http://127.0.0.1:{port}/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/'"
    )
}

/// `cargo xtask run`: build the image, print the QEMU command line and a `curl` to try, run
/// QEMU in the foreground (serial on this terminal). Ctrl-C stops QEMU (its `-serial stdio`
/// keeps terminal signals); if this process is killed, a [`Watchdog`] kills QEMU. The guest's
/// exit code, if it left through isa-debug-exit (aarch64: semihosting), is reported in the error.
pub fn run_foreground(release: bool, features: &[&str], opts: &QemuOpts) -> Result<(), String> {
    let image = try_build_image_for(opts.arch, release, features)?;
    let mut cmd = qemu_command(&image, opts);
    eprintln!("{}", print_cmd(&cmd));
    if let Network::User {
        hostfwd_port: Some(port),
    } = opts.network
    {
        eprintln!("\ntry:  {}\n", curl_hint(port));
    }
    let qemu = opts.arch.qemu_program();
    let mut child = cmd.spawn().map_err(|e| format!("{qemu}: {e}"))?;
    let mut watchdog =
        Watchdog::guard_child(&mut child).map_err(|e| format!("watchdog (sh): {e}"))?;
    let status = child.wait();
    watchdog.disarm();
    let status = status.map_err(|e| format!("{qemu}: {e}"))?;
    match status.code().and_then(guest_exit_code) {
        None if status.success() => Ok(()),
        Some(code) => Err(format!("guest exit code {code} (QEMU {status})")),
        None => Err(format!("QEMU {status}")),
    }
}

/// The start of the one line the guest prints when it starts serving (its listening sockets
/// armed with its address, static or from DHCP):
/// `imds-agent: ready: http://A.B.C.D:80 http://169.254.169.254:80` (the agent's
/// `net::READY_PREFIX`). Connect after it, not before: an earlier SYN reaches a guest without an
/// address (or a NIC) and is retransmitted by the host only about a second later.
pub const READY_LINE: &str = "imds-agent: ready: ";

/// The first complete ready line in `output` (without its end of line).
pub fn ready_line(output: &str) -> Option<&str> {
    output[..output.rfind('\n')?]
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with(READY_LINE))
}

/// A booted guest: QEMU with its serial console (stdout) and stderr collected, killed on drop
/// and also when this process dies without dropping it (a guest kept in a `static` by a test
/// harness): see [`Watchdog`].
pub struct Guest {
    child: Child,
    watchdog: Watchdog,
    output: Arc<Mutex<String>>,
    /// The command line it was started with (for messages).
    pub command: String,
}

impl Guest {
    /// Spawn QEMU for `image` with `opts`; the serial console must go to stdio
    /// (`opts.serial_file == None`).
    pub fn spawn(image: &Path, opts: &QemuOpts) -> std::io::Result<Guest> {
        Self::spawn_command(qemu_command(image, opts))
    }

    /// Spawn a QEMU command line from [`qemu_command`], possibly wrapped (e.g. run in a network
    /// or mount namespace by a program that ends in `exec qemu-system-x86_64 ...`, so that the
    /// spawned process is QEMU). Its serial console must go to stdio.
    pub fn spawn_command(mut cmd: Command) -> std::io::Result<Guest> {
        let command = print_cmd(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        let output = Arc::new(Mutex::new(String::new()));
        fn collect(pipe: impl Read + Send + 'static, output: Arc<Mutex<String>>) {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut o = output.lock().unwrap_or_else(|e| e.into_inner());
                    o.push_str(line.trim_end_matches('\r'));
                    o.push('\n');
                }
            });
        }
        if let Some(out) = child.stdout.take() {
            collect(out, output.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, output.clone());
        }
        let watchdog = Watchdog::guard_child(&mut child)?;
        Ok(Guest {
            child,
            watchdog,
            output,
            command,
        })
    }

    /// QEMU is gone: the watchdog must not outlive it (its pid could be reused).
    fn stop_watchdog(&mut self) {
        self.watchdog.disarm();
    }

    /// Serial console and QEMU's stderr so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Wait until a line containing one of `needles` appears; `Err` (with the output so far)
    /// when QEMU exits first or `timeout` passes.
    pub fn wait_for_any(&mut self, needles: &[&str], timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.output();
            if let Some(line) = out.lines().find(|l| needles.iter().any(|n| l.contains(n))) {
                return Ok(line.to_string());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stop_watchdog();
                std::thread::sleep(Duration::from_millis(50)); // let the readers finish
                return Err(format!(
                    "QEMU exited ({status}) before {needles:?}:\n{}\ncommand: {}",
                    self.output(),
                    self.command
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no {needles:?} within {timeout:?}:\n{out}\ncommand: {}",
                    self.command
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the guest's ready line ([`READY_LINE`]) and return it: it serves HTTP.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String, String> {
        self.wait_for_any(&[READY_LINE], timeout)
    }

    /// Wait for QEMU to exit; kill it and return `None` after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stop_watchdog();
                std::thread::sleep(Duration::from_millis(50)); // let the readers finish
                return Some(status);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.stop_watchdog();
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.stop_watchdog();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for `hostfwd`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(c: &Command) -> Vec<String> {
        c.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn default_command_line() {
        let opts = QemuOpts::new("/tmp/c,1.json", 8080);
        let c = qemu_command(Path::new("/img"), &opts);
        let a = args(&c);
        let has = |pair: [&str; 2]| a.windows(2).any(|w| w == pair);
        assert!(has(["-cpu", "max"]));
        assert!(has([
            "-fw_cfg",
            "name=opt/imds-agent/config,file=/tmp/c,,1.json"
        ]));
        assert!(has([
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80"
        ]));
        assert!(has(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]));
        assert!(has(["-kernel", "/img"]));
        assert!(has(["-device", "virtio-net-device,netdev=net0"]));
        assert!(a[1].starts_with("microvm"));
        assert!(a.contains(&"-nodefaults".to_string()));
    }

    #[test]
    fn tap_and_cpu() {
        let opts = QemuOpts {
            network: Network::Tap {
                ifname: "tap0".into(),
            },
            cpu: Some("qemu64".into()),
            accel: Accel::Kvm,
            machine: Machine::Q35,
            ..QemuOpts::default()
        };
        let a = args(&qemu_command(Path::new("/img"), &opts));
        assert_eq!(a[1], "q35");
        assert!(a.contains(&"virtio-net-pci,netdev=net0,romfile=".to_string()));
        assert!(a.contains(&"tap,id=net0,ifname=tap0,script=no,downscript=no".to_string()));
        assert!(a.contains(&"qemu64".to_string()));
        assert!(a.contains(&"kvm".to_string()));
        assert!(!a
            .iter()
            .any(|x| x.starts_with("name=opt/imds-agent/config")));
    }

    #[test]
    fn aarch64_command_line() {
        let opts = QemuOpts {
            arch: Arch::Aarch64,
            config_via: ConfigVia::Initrd,
            ..QemuOpts::new("/tmp/c.json", 8080)
        };
        let a = args(&qemu_command(Path::new("/img"), &opts));
        let has = |pair: [&str; 2]| a.windows(2).any(|w| w == pair);
        assert_eq!(
            qemu_command(Path::new("/img"), &opts).get_program(),
            "qemu-system-aarch64"
        );
        assert!(has(["-M", "virt"]));
        assert!(has(["-cpu", "max"]));
        assert!(has(["-semihosting-config", "enable=on,target=native"]));
        assert!(has(["-initrd", "/tmp/c.json"]));
        assert!(has(["-device", "virtio-net-device,netdev=net0"]));
        assert!(has(["-kernel", "/img"]));
        assert!(!a.iter().any(|x| x.contains("isa-debug-exit")));
        assert!(!a
            .iter()
            .any(|x| x.starts_with("name=opt/imds-agent/config")));

        let pci = QemuOpts {
            arch: Arch::Aarch64,
            machine: Machine::VirtPci,
            ..QemuOpts::new("/tmp/c.json", 8080)
        };
        let a = args(&qemu_command(Path::new("/img"), &pci));
        assert!(a.contains(&"virtio-net-pci,netdev=net0,romfile=".to_string()));
        assert!(a.contains(&"name=opt/imds-agent/config,file=/tmp/c.json".to_string()));
        assert_eq!("virt-pci".parse::<Machine>(), Ok(Machine::VirtPci));
    }

    #[test]
    fn image_paths_per_arch() {
        let arm = image_path_for(Arch::Aarch64, true, &[]);
        assert!(arm.ends_with("aarch64-unknown-none-softfloat/image/imds-unikernel.img"));
        assert_eq!(image_path_for(Arch::X86_64, true, &[]), image_path(true));
        assert!(symbols_path_for(Arch::Aarch64, false, &["broker"])
            .ends_with("image-broker/aarch64-unknown-none-softfloat/debug/imds-unikernel"));
    }

    /// A minimal little-endian AArch64 ELF64: one `PT_LOAD` of `payload` at `addr` (with
    /// `memsz` beyond it, like `.bss`), placed at file offset 0x1000.
    fn elf_with(payload: &[u8], addr: u64, memsz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little-endian
        f[6] = 1; // version
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&addr.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // phoff
        f[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        f[54..56].copy_from_slice(&56u16.to_le_bytes()); // phentsize
        f[56..58].copy_from_slice(&1u16.to_le_bytes()); // phnum
        f[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
        let ph = &mut f[64..120];
        ph[..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&addr.to_le_bytes()); // vaddr
        ph[24..32].copy_from_slice(&addr.to_le_bytes()); // paddr
        ph[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes()); // filesz
        ph[40..48].copy_from_slice(&memsz.to_le_bytes()); // memsz
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes()); // align
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn flat_image_is_the_loaded_bytes_and_checks_the_header() {
        let dir = std::env::temp_dir().join(format!("xtask-flat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (elf, out) = (dir.join("elf"), dir.join("img"));
        let mut payload = vec![0xAAu8; 0x60];
        payload[0x38..0x3C].copy_from_slice(b"ARM\x64");
        std::fs::write(&elf, elf_with(&payload, 0x4008_0000, 0x10_0000)).unwrap();
        assert_eq!(flat_image(&elf, &out), Ok(0x60));
        assert_eq!(std::fs::read(&out).unwrap(), payload);
        // Not an Image: refused, nothing booted by mistake.
        payload[0x38] = b'X';
        std::fs::write(&elf, elf_with(&payload, 0x4008_0000, 0x60)).unwrap();
        assert!(flat_image(&elf, &out)
            .unwrap_err()
            .contains("arm64 Image header"));
        std::fs::write(&elf, b"not an elf").unwrap();
        assert!(flat_image(&elf, &out).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn quoting() {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-serial", "stdio", "it's here", ""]);
        assert_eq!(
            print_cmd(&c),
            r"qemu-system-x86_64 -serial stdio 'it'\''s here' ''"
        );
    }

    #[test]
    fn the_ready_line() {
        let line = "imds-agent: ready: http://10.0.2.15:80 http://169.254.169.254:80";
        assert_eq!(ready_line(&format!("boot\n{line}\nmore\n")), Some(line));
        assert_eq!(ready_line(&format!("{line}\r\n")), Some(line));
        // Not yet complete, or not at the start of a line.
        assert_eq!(ready_line(&format!("boot\n{line}")), None);
        assert_eq!(ready_line(&format!("x {line}\n")), None);
        assert_eq!(ready_line(&format!("x {line}\n{line}\n")), Some(line));
        assert_eq!(
            ready_line("imds-agent: net: DHCP address 10.0.2.15/24\n"),
            None
        );
    }

    #[test]
    fn machine_props_replace_the_profiles() {
        let opts = QemuOpts {
            machine_props: vec!["auto-kernel-cmdline=on".into(), "rtc=off".into()],
            ..QemuOpts::new("/cfg.json", 8080)
        };
        let a = args(&qemu_command(Path::new("/img"), &opts));
        assert!(a.windows(2).any(|w| w[0] == "-M"
            && w[1]
                == "microvm,x-option-roms=off,acpi=off,pic=off,auto-kernel-cmdline=on,rtc=off"));
        let opts = QemuOpts {
            machine: Machine::Q35,
            firmware: Firmware::SeaBios,
            ..QemuOpts::new("/cfg.json", 8080)
        };
        let a = args(&qemu_command(Path::new("/img"), &opts));
        assert!(a.windows(2).any(|w| w[0] == "-M" && w[1] == "q35"));
        assert!(!a.contains(&"-bios".to_string()));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(guest_exit_code(7), Some(exit::NO_ENTROPY));
        assert_eq!(guest_exit_code(3), Some(exit::PANIC));
        assert_eq!(guest_exit_code(0), None);
        assert_eq!(guest_exit_code(124), None);
    }
}
