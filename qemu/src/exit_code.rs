//! Guest exit codes written to `isa-debug-exit`. QEMU then exits with status `2 * code + 1`
//! (the table in `qemu/README.md` lists both).

/// A Rust panic (the message is on the serial console).
pub const PANIC: u8 = 1;
/// Not started through PVH (no `hvm_start_info`).
pub const BAD_BOOT: u8 = 2;
/// No secure entropy source (no RDRAND): the agent refuses to start.
pub const NO_ENTROPY: u8 = 3;
/// No configuration in fw_cfg (or it could not be read).
pub const CONFIG_MISSING: u8 = 4;
/// The configuration was refused by the parser.
pub const CONFIG_INVALID: u8 = 5;
/// The NIC could not be found or brought up.
pub const NIC: u8 = 6;
/// A CPU exception (the vector and address are on the serial console).
pub const CPU_EXCEPTION: u8 = 7;
/// No wall clock (no CMOS RTC, no kvmclock): the agent refuses to mint tokens with a wrong
/// time.
pub const NO_WALL_CLOCK: u8 = 8;
