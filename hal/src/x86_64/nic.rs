//! Where the NIC is on an x86 machine: a virtio-net function on PCI bus 0 (`pc`, `q35`, Cloud
//! Hypervisor; BARs assigned if the firmware did not, a 64-bit BAR above 4 GiB kept and
//! mapped), or else a virtio-mmio device the kernel command line announces
//! (`virtio_mmio.device=`: Firecracker, `microvm,auto-kernel-cmdline=on`), or else a
//! virtio-mmio slot of QEMU `microvm`. The device itself is driven by the arch-neutral
//! [`crate::virtio_net`].

use virtio_drivers::transport::pci::bus::PciRoot;
use virtio_drivers::transport::SomeTransport;

use super::paging;
use super::pci::{bar_allocator, PortCam, RNG_IO_WINDOW, RNG_MMIO_WINDOW};
use crate::cmdline::virtio_mmio_devices;
use crate::pci::BarAllocator;
use crate::virtio_net::{mmio_device_at, mmio_magic_at, pci_device, NicError, VirtioNet};
use crate::virtio_rng::VirtioRng;
use virtio_drivers::transport::DeviceType;

/// QEMU `microvm`'s virtio-mmio transports: 512-byte slots from this address (8 on the legacy
/// IRQs 5..12, up to 24 with its second IOAPIC).
pub const MICROVM_MMIO_BASE: u64 = 0xFEB0_0000;
/// Size of one virtio-mmio slot.
pub const MICROVM_MMIO_SLOT: u64 = 0x200;
/// Slots probed.
pub const MICROVM_MMIO_SLOTS: u64 = 32;

/// Where [`probe`] found the NIC.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// A PCI function; its BAR's window above 4 GiB if it has one there (mapped).
    Pci { high_bar: Option<u64> },
    /// A virtio-mmio device at this address, from the kernel command line.
    Cmdline(u64),
    /// A virtio-mmio slot of `microvm` at this address.
    MicrovmSlot(u64),
}

/// Find the first virtio-net device — on PCI bus 0, or else among the command line's
/// `virtio_mmio.device=` entries, or else in the virtio-mmio slots of `microvm` — and bring it
/// up with all receive buffers posted.
pub fn probe(cmdline: &[u8]) -> Result<(VirtioNet, Found), NicError> {
    let (transport, found) = find(cmdline, DeviceType::Network, bar_allocator())?;
    Ok((VirtioNet::new(transport)?, found))
}

/// Find the first virtio-rng device the same way, its BARs (if unassigned) in a window of
/// its own ([`RNG_MMIO_WINDOW`]: it is found before the NIC).
pub fn probe_rng(cmdline: &[u8]) -> Option<VirtioRng> {
    let bars = BarAllocator::new(RNG_MMIO_WINDOW, RNG_IO_WINDOW).keeping_high(paging::map_device);
    let (transport, _) = find(cmdline, DeviceType::EntropySource, bars).ok()?;
    VirtioRng::new(transport)
}

/// The first virtio device of type `ty`: on PCI bus 0 (BARs from `bars`), else on the command
/// line, else in microvm's slots.
fn find(
    cmdline: &[u8],
    ty: DeviceType,
    mut bars: BarAllocator,
) -> Result<(SomeTransport<'static>, Found), NicError> {
    const LOOKED: &str = "PCI bus 0, virtio_mmio.device=, microvm slots";
    let mut root = PciRoot::new(PortCam::new());
    if root.enumerate_bus(0).next().is_some() {
        // A PCI machine: the device is a PCI function (the microvm window is not probed, as
        // PCI BARs may lie there).
        let transport = pci_device(&mut root, &mut bars, ty)?.ok_or(NicError::NotFound(LOOKED))?;
        let high_bar = paging::last_high_window();
        return Ok((transport.into(), Found::Pci { high_bar }));
    }
    for dev in virtio_mmio_devices(cmdline) {
        // Below 4 GiB only (the identity map); the slot must at least hold the registers.
        if dev
            .base
            .checked_add(dev.size)
            .is_none_or(|end| end > 1 << 32)
            || dev.size < 0x100
        {
            continue;
        }
        // SAFETY: the VMM announces a virtio-mmio register window at `base` (below 4 GiB:
        // identity-mapped), which nothing else uses; reading its ID registers has no side
        // effect, and a wrong address reads all ones (no magic: skipped).
        if let Some(transport) = unsafe { mmio_device_at(dev.base, dev.size as usize, ty) } {
            return Ok((transport.into(), Found::Cmdline(dev.base)));
        }
    }
    let (transport, at) = probe_microvm(ty).ok_or(NicError::NotFound(LOOKED))?;
    Ok((transport.into(), Found::MicrovmSlot(at)))
}

fn probe_microvm(
    ty: DeviceType,
) -> Option<(virtio_drivers::transport::mmio::MmioTransport<'static>, u64)> {
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
        unsafe { mmio_device_at(addr, MICROVM_MMIO_SLOT as usize, ty) }.map(|t| (t, addr))
    })
}
