//! Guest exit codes, written to `isa-debug-exit` on x86 and asked of semihosting `SYS_EXIT` as
//! `2 * code + 1` on aarch64: either way QEMU exits with status `2 * code + 1` (the table in
//! `qemu/README.md` lists both).

/// A Rust panic (the message is on the serial console).
pub const PANIC: u8 = 1;
/// Not started as the boot protocol says: no PVH `hvm_start_info` (x86), no device tree in
/// `x0` or no real-time clock in it (aarch64).
pub const BAD_BOOT: u8 = 2;
/// No secure entropy source (no RDRAND; on aarch64 no RNDR and no virtio-rng): the agent
/// refuses to start.
pub const NO_ENTROPY: u8 = 3;
/// No configuration in fw_cfg (or it could not be read).
pub const CONFIG_MISSING: u8 = 4;
/// The configuration was refused by the parser.
pub const CONFIG_INVALID: u8 = 5;
/// The NIC could not be found or brought up.
pub const NIC: u8 = 6;
/// A CPU exception (the vector and address are on the serial console).
pub const CPU_EXCEPTION: u8 = 7;
