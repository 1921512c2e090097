//! Bare-metal aarch64 backends (QEMU `virt`, booted as a Linux arm64 Image with the device tree
//! address in `x0`; later Firecracker and Cloud Hypervisor on Arm, which boot the same way):
//!
//! * [`dt`] — the device tree (read with [`crate::dtb`]): where every device below is;
//! * [`pl011`] — the PL011 UART console ([`pl011::Pl011`], a `core::fmt::Write`);
//! * [`clock`] — the generic timer (`CNTVCT_EL0`/`CNTFRQ_EL0`) for the monotonic clock, the
//!   PL031 RTC for the wall clock ([`clock::GenericClock`], a [`crate::Clock`]);
//! * [`rng`] — entropy: `RNDR` (FEAT_RNG), else a virtio-rng device ([`rng::MachineRng`], an
//!   [`crate::Entropy`]);
//! * [`fw_cfg`] — QEMU fw_cfg over MMIO ([`fw_cfg::MmioFwCfg`], an
//!   [`crate::fw_cfg::FwCfgAccess`]) and the initrd (`-initrd`) as configuration sources;
//! * [`nic`] — the virtio-net device: a `virtio,mmio` node or a function behind a
//!   `pci-host-ecam-generic` host bridge (BARs assigned from its `ranges`);
//! * [`idle`] — sleeping until a generic-timer deadline (`wfi` with a GICv2/v3, else `wfe`);
//! * [`exit`] — leaving the machine: semihosting `SYS_EXIT`, else PSCI `SYSTEM_OFF`.
//!
//! Everything assumes one CPU, interrupts masked, and the boot code's identity map (normal
//! write-back memory for RAM, device memory for the device windows).

pub mod clock;
pub mod dt;
pub mod exit;
pub mod fw_cfg;
pub mod idle;
pub mod nic;
pub mod pl011;
pub mod rng;

/// Read a system register by name (`mrs`).
macro_rules! read_sysreg {
    ($name:literal) => {{
        let value: u64;
        // SAFETY: reading this system register at EL1 has no side effect.
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $name), out(reg) value, options(nomem, nostack, preserves_flags))
        };
        value
    }};
}
pub(crate) use read_sysreg;
