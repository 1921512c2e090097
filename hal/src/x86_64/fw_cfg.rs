//! QEMU fw_cfg over I/O ports (`0x510` selector, `0x511` data); the file directory is read by
//! the arch-neutral [`crate::fw_cfg`].

use super::port::{inb, outw};
use crate::fw_cfg::{self as files, FwCfgAccess, CONFIG_FILE};
use crate::{ConfigSource, ConfigSourceError};

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;

/// fw_cfg through its x86 I/O ports.
#[derive(Debug, Default, Clone, Copy)]
pub struct PortFwCfg;

impl FwCfgAccess for PortFwCfg {
    fn select(&mut self, key: u16) {
        // SAFETY: port 0x510 is the fw_cfg selector under QEMU; selecting an item only moves the
        // data port's read cursor (on a machine without fw_cfg the write goes nowhere).
        unsafe { outw(SELECTOR, key) };
    }

    fn read_bytes(&mut self, buf: &mut [u8]) {
        for b in buf {
            // SAFETY: port 0x511 is the fw_cfg data port; a read advances the cursor of the
            // selected item (past its end it reads 0; an unclaimed port reads 0xFF).
            *b = unsafe { inb(DATA) };
        }
    }
}

/// Read the whole fw_cfg file `name` into `buf`; the filled prefix.
pub fn read_file<'a>(name: &str, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
    files::read_file(&mut PortFwCfg, name, buf)
}

/// The configuration document from fw_cfg file [`CONFIG_FILE`].
#[derive(Debug, Default, Clone, Copy)]
pub struct FwCfgConfig;

impl ConfigSource for FwCfgConfig {
    fn read_config<'a>(&mut self, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
        read_file(CONFIG_FILE, buf)
    }
}
