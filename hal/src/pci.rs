//! BAR assignment for PCI functions that firmware (or a `-kernel` boot with none) left
//! unassigned: a bump allocator over the machine's MMIO and I/O windows, for any
//! configuration access mechanism (x86 ports, ECAM).

use virtio_drivers::transport::pci::bus::{
    BarInfo, Command, ConfigurationAccess, DeviceFunction, MemoryBarType, PciRoot,
};

/// Why BARs could not be assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarError {
    /// The device reports a BAR type the PCI spec does not define.
    InvalidBar,
    /// The BARs do not fit in the allocator's windows.
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
    mmio_end: u64,
    next_io: u32,
    io_end: u32,
    /// Maps a memory BAR found above the window where it is (`true`: keep it there).
    keep_high: Option<fn(u64, u64) -> bool>,
}

impl BarAllocator {
    /// Allocate from `mmio` and `io` (`(start, end)` each), from their bottoms. A memory BAR
    /// found ending above `mmio.1` is moved into the window (it may lie outside what the boot
    /// code maps).
    pub const fn new(mmio: (u64, u64), io: (u32, u32)) -> BarAllocator {
        BarAllocator {
            next_mmio: mmio.0,
            mmio_end: mmio.1,
            next_io: io.0,
            io_end: io.1,
            keep_high: None,
        }
    }

    /// Keep a memory BAR the VMM or firmware placed above the MMIO window (e.g. a 64-bit BAR
    /// above 4 GiB) when `map(address, size)` maps it, instead of moving it into the window.
    pub const fn keeping_high(mut self, map: fn(u64, u64) -> bool) -> BarAllocator {
        self.keep_high = Some(map);
        self
    }

    fn alloc_mmio(&mut self, size: u64) -> Result<u64, BarError> {
        let size = size.max(4096);
        let start = self.next_mmio.next_multiple_of(size);
        let end = start.checked_add(size).ok_or(BarError::NoSpace)?;
        if end > self.mmio_end {
            return Err(BarError::NoSpace);
        }
        self.next_mmio = end;
        Ok(start)
    }

    fn alloc_io(&mut self, size: u32) -> Result<u32, BarError> {
        let size = size.max(4);
        let start = self.next_io.next_multiple_of(size);
        let end = start.checked_add(size).ok_or(BarError::NoSpace)?;
        if end > self.io_end {
            return Err(BarError::NoSpace);
        }
        self.next_io = end;
        Ok(start)
    }

    /// Give every BAR of `df` that is unassigned (or ends above the MMIO window and is not
    /// kept by [`BarAllocator::keeping_high`]) an address,
    /// then enable memory, I/O decoding and bus mastering.
    pub fn assign<C: ConfigurationAccess>(
        &mut self,
        root: &mut PciRoot<C>,
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
                    let high = address.saturating_add(size) > self.mmio_end;
                    let kept = high && self.keep_high.is_some_and(|map| map(address, size));
                    if address == 0 || (high && !kept) {
                        let at = self.alloc_mmio(size)?;
                        match address_type {
                            MemoryBarType::Width64 => root.set_bar_64(df, index, at),
                            _ => {
                                let at = u32::try_from(at).map_err(|_| BarError::NoSpace)?;
                                root.set_bar_32(df, index, at)
                            }
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
