//! Time: the TSC for the monotonic clock and a wall clock, from what the machine has. The TSC
//! frequency: CPUID `0x4000_0010` (Cloud Hypervisor), else kvmclock's scaling (any KVM guest),
//! else measured against PIT channel 2 (QEMU TCG), in a window that stays open while the boot
//! does other work ([`TscClock::start`] opens it, [`ClockStart::finish`] closes it). The wall
//! clock: the CMOS real-time clock (QEMU `-rtc base=utc`, Cloud Hypervisor), else kvmclock's
//! boot wall time (Firecracker has no RTC), else none ([`WallSource::None`]: the caller must
//! refuse to mint tokens).
//!
//! The wall clock is `RTC seconds at the last reading + TSC time since`, re-read from the RTC
//! every [`RTC_RESYNC_US`] so that a calibration error cannot drift the token times; it never
//! goes backwards.

use core::cell::Cell;

use super::kvmclock::{self, Kvmclock};
use super::port::{inb, outb};
use crate::{pit, rtc, Clock};

/// The shortest calibration window, and the fallback's window: 5 ms of PIT ticks.
const CALIBRATION_TICKS: u16 = 5_966;
/// Windows measured at most (the one left open, then fresh ones) before settling for a window
/// that is not tight.
const CALIBRATION_TRIES: u32 = 5;
/// Give up on the PIT after this many reads without the window's end (no PIT or its gate).
const CALIBRATION_MAX_POLLS: u32 = 10_000_000;
/// A PIT that does not count (its gate closed): the latched count never changes. A PIT ticks
/// every 0.84 µs, far less than this many reads take. (No PIT at all — Cloud Hypervisor,
/// `microvm,pit=off` — reads all ones: its OUT pin seems high, the window is refused at once.)
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

/// Whether channel 2's OUT pin is high: in mode 0, the count has reached 0 (and may have
/// wrapped). From the PIT's own status (read-back command), which QEMU's `microvm` offers
/// without the speaker port 0x61; a machine without a PIT reads all ones: high.
fn pit_ch2_out() -> bool {
    // SAFETY: ports 0x42/0x43 are the PIT; the read-back command (status only, channel 2)
    // latches channel 2's status byte for the read that follows and changes nothing else.
    unsafe {
        outb(PIT_COMMAND, 0b1110_1000);
        inb(PIT_CH2_DATA) & 0x80 != 0
    }
}

/// One end of a window: (TSC in the middle of the PIT read, PIT count, TSC ticks the read
/// took).
type Mark = (u64, u16, u64);

/// Read the PIT count between two TSC reads.
fn bracketed_count() -> Mark {
    let before = rdtsc();
    let count = pit_ch2_count();
    let after = rdtsc();
    (before / 2 + after / 2, count, after.wrapping_sub(before))
}

/// Open a window: program PIT channel 2 to count down once from 0xFFFF (~55 ms) and read its
/// start. No wait: the window stays open while the caller works.
fn start_window() -> Mark {
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
    // The first read runs the reading code once: under TCG its first run includes translating
    // it (tens of µs inside the bracket, a window ~1/1000 loose); the second read is the mark.
    bracketed_count();
    bracketed_count()
}

/// A closed window: (TSC ticks, PIT ticks, TSC ticks spent reading the PIT at both ends).
type Window = (u64, u64, u64);

/// Close a window opened by [`start_window`], waiting until it is [`CALIBRATION_TICKS`] long
/// if it is shorter; `None` if the channel reached its terminal count (~55 ms: the count may
/// have wrapped) or does not count (no PIT).
fn end_window((t0, c0, slop0): Mark) -> Option<Window> {
    for polls in 0..CALIBRATION_MAX_POLLS {
        let (t1, c1, slop1) = bracketed_count();
        // OUT is read after the count: low, no terminal count had come when `c1` was read.
        if pit_ch2_out() {
            return None;
        }
        let elapsed = pit::elapsed_ticks(c0, c1)?;
        if elapsed >= CALIBRATION_TICKS {
            return Some((t1.wrapping_sub(t0), elapsed.into(), slop0 + slop1));
        }
        if elapsed == 0 && polls > FIRST_TICK_MAX_POLLS {
            return None;
        }
    }
    None
}

/// Measure the TSC frequency against PIT channel 2: close the window opened at `mark`; if it
/// is lost (the count may have wrapped) or not tight (a preempted vCPU shows up as a wide
/// bracket), measure fresh windows of [`CALIBRATION_TICKS`] (5 ms each), [`CALIBRATION_TRIES`]
/// windows in all; the last one counts. `None`: the PIT does not count.
fn calibrate_tsc(mut mark: Mark) -> Option<u64> {
    let mut hz = None;
    for _ in 0..CALIBRATION_TRIES {
        if let Some((tsc, pit, slop)) = end_window(mark) {
            hz = pit::tsc_hz(tsc, pit);
            if pit::is_tight(tsc, slop) {
                break;
            }
        }
        mark = start_window();
    }
    hz
}

