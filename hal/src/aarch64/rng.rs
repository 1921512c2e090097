//! Entropy: `RNDR` (FEAT_RNG, `ID_AA64ISAR0_EL1.RNDR` ≥ 1; QEMU TCG's `-cpu max` has it), else
//! a virtio-rng device (`-device virtio-rng-device`, found in the device tree's `virtio,mmio`
//! nodes). Without either the image refuses to start (the caller says so).

use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::DeviceType;

use super::read_sysreg;
use crate::virtio_net::DmaHal;
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

/// The machine's entropy source.
pub enum MachineRng {
    /// The CPU's `RNDR`.
    Rndr,
    /// A virtio-rng device.
    Virtio(VirtIORng<DmaHal, MmioTransport<'static>>),
}

impl MachineRng {
    /// `RNDR` if the CPU has it, else the first virtio-rng device of the device tree, else
    /// `None`.
    pub fn probe() -> Option<MachineRng> {
        if rndr_supported() {
            return Some(MachineRng::Rndr);
        }
        let transport = super::nic::virtio_mmio_find(DeviceType::EntropySource)?;
        VirtIORng::new(transport).ok().map(MachineRng::Virtio)
    }

    /// What the source is, for the console.
    pub fn name(&self) -> &'static str {
        match self {
            MachineRng::Rndr => "RNDR",
            MachineRng::Virtio(_) => "virtio-rng",
        }
    }
}

impl core::fmt::Debug for MachineRng {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

impl Entropy for MachineRng {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        match self {
            MachineRng::Rndr => {
                for chunk in buf.chunks_mut(8) {
                    let bytes = rndr()?.to_le_bytes();
                    chunk.copy_from_slice(&bytes[..chunk.len()]);
                }
                Ok(())
            }
            MachineRng::Virtio(rng) => {
                let mut at = 0;
                let mut empty = 0;
                while at < buf.len() {
                    let n = rng
                        .request_entropy(&mut buf[at..])
                        .map_err(|_| EntropyError::Failed)?;
                    if n == 0 {
                        empty += 1;
                        if empty > RETRIES {
                            return Err(EntropyError::Failed);
                        }
                    }
                    at += n;
                }
                Ok(())
            }
        }
    }
}
