//! Counter ticks to microseconds (the aarch64 generic timer's `CNTVCT_EL0` at `CNTFRQ_EL0` Hz),
//! exact and in 64-bit arithmetic: a 128-bit division would bring `compiler_builtins`'
//! `u128_div_rem` (~780 bytes of the aarch64 image) for one line.

/// `ticks × 1,000,000 / hz`, rounded down, for any `ticks` and any `hz` from 1 to 2³²
/// (`CNTFRQ_EL0` is a 32-bit field): whole seconds and the rest are scaled apart, so no
/// product exceeds 64 bits (the rest is below `hz`, and `hz × 10⁶ < 2⁶⁴`); the seconds' part
/// wraps only past 2⁶⁴ microseconds.
pub fn ticks_to_us(ticks: u64, hz: u64) -> u64 {
    let (secs, rest) = (ticks / hz, ticks % hz);
    secs.wrapping_mul(1_000_000) + rest * 1_000_000 / hz
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(ticks: u64, hz: u64) -> u64 {
        (u128::from(ticks) * 1_000_000 / u128::from(hz)) as u64
    }

    #[test]
    fn the_same_as_a_128_bit_division() {
        let hzs = [
            1,
            3,
            999_999,
            1_000_000,
            1_000_001,
            19_200_000,
            24_000_000,
            62_500_000,
            1_000_000_000,
            u64::from(u32::MAX),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for hz in hzs {
            for ticks in [
                0,
                1,
                hz - 1,
                hz,
                hz + 1,
                2 * hz - 1,
                1 << 40,
                (1 << 40) + 12_345,
                u64::MAX / 1_000_000,
            ] {
                assert_eq!(
                    ticks_to_us(ticks, hz),
                    reference(ticks, hz),
                    "{ticks} at {hz} Hz"
                );
            }
            for _ in 0..10_000 {
                // xorshift: ticks over the whole range a run of up to ~584,000 years reaches.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let ticks = x >> (x % 24);
                assert_eq!(
                    ticks_to_us(ticks, hz),
                    reference(ticks, hz),
                    "{ticks} at {hz} Hz"
                );
            }
        }
    }
}
