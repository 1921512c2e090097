//! The arithmetic of a TSC calibration window timed by PIT channel 2 (the reads are the machine
//! backend's job: `x86_64::clock`). A window is read as two bracketed pairs — (TSC, PIT count)
//! with a TSC read on each side of the PIT read — at its ends: the channel counts down once
//! from 0xFFFF (mode 0), so the PIT ticks in the window are the start count minus the end count
//! as long as the channel has not reached its terminal count (its OUT pin, port 0x61 bit 5,
//! says so), and the TSC ticks the PIT reads took bound the window's error.

/// PIT input clock, Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// PIT ticks between a window's start count `c0` and end count `c1` (a channel counting down),
/// or `None` if the end count is above the start (the channel is not counting as programmed).
pub fn elapsed_ticks(c0: u16, c1: u16) -> Option<u16> {
    c0.checked_sub(c1)
}

/// The TSC frequency (Hz) a window gives: `tsc` TSC ticks over `pit` PIT ticks, if reading
/// the PIT at its two ends took (`slop` TSC ticks) less than `1 / slop_div` of the window (the
/// vCPU was not preempted at a bad moment); `None` if not, or for an empty window. The
/// product stays in 64 bits (a window is at most ~55 ms of TSC ticks): no 128-bit division,
/// whose routine the image would carry.
pub fn tsc_hz(tsc: u64, pit: u64, slop: u64, slop_div: u64) -> Option<u64> {
    if pit == 0 || slop.checked_mul(slop_div)? >= tsc {
        return None;
    }
    Some(tsc.checked_mul(PIT_HZ)? / pit).filter(|&hz| hz > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_30_ms_window_at_2_1_ghz() {
        // 30 ms: 35,795 PIT ticks, 63 M TSC ticks; the reads took 2 µs in all.
        let pit = 35_795;
        let tsc = 2_100_000_000 * pit / PIT_HZ;
        assert_eq!(tsc_hz(tsc, pit, 4_200, 1_000), Some(2_099_999_986));
        // One PIT tick of quantization at either end: ~30 ppm.
        let hz = tsc_hz(tsc, pit - 1, 4_200, 1_000).unwrap();
        assert!(hz.abs_diff(2_100_000_000) < 2_100_000_000 / 30_000, "{hz}");
    }

    #[test]
    fn a_loose_window_is_refused() {
        let (tsc, pit) = (10_500_000, 5_966); // 5 ms at 2.1 GHz
        assert!(tsc_hz(tsc, pit, 10_499, 1_000).is_some());
        assert_eq!(tsc_hz(tsc, pit, 10_500, 1_000), None);
        assert_eq!(tsc_hz(tsc, pit, u64::MAX, 1_000), None);
    }

    #[test]
    fn empty_or_absurd_windows_give_nothing() {
        assert_eq!(tsc_hz(10_500_000, 0, 0, 1_000), None);
        assert_eq!(tsc_hz(0, 5_966, 0, 1_000), None);
        assert_eq!(tsc_hz(u64::MAX, 5_966, 0, 1_000), None); // overflow
        assert_eq!(tsc_hz(1, 2_000_000, 0, 1_000), None); // rounds to 0 Hz
    }

    #[test]
    fn elapsed_counts_down_only() {
        assert_eq!(elapsed_ticks(0xFFFF, 0xFFFF), Some(0));
        assert_eq!(elapsed_ticks(0xFFFE, 0x8000), Some(0x7FFE));
        assert_eq!(elapsed_ticks(0x8000, 0x8001), None);
    }
}
