//! x86 port I/O. The only primitive every other backend in this module is built on.
//!
//! These are `unsafe`: writing to an arbitrary I/O port can reprogram any device on the machine.
//! Callers name the device they talk to in their `// SAFETY:` comments.

use core::arch::asm;

/// Read a byte from an I/O port.
///
/// # Safety
/// `port` must belong to a device whose read side effects the caller accounts for.
#[inline]
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` only touches the named port and `al`; the caller vouches for the port.
    unsafe {
        asm!("in al, dx", out("al") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Write a byte to an I/O port.
///
/// # Safety
/// `port` must belong to a device whose write side effects the caller accounts for.
#[inline]
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` only touches the named port; the caller vouches for the port.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Write a 16-bit word to an I/O port.
///
/// # Safety
/// As [`outb`].
#[inline]
pub unsafe fn outw(port: u16, value: u16) {
    // SAFETY: `out` only touches the named port; the caller vouches for the port.
    unsafe {
        asm!("out dx, ax", in("dx") port, in("ax") value, options(nomem, nostack, preserves_flags))
    };
}

/// Read a 32-bit word from an I/O port.
///
/// # Safety
/// As [`inb`].
#[inline]
pub unsafe fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: `in` only touches the named port and `eax`; the caller vouches for the port.
    unsafe {
        asm!("in eax, dx", out("eax") value, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Write a 32-bit word to an I/O port.
///
/// # Safety
/// As [`outb`].
#[inline]
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: `out` only touches the named port; the caller vouches for the port.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}
