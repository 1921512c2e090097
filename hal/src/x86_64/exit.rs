//! QEMU's `isa-debug-exit` device (`-device isa-debug-exit`, I/O port `0xF4`, 1 byte wide).
//!
//! Writing `code` makes QEMU exit with status `(code << 1) | 1`, so a guest code `n` shows up as
//! host exit status `2n + 1`. Without the device the write is ignored and [`exit`] halts.

use super::port::outb;

const DEBUG_EXIT_PORT: u16 = 0xF4;

/// Leave QEMU with guest exit code `code` (host status `2 * code + 1`); halt forever when the
/// device is absent.
pub fn exit(code: u8) -> ! {
    // SAFETY: port 0xF4 is isa-debug-exit under the QEMU profiles of this project; on a machine
    // without it the write goes nowhere (unclaimed ports read 0xFF and ignore writes).
    unsafe { outb(DEBUG_EXIT_PORT, code) };
    halt_forever()
}

/// Stop the CPU for good (interrupts are off, so `hlt` never returns in practice).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `cli; hlt` only stops this (single) CPU; nothing is left to run.
        unsafe { core::arch::asm!("cli", "hlt", options(nomem, nostack)) };
    }
}
