//! Unix time <-> calendar fields, proleptic Gregorian, UTC (the CMOS clock of
//! a VM runs in UTC like Firecracker's and Cloud Hypervisor's). Days/civil
//! conversion after Howard Hinnant's public-domain algorithms.

/// Broken-down UTC time as the RTC registers hold it (binary values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DateTime {
    pub year: i64,
    /// 1..=12
    pub month: u8,
    /// 1..=31
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
}

fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

impl DateTime {
    pub fn from_unix(secs: i64) -> Self {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Self { year, month, day, hour: (rem / 3600) as u8, minute: (rem / 60 % 60) as u8, second: (rem % 60) as u8 }
    }

    /// Seconds since the epoch. Out-of-range fields (a guest writing day 31
    /// into February) roll over rather than fail, like arithmetic on the chip.
    pub fn to_unix(&self) -> i64 {
        let month = self.month.clamp(1, 12);
        days_from_civil(self.year, month, 1) * 86_400
            + (i64::from(self.day.max(1)) - 1) * 86_400
            + i64::from(self.hour) * 3600
            + i64::from(self.minute) * 60
            + i64::from(self.second)
    }

    /// 1 = Sunday ... 7 = Saturday, the CMOS convention.
    pub fn weekday(&self) -> u8 {
        // 1970-01-01 was a Thursday (5).
        let days = self.to_unix().div_euclid(86_400);
        ((days + 4).rem_euclid(7) + 1) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates_convert_both_ways() {
        let cases = [
            (0, DateTime { year: 1970, month: 1, day: 1, hour: 0, minute: 0, second: 0 }, 5),
            (951_782_400, DateTime { year: 2000, month: 2, day: 29, hour: 0, minute: 0, second: 0 }, 3),
            (1_764_088_496, DateTime { year: 2025, month: 11, day: 25, hour: 16, minute: 34, second: 56 }, 3),
            (4_107_542_399, DateTime { year: 2100, month: 2, day: 28, hour: 23, minute: 59, second: 59 }, 1),
        ];
        for (secs, dt, wday) in cases {
            assert_eq!(DateTime::from_unix(secs), dt, "{secs}");
            assert_eq!(dt.to_unix(), secs);
            assert_eq!(dt.weekday(), wday, "{dt:?}");
        }
    }

    #[test]
    fn overflowing_day_rolls_into_next_month() {
        let dt = DateTime { year: 2023, month: 2, day: 31, hour: 0, minute: 0, second: 0 };
        let back = DateTime::from_unix(dt.to_unix());
        assert_eq!((back.month, back.day), (3, 3));
    }
}
