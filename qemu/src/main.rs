//! # imds-unikernel — imds-agent as a bootable image
//!
//! Built for a bare-metal target (`target_os = "none"`) and booted with QEMU `-kernel`; each
//! architecture has its boot protocol, in its `arch` module (selected by `target_arch`:
//! `x86_64/`, a PVH ELF; `aarch64/`, a Linux arm64 Image for QEMU `virt`). Everything an
//! architecture provides (console, clock, entropy, config source, NIC, idle, exit) is behind
//! the names of its `arch` module; the boot sequence in [`unikernel`] is arch-neutral. The boot
//! sequence, each step printed on the console (the machine parts as on x86):
//!
//! 1. serial up; check the PVH start info;
//! 2. entropy: RDRAND present, or refuse to start ([`exit_code::NO_ENTROPY`]);
//! 3. clock: TSC calibrated against the PIT, wall time from the RTC;
//! 4. configuration from fw_cfg `opt/imds-agent/config`, parsed by `imds_agent::config`
//!    ([`exit_code::CONFIG_MISSING`] / [`exit_code::CONFIG_INVALID`]);
//! 5. virtio-net brought up ([`exit_code::NIC`]);
//! 6. the network loop: smoltcp, DHCP or a static address, HTTP on port 80; with the cargo
//!    feature `broker` and an `authority` in the config, the broker tasks too ([`broker`]:
//!    tokens from an OAuth2 authority over TLS 1.3). An image without the feature refuses such
//!    a config ([`exit_code::CONFIG_INVALID`]).
//!
//! On the host this crate builds to a stub that says so, so that workspace-wide `cargo clippy`
//! and `cargo test` work.
#![cfg_attr(target_os = "none", no_std, no_main)]
// The network floor image boots no agent: the agent's boot path is left unused there.
#![cfg_attr(feature = "net-floor", allow(dead_code, unused_imports))]

#[cfg(all(target_os = "none", target_arch = "x86_64"))]
#[path = "x86_64/mod.rs"]
mod arch;
#[cfg(all(target_os = "none", target_arch = "aarch64"))]
#[path = "aarch64/mod.rs"]
mod arch;
#[cfg(all(target_os = "none", feature = "broker"))]
mod broker;
#[cfg(target_os = "none")]
mod exit_code;
#[cfg(all(target_os = "none", feature = "rsa"))]
mod heap;
#[cfg(target_os = "none")]
mod nap;
#[cfg(all(target_os = "none", feature = "net-floor"))]
mod net_floor;
#[cfg(target_os = "none")]
mod unikernel;

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("imds-unikernel only runs on a bare-metal target (cargo xtask run)");
    std::process::exit(2);
}
