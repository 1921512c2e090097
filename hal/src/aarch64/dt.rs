//! The device tree the boot loader (QEMU, Firecracker, Cloud Hypervisor) hands the image in
//! `x0`, read with the `fdt` crate (no allocation; it is re-parsed where needed, which costs
//! microseconds). QEMU's documentation: "guest code must look in the DTB" for device addresses.

use core::sync::atomic::{AtomicU64, Ordering};

use fdt::node::FdtNode;
use fdt::Fdt;

static DTB: AtomicU64 = AtomicU64::new(0);

/// Why the device tree could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtError {
    /// `x0` held no address (not booted as a Linux arm64 Image).
    Missing,
    /// No valid flattened device tree at the address.
    Invalid,
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
    // SAFETY: the caller vouches for `dtb`; `from_ptr` reads the header, checks the magic and
    // then reads only within the size the header gives.
    unsafe { Fdt::from_ptr(dtb as *const u8) }.map_err(|_| DtError::Invalid)?;
    DTB.store(dtb, Ordering::Relaxed);
    Ok(())
}

/// The device tree, once [`init`] accepted it.
pub fn fdt() -> Option<Fdt<'static>> {
    let dtb = DTB.load(Ordering::Relaxed);
    if dtb == 0 {
        return None;
    }
    // SAFETY: `init` checked that a valid device tree is at `dtb`, in memory that stays
    // untouched for the whole run (its caller's promise).
    unsafe { Fdt::from_ptr(dtb as *const u8) }.ok()
}

/// The first `reg` window `(base, size)` of `node`.
pub fn reg(node: FdtNode<'_, '_>) -> Option<(u64, u64)> {
    let r = node.reg()?.next()?;
    Some((r.starting_address as u64, r.size.unwrap_or(0) as u64))
}

/// The first `reg` window of the first node compatible with one of `with`.
pub fn find_reg(with: &[&str]) -> Option<(u64, u64)> {
    let fdt = fdt()?;
    let node = fdt.find_compatible(with)?;
    reg(node)
}

/// Whether `node` is compatible with `with` and not disabled.
pub fn is_compatible(node: FdtNode<'_, '_>, with: &str) -> bool {
    let enabled = node
        .property("status")
        .and_then(|p| p.as_str())
        .is_none_or(|s| s == "okay" || s == "ok");
    enabled
        && node
            .compatible()
            .is_some_and(|c| c.all().any(|c| c == with))
}

/// The initrd `(start, end)` from `/chosen` `linux,initrd-start` / `linux,initrd-end`.
pub fn initrd() -> Option<(u64, u64)> {
    let fdt = fdt()?;
    let chosen = fdt.find_node("/chosen")?;
    let start = chosen.property("linux,initrd-start")?.as_usize()? as u64;
    let end = chosen.property("linux,initrd-end")?.as_usize()? as u64;
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
    match node.property("method")?.as_str()? {
        "hvc" => Some(PsciConduit::Hvc),
        "smc" => Some(PsciConduit::Smc),
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
        .all_nodes()
        .find(|n| is_compatible(*n, "pci-host-ecam-generic"))?;
    let ecam = reg(node)?;
    let mut host = EcamHost {
        ecam,
        mmio32: None,
        io: None,
    };
    // Each entry: PCI address (3 cells), CPU address (the bridge's parent's #address-cells,
    // 2 on every VMM here), size (the bridge's #size-cells, 2).
    let parent_cells = fdt.root().cell_sizes().address_cells;
    let size_cells = node.cell_sizes().size_cells;
    let ranges = node.property("ranges")?.value;
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
