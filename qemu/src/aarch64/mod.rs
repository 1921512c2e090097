//! The aarch64 machine (QEMU `virt`; booted as a Linux arm64 Image with the device tree in
//! `x0`): what [`crate::unikernel`] asks of an architecture, from `imds_hal::aarch64`'s
//! backends. The same names as every architecture module: [`Console`], [`MachineClock`],
//! [`ClockStart`], [`MachineEntropy`], [`Idle`], [`BootInfo`] and the functions below.

pub mod boot;

use imds_hal::aarch64::fw_cfg::{self, ConfigOrigin};
use imds_hal::aarch64::{dt, exit as machine_exit};
use imds_hal::text::Text;
use imds_hal::virtio_net::{NicError, VirtioNet};
use imds_hal::{Clock, ConfigSourceError};

use core::sync::atomic::{AtomicU32, Ordering};

use crate::exit_code;

pub use imds_hal::aarch64::clock::GenericClock as MachineClock;
pub use imds_hal::aarch64::exit::exit;
pub use imds_hal::aarch64::idle::Idle;
pub use imds_hal::aarch64::pl011::Pl011 as Console;
pub use imds_hal::aarch64::rng::MachineRng as MachineEntropy;

/// What the boot code hands to [`crate::unikernel::main`]: the device tree's address.
pub type BootInfo = u64;

/// Rust entry point, called by the boot code with the device tree address (`x0` at entry),
/// on the image's stack with the MMU on: checks the device tree and finds the console.
#[no_mangle]
pub extern "C" fn imds_boot_main(dtb: u64) -> ! {
    let mut log = Console::console();
    // SAFETY: `dtb` is what the boot loader passed in `x0`; the device tree lies in RAM the
    // image never writes (QEMU puts it above the initrd, far beyond the image's `.bss`).
    if unsafe { dt::init(dtb) }.is_err() {
        log.put("imds-agent: fatal: no device tree at ")
            .hex(dtb)
            .put(" (x0); boot the Image with qemu -kernel")
            .end();
        exit(exit_code::BAD_BOOT);
    }
    if let Some((uart, _)) = dt::find_reg(&["arm,pl011"]) {
        // SAFETY: the device tree names a PL011 there; the first GiB is mapped as device
        // memory by the boot code.
        unsafe { Console::set_base(uart) };
    }
    crate::unikernel::main(dtb)
}

/// Exceptions taken so far (the report of one may fault in turn).
static NESTED: AtomicU32 = AtomicU32::new(0);

/// What an exception vector found: report it and stop the machine.
#[no_mangle]
extern "C" fn imds_exception(vector: u64, esr: u64, elr: u64, far: u64, sp: u64) -> ! {
    let class = esr >> 26;
    if class == 0 && machine_exit::trying_semihosting() {
        // `hlt #0xF000` without semihosting: leave through PSCI instead.
        machine_exit::power_off();
    }
    if NESTED.fetch_add(1, Ordering::Relaxed) >= 2 {
        // The report itself keeps faulting: stop without it.
        machine_exit::power_off();
    }
    let mut log = Console::console();
    log.put("imds-agent: fatal: CPU exception (")
        .put(match vector & 3 {
            0 => "synchronous",
            1 => "IRQ",
            2 => "FIQ",
            _ => "SError",
        })
        .put(", class ")
        .hex(class)
        .put(" ")
        .put(exception_class(class))
        .put(") at pc ")
        .hex(elr)
        .put(", esr ")
        .hex(esr)
        .put(", far ")
        .hex(far)
        .put(", sp ")
        .hex(sp)
        .end();
    exit(exit_code::CPU_EXCEPTION)
}

fn exception_class(class: u64) -> &'static str {
    match class {
        0x00 => "unknown reason (undefined instruction)",
        0x01 => "WFI/WFE trapped",
        0x07 => "FP/SIMD access trapped",
        0x0E => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "system register access trapped",
        0x20 | 0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 | 0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2F => "SError",
        0x3C => "BRK",
        _ => "other",
    }
}

/// The console (the device tree's PL011), once [`imds_boot_main`] has found it.
pub fn console() -> Console {
    Console::console()
}

/// The stack the agent runs on, `(bottom, top)`.
pub fn stack() -> (u64, u64) {
    boot::stack()
}

/// The current stack pointer and the top of its stack (the panic line's walk).
pub fn stack_walk_bounds() -> (u64, u64) {
    boot::stack_walk_bounds()
}

