//! The MC146818 (CMOS) real-time clock's registers as a Unix time, validated: a machine
//! without the chip (Firecracker, QEMU `microvm,rtc=off`) reads every register as `0xFF`, and
//! a field that is not a date is no date. Pure; the port reads are `x86_64::clock`'s.

/// The registers read: seconds, minutes, hours, day of month, month, year (two digits),
/// century (register 0x32, filled by QEMU), in that order, as the chip gives them.
pub type Fields = [u8; 7];

/// Status register B: binary (not BCD) values.
const B_BINARY: u8 = 0x04;
/// Status register B: 24-hour mode.
const B_24H: u8 = 0x02;

fn bcd(v: u8) -> Option<u8> {
    (v & 0x0F <= 9 && v >> 4 <= 9).then_some((v & 0x0F) + (v >> 4) * 10)
}

/// Unix seconds (UTC) of the RTC's `fields` under status register `status_b`; `None` when
/// they are not a valid time (absent chip, torn or nonsense reading).
pub fn unix_time(fields: Fields, status_b: u8) -> Option<u64> {
    if status_b == 0xFF {
        return None; // no chip: an unclaimed port reads all ones
    }
    let binary = status_b & B_BINARY != 0;
    let conv = |v: u8| if binary { Some(v) } else { bcd(v) };
    let [s, mi, h, d, mo, y, c] = fields;
    let (sec, min, day, month, year2) = (conv(s)?, conv(mi)?, conv(d)?, conv(mo)?, conv(y)?);
    let mut hour = conv(h & 0x7F)?;
    if status_b & B_24H == 0 {
        if !(1..=12).contains(&hour) {
            return None;
        }
        hour %= 12;
        if h & 0x80 != 0 {
            hour += 12;
        }
    }
    let century = match conv(c) {
        Some(c @ 19..=30) => u64::from(c),
        _ => 20,
    };
    if sec > 59 || min > 59 || hour > 23 || year2 > 99 {
        return None;
    }
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    let year = century * 100 + u64::from(year2);
    let days = days_from_civil(year as i64, u32::from(month), u32::from(day));
    let days = u64::try_from(days).ok()?;
    Some(days * 86_400 + u64::from(hour) * 3_600 + u64::from(min) * 60 + u64::from(sec))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_bcd_24h() {
        // 2026-12-01 03:04:05 UTC, BCD, 24 h (QEMU's status B = 0x02).
        let t = unix_time([0x05, 0x04, 0x03, 0x01, 0x12, 0x26, 0x20], 0x02).unwrap();
        assert_eq!(t, 1_796_094_245);
    }

    #[test]
    fn binary_and_12h() {
        // 2026-12-01 15:04:05 = 3 pm in 12-hour mode (bit 7), binary values.
        let t = unix_time([5, 4, 0x80 | 3, 1, 12, 26, 20], B_BINARY).unwrap();
        assert_eq!(t, 1_796_094_245 + 12 * 3600);
        // 12 am is midnight.
        let t = unix_time([0, 0, 12, 1, 12, 26, 20], B_BINARY).unwrap();
        assert_eq!(t, 1_796_083_200);
    }

    #[test]
    fn absent_chip_reads_all_ones() {
        assert_eq!(unix_time([0xFF; 7], 0xFF), None);
        assert_eq!(unix_time([0xFF; 7], 0x02), None);
        assert_eq!(unix_time([0xFF; 7], 0x06), None);
    }

    #[test]
    fn invalid_bcd_and_fields() {
        let ok = [0x05, 0x04, 0x03, 0x01, 0x12, 0x26, 0x20];
        for (i, bad) in [
            (0, 0x5A),
            (1, 0x60),
            (2, 0x24),
            (3, 0x00),
            (3, 0x32),
            (4, 0x13),
            (5, 0xA0),
        ] {
            let mut f = ok;
            f[i] = bad;
            assert_eq!(unix_time(f, 0x02), None, "field {i} = {bad:#x}");
        }
        assert_eq!(
            unix_time([0, 0, 0, 1, 1, 70, 19], B_BINARY | B_24H),
            Some(0)
        );
        assert_eq!(
            unix_time([0, 0, 13, 1, 1, 70, 19], B_BINARY),
            None,
            "13 o'clock in 12 h mode"
        );
    }
}
