//! QEMU fw_cfg over MMIO (device tree `qemu,fw-cfg-mmio`; QEMU `virt` at `0x0902_0000`): data
//! register at +0 (a byte stream, read 8 bytes at a time), selector at +8, 16 bits **big-endian** (the x86 ports are
//! little-endian). The file directory is read by the arch-neutral [`crate::fw_cfg`].
//!
//! The configuration comes from the fw_cfg file [`CONFIG_FILE`], else from the initrd the boot
//! loader placed (`-initrd`; the device tree's `/chosen` `linux,initrd-start/-end`), which is
//! how Firecracker and Cloud Hypervisor can pass it.

use super::dt;
use crate::fw_cfg::{self as files, FwCfgAccess, CONFIG_FILE};
use crate::ConfigSourceError;

const DATA: u64 = 0x00;
const SELECTOR: u64 = 0x08;

/// fw_cfg through its memory-mapped registers.
#[derive(Debug, Clone, Copy)]
pub struct MmioFwCfg {
    base: u64,
}

impl MmioFwCfg {
    /// The fw_cfg device the device tree names, if any.
    pub fn probe() -> Option<MmioFwCfg> {
        let (base, _) = dt::find_reg(&["qemu,fw-cfg-mmio"])?;
        Some(MmioFwCfg { base })
    }
}

impl FwCfgAccess for MmioFwCfg {
    fn select(&mut self, key: u16) {
        // SAFETY: `base` is the fw_cfg window the device tree names, mapped as device memory;
        // writing the selector only moves the data register's read cursor.
        unsafe { core::ptr::write_volatile((self.base + SELECTOR) as *mut u16, key.to_be()) };
    }

    fn read_bytes(&mut self, buf: &mut [u8]) {
        // The MMIO data register serves 1- to 8-byte reads as the next bytes of the stream, the
        // first at the lowest address (a big-endian device): 8 at a time, one MMIO exit each.
        let mut chunks = buf.chunks_exact_mut(8);
        for chunk in &mut chunks {
            // SAFETY: as above; an 8-byte read of the (8-byte aligned) data register advances
            // the cursor of the selected item by 8 (past its end it reads 0).
            let word = unsafe { core::ptr::read_volatile((self.base + DATA) as *const u64) };
            chunk.copy_from_slice(&word.to_le_bytes());
        }
        for b in chunks.into_remainder() {
            // SAFETY: as above, one byte.
            *b = unsafe { core::ptr::read_volatile((self.base + DATA) as *const u8) };
        }
    }
}

/// Read the whole fw_cfg file `name` into `buf`; the filled prefix (`Missing` without fw_cfg).
pub fn read_file<'a>(name: &str, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
    let mut fw = MmioFwCfg::probe().ok_or(ConfigSourceError::Missing)?;
    files::read_file(&mut fw, name, buf)
}

/// Where the configuration came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigOrigin {
    /// The fw_cfg file [`CONFIG_FILE`].
    FwCfg,
    /// The initrd, this many bytes.
    Initrd(usize),
}

/// The configuration document into `buf`: fw_cfg file [`CONFIG_FILE`], else the initrd.
pub fn read_config(buf: &mut [u8]) -> Result<(&[u8], ConfigOrigin), ConfigSourceError> {
    // Two borrows of `buf` would not pass the checker across the fallback: find the length
    // first, then hand out the slice.
    let from_fw_cfg = match read_file(CONFIG_FILE, buf) {
        Ok(doc) => Ok(doc.len()),
        Err(e) => Err(e),
    };
    match from_fw_cfg {
        Ok(n) => Ok((&buf[..n], ConfigOrigin::FwCfg)),
        Err(ConfigSourceError::Missing) => {
            let (start, end) = dt::initrd().ok_or(ConfigSourceError::Missing)?;
            let n = (end - start) as usize;
            if n == 0 {
                return Err(ConfigSourceError::Missing);
            }
            if n > buf.len() {
                return Err(ConfigSourceError::TooLarge(n));
            }
            // SAFETY: the boot loader placed the initrd at `start..end` in RAM (the device
            // tree's `/chosen`), which the boot code maps as normal memory and the image does
            // not use; it is only read, into `buf`, which it cannot overlap (`buf` is on the
            // image's stack or in its `.bss`).
            let initrd = unsafe { core::slice::from_raw_parts(start as *const u8, n) };
            buf[..n].copy_from_slice(initrd);
            Ok((&buf[..n], ConfigOrigin::Initrd(n)))
        }
        Err(e) => Err(e),
    }
}
