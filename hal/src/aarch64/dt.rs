//! The device tree the boot loader (QEMU, Firecracker, Cloud Hypervisor) hands the image in
//! `x0`, read with [`crate::dtb`] (no allocation; it is re-read where needed, which costs
//! microseconds). QEMU's documentation: "guest code must look in the DTB" for device addresses.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::dtb::{Dtb, Node};

static DTB: AtomicU64 = AtomicU64::new(0);

/// Why the device tree could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtError {
    /// `x0` held no address (not booted as a Linux arm64 Image).
    Missing,
    /// No valid flattened device tree at the address.
    Invalid,
}

/// The device tree at `dtb`, if its header says it is one.
///
/// # Safety
/// `dtb` must be 8-aligned and readable for 8 bytes, and for the `totalsize` its header gives
/// when that header is a device tree's (at most [`crate::dtb::MAX_SIZE`]).
unsafe fn at(dtb: u64) -> Option<Dtb<'static>> {
    // SAFETY: readable for the 8 header bytes (the caller's promise).
    let header = unsafe { core::slice::from_raw_parts(dtb as *const u8, 8) };
    let size = Dtb::total_size(header)?;
    // SAFETY: readable for `totalsize` bytes, as the header says (the caller's promise).
    Dtb::new(unsafe { core::slice::from_raw_parts(dtb as *const u8, size) })
}

/// Remember the device tree at `dtb` (from `x0` at entry) and check it parses.
///
/// # Safety
/// `dtb` must be 0 or the address the boot loader passed in `x0`: identity-mapped RAM that
/// nothing of the image overwrites for the whole run.
pub unsafe fn init(dtb: u64) -> Result<(), DtError> {
    if dtb == 0 || !dtb.is_multiple_of(8) {
        return Err(DtError::Missing);
    }
    // SAFETY: the caller vouches for `dtb` (the boot loader's device tree, which the arm64
    // boot protocol places 8-aligned in RAM, whole).
    unsafe { at(dtb) }.ok_or(DtError::Invalid)?;
    DTB.store(dtb, Ordering::Relaxed);
    Ok(())
}

/// The device tree, once [`init`] accepted it.
pub fn fdt() -> Option<Dtb<'static>> {
    let dtb = DTB.load(Ordering::Relaxed);
    if dtb == 0 {
        return None;
    }
    // SAFETY: `init` checked that a valid device tree is at `dtb`, in memory that stays
    // untouched for the whole run (its caller's promise).
    unsafe { at(dtb) }
}

/// The first `reg` window `(base, size)` of `node`.
pub fn reg(node: Node<'_>) -> Option<(u64, u64)> {
    node.reg(0)
}

/// The first `reg` window of the first node compatible with one of `with`.
pub fn find_reg(with: &[&str]) -> Option<(u64, u64)> {
    fdt()?.find_compatible(with)?.reg(0)
}

/// Whether `node` is compatible with `with` and not disabled.
pub fn is_compatible(node: Node<'_>, with: &str) -> bool {
    node.is_enabled() && node.is_compatible_with(with)
}

/// The initrd `(start, end)` from `/chosen` `linux,initrd-start` / `linux,initrd-end`.
pub fn initrd() -> Option<(u64, u64)> {
    let chosen = fdt()?.chosen()?;
    let start = chosen.uint_property("linux,initrd-start")?;
    let end = chosen.uint_property("linux,initrd-end")?;
    (end >= start).then_some((start, end))
}

/// How PSCI is called (`/psci` `method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciConduit {
    /// `hvc #0` (a hypervisor: QEMU at EL1, KVM).
    Hvc,
    /// `smc #0` (firmware at EL3, or QEMU emulating it).
    Smc,
}

/// The PSCI conduit the device tree names, if it has a PSCI node.
pub fn psci() -> Option<PsciConduit> {
    let fdt = fdt()?;
    let node = fdt.find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"])?;
    match node.str_property("method")? {
        b"hvc" => Some(PsciConduit::Hvc),
        b"smc" => Some(PsciConduit::Smc),
        _ => None,
    }
}

/// A PCIe host bridge with ECAM (`pci-host-ecam-generic`): its configuration window and the
/// windows of its `ranges`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EcamHost {
    /// Configuration space (ECAM), `(base, size)`.
    pub ecam: (u64, u64),
    /// The 32-bit memory window, `(start, end)` (CPU address = PCI address on QEMU `virt`).
    pub mmio32: Option<(u64, u64)>,
    /// The I/O window in PCI I/O space, `(start, end)`.
    pub io: Option<(u32, u32)>,
}

/// PCI address space code in `phys.hi` (bits 24..26) of a `ranges` entry.
const SPACE_IO: u32 = 1;
const SPACE_MEM32: u32 = 2;

/// The first enabled `pci-host-ecam-generic` host bridge.
pub fn ecam_host() -> Option<EcamHost> {
    let fdt = fdt()?;
    let node = fdt
        .nodes()
        .find(|n| is_compatible(*n, "pci-host-ecam-generic"))?;
    let ecam = reg(node)?;
    let mut host = EcamHost {
        ecam,
        mmio32: None,
        io: None,
    };
    // Each entry: PCI address (3 cells), CPU address (the bridge's parent's #address-cells,
    // 2 on every VMM here), size (the bridge's #size-cells, 2).
    let parent_cells = fdt.root()?.cells().0 as usize;
    let size_cells = node.cells().1 as usize;
    let ranges = node.property("ranges")?;
    let entry = 4 * (3 + parent_cells + size_cells);
    let cells = |b: &[u8]| {
        b.chunks_exact(4).fold(0u64, |acc, c| {
            (acc << 32) | u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        })
    };
    for e in ranges.chunks_exact(entry) {
        let hi = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
        let pci = cells(&e[4..12]);
        let cpu = cells(&e[12..12 + 4 * parent_cells]);
        let size = cells(&e[12 + 4 * parent_cells..]);
        match (hi >> 24) & 3 {
            SPACE_MEM32 if host.mmio32.is_none() && pci == cpu => {
                host.mmio32 = Some((cpu, cpu.saturating_add(size)));
            }
            SPACE_IO if host.io.is_none() => {
                let start = u32::try_from(pci).unwrap_or(u32::MAX);
                let end = u32::try_from(pci.saturating_add(size)).unwrap_or(u32::MAX);
                host.io = Some((start, end));
            }
            _ => {}
        }
    }
    Some(host)
}
