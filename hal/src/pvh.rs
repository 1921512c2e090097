//! The PVH boot protocol's `hvm_start_info` and module list (Xen's `arch-x86/hvm/start_info.h`),
//! as QEMU (`-kernel`), Firecracker >= 1.12 and Cloud Hypervisor fill them: where the kernel
//! command line and the modules (`-initrd`, Firecracker's `initrd_path`, Cloud Hypervisor's
//! `--initramfs`) are. Pure parsing over bytes the boot code copied out of guest memory.

/// `hvm_start_info.magic` (`XEN_HVM_START_MAGIC_VALUE`).
pub const START_MAGIC: u32 = 0x336e_c578;
/// Bytes of `hvm_start_info` (version 1, with the memory map fields).
pub const START_INFO_LEN: usize = 56;
/// Bytes of one `hvm_modlist_entry`.
pub const MODULE_LEN: usize = 32;

use crate::bytes::{u32_at, u64_at};

/// The fields of `hvm_start_info` this kernel uses (0 where absent).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct StartInfo {
    /// Structure version (0: no memory map).
    pub version: u32,
    /// Number of entries in the module list.
    pub nr_modules: u32,
    /// Physical address of the module list (`hvm_modlist_entry[nr_modules]`).
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line (0: none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP (0: not given; look in the BIOS area).
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version >= 1).
    pub memmap_paddr: u64,
    /// Entries of the memory map (version >= 1).
    pub memmap_entries: u32,
}

impl StartInfo {
    /// Parse the structure's first [`START_INFO_LEN`] bytes; `None` without the magic.
    pub fn parse(b: &[u8; START_INFO_LEN]) -> Option<StartInfo> {
        if u32_at(b, 0) != START_MAGIC {
            return None;
        }
        let version = u32_at(b, 4);
        let v1 = version >= 1;
        Some(StartInfo {
            version,
            nr_modules: u32_at(b, 12),
            modlist_paddr: u64_at(b, 16),
            cmdline_paddr: u64_at(b, 24),
            rsdp_paddr: u64_at(b, 32),
            memmap_paddr: if v1 { u64_at(b, 40) } else { 0 },
            memmap_entries: if v1 { u32_at(b, 48) } else { 0 },
        })
    }

    /// Where the first module's entry is, if there is a module.
    pub fn first_module_entry(&self) -> Option<u64> {
        (self.nr_modules > 0 && self.modlist_paddr != 0).then_some(self.modlist_paddr)
    }
}

/// One `hvm_modlist_entry`: a module the VMM loaded (the first is the initrd).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Module {
    /// Physical address of its first byte.
    pub paddr: u64,
    /// Its size in bytes, as the VMM loaded it: the module is exactly this long (memory
    /// after it, e.g. page padding, is not part of it).
    pub size: u64,
}

impl Module {
    /// Parse one entry; `None` for an empty one (address or size 0).
    pub fn parse(b: &[u8; MODULE_LEN]) -> Option<Module> {
        let m = Module {
            paddr: u64_at(b, 0),
            size: u64_at(b, 8),
        };
        (m.paddr != 0 && m.size != 0).then_some(m)
    }

    /// The module's range `(start, end)`, `None` if it wraps the address space.
    pub fn range(&self) -> Option<(u64, u64)> {
        Some((self.paddr, self.paddr.checked_add(self.size)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_info(version: u32, nr: u32, modlist: u64, cmdline: u64) -> [u8; START_INFO_LEN] {
        let mut b = [0u8; START_INFO_LEN];
        b[0..4].copy_from_slice(&START_MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&version.to_le_bytes());
        b[12..16].copy_from_slice(&nr.to_le_bytes());
        b[16..24].copy_from_slice(&modlist.to_le_bytes());
        b[24..32].copy_from_slice(&cmdline.to_le_bytes());
        b[32..40].copy_from_slice(&0xe_0000u64.to_le_bytes());
        b[40..48].copy_from_slice(&0x7000u64.to_le_bytes());
        b[48..52].copy_from_slice(&5u32.to_le_bytes());
        b
    }

    #[test]
    fn firecracker_layout() {
        // Firecracker: start info at 0x6000, module list at 0x6040, cmdline at 0x20000.
        let s = StartInfo::parse(&start_info(1, 1, 0x6040, 0x2_0000)).unwrap();
        assert_eq!(s.version, 1);
        assert_eq!(s.cmdline_paddr, 0x2_0000);
        assert_eq!(s.rsdp_paddr, 0xe_0000);
        assert_eq!((s.memmap_paddr, s.memmap_entries), (0x7000, 5));
        assert_eq!(s.first_module_entry(), Some(0x6040));
    }

    #[test]
    fn version_0_has_no_memory_map_and_no_modules_means_none() {
        let s = StartInfo::parse(&start_info(0, 0, 0x6040, 0)).unwrap();
        assert_eq!((s.memmap_paddr, s.memmap_entries), (0, 0));
        assert_eq!(s.first_module_entry(), None);
        let s = StartInfo::parse(&start_info(1, 1, 0, 0)).unwrap();
        assert_eq!(s.first_module_entry(), None);
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut b = start_info(1, 1, 0x6040, 0);
        b[0] = 0x02; // multiboot's 0x2BADB002 low byte
        assert!(StartInfo::parse(&b).is_none());
    }

    #[test]
    fn module_entry() {
        let mut b = [0u8; MODULE_LEN];
        b[0..8].copy_from_slice(&0x1ff_e000u64.to_le_bytes());
        b[8..16].copy_from_slice(&1234u64.to_le_bytes());
        b[16..24].copy_from_slice(&0x2_0000u64.to_le_bytes()); // its cmdline: ignored
        let m = Module::parse(&b).unwrap();
        assert_eq!((m.paddr, m.size), (0x1ff_e000, 1234));
        assert_eq!(m.range(), Some((0x1ff_e000, 0x1ff_e000 + 1234)));
        assert!(Module::parse(&[0; MODULE_LEN]).is_none());
        b[8..16].copy_from_slice(&0u64.to_le_bytes());
        assert!(Module::parse(&b).is_none(), "a module of size 0 is none");
        b[0..8].copy_from_slice(&u64::MAX.to_le_bytes());
        b[8..16].copy_from_slice(&2u64.to_le_bytes());
        assert_eq!(Module::parse(&b).unwrap().range(), None);
    }
}
