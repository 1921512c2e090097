//! Leaving the VM with a status the VMM can report, as far as each VMM allows — a ladder, each
//! step a no-op where its device is absent:
//!
//! 1. QEMU's `isa-debug-exit` (`-device isa-debug-exit`, I/O port `0xF4`): QEMU exits with
//!    status `(code << 1) | 1`, so a guest code `n` shows up as host status `2n + 1`;
//! 2. Cloud Hypervisor's ACPI shutdown device: `0x34` (`SLP_TYP` 5 | `SLP_EN`) to port `0x600`;
//!    the process exits with status 0. On QEMU the byte is harmless: `q35` (SeaBIOS or qboot)
//!    and `pc` have their PM block (`ich9-pm`, `piix4-pm`) at `0x600`, whose first register
//!    is `PM1_STS` (`acpi-evt`, write 1 to clear status bits: 0x34 clears bits 2, 4 and 5, no
//!    action follows); `microvm` has nothing there (its ACPI is a GED in MMIO), so the write
//!    goes nowhere. Checked under QEMU 7.2 TCG (`info mtree`;
//!    without `isa-debug-exit` the guest halts after the write on `q35` with SeaBIOS and
//!    qboot, `pc` and `microvm` with and without ACPI).
//! 3. Firecracker only (identified by its ACPI RSDP, OEM id `FIRECK`): the i8042 reset
//!    (`0xFE` to port `0x64`), which Firecracker turns into a clean exit (status 0), for code
//!    0; for a failure a triple fault, which Firecracker reports as an error (status 1). Never
//!    elsewhere: Cloud Hypervisor and QEMU without `-no-reboot` reboot on both.
//! 4. Halt forever.

use super::port::outb;

const DEBUG_EXIT_PORT: u16 = 0xF4;
const CH_SHUTDOWN_PORT: u16 = 0x600;
/// `SLP_TYP` = 5 (S5, soft off) << 2 | `SLP_EN` (1 << 5).
const CH_SHUTDOWN_S5: u8 = 0x34;
const I8042_COMMAND: u16 = 0x64;
const I8042_RESET_CPU: u8 = 0xFE;
/// Where the BIOS-area RSDP is searched (Firecracker puts it at 0xE0000).
const RSDP_AREA: (u64, u64) = (0xE_0000, 0x10_0000);

/// Whether this is Firecracker: an ACPI RSDP in the BIOS area with OEM id `FIRECK`.
pub fn is_firecracker() -> bool {
    let mut at = RSDP_AREA.0;
    while at < RSDP_AREA.1 {
        // SAFETY: the BIOS area below 1 MiB is identity-mapped; it is RAM or ROM (or reads
        // all ones when absent), and reading it has no side effect.
        let read = |off: u64| unsafe { core::ptr::read_volatile((at + off) as usize as *const u8) };
        if (0..8).all(|i| read(i) == b"RSD PTR "[i as usize]) {
            return (0..6).all(|i| read(9 + i) == b"FIRECK"[i as usize]);
        }
        at += 16;
    }
    false
}

/// Leave the VM with guest exit code `code` (QEMU: host status `2 * code + 1`; Cloud
/// Hypervisor: 0; Firecracker: 0 for code 0, else 1); halt forever when nothing takes it.
pub fn exit(code: u8) -> ! {
    // SAFETY: port 0xF4 is isa-debug-exit under the QEMU profiles of this project; on a machine
    // without it the write goes nowhere (unclaimed ports read 0xFF and ignore writes).
    unsafe { outb(DEBUG_EXIT_PORT, code) };
    // SAFETY: port 0x600 is Cloud Hypervisor's ACPI shutdown device; elsewhere it is harmless
    // (see the module's step 2).
    unsafe { outb(CH_SHUTDOWN_PORT, CH_SHUTDOWN_S5) };
    if is_firecracker() {
        if code == 0 {
            // SAFETY: Firecracker's i8042 turns the CPU reset command into a clean VM exit.
            unsafe { outb(I8042_COMMAND, I8042_RESET_CPU) };
        } else {
            triple_fault();
        }
    }
    halt_forever()
}

/// Stop the CPU for good (interrupts are off, so `hlt` never returns in practice).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops this (single) CPU; nothing is left to run.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}

/// Shut the vCPU down through a triple fault (an empty IDT, then an exception).
fn triple_fault() -> ! {
    let empty: [u16; 5] = [0; 5];
    // SAFETY: on purpose: with a zero-limit IDT, `int3` cannot be delivered (#GP, #DF, then
    // shutdown); the VMM stops the vCPU. Only reached on Firecracker, which reports it as an
    // error exit.
    unsafe {
        core::arch::asm!("lidt [{}]", "int3", in(reg) empty.as_ptr(), options(noreturn, nostack))
    }
}
