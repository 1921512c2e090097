//! Civil (UTC) time for the attested document's `timeStamp` and the scheduled events'
//! `NotBefore`.

use imds_hal::text::Text;

/// A number below 100 in two digits.
pub(crate) fn two<W: Text + ?Sized>(out: &mut W, n: u8) {
    if n < 10 {
        out.put("0");
    }
    out.dec(u64::from(n));
}

/// A UTC date and time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    /// Year.
    pub year: u32,
    /// Month, 1..=12.
    pub month: u8,
    /// Day of the month, 1..=31.
    pub day: u8,
    /// 0..=23.
    pub hour: u8,
    /// 0..=59.
    pub minute: u8,
    /// 0..=59.
    pub second: u8,
    /// Day of the week, 0 = Sunday.
    pub weekday: u8,
}

impl Civil {
    /// The UTC date and time of a Unix time (H. Hinnant's `civil_from_days`).
    pub fn of(unix_s: u64) -> Civil {
        let days = (unix_s / 86_400) as i64;
        let secs = unix_s % 86_400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u32;
        Civil {
            year,
            month,
            day,
            hour: (secs / 3600) as u8,
            minute: (secs / 60 % 60) as u8,
            second: (secs % 60) as u8,
            // 1970-01-01 was a Thursday.
            weekday: ((days + 4).rem_euclid(7)) as u8,
        }
    }
}
