//! PCI configuration space through the legacy ports `0xCF8` (address) / `0xCFC` (data), and
//! the address windows where [`crate::pci::BarAllocator`] places BARs that firmware left
//! unassigned (qboot does).
//!
//! Only bus 0 is scanned: QEMU's `pc`/`q35` machines put `-device`s there unless told otherwise.

use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction};

use crate::pci::BarAllocator;

use super::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Where unassigned memory BARs are placed: inside the 32-bit PCI hole of both `pc` and `q35`
/// (q35's MMCONFIG window is 0xB000_0000..0xC000_0000, the IOAPIC starts at 0xFEC0_0000).
pub const MMIO_WINDOW: (u64, u64) = (0xE000_0000, 0xFEC0_0000);
/// Where unassigned I/O BARs are placed.
pub const IO_WINDOW: (u32, u32) = (0xC000, 0x1_0000);
/// Where the virtio-rng device's unassigned BARs go: the top of [`MMIO_WINDOW`] and
/// [`IO_WINDOW`] (it is set up before the NIC, by an allocator of its own; the NIC's, bumping
/// up from the bottom, never gets this far with one device's BARs).
pub const RNG_MMIO_WINDOW: (u64, u64) = (0xFE00_0000, MMIO_WINDOW.1);
/// The virtio-rng device's I/O window.
pub const RNG_IO_WINDOW: (u32, u32) = (0xF000, IO_WINDOW.1);

/// PCI configuration mechanism #1 (ports `0xCF8`/`0xCFC`).
#[derive(Debug)]
pub struct PortCam {
    _private: (),
}

impl PortCam {
    /// The one configuration mechanism of the machine. Single-core, interrupts off: the
    /// address/data pair cannot be interleaved.
    pub fn new() -> PortCam {
        PortCam { _private: () }
    }

    fn address(df: DeviceFunction, offset: u8) -> u32 {
        0x8000_0000
            | u32::from(df.bus) << 16
            | u32::from(df.device & 0x1F) << 11
            | u32::from(df.function & 0x07) << 8
            | u32::from(offset & 0xFC)
    }
}

impl Default for PortCam {
    fn default() -> Self {
        Self::new()
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        // SAFETY: 0xCF8/0xCFC are the host bridge's configuration mechanism #1; a configuration
        // read has no side effects on the devices QEMU emulates. Single CPU, no interrupts: the
        // address write and the data read cannot be separated by another access.
        unsafe {
            outl(
                CONFIG_ADDRESS,
                Self::address(device_function, register_offset),
            );
            inl(CONFIG_DATA)
        }
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        // SAFETY: as in `read_word`; the caller (`&mut self`) is the owner of PCI configuration.
        unsafe {
            outl(
                CONFIG_ADDRESS,
                Self::address(device_function, register_offset),
            );
            outl(CONFIG_DATA, data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam { _private: () }
    }
}

/// The allocator over this machine's windows ([`MMIO_WINDOW`], [`IO_WINDOW`]); a 64-bit BAR
/// already assigned above 4 GiB stays there and is mapped ([`super::paging::map_device`]).
pub const fn bar_allocator() -> BarAllocator {
    BarAllocator::new(MMIO_WINDOW, IO_WINDOW).keeping_high(super::paging::map_device)
}
