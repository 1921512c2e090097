//! # imds-hal — the boundary between imds-agent and the machine
//!
//! The agent core (`imds-agent`) is sans-IO: it never reads a clock, a random number or a
//! network card by itself. Everything it needs from the machine comes through the small traits
//! in this crate, so that the same core runs as a Linux process and as a bare-metal unikernel:
//!
//! * [`Clock`] — a monotonic clock (timeouts, rate limits) and the wall clock (token times);
//! * [`Entropy`] — a cryptographically secure random source (token ids, assertion `jti`s);
//! * [`ConfigSource`] — where the configuration document comes from (a file, QEMU fw_cfg);
//! * log lines go to any `core::fmt::Write` (stderr, the serial port), written with
//!   [`text::Text`] (numbers and addresses without `core::fmt`'s formatting machinery);
//! * the NIC is a [`smoltcp::phy::Device`], taken generically by the network loop.
//!
//! Backends: `host` (feature `std`) and, on `target_os = "none"`, the bare-metal ones: the
//! arch-neutral [`virtio_net`] device, [`fw_cfg`] file directory and [`pci`] BAR allocator, and
//! per architecture the machine's access to them (ports, MMIO) and its console, clock, entropy
//! and exit (`x86_64`, `aarch64`). All `unsafe` of the project lives in backends of this crate and in the boot code.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "std")]
pub mod host;
pub mod text;

// Pure parsers of what a VMM hands the guest, and the PIT calibration's arithmetic (always
// compiled: unit-tested on the host).
mod bytes;
pub mod cmdline;
pub mod dtb;
pub mod pit;
pub mod pvclock;
pub mod pvh;
pub mod rtc;
pub mod ticks;

#[cfg(all(target_arch = "aarch64", target_os = "none"))]
pub mod aarch64;
#[cfg(target_os = "none")]
pub mod fw_cfg;
#[cfg(target_os = "none")]
pub mod pci;
#[cfg(target_os = "none")]
pub mod virtio_net;
#[cfg(target_os = "none")]
pub mod virtio_rng;
#[cfg(all(target_arch = "x86_64", target_os = "none"))]
pub mod x86_64;

/// Time as the agent sees it.
pub trait Clock {
    /// Microseconds since an arbitrary fixed point; never goes backwards.
    fn monotonic_us(&self) -> u64;
    /// Wall-clock time: seconds since the Unix epoch (UTC).
    fn unix_time_s(&self) -> u64;
}

/// Why random bytes could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntropyError {
    /// The machine has no secure entropy source (e.g. no RDRAND).
    Unavailable,
    /// The source failed (e.g. RDRAND kept returning CF=0).
    Failed,
}

impl EntropyError {
    /// The message.
    pub fn as_str(&self) -> &'static str {
        match self {
            EntropyError::Unavailable => "no secure entropy source on this machine",
            EntropyError::Failed => "the entropy source failed",
        }
    }
}

impl core::fmt::Display for EntropyError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::error::Error for EntropyError {}

/// A cryptographically secure random source.
pub trait Entropy {
    /// Fill `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError>;
}

/// Why the configuration document could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSourceError {
    /// No configuration was supplied.
    Missing,
    /// The document is larger than the buffer given (its size is carried).
    TooLarge(usize),
    /// The source exists but reading it failed.
    Io,
}

impl ConfigSourceError {
    /// The message, written without `core::fmt` (the image's console).
    pub fn describe<W: text::Text + ?Sized>(&self, out: &mut W) {
        match self {
            ConfigSourceError::Missing => out.put("no configuration supplied"),
            ConfigSourceError::TooLarge(n) => out
                .put("configuration too large (")
                .dec(*n as u64)
                .put(" bytes)"),
            ConfigSourceError::Io => out.put("reading the configuration failed"),
        };
    }
}

impl core::fmt::Display for ConfigSourceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        self.describe(f);
        Ok(())
    }
}

impl core::error::Error for ConfigSourceError {}

/// Where the configuration document comes from.
pub trait ConfigSource {
    /// Read the whole document into `buf`; return the filled prefix.
    fn read_config<'a>(&mut self, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError>;
}
