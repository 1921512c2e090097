//! Entropy: `RNDR` (FEAT_RNG, `ID_AA64ISAR0_EL1.RNDR` ≥ 1; QEMU TCG's `-cpu max` has it), else
//! a virtio-rng device (`-device virtio-rng-device`, found in the device tree's `virtio,mmio`
//! nodes). Without either the image refuses to start (the caller says so).

use core::sync::atomic::{AtomicU8, Ordering};

use virtio_drivers::transport::DeviceType;

use super::read_sysreg;
use crate::virtio_rng::{self, SharedVirtioRng, VirtioRng};
use crate::{Entropy, EntropyError};

/// Draws per 8 bytes before `RNDR` is given up on (it fails, rarely, when the source is
/// momentarily exhausted).
pub const RETRIES: u32 = 10;

/// Whether the CPU implements `RNDR`.
pub fn rndr_supported() -> bool {
    (read_sysreg!("id_aa64isar0_el1") >> 60) & 0xF >= 1
}

fn rndr() -> Result<u64, EntropyError> {
    for _ in 0..RETRIES {
        let value: u64;
        let ok: u64;
        // SAFETY: only called when `ID_AA64ISAR0_EL1.RNDR` says the register exists
        // (`rndr_supported`); reading it writes the named registers and NZCV, nothing else.
        unsafe {
            core::arch::asm!(
                "mrs {v}, s3_3_c2_c4_0",
                "cset {ok}, ne",
                v = out(reg) value,
                ok = out(reg) ok,
                options(nomem, nostack),
            )
        };
        if ok != 0 {
            return Ok(value);
        }
    }
    Err(EntropyError::Failed)
}

/// Which source [`MachineRng::probe`] found.
static SOURCE: AtomicU8 = AtomicU8::new(SOURCE_NONE);
const SOURCE_NONE: u8 = 0;
const SOURCE_RNDR: u8 = 1;
const SOURCE_VIRTIO: u8 = 2;

/// A handle on the machine's entropy source (found once by [`MachineRng::probe`]); handles are
/// free to make ([`MachineRng::new`]: the broker tasks have one each) and all draw from the
/// same source (the virtio-rng device is the one [`virtio_rng::install`] keeps).
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineRng;

impl MachineRng {
    /// Find the source — `RNDR` if the CPU has it, else the first virtio-rng device of the
    /// device tree — and return a handle; `None` without either. Once per boot.
    pub fn probe() -> Option<MachineRng> {
        if rndr_supported() {
            SOURCE.store(SOURCE_RNDR, Ordering::Relaxed);
            return Some(MachineRng);
        }
        let transport = super::nic::virtio_mmio_find(DeviceType::EntropySource)?;
        if !virtio_rng::install(VirtioRng::new(transport.into())?) {
            return None;
        }
        SOURCE.store(SOURCE_VIRTIO, Ordering::Relaxed);
        Some(MachineRng)
    }

    /// A handle on the source [`MachineRng::probe`] found (fills fail with
    /// [`EntropyError::Unavailable`] before that).
    pub const fn new() -> MachineRng {
        MachineRng
    }

    /// What the source is, for the console.
    pub fn name(&self) -> &'static str {
        match SOURCE.load(Ordering::Relaxed) {
            SOURCE_RNDR => "RNDR",
            SOURCE_VIRTIO => "virtio-rng",
            _ => "none",
        }
    }
}

impl Entropy for MachineRng {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        match SOURCE.load(Ordering::Relaxed) {
            SOURCE_RNDR => {
                for chunk in buf.chunks_mut(8) {
                    let bytes = rndr()?.to_le_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
                Ok(())
            }
            SOURCE_VIRTIO => SharedVirtioRng.fill(buf),
            _ => Err(EntropyError::Unavailable),
        }
    }
}
