//! QEMU's fw_cfg device, whatever its access method: the file directory and file reads, over an
//! [`FwCfgAccess`] (I/O ports `0x510`/`0x511` on x86, a memory-mapped window on Arm `virt`).
//!
//! The unikernel's configuration is the file [`CONFIG_FILE`], given with
//! `-fw_cfg name=opt/imds-agent/config,file=F`.

use crate::ConfigSourceError;

/// The fw_cfg file name carrying the agent's configuration.
pub const CONFIG_FILE: &str = "opt/imds-agent/config";
const SEL_SIGNATURE: u16 = 0x0000;
const SEL_FILE_DIR: u16 = 0x0019;

/// How the machine reaches its fw_cfg device: select an item, then read its bytes in order.
pub trait FwCfgAccess {
    /// Select item `key` (its read cursor goes back to 0).
    fn select(&mut self, key: u16);
    /// Read the next bytes of the selected item (past its end they read 0).
    fn read_bytes(&mut self, buf: &mut [u8]);
}

fn read_be32(fw: &mut impl FwCfgAccess) -> u32 {
    let mut b = [0; 4];
    fw.read_bytes(&mut b);
    u32::from_be_bytes(b)
}

/// Whether a QEMU fw_cfg device answers (its signature reads "QEMU").
pub fn present(fw: &mut impl FwCfgAccess) -> bool {
    fw.select(SEL_SIGNATURE);
    let mut sig = [0; 4];
    fw.read_bytes(&mut sig);
    &sig == b"QEMU"
}

/// Find a fw_cfg file: its (selector, size).
pub fn find_file(fw: &mut impl FwCfgAccess, name: &str) -> Option<(u16, u32)> {
    if !present(fw) {
        return None;
    }
    fw.select(SEL_FILE_DIR);
    let count = read_be32(fw);
    for _ in 0..count {
        let size = read_be32(fw);
        let mut sel = [0; 2];
        fw.read_bytes(&mut sel);
        let mut reserved = [0; 2];
        fw.read_bytes(&mut reserved);
        let mut file_name = [0; 56];
        fw.read_bytes(&mut file_name);
        let len = file_name
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(file_name.len());
        if &file_name[..len] == name.as_bytes() {
            return Some((u16::from_be_bytes(sel), size));
        }
    }
    None
}

/// Read the whole fw_cfg file `name` into `buf`; the filled prefix.
pub fn read_file<'a>(
    fw: &mut impl FwCfgAccess,
    name: &str,
    buf: &'a mut [u8],
) -> Result<&'a [u8], ConfigSourceError> {
    let (sel, size) = find_file(fw, name).ok_or(ConfigSourceError::Missing)?;
    let size = size as usize;
    if size > buf.len() {
        return Err(ConfigSourceError::TooLarge(size));
    }
    fw.select(sel);
    fw.read_bytes(&mut buf[..size]);
    Ok(&buf[..size])
}
