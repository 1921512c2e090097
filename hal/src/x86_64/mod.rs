//! Bare-metal x86_64 backends (QEMU `pc`/`q35`/`microvm`, firmware qboot or SeaBIOS, PVH boot):
//!
//! * [`serial`] — COM1 console ([`serial::Serial`], a `core::fmt::Write`);
//! * [`clock`] — TSC monotonic clock calibrated against PIT channel 2, CMOS RTC wall clock
//!   ([`clock::TscClock`], a [`crate::Clock`]);
//! * [`rdrand`] — RDRAND entropy ([`rdrand::Rdrand`], an [`crate::Entropy`]);
//! * [`fw_cfg`] — QEMU fw_cfg over I/O ports ([`fw_cfg::FwCfgConfig`], a
//!   [`crate::ConfigSource`]; the file directory is [`crate::fw_cfg`]);
//! * [`pci`] — configuration space over ports 0xCF8/0xCFC, the windows for BARs;
//! * [`nic`] — where the virtio-net device is (PCI bus 0, microvm slots); the device is
//!   [`crate::virtio_net::VirtioNet`], a `smoltcp::phy::Device`;
//! * [`exit`] — leaving QEMU through `isa-debug-exit`;
//! * [`interrupts`] — CPU exceptions reported on the console, LAPIC-timer sleep when idle.
//!
//! Everything assumes one CPU, interrupts off, and the first 4 GiB identity-mapped (the boot code
//! in `qemu/` sets that up).

pub mod clock;
pub mod exit;
pub mod fw_cfg;
pub mod interrupts;
pub mod kvmclock;
pub mod nic;
pub mod paging;
pub mod pci;
mod port;
pub mod pvh;
pub mod rdrand;
pub mod serial;
