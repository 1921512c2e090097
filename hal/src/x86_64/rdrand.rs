//! RDRAND: the CPU's DRBG, the unikernel's only secure entropy source.
//!
//! Presence is CPUID.1:ECX bit 30 (QEMU exposes it with `-cpu max` under TCG, not with
//! `qemu64`). A failing draw (CF=0) is retried [`RETRIES`] times, as Intel's DRNG guide
//! recommends, before [`EntropyError::Failed`].

use crate::{Entropy, EntropyError};

/// Draws per 8 bytes before giving up.
pub const RETRIES: u32 = 10;

/// Whether the CPU has RDRAND.
pub fn rdrand_supported() -> bool {
    // CPUID leaf 1 exists on every x86_64 CPU.
    let leaf1 = core::arch::x86_64::__cpuid(1);
    leaf1.ecx & (1 << 30) != 0
}

/// The RDRAND entropy source; [`Entropy::fill`] fails with [`EntropyError::Unavailable`] when
/// the CPU lacks the instruction.
#[derive(Debug, Clone, Copy)]
pub struct Rdrand {
    available: bool,
}

impl Rdrand {
    /// Probe the CPU.
    pub fn new() -> Rdrand {
        Rdrand {
            available: rdrand_supported(),
        }
    }

    /// Whether fills can succeed.
    pub fn available(&self) -> bool {
        self.available
    }

    fn next_u64(&self) -> Result<u64, EntropyError> {
        for _ in 0..RETRIES {
            let value: u64;
            let ok: u8;
            // SAFETY: only reached when CPUID reports RDRAND (checked in `fill`); the
            // instruction writes the named register and the carry flag, nothing else.
            unsafe {
                core::arch::asm!(
                    "rdrand {v}",
                    "setc {ok}",
                    v = out(reg) value,
                    ok = out(reg_byte) ok,
                    options(nomem, nostack),
                )
            };
            if ok != 0 {
                return Ok(value);
            }
        }
        Err(EntropyError::Failed)
    }
}

impl Default for Rdrand {
    fn default() -> Self {
        Self::new()
    }
}

impl Entropy for Rdrand {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        if !self.available {
            return Err(EntropyError::Unavailable);
        }
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64()?.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        Ok(())
    }
}
