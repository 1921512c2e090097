//! Time: the TSC for the monotonic clock and a wall clock, from what the machine has. The TSC
//! frequency: CPUID `0x4000_0010` (Cloud Hypervisor), else kvmclock's scaling (any KVM guest),
//! else measured against PIT channel 2 (QEMU TCG). The wall clock: the CMOS real-time clock
//! (QEMU `-rtc base=utc`, Cloud Hypervisor), else kvmclock's boot wall time (Firecracker has no
//! RTC), else none ([`WallSource::None`]: the caller must refuse to mint tokens).
//!
//! The wall clock is `RTC seconds at the last reading + TSC time since`, re-read from the RTC
//! every [`RTC_RESYNC_US`] so that a calibration error cannot drift the token times; it never
//! goes backwards.

use core::cell::Cell;

use super::kvmclock::{self, Kvmclock};
use super::port::{inb, outb};
use crate::{rtc, Clock};

/// PIT input clock, Hz.
const PIT_HZ: u64 = 1_193_182;
/// One calibration window: 5 ms of PIT ticks.
const CALIBRATION_TICKS: u16 = 5_966;
/// Windows tried before settling for the least disturbed one.
const CALIBRATION_TRIES: u32 = 5;
/// A window is accepted when reading the PIT at its ends took less than this fraction of it
/// (1/1000): the vCPU was not preempted at a bad moment.
const CALIBRATION_MAX_SLOP_DIV: u64 = 1_000;
/// Give up on the PIT after this many reads without progress (no PIT or its gate).
const CALIBRATION_MAX_POLLS: u32 = 10_000_000;
/// No PIT at all (Cloud Hypervisor, `microvm,pit=off`): the latched count never changes.
/// A PIT ticks every 0.84 µs, far less than this many reads take.
const FIRST_TICK_MAX_POLLS: u32 = 10_000;
/// TSC frequency assumed when the PIT cannot be used (logged by the caller).
const FALLBACK_TSC_HZ: u64 = 2_000_000_000;
/// How often the wall clock is re-read from the RTC.
pub const RTC_RESYNC_US: u64 = 60_000_000;

const PIT_CH2_DATA: u16 = 0x42;
const PIT_COMMAND: u16 = 0x43;
const PORT_61: u16 = 0x61;
const CMOS_INDEX: u16 = 0x70;
const CMOS_DATA: u16 = 0x71;

/// Read the time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    // SAFETY: `rdtsc` reads a counter and has no side effects; it is never disabled (CR4.TSD is
    // clear) in this kernel.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// How the TSC frequency was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Calibration {
    /// CPUID `0x4000_0010` (the VMM's word).
    Cpuid,
    /// kvmclock's TSC scaling.
    Kvmclock,
    /// Measured against PIT channel 2.
    Pit,
    /// The PIT did not respond; a fixed guess is in use and times are approximate.
    Fallback,
}

/// Latch and read the count of PIT channel 2.
fn pit_ch2_count() -> u16 {
    // SAFETY: ports 0x42/0x43 are the PIT; the latch command (channel 2, counter latch) freezes
    // the count for the two reads that follow and changes nothing else.
    unsafe {
        outb(PIT_COMMAND, 0b1000_0000);
        let lo = inb(PIT_CH2_DATA);
        let hi = inb(PIT_CH2_DATA);
        u16::from_le_bytes([lo, hi])
    }
}

/// Read the PIT count between two TSC reads: (tsc in the middle, count, TSC ticks the read
/// took).
fn bracketed_count() -> (u64, u16, u64) {
    let before = rdtsc();
    let count = pit_ch2_count();
    let after = rdtsc();
    (before / 2 + after / 2, count, after.wrapping_sub(before))
}

