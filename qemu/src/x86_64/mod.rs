//! The x86_64 machine (QEMU `pc`/`q35`/`microvm`, PVH boot): what [`crate::unikernel`] asks of
//! an architecture, from `imds_hal::x86_64`'s backends. Every architecture module offers the
//! same names: [`Console`], [`MachineClock`], [`ClockStart`], [`MachineEntropy`], [`Idle`],
//! [`BootInfo`] and the functions below; the boot sequence itself is arch-neutral.

pub mod boot;

use core::sync::atomic::{AtomicU64, Ordering};
use imds_hal::pvh::Module;
use imds_hal::text::Text;
use imds_hal::virtio_net::{NicError, VirtioNet};
pub use imds_hal::x86_64::clock::ClockStart;
use imds_hal::x86_64::clock::{Calibration, WallSource};
use imds_hal::x86_64::fw_cfg::{self, FwCfgConfig};
use imds_hal::x86_64::interrupts::{self, LapicStart};
use imds_hal::x86_64::nic::Found;
use imds_hal::x86_64::pvh::{self, ModuleConfig};
use imds_hal::x86_64::rdrand::Rdrand;
use imds_hal::{Clock, ConfigSource, ConfigSourceError, Entropy, EntropyError};

use crate::exit_code;

pub use imds_hal::x86_64::clock::TscClock as MachineClock;
pub use imds_hal::x86_64::exit::exit;
pub use imds_hal::x86_64::interrupts::LapicTimer as Idle;
pub use imds_hal::x86_64::serial::Serial as Console;

/// What the boot code hands to [`crate::unikernel::main`]: the PVH `hvm_start_info` address.
pub type BootInfo = u32;

/// What the VMM left in memory, found at entry for the backends below: the command line
/// (address, length) and the first module (address, size; 0: none).
static CMDLINE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
static MODULE: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
/// The idle timer's start ([`imds_hal::x86_64::interrupts::LapicStart`]: base, TSC; base 0:
/// no APIC).
static LAPIC_START: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// The PVH command line (empty if none).
fn cmdline() -> &'static [u8] {
    let (at, len) = (
        CMDLINE[0].load(Ordering::Relaxed),
        CMDLINE[1].load(Ordering::Relaxed),
    );
    if at == 0 {
        return &[];
    }
    // SAFETY: `at..at + len` is the command line `pvh::cmdline` found at entry: RAM below
    // 4 GiB (identity-mapped) that the stack keeps off and nothing writes.
    unsafe { core::slice::from_raw_parts(at as usize as *const u8, len as usize) }
}

/// The first PVH module, if the VMM loaded one.
fn first_module() -> Option<Module> {
    let (paddr, size) = (
        MODULE[0].load(Ordering::Relaxed),
        MODULE[1].load(Ordering::Relaxed),
    );
    (paddr != 0).then_some(Module { paddr, size })
}

/// Rust entry point, called by the boot trampoline with the PVH `hvm_start_info` address, on
/// the small early stack: checks the start info and moves to the big stack.
#[no_mangle]
pub extern "C" fn imds_boot_main(start_info: u32) -> ! {
    let mut log = Console::init_com1();
    interrupts::init(exit_code::CPU_EXCEPTION);
    // The idle timer counts from here; [`idle`] measures it against the TSC over the boot.
    if let Some(start) = Idle::start() {
        LAPIC_START[0].store(start.base, Ordering::Relaxed);
        LAPIC_START[1].store(start.tsc, Ordering::Relaxed);
    }
    if !boot::pvh_magic_ok(start_info) {
        log.put("imds-agent: fatal: not started through PVH (start info at ")
            .hex(start_info.into())
            .put("); boot with qemu -kernel")
            .end();
        exit(exit_code::BAD_BOOT);
    }
    extern "C" {
        static __image_end: u8;
    }
    // What else the VMM left in low RAM stays out of the stack (Firecracker's command line is
    // at 0x20000, in the range below 1 MiB the stack prefers).
    let info = pvh::start_info(start_info).unwrap_or_default();
    let cmdline = pvh::cmdline(&info);
    CMDLINE[0].store(cmdline.as_ptr() as u64, Ordering::Relaxed);
    CMDLINE[1].store(cmdline.len() as u64, Ordering::Relaxed);
    let module = pvh::first_module(&info).and_then(|m| m.range());
    if let Some((start, end)) = module {
        MODULE[0].store(start, Ordering::Relaxed);
        MODULE[1].store(end - start, Ordering::Relaxed);
    }
    let keep = [
        (
            info.cmdline_paddr,
            info.cmdline_paddr + cmdline.len() as u64 + 1,
        ),
        (
            info.modlist_paddr,
            info.modlist_paddr + imds_hal::pvh::MODULE_LEN as u64,
        ),
        module.unwrap_or((0, 0)),
    ];
    match boot::big_stack(start_info, core::ptr::addr_of!(__image_end) as u64, &keep) {
        Some(stack) => boot::run_on_big_stack(stack, on_big_stack, start_info),
        None => {
            log.put("imds-agent: fatal: the memory map has no RAM for a ")
                .dec(boot::BIG_STACK_MIN / 1024)
                .put(" KiB stack (give the guest more memory)")
                .end();
            exit(exit_code::BAD_BOOT);
        }
    }
}

