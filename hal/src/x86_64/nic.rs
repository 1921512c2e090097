//! Where the NIC is on an x86 machine: a virtio-net function on PCI bus 0 (`pc`, `q35`; BARs
//! assigned if the firmware did not), or else a virtio-mmio slot of QEMU `microvm`. The device
//! itself is driven by the arch-neutral [`crate::virtio_net`].

use virtio_drivers::transport::pci::bus::PciRoot;

use super::pci::{bar_allocator, PortCam};
use crate::virtio_net::{mmio_magic_at, mmio_net_at, pci_net, NicError, VirtioNet};

/// QEMU `microvm`'s virtio-mmio transports: 512-byte slots from this address (8 on the legacy
/// IRQs 5..12, up to 24 with its second IOAPIC).
pub const MICROVM_MMIO_BASE: u64 = 0xFEB0_0000;
/// Size of one virtio-mmio slot.
pub const MICROVM_MMIO_SLOT: u64 = 0x200;
/// Slots probed.
pub const MICROVM_MMIO_SLOTS: u64 = 32;

/// Find the first virtio-net device — on PCI bus 0 or else in the virtio-mmio slots of
/// `microvm` — and bring it up with all receive buffers posted.
pub fn probe() -> Result<VirtioNet, NicError> {
    const LOOKED: &str = "PCI bus 0, microvm virtio-mmio slots";
    let mut root = PciRoot::new(PortCam::new());
    if root.enumerate_bus(0).next().is_some() {
        // A PCI machine: the NIC is a PCI function (the microvm window is not probed, as PCI
        // BARs may lie there).
        let transport =
            pci_net(&mut root, &mut bar_allocator())?.ok_or(NicError::NotFound(LOOKED))?;
        return VirtioNet::new(transport.into());
    }
    let transport = probe_microvm().ok_or(NicError::NotFound(LOOKED))?;
    VirtioNet::new(transport.into())
}

fn probe_microvm() -> Option<virtio_drivers::transport::mmio::MmioTransport<'static>> {
    // SAFETY (both calls): only reached when there is no PCI bus (so no BAR can lie here); the
    // addresses are below 4 GiB (identity-mapped) in the window QEMU's microvm gives its
    // virtio-mmio slots, 512-byte aligned; reading a slot's ID registers has no side effect,
    // and an unassigned address reads as all ones.
    if !unsafe { mmio_magic_at(MICROVM_MMIO_BASE) } {
        return None;
    }
    (0..MICROVM_MMIO_SLOTS).find_map(|slot| {
        let addr = MICROVM_MMIO_BASE + slot * MICROVM_MMIO_SLOT;
        // SAFETY: as above.
        unsafe { mmio_net_at(addr, MICROVM_MMIO_SLOT as usize) }
    })
}
