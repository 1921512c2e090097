//! Where the NIC is on an Arm machine, from the device tree: a `virtio,mmio` node holding a
//! network device, else a virtio-net function behind a `pci-host-ecam-generic` host bridge,
//! whose BARs are assigned from the bridge's 32-bit memory window (nothing else assigns them
//! under a `-kernel` boot). The device itself is driven by the arch-neutral
//! [`crate::virtio_net`].

use core::ptr::NonNull;

use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};
use virtio_drivers::transport::pci::bus::{Cam, MmioCam, PciRoot};
use virtio_drivers::transport::{DeviceType, Transport};

use super::dt;
use crate::pci::BarAllocator;
use crate::virtio_net::{mmio_magic_at, pci_net, NicError, VirtioNet};

/// virtio-mmio register: the device ID (0: no device in this slot).
const MMIO_DEVICE_ID: u64 = 0x008;

/// The first virtio-mmio transport of the device tree whose device is of type `kind`. Only
/// that one is touched beyond its ID registers.
pub fn virtio_mmio_find(kind: DeviceType) -> Option<MmioTransport<'static>> {
    let fdt = dt::fdt()?;
    let found = fdt
        .all_nodes()
        .filter(|n| dt::is_compatible(*n, "virtio,mmio"))
        .filter_map(dt::reg)
        .find_map(|(addr, size)| {
            // SAFETY: the device tree names `addr` a virtio-mmio window, which the boot code
            // maps as device memory; reading its magic and device ID has no side effect.
            let id = unsafe { core::ptr::read_volatile((addr + MMIO_DEVICE_ID) as *const u32) };
            // SAFETY: as above.
            if id != u32::from(kind as u8) || !unsafe { mmio_magic_at(addr) } {
                // Not the kind sought: no transport is made for it, as dropping one resets the
                // device (another backend may be using it, e.g. the virtio-rng).
                return None;
            }
            let header = NonNull::new(addr as *mut VirtIOHeader)?;
            // SAFETY: as above, and the magic says it is a virtio-mmio transport of the kind
            // sought; the returned transport is its only user.
            let transport = unsafe { MmioTransport::new(header, size as usize) }.ok()?;
            (transport.device_type() == kind).then_some(transport)
        });
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