extern "C" fn on_big_stack(start_info: u32) -> ! {
    crate::unikernel::main(start_info)
}

/// The console (COM1), once [`imds_boot_main`] has set it up.
pub fn console() -> Console {
    Console::com1()
}

/// The stack the agent runs on, `(bottom, top)`.
pub fn stack() -> (u64, u64) {
    boot::stack()
}

/// The current stack pointer and the top of its stack (the panic line's walk).
pub fn stack_walk_bounds() -> (u64, u64) {
    boot::stack_walk_bounds()
}

/// The machine's entropy source: RDRAND, else (image feature `virtio-rng`) the one
/// virtio-rng device [`entropy`] installed (kept by `imds_hal::virtio_rng`). Any number of
/// handles (the broker's tasks take one each).
pub struct MachineEntropy(Rdrand);

impl MachineEntropy {
    /// A handle on the machine's source.
    pub fn new() -> MachineEntropy {
        MachineEntropy(Rdrand::new())
    }
}

impl Entropy for MachineEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        #[cfg(feature = "virtio-rng")]
        if !self.0.available() {
            return imds_hal::virtio_rng::SharedVirtioRng.fill(buf);
        }
        self.0.fill(buf)
    }
}

/// The entropy source (RDRAND, else virtio-rng with the image feature `virtio-rng`), or stop
/// the machine saying there is none.
pub fn entropy(log: &mut Console) -> MachineEntropy {
    let mut entropy = MachineEntropy::new();
    #[cfg(feature = "virtio-rng")]
    if !entropy.0.available() {
        if let Some(rng) = imds_hal::x86_64::nic::probe_rng(cmdline()) {
            log.put("imds-agent: entropy: virtio-rng (no RDRAND)").end();
            imds_hal::virtio_rng::install(rng);
        }
    }
    let mut probe = [0u8; 8];
    match entropy.fill(&mut probe) {
        Ok(()) => entropy,
        Err(EntropyError::Unavailable) => {
            log.put(if cfg!(feature = "virtio-rng") {
                "imds-agent: fatal: no secure entropy source (RDRAND, virtio-rng); refusing to start"
            } else {
                "imds-agent: fatal: no secure entropy source (RDRAND); refusing to start"
            })
            .end();
            exit(exit_code::NO_ENTROPY);
        }
        Err(EntropyError::Failed) => {
            log.put("imds-agent: fatal: the entropy source failed; refusing to start")
                .end();
            exit(exit_code::NO_ENTROPY);
        }
    }
}

/// Start the clock, early at boot: monotonic time counts from here, and under TCG the PIT
/// measures the TSC while the boot goes on (see [`ClockStart::finish`]). Without a wall
/// clock, stop the machine now (through [`clock`]), before the config is read.
pub fn clock_start(log: &mut Console) -> ClockStart {
    let start = MachineClock::start();
    if start.wall_source() != WallSource::None {
        return start;
    }
    clock(start, log);
    exit(exit_code::NO_WALL_CLOCK) // not reached: `clock` stops a machine without wall clock
}

/// The clock [`clock_start`] started, announced: the TSC (its frequency from CPUID
/// `0x4000_0010`, kvmclock or the PIT) and the wall time (CMOS RTC, else kvmclock). Without a
/// wall clock, stop the machine: a token with a wrong time is worse than none.
pub fn clock(start: ClockStart, log: &mut Console) -> MachineClock {
    let clock = start.finish();
    log.put("imds-agent: clock: TSC ")
        .dec(clock.tsc_hz() / 1_000_000)
        .put(" MHz (")
        .put(match clock.calibration() {
            Calibration::Cpuid => "CPUID 0x40000010",
            Calibration::Kvmclock => "kvmclock",
            Calibration::Pit => "PIT-calibrated",
            Calibration::Fallback => "PIT unavailable, approximate",
        })
        .put("), wall ");
    match clock.wall_source() {
        WallSource::None => {
            log.put("none").end();
            log.put("imds-agent: fatal: no wall clock (no CMOS RTC, no kvmclock); refusing to mint tokens with a wrong time")
                .end();
            exit(exit_code::NO_WALL_CLOCK);
        }
        source => {
            log.dec(clock.unix_time_s())
                .put(" s since the epoch (")
                .put(if source == WallSource::Rtc {
                    "CMOS RTC"
                } else {
                    "kvmclock"
                })
                .put(")")
                .end();
        }
    }
    clock
}

