//! The arithmetic of a TSC calibration window timed by PIT channel 2 (the reads are the machine
//! backend's job: `x86_64::clock`). A window is read as two bracketed pairs — (TSC, PIT count)
//! with a TSC read on each side of the PIT read — at its ends: the channel counts down once
//! from 0xFFFF (mode 0), so the PIT ticks in the window are the start count minus the end count
//! as long as the channel has not reached its terminal count (its OUT pin, in the status the
//! PIT's read-back command gives, says so), and the TSC ticks the PIT reads took bound the
//! window's error.

/// PIT input clock, Hz.
pub const PIT_HZ: u64 = 1_193_182;

/// PIT ticks between a window's start count `c0` and end count `c1` (a channel counting down),
/// or `None` if the end count is above the start (the channel is not counting as programmed).
pub fn elapsed_ticks(c0: u16, c1: u16) -> Option<u16> {
    c0.checked_sub(c1)
}

/// A window is tight when reading the PIT at its two ends took less than this fraction of it
/// (1/1000): the vCPU was not preempted at a bad moment.
pub const MAX_SLOP_DIV: u64 = 1_000;

/// Whether a window of `tsc` TSC ticks is tight (see [`MAX_SLOP_DIV`]), reading the PIT at its
/// ends having taken `slop` TSC ticks.
pub fn is_tight(tsc: u64, slop: u64) -> bool {
    slop.saturating_mul(MAX_SLOP_DIV) < tsc
}

/// The TSC frequency (Hz) a window gives: `tsc` TSC ticks over `pit` PIT ticks; `None` for an
/// empty window. The product stays in 64 bits (a window is at most ~55 ms of TSC ticks): no
/// 128-bit division, whose routine the image would carry.
pub fn tsc_hz(tsc: u64, pit: u64) -> Option<u64> {
    Some(tsc.checked_mul(PIT_HZ)?.checked_div(pit)?).filter(|&hz| hz > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_30_ms_window_at_2_1_ghz() {
        // 30 ms: 35,795 PIT ticks, 63 M TSC ticks.
        let pit = 35_795;
        let tsc = 2_100_000_000 * pit / PIT_HZ;
        assert_eq!(tsc_hz(tsc, pit), Some(2_099_999_986));
        // One PIT tick of quantization at either end: ~30 ppm.
        let hz = tsc_hz(tsc, pit - 1).unwrap();
        assert!(hz.abs_diff(2_100_000_000) < 2_100_000_000 / 30_000, "{hz}");
    }

    #[test]
    fn a_loose_window_is_not_tight() {
        let tsc = 10_500_000; // 5 ms at 2.1 GHz
        assert!(is_tight(tsc, 10_499)); // the reads took < 5 µs
        assert!(!is_tight(tsc, 10_500));
        assert!(!is_tight(tsc, u64::MAX));
    }

    #[test]
    fn empty_or_absurd_windows_give_nothing() {
        assert_eq!(tsc_hz(10_500_000, 0), None);
        assert_eq!(tsc_hz(0, 5_966), None);
        assert_eq!(tsc_hz(u64::MAX, 5_966), None); // overflow
        assert_eq!(tsc_hz(1, 2_000_000), None); // rounds to 0 Hz
    }

    #[test]
    fn elapsed_counts_down_only() {
        assert_eq!(elapsed_ticks(0xFFFF, 0xFFFF), Some(0));
        assert_eq!(elapsed_ticks(0xFFFE, 0x8000), Some(0x7FFE));
        assert_eq!(elapsed_ticks(0x8000, 0x8001), None);
    }
}
