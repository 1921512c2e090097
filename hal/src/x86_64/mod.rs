//! Bare-metal x86_64 backends (QEMU `pc`/`q35`/`microvm`, firmware qboot or SeaBIOS;
//! Firecracker >= 1.12 and Cloud Hypervisor load the same PVH ELF):
//!
//! * [`serial`] — COM1 console ([`serial::Serial`], a `core::fmt::Write`);
//! * [`clock`] — TSC monotonic clock (frequency from CPUID `0x4000_0010`, [`kvmclock`] or PIT
//!   channel 2), wall clock from the CMOS RTC or kvmclock ([`clock::TscClock`], a
//!   [`crate::Clock`]);
//! * [`kvmclock`] — KVM's paravirtual clock through its MSRs;
//! * [`rdrand`] — RDRAND entropy ([`rdrand::Rdrand`], an [`crate::Entropy`]);
//! * [`fw_cfg`] — QEMU fw_cfg over I/O ports ([`fw_cfg::FwCfgConfig`], a
//!   [`crate::ConfigSource`]; the file directory is [`crate::fw_cfg`]);
//! * [`pvh`] — the PVH start info, command line and first module ([`pvh::ModuleConfig`], a
//!   [`crate::ConfigSource`]: the config as the initrd);
//! * [`pci`] — configuration space over ports 0xCF8/0xCFC, the windows for BARs;
//! * [`paging`] — mapping a device window above 4 GiB (a 64-bit BAR placed there);
//! * [`nic`] — where the virtio-net (or virtio-rng) device is (PCI bus 0, the command line's
//!   `virtio_mmio.device=`, microvm slots); the device is [`crate::virtio_net::VirtioNet`], a
//!   `smoltcp::phy::Device`;
//! * [`exit`] — leaving the VM: `isa-debug-exit`, Cloud Hypervisor's shutdown port,
//!   Firecracker's i8042 reset;
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
