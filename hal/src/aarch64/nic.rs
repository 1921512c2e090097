//! Where the NIC is on an Arm machine, from the device tree: a `virtio,mmio` node holding a
//! network device, else a virtio-net function behind a `pci-host-ecam-generic` host bridge,
//! whose BARs are assigned from the bridge's 32-bit memory window (nothing else assigns them
//! under a `-kernel` boot). The device itself is driven by the arch-neutral
//! [`crate::virtio_net`].

use virtio_drivers::transport::mmio::MmioTransport;
use virtio_drivers::transport::pci::bus::{Cam, MmioCam, PciRoot};
use virtio_drivers::transport::DeviceType;

use super::dt;
use crate::pci::BarAllocator;
use crate::virtio_net::{mmio_device_at, pci_net, NicError, VirtioNet};

/// The first virtio-mmio transport of the device tree whose device is of type `kind`. Only
/// that one is touched beyond its ID registers.
pub fn virtio_mmio_find(kind: DeviceType) -> Option<MmioTransport<'static>> {
    let fdt = dt::fdt()?;
    let found = fdt
        .nodes()
        .filter(|n| dt::is_compatible(*n, "virtio,mmio"))
        .filter_map(dt::reg)
        // SAFETY: the device tree names `addr` a virtio-mmio window, which the boot code maps
        // as device memory; reading its ID registers has no side effect, and the transport
        // returned (of the kind sought) is its only user.
        .find_map(|(addr, size)| unsafe { mmio_device_at(addr, size as usize, kind) });
    found
}

/// Find the first virtio-net device — a `virtio,mmio` node, else on bus 0 of the ECAM host
/// bridge — and bring it up with all receive buffers posted.
pub fn probe() -> Result<VirtioNet, NicError> {
    const LOOKED: &str = "device tree virtio,mmio nodes, pci-host-ecam-generic bus 0";
    if let Some(transport) = virtio_mmio_find(DeviceType::Network) {
        return VirtioNet::new(transport.into());
    }
    let host = dt::ecam_host().ok_or(NicError::NotFound(LOOKED))?;
    let mmio = host.mmio32.ok_or(NicError::NotFound(LOOKED))?;
    // SAFETY: the device tree names `host.ecam` the host bridge's configuration space, which
    // the boot code maps as device memory; only bus 0 (its first MiB) is accessed, and nothing
    // else uses it.
    let cam = unsafe { MmioCam::new(host.ecam.0 as *mut u8, Cam::Ecam) };
    let mut root = PciRoot::new(cam);
    let mut bars = BarAllocator::new(mmio, host.io.unwrap_or((0, 0)));
    let transport = pci_net(&mut root, &mut bars)?.ok_or(NicError::NotFound(LOOKED))?;
    VirtioNet::new(transport.into())
}
