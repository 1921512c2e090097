//! The unikernel from the command line: `cargo xtask run` and `cargo xtask bench boot`.
//!
//! ```text
//! cargo xtask run [--config FILE] [--port N] [--accel tcg|kvm] [--machine microvm|q35]
//!                 [--mem MIB] [--print-cmd]
//! cargo xtask bench boot [--runs N] [--max-mem MIB] [--accel tcg|kvm]
//!                         [--machine microvm|q35|virt|virt-pci] [--arch x86_64|aarch64] [--print-cmd]
//! ```
//!
//! `run` builds the image (profile `image`), writes a demo config when none is given
//! (`target/demo/config.json`, kept for the next run), and boots QEMU with user networking,
//! `127.0.0.1:N` (8080) forwarded to the guest's port 80; the serial console is this terminal.
//! Ctrl-C stops QEMU, and so does killing this process (a watchdog). `--print-cmd` builds the
//! image and prints the QEMU command line instead (one shell-quoted line, absolute paths).
//!
//! `bench boot` measures, over `--runs` boots (20) of the release image for each network setup
//! (DHCP, the demo config; static address), from QEMU's spawn:
//! - the image's first byte on the serial console (QEMU's start-up, firmware and the image's
//!   own boot code up to its first line);
//! - the guest's ready line (`imds-agent: ready: ...`, [`qemu::READY_LINE`]);
//! - the first token: HTTP 200 from the token endpoint over hostfwd. The client sends its
//!   request as soon as the ready line appears (earlier SYNs would reach a guest without an
//!   address and slirp would retransmit them a second later), and retries on failure.
//!
//! It then finds the smallest `-m` (MiB) that still serves a token. It prints a table and writes
//! `target/bench/boot.json` (`boot-aarch64.json` for `--arch aarch64`). Figures are reported,
//! never asserted.
//!
//! The floor is measured with a kernel of its own, the **floor kernel** ([`x86_floor_elf`]: a PVH
//! ELF of five instructions that writes one byte to COM1 and halts; [`aarch64_floor_image`] for
//! `--arch aarch64`, which boots the aarch64 image on QEMU `virt`: a Linux arm64 Image that
//! writes one byte to the PL011 and waits), booted with the same QEMU command line as the image
//! ([`qemu::qemu_command`] with the floor instead of the image), right before each boot of the
//! image. Its spawn -> first serial byte is QEMU's own start-up, which no guest
//! can beat; the ratio reported is the median over those pairs of the image's spawn -> first
//! token over the floor kernel's (issue 11's ratio). `--print-cmd` prints the QEMU command lines
//! of the image and of the floor kernel, and stops.
//!
//! The **network floor image** (the image's cargo feature `net-floor`, `qemu/src/net_floor.rs`)
//! is timed the same way, after a floor kernel each, for each setup: the same boot code, virtio-net
//! driver and smoltcp as the agent's image, no config, no clock calibration, no agent, one fixed
//! `200` to every request. Its ratio is the least any image built on those crates reaches on
//! this machine and accelerator; the bench also prints how many translation blocks it needs.
//! Under TCG one more boot of each, with QEMU's `-d in_asm`, counts the blocks translated up to
//! the ready line and from there to the first token by source file or crate ([`jit`]): what
//! each part of the code costs a boot there.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use xtask::qemu::{self, Accel, Arch, ConfigVia, Machine, Network, QemuOpts};
use xtask::watchdog::Watchdog;
use xtask::{config, http, jit, load, root, target_dir};

type Result<T = ()> = std::result::Result<T, String>;

const RUN_USAGE: &str = "usage: cargo xtask run [--arch x86_64|aarch64] [--config FILE] [--initrd] \
                         [--port N] [--accel tcg|kvm] [--machine microvm|q35|virt|virt-pci] [--mem MIB] \
                         [--features attested,scheduled-events] [--print-cmd]   (or: run --host ...)";
const BENCH_USAGE: &str = "usage: cargo xtask bench boot [--runs N] [--max-mem MIB] \
                           [--accel tcg|kvm] [--machine microvm|q35|virt|virt-pci] [--arch x86_64|aarch64] \
                           [--print-cmd]";

/// How long a `-m` probe waits for a token.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The token request of the benchmark.
const TOKEN_TARGET: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://management.azure.com/";
/// The second token request of each boot: another resource, so a fresh mint (not the cache).
const WARM_TOKEN_TARGET: &str =
    "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net";

