//! PCI configuration space through the legacy ports `0xCF8` (address) / `0xCFC` (data), and
//! BAR assignment for firmware that leaves BARs unassigned (qboot does).
//!
//! Only bus 0 is scanned: QEMU's `pc`/`q35` machines put `-device`s there unless told otherwise.

use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, MemoryBarType, PciRoot,
};

use super::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;

/// Where unassigned memory BARs are placed: inside the 32-bit PCI hole of both `pc` and `q35`
/// (q35's MMCONFIG window is 0xB000_0000..0xC000_0000, the IOAPIC starts at 0xFEC0_0000).
pub const MMIO_WINDOW: (u64, u64) = (0xE000_0000, 0xFEC0_0000);
/// Where unassigned I/O BARs are placed.
pub const IO_WINDOW: (u32, u32) = (0xC000, 0x1_0000);

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

/// Why BARs could not be assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarError {
    /// The device reports a BAR type the PCI spec does not define.
    InvalidBar,
    /// The BARs do not fit in [`MMIO_WINDOW`] / [`IO_WINDOW`].
    NoSpace,
}

impl BarError {
    /// The message.
    pub fn as_str(&self) -> &'static str {
        match self {
            BarError::InvalidBar => "invalid PCI BAR",
            BarError::NoSpace => "PCI BARs do not fit in the address window",
        }
    }
}

impl core::fmt::Display for BarError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bump allocator over the address windows for BARs.
#[derive(Debug)]
pub struct BarAllocator {
    next_mmio: u64,
    next_io: u32,
}

impl BarAllocator {
    /// Start at the bottom of both windows.
    pub const fn new() -> BarAllocator {
        BarAllocator {
            next_mmio: MMIO_WINDOW.0,
            next_io: IO_WINDOW.0,
        }
    }

    fn alloc_mmio(&mut self, size: u64) -> Result<u64, BarError> {
        let size = size.max(4096);
        let start = self.next_mmio.next_multiple_of(size);
        let end = start.checked_add(size).ok_or(BarError::NoSpace)?;
        if end > MMIO_WINDOW.1 {
            return Err(BarError::NoSpace);
        }
        self.next_mmio = end;
        Ok(start)
    }

    fn alloc_io(&mut self, size: u32) -> Result<u32, BarError> {
        let size = size.max(4);
        let start = self.next_io.next_multiple_of(size);
        let end = start.checked_add(size).ok_or(BarError::NoSpace)?;
        if end > IO_WINDOW.1 {
            return Err(BarError::NoSpace);
        }
        self.next_io = end;
        Ok(start)
    }

    /// Give every BAR of `df` that is unassigned (or lies above 4 GiB, outside the identity map)
    /// an address, then enable memory, I/O decoding and bus mastering.
    pub fn assign(
        &mut self,
        root: &mut PciRoot<PortCam>,
        df: DeviceFunction,
    ) -> Result<(), BarError> {
        let mut index = 0u8;
        while index < 6 {
            let info = root.bar_info(df, index).map_err(|_| BarError::InvalidBar)?;
            let mut step = 1;
            match info {
                Some(BarInfo::Memory {
                    address_type,
                    address,
                    size,
                    ..
                }) => {
                    if address_type == MemoryBarType::Width64 {
                        step = 2;
                    }
                    if address == 0 || address + size > MMIO_WINDOW.1 {
                        let at = self.alloc_mmio(size)?;
                        match address_type {
                            MemoryBarType::Width64 => root.set_bar_64(df, index, at),
                            // The window is below 4 GiB: the cast is exact.
                            _ => root.set_bar_32(df, index, at as u32),
                        }
                    }
                }
                Some(BarInfo::IO { address: 0, size }) => {
                    let at = self.alloc_io(size)?;
                    root.set_bar_32(df, index, at | 1);
                }
                Some(BarInfo::IO { .. }) | None => {}
            }
            index += step;
        }
        let (_, command) = root.get_status_command(df);
        root.set_command(
            df,
            command | Command::MEMORY_SPACE | Command::IO_SPACE | Command::BUS_MASTER,
        );
        Ok(())
    }
}

impl Default for BarAllocator {
    fn default() -> Self {
        Self::new()
    }
}
