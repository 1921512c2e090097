//! What the VMM left in memory at a PVH entry ([`crate::pvh`] parses it): the start info, the
//! kernel command line and the first module (the initrd: QEMU `-initrd`, Firecracker's
//! `initrd_path`, Cloud Hypervisor's `--initramfs`), which can carry the configuration
//! ([`ModuleConfig`], a [`crate::ConfigSource`]).

use crate::pvh::{Module, StartInfo, MODULE_LEN, START_INFO_LEN};
use crate::{ConfigSource, ConfigSourceError};

/// The longest command line looked at (Cloud Hypervisor allows 64 KiB, Firecracker 2 KiB).
pub const CMDLINE_MAX: usize = 64 * 1024;
/// Structures are only read below this address (the boot code's identity map).
const MAPPED_END: u64 = 1 << 32;

fn mapped(start: u64, len: u64) -> bool {
    start != 0 && start.checked_add(len).is_some_and(|end| end <= MAPPED_END)
}

fn read_bytes<const N: usize>(at: u64) -> Option<[u8; N]> {
    if !mapped(at, N as u64) {
        return None;
    }
    let mut b = [0u8; N];
    for (i, byte) in b.iter_mut().enumerate() {
        // SAFETY: `at..at + N` is below 4 GiB (checked), which the boot code identity-maps;
        // the VMM put the PVH structures in RAM there. A volatile read of RAM has no side
        // effect.
        *byte = unsafe { core::ptr::read_volatile((at as usize + i) as *const u8) };
    }
    Some(b)
}

/// The `hvm_start_info` at `addr` (from `ebx` at the PVH entry), if its magic is right.
pub fn start_info(addr: u32) -> Option<StartInfo> {
    StartInfo::parse(&read_bytes::<START_INFO_LEN>(addr.into())?)
}

/// The first module (the initrd), if the VMM loaded one below 4 GiB.
pub fn first_module(info: &StartInfo) -> Option<Module> {
    let m = Module::parse(&read_bytes::<MODULE_LEN>(info.first_module_entry()?)?)?;
    mapped(m.paddr, m.size).then_some(m)
}

/// The kernel command line (without its NUL; empty when there is none).
pub fn cmdline(info: &StartInfo) -> &'static [u8] {
    let at = info.cmdline_paddr;
    if !mapped(at, 1) {
        return &[];
    }
    let max = CMDLINE_MAX.min((MAPPED_END - at) as usize);
    let mut len = 0;
    // SAFETY: `at + len` stays below 4 GiB (identity-mapped); the VMM wrote a NUL-terminated
    // string there, in RAM the boot code keeps out of its stack (`big_stack`'s avoided
    // ranges) and that nothing else writes.
    while len < max && unsafe { core::ptr::read_volatile((at as usize + len) as *const u8) } != 0 {
        len += 1;
    }
    // SAFETY: as above: `at..at + len` is mapped RAM holding the command line, never written
    // for the rest of the run, so a shared slice of it may live as long as the machine.
    unsafe { core::slice::from_raw_parts(at as usize as *const u8, len) }
}

/// The configuration document as the first PVH module: exactly its size (the page padding a
/// VMM may put after it is not part of it).
#[derive(Clone, Copy)]
pub struct ModuleConfig(pub Module);

impl ConfigSource for ModuleConfig {
    fn read_config<'a>(&mut self, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
        let Module { paddr, size } = self.0;
        let len = usize::try_from(size).map_err(|_| ConfigSourceError::TooLarge(usize::MAX))?;
        if len > buf.len() {
            return Err(ConfigSourceError::TooLarge(len));
        }
        if !mapped(paddr, size) {
            return Err(ConfigSourceError::Io);
        }
        // SAFETY: `paddr..paddr + size` is below 4 GiB (checked: identity-mapped) and is the
        // module the VMM loaded into RAM; the boot code kept its stack off it and nothing else
        // writes it. `buf` is ours, and does not overlap the module (it is on the stack,
        // which avoids the module).
        unsafe {
            core::ptr::copy_nonoverlapping(paddr as usize as *const u8, buf.as_mut_ptr(), len)
        };
        Ok(&buf[..len])
    }
}