/// Command-line flags: `--name value` pairs and bare switches, anything else refused.
struct Flags {
    values: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Flags {
    fn parse(
        args: &[String],
        with_value: &[&str],
        switches: &[&str],
        usage: &str,
    ) -> Result<Flags> {
        let mut f = Flags {
            values: Vec::new(),
            switches: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if with_value.contains(&a.as_str()) {
                let v = it
                    .next()
                    .ok_or_else(|| format!("{a} needs a value\n{usage}"))?;
                f.values.push((a.clone(), v.clone()));
            } else if switches.contains(&a.as_str()) {
                f.switches.push(a.clone());
            } else {
                return Err(format!("unknown argument `{a}`\n{usage}"));
            }
        }
        Ok(f)
    }
    fn get(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{name}: `{v}` is not valid")),
        }
    }
    fn has(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

fn parse_accel(f: &Flags) -> Result<Accel> {
    f.get("--accel").map_or(Ok(Accel::Tcg), str::parse)
}

fn parse_machine(f: &Flags) -> Result<Machine> {
    f.get("--machine").map_or(Ok(Machine::Microvm), str::parse)
}

/// The machine for `arch`: aarch64 `virt` for x86's default (`microvm`), the NIC on
/// virtio-mmio as `cargo xtask run` does.
fn machine_for(arch: Arch, machine: Machine) -> Machine {
    match (arch, machine) {
        (Arch::Aarch64, Machine::Microvm) => Machine::Virt,
        (_, machine) => machine,
    }
}

/// The options of one benchmark boot (the image's and the floor kernel's).
fn bench_opts(
    arch: Arch,
    accel: Accel,
    machine: Machine,
    cfg: &Path,
    mem_mb: u32,
    port: u16,
) -> QemuOpts {
    QemuOpts {
        arch,
        accel,
        machine,
        mem_mb,
        ..QemuOpts::new(cfg, port)
    }
}

fn arch_name(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64",
        Arch::Aarch64 => "aarch64",
    }
}

fn parse_arch(f: &Flags) -> Result<Arch> {
    f.get("--arch").map_or(Ok(Arch::X86_64), str::parse)
}

/// Build the release image of `arch` with `features`: the file QEMU boots (for aarch64 the
/// flat Linux arm64 Image) and cargo's ELF of the same code with its symbols.
pub(crate) fn build_image_for(arch: Arch, features: &[&str]) -> Result<(PathBuf, PathBuf)> {
    Ok((
        qemu::try_build_image_for(arch, true, features)?,
        qemu::symbols_path_for(arch, true, features),
    ))
}

/// `cargo xtask run` for the unikernel.
pub fn run_unikernel(args: &[String]) -> Result {
    let f = Flags::parse(
        args,
        &[
            "--config",
            "--port",
            "--accel",
            "--machine",
            "--mem",
            "--features",
            "--arch",
        ],
        &["--print-cmd", "--initrd"],
        RUN_USAGE,
    )?;
    let port: u16 = f.parsed("--port", 8080)?;
    let arch: Arch = f.get("--arch").map_or(Ok(Arch::X86_64), str::parse)?;
    // The image's optional endpoints (`broker`, `rsa` too: their configs need an authority).
    let features: Vec<&str> = f
        .get("--features")
        .map(|l| l.split(',').filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    for x in &features {
        if !["attested", "scheduled-events", "broker", "rsa"].contains(x) {
            return Err(format!("--features: unknown feature `{x}`\n{RUN_USAGE}"));
        }
    }
    // The default demo config carries an attestation signer only for an image that serves it
    // (the default image refuses an `attestation` it cannot serve).
    let attested = features.contains(&"attested");
    let demo_name = if attested {
        "config-attested.json"
    } else {
        "config.json"
    };
    let config = match f.get("--config") {
        Some(c) => std::fs::canonicalize(c).map_err(|e| format!("--config {c}: {e}"))?,
        None => {
            let p = root().join("target/demo").join(demo_name);
            if !p.exists() {
                config::write_demo_full(
                    &p,
                    "127.0.0.1:8080",
                    Some("127.0.0.1:50342"),
                    config::DEMO_USER_DATA.as_bytes(),
                    attested,
                )
                .map_err(|e| format!("{}: {e}", p.display()))?;
                eprintln!("wrote a demo config: {}", p.display());
            }
            p
        }
    };
    // aarch64 `virt` without --machine: the virtio-mmio NIC.
    let machine = match (arch, parse_machine(&f)?) {
        (Arch::Aarch64, Machine::Microvm) => Machine::Virt,
        (_, machine) => machine,
    };
    let opts = QemuOpts {
        arch,
        config_via: if f.has("--initrd") {
            ConfigVia::Initrd
        } else {
            ConfigVia::FwCfg
        },
        accel: parse_accel(&f)?,
        machine,
        mem_mb: f.parsed("--mem", qemu::DEFAULT_MEM_MB)?,
        ..QemuOpts::new(config, port)
    };
    if f.has("--print-cmd") {
        let image = qemu::try_build_image_for(arch, true, &features)?;
        println!("{}", qemu::print_cmd(&qemu::qemu_command(&image, &opts)));
        return Ok(());
    }
    qemu::run_foreground(true, &features, &opts)
}

/// One boot, timed from QEMU's spawn.
#[derive(Debug, Clone, Copy)]
struct Sample {
    first_byte_ms: f64,
    ready_ms: f64,
    first_token_ms: f64,
    /// A second token request right after the first, for another resource: a fresh mint
    /// whose code QEMU has translated already (ms for that request alone).
    warm_token_ms: Option<f64>,
    /// The guest's own clock (ms since its TSC calibration began): NIC up, address set.
    guest_nic_ms: Option<f64>,
    guest_address_ms: Option<f64>,
}

/// The "(N ms since boot)" of the first console line that contains `marker`.
pub fn guest_ms(console: &str, marker: &str) -> Option<f64> {
    let line = console.lines().find(|l| l.contains(marker))?;
    let (_, rest) = line.rsplit_once('(')?;
    rest.strip_suffix(" ms since boot)")?.trim().parse().ok()
}

/// What the serial reader reports.
enum Event {
    FirstByte(Instant),
    Ready(Instant),
    Eof(String),
}

/// Boot `image` once: the times of the first serial byte, the ready line and the first token.
fn boot_once(image: &Path, opts: &QemuOpts, timeout: Duration) -> Result<Sample> {
    let Network::User {
        hostfwd_port: Some(port),
    } = opts.network
    else {
        return Err("the benchmark needs user networking with hostfwd".into());
    };
    let mut cmd = qemu::qemu_command(image, opts);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", qemu::print_cmd(&cmd)))?;
    let mut watchdog = Watchdog::guard_child(&mut child).map_err(|e| format!("watchdog: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        let mut ready_sent = false;
        loop {
            let n = match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = Instant::now();
            if text.is_empty() {
                let _ = tx.send(Event::FirstByte(now));
            }
            text.extend_from_slice(&buf[..n]);
            if !ready_sent {
                let s = String::from_utf8_lossy(&text);
                if qemu::ready_line(&s).is_some() {
                    ready_sent = true;
                    let _ = tx.send(Event::Ready(now));
                }
            }
        }
        let _ = tx.send(Event::Eof(String::from_utf8_lossy(&text).into_owned()));
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let deadline = t0 + timeout;
    let result = (|| {
        let (mut first, mut ready) = (None, None);
        while ready.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Event::FirstByte(t)) => first = Some(t),
                Ok(Event::Ready(t)) => ready = Some(t),
                Ok(Event::Eof(out)) => {
                    return Err(match out.lines().rfind(|l| !l.trim().is_empty()) {
                        Some(last) => format!(
                            "QEMU exited before serving (last console line: {:?})\n{out}",
                            last.trim()
                        ),
                        // -no-reboot: a triple fault (e.g. an image larger than RAM) exits.
                        None => "QEMU exited without a console line (triple fault? QEMU refused to boot?)".into(),
                    });
                }
                Err(_) => return Err(format!("no ready line within {timeout:?}")),
            }
        }
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let token = loop {
            if let Ok(200) = token_status(addr, TOKEN_TARGET) {
                break Instant::now();
            }
            if Instant::now() > deadline {
                return Err(format!("no token within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let warm = matches!(token_status(addr, WARM_TOKEN_TARGET), Ok(200))
            .then(|| token.elapsed().as_secs_f64() * 1000.0);
        let ms = |t: Instant| t.duration_since(t0).as_secs_f64() * 1000.0;
        Ok(Sample {
            first_byte_ms: ms(first.expect("the ready line came with bytes")),
            ready_ms: ms(ready.expect("loop ends on ready")),
            first_token_ms: ms(token),
            warm_token_ms: warm,
            guest_nic_ms: None,
            guest_address_ms: None,
        })
    })();
    let _ = child.kill();
    let status = child.wait();
    watchdog.disarm();
    let _ = reader.join();
    let console = rx
        .try_iter()
        .find_map(|e| match e {
            Event::Eof(text) => Some(text),
            _ => None,
        })
        .unwrap_or_default();
    let result = result.map(|s| Sample {
        guest_nic_ms: guest_ms(&console, "virtio-net up"),
        guest_address_ms: guest_ms(&console, "net: DHCP address")
            .or_else(|| guest_ms(&console, "(static)")),
        ..s
    });
    let stderr_text = err_reader.join().unwrap_or_default();
    result.map_err(|e| {
        let mut e = format!("{e}\nQEMU: {status:?}");
        if !stderr_text.trim().is_empty() {
            e.push_str(&format!("\nstderr: {}", stderr_text.trim()));
        }
        e
    })
}

/// The floor kernel for aarch64: a Linux arm64 Image (the 64-byte header of the Linux arm64 boot
/// protocol, `Documentation/arch/arm64/booting.rst`) whose code writes `!` to the data register
/// of QEMU `virt`'s PL011 (0x0900_0000) and then waits for interrupts forever. QEMU boots it like
/// the agent's Image (`-kernel`, loaded at RAM + `text_offset`); its first serial byte is the
/// earliest any guest can print on that command line.
pub fn aarch64_floor_image() -> Vec<u8> {
    /// `movz x0, #0x0900, lsl #16` (x0 = the PL011's data register)
    const MOVZ_X0_PL011: u32 = 0xd2a1_2000;
    /// `movz w1, #0x21` (`!`)
    const MOVZ_W1_BANG: u32 = 0x5280_0421;
    /// `strb w1, [x0]`
    const STRB_W1_X0: u32 = 0x3900_0001;
    /// `wfi`
    const WFI: u32 = 0xd503_207f;
    /// `b .-4` (back to the `wfi`)
    const B_BACK: u32 = 0x17ff_ffff;
    const HEADER: usize = 64;
    let code = [MOVZ_X0_PL011, MOVZ_W1_BANG, STRB_W1_X0, WFI, B_BACK];
    let size = (HEADER + 4 * code.len()) as u64;
    let mut image = Vec::with_capacity(size as usize);
    // code0: `b` over the header to the code; code1: 0.
    image.extend_from_slice(&(0x1400_0000u32 | (HEADER as u32 / 4)).to_le_bytes());
    image.extend_from_slice(&0u32.to_le_bytes());
    // text_offset (honoured by QEMU since image_size != 0), image_size, flags: little endian,
    // 4 KiB pages, placed near the start of RAM.
    image.extend_from_slice(&0x8_0000u64.to_le_bytes());
    image.extend_from_slice(&size.to_le_bytes());
    image.extend_from_slice(&0b0010u64.to_le_bytes());
    // res2, res3, res4
    image.extend_from_slice(&[0; 24]);
    image.extend_from_slice(b"ARM\x64");
    // res5 (offset to a PE header: none)
    image.extend_from_slice(&0u32.to_le_bytes());
    for insn in code {
        image.extend_from_slice(&insn.to_le_bytes());
    }
    image
}

/// The floor kernel for x86_64: a PVH ELF (`XEN_ELFNOTE_PHYS32_ENTRY`, the entry the image
/// uses, see `qemu/src/x86_64/boot.rs`) whose code writes `!` to COM1 (port 0x3F8) and then
/// halts forever. QEMU boots it like the agent's image (`-kernel`, loaded at 1 MiB, entered in
/// 32-bit protected mode after qboot); its first serial byte is the earliest any guest can print
/// on that command line.
pub fn x86_floor_elf() -> Vec<u8> {
    /// Link and load address (1 MiB, as the image).
    const BASE: u64 = 0x10_0000;
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    /// The Xen note: name "Xen\0", type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`), an 8-byte address.
    const NOTE: usize = 12 + 4 + 8;
    const NOTE_AT: usize = EHDR + 2 * PHDR;
    const CODE_AT: usize = NOTE_AT + NOTE;
    // mov dx, 0x3f8; mov al, '!'; out dx, al; hlt; jmp back to the hlt
    const CODE: [u8; 10] = [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x21, 0xee, 0xf4, 0xeb, 0xfd];
    let size = (CODE_AT + CODE.len()) as u64;
    let entry = BASE + CODE_AT as u64;
    let mut elf = Vec::with_capacity(size as usize);
    // e_ident: ELF, 64-bit, little endian, version 1, System V.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    elf.extend_from_slice(&62u16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&entry.to_le_bytes()); // e_entry
    elf.extend_from_slice(&(EHDR as u64).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [EHDR, PHDR, 2, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&(half as u16).to_le_bytes());
    }
    // A program header: type, flags, the file's bytes from `offset` loaded at BASE + offset.
    let mut phdr = |kind: u32, flags: u32, offset: u64, len: u64, align: u64| {
        elf.extend_from_slice(&kind.to_le_bytes());
        elf.extend_from_slice(&flags.to_le_bytes());
        elf.extend_from_slice(&offset.to_le_bytes());
        elf.extend_from_slice(&(BASE + offset).to_le_bytes()); // p_vaddr
        elf.extend_from_slice(&(BASE + offset).to_le_bytes()); // p_paddr
        elf.extend_from_slice(&len.to_le_bytes()); // p_filesz
        elf.extend_from_slice(&len.to_le_bytes()); // p_memsz
        elf.extend_from_slice(&align.to_le_bytes());
    };
    // PT_LOAD: the whole file at BASE, read/write/execute.
    phdr(1, 7, 0, size, 0x1000);
    // PT_NOTE: the Xen note.
    phdr(4, 4, NOTE_AT as u64, NOTE as u64, 4);
    elf.extend_from_slice(&4u32.to_le_bytes()); // namesz
    elf.extend_from_slice(&8u32.to_le_bytes()); // descsz
    elf.extend_from_slice(&18u32.to_le_bytes()); // type
    elf.extend_from_slice(b"Xen\0");
    elf.extend_from_slice(&entry.to_le_bytes());
    elf.extend_from_slice(&CODE);
    debug_assert_eq!(elf.len() as u64, size);
    elf
}

/// Write the floor kernel of `arch` ([`x86_floor_elf`], [`aarch64_floor_image`]) to
/// `target/bench/`; its path.
pub fn write_floor(arch: Arch) -> Result<PathBuf> {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (name, bytes) = match arch {
        Arch::X86_64 => ("floor-x86_64.elf", x86_floor_elf()),
        Arch::Aarch64 => ("floor-aarch64.Image", aarch64_floor_image()),
    };
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Boot the floor kernel once with `opts`; ms from QEMU's spawn to its first serial byte.
fn floor_once(floor: &Path, opts: &QemuOpts, timeout: Duration) -> Result<f64> {
    let mut cmd = qemu::qemu_command(floor, opts);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let t0 = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("{}: {e}", qemu::print_cmd(&cmd)))?;
    let mut watchdog = Watchdog::guard_child(&mut child).map_err(|e| format!("watchdog: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let got = matches!(stdout.read(&mut b), Ok(1));
        let _ = tx.send((Instant::now(), got.then_some(b[0])));
    });
    let got = rx.recv_timeout(timeout);
    let _ = child.kill();
    let status = child.wait();
    watchdog.disarm();
    let _ = reader.join();
    match got {
        Ok((t, Some(_))) => Ok(t.duration_since(t0).as_secs_f64() * 1000.0),
        Ok((_, None)) => Err(format!(
            "the floor kernel printed nothing (QEMU {status:?}): {}",
            qemu::print_cmd(&cmd)
        )),
        Err(_) => Err(format!(
            "no byte from the floor kernel within {timeout:?}: {}",
            qemu::print_cmd(&cmd)
        )),
    }
}

/// One token request for `target`; its HTTP status.
fn token_status(addr: SocketAddr, target: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nMetadata: true\r\nConnection: close\r\n\r\n"
    )?;
    Ok(http::read_response(&mut s, false)?.status)
}

/// min, p25, median, p75, max of `v` (milliseconds).
fn spread(v: &[f64]) -> Value {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let r = |x: f64| (x * 10.0).round() / 10.0;
    json!({
        "min": r(s.first().copied().unwrap_or(0.0)),
        "p25": r(load::percentile(&s, 25.0)),
        "median": r(load::median(&s)),
        "p75": r(load::percentile(&s, 75.0)),
        "max": r(s.last().copied().unwrap_or(0.0)),
    })
}

fn sorted(v: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut v: Vec<f64> = v.collect();
    v.sort_by(f64::total_cmp);
    v
}

/// A demo config for the benchmark, with a static address when `static_net`.
fn bench_config(dir: &Path, static_net: bool) -> Result<PathBuf> {
    let mut doc = config::demo("127.0.0.1:8080", None);
    if static_net {
        doc["network"] = json!({ "address": "10.0.2.15/24", "gateway": "10.0.2.2" });
    }
    let name = if static_net {
        "boot-static.json"
    } else {
        "boot-dhcp.json"
    };
    let path = dir.join(name);
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(&path, serde_json::to_vec_pretty(&doc).expect("json"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The stack the guest runs on, `(address, bytes)`, from its first line
/// (`imds-agent: unikernel X booting, stack 0xBOTTOM..0xTOP`).
pub fn stack_region(console: &str) -> Result<(u64, u64)> {
    let range = console
        .lines()
        .find_map(|l| l.split_once(", stack ").map(|(_, r)| r.trim()))
        .ok_or("the guest printed no stack range")?;
    let (lo, hi) = range
        .split_once("..")
        .ok_or_else(|| format!("stack range `{range}`?"))?;
    let hex = |v: &str| {
        u64::from_str_radix(v.trim().trim_start_matches("0x"), 16)
            .map_err(|_| format!("stack range `{range}`?"))
    };
    let (base, top) = (hex(lo)?, hex(hi)?);
    if top <= base {
        return Err(format!("stack range `{range}`?"));
    }
    Ok((base, top - base))
}

/// The deepest the stack went: bytes from its top down to the lowest byte that is not zero.
/// The boot code zeroes `.bss` (the stack with it) before it runs Rust; a frame that wrote only
/// zeros at its bottom is counted a little short.
pub fn stack_used(dump: &[u8]) -> u64 {
    let untouched = dump.iter().position(|&b| b != 0).unwrap_or(dump.len());
    (dump.len() - untouched) as u64
}

/// One HMP command over QEMU's monitor socket; the text up to the next prompt.
fn monitor(sock: &Path, command: &str) -> Result<String> {
    use std::os::unix::net::UnixStream;
    let mut s = UnixStream::connect(sock).map_err(|e| format!("{}: {e}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut text = Vec::new();
    let mut buf = [0u8; 1024];
    let mut read_prompt = |s: &mut UnixStream, text: &mut Vec<u8>| -> Result {
        while !String::from_utf8_lossy(text).contains("(qemu) ") {
            let n = s.read(&mut buf).map_err(|e| format!("monitor: {e}"))?;
            if n == 0 {
                return Err("monitor closed".into());
            }
            text.extend_from_slice(&buf[..n]);
        }
        Ok(())
    };
    read_prompt(&mut s, &mut text)?;
    text.clear();
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("monitor: {e}"))?;
    read_prompt(&mut s, &mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// A probe boot: `image` booted with `opts` plus `extra` QEMU arguments and an HMP monitor on
/// the unix socket `target/bench/{name}.sock`, waited for until its ready line. The guest
/// (QEMU is killed when it is dropped), the monitor's socket and the guest's hostfwd address.
fn probe_boot(
    image: &Path,
    mut opts: QemuOpts,
    name: &str,
    extra: Vec<std::ffi::OsString>,
    timeout: Duration,
) -> Result<(qemu::Guest, PathBuf, SocketAddr)> {
    let sock = target_dir().join("bench").join(format!("{name}.sock"));
    let _ = std::fs::remove_file(&sock);
    let Network::User {
        hostfwd_port: Some(port),
    } = opts.network
    else {
        return Err("a probe boot needs user networking with hostfwd".into());
    };
    opts.extra.extend(extra);
    opts.extra.push("-monitor".into());
    opts.extra
        .push(format!("unix:{},server=on,wait=off", sock.display()).into());
    let mut guest = qemu::Guest::spawn(image, &opts).map_err(|e| format!("QEMU: {e}"))?;
    guest.wait_ready(timeout)?;
    Ok((guest, sock, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// One token request that must be answered `200`.
fn token_ok(addr: SocketAddr) -> Result {
    match token_status(addr, TOKEN_TARGET) {
        Ok(200) => Ok(()),
        Ok(status) => Err(format!("token request: status {status}")),
        Err(e) => Err(format!("token request: {e}")),
    }
}

/// Boot once with a monitor, ask for tokens and the other documents (a cache miss per
/// identity and resource, a cache hit, errors), then dump the stack: its high-water mark. Also
/// the translation blocks QEMU made by the ready line and by the first token ([`Probe`]).
fn stack_high_water(image: &Path, cfg: &Path, opts: QemuOpts, timeout: Duration) -> Result<Probe> {
    let dump = target_dir().join("bench").join("boot-stack.bin");
    let _ = std::fs::remove_file(&dump);
    let (guest, sock, addr) = probe_boot(image, opts, "boot-monitor", Vec::new(), timeout)?;
    let blocks_ready = monitor(&sock, "info jit").ok().and_then(|t| jit_blocks(&t));
    let (base, size) = stack_region(&guest.output())?;
    let doc: Value = serde_json::from_slice(&std::fs::read(cfg).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let mut targets = vec![
        TOKEN_TARGET.to_string(),
        TOKEN_TARGET.to_string(),
        format!("{TOKEN_TARGET}&bypass_cache=true"),
        "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://vault.azure.net"
            .into(),
        "/metadata/identity/info?api-version=2018-02-01".into(),
        "/.well-known/openid-configuration".into(),
        "/.well-known/jwks.json".into(),
        "/metadata/identity/oauth2/token?api-version=1999-01-01&resource=x".into(),
        "/nothing".into(),
    ];
    for id in doc["identities"].as_array().into_iter().flatten() {
        if let Some(c) = id["client_id"].as_str() {
            targets.push(format!("{TOKEN_TARGET}&client_id={c}"));
        }
    }
    let mut blocks_token = None;
    for (i, t) in targets.iter().enumerate() {
        if i == 1 {
            blocks_token = monitor(&sock, "info jit").ok().and_then(|t| jit_blocks(&t));
        }
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {t} HTTP/1.1\r\nHost: 169.254.169.254\r\nMetadata: true\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        http::read_response(&mut s, false).map_err(|e| format!("{t}: {e}"))?;
    }
    monitor(
        &sock,
        &format!("pmemsave {base:#x} {size} \"{}\"", dump.display()),
    )?;
    let bytes = std::fs::read(&dump).map_err(|e| format!("{}: {e}", dump.display()))?;
    if bytes.len() as u64 != size {
        return Err(format!("pmemsave wrote {} of {size} bytes", bytes.len()));
    }
    drop(guest);
    Ok(Probe {
        stack_used: stack_used(&bytes),
        stack_size: size,
        blocks_ready,
        blocks_token,
    })
}

/// Boot `image` with a monitor: the translation blocks QEMU had made when its ready line was
/// read and after its answer to one token request (for the network floor image; the agent's
/// image gets these from [`stack_high_water`]).
fn jit_blocks_to_answer(image: &Path, opts: QemuOpts, timeout: Duration) -> Result<(u64, u64)> {
    let (_guest, sock, addr) = probe_boot(image, opts, "boot-jit", Vec::new(), timeout)?;
    let blocks = || {
        monitor(&sock, "info jit")
            .ok()
            .and_then(|t| jit_blocks(&t))
            .ok_or_else(|| "no TB count in HMP info jit (not TCG?)".to_string())
    };
    let ready = blocks()?;
    token_ok(addr)?;
    Ok((ready, blocks()?))
}

/// The blocks QEMU translated for `image` by source ([`jit::by_source`] on `symbols`, the same
/// code with its line tables): up to its ready line, and from there to its answer to one token
/// request. One boot with `-d in_asm` (the log switched to a second file on the ready line, by
/// HMP `logfile`).
fn blocks_by_source(
    image: &Path,
    symbols: &Path,
    opts: QemuOpts,
    timeout: Duration,
) -> Result<[Vec<(String, usize)>; 2]> {
    let dir = target_dir().join("bench");
    let logs = [
        dir.join("boot-in_asm-ready.log"),
        dir.join("boot-in_asm-token.log"),
    ];
    for log in &logs {
        let _ = std::fs::remove_file(log);
    }
    let extra = vec![
        "-d".into(),
        "in_asm".into(),
        "-D".into(),
        logs[0].clone().into(),
    ];
    let (guest, sock, addr) = probe_boot(image, opts, "boot-in_asm", extra, timeout)?;
    monitor(&sock, &format!("logfile {}", logs[1].display()))?;
    token_ok(addr)?;
    // Closes the second log (QEMU writes each block's lines as it translates it).
    drop(guest);
    let count = |log: &Path| {
        let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
        jit::by_source(symbols, &jit::block_addresses(&text))
    };
    Ok([count(&logs[0])?, count(&logs[1])?])
}

/// What the probe boot measured: the stack's high-water mark and size, and how many
/// translation blocks QEMU had made when the ready line was read and after the first token
/// (TCG only: under TCG translating code the first time it runs is most of a boot).
struct Probe {
    stack_used: u64,
    stack_size: u64,
    blocks_ready: Option<u64>,
    blocks_token: Option<u64>,
}

/// The `TB count` of HMP `info jit` (TCG's translation blocks so far); `None` without one
/// (KVM has no JIT).
pub fn jit_blocks(info_jit: &str) -> Option<u64> {
    info_jit.lines().find_map(|l| {
        l.trim()
            .strip_prefix("TB count")
            .and_then(|n| n.trim().parse().ok())
    })
}

/// `runs` boots of `image`, each right after a boot of the `floor` kernel on the same command
/// line (`opts()`, a fresh port each), so that each pair sees the same load of the machine: the
/// image's samples and the floor kernel's first-byte times, `[i]` with `[i]`.
fn paired_boots(
    image: &Path,
    floor: &Path,
    runs: usize,
    name: &str,
    opts: impl Fn() -> QemuOpts,
    timeout: Duration,
) -> Result<(Vec<Sample>, Vec<f64>)> {
    let (mut samples, mut floor_ms) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        let opts = opts();
        floor_ms.push(
            floor_once(floor, &opts, timeout)
                .map_err(|e| format!("{name}: floor kernel boot {}: {e}", i + 1))?,
        );
        samples.push(
            boot_once(image, &opts, timeout).map_err(|e| format!("{name} boot {}: {e}", i + 1))?,
        );
    }
    Ok((samples, floor_ms))
}

/// The median over the pairs of [`paired_boots`] of first token (or answer) / the floor
/// kernel's first byte: issue 11's ratio.
fn median_pair_ratio(samples: &[Sample], floor_ms: &[f64]) -> f64 {
    load::median(&sorted(
        samples
            .iter()
            .zip(floor_ms)
            .map(|(s, f)| s.first_token_ms / f),
    ))
}

/// `cargo xtask bench boot`.
pub fn bench(args: &[String]) -> Result {
    let f = Flags::parse(
        args,
        &["--runs", "--max-mem", "--accel", "--machine", "--arch"],
        &["--print-cmd"],
        BENCH_USAGE,
    )?;
    let runs: usize = f.parsed::<usize>("--runs", 20)?.max(1);
    let max_mem: u32 = f.parsed("--max-mem", qemu::DEFAULT_MEM_MB)?;
    let accel = parse_accel(&f)?;
    let arch = parse_arch(&f)?;
    let machine = machine_for(arch, parse_machine(&f)?);
    // TCG emulating another architecture is slower.
    let timeout = Duration::from_secs(match (accel, arch) {
        (Accel::Kvm, _) | (_, Arch::Aarch64) => 60,
        _ => 20,
    });

    let (image, image_symbols) = build_image_for(arch, &[])?;
    // The network floor image: the same boot code, NIC driver and smoltcp, no agent
    // (`qemu/src/net_floor.rs`). Built before any boot is timed.
    let (net_floor_image, net_floor_symbols) = build_image_for(arch, &["net-floor"])?;
    let image_bytes = std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0);
    let dir = target_dir().join("bench");
    let opts_for =
        |cfg: &Path, mem_mb: u32| bench_opts(arch, accel, machine, cfg, mem_mb, qemu::free_port());
    let floor = write_floor(arch)?;
    if f.has("--print-cmd") {
        let cfg = bench_config(&dir, false)?;
        let opts = opts_for(&cfg, qemu::DEFAULT_MEM_MB);
        println!("{}", qemu::print_cmd(&qemu::qemu_command(&image, &opts)));
        println!("{}", qemu::print_cmd(&qemu::qemu_command(&floor, &opts)));
        return Ok(());
    }

    let mut setups = Vec::new();
    // Each boot of the image follows a boot of the floor kernel on the same command line: the pair sees the same load of the machine (`floors[i]` goes with
    // `samples[i]`).
    let mut floors = Vec::new();
    for (name, static_net) in [("dhcp", false), ("static", true)] {
        let cfg = bench_config(&dir, static_net)?;
        eprintln!(
            "bench boot: {runs} boots, {name} address, each after one of the floor kernel ..."
        );
        let (samples, floor_ms) = paired_boots(
            &image,
            &floor,
            runs,
            name,
            || opts_for(&cfg, qemu::DEFAULT_MEM_MB),
            timeout,
        )?;
        setups.push((name, cfg, samples));
        floors.push(floor_ms);
    }

    // The network floor image, for each setup (`net_floors[i]` goes with `setups[i]`), paired
    // with floor kernel boots like the image.
    let mut net_floors = Vec::new();
    for (name, cfg, _) in &setups {
        eprintln!(
            "bench boot: {runs} boots of the network floor image, {name} address, each after one of the floor kernel ..."
        );
        net_floors.push(paired_boots(
            &net_floor_image,
            &floor,
            runs,
            &format!("net-floor {name}"),
            || opts_for(cfg, qemu::DEFAULT_MEM_MB),
            timeout,
        )?);
    }

    // Smallest -m that serves a token (DHCP config), MiB by MiB from 1.
    eprintln!("bench boot: smallest -m ...");
    let dhcp_cfg = &setups[0].1;
    let mut probes = Vec::new();
    let mut min_mem = None;
    for mib in 1..=max_mem {
        // A guest that fits boots in well under a second; one that does not may hang.
        let probe_timeout = if accel == Accel::Kvm {
            timeout
        } else {
            PROBE_TIMEOUT
        };
        match boot_once(&image, &opts_for(dhcp_cfg, mib), probe_timeout) {
            Ok(s) => {
                probes.push(json!({ "mib": mib, "ok": true, "first_token_ms": s.first_token_ms }));
                min_mem = Some(mib);
                break;
            }
            Err(e) => {
                // The cause and QEMU's exit status, without the console dump.
                let why = e
                    .lines()
                    .filter(|l| !l.is_empty())
                    .take(1)
                    .chain(
                        e.lines()
                            .filter(|l| l.starts_with("QEMU: ") || l.starts_with("stderr: ")),
                    )
                    .collect::<Vec<_>>()
                    .join("; ");
                probes.push(json!({ "mib": mib, "ok": false, "why": why }));
            }
        }
    }

    eprintln!("bench boot: stack high-water mark ...");
    let stack = stack_high_water(
        &image,
        dhcp_cfg,
        opts_for(dhcp_cfg, qemu::DEFAULT_MEM_MB),
        timeout,
    );

    let mut report = json!({
        "stack_used_bytes": stack.as_ref().ok().map(|s| s.stack_used),
        "stack_bytes": stack.as_ref().ok().map(|s| s.stack_size),
        "blocks_translated": {
            "ready": stack.as_ref().ok().and_then(|s| s.blocks_ready),
            "first_token": stack.as_ref().ok().and_then(|s| s.blocks_token),
        },
        "arch": arch_name(arch),
        "machine": format!("{machine:?}").to_lowercase(),
        "accel": format!("{accel:?}").to_lowercase(),
        "runs": runs,
        "image": image.display().to_string(),
        "image_bytes": image_bytes,
        "mem_mib": qemu::DEFAULT_MEM_MB,
        "min_mem_mib": min_mem,
        "mem_probes": probes,
        "method": "times from QEMU's spawn; the token request is sent on the guest's ready line; stack: lowest non-zero byte of the stack the guest zeroes at boot (range from its first line), dumped with the QEMU monitor's pmemsave",
    });
    println!(
        "\nboot, {} boots each, {} {} {}, -m {} (ms from QEMU spawn: median [min .. max], p25-p75)\n",
        runs,
        arch_name(arch),
        report["machine"].as_str().unwrap_or(""),
        report["accel"].as_str().unwrap_or(""),
        qemu::DEFAULT_MEM_MB
    );
    println!("| address | first serial byte | ready line | first token | token / own first byte |");
    println!("|---|---:|---:|---:|---:|");
    for (name, _, samples) in &setups {
        let fb = sorted(samples.iter().map(|s| s.first_byte_ms));
        let rd = sorted(samples.iter().map(|s| s.ready_ms));
        let tk = sorted(samples.iter().map(|s| s.first_token_ms));
        let ratios = sorted(samples.iter().map(|s| s.first_token_ms / s.first_byte_ms));
        let cell = |v: &[f64]| {
            format!(
                "{:.1} [{:.1} .. {:.1}], {:.1}-{:.1}",
                load::median(v),
                v[0],
                v[v.len() - 1],
                load::percentile(v, 25.0),
                load::percentile(v, 75.0)
            )
        };
        println!(
            "| {name} | {} | {} | {} | {:.2}x |",
            cell(&fb),
            cell(&rd),
            cell(&tk),
            load::median(&ratios)
        );
        report[*name] = json!({
            "first_byte_ms": spread(&fb),
            "ready_ms": spread(&rd),
            "first_token_ms": spread(&tk),
            "ratio_first_token_over_first_byte": (load::median(&ratios) * 100.0).round() / 100.0,
            "samples": samples.iter().map(|s| json!([
                (s.first_byte_ms * 10.0).round() / 10.0,
                (s.ready_ms * 10.0).round() / 10.0,
                (s.first_token_ms * 10.0).round() / 10.0,
            ])).collect::<Vec<_>>(),
        });
    }
    println!("\n(token / own first byte: median of the per-boot ratios; the target applies to the ratio over the floor kernel below)");
    for ((name, _, samples), floor_ms) in setups.iter().zip(&floors) {
        let fl = sorted(floor_ms.iter().copied());
        let ratio = median_pair_ratio(samples, floor_ms);
        println!(
            "{name}: floor kernel (one byte on {}, same command line, booted before each): first serial byte {:.1} [{:.1} .. {:.1}] ms; first token / floor kernel's first byte: {:.2}x (median of the per-pair ratios; target <= 1.5x)",
            match arch {
                Arch::X86_64 => "COM1",
                Arch::Aarch64 => "the PL011",
            },
            load::median(&fl),
            fl[0],
            fl[fl.len() - 1],
            ratio
        );
        report[*name]["floor_first_byte_ms"] = spread(&fl);
        report[*name]["ratio_first_token_over_floor"] = json!((ratio * 100.0).round() / 100.0);
    }
    for (name, _, samples) in &setups {
        let med = |f: fn(&Sample) -> Option<f64>| {
            let v: Vec<f64> = samples.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| load::median(&v))
        };
        let (nic, address) = (med(|s| s.guest_nic_ms), med(|s| s.guest_address_ms));
        println!(
            "guest's own clock ({name}; ms since {}, medians): NIC up {}, address {}",
            match arch {
                Arch::X86_64 => "its TSC calibration began",
                Arch::Aarch64 => "its clock started (generic timer)",
            },
            nic.map_or("-".into(), |v| format!("{v:.0}")),
            address.map_or("-".into(), |v| format!("{v:.0}"))
        );
        report[*name]["guest_ms"] = json!({ "nic_up": nic, "address": address });
        let first = sorted(samples.iter().map(|s| s.first_token_ms - s.ready_ms));
        let warm = sorted(samples.iter().filter_map(|s| s.warm_token_ms));
        if !warm.is_empty() {
            println!(
                "first request ({name}; ready line -> first token) {:.1} ms; a second token right after it (another resource: a fresh mint, its code translated already) {:.1} ms (medians): the difference is QEMU translating the first request's code",
                load::median(&first),
                load::median(&warm)
            );
        }
        report[*name]["first_request_ms"] = spread(&first);
        report[*name]["warm_token_ms"] = (!warm.is_empty()).then(|| spread(&warm)).into();
    }
    report["net_floor"] = json!({});
    for ((name, cfg, _), (samples, floor_ms)) in setups.iter().zip(&net_floors) {
        let tk = sorted(samples.iter().map(|s| s.first_token_ms));
        let rd = sorted(samples.iter().map(|s| s.ready_ms));
        let fl = sorted(floor_ms.iter().copied());
        let ratio = median_pair_ratio(samples, floor_ms);
        println!(
            "network floor image ({name}; the same boot code, virtio-net driver and smoltcp, one fixed answer; no config parsed, no clock calibration, agent or crypto): ready line {:.1} ms, first answer {:.1} ms; over the floor kernel's first byte ({:.1} ms): {:.2}x (median of the per-pair ratios): no image built on these crates answers sooner here",
            load::median(&rd),
            load::median(&tk),
            load::median(&fl),
            ratio
        );
        let blocks = jit_blocks_to_answer(
            &net_floor_image,
            opts_for(cfg, qemu::DEFAULT_MEM_MB),
            timeout,
        );
        match &blocks {
            Ok((ready, answer)) => println!(
                "  translation blocks QEMU made for it: {ready} up to the ready line, {answer} up to the first answer"
            ),
            Err(e) => println!("  translation blocks: not measured: {e}"),
        }
        report["net_floor"][*name] = json!({
            "blocks_translated": blocks.as_ref().ok().map(|(r, a)| json!({ "ready": r, "first_answer": a })),
            "ready_ms": spread(&rd),
            "first_answer_ms": spread(&tk),
            "floor_first_byte_ms": spread(&fl),
            "ratio_first_answer_over_floor": (ratio * 100.0).round() / 100.0,
        });
    }
    if accel == Accel::Tcg {
        let mut by_source = json!({});
        for (name, image, symbols) in [
            ("image", &image, &image_symbols),
            ("net_floor", &net_floor_image, &net_floor_symbols),
        ] {
            let opts = opts_for(&setups[0].1, qemu::DEFAULT_MEM_MB);
            match blocks_by_source(image, symbols, opts, timeout) {
                Ok([ready, token]) => {
                    println!(
                        "translated blocks by source ({}; QEMU -d in_asm, addr2line; a block counts for the innermost frame outside Rust's core library):\n  up to the ready line: {}\n  ready line -> first token: {}",
                        if name == "image" { "the image" } else { "the network floor image" },
                        jit::summary(&ready, 12),
                        jit::summary(&token, 12)
                    );
                    by_source[name] = json!({ "ready": ready, "first_token": token });
                }
                Err(e) => println!("translated blocks by source ({name}): not measured: {e}"),
            }
        }
        report["blocks_by_source"] = by_source;
    }
    match min_mem {
        Some(m) => println!("smallest -m that serves a token: {m} MiB (target 2)"),
        None => println!("no -m up to {max_mem} MiB served a token"),
    }
    match &stack {
        Ok(p) => {
            println!(
                "stack high-water mark (boot; tokens for each identity, cached and bypassed; documents; errors): {} KiB of the {} KiB stack",
                p.stack_used.div_ceil(1024),
                p.stack_size / 1024
            );
            if let (Some(ready), Some(token)) = (p.blocks_ready, p.blocks_token) {
                println!(
                    "translation blocks QEMU made (HMP info jit; most of a boot under TCG): {ready} up to the ready line, {token} up to the first token"
                );
            }
        }
        Err(e) => println!("stack high-water mark: not measured: {e}"),
    }
    for p in &probes {
        if p["ok"] == false {
            println!("  -m {}: {}", p["mib"], p["why"].as_str().unwrap_or(""));
        }
    }
    let out = dir.join(match arch {
        Arch::X86_64 => "boot.json",
        Arch::Aarch64 => "boot-aarch64.json",
    });
    std::fs::write(&out, serde_json::to_vec_pretty(&report).expect("json"))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    println!("\nwrote {}", out.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags() {
        let a: Vec<String> = ["--port", "9", "--print-cmd"].map(String::from).to_vec();
        let f = Flags::parse(&a, &["--port"], &["--print-cmd"], "u").unwrap();
        assert_eq!(f.parsed::<u16>("--port", 1).unwrap(), 9);
        assert!(f.has("--print-cmd"));
        assert!(Flags::parse(&a, &["--port"], &[], "u").is_err());
        assert!(Flags::parse(&a[..1], &["--port"], &[], "u").is_err());
    }

    #[test]
    fn guest_phase_times_from_its_lines() {
        let console = "imds-agent: virtio-net up, MAC 52:54:00:12:34:56 (21 ms since boot)\n\
                       imds-agent: net: DHCP address 10.0.2.15/24, gateway 10.0.2.2 (51 ms since boot)\n";
        assert_eq!(guest_ms(console, "virtio-net up"), Some(21.0));
        assert_eq!(guest_ms(console, "net: DHCP address"), Some(51.0));
        assert_eq!(guest_ms(console, "(static)"), None);
    }

    #[test]
    fn the_stack_range_from_the_first_line() {
        let line = "imds-agent: unikernel 0.1.0 booting, stack 0x10000..0x9fc00\n";
        assert_eq!(stack_region(line).unwrap(), (0x10000, 0x9fc00 - 0x10000));
        assert!(stack_region("imds-agent: unikernel 0.1.0 booting\n").is_err());
        assert!(stack_region(", stack 0x20..0x10\n").is_err());
    }

    #[test]
    fn the_aarch64_floor_kernel_is_a_linux_arm64_image() {
        let image = aarch64_floor_image();
        let u32_at = |o: usize| u32::from_le_bytes(image[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(image[o..o + 8].try_into().unwrap());
        // code0 branches over the 64-byte header.
        assert_eq!(u32_at(0), 0x1400_0000 | (64 / 4));
        assert_eq!(u64_at(8), 0x8_0000, "text_offset");
        assert_eq!(u64_at(16), image.len() as u64, "image_size");
        assert_eq!(u64_at(24), 0b0010, "flags: LE, 4 KiB pages");
        assert_eq!(&image[56..60], b"ARM\x64");
        assert_eq!(image.len() % 4, 0);
        // The last instruction branches back to the `wfi` before it.
        assert_eq!(u32_at(image.len() - 8), 0xd503_207f);
        assert_eq!(u32_at(image.len() - 4), 0x17ff_ffff);
    }

    #[test]
    fn the_aarch64_bench_command_lines() {
        let args = |c: &std::process::Command| {
            c.get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        };
        let machine = machine_for(Arch::Aarch64, Machine::Microvm);
        assert_eq!(machine, Machine::Virt);
        assert_eq!(
            machine_for(Arch::X86_64, Machine::Microvm),
            Machine::Microvm
        );
        assert_eq!(
            machine_for(Arch::Aarch64, Machine::VirtPci),
            Machine::VirtPci
        );
        let cfg = Path::new("/tmp/boot-dhcp.json");
        let opts = bench_opts(Arch::Aarch64, Accel::Tcg, machine, cfg, 32, 8080);
        let image = qemu::qemu_command(Path::new("/img"), &opts);
        let floor = qemu::qemu_command(Path::new("/floor"), &opts);
        assert_eq!(image.get_program(), "qemu-system-aarch64");
        assert_eq!(floor.get_program(), "qemu-system-aarch64");
        let (a, fa) = (args(&image), args(&floor));
        let has = |a: &[String], pair: [&str; 2]| a.windows(2).any(|w| w == pair);
        assert!(has(&a, ["-M", "virt"]));
        assert!(has(&a, ["-device", "virtio-net-device,netdev=net0"]));
        assert!(has(&a, ["-semihosting-config", "enable=on,target=native"]));
        assert!(has(
            &a,
            ["-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:8080-:80"]
        ));
        assert!(has(
            &a,
            [
                "-fw_cfg",
                "name=opt/imds-agent/config,file=/tmp/boot-dhcp.json"
            ]
        ));
        assert!(!a.iter().any(|x| x.contains("isa-debug-exit")));
        // The floor kernel boots on the image's command line, only `-kernel` differs.
        assert_eq!(a.len(), fa.len());
        let differ: Vec<_> = a.iter().zip(&fa).filter(|(x, y)| x != y).collect();
        assert_eq!(differ, [(&"/img".to_string(), &"/floor".to_string())]);
        assert!(has(&fa, ["-kernel", "/floor"]));
        // PCI: the NIC on virt's PCIe host bridge, no option ROM.
        let pci = bench_opts(Arch::Aarch64, Accel::Tcg, Machine::VirtPci, cfg, 32, 8080);
        let a = args(&qemu::qemu_command(Path::new("/img"), &pci));
        assert!(has(&a, ["-M", "virt"]));
        assert!(has(&a, ["-device", "virtio-net-pci,netdev=net0,romfile="]));
        assert!(!a.iter().any(|x| x.starts_with("virtio-net-device")));
    }

    #[test]
    fn the_aarch64_floor_kernel_prints_one_byte_under_qemu() {
        floor_prints(Arch::Aarch64, Machine::Virt, 60);
    }

    /// The floor kernel of `arch` prints its byte on `machine` within `timeout_s`.
    fn floor_prints(arch: Arch, machine: Machine, timeout_s: u64) {
        let floor = write_floor(arch).unwrap();
        let opts = QemuOpts {
            arch,
            machine,
            network: Network::None,
            ..QemuOpts::default()
        };
        let ms = floor_once(&floor, &opts, Duration::from_secs(timeout_s)).unwrap();
        assert!(ms > 0.0);
    }

    #[test]
    fn the_x86_floor_kernel_is_a_pvh_elf() {
        let elf = x86_floor_elf();
        let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(u32_at(64), 1, "first program header: PT_LOAD");
        assert_eq!(u64_at(64 + 32), elf.len() as u64, "it loads the whole file");
        assert_eq!(u32_at(120), 4, "second program header: PT_NOTE");
        let note = u64_at(120 + 8) as usize;
        assert_eq!(u32_at(note + 8), 18, "XEN_ELFNOTE_PHYS32_ENTRY");
        assert_eq!(&elf[note + 12..note + 16], b"Xen\0");
        let entry = u64_at(note + 16);
        assert_eq!(entry, u64_at(24), "the note's entry is e_entry");
        assert_eq!(
            &elf[(entry - 0x10_0000) as usize..],
            [0x66, 0xba, 0xf8, 0x03, 0xb0, 0x21, 0xee, 0xf4, 0xeb, 0xfd]
        );
    }

    #[test]
    fn the_x86_floor_kernel_prints_one_byte_under_qemu() {
        floor_prints(Arch::X86_64, Machine::Microvm, 20);
    }

    /// The bench's comparison point works: the network floor image boots, takes an address (by
    /// DHCP; the static one with the static config), answers a token request with its fixed
    /// `200`, and QEMU's block count is read.
    #[test]
    fn the_network_floor_image_answers_under_qemu() {
        let (image, _) = build_image_for(Arch::X86_64, &["net-floor"]).unwrap();
        for static_net in [false, true] {
            let cfg = bench_config(&target_dir().join("bench"), static_net).unwrap();
            let opts = || {
                bench_opts(
                    Arch::X86_64,
                    Accel::Tcg,
                    Machine::Microvm,
                    &cfg,
                    qemu::DEFAULT_MEM_MB,
                    qemu::free_port(),
                )
            };
            let boot = boot_once(&image, &opts(), Duration::from_secs(60)).unwrap();
            assert!(boot.first_token_ms > boot.ready_ms);
            let (ready, answer) =
                jit_blocks_to_answer(&image, opts(), Duration::from_secs(60)).unwrap();
            assert!(0 < ready && ready < answer, "{ready} then {answer}");
        }
    }

    #[test]
    fn the_block_count_of_info_jit() {
        let text = "info jit\r\nTranslation buffer state:\r\ngen code size       1848291/1073736704\r\nTB count            3342\r\nTB avg target size  17 max=513 bytes\r\n";
        assert_eq!(jit_blocks(text), Some(3342));
        assert_eq!(jit_blocks("JIT not enabled"), None);
    }

    #[test]
    fn stack_use_is_counted_from_the_top() {
        assert_eq!(stack_used(&[0, 0, 0, 0]), 0);
        assert_eq!(stack_used(&[0, 0, 7, 0]), 2);
        assert_eq!(stack_used(&[1, 0, 0, 0]), 4);
    }
}
