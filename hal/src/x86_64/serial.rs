//! COM1 (16550 UART at I/O port `0x3F8`): the console of the unikernel.
//!
//! Polled output only (interrupts stay off); input is never read. Under QEMU the line is
//! `-serial stdio` (or a chardev), so the speed setting is cosmetic but kept correct.

use super::port::{inb, outb};

const COM1: u16 = 0x3F8;
const DATA: u16 = COM1;
const INT_ENABLE: u16 = COM1 + 1;
const FIFO_CTRL: u16 = COM1 + 2;
const LINE_CTRL: u16 = COM1 + 3;
const MODEM_CTRL: u16 = COM1 + 4;
const LINE_STATUS: u16 = COM1 + 5;
/// Line status: transmit holding register empty.
const LSR_THR_EMPTY: u8 = 0x20;
/// Upper bound on polls of the line status before a byte is dropped (a wedged UART must not
/// hang the agent).
const MAX_SPINS: u32 = 100_000;

/// A handle on COM1. Zero-sized: every handle writes to the same port, so a panic handler can
/// make its own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Serial;

impl Serial {
    /// Program COM1 for 115200 8N1 with FIFOs, interrupts off, and return a handle.
    pub fn init_com1() -> Serial {
        // SAFETY: ports 0x3F8..=0x3FD are the COM1 UART; this is the standard 16550 init
        // sequence and touches nothing else.
        unsafe {
            outb(INT_ENABLE, 0x00); // no interrupts
            outb(LINE_CTRL, 0x80); // DLAB on
            outb(DATA, 0x01); // divisor low: 115200 baud
            outb(INT_ENABLE, 0x00); // divisor high
            outb(LINE_CTRL, 0x03); // 8N1, DLAB off
            outb(FIFO_CTRL, 0xC7); // FIFO on, cleared, 14-byte threshold
            outb(MODEM_CTRL, 0x03); // DTR + RTS
        }
        Serial
    }

    /// A handle on an already initialised COM1 (e.g. in the panic handler).
    pub const fn com1() -> Serial {
        Serial
    }

    /// Send one byte, waiting (bounded) for the transmitter.
    pub fn write_byte(&mut self, byte: u8) {
        let mut spins = 0;
        // SAFETY: reading the COM1 line status register has no side effects.
        while unsafe { inb(LINE_STATUS) } & LSR_THR_EMPTY == 0 && spins < MAX_SPINS {
            spins += 1;
            core::hint::spin_loop();
        }
        // SAFETY: writing the COM1 data register sends one byte, nothing else.
        unsafe { outb(DATA, byte) };
    }
}

impl core::fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for &b in s.as_bytes() {
            self.write_byte(b);
        }
        Ok(())
    }
}