/// One window: (TSC ticks, PIT ticks, TSC ticks spent reading the PIT at both ends).
fn measure_window() -> Option<(u64, u64, u64)> {
    // SAFETY: ports 0x42/0x43 are the PIT and 0x61 is the NMI-status/speaker-gate register.
    // Channel 2 only drives the PC speaker, whose output bit (1) is kept off; channel 0 (the
    // system timer) is not touched.
    unsafe {
        let gate = (inb(PORT_61) & !0x02) | 0x01; // speaker off, channel 2 gate on
        outb(PORT_61, gate);
        outb(PIT_COMMAND, 0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        outb(PIT_CH2_DATA, 0xFF);
        outb(PIT_CH2_DATA, 0xFF);
    }
    // Start on a count change, so the window begins right after a PIT tick.
    let (_, first, _) = bracketed_count();
    let mut polls = 0u32;
    let (t0, c0, slop0) = loop {
        let read = bracketed_count();
        if read.1 != first {
            break read;
        }
        polls += 1;
        if polls > FIRST_TICK_MAX_POLLS {
            return None;
        }
    };
    loop {
        let (t1, c1, slop1) = bracketed_count();
        let elapsed = c0.wrapping_sub(c1);
        if c1 <= c0 && elapsed >= CALIBRATION_TICKS {
            return Some((t1.wrapping_sub(t0), u64::from(elapsed), slop0 + slop1));
        }
        if c1 > c0 {
            return None; // wrapped: the PIT is not counting down as programmed
        }
        polls += 1;
        if polls > CALIBRATION_MAX_POLLS {
            return None;
        }
    }
}

/// Measure the TSC frequency against PIT channel 2 (5 ms windows, ~5-25 ms in all).
///
/// Each window reads the PIT count between two TSC reads at both ends, so a preempted vCPU
/// (the host is busy) shows up as a wide bracket and the window is retried.
pub fn calibrate_tsc() -> (u64, Calibration) {
    let mut best: Option<(u64, u64, u64)> = None;
    for _ in 0..CALIBRATION_TRIES {
        let Some(w) = measure_window() else { break };
        let (tsc, _, slop) = w;
        if best.is_none_or(|(_, _, s)| slop < s) {
            best = Some(w);
        }
        if slop * CALIBRATION_MAX_SLOP_DIV < tsc {
            break;
        }
    }
    // A window is milliseconds of TSC ticks: the product fits in 64 bits (no u128 division,
    // whose routine the image would carry).
    match best.and_then(|(tsc, pit, _)| Some((tsc.checked_mul(PIT_HZ)?, pit))) {
        Some((product, pit)) if product > 0 && pit > 0 => (product / pit, Calibration::Pit),
        _ => (FALLBACK_TSC_HZ, Calibration::Fallback),
    }
}

fn cmos_read(reg: u8) -> u8 {
    // SAFETY: ports 0x70/0x71 are the CMOS index/data pair; bit 7 of the index (NMI disable) is
    // set, as interrupts and NMIs are of no use to this kernel; reading an RTC register has no
    // side effect except on register C, which is never read here.
    unsafe {
        outb(CMOS_INDEX, 0x80 | reg);
        inb(CMOS_DATA)
    }
}

/// Read the CMOS RTC as Unix seconds (UTC), or `None` if it reads nonsense or is absent
/// (validated by [`crate::rtc::unix_time`]).
pub fn read_rtc_unix() -> Option<u64> {
    // An absent chip reads 0xFF everywhere: do not wait for its "update in progress" bit.
    if cmos_read(0x0B) == 0xFF {
        return None;
    }
    fn snapshot() -> rtc::Fields {
        // Wait (bounded) while an update is in progress.
        let mut spins = 0u32;
        while cmos_read(0x0A) & 0x80 != 0 && spins < 1_000_000 {
            spins += 1;
        }
        [
            cmos_read(0x00), // seconds
            cmos_read(0x02), // minutes
            cmos_read(0x04), // hours
            cmos_read(0x07), // day of month
            cmos_read(0x08), // month
            cmos_read(0x09), // year (two digits)
            cmos_read(0x32), // century (QEMU fills it)
        ]
    }
    // Two equal snapshots in a row: no update tore the reading.
    let mut a = snapshot();
    for _ in 0..5 {
        let b = snapshot();
        if a == b {
            break;
        }
        a = b;
    }
    rtc::unix_time(a, cmos_read(0x0B))
}

/// Where the wall clock comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WallSource {
    /// The CMOS RTC.
    Rtc,
    /// kvmclock's wall time at boot + its system time.
    Kvmclock,
    /// None: the wall clock reads from 0 and must not be used for tokens.
    None,
}

