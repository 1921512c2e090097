//! QEMU fw_cfg over I/O ports (`0x510` selector, `0x511` data): the unikernel's configuration
//! source, the file `opt/imds-agent/config` given with `-fw_cfg name=opt/imds-agent/config,file=F`.

use super::port::{inb, outw};
use crate::{ConfigSource, ConfigSourceError};

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
const SEL_SIGNATURE: u16 = 0x0000;
const SEL_FILE_DIR: u16 = 0x0019;
/// The fw_cfg file name carrying the agent's configuration.
pub const CONFIG_FILE: &str = "opt/imds-agent/config";

fn select(key: u16) {
    // SAFETY: port 0x510 is the fw_cfg selector under QEMU; selecting an item only moves the
    // data port's read cursor.
    unsafe { outw(SELECTOR, key) };
}

fn read_bytes(buf: &mut [u8]) {
    for b in buf {
        // SAFETY: port 0x511 is the fw_cfg data port; a read advances the cursor of the selected
        // item (past its end it reads 0).
        *b = unsafe { inb(DATA) };
    }
}

fn read_be32() -> u32 {
    let mut b = [0; 4];
    read_bytes(&mut b);
    u32::from_be_bytes(b)
}

/// Whether a QEMU fw_cfg device answers.
pub fn present() -> bool {
    select(SEL_SIGNATURE);
    let mut sig = [0; 4];
    read_bytes(&mut sig);
    &sig == b"QEMU"
}

/// Find a fw_cfg file: its (selector, size).
pub fn find_file(name: &str) -> Option<(u16, u32)> {
    if !present() {
        return None;
    }
    select(SEL_FILE_DIR);
    let count = read_be32();
    for _ in 0..count {
        let size = read_be32();
        let mut sel = [0; 2];
        read_bytes(&mut sel);
        let mut reserved = [0; 2];
        read_bytes(&mut reserved);
        let mut file_name = [0; 56];
        read_bytes(&mut file_name);
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
pub fn read_file<'a>(name: &str, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
    let (sel, size) = find_file(name).ok_or(ConfigSourceError::Missing)?;
    let size = size as usize;
    if size > buf.len() {
        return Err(ConfigSourceError::TooLarge(size));
    }
    select(sel);
    read_bytes(&mut buf[..size]);
    Ok(&buf[..size])
}

/// The configuration document from fw_cfg file [`CONFIG_FILE`].
#[derive(Debug, Default, Clone, Copy)]
pub struct FwCfgConfig;

impl ConfigSource for FwCfgConfig {
    fn read_config<'a>(&mut self, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
        read_file(CONFIG_FILE, buf)
    }
}