/// The entropy source (RNDR, else virtio-rng), or stop the machine saying there is none.
pub fn entropy(log: &mut Console) -> MachineEntropy {
    let mut probe = [0u8; 8];
    if let Some(mut entropy) = MachineEntropy::probe() {
        if imds_hal::Entropy::fill(&mut entropy, &mut probe).is_ok() {
            log.put("imds-agent: entropy: ").put(entropy.name()).end();
            return entropy;
        }
    }
    log.put("imds-agent: fatal: no secure entropy source (RNDR, virtio-rng); refusing to start")
        .end();
    exit(exit_code::NO_ENTROPY);
}

/// What [`clock_start`] hands to [`clock`]: the clock itself (the generic timer needs no
/// calibration; on x86 it is the TSC's PIT window, open while the boot goes on).
pub struct ClockStart(MachineClock);

/// The clock [`clock_start`] found.
pub fn clock(start: ClockStart, _log: &mut Console) -> MachineClock {
    start.0
}

/// The clock [`clock_start`] found (the generic timer needs no calibration), for the network
/// floor image ([`crate::net_floor`]) as on x86.
#[cfg(feature = "net-floor")]
pub fn clock_uncalibrated(start: ClockStart) -> MachineClock {
    start.0
}

/// The clock (generic timer; wall time from the PL031), announced at once; or stop the machine
/// when there is no wall time (tokens carry it).
pub fn clock_start(log: &mut Console) -> ClockStart {
    let rtc = dt::find_reg(&["arm,pl031"]).map(|(base, _)| base);
    // SAFETY: the device tree names a PL031 at `rtc`; the first GiB is mapped as device memory.
    match unsafe { MachineClock::init(rtc) } {
        Ok(clock) => {
            log.put("imds-agent: clock: generic timer ")
                .dec(clock.hz() / 1_000)
                .put(" kHz, wall ")
                .dec(clock.unix_time_s())
                .put(" s since the epoch (PL031)")
                .end();
            ClockStart(clock)
        }
        Err(e) => {
            log.put("imds-agent: fatal: ").put(e.as_str());
            match e {
                // As on x86: a token with a wrong clock is worse than none.
                imds_hal::aarch64::clock::ClockError::NoRtc => {
                    log.put("; refusing to mint tokens with a wrong time").end();
                    exit(exit_code::NO_WALL_CLOCK)
                }
                imds_hal::aarch64::clock::ClockError::NoCounterFrequency => {
                    log.end();
                    exit(exit_code::BAD_BOOT)
                }
            }
        }
    }
}

/// The configuration document, into `buf` (fw_cfg, else the initrd), the source announced;
/// or stop the machine saying why.
pub fn config<'a>(buf: &'a mut [u8], log: &mut Console) -> &'a [u8] {
    match fw_cfg::read_config(buf) {
        Ok((doc, origin)) => {
            log.put("imds-agent: config: from ");
            match origin {
                ConfigOrigin::FwCfg => log.put("fw_cfg ").put(imds_hal::fw_cfg::CONFIG_FILE),
                ConfigOrigin::Initrd(n) => log.put("the initrd, ").dec(n as u64).put(" bytes"),
            };
            log.end();
            doc
        }
        Err(ConfigSourceError::Missing) => {
            log.put("imds-agent: fatal: no configuration: pass it with -fw_cfg name=")
                .put(imds_hal::fw_cfg::CONFIG_FILE)
                .put(",file=<config.json> or -initrd <config.json>")
                .end();
            exit(exit_code::CONFIG_MISSING);
        }
        Err(e) => {
            log.put("imds-agent: fatal: configuration: ");
            e.describe(log);
            log.end();
            exit(exit_code::CONFIG_MISSING);
        }
    }
}

/// The NIC.
pub fn nic() -> Result<VirtioNet, NicError> {
    imds_hal::aarch64::nic::probe()
}

/// The idle wait (until a virtual-timer deadline), announced.
pub fn idle(clock: &MachineClock) -> Option<Idle> {
    let idle = Idle::init(clock.hz())?;
    console().put("imds-agent: idle: ").put(idle.method()).end();
    Some(idle)
}

/// Wait about `us` microseconds (or until an event).
pub fn nap(idle: &Idle, us: u64) {
    idle.nap_us(us)
}

/// Test hook: the content of fw_cfg file `name`, if any (`Err(Missing)` when there is none).
pub fn test_file<'a>(name: &str, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
    fw_cfg::read_file(name, buf)
}

/// Raise a CPU exception on purpose (undefined instruction), for the crash test.
pub fn raise_cpu_exception() {
    // SAFETY: `udf` raises an undefined-instruction exception, which the vectors installed at
    // entry report and exit on; nothing else is affected.
    unsafe { core::arch::asm!("udf #0", options(nomem, nostack)) };
}
