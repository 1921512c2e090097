//! Time: the generic timer's virtual counter (`CNTVCT_EL0`, frequency `CNTFRQ_EL0`) for the
//! monotonic clock, the PL031 real-time clock (`arm,pl031`, QEMU `virt` at `0x0901_0000`,
//! seconds since the epoch in its data register) for the wall clock.
//!
//! The wall clock is `RTC seconds at the last reading + counter time since`, re-read from the
//! RTC every [`RTC_RESYNC_US`]; it never goes backwards.

use core::cell::Cell;

use super::read_sysreg;
use crate::Clock;

/// How often the wall clock is re-read from the RTC.
pub const RTC_RESYNC_US: u64 = 60_000_000;
/// PL031 data register: the current time, seconds.
const RTCDR: u64 = 0x00;

/// The virtual counter.
#[inline]
pub fn counter() -> u64 {
    // SAFETY: `isb` only orders instructions (the counter read is not hoisted above earlier
    // ones).
    unsafe { core::arch::asm!("isb", options(nomem, nostack, preserves_flags)) };
    read_sysreg!("cntvct_el0")
}

/// The counter's frequency, Hz.
pub fn counter_hz() -> u64 {
    read_sysreg!("cntfrq_el0") & 0xFFFF_FFFF
}

/// Why there is no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockError {
    /// `CNTFRQ_EL0` reads 0 (firmware did not set it).
    NoCounterFrequency,
    /// No PL031 in the device tree: no wall time, and tokens need it.
    NoRtc,
}

impl ClockError {
    /// The message.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClockError::NoCounterFrequency => {
                "the generic timer has no frequency (CNTFRQ_EL0 is 0)"
            }
            ClockError::NoRtc => "no real-time clock (PL031) in the device tree: no wall time",
        }
    }
}

/// Monotonic time from the virtual counter, wall time from the PL031.
#[derive(Debug)]
pub struct GenericClock {
    hz: u64,
    start: u64,
    rtc: u64,
    /// (RTC seconds, counter value) at the last RTC reading.
    wall: Cell<(u64, u64)>,
    /// The last wall time handed out (never go backwards).
    last: Cell<u64>,
}

impl GenericClock {
    /// The clock, with the PL031 at `rtc` (from the device tree; `None`: there is none).
    ///
    /// # Safety
    /// `rtc`, if given, must be a PL031's register window, identity-mapped as device memory for
    /// the rest of the run.
    pub unsafe fn init(rtc: Option<u64>) -> Result<GenericClock, ClockError> {
        let hz = counter_hz();
        if hz == 0 {
            return Err(ClockError::NoCounterFrequency);
        }
        let rtc = rtc.ok_or(ClockError::NoRtc)?;
        let now = counter();
        let clock = GenericClock {
            hz,
            start: now,
            rtc,
            wall: Cell::new((0, now)),
            last: Cell::new(0),
        };
        clock.wall.set((clock.read_rtc(), now));
        Ok(clock)
    }

    fn read_rtc(&self) -> u64 {
        // SAFETY: `rtc` is the PL031 (see `init`); reading its data register has no side
        // effect.
        u64::from(unsafe { core::ptr::read_volatile((self.rtc + RTCDR) as *const u32) })
    }

    /// The counter frequency, Hz.
    pub fn hz(&self) -> u64 {
        self.hz
    }

    fn ticks_to_us(&self, ticks: u64) -> u64 {
        crate::ticks::ticks_to_us(ticks, self.hz)
    }
}

impl Clock for GenericClock {
    fn monotonic_us(&self) -> u64 {
        self.ticks_to_us(counter().wrapping_sub(self.start))
    }

    fn unix_time_s(&self) -> u64 {
        let now = counter();
        let (secs, at) = self.wall.get();
        let since = self.ticks_to_us(now.wrapping_sub(at));
        let value = if since < RTC_RESYNC_US {
            secs + since / 1_000_000
        } else {
            let rtc = self.read_rtc();
            self.wall.set((rtc, now));
            rtc
        };
        let value = value.max(self.last.get());
        self.last.set(value);
        value
    }
}