/// The machine clock: TSC-based monotonic time, RTC- or kvmclock-anchored wall time.
pub struct TscClock {
    tsc_hz: u64,
    /// Microseconds per TSC tick, fixed point with 32 fraction bits (rounded; ~1 ppm at
    /// GHz rates, far below the calibration's own error): `monotonic_us` multiplies and
    /// never divides.
    us_per_tick_q32: u64,
    tsc_at_boot: u64,
    calibration: Calibration,
    /// Wall-clock anchor: (unix seconds read from the RTC, monotonic µs at that reading).
    anchor: Cell<(u64, u64)>,
    /// Largest wall time handed out so far (the wall clock never goes backwards).
    last_wall: Cell<u64>,
    wall: WallSource,
    kvmclock: Option<Kvmclock>,
}

impl TscClock {
    /// Find the TSC frequency and the wall clock (see the module's order). Takes ~5 ms when
    /// the PIT is the TSC's reference.
    pub fn init() -> TscClock {
        let tsc_at_boot = rdtsc();
        let kvmclock = Kvmclock::init();
        let (tsc_hz, calibration) = match (kvmclock::cpuid_tsc_hz(), kvmclock) {
            (Some(hz), _) => (hz, Calibration::Cpuid),
            (None, Some(k)) if k.time.tsc_hz() > 0 => (k.time.tsc_hz(), Calibration::Kvmclock),
            _ => calibrate_tsc(),
        };
        let mut clock = TscClock {
            tsc_hz,
            us_per_tick_q32: ((1_000_000 << 32) + tsc_hz / 2) / tsc_hz.max(1),
            tsc_at_boot,
            calibration,
            anchor: Cell::new((0, 0)),
            last_wall: Cell::new(0),
            wall: WallSource::None,
            kvmclock,
        };
        let now = clock.monotonic_us();
        if let Some(rtc) = read_rtc_unix() {
            clock.anchor.set((rtc, now));
            clock.wall = WallSource::Rtc;
        } else if kvmclock.is_some_and(|k| k.unix_s_at(rdtsc()).is_some()) {
            clock.wall = WallSource::Kvmclock;
        }
        clock
    }

    /// Where the wall clock comes from ([`WallSource::None`]: it is not to be trusted).
    pub fn wall_source(&self) -> WallSource {
        self.wall
    }

    /// The measured TSC frequency in Hz.
    pub fn tsc_hz(&self) -> u64 {
        self.tsc_hz
    }

    /// How the frequency was found.
    pub fn calibration(&self) -> Calibration {
        self.calibration
    }
}

impl Clock for TscClock {
    fn monotonic_us(&self) -> u64 {
        let ticks = rdtsc().wrapping_sub(self.tsc_at_boot);
        ((u128::from(ticks) * u128::from(self.us_per_tick_q32)) >> 32) as u64
    }

    fn unix_time_s(&self) -> u64 {
        if let (WallSource::Kvmclock, Some(k)) = (self.wall, self.kvmclock) {
            let wall = k.unix_s_at(rdtsc()).unwrap_or(0).max(self.last_wall.get());
            self.last_wall.set(wall);
            return wall;
        }
        let now = self.monotonic_us();
        let (mut rtc, mut at) = self.anchor.get();
        if self.wall == WallSource::Rtc && now.saturating_sub(at) >= RTC_RESYNC_US {
            if let Some(fresh) = read_rtc_unix() {
                rtc = fresh;
                at = now;
                self.anchor.set((rtc, at));
            }
        }
        let wall = rtc + now.saturating_sub(at) / 1_000_000;
        let wall = wall.max(self.last_wall.get());
        self.last_wall.set(wall);
        wall
    }
}
