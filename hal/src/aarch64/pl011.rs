//! The PL011 UART (QEMU `virt`: `arm,pl011` at `0x0900_0000`): the console of the image.
//!
//! Polled output only; input is never read. QEMU needs no set-up of the UART (baud rate and
//! line control are cosmetic there), so none is done.

use core::sync::atomic::{AtomicU64, Ordering};

/// Where QEMU `virt` puts the first PL011; used until the device tree says otherwise.
pub const DEFAULT_BASE: u64 = 0x0900_0000;
/// Data register.
const DR: u64 = 0x00;
/// Flag register.
const FR: u64 = 0x18;
/// Flag register: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;
/// Upper bound on polls of the flag register before a byte is dropped (a wedged UART must not
/// hang the agent).
const MAX_SPINS: u32 = 100_000;

static BASE: AtomicU64 = AtomicU64::new(DEFAULT_BASE);

/// A handle on the console UART. Zero-sized: every handle writes to the same UART, so a panic
/// or exception handler can make its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pl011;

impl Pl011 {
    /// Use the UART at `base` (from the device tree) from now on.
    ///
    /// # Safety
    /// `base` must be a PL011's register window, identity-mapped as device memory for the rest
    /// of the run.
    pub unsafe fn set_base(base: u64) {
        BASE.store(base, Ordering::Relaxed);
    }

    /// A handle on the console.
    pub const fn console() -> Pl011 {
        Pl011
    }

    /// Send one byte, waiting (bounded) for room in the transmit FIFO.
    pub fn write_byte(&mut self, byte: u8) {
        let base = BASE.load(Ordering::Relaxed);
        let mut spins = 0;
        // SAFETY: `base` is the PL011 (QEMU `virt`'s default or the one the device tree names,
        // see `set_base`), mapped as device memory; reading its flag register has no side
        // effect.
        while unsafe { core::ptr::read_volatile((base + FR) as *const u32) } & FR_TXFF != 0
            && spins < MAX_SPINS
        {
            spins += 1;
            core::hint::spin_loop();
        }
        // SAFETY: as above; writing the data register sends one byte, nothing else.
        unsafe { core::ptr::write_volatile((base + DR) as *mut u32, u32::from(byte)) };
    }
}

impl core::fmt::Write for Pl011 {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            self.write_byte(b);
        }
        Ok(())
    }
}