/// The clock [`clock_start`] started, without measuring the TSC (no PIT window: see
/// [`ClockStart::finish_uncalibrated`]), for the network floor image only ([`crate::net_floor`]).
#[cfg(feature = "net-floor")]
pub fn clock_uncalibrated(start: ClockStart) -> MachineClock {
    start.finish_uncalibrated()
}

/// The configuration document, into `buf`: fw_cfg file [`imds_hal::fw_cfg::CONFIG_FILE`],
/// else the first PVH module (`-initrd`, Firecracker's `initrd_path`, Cloud Hypervisor's
/// `--initramfs`); the console says which. Or stop the machine saying why.
pub fn config<'a>(buf: &'a mut [u8], log: &mut Console) -> &'a [u8] {
    let file = imds_hal::fw_cfg::CONFIG_FILE;
    let (read, module) = match FwCfgConfig.read_config(buf).map(|doc| doc.len()) {
        Ok(len) => (Ok(&buf[..len]), false),
        Err(ConfigSourceError::Missing) => match first_module() {
            Some(m) => (ModuleConfig(m).read_config(buf), true),
            None => {
                log.put("imds-agent: fatal: no configuration: pass it with -fw_cfg name=")
                    .put(file)
                    .put(",file=<config.json> or as the initrd (-initrd <config.json>)")
                    .end();
                exit(exit_code::CONFIG_MISSING);
            }
        },
        Err(e) => (Err(e), false),
    };
    match read {
        Ok(doc) => {
            log.put("imds-agent: config: from ");
            if module {
                log.put("the PVH module (initrd), ")
                    .dec(doc.len() as u64)
                    .put(" bytes");
            } else {
                log.put("fw_cfg ").put(file);
            }
            log.end();
            doc
        }
        Err(e) => {
            log.put("imds-agent: fatal: ");
            if module {
                log.put("the PVH module (initrd)");
            } else {
                log.put("fw_cfg ").put(file);
            }
            log.put(": ");
            e.describe(log);
            log.end();
            exit(exit_code::CONFIG_MISSING);
        }
    }
}

/// The NIC (PCI, the command line's `virtio_mmio.device=`, microvm's slots); the console
/// says where it was found.
pub fn nic() -> Result<VirtioNet, NicError> {
    let (nic, found) = imds_hal::x86_64::nic::probe(cmdline())?;
    let mut log = console();
    log.put("imds-agent: nic: ");
    match found {
        Found::Pci { high_bar: None } => log.put("PCI"),
        Found::Pci {
            high_bar: Some(bar),
        } => log
            .put("PCI, BAR at ")
            .hex(bar)
            .put(" (above 4 GiB, mapped)"),
        Found::Cmdline(at) => log
            .put("virtio-mmio at ")
            .hex(at)
            .put(" from the kernel command line"),
        Found::MicrovmSlot(at) => log.put("virtio-mmio at ").hex(at).put(" (microvm slot)"),
    };
    log.end();
    Ok(nic)
}

/// The idle timer (LAPIC), if the machine has a usable one: measured against the TSC over
/// the boot so far (it started counting in [`imds_boot_main`]).
pub fn idle(clock: &MachineClock) -> Option<Idle> {
    let base = LAPIC_START[0].load(Ordering::Relaxed);
    let tsc = LAPIC_START[1].load(Ordering::Relaxed);
    if base == 0 {
        return None;
    }
    Idle::init(LapicStart { base, tsc }, clock.tsc_hz())
}

/// Sleep until the idle timer fires after `us` microseconds (or an earlier interrupt).
pub fn nap(idle: &Idle, us: u64) {
    idle.halt_us(us)
}

/// Test hook: the content of fw_cfg file `name`, if any (`Err(Missing)` when there is none).
pub fn test_file<'a>(name: &str, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
    fw_cfg::read_file(name, buf)
}

/// Raise a CPU exception on purpose (invalid opcode), for the crash test.
pub fn raise_cpu_exception() {
    // SAFETY: `ud2` raises #UD, which the IDT installed at entry reports and exits on; nothing
    // else is affected.
    unsafe { core::arch::asm!("ud2", options(nomem, nostack)) };
}
