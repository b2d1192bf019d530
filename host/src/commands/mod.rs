//! The short-lived commands: each reads its arguments, does one thing through the store or
//! the sandbox, prints the answer (JSON on stdout with `--json`) and returns an exit code.
//! The long-running ones have modules of their own: [`crate::worker`], [`crate::checker`]
//! and [`crate::reaper`].

pub mod copy;
pub mod jobs;
pub mod processors;
pub mod run;
pub mod seed;
pub mod status;

/// A store timestamp (ms since the epoch) as UTC, e.g. `2026-11-28 05:33:01.123Z`.
pub fn format_time(millis: i64) -> String {
    let (days, ms_of_day) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let (h, m, s, ms) = (ms_of_day / 3_600_000, ms_of_day / 60_000 % 60, ms_of_day / 1000 % 60, ms_of_day % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{ms:03}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn format_time_gives_utc_calendar_time() {
        assert_eq!(super::format_time(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(super::format_time(1_795_844_581_123), "2026-11-28 05:43:01.123Z");
        assert_eq!(super::format_time(951_782_400_000), "2000-02-29 00:00:00.000Z");
    }
}
