//! Leaving the machine: Arm semihosting `SYS_EXIT` with a status when QEMU runs with
//! `-semihosting-config enable=on`, else PSCI `SYSTEM_OFF` (the device tree's `/psci` conduit),
//! else a `wfi` loop.
//!
//! Status encoding: guest exit code `n` leaves QEMU with status `2n + 1`, as `isa-debug-exit`
//! does on x86, so one mapping (xtask's `guest_exit_code`) serves both architectures.
//!
//! Without semihosting, `hlt #0xF000` is an undefined instruction: the exception vector sees
//! [`trying_semihosting`] and powers off through PSCI instead of reporting it.

use core::sync::atomic::{AtomicBool, Ordering};

use super::dt::{self, PsciConduit};

/// Semihosting operation `SYS_EXIT`.
const SYS_EXIT: u64 = 0x18;
/// `ADP_Stopped_ApplicationExit`: the reason that carries an exit status.
const ADP_STOPPED_APPLICATION_EXIT: u64 = 0x2_0026;
/// PSCI `SYSTEM_OFF` (SMC32/HVC32 function id).
const PSCI_SYSTEM_OFF: u64 = 0x8400_0008;

static TRYING_SEMIHOSTING: AtomicBool = AtomicBool::new(false);

/// Whether [`exit`] is in its semihosting call (an undefined-instruction exception there
/// means QEMU runs without semihosting).
pub fn trying_semihosting() -> bool {
    TRYING_SEMIHOSTING.load(Ordering::Relaxed)
}

/// Leave with guest exit code `code` (QEMU status `2 * code + 1` under semihosting); power off
/// through PSCI when there is no semihosting (status 0), halt forever when that fails too.
pub fn exit(code: u8) -> ! {
    if !TRYING_SEMIHOSTING.swap(true, Ordering::Relaxed) {
        let block: [u64; 2] = [ADP_STOPPED_APPLICATION_EXIT, 2 * u64::from(code) + 1];
        // SAFETY: the semihosting call reads the two-word block (alive on this stack) and ends
        // the machine; without semihosting the instruction is undefined and the exception
        // vector calls `power_off` (it checks `trying_semihosting`), so this never returns.
        unsafe {
            core::arch::asm!(
                "hlt #0xf000",
                in("x0") SYS_EXIT,
                in("x1") block.as_ptr(),
                options(nostack, readonly)
            )
        };
    }
    power_off()
}

/// PSCI `SYSTEM_OFF` by the device tree's conduit; halt forever if it returns.
pub fn power_off() -> ! {
    match dt::psci() {
        // SAFETY: PSCI SYSTEM_OFF through the conduit the device tree names; it does not
        // return (if it does, x0 holds an error and the loop below halts).
        Some(PsciConduit::Hvc) => unsafe {
            core::arch::asm!("hvc #0", inout("x0") PSCI_SYSTEM_OFF => _, options(nomem, nostack))
        },
        // SAFETY: as above.
        Some(PsciConduit::Smc) => unsafe {
            core::arch::asm!("smc #0", inout("x0") PSCI_SYSTEM_OFF => _, options(nomem, nostack))
        },
        None => {}
    }
    halt_forever()
}

/// Stop the CPU for good (interrupts are masked, so `wfi` only wakes spuriously).
pub fn halt_forever() -> ! {
    loop {
        // SAFETY: `wfi` only waits; nothing is left to run.
        unsafe { core::arch::asm!("wfi", options(nomem, nostack)) };
    }
}
