//! Entropy from a virtio-rng device (`virtio-drivers`' `VirtIORng`), for machines whose CPU
//! hides RDRAND (Firecracker's `entropy` device, Cloud Hypervisor's always-on virtio-rng, QEMU
//! `-device virtio-rng-*`). Arch-neutral: the machine backend finds the transport.

use virtio_drivers::device::rng::VirtIORng;
use virtio_drivers::transport::SomeTransport;

use crate::virtio_net::DmaHal;
use crate::{Entropy, EntropyError};

/// A virtio-rng device, as an [`Entropy`] source.
pub struct VirtioRng {
    dev: VirtIORng<DmaHal, SomeTransport<'static>>,
}

impl VirtioRng {
    /// Initialise the device over `transport`; `None` if it refuses.
    pub fn new(transport: SomeTransport<'static>) -> Option<VirtioRng> {
        VirtIORng::new(transport).ok().map(|dev| VirtioRng { dev })
    }
}

impl Entropy for VirtioRng {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        let mut done = 0;
        // A device that keeps answering with nothing has failed.
        for _ in 0..64 {
            if done == buf.len() {
                return Ok(());
            }
            let n = self
                .dev
                .request_entropy(&mut buf[done..])
                .map_err(|_| EntropyError::Failed)?;
            done += n.min(buf.len() - done);
        }
        if done == buf.len() {
            Ok(())
        } else {
            Err(EntropyError::Failed)
        }
    }
}