/// The clock started and not yet finished ([`TscClock::start`]): on the PIT path, a
/// calibration window open while the caller works.
pub struct ClockStart {
    tsc_at_boot: u64,
    kvmclock: Option<Kvmclock>,
    /// The frequency the VMM gave (CPUID, kvmclock), else the open PIT window's start.
    source: Result<(u64, Calibration), Mark>,
    wall: WallSource,
    /// The RTC's reading: (Unix seconds, TSC then).
    rtc: (u64, u64),
}

impl ClockStart {
    /// Where the wall clock comes from, known at the start ([`WallSource::None`]: there is
    /// none, and no reason to wait for the TSC's frequency before saying so).
    pub fn wall_source(&self) -> WallSource {
        self.wall
    }

    /// Find the TSC frequency: instant with the VMM's frequency; on the PIT path, the window
    /// opened at [`TscClock::start`] is closed (after at least 5 ms of PIT ticks: a wait only
    /// if less has passed). A window that outlived the PIT's count (~55 ms) or whose reads were
    /// not tight is replaced by windows measured here (5 ms each, at most 4).
    pub fn finish(self) -> TscClock {
        let found = match self.source {
            Ok(known) => known,
            Err(mark) => calibrate_tsc(mark)
                .map_or((FALLBACK_TSC_HZ, Calibration::Fallback), |hz| {
                    (hz, Calibration::Pit)
                }),
        };
        self.finish_at(found)
    }

    /// The clock without measuring the TSC: the VMM's frequency if it gave one, else
    /// [`FALLBACK_TSC_HZ`] ([`Calibration::Fallback`]) at once, with no PIT window. Only for
    /// images that measure what the rest of a boot costs (the network floor image of `cargo
    /// xtask bench boot`): time on this clock is off by the guess's error.
    pub fn finish_uncalibrated(self) -> TscClock {
        let found = self
            .source
            .unwrap_or((FALLBACK_TSC_HZ, Calibration::Fallback));
        self.finish_at(found)
    }

    fn finish_at(self, (tsc_hz, calibration): (u64, Calibration)) -> TscClock {
        let clock = TscClock {
            tsc_hz,
            us_per_tick_q32: ((1_000_000 << 32) + tsc_hz / 2) / tsc_hz.max(1),
            tsc_at_boot: self.tsc_at_boot,
            calibration,
            anchor: Cell::new((0, 0)),
            last_wall: Cell::new(0),
            wall: self.wall,
            kvmclock: self.kvmclock,
        };
        let (rtc, tsc) = self.rtc;
        clock.anchor.set((rtc, clock.us_at(tsc)));
        clock
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
    /// Start the clock (monotonic time counts from here), find where the TSC frequency comes
    /// from (see the module's order) and read the wall clock; on the PIT path, open a
    /// calibration window and return at once: the PIT counts while the caller works (the image
    /// reads and parses its config), and [`ClockStart::finish`] reads it instead of a busy
    /// wait.
    pub fn start() -> ClockStart {
        let tsc_at_boot = rdtsc();
        let kvmclock = Kvmclock::init();
        let source = match (kvmclock::cpuid_tsc_hz(), kvmclock) {
            (Some(hz), _) => Ok((hz, Calibration::Cpuid)),
            (None, Some(k)) if k.time.tsc_hz() > 0 => Ok((k.time.tsc_hz(), Calibration::Kvmclock)),
            _ => Err(start_window()),
        };
        let (wall, rtc) = match read_rtc_unix() {
            Some(rtc) => (WallSource::Rtc, (rtc, rdtsc())),
            None if kvmclock.is_some_and(|k| k.unix_s_at(rdtsc()).is_some()) => {
                (WallSource::Kvmclock, (0, tsc_at_boot))
            }
            None => (WallSource::None, (0, tsc_at_boot)),
        };
        ClockStart {
            tsc_at_boot,
            kvmclock,
            source,
            wall,
            rtc,
        }
    }

    /// Where the wall clock comes from ([`WallSource::None`]: it is not to be trusted).
    pub fn wall_source(&self) -> WallSource {
        self.wall
    }

    /// Monotonic time at TSC value `tsc` (µs since [`TscClock::start`]).
    fn us_at(&self, tsc: u64) -> u64 {
        let ticks = tsc.wrapping_sub(self.tsc_at_boot);
        ((u128::from(ticks) * u128::from(self.us_per_tick_q32)) >> 32) as u64
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
        self.us_at(rdtsc())
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
